/* http_state.c - the event loop's side of the status server: copies the
 * coordinator's state into the snapshot the HTTP thread reads (http.h).
 * It reads the round state (rounds_state.h) on the loop's own thread. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "clog.h"
#include "http_internal.h"
#include "rounds_async.h"
#include "rounds_state.h"

#define PUBLISH_EVERY_MS 200

static const char *const phase_names[] = {"wait", "train", "eval", "finishing", "done"};

static double real_or_nan(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static uint64_t count(const cJSON *o, const char *k)
{
    double v = real_or_nan(o, k);
    return isfinite(v) && v > 0 ? (uint64_t)v : 0;
}

/* One metrics line (metrics.h) into a history entry; adds its counters to
 * the run's totals. */
static void parse_line(http_server *h, const char *line, http_round *out)
{
    memset(out, 0, sizeof *out);
    out->train_loss = out->val_loss = NAN;
    cJSON *o = cJSON_Parse(line);
    if (!o)
        return;
    out->round = count(o, "round");
    out->abandoned = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "abandoned"));
    out->train_loss = real_or_nan(o, "train_loss");
    out->val_loss = real_or_nan(o, "val_loss");
    out->bytes_up = count(o, "bytes_up");
    out->bytes_down = count(o, "bytes_down");
    out->sampled = (unsigned)count(o, "sampled");
    out->reported = (unsigned)count(o, "reported");
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(o, "seconds");
    const char *parts[] = {"train", "aggregate", "eval", "checkpoint"};
    for (int i = 0; i < 4; i++) {
        double v = real_or_nan(sec, parts[i]);
        out->seconds += isfinite(v) ? v : 0;
    }
    const cJSON *rj = cJSON_GetObjectItemCaseSensitive(o, "rejected");
    for (int i = 0; i < REJ_COUNT; i++)
        h->hist_rejected[i] += count(rj, reject_reason_name(i));
    h->hist_up += out->bytes_up;
    h->hist_down += out->bytes_down;
    cJSON_Delete(o);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

static void copy_workers(http_snapshot *s, const server *srv, const rounds *r, int64_t now)
{
    int n = server_n_workers(srv);
    size_t cap = (size_t)s->cap_workers;
    if (grow((void **)&s->workers, &cap, (size_t)n, sizeof *s->workers) < 0)
        return; /* out of memory: keep the previous list */
    s->cap_workers = (int)cap;
    for (int i = 0; i < n; i++) {
        const worker_info *wi = server_worker(srv, i);
        http_worker *w = &s->workers[i];
        snprintf(w->id, sizeof w->id, "%s", wi->id);
        w->alive = wi->alive;
        w->last_seen_s = (double)(now - wi->last_seen_ms) / 1000.0;
        w->n_examples = wi->n_examples;
        w->task = rounds_async(r) ? rounds_async_state_name(r, i) : NULL;
    }
    s->n_workers = n;
}

static void copy_history(http_server *h, http_snapshot *s, const rounds *r)
{
    if (r->n_lines < h->parsed_lines)
        h->parsed_lines = 0; /* never happens: lines are only appended */
    if (grow((void **)&s->hist, &s->cap_hist, r->n_lines, sizeof *s->hist) < 0)
        return;
    for (; h->parsed_lines < r->n_lines; h->parsed_lines++)
        parse_line(h, r->lines[h->parsed_lines], &s->hist[h->parsed_lines]);
    s->n_hist = r->n_lines;
}

void http_publish(http_server *h, const server *srv, const rounds *r, int force)
{
    if (!h || !srv || !r)
        return;
    int64_t now = clog_now_ms();
    int live = server_n_live(srv), nw = server_n_workers(srv);
    int changed = force || r->round != h->last_round || (int)r->ph != h->last_phase ||
                  nw != h->last_workers || live != h->last_live ||
                  r->n_lines != h->parsed_lines;
    if (!changed && now - h->last_publish_ms < PUBLISH_EVERY_MS)
        return;
    uint64_t rej[REJ_COUNT], up = 0, down = 0;
    server_peek_counters(srv, rej, &up, &down);
    http_snapshot *s = http_lock(h);
    snprintf(s->run_id, sizeof s->run_id, "%s", r->run_id);
    s->round = r->round;
    s->rounds = r->cfg->rounds;
    s->phase = (unsigned)r->ph < sizeof phase_names / sizeof phase_names[0] ? phase_names[r->ph]
                                                                             : "?";
    copy_workers(s, srv, r, now);
    s->async = rounds_async(r);
    s->buffer = (unsigned)r->cfg->buffer;
    if (s->async)
        rounds_async_counts(r, &s->training, &s->held);
    copy_history(h, s, r);
    for (int i = 0; i < REJ_COUNT; i++)
        s->rejected[i] = h->hist_rejected[i] + rej[i];
    s->bytes_up = h->hist_up + up;
    s->bytes_down = h->hist_down + down;
    http_unlock(h);
    h->last_publish_ms = now;
    h->last_round = r->round;
    h->last_phase = (int)r->ph;
    h->last_workers = nw;
    h->last_live = live;
}

int http_saved_round(const rounds *r, uint64_t *round)
{
    if (!r || r->n_lines == 0)
        return 0;
    /* complete_round moves on to the next round, except after the last one */
    *round = r->ph == PH_DONE || r->round == 0 ? r->round : r->round - 1;
    return 1;
}

/* http.c - the status server: libmicrohttpd daemon, routes and renderers
 * (http.h). The page itself is in http_page.c; http_state.c fills the
 * snapshot from the event loop. */
#include "http.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clog.h"
#include "http_internal.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_Result_t;
#else
typedef enum MHD_Result MHD_Result_t;
#endif


/* ---- a growing string --------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) FP_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

static char *sb_take(sbuf *b)
{
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    if (!b->p)
        return strdup("");
    return b->p;
}

/* ---- renderers ------------------------------------------------------------------- */

/* The last measured loss (val or train) of the completed rounds, or NAN. */
static double last_loss(const http_snapshot *s, int val)
{
    for (size_t i = s->n_hist; i-- > 0;) {
        double v = val ? s->hist[i].val_loss : s->hist[i].train_loss;
        if (isfinite(v))
            return v;
    }
    return NAN;
}

static void prom_real(sbuf *b, const char *name, double v)
{
    if (isfinite(v))
        sb_printf(b, "%s %.9g\n", name, v);
    else
        sb_printf(b, "%s NaN\n", name);
}

char *http_render_metrics(const http_snapshot *s)
{
    sbuf b = {0};
    int live = 0;
    for (int i = 0; i < s->n_workers; i++)
        live += s->workers[i].alive;
    sb_printf(&b, "# HELP fedpeft_round The round in progress (0 is the initial evaluation).\n"
                  "# TYPE fedpeft_round gauge\nfedpeft_round %llu\n",
              (unsigned long long)s->round);
    sb_printf(&b, "# HELP fedpeft_rounds_completed Rounds completed (abandoned ones included).\n"
                  "# TYPE fedpeft_rounds_completed gauge\nfedpeft_rounds_completed %zu\n",
              s->n_hist);
    sb_printf(&b, "# HELP fedpeft_workers Registered workers by liveness.\n"
                  "# TYPE fedpeft_workers gauge\n"
                  "fedpeft_workers{state=\"live\"} %d\nfedpeft_workers{state=\"dead\"} %d\n",
              live, s->n_workers - live);
    sb_printf(&b, "# HELP fedpeft_bytes_total Protocol bytes since the run started.\n"
                  "# TYPE fedpeft_bytes_total counter\n"
                  "fedpeft_bytes_total{direction=\"up\"} %llu\n"
                  "fedpeft_bytes_total{direction=\"down\"} %llu\n",
              (unsigned long long)s->bytes_up, (unsigned long long)s->bytes_down);
    sb_printf(&b, "# HELP fedpeft_val_loss Federated validation loss of the last evaluated "
                  "round (NaN: none yet).\n# TYPE fedpeft_val_loss gauge\n");
    prom_real(&b, "fedpeft_val_loss", last_loss(s, 1));
    sb_printf(&b, "# HELP fedpeft_train_loss Mean local training loss of the last trained "
                  "round (NaN: none yet).\n# TYPE fedpeft_train_loss gauge\n");
    prom_real(&b, "fedpeft_train_loss", last_loss(s, 0));
    sb_printf(&b, "# HELP fedpeft_rejections_total Messages refused, by reason.\n"
                  "# TYPE fedpeft_rejections_total counter\n");
    for (int i = 0; i < REJ_COUNT; i++)
        sb_printf(&b, "fedpeft_rejections_total{reason=\"%s\"} %llu\n", reject_reason_name(i),
                  (unsigned long long)s->rejected[i]);
    return sb_take(&b);
}

static void json_real(cJSON *o, const char *k, double v)
{
    if (isfinite(v))
        cJSON_AddNumberToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

static cJSON *status_json(const http_snapshot *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    int live = 0;
    cJSON_AddStringToObject(o, "run_id", s->run_id);
    cJSON_AddNumberToObject(o, "round", (double)s->round);
    cJSON_AddNumberToObject(o, "rounds", s->rounds);
    cJSON_AddStringToObject(o, "phase", s->phase ? s->phase : "starting");
    cJSON_AddNumberToObject(o, "completed_rounds", (double)s->n_hist);
    cJSON_AddStringToObject(o, "mode", s->async ? "async" : "sync");
    cJSON *bu = s->async ? cJSON_AddObjectToObject(o, "buffer") : NULL;
    if (bu) {
        cJSON_AddNumberToObject(bu, "size", s->buffer);
        cJSON_AddNumberToObject(bu, "held", s->held);
        cJSON_AddNumberToObject(bu, "training", s->training);
    }
    cJSON *ws = cJSON_AddArrayToObject(o, "workers");
    for (int i = 0; ws && i < s->n_workers; i++) {
        const http_worker *w = &s->workers[i];
        cJSON *x = cJSON_CreateObject();
        if (!x)
            break;
        cJSON_AddStringToObject(x, "id", w->id);
        cJSON_AddStringToObject(x, "state", w->alive ? "live" : "dead");
        cJSON_AddNumberToObject(x, "last_seen_s", round(w->last_seen_s * 10) / 10);
        cJSON_AddNumberToObject(x, "examples", (double)w->n_examples);
        if (w->task)
            cJSON_AddStringToObject(x, "task", w->task);
        cJSON_AddItemToArray(ws, x);
        live += w->alive;
    }
    cJSON_AddNumberToObject(o, "live", live);
    cJSON_AddNumberToObject(o, "dead", s->n_workers - live);
    cJSON *hs = cJSON_AddArrayToObject(o, "history");
    for (size_t i = 0; hs && i < s->n_hist; i++) {
        const http_round *h = &s->hist[i];
        cJSON *x = cJSON_CreateObject();
        if (!x)
            break;
        cJSON_AddNumberToObject(x, "round", (double)h->round);
        cJSON_AddBoolToObject(x, "abandoned", h->abandoned);
        json_real(x, "train_loss", h->train_loss);
        json_real(x, "val_loss", h->val_loss);
        cJSON_AddNumberToObject(x, "bytes_up", (double)h->bytes_up);
        cJSON_AddNumberToObject(x, "bytes_down", (double)h->bytes_down);
        cJSON_AddNumberToObject(x, "sampled", h->sampled);
        cJSON_AddNumberToObject(x, "reported", h->reported);
        cJSON_AddNumberToObject(x, "seconds", h->seconds);
        cJSON_AddItemToArray(hs, x);
    }
    cJSON *rj = cJSON_AddObjectToObject(o, "rejected");
    for (int i = 0; rj && i < REJ_COUNT; i++)
        cJSON_AddNumberToObject(rj, reject_reason_name(i), (double)s->rejected[i]);
    cJSON *by = cJSON_AddObjectToObject(o, "bytes");
    if (by) {
        cJSON_AddNumberToObject(by, "up", (double)s->bytes_up);
        cJSON_AddNumberToObject(by, "down", (double)s->bytes_down);
    }
    return o;
}

char *http_render_status(const http_snapshot *s)
{
    cJSON *o = status_json(s);
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return text;
}

char *http_render_page(const http_snapshot *s)
{
    char *json = http_render_status(s);
    if (!json)
        return NULL;
    sbuf b = {0};
    /* The first state is inlined so the page draws before its first poll;
     * "</" cannot end the script element early. */
    sbuf esc = {0};
    for (const char *p = json; *p; p++) {
        if (p[0] == '<' && p[1] == '/')
            sb_printf(&esc, "<\\/");
        else
            sb_printf(&esc, "%c", *p);
        if (p[0] == '<' && p[1] == '/')
            p++;
    }
    free(json);
    char *ej = sb_take(&esc);
    if (!ej)
        return NULL;
    sb_printf(&b, "%s%s%s", http_page_head, ej, http_page_tail);
    free(ej);
    return sb_take(&b);
}

/* ---- the daemon ------------------------------------------------------------------- */

static MHD_Result_t reply(struct MHD_Connection *c, unsigned code, const char *type, char *body)
{
    if (!body)
        return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_Result_t rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static MHD_Result_t handle(void *cls, struct MHD_Connection *c, const char *url,
                           const char *method, const char *version, const char *upload_data,
                           size_t *upload_data_size, void **con_cls)
{
    http_server *h = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                     strdup("method not allowed: use GET\n"));
    if (!strcmp(url, "/healthz"))
        return reply(c, MHD_HTTP_OK, "text/plain; charset=utf-8", strdup("ok\n"));
    char *(*render)(const http_snapshot *) = NULL;
    const char *type = NULL;
    if (!strcmp(url, "/metrics")) {
        render = http_render_metrics;
        type = "text/plain; version=0.0.4; charset=utf-8";
    } else if (!strcmp(url, "/status")) {
        render = http_render_status;
        type = "application/json";
    } else if (!strcmp(url, "/") || !strcmp(url, "/index.html")) {
        render = http_render_page;
        type = "text/html; charset=utf-8";
    } else {
        return reply(c, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8",
                     strdup("not found: try /, /status, /metrics or /healthz\n"));
    }
    pthread_mutex_lock(&h->mu);
    char *body = render(&h->snap);
    pthread_mutex_unlock(&h->mu);
    return reply(c, MHD_HTTP_OK, type, body);
}

/* A listening socket on address:port, or -1 with a one-line error. */
static int listen_on(const char *address, int port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, address, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        len = sizeof *a4;
    } else if (inet_pton(AF_INET6, address, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        len = sizeof *a6;
    } else {
        return fp_error_set("[http] address '%s' is not an IP address: use e.g. 127.0.0.1 "
                            "(this machine only) or 0.0.0.0 (every interface)", address);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fp_error_set("cannot create the HTTP socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 64) < 0) {
        int e = errno;
        close(fd);
        if (e == EADDRINUSE)
            return fp_error_set("http port %d on %s is already in use (port in use): stop the "
                                "other program or choose another [http] port", port, address);
        return fp_error_set("cannot listen for HTTP on %s:%d: %s; check [http] address and "
                            "port", address, port, strerror(e));
    }
    return fd;
}

http_server *http_new(const char *address, int port)
{
    http_server *h = calloc(1, sizeof *h);
    if (!h) {
        fp_error_set("out of memory");
        return NULL;
    }
    h->fd = -1;
    pthread_mutex_init(&h->mu, NULL);
    h->last_phase = -1;
    h->fd = listen_on(address, port);
    if (h->fd < 0)
        goto err;
    h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL,
                            handle, h, MHD_OPTION_LISTEN_SOCKET, h->fd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!h->d) {
        fp_error_set("cannot start the HTTP server on %s:%d (libmicrohttpd refused)", address,
                     port);
        goto err;
    }
    h->fd = -1; /* the daemon owns it now: MHD_stop_daemon closes it */
    return h;
err:
    http_destroy(&h);
    return NULL;
}

void http_destroy(http_server **h_p)
{
    if (!h_p || !*h_p)
        return;
    http_server *h = *h_p;
    if (h->d)
        MHD_stop_daemon(h->d);
    if (h->fd >= 0)
        close(h->fd);
    pthread_mutex_destroy(&h->mu);
    free(h->snap.workers);
    free(h->snap.hist);
    free(h);
    *h_p = NULL;
}

http_snapshot *http_lock(http_server *h)
{
    pthread_mutex_lock(&h->mu);
    return &h->snap;
}

void http_unlock(http_server *h) { pthread_mutex_unlock(&h->mu); }

/* connection.c - DEALER link, registration, heartbeats, reconnects (see connection.h). */
#include "connection.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "wk_log.h"

#define WK_BACKOFF_CAP_MS 8000

struct wk_conn {
    const wk_config *cfg;
    volatile sig_atomic_t *stop;
    void *zctx, *sock;
    char model_hash[65];
    uint64_t n_examples, n_tokens;
    char run_id[128];
    wk_lora_spec spec;
    int hb_ms;
    unsigned generation;
    int64_t last_heard, last_hb;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

wk_conn *wk_conn_new(const wk_config *cfg, const char *model_hash, uint64_t n_examples,
                     uint64_t n_tokens, volatile sig_atomic_t *stop)
{
    wk_conn *self = calloc(1, sizeof *self);
    if (!self) {
        fp_error_set("out of memory");
        return NULL;
    }
    self->cfg = cfg;
    self->stop = stop;
    snprintf(self->model_hash, sizeof self->model_hash, "%s", model_hash);
    self->n_examples = n_examples;
    self->n_tokens = n_tokens;
    self->hb_ms = 1000;
    if (!(self->zctx = zmq_ctx_new())) {
        fp_error_set("zmq_ctx_new: %s", zmq_strerror(errno));
        free(self);
        return NULL;
    }
    return self;
}

static void close_socket(wk_conn *self)
{
    if (self->sock)
        zmq_close(self->sock);
    self->sock = NULL;
}

void wk_conn_destroy(wk_conn **self_p)
{
    if (!self_p || !*self_p)
        return;
    wk_conn *self = *self_p;
    close_socket(self);
    zmq_ctx_term(self->zctx);
    free(self);
    *self_p = NULL;
}

void *wk_conn_socket(wk_conn *self) { return self->sock; }
const wk_lora_spec *wk_conn_spec(const wk_conn *self) { return &self->spec; }
unsigned wk_conn_generation(const wk_conn *self) { return self->generation; }

int wk_conn_send(wk_conn *self, wire_msg *env)
{
    if (!self->sock)
        return fp_error_set("not connected to %s", self->cfg->endpoint);
    return wire_send(self->sock, NULL, env);
}

static int send_hello(wk_conn *self)
{
    return wire_send_hello(self->sock, self->cfg->id, self->model_hash, self->n_examples,
                           self->n_tokens);
}

static void take_welcome(wk_conn *self, const Fedpeft__Welcome *w)
{
    snprintf(self->run_id, sizeof self->run_id, "%s", w->run_id ? w->run_id : "");
    if (w->lora) {
        self->spec.rank = (int)w->lora->rank;
        self->spec.alpha = w->lora->alpha;
        self->spec.targets = w->lora->targets;
        self->spec.use_rslora = w->lora->use_rslora;
        self->spec.n_params = w->lora->n_params;
    }
    self->hb_ms = w->heartbeat_ms ? (int)w->heartbeat_ms : 1000;
    self->generation++;
    self->last_heard = self->last_hb = now_ms();
    wk_log("registered with %s: run %s, LoRA rank %d, %llu parameters, heartbeat %d ms",
           self->cfg->endpoint, self->run_id, self->spec.rank,
           (unsigned long long)self->spec.n_params, self->hb_ms);
}

/* A Reject: 0 when handled (UNKNOWN_WORKER: Hello sent again; STALE and the
 * like: logged), WK_SHUTDOWN, or -1 (refused: VERSION or MODEL). */
static int take_reject(wk_conn *self, const Fedpeft__Reject *r)
{
    const char *reason = r->reason ? r->reason : "";
    switch (r->code) {
    case FEDPEFT__REJECT__CODE__SHUTDOWN:
        wk_log("the coordinator says the run is over%s%s", reason[0] ? ": " : "", reason);
        return WK_SHUTDOWN;
    case FEDPEFT__REJECT__CODE__VERSION:
        return fp_error_set("the coordinator at %s refused this worker: protocol version "
                            "differs (%s); upgrade the older side", self->cfg->endpoint, reason);
    case FEDPEFT__REJECT__CODE__MODEL:
        return fp_error_set("the coordinator at %s refused this worker: wrong base model (%s); "
                            "[model] path = %s", self->cfg->endpoint, reason,
                            self->cfg->model_path);
    case FEDPEFT__REJECT__CODE__UNKNOWN_WORKER:
        wk_log("the coordinator does not know this worker (it restarted?): saying Hello again");
        if (send_hello(self) != 0)
            wk_log("sending Hello failed: %s", fp_error_get());
        return 0;
    default:
        wk_log("the coordinator rejected a message (code %d): %s", (int)r->code, reason);
        return 0;
    }
}

/* Waits up to ms for a message. 1 with *out, 0 on timeout/bad frame, -1 on error. */
static int recv_for(wk_conn *self, int ms, wire_msg **out)
{
    zmq_pollitem_t item = {self->sock, 0, ZMQ_POLLIN, 0};
    *out = NULL;
    int n = zmq_poll(&item, 1, ms);
    if (n < 0)
        return errno == EINTR ? 0 : fp_error_set("zmq_poll: %s", zmq_strerror(errno));
    if (n == 0)
        return 0;
    wire_err why = WIRE_OK;
    int rc = wire_recv(self->sock, ZMQ_DONTWAIT, NULL, 0, out, &why);
    if (rc < 0) {
        wk_log("ignored a bad message from the coordinator (%s): %s", wire_err_name(why),
               fp_error_get());
        return 0;
    }
    return rc;
}

/* One attempt: fresh socket, Hello, wait up to ms for Welcome or Reject.
 * 0 welcomed, 1 no answer, WK_SHUTDOWN, -1 refused/error. */
static int attempt(wk_conn *self, int ms)
{
    close_socket(self);
    if (!(self->sock = wire_dealer_connect(self->zctx, self->cfg->endpoint, self->cfg->id)))
        return -1;
    if (send_hello(self) != 0)
        return 1;   /* nothing to talk to yet: counts as no answer */
    int64_t end = now_ms() + ms;
    for (;;) {
        if (*self->stop)
            return WK_SHUTDOWN;
        int64_t left = end - now_ms();
        if (left <= 0)
            return 1;
        wire_msg *m = NULL;
        int rc = recv_for(self, left > 100 ? 100 : (int)left, &m);
        if (rc < 0)
            return -1;
        if (rc == 0)
            continue;
        int res = 1;
        if (m->body_case == FEDPEFT__ENVELOPE__BODY_WELCOME) {
            take_welcome(self, m->welcome);
            res = 0;
        } else if (m->body_case == FEDPEFT__ENVELOPE__BODY_REJECT &&
                   m->reject->code != FEDPEFT__REJECT__CODE__UNKNOWN_WORKER) {
            res = take_reject(self, m->reject);
            if (res == 0)
                res = 1;    /* some other refusal: keep waiting */
            else {
                wire_msg_free(&m);
                return res;
            }
        }
        wire_msg_free(&m);
        if (res == 0)
            return 0;
    }
}

int wk_conn_register(wk_conn *self)
{
    int retries = self->cfg->connect_retries;
    int64_t wait = self->cfg->retry_backoff_ms, t0 = now_ms();
    for (int k = 0; k <= retries; k++) {
        if (k > 0)
            wk_log("no coordinator at %s, retry %d/%d", self->cfg->endpoint, k, retries);
        int rc = attempt(self, (int)wait);
        if (rc != 1)
            return rc;
        wait = wait * 2 > WK_BACKOFF_CAP_MS ? WK_BACKOFF_CAP_MS : wait * 2;
    }
    close_socket(self);
    return fp_error_set("no coordinator at %s after %d retries (%.0f s): is "
                        "fedpeft-coordinator running there, and is [worker] endpoint right?",
                        self->cfg->endpoint, retries, (double)(now_ms() - t0) / 1000.0);
}

/* Heartbeat when due; reconnect after 3 heartbeats of silence. */
static int keep_alive(wk_conn *self, uint64_t round, int busy)
{
    int64_t t = now_ms();
    if (t - self->last_heard > 3 * (int64_t)self->hb_ms) {
        wk_log("no word from the coordinator for %.1f s: reconnecting",
               (double)(t - self->last_heard) / 1000.0);
        return wk_conn_register(self);
    }
    if (t - self->last_hb >= self->hb_ms) {
        self->last_hb = t;
        if (wire_send_heartbeat(self->sock, NULL, round, busy) != 0)
            (void)0;    /* queue full or no peer: silence detection handles it */
    }
    return 0;
}

int wk_conn_poll(wk_conn *self, int timeout_ms, uint64_t round, int busy, wire_msg **out)
{
    int64_t end = now_ms() + timeout_ms;
    *out = NULL;
    for (;;) {
        if (*self->stop)
            return WK_SHUTDOWN;
        int64_t left = end - now_ms();
        int slice = left <= 0 ? 0 : left < self->hb_ms ? (int)left : self->hb_ms;
        wire_msg *m = NULL;
        int rc = recv_for(self, slice, &m);
        if (rc < 0)
            return -1;
        if (rc == 1) {
            self->last_heard = now_ms();
            switch (m->body_case) {
            case FEDPEFT__ENVELOPE__BODY_HEARTBEAT:
                break;
            case FEDPEFT__ENVELOPE__BODY_WELCOME:
                take_welcome(self, m->welcome);
                break;
            case FEDPEFT__ENVELOPE__BODY_REJECT:
                rc = take_reject(self, m->reject);
                if (rc != 0) {
                    wire_msg_free(&m);
                    return rc;
                }
                break;
            case FEDPEFT__ENVELOPE__BODY_TASK:
            case FEDPEFT__ENVELOPE__BODY_CHUNK:
            case FEDPEFT__ENVELOPE__BODY_PULL:
                *out = m;
                return WK_MSG;
            default:
                wk_log("ignored an unexpected message from the coordinator (body %d)",
                       (int)m->body_case);
                break;
            }
            wire_msg_free(&m);
            continue;   /* drain what is waiting before judging silence */
        }
        rc = keep_alive(self, round, busy);
        if (rc != 0)
            return rc;
        if (now_ms() >= end)
            return 0;
    }
}

/* connection.c - DEALER link, registration, heartbeats, reconnects (see connection.h). */
#include "connection.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <zmq.h>

#include "keys.h"
#include "wk_log.h"

#define WK_BACKOFF_CAP_MS 8000

/* How the CURVE handshake of the last attempt went (socket monitor events). */
enum { WK_HS_NONE, WK_HS_REFUSED, WK_HS_FAILED };

struct wk_conn {
    const wk_config *cfg;
    volatile sig_atomic_t *stop;
    void *zctx, *sock;
    char model_hash[65];
    uint64_t n_examples, n_tokens;
    char run_id[128];
    uint32_t n_folds;           /* flora: folds in the base, of run fold_run */
    uint64_t secagg_task;       /* the task whose secagg state this process holds */
    uint64_t session;           /* Hello.session: random, this process */
    uint32_t attempt;           /* Hello.attempt: sockets opened so far */
    char fold_run[128];
    wk_lora_spec spec;
    int hb_ms;
    unsigned generation;
    int64_t last_heard, last_hb;
    /* CURVE (NULL kp: --insecure) and, while registering, the DEALER's monitor. */
    fp_keypair *kp;
    uint8_t server_pub[FP_KEY_BYTES];
    /* The signing key of secure aggregation: the identity's (kp), or with
     * --insecure one made for this process; and [privacy] roster. */
    uint8_t eph_sign_pk[FP_KEY_BYTES];
    uint8_t *eph_sign_sk;
    fp_allowlist roster;
    int has_roster;
    void *mon;
    unsigned mon_seq;
    int hs;                     /* WK_HS_* of the current attempt */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* [privacy] roster: an allowlist whose sign= keys are the only signing keys
 * this worker accepts for its peers (so a coordinator cannot substitute one). */
static int load_roster(wk_conn *self)
{
    if (fp_allowlist_load(self->cfg->roster, &self->roster) < 0)
        return fp_error_prefix("[privacy] roster: ");
    self->has_roster = 1;
    size_t n_sign = 0;
    for (size_t i = 0; i < self->roster.n; i++)
        n_sign += (size_t)(self->roster.policy[i].has_sign != 0);
    if (n_sign == 0)
        return fp_error_set("[privacy] roster %s lists no sign= keys: use an allowlist written "
                            "by `fedpeft keygen` (its lines end in sign=<Z85>)", self->cfg->roster);
    wk_log("[privacy] roster %s: %zu peers' signing keys", self->cfg->roster, n_sign);
    return 0;
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
    if (sodium_init() < 0) {
        free(self);
        fp_error_set("libsodium failed to initialise");
        return NULL;
    }
    randombytes_buf(&self->session, sizeof self->session);
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
    if (!cfg->insecure) {
        if (!(self->kp = fp_keypair_load(cfg->secret_key))) {
            fp_error_prefix("[security] secret_key: ");
            goto err;
        }
        if (fp_pubkey_parse(cfg->coordinator_key, self->server_pub) < 0) {
            fp_error_prefix("[security] coordinator_key: ");
            goto err;
        }
        char z85[FP_KEY_Z85_LEN + 1];
        zmq_z85_encode(z85, self->server_pub, FP_KEY_BYTES);
        wk_log("CURVE on: this worker's public key %s; trusting coordinator key %s",
               self->kp->public_z85, z85);
    } else {
        if (!(self->eph_sign_sk = sodium_malloc(crypto_sign_SECRETKEYBYTES))) {
            fp_error_set("out of memory");
            goto err;
        }
        crypto_sign_keypair(self->eph_sign_pk, self->eph_sign_sk);
    }
    if (cfg->roster[0] && load_roster(self) < 0)
        goto err;
    return self;
err:
    wk_conn_destroy(&self);
    return NULL;
}

/* Stops and closes the monitor of the DEALER (registration is over). */
static void close_monitor(wk_conn *self)
{
    if (!self->mon)
        return;
    if (self->sock)
        zmq_socket_monitor(self->sock, NULL, 0);
    zmq_close(self->mon);
    self->mon = NULL;
}

static void close_socket(wk_conn *self)
{
    close_monitor(self);
    if (self->sock)
        zmq_close(self->sock);
    self->sock = NULL;
}

/* A fresh DEALER: CURVE (with a monitor for handshake failures) or plain. */
static int open_socket(wk_conn *self)
{
    close_socket(self);
    self->attempt++;
    if (!self->kp) {
        self->sock = wire_dealer_connect(self->zctx, self->cfg->endpoint, self->cfg->id);
        return self->sock ? 0 : -1;
    }
    self->sock = wire_dealer_connect_curve(self->zctx, self->cfg->endpoint, self->cfg->id,
                                           self->kp, self->server_pub);
    if (!self->sock)
        return -1;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://fedpeft-worker-monitor-%u", ++self->mon_seq);
    int events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
    if (zmq_socket_monitor(self->sock, ep, events) != 0 ||
        !(self->mon = zmq_socket(self->zctx, ZMQ_PAIR)) || zmq_connect(self->mon, ep) != 0)
        return fp_error_set("cannot monitor the connection to %s: %s", self->cfg->endpoint,
                            zmq_strerror(zmq_errno()));
    return 0;
}

/* Reads the monitor's events (6 bytes: u16 event, u32 value; then the address). */
static void take_events(wk_conn *self)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, self->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t ev = 0;
        uint32_t val = 0;
        if (zmq_msg_size(&m) >= 6) {
            memcpy(&ev, zmq_msg_data(&m), 2);
            memcpy(&val, (char *)zmq_msg_data(&m) + 2, 4);
        }
        while (zmq_msg_more(&m) && zmq_msg_recv(&m, self->mon, 0) >= 0)
            ;
        zmq_msg_close(&m);
        if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && self->hs != WK_HS_REFUSED) {
            self->hs = WK_HS_REFUSED;
            wk_log("the coordinator refused this worker's key (not in its allowlist): "
                   "status %u for public key %s", (unsigned)val, self->kp->public_z85);
        } else if ((ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL ||
                    ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) && self->hs == WK_HS_NONE) {
            self->hs = WK_HS_FAILED;
            wk_log("the CURVE handshake with %s failed (%s): is [security] coordinator_key "
                   "the coordinator's public key?", self->cfg->endpoint,
                   ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ? "protocol error"
                                                             : "the coordinator hung up");
        } else if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            self->hs = WK_HS_NONE;
        }
    }
}

void wk_conn_destroy(wk_conn **self_p)
{
    if (!self_p || !*self_p)
        return;
    wk_conn *self = *self_p;
    close_socket(self);
    zmq_ctx_term(self->zctx);
    fp_keypair_free(&self->kp);
    if (self->eph_sign_sk)
        sodium_free(self->eph_sign_sk);
    if (self->has_roster)
        fp_allowlist_free(&self->roster);
    free(self);
    *self_p = NULL;
}

void wk_conn_identity(const wk_conn *self, const uint8_t **sign_pk, const uint8_t **sign_sk,
                      const fp_allowlist **roster)
{
    *sign_pk = self->kp ? self->kp->sign_pk : self->eph_sign_pk;
    *sign_sk = self->kp ? self->kp->sign_sk : self->eph_sign_sk;
    *roster = self->has_roster ? &self->roster : NULL;
}

void *wk_conn_socket(wk_conn *self) { return self->sock; }
const wk_lora_spec *wk_conn_spec(const wk_conn *self) { return &self->spec; }
unsigned wk_conn_generation(const wk_conn *self) { return self->generation; }
const char *wk_conn_run_id(const wk_conn *self) { return self->run_id; }

int wk_conn_send(wk_conn *self, wire_msg *env)
{
    if (!self->sock)
        return fp_error_set("not connected to %s", self->cfg->endpoint);
    return wire_send(self->sock, NULL, env);
}

static int send_hello(wk_conn *self)
{
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__Hello h = FEDPEFT__HELLO__INIT;
    h.worker_id = (char *)self->cfg->id;
    h.model_hash = (char *)self->model_hash;
    h.n_train_examples = self->n_examples;
    h.n_train_tokens = self->n_tokens;
    h.rank = (uint32_t)self->cfg->rank;      /* 0: the coordinator's */
    h.n_folds = self->n_folds;
    h.fold_run_id = self->fold_run;
    h.secagg_task_id = self->secagg_task;
    h.session = self->session;
    h.attempt = self->attempt;
    h.sign_pk = (ProtobufCBinaryData){FP_KEY_BYTES,
                                      self->kp ? self->kp->sign_pk : self->eph_sign_pk};
    env.body_case = FEDPEFT__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    return wire_send(self->sock, NULL, &env);
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
 * like: logged), WK_SHUTDOWN, or -1 (refused: VERSION, MODEL, IDENTITY, RANK). */

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
    case FEDPEFT__REJECT__CODE__IDENTITY:
        return fp_error_set("the coordinator at %s refused this worker: %s ([worker] id must "
                            "be the name its key has in the coordinator's allowlist)",
                            self->cfg->endpoint, reason);
    case FEDPEFT__REJECT__CODE__RANK:
        return fp_error_set("the coordinator at %s refused this worker: %s ([worker] "
                            "rank = %d)", self->cfg->endpoint, reason, self->cfg->rank);
    default:
        wk_log("the coordinator rejected a message (code %d): %s", (int)r->code, reason);
        return 0;
    }
}

/* Waits up to ms for a message. 1 with *out, 0 on timeout/bad frame, -1 on error. */
static int recv_for(wk_conn *self, int ms, wire_msg **out)
{
    zmq_pollitem_t item[2] = {{self->sock, 0, ZMQ_POLLIN, 0}, {self->mon, 0, ZMQ_POLLIN, 0}};
    *out = NULL;
    int n = zmq_poll(item, self->mon ? 2 : 1, ms);
    if (n < 0)
        return errno == EINTR ? 0 : fp_error_set("zmq_poll: %s", zmq_strerror(errno));
    if (self->mon && (item[1].revents & ZMQ_POLLIN))
        take_events(self);
    if (!(item[0].revents & ZMQ_POLLIN))
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
    self->hs = WK_HS_NONE;
    if (open_socket(self) != 0)
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
            close_monitor(self);
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
        if (k > 0 && self->hs == WK_HS_REFUSED)
            wk_log("the coordinator refused this worker's key (not in its allowlist), retry "
                   "%d/%d", k, retries);
        else if (k > 0 && self->hs == WK_HS_FAILED)
            wk_log("no CURVE handshake with %s (wrong [security] coordinator_key?), retry "
                   "%d/%d", self->cfg->endpoint, k, retries);
        else if (k > 0)
            wk_log("no coordinator at %s, retry %d/%d", self->cfg->endpoint, k, retries);
        int rc = attempt(self, (int)wait);
        if (rc != 1)
            return rc;
        wait = wait * 2 > WK_BACKOFF_CAP_MS ? WK_BACKOFF_CAP_MS : wait * 2;
    }
    close_socket(self);
    if (self->hs == WK_HS_REFUSED)
        return fp_error_set("the coordinator refused this worker's key (not in its allowlist) "
                            "after %d retries: add '%s %s' to the coordinator's [security] "
                            "allowlist and send it SIGHUP", retries, self->kp->public_z85,
                            self->cfg->id);
    if (self->hs == WK_HS_FAILED)
        return fp_error_set("cannot connect to the coordinator at %s after %d retries: the "
                            "CURVE handshake failed; [security] coordinator_key (%s) must be "
                            "the coordinator's public key (its coordinator.pub), and the "
                            "coordinator must not run --insecure", self->cfg->endpoint, retries,
                            self->cfg->coordinator_key);
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

void wk_conn_heartbeat(wk_conn *self, uint64_t round, int busy)
{
    int64_t t = now_ms();
    if (t - self->last_hb >= self->hb_ms) {
        self->last_hb = t;
        if (wire_send_heartbeat(self->sock, NULL, round, busy) != 0)
            (void)0;    /* queue full or no peer: silence detection handles it */
    }
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
            case FEDPEFT__ENVELOPE__BODY_PEER_KEYS:
            case FEDPEFT__ENVELOPE__BODY_SHARE_KEYS:
            case FEDPEFT__ENVELOPE__BODY_CONSISTENCY_CHECK:
            case FEDPEFT__ENVELOPE__BODY_UNMASK_REQUEST:
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

void wk_conn_set_secagg_task(wk_conn *self, uint64_t task_id) { self->secagg_task = task_id; }

void wk_conn_set_folds(wk_conn *self, uint32_t n_folds, const char *run_id)
{
    self->n_folds = n_folds;
    snprintf(self->fold_run, sizeof self->fold_run, "%s", n_folds ? run_id : "");
}

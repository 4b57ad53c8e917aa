/* zap.c - the ZAP handler thread: RFC 27 requests in, allowlist verdicts out (zap.h).
 *
 * The thread owns the REP socket (bound by fp_zap_start in the caller's
 * thread, then handed over: pthread_create is a full barrier) and the
 * allowlist; other threads read the counters and, under the lock, look an id up. Requests come from
 * libzmq itself, but are still bounded: at most ZAP_MAX_FRAMES frames, each
 * copied into a fixed buffer (longer ones are truncated and then fail the
 * checks).
 */
#include "zap.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "keys.h"

#define ZAP_MAX_FRAMES 16
#define ZAP_FRAME_CAP 256

struct fp_zap {
    void *sock;
    pthread_t thread;
    int started;
    atomic_int stop;
    atomic_int *reload;
    atomic_uint_fast64_t refused, n_keys;
    fp_zap_log_fn log;
    fp_allowlist al;            /* written by the ZAP thread under lock, read by others under it */
    pthread_mutex_t lock;
    atomic_uint_fast64_t generation;    /* successful reloads */
    char path[1024];
};

/* One request: its frames, truncated to ZAP_FRAME_CAP bytes each. */
typedef struct {
    int n;
    size_t len[ZAP_MAX_FRAMES];
    unsigned char data[ZAP_MAX_FRAMES][ZAP_FRAME_CAP];
} zap_request;

enum { ZR_VERSION, ZR_REQUEST_ID, ZR_DOMAIN, ZR_ADDRESS, ZR_IDENTITY, ZR_MECHANISM,
       ZR_CREDENTIALS };

static void zap_logf(fp_zap *z, const char *fmt, ...) FP_PRINTF(2, 3);

static void zap_logf(fp_zap *z, const char *fmt, ...)
{
    char line[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (z->log)
        z->log(line);
    else
        fprintf(stderr, "%s\n", line);
}

static int frame_is(const zap_request *r, int i, const char *text)
{
    return i < r->n && r->len[i] == strlen(text) && !memcmp(r->data[i], text, r->len[i]);
}

/* Frame i as printable text (for the log): control bytes become '?'. */
static void frame_text(const zap_request *r, int i, char *out, size_t cap)
{
    size_t n = i < r->n ? r->len[i] : 0, o = 0;
    if (n > ZAP_FRAME_CAP)
        n = ZAP_FRAME_CAP;
    for (size_t k = 0; k < n && o + 1 < cap; k++)
        out[o++] = r->data[i][k] >= 0x20 && r->data[i][k] < 0x7f ? (char)r->data[i][k] : '?';
    out[o] = '\0';
}

/* Reads every frame of one request. -1 on a socket error (no reply owed). */
static int zap_read(void *sock, zap_request *r)
{
    int more = 1;
    r->n = 0;
    while (more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sock, 0) < 0) {
            zmq_msg_close(&f);
            return -1;
        }
        if (r->n < ZAP_MAX_FRAMES) {
            size_t n = zmq_msg_size(&f);
            r->len[r->n] = n;   /* the real size: a truncated frame never matches */
            memcpy(r->data[r->n], zmq_msg_data(&f), n < ZAP_FRAME_CAP ? n : ZAP_FRAME_CAP);
            r->n++;
        }
        more = zmq_msg_more(&f);
        zmq_msg_close(&f);
    }
    return 0;
}

/* RFC 27 reply: version, request id (echoed), status code, text, user id, metadata. */
static void zap_reply(void *sock, const zap_request *r, const char *code, const char *text,
                      const char *user)
{
    size_t idlen = r->n > ZR_REQUEST_ID ? r->len[ZR_REQUEST_ID] : 0;
    if (idlen > ZAP_FRAME_CAP)
        idlen = ZAP_FRAME_CAP;
    const void *id = r->n > ZR_REQUEST_ID ? (const void *)r->data[ZR_REQUEST_ID] : "";
    if (zmq_send(sock, "1.0", 3, ZMQ_SNDMORE) < 0 || zmq_send(sock, id, idlen, ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, code, strlen(code), ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, text, strlen(text), ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, user, strlen(user), ZMQ_SNDMORE) < 0 || zmq_send(sock, "", 0, 0) < 0)
        (void)0;    /* the context is ending: nobody waits for the answer */
}

/* Checks one request and answers it. */
static void zap_serve_one(fp_zap *z)
{
    static _Thread_local zap_request r;     /* 4 KiB: off the thread's stack */
    if (zap_read(z->sock, &r) < 0)
        return;
    char addr[64], mech[32], why[160];
    frame_text(&r, ZR_ADDRESS, addr, sizeof addr);
    frame_text(&r, ZR_MECHANISM, mech, sizeof mech);
    if (r.n < ZR_CREDENTIALS || !frame_is(&r, ZR_VERSION, "1.0")) {
        zap_reply(z->sock, &r, "400", "malformed ZAP request", "");
        zap_logf(z, "ZAP: refused a malformed request (%d frames) from %s", r.n, addr);
        atomic_fetch_add(&z->refused, 1);
        return;
    }
    if (!frame_is(&r, ZR_DOMAIN, ZAP_DOMAIN)) {
        zap_reply(z->sock, &r, "400", "unknown ZAP domain", "");
        zap_logf(z, "ZAP: refused a request for another domain from %s", addr);
        atomic_fetch_add(&z->refused, 1);
        return;
    }
    if (!frame_is(&r, ZR_MECHANISM, "CURVE") || r.n != ZR_CREDENTIALS + 1 ||
        r.len[ZR_CREDENTIALS] != FP_KEY_BYTES) {
        snprintf(why, sizeof why, "mechanism %s is not accepted: this coordinator requires "
                 "CURVE (is the worker running with --insecure?)", mech[0] ? mech : "NULL");
        zap_reply(z->sock, &r, "400", why, "");
        zap_logf(z, "refused a worker from %s: %s (refusal %llu)", addr, why,
                 (unsigned long long)atomic_fetch_add(&z->refused, 1) + 1);
        return;
    }
    const uint8_t *key = r.data[ZR_CREDENTIALS];
    long i = fp_allowlist_find(&z->al, key);
    if (i < 0) {
        char z85[FP_KEY_Z85_LEN + 1] = "?";
        zmq_z85_encode(z85, key, FP_KEY_BYTES);
        zap_reply(z->sock, &r, "400", "key not in the allowlist", "");
        zap_logf(z, "refused worker key %s from %s: not in the allowlist %s (refusal %llu); "
                 "to admit it, add the line '%s NAME' and send SIGHUP", z85, addr, z->path,
                 (unsigned long long)atomic_fetch_add(&z->refused, 1) + 1, z85);
        return;
    }
    char user[FP_KEY_Z85_LEN + 1];
    if (z->al.names[i][0])
        snprintf(user, sizeof user, "%s", z->al.names[i]);
    else
        zmq_z85_encode(user, key, FP_KEY_BYTES);
    zap_reply(z->sock, &r, "200", "OK", user);
}

/* SIGHUP: a new list, or the old one kept with the reason logged. */
static void zap_reload(fp_zap *z)
{
    fp_allowlist fresh = {0};
    if (fp_allowlist_load(z->path, &fresh) < 0) {
        zap_logf(z, "SIGHUP: allowlist not reloaded, keeping the %zu keys loaded before: %s",
                 z->al.n, fp_error_get());
        return;
    }
    pthread_mutex_lock(&z->lock);
    fp_allowlist_free(&z->al);
    z->al = fresh;
    pthread_mutex_unlock(&z->lock);
    atomic_store(&z->n_keys, z->al.n);
    atomic_fetch_add(&z->generation, 1);
    zap_logf(z, "SIGHUP: allowlist %s reloaded: %zu worker keys", z->path, z->al.n);
}

static void *zap_main(void *arg)
{
    fp_zap *z = arg;
    while (!atomic_load(&z->stop)) {
        if (z->reload && atomic_exchange(z->reload, 0))
            zap_reload(z);
        zmq_pollitem_t it = {z->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, ZAP_POLL_MS);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            zap_logf(z, "error: ZAP handler stopped: zmq_poll: %s; no new worker can connect",
                     zmq_strerror(zmq_errno()));
            break;
        }
        if (rc > 0 && (it.revents & ZMQ_POLLIN))
            zap_serve_one(z);
    }
    zmq_close(z->sock);
    z->sock = NULL;
    return NULL;
}

fp_zap *fp_zap_start(void *zctx, const char *allowlist_path, atomic_int *reload,
                     fp_zap_log_fn log)
{
    fp_zap *z = calloc(1, sizeof *z);
    if (!z) {
        fp_error_set("out of memory");
        return NULL;
    }
    z->reload = reload;
    z->log = log;
    atomic_init(&z->stop, 0);
    atomic_init(&z->refused, 0);
    atomic_init(&z->generation, 0);
    pthread_mutex_init(&z->lock, NULL);
    if (!allowlist_path || !allowlist_path[0]) {
        fp_error_set("no allowlist: set [security] allowlist to a file of worker public keys");
        goto err;
    }
    if (strlen(allowlist_path) >= sizeof z->path) {
        fp_error_set("allowlist path is too long");
        goto err;
    }
    snprintf(z->path, sizeof z->path, "%s", allowlist_path);
    if (fp_allowlist_load(z->path, &z->al) < 0) {
        fp_error_prefix("[security] allowlist: ");
        goto err;
    }
    atomic_init(&z->n_keys, z->al.n);
    if (reload)
        atomic_store(reload, 0);
    z->sock = zmq_socket(zctx, ZMQ_REP);
    int linger = 0;
    if (!z->sock || zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger) != 0) {
        fp_error_set("cannot create the ZAP socket: %s", zmq_strerror(zmq_errno()));
        goto err;
    }
    if (zmq_bind(z->sock, ZAP_ENDPOINT) != 0) {
        fp_error_set("cannot bind the ZAP handler at %s: %s (one handler per context)",
                     ZAP_ENDPOINT, zmq_strerror(zmq_errno()));
        goto err;
    }
    /* Signals go to the other threads: block them all in this one. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&z->thread, NULL, zap_main, z);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        fp_error_set("cannot start the ZAP thread: %s", strerror(rc));
        goto err;
    }
    z->started = 1;
    return z;
err:
    if (z->sock)
        zmq_close(z->sock);
    fp_allowlist_free(&z->al);
    pthread_mutex_destroy(&z->lock);
    free(z);
    return NULL;
}

void fp_zap_stop(fp_zap **zap_p)
{
    if (!zap_p || !*zap_p)
        return;
    fp_zap *z = *zap_p;
    if (z->started) {
        atomic_store(&z->stop, 1);
        pthread_join(z->thread, NULL);
    } else if (z->sock) {
        zmq_close(z->sock);
    }
    fp_allowlist_free(&z->al);
    pthread_mutex_destroy(&z->lock);
    free(z);
    *zap_p = NULL;
}

uint64_t fp_zap_refused(const fp_zap *zap)
{
    return zap ? atomic_load(&((fp_zap *)zap)->refused) : 0;
}

uint64_t fp_zap_n_keys(const fp_zap *zap)
{
    return zap ? atomic_load(&((fp_zap *)zap)->n_keys) : 0;
}

uint64_t fp_zap_generation(const fp_zap *zap)
{
    return zap ? atomic_load(&((fp_zap *)zap)->generation) : 0;
}

int fp_zap_lookup(fp_zap *zap, const char *id, fp_allow_policy *pol)
{
    if (!zap)
        return 0;
    pthread_mutex_lock(&zap->lock);
    long i = fp_allowlist_find_id(&zap->al, id);
    if (i >= 0 && pol)
        *pol = zap->al.policy[i];
    pthread_mutex_unlock(&zap->lock);
    return i >= 0;
}

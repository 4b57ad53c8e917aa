/* http.h - the coordinator's status server (libmicrohttpd, its own thread).
 *
 *   GET /healthz  "ok\n"
 *   GET /metrics  Prometheus text format 0.0.4 (fedpeft_round, fedpeft_workers,
 *                 fedpeft_bytes_total, fedpeft_val_loss, fedpeft_train_loss,
 *                 fedpeft_rejections_total, fedpeft_rounds_completed)
 *   GET /status   JSON: round, phase, workers (liveness, last seen), per-round
 *                 history, rejections by reason, bytes
 *   GET /         a self-contained page (inline JS + SVG) polling /status
 *   anything else 404; methods other than GET / HEAD 405.
 *
 * Threads: the HTTP thread never touches the coordinator's live structures.
 * The event loop calls http_publish() after each of its iterations; it copies
 * what the pages show into a snapshot under a mutex (at most every 200 ms,
 * at once when the round, phase, registry or history changed). The handlers
 * render from that snapshot under the same mutex.
 */
#ifndef COORD_HTTP_H
#define COORD_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "metrics.h"
#include "rounds.h"
#include "wire.h"

typedef struct http_server http_server;

/* ---- the snapshot (plain data) -------------------------------------------- */

typedef struct {
    char id[WIRE_MAX_ID];
    int alive;
    double last_seen_s;         /* seconds since its last message */
    uint64_t n_examples;
    const char *task;           /* async: its part (rounds_async_state_name), else NULL */
} http_worker;

typedef struct {
    uint64_t round;
    int abandoned;
    double train_loss, val_loss;    /* NAN: not measured */
    uint64_t bytes_up, bytes_down;
    unsigned sampled, reported;
    double seconds;                 /* train + aggregate + eval + checkpoint */
} http_round;

typedef struct {
    char run_id[40];
    uint64_t round;                 /* in progress */
    int rounds;                     /* [run] rounds */
    const char *phase;              /* "wait", "train", "eval", "finishing", "done" */
    http_worker *workers;
    int n_workers, cap_workers;
    http_round *hist;               /* completed rounds, in order */
    size_t n_hist, cap_hist;
    uint64_t rejected[REJ_COUNT];   /* since the run started (completed rounds + current) */
    uint64_t bytes_up, bytes_down;
    int async;                      /* [round] mode = async: the buffer below */
    unsigned buffer, held, training;
} http_snapshot;

/* ---- the server ------------------------------------------------------------ */

/* Listens on address:port (IPv4 or IPv6 literal) and starts the thread. NULL
 * with a one-line error ("http port P on A is in use ...") on failure.
 * Caller destroys. */
http_server *http_new(const char *address, int port) FP_WUR;
/* Stops the thread and frees everything. NULL-safe. */
void http_destroy(http_server **h_p);

/* The event loop's side: the snapshot to fill (call with the lock held,
 * between http_lock and http_unlock). */
http_snapshot *http_lock(http_server *h);
void http_unlock(http_server *h);

/* Called by the event loop after each iteration (http_state.c): copies the
 * round, phase, registry, new metrics lines and counters into the snapshot
 * when something changed or 200 ms passed (always when `force`). NULL-safe. */
void http_publish(http_server *h, const server *srv, const rounds *r, int force);

/* The last completed round (in the checkpoint) into *round: 1, or 0 when
 * none has completed yet. For the stop message. */
int http_saved_round(const rounds *r, uint64_t *round);

/* Renderers (malloc'd, NUL-terminated; caller frees; NULL on out of memory).
 * Exposed for the handlers and for tests. */
char *http_render_metrics(const http_snapshot *s);
char *http_render_status(const http_snapshot *s);
char *http_render_page(const http_snapshot *s);

#endif

/* metrics.h - one JSON object per round, STATE_DIR/metrics.jsonl.
 *
 *   {"round": 3, "abandoned": false, "live": 4, "sampled": 4, "reported": 4, "dropped": 0,
 *    "train_loss": 5.1, "val_loss": 5.0, "val_tokens": 4096,
 *    "bytes_up": 123, "bytes_down": 456,
 *    "seconds": {"train": 1.2, "aggregate": 0.01, "eval": 0.3, "checkpoint": 0.002},
 *    "rejected": {"late": 0, "duplicate": 0, ...}, "secagg": true, "epsilon": 1.3}
 *
 * "epsilon" is null when [dp] is off. "unix_s" is when the round ended (wall
 * clock). [round] mode = async adds "async": true and the buffer's staleness,
 * {"staleness": {"mean": 0.5, "max": 2}} (versions behind the global).
 *
 * Losses not measured (an abandoned round, no eval answer) are null. An
 * abandoned round adds "reason". The lines also live in the checkpoint, and a
 * restarted coordinator rewrites the file from there.
 */
#ifndef COORD_METRICS_H
#define COORD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

/* Why a peer's message was refused (counted per round, by reason). */
typedef enum {
    REJ_LATE,           /* for a task that already finished */
    REJ_DUPLICATE,      /* second UpdateReady / EvalResult for the same task */
    REJ_WRONG_ROUND,    /* unknown task id or another round */
    REJ_SHAPE,          /* n_chunks or chunk sizes inconsistent with the adapter */
    REJ_NONFINITE,      /* NaN or Inf in an update or a loss */
    REJ_OVERSIZED,      /* frame larger than WIRE_MAX_MSG_BYTES */
    REJ_UNDECODABLE,    /* not a protobuf Envelope */
    REJ_VERSION,        /* protocol version differs */
    REJ_INVALID,        /* decodes, but a field is out of bounds / wrong direction */
    REJ_MODEL,          /* Hello with another base model */
    REJ_UNKNOWN_WORKER, /* message before Hello */
    REJ_STALLED,        /* an upload stopped for 3 * heartbeat_ms */
    REJ_TAMPERED,       /* a sealed chunk failed authentication */
    REJ_REPLAYED,       /* a sealed chunk presented again */
    REJ_TRUNCATED,      /* a sealed chunk of the wrong length */
    REJ_SPLICED,        /* a sealed chunk of another round / worker / position */
    REJ_UNSEALED,       /* a plain TensorChunk upload where sealing is required */
    REJ_IDENTITY,       /* an id its key is not allowlisted under, or a removed key */
    REJ_BOUND,          /* a plain update past [strategy] max_update_norm */
    REJ_FLOOD,          /* Hellos faster than the per-key limit */
    REJ_COUNT
} reject_reason;

const char *reject_reason_name(reject_reason r);

typedef struct {
    uint64_t round;
    int abandoned;
    char reason[256];
    unsigned live, sampled, reported, dropped;
    double train_loss, val_loss;     /* NAN: not measured */
    uint64_t val_tokens;
    uint64_t bytes_up, bytes_down;
    double t_train, t_aggregate, t_eval, t_checkpoint;
    uint64_t rejected[REJ_COUNT];
    double epsilon;                  /* DP spent so far at [dp] delta; NAN: DP off */
    int secagg;                      /* the round used secure aggregation */
    double unix_s;                   /* wall clock when the round ended */
    int async;                       /* [round] mode = async: the round is one buffer */
    double staleness_mean;           /* async: of the buffer's updates (versions) */
    unsigned staleness_max;
} round_metrics;

/* Zeroes m and sets its losses to NAN. */
void metrics_reset(round_metrics *m, uint64_t round);
/* One JSON line (no newline), malloc'd; caller frees. NULL on out of memory. */
char *metrics_render(const round_metrics *m) FP_WUR;
/* Appends line + "\n" to path and fsyncs. */
int metrics_append(const char *path, const char *line) FP_WUR;
/* Replaces path with these lines (atomically). */
int metrics_rewrite(const char *path, char *const *lines, size_t n) FP_WUR;

#endif

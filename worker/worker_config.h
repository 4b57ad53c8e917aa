/* worker_config.h - the worker's settings: [model], [worker], [security] and
 * [privacy] of the INI file.
 *
 * One file may configure a whole simulation; the worker reads [model] path and
 * [worker], and skips the coordinator's and simulate's sections (see
 * docs/config.md). Every key can be overridden as --section.key=value.
 */
#ifndef FP_WORKER_CONFIG_H
#define FP_WORKER_CONFIG_H

#include <stdint.h>

#include "config.h"
#include "fp_error.h"
#include "wire.h"

typedef struct {
    char model_path[1024];      /* [model] path: HF model directory */
    int base_dtype;             /* [model] dtype: fp_base_dtype */
    int grad_checkpoint;        /* [worker] grad_checkpoint, or the task's [train] one */
    char id[WIRE_MAX_ID];       /* [worker] id */
    char endpoint[256];         /* coordinator address */
    char data[1024];            /* private training data */
    char state_dir[1024];       /* what the worker keeps across restarts (scaffold's c_i); "" = none */
    int format;                 /* fp_data_format (index into the enum names) */
    double val_fraction;        /* held-out fraction for EVAL tasks */
    uint64_t split_seed;
    int batch;                  /* 0: the coordinator's */
    int rank;                   /* LoRA rank asked for in Hello; 0: the coordinator's */
    int threads;                /* OpenBLAS threads, 0: default */
    int connect_retries;        /* attempts to reach the coordinator */
    int retry_backoff_ms;       /* first wait; doubles, capped at 8000 */
    /* [security] */
    char secret_key[1024];      /* this worker's NAME.key (fedpeft keygen) */
    char coordinator_key[1024]; /* the coordinator's .pub file or Z85 text */
    int insecure;               /* plain TCP, no CURVE (local tests only) */
    char allowlist[1024];       /* the coordinator's, in a shared file: ignored */
    /* [privacy]: what this worker demands of a round before it sends anything
     * (worker/privacy_policy.h); --insecure turns it off. */
    int require_secagg;         /* refuse a TRAIN task without secure aggregation */
    int min_peers;              /* members of a secure round, and survivors to unmask */
    int min_threshold;          /* 0: a majority of each secret's holders (and >= 2) */
    double max_corrupt;         /* hostile fraction assumed when checking a SecAgg+ graph */
    char roster[1024];          /* allowlist-format file: each peer's signing key ("" none) */
} wk_config;

/* The key table ({NULL}-terminated) and the sections the worker skips. */
extern const fp_cfg_key wk_config_keys[];
extern const char *const wk_config_ignore[];

/* Defaults, then FILE (may be NULL), then the --section.key overrides in
 * argv; checks that the required keys are set. -1 with an error. */
int wk_config_load(wk_config *c, const char *file, int argc, char **argv) FP_WUR;

#endif

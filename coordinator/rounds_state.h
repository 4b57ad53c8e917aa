/* rounds_state.h - the round state (struct rounds), shared by the rounds_*.c
 * files, secagg_server.c and http_state.c. Data only: each file's functions
 * are declared in its own header (rounds_phase.h, rounds_agg.h, rounds_msgs.h,
 * rounds_persist.h, rounds_report.h). Not for others. */
#ifndef COORD_ROUNDS_STATE_H
#define COORD_ROUNDS_STATE_H

#include <stdint.h>

#include "checkpoint.h"
#include "lora.h"
#include "metrics.h"
#include "rounds.h"
#include "strategy.h"
#include "dp.h"
#include "agg_serveropt.h"
#include "agg_fedbuff.h"
#include "keys.h"
#include "seal.h"
#include "secagg_server.h"
#include "uploads.h"
#include "wire.h"

typedef enum { PH_WAIT, PH_TRAIN, PH_EVAL, PH_FINISHING, PH_DONE } round_phase;

/* A worker's part in the current phase. */
enum { ST_NONE, ST_PENDING, ST_READY, ST_STAGING, ST_DONE, ST_FAILED };

enum { TASK_TRAIN = 0, TASK_EVAL = 1 };

struct rounds {
    const coord_config *cfg;
    server *srv;
    strategy *strat;
    fp_lora *global;
    float *staging;                 /* aggregation scratch (n_params floats) */
    upload_slots up;                /* the uploads being received ([round] upload_slots) */
    /* The strategy (docs/aggregation.md): its checkpoint name, the trainable
     * view and the server optimizer on the aggregated delta. */
    char strat_name[32];
    int view_kind;                  /* FP_VIEW_* of this round's updates (finetune.h):
                                       ffa B; rolora B in odd rounds, A in even ones */
    size_t n_view;                  /* floats in the view = the upload of a full-rank worker */
    float *view, *view_old;         /* [n_view] aggregation scratch */
    fp_sopt *sopt;                  /* NULL: server_opt = none */
    char run_id[40], model_hash[72];
    char ckpt_path[1100], metrics_path[1100];
    uint64_t nonce;                 /* task ids: nonce + 2 * round + kind */
    uint64_t round;                 /* the round in progress */
    round_phase ph;
    int64_t phase_start_ms, deadline_ms, wait_log_ms;
    /* Per worker (server index), this phase. */
    uint8_t *status;
    uint8_t *resent;                /* re-Hello task resends this phase (at most one) */
    double *examples;           /* this round's averaging weight (server_weight) */
    double *val_loss;           /* this round's evaluation loss per worker */
    float *loss;
    int *queue;                     /* READY workers waiting for Pull, FIFO */
    int q_head, q_len;
    uint32_t *stalls;               /* per worker: uploads it let stall (whole run) */
    unsigned n_targets, n_reported;
    unsigned n_refused;         /* workers that refused this phase's task (Refusal) */
    char first_refusal[160];    /* "ID: reason" of the first, for an abandoned round */
    double loss_wsum, weight_sum;   /* train loss weighted by examples */
    double sampled_weight;          /* sum of the sampled workers' weights (rounds_weight) */
    double weight_cap;              /* this round's cap on one weight (0 = none) */
    double val_sum;
    uint64_t val_tokens;
    round_metrics m;
    char **lines;                   /* metrics lines of completed rounds */
    size_t n_lines;
    int finished_flag;              /* the checkpoint says the run is over */
    int exit_code;
    int lock_fd;                    /* flock on STATE_DIR/lock */
    /* Sealed uploads (seal.h): the coordinator's key pair (its [security]
     * secret_key; an ephemeral one with --insecure), each worker's per-round
     * seal key of this and the previous round, and the staged upload's key. */
    fp_keypair *seal_kp;
    uint8_t sample_key[32];         /* who is sampled: from the secret key (rounds_new) */
    int sample_secret;              /* 0: --insecure, the sample follows [run] seed */
    uint8_t (*seal_pk)[32], (*prev_seal_pk)[32];
    uint64_t *prev_task;            /* task id of prev_seal_pk's round */
    /* flora (docs/protocol.md, "Folds"), per worker: the folds its base holds
     * (from Hello, UpdateReady, EvalResult), and whether its next Task must
     * restore the original base first. */
    uint32_t *fold_have;
    uint8_t *fold_reset;
    uint8_t *open_buf;              /* one opened chunk */
    sa_server *sa;                  /* secure aggregation of this round, or NULL */
    /* [round] mode = async (rounds_async.h), per worker: its AS_* part, its
     * hold task and the version it trains from, when that went out, and the
     * order held updates arrived in; this round's staleness weight (1 in sync). */
    uint8_t *as_state;
    uint64_t *as_task, *as_base, *as_seq;
    int64_t *as_sent_ms;
    uint64_t as_next_seq;
    uint32_t *as_silent;            /* rounds it went silent in (rounds_async_blame) */
    uint64_t *as_bench_until;       /* its held updates wait until this round */
    double *stale_w;
    fp_stale_config stale;
    fp_dp_accountant acct;
    double last_epsilon;
    fp_dp_noise *noise;
    const char *dump_dir;           /* FEDPEFT_TEST_DUMP_DIR (tests only) */
};

static inline double secs(int64_t ms) { return (double)ms / 1000.0; }

/* rounds.c */
uint64_t rounds_task_id(const rounds *r, uint64_t round, int kind);
/* Plain mode: the largest L2 norm an honest update of n floats can have
 * ([strategy] max_update_norm, or auto), 0 = unbounded. */
double rounds_update_bound(const rounds *r, size_t n);
/* Worker w's averaging weight this round: its server weight for `declared`
 * examples, capped at weight_cap; 1 for everyone with [dp] (sensitivity C / D
 * needs every worker to count the same; weighting and allowlist weights are
 * not used). */
double rounds_weight(const rounds *r, int w, uint64_t declared);
/* rolora (RoLoRA, docs/aggregation.md): this round's factor, B in odd rounds
 * and A in even ones; the other is frozen at the global's values, so the mean
 * of the updates is the mean of the workers' products B_k A_k exactly. No-op
 * for other strategies. -1 with fp_error when memory runs out. */
int rounds_set_view(rounds *r);
/* Floats worker w uploads (its view at its rank). */
size_t rounds_upload_n(const rounds *r, int w);

#endif

/* coord_config.h - the coordinator's settings: the fp_cfg_key table for its
 * sections of the (shared) INI file, [run] [model] [lora] [train] [sampling]
 * [round] [network] [strategy] [security]. [worker] and [simulate] belong to the other
 * programs and are skipped. docs/config.md lists every key. */
#ifndef COORD_CONFIG_H
#define COORD_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "fp_error.h"

enum { COORD_STRATEGY_FEDAVG, COORD_STRATEGY_FFA, COORD_STRATEGY_FLORA, COORD_STRATEGY_SVD,
       COORD_STRATEGY_ROLORA, COORD_STRATEGY_SCAFFOLD };
enum { COORD_WEIGHT_EXAMPLES, COORD_WEIGHT_EQUAL };
enum { COORD_ROBUST_NONE, COORD_ROBUST_MEDIAN, COORD_ROBUST_TRIMMED, COORD_ROBUST_NORM };
/* Names by the enums above. */
extern const char *const coord_strategy_names[];
extern const char *const coord_robust_names[];
enum { COORD_DP_CENTRAL, COORD_DP_DISTRIBUTED };
enum { COORD_SAMPLING_FIXED, COORD_SAMPLING_POISSON };
enum { COORD_MODE_SYNC, COORD_MODE_ASYNC };

typedef struct {
    /* [run] */
    int rounds;
    uint64_t seed;
    double target_loss;
    char state_dir[1024];
    char out_dir[1024];
    int save_every;             /* [run] save_every: STATE_DIR/adapters/round-N (0 = off) */
    /* [model] */
    char model_path[1024];
    int workers_dtype;          /* [model] dtype: the workers' base format (unused here: the
                                   coordinator maps and hashes the source weights) */
    /* [lora] */
    int lora_rank;
    float lora_alpha;
    char lora_targets[256];
    int lora_rslora;
    /* [train] */
    int local_steps, batch, seq;
    float lr;
    int optimizer;              /* fp_opt_kind: adamw 0, sgd 1 */
    float weight_decay, max_grad_norm;
    float prox_mu;              /* FedProx mu on the workers (0 = off) */
    int grad_checkpoint;        /* [train] grad_checkpoint: workers checkpoint activations */
    /* [sampling] */
    int sampling_mode;          /* COORD_SAMPLING_FIXED / COORD_SAMPLING_POISSON (sampling.h) */
    double fraction;
    int min_workers, max_workers;
    int weighting;              /* COORD_WEIGHT_EXAMPLES / COORD_WEIGHT_EQUAL */
    uint64_t max_examples;      /* cap on a worker's declared examples (0 = none) */
    /* [round] */
    double deadline_s;
    int min_quorum;
    double eval_deadline_s, start_timeout_s;
    int upload_slots;           /* uploads received at once (uploads.h) */
    int round_mode;             /* COORD_MODE_SYNC / COORD_MODE_ASYNC (FedBuff, rounds_async.h) */
    int buffer;                 /* async: updates per buffer = per global version (K) */
    int staleness;              /* async: fp_stale_kind (agg_fedbuff.h) */
    double staleness_a, staleness_b;
    int max_staleness;          /* async: older updates are dropped (0 = no limit) */
    /* [network] */
    char endpoint[256];
    int heartbeat_ms;
    /* [strategy] */
    int strategy;               /* COORD_STRATEGY_* */
    int server_opt;             /* index into "none", "fedavgm", "fedadam", "fedyogi", "fedadagrad" */
    double server_lr;           /* 0 = the optimizer's default */
    double server_beta1, server_beta2, server_tau;
    int robust;                 /* COORD_ROBUST_* */
    double robust_trim, robust_norm_bound;
    double max_update_norm;     /* plain mode: bound on each update's L2 norm (0 = auto) */
    /* [http] */
    int http_port;              /* 0 = no status server */
    char http_address[64];
    /* [security] */
    char secret_key[1024];      /* NAME.key from `fedpeft keygen` */
    char allowlist[1024];       /* worker public keys admitted */
    int insecure;               /* plain TCP, no CURVE (local tests only) */
    char coordinator_key[1024]; /* a worker's key in a shared file: ignored here */
    /* [secagg] (docs/protocol.md, "Secure aggregation") */
    int secagg;                 /* on by default */
    int secagg_threshold;       /* t; 0: automatic (secagg_server.c, sa_plan) */
    int secagg_neighbours;      /* SecAgg+ degree; 0: automatic */
    double secagg_corrupt, secagg_dropout;  /* the graph's assumptions */
    float secagg_clip;          /* quantization range [-clip, clip] */
    int secagg_frac_bits;
    /* [dp] */
    int dp;
    double dp_clip_norm, dp_noise_multiplier, dp_delta, dp_epsilon_budget;
    int dp_mode;                /* COORD_DP_CENTRAL / COORD_DP_DISTRIBUTED */
    /* Not keys: where the settings came from (for messages). */
    char config_path[1024];
} coord_config;

extern const fp_cfg_key coord_config_keys[];
/* Sections that belong to the other programs (NULL-terminated). */
extern const char *const coord_config_ignore[];

/* Defaults, then FILE (may be NULL), then --section.key overrides from argv,
 * then (when `check`) checks across keys ([model] path given, min_quorum vs
 * max_workers...). -1 with a message naming the file, line or key. */
int coord_config_load(coord_config *c, const char *file, int argc, char **argv,
                      int check) FP_WUR;

#endif

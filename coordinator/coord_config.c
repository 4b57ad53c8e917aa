/* coord_config.c - the coordinator's key table and cross-key checks. */
#include "coord_config.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#define F(field) offsetof(coord_config, field)
#define S(field) sizeof(((coord_config *)0)->field)

static const char *const optimizers[] = {"adamw", "sgd", NULL};
static const char *const model_dtypes[] = {"f32", "bf16", "int8", "nf4", NULL};
const char *const coord_strategy_names[] = {"fedavg", "ffa", "flora", "svd", "rolora",
                                            "scaffold", NULL};
const char *const coord_robust_names[] = {"none", "median", "trimmed_mean", "norm_bound", NULL};
static const char *const server_opts[] = {"none", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
                                          NULL};
static const char *const dp_modes[] = {"central", "distributed", NULL};
static const char *const weightings[] = {"examples", "equal", NULL};
static const char *const sampling_modes[] = {"fixed", "poisson", NULL};
static const char *const round_modes[] = {"sync", "async", NULL};
static const char *const staleness_kinds[] = {"poly", "const", "hinge", NULL};  /* fp_stale_kind */

const char *const coord_config_ignore[] = {"worker", "simulate", "privacy", NULL};

/* {section, name, type, min, max, default, offset, size, enum names, help} */
const fp_cfg_key coord_config_keys[] = {
    {"run", "rounds", FP_CFG_INT, 1, 100000, "10", F(rounds), 0, NULL,
     "federated rounds to run (round 0, the initial evaluation, is extra)"},
    {"run", "seed", FP_CFG_U64, 0, 0, "1234", F(seed), 0, NULL,
     "seeds the initial adapter, worker sampling and local training"},
    {"run", "target_loss", FP_CFG_DOUBLE, 0, 1e9, "0", F(target_loss), 0, NULL,
     "stop early once the federated validation loss is <= this (0 = off)"},
    {"run", "state_dir", FP_CFG_STRING, 0, 0, "fedpeft-state", F(state_dir), S(state_dir), NULL,
     "checkpoint.bin and metrics.jsonl live here; a restart resumes from it"},
    {"run", "out_dir", FP_CFG_STRING, 0, 0, "", F(out_dir), S(out_dir), NULL,
     "final adapter (PEFT directory); empty = STATE_DIR/adapter"},
    {"run", "save_every", FP_CFG_INT, 0, 1000000, "0", F(save_every), 0, NULL,
     "also write the global adapter every N completed rounds to STATE_DIR/adapters/round-N "
     "(0 = only the final one)"},
    {"model", "path", FP_CFG_STRING, 0, 0, "", F(model_path), S(model_path), NULL,
     "base model: Hugging Face directory (required; workers must use the same model)"},
    /* Accepted so that one file serves coordinator and workers: the workers' format
     * (fp_base_dtype names) does not change the model hash, which is of the source. */
    {"model", "dtype", FP_CFG_ENUM, 0, 0, "f32", F(workers_dtype), 0, model_dtypes,
     "the workers' base-weight format (the coordinator reads the source weights: no effect "
     "here)"},
    {"lora", "rank", FP_CFG_INT, 1, 4096, "8", F(lora_rank), 0, NULL, "LoRA rank r"},
    {"lora", "alpha", FP_CFG_FLOAT, 1e-6, 1e6, "16", F(lora_alpha), 0, NULL,
     "LoRA alpha (scale alpha/r, or alpha/sqrt(r) with rslora)"},
    {"lora", "targets", FP_CFG_STRING, 0, 0, "q_proj,k_proj,v_proj,o_proj", F(lora_targets),
     S(lora_targets), NULL, "target modules: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all"},
    {"lora", "rslora", FP_CFG_BOOL, 0, 1, "false", F(lora_rslora), 0, NULL, "rank-stabilised scale"},
    {"train", "local_steps", FP_CFG_INT, 1, 1000000, "20", F(local_steps), 0, NULL,
     "optimizer steps each sampled worker trains per round"},
    {"train", "batch", FP_CFG_INT, 1, 4096, "4", F(batch), 0, NULL, "rows per step (a worker may override)"},
    {"train", "seq", FP_CFG_INT, 2, 1048576, "128", F(seq), 0, NULL, "tokens per row (training and evaluation)"},
    {"train", "lr", FP_CFG_FLOAT, 0, 10, "1e-3", F(lr), 0, NULL, "learning rate"},
    {"train", "optimizer", FP_CFG_ENUM, 0, 0, "adamw", F(optimizer), 0, optimizers, "adamw or sgd"},
    {"train", "weight_decay", FP_CFG_FLOAT, 0, 10, "0", F(weight_decay), 0, NULL, "decoupled weight decay"},
    {"train", "max_grad_norm", FP_CFG_FLOAT, 0, 1e9, "1.0", F(max_grad_norm), 0, NULL,
     "clip the gradient norm to this (0 = off)"},
    {"sampling", "mode", FP_CFG_ENUM, 0, 0, "fixed", F(sampling_mode), 0, sampling_modes,
     "fixed (round(fraction x live) workers a round) or poisson (each live identity with "
     "probability fraction, independently; the DP accountant's model)"},
    {"sampling", "fraction", FP_CFG_DOUBLE, 0, 1, "1.0", F(fraction), 0, NULL,
     "fixed: fraction of live workers sampled each round; poisson: each one's probability q"},
    {"sampling", "min_workers", FP_CFG_INT, 1, 1000000, "1", F(min_workers), 0, NULL,
     "a round waits until this many are live; mode = fixed samples at least this many"},
    {"sampling", "max_workers", FP_CFG_INT, 0, 1000000, "0", F(max_workers), 0, NULL,
     "sample at most this many (0 = all)"},
    {"sampling", "weighting", FP_CFG_ENUM, 0, 0, "examples", F(weighting), 0, weightings,
     "averaging weight: examples (declared count, capped) or equal (1 per worker)"},
    {"sampling", "max_examples", FP_CFG_U64, 0, 0, "0", F(max_examples), 0, NULL,
     "cap on the example count a worker declares (0 = none; allowlist max_examples=N per key)"},
    {"round", "deadline_s", FP_CFG_DOUBLE, 0.1, 1e7, "120", F(deadline_s), 0, NULL,
     "seconds a training round waits for updates"},
    {"round", "min_quorum", FP_CFG_INT, 1, 1000000, "1", F(min_quorum), 0, NULL,
     "updates needed at the deadline; fewer abandons the round (as does a smaller Poisson "
     "draw)"},
    {"round", "eval_deadline_s", FP_CFG_DOUBLE, 0.1, 1e7, "60", F(eval_deadline_s), 0, NULL,
     "seconds the evaluation phase waits for results"},
    {"round", "start_timeout_s", FP_CFG_DOUBLE, 0.1, 1e7, "120", F(start_timeout_s), 0, NULL,
     "seconds to wait for min_workers before starting with fewer (at least min_quorum)"},
    {"round", "upload_slots", FP_CFG_INT, 1, 256, "4", F(upload_slots), 0, NULL,
     "updates received at once (each holds one adapter of memory)"},
    {"round", "mode", FP_CFG_ENUM, 0, 0, "sync", F(round_mode), 0, round_modes,
     "sync (a round waits for its sampled workers) or async (FedBuff: every live worker trains; "
     "each buffer of K updates is one version)"},
    {"round", "buffer", FP_CFG_INT, 2, 1000000, "4", F(buffer), 0, NULL,
     "async: K, the updates aggregated into each global version (with secagg: one secure sum "
     "of K)"},
    {"round", "staleness", FP_CFG_ENUM, 0, 0, "poly", F(staleness), 0, staleness_kinds,
     "async: weight of an update s versions old: poly (1+s)^-a, const 1, hinge 1 up to b then "
     "1/(a(s-b)+1)"},
    {"round", "staleness_a", FP_CFG_DOUBLE, 0, 100, "0.5", F(staleness_a), 0, NULL,
     "async: poly exponent or hinge slope a"},
    {"round", "staleness_b", FP_CFG_DOUBLE, 0, 1e6, "4", F(staleness_b), 0, NULL,
     "async: hinge start b (versions)"},
    {"round", "max_staleness", FP_CFG_INT, 0, 1000000, "0", F(max_staleness), 0, NULL,
     "async: an update more versions old than this is dropped and its worker retrains (0 = "
     "no limit)"},
    {"network", "endpoint", FP_CFG_STRING, 0, 0, "tcp://127.0.0.1:5555", F(endpoint),
     S(endpoint), NULL, "ZeroMQ address the coordinator binds"},
    {"network", "heartbeat_ms", FP_CFG_INT, 10, 3600000, "1000", F(heartbeat_ms), 0, NULL,
     "heartbeat period; 3x silence marks a worker dead or a stalled upload"},
    {"train", "prox_mu", FP_CFG_FLOAT, 0, 1e6, "0", F(prox_mu), 0, NULL,
     "FedProx proximal term mu on the workers (0 = off)"},
    {"train", "grad_checkpoint", FP_CFG_BOOL, 0, 1, "false", F(grad_checkpoint), 0, NULL,
     "workers keep only each layer's input and recompute the rest in backward (less memory, "
     "one more forward; same gradients)"},
    {"strategy", "name", FP_CFG_ENUM, 0, 0, "fedavg", F(strategy), 0, coord_strategy_names,
     "aggregation: fedavg, ffa (A frozen, B only), rolora (B and A in turn), scaffold (fedavg "
     "with drift correction), flora (stacking), svd (FlexLoRA)"},
    {"strategy", "server_opt", FP_CFG_ENUM, 0, 0, "none", F(server_opt), 0, server_opts,
     "server optimizer on the aggregated delta: none, fedavgm, fedadam, fedyogi, fedadagrad"},
    {"strategy", "server_lr", FP_CFG_DOUBLE, 0, 1e6, "0", F(server_lr), 0, NULL,
     "server learning rate (0 = default: 1.0 for fedavgm, 3e-2 for fedadam, 1e-2 for fedyogi "
     "and fedadagrad)"},
    {"strategy", "beta1", FP_CFG_DOUBLE, 0, 0.999999, "0", F(server_beta1), 0, NULL,
     "server momentum beta1 (0 = default: 0.6 for fedavgm, 0.9 for the adaptive ones)"},
    {"strategy", "beta2", FP_CFG_DOUBLE, 0, 0.999999, "0.99", F(server_beta2), 0, NULL,
     "server second-moment beta2 (fedadam, fedyogi)"},
    {"strategy", "tau", FP_CFG_DOUBLE, 1e-12, 1e6, "1e-3", F(server_tau), 0, NULL,
     "server adaptivity tau (v starts at tau^2)"},
    {"strategy", "robust", FP_CFG_ENUM, 0, 0, "none", F(robust), 0, coord_robust_names,
     "robust aggregation of untrusted updates: none, median, trimmed_mean, norm_bound"},
    {"strategy", "trim", FP_CFG_DOUBLE, 0, 0.499999, "0.1", F(robust_trim), 0, NULL,
     "trimmed_mean: fraction beta cut at each end per coordinate"},
    {"strategy", "norm_bound", FP_CFG_DOUBLE, 1e-12, 1e12, "1.0", F(robust_norm_bound), 0, NULL,
     "norm_bound: each update is clipped to this L2 norm"},
    {"strategy", "max_update_norm", FP_CFG_DOUBLE, 0, 1e12, "0", F(max_update_norm), 0, NULL,
     "plain mode: refuse an update whose L2 norm exceeds this (0 = auto: the most the "
     "optimizer can move in local_steps)"},
    {"http", "port", FP_CFG_INT, 0, 65535, "0", F(http_port), 0, NULL,
     "status server port: /, /status, /metrics, /healthz (0 = off)"},
    {"http", "address", FP_CFG_STRING, 0, 0, "127.0.0.1", F(http_address), S(http_address),
     NULL, "status server address (0.0.0.0: every interface)"},
    {"security", "secret_key", FP_CFG_STRING, 0, 0, "", F(secret_key), S(secret_key), NULL,
     "this coordinator's secret key file (fedpeft keygen --out DIR --name coordinator)"},
    {"security", "allowlist", FP_CFG_STRING, 0, 0, "", F(allowlist), S(allowlist), NULL,
     "file of admitted worker public keys, '<Z85> name' per line (re-read on SIGHUP)"},
    {"security", "insecure", FP_CFG_BOOL, 0, 1, "false", F(insecure), 0, NULL,
     "plain TCP without CURVE: unauthenticated, local tests only (also: --insecure)"},
    {"security", "coordinator_key", FP_CFG_STRING, 0, 0, "", F(coordinator_key),
     S(coordinator_key), NULL, "the workers' key (a shared file); ignored by the coordinator"},
    {"secagg", "enabled", FP_CFG_BOOL, 0, 1, "true", F(secagg), 0, NULL,
     "secure aggregation: the coordinator learns only the sum of the round's updates"},
    {"secagg", "threshold", FP_CFG_INT, 0, 65536, "0", F(secagg_threshold), 0, NULL,
     "Shamir threshold t; 0 = max(2, ceil(2n/3)) on the complete graph, the SecAgg+ bound's t "
     "on a Harary graph"},
    {"secagg", "neighbours", FP_CFG_INT, 0, 65536, "0", F(secagg_neighbours), 0, NULL,
     "SecAgg+ degree (even): neighbours each member masks with; 0 = the smallest the bound "
     "allows for the fractions below, or the complete graph"},
    {"secagg", "corrupt_fraction", FP_CFG_DOUBLE, 0, 0.49, "0.05", F(secagg_corrupt), 0, NULL,
     "hostile members assumed when choosing the graph (colluding with each other)"},
    {"secagg", "dropout_fraction", FP_CFG_DOUBLE, 0, 0.49, "0.05", F(secagg_dropout), 0, NULL,
     "members assumed to drop out of a round when choosing the graph"},
    {"secagg", "clip", FP_CFG_FLOAT, 1e-6, 1e6, "1.0", F(secagg_clip), 0, NULL,
     "fixed-point range [-clip, clip] of each weighted update value"},
    {"secagg", "frac_bits", FP_CFG_INT, 0, 30, "22", F(secagg_frac_bits), 0, NULL,
     "fixed-point fraction bits (step 2^-frac_bits)"},
    {"dp", "enabled", FP_CFG_BOOL, 0, 1, "false", F(dp), 0, NULL,
     "differential privacy: clip updates, add Gaussian noise, account epsilon"},
    {"dp", "clip_norm", FP_CFG_DOUBLE, 1e-9, 1e9, "1.0", F(dp_clip_norm), 0, NULL,
     "C: L2 norm bound of each worker's update (every worker weighs 1 with [dp])"},
    {"dp", "noise_multiplier", FP_CFG_DOUBLE, 0, 1e6, "1.0", F(dp_noise_multiplier), 0, NULL,
     "sigma: noise std on the sum of clipped updates = sigma * C (on the released mean "
     "sigma * C / D, D the fixed denominator)"},
    {"dp", "mode", FP_CFG_ENUM, 0, 0, "central", F(dp_mode), 0, dp_modes,
     "central (coordinator noises the sum) or distributed (each worker adds its share)"},
    {"dp", "delta", FP_CFG_DOUBLE, 1e-300, 0.999999, "1e-5", F(dp_delta), 0, NULL,
     "delta of the reported (epsilon, delta)"},
    {"dp", "epsilon_budget", FP_CFG_DOUBLE, 0, 1e9, "0", F(dp_epsilon_budget), 0, NULL,
     "stop the run before epsilon would exceed this (0 = no budget)"},
    {NULL, NULL, 0, 0, 0, NULL, 0, 0, NULL, NULL},
};

int coord_config_load(coord_config *c, const char *file, int argc, char **argv, int check)
{
    memset(c, 0, sizeof *c);
    if (fp_cfg_defaults(coord_config_keys, c) < 0)
        return -1;
    const char *where = file ? file : "command line";
    if (file) {
        snprintf(c->config_path, sizeof c->config_path, "%s", file);
        if (fp_cfg_load_file(coord_config_keys, c, file, coord_config_ignore) < 0)
            return -1;
    }
    if (fp_cfg_apply_args(coord_config_keys, c, argc, argv) < 0)
        return -1;
    if (!check)
        return 0;
    if (!c->model_path[0])
        return fp_error_set("%s: [model] path is required: the base model's Hugging Face "
                            "directory (or pass --model.path=DIR)", where);
    if (!c->state_dir[0])
        return fp_error_set("%s: [run] state_dir must not be empty", where);
    if (!c->endpoint[0])
        return fp_error_set("%s: [network] endpoint must not be empty", where);
    if (c->dp && c->dp_mode == COORD_DP_DISTRIBUTED && !c->secagg)
        return fp_error_set("%s: [dp] mode = distributed needs [secagg] enabled = true (each "
                            "worker's noise share alone is too small to protect it)", where);
    if (c->secagg && (c->strategy == COORD_STRATEGY_SVD || c->strategy == COORD_STRATEGY_FLORA))
        return fp_error_set("%s: strategy %s needs each worker's factors, which secure "
                            "aggregation hides; set [secagg] enabled = false or use fedavg/ffa",
                            where, coord_strategy_names[c->strategy]);
    if (c->secagg && c->robust != COORD_ROBUST_NONE)
        return fp_error_set("%s: [strategy] robust = %s needs each worker's update, which "
                            "secure aggregation hides; set [secagg] enabled = false or robust = "
                            "none", where, coord_robust_names[c->robust]);
    if (c->robust != COORD_ROBUST_NONE &&
        (c->strategy == COORD_STRATEGY_SVD || c->strategy == COORD_STRATEGY_FLORA))
        return fp_error_set("%s: [strategy] robust = %s works on fedavg/ffa updates, not with "
                            "name = %s", where, coord_robust_names[c->robust],
                            coord_strategy_names[c->strategy]);
    if (c->strategy == COORD_STRATEGY_ROLORA && (c->server_opt != 0 || c->robust))
        return fp_error_set("%s: strategy rolora averages one factor per round, exactly; a "
                            "server optimizer or a robust rule would make it inexact (their "
                            "state and estimates span rounds of the other factor): set "
                            "server_opt = none and robust = none", where);
    if (c->strategy == COORD_STRATEGY_SCAFFOLD && c->robust)
        return fp_error_set("%s: strategy scaffold derives the control variate from the "
                            "round's mean update; robust = %s is not a mean: set robust = none",
                            where, coord_robust_names[c->robust]);
    if (c->strategy == COORD_STRATEGY_FLORA && c->server_opt != 0)
        return fp_error_set("%s: strategy flora restarts LoRA every round: server_opt must be "
                            "none", where);
    if (c->strategy == COORD_STRATEGY_FLORA && c->dp)
        return fp_error_set("%s: strategy flora sends each round's stacked factors, which "
                            "[dp] does not noise: set [dp] enabled = false or use fedavg/ffa",
                            where);
    if (c->dp && (c->strategy == COORD_STRATEGY_SVD || c->robust != COORD_ROBUST_NONE))
        return fp_error_set("%s: [dp] bounds one worker's effect on a mean (sensitivity C / "
                            "the round's fixed denominator); %s is not a mean: use fedavg, ffa, "
                            "rolora or scaffold with robust = none", where,
                            c->robust ? coord_robust_names[c->robust] :
                                        coord_strategy_names[c->strategy]);
    if (c->round_mode == COORD_MODE_ASYNC &&
        (c->strategy != COORD_STRATEGY_FEDAVG && c->strategy != COORD_STRATEGY_FFA))
        return fp_error_set("%s: [round] mode = async mixes updates trained from different "
                            "versions; strategy %s needs every update of a round from the same "
                            "one: use fedavg or ffa (any server_opt)", where,
                            coord_strategy_names[c->strategy]);
    if (c->round_mode == COORD_MODE_ASYNC && (c->robust != COORD_ROBUST_NONE || c->dp))
        return fp_error_set("%s: [round] mode = async with %s is not supported (its per-round "
                            "accounting assumes sampled rounds): set it off or mode = sync",
                            where, c->dp ? "[dp]" : "[strategy] robust");
    if (c->round_mode == COORD_MODE_ASYNC && c->sampling_mode == COORD_SAMPLING_POISSON)
        return fp_error_set("%s: [round] mode = async does not sample (every live worker "
                            "trains): set [sampling] mode = fixed", where);
    if (c->round_mode == COORD_MODE_ASYNC && c->min_quorum > c->buffer)
        return fp_error_set("%s: [round] min_quorum = %d can never be met: a buffer holds "
                            "buffer = %d updates", where, c->min_quorum, c->buffer);
    if (c->round_mode == COORD_MODE_ASYNC && c->min_workers < c->buffer)
        return fp_error_set("%s: [round] buffer = %d needs [sampling] min_workers >= %d (the "
                            "run waits for that many live workers)", where, c->buffer,
                            c->buffer);
    if (c->sampling_mode == COORD_SAMPLING_POISSON && !(c->fraction > 0))
        return fp_error_set("%s: [sampling] mode = poisson needs fraction > 0 (each live "
                            "worker's probability of being sampled)", where);
    if (c->sampling_mode == COORD_SAMPLING_POISSON && c->max_workers > 0)
        return fp_error_set("%s: [sampling] max_workers = %d with mode = poisson: a cap on the "
                            "draw is not Poisson sampling; set max_workers = 0 (the expected "
                            "size is fraction x registered)", where, c->max_workers);
    if (c->secagg && c->secagg_threshold == 1)
        return fp_error_set("%s: [secagg] threshold = 1 would let anyone unmask: use 0 "
                            "(automatic) or at least 2", where);
    if (c->secagg_neighbours == 1 || c->secagg_neighbours % 2 != 0)
        return fp_error_set("%s: [secagg] neighbours = %d: a Harary graph has an even degree "
                            "of at least 2 (or 0, automatic)", where, c->secagg_neighbours);
    if (c->secagg_corrupt + c->secagg_dropout >= 0.5)
        return fp_error_set("%s: [secagg] corrupt_fraction + dropout_fraction = %g: below 0.5, "
                            "or no graph can be both safe and live", where,
                            c->secagg_corrupt + c->secagg_dropout);
    if (c->max_workers > 0 && c->max_workers < c->min_workers)
        return fp_error_set("%s: [sampling] max_workers = %d is below min_workers = %d", where,
                            c->max_workers, c->min_workers);
    if (c->max_workers > 0 && c->min_quorum > c->max_workers)
        return fp_error_set("%s: [round] min_quorum = %d can never be met: at most "
                            "max_workers = %d are sampled", where, c->min_quorum, c->max_workers);
    if (strlen(c->state_dir) + 40 >= sizeof c->state_dir)
        return fp_error_set("%s: [run] state_dir is too long", where);
    if (!c->insecure && !c->secret_key[0])
        return fp_error_set("%s: [security] secret_key is not set: run `fedpeft keygen --out "
                            "DIR --name coordinator` and set [security] secret_key = "
                            "DIR/coordinator.key and allowlist = FILE (or --insecure for a "
                            "local test)", where);
    if (!c->insecure && access(c->secret_key, F_OK) != 0)
        return fp_error_set("%s: [security] secret_key %s: %s: run `fedpeft keygen --out DIR "
                            "--name coordinator` and set [security] secret_key = "
                            "DIR/coordinator.key", where, c->secret_key, strerror(errno));
    if (!c->insecure && !c->allowlist[0])
        return fp_error_set("%s: [security] allowlist is not set: a file with one worker "
                            "public key per line ('<Z85> name', printed by `fedpeft keygen`)",
                            where);
    return 0;
}

/* worker_config.c - the worker's key table (see worker_config.h). */
#include "worker_config.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

static const char *const format_names[] = {"auto", "text", "json", "alpaca", "ids", NULL};
static const char *const dtype_names[] = {"f32", "bf16", "int8", "nf4", NULL}; /* fp_base_dtype */

#define F(field) offsetof(wk_config, field)
#define S(field) sizeof(((wk_config *)0)->field)

const fp_cfg_key wk_config_keys[] = {
    {"model", "path", FP_CFG_STRING, 0, 0, "", F(model_path), S(model_path), NULL,
     "base model directory (Hugging Face layout); must be the coordinator's model"},
    {"model", "dtype", FP_CFG_ENUM, 0, 0, "f32", F(base_dtype), 0, dtype_names,
     "how this worker holds the frozen base matrices (the hash stays the f32 source's)"},
    {"worker", "id", FP_CFG_STRING, 0, 0, "", F(id), S(id), NULL,
     "this worker's unique name (required; also its ZeroMQ routing id)"},
    {"worker", "endpoint", FP_CFG_STRING, 0, 0, "tcp://127.0.0.1:5555", F(endpoint),
     S(endpoint), NULL, "the coordinator's address"},
    {"worker", "data", FP_CFG_STRING, 0, 0, "", F(data), S(data), NULL,
     "the private training data: text, JSONL, Alpaca or ids (required)"},
    {"worker", "format", FP_CFG_ENUM, 0, 0, "auto", F(format), 0, format_names,
     "data form (auto detects it from the file)"},
    {"worker", "val_fraction", FP_CFG_DOUBLE, 0, 0.9, "0.1", F(val_fraction), 0, NULL,
     "fraction of the examples held out for validation (EVAL tasks)"},
    {"worker", "split_seed", FP_CFG_U64, 0, 0, "0", F(split_seed), 0, NULL,
     "which examples are held out"},
    {"worker", "rank", FP_CFG_INT, 0, 4096, "0", F(rank), 0, NULL,
     "LoRA rank to train, <= the coordinator's (a small machine; strategies svd/flora only); "
     "0 = the coordinator's"},
    {"worker", "batch", FP_CFG_INT, 0, 65536, "0", F(batch), 0, NULL,
     "rows per step (0: the coordinator's [train] batch)"},
    {"worker", "grad_checkpoint", FP_CFG_BOOL, 0, 1, "false", F(grad_checkpoint), 0, NULL,
     "checkpoint activations even when the coordinator's [train] grad_checkpoint is off "
     "(a small machine)"},
    {"worker", "state_dir", FP_CFG_STRING, 0, 0, "", F(state_dir), S(state_dir), NULL,
     "a directory this worker keeps across restarts: strategy scaffold's control variate "
     "(empty: kept in memory, restarted from zero)"},
    {"worker", "threads", FP_CFG_INT, 0, 1024, "0", F(threads), 0, NULL,
     "OpenBLAS threads (0: OpenBLAS's default)"},
    {"worker", "connect_retries", FP_CFG_INT, 1, 1000000, "10", F(connect_retries), 0, NULL,
     "attempts to reach the coordinator before giving up"},
    {"worker", "retry_backoff_ms", FP_CFG_INT, 1, 8000, "500", F(retry_backoff_ms), 0, NULL,
     "wait for an answer on the first attempt; doubles each retry, capped at 8000"},
    {"security", "secret_key", FP_CFG_STRING, 0, 0, "", F(secret_key), S(secret_key), NULL,
     "this worker's secret key file (fedpeft keygen --out DIR --name ID)"},
    {"security", "coordinator_key", FP_CFG_STRING, 0, 0, "", F(coordinator_key),
     S(coordinator_key), NULL, "the coordinator's public key: its .pub file or the Z85 text"},
    {"security", "insecure", FP_CFG_BOOL, 0, 1, "false", F(insecure), 0, NULL,
     "plain TCP without CURVE: unauthenticated, local tests only (also: --insecure)"},
    {"security", "allowlist", FP_CFG_STRING, 0, 0, "", F(allowlist), S(allowlist), NULL,
     "the coordinator's (a shared file); ignored by the worker"},
    {"privacy", "require_secagg", FP_CFG_BOOL, 0, 1, "true", F(require_secagg), 0, NULL,
     "refuse a training task without secure aggregation (false: send the update sealed to "
     "the coordinator only, which then sees it; warned at start)"},
    {"privacy", "min_peers", FP_CFG_INT, 2, 65536, "3", F(min_peers), 0, NULL,
     "refuse a secure round of fewer members (with 2, the other member learns this worker's "
     "update from the published sum)"},
    {"privacy", "min_threshold", FP_CFG_INT, 0, 65536, "0", F(min_threshold), 0, NULL,
     "the lowest Shamir threshold t accepted; 0 = a majority of each secret's holders (the "
     "graph neighbours and this worker), never below 2"},
    {"privacy", "max_corrupt", FP_CFG_DOUBLE, 0, 0.49, "0.05", F(max_corrupt), 0, NULL,
     "hostile fraction assumed: a SecAgg+ graph on which that many reach t of this "
     "worker's holders with chance above 2^-40 is refused"},
    {"privacy", "roster", FP_CFG_STRING, 0, 0, "", F(roster), S(roster), NULL,
     "the allowlist with sign= keys: a peer's signing key must be the one listed (empty: "
     "the keys the coordinator relays are taken)"},
    {NULL},
};

const char *const wk_config_ignore[] = {"run", "lora", "train", "sampling", "round",
                                        "network", "strategy", "simulate", "http", "secagg", "dp",
                                        NULL};

int wk_config_load(wk_config *c, const char *file, int argc, char **argv)
{
    if (fp_cfg_defaults(wk_config_keys, c) != 0)
        return -1;
    if (file && fp_cfg_load_file(wk_config_keys, c, file, wk_config_ignore) != 0)
        return -1;
    if (fp_cfg_apply_args(wk_config_keys, c, argc, argv) != 0)
        return -1;
    if (!c->id[0])
        return fp_error_set("[worker] id is required (e.g. --worker.id=w01)");
    for (const char *p = c->id; *p; p++)
        if (*p <= ' ' || *p == 127)
            return fp_error_set("[worker] id '%s' must not contain spaces or control "
                                "characters", c->id);
    if (!c->model_path[0])
        return fp_error_set("[model] path is required: the base model directory "
                            "(the same model as the coordinator's)");
    if (!c->data[0])
        return fp_error_set("[worker] data is required: the file to train on");
    if (c->min_threshold == 1)
        return fp_error_set("[privacy] min_threshold = 1 would let any one share holder unmask: "
                            "use 0 (a majority) or at least 2");
    if (c->insecure)
        return 0;
    if (!c->secret_key[0] || access(c->secret_key, F_OK) != 0)
        return fp_error_set("[security] secret_key %s%s%s: run `fedpeft keygen --out DIR --name "
                            "%s`, set [security] secret_key = DIR/%s.key and add the printed "
                            "public key to the coordinator's allowlist (or --insecure for a "
                            "local test)", c->secret_key[0] ? c->secret_key : "is not set",
                            c->secret_key[0] ? ": " : "",
                            c->secret_key[0] ? strerror(errno) : "", c->id, c->id);
    if (!c->coordinator_key[0])
        return fp_error_set("[security] coordinator_key is not set: the coordinator's public "
                            "key (its coordinator.pub file, or the Z85 text `fedpeft keygen` "
                            "printed for it)");
    return 0;
}

/* rounds_persist.c - the state directory: its lock, and the checkpoint that
 * holds the global adapter, the strategy and optimizer state and the metrics
 * lines (rounds_persist.h). */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clog.h"
#include "rounds_persist.h"
#include "rounds_state.h"

void rounds_dump(const rounds *r, const char *name, const void *data, size_t bytes)
{
    if (!r->dump_dir)
        return;
    char path[1300];
    snprintf(path, sizeof path, "%s/coord-round-%llu-%s", r->dump_dir,
             (unsigned long long)r->round, name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, bytes, f);
        fclose(f);
    }
}

int rounds_mkdir_p(const char *dir)
{
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        mkdir(tmp, 0755);
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0) {
        struct stat st;
        if (stat(tmp, &st) < 0 || !S_ISDIR(st.st_mode))
            return fp_error_set("cannot create the state directory %s", dir);
    }
    return 0;
}

/* The checkpoint's strategy blob: the strategy's state, the server optimizer's
 * (when [strategy] server_opt is set), then the DP accountant:
 *   u32 "DPA1" | u32 n_orders | u64 steps | f64 rdp[n_orders] | f64 last_epsilon
 * A blob without the accountant (written before it was saved) loads with epsilon
 * restarting at 0 and a warning. */
#define DPA_MAGIC 0x31415044u
#define DPA_SIZE (16 + 8 * FP_DP_N_ORDERS + 8)

static size_t blob_size(const rounds *r)
{
    return strategy_state_size(r->strat) + (r->sopt ? fp_sopt_state_size(r->sopt) : 0) +
           DPA_SIZE;
}

static int blob_save(const rounds *r, uint8_t *buf, size_t len)
{
    size_t ss = strategy_state_size(r->strat), so = r->sopt ? fp_sopt_state_size(r->sopt) : 0;
    if (len != blob_size(r))
        return fp_error_set("strategy blob of %zu bytes, expected %zu", len, blob_size(r));
    if (strategy_state_save(r->strat, buf, ss) < 0 ||
        (r->sopt && fp_sopt_state_save(r->sopt, buf + ss, so) < 0))
        return -1;
    uint8_t *p = buf + ss + so;
    uint32_t magic = DPA_MAGIC, n = FP_DP_N_ORDERS;
    memcpy(p, &magic, 4);
    memcpy(p + 4, &n, 4);
    memcpy(p + 8, &r->acct.steps, 8);
    memcpy(p + 16, r->acct.rdp, 8 * FP_DP_N_ORDERS);
    memcpy(p + 16 + 8 * FP_DP_N_ORDERS, &r->last_epsilon, 8);
    return 0;
}

static int blob_load(rounds *r, const uint8_t *buf, size_t len)
{
    size_t ss = strategy_state_size(r->strat), so = r->sopt ? fp_sopt_state_size(r->sopt) : 0;
    if (r->cfg->strategy == COORD_STRATEGY_FLORA && len >= so + DPA_SIZE)
        ss = len - so - DPA_SIZE;   /* the folds: its loader checks every size */
    if (len != ss + so && len != ss + so + DPA_SIZE) {
        if (len < ss || strategy_state_load(r->strat, buf, len < ss ? len : ss) < 0)
            return -1;
        return fp_error_set("the strategy state holds %zu bytes, expected %zu: was the run "
                            "started with another [strategy] server_opt?", len,
                            ss + so + DPA_SIZE);
    }
    if (strategy_state_load(r->strat, buf, ss) < 0 ||
        (r->sopt && fp_sopt_state_load(r->sopt, buf + ss, so) < 0))
        return -1;
    if (len == ss + so) {
        if (r->cfg->dp)
            clog_info("the checkpoint holds no DP accountant state (an older version): "
                      "epsilon restarts at 0");
        return 0;
    }
    const uint8_t *p = buf + ss + so;
    uint32_t magic, n;
    fp_dp_accountant a;
    double eps;
    memcpy(&magic, p, 4);
    memcpy(&n, p + 4, 4);
    memcpy(&a.steps, p + 8, 8);
    memcpy(a.rdp, p + 16, 8 * FP_DP_N_ORDERS);
    memcpy(&eps, p + 16 + 8 * FP_DP_N_ORDERS, 8);
    if (magic != DPA_MAGIC || n != FP_DP_N_ORDERS)
        return fp_error_set("the DP accountant state is not this version's");
    for (int i = 0; i < FP_DP_N_ORDERS; i++)
        if (!(a.rdp[i] >= 0))   /* NaN or negative; +inf is a valid spend */
            return fp_error_set("the DP accountant state holds an invalid RDP value");
    if (!(eps >= 0))
        return fp_error_set("the DP accountant state holds an invalid epsilon");
    r->acct = a;
    r->last_epsilon = eps;
    return 0;
}

int rounds_save_checkpoint(rounds *r, uint64_t round, int finished)
{
    checkpoint ck;
    memset(&ck, 0, sizeof ck);
    snprintf(ck.run_id, sizeof ck.run_id, "%s", r->run_id);
    snprintf(ck.model_hash, sizeof ck.model_hash, "%s", r->model_hash);
    snprintf(ck.strategy, sizeof ck.strategy, "%s", r->strat_name);
    ck.flags = finished ? CKPT_FLAG_FINISHED : 0;
    ck.round = round;
    ck.n_params = r->global->n_params;
    ck.adapter = r->global->params;     /* borrowed: not cleared */
    ck.strategy_len = blob_size(r);
    ck.strategy_state = malloc(ck.strategy_len ? ck.strategy_len : 1);
    ck.metrics = r->lines;
    ck.n_metrics = r->n_lines;
    int rc = -1;
    if (!ck.strategy_state)
        fp_error_set("out of memory");
    else if (blob_save(r, ck.strategy_state, ck.strategy_len) == 0)
        rc = checkpoint_save(&ck, r->ckpt_path);
    free(ck.strategy_state);
    return rc;
}

/* Takes over the checkpoint's state after checking it belongs to this run. */
static int resume(rounds *r, checkpoint *ck)
{
    if (strcmp(ck->model_hash, r->model_hash) != 0)
        return fp_error_set("%s was written for base model %.12s..., [model] path has "
                            "%.12s...: use another [run] state_dir or the run's model",
                            r->ckpt_path, ck->model_hash, r->model_hash);
    if (ck->n_params != r->global->n_params)
        return fp_error_set("%s holds an adapter of %zu floats, the [lora] settings give %zu: "
                            "use the run's [lora] settings or another state_dir",
                            r->ckpt_path, ck->n_params, r->global->n_params);
    if (strcmp(ck->strategy, r->strat_name) != 0)
        return fp_error_set("%s was written by strategy '%s', the config says '%s'",
                            r->ckpt_path, ck->strategy, r->strat_name);
    if (blob_load(r, ck->strategy_state, ck->strategy_len) < 0)
        return fp_error_prefix("%s: ", r->ckpt_path);
    memcpy(r->global->params, ck->adapter, ck->n_params * sizeof(float));
    snprintf(r->run_id, sizeof r->run_id, "%s", ck->run_id);
    r->lines = ck->metrics;
    r->n_lines = ck->n_metrics;
    ck->metrics = NULL;
    ck->n_metrics = 0;
    r->round = ck->round + 1;
    r->finished_flag = (ck->flags & CKPT_FLAG_FINISHED) != 0;
    clog_info("resuming run %s from %s: round %llu completed%s", r->run_id, r->ckpt_path,
              (unsigned long long)ck->round, r->finished_flag ? " (the run had finished)" : "");
    return 0;
}

int rounds_load_state(rounds *r)
{
    checkpoint ck;
    int rc = checkpoint_load(&ck, r->ckpt_path);
    if (rc < 0)
        return -1;
    if (rc == 0) {
        rc = resume(r, &ck);
        checkpoint_clear(&ck);
        if (rc < 0)
            return -1;
    } else {
        unsigned char id[12];
        randombytes_buf(id, sizeof id);
        for (size_t i = 0; i < sizeof id; i++)
            snprintf(r->run_id + 2 * i, 3, "%02x", id[i]);
        fp_lora_init(r->global, r->cfg->seed);
        r->round = 0;
        clog_info("new run %s (no checkpoint in %s)", r->run_id, r->cfg->state_dir);
    }
    return 0;
}

/* One coordinator per state directory: a second one would fight over the
 * checkpoint. The lock goes with the process (also on kill -9). */
int rounds_lock_state(rounds *r)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/lock", r->cfg->state_dir);
    r->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0)
        return fp_error_set("cannot open %s: %s", path, strerror(errno));
    if (flock(r->lock_fd, LOCK_EX | LOCK_NB) < 0)
        return fp_error_set("state directory %s is in use by another coordinator (%s is "
                            "locked); stop it or use another [run] state_dir",
                            r->cfg->state_dir, path);
    return 0;
}

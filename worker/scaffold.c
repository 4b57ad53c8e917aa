/* scaffold.c - the worker's SCAFFOLD control variates (scaffold.h). */
#include "scaffold.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agg_scaffold.h"
#include "wk_log.h"

#define CV_MAGIC "FPSCV1\n"     /* 8 bytes with its NUL */
#define CV_RUN_BYTES 128

/* The file: magic, u64 n, u64 round, run id (128 bytes, NUL padded), then
 * c_prev [n] and c_i [n] as f32, native byte order (the worker's own machine). */
static int cv_save(const wk_scaffold *s)
{
    if (!s->path[0])
        return 0;
    char tmp[1300], run[CV_RUN_BYTES] = {0};
    snprintf(tmp, sizeof tmp, "%s.tmp", s->path);
    snprintf(run, sizeof run, "%s", s->run_id);
    uint64_t n = s->n, round = s->round;
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(CV_MAGIC, 1, 8, f) == 8 && fwrite(&n, 8, 1, f) == 1 &&
             fwrite(&round, 8, 1, f) == 1 && fwrite(run, 1, sizeof run, f) == sizeof run &&
             fwrite(s->c_prev, sizeof(float), s->n, f) == s->n &&
             fwrite(s->c_i, sizeof(float), s->n, f) == s->n && fflush(f) == 0 &&
             fsync(fileno(f)) == 0;
    if (f && fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, s->path) != 0) {
        int e = errno;
        unlink(tmp);
        return fp_error_set("cannot write the control variate to %s: %s ([worker] state_dir "
                            "must be a writable directory)", s->path, strerror(e));
    }
    return 0;
}

/* c_i of this run from the file, if it holds one of this run and shape. */
static void cv_load(wk_scaffold *s)
{
    memset(s->c_i, 0, s->n * sizeof(float));
    memcpy(s->c_prev, s->c_i, s->n * sizeof(float));
    s->round = 0;
    if (!s->path[0])
        return;
    FILE *f = fopen(s->path, "rb");
    if (!f) {
        wk_log("scaffold: no control variate in %s yet: c_i starts at zero", s->path);
        return;
    }
    char magic[8], run[CV_RUN_BYTES];
    uint64_t n = 0, round = 0;
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, CV_MAGIC, 8) == 0 &&
             fread(&n, 8, 1, f) == 1 && n == s->n && fread(&round, 8, 1, f) == 1 &&
             fread(run, 1, sizeof run, f) == sizeof run && run[sizeof run - 1] == '\0' &&
             strcmp(run, s->run_id) == 0 &&
             fread(s->c_prev, sizeof(float), s->n, f) == s->n &&
             fread(s->c_i, sizeof(float), s->n, f) == s->n;
    fclose(f);
    if (!ok) {
        memset(s->c_i, 0, s->n * sizeof(float));
        memset(s->c_prev, 0, s->n * sizeof(float));
        wk_log("scaffold: %s is of another run or shape: c_i starts at zero", s->path);
        return;
    }
    s->round = round;
    wk_log("scaffold: control variate of round %llu loaded from %s", (unsigned long long)round,
           s->path);
}

int wk_scaffold_begin(wk_scaffold *s, const Fedpeft__Task *task, const char *run_id,
                      const char *state_dir, const char *worker_id, size_t n, float **dst,
                      size_t *total)
{
    s->active = 0;
    if (!task->scaffold)
        return 0;
    if (task->kind != FEDPEFT__TASK__KIND__TRAIN || task->n_fold_ranks > 0 || *total != n)
        return fp_error_set("a scaffold control variate with folds or in an evaluation");
    if (s->n != n) {
        wk_scaffold_free(s);
        s->recv = malloc(2 * n * sizeof(float));
        s->c = malloc(n * sizeof(float));
        s->c_i = malloc(n * sizeof(float));
        s->c_prev = malloc(n * sizeof(float));
        s->offset = malloc(n * sizeof(float));
        if (!s->recv || !s->c || !s->c_i || !s->c_prev || !s->offset) {
            wk_scaffold_free(s);
            return fp_error_set("out of memory for the control variates (%zu floats)", n);
        }
        s->n = n;
        s->run_id[0] = '\0';
    }
    if (strcmp(s->run_id, run_id) != 0) {
        snprintf(s->run_id, sizeof s->run_id, "%s", run_id);
        s->path[0] = '\0';
        if (state_dir[0]) {
            snprintf(s->path, sizeof s->path, "%s/scaffold-%s.cv", state_dir, worker_id);
            if (mkdir(state_dir, 0700) != 0 && errno != EEXIST)
                wk_log("scaffold: cannot create [worker] state_dir %s: %s", state_dir,
                       strerror(errno));
        }
        cv_load(s);
    }
    s->active = 1;
    *dst = s->recv;
    *total = 2 * n;
    return 0;
}

const float *wk_scaffold_received(wk_scaffold *s, uint64_t round, float *adapter)
{
    if (!s->active)
        return NULL;
    memcpy(adapter, s->recv, s->n * sizeof(float));
    memcpy(s->c, s->recv + s->n, s->n * sizeof(float));
    if (s->round == round) {    /* this round again: start from c_i before its first try */
        memcpy(s->c_i, s->c_prev, s->n * sizeof(float));
        s->round = 0;
    }
    for (size_t j = 0; j < s->n; j++)
        s->offset[j] = s->c[j] - s->c_i[j];
    s->training = round;
    return s->offset;
}

int wk_scaffold_trained(wk_scaffold *s, const float *x, const float *y, double k_lr)
{
    memcpy(s->c_prev, s->c_i, s->n * sizeof(float));
    /* offset (c - c_i) is spent: it holds the control delta, which is not sent */
    if (fp_scaffold_worker_update(s->c_i, s->offset, s->c, x, y, k_lr, s->n) != 0) {
        memcpy(s->c_i, s->c_prev, s->n * sizeof(float));
        return -1;
    }
    s->round = s->training;
    return cv_save(s);
}

void wk_scaffold_free(wk_scaffold *s)
{
    free(s->recv);
    free(s->c);
    free(s->c_i);
    free(s->c_prev);
    free(s->offset);
    memset(s, 0, sizeof *s);
}

/* data.c - token streams: batches and eval rows (see data.h). Reading
 * records is data_records.c; tokenizing, packing and splitting, data_pack.c
 * and data_load.c. */
#include "data.h"

#include <stdlib.h>
#include <string.h>

#include "rng.h"

void fp_tokens_free(fp_tokens *t)
{
    if (!t)
        return;
    free(t->ids);
    free(t->loss);
    t->ids = NULL;
    t->loss = NULL;
    t->n = 0;
}

/* ---------------------------------------------------------------- batches */

size_t fp_data_rows(const fp_tokens *t, int T)
{
    if (T <= 0 || t->n < (size_t)T + 1)
        return 0;
    return (t->n - 1) / (size_t)T;
}

struct fp_batcher {
    const fp_tokens *t;     /* borrowed: the caller keeps the tokens alive */
    int B, T;
    int shuffle;
    uint64_t seed;
    size_t rows;
    size_t *perm;           /* row order of epoch perm_epoch (shuffle only) */
    uint64_t perm_epoch;
};

/* Fisher-Yates over the identity, seeded by seed + epoch. */
static void make_perm(fp_batcher *self, uint64_t epoch)
{
    fp_rng r;
    fp_rng_seed(&r, self->seed + epoch);
    for (size_t i = 0; i < self->rows; i++)
        self->perm[i] = i;
    for (size_t i = self->rows - 1; i > 0; i--) {
        size_t j = (size_t)fp_rng_below(&r, (uint64_t)i + 1);
        size_t tmp = self->perm[i];
        self->perm[i] = self->perm[j];
        self->perm[j] = tmp;
    }
    self->perm_epoch = epoch;
}

fp_batcher *fp_batcher_new(const fp_tokens *t, int B, int T, int shuffle, uint64_t seed)
{
    if (B <= 0 || T <= 0) {
        fp_error_set("batch size (%d) and sequence length (%d) must be positive", B, T);
        return NULL;
    }
    size_t rows = fp_data_rows(t, T);
    if (rows < (size_t)B) {
        fp_error_set("the data holds %zu tokens, %zu rows of %d+1; a batch needs %d rows: "
                     "use more data or a smaller batch size / sequence length",
                     t->n, rows, T, B);
        return NULL;
    }
    fp_batcher *self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    *self = (fp_batcher){ .t = t, .B = B, .T = T, .shuffle = shuffle, .seed = seed,
                          .rows = rows };
    if (shuffle) {
        self->perm = malloc(rows * sizeof *self->perm);
        if (!self->perm)
            goto oom;
        make_perm(self, 0);
    }
    return self;
oom:
    fp_batcher_free(&self);
    fp_error_set("out of memory creating a batcher over %zu rows", rows);
    return NULL;
}

void fp_batcher_free(fp_batcher **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->perm);
    free(*self_p);
    *self_p = NULL;
}

/* Row r: inputs = ids[r*T, r*T+T), targets shifted by one, -1 where masked. */
static void fill_row(const fp_tokens *t, int T, size_t r, int32_t *inputs, int32_t *targets)
{
    const int32_t *ids = t->ids + r * (size_t)T;
    const uint8_t *loss = t->loss ? t->loss + r * (size_t)T : NULL;
    for (int i = 0; i < T; i++) {
        inputs[i] = ids[i];
        targets[i] = (loss && !loss[i + 1]) ? -1 : ids[i + 1];
    }
}

void fp_batcher_get(fp_batcher *self, int step, int32_t *inputs, int32_t *targets)
{
    for (int b = 0; b < self->B; b++) {
        uint64_t k = (uint64_t)step * (uint64_t)self->B + (uint64_t)b;
        size_t r = (size_t)(k % self->rows);
        if (self->shuffle) {
            uint64_t epoch = k / self->rows;
            if (epoch != self->perm_epoch)
                make_perm(self, epoch);
            r = self->perm[r];
        }
        fill_row(self->t, self->T, r, inputs + (size_t)b * self->T,
                 targets + (size_t)b * self->T);
    }
}

void fp_data_eval_row(const fp_tokens *t, int T, size_t r, int32_t *inputs, int32_t *targets)
{
    fill_row(t, T, r, inputs, targets);
}

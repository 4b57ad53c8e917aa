/* staging.h - a round's updates kept one by one, for the strategies that need
 * each worker's update on its own (svd, flora, the robust rules). Memory is
 * O(K x adapter), unlike fedavg's streaming sum (docs/aggregation.md). */
#ifndef FP_STAGING_H
#define FP_STAGING_H

#include <stddef.h>

typedef struct {
    float **u;      /* [cap] the round's updates */
    double *w;      /* [cap] their weights */
    int *rank;      /* [cap] their LoRA rank (0 = the global's) */
    int k, cap;
} update_stage;

/* Copies n floats of delta as update k. -1 with an error naming `who` when
 * memory runs out (the stage is unchanged). */
int stage_add(update_stage *st, const float *delta, size_t n, double weight, int rank,
              const char *who);
/* Frees the round's updates, keeping the arrays for the next round. */
void stage_clear(update_stage *st);
/* Frees everything; the stage is empty afterwards. */
void stage_free(update_stage *st);

#endif

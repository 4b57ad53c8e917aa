/* staging.c - see staging.h. */
#include "staging.h"

#include <stdlib.h>
#include <string.h>

#include "fp_error.h"

static int grow(update_stage *st, const char *who)
{
    int cap = st->cap ? 2 * st->cap : 8;
    float **u = realloc(st->u, (size_t)cap * sizeof *u);
    if (u)
        st->u = u;
    double *w = u ? realloc(st->w, (size_t)cap * sizeof *w) : NULL;
    if (w)
        st->w = w;
    int *rk = w ? realloc(st->rank, (size_t)cap * sizeof *rk) : NULL;
    if (!rk)
        return fp_error_set("%s: out of memory staging update %d", who, st->k + 1);
    st->rank = rk;
    st->cap = cap;
    return 0;
}

int stage_add(update_stage *st, const float *delta, size_t n, double weight, int rank,
              const char *who)
{
    if (st->k == st->cap && grow(st, who) != 0)
        return -1;
    float *copy = malloc(n * sizeof *copy);
    if (!copy)
        return fp_error_set("%s: out of memory staging update %d (%zu floats; staging keeps "
                            "every update of the round)", who, st->k + 1, n);
    memcpy(copy, delta, n * sizeof *copy);
    st->u[st->k] = copy;
    st->w[st->k] = weight;
    st->rank[st->k] = rank;
    st->k++;
    return 0;
}

void stage_clear(update_stage *st)
{
    for (int i = 0; i < st->k; i++)
        free(st->u[i]);
    st->k = 0;
}

void stage_free(update_stage *st)
{
    stage_clear(st);
    free(st->u);
    free(st->w);
    free(st->rank);
    memset(st, 0, sizeof *st);
}

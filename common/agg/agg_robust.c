/* agg_robust.c - coordinate-wise median, trimmed mean, norm bounding (agg_robust.h). */
#include "agg_robust.h"

#include <math.h>
#include <stdlib.h>

static int check_updates(const char *who, size_t n, int K, const float *const *u)
{
    if (n == 0 || K < 1 || !u)
        return fp_error_set("%s: no updates (K %d, n %zu)", who, K, n);
    for (int k = 0; k < K; k++) {
        if (!u[k])
            return fp_error_set("%s: update %d is missing", who, k);
        for (size_t i = 0; i < n; i++)
            if (!isfinite(u[k][i]))
                return fp_error_set("%s: update %d has a non-finite value at %zu", who, k, i);
    }
    return 0;
}

/* Sorts v [K] ascending: insertion sort, K is small (workers per round). */
static void sort_small(float *v, int K)
{
    for (int i = 1; i < K; i++) {
        float x = v[i];
        int j = i - 1;
        for (; j >= 0 && v[j] > x; j--)
            v[j + 1] = v[j];
        v[j + 1] = x;
    }
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Per coordinate: sort the K values and average the middle ones [lo, K - lo). */
static int sorted_mean(const char *who, size_t n, int K, const float *const *u, int lo,
                       float *out)
{
    float *col = malloc((size_t)K * sizeof *col);
    if (!col)
        return fp_error_set("%s: out of memory for %d values", who, K);
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < K; k++)
            col[k] = u[k][i];
        if (K <= 32)
            sort_small(col, K);
        else
            qsort(col, (size_t)K, sizeof *col, cmp_float);
        double s = 0;
        for (int k = lo; k < K - lo; k++)
            s += col[k];
        out[i] = (float)(s / (double)(K - 2 * lo));
    }
    free(col);
    return 0;
}

int fp_robust_median(size_t n, int K, const float *const *u, float *out)
{
    if (check_updates("median", n, K, u) < 0)
        return -1;
    /* K odd: the middle one (lo = (K-1)/2); K even: the two middle ones. */
    return sorted_mean("median", n, K, u, (K - 1) / 2, out);
}

int fp_robust_trimmed_mean(size_t n, int K, const float *const *u, double beta, float *out)
{
    if (check_updates("trimmed mean", n, K, u) < 0)
        return -1;
    if (!(beta >= 0 && beta < 0.5))
        return fp_error_set("trimmed mean: trim fraction %g must be in [0, 0.5)", beta);
    int lo = (int)floor(beta * K);
    if (2 * lo >= K)        /* unreachable for beta < 0.5, kept as a guard */
        return fp_error_set("trimmed mean: trimming %d of %d leaves nothing", 2 * lo, K);
    return sorted_mean("trimmed mean", n, K, u, lo, out);
}

int fp_robust_norm_bound(size_t n, int K, const float *const *u, const double *w, double M,
                         float *out, int *clipped)
{
    if (check_updates("norm bound", n, K, u) < 0)
        return -1;
    if (!(M > 0) || !isfinite(M))
        return fp_error_set("norm bound: bound %g must be positive and finite", M);
    double *sum = calloc(n, sizeof *sum), wsum = 0;
    if (!sum)
        return fp_error_set("norm bound: out of memory for %zu doubles", n);
    int nc = 0;
    for (int k = 0; k < K; k++) {
        double wk = w ? w[k] : 1.0;
        if (!(wk > 0) || !isfinite(wk)) {
            free(sum);
            return fp_error_set("norm bound: weight %g of update %d must be positive and "
                                "finite", wk, k);
        }
        double nn = 0;
        for (size_t i = 0; i < n; i++)
            nn += (double)u[k][i] * (double)u[k][i];
        double norm = sqrt(nn), c = norm > M ? M / norm : 1.0;   // ||c u_k|| <= M
        nc += norm > M;
        for (size_t i = 0; i < n; i++)
            sum[i] += wk * c * (double)u[k][i];
        wsum += wk;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = (float)(sum[i] / wsum);
    free(sum);
    if (clipped)
        *clipped = nc;
    return 0;
}

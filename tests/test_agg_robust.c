/* test_agg_robust.c - median, trimmed mean and norm bounding (agg_robust.h) on
 * small known inputs, with an outlier, and at K = 1 and 2. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agg_robust.h"
#include "rng.h"
#include "test_util.h"

static void assert_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_true(isfinite(x[i]));
}

static void test_known_values(void **state)
{
    (void)state;
    /* 5 workers, 3 coordinates; per coordinate sorted:
     *   c0: 1 2 3 4 100    median 3, trim 1+1: mean(2,3,4) = 3
     *   c1: -5 -1 0 1 2    median 0, trim: mean(-1,0,1) = 0
     *   c2: 7 7 7 7 7      7 and 7 */
    const float u0[] = {4, 0, 7}, u1[] = {100, -5, 7}, u2[] = {1, 2, 7}, u3[] = {3, 1, 7},
                u4[] = {2, -1, 7};
    const float *u[] = {u0, u1, u2, u3, u4};
    float out[3];
    assert_int_equal(fp_robust_median(3, 5, u, out), 0);
    assert_float_equal(out[0], 3, 0);
    assert_float_equal(out[1], 0, 0);
    assert_float_equal(out[2], 7, 0);
    assert_int_equal(fp_robust_trimmed_mean(3, 5, u, 0.2, out), 0);   /* floor(1.0) = 1 */
    assert_float_equal(out[0], 3, 1e-6);
    assert_float_equal(out[1], 0, 1e-6);
    assert_float_equal(out[2], 7, 1e-6);
    /* beta 0.1: floor(0.5) = 0, the plain mean: c0 = 110/5 = 22 */
    assert_int_equal(fp_robust_trimmed_mean(3, 5, u, 0.1, out), 0);
    assert_float_equal(out[0], 22, 1e-5);
    /* even K = 4 (drop u1): c0 sorted 1 2 3 4 -> median (2+3)/2 = 2.5 */
    const float *u4w[] = {u0, u2, u3, u4};
    assert_int_equal(fp_robust_median(3, 4, u4w, out), 0);
    assert_float_equal(out[0], 2.5, 0);
    assert_float_equal(out[1], 0.5, 0);     /* -1 0 1 2 -> 0.5 */
}

static void test_norm_bound_known(void **state)
{
    (void)state;
    /* ||a|| = 5 is clipped to 1: [0.6, 0.8]; ||b|| = 0.5 is kept: [0, 0.5].
     * weights 3, 1: (3 [0.6, 0.8] + [0, 0.5]) / 4 = [0.45, 0.725] */
    const float a[] = {3, 4}, b[] = {0, 0.5f};
    const float *u[] = {a, b};
    float out[2];
    int nc = -1;
    assert_int_equal(fp_robust_norm_bound(2, 2, u, (double[]){3, 1}, 1.0, out, &nc), 0);
    assert_int_equal(nc, 1);
    assert_float_equal(out[0], 0.45, 1e-6);
    assert_float_equal(out[1], 0.725, 1e-6);
    /* uniform weights, a bound above both: the plain mean */
    assert_int_equal(fp_robust_norm_bound(2, 2, u, NULL, 10.0, out, &nc), 0);
    assert_int_equal(nc, 0);
    assert_float_equal(out[0], 1.5, 1e-6);
    assert_float_equal(out[1], 2.25, 1e-6);
    /* a zero update stays zero (no 0/0) */
    const float z[] = {0, 0};
    const float *uz[] = {z};
    assert_int_equal(fp_robust_norm_bound(2, 1, uz, NULL, 1.0, out, NULL), 0);
    assert_float_equal(out[0], 0, 0);
    assert_float_equal(out[1], 0, 0);
}

/* 9 honest updates near 1 and one of 1e30: median and trimmed mean barely move,
 * the mean is destroyed, norm bounding limits the damage to M / K. */
static void test_outlier_robustness(void **state)
{
    (void)state;
    enum { K = 10, N = 64 };
    float *buf = malloc(sizeof(float) * K * N), out[N];
    const float *u[K];
    fp_rng g;
    fp_rng_seed(&g, 3);
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < N; i++)
            buf[k * N + i] = 1.0f + 0.01f * (fp_rng_float(&g) - 0.5f);
        u[k] = buf + k * N;
    }
    for (int i = 0; i < N; i++)
        buf[7 * N + i] = (i % 2 ? -1 : 1) * 1e30f;      /* worker 7 is malicious */
    assert_int_equal(fp_robust_median(N, K, u, out), 0);
    assert_all_finite(out, N);
    for (int i = 0; i < N; i++)
        assert_true(fabsf(out[i] - 1.0f) < 0.01f);
    assert_int_equal(fp_robust_trimmed_mean(N, K, u, 0.1, out), 0);
    assert_all_finite(out, N);
    for (int i = 0; i < N; i++)
        assert_true(fabsf(out[i] - 1.0f) < 0.01f);
    /* honest norm ~ sqrt(64) = 8: bound 10 clips only worker 7, to norm 10 */
    int nc = 0;
    assert_int_equal(fp_robust_norm_bound(N, K, u, NULL, 10.0, out, &nc), 0);
    assert_int_equal(nc, 1);
    assert_all_finite(out, N);
    for (int i = 0; i < N; i++)                 /* 0.9 * ~1 +- (10 / 8) / 10 */
        assert_true(fabsf(out[i] - 0.9f) < 0.14f);
    /* extreme finite values: the sums run in double, nothing overflows to inf */
    for (int i = 0; i < N; i++)
        buf[7 * N + i] = FLT_MAX;
    assert_int_equal(fp_robust_norm_bound(N, K, u, NULL, 10.0, out, &nc), 0);
    assert_all_finite(out, N);
    for (int k = 0; k < K; k++)
        for (int i = 0; i < N; i++)
            buf[k * N + i] = k < 5 ? FLT_MAX : -FLT_MAX;
    assert_int_equal(fp_robust_median(N, K, u, out), 0);          /* (MAX + -MAX) / 2 */
    assert_all_finite(out, N);
    assert_float_equal(out[0], 0, 0);
    assert_int_equal(fp_robust_trimmed_mean(N, K, u, 0.0, out), 0);
    assert_all_finite(out, N);
    free(buf);
}

static void test_small_k_and_errors(void **state)
{
    (void)state;
    const float a[] = {1, -2, 3}, b[] = {3, 2, 3};
    const float *u1[] = {a}, *u2[] = {a, b};
    float out[3];
    /* K = 1: every method returns the update itself (bounded when clipped) */
    assert_int_equal(fp_robust_median(3, 1, u1, out), 0);
    assert_memory_equal(out, a, sizeof out);
    assert_int_equal(fp_robust_trimmed_mean(3, 1, u1, 0.49, out), 0);
    assert_memory_equal(out, a, sizeof out);
    assert_int_equal(fp_robust_norm_bound(3, 1, u1, NULL, 100.0, out, NULL), 0);
    assert_memory_equal(out, a, sizeof out);
    /* K = 2: median = mean = [2, 0, 3]; trimming floor(0.49 * 2) = 0 keeps both */
    const float mean[] = {2, 0, 3};
    assert_int_equal(fp_robust_median(3, 2, u2, out), 0);
    assert_memory_equal(out, mean, sizeof out);
    assert_int_equal(fp_robust_trimmed_mean(3, 2, u2, 0.49, out), 0);
    assert_memory_equal(out, mean, sizeof out);
    /* refusals */
    assert_int_equal(fp_robust_trimmed_mean(3, 2, u2, 0.5, out), -1);
    assert_non_null(strstr(fp_error_get(), "0.5"));
    assert_int_equal(fp_robust_trimmed_mean(3, 2, u2, -0.1, out), -1);
    assert_int_equal(fp_robust_norm_bound(3, 2, u2, NULL, 0.0, out, NULL), -1);
    assert_int_equal(fp_robust_norm_bound(3, 2, u2, (double[]){1, 0}, 1.0, out, NULL), -1);
    assert_int_equal(fp_robust_median(3, 0, u2, out), -1);
    const float nan_u[] = {1, NAN, 3};
    const float *un[] = {a, nan_u};
    assert_int_equal(fp_robust_median(3, 2, un, out), -1);
    assert_non_null(strstr(fp_error_get(), "update 1"));
    assert_int_equal(fp_robust_trimmed_mean(3, 2, un, 0.0, out), -1);
    assert_int_equal(fp_robust_norm_bound(3, 2, un, NULL, 1.0, out, NULL), -1);
}

/* Many workers: the qsort path agrees with a sort of the column done here. */
static void test_many_workers(void **state)
{
    (void)state;
    enum { K = 41, N = 8 };
    float *buf = malloc(sizeof(float) * K * N), out[N], col[K];
    const float *u[K];
    fp_rng g;
    fp_rng_seed(&g, 9);
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < N; i++)
            buf[k * N + i] = fp_rng_float(&g);
        u[k] = buf + k * N;
    }
    assert_int_equal(fp_robust_median(N, K, u, out), 0);
    for (int i = 0; i < N; i++) {
        int below = 0, above = 0;                /* the median has 20 on each side */
        for (int k = 0; k < K; k++) {
            col[k] = u[k][i];
            below += col[k] < out[i];
            above += col[k] > out[i];
        }
        assert_int_equal(below, 20);
        assert_int_equal(above, 20);
    }
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_values),
        cmocka_unit_test(test_norm_bound_known),
        cmocka_unit_test(test_outlier_robustness),
        cmocka_unit_test(test_small_k_and_errors),
        cmocka_unit_test(test_many_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_agg_fedbuff.c - FedBuff's buffer against a direct computation of
 * x + eta sum p w(s) D / sum p, the staleness weights' values, streaming over
 * several buffers, and refusals (NaN, an update from the future, bad weight). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>

#include "agg_fedbuff.h"

static void test_weights(void **state)
{
    (void)state;
    fp_stale_config c;
    fp_stale_config_default(&c);
    assert_float_equal(fp_stale_weight(&c, 0), 1.0, 1e-12);
    assert_float_equal(fp_stale_weight(&c, 3), 0.5, 1e-12);     /* 1/sqrt(4) */
    assert_float_equal(fp_stale_weight(&c, 15), 0.25, 1e-12);
    c.kind = FP_STALE_CONST;
    assert_float_equal(fp_stale_weight(&c, 99), 1.0, 1e-12);
    c.kind = FP_STALE_HINGE, c.a = 0.5, c.b = 2;
    assert_float_equal(fp_stale_weight(&c, 2), 1.0, 1e-12);
    assert_float_equal(fp_stale_weight(&c, 6), 1.0 / 3.0, 1e-12);
    fp_stale_kind k;
    assert_int_equal(fp_stale_parse("hinge", &k), 0);
    assert_int_equal(k, FP_STALE_HINGE);
    assert_int_equal(fp_stale_parse("sqrt", &k), -1);
}

static void test_buffer_matches_direct(void **state)
{
    (void)state;
    fp_stale_config c;
    fp_stale_config_default(&c);
    fp_fedbuff *b = fp_fedbuff_new(3, &c);
    assert_non_null(b);
    float x[3] = {1, 2, 3};
    const float d[3][3] = {{0.3f, -0.1f, 0.0f}, {1.0f, 1.0f, 1.0f}, {-0.5f, 0.25f, 2.0f}};
    const double p[3] = {10, 30, 20};
    const uint64_t from[3] = {7, 6, 4}, now = 7;
    double want[3] = {1, 2, 3}, psum = 60;
    for (int k = 0; k < 3; k++) {
        assert_int_equal(fp_fedbuff_add(b, d[k], p[k], from[k], now), 0);
        for (int j = 0; j < 3; j++)
            want[j] += 0.8 * p[k] / sqrt(1.0 + (double)(now - from[k])) * d[k][j] / psum;
    }
    assert_int_equal(fp_fedbuff_count(b), 3);
    assert_float_equal(fp_fedbuff_mean_staleness(b), 4.0 / 3.0, 1e-12);
    assert_int_equal(fp_fedbuff_apply(b, x, 0.8f), 0);
    for (int j = 0; j < 3; j++)
        assert_float_equal(x[j], want[j], 1e-6);
    /* emptied: the next buffer starts from nothing */
    assert_int_equal(fp_fedbuff_count(b), 0);
    assert_int_equal(fp_fedbuff_apply(b, x, 1.0f), -1);
    assert_int_equal(fp_fedbuff_add(b, d[1], 1, 8, 8), 0);
    assert_int_equal(fp_fedbuff_apply(b, x, 1.0f), 0);
    assert_float_equal(x[0], want[0] + 1.0, 1e-6);
    fp_fedbuff_free(&b);
    assert_null(b);
}

static void test_refusals(void **state)
{
    (void)state;
    fp_stale_config c;
    fp_stale_config_default(&c);
    fp_fedbuff *b = fp_fedbuff_new(2, &c);
    float ok[2] = {1, 1}, bad[2] = {1, NAN};
    assert_int_equal(fp_fedbuff_add(b, bad, 1, 0, 0), -1);
    assert_int_equal(fp_fedbuff_add(b, ok, 1, 5, 4), -1);   /* from the future */
    assert_int_equal(fp_fedbuff_add(b, ok, 0, 0, 0), -1);
    assert_int_equal(fp_fedbuff_add(b, ok, INFINITY, 0, 0), -1);
    assert_int_equal(fp_fedbuff_count(b), 0);                /* nothing was taken */
    fp_fedbuff_free(&b);
    c.a = NAN;
    assert_null(fp_fedbuff_new(2, &c));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_buffer_matches_direct),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

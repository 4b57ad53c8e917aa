/* test_agg_serveropt.c - server optimizers (agg_serveropt.h) against updates
 * computed by hand over two rounds, and their checkpoint state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agg_serveropt.h"
#include "test_util.h"

/* Two rounds on 4 coordinates, lr 0.1, b1 0.5, b2 0.75, tau 0.5 (v0 = 0.25):
 *   x0 = [1, 1, 1, 1],  D1 = [2, -1, 0, 1],  D2 = [2, 1, 4, 0.5]
 *   D1^2 = [4, 1, 0, 1],  D2^2 = [4, 1, 16, 0.25] */
static const float X0[4] = {1, 1, 1, 1};
static const float D1[4] = {2, -1, 0, 1};
static const float D2[4] = {2, 1, 4, 0.5f};

static fp_sopt *make(fp_sopt_kind k)
{
    fp_sopt_config c = {.kind = k, .lr = 0.1f, .beta1 = 0.5f, .beta2 = 0.75f, .tau = 0.5f};
    fp_sopt *s = fp_sopt_new(&c, 4);
    assert_non_null(s);
    return s;
}

/* Runs both rounds, checking m and v after each against the hand values and x
 * against x += 0.1 m / (sqrt(v) + 0.5) computed from them. */
static void check_adaptive(fp_sopt_kind k, const double m[2][4], const double v[2][4])
{
    fp_sopt *s = make(k);
    float x[4];
    memcpy(x, X0, sizeof x);
    double want[4] = {1, 1, 1, 1};
    const float *d[2] = {D1, D2};
    for (int t = 0; t < 2; t++) {
        assert_int_equal(fp_sopt_step(s, x, d[t]), 0);
        for (int i = 0; i < 4; i++) {
            want[i] += 0.1 * m[t][i] / (sqrt(v[t][i]) + 0.5);
            assert_float_equal(fp_sopt_m(s)[i], m[t][i], 1e-6);
            assert_float_equal(fp_sopt_v(s)[i], v[t][i], 1e-6);
            assert_float_equal(x[i], want[i], 1e-6);
        }
    }
    assert_int_equal(fp_sopt_steps(s), 2);
    fp_sopt_free(&s);
    assert_null(s);
}

/* m = 0.5 m + 0.5 D for all three adaptive ones:
 *   m1 = 0.5 D1 = [1, -0.5, 0, 0.5]
 *   m2 = 0.5 m1 + 0.5 D2 = [0.5+1, -0.25+0.5, 0+2, 0.25+0.25] = [1.5, 0.25, 2, 0.5] */
static const double M_ADAPT[2][4] = {{1, -0.5, 0, 0.5}, {1.5, 0.25, 2, 0.5}};

static void test_fedadagrad(void **state)
{
    (void)state;
    /* v1 = 0.25 + D1^2 = [4.25, 1.25, 0.25, 1.25]
     * v2 = v1 + D2^2   = [8.25, 2.25, 16.25, 1.5] */
    const double v[2][4] = {{4.25, 1.25, 0.25, 1.25}, {8.25, 2.25, 16.25, 1.5}};
    check_adaptive(FP_SOPT_ADAGRAD, M_ADAPT, v);
}

static void test_fedadam(void **state)
{
    (void)state;
    /* v1 = 0.75*0.25 + 0.25 D1^2 = 0.1875 + [1, 0.25, 0, 0.25] = [1.1875, 0.4375, 0.1875, 0.4375]
     * v2 = 0.75 v1 + 0.25 D2^2 = [0.890625+1, 0.328125+0.25, 0.140625+4, 0.328125+0.0625]
     *    = [1.890625, 0.578125, 4.140625, 0.390625] */
    const double v[2][4] = {{1.1875, 0.4375, 0.1875, 0.4375},
                            {1.890625, 0.578125, 4.140625, 0.390625}};
    check_adaptive(FP_SOPT_ADAM, M_ADAPT, v);
}

static void test_fedyogi(void **state)
{
    (void)state;
    /* v1 = v0 - 0.25 D1^2 sign(v0 - D1^2), v0 = 0.25:
     *   [0.25+1 (sign -), 0.25+0.25 (-), 0.25-0 (+), 0.25+0.25 (-)] = [1.25, 0.5, 0.25, 0.5]
     * v2 = v1 - 0.25 D2^2 sign(v1 - D2^2):
     *   [1.25+1 (-), 0.5+0.25 (-), 0.25+4 (-), 0.5-0.0625 (+: v shrinks)]
     *   = [2.25, 0.75, 4.25, 0.4375] */
    const double v[2][4] = {{1.25, 0.5, 0.25, 0.5}, {2.25, 0.75, 4.25, 0.4375}};
    check_adaptive(FP_SOPT_YOGI, M_ADAPT, v);
}

static void test_fedavgm_and_none(void **state)
{
    (void)state;
    /* FedAvgM: m1 = D1 = [2, -1, 0, 1]; x1 = x0 + 0.1 m1 = [1.2, 0.9, 1, 1.1]
     *          m2 = 0.5 m1 + D2 = [1+2, -0.5+1, 0+4, 0.5+0.5] = [3, 0.5, 4, 1]
     *          x2 = x1 + 0.1 m2 = [1.5, 0.95, 1.4, 1.2] */
    fp_sopt *s = make(FP_SOPT_AVGM);
    float x[4];
    memcpy(x, X0, sizeof x);
    assert_int_equal(fp_sopt_step(s, x, D1), 0);
    const float x1[4] = {1.2f, 0.9f, 1, 1.1f}, x2[4] = {1.5f, 0.95f, 1.4f, 1.2f};
    for (int i = 0; i < 4; i++)
        assert_float_equal(x[i], x1[i], 1e-6);
    assert_int_equal(fp_sopt_step(s, x, D2), 0);
    const float m2[4] = {3, 0.5f, 4, 1};
    for (int i = 0; i < 4; i++) {
        assert_float_equal(x[i], x2[i], 1e-6);
        assert_float_equal(fp_sopt_m(s)[i], m2[i], 1e-6);
    }
    assert_null(fp_sopt_v(s));
    fp_sopt_free(&s);
    /* none: x2 = x0 + D1 + D2 = [5, 1, 5, 2.5], whatever lr says */
    s = make(FP_SOPT_NONE);
    memcpy(x, X0, sizeof x);
    assert_int_equal(fp_sopt_step(s, x, D1), 0);
    assert_int_equal(fp_sopt_step(s, x, D2), 0);
    const float xn[4] = {5, 1, 5, 2.5f};
    assert_memory_equal(x, xn, sizeof x);
    assert_null(fp_sopt_m(s));
    assert_int_equal(fp_sopt_state_size(s), 32);
    fp_sopt_free(&s);
}

static void test_config_and_names(void **state)
{
    (void)state;
    fp_sopt_config c;
    fp_sopt_config_default(&c, FP_SOPT_ADAM);
    assert_float_equal(c.beta1, 0.9f, 0);
    assert_float_equal(c.beta2, 0.99f, 0);
    assert_float_equal(c.tau, 1e-3f, 0);
    fp_sopt_kind k;
    assert_int_equal(fp_sopt_parse("fedyogi", &k), 0);
    assert_int_equal(k, FP_SOPT_YOGI);
    assert_int_equal(fp_sopt_parse("adam", &k), 0);
    assert_int_equal(k, FP_SOPT_ADAM);
    assert_int_equal(fp_sopt_parse("fedsgd", &k), -1);
    assert_non_null(strstr(fp_error_get(), "fedadagrad"));
    c.beta2 = 1.0f;
    assert_null(fp_sopt_new(&c, 4));
    assert_non_null(strstr(fp_error_get(), "beta"));
    fp_sopt_config_default(&c, FP_SOPT_ADAM);
    c.tau = 0;
    assert_null(fp_sopt_new(&c, 4));
    fp_sopt_config_default(&c, FP_SOPT_ADAM);
    c.lr = NAN;
    assert_null(fp_sopt_new(&c, 4));
    fp_sopt_config_default(&c, FP_SOPT_ADAM);
    assert_null(fp_sopt_new(&c, 0));
}

static void test_state_round_trip(void **state)
{
    (void)state;
    for (int kind = FP_SOPT_NONE; kind <= FP_SOPT_YOGI; kind++) {
        fp_sopt *a = make((fp_sopt_kind)kind), *b = make((fp_sopt_kind)kind);
        float xa[4], xb[4];
        memcpy(xa, X0, sizeof xa);
        assert_int_equal(fp_sopt_step(a, xa, D1), 0);
        size_t len = fp_sopt_state_size(a);
        uint8_t *buf = malloc(len);
        assert_int_equal(fp_sopt_state_save(a, buf, len - 1), -1);
        assert_int_equal(fp_sopt_state_save(a, buf, len), 0);
        assert_int_equal(fp_sopt_state_load(b, buf, len), 0);
        assert_int_equal(fp_sopt_steps(b), 1);
        /* the restarted optimizer continues exactly as the original */
        memcpy(xb, xa, sizeof xb);
        assert_int_equal(fp_sopt_step(a, xa, D2), 0);
        assert_int_equal(fp_sopt_step(b, xb, D2), 0);
        assert_memory_equal(xa, xb, sizeof xa);
        free(buf);
        fp_sopt_free(&a);
        fp_sopt_free(&b);
    }
}

/* Each corruption is refused with a message, and the target keeps its state. */
static void test_corrupt_state_rejected(void **state)
{
    (void)state;
    fp_sopt *a = make(FP_SOPT_ADAM), *b = make(FP_SOPT_ADAM);
    float x[4];
    memcpy(x, X0, sizeof x);
    assert_int_equal(fp_sopt_step(a, x, D1), 0);
    size_t len = fp_sopt_state_size(a);
    assert_int_equal(len, 32 + 2 * 4 * sizeof(float));
    uint8_t *good = malloc(len), *bad = malloc(len + 4);
    assert_int_equal(fp_sopt_state_save(a, good, len), 0);
    float v_before[4];
    memcpy(v_before, fp_sopt_v(b), sizeof v_before);

    struct { size_t at; uint32_t val; int is_float; size_t len; const char *msg; } cases[] = {
        {0, 0x31564146u, 0, 0, "not server optimizer"},        /* FedAvg's magic */
        {4, 2, 0, 0, "version"},
        {8, FP_SOPT_YOGI, 0, 0, "fedyogi"},                    /* another optimizer */
        {16, 5, 0, 0, "5 floats"},                             /* another adapter size */
        {16, 0xffffffffu, 0, 0, "floats"},                     /* a huge claimed size */
        {0, 0, 0, 20, "too short"},                            /* truncated header */
        {0, 0, 0, 40, "truncated"},                            /* truncated slab */
        {0, 0, 0, 68, "68 bytes, expected 64"},                /* trailing bytes */
        {32 + 4, 0x7fc00000u, 1, 0, "corrupt"},                /* m[1] = NaN */
        {32 + 16 + 8, 0xbf800000u, 1, 0, "corrupt"},           /* v[2] = -1 */
        {32 + 16 + 12, 0x7f800000u, 1, 0, "corrupt"},          /* v[3] = inf */
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        memcpy(bad, good, len);
        memset(bad + len, 0, 4);
        size_t blen = cases[c].len ? cases[c].len : len;
        if (!cases[c].len)
            memcpy(bad + cases[c].at, &cases[c].val, 4);
        fp_error_clear();
        assert_int_equal(fp_sopt_state_load(b, bad, blen), -1);
        printf("# case %zu: %s\n", c, fp_error_get());
        assert_non_null(strstr(fp_error_get(), cases[c].msg));
        assert_int_equal(fp_sopt_steps(b), 0);
        assert_memory_equal(fp_sopt_v(b), v_before, sizeof v_before);
    }
    assert_int_equal(fp_sopt_state_load(b, NULL, 0), -1);
    /* the good bytes still load */
    assert_int_equal(fp_sopt_state_load(b, good, len), 0);
    assert_memory_equal(fp_sopt_v(b), fp_sopt_v(a), 4 * sizeof(float));
    free(good);
    free(bad);
    fp_sopt_free(&a);
    fp_sopt_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fedadagrad),
        cmocka_unit_test(test_fedadam),
        cmocka_unit_test(test_fedyogi),
        cmocka_unit_test(test_fedavgm_and_none),
        cmocka_unit_test(test_config_and_names),
        cmocka_unit_test(test_state_round_trip),
        cmocka_unit_test(test_corrupt_state_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

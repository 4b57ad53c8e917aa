/* test_optim.c - AdamW / SGD against hand-computed torch semantics, clipping,
 * LR schedules, name parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"
#include "test_util.h"

#define NEAR(a, b, tol) \
    do { \
        double a_ = (a), b_ = (b); \
        if (!(fabs(a_ - b_) <= (tol))) \
            fail_msg("%s = %.10g, expected %.10g (tol %g)", #a, a_, b_, (double)(tol)); \
    } while (0)

/* Two AdamW steps, lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
 * p0 = [1, -2, 0.5], g1 = [0.1, -0.2, 0.3], g2 = [-0.4, 0.5, 0].
 * Step 1: p *= 1 - 0.1*0.01 = 0.999; m = 0.1 g1, v = 0.001 g1^2; the bias
 *   corrections give mhat = g1, vhat = g1^2, so p -= 0.1 * g1/(|g1| + 1e-8):
 *   p1 = [0.999 - 0.1, -1.998 + 0.1, 0.4995 - 0.1] (to 1e-8)
 *      = [0.8990000100, -1.8980000050, 0.3995000033].
 * Step 2 (element 0): p = 0.999 * 0.89900001 = 0.89810101;
 *   m = 0.9*0.01 + 0.1*(-0.4) = -0.031, v = 0.999*0.001*0.01 + 0.001*0.16 = 1.6999e-4;
 *   mhat = -0.031/(1-0.81) = -0.16315789, vhat = 1.6999e-4/(1-0.998001) = 0.0850375;
 *   p2 = 0.89810101 + 0.1*0.16315789/sqrt(0.0850375) = 0.9540513575.
 *   Element 2 has g2 = 0: m = 0.027, v = 8.991e-5, p2 = 0.3320946811.
 * (Same arithmetic in double for all three elements, as a Python loop.) */
static void test_adamw_two_steps(void **state)
{
    (void)state;
    fp_optim_config c;
    fp_optim_config_default(&c);
    assert_int_equal(c.kind, FP_OPT_ADAMW);
    assert_true(c.beta1 == 0.9f);
    assert_true(c.beta2 == 0.999f);
    assert_true(c.eps == 1e-8f);
    c.lr = 0.1f;
    c.weight_decay = 0.01f;
    float p[3] = { 1.0f, -2.0f, 0.5f };
    float g1[3] = { 0.1f, -0.2f, 0.3f };
    float g2[3] = { -0.4f, 0.5f, 0.0f };
    fp_optim *o = fp_optim_new(&c, 3);
    assert_non_null(o);
    assert_int_equal(fp_optim_steps_done(o), 0);
    float norm = fp_optim_step(o, p, g1);
    NEAR(norm, sqrt(0.01 + 0.04 + 0.09), 1e-6);
    NEAR(p[0], 0.8990000100, 2e-6);
    NEAR(p[1], -1.8980000050, 2e-6);
    NEAR(p[2], 0.3995000033, 2e-6);
    (void)fp_optim_step(o, p, g2);
    assert_int_equal(fp_optim_steps_done(o), 2);
    NEAR(p[0], 0.9540513575, 2e-6);
    NEAR(p[1], -1.9403235302, 2e-6);
    NEAR(p[2], 0.3320946811, 2e-6);
    fp_optim_free(&o);
    assert_null(o);
    fp_optim_free(&o);  /* NULL-safe */
}

/* A long odd-sized vector takes the same path as the scalar reference
 * (in double), so the vectorized loop has no tail bug. */
static void test_adamw_long_vector(void **state)
{
    (void)state;
    enum { N = 1003 };
    fp_optim_config c;
    fp_optim_config_default(&c);
    c.lr = 0.01f;
    c.weight_decay = 0.1f;
    float *p = malloc(N * sizeof *p), *g = malloc(N * sizeof *g);
    double *rp = malloc(N * sizeof *rp), *rm = calloc(N, sizeof *rm), *rv = calloc(N, sizeof *rv);
    for (int i = 0; i < N; i++)
        p[i] = (float)(rp[i] = sin(i * 0.37));
    fp_optim *o = fp_optim_new(&c, N);
    assert_non_null(o);
    for (int t = 1; t <= 3; t++) {
        for (int i = 0; i < N; i++)
            g[i] = (float)cos(i * 0.11 + t);
        for (int i = 0; i < N; i++) {
            double gi = g[i];
            rp[i] *= 1.0 - 0.01 * 0.1;
            rm[i] = 0.9 * rm[i] + 0.1 * gi;
            rv[i] = 0.999 * rv[i] + 0.001 * gi * gi;
            double mh = rm[i] / (1 - pow(0.9, t)), vh = rv[i] / (1 - pow(0.999, t));
            rp[i] -= 0.01 * mh / (sqrt(vh) + 1e-8);
        }
        (void)fp_optim_step(o, p, g);
    }
    for (int i = 0; i < N; i++)
        NEAR(p[i], rp[i], 1e-5);
    fp_optim_free(&o);
    free(p), free(g), free(rp), free(rm), free(rv);
}

/* SGD lr 0.1, momentum 0.9, weight decay 0.1, p0 = [1, -2].
 * Step 1: d = g1 + 0.1 p = [0.5+0.1, 1-0.2] = [0.6, 0.8]; buf = d;
 *         p1 = p - 0.1 d = [0.94, -2.08].
 * Step 2: d = g2 + 0.1 p1 = [-1+0.094, 0.25-0.208] = [-0.906, 0.042];
 *         buf = 0.9 [0.6, 0.8] + d = [-0.366, 0.762];
 *         p2 = p1 - 0.1 buf = [0.9766, -2.1562]. */
static void test_sgd_momentum(void **state)
{
    (void)state;
    fp_optim_config c;
    fp_optim_config_default(&c);
    assert_int_equal(fp_optim_parse_kind("sgd", &c.kind), 0);
    c.lr = 0.1f;
    c.momentum = 0.9f;
    c.weight_decay = 0.1f;
    float p[2] = { 1.0f, -2.0f };
    float g1[2] = { 0.5f, 1.0f }, g2[2] = { -1.0f, 0.25f };
    fp_optim *o = fp_optim_new(&c, 2);
    assert_non_null(o);
    (void)fp_optim_step(o, p, g1);
    NEAR(p[0], 0.94, 1e-6);
    NEAR(p[1], -2.08, 1e-6);
    NEAR(g1[0], 0.5, 0);    /* weight decay does not touch the gradient */
    (void)fp_optim_step(o, p, g2);
    NEAR(p[0], 0.9766, 1e-6);
    NEAR(p[1], -2.1562, 1e-6);
    fp_optim_free(&o);

    /* Plain SGD: p -= lr * g. */
    c.momentum = 0.0f;
    c.weight_decay = 0.0f;
    float q[2] = { 1.0f, 1.0f }, h[2] = { 2.0f, -3.0f };
    o = fp_optim_new(&c, 2);
    assert_non_null(o);
    (void)fp_optim_step(o, q, h);
    (void)fp_optim_step(o, q, h);
    NEAR(q[0], 1.0 - 2 * 0.1 * 2.0, 1e-6);
    NEAR(q[1], 1.0 + 2 * 0.1 * 3.0, 1e-6);
    fp_optim_free(&o);
}

static void test_clip(void **state)
{
    (void)state;
    float g[2] = { 3.0f, 4.0f };
    /* Below the limit: unchanged, bit for bit. */
    NEAR(fp_grad_clip(g, 2, 10.0f), 5.0, 1e-6);
    assert_true(g[0] == 3.0f && g[1] == 4.0f);
    /* Disabled. */
    NEAR(fp_grad_clip(g, 2, 0.0f), 5.0, 1e-6);
    assert_true(g[0] == 3.0f && g[1] == 4.0f);
    /* Above: scaled by 1/(5 + 1e-6), direction kept. */
    NEAR(fp_grad_clip(g, 2, 1.0f), 5.0, 1e-6);
    NEAR(sqrt((double)g[0] * g[0] + (double)g[1] * g[1]), 1.0, 1e-5);
    NEAR(g[0], 0.6, 1e-5);
    NEAR(g[1], 0.8, 1e-5);

    /* Through the optimizer: the step returns the pre-clip norm and the
     * update uses the clipped gradient. SGD lr 1: p = -g_clipped. */
    fp_optim_config c;
    fp_optim_config_default(&c);
    c.kind = FP_OPT_SGD;
    c.lr = 1.0f;
    c.max_grad_norm = 2.0f;
    float p[2] = { 0.0f, 0.0f }, h[2] = { 0.0f, 10.0f };
    fp_optim *o = fp_optim_new(&c, 2);
    assert_non_null(o);
    NEAR(fp_optim_step(o, p, h), 10.0, 1e-5);
    NEAR(h[1], 2.0, 1e-5);
    NEAR(p[1], -2.0, 1e-5);
    NEAR(p[0], 0.0, 0);
    fp_optim_free(&o);
}

static void test_schedules(void **state)
{
    (void)state;
    fp_optim_config c;
    fp_optim_config_default(&c);
    c.lr = 2.0f;
    assert_int_equal(c.schedule, FP_SCHED_CONSTANT);
    NEAR(fp_optim_lr(&c, 0), 2.0, 0);
    NEAR(fp_optim_lr(&c, 1000), 2.0, 0);
    /* Constant with warmup 10: 0, 1, then flat. */
    c.warmup_steps = 10;
    NEAR(fp_optim_lr(&c, 0), 0.0, 0);
    NEAR(fp_optim_lr(&c, 5), 1.0, 1e-6);
    NEAR(fp_optim_lr(&c, 10), 2.0, 0);
    NEAR(fp_optim_lr(&c, 500), 2.0, 0);

    /* Cosine, warmup 10, total 110: halfway through the decay (step 60)
     * cos(pi/2) = 0 gives factor 0.5; at total_steps factor 0. */
    assert_int_equal(fp_optim_parse_schedule("cosine", &c.schedule), 0);
    c.lr = 1.0f;
    c.total_steps = 110;
    NEAR(fp_optim_lr(&c, 0), 0.0, 0);
    NEAR(fp_optim_lr(&c, 5), 0.5, 1e-6);
    NEAR(fp_optim_lr(&c, 10), 1.0, 1e-6);
    NEAR(fp_optim_lr(&c, 35), 0.5 * (1 + cos(M_PI * 0.25)), 1e-6);
    NEAR(fp_optim_lr(&c, 60), 0.5, 1e-6);
    NEAR(fp_optim_lr(&c, 110), 0.0, 1e-6);
    NEAR(fp_optim_lr(&c, 200), 0.0, 1e-6);   /* held at the floor past the end */
    /* Floor 0.1: factor = 0.1 + 0.9 * cosine. */
    c.min_lr_ratio = 0.1f;
    NEAR(fp_optim_lr(&c, 10), 1.0, 1e-6);
    NEAR(fp_optim_lr(&c, 60), 0.55, 1e-6);
    NEAR(fp_optim_lr(&c, 110), 0.1, 1e-6);
    NEAR(fp_optim_lr(&c, 1000), 0.1, 1e-6);
    /* No warmup: step 0 is the full rate. */
    c.warmup_steps = 0;
    c.min_lr_ratio = 0.0f;
    c.total_steps = 100;
    NEAR(fp_optim_lr(&c, 0), 1.0, 1e-6);
    NEAR(fp_optim_lr(&c, 50), 0.5, 1e-6);

    /* The optimizer uses the scheduled rate: warmup step 0 has lr 0, so
     * neither the update nor the decay moves the parameters. */
    c.kind = FP_OPT_ADAMW;
    c.warmup_steps = 2;
    c.weight_decay = 0.5f;
    float p[1] = { 3.0f }, g[1] = { 1.0f };
    fp_optim *o = fp_optim_new(&c, 1);
    assert_non_null(o);
    (void)fp_optim_step(o, p, g);
    NEAR(p[0], 3.0, 0);
    (void)fp_optim_step(o, p, g);
    assert_true(p[0] < 3.0f);
    fp_optim_free(&o);
}

static void test_parse_errors(void **state)
{
    (void)state;
    fp_opt_kind k = FP_OPT_SGD;
    fp_sched_kind s = FP_SCHED_COSINE;
    assert_int_equal(fp_optim_parse_kind("adamw", &k), 0);
    assert_int_equal(k, FP_OPT_ADAMW);
    assert_int_equal(fp_optim_parse_schedule("constant", &s), 0);
    assert_int_equal(s, FP_SCHED_CONSTANT);

    fp_error_clear();
    assert_int_equal(fp_optim_parse_kind("Adam", &k), -1);
    assert_non_null(strstr(fp_error_get(), "'Adam'"));
    assert_non_null(strstr(fp_error_get(), "adamw"));
    assert_int_equal(k, FP_OPT_ADAMW);
    assert_int_equal(fp_optim_parse_kind(NULL, &k), -1);
    assert_int_equal(fp_optim_parse_schedule("linear", &s), -1);
    assert_non_null(strstr(fp_error_get(), "'linear'"));
    assert_non_null(strstr(fp_error_get(), "cosine"));
    assert_int_equal(fp_optim_parse_schedule("", &s), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_two_steps),
        cmocka_unit_test(test_adamw_long_vector),
        cmocka_unit_test(test_sgd_momentum),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_schedules),
        cmocka_unit_test(test_parse_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_agg_scaffold.c - SCAFFOLD's control variates remove client drift: on two
 * workers with quadratic losses of different curvature and optimum, FedAvg with
 * several local steps settles away from the global optimum (known in closed form)
 * and SCAFFOLD reaches it; plus the update formulas against direct arithmetic. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>

#include <string.h>

#include "agg_scaffold.h"
#include "rng.h"

/* f_i(w) = h_i/2 (w - a_i)^2, per coordinate; global f = mean_i f_i. */
static const float h[2] = {1.0f, 4.0f}, a[2][2] = {{1.0f, -2.0f}, {3.0f, 0.5f}};

/* R rounds of K local SGD steps (rate eta) on both workers, full participation. */
static void run(int scaffold, int R, int K, float eta, float w[2])
{
    float c[2] = {0, 0}, ci[2][2] = {{0, 0}, {0, 0}};
    w[0] = w[1] = 0;
    for (int r = 0; r < R; r++) {
        float sum_d[2] = {0, 0}, sum_dc[2] = {0, 0};
        for (int i = 0; i < 2; i++) {
            float y[2] = {w[0], w[1]};
            for (int k = 0; k < K; k++) {
                float g[2] = {h[i] * (y[0] - a[i][0]), h[i] * (y[1] - a[i][1])};
                if (scaffold)
                    fp_scaffold_correct(g, c, ci[i], 2);
                y[0] -= eta * g[0];
                y[1] -= eta * g[1];
            }
            if (scaffold) {
                float dc[2];
                assert_int_equal(fp_scaffold_worker_update(ci[i], dc, c, w, y, (double)K * eta, 2), 0);
                sum_dc[0] += dc[0], sum_dc[1] += dc[1];
            }
            sum_d[0] += y[0] - w[0], sum_d[1] += y[1] - w[1];
        }
        w[0] += sum_d[0] / 2, w[1] += sum_d[1] / 2;
        if (scaffold)
            assert_int_equal(fp_scaffold_server_update(c, sum_dc, 2, 2), 0);
    }
}

static void test_drift_removed(void **state)
{
    (void)state;
    float opt[2];
    for (int j = 0; j < 2; j++)   /* argmin of the mean: curvature-weighted optimum */
        opt[j] = (h[0] * a[0][j] + h[1] * a[1][j]) / (h[0] + h[1]);
    float wf[2], ws[2];
    run(0, 300, 10, 0.05f, wf);
    run(1, 300, 10, 0.05f, ws);
    double ef = hypot(wf[0] - opt[0], wf[1] - opt[1]), es = hypot(ws[0] - opt[0], ws[1] - opt[1]);
    print_message("distance to the optimum after 300 rounds: fedavg %.3g, scaffold %.3g\n", ef, es);
    assert_true(ef > 0.05);   /* FedAvg's fixed point is biased */
    assert_true(es < 1e-4);   /* SCAFFOLD's is the optimum */
}

static void test_formulas(void **state)
{
    (void)state;
    float ci[3] = {0.5f, -1.0f, 0.0f}, c[3] = {0.25f, 0.0f, 1.0f};
    float x[3] = {1.0f, 2.0f, 3.0f}, y[3] = {0.8f, 2.2f, 3.0f}, dc[3];
    float want[3];
    for (int j = 0; j < 3; j++)
        want[j] = ci[j] - c[j] + (x[j] - y[j]) / 0.4f;
    float before[3] = {ci[0], ci[1], ci[2]};
    assert_int_equal(fp_scaffold_worker_update(ci, dc, c, x, y, 0.4, 3), 0);
    for (int j = 0; j < 3; j++) {
        assert_float_equal(ci[j], want[j], 1e-6);
        assert_float_equal(dc[j], want[j] - before[j], 1e-6);
    }
    assert_int_equal(fp_scaffold_worker_update(ci, dc, c, x, y, 0.0, 3), -1);
    assert_int_equal(fp_scaffold_worker_update(ci, dc, c, x, y, NAN, 3), -1);
    float g[3] = {1, 1, 1};
    fp_scaffold_correct(g, c, ci, 3);
    for (int j = 0; j < 3; j++)
        assert_float_equal(g[j], 1 + c[j] - ci[j], 1e-6);
    float cs[3] = {1, 1, 1}, sum[3] = {3, -6, 0};
    assert_int_equal(fp_scaffold_server_update(cs, sum, 6, 3), 0);
    assert_float_equal(cs[0], 1.5f, 1e-6);
    assert_float_equal(cs[1], 0.0f, 1e-6);
    sum[2] = INFINITY;
    assert_int_equal(fp_scaffold_server_update(cs, sum, 6, 3), -1);
    assert_float_equal(cs[0], 1.5f, 1e-6);       /* unchanged on refusal */
    assert_int_equal(fp_scaffold_server_update(cs, sum, 0, 3), -1);
}

/* The coordinator's c update from the weighted aggregate equals the weighted
 * sum of every worker's own option-II control delta (each with its own c_i),
 * p_i = w_i / sum w * |S| / N: c_i cancels, so nothing but the aggregate is needed. */
static void test_update_from_mean(void **state)
{
    (void)state;
    enum { S = 3, N = 5, D = 4 };
    const double k_lr = 8 * 0.01;
    float x[D] = {0.1f, -0.2f, 0.3f, 0.0f}, c[D] = {0.5f, -0.25f, 0.0f, 1.0f};
    float y[S][D], ci[S][D], dc[D];
    double w[S] = {120, 45, 300}, W = 0, want[D] = {0};
    fp_rng rng;
    fp_rng_seed(&rng, 7);
    for (int i = 0; i < S; i++) {
        W += w[i];
        for (int j = 0; j < D; j++) {
            y[i][j] = x[j] + 0.05f * (fp_rng_float(&rng) - 0.5f);
            ci[i][j] = (fp_rng_float(&rng) - 0.5f);
        }
    }
    float dx[D] = {0}, cs[D];
    for (int i = 0; i < S; i++) {
        assert_int_equal(fp_scaffold_worker_update(ci[i], dc, c, x, y[i], k_lr, D), 0);
        for (int j = 0; j < D; j++) {
            want[j] += w[i] / W * S / N * dc[j];
            dx[j] += (float)(w[i] / W * ((double)y[i][j] - x[j]));
        }
    }
    memcpy(cs, c, sizeof cs);
    assert_int_equal(fp_scaffold_server_update_mean(cs, dx, (double)S / N, k_lr, D), 0);
    for (int j = 0; j < D; j++) {
        print_message("c[%d]: from the mean %.7f, from the deltas %.7f\n", j, (double)cs[j],
                      c[j] + want[j]);
        assert_float_equal(cs[j], c[j] + want[j], 2e-5);
    }
    dx[1] = NAN;
    assert_int_equal(fp_scaffold_server_update_mean(cs, dx, 0.6, k_lr, D), -1);
    dx[1] = 0;
    assert_int_equal(fp_scaffold_server_update_mean(cs, dx, 0.0, k_lr, D), -1);
    assert_int_equal(fp_scaffold_server_update_mean(cs, dx, 0.6, 0.0, D), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drift_removed),
        cmocka_unit_test(test_formulas),
        cmocka_unit_test(test_update_from_mean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

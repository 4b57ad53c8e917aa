/* test_dp.c - differential privacy: L2 clipping, Gaussian noise std (plain and
 * distributed), the RDP accountant against published reference values, and
 * the coordinator's side: the Poisson draw, the accountant's q and the fixed
 * denominator of the released mean (sampling.c, strategy_fedavg.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dp.h"

/* The coordinator's folder is a program, not a library: compile them in. */
#include "../coordinator/sampling.c"
#include "../coordinator/strategy_fedavg.c"

static void test_clip(void **state)
{
    (void)state;
    float x[4] = {3.0f, 0.0f, -4.0f, 0.0f};                 /* norm 5 */
    double f = fp_dp_clip_l2(x, 4, 1.0);
    assert_true(fabs(f - 0.2) < 1e-12);
    assert_true(fabs(fp_dp_l2_norm(x, 4) - 1.0) < 1e-6);
    assert_true(fabs(x[0] - 0.6f) < 1e-6 && fabs(x[2] + 0.8f) < 1e-6);   /* direction kept */
    float y[3] = {0.1f, 0.2f, 0.2f};                        /* norm 0.3 <= C: untouched */
    assert_true(fp_dp_clip_l2(y, 3, 1.0) == 1.0);
    assert_true(y[0] == 0.1f && y[1] == 0.2f && y[2] == 0.2f);
    float z[2] = {0.0f, 0.0f};
    assert_true(fp_dp_clip_l2(z, 2, 1.0) == 1.0);
    assert_true(fp_dp_clip_l2(y, 3, 0.0) < 0.0);
    float bad[2] = {NAN, 1.0f};
    assert_true(fp_dp_clip_l2(bad, 2, 1.0) < 0.0);
}

/* Sample std of n draws of the noise added to zeros. */
static double noise_std(fp_dp_noise *g, size_t n, double sigma, double C, size_t workers)
{
    float *x = calloc(n, sizeof *x);
    assert_non_null(x);
    for (size_t w = 0; w < (workers ? workers : 1); w++) {
        float *part = calloc(n, sizeof *part);
        assert_non_null(part);
        if (workers)
            assert_int_equal(fp_dp_add_noise_distributed(g, part, n, sigma, C, workers), 0);
        else
            assert_int_equal(fp_dp_add_noise(g, part, n, sigma, C), 0);
        for (size_t i = 0; i < n; i++)
            x[i] += part[i];
        free(part);
    }
    double m = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++)
        m += x[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++)
        s += (x[i] - m) * (x[i] - m);
    free(x);
    assert_true(fabs(m) < 0.05 * sigma * C);                /* centred */
    return sqrt(s / (double)(n - 1));
}

static void test_noise(void **state)
{
    (void)state;
    fp_dp_noise *g = fp_dp_noise_new(NULL);                 /* CSPRNG-keyed */
    assert_non_null(g);
    const size_t n = 200000;                                /* std error of std ~0.16% */
    double s = noise_std(g, n, 1.1, 0.5, 0);
    if (fabs(s / 0.55 - 1.0) > 0.02)
        fail_msg("noise std %g, expected 0.55 within 2%%", s);
    s = noise_std(g, n, 2.0, 3.0, 0);
    if (fabs(s / 6.0 - 1.0) > 0.02)
        fail_msg("noise std %g, expected 6 within 2%%", s);
    /* distributed: 8 workers each add sigma^2 C^2 / 8; the sum has (sigma C)^2 */
    s = noise_std(g, n, 1.5, 2.0, 8);
    if (fabs(s / 3.0 - 1.0) > 0.02)
        fail_msg("distributed noise std %g, expected 3 within 2%%", s);
    float one = 0.0f;
    assert_int_equal(fp_dp_add_noise(g, &one, 1, -1.0, 1.0), -1);
    assert_int_equal(fp_dp_add_noise_distributed(g, &one, 1, 1.0, 1.0, 0), -1);
    fp_dp_noise_destroy(&g);
    assert_null(g);

    /* a fixed seed reproduces; another seed does not */
    uint8_t seed[FP_DP_SEED_BYTES] = {1};
    fp_dp_noise *a = fp_dp_noise_new(seed), *b = fp_dp_noise_new(seed);
    seed[0] = 2;
    fp_dp_noise *c = fp_dp_noise_new(seed);
    assert_true(a && b && c);
    double va = fp_dp_normal(a), vb = fp_dp_normal(b), vc = fp_dp_normal(c);
    assert_true(va == vb && va != vc);
    fp_dp_noise_destroy(&a);
    fp_dp_noise_destroy(&b);
    fp_dp_noise_destroy(&c);
}

/* Reference values from Google's dp_accounting (the TF-Privacy RDP accountant):
 * google/differential-privacy, python/dp_accounting/dp_accounting/rdp/
 * rdp_privacy_accountant_test.py, test_compute_rdp_poisson_sampled_gaussian:
 * q = 0.01, noise_multiplier = 2.5, 50 steps, orders [1.5, 2.5, 5, 50, 100, inf] ->
 * rdp [6.70579741e-04, 1.08548710e-03, 2.18075656e-03, 2.38460375e-02,
 *      1.67416308e02, inf], checked there with rtol 1e-4. We compute integer orders
 * only, so we compare orders 5, 50 and 100, with the same rtol. */
static void test_rdp_reference(void **state)
{
    (void)state;
    const double ords[3] = {5, 50, 100}, want[3] = {2.18075656e-03, 2.38460375e-02, 1.67416308e02};
    for (int i = 0; i < 3; i++) {
        double r;
        assert_int_equal(fp_dp_rdp_step(0.01, 2.5, ords[i], &r), 0);
        r *= 50;
        if (fabs(r / want[i] - 1.0) > 1e-4)
            fail_msg("order %g: rdp %.9g, dp_accounting %.9g", ords[i], r, want[i]);
    }
    /* q = 1 is the plain Gaussian mechanism: alpha / (2 sigma^2) (Mironov 2017) */
    double r;
    assert_int_equal(fp_dp_rdp_step(1.0, 2.71828, 3, &r), 0);
    assert_true(fabs(r - 3.0 / (2 * 2.71828 * 2.71828)) < 1e-12);
    /* q -> 1 through the binomial sum agrees with the closed form */
    assert_int_equal(fp_dp_rdp_step(0.999999, 2.0, 7, &r), 0);
    assert_true(fabs(r - 7.0 / 8.0) < 1e-4);
    assert_int_equal(fp_dp_rdp_step(0.0, 1.0, 7, &r), 0);
    assert_true(r == 0.0);
    assert_int_equal(fp_dp_rdp_step(0.1, 1.0, 2.5, &r), -1);       /* integer orders only */
    assert_int_equal(fp_dp_rdp_step(1.5, 1.0, 2, &r), -1);
}

/* Conversion: same file, test_compute_epsilon_delta_pure_dp: rdp = 1.1 at orders
 * 2..32, delta = 1e-5 -> epsilon 1.32783806176 at order 32 (Balle et al. 2020
 * conversion, as implemented by dp_accounting's compute_epsilon). */
static void test_conversion_reference(void **state)
{
    (void)state;
    double ords[31], rdp[31], eps, order;
    for (int i = 0; i < 31; i++)
        ords[i] = 2 + i, rdp[i] = 1.1;
    assert_int_equal(fp_dp_rdp_to_eps(ords, rdp, 31, 1e-5, &eps, &order), 0);
    if (fabs(eps - 1.32783806176) > 1e-9)
        fail_msg("epsilon %.12g, dp_accounting 1.32783806176", eps);
    assert_true(order == 32);
    assert_int_equal(fp_dp_rdp_to_eps(ords, rdp, 31, 0.0, &eps, &order), -1);
}

static void test_accountant(void **state)
{
    (void)state;
    /* Composition: 50 steps = 20 + 30 steps = 50 x one step. */
    fp_dp_accountant a, b;
    fp_dp_accountant_init(&a);
    fp_dp_accountant_init(&b);
    assert_int_equal(fp_dp_accountant_add(&a, 0.01, 2.5, 50), 0);
    assert_int_equal(fp_dp_accountant_add(&b, 0.01, 2.5, 20), 0);
    assert_int_equal(fp_dp_accountant_add(&b, 0.01, 2.5, 30), 0);
    assert_int_equal(b.steps, 50);
    for (int i = 0; i < FP_DP_N_ORDERS; i++)
        assert_true(fabs(a.rdp[i] - b.rdp[i]) <= 1e-12 * fabs(a.rdp[i]));
    const double *o = fp_dp_orders();
    for (int i = 0; i < FP_DP_N_ORDERS; i++)
        if (o[i] == 50)
            assert_true(fabs(a.rdp[i] / 2.38460375e-02 - 1.0) < 1e-4);
    /* epsilon grows with steps and shrinks with more noise */
    double e1, e2, e3, ord;
    assert_int_equal(fp_dp_accountant_epsilon(&a, 1e-5, &e1, &ord), 0);
    assert_int_equal(fp_dp_accountant_add(&a, 0.01, 2.5, 1000), 0);
    assert_int_equal(fp_dp_accountant_epsilon(&a, 1e-5, &e2, NULL), 0);
    fp_dp_accountant c;
    fp_dp_accountant_init(&c);
    assert_int_equal(fp_dp_accountant_add(&c, 0.01, 5.0, 1050), 0);
    assert_int_equal(fp_dp_accountant_epsilon(&c, 1e-5, &e3, NULL), 0);
    assert_true(e1 > 0.0 && e1 < e2 && e3 < e2);
    /* a bad step leaves the accountant unchanged */
    fp_dp_accountant_init(&c);
    assert_int_equal(fp_dp_accountant_add(&c, -0.1, 1.0, 3), -1);
    assert_int_equal(c.steps, 0);
    assert_true(c.rdp[0] == 0.0);
    /* no noise: infinite epsilon */
    assert_int_equal(fp_dp_accountant_add(&c, 0.5, 0.0, 1), 0);
    assert_int_equal(fp_dp_accountant_epsilon(&c, 1e-5, &e1, NULL), 0);
    assert_true(isinf(e1));
}

/* Poisson sampling: each of n identities independently with probability q.
 * Over R rounds the mean draw is q n, its variance q (1 - q) n (a fixed-size
 * draw has none), each identity's rate is q; the same (seed, id) always gives
 * the same answer, and consecutive rounds draw different sets. */
static void test_poisson_draw(void **state)
{
    (void)state;
    enum { N = 40, R = 4000 };
    const double q = 0.3;
    char ids[N][16];
    for (int i = 0; i < N; i++)
        snprintf(ids[i], sizeof ids[i], "site-%02d", i);
    unsigned hits[N] = {0}, both01 = 0, same_as_prev = 0;
    double sum = 0, sum2 = 0;
    uint64_t prev = 0;
    for (int r = 0; r < R; r++) {
        uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(r + 1);   /* one per round */
        uint64_t set = 0;
        int k = 0;
        for (int i = 0; i < N; i++) {
            int in = sampling_poisson_in(seed, ids[i], q);
            assert_int_equal(in, sampling_poisson_in(seed, ids[i], q));   /* deterministic */
            if (in) {
                hits[i]++;
                set |= 1ull << i;
                k++;
            }
        }
        both01 += (set & 3) == 3;
        same_as_prev += r > 0 && set == prev;
        prev = set;
        sum += k;
        sum2 += (double)k * k;
    }
    double mean = sum / R, var = sum2 / R - mean * mean;
    double want = q * N, want_var = q * (1 - q) * N;
    printf("Poisson draw: mean size %.3f (q n = %.1f), variance %.3f (q (1-q) n = %.2f) over "
           "%d rounds\n", mean, want, var, want_var, R);
    if (fabs(mean - want) > 5 * sqrt(want_var / R))
        fail_msg("mean draw %.3f, expected %.1f", mean, want);
    if (fabs(var / want_var - 1) > 0.15)
        fail_msg("draw variance %.3f, expected %.2f (independent coins)", var, want_var);
    for (int i = 0; i < N; i++)
        if (fabs((double)hits[i] / R - q) > 5 * sqrt(q * (1 - q) / R))
            fail_msg("%s was drawn in %u of %d rounds, expected q = %g", ids[i], hits[i], R, q);
    /* two identities together at rate q^2: independent */
    assert_true(fabs((double)both01 / R - q * q) < 5 * sqrt(q * q * (1 - q * q) / R));
    assert_true(same_as_prev < 5);          /* P(same set) ~ 1e-7 a round */
    /* another seed (another run or round) is another draw; one identity's coin does not
     * depend on who else is live; q = 0 and q = 1 */
    int differ = 0;
    for (int i = 0; i < N; i++)
        differ += sampling_poisson_in(1, ids[i], q) != sampling_poisson_in(2, ids[i], q);
    assert_true(differ > 0);
    assert_int_equal(sampling_poisson_in(7, "a", 0.0), 0);
    assert_int_equal(sampling_poisson_in(7, "a", 1.0), 1);
}

/* The accountant's q and the fixed denominator: poisson: q = fraction exactly and
 * D = fraction x registered, whoever was drawn; fixed: q = sampled / registered
 * and D = sampled. Both count registered identities. */
static void test_dp_q_and_denominator(void **state)
{
    (void)state;
    assert_true(sampling_dp_q(COORD_SAMPLING_POISSON, 7, 20, 0.25) == 0.25);
    assert_true(sampling_dp_q(COORD_SAMPLING_POISSON, 0, 20, 0.25) == 0.25);
    assert_true(sampling_dp_denominator(COORD_SAMPLING_POISSON, 7, 20, 0.25) == 5.0);
    assert_true(sampling_dp_denominator(COORD_SAMPLING_POISSON, 3, 20, 0.25) == 5.0);
    assert_true(sampling_dp_q(COORD_SAMPLING_FIXED, 5, 20, 0.25) == 0.25);
    assert_true(sampling_dp_q(COORD_SAMPLING_FIXED, 6, 20, 0.25) == 0.3);
    assert_true(sampling_dp_q(COORD_SAMPLING_FIXED, 25, 20, 1.0) == 1.0);     /* at most 1 */
    assert_true(sampling_dp_q(COORD_SAMPLING_FIXED, 0, 0, 1.0) == 1.0);
    assert_true(sampling_dp_denominator(COORD_SAMPLING_FIXED, 6, 20, 0.25) == 6.0);
}

/* The released mean with 3 sampled and 1 dropped: with the fixed denominator it
 * is (d0 + d1) / 3, not / 2; without one (no DP) FedAvg is unchanged. */
static void test_fixed_denominator_mean(void **state)
{
    (void)state;
    const float d0[3] = {0.3f, -0.6f, 0.9f}, d1[3] = {0.6f, 0.3f, -0.3f};
    for (int dp = 0; dp < 2; dp++) {
        strategy *s = strategy_new("fedavg", 3);
        assert_non_null(s);
        float g[3] = {1.0f, 2.0f, 3.0f};
        assert_int_equal(strategy_begin(s, 1), 0);
        assert_int_equal(strategy_add(s, d0, 1.0), 0);
        assert_int_equal(strategy_add(s, d1, 1.0), 0);      /* the third never reports */
        if (dp)
            assert_int_equal(strategy_set_denominator(s, 3.0), 0);
        assert_int_equal(strategy_finish(s, g), 0);
        double D = dp ? 3.0 : 2.0;
        for (int i = 0; i < 3; i++) {
            double want = (double)(i + 1) + ((double)d0[i] + (double)d1[i]) / D;
            if (fabs(g[i] - want) > 1e-6)
                fail_msg("%s: coordinate %d is %.7f, expected sum / %g = %.7f",
                         dp ? "DP" : "plain", i, g[i], D, want);
        }
        /* the next round forgets it */
        assert_int_equal(strategy_begin(s, 2), 0);
        assert_true(s->denominator == 0);
        assert_int_equal(strategy_set_denominator(s, 0.0), -1);
        assert_int_equal(strategy_set_denominator(s, NAN), -1);
        strategy_destroy(&s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_noise),
        cmocka_unit_test(test_rdp_reference),
        cmocka_unit_test(test_conversion_reference),
        cmocka_unit_test(test_accountant),
        cmocka_unit_test(test_poisson_draw),
        cmocka_unit_test(test_dp_q_and_denominator),
        cmocka_unit_test(test_fixed_denominator_mean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_secagg_math.c - secure aggregation arithmetic: masked inputs of 5 parties sum
 * to the plain quantized sum exactly; with 2 parties dropped after masking, their
 * pairwise masks rebuilt from their (Shamir-reconstructed) secret keys recover the
 * survivors' sum exactly; dequantized sums are within the documented error. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "rng.h"
#include "secagg.h"
#include "shamir.h"

enum { P = 5, N = 3001, FRAC = 16 };
static const float CLIP = 4.0f;
static const char *RUN = "run-secagg";
static const uint64_t ROUND = 42;

typedef struct {
    fp_secagg_peer peer[P];
    uint8_t sk[P][32], self_seed[P][32];
    float x[P][N];
    uint32_t q[P][N], y[P][N];
} parties;

static parties *make_parties(int stochastic)
{
    static const char *ids[P] = {"carol", "alice", "eve", "bob", "dave"};
    parties *ps = calloc(1, sizeof *ps);
    assert_non_null(ps);
    fp_rng rng;
    fp_rng_seed(&rng, 7);
    for (int u = 0; u < P; u++) {               /* keys first: everyone knows every pk */
        ps->peer[u].id = ids[u];
        crypto_box_keypair(ps->peer[u].pk, ps->sk[u]);
        fp_secagg_self_seed(ps->self_seed[u]);
    }
    for (int u = 0; u < P; u++) {
        for (int i = 0; i < N; i++)          /* some values beyond the clip */
            ps->x[u][i] = (float)((fp_rng_float(&rng) * 2.0 - 1.0) * 5.0);
        assert_int_equal(fp_secagg_quantize(ps->q[u], ps->x[u], N, CLIP, FRAC,
                                            stochastic ? &rng : NULL), 0);
        memcpy(ps->y[u], ps->q[u], sizeof ps->q[u]);
        /* mask in two chunks to exercise offsets that are not block-aligned */
        if (fp_secagg_mask(ps->y[u], 1000, 0, ids[u], ps->sk[u], ps->self_seed[u], ps->peer, P,
                           RUN, ROUND) != 0)
            fail_msg("mask: %s", fp_error_get());
        assert_int_equal(fp_secagg_mask(ps->y[u] + 1000, N - 1000, 1000, ids[u], ps->sk[u],
                                        ps->self_seed[u], ps->peer, P, RUN, ROUND), 0);
    }
    return ps;
}

static void test_all_present(void **state)
{
    (void)state;
    parties *ps = make_parties(0);
    uint32_t sum[N] = {0}, plain[N] = {0};
    for (int u = 0; u < P; u++) {
        fp_secagg_sum_add(sum, ps->y[u], N);
        fp_secagg_sum_add(plain, ps->q[u], N);
        /* a masked input reveals nothing obvious: it differs from q nearly everywhere */
        size_t same = 0;
        for (int i = 0; i < N; i++)
            same += ps->y[u][i] == ps->q[u][i];
        assert_true(same < 5);
    }
    for (int u = 0; u < P; u++)
        assert_int_equal(fp_secagg_unmask_self(sum, N, 0, ps->self_seed[u], ROUND), 0);
    assert_memory_equal(sum, plain, sizeof sum);

    /* dequantized secure sum vs the float sum of clipped values: documented bound */
    float deq[N];
    fp_secagg_dequantize_sum(deq, sum, N, FRAC);
    double bound = P * ldexp(1.0, -(FRAC + 1)), worst = 0.0;
    for (int i = 0; i < N; i++) {
        double ref = 0.0;
        for (int u = 0; u < P; u++)
            ref += fmax(-CLIP, fmin(CLIP, ps->x[u][i]));
        double err = fabs(deq[i] - ref), b = bound + fabs(ref) * ldexp(1.0, -24);
        if (err > b)
            fail_msg("coordinate %d: |%g - %g| = %g > bound %g", i, deq[i], ref, err, b);
        worst = fmax(worst, err);
    }
    assert_true(worst > 0.0);                      /* the check is not vacuous */
    free(ps);
}

static void test_two_dropped(void **state)
{
    (void)state;
    parties *ps = make_parties(0);
    const int dropped[2] = {1, 3}, survivors[3] = {0, 2, 4};
    const unsigned t = 3;
    /* before masking, each party shared its secret key t-of-P */
    uint8_t shares[P][P][FP_SHAMIR_BYTES];
    for (int u = 0; u < P; u++)
        assert_int_equal(fp_shamir_split(ps->sk[u], t, P, shares[u]), 0);

    uint32_t sum[N] = {0}, plain[N] = {0};
    fp_secagg_peer surv[3];
    for (int k = 0; k < 3; k++) {
        int u = survivors[k];
        fp_secagg_sum_add(sum, ps->y[u], N);
        fp_secagg_sum_add(plain, ps->q[u], N);
        assert_int_equal(fp_secagg_unmask_self(sum, N, 0, ps->self_seed[u], ROUND), 0);
        surv[k] = ps->peer[u];
    }
    /* without the dropped parties' masks the sum is garbage */
    assert_memory_not_equal(sum, plain, sizeof sum);
    for (int k = 0; k < 2; k++) {
        int d = dropped[k];
        /* the server rebuilds sk_d from the survivors' shares of it */
        uint8_t sub[3][FP_SHAMIR_BYTES], xs[3], sk[32];
        for (int j = 0; j < 3; j++) {
            memcpy(sub[j], shares[d][survivors[j]], FP_SHAMIR_BYTES);
            xs[j] = (uint8_t)(survivors[j] + 1);
        }
        assert_int_equal(fp_shamir_combine((const uint8_t (*)[FP_SHAMIR_BYTES])sub, xs, 3, t, sk), 0);
        assert_memory_equal(sk, ps->sk[d], 32);
        /* in two chunks again */
        assert_int_equal(fp_secagg_unmask_dropped(sum, 777, 0, ps->peer[d].id, sk, surv, 3, RUN,
                                                  ROUND), 0);
        assert_int_equal(fp_secagg_unmask_dropped(sum + 777, N - 777, 777, ps->peer[d].id, sk,
                                                  surv, 3, RUN, ROUND), 0);
        sodium_memzero(sk, sizeof sk);
    }
    assert_memory_equal(sum, plain, sizeof sum);
    free(ps);
}

static void test_pair_seed_and_prg(void **state)
{
    (void)state;
    uint8_t pa[32], sa[32], pb[32], sb[32], s1[32], s2[32], s3[32];
    crypto_box_keypair(pa, sa);
    crypto_box_keypair(pb, sb);
    assert_int_equal(fp_secagg_pair_seed(s1, sa, pb, "a", "b", RUN, 1), 0);
    assert_int_equal(fp_secagg_pair_seed(s2, sb, pa, "b", "a", RUN, 1), 0);
    assert_memory_equal(s1, s2, 32);                        /* symmetric */
    assert_int_equal(fp_secagg_pair_seed(s3, sa, pb, "a", "b", RUN, 2), 0);
    assert_memory_not_equal(s1, s3, 32);                    /* per round */
    assert_int_equal(fp_secagg_pair_seed(s3, sa, pb, "a", "b", "other-run", 1), 0);
    assert_memory_not_equal(s1, s3, 32);                    /* per run */
    assert_int_equal(fp_secagg_pair_seed(s3, sa, pb, "a", "a", RUN, 1), -1);
    assert_int_equal(fp_secagg_pair_sign("a", "b"), 1);
    assert_int_equal(fp_secagg_pair_sign("b", "a"), -1);
    assert_int_equal(fp_secagg_pair_sign("b", "b"), 0);

    /* the PRG at an offset equals the same words of the whole stream */
    uint32_t whole[200] = {0}, part[77] = {0};
    assert_int_equal(fp_secagg_mask_add(whole, 200, 0, s1, FP_SECAGG_PAIR, 9, 1), 0);
    assert_int_equal(fp_secagg_mask_add(part, 77, 101, s1, FP_SECAGG_PAIR, 9, 1), 0);
    assert_memory_equal(part, whole + 101, sizeof part);
    /* purpose and round change the stream; +1 then -1 is the identity */
    assert_int_equal(fp_secagg_mask_add(part, 77, 101, s1, FP_SECAGG_SELF, 9, 1), 0);
    assert_memory_not_equal(part, whole + 101, sizeof part);
    assert_int_equal(fp_secagg_mask_add(part, 77, 101, s1, FP_SECAGG_SELF, 9, -1), 0);
    assert_memory_equal(part, whole + 101, sizeof part);
    assert_int_equal(fp_secagg_mask_add(part, 77, 101, s1, FP_SECAGG_PAIR, 9, 0), -1);
    assert_memory_equal(part, whole + 101, sizeof part);
}

static void test_quantization(void **state)
{
    (void)state;
    const float in[] = {0.0f, 1.0f, -1.0f, 3.99f, -100.0f, 100.0f, 1e-9f, -2.5f};
    uint32_t q[8];
    float back[8];
    assert_int_equal(fp_secagg_quantize(q, in, 8, CLIP, FRAC, NULL), 0);
    assert_int_equal(q[1], 1u << FRAC);
    assert_int_equal(q[2], (uint32_t)-(int64_t)(1u << FRAC));
    assert_int_equal(q[4], (uint32_t)-(int64_t)(4u << FRAC));      /* clipped */
    assert_int_equal(q[5], 4u << FRAC);
    fp_secagg_dequantize_sum(back, q, 8, FRAC);
    assert_true(back[4] == -4.0f && back[5] == 4.0f && back[7] == -2.5f && back[6] == 0.0f);
    /* stochastic rounding is unbiased: the mean of many roundings of 1/3 ulp */
    fp_rng rng;
    fp_rng_seed(&rng, 3);
    float v = (float)ldexp(1.0 / 3.0, -FRAC);
    double acc = 0.0;
    for (int i = 0; i < 30000; i++) {
        uint32_t one;
        assert_int_equal(fp_secagg_quantize(&one, &v, 1, CLIP, FRAC, &rng), 0);
        assert_true(one == 0 || one == 1);
        acc += one;
    }
    assert_true(fabs(acc / 30000 - 1.0 / 3.0) < 0.02);
    /* a NaN is refused; parameters that overflow int32 are refused */
    float bad = NAN;
    assert_int_equal(fp_secagg_quantize(q, &bad, 1, CLIP, FRAC, NULL), -1);
    assert_int_equal(fp_secagg_params_check(4.0f, 16, 8191), 0);
    assert_int_equal(fp_secagg_params_check(4.0f, 16, 8192), -1);
    assert_int_equal(fp_secagg_params_check(0.0f, 16, 2), -1);
    assert_int_equal(fp_secagg_params_check(1.0f, 31, 2), -1);
}

/* The plausibility check on an unmasked sum: honest sums pass at the edge of the
 * range; a +-512 input from one of 5 parties (clip 0.01) is refused, naming the
 * coordinate; an unclipped input is caught by the L2 bound. */
static void test_sum_bounds(void **state)
{
    (void)state;
    enum { N = 64, P = 5, F = 16 };
    const float clip = 0.01f;
    uint32_t q[N], acc[N] = {0};
    float x[N];
    for (int p = 0; p < P; p++) {
        for (int i = 0; i < N; i++)
            x[i] = (i % 2 ? clip : -clip) * (p == 0 ? 1.0f : 0.5f);
        assert_int_equal(fp_secagg_quantize(q, x, N, clip, F, NULL), 0);
        fp_secagg_sum_add(acc, q, N);
    }
    size_t bad = 0;
    assert_int_equal(fp_secagg_check_sum(acc, N, P, clip, F, 0.0, &bad), 0);
    assert_int_equal(bad, SIZE_MAX);
    /* L2: each |x|_2 = sqrt(N) * 0.01 at most */
    assert_int_equal(fp_secagg_check_sum(acc, N, P, clip, F, sqrt(N) * clip, NULL), 0);
    assert_int_equal(fp_secagg_check_sum(acc, N, P, clip, F, 0.1 * clip, NULL), -1);

    /* a hostile party adds +512 (in quanta) to coordinate 7: any word mod 2^32 */
    uint32_t evil[N] = {0};
    evil[7] = (uint32_t)(int64_t)(512.0 * 65536.0);
    uint32_t sum2[N];
    memcpy(sum2, acc, sizeof acc);
    fp_secagg_sum_add(sum2, evil, N);
    assert_int_equal(fp_secagg_check_sum(sum2, N, P, clip, F, 0.0, &bad), -1);
    assert_int_equal(bad, 7);
    assert_non_null(strstr(fp_error_get(), "coordinate 7"));
    evil[7] = (uint32_t)-(int64_t)(512.0 * 65536.0);
    memcpy(sum2, acc, sizeof acc);
    fp_secagg_sum_add(sum2, evil, N);
    assert_int_equal(fp_secagg_check_sum(sum2, N, P, clip, F, 0.0, NULL), -1);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_present),
        cmocka_unit_test(test_two_dropped),
        cmocka_unit_test(test_pair_seed_and_prg),
        cmocka_unit_test(test_quantization),
        cmocka_unit_test(test_sum_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

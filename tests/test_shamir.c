/* test_shamir.c - t-of-n sharing over GF(2^8): field arithmetic, any t of n shares
 * reconstruct, t-1 shares do not (and look uniform), bad share sets are refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "shamir.h"

static uint8_t (*shares)[FP_SHAMIR_BYTES];

static void test_field(void **state)
{
    (void)state;
    /* AES field: 0x53 * 0xCA = 1 (FIPS-197 example); 0x57 * 0x83 = 0xC1 */
    assert_int_equal(fp_gf256_mul(0x57, 0x83), 0xc1);
    assert_int_equal(fp_gf256_mul(0x53, 0xca), 0x01);
    assert_int_equal(fp_gf256_inv(0), 0);
    for (unsigned a = 1; a < 256; a++) {
        assert_int_equal(fp_gf256_mul((uint8_t)a, fp_gf256_inv((uint8_t)a)), 1);
        assert_int_equal(fp_gf256_mul((uint8_t)a, 1), a);
        assert_int_equal(fp_gf256_mul((uint8_t)a, 0), 0);
        for (unsigned b = 1; b < 256; b += 37)
            assert_int_equal(fp_gf256_mul((uint8_t)a, (uint8_t)b), fp_gf256_mul((uint8_t)b, (uint8_t)a));
    }
}

/* Picks k distinct indices of 0..n-1 into idx (random). */
static void pick(unsigned n, unsigned k, unsigned *idx)
{
    unsigned perm[FP_SHAMIR_MAX_N];
    for (unsigned i = 0; i < n; i++)
        perm[i] = i;
    for (unsigned i = 0; i < k; i++) {
        unsigned j = i + randombytes_uniform(n - i), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
        idx[i] = perm[i];
    }
}

static int combine_subset(unsigned t, const unsigned *idx, unsigned k, uint8_t out[32])
{
    uint8_t sub[FP_SHAMIR_MAX_N][FP_SHAMIR_BYTES], xs[FP_SHAMIR_MAX_N];
    for (unsigned i = 0; i < k; i++) {
        memcpy(sub[i], shares[idx[i]], FP_SHAMIR_BYTES);
        xs[i] = (uint8_t)(idx[i] + 1);
    }
    return fp_shamir_combine((const uint8_t (*)[FP_SHAMIR_BYTES])sub, xs, k, t, out);
}

static void test_any_t_of_n(void **state)
{
    (void)state;
    const unsigned cases[][2] = {{1, 1}, {1, 3}, {2, 2}, {2, 5}, {3, 5}, {5, 5}, {7, 20},
                                 {128, 255}, {255, 255}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        unsigned t = cases[c][0], n = cases[c][1], idx[FP_SHAMIR_MAX_N];
        uint8_t secret[32], out[32];
        randombytes_buf(secret, sizeof secret);
        assert_int_equal(fp_shamir_split(secret, t, n, shares), 0);
        for (int trial = 0; trial < 20; trial++) {
            pick(n, t, idx);
            assert_int_equal(combine_subset(t, idx, t, out), 0);
            assert_memory_equal(out, secret, 32);
            /* more than t shares work as well */
            if (t < n) {
                pick(n, n, idx);
                assert_int_equal(combine_subset(t, idx, n, out), 0);
                assert_memory_equal(out, secret, 32);
            }
        }
    }
}

static void test_too_few_shares(void **state)
{
    (void)state;
    /* t-1 shares: combine refuses; forcing a (t-1)-of interpolation gives another
     * value, and over many splits of one secret that value is ~uniform per byte. */
    uint8_t secret[32] = {0}, out[32];
    unsigned idx[5], hist[256] = {0}, equal = 0;
    const unsigned t = 3, n = 5, rounds = 2000;
    for (unsigned r = 0; r < rounds; r++) {
        assert_int_equal(fp_shamir_split(secret, t, n, shares), 0);
        pick(n, t - 1, idx);
        assert_int_equal(combine_subset(t, idx, t - 1, out), -1);     /* refused */
        assert_int_equal(combine_subset(t - 1, idx, t - 1, out), 0);  /* forced */
        for (int b = 0; b < 32; b++) {
            hist[out[b]]++;
            equal += out[b] == secret[b];
        }
    }
    /* 64000 bytes over 256 values: expect 250 each; a secret leak would pile up at 0 */
    unsigned total = rounds * 32;
    assert_true(equal < total / 256 * 2);
    double chi2 = 0.0, e = total / 256.0;
    for (int v = 0; v < 256; v++)
        chi2 += (hist[v] - e) * (hist[v] - e) / e;
    /* 255 degrees of freedom: mean 255, sd ~22.6; 400 is > 6 sd */
    if (chi2 > 400.0)
        fail_msg("t-1 shares are not uniform: chi2 = %.1f", chi2);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    uint8_t secret[32], out[32], xs[3] = {1, 2, 2};
    randombytes_buf(secret, 32);
    assert_int_equal(fp_shamir_split(secret, 0, 3, shares), -1);
    assert_int_equal(fp_shamir_split(secret, 4, 3, shares), -1);
    assert_int_equal(fp_shamir_split(secret, 2, 256, shares), -1);
    assert_int_equal(fp_shamir_split(secret, 2, 0, shares), -1);
    assert_int_equal(fp_shamir_split(secret, 2, 3, shares), 0);
    const uint8_t (*s)[FP_SHAMIR_BYTES] = (const uint8_t (*)[FP_SHAMIR_BYTES])shares;
    memset(out, 0x77, 32);
    assert_int_equal(fp_shamir_combine(s, xs, 3, 2, out), -1);         /* duplicate x */
    uint8_t zero[32] = {0};
    assert_memory_equal(out, zero, 32);
    xs[2] = 0;
    assert_int_equal(fp_shamir_combine(s, xs, 3, 2, out), -1);         /* x = 0 */
    xs[0] = 1, xs[1] = 3;
    assert_int_equal(fp_shamir_combine(s, xs, 1, 2, out), -1);         /* too few */
    assert_int_equal(fp_shamir_combine(s, xs, 2, 0, out), -1);         /* t = 0 */
    /* right shares with wrong x values give a wrong secret, silently (documented) */
    xs[0] = 1, xs[1] = 3;
    assert_int_equal(fp_shamir_combine(s, xs, 2, 2, out), 0);
    assert_memory_not_equal(out, secret, 32);
    /* a tampered share changes the result */
    uint8_t mod[2][FP_SHAMIR_BYTES];
    memcpy(mod, shares, sizeof mod);
    mod[1][7] ^= 1;
    xs[0] = 1, xs[1] = 2;
    assert_int_equal(fp_shamir_combine((const uint8_t (*)[FP_SHAMIR_BYTES])mod, xs, 2, 2, out), 0);
    assert_memory_not_equal(out, secret, 32);
}

static int setup(void **state)
{
    (void)state;
    if (sodium_init() < 0)
        return -1;
    shares = calloc(FP_SHAMIR_MAX_N, FP_SHAMIR_BYTES);
    return shares ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    free(shares);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_field),
        cmocka_unit_test(test_any_t_of_n),
        cmocka_unit_test(test_too_few_shares),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

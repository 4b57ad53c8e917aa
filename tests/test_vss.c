/* test_vss.c - Feldman-verifiable sharing over the Ed25519 scalar field: any t of
 * n shares reconstruct (n far past GF(2^8)'s 255), every share verifies against the
 * dealer's commitments, and a corrupted share, commitment or secret is caught. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "vss.h"

typedef uint8_t row[FP_VSS_BYTES];

static void deal(unsigned t, size_t n, uint8_t secret[FP_VSS_BYTES], uint32_t *xs, row *shares,
                 row *commit)
{
    fp_vss_random_secret(secret);
    for (size_t i = 0; i < n; i++)
        xs[i] = (uint32_t)(i + 1);
    assert_int_equal(fp_vss_deal(secret, t, xs, n, shares, commit), 0);
    assert_int_equal(fp_vss_check_commitments(commit, t), 0);
}

/* t of n shares, chosen at random, give the secret; every share verifies. */
static void test_any_t_of_n(void **state)
{
    (void)state;
    enum { N = 9, T = 5 };
    uint8_t secret[FP_VSS_BYTES], got[FP_VSS_BYTES];
    uint32_t xs[N];
    row shares[N], commit[T];
    deal(T, N, secret, xs, shares, commit);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(fp_vss_verify(commit, T, xs[i], shares[i]), 0);
    for (int trial = 0; trial < 20; trial++) {
        unsigned perm[N];
        for (unsigned i = 0; i < N; i++)
            perm[i] = i;
        for (unsigned i = N - 1; i > 0; i--) {
            unsigned j = randombytes_uniform(i + 1), tmp = perm[i];
            perm[i] = perm[j];
            perm[j] = tmp;
        }
        unsigned k = T + (unsigned)trial % (N - T + 1);
        row sub[N];
        uint32_t sx[N];
        for (unsigned i = 0; i < k; i++) {
            memcpy(sub[i], shares[perm[i]], FP_VSS_BYTES);
            sx[i] = xs[perm[i]];
        }
        assert_int_equal(fp_vss_combine(sub, sx, k, T, got), 0);
        assert_memory_equal(got, secret, FP_VSS_BYTES);
        assert_int_equal(fp_vss_check_secret(commit, got), 0);
    }
}

/* t-1 shares interpolate to something else (and combine refuses fewer than t). */
static void test_below_threshold(void **state)
{
    (void)state;
    enum { N = 6, T = 4 };
    uint8_t secret[FP_VSS_BYTES], got[FP_VSS_BYTES];
    uint32_t xs[N];
    row shares[N], commit[T];
    deal(T, N, secret, xs, shares, commit);
    assert_int_equal(fp_vss_combine(shares, xs, T - 1, T, got), -1);
    assert_true(sodium_is_zero(got, FP_VSS_BYTES));
    /* interpolating t-1 points as if the degree were t-2 gives a wrong secret */
    assert_int_equal(fp_vss_combine(shares, xs, T - 1, T - 1, got), 0);
    assert_memory_not_equal(got, secret, FP_VSS_BYTES);
    assert_int_equal(fp_vss_check_secret(commit, got), -1);
}

/* No 255 cap: 2,000 shares at x up to 2^32-1; the last t reconstruct. */
static void test_large_n(void **state)
{
    (void)state;
    enum { N = 2000, T = 7 };
    uint8_t secret[FP_VSS_BYTES], got[FP_VSS_BYTES];
    uint32_t *xs = malloc(N * sizeof *xs);
    row *shares = malloc(N * sizeof *shares), commit[T];
    assert_non_null(xs);
    assert_non_null(shares);
    fp_vss_random_secret(secret);
    for (size_t i = 0; i < N; i++)
        xs[i] = (uint32_t)(UINT32_MAX - 3 * i);
    assert_int_equal(fp_vss_deal(secret, T, xs, N, shares, commit), 0);
    assert_int_equal(fp_vss_verify(commit, T, xs[N - 1], shares[N - 1]), 0);
    assert_int_equal(fp_vss_combine(shares + N - T, xs + N - T, T, T, got), 0);
    assert_memory_equal(got, secret, FP_VSS_BYTES);
    free(xs);
    free(shares);
}

/* A flipped bit in a share fails verification and, if used anyway, gives a
 * secret that fails the commitment check; the good shares still reconstruct. */
static void test_corrupted_share_identified(void **state)
{
    (void)state;
    enum { N = 7, T = 4 };
    uint8_t secret[FP_VSS_BYTES], got[FP_VSS_BYTES];
    uint32_t xs[N];
    row shares[N], commit[T];
    deal(T, N, secret, xs, shares, commit);
    shares[2][5] ^= 0x10;
    int bad = -1, n_good = 0;
    row good[N];
    uint32_t gx[N];
    for (int i = 0; i < N; i++) {
        if (fp_vss_verify(commit, T, xs[i], shares[i]) != 0) {
            assert_int_equal(bad, -1);
            bad = i;
            continue;
        }
        memcpy(good[n_good], shares[i], FP_VSS_BYTES);
        gx[n_good++] = xs[i];
    }
    assert_int_equal(bad, 2);
    assert_int_equal(fp_vss_combine(shares, xs, T, T, got), 0); /* includes the bad one */
    assert_int_equal(fp_vss_check_secret(commit, got), -1);
    assert_int_equal(fp_vss_combine(good, gx, (size_t)n_good, T, got), 0);
    assert_memory_equal(got, secret, FP_VSS_BYTES);
    /* a share moved to another x does not verify there */
    assert_int_equal(fp_vss_verify(commit, T, xs[1], shares[0]), -1);
}

/* Hostile inputs: identity, small-order and off-curve commitments, a
 * non-canonical share (>= l), x = 0 and repeated x, bad thresholds. */
static void test_hostile_inputs(void **state)
{
    (void)state;
    enum { N = 4, T = 3 };
    uint8_t secret[FP_VSS_BYTES], got[FP_VSS_BYTES];
    uint32_t xs[N];
    row shares[N], commit[T], bad[T];
    deal(T, N, secret, xs, shares, commit);

    memcpy(bad, commit, sizeof bad);
    memset(bad[1], 0, FP_VSS_BYTES);                 /* not a point of the group */
    assert_int_equal(fp_vss_check_commitments(bad, T), -1);
    memcpy(bad, commit, sizeof bad);
    memset(bad[2], 0, FP_VSS_BYTES);
    bad[2][0] = 1;                                   /* the identity (small order) */
    assert_int_equal(fp_vss_check_commitments(bad, T), -1);
    assert_int_equal(fp_vss_verify(bad, T, xs[0], shares[0]), -1);
    memcpy(bad, commit, sizeof bad);
    bad[0][31] ^= 0x40;                              /* off the curve or another point */
    assert_int_equal(fp_vss_verify(bad, T, xs[0], shares[0]), -1);
    assert_int_equal(fp_vss_check_commitments(bad, 0), -1);
    assert_int_equal(fp_vss_check_commitments(bad, FP_VSS_MAX_T + 1), -1);

    row big;
    memset(big, 0xff, FP_VSS_BYTES);                 /* >= l: not canonical */
    big[31] = 0x1f;
    assert_int_equal(fp_vss_verify(commit, T, xs[0], big), -1);
    assert_int_equal(fp_vss_combine((const row[]){{0}, {0}, {0}}, xs, T, T, got), 0);
    row sh3[3];
    memcpy(sh3, shares, sizeof sh3);
    memcpy(sh3[1], big, FP_VSS_BYTES);
    assert_int_equal(fp_vss_combine(sh3, xs, T, T, got), -1);

    uint32_t dup[3] = {1, 2, 1}, zero[3] = {1, 0, 3};
    assert_int_equal(fp_vss_combine(shares, dup, T, T, got), -1);
    assert_int_equal(fp_vss_combine(shares, zero, T, T, got), -1);
    assert_int_equal(fp_vss_verify(commit, T, 0, shares[0]), -1);
    row out[N], cm[N + 1];
    assert_int_equal(fp_vss_deal(secret, N + 1, xs, N, out, cm), -1);
    assert_int_equal(fp_vss_deal(secret, 0, xs, N, out, cm), -1);
    assert_int_equal(fp_vss_deal(secret, T, dup, 3, out, cm), -1);
    assert_true(sodium_is_zero(out[0], 3 * FP_VSS_BYTES));
    assert_int_equal(fp_vss_deal(big, T, xs, N, out, cm), -1);
}

/* t = 1: every share is the secret itself (documented: no secrecy). */
static void test_threshold_one(void **state)
{
    (void)state;
    uint8_t secret[FP_VSS_BYTES];
    uint32_t xs[3];
    row shares[3], commit[1];
    deal(1, 3, secret, xs, shares, commit);
    for (int i = 0; i < 3; i++)
        assert_memory_equal(shares[i], secret, FP_VSS_BYTES);
}

static void test_derive(void **state)
{
    (void)state;
    uint8_t s[FP_VSS_BYTES], a[32], b[32], c[32];
    fp_vss_random_secret(s);
    fp_vss_derive(a, s, "self-mask");
    fp_vss_derive(b, s, "self-mask");
    fp_vss_derive(c, s, "mask-key");
    assert_memory_equal(a, b, 32);
    assert_memory_not_equal(a, c, 32);
    /* BLAKE2b-256 of the labelled secret, computed directly */
    uint8_t msg[12 + 9 + FP_VSS_BYTES], want[32];
    memcpy(msg, "fedpeft/vss/self-mask", 21);
    memcpy(msg + 21, s, FP_VSS_BYTES);
    crypto_generichash(want, 32, msg, sizeof msg, NULL, 0);
    assert_memory_equal(a, want, 32);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_any_t_of_n),
        cmocka_unit_test(test_below_threshold),
        cmocka_unit_test(test_large_n),
        cmocka_unit_test(test_corrupted_share_identified),
        cmocka_unit_test(test_hostile_inputs),
        cmocka_unit_test(test_threshold_one),
        cmocka_unit_test(test_derive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

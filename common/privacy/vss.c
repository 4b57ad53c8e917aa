/* vss.c - Feldman-verifiable Shamir sharing over the Ed25519 scalar field (vss.h). */
#include "vss.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* x as a little-endian scalar (x < 2^32 < l, so already reduced). */
static void scalar_of_u32(uint8_t s[FP_VSS_BYTES], uint32_t x)
{
    memset(s, 0, FP_VSS_BYTES);
    for (int i = 0; i < 4; i++)
        s[i] = (uint8_t)(x >> (8 * i));
}

/* 1 when s is canonical (s < l): reducing it changes nothing. */
static int scalar_canonical(const uint8_t s[FP_VSS_BYTES])
{
    uint8_t wide[64] = {0}, red[FP_VSS_BYTES];
    memcpy(wide, s, FP_VSS_BYTES);
    crypto_core_ed25519_scalar_reduce(red, wide);
    int ok = sodium_memcmp(red, s, FP_VSS_BYTES) == 0;
    sodium_memzero(wide, sizeof wide);
    sodium_memzero(red, sizeof red);
    return ok;
}

static int check_xs(const uint32_t *xs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (xs[i] == 0)
            return fp_error_set("vss: share %zu has x = 0 (x must be 1..2^32-1)", i);
        for (size_t j = 0; j < i; j++)
            if (xs[j] == xs[i])
                return fp_error_set("vss: shares %zu and %zu have the same x = %u", j, i,
                                    (unsigned)xs[i]);
    }
    return 0;
}

void fp_vss_random_secret(uint8_t secret_out[FP_VSS_BYTES])
{
    do
        crypto_core_ed25519_scalar_random(secret_out);
    while (sodium_is_zero(secret_out, FP_VSS_BYTES));
}

int fp_vss_deal(const uint8_t secret[FP_VSS_BYTES], unsigned t, const uint32_t *xs, size_t n,
                uint8_t (*shares_out)[FP_VSS_BYTES], uint8_t (*commit_out)[FP_VSS_BYTES])
{
    memset(shares_out, 0, n * FP_VSS_BYTES);
    if (t >= 1 && commit_out)
        memset(commit_out, 0, (size_t)(t <= FP_VSS_MAX_T ? t : 0) * FP_VSS_BYTES);
    if (t < 1 || t > FP_VSS_MAX_T || (size_t)t > n)
        return fp_error_set("vss: threshold t = %u with n = %zu shares; need 1 <= t <= n and "
                            "t <= %d", t, n, FP_VSS_MAX_T);
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    if (!scalar_canonical(secret) || sodium_is_zero(secret, FP_VSS_BYTES))
        return fp_error_set("vss: the secret is not a nonzero canonical scalar "
                            "(draw it with fp_vss_random_secret)");
    if (check_xs(xs, n) < 0)
        return -1;
    uint8_t *coef = sodium_malloc((size_t)t * FP_VSS_BYTES);
    if (!coef)
        return fp_error_set("vss: out of memory for %u coefficients", t);
    memcpy(coef, secret, FP_VSS_BYTES);
    for (unsigned j = 1; j < t; j++)
        fp_vss_random_secret(coef + (size_t)j * FP_VSS_BYTES);
    int rc = 0;
    for (unsigned j = 0; j < t && rc == 0 && commit_out; j++)
        if (crypto_scalarmult_ed25519_base_noclamp(commit_out[j], coef + (size_t)j * FP_VSS_BYTES))
            rc = fp_error_set("vss: commitment %u is the identity", j);
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint8_t x[FP_VSS_BYTES], y[FP_VSS_BYTES];
        scalar_of_u32(x, xs[i]);
        memcpy(y, coef + (size_t)(t - 1) * FP_VSS_BYTES, FP_VSS_BYTES);
        for (unsigned j = t - 1; j >= 1; j--) { /* Horner, highest degree first */
            crypto_core_ed25519_scalar_mul(y, y, x);
            crypto_core_ed25519_scalar_add(y, y, coef + (size_t)(j - 1) * FP_VSS_BYTES);
        }
        memcpy(shares_out[i], y, FP_VSS_BYTES);
        sodium_memzero(y, sizeof y);
    }
    sodium_free(coef); /* sodium_free wipes */
    if (rc != 0) {
        sodium_memzero(shares_out, n * FP_VSS_BYTES);
        if (commit_out)
            memset(commit_out, 0, (size_t)t * FP_VSS_BYTES);
    }
    return rc;
}

int fp_vss_check_commitments(const uint8_t (*commit)[FP_VSS_BYTES], unsigned t)
{
    if (t < 1 || t > FP_VSS_MAX_T)
        return fp_error_set("vss: %u commitments; expected 1..%d", t, FP_VSS_MAX_T);
    for (unsigned j = 0; j < t; j++)
        if (!crypto_core_ed25519_is_valid_point(commit[j]))
            return fp_error_set("vss: commitment %u is not a valid prime-order point "
                                "(a corrupted or hostile commitment)", j);
    return 0;
}

int fp_vss_verify(const uint8_t (*commit)[FP_VSS_BYTES], unsigned t, uint32_t x,
                  const uint8_t share[FP_VSS_BYTES])
{
    if (t < 1 || t > FP_VSS_MAX_T || x == 0)
        return fp_error_set("vss: cannot verify a share with t = %u at x = %u", t, (unsigned)x);
    if (!scalar_canonical(share) || sodium_is_zero(share, FP_VSS_BYTES))
        return fp_error_set("vss: share at x = %u is not a nonzero canonical scalar", (unsigned)x);
    uint8_t lhs[FP_VSS_BYTES], acc[FP_VSS_BYTES], xs[FP_VSS_BYTES], xp[FP_VSS_BYTES];
    uint8_t term[FP_VSS_BYTES];
    if (crypto_scalarmult_ed25519_base_noclamp(lhs, share))
        return fp_error_set("vss: share at x = %u maps to the identity", (unsigned)x);
    /* sum_j x^j C_j with x^j as scalars: no intermediate can be the identity for
     * valid prime-order commitments, unlike Horner's running point. */
    memcpy(acc, commit[0], FP_VSS_BYTES);
    scalar_of_u32(xs, x);
    memcpy(xp, xs, FP_VSS_BYTES);
    for (unsigned j = 1; j < t; j++) {
        if (crypto_scalarmult_ed25519_noclamp(term, xp, commit[j]) ||
            crypto_core_ed25519_add(acc, acc, term))
            return fp_error_set("vss: commitment %u is not a valid prime-order point", j);
        crypto_core_ed25519_scalar_mul(xp, xp, xs);
    }
    if (sodium_memcmp(lhs, acc, FP_VSS_BYTES) != 0)
        return fp_error_set("vss: share at x = %u does not match the dealer's commitments",
                            (unsigned)x);
    return 0;
}

int fp_vss_lagrange(const uint32_t *xs, size_t k, uint8_t (*l_out)[FP_VSS_BYTES])
{
    uint8_t num[FP_VSS_BYTES], xj[FP_VSS_BYTES], xm[FP_VSS_BYTES], d[FP_VSS_BYTES];
    uint8_t inv[FP_VSS_BYTES], tmp[FP_VSS_BYTES];

    memset(l_out, 0, k * FP_VSS_BYTES);
    if (k < 1)
        return fp_error_set("vss: no shares to interpolate");
    if (check_xs(xs, k) < 0)
        return -1;
    uint8_t (*den)[FP_VSS_BYTES] = malloc(2 * k * FP_VSS_BYTES);
    if (!den)
        return fp_error_set("vss: out of memory for %zu coefficients", k);
    uint8_t (*pre)[FP_VSS_BYTES] = den + k;
    /* l_j = prod_{m != j} x_m / (x_m - x_j) mod l; the k denominators are
     * inverted together (Montgomery's trick: one inversion, 3(k-1) products). */
    scalar_of_u32(num, 1);
    for (size_t m = 0; m < k; m++) {
        scalar_of_u32(xm, xs[m]);
        crypto_core_ed25519_scalar_mul(num, num, xm);  /* prod of all x_m */
    }
    for (size_t j = 0; j < k; j++) {
        scalar_of_u32(den[j], 1);
        scalar_of_u32(xj, xs[j]);
        for (size_t m = 0; m < k; m++) {
            if (m == j)
                continue;
            scalar_of_u32(xm, xs[m]);
            crypto_core_ed25519_scalar_sub(d, xm, xj);
            crypto_core_ed25519_scalar_mul(den[j], den[j], d);
        }
        crypto_core_ed25519_scalar_mul(den[j], den[j], xj); /* so num/den[j] drops x_j */
        if (j == 0)
            memcpy(pre[0], den[0], FP_VSS_BYTES);
        else
            crypto_core_ed25519_scalar_mul(pre[j], pre[j - 1], den[j]);
    }
    int rc = 0;
    if (crypto_core_ed25519_scalar_invert(inv, pre[k - 1]) != 0) {
        rc = fp_error_set("vss: interpolation denominator is zero");
    } else {
        for (size_t j = k; j-- > 0;) {
            /* inv = 1 / (den[0] ... den[j]) */
            if (j > 0)
                crypto_core_ed25519_scalar_mul(tmp, inv, pre[j - 1]); /* 1 / den[j] */
            else
                memcpy(tmp, inv, FP_VSS_BYTES);
            crypto_core_ed25519_scalar_mul(l_out[j], tmp, num);
            crypto_core_ed25519_scalar_mul(inv, inv, den[j]);
        }
    }
    free(den);
    return rc;
}

void fp_vss_combine_lagrange(const uint8_t (*l)[FP_VSS_BYTES], const uint8_t (*shares)[FP_VSS_BYTES],
                             size_t k, uint8_t secret_out[FP_VSS_BYTES])
{
    uint8_t acc[FP_VSS_BYTES] = {0}, term[FP_VSS_BYTES];
    for (size_t j = 0; j < k; j++) {
        crypto_core_ed25519_scalar_mul(term, l[j], shares[j]);
        crypto_core_ed25519_scalar_add(acc, acc, term);
    }
    memcpy(secret_out, acc, FP_VSS_BYTES);
    sodium_memzero(acc, sizeof acc);
    sodium_memzero(term, sizeof term);
}

int fp_vss_combine(const uint8_t (*shares)[FP_VSS_BYTES], const uint32_t *xs, size_t k,
                   unsigned t, uint8_t secret_out[FP_VSS_BYTES])
{
    memset(secret_out, 0, FP_VSS_BYTES);
    if (t < 1 || k < t)
        return fp_error_set("vss: %zu shares given, %u needed", k, t);
    for (size_t j = 0; j < k; j++)
        if (!scalar_canonical(shares[j]))
            return fp_error_set("vss: share %zu (x = %u) is not a canonical scalar", j,
                                (unsigned)xs[j]);
    uint8_t (*l)[FP_VSS_BYTES] = malloc(k * FP_VSS_BYTES);
    if (!l)
        return fp_error_set("vss: out of memory for %zu coefficients", k);
    int rc = fp_vss_lagrange(xs, k, l);
    if (rc == 0)
        fp_vss_combine_lagrange((const uint8_t (*)[FP_VSS_BYTES])l, shares, k, secret_out);
    free(l);
    return rc;
}

int fp_vss_check_secret(const uint8_t (*commit)[FP_VSS_BYTES], const uint8_t secret[FP_VSS_BYTES])
{
    uint8_t p[FP_VSS_BYTES];
    if (!scalar_canonical(secret) || crypto_scalarmult_ed25519_base_noclamp(p, secret))
        return fp_error_set("vss: the reconstructed secret is not a nonzero canonical scalar");
    if (sodium_memcmp(p, commit[0], FP_VSS_BYTES) != 0)
        return fp_error_set("vss: the reconstructed secret does not match its commitment "
                            "(a bad share was used)");
    return 0;
}

void fp_vss_derive(uint8_t out[32], const uint8_t secret[FP_VSS_BYTES], const char *label)
{
    crypto_generichash_state st;
    static const char dom[] = "fedpeft/vss/";
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const unsigned char *)dom, sizeof dom - 1);
    crypto_generichash_update(&st, (const unsigned char *)label, strlen(label));
    crypto_generichash_update(&st, secret, FP_VSS_BYTES);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
}

/* shamir.c - Shamir secret sharing over GF(2^8); see shamir.h. */
#include "shamir.h"

#include <string.h>

#include <sodium.h>

uint8_t fp_gf256_mul(uint8_t a, uint8_t b)
{
    unsigned r = 0, x = a, y = b;
    for (int i = 0; i < 8; i++) {
        r ^= x & (0u - (y & 1u));                 /* add x when the low bit of y is set */
        y >>= 1;
        x = (x << 1) ^ (0x11bu & (0u - (x >> 7)));/* multiply x by the generator 2 */
    }
    return (uint8_t)r;
}

uint8_t fp_gf256_inv(uint8_t a)
{
    /* a^254 = a^-1 (a^255 = 1 for a != 0); 0^254 = 0. Fixed sequence of squarings. */
    uint8_t r = 1, sq = a;
    for (int i = 1; i < 8; i++) {                 /* 254 = 0b11111110 */
        sq = fp_gf256_mul(sq, sq);                /* a^(2^i) */
        r = fp_gf256_mul(r, sq);
    }
    return r;
}

int fp_shamir_split(const uint8_t secret[FP_SHAMIR_BYTES], unsigned t, unsigned n,
                    uint8_t (*shares_out)[FP_SHAMIR_BYTES])
{
    /* coef[j][b]: coefficient of x^(j+1) for secret byte b. */
    uint8_t coef[FP_SHAMIR_MAX_N - 1][FP_SHAMIR_BYTES];

    if (n >= 1 && n <= FP_SHAMIR_MAX_N)
        memset(shares_out, 0, (size_t)n * FP_SHAMIR_BYTES);
    if (n < 1 || n > FP_SHAMIR_MAX_N || t < 1 || t > n)
        return fp_error_set("shamir: need 1 <= t <= n <= %d, got t=%u n=%u", FP_SHAMIR_MAX_N, t,
                            n);
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    randombytes_buf(coef, (size_t)(t - 1) * FP_SHAMIR_BYTES);
    for (unsigned i = 0; i < n; i++) {
        uint8_t x = (uint8_t)(i + 1);
        for (size_t b = 0; b < FP_SHAMIR_BYTES; b++) {
            uint8_t y = 0;                        /* Horner, highest degree first */
            for (unsigned j = t - 1; j >= 1; j--)
                y = fp_gf256_mul((uint8_t)(y ^ coef[j - 1][b]), x);
            shares_out[i][b] = (uint8_t)(y ^ secret[b]);
        }
    }
    sodium_memzero(coef, sizeof coef);
    return 0;
}

int fp_shamir_combine(const uint8_t (*shares)[FP_SHAMIR_BYTES], const uint8_t *xs, size_t k,
                      unsigned t, uint8_t secret_out[FP_SHAMIR_BYTES])
{
    uint8_t acc[FP_SHAMIR_BYTES] = {0};

    memset(secret_out, 0, FP_SHAMIR_BYTES);
    if (t < 1 || k < t)
        return fp_error_set("shamir: %zu shares given, %u needed", k, t);
    if (k > FP_SHAMIR_MAX_N)
        return fp_error_set("shamir: %zu shares is more than %d", k, FP_SHAMIR_MAX_N);
    for (size_t j = 0; j < k; j++) {
        if (xs[j] == 0)
            return fp_error_set("shamir: share %zu has x = 0", j);
        for (size_t m = 0; m < j; m++)
            if (xs[m] == xs[j])
                return fp_error_set("shamir: shares %zu and %zu have the same x = %u", m, j,
                                    xs[j]);
    }
    for (size_t j = 0; j < k; j++) {
        /* Lagrange basis at 0: l_j = prod_{m != j} x_m / (x_m - x_j); '-' is xor. */
        uint8_t num = 1, den = 1;
        for (size_t m = 0; m < k; m++) {
            if (m == j)
                continue;
            num = fp_gf256_mul(num, xs[m]);
            den = fp_gf256_mul(den, (uint8_t)(xs[m] ^ xs[j]));
        }
        uint8_t l = fp_gf256_mul(num, fp_gf256_inv(den));
        for (size_t b = 0; b < FP_SHAMIR_BYTES; b++)
            acc[b] ^= fp_gf256_mul(l, shares[j][b]);
    }
    memcpy(secret_out, acc, FP_SHAMIR_BYTES);
    sodium_memzero(acc, sizeof acc);
    return 0;
}

/* vss.h - verifiable t-of-n secret sharing for SecAgg+ (Feldman 1987), over the
 * prime order l = 2^252 + 27742317777372353535851937790883648493 of the Ed25519
 * group, with libsodium's constant-time scalar and point arithmetic.
 *
 * Why not shamir.h: GF(2^8) caps n at 255 and a share cannot be checked. Here a
 * share's x is any 1..2^32-1 (so any number of parties), and the dealer publishes
 * commitments C_j = a_j * G to the coefficients of its polynomial
 * f(x) = a_0 + a_1 x + ... + a_{t-1} x^{t-1} (a_0 = the secret), so that
 *   - a receiver checks its share y = f(x) alone:   y * G == sum_j x^j * C_j;
 *   - whoever reconstructs checks each share before using it, names the sender
 *     of a bad one and interpolates from the good ones (any t suffice);
 *   - a reconstructed secret is checked against C_0 = a_0 * G.
 * C_0 reveals a_0 * G: the secret must be a uniformly random scalar (never a
 * low-entropy value), and what the protocol uses (a mask seed, an X25519 key) is
 * derived from it by fp_vss_derive, so C_0 says nothing useful about either.
 *
 * Encoding: scalars and points are 32 bytes, little endian (libsodium's
 * crypto_core_ed25519 forms). Every scalar read from a peer must be canonical
 * (< l) and every point a valid point of the prime-order subgroup; the functions
 * check this and fail closed.
 */
#ifndef FP_VSS_H
#define FP_VSS_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define FP_VSS_BYTES 32        /* one scalar or one point */
#define FP_VSS_MAX_T 65536     /* polynomial degree + 1; bounds a peer's commitment list (2 MiB) */

/* A fresh uniformly random nonzero scalar: the secret to share. */
void fp_vss_random_secret(uint8_t secret_out[FP_VSS_BYTES]);

/* Dealer: shares secret (a canonical scalar) t-of-n at the points xs[0..n-1]
 * (distinct, nonzero). shares_out: n rows, row i = f(xs[i]). commit_out: t points
 * C_0..C_{t-1}, or NULL for plain (unverifiable) Shamir shares, which skips the t
 * point multiplications. 1 <= t <= min(n, FP_VSS_MAX_T). On error (-1, fp_error) both
 * outputs are zeroed. Caller wipes the shares after sending them. */
int fp_vss_deal(const uint8_t secret[FP_VSS_BYTES], unsigned t, const uint32_t *xs, size_t n,
                uint8_t (*shares_out)[FP_VSS_BYTES], uint8_t (*commit_out)[FP_VSS_BYTES]) FP_WUR;

/* 0 when every commitment is a valid prime-order point, else -1 (fp_error names
 * the first bad one). Run once on a peer's commitment list before verify. */
int fp_vss_check_commitments(const uint8_t (*commit)[FP_VSS_BYTES], unsigned t) FP_WUR;

/* 0 when share is f(x) for the polynomial committed to in commit (already
 * checked with fp_vss_check_commitments), -1 otherwise (fp_error says why). */
int fp_vss_verify(const uint8_t (*commit)[FP_VSS_BYTES], unsigned t, uint32_t x,
                  const uint8_t share[FP_VSS_BYTES]) FP_WUR;

/* Lagrange interpolation at 0 of k >= t shares at distinct nonzero xs. Shares are
 * NOT verified here (call fp_vss_verify on each first). secret_out is zeroed first
 * and on error. */
int fp_vss_combine(const uint8_t (*shares)[FP_VSS_BYTES], const uint32_t *xs, size_t k,
                   unsigned t, uint8_t secret_out[FP_VSS_BYTES]) FP_WUR;

/* The Lagrange coefficients at 0 for the points xs (distinct, nonzero): with them
 * every secret shared at the same points is k multiply-adds
 * (fp_vss_combine_lagrange), as when one set of responders answers for many
 * dealers. l_out: k scalars, zeroed on error. */
int fp_vss_lagrange(const uint32_t *xs, size_t k, uint8_t (*l_out)[FP_VSS_BYTES]) FP_WUR;
void fp_vss_combine_lagrange(const uint8_t (*l)[FP_VSS_BYTES], const uint8_t (*shares)[FP_VSS_BYTES],
                             size_t k, uint8_t secret_out[FP_VSS_BYTES]);

/* 0 when secret * G == commit[0] (a reconstructed secret is the committed one). */
int fp_vss_check_secret(const uint8_t (*commit)[FP_VSS_BYTES],
                        const uint8_t secret[FP_VSS_BYTES]) FP_WUR;

/* out = BLAKE2b-256("fedpeft/vss/" || label || secret): the seed or key a shared
 * secret stands for (label e.g. "self-mask" or "mask-key"). */
void fp_vss_derive(uint8_t out[32], const uint8_t secret[FP_VSS_BYTES], const char *label);

#endif

/* shamir.h - t-of-n threshold sharing of 32-byte secrets (Shamir 1979).
 *
 * Each byte of the secret is the constant term of its own random polynomial of
 * degree t-1 over GF(2^8) (the AES field, x^8 + x^4 + x^3 + x + 1); share i holds the
 * 32 polynomial values at x = i+1 (i = 0..n-1, so x is 1..n, never 0). Any t shares
 * give the secret back by Lagrange interpolation at 0; t-1 or fewer shares are
 * independent of it (every secret is equally likely). Coefficients come from
 * randombytes_buf.
 *
 * Field arithmetic is table-free and branch-free (shift-and-add multiplication with
 * masks, inversion as a^254), so timing does not depend on secret bytes or shares.
 * Shares are not authenticated: the protocol layer must bind them (seal.h) to the
 * sender; a corrupted share silently gives a wrong secret.
 *
 * Used by secure aggregation (secagg.h) to share each worker's pairwise-mask secret
 * key and self-mask seed, so the coordinator can cancel the masks of a worker that
 * drops out after masking (Bonawitz et al. 2017).
 */
#ifndef FP_SHAMIR_H
#define FP_SHAMIR_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define FP_SHAMIR_BYTES 32      /* secret and share size */
#define FP_SHAMIR_MAX_N 255     /* x = 1..255 */

/* Splits secret into n shares, any t of which (1 <= t <= n <= 255) recover it.
 * shares_out is caller-allocated, n rows of FP_SHAMIR_BYTES; row i has x = i+1.
 * t = 1 makes every share equal to the secret (no secrecy). On error (-1,
 * fp_error: bad t/n) shares_out is left zeroed. Wipe the shares when done. */
int fp_shamir_split(const uint8_t secret[FP_SHAMIR_BYTES], unsigned t, unsigned n,
                    uint8_t (*shares_out)[FP_SHAMIR_BYTES]) FP_WUR;

/* Recovers the secret from k shares (rows of shares, their x values in xs) of a
 * t-of-n split. Needs k >= t, every x nonzero and distinct (else -1 with
 * fp_error); all k shares are interpolated. secret_out is zeroed first and on
 * error. */
int fp_shamir_combine(const uint8_t (*shares)[FP_SHAMIR_BYTES], const uint8_t *xs, size_t k,
                      unsigned t, uint8_t secret_out[FP_SHAMIR_BYTES]) FP_WUR;

/* GF(2^8) multiply, exposed for tests: constant time. */
uint8_t fp_gf256_mul(uint8_t a, uint8_t b);
/* GF(2^8) inverse (a^254); 0 maps to 0. Constant time. */
uint8_t fp_gf256_inv(uint8_t a);

#endif

/* secagg_recon.h - verified Shamir reconstruction for the coordinator's
 * secure aggregation (docs/privacy.md, "Verified reconstruction").
 *
 * The revealed Shamir shares (over the Ed25519 scalar field, vss.h) carry no
 * authentication: one wrong share among the t interpolated gives a wrong
 * secret (each Lagrange coefficient is nonzero). Each secret has a public check
 * instead (the self-mask seed's commitment from AdvertiseKeys, or the mask
 * public key for a mask secret key). With k shares, sa_recon looks for t of
 * them whose secret passes the check, trying subsets that leave out up to
 * SA_RECON_MAX_BAD of the first t + SA_RECON_MAX_BAD shares (at most
 * C(t+2, 2) interpolations), and then marks every other share as good or bad
 * by swapping it into the good subset: exact, whatever k.
 */
#ifndef COORD_SECAGG_RECON_H
#define COORD_SECAGG_RECON_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define SA_RECON_MAX_BAD 2

/* 0 when secret is the one committed to; ctx is the caller's. */
typedef int (*sa_recon_check)(const uint8_t secret[32], const void *ctx);

/* Reconstructs from k shares (rows, their x in xs) of a t-of-n split a secret
 * that passes check, into out; bad[i] = 1 for each share inconsistent with it
 * (0 for the others). -1 with fp_error when k < t or no subset tried passes
 * (out zeroed): then bad is all 0 and nothing can be blamed. */
int sa_recon(const uint8_t (*rows)[32], const uint32_t *xs, size_t k, unsigned t,
             sa_recon_check check, const void *ctx, uint8_t out[32], uint8_t *bad) FP_WUR;

#endif

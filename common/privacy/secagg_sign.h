/* secagg_sign.h - what secure aggregation signs (Bonawitz et al. 2017, the
 * malicious-server variant): each member's advertised keys and, before
 * unmasking, the survivor set U3 it was shown (the consistency round). The
 * signing key is the identity's Ed25519 key (keys.h); the coordinator relays
 * signatures it cannot forge, so it can neither substitute a member's keys
 * nor show two members two different survivor sets without being caught.
 *
 * Digests are BLAKE2b-256 over a label and length-prefixed fields:
 *   adv  "fedpeft/secagg/adv/v1" || run || u64le round || id || enc_pk ||
 *        mask_pk || self_commit
 *   u3   "fedpeft/secagg/u3/v1" || run || u64le round || u32le n || id_1 .. id_n
 * (strings as u8 length || bytes). Functions return 0 / -1 with fp_error. */
#ifndef FP_SECAGG_SIGN_H
#define FP_SECAGG_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define FP_SASIGN_PK_BYTES 32
#define FP_SASIGN_SIG_BYTES 64

int fp_sasign_adv_digest(uint8_t out[32], const char *run_id, uint64_t round, const char *id,
                         const uint8_t enc_pk[32], const uint8_t mask_pk[32],
                         const uint8_t self_commit[32]) FP_WUR;
/* ids in the order given (the protocol sends U3 sorted). */
int fp_sasign_u3_digest(uint8_t out[32], const char *run_id, uint64_t round,
                        char *const *ids, size_t n) FP_WUR;

/* Detached Ed25519 signature of a digest with a 64-byte libsodium secret key. */
void fp_sasign_sign(uint8_t sig[FP_SASIGN_SIG_BYTES], const uint8_t digest[32],
                    const uint8_t *sign_sk);
/* 0 when sig (sig_len bytes) is pk's (pk_len bytes) signature of digest;
 * lengths other than 64 / 32, a small-order key and a bad signature are -1. */
int fp_sasign_verify(const uint8_t *sig, size_t sig_len, const uint8_t digest[32],
                     const uint8_t *pk, size_t pk_len) FP_WUR;

#endif

/* secagg.h - the arithmetic of secure aggregation (Bonawitz et al. 2017, CCS):
 * fixed-point quantization, pairwise and self masks, and unmasking after dropouts.
 * The message protocol (who sends what when, Shamir shares of the secrets) lives
 * elsewhere and is built on these functions and shamir.h / seal.h.
 *
 * 1. Quantization (fixed point modulo 2^32)
 *    Each float v is clipped to [-clip, clip], scaled by 2^frac_bits and rounded to
 *    an integer q, stored as uint32 two's complement (q mod 2^32). Rounding:
 *      - deterministic (rng == NULL): to nearest, ties away from zero;
 *        per value |q/2^f - v_clipped| <= 2^-(f+1);
 *      - stochastic (rng != NULL): floor(v*2^f + u), u ~ U[0,1); unbiased,
 *        per value error < 2^-f.
 *    The sum of n quantized values, accumulated mod 2^32, is read back as int32 and
 *    divided by 2^f (fp_secagg_dequantize_sum). It is exact in int32 as long as
 *    n * (clip * 2^f + 1) < 2^31, which fp_secagg_params_check enforces. Then
 *      |out - sum_i clip(v_i)| <= n * 2^-(f+1)  (deterministic; n * 2^-f stochastic)
 *                                 + |sum| * 2^-24  (the final float conversion).
 *    Clipping error (values beyond +-clip) is the caller's choice of clip.
 *
 * 2. Masks. A PRG stream from a 32-byte seed is crypto_stream_chacha20 (djb
 *    ChaCha20, 64-bit nonce and block counter) read as little-endian uint32 words;
 *    word i of the stream masks coordinate i of the whole update, so chunks can be
 *    masked separately (the offset argument). The nonce is fixed per purpose and
 *    round: nonce[0] = purpose (FP_SECAGG_PAIR or FP_SECAGG_SELF),
 *    nonce[1..7] = round, little endian (low 56 bits).
 *
 *    Pairwise seed between workers u and v (either side computes the same):
 *      s_uv = BLAKE2b-256("fedpeft/secagg/pair/v1" || X25519(sk_u, pk_v) ||
 *                         u8 len(run_id) || run_id || u64le round ||
 *                         u8 len(a) || a || u8 len(b) || b)
 *    where a < b are the two worker id strings in bytewise (strcmp) order. The run id
 *    is included so that a long-term key pair never repeats masks across runs.
 *    Sign convention: worker u ADDS PRG(s_uv) when id_u < id_v and SUBTRACTS it when
 *    id_u > id_v, so each pair cancels in the sum.
 *
 *    Self mask: each worker draws a fresh 32-byte seed b_u per round
 *    (fp_secagg_self_seed) and adds PRG(b_u); the server subtracts it for every
 *    worker whose input it received, after reconstructing b_u from Shamir shares.
 *
 *    Masked input of u:  y_u = q_u + PRG(b_u) + sum_{v != u} sign(u,v) PRG(s_uv)
 *    Server:  sum_{u in S} y_u - sum_{u in S} PRG(b_u)
 *             - sum_{d dropped} sum_{u in S} sign(u,d) PRG(s_ud)  =  sum_{u in S} q_u
 *    where the dropped workers' s_ud come from their reconstructed secret keys
 *    (fp_secagg_unmask_dropped). All arithmetic is mod 2^32.
 *    The server must never learn both b_u and sk_u of one worker (protocol rule).
 */
#ifndef FP_SECAGG_H
#define FP_SECAGG_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "rng.h"

#define FP_SECAGG_SEED_BYTES 32
#define FP_SECAGG_KEY_BYTES 32
#define FP_SECAGG_MAX_FRAC_BITS 30
#define FP_SECAGG_MAX_ID 255

enum { FP_SECAGG_PAIR = 1, FP_SECAGG_SELF = 2 };   /* PRG purposes (nonce byte 0) */

/* A peer as the masking functions see it: its worker id and X25519 public key. */
typedef struct {
    const char *id;                          /* 1..FP_SECAGG_MAX_ID bytes, NUL-terminated */
    uint8_t pk[FP_SECAGG_KEY_BYTES];
} fp_secagg_peer;

/* 0 when clip (finite, > 0) and frac_bits (<= 30) let a sum of n_parties values be
 * represented exactly (n * (clip * 2^f + 1) < 2^31); else -1 with fp_error saying
 * what to lower. */
int fp_secagg_params_check(float clip, unsigned frac_bits, size_t n_parties) FP_WUR;

/* Quantizes n floats into out (caller-allocated, n words); deterministic when rng is
 * NULL, stochastic with rng (see above). -1 (fp_error) on bad params (single party)
 * or a non-finite input (out is then zeroed). */
int fp_secagg_quantize(uint32_t *out, const float *in, size_t n, float clip,
                       unsigned frac_bits, fp_rng *rng) FP_WUR;

/* 0 when an unmasked sum of n_inputs quantized updates is possible for honest
 * inputs: every coordinate within n * (clip * 2^f + 1) and, when l2_each > 0 (the
 * L2 bound each worker's update was clipped to), ||sum||_2 within n * l2_each plus
 * the quantization error. Else -1 with fp_error naming the first impossible
 * coordinate (its index in *bad_out, when given) or the norm. Masked words cannot
 * be checked one by one, but the sum can: one worker's out-of-range input (any
 * word mod 2^32) either breaks this check or moves each coordinate by at most
 * (2n - 1) * (clip * 2^f + 1) quanta, which is the bound docs/privacy.md states. */
int fp_secagg_check_sum(const uint32_t *sum, size_t n, size_t n_inputs, float clip,
                        unsigned frac_bits, double l2_each, size_t *bad_out) FP_WUR;

/* A quantized SUM (of any number of parties) back to floats: int32 / 2^frac_bits. */
void fp_secagg_dequantize_sum(float *out, const uint32_t *sum, size_t n, unsigned frac_bits);

/* acc[i] += y[i] mod 2^32 (the server's accumulator). */
void fp_secagg_sum_add(uint32_t *acc, const uint32_t *y, size_t n);

/* y[i] += sign * PRG(seed, purpose, round)[offset + i] mod 2^32, i = 0..n-1;
 * sign is +1 or -1 (anything else: -1 with fp_error, y unchanged). offset is the
 * index of y[0] in the whole update, so a chunk can be masked on its own. */
int fp_secagg_mask_add(uint32_t *y, size_t n, uint64_t offset,
                       const uint8_t seed[FP_SECAGG_SEED_BYTES], unsigned purpose,
                       uint64_t round, int sign) FP_WUR;

/* The pairwise seed s_uv (see above) from my secret key, the peer's public key and
 * both ids. seed_out is zeroed first and on error (-1: bad/equal ids, low-order key).
 * Caller wipes the seed. */
int fp_secagg_pair_seed(uint8_t seed_out[FP_SECAGG_SEED_BYTES],
                        const uint8_t my_sk[FP_SECAGG_KEY_BYTES],
                        const uint8_t peer_pk[FP_SECAGG_KEY_BYTES], const char *my_id,
                        const char *peer_id, const char *run_id, uint64_t round) FP_WUR;

/* +1 when my_id < peer_id (bytewise), -1 when greater, 0 when equal. */
int fp_secagg_pair_sign(const char *my_id, const char *peer_id);

/* The commitment to a self-mask seed, published in AdvertiseKeys before any
 * share exists, so that the coordinator can tell a correctly reconstructed
 * b_u from one a bad Shamir share corrupted:
 *   BLAKE2b-256("fedpeft/secagg/self-commit/v1" || u8 len(run_id) || run_id ||
 *               u64le round || u8 len(id) || id || b_u)
 * b_u is 256 random bits, so the hash hides it. -1 on a bad id or run id. */
int fp_secagg_self_commit(uint8_t out[32], const uint8_t self_seed[FP_SECAGG_SEED_BYTES],
                          const char *id, const char *run_id, uint64_t round) FP_WUR;

/* 0 when pk is a usable X25519 public key: crypto_scalarmult with it does not
 * give the all-zero point (the all-zero key and the other low-order points
 * would make every pairwise seed with it public). -1 with fp_error. */
int fp_secagg_pk_check(const uint8_t pk[FP_SECAGG_KEY_BYTES]) FP_WUR;

/* A fresh random self-mask seed b_u (randombytes_buf). */
void fp_secagg_self_seed(uint8_t seed_out[FP_SECAGG_SEED_BYTES]);

/* Worker: masks the quantized chunk y (n words at offset) in place with its self
 * mask (self_seed) and its pairwise masks with every peer (entries with my own id are
 * skipped). -1 (fp_error) on any bad key/id; y is then in an unspecified state and
 * must not be sent. */
int fp_secagg_mask(uint32_t *y, size_t n, uint64_t offset, const char *my_id,
                   const uint8_t my_sk[FP_SECAGG_KEY_BYTES],
                   const uint8_t self_seed[FP_SECAGG_SEED_BYTES], const fp_secagg_peer *peers,
                   size_t n_peers, const char *run_id, uint64_t round) FP_WUR;

/* Server: removes from the sum of the survivors' inputs the pairwise masks they
 * shared with the dropped worker (id dropped_id, secret key reconstructed from
 * Shamir shares). survivors: the workers whose inputs are in sum. */
int fp_secagg_unmask_dropped(uint32_t *sum, size_t n, uint64_t offset, const char *dropped_id,
                             const uint8_t dropped_sk[FP_SECAGG_KEY_BYTES],
                             const fp_secagg_peer *survivors, size_t n_survivors,
                             const char *run_id, uint64_t round) FP_WUR;

/* Server: removes a survivor's self mask (its reconstructed b_u) from the sum. */
int fp_secagg_unmask_self(uint32_t *sum, size_t n, uint64_t offset,
                          const uint8_t self_seed[FP_SECAGG_SEED_BYTES], uint64_t round) FP_WUR;

#endif

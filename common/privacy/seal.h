/* seal.h - end-to-end authenticated encryption of update chunks "for the aggregate".
 *
 * A worker seals each chunk of its (masked) update so that only the coordinator's
 * aggregation code can open it, and so that a chunk cannot be replayed into another
 * run, round, worker, task or position (a "splice").
 *
 * Keys
 *   key = BLAKE2b-256( "fedpeft/seal/key/v1" || X25519(sk_self, pk_peer) ||
 *                      pk_worker || pk_coordinator || u8 len(run_id) || run_id ||
 *                      u64le round )
 *   (crypto_scalarmult + crypto_generichash; an all-zero X25519 result, i.e. a
 *   low-order peer key, is rejected). Both sides order the public keys by role, so
 *   they derive the same key. The worker's key pair SHOULD be ephemeral: a fresh
 *   crypto_box_keypair per round (fp_seal_ephemeral), its public key sent inside the
 *   CURVE-authenticated session, so that a later theft of the worker's long-term
 *   key reveals no past update (forward secrecy on the worker side; the coordinator's
 *   long-term key still opens what it was sent). A long-term worker key also works:
 *   run and round in the derivation still give one key per round.
 *
 * Sealed chunk (byte layout)
 *   nonce[24] || ciphertext[len] || tag[16]          (FP_SEAL_OVERHEAD = 40 bytes)
 *   XChaCha20-Poly1305-IETF (crypto_aead_xchacha20poly1305_ietf), nonce from
 *   randombytes_buf (192-bit random nonces: no counter to keep).
 *
 * Associated data (fixed encoding, fp_seal_ad_encode; all integers little endian)
 *   "fedpeft/seal/v1\0"       16 bytes
 *   u8  len(run_id)   run_id    1..FP_SEAL_MAX_ID bytes
 *   u8  len(worker_id) worker_id 1..FP_SEAL_MAX_ID bytes
 *   u64 round
 *   u64 task_id       per-task nonce chosen by the coordinator (proto Task.task_id)
 *   u32 chunk_index   0 .. n_chunks-1
 *   u32 n_chunks      total chunks of this update (binds the length: dropping the
 *                     tail is detected by fp_seal_replay_complete)
 *   Opening with any field different fails authentication.
 *
 * Replay: the AD makes a chunk valid only at one (run, round, worker, task, index);
 * within that, the same chunk presented twice still opens, so the receiver keeps an
 * fp_seal_replay guard per (worker, task) and marks each index after a successful
 * open: a second presentation is rejected.
 */
#ifndef FP_SEAL_H
#define FP_SEAL_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define FP_SEAL_KEY_BYTES 32
#define FP_SEAL_PK_BYTES 32
#define FP_SEAL_SK_BYTES 32
#define FP_SEAL_NONCE_BYTES 24
#define FP_SEAL_TAG_BYTES 16
#define FP_SEAL_OVERHEAD (FP_SEAL_NONCE_BYTES + FP_SEAL_TAG_BYTES)
#define FP_SEAL_MAX_ID 255                  /* bytes of run_id / worker_id */
#define FP_SEAL_AD_MAX (16 + 2 + 2 * FP_SEAL_MAX_ID + 24)
#define FP_SEAL_MAX_CHUNKS (1u << 24)       /* bound for fp_seal_replay_new */

/* What a chunk is bound to. Strings are NUL-terminated, 1..FP_SEAL_MAX_ID bytes. */
typedef struct {
    const char *run_id;
    const char *worker_id;
    uint64_t round;
    uint64_t task_id;
    uint32_t chunk_index;
    uint32_t n_chunks;
} fp_seal_ad;

/* Encodes ad into out (FP_SEAL_AD_MAX bytes) as documented above; sets *out_len.
 * -1 (fp_error) on a missing/too long id or chunk_index >= n_chunks. */
int fp_seal_ad_encode(const fp_seal_ad *ad, uint8_t out[FP_SEAL_AD_MAX], size_t *out_len) FP_WUR;

/* A fresh X25519 key pair for one round (crypto_box_keypair). The caller keeps sk in
 * sodium_malloc memory or wipes it (sodium_memzero) once the key is derived. */
void fp_seal_ephemeral(uint8_t pk[FP_SEAL_PK_BYTES], uint8_t sk[FP_SEAL_SK_BYTES]);

/* Worker side: the chunk key for (run_id, round) from its secret key (ephemeral
 * or long-term), its own public key and the coordinator's public key.
 * key is zeroed first and on error; -1 on a bad run_id or a low-order peer key.
 * The caller wipes key when done. */
int fp_seal_key_worker(uint8_t key[FP_SEAL_KEY_BYTES], const uint8_t worker_sk[FP_SEAL_SK_BYTES],
                       const uint8_t worker_pk[FP_SEAL_PK_BYTES],
                       const uint8_t coord_pk[FP_SEAL_PK_BYTES], const char *run_id,
                       uint64_t round) FP_WUR;

/* Coordinator side: the same key from its secret key and the worker's public key. */
int fp_seal_key_coordinator(uint8_t key[FP_SEAL_KEY_BYTES],
                            const uint8_t coord_sk[FP_SEAL_SK_BYTES],
                            const uint8_t coord_pk[FP_SEAL_PK_BYTES],
                            const uint8_t worker_pk[FP_SEAL_PK_BYTES], const char *run_id,
                            uint64_t round) FP_WUR;

/* Seals len bytes of in into out (len + FP_SEAL_OVERHEAD bytes, caller-allocated;
 * in and out must not overlap). -1 (fp_error) on a bad ad. */
int fp_seal(uint8_t *out, const uint8_t *in, size_t len, const fp_seal_ad *ad,
            const uint8_t key[FP_SEAL_KEY_BYTES]) FP_WUR;

/* Opens a sealed chunk of in_len bytes into out (in_len - FP_SEAL_OVERHEAD bytes,
 * caller-allocated). *out_len is 0 and out is zeroed unless it succeeds.
 * -1 (fp_error) when in is shorter than FP_SEAL_OVERHEAD, or when authentication
 * fails: wrong key, wrong ad (splice), truncated or modified bytes. */
int fp_open(uint8_t *out, size_t *out_len, const uint8_t *in, size_t in_len,
            const fp_seal_ad *ad, const uint8_t key[FP_SEAL_KEY_BYTES]) FP_WUR;

/* Replay guard for the chunks of one update: a bitmap of indices seen. */
typedef struct fp_seal_replay fp_seal_replay;

/* A guard for task_id with n_chunks (1..FP_SEAL_MAX_CHUNKS). Caller destroys.
 * NULL (fp_error) on a bad count or no memory. */
fp_seal_replay *fp_seal_replay_new(uint64_t task_id, uint32_t n_chunks) FP_WUR;
/* Frees; NULL-safe; sets *g_p = NULL. */
void fp_seal_replay_destroy(fp_seal_replay **g_p);
/* Call after fp_open succeeded with ad: 0 and marks ad->chunk_index seen; -1
 * (fp_error) when that index was seen before (replay), or ad's task_id / n_chunks
 * differ from the guard's, or the index is out of range. */
int fp_seal_replay_check(fp_seal_replay *g, const fp_seal_ad *ad) FP_WUR;
/* 1 when every index 0..n_chunks-1 has been seen, else 0. */
int fp_seal_replay_complete(const fp_seal_replay *g);
/* Number of distinct indices seen so far. */
uint32_t fp_seal_replay_count(const fp_seal_replay *g);

#endif

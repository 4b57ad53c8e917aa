/* seal.c - XChaCha20-Poly1305 sealing of update chunks; formats in seal.h. */
#include "seal.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

static const char ad_magic[16] = "fedpeft/seal/v1";       /* 15 chars + NUL */
static const char key_label[] = "fedpeft/seal/key/v1";

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static int id_len(const char *id, const char *what, size_t *len)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > FP_SEAL_MAX_ID)
        return fp_error_set("seal: %s must be 1..%d bytes", what, FP_SEAL_MAX_ID);
    *len = n;
    return 0;
}

int fp_seal_ad_encode(const fp_seal_ad *ad, uint8_t out[FP_SEAL_AD_MAX], size_t *out_len)
{
    size_t rl = 0, wl = 0, o = 0;
    *out_len = 0;
    if (!ad || id_len(ad->run_id, "run id", &rl) < 0 || id_len(ad->worker_id, "worker id", &wl) < 0)
        return -1;
    if (ad->chunk_index >= ad->n_chunks)
        return fp_error_set("seal: chunk index %u out of range (%u chunks)", ad->chunk_index,
                            ad->n_chunks);
    memcpy(out, ad_magic, sizeof ad_magic), o += sizeof ad_magic;
    out[o++] = (uint8_t)rl;
    memcpy(out + o, ad->run_id, rl), o += rl;
    out[o++] = (uint8_t)wl;
    memcpy(out + o, ad->worker_id, wl), o += wl;
    put_u64(out + o, ad->round), o += 8;
    put_u64(out + o, ad->task_id), o += 8;
    put_u32(out + o, ad->chunk_index), o += 4;
    put_u32(out + o, ad->n_chunks), o += 4;
    *out_len = o;
    return 0;
}

void fp_seal_ephemeral(uint8_t pk[FP_SEAL_PK_BYTES], uint8_t sk[FP_SEAL_SK_BYTES])
{
    if (sodium_init() < 0) {
        /* libsodium cannot start: leave an unusable (all-zero) pair; the
         * key derivation rejects the all-zero shared secret it yields. */
        memset(pk, 0, FP_SEAL_PK_BYTES);
        memset(sk, 0, FP_SEAL_SK_BYTES);
        return;
    }
    crypto_box_keypair(pk, sk);
}

static int derive(uint8_t key[FP_SEAL_KEY_BYTES], const uint8_t sk[32], const uint8_t peer_pk[32],
                  const uint8_t worker_pk[32], const uint8_t coord_pk[32], const char *run_id,
                  uint64_t round)
{
    uint8_t shared[crypto_scalarmult_BYTES], tmp[8], rlen;
    crypto_generichash_state st;
    size_t rl = 0;
    int rc = -1;

    memset(key, 0, FP_SEAL_KEY_BYTES);
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    if (id_len(run_id, "run id", &rl) < 0)
        return -1;
    if (crypto_scalarmult(shared, sk, peer_pk) != 0) {
        fp_error_set("seal: peer public key is invalid (low order)");
        goto err;
    }
    rlen = (uint8_t)rl;
    put_u64(tmp, round);
    crypto_generichash_init(&st, NULL, 0, FP_SEAL_KEY_BYTES);
    crypto_generichash_update(&st, (const uint8_t *)key_label, sizeof key_label - 1);
    crypto_generichash_update(&st, shared, sizeof shared);
    crypto_generichash_update(&st, worker_pk, 32);
    crypto_generichash_update(&st, coord_pk, 32);
    crypto_generichash_update(&st, &rlen, 1);
    crypto_generichash_update(&st, (const uint8_t *)run_id, rl);
    crypto_generichash_update(&st, tmp, sizeof tmp);
    crypto_generichash_final(&st, key, FP_SEAL_KEY_BYTES);
    rc = 0;
err:
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(&st, sizeof st);
    return rc;
}

int fp_seal_key_worker(uint8_t key[FP_SEAL_KEY_BYTES], const uint8_t worker_sk[FP_SEAL_SK_BYTES],
                       const uint8_t worker_pk[FP_SEAL_PK_BYTES],
                       const uint8_t coord_pk[FP_SEAL_PK_BYTES], const char *run_id,
                       uint64_t round)
{
    return derive(key, worker_sk, coord_pk, worker_pk, coord_pk, run_id, round);
}

int fp_seal_key_coordinator(uint8_t key[FP_SEAL_KEY_BYTES],
                            const uint8_t coord_sk[FP_SEAL_SK_BYTES],
                            const uint8_t coord_pk[FP_SEAL_PK_BYTES],
                            const uint8_t worker_pk[FP_SEAL_PK_BYTES], const char *run_id,
                            uint64_t round)
{
    return derive(key, coord_sk, worker_pk, worker_pk, coord_pk, run_id, round);
}

int fp_seal(uint8_t *out, const uint8_t *in, size_t len, const fp_seal_ad *ad,
            const uint8_t key[FP_SEAL_KEY_BYTES])
{
    uint8_t adb[FP_SEAL_AD_MAX];
    size_t adl;
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    if (len > crypto_aead_xchacha20poly1305_ietf_MESSAGEBYTES_MAX)
        return fp_error_set("seal: chunk of %zu bytes is too big", len);
    if (fp_seal_ad_encode(ad, adb, &adl) < 0)
        return -1;
    randombytes_buf(out, FP_SEAL_NONCE_BYTES);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + FP_SEAL_NONCE_BYTES, &clen, in, len, adb,
                                               adl, NULL, out, key);
    return 0;
}

int fp_open(uint8_t *out, size_t *out_len, const uint8_t *in, size_t in_len,
            const fp_seal_ad *ad, const uint8_t key[FP_SEAL_KEY_BYTES])
{
    uint8_t adb[FP_SEAL_AD_MAX];
    size_t adl;
    unsigned long long mlen = 0;

    *out_len = 0;
    if (in_len < FP_SEAL_OVERHEAD)
        return fp_error_set("seal: %zu bytes is shorter than a sealed chunk (%d)", in_len,
                            FP_SEAL_OVERHEAD);
    if (in_len > FP_SEAL_OVERHEAD)
        memset(out, 0, in_len - FP_SEAL_OVERHEAD);
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    if (fp_seal_ad_encode(ad, adb, &adl) < 0)
        return -1;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &mlen, NULL, in + FP_SEAL_NONCE_BYTES,
                                                   in_len - FP_SEAL_NONCE_BYTES, adb, adl, in,
                                                   key) != 0) {
        if (in_len > FP_SEAL_OVERHEAD)
            sodium_memzero(out, in_len - FP_SEAL_OVERHEAD);
        return fp_error_set("seal: chunk %u of task %llu from '%s' failed authentication "
                            "(wrong key, wrong run/round/worker/chunk, or damaged)",
                            ad->chunk_index, (unsigned long long)ad->task_id, ad->worker_id);
    }
    *out_len = (size_t)mlen;
    return 0;
}

struct fp_seal_replay {
    uint64_t task_id;
    uint32_t n_chunks;
    uint32_t seen;
    uint8_t *bits;
};

fp_seal_replay *fp_seal_replay_new(uint64_t task_id, uint32_t n_chunks)
{
    if (n_chunks == 0 || n_chunks > FP_SEAL_MAX_CHUNKS) {
        fp_error_set("seal: %u chunks is out of range (1..%u)", n_chunks, FP_SEAL_MAX_CHUNKS);
        return NULL;
    }
    fp_seal_replay *g = calloc(1, sizeof *g);
    if (!g || !(g->bits = calloc((n_chunks + 7) / 8, 1))) {
        free(g);
        fp_error_set("out of memory for a replay guard");
        return NULL;
    }
    g->task_id = task_id;
    g->n_chunks = n_chunks;
    return g;
}

void fp_seal_replay_destroy(fp_seal_replay **g_p)
{
    if (!g_p || !*g_p)
        return;
    free((*g_p)->bits);
    free(*g_p);
    *g_p = NULL;
}

int fp_seal_replay_check(fp_seal_replay *g, const fp_seal_ad *ad)
{
    if (!g || !ad)
        return fp_error_set("seal: no replay guard");
    if (ad->task_id != g->task_id || ad->n_chunks != g->n_chunks)
        return fp_error_set("seal: chunk belongs to task %llu/%u chunks, expected %llu/%u",
                            (unsigned long long)ad->task_id, ad->n_chunks,
                            (unsigned long long)g->task_id, g->n_chunks);
    if (ad->chunk_index >= g->n_chunks)
        return fp_error_set("seal: chunk index %u out of range", ad->chunk_index);
    uint8_t bit = (uint8_t)(1u << (ad->chunk_index & 7));
    if (g->bits[ad->chunk_index >> 3] & bit)
        return fp_error_set("seal: chunk %u of task %llu presented twice (replay)",
                            ad->chunk_index, (unsigned long long)g->task_id);
    g->bits[ad->chunk_index >> 3] |= bit;
    g->seen++;
    return 0;
}

int fp_seal_replay_complete(const fp_seal_replay *g)
{
    return g && g->seen == g->n_chunks;
}

uint32_t fp_seal_replay_count(const fp_seal_replay *g)
{
    return g ? g->seen : 0;
}

/* secagg_sign.c - digests and Ed25519 signatures of secure aggregation
 * (secagg_sign.h). */
#include "secagg_sign.h"

#include <sodium.h>
#include <string.h>

static int put_str(crypto_generichash_state *st, const char *s, const char *what)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 255)
        return fp_error_set("%s of %zu bytes: expected 1..255", what, n);
    uint8_t len = (uint8_t)n;
    crypto_generichash_update(st, &len, 1);
    crypto_generichash_update(st, (const uint8_t *)s, n);
    return 0;
}

static void put_u64(crypto_generichash_state *st, uint64_t v, int bytes)
{
    uint8_t b[8];
    for (int i = 0; i < bytes; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    crypto_generichash_update(st, b, (size_t)bytes);
}

static int begin(crypto_generichash_state *st, const char *label, const char *run_id,
                 uint64_t round)
{
    crypto_generichash_init(st, NULL, 0, 32);
    crypto_generichash_update(st, (const uint8_t *)label, strlen(label));
    if (put_str(st, run_id, "run id") < 0)
        return -1;
    put_u64(st, round, 8);
    return 0;
}

int fp_sasign_adv_digest(uint8_t out[32], const char *run_id, uint64_t round, const char *id,
                         const uint8_t enc_pk[32], const uint8_t mask_pk[32],
                         const uint8_t self_commit[32])
{
    crypto_generichash_state st;
    memset(out, 0, 32);
    if (begin(&st, "fedpeft/secagg/adv/v1", run_id, round) < 0 ||
        put_str(&st, id, "worker id") < 0)
        return -1;
    crypto_generichash_update(&st, enc_pk, 32);
    crypto_generichash_update(&st, mask_pk, 32);
    crypto_generichash_update(&st, self_commit, 32);
    crypto_generichash_final(&st, out, 32);
    return 0;
}

int fp_sasign_u3_digest(uint8_t out[32], const char *run_id, uint64_t round,
                        char *const *ids, size_t n)
{
    crypto_generichash_state st;
    memset(out, 0, 32);
    if (n > UINT32_MAX)
        return fp_error_set("survivor set of %zu members", n);
    if (begin(&st, "fedpeft/secagg/u3/v1", run_id, round) < 0)
        return -1;
    put_u64(&st, n, 4);
    for (size_t i = 0; i < n; i++)
        if (put_str(&st, ids[i], "worker id") < 0)
            return -1;
    crypto_generichash_final(&st, out, 32);
    return 0;
}

void fp_sasign_sign(uint8_t sig[FP_SASIGN_SIG_BYTES], const uint8_t digest[32],
                    const uint8_t *sign_sk)
{
    crypto_sign_detached(sig, NULL, digest, 32, sign_sk);
}

int fp_sasign_verify(const uint8_t *sig, size_t sig_len, const uint8_t digest[32],
                     const uint8_t *pk, size_t pk_len)
{
    if (!sig || sig_len != FP_SASIGN_SIG_BYTES || !pk || pk_len != FP_SASIGN_PK_BYTES)
        return fp_error_set("no signature or signing key (%zu / %zu bytes)", sig_len, pk_len);
    if (crypto_sign_verify_detached(sig, digest, 32, pk) != 0)
        return fp_error_set("the signature does not verify");
    return 0;
}

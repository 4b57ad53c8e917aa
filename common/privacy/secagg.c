/* secagg.c - secure aggregation arithmetic; formats and conventions in secagg.h. */
#include "secagg.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

static const char pair_label[] = "fedpeft/secagg/pair/v1";

int fp_secagg_params_check(float clip, unsigned frac_bits, size_t n_parties)
{
    if (!(clip > 0.0f) || !isfinite(clip))
        return fp_error_set("secagg: clip must be a finite value > 0, got %g", (double)clip);
    if (frac_bits > FP_SECAGG_MAX_FRAC_BITS)
        return fp_error_set("secagg: frac_bits %u is more than %d", frac_bits,
                            FP_SECAGG_MAX_FRAC_BITS);
    if (n_parties == 0)
        return fp_error_set("secagg: no parties");
    double worst = (double)n_parties * (ldexp((double)clip, (int)frac_bits) + 1.0);
    if (worst >= 2147483648.0)
        return fp_error_set("secagg: %zu parties x clip %g x 2^%u overflows int32; lower "
                            "frac_bits or clip", n_parties, (double)clip, frac_bits);
    return 0;
}

int fp_secagg_quantize(uint32_t *out, const float *in, size_t n, float clip,
                       unsigned frac_bits, fp_rng *rng)
{
    if (fp_secagg_params_check(clip, frac_bits, 1) < 0)
        return -1;
    double scale = ldexp(1.0, (int)frac_bits);
    for (size_t i = 0; i < n; i++) {
        float v = in[i];
        if (!isfinite(v)) {
            memset(out, 0, n * sizeof *out);
            return fp_error_set("secagg: update value %zu is not finite", i);
        }
        v = v > clip ? clip : v < -clip ? -clip : v;
        double s = (double)v * scale, r;
        if (rng) {
            double u = (double)(fp_rng_next(rng) >> 11) * 0x1.0p-53;
            r = floor(s + u);
        } else {
            r = round(s);
        }
        out[i] = (uint32_t)(int64_t)r;            /* mod 2^32: two's complement */
    }
    return 0;
}

int fp_secagg_check_sum(const uint32_t *sum, size_t n, size_t n_inputs, float clip,
                        unsigned frac_bits, double l2_each, size_t *bad_out)
{
    if (bad_out)
        *bad_out = SIZE_MAX;
    if (fp_secagg_params_check(clip, frac_bits, n_inputs ? n_inputs : 1) < 0)
        return -1;
    double per = ldexp((double)clip, (int)frac_bits) + 1.0, bound = (double)n_inputs * per;
    double inv = ldexp(1.0, -(int)frac_bits), sq = 0.0;
    for (size_t i = 0; i < n; i++) {
        int64_t v = sum[i] >= 0x80000000u ? (int64_t)sum[i] - 0x100000000LL : (int64_t)sum[i];
        if ((double)llabs(v) > bound) {
            if (bad_out)
                *bad_out = i;
            return fp_error_set("secagg: coordinate %zu of the sum of %zu inputs is %g, beyond "
                                "what %zu inputs clipped to %g can reach (%g): an input was out "
                                "of range", i, n_inputs, (double)v * inv, n_inputs, (double)clip,
                                bound * inv);
        }
        double f = (double)v * inv;
        sq += f * f;
    }
    if (l2_each > 0.0) {
        double l2 = sqrt(sq), lim = (double)n_inputs * (l2_each + sqrt((double)n) * inv);
        if (l2 > lim)
            return fp_error_set("secagg: the sum of %zu inputs has L2 norm %g, beyond %zu x the "
                                "per-update bound %g (%g): an input was not clipped", n_inputs,
                                l2, n_inputs, l2_each, lim);
    }
    return 0;
}

void fp_secagg_dequantize_sum(float *out, const uint32_t *sum, size_t n, unsigned frac_bits)
{
    double inv = ldexp(1.0, -(int)frac_bits);
    for (size_t i = 0; i < n; i++) {
        int64_t v = sum[i] >= 0x80000000u ? (int64_t)sum[i] - 0x100000000LL : (int64_t)sum[i];
        out[i] = (float)((double)v * inv);
    }
}

void fp_secagg_sum_add(uint32_t *acc, const uint32_t *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        acc[i] += y[i];
}

int fp_secagg_mask_add(uint32_t *y, size_t n, uint64_t offset,
                       const uint8_t seed[FP_SECAGG_SEED_BYTES], unsigned purpose,
                       uint64_t round, int sign)
{
    enum { WORDS = 1024, BLOCK_WORDS = 16 };      /* ChaCha20 block = 64 bytes */
    uint8_t nonce[crypto_stream_chacha20_NONCEBYTES], buf[WORDS * 4];

    if (sign != 1 && sign != -1)
        return fp_error_set("secagg: mask sign must be +1 or -1, got %d", sign);
    if (purpose > 255)
        return fp_error_set("secagg: bad PRG purpose %u", purpose);
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    nonce[0] = (uint8_t)purpose;
    for (int i = 1; i < 8; i++)
        nonce[i] = (uint8_t)(round >> (8 * (i - 1)));
    uint64_t block = offset / BLOCK_WORDS;
    size_t skip = (size_t)(offset % BLOCK_WORDS), done = 0;
    while (done < n) {
        size_t want = skip + (n - done);
        if (want > WORDS)
            want = WORDS;
        size_t blocks = (want + BLOCK_WORDS - 1) / BLOCK_WORDS;
        memset(buf, 0, blocks * 64);
        crypto_stream_chacha20_xor_ic(buf, buf, blocks * 64, nonce, block, seed);
        for (size_t w = skip; w < want; w++, done++) {
            const uint8_t *p = buf + 4 * w;
            uint32_t m = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                         (uint32_t)p[3] << 24;
            y[done] = sign > 0 ? y[done] + m : y[done] - m;
        }
        block += blocks;
        skip = 0;
    }
    sodium_memzero(buf, sizeof buf);
    return 0;
}

int fp_secagg_pair_sign(const char *my_id, const char *peer_id)
{
    int c = strcmp(my_id, peer_id);
    return c < 0 ? 1 : c > 0 ? -1 : 0;
}

static int check_id(const char *id, const char *what)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > FP_SECAGG_MAX_ID)
        return fp_error_set("secagg: %s must be 1..%d bytes", what, FP_SECAGG_MAX_ID);
    return 0;
}

static void hash_str(crypto_generichash_state *st, const char *s)
{
    uint8_t len = (uint8_t)strlen(s);
    crypto_generichash_update(st, &len, 1);
    crypto_generichash_update(st, (const uint8_t *)s, len);
}

int fp_secagg_pair_seed(uint8_t seed_out[FP_SECAGG_SEED_BYTES],
                        const uint8_t my_sk[FP_SECAGG_KEY_BYTES],
                        const uint8_t peer_pk[FP_SECAGG_KEY_BYTES], const char *my_id,
                        const char *peer_id, const char *run_id, uint64_t round)
{
    uint8_t shared[crypto_scalarmult_BYTES], r8[8];
    crypto_generichash_state st;
    int rc = -1;

    memset(seed_out, 0, FP_SECAGG_SEED_BYTES);
    if (check_id(my_id, "worker id") < 0 || check_id(peer_id, "peer id") < 0 ||
        check_id(run_id, "run id") < 0)
        return -1;
    int sign = fp_secagg_pair_sign(my_id, peer_id);
    if (sign == 0)
        return fp_error_set("secagg: peer has my own id '%s'", my_id);
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    if (crypto_scalarmult(shared, my_sk, peer_pk) != 0) {
        fp_error_set("secagg: public key of '%s' is invalid (low order)", peer_id);
        goto err;
    }
    for (int i = 0; i < 8; i++)
        r8[i] = (uint8_t)(round >> (8 * i));
    crypto_generichash_init(&st, NULL, 0, FP_SECAGG_SEED_BYTES);
    crypto_generichash_update(&st, (const uint8_t *)pair_label, sizeof pair_label - 1);
    crypto_generichash_update(&st, shared, sizeof shared);
    hash_str(&st, run_id);
    crypto_generichash_update(&st, r8, sizeof r8);
    hash_str(&st, sign > 0 ? my_id : peer_id);
    hash_str(&st, sign > 0 ? peer_id : my_id);
    crypto_generichash_final(&st, seed_out, FP_SECAGG_SEED_BYTES);
    rc = 0;
err:
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(&st, sizeof st);
    return rc;
}

static const char commit_label[] = "fedpeft/secagg/self-commit/v1";

int fp_secagg_self_commit(uint8_t out[32], const uint8_t self_seed[FP_SECAGG_SEED_BYTES],
                          const char *id, const char *run_id, uint64_t round)
{
    uint8_t r8[8];
    crypto_generichash_state st;
    memset(out, 0, 32);
    if (check_id(id, "worker id") < 0 || check_id(run_id, "run id") < 0)
        return -1;
    for (int i = 0; i < 8; i++)
        r8[i] = (uint8_t)(round >> (8 * i));
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)commit_label, sizeof commit_label - 1);
    hash_str(&st, run_id);
    crypto_generichash_update(&st, r8, sizeof r8);
    hash_str(&st, id);
    crypto_generichash_update(&st, self_seed, FP_SECAGG_SEED_BYTES);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
    return 0;
}

int fp_secagg_pk_check(const uint8_t pk[FP_SECAGG_KEY_BYTES])
{
    /* Any fixed nonzero scalar works: libsodium returns -1 exactly when the
     * result is the all-zero point, i.e. pk is of low order. */
    static const uint8_t probe[crypto_scalarmult_SCALARBYTES] = {9, 1, 2, 3, 4, 5, 6, 7};
    uint8_t q[crypto_scalarmult_BYTES];
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    int rc = crypto_scalarmult(q, probe, pk);
    sodium_memzero(q, sizeof q);
    if (rc != 0)
        return fp_error_set("an all-zero or low-order X25519 public key");
    return 0;
}

void fp_secagg_self_seed(uint8_t seed_out[FP_SECAGG_SEED_BYTES])
{
    if (sodium_init() < 0) {
        /* randombytes_buf still draws from the OS generator without it. */
    }
    randombytes_buf(seed_out, FP_SECAGG_SEED_BYTES);
}

/* Adds sign(me, other) * PRG(s(me_sk, other_pk)) to y; sign_mul flips it (-1 undoes). */
static int pair_mask(uint32_t *y, size_t n, uint64_t offset, const char *me,
                     const uint8_t me_sk[FP_SECAGG_KEY_BYTES], const char *other,
                     const uint8_t other_pk[FP_SECAGG_KEY_BYTES], int sign_of_whose,
                     const char *run_id, uint64_t round)
{
    uint8_t seed[FP_SECAGG_SEED_BYTES];
    int rc = fp_secagg_pair_seed(seed, me_sk, other_pk, me, other, run_id, round);
    if (rc == 0)
        rc = fp_secagg_mask_add(y, n, offset, seed, FP_SECAGG_PAIR, round, sign_of_whose);
    sodium_memzero(seed, sizeof seed);
    return rc;
}

int fp_secagg_mask(uint32_t *y, size_t n, uint64_t offset, const char *my_id,
                   const uint8_t my_sk[FP_SECAGG_KEY_BYTES],
                   const uint8_t self_seed[FP_SECAGG_SEED_BYTES], const fp_secagg_peer *peers,
                   size_t n_peers, const char *run_id, uint64_t round)
{
    if (check_id(my_id, "worker id") < 0)
        return -1;
    if (fp_secagg_mask_add(y, n, offset, self_seed, FP_SECAGG_SELF, round, 1) < 0)
        return -1;
    for (size_t i = 0; i < n_peers; i++) {
        if (check_id(peers[i].id, "peer id") < 0)
            return -1;
        if (!strcmp(peers[i].id, my_id))
            continue;
        int sign = fp_secagg_pair_sign(my_id, peers[i].id);
        if (pair_mask(y, n, offset, my_id, my_sk, peers[i].id, peers[i].pk, sign, run_id,
                      round) < 0)
            return -1;
    }
    return 0;
}

int fp_secagg_unmask_dropped(uint32_t *sum, size_t n, uint64_t offset, const char *dropped_id,
                             const uint8_t dropped_sk[FP_SECAGG_KEY_BYTES],
                             const fp_secagg_peer *survivors, size_t n_survivors,
                             const char *run_id, uint64_t round)
{
    for (size_t i = 0; i < n_survivors; i++) {
        if (check_id(survivors[i].id, "survivor id") < 0 || check_id(dropped_id, "dropped id") < 0)
            return -1;
        /* Survivor u added sign(u, d) * PRG(s_ud): subtract exactly that. */
        int sign_u = fp_secagg_pair_sign(survivors[i].id, dropped_id);
        if (sign_u == 0)
            return fp_error_set("secagg: '%s' is both dropped and a survivor", dropped_id);
        if (pair_mask(sum, n, offset, dropped_id, dropped_sk, survivors[i].id, survivors[i].pk,
                      -sign_u, run_id, round) < 0)
            return -1;
    }
    return 0;
}

int fp_secagg_unmask_self(uint32_t *sum, size_t n, uint64_t offset,
                          const uint8_t self_seed[FP_SECAGG_SEED_BYTES], uint64_t round)
{
    return fp_secagg_mask_add(sum, n, offset, self_seed, FP_SECAGG_SELF, round, -1);
}

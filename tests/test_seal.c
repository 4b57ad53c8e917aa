/* test_seal.c - sealing update chunks: both sides derive one key; opening fails on
 * a wrong key, any wrong associated-data field (splice), truncation and tampering;
 * the replay guard rejects a chunk presented twice and reports completeness. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "seal.h"

enum { LEN = 1000 };

typedef struct {
    uint8_t coord_pk[32], coord_sk[32], w_pk[32], w_sk[32];
    uint8_t kw[32], kc[32];
    uint8_t msg[LEN], sealed[LEN + FP_SEAL_OVERHEAD], out[LEN];
    fp_seal_ad ad;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_true(sodium_init() >= 0);
    crypto_box_keypair(f->coord_pk, f->coord_sk);
    fp_seal_ephemeral(f->w_pk, f->w_sk);
    randombytes_buf(f->msg, LEN);
    f->ad = (fp_seal_ad){"run-7", "worker-3", 12, 0xabcdef0123ULL, 2, 5};
    assert_int_equal(fp_seal_key_worker(f->kw, f->w_sk, f->w_pk, f->coord_pk, "run-7", 12), 0);
    assert_int_equal(fp_seal_key_coordinator(f->kc, f->coord_sk, f->coord_pk, f->w_pk, "run-7", 12),
                     0);
    assert_int_equal(fp_seal(f->sealed, f->msg, LEN, &f->ad, f->kw), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    sodium_memzero(*state, sizeof(fixture));
    free(*state);
    return 0;
}

/* Asserts that opening f->sealed (len bytes) with ad/key fails and leaves no output. */
static void must_fail(fixture *f, const uint8_t *in, size_t len, const fp_seal_ad *ad,
                      const uint8_t *key)
{
    size_t out_len = 12345;
    memset(f->out, 0xee, sizeof f->out);
    assert_int_equal(fp_open(f->out, &out_len, in, len, ad, key), -1);
    assert_int_equal(out_len, 0);
    if (len > FP_SEAL_OVERHEAD)
        for (size_t i = 0; i < len - FP_SEAL_OVERHEAD; i++)
            assert_int_equal(f->out[i], 0);
}

static void test_roundtrip(void **state)
{
    fixture *f = *state;
    assert_memory_equal(f->kw, f->kc, 32);              /* both sides agree */
    size_t out_len = 0;
    assert_int_equal(fp_open(f->out, &out_len, f->sealed, sizeof f->sealed, &f->ad, f->kc), 0);
    assert_int_equal(out_len, LEN);
    assert_memory_equal(f->out, f->msg, LEN);
    /* ciphertext is not the plaintext, and two seals of one chunk differ (fresh nonce) */
    assert_memory_not_equal(f->sealed + FP_SEAL_NONCE_BYTES, f->msg, LEN);
    uint8_t again[LEN + FP_SEAL_OVERHEAD];
    assert_int_equal(fp_seal(again, f->msg, LEN, &f->ad, f->kw), 0);
    assert_memory_not_equal(again, f->sealed, sizeof again);
    /* an empty chunk is fine too */
    uint8_t empty[FP_SEAL_OVERHEAD];
    assert_int_equal(fp_seal(empty, NULL, 0, &f->ad, f->kw), 0);
    assert_int_equal(fp_open(f->out, &out_len, empty, sizeof empty, &f->ad, f->kc), 0);
    assert_int_equal(out_len, 0);
}

static void test_wrong_ad(void **state)
{
    fixture *f = *state;
    fp_seal_ad ad;
    ad = f->ad, ad.run_id = "run-8";
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
    ad = f->ad, ad.round = 13;
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
    ad = f->ad, ad.worker_id = "worker-4";
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
    ad = f->ad, ad.task_id ^= 1;
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
    ad = f->ad, ad.chunk_index = 3;                      /* splice to another position */
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
    ad = f->ad, ad.n_chunks = 4;                         /* stream shortened */
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
    /* length-prefixed ids: "run-7"+"worker-3" cannot pose as "run-7w"+"orker-3" */
    ad = f->ad, ad.run_id = "run-7w", ad.worker_id = "orker-3";
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
    /* an invalid AD is an error, not an open */
    ad = f->ad, ad.chunk_index = 5;
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
    ad = f->ad, ad.worker_id = "";
    must_fail(f, f->sealed, sizeof f->sealed, &ad, f->kc);
}

static void test_wrong_key(void **state)
{
    fixture *f = *state;
    uint8_t k[32];
    memcpy(k, f->kc, 32);
    k[0] ^= 1;
    must_fail(f, f->sealed, sizeof f->sealed, &f->ad, k);
    /* key of another round, of another run, or from another worker key pair */
    assert_int_equal(fp_seal_key_coordinator(k, f->coord_sk, f->coord_pk, f->w_pk, "run-7", 13), 0);
    must_fail(f, f->sealed, sizeof f->sealed, &f->ad, k);
    assert_int_equal(fp_seal_key_coordinator(k, f->coord_sk, f->coord_pk, f->w_pk, "run-6", 12), 0);
    must_fail(f, f->sealed, sizeof f->sealed, &f->ad, k);
    uint8_t pk2[32], sk2[32];
    fp_seal_ephemeral(pk2, sk2);
    assert_int_equal(fp_seal_key_coordinator(k, f->coord_sk, f->coord_pk, pk2, "run-7", 12), 0);
    must_fail(f, f->sealed, sizeof f->sealed, &f->ad, k);
    /* a low-order (all-zero) peer key is refused, and the key left zeroed */
    uint8_t zero[32] = {0}, z[32];
    memset(k, 0x55, 32);
    assert_int_equal(fp_seal_key_coordinator(k, f->coord_sk, f->coord_pk, zero, "run-7", 12), -1);
    memset(z, 0, 32);
    assert_memory_equal(k, z, 32);
    sodium_memzero(sk2, sizeof sk2);
}

static void test_truncated_and_tampered(void **state)
{
    fixture *f = *state;
    must_fail(f, f->sealed, sizeof f->sealed - 1, &f->ad, f->kc);     /* tag cut */
    must_fail(f, f->sealed, FP_SEAL_OVERHEAD, &f->ad, f->kc);
    must_fail(f, f->sealed, FP_SEAL_OVERHEAD - 1, &f->ad, f->kc);     /* too short */
    must_fail(f, f->sealed, 0, &f->ad, f->kc);
    must_fail(f, f->sealed + 1, sizeof f->sealed - 1, &f->ad, f->kc); /* head cut */
    /* a flipped bit anywhere (nonce, body, tag) fails */
    uint8_t copy[LEN + FP_SEAL_OVERHEAD];
    const size_t where[] = {0, 23, 24, 500, LEN + 23, LEN + FP_SEAL_OVERHEAD - 1};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        memcpy(copy, f->sealed, sizeof copy);
        copy[where[i]] ^= 0x01;
        must_fail(f, copy, sizeof copy, &f->ad, f->kc);
    }
}

static void test_replay_guard(void **state)
{
    fixture *f = *state;
    fp_seal_replay *g = fp_seal_replay_new(f->ad.task_id, 5);
    assert_non_null(g);
    size_t out_len;
    /* chunk 2 opens and is accepted once; the same bytes again are a replay */
    assert_int_equal(fp_open(f->out, &out_len, f->sealed, sizeof f->sealed, &f->ad, f->kc), 0);
    assert_int_equal(fp_seal_replay_check(g, &f->ad), 0);
    assert_int_equal(fp_open(f->out, &out_len, f->sealed, sizeof f->sealed, &f->ad, f->kc), 0);
    assert_int_equal(fp_seal_replay_check(g, &f->ad), -1);
    assert_int_equal(fp_seal_replay_count(g), 1);
    assert_false(fp_seal_replay_complete(g));
    /* other task / count / index out of range are rejected */
    fp_seal_ad ad = f->ad;
    ad.task_id++;
    assert_int_equal(fp_seal_replay_check(g, &ad), -1);
    ad = f->ad, ad.n_chunks = 6;
    assert_int_equal(fp_seal_replay_check(g, &ad), -1);
    ad = f->ad, ad.chunk_index = 5;
    assert_int_equal(fp_seal_replay_check(g, &ad), -1);
    /* the rest arrive out of order; complete only when all five are in */
    const uint32_t order[] = {4, 0, 3, 1};
    for (int i = 0; i < 4; i++) {
        ad = f->ad, ad.chunk_index = order[i];
        assert_false(fp_seal_replay_complete(g));
        assert_int_equal(fp_seal_replay_check(g, &ad), 0);
    }
    assert_true(fp_seal_replay_complete(g));
    ad = f->ad, ad.chunk_index = 0;
    assert_int_equal(fp_seal_replay_check(g, &ad), -1);
    fp_seal_replay_destroy(&g);
    assert_null(g);
    fp_seal_replay_destroy(&g);
    assert_null(fp_seal_replay_new(1, 0));
    assert_null(fp_seal_replay_new(1, FP_SEAL_MAX_CHUNKS + 1));
}

static void test_ad_encoding(void **state)
{
    (void)state;
    uint8_t b[FP_SEAL_AD_MAX];
    size_t n = 99;
    fp_seal_ad ad = {"r", "w", 0x0102030405060708ULL, 9, 1, 2};
    assert_int_equal(fp_seal_ad_encode(&ad, b, &n), 0);
    assert_int_equal(n, 16 + 2 + 2 + 24);
    static const uint8_t want[] = {'f', 'e', 'd', 'p', 'e', 'f', 't', '/', 's', 'e', 'a', 'l', '/',
                                   'v', '1', 0,   1,   'r', 1,   'w', 8,   7,   6,   5,   4,   3,
                                   2,   1,   9,   0,   0,   0,   0,   0,   0,   0,   1,   0,   0,
                                   0,   2,   0,   0,   0};
    assert_int_equal(sizeof want, n);
    assert_memory_equal(b, want, n);
    char longid[300];
    memset(longid, 'x', sizeof longid - 1);
    longid[299] = '\0';
    ad.worker_id = longid;
    assert_int_equal(fp_seal_ad_encode(&ad, b, &n), -1);
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_ad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_and_tampered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_guard, setup, teardown),
        cmocka_unit_test(test_ad_encoding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

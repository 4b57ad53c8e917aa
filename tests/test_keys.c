/* test_keys.c - key pairs on disk, public key parsing, allowlists, and
 * `fedpeft keygen` (file modes, refusal to overwrite, --force). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#include "keys.h"
#include "test_util.h"

#define HAS(hay, needle) \
    do { \
        if (!strstr((hay), (needle))) \
            fail_msg("expected \"%s\" in: %s", (needle), (hay)); \
    } while (0)

static void test_generate_save_load(void **state)
{
    (void)state;
    const char *dir = tu_tempdir("keys-roundtrip");
    fp_keypair *kp = fp_keypair_generate("alice");
    assert_non_null(kp);
    assert_int_equal(strlen(kp->public_z85), FP_KEY_Z85_LEN);
    uint8_t pk[FP_KEY_BYTES];
    assert_int_equal(crypto_scalarmult_base(pk, kp->secret_key), 0);
    assert_memory_equal(pk, kp->public_key, FP_KEY_BYTES);
    assert_int_equal(fp_keypair_save(kp, dir, 0), 0);

    struct stat st;
    assert_int_equal(stat(tu_path(dir, "alice.key"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    fp_keypair *back = fp_keypair_load(tu_path(dir, "alice.key"));
    if (!back)
        fail_msg("load: %s", fp_error_get());
    assert_memory_equal(back->public_key, kp->public_key, FP_KEY_BYTES);
    assert_memory_equal(back->secret_key, kp->secret_key, FP_KEY_BYTES);
    assert_string_equal(back->name, "alice");
    assert_string_equal(back->public_z85, kp->public_z85);

    /* the signing pair is derived from the secret: the same after a load, not
     * the X25519 key, and it signs (libsodium verifies) */
    assert_memory_equal(back->sign_pk, kp->sign_pk, FP_KEY_BYTES);
    assert_memory_not_equal(kp->sign_pk, kp->public_key, FP_KEY_BYTES);
    uint8_t sig[crypto_sign_BYTES];
    static const uint8_t msg[] = "round 7";
    crypto_sign_detached(sig, NULL, msg, sizeof msg, back->sign_sk);
    assert_int_equal(crypto_sign_verify_detached(sig, msg, sizeof msg, kp->sign_pk), 0);
    sig[3] ^= 1;
    assert_int_not_equal(crypto_sign_verify_detached(sig, msg, sizeof msg, kp->sign_pk), 0);
    fp_keypair *other = fp_keypair_generate("bob");
    assert_non_null(other);
    assert_memory_not_equal(other->sign_pk, kp->sign_pk, FP_KEY_BYTES);
    fp_keypair_free(&other);

    /* the .pub file and the bare Z85 text parse to the same key */
    uint8_t a[FP_KEY_BYTES], b[FP_KEY_BYTES];
    assert_int_equal(fp_pubkey_parse(tu_path(dir, "alice.pub"), a), 0);
    assert_int_equal(fp_pubkey_parse(kp->public_z85, b), 0);
    assert_memory_equal(a, kp->public_key, FP_KEY_BYTES);
    assert_memory_equal(b, kp->public_key, FP_KEY_BYTES);

    /* refuses to overwrite; overwrite=1 replaces */
    assert_int_equal(fp_keypair_save(kp, dir, 0), -1);
    HAS(fp_error_get(), "already exists");
    assert_int_equal(fp_keypair_save(back, dir, 1), 0);

    fp_keypair_free(&kp);
    fp_keypair_free(&back);
    assert_null(kp);
    assert_null(back);
    fp_keypair_free(&kp);                         /* NULL-safe */
}

static void test_load_errors(void **state)
{
    (void)state;
    const char *dir = tu_tempdir("keys-errors");
    fp_keypair *kp = fp_keypair_generate("bob");
    assert_non_null(kp);
    assert_int_equal(fp_keypair_save(kp, dir, 0), 0);
    const char *key = tu_path(dir, "bob.key");

    /* group-readable secret: refused with the chmod hint */
    assert_int_equal(chmod(key, 0640), 0);
    assert_null(fp_keypair_load(key));
    HAS(fp_error_get(), "chmod 600");
    assert_int_equal(chmod(key, 0600), 0);

    /* a bad Z85 line names FILE:LINE */
    char bad[512];
    snprintf(bad, sizeof bad, "%s/bad.key", dir);
    assert_int_equal(tu_write_file(bad, "# c\nsecret = not-z85\n", 21), 0);
    assert_int_equal(chmod(bad, 0600), 0);
    assert_null(fp_keypair_load(bad));
    char where[600];
    snprintf(where, sizeof where, "%s:2:", bad);
    HAS(fp_error_get(), where);

    /* public key not matching the secret key */
    fp_keypair *other = fp_keypair_generate("eve");
    assert_non_null(other);
    char *text = tu_read_file(key, NULL);
    assert_non_null(text);
    char *pub = strstr(text, "public = ");
    assert_non_null(pub);
    memcpy(pub + 9, other->public_z85, FP_KEY_Z85_LEN);
    assert_int_equal(tu_write_file(bad, text, strlen(text)), 0);
    free(text);
    assert_null(fp_keypair_load(bad));
    HAS(fp_error_get(), "does not match");

    /* a .pub file is not a secret key; garbage is not a public key */
    assert_null(fp_keypair_load(tu_path(dir, "bob.pub")));
    uint8_t out[FP_KEY_BYTES];
    assert_int_equal(fp_pubkey_parse("definitely-not-a-key", out), -1);
    assert_int_equal(fp_keypair_generate("../evil") == NULL, 1);
    assert_int_equal(fp_keypair_generate("") == NULL, 1);
    fp_keypair_free(&kp);
    fp_keypair_free(&other);
}

static void test_allowlist(void **state)
{
    (void)state;
    const char *dir = tu_tempdir("keys-allow");
    fp_keypair *a = fp_keypair_generate("a"), *b = fp_keypair_generate("b"),
               *c = fp_keypair_generate("c");
    assert_true(a && b && c);
    char text[1024], path[512];
    snprintf(path, sizeof path, "%s/allow.txt", dir);
    snprintf(text, sizeof text, "# workers\n%s worker-a\n\n  %s   # no name\n", a->public_z85,
             b->public_z85);
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    fp_allowlist al = {0};
    if (fp_allowlist_load(path, &al) != 0)
        fail_msg("allowlist: %s", fp_error_get());
    assert_int_equal(al.n, 2);
    assert_string_equal(al.names[0], "worker-a");
    assert_string_equal(al.names[1], "");
    assert_int_equal(fp_allowlist_find(&al, a->public_key), 0);
    assert_int_equal(fp_allowlist_find(&al, b->public_key), 1);
    assert_int_equal(fp_allowlist_find(&al, c->public_key), -1);

    /* errors keep the old list and name FILE:LINE */
    snprintf(text, sizeof text, "%s x\nshort-key y\n", c->public_z85);
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    assert_int_equal(fp_allowlist_load(path, &al), -1);
    char where[600];
    snprintf(where, sizeof where, "%s:2:", path);
    HAS(fp_error_get(), where);
    assert_int_equal(al.n, 2);
    snprintf(text, sizeof text, "%s x\n%s y\n", c->public_z85, c->public_z85);
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    assert_int_equal(fp_allowlist_load(path, &al), -1);
    HAS(fp_error_get(), "twice");
    /* sign=: a Z85 signing key, or an error that says what it takes */
    snprintf(text, sizeof text, "%s x sign=%s\n", c->public_z85, c->sign_z85);
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    assert_int_equal(fp_allowlist_load(path, &al), 0);
    assert_true(al.policy[0].has_sign);
    assert_memory_equal(al.policy[0].sign_pk, c->sign_pk, FP_KEY_BYTES);
    snprintf(text, sizeof text, "%s x sign=tooshort\n", c->public_z85);
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    assert_int_equal(fp_allowlist_load(path, &al), -1);
    HAS(fp_error_get(), "sign a 40-character Z85 key");
    fp_allowlist_free(&al);
    assert_int_equal(al.n, 0);
    fp_keypair_free(&a);
    fp_keypair_free(&b);
    fp_keypair_free(&c);
}

static void test_keygen_tool(void **state)
{
    (void)state;
    const char *dir = tu_path(tu_tempdir("keys-tool"), "ids");
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, FP_TOOL " keygen --out %s --name w1 2>/dev/null", dir);
    int rc = tu_run(cmd, &out);
    if (rc != 0)
        fail_msg("%s: exit %d: %s", cmd, rc, out);
    /* stdout is exactly the allowlist line "<Z85> w1 sign=<Z85>" */
    assert_int_equal(strlen(out), 2 * FP_KEY_Z85_LEN + 10);
    assert_memory_equal(out + FP_KEY_Z85_LEN, " w1 sign=", 9);
    char key_path[1024], pub_path[1024];
    snprintf(key_path, sizeof key_path, "%s/w1.key", dir);
    snprintf(pub_path, sizeof pub_path, "%s/w1.pub", dir);
    struct stat st;
    assert_int_equal(stat(key_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    fp_keypair *kp = fp_keypair_load(key_path);
    assert_non_null(kp);
    assert_memory_equal(kp->public_z85, out, FP_KEY_Z85_LEN);
    /* the printed line is a valid allowlist */
    char allow[1100];
    snprintf(allow, sizeof allow, "%s/allow.txt", dir);
    assert_int_equal(tu_write_file(allow, out, strlen(out)), 0);
    fp_allowlist al = {0};
    assert_int_equal(fp_allowlist_load(allow, &al), 0);
    assert_int_equal(fp_allowlist_find(&al, kp->public_key), 0);
    assert_string_equal(al.names[0], "w1");
    assert_true(al.policy[0].has_sign);
    assert_memory_equal(al.policy[0].sign_pk, kp->sign_pk, FP_KEY_BYTES);
    assert_memory_equal(kp->sign_z85, out + FP_KEY_Z85_LEN + 9, FP_KEY_Z85_LEN);
    fp_allowlist_free(&al);
    free(out);
    out = NULL;

    /* refuses to overwrite without --force; the old key is untouched */
    snprintf(cmd, sizeof cmd, FP_TOOL " keygen --out %s --name w1", dir);
    rc = tu_run(cmd, &out);
    assert_int_not_equal(rc, 0);
    HAS(out, "already exists");
    free(out);
    out = NULL;
    fp_keypair *same = fp_keypair_load(key_path);
    assert_non_null(same);
    assert_memory_equal(same->public_key, kp->public_key, FP_KEY_BYTES);

    snprintf(cmd, sizeof cmd, FP_TOOL " keygen --out %s --name w1 --force 2>/dev/null", dir);
    rc = tu_run(cmd, &out);
    assert_int_equal(rc, 0);
    fp_keypair *fresh = fp_keypair_load(key_path);
    assert_non_null(fresh);
    assert_memory_not_equal(fresh->public_key, kp->public_key, FP_KEY_BYTES);
    assert_int_equal(stat(key_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    free(out);
    out = NULL;

    /* missing --out is a usage error */
    rc = tu_run(FP_TOOL " keygen", &out);
    assert_int_not_equal(rc, 0);
    HAS(out, "--out");
    free(out);
    fp_keypair_free(&kp);
    fp_keypair_free(&same);
    fp_keypair_free(&fresh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_save_load),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_allowlist),
        cmocka_unit_test(test_keygen_tool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

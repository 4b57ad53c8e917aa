/* fuzz_keys.c - the key files of keys.c: a secret key file (NAME.key:
 * "secret = <Z85>", "public = <Z85>", comments), a public key file
 * (NAME.pub, or the Z85 text itself, for a short input) and an allowlist ("<Z85> [name]" lines,
 * comments, duplicates refused). The same bytes are read as each of the three.
 *
 * A secret key that loads must yield the public key its own "public =" line
 * (if any) claims: keys.c recomputes it, so the pair is checked here again. */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <string.h>

#include <sodium.h>

#include "fuzz_util.h"
#include "keys.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (sodium_init() < 0)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    char path[600];
    snprintf(path, sizeof path, "%s", fz_write("input.key", data, len, 0600));
    fp_keypair *kp = fp_keypair_load(path);
    if (fz_verdict("fp_keypair_load", kp != NULL)) {
        uint8_t pub[FP_KEY_BYTES];
        assert(crypto_scalarmult_base(pub, kp->secret_key) == 0);
        assert(memcmp(pub, kp->public_key, FP_KEY_BYTES) == 0);
        assert(strcmp(kp->name, "input") == 0 && strlen(kp->public_z85) == FP_KEY_Z85_LEN);
        fp_keypair_free(&kp);
        assert(!kp);
    }

    uint8_t key[FP_KEY_BYTES];
    snprintf(path, sizeof path, "%s", fz_write("input.pub", data, len, 0644));
    fz_verdict("fp_pubkey_parse", fp_pubkey_parse(path, key) == 0);

    /* The Z85 text itself, which fp_pubkey_parse tries when no file has that
     * name (text that names an existing file is skipped: no reading around). */
    char z[FP_KEY_Z85_LEN + 8];
    struct stat sb;
    if (len < sizeof z && !memchr(data, 0, len)) {
        memcpy(z, data, len);
        z[len] = '\0';
        if (stat(z, &sb) != 0)
            fz_verdict("fp_pubkey_parse (text)", fp_pubkey_parse(z, key) == 0);
    }

    fp_allowlist al = {0};
    if (fz_verdict("fp_allowlist_load", fp_allowlist_load(path, &al) == 0)) {
        for (size_t i = 0; i < al.n; i++)
            assert(fp_allowlist_find(&al, al.keys[i]) == (long)i);   /* no duplicates */
        fp_allowlist_free(&al);
    }
    return 0;
}

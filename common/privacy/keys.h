/* common/privacy/ - the privacy layer: long-term keys (this file), sealing of
 * updates, secure-aggregation masks and the SecAgg+ graph, Shamir and Feldman
 * shares, differential privacy, and the ZAP handler that checks CURVE keys
 * against the allowlist. Uses base; libsodium and libzmq (ZAP only).
 *
 * keys.h - long-term identities: X25519 key pairs for CURVE and update sealing,
 * and the Ed25519 signing key of each identity (secure aggregation's signed
 * advertisements and consistency round), derived from the X25519 secret key
 * (BLAKE2b under a fixed label: one secret file holds both, and key files made
 * before signing existed gain a signing key unchanged).
 *
 * A key pair is two files in a directory (written by `fedpeft keygen`):
 *   NAME.key      the secret key, mode 0600: "# fedpeft secret key\nsecret = <Z85>\npublic = <Z85>\n"
 *   NAME.pub      the public key: "# fedpeft public key NAME\npublic = <Z85>\nsign = <Z85>\n"
 * Z85 is ZeroMQ's text encoding of a 32-byte key (40 characters), the form
 * ZMQ_CURVE_*KEY options accept, so a public key can be pasted into an
 * allowlist as is. Curve25519 keys are the same for CURVE and for libsodium's
 * crypto_box / crypto_scalarmult, so one identity serves both.
 *
 * An allowlist file has one entry per line: "<Z85 public key> [name] [options]"
 * (options: max_examples=N, weight=W, sign=<Z85 signing key>); '#'
 * at the start of a line or after a blank starts a comment ('#' is itself a Z85
 * character, so it never starts a comment inside a key). A key listed twice is an
 * error. Errors name FILE:LINE.
 *
 * Functions return 0 / -1 (or NULL) and set fp_error (fp_error.h). Secret keys are
 * only ever held in sodium_malloc memory (read-only once set) and wiped on free;
 * temporaries holding secret text are wiped with sodium_memzero.
 */
#ifndef FP_KEYS_H
#define FP_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define FP_KEY_BYTES 32
#define FP_KEY_Z85_LEN 40       /* characters, without the NUL */

typedef struct {
    uint8_t public_key[FP_KEY_BYTES];
    uint8_t *secret_key;        /* FP_KEY_BYTES in sodium_malloc'd memory */
    char public_z85[FP_KEY_Z85_LEN + 1];
    char name[64];
    uint8_t sign_pk[FP_KEY_BYTES];  /* Ed25519, derived from secret_key */
    uint8_t *sign_sk;               /* 64 bytes in sodium_malloc'd memory */
    char sign_z85[FP_KEY_Z85_LEN + 1];
} fp_keypair;

/* Generates a fresh pair (crypto_box_keypair; secret in sodium_malloc memory).
 * name: 1..63 characters of [A-Za-z0-9._-], not starting with '.' (it becomes a
 * file name). Caller destroys with fp_keypair_free. NULL (fp_error) on a bad name. */
fp_keypair *fp_keypair_generate(const char *name) FP_WUR;
/* Writes DIR/NAME.key (0600, created exclusively unless overwrite) and
 * DIR/NAME.pub (0644). DIR must exist. Without overwrite, fails (-1, "already
 * exists (use --force ...)") before writing anything when either file exists. */
int fp_keypair_save(const fp_keypair *kp, const char *dir, int overwrite) FP_WUR;
/* Loads a secret key file (refuses one readable by group/others, saying
 * "chmod 600 FILE"). The public key is recomputed from the secret and must match a
 * "public =" line when present. name = the file name without ".key". Caller
 * destroys. NULL (fp_error with FILE:LINE for a parse error). */
fp_keypair *fp_keypair_load(const char *secret_path) FP_WUR;
/* Wipes and frees; NULL-safe; sets *kp_p = NULL. */
void fp_keypair_free(fp_keypair **kp_p);

/* Reads a public key: a .pub file, or the 40-character Z85 text itself (tried
 * when no file of that name exists). out is zeroed first and on error. */
int fp_pubkey_parse(const char *file_or_z85, uint8_t out[FP_KEY_BYTES]) FP_WUR;

/* What the operator grants one key (allowlist options; 0 = not set). */
typedef struct {
    uint64_t max_examples;  /* max_examples=N: caps the example count it declares */
    double weight;          /* weight=W: its averaging weight, whatever it declares */
    int has_sign;           /* sign=<Z85>: the only Ed25519 key its messages may be */
    uint8_t sign_pk[FP_KEY_BYTES];  /* signed with (Hello.sign_pk must equal it) */
} fp_allow_policy;

typedef struct {
    size_t n;
    uint8_t (*keys)[FP_KEY_BYTES];
    char (*names)[64];      /* the only worker id the key may use ("" = its Z85) */
    fp_allow_policy *policy;
} fp_allowlist;

/* Parses an allowlist file into *out. A line is "<Z85> [NAME] [max_examples=N]
 * [weight=W]"; NAME is [A-Za-z0-9._-]{1,63} and unique in the file. */
/* Parses an allowlist file into *out (replacing and freeing the old contents only
 * on success; *out must be zero-initialised or a loaded list). Free with
 * fp_allowlist_free. */
int fp_allowlist_load(const char *path, fp_allowlist *out) FP_WUR;
/* Index of key in the list, or -1. Compares every entry in constant time. */
long fp_allowlist_find(const fp_allowlist *al, const uint8_t key[FP_KEY_BYTES]);
/* Index of the entry whose worker id (NAME, or the key's Z85 for a line
 * without one) is id, or -1. */
long fp_allowlist_find_id(const fp_allowlist *al, const char *id);
void fp_allowlist_free(fp_allowlist *al);

#endif

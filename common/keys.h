/* keys.h - long-term identities: X25519 key pairs for CURVE and update sealing.
 *
 * A key pair is two files in a directory (written by `fedpeft keygen`):
 *   NAME.key      the secret key, mode 0600: "# fedpeft secret key\nsecret = <Z85>\npublic = <Z85>\n"
 *   NAME.pub      the public key: "# fedpeft public key NAME\npublic = <Z85>\n"
 * Z85 is ZeroMQ's text encoding of a 32-byte key (40 characters), the form
 * ZMQ_CURVE_*KEY options accept, so a public key can be pasted into an
 * allowlist as is. Curve25519 keys are the same for CURVE and for libsodium's
 * crypto_box / crypto_scalarmult, so one identity serves both.
 *
 * An allowlist file has one entry per line: "<Z85 public key> [name]"; '#'
 * starts a comment. Errors name FILE:LINE.
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
} fp_keypair;

/* Generates a fresh pair (secret in sodium_malloc memory). Caller destroys. */
fp_keypair *fp_keypair_generate(const char *name) FP_WUR;
/* Writes DIR/NAME.key (0600, created exclusively unless overwrite) and
 * DIR/NAME.pub. */
int fp_keypair_save(const fp_keypair *kp, const char *dir, int overwrite) FP_WUR;
/* Loads a secret key file (refuses one readable by group/others, saying
 * "chmod 600 FILE"). */
fp_keypair *fp_keypair_load(const char *secret_path) FP_WUR;
/* Wipes and frees. */
void fp_keypair_free(fp_keypair **kp_p);

/* Reads a public key: a .pub file, or the Z85 text itself. */
int fp_pubkey_parse(const char *file_or_z85, uint8_t out[FP_KEY_BYTES]) FP_WUR;

typedef struct {
    size_t n;
    uint8_t (*keys)[FP_KEY_BYTES];
    char (*names)[64];
} fp_allowlist;

/* Parses an allowlist file into *out (replacing it only on success). */
int fp_allowlist_load(const char *path, fp_allowlist *out) FP_WUR;
/* Index of key in the list, or -1. */
long fp_allowlist_find(const fp_allowlist *al, const uint8_t key[FP_KEY_BYTES]);
void fp_allowlist_free(fp_allowlist *al);

#endif

/* keys.c - X25519 identities on disk (Z85 text), public keys and allowlists.
 * The format is documented in keys.h. */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <zmq.h>

#define KEY_FILE_MAX 4096     /* bytes: a key file is ~120; anything bigger is not ours */
#define LINE_MAX_LEN 1024

static const char z85_alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

static int sodium_ready(void)
{
    if (sodium_init() < 0)
        return fp_error_set("libsodium failed to initialise");
    return 0;
}

/* Decodes exactly FP_KEY_Z85_LEN characters of Z85 into out (zeroed on failure). */
static int z85_to_key(const char *s, size_t len, uint8_t out[FP_KEY_BYTES])
{
    char tmp[FP_KEY_Z85_LEN + 1];
    memset(out, 0, FP_KEY_BYTES);
    if (len != FP_KEY_Z85_LEN)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\0' || !strchr(z85_alphabet, s[i]))
            return -1;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    int ok = zmq_z85_decode(out, tmp) != NULL;
    sodium_memzero(tmp, sizeof tmp);
    if (!ok) {
        sodium_memzero(out, FP_KEY_BYTES);
        return -1;
    }
    return 0;
}

static int valid_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= sizeof(((fp_keypair *)0)->name) || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* The identity's Ed25519 signing pair from its X25519 secret key (a keyed
 * hash under a label that no other use of the key shares). */
static int derive_sign(fp_keypair *kp)
{
    static const uint8_t label[] = "fedpeft signing key v1";
    uint8_t seed[crypto_sign_SEEDBYTES];
    if (!(kp->sign_sk = sodium_malloc(crypto_sign_SECRETKEYBYTES)))
        return fp_error_set("out of memory for a key pair");
    crypto_generichash(seed, sizeof seed, kp->secret_key, FP_KEY_BYTES, label, sizeof label - 1);
    crypto_sign_seed_keypair(kp->sign_pk, kp->sign_sk, seed);
    sodium_memzero(seed, sizeof seed);
    sodium_mprotect_readonly(kp->sign_sk);
    if (!zmq_z85_encode(kp->sign_z85, kp->sign_pk, FP_KEY_BYTES))
        return fp_error_set("Z85 encoding failed");
    return 0;
}

fp_keypair *fp_keypair_generate(const char *name)
{
    if (sodium_ready() < 0)
        return NULL;
    if (!valid_name(name)) {
        fp_error_set("key name '%s' is not valid: use 1-63 characters of [A-Za-z0-9._-], "
                     "not starting with '.'", name ? name : "");
        return NULL;
    }
    fp_keypair *kp = calloc(1, sizeof *kp);
    if (!kp || !(kp->secret_key = sodium_malloc(FP_KEY_BYTES))) {
        free(kp);
        fp_error_set("out of memory for a key pair");
        return NULL;
    }
    crypto_box_keypair(kp->public_key, kp->secret_key);
    sodium_mprotect_readonly(kp->secret_key);
    if (derive_sign(kp) < 0) {
        fp_keypair_free(&kp);
        return NULL;
    }
    if (!zmq_z85_encode(kp->public_z85, kp->public_key, FP_KEY_BYTES)) {
        fp_keypair_free(&kp);
        fp_error_set("Z85 encoding failed");
        return NULL;
    }
    snprintf(kp->name, sizeof kp->name, "%s", name);
    return kp;
}

void fp_keypair_free(fp_keypair **kp_p)
{
    if (!kp_p || !*kp_p)
        return;
    fp_keypair *kp = *kp_p;
    sodium_free(kp->secret_key);        /* wipes before freeing */
    if (kp->sign_sk)
        sodium_free(kp->sign_sk);
    sodium_memzero(kp, sizeof *kp);
    free(kp);
    *kp_p = NULL;
}

/* Writes all of buf to fd; -1 on error. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Creates path with mode (exclusively; an existing file is removed first when
 * overwrite) and writes text. */
static int write_file_mode(const char *path, const char *text, mode_t mode, int overwrite)
{
    if (overwrite && unlink(path) < 0 && errno != ENOENT)
        return fp_error_set("%s: cannot replace: %s", path, strerror(errno));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        if (errno == EEXIST)
            return fp_error_set("%s already exists (use --force to overwrite)", path);
        return fp_error_set("%s: cannot create: %s", path, strerror(errno));
    }
    if (fchmod(fd, mode) < 0 || write_all(fd, text, strlen(text)) < 0 || fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(path);
        return fp_error_set("%s: cannot write: %s", path, strerror(e));
    }
    if (close(fd) < 0)
        return fp_error_set("%s: cannot write: %s", path, strerror(errno));
    return 0;
}

int fp_keypair_save(const fp_keypair *kp, const char *dir, int overwrite)
{
    char key_path[PATH_MAX], pub_path[PATH_MAX], text[256];
    char secret_z85[FP_KEY_Z85_LEN + 1];
    struct stat st;
    int rc = -1;

    if (!kp || !kp->secret_key || !dir)
        return fp_error_set("fp_keypair_save: no key pair or directory");
    if ((size_t)snprintf(key_path, sizeof key_path, "%s/%s.key", dir, kp->name) >= sizeof key_path ||
        (size_t)snprintf(pub_path, sizeof pub_path, "%s/%s.pub", dir, kp->name) >= sizeof pub_path)
        return fp_error_set("%s: path too long", dir);
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return fp_error_set("%s: not a directory (create it first)", dir);
    if (!overwrite) {
        /* Check both before writing either, so a refusal leaves nothing half-done. */
        if (lstat(key_path, &st) == 0)
            return fp_error_set("%s already exists (use --force to overwrite)", key_path);
        if (lstat(pub_path, &st) == 0)
            return fp_error_set("%s already exists (use --force to overwrite)", pub_path);
    }
    if (!zmq_z85_encode(secret_z85, kp->secret_key, FP_KEY_BYTES))
        return fp_error_set("Z85 encoding failed");
    snprintf(text, sizeof text, "# fedpeft secret key\nsecret = %s\npublic = %s\n", secret_z85,
             kp->public_z85);
    if (write_file_mode(key_path, text, 0600, overwrite) < 0)
        goto err;
    snprintf(text, sizeof text, "# fedpeft public key %s\npublic = %s\nsign = %s\n", kp->name,
             kp->public_z85, kp->sign_z85);
    if (write_file_mode(pub_path, text, 0644, overwrite) < 0)
        goto err;
    rc = 0;
err:
    sodium_memzero(secret_z85, sizeof secret_z85);
    sodium_memzero(text, sizeof text);
    return rc;
}

/* Reads a small file (at most KEY_FILE_MAX bytes) into buf, NUL-terminated.
 * When secret, refuses a file readable or writable by group/others. */
static int read_small(const char *path, char *buf, size_t cap, int secret)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fp_error_set("%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fp_error_set("%s: not a regular file", path);
    }
    if (secret && (st.st_mode & 077)) {
        close(fd);
        return fp_error_set("%s: secret key is accessible by group/others (mode %03o): "
                            "run chmod 600 %s", path, (unsigned)(st.st_mode & 0777), path);
    }
    if ((size_t)st.st_size >= cap) {
        close(fd);
        return fp_error_set("%s: %lld bytes is too big for a key file", path,
                            (long long)st.st_size);
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            close(fd);
            return fp_error_set("%s: read error: %s", path, strerror(errno));
        }
        if (r == 0 || (len += (size_t)r) == cap - 1)
            break;
    }
    close(fd);
    buf[len] = '\0';
    if (memchr(buf, '\0', len))
        return fp_error_set("%s: binary data in a key file", path);
    return 0;
}

/* Strips leading/trailing blanks (and a trailing CR) in place. */
static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

/* Parses "KEY = <Z85>" lines of a key file. found_* say which were present. */
static int parse_key_text(const char *path, char *text, uint8_t secret[FP_KEY_BYTES],
                          uint8_t public_key[FP_KEY_BYTES], int *found_secret, int *found_public)
{
    int lineno = 0;
    *found_secret = *found_public = 0;
    char *p = text;
    while (p && *p) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        lineno++;
        char *line = trim(p);
        p = nl ? nl + 1 : NULL;
        if (!*line || *line == '#')
            continue;
        char *eq = strchr(line, '=');
        if (!eq)
            return fp_error_set("%s:%d: expected 'secret = <Z85>' or 'public = <Z85>', got '%.60s'",
                                path, lineno, line);
        *eq = '\0';
        char *k = trim(line), *v = trim(eq + 1);
        uint8_t *dst;
        int *flag;
        if (!strcmp(k, "sign")) {       /* derived from the secret; informative here */
            uint8_t ignored[FP_KEY_BYTES];
            if (z85_to_key(v, strlen(v), ignored) < 0)
                return fp_error_set("%s:%d: 'sign' is not a %d-character Z85 key", path, lineno,
                                    FP_KEY_Z85_LEN);
            continue;
        }
        if (!strcmp(k, "secret") && secret)
            dst = secret, flag = found_secret;
        else if (!strcmp(k, "public"))
            dst = public_key, flag = found_public;
        else
            return fp_error_set("%s:%d: unknown field '%.40s' (expected %s)", path, lineno, k,
                                secret ? "secret or public" : "public");
        if (*flag)
            return fp_error_set("%s:%d: '%s' given twice", path, lineno, k);
        if (z85_to_key(v, strlen(v), dst) < 0)
            return fp_error_set("%s:%d: '%s' is not a %d-character Z85 key", path, lineno, k,
                                FP_KEY_Z85_LEN);
        *flag = 1;
    }
    return 0;
}

fp_keypair *fp_keypair_load(const char *secret_path)
{
    char text[KEY_FILE_MAX];
    uint8_t sk[FP_KEY_BYTES], pk_file[FP_KEY_BYTES], pk[FP_KEY_BYTES];
    int have_sk = 0, have_pk = 0;
    fp_keypair *kp = NULL;

    if (sodium_ready() < 0)
        return NULL;
    if (read_small(secret_path, text, sizeof text, 1) < 0)
        goto err;
    if (parse_key_text(secret_path, text, sk, pk_file, &have_sk, &have_pk) < 0)
        goto err;
    if (!have_sk) {
        fp_error_set("%s: no 'secret = <Z85>' line (is this a .pub file?)", secret_path);
        goto err;
    }
    if (crypto_scalarmult_base(pk, sk) != 0) {
        fp_error_set("%s: invalid secret key", secret_path);
        goto err;
    }
    if (have_pk && sodium_memcmp(pk, pk_file, FP_KEY_BYTES) != 0) {
        fp_error_set("%s: the public key does not match the secret key (file damaged?)",
                     secret_path);
        goto err;
    }
    if (!(kp = calloc(1, sizeof *kp)) || !(kp->secret_key = sodium_malloc(FP_KEY_BYTES))) {
        fp_error_set("out of memory for a key pair");
        goto err;
    }
    memcpy(kp->secret_key, sk, FP_KEY_BYTES);
    sodium_mprotect_readonly(kp->secret_key);
    if (derive_sign(kp) < 0)
        goto err;
    memcpy(kp->public_key, pk, FP_KEY_BYTES);
    zmq_z85_encode(kp->public_z85, pk, FP_KEY_BYTES);
    /* name = basename without ".key" */
    const char *base = strrchr(secret_path, '/');
    base = base ? base + 1 : secret_path;
    size_t bl = strlen(base);
    if (bl > 4 && !strcmp(base + bl - 4, ".key"))
        bl -= 4;
    snprintf(kp->name, sizeof kp->name, "%.*s", (int)(bl < 63 ? bl : 63), base);
    sodium_memzero(text, sizeof text);
    sodium_memzero(sk, sizeof sk);
    return kp;
err:
    if (kp) {
        if (!kp->secret_key)
            free(kp), kp = NULL;
        else
            fp_keypair_free(&kp);
    }
    sodium_memzero(text, sizeof text);
    sodium_memzero(sk, sizeof sk);
    return NULL;
}

int fp_pubkey_parse(const char *file_or_z85, uint8_t out[FP_KEY_BYTES])
{
    char text[KEY_FILE_MAX];
    int have_pk = 0, have_sk = 0;
    memset(out, 0, FP_KEY_BYTES);
    if (!file_or_z85)
        return fp_error_set("no public key given");
    size_t n = strlen(file_or_z85);
    if (n == FP_KEY_Z85_LEN && access(file_or_z85, F_OK) != 0) {
        if (z85_to_key(file_or_z85, n, out) < 0)
            return fp_error_set("'%s' is neither a file nor a %d-character Z85 public key",
                                file_or_z85, FP_KEY_Z85_LEN);
        return 0;
    }
    if (read_small(file_or_z85, text, sizeof text, 0) < 0)
        return -1;
    if (parse_key_text(file_or_z85, text, NULL, out, &have_sk, &have_pk) < 0) {
        memset(out, 0, FP_KEY_BYTES);
        return -1;
    }
    if (!have_pk)
        return fp_error_set("%s: no 'public = <Z85>' line", file_or_z85);
    return 0;
}

/* Parses one allowlist line (already trimmed, non-empty, no comment) into key/name. */
/* One "key=value" option of an allowlist line. */
static int allow_option(const char *path, int lineno, const char *opt, fp_allow_policy *pol)
{
    char *end = NULL;
    if (strncmp(opt, "max_examples=", 13) == 0) {
        errno = 0;
        unsigned long long v = strtoull(opt + 13, &end, 10);
        if (opt[13] && !*end && !errno && v > 0 && opt[13] != '-') {
            pol->max_examples = v;
            return 0;
        }
    } else if (strncmp(opt, "weight=", 7) == 0) {
        double v = strtod(opt + 7, &end);
        if (opt[7] && !*end && v > 0 && v <= 1e12) {
            pol->weight = v;
            return 0;
        }
    } else if (strncmp(opt, "sign=", 5) == 0) {
        if (z85_to_key(opt + 5, strlen(opt + 5), pol->sign_pk) == 0) {
            pol->has_sign = 1;
            return 0;
        }
    } else {
        return fp_error_set("%s:%d: unknown option '%.60s' (known: max_examples=N, weight=W, "
                            "sign=<Z85>)", path, lineno, opt);
    }
    return fp_error_set("%s:%d: '%.60s': max_examples takes an integer >= 1, weight a number "
                        "in (0, 1e12], sign a %d-character Z85 key", path, lineno, opt,
                        FP_KEY_Z85_LEN);
}

static int allow_line(const char *path, int lineno, char *line, uint8_t key[FP_KEY_BYTES],
                      char name[64], fp_allow_policy *pol)
{
    size_t klen = strcspn(line, " \t");
    if (z85_to_key(line, klen, key) < 0)
        return fp_error_set("%s:%d: expected '<%d-character Z85 public key> [name]', got '%.60s'",
                            path, lineno, FP_KEY_Z85_LEN, line);
    name[0] = '\0';
    memset(pol, 0, sizeof *pol);
    char *save = NULL;
    for (char *tok = strtok_r(line + klen, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (strchr(tok, '=')) {
            if (allow_option(path, lineno, tok, pol) < 0)
                return -1;
        } else if (!name[0] && valid_name(tok)) {
            snprintf(name, 64, "%s", tok);
        } else {
            return fp_error_set("%s:%d: name '%.60s' must come once, right after the key, and "
                                "be 1-63 characters of [A-Za-z0-9._-] (the worker's id)",
                                path, lineno, tok);
        }
    }
    return 0;
}

int fp_allowlist_load(const char *path, fp_allowlist *out)
{
    fp_allowlist al = {0};
    size_t cap = 0;
    char buf[LINE_MAX_LEN];
    int lineno = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return fp_error_set("%s: cannot open allowlist: %s", path, strerror(errno));
    while (fgets(buf, sizeof buf, f)) {
        lineno++;
        size_t bl = strlen(buf);
        if (bl == sizeof buf - 1 && buf[bl - 1] != '\n' && !feof(f)) {
            fp_error_set("%s:%d: line longer than %d characters", path, lineno, LINE_MAX_LEN - 2);
            goto err;
        }
        /* '#' is a Z85 character: a comment starts a line or follows a blank. */
        buf[strcspn(buf, "\n")] = '\0';
        char *line = trim(buf);
        if (!*line || *line == '#')
            continue;
        for (char *h = line; (h = strchr(h, '#')); h++)
            if (h[-1] == ' ' || h[-1] == '\t') {
                *h = '\0';
                line = trim(line);
                break;
            }
        if (al.n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            void *k = realloc(al.keys, nc * sizeof *al.keys);
            if (k)
                al.keys = k;
            void *nm = k ? realloc(al.names, nc * sizeof *al.names) : NULL;
            if (nm)
                al.names = nm;
            void *pl = nm ? realloc(al.policy, nc * sizeof *al.policy) : NULL;
            if (!k || !nm || !pl) {
                fp_error_set("out of memory reading %s", path);
                goto err;
            }
            al.policy = pl;
            cap = nc;
        }
        if (allow_line(path, lineno, line, al.keys[al.n], al.names[al.n], &al.policy[al.n]) < 0)
            goto err;
        if (fp_allowlist_find(&al, al.keys[al.n]) >= 0) {
            fp_error_set("%s:%d: key listed twice", path, lineno);
            goto err;
        }
        if (al.names[al.n][0] && fp_allowlist_find_id(&al, al.names[al.n]) >= 0) {
            fp_error_set("%s:%d: name '%s' listed twice: one id belongs to one key", path,
                         lineno, al.names[al.n]);
            goto err;
        }
        al.n++;
    }
    if (ferror(f)) {
        fp_error_set("%s: read error", path);
        goto err;
    }
    fclose(f);
    fp_allowlist_free(out);
    *out = al;
    return 0;
err:
    fclose(f);
    fp_allowlist_free(&al);
    return -1;
}

long fp_allowlist_find(const fp_allowlist *al, const uint8_t key[FP_KEY_BYTES])
{
    long found = -1;
    if (!al)
        return -1;
    /* Every entry is compared (constant time per entry), whatever matches. */
    for (size_t i = 0; i < al->n; i++)
        if (sodium_memcmp(al->keys[i], key, FP_KEY_BYTES) == 0 && found < 0)
            found = (long)i;
    return found;
}

long fp_allowlist_find_id(const fp_allowlist *al, const char *id)
{
    if (!al || !id || !*id)
        return -1;
    char z85[FP_KEY_Z85_LEN + 1];
    for (size_t i = 0; i < al->n; i++) {
        const char *own = al->names[i];
        if (!own[0]) {
            zmq_z85_encode(z85, al->keys[i], FP_KEY_BYTES);
            own = z85;
        }
        if (strcmp(own, id) == 0)
            return (long)i;
    }
    return -1;
}

void fp_allowlist_free(fp_allowlist *al)
{
    if (!al)
        return;
    free(al->keys);
    free(al->names);
    free(al->policy);
    memset(al, 0, sizeof *al);
}

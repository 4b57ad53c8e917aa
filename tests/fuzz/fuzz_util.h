/* fuzz_util.h - what the libFuzzer harnesses share: a private temporary
 * directory for the decoders that take a path, and writing the input there.
 *
 * Each harness process makes one directory under $TMPDIR (or /tmp) on first
 * use and removes what it wrote there at exit, so parallel jobs (-jobs=N) and
 * crashed runs do not step on each other. Header-only: each harness is one
 * translation unit, built as in tests/fuzz/CMakeLists.txt.
 */
#ifndef FP_FUZZ_UTIL_H
#define FP_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fp_error.h"

static char fz_dir[512];

static inline void fz_cleanup(void)
{
    /* Only the names the harnesses use; a subdirectory is one level deep. */
    static const char *const names[] = {
        "input", "input.key", "input.pub", "tokenizer.json", "tokenizer_config.json",
        "config.json", "adapter_config.json", "adapter_model.safetensors", "config.ini",
        "tok/tokenizer.json", "tok", NULL};
    char p[600];
    for (int i = 0; names[i]; i++) {
        snprintf(p, sizeof p, "%s/%s", fz_dir, names[i]);
        remove(p);
    }
    rmdir(fz_dir);
}

/* The harness's directory (created on first call; aborts if it cannot be:
 * the harness would test nothing). */
static inline const char *fz_tmpdir(void)
{
    if (!fz_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fz_dir, sizeof fz_dir, "%s/fpfuzz.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(fz_dir)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fz_cleanup);
    }
    return fz_dir;
}

/* Writes len bytes to DIR/name with the given mode and returns the path
 * (static buffer per call site is the caller's business: copy it). */
static inline const char *fz_write(const char *name, const void *data, size_t len, mode_t mode)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", fz_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
        perror("fuzz: writing the input");
        abort();
    }
    chmod(path, mode);
    return path;
}

/* With FP_FUZZ_VERBOSE=1 in the environment, says whether the decoder took
 * the input and why not: for checking that seeds parse (run the harness on
 * the corpus files as arguments). Returns ok. */
static inline int fz_verdict(const char *what, int ok)
{
    static int verbose = -1;
    if (verbose < 0) {
        const char *v = getenv("FP_FUZZ_VERBOSE");
        verbose = v && *v && *v != '0';
    }
    if (verbose)
        fprintf(stderr, "%s: %s%s\n", what, ok ? "accepted" : "refused: ", ok ? "" : fp_error_get());
    return ok;
}

/* A tiny GPT-2-style byte-level tokenizer.json: the 256 byte pieces of
 * bytes_to_unicode (so every text encodes, nothing is unknown), a few merges
 * and <|endoftext|> as a special added token. Caller frees. */
static inline char *fz_tiny_tokenizer_json(void)
{
    static const char *const merges[][2] = {
        {"\xc4\xa0", "t"}, {"h", "e"}, {"\xc4\xa0t", "he"}, {"i", "n"}, {"e", "r"}};
    size_t cap = 16384, len = 0;
    char *s = malloc(cap);
    if (!s)
        abort();
    len += snprintf(s + len, cap - len, "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":261,"
                    "\"content\":\"<|endoftext|>\",\"special\":true}],\"normalizer\":null,"
                    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                    "\"use_regex\":true},\"post_processor\":null,\"decoder\":{\"type\":"
                    "\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{");
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        /* bytes_to_unicode: printable Latin-1 maps to itself, the rest to 256.. */
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        unsigned cp = printable ? (unsigned)b : 256u + (unsigned)extra++;
        char u[4];
        int ul = 0;
        if (cp < 0x80) {
            u[ul++] = (char)cp;
        } else {
            u[ul++] = (char)(0xC0 | cp >> 6);
            u[ul++] = (char)(0x80 | (cp & 0x3F));
        }
        len += snprintf(s + len, cap - len, "%s\"%s%.*s\":%d", b ? "," : "",
                        cp == '"' || cp == '\\' ? "\\" : "", ul, u, b);
    }
    for (size_t i = 0; i < sizeof merges / sizeof merges[0]; i++)
        len += snprintf(s + len, cap - len, ",\"%s%s\":%zu", merges[i][0], merges[i][1], 256 + i);
    len += snprintf(s + len, cap - len, "},\"merges\":[");
    for (size_t i = 0; i < sizeof merges / sizeof merges[0]; i++)
        len += snprintf(s + len, cap - len, "%s\"%s %s\"", i ? "," : "", merges[i][0],
                        merges[i][1]);
    snprintf(s + len, cap - len, "]}}");
    return s;
}

/* Splits data at its first NUL byte: [data, *head_len) and the rest after the
 * NUL (*tail NULL when there is none). For harnesses that feed two files. */
static inline void fz_split(const uint8_t *data, size_t len, size_t *head_len,
                     const uint8_t **tail, size_t *tail_len)
{
    const uint8_t *z = memchr(data, 0, len);
    *head_len = z ? (size_t)(z - data) : len;
    *tail = z ? z + 1 : NULL;
    *tail_len = z ? len - *head_len - 1 : 0;
}

#endif

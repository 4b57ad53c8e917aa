/* tokenizer_util.c - buffers, UTF-8, hash maps and JSON helpers shared by
 * the tokenizer files. */
#include "tokenizer_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- buffers */

int tok_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need)
        nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q)
        return fp_error_set("tokenizer: out of memory (%zu bytes)", nc * elem);
    *p = q;
    *cap = nc;
    return 0;
}

int sbuf_put(sbuf *b, const void *d, size_t n)
{
    if (tok_grow((void **)&b->p, &b->cap, b->len + n + 1, 1) != 0)
        return -1;
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int ivec_push(ivec *v, int32_t x)
{
    if (tok_grow((void **)&v->p, &v->cap, v->len + 1, sizeof *v->p) != 0)
        return -1;
    v->p[v->len++] = x;
    return 0;
}

int tstr_dup(tstr *d, const char *s, size_t len)
{
    d->s = malloc(len + 1);
    if (!d->s)
        return fp_error_set("tokenizer: out of memory");
    memcpy(d->s, s, len);
    d->s[len] = '\0';
    d->len = len;
    return 0;
}

int put_replaced(sbuf *out, const char *s, size_t len, const tstr *pat, const tstr *rep)
{
    size_t i = 0, from = 0;
    if (pat->len == 0)
        return sbuf_put(out, s, len);
    while (i + pat->len <= len) {
        if (memcmp(s + i, pat->s, pat->len) == 0) {
            if (sbuf_put(out, s + from, i - from) || sbuf_put(out, rep->s, rep->len))
                return -1;
            i += pat->len;
            from = i;
        } else {
            i++;
        }
    }
    return sbuf_put(out, s + from, len - from);
}

/* Length of the UTF-8 character at s (1 for an invalid byte, so that invalid
 * input still advances and falls back to bytes). */
size_t utf8_len(const unsigned char *s, size_t avail)
{
    size_t n = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 1;
    if (n > avail)
        return 1;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 1;
    return n;
}

int utf8_valid(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len(s + i, len - i);
        if (n == 1 && s[i] >= 0x80)
            return 0;
        i += n;
    }
    return 1;
}

size_t utf8_strict(const unsigned char *s, size_t avail)
{
    unsigned c = s[0];
    size_t n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
             : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (n <= 1)
        return n;
    if (n > avail)
        return 0;
    /* the second byte's range rules out overlongs, surrogates and > U+10FFFF */
    unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
    unsigned hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

int put_utf8_lossy(sbuf *out, const unsigned char *s, size_t len)
{
    size_t from = 0, i = 0;
    if (len == 0)   /* s may be NULL (nothing decoded): no s + 0 */
        return sbuf_put(out, "", 0);
    while (i < len) {
        size_t n = utf8_strict(s + i, len - i);
        if (n) {
            i += n;
            continue;
        }
        if (sbuf_put(out, s + from, i - from) != 0 || sbuf_put(out, "\xef\xbf\xbd", 3) != 0)
            return -1;
        /* skip the maximal prefix of a well-formed sequence, at least 1 byte */
        size_t k = 1;
        unsigned c = s[i];
        size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                    : c >= 0xF0 && c <= 0xF4 ? 4 : 1;
        unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
        unsigned hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (need > 1 && i + 1 < len && s[i + 1] >= lo && s[i + 1] <= hi) {
            k = 2;
            while (k < need && i + k < len && (s[i + k] & 0xC0) == 0x80)
                k++;
        }
        i += k;
        from = i;
    }
    return sbuf_put(out, s + from, len - from);
}

/* ------------------------------------------------------------- hash maps */

uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33; /* murmur3 finalizer */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}


int strmap_init(strmap *m, const tstr *keys, size_t n)
{
    size_t cap = pow2_at_least(2 * n + 1);
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots)
        return fp_error_set("tokenizer: out of memory");
    m->mask = cap - 1;
    m->keys = keys;
    return 0;
}

int32_t strmap_get(const strmap *m, const char *s, size_t len)
{
    if (!m->slots)
        return -1;
    for (size_t i = hash_bytes(s, len) & m->mask;; i = (i + 1) & m->mask) {
        uint32_t v = m->slots[i];
        if (v == 0)
            return -1;
        const tstr *k = &m->keys[v - 1];
        if (k->len == len && memcmp(k->s, s, len) == 0)
            return (int32_t)(v - 1);
    }
}

/* Later duplicates replace earlier ones, as a JSON map or Python dict would. */
void strmap_put(strmap *m, int32_t id)
{
    const tstr *key = &m->keys[id];
    for (size_t i = hash_bytes(key->s, key->len) & m->mask;; i = (i + 1) & m->mask) {
        uint32_t v = m->slots[i];
        const tstr *k = v ? &m->keys[v - 1] : NULL;
        if (v == 0 || (k->len == key->len && memcmp(k->s, key->s, key->len) == 0)) {
            m->slots[i] = (uint32_t)id + 1;
            return;
        }
    }
}


static uint64_t merge_key(int32_t l, int32_t r)
{
    return ((uint64_t)(uint32_t)(l + 1) << 32) | (uint32_t)r;
}

const mslot *merge_get(const mslot *tab, size_t mask, int32_t l, int32_t r)
{
    uint64_t key = merge_key(l, r);
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        if (tab[i].key == key)
            return &tab[i];
        if (tab[i].key == 0)
            return NULL;
    }
}

/* A repeated pair keeps the later rank, as tokenizers' HashMap collect does. */
void merge_put(mslot *tab, size_t mask, int32_t l, int32_t r, uint32_t rank, int32_t id)
{
    uint64_t key = merge_key(l, r);
    size_t i = hash_u64(key) & mask;
    while (tab[i].key != 0 && tab[i].key != key)
        i = (i + 1) & mask;
    tab[i] = (mslot){ key, rank, id };
}
/* ----------------------------------------------------------- JSON helpers */

char *tok_read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    if (!f) {
        fp_error_set("%s: cannot open (%s)", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0)
        goto err;
    long n = ftell(f);
    if (n < 0 || (unsigned long)n > TOK_MAX_FILE || fseek(f, 0, SEEK_SET) != 0)
        goto err;
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        goto err;
    buf[n] = '\0';
    *len = (size_t)n;
    fclose(f);
    return buf;
err:
    fp_error_set("%s: cannot read (not a regular file, too large, or I/O error)", path);
    free(buf);
    fclose(f);
    return NULL;
}

cJSON *tok_parse_json_file(const char *path)
{
    size_t len;
    char *text = tok_read_whole(path, &len);
    if (!text)
        return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t off = end ? (size_t)(end - text) : 0, line = 1;
        if (off > len)
            off = len;
        for (size_t i = 0; i < off; i++)
            line += text[i] == '\n';
        fp_error_set("%s:%zu: invalid JSON near \"%.30s\" (is this a tokenizer.json?)", path,
                     line, text + off);
    }
    free(text);
    return root;
}

const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int jbool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

int jid(const cJSON *v, int32_t *out)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TOK_MAX_ID ||
        v->valuedouble != floor(v->valuedouble))
        return -1;
    *out = (int32_t)v->valuedouble;
    return 0;
}

/* The "String" of a Replace pattern; Regex patterns are refused. */
int jpattern(const char *path, const char *where, const cJSON *o, tstr *out)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s = pat ? jstr(pat, "String") : NULL;
    if (!s) {
        if (pat && cJSON_GetObjectItemCaseSensitive(pat, "Regex"))
            return fp_error_set("%s: %s Replace with a Regex pattern is not supported yet "
                                "(only {\"String\": ...})", path, where);
        return fp_error_set("%s: %s Replace needs pattern {\"String\": ...}", path, where);
    }
    return tstr_dup(out, s, strlen(s));
}

int scheme_of(const char *path, const char *where, const cJSON *o, int *scheme)
{
    const char *s = jstr(o, "prepend_scheme");
    if (!s) /* older files: add_prefix_space */
        *scheme = jbool(o, "add_prefix_space", 1) ? SCHEME_ALWAYS : SCHEME_NEVER;
    else if (!strcmp(s, "always"))
        *scheme = SCHEME_ALWAYS;
    else if (!strcmp(s, "first"))
        *scheme = SCHEME_FIRST;
    else if (!strcmp(s, "never"))
        *scheme = SCHEME_NEVER;
    else
        return fp_error_set("%s: %s Metaspace prepend_scheme '%s' is unknown "
                            "(expected always, first or never)", path, where, s);
    return 0;
}

int metaspace_repl(const char *path, const char *where, const cJSON *o, tstr *out)
{
    const char *r = jstr(o, "replacement");
    if (!r)
        r = "\xe2\x96\x81";
    if (!*r)
        return fp_error_set("%s: %s Metaspace replacement is empty", path, where);
    return tstr_dup(out, r, strlen(r));
}

/* A stage is null, one component, or a Sequence of components under `list`. */
const cJSON *stage_items(const cJSON *o, const char *list, int *n)
{
    const char *type = jstr(o, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(o, list);
        *n = cJSON_IsArray(items) ? cJSON_GetArraySize(items) : -1;
        return items;
    }
    *n = 1;
    return o;
}

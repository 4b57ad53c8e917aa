/* tokenizer.c - Hugging Face tokenizer.json (SentencePiece-style BPE).
 *
 * Encoding runs the stages tokenizers runs, in order:
 *   added tokens split -> normalizer -> pre-tokenizer -> model (BPE) -> ids
 * and decoding maps ids to pieces and runs the decoder chain. Each stage is a
 * small list of ops (norm_op, pre_op, dec_op) so that byte-level BPE (GPT-2)
 * can be added later as one more pre_op/dec_op kind without touching BPE.
 *
 * Semantics follow huggingface/tokenizers where they differ from SentencePiece
 * (e.g. Prepend runs per non-added segment, merges by rank then position).
 */
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TOK_MAX_ID (1 << 24)     /* bounds ids read from files before allocating */
#define TOK_MAX_FILE (1u << 30)  /* 1 GiB: larger tokenizer.json is surely wrong */

typedef struct { char *s; size_t len; } tstr;

/* ---------------------------------------------------------------- buffers */

typedef struct { char *p; size_t len, cap; } sbuf;
typedef struct { int32_t *p; size_t len, cap; } ivec;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
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

static int sbuf_put(sbuf *b, const void *d, size_t n)
{
    if (grow((void **)&b->p, &b->cap, b->len + n + 1, 1) != 0)
        return -1;
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int ivec_push(ivec *v, int32_t x)
{
    if (grow((void **)&v->p, &v->cap, v->len + 1, sizeof *v->p) != 0)
        return -1;
    v->p[v->len++] = x;
    return 0;
}

static int tstr_dup(tstr *d, const char *s, size_t len)
{
    d->s = malloc(len + 1);
    if (!d->s)
        return fp_error_set("tokenizer: out of memory");
    memcpy(d->s, s, len);
    d->s[len] = '\0';
    d->len = len;
    return 0;
}

/* Appends s with every non-overlapping `pat` replaced by `rep`. */
static int put_replaced(sbuf *out, const char *s, size_t len, const tstr *pat, const tstr *rep)
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
static size_t utf8_len(const unsigned char *s, size_t avail)
{
    size_t n = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 1;
    if (n > avail)
        return 1;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 1;
    return n;
}

static int utf8_valid(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len(s + i, len - i);
        if (n == 1 && s[i] >= 0x80)
            return 0;
        i += n;
    }
    return 1;
}

/* ------------------------------------------------------------- hash maps */

static uint64_t hash_bytes(const char *s, size_t len)
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

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

/* piece -> id; slots hold id+1 (0 = empty); keys[id] is the piece. */
typedef struct { uint32_t *slots; size_t mask; const tstr *keys; } strmap;

static int strmap_init(strmap *m, const tstr *keys, size_t n)
{
    size_t cap = pow2_at_least(2 * n + 1);
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots)
        return fp_error_set("tokenizer: out of memory");
    m->mask = cap - 1;
    m->keys = keys;
    return 0;
}

static int32_t strmap_get(const strmap *m, const char *s, size_t len)
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
static void strmap_put(strmap *m, int32_t id)
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

/* (left_id, right_id) -> (rank, merged_id). key 0 = empty. */
typedef struct { uint64_t key; uint32_t rank; int32_t id; } mslot;

static uint64_t merge_key(int32_t l, int32_t r)
{
    return ((uint64_t)(uint32_t)(l + 1) << 32) | (uint32_t)r;
}

static const mslot *merge_get(const mslot *tab, size_t mask, int32_t l, int32_t r)
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
static void merge_put(mslot *tab, size_t mask, int32_t l, int32_t r, uint32_t rank, int32_t id)
{
    uint64_t key = merge_key(l, r);
    size_t i = hash_u64(key) & mask;
    while (tab[i].key != 0 && tab[i].key != key)
        i = (i + 1) & mask;
    tab[i] = (mslot){ key, rank, id };
}

/* ------------------------------------------------------------ the object */

enum { NORM_PREPEND, NORM_REPLACE };
enum { PRE_METASPACE };
enum { DEC_REPLACE, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
enum { SCHEME_ALWAYS, SCHEME_FIRST, SCHEME_NEVER };

typedef struct { int kind; tstr a, b; } norm_op;          /* Prepend a | Replace a->b */
typedef struct { int kind; tstr repl; int scheme, split; } pre_op;
typedef struct { int kind; tstr a, b; int start, stop, scheme; } dec_op;
typedef struct { tstr content; int32_t id; int special; } added_tok;

struct fp_tokenizer {
    char *path;
    /* model: BPE */
    tstr *vocab;            /* model pieces by id; a hole has s == NULL */
    size_t n_vocab;
    strmap vmap;
    mslot *merges;
    size_t merge_mask;
    int32_t unk, byte_id[256];
    int byte_fallback, fuse_unk, ignore_merges;
    /* added tokens, matched literally in the raw text */
    added_tok *added;
    size_t n_added;
    unsigned char added_first[256];
    /* stages */
    norm_op *norm;
    size_t n_norm;
    pre_op *pre;
    size_t n_pre;
    dec_op *dec;
    size_t n_dec;
    int has_decoder;
    /* id -> text (added content wins), id -> special */
    const tstr **id_str;
    unsigned char *id_special;
    size_t n_ids;
    int32_t bos, eos;
};

void fp_tokenizer_free(fp_tokenizer **self_p)
{
    if (!self_p || !*self_p)
        return;
    fp_tokenizer *t = *self_p;
    for (size_t i = 0; i < t->n_vocab; i++)
        free(t->vocab[i].s);
    for (size_t i = 0; i < t->n_added; i++)
        free(t->added[i].content.s);
    for (size_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a.s);
        free(t->norm[i].b.s);
    }
    for (size_t i = 0; i < t->n_pre; i++)
        free(t->pre[i].repl.s);
    for (size_t i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a.s);
        free(t->dec[i].b.s);
    }
    free(t->vocab);
    free(t->vmap.slots);
    free(t->merges);
    free(t->added);
    free(t->norm);
    free(t->pre);
    free(t->dec);
    free(t->id_str);
    free(t->id_special);
    free(t->path);
    free(t);
    *self_p = NULL;
}

int fp_tokenizer_vocab_size(const fp_tokenizer *self) { return (int)self->n_ids; }
int fp_tokenizer_bos(const fp_tokenizer *self) { return self->bos; }
int fp_tokenizer_eos(const fp_tokenizer *self) { return self->eos; }

/* ----------------------------------------------------------- JSON helpers */

static char *read_whole(const char *path, size_t *len)
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

static cJSON *parse_json_file(const char *path)
{
    size_t len;
    char *text = read_whole(path, &len);
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

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static int jid(const cJSON *v, int32_t *out)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TOK_MAX_ID ||
        v->valuedouble != floor(v->valuedouble))
        return -1;
    *out = (int32_t)v->valuedouble;
    return 0;
}

/* The "String" of a Replace pattern; Regex patterns are refused. */
static int jpattern(const char *path, const char *where, const cJSON *o, tstr *out)
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

static int scheme_of(const char *path, const char *where, const cJSON *o, int *scheme)
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

static int metaspace_repl(const char *path, const char *where, const cJSON *o, tstr *out)
{
    const char *r = jstr(o, "replacement");
    if (!r)
        r = "\xe2\x96\x81";
    if (!*r)
        return fp_error_set("%s: %s Metaspace replacement is empty", path, where);
    return tstr_dup(out, r, strlen(r));
}

/* ------------------------------------------------------------- loading */

static int load_vocab(fp_tokenizer *t, const char *path, const cJSON *vocab)
{
    if (!cJSON_IsObject(vocab))
        return fp_error_set("%s: model.vocab must be an object of piece -> id", path);
    size_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id;
        if (jid(it, &id) != 0)
            return fp_error_set("%s: model.vocab['%s'] is not an id in [0, %d)", path,
                                it->string, TOK_MAX_ID);
        if ((size_t)id + 1 > n)
            n = (size_t)id + 1;
    }
    t->vocab = calloc(n ? n : 1, sizeof *t->vocab);
    if (!t->vocab)
        return fp_error_set("tokenizer: out of memory");
    t->n_vocab = n;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        if (t->vocab[id].s)
            return fp_error_set("%s: model.vocab: id %d is used by both '%s' and '%s'", path,
                                (int)id, t->vocab[id].s, it->string);
        if (tstr_dup(&t->vocab[id], it->string, strlen(it->string)) != 0)
            return -1;
    }
    if (strmap_init(&t->vmap, t->vocab, n) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (t->vocab[i].s)
            strmap_put(&t->vmap, (int32_t)i);
    return 0;
}

/* One merge, either "a b" or ["a", "b"]; a, b point into the JSON. */
static int merge_parts(const cJSON *m, tstr *a, tstr *b)
{
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return -1;
        *a = (tstr){ (char *)s, (size_t)(sp - s) };
        *b = (tstr){ (char *)sp + 1, strlen(sp + 1) };
        return 0;
    }
    if (cJSON_GetArraySize(m) != 2)
        return -1;
    const cJSON *l = cJSON_GetArrayItem(m, 0), *r = cJSON_GetArrayItem(m, 1);
    if (!cJSON_IsString(l) || !cJSON_IsString(r))
        return -1;
    *a = (tstr){ l->valuestring, strlen(l->valuestring) };
    *b = (tstr){ r->valuestring, strlen(r->valuestring) };
    return 0;
}

static int load_merges(fp_tokenizer *t, const char *path, const cJSON *merges)
{
    sbuf cat = { 0 };
    if (!cJSON_IsArray(merges))
        return fp_error_set("%s: model.merges must be an array", path);
    size_t n = (size_t)cJSON_GetArraySize(merges), cap = pow2_at_least(2 * n + 1);
    t->merges = calloc(cap, sizeof *t->merges);
    if (!t->merges)
        return fp_error_set("tokenizer: out of memory");
    t->merge_mask = cap - 1;
    uint32_t rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        tstr a, b;
        if (merge_parts(m, &a, &b) != 0) {
            fp_error_set("%s: model.merges[%u] must be \"a b\" or [\"a\", \"b\"]", path, rank);
            goto err;
        }
        cat.len = 0;
        if (sbuf_put(&cat, a.s, a.len) || sbuf_put(&cat, b.s, b.len))
            goto err;
        int32_t l = strmap_get(&t->vmap, a.s, a.len), r = strmap_get(&t->vmap, b.s, b.len);
        int32_t id = strmap_get(&t->vmap, cat.p, cat.len);
        if (l < 0 || r < 0 || id < 0) {
            fp_error_set("%s: model.merges[%u] ('%.*s', '%.*s'): '%s' is not in model.vocab "
                         "(corrupt or mismatched tokenizer.json)", path, rank, (int)a.len, a.s,
                         (int)b.len, b.s, l < 0 ? a.s : r < 0 ? b.s : cat.p);
            goto err;
        }
        merge_put(t->merges, t->merge_mask, l, r, rank++, id);
    }
    free(cat.p);
    return 0;
err:
    free(cat.p);
    return -1;
}

static int load_model(fp_tokenizer *t, const char *path, const cJSON *model)
{
    const char *type = jstr(model, "type");
    if (!cJSON_IsObject(model))
        return fp_error_set("%s: no \"model\" object (is this a tokenizer.json?)", path);
    if (type && strcmp(type, "BPE") != 0)
        return fp_error_set("%s: model type '%s' is not supported yet (SentencePiece-style "
                            "BPE only)", path, type);
    const char *keys[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    for (size_t i = 0; i < 2; i++) {
        const char *v = jstr(model, keys[i]);
        if (v && *v)
            return fp_error_set("%s: model.%s '%s' is not supported yet", path, keys[i], v);
    }
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(drop) && drop->valuedouble != 0.0)
        return fp_error_set("%s: model.dropout %g is not supported (set it to null for "
                            "inference)", path, drop->valuedouble);
    if (load_vocab(t, path, cJSON_GetObjectItemCaseSensitive(model, "vocab")) != 0 ||
        load_merges(t, path, cJSON_GetObjectItemCaseSensitive(model, "merges")) != 0)
        return -1;
    const char *unk = jstr(model, "unk_token");
    t->unk = unk ? strmap_get(&t->vmap, unk, strlen(unk)) : -1;
    if (unk && t->unk < 0)
        return fp_error_set("%s: model.unk_token '%s' is not in model.vocab", path, unk);
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = strmap_get(&t->vmap, name, 6);
    }
    return 0;
}

static int load_added(fp_tokenizer *t, const char *path, const cJSON *arr)
{
    if (!arr || cJSON_IsNull(arr))
        return 0;
    if (!cJSON_IsArray(arr))
        return fp_error_set("%s: added_tokens must be an array", path);
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added)
        return fp_error_set("tokenizer: out of memory");
    const cJSON *a;
    cJSON_ArrayForEach(a, arr) {
        added_tok *at = &t->added[t->n_added];
        const char *content = jstr(a, "content");
        if (!content || !*content ||
            jid(cJSON_GetObjectItemCaseSensitive(a, "id"), &at->id) != 0)
            return fp_error_set("%s: added_tokens[%zu] needs a non-empty \"content\" and an "
                                "\"id\" in [0, %d)", path, t->n_added, TOK_MAX_ID);
        if (tstr_dup(&at->content, content, strlen(content)) != 0)
            return -1;
        at->special = jbool(a, "special", 0);
        t->added_first[(unsigned char)content[0]] = 1;
        t->n_added++;
    }
    return 0;
}

static int load_norm_one(fp_tokenizer *t, const char *path, const cJSON *o)
{
    const char *type = jstr(o, "type");
    norm_op *op = &t->norm[t->n_norm];
    if (type && !strcmp(type, "Prepend")) {
        const char *p = jstr(o, "prepend");
        if (!p)
            return fp_error_set("%s: normalizer Prepend needs a \"prepend\" string", path);
        op->kind = NORM_PREPEND;
        if (tstr_dup(&op->a, p, strlen(p)) != 0)
            return -1;
    } else if (type && !strcmp(type, "Replace")) {
        const char *c = jstr(o, "content");
        op->kind = NORM_REPLACE;
        if (!c)
            return fp_error_set("%s: normalizer Replace needs a \"content\" string", path);
        if (jpattern(path, "normalizer", o, &op->a) || tstr_dup(&op->b, c, strlen(c)))
            return -1;
    } else {
        return fp_error_set("%s: normalizer type '%s' is not supported yet (SentencePiece-style "
                            "BPE only: Prepend, Replace)", path, type ? type : "(none)");
    }
    t->n_norm++;
    return 0;
}

/* A stage is null, one component, or a Sequence of components under `list`. */
static const cJSON *stage_items(const cJSON *o, const char *list, int *n)
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

static int load_normalizer(fp_tokenizer *t, const char *path, const cJSON *o)
{
    int n;
    if (!o || cJSON_IsNull(o))
        return 0;
    const cJSON *items = stage_items(o, "normalizers", &n);
    if (n < 0)
        return fp_error_set("%s: normalizer Sequence needs a \"normalizers\" array", path);
    t->norm = calloc((size_t)n + 1, sizeof *t->norm);
    if (!t->norm)
        return fp_error_set("tokenizer: out of memory");
    if (items == o)
        return load_norm_one(t, path, o);
    const cJSON *it;
    cJSON_ArrayForEach(it, items)
        if (load_norm_one(t, path, it) != 0)
            return -1;
    return 0;
}

static int load_pre_one(fp_tokenizer *t, const char *path, const cJSON *o)
{
    const char *type = jstr(o, "type");
    pre_op *op = &t->pre[t->n_pre];
    if (!type || strcmp(type, "Metaspace") != 0)
        return fp_error_set("%s: pre_tokenizer type '%s' is not supported yet (SentencePiece-"
                            "style BPE only)", path, type ? type : "(none)");
    op->kind = PRE_METASPACE;
    op->split = jbool(o, "split", 1);
    if (scheme_of(path, "pre_tokenizer", o, &op->scheme) ||
        metaspace_repl(path, "pre_tokenizer", o, &op->repl))
        return -1;
    t->n_pre++;
    return 0;
}

static int load_pre_tokenizer(fp_tokenizer *t, const char *path, const cJSON *o)
{
    int n;
    if (!o || cJSON_IsNull(o))
        return 0;
    const cJSON *items = stage_items(o, "pretokenizers", &n);
    if (n < 0)
        return fp_error_set("%s: pre_tokenizer Sequence needs a \"pretokenizers\" array", path);
    t->pre = calloc((size_t)n + 1, sizeof *t->pre);
    if (!t->pre)
        return fp_error_set("tokenizer: out of memory");
    if (items == o)
        return load_pre_one(t, path, o);
    const cJSON *it;
    cJSON_ArrayForEach(it, items)
        if (load_pre_one(t, path, it) != 0)
            return -1;
    return 0;
}

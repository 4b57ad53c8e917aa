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
    int split_at_meta;      /* see meta_split_safe() */
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

/* BPE over a whole text is exact but its heap gets large and cache-cold. If
 * "\u2581" is in the vocab and occurs in pieces only as a leading run (true of
 * LLaMA's vocab), no piece, hence no merge, can span a boundary just before a
 * "\u2581" that follows another character: the text may then be cut there and
 * each part merged alone with the same result. */
static int meta_split_safe(const fp_tokenizer *t)
{
    static const char meta[] = "\xe2\x96\x81";
    if (strmap_get(&t->vmap, meta, 3) < 0)
        return 0;
    for (size_t i = 0; i < t->n_vocab; i++) {
        const tstr *p = &t->vocab[i];
        size_t k = 0;
        while (p->s && k + 3 <= p->len && !memcmp(p->s + k, meta, 3))
            k += 3;
        if (p->s && memmem(p->s + k, p->len - k, meta, 3))
            return 0;
    }
    return 1;
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
    t->split_at_meta = meta_split_safe(t);
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

static int load_dec_one(fp_tokenizer *t, const char *path, const cJSON *o)
{
    const char *type = jstr(o, "type");
    dec_op *op = &t->dec[t->n_dec];
    if (type && !strcmp(type, "Replace")) {
        const char *c = jstr(o, "content");
        op->kind = DEC_REPLACE;
        if (!c)
            return fp_error_set("%s: decoder Replace needs a \"content\" string", path);
        if (jpattern(path, "decoder", o, &op->a) || tstr_dup(&op->b, c, strlen(c)))
            return -1;
    } else if (type && !strcmp(type, "ByteFallback")) {
        op->kind = DEC_BYTE_FALLBACK;
    } else if (type && !strcmp(type, "Fuse")) {
        op->kind = DEC_FUSE;
    } else if (type && !strcmp(type, "Strip")) {
        const char *c = jstr(o, "content");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "start");
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(o, "stop");
        if (!c || utf8_len((const unsigned char *)c, strlen(c)) != strlen(c) ||
            !cJSON_IsNumber(st) || !cJSON_IsNumber(sp) || st->valuedouble < 0 ||
            sp->valuedouble < 0 || st->valuedouble > 1e6 || sp->valuedouble > 1e6)
            return fp_error_set("%s: decoder Strip needs one \"content\" character and "
                                "\"start\"/\"stop\" counts", path);
        op->kind = DEC_STRIP;
        op->start = (int)st->valuedouble;
        op->stop = (int)sp->valuedouble;
        if (tstr_dup(&op->a, c, strlen(c)) != 0)
            return -1;
    } else if (type && !strcmp(type, "Metaspace")) {
        op->kind = DEC_METASPACE;
        if (scheme_of(path, "decoder", o, &op->scheme) ||
            metaspace_repl(path, "decoder", o, &op->a))
            return -1;
    } else {
        return fp_error_set("%s: decoder type '%s' is not supported yet (SentencePiece-style "
                            "BPE only: Replace, ByteFallback, Fuse, Strip, Metaspace)", path,
                            type ? type : "(none)");
    }
    t->n_dec++;
    return 0;
}

static int load_decoder(fp_tokenizer *t, const char *path, const cJSON *o)
{
    int n;
    if (!o || cJSON_IsNull(o))
        return 0;
    t->has_decoder = 1;
    const cJSON *items = stage_items(o, "decoders", &n);
    if (n < 0)
        return fp_error_set("%s: decoder Sequence needs a \"decoders\" array", path);
    t->dec = calloc((size_t)n + 1, sizeof *t->dec);
    if (!t->dec)
        return fp_error_set("tokenizer: out of memory");
    if (items == o)
        return load_dec_one(t, path, o);
    const cJSON *it;
    cJSON_ArrayForEach(it, items)
        if (load_dec_one(t, path, it) != 0)
            return -1;
    return 0;
}

/* BOS = the special token a TemplateProcessing puts before $A; -1 if none. */
static int template_bos(const char *path, const cJSON *o, int32_t *bos)
{
    const char *type = jstr(o, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "processors"))
            if (template_bos(path, it, bos) != 0)
                return -1;
        return 0;
    }
    if (type && !strcmp(type, "ByteLevel"))
        return 0; /* only adjusts offsets */
    if (!type || strcmp(type, "TemplateProcessing") != 0)
        return fp_error_set("%s: post_processor type '%s' is not supported yet "
                            "(TemplateProcessing only)", path, type ? type : "(none)");
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "single"), 0);
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken");
    const char *name = jstr(sp, "id");
    if (!name)
        return 0;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(o, "special_tokens"), name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(st, "ids");
    if (cJSON_GetArraySize(ids) != 1 || jid(cJSON_GetArrayItem(ids, 0), bos) != 0)
        return fp_error_set("%s: post_processor special_tokens['%s'] needs \"ids\" with one "
                            "id", path, name);
    return 0;
}

/* Id of a token named in tokenizer_config.json (a string or {"content": ...}). */
static int32_t config_token(const fp_tokenizer *t, const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *name = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
    if (!name)
        return -1;
    for (size_t i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content.s, name))
            return t->added[i].id;
    return strmap_get(&t->vmap, name, strlen(name));
}

/* tokenizer_config.json next to tokenizer.json decides BOS when the
 * post_processor does not, can turn it off (add_bos_token false), and names EOS. */
static int load_config(fp_tokenizer *t, const char *dir)
{
    char cpath[4200];
    struct stat st;
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    if (stat(cpath, &st) != 0)
        return 0;
    cJSON *cfg = parse_json_file(cpath);
    if (!cfg)
        return -1;
    const cJSON *add_bos = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    if (cJSON_IsFalse(add_bos))
        t->bos = -1;
    else if (cJSON_IsTrue(add_bos) && t->bos < 0)
        t->bos = config_token(t, cfg, "bos_token");
    t->eos = config_token(t, cfg, "eos_token");
    cJSON_Delete(cfg);
    return 0;
}

/* id -> text table over model vocab and added tokens (added content wins, as
 * tokenizers' id_to_token asks the added vocabulary first). */
static int build_id_table(fp_tokenizer *t)
{
    size_t n = t->n_vocab;
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id + 1 > n)
            n = (size_t)t->added[i].id + 1;
    t->id_str = calloc(n ? n : 1, sizeof *t->id_str);
    t->id_special = calloc(n ? n : 1, 1);
    if (!t->id_str || !t->id_special)
        return fp_error_set("tokenizer: out of memory");
    t->n_ids = n;
    for (size_t i = 0; i < t->n_vocab; i++)
        if (t->vocab[i].s)
            t->id_str[i] = &t->vocab[i];
    for (size_t i = 0; i < t->n_added; i++) {
        t->id_str[t->added[i].id] = &t->added[i].content;
        t->id_special[t->added[i].id] = (unsigned char)t->added[i].special;
    }
    return 0;
}

static int load_stages(fp_tokenizer *t, const char *path, const cJSON *root)
{
    if (!cJSON_IsObject(root))
        return fp_error_set("%s: top level is not a JSON object (is this a tokenizer.json?)",
                            path);
    if (load_model(t, path, cJSON_GetObjectItemCaseSensitive(root, "model")) ||
        load_added(t, path, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) ||
        load_normalizer(t, path, cJSON_GetObjectItemCaseSensitive(root, "normalizer")) ||
        load_pre_tokenizer(t, path, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")))
        return -1;
    const cJSON *post = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    if (post && !cJSON_IsNull(post) && template_bos(path, post, &t->bos) != 0)
        return -1;
    if (load_decoder(t, path, cJSON_GetObjectItemCaseSensitive(root, "decoder")) ||
        build_id_table(t))
        return -1;
    if (t->bos >= (int32_t)t->n_ids)
        return fp_error_set("%s: post_processor BOS id %d is outside the vocabulary (%zu)",
                            path, (int)t->bos, t->n_ids);
    return 0;
}

fp_tokenizer *fp_tokenizer_load(const char *path)
{
    char file[4200], dir[4096];
    struct stat st;
    cJSON *root = NULL;
    fp_tokenizer *t = NULL;
    if (strlen(path) > 4000) {
        fp_error_set("tokenizer: path of %zu bytes is too long", strlen(path));
        return NULL;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dir, sizeof dir, "%s", path);
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
    } else {
        const char *slash = strrchr(path, '/');
        snprintf(file, sizeof file, "%s", path);
        if (slash)
            snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
        else
            snprintf(dir, sizeof dir, ".");
    }
    root = parse_json_file(file);
    if (!root)
        goto err;
    t = calloc(1, sizeof *t);
    if (!t || !(t->path = strdup(file))) {
        fp_error_set("tokenizer: out of memory");
        goto err;
    }
    t->bos = t->eos = -1;
    if (load_stages(t, file, root) != 0 || load_config(t, dir) != 0)
        goto err;
    cJSON_Delete(root);
    return t;
err:
    cJSON_Delete(root);
    fp_tokenizer_free(&t);
    return NULL;
}

/* ------------------------------------------------------------- encoding */

typedef struct { size_t off, len; int first; } span;
typedef struct { int32_t id, prev, next, alive; } sym;
typedef struct { uint32_t rank, pos; int32_t id; } hitem;

/* Per-call scratch so that encode stays reentrant on a shared tokenizer. */
typedef struct {
    sbuf a, b;                 /* text before / after a stage */
    span *wa, *wb;             /* words before / after a pre-tokenizer */
    size_t nwa, nwb, wa_cap, wb_cap;
    sym *s;
    size_t s_cap;
    hitem *h;
    size_t nh, h_cap;
} scratch;

static void scratch_free(scratch *sc)
{
    free(sc->a.p);
    free(sc->b.p);
    free(sc->wa);
    free(sc->wb);
    free(sc->s);
    free(sc->h);
}

static void swap_text(scratch *sc)
{
    sbuf tmp = sc->a;
    sc->a = sc->b;
    sc->b = tmp;
    sc->b.len = 0;
}

static int normalize(const fp_tokenizer *t, scratch *sc, const char *s, size_t len)
{
    sc->a.len = sc->b.len = 0;
    if (sbuf_put(&sc->a, s, len) != 0)
        return -1;
    for (size_t i = 0; i < t->n_norm; i++) {
        const norm_op *op = &t->norm[i];
        if (op->kind == NORM_PREPEND) {
            if (sc->a.len == 0) /* tokenizers prepends to non-empty text only */
                continue;
            if (sbuf_put(&sc->b, op->a.s, op->a.len) || sbuf_put(&sc->b, sc->a.p, sc->a.len))
                return -1;
        } else if (put_replaced(&sc->b, sc->a.p, sc->a.len, &op->a, &op->b) != 0) {
            return -1;
        }
        swap_text(sc);
    }
    return 0;
}

static int push_word(scratch *sc, size_t off, size_t len, int first)
{
    if (len == 0)
        return 0;
    if (grow((void **)&sc->wb, &sc->wb_cap, sc->nwb + 1, sizeof *sc->wb) != 0)
        return -1;
    sc->wb[sc->nwb++] = (span){ off, len, first };
    return 0;
}

/* Metaspace: spaces become the replacement, which is prepended per scheme;
 * with split, each replacement starts a new word (MergedWithNext). */
static int metaspace_word(const pre_op *op, scratch *sc, const span *w)
{
    static const tstr space = { " ", 1 };
    size_t start = sc->b.len;
    if (put_replaced(&sc->b, sc->a.p + w->off, w->len, &space, &op->repl) != 0)
        return -1;
    size_t n = sc->b.len - start;
    int has = n >= op->repl.len && !memcmp(sc->b.p + start, op->repl.s, op->repl.len);
    if (!has && (op->scheme == SCHEME_ALWAYS || (op->scheme == SCHEME_FIRST && w->first))) {
        if (sbuf_put(&sc->b, op->repl.s, op->repl.len) != 0)
            return -1;
        memmove(sc->b.p + start + op->repl.len, sc->b.p + start, n);
        memcpy(sc->b.p + start, op->repl.s, op->repl.len);
        n += op->repl.len;
    }
    if (!op->split)
        return push_word(sc, start, n, w->first);
    size_t from = start, end = start + n;
    for (size_t i = start + 1; i + op->repl.len <= end; i++)
        if (!memcmp(sc->b.p + i, op->repl.s, op->repl.len)) {
            if (push_word(sc, from, i - from, from == start && w->first) != 0)
                return -1;
            from = i;
        }
    return push_word(sc, from, end - from, from == start && w->first);
}

/* Splits the normalized text (sc->a) into words (sc->wa). */
static int pre_tokenize(const fp_tokenizer *t, scratch *sc, int at_start)
{
    sc->nwb = 0;
    if (push_word(sc, 0, sc->a.len, at_start) != 0)
        return -1;
    for (size_t i = 0; i < t->n_pre; i++) {
        span *tw = sc->wa;
        size_t tcap = sc->wa_cap;
        sc->wa = sc->wb, sc->wa_cap = sc->wb_cap, sc->nwa = sc->nwb;
        sc->wb = tw, sc->wb_cap = tcap, sc->nwb = 0;
        sc->b.len = 0;
        for (size_t w = 0; w < sc->nwa; w++)
            if (metaspace_word(&t->pre[i], sc, &sc->wa[w]) != 0)
                return -1;
        swap_text(sc);
    }
    span *tw = sc->wa;
    size_t tcap = sc->wa_cap;
    sc->wa = sc->wb, sc->wa_cap = sc->wb_cap, sc->nwa = sc->nwb;
    sc->wb = tw, sc->wb_cap = tcap, sc->nwb = 0;
    return 0;
}

static int hitem_less(const hitem *x, const hitem *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static int heap_push(scratch *sc, hitem it)
{
    if (grow((void **)&sc->h, &sc->h_cap, sc->nh + 1, sizeof *sc->h) != 0)
        return -1;
    size_t i = sc->nh++;
    while (i > 0 && hitem_less(&it, &sc->h[(i - 1) / 2])) {
        sc->h[i] = sc->h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    sc->h[i] = it;
    return 0;
}

static hitem heap_pop(scratch *sc)
{
    hitem top = sc->h[0], last = sc->h[--sc->nh];
    size_t i = 0, n = sc->nh;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && hitem_less(&sc->h[c + 1], &sc->h[c]))
            c++;
        if (!hitem_less(&sc->h[c], &last))
            break;
        sc->h[i] = sc->h[c];
        i = c;
    }
    if (n)
        sc->h[i] = last;
    return top;
}

static int add_sym(scratch *sc, size_t *ns, int32_t id)
{
    if (grow((void **)&sc->s, &sc->s_cap, *ns + 1, sizeof *sc->s) != 0)
        return -1;
    sc->s[*ns] = (sym){ id, (int32_t)*ns - 1, (int32_t)*ns + 1, 1 };
    (*ns)++;
    return 0;
}

/* Initial symbols: one per UTF-8 character, else its <0xNN> bytes
 * (byte_fallback), else unk (consecutive unknowns fused when fuse_unk). */
static int initial_symbols(const fp_tokenizer *t, scratch *sc, const char *w, size_t len,
                           size_t *ns)
{
    int unk_pending = 0;
    *ns = 0;
    for (size_t i = 0; i < len;) {
        size_t cl = utf8_len((const unsigned char *)w + i, len - i);
        int32_t id = strmap_get(&t->vmap, w + i, cl);
        int bytes_ok = id < 0 && t->byte_fallback;
        for (size_t k = 0; bytes_ok && k < cl; k++)
            bytes_ok = t->byte_id[(unsigned char)w[i + k]] >= 0;
        if ((id >= 0 || bytes_ok) && unk_pending) {
            if (add_sym(sc, ns, t->unk) != 0)
                return -1;
            unk_pending = 0;
        }
        if (id >= 0) {
            if (add_sym(sc, ns, id) != 0)
                return -1;
        } else if (bytes_ok) {
            for (size_t k = 0; k < cl; k++)
                if (add_sym(sc, ns, t->byte_id[(unsigned char)w[i + k]]) != 0)
                    return -1;
        } else if (t->unk >= 0) {
            if (unk_pending && !t->fuse_unk && add_sym(sc, ns, t->unk) != 0)
                return -1;
            unk_pending = 1;
        } /* no unk token: the character is dropped, as tokenizers does */
        i += cl;
    }
    if (unk_pending && add_sym(sc, ns, t->unk) != 0)
        return -1;
    if (*ns)
        sc->s[*ns - 1].next = -1;
    return 0;
}

static int push_pair(const fp_tokenizer *t, scratch *sc, int32_t pos)
{
    const sym *l = &sc->s[pos];
    if (l->next < 0)
        return 0;
    const mslot *m = merge_get(t->merges, t->merge_mask, l->id, sc->s[l->next].id);
    return m ? heap_push(sc, (hitem){ m->rank, (uint32_t)pos, m->id }) : 0;
}

/* BPE over one word: repeatedly merge the adjacent pair of lowest rank
 * (leftmost on ties) with a linked list + min-heap, O(n log n). Stale heap
 * entries are skipped when their pair no longer matches, as tokenizers does. */
static int bpe_chunk(const fp_tokenizer *t, scratch *sc, const char *w, size_t len, ivec *out)
{
    size_t ns;
    if (initial_symbols(t, sc, w, len, &ns) != 0)
        return -1;
    sc->nh = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if (push_pair(t, sc, (int32_t)i) != 0)
            return -1;
    while (sc->nh > 0) {
        hitem top = heap_pop(sc);
        sym *l = &sc->s[top.pos];
        if (!l->alive || l->next < 0)
            continue;
        sym *r = &sc->s[l->next];
        const mslot *m = merge_get(t->merges, t->merge_mask, l->id, r->id);
        if (!m || m->id != top.id)
            continue;
        l->id = top.id;
        r->alive = 0;
        l->next = r->next;
        if (r->next >= 0)
            sc->s[r->next].prev = (int32_t)top.pos;
        if ((l->prev >= 0 && push_pair(t, sc, l->prev) != 0) ||
            push_pair(t, sc, (int32_t)top.pos) != 0)
            return -1;
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = sc->s[i].next)
        if (ivec_push(out, sc->s[i].id) != 0)
            return -1;
    return 0;
}

static int bpe_word(const fp_tokenizer *t, scratch *sc, const char *w, size_t len, ivec *out)
{
    static const char meta[] = "\xe2\x96\x81";
    size_t from = 0;
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->vmap, w, len);
        if (id >= 0)
            return ivec_push(out, id);
    }
    for (size_t i = 1; t->split_at_meta && i + 3 <= len; i++)
        if (!memcmp(w + i, meta, 3) && (i < 3 || memcmp(w + i - 3, meta, 3) != 0)) {
            if (bpe_chunk(t, sc, w + from, i - from, out) != 0)
                return -1;
            from = i;
        }
    return bpe_chunk(t, sc, w + from, len - from, out);
}

/* normalizer -> pre-tokenizer -> model for text between added tokens. */
static int encode_segment(const fp_tokenizer *t, scratch *sc, const char *s, size_t len,
                          int at_start, ivec *out)
{
    if (len == 0)
        return 0;
    if (normalize(t, sc, s, len) != 0 || pre_tokenize(t, sc, at_start) != 0)
        return -1;
    for (size_t i = 0; i < sc->nwa; i++)
        if (bpe_word(t, sc, sc->a.p + sc->wa[i].off, sc->wa[i].len, out) != 0)
            return -1;
    return 0;
}

/* Longest added token starting at text[pos], or NULL. */
static const added_tok *match_added(const fp_tokenizer *t, const char *text, size_t len,
                                    size_t pos)
{
    const added_tok *best = NULL;
    if (!t->added_first[(unsigned char)text[pos]])
        return NULL;
    for (size_t i = 0; i < t->n_added; i++) {
        const tstr *c = &t->added[i].content;
        if (c->len <= len - pos && (!best || c->len > best->content.len) &&
            memcmp(text + pos, c->s, c->len) == 0)
            best = &t->added[i];
    }
    return best;
}

int fp_tokenizer_encode(const fp_tokenizer *self, const char *text, size_t len, int add_bos,
                        int32_t **ids, size_t *n)
{
    scratch sc = { 0 };
    ivec out = { 0 };
    size_t seg = 0;
    *ids = NULL;
    *n = 0;
    if (len > INT32_MAX / 2)
        return fp_error_set("tokenizer: text of %zu bytes is too long to encode at once "
                            "(split it under 1 GiB)", len);
    if (add_bos && self->bos >= 0 && ivec_push(&out, self->bos) != 0)
        goto err;
    for (size_t pos = 0; pos < len;) {
        const added_tok *a = match_added(self, text, len, pos);
        if (!a) {
            pos++;
            continue;
        }
        if (encode_segment(self, &sc, text + seg, pos - seg, seg == 0, &out) != 0 ||
            ivec_push(&out, a->id) != 0)
            goto err;
        pos += a->content.len;
        seg = pos;
    }
    if (encode_segment(self, &sc, text + seg, len - seg, seg == 0, &out) != 0)
        goto err;
    scratch_free(&sc);
    if (!out.p && !(out.p = malloc(sizeof *out.p))) /* callers may free an empty result */
        return fp_error_set("tokenizer: out of memory");
    *ids = out.p;
    *n = out.len;
    return 0;
err:
    scratch_free(&sc);
    free(out.p);
    return -1;
}

/* ------------------------------------------------------------- decoding */

/* The decoder chain works on a list of token strings, as tokenizers'
 * decode_chain does; each op turns one list into the next. */
typedef struct { tstr *v; size_t n, cap; } tlist;

static void tlist_free(tlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].s);
    free(l->v);
    *l = (tlist){ 0 };
}

/* Takes b's buffer (b is reset). */
static int tlist_take(tlist *l, sbuf *b)
{
    if (grow((void **)&l->v, &l->cap, l->n + 1, sizeof *l->v) != 0)
        return -1;
    if (!b->p && sbuf_put(b, "", 0) != 0)
        return -1;
    l->v[l->n++] = (tstr){ b->p, b->len };
    *b = (sbuf){ 0 };
    return 0;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The byte of a "<0xNN>" piece, or -1. */
static int byte_of(const tstr *s)
{
    if (s->len != 6 || memcmp(s->s, "<0x", 3) != 0 || s->s[5] != '>')
        return -1;
    int hi = hexval(s->s[3]), lo = hexval(s->s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Pending bytes become one token if valid UTF-8, else one U+FFFD per byte. */
static int flush_bytes(tlist *out, sbuf *bytes)
{
    if (bytes->len == 0)
        return 0;
    if (utf8_valid((unsigned char *)bytes->p, bytes->len))
        return tlist_take(out, bytes);
    size_t n = bytes->len;
    bytes->len = 0;
    for (size_t i = 0; i < n; i++) {
        sbuf r = { 0 };
        if (sbuf_put(&r, "\xef\xbf\xbd", 3) || tlist_take(out, &r)) {
            free(r.p);
            return -1;
        }
    }
    return 0;
}

static int dec_byte_fallback(const tlist *in, tlist *out)
{
    sbuf bytes = { 0 };
    for (size_t i = 0; i < in->n; i++) {
        int b = byte_of(&in->v[i]);
        unsigned char c = (unsigned char)b;
        sbuf tok = { 0 };
        if (b >= 0) {
            if (sbuf_put(&bytes, &c, 1) != 0)
                goto err;
            continue;
        }
        if (flush_bytes(out, &bytes) || sbuf_put(&tok, in->v[i].s, in->v[i].len) ||
            tlist_take(out, &tok)) {
            free(tok.p);
            goto err;
        }
    }
    if (flush_bytes(out, &bytes) != 0)
        goto err;
    free(bytes.p);
    return 0;
err:
    free(bytes.p);
    return -1;
}

static int dec_token(const dec_op *op, const tstr *tok, size_t index, sbuf *o)
{
    static const tstr space = { " ", 1 }, none = { "", 0 };
    if (op->kind == DEC_REPLACE)
        return put_replaced(o, tok->s, tok->len, &op->a, &op->b);
    if (op->kind == DEC_METASPACE) /* first token: drop the prepended marker */
        return put_replaced(o, tok->s, tok->len, &op->a,
                            index == 0 && op->scheme != SCHEME_NEVER ? &none : &space);
    /* DEC_STRIP: up to start leading / stop trailing copies of content */
    size_t b = 0, e = tok->len, c = op->a.len;
    for (int k = 0; k < op->start && e - b >= c && !memcmp(tok->s + b, op->a.s, c); k++)
        b += c;
    for (int k = 0; k < op->stop && e - b >= c && !memcmp(tok->s + e - c, op->a.s, c); k++)
        e -= c;
    return sbuf_put(o, tok->s + b, e - b);
}

static int dec_apply(const dec_op *op, const tlist *in, tlist *out)
{
    if (op->kind == DEC_BYTE_FALLBACK)
        return dec_byte_fallback(in, out);
    sbuf o = { 0 };
    for (size_t i = 0; i < in->n; i++) {
        if (op->kind == DEC_FUSE) {
            if (sbuf_put(&o, in->v[i].s, in->v[i].len) != 0)
                goto err;
            continue;
        }
        if (dec_token(op, &in->v[i], i, &o) != 0 || tlist_take(out, &o) != 0)
            goto err;
    }
    if (op->kind == DEC_FUSE && tlist_take(out, &o) != 0)
        goto err;
    return 0;
err:
    free(o.p);
    return -1;
}

static int ids_to_tokens(const fp_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                         tlist *l)
{
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->n_ids || !t->id_str[ids[i]])
            return fp_error_set("tokenizer: cannot decode id %d at position %zu: not in the "
                                "vocabulary of %s (%zu ids; wrong tokenizer for this model?)",
                                (int)ids[i], i, t->path, t->n_ids);
        if (skip_special && t->id_special[ids[i]])
            continue;
        sbuf b = { 0 };
        if (sbuf_put(&b, t->id_str[ids[i]]->s, t->id_str[ids[i]]->len) || tlist_take(l, &b)) {
            free(b.p);
            return -1;
        }
    }
    return 0;
}

char *fp_tokenizer_decode(const fp_tokenizer *self, const int32_t *ids, size_t n,
                          int skip_special)
{
    tlist cur = { 0 }, next = { 0 };
    sbuf out = { 0 };
    if (ids_to_tokens(self, ids, n, skip_special, &cur) != 0)
        goto err;
    for (size_t i = 0; i < self->n_dec; i++) {
        if (dec_apply(&self->dec[i], &cur, &next) != 0)
            goto err;
        tlist_free(&cur);
        cur = next;
        next = (tlist){ 0 };
    }
    if (sbuf_put(&out, "", 0) != 0)
        goto err;
    for (size_t i = 0; i < cur.n; i++) /* no decoder: tokenizers joins with spaces */
        if ((!self->has_decoder && i > 0 && sbuf_put(&out, " ", 1) != 0) ||
            sbuf_put(&out, cur.v[i].s, cur.v[i].len) != 0)
            goto err;
    tlist_free(&cur);
    return out.p;
err:
    tlist_free(&cur);
    tlist_free(&next);
    free(out.p);
    return NULL;
}

/* ------------------------------------------- llama2.c tokenizer -> HF JSON */

typedef struct { float score; int32_t p, l, r; } cmerge;

/* Reads tok512.bin-style records into pieces/scores, with ' ' turned into
 * U+2581 and ids 0..2 named as SentencePiece names them. */
static int read_llama2c(const char *path, int vocab_size, tstr *pieces, float *scores)
{
    static const char *names[3] = { "<unk>", "<s>", "</s>" };
    static const tstr space = { " ", 1 }, meta = { "\xe2\x96\x81", 3 };
    size_t len, off = 4;
    int32_t maxlen;
    char *buf = read_whole(path, &len);
    if (!buf)
        return -1;
    if (len < 4) {
        fp_error_set("%s: truncated: %zu bytes, no max_token_len header (expected a llama2.c "
                     "tokenizer .bin such as tok512.bin)", path, len);
        goto err;
    }
    memcpy(&maxlen, buf, 4);
    if (maxlen <= 0 || maxlen > 4096) {
        fp_error_set("%s: max_token_len %d is not in [1, 4096] (not a llama2.c tokenizer?)",
                     path, (int)maxlen);
        goto err;
    }
    for (int i = 0; i < vocab_size; i++) {
        int32_t n;
        if (len - off < 8) {
            fp_error_set("%s: truncated at token %d of %d (offset %zu of %zu): the file is "
                         "cut short or vocab_size is too large", path, i, vocab_size, off, len);
            goto err;
        }
        memcpy(&scores[i], buf + off, 4);
        memcpy(&n, buf + off + 4, 4);
        off += 8;
        if (!isfinite(scores[i]) || n <= 0 || n > maxlen || (size_t)n > len - off) {
            fp_error_set("%s: token %d at offset %zu: %s (score %g, length %d, max_token_len "
                         "%d, %zu bytes left)", path, i, off - 8,
                         (size_t)n > len - off && n > 0 && n <= maxlen ? "truncated" :
                         "bad record", scores[i], (int)n, (int)maxlen, len - off);
            goto err;
        }
        if (!utf8_valid((unsigned char *)buf + off, (size_t)n)) {
            fp_error_set("%s: token %d at offset %zu is not valid UTF-8", path, i, off);
            goto err;
        }
        sbuf b = { 0 };
        if ((i < 3 ? sbuf_put(&b, names[i], strlen(names[i]))
                   : put_replaced(&b, buf + off, (size_t)n, &space, &meta)) != 0) {
            free(b.p);
            goto err;
        }
        pieces[i] = (tstr){ b.p, b.len };
        off += (size_t)n;
    }
    if (off != len) {
        fp_error_set("%s: %zu bytes left after %d tokens: vocab_size is too small for this "
                     "file (or it is not a llama2.c tokenizer)", path, len - off, vocab_size);
        goto err;
    }
    free(buf);
    return 0;
err:
    free(buf);
    return -1;
}

static int cmerge_cmp(const void *x, const void *y)
{
    const cmerge *a = x, *b = y;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    if (a->p != b->p)
        return a->p < b->p ? -1 : 1;
    return (a->l > b->l) - (a->l < b->l);
}

/* HF's SentencePieceExtractor: every split p = l + r (at character
 * boundaries) with l and r in the vocab is a merge, ordered by the score of
 * p descending, then id of p, then id of l. */
static int derive_merges(const tstr *pieces, const float *scores, int n, const strmap *m,
                         cmerge **out, size_t *n_out)
{
    cmerge *v = NULL;
    size_t nv = 0, cap = 0;
    for (int p = 0; p < n; p++) {
        const tstr *s = &pieces[p];
        for (size_t k = utf8_len((unsigned char *)s->s, s->len); k < s->len;
             k += utf8_len((unsigned char *)s->s + k, s->len - k)) {
            int32_t l = strmap_get(m, s->s, k), r = strmap_get(m, s->s + k, s->len - k);
            if (l < 0 || r < 0)
                continue;
            if (grow((void **)&v, &cap, nv + 1, sizeof *v) != 0) {
                free(v);
                return -1;
            }
            v[nv++] = (cmerge){ scores[p], p, l, r };
        }
    }
    if (nv)
        qsort(v, nv, sizeof *v, cmerge_cmp);
    *out = v;
    *n_out = nv;
    return 0;
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return fp_error_set("%s: cannot create (%s)", path, strerror(errno));
    size_t n = strlen(text), w = fwrite(text, 1, n, f);
    if (fclose(f) != 0 || w != n)
        return fp_error_set("%s: write failed (disk full?)", path);
    return 0;
}

/* {"type": "Replace", "pattern": {"String": a}, "content": b} */
static cJSON *json_replace(const char *a, const char *b)
{
    cJSON *o = cJSON_CreateObject(), *pat = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "Replace");
    cJSON_AddStringToObject(pat, "String", a);
    cJSON_AddItemToObject(o, "pattern", pat);
    cJSON_AddStringToObject(o, "content", b);
    return o;
}

static void json_add_stages(cJSON *root)
{
    static const char *names[3] = { "<unk>", "<s>", "</s>" };
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < 3; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", names[i]);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
    cJSON_AddStringToObject(norm, "type", "Sequence");
    cJSON *nl = cJSON_AddArrayToObject(norm, "normalizers");
    cJSON *pre = cJSON_CreateObject();
    cJSON_AddStringToObject(pre, "type", "Prepend");
    cJSON_AddStringToObject(pre, "prepend", "\xe2\x96\x81");
    cJSON_AddItemToArray(nl, pre);
    cJSON_AddItemToArray(nl, json_replace(" ", "\xe2\x96\x81"));
    cJSON_AddNullToObject(root, "pre_tokenizer");

    /* TemplateProcessing: single = <s> $A, pair = <s> $A <s> $B */
    cJSON *post = cJSON_AddObjectToObject(root, "post_processor");
    cJSON_AddStringToObject(post, "type", "TemplateProcessing");
    const char *seq[2][4] = { { "<s>", "A", NULL }, { "<s>", "A", "<s>", "B" } };
    for (int k = 0; k < 2; k++) {
        cJSON *arr = cJSON_AddArrayToObject(post, k ? "pair" : "single");
        for (int j = 0; j < 4 && seq[k][j]; j++) {
            cJSON *item = cJSON_CreateObject(), *in = cJSON_CreateObject();
            cJSON_AddStringToObject(in, "id", seq[k][j]);
            cJSON_AddNumberToObject(in, "type_id", j / 2);
            cJSON_AddItemToObject(item, j % 2 ? "Sequence" : "SpecialToken", in);
            cJSON_AddItemToArray(arr, item);
        }
    }
    cJSON *bos = cJSON_AddObjectToObject(cJSON_AddObjectToObject(post, "special_tokens"), "<s>");
    cJSON_AddStringToObject(bos, "id", "<s>");
    cJSON_AddItemToObject(bos, "ids", cJSON_CreateIntArray((const int[]){ 1 }, 1));
    cJSON_AddItemToObject(bos, "tokens", cJSON_CreateStringArray((const char *[]){ "<s>" }, 1));

    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "Sequence");
    cJSON *dl = cJSON_AddArrayToObject(dec, "decoders");
    cJSON_AddItemToArray(dl, json_replace("\xe2\x96\x81", " "));
    const char *plain[2] = { "ByteFallback", "Fuse" };
    for (int i = 0; i < 2; i++) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "type", plain[i]);
        cJSON_AddItemToArray(dl, d);
    }
    cJSON *strip = cJSON_CreateObject();
    cJSON_AddStringToObject(strip, "type", "Strip");
    cJSON_AddStringToObject(strip, "content", " ");
    cJSON_AddNumberToObject(strip, "start", 1);
    cJSON_AddNumberToObject(strip, "stop", 0);
    cJSON_AddItemToArray(dl, strip);
}

static void json_add_model(cJSON *root, const tstr *pieces, int n, const cmerge *mg, size_t nm)
{
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddStringToObject(model, "unk_token", "<unk>");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 1);
    cJSON_AddBoolToObject(model, "byte_fallback", 1);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int i = 0; i < n; i++)
        cJSON_AddNumberToObject(vocab, pieces[i].s, i);
    /* [l, r] arrays (tokenizers >= 0.20) stay unambiguous if a piece has a space */
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    for (size_t i = 0; i < nm; i++) {
        const char *pair[2] = { pieces[mg[i].l].s, pieces[mg[i].r].s };
        cJSON_AddItemToArray(merges, cJSON_CreateStringArray(pair, 2));
    }
}

static int write_config(const char *json_path)
{
    char cpath[4300];
    const char *slash = strrchr(json_path, '/');
    int dl = slash ? (int)(slash - json_path) : 1;
    snprintf(cpath, sizeof cpath, "%.*s/tokenizer_config.json", dl, slash ? json_path : ".");
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddBoolToObject(cfg, "add_bos_token", 1);
    cJSON_AddBoolToObject(cfg, "add_eos_token", 0);
    cJSON_AddStringToObject(cfg, "bos_token", "<s>");
    cJSON_AddStringToObject(cfg, "eos_token", "</s>");
    cJSON_AddStringToObject(cfg, "unk_token", "<unk>");
    cJSON_AddBoolToObject(cfg, "clean_up_tokenization_spaces", 0);
    cJSON_AddBoolToObject(cfg, "legacy", 1);
    /* the .bin does not know the context length: HF's "unknown" value */
    cJSON_AddNumberToObject(cfg, "model_max_length", 1e30);
    cJSON_AddStringToObject(cfg, "tokenizer_class", "LlamaTokenizer");
    char *text = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    if (!text)
        return fp_error_set("%s: out of memory printing JSON", cpath);
    int rc = write_text(cpath, text);
    free(text);
    return rc;
}

int fp_tokenizer_convert_llama2c(const char *tok_bin, int vocab_size, const char *out_path)
{
    tstr *pieces = NULL;
    float *scores = NULL;
    cmerge *mg = NULL;
    size_t nm = 0;
    strmap m = { 0 };
    cJSON *root = NULL;
    char *text = NULL, file[4200];
    struct stat st;
    int rc = -1;
    if (strlen(out_path) > 4000)
        return fp_error_set("%s: output path of %zu bytes is too long", tok_bin, strlen(out_path));
    if (vocab_size < 3 || vocab_size > TOK_MAX_ID)
        return fp_error_set("%s: vocab_size %d is not in [3, %d]", tok_bin, vocab_size,
                            TOK_MAX_ID);
    if (stat(out_path, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(file, sizeof file, "%s/tokenizer.json", out_path);
    else
        snprintf(file, sizeof file, "%s", out_path);
    pieces = calloc((size_t)vocab_size, sizeof *pieces);
    scores = calloc((size_t)vocab_size, sizeof *scores);
    if (!pieces || !scores) {
        fp_error_set("tokenizer: out of memory");
        goto done;
    }
    if (read_llama2c(tok_bin, vocab_size, pieces, scores) != 0 ||
        strmap_init(&m, pieces, (size_t)vocab_size) != 0)
        goto done;
    for (int i = 0; i < vocab_size; i++) {
        int32_t dup = strmap_get(&m, pieces[i].s, pieces[i].len);
        if (dup >= 0) {
            fp_error_set("%s: tokens %d and %d are both '%s' (a vocab needs unique pieces)",
                         tok_bin, (int)dup, i, pieces[i].s);
            goto done;
        }
        strmap_put(&m, i);
    }
    if (derive_merges(pieces, scores, vocab_size, &m, &mg, &nm) != 0)
        goto done;
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    json_add_stages(root);
    json_add_model(root, pieces, vocab_size, mg, nm);
    text = cJSON_Print(root);
    if (!text) {
        fp_error_set("%s: out of memory printing JSON", file);
        goto done;
    }
    rc = write_text(file, text) == 0 && write_config(file) == 0 ? 0 : -1;
done:
    for (int i = 0; pieces && i < vocab_size; i++)
        free(pieces[i].s);
    free(pieces);
    free(scores);
    free(mg);
    free(m.slots);
    cJSON_Delete(root);
    free(text);
    return rc;
}

/* tokenizer_pretok.c - pre-tokenizers: Metaspace, ByteLevel (GPT-2's regex
 * and bytes_to_unicode), Split, Digits, Whitespace, WhitespaceSplit and
 * Sequence. Words are spans into the scratch text; an op reads sc->wa and
 * writes sc->wb (and, if it rewrites text, sc->b). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static const char k_gpt2_re[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 to U+0100.. in byte order (space -> U+0120 'Ġ'). */
void tok_bytelevel_table(fp_tokenizer *t)
{
    int next = 256;
    for (int i = 0; i < 0x144; i++)
        t->bl_dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = keep ? b : next++;
        t->bl_dec[cp] = (int16_t)b;
        if (cp < 0x80) {
            t->bl_enc[b][0] = (unsigned char)cp;
            t->bl_enc_len[b] = 1;
        } else {
            t->bl_enc[b][0] = (unsigned char)(0xC0 | cp >> 6);
            t->bl_enc[b][1] = (unsigned char)(0x80 | (cp & 63));
            t->bl_enc_len[b] = 2;
        }
    }
}

static int split_behavior(const char *path, const char *s, int *out)
{
    static const char *names[] = { "Isolated", "Removed", "MergedWithPrevious",
                                   "MergedWithNext", "Contiguous" };
    for (int i = 0; s && i < 5; i++)
        if (!strcmp(s, names[i]))
            return *out = i, 0;
    return fp_error_set("%s: pre_tokenizer Split behavior '%s' is unknown (Isolated, Removed, "
                        "MergedWithPrevious, MergedWithNext, Contiguous)", path,
                        s ? s : "(none)");
}

static int load_split(pre_op *op, const char *path, const cJSON *o)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *str = jstr(pat, "String"), *re = jstr(pat, "Regex");
    op->kind = PRE_SPLIT;
    op->invert = jbool(o, "invert", 0);
    if (!str && !re)
        return fp_error_set("%s: pre_tokenizer Split needs pattern {\"String\"|\"Regex\": "
                            "...}", path);
    if (split_behavior(path, jstr(o, "behavior"), &op->behavior) != 0)
        return -1;
    return tok_regex_compile(path, "pre_tokenizer Split", str ? str : re, str != NULL, &op->re);
}

/* Components that are a fixed Split: Digits, Whitespace, WhitespaceSplit. */
static int load_fixed_split(pre_op *op, const char *path, const char *type, const cJSON *o)
{
    const char *re = "\\s+";
    op->kind = PRE_SPLIT;
    op->behavior = SPLIT_REMOVED;
    if (!strcmp(type, "Digits")) {
        re = jbool(o, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+";
        op->behavior = SPLIT_ISOLATED;
    } else if (!strcmp(type, "Whitespace")) {
        re = "\\w+|[^\\w\\s]+";
        op->invert = 1;
    }
    return tok_regex_compile(path, type, re, 0, &op->re);
}

static int load_pre_one(fp_tokenizer *t, const char *path, const cJSON *o)
{
    const char *type = jstr(o, "type");
    pre_op *op = &t->pre[t->n_pre++]; /* counted first so that free sees it */
    if (type && !strcmp(type, "Metaspace")) {
        op->kind = PRE_METASPACE;
        op->split = jbool(o, "split", 1);
        return scheme_of(path, "pre_tokenizer", o, &op->scheme) ||
               metaspace_repl(path, "pre_tokenizer", o, &op->repl) ? -1 : 0;
    }
    if (type && !strcmp(type, "ByteLevel")) {
        op->kind = PRE_BYTELEVEL;
        op->prefix_space = jbool(o, "add_prefix_space", 1);
        t->byte_level = 1;
        return jbool(o, "use_regex", 1) ? tok_regex_compile(path, "ByteLevel", k_gpt2_re, 0,
                                                            &op->re) : 0;
    }
    if (type && !strcmp(type, "Split"))
        return load_split(op, path, o);
    if (type && (!strcmp(type, "Digits") || !strcmp(type, "Whitespace") ||
                 !strcmp(type, "WhitespaceSplit")))
        return load_fixed_split(op, path, type, o);
    return fp_error_set("%s: pre_tokenizer type '%s' is not supported yet (Metaspace, "
                        "ByteLevel, Split, Digits, Whitespace, WhitespaceSplit, Sequence)", path,
                        type ? type : "(none)");
}

int tok_load_pre_tokenizer(fp_tokenizer *t, const char *path, const cJSON *o)
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

void tok_free_stages(fp_tokenizer *t)
{
    for (size_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a.s);
        free(t->norm[i].b.s);
        pcre2_code_free(t->norm[i].re);
    }
    for (size_t i = 0; i < t->n_pre; i++) {
        free(t->pre[i].repl.s);
        pcre2_code_free(t->pre[i].re);
    }
    free(t->norm);
    free(t->pre);
}

static int push_word(scratch *sc, size_t off, size_t len, int first)
{
    if (len == 0)
        return 0;
    if (tok_grow((void **)&sc->wb, &sc->wb_cap, sc->nwb + 1, sizeof *sc->wb) != 0)
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

/* ByteLevel: a space is prepended to each word not starting with one (when
 * add_prefix_space), GPT-2's regex splits it, and every byte is mapped to
 * its bytes_to_unicode character. */
static int bytelevel_word(const fp_tokenizer *t, const pre_op *op, scratch *sc, const span *w)
{
    sbuf *raw = &sc->c;
    raw->len = 0;
    if (op->prefix_space && (w->len == 0 || sc->a.p[w->off] != ' ') && sbuf_put(raw, " ", 1))
        return -1;
    if (sbuf_put(raw, sc->a.p + w->off, w->len) != 0)
        return -1;
    if (op->re && tok_regex_split(op->re, sc, raw->p, raw->len, SPLIT_ISOLATED, 0) != 0)
        return -1;
    piece whole = { 0, raw->len, 0 };
    const piece *pc = op->re ? sc->pc : &whole;
    size_t npc = op->re ? sc->npc : 1;
    if (tok_grow((void **)&sc->b.p, &sc->b.cap, sc->b.len + 2 * raw->len + 1, 1) != 0)
        return -1;
    for (size_t i = 0; i < npc; i++) {
        size_t start = sc->b.len;
        for (size_t k = pc[i].b; k < pc[i].e; k++) {
            unsigned char c = (unsigned char)raw->p[k];
            memcpy(sc->b.p + sc->b.len, t->bl_enc[c], 2);
            sc->b.len += t->bl_enc_len[c];
        }
        if (push_word(sc, start, sc->b.len - start, w->first && i == 0) != 0)
            return -1;
    }
    sc->b.p[sc->b.len] = '\0';
    return 0;
}

/* Split-like ops keep the text: sub-spans of each word. */
static int split_word(const pre_op *op, scratch *sc, const span *w)
{
    if (tok_regex_split(op->re, sc, sc->a.p + w->off, w->len, op->behavior, op->invert) != 0)
        return -1;
    for (size_t i = 0; i < sc->npc; i++)
        if (push_word(sc, w->off + sc->pc[i].b, sc->pc[i].e - sc->pc[i].b,
                      w->first && sc->pc[i].b == 0) != 0)
            return -1;
    return 0;
}

static void swap_words(scratch *sc)
{
    span *tw = sc->wa;
    size_t tcap = sc->wa_cap;
    sc->wa = sc->wb, sc->wa_cap = sc->wb_cap, sc->nwa = sc->nwb;
    sc->wb = tw, sc->wb_cap = tcap, sc->nwb = 0;
}

int tok_pre_tokenize(const fp_tokenizer *t, scratch *sc, int at_start)
{
    sc->nwb = 0;
    if (push_word(sc, 0, sc->a.len, at_start) != 0)
        return -1;
    for (size_t i = 0; i < t->n_pre; i++) {
        const pre_op *op = &t->pre[i];
        swap_words(sc);
        sc->b.len = 0;
        for (size_t w = 0; w < sc->nwa; w++) {
            const span *wd = &sc->wa[w];
            int rc = op->kind == PRE_METASPACE ? metaspace_word(op, sc, wd)
                   : op->kind == PRE_BYTELEVEL ? bytelevel_word(t, op, sc, wd)
                   : split_word(op, sc, wd);
            if (rc != 0)
                return -1;
        }
        if (op->kind != PRE_SPLIT) /* these wrote new text to sc->b */
            tok_swap_text(sc);
    }
    swap_words(sc);
    return 0;
}

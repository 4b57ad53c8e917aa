/* tokenizer_decode.c - ids -> pieces -> the decoder chain (Replace,
 * ByteFallback, Fuse, Strip, Metaspace, ByteLevel, Sequence). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

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
    if (tok_grow((void **)&l->v, &l->cap, l->n + 1, sizeof *l->v) != 0)
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

/* ByteLevel: every token's characters back to bytes (a token with a
 * character outside the map keeps its UTF-8), all fused, then lossy UTF-8. */
static int dec_byte_level(const fp_tokenizer *t, const tlist *in, tlist *out)
{
    sbuf bytes = { 0 }, text = { 0 };
    for (size_t i = 0; i < in->n; i++) {
        const unsigned char *s = (const unsigned char *)in->v[i].s;
        size_t len = in->v[i].len, start = bytes.len, k = 0;
        while (k < len) {
            size_t cl = utf8_strict(s + k, len - k);
            uint32_t cp = cl == 1 ? s[k] : cl == 2 ? (uint32_t)(s[k] & 31) << 6 | (s[k + 1] & 63)
                                                   : 0x144;
            if (cl == 0 || cp >= 0x144 || t->bl_dec[cp] < 0)
                break;
            unsigned char b = (unsigned char)t->bl_dec[cp];
            if (sbuf_put(&bytes, &b, 1) != 0)
                goto err;
            k += cl;
        }
        if (k < len) { /* not byte-level text: keep the token as it is */
            bytes.len = start;
            if (sbuf_put(&bytes, s, len) != 0)
                goto err;
        }
    }
    if (put_utf8_lossy(&text, (const unsigned char *)bytes.p, bytes.len) != 0 ||
        tlist_take(out, &text) != 0)
        goto err;
    free(bytes.p);
    return 0;
err:
    free(bytes.p);
    free(text.p);
    return -1;
}

static int dec_apply(const fp_tokenizer *t, const dec_op *op, const tlist *in, tlist *out)
{
    if (op->kind == DEC_BYTE_FALLBACK)
        return dec_byte_fallback(in, out);
    if (op->kind == DEC_BYTELEVEL)
        return dec_byte_level(t, in, out);
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
        if (dec_apply(self, &self->dec[i], &cur, &next) != 0)
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
static int load_dec_one(fp_tokenizer *t, const char *path, const cJSON *o)
{
    const char *type = jstr(o, "type");
    dec_op *op = &t->dec[t->n_dec++]; /* counted first so that free sees it */
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
    } else if (type && !strcmp(type, "ByteLevel")) {
        op->kind = DEC_BYTELEVEL;
    } else {
        return fp_error_set("%s: decoder type '%s' is not supported yet (Replace, ByteFallback, "
                            "Fuse, Strip, Metaspace, ByteLevel, Sequence)", path,
                            type ? type : "(none)");
    }
    return 0;
}

int tok_load_decoder(fp_tokenizer *t, const char *path, const cJSON *o)
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


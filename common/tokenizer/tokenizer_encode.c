/* tokenizer_encode.c - the encode pipeline: added tokens are matched in the
 * raw text, then each segment between them goes normalizer -> pre-tokenizer
 * -> BPE, and the post-processor's ids go around the result. */
#include "tokenizer_internal.h"

#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static void scratch_free(scratch *sc)
{
    free(sc->a.p);
    free(sc->b.p);
    free(sc->c.p);
    free(sc->wa);
    free(sc->wb);
    free(sc->s);
    free(sc->h);
    free(sc->pc);
    pcre2_match_data_free(sc->md);
    bpe_cache_free(&sc->local_cache);
}

/* normalizer -> pre-tokenizer -> model for text between added tokens. */
static int encode_segment(const fp_tokenizer *t, scratch *sc, const char *s, size_t len,
                          int at_start, ivec *out)
{
    if (len == 0)
        return 0;
    if (tok_normalize(t, sc, s, len) != 0 || tok_pre_tokenize(t, sc, at_start) != 0)
        return -1;
    for (size_t i = 0; i < sc->nwa; i++)
        if (tok_bpe_word(t, sc, sc->a.p + sc->wa[i].off, sc->wa[i].len, out) != 0)
            return -1;
    return 0;
}

static int word_char(unsigned char c)
{
    return isalnum(c) || c == '_' || c >= 0x80;
}

/* Longest added token starting at text[pos], or NULL. single_word tokens
 * need a non-word character (or the text's edge) on both sides. */
static const added_tok *match_added(const fp_tokenizer *t, const char *text, size_t len,
                                    size_t pos, int match_special)
{
    const added_tok *best = NULL;
    if (!t->added_first[(unsigned char)text[pos]])
        return NULL;
    for (size_t i = 0; i < t->n_added; i++) {
        const added_tok *a = &t->added[i];
        const tstr *c = &a->content;
        if (c->len > len - pos || (best && c->len <= best->content.len) ||
            (a->special && !match_special) || memcmp(text + pos, c->s, c->len) != 0)
            continue;
        if (a->single_word && ((pos > 0 && word_char((unsigned char)text[pos - 1])) ||
                               (pos + c->len < len &&
                                word_char((unsigned char)text[pos + c->len]))))
            continue;
        best = a;
    }
    return best;
}

/* Splits at added tokens (lstrip/rstrip swallow the whitespace beside them). */
static int encode_text(const fp_tokenizer *t, scratch *sc, const char *text, size_t len,
                       int match_special, ivec *out)
{
    size_t seg = 0;
    for (size_t pos = 0; pos < len;) {
        const added_tok *a = match_added(t, text, len, pos, match_special);
        if (!a) {
            pos++;
            continue;
        }
        size_t b = pos, e = pos + a->content.len;
        while (a->lstrip && b > seg && isspace((unsigned char)text[b - 1]))
            b--;
        while (a->rstrip && e < len && isspace((unsigned char)text[e]))
            e++;
        if (encode_segment(t, sc, text + seg, b - seg, seg == 0, out) != 0 ||
            ivec_push(out, a->id) != 0)
            return -1;
        pos = seg = e;
    }
    return encode_segment(t, sc, text + seg, len - seg, seg == 0, out);
}

static int encode(const fp_tokenizer *self, const char *text, size_t len, int pre, int suf,
                  int match_special, int32_t **ids, size_t *n)
{
    scratch sc = { 0 };
    ivec out = { 0 };
    int rc = -1;
    *ids = NULL;
    *n = 0;
    if (len > INT32_MAX / 2)
        return fp_error_set("tokenizer: text of %zu bytes is too long to encode at once "
                            "(split it under 1 GiB)", len);
    /* the shared memo if no other thread holds it, else a private one */
    pthread_mutex_t *lock = (pthread_mutex_t *)&self->cache_lock;
    int locked = pthread_mutex_trylock(lock) == 0;
    sc.cache = locked ? (bpe_cache *)&self->cache : &sc.local_cache;
    for (size_t i = 0; pre && i < self->post_pre.len; i++)
        if (ivec_push(&out, self->post_pre.p[i]) != 0)
            goto done;
    if (encode_text(self, &sc, text, len, match_special, &out) != 0)
        goto done;
    for (size_t i = 0; suf && i < self->post_suf.len; i++)
        if (ivec_push(&out, self->post_suf.p[i]) != 0)
            goto done;
    if (!out.p && !(out.p = malloc(sizeof *out.p))) { /* callers may free an empty result */
        fp_error_set("tokenizer: out of memory");
        goto done;
    }
    *ids = out.p;
    *n = out.len;
    out.p = NULL;
    rc = 0;
done:
    if (locked)
        pthread_mutex_unlock(lock);
    scratch_free(&sc);
    free(out.p);
    return rc;
}

int fp_tokenizer_encode(const fp_tokenizer *self, const char *text, size_t len, int add_bos,
                        int32_t **ids, size_t *n)
{
    return encode(self, text, len, add_bos, 0, 1, ids, n);
}

int fp_tokenizer_encode_special(const fp_tokenizer *self, const char *text, size_t len,
                                int add_special, int match_special, int32_t **ids, size_t *n)
{
    return encode(self, text, len, add_special, add_special, match_special, ids, n);
}

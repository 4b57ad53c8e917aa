static void scratch_free(scratch *sc)
{
    free(sc->a.p);
    free(sc->b.p);
    free(sc->wa);
    free(sc->wb);
    free(sc->s);
    free(sc->h);
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

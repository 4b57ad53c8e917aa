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

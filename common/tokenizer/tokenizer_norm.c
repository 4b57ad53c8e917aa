/* tokenizer_norm.c - normalizers: Prepend, Replace (String or Regex), and
 * Sequence of them. Unicode normalization forms are refused. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static int load_replace(norm_op *op, const char *path, const cJSON *o)
{
    const char *c = jstr(o, "content");
    const char *re = jstr(cJSON_GetObjectItemCaseSensitive(o, "pattern"), "Regex");
    if (!c)
        return fp_error_set("%s: normalizer Replace needs a \"content\" string", path);
    if (tstr_dup(&op->b, c, strlen(c)) != 0)
        return -1;
    if (re) {
        op->kind = NORM_REPLACE_RE;
        return tok_regex_compile(path, "normalizer Replace", re, 0, &op->re);
    }
    op->kind = NORM_REPLACE;
    return jpattern(path, "normalizer", o, &op->a);
}

static int load_norm_one(fp_tokenizer *t, const char *path, const cJSON *o)
{
    const char *type = jstr(o, "type");
    norm_op *op = &t->norm[t->n_norm++]; /* counted first so that free sees it */
    if (type && !strcmp(type, "Prepend")) {
        const char *p = jstr(o, "prepend");
        if (!p)
            return fp_error_set("%s: normalizer Prepend needs a \"prepend\" string", path);
        op->kind = NORM_PREPEND;
        return tstr_dup(&op->a, p, strlen(p));
    }
    if (type && !strcmp(type, "Replace"))
        return load_replace(op, path, o);
    return fp_error_set("%s: normalizer type '%s' is not supported yet (Prepend, Replace, "
                        "Sequence)", path, type ? type : "(none)");
}

int tok_load_normalizer(fp_tokenizer *t, const char *path, const cJSON *o)
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

void tok_swap_text(scratch *sc)
{
    sbuf tmp = sc->a;
    sc->a = sc->b;
    sc->b = tmp;
    sc->b.len = 0;
}

int tok_normalize(const fp_tokenizer *t, scratch *sc, const char *s, size_t len)
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
        } else if (op->kind == NORM_REPLACE_RE) {
            if (tok_regex_replace(op->re, sc, &sc->b, sc->a.p, sc->a.len, &op->b) != 0)
                return -1;
        } else if (put_replaced(&sc->b, sc->a.p, sc->a.len, &op->a, &op->b) != 0) {
            return -1;
        }
        tok_swap_text(sc);
    }
    return 0;
}

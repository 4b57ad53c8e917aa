/* tokenizer_model.c - the BPE model of a tokenizer.json: vocab, merges and
 * flags (unk, byte_fallback, fuse_unk, ignore_merges). */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    /* An empty vocabulary would load and then encode every text to nothing. */
    if (n == 0)
        return fp_error_set("%s: model.vocab is empty; a BPE tokenizer needs its pieces "
                            "(truncated or hand-edited tokenizer.json?)", path);
    t->vocab = calloc(n, sizeof *t->vocab);
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

int tok_load_model(fp_tokenizer *t, const char *path, const cJSON *model)
{
    const char *type = jstr(model, "type");
    if (!cJSON_IsObject(model))
        return fp_error_set("%s: no \"model\" object (is this a tokenizer.json?)", path);
    if (type && strcmp(type, "BPE") != 0)
        return fp_error_set("%s: model type '%s' is not supported yet (BPE only: "
                            "SentencePiece-style or byte-level)", path, type);
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

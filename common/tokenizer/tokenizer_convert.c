/* tokenizer_convert.c - llama2.c tokenizer (tok512.bin) -> HF tokenizer.json
 * + tokenizer_config.json, SentencePiece-style. */
#include "tokenizer_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct { float score; int32_t p, l, r; } cmerge;

/* Reads tok512.bin-style records into pieces/scores, with ' ' turned into
 * U+2581 and ids 0..2 named as SentencePiece names them. */
static int read_llama2c(const char *path, int vocab_size, tstr *pieces, float *scores)
{
    static const char *names[3] = { "<unk>", "<s>", "</s>" };
    static const tstr space = { " ", 1 }, meta = { "\xe2\x96\x81", 3 };
    size_t len, off = 4;
    int32_t maxlen;
    char *buf = tok_read_whole(path, &len);
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
            if (tok_grow((void **)&v, &cap, nv + 1, sizeof *v) != 0) {
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

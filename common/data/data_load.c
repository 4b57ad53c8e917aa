/* data_load.c - fp_dataset_load: every example into one buffer, then the
 * seeded split into train and validation streams (see data.h). */
#include "data.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_records.h"
#include "rng.h"
#include "tokenizer.h"

typedef struct {
    const char *path;
    const struct fp_tokenizer *tok;
    int vocab, eos;
    fp_data_format format;
    int encode;                 /* 0: only count examples (plain text, one stream) */
    fp_tokbuf all;
    size_t *off;                /* example i is all[off[i], off[i+1]) */
    size_t n_ex, cap_ex;
} load_ctx;

static int on_record(void *vctx, const fp_record *r)
{
    load_ctx *c = vctx;
    if (c->n_ex + 2 > c->cap_ex) {
        size_t cap = c->cap_ex ? c->cap_ex * 2 : 1024;
        size_t *p = realloc(c->off, cap * sizeof *p);
        if (!p)
            return fp_error_set("out of memory loading %s (%zu examples)", c->path, c->n_ex);
        c->off = p;
        c->cap_ex = cap;
    }
    size_t start = c->all.n;
    int rc = c->encode ? fp_record_tokens(c->path, r, c->format, c->tok, c->vocab, c->eos,
                                          &c->all)
                       : 0;
    if (rc != 0) {
        c->all.n = start;       /* a skipped record leaves nothing behind */
        return rc;
    }
    c->off[c->n_ex++] = start;
    c->off[c->n_ex] = c->all.n;
    return 0;
}

/* Plain text with no split: the whole file as one stream, as before. */
static int encode_whole(load_ctx *c, const char *buf, size_t len)
{
    if (!c->tok)
        return fp_error_set("%s: plain text needs a tokenizer (the model directory's "
                            "tokenizer.json)", c->path);
    int32_t *ids = NULL;
    size_t n = 0;
    if (fp_tokenizer_encode(c->tok, buf, len, 0, &ids, &n) != 0)
        return fp_error_prefix("tokenizing %s: ", c->path);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (c->vocab > 0 && ids[i] >= c->vocab)) {
            fp_error_set("%s: the tokenizer produced id %d, outside the model's vocabulary "
                         "(0..%d); do tokenizer and model match?", c->path, (int)ids[i],
                         c->vocab - 1);
            free(ids);
            return -1;
        }
    fp_tokbuf_free(&c->all);
    c->all = (fp_tokbuf){ .ids = ids, .loss = calloc(n ? n : 1, 1), .n = n, .cap = n };
    if (!c->all.loss)
        return fp_error_set("out of memory loading %s", c->path);
    memset(c->all.loss, 1, n);
    return 0;
}

/* Copies the examples with held[i] == want into t, in file order; loss is
 * dropped (NULL) when every flag is set. */
static int gather(const load_ctx *c, const uint8_t *held, uint8_t want, fp_tokens *t)
{
    size_t n = 0, all_on = 1;
    for (size_t i = 0; i < c->n_ex; i++)
        if (held[i] == want)
            n += c->off[i + 1] - c->off[i];
    t->ids = malloc((n ? n : 1) * sizeof *t->ids);
    t->loss = malloc(n ? n : 1);
    if (!t->ids || !t->loss)
        return fp_error_set("out of memory splitting %s (%zu tokens)", c->path, n);
    t->n = 0;
    for (size_t i = 0; i < c->n_ex; i++) {
        if (held[i] != want)
            continue;
        size_t k = c->off[i + 1] - c->off[i];
        memcpy(t->ids + t->n, c->all.ids + c->off[i], k * sizeof *t->ids);
        memcpy(t->loss + t->n, c->all.loss + c->off[i], k);
        t->n += k;
    }
    for (size_t i = 0; i < t->n; i++)
        all_on &= t->loss[i] != 0;
    if (all_on) {
        free(t->loss);
        t->loss = NULL;
    }
    return 0;
}

/* held[i] = 1 for the examples a seeded shuffle puts first. */
static size_t choose_valid(size_t n, double frac, uint64_t seed, uint8_t *held)
{
    memset(held, 0, n);
    if (!(frac > 0.0) || n < 2)
        return 0;
    double want = floor(frac * (double)n + 0.5);
    size_t nv = want < 1.0 ? 1 : want > (double)(n - 1) ? n - 1 : (size_t)want;
    size_t *perm = malloc(n * sizeof *perm);
    if (!perm)
        return (size_t)-1;
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    fp_rng r;
    fp_rng_seed(&r, seed);
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)fp_rng_below(&r, (uint64_t)i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (size_t i = 0; i < nv; i++)
        held[perm[i]] = 1;
    free(perm);
    return nv;
}

static int split(load_ctx *c, const fp_data_options *o, fp_dataset *d)
{
    uint8_t *held = malloc(c->n_ex ? c->n_ex : 1);
    if (!held)
        return fp_error_set("out of memory splitting %s", c->path);
    size_t nv = choose_valid(c->n_ex, o->val_fraction, o->split_seed, held);
    int rc = -1;
    if (nv == (size_t)-1)
        fp_error_set("out of memory splitting %s", c->path);
    else if (gather(c, held, 0, &d->train) == 0 && gather(c, held, 1, &d->valid) == 0)
        rc = 0;
    d->valid_examples = nv == (size_t)-1 ? 0 : nv;
    d->train_examples = c->n_ex - d->valid_examples;
    free(held);
    return rc;
}

int fp_dataset_load(const char *path, const struct fp_tokenizer *tok, int vocab_size,
                    const fp_data_options *opt, fp_dataset *out)
{
    fp_data_options o;
    fp_data_options_default(&o);
    o.val_fraction = 0.0;
    if (opt)
        o = *opt;
    memset(out, 0, sizeof *out);
    load_ctx c = { .path = path, .tok = tok, .vocab = vocab_size, .format = o.format,
                   .eos = tok ? fp_tokenizer_eos(tok) : -1 };
    char *buf = NULL;
    size_t len = 0;
    fp_record_stats st;
    if (fp_read_file(path, &buf, &len) != 0)
        return -1;
    /* Plain text without a split keeps its one-stream tokenization. */
    c.encode = !(o.val_fraction <= 0.0 &&
                 (o.format == FP_FORMAT_TEXT ||
                  (o.format == FP_FORMAT_AUTO && buf[strspn(buf, " \t\r\n")] != '{' &&
                   buf[strspn(buf, " \t\r\n")] != '[')));
    if (fp_records_read(path, buf, len, &c.format, o.skip_bad, on_record, &c, &st) != 0)
        goto err;
    if (!c.encode && encode_whole(&c, buf, len) != 0)
        goto err;
    if (c.all.n == 0) {
        fp_error_set("data file %s holds no tokens", path);
        goto err;
    }
    if (!c.encode)      /* one example spanning the stream: nothing to split */
        c.n_ex = 1, c.off[0] = 0, c.off[1] = c.all.n;
    if (split(&c, &o, out) != 0)
        goto err;
    out->format = c.format;
    out->examples = st.records;
    out->train_examples = c.encode ? out->train_examples : st.records;
    out->skipped = st.skipped;
    snprintf(out->first_skipped, sizeof out->first_skipped, "%s", st.first_skipped);
    free(buf), free(c.off);
    fp_tokbuf_free(&c.all);
    return 0;
err:
    fp_dataset_free(out);
    free(buf), free(c.off);
    fp_tokbuf_free(&c.all);
    return -1;
}

void fp_dataset_free(fp_dataset *d)
{
    if (!d)
        return;
    fp_tokens_free(&d->train);
    fp_tokens_free(&d->valid);
}

size_t fp_tokens_targets(const fp_tokens *t)
{
    size_t n = 0;
    for (size_t i = 1; i < t->n; i++)
        n += !t->loss || t->loss[i];
    return n;
}

int fp_data_load(const char *path, const struct fp_tokenizer *tok, int vocab_size,
                 fp_tokens *out)
{
    fp_dataset d;
    if (fp_dataset_load(path, tok, vocab_size, NULL, &d) != 0) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    *out = d.train;
    fp_tokens_free(&d.valid);
    return 0;
}

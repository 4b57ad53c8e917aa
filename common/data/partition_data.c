/* partition_data.c - a file's examples with labels and sizes, and writing
 * shards back in the input's format (see partition.h). */
#include "partition.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data_records.h"
#include "tokenizer.h"

typedef struct {
    const char *path, *field;
    const struct fp_tokenizer *tok;
    fp_data_format format;
    fp_part_data *d;
    char **lab;                 /* per example, before interning */
    size_t cap;
    char *speaker;              /* the last speech's speaker (plain text) */
} pd_ctx;

/* The label of a record as a string (malloc'd); 1 (bad) when missing. */
static int record_label(pd_ctx *c, const fp_record *r, char **out)
{
    *out = NULL;
    if (!c->field)
        return 0;
    if (!r->json) {
        size_t n = strcspn(r->text, "\n");
        while (n > 0 && (r->text[n - 1] == '\r' || r->text[n - 1] == ' '))
            n--;
        if (n > 1 && r->text[n - 1] == ':') {
            free(c->speaker);
            c->speaker = strndup(r->text, n - 1);
        } else if (!c->speaker) {
            return fp_error_set("%s:%d: this block does not start with a `Name:` line, so "
                                "its speaker is unknown", c->path, r->line), 1;
        }
        return (*out = strdup(c->speaker)) ? 0 : -1;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->json, c->field);
    if (!v)
        return fp_error_set("%s:%d: no \"%s\" field to partition by", c->path, r->line,
                            c->field), 1;
    if (cJSON_IsString(v))
        *out = strdup(v->valuestring);
    else
        *out = cJSON_PrintUnformatted(v);
    return *out ? 0 : fp_error_set("out of memory reading labels of %s", c->path);
}

static int grow(pd_ctx *c)
{
    fp_part_data *d = c->d;
    size_t cap = c->cap ? c->cap * 2 : 1024;
    void *a = realloc(d->raw, cap * sizeof *d->raw), *b;
    if (a) d->raw = a;
    if (a && (b = realloc(d->raw_len, cap * sizeof *d->raw_len))) d->raw_len = b; else a = NULL;
    if (a && (b = realloc(d->size, cap * sizeof *d->size))) d->size = b; else a = NULL;
    if (a && (b = realloc(d->label, cap * sizeof *d->label))) d->label = b; else a = NULL;
    if (a && (b = realloc(c->lab, cap * sizeof *c->lab))) c->lab = b; else a = NULL;
    if (!a)
        return fp_error_set("out of memory reading %s (%zu examples)", c->path, d->n);
    c->cap = cap;
    return 0;
}

static int on_record(void *vctx, const fp_record *r)
{
    pd_ctx *c = vctx;
    fp_part_data *d = c->d;
    if (d->n == c->cap && grow(c) != 0)
        return -1;
    char *label = NULL;
    int rc = record_label(c, r, &label);
    if (rc != 0)
        return rc;
    size_t size = 0;
    if (c->tok || c->format == FP_FORMAT_IDS) {
        fp_tokbuf tb = { 0 };
        rc = fp_record_tokens(c->path, r, c->format, c->tok, 0,
                              c->tok ? fp_tokenizer_eos(c->tok) : -1, &tb);
        size = tb.n;
        fp_tokbuf_free(&tb);
        if (rc != 0)
            return free(label), rc;
    }
    char *raw = r->json ? cJSON_PrintUnformatted(r->json) : strndup(r->text, r->trimmed_len);
    if (!raw)
        return free(label), fp_error_set("out of memory reading %s", c->path);
    d->raw[d->n] = raw;
    d->raw_len[d->n] = strlen(raw);
    d->size[d->n] = (c->tok || c->format == FP_FORMAT_IDS) ? size : d->raw_len[d->n];
    c->lab[d->n++] = label;
    return 0;
}

typedef struct {
    const char *s;
    size_t i;
} lab_ref;

static int by_label(const void *a, const void *b)
{
    const lab_ref *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

/* Turns per-example strings into indices into d->labels (sorted). */
static int intern_labels(pd_ctx *c)
{
    fp_part_data *d = c->d;
    lab_ref *idx = malloc((d->n ? d->n : 1) * sizeof *idx);
    d->labels = malloc((d->n ? d->n : 1) * sizeof *d->labels);
    if (!idx || !d->labels)
        return free(idx), fp_error_set("out of memory sorting labels of %s", c->path);
    size_t m = 0;
    for (size_t i = 0; i < d->n; i++) {
        d->label[i] = FP_NO_LABEL;
        if (c->lab[i])
            idx[m++] = (lab_ref){ c->lab[i], i };
    }
    qsort(idx, m, sizeof *idx, by_label);
    for (size_t k = 0; k < m; k++) {
        size_t i = idx[k].i;
        if (d->n_labels == 0 || strcmp(d->labels[d->n_labels - 1], idx[k].s) != 0) {
            d->labels[d->n_labels++] = c->lab[i];
            c->lab[i] = NULL;       /* now owned by d->labels */
        }
        d->label[i] = d->n_labels - 1;
    }
    free(idx);
    return 0;
}

int fp_part_data_load(const char *path, fp_data_format format, int skip_bad,
                      const char *label_field, const struct fp_tokenizer *tok,
                      fp_part_data *out)
{
    memset(out, 0, sizeof *out);
    pd_ctx c = { .path = path, .field = label_field, .tok = tok, .format = format, .d = out };
    char *buf = NULL;
    size_t len = 0;
    fp_record_stats st;
    int rc = -1;
    if (fp_read_file(path, &buf, &len) != 0)
        return -1;
    if (fp_records_read(path, buf, len, &c.format, skip_bad, on_record, &c, &st) != 0)
        goto out;
    out->format = c.format;
    out->skipped = st.skipped;
    snprintf(out->first_skipped, sizeof out->first_skipped, "%s", st.first_skipped);
    if (out->n == 0) {
        fp_error_set("%s holds no examples", path);
        goto out;
    }
    rc = intern_labels(&c);
out:
    for (size_t i = 0; i < out->n; i++)
        free(c.lab ? c.lab[i] : NULL);
    free(c.lab), free(c.speaker), free(buf);
    if (rc != 0)
        fp_part_data_free(out);
    return rc;
}

void fp_part_data_free(fp_part_data *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++)
        free(d->raw[i]);
    for (size_t i = 0; i < d->n_labels; i++)
        free(d->labels[i]);
    free(d->raw), free(d->raw_len), free(d->size), free(d->label), free(d->labels);
    memset(d, 0, sizeof *d);
}

const char *fp_partition_shard_name(const fp_part_data *d, size_t s, char buf[64])
{
    snprintf(buf, 64, "shard-%03zu.%s", s, d->format == FP_FORMAT_TEXT ? "txt" : "jsonl");
    return buf;
}

/* Text blocks are separated by one blank line; JSON records one per line. */
static int write_shard(const fp_part_data *d, const size_t *shard_of, size_t s, const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return fp_error_set("cannot create %s: %s", path, strerror(errno));
    int first = 1;
    for (size_t i = 0; i < d->n; i++) {
        if (shard_of[i] != s)
            continue;
        const char *r = d->raw[i];
        size_t n = d->raw_len[i];
        if (d->format == FP_FORMAT_TEXT && !first)
            fputc('\n', f);
        fwrite(r, 1, n, f);
        if (d->format != FP_FORMAT_TEXT || n == 0 || r[n - 1] != '\n')
            fputc('\n', f);
        first = 0;
    }
    if (fclose(f) != 0)
        return fp_error_set("cannot write %s: %s", path, strerror(errno));
    return 0;
}

int fp_partition_write(const fp_part_data *d, const size_t *shard_of, size_t n_shards,
                       const char *dir)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return fp_error_set("cannot create the output directory %s: %s", dir, strerror(errno));
    for (size_t s = 0; s < n_shards; s++) {
        char name[64], path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, fp_partition_shard_name(d, s, name));
        if (write_shard(d, shard_of, s, path) != 0)
            return -1;
    }
    return 0;
}

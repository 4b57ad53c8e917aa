/* data.c - load training data as one token stream; batch and eval rows (see data.h).
 *
 * JSON(L) is read one top-level value at a time (cJSON with return_parse_end),
 * so a big file never becomes one big tree and every record knows its line.
 * Records go through one function, record_append(), which is where text and
 * Alpaca forms (with loss flags) will plug in.
 */
#include "data.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "rng.h"
#include "tokenizer.h"

/* ---------------------------------------------------------------- loading */

typedef struct {
    const char *path;
    int vocab_size;
    int32_t *ids;
    size_t n, cap;
} load_ctx;

static int read_whole(const char *path, char **buf_out, size_t *len_out)
{
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fp_error_set("cannot open data file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fp_error_set("data file %s is not a regular file", path);
        goto err;
    }
    size_t len = (size_t)st.st_size;
    buf = malloc(len + 1);
    if (!buf) {
        fp_error_set("out of memory reading data file %s (%zu bytes)", path, len);
        goto err;
    }
    if (len > 0 && fread(buf, 1, len, f) != len) {
        fp_error_set("cannot read data file %s: %s", path, strerror(errno));
        goto err;
    }
    buf[len] = '\0';
    fclose(f);
    *buf_out = buf;
    *len_out = len;
    return 0;
err:
    free(buf);
    fclose(f);
    return -1;
}

static int ctx_push(load_ctx *c, int32_t id)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4096;
        int32_t *p = realloc(c->ids, cap * sizeof *p);
        if (!p)
            return fp_error_set("out of memory loading %s (%zu tokens)", c->path, c->n);
        c->ids = p;
        c->cap = cap;
    }
    c->ids[c->n++] = id;
    return 0;
}

static int append_input_ids(load_ctx *c, const cJSON *arr, int line)
{
    if (!cJSON_IsArray(arr))
        return fp_error_set("%s:%d: \"input_ids\" must be a list of integers", c->path, line);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1.0;
        if (!cJSON_IsNumber(e) || v != (double)(long long)v)
            return fp_error_set("%s:%d: input_ids[%d] is not an integer", c->path, line, i);
        if (v < 0 || (c->vocab_size > 0 && v >= c->vocab_size))
            return fp_error_set("%s:%d: input_ids[%d] = %.0f is outside the vocabulary (0..%d); "
                                "was it tokenized for another model?",
                                c->path, line, i, v, c->vocab_size - 1);
        if (ctx_push(c, (int32_t)v) != 0)
            return -1;
        i++;
    }
    return 0;
}

/* One record (a JSON object starting at `line`). */
static int record_append(load_ctx *c, const cJSON *rec, int line)
{
    if (!cJSON_IsObject(rec))
        return fp_error_set("%s:%d: expected a JSON object per record, "
                            "like {\"input_ids\": [1, 2, 3]}", c->path, line);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(rec, "input_ids");
    if (ids)
        return append_input_ids(c, ids, line);
    return fp_error_set("%s:%d: no \"input_ids\" field; plain text and input_ids JSONL "
                        "are supported here", c->path, line);
}

static int count_lines(const char *from, const char *to)
{
    int n = 0;
    for (const char *p = from; p < to; p++)
        n += *p == '\n';
    return n;
}

static size_t skip_ws(const char *buf, size_t len, size_t pos)
{
    while (pos < len && (buf[pos] == ' ' || buf[pos] == '\t' || buf[pos] == '\n' ||
                         buf[pos] == '\r'))
        pos++;
    return pos;
}

/* JSONL (values separated by whitespace) or one JSON array of records. */
static int load_json(load_ctx *c, const char *buf, size_t len, size_t pos)
{
    int array = buf[pos] == '[';
    int line = 1 + count_lines(buf, buf + pos);
    if (array)
        pos++;
    for (;;) {
        size_t at = skip_ws(buf, len, pos);
        line += count_lines(buf + pos, buf + at);
        pos = at;
        if (pos == len) {
            if (array)
                return fp_error_set("%s:%d: invalid JSON: the list is not closed with ']'",
                                    c->path, line);
            return 0;
        }
        if (array && buf[pos] == ']')
            return 0;
        const char *end = NULL;
        cJSON *rec = cJSON_ParseWithLengthOpts(buf + pos, len - pos, &end, 0);
        if (!rec) {
            int eline = line + (end ? count_lines(buf + pos, end) : 0);
            return fp_error_set("%s:%d: invalid JSON; each line must be one object "
                                "like {\"input_ids\": [1, 2, 3]}", c->path, eline);
        }
        int rc = record_append(c, rec, line);
        cJSON_Delete(rec);
        if (rc != 0)
            return -1;
        at = (size_t)(end - buf);
        line += count_lines(buf + pos, buf + at);
        pos = at;
        if (array) {
            int rec_line = line;
            at = skip_ws(buf, len, pos);
            line += count_lines(buf + pos, buf + at);
            pos = at;
            if (pos < len && buf[pos] == ',')
                pos++;
            else if (!(pos < len && buf[pos] == ']'))
                return fp_error_set("%s:%d: invalid JSON: expected ',' or ']' after the "
                                    "record ending on line %d", c->path, line, rec_line);
        }
    }
}

static int load_text(load_ctx *c, const struct fp_tokenizer *tok, const char *buf, size_t len)
{
    if (!tok)
        return fp_error_set("%s: plain text needs a tokenizer (the model directory's "
                            "tokenizer.json)", c->path);
    if (fp_tokenizer_encode(tok, buf, len, 0, &c->ids, &c->n) != 0)
        return fp_error_prefix("tokenizing %s: ", c->path);
    c->cap = c->n;
    for (size_t i = 0; i < c->n; i++)
        if (c->ids[i] < 0 || (c->vocab_size > 0 && c->ids[i] >= c->vocab_size))
            return fp_error_set("%s: the tokenizer produced id %d, outside the model's "
                                "vocabulary (0..%d); do tokenizer and model match?",
                                c->path, (int)c->ids[i], c->vocab_size - 1);
    return 0;
}

int fp_data_load(const char *path, const struct fp_tokenizer *tok, int vocab_size,
                 fp_tokens *out)
{
    load_ctx c = { .path = path, .vocab_size = vocab_size };
    char *buf = NULL;
    size_t len = 0;
    memset(out, 0, sizeof *out);
    if (read_whole(path, &buf, &len) != 0)
        return -1;
    size_t pos = skip_ws(buf, len, 0);
    if (pos == len) {
        fp_error_set("data file %s is empty", path);
        goto err;
    }
    int rc = (buf[pos] == '{' || buf[pos] == '[') ? load_json(&c, buf, len, pos)
                                                  : load_text(&c, tok, buf, len);
    if (rc != 0)
        goto err;
    if (c.n == 0) {
        fp_error_set("data file %s holds no tokens", path);
        goto err;
    }
    free(buf);
    out->ids = c.ids;
    out->loss = NULL;
    out->n = c.n;
    return 0;
err:
    free(buf);
    free(c.ids);
    return -1;
}

void fp_tokens_free(fp_tokens *t)
{
    if (!t)
        return;
    free(t->ids);
    free(t->loss);
    t->ids = NULL;
    t->loss = NULL;
    t->n = 0;
}

/* ---------------------------------------------------------------- batches */

size_t fp_data_rows(const fp_tokens *t, int T)
{
    if (T <= 0 || t->n < (size_t)T + 1)
        return 0;
    return (t->n - 1) / (size_t)T;
}

struct fp_batcher {
    const fp_tokens *t;     /* borrowed: the caller keeps the tokens alive */
    int B, T;
    int shuffle;
    uint64_t seed;
    size_t rows;
    size_t *perm;           /* row order of epoch perm_epoch (shuffle only) */
    uint64_t perm_epoch;
};

/* Fisher-Yates over the identity, seeded by seed + epoch. */
static void make_perm(fp_batcher *self, uint64_t epoch)
{
    fp_rng r;
    fp_rng_seed(&r, self->seed + epoch);
    for (size_t i = 0; i < self->rows; i++)
        self->perm[i] = i;
    for (size_t i = self->rows - 1; i > 0; i--) {
        size_t j = (size_t)fp_rng_below(&r, (uint64_t)i + 1);
        size_t tmp = self->perm[i];
        self->perm[i] = self->perm[j];
        self->perm[j] = tmp;
    }
    self->perm_epoch = epoch;
}

fp_batcher *fp_batcher_new(const fp_tokens *t, int B, int T, int shuffle, uint64_t seed)
{
    if (B <= 0 || T <= 0) {
        fp_error_set("batch size (%d) and sequence length (%d) must be positive", B, T);
        return NULL;
    }
    size_t rows = fp_data_rows(t, T);
    if (rows < (size_t)B) {
        fp_error_set("the data holds %zu tokens, %zu rows of %d+1; a batch needs %d rows: "
                     "use more data or a smaller batch size / sequence length",
                     t->n, rows, T, B);
        return NULL;
    }
    fp_batcher *self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    *self = (fp_batcher){ .t = t, .B = B, .T = T, .shuffle = shuffle, .seed = seed,
                          .rows = rows };
    if (shuffle) {
        self->perm = malloc(rows * sizeof *self->perm);
        if (!self->perm)
            goto oom;
        make_perm(self, 0);
    }
    return self;
oom:
    fp_batcher_free(&self);
    fp_error_set("out of memory creating a batcher over %zu rows", rows);
    return NULL;
}

void fp_batcher_free(fp_batcher **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->perm);
    free(*self_p);
    *self_p = NULL;
}

/* Row r: inputs = ids[r*T, r*T+T), targets shifted by one, -1 where masked. */
static void fill_row(const fp_tokens *t, int T, size_t r, int32_t *inputs, int32_t *targets)
{
    const int32_t *ids = t->ids + r * (size_t)T;
    const uint8_t *loss = t->loss ? t->loss + r * (size_t)T : NULL;
    for (int i = 0; i < T; i++) {
        inputs[i] = ids[i];
        targets[i] = (loss && !loss[i + 1]) ? -1 : ids[i + 1];
    }
}

void fp_batcher_get(fp_batcher *self, int step, int32_t *inputs, int32_t *targets)
{
    for (int b = 0; b < self->B; b++) {
        uint64_t k = (uint64_t)step * (uint64_t)self->B + (uint64_t)b;
        size_t r = (size_t)(k % self->rows);
        if (self->shuffle) {
            uint64_t epoch = k / self->rows;
            if (epoch != self->perm_epoch)
                make_perm(self, epoch);
            r = self->perm[r];
        }
        fill_row(self->t, self->T, r, inputs + (size_t)b * self->T,
                 targets + (size_t)b * self->T);
    }
}

void fp_data_eval_row(const fp_tokens *t, int T, size_t r, int32_t *inputs, int32_t *targets)
{
    fill_row(t, T, r, inputs, targets);
}

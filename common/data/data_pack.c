/* data_pack.c - records to token streams: tokenizing each form, packing the
 * examples with EOS, and the seeded validation split (see data.h). */
#include "data.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_records.h"
#include "tokenizer.h"

static const char *const format_names[] = { "auto", "text", "json", "alpaca", "ids" };

int fp_data_parse_format(const char *s, fp_data_format *out)
{
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, format_names[i]))
            return *out = (fp_data_format)i, 0;
    return fp_error_set("unknown data format '%s'; expected auto, text, json, alpaca or ids", s);
}

const char *fp_data_format_name(fp_data_format f)
{
    return (unsigned)f < 5 ? format_names[f] : "?";
}

void fp_data_options_default(fp_data_options *o)
{
    *o = (fp_data_options){ .format = FP_FORMAT_AUTO, .val_fraction = 0.1, .split_seed = 42 };
}

int fp_tokbuf_push(fp_tokbuf *b, int32_t id, uint8_t loss)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        int32_t *ids = realloc(b->ids, cap * sizeof *ids);
        if (ids)
            b->ids = ids;
        uint8_t *l = ids ? realloc(b->loss, cap) : NULL;
        if (!l)
            return fp_error_set("out of memory holding %zu tokens", b->n);
        b->loss = l;
        b->cap = cap;
    }
    b->ids[b->n] = id;
    b->loss[b->n++] = loss;
    return 0;
}

void fp_tokbuf_free(fp_tokbuf *b)
{
    free(b->ids);
    free(b->loss);
    memset(b, 0, sizeof *b);
}

/* The Stanford Alpaca templates (tatsu-lab/stanford_alpaca, train.py). */
static const char alpaca_with_input[] =
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n";
static const char alpaca_no_input[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n%s\n\n### Response:\n";

char *fp_alpaca_prompt(const char *instruction, const char *input)
{
    char *s = NULL;
    int n = input && *input ? asprintf(&s, alpaca_with_input, instruction, input)
                            : asprintf(&s, alpaca_no_input, instruction);
    return n < 0 ? NULL : s;
}

static int check_vocab(const char *path, int line, const int32_t *ids, size_t n, int vocab)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (vocab > 0 && ids[i] >= vocab))
            return fp_error_set("%s:%d: the tokenizer produced id %d, outside the model's "
                                "vocabulary (0..%d); do tokenizer and model match?",
                                path, line, (int)ids[i], vocab - 1);
    return 0;
}

/* Encodes text, flags every token `loss`; 1 (bad) on an id out of vocab. */
static int push_text(const char *path, int line, const struct fp_tokenizer *tok, int vocab,
                     const char *text, size_t len, uint8_t loss, fp_tokbuf *out)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (fp_tokenizer_encode(tok, text, len, 0, &ids, &n) != 0)
        return fp_error_prefix("%s:%d: tokenizing: ", path, line);
    int rc = check_vocab(path, line, ids, n, vocab) != 0 ? 1 : 0;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = fp_tokbuf_push(out, ids[i], loss);
    free(ids);
    return rc;
}

static int push_ids(const char *path, const fp_record *r, int vocab, fp_tokbuf *out)
{
    if (!cJSON_IsArray(r->ids))
        return fp_error_set("%s:%d: \"input_ids\" must be a list of integers", path, r->line), 1;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, r->ids) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1.0;
        if (!cJSON_IsNumber(e) || !isfinite(v) || v != floor(v))  /* no cast: 1e38 overflows it */
            return fp_error_set("%s:%d: input_ids[%d] is not an integer", path, r->line, i), 1;
        if (v < 0 || (vocab > 0 && v >= vocab))
            return fp_error_set("%s:%d: input_ids[%d] = %.0f is outside the vocabulary (0..%d); "
                                "was it tokenized for another model?",
                                path, r->line, i, v, vocab - 1), 1;
        if (fp_tokbuf_push(out, (int32_t)v, 1) != 0)
            return -1;
        i++;
    }
    return 0;
}

/* Prompt + response encoded together (as Stanford Alpaca does); targets are
 * masked over the longest prefix shared with the prompt encoded alone. */
static int push_alpaca(const char *path, const fp_record *r, const struct fp_tokenizer *tok,
                       int vocab, fp_tokbuf *out)
{
    char *prompt = fp_alpaca_prompt(r->instruction, r->input), *full = NULL;
    int32_t *pids = NULL;
    size_t np = 0, start = out->n;
    int rc = -1;
    if (!prompt || asprintf(&full, "%s%s", prompt, r->output) < 0) {
        full = NULL;
        fp_error_set("out of memory rendering %s:%d", path, r->line);
        goto out;
    }
    if ((rc = push_text(path, r->line, tok, vocab, full, strlen(full), 1, out)) != 0)
        goto out;
    rc = -1;
    if (fp_tokenizer_encode(tok, prompt, strlen(prompt), 0, &pids, &np) != 0) {
        fp_error_prefix("%s:%d: tokenizing: ", path, r->line);
        goto out;
    }
    for (size_t i = 0; i < np && start + i < out->n && out->ids[start + i] == pids[i]; i++)
        out->loss[start + i] = 0;
    rc = 0;
out:
    free(prompt), free(full), free(pids);
    return rc;
}

int fp_record_tokens(const char *path, const fp_record *r, fp_data_format format,
                     const struct fp_tokenizer *tok, int vocab, int eos, fp_tokbuf *out)
{
    if (format == FP_FORMAT_IDS)
        return push_ids(path, r, vocab, out);
    if (!tok)
        return fp_error_set("%s: %s needs a tokenizer (the model directory's tokenizer.json)",
                            path, format == FP_FORMAT_TEXT ? "plain text" : "text data");
    int rc = format == FP_FORMAT_ALPACA
                 ? push_alpaca(path, r, tok, vocab, out)
                 : push_text(path, r->line, tok, vocab, r->text, r->len, 1, out);
    if (rc == 0 && format != FP_FORMAT_TEXT && eos >= 0 && (vocab <= 0 || eos < vocab))
        rc = fp_tokbuf_push(out, eos, 1);
    return rc;
}

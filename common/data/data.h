/* common/data/ - training text: records of every form, packing into token
 * streams and batches, partitioning into shards. Uses base and tokenizer.
 *
 * data.h - datasets: records of several forms, packed into token streams,
 * a seeded validation split, and the batches read from a stream.
 *
 * Forms (fp_data_format; detected from the file, or forced):
 *  - text:   plain text. An example is a block of lines separated by blank
 *            lines. Without a split the whole file is tokenized as ONE stream
 *            (no BOS/EOS inserted), as before; with a split each block is
 *            tokenized on its own (block + its trailing blank lines) and the
 *            blocks of each side are concatenated, still with no EOS: plain
 *            text is a running document, not a set of independent examples.
 *  - json:   JSONL (one object per line) or one JSON array of objects, each
 *            with a string "text". Each example is followed by the
 *            tokenizer's EOS (when it has one).
 *  - alpaca: objects with "instruction", "output" and optional "input",
 *            rendered with the Stanford Alpaca templates (see data_pack.c);
 *            the prompt's targets are masked, the response and its EOS count.
 *  - ids:    objects with "input_ids": [...], taken as given (no EOS added).
 * Detection: a file starting with '{' or '[' is JSON and the first record's
 * fields decide (alpaca wins over text when "instruction" and "output"
 * exist); anything else is plain text.
 *
 * Each token carries a loss flag (1 = counts as a target); masked tokens are
 * still inputs but their targets are -1 (train.c skips them in loss and counts).
 *
 * Batch order, so runs reproduce and compare (no shuffle): step j reads tokens
 * [j*B*T, j*B*T + B*T + 1); row b is the T+1 tokens starting at j*B*T + b*T;
 * inputs are the first T, targets the next T. Past the end it wraps (epochs).
 * With shuffle, the rows (windows of T+1 starting at multiples of T) are
 * visited in a seeded random order per epoch. Examples are packed: a row may
 * hold the end of one example and the start of the next.
 */
#ifndef FP_DATA_H
#define FP_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

struct fp_tokenizer;

typedef struct {
    int32_t *ids;
    uint8_t *loss;      /* NULL means every target counts */
    size_t n;
} fp_tokens;

typedef enum {
    FP_FORMAT_AUTO = 0,
    FP_FORMAT_TEXT,
    FP_FORMAT_JSON,
    FP_FORMAT_ALPACA,
    FP_FORMAT_IDS,
} fp_data_format;

/* "auto", "text", "json", "alpaca", "ids". */
int fp_data_parse_format(const char *s, fp_data_format *out) FP_WUR;
const char *fp_data_format_name(fp_data_format f);

typedef struct {
    fp_data_format format;  /* AUTO: detect */
    int skip_bad;           /* skip (and count) malformed records instead of failing */
    double val_fraction;    /* fraction of examples held out; 0 disables */
    uint64_t split_seed;    /* which examples are held out */
} fp_data_options;

/* Defaults: auto, no skipping, val_fraction 0.1, split_seed 42. */
void fp_data_options_default(fp_data_options *o);

typedef struct {
    fp_tokens train, valid;         /* valid.n == 0 when there is no split */
    fp_data_format format;          /* the form read (detected or given) */
    size_t examples;                /* good records / text blocks */
    size_t train_examples, valid_examples;
    size_t skipped;                 /* malformed records skipped (skip_bad) */
    char first_skipped[256];        /* the first skipped record's error, or "" */
} fp_dataset;

/* Loads `path` in the form opt->format (NULL opt: defaults with no split).
 * Holds out round(val_fraction * examples) examples, at least 1 and at most
 * examples - 1 when val_fraction > 0 and there are >= 2 examples, chosen by a
 * Fisher-Yates shuffle of the example indices seeded by split_seed; each
 * side keeps the file order. tok may be NULL only for ids data. Errors name
 * the file and line. Caller frees with fp_dataset_free. */
int fp_dataset_load(const char *path, const struct fp_tokenizer *tok, int vocab_size,
                    const fp_data_options *opt, fp_dataset *out) FP_WUR;
void fp_dataset_free(fp_dataset *d);

/* The Stanford Alpaca prompt for a record (the with-input template when
 * input is non-empty), up to and including "### Response:\n". Caller frees;
 * NULL when out of memory. */
char *fp_alpaca_prompt(const char *instruction, const char *input);

/* Target tokens of a stream: positions i >= 1 whose loss flag is set. */
size_t fp_tokens_targets(const fp_tokens *t);

/* The whole file as one training stream (auto form, no split, no skipping). */
int fp_data_load(const char *path, const struct fp_tokenizer *tok, int vocab_size,
                 fp_tokens *out) FP_WUR;
void fp_tokens_free(fp_tokens *t);

/* Number of full rows of T+1 tokens (starting at multiples of T). */
size_t fp_data_rows(const fp_tokens *t, int T);

typedef struct fp_batcher fp_batcher;   /* opaque: order, epoch */

/* Caller destroys. Errors if the data holds fewer than B rows. */
fp_batcher *fp_batcher_new(const fp_tokens *t, int B, int T, int shuffle, uint64_t seed) FP_WUR;
void fp_batcher_free(fp_batcher **self_p);
/* Fills inputs and targets [B*T] for step j (targets -1 where masked). */
void fp_batcher_get(fp_batcher *self, int step, int32_t *inputs, int32_t *targets);

/* Eval: consecutive rows of T+1 (starting at multiples of T) over the whole
 * stream, incomplete tail dropped. Fills row r into inputs/targets [T]. */
void fp_data_eval_row(const fp_tokens *t, int T, size_t r, int32_t *inputs, int32_t *targets);

#endif

/* data_records.h - reading a data file as records, one per example (used by
 * data_pack.c and the partitioner; not a stable API).
 *
 * JSON is read one top-level value at a time (cJSON with return_parse_end),
 * so a big file never becomes one big tree and every record knows its line.
 * Plain text is cut into blocks at blank lines (lines of only whitespace).
 * With skip_bad a malformed JSONL line is skipped up to the next newline; in
 * a JSON array a syntax error cannot be resynchronised and stays fatal.
 */
#ifndef FP_DATA_RECORDS_H
#define FP_DATA_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "data.h"

struct fp_tokenizer;

typedef struct {
    int line;                   /* 1-based line where the record starts */
    const cJSON *json;          /* JSON forms: the object; NULL for text */
    /* Validated for the form: text (text, json), instruction/input/output
     * (alpaca, input "" when absent), ids (the input_ids array). */
    const char *text;
    size_t len;                 /* text: block bytes up to the next block */
    size_t trimmed_len;         /* text: block bytes through its last line's newline */
    const char *instruction, *input, *output;
    const cJSON *ids;
} fp_record;

/* 0: go on; -1: stop with the error set; 1: the record is bad (error set):
 * skipped and counted with skip_bad, fatal otherwise. */
typedef int (*fp_record_fn)(void *ctx, const fp_record *r);

typedef struct {
    size_t records;             /* records handed to fn and accepted */
    size_t skipped;
    char first_skipped[256];
} fp_record_stats;

/* Reads the whole file (NUL-terminated, malloc'd; caller frees). */
int fp_read_file(const char *path, char **buf_out, size_t *len_out) FP_WUR;

/* Calls fn for each record of buf (the contents of path). *format AUTO is
 * replaced by the detected form. An empty file is an error. */
int fp_records_read(const char *path, const char *buf, size_t len, fp_data_format *format,
                    int skip_bad, fp_record_fn fn, void *ctx, fp_record_stats *st) FP_WUR;

/* A growable token stream with loss flags. */
typedef struct {
    int32_t *ids;
    uint8_t *loss;
    size_t n, cap;
} fp_tokbuf;

int fp_tokbuf_push(fp_tokbuf *b, int32_t id, uint8_t loss) FP_WUR;
void fp_tokbuf_free(fp_tokbuf *b);

/* Appends the tokens of one record in `format` (see data.h for each form):
 * 0, -1 (fatal), or 1 (bad record, e.g. an id outside the vocabulary). eos
 * is appended after json/alpaca examples when >= 0. */
int fp_record_tokens(const char *path, const fp_record *r, fp_data_format format,
                     const struct fp_tokenizer *tok, int vocab_size, int eos,
                     fp_tokbuf *out) FP_WUR;

#endif

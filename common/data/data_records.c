/* data_records.c - a data file as records: JSON(L) values or text blocks,
 * the form detected and each record's fields checked (see data_records.h). */
#include "data_records.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int fp_read_file(const char *path, char **buf_out, size_t *len_out)
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

typedef struct {
    const char *path;
    fp_data_format *format;
    int skip_bad;
    fp_record_fn fn;
    void *ctx;
    fp_record_stats *st;
} reader;

/* A bad record: counted and skipped with skip_bad (rc 0), else fatal (-1). */
static int bad(reader *rd)
{
    if (!rd->skip_bad)
        return -1;
    if (rd->st->skipped++ == 0)
        snprintf(rd->st->first_skipped, sizeof rd->st->first_skipped, "%s", fp_error_get());
    fp_error_clear();
    return 0;
}

static int deliver(reader *rd, const fp_record *r)
{
    int rc = rd->fn(rd->ctx, r);
    if (rc == 1)
        return bad(rd);
    if (rc == 0)
        rd->st->records++;
    return rc;
}

static const char *str_field(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static fp_data_format detect(const cJSON *o)
{
    if (cJSON_GetObjectItemCaseSensitive(o, "instruction") &&
        cJSON_GetObjectItemCaseSensitive(o, "output"))
        return FP_FORMAT_ALPACA;
    if (cJSON_GetObjectItemCaseSensitive(o, "text"))
        return FP_FORMAT_JSON;
    if (cJSON_GetObjectItemCaseSensitive(o, "input_ids"))
        return FP_FORMAT_IDS;
    return FP_FORMAT_AUTO;
}

/* Checks the fields of `o` for the form; 1 (bad) with the error set. */
static int fill_json(reader *rd, const cJSON *o, int line, fp_record *r)
{
    const char *p = rd->path;
    if (!cJSON_IsObject(o))
        return fp_error_set("%s:%d: expected a JSON object per record, like {\"text\": \"...\"} "
                            "or {\"input_ids\": [1, 2, 3]}", p, line), 1;
    if (*rd->format == FP_FORMAT_AUTO && (*rd->format = detect(o)) == FP_FORMAT_AUTO)
        return fp_error_set("%s:%d: cannot tell the form of the first record: expected "
                            "\"text\", \"instruction\" + \"output\", or \"input_ids\" "
                            "(or give --format)", p, line), 1;
    *r = (fp_record){ .line = line, .json = o };
    switch (*rd->format) {
    case FP_FORMAT_JSON:
        if (!(r->text = str_field(o, "text")))
            return fp_error_set("%s:%d: no string \"text\" field (the file's form is json "
                                "text records)", p, line), 1;
        r->len = strlen(r->text);
        return 0;
    case FP_FORMAT_ALPACA:
        r->instruction = str_field(o, "instruction");
        r->output = str_field(o, "output");
        r->input = str_field(o, "input");
        if (!r->instruction || !r->output)
            return fp_error_set("%s:%d: no string \"%s\" field (the file's form is alpaca: "
                                "\"instruction\", optional \"input\", \"output\")", p, line,
                                r->instruction ? "output" : "instruction"), 1;
        if (!r->input && cJSON_GetObjectItemCaseSensitive(o, "input"))
            return fp_error_set("%s:%d: \"input\" must be a string", p, line), 1;
        if (!r->input)
            r->input = "";
        return 0;
    case FP_FORMAT_IDS:
        if (!(r->ids = cJSON_GetObjectItemCaseSensitive(o, "input_ids")))
            return fp_error_set("%s:%d: no \"input_ids\" field (the file's form is "
                                "pre-tokenized ids)", p, line), 1;
        return 0;
    default:
        return fp_error_set("%s:%d: internal: unexpected form", p, line);
    }
}

static int count_lines(const char *from, const char *to)
{
    int n = 0;
    for (const char *q = from; q < to; q++)
        n += *q == '\n';
    return n;
}

static size_t skip_ws(const char *buf, size_t len, size_t pos)
{
    while (pos < len && (buf[pos] == ' ' || buf[pos] == '\t' || buf[pos] == '\n' ||
                         buf[pos] == '\r'))
        pos++;
    return pos;
}

/* One value at buf+pos. *next receives where parsing resumes; -1 fatal. */
static int json_value(reader *rd, const char *buf, size_t len, size_t pos, int line,
                      int array, size_t *next)
{
    const char *end = NULL;
    cJSON *rec = cJSON_ParseWithLengthOpts(buf + pos, len - pos, &end, 0);
    if (!rec) {
        int eline = line + (end ? count_lines(buf + pos, end) : 0);
        fp_error_set("%s:%d: invalid JSON; each line must be one object like "
                     "{\"text\": \"...\"}", rd->path, eline);
        const char *nl = memchr(buf + pos, '\n', len - pos);
        if (array || bad(rd) != 0)
            return -1;
        *next = nl ? (size_t)(nl - buf) + 1 : len;
        return 0;
    }
    fp_record r;
    int rc = fill_json(rd, rec, line, &r);
    rc = rc == 1 ? bad(rd) : rc == 0 ? deliver(rd, &r) : rc;
    cJSON_Delete(rec);
    *next = (size_t)(end - buf);
    return rc;
}

/* JSONL (values separated by whitespace) or one JSON array of records. */
static int read_json(reader *rd, const char *buf, size_t len, size_t pos)
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
                                    rd->path, line);
            return 0;
        }
        if (array && buf[pos] == ']')
            return 0;
        if (json_value(rd, buf, len, pos, line, array, &at) != 0)
            return -1;
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
                                    "record ending on line %d", rd->path, line, rec_line);
        }
    }
}

/* End of the line starting at p (past its '\n', or len). */
static size_t line_end(const char *buf, size_t len, size_t p)
{
    const char *nl = memchr(buf + p, '\n', len - p);
    return nl ? (size_t)(nl - buf) + 1 : len;
}

static int blank_line(const char *buf, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\r' && buf[i] != '\n')
            return 0;
    return 1;
}

/* Blocks of non-blank lines; a block's len runs to the next block. */
static int read_text(reader *rd, const char *buf, size_t len)
{
    size_t p = 0;
    int line = 1;
    while (p < len) {
        size_t e = line_end(buf, len, p);
        if (blank_line(buf, p, e)) {
            p = e, line++;
            continue;
        }
        size_t start = p, trimmed;
        int start_line = line;
        while (p < len && !blank_line(buf, p, (e = line_end(buf, len, p))))
            p = e, line++;
        trimmed = p - start;
        while (p < len && blank_line(buf, p, (e = line_end(buf, len, p))))
            p = e, line++;
        fp_record r = { .line = start_line, .text = buf + start, .len = p - start,
                        .trimmed_len = trimmed };
        if (deliver(rd, &r) != 0)
            return -1;
    }
    return 0;
}

int fp_records_read(const char *path, const char *buf, size_t len, fp_data_format *format,
                    int skip_bad, fp_record_fn fn, void *ctx, fp_record_stats *st)
{
    reader rd = { path, format, skip_bad, fn, ctx, st };
    memset(st, 0, sizeof *st);
    size_t pos = skip_ws(buf, len, 0);
    if (pos == len)
        return fp_error_set("data file %s is empty", path);
    int json = buf[pos] == '{' || buf[pos] == '[';
    if (*format == FP_FORMAT_TEXT || (*format == FP_FORMAT_AUTO && !json)) {
        *format = FP_FORMAT_TEXT;
        return read_text(&rd, buf, len);
    }
    if (!json)
        return fp_error_set("%s:%d: --format %s expects JSONL or a JSON array, but the file "
                            "does not start with '{' or '['", path,
                            1 + count_lines(buf, buf + pos), fp_data_format_name(*format));
    return read_json(&rd, buf, len, pos);
}

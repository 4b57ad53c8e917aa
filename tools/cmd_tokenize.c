/* cmd_tokenize.c - `fedpeft tokenize`: text on stdin -> a JSON array of ids,
 * or (--decode) a JSON array of ids on stdin -> text. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define TOKENIZE_MAX_INPUT ((size_t)1 << 30) /* 1 GiB of stdin */

static const char usage[] =
    "usage: fedpeft tokenize --tokenizer DIR_OR_FILE [--decode] [--special]\n"
    "  Reads UTF-8 text on stdin and prints its ids as one JSON array. Special\n"
    "  tokens written in the text (e.g. <|endoftext|>) are matched.\n"
    "  --special  add what the tokenizer adds around a text (BOS/EOS, per its\n"
    "             post-processor and tokenizer_config.json)\n"
    "  --decode   read a JSON array of ids on stdin and print the text exactly\n"
    "             (no newline added); special tokens are dropped unless --special\n";

/* All of stdin, NUL-terminated (caller frees); NULL on error or if too large. */
static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap + 1);
    while (buf && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) {
            char *b2 = cap >= TOKENIZE_MAX_INPUT ? NULL : realloc(buf, 2 * cap + 1);
            if (!b2) {
                free(buf);
                fp_error_set("stdin: more than %zu bytes (or out of memory)",
                             (size_t)TOKENIZE_MAX_INPUT);
                return NULL;
            }
            buf = b2;
            cap *= 2;
        }
    }
    if (!buf || ferror(stdin)) {
        free(buf);
        fp_error_set("stdin: read error (or out of memory)");
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int encode_cmd(const fp_tokenizer *tok, const char *text, size_t len, int special)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (fp_tokenizer_encode_special(tok, text, len, special, 1, &ids, &n) != 0)
        return cli_fail_lib("tokenize");
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf(i ? ",%d" : "%d", (int)ids[i]);
    puts("]");
    free(ids);
    return fflush(stdout) == 0 ? 0 : cli_fail("tokenize", "cannot write to stdout");
}

/* stdin holds [id, ...]: each an integer; range is the tokenizer's to check. */
static int decode_cmd(const fp_tokenizer *tok, const char *text, size_t len, int special)
{
    const char *cmd = "tokenize";
    cJSON *arr = cJSON_ParseWithLength(text, len);
    int32_t *ids = NULL;
    int rc = 1, n = arr ? cJSON_GetArraySize(arr) : 0;
    if (!cJSON_IsArray(arr)) {
        cli_fail(cmd, "--decode expects a JSON array of ids on stdin, such as [15496,995]; "
                      "got '%.40s'", text);
        goto out;
    }
    ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!ids) {
        cli_fail(cmd, "out of memory for %d ids", n);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(arr, i);
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
            fabs(v->valuedouble) > 2147483647.0) {
            char *s = cJSON_PrintUnformatted(v);
            cli_fail(cmd, "--decode: element %d of the array is %s, not an integer id", i,
                     s ? s : "?");
            free(s);
            goto out;
        }
        ids[i] = (int32_t)v->valuedouble;
    }
    char *s = fp_tokenizer_decode(tok, ids, (size_t)n, !special);
    if (!s) {
        cli_fail_lib(cmd);
        goto out;
    }
    fputs(s, stdout);
    free(s);
    rc = fflush(stdout) == 0 ? 0 : cli_fail(cmd, "cannot write to stdout");
out:
    free(ids);
    cJSON_Delete(arr);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *cmd = "tokenize", *path = NULL;
    int decode = 0, special = 0, c;
    static const struct option opts[] = {
        {"tokenizer", required_argument, 0, 't'}, {"decode", no_argument, 0, 'd'},
        {"special", no_argument, 0, 's'},         {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't': path = optarg; break;
        case 'd': decode = 1; break;
        case 's': special = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        default: return cli_usage_hint(cmd);
        }
    }
    if (!path || optind < argc) {
        fputs(usage, stderr);
        return cli_fail(cmd, optind < argc ? "unexpected argument '%s' (the text comes on "
                                             "stdin)" : "--tokenizer is required",
                        optind < argc ? argv[optind] : "");
    }
    fp_tokenizer *tok = fp_tokenizer_load(path);
    if (!tok)
        return cli_fail_lib(cmd);
    size_t len = 0;
    char *text = read_stdin(&len);
    int rc = !text ? cli_fail_lib(cmd) : decode ? decode_cmd(tok, text, len, special)
                                                 : encode_cmd(tok, text, len, special);
    free(text);
    fp_tokenizer_free(&tok);
    return rc;
}

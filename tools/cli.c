/* cli.c - argument helpers shared by the subcommands (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int cli_fail(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fedpeft %s: error: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

int cli_fail_lib(const char *cmd) { return cli_fail(cmd, "%s", fp_error_get()); }

int cli_usage_hint(const char *cmd)
{
    fprintf(stderr, "run 'fedpeft %s --help' for its options\n", cmd);
    return 2;
}

int cli_int(const char *cmd, const char *opt, const char *s, long min, long max, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        cli_fail(cmd, "%s expects an integer from %ld to %ld, got '%s'", opt, min, max, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int cli_float(const char *cmd, const char *opt, const char *s, double min, double max, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || v > max) {
        cli_fail(cmd, "%s expects a number from %g to %g, got '%s'", opt, min, max, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

int cli_u64(const char *cmd, const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        cli_fail(cmd, "%s expects a non-negative integer, got '%s'", opt, s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

fp_tokenizer *cli_tokenizer_for(const char *model_dir, int *failed)
{
    char path[4096];
    struct stat st;
    *failed = 0;
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    if (stat(path, &st) != 0)
        return NULL;
    fp_tokenizer *tok = fp_tokenizer_load(path);
    if (!tok)
        *failed = 1;
    return tok;
}

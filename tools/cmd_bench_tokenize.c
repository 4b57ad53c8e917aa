/* cmd_bench_tokenize.c - `fedpeft bench tokenize`: encode throughput (MB/s on
 * one core) of a tokenizer on a text file, as one text and line by line. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const char usage[] =
    "usage: fedpeft bench tokenize --tokenizer DIR_OR_FILE --data FILE [--repeat 3]\n"
    "  Encodes FILE as one text (a fresh tokenizer each round, so its word cache\n"
    "  starts cold) and prints the best of --repeat rounds in MB/s; then once more\n"
    "  line by line. Single-threaded.\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        !(buf = malloc((size_t)n + 1)) || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fp_error_set("%s: cannot read", path);
        free(buf);
        buf = NULL;
    } else {
        buf[n] = '\0';
        *len = (size_t)n;
    }
    if (f)
        fclose(f);
    return buf;
}

/* Seconds to encode text once with a freshly loaded tokenizer; -1 on error. */
static double one_round(const char *tpath, const char *text, size_t len, int by_line,
                        size_t *n_tokens)
{
    fp_tokenizer *tok = fp_tokenizer_load(tpath);
    int32_t *ids = NULL;
    size_t n = 0;
    if (!tok)
        return -1.0;
    double t0 = now_s();
    *n_tokens = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = by_line ? memchr(text + pos, '\n', len - pos) : NULL;
        size_t end = nl ? (size_t)(nl - text) + 1 : len;
        if (fp_tokenizer_encode(tok, text + pos, end - pos, 0, &ids, &n) != 0) {
            fp_tokenizer_free(&tok);
            return -1.0;
        }
        *n_tokens += n;
        free(ids);
        pos = end;
    }
    double dt = now_s() - t0;
    fp_tokenizer_free(&tok);
    return dt;
}

int cmd_bench_tokenize(int argc, char **argv)
{
    const char *cmd = "bench tokenize", *tpath = NULL, *data = NULL;
    int repeat = 3, c;
    static const struct option opts[] = {
        {"tokenizer", required_argument, 0, 't'}, {"data", required_argument, 0, 'D'},
        {"repeat", required_argument, 0, 'r'},    {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't': tpath = optarg; break;
        case 'D': data = optarg; break;
        case 'r': if (cli_int(cmd, "--repeat", optarg, 1, 1000, &repeat)) return 2; break;
        case 'h': fputs(usage, stdout); return 0;
        default: return cli_usage_hint(cmd);
        }
    }
    if (!tpath || !data) {
        fputs(usage, stderr);
        return cli_fail(cmd, "--tokenizer and --data are both required");
    }
    size_t len = 0, n = 0;
    char *text = read_file(data, &len);
    if (!text)
        return cli_fail_lib(cmd);
    double best = 1e30;
    for (int r = 0; r < repeat; r++) {
        double dt = one_round(tpath, text, len, 0, &n);
        if (dt < 0) {
            free(text);
            return cli_fail_lib(cmd);
        }
        best = dt < best ? dt : best;
    }
    printf("bench tokenize: %s on %s (%zu bytes)\n", tpath, data, len);
    printf("  whole text: %zu tokens in %.3f s (best of %d): %.2f MB/s, %.2f Mtokens/s\n", n,
           best, repeat, (double)len / 1e6 / best, (double)n / 1e6 / best);
    double dt = one_round(tpath, text, len, 1, &n);
    free(text);
    if (dt < 0)
        return cli_fail_lib(cmd);
    printf("  line by line: %zu tokens in %.3f s: %.2f MB/s\n", n, dt, (double)len / 1e6 / dt);
    return 0;
}

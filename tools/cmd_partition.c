/* cmd_partition.c - `fedpeft partition`: one data file into worker shards. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "partition.h"

static const char usage[] =
    "usage: fedpeft partition --data FILE --workers N --by STRATEGY --out DIR [options]\n"
    "  --by iid                    seeded shuffle, dealt round-robin\n"
    "       dirichlet:ALPHA:FIELD  per value of FIELD, shares ~ Dirichlet(ALPHA) across\n"
    "                              workers (Hsu et al. 2019); small ALPHA = more skew\n"
    "       field:NAME             whole groups of equal NAME, balanced greedily by size\n"
    "       speaker                plain-text play script: whole speakers (a speech is a\n"
    "                              block starting with a `Name:` line), balanced by size\n"
    "  --workers N   shards to write; 0 with field/speaker = one shard per value\n"
    "                (values with fewer than 2 examples are then dropped)\n"
    "  --seed S (0)  --label FIELD (histogram label for iid; speaker for plain text)\n"
    "  --tokenizer DIR  sizes in tokens (else bytes of each record as written)\n"
    "  --format auto|text|json|alpaca|ids (auto)  --skip-bad\n"
    "  Writes DIR/shard-NNN.jsonl (JSON input, one record per line) or .txt (plain\n"
    "  text, blocks separated by a blank line), keeping the input order, and prints\n"
    "  a table per shard: examples, size, top labels. Every shard gets at least 2\n"
    "  examples so a worker can hold some out for validation. non-IID = mean over\n"
    "  shards of the total variation distance between the shard's label\n"
    "  distribution and the whole file's (0 = identical mixes, 1 = disjoint).\n";

typedef struct {
    const char *data, *by, *out, *label, *tokenizer;
    size_t workers;
    int have_workers, skip_bad;
    uint64_t seed;
    fp_data_format format;
} part_opts;

/* The top 5 labels of shard s, "name:count ..." into buf. */
static void top_labels(const fp_part_data *d, const size_t *shard_of, size_t s, size_t *cnt,
                       char *buf, size_t cap)
{
    memset(cnt, 0, d->n_labels * sizeof *cnt);
    for (size_t i = 0; i < d->n; i++)
        if (shard_of[i] == s && d->label[i] != FP_NO_LABEL)
            cnt[d->label[i]]++;
    size_t len = 0, shown = 0, distinct = 0;
    buf[0] = '\0';
    for (size_t l = 0; l < d->n_labels; l++)
        distinct += cnt[l] > 0;
    for (; shown < 5; shown++) {
        size_t best = SIZE_MAX;
        for (size_t l = 0; l < d->n_labels; l++)
            if (cnt[l] && (best == SIZE_MAX || cnt[l] > cnt[best]))
                best = l;
        if (best == SIZE_MAX)
            break;
        len += (size_t)snprintf(buf + len, len < cap ? cap - len : 0, "%s%.24s:%zu",
                                shown ? " " : "", d->labels[best], cnt[best]);
        cnt[best] = 0;
    }
    if (distinct > shown && len < cap)
        snprintf(buf + len, cap - len, " (+%zu more)", distinct - shown);
}

static void print_table(const fp_part_data *d, const size_t *shard_of, size_t n_shards,
                        int tokens, double noniid)
{
    size_t *cnt = calloc(d->n_labels ? d->n_labels : 1, sizeof *cnt);
    char name[64], labels[512];
    printf("%-16s %9s %12s  %s\n", "shard", "examples", tokens ? "tokens" : "bytes",
           d->n_labels ? "labels (top 5)" : "");
    for (size_t s = 0; s < n_shards; s++) {
        size_t ex = 0, size = 0;
        for (size_t i = 0; i < d->n; i++)
            if (shard_of[i] == s)
                ex++, size += d->size[i];
        labels[0] = '\0';
        if (cnt)
            top_labels(d, shard_of, s, cnt, labels, sizeof labels);
        printf("%-16s %9zu %12zu  %s\n", fp_partition_shard_name(d, s, name), ex, size, labels);
    }
    size_t dropped = 0;
    for (size_t i = 0; i < d->n; i++)
        dropped += shard_of[i] == FP_DROPPED;
    if (dropped)
        printf("dropped %zu examples whose value has fewer than 2 examples\n", dropped);
    if (isnan(noniid))
        printf("non-IID: n/a (no label; give --label FIELD)\n");
    else
        printf("non-IID (mean total variation distance to the global label mix): %.4f\n", noniid);
    free(cnt);
}

/* --by speaker reads a play script: refuse JSON before reading labels. */
static int check_speaker_input(const char *cmd, const part_opts *o)
{
    char head[4096];
    FILE *f = fopen(o->data, "rb");
    size_t n = f ? fread(head, 1, sizeof head - 1, f) : 0;
    if (f)
        fclose(f);
    head[n] = '\0';
    char first = head[strspn(head, " \t\r\n")];
    if (o->format != FP_FORMAT_TEXT && (o->format != FP_FORMAT_AUTO || first == '{' ||
                                        first == '['))
        return cli_fail(cmd, "--by speaker needs a plain-text play script; for JSON use "
                        "field:NAME");
    return 0;
}

static int run(const char *cmd, const part_opts *o, const fp_part_spec *spec)
{
    int rc = 1;
    fp_tokenizer *tok = NULL;
    fp_part_data d;
    size_t *shard_of = NULL, n_shards = 0;
    const char *label = spec->kind == FP_PART_IID ? o->label : spec->field;
    if (spec->kind == FP_PART_SPEAKER && check_speaker_input(cmd, o) != 0)
        return 1;
    if (o->tokenizer && !(tok = fp_tokenizer_load(o->tokenizer)))
        return cli_fail_lib(cmd);
    if (fp_part_data_load(o->data, o->format, o->skip_bad, label, tok, &d) != 0)
        return fp_tokenizer_free(&tok), cli_fail_lib(cmd);
    if (d.skipped)
        fprintf(stderr, "partition: skipped %zu bad records (--skip-bad); the first: %s\n",
                d.skipped, d.first_skipped);
    if (!(shard_of = malloc(d.n * sizeof *shard_of))) {
        cli_fail(cmd, "out of memory");
        goto out;
    }
    if (fp_partition_assign(spec, &d, o->workers, o->seed, shard_of, &n_shards) != 0 ||
        fp_partition_write(&d, shard_of, n_shards, o->out) != 0) {
        cli_fail_lib(cmd);
        goto out;
    }
    print_table(&d, shard_of, n_shards, tok != NULL || d.format == FP_FORMAT_IDS,
                fp_partition_noniid(&d, shard_of, n_shards));
    rc = 0;
out:
    free(shard_of);
    fp_part_data_free(&d);
    fp_tokenizer_free(&tok);
    return rc;
}

int cmd_partition(int argc, char **argv)
{
    const char *cmd = "partition";
    part_opts o = { 0 };
    int w = 0, c, bad = 0;
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},  {"workers", required_argument, 0, 'w'},
        {"by", required_argument, 0, 'b'},    {"out", required_argument, 0, 'o'},
        {"seed", required_argument, 0, 's'},  {"label", required_argument, 0, 'l'},
        {"tokenizer", required_argument, 0, 't'}, {"format", required_argument, 0, 'f'},
        {"skip-bad", no_argument, 0, 'k'},    {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': o.data = optarg; break;
        case 'b': o.by = optarg; break;
        case 'o': o.out = optarg; break;
        case 'l': o.label = optarg; break;
        case 't': o.tokenizer = optarg; break;
        case 'k': o.skip_bad = 1; break;
        case 'w': bad = cli_int(cmd, "--workers", optarg, 0, 1000000, &w), o.have_workers = 1; break;
        case 's': bad = cli_u64(cmd, "--seed", optarg, &o.seed); break;
        case 'f': bad = fp_data_parse_format(optarg, &o.format) ? (cli_fail_lib(cmd), -1) : 0; break;
        case 'h': fputs(usage, stdout); return 0;
        default: return cli_usage_hint(cmd);
        }
        if (bad)
            return 2;
    }
    if (!o.data || !o.by || !o.out || !o.have_workers) {
        fputs(usage, stderr);
        return cli_fail(cmd, "--data, --workers, --by and --out are required");
    }
    o.workers = (size_t)w;
    fp_part_spec spec;
    if (fp_part_parse(o.by, &spec) != 0)
        return cli_fail_lib(cmd), 2;
    return run(cmd, &o, &spec);
}

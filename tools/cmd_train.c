/* cmd_train.c - `fedpeft finetune` and `fedpeft eval`. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas_setup.h"
#include "cli.h"
#include "data.h"
#include "finetune.h"

#define DATA_HELP \
    "  --format auto|text|json|alpaca|ids (auto)  --skip-bad\n" \
    "  --val-fraction F (0: no split; e.g. 0.1 holds out 10% of the examples)\n" \
    "  --split-seed S (42)\n" \
    "  --base-dtype f32|bf16|int8|nf4 (f32): how the frozen base matrices are held\n" \
    "  Data forms: plain text (blocks split at blank lines; one token stream, no EOS);\n" \
    "  JSONL or a JSON array of {\"text\": ...} (EOS after each); Alpaca records\n" \
    "  {\"instruction\", \"input\", \"output\"} (Stanford template, loss on the response\n" \
    "  and EOS only); {\"input_ids\": [...]} (as given). auto: from the first record.\n" \
    "  --skip-bad skips and counts malformed records instead of failing. The split\n" \
    "  holds out that fraction of examples, chosen by --split-seed.\n"

/* --format, --skip-bad, --val-fraction, --split-seed and --base-dtype: shared by
 * finetune and eval. The base format is per process, so it is a file static. */
enum { O_FORMAT = 200, O_SKIPBAD, O_VALFRAC, O_SPLITSEED, O_BASEDTYPE };
static fp_base_dtype base_dtype = FP_BASE_F32;
#define DATA_LONG_OPTS \
    {"format", required_argument, 0, O_FORMAT}, {"skip-bad", no_argument, 0, O_SKIPBAD}, \
    {"base-dtype", required_argument, 0, O_BASEDTYPE}, \
    {"val-fraction", required_argument, 0, O_VALFRAC}, \
    {"split-seed", required_argument, 0, O_SPLITSEED}

/* 1: not a data option; 0: parsed; -1: bad value (printed). */
static int parse_data_opt(const char *cmd, int c, fp_data_options *d)
{
    float f;
    switch (c) {
    case O_FORMAT:
        return fp_data_parse_format(optarg, &d->format) != 0 ? (cli_fail_lib(cmd), -1) : 0;
    case O_SKIPBAD: d->skip_bad = 1; return 0;
    case O_BASEDTYPE:
        return fp_base_dtype_parse(optarg, &base_dtype) != 0 ? (cli_fail_lib(cmd), -1) : 0;
    case O_VALFRAC:
        if (cli_float(cmd, "--val-fraction", optarg, 0, 0.9, &f) != 0)
            return -1;
        d->val_fraction = f;
        return 0;
    case O_SPLITSEED: return cli_u64(cmd, "--split-seed", optarg, &d->split_seed);
    default: return 1;
    }
}

static const char finetune_usage[] =
    "usage: fedpeft finetune --model DIR --data FILE --out DIR [options]\n"
    "  --init-adapter DIR   start from a PEFT adapter (its rank, alpha, targets are used)\n"
    "  --rank R (8)  --alpha A (16)  --targets q_proj,k_proj,v_proj,o_proj (or all-linear)\n"
    "  --dropout P (0)  --rslora\n"
    "  --steps N (100)  --batch B (4)  --seq T (128)  --accum K (1)\n"
    "  --optimizer adamw|sgd (adamw)  --lr F (1e-3)  --weight-decay F (0)\n"
    "  --max-grad-norm F (0 disables)  --schedule constant|cosine  --warmup N (0)\n"
    "  --seed S (1234)  --no-shuffle  --threads N\n"
    "  --grad-checkpoint    keep only each layer's input, recompute the rest in backward\n"
    DATA_HELP
    "  Prints the validation loss at the end when a validation split exists.\n";

typedef struct {
    const char *model, *data, *out, *init_adapter, *targets;
    fp_lora_config lora;
    fp_finetune_config ft;
    int threads;
    fp_data_options dopt;
} ft_opts;

enum { O_MODEL = 256, O_DATA, O_OUT, O_INIT, O_RANK, O_ALPHA, O_TARGETS, O_DROPOUT, O_RSLORA,
       O_STEPS, O_BATCH, O_SEQ, O_ACCUM, O_OPT, O_LR, O_WD, O_CLIP, O_SCHED, O_WARMUP, O_SEED,
       O_NOSHUF, O_THREADS, O_CKPT, O_HELP };

static int parse_one(const char *cmd, int c, ft_opts *o)
{
    switch (c) {
    case O_MODEL: o->model = optarg; return 0;
    case O_DATA: o->data = optarg; return 0;
    case O_OUT: o->out = optarg; return 0;
    case O_INIT: o->init_adapter = optarg; return 0;
    case O_TARGETS: o->targets = optarg; return 0;
    case O_RSLORA: o->lora.use_rslora = 1; return 0;
    case O_NOSHUF: o->ft.shuffle = 0; return 0;
    case O_CKPT: o->ft.grad_checkpoint = 1; return 0;
    case O_RANK: return cli_int(cmd, "--rank", optarg, 1, 4096, &o->lora.rank);
    case O_ALPHA: return cli_float(cmd, "--alpha", optarg, 1e-6, 1e6, &o->lora.alpha);
    case O_DROPOUT: return cli_float(cmd, "--dropout", optarg, 0, 0.99, &o->lora.dropout);
    case O_STEPS: return cli_int(cmd, "--steps", optarg, 1, 100000000, &o->ft.steps);
    case O_BATCH: return cli_int(cmd, "--batch", optarg, 1, 65536, &o->ft.batch);
    case O_SEQ: return cli_int(cmd, "--seq", optarg, 1, 1 << 20, &o->ft.seq);
    case O_ACCUM: return cli_int(cmd, "--accum", optarg, 1, 65536, &o->ft.accum);
    case O_LR: return cli_float(cmd, "--lr", optarg, 1e-12, 100, &o->ft.optim.lr);
    case O_WD: return cli_float(cmd, "--weight-decay", optarg, 0, 10, &o->ft.optim.weight_decay);
    case O_CLIP: return cli_float(cmd, "--max-grad-norm", optarg, 0, 1e9, &o->ft.optim.max_grad_norm);
    case O_WARMUP: return cli_int(cmd, "--warmup", optarg, 0, 100000000, &o->ft.optim.warmup_steps);
    case O_SEED: return cli_u64(cmd, "--seed", optarg, &o->ft.seed);
    case O_THREADS: return cli_int(cmd, "--threads", optarg, 1, 1024, &o->threads);
    case O_OPT:
        if (fp_optim_parse_kind(optarg, &o->ft.optim.kind) != 0)
            return cli_fail_lib(cmd), -1;
        return 0;
    case O_SCHED:
        if (fp_optim_parse_schedule(optarg, &o->ft.optim.schedule) != 0)
            return cli_fail_lib(cmd), -1;
        return 0;
    default: {
        int rc = parse_data_opt(cmd, c, &o->dopt);
        return rc == 1 ? -1 : rc;
    }
    }
}

static const struct option ft_long[] = {
    {"model", required_argument, 0, O_MODEL},    {"data", required_argument, 0, O_DATA},
    {"out", required_argument, 0, O_OUT},        {"init-adapter", required_argument, 0, O_INIT},
    {"rank", required_argument, 0, O_RANK},      {"alpha", required_argument, 0, O_ALPHA},
    {"targets", required_argument, 0, O_TARGETS}, {"dropout", required_argument, 0, O_DROPOUT},
    {"rslora", no_argument, 0, O_RSLORA},        {"steps", required_argument, 0, O_STEPS},
    {"batch", required_argument, 0, O_BATCH},    {"seq", required_argument, 0, O_SEQ},
    {"accum", required_argument, 0, O_ACCUM},    {"optimizer", required_argument, 0, O_OPT},
    {"lr", required_argument, 0, O_LR},          {"weight-decay", required_argument, 0, O_WD},
    {"max-grad-norm", required_argument, 0, O_CLIP}, {"schedule", required_argument, 0, O_SCHED},
    {"warmup", required_argument, 0, O_WARMUP},  {"seed", required_argument, 0, O_SEED},
    {"no-shuffle", no_argument, 0, O_NOSHUF},    {"threads", required_argument, 0, O_THREADS},
    {"grad-checkpoint", no_argument, 0, O_CKPT},
    {"help", no_argument, 0, O_HELP},            DATA_LONG_OPTS, {0, 0, 0, 0},
};

/* Progress: one line per step (a terminal sees it rewrite in place). */
static int on_progress(void *ctx, const fp_progress *p)
{
    int tty = *(int *)ctx;
    double eta = p->step ? p->elapsed_s / p->step * (p->steps - p->step) : 0.0;
    fprintf(stderr, "%sstep %d/%d | loss %.4f | lr %.2e | grad norm %.3f | %.0f tok/s | eta %.0fs%s",
            tty ? "\r" : "", p->step, p->steps, (double)p->loss, (double)p->lr,
            (double)p->grad_norm, p->tokens_per_s, eta, tty ? "" : "\n");
    if (tty && p->step == p->steps)
        fputc('\n', stderr);
    return 0;
}

/* Loads the model, its tokenizer (if any) and the data. */
static int load_inputs(const char *model_dir, const char *data_path,
                       const fp_data_options *opt, fp_model **m, fp_dataset *data)
{
    int failed = 0;
    if (!(*m = fp_model_load_dtype(model_dir, base_dtype)))
        return -1;
    fp_tokenizer *tok = cli_tokenizer_for(model_dir, &failed);
    if (failed)
        return -1;
    int rc = fp_dataset_load(data_path, tok, (*m)->cfg.vocab_size, opt, data);
    fp_tokenizer_free(&tok);
    return rc;
}

/* One stderr line on what was read, and the skipped records if any. */
static void report_data(const char *cmd, const char *path, const fp_dataset *d, int verbose)
{
    if (verbose)
        fprintf(stderr, "%s: %s (%s): %zu examples (%zu train, %zu validation), "
            "%zu train tokens (%zu targets), %zu validation tokens (%zu targets)\n",
            cmd, path, fp_data_format_name(d->format), d->examples, d->train_examples,
            d->valid_examples, d->train.n, fp_tokens_targets(&d->train), d->valid.n,
            fp_tokens_targets(&d->valid));
    if (d->skipped)
        fprintf(stderr, "%s: skipped %zu bad records (--skip-bad); the first: %s\n", cmd,
                d->skipped, d->first_skipped);
}

/* After training: the validation loss, when the split gives one row. */
static int report_valid(const fp_model *m, const fp_lora *lora, const fp_dataset *d,
                        const fp_finetune_config *ft)
{
    double loss;
    size_t ntok;
    if (d->valid_examples == 0)
        return 0;
    if (fp_data_rows(&d->valid, ft->seq) == 0) {
        fprintf(stderr, "finetune: the validation split (%zu tokens) is shorter than one row "
                "of --seq %d + 1; no validation loss\n", d->valid.n, ft->seq);
        return 0;
    }
    if (fp_evaluate(m, lora, &d->valid, ft->seq, ft->batch, &loss, &ntok) != 0)
        return -1;
    printf("validation loss %.4f (perplexity %.3f, %zu target tokens, %zu examples)\n", loss,
           exp(loss), ntok, d->valid_examples);
    return 0;
}

int cmd_finetune(int argc, char **argv)
{
    const char *cmd = "finetune";
    ft_opts o = {0};
    fp_lora_config_default(&o.lora);
    fp_finetune_config_default(&o.ft);
    fp_data_options_default(&o.dopt);
    o.dopt.val_fraction = 0.0;  /* the tool splits only when asked (workers always do) */
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", ft_long, NULL)) != -1) {
        if (c == O_HELP)
            return fputs(finetune_usage, stdout), 0;
        if (c == '?' )
            return cli_usage_hint(cmd);
        if (parse_one(cmd, c, &o) != 0)
            return 2;
    }
    if (!o.model || !o.data || !o.out) {
        fputs(finetune_usage, stderr);
        return cli_fail(cmd, "--model, --data and --out are required");
    }
    if (o.targets && fp_lora_parse_targets(o.targets, &o.lora.targets) != 0)
        return cli_fail_lib(cmd);
    fp_blas_set_threads(o.threads);

    int rc = 1;
    fp_model *m = NULL;
    fp_lora *lora = NULL;
    fp_dataset data = {0};
    if (load_inputs(o.model, o.data, &o.dopt, &m, &data) != 0)
        goto lib_err;
    report_data(cmd, o.data, &data, 1);
    if (o.init_adapter) {
        if (!(lora = fp_lora_load(o.init_adapter, &m->cfg)))
            goto lib_err;
        lora->cfg.dropout = o.lora.dropout;
    } else {
        snprintf(o.lora.base_model, sizeof o.lora.base_model, "%s", o.model);
        if (!(lora = fp_lora_new(&m->cfg, &o.lora)))
            goto lib_err;
        fp_lora_init(lora, o.ft.seed);
    }
    fprintf(stderr, "finetune: %zu tokens, %zu LoRA parameters (rank %d), %d steps of %d x %d, "
            "OpenBLAS core %s\n", data.train.n, lora->n_params, lora->cfg.rank, o.ft.steps,
            o.ft.batch, o.ft.seq, fp_blas_corename());
    int tty = isatty(fileno(stderr));
    float last = NAN;
    if (fp_finetune(m, lora, &data.train, &o.ft, on_progress, &tty, &last) != 0)
        goto lib_err;
    if (fp_lora_save(lora, o.out) != 0)
        goto lib_err;
    printf("final loss %.4f; adapter written to %s\n", (double)last, o.out);
    if (report_valid(m, lora, &data, &o.ft) != 0)
        goto lib_err;
    rc = 0;
    goto out;
lib_err:
    cli_fail_lib(cmd);
out:
    fp_dataset_free(&data);
    fp_lora_free(&lora);
    fp_model_free(&m);
    return rc;
}

static const char eval_usage[] =
    "usage: fedpeft eval --model DIR [--adapter DIR] --data FILE [--seq T] [--batch B] [--threads N]\n"
    "                    [--split train|valid|all]\n"
    "  Prints one JSON line: mean loss, perplexity and the number of target tokens,\n"
    "  over consecutive rows of T+1 tokens (an incomplete tail is dropped).\n"
    "  --split all (default) reads every example; train/valid pick a side of the split\n"
    "  that finetune makes with the same --val-fraction and --split-seed.\n"
    DATA_HELP;

enum { SPLIT_ALL, SPLIT_TRAIN, SPLIT_VALID };

static int parse_split(const char *cmd, const char *s, int *out)
{
    static const char *const names[] = { "all", "train", "valid" };
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, names[i]))
            return *out = i, 0;
    cli_fail(cmd, "--split expects train, valid or all, got '%s'", s);
    return -1;
}

static int eval_run(const char *model, const char *adapter, const char *data_path,
                    fp_data_options *dopt, int split, int seq, int batch)
{
    int rc = -1;
    fp_model *m = NULL;
    fp_lora *lora = NULL;
    fp_dataset data = {0};
    double loss;
    size_t ntok;
    if (split == SPLIT_ALL)
        dopt->val_fraction = 0.0;   /* every example, as one stream */
    if (load_inputs(model, data_path, dopt, &m, &data) != 0)
        goto out;
    report_data("eval", data_path, &data, 0);  /* stdout stays one JSON line */
    const fp_tokens *t = split == SPLIT_VALID ? &data.valid : &data.train;
    if (split == SPLIT_VALID && data.valid_examples == 0) {
        fp_error_set("%s has no validation split (%zu examples, --val-fraction %g): pass the "
                     "--val-fraction and --split-seed that finetune used", data_path,
                     data.examples, dopt->val_fraction);
        goto out;
    }
    if ((adapter && !(lora = fp_lora_load(adapter, &m->cfg))) ||
        fp_evaluate(m, lora, t, seq, batch, &loss, &ntok) != 0)
        goto out;
    printf("{\"loss\": %.6f, \"perplexity\": %.4f, \"tokens\": %zu}\n", loss, exp(loss), ntok);
    rc = 0;
out:
    fp_dataset_free(&data);
    fp_lora_free(&lora);
    fp_model_free(&m);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    const char *cmd = "eval", *model = NULL, *adapter = NULL, *data_path = NULL;
    int seq = 128, batch = 4, threads = 0, split = SPLIT_ALL;
    fp_data_options dopt;
    fp_data_options_default(&dopt);
    dopt.val_fraction = 0.0;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"adapter", required_argument, 0, 'a'},
        {"data", required_argument, 0, 'd'},  {"seq", required_argument, 0, 'T'},
        {"batch", required_argument, 0, 'B'}, {"threads", required_argument, 0, 'j'},
        {"split", required_argument, 0, 's'}, {"help", no_argument, 0, 'h'},
        DATA_LONG_OPTS,                       {0, 0, 0, 0},
    };
    int c, bad = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'a': adapter = optarg; break;
        case 'd': data_path = optarg; break;
        case 'T': bad = cli_int(cmd, "--seq", optarg, 1, 1 << 20, &seq); break;
        case 'B': bad = cli_int(cmd, "--batch", optarg, 1, 65536, &batch); break;
        case 'j': bad = cli_int(cmd, "--threads", optarg, 1, 1024, &threads); break;
        case 's': bad = parse_split(cmd, optarg, &split); break;
        case 'h': fputs(eval_usage, stdout); return 0;
        case '?': return cli_usage_hint(cmd);
        default: bad = parse_data_opt(cmd, c, &dopt); break;
        }
        if (bad)
            return 2;
    }
    if (!model || !data_path) {
        fputs(eval_usage, stderr);
        return cli_fail(cmd, "--model and --data are required");
    }
    fp_blas_set_threads(threads);
    if (eval_run(model, adapter, data_path, &dopt, split, seq, batch) != 0)
        return cli_fail_lib(cmd);
    return 0;
}

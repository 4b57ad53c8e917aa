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

static const char finetune_usage[] =
    "usage: fedpeft finetune --model DIR --data FILE --out DIR [options]\n"
    "  --init-adapter DIR   start from a PEFT adapter (its rank, alpha, targets are used)\n"
    "  --rank R (8)  --alpha A (16)  --targets q_proj,k_proj,v_proj,o_proj (or all-linear)\n"
    "  --dropout P (0)  --rslora\n"
    "  --steps N (100)  --batch B (4)  --seq T (128)  --accum K (1)\n"
    "  --optimizer adamw|sgd (adamw)  --lr F (1e-3)  --weight-decay F (0)\n"
    "  --max-grad-norm F (0 disables)  --schedule constant|cosine  --warmup N (0)\n"
    "  --seed S (1234)  --no-shuffle  --threads N\n"
    "  Data: plain text (tokenized with DIR/tokenizer.json) or JSONL with \"input_ids\".\n";

typedef struct {
    const char *model, *data, *out, *init_adapter, *targets;
    fp_lora_config lora;
    fp_finetune_config ft;
    int threads;
} ft_opts;

enum { O_MODEL = 256, O_DATA, O_OUT, O_INIT, O_RANK, O_ALPHA, O_TARGETS, O_DROPOUT, O_RSLORA,
       O_STEPS, O_BATCH, O_SEQ, O_ACCUM, O_OPT, O_LR, O_WD, O_CLIP, O_SCHED, O_WARMUP, O_SEED,
       O_NOSHUF, O_THREADS, O_HELP };

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
    default: return -1;
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
    {"help", no_argument, 0, O_HELP},            {0, 0, 0, 0},
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
static int load_inputs(const char *model_dir, const char *data_path, fp_model **m,
                       fp_tokens *data)
{
    int failed = 0;
    if (!(*m = fp_model_load(model_dir)))
        return -1;
    fp_tokenizer *tok = cli_tokenizer_for(model_dir, &failed);
    if (failed)
        return -1;
    int rc = fp_data_load(data_path, tok, (*m)->cfg.vocab_size, data);
    fp_tokenizer_free(&tok);
    return rc;
}

int cmd_finetune(int argc, char **argv)
{
    const char *cmd = "finetune";
    ft_opts o = {0};
    fp_lora_config_default(&o.lora);
    fp_finetune_config_default(&o.ft);
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
    fp_tokens data = {0};
    if (load_inputs(o.model, o.data, &m, &data) != 0)
        goto lib_err;
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
            "OpenBLAS core %s\n", data.n, lora->n_params, lora->cfg.rank, o.ft.steps,
            o.ft.batch, o.ft.seq, fp_blas_corename());
    int tty = isatty(fileno(stderr));
    float last = NAN;
    if (fp_finetune(m, lora, &data, &o.ft, on_progress, &tty, &last) != 0)
        goto lib_err;
    if (fp_lora_save(lora, o.out) != 0)
        goto lib_err;
    printf("final loss %.4f; adapter written to %s\n", (double)last, o.out);
    rc = 0;
    goto out;
lib_err:
    cli_fail_lib(cmd);
out:
    fp_tokens_free(&data);
    fp_lora_free(&lora);
    fp_model_free(&m);
    return rc;
}

static const char eval_usage[] =
    "usage: fedpeft eval --model DIR [--adapter DIR] --data FILE [--seq T] [--batch B] [--threads N]\n"
    "  Prints one JSON line: mean loss, perplexity and the number of target tokens,\n"
    "  over consecutive rows of T+1 tokens (an incomplete tail is dropped).\n";

int cmd_eval(int argc, char **argv)
{
    const char *cmd = "eval", *model = NULL, *adapter = NULL, *data_path = NULL;
    int seq = 128, batch = 4, threads = 0;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"adapter", required_argument, 0, 'a'},
        {"data", required_argument, 0, 'd'},  {"seq", required_argument, 0, 'T'},
        {"batch", required_argument, 0, 'B'}, {"threads", required_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0},
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
        case 'h': fputs(eval_usage, stdout); return 0;
        default: return cli_usage_hint(cmd);
        }
        if (bad)
            return 2;
    }
    if (!model || !data_path) {
        fputs(eval_usage, stderr);
        return cli_fail(cmd, "--model and --data are required");
    }
    fp_blas_set_threads(threads);
    int rc = 1;
    fp_model *m = NULL;
    fp_lora *lora = NULL;
    fp_tokens data = {0};
    double loss;
    size_t ntok;
    if (load_inputs(model, data_path, &m, &data) != 0 ||
        (adapter && !(lora = fp_lora_load(adapter, &m->cfg))) ||
        fp_evaluate(m, lora, &data, seq, batch, &loss, &ntok) != 0) {
        cli_fail_lib(cmd);
    } else {
        printf("{\"loss\": %.6f, \"perplexity\": %.4f, \"tokens\": %zu}\n", loss, exp(loss), ntok);
        rc = 0;
    }
    fp_tokens_free(&data);
    fp_lora_free(&lora);
    fp_model_free(&m);
    return rc;
}

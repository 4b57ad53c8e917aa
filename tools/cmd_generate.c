/* cmd_generate.c - `fedpeft generate`: sample text with the KV-cache forward. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas_setup.h"
#include "cli.h"
#include "infer.h"
#include "rng.h"

static const char usage[] =
    "usage: fedpeft generate --model DIR [--adapter DIR] [--prompt TEXT] [-n N]\n"
    "                        [--temperature F] [--top-p F] [--seed S] [--threads N]\n"
    "  Prints the prompt's continuation. -n is the number of new tokens (default 256);\n"
    "  --temperature 0 is greedy. Generation stops early at BOS/EOS.\n";

typedef struct {
    const char *model, *adapter, *prompt;
    int n, threads;
    float temperature, top_p;
    uint64_t seed;
} gen_opts;

static int parse(int argc, char **argv, gen_opts *o)
{
    const char *cmd = "generate";
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"adapter", required_argument, 0, 'a'},
        {"prompt", required_argument, 0, 'p'},    {"temperature", required_argument, 0, 't'},
        {"top-p", required_argument, 0, 'P'},     {"seed", required_argument, 0, 's'},
        {"threads", required_argument, 0, 'j'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    *o = (gen_opts){.prompt = "", .n = 256, .temperature = 1.0f, .top_p = 0.9f, .seed = 42};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'a': o->adapter = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'n': bad = cli_int(cmd, "-n", optarg, 0, 1 << 20, &o->n); break;
        case 't': bad = cli_float(cmd, "--temperature", optarg, 0, 100, &o->temperature); break;
        case 'P': bad = cli_float(cmd, "--top-p", optarg, 0, 1, &o->top_p); break;
        case 's': bad = cli_u64(cmd, "--seed", optarg, &o->seed); break;
        case 'j': bad = cli_int(cmd, "--threads", optarg, 1, 1024, &o->threads); break;
        case 'h': fputs(usage, stdout); return 1;
        default: return cli_usage_hint(cmd);
        }
        if (bad)
            return 2;
    }
    if (!o->model) {
        fputs(usage, stderr);
        cli_fail(cmd, "--model DIR is required");
        return 2;
    }
    return 0;
}

/* Prints the part of the decoded text not printed yet. Decoding the whole
 * sequence each time keeps multi-token characters (byte fallback) intact. */
static int emit(const fp_tokenizer *tok, const int32_t *ids, size_t n, size_t *printed)
{
    char *text = fp_tokenizer_decode(tok, ids, n, 1);
    if (!text)
        return -1;
    size_t len = strlen(text);
    if (len > *printed) {
        fwrite(text + *printed, 1, len - *printed, stdout);
        fflush(stdout);
        *printed = len;
    }
    free(text);
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    const char *cmd = "generate";
    gen_opts o;
    int prc = parse(argc, argv, &o);
    if (prc)
        return prc == 1 ? 0 : prc;
    fp_blas_set_threads(o.threads);

    int rc = 1, failed = 0;
    fp_model *m = NULL;
    fp_lora *lora = NULL;
    fp_infer *inf = NULL;
    int32_t *ids = NULL, *seq = NULL;
    size_t n_prompt = 0;
    fp_tokenizer *tok = NULL;

    if (!(m = fp_model_load(o.model)))
        goto lib_err;
    tok = cli_tokenizer_for(o.model, &failed);
    if (!tok) {
        if (!failed)
            fp_error_set("%s/tokenizer.json is missing: generate needs the model's tokenizer "
                         "to read the prompt and print text", o.model);
        goto lib_err;
    }
    if (o.adapter && !(lora = fp_lora_load(o.adapter, &m->cfg)))
        goto lib_err;
    if (fp_tokenizer_encode(tok, o.prompt, strlen(o.prompt), 1, &ids, &n_prompt) != 0)
        goto lib_err;
    if (n_prompt == 0) {
        fp_error_set("the tokenizer has no BOS token and the prompt is empty: give --prompt");
        goto lib_err;
    }
    size_t total = n_prompt + (size_t)o.n;
    if (total > (size_t)m->cfg.max_seq_len) {
        fp_error_set("prompt (%zu tokens) + -n %d exceeds the model's context of %d positions",
                     n_prompt, o.n, m->cfg.max_seq_len);
        goto lib_err;
    }
    if (!(inf = fp_infer_new(m, lora, (int)total)) || !(seq = malloc(sizeof(int32_t) * total)))
        goto lib_err;
    memcpy(seq, ids, sizeof(int32_t) * n_prompt);

    fp_rng rng;
    fp_rng_seed(&rng, o.seed);
    size_t n = n_prompt, printed = 0;
    int bos = fp_tokenizer_bos(tok), eos = fp_tokenizer_eos(tok);
    if (emit(tok, seq, n, &printed) != 0)
        goto lib_err;
    for (size_t pos = 0; n < total; pos++) {
        const float *logits = fp_infer_step(inf, seq[pos], (int)pos);
        if (pos + 1 < n)
            continue;                       /* still reading the prompt */
        int32_t next = fp_sample(logits, m->cfg.vocab_size, o.temperature, o.top_p, &rng);
        if (next == eos || next == bos)
            break;
        seq[n++] = next;
        if (emit(tok, seq, n, &printed) != 0)
            goto lib_err;
    }
    fputc('\n', stdout);
    rc = 0;
    goto out;
lib_err:
    cli_fail_lib(cmd);
out:
    free(ids), free(seq);
    fp_infer_free(&inf);
    fp_lora_free(&lora);
    fp_tokenizer_free(&tok);
    fp_model_free(&m);
    return rc;
}

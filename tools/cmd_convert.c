/* cmd_convert.c - `fedpeft convert`: llama2.c checkpoint -> Hugging Face directory. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: fedpeft convert --llama2c MODEL.bin --tokenizer TOK.bin --out DIR\n"
    "  Writes DIR/config.json, DIR/model.safetensors (q/k rows permuted for HF's\n"
    "  rotate_half RoPE) and DIR/tokenizer.json (+ tokenizer_config.json).\n";

int cmd_convert(int argc, char **argv)
{
    const char *cmd = "convert", *bin = NULL, *tok = NULL, *out = NULL;
    static const struct option opts[] = {
        {"llama2c", required_argument, 0, 'm'}, {"tokenizer", required_argument, 0, 't'},
        {"out", required_argument, 0, 'o'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': bin = optarg; break;
        case 't': tok = optarg; break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default: return cli_usage_hint(cmd);
        }
    }
    if (!bin || !tok || !out) {
        fputs(usage, stderr);
        return cli_fail(cmd, "--llama2c, --tokenizer and --out are all required");
    }
    fp_model *m = fp_llama2c_load(bin);
    if (!m)
        return cli_fail_lib(cmd);
    int rc = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    if (fp_model_save(m, out) != 0 ||
        fp_tokenizer_convert_llama2c(tok, m->cfg.vocab_size, path) != 0)
        rc = cli_fail_lib(cmd);
    else
        printf("wrote %s: %s, dim %d, %d layers, %d heads (%d kv), vocab %d, %zu parameters\n",
               out, m->cfg.arch, m->cfg.dim, m->cfg.n_layers, m->cfg.n_heads,
               m->cfg.n_kv_heads, m->cfg.vocab_size, m->n_floats);
    fp_model_free(&m);
    return rc;
}

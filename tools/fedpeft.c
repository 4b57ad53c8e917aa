/* fedpeft.c - the `fedpeft` tool: local commands around the common library. */
#include <stdio.h>
#include <string.h>

#include "blas_setup.h"
#include "cli.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"convert", cmd_convert, "convert a llama2.c checkpoint into a Hugging Face model directory"},
    {"generate", cmd_generate, "generate text from a model (and optionally a LoRA adapter)"},
    {"finetune", cmd_finetune, "train a LoRA adapter on local data; writes a PEFT directory"},
    {"eval", cmd_eval, "mean loss and perplexity of a model (+ adapter) on data"},
    {"tokenize", cmd_tokenize, "text on stdin -> token ids (or ids -> text with --decode)"},
    {"bench", cmd_bench, "measure training speed (fedpeft bench train --help)"},
    {"partition", cmd_partition, "split a data file into worker shards (iid, dirichlet, field, speaker)"},
    {"simulate", cmd_simulate, "run a whole federation on this machine (coordinator + N workers)"},
    {"report", cmd_report, "draw a run's metrics.jsonl (loss and bytes per round) as an SVG"},
    {"keygen", cmd_keygen, "write a new X25519 key pair (CURVE + update sealing) and print its allowlist line"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: fedpeft COMMAND [options]   (fedpeft COMMAND --help for its options)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    fp_blas_setup(argc, argv);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("fedpeft 0.1.0 (OpenBLAS core: %s)\n", fp_blas_corename());
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "fedpeft: error: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

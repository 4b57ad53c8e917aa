/* cli.h - the fedpeft tool's subcommands and their shared argument helpers. */
#ifndef FP_CLI_H
#define FP_CLI_H

#include <stdint.h>

#include "lora.h"
#include "model.h"
#include "tokenizer.h"

int cmd_convert(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_bench_tokenize(int argc, char **argv); /* bench tokenize, in cmd_bench_tokenize.c */
int cmd_bench_secagg(int argc, char **argv);   /* bench secagg, in cmd_bench_secagg.c */
int cmd_partition(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_keygen(int argc, char **argv);

/* Prints "fedpeft CMD: error: MSG" to stderr; returns 1 (the exit status). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, with fp_error_get() as the message. */
int cli_fail_lib(const char *cmd);

/* Strict number parsing: the whole string, within [min, max]; on failure prints
 * "fedpeft CMD: error: --opt expects ..., got 'x'" and returns -1. */
int cli_int(const char *cmd, const char *opt, const char *s, long min, long max, int *out);
int cli_float(const char *cmd, const char *opt, const char *s, double min, double max, float *out);
int cli_u64(const char *cmd, const char *opt, const char *s, uint64_t *out);

/* Loads DIR/tokenizer.json if it exists (NULL and no error when absent;
 * NULL with *failed = 1 when present but broken). */
fp_tokenizer *cli_tokenizer_for(const char *model_dir, int *failed);

/* getopt's complaint is already printed: add the hint and return 2. */
int cli_usage_hint(const char *cmd);

#endif

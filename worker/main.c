/* main.c - fedpeft-worker: trains LoRA updates on local data for a coordinator.
 *
 *   fedpeft-worker --config FILE [--section.key=value ...]
 *
 * Exit status: 0 when the run is over (Reject SHUTDOWN) or on SIGTERM/SIGINT
 * (the current round is abandoned); 1 on errors (bad config, data or model,
 * refused by the coordinator, no coordinator after the retries); 2 on usage.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "blas_setup.h"
#include "connection.h"
#include "data.h"
#include "model.h"
#include "task.h"
#include "tokenizer.h"
#include "privacy_policy.h"
#include "wk_log.h"
#include "worker_config.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) { stop_flag = sig; }

static void usage(FILE *f)
{
    fputs("usage: fedpeft-worker --config FILE [--section.key=value ...]\n"
          "  Connects to the coordinator ([worker] endpoint), trains LoRA updates on\n"
          "  [worker] data each round it is sampled, and evaluates the global adapter\n"
          "  on its held-out split. Keys (file sections; any key can be overridden\n"
          "  on the command line as --section.key=value; --insecure is\n"
          "  --security.insecure=true: plain TCP, no CURVE, local tests only):\n\n", f);
    fp_cfg_print_help(wk_config_keys, f);
}

/* --config FILE / --config=FILE; --help. 1: help shown, -1: usage error. */
static int parse_args(int argc, char **argv, const char **config)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return 1;
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc)
                return fprintf(stderr, "fedpeft-worker: error: --config needs a FILE\n"), -1;
            *config = argv[++i];
            argv[i - 1] = argv[i] = "";     /* not a --section.key for the table */
        } else if (!strncmp(argv[i], "--config=", 9)) {
            *config = argv[i] + 9;
            argv[i] = "";
        } else if (!strcmp(argv[i], "--insecure")) {
            argv[i] = "--security.insecure=true";   /* the same, for the table */
        }
    }
    return 0;
}

/* Model, tokenizer (when the model has one) and the split data. */
static int load_inputs(const wk_config *cfg, fp_model **model, fp_dataset *data)
{
    char path[1100];
    fp_tokenizer *tok = NULL;
    fp_data_options opt;
    if (!(*model = fp_model_load_dtype(cfg->model_path, (fp_base_dtype)cfg->base_dtype)))
        return -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", cfg->model_path);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        if (!(tok = fp_tokenizer_load(path)))
            return -1;
    }
    fp_data_options_default(&opt);
    opt.format = (fp_data_format)cfg->format;
    opt.val_fraction = cfg->val_fraction;
    opt.split_seed = cfg->split_seed;
    int rc = fp_dataset_load(cfg->data, tok, (*model)->cfg.vocab_size, &opt, data);
    fp_tokenizer_free(&tok);
    return rc;
}

int main(int argc, char **argv)
{
    const char *config = NULL;
    wk_config cfg;
    fp_model *model = NULL;
    fp_dataset data = {0};
    wk_conn *conn = NULL;
    char hash[65];
    int rc = 1;

    fp_blas_setup(argc, argv);
    int a = parse_args(argc, argv, &config);
    if (a != 0) {
        usage(a > 0 ? stdout : stderr);
        return a > 0 ? 0 : 2;
    }
    if (wk_config_load(&cfg, config, argc, argv) != 0)
        goto err;
    wk_log_set_id(cfg.id);
    if (cfg.insecure)
        wk_log("WARNING: --insecure: traffic is plain TCP, unauthenticated; use only for "
               "local tests");
    wk_policy_warn(&cfg);
    fp_blas_set_threads(cfg.threads);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (load_inputs(&cfg, &model, &data) != 0)
        goto err;
    fp_model_hash(model, hash);
    wk_log("%s: %zu train examples (%zu tokens), %zu validation examples (%zu tokens); "
           "model %s (%.12s)", cfg.data, data.train_examples, data.train.n, data.valid_examples,
           data.valid.n, cfg.model_path, hash);
    if (!(conn = wk_conn_new(&cfg, hash, data.train_examples, data.train.n, &stop_flag)))
        goto err;
    int r = wk_conn_register(conn);
    if (r < 0)
        goto err;
    if (r == 0 && wk_serve(conn, &cfg, model, &data) != 0)
        goto err;
    if (stop_flag)
        wk_log("stopped by signal %d: round abandoned, exiting", (int)stop_flag);
    else
        wk_log("run over: exiting");
    rc = 0;
    goto out;
err:
    fprintf(stderr, "fedpeft-worker: error: %s\n", fp_error_get());
out:
    wk_conn_destroy(&conn);
    fp_dataset_free(&data);
    fp_model_free(&model);
    return rc;
}

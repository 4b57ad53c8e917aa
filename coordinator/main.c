/* main.c - fedpeft-coordinator: arguments, the base model, and the loop.
 *
 *   fedpeft-coordinator --config FILE [--section.key=value ...]
 *   fedpeft-coordinator --help | --print-config
 *
 * SIGINT / SIGTERM stop the loop; the last completed round is already in the
 * checkpoint, so a restart with the same config resumes there.
 */
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clog.h"
#include "coord_config.h"
#include "model.h"
#include "rounds.h"
#include "server.h"

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fedpeft-coordinator --config FILE [--section.key=VALUE ...]\n"
            "       fedpeft-coordinator --print-config [--config FILE] [overrides]\n"
            "\n"
            "Runs a federated LoRA fine-tuning: registers workers, runs the rounds,\n"
            "aggregates, checkpoints to [run] state_dir (a restart resumes) and writes\n"
            "the final adapter as a PEFT directory. Exit 0 when the run completed.\n"
            "Every key below can be overridden as --section.key=VALUE.\n\n");
    fp_cfg_print_help(coord_config_keys, f);
}

typedef struct {
    const char *config;
    int help, print_config;
} args;

static int parse_args(int argc, char **argv, args *a)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            a->help = 1;
        } else if (strcmp(s, "--print-config") == 0) {
            a->print_config = 1;
        } else if (strcmp(s, "--config") == 0 || strcmp(s, "-c") == 0) {
            if (i + 1 >= argc)
                return fp_error_set("--config needs a FILE");
            a->config = argv[++i];
        } else if (strncmp(s, "--config=", 9) == 0) {
            a->config = s + 9;
        } else if (strcmp(s, "--") == 0) {
            break;
        } else if (fp_cfg_arg_span(s) > 0) {
            i += fp_cfg_arg_span(s) - 1; /* a key: fp_cfg_apply_args checks it */
        } else {
            return fp_error_set("unexpected argument '%s' (see --help)", s);
        }
    }
    return 0;
}

/* Loads the base model for its shapes and hash; the weights are not kept. */
static int load_model(const char *path, fp_model_config *cfg, char hash[65])
{
    fp_model *m = fp_model_load(path);
    if (!m)
        return fp_error_prefix("[model] path: ");
    *cfg = m->cfg;
    fp_model_hash(m, hash);
    fp_model_free(&m);
    return 0;
}

static int run(const coord_config *cfg)
{
    fp_model_config mcfg;
    char hash[65];
    rounds *r = NULL;
    server *srv = NULL;
    int code = 1;
    if (load_model(cfg->model_path, &mcfg, hash) < 0)
        goto err;
    clog_info("base model %s: %s, %d layers, dim %d, hash %.12s...", cfg->model_path, mcfg.arch,
              mcfg.n_layers, mcfg.dim, hash);
    r = rounds_new(cfg, &mcfg, hash);
    if (!r)
        goto err;
    server_config sc = {cfg->endpoint, cfg->heartbeat_ms, hash, rounds_run_id(r),
                        FEDPEFT__LORA_SPEC__INIT};
    rounds_lora_spec(r, &sc.lora);
    srv = server_new(&sc);
    if (!srv)
        goto err;
    clog_info("listening on %s: run %s, %d rounds, adapter of %llu floats, state in %s",
              cfg->endpoint, rounds_run_id(r), cfg->rounds, (unsigned long long)sc.lora.n_params,
              cfg->state_dir);
    if (rounds_attach(r, srv) < 0)
        goto err;
    int rc = server_run(srv, &stop_signal);
    if (rc < 0)
        goto err;
    if (rc == 1) {
        clog_info("stopped by signal %d; completed rounds are in %s", (int)stop_signal,
                  cfg->state_dir);
        code = 128 + (int)stop_signal;
    } else {
        code = rounds_exit_code(r);
    }
    server_set_linger(srv, 2000); /* let the SHUTDOWN messages out */
    server_destroy(&srv);
    rounds_destroy(&r);
    return code;
err:
    clog_error("%s", fp_error_get());
    server_destroy(&srv);
    rounds_destroy(&r);
    return 1;
}

int main(int argc, char **argv)
{
    args a = {0};
    static coord_config cfg;
    if (parse_args(argc, argv, &a) < 0) {
        clog_error("%s", fp_error_get());
        return 2;
    }
    if (a.help) {
        usage(stdout);
        return 0;
    }
    if (!a.config && !a.print_config) {
        clog_error("--config FILE is required (see --help)");
        return 2;
    }
    if (coord_config_load(&cfg, a.config, argc - 1, argv + 1, !a.print_config) < 0) {
        clog_error("%s", fp_error_get());
        return 2;
    }
    if (a.print_config)
        return fp_cfg_write(coord_config_keys, &cfg, stdout) < 0 ? 1 : 0;
    if (sodium_init() < 0) {
        clog_error("libsodium failed to initialise");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return run(&cfg);
}

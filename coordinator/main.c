/* main.c - fedpeft-coordinator: arguments, the base model, and the loop.
 *
 *   fedpeft-coordinator --config FILE [--section.key=value ...]
 *   fedpeft-coordinator --help | --print-config
 *
 * SIGINT / SIGTERM stop the loop; the last completed round is already in the
 * checkpoint, so a restart with the same config resumes there. SIGHUP re-reads
 * [security] allowlist (applied by the ZAP thread, common/privacy/zap.h).
 */
#include <signal.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clog.h"
#include "coord_config.h"
#include "http.h"
#include "keys.h"
#include "model.h"
#include "rounds.h"
#include "server.h"

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

static atomic_int reload_allowlist;     /* SIGHUP: read by the ZAP thread */
static void on_hup(int sig) { (void)sig; atomic_store(&reload_allowlist, 1); }

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fedpeft-coordinator --config FILE [--section.key=VALUE ...]\n"
            "       fedpeft-coordinator --print-config [--config FILE] [overrides]\n"
            "\n"
            "Runs a federated LoRA fine-tuning: registers workers, runs the rounds,\n"
            "aggregates, checkpoints to [run] state_dir (a restart resumes) and writes\n"
            "the final adapter as a PEFT directory. Exit 0 when the run completed.\n"
            "Every key below can be overridden as --section.key=VALUE.\n"
            "--insecure is --security.insecure=true: plain TCP, no CURVE (local tests).\n\n");
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
        } else if (strcmp(s, "--insecure") == 0) {
            argv[i] = (char *)"--security.insecure=true";  /* for fp_cfg_apply_args */
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

/* Maps the base model for its shapes and hash (streamed from the mapping, no
 * resident f32 copy); the weights are not kept. */
static int load_model(const char *path, fp_model_config *cfg, char hash[65])
{
    fp_model *m = fp_model_load_dtype(path, FP_BASE_F32);
    if (!m)
        return fp_error_prefix("[model] path: ");
    *cfg = m->cfg;
    fp_model_hash(m, hash);
    fp_model_free(&m);
    return 0;
}

/* The status server's snapshot, refreshed from the event loop. */
typedef struct {
    http_server *web;
    server *srv;
    rounds *r;
} publish_ctx;
static publish_ctx publish_state;

static void publish(void *ctx)
{
    publish_ctx *p = ctx;
    http_publish(p->web, p->srv, p->r, 0);
}

/* [security]: the CURVE key pair (NULL with --insecure, after the warning). */
static int load_identity(const coord_config *cfg, fp_keypair **kp)
{
    *kp = NULL;
    if (cfg->insecure) {
        clog_info("WARNING: --insecure: traffic is plain TCP, unauthenticated, and worker ids "
                  "are whatever a peer says (no key binds them); use only for local tests");
        return 0;
    }
    if (!(*kp = fp_keypair_load(cfg->secret_key)))
        return fp_error_prefix("[security] secret_key: ");
    clog_info("CURVE on: coordinator public key %s; admitting the worker keys in %s "
              "(SIGHUP re-reads it)", (*kp)->public_z85, cfg->allowlist);
    return 0;
}

static int run(const coord_config *cfg)
{
    fp_model_config mcfg;
    char hash[65];
    rounds *r = NULL;
    server *srv = NULL;
    http_server *web = NULL;
    fp_keypair *kp = NULL;
    int code = 1;
    if (load_identity(cfg, &kp) < 0)
        goto err;
    if (load_model(cfg->model_path, &mcfg, hash) < 0)
        goto err;
    clog_info("base model %s: %s, %d layers, dim %d, hash %.12s...", cfg->model_path, mcfg.arch,
              mcfg.n_layers, mcfg.dim, hash);
    r = rounds_new(cfg, &mcfg, hash);
    if (!r)
        goto err;
    server_config sc = {cfg->endpoint, cfg->heartbeat_ms, hash, rounds_run_id(r),
                        FEDPEFT__LORA_SPEC__INIT, kp, cfg->allowlist, &reload_allowlist,
                        NULL, 0, 0};
    rounds_lora_spec(r, &sc.lora);
    sc.rank_refusal = rounds_rank_refusal(r);
    sc.weighting_equal = cfg->weighting == COORD_WEIGHT_EQUAL || cfg->dp;
    sc.max_examples = cfg->max_examples;
    srv = server_new(&sc);
    fp_keypair_free(&kp);   /* libzmq holds its own copy */
    if (!srv)
        goto err;
    clog_info("listening on %s: run %s, %d rounds, adapter of %llu floats, state in %s",
              cfg->endpoint, rounds_run_id(r), cfg->rounds, (unsigned long long)sc.lora.n_params,
              cfg->state_dir);
    if (cfg->dp)
        clog_info("[dp] on: every sampled worker weighs 1 (weighting = %s and allowlist weights "
                  "are not used), and each round's mean is the sum over %s",
                  cfg->weighting == COORD_WEIGHT_EQUAL ? "equal" : "examples",
                  cfg->sampling_mode == COORD_SAMPLING_POISSON
                      ? "fraction x registered workers (mode = poisson)"
                      : "the number sampled (mode = fixed)");
    if (rounds_attach(r, srv) < 0)
        goto err;
    if (cfg->http_port > 0) {
        if (!(web = http_new(cfg->http_address, cfg->http_port)))
            goto err;
        publish_ctx pc = {web, srv, r};
        publish_state = pc;
        server_set_observer(srv, publish, &publish_state);
        clog_info("status page on http://%s:%d/ (/status, /metrics, /healthz)",
                  cfg->http_address, cfg->http_port);
    }
    int rc = server_run(srv, &stop_signal);
    http_publish(web, srv, r, 1);
    if (rc < 0)
        goto err;
    if (rc == 1) {
        clog_info("stopped by signal %d; completed rounds are in %s", (int)stop_signal,
                  cfg->state_dir);
        code = 128 + (int)stop_signal;
        uint64_t saved;
        if (http_saved_round(r, &saved))
            clog_info("stopping: state saved at round %llu (%s/checkpoint.bin)",
                      (unsigned long long)saved, cfg->state_dir);
        else
            clog_info("stopping: no round completed yet, nothing to save");
    } else {
        code = rounds_exit_code(r);
    }
    http_destroy(&web);
    server_set_linger(srv, 2000); /* let the SHUTDOWN messages out */
    server_destroy(&srv);
    rounds_destroy(&r);
    return code;
err:
    clog_error("%s", fp_error_get());
    fp_keypair_free(&kp);
    http_destroy(&web);
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
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return run(&cfg);
}

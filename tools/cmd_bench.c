/* cmd_bench.c - `fedpeft bench train`: tokens/s, GFLOP/s and peak memory of
 * LoRA training steps (forward, backward, AdamW) on a random model. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "blas_setup.h"
#include "cli.h"
#include "optim.h"
#include "rng.h"
#include "train.h"

static const char usage[] =
    "usage: fedpeft bench train [--dim 512] [--layers 8] [--heads 8] [--kv-heads 8]\n"
    "           [--hidden 1376] [--vocab 4096] [--seq 256] [--batch 4] [--rank 8]\n"
    "           [--targets q_proj,k_proj,v_proj,o_proj] [--steps 5] [--threads N]\n"
    "           [--base-dtype f32|bf16|int8|nf4] [--grad-checkpoint]\n"
    "           [--model DIR | --write-model DIR]\n"
    "  The same shape as bench/torch_lora_ref.py's defaults; compare the two on the\n"
    "  same machine one right after the other. Random weights are built straight\n"
    "  into the base dtype; --model maps a saved model instead (its shape wins) and\n"
    "  --write-model saves the random f32 model of the shape given and exits.\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Matmul FLOPs per trained token: every frozen linear runs forward (2*in*out)
 * and backward to its input (2*in*out); attention scores and mixing cost
 * 2*T*dim each forward and twice that backward (full T x T, as computed);
 * LoRA factors cost 2*r*(in+out) forward and twice that backward. */
static double flops_per_token(const fp_model_config *c, const fp_lora *l, int T)
{
    double lin = 0.0, lora = 0.0;
    for (int t = 0; t < FP_T_COUNT; t++) {
        double in = fp_lora_in_dim(c, t), out = fp_lora_out_dim(c, t);
        lin += in * out;
        if (l->cfg.targets & (1u << t))
            lora += 6.0 * l->cfg.rank * (in + out);
    }
    double per_layer = 4.0 * lin + 12.0 * (double)T * c->dim + lora;
    return per_layer * c->n_layers + 4.0 * (double)c->vocab_size * c->dim;
}

/* The benchmark's shape, from the command line. */
typedef struct {
    fp_model_config cfg;
    fp_lora_config lc;
    int T, B, steps, threads, ckpt;
    fp_base_dtype dt;
    const char *model_dir, *write_dir;
} bench_shape;

/* VmRSS of this process in MiB (Linux), or -1. */
static double rss_now_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1.0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atof(line + 6);
    if (f)
        fclose(f);
    return kb < 0 ? -1.0 : kb / 1024.0;
}

/* The benchmark's base: mapped from sh->model_dir, else random in sh->dt. */
static fp_model *bench_model(const bench_shape *sh)
{
    if (sh->model_dir)
        return fp_model_load_dtype(sh->model_dir, sh->dt);
    return fp_model_new_random(&sh->cfg, sh->dt, 1, 0.02f);
}

/* --write-model: the random f32 model of the shape, saved. */
static int bench_write(const bench_shape *sh)
{
    fp_model *m = fp_model_new_random(&sh->cfg, FP_BASE_F32, 1, 0.02f);
    int rc = m && fp_model_save(m, sh->write_dir) == 0 ? 0 : cli_fail_lib("bench");
    if (rc == 0)
        printf("wrote %s (%.1f MiB of f32 weights)\n", sh->write_dir,
               fp_model_bytes(m) / (double)(1 << 20));
    fp_model_free(&m);
    return rc;
}

/* Trains sh->steps steps (after one untimed warm-up) and prints the figures. */
static int bench_train(const bench_shape *sh)
{
    const char *cmd = "bench";
    fp_model_config cfg = sh->cfg;
    const fp_lora_config lc = sh->lc;
    const int T = sh->T, B = sh->B, steps = sh->steps;
    fp_blas_set_threads(sh->threads);

    int rc = 1;
    fp_model *m = NULL;
    fp_lora *lora = NULL;
    fp_train *tr = NULL;
    fp_optim *opt = NULL;
    float *grad = NULL;
    int32_t *in = NULL, *tg = NULL;
    fp_optim_config oc;
    fp_optim_config_default(&oc);
    if (!(m = bench_model(sh)))
        goto lib_err;
    cfg = m->cfg;
    if (!(lora = fp_lora_new(&cfg, &lc)))
        goto lib_err;
    fp_lora_init(lora, 2);
    if (!(tr = fp_train_new_ckpt(m, lora, B, T, sh->ckpt)) || !(opt = fp_optim_new(&oc, lora->n_params)))
        goto lib_err;
    size_t nbt = (size_t)B * T;
    grad = malloc(sizeof(float) * lora->n_params);
    in = malloc(sizeof(int32_t) * nbt);
    tg = malloc(sizeof(int32_t) * nbt);
    if (!grad || !in || !tg) {
        fp_error_set("out of memory");
        goto lib_err;
    }
    fp_rng rng;
    fp_rng_seed(&rng, 3);
    for (size_t i = 0; i < nbt; i++) {
        in[i] = (int32_t)fp_rng_below(&rng, (uint64_t)cfg.vocab_size);
        tg[i] = (int32_t)fp_rng_below(&rng, (uint64_t)cfg.vocab_size);
    }
    double selfcheck = fp_blas_selfcheck();
    printf("bench train: dim %d, %d layers, %d heads (%d kv), hidden %d, vocab %d, seq %d, "
           "batch %d, rank %d, base %s%s%s; OpenBLAS core %s (sgemm check: max rel err %.1e)\n",
           cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim, cfg.vocab_size,
           T, B, lc.rank, fp_base_dtype_name(sh->dt), m->map ? " mapped" : "",
           sh->ckpt ? ", grad checkpoint" : "", fp_blas_corename(), selfcheck);
    double t_total = 0.0;
    for (int s = -1; s < steps; s++) {          /* step -1 warms up, untimed */
        double t0 = now_s();
        memset(grad, 0, sizeof(float) * lora->n_params);
        float loss = fp_train_step(tr, in, tg, grad, 1.0f, 0, NULL);
        fp_optim_step(opt, lora->params, grad);
        double dt = now_s() - t0;
        if (s >= 0) {
            t_total += dt;
            printf("  step %d: loss %.4f, %.3f s, %.0f tokens/s\n", s + 1, (double)loss, dt,
                   (double)nbt / dt);
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double tps = (double)nbt * steps / t_total;
    printf("tokens/s: %.1f\nGFLOP/s: %.1f\npeak RSS: %.1f MiB (weights %.1f MiB as %s, %.1f MiB "
           "of them in place from the mapping; LoRA %zu params)\nsaved activations: %.1f MiB\n"
           "RSS after training: %.1f MiB\n",
           tps, tps * flops_per_token(&cfg, lora, T) / 1e9, ru.ru_maxrss / 1024.0,
           fp_model_bytes(m) / (double)(1 << 20), fp_base_dtype_name(sh->dt),
           m->mapped_bytes / (double)(1 << 20), lora->n_params,
           fp_train_saved_bytes(tr) / (double)(1 << 20), rss_now_mib());
    rc = 0;
    goto out;
lib_err:
    cli_fail_lib(cmd);
out:
    free(grad), free(in), free(tg);
    fp_optim_free(&opt);
    fp_train_free(&tr);
    fp_lora_free(&lora);
    fp_model_free(&m);
    return rc;
}

/* Parses `bench train` options into sh: 0; -1 after --help; else the exit
 * status of an error already printed (2 usage, 1 a shape the engine refuses). */
static int bench_parse(int argc, char **argv, bench_shape *sh)
{
    const char *cmd = "bench";
    fp_model_config cfg = {.arch = "LlamaForCausalLM", .dim = 512, .hidden_dim = 1376,
                           .n_layers = 8, .n_heads = 8, .n_kv_heads = 8, .vocab_size = 4096,
                           .max_seq_len = 256, .rms_eps = 1e-5f, .rope_theta = 10000.0f,
                           .bos_id = -1, .eos_id = -1};
    sh->cfg = cfg;
    sh->T = 256, sh->B = 4, sh->steps = 5, sh->threads = 0;
    sh->dt = FP_BASE_F32;
    sh->ckpt = 0, sh->model_dir = NULL, sh->write_dir = NULL;
    fp_lora_config_default(&sh->lc);
    static const struct option opts[] = {
        {"dim", required_argument, 0, 'd'},    {"layers", required_argument, 0, 'L'},
        {"heads", required_argument, 0, 'H'},  {"kv-heads", required_argument, 0, 'K'},
        {"hidden", required_argument, 0, 'F'}, {"vocab", required_argument, 0, 'V'},
        {"seq", required_argument, 0, 'T'},    {"batch", required_argument, 0, 'B'},
        {"rank", required_argument, 0, 'r'},   {"targets", required_argument, 0, 'g'},
        {"steps", required_argument, 0, 's'},  {"threads", required_argument, 0, 'j'},
        {"base-dtype", required_argument, 0, 'q'}, {"grad-checkpoint", no_argument, 0, 'c'},
        {"model", required_argument, 0, 'm'}, {"write-model", required_argument, 0, 'w'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    int c, bad = 0;
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': bad = cli_int(cmd, "--dim", optarg, 2, 65536, &sh->cfg.dim); break;
        case 'L': bad = cli_int(cmd, "--layers", optarg, 1, 1024, &sh->cfg.n_layers); break;
        case 'H': bad = cli_int(cmd, "--heads", optarg, 1, 1024, &sh->cfg.n_heads); break;
        case 'K': bad = cli_int(cmd, "--kv-heads", optarg, 1, 1024, &sh->cfg.n_kv_heads); break;
        case 'F': bad = cli_int(cmd, "--hidden", optarg, 1, 1 << 20, &sh->cfg.hidden_dim); break;
        case 'V': bad = cli_int(cmd, "--vocab", optarg, 2, 1 << 22, &sh->cfg.vocab_size); break;
        case 'T': bad = cli_int(cmd, "--seq", optarg, 1, 1 << 16, &sh->T); break;
        case 'B': bad = cli_int(cmd, "--batch", optarg, 1, 4096, &sh->B); break;
        case 'r': bad = cli_int(cmd, "--rank", optarg, 1, 4096, &sh->lc.rank); break;
        case 'g': bad = fp_lora_parse_targets(optarg, &sh->lc.targets) ? cli_fail_lib(cmd) : 0; break;
        case 's': bad = cli_int(cmd, "--steps", optarg, 1, 1000000, &sh->steps); break;
        case 'j': bad = cli_int(cmd, "--threads", optarg, 1, 1024, &sh->threads); break;
        case 'q': bad = fp_base_dtype_parse(optarg, &sh->dt) ? cli_fail_lib(cmd) : 0; break;
        case 'c': sh->ckpt = 1; break;
        case 'm': sh->model_dir = optarg; break;
        case 'w': sh->write_dir = optarg; break;
        case 'h': fputs(usage, stdout); return -1;
        default: return cli_usage_hint(cmd);
        }
        if (bad)
            return 2;
    }
    sh->cfg.max_seq_len = sh->T;
    if (fp_config_validate(&sh->cfg, "bench shape") != 0)
        return cli_fail_lib(cmd);
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    const char *cmd = "bench";
    if (argc >= 2 && !strcmp(argv[1], "tokenize"))
        return cmd_bench_tokenize(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "secagg"))
        return cmd_bench_secagg(argc - 1, argv + 1);
    if (argc < 2 || strcmp(argv[1], "train") != 0) {
        fputs(usage, argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
        return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : cli_fail(cmd, "expected 'bench train'");
    }
    bench_shape sh;
    int prc = bench_parse(argc, argv, &sh);
    if (prc != 0)
        return prc < 0 ? 0 : prc;
    return sh.write_dir ? bench_write(&sh) : bench_train(&sh);
}

/* test_train_infer.c - the batched training forward and the KV-cache inference
 * agree; fp_sample picks tokens with the right distribution.
 *
 * FP_TIMING=1 also times fp_train_step (forward + backward) on the benchmark
 * shape and prints tokens/s (printed only, never asserted: speed is measured
 * by benchmarks). Export OPENBLAS_CORETYPE=SKYLAKEX (or the right core) first.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "infer.h"
#include "lora.h"
#include "model.h"
#include "rng.h"
#include "test_util.h"
#include "train.h"

static fp_model *make_model(int dim, int hidden, int layers, int heads, int kv_heads, int vocab,
                            int bias, int tie, uint64_t seed, float scale)
{
    fp_model_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.arch, bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
    c.dim = dim;
    c.hidden_dim = hidden;
    c.n_layers = layers;
    c.n_heads = heads;
    c.n_kv_heads = kv_heads;
    c.vocab_size = vocab;
    c.max_seq_len = 2048;
    c.rms_eps = 1e-6f;
    c.rope_theta = 10000.0f;
    c.tie_embeddings = tie;
    c.qkv_bias = bias;
    c.bos_id = 1;
    c.eos_id = 2;
    fp_model *m = fp_model_new(&c);
    assert_non_null(m);
    fp_model_randomize(m, seed, scale);
    return m;
}

static fp_lora *make_lora(const fp_model *m, int rank, unsigned targets, uint64_t seed)
{
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = rank;
    lc.targets = targets;
    lc.dropout = 0.1f;      /* inactive in eval and inference: both must ignore it */
    fp_lora *lo = fp_lora_new(&m->cfg, &lc);
    assert_non_null(lo);
    fp_lora_init(lo, seed);
    fp_rng r;
    fp_rng_seed(&r, seed + 1);
    for (int l = 0; l < m->cfg.n_layers; l++)   /* nonzero B so the adapter matters */
        for (int t = 0; t < FP_T_COUNT; t++) {
            float *b = fp_lora_b(lo, l, t);
            if (!b)
                continue;
            size_t n = (size_t)rank * (size_t)fp_lora_out_dim(&m->cfg, t);
            for (size_t i = 0; i < n; i++)
                b[i] = 0.1f * (2.0f * fp_rng_float(&r) - 1.0f);
        }
    return lo;
}

/* Every position of every row: batched logits == cached single-token logits. */
static double compare_train_infer(const fp_model *m, const fp_lora *lo, int B, int T)
{
    int V = m->cfg.vocab_size;
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    assert_true(in && tg);
    fp_rng r;
    fp_rng_seed(&r, 99);
    for (int i = 0; i < B * T; i++) {
        in[i] = (int32_t)fp_rng_below(&r, (uint64_t)V);
        tg[i] = (int32_t)fp_rng_below(&r, (uint64_t)V);
    }
    fp_train *tr = fp_train_new(m, lo, B, T);
    assert_non_null(tr);
    float loss = fp_train_step(tr, in, tg, NULL, 1.0f, 0, NULL);
    assert_true(isfinite(loss));
    fp_infer *inf = fp_infer_new(m, lo, T);
    assert_non_null(inf);
    double worst = 0.0, lmax = 0.0;
    for (int b = 0; b < B; b++)         /* restarting at pos 0 reuses the cache */
        for (int t = 0; t < T; t++) {
            const float *li = fp_infer_step(inf, in[b * T + t], t);
            assert_non_null(li);
            const float *lt = fp_train_logits(tr, b, t);
            assert_non_null(lt);
            for (int v = 0; v < V; v++) {
                worst = fmax(worst, fabs((double)li[v] - (double)lt[v]));
                lmax = fmax(lmax, fabs((double)lt[v]));
            }
        }
    assert_true(lmax > 0.1);    /* logits are not trivially small */
    fp_infer_free(&inf);
    assert_null(inf);
    fp_train_free(&tr);
    free(in);
    free(tg);
    return worst;
}

static void test_train_matches_infer(void **state)
{
    (void)state;
    /* GQA (8 heads over 2 kv heads), q/k/v biases, untied head */
    fp_model *m = make_model(64, 96, 3, 8, 2, 67, 1, 0, 1, 0.15f);
    fp_lora *lo = make_lora(m, 4, (1u << FP_T_COUNT) - 1u, 2);
    double d_lora = compare_train_infer(m, lo, 2, 11);
    double d_base = compare_train_infer(m, NULL, 3, 9);
    printf("  train vs infer: max |diff| %.3g (adapter), %.3g (base)\n", d_lora, d_base);
    assert_true(d_lora < 1e-4);
    assert_true(d_base < 1e-4);

    /* the adapter actually changes the logits */
    int32_t in[4] = {3, 5, 7, 9};
    fp_infer *a = fp_infer_new(m, lo, 4), *b = fp_infer_new(m, NULL, 4);
    assert_true(a && b);
    double diff = 0;
    for (int t = 0; t < 4; t++) {
        const float *la = fp_infer_step(a, in[t], t), *lb = fp_infer_step(b, in[t], t);
        for (int v = 0; v < m->cfg.vocab_size; v++)
            diff = fmax(diff, fabs(la[v] - lb[v]));
    }
    assert_true(diff > 1e-3);
    fp_infer_free(&a);
    fp_infer_free(&b);
    fp_lora_free(&lo);
    fp_model_free(&m);

    /* MHA, no biases, tied embeddings, adapter on a subset */
    m = make_model(32, 48, 2, 4, 4, 50, 0, 1, 3, 0.2f);
    lo = make_lora(m, 2, (1u << FP_T_V) | (1u << FP_T_UP) | (1u << FP_T_DOWN), 4);
    double d2 = compare_train_infer(m, lo, 2, 6);
    printf("  train vs infer (tied, MHA): max |diff| %.3g\n", d2);
    assert_true(d2 < 1e-4);
    /* longer than the 64-row attention block, with a partial last block */
    double d3 = compare_train_infer(m, lo, 2, 150);
    printf("  train vs infer (T 150): max |diff| %.3g\n", d3);
    assert_true(d3 < 1e-4);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

static void test_infer_bad_input(void **state)
{
    (void)state;
    fp_model *m = make_model(16, 24, 1, 2, 1, 20, 0, 0, 5, 0.3f);
    fp_infer *inf = fp_infer_new(m, NULL, 3);
    assert_non_null(inf);
    assert_null(fp_infer_step(inf, 20, 0));        /* token outside vocab */
    assert_null(fp_infer_step(inf, -1, 0));
    assert_null(fp_infer_step(inf, 1, 1));         /* skipped position 0 */
    assert_non_null(fp_infer_step(inf, 1, 0));
    assert_non_null(fp_infer_step(inf, 2, 1));
    assert_non_null(fp_infer_step(inf, 3, 2));
    assert_null(fp_infer_step(inf, 3, 3));         /* beyond the cache */
    assert_true(strlen(fp_error_get()) > 0);
    fp_infer_free(&inf);
    fp_infer_free(&inf);                           /* NULL-safe */
    assert_null(fp_infer_new(m, NULL, 0));
    fp_model_free(&m);
}

static void test_sample_argmax(void **state)
{
    (void)state;
    float lg[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f, -INFINITY};
    assert_int_equal(fp_sample(lg, 6, 0.0f, 1.0f, NULL), 1);   /* lowest id on ties */
    assert_int_equal(fp_sample(lg, 6, 0.0f, 0.5f, NULL), 1);
    float one[1] = {-3.0f};
    fp_rng r;
    fp_rng_seed(&r, 1);
    assert_int_equal(fp_sample(one, 1, 0.7f, 0.9f, &r), 0);
    /* a tiny temperature is (almost) argmax */
    for (int i = 0; i < 100; i++) {
        int32_t t = fp_sample(lg, 6, 1e-3f, 1.0f, &r);
        assert_true(t == 1 || t == 3);
    }
}

/* chi-square statistic of counts against probabilities p */
static double chi2(const int *count, const double *p, int k, int n)
{
    double x = 0;
    for (int i = 0; i < k; i++) {
        double e = p[i] * n;
        x += (count[i] - e) * (count[i] - e) / e;
    }
    return x;
}

static void test_sample_temperature(void **state)
{
    (void)state;
    const double p[4] = {0.1, 0.2, 0.3, 0.4};
    float lg[4];
    for (int i = 0; i < 4; i++)
        lg[i] = (float)log(p[i]) + 3.0f;   /* softmax is shift invariant */
    fp_rng r;
    fp_rng_seed(&r, 2024);
    const int n = 40000;

    int count[4] = {0};
    for (int i = 0; i < n; i++) {
        int32_t t = fp_sample(lg, 4, 1.0f, 1.0f, &r);
        assert_true(t >= 0 && t < 4);
        count[t]++;
    }
    double x = chi2(count, p, 4, n);
    printf("  T=1: counts %d %d %d %d, chi2 %.2f (3 dof)\n", count[0], count[1], count[2], count[3], x);
    assert_true(x < 16.27);  /* p = 0.001 */

    /* temperature 2: p_i^(1/2), renormalized */
    double q[4], z = 0;
    for (int i = 0; i < 4; i++)
        z += q[i] = sqrt(p[i]);
    for (int i = 0; i < 4; i++)
        q[i] /= z;
    memset(count, 0, sizeof count);
    for (int i = 0; i < n; i++)
        count[fp_sample(lg, 4, 2.0f, 1.0f, &r)]++;
    x = chi2(count, q, 4, n);
    printf("  T=2: counts %d %d %d %d, chi2 %.2f\n", count[0], count[1], count[2], count[3], x);
    assert_true(x < 16.27);
    /* and the T=2 draws are NOT distributed as T=1 (the check has power) */
    assert_true(chi2(count, p, 4, n) > 100.0);

    /* same seed, same tokens */
    fp_rng a, b;
    fp_rng_seed(&a, 5);
    fp_rng_seed(&b, 5);
    for (int i = 0; i < 100; i++)
        assert_int_equal(fp_sample(lg, 4, 0.8f, 0.9f, &a), fp_sample(lg, 4, 0.8f, 0.9f, &b));
}

static void test_sample_top_p(void **state)
{
    (void)state;
    /* probabilities 0.05, 0.5, 0.15, 0.3 in shuffled order */
    const double p[4] = {0.05, 0.5, 0.15, 0.3};
    float lg[4];
    for (int i = 0; i < 4; i++)
        lg[i] = (float)log(p[i]);
    fp_rng r;
    fp_rng_seed(&r, 7);
    const int n = 20000;

    /* top_p 0.7: 0.5 < 0.7, 0.5 + 0.3 >= 0.7 -> nucleus {1, 3}, renormalized 5:3 */
    int count[4] = {0};
    for (int i = 0; i < n; i++)
        count[fp_sample(lg, 4, 1.0f, 0.7f, &r)]++;
    assert_int_equal(count[0], 0);
    assert_int_equal(count[2], 0);
    const double pn[2] = {0.625, 0.375};
    int c2[2] = {count[1], count[3]};
    double x = chi2(c2, pn, 2, n);
    printf("  top_p 0.7: counts %d %d %d %d, chi2 %.2f (1 dof)\n", count[0], count[1], count[2],
           count[3], x);
    assert_true(x < 10.83);

    /* top_p below the largest probability: only the top token */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(fp_sample(lg, 4, 1.0f, 0.3f, &r), 1);

    /* top_p 0.9: {1, 3, 2} */
    memset(count, 0, sizeof count);
    for (int i = 0; i < n; i++)
        count[fp_sample(lg, 4, 1.0f, 0.9f, &r)]++;
    assert_int_equal(count[0], 0);
    assert_true(count[2] > 0);

    /* top_p 1 disables the nucleus: every token appears */
    memset(count, 0, sizeof count);
    for (int i = 0; i < n; i++)
        count[fp_sample(lg, 4, 1.0f, 1.0f, &r)]++;
    for (int i = 0; i < 4; i++)
        assert_true(count[i] > 0);
    x = chi2(count, p, 4, n);
    assert_true(x < 16.27);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Not a test of speed: prints tokens/s on the benchmark shape when FP_TIMING=1. */
static void test_timing(void **state)
{
    (void)state;
    const char *env = getenv("FP_TIMING");
    if (!env || strcmp(env, "1") != 0) {
        printf("  (set FP_TIMING=1 to time the benchmark shape)\n");
        return;
    }
    const int B = 4, T = 256;
    fp_model *m = make_model(512, 1376, 8, 8, 8, 4096, 0, 0, 1, 0.05f);
    fp_lora_config lc;
    fp_lora_config_default(&lc);    /* r 8 on q, k, v, o */
    fp_lora *lo = fp_lora_new(&m->cfg, &lc);
    assert_non_null(lo);
    fp_lora_init(lo, 1);
    fp_train *tr = fp_train_new(m, lo, B, T);
    assert_non_null(tr);
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    float *g = calloc(lo->n_params, sizeof *g);
    assert_true(in && tg && g);
    fp_rng r;
    fp_rng_seed(&r, 3);
    for (int i = 0; i < B * T; i++) {
        in[i] = (int32_t)fp_rng_below(&r, 4096);
        tg[i] = (int32_t)fp_rng_below(&r, 4096);
    }
    assert_true(isfinite(fp_train_step(tr, in, tg, g, 1.0f, 0, NULL)));   /* warm-up */
    const int steps = 3;
    double t0 = now_s();
    for (int s = 0; s < steps; s++)
        assert_true(isfinite(fp_train_step(tr, in, tg, g, 1.0f, 0, NULL)));
    double dt = now_s() - t0;
    t0 = now_s();
    for (int s = 0; s < steps; s++)
        assert_true(isfinite(fp_train_step(tr, in, tg, NULL, 1.0f, 0, NULL)));
    double df = now_s() - t0;
    printf("  train step (fwd+bwd) B %d T %d: %.3f s/step, %.0f tokens/s; forward only %.0f tokens/s\n",
           B, T, dt / steps, (double)steps * B * T / dt, (double)steps * B * T / df);

    fp_infer *inf = fp_infer_new(m, lo, T);
    assert_non_null(inf);
    t0 = now_s();
    for (int t = 0; t < 128; t++)
        assert_non_null(fp_infer_step(inf, in[t], t));
    printf("  infer: %.0f tokens/s\n", 128.0 / (now_s() - t0));
    fp_infer_free(&inf);
    free(in);
    free(tg);
    free(g);
    fp_train_free(&tr);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_matches_infer),
        cmocka_unit_test(test_infer_bad_input),
        cmocka_unit_test(test_sample_argmax),
        cmocka_unit_test(test_sample_temperature),
        cmocka_unit_test(test_sample_top_p),
        cmocka_unit_test(test_timing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

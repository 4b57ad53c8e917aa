/* test_gradcheck.c - LoRA gradients of fp_train_step against finite differences.
 *
 * A tiny random model (GQA, q/k/v biases, untied or tied lm_head) with an
 * adapter on all seven targets whose A and B are both random, so that both
 * gradients are nontrivial. Every gradient entry is compared with a central
 * difference of the loss; the largest relative error is printed and must stay
 * below GC_TOL. Also: rsLoRA scale, determinism, dropout, gradient
 * accumulation, and the LoRA configuration helpers in lora.c.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lora.h"
#include "model.h"
#include "rng.h"
#include "test_util.h"
#include "train.h"

#define GC_B 2
#define GC_T 5
#define GC_TOL 1e-2

static fp_model *tiny_model(int tie, int bias, uint64_t seed)
{
    fp_model_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.arch, bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
    c.dim = 16;
    c.hidden_dim = 24;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.vocab_size = 32;
    c.max_seq_len = 64;
    c.rms_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_embeddings = tie;
    c.qkv_bias = bias;
    c.bos_id = 1;
    c.eos_id = 2;
    fp_model *m = fp_model_new(&c);
    assert_non_null(m);
    fp_model_randomize(m, seed, 0.4f);
    return m;
}

static fp_lora *random_lora(const fp_model *m, int rank, unsigned targets, int rslora,
                            float dropout, uint64_t seed)
{
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = rank;
    lc.alpha = 3.0f;
    lc.targets = targets;
    lc.use_rslora = rslora;
    lc.dropout = dropout;
    fp_lora *lo = fp_lora_new(&m->cfg, &lc);
    assert_non_null(lo);
    fp_rng r;
    fp_rng_seed(&r, seed);
    for (size_t i = 0; i < lo->n_params; i++)
        lo->params[i] = 0.5f * (2.0f * fp_rng_float(&r) - 1.0f);
    return lo;
}

static void batch(int32_t *in, int32_t *tg, int vocab, uint64_t seed)
{
    fp_rng r;
    fp_rng_seed(&r, seed);
    for (int i = 0; i < GC_B * GC_T; i++) {
        in[i] = (int32_t)fp_rng_below(&r, (uint64_t)vocab);
        tg[i] = (int32_t)fp_rng_below(&r, (uint64_t)vocab);
    }
    tg[2] = -1;                 /* masked targets */
    tg[GC_T + 4] = -1;
}

/* The loss as the training step sees it; with dropout the step must run its
 * backward branch (dropout is only active then), so a scratch grad is used. */
static double loss_at(fp_train *tr, const int32_t *in, const int32_t *tg, float *scratch,
                      uint64_t dseed)
{
    float l = fp_train_step(tr, in, tg, scratch, 1.0f, dseed, NULL);
    assert_true(isfinite(l));
    return (double)l;
}

/* Compares every gradient entry with a central difference. Returns the
 * largest relative error, where errors are relative to max(|g|, |fd|) with a
 * floor of 2% of the largest gradient (entries that are ~0 compare absolutely). */
static double gradcheck(const fp_model *m, fp_lora *lo, int use_dropout_path)
{
    int32_t in[GC_B * GC_T], tg[GC_B * GC_T];
    batch(in, tg, m->cfg.vocab_size, 7);
    fp_train *tr = fp_train_new(m, lo, GC_B, GC_T);
    assert_non_null(tr);
    size_t n = lo->n_params, ntok = 0;
    float *g = calloc(n, sizeof *g), *scratch = calloc(n, sizeof *scratch);
    double *fd = calloc(n, sizeof *fd);
    assert_true(g && scratch && fd);
    float loss = fp_train_step(tr, in, tg, g, 1.0f, 42, &ntok);
    assert_true(isfinite(loss));
    assert_int_equal(ntok, GC_B * GC_T - 2);
    float *scr = use_dropout_path ? scratch : NULL;

    const float h = 2e-2f;
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++) {
        float p0 = lo->params[i];
        double f[6];    /* loss at p0 + k h for k = -3..-1, 1..3 */
        for (int k = -3, j = 0; k <= 3; k++) {
            if (k == 0)
                continue;
            lo->params[i] = p0 + (float)k * h;
            f[j++] = loss_at(tr, in, tg, scr, 42);
        }
        lo->params[i] = p0;
        /* sixth-order central stencil: truncation error ~h^6, so h can be large
         * enough that float rounding in the loss stays small */
        fd[i] = (45.0 * (f[3] - f[2]) - 9.0 * (f[4] - f[1]) + (f[5] - f[0])) / (60.0 * (double)h);
        if (fabs(fd[i]) > gmax)
            gmax = fabs(fd[i]);
    }
    assert_true(gmax > 1e-3);   /* the check must not be vacuous */
    double worst = 0.0;
    size_t worst_i = 0, nonzero_a = 0, nonzero_b = 0;
    for (size_t i = 0; i < n; i++) {
        double den = fmax(fmax(fabs((double)g[i]), fabs(fd[i])), 2e-2 * gmax);
        double e = fabs((double)g[i] - fd[i]) / den;
        if (e > worst) {
            worst = e;
            worst_i = i;
        }
    }
    /* both factors of every target got a real gradient */
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            size_t k = (size_t)l * FP_T_COUNT + (size_t)t;
            if (lo->off_a[k] == SIZE_MAX)
                continue;
            size_t na = (size_t)lo->cfg.rank * (size_t)fp_lora_in_dim(&m->cfg, t);
            size_t nb = (size_t)lo->cfg.rank * (size_t)fp_lora_out_dim(&m->cfg, t);
            double sa = 0, sb = 0;
            for (size_t j = 0; j < na; j++)
                sa += fabs(g[lo->off_a[k] + j]);
            for (size_t j = 0; j < nb; j++)
                sb += fabs(g[lo->off_b[k] + j]);
            nonzero_a += sa > 0;
            nonzero_b += sb > 0;
        }
    printf("  gradcheck: %zu params, loss %.5f, max |grad| %.3g, max rel err %.3g "
           "(entry %zu: analytic %.6g, numeric %.6g)\n",
           n, (double)loss, gmax, worst, worst_i, (double)g[worst_i], fd[worst_i]);
    size_t n_targets = 0;
    for (int t = 0; t < FP_T_COUNT; t++)
        n_targets += (lo->cfg.targets >> t) & 1u;
    assert_int_equal(nonzero_a, n_targets * (size_t)m->cfg.n_layers);
    assert_int_equal(nonzero_b, n_targets * (size_t)m->cfg.n_layers);
    free(g);
    free(scratch);
    free(fd);
    fp_train_free(&tr);
    assert_null(tr);
    return worst;
}

#define ALL_TARGETS ((1u << FP_T_COUNT) - 1u)

static void test_gradcheck_untied_bias(void **state)
{
    (void)state;
    fp_model *m = tiny_model(0, 1, 1);
    fp_lora *lo = random_lora(m, 2, ALL_TARGETS, 0, 0.0f, 2);
    assert_true(gradcheck(m, lo, 0) < GC_TOL);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

static void test_gradcheck_tied(void **state)
{
    (void)state;
    fp_model *m = tiny_model(1, 0, 3);
    assert_ptr_equal(m->w.lm_head, m->w.tok_emb);
    fp_lora *lo = random_lora(m, 2, ALL_TARGETS, 0, 0.0f, 4);
    assert_true(gradcheck(m, lo, 0) < GC_TOL);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

static void test_gradcheck_rslora_subset(void **state)
{
    (void)state;
    fp_model *m = tiny_model(0, 1, 5);
    unsigned tg = (1u << FP_T_Q) | (1u << FP_T_V) | (1u << FP_T_DOWN);
    fp_lora *lo = random_lora(m, 4, tg, 1, 0.0f, 6);
    assert_float_equal(fp_lora_scale(&lo->cfg), 3.0f / 2.0f, 1e-6);
    assert_true(gradcheck(m, lo, 0) < GC_TOL);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

/* Backward stops below the lowest targeted module; these target sets stop
 * inside layer 0 at each possible place. */
static void test_gradcheck_partial_targets(void **state)
{
    (void)state;
    static const unsigned sets[] = {
        (1u << FP_T_O) | (1u << FP_T_UP), 1u << FP_T_DOWN, 1u << FP_T_GATE, 1u << FP_T_K,
    };
    fp_model *m = tiny_model(0, 1, 22);
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        fp_lora *lo = random_lora(m, 2, sets[i], 0, 0.0f, 23 + i);
        assert_true(gradcheck(m, lo, 0) < GC_TOL);
        fp_lora_free(&lo);
    }
    fp_model_free(&m);
}

/* Sequences longer than the attention block (64 query rows) exercise the
 * blocked causal attention, including a partial last block. Too many
 * parameters x tokens for entry-wise differences, so: directional derivatives
 * g.v against the loss along v, for random sign vectors v and for v = g. */
static void test_gradcheck_long_sequence(void **state)
{
    (void)state;
    enum { LB = 2, LT = 150 };
    fp_model *m = tiny_model(0, 1, 30);
    fp_lora *lo = random_lora(m, 2, ALL_TARGETS, 0, 0.0f, 31);
    fp_train *tr = fp_train_new(m, lo, LB, LT);
    assert_non_null(tr);
    int32_t in[LB * LT], tg[LB * LT];
    fp_rng r;
    fp_rng_seed(&r, 32);
    for (int i = 0; i < LB * LT; i++) {
        in[i] = (int32_t)fp_rng_below(&r, (uint64_t)m->cfg.vocab_size);
        tg[i] = i % 7 == 3 ? -1 : (int32_t)fp_rng_below(&r, (uint64_t)m->cfg.vocab_size);
    }
    size_t n = lo->n_params;
    float *g = calloc(n, sizeof *g), *p0 = malloc(n * sizeof *p0), *v = malloc(n * sizeof *v);
    assert_true(g && p0 && v);
    assert_true(isfinite(fp_train_step(tr, in, tg, g, 1.0f, 0, NULL)));
    memcpy(p0, lo->params, n * sizeof *p0);
    double worst = 0;
    for (int dir = 0; dir < 5; dir++) {
        double gv = 0, vn = 0;
        for (size_t i = 0; i < n; i++) {
            v[i] = dir == 0 ? g[i] : (fp_rng_below(&r, 2) ? 1.0f : -1.0f);
            vn += (double)v[i] * v[i];
        }
        float sc = (float)(1.0 / sqrt(vn));     /* unit direction */
        for (size_t i = 0; i < n; i++) {
            v[i] *= sc;
            gv += (double)g[i] * v[i];
        }
        const float h = 2e-2f;
        double f[6];
        for (int k = -3, j = 0; k <= 3; k++) {
            if (k == 0)
                continue;
            for (size_t i = 0; i < n; i++)
                lo->params[i] = p0[i] + (float)k * h * v[i];
            f[j++] = loss_at(tr, in, tg, NULL, 0);
        }
        memcpy(lo->params, p0, n * sizeof *p0);
        double fd = (45.0 * (f[3] - f[2]) - 9.0 * (f[4] - f[1]) + (f[5] - f[0])) / (60.0 * (double)h);
        double e = fabs(gv - fd) / fmax(fabs(fd), 1e-2);
        printf("  long sequence: direction %d: g.v %.6g, numeric %.6g, rel err %.3g\n", dir, gv, fd, e);
        worst = fmax(worst, e);
    }
    assert_true(worst < GC_TOL);
    free(g);
    free(p0);
    free(v);
    fp_train_free(&tr);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

/* With dropout the masks are fixed by the seed, so the loss is a smooth
 * function of the parameters and the gradient must match it too. */
static void test_gradcheck_dropout(void **state)
{
    (void)state;
    fp_model *m = tiny_model(0, 1, 7);
    fp_lora *lo = random_lora(m, 2, ALL_TARGETS, 0, 0.3f, 8);
    assert_true(gradcheck(m, lo, 1) < GC_TOL);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

static void test_rslora_scale(void **state)
{
    (void)state;
    fp_lora_config c;
    fp_lora_config_default(&c);
    assert_float_equal(fp_lora_scale(&c), 2.0f, 1e-7);     /* 16 / 8 */
    c.use_rslora = 1;
    assert_float_equal(fp_lora_scale(&c), 16.0f / sqrtf(8.0f), 1e-6);
    c.rank = 16;
    c.alpha = 32.0f;
    assert_float_equal(fp_lora_scale(&c), 8.0f, 1e-6);
    c.use_rslora = 0;
    assert_float_equal(fp_lora_scale(&c), 2.0f, 1e-7);

    /* rsLoRA with rank 4 and alpha a equals plain LoRA with alpha 2a */
    fp_model *m = tiny_model(0, 1, 9);
    fp_lora *rs = random_lora(m, 4, ALL_TARGETS, 1, 0.0f, 10);
    fp_lora *pl = random_lora(m, 4, ALL_TARGETS, 0, 0.0f, 10);
    pl->cfg.alpha = 2.0f * rs->cfg.alpha;
    int32_t in[GC_B * GC_T], tg[GC_B * GC_T];
    batch(in, tg, m->cfg.vocab_size, 11);
    fp_train *a = fp_train_new(m, rs, GC_B, GC_T), *b = fp_train_new(m, pl, GC_B, GC_T);
    assert_true(a && b);
    float la = fp_train_step(a, in, tg, NULL, 1.0f, 0, NULL);
    float lb = fp_train_step(b, in, tg, NULL, 1.0f, 0, NULL);
    assert_float_equal(la, lb, 1e-5);
    fp_train_free(&a);
    fp_train_free(&b);
    fp_lora_free(&rs);
    fp_lora_free(&pl);
    fp_model_free(&m);
}

static void test_deterministic_and_dropout(void **state)
{
    (void)state;
    fp_model *m = tiny_model(0, 1, 12);
    fp_lora *lo = random_lora(m, 2, ALL_TARGETS, 0, 0.0f, 13);
    int32_t in[GC_B * GC_T], tg[GC_B * GC_T];
    batch(in, tg, m->cfg.vocab_size, 14);
    fp_train *tr = fp_train_new(m, lo, GC_B, GC_T);
    assert_non_null(tr);
    size_t n = lo->n_params;
    float *g1 = calloc(n, sizeof *g1), *g2 = calloc(n, sizeof *g2);
    assert_true(g1 && g2);

    /* dropout 0: the seed changes nothing, and repeated calls are bitwise equal */
    float l1 = fp_train_step(tr, in, tg, g1, 1.0f, 1, NULL);
    float l2 = fp_train_step(tr, in, tg, g2, 1.0f, 99, NULL);
    assert_true(l1 == l2);
    assert_memory_equal(g1, g2, n * sizeof *g1);
    float le = fp_train_step(tr, in, tg, NULL, 1.0f, 5, NULL);
    assert_true(le == l1);
    fp_train_free(&tr);

    /* dropout 0.5: same seed -> same result; other seed -> other loss;
     * without grad (eval) no dropout at all */
    lo->cfg.dropout = 0.5f;
    tr = fp_train_new(m, lo, GC_B, GC_T);
    assert_non_null(tr);
    memset(g1, 0, n * sizeof *g1);
    memset(g2, 0, n * sizeof *g2);
    float d1 = fp_train_step(tr, in, tg, g1, 1.0f, 1, NULL);
    float d2 = fp_train_step(tr, in, tg, g2, 1.0f, 1, NULL);
    assert_true(d1 == d2);
    assert_memory_equal(g1, g2, n * sizeof *g1);
    float d3 = fp_train_step(tr, in, tg, g2, 1.0f, 2, NULL);
    assert_true(isfinite(d3) && d3 != d1);
    assert_true(d1 != l1);
    float de = fp_train_step(tr, in, tg, NULL, 1.0f, 1, NULL);
    assert_float_equal(de, l1, 1e-6);

    free(g1);
    free(g2);
    fp_train_free(&tr);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

static void test_grad_accumulation(void **state)
{
    (void)state;
    fp_model *m = tiny_model(0, 1, 15);
    fp_lora *lo = random_lora(m, 2, ALL_TARGETS, 0, 0.0f, 16);
    int32_t in[GC_B * GC_T], tg[GC_B * GC_T];
    batch(in, tg, m->cfg.vocab_size, 17);
    fp_train *tr = fp_train_new(m, lo, GC_B, GC_T);
    assert_non_null(tr);
    size_t n = lo->n_params;
    float *g1 = calloc(n, sizeof *g1), *g2 = calloc(n, sizeof *g2);
    assert_true(g1 && g2);
    (void)fp_train_step(tr, in, tg, g1, 1.0f, 0, NULL);
    (void)fp_train_step(tr, in, tg, g2, 0.5f, 0, NULL);
    (void)fp_train_step(tr, in, tg, g2, 0.5f, 0, NULL);
    double gmax = 0, dmax = 0;
    for (size_t i = 0; i < n; i++) {
        gmax = fmax(gmax, fabs(g1[i]));
        dmax = fmax(dmax, fabs(g1[i] - g2[i]));
    }
    assert_true(gmax > 0);
    assert_true(dmax <= 1e-6 * gmax);

    /* grad_scale scales linearly */
    memset(g2, 0, n * sizeof *g2);
    (void)fp_train_step(tr, in, tg, g2, 3.0f, 0, NULL);
    for (size_t i = 0; i < n; i++)
        assert_true(fabs(g2[i] - 3.0f * g1[i]) <= 1e-5 * gmax);

    /* all targets masked: loss 0, no tokens, gradient untouched */
    int32_t none[GC_B * GC_T];
    for (int i = 0; i < GC_B * GC_T; i++)
        none[i] = -1;
    memcpy(g2, g1, n * sizeof *g1);
    size_t ntok = 99;
    float l0 = fp_train_step(tr, in, none, g2, 1.0f, 0, &ntok);
    assert_true(l0 == 0.0f);
    assert_int_equal(ntok, 0);
    assert_memory_equal(g1, g2, n * sizeof *g1);

    /* bad token ids: NaN and a message, no crash */
    int32_t bad[GC_B * GC_T];
    memcpy(bad, in, sizeof bad);
    bad[3] = m->cfg.vocab_size;
    assert_true(isnan(fp_train_step(tr, bad, tg, g2, 1.0f, 0, NULL)));
    assert_non_null(strstr(fp_error_get(), "vocabulary"));

    free(g1);
    free(g2);
    fp_train_free(&tr);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

/* A fresh adapter (B = 0) changes nothing: same loss as the base model. */
static void test_fresh_adapter_is_identity(void **state)
{
    (void)state;
    fp_model *m = tiny_model(0, 1, 18);
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.targets = ALL_TARGETS;
    fp_lora *lo = fp_lora_new(&m->cfg, &lc);
    assert_non_null(lo);
    fp_lora_init(lo, 19);
    int32_t in[GC_B * GC_T], tg[GC_B * GC_T];
    batch(in, tg, m->cfg.vocab_size, 20);
    fp_train *base = fp_train_new(m, NULL, GC_B, GC_T), *ad = fp_train_new(m, lo, GC_B, GC_T);
    assert_true(base && ad);
    float lb = fp_train_step(base, in, tg, NULL, 1.0f, 0, NULL);
    float la = fp_train_step(ad, in, tg, NULL, 1.0f, 0, NULL);
    assert_true(isfinite(lb));
    assert_float_equal(la, lb, 1e-6);
    /* with B = 0, dA is zero and dB is not */
    float *g = calloc(lo->n_params, sizeof *g);
    assert_non_null(g);
    (void)fp_train_step(ad, in, tg, g, 1.0f, 0, NULL);
    double sa = 0, sb = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            size_t k = (size_t)l * FP_T_COUNT + (size_t)t;
            for (size_t j = lo->off_a[k]; j < lo->off_b[k]; j++)
                sa += fabs(g[j]);
            size_t nb = (size_t)lo->cfg.rank * (size_t)fp_lora_out_dim(&m->cfg, t);
            for (size_t j = 0; j < nb; j++)
                sb += fabs(g[lo->off_b[k] + j]);
        }
    assert_true(sa == 0.0);
    assert_true(sb > 0.0);
    free(g);
    fp_train_free(&base);
    fp_train_free(&ad);
    fp_lora_free(&lo);
    fp_model_free(&m);
}

static void test_lora_config_helpers(void **state)
{
    (void)state;
    unsigned mask = 0;
    char buf[256];
    assert_int_equal(fp_lora_parse_targets("q_proj,v_proj", &mask), 0);
    assert_int_equal(mask, (1u << FP_T_Q) | (1u << FP_T_V));
    assert_int_equal(fp_lora_parse_targets(" down_proj , gate_proj", &mask), 0);
    assert_int_equal(mask, (1u << FP_T_DOWN) | (1u << FP_T_GATE));
    assert_int_equal(fp_lora_parse_targets("all-linear", &mask), 0);
    assert_int_equal(mask, ALL_TARGETS);
    assert_int_equal(fp_lora_parse_targets("all", &mask), 0);
    assert_int_equal(mask, ALL_TARGETS);
    mask = 5;
    assert_int_equal(fp_lora_parse_targets("q_proj,lm_head", &mask), -1);
    assert_int_equal(mask, 5);
    assert_non_null(strstr(fp_error_get(), "lm_head"));
    assert_non_null(strstr(fp_error_get(), "gate_proj"));   /* lists valid names */
    assert_int_equal(fp_lora_parse_targets("", &mask), -1);
    assert_int_equal(fp_lora_parse_targets(" , ", &mask), -1);
    assert_int_equal(fp_lora_parse_targets("q_pro", &mask), -1);

    fp_lora_format_targets((1u << FP_T_Q) | (1u << FP_T_O) | (1u << FP_T_UP), buf, sizeof buf);
    assert_string_equal(buf, "q_proj,o_proj,up_proj");
    fp_lora_format_targets(ALL_TARGETS, buf, sizeof buf);
    assert_int_equal(fp_lora_parse_targets(buf, &mask), 0);
    assert_int_equal(mask, ALL_TARGETS);
    fp_lora_format_targets(ALL_TARGETS, buf, 10);   /* truncation stays terminated */
    assert_true(strlen(buf) < 10);

    fp_lora_config c;
    fp_lora_config_default(&c);
    assert_int_equal(c.rank, 8);
    assert_float_equal(c.alpha, 16.0f, 0);
    assert_int_equal(c.targets, 0xfu);
    assert_float_equal(c.dropout, 0.0f, 0);
    assert_int_equal(c.use_rslora, 0);
    assert_string_equal(fp_target_names[FP_T_GATE], "gate_proj");

    fp_model *m = tiny_model(0, 1, 21);
    const fp_model_config *mc = &m->cfg;
    assert_int_equal(fp_lora_in_dim(mc, FP_T_DOWN), 24);
    assert_int_equal(fp_lora_out_dim(mc, FP_T_K), 8);
    assert_int_equal(fp_lora_out_dim(mc, FP_T_GATE), 24);

    c.rank = 0;
    assert_null(fp_lora_new(mc, &c));
    c.rank = 2;
    c.targets = 0;
    assert_null(fp_lora_new(mc, &c));
    c.targets = (1u << FP_T_K) | (1u << FP_T_DOWN);
    fp_lora *lo = fp_lora_new(mc, &c);
    assert_non_null(lo);
    /* layout: layer-major, A before B, untargeted skipped */
    size_t ka = 2 * 16, kb = 8 * 2, da = 2 * 24, db = 16 * 2, per = ka + kb + da + db;
    assert_int_equal(lo->n_params, 2 * per);
    assert_int_equal(lo->off_a[FP_T_K], 0);
    assert_int_equal(lo->off_b[FP_T_K], ka);
    assert_int_equal(lo->off_a[FP_T_DOWN], ka + kb);
    assert_int_equal(lo->off_b[FP_T_DOWN], ka + kb + da);
    assert_int_equal(lo->off_a[FP_T_COUNT + FP_T_K], per);
    assert_true(lo->off_a[FP_T_Q] == SIZE_MAX && fp_lora_a(lo, 0, FP_T_Q) == NULL);
    assert_ptr_equal(fp_lora_b(lo, 1, FP_T_DOWN), lo->params + per + ka + kb + da);
    assert_null(fp_lora_a(lo, 2, FP_T_K));
    for (size_t i = 0; i < lo->n_params; i++)
        assert_true(lo->params[i] == 0.0f);

    /* PEFT init: A in +-1/sqrt(in) and not all zero, B zero, seeded */
    fp_lora_init(lo, 77);
    float *a = fp_lora_a(lo, 1, FP_T_DOWN);
    float bound = 1.0f / sqrtf(24.0f), amax = 0;
    for (size_t i = 0; i < da; i++) {
        assert_true(fabsf(a[i]) <= bound);
        amax = fmaxf(amax, fabsf(a[i]));
    }
    assert_true(amax > 0.5f * bound);
    for (size_t i = 0; i < db; i++)
        assert_true(fp_lora_b(lo, 1, FP_T_DOWN)[i] == 0.0f);
    float first = lo->params[0];
    fp_lora_init(lo, 77);
    assert_true(lo->params[0] == first);
    fp_lora_init(lo, 78);
    assert_true(lo->params[0] != first);

    fp_lora_free(&lo);
    assert_null(lo);
    fp_lora_free(&lo);  /* NULL-safe */
    fp_model_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_config_helpers),
        cmocka_unit_test(test_gradcheck_untied_bias),
        cmocka_unit_test(test_gradcheck_tied),
        cmocka_unit_test(test_gradcheck_rslora_subset),
        cmocka_unit_test(test_gradcheck_dropout),
        cmocka_unit_test(test_gradcheck_partial_targets),
        cmocka_unit_test(test_gradcheck_long_sequence),
        cmocka_unit_test(test_rslora_scale),
        cmocka_unit_test(test_deterministic_and_dropout),
        cmocka_unit_test(test_grad_accumulation),
        cmocka_unit_test(test_fresh_adapter_is_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

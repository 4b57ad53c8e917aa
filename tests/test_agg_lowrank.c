/* test_agg_lowrank.c - LoRA-aware aggregation (agg_lowrank.h) against dense
 * references computed here in double: the exact weighted sum of B_k A_k and its
 * dense truncated SVD (LAPACK dgesvd). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agg_lowrank.h"
#include "model.h"
#include "rng.h"
#include "test_util.h"

void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a,
             const int *lda, double *s, double *u, const int *ldu, double *vt, const int *ldvt,
             double *work, const int *lwork, int *info, size_t jobu_len, size_t jobvt_len);

#define KMAX 4

/* K workers' factors for one module: B_k [out][r_k], A_k [r_k][in], U(-1, 1). */
typedef struct {
    int out, in, K, r[KMAX];
    double p[KMAX];
    float *B[KMAX], *A[KMAX];
} mod;

static mod mod_random(int out, int in, int K, const int *r, uint64_t seed)
{
    mod m = {.out = out, .in = in, .K = K};
    fp_rng g;
    fp_rng_seed(&g, seed);
    double ps = 0;
    for (int k = 0; k < K; k++) {
        m.r[k] = r[k];
        m.p[k] = 1.0 + k;                       /* unequal weights, normalised below */
        ps += m.p[k];
        m.B[k] = malloc((size_t)out * r[k] * sizeof(float));
        m.A[k] = malloc((size_t)r[k] * in * sizeof(float));
        assert_non_null(m.B[k]);
        assert_non_null(m.A[k]);
        for (int i = 0; i < out * r[k]; i++)
            m.B[k][i] = fp_rng_float(&g) * 2.0f - 1.0f;
        for (int i = 0; i < r[k] * in; i++)
            m.A[k][i] = fp_rng_float(&g) * 2.0f - 1.0f;
    }
    for (int k = 0; k < K; k++)
        m.p[k] /= ps;
    return m;
}

static void mod_free(mod *m)
{
    for (int k = 0; k < m->K; k++) {
        free(m->B[k]);
        free(m->A[k]);
    }
}

/* dW [out][in] = sum_k p_k B_k A_k, in double. */
static double *dense_sum(const mod *m)
{
    double *W = calloc((size_t)m->out * m->in, sizeof *W);
    assert_non_null(W);
    for (int k = 0; k < m->K; k++)
        for (int o = 0; o < m->out; o++)
            for (int c = 0; c < m->r[k]; c++)
                for (int i = 0; i < m->in; i++)
                    W[o * m->in + i] += m->p[k] * (double)m->B[k][o * m->r[k] + c] *
                                        (double)m->A[k][c * m->in + i];
    return W;
}

/* P [out][in] = B [out][r] A [r][in] in double. */
static double *product(int out, int in, int r, const float *B, const float *A)
{
    double *P = calloc((size_t)out * in, sizeof *P);
    assert_non_null(P);
    for (int o = 0; o < out; o++)
        for (int c = 0; c < r; c++)
            for (int i = 0; i < in; i++)
                P[o * in + i] += (double)B[o * r + c] * (double)A[c * in + i];
    return P;
}

/* ||X - Y||_F / ||Y||_F */
static double rel_err(const double *X, const double *Y, size_t n)
{
    double d = 0, y = 0;
    for (size_t i = 0; i < n; i++) {
        d += (X[i] - Y[i]) * (X[i] - Y[i]);
        y += Y[i] * Y[i];
    }
    return sqrt(d / y);
}

/* The best rank-r approximation of W [out][in] by a dense SVD (Eckart-Young);
 * s (optional) receives all min(out,in) singular values. */
static double *dense_rank_r(const double *W, int out, int in, int r, double *s_all)
{
    int mn = out < in ? out : in, lwork = -1, info = 0;
    double *a = malloc((size_t)out * in * sizeof *a), *s = malloc(mn * sizeof *s);
    double *u = malloc((size_t)out * mn * sizeof *u), *vt = malloc((size_t)mn * in * sizeof *vt);
    assert_true(a && s && u && vt);
    for (int o = 0; o < out; o++)                /* row-major -> column-major */
        for (int i = 0; i < in; i++)
            a[o + (size_t)i * out] = W[o * in + i];
    double wq;
    dgesvd_("S", "S", &out, &in, a, &out, s, u, &out, vt, &mn, &wq, &lwork, &info, 1, 1);
    lwork = (int)wq;
    double *work = malloc((size_t)lwork * sizeof *work);
    dgesvd_("S", "S", &out, &in, a, &out, s, u, &out, vt, &mn, work, &lwork, &info, 1, 1);
    assert_int_equal(info, 0);
    double *P = calloc((size_t)out * in, sizeof *P);
    for (int j = 0; j < r && j < mn; j++)
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++)
                P[o * in + i] += u[o + (size_t)j * out] * s[j] * vt[j + (size_t)i * mn];
    if (s_all)
        memcpy(s_all, s, mn * sizeof *s);
    free(a); free(s); free(u); free(vt); free(work);
    return P;
}

static void svd_case(int out, int in, int K, const int *r, int r_new, uint64_t seed)
{
    mod m = mod_random(out, in, K, r, seed);
    int R = 0;
    for (int k = 0; k < K; k++)
        R += r[k];
    float *Bn = malloc((size_t)out * r_new * sizeof *Bn), *An = malloc((size_t)r_new * in * 4);
    float *S = malloc(r_new * sizeof *S);
    assert_int_equal(fp_lr_svd(out, in, K, (const float *const *)m.B, (const float *const *)m.A,
                               m.r, m.p, r_new, Bn, An, S), 0);
    double *W = dense_sum(&m), *P = product(out, in, r_new, Bn, An);
    int mn = out < in ? out : in;
    double *s_all = malloc(mn * sizeof *s_all);
    double *Wr = dense_rank_r(W, out, in, r_new, s_all);
    double e_best = rel_err(P, Wr, (size_t)out * in);
    double e_sum = rel_err(P, W, (size_t)out * in);
    printf("# out %d in %d R %d r %d: vs best rank-r %.2e, vs exact sum %.2e\n", out, in, R,
           r_new, e_best, e_sum);
    assert_true(e_best < 1e-4);
    int rank_sum = R < mn ? R : mn;
    if (rank_sum <= r_new)
        assert_true(e_sum < 1e-4);             /* exact: nothing truncated */
    else
        assert_true(e_sum > 1e-3);             /* truncation really dropped something */
    for (int j = 0; j < r_new; j++) {           /* singular values as the dense SVD's */
        double want = j < mn ? s_all[j] : 0.0;
        assert_true(fabs(S[j] - want) <= 1e-4 * s_all[0]);
        if (j > 0)
            assert_true(S[j] <= S[j - 1] * (1 + 1e-6f));
    }
    /* sqrt(S) split on both sides: ||B[:,j]|| = ||A[j,:]|| = sqrt(s_j) */
    for (int j = 0; j < r_new && j < rank_sum; j++) {
        double nb = 0, na = 0;
        for (int o = 0; o < out; o++)
            nb += (double)Bn[o * r_new + j] * Bn[o * r_new + j];
        for (int i = 0; i < in; i++)
            na += (double)An[j * in + i] * An[j * in + i];
        assert_true(fabs(sqrt(nb) - sqrt(S[j])) < 1e-3 * sqrt(S[0]));
        assert_true(fabs(sqrt(na) - sqrt(S[j])) < 1e-3 * sqrt(S[0]));
    }
    free(Bn); free(An); free(S); free(W); free(P); free(Wr); free(s_all);
    mod_free(&m);
}

static void test_svd_exact_when_stacked_rank_fits(void **state)
{
    (void)state;
    svd_case(24, 20, 2, (int[]){2, 3}, 8, 1);              /* R 5 <= r 8: zero-padded */
    svd_case(24, 20, 3, (int[]){4, 8, 4}, 16, 2);          /* R 16 == r */
}

static void test_svd_best_rank_r_mixed_ranks(void **state)
{
    (void)state;
    const int r3[] = {4, 8, 16};                           /* R 28 */
    svd_case(64, 48, 3, r3, 8, 3);                         /* R < out, in */
    svd_case(64, 20, 3, r3, 8, 4);                         /* R > in: wide As */
    svd_case(18, 50, 3, r3, 8, 5);                         /* R > out: wide Bs */
    svd_case(12, 10, 3, r3, 6, 6);                         /* R > out and in */
    svd_case(12, 10, 3, r3, 16, 7);                        /* r > min(out,in): exact */
}

/* FedAvg's mean(B) mean(A) is not the mean of the products. */
static void test_fedavg_differs_from_exact(void **state)
{
    (void)state;
    int out = 32, in = 24, r = 8, K = 3;
    mod m = mod_random(out, in, K, (int[]){8, 8, 8}, 11);
    float *Bm = calloc((size_t)out * r, 4), *Am = calloc((size_t)r * in, 4);
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < out * r; i++)
            Bm[i] += (float)m.p[k] * m.B[k][i];
        for (int i = 0; i < r * in; i++)
            Am[i] += (float)m.p[k] * m.A[k][i];
    }
    float *Bn = malloc((size_t)out * r * 4), *An = malloc((size_t)r * in * 4);
    assert_int_equal(fp_lr_svd(out, in, K, (const float *const *)m.B, (const float *const *)m.A,
                               m.r, m.p, r, Bn, An, NULL), 0);
    double *W = dense_sum(&m), *Pf = product(out, in, r, Bm, Am), *Ps = product(out, in, r, Bn, An);
    double *Wr = dense_rank_r(W, out, in, r, NULL);
    double ef = rel_err(Pf, W, (size_t)out * in), es = rel_err(Ps, W, (size_t)out * in);
    printf("# vs exact sum: fedavg %.3f, svd %.3f\n", ef, es);
    assert_true(rel_err(Ps, Wr, (size_t)out * in) < 1e-4);
    assert_true(ef > 0.3);                  /* the cross terms are far from small */
    assert_true(ef > 1.5 * es);             /* svd is the better rank-r answer */
    assert_true(rel_err(Pf, Ps, (size_t)out * in) > 0.3);   /* and clearly another one */
    free(Bm); free(Am); free(Bn); free(An); free(W); free(Pf); free(Ps); free(Wr);
    mod_free(&m);
}

static void test_stack_exact_and_fold(void **state)
{
    (void)state;
    int out = 20, in = 12, K = 3;
    mod m = mod_random(out, in, K, (int[]){4, 8, 16}, 21);
    int R = 28;
    float *Bs = malloc((size_t)out * R * 4), *As = malloc((size_t)R * in * 4);
    assert_int_equal(fp_lr_stack(out, in, K, (const float *const *)m.B,
                                 (const float *const *)m.A, m.r, m.p, Bs, As), 0);
    double *W = dense_sum(&m), *P = product(out, in, R, Bs, As);
    assert_true(rel_err(P, W, (size_t)out * in) < 1e-6);
    /* fold: W0 + s Bs As */
    float *W0 = malloc((size_t)out * in * 4);
    for (int i = 0; i < out * in; i++)
        W0[i] = 0.01f * (float)i;
    fp_lr_fold(out, in, R, 2.5f, Bs, As, W0);
    for (int i = 0; i < out * in; i++)
        assert_true(fabs(W0[i] - (0.01 * i + 2.5 * W[i])) < 1e-4);
    /* a bad rank is refused */
    int bad[] = {4, 0, 16};
    assert_int_equal(fp_lr_stack(out, in, K, (const float *const *)m.B,
                                 (const float *const *)m.A, bad, m.p, Bs, As), -1);
    assert_non_null(strstr(fp_error_get(), "rank"));
    free(Bs); free(As); free(W); free(P); free(W0);
    mod_free(&m);
}

static void test_truncate_and_pad(void **state)
{
    (void)state;
    int out = 30, in = 26, r = 16, rs = 4;
    mod m = mod_random(out, in, 2, (int[]){8, 16}, 31);
    float *B = malloc((size_t)out * r * 4), *A = malloc((size_t)r * in * 4);
    assert_int_equal(fp_lr_svd(out, in, 2, (const float *const *)m.B, (const float *const *)m.A,
                               m.r, m.p, r, B, A, NULL), 0);
    /* the first rs components of an SVD-ordered pair: the best rank-rs approximation */
    float *Bt = malloc((size_t)out * rs * 4), *At = malloc((size_t)rs * in * 4);
    assert_int_equal(fp_lr_truncate(out, in, r, B, A, rs, Bt, At), 0);
    double *W = dense_sum(&m), *Wr = dense_rank_r(W, out, in, rs, NULL);
    double *Pt = product(out, in, rs, Bt, At);
    assert_true(rel_err(Pt, Wr, (size_t)out * in) < 1e-4);
    /* padding back keeps the product and zeroes the rest */
    float *Bp = malloc((size_t)out * r * 4), *Ap = malloc((size_t)r * in * 4);
    memset(Bp, 0x7f, (size_t)out * r * 4);
    memset(Ap, 0x7f, (size_t)r * in * 4);
    assert_int_equal(fp_lr_pad(out, in, rs, Bt, At, r, Bp, Ap), 0);
    double *Pp = product(out, in, r, Bp, Ap);
    assert_true(rel_err(Pp, Pt, (size_t)out * in) < 1e-7);
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++)
            assert_true(j < rs ? Bp[o * r + j] == Bt[o * rs + j] : Bp[o * r + j] == 0.0f);
    for (int i = rs * in; i < r * in; i++)
        assert_true(Ap[i] == 0.0f);
    assert_int_equal(fp_lr_truncate(out, in, r, B, A, r + 1, Bt, At), -1);
    assert_int_equal(fp_lr_pad(out, in, r, B, A, rs, Bp, Ap), -1);
    free(B); free(A); free(Bt); free(At); free(W); free(Wr); free(Pt); free(Bp); free(Ap);
    free(Pp);
    mod_free(&m);
}

/* ---- whole adapters ---------------------------------------------------------- */

static fp_model_config tiny_model(void)
{
    fp_model_config m;
    memset(&m, 0, sizeof m);
    snprintf(m.arch, sizeof m.arch, "LlamaForCausalLM");
    m.dim = 16;
    m.hidden_dim = 40;
    m.n_layers = 2;
    m.n_heads = 4;
    m.n_kv_heads = 2;
    m.vocab_size = 32;
    m.max_seq_len = 64;
    m.rms_eps = 1e-5f;
    m.rope_theta = 10000.0f;
    m.bos_id = 1;
    m.eos_id = 2;
    return m;
}

static fp_lora *lora_rank(const fp_model_config *m, int rank, uint64_t seed)
{
    fp_lora_config c;
    fp_lora_config_default(&c);
    c.rank = rank;
    c.alpha = 16.0f;                            /* scales differ: 16/r */
    c.targets = (1u << FP_T_Q) | (1u << FP_T_V) | (1u << FP_T_DOWN);
    fp_lora *lo = fp_lora_new(m, &c);
    assert_non_null(lo);
    fp_rng g;
    fp_rng_seed(&g, seed);
    for (size_t i = 0; i < lo->n_params; i++)
        lo->params[i] = fp_rng_float(&g) * 2.0f - 1.0f;
    return lo;
}

/* s B A of module (l, t), double. */
static double *lora_delta(const fp_lora *lo, int l, int t)
{
    int out = fp_lora_out_dim(&lo->model, t), in = fp_lora_in_dim(&lo->model, t);
    double *P = product(out, in, lo->cfg.rank, fp_lora_b(lo, l, t), fp_lora_a(lo, l, t));
    double s = fp_lora_scale(&lo->cfg);
    for (int i = 0; i < out * in; i++)
        P[i] *= s;
    return P;
}

/* Every module of got equals sum_k p_k s_k B_k A_k to tol. */
static void check_adapter_sum(const fp_lora *got, int K, fp_lora **w, const double *p, double tol)
{
    const fp_model_config *m = &got->model;
    for (int l = 0; l < m->n_layers; l++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            if (!(got->cfg.targets & (1u << t)))
                continue;
            size_t n = (size_t)fp_lora_out_dim(m, t) * fp_lora_in_dim(m, t);
            double *want = calloc(n, sizeof *want);
            for (int k = 0; k < K; k++) {
                double *d = lora_delta(w[k], l, t);
                for (size_t i = 0; i < n; i++)
                    want[i] += p[k] * d[i];
                free(d);
            }
            double *have = lora_delta(got, l, t);
            double e = rel_err(have, want, n);
            if (e >= tol)
                printf("# layer %d %s: rel err %.2e\n", l, fp_target_names[t], e);
            assert_true(e < tol);
            free(want);
            free(have);
        }
}

static void test_adapter_helpers(void **state)
{
    (void)state;
    fp_model_config mc = tiny_model();
    fp_lora *w[3] = {lora_rank(&mc, 4, 1), lora_rank(&mc, 8, 2), lora_rank(&mc, 2, 3)};
    double p[3] = {0.5, 0.3, 0.2};
    /* svd at rank 16 >= 14 = sum of ranks: exact, with per-adapter scales folded in */
    fp_lora *g = lora_rank(&mc, 16, 9);
    assert_int_equal(fp_lr_adapter_svd(g, 3, (const fp_lora *const *)w, p), 0);
    check_adapter_sum(g, 3, w, p, 1e-4);
    /* exact stack at rank 14 */
    fp_lora *st = lora_rank(&mc, 14, 10);
    assert_int_equal(fp_lr_adapter_stack(st, 3, (const fp_lora *const *)w, p), 0);
    check_adapter_sum(st, 3, w, p, 1e-5);
    /* HetLoRA: pad rank 4 into rank 16 keeps s B A; truncating back gives it again */
    fp_lora *big = lora_rank(&mc, 16, 11), *small = lora_rank(&mc, 4, 12);
    assert_int_equal(fp_lr_adapter_pad(big, w[0]), 0);
    check_adapter_sum(big, 1, w, (double[]){1.0}, 1e-5);
    assert_int_equal(fp_lr_adapter_truncate(small, big), 0);
    check_adapter_sum(small, 1, w, (double[]){1.0}, 1e-5);
    assert_int_equal(fp_lr_adapter_truncate(big, small), -1);
    /* stack of the wrong rank, another model, other targets: refused */
    assert_int_equal(fp_lr_adapter_stack(g, 3, (const fp_lora *const *)w, p), -1);
    assert_non_null(strstr(fp_error_get(), "rank"));
    fp_model_config mc2 = mc;
    mc2.n_layers = 3;
    fp_lora *other = lora_rank(&mc2, 4, 13);
    const fp_lora *mix[2] = {w[0], other};
    assert_int_equal(fp_lr_adapter_svd(g, 2, mix, p), -1);
    assert_non_null(strstr(fp_error_get(), "another model"));
    /* FLoRA fold: base weights += s B A per module */
    fp_model *model = fp_model_new(&mc);
    assert_non_null(model);
    fp_model_randomize(model, 5, 0.1f);
    fp_model *ref = fp_model_new(&mc);
    assert_non_null(ref);
    memcpy(ref->slab, model->slab, model->n_floats * sizeof(float));
    assert_int_equal(fp_lr_adapter_fold(model, st), 0);
    for (int l = 0; l < mc.n_layers; l++) {
        double *d = lora_delta(st, l, FP_T_V);
        size_t n = (size_t)fp_kv_dim(&mc) * mc.dim;
        for (size_t i = 0; i < n; i++)
            assert_true(fabs(model->w.wv[l * n + i] - (ref->w.wv[l * n + i] + d[i])) < 1e-4);
        free(d);
        d = lora_delta(st, l, FP_T_DOWN);
        n = (size_t)mc.dim * mc.hidden_dim;
        for (size_t i = 0; i < n; i++)
            assert_true(fabs(model->w.w_down[l * n + i] - (ref->w.w_down[l * n + i] + d[i])) <
                        1e-4);
        free(d);
    }
    size_t nk = (size_t)mc.n_layers * fp_kv_dim(&mc) * mc.dim;   /* k untargeted: untouched */
    assert_memory_equal(model->w.wk, ref->w.wk, nk * sizeof(float));
    fp_model_free(&model);
    fp_model_free(&ref);
    for (int k = 0; k < 3; k++)
        fp_lora_free(&w[k]);
    fp_lora_free(&g);
    fp_lora_free(&st);
    fp_lora_free(&big);
    fp_lora_free(&small);
    fp_lora_free(&other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_svd_exact_when_stacked_rank_fits),
        cmocka_unit_test(test_svd_best_rank_r_mixed_ranks),
        cmocka_unit_test(test_fedavg_differs_from_exact),
        cmocka_unit_test(test_stack_exact_and_fold),
        cmocka_unit_test(test_truncate_and_pad),
        cmocka_unit_test(test_adapter_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

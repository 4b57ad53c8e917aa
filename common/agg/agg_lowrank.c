/* agg_lowrank.c - exact and truncated-SVD aggregation of LoRA factor pairs,
 * HetLoRA truncation and padding (agg_lowrank.h, docs/aggregation.md). */
#include "agg_lowrank.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK in libopenblas (LP64, gfortran ABI: hidden char lengths at the end).
 * Column-major. */
void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work,
             const int *lwork, int *info);
void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda,
             const double *tau, double *work, const int *lwork, int *info);
void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a,
             const int *lda, double *s, double *u, const int *ldu, double *vt, const int *ldvt,
             double *work, const int *lwork, int *info, size_t jobu_len, size_t jobvt_len);

/* ---- checks ----------------------------------------------------------------- */

static int check_factors(const char *who, int out, int in, int K, const float *const *B,
                         const float *const *A, const int *r, const double *p, int *R_out)
{
    if (out < 1 || in < 1 || K < 1)
        return fp_error_set("%s: bad shape (out %d, in %d, %d workers)", who, out, in, K);
    long R = 0;
    for (int k = 0; k < K; k++) {
        if (!B[k] || !A[k] || r[k] < 1)
            return fp_error_set("%s: worker %d has no factors or rank %d < 1", who, k, r[k]);
        if (!isfinite(p[k]))
            return fp_error_set("%s: worker %d has a non-finite weight", who, k);
        R += r[k];
    }
    if (R > INT32_MAX / 2)
        return fp_error_set("%s: stacked rank %ld too large", who, R);
    *R_out = (int)R;
    return 0;
}

/* ---- stacking (FLoRA) ----------------------------------------------------------- */

int fp_lr_stack(int out, int in, int K, const float *const *B, const float *const *A,
                const int *r, const double *p, float *Bs, float *As)
{
    int R;
    if (check_factors("lowrank stack", out, in, K, B, A, r, p, &R) < 0)
        return -1;
    size_t off = 0;     /* first row of As / column of Bs for worker k */
    for (int k = 0; k < K; k++) {
        size_t rk = (size_t)r[k];
        float pk = (float)p[k];
        for (size_t o = 0; o < (size_t)out; o++)        /* Bs[o][off + c] = p_k B_k[o][c] */
            for (size_t c = 0; c < rk; c++)
                Bs[o * (size_t)R + off + c] = pk * B[k][o * rk + c];
        memcpy(As + off * (size_t)in, A[k], rk * (size_t)in * sizeof *As);
        off += rk;
    }
    return 0;
}

void fp_lr_fold(int out, int in, int R, float s, const float *Bs, const float *As, float *W)
{
    // W (out,in) += s * Bs (out,R) @ As (R,in)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, R, s, Bs, R, As, in, 1.0f,
                W, in);
}

/* ---- truncated SVD from the factors -------------------------------------------- */

/* Reduced QR of a (m x n, column-major, ld m), k = min(m, n):
 * Q [m][k] column-major (ld m), Rm [k][n] column-major (ld k), upper trapezoidal.
 * a is destroyed. */
static int qr_reduced(int m, int n, double *a, double *Q, double *Rm)
{
    int k = m < n ? m : n, lwork = -1, info = 0;
    double wq = 0, *tau = malloc((size_t)k * sizeof *tau), *work = NULL;
    if (!tau)
        goto oom;
    dgeqrf_(&m, &n, a, &m, tau, &wq, &lwork, &info);
    lwork = (int)wq;
    int lw2 = -1;
    dorgqr_(&m, &k, &k, a, &m, tau, &wq, &lw2, &info);
    if ((int)wq > lwork)
        lwork = (int)wq;
    if (lwork < 1)
        lwork = 1;
    work = malloc((size_t)lwork * sizeof *work);
    if (!work)
        goto oom;
    dgeqrf_(&m, &n, a, &m, tau, work, &lwork, &info);
    if (info != 0)
        goto lapack;
    for (int j = 0; j < n; j++)         /* R = upper triangle of the first k rows */
        for (int i = 0; i < k; i++)
            Rm[i + (size_t)j * k] = i <= j ? a[i + (size_t)j * m] : 0.0;
    dorgqr_(&m, &k, &k, a, &m, tau, work, &lwork, &info);
    if (info != 0)
        goto lapack;
    memcpy(Q, a, (size_t)m * k * sizeof *Q);
    free(tau);
    free(work);
    return 0;
lapack:
    free(tau);
    free(work);
    return fp_error_set("lowrank svd: LAPACK QR failed (info %d) on a %dx%d matrix", info, m, n);
oom:
    free(tau);
    free(work);
    return fp_error_set("lowrank svd: out of memory for a %dx%d QR", m, n);
}

/* Thin SVD of M (kb x ka, column-major, destroyed): U [kb][mn], S [mn], VT [mn][ka]. */
static int svd_thin(int kb, int ka, double *M, double *U, double *S, double *VT)
{
    int mn = kb < ka ? kb : ka, lwork = -1, info = 0;
    double wq = 0;
    dgesvd_("S", "S", &kb, &ka, M, &kb, S, U, &kb, VT, &mn, &wq, &lwork, &info, 1, 1);
    lwork = (int)wq > 1 ? (int)wq : 1;
    double *work = malloc((size_t)lwork * sizeof *work);
    if (!work)
        return fp_error_set("lowrank svd: out of memory for the SVD workspace");
    dgesvd_("S", "S", &kb, &ka, M, &kb, S, U, &kb, VT, &mn, work, &lwork, &info, 1, 1);
    free(work);
    if (info != 0)
        return fp_error_set("lowrank svd: LAPACK dgesvd did not converge (info %d) on the "
                            "%dx%d core", info, kb, ka);
    return 0;
}

int fp_lr_svd(int out, int in, int K, const float *const *B, const float *const *A,
              const int *r, const double *p, int r_new, float *B_new, float *A_new, float *S)
{
    int R, rc = -1;
    if (check_factors("lowrank svd", out, in, K, B, A, r, p, &R) < 0)
        return -1;
    if (r_new < 1)
        return fp_error_set("lowrank svd: target rank %d < 1", r_new);
    int kb = out < R ? out : R, ka = in < R ? in : R, mn = kb < ka ? kb : ka;
    size_t so = (size_t)out, si = (size_t)in, sR = (size_t)R;
    double *bs = malloc(so * sR * sizeof *bs);      /* Bs (out,R) col-major, then Qb scratch */
    double *at = malloc(si * sR * sizeof *at);      /* As^T (in,R) col-major */
    double *Qb = malloc(so * kb * sizeof *Qb), *Rb = malloc((size_t)kb * sR * sizeof *Rb);
    double *Qa = malloc(si * ka * sizeof *Qa), *Ra = malloc((size_t)ka * sR * sizeof *Ra);
    double *M = malloc((size_t)kb * ka * sizeof *M);
    double *U = malloc((size_t)kb * mn * sizeof *U), *Sd = malloc((size_t)mn * sizeof *Sd);
    double *VT = malloc((size_t)mn * ka * sizeof *VT);
    double *QU = malloc(so * mn * sizeof *QU), *QV = malloc(si * mn * sizeof *QV);
    if (!bs || !at || !Qb || !Rb || !Qa || !Ra || !M || !U || !Sd || !VT || !QU || !QV) {
        fp_error_set("lowrank svd: out of memory (out %d, in %d, stacked rank %d)", out, in, R);
        goto done;
    }
    size_t off = 0;
    for (int k = 0; k < K; k++) {
        size_t rk = (size_t)r[k];
        for (size_t c = 0; c < rk; c++) {
            for (size_t o = 0; o < so; o++)     // Bs[:, off+c] = p_k B_k[:, c]
                bs[o + (off + c) * so] = p[k] * (double)B[k][o * rk + c];
            for (size_t i = 0; i < si; i++)     // As^T[:, off+c] = A_k[c, :]
                at[i + (off + c) * si] = (double)A[k][c * si + i];
        }
        off += rk;
    }
    // Bs = Qb Rb, As^T = Qa Ra  =>  Bs As = Qb (Rb Ra^T) Qa^T = Qb M Qa^T
    if (qr_reduced(out, R, bs, Qb, Rb) < 0 || qr_reduced(in, R, at, Qa, Ra) < 0)
        goto done;
    // M (kb,ka) = Rb (kb,R) @ Ra^T (R,ka)
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, kb, ka, R, 1.0, Rb, kb, Ra, ka, 0.0, M,
                kb);
    if (svd_thin(kb, ka, M, U, Sd, VT) < 0)
        goto done;
    // QU (out,mn) = Qb (out,kb) @ U (kb,mn);  QV (in,mn) = Qa (in,ka) @ VT^T (ka,mn)
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, out, mn, kb, 1.0, Qb, out, U, kb, 0.0,
                QU, out);
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, in, mn, ka, 1.0, Qa, in, VT, mn, 0.0, QV,
                in);
    for (int j = 0; j < r_new; j++) {
        double sj = j < mn ? Sd[j] : 0.0, h = sqrt(sj);
        if (S)
            S[j] = (float)sj;
        for (size_t o = 0; o < so; o++)         // B_new[o][j] = QU[o][j] sqrt(s_j)
            B_new[o * (size_t)r_new + j] = j < mn ? (float)(QU[o + (size_t)j * so] * h) : 0.0f;
        for (size_t i = 0; i < si; i++)         // A_new[j][i] = QV[i][j] sqrt(s_j)
            A_new[(size_t)j * si + i] = j < mn ? (float)(QV[i + (size_t)j * si] * h) : 0.0f;
    }
    rc = 0;
done:
    free(bs); free(at); free(Qb); free(Rb); free(Qa); free(Ra);
    free(M); free(U); free(Sd); free(VT); free(QU); free(QV);
    return rc;
}

/* ---- HetLoRA ------------------------------------------------------------------ */

int fp_lr_truncate(int out, int in, int r, const float *B, const float *A, int r_small,
                   float *B_small, float *A_small)
{
    if (out < 1 || in < 1 || r_small < 1 || r_small > r)
        return fp_error_set("lowrank truncate: cannot take rank %d of a rank-%d pair "
                            "(out %d, in %d)", r_small, r, out, in);
    for (size_t o = 0; o < (size_t)out; o++)
        memcpy(B_small + o * (size_t)r_small, B + o * (size_t)r, (size_t)r_small * sizeof *B);
    memcpy(A_small, A, (size_t)r_small * (size_t)in * sizeof *A);
    return 0;
}

int fp_lr_pad(int out, int in, int r_small, const float *B_small, const float *A_small, int r,
              float *B, float *A)
{
    if (out < 1 || in < 1 || r_small < 1 || r_small > r)
        return fp_error_set("lowrank pad: cannot pad rank %d to rank %d (out %d, in %d)",
                            r_small, r, out, in);
    for (size_t o = 0; o < (size_t)out; o++) {
        memcpy(B + o * (size_t)r, B_small + o * (size_t)r_small, (size_t)r_small * sizeof *B);
        memset(B + o * (size_t)r + r_small, 0, (size_t)(r - r_small) * sizeof *B);
    }
    memcpy(A, A_small, (size_t)r_small * (size_t)in * sizeof *A);
    memset(A + (size_t)r_small * in, 0, (size_t)(r - r_small) * (size_t)in * sizeof *A);
    return 0;
}

/* ---- whole adapters ------------------------------------------------------------ */

static int same_shape(const char *who, const fp_lora *a, const fp_lora *b, int k)
{
    const fp_model_config *x = &a->model, *y = &b->model;
    if (x->n_layers != y->n_layers || x->dim != y->dim || x->hidden_dim != y->hidden_dim ||
        x->n_heads != y->n_heads || x->n_kv_heads != y->n_kv_heads)
        return fp_error_set("%s: adapter %d is for another model (layers %d dim %d hidden %d "
                            "heads %d/%d vs layers %d dim %d hidden %d heads %d/%d)", who, k,
                            y->n_layers, y->dim, y->hidden_dim, y->n_heads, y->n_kv_heads,
                            x->n_layers, x->dim, x->hidden_dim, x->n_heads, x->n_kv_heads);
    if (a->cfg.targets != b->cfg.targets)
        return fp_error_set("%s: adapter %d targets modules 0x%x, expected 0x%x", who, k,
                            b->cfg.targets, a->cfg.targets);
    return 0;
}

/* mode 0: svd into dst at dst's rank; mode 1: exact stack into dst. */
static int adapter_aggregate(const char *who, int mode, fp_lora *dst, int K,
                             const fp_lora *const *w, const double *p)
{
    if (K < 1)
        return fp_error_set("%s: no adapters", who);
    long R = 0;
    for (int k = 0; k < K; k++) {
        if (same_shape(who, dst, w[k], k) < 0)
            return -1;
        R += w[k]->cfg.rank;
    }
    if (mode == 1 && R != dst->cfg.rank)
        return fp_error_set("%s: stacked adapter has rank %d, the ranks sum to %ld", who,
                            dst->cfg.rank, R);
    float sg = fp_lora_scale(&dst->cfg);
    if (!(sg != 0.0f) || !isfinite(sg))
        return fp_error_set("%s: global LoRA scale %g unusable (alpha 0?)", who, (double)sg);
    const float **B = malloc((size_t)K * sizeof *B), **A = malloc((size_t)K * sizeof *A);
    int *r = malloc((size_t)K * sizeof *r);
    double *q = malloc((size_t)K * sizeof *q);
    int rc = -1;
    if (!B || !A || !r || !q) {
        fp_error_set("%s: out of memory", who);
        goto done;
    }
    for (int k = 0; k < K; k++) {               // q_k = p_k s_k / s_g
        r[k] = w[k]->cfg.rank;
        q[k] = p[k] * (double)fp_lora_scale(&w[k]->cfg) / (double)sg;
    }
    const fp_model_config *m = &dst->model;
    for (int l = 0; l < m->n_layers; l++) {
        for (int t = 0; t < FP_T_COUNT; t++) {
            if (!(dst->cfg.targets & (1u << t)))
                continue;
            for (int k = 0; k < K; k++) {
                B[k] = fp_lora_b(w[k], l, t);
                A[k] = fp_lora_a(w[k], l, t);
            }
            int out = fp_lora_out_dim(m, t), in = fp_lora_in_dim(m, t);
            float *Bd = fp_lora_b(dst, l, t), *Ad = fp_lora_a(dst, l, t);
            int e = mode == 0
                        ? fp_lr_svd(out, in, K, B, A, r, q, dst->cfg.rank, Bd, Ad, NULL)
                        : fp_lr_stack(out, in, K, B, A, r, q, Bd, Ad);
            if (e < 0) {
                fp_error_prefix("%s: layer %d %s: ", who, l, fp_target_names[t]);
                goto done;
            }
        }
    }
    rc = 0;
done:
    free(B);
    free(A);
    free(r);
    free(q);
    return rc;
}

int fp_lr_adapter_svd(fp_lora *global, int K, const fp_lora *const *w, const double *p)
{
    return adapter_aggregate("lowrank svd", 0, global, K, w, p);
}

int fp_lr_adapter_stack(fp_lora *stacked, int K, const fp_lora *const *w, const double *p)
{
    return adapter_aggregate("lowrank stack", 1, stacked, K, w, p);
}

static float *base_weight(fp_model *m, int l, int t)
{
    const fp_model_config *c = &m->cfg;
    size_t per = (size_t)fp_lora_out_dim(c, t) * (size_t)fp_lora_in_dim(c, t);
    float *w[FP_T_COUNT] = {m->w.wq, m->w.wk, m->w.wv, m->w.wo, m->w.w_gate, m->w.w_up,
                            m->w.w_down};
    return w[t] ? w[t] + (size_t)l * per : NULL;
}

int fp_lr_adapter_fold(fp_model *m, const fp_lora *a)
{
    if (m->base_dtype != FP_BASE_F32)
        return fp_error_set("flora folds merged updates into the base weights, which this "
                            "process holds as %s; run flora workers with [model] dtype = f32",
                            fp_base_dtype_name(m->base_dtype));
    if (fp_lora_check_model(a, &m->cfg) < 0)
        return -1;
    if (fp_model_own(m) != 0)   /* a mapped base is read-only: fold into a private copy */
        return fp_error_prefix("lowrank fold: ");
    float s = fp_lora_scale(&a->cfg);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        for (int t = 0; t < FP_T_COUNT; t++) {
            if (!(a->cfg.targets & (1u << t)))
                continue;
            float *W = base_weight(m, l, t);
            if (!W)
                return fp_error_set("lowrank fold: the model has no %s weights",
                                    fp_target_names[t]);
            fp_lr_fold(fp_lora_out_dim(&m->cfg, t), fp_lora_in_dim(&m->cfg, t), a->cfg.rank, s,
                       fp_lora_b(a, l, t), fp_lora_a(a, l, t), W);
        }
    }
    return 0;
}

/* dst <- src truncated (rank dst <= rank src) or padded (rank dst >= rank src),
 * both factors times sqrt(s_src / s_dst). */
static int adapter_resize(const char *who, fp_lora *dst, const fp_lora *src)
{
    if (same_shape(who, src, dst, 0) < 0)
        return -1;
    double ss = fp_lora_scale(&src->cfg), sd = fp_lora_scale(&dst->cfg);
    if (!(ss / sd > 0) || !isfinite(ss / sd))
        return fp_error_set("%s: LoRA scales %g and %g are not of one sign (alpha?)", who, ss,
                            sd);
    float c = (float)sqrt(ss / sd);
    const fp_model_config *m = &src->model;
    for (int l = 0; l < m->n_layers; l++) {
        for (int t = 0; t < FP_T_COUNT; t++) {
            if (!(src->cfg.targets & (1u << t)))
                continue;
            int out = fp_lora_out_dim(m, t), in = fp_lora_in_dim(m, t);
            int e = dst->cfg.rank <= src->cfg.rank
                        ? fp_lr_truncate(out, in, src->cfg.rank, fp_lora_b(src, l, t),
                                         fp_lora_a(src, l, t), dst->cfg.rank,
                                         fp_lora_b(dst, l, t), fp_lora_a(dst, l, t))
                        : fp_lr_pad(out, in, src->cfg.rank, fp_lora_b(src, l, t),
                                    fp_lora_a(src, l, t), dst->cfg.rank, fp_lora_b(dst, l, t),
                                    fp_lora_a(dst, l, t));
            if (e < 0)
                return fp_error_prefix("%s: layer %d %s: ", who, l, fp_target_names[t]);
        }
    }
    for (size_t i = 0; i < dst->n_params; i++)
        dst->params[i] *= c;
    return 0;
}

int fp_lr_adapter_truncate(fp_lora *small, const fp_lora *global)
{
    if (small->cfg.rank > global->cfg.rank)
        return fp_error_set("lowrank truncate: rank %d is above the global rank %d",
                            small->cfg.rank, global->cfg.rank);
    return adapter_resize("lowrank truncate", small, global);
}

int fp_lr_adapter_pad(fp_lora *big, const fp_lora *small)
{
    if (big->cfg.rank < small->cfg.rank)
        return fp_error_set("lowrank pad: rank %d is below the update's rank %d",
                            big->cfg.rank, small->cfg.rank);
    return adapter_resize("lowrank pad", big, small);
}

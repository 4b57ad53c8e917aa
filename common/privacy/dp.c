/* dp.c - clipping, CSPRNG Gaussian noise, RDP accountant; see dp.h. */
#include "dp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

static const double orders[FP_DP_N_ORDERS] = {
    2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
    48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 72, 80, 96, 128, 256,
};

const double *fp_dp_orders(void)
{
    return orders;
}

double fp_dp_l2_norm(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * (double)x[i];
    return sqrt(s);
}

double fp_dp_clip_l2(float *x, size_t n, double C)
{
    if (!(C > 0.0) || !isfinite(C)) {
        fp_error_set("dp: clip norm must be finite and > 0, got %g", C);
        return -1.0;
    }
    double norm = fp_dp_l2_norm(x, n);
    if (!isfinite(norm)) {
        fp_error_set("dp: update has a non-finite value");
        return -1.0;
    }
    if (norm <= C)
        return 1.0;
    double f = C / norm;
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((double)x[i] * f);
    return f;
}

struct fp_dp_noise {
    uint8_t *key;                   /* 32 bytes, sodium_malloc */
    uint64_t block;                 /* next ChaCha20 block */
    uint8_t buf[64];
    unsigned pos;                   /* bytes of buf used */
    double spare;
    int has_spare;
};

fp_dp_noise *fp_dp_noise_new(const uint8_t *seed)
{
    if (sodium_init() < 0) {
        fp_error_set("libsodium failed to initialise");
        return NULL;
    }
    fp_dp_noise *g = calloc(1, sizeof *g);
    if (!g || !(g->key = sodium_malloc(crypto_stream_chacha20_KEYBYTES))) {
        free(g);
        fp_error_set("out of memory for a noise generator");
        return NULL;
    }
    if (seed)
        memcpy(g->key, seed, FP_DP_SEED_BYTES);
    else
        randombytes_buf(g->key, FP_DP_SEED_BYTES);
    g->pos = sizeof g->buf;
    return g;
}

void fp_dp_noise_destroy(fp_dp_noise **g_p)
{
    if (!g_p || !*g_p)
        return;
    sodium_free((*g_p)->key);
    sodium_memzero(*g_p, sizeof **g_p);
    free(*g_p);
    *g_p = NULL;
}

static uint64_t next_u64(fp_dp_noise *g)
{
    static const uint8_t nonce[crypto_stream_chacha20_NONCEBYTES] = {0};
    if (g->pos + 8 > sizeof g->buf) {
        memset(g->buf, 0, sizeof g->buf);
        crypto_stream_chacha20_xor_ic(g->buf, g->buf, sizeof g->buf, nonce, g->block++, g->key);
        g->pos = 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)g->buf[g->pos + i] << (8 * i);
    g->pos += 8;
    return v;
}

double fp_dp_normal(fp_dp_noise *g)
{
    if (g->has_spare) {
        g->has_spare = 0;
        return g->spare;
    }
    /* u1 in (0, 1], u2 in [0, 1), 53-bit resolution. */
    double u1 = (double)((next_u64(g) >> 11) + 1) * 0x1.0p-53;
    double u2 = (double)(next_u64(g) >> 11) * 0x1.0p-53;
    double r = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
    g->spare = r * sin(th);
    g->has_spare = 1;
    return r * cos(th);
}

int fp_dp_add_noise(fp_dp_noise *g, float *x, size_t n, double sigma, double C)
{
    if (!g || !(sigma >= 0.0) || !isfinite(sigma) || !(C > 0.0) || !isfinite(C))
        return fp_error_set("dp: noise needs sigma >= 0 and C > 0 (got %g, %g)", sigma, C);
    double sd = sigma * C;
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((double)x[i] + sd * fp_dp_normal(g));
    return 0;
}

int fp_dp_add_noise_distributed(fp_dp_noise *g, float *x, size_t n, double sigma, double C,
                                size_t n_workers)
{
    if (n_workers == 0)
        return fp_error_set("dp: distributed noise needs at least one worker");
    return fp_dp_add_noise(g, x, n, sigma / sqrt((double)n_workers), C);
}

static double log_add(double a, double b)
{
    if (a == -INFINITY)
        return b;
    if (b == -INFINITY)
        return a;
    double m = a > b ? a : b;
    return m + log1p(exp(-fabs(a - b)));
}

int fp_dp_rdp_step(double q, double sigma, double alpha, double *rdp_out)
{
    *rdp_out = INFINITY;
    if (!(q >= 0.0 && q <= 1.0) || !(sigma >= 0.0) || !isfinite(sigma))
        return fp_error_set("dp: need q in [0,1] and sigma >= 0 (got q=%g sigma=%g)", q, sigma);
    if (!(alpha >= 2.0) || alpha != floor(alpha) || alpha > 1e6)
        return fp_error_set("dp: RDP order %g is not an integer >= 2", alpha);
    if (q == 0.0) {
        *rdp_out = 0.0;
        return 0;
    }
    if (sigma == 0.0)
        return 0;                                 /* +inf: no privacy */
    if (q == 1.0) {
        *rdp_out = alpha / (2.0 * sigma * sigma);
        return 0;
    }
    /* log A_alpha = logsumexp_i [log C(a,i) + i log q + (a-i) log(1-q) + (i^2-i)/(2 s^2)] */
    double log_a = -INFINITY, lq = log(q), l1q = log1p(-q), lga = lgamma(alpha + 1.0);
    long a = (long)alpha;
    for (long i = 0; i <= a; i++) {
        double di = (double)i;
        double t = lga - lgamma(di + 1.0) - lgamma(alpha - di + 1.0) + di * lq +
                   (alpha - di) * l1q + (di * di - di) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, t);
    }
    *rdp_out = log_a / (alpha - 1.0);
    return 0;
}

int fp_dp_rdp_to_eps(const double *ords, const double *rdp, size_t n, double delta,
                     double *eps_out, double *order_out)
{
    double best = INFINITY, best_order = 0.0;
    *eps_out = INFINITY;
    if (order_out)
        *order_out = 0.0;
    if (!(delta > 0.0 && delta < 1.0))
        return fp_error_set("dp: delta must be in (0, 1), got %g", delta);
    for (size_t i = 0; i < n; i++) {
        double a = ords[i], r = rdp[i], e;
        if (!(a > 1.0) || !(r >= 0.0))
            return fp_error_set("dp: bad RDP value %g at order %g", r, a);
        if (delta * delta + expm1(-r) > 0.0)
            e = 0.0;                              /* KL bound already gives delta */
        else if (a > 1.01)
            e = r + log1p(-1.0 / a) - log(delta * a) / (a - 1.0);
        else
            e = INFINITY;
        if (e < best)
            best = e, best_order = a;
    }
    *eps_out = best > 0.0 ? best : 0.0;
    if (order_out)
        *order_out = best_order;
    return 0;
}

void fp_dp_accountant_init(fp_dp_accountant *a)
{
    memset(a, 0, sizeof *a);
}

int fp_dp_accountant_add(fp_dp_accountant *a, double q, double sigma, uint64_t steps)
{
    double step[FP_DP_N_ORDERS];
    for (size_t i = 0; i < FP_DP_N_ORDERS; i++)
        if (fp_dp_rdp_step(q, sigma, orders[i], &step[i]) < 0)
            return -1;
    if (steps == 0)
        return 0;
    for (size_t i = 0; i < FP_DP_N_ORDERS; i++)
        a->rdp[i] += step[i] * (double)steps;
    a->steps += steps;
    return 0;
}

int fp_dp_accountant_epsilon(const fp_dp_accountant *a, double delta, double *eps_out,
                             double *order_out)
{
    return fp_dp_rdp_to_eps(orders, a->rdp, FP_DP_N_ORDERS, delta, eps_out, order_out);
}

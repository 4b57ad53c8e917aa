/* dp.h - differential privacy for updates: L2 clipping, Gaussian noise from a
 * CSPRNG, and an RDP accountant for the Poisson-subsampled Gaussian mechanism.
 *
 * Mechanism. Each worker's update x is clipped to L2 norm C (fp_dp_clip_l2) and
 * Gaussian noise N(0, (sigma*C)^2) is added per coordinate. With secure aggregation
 * the noise is split: each of n workers adds N(0, sigma^2 C^2 / n), so the SUM carries
 * N(0, sigma^2 C^2) and no single party sees a less-noised sum
 * (fp_dp_add_noise_distributed; if workers drop out the sum has less noise than
 * planned: callers should over-provision n or account for the survivors).
 * sigma is the noise multiplier; sensitivity of the sum to one worker is C
 * (add/remove one worker: user-level DP when a worker is one user).
 *
 * Noise generator. A 32-byte key from randombytes_buf (or a given seed, for tests)
 * keys a ChaCha20 stream (crypto_stream_chacha20, nonce 0, block counter advancing);
 * 53-bit uniforms from it feed Box-Muller (both outputs used). The key lives in
 * sodium_malloc memory. Known limitation: like Opacus and TF-Privacy this samples in
 * floating point, which is not an exact discrete Gaussian (see Mironov 2012 on
 * floating-point attacks); acceptable for the guarantees reported here.
 *
 * Accountant (Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the
 * Sampled Gaussian Mechanism", Sec. 3.3): for INTEGER orders alpha the RDP of one
 * step with sampling rate q and noise multiplier sigma is
 *   rdp(alpha) = 1/(alpha-1) * log sum_{i=0..alpha} C(alpha,i) (1-q)^(alpha-i) q^i
 *                                    * exp((i^2 - i) / (2 sigma^2))
 * computed exactly in log space (lgamma binomials, log-sum-exp). Only integer orders
 * are used: FP_DP_ORDERS = 2..64, 72, 80, 96, 128, 256. Fractional orders (1.25..)
 * would give a slightly smaller epsilon when the optimum lies below 2 (large
 * epsilon); with integer orders the reported epsilon is a valid, slightly looser
 * upper bound. Composition: RDP adds over steps (and over heterogeneous steps).
 * Conversion to (epsilon, delta): Balle et al. 2020 ("Hypothesis testing
 * interpretations and Renyi DP", Thm 21), as in Google dp_accounting /
 * TF-Privacy compute_epsilon:
 *   eps(alpha) = rdp - (log(delta) + log(alpha)) / (alpha - 1) + log((alpha-1)/alpha)
 * minimised over orders (0 when delta^2 + expm1(-rdp) > 0, clamped at 0).
 */
#ifndef FP_DP_H
#define FP_DP_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define FP_DP_N_ORDERS 68
#define FP_DP_SEED_BYTES 32

/* Scales x (n floats) in place to L2 norm at most C (> 0). Returns the factor applied,
 * min(1, C / ||x||) (1 for a zero vector), or -1.0 (fp_error) when C is not > 0 or x
 * holds a non-finite value (x unchanged). Norm is accumulated in double. */
double fp_dp_clip_l2(float *x, size_t n, double C);

/* L2 norm of x (double accumulation). */
double fp_dp_l2_norm(const float *x, size_t n);

typedef struct fp_dp_noise fp_dp_noise;

/* A Gaussian generator. seed NULL: keyed from randombytes_buf (production);
 * otherwise the FP_DP_SEED_BYTES seed (reproducible; tests only). Caller destroys.
 * NULL (fp_error) when out of memory. */
fp_dp_noise *fp_dp_noise_new(const uint8_t *seed) FP_WUR;
/* Wipes and frees; NULL-safe; sets *g_p = NULL. */
void fp_dp_noise_destroy(fp_dp_noise **g_p);
/* One standard normal sample. */
double fp_dp_normal(fp_dp_noise *g);
/* x[i] += N(0, (sigma*C)^2), i = 0..n-1. -1 (fp_error) on sigma < 0 or C <= 0. */
int fp_dp_add_noise(fp_dp_noise *g, float *x, size_t n, double sigma, double C) FP_WUR;
/* Distributed mode: x[i] += N(0, sigma^2 C^2 / n_workers), so the sum of n_workers
 * such updates carries N(0, (sigma*C)^2). -1 on bad arguments or n_workers == 0. */
int fp_dp_add_noise_distributed(fp_dp_noise *g, float *x, size_t n, double sigma, double C,
                                size_t n_workers) FP_WUR;

/* The orders the accountant tracks (FP_DP_N_ORDERS integers). */
const double *fp_dp_orders(void);

/* RDP at one integer order alpha >= 2 of ONE step of the sampled Gaussian mechanism
 * (sampling rate q in [0,1], noise multiplier sigma >= 0). q = 0 gives 0; sigma = 0
 * (with q > 0) gives +inf. -1 (fp_error) on a non-integer order or a bad argument. */
int fp_dp_rdp_step(double q, double sigma, double alpha, double *rdp_out) FP_WUR;

/* Converts RDP values at orders (each > 1) to the smallest epsilon at delta in (0,1);
 * *order_out gets the order that achieved it (may be NULL). */
int fp_dp_rdp_to_eps(const double *orders, const double *rdp, size_t n, double delta,
                     double *eps_out, double *order_out) FP_WUR;

/* Running privacy spend over rounds. Zero-initialise (or fp_dp_accountant_init). */
typedef struct {
    double rdp[FP_DP_N_ORDERS];     /* accumulated, at fp_dp_orders() */
    uint64_t steps;
} fp_dp_accountant;

void fp_dp_accountant_init(fp_dp_accountant *a);
/* Composes `steps` steps with sampling rate q and noise multiplier sigma.
 * -1 (fp_error) on bad q/sigma (a is then unchanged). */
int fp_dp_accountant_add(fp_dp_accountant *a, double q, double sigma, uint64_t steps) FP_WUR;
/* Epsilon spent so far at delta (and the best order, may be NULL). */
int fp_dp_accountant_epsilon(const fp_dp_accountant *a, double delta, double *eps_out,
                             double *order_out) FP_WUR;

#endif

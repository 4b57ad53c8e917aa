/* secagg_graph.c - the SecAgg+ Harary graph and its parameters (secagg_graph.h). */
#include "secagg_graph.h"

#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct fp_sagraph {
    size_t n;
    unsigned k;
    uint32_t *pos;   /* member -> position on the cycle */
    uint32_t *at;    /* position -> member */
};

/* ---------------------------------------------------------------- parameters */

static double log_choose(double n, double r)
{
    return lgamma(n + 1) - lgamma(r + 1) - lgamma(n - r + 1);
}

/* log P[X >= t], X ~ Hypergeometric(population N, successes K, draws k). */
static double log_hyper_tail(double N, double K, unsigned k, unsigned t)
{
    double lt = -INFINITY, base = log_choose(N, k);
    for (unsigned x = t; x <= k; x++) {
        if (x > K || k - x > N - K)
            continue;
        double l = log_choose(K, x) + log_choose(N - K, k - x) - base;
        lt = lt > l ? lt + log1p(exp(l - lt)) : l + log1p(exp(lt - l));
    }
    return lt;
}

/* log P[X < t], X ~ Binomial(k, q) with q the chance a neighbour is usable. */
static double log_binom_below(unsigned k, double q, unsigned t)
{
    double lt = -INFINITY;
    for (unsigned x = 0; x < t && x <= k; x++) {
        double l = log_choose(k, x) + x * log(q) + (k - x) * log1p(-q);
        lt = lt > l ? lt + log1p(exp(l - lt)) : l + log1p(exp(lt - l));
    }
    return lt;
}

int fp_sagraph_params(size_t n, double corrupt, double dropout, unsigned sigma, unsigned eta,
                      unsigned *k_out, unsigned *t_out)
{
    *k_out = *t_out = 0;
    if (n < 2 || n > FP_SAGRAPH_MAX_N)
        return fp_error_set("secagg graph: %zu members; expected 2..%u", n, FP_SAGRAPH_MAX_N);
    if (!(corrupt >= 0 && corrupt < 0.5) || !(dropout >= 0 && dropout < 0.5) ||
        corrupt + dropout >= 0.5)
        return fp_error_set("secagg graph: corrupt %g + dropout %g must each be in [0, 0.5) "
                            "and sum below 0.5", corrupt, dropout);
    double ln2 = log(2.0), budget_s = -(double)sigma * ln2 - log((double)n);
    double budget_c = -(double)eta * ln2 - log((double)n);
    double N = (double)(n - 1), K = floor(corrupt * (double)n);
    double q = 1.0 - corrupt - dropout;
    for (unsigned k = 2; k < n - 1; k += 2) {
        /* the smallest t > k/2 that is safe; then check it is also live */
        for (unsigned t = k / 2 + 1; t <= k; t++) {
            if (log_hyper_tail(N, K, k, t) > budget_s)
                continue;
            if (log_binom_below(k, q, t) <= budget_c) {
                *k_out = k;
                *t_out = t;
                return 0;
            }
            break; /* larger t is only less live */
        }
    }
    /* complete graph: SecAgg's own rule, a majority of the n-1 others plus one */
    *k_out = (unsigned)(n - 1);
    *t_out = (unsigned)((n - 1) / 2 + 1);
    return 0;
}

double fp_sagraph_log2_risk(size_t n, double corrupt, unsigned k, unsigned t)
{
    if (n < 2 || k > n - 1)
        return 0.0;
    double K = floor(corrupt * (double)n);
    return log_hyper_tail((double)(n - 1), K, k, t) / log(2.0);
}

double fp_sagraph_phase_s(size_t n, double deadline_s)
{
    double floor_s = 2.0 + 0.02 * (double)n, quarter = 0.25 * deadline_s;
    return quarter > floor_s ? quarter : floor_s;
}

unsigned fp_sagraph_degree_for(size_t n1, unsigned planned)
{
    if (n1 < 2)
        return 0;
    if (planned > 0 && planned % 2 == 0 && planned + 2 <= n1)
        return planned;
    return (unsigned)(n1 - 1);
}

void fp_sagraph_seed(uint8_t seed_out[FP_SAGRAPH_SEED_BYTES], const char *run_id,
                     uint64_t round, const uint8_t nonce[32], const char *const *members,
                     size_t n)
{
    static const char tag[] = "fedpeft/secagg/graph-seed/v1";
    crypto_generichash_state st;
    uint8_t len, le[8];
    crypto_generichash_init(&st, NULL, 0, FP_SAGRAPH_SEED_BYTES);
    crypto_generichash_update(&st, (const uint8_t *)tag, sizeof tag - 1);
    len = (uint8_t)strnlen(run_id, 255);
    crypto_generichash_update(&st, &len, 1);
    crypto_generichash_update(&st, (const uint8_t *)run_id, len);
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(round >> (8 * i));
    crypto_generichash_update(&st, le, 8);
    crypto_generichash_update(&st, nonce, 32);
    for (size_t i = 0; i < n; i++) {
        len = (uint8_t)strnlen(members[i], 255);
        crypto_generichash_update(&st, &len, 1);
        crypto_generichash_update(&st, (const uint8_t *)members[i], len);
    }
    crypto_generichash_final(&st, seed_out, FP_SAGRAPH_SEED_BYTES);
}

/* ---------------------------------------------------------------- the graph */

/* Uniform in [0, bound) from a ChaCha20 stream, by rejection (no modulo bias). */
static uint32_t draw_below(uint32_t bound, const uint8_t key[32], uint64_t *ctr)
{
    uint32_t lim = UINT32_MAX - UINT32_MAX % bound;
    static const uint8_t nonce[crypto_stream_chacha20_ietf_NONCEBYTES] = {'g', 'r', 'a', 'p', 'h'};
    for (;;) {
        uint8_t w[64];
        /* one block per draw: block counter = *ctr */
        crypto_stream_chacha20_ietf_xor_ic(w, (const uint8_t[64]){0}, 64, nonce,
                                           (uint32_t)(*ctr)++, key);
        uint32_t v = (uint32_t)w[0] | (uint32_t)w[1] << 8 | (uint32_t)w[2] << 16 |
                     (uint32_t)w[3] << 24;
        if (v < lim)
            return v % bound;
    }
}

fp_sagraph *fp_sagraph_new(size_t n, unsigned k, const uint8_t seed[FP_SAGRAPH_SEED_BYTES])
{
    if (n < 2 || n > FP_SAGRAPH_MAX_N || k < 1 || k > n - 1 || (k != n - 1 && k % 2 != 0)) {
        fp_error_set("secagg graph: degree %u with %zu members; expected an even degree "
                     "2..n-2, or n-1 (complete)", k, n);
        return NULL;
    }
    if (sodium_init() < 0) {
        fp_error_set("libsodium failed to initialise");
        return NULL;
    }
    fp_sagraph *g = calloc(1, sizeof *g);
    if (!g || !(g->pos = malloc(n * sizeof *g->pos)) || !(g->at = malloc(n * sizeof *g->at))) {
        fp_sagraph_destroy(&g);
        fp_error_set("secagg graph: out of memory for %zu members", n);
        return NULL;
    }
    g->n = n;
    g->k = k;
    uint8_t key[32];
    crypto_generichash(key, sizeof key, seed, FP_SAGRAPH_SEED_BYTES,
                       (const uint8_t *)"fedpeft/secagg/graph/v1", 23);
    for (size_t i = 0; i < n; i++)
        g->at[i] = (uint32_t)i;
    uint64_t ctr = 0;
    for (size_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        uint32_t j = draw_below((uint32_t)(i + 1), key, &ctr);
        uint32_t tmp = g->at[i];
        g->at[i] = g->at[j];
        g->at[j] = tmp;
    }
    for (size_t p = 0; p < n; p++)
        g->pos[g->at[p]] = (uint32_t)p;
    return g;
}

void fp_sagraph_destroy(fp_sagraph **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->pos);
    free((*self_p)->at);
    free(*self_p);
    *self_p = NULL;
}

size_t fp_sagraph_n(const fp_sagraph *self) { return self->n; }
unsigned fp_sagraph_degree(const fp_sagraph *self) { return self->k; }

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

unsigned fp_sagraph_neighbours(const fp_sagraph *self, size_t i, uint32_t *out)
{
    size_t n = self->n;
    if (self->k == n - 1) {
        unsigned c = 0;
        for (size_t j = 0; j < n; j++)
            if (j != i)
                out[c++] = (uint32_t)j;
        return c;
    }
    size_t p = self->pos[i];
    unsigned c = 0;
    for (unsigned d = 1; d <= self->k / 2; d++) {
        out[c++] = self->at[(p + d) % n];
        out[c++] = self->at[(p + n - d) % n];
    }
    qsort(out, c, sizeof *out, cmp_u32);
    return c;
}

int fp_sagraph_adjacent(const fp_sagraph *self, size_t i, size_t j)
{
    if (i == j || i >= self->n || j >= self->n)
        return 0;
    if (self->k == self->n - 1)
        return 1;
    size_t n = self->n, a = self->pos[i], b = self->pos[j];
    size_t d = a > b ? a - b : b - a;
    if (d > n - d)
        d = n - d;
    return d <= self->k / 2;
}

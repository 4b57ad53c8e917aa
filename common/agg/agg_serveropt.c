/* agg_serveropt.c - FedAvgM, FedAdagrad, FedAdam, FedYogi (agg_serveropt.h). */
#include "agg_serveropt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SOPT_MAGIC 0x314f5346u  /* "FSO1" */
#define SOPT_VERSION 1u
#define SOPT_HEADER 32          /* magic, version, kind, reserved (u32); n, step (u64) */

struct fp_sopt {
    fp_sopt_config cfg;
    size_t n;
    uint64_t step;
    int n_slabs;        /* 0 none, 1 avgm (m), 2 adaptive (m, v) */
    float *state;       /* [n_slabs][n]: m then v */
};

static const char *const sopt_names[] = {"none", "fedavgm", "fedadagrad", "fedadam", "fedyogi"};
#define SOPT_KINDS ((int)(sizeof sopt_names / sizeof *sopt_names))

void fp_sopt_config_default(fp_sopt_config *c, fp_sopt_kind kind)
{
    /* fedavgm's momentum and fedadam's lr are what bench/serveropt_sweep.sh found
     * best on the bundled task (docs/aggregation.md); the others are the paper's. */
    c->kind = kind;
    c->lr = (kind == FP_SOPT_NONE || kind == FP_SOPT_AVGM) ? 1.0f
            : kind == FP_SOPT_ADAM                        ? 3e-2f
                                                          : 1e-2f;
    c->beta1 = kind == FP_SOPT_AVGM ? 0.6f : 0.9f;
    c->beta2 = 0.99f;
    c->tau = 1e-3f;
}

int fp_sopt_parse(const char *name, fp_sopt_kind *kind)
{
    for (int k = 0; k < SOPT_KINDS; k++) {
        const char *full = sopt_names[k], *bare = strncmp(full, "fed", 3) == 0 ? full + 3 : full;
        if (strcmp(name, full) == 0 || strcmp(name, bare) == 0) {
            *kind = (fp_sopt_kind)k;
            return 0;
        }
    }
    return fp_error_set("unknown server optimizer '%s'; known: none, fedavgm, fedadagrad, "
                        "fedadam, fedyogi", name);
}

const char *fp_sopt_name(fp_sopt_kind kind)
{
    return (int)kind >= 0 && (int)kind < SOPT_KINDS ? sopt_names[kind] : "?";
}

static int slabs_of(fp_sopt_kind k) { return k == FP_SOPT_NONE ? 0 : k == FP_SOPT_AVGM ? 1 : 2; }

static int config_check(const fp_sopt_config *c)
{
    if ((int)c->kind < 0 || (int)c->kind >= SOPT_KINDS)
        return fp_error_set("server optimizer: unknown kind %d", (int)c->kind);
    const char *nm = sopt_names[c->kind];
    if (!(c->lr > 0) || !isfinite(c->lr))
        return fp_error_set("%s: server lr %g must be positive and finite", nm, (double)c->lr);
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1))
        return fp_error_set("%s: beta1 %g and beta2 %g must be in [0, 1)", nm,
                            (double)c->beta1, (double)c->beta2);
    if (!(c->tau > 0) || !isfinite(c->tau))
        return fp_error_set("%s: tau %g must be positive and finite", nm, (double)c->tau);
    return 0;
}

/* m = 0, v = tau^2 */
static void state_reset(fp_sopt *s)
{
    s->step = 0;
    if (s->n_slabs >= 1)
        memset(s->state, 0, s->n * sizeof *s->state);
    if (s->n_slabs == 2) {
        float v0 = s->cfg.tau * s->cfg.tau;
        for (size_t i = 0; i < s->n; i++)
            s->state[s->n + i] = v0;
    }
}

fp_sopt *fp_sopt_new(const fp_sopt_config *c, size_t n)
{
    if (config_check(c) < 0)
        return NULL;
    if (n == 0 || n > SIZE_MAX / (2 * sizeof(float))) {
        fp_error_set("%s: bad adapter size %zu", sopt_names[c->kind], n);
        return NULL;
    }
    fp_sopt *s = calloc(1, sizeof *s);
    if (!s)
        goto oom;
    s->cfg = *c;
    s->n = n;
    s->n_slabs = slabs_of(c->kind);
    if (s->n_slabs) {
        s->state = malloc((size_t)s->n_slabs * n * sizeof *s->state);
        if (!s->state)
            goto oom;
    }
    state_reset(s);
    return s;
oom:
    free(s);
    fp_error_set("%s: out of memory for %zu floats of state", sopt_names[c->kind], 2 * n);
    return NULL;
}

void fp_sopt_free(fp_sopt **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->state);
    free(*self_p);
    *self_p = NULL;
}

int fp_sopt_step(fp_sopt *s, float *x, const float *d)
{
    const size_t n = s->n;
    const float lr = s->cfg.lr, b1 = s->cfg.beta1, b2 = s->cfg.beta2, tau = s->cfg.tau;
    float *m = s->state, *v = s->state ? s->state + n : NULL;
    switch (s->cfg.kind) {
    case FP_SOPT_NONE:
        for (size_t i = 0; i < n; i++)
            x[i] += d[i];
        break;
    case FP_SOPT_AVGM:
        for (size_t i = 0; i < n; i++) {
            m[i] = b1 * m[i] + d[i];
            x[i] += lr * m[i];
        }
        break;
    case FP_SOPT_ADAGRAD:
    case FP_SOPT_ADAM:
    case FP_SOPT_YOGI:
        for (size_t i = 0; i < n; i++) {
            float g = d[i], g2 = g * g;
            m[i] = b1 * m[i] + (1.0f - b1) * g;
            if (s->cfg.kind == FP_SOPT_ADAGRAD)
                v[i] += g2;
            else if (s->cfg.kind == FP_SOPT_ADAM)
                v[i] = b2 * v[i] + (1.0f - b2) * g2;
            else {                              // yogi: sign(v - g^2), sign(0) = 0
                float dv = v[i] - g2;
                v[i] -= (1.0f - b2) * g2 * (float)((dv > 0) - (dv < 0));
            }
            x[i] += lr * m[i] / (sqrtf(v[i]) + tau);
        }
        break;
    default:
        return fp_error_set("server optimizer: unknown kind %d", (int)s->cfg.kind);
    }
    s->step++;
    return 0;
}

uint64_t fp_sopt_steps(const fp_sopt *s) { return s->step; }
const float *fp_sopt_m(const fp_sopt *s) { return s->n_slabs >= 1 ? s->state : NULL; }
const float *fp_sopt_v(const fp_sopt *s) { return s->n_slabs == 2 ? s->state + s->n : NULL; }

/* ---- state bytes --------------------------------------------------------------- */

size_t fp_sopt_state_size(const fp_sopt *s)
{
    return SOPT_HEADER + (size_t)s->n_slabs * s->n * sizeof(float);
}

int fp_sopt_state_save(const fp_sopt *s, uint8_t *buf, size_t len)
{
    if (len != fp_sopt_state_size(s))
        return fp_error_set("%s: state buffer of %zu bytes, expected %zu",
                            sopt_names[s->cfg.kind], len, fp_sopt_state_size(s));
    uint32_t h[4] = {SOPT_MAGIC, SOPT_VERSION, (uint32_t)s->cfg.kind, 0};
    uint64_t nn = s->n, st = s->step;
    memcpy(buf, h, 16);
    memcpy(buf + 16, &nn, 8);
    memcpy(buf + 24, &st, 8);
    if (s->n_slabs)
        memcpy(buf + SOPT_HEADER, s->state, (size_t)s->n_slabs * s->n * sizeof(float));
    return 0;
}

int fp_sopt_state_load(fp_sopt *s, const uint8_t *buf, size_t len)
{
    const char *nm = sopt_names[s->cfg.kind];
    uint32_t h[4];
    uint64_t nn, st;
    if (!buf || len < SOPT_HEADER)
        return fp_error_set("%s: checkpoint state of %zu bytes is too short for a server "
                            "optimizer header", nm, len);
    memcpy(h, buf, 16);
    memcpy(&nn, buf + 16, 8);
    memcpy(&st, buf + 24, 8);
    if (h[0] != SOPT_MAGIC)
        return fp_error_set("%s: the checkpoint's strategy state is not server optimizer "
                            "state; was the run started with another strategy?", nm);
    if (h[1] != SOPT_VERSION || h[3] != 0)
        return fp_error_set("%s: server optimizer state version %u, this build reads %u", nm,
                            h[1], SOPT_VERSION);
    if (h[2] != (uint32_t)s->cfg.kind)
        return fp_error_set("%s: the checkpoint holds %s state; was the run started with "
                            "another server optimizer?", nm, fp_sopt_name((fp_sopt_kind)h[2]));
    if (nn != s->n)
        return fp_error_set("%s: state for %llu floats, the adapter has %zu (another LoRA "
                            "rank or targets?)", nm, (unsigned long long)nn, s->n);
    if (len != fp_sopt_state_size(s))
        return fp_error_set("%s: state of %zu bytes, expected %zu (%s)", nm, len,
                            fp_sopt_state_size(s), len < fp_sopt_state_size(s) ?
                            "truncated" : "trailing bytes");
    const uint8_t *p = buf + SOPT_HEADER;
    for (size_t i = 0; i < (size_t)s->n_slabs * s->n; i++) {
        float f;
        memcpy(&f, p + i * sizeof f, sizeof f);
        if (!isfinite(f) || (i >= s->n && f < 0))
            return fp_error_set("%s: corrupt state: %s[%zu] = %g", nm, i < s->n ? "m" : "v",
                                i % s->n, (double)f);
    }
    if (s->n_slabs)
        memcpy(s->state, p, (size_t)s->n_slabs * s->n * sizeof(float));
    s->step = st;
    return 0;
}

/* partition.c - assigning examples to shards: iid, Dirichlet label skew,
 * greedy grouping by a field or speaker; the non-IID score (partition.h). */
#include "partition.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fp_part_parse(const char *s, fp_part_spec *out)
{
    memset(out, 0, sizeof *out);
    char *end = NULL;
    if (!strcmp(s, "iid"))
        return out->kind = FP_PART_IID, 0;
    if (!strcmp(s, "speaker")) {
        out->kind = FP_PART_SPEAKER;
        snprintf(out->field, sizeof out->field, "speaker");
        return 0;
    }
    if (!strncmp(s, "field:", 6) && s[6] && strlen(s + 6) < sizeof out->field) {
        out->kind = FP_PART_FIELD;
        snprintf(out->field, sizeof out->field, "%s", s + 6);
        return 0;
    }
    if (!strncmp(s, "dirichlet:", 10)) {
        out->alpha = strtod(s + 10, &end);
        if (end != s + 10 && *end == ':' && end[1] && strlen(end + 1) < sizeof out->field &&
            out->alpha > 0 && isfinite(out->alpha)) {
            out->kind = FP_PART_DIRICHLET;
            snprintf(out->field, sizeof out->field, "%s", end + 1);
            return 0;
        }
    }
    return fp_error_set("--by expects iid, dirichlet:ALPHA:FIELD (ALPHA > 0, e.g. "
                        "dirichlet:0.5:label), field:NAME or speaker; got '%s'", s);
}

static double uniform01(fp_rng *r)   /* in (0, 1) */
{
    return ((double)(fp_rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

double fp_gamma_sample(fp_rng *r, double alpha)
{
    if (alpha < 1.0)    /* Gamma(a) = Gamma(a + 1) * U^(1/a) */
        return fp_gamma_sample(r, alpha + 1.0) * pow(uniform01(r), 1.0 / alpha);
    double d = alpha - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = fp_rng_normal(r), v = 1.0 + c * x;
        if (v <= 0.0)
            continue;
        v = v * v * v;
        double u = uniform01(r);
        if (u < 1.0 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
            return d * v;
    }
}

static void shuffle(fp_rng *r, size_t *a, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)fp_rng_below(r, (uint64_t)i), t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* Smallest shard's example count (shards that must be non-trivial). */
static size_t min_count(const size_t *shard_of, size_t n, size_t n_shards, size_t *count)
{
    memset(count, 0, n_shards * sizeof *count);
    for (size_t i = 0; i < n; i++)
        if (shard_of[i] != FP_DROPPED)
            count[shard_of[i]]++;
    size_t m = SIZE_MAX;
    for (size_t s = 0; s < n_shards; s++)
        m = count[s] < m ? count[s] : m;
    return m;
}

static int assign_iid(const fp_part_data *d, size_t w, fp_rng *r, size_t *shard_of,
                      size_t *tmp)
{
    for (size_t i = 0; i < d->n; i++)
        tmp[i] = i;
    shuffle(r, tmp, d->n);
    for (size_t k = 0; k < d->n; k++)
        shard_of[tmp[k]] = k % w;
    return 0;
}

/* One draw: each label's examples (shuffled) cut at Dirichlet proportions. */
static void dirichlet_draw(const fp_part_data *d, size_t w, double alpha, fp_rng *r,
                           size_t *shard_of, size_t *idx, double *p)
{
    for (size_t l = 0; l < d->n_labels; l++) {
        size_t m = 0;
        for (size_t i = 0; i < d->n; i++)
            if (d->label[i] == l)
                idx[m++] = i;
        shuffle(r, idx, m);
        double sum = 0.0;
        for (size_t s = 0; s < w; s++)
            sum += p[s] = fp_gamma_sample(r, alpha);
        if (!(sum > 0.0)) {     /* every draw underflowed: one worker takes it all */
            memset(p, 0, w * sizeof *p);
            p[fp_rng_below(r, w)] = sum = 1.0;
        }
        double cum = 0.0;
        size_t from = 0;
        for (size_t s = 0; s < w; s++) {
            cum += p[s] / sum;
            size_t to = s + 1 == w ? m : (size_t)floor(cum * (double)m + 0.5);
            to = to > m ? m : to < from ? from : to;
            for (size_t k = from; k < to; k++)
                shard_of[idx[k]] = s;
            from = to;
        }
    }
}

static int assign_dirichlet(const fp_part_data *d, size_t w, double alpha, fp_rng *r,
                            size_t *shard_of, size_t *tmp, size_t *count)
{
    double *p = malloc(w * sizeof *p);
    if (!p)
        return fp_error_set("out of memory partitioning");
    for (int attempt = 0; attempt < 1000; attempt++) {
        dirichlet_draw(d, w, alpha, r, shard_of, tmp, p);
        if (min_count(shard_of, d->n, w, count) >= 2)
            return free(p), 0;
    }
    free(p);
    return fp_error_set("dirichlet:%g left a shard with fewer than 2 examples in 1000 draws; "
                        "raise ALPHA or lower --workers", alpha);
}

typedef struct {
    size_t label, size, key;    /* key: seeded tie-break */
} group;

static int by_size_desc(const void *a, const void *b)
{
    const group *x = a, *y = b;
    if (x->size != y->size)
        return x->size < y->size ? 1 : -1;
    return (x->key > y->key) - (x->key < y->key);
}

/* Whole label groups to shards: one each (w == 0) or greedy by size. */
static int assign_groups(const fp_part_data *d, size_t w, fp_rng *r, size_t *shard_of,
                         size_t *n_shards, size_t *count)
{
    size_t L = d->n_labels;
    group *g = calloc(L ? L : 1, sizeof *g);
    size_t *to = calloc(L ? L : 1, sizeof *to), *load = calloc(w ? w : 1, sizeof *load);
    if (!g || !to || !load)
        return free(g), free(to), free(load), fp_error_set("out of memory partitioning");
    for (size_t l = 0; l < L; l++)
        g[l] = (group){ l, 0, fp_rng_next(r) };
    memset(count, 0, (L ? L : 1) * sizeof *count);
    for (size_t i = 0; i < d->n; i++)
        g[d->label[i]].size += d->size[i], count[d->label[i]]++;
    *n_shards = 0;
    if (w == 0) {               /* one shard per label with >= 2 examples */
        for (size_t l = 0; l < L; l++)
            to[l] = count[l] >= 2 ? (*n_shards)++ : FP_DROPPED;
    } else {
        qsort(g, L, sizeof *g, by_size_desc);
        for (size_t k = 0; k < L; k++) {
            size_t best = 0;
            for (size_t s = 1; s < w; s++)
                best = load[s] < load[best] ? s : best;
            load[best] += g[k].size;
            to[g[k].label] = best;
        }
        *n_shards = w;
    }
    for (size_t i = 0; i < d->n; i++)
        shard_of[i] = to[d->label[i]];
    free(g), free(to), free(load);
    return 0;
}

int fp_partition_assign(const fp_part_spec *spec, const fp_part_data *d, size_t workers,
                        uint64_t seed, size_t *shard_of, size_t *n_shards)
{
    int grouped = spec->kind == FP_PART_FIELD || spec->kind == FP_PART_SPEAKER;
    if (workers == 0 && !grouped)
        return fp_error_set("--workers must be at least 1 (0 means one shard per value, "
                            "for field:NAME and speaker only)");
    if (spec->kind == FP_PART_SPEAKER && d->format != FP_FORMAT_TEXT)
        return fp_error_set("--by speaker needs a plain-text play script; for JSON use "
                            "field:NAME");
    if (spec->kind != FP_PART_IID)
        for (size_t i = 0; i < d->n; i++)
            if (d->label[i] == FP_NO_LABEL)
                return fp_error_set("internal: example %zu has no label", i);
    if (d->n < 2 * workers)
        return fp_error_set("%zu examples cannot fill %zu shards of at least 2 examples "
                            "each (each worker holds some out for validation); use "
                            "--workers %zu or fewer", d->n, workers, d->n / 2);
    if (grouped && workers > d->n_labels)
        return fp_error_set("only %zu distinct values of \"%s\" for %zu workers; use "
                            "--workers %zu or fewer", d->n_labels, spec->field, workers,
                            d->n_labels);
    size_t cap = d->n > d->n_labels ? d->n : d->n_labels;
    size_t *tmp = malloc((cap ? cap : 1) * sizeof *tmp);
    size_t *count = malloc((cap + workers + 1) * sizeof *count);
    fp_rng r;
    fp_rng_seed(&r, seed);
    int rc = -1;
    if (!tmp || !count) {
        fp_error_set("out of memory partitioning %zu examples", d->n);
        goto out;
    }
    *n_shards = workers;
    if (spec->kind == FP_PART_IID)
        rc = assign_iid(d, workers, &r, shard_of, tmp);
    else if (spec->kind == FP_PART_DIRICHLET)
        rc = assign_dirichlet(d, workers, spec->alpha, &r, shard_of, tmp, count);
    else
        rc = assign_groups(d, workers, &r, shard_of, n_shards, count);
    if (rc == 0 && workers > 0) {
        size_t m = min_count(shard_of, d->n, *n_shards, count);
        if (m < 2)
            rc = fp_error_set("a shard got only %zu example(s): each needs at least 2 (a "
                              "worker holds some out for validation); use fewer --workers", m);
    }
out:
    free(tmp), free(count);
    return rc;
}

double fp_partition_noniid(const fp_part_data *d, const size_t *shard_of, size_t n_shards)
{
    size_t L = d->n_labels, total = 0;
    if (L == 0 || n_shards == 0)
        return NAN;
    size_t *c = calloc((n_shards + 1) * L, sizeof *c), *ns = calloc(n_shards, sizeof *ns);
    if (!c || !ns)
        return free(c), free(ns), NAN;
    size_t *glob = c + n_shards * L;
    for (size_t i = 0; i < d->n; i++) {
        if (shard_of[i] == FP_DROPPED || d->label[i] == FP_NO_LABEL)
            continue;
        c[shard_of[i] * L + d->label[i]]++, glob[d->label[i]]++;
        ns[shard_of[i]]++, total++;
    }
    double sum = 0.0;
    size_t used = 0;
    for (size_t s = 0; s < n_shards; s++) {
        if (!ns[s])
            continue;
        double tv = 0.0;
        for (size_t l = 0; l < L; l++)
            tv += fabs((double)c[s * L + l] / (double)ns[s] - (double)glob[l] / (double)total);
        sum += 0.5 * tv;
        used++;
    }
    free(c), free(ns);
    return used ? sum / (double)used : NAN;
}

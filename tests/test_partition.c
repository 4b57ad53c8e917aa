/* test_partition.c - `fedpeft partition`: shards add up, nothing lost or
 * duplicated, seeds reproduce, Dirichlet skew shows in the non-IID score,
 * speakers stay whole; and the Gamma sampler behind Dirichlet. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partition.h"
#include "test_util.h"

#define HAS(hay, needle) \
    do { \
        if (!strstr((hay), (needle))) \
            fail_msg("expected \"%s\" in: %s", (needle), (hay)); \
    } while (0)

enum { N_REC = 240 };
static char input[4096];

/* N_REC records, labels c0..c3 with unequal counts, written as cJSON prints them. */
static void make_input(void)
{
    if (input[0])
        return;
    snprintf(input, sizeof input, "%s/in.jsonl", tu_tempdir("part-in"));
    FILE *f = fopen(input, "w");
    assert_non_null(f);
    for (int i = 0; i < N_REC; i++)
        fprintf(f, "{\"id\":%d,\"label\":\"c%d\",\"text\":\"example number %d\"}\n", i,
                i % 7 < 3 ? 0 : i % 7 < 5 ? 1 : i % 7 < 6 ? 2 : 3, i);
    fclose(f);
}

/* Runs the tool; returns its output (caller frees), failing on a non-zero exit. */
static char *partition(const char *data, const char *by, int workers, int seed,
                       const char *out, const char *extra)
{
    char cmd[16384], *o = NULL;
    snprintf(cmd, sizeof cmd, FP_TOOL " partition --data %s --by %s --workers %d --seed %d "
             "--out %s %s", data, by, workers, seed, out, extra ? extra : "");
    int rc = tu_run(cmd, &o);
    if (rc != 0)
        fail_msg("%s: exit %d: %s", cmd, rc, o);
    return o;
}

static double noniid(const char *out)
{
    const char *p = strstr(out, "non-IID (mean total variation distance");
    if (!p)
        fail_msg("no non-IID line in: %s", out);
    return atof(strstr(p, "): ") + 3);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* All lines of a file, appended to lines[*n]. */
static void read_lines(const char *path, char **lines, size_t *n, size_t cap)
{
    char *buf = tu_read_file(path, NULL);
    if (!buf)
        fail_msg("missing shard %s", path);
    for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        assert_true(*n < cap);
        lines[(*n)++] = strdup(l);
    }
    free(buf);
}

/* The shards hold exactly the input's records; returns per-shard counts. */
static void check_multiset(const char *dir, int workers, size_t *counts)
{
    char *a[N_REC + 8], *b[N_REC + 8];
    size_t na = 0, nb = 0;
    read_lines(input, a, &na, N_REC + 8);
    for (int s = 0; s < workers; s++) {
        char name[64];
        snprintf(name, sizeof name, "shard-%03d.jsonl", s);
        size_t before = nb;
        read_lines(tu_path(dir, name), b, &nb, N_REC + 8);
        counts[s] = nb - before;
        assert_true(counts[s] >= 2);
    }
    assert_int_equal(na, N_REC);
    assert_int_equal(nb, N_REC);                 /* sizes add up */
    qsort(a, na, sizeof *a, cmp_str);
    qsort(b, nb, sizeof *b, cmp_str);
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(a[i], b[i]);         /* none lost, none duplicated */
        free(a[i]), free(b[i]);
    }
}

static int same_files(const char *d1, const char *d2, int workers)
{
    int same = 1;
    for (int s = 0; s < workers; s++) {
        char name[64];
        size_t l1, l2;
        snprintf(name, sizeof name, "shard-%03d.jsonl", s);
        char *x = tu_read_file(tu_path(d1, name), &l1), *y = tu_read_file(tu_path(d2, name), &l2);
        assert_non_null(x);
        assert_non_null(y);
        same &= l1 == l2 && memcmp(x, y, l1) == 0;
        free(x), free(y);
    }
    return same;
}

static void test_iid_and_dirichlet(void **state)
{
    (void)state;
    make_input();
    char base[4096], d[4][4200];
    snprintf(base, sizeof base, "%s", tu_tempdir("part-iid"));
    for (int i = 0; i < 4; i++)
        snprintf(d[i], sizeof d[i], "%s/out%d", base, i);
    size_t counts[8];

    char *o = partition(input, "iid", 6, 1, d[0], "--label label");
    check_multiset(d[0], 6, counts);
    for (int s = 0; s < 6; s++)
        assert_int_equal(counts[s], N_REC / 6);  /* equal split */
    HAS(o, "shard-005.jsonl");
    double iid = noniid(o);
    free(o);
    free(partition(input, "iid", 6, 1, d[1], "--label label"));
    assert_true(same_files(d[0], d[1], 6));      /* same seed: byte-identical */
    free(partition(input, "iid", 6, 2, d[1], "--label label"));
    assert_false(same_files(d[0], d[1], 6));     /* another seed: other shards */

    o = partition(input, "dirichlet:0.1:label", 6, 1, d[2], NULL);
    check_multiset(d[2], 6, counts);
    double dir = noniid(o);
    free(o);
    printf("# non-IID: iid %.3f, dirichlet:0.1 %.3f\n", iid, dir);
    assert_true(iid < 0.15);
    assert_true(dir > iid + 0.25);
    free(partition(input, "dirichlet:0.1:label", 6, 1, d[3], NULL));
    assert_true(same_files(d[2], d[3], 6));
    free(partition(input, "dirichlet:0.1:label", 6, 5, d[3], NULL));
    assert_false(same_files(d[2], d[3], 6));
    /* A large alpha is close to IID. */
    o = partition(input, "dirichlet:1000:label", 6, 1, d[3], NULL);
    check_multiset(d[3], 6, counts);
    assert_true(noniid(o) < dir);
    free(o);
}

static void test_field_groups(void **state)
{
    (void)state;
    make_input();
    const char *dir = tu_tempdir("part-field");
    size_t counts[4];
    char *o = partition(input, "field:label", 2, 1, dir, NULL);
    check_multiset(dir, 2, counts);
    /* c0 (~103 records) alone; c1+c2+c3 together: every label in one shard. */
    assert_true(noniid(o) > 0.4);
    HAS(o, "c0:");
    free(o);
    char *a = tu_read_file(tu_path(dir, "shard-000.jsonl"), NULL);
    char *b = tu_read_file(tu_path(dir, "shard-001.jsonl"), NULL);
    for (int l = 0; l < 4; l++) {
        char tag[32];
        snprintf(tag, sizeof tag, "\"label\":\"c%d\"", l);
        assert_true((strstr(a, tag) != NULL) != (strstr(b, tag) != NULL));
    }
    free(a), free(b);
}

static void test_errors(void **state)
{
    (void)state;
    make_input();
    const char *dir = tu_tempdir("part-err");
    char cmd[16384], *o = NULL;
    struct { const char *args, *want; } cases[] = {
        { "--by iid --workers 121", "240 examples cannot fill 121 shards" },
        { "--by dirichlet:0:label --workers 2", "--by expects iid, dirichlet:ALPHA:FIELD" },
        { "--by field:nope --workers 2", "in.jsonl:1: no \"nope\" field to partition by" },
        { "--by field:label --workers 5", "only 4 distinct values of \"label\" for 5 workers" },
        { "--by speaker --workers 2", "--by speaker needs a plain-text play script" },
        { "--by iid", "--data, --workers, --by and --out are required" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(cmd, sizeof cmd, FP_TOOL " partition --data %s --out %s/x %s", input, dir,
                 cases[i].args);
        int rc = tu_run(cmd, &o);
        if (rc == 0)
            fail_msg("%s succeeded: %s", cmd, o);
        HAS(o, cases[i].want);
        free(o);
    }
}

/* Speeches and speakers of a text file, through the library. */
static void load_play(const char *path, fp_part_data *d)
{
    if (fp_part_data_load(path, FP_FORMAT_TEXT, 0, "speaker", NULL, d) != 0)
        fail_msg("%s: %s", path, fp_error_get());
}

static void test_speaker(void **state)
{
    (void)state;
    char dir[4096], play[4096];   /* tu_* paths live in a rotating buffer: copy */
    snprintf(dir, sizeof dir, "%s", tu_tempdir("part-speaker"));
    snprintf(play, sizeof play, "%s/data/tinyshakespeare/input.txt", FP_SOURCE_DIR);
    enum { W = 8 };
    char *o = partition(play, "speaker", W, 3, dir, NULL);
    HAS(o, "shard-007.txt");
    free(o);
    fp_part_data all, sh[W];
    load_play(play, &all);
    assert_int_equal(all.n, 7222);
    char **a = malloc(all.n * sizeof *a), **b = malloc(all.n * sizeof *b);
    for (size_t i = 0; i < all.n; i++)
        a[i] = all.raw[i];
    size_t nb = 0;
    int *owner = calloc(all.n_labels, sizeof *owner);
    for (int s = 0; s < W; s++) {
        char name[64];
        snprintf(name, sizeof name, "shard-%03d.txt", s);
        load_play(tu_path(dir, name), &sh[s]);
        assert_true(sh[s].n >= 2);
        for (size_t i = 0; i < sh[s].n; i++) {
            assert_true(nb < all.n);
            b[nb++] = sh[s].raw[i];
        }
        /* each speaker in exactly one shard */
        for (size_t l = 0; l < sh[s].n_labels; l++) {
            char *key = sh[s].labels[l];
            char **hit = bsearch(&key, all.labels, all.n_labels, sizeof *all.labels, cmp_str);
            assert_non_null(hit);
            size_t k = (size_t)(hit - all.labels);
            assert_int_equal(owner[k], 0);
            owner[k] = s + 1;
        }
    }
    for (size_t k = 0; k < all.n_labels; k++)
        assert_int_not_equal(owner[k], 0);
    assert_int_equal(nb, all.n);                 /* every speech exactly once */
    qsort(a, all.n, sizeof *a, cmp_str);
    qsort(b, nb, sizeof *b, cmp_str);
    for (size_t i = 0; i < all.n; i++)
        assert_string_equal(a[i], b[i]);
    for (int s = 0; s < W; s++)
        fp_part_data_free(&sh[s]);
    free(a), free(b), free(owner);

    /* --workers 0: one shard per speaker with at least 2 speeches. */
    snprintf(dir, sizeof dir, "%s", tu_tempdir("part-speaker0"));
    o = partition(play, "speaker", 0, 3, dir, NULL);
    HAS(o, "dropped ");
    HAS(o, "non-IID (mean total variation distance");
    free(o);
    size_t with2 = 0, *cnt = calloc(all.n_labels, sizeof *cnt);
    for (size_t i = 0; i < all.n; i++)
        cnt[all.label[i]]++;
    for (size_t k = 0; k < all.n_labels; k++)
        with2 += cnt[k] >= 2;
    char name[64];
    snprintf(name, sizeof name, "shard-%03zu.txt", with2 - 1);
    fp_part_data last;
    load_play(tu_path(dir, name), &last);
    assert_int_equal(last.n_labels, 1);
    fp_part_data_free(&last);
    snprintf(name, sizeof name, "shard-%03zu.txt", with2);
    assert_null(tu_read_file(tu_path(dir, name), NULL));
    free(cnt);
    fp_part_data_free(&all);
}

static void test_gamma(void **state)
{
    (void)state;
    const double alphas[3] = { 0.3, 1.0, 4.0 };
    fp_rng r;
    fp_rng_seed(&r, 99);
    for (int k = 0; k < 3; k++) {
        double s = 0, s2 = 0, a = alphas[k];
        enum { N = 100000 };
        for (int i = 0; i < N; i++) {
            double x = fp_gamma_sample(&r, a);
            assert_true(x >= 0 && isfinite(x));
            s += x, s2 += x * x;
        }
        double mean = s / N, var = s2 / N - mean * mean;
        printf("# gamma(%.1f): mean %.4f var %.4f\n", a, mean, var);
        assert_true(fabs(mean - a) < 0.02 * a + 0.005);   /* E = alpha */
        assert_true(fabs(var - a) < 0.06 * a);            /* Var = alpha */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iid_and_dirichlet),
        cmocka_unit_test(test_field_groups),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_speaker),
        cmocka_unit_test(test_gamma),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_secagg_graph.c - the SecAgg+ Harary graph: k-regular, symmetric, connected,
 * fixed by its seed and only by it; and k, t from the tail bounds (checked here
 * against a direct recomputation and against SecAgg's complete graph); the
 * phases' waits grow with n. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "secagg_graph.h"

static void check_graph(size_t n, unsigned k, const uint8_t seed[32])
{
    fp_sagraph *g = fp_sagraph_new(n, k, seed);
    assert_non_null(g);
    assert_int_equal(fp_sagraph_degree(g), k);
    uint32_t *nb = malloc(k * sizeof *nb);
    unsigned char *seen = calloc(n, 1);
    size_t *queue = malloc(n * sizeof *queue);
    assert_non_null(nb);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(fp_sagraph_neighbours(g, i, nb), k);
        for (unsigned a = 0; a < k; a++) {
            assert_true(nb[a] < n);
            assert_true(nb[a] != i);
            if (a)
                assert_true(nb[a] > nb[a - 1]);     /* ascending, so no repeats */
            assert_true(fp_sagraph_adjacent(g, i, nb[a]));
            assert_true(fp_sagraph_adjacent(g, nb[a], i)); /* symmetric */
        }
    }
    /* connected: breadth-first from member 0 reaches all n */
    size_t head = 0, tail = 0, reached = 1;
    queue[tail++] = 0;
    seen[0] = 1;
    while (head < tail) {
        size_t u = queue[head++];
        unsigned c = fp_sagraph_neighbours(g, u, nb);
        for (unsigned a = 0; a < c; a++)
            if (!seen[nb[a]]) {
                seen[nb[a]] = 1;
                queue[tail++] = nb[a];
                reached++;
            }
    }
    assert_int_equal(reached, n);
    free(nb);
    free(seen);
    free(queue);
    fp_sagraph_destroy(&g);
    assert_null(g);
}

static void test_regular_symmetric_connected(void **state)
{
    (void)state;
    uint8_t seed[32] = {1, 2, 3};
    check_graph(10, 4, seed);
    check_graph(500, 18, seed);
    check_graph(7, 6, seed);                           /* complete */
    check_graph(3000, 40, seed);
}

/* The seed fixes the graph; another seed gives another one. */
static void test_seed_determines_graph(void **state)
{
    (void)state;
    uint8_t s1[32] = {9}, s2[32] = {10};
    fp_sagraph *a = fp_sagraph_new(200, 10, s1), *b = fp_sagraph_new(200, 10, s1),
               *c = fp_sagraph_new(200, 10, s2);
    uint32_t na[10], nb[10];
    int differ = 0;
    for (size_t i = 0; i < 200; i++) {
        fp_sagraph_neighbours(a, i, na);
        fp_sagraph_neighbours(b, i, nb);
        assert_memory_equal(na, nb, sizeof na);
        fp_sagraph_neighbours(c, i, nb);
        differ += memcmp(na, nb, sizeof na) != 0;
    }
    assert_true(differ > 150);
    /* and it is not the identity layout (member i next to i+1) */
    fp_sagraph_neighbours(a, 100, na);
    int plain = 1;
    for (int d = 0; d < 10; d++)
        plain &= na[d] >= 95 && na[d] <= 105;
    assert_false(plain);
    fp_sagraph_destroy(&a);
    fp_sagraph_destroy(&b);
    fp_sagraph_destroy(&c);
}

static void test_bad_degree(void **state)
{
    (void)state;
    uint8_t seed[32] = {0};
    assert_null(fp_sagraph_new(10, 3, seed));          /* odd and not complete */
    assert_null(fp_sagraph_new(10, 10, seed));         /* > n-1 */
    assert_null(fp_sagraph_new(1, 0, seed));
    unsigned k, t;
    assert_int_equal(fp_sagraph_params(1, 0.05, 0.05, 40, 30, &k, &t), -1);
    assert_int_equal(fp_sagraph_params(100, 0.3, 0.3, 40, 30, &k, &t), -1);
    assert_int_equal(fp_sagraph_params(100, -0.1, 0.1, 40, 30, &k, &t), -1);
}

/* P[X >= t], X ~ Hypergeometric(N, K, k), summed with plain products. */
static double hyper_tail(unsigned N, unsigned K, unsigned k, unsigned t)
{
    double p = 0;
    for (unsigned x = t; x <= k && x <= K; x++) {
        double v = 1;  /* C(K,x) C(N-K,k-x) / C(N,k) as a running product */
        for (unsigned i = 0; i < x; i++)
            v *= (double)(K - i) / (double)(N - i);
        for (unsigned i = 0; i < k - x; i++)
            v *= (double)(N - K - i) / (double)(N - x - i);
        for (unsigned i = 1; i <= x; i++) /* times C(k, x) */
            v *= (double)(k - x + i) / (double)i;
        p += v;
    }
    return p;
}

/* The chosen (k, t) meets both bounds and is the smallest even k that does. */
static void test_params_meet_bounds(void **state)
{
    (void)state;
    const size_t ns[] = {100, 1000, 10000};
    for (int c = 0; c < 3; c++) {
        size_t n = ns[c];
        unsigned k, t;
        assert_int_equal(fp_sagraph_params(n, 0.05, 0.05, 40, 30, &k, &t), 0);
        print_message("n = %zu: k = %u, t = %u (%.1f%% of the members)\n", n, k, t,
                      100.0 * k / (double)(n - 1));
        assert_true(t > k / 2);
        assert_true(t <= k);
        if (k == n - 1)
            continue;
        unsigned K = (unsigned)(0.05 * (double)n);
        double sec = hyper_tail((unsigned)(n - 1), K, k, t);
        assert_true(sec * (double)n <= ldexp(1.0, -40) * 1.0001);
        /* correctness: binomial lower tail with p = 0.9 per neighbour */
        double lo = 0;
        for (unsigned x = 0; x < t; x++)
            lo += exp(lgamma(k + 1) - lgamma(x + 1) - lgamma(k - x + 1) + x * log(0.9) +
                      (k - x) * log(0.1));
        assert_true(lo * (double)n <= ldexp(1.0, -30) * 1.0001);
    }
    /* the degree grows like log n, far below n */
    unsigned k1, t1, k2, t2;
    assert_int_equal(fp_sagraph_params(1000, 0.05, 0.05, 40, 30, &k1, &t1), 0);
    assert_int_equal(fp_sagraph_params(100000, 0.05, 0.05, 40, 30, &k2, &t2), 0);
    assert_true(k2 < 2 * k1);
    assert_true(k2 < 1000);
}

/* The small-message phases wait a quarter of the deadline, and longer as the
 * round grows: 10,000 members get 202 s even under a 60 s deadline. */
static void test_phase_wait_scales_with_n(void **state)
{
    (void)state;
    assert_true(fabs(fp_sagraph_phase_s(10, 600) - 150.0) < 1e-9);
    assert_true(fabs(fp_sagraph_phase_s(10, 4) - 2.2) < 1e-9);
    assert_true(fabs(fp_sagraph_phase_s(10000, 60) - 202.0) < 1e-9);
    for (size_t n = 2; n < 20000; n += 997)
        assert_true(fp_sagraph_phase_s(n + 1, 30) >= fp_sagraph_phase_s(n, 30));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regular_symmetric_connected),
        cmocka_unit_test(test_seed_determines_graph),
        cmocka_unit_test(test_bad_degree),
        cmocka_unit_test(test_params_meet_bounds),
        cmocka_unit_test(test_phase_wait_scales_with_n),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

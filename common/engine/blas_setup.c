/* blas_setup.c - pick OpenBLAS kernels that match the CPU (see blas_setup.h). */
#include "blas_setup.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Cores OpenBLAS falls back to when it does not recognise a CPU. Any of these
 * on a CPU with AVX2 or AVX-512 means we are leaving most of the speed unused. */
static const char *const generic_cores[] = {
    "Prescott", "Katmai", "Coppermine", "Northwood", "Banias", "Core2", "Penryn",
    "Dunnington", "Nehalem", "Atom", "Generic", "Unknown", NULL,
};

static int is_generic_core(const char *name)
{
    for (int i = 0; generic_cores[i]; i++)
        if (strcasecmp(name, generic_cores[i]) == 0)
            return 1;
    return 0;
}

/* The best OpenBLAS core type this CPU can run, or NULL. */
static const char *best_coretype(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SKYLAKEX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "HASWELL";
    return NULL;
}

const char *fp_blas_corename(void) { return openblas_get_corename(); }

void fp_blas_set_threads(int n)
{
    if (n > 0)
        openblas_set_num_threads(n);
}

const char *fp_blas_wanted_coretype(const char *core)
{
    const char *want = best_coretype();
    return (core && want && is_generic_core(core)) ? want : NULL;
}

void fp_blas_setup(int argc, char **argv)
{
    (void)argc;
    if (getenv("OPENBLAS_CORETYPE") || getenv("FEDPEFT_NO_BLAS_FIX"))
        return;                      /* the user chose; respect it */
    if (getenv("FEDPEFT_BLAS_REEXEC"))
        return;                      /* already re-executed once: never loop */
    /* FEDPEFT_BLAS_ASSUME_CORE lets tests exercise the re-exec on any CPU. */
    const char *core = getenv("FEDPEFT_BLAS_ASSUME_CORE");
    if (!core)
        core = openblas_get_corename();
    const char *want = fp_blas_wanted_coretype(core);
    if (!want)
        return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("FEDPEFT_BLAS_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* execv only returns on failure: keep going with the slow kernels. */
    fprintf(stderr, "fedpeft: warning: OpenBLAS chose the generic '%s' kernels and re-running "
            "with OPENBLAS_CORETYPE=%s failed; set it yourself for ~5x faster training\n",
            core, want);
}

double fp_blas_selfcheck(void)
{
    /* Odd sizes exercise the kernels' edge handling as well as the main loop. */
    static const int shapes[][3] = {{37, 29, 53}, {64, 65, 17}, {129, 7, 200}};
    double worst = 0.0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *a = malloc(sizeof(float) * (size_t)M * K);
        float *b = malloc(sizeof(float) * (size_t)N * K);
        float *c = malloc(sizeof(float) * (size_t)M * N);
        if (!a || !b || !c) {
            free(a), free(b), free(c);
            return INFINITY;
        }
        for (int i = 0; i < M * K; i++)
            a[i] = (float)((i * 7919 % 200) - 100) / 97.0f;
        for (int i = 0; i < N * K; i++)
            b[i] = (float)((i * 104729 % 300) - 150) / 113.0f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double ref = 0.0, mag = 0.0;
                for (int k = 0; k < K; k++) {
                    ref += (double)a[i * K + k] * b[j * K + k];
                    mag += fabs((double)a[i * K + k] * b[j * K + k]);
                }
                double err = fabs(ref - c[i * N + j]) / (mag + 1e-30);
                if (err > worst || isnan(c[i * N + j]))
                    worst = isnan(c[i * N + j]) ? INFINITY : err;
            }
        free(a), free(b), free(c);
    }
    return worst;
}

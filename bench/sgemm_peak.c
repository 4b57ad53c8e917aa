/* sgemm_peak.c - what OpenBLAS's sgemm reaches on the GEMMs of one LoRA training
 * step of a Llama-shaped model, the bound `fedpeft bench train`'s GFLOP/s is
 * compared with (docs/engine.md, issue 14). For each layer weight W [out x in]
 * at batch x seq tokens: the forward X W^T and the backward dX = dY W (the
 * frozen base needs no dW), with the weights cycled through COPIES distinct
 * layers so that they come from memory, as in a real step, not from cache; and
 * the lm_head's forward and backward. A benchmark: it prints figures and
 * asserts nothing.
 *     build/sgemm_peak [--dim 2048] [--kv-dim 256] [--hidden 5632] [--vocab 32000]
 *                      [--tokens 256] [--copies 4] [--reps 3]
 * OPENBLAS_NUM_THREADS chooses the threads; the kernels are fedpeft's own choice
 * (fp_blas_setup: a misdetected CPU re-executes with OPENBLAS_CORETYPE). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blas_setup.h"

typedef struct {
    const char *name;
    int out, in;
} shape;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *filled(size_t n, unsigned seed)
{
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "sgemm_peak: out of memory for %zu floats\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (float)((seed + i * 2654435761u) % 2001) * 1e-3f - 1.0f;
    return p;
}

int main(int argc, char **argv)
{
    fp_blas_setup(argc, argv);
    int dim = 2048, kv = 256, hidden = 5632, vocab = 32000, T = 256, copies = 4, reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--dim")) dim = v;
        else if (!strcmp(argv[i], "--kv-dim")) kv = v;
        else if (!strcmp(argv[i], "--hidden")) hidden = v;
        else if (!strcmp(argv[i], "--vocab")) vocab = v;
        else if (!strcmp(argv[i], "--tokens")) T = v;
        else if (!strcmp(argv[i], "--copies")) copies = v;
        else if (!strcmp(argv[i], "--reps")) reps = v;
        else {
            fprintf(stderr, "sgemm_peak: unknown option %s (see the comment at the top of "
                    "bench/sgemm_peak.c)\n", argv[i]);
            return 2;
        }
    }
    if (dim <= 0 || kv <= 0 || hidden <= 0 || vocab <= 0 || T <= 0 || copies <= 0 || reps <= 0) {
        fprintf(stderr, "sgemm_peak: every option takes a positive integer\n");
        return 2;
    }
    const shape layer[] = {{"q", dim, dim},         {"k", kv, dim},   {"v", kv, dim},
                           {"o", dim, dim},         {"gate", hidden, dim}, {"up", hidden, dim},
                           {"down", dim, hidden}};
    const int n_shapes = (int)(sizeof layer / sizeof layer[0]);
    int wide = hidden > dim ? hidden : dim;
    wide = vocab > wide ? vocab : wide;
    float *x = filled((size_t)T * wide, 1), *y = filled((size_t)T * wide, 2);
    float **w = malloc((size_t)copies * n_shapes * sizeof *w);
    for (int c = 0; c < copies; c++)
        for (int s = 0; s < n_shapes; s++)
            w[c * n_shapes + s] = filled((size_t)layer[s].out * layer[s].in, 3 + c * 7 + s);
    float *head = filled((size_t)vocab * dim, 99);
    double flop = 0, secs = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s(), f = 0;
        for (int c = 0; c < copies; c++)
            for (int s = 0; s < n_shapes; s++) {
                const float *W = w[c * n_shapes + s];
                int o = layer[s].out, in = layer[s].in;
                /* forward: Y [T x out] = X [T x in] W^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, o, in, 1.0f, x, in, W, in,
                            0.0f, y, o);
                /* backward: dX [T x in] = dY [T x out] W */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, in, o, 1.0f, y, o, W, in,
                            0.0f, x, in);
                f += 4.0 * T * (double)o * in;
            }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, vocab, dim, 1.0f, x, dim, head,
                    dim, 0.0f, y, vocab);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, dim, vocab, 1.0f, y, vocab,
                    head, dim, 0.0f, x, dim);
        f += 4.0 * T * (double)vocab * dim;
        double dt = now_s() - t0;
        printf("rep %d: %.1f GFLOP in %.3f s: %.1f GFLOP/s\n", r + 1, f * 1e-9, dt, f * 1e-9 / dt);
        if (r > 0 || reps == 1)     /* the first repetition also pages the buffers in */
            flop += f, secs += dt;
    }
    printf("OpenBLAS core %s\n", fp_blas_corename());
    printf("sgemm on one training step's GEMMs (%d tokens, dim %d, kv %d, hidden %d, vocab %d, "
           "%d layer copies from memory): %.1f GFLOP/s\n", T, dim, kv, hidden, vocab, copies,
           flop * 1e-9 / secs);
    for (int i = 0; i < copies * n_shapes; i++)
        free(w[i]);
    free(w);
    free(head);
    free(x);
    free(y);
    return 0;
}

/* blas_setup.h - make OpenBLAS run the kernels this CPU deserves, and prove it.
 *
 * Debian 12's OpenBLAS 0.3.21 does not know recent CPUs (e.g. Zen 4, Sapphire
 * Rapids) and falls back to its "Prescott" kernels, ~5x slower. OpenBLAS picks
 * its kernels when the library loads, before main(), from OPENBLAS_CORETYPE.
 * So fp_blas_setup() checks the core OpenBLAS chose against what the CPU
 * supports (cpuid); if OpenBLAS chose a generic core and the user did not set
 * OPENBLAS_CORETYPE, it sets it (SKYLAKEX with AVX-512, HASWELL with AVX2) and
 * re-executes the program once. FEDPEFT_NO_BLAS_FIX=1 disables this.
 */
#ifndef FP_BLAS_SETUP_H
#define FP_BLAS_SETUP_H

/* Call first in main(). May execv() argv again (once). Never fails: on any
 * problem it keeps the current kernels and says so on stderr. */
void fp_blas_setup(int argc, char **argv);

/* The OPENBLAS_CORETYPE to run instead of `core` (an OpenBLAS core name), or
 * NULL when `core` is fine for this CPU. */
const char *fp_blas_wanted_coretype(const char *core);

/* The core OpenBLAS runs, e.g. "SkylakeX" (from openblas_get_corename). */
const char *fp_blas_corename(void);

/* Threads for OpenBLAS (0 = leave as is). */
void fp_blas_set_threads(int n);

/* Compares cblas_sgemm with a plain triple loop on a few odd shapes; returns
 * the largest relative error (tests assert it is tiny). */
double fp_blas_selfcheck(void);

#endif

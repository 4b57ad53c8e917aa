/* test_blas.c - OpenBLAS kernel choice: the fix for misdetected CPUs really
 * re-executes with better kernels, and the kernels compute correct results. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas_setup.h"
#include "test_util.h"

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static void test_sgemm_matches_reference(void **state)
{
    (void)state;
    double err = fp_blas_selfcheck();
    printf("# OpenBLAS core %s: sgemm max relative error %.2e\n", fp_blas_corename(), err);
    assert_true(err < 1e-5);
}

static void test_generic_cores_are_replaced(void **state)
{
    (void)state;
    if (!cpu_has_avx2())
        skip();
    assert_non_null(fp_blas_wanted_coretype("Prescott"));
    assert_non_null(fp_blas_wanted_coretype("Nehalem"));
    assert_null(fp_blas_wanted_coretype("SkylakeX"));
    assert_null(fp_blas_wanted_coretype("Haswell"));
    assert_null(fp_blas_wanted_coretype("Cooperlake"));
}

/* With OpenBLAS pretending to have picked Prescott, the tool re-executes itself
 * with OPENBLAS_CORETYPE set, and the new process reports the better core. */
static void test_tool_reexecs_with_better_kernels(void **state)
{
    (void)state;
    if (!cpu_has_avx2())
        skip();
    char *out = NULL;
    int rc = tu_run("env -u OPENBLAS_CORETYPE FEDPEFT_BLAS_ASSUME_CORE=Prescott " FP_TOOL
                    " --version", &out);
    printf("# %s", out);
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "Prescott"));
    assert_true(strstr(out, "SkylakeX") || strstr(out, "Haswell"));
    free(out);

    /* A user's explicit choice is respected, even a slow one. */
    rc = tu_run("OPENBLAS_CORETYPE=PRESCOTT " FP_TOOL " --version", &out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "Prescott"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgemm_matches_reference),
        cmocka_unit_test(test_generic_cores_are_replaced),
        cmocka_unit_test(test_tool_reexecs_with_better_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

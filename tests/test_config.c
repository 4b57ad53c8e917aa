/* test_config.c - INI config files against a key table (common/base/config.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "test_util.h"

typedef struct {
    int steps;
    uint64_t seed;
    float lr;
    double eps;
    int verbose;
    char name[16];
    int opt;
    int port;
} cfg_t;

static const char *const opt_names[] = {"adamw", "sgd", NULL};

#define K(sec, nm, ty, mn, mx, df, fld, sz, en, hp) \
    {sec, nm, ty, mn, mx, df, offsetof(cfg_t, fld), sz, en, hp}
static const fp_cfg_key table[] = {
    K("train", "steps", FP_CFG_INT, 1, 1000000, "10", steps, 0, NULL, "optimizer steps"),
    K("train", "seed", FP_CFG_U64, 0, 0, "42", seed, 0, NULL, "random seed"),
    K("train", "lr", FP_CFG_FLOAT, 0, 10, "0.001", lr, 0, NULL, "learning rate"),
    K("train", "eps", FP_CFG_DOUBLE, 0, 1, "1e-8", eps, 0, NULL, "epsilon"),
    K("train", "optimizer", FP_CFG_ENUM, 0, 0, "adamw", opt, 0, opt_names, "adamw or sgd"),
    K("log", "verbose", FP_CFG_BOOL, 0, 0, "false", verbose, 0, NULL, "chatty logs"),
    K("log", "name", FP_CFG_STRING, 0, 0, "run", name, sizeof(((cfg_t *)0)->name), NULL,
      "run name"),
    K("net", "port", FP_CFG_INT, 1, 65535, NULL, port, 0, NULL, NULL),
    {NULL},
};

static const char *write_cfg(const char *dir, const char *name, const char *text)
{
    const char *p = tu_path(dir, name);
    assert_int_equal(tu_write_file(p, text, strlen(text)), 0);
    return p;
}

static void load_ok(cfg_t *c, const char *path, const char *const *ignore)
{
    if (fp_cfg_load_file(table, c, path, ignore) != 0)
        fail_msg("load %s failed: %s", path, fp_error_get());
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("expected '%s' in: %s", needle, hay);
}

static void test_defaults(void **state)
{
    (void)state;
    cfg_t c;
    memset(&c, 0x55, sizeof c);
    assert_int_equal(fp_cfg_count(table), 8);
    assert_int_equal(fp_cfg_defaults(table, &c), 0);
    assert_int_equal(c.steps, 10);
    assert_true(c.seed == 42);
    assert_true(c.lr == 0.001f);
    assert_true(c.eps == 1e-8);
    assert_int_equal(c.opt, 0);
    assert_int_equal(c.verbose, 0);
    assert_string_equal(c.name, "run");
    assert_int_equal(c.port, 0);
}

static void test_broken_table(void **state)
{
    (void)state;
    cfg_t c;
    const fp_cfg_key bad_enum[] = {
        K("a", "b", FP_CFG_ENUM, 0, 0, NULL, opt, 0, NULL, NULL), {NULL}};
    assert_int_equal(fp_cfg_defaults(bad_enum, &c), -1);
    const fp_cfg_key bad_def[] = {
        K("a", "b", FP_CFG_INT, 1, 5, "9", steps, 0, NULL, NULL), {NULL}};
    assert_int_equal(fp_cfg_defaults(bad_def, &c), -1);
    assert_contains(fp_error_get(), "default");
    const fp_cfg_key dup[] = {K("a", "b", FP_CFG_INT, 0, 0, NULL, steps, 0, NULL, NULL),
                              K("a", "B", FP_CFG_INT, 0, 0, NULL, port, 0, NULL, NULL), {NULL}};
    assert_int_equal(fp_cfg_defaults(dup, &c), -1);
    assert_contains(fp_error_get(), "twice");
}

static void test_parse_file(void **state)
{
    (void)state;
    const char *dir = tu_tempdir("cfg-parse");
    const char *p = write_cfg(dir, "a.ini",
                              "# a comment\n"
                              "; another\n"
                              "\n"
                              "[train]\n"
                              "steps = 500\n"
                              "  seed = 18446744073709551615   ; inline comment\n"
                              "\tlr=0.25\n"
                              "eps = 1e-6\n"
                              "OPTIMIZER = SGD\n"
                              "[log]\n"
                              "verbose = yes\n"
                              "name = hello world\n"
                              "[net]\n"
                              "port: 5555\n");
    cfg_t c;
    assert_int_equal(fp_cfg_defaults(table, &c), 0);
    load_ok(&c, p, NULL);
    assert_int_equal(c.steps, 500);
    assert_true(c.seed == UINT64_MAX);
    assert_true(c.lr == 0.25f);
    assert_true(c.eps == 1e-6);
    assert_int_equal(c.opt, 1);
    assert_int_equal(c.verbose, 1);
    assert_string_equal(c.name, "hello world");
    assert_int_equal(c.port, 5555);
}

static void test_bools(void **state)
{
    (void)state;
    cfg_t c;
    assert_int_equal(fp_cfg_defaults(table, &c), 0);
    const char *yes[] = {"true", "yes", "on", "1", "TRUE", "On"};
    const char *no[] = {"false", "no", "off", "0", "False"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        c.verbose = 0;
        assert_int_equal(fp_cfg_set(table, &c, "log.verbose", yes[i], "t"), 0);
        assert_int_equal(c.verbose, 1);
    }
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
        c.verbose = 1;
        assert_int_equal(fp_cfg_set(table, &c, "log.verbose", no[i], "t"), 0);
        assert_int_equal(c.verbose, 0);
    }
    assert_int_equal(fp_cfg_set(table, &c, "log.verbose", "maybe", "t"), -1);
    assert_contains(fp_error_get(), "t: [log] verbose = 'maybe': expected true or false");
}

/* Each bad line must fail with FILE:LINE, the key and what was expected. */
static void expect_file_error(const char *body, int line, const char *const *needles)
{
    const char *dir = tu_tempdir("cfg-err");
    const char *p = write_cfg(dir, "bad.ini", body);
    cfg_t c;
    assert_int_equal(fp_cfg_defaults(table, &c), 0);
    if (fp_cfg_load_file(table, &c, p, NULL) != -1)
        fail_msg("loading should have failed:\n%s", body);
    char fl[4200];
    snprintf(fl, sizeof fl, "%s:%d: ", p, line);
    const char *msg = fp_error_get();
    if (strncmp(msg, fl, strlen(fl)) != 0)
        fail_msg("expected the message to start with '%s': %s", fl, msg);
    for (; *needles; needles++)
        assert_contains(msg, *needles);
}

static void test_file_errors(void **state)
{
    (void)state;
    expect_file_error("[train]\nsteps = ten\n", 2,
                      (const char *[]){"[train] steps = 'ten': expected an integer from 1 to "
                                       "1000000", NULL});
    expect_file_error("[train]\nsteps = 10x\n", 2, (const char *[]){"steps = '10x'", NULL});
    expect_file_error("[train]\n\nsteps = 0\n", 3, (const char *[]){"from 1 to 1000000", NULL});
    expect_file_error("[train]\nsteps = 99999999999\n", 2, (const char *[]){"steps", NULL});
    expect_file_error("[train]\nsteps =\n", 2, (const char *[]){"steps = ''", NULL});
    expect_file_error("[train]\nseed = -1\n", 2,
                      (const char *[]){"seed = '-1'", "non-negative integer", NULL});
    expect_file_error("[train]\nlr = 11\n", 2,
                      (const char *[]){"[train] lr = '11': expected a number from 0 to 10", NULL});
    expect_file_error("[train]\nlr = nan\n", 2, (const char *[]){"lr = 'nan'", NULL});
    expect_file_error("[train]\neps = inf\n", 2, (const char *[]){"eps = 'inf'", NULL});
    expect_file_error("[train]\noptimizer = adam\n", 2,
                      (const char *[]){"optimizer = 'adam'", "one of: adamw, sgd", NULL});
    expect_file_error("[log]\nname = this name is far too long\n", 2,
                      (const char *[]){"[log] name", "at most 15", NULL});
    expect_file_error("[train]\nsteps = 3\nlrr = 0.1\n", 3,
                      (const char *[]){"unknown key 'lrr' in [train]", "did you mean 'lr'",
                                       "valid keys: steps, seed, lr, eps, optimizer", NULL});
    expect_file_error("[trian]\nsteps = 1\n", 2,
                      (const char *[]){"unknown section [trian]", "did you mean [train]",
                                       "valid sections: [train], [log], [net]", NULL});
    expect_file_error("steps = 1\n[train]\n", 1,
                      (const char *[]){"'steps' is outside any section", NULL});
    expect_file_error("[train]\nsteps 5\n", 2,
                      (const char *[]){"cannot parse 'steps 5'", "key = value", NULL});
    expect_file_error("[train\nsteps = 5\n", 1, (const char *[]){"cannot parse '[train'", NULL});
    char longline[400];
    snprintf(longline, sizeof longline, "[log]\nname = %0300d\n", 7);
    expect_file_error(longline, 2, (const char *[]){"line is", "characters long", NULL});
    /* The first error is reported, not a later one. */
    expect_file_error("[train]\nsteps = x\nlr = y\n", 2, (const char *[]){"steps", NULL});
    expect_file_error("[train]\nbad line\nlr = y\n", 2, (const char *[]){"bad line", NULL});
}

static void test_missing_file(void **state)
{
    (void)state;
    cfg_t c;
    assert_int_equal(fp_cfg_defaults(table, &c), 0);
    assert_int_equal(fp_cfg_load_file(table, &c, "/nonexistent/x.ini", NULL), -1);
    assert_contains(fp_error_get(), "/nonexistent/x.ini");
    assert_contains(fp_error_get(), "No such file or directory");
    assert_contains(fp_error_get(), "check the path");
}

static void test_ignore_list(void **state)
{
    (void)state;
    const char *dir = tu_tempdir("cfg-ign");
    const char *p = write_cfg(dir, "sim.ini",
                              "[worker]\nanything = goes\n[train]\nsteps = 7\n"
                              "[coordinator]\nx = 1\n");
    const char *const ignore[] = {"worker", "coordinator", NULL};
    cfg_t c;
    assert_int_equal(fp_cfg_defaults(table, &c), 0);
    load_ok(&c, p, ignore);
    assert_int_equal(c.steps, 7);
    /* Without the ignore list the first foreign section is an error. */
    assert_int_equal(fp_cfg_load_file(table, &c, p, NULL), -1);
    assert_contains(fp_error_get(), ":2: unknown section [worker]");
}

static void test_args(void **state)
{
    (void)state;
    const char *dir = tu_tempdir("cfg-args");
    const char *p = write_cfg(dir, "a.ini", "[train]\nsteps = 5\nlr = 0.5\n[log]\nname = f\n");
    cfg_t c;
    assert_int_equal(fp_cfg_defaults(table, &c), 0);
    load_ok(&c, p, NULL);
    char *argv[] = {"--config", "a.ini", "--train.steps=99", "positional", "--train.lr",
                    "0.125", "--verbose", "--log.verbose", "on", "--", "--train.seed=1"};
    int argc = (int)(sizeof argv / sizeof *argv);
    assert_int_equal(fp_cfg_apply_args(table, &c, argc, argv), 0);
    assert_int_equal(c.steps, 99);
    assert_true(c.lr == 0.125f);
    assert_int_equal(c.verbose, 1);
    assert_string_equal(c.name, "f");
    assert_true(c.seed == 42); /* after "--": not ours */

    assert_int_equal(fp_cfg_arg_span("--train.steps=3"), 1);
    assert_int_equal(fp_cfg_arg_span("--train.steps"), 2);
    assert_int_equal(fp_cfg_arg_span("--config=a.ini"), 0);
    assert_int_equal(fp_cfg_arg_span("--config"), 0);
    assert_int_equal(fp_cfg_arg_span("a.ini"), 0);
    assert_int_equal(fp_cfg_arg_span("-x.y"), 0);

    char *bad1[] = {"--train.lrr=1"};
    assert_int_equal(fp_cfg_apply_args(table, &c, 1, bad1), -1);
    assert_contains(fp_error_get(), "command line (--train.lrr): unknown key 'lrr' in [train]");
    char *bad2[] = {"--nope.lr=1"};
    assert_int_equal(fp_cfg_apply_args(table, &c, 1, bad2), -1);
    assert_contains(fp_error_get(), "unknown section [nope]");
    char *bad3[] = {"--train.steps"};
    assert_int_equal(fp_cfg_apply_args(table, &c, 1, bad3), -1);
    assert_contains(fp_error_get(), "needs a value");
    char *bad4[] = {"--train.steps", "--log.verbose=1"};
    assert_int_equal(fp_cfg_apply_args(table, &c, 2, bad4), -1);
    assert_contains(fp_error_get(), "needs a value");
    char *bad5[] = {"--train.steps", "many"};
    assert_int_equal(fp_cfg_apply_args(table, &c, 2, bad5), -1);
    assert_contains(fp_error_get(), "[train] steps = 'many': expected an integer");
    char *bad6[] = {"--train.steps= 5"};
    assert_int_equal(fp_cfg_apply_args(table, &c, 1, bad6), -1);
    assert_int_equal(fp_cfg_set(table, &c, "nodot", "1", "x"), -1);
    assert_contains(fp_error_get(), "SECTION.KEY");
}

static void test_write_roundtrip(void **state)
{
    (void)state;
    cfg_t a, b;
    assert_int_equal(fp_cfg_defaults(table, &a), 0);
    a.steps = 123456;
    a.seed = UINT64_MAX - 1;
    a.lr = 0.1f; /* float bound check must accept its own "%.9g" */
    a.eps = 1.0 / 3.0;
    a.verbose = 1;
    a.opt = 1;
    strcpy(a.name, "x = y: #z");
    a.port = 65535;
    const char *dir = tu_tempdir("cfg-write");
    const char *p = tu_path(dir, "out.ini");
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fp_cfg_write(table, &a, f), 0);
    fclose(f);
    memset(&b, 0, sizeof b);
    assert_int_equal(fp_cfg_defaults(table, &b), 0);
    load_ok(&b, p, NULL);
    assert_int_equal(b.steps, a.steps);
    assert_true(b.seed == a.seed);
    assert_true(b.lr == a.lr);
    assert_true(b.eps == a.eps);
    assert_int_equal(b.verbose, 1);
    assert_int_equal(b.opt, 1);
    assert_string_equal(b.name, a.name);
    assert_int_equal(b.port, 65535);

    /* A value the format cannot carry is refused, not silently changed. */
    strcpy(a.name, "a ;b");
    f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fp_cfg_write(table, &a, f), -1);
    fclose(f);
    assert_contains(fp_error_get(), "[log] name");
}

static void test_print_help(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    fp_cfg_print_help(table, f);
    fclose(f);
    for (const fp_cfg_key *k = table; k->name; k++) {
        char dotted[128];
        snprintf(dotted, sizeof dotted, "%s.%s", k->section, k->name);
        assert_contains(buf, dotted);
        if (k->help)
            assert_contains(buf, k->help);
    }
    assert_contains(buf, "adamw|sgd");
    assert_contains(buf, "1..1000000");
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),      cmocka_unit_test(test_broken_table),
        cmocka_unit_test(test_parse_file),    cmocka_unit_test(test_bools),
        cmocka_unit_test(test_file_errors),   cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_ignore_list),   cmocka_unit_test(test_args),
        cmocka_unit_test(test_write_roundtrip), cmocka_unit_test(test_print_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

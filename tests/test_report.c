/* test_report.c - `fedpeft report METRICS.jsonl --out FILE.svg`: a picture
 * of a hand-written metrics file in the coordinator's format (one marker per
 * measured round, both panels, legends), and one-line errors naming the file
 * and line for a missing file, a bad line and a line without a round. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

static char dir[4096];

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void write_text(const char *name, const char *text)
{
    assert_int_equal(tu_write_file(tu_path(dir, name), text, strlen(text)), 0);
}

/* Runs the report; its exit status, output in *out. */
static int report(const char *in, const char *svg, char **out)
{
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' report '%s' --out '%s'", FP_TOOL, in, svg);
    return tu_run(cmd, out);
}

/* Round 0 (evaluation only), three trained rounds, one abandoned (no losses). */
static const char metrics[] =
    "{\"round\":0,\"abandoned\":false,\"live\":3,\"sampled\":0,\"reported\":0,\"dropped\":0,"
    "\"train_loss\":null,\"val_loss\":4.9,\"val_tokens\":100,\"bytes_up\":196,\"bytes_down\":92649,"
    "\"seconds\":{\"train\":0,\"aggregate\":0,\"eval\":0.8,\"checkpoint\":0.01},"
    "\"rejected\":{\"late\":0}}\n"
    "{\"round\":1,\"abandoned\":false,\"train_loss\":4.8,\"val_loss\":4.6,\"bytes_up\":185133,"
    "\"bytes_down\":370235}\n"
    "\n"
    "{\"round\":2,\"abandoned\":true,\"reason\":\"deadline\",\"train_loss\":null,\"val_loss\":null,"
    "\"bytes_up\":1000,\"bytes_down\":370242}\n"
    "{\"round\":3,\"abandoned\":false,\"train_loss\":4.3,\"val_loss\":4.0,\"bytes_up\":185142,"
    "\"bytes_down\":370242}\n";

static void test_picture(void **state)
{
    (void)state;
    write_text("metrics.jsonl", metrics);
    const char *svg = tu_path(dir, "report.svg");
    char *out = NULL;
    int rc = report(tu_path(dir, "metrics.jsonl"), svg, &out);
    if (rc != 0)
        fail_msg("report exited %d: %s", rc, out);
    assert_non_null(strstr(out, "4 rounds"));
    free(out);
    char *text = tu_read_file(svg, NULL);
    assert_non_null(text);
    assert_true(strncmp(text, "<?xml", 5) == 0);
    assert_non_null(strstr(text, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_non_null(strstr(text, "</svg>\n"));
    /* Every element opened is closed (a rough well-formedness check). */
    assert_int_equal(count(text, "<text"), count(text, "</text>"));
    assert_int_equal(count(text, "<circle"), count(text, "</circle>"));
    assert_int_equal(count(text, "<g "), count(text, "</g>"));
    /* One marker per measured round: val in 0, 1, 3; train in 1, 3. */
    assert_int_equal(count(text, "class=\"val-point\""), 3);
    assert_int_equal(count(text, "class=\"train-point\""), 2);
    assert_non_null(strstr(text, "class=\"val-point\" data-round=\"3\""));
    assert_null(strstr(text, "class=\"val-point\" data-round=\"2\""));
    /* Bytes: one bar each way per round, all four rounds. */
    assert_int_equal(count(text, "class=\"bytes-up\""), 4);
    assert_int_equal(count(text, "class=\"bytes-down\""), 4);
    /* Both panels with axes, ticks and legends. */
    assert_non_null(strstr(text, "Loss per round"));
    assert_non_null(strstr(text, "Bytes per round"));
    assert_int_equal(count(text, "class=\"legend\""), 4);
    assert_true(count(text, "class=\"tick\"") >= 8);
    assert_non_null(strstr(text, ">validation loss<"));
    assert_non_null(strstr(text, ">bytes down<"));
    free(text);
}

static void expect_error(const char *in, const char *what)
{
    char *out = NULL;
    int rc = report(in, tu_path(dir, "bad.svg"), &out);
    printf("# %s", out);
    assert_int_equal(rc, 1);
    if (!strstr(out, what))
        fail_msg("expected '%s' in: %s", what, out);
    assert_int_equal(count(out, "error"), 1);
    assert_int_equal(count(out, "\n"), 1);
    free(out);
}

static void test_errors(void **state)
{
    (void)state;
    char expect[4400];
    snprintf(expect, sizeof expect, "cannot open %s/missing.jsonl: No such file or directory; "
             "pass a run's STATE_DIR/metrics.jsonl", dir);
    expect_error(tu_path(dir, "missing.jsonl"), expect);

    write_text("garbage.jsonl", "{\"round\":0,\"val_loss\":4.9}\n{\"round\":1,\"val_loss\":4.\n");
    snprintf(expect, sizeof expect, "%s/garbage.jsonl:2: not a JSON object", dir);
    expect_error(tu_path(dir, "garbage.jsonl"), expect);

    write_text("noround.jsonl", "{\"round\":0}\n\n{\"val_loss\":4.9}\n");
    snprintf(expect, sizeof expect, "%s/noround.jsonl:3: no number 'round'", dir);
    expect_error(tu_path(dir, "noround.jsonl"), expect);

    write_text("badloss.jsonl", "{\"round\":0,\"val_loss\":\"low\"}\n");
    snprintf(expect, sizeof expect, "%s/badloss.jsonl:1: 'val_loss' is neither a number nor null",
             dir);
    expect_error(tu_path(dir, "badloss.jsonl"), expect);

    write_text("empty.jsonl", "\n");
    expect_error(tu_path(dir, "empty.jsonl"), "has no rounds");
}

int main(void)
{
    snprintf(dir, sizeof dir, "%s", tu_tempdir("report"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_picture),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

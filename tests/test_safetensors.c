/* test_safetensors.c - safetensors reader/writer: round trip, half precision,
 * and a hand-built corrupt file for every check the reader makes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "test_util.h"

static const char *tmpdir;

/* Writes u64 header length | header | data, as a hostile or foreign writer might. */
static const char *write_raw(const char *name, const char *header, const void *data,
                             size_t data_len)
{
    const char *path = tu_path(tmpdir, name);
    size_t hlen = strlen(header);
    size_t total = 8 + hlen + data_len;
    uint8_t *buf = malloc(total);
    uint64_t n = hlen;
    memcpy(buf, &n, 8);
    memcpy(buf + 8, header, hlen);
    if (data_len)
        memcpy(buf + 8 + hlen, data, data_len);
    assert_int_equal(tu_write_file(path, buf, total), 0);
    free(buf);
    return path;
}

/* Opening `header` over `data_len` zero bytes must fail with `want` in the error. */
static void expect_open_fails(const char *header, size_t data_len, const char *want)
{
    uint8_t *zeros = calloc(data_len + 1, 1);
    const char *path = write_raw("bad.safetensors", header, zeros, data_len);
    free(zeros);
    fp_error_clear();
    fp_safetensors *st = fp_st_open(path);
    if (st || !strstr(fp_error_get(), want))
        print_error("header %s\n  error: '%s'\n  wanted: '%s'\n", header, fp_error_get(), want);
    assert_null(st);
    assert_non_null(strstr(fp_error_get(), want));
    assert_non_null(strstr(fp_error_get(), "bad.safetensors"));
}

static void test_roundtrip(void **state)
{
    float a[6] = {1, -2, 3.5f, 1e-30f, -0.0f, 65504};
    float b[4] = {0.25f, 0.5f, 0.75f, 1};
    float c[1] = {42};
    fp_st_entry e[3] = {
        {.name = "z.last", .data = a, .ndim = 2, .shape = {2, 3}},
        {.name = "a.first", .data = b, .ndim = 1, .shape = {4}},
        {.name = "scalar \"quoted\"", .data = c, .ndim = 0},
    };
    const char *meta[] = {"format", "pt", "note", "hello world", NULL};
    const char *path = tu_path(tmpdir, "rt.safetensors");
    assert_int_equal(fp_st_write_f32(path, e, 3, meta), 0);

    /* No temp file is left behind; the header is padded to 8 with spaces. */
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    assert_int_not_equal(access(tmp, F_OK), 0);
    size_t len;
    char *raw = tu_read_file(path, &len);
    assert_non_null(raw);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(len, 8 + hlen + (6 + 4 + 1) * 4);
    size_t k = 8 + hlen;
    while (raw[k - 1] == ' ')
        k--;
    assert_int_equal(raw[k - 1], '}');
    /* Tensors in the given order: z.last's key precedes a.first's. */
    assert_true(strstr(raw + 8, "z.last") < strstr(raw + 8, "a.first"));
    free(raw);

    fp_safetensors *st = fp_st_open(path);
    assert_non_null(st);
    assert_int_equal(fp_st_count(st), 3);
    assert_string_equal(fp_st_at(st, 0)->name, "z.last");
    assert_string_equal(fp_st_at(st, 1)->name, "a.first");
    assert_string_equal(fp_st_at(st, 2)->name, "scalar \"quoted\"");
    assert_null(fp_st_at(st, 3));
    assert_string_equal(fp_st_metadata(st, "format"), "pt");
    assert_string_equal(fp_st_metadata(st, "note"), "hello world");
    assert_null(fp_st_metadata(st, "absent"));
    assert_null(fp_st_find(st, "nope"));

    const fp_st_tensor *t = fp_st_find(st, "z.last");
    assert_non_null(t);
    assert_int_equal(t->dtype, FP_DT_F32);
    assert_string_equal(t->dtype_name, "F32");
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->numel, 6);
    int64_t shp[2] = {2, 3}, wrong[2] = {3, 2};
    assert_int_equal(fp_st_check_shape(st, t, 2, shp), 0);
    assert_int_equal(fp_st_check_shape(st, t, 2, wrong), -1);
    assert_non_null(strstr(fp_error_get(), "'z.last' has shape [2, 3], expected [3, 2]"));

    float got[6];
    assert_int_equal(fp_st_read_f32(st, t, got, 6), 0);
    assert_memory_equal(got, a, sizeof a);
    assert_int_equal(fp_st_read_f32(st, t, got, 5), -1);
    assert_non_null(strstr(fp_error_get(), "z.last"));
    t = fp_st_find(st, "a.first");
    assert_int_equal(fp_st_read_f32(st, t, got, 4), 0);
    assert_memory_equal(got, b, sizeof b);
    t = fp_st_find(st, "scalar \"quoted\"");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    assert_int_equal(fp_st_read_f32(st, t, got, 1), 0);
    assert_true(got[0] == 42.0f);
    fp_st_close(&st);
    assert_null(st);
    fp_st_close(&st);   /* NULL-safe */

    /* Writer refuses duplicate names. */
    fp_st_entry dup[2] = {e[1], e[1]};
    assert_int_equal(fp_st_write_f32(path, dup, 2, NULL), -1);
    assert_non_null(strstr(fp_error_get(), "twice"));
}

static void test_half_conversions(void **state)
{
    /* Spot values, subnormals, inf, nan, signed zero. */
    assert_true(fp_f16_to_f32(0x3c00) == 1.0f);
    assert_true(fp_f16_to_f32(0xc000) == -2.0f);
    assert_true(fp_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(fp_f16_to_f32(0x0001) == ldexpf(1, -24));
    assert_true(fp_f16_to_f32(0x03ff) == 1023 * ldexpf(1, -24));
    assert_true(fp_f16_to_f32(0x0400) == ldexpf(1, -14));
    assert_true(isinf(fp_f16_to_f32(0x7c00)) && fp_f16_to_f32(0x7c00) > 0);
    assert_true(isinf(fp_f16_to_f32(0xfc00)) && fp_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(fp_f16_to_f32(0x7e00)));
    assert_true(signbit(fp_f16_to_f32(0x8000)) && fp_f16_to_f32(0x8000) == 0);
    assert_true(fp_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(fp_bf16_to_f32(0x4049) == 3.140625f);
    assert_true(isinf(fp_bf16_to_f32(0x7f80)));
    assert_true(isnan(fp_bf16_to_f32(0x7fc0)));

    /* Every non-nan half and bfloat16 survives a round trip through float. */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = fp_f16_to_f32((uint16_t)h);
        if (!isnan(f) && fp_f32_to_f16(f) != h)
            fail_msg("f16 0x%04x -> %g -> 0x%04x", h, f, fp_f32_to_f16(f));
        float g = fp_bf16_to_f32((uint16_t)h);
        if (!isnan(g) && fp_f32_to_bf16(g) != h)
            fail_msg("bf16 0x%04x -> %g -> 0x%04x", h, g, fp_f32_to_bf16(g));
    }
    /* Round to nearest even, overflow, underflow, nan stays nan. */
    assert_int_equal(fp_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);
    assert_int_equal(fp_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);
    assert_int_equal(fp_f32_to_f16(70000.0f), 0x7c00);
    assert_int_equal(fp_f32_to_f16(ldexpf(1, -26)), 0x0000);
    assert_int_equal(fp_f32_to_f16(ldexpf(3, -26)), 0x0001);
    assert_true(isnan(fp_f16_to_f32(fp_f32_to_f16(NAN))));
    assert_true(isnan(fp_bf16_to_f32(fp_f32_to_bf16(NAN))));
    assert_int_equal(fp_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);
    assert_int_equal(fp_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3f82);
}

static void test_f16_bf16_files(void **state)
{
    uint16_t h[5] = {0x3c00, 0xc000, 0x0001, 0x7c00, 0x3555};
    uint16_t b[3] = {0x3f80, 0xc049, 0x0001};
    uint8_t data[16];
    memcpy(data, h, 10);
    memcpy(data + 10, b, 6);
    const char *path = write_raw(
        "half.safetensors",
        "{\"h\":{\"dtype\":\"F16\",\"shape\":[5],\"data_offsets\":[0,10]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,3],\"data_offsets\":[10,16]}}",
        data, sizeof data);
    fp_safetensors *st = fp_st_open(path);
    assert_non_null(st);
    float out[5];
    const fp_st_tensor *t = fp_st_find(st, "h");
    assert_int_equal(t->dtype, FP_DT_F16);
    assert_int_equal(fp_st_read_f32(st, t, out, 5), 0);
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == ldexpf(1, -24));
    assert_true(isinf(out[3]));
    assert_float_equal(out[4], 0.33325195f, 1e-8);
    t = fp_st_find(st, "b");
    assert_int_equal(t->dtype, FP_DT_BF16);
    assert_int_equal(fp_st_read_f32(st, t, out, 3), 0);
    assert_true(out[0] == 1.0f && out[1] == -3.140625f);
    assert_true(out[2] == fp_bf16_to_f32(0x0001) && out[2] > 0);
    fp_st_close(&st);
}

static void test_corrupt_files(void **state)
{
    /* Shorter than the 8-byte length prefix. */
    const char *p = tu_path(tmpdir, "bad.safetensors");
    assert_int_equal(tu_write_file(p, "abc", 3), 0);
    assert_null(fp_st_open(p));
    assert_non_null(strstr(fp_error_get(), "too short"));

    /* Header length claims more than the file holds. */
    uint8_t buf[16] = {0};
    uint64_t big = 1000;
    memcpy(buf, &big, 8);
    memcpy(buf + 8, "{}      ", 8);
    assert_int_equal(tu_write_file(p, buf, sizeof buf), 0);
    assert_null(fp_st_open(p));
    assert_non_null(strstr(fp_error_get(), "header length 1000 is larger than the file"));

    assert_null(fp_st_open(tu_path(tmpdir, "does-not-exist")));
    assert_non_null(strstr(fp_error_get(), "cannot open"));

    expect_open_fails("this is not json", 0, "not valid JSON");
    expect_open_fails("[1, 2]", 0, "not an object");
    expect_open_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} xx", 8,
                      "trailing");
    /* A valid header over a truncated data section. */
    expect_open_fails("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],"
                      "\"data_offsets\":[0,16]}}", 12,
                      "tensor 'model.norm.weight': data_offsets [0, 16] run past the end");
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,999999]}}",
                      8, "truncated or corrupt");
    /* end - begin disagrees with dtype x shape. */
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                      "tensor 'w': data_offsets [0, 8] hold 8 bytes but dtype F32 x 3");
    expect_open_fails("{\"w\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,4]}}", 8,
                      "needs 8");
    /* Two tensors sharing bytes. */
    expect_open_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                      "overlap");
    expect_open_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                      "appears twice");
    /* Bad shapes: negative, fractional, overflowing, absurdly large. */
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                      "shape[0] is not a non-negative integer");
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,8]}}", 8,
                      "shape[1]");
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                      "\"data_offsets\":[0,8]}}", 8, "overflows");
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[1000000000000],"
                      "\"data_offsets\":[0,8]}}", 8, "needs");
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                      "\"data_offsets\":[0,4]}}", 4, "9 dimensions");
    /* Wrong types for the fields. */
    expect_open_fails("{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                      "'dtype'");
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
                      "'shape'");
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
                      "data_offsets");
    expect_open_fails("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                      "begin <= end");
    expect_open_fails("{\"w\":[1,2]}", 0, "not a JSON object");
    /* More entries than the header's length can honestly hold. */
    expect_open_fails("{\"a\":1,\"b\":2,\"c\":3,\"d\":4}", 0, "claims 4 entries");
    expect_open_fails("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ key 'k'");
}

static void test_unreadable_dtypes(void **state)
{
    /* I32 and an unknown dtype open fine but cannot be read as float32. */
    uint8_t data[12] = {0};
    const char *path = write_raw(
        "ints.safetensors",
        "{\"ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"q\":{\"dtype\":\"Q4_X\",\"shape\":[8],\"data_offsets\":[8,12]}}",
        data, sizeof data);
    fp_safetensors *st = fp_st_open(path);
    assert_non_null(st);
    float out[8];
    const fp_st_tensor *t = fp_st_find(st, "ids");
    assert_int_equal(t->dtype, FP_DT_OTHER);
    assert_int_equal(fp_st_read_f32(st, t, out, 2), -1);
    assert_non_null(strstr(fp_error_get(), "tensor 'ids': dtype I32 cannot be read as float32"));
    t = fp_st_find(st, "q");
    assert_int_equal(fp_st_read_f32(st, t, out, 8), -1);
    assert_non_null(strstr(fp_error_get(), "Q4_X"));
    fp_st_close(&st);
}

int main(void)
{
    tmpdir = strdup(tu_tempdir("safetensors"));   /* tu_* buffers rotate */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_half_conversions),
        cmocka_unit_test(test_f16_bf16_files),
        cmocka_unit_test(test_corrupt_files),
        cmocka_unit_test(test_unreadable_dtypes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_model_map.c - the mapped load (fp_model_load_dtype): every f32 weight
 * that can be is used in place from the read-only mapping of model.safetensors
 * (checked against /proc/self/maps), the loss and LoRA gradients are bitwise
 * those of the copied load (fp_model_load), quantizing from the mapping gives
 * exactly what quantizing the copy gives, the hash is the copy's, anonymous
 * memory does not grow by a second copy of the weights, and fp_model_own
 * gives a writable private copy that computes the same. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "test_util.h"
#include "train.h"

/* A random GQA model (untied head) saved under a fresh directory. */
static const char *saved_model(const char *tag, int dim, int layers, int hidden, int vocab)
{
    fp_model *m = tu_gqa_model("LlamaForCausalLM", dim, layers, hidden, vocab, 0, 7);
    assert_non_null(m);
    const char *dir = tu_tempdir(tag);
    assert_int_equal(fp_model_save(m, dir), 0);
    fp_model_free(&m);
    return dir;
}

/* Is p inside a mapping of a file whose path ends with `file`? */
static int in_file_mapping(const void *p, const char *file)
{
    FILE *f = fopen("/proc/self/maps", "r");
    assert_non_null(f);
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char path[3000] = "";
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %2999s", &lo, &hi, path) < 2)
            continue;
        size_t n = strlen(path), k = strlen(file);
        found = (uintptr_t)p >= lo && (uintptr_t)p < hi && n >= k && !strcmp(path + n - k, file);
    }
    fclose(f);
    return found;
}

static long rss_anon_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    assert_non_null(f);
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "RssAnon: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* Loss and gradient of a fixed LoRA on every target, on fixed tokens. */
static float loss_grad(const fp_model *m, float *g, size_t *n_out)
{
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = 2;
    lc.targets = (1u << FP_T_COUNT) - 1;
    fp_lora *lo = fp_lora_new(&m->cfg, &lc);
    assert_non_null(lo);
    fp_rng r;
    fp_rng_seed(&r, 3);
    for (size_t i = 0; i < lo->n_params; i++)
        lo->params[i] = 0.2f * (2.0f * fp_rng_float(&r) - 1.0f);
    enum { B = 2, T = 24 };
    int32_t in[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) {
        in[i] = (int32_t)fp_rng_below(&r, (uint32_t)m->cfg.vocab_size);
        tg[i] = (int32_t)fp_rng_below(&r, (uint32_t)m->cfg.vocab_size);
    }
    fp_train *tr = fp_train_new(m, lo, B, T);
    assert_non_null(tr);
    if (g)
        memset(g, 0, lo->n_params * sizeof *g);
    float l = fp_train_step(tr, in, tg, g, 1.0f, 0, NULL);
    assert_true(isfinite(l));
    *n_out = lo->n_params;
    fp_train_free(&tr);
    fp_lora_free(&lo);
    return l;
}

static void check_same(const fp_model *a, const fp_model *b)
{
    static float ga[1 << 16], gb[1 << 16];
    size_t na, nb;
    float la = loss_grad(a, ga, &na), lb = loss_grad(b, gb, &nb);
    assert_true(na <= sizeof ga / sizeof ga[0]);
    assert_int_equal(na, nb);
    printf("# loss %.7f vs %.7f\n", la, lb);
    assert_memory_equal(&la, &lb, sizeof la);
    assert_memory_equal(ga, gb, na * sizeof *ga);
}

static void test_f32_in_place(void **state)
{
    (void)state;
    const char *dir = saved_model("map_f32", 64, 3, 160, 96);
    fp_model *cp = fp_model_load(dir), *mp = fp_model_load_dtype(dir, FP_BASE_F32);
    assert_non_null(cp);
    assert_non_null(mp);
    assert_non_null(mp->map);
    for (int l = 0; l < 3; l++)
        for (int t = 0; t < FP_T_COUNT; t++)
            assert_true(in_file_mapping(fp_model_qmat(mp, l, t).data, "/model.safetensors"));
    assert_true(in_file_mapping(mp->w.tok_emb, "/model.safetensors"));
    assert_true(in_file_mapping(mp->w.lm_head, "/model.safetensors"));
    assert_false(in_file_mapping(mp->w.rms_att, "/model.safetensors"));
    assert_false(in_file_mapping(fp_model_qmat(cp, 0, 0).data, "/model.safetensors"));
    /* All but the norms are in place; the totals agree with the copy. */
    assert_int_equal(mp->n_floats, (size_t)(2 * 3 + 1) * 64);
    assert_int_equal(fp_model_bytes(mp), fp_model_bytes(cp));
    char h1[65], h2[65];
    fp_model_hash(cp, h1);
    fp_model_hash(mp, h2);
    assert_string_equal(h1, h2);
    check_same(cp, mp);
    /* A private copy is writable and still computes the same. */
    assert_int_equal(fp_model_own(mp), 0);
    assert_null(mp->map);
    assert_null(mp->qm);
    mp->w.wq[0] = mp->w.wq[0];
    fp_model_hash(mp, h2);
    assert_string_equal(h1, h2);
    check_same(cp, mp);
    fp_model_free(&cp);
    fp_model_free(&mp);
}

/* Quantizing from the mapping (no f32 copy) equals quantizing the copy. */
static void test_quantized_from_mapping(void **state)
{
    (void)state;
    const char *dir = saved_model("map_q", 64, 2, 160, 96);
    for (int dt = FP_BASE_BF16; dt <= FP_BASE_NF4; dt++) {
        fp_model *cp = fp_model_load(dir), *mp = fp_model_load_dtype(dir, (fp_base_dtype)dt);
        assert_non_null(cp);
        assert_non_null(mp);
        char h1[65], h2[65];
        fp_model_hash(cp, h1);
        assert_int_equal(fp_model_quantize(cp, (fp_base_dtype)dt), 0);
        fp_model_hash(mp, h2);
        assert_string_equal(h1, h2);
        assert_int_equal(fp_model_bytes(cp), fp_model_bytes(mp));
        assert_false(in_file_mapping(fp_model_qmat(mp, 1, FP_T_DOWN).data, "/model.safetensors"));
        /* the tables are converted too (fp_table_dtype), not read in place */
        fp_qmat e = fp_model_emb(mp);
        assert_null(mp->w.tok_emb);
        assert_int_equal(e.dt, fp_table_dtype((fp_base_dtype)dt));
        assert_false(in_file_mapping(e.data, "/model.safetensors"));
        assert_int_not_equal(fp_model_own(mp), 0);  /* nothing f32 to write into */
        check_same(cp, mp);
        fp_model_free(&cp);
        fp_model_free(&mp);
    }
}

/* stories260K (llama2.c weights converted to HF, tied embeddings). */
static void test_stories_mapped(void **state)
{
    (void)state;
    fp_model *src = fp_llama2c_load(FP_SOURCE_DIR "/data/stories260K/stories260K.bin");
    assert_non_null(src);
    const char *dir = tu_tempdir("map_stories");
    assert_int_equal(fp_model_save(src, dir), 0);
    fp_model *mp = fp_model_load_dtype(dir, FP_BASE_F32);
    assert_non_null(mp);
    assert_true(mp->w.lm_head == mp->w.tok_emb);
    assert_true(in_file_mapping(mp->w.tok_emb, "/model.safetensors"));
    check_same(src, mp);
    fp_model_free(&src);
    fp_model_free(&mp);
}

/* The mapped load adds no anonymous copy of the weights: RssAnon grows by the
 * norms and bookkeeping only, where the copied load grows by all of it. */
static void test_no_second_copy(void **state)
{
    (void)state;
    const char *dir = saved_model("map_rss", 256, 4, 1024, 8192);
    long a0 = rss_anon_kb();
    fp_model *mp = fp_model_load_dtype(dir, FP_BASE_F32);
    assert_non_null(mp);
    long a1 = rss_anon_kb();
    fp_model *cp = fp_model_load(dir);
    assert_non_null(cp);
    long a2 = rss_anon_kb();
    long weights_kb = (long)(fp_model_bytes(cp) >> 10);
    printf("# weights %ld kB; RssAnon +%ld kB mapped, +%ld kB copied\n", weights_kb, a1 - a0,
           a2 - a1);
    assert_true(a0 >= 0);
    assert_true(a1 - a0 < weights_kb / 10);
    assert_true(a2 - a1 > weights_kb * 9 / 10);
    fp_model_free(&mp);
    fp_model_free(&cp);
}

/* Rewrites dir/model.safetensors with every tensor as BF16 (the form Hugging
 * Face ships), data 8-byte aligned. */
static void to_bf16(const char *dir)
{
    char path[4096], tmp[4100];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.bf16", path);
    fp_safetensors *st = fp_st_open(path);
    assert_non_null(st);
    size_t n = fp_st_count(st), cap = 256 * n + 64, at = 0, off = 0;
    char *hdr = malloc(cap);
    assert_non_null(hdr);
    at += (size_t)snprintf(hdr + at, cap - at, "{");
    for (size_t i = 0; i < n; i++) {
        const fp_st_tensor *t = fp_st_at(st, i);
        at += (size_t)snprintf(hdr + at, cap - at, "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":[%lld",
                               i ? "," : "", t->name, (long long)t->shape[0]);
        if (t->ndim == 2)
            at += (size_t)snprintf(hdr + at, cap - at, ",%lld", (long long)t->shape[1]);
        at += (size_t)snprintf(hdr + at, cap - at, "],\"data_offsets\":[%zu,%zu]}", off,
                               off + 2 * t->numel);
        off += 2 * t->numel;
    }
    at += (size_t)snprintf(hdr + at, cap - at, "}");
    while (at % 8)
        hdr[at++] = ' ';
    FILE *f = fopen(tmp, "wb");
    assert_non_null(f);
    uint64_t len = at;      /* little-endian on every machine this runs on */
    assert_int_equal(fwrite(&len, 8, 1, f), 1);
    assert_int_equal(fwrite(hdr, 1, at, f), at);
    for (size_t i = 0; i < n; i++) {
        const fp_st_tensor *t = fp_st_at(st, i);
        float *x = malloc(t->numel * sizeof *x);
        assert_non_null(x);
        assert_int_equal(fp_st_read_f32(st, t, x, t->numel), 0);
        for (size_t j = 0; j < t->numel; j++) {
            uint16_t h = fp_f32_to_bf16(x[j]);
            assert_int_equal(fwrite(&h, 2, 1, f), 1);
        }
        free(x);
    }
    assert_int_equal(fclose(f), 0);
    free(hdr);
    fp_st_close(&st);
    assert_int_equal(rename(tmp, path), 0);
}

/* From a BF16 file: a bf16 base reads every matrix and both tables in place;
 * int8 and nf4 convert chunk by chunk (the 40000-row tables take three
 * chunks) and equal quantizing the copied load, hash included. */
static void test_bf16_source(void **state)
{
    (void)state;
    const char *dir = saved_model("map_bf16", 64, 2, 160, 40000);
    to_bf16(dir);
    for (int dt = FP_BASE_BF16; dt <= FP_BASE_NF4; dt++) {
        fp_model *cp = fp_model_load(dir), *mp = fp_model_load_dtype(dir, (fp_base_dtype)dt);
        assert_non_null(cp);
        assert_non_null(mp);
        char h1[65], h2[65];
        fp_model_hash(cp, h1);
        assert_int_equal(fp_model_quantize(cp, (fp_base_dtype)dt), 0);
        fp_model_hash(mp, h2);
        assert_string_equal(h1, h2);
        assert_int_equal(fp_model_bytes(cp), fp_model_bytes(mp));
        int in = dt == FP_BASE_BF16;
        assert_int_equal(in_file_mapping(fp_model_qmat(mp, 1, FP_T_DOWN).data, "/model.safetensors"), in);
        assert_int_equal(in_file_mapping(fp_model_head(mp).data, "/model.safetensors"),
                         fp_table_dtype((fp_base_dtype)dt) == FP_BASE_BF16);
        check_same(cp, mp);
        fp_model_free(&cp);
        fp_model_free(&mp);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_in_place),
        cmocka_unit_test(test_quantized_from_mapping),
        cmocka_unit_test(test_stories_mapped),
        cmocka_unit_test(test_no_second_copy),
        /* last: after its large frees glibc serves big allocations from heap
         * pages already resident, so the RssAnon growth above would not show */
        cmocka_unit_test(test_bf16_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_model_load.c - config.json parsing, model save/load (single, sharded,
 * F16), the errors a user meets with a wrong checkpoint, and the llama2.c
 * importer against the shared stories260K checkpoint. */
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

#include "model.h"
#include "safetensors.h"
#include "test_util.h"

static char *tmproot;   /* tu_* return rotating buffers: keep our own copy */

static const char *dir_for(const char *tag)
{
    static char bufs[4][4096];
    static int next;
    char *p = bufs[next++ & 3];
    snprintf(p, 4096, "%s/%s", tmproot, tag);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", p, p);
    assert_int_equal(system(cmd), 0);
    return p;
}

static fp_model_config small_cfg(const char *arch, int tied)
{
    fp_model_config c = {0};
    snprintf(c.arch, sizeof c.arch, "%s", arch);
    c.dim = 16;
    c.hidden_dim = 40;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.vocab_size = 32;
    c.max_seq_len = 64;
    c.rms_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_embeddings = tied;
    c.qkv_bias = strcmp(arch, "Qwen2ForCausalLM") == 0;
    c.bos_id = 1;
    c.eos_id = 2;
    return c;
}

static fp_model *random_model(const char *arch, int tied, uint64_t seed)
{
    fp_model_config c = small_cfg(arch, tied);
    fp_model *m = fp_model_new(&c);
    assert_non_null(m);
    fp_model_randomize(m, seed, 0.5f);
    return m;
}

static void assert_same_model(const fp_model *a, const fp_model *b)
{
    assert_memory_equal(&a->cfg, &b->cfg, sizeof a->cfg);
    assert_int_equal(a->n_floats, b->n_floats);
    assert_memory_equal(a->slab, b->slab, a->n_floats * sizeof(float));
}

/* Copies src (a safetensors file) to dst, dropping tensor `drop` and/or
 * flattening tensor `flatten` to 1-D (same bytes, wrong shape). With neither,
 * adds an unknown extra tensor (as old HF checkpoints carry inv_freq). */
static void rewrite_st(const char *src, const char *dst, const char *drop, const char *flatten)
{
    fp_safetensors *st = fp_st_open(src);
    assert_non_null(st);
    size_t n = fp_st_count(st), k = 0;
    fp_st_entry *e = calloc(n + 1, sizeof *e);
    if (!drop && !flatten) {
        float *d = calloc(4, sizeof(float));
        e[k++] = (fp_st_entry){.name = "model.layers.0.self_attn.rotary_emb.inv_freq",
                               .data = d, .ndim = 1, .shape = {4}};
    }
    for (size_t i = 0; i < n; i++) {
        const fp_st_tensor *t = fp_st_at(st, i);
        if (drop && strcmp(t->name, drop) == 0)
            continue;
        float *d = malloc(t->numel * sizeof(float) + 1);
        assert_int_equal(fp_st_read_f32(st, t, d, t->numel), 0);
        e[k] = (fp_st_entry){.name = t->name, .data = d, .ndim = t->ndim};
        memcpy(e[k].shape, t->shape, sizeof t->shape);
        if (flatten && strcmp(t->name, flatten) == 0) {
            e[k].ndim = 1;
            e[k].shape[0] = (int64_t)t->numel;
        }
        k++;
    }
    assert_int_equal(fp_st_write_f32(dst, e, k, NULL), 0);
    for (size_t i = 0; i < k; i++)
        free((void *)e[i].data);
    free(e);
    fp_st_close(&st);
}

static void write_text(const char *path, const char *text)
{
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
}

/* Loading `dir` must fail with every one of the (NULL-terminated) substrings. */
static void expect_load_fails(const char *dir, ...)
{
    fp_error_clear();
    fp_model *m = fp_model_load(dir);
    assert_null(m);
    va_list ap;
    va_start(ap, dir);
    for (const char *s; (s = va_arg(ap, const char *));)
        if (!strstr(fp_error_get(), s))
            fail_msg("error '%s' lacks '%s'", fp_error_get(), s);
    va_end(ap);
}

static void test_save_load_roundtrip(void **state)
{
    for (int tied = 0; tied <= 1; tied++) {
        fp_model *m = random_model("LlamaForCausalLM", tied, 7);
        if (tied)
            assert_ptr_equal(m->w.lm_head, m->w.tok_emb);
        else
            assert_ptr_equal(m->w.lm_head, m->w.rms_final + m->cfg.dim);   /* last in slab */
        assert_null(m->w.bq);
        const char *dir = dir_for("rt/nested");   /* save creates parents */
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        assert_int_equal(system(cmd), 0);
        assert_int_equal(fp_model_save(m, dir), 0);
        fp_model *r = fp_model_load(dir);
        if (!r)
            fail_msg("%s", fp_error_get());
        assert_same_model(m, r);
        assert_int_equal(r->w.lm_head == r->w.tok_emb, tied);

        /* Tied models do not store lm_head; the file carries format=pt. */
        fp_safetensors *st = fp_st_open(tu_path(dir, "model.safetensors"));
        assert_non_null(st);
        assert_int_equal(fp_st_find(st, "lm_head.weight") == NULL, tied);
        assert_string_equal(fp_st_metadata(st, "format"), "pt");
        fp_st_close(&st);
        char *cfg = tu_read_file(tu_path(dir, "config.json"), NULL);
        assert_non_null(strstr(cfg, "\"model_type\":\t\"llama\""));
        assert_non_null(strstr(cfg, "\"torch_dtype\":\t\"float32\""));
        assert_non_null(strstr(cfg, "\"rms_norm_eps\":\t1e-05"));
        free(cfg);
        fp_model_free(&m);
        fp_model_free(&r);
        assert_null(r);
    }
}

static void test_randomize(void **state)
{
    fp_model *a = random_model("LlamaForCausalLM", 0, 1);
    fp_model *b = random_model("LlamaForCausalLM", 0, 1);
    fp_model *c = random_model("LlamaForCausalLM", 0, 2);
    assert_memory_equal(a->slab, b->slab, a->n_floats * sizeof(float));
    assert_memory_not_equal(a->slab, c->slab, a->n_floats * sizeof(float));
    for (int i = 0; i < a->cfg.dim; i++)
        assert_true(fabsf(a->w.rms_final[i] - 1.0f) <= 0.1f);
    float mx = 0;
    for (size_t i = 0; i < (size_t)a->cfg.dim * a->cfg.dim; i++)
        mx = fmaxf(mx, fabsf(a->w.wq[i]));
    assert_true(mx <= 0.5f && mx > 0.4f);
    fp_model_free(&a);
    fp_model_free(&b);
    fp_model_free(&c);
}

static void test_sharded(void **state)
{
    fp_model *m = random_model("LlamaForCausalLM", 0, 3);
    const char *src = dir_for("shard-src");
    assert_int_equal(fp_model_save(m, src), 0);
    const char *dst = dir_for("shard-dst");
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/'", src, dst);
    assert_int_equal(system(cmd), 0);

    /* Split the tensors over two shards and write the index by hand. */
    fp_safetensors *st = fp_st_open(tu_path(src, "model.safetensors"));
    assert_non_null(st);
    size_t n = fp_st_count(st), half = n / 2;
    fp_st_entry *e = calloc(n, sizeof *e);
    size_t cap = 64 * n + 256, len = 0;
    char *idx = malloc(cap);
    len += (size_t)snprintf(idx, cap, "{\"metadata\":{\"total_size\":%zu},\"weight_map\":{",
                            m->n_floats * 4);
    for (size_t i = 0; i < n; i++) {
        const fp_st_tensor *t = fp_st_at(st, i);
        float *d = malloc(t->numel * sizeof(float));
        assert_int_equal(fp_st_read_f32(st, t, d, t->numel), 0);
        e[i] = (fp_st_entry){.name = t->name, .data = d, .ndim = t->ndim};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        len += (size_t)snprintf(idx + len, cap - len, "%s\"%s\":\"model-0000%d-of-00002."
                                "safetensors\"", i ? "," : "", t->name, i < half ? 1 : 2);
    }
    snprintf(idx + len, cap - len, "}}");
    assert_int_equal(fp_st_write_f32(tu_path(dst, "model-00001-of-00002.safetensors"), e,
                                     half, NULL), 0);
    assert_int_equal(fp_st_write_f32(tu_path(dst, "model-00002-of-00002.safetensors"),
                                     e + half, n - half, NULL), 0);
    write_text(tu_path(dst, "model.safetensors.index.json"), idx);

    fp_model *r = fp_model_load(dst);
    if (!r)
        fail_msg("%s", fp_error_get());
    assert_same_model(m, r);
    fp_model_free(&r);

    /* The index points at a shard that lacks the tensor. */
    assert_int_equal(fp_st_write_f32(tu_path(dst, "model-00002-of-00002.safetensors"),
                                     e + half, n - half - 1, NULL), 0);
    expect_load_fails(dst, "is listed in", e[n - 1].name, "absent from the shard", NULL);
    /* A shard the index names is missing. */
    assert_int_equal(unlink(tu_path(dst, "model-00001-of-00002.safetensors")), 0);
    expect_load_fails(dst, "model-00001-of-00002.safetensors", "cannot open", NULL);

    for (size_t i = 0; i < n; i++)
        free((void *)e[i].data);
    free(e);
    free(idx);
    fp_st_close(&st);
    fp_model_free(&m);
}

/* Writes m's tensors as F16 with a header built by hand. */
static void write_f16_checkpoint(const fp_model *m, const char *dir)
{
    const char *src = dir_for("f16-src");
    assert_int_equal(fp_model_save(m, src), 0);
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/'", src, dir);
    assert_int_equal(system(cmd), 0);
    fp_safetensors *st = fp_st_open(tu_path(src, "model.safetensors"));
    size_t n = fp_st_count(st), cap = 128 * n + 64, hl = 0, off = 0;
    char *hdr = malloc(cap);
    uint16_t *data = malloc(m->n_floats * 2);
    hl += (size_t)snprintf(hdr, cap, "{");
    for (size_t i = 0; i < n; i++) {
        const fp_st_tensor *t = fp_st_at(st, i);
        float *f = malloc(t->numel * sizeof(float));
        assert_int_equal(fp_st_read_f32(st, t, f, t->numel), 0);
        for (size_t j = 0; j < t->numel; j++)
            data[off / 2 + j] = fp_f32_to_f16(f[j]);
        free(f);
        hl += (size_t)snprintf(hdr + hl, cap - hl, "%s\"%s\":{\"dtype\":\"F16\",\"shape\":[%lld",
                               i ? "," : "", t->name, (long long)t->shape[0]);
        if (t->ndim == 2)
            hl += (size_t)snprintf(hdr + hl, cap - hl, ",%lld", (long long)t->shape[1]);
        hl += (size_t)snprintf(hdr + hl, cap - hl, "],\"data_offsets\":[%zu,%zu]}", off,
                               off + 2 * t->numel);
        off += 2 * t->numel;
    }
    hl += (size_t)snprintf(hdr + hl, cap - hl, "}");
    FILE *f = fopen(tu_path(dir, "model.safetensors"), "wb");
    uint64_t h64 = hl;
    assert_int_equal(fwrite(&h64, 8, 1, f), 1);
    assert_int_equal(fwrite(hdr, 1, hl, f), hl);
    assert_int_equal(fwrite(data, 1, off, f), off);
    assert_int_equal(fclose(f), 0);
    free(hdr);
    free(data);
    fp_st_close(&st);
}

static void test_f16_checkpoint(void **state)
{
    fp_model *m = random_model("LlamaForCausalLM", 1, 4);
    const char *dir = dir_for("f16");
    write_f16_checkpoint(m, dir);
    fp_model *r = fp_model_load(dir);
    if (!r)
        fail_msg("%s", fp_error_get());
    /* Expected: every weight rounded through half precision. */
    for (size_t i = 0; i < m->n_floats; i++)
        m->slab[i] = fp_f16_to_f32(fp_f32_to_f16(m->slab[i]));
    assert_same_model(m, r);
    fp_model_free(&m);
    fp_model_free(&r);
}

static void test_load_errors(void **state)
{
    fp_model *m = random_model("LlamaForCausalLM", 0, 5);
    const char *good = dir_for("err-good");
    assert_int_equal(fp_model_save(m, good), 0);
    const char *gst = tu_path(good, "model.safetensors");
    char gst_copy[4096];
    snprintf(gst_copy, sizeof gst_copy, "%s", gst);
    const char *dir = dir_for("err");
    char cmd[8400];

    /* No config.json. */
    expect_load_fails(dir, "config.json", "cannot open", NULL);
    snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/'", good, dir);
    assert_int_equal(system(cmd), 0);
    /* No weights at all. */
    expect_load_fails(dir, "model.safetensors", "cannot open", NULL);

    rewrite_st(gst_copy, tu_path(dir, "model.safetensors"), "model.layers.1.mlp.up_proj.weight",
               NULL);
    expect_load_fails(dir, "/model.safetensors: missing tensor "
                      "'model.layers.1.mlp.up_proj.weight' (wrong base model, or not a "
                      "LlamaForCausalLM checkpoint?)", NULL);
    rewrite_st(gst_copy, tu_path(dir, "model.safetensors"), "lm_head.weight", NULL);
    expect_load_fails(dir, "missing tensor 'lm_head.weight'", NULL);
    rewrite_st(gst_copy, tu_path(dir, "model.safetensors"), NULL,
               "model.layers.0.self_attn.k_proj.weight");
    expect_load_fails(dir, "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [128], "
                      "expected [8, 16]", NULL);

    /* An intact copy loads, and extra unknown tensors are ignored. */
    rewrite_st(gst_copy, tu_path(dir, "model.safetensors"), NULL, NULL);
    fp_model *ok = fp_model_load(dir);
    assert_non_null(ok);
    assert_same_model(m, ok);
    fp_model_free(&ok);

    /* Tied in config.json but lm_head.weight present anyway: it is ignored. */
    snprintf(cmd, sizeof cmd, "sed -i 's/\"tie_word_embeddings\":\tfalse/"
             "\"tie_word_embeddings\":\ttrue/' '%s/config.json'", dir);
    assert_int_equal(system(cmd), 0);
    ok = fp_model_load(dir);
    if (!ok)
        fail_msg("%s", fp_error_get());
    assert_int_equal(ok->cfg.tie_embeddings, 1);
    assert_ptr_equal(ok->w.lm_head, ok->w.tok_emb);
    assert_memory_equal(ok->slab, m->slab, ok->n_floats * sizeof(float));
    fp_model_free(&ok);

    /* A config for a bigger model than the weights names the first mismatch. */
    snprintf(cmd, sizeof cmd, "sed -i 's/\"vocab_size\":\t32/\"vocab_size\":\t64/' "
             "'%s/config.json'", dir);
    assert_int_equal(system(cmd), 0);
    expect_load_fails(dir, "'model.embed_tokens.weight' has shape [32, 16], expected [64, 16]",
                      NULL);
    fp_model_free(&m);
}

/* Writes config.json: valid base fields, any of them overridden by `extra`. */
static const char *config_with(const char *arch, const char *extra)
{
    static const char *base[][2] = {
        {"hidden_size", "16"}, {"intermediate_size", "40"}, {"num_hidden_layers", "2"},
        {"num_attention_heads", "4"}, {"vocab_size", "32"},
    };
    const char *dir = dir_for("cfg");
    char text[2048], key[64];
    size_t n = (size_t)snprintf(text, sizeof text, "{\"architectures\": [\"%s\"]", arch);
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) {
        snprintf(key, sizeof key, "\"%s\"", base[i][0]);
        if (!strstr(extra, key))
            n += (size_t)snprintf(text + n, sizeof text - n, ", %s: %s", key, base[i][1]);
    }
    snprintf(text + n, sizeof text - n, "%s%s}", *extra ? ", " : "", extra);
    const char *path = tu_path(dir, "config.json");
    write_text(path, text);
    return path;
}

static void expect_config_fails(const char *arch, const char *extra, const char *want)
{
    fp_model_config c;
    const char *path = config_with(arch, extra);
    fp_error_clear();
    if (fp_config_load(path, &c) != -1)
        fail_msg("config with %s was accepted", extra);
    if (!strstr(fp_error_get(), want) || !strstr(fp_error_get(), "config.json"))
        fail_msg("error '%s' lacks '%s'", fp_error_get(), want);
}

static void test_config(void **state)
{
    fp_model_config c;
    /* Defaults. */
    assert_int_equal(fp_config_load(config_with("LlamaForCausalLM", ""), &c), 0);
    assert_int_equal(c.n_kv_heads, 4);
    assert_true(c.rms_eps == 1e-6f);
    assert_true(c.rope_theta == 10000.0f);
    assert_int_equal(c.max_seq_len, 2048);
    assert_int_equal(c.tie_embeddings, 0);
    assert_int_equal(c.qkv_bias, 0);
    assert_int_equal(c.bos_id, -1);
    assert_int_equal(c.eos_id, -1);
    /* Explicit values, eos as a list, nulls mean default. */
    assert_int_equal(fp_config_load(config_with("MistralForCausalLM",
        "\"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-5, \"rope_theta\": 500000.0,"
        "\"max_position_embeddings\": 128, \"tie_word_embeddings\": true, \"bos_token_id\": 1,"
        "\"eos_token_id\": [2, 7], \"sliding_window\": null, \"rope_scaling\": null"), &c), 0);
    assert_string_equal(c.arch, "MistralForCausalLM");
    assert_int_equal(c.n_kv_heads, 2);
    assert_true(c.rms_eps == 1e-5f && c.rope_theta == 500000.0f);
    assert_int_equal(c.max_seq_len, 128);
    assert_int_equal(c.tie_embeddings, 1);
    assert_int_equal(c.bos_id, 1);
    assert_int_equal(c.eos_id, 2);
    /* Qwen2 implies q/k/v biases; Llama gets them from attention_bias. */
    assert_int_equal(fp_config_load(config_with("Qwen2ForCausalLM", ""), &c), 0);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(fp_config_load(config_with("LlamaForCausalLM", "\"attention_bias\": true"),
                                    &c), 0);
    assert_int_equal(c.qkv_bias, 1);
    /* Sliding window large enough to never apply is accepted. */
    assert_int_equal(fp_config_load(config_with("MistralForCausalLM",
        "\"sliding_window\": 4096, \"max_position_embeddings\": 4096"), &c), 0);

    expect_config_fails("GPT2LMHeadModel", "", "unsupported architecture GPT2LMHeadModel; "
                        "fedpeft supports LlamaForCausalLM");
    expect_config_fails("LlamaForCausalLM", "\"hidden_size\": \"16\"", "'hidden_size' must be "
                        "an integer, got a string");
    expect_config_fails("LlamaForCausalLM", "\"rms_norm_eps\": \"1e-5\"", "'rms_norm_eps'");
    expect_config_fails("LlamaForCausalLM", "\"tie_word_embeddings\": 1",
                        "'tie_word_embeddings' must be true or false");
    expect_config_fails("LlamaForCausalLM", "\"num_key_value_heads\": 2.5",
                        "'num_key_value_heads'");
    expect_config_fails("LlamaForCausalLM", "\"num_key_value_heads\": 3", "not divisible");
    expect_config_fails("MistralForCausalLM", "\"sliding_window\": 4096, "
                        "\"max_position_embeddings\": 32768", "sliding");
    expect_config_fails("LlamaForCausalLM", "\"rope_scaling\": {\"type\": \"linear\"}",
                        "rope_scaling");
    expect_config_fails("LlamaForCausalLM", "\"hidden_act\": \"gelu\"", "hidden_act");
    expect_config_fails("LlamaForCausalLM", "\"eos_token_id\": 99", "outside the vocabulary");

    /* Missing required key, and a file that is not JSON. */
    const char *dir = dir_for("cfg2");
    const char *path = tu_path(dir, "config.json");
    write_text(path, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 16}");
    assert_int_equal(fp_config_load(path, &c), -1);
    assert_non_null(strstr(fp_error_get(), "required key 'intermediate_size' is missing"));
    write_text(path, "{\"architectures\": [");
    assert_int_equal(fp_config_load(path, &c), -1);
    assert_non_null(strstr(fp_error_get(), "not valid JSON"));
}

static void test_qwen2_biases(void **state)
{
    fp_model *m = random_model("Qwen2ForCausalLM", 1, 6);
    assert_non_null(m->w.bq);
    assert_non_null(m->w.bk);
    assert_non_null(m->w.bv);
    assert_ptr_equal(m->w.bk, m->w.bq + 2 * 16);
    const char *dir = dir_for("qwen");
    assert_int_equal(fp_model_save(m, dir), 0);
    char *cfg = tu_read_file(tu_path(dir, "config.json"), NULL);
    assert_non_null(strstr(cfg, "\"qwen2\""));
    free(cfg);
    fp_model *r = fp_model_load(dir);
    if (!r)
        fail_msg("%s", fp_error_get());
    assert_int_equal(r->cfg.qkv_bias, 1);
    assert_same_model(m, r);
    assert_memory_equal(r->w.bv, m->w.bv, 2 * 8 * sizeof(float));
    fp_model_free(&r);

    char src[4096];
    snprintf(src, sizeof src, "%s/model.safetensors", dir);
    const char *d2 = dir_for("qwen-missing");
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/'", dir, d2);
    assert_int_equal(system(cmd), 0);
    rewrite_st(src, tu_path(d2, "model.safetensors"), "model.layers.1.self_attn.k_proj.bias",
               NULL);
    expect_load_fails(d2, "missing tensor 'model.layers.1.self_attn.k_proj.bias'",
                      "Qwen2ForCausalLM", NULL);
    fp_model_free(&m);
}

static void test_llama_attention_bias(void **state)
{
    /* HF Llama with attention_bias also has o_proj.bias: saved as zeros,
     * accepted when zero, refused when not. */
    fp_model_config c = small_cfg("LlamaForCausalLM", 1);
    c.qkv_bias = 1;
    fp_model *m = fp_model_new(&c);
    fp_model_randomize(m, 9, 0.3f);
    const char *dir = dir_for("llama-bias");
    assert_int_equal(fp_model_save(m, dir), 0);
    fp_safetensors *st = fp_st_open(tu_path(dir, "model.safetensors"));
    assert_non_null(fp_st_find(st, "model.layers.1.self_attn.o_proj.bias"));
    fp_st_close(&st);
    fp_model *r = fp_model_load(dir);
    assert_non_null(r);
    assert_same_model(m, r);
    fp_model_free(&r);
    fp_model_free(&m);
}

/* ---- llama2.c ------------------------------------------------------------ */

static const char *stories(void)
{
    return FP_SOURCE_DIR "/data/stories260K/stories260K.bin";   /* the bundled copy */
}

static void test_llama2c(void **state)
{
    fp_model *m = fp_llama2c_load(stories());
    if (!m)
        fail_msg("%s", fp_error_get());
    const fp_model_config *c = &m->cfg;
    assert_string_equal(c->arch, "LlamaForCausalLM");
    assert_int_equal(c->dim, 64);
    assert_int_equal(c->hidden_dim, 172);
    assert_int_equal(c->n_layers, 5);
    assert_int_equal(c->n_heads, 8);
    assert_int_equal(c->n_kv_heads, 4);
    assert_int_equal(c->vocab_size, 512);
    assert_int_equal(c->max_seq_len, 512);
    assert_int_equal(c->tie_embeddings, 1);
    assert_ptr_equal(m->w.lm_head, m->w.tok_emb);
    assert_true(c->rms_eps == 1e-5f);
    assert_int_equal(c->bos_id, 1);
    assert_int_equal(c->eos_id, 2);
    assert_int_equal(m->n_floats, 260032);

    /* Check against the raw file read here. */
    size_t len;
    char *raw = tu_read_file(stories(), &len);
    assert_int_equal(len, 1056540);
    const float *f = (const float *)(raw + 28);
    const size_t D = 64, L = 5, V = 512, KV = 32, H = 172, hd = 8;
    const float *wq = f + V * D + L * D;
    const float *wk = wq + L * D * D;
    const float *wv = wk + L * KV * D;
    const float *wo = wv + L * KV * D;
    const float *rms_ffn = wo + L * D * D;
    const float *w1 = rms_ffn + L * D, *w2 = w1 + L * H * D, *w3 = w2 + L * D * H;
    const float *rms_final = w3 + L * H * D;
    assert_memory_equal(m->w.tok_emb, f, V * D * 4);
    assert_memory_equal(m->w.wv, wv, L * KV * D * 4);
    assert_memory_equal(m->w.wo, wo, L * D * D * 4);
    assert_memory_equal(m->w.w_gate, w1, L * H * D * 4);
    assert_memory_equal(m->w.w_down, w2, L * D * H * 4);
    assert_memory_equal(m->w.w_up, w3, L * H * D * 4);
    assert_memory_equal(m->w.rms_final, rms_final, D * 4);

    /* q: layer 3, head 5; k: layer 2, head 3. New row i = old 2i, new row
     * hd/2 + i = old 2i + 1, within the head. */
    const float *q_new = m->w.wq + 3 * D * D + 5 * hd * D, *q_old = wq + 3 * D * D + 5 * hd * D;
    const float *k_new = m->w.wk + 2 * KV * D + 3 * hd * D, *k_old = wk + 2 * KV * D + 3 * hd * D;
    for (size_t i = 0; i < hd / 2; i++) {
        assert_memory_equal(q_new + i * D, q_old + 2 * i * D, D * 4);
        assert_memory_equal(q_new + (hd / 2 + i) * D, q_old + (2 * i + 1) * D, D * 4);
        assert_memory_equal(k_new + i * D, k_old + 2 * i * D, D * 4);
        assert_memory_equal(k_new + (hd / 2 + i) * D, k_old + (2 * i + 1) * D, D * 4);
    }
    assert_memory_not_equal(m->w.wq, wq, L * D * D * 4);   /* it did permute */

    /* A truncated copy, a copy with a trailing byte, a bad header. */
    const char *dir = dir_for("l2c");
    const char *bad = tu_path(dir, "bad.bin");
    assert_int_equal(tu_write_file(bad, raw, len - 100), 0);
    assert_null(fp_llama2c_load(bad));
    assert_non_null(strstr(fp_error_get(), "bad.bin: file is 1056440 bytes but its header"));
    assert_non_null(strstr(fp_error_get(), "truncated"));
    assert_int_equal(tu_write_file(bad, raw, 20), 0);
    assert_null(fp_llama2c_load(bad));
    assert_non_null(strstr(fp_error_get(), "28-byte"));
    int32_t *h = (int32_t *)raw;
    h[5] = -512;   /* untied: wcls expected at the end, so the size is wrong */
    assert_int_equal(tu_write_file(bad, raw, len), 0);
    assert_null(fp_llama2c_load(bad));
    assert_non_null(strstr(fp_error_get(), "implies 1187612"));
    h[5] = 512;
    h[3] = -8;
    assert_int_equal(tu_write_file(bad, raw, len), 0);
    assert_null(fp_llama2c_load(bad));
    assert_non_null(strstr(fp_error_get(), "header value 3 is -8"));
    h[3] = 7;   /* 64 % 7 != 0 */
    assert_int_equal(tu_write_file(bad, raw, len), 0);
    assert_null(fp_llama2c_load(bad));
    assert_non_null(strstr(fp_error_get(), "not divisible"));
    free(raw);

    /* Export to HF and back gives the same weights. */
    const char *hf = dir_for("l2c-hf");
    assert_int_equal(fp_model_save(m, hf), 0);
    fp_model *r = fp_model_load(hf);
    assert_non_null(r);
    assert_same_model(m, r);
    fp_model_free(&r);
    fp_model_free(&m);
}

static void test_llama2c_untied(void **state)
{
    /* Append a wcls to the shared file and flip vocab_size negative. */
    size_t len;
    char *raw = tu_read_file(stories(), &len);
    assert_non_null(raw);
    size_t extra = 512 * 64 * 4;
    raw = realloc(raw, len + extra);
    float *wcls = (float *)(raw + len);
    for (size_t i = 0; i < 512 * 64; i++)
        wcls[i] = (float)i * 1e-3f;
    ((int32_t *)raw)[5] = -512;
    const char *path = tu_path(dir_for("l2c-untied"), "untied.bin");
    assert_int_equal(tu_write_file(path, raw, len + extra), 0);
    fp_model *m = fp_llama2c_load(path);
    if (!m)
        fail_msg("%s", fp_error_get());
    assert_int_equal(m->cfg.tie_embeddings, 0);
    assert_int_equal(m->cfg.vocab_size, 512);
    assert_ptr_not_equal(m->w.lm_head, m->w.tok_emb);
    assert_memory_equal(m->w.lm_head, wcls, extra);
    assert_memory_equal(m->w.tok_emb, raw + 28, extra);
    fp_model_free(&m);
    free(raw);
}

int main(void)
{
    tmproot = strdup(tu_tempdir("model_load"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_load_roundtrip),
        cmocka_unit_test(test_randomize),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_f16_checkpoint),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_qwen2_biases),
        cmocka_unit_test(test_llama_attention_bias),
        cmocka_unit_test(test_llama2c),
        cmocka_unit_test(test_llama2c_untied),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(tmproot);
    return rc;
}

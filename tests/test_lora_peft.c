/* test_lora_peft.c - PEFT adapter directories: save/load round trip,
 * adapter_config.json fields, PEFT key variants and F16, and every refusal. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lora.h"
#include "rng.h"
#include "safetensors.h"
#include "test_util.h"

#define HAS(hay, needle) \
    do { \
        if (!strstr((hay), (needle))) \
            fail_msg("expected \"%s\" in: %s", (needle), (hay)); \
    } while (0)

#define PFX "base_model.model.model.layers."

/* A tiny LLaMA shape: dim 16, kv_dim 8 (4 heads, 2 kv heads), hidden 40. */
static fp_model_config tiny_model(int n_layers, int dim)
{
    fp_model_config m;
    memset(&m, 0, sizeof m);
    snprintf(m.arch, sizeof m.arch, "LlamaForCausalLM");
    m.dim = dim;
    m.hidden_dim = 40;
    m.n_layers = n_layers;
    m.n_heads = 4;
    m.n_kv_heads = 2;
    m.vocab_size = 32;
    m.max_seq_len = 64;
    m.rms_eps = 1e-5f;
    m.rope_theta = 10000.0f;
    m.bos_id = 1;
    m.eos_id = 2;
    return m;
}

static fp_lora *random_lora(const fp_model_config *m, unsigned targets, int rslora)
{
    fp_lora_config c;
    fp_lora_config_default(&c);
    c.rank = 4;
    c.alpha = 8.0f;
    c.targets = targets;
    c.dropout = 0.05f;
    c.use_rslora = rslora;
    snprintf(c.base_model, sizeof c.base_model, "tiny-llama");
    fp_lora *lo = fp_lora_new(m, &c);
    assert_non_null(lo);
    fp_rng r;
    fp_rng_seed(&r, 7);
    for (size_t i = 0; i < lo->n_params; i++)
        lo->params[i] = fp_rng_float(&r) * 2.0f - 1.0f;
    return lo;
}

static cJSON *read_json(const char *path)
{
    char *text = tu_read_file(path, NULL);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

static void write_json(const char *path, const cJSON *j)
{
    char *text = cJSON_Print(j);
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    cJSON_free(text);
}

static void test_round_trip(void **state)
{
    (void)state;
    fp_model_config m = tiny_model(2, 16);
    unsigned all = 0;
    for (int t = 0; t < FP_T_COUNT; t++)
        all |= 1u << t;
    fp_lora *lo = random_lora(&m, all, 1);
    char dir[4096];   /* tu_* paths live in a rotating buffer: keep a copy */
    snprintf(dir, sizeof dir, "%s", tu_path(tu_tempdir("peft-rt"), "nested/adapter"));
    if (fp_lora_save(lo, dir) != 0)
        fail_msg("%s", fp_error_get());
    assert_null(tu_read_file(tu_path(dir, "adapter_config.json.tmp"), NULL));
    fp_lora *back = fp_lora_load(dir, &m);
    if (!back)
        fail_msg("%s", fp_error_get());
    assert_int_equal(back->cfg.rank, 4);
    assert_true(back->cfg.alpha == 8.0f);
    assert_true(back->cfg.dropout == 0.05f);
    assert_int_equal(back->cfg.targets, all);
    assert_int_equal(back->cfg.use_rslora, 1);
    assert_string_equal(back->cfg.base_model, "tiny-llama");
    assert_int_equal(back->n_params, lo->n_params);
    assert_memory_equal(back->params, lo->params, lo->n_params * sizeof(float));
    fp_lora_free(&back);

    /* The tensors: PEFT names, [r][in] and [out][r], format metadata. */
    fp_safetensors *st = fp_st_open(tu_path(dir, "adapter_model.safetensors"));
    assert_non_null(st);
    assert_int_equal(fp_st_count(st), 2 * FP_T_COUNT * 2);
    assert_string_equal(fp_st_metadata(st, "format"), "pt");
    const fp_st_tensor *t = fp_st_find(st, PFX "1.self_attn.k_proj.lora_B.weight");
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 8);
    assert_int_equal(t->shape[1], 4);
    t = fp_st_find(st, PFX "0.mlp.down_proj.lora_A.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 4);
    assert_int_equal(t->shape[1], 40);
    float a[160];
    assert_int_equal(fp_st_read_f32(st, t, a, 160), 0);
    assert_memory_equal(a, fp_lora_a(lo, 0, FP_T_DOWN), sizeof a);
    assert_non_null(fp_st_find(st, PFX "1.mlp.gate_proj.lora_B.weight"));
    fp_st_close(&st);
    fp_lora_free(&lo);
}

static void test_config_fields(void **state)
{
    (void)state;
    fp_model_config m = tiny_model(2, 16);
    fp_lora *lo = random_lora(&m, (1u << FP_T_Q) | (1u << FP_T_V) | (1u << FP_T_UP), 0);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", tu_tempdir("peft-cfg"));
    assert_int_equal(fp_lora_save(lo, dir), 0);
    cJSON *j = read_json(tu_path(dir, "adapter_config.json"));
#define STR(k, v) assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, k)->valuestring, v)
#define NUM(k) (cJSON_GetObjectItemCaseSensitive(j, k)->valuedouble)
#define IS(pred, k) assert_true(pred(cJSON_GetObjectItemCaseSensitive(j, k)))
    STR("peft_type", "LORA");
    STR("task_type", "CAUSAL_LM");
    STR("bias", "none");
    STR("base_model_name_or_path", "tiny-llama");
    assert_true(NUM("r") == 4.0);
    assert_true(NUM("lora_alpha") == 8.0);
    assert_true(NUM("lora_dropout") == 0.05);   /* written as 0.05, not 0.0500000007 */
    IS(cJSON_IsFalse, "use_rslora");
    IS(cJSON_IsFalse, "fan_in_fan_out");
    IS(cJSON_IsTrue, "init_lora_weights");
    IS(cJSON_IsTrue, "inference_mode");
    IS(cJSON_IsFalse, "use_dora");
    IS(cJSON_IsNull, "modules_to_save");
    IS(cJSON_IsNull, "layers_to_transform");
    IS(cJSON_IsNull, "revision");
    IS(cJSON_IsObject, "rank_pattern");
    IS(cJSON_IsObject, "alpha_pattern");
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "rank_pattern")->child);
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "alpha_pattern")->child);
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(j, "target_modules");
    assert_true(cJSON_IsArray(tm));
    assert_int_equal(cJSON_GetArraySize(tm), 3);
    assert_string_equal(cJSON_GetArrayItem(tm, 0)->valuestring, "q_proj");
    assert_string_equal(cJSON_GetArrayItem(tm, 1)->valuestring, "v_proj");
    assert_string_equal(cJSON_GetArrayItem(tm, 2)->valuestring, "up_proj");
    /* Keys sorted, as PEFT's json.dumps(sort_keys=True) writes them. */
    for (const cJSON *e = j->child; e && e->next; e = e->next)
        assert_true(strcmp(e->string, e->next->string) < 0);
#undef STR
#undef NUM
#undef IS
    cJSON_Delete(j);
    fp_lora_free(&lo);
}

/* Writes a safetensors file of F16 tensors by hand (as torch would). */
static void write_f16(const char *path, int n, const char *const *names,
                      const int64_t (*shapes)[2], const float *const *data)
{
    char hdr[8192];
    size_t o = (size_t)snprintf(hdr, sizeof hdr, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)(shapes[i][0] * shapes[i][1]) * 2;
        o += (size_t)snprintf(hdr + o, sizeof hdr - o,
                              ",\"%s\":{\"dtype\":\"F16\",\"shape\":[%lld,%lld],"
                              "\"data_offsets\":[%zu,%zu]}", names[i],
                              (long long)shapes[i][0], (long long)shapes[i][1], off, off + bytes);
        off += bytes;
    }
    o += (size_t)snprintf(hdr + o, sizeof hdr - o, "}");
    while (o % 8)
        hdr[o++] = ' ';
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t hl = o;
    assert_int_equal(fwrite(&hl, 8, 1, f), 1);
    assert_int_equal(fwrite(hdr, 1, o, f), o);
    for (int i = 0; i < n; i++)
        for (int64_t k = 0; k < shapes[i][0] * shapes[i][1]; k++) {
            uint16_t h = fp_f32_to_f16(data[i][k]);
            assert_int_equal(fwrite(&h, 2, 1, f), 1);
        }
    assert_int_equal(fclose(f), 0);
}

static const char *PEFT_CONFIG =
    "{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": 2, \"lora_alpha\": 4,\n"
    " \"target_modules\": [\"v_proj\", \"q_proj\"], \"lora_dropout\": 0.1, \"bias\": \"none\",\n"
    " \"fan_in_fan_out\": false, \"rank_pattern\": {}, \"alpha_pattern\": {},\n"
    " \"modules_to_save\": null, \"layers_to_transform\": null, \"use_dora\": false,\n"
    " \"base_model_name_or_path\": \"someone/tiny\", \"revision\": null}\n";

/* A directory as older PEFT / torch bf16-f16 training leaves it: keys with
 * the ".default" adapter name, F16 data. Values k/8 are exact in F16. */
static void test_peft_default_f16(void **state)
{
    (void)state;
    fp_model_config m = tiny_model(2, 16);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", tu_tempdir("peft-f16"));
    assert_int_equal(tu_write_file(tu_path(dir, "adapter_config.json"), PEFT_CONFIG,
                                   strlen(PEFT_CONFIG)), 0);
    static float vals[8][2 * 16];
    char names[8][128];
    const char *np[8];
    const float *dp[8];
    int64_t shapes[8][2];
    int n = 0;
    for (int l = 0; l < 2; l++)
        for (int q = 0; q < 2; q++)           /* q_proj, v_proj */
            for (int b = 0; b < 2; b++, n++) {
                snprintf(names[n], sizeof names[n], PFX "%d.self_attn.%s.lora_%c.default.weight",
                         l, q ? "v_proj" : "q_proj", b ? 'B' : 'A');
                shapes[n][0] = b ? (q ? 8 : 16) : 2;
                shapes[n][1] = b ? 2 : 16;
                for (int k = 0; k < 32; k++)
                    vals[n][k] = (float)((k + 3 * n) % 17 - 8) / 8.0f;
                np[n] = names[n];
                dp[n] = vals[n];
            }
    write_f16(tu_path(dir, "adapter_model.safetensors"), n, np, (const int64_t (*)[2])shapes, dp);
    fp_lora *lo = fp_lora_load(dir, &m);
    if (!lo)
        fail_msg("%s", fp_error_get());
    assert_int_equal(lo->cfg.rank, 2);
    assert_true(lo->cfg.alpha == 4.0f);
    assert_true(lo->cfg.dropout == 0.1f);
    assert_int_equal(lo->cfg.targets, (1u << FP_T_Q) | (1u << FP_T_V));
    assert_int_equal(lo->cfg.use_rslora, 0);
    assert_string_equal(lo->cfg.base_model, "someone/tiny");
    /* tensor order above: l0 qA qB vA vB, l1 qA qB vA vB */
    assert_memory_equal(fp_lora_a(lo, 0, FP_T_Q), vals[0], 32 * sizeof(float));
    assert_memory_equal(fp_lora_b(lo, 0, FP_T_Q), vals[1], 32 * sizeof(float));
    assert_memory_equal(fp_lora_b(lo, 1, FP_T_V), vals[7], 16 * sizeof(float));
    assert_memory_equal(fp_lora_a(lo, 1, FP_T_V), vals[6], 32 * sizeof(float));
    assert_null(fp_lora_a(lo, 0, FP_T_K));
    fp_lora_free(&lo);

    /* "all-linear" as a string is PEFT's shorthand. */
    cJSON *j = cJSON_Parse(PEFT_CONFIG);
    cJSON_ReplaceItemInObject(j, "target_modules", cJSON_CreateString("all-linear"));
    write_json(tu_path(dir, "adapter_config.json"), j);
    cJSON_Delete(j);
    fp_error_clear();
    assert_null(fp_lora_load(dir, &m));   /* k_proj etc. are now missing */
    HAS(fp_error_get(), "missing tensor " PFX "0.self_attn.k_proj.lora_A.weight");
}

/* Saves a fresh q,v adapter for the 2-layer model into a new dir (copied
 * out of tu_tempdir's rotating buffer; one per tag). */
static const char *saved_dir(const char *tag, fp_model_config *m)
{
    static char bufs[2][4096];
    static int next;
    *m = tiny_model(2, 16);
    fp_lora *lo = random_lora(m, (1u << FP_T_Q) | (1u << FP_T_V), 0);
    char *dir = bufs[next++ & 1];
    snprintf(dir, 4096, "%s", tu_tempdir(tag));
    assert_int_equal(fp_lora_save(lo, dir), 0);
    fp_lora_free(&lo);
    return dir;
}

static const char *load_error(const char *dir, const fp_model_config *m)
{
    fp_error_clear();
    fp_lora *lo = fp_lora_load(dir, m);
    if (lo)
        fail_msg("loading %s should have failed", dir);
    return fp_error_get();
}

/* Sets config key k to v (NULL removes it), loads, returns the error. */
static const char *config_error(const char *dir, const fp_model_config *m, const char *k,
                                cJSON *v)
{
    const char *path = tu_path(dir, "adapter_config.json");
    cJSON *j = read_json(path);
    cJSON *orig = cJSON_Duplicate(j, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(j, k);
    if (v)
        cJSON_AddItemToObject(j, k, v);
    write_json(path, j);
    const char *e = load_error(dir, m);
    write_json(path, orig);     /* restore for the next case */
    cJSON_Delete(j);
    cJSON_Delete(orig);
    return e;
}

static void test_config_errors(void **state)
{
    (void)state;
    fp_model_config m;
    const char *dir = saved_dir("peft-cfgerr", &m);
    const char *e = load_error(tu_path(dir, "nope"), &m);
    HAS(e, "nope/adapter_config.json");
    HAS(e, "No such file or directory");
    HAS(e, "PEFT adapter directory");

    e = config_error(dir, &m, "peft_type", cJSON_CreateString("IA3"));
    HAS(e, "\"peft_type\" is \"IA3\"; only \"LORA\"");
    e = config_error(dir, &m, "peft_type", NULL);
    HAS(e, "\"peft_type\" is missing");
    e = config_error(dir, &m, "target_modules",
                     cJSON_CreateStringArray((const char *[]){ "q_proj", "foo_proj" }, 2));
    HAS(e, "unknown module 'foo_proj'");
    HAS(e, "adapter_config.json");
    e = config_error(dir, &m, "target_modules", NULL);
    HAS(e, "\"target_modules\" is missing");
    e = config_error(dir, &m, "r", NULL);
    HAS(e, "\"r\" must be a positive integer");
    e = config_error(dir, &m, "r", cJSON_CreateNumber(2.5));
    HAS(e, "\"r\" must be a positive integer");
    e = config_error(dir, &m, "lora_alpha", NULL);
    HAS(e, "\"lora_alpha\" is missing");
    cJSON *rp = cJSON_CreateObject();
    cJSON_AddNumberToObject(rp, "q_proj", 16);
    e = config_error(dir, &m, "rank_pattern", rp);
    HAS(e, "\"rank_pattern\" (per-module ranks) is not supported");
    rp = cJSON_CreateObject();
    cJSON_AddNumberToObject(rp, "q_proj", 16);
    e = config_error(dir, &m, "alpha_pattern", rp);
    HAS(e, "\"alpha_pattern\" (per-module ranks) is not supported");
    e = config_error(dir, &m, "fan_in_fan_out", cJSON_CreateTrue());
    HAS(e, "\"fan_in_fan_out\": true is not supported");
    e = config_error(dir, &m, "bias", cJSON_CreateString("all"));
    HAS(e, "\"bias\" must be \"none\"");
    e = config_error(dir, &m, "modules_to_save",
                     cJSON_CreateStringArray((const char *[]){ "lm_head" }, 1));
    HAS(e, "\"modules_to_save\" is not supported");
    /* Allowlist: a field that changes the computation and is not implemented is
     * refused, a known one at its default is accepted, an unknown one is named. */
    cJSON *rep = cJSON_CreateArray();
    cJSON_AddItemToArray(rep, cJSON_CreateIntArray((const int[]){0, 3}, 2));
    cJSON_AddItemToArray(rep, cJSON_CreateIntArray((const int[]){1, 3}, 2));
    e = config_error(dir, &m, "layer_replication", rep);
    HAS(e, "\"layer_replication\" (repeated layers) is not supported");
    e = config_error(dir, &m, "alora_invocation_tokens",
                     cJSON_CreateIntArray((const int[]){5, 7}, 2));
    HAS(e, "\"alora_invocation_tokens\" (activated LoRA) is not supported");
    e = config_error(dir, &m, "exclude_modules", cJSON_CreateStringArray((const char *[]){"q_proj"}, 1));
    HAS(e, "\"exclude_modules\" is not supported");
    e = config_error(dir, &m, "lora_bias", cJSON_CreateTrue());
    HAS(e, "\"lora_bias\": true is not supported");
    e = config_error(dir, &m, "use_qalora", cJSON_CreateTrue());
    HAS(e, "\"use_qalora\": true is not supported");
    e = config_error(dir, &m, "shiny_new_option", cJSON_CreateNumber(1));
    HAS(e, "unknown field \"shiny_new_option\"");
    const char *defaults[] = {"lora_bias", "use_qalora", "exclude_modules", "layer_replication",
                              "alora_invocation_tokens", "target_parameters",
                              "trainable_token_indices"};
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
        cJSON *v = i < 2 ? cJSON_CreateFalse() : cJSON_CreateNull();
        const char *path = tu_path(dir, "adapter_config.json");
        cJSON *j = read_json(path), *orig = cJSON_Duplicate(j, 1);
        cJSON_AddItemToObject(j, defaults[i], v);
        write_json(path, j);
        fp_lora *ok = fp_lora_load(dir, &m);
        if (!ok)
            fail_msg("%s at its default was refused: %s", defaults[i], fp_error_get());
        fp_lora_free(&ok);
        write_json(path, orig);
        cJSON_Delete(j);
        cJSON_Delete(orig);
    }
    /* A .bin-only adapter: the error says only safetensors is read. */
    {
        char cmd[16384];
        snprintf(cmd, sizeof cmd, "mv %s/adapter_model.safetensors %s/adapter_model.bin", dir, dir);
        assert_int_equal(tu_run(cmd, NULL), 0);
        e = load_error(dir, &m);
        HAS(e, "only adapter_model.safetensors is read");
        snprintf(cmd, sizeof cmd, "mv %s/adapter_model.bin %s/adapter_model.safetensors", dir, dir);
        assert_int_equal(tu_run(cmd, NULL), 0);
    }
    /* The file itself restored: it loads again. */
    fp_lora *lo = fp_lora_load(dir, &m);
    assert_non_null(lo);
    fp_lora_free(&lo);
    assert_int_equal(tu_write_file(tu_path(dir, "adapter_config.json"), "{\"r\": ", 6), 0);
    HAS(load_error(dir, &m), "adapter_config.json: invalid JSON");
}

static void test_tensor_errors(void **state)
{
    (void)state;
    fp_model_config m;
    const char *dir = saved_dir("peft-tenserr", &m);
    char want[512];

    /* Wrong base model: dim 32 instead of 16. */
    fp_model_config wide = tiny_model(2, 32);
    const char *e = load_error(dir, &wide);
    snprintf(want, sizeof want, "adapter tensor " PFX "0.self_attn.q_proj.lora_A.weight has "
             "shape [4, 16] but the base model needs [4, 32]: wrong base model?");
    HAS(e, want);
    /* Layer counts, both ways. */
    fp_model_config deep = tiny_model(3, 16), shallow = tiny_model(1, 16);
    e = load_error(dir, &deep);
    HAS(e, "the adapter has tensors for 2 layers but the base model has 3: wrong base model?");
    e = load_error(dir, &shallow);
    HAS(e, "the adapter has tensors for 2 layers but the base model has 1");

    /* A missing tensor and an unexpected one: rewrite the tensor file. */
    const char *stp = tu_path(dir, "adapter_model.safetensors");
    static float z[16 * 4];
    fp_st_entry ent[8];
    int n = 0;
    for (int l = 0; l < 2; l++)
        for (int q = 0; q < 2; q++)
            for (int b = 0; b < 2; b++, n++) {
                char *name = malloc(128);
                snprintf(name, 128, PFX "%d.self_attn.%s.lora_%c.weight", l,
                         q ? "v_proj" : "q_proj", b ? 'B' : 'A');
                ent[n] = (fp_st_entry){ .name = name, .data = z, .ndim = 2,
                                        .shape = { b ? (q ? 8 : 16) : 4, b ? 4 : 16 } };
            }
    assert_int_equal(fp_st_write_f32(stp, ent, 7, NULL), 0);   /* drop l1 v_proj B */
    e = load_error(dir, &m);
    HAS(e, "missing tensor " PFX "1.self_attn.v_proj.lora_B.weight");
    /* An extra k_proj tensor that adapter_config.json does not target. */
    fp_st_entry extra[9];
    memcpy(extra, ent, sizeof ent);
    extra[8] = (fp_st_entry){ .name = PFX "0.self_attn.k_proj.lora_A.weight", .data = z,
                              .ndim = 2, .shape = { 4, 16 } };
    assert_int_equal(fp_st_write_f32(stp, extra, 9, NULL), 0);
    e = load_error(dir, &m);
    HAS(e, "unexpected tensor " PFX "0.self_attn.k_proj.lora_A.weight");
    /* Extra tensors for a layer beyond the model. */
    extra[8].name = PFX "2.self_attn.q_proj.lora_A.weight";
    assert_int_equal(fp_st_write_f32(stp, extra, 9, NULL), 0);
    e = load_error(dir, &m);
    HAS(e, "tensors for 3 layers but the base model has 2");
    /* All eight back: loads (zeros). */
    assert_int_equal(fp_st_write_f32(stp, ent, 8, NULL), 0);
    fp_lora *lo = fp_lora_load(dir, &m);
    if (!lo)
        fail_msg("%s", fp_error_get());
    fp_lora_free(&lo);
    for (int i = 0; i < 8; i++)
        free((char *)ent[i].name);
    /* No tensor file at all. */
    assert_int_equal(unlink(stp), 0);
    HAS(load_error(dir, &m), "adapter_model.safetensors");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_config_fields),
        cmocka_unit_test(test_peft_default_f16),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_tensor_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

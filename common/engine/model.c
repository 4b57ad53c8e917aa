/* model.c - LLaMA-family model config (HF config.json) and weights (safetensors).
 *
 * One parameter table (param_table) describes every weight: its HF name, its
 * shape and where it lives in the slab. fp_model_new carves the slab from it,
 * and load, save and randomize walk the same table, so the four cannot drift.
 */
#include "model.h"
#include "model_internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "rng.h"
#include "safetensors.h"

#define MAX_JSON_FILE ((size_t)64 << 20)   /* config / index files larger than this are refused */
#define SUPPORTED "LlamaForCausalLM, MistralForCausalLM (no sliding window), Qwen2ForCausalLM"

/* ---- small file helpers ------------------------------------------------- */

/* Reads a whole (small) file, NUL-terminated. NULL with error set. */
static char *read_small_file(const char *path, size_t max, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    if (!f) {
        fp_error_set("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fp_error_set("%s: not a regular file", path);
        goto err;
    }
    size_t n = (size_t)st.st_size;
    if (n > max) {
        fp_error_set("%s: file is %zu bytes, larger than the %zu-byte limit", path, n, max);
        goto err;
    }
    buf = malloc(n + 1);
    if (!buf || fread(buf, 1, n, f) != n) {
        fp_error_set("%s: cannot read: %s", path, buf ? strerror(errno) : "out of memory");
        goto err;
    }
    buf[n] = '\0';
    fclose(f);
    if (len_out)
        *len_out = n;
    return buf;
err:
    free(buf);
    fclose(f);
    return NULL;
}

/* Writes text to path atomically (temp file, fsync, rename). */
static int write_file_atomic(const char *path, const char *text)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= sizeof tmp)
        return fp_error_set("%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return fp_error_set("%s: cannot create: %s", tmp, strerror(errno));
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        fp_error_set("%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* mkdir -p */
static int mkdir_p(const char *dir)
{
    char buf[4096];
    if ((size_t)snprintf(buf, sizeof buf, "%s", dir) >= sizeof buf)
        return fp_error_set("%s: path too long", dir);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return fp_error_set("%s: cannot create directory: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0')
                break;
        }
    }
    return 0;
}

/* ---- config.json --------------------------------------------------------- */

static const char *json_type(const cJSON *j)
{
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "invalid";
}

/* Absent or null keys take the default, or are an error when required. */
static const cJSON *get_key(const cJSON *root, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    return cJSON_IsNull(j) ? NULL : j;
}

static int get_int(const cJSON *root, const char *path, const char *key, int required,
                   int dflt, int *out)
{
    const cJSON *j = get_key(root, key);
    if (!j) {
        if (required)
            return fp_error_set("%s: required key '%s' is missing", path, key);
        *out = dflt;
        return 0;
    }
    double d = cJSON_IsNumber(j) ? j->valuedouble : NAN;
    if (!(d >= INT_MIN && d <= INT_MAX) || d != floor(d))
        return fp_error_set("%s: key '%s' must be an integer, got %s", path, key, json_type(j));
    *out = (int)d;
    return 0;
}

static int get_float(const cJSON *root, const char *path, const char *key, float dflt,
                     float *out)
{
    const cJSON *j = get_key(root, key);
    if (!j) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return fp_error_set("%s: key '%s' must be a number, got %s", path, key, json_type(j));
    *out = (float)j->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *path, const char *key, int dflt, int *out)
{
    const cJSON *j = get_key(root, key);
    if (!j) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(j))
        return fp_error_set("%s: key '%s' must be true or false, got %s", path, key,
                            json_type(j));
    *out = cJSON_IsTrue(j);
    return 0;
}

/* architectures[0], or model_type when architectures is absent. */
static int parse_arch(const cJSON *root, const char *path, fp_model_config *c)
{
    const cJSON *a = get_key(root, "architectures");
    const char *name = NULL;
    if (a) {
        if (!cJSON_IsArray(a) || !cJSON_IsString(cJSON_GetArrayItem(a, 0)))
            return fp_error_set("%s: key 'architectures' must be a non-empty array of "
                                "strings, got %s", path, json_type(a));
        name = cJSON_GetArrayItem(a, 0)->valuestring;
    } else {
        const cJSON *mt = get_key(root, "model_type");
        const char *t = cJSON_IsString(mt) ? mt->valuestring : "";
        name = !strcmp(t, "llama") ? "LlamaForCausalLM"
             : !strcmp(t, "mistral") ? "MistralForCausalLM"
             : !strcmp(t, "qwen2") ? "Qwen2ForCausalLM" : NULL;
        if (!name)
            return fp_error_set("%s: no 'architectures' key and no known 'model_type'; "
                                "fedpeft supports " SUPPORTED, path);
    }
    if (strcmp(name, "LlamaForCausalLM") && strcmp(name, "MistralForCausalLM") &&
        strcmp(name, "Qwen2ForCausalLM"))
        return fp_error_set("%s: unsupported architecture %s; fedpeft supports " SUPPORTED,
                            path, name);
    snprintf(c->arch, sizeof c->arch, "%s", name);
    return 0;
}

/* Features of the family we do not implement: refuse rather than compute
 * something silently different from the reference model. */
static int refuse_unsupported(const cJSON *root, const char *path, const fp_model_config *c)
{
    int sw = 0, use_sw = 0, mlp_bias = 0;
    const cJSON *act = get_key(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return fp_error_set("%s: key 'hidden_act' must be \"silu\" (the only activation "
                            "fedpeft implements)", path);
    if (get_key(root, "rope_scaling"))
        return fp_error_set("%s: key 'rope_scaling' is set; fedpeft implements plain RoPE "
                            "only (set it to null only if the model was trained without it)",
                            path);
    int hd = 0;
    if (get_int(root, path, "head_dim", 0, 0, &hd) != 0)
        return -1;
    if (hd && c->n_heads > 0 && hd * c->n_heads != c->dim)
        return fp_error_set("%s: key 'head_dim' is %d but hidden_size / num_attention_heads "
                            "is %d; fedpeft requires them equal", path, hd,
                            c->dim / c->n_heads);
    if (get_bool(root, path, "mlp_bias", 0, &mlp_bias) != 0)
        return -1;
    if (mlp_bias)
        return fp_error_set("%s: key 'mlp_bias' is true; fedpeft supports bias-free MLPs "
                            "only", path);
    if (get_int(root, path, "sliding_window", 0, 0, &sw) != 0 ||
        get_bool(root, path, "use_sliding_window", 0, &use_sw) != 0)
        return -1;
    int is_mistral = !strcmp(c->arch, "MistralForCausalLM");
    int is_qwen = !strcmp(c->arch, "Qwen2ForCausalLM");
    if (((is_mistral && get_key(root, "sliding_window")) || (is_qwen && use_sw)) &&
        sw < c->max_seq_len)
        return fp_error_set("%s: sliding_window %d < max_position_embeddings %d: "
                            "sliding-window attention is not supported by fedpeft (use a "
                            "model without it, or set sliding_window to null)", path, sw,
                            c->max_seq_len);
    return 0;
}

/* eos_token_id may be an integer or a list of integers (the first is used). */
static int parse_eos(const cJSON *root, const char *path, int *out)
{
    const cJSON *j = get_key(root, "eos_token_id");
    if (cJSON_IsArray(j)) {
        const cJSON *first = cJSON_GetArrayItem(j, 0);
        if (!first) {
            *out = -1;
            return 0;
        }
        double d = cJSON_IsNumber(first) ? first->valuedouble : NAN;
        if (!(d >= -1 && d <= INT_MAX) || d != floor(d))
            return fp_error_set("%s: key 'eos_token_id' must be an integer or a list of "
                                "integers", path);
        *out = (int)d;
        return 0;
    }
    return get_int(root, path, "eos_token_id", 0, -1, out);
}

static int parse_config(const cJSON *root, const char *path, fp_model_config *c)
{
    int attn_bias = 0;
    if (!cJSON_IsObject(root))
        return fp_error_set("%s: not a JSON object", path);
    if (parse_arch(root, path, c) != 0 ||
        get_int(root, path, "hidden_size", 1, 0, &c->dim) != 0 ||
        get_int(root, path, "intermediate_size", 1, 0, &c->hidden_dim) != 0 ||
        get_int(root, path, "num_hidden_layers", 1, 0, &c->n_layers) != 0 ||
        get_int(root, path, "num_attention_heads", 1, 0, &c->n_heads) != 0 ||
        get_int(root, path, "num_key_value_heads", 0, c->n_heads, &c->n_kv_heads) != 0 ||
        get_int(root, path, "vocab_size", 1, 0, &c->vocab_size) != 0 ||
        get_int(root, path, "max_position_embeddings", 0, 2048, &c->max_seq_len) != 0 ||
        get_float(root, path, "rms_norm_eps", 1e-6f, &c->rms_eps) != 0 ||
        get_float(root, path, "rope_theta", 10000.0f, &c->rope_theta) != 0 ||
        get_bool(root, path, "tie_word_embeddings", 0, &c->tie_embeddings) != 0 ||
        get_bool(root, path, "attention_bias", 0, &attn_bias) != 0 ||
        get_int(root, path, "bos_token_id", 0, -1, &c->bos_id) != 0 ||
        parse_eos(root, path, &c->eos_id) != 0)
        return -1;
    c->qkv_bias = attn_bias || !strcmp(c->arch, "Qwen2ForCausalLM");
    if (refuse_unsupported(root, path, c) != 0)
        return -1;
    return fp_config_validate(c, path);
}

int fp_config_load(const char *path, fp_model_config *out)
{
    memset(out, 0, sizeof *out);
    size_t len;
    char *text = read_small_file(path, MAX_JSON_FILE, &len);
    if (!text)
        return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    int rc;
    if (!root)
        rc = fp_error_set("%s: not valid JSON (parse error near byte %zu)", path,
                          end ? (size_t)(end - text) : 0);
    else
        rc = parse_config(root, path, out);
    cJSON_Delete(root);
    free(text);
    return rc;
}

int fp_config_validate(const fp_model_config *c, const char *where)
{
    /* Upper bounds keep every slab size computation far from overflow. */
    static const struct { const char *key; size_t off; int max; } lim[] = {
        {"hidden_size", offsetof(fp_model_config, dim), 1 << 16},
        {"intermediate_size", offsetof(fp_model_config, hidden_dim), 1 << 20},
        {"num_hidden_layers", offsetof(fp_model_config, n_layers), 1 << 10},
        {"num_attention_heads", offsetof(fp_model_config, n_heads), 1 << 12},
        {"num_key_value_heads", offsetof(fp_model_config, n_kv_heads), 1 << 12},
        {"vocab_size", offsetof(fp_model_config, vocab_size), 1 << 24},
        {"max_position_embeddings", offsetof(fp_model_config, max_seq_len), 1 << 24},
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
        int v = *(const int *)((const char *)c + lim[i].off);
        if (v <= 0 || v > lim[i].max)
            return fp_error_set("%s: %s = %d is out of range (1..%d)", where, lim[i].key, v,
                                lim[i].max);
    }
    if (c->dim % c->n_heads)
        return fp_error_set("%s: hidden_size %d is not divisible by num_attention_heads %d",
                            where, c->dim, c->n_heads);
    if (c->n_heads % c->n_kv_heads)
        return fp_error_set("%s: num_attention_heads %d is not divisible by "
                            "num_key_value_heads %d", where, c->n_heads, c->n_kv_heads);
    if (fp_head_dim(c) % 2)
        return fp_error_set("%s: head dim %d is odd; RoPE needs an even head dim", where,
                            fp_head_dim(c));
    if (!(c->rms_eps > 0) || !isfinite(c->rms_eps))
        return fp_error_set("%s: rms_norm_eps %g must be positive", where, c->rms_eps);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return fp_error_set("%s: rope_theta %g must be positive", where, c->rope_theta);
    if (c->bos_id < -1 || c->bos_id >= c->vocab_size || c->eos_id < -1 ||
        c->eos_id >= c->vocab_size)
        return fp_error_set("%s: bos_token_id %d / eos_token_id %d outside the vocabulary "
                            "(0..%d)", where, c->bos_id, c->eos_id, c->vocab_size - 1);
    if (memchr(c->arch, '\0', sizeof c->arch) == NULL || !c->arch[0])
        return fp_error_set("%s: architecture name missing", where);
    return 0;
}

/* A float as the shortest decimal that reads back to the same float, so that
 * 1e-5f is written as 1e-05 and not 9.99999974737875e-06. */
static cJSON *json_float(float f)
{
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            break;
    }
    return cJSON_CreateNumber(strtod(buf, NULL));
}

static void add_id(cJSON *o, const char *key, int id)
{
    if (id >= 0)
        cJSON_AddNumberToObject(o, key, id);
    else
        cJSON_AddNullToObject(o, key);
}

int fp_config_save(const char *path, const fp_model_config *c)
{
    if (fp_config_validate(c, path) != 0)
        return -1;
    int qwen = !strcmp(c->arch, "Qwen2ForCausalLM");
    int mistral = !strcmp(c->arch, "MistralForCausalLM");
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(c->arch));
    cJSON_AddStringToObject(o, "model_type", qwen ? "qwen2" : mistral ? "mistral" : "llama");
    cJSON_AddNumberToObject(o, "hidden_size", c->dim);
    cJSON_AddNumberToObject(o, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_seq_len);
    cJSON_AddItemToObject(o, "rms_norm_eps", json_float(c->rms_eps));
    cJSON_AddItemToObject(o, "rope_theta", json_float(c->rope_theta));
    cJSON_AddNullToObject(o, "rope_scaling");
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    add_id(o, "bos_token_id", c->bos_id);
    add_id(o, "eos_token_id", c->eos_id);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    cJSON_AddNumberToObject(o, "initializer_range", 0.02);
    cJSON_AddBoolToObject(o, "use_cache", 1);
    if (qwen) {
        cJSON_AddBoolToObject(o, "use_sliding_window", 0);
    } else {
        /* HF Llama's attention_bias also puts a bias on o_proj: fp_model_save
         * writes that one as zeros so HF computes what we compute. */
        cJSON_AddBoolToObject(o, "attention_bias", c->qkv_bias);
        cJSON_AddBoolToObject(o, "mlp_bias", 0);
        if (mistral)
            cJSON_AddNullToObject(o, "sliding_window");
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text)
        return fp_error_set("%s: out of memory", path);
    int rc = write_file_atomic(path, text);
    free(text);
    return rc;
}

/* ---- the parameter table ---------------------------------------------- */


/* Fills the table for m's config, in slab order. Returns the entry count. */
int param_table(fp_model *m, pspec *p)
{
    const fp_model_config *c = &m->cfg;
    fp_model_weights *w = &m->w;
    int d = c->dim, kv = fp_kv_dim(c), h = c->hidden_dim, n = 0;
    p[n++] = (pspec){"model.embed_tokens.weight", &w->tok_emb, 0, c->vocab_size, d, K_MAT};
    p[n++] = (pspec){"model.layers.%d.input_layernorm.weight", &w->rms_att, 1, d, 0, K_NORM};
    p[n++] = (pspec){"model.layers.%d.self_attn.q_proj.weight", &w->wq, 1, d, d, K_MAT};
    p[n++] = (pspec){"model.layers.%d.self_attn.k_proj.weight", &w->wk, 1, kv, d, K_MAT};
    p[n++] = (pspec){"model.layers.%d.self_attn.v_proj.weight", &w->wv, 1, kv, d, K_MAT};
    p[n++] = (pspec){"model.layers.%d.self_attn.o_proj.weight", &w->wo, 1, d, d, K_MAT};
    if (c->qkv_bias) {
        p[n++] = (pspec){"model.layers.%d.self_attn.q_proj.bias", &w->bq, 1, d, 0, K_BIAS};
        p[n++] = (pspec){"model.layers.%d.self_attn.k_proj.bias", &w->bk, 1, kv, 0, K_BIAS};
        p[n++] = (pspec){"model.layers.%d.self_attn.v_proj.bias", &w->bv, 1, kv, 0, K_BIAS};
    }
    p[n++] = (pspec){"model.layers.%d.post_attention_layernorm.weight", &w->rms_ffn, 1, d, 0,
                     K_NORM};
    p[n++] = (pspec){"model.layers.%d.mlp.gate_proj.weight", &w->w_gate, 1, h, d, K_MAT};
    p[n++] = (pspec){"model.layers.%d.mlp.up_proj.weight", &w->w_up, 1, h, d, K_MAT};
    p[n++] = (pspec){"model.layers.%d.mlp.down_proj.weight", &w->w_down, 1, d, h, K_MAT};
    p[n++] = (pspec){"model.norm.weight", &w->rms_final, 0, d, 0, K_NORM};
    if (!c->tie_embeddings)
        p[n++] = (pspec){"lm_head.weight", &w->lm_head, 0, c->vocab_size, d, K_MAT};
    return n;
}

/* Floats in one layer's (or the single) tensor of spec p. */
size_t spec_numel(const pspec *p)
{
    return (size_t)p->rows * (size_t)(p->cols ? p->cols : 1);
}

void spec_name(char *buf, size_t cap, const pspec *p, int layer)
{
    if (p->per_layer)
        snprintf(buf, cap, p->fmt, layer);
    else
        snprintf(buf, cap, "%s", p->fmt);
}

fp_model *fp_model_new(const fp_model_config *cfg)
{
    if (fp_config_validate(cfg, "model config") != 0)
        return NULL;
    fp_model *m = calloc(1, sizeof *m);
    if (!m) {
        fp_error_set("out of memory allocating the model");
        return NULL;
    }
    m->cfg = *cfg;
    pspec p[MAX_PSPEC];
    int np = param_table(m, p);
    size_t total = 0;   /* validate()'s bounds keep this well below SIZE_MAX */
    for (int i = 0; i < np; i++)
        total += (p[i].per_layer ? (size_t)cfg->n_layers : 1) * spec_numel(&p[i]);
    m->slab = calloc(total, sizeof(float));
    if (!m->slab) {
        fp_error_set("out of memory allocating %zu MB of model weights",
                     total * sizeof(float) >> 20);
        free(m);
        return NULL;
    }
    m->n_floats = total;
    float *at = m->slab;
    for (int i = 0; i < np; i++) {
        *p[i].field = at;
        at += (p[i].per_layer ? (size_t)cfg->n_layers : 1) * spec_numel(&p[i]);
    }
    if (cfg->tie_embeddings)
        m->w.lm_head = m->w.tok_emb;    /* shared, no extra memory */
    return m;
}

void fp_model_free(fp_model **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->slab);
    free((*self_p)->qm);
    free((*self_p)->qdata);
    free((*self_p)->qscale);
    model_map_release(*self_p);
    free(*self_p);
    *self_p = NULL;
}

void fp_model_randomize(fp_model *m, uint64_t seed, float scale)
{
    fp_rng r;
    fp_rng_seed(&r, seed);
    pspec p[MAX_PSPEC];
    int np = param_table(m, p);
    for (int i = 0; i < np; i++) {
        size_t n = (p[i].per_layer ? (size_t)m->cfg.n_layers : 1) * spec_numel(&p[i]);
        float *x = *p[i].field;
        for (size_t j = 0; j < n; j++) {
            float u = 2.0f * fp_rng_float(&r) - 1.0f;   /* uniform(-1, 1) */
            x[j] = p[i].kind == K_NORM ? 1.0f + 0.1f * u : scale * u;
        }
    }
}

/* ---- loading ----------------------------------------------------------- */


static void loader_close(loader *L)
{
    fp_st_close(&L->single);
    for (size_t i = 0; i < L->n_shards; i++) {
        fp_st_close(&L->shards[i]);
        free(L->shard_names[i]);
    }
    free(L->shards);
    free(L->shard_names);
    cJSON_Delete(L->index);
}

/* Shard file names must stay inside the model directory. */
static int shard_name_ok(const char *s)
{
    return *s && s[0] != '/' && strstr(s, "..") == NULL && strlen(s) < 1024;
}

/* Parses the index and collects its unique shard names (bounded by the
 * index's own size, which read_small_file bounded). */
static int loader_open_index(loader *L)
{
    size_t len;
    char *text = read_small_file(L->file, MAX_JSON_FILE, &len);
    if (!text)
        return -1;
    L->index = cJSON_ParseWithLength(text, len);
    free(text);
    L->wmap = cJSON_GetObjectItemCaseSensitive(L->index, "weight_map");
    if (!cJSON_IsObject(L->wmap))
        return fp_error_set("%s: not valid JSON, or no 'weight_map' object", L->file);
    size_t cap = (size_t)cJSON_GetArraySize(L->wmap) + 1;
    L->shard_names = calloc(cap, sizeof(char *));
    L->shards = calloc(cap, sizeof(fp_safetensors *));
    if (!L->shard_names || !L->shards)
        return fp_error_set("%s: out of memory", L->file);
    for (const cJSON *e = L->wmap->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring))
            return fp_error_set("%s: weight_map['%s'] must be a shard file name inside the "
                                "model directory", L->file, e->string);
        size_t i = 0;
        while (i < L->n_shards && strcmp(L->shard_names[i], e->valuestring))
            i++;
        if (i == L->n_shards && !(L->shard_names[L->n_shards++] = strdup(e->valuestring)))
            return fp_error_set("%s: out of memory", L->file);
    }
    return 0;
}

/* Finds tensor `name`: *st and *t set, or both NULL when absent. */
int loader_find(loader *L, const char *name, fp_safetensors **st,
                       const fp_st_tensor **t)
{
    *st = L->single;
    *t = NULL;
    if (!L->index) {
        *t = fp_st_find(L->single, name);
        return 0;
    }
    *st = NULL;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(L->wmap, name);
    if (!e)
        return 0;
    size_t i = 0;
    while (strcmp(L->shard_names[i], e->valuestring))
        i++;
    if (!L->shards[i]) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", L->dir, L->shard_names[i]);
        if (!(L->shards[i] = fp_st_open(path)))
            return -1;
    }
    *st = L->shards[i];
    *t = fp_st_find(*st, name);
    if (!*t)
        return fp_error_set("%s: tensor '%s' is listed in %s but absent from the shard; the "
                            "checkpoint is incomplete", fp_st_path(*st), name, L->file);
    return 0;
}

int loader_get(loader *L, const char *arch, const char *name, int rows, int cols,
               fp_safetensors **st, const fp_st_tensor **t)
{
    if (loader_find(L, name, st, t) != 0)
        return -1;
    if (!*t)
        return fp_error_set("%s: missing tensor '%s' (wrong base model, or not a %s "
                            "checkpoint?)", L->file, name, arch);
    int64_t shape[2] = {rows, cols};
    return fp_st_check_shape(*st, *t, cols ? 2 : 1, shape);
}

/* Reads one named tensor of the given shape into dst (rows x cols floats). */
static int load_one(loader *L, const char *arch, const char *name, int rows, int cols,
                    float *dst)
{
    fp_safetensors *st;
    const fp_st_tensor *t;
    if (loader_get(L, arch, name, rows, cols, &st, &t) != 0)
        return -1;
    return fp_st_read_f32(st, t, dst, (size_t)rows * (size_t)(cols ? cols : 1));
}

/* HF Llama with attention_bias also has o_proj.bias, which we do not model:
 * accept it only when it is all zeros (as fp_model_save writes it). */
int check_o_bias(loader *L, const fp_model *m)
{
    int d = m->cfg.dim;
    float *tmp = malloc((size_t)d * sizeof(float));
    if (!tmp)
        return fp_error_set("out of memory");
    int rc = 0;
    for (int l = 0; l < m->cfg.n_layers && rc == 0; l++) {
        char name[128];
        fp_safetensors *st;
        const fp_st_tensor *t;
        snprintf(name, sizeof name, "model.layers.%d.self_attn.o_proj.bias", l);
        if ((rc = loader_find(L, name, &st, &t)) != 0 || !t)
            continue;
        if ((rc = load_one(L, m->cfg.arch, name, d, 0, tmp)) != 0)
            break;
        for (int i = 0; i < d; i++)
            if (tmp[i] != 0.0f) {
                rc = fp_error_set("%s: tensor '%s' is nonzero; fedpeft does not support an "
                                  "o_proj bias", fp_st_path(st), name);
                break;
            }
    }
    free(tmp);
    return rc;
}

static int load_weights(loader *L, fp_model *m)
{
    pspec p[MAX_PSPEC];
    int np = param_table(m, p);
    char name[256];
    for (int i = 0; i < np; i++) {
        size_t per = spec_numel(&p[i]);
        int nl = p[i].per_layer ? m->cfg.n_layers : 1;
        for (int l = 0; l < nl; l++) {
            spec_name(name, sizeof name, &p[i], l);
            if (load_one(L, m->cfg.arch, name, p[i].rows, p[i].cols,
                         *p[i].field + (size_t)l * per) != 0)
                return -1;
        }
    }
    return check_o_bias(L, m);
}

loader *loader_open(const char *dir, fp_model_config *cfg)
{
    char path[8192];
    loader *L = calloc(1, sizeof *L);
    if (!L) {
        fp_error_set("out of memory");
        return NULL;
    }
    snprintf(L->dir, sizeof L->dir, "%s", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (fp_config_load(path, cfg) != 0)
        goto err;
    /* Prefer the index when present: HF writes it only for sharded models. */
    snprintf(L->file, sizeof L->file, "%s/model.safetensors.index.json", dir);
    if (access(L->file, F_OK) == 0) {
        if (loader_open_index(L) != 0)
            goto err;
    } else {
        snprintf(L->file, sizeof L->file, "%s/model.safetensors", dir);
        if (!(L->single = fp_st_open(L->file)))
            goto err;
    }
    return L;
err:
    loader_free(&L);
    return NULL;
}

void loader_free(loader **self_p)
{
    if (!self_p || !*self_p)
        return;
    loader_close(*self_p);
    free(*self_p);
    *self_p = NULL;
}

fp_model *fp_model_load(const char *dir)
{
    fp_model_config cfg;
    fp_model *m = NULL;
    loader *L = loader_open(dir, &cfg);
    if (!L || !(m = fp_model_new(&cfg)) || load_weights(L, m) != 0)
        fp_model_free(&m);
    loader_free(&L);
    return m;
}

/* ---- saving ------------------------------------------------------------ */

int fp_model_save(const fp_model *m, const char *dir)
{
    char path[8192];
    if (m->qm)
        return fp_error_set("model save: the base is %s %s; save the f32 source instead",
                            m->map ? "mapped, held as" : "held as",
                            fp_base_dtype_name(m->base_dtype));
    pspec p[MAX_PSPEC];
    int np = param_table((fp_model *)m, p);   /* reads pointers only */
    int L = m->cfg.n_layers, rc = -1;
    /* HF Llama's attention_bias implies an o_proj bias: write zeros for it. */
    int o_bias = m->cfg.qkv_bias && strcmp(m->cfg.arch, "Qwen2ForCausalLM") != 0;
    size_t cap = (size_t)np * (size_t)L + (o_bias ? (size_t)L : 0);
    fp_st_entry *e = calloc(cap, sizeof *e);
    char (*names)[128] = calloc(cap, sizeof *names);
    float *zeros = o_bias ? calloc((size_t)m->cfg.dim, sizeof(float)) : NULL;
    size_t n = 0;
    if (!e || !names || (o_bias && !zeros)) {
        fp_error_set("out of memory");
        goto err;
    }
    for (int i = 0; i < np; i++) {
        size_t per = spec_numel(&p[i]);
        for (int l = 0; l < (p[i].per_layer ? L : 1); l++, n++) {
            spec_name(names[n], sizeof names[n], &p[i], l);
            e[n] = (fp_st_entry){.name = names[n], .data = *p[i].field + (size_t)l * per,
                                 .ndim = p[i].cols ? 2 : 1,
                                 .shape = {p[i].rows, p[i].cols}};
        }
    }
    for (int l = 0; o_bias && l < L; l++, n++) {
        snprintf(names[n], sizeof names[n], "model.layers.%d.self_attn.o_proj.bias", l);
        e[n] = (fp_st_entry){.name = names[n], .data = zeros, .ndim = 1,
                             .shape = {m->cfg.dim}};
    }
    static const char *const meta[] = {"format", "pt", NULL};   /* transformers checks it */
    if (mkdir_p(dir) != 0)
        goto err;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (fp_config_save(path, &m->cfg) != 0)
        goto err;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = fp_st_write_f32(path, e, n, meta);
err:
    free(e);
    free(names);
    free(zeros);
    return rc;
}

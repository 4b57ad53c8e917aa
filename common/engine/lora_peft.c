/* lora_peft.c - fp_lora_save / fp_lora_load: the Hugging Face PEFT directory.
 *
 *   adapter_config.json          LoraConfig as PEFT 0.x writes it (sorted keys)
 *   adapter_model.safetensors    base_model.model.model.layers.{l}.{self_attn|mlp}.
 *                                {q,k,v,o,gate,up,down}_proj.lora_{A,B}.weight
 *                                A [r][in], B [out][r]; metadata {"format": "pt"}
 * Loading also accepts the ".default" adapter-name segment
 * (...q_proj.lora_A.default.weight) and F16/BF16 tensors.
 */
#include "lora.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lora_peft_allow.h"
#include "safetensors.h"

#define NAME_MAX_LEN 160
#define DIR_MAX_LEN 4000    /* leaves room for "/adapter_config.json.tmp" in 4200 */

static int check_dir_len(const char *dir)
{
    if (!dir || !*dir || strlen(dir) > DIR_MAX_LEN)
        return fp_error_set("adapter directory path is empty or longer than %d bytes",
                            DIR_MAX_LEN);
    return 0;
}

static const char *target_group(int t) { return t <= FP_T_O ? "self_attn" : "mlp"; }

/* PEFT's key for (layer, target, A or B); adapter_name "" or ".default". */
static void peft_name(char *buf, size_t cap, int l, int t, int is_b, const char *adapter)
{
    snprintf(buf, cap, "base_model.model.model.layers.%d.%s.%s.lora_%c%s.weight", l,
             target_group(t), fp_target_names[t], is_b ? 'B' : 'A', adapter);
}

static int mkdir_p(const char *dir)
{
    char path[4096];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof path)
        return fp_error_set("bad adapter directory name '%s'", dir);
    memcpy(path, dir, len + 1);
    for (char *p = path + 1; ; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return fp_error_set("cannot create directory %s: %s", path, strerror(errno));
        *p = c;
        if (c == '\0')
            break;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return fp_error_set("%s exists and is not a directory", dir);
    return 0;
}

/* ------------------------------------------------------------------ save */

/* The shortest decimal that reads back as f, so 0.05f is written "0.05". */
static double short_decimal(float f)
{
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if ((float)strtod(buf, NULL) == f)
            break;
    }
    return strtod(buf, NULL);
}

static cJSON *config_json(const fp_lora_config *c)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *targets = cJSON_CreateArray();
    for (int t = 0; t < FP_T_COUNT; t++)
        if (c->targets & (1u << t))
            cJSON_AddItemToArray(targets, cJSON_CreateString(fp_target_names[t]));
    /* Keys in sorted order, as PEFT's json.dumps(sort_keys=True) writes them. */
    cJSON_AddItemToObject(j, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(j, "auto_mapping");
    if (c->base_model[0])
        cJSON_AddStringToObject(j, "base_model_name_or_path", c->base_model);
    else
        cJSON_AddNullToObject(j, "base_model_name_or_path");
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddBoolToObject(j, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(j, "inference_mode", 1);
    cJSON_AddBoolToObject(j, "init_lora_weights", 1);
    cJSON_AddNullToObject(j, "layer_replication");
    cJSON_AddNullToObject(j, "layers_pattern");
    cJSON_AddNullToObject(j, "layers_to_transform");
    cJSON_AddItemToObject(j, "loftq_config", cJSON_CreateObject());
    cJSON_AddNumberToObject(j, "lora_alpha", short_decimal(c->alpha));
    cJSON_AddNumberToObject(j, "lora_dropout", short_decimal(c->dropout));
    cJSON_AddNullToObject(j, "megatron_config");
    cJSON_AddStringToObject(j, "megatron_core", "megatron.core");
    cJSON_AddNullToObject(j, "modules_to_save");
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddNumberToObject(j, "r", c->rank);
    cJSON_AddItemToObject(j, "rank_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(j, "revision");
    cJSON_AddItemToObject(j, "target_modules", targets);
    cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    cJSON_AddBoolToObject(j, "use_dora", 0);
    cJSON_AddBoolToObject(j, "use_rslora", c->use_rslora != 0);
    return j;
}

/* Temp file, fsync, rename: a crash never leaves a half-written config. */
static int write_atomic(const char *path, const char *text)
{
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return fp_error_set("cannot create %s: %s", tmp, strerror(errno));
    size_t len = strlen(text);
    int ok = fwrite(text, 1, len, f) == len && fputc('\n', f) != EOF && fflush(f) == 0 &&
             fsync(fileno(f)) == 0;
    int err = errno;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        if (ok)
            err = errno;
        unlink(tmp);
        return fp_error_set("cannot write %s: %s", path, strerror(err));
    }
    return 0;
}

static int save_tensors(const fp_lora *self, const char *path)
{
    const fp_model_config *m = &self->model;
    int r = self->cfg.rank;
    size_t cap = (size_t)m->n_layers * FP_T_COUNT * 2, n = 0;
    fp_st_entry *e = calloc(cap ? cap : 1, sizeof *e);
    char (*names)[NAME_MAX_LEN] = calloc(cap ? cap : 1, NAME_MAX_LEN);
    int rc = -1;
    if (!e || !names) {
        fp_error_set("out of memory saving adapter %s", path);
        goto out;
    }
    for (int l = 0; l < m->n_layers; l++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            if (!(self->cfg.targets & (1u << t)))
                continue;
            for (int is_b = 0; is_b < 2; is_b++, n++) {
                peft_name(names[n], NAME_MAX_LEN, l, t, is_b, "");
                e[n].name = names[n];
                e[n].data = is_b ? fp_lora_b(self, l, t) : fp_lora_a(self, l, t);
                e[n].ndim = 2;
                e[n].shape[0] = is_b ? fp_lora_out_dim(m, t) : r;
                e[n].shape[1] = is_b ? r : fp_lora_in_dim(m, t);
            }
        }
    static const char *const meta[] = { "format", "pt", NULL };
    rc = fp_st_write_f32(path, e, n, meta);
out:
    free(e);
    free(names);
    return rc;
}

int fp_lora_save(const fp_lora *self, const char *dir)
{
    char path[4200];
    char *text = NULL;
    cJSON *j = NULL;
    if (check_dir_len(dir) != 0 || mkdir_p(dir) != 0)
        goto err;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (save_tensors(self, path) != 0)
        goto err;
    j = config_json(&self->cfg);
    text = j ? cJSON_Print(j) : NULL;
    if (!text) {
        fp_error_set("out of memory writing adapter_config.json");
        goto err;
    }
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (write_atomic(path, text) != 0)
        goto err;
    cJSON_free(text);
    cJSON_Delete(j);
    return 0;
err:
    cJSON_free(text);
    cJSON_Delete(j);
    return fp_error_prefix("saving LoRA adapter to %s: ", dir);
}

/* ------------------------------------------------------------------ load */

static int parse_targets(const cJSON *tm, const char *path, unsigned *mask)
{
    char list[512] = "";
    if (cJSON_IsString(tm)) {
        if (fp_lora_parse_targets(tm->valuestring, mask) != 0)
            return fp_error_prefix("%s: target_modules: ", path);
        return 0;
    }
    if (!cJSON_IsArray(tm) || cJSON_GetArraySize(tm) == 0)
        return fp_error_set("%s: \"target_modules\" must be a non-empty list of module "
                            "names or \"all-linear\"", path);
    const cJSON *e;
    cJSON_ArrayForEach(e, tm) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, ',') ||
            strlen(list) + strlen(e->valuestring) + 2 > sizeof list)
            return fp_error_set("%s: \"target_modules\" holds an entry that is not a "
                                "module name like \"q_proj\"", path);
        if (list[0])
            strcat(list, ",");
        strcat(list, e->valuestring);
    }
    if (fp_lora_parse_targets(list, mask) != 0)
        return fp_error_prefix("%s: target_modules: ", path);
    return 0;
}

static int parse_config(const cJSON *j, const char *path, fp_lora_config *c)
{
    fp_lora_config_default(c);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "peft_type");
    if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA") != 0)
        return fp_error_set("%s: \"peft_type\" is %s%s%s; only \"LORA\" adapters are supported",
                            path, cJSON_IsString(pt) ? "\"" : "",
                            cJSON_IsString(pt) ? pt->valuestring : "missing",
                            cJSON_IsString(pt) ? "\"" : "");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r");
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 ||
        r->valuedouble != (double)(int)r->valuedouble)
        return fp_error_set("%s: \"r\" must be a positive integer rank", path);
    c->rank = r->valueint;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    if (!cJSON_IsNumber(a) || !isfinite(a->valuedouble))
        return fp_error_set("%s: \"lora_alpha\" is missing or not a number", path);
    c->alpha = (float)a->valuedouble;
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(j, "target_modules");
    if (!tm)
        return fp_error_set("%s: \"target_modules\" is missing", path);
    if (parse_targets(tm, path, &c->targets) != 0)
        return -1;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "lora_dropout");
    if (d && !cJSON_IsNull(d)) {
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble >= 1)
            return fp_error_set("%s: \"lora_dropout\" must be a number in [0, 1)", path);
        c->dropout = (float)d->valuedouble;
    }
    c->use_rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_rslora"));
    const cJSON *bm = cJSON_GetObjectItemCaseSensitive(j, "base_model_name_or_path");
    if (cJSON_IsString(bm))
        snprintf(c->base_model, sizeof c->base_model, "%s", bm->valuestring);
    return fp_peft_config_allowed(j, path);   /* everything else: allowlist */
}

static int read_config(const char *dir, fp_lora_config *c)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fp_error_set("cannot open %s: %s; is %s a PEFT adapter directory?", path,
                            strerror(errno), dir);
    char *text = NULL;
    size_t len = 0, cap = 0, got;
    do {
        if (cap - len < 4096) {
            char *p = realloc(text, cap = cap * 2 + 8192);
            if (!p) {
                free(text);
                fclose(f);
                return fp_error_set("out of memory reading %s", path);
            }
            text = p;
        }
        got = fread(text + len, 1, cap - len - 1, f);
        len += got;
    } while (got > 0 && len < (1u << 24));   /* a config is small; bound it */
    fclose(f);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return fp_error_set("%s: invalid JSON (expected one object)", path);
    }
    int rc = parse_config(j, path, c);
    cJSON_Delete(j);
    return rc;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

/* The layer index in "...layers.{l}...", or -1. */
static int name_layer(const char *name)
{
    const char *p = strstr(name, "layers.");
    if (!p || p[7] < '0' || p[7] > '9')
        return -1;
    return (int)strtol(p + 7, NULL, 10);
}

/* Layer count first, so a wrong base model gets one clear message. */
static int check_layers(const fp_safetensors *st, const fp_model_config *m)
{
    int max_l = -1;
    for (size_t i = 0; i < fp_st_count(st); i++) {
        int l = name_layer(fp_st_at(st, i)->name);
        max_l = l > max_l ? l : max_l;
    }
    if (max_l + 1 != m->n_layers)
        return fp_error_set("%s: the adapter has tensors for %d layers but the base model "
                            "has %d: wrong base model?", fp_st_path(st), max_l + 1, m->n_layers);
    return 0;
}

static int load_one(const fp_safetensors *st, fp_lora *lo, int l, int t, int is_b,
                    unsigned char *used)
{
    char name[NAME_MAX_LEN], alt[NAME_MAX_LEN];
    peft_name(name, sizeof name, l, t, is_b, "");
    peft_name(alt, sizeof alt, l, t, is_b, ".default");
    const fp_st_tensor *x = fp_st_find(st, name);
    if (!x)
        x = fp_st_find(st, alt);
    if (!x)
        return fp_error_set("%s: missing tensor %s (adapter_config.json targets %s)",
                            fp_st_path(st), name, fp_target_names[t]);
    int64_t want[2] = { is_b ? fp_lora_out_dim(&lo->model, t) : lo->cfg.rank,
                        is_b ? lo->cfg.rank : fp_lora_in_dim(&lo->model, t) };
    if (x->ndim != 2 || x->shape[0] != want[0] || x->shape[1] != want[1]) {
        char got_s[160], want_s[64];
        shape_str(got_s, sizeof got_s, x->ndim, x->shape);
        shape_str(want_s, sizeof want_s, 2, want);
        return fp_error_set("%s: adapter tensor %s has shape %s but the base model needs %s: "
                            "wrong base model?", fp_st_path(st), x->name, got_s, want_s);
    }
    used[x - fp_st_at(st, 0)] = 1;
    float *dst = is_b ? fp_lora_b(lo, l, t) : fp_lora_a(lo, l, t);
    return fp_st_read_f32(st, x, dst, (size_t)(want[0] * want[1]));
}

static int load_tensors(const fp_safetensors *st, fp_lora *lo)
{
    size_t n = fp_st_count(st);
    unsigned char *used = calloc(n ? n : 1, 1);
    if (!used)
        return fp_error_set("out of memory loading %s", fp_st_path(st));
    int rc = -1;
    for (int l = 0; l < lo->model.n_layers; l++)
        for (int t = 0; t < FP_T_COUNT; t++)
            if (lo->cfg.targets & (1u << t))
                for (int is_b = 0; is_b < 2; is_b++)
                    if (load_one(st, lo, l, t, is_b, used) != 0)
                        goto out;
    for (size_t i = 0; i < n; i++)
        if (!used[i]) {
            char tl[160];
            fp_lora_format_targets(lo->cfg.targets, tl, sizeof tl);
            fp_error_set("%s: unexpected tensor %s (adapter_config.json targets %s); "
                         "was the config edited?", fp_st_path(st), fp_st_at(st, i)->name, tl);
            goto out;
        }
    rc = 0;
out:
    free(used);
    return rc;
}

fp_lora *fp_lora_load(const char *dir, const fp_model_config *m)
{
    fp_lora_config cfg;
    fp_lora *lo = NULL;
    fp_safetensors *st = NULL;
    char path[4200];
    if (check_dir_len(dir) != 0 || read_config(dir, &cfg) != 0)
        goto err;
    lo = fp_lora_new(m, &cfg);
    if (!lo) {
        fp_error_prefix("loading LoRA adapter %s: ", dir);
        goto err;
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (access(path, F_OK) != 0) {
        char bin[4200];
        snprintf(bin, sizeof bin, "%s/adapter_model.bin", dir);
        if (access(bin, F_OK) == 0) {
            fp_error_set("%s: only adapter_model.safetensors is read; %s is a pickled "
                         "PyTorch file (save with safe_serialization=True, or convert it)",
                         dir, bin);
            goto err;
        }
    }
    st = fp_st_open(path);
    if (!st)
        goto err;
    if (check_layers(st, m) != 0 || load_tensors(st, lo) != 0)
        goto err;
    fp_st_close(&st);
    return lo;
err:
    fp_st_close(&st);
    fp_lora_free(&lo);
    return NULL;
}

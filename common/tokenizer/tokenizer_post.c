/* tokenizer_post.c - what encode(add_special) puts around the text: the
 * post_processor (TemplateProcessing, RobertaProcessing/BertProcessing,
 * ByteLevel, Sequence) adjusted by tokenizer_config.json (add_bos_token,
 * add_eos_token, bos_token, eos_token), as transformers' fast tokenizers do. */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* TemplateProcessing "single": SpecialTokens before $A go first, after it last. */
static int load_template(fp_tokenizer *t, const char *path, const cJSON *o)
{
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single");
    const cJSON *sts = cJSON_GetObjectItemCaseSensitive(o, "special_tokens"), *it;
    int seen_a = 0, i = 0;
    if (!cJSON_IsArray(single))
        return fp_error_set("%s: post_processor TemplateProcessing needs a \"single\" array",
                            path);
    cJSON_ArrayForEach(it, single) {
        const char *name = jstr(cJSON_GetObjectItemCaseSensitive(it, "SpecialToken"), "id");
        if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
            seen_a = 1;
        } else if (!name) {
            return fp_error_set("%s: post_processor single[%d] is neither a SpecialToken nor "
                                "a Sequence", path, i);
        } else {
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(sts, name), "ids"), *id;
            if (!cJSON_IsArray(ids) || cJSON_GetArraySize(ids) == 0)
                return fp_error_set("%s: post_processor special_tokens['%s'] needs a "
                                    "non-empty \"ids\" array", path, name);
            cJSON_ArrayForEach(id, ids) {
                int32_t v;
                if (jid(id, &v) != 0)
                    return fp_error_set("%s: post_processor special_tokens['%s'] has a bad "
                                        "id", path, name);
                if (ivec_push(seen_a ? &t->post_suf : &t->post_pre, v) != 0)
                    return -1;
            }
        }
        i++;
    }
    return 0;
}

/* RobertaProcessing / BertProcessing: cls $A sep, with ["token", id] pairs. */
static int load_cls_sep(fp_tokenizer *t, const char *path, const cJSON *o, const char *type)
{
    const char *keys[2] = { "cls", "sep" };
    for (int k = 0; k < 2; k++) {
        int32_t id;
        const cJSON *pair = cJSON_GetObjectItemCaseSensitive(o, keys[k]);
        if (cJSON_GetArraySize(pair) != 2 || jid(cJSON_GetArrayItem(pair, 1), &id) != 0)
            return fp_error_set("%s: post_processor %s needs \"%s\": [token, id]", path, type,
                                keys[k]);
        if (ivec_push(k ? &t->post_suf : &t->post_pre, id) != 0)
            return -1;
    }
    return 0;
}

int tok_load_post(fp_tokenizer *t, const char *path, const cJSON *o)
{
    if (!o || cJSON_IsNull(o))
        return 0;
    const char *type = jstr(o, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "processors"))
            if (tok_load_post(t, path, it) != 0)
                return -1;
        return 0;
    }
    if (type && !strcmp(type, "ByteLevel"))
        return 0; /* only adjusts offsets */
    if (type && !strcmp(type, "TemplateProcessing"))
        return load_template(t, path, o);
    if (type && (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")))
        return load_cls_sep(t, path, o, type);
    return fp_error_set("%s: post_processor type '%s' is not supported yet "
                        "(TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, "
                        "Sequence)", path, type ? type : "(none)");
}

/* Id of a token named in tokenizer_config.json (a string or {"content": ...}). */
static int32_t config_token(const fp_tokenizer *t, const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *name = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
    return name ? fp_tokenizer_token_id(t, name) : -1;
}

/* add_bos_token / add_eos_token rebuild the template as LlamaTokenizerFast's
 * update_post_processor does: present and false removes, true adds. */
static int apply_add_flags(fp_tokenizer *t, const cJSON *cfg, int32_t bos)
{
    const cJSON *add_bos = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    const cJSON *add_eos = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
    if (cJSON_IsFalse(add_bos))
        t->post_pre.len = 0;
    else if (cJSON_IsTrue(add_bos) && t->post_pre.len == 0 && bos >= 0 &&
             ivec_push(&t->post_pre, bos) != 0)
        return -1;
    int has_eos = t->post_suf.len && t->post_suf.p[t->post_suf.len - 1] == t->eos;
    if (cJSON_IsFalse(add_eos) && has_eos)
        t->post_suf.len--;
    else if (cJSON_IsTrue(add_eos) && !has_eos && t->eos >= 0 &&
             ivec_push(&t->post_suf, t->eos) != 0)
        return -1;
    return 0;
}

int tok_load_config(fp_tokenizer *t, const char *dir)
{
    char cpath[4200];
    struct stat st;
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    if (t->post_suf.len) /* without a config, EOS is what the template appends */
        t->eos = t->post_suf.p[t->post_suf.len - 1];
    if (stat(cpath, &st) != 0)
        return 0;
    cJSON *cfg = tok_parse_json_file(cpath);
    if (!cfg)
        return -1;
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return fp_error_set("%s: top level is not a JSON object", cpath);
    }
    int32_t eos = config_token(t, cfg, "eos_token");
    if (eos >= 0)
        t->eos = eos;
    int rc = apply_add_flags(t, cfg, config_token(t, cfg, "bos_token"));
    cJSON_Delete(cfg);
    return rc;
}

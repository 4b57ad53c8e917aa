/* tokenizer.c - loads a Hugging Face tokenizer.json: the object, its added
 * tokens and the id table; each stage is parsed by its own file (see
 * tokenizer_internal.h for the map). */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void fp_tokenizer_free(fp_tokenizer **self_p)
{
    if (!self_p || !*self_p)
        return;
    fp_tokenizer *t = *self_p;
    for (size_t i = 0; i < t->n_vocab; i++)
        free(t->vocab[i].s);
    for (size_t i = 0; i < t->n_added; i++)
        free(t->added[i].content.s);
    tok_free_stages(t);
    for (size_t i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a.s);
        free(t->dec[i].b.s);
    }
    bpe_cache_free(&t->cache);
    pthread_mutex_destroy(&t->cache_lock);
    free(t->vocab);
    free(t->vmap.slots);
    free(t->merges);
    free(t->added);
    free(t->dec);
    free(t->id_str);
    free(t->id_special);
    free(t->post_pre.p);
    free(t->post_suf.p);
    free(t->path);
    free(t);
    *self_p = NULL;
}

static int load_added(fp_tokenizer *t, const char *path, const cJSON *arr)
{
    if (!arr || cJSON_IsNull(arr))
        return 0;
    if (!cJSON_IsArray(arr))
        return fp_error_set("%s: added_tokens must be an array", path);
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added)
        return fp_error_set("tokenizer: out of memory");
    const cJSON *a;
    cJSON_ArrayForEach(a, arr) {
        added_tok *at = &t->added[t->n_added];
        const char *content = jstr(a, "content");
        if (!content || !*content ||
            jid(cJSON_GetObjectItemCaseSensitive(a, "id"), &at->id) != 0)
            return fp_error_set("%s: added_tokens[%zu] needs a non-empty \"content\" and an "
                                "\"id\" in [0, %d)", path, t->n_added, TOK_MAX_ID);
        if (tstr_dup(&at->content, content, strlen(content)) != 0)
            return -1;
        at->special = jbool(a, "special", 0);
        at->lstrip = jbool(a, "lstrip", 0);
        at->rstrip = jbool(a, "rstrip", 0);
        at->single_word = jbool(a, "single_word", 0);
        /* "normalized" is not honoured: tokens are matched in the raw text,
         * which is the same for every normalizer this file accepts on them */
        t->added_first[(unsigned char)content[0]] = 1;
        t->n_added++;
    }
    return 0;
}

/* id -> text table over model vocab and added tokens (added content wins, as
 * tokenizers' id_to_token asks the added vocabulary first). */
static int build_id_table(fp_tokenizer *t)
{
    size_t n = t->n_vocab;
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id + 1 > n)
            n = (size_t)t->added[i].id + 1;
    t->id_str = calloc(n ? n : 1, sizeof *t->id_str);
    t->id_special = calloc(n ? n : 1, 1);
    if (!t->id_str || !t->id_special)
        return fp_error_set("tokenizer: out of memory");
    t->n_ids = n;
    for (size_t i = 0; i < t->n_vocab; i++)
        if (t->vocab[i].s)
            t->id_str[i] = &t->vocab[i];
    for (size_t i = 0; i < t->n_added; i++) {
        t->id_str[t->added[i].id] = &t->added[i].content;
        t->id_special[t->added[i].id] = (unsigned char)t->added[i].special;
    }
    return 0;
}

static int load_stages(fp_tokenizer *t, const char *path, const cJSON *root)
{
    if (!cJSON_IsObject(root))
        return fp_error_set("%s: top level is not a JSON object (is this a tokenizer.json?)",
                            path);
    if (tok_load_model(t, path, cJSON_GetObjectItemCaseSensitive(root, "model")) ||
        load_added(t, path, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) ||
        tok_load_normalizer(t, path, cJSON_GetObjectItemCaseSensitive(root, "normalizer")) ||
        tok_load_pre_tokenizer(t, path, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")) ||
        tok_load_post(t, path, cJSON_GetObjectItemCaseSensitive(root, "post_processor")) ||
        tok_load_decoder(t, path, cJSON_GetObjectItemCaseSensitive(root, "decoder")) ||
        build_id_table(t))
        return -1;
    ivec *lists[2] = { &t->post_pre, &t->post_suf };
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < lists[k]->len; i++)
            if ((size_t)lists[k]->p[i] >= t->n_ids || !t->id_str[lists[k]->p[i]])
                return fp_error_set("%s: post_processor id %d is not in the vocabulary (%zu "
                                    "ids)", path, (int)lists[k]->p[i], t->n_ids);
    tok_bytelevel_table(t);
    return 0;
}

static void split_path(const char *path, char *file, size_t fcap, char *dir, size_t dcap)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dir, dcap, "%s", path);
        snprintf(file, fcap, "%s/tokenizer.json", path);
        return;
    }
    const char *slash = strrchr(path, '/');
    snprintf(file, fcap, "%s", path);
    if (slash)
        snprintf(dir, dcap, "%.*s", (int)(slash - path), path);
    else
        snprintf(dir, dcap, ".");
}

fp_tokenizer *fp_tokenizer_load(const char *path)
{
    char file[4200], dir[4096];
    cJSON *root = NULL;
    fp_tokenizer *t = NULL;
    if (strlen(path) > 4000) {
        fp_error_set("tokenizer: path of %zu bytes is too long", strlen(path));
        return NULL;
    }
    split_path(path, file, sizeof file, dir, sizeof dir);
    root = tok_parse_json_file(file);
    if (!root)
        goto err;
    t = calloc(1, sizeof *t);
    if (!t || !(t->path = strdup(file))) {
        fp_error_set("tokenizer: out of memory");
        free(t);
        t = NULL;
        goto err;
    }
    pthread_mutex_init(&t->cache_lock, NULL);
    t->eos = -1;
    if (load_stages(t, file, root) != 0 || tok_load_config(t, dir) != 0)
        goto err;
    cJSON_Delete(root);
    return t;
err:
    cJSON_Delete(root);
    fp_tokenizer_free(&t);
    return NULL;
}

/* llama2c.c - import a llama2.c legacy ("version 0") checkpoint.
 *
 * Layout (see shared/data/stories260K/SOURCE.md): 7 int32 header values
 *   dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
 * (vocab_size < 0: the classifier is not shared and wcls is stored last), then
 * float32 arrays, matrices [out][in]:
 *   tok_emb[V][D] rms_att[L][D] wq[L][D][D] wk[L][KV][D] wv[L][KV][D] wo[L][D][D]
 *   rms_ffn[L][D] w1[L][H][D] w2[L][D][H] w3[L][H][D] rms_final[D]
 *   freq_cis_real[S][hd/2] freq_cis_imag[S][hd/2] (skipped) [wcls[V][D]]
 * w1/w2/w3 are HF's gate/down/up. llama2.c rotates interleaved pairs (2i, 2i+1)
 * while HF rotates halves (i, i + hd/2), so q and k rows are permuted exactly as
 * HF's convert_llama_weights_to_hf.py does.
 */
#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Within each head of w ([n_heads * hd][cols]): new row i = old row 2i and new
 * row hd/2 + i = old row 2i + 1 (HF's permute: view(h, hd/2, 2, cols)
 * .transpose(1, 2)). tmp holds one head (hd * cols floats). */
static void permute_rows(float *w, int n_heads, int hd, int cols, float *tmp)
{
    size_t row = (size_t)cols * sizeof(float);
    for (int h = 0; h < n_heads; h++) {
        float *head = w + (size_t)h * hd * cols;
        memcpy(tmp, head, (size_t)hd * row);
        for (int i = 0; i < hd / 2; i++) {
            memcpy(head + (size_t)i * cols, tmp + (size_t)(2 * i) * cols, row);
            memcpy(head + (size_t)(hd / 2 + i) * cols, tmp + (size_t)(2 * i + 1) * cols, row);
        }
    }
}

/* Checks header sanity and the exact file size; fills cfg. */
static int check_header(const char *path, const int32_t h[7], size_t fsize,
                        fp_model_config *cfg)
{
    for (int i = 0; i < 7; i++)
        if (h[i] == 0 || (i != 5 && h[i] < 0) || h[i] == INT32_MIN)
            return fp_error_set("%s: header value %d is %d; not a llama2.c checkpoint (or "
                                "a newer, versioned export)", path, i, h[i]);
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->arch, sizeof cfg->arch, "LlamaForCausalLM");
    cfg->dim = h[0];
    cfg->hidden_dim = h[1];
    cfg->n_layers = h[2];
    cfg->n_heads = h[3];
    cfg->n_kv_heads = h[4];
    cfg->vocab_size = h[5] < 0 ? -h[5] : h[5];
    cfg->max_seq_len = h[6];
    cfg->rms_eps = 1e-5f;
    cfg->rope_theta = 10000.0f;
    cfg->tie_embeddings = h[5] > 0;
    cfg->bos_id = 1;
    cfg->eos_id = 2;
    /* Validation bounds every size, so the arithmetic below cannot overflow. */
    if (fp_config_validate(cfg, path) != 0)
        return -1;
    size_t D = (size_t)cfg->dim, H = (size_t)cfg->hidden_dim, L = (size_t)cfg->n_layers;
    size_t V = (size_t)cfg->vocab_size, KV = (size_t)fp_kv_dim(cfg);
    size_t S = (size_t)cfg->max_seq_len, hd = (size_t)fp_head_dim(cfg);
    size_t floats = V * D + L * (2 * D + 2 * D * D + 2 * KV * D + 3 * H * D) + D + S * hd;
    if (!cfg->tie_embeddings)
        floats += V * D;
    size_t want = 28 + floats * sizeof(float);
    if (fsize != want)
        return fp_error_set("%s: file is %zu bytes but its header (dim %d, hidden %d, "
                            "layers %d, heads %d/%d, vocab %d, seq_len %d) implies %zu; the "
                            "file is truncated or not a llama2.c checkpoint", path, fsize,
                            h[0], h[1], h[2], h[3], h[4], h[5], h[6], want);
    return 0;
}

static int read_floats(FILE *f, const char *path, float *dst, size_t n)
{
    if (fread(dst, sizeof(float), n, f) != n)
        return fp_error_set("%s: read failed: %s", path, ferror(f) ? strerror(errno)
                                                                   : "unexpected end of file");
    return 0;
}

/* Reads the per-layer arrays and the rest, in file order, into m. */
static int read_body(FILE *f, const char *path, fp_model *m)
{
    const fp_model_config *c = &m->cfg;
    fp_model_weights *w = &m->w;
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, L = (size_t)c->n_layers;
    size_t V = (size_t)c->vocab_size, KV = (size_t)fp_kv_dim(c);
    size_t S = (size_t)c->max_seq_len, hd = (size_t)fp_head_dim(c);
    if (read_floats(f, path, w->tok_emb, V * D) || read_floats(f, path, w->rms_att, L * D) ||
        read_floats(f, path, w->wq, L * D * D) || read_floats(f, path, w->wk, L * KV * D) ||
        read_floats(f, path, w->wv, L * KV * D) || read_floats(f, path, w->wo, L * D * D) ||
        read_floats(f, path, w->rms_ffn, L * D) || read_floats(f, path, w->w_gate, L * H * D) ||
        read_floats(f, path, w->w_down, L * D * H) || read_floats(f, path, w->w_up, L * H * D) ||
        read_floats(f, path, w->rms_final, D))
        return -1;
    if (!c->tie_embeddings) {   /* skip freq_cis_real/imag, then wcls */
        if (fseek(f, (long)(S * hd * sizeof(float)), SEEK_CUR) != 0 ||
            read_floats(f, path, w->lm_head, V * D))
            return -1;
    }
    return 0;
}

fp_model *fp_llama2c_load(const char *path)
{
    fp_model_config cfg;
    fp_model *m = NULL;
    float *tmp = NULL;
    int32_t h[7];
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f) {
        fp_error_set("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fp_error_set("%s: not a regular file", path);
        goto err;
    }
    if ((size_t)st.st_size < sizeof h || fread(h, sizeof h, 1, f) != 1) {
        fp_error_set("%s: file is %lld bytes, shorter than the 28-byte llama2.c header",
                     path, (long long)st.st_size);
        goto err;
    }
    if (check_header(path, h, (size_t)st.st_size, &cfg) != 0 || !(m = fp_model_new(&cfg)))
        goto err;
    if (read_body(f, path, m) != 0)
        goto err;
    /* Interleaved-pair RoPE -> HF rotate_half: permute q and k rows per head. */
    int hd = fp_head_dim(&cfg);
    size_t D = (size_t)cfg.dim, KV = (size_t)fp_kv_dim(&cfg);
    tmp = malloc((size_t)hd * D * sizeof(float));
    if (!tmp) {
        fp_error_set("out of memory");
        goto err;
    }
    for (int l = 0; l < cfg.n_layers; l++) {
        permute_rows(m->w.wq + (size_t)l * D * D, cfg.n_heads, hd, cfg.dim, tmp);
        permute_rows(m->w.wk + (size_t)l * KV * D, cfg.n_kv_heads, hd, cfg.dim, tmp);
    }
    free(tmp);
    fclose(f);
    return m;
err:
    free(tmp);
    fp_model_free(&m);
    fclose(f);
    return NULL;
}

/* common/engine/ - the training engine: a frozen base model (model, llama2c,
 * safetensors), LoRA adapters and their PEFT form, forward/backward, inference,
 * optimizers, the training loop and finetune, BLAS set-up, the model hash.
 * Uses base and data; OpenBLAS, cJSON and libsodium (the hash). No network.
 *
 * model.h - a frozen LLaMA-family base model (LlamaForCausalLM, Qwen2ForCausalLM).
 *
 * Loaded from a Hugging Face directory: config.json + model.safetensors (or the
 * shards named by model.safetensors.index.json), F32/F16/BF16 converted to F32.
 * All weights live in one slab; matrices are [out][in] row-major, exactly as HF
 * stores them (nn.Linear.weight), so y = W x is cblas_sgemv(RowMajor, NoTrans).
 *
 * HF tensor names (per layer l):
 *   model.embed_tokens.weight [vocab][dim]        model.norm.weight [dim]
 *   model.layers.l.input_layernorm.weight [dim]   ...post_attention_layernorm.weight [dim]
 *   model.layers.l.self_attn.{q,k,v,o}_proj.weight  q:[dim][dim] k,v:[kv_dim][dim] o:[dim][dim]
 *   model.layers.l.self_attn.{q,k,v}_proj.bias      (Qwen2 only) [dim] / [kv_dim]
 *   model.layers.l.mlp.{gate,up}_proj.weight [hidden][dim], mlp.down_proj.weight [dim][hidden]
 *   lm_head.weight [vocab][dim]                   (absent when tie_word_embeddings)
 * RoPE follows HF's rotate_half convention (pairs i and i + head_dim/2).
 */
#ifndef FP_MODEL_H
#define FP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "quant.h"

typedef struct {
    char arch[64];          /* "LlamaForCausalLM", "Qwen2ForCausalLM", ... */
    int dim;                /* hidden_size */
    int hidden_dim;         /* intermediate_size */
    int n_layers;           /* num_hidden_layers */
    int n_heads;            /* num_attention_heads */
    int n_kv_heads;         /* num_key_value_heads (defaults to n_heads) */
    int vocab_size;
    int max_seq_len;        /* max_position_embeddings */
    float rms_eps;          /* rms_norm_eps */
    float rope_theta;
    int tie_embeddings;     /* tie_word_embeddings */
    int qkv_bias;           /* 1 for Qwen2ForCausalLM (or attention_bias: true) */
    int bos_id, eos_id;     /* bos_token_id, eos_token_id (-1 if absent) */
} fp_model_config;

static inline int fp_head_dim(const fp_model_config *c) { return c->dim / c->n_heads; }
static inline int fp_kv_dim(const fp_model_config *c) { return fp_head_dim(c) * c->n_kv_heads; }

/* Pointers into the slab. Per-layer arrays are stacked over layers:
 * wq + l * dim * dim is layer l's q_proj. */
typedef struct {
    float *tok_emb;                 /* [vocab][dim] */
    float *rms_att;                 /* [L][dim] */
    float *wq, *wk, *wv, *wo;       /* [L][dim][dim], [L][kv][dim], [L][kv][dim], [L][dim][dim] */
    float *bq, *bk, *bv;            /* NULL unless qkv_bias: [L][dim], [L][kv], [L][kv] */
    float *rms_ffn;                 /* [L][dim] */
    float *w_gate, *w_up, *w_down;  /* [L][hidden][dim], [L][hidden][dim], [L][dim][hidden] */
    float *rms_final;               /* [dim] */
    float *lm_head;                 /* [vocab][dim]; == tok_emb when tied */
} fp_model_weights;

typedef struct {
    fp_model_config cfg;
    fp_model_weights w;
    float *slab;
    size_t n_floats;        /* floats in the slab */
    /* Quantized base (fp_model_quantize): the seven projection matrices of every
     * layer, the embeddings and lm_head live in qdata/qscale, their
     * fp_model_weights pointers are NULL and the slab holds only norms and
     * biases (read them through fp_model_qmat / fp_model_emb / fp_model_head). */
    fp_base_dtype base_dtype;    /* FP_BASE_F32 unless quantized */
    fp_qmat *qm;            /* [L][FP_T_COUNT] views, then embeddings and lm_head
                             * (the same view when tied); NULL for f32 */
    uint8_t *qdata;
    float *qscale;
    size_t q_bytes;         /* qdata + qscale bytes */
    int has_src_hash;       /* src_hash is fp_model_hash of the f32 source weights */
    char src_hash[65];
    /* Mapped load (fp_model_load_dtype): the safetensors files stay mapped
     * read-only and the weights that can be used in place point into them. */
    void *map;              /* the open files (model_map.c), NULL when copied */
    size_t mapped_bytes;    /* weight bytes read in place from the mapping */
} fp_model;

/* Parses and validates config.json. Error names the file and the key. */
int fp_config_load(const char *path, fp_model_config *out) FP_WUR;
/* Writes config.json (HF field names). */
int fp_config_save(const char *path, const fp_model_config *cfg) FP_WUR;
/* Checks internal consistency (positive sizes, dim % heads, heads % kv_heads,
 * even head_dim). */
int fp_config_validate(const fp_model_config *cfg, const char *where) FP_WUR;

/* Allocates a zeroed model for cfg (slab carved per the table above).
 * Caller destroys with fp_model_free. */
fp_model *fp_model_new(const fp_model_config *cfg) FP_WUR;
/* Loads a HF directory (config.json + safetensors, sharded or not). */
fp_model *fp_model_load(const char *dir) FP_WUR;
/* Writes config.json + model.safetensors (F32) into dir (created if needed). */
int fp_model_save(const fp_model *m, const char *dir) FP_WUR;
/* Fills every weight with uniform(-scale, scale) from seed (norm weights around
 * 1). For tests and benchmarks. */
void fp_model_randomize(fp_model *m, uint64_t seed, float scale);
void fp_model_free(fp_model **self_p);

/* Converts the seven projection matrices of every layer (q,k,v,o,gate,up,down),
 * the embeddings and lm_head to dt, one tensor at a time, and shrinks the f32
 * slab to what remains (norms, biases). The
 * hash is taken first, so a quantized model hashes like its f32 source (workers
 * on different formats federate together). dt == FP_BASE_F32 does nothing. */
int fp_model_quantize(fp_model *m, fp_base_dtype dt) FP_WUR;
/* A random model (fp_model_randomize's distribution: matrices uniform in
 * [-scale, scale], norms around 1, biases zero here) built straight into dt:
 * every matrix is drawn and quantized 64 rows at a time, so a 7B-shaped nf4
 * model never holds even one layer in f32. Layer l draws from seed + 1 + l, the
 * tables and final norm from seed; dt == FP_BASE_F32 is fp_model_new +
 * fp_model_randomize. For benchmarks; its hash is a label, not a fingerprint.
 * Caller destroys. */
fp_model *fp_model_new_random(const fp_model_config *cfg, fp_base_dtype dt, uint64_t seed,
                              float scale) FP_WUR;
/* Loads dir holding its projection matrices in format dt (the embeddings and
 * lm_head in fp_table_dtype(dt)), with the safetensors files mapped read-only
 * (MAP_PRIVATE): every tensor already in the format it is held in (F32, or BF16
 * for a bf16 one) whose data is aligned is used in place, so processes on one
 * machine share one page-cache copy; the rest is converted or quantized one
 * tensor at a time, a chunk of rows at a time unless the file holds aligned F32,
 * never through a whole f32 copy. The hash is taken while streaming the files
 * and equals fp_model_hash of fp_model_load(dir). Norms and biases are copied.
 * The base must not be written: fp_model_own makes a private copy first. */
fp_model *fp_model_load_dtype(const char *dir, fp_base_dtype dt) FP_WUR;
/* Turns a mapped f32 model into one laid out as fp_model_load's (own slab,
 * writable, the files closed). 0 at once for a model that is not mapped; -1 for
 * a quantized one (nothing to write into). */
int fp_model_own(fp_model *m) FP_WUR;
/* The matrix of target t (FP_T_* order: q,k,v,o,gate,up,down) of layer l, in
 * whatever format the model holds it (an f32 view when not quantized). */
fp_qmat fp_model_qmat(const fp_model *m, int l, int t);
/* The embedding table [vocab][dim] and lm_head [vocab][dim] (the same when
 * tied), likewise: a token's row is fp_qmat_dequant_rows(&e, token, 1, out). */
fp_qmat fp_model_emb(const fp_model *m);
fp_qmat fp_model_head(const fp_model *m);
/* Bytes the base weights occupy (f32 slab + quantized storage + used in place
 * from the mapping). */
size_t fp_model_bytes(const fp_model *m);

/* SHA-256 (hex, 64 chars + NUL) of the model's architecture fields and every
 * weight: workers and coordinator compare it to be sure they share a base model. */
void fp_model_hash(const fp_model *m, char out[65]);

/* Reads a llama2.c checkpoint (legacy version-0 format, see
 * shared stories260K SOURCE.md) into a model in HF convention: q/k rows are
 * permuted for rotate_half RoPE as HF's convert_llama_weights_to_hf does. */
fp_model *fp_llama2c_load(const char *path) FP_WUR;

#endif

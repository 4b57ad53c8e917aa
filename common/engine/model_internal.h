/* model_internal.h - what model.c shares with model_map.c and model_hash.c
 * inside the engine: the parameter table, the tensor source (one safetensors
 * file or the shards of an index) and the hash's streaming form. Not installed,
 * not for other subsystems. */
#ifndef FP_MODEL_INTERNAL_H
#define FP_MODEL_INTERNAL_H

#include <cjson/cJSON.h>
#include <sodium.h>

#include "model.h"
#include "safetensors.h"

typedef enum { K_MAT, K_NORM, K_BIAS } pkind;

typedef struct {
    const char *fmt;        /* HF name; per-layer names take the layer via %d */
    float **field;          /* where the pointer into the slab lives */
    int per_layer;
    int rows, cols;         /* cols == 0: a vector of `rows` */
    pkind kind;
} pspec;

#define MAX_PSPEC 16

/* Fills the table for m's config, in slab order. Returns the entry count. */
int param_table(fp_model *m, pspec *p);
/* Floats in one layer's (or the single) tensor of spec p. */
size_t spec_numel(const pspec *p);
void spec_name(char *buf, size_t cap, const pspec *p, int layer);

/* Where tensors come from: one file, or shards named by an index. */
typedef struct {
    char file[4096];            /* model.safetensors or the index, for messages */
    fp_safetensors *single;
    cJSON *index;               /* parsed index.json */
    const cJSON *wmap;          /* its weight_map */
    char **shard_names;         /* unique shard file names, opened lazily */
    fp_safetensors **shards;
    size_t n_shards;
    char dir[4096];
} loader;

/* Reads dir/config.json into cfg and opens the weights (index or single
 * file). NULL with the error set; caller destroys with loader_free. */
loader *loader_open(const char *dir, fp_model_config *cfg);
void loader_free(loader **self_p);
/* Finds tensor `name`: *st and *t set, or both NULL when absent. */
int loader_find(loader *L, const char *name, fp_safetensors **st, const fp_st_tensor **t);
/* Finds `name`, which must exist with the given shape (cols == 0: a vector). */
int loader_get(loader *L, const char *arch, const char *name, int rows, int cols,
               fp_safetensors **st, const fp_st_tensor **t);
/* An o_proj bias is accepted only when all zeros. */
int check_o_bias(loader *L, const fp_model *m);

/* fp_model_hash in pieces: begin with the config, feed every weight in slab
 * order as f32, end. */
void model_hash_begin(crypto_hash_sha256_state *st, const fp_model_config *c);
void model_hash_end(crypto_hash_sha256_state *st, char out[65]);

/* Quantizes rows [r0, r0 + nr) of q from src (nr x cols f32) into q's own
 * storage; for nf4, r0 * cols must be a multiple of FP_NF4_BLOCK. */
void model_quantize_rows(const fp_qmat *q, int r0, int nr, const float *src);

/* The mapped load (model_map.c) keeps its files open here; fp_model_free
 * calls this. */
void model_map_release(fp_model *m);

#endif

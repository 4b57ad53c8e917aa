/* lora.h - LoRA adapters: configuration, the parameter slab, PEFT directories.
 *
 * For a frozen linear W [out][in] targeted by LoRA:
 *   y = W x + s * B (A drop(x)),  A [r][in], B [out][r],
 *   s = alpha / r  (or alpha / sqrt(r) with rsLoRA)
 * Initialisation follows HF PEFT: A ~ kaiming_uniform(a = sqrt(5)), i.e.
 * U(-1/sqrt(in), 1/sqrt(in)); B = 0, so a fresh adapter changes nothing.
 *
 * The slab: all factors in one float array, layer-major, then target in the
 * order q,k,v,o,gate,up,down (untargeted ones skipped), A before B. Gradients
 * and optimizer state use the same layout (fp_lora.off_a / off_b), so
 * averaging adapters is one saxpy and serializing is one copy.
 *
 * PEFT names: base_model.model.model.layers.{l}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight
 *             base_model.model.model.layers.{l}.mlp.{gate,up,down}_proj.lora_{A,B}.weight
 */
#ifndef FP_LORA_H
#define FP_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "model.h"

enum { FP_T_Q, FP_T_K, FP_T_V, FP_T_O, FP_T_GATE, FP_T_UP, FP_T_DOWN, FP_T_COUNT };

/* "q_proj", "k_proj", ... indexed by FP_T_*. */
extern const char *const fp_target_names[FP_T_COUNT];

typedef struct {
    int rank;
    float alpha;
    unsigned targets;       /* bit (1u << FP_T_*) per targeted module */
    float dropout;          /* lora_dropout, applied to x before A during training */
    int use_rslora;
    char base_model[256];   /* base_model_name_or_path, informational */
} fp_lora_config;

/* Defaults: r 8, alpha 16, q,k,v,o, dropout 0, no rsLoRA. */
void fp_lora_config_default(fp_lora_config *c);
float fp_lora_scale(const fp_lora_config *c);
/* Parses "q_proj,v_proj" (also "all-linear" / "all"); error names the
 * unknown module and lists the valid ones. */
int fp_lora_parse_targets(const char *list, unsigned *mask) FP_WUR;
/* Writes "q_proj,k_proj,..." into buf. */
void fp_lora_format_targets(unsigned mask, char *buf, size_t cap);

/* Input and output size of target t for a model. */
int fp_lora_in_dim(const fp_model_config *m, int t);
int fp_lora_out_dim(const fp_model_config *m, int t);

typedef struct {
    fp_lora_config cfg;
    fp_model_config model;  /* shapes come from here */
    size_t n_params;        /* floats in the slab */
    float *params;          /* the slab */
    /* Offsets (in floats) of A and B for layer l, target t at index
     * l * FP_T_COUNT + t; SIZE_MAX where t is not targeted. */
    size_t *off_a, *off_b;
} fp_lora;

/* Zeroed adapter for this model and config. Caller destroys. */
fp_lora *fp_lora_new(const fp_model_config *m, const fp_lora_config *c) FP_WUR;
void fp_lora_free(fp_lora **self_p);
/* PEFT initialisation from a seed (A Kaiming-uniform, B zero). */
void fp_lora_init(fp_lora *self, uint64_t seed);
/* Checks that the adapter was made for a model of config m's shapes; -1 with
 * an error naming both shapes ("wrong base model?") otherwise. */
int fp_lora_check_model(const fp_lora *self, const fp_model_config *m) FP_WUR;

/* A and B of (layer, target), or NULL when not targeted. */
float *fp_lora_a(const fp_lora *self, int layer, int t);
float *fp_lora_b(const fp_lora *self, int layer, int t);

/* Writes adapter_config.json + adapter_model.safetensors (PEFT layout). */
int fp_lora_save(const fp_lora *self, const char *dir) FP_WUR;
/* Loads a PEFT directory for model m: validates peft_type, shapes, names
 * (a hint "wrong base model?" on mismatch). Caller destroys. */
fp_lora *fp_lora_load(const char *dir, const fp_model_config *m) FP_WUR;

#endif

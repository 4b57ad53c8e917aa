/* lora_peft_allow.c - the adapter_config.json allowlist (see lora_peft_allow.h).
 *
 * PEFT keeps adding LoraConfig fields (layer_replication, alora_invocation_tokens,
 * target_parameters, ...). A block list lets a new field that changes the
 * computation pass unread; this table lists what is known, and refuses the rest.
 */
#include "lora_peft_allow.h"

#include <string.h>

typedef enum {
    A_READ,     /* parsed and validated by lora_peft.c's parse_config */
    A_ANY,      /* metadata or initialisation only: the weights come from the file */
    A_EMPTY,    /* accepted when null, [] or {} (absent means the same) */
    A_FALSE,    /* accepted when false or null */
    A_NONE,     /* accepted when "none" or null (bias) */
} allow;

static const struct { const char *name; allow a; const char *what; } fields[] = {
    {"peft_type", A_READ, NULL},           {"r", A_READ, NULL},
    {"lora_alpha", A_READ, NULL},          {"target_modules", A_READ, NULL},
    {"lora_dropout", A_READ, NULL},        {"use_rslora", A_READ, NULL},
    {"base_model_name_or_path", A_ANY, NULL}, {"task_type", A_ANY, NULL},
    {"inference_mode", A_ANY, NULL},       {"revision", A_ANY, NULL},
    {"auto_mapping", A_ANY, NULL},         {"peft_version", A_ANY, NULL},
    {"init_lora_weights", A_ANY, NULL},    {"loftq_config", A_ANY, NULL},
    {"eva_config", A_ANY, NULL},           {"corda_config", A_ANY, NULL},
    {"megatron_config", A_ANY, NULL},      {"megatron_core", A_ANY, NULL},
    {"runtime_config", A_ANY, NULL},       {"layers_pattern", A_ANY, NULL},
    {"qalora_group_size", A_ANY, NULL},    /* read only when use_qalora */
    {"rank_pattern", A_EMPTY, "(per-module ranks) is not supported"},
    {"alpha_pattern", A_EMPTY, "(per-module ranks) is not supported"},
    {"modules_to_save", A_EMPTY, "is not supported; it must be null"},
    {"layers_to_transform", A_EMPTY, "is not supported; it must be null"},
    {"layer_replication", A_EMPTY, "(repeated layers) is not supported; it must be null"},
    {"exclude_modules", A_EMPTY, "is not supported; it must be null"},
    {"trainable_token_indices", A_EMPTY, "is not supported; it must be null"},
    {"target_parameters", A_EMPTY, "is not supported; it must be null"},
    {"alora_invocation_tokens", A_EMPTY, "(activated LoRA) is not supported; it must be null"},
    {"arrow_config", A_EMPTY, "is not supported; it must be null"},
    {"bias", A_NONE, "must be \"none\"; trained LoRA biases are not supported"},
    {"fan_in_fan_out", A_FALSE, ": true is not supported (LLaMA linears need false)"},
    {"use_dora", A_FALSE, ": true is not supported (LLaMA linears need false)"},
    {"use_qalora", A_FALSE, ": true is not supported"},
    {"lora_bias", A_FALSE, ": true is not supported"},
    {"ensure_weight_tying", A_FALSE, ": true is not supported"},
};

static int is_empty(const cJSON *v)
{
    return cJSON_IsNull(v) || ((cJSON_IsArray(v) || cJSON_IsObject(v)) && v->child == NULL);
}

int fp_peft_config_allowed(const cJSON *j, const char *path)
{
    const cJSON *v;
    size_t nf = sizeof fields / sizeof fields[0];
    cJSON_ArrayForEach(v, j) {
        size_t i = 0;
        while (i < nf && strcmp(fields[i].name, v->string) != 0)
            i++;
        if (i == nf)
            return fp_error_set("%s: unknown field \"%s\": fedpeft does not implement it and "
                                "cannot tell whether it changes the computation", path,
                                v->string);
        int ok = 1;
        switch (fields[i].a) {
        case A_READ:
        case A_ANY: break;
        case A_EMPTY: ok = is_empty(v); break;
        case A_FALSE: ok = cJSON_IsNull(v) || cJSON_IsFalse(v); break;
        case A_NONE:
            ok = cJSON_IsNull(v) || (cJSON_IsString(v) && strcmp(v->valuestring, "none") == 0);
            break;
        }
        if (!ok)
            return fp_error_set("%s: \"%s\"%s%s", path, v->string,
                                fields[i].what[0] == ':' ? "" : " ", fields[i].what);
    }
    return 0;
}

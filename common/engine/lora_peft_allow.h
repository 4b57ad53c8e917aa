/* lora_peft_allow.h - which adapter_config.json fields fedpeft accepts (internal to lora_peft.c). */
#ifndef FP_LORA_PEFT_ALLOW_H
#define FP_LORA_PEFT_ALLOW_H

#include <cjson/cJSON.h>

#include "fp_error.h"

/* Checks every top-level field of a PEFT LoRA config against an allowlist:
 * fields fedpeft reads, fields that do not change the computation (metadata,
 * initialisation-only settings) and fields accepted only at their default.
 * Anything else is refused with its name. -1 with the error set, 0 if fine. */
int fp_peft_config_allowed(const cJSON *j, const char *path) FP_WUR;

#endif

/* fuzz_adapter_config.c - fp_lora_load on a PEFT adapter directory:
 * adapter_config.json (peft_type, r, lora_alpha, target_modules, the options
 * refused) and the adapter_model.safetensors names and shapes checked against
 * the model.
 *
 * Input: adapter_config.json, then optionally a NUL byte and the
 * adapter_model.safetensors bytes. The model is fixed: the shape of
 * tests/fixtures/lora_step/model (Qwen2, dim 32, 2 layers, 4 heads, 2 kv). */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>

#include "fuzz_util.h"
#include "lora.h"
#include "model.h"

static const fp_model_config model = {
    .arch = "Qwen2ForCausalLM", .dim = 32, .hidden_dim = 48, .n_layers = 2, .n_heads = 4,
    .n_kv_heads = 2, .vocab_size = 64, .max_seq_len = 64, .rms_eps = 1e-6f,
    .rope_theta = 10000.0f, .qkv_bias = 1, .bos_id = -1, .eos_id = -1,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    size_t jlen, slen;
    const uint8_t *st;
    fz_split(data, len, &jlen, &st, &slen);
    fz_write("adapter_config.json", data, jlen, 0600);
    char stpath[600];
    snprintf(stpath, sizeof stpath, "%s/adapter_model.safetensors", fz_tmpdir());
    if (st)
        fz_write("adapter_model.safetensors", st, slen, 0600);
    else
        remove(stpath);
    fp_lora *lo = fp_lora_load(fz_tmpdir(), &model);
    if (fz_verdict("fp_lora_load", lo != NULL))
        assert(fp_lora_check_model(lo, &model) == 0);
    fp_lora_free(&lo);
    assert(!lo);
    return 0;
}

/* fuzz_model_config.c - fp_config_load on a model directory's config.json
 * (HF field names, validated: sizes, heads, kv heads, head_dim). What it
 * accepts must pass fp_config_validate and survive fp_config_save + load. */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <string.h>

#include "fuzz_util.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    char path[600];
    snprintf(path, sizeof path, "%s", fz_write("config.json", data, len, 0600));
    fp_model_config c, again;
    if (!fz_verdict("fp_config_load", fp_config_load(path, &c) == 0))
        return 0;
    assert(fp_config_validate(&c, "fuzz") == 0);
    assert(fp_head_dim(&c) > 0 && fp_kv_dim(&c) > 0);
    assert(fp_config_save(path, &c) == 0);
    assert(fp_config_load(path, &again) == 0);
    assert(again.dim == c.dim && again.n_layers == c.n_layers &&
           again.n_heads == c.n_heads && again.n_kv_heads == c.n_kv_heads &&
           again.vocab_size == c.vocab_size && again.hidden_dim == c.hidden_dim);
    return 0;
}

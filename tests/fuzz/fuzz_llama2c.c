/* fuzz_llama2c.c - the llama2.c imports behind `fedpeft convert`: a
 * checkpoint (fp_llama2c_load: 7-int header checked against the exact file
 * size, then the float arrays) and a tokenizer .bin (fp_tokenizer_convert_llama2c:
 * max_token_len, scored pieces, merges derived from the scores).
 *
 * Input: one byte; bit 0 clear: the rest is a checkpoint. Bit 0 set: a
 * little-endian u16 v, vocab_size = 3 + v % 1022, then the tokenizer .bin. A
 * tokenizer.json the converter wrote must load and encode: the converter is
 * the only writer of those files that we control. */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "model.h"
#include "tokenizer.h"

static void checkpoint(const uint8_t *data, size_t len)
{
    const char *path = fz_write("input", data, len, 0600);
    fp_model *m = fp_llama2c_load(path);
    if (!fz_verdict("fp_llama2c_load", m != NULL))
        return;
    assert(fp_config_validate(&m->cfg, "fuzz") == 0);
    assert(m->n_floats > 0 && m->w.tok_emb && m->w.lm_head);
    fp_model_free(&m);
    assert(!m);
}

static void tokenizer(const uint8_t *data, size_t len)
{
    if (len < 2)
        return;
    int vocab = 3 + (int)((data[0] | data[1] << 8) % 1022);
    char in[600], out[600];
    snprintf(in, sizeof in, "%s", fz_write("input", data + 2, len - 2, 0600));
    snprintf(out, sizeof out, "%s/tok", fz_tmpdir());
    mkdir(out, 0700);
    if (!fz_verdict("fp_tokenizer_convert_llama2c",
                    fp_tokenizer_convert_llama2c(in, vocab, out) == 0))
        return;
    fp_tokenizer *t = fp_tokenizer_load(out);
    if (!t) {
        fprintf(stderr, "fuzz_llama2c: the converted tokenizer does not load: %s\n",
                fp_error_get());
        abort();
    }
    assert(fp_tokenizer_vocab_size(t) == vocab);
    int32_t *ids = NULL;
    size_t n = 0;
    static const char text[] = "Once upon a time, 42 \xe2\x96\x81 caf\xc3\xa9 \xff";
    assert(fp_tokenizer_encode(t, text, sizeof text - 1, 1, &ids, &n) == 0);
    char *s = fp_tokenizer_decode(t, ids, n, 1);
    assert(s);
    free(s);
    free(ids);
    fp_tokenizer_free(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 1)
        return 0;
    if (data[0] & 1)
        tokenizer(data + 1, len - 1);
    else
        checkpoint(data + 1, len - 1);
    return 0;
}

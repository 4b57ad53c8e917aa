/* fuzz_data_records.c - a worker's data file through fp_dataset_load: the
 * record reader (data_records.c: JSON values one at a time, JSONL lines,
 * blank-line text blocks, skip_bad resynchronisation), the forms' fields and
 * their tokens (data_pack.c: text, alpaca templates, input_ids against the
 * vocabulary) and the validation split (data_load.c).
 *
 * Input: one byte of options (format = bits 0-2 modulo 5, skip_bad = bit 3,
 * a split = bit 4), then the file. Text is tokenized with a tiny byte-level
 * tokenizer (fuzz_util.h), whose vocabulary also bounds input_ids. */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <stdlib.h>

#include "data.h"
#include "fuzz_util.h"
#include "tokenizer.h"

static fp_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char *json = fz_tiny_tokenizer_json();
    const char *path = fz_write("tokenizer.json", json, strlen(json), 0600);
    free(json);
    tok = fp_tokenizer_load(path);
    if (!tok) {
        fprintf(stderr, "fuzz_data_records: the built-in tokenizer: %s\n", fp_error_get());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 1)
        return 0;
    fp_data_options o;
    fp_data_options_default(&o);
    o.format = (fp_data_format)((data[0] & 7) % 5);
    o.skip_bad = (data[0] >> 3) & 1;
    o.val_fraction = (data[0] >> 4) & 1 ? 0.25 : 0.0;
    const char *path = fz_write("input", data + 1, len - 1, 0600);
    int vocab = fp_tokenizer_vocab_size(tok);
    fp_dataset d;
    if (!fz_verdict("fp_dataset_load", fp_dataset_load(path, tok, vocab, &o, &d) == 0))
        return 0;
    assert(d.format != FP_FORMAT_AUTO);
    assert(d.train.n + d.valid.n > 0);   /* "holds no tokens" is an error */
    for (size_t i = 0; i < d.train.n; i++)
        assert(d.train.ids[i] >= 0 && d.train.ids[i] < vocab);
    for (size_t i = 0; i < d.valid.n; i++)
        assert(d.valid.ids[i] >= 0 && d.valid.ids[i] < vocab);
    (void)fp_tokens_targets(&d.train);
    fp_dataset_free(&d);
    return 0;
}

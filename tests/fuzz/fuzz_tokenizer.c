/* fuzz_tokenizer.c - fp_tokenizer_load on a tokenizer.json (model, added
 * tokens, normalizer, pre-tokenizer, post-processor, decoder) and on an
 * optional tokenizer_config.json next to it, then encode and decode with
 * whatever loaded.
 *
 * Input: tokenizer.json [NUL text [NUL tokenizer_config.json]]. Without a
 * text a fixed one is encoded (ASCII, digits, a special-token look-alike,
 * U+2581, invalid UTF-8). Decoding covers the encoded ids, the empty list and
 * the first ids of the vocabulary one by one (stored pieces of any shape). */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer.h"

static const char default_text[] =
    "Hello world, 123 45678!  <s> <|endoftext|>\n\tcaf\xc3\xa9 \xe2\x96\x81x \xff\xfe end";

static void decode_ok(const fp_tokenizer *t, const int32_t *ids, size_t n, int skip)
{
    char *s = fp_tokenizer_decode(t, ids, n, skip);
    assert(s || n > 0);     /* only a bad id may fail, and there is none in n == 0 */
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    size_t jlen, rest_len, tlen, clen;
    const uint8_t *rest, *text, *conf;
    fz_split(data, len, &jlen, &rest, &rest_len);
    text = (const uint8_t *)default_text;
    tlen = sizeof default_text - 1;
    conf = NULL;
    clen = 0;
    if (rest) {
        fz_split(rest, rest_len, &tlen, &conf, &clen);
        text = rest;
    }
    char dir[600], cpath[700];
    snprintf(dir, sizeof dir, "%s/tok", fz_tmpdir());
    mkdir(dir, 0700);
    fz_write("tok/tokenizer.json", data, jlen, 0600);
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    if (conf)
        fz_write("tok/tokenizer_config.json", conf, clen, 0600);
    else
        remove(cpath);

    fp_tokenizer *t = fp_tokenizer_load(dir);
    if (!fz_verdict("fp_tokenizer_load", t != NULL))
        return 0;
    int nv = fp_tokenizer_vocab_size(t);
    int32_t *ids = NULL;
    size_t n = 0;
    if (fp_tokenizer_encode(t, (const char *)text, tlen, 1, &ids, &n) == 0) {
        for (size_t i = 0; i < n; i++)
            assert(ids[i] >= 0);
        decode_ok(t, ids, n, 0);
        decode_ok(t, ids, n, 1);
    }
    free(ids);
    ids = NULL;
    if (fp_tokenizer_encode_special(t, (const char *)text, tlen, 1, 0, &ids, &n) == 0)
        decode_ok(t, ids, n, 1);
    free(ids);
    int32_t none = 0;
    decode_ok(t, &none, 0, 0);
    (void)fp_tokenizer_bos(t);
    (void)fp_tokenizer_eos(t);
    for (int32_t id = 0; id < nv && id < 32; id++) {
        const char *piece = fp_tokenizer_id_to_token(t, id);
        if (piece)
            (void)fp_tokenizer_token_id(t, piece);
        (void)fp_tokenizer_is_special(t, id);
        char *s = fp_tokenizer_decode(t, &id, 1, 0);
        free(s);
    }
    assert(nv > 0);     /* a loaded tokenizer has something to encode with */
    fp_tokenizer_free(&t);
    assert(!t);
    return 0;
}

/* tokenizer.h - Hugging Face tokenizer.json (BPE), encode and decode.
 *
 * This issue covers what a converted llama2.c / SentencePiece-style
 * tokenizer.json needs: normalizer Prepend("\u2581") + Replace(" ", "\u2581")
 * (or the Metaspace pre-tokenizer), a BPE model with merges by rank and
 * byte_fallback (<0xNN>), added/special tokens, and the decoders Replace,
 * ByteFallback, Fuse, Strip. Unsupported components are refused with an error
 * naming them.
 */
#ifndef FP_TOKENIZER_H
#define FP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

typedef struct fp_tokenizer fp_tokenizer;

/* Loads tokenizer.json (a file path, or a directory holding one). */
fp_tokenizer *fp_tokenizer_load(const char *path) FP_WUR;
void fp_tokenizer_free(fp_tokenizer **self_p);

int fp_tokenizer_vocab_size(const fp_tokenizer *self);
int fp_tokenizer_bos(const fp_tokenizer *self);   /* -1 if none */
int fp_tokenizer_eos(const fp_tokenizer *self);   /* -1 if none */

/* Encodes len bytes of UTF-8 text. add_bos prepends BOS. *ids is malloc'd
 * (caller frees), *n its length. */
int fp_tokenizer_encode(const fp_tokenizer *self, const char *text, size_t len, int add_bos,
                        int32_t **ids, size_t *n) FP_WUR;

/* Decodes ids to a malloc'd NUL-terminated string (caller frees). Special
 * tokens are skipped when skip_special. NULL on error (bad id). */
char *fp_tokenizer_decode(const fp_tokenizer *self, const int32_t *ids, size_t n,
                          int skip_special) FP_WUR;

/* Converts a llama2.c tokenizer (tok512.bin format) with vocab_size entries
 * into a HF tokenizer.json at out_path (SentencePiece-style BPE, byte
 * fallback, merges derived from the piece scores as HF's converter does). */
int fp_tokenizer_convert_llama2c(const char *tok_bin, int vocab_size, const char *out_path) FP_WUR;

#endif

/* tokenizer.h - Hugging Face tokenizer.json (BPE), encode and decode.
 *
 * This issue covers what a converted llama2.c / SentencePiece-style
 * tokenizer.json needs: normalizer Prepend("\u2581") + Replace(" ", "\u2581")
 * (or the Metaspace pre-tokenizer), a BPE model with merges by rank and
 * byte_fallback (<0xNN>), added/special tokens, and the decoders Replace,
 * ByteFallback, Fuse, Strip. Unsupported components are refused with an error
 * naming them.
 *
 * Semantics are those of huggingface/tokenizers: added tokens are matched
 * literally (longest first) in the raw text before normalizing, the normalizer
 * runs on each piece between them, and BPE merges the adjacent pair of lowest
 * merge rank (leftmost on ties). A loaded tokenizer is read-only: encode and
 * decode may be called from several threads at once.
 */
#ifndef FP_TOKENIZER_H
#define FP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

typedef struct fp_tokenizer fp_tokenizer;

/* Loads tokenizer.json (a file path, or a directory holding one). A
 * tokenizer_config.json in the same directory, when present, supplies BOS if
 * the post_processor does not (add_bos_token + bos_token), can turn BOS off
 * (add_bos_token false), and names EOS (eos_token). Caller frees. */
fp_tokenizer *fp_tokenizer_load(const char *path) FP_WUR;
void fp_tokenizer_free(fp_tokenizer **self_p);

int fp_tokenizer_vocab_size(const fp_tokenizer *self);
/* BOS is the token encode(add_bos) prepends: -1 when the tokenizer adds none
 * (then add_bos adds nothing). */
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
 * fallback, merges derived from the piece scores as HF's converter does).
 * out_path may be a directory (tokenizer.json is written inside); a
 * tokenizer_config.json (LlamaTokenizer, add_bos_token) is written next to it.
 * llama2.c format: int32 max_token_len, then vocab_size records of float32
 * score, int32 len, len bytes; ids 0..2 <unk> <s> </s>, 3..258 <0xNN>, ' '
 * where SentencePiece has U+2581. The whole file must be vocab_size records. */
int fp_tokenizer_convert_llama2c(const char *tok_bin, int vocab_size, const char *out_path) FP_WUR;

#endif

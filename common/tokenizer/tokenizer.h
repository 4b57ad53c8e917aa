/* common/tokenizer/ - text <-> token ids, exactly as Hugging Face tokenizers
 * does. Uses base; PCRE2 and cJSON. Knows nothing of models or the federation.
 *
 * tokenizer.h - Hugging Face tokenizer.json (BPE), encode and decode.
 *
 * Both BPE families are supported:
 *  - SentencePiece-style (LLaMA-1/2, TinyLlama, converted llama2.c): normalizer
 *    Prepend("\u2581") + Replace(" ", "\u2581") or the Metaspace
 *    pre-tokenizer, byte_fallback (<0xNN>), decoders Replace, ByteFallback,
 *    Fuse, Strip, Metaspace.
 *  - byte-level (GPT-2, SmolLM, Qwen2, LLaMA-3): pre-tokenizers ByteLevel
 *    (GPT-2's regex, add_prefix_space, bytes_to_unicode), Split (a PCRE2
 *    Regex or String with behavior and invert), Digits, Whitespace,
 *    WhitespaceSplit, Sequence; model ignore_merges; decoder ByteLevel.
 * Added tokens (special or not; lstrip, rstrip, single_word) are matched
 * before BPE. Post-processors TemplateProcessing, RobertaProcessing,
 * BertProcessing, ByteLevel; tokenizer_config.json's add_bos_token,
 * add_eos_token, bos_token and eos_token adjust them as transformers does.
 * Unsupported components are refused with an error naming them.
 *
 * Semantics are those of huggingface/tokenizers: added tokens are matched
 * literally (longest first) in the raw text before normalizing, the normalizer
 * runs on each piece between them, and BPE merges the adjacent pair of lowest
 * merge rank (leftmost on ties). A loaded tokenizer is read-only but for a
 * word -> ids memo behind a try-lock (a call that finds it busy uses a private
 * one): encode and decode may be called from several threads at once.
 */
#ifndef FP_TOKENIZER_H
#define FP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

typedef struct fp_tokenizer fp_tokenizer;

/* Loads tokenizer.json (a file path, or a directory holding one). A
 * tokenizer_config.json in the same directory, when present, adds BOS/EOS
 * the post_processor lacks (add_bos_token/add_eos_token true + bos_token/
 * eos_token), removes them when false, and names EOS. Caller frees. */
fp_tokenizer *fp_tokenizer_load(const char *path) FP_WUR;
void fp_tokenizer_free(fp_tokenizer **self_p);

int fp_tokenizer_vocab_size(const fp_tokenizer *self);
/* BOS is the first token encode(add_bos) prepends: -1 when the tokenizer adds
 * none (then add_bos adds nothing). EOS is tokenizer_config.json's eos_token,
 * else the last token the post-processor appends, else -1. */
int fp_tokenizer_bos(const fp_tokenizer *self);   /* -1 if none */
int fp_tokenizer_eos(const fp_tokenizer *self);   /* -1 if none */

/* Id of a token by its text ("<|endoftext|>", "<|im_end|>"): added tokens
 * first, then the model vocab (byte-level pieces as stored, e.g. "\u0120the").
 * -1 if absent. */
int32_t fp_tokenizer_token_id(const fp_tokenizer *self, const char *token);
/* Stored text of id (owned by the tokenizer), NULL if out of range. */
const char *fp_tokenizer_id_to_token(const fp_tokenizer *self, int32_t id);
/* 1 if id is an added token marked special. */
int fp_tokenizer_is_special(const fp_tokenizer *self, int32_t id);

/* Encodes len bytes of UTF-8 text (invalid UTF-8 is accepted: byte-level
 * models see its bytes, others fall back to <0xNN> or unk). add_bos
 * prepends what the post-processor puts before the text (BOS), never EOS.
 * Special tokens written in the text are matched. *ids is malloc'd (caller
 * frees), *n its length. */
int fp_tokenizer_encode(const fp_tokenizer *self, const char *text, size_t len, int add_bos,
                        int32_t **ids, size_t *n) FP_WUR;

/* Like encode, with HF's switches: add_special adds everything the
 * post-processor adds (BOS and EOS alike: add_special_tokens=True);
 * match_special 0 treats special tokens written in the text as plain text
 * (split_special_tokens=True; safe for untrusted text). Non-special added
 * tokens are always matched. */
int fp_tokenizer_encode_special(const fp_tokenizer *self, const char *text, size_t len,
                                int add_special, int match_special, int32_t **ids,
                                size_t *n) FP_WUR;

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

/* tokenizer_internal.h - shared by the tokenizer_*.c files, not installed.
 *
 * The tokenizer is split by stage: tokenizer.c loads the model, added tokens,
 * post-processor and config; tokenizer_pretok.c owns normalizers and
 * pre-tokenizers (incl. ByteLevel and PCRE2 regex splits); tokenizer_bpe.c is
 * the merge engine and its cache; tokenizer_encode.c runs the stages;
 * tokenizer_decode.c the decoders; tokenizer_convert.c the llama2.c
 * converter; tokenizer_vocab.c id/piece lookups; tokenizer_util.c buffers,
 * hash maps, UTF-8 and JSON helpers.
 */
#ifndef FP_TOKENIZER_INTERNAL_H
#define FP_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define TOK_MAX_ID (1 << 24)     /* bounds ids read from files before allocating */
#define TOK_MAX_FILE (1u << 30)  /* 1 GiB: larger tokenizer.json is surely wrong */

typedef struct { char *s; size_t len; } tstr;
typedef struct { char *p; size_t len, cap; } sbuf;
typedef struct { int32_t *p; size_t len, cap; } ivec;

/* ---------------------------------------------------- tokenizer_util.c */

int tok_grow(void **p, size_t *cap, size_t need, size_t elem);
int sbuf_put(sbuf *b, const void *d, size_t n);
int ivec_push(ivec *v, int32_t x);
int tstr_dup(tstr *d, const char *s, size_t len);
/* Appends s with every non-overlapping `pat` replaced by `rep`. */
int put_replaced(sbuf *out, const char *s, size_t len, const tstr *pat, const tstr *rep);
/* Length of the UTF-8 character at s; 1 for an invalid byte (lenient). */
size_t utf8_len(const unsigned char *s, size_t avail);
/* Length of a well-formed UTF-8 character at s (no overlongs or
 * surrogates, as PCRE2 demands), 0 if s does not start one. */
size_t utf8_strict(const unsigned char *s, size_t avail);
int utf8_valid(const unsigned char *s, size_t len);
/* Appends s with each ill-formed sequence replaced by U+FFFD, as Rust's
 * String::from_utf8_lossy does. */
int put_utf8_lossy(sbuf *out, const unsigned char *s, size_t len);
uint64_t hash_bytes(const char *s, size_t len);
size_t pow2_at_least(size_t n);

/* piece -> id; slots hold id+1 (0 = empty); keys[id] is the piece. */
typedef struct { uint32_t *slots; size_t mask; const tstr *keys; } strmap;
int strmap_init(strmap *m, const tstr *keys, size_t n);
int32_t strmap_get(const strmap *m, const char *s, size_t len);
void strmap_put(strmap *m, int32_t id);

/* (left_id, right_id) -> (rank, merged_id). key 0 = empty. */
typedef struct { uint64_t key; uint32_t rank; int32_t id; } mslot;
const mslot *merge_get(const mslot *tab, size_t mask, int32_t l, int32_t r);
void merge_put(mslot *tab, size_t mask, int32_t l, int32_t r, uint32_t rank, int32_t id);

char *tok_read_whole(const char *path, size_t *len);
cJSON *tok_parse_json_file(const char *path);
const char *jstr(const cJSON *o, const char *key);
int jbool(const cJSON *o, const char *key, int dflt);
int jid(const cJSON *v, int32_t *out);
/* A stage is null, one component, or a Sequence of components under `list`;
 * *n is the number of components, -1 for a Sequence without the list. */
const cJSON *stage_items(const cJSON *o, const char *list, int *n);
/* The "String" of a Replace pattern (Regex refused). */
int jpattern(const char *path, const char *where, const cJSON *o, tstr *out);
/* Metaspace prepend_scheme (or the older add_prefix_space) and replacement. */
int scheme_of(const char *path, const char *where, const cJSON *o, int *scheme);
int metaspace_repl(const char *path, const char *where, const cJSON *o, tstr *out);

/* ------------------------------------------------------------ the object */

enum { NORM_PREPEND, NORM_REPLACE, NORM_REPLACE_RE };
enum { PRE_METASPACE, PRE_BYTELEVEL, PRE_SPLIT };
enum { DEC_REPLACE, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE, DEC_BYTELEVEL };
enum { SCHEME_ALWAYS, SCHEME_FIRST, SCHEME_NEVER };
/* tokenizers' SplitDelimiterBehavior */
enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };

typedef struct { int kind; tstr a, b; pcre2_code *re; } norm_op; /* Prepend a | Replace a->b */
typedef struct {
    int kind;
    tstr repl;               /* Metaspace replacement */
    int scheme, split;       /* Metaspace */
    int prefix_space;        /* ByteLevel add_prefix_space */
    pcre2_code *re;          /* Split / ByteLevel(use_regex) / Digits pattern */
    int behavior, invert;    /* Split */
} pre_op;
typedef struct { int kind; tstr a, b; int start, stop, scheme; } dec_op;
typedef struct {
    tstr content;
    int32_t id;
    int special, lstrip, rstrip, single_word;
} added_tok;

/* Pre-token -> ids memo for byte-level BPE (HF keeps one too). Bounded: it
 * is emptied when full. */
typedef struct {
    uint32_t *slots;          /* entry index + 1, 0 = empty */
    size_t mask;
    size_t *key_off, *ids_off; /* per entry: offsets into keys / ids */
    uint32_t *key_len, *n_ids;
    size_t n, cap;
    sbuf keys;
    ivec ids;
} bpe_cache;

struct fp_tokenizer {
    char *path;
    /* model: BPE */
    tstr *vocab;            /* model pieces by id; a hole has s == NULL */
    size_t n_vocab;
    strmap vmap;
    mslot *merges;
    size_t merge_mask;
    int32_t unk, byte_id[256];
    int byte_fallback, fuse_unk, ignore_merges;
    int split_at_meta;      /* see meta_split_safe() */
    /* added tokens, matched literally in the raw text */
    added_tok *added;
    size_t n_added;
    unsigned char added_first[256];
    /* stages */
    norm_op *norm;
    size_t n_norm;
    pre_op *pre;
    size_t n_pre;
    dec_op *dec;
    size_t n_dec;
    int has_decoder, byte_level;
    /* GPT-2 bytes_to_unicode: byte -> 1..2 UTF-8 bytes, code point -> byte */
    unsigned char bl_enc[256][2], bl_enc_len[256];
    int16_t bl_dec[0x144];
    /* id -> text (added content wins), id -> special */
    const tstr **id_str;
    unsigned char *id_special;
    size_t n_ids;
    /* post-processor + tokenizer_config.json: ids around the text */
    ivec post_pre, post_suf;
    int32_t eos;
    /* shared memo, used by whichever encode call holds the lock */
    pthread_mutex_t cache_lock;
    bpe_cache cache;
};

/* ------------------------------------------------------------ encoding */

typedef struct { size_t off, len; int first; } span;
typedef struct { int32_t id, prev, next, alive; } sym;
typedef struct { uint32_t rank, pos; int32_t id; } hitem;
typedef struct { size_t b, e; int m; } piece;  /* [b, e), m: matched the pattern */

/* Per-call scratch so that encode stays reentrant on a shared tokenizer. */
typedef struct {
    sbuf a, b, c;              /* text before / after a stage; c: ByteLevel temp */
    span *wa, *wb;             /* words before / after a pre-tokenizer */
    size_t nwa, nwb, wa_cap, wb_cap;
    sym *s;
    size_t s_cap;
    hitem *h;
    size_t nh, h_cap;
    pcre2_match_data *md;
    piece *pc;                 /* regex split pieces */
    size_t npc, pc_cap;
    bpe_cache *cache;          /* the tokenizer's (locked) or local_cache */
    bpe_cache local_cache;
} scratch;

/* tokenizer_model.c */
int tok_load_model(fp_tokenizer *t, const char *path, const cJSON *model);

/* tokenizer_post.c */
int tok_load_post(fp_tokenizer *t, const char *path, const cJSON *o);
int tok_load_config(fp_tokenizer *t, const char *dir);

/* tokenizer_regex.c */
/* Compiles a pattern (UTF, UCP, JIT when available); literal: a String. */
int tok_regex_compile(const char *path, const char *where, const char *pat, int literal,
                      pcre2_code **out);
/* Splits s[0, len) into sc->pc by the matches of re, flipped by invert and
 * then grouped per behavior (SPLIT_*); empty pieces are dropped. Invalid
 * UTF-8 bytes become pieces of their own. */
int tok_regex_split(const pcre2_code *re, scratch *sc, const char *s, size_t len, int behavior,
                    int invert);
/* Appends s with every match of re replaced by rep. */
int tok_regex_replace(const pcre2_code *re, scratch *sc, sbuf *out, const char *s, size_t len,
                      const tstr *rep);

/* tokenizer_norm.c */
int tok_load_normalizer(fp_tokenizer *t, const char *path, const cJSON *o);
int tok_normalize(const fp_tokenizer *t, scratch *sc, const char *s, size_t len);
void tok_swap_text(scratch *sc);

/* tokenizer_pretok.c */
int tok_load_pre_tokenizer(fp_tokenizer *t, const char *path, const cJSON *o);
void tok_free_stages(fp_tokenizer *t);
void tok_bytelevel_table(fp_tokenizer *t);
/* Splits the normalized text (sc->a) into words (sc->wa). */
int tok_pre_tokenize(const fp_tokenizer *t, scratch *sc, int at_start);

/* tokenizer_bpe.c */
int tok_bpe_word(const fp_tokenizer *t, scratch *sc, const char *w, size_t len, ivec *out);
int meta_split_safe(const fp_tokenizer *t);
void bpe_cache_free(bpe_cache *c);

/* tokenizer_decode.c */
int tok_load_decoder(fp_tokenizer *t, const char *path, const cJSON *o);

#endif

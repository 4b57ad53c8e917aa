/* checkpoint.h - the coordinator's durable state, STATE_DIR/checkpoint.bin.
 *
 * Written after every completed (or abandoned) round, atomically: a temp file
 * in the same directory, fsync, rename over the old one, fsync the directory.
 * A kill -9 at any moment leaves either the old or the new checkpoint.
 *
 * Format (little-endian, version 1):
 *   magic "FPCKPT\r\n" (8) | u32 version | u32 flags (bit 0: run finished)
 *   run_id     char[40]  NUL-padded
 *   model_hash char[72]  NUL-padded hex sha256 of the base model
 *   strategy   char[32]  NUL-padded strategy name
 *   u64 round            last completed round (0: the initial evaluation)
 *   u64 n_params         floats in the adapter
 *   u64 strategy_len     bytes of strategy state
 *   u64 n_metrics        metrics lines
 *   f32 adapter[n_params]
 *   u8  strategy_state[strategy_len]
 *   n_metrics x (u32 len | len bytes of one JSON line, no newline)
 *   u8  checksum[32]     BLAKE2b (libsodium crypto_generichash) of all bytes before
 *
 * Loading checks every claim against the file size and bounds before
 * allocating, then the checksum: a truncated or corrupted file is a clear
 * error, never a crash.
 */
#ifndef COORD_CHECKPOINT_H
#define COORD_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define CKPT_VERSION 1u
#define CKPT_MAX_METRICS 1000000u
#define CKPT_MAX_LINE (64u * 1024u)
#define CKPT_MAX_STRATEGY ((uint64_t)1 << 34)
#define CKPT_FLAG_FINISHED 1u

typedef struct {
    char run_id[40];
    char model_hash[72];
    char strategy[32];
    uint32_t flags;
    uint64_t round;
    size_t n_params;
    float *adapter;             /* owned */
    uint8_t *strategy_state;    /* owned */
    size_t strategy_len;
    char **metrics;             /* owned: n_metrics NUL-terminated lines */
    size_t n_metrics;
} checkpoint;

/* Writes ck to path atomically. */
int checkpoint_save(const checkpoint *ck, const char *path) FP_WUR;
/* Loads and validates path into *ck (zeroed first). Returns 1 when the file
 * does not exist (*ck empty, no error), 0 when loaded, -1 with an error
 * naming the file and what is wrong. Caller frees with checkpoint_clear. */
int checkpoint_load(checkpoint *ck, const char *path) FP_WUR;
/* Frees what ck owns and zeroes it. */
void checkpoint_clear(checkpoint *ck);
/* Appends a copy of line to ck->metrics. */
int checkpoint_add_metrics(checkpoint *ck, const char *line) FP_WUR;

#endif

/* test_util.h - helpers shared by the tests (paths, temp dirs, running the tool). */
#ifndef FP_TEST_UTIL_H
#define FP_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* ../shared/data relative to the source tree (FP_SHARED_DATA overrides): only for
 * optional extra cases, which skip when it is absent. */
const char *tu_shared_data(void);
/* tests/fixtures/REL in the source tree: the data the required cases need,
 * bundled (tests/fixtures/SOURCE.md). Static rotating buffer. */
const char *tu_fixture(const char *rel);
/* data/REL in the source tree (the demo's model, tokenizer and text). */
const char *tu_data(const char *rel);
/* Joins a and b with '/' into a static rotating buffer (8 slots). */
const char *tu_path(const char *a, const char *b);
/* Makes a fresh empty temp directory under the build dir; returns its path
 * (static rotating buffer). */
const char *tu_tempdir(const char *tag);
/* Runs a shell command; returns its exit status (or -1). Captures stdout+stderr
 * into *out (malloc'd, caller frees) when out != NULL. */
int tu_run(const char *cmd, char **out);
/* Reads a whole file (malloc'd, NUL-terminated); NULL if missing. */
char *tu_read_file(const char *path, size_t *len);
/* Writes bytes to a file; 0 on success. */
int tu_write_file(const char *path, const void *data, size_t len);
/* How much slower than a plain Release build this run may be: 3 in a sanitizer
 * build (ASan/UBSan run the programs 2-3x slower), FP_TEST_SLOW=F (F >= 1;
 * FP_TEST_SLOW=1 means 3) for a slow or loaded machine, else 1. Scale time
 * limits (deadlines, waits) by it, never what a test asserts. */
double tu_slow(void);

/* A random model with 8 heads and 2 KV heads (grouped-query attention) of the
 * given shape, weights from fp_model_randomize(seed, 0.1). NULL on failure. */
fp_model *tu_gqa_model(const char *arch, int dim, int layers, int hidden, int vocab,
                       int qkv_bias, uint64_t seed);

#endif

/* common/base/ - what every subsystem needs and nothing else: errors (this
 * file), the seeded RNG (rng.h) and INI config tables (config.h). Uses only inih.
 *
 * fp_error.h - error reporting for the fedpeft library.
 *
 * Library functions return 0 / -1 (or NULL) and record one human-readable
 * message with fp_error_set(): what was wrong, where (file, tensor, key), and
 * what to do. Callers print fp_error_get() once, at the top. The message lives
 * in thread-local storage, so workers and tests may call from several threads.
 */
#ifndef FP_ERROR_H
#define FP_ERROR_H

#include <stdarg.h>

#if defined(__GNUC__)
#define FP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define FP_WUR __attribute__((warn_unused_result))
#else
#define FP_PRINTF(a, b)
#define FP_WUR
#endif

/* Records the message (replacing any earlier one). Always returns -1 so that
 * `return fp_error_set(...)` reads naturally. */
int fp_error_set(const char *fmt, ...) FP_PRINTF(1, 2);

/* Prepends context ("loading model dir/: ") to the current message. Returns -1. */
int fp_error_prefix(const char *fmt, ...) FP_PRINTF(1, 2);

/* The current message, or "" if none. Valid until the next set/prefix/clear. */
const char *fp_error_get(void);

void fp_error_clear(void);

#endif

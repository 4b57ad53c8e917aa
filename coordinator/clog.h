/* clog.h - the coordinator's log: one line per event on stderr,
 * "2026-11-29T01:02:03Z coordinator: MESSAGE". */
#ifndef COORD_CLOG_H
#define COORD_CLOG_H

#include <stdint.h>

#include "fp_error.h"

void clog_info(const char *fmt, ...) FP_PRINTF(1, 2);
/* Same line with "error: " before the message. */
void clog_error(const char *fmt, ...) FP_PRINTF(1, 2);

/* A peer's free text made printable in place (control characters -> '?'),
 * so it cannot forge log lines. */
void clog_printable(char *s);

/* Monotonic milliseconds (timers) and wall-clock milliseconds since the epoch. */
int64_t clog_now_ms(void);
int64_t clog_wall_ms(void);

#endif

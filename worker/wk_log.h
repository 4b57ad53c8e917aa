/* wk_log.h - one line per event on stderr: "2026-11-29T01:02:03Z worker w01: ...". */
#ifndef FP_WK_LOG_H
#define FP_WK_LOG_H

/* Sets the name after "worker" in every line (the worker id). */
void wk_log_set_id(const char *id);
void wk_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

/* wk_log.c - timestamped log lines (see wk_log.h). */
#include "wk_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "term_line.h"

static char log_id[80];

void wk_log_set_id(const char *id) { snprintf(log_id, sizeof log_id, "%s", id ? id : ""); }

void wk_log(const char *fmt, ...)
{
    char stamp[32], line[2048];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    term_line_break(); /* a progress bar left open on a terminal */
    /* One fprintf per line so concurrent writers do not interleave mid-line. */
    fprintf(stderr, "%s worker%s%s: %s\n", stamp, log_id[0] ? " " : "", log_id, line);
}

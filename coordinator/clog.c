/* clog.c - the coordinator's one-line-per-event log (see clog.h). */
#include "clog.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

static void clog_emit(const char *prefix, const char *fmt, va_list ap)
{
    char stamp[32], msg[2048];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    vsnprintf(msg, sizeof msg, fmt, ap);
    /* One fprintf per line so that lines from several processes do not mix. */
    fprintf(stderr, "%s coordinator: %s%s\n", stamp, prefix, msg);
    fflush(stderr);
}

void clog_info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    clog_emit("", fmt, ap);
    va_end(ap);
}

void clog_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    clog_emit("error: ", fmt, ap);
    va_end(ap);
}

int64_t clog_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t clog_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void clog_printable(char *s)
{
    for (char *c = s; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
}

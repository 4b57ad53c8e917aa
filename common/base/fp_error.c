/* fp_error.c - thread-local last-error message (see fp_error.h). */
#include "fp_error.h"

#include <stdio.h>
#include <string.h>

#define FP_ERROR_MAX 1024

static _Thread_local char fp_error_buf[FP_ERROR_MAX];

int fp_error_set(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fp_error_buf, sizeof fp_error_buf, fmt, ap);
    va_end(ap);
    return -1;
}

int fp_error_prefix(const char *fmt, ...)
{
    char head[FP_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    /* Shift the old message right and put the context in front (truncating). */
    size_t hl = strlen(head), ol = strlen(fp_error_buf);
    if (hl > FP_ERROR_MAX - 1)
        hl = FP_ERROR_MAX - 1;
    if (ol > FP_ERROR_MAX - 1 - hl)
        ol = FP_ERROR_MAX - 1 - hl;
    memmove(fp_error_buf + hl, fp_error_buf, ol);
    memcpy(fp_error_buf, head, hl);
    fp_error_buf[hl + ol] = '\0';
    return -1;
}

const char *fp_error_get(void) { return fp_error_buf; }

void fp_error_clear(void) { fp_error_buf[0] = '\0'; }

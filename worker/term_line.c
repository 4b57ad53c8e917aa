/* term_line.c - the open-line state of stderr (term_line.h). */
#include "term_line.h"

#include <stdio.h>

static int line_open; /* a bar is drawn without its newline */

void term_line_opened(void) { line_open = 1; }

void term_line_break(void)
{
    if (line_open) {
        fputc('\n', stderr);
        line_open = 0;
    }
}

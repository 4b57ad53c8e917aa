/* term_line.h - who owns the cursor on stderr. The progress bar (progress.c)
 * redraws one line without its newline; any other line (wk_log.c) must first
 * end it. Both call in here, so neither calls the other back. */
#ifndef FP_WK_TERM_LINE_H
#define FP_WK_TERM_LINE_H

/* A line was drawn on stderr without its newline. */
void term_line_opened(void);
/* Ends a line left open, so the next output starts at column 0. */
void term_line_break(void);

#endif

/* progress.c - the training progress bar or log lines (progress.h). */
#include "progress.h"

#include <stdio.h>
#include <unistd.h>

#include "term_line.h"
#include "wk_log.h"

#define BAR_WIDTH 20

static int tty = -1;        /* -1: not checked yet */
void wk_progress_break(void) { term_line_break(); }

static void eta_text(char *buf, size_t cap, const fp_progress *p)
{
    double left = p->step > 0 ? p->elapsed_s / p->step * (p->steps - p->step) : 0;
    if (left >= 3600)
        snprintf(buf, cap, "%dh%02dm", (int)(left / 3600), (int)(left / 60) % 60);
    else if (left >= 60)
        snprintf(buf, cap, "%dm%02ds", (int)(left / 60), (int)left % 60);
    else
        snprintf(buf, cap, "%ds", (int)(left + 0.5));
}

void wk_progress(uint64_t round, const fp_progress *p)
{
    if (tty < 0)
        tty = isatty(STDERR_FILENO);
    char eta[32];
    eta_text(eta, sizeof eta, p);
    int last = p->step >= p->steps;
    if (tty) {
        char bar[BAR_WIDTH + 1];
        int fill = p->steps > 0 ? p->step * BAR_WIDTH / p->steps : BAR_WIDTH;
        for (int i = 0; i < BAR_WIDTH; i++)
            bar[i] = i < fill ? '=' : i == fill ? '>' : ' ';
        bar[BAR_WIDTH] = '\0';
        fprintf(stderr, "\r[%s] round %llu step %d/%d loss %.4f %.0f tok/s ETA %s\033[K", bar,
                (unsigned long long)round, p->step, p->steps, (double)p->loss, p->tokens_per_s,
                eta);
        term_line_opened();
        if (last)
            wk_progress_break();
        else
            fflush(stderr);
        return;
    }
    int every = p->steps >= 5 ? p->steps / 5 : 1;
    if (p->step % every == 0 || last)
        wk_log("round %llu: step %d/%d loss %.4f, %.0f tok/s, ETA %s", (unsigned long long)round,
               p->step, p->steps, (double)p->loss, p->tokens_per_s, eta);
}

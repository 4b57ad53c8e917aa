/* rounds_report.c - the per-round metrics lines (kept for the checkpoint and
 * metrics.jsonl) and the round's log summary (rounds_report.h). */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clog.h"
#include "rounds_report.h"
#include "rounds_state.h"


int rounds_add_line(rounds *r, const round_metrics *m)
{
    char *line = metrics_render(m);
    char **lines = line ? realloc(r->lines, (r->n_lines + 1) * sizeof *lines) : NULL;
    if (!lines) {
        free(line);
        return fp_error_set("out of memory for the metrics");
    }
    r->lines = lines;
    r->lines[r->n_lines++] = line;
    return 0;
}

/* Re-renders the last line (once the checkpoint time is known). */
void rounds_patch_last_line(rounds *r, const round_metrics *m)
{
    char *line = metrics_render(m);
    if (!line)
        return;
    free(r->lines[r->n_lines - 1]);
    r->lines[r->n_lines - 1] = line;
}

void rounds_log_round(const rounds *r, const round_metrics *m)
{
    uint64_t rej = 0;
    for (int i = 0; i < REJ_COUNT; i++)
        rej += m->rejected[i];
    clog_info("round %llu %s: train loss %.4f, val loss %.4f (%llu tokens), %u of %u reported, "
              "%llu rejected, %llu bytes up, %llu down, %.3fs train, %.3fs eval, %.3fs checkpoint",
              (unsigned long long)m->round, m->abandoned ? "abandoned" : "complete",
              m->train_loss, m->val_loss, (unsigned long long)m->val_tokens, m->reported,
              m->sampled, (unsigned long long)rej, (unsigned long long)m->bytes_up,
              (unsigned long long)m->bytes_down, m->t_train, m->t_eval, m->t_checkpoint);
    for (int i = 0; i < REJ_COUNT; i++)
        if (m->rejected[i])
            clog_info("round %llu: rejected %llu message(s): %s", (unsigned long long)m->round,
                      (unsigned long long)m->rejected[i], reject_reason_name(i));
}

/* rounds_agg.c - the end of the upload phase: aggregation (strategy, central
 * DP noise, server optimizer, accountant) or abandonment (rounds_agg.h). */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clog.h"
#include "finetune.h"
#include "rounds_agg.h"
#include "rounds_async.h"
#include "rounds_state.h"
#include "sampling.h"


/* [dp]: the round's fixed denominator D (sampling.h: the number sampled, or
 * fraction x registered under poisson) in the strategy's weight units: one
 * per worker in plain mode; under secure aggregation each member's input is
 * already weighted by 1 / sampled_weight (sa_new), so D / sampled_weight. It
 * does not depend on who reported: one worker's clipped update moves the mean
 * by at most C / D. */
static double dp_denominator(const rounds *r)
{
    double d = sampling_dp_denominator(r->cfg->sampling_mode, r->m.sampled,
                                       (unsigned)server_n_workers(r->srv), r->cfg->fraction);
    if (r->sa && r->sampled_weight > 0)
        d /= r->sampled_weight;
    return d;
}

/* Central DP without secure aggregation: noise N(0, (sigma C)^2) on the sum of
 * the (clipped, weight 1) updates, i.e. sigma C / D on the mean. */
static int plain_central_noise(rounds *r, float *view)
{
    double D = r->strat->denominator;
    float *x = r->staging;
    size_t n = r->n_view;
    if (!(D > 0))
        return fp_error_set("no fixed denominator for the noise");
    memset(x, 0, n * sizeof *x);
    if (fp_dp_add_noise(r->noise, x, n, r->cfg->dp_noise_multiplier, r->cfg->dp_clip_norm) < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        view[i] += (float)((double)x[i] / D);
    return 0;
}

/* One step of the accountant for this round's release: q = fraction under
 * poisson, sampled / registered under fixed (sampling_dp_q). */
static void account(rounds *r)
{
    if (!r->cfg->dp)
        return;
    double q = sampling_dp_q(r->cfg->sampling_mode, r->m.sampled,
                             (unsigned)server_n_workers(r->srv), r->cfg->fraction);
    if (fp_dp_accountant_add(&r->acct, q, r->cfg->dp_noise_multiplier, 1) < 0 ||
        fp_dp_accountant_epsilon(&r->acct, r->cfg->dp_delta, &r->last_epsilon, NULL) < 0)
        clog_error("round %llu: DP accountant: %s", (unsigned long long)r->round, fp_error_get());
}

static const char *server_opt_name(int i)
{
    static const char *const names[] = {"none", "fedavgm", "fedadam", "fedyogi", "fedadagrad"};
    return i >= 0 && i < 5 ? names[i] : "?";
}

/* fedavg/ffa in plain mode: the aggregate is a weighted mean of updates each
 * within the bound, so its change is within it too; a larger one means the
 * bound was bypassed (a bug or an attack) and is never applied. (Robust rules,
 * svd and flora are not means: no such check.) With [dp]'s fixed denominator D
 * the sum of n updates over D is within n / D bounds when D < n (poisson). */
static int impossible_aggregate(const rounds *r, const float *x)
{
    int s_ = r->cfg->strategy;
    int mean = r->cfg->robust == COORD_ROBUST_NONE &&
               (s_ == COORD_STRATEGY_FEDAVG || s_ == COORD_STRATEGY_FFA ||
                s_ == COORD_STRATEGY_ROLORA || s_ == COORD_STRATEGY_SCAFFOLD);
    double bound = rounds_update_bound(r, r->n_view), s = 0;
    const strategy *st = r->strat;
    if (st->denominator > 0 && st->weight_sum > st->denominator)
        bound *= st->weight_sum / st->denominator;
    if (r->sa || !mean || bound <= 0)
        return 0;
    for (size_t i = 0; i < r->n_view; i++) {
        double d = (double)x[i] - r->view_old[i];
        s += d * d;
    }
    if (sqrt(s) <= bound * (1 + 1e-5))
        return 0;
    return fp_error_set("the aggregate moves the adapter by %.4g, more than any mean of "
                        "updates within max_update_norm = %.4g can: refused", sqrt(s), bound);
}

/* scaffold: c from the released mean change (after any DP noise, before the
 * server optimizer), with |S| / N over bound identities and K lr of the round's
 * tasks. A refused update leaves c as it was (logged): the round still counts. */
static void scaffold_update(rounds *r, const float *x)
{
    if (r->cfg->strategy != COORD_STRATEGY_SCAFFOLD)
        return;
    float *dx = r->staging;
    for (size_t i = 0; i < r->n_view; i++)
        dx[i] = x[i] - r->view_old[i];
    int reg = server_n_workers(r->srv);
    double frac = reg > 0 ? (double)r->n_reported / (double)reg : 1.0;
    double k_lr = (double)r->cfg->local_steps * r->cfg->lr;
    if (strategy_scaffold_update(r->strat, dx, frac > 1 ? 1 : frac, k_lr) < 0)
        clog_error("round %llu: scaffold: %s; the control variate is unchanged",
                   (unsigned long long)r->round, fp_error_get());
}

int rounds_aggregate(rounds *r, int64_t now, const char *why)
{
    round_metrics *m = &r->m;
    rounds_async_blame(r);
    m->t_train = secs(now - r->phase_start_ms);
    m->reported = r->n_reported;
    m->dropped = m->sampled - r->n_reported;
    if (r->weight_sum > 0)
        m->train_loss = r->loss_wsum / r->weight_sum;
    int64_t t0 = clog_now_ms();
    float *x = r->view;
    size_t n = r->n_view;
    fp_ft_view_gather(r->global, r->view_kind, r->global->params, x);
    memcpy(r->view_old, x, n * sizeof *x);
    if (r->cfg->dp) {
        double D = dp_denominator(r);
        if (strategy_set_denominator(r->strat, D) < 0)
            return -1;
        clog_info("round %llu: DP mean = sum of %u clipped updates / %.6g (%s; %u sampled)",
                  (unsigned long long)r->round, r->n_reported,
                  sampling_dp_denominator(r->cfg->sampling_mode, m->sampled,
                                          (unsigned)server_n_workers(r->srv), r->cfg->fraction),
                  r->cfg->sampling_mode == COORD_SAMPLING_POISSON
                      ? "fraction x registered" : "the number sampled", m->sampled);
    }
    if (strategy_finish(r->strat, x) < 0)
        return -1;
    if (impossible_aggregate(r, x) < 0)
        return -1;
    if (r->cfg->dp && r->cfg->dp_mode == COORD_DP_CENTRAL && !r->sa &&
        plain_central_noise(r, x) < 0)
        clog_error("round %llu: DP noise: %s", (unsigned long long)r->round, fp_error_get());
    scaffold_update(r, x);
    if (r->sopt) {  /* the aggregate's change is the server optimizer's pseudo-gradient */
        float *d = r->staging;
        for (size_t i = 0; i < n; i++)
            d[i] = x[i] - r->view_old[i];
        memcpy(x, r->view_old, n * sizeof *x);
        if (fp_sopt_step(r->sopt, x, d) < 0) {
            clog_error("round %llu: server optimizer: %s", (unsigned long long)r->round,
                       fp_error_get());
            memcpy(x, r->view_old, n * sizeof *x);
        }
    }
    fp_ft_view_scatter(r->global, r->view_kind, x, r->global->params);
    account(r);
    m->t_aggregate = secs(clog_now_ms() - t0);
    clog_info("round %llu: aggregated %u of %u updates (%s) with %s%s%s",
              (unsigned long long)r->round, r->n_reported, r->n_targets, why, r->strat_name,
              r->sopt ? " + " : "", r->sopt ? server_opt_name(r->cfg->server_opt) : "");
    return 0;
}

void rounds_abandon(rounds *r, int64_t now, const char *reason)
{
    round_metrics *m = &r->m;
    rounds_async_blame(r);
    m->abandoned = 1;
    if (r->n_refused)   /* what the operator must change is usually in the refusal */
        snprintf(m->reason, sizeof m->reason, "%s (%u sampled worker%s refused the task; %s)",
                 reason, r->n_refused, r->n_refused == 1 ? "" : "s", r->first_refusal);
    else
        snprintf(m->reason, sizeof m->reason, "%s", reason);
    sa_destroy(&r->sa);
    m->t_train = secs(now - r->phase_start_ms);
    m->reported = r->n_reported;
    m->dropped = m->sampled - r->n_reported;
    clog_info("round %llu abandoned: %s; the global adapter is unchanged",
              (unsigned long long)r->round, m->reason);
}

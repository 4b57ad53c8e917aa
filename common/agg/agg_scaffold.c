/* agg_scaffold.c - SCAFFOLD control-variate updates (agg_scaffold.h). */
#include "agg_scaffold.h"

#include <math.h>

void fp_scaffold_correct(float *grad, const float *c, const float *c_i, size_t n)
{
    for (size_t j = 0; j < n; j++)
        grad[j] += c[j] - c_i[j];
}

int fp_scaffold_worker_update(float *c_i, float *dc, const float *c, const float *x,
                              const float *y, double lr_sum, size_t n)
{
    if (!(lr_sum > 0.0) || !isfinite(lr_sum))
        return fp_error_set("scaffold: the local step sizes sum to %g; expected a positive "
                            "number (did the worker take any step?)", lr_sum);
    double inv = 1.0 / lr_sum;
    for (size_t j = 0; j < n; j++) {
        float next = (float)((double)c_i[j] - (double)c[j] + ((double)x[j] - (double)y[j]) * inv);
        dc[j] = next - c_i[j];
        c_i[j] = next;
    }
    return 0;
}

int fp_scaffold_server_update(float *c, const float *sum_dc, size_t n_total, size_t n)
{
    if (n_total < 1)
        return fp_error_set("scaffold: no identities to average the control deltas over");
    for (size_t j = 0; j < n; j++)
        if (!isfinite(sum_dc[j]))
            return fp_error_set("scaffold: control delta %zu is not finite", j);
    double inv = 1.0 / (double)n_total;
    for (size_t j = 0; j < n; j++)
        c[j] = (float)((double)c[j] + (double)sum_dc[j] * inv);
    return 0;
}

int fp_scaffold_server_update_mean(float *c, const float *dx, double frac, double k_lr, size_t n)
{
    if (!(frac > 0.0 && frac <= 1.0) || !(k_lr > 0.0) || !isfinite(k_lr))
        return fp_error_set("scaffold: reporters' share %g must be in (0, 1] and K * lr %g "
                            "positive", frac, k_lr);
    for (size_t j = 0; j < n; j++)
        if (!isfinite(dx[j]))
            return fp_error_set("scaffold: aggregate coordinate %zu is not finite", j);
    double inv = 1.0 / k_lr;
    for (size_t j = 0; j < n; j++)
        c[j] = (float)((double)c[j] - frac * ((double)c[j] + (double)dx[j] * inv));
    return 0;
}

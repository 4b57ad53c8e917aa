/* sim_throttle.c - slow workers for `fedpeft simulate` (sim_throttle.h). */
#include "sim_throttle.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "fp_error.h"

int sim_throttle_parse(const char *spec, sim_slow *out, int cap, int *n)
{
    *n = 0;
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ','), *colon = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (!colon || colon >= p + len || colon == p || (size_t)(colon - p) >= sizeof out->id)
            return fp_error_set("[simulate] slow_workers: \"%.*s\" is not ID:FACTOR (e.g. "
                                "w03:4)", (int)len, p);
        char num[32], *stop;
        size_t nl = len - (size_t)(colon + 1 - p);
        if (nl == 0 || nl >= sizeof num)
            return fp_error_set("[simulate] slow_workers: \"%.*s\" has no factor", (int)len, p);
        memcpy(num, colon + 1, nl);
        num[nl] = 0;
        double f = strtod(num, &stop);
        if (*stop || !isfinite(f) || f < 1)
            return fp_error_set("[simulate] slow_workers: the factor of \"%.*s\" must be a "
                                "number >= 1 (how many times slower)", (int)len, p);
        if (*n == cap)
            return fp_error_set("[simulate] slow_workers: more than %d entries", cap);
        sim_slow *s = &out[*n];
        memcpy(s->id, p, (size_t)(colon - p));
        s->id[colon - p] = 0;
        for (int i = 0; i < *n; i++)
            if (!strcmp(out[i].id, s->id))
                return fp_error_set("[simulate] slow_workers: %s is listed twice", s->id);
        s->factor = f;
        (*n)++;
        p += len + (end != NULL);
    }
    return 0;
}

int sim_throttle_running(double factor, double t)
{
    if (factor <= 1)
        return 1;
    double phase = fmod(t, SIM_THROTTLE_PERIOD_S) / SIM_THROTTLE_PERIOD_S;
    return phase < 1.0 / factor;
}

void sim_throttle_apply(pid_t pid, double factor, double t, int *stopped)
{
    int stop = !sim_throttle_running(factor, t);
    if (pid <= 0 || stop == *stopped)
        return;
    if (kill(pid, stop ? SIGSTOP : SIGCONT) == 0)
        *stopped = stop;
}

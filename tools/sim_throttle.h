/* sim_throttle.h - `[simulate] slow_workers = w03:4,w07:4`: a worker made k times
 * slower by letting it run only 1/k of every 100 ms (SIGCONT, then SIGSTOP), as
 * a machine with a k times slower CPU would: it does all of its work, later.
 * The longest pause (100 (1 - 1/k) ms) stays far below the heartbeat. */
#ifndef FP_SIM_THROTTLE_H
#define FP_SIM_THROTTLE_H

#include <sys/types.h>

#define SIM_THROTTLE_PERIOD_S 0.1

typedef struct {
    char id[32];
    double factor;          /* >= 1 */
} sim_slow;

/* Parses a comma-separated list of ID:FACTOR (FACTOR a number >= 1, each ID at
 * most once) into out (cap entries); *n of them. "" is an empty list. 0, or -1
 * with fp_error set saying which entry is wrong. */
int sim_throttle_parse(const char *spec, sim_slow *out, int cap, int *n);

/* Whether a process throttled by factor should run at time t (seconds). */
int sim_throttle_running(double factor, double t);

/* Sends SIGCONT or SIGSTOP to pid when its state at time t differs from
 * *stopped (updated). A factor of 1 or less: always running. */
void sim_throttle_apply(pid_t pid, double factor, double t, int *stopped);

#endif

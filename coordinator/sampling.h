/* sampling.h - who takes part in a round, and the DP quantities that follow
 * from how they were chosen (docs/privacy.md, "Differential privacy").
 *
 * Two modes ([sampling] mode):
 *   fixed    k = round(fraction x live) workers (within min/max_workers), a
 *            uniform draw without replacement (rounds_phase.c, sample()).
 *   poisson  each live identity is in the round independently with
 *            probability q = fraction: sampling_poisson_in(seed, id, q), a coin
 *            per identity from BLAKE2b(seed, id), so whether X is drawn does not
 *            depend on who else is live, and the same (seed, id) always gives
 *            the same answer (a resumed run samples the same set).
 *
 * With [dp] the released mean is sum / D for a D that does not depend on who
 * reported (sampling_dp_denominator), and the accountant composes one step of
 * the Poisson-subsampled Gaussian mechanism at q (sampling_dp_q). Both count
 * registered identities, never live ones. Pure functions: no state. */
#ifndef COORD_SAMPLING_H
#define COORD_SAMPLING_H

#include <stdint.h>

/* 1 when identity `id` is in the Poisson sample of the round keyed by `seed`
 * (rounds_phase.c sample_seed: secret with CURVE), 0 otherwise. q <= 0 never,
 * q >= 1 always. */
int sampling_poisson_in(uint64_t seed, const char *id, double q);

/* The fixed denominator of a DP round's mean, in per-worker weights of 1:
 * fixed: `sampled` (the draw's size, known before anyone reports); poisson:
 * the expected size q x `registered`. */
double sampling_dp_denominator(int mode, unsigned sampled, unsigned registered, double q);

/* The accountant's sampling rate: poisson: q exactly; fixed: sampled /
 * registered (at most 1; 1 with no registered identity). */
double sampling_dp_q(int mode, unsigned sampled, unsigned registered, double q);

#endif

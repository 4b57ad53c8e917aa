/* rng.h - small deterministic random numbers (splitmix64 seeding + xoshiro256**). */
#ifndef FP_RNG_H
#define FP_RNG_H

#include <stdint.h>

typedef struct { uint64_t s[4]; } fp_rng;

void fp_rng_seed(fp_rng *r, uint64_t seed);
uint64_t fp_rng_next(fp_rng *r);
/* Uniform in [0, 1). */
float fp_rng_float(fp_rng *r);
/* Uniform integer in [0, n). */
uint64_t fp_rng_below(fp_rng *r, uint64_t n);
/* Standard normal (Box-Muller). */
double fp_rng_normal(fp_rng *r);
/* FNV-1a 64 of a string: a stable hash of ids (seeds, table slots). */
uint64_t fp_fnv1a64(const char *s);

#endif

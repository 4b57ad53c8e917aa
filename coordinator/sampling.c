/* sampling.c - the Poisson draw and the DP denominator and rate (sampling.h). */
#include "sampling.h"

#include <sodium.h>
#include <string.h>

#include "coord_config.h"

int sampling_poisson_in(uint64_t seed, const char *id, double q)
{
    if (!(q > 0))
        return 0;
    if (q >= 1)
        return 1;
    /* BLAKE2b-64 over "fedpeft poisson v1" || seed (8 bytes LE) || id */
    static const char label[] = "fedpeft poisson v1";
    uint8_t s[8], out[8];
    for (int i = 0; i < 8; i++)
        s[i] = (uint8_t)(seed >> (8 * i));
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, sizeof out);
    crypto_generichash_update(&st, (const uint8_t *)label, sizeof label - 1);
    crypto_generichash_update(&st, s, sizeof s);
    crypto_generichash_update(&st, (const uint8_t *)id, strlen(id));
    crypto_generichash_final(&st, out, sizeof out);
    uint64_t h = 0;
    for (int i = 0; i < 8; i++)
        h |= (uint64_t)out[i] << (8 * i);
    double u = (double)(h >> 11) * 0x1p-53;     /* uniform in [0, 1) */
    return u < q;
}

double sampling_dp_denominator(int mode, unsigned sampled, unsigned registered, double q)
{
    if (mode == COORD_SAMPLING_POISSON)
        return q * (double)registered;
    return (double)sampled;
}

double sampling_dp_q(int mode, unsigned sampled, unsigned registered, double q)
{
    if (mode == COORD_SAMPLING_POISSON)
        return q;
    if (registered == 0)
        return 1.0;
    double f = (double)sampled / (double)registered;
    return f > 1 ? 1.0 : f;
}

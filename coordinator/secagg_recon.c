/* secagg_recon.c - verified Shamir reconstruction (secagg_recon.h). */
#include "secagg_recon.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "vss.h"

/* Interpolates the shares idx[0..t-1]; 0 when the result passes check. */
static int try_subset(const uint8_t (*rows)[32], const uint32_t *xs, const size_t *idx,
                      unsigned t, uint8_t (*tmp)[32], uint32_t *sx, sa_recon_check check,
                      const void *ctx, uint8_t out[32])
{
    for (unsigned i = 0; i < t; i++) {
        memcpy(tmp[i], rows[idx[i]], 32);
        sx[i] = xs[idx[i]];
    }
    if (fp_vss_combine((const uint8_t (*)[32])tmp, sx, t, t, out) < 0)
        return -1;     /* e.g. a non-canonical scalar: that subset fails */
    return check(out, ctx) == 0 ? 0 : -1;
}

/* The first t of the first t + b shares without ex1 and ex2 (-1: none). */
static void pick(size_t *idx, unsigned t, size_t m, long ex1, long ex2)
{
    unsigned k = 0;
    for (size_t i = 0; i < m && k < t; i++)
        if ((long)i != ex1 && (long)i != ex2)
            idx[k++] = i;
}

/* A passing t-subset of the first t + SA_RECON_MAX_BAD shares, in idx:
 * all of the first t, then each leaving one of t + 1 out, then two of t + 2. */
static int find_good(const uint8_t (*rows)[32], const uint32_t *xs, size_t k, unsigned t,
                     uint8_t (*tmp)[32], uint32_t *sx, sa_recon_check check, const void *ctx,
                     uint8_t out[32], size_t *idx)
{
    pick(idx, t, t, -1, -1);
    if (try_subset(rows, xs, idx, t, tmp, sx, check, ctx, out) == 0)
        return 0;
    for (long e1 = 0; k >= t + 1 && e1 <= (long)t; e1++) {
        pick(idx, t, t + 1, e1, -1);
        if (try_subset(rows, xs, idx, t, tmp, sx, check, ctx, out) == 0)
            return 0;
    }
    for (long e1 = 0; k >= t + 2 && e1 <= (long)t + 1; e1++)
        for (long e2 = e1 + 1; e2 <= (long)t + 1; e2++) {
            pick(idx, t, t + 2, e1, e2);
            if (try_subset(rows, xs, idx, t, tmp, sx, check, ctx, out) == 0)
                return 0;
        }
    return -1;
}

int sa_recon(const uint8_t (*rows)[32], const uint32_t *xs, size_t k, unsigned t,
             sa_recon_check check, const void *ctx, uint8_t out[32], uint8_t *bad)
{
    memset(out, 0, 32);
    memset(bad, 0, k);
    if (t < 1 || k < t)
        return fp_error_set("%zu shares, %u needed", k, t);
    uint8_t (*tmp)[32] = sodium_malloc((size_t)t * 32), *probe = sodium_malloc(32);
    size_t *idx = malloc(k * sizeof *idx);
    uint8_t *in = calloc(k, 1);
    uint32_t *sx = malloc((size_t)t * sizeof *sx);
    int rc = -1;
    if (!tmp || !probe || !idx || !in || !sx) {
        fp_error_set("out of memory");
        goto out;
    }
    if (find_good(rows, xs, k, t, tmp, sx, check, ctx, out, idx) < 0) {
        memset(out, 0, 32);
        fp_error_set("no %u of the %zu shares give the committed secret", t, k);
        goto out;
    }
    for (unsigned i = 0; i < t; i++)
        in[idx[i]] = 1;
    /* Share j replaces idx[0]: the same secret iff j lies on the polynomial. */
    size_t keep0 = idx[0];
    for (size_t j = 0; j < k; j++) {
        if (in[j])
            continue;
        idx[0] = j;
        bad[j] = try_subset(rows, xs, idx, t, tmp, sx, check, ctx, probe) != 0 ||
                 sodium_memcmp(probe, out, 32) != 0;
    }
    idx[0] = keep0;
    rc = 0;
out:
    if (tmp)
        sodium_free(tmp);
    if (probe)
        sodium_free(probe);
    free(idx);
    free(in);
    free(sx);
    return rc;
}

/* model_hash.c - a fingerprint of a base model (see fp_model_hash in model.h). */
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "model_internal.h"

void model_hash_begin(crypto_hash_sha256_state *st, const fp_model_config *c)
{
    /* Shapes and numerics-relevant settings, in a fixed text form, then the
     * weights: two models hash alike only if they compute alike. */
    char head[512];
    int len = snprintf(head, sizeof head, "fedpeft-model-v1 %s %d %d %d %d %d %d %.9g %.9g %d %d",
                       c->arch, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                       c->vocab_size, (double)c->rms_eps, (double)c->rope_theta,
                       c->tie_embeddings, c->qkv_bias);
    crypto_hash_sha256_init(st);
    crypto_hash_sha256_update(st, (const unsigned char *)head, (unsigned long long)len);
}

void model_hash_end(crypto_hash_sha256_state *st, char out[65])
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(st, digest);
    sodium_bin2hex(out, 65, digest, sizeof digest);
}

void fp_model_hash(const fp_model *m, char out[65])
{
    if (m->has_src_hash) {     /* quantized or mapped: the hash of the f32 source weights */
        memcpy(out, m->src_hash, 65);
        return;
    }
    crypto_hash_sha256_state st;
    model_hash_begin(&st, &m->cfg);
    crypto_hash_sha256_update(&st, (const unsigned char *)m->slab,
                              (unsigned long long)(m->n_floats * sizeof(float)));
    model_hash_end(&st, out);
}

/* uploads.c - see uploads.h. */
#include "uploads.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "fp_error.h"

int uploads_init(upload_slots *u, int n, size_t n_floats)
{
    memset(u, 0, sizeof *u);
    u->s = calloc((size_t)n, sizeof *u->s);
    if (!u->s)
        return fp_error_set("out of memory for %d upload slots", n);
    u->n = n;
    u->n_floats = n_floats;
    for (int i = 0; i < n; i++) {
        u->s[i].w = -1;
        u->s[i].buf = malloc(n_floats * sizeof(float));
        u->s[i].key = sodium_malloc(FP_SEAL_KEY_BYTES);
        if (!u->s[i].buf || !u->s[i].key) {
            uploads_free(u);
            return fp_error_set("out of memory for %d upload slots of %zu floats ([round] "
                                "upload_slots)", n, n_floats);
        }
    }
    return 0;
}

void uploads_free(upload_slots *u)
{
    for (int i = 0; u->s && i < u->n; i++) {
        uploads_release(u, &u->s[i]);
        free(u->s[i].buf);
        if (u->s[i].key)
            sodium_free(u->s[i].key);
    }
    free(u->s);
    memset(u, 0, sizeof *u);
}

upload_slot *uploads_of(upload_slots *u, int w)
{
    for (int i = 0; w >= 0 && i < u->n; i++)
        if (u->s[i].w == w)
            return &u->s[i];
    return NULL;
}

upload_slot *uploads_free_slot(upload_slots *u)
{
    for (int i = 0; i < u->n; i++)
        if (u->s[i].w < 0)
            return &u->s[i];
    return NULL;
}

void uploads_release(upload_slots *u, upload_slot *s)
{
    fp_seal_replay_destroy(&s->guard);
    if (s->buf)
        sodium_memzero(s->buf, u->n_floats * sizeof *s->buf);
    if (s->key)
        sodium_memzero(s->key, FP_SEAL_KEY_BYTES);
    s->w = -1;
    s->sealed = 0;
    s->next = 0;
}

void uploads_release_all(upload_slots *u)
{
    for (int i = 0; i < u->n; i++)
        if (u->s[i].w >= 0)
            uploads_release(u, &u->s[i]);
}

/* uploads.h - the coordinator's upload slots: the updates being received at
 * once, each pulled from one worker into its own buffer (docs/protocol.md,
 * "Uploads"). Several slots, so one peer that stalls after Pull holds only its
 * own slot until its chunk timeout, not the round; a bounded number, so memory
 * stays slots x adapter whatever the peers do. */
#ifndef COORD_UPLOADS_H
#define COORD_UPLOADS_H

#include <stddef.h>
#include <stdint.h>

#include "seal.h"
#include "wire.h"

typedef struct {
    int w;                      /* the worker (server index) uploading, -1 = free */
    float *buf;                 /* its update: floats, or masked uint32 words (secagg) */
    wire_assembler as;          /* plain TensorChunks (--insecure) */
    uint8_t *key;               /* sodium_malloc'd seal key of this upload */
    fp_seal_replay *guard;      /* sealed chunks: each index once, in order */
    uint32_t next;              /* next sealed chunk index */
    int sealed;                 /* the upload arrives as SealedChunks */
    int64_t start_ms, last_ms;  /* Pull sent; last chunk */
} upload_slot;

typedef struct {
    upload_slot *s;
    int n;
    size_t n_floats;            /* each buffer's size (the adapter) */
} upload_slots;

/* n slots of n_floats each; -1 with fp_error when memory runs out. */
int uploads_init(upload_slots *u, int n, size_t n_floats);
void uploads_free(upload_slots *u);
/* The slot worker w uploads into, or NULL. */
upload_slot *uploads_of(upload_slots *u, int w);
/* A free slot, or NULL when all are busy. */
upload_slot *uploads_free_slot(upload_slots *u);
/* Wipes the buffer (a worker's plaintext) and frees the slot. */
void uploads_release(upload_slots *u, upload_slot *s);
void uploads_release_all(upload_slots *u);

#endif

/* wire_secagg.h - validation of the secure-aggregation and sealed-upload
 * messages (proto/fedpeft.proto: SealedChunk, AdvertiseKeys, PeerKeys,
 * ShareKeys, ConsistencyCheck, ConsistencySig, UnmaskRequest, UnmaskResponse),
 * called by wire.c's validator. Keys must be 32 bytes, signatures 64, ids as
 * wire.h says, lists at most WIRE_MAX_PEERS long (and the message within
 * WIRE_MAX_MSG_BYTES), shares 32 bytes (revealed) or WIRE_SEALED_SHARE_BYTES
 * (sealed), a graph nonce 32 bytes. */
#ifndef FP_WIRE_SECAGG_H
#define FP_WIRE_SECAGG_H

#include "fedpeft.pb-c.h"

#define WIRE_MAX_PEERS 65536      /* members of one round (Shamir x = 1..n, vss.h) */
#define WIRE_SHARE_PLAIN_BYTES 64           /* share of b_u || share of sk_u */
#define WIRE_SEALED_SHARE_BYTES (WIRE_SHARE_PLAIN_BYTES + 40)

/* 0 when the body is one of the above and valid; -1 with fp_error otherwise
 * (also for a body this file does not know). */
int wire_check_secagg_body(const Fedpeft__Envelope *m);

#endif

/* fuzz_wire_secagg.c - the secure-aggregation and sealed-upload bodies
 * (wire_secagg.c), fuzzed one body at a time so that the fuzzer spends its
 * time inside them rather than on the Envelope around them.
 *
 * Input: one byte choosing the body (SealedChunk, AdvertiseKeys, PeerKeys,
 * ShareKeys, UnmaskRequest, UnmaskResponse, ConsistencyCheck, ConsistencySig,
 * modulo 8), then that message's
 * protobuf bytes. It is unpacked, put in an Envelope, checked with
 * wire_check_secagg_body, and the Envelope is packed and run through
 * wire_decode, which must agree with the direct check. */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "wire.h"
#include "wire_secagg.h"

static const struct {
    Fedpeft__Envelope__BodyCase body;
    const ProtobufCMessageDescriptor *desc;
} bodies[] = {
    {FEDPEFT__ENVELOPE__BODY_SEALED_CHUNK, &fedpeft__sealed_chunk__descriptor},
    {FEDPEFT__ENVELOPE__BODY_ADVERTISE_KEYS, &fedpeft__advertise_keys__descriptor},
    {FEDPEFT__ENVELOPE__BODY_PEER_KEYS, &fedpeft__peer_keys__descriptor},
    {FEDPEFT__ENVELOPE__BODY_SHARE_KEYS, &fedpeft__share_keys__descriptor},
    {FEDPEFT__ENVELOPE__BODY_UNMASK_REQUEST, &fedpeft__unmask_request__descriptor},
    {FEDPEFT__ENVELOPE__BODY_UNMASK_RESPONSE, &fedpeft__unmask_response__descriptor},
    {FEDPEFT__ENVELOPE__BODY_CONSISTENCY_CHECK, &fedpeft__consistency_check__descriptor},
    {FEDPEFT__ENVELOPE__BODY_CONSISTENCY_SIG, &fedpeft__consistency_sig__descriptor},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 1 || len > (size_t)WIRE_MAX_MSG_BYTES)
        return 0;
    size_t k = data[0] % (sizeof bodies / sizeof bodies[0]);
    ProtobufCMessage *body = protobuf_c_message_unpack(bodies[k].desc, NULL, len - 1, data + 1);
    if (!body)
        return 0;
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    env.version = WIRE_PROTOCOL_VERSION;
    env.body_case = bodies[k].body;
    env.sealed_chunk = (Fedpeft__SealedChunk *)body;   /* the union: any member */
    int ok = fz_verdict("wire_check_secagg_body", wire_check_secagg_body(&env) == 0);

    size_t n = fedpeft__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(n);
    assert(buf);
    fedpeft__envelope__pack(&env, buf);
    wire_err why;
    wire_msg *m = wire_decode(buf, n, &why);
    /* The envelope may exceed the frame limit by its few header bytes, and
     * protobuf-c may refuse its own re-emitted unknown fields (fuzz_wire.c). */
    assert(ok == (m != NULL) || why == WIRE_ERR_OVERSIZED || why == WIRE_ERR_UNDECODABLE);
    wire_msg_free(&m);
    free(buf);
    protobuf_c_message_free_unpacked(body, NULL);
    return 0;
}

/* fuzz_wire.c - wire_decode on a peer's frame: the protobuf Envelope and the
 * validation of every body (wire.c, and wire_secagg.c for the secagg ones).
 *
 * A frame that decodes is re-encoded and decoded again: what the validator
 * accepted must be accepted again (a field it forgot to bound would show
 * up here as a crash or as a second verdict). */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    wire_err why;
    wire_msg *m = wire_decode(data, len, &why);
    assert((m != NULL) == (why == WIRE_OK));
    if (!fz_verdict("wire_decode", m != NULL))
        return 0;
    (void)wire_err_name(why);
    size_t n = fedpeft__envelope__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    assert(buf);
    fedpeft__envelope__pack(m, buf);
    wire_msg *again = wire_decode(buf, n, &why);
    /* protobuf-c keeps unknown fields and re-emits them, and one it parsed
     * (field number 0 in a non-minimal tag, 0x82 0x00) it refuses when
     * re-emitted minimally: UNDECODABLE here is protobuf-c's, not ours. Our
     * validator must give the same verdict (Reject.reason was sanitized on
     * the first decode, so the second sees the same). */
    assert(again ? again->body_case == m->body_case : why == WIRE_ERR_UNDECODABLE);
    wire_msg_free(&again);
    free(buf);
    wire_msg_free(&m);
    assert(!m);
    return 0;
}

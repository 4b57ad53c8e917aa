/* fuzz_wire_asm.c - the chunk assembler (wire_asm_add) fed decoded frames, as
 * the coordinator and worker feed it a peer's TensorChunks.
 *
 * Input: a 12-byte header, then frames, each a little-endian u32 length and
 * that many bytes (wire_decode'd; a frame that is not a valid TensorChunk is
 * skipped, as the receivers drop it). Header: u32 n (the slab's floats; bit 31
 * adds WIRE_CHUNK_FLOATS so that multi-chunk slabs are reachable while small
 * slabs stay cheap), u32 n_chunks as announced (bit 31 clear: the right count
 * for n), u32 task_id. */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "wire.h"

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 12)
        return 0;
    uint32_t hn = rd32(data), hc = rd32(data + 4), task = rd32(data + 8);
    size_t n = (hn & 0xffff) % 8193 + (hn >> 31 ? WIRE_CHUNK_FLOATS : 0);
    uint32_t n_chunks = hc >> 31 ? hc & 0x7fffffff : wire_n_chunks(n);
    /* A canary past the slab: the assembler must never write beyond n floats. */
    float *dst = malloc((n + 1) * sizeof(float));
    assert(dst);
    dst[n] = -1.0f;
    wire_assembler a;
    wire_asm_begin(&a, dst, n, n_chunks, task);
    size_t off = 12;
    int broken = 0;
    while (off + 4 <= len) {
        size_t flen = rd32(data + off);
        off += 4;
        if (flen > len - off)
            flen = len - off;
        wire_msg *m = wire_decode(data + off, flen, NULL);
        off += flen;
        if (!m)
            continue;
        if (m->body_case == FEDPEFT__ENVELOPE__BODY_CHUNK) {
            size_t before = a.filled;
            int rc = wire_asm_add(&a, m->chunk);
            fz_verdict("wire_asm_add", rc == 0);
            if (rc == 0) {
                assert(!broken && a.filled <= n);
                for (size_t i = before; i < a.filled; i++)
                    assert(isfinite(dst[i]));
            } else {
                broken = 1;
            }
            /* Once refused, the assembler stays refused and never completes. */
            assert(!broken || !wire_asm_complete(&a));
        }
        wire_msg_free(&m);
    }
    if (wire_asm_complete(&a))
        assert(a.filled == n && n_chunks == wire_n_chunks(n));
    assert(dst[n] == -1.0f);
    free(dst);
    return 0;
}

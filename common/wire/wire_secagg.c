/* wire_secagg.c - validation of the secure-aggregation messages (wire_secagg.h). */
#include "wire_secagg.h"

#include <inttypes.h>
#include <string.h>

#include "fp_error.h"
#include "wire.h"

static int ws_id(const char *what, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n >= WIRE_MAX_ID)
        return fp_error_set("%s: worker id of %zu bytes; expected 1..%d", what, n, WIRE_MAX_ID - 1);
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~')
            return fp_error_set("%s: worker id holds a non-printable or blank byte", what);
    return 0;
}

static int ws_bytes(const char *what, ProtobufCBinaryData b, size_t want)
{
    if (b.len != want || (want && !b.data))
        return fp_error_set("%s is %zu bytes; expected %zu", what, b.len, want);
    return 0;
}

static int ws_ids(const char *what, char **ids, size_t n)
{
    if (n > WIRE_MAX_PEERS)
        return fp_error_set("%s lists %zu workers; at most %d", what, n, WIRE_MAX_PEERS);
    for (size_t i = 0; i < n; i++)
        if (ws_id(what, ids[i]) < 0)
            return -1;
    return 0;
}

static int ws_sealed_chunk(const Fedpeft__SealedChunk *c)
{
    if (c->n_chunks < 1 || c->index >= c->n_chunks || c->offset >= WIRE_MAX_ADAPTER_FLOATS)
        return fp_error_set("SealedChunk %" PRIu32 " of %" PRIu32 " at offset %" PRIu64
                            " is out of bounds", c->index, c->n_chunks, c->offset);
    if (c->data.len > WIRE_CHUNK_FLOATS * 4 + 40 || (c->data.len && !c->data.data))
        return fp_error_set("SealedChunk %" PRIu32 " holds %zu bytes; at most %zu", c->index,
                            c->data.len, WIRE_CHUNK_FLOATS * 4 + 40);
    return 0;
}

static int ws_peer_keys(const Fedpeft__PeerKeys *p)
{
    if (p->n_peers > WIRE_MAX_PEERS)
        return fp_error_set("PeerKeys lists %zu workers; at most %d", p->n_peers, WIRE_MAX_PEERS);
    for (size_t i = 0; i < p->n_peers; i++) {
        const Fedpeft__PeerKey *k = p->peers[i];
        if (!k || ws_id("PeerKeys", k->worker_id) < 0 || ws_bytes("PeerKey.enc_pk", k->enc_pk, 32) < 0 ||
            ws_bytes("PeerKey.mask_pk", k->mask_pk, 32) < 0 ||
            ws_bytes("PeerKey.sign_pk", k->sign_pk, 32) < 0 ||
            ws_bytes("PeerKey.self_commit", k->self_commit, 32) < 0 ||
            ws_bytes("PeerKey.signature", k->signature, 64) < 0)
            return k ? -1 : fp_error_set("PeerKeys: empty entry");
    }
    if (ws_ids("PeerKeys.members", p->members, p->n_members) < 0 ||
        ws_bytes("PeerKeys.graph_nonce", p->graph_nonce, 32) < 0)
        return -1;
    return 0;
}

static int ws_share_keys(const Fedpeft__ShareKeys *s)
{
    if (s->n_shares > WIRE_MAX_PEERS)
        return fp_error_set("ShareKeys holds %zu shares; at most %d", s->n_shares, WIRE_MAX_PEERS);
    for (size_t i = 0; i < s->n_shares; i++) {
        const Fedpeft__EncryptedShare *e = s->shares[i];
        if (!e || ws_id("ShareKeys", e->worker_id) < 0 ||
            ws_bytes("EncryptedShare.sealed", e->sealed, WIRE_SEALED_SHARE_BYTES) < 0)
            return e ? -1 : fp_error_set("ShareKeys: empty entry");
    }
    return 0;
}

static int ws_unmask_request(const Fedpeft__UnmaskRequest *u)
{
    if (ws_ids("UnmaskRequest.survivors", u->survivors, u->n_survivors) < 0 ||
        ws_ids("UnmaskRequest.dropped", u->dropped, u->n_dropped) < 0)
        return -1;
    if (u->n_signatures > WIRE_MAX_PEERS)
        return fp_error_set("UnmaskRequest carries %zu signatures; at most %d", u->n_signatures,
                            WIRE_MAX_PEERS);
    for (size_t i = 0; i < u->n_signatures; i++) {
        const Fedpeft__SurvivorSig *g = u->signatures[i];
        if (!g || ws_id("UnmaskRequest.signatures", g->worker_id) < 0 ||
            ws_bytes("SurvivorSig.signature", g->signature, 64) < 0)
            return g ? -1 : fp_error_set("UnmaskRequest: empty signature entry");
    }
    return 0;
}

static int ws_revealed(const char *what, Fedpeft__RevealedShare **r, size_t n)
{
    if (n > WIRE_MAX_PEERS)
        return fp_error_set("%s holds %zu shares; at most %d", what, n, WIRE_MAX_PEERS);
    for (size_t i = 0; i < n; i++)
        if (!r[i] || ws_id(what, r[i]->worker_id) < 0 || ws_bytes(what, r[i]->share, 32) < 0)
            return r[i] ? -1 : fp_error_set("%s: empty entry", what);
    return 0;
}

int wire_check_secagg_body(const Fedpeft__Envelope *m)
{
    switch (m->body_case) {
    case FEDPEFT__ENVELOPE__BODY_SEALED_CHUNK:
        return m->sealed_chunk ? ws_sealed_chunk(m->sealed_chunk) : -1;
    case FEDPEFT__ENVELOPE__BODY_ADVERTISE_KEYS:
        if (!m->advertise_keys)
            return -1;
        if (ws_bytes("AdvertiseKeys.enc_pk", m->advertise_keys->enc_pk, 32) < 0 ||
            ws_bytes("AdvertiseKeys.mask_pk", m->advertise_keys->mask_pk, 32) < 0 ||
            ws_bytes("AdvertiseKeys.self_commit", m->advertise_keys->self_commit, 32) < 0)
            return -1;
        if (m->advertise_keys->signature.len && /* none: refused as unsigned, with a reason */
            ws_bytes("AdvertiseKeys.signature", m->advertise_keys->signature, 64) < 0)
            return -1;
        return 0;
    case FEDPEFT__ENVELOPE__BODY_CONSISTENCY_CHECK:
        if (!m->consistency_check)
            return -1;
        return ws_ids("ConsistencyCheck.survivors", m->consistency_check->survivors,
                      m->consistency_check->n_survivors);
    case FEDPEFT__ENVELOPE__BODY_CONSISTENCY_SIG:
        if (!m->consistency_sig)
            return -1;
        return ws_bytes("ConsistencySig.signature", m->consistency_sig->signature, 64);
    case FEDPEFT__ENVELOPE__BODY_PEER_KEYS: return m->peer_keys ? ws_peer_keys(m->peer_keys) : -1;
    case FEDPEFT__ENVELOPE__BODY_SHARE_KEYS:
        return m->share_keys ? ws_share_keys(m->share_keys) : -1;
    case FEDPEFT__ENVELOPE__BODY_UNMASK_REQUEST:
        return m->unmask_request ? ws_unmask_request(m->unmask_request) : -1;
    case FEDPEFT__ENVELOPE__BODY_UNMASK_RESPONSE:
        if (!m->unmask_response)
            return -1;
        if (ws_revealed("UnmaskResponse.self_shares", m->unmask_response->self_shares,
                        m->unmask_response->n_self_shares) < 0 ||
            ws_revealed("UnmaskResponse.key_shares", m->unmask_response->key_shares,
                        m->unmask_response->n_key_shares) < 0)
            return -1;
        return 0;
    default: break;
    }
    return fp_error_set("message has an unknown body (field %d)", (int)m->body_case);
}

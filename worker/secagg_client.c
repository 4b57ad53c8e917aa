/* secagg_client.c - the worker's secure aggregation (secagg_client.h). */
#include "secagg_client.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seal.h"
#include "secagg.h"
#include "secagg_graph.h"
#include "secagg_sign.h"
#include "vss.h"
#include "wire.h"
#include "wire_secagg.h"

/* One holder of this worker's secrets: a graph neighbour, or this worker. */
typedef struct {
    char id[WIRE_MAX_ID];
    uint8_t enc_pk[32], mask_pk[32], sign_pk[32];
    uint32_t x;                     /* Shamir x: its rank in U1, 1-based */
    int in_u2;
    int bad_share;                  /* in U2, but its share to me did not open */
} wk_peer;

struct wk_sa {
    char me[WIRE_MAX_ID], run_id[128];
    uint64_t round, task_id;
    unsigned t, frac_bits, degree_plan, degree;
    float clip;
    uint8_t enc_pk[32], mask_pk[32], self_commit[32], graph_commit[32];
    uint8_t *sec;                   /* sodium_malloc: enc_sk | mask_sk | self seed | r_b | r_k */
    char (*members)[WIRE_MAX_ID];   /* U1, sorted */
    size_t n_members;
    wk_peer *peers;                 /* my neighbours and me, sorted by id */
    size_t n_peers;
    size_t me_slot;                 /* my entry in peers */
    uint8_t *held;                  /* sodium_malloc: [n_peers][64] shares I hold */
    uint8_t *held_has;
    int shared;
    int unmask_seen;                /* an UnmaskRequest came: any other is refused */
    wk_sa_ident ident;              /* my signing pair, the roster */
    uint8_t adv_sig[64];            /* my AdvertiseKeys signature */
    int u3_signed;                  /* the consistency round: the one U3 I signed */
    uint8_t u3_digest[32], u3_sig[64];
};

/* The shared secrets are scalars r_b, r_k (vss.h); the self-mask seed and the
 * mask secret key are derived from them, so that a reconstructed r_b or r_k
 * can be checked (self_commit, mask_pk) and any number of holders works. */
#define ENC_SK(sa) ((sa)->sec)
#define MASK_SK(sa) ((sa)->sec + 32)
#define SELF_SEED(sa) ((sa)->sec + 64)
#define R_SELF(sa) ((sa)->sec + 96)
#define R_KEY(sa) ((sa)->sec + 128)
#define SEC_BYTES 160

wk_sa *wk_sa_new(const char *my_id, const char *run_id, uint64_t round, uint64_t task_id,
                 const Fedpeft__SecAggParams *p, const wk_sa_ident *ident)
{
    wk_sa *sa = calloc(1, sizeof *sa);
    if (!sa || !(sa->sec = sodium_malloc(SEC_BYTES))) {
        free(sa);
        fp_error_set("out of memory");
        return NULL;
    }
    snprintf(sa->me, sizeof sa->me, "%s", my_id);
    snprintf(sa->run_id, sizeof sa->run_id, "%s", run_id);
    sa->round = round;
    sa->task_id = task_id;
    sa->t = p->threshold;
    sa->clip = p->clip;
    sa->frac_bits = p->frac_bits;
    sa->degree_plan = p->degree;
    sa->ident = *ident;
    if (p->graph_commit.len != 32) {
        sodium_free(sa->sec), free(sa);     /* nothing secret in it yet */
        fp_error_set("the Task's secure aggregation has no graph commitment (%zu bytes)",
                     p->graph_commit.len);
        return NULL;
    }
    memcpy(sa->graph_commit, p->graph_commit.data, 32);
    crypto_box_keypair(sa->enc_pk, ENC_SK(sa));
    fp_vss_random_secret(R_SELF(sa));
    fp_vss_random_secret(R_KEY(sa));
    fp_vss_derive(SELF_SEED(sa), R_SELF(sa), "self-mask");
    fp_vss_derive(MASK_SK(sa), R_KEY(sa), "mask-key");
    if (crypto_scalarmult_base(sa->mask_pk, MASK_SK(sa)) != 0 ||
        fp_secagg_self_commit(sa->self_commit, SELF_SEED(sa), sa->me, sa->run_id, round) < 0) {
        wk_sa_destroy(&sa);
        return NULL;
    }
    uint8_t d[32];
    if (fp_sasign_adv_digest(d, sa->run_id, round, sa->me, sa->enc_pk, sa->mask_pk,
                             sa->self_commit) < 0) {
        wk_sa_destroy(&sa);
        return NULL;
    }
    fp_sasign_sign(sa->adv_sig, d, sa->ident.sign_sk);
    return sa;
}

void wk_sa_destroy(wk_sa **sa_p)
{
    if (!sa_p || !*sa_p)
        return;
    wk_sa *sa = *sa_p;
    sodium_free(sa->sec);
    if (sa->held)
        sodium_free(sa->held);
    free(sa->held_has);
    free(sa->peers);
    free(sa->members);
    free(sa);
    *sa_p = NULL;
}

void wk_sa_advertise(wk_sa *sa, Fedpeft__AdvertiseKeys *out)
{
    out->task_id = sa->task_id;
    out->round = sa->round;
    out->enc_pk = (ProtobufCBinaryData){32, sa->enc_pk};
    out->mask_pk = (ProtobufCBinaryData){32, sa->mask_pk};
    out->self_commit = (ProtobufCBinaryData){32, sa->self_commit};
    out->signature = (ProtobufCBinaryData){64, sa->adv_sig};
}

void wk_sa_wipe(wk_sa *sa)
{
    sodium_memzero(sa->sec, SEC_BYTES);
    if (sa->held)
        sodium_memzero(sa->held, sa->n_peers * 64);
}

const char *wk_sa_bad_sender(const wk_sa *sa, size_t *iter)
{
    for (; *iter < sa->n_peers; (*iter)++)
        if (sa->peers[*iter].bad_share)
            return sa->peers[(*iter)++].id;
    return NULL;
}

static int cmp_id(const void *a, const void *b) { return strcmp(a, b); }

/* The holder (neighbour or me) with this id: its index in peers, or -1. */
static int find_peer(const wk_sa *sa, const char *id)
{
    const wk_peer *p = bsearch(id, sa->peers, sa->n_peers, sizeof *sa->peers, cmp_id);
    return p ? (int)(p - sa->peers) : -1;
}

static int is_member(const wk_sa *sa, const char *id)
{
    return bsearch(id, sa->members, sa->n_members, sizeof *sa->members, cmp_id) != NULL;
}

int wk_sa_has_shares(const wk_sa *sa) { return sa->shared; }

void wk_sa_graph(const wk_sa *sa, size_t *n_members, unsigned *degree)
{
    *n_members = sa->n_members;
    *degree = sa->degree;
}

/* The share between from -> to: key and AD bound to both ids, run and round. */
static int share_key(const wk_sa *sa, int peer, int sending, uint8_t key[32], fp_seal_ad *ad,
                     char *adid, size_t cap)
{
    const wk_peer *p = &sa->peers[peer];
    snprintf(adid, cap, "%s>%s", sending ? sa->me : p->id, sending ? p->id : sa->me);
    ad->run_id = sa->run_id;
    ad->worker_id = adid;
    ad->round = sa->round;
    ad->task_id = sa->task_id;
    ad->chunk_index = 0;
    ad->n_chunks = 1;
    if (sending)
        return fp_seal_key_worker(key, ENC_SK(sa), sa->enc_pk, p->enc_pk, sa->run_id, sa->round);
    return fp_seal_key_coordinator(key, ENC_SK(sa), sa->enc_pk, p->enc_pk, sa->run_id, sa->round);
}

/* Every key usable (not low order) and no key twice: a zero or copied key
 * would make a pairwise mask public or ambiguous. */
static int check_peer_keys(const wk_sa *sa)
{
    for (size_t i = 0; i < sa->n_peers; i++) {
        const wk_peer *p = &sa->peers[i];
        if (fp_secagg_pk_check(p->enc_pk) < 0 || fp_secagg_pk_check(p->mask_pk) < 0)
            return fp_error_set("PeerKeys: the keys of '%s' are refused: %s", p->id,
                                fp_error_get());
        for (size_t j = 0; j < i; j++) {
            const wk_peer *o = &sa->peers[j];
            if (!memcmp(p->enc_pk, o->enc_pk, 32) || !memcmp(p->mask_pk, o->mask_pk, 32) ||
                !memcmp(p->enc_pk, o->mask_pk, 32) || !memcmp(p->mask_pk, o->enc_pk, 32))
                return fp_error_set("PeerKeys: '%s' and '%s' have the same key", o->id, p->id);
        }
        if (!memcmp(p->enc_pk, p->mask_pk, 32))
            return fp_error_set("PeerKeys: '%s' has enc_pk = mask_pk", p->id);
    }
    return 0;
}

/* U1 and the graph from PeerKeys: the nonce matches the Task's commitment,
 * the members are sorted and include me, the degree is the one the plan
 * gives for |U1|, and the keys listed are exactly my neighbours' and mine. A
 * coordinator cannot hand this worker neighbours of its choosing. */
static int take_graph(wk_sa *sa, const Fedpeft__PeerKeys *pk, uint32_t **nb_out)
{
    uint8_t h[32], seed[FP_SAGRAPH_SEED_BYTES];
    size_t n = pk->n_members, mi = n;
    crypto_generichash(h, 32, pk->graph_nonce.data, pk->graph_nonce.len, NULL, 0);
    if (pk->graph_nonce.len != 32 || sodium_memcmp(h, sa->graph_commit, 32) != 0)
        return fp_error_set("PeerKeys' graph nonce does not match the Task's commitment");
    if (n < 2)
        return fp_error_set("PeerKeys lists %zu members", n);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && strcmp(pk->members[i - 1], pk->members[i]) >= 0)
            return fp_error_set("PeerKeys' members are not sorted or list '%s' twice",
                                pk->members[i]);
        if (strcmp(pk->members[i], sa->me) == 0)
            mi = i;
    }
    if (mi == n)
        return fp_error_set("PeerKeys' members do not include this worker");
    unsigned k = fp_sagraph_degree_for(n, sa->degree_plan);
    if (pk->degree != k)
        return fp_error_set("PeerKeys says degree %u over %zu members; the Task's plan (%u) "
                            "gives %u", pk->degree, n, sa->degree_plan, k);
    sa->members = malloc(n * sizeof *sa->members);
    uint32_t *nb = malloc(((size_t)k + 1) * sizeof *nb);
    *nb_out = nb;
    if (!sa->members || !nb)
        return fp_error_set("out of memory");
    for (size_t i = 0; i < n; i++)
        snprintf(sa->members[i], sizeof sa->members[i], "%s", pk->members[i]);
    sa->n_members = n;
    sa->degree = k;
    fp_sagraph_seed(seed, sa->run_id, sa->round, pk->graph_nonce.data,
                    (const char *const *)pk->members, n);
    fp_sagraph *g = fp_sagraph_new(n, k, seed);
    if (!g)
        return -1;
    unsigned c = fp_sagraph_neighbours(g, mi, nb);
    fp_sagraph_destroy(&g);
    /* me among my neighbours, in index (= id) order */
    size_t at = 0;
    while (at < c && nb[at] < mi)
        at++;
    memmove(nb + at + 1, nb + at, (c - at) * sizeof *nb);
    nb[at] = (uint32_t)mi;
    sa->me_slot = at;
    if (pk->n_peers != (size_t)c + 1)
        return fp_error_set("PeerKeys carries %zu keys; this worker has %u neighbours", pk->n_peers, c);
    return 0;
}

/* A neighbour's keys as its owner signed them: the signature verifies with
 * the signing key relayed and, with a [privacy] roster, that key is the one
 * the roster lists for the id. The coordinator can then neither change a
 * neighbour's keys nor stand in for it with keys of its own. */
static int check_signed(const wk_sa *sa, const Fedpeft__PeerKey *k)
{
    uint8_t d[32];
    if (sa->ident.roster) {
        long e = fp_allowlist_find_id(sa->ident.roster, k->worker_id);
        if (e < 0 || !sa->ident.roster->policy[e].has_sign)
            return fp_error_set("PeerKeys: '%s' has no sign= key in [privacy] roster",
                                k->worker_id);
        if (sodium_memcmp(sa->ident.roster->policy[e].sign_pk, k->sign_pk.data, 32) != 0)
            return fp_error_set("PeerKeys: the signing key of '%s' is not the one in [privacy] "
                                "roster (the coordinator substituted it?)", k->worker_id);
    }
    if (fp_sasign_adv_digest(d, sa->run_id, sa->round, k->worker_id, k->enc_pk.data,
                             k->mask_pk.data, k->self_commit.data) < 0 ||
        fp_sasign_verify(k->signature.data, k->signature.len, d, k->sign_pk.data,
                         k->sign_pk.len) < 0)
        return fp_error_set("PeerKeys: the keys of '%s' do not carry its signature (%s): "
                            "changed on the way", k->worker_id, fp_error_get());
    return 0;
}

/* Records the holders of PeerKeys (my neighbours and me, as take_graph found
 * them), with this worker's own keys unchanged and every other's signed. */
static int take_peers(wk_sa *sa, const Fedpeft__PeerKeys *pk, const uint32_t *nb)
{
    for (size_t i = 0; i < sa->n_peers; i++) {
        const Fedpeft__PeerKey *k = pk->peers[i];
        if (strcmp(k->worker_id, sa->members[nb[i]]) != 0)
            return fp_error_set("PeerKeys lists '%s' where the graph puts '%s'", k->worker_id,
                                sa->members[nb[i]]);
        snprintf(sa->peers[i].id, sizeof sa->peers[i].id, "%s", k->worker_id);
        memcpy(sa->peers[i].enc_pk, k->enc_pk.data, 32);
        memcpy(sa->peers[i].mask_pk, k->mask_pk.data, 32);
        memcpy(sa->peers[i].sign_pk, k->sign_pk.data, 32);
        sa->peers[i].x = nb[i] + 1;
        if (i == sa->me_slot) {
            if (memcmp(k->enc_pk.data, sa->enc_pk, 32) || memcmp(k->mask_pk.data, sa->mask_pk, 32) ||
                memcmp(k->sign_pk.data, sa->ident.sign_pk, 32))
                return fp_error_set("PeerKeys carries other keys for this worker");
        } else if (check_signed(sa, k) < 0) {
            return -1;
        }
    }
    return check_peer_keys(sa);
}

/* Seals each peer's pair of shares (self-mask seed, mask key) to that peer;
 * keeps this worker's own pair in held. */
static int seal_shares(wk_sa *sa, uint8_t (*sh_b)[32], uint8_t (*sh_k)[32], uint8_t *plain,
                       uint8_t *key, Fedpeft__ShareKeys *sk)
{
    for (size_t i = 0; i < sa->n_peers; i++) {
        memcpy(plain, sh_b[i], 32);
        memcpy(plain + 32, sh_k[i], 32);
        if (i == sa->me_slot) {
            memcpy(sa->held + i * 64, plain, 64);   /* my own share */
            sa->held_has[i] = 1;
            continue;
        }
        Fedpeft__EncryptedShare *e = calloc(1, sizeof *e);
        uint8_t *box = malloc(WIRE_SEALED_SHARE_BYTES);
        char adid[2 * WIRE_MAX_ID + 2];
        fp_seal_ad ad;
        if (e)
            sk->shares[sk->n_shares++] = e;
        if (!e || !box) {
            free(box);
            fp_error_set("out of memory");
            return -1;
        }
        fedpeft__encrypted_share__init(e);
        e->worker_id = sa->peers[i].id;
        e->sealed = (ProtobufCBinaryData){WIRE_SEALED_SHARE_BYTES, box};
        if (share_key(sa, (int)i, 1, key, &ad, adid, sizeof adid) < 0 ||
            fp_seal(box, plain, 64, &ad, key) < 0)
            return -1;
    }
    return 0;
}

int wk_sa_on_peer_keys(wk_sa *sa, const Fedpeft__PeerKeys *pk, Fedpeft__ShareKeys **out)
{
    *out = NULL;
    if (pk->task_id != sa->task_id || pk->round != sa->round || sa->peers || sa->members)
        return fp_error_set("PeerKeys for another task or sent twice");
    uint32_t *nb = NULL;
    if (take_graph(sa, pk, &nb) < 0) {
        free(nb);
        return -1;
    }
    size_t n = (size_t)sa->degree + 1;
    if (n < sa->t) {
        free(nb);
        return fp_error_set("%zu holders of each secret (degree %u), below the threshold t = %u",
                            n, sa->degree, sa->t);
    }
    sa->peers = calloc(n, sizeof *sa->peers);
    sa->held = sodium_malloc(n * 64);
    sa->held_has = calloc(n, 1);
    uint8_t (*sh_b)[32] = sodium_malloc(n * 32), (*sh_k)[32] = sodium_malloc(n * 32);
    uint8_t *key = sodium_malloc(32), *plain = sodium_malloc(64);
    Fedpeft__ShareKeys *sk = calloc(1, sizeof *sk);
    int rc = -1;
    if (!sa->peers || !sa->held || !sa->held_has || !sh_b || !sh_k || !key || !plain || !sk) {
        fp_error_set("out of memory");
        goto out;
    }
    sa->n_peers = n;
    if (take_peers(sa, pk, nb) < 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        nb[i] = sa->peers[i].x;
    if (fp_vss_deal(R_SELF(sa), sa->t, nb, n, sh_b, NULL) < 0 ||
        fp_vss_deal(R_KEY(sa), sa->t, nb, n, sh_k, NULL) < 0)
        goto out;
    fedpeft__share_keys__init(sk);
    sk->task_id = sa->task_id;
    sk->round = sa->round;
    sk->shares = calloc(n, sizeof *sk->shares);
    if (!sk->shares) {
        fp_error_set("out of memory");
        goto out;
    }
    if (seal_shares(sa, sh_b, sh_k, plain, key, sk) < 0)
        goto out;
    *out = sk;
    sk = NULL;
    rc = 0;
out:
    free(nb);
    if (sh_b)
        sodium_free(sh_b);
    if (sh_k)
        sodium_free(sh_k);
    if (key)
        sodium_free(key);
    if (plain)
        sodium_free(plain);
    wk_sa_free_shares(&sk);
    return rc;
}

void wk_sa_free_shares(Fedpeft__ShareKeys **sk_p)
{
    if (!sk_p || !*sk_p)
        return;
    Fedpeft__ShareKeys *sk = *sk_p;
    for (size_t i = 0; sk->shares && i < sk->n_shares; i++) {
        free(sk->shares[i]->sealed.data);
        free(sk->shares[i]);
    }
    free(sk->shares);
    free(sk);
    *sk_p = NULL;
}

int wk_sa_on_shares(wk_sa *sa, const Fedpeft__ShareKeys *sk)
{
    if (!sa->peers || sa->shared || sk->task_id != sa->task_id || sk->round != sa->round)
        return fp_error_set("routed shares out of order or for another task");
    uint8_t *key = sodium_malloc(32);
    size_t len;
    if (!key)
        return fp_error_set("out of memory");
    for (size_t i = 0; i < sa->n_peers; i++)
        sa->peers[i].in_u2 = i == sa->me_slot;
    size_t n_u2 = 1;
    int rc = 0;
    for (size_t k = 0; k < sk->n_shares && rc == 0; k++) {
        int p = find_peer(sa, sk->shares[k]->worker_id);
        char adid[2 * WIRE_MAX_ID + 2];
        fp_seal_ad ad;
        if (p < 0 || (size_t)p == sa->me_slot || sa->peers[p].in_u2) {
            rc = fp_error_set("routed share from '%s': not a peer, or twice",
                              sk->shares[k]->worker_id);
            break;
        }
        /* A share that does not open: the sender is still in U2 (masks are
         * pairwise, from the keys) but this worker holds no share of it; the
         * caller reports it (wk_sa_bad_sender). */
        sa->peers[p].in_u2 = 1;
        n_u2++;
        if (share_key(sa, p, 0, key, &ad, adid, sizeof adid) < 0 ||
            fp_open(sa->held + (size_t)p * 64, &len, sk->shares[k]->sealed.data,
                    sk->shares[k]->sealed.len, &ad, key) < 0 || len != 64) {
            sodium_memzero(sa->held + (size_t)p * 64, 64);
            sa->peers[p].bad_share = 1;
            continue;
        }
        sa->held_has[p] = 1;
    }
    sodium_free(key);
    if (rc == 0 && n_u2 < sa->t)
        rc = fp_error_set("only %zu of this worker's share holders shared their keys (U2), "
                          "below t = %u", n_u2, sa->t);
    sa->shared = rc == 0;
    return rc;
}

int wk_sa_mask(wk_sa *sa, const float *x, size_t n, uint32_t *q)
{
    if (!sa->shared)
        return fp_error_set("masking before the shares were exchanged");
    fp_secagg_peer *peers = calloc(sa->n_peers, sizeof *peers);
    if (!peers)
        return fp_error_set("out of memory");
    size_t k = 0;
    for (size_t i = 0; i < sa->n_peers; i++)
        if (sa->peers[i].in_u2 && i != sa->me_slot) {
            peers[k].id = sa->peers[i].id;
            memcpy(peers[k++].pk, sa->peers[i].mask_pk, 32);
        }
    int rc = fp_secagg_quantize(q, x, n, sa->clip, sa->frac_bits, NULL);
    if (rc == 0)
        rc = fp_secagg_mask(q, n, 0, sa->me, MASK_SK(sa), SELF_SEED(sa), peers, k, sa->run_id,
                            sa->round);
    free(peers);
    return rc;
}

int wk_sa_on_consistency(wk_sa *sa, const Fedpeft__ConsistencyCheck *c, size_t min_survivors,
                         uint8_t sig[64])
{
    if (!sa->shared || c->task_id != sa->task_id || c->round != sa->round)
        return fp_error_set("ConsistencyCheck for another task, or before the shares");
    if (c->n_survivors < min_survivors)
        return fp_error_set("it names %zu survivors, below the threshold t = %zu",
                            c->n_survivors, min_survivors);
    int me_in = 0;
    for (size_t i = 0; i < c->n_survivors; i++) {
        const char *id = c->survivors[i];
        int p = find_peer(sa, id);
        if (i > 0 && strcmp(c->survivors[i - 1], id) >= 0)
            return fp_error_set("its survivors are not sorted or list '%s' twice", id);
        if (p < 0 ? !is_member(sa, id) : !sa->peers[p].in_u2)
            return fp_error_set("survivor '%s' is not in U2", id);
        me_in |= p >= 0 && (size_t)p == sa->me_slot;
    }
    if (!me_in)
        return fp_error_set("it does not list this worker as a survivor");
    uint8_t d[32];
    if (fp_sasign_u3_digest(d, sa->run_id, sa->round, c->survivors, c->n_survivors) < 0)
        return -1;
    if (sa->u3_signed) {        /* the same set again (a resend): the same signature */
        if (sodium_memcmp(d, sa->u3_digest, 32) != 0)
            return fp_error_set("a second, different survivor set for round %llu: refused "
                                "(this worker signs one set per round)",
                                (unsigned long long)sa->round);
    } else {
        memcpy(sa->u3_digest, d, 32);
        fp_sasign_sign(sa->u3_sig, d, sa->ident.sign_sk);
        sa->u3_signed = 1;
    }
    memcpy(sig, sa->u3_sig, 64);
    return 0;
}

/* The shares this worker holds of ids' secrets (the self-mask part, or the
 * key part); a peer whose share did not open is left out. *k: how many. */
static Fedpeft__RevealedShare **reveal(const wk_sa *sa, char **ids, size_t n, int key_part,
                                       size_t *k)
{
    Fedpeft__RevealedShare **out = calloc(n ? n : 1, sizeof *out);
    *k = 0;
    for (size_t i = 0; out && i < n; i++) {
        int p = find_peer(sa, ids[i]);
        if (p < 0 || !sa->held_has[p])
            continue;       /* not a neighbour: I hold nothing of it */
        Fedpeft__RevealedShare *r = out[*k] = calloc(1, sizeof **out);
        if (!r)
            return out;     /* freed by the caller */
        (*k)++;
        fedpeft__revealed_share__init(r);
        r->worker_id = sa->peers[p].id;
        r->share = (ProtobufCBinaryData){32, sa->held + (size_t)p * 64 + (key_part ? 32 : 0)};
    }
    return out;
}

/* Whether an id is listed in ids[0..n-1] before index `before`. */
static int listed(char **ids, size_t before, const char *id)
{
    for (size_t j = 0; j < before; j++)
        if (strcmp(ids[j], id) == 0)
            return 1;
    return 0;
}

/* The request may be answered: the first of the round, survivors and
 * dropped members of U1 (of U2, for my neighbours: I saw which of them
 * shared), disjoint, no id twice, me a survivor, at least min_survivors
 * survivors. */
/* At least t of this worker's share holders signed the survivor set it
 * signed itself: the coordinator showed them all the same U3 (Bonawitz et
 * al.'s consistency check), so none of them was told a survivor dropped. */
static int check_consistency(const wk_sa *sa, const Fedpeft__UnmaskRequest *u)
{
    uint8_t d[32];
    if (!sa->u3_signed)
        return fp_error_set("it came before the consistency round (no signed survivor set)");
    if (fp_sasign_u3_digest(d, sa->run_id, sa->round, u->survivors, u->n_survivors) < 0 ||
        sodium_memcmp(d, sa->u3_digest, 32) != 0)
        return fp_error_set("its survivors are not the set this worker signed");
    uint8_t *seen = calloc(sa->n_peers ? sa->n_peers : 1, 1);
    if (!seen)
        return fp_error_set("out of memory");
    size_t valid = 0;
    for (size_t i = 0; i < u->n_signatures; i++) {
        const Fedpeft__SurvivorSig *g = u->signatures[i];
        int p = find_peer(sa, g->worker_id);
        if (p < 0 || seen[p] || !sa->peers[p].in_u2)
            continue;
        if (fp_sasign_verify(g->signature.data, g->signature.len, d, sa->peers[p].sign_pk,
                             32) == 0) {
            seen[p] = 1;
            valid++;
        }
    }
    free(seen);
    if (valid < sa->t)
        return fp_error_set("it carries %zu valid consistency signatures of this worker's share "
                            "holders over the survivor set, below t = %u (the coordinator may "
                            "have shown others a different set)", valid, sa->t);
    return 0;
}

static int check_unmask(const wk_sa *sa, const Fedpeft__UnmaskRequest *u, size_t min_survivors)
{
    if (u->n_survivors < min_survivors)
        return fp_error_set("it names %zu survivors, below the threshold t = %zu: the sum of "
                            "so few inputs exposes them", u->n_survivors, min_survivors);
    int me_in = 0;
    for (size_t i = 0; i < u->n_survivors; i++) {
        int p = find_peer(sa, u->survivors[i]);
        if (p < 0 ? !is_member(sa, u->survivors[i]) : !sa->peers[p].in_u2)
            return fp_error_set("survivor '%s' is not in U2", u->survivors[i]);
        me_in |= p >= 0 && (size_t)p == sa->me_slot;
        if (listed(u->dropped, u->n_dropped, u->survivors[i]))
            return fp_error_set("it names '%s' both survivor and dropped (it would reveal "
                                "both its masks)", u->survivors[i]);
        if (listed(u->survivors, i, u->survivors[i]))
            return fp_error_set("it lists '%s' twice", u->survivors[i]);
    }
    for (size_t j = 0; j < u->n_dropped; j++) {
        int p = find_peer(sa, u->dropped[j]);
        if (p < 0 ? !is_member(sa, u->dropped[j])
                  : !sa->peers[p].in_u2 || (size_t)p == sa->me_slot)
            return fp_error_set("dropped '%s' is not a peer in U2", u->dropped[j]);
        if (listed(u->dropped, j, u->dropped[j]))
            return fp_error_set("it lists '%s' twice", u->dropped[j]);
    }
    if (!me_in)
        return fp_error_set("it does not list this worker as a survivor");
    return check_consistency(sa, u);
}

int wk_sa_on_unmask(wk_sa *sa, const Fedpeft__UnmaskRequest *u, size_t min_survivors,
                    Fedpeft__UnmaskResponse **out)
{
    *out = NULL;
    if (!sa->shared || u->task_id != sa->task_id || u->round != sa->round)
        return fp_error_set("UnmaskRequest for another task, or before the shares");
    if (sa->unmask_seen)
        return fp_error_set("a second UnmaskRequest for round %llu: refused (with the first it "
                            "could reveal both shares of a peer)", (unsigned long long)sa->round);
    sa->unmask_seen = 1;
    if (check_unmask(sa, u, min_survivors) < 0)
        return fp_error_prefix("UnmaskRequest refused: ");
    Fedpeft__UnmaskResponse *r = calloc(1, sizeof *r);
    if (!r)
        return fp_error_set("out of memory");
    fedpeft__unmask_response__init(r);
    r->task_id = sa->task_id;
    r->round = sa->round;
    *out = r;
    r->self_shares = reveal(sa, u->survivors, u->n_survivors, 0, &r->n_self_shares);
    r->key_shares = reveal(sa, u->dropped, u->n_dropped, 1, &r->n_key_shares);
    if (!r->self_shares || !r->key_shares)
        goto oom;
    for (size_t i = 0; i < r->n_self_shares; i++)
        if (!r->self_shares[i])
            goto oom;
    for (size_t i = 0; i < r->n_key_shares; i++)
        if (!r->key_shares[i])
            goto oom;
    return 0;
oom:
    wk_sa_free_response(out);
    return fp_error_set("out of memory");
}

void wk_sa_free_response(Fedpeft__UnmaskResponse **r_p)
{
    if (!r_p || !*r_p)
        return;
    Fedpeft__UnmaskResponse *r = *r_p;
    for (size_t i = 0; r->self_shares && i < r->n_self_shares; i++)
        free(r->self_shares[i]);
    for (size_t i = 0; r->key_shares && i < r->n_key_shares; i++)
        free(r->key_shares[i]);
    free(r->self_shares);
    free(r->key_shares);
    free(r);
    *r_p = NULL;
}

/* secagg_server.c - the coordinator's phases of secure aggregation (see
 * secagg_server.h and docs/protocol.md). The coordinator routes sealed
 * shares it cannot open, sums masked inputs mod 2^32, and reconstructs only
 * what the protocol allows: for each member either its self-mask seed (it
 * survived) or its mask secret key (it dropped), never both. */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clog.h"
#include "rounds_persist.h"
#include "rounds_state.h"
#include "secagg.h"
#include "secagg_graph.h"
#include "secagg_recon.h"
#include "secagg_sign.h"
#include "vss.h"
#include "wire_secagg.h"

#define SH WIRE_SEALED_SHARE_BYTES

typedef struct {
    int w;                          /* server index */
    int rank;                       /* in U1 (sorted by id); Shamir x = rank + 1; -1: not in U1 */
    char id[WIRE_MAX_ID];
    uint8_t enc_pk[32], mask_pk[32], self_commit[32];
    uint8_t sign_pk[32], adv_sig[64], u3_sig[64];
    int keys, shared, survived, responded;
    int signed_u3;                  /* signed the survivor set (U4, consistency round) */
    int out;                        /* refused (bad keys) or refusing: out of the round */
    int bad_holder;                 /* revealed a share that fails its check: ignored */
    int reported;                   /* sent a report of a peer's bad share */
    int resent;                     /* phase + 1 of the last resend after a re-Hello */
    double weight;                  /* what its input is scaled by: share x staleness weight */
    double share;                   /* its averaging weight p / sum p (the divisor's part) */
    const uint32_t *hold;           /* its secrets' holders: graph neighbours and itself */
    unsigned n_hold;                /* (member indices, ascending = by id) */
} sa_member;

struct sa_server {
    int phase;
    unsigned n, t, frac_bits;
    unsigned k_plan;                /* planned degree (0: complete), sent in the Task */
    unsigned degree;                /* the degree over U1 */
    float clip;
    size_t n_params;
    sa_member *m;                   /* the sampled, sorted by id */
    char **peer_ids;
    uint8_t nonce[32], commit[32];  /* the graph's randomness, committed in the Task */
    char **u1_ids;                  /* U1 in rank order */
    uint32_t *hold_mem;             /* every member's holder list */
    size_t slots;                   /* degree + 1: holders per secret */
    uint8_t *inbox, *inbox_has;     /* [recipient * slots + slot of sender] sealed shares */
    uint8_t *self_sh, *key_sh;      /* [owner * slots + slot of holder] revealed shares */
    uint8_t *self_has, *key_has;
    uint32_t *sum;
    unsigned n_u1, n_u2, n_u3, n_u4, n_resp;
    char **u3_ids;                  /* U3, sorted: what the survivors sign */
    uint8_t u3_digest[32];
    int unmasking;                  /* the masks are being removed, fin_next.. to go */
    unsigned fin_next;
    int64_t sub_deadline;
};

unsigned sa_threshold(int cfg_t, unsigned n)
{
    if (cfg_t > 0)
        return (unsigned)cfg_t;
    unsigned t = (2 * n + 2) / 3;
    return t < 2 ? 2 : t;
}

int sa_phase(const sa_server *sa) { return sa->phase; }
unsigned sa_t(const sa_server *sa) { return sa->t; }
int sa_busy(const sa_server *sa) { return sa->unmasking && sa->fin_next < sa->n; }

/* k_plan and t for n sampled: [secagg] neighbours when set; else the SecAgg+
 * bound (secagg_graph.h) when it gives a graph smaller than the complete one;
 * else the complete graph with sa_threshold. */
static void sa_plan(const coord_config *c, unsigned n, unsigned *k_plan, unsigned *t)
{
    unsigned k = 0, tk = 0;
    *k_plan = 0;
    *t = sa_threshold(c->secagg_threshold, n);
    if (c->secagg_neighbours > 0) {
        *k_plan = (unsigned)c->secagg_neighbours;
        tk = fp_sagraph_degree_for(n, *k_plan) / 2 + 1;
    } else if (n >= 4 && fp_sagraph_params(n, c->secagg_corrupt, c->secagg_dropout, 40, 30, &k,
                                           &tk) == 0 && k < n - 1) {
        *k_plan = k;
    } else {
        return;
    }
    *t = c->secagg_threshold > 0 ? (unsigned)c->secagg_threshold : tk;
}

static int member_of(const sa_server *sa, int w)
{
    for (unsigned i = 0; i < sa->n; i++)
        if (sa->m[i].w == w)
            return (int)i;
    return -1;
}

static int cmp_member(const void *id, const void *m)
{
    return strcmp(id, ((const sa_member *)m)->id);
}

static int member_by_id(const sa_server *sa, const char *id)
{
    const sa_member *m = bsearch(id, sa->m, sa->n, sizeof *sa->m, cmp_member);
    return m ? (int)(m - sa->m) : -1;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Where member j sits among the holders of owner's secrets, or -1. */
static int slot_of(const sa_server *sa, unsigned owner, unsigned j)
{
    const sa_member *o = &sa->m[owner];
    uint32_t key = j;
    const uint32_t *p = o->hold ? bsearch(&key, o->hold, o->n_hold, sizeof *o->hold, cmp_u32) : NULL;
    return p ? (int)(p - o->hold) : -1;
}

int sa_in_u2(const sa_server *sa, int w)
{
    int i = member_of(sa, w);
    return i >= 0 && sa->m[i].shared;
}

int sa_missed_phase(const sa_server *sa, int w)
{
    int i = member_of(sa, w);
    if (i < 0 || sa->m[i].out)
        return 0;   /* not a member, or out by its own refusal */
    return !sa->m[i].keys || (sa->phase >= SA_SHARES && !sa->m[i].shared) ||
           sa->phase >= SA_UPLOAD;
}

/* A small-message phase's wait for n members (fp_sagraph_phase_s), in ms. */
static int64_t phase_ms(const rounds *r, unsigned n)
{
    return (int64_t)(fp_sagraph_phase_s(n, r->cfg->deadline_s) * 1000.0);
}

sa_server *sa_new(rounds *r, const int *chosen, int k)
{
    const coord_config *c = r->cfg;
    unsigned t, k_plan;
    if (k > WIRE_MAX_PEERS) {
        fp_error_set("secure aggregation over %d workers: at most %d per round (lower "
                     "[sampling] max_workers)", k, WIRE_MAX_PEERS);
        return NULL;
    }
    sa_plan(c, (unsigned)k, &k_plan, &t);
    if (k < 2 || fp_sagraph_degree_for((size_t)k, k_plan) + 1 < t) {
        fp_error_set("secure aggregation needs at least t = %u holders of each secret, %d "
                     "workers were sampled (set [secagg] enabled = false to aggregate in the "
                     "clear)", t, k);
        return NULL;
    }
    if (fp_secagg_params_check(c->secagg_clip, (unsigned)c->secagg_frac_bits, (size_t)k) < 0) {
        fp_error_prefix("[secagg] clip / frac_bits: ");
        return NULL;
    }
    sa_server *sa = calloc(1, sizeof *sa);
    size_t n = (size_t)k, np = r->n_view;
    if (!sa)
        goto oom;
    sa->n = (unsigned)k;
    sa->t = t;
    sa->k_plan = k_plan;
    randombytes_buf(sa->nonce, sizeof sa->nonce);
    crypto_generichash(sa->commit, 32, sa->nonce, 32, NULL, 0);
    sa->clip = c->secagg_clip;
    sa->frac_bits = (unsigned)c->secagg_frac_bits;
    sa->n_params = np;
    sa->m = calloc(n, sizeof *sa->m);
    sa->peer_ids = calloc(n, sizeof *sa->peer_ids);
    sa->sum = calloc(np, sizeof *sa->sum);
    if (!sa->m || !sa->peer_ids || !sa->sum)
        goto oom;
    double total = 0;
    for (int i = 0; i < k; i++) {
        const worker_info *wi = server_worker(r->srv, chosen[i]);
        sa->m[i].w = chosen[i];
        sa->m[i].rank = -1;
        snprintf(sa->m[i].id, sizeof sa->m[i].id, "%s", wi->id);
        sa->peer_ids[i] = sa->m[i].id;
        sa->m[i].weight = rounds_weight(r, sa->m[i].w, wi->n_examples);
        total += sa->m[i].weight;
    }
    for (int i = 0; i < k; i++) {   /* async: x its staleness weight (rounds_async.h) */
        sa->m[i].share = sa->m[i].weight / total;
        sa->m[i].weight = sa->m[i].share * r->stale_w[sa->m[i].w];
    }
    sa->phase = SA_KEYS;
    sa->sub_deadline = clog_now_ms() + phase_ms(r, k);
    return sa;
oom:
    sa_destroy(&sa);
    fp_error_set("out of memory for secure aggregation (%d workers, %zu floats)", k, np);
    return NULL;
}

void sa_destroy(sa_server **sa_p)
{
    if (!sa_p || !*sa_p)
        return;
    sa_server *sa = *sa_p;
    free(sa->m);
    free(sa->peer_ids);
    free(sa->u1_ids);
    free(sa->u3_ids);
    free(sa->hold_mem);
    free(sa->inbox);
    free(sa->inbox_has);
    if (sa->self_sh)
        sodium_free(sa->self_sh);   /* wipes */
    if (sa->key_sh)
        sodium_free(sa->key_sh);
    free(sa->self_has);
    free(sa->key_has);
    free(sa->sum);
    free(sa);
    *sa_p = NULL;
}

void sa_task_fields(const sa_server *sa, int w, Fedpeft__SecAggParams *p, char ***peers,
                    size_t *n_peers)
{
    int i = member_of(sa, w);
    p->threshold = sa->t;
    p->clip = sa->clip;
    p->frac_bits = sa->frac_bits;
    p->weight = i >= 0 ? sa->m[i].weight : 0.0;
    p->degree = sa->k_plan;
    p->graph_commit = (ProtobufCBinaryData){32, (uint8_t *)sa->commit};
    *peers = sa->peer_ids;
    *n_peers = sa->n;
}

/* A message of phase `want` from w for the current TRAIN task: its member index or -1. */
static int check_msg(rounds *r, int w, uint64_t task_id, uint64_t round, int want,
                     const char *what)
{
    sa_server *sa = r->sa;
    int i = member_of(sa, w);
    if (task_id != rounds_task_id(r, r->round, TASK_TRAIN) || round != r->round) {
        server_reject(r->srv, w, NULL, REJ_WRONG_ROUND, FEDPEFT__REJECT__CODE__STALE,
                      "%s for task %llu round %llu; the current round is %llu", what,
                      (unsigned long long)task_id, (unsigned long long)round,
                      (unsigned long long)r->round);
        return -1;
    }
    if (i < 0 || sa->phase != want) {
        server_reject(r->srv, w, NULL, i < 0 ? REJ_INVALID : REJ_LATE,
                      FEDPEFT__REJECT__CODE__STALE, "%s %s: %s", what,
                      i < 0 ? "from a worker not sampled" : "out of phase",
                      server_worker(r->srv, w)->id);
        return -1;
    }
    return i;
}

/* Keys that would make pairwise seeds public or ambiguous: the all-zero and
 * other low-order points (crypto_scalarmult fails on them), and a key another
 * member already advertised (a copy of an honest member's keys). */
static int bad_keys(const sa_server *sa, int i, const Fedpeft__AdvertiseKeys *m, char *why,
                    size_t cap)
{
    const uint8_t *k[2] = {m->enc_pk.data, m->mask_pk.data};
    for (int j = 0; j < 2; j++)
        if (fp_secagg_pk_check(k[j]) < 0) {
            snprintf(why, cap, "its %s is %s", j ? "mask_pk" : "enc_pk", fp_error_get());
            return 1;
        }
    if (memcmp(k[0], k[1], 32) == 0) {
        snprintf(why, cap, "its enc_pk and mask_pk are the same key");
        return 1;
    }
    for (unsigned o = 0; o < sa->n; o++) {
        if ((int)o == i || !sa->m[o].keys)
            continue;
        for (int j = 0; j < 2; j++)
            if (!memcmp(k[j], sa->m[o].enc_pk, 32) || !memcmp(k[j], sa->m[o].mask_pk, 32)) {
                snprintf(why, cap, "its %s equals a key of %s", j ? "mask_pk" : "enc_pk",
                         sa->m[o].id);
                return 1;
            }
    }
    return 0;
}

/* Keys its signing key did not sign: its peers would refuse the round's
 * PeerKeys, so it is named and left out here instead. */
static int bad_signature(const rounds *r, int w, const Fedpeft__AdvertiseKeys *m, char *why,
                         size_t cap)
{
    const worker_info *wi = server_worker(r->srv, w);
    uint8_t d[32];
    if (!wi->has_sign) {
        snprintf(why, cap, "it has no signing key (its Hello carried no sign_pk)");
        return 1;
    }
    if (fp_sasign_adv_digest(d, r->run_id, r->round, wi->id, m->enc_pk.data, m->mask_pk.data,
                             m->self_commit.data) < 0 ||
        fp_sasign_verify(m->signature.data, m->signature.len, d, wi->sign_pk, 32) < 0) {
        snprintf(why, cap, "its keys do not carry a valid signature of its %s signing key (%s)",
                 wi->sign_pinned ? "allowlisted" : "Hello's", fp_error_get());
        return 1;
    }
    return 0;
}

void sa_on_advertise(rounds *r, int w, const Fedpeft__AdvertiseKeys *m)
{
    if (!r->sa)
        return;
    int i = check_msg(r, w, m->task_id, m->round, SA_KEYS, "AdvertiseKeys");
    if (i < 0)
        return;
    sa_member *me = &r->sa->m[i];
    if (me->keys || me->out) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, FEDPEFT__REJECT__CODE__STALE,
                      "duplicate AdvertiseKeys for round %llu", (unsigned long long)r->round);
        return;
    }
    char why[200];
    if (bad_keys(r->sa, i, m, why, sizeof why) || bad_signature(r, w, m, why, sizeof why)) {
        me->out = 1;
        clog_info("round %llu: secagg: refused the keys of %s: %s; it is out of this round",
                  (unsigned long long)r->round, me->id, why);
        server_reject(r->srv, w, NULL, REJ_INVALID, FEDPEFT__REJECT__CODE__BAD_MESSAGE,
                      "AdvertiseKeys refused: %s", why);
        return;
    }
    memcpy(me->enc_pk, m->enc_pk.data, 32);
    memcpy(me->mask_pk, m->mask_pk.data, 32);
    memcpy(me->self_commit, m->self_commit.data, 32);
    memcpy(me->sign_pk, server_worker(r->srv, w)->sign_pk, 32);
    memcpy(me->adv_sig, m->signature.data, 64);
    me->keys = 1;
    r->sa->n_u1++;
}

int sa_on_refusal(rounds *r, int w, int report)
{
    int i = r->sa ? member_of(r->sa, w) : -1;
    if (i < 0)
        return 0;
    sa_member *me = &r->sa->m[i];
    int *flag = report ? &me->reported : &me->out, first = !*flag;
    *flag = 1;
    return first;
}

void sa_on_shares(rounds *r, int w, const Fedpeft__ShareKeys *m)
{
    sa_server *sa = r->sa;
    if (!sa)
        return;
    int i = check_msg(r, w, m->task_id, m->round, SA_SHARES, "ShareKeys");
    if (i < 0)
        return;
    if (!sa->m[i].keys || sa->m[i].shared || sa->m[i].out) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, FEDPEFT__REJECT__CODE__STALE,
                      "ShareKeys %s", sa->m[i].shared ? "sent twice" : "without keys in U1");
        return;
    }
    /* One share for every neighbour of i in the graph, each exactly once. */
    const sa_member *me = &sa->m[i];
    uint8_t *seen = calloc(me->n_hold, 1);
    if (!seen)
        return;
    for (size_t k = 0; k < m->n_shares; k++) {
        int to = member_by_id(sa, m->shares[k]->worker_id);
        int slot = to >= 0 ? slot_of(sa, (unsigned)i, (unsigned)to) : -1;
        if (slot < 0 || to == i || seen[slot]) {
            free(seen);
            server_reject(r->srv, w, NULL, REJ_INVALID, FEDPEFT__REJECT__CODE__BAD_MESSAGE,
                          "ShareKeys: share for '%s' (not a neighbour in U1, or twice)",
                          m->shares[k]->worker_id);
            return;
        }
        seen[slot] = 1;
    }
    free(seen);
    if (m->n_shares != me->n_hold - 1) {
        server_reject(r->srv, w, NULL, REJ_INVALID, FEDPEFT__REJECT__CODE__BAD_MESSAGE,
                      "ShareKeys holds %zu shares; %s has %u neighbours", m->n_shares, me->id,
                      me->n_hold - 1);
        return;
    }
    for (size_t k = 0; k < m->n_shares; k++) {
        int to = member_by_id(sa, m->shares[k]->worker_id);
        size_t at = (size_t)to * sa->slots + (size_t)slot_of(sa, (unsigned)to, (unsigned)i);
        memcpy(sa->inbox + at * SH, m->shares[k]->sealed.data, SH);
        sa->inbox_has[at] = 1;
    }
    sa->m[i].shared = 1;
    sa->n_u2++;
}

void sa_add_input(sa_server *sa, const uint32_t *y, size_t n)
{
    fp_secagg_sum_add(sa->sum, y, n);
}

/* U1 (the members with keys, in id order) and its graph: each member's
 * holders are its neighbours and itself. Then the share tables, sized by the
 * degree (O(n k), not O(n^2)). */
static int build_graph(rounds *r)
{
    sa_server *sa = r->sa;
    size_t n1 = sa->n_u1, n = sa->n;
    sa->u1_ids = calloc(n1, sizeof *sa->u1_ids);
    if (!sa->u1_ids)
        return fp_error_set("out of memory");
    int *u1 = malloc(n1 * sizeof *u1);
    size_t rk = 0;
    for (unsigned i = 0; u1 && i < sa->n; i++) {
        sa->m[i].rank = sa->m[i].keys ? (int)rk : -1;
        if (sa->m[i].keys) {
            u1[rk] = (int)i;
            sa->u1_ids[rk++] = sa->m[i].id;
        }
    }
    sa->degree = fp_sagraph_degree_for(n1, sa->k_plan);
    sa->slots = (size_t)sa->degree + 1;
    if (!u1 || sa->slots < sa->t) {
        free(u1);
        return u1 ? fp_error_set("%zu members advertised keys: %zu holders of each secret "
                                 "(degree %u), below the threshold t = %u", n1, sa->slots,
                                 sa->degree, sa->t)
                  : fp_error_set("out of memory");
    }
    uint8_t seed[FP_SAGRAPH_SEED_BYTES];
    fp_sagraph_seed(seed, r->run_id, r->round, sa->nonce, (const char *const *)sa->u1_ids, n1);
    fp_sagraph *g = fp_sagraph_new(n1, sa->degree, seed);
    sa->hold_mem = malloc(n1 * sa->slots * sizeof *sa->hold_mem);
    sa->inbox = malloc(n * sa->slots * SH);
    sa->inbox_has = calloc(n * sa->slots, 1);
    sa->self_sh = sodium_malloc(n * sa->slots * 32);
    sa->key_sh = sodium_malloc(n * sa->slots * 32);
    sa->self_has = calloc(n * sa->slots, 1);
    sa->key_has = calloc(n * sa->slots, 1);
    if (!g || !sa->hold_mem || !sa->inbox || !sa->inbox_has || !sa->self_sh || !sa->key_sh ||
        !sa->self_has || !sa->key_has) {
        fp_sagraph_destroy(&g);
        free(u1);
        return fp_error_set("out of memory for the secagg graph (%zu members, degree %u)", n1,
                            sa->degree);
    }
    for (size_t q = 0; q < n1; q++) {
        uint32_t *h = sa->hold_mem + q * sa->slots;
        unsigned c = fp_sagraph_neighbours(g, q, h);
        h[c++] = (uint32_t)q;
        for (unsigned j = 0; j < c; j++)
            h[j] = (uint32_t)u1[h[j]];      /* ranks -> member indices (same order) */
        qsort(h, c, sizeof *h, cmp_u32);
        sa->m[u1[q]].hold = h;
        sa->m[u1[q]].n_hold = c;
    }
    fp_sagraph_destroy(&g);
    free(u1);
    return 0;
}

/* Each member of U1 (or only member `only`, when >= 0) gets U1, the graph's
 * nonce and degree, and the keys of its holders (its neighbours and itself). */
static void send_peer_keys(rounds *r, int only)
{
    sa_server *sa = r->sa;
    Fedpeft__PeerKey *keys = calloc(sa->slots, sizeof *keys);
    Fedpeft__PeerKey **ptrs = calloc(sa->slots, sizeof *ptrs);
    if (!keys || !ptrs)
        goto out;
    Fedpeft__PeerKeys pk = FEDPEFT__PEER_KEYS__INIT;
    pk.task_id = rounds_task_id(r, r->round, TASK_TRAIN);
    pk.round = r->round;
    pk.members = sa->u1_ids;
    pk.n_members = sa->n_u1;
    pk.graph_nonce = (ProtobufCBinaryData){32, sa->nonce};
    pk.degree = sa->degree;
    pk.peers = ptrs;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_PEER_KEYS;
    env.peer_keys = &pk;
    const char *evil = NULL;
#ifdef FEDPEFT_TEST_HOOKS
    /* FEDPEFT_TEST_EVIL_GRAPH=nonce|neighbours|swapkey|signkey (test builds
     * only): the first member gets another nonce, a non-neighbour in place of
     * a neighbour, a neighbour's mask key replaced by one the coordinator
     * holds (its signature kept), or that key signed by a signing key the
     * coordinator made up (a key substitution only a [privacy] roster stops). */
    evil = getenv("FEDPEFT_TEST_EVIL_GRAPH");
    uint8_t other[32], fake_mask[32], fake_mask_sk[32], fake_spk[32], fake_ssk[64], fake_sig[64];
    randombytes_buf(other, sizeof other);
    crypto_box_keypair(fake_mask, fake_mask_sk);
    crypto_sign_keypair(fake_spk, fake_ssk);
#endif
    for (unsigned i = 0; i < sa->n; i++) {
        const sa_member *me = &sa->m[i];
        if (!me->keys || (only >= 0 && (int)i != only))
            continue;
        int lie = evil && me->rank == 0;
        pk.graph_nonce = (ProtobufCBinaryData){32, sa->nonce};
#ifdef FEDPEFT_TEST_HOOKS
        if (lie && strcmp(evil, "nonce") == 0)
            pk.graph_nonce.data = other;
#endif
        unsigned swap_from = sa->n, swap_to = sa->n;     /* a neighbour -> a non-neighbour */
        if (lie && strcmp(evil, "neighbours") == 0)
            for (unsigned j = 0; j < sa->n; j++) {
                int s = sa->m[j].keys ? slot_of(sa, i, j) : 0;
                if (s < 0 && swap_to == sa->n)
                    swap_to = j;
                if (s >= 0 && j != i && sa->m[j].keys && swap_from == sa->n)
                    swap_from = j;
            }
        for (unsigned k = 0; k < me->n_hold; k++) {
            unsigned j = me->hold[k] == swap_from && swap_to < sa->n ? swap_to : me->hold[k];
            const sa_member *h = &sa->m[j];
            fedpeft__peer_key__init(&keys[k]);
            keys[k].worker_id = (char *)h->id;
            keys[k].enc_pk = (ProtobufCBinaryData){32, (uint8_t *)h->enc_pk};
            keys[k].mask_pk = (ProtobufCBinaryData){32, (uint8_t *)h->mask_pk};
            keys[k].sign_pk = (ProtobufCBinaryData){32, (uint8_t *)h->sign_pk};
            keys[k].self_commit = (ProtobufCBinaryData){32, (uint8_t *)h->self_commit};
            keys[k].signature = (ProtobufCBinaryData){64, (uint8_t *)h->adv_sig};
#ifdef FEDPEFT_TEST_HOOKS
            if (lie && j != i && k == (me->hold[0] == i ? 1u : 0u) &&
                (!strcmp(evil, "swapkey") || !strcmp(evil, "signkey"))) {
                keys[k].mask_pk.data = fake_mask;
                uint8_t d[32];
                if (!strcmp(evil, "signkey") &&
                    fp_sasign_adv_digest(d, r->run_id, r->round, h->id, h->enc_pk, fake_mask,
                                         h->self_commit) == 0) {
                    fp_sasign_sign(fake_sig, d, fake_ssk);
                    keys[k].sign_pk.data = fake_spk;
                    keys[k].signature.data = fake_sig;
                }
            }
#endif
            ptrs[k] = &keys[k];
        }
        pk.n_peers = me->n_hold;
        (void)server_send(r->srv, me->w, &env);
    }
out:
    free(keys);
    free(ptrs);
}

/* Each member of U2 (or only member `only`, when >= 0) gets the shares its
 * neighbours in U2 sealed for it. */
static void route_shares(rounds *r, int only)
{
    sa_server *sa = r->sa;
    Fedpeft__EncryptedShare *e = calloc(sa->slots, sizeof *e);
    Fedpeft__EncryptedShare **ptrs = calloc(sa->slots, sizeof *ptrs);
    if (!e || !ptrs)
        goto out;
    for (unsigned v = 0; v < sa->n; v++) {
        if (!sa->m[v].shared || (only >= 0 && (int)v != only))
            continue;
        size_t k = 0;
        for (unsigned s = 0; s < sa->m[v].n_hold; s++) {
            unsigned u = sa->m[v].hold[s];
            size_t at = (size_t)v * sa->slots + s;
            if (u == v || !sa->m[u].shared || !sa->inbox_has[at])
                continue;
            fedpeft__encrypted_share__init(&e[k]);
            e[k].worker_id = sa->m[u].id;
            e[k].sealed = (ProtobufCBinaryData){SH, sa->inbox + at * SH};
            ptrs[k] = &e[k];
            k++;
        }
        Fedpeft__ShareKeys sk = FEDPEFT__SHARE_KEYS__INIT;
        sk.task_id = rounds_task_id(r, r->round, TASK_TRAIN);
        sk.round = r->round;
        sk.n_shares = k;
        sk.shares = ptrs;
        wire_msg env = FEDPEFT__ENVELOPE__INIT;
        env.body_case = FEDPEFT__ENVELOPE__BODY_SHARE_KEYS;
        env.share_keys = &sk;
        (void)server_send(r->srv, sa->m[v].w, &env);
    }
out:
    free(e);
    free(ptrs);
}

/* Are all the members still expected in this phase done (or dead)? */
static int phase_settled(const rounds *r, int (*done)(const sa_member *),
                         int (*expected)(const sa_member *))
{
    const sa_server *sa = r->sa;
    for (unsigned i = 0; i < sa->n; i++)
        if (expected(&sa->m[i]) && !done(&sa->m[i]) && server_worker(r->srv, sa->m[i].w)->alive)
            return 0;
    return 1;
}

/* A member that is out (refused keys, or refusing) counts as done. */
static int is_all(const sa_member *m) { (void)m; return 1; }
static int has_keys(const sa_member *m) { return m->keys; }
static int keys_or_out(const sa_member *m) { return m->keys || m->out; }
static int shared_or_out(const sa_member *m) { return m->shared || m->out; }
static int is_survivor(const sa_member *m) { return m->survived; }
static int signed_or_out(const sa_member *m) { return m->signed_u3 || m->out; }
static int has_signed(const sa_member *m) { return m->signed_u3; }
static int responded_or_out(const sa_member *m) { return m->responded || m->out; }

static void enter_upload(rounds *r, int64_t now)
{
    sa_server *sa = r->sa;
    route_shares(r, -1);
    sa->phase = SA_UPLOAD;
    r->n_targets = sa->n_u2;
    for (unsigned i = 0; i < sa->n; i++)
        if (!sa->m[i].shared)
            r->status[sa->m[i].w] = ST_NONE;     /* out of the round */
    clog_info("round %llu: secagg: %u of %u workers shared their keys (U2, t = %u); "
              "waiting for masked inputs", (unsigned long long)r->round, sa->n_u2, sa->n, sa->t);
    (void)now;
}

/* The round's UnmaskRequest lists, from the flags: survivors (their self-mask
 * seeds are asked for) and members dropped after sharing (their mask keys),
 * disjoint by construction. Each array holds sa->n + 1 entries (one spare for
 * the test hooks). -1 when out of memory. */
static int unmask_lists(const sa_server *sa, char ***surv, size_t *ns, char ***drop, size_t *nd)
{
    *surv = calloc(sa->n + 1, sizeof **surv);
    *drop = calloc(sa->n + 1, sizeof **drop);
    *ns = *nd = 0;
    if (!*surv || !*drop) {
        free(*surv), free(*drop);
        *surv = *drop = NULL;
        return -1;
    }
    for (unsigned i = 0; i < sa->n; i++) {
        if (sa->m[i].survived)
            (*surv)[(*ns)++] = (char *)sa->m[i].id;
        else if (sa->m[i].shared)
            (*drop)[(*nd)++] = (char *)sa->m[i].id;
    }
    return 0;
}

/* Sends UnmaskRequest(survivors, dropped) to every member that signed the
 * survivor set (or only member `only`, when >= 0), each with the consistency
 * signatures of its own share holders (its neighbours and itself). */
static void send_unmask_to(rounds *r, char **surv, size_t ns, char **drop, size_t nd, int only)
{
    sa_server *sa = r->sa;
    Fedpeft__SurvivorSig *g = calloc(sa->slots, sizeof *g);
    Fedpeft__SurvivorSig **gp = calloc(sa->slots, sizeof *gp);
    if (!g || !gp)
        goto out;
    Fedpeft__UnmaskRequest u = FEDPEFT__UNMASK_REQUEST__INIT;
    u.task_id = rounds_task_id(r, r->round, TASK_TRAIN);
    u.round = r->round;
    u.n_survivors = ns;
    u.survivors = surv;
    u.n_dropped = nd;
    u.dropped = drop;
    u.signatures = gp;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UNMASK_REQUEST;
    env.unmask_request = &u;
    for (unsigned i = 0; i < sa->n; i++) {
        const sa_member *me = &sa->m[i];
        if (!me->signed_u3 || (only >= 0 && (int)i != only))
            continue;
        size_t k = 0;
        for (unsigned s = 0; s < me->n_hold; s++) {
            const sa_member *h = &sa->m[me->hold[s]];
            if (!h->signed_u3)
                continue;
            fedpeft__survivor_sig__init(&g[k]);
            g[k].worker_id = (char *)h->id;
            g[k].signature = (ProtobufCBinaryData){64, (uint8_t *)h->u3_sig};
            gp[k] = &g[k];
            k++;
        }
        u.n_signatures = k;
        (void)server_send(r->srv, me->w, &env);
    }
out:
    free(g);
    free(gp);
}

static void send_unmask(rounds *r, char **surv, size_t ns, char **drop, size_t nd)
{
    send_unmask_to(r, surv, ns, drop, nd, -1);
}

/* FEDPEFT_TEST_EVIL_UNMASK=both|few|twice (test builds only): a coordinator
 * that asks for too much, so that the tests can see the workers refuse. */
static void evil_unmask(rounds *r, char **surv, size_t ns, char **drop, size_t nd)
{
#ifdef FEDPEFT_TEST_HOOKS
    const char *e = getenv("FEDPEFT_TEST_EVIL_UNMASK");
    if (!e || ns < 2)
        return;
    clog_info("round %llu: FEDPEFT_TEST_EVIL_UNMASK=%s", (unsigned long long)r->round, e);
    if (strcmp(e, "both") == 0) {           /* survivor 0 also named dropped */
        drop[nd] = surv[0];
        send_unmask(r, surv, ns, drop, nd + 1);
    } else if (strcmp(e, "few") == 0) {     /* fewer than t survivors */
        send_unmask(r, surv, r->sa->t - 1, drop, nd);
    } else if (strcmp(e, "twice") == 0) {   /* the honest one, then the last survivor dropped */
        send_unmask(r, surv, ns, drop, nd);
        drop[nd] = surv[ns - 1];
        send_unmask(r, surv, ns - 1, drop, nd + 1);
    }
#else
    (void)r, (void)surv, (void)ns, (void)drop, (void)nd;
#endif
}

/* FEDPEFT_TEST_EVIL_CONSIST=split (test builds only): a coordinator that
 * shows its first survivor a survivor set without the last survivor (in the
 * ConsistencyCheck and the UnmaskRequest), to get from it the last one's
 * mask key share while the others reveal that one's self-mask share. */
static int evil_split(void)
{
#ifdef FEDPEFT_TEST_HOOKS
    const char *e = getenv("FEDPEFT_TEST_EVIL_CONSIST");
    return e && strcmp(e, "split") == 0;
#else
    return 0;
#endif
}

static int first_survivor(const sa_server *sa)
{
    for (unsigned i = 0; i < sa->n; i++)
        if (sa->m[i].survived)
            return (int)i;
    return -1;
}

/* The split hook's UnmaskRequests: the honest one to every signer but the
 * first survivor, which is told the last survivor dropped. */
static void split_unmask(rounds *r, char **surv, size_t ns, char **drop, size_t nd)
{
    int victim = first_survivor(r->sa);
    clog_info("round %llu: FEDPEFT_TEST_EVIL_CONSIST=split: %s is told %s dropped",
              (unsigned long long)r->round, surv[0], surv[ns - 1]);
    for (unsigned i = 0; i < r->sa->n; i++)
        if ((int)i != victim)
            send_unmask_to(r, surv, ns, drop, nd, (int)i);
    drop[nd] = surv[ns - 1];
    send_unmask_to(r, surv, ns - 1, drop, nd + 1, victim);
}

static int evil_hook_set(void)
{
#ifdef FEDPEFT_TEST_HOOKS
    return getenv("FEDPEFT_TEST_EVIL_UNMASK") != NULL;
#else
    return 0;
#endif
}

/* The round's UnmaskRequest again, to member i alone. */
static void resend_unmask(rounds *r, unsigned i)
{
    char **surv, **drop;
    size_t ns, nd;
    if (unmask_lists(r->sa, &surv, &ns, &drop, &nd) < 0)
        return;
    send_unmask_to(r, surv, ns, drop, nd, (int)i);
    free(surv);
    free(drop);
}

static void send_consistency(rounds *r, int only);

void sa_rejoin(rounds *r, int w, int training)
{
    sa_server *sa = r->sa;
    int i = sa ? member_of(sa, w) : -1;
    if (i < 0)
        return;
    sa_member *me = &sa->m[i];
    if (me->resent == sa->phase + 1 || me->out)
        return;     /* once per phase: a key that keeps saying Hello gets nothing more */
    const char *what = NULL;
    if (sa->phase == SA_SHARES && me->keys && !me->shared) {
        send_peer_keys(r, i);
        what = "PeerKeys";
    } else if (sa->phase == SA_UPLOAD && me->shared && training) {
        route_shares(r, i);
        what = "its routed shares";
    } else if (sa->phase == SA_CONSIST && me->survived && !me->signed_u3) {
        send_consistency(r, i);
        what = "the ConsistencyCheck";
    } else if (sa->phase == SA_UNMASK && me->signed_u3 && !me->responded && !sa->unmasking) {
        resend_unmask(r, (unsigned)i);
        what = "the UnmaskRequest";
    }
    if (!what)
        return;
    me->resent = sa->phase + 1;
    clog_info("round %llu: secagg: resent %s to %s (sent while it was reconnecting)",
              (unsigned long long)r->round, what, me->id);
}

/* Every secret to reconstruct needs t holders among those asked: a dropped
 * member's (its neighbours) and a survivor's (them and itself). `asked`
 * picks them (the survivors, then the signers). More dropouts than the graph
 * was built for: say so at once, not after the deadline of the answers. */
static int enough_holders(const rounds *r, int (*asked)(const sa_member *), const char *who,
                          char *reason, size_t cap)
{
    const sa_server *sa = r->sa;
    for (unsigned i = 0; i < sa->n; i++) {
        const sa_member *o = &sa->m[i];
        if (!o->shared)
            continue;
        unsigned alive = 0;
        for (unsigned s = 0; s < o->n_hold; s++)
            alive += (unsigned)(asked(&sa->m[o->hold[s]]) != 0);
        if (alive < sa->t) {
            snprintf(reason, cap, "secure aggregation: %s %s has %u %s share holders, below "
                     "the threshold t = %u (%u of %u masked inputs arrived: more dropped than "
                     "[secagg] dropout_fraction = %g plans for)",
                     o->survived ? "survivor" : "dropped member", o->id, alive, who, sa->t,
                     sa->n_u3, sa->n_u2, r->cfg->secagg_dropout);
            return -1;
        }
    }
    return 0;
}

/* ConsistencyCheck(U3) to every survivor (or only member `only`, when >= 0). */
static void send_consistency(rounds *r, int only)
{
    sa_server *sa = r->sa;
    Fedpeft__ConsistencyCheck c = FEDPEFT__CONSISTENCY_CHECK__INIT;
    c.task_id = rounds_task_id(r, r->round, TASK_TRAIN);
    c.round = r->round;
    c.survivors = sa->u3_ids;
    c.n_survivors = sa->n_u3;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_CONSISTENCY_CHECK;
    env.consistency_check = &c;
    int split = evil_split();
    for (unsigned i = 0; i < sa->n; i++) {
        if (!sa->m[i].survived || (only >= 0 && (int)i != only))
            continue;
        /* the split hook: the first survivor is told the last one dropped */
        c.n_survivors = split && (int)i == first_survivor(sa) ? sa->n_u3 - 1 : sa->n_u3;
        (void)server_send(r->srv, sa->m[i].w, &env);
    }
}

sa_verdict sa_end_upload(rounds *r, int64_t now, const char *why, char *reason, size_t cap)
{
    sa_server *sa = r->sa;
    if (sa->phase != SA_UPLOAD)
        return SA_GOING;    /* one survivor set per round, never a second */
    sa->n_u3 = 0;
    for (unsigned i = 0; i < sa->n; i++) {
        sa->m[i].survived = sa->m[i].shared && r->status[sa->m[i].w] == ST_DONE;
        sa->n_u3 += (unsigned)sa->m[i].survived;
    }
    if (sa->n_u3 < sa->t) {
        snprintf(reason, cap, "secure aggregation: %u masked inputs arrived, below the "
                 "threshold t = %u", sa->n_u3, sa->t);
        return SA_FAILED;
    }
    if (enough_holders(r, is_survivor, "surviving", reason, cap) < 0)
        return SA_FAILED;
    free(sa->u3_ids);
    if (!(sa->u3_ids = calloc(sa->n_u3, sizeof *sa->u3_ids))) {
        snprintf(reason, cap, "out of memory");
        return SA_FAILED;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < sa->n; i++)        /* members are sorted by id */
        if (sa->m[i].survived)
            sa->u3_ids[k++] = sa->m[i].id;
    if (fp_sasign_u3_digest(sa->u3_digest, r->run_id, r->round, sa->u3_ids, sa->n_u3) < 0) {
        snprintf(reason, cap, "secure aggregation: %s", fp_error_get());
        return SA_FAILED;
    }
    send_consistency(r, -1);
    sa->phase = SA_CONSIST;
    sa->n_u4 = 0;
    sa->sub_deadline = now + phase_ms(r, sa->n_u3);
    clog_info("round %llu: secagg: %u masked inputs (%s); asking the survivors to sign the "
              "survivor set", (unsigned long long)r->round, sa->n_u3, why);
    return SA_GOING;
}

void sa_on_consistency(rounds *r, int w, const Fedpeft__ConsistencySig *m)
{
    sa_server *sa = r->sa;
    if (!sa)
        return;
    int i = check_msg(r, w, m->task_id, m->round, SA_CONSIST, "ConsistencySig");
    if (i < 0)
        return;
    sa_member *me = &sa->m[i];
    if (!me->survived || me->signed_u3 || me->out) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, FEDPEFT__REJECT__CODE__STALE,
                      "ConsistencySig %s", me->signed_u3 ? "sent twice" : "from a non-survivor");
        return;
    }
    /* (the split hook's coordinator takes its victim's signature of the other set) */
    int victim = evil_split() && i == first_survivor(sa);
    if (!victim && fp_sasign_verify(m->signature.data, m->signature.len, sa->u3_digest,
                                    me->sign_pk, 32) < 0) {
        me->out = 1;
        clog_info("round %llu: secagg: the consistency signature of %s does not verify; it is "
                  "out of this round", (unsigned long long)r->round, me->id);
        server_reject(r->srv, w, NULL, REJ_INVALID, FEDPEFT__REJECT__CODE__BAD_MESSAGE,
                      "ConsistencySig refused: the signature does not verify over the survivor "
                      "set sent");
        return;
    }
    memcpy(me->u3_sig, m->signature.data, 64);
    me->signed_u3 = 1;
    sa->n_u4++;
}

/* The consistency round is over: UnmaskRequest to the signers (U4). */
static sa_verdict start_unmask(rounds *r, int64_t now, char *reason, size_t cap)
{
    sa_server *sa = r->sa;
    if (sa->n_u4 < sa->t) {
        snprintf(reason, cap, "secure aggregation: %u survivors signed the survivor set, below "
                 "the threshold t = %u", sa->n_u4, sa->t);
        return SA_FAILED;
    }
    if (enough_holders(r, has_signed, "signing", reason, cap) < 0)
        return SA_FAILED;
    char **surv, **drop;
    size_t ns, nd;
    if (unmask_lists(sa, &surv, &ns, &drop, &nd) < 0) {
        snprintf(reason, cap, "out of memory");
        return SA_FAILED;
    }
    if (evil_split())
        split_unmask(r, surv, ns, drop, nd);
    else if (evil_hook_set())
        evil_unmask(r, surv, ns, drop, nd);
    else
        send_unmask(r, surv, ns, drop, nd);
    free(surv);
    free(drop);
    sa->phase = SA_UNMASK;
    sa->n_resp = 0;
    int64_t least = now + phase_ms(r, sa->n_u4);
    sa->sub_deadline = r->deadline_ms > least ? r->deadline_ms : least;
    clog_info("round %llu: secagg: %u of %u survivors signed the survivor set, %zu dropped "
              "after sharing; asking the signers for their shares", (unsigned long long)r->round,
              sa->n_u4, sa->n_u3, nd);
    return SA_GOING;
}

void sa_on_unmask(rounds *r, int w, const Fedpeft__UnmaskResponse *m)
{
    sa_server *sa = r->sa;
    if (!sa)
        return;
    int h = check_msg(r, w, m->task_id, m->round, SA_UNMASK, "UnmaskResponse");
    if (h < 0)
        return;
    if (!sa->m[h].signed_u3 || sa->m[h].responded || sa->m[h].out || sa->unmasking) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, FEDPEFT__REJECT__CODE__STALE,
                      "UnmaskResponse %s", sa->m[h].responded ? "sent twice"
                      : sa->unmasking ? "after unmasking began"
                                      : "from a member that did not sign the survivor set");
        return;
    }
    /* Store only what was asked: self shares of survivors, key shares of the dropped. */
    for (size_t k = 0; k < m->n_self_shares; k++) {
        int v = member_by_id(sa, m->self_shares[k]->worker_id);
        int s = v >= 0 && sa->m[v].survived ? slot_of(sa, (unsigned)v, (unsigned)h) : -1;
        if (s >= 0) {
            size_t at = (size_t)v * sa->slots + (size_t)s;
            memcpy(sa->self_sh + at * 32, m->self_shares[k]->share.data, 32);
            sa->self_has[at] = 1;
        }
    }
    for (size_t k = 0; k < m->n_key_shares; k++) {
        int d = member_by_id(sa, m->key_shares[k]->worker_id);
        int s = d >= 0 && sa->m[d].shared && !sa->m[d].survived
                    ? slot_of(sa, (unsigned)d, (unsigned)h) : -1;
        if (s >= 0) {
            size_t at = (size_t)d * sa->slots + (size_t)s;
            memcpy(sa->key_sh + at * 32, m->key_shares[k]->share.data, 32);
            sa->key_has[at] = 1;
        }
    }
    sa->m[h].responded = 1;
    sa->n_resp++;
}

/* What a reconstructed secret must match: the owner's self-mask commitment
 * (AdvertiseKeys.self_commit) or, for a mask secret key, its public key. */
typedef struct {
    const sa_server *sa;
    unsigned owner;
    const char *run_id;
    uint64_t round;
} check_ctx;

/* The shared secrets are scalars; the seed and the key are derived from them
 * (fp_vss_derive, as the worker does). */
static int check_self(const uint8_t secret[32], const void *ctx)
{
    const check_ctx *c = ctx;
    uint8_t seed[32], h[32];
    fp_vss_derive(seed, secret, "self-mask");
    int rc = fp_secagg_self_commit(h, seed, c->sa->m[c->owner].id, c->run_id, c->round);
    sodium_memzero(seed, sizeof seed);
    if (rc < 0)
        return -1;
    return sodium_memcmp(h, c->sa->m[c->owner].self_commit, 32) == 0 ? 0 : -1;
}

static int check_key(const uint8_t secret[32], const void *ctx)
{
    const check_ctx *c = ctx;
    uint8_t sk[32], pk[32];
    fp_vss_derive(sk, secret, "mask-key");
    int rc = crypto_scalarmult_base(pk, sk);
    sodium_memzero(sk, sizeof sk);
    if (rc != 0)
        return -1;
    return memcmp(pk, c->sa->m[c->owner].mask_pk, 32) == 0 ? 0 : -1;
}

/* "a, b, c": the ids of the k holders (for a log line). */
static void holder_list(const sa_server *sa, const int *holder, size_t k, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t j = 0; j < k && len + 1 < cap; j++) {
        int w = snprintf(buf + len, cap - len, "%s%s", j ? ", " : "", sa->m[holder[j]].id);
        len += w > 0 ? (size_t)w : 0;
    }
}

/* The owner's secret (self-mask seed, or mask key when `key`) from the shares
 * its holders revealed, checked (secagg_recon.h). A holder whose share is
 * inconsistent is named and its shares are ignored from then on. */
static int combine(rounds *r, const uint8_t *sh, const uint8_t *has, unsigned owner, int key,
                   uint8_t out[32])
{
    sa_server *sa = r->sa;
    const sa_member *o = &sa->m[owner];
    uint8_t (*rows)[32] = sodium_malloc(sa->slots * 32);
    uint32_t *xs = malloc(sa->slots * sizeof *xs);
    uint8_t *bad = calloc(sa->slots, 1);
    int *holder = malloc(sa->slots * sizeof *holder);
    const char *what = key ? "mask key" : "self-mask seed";
    if (!rows || !xs || !bad || !holder) {
        if (rows)
            sodium_free(rows);
        free(xs), free(bad), free(holder);
        return fp_error_set("out of memory");
    }
    size_t k = 0;
    for (unsigned s = 0; s < o->n_hold; s++) {
        unsigned h = o->hold[s];
        size_t at = (size_t)owner * sa->slots + s;
        if (has[at] && !sa->m[h].bad_holder) {
            memcpy(rows[k], sh + at * 32, 32);
            holder[k] = (int)h;
            xs[k++] = (uint32_t)sa->m[h].rank + 1;
        }
    }
    check_ctx c = {sa, owner, r->run_id, r->round};
    int rc = sa_recon((const uint8_t (*)[32])rows, xs, k, sa->t, key ? check_key : check_self,
                      &c, out, bad);
    sodium_free(rows);
    free(xs);
    char ids[512];
    holder_list(sa, holder, k, ids, sizeof ids);
    if (rc < 0)
        free(bad), free(holder);
    if (rc < 0 && k == sa->t)
        return fp_error_set("the %s of %s, from exactly t = %u shares (of %s), fails its "
                            "check: one of them sent a bad share", what, sa->m[owner].id,
                            sa->t, ids);
    if (rc < 0) {
        char why[256];      /* fp_error_set must not read its own buffer */
        snprintf(why, sizeof why, "%s", fp_error_get());
        return fp_error_set("the %s of %s: %s (of %s; %s committed to another secret, or more "
                            "than %d are bad)", what, sa->m[owner].id, why, ids,
                            sa->m[owner].id, SA_RECON_MAX_BAD);
    }
    for (size_t j = 0; j < k; j++)
        if (bad[j]) {
            sa->m[holder[j]].bad_holder = 1;
            clog_error("round %llu: secagg: %s revealed a bad share of the %s of %s; its shares "
                       "are ignored", (unsigned long long)r->round, sa->m[holder[j]].id, what,
                       sa->m[owner].id);
        }
    free(bad), free(holder);
    return 0;
}

/* The unmasked sum must be one that n_u3 honest inputs can make
 * (fp_secagg_check_sum): each coordinate within n_u3 clip ranges, and its L2
 * norm within the survivors' weight W times the bound on one update ([dp]
 * clip_norm, else [strategy] max_update_norm or its automatic value), plus
 * the noise of distributed DP. An input of any uint32 words (a hostile
 * worker) that lands outside is caught here. */
static int check_bounds(const rounds *r, double W)
{
    const sa_server *sa = r->sa;
    const coord_config *c = r->cfg;
    double each = rounds_update_bound(r, sa->n_params);
    if (c->dp && (each <= 0 || c->dp_clip_norm < each))
        each = c->dp_clip_norm;
    double l2 = each > 0 ? each * W : 0;
    if (l2 > 0 && c->dp && c->dp_mode == COORD_DP_DISTRIBUTED) {
        double sc = c->dp_noise_multiplier * c->dp_clip_norm;
        l2 += 1.1 * sc * sqrt((double)sa->n_params * sa->n_u3 / sa->n) + 10 * sc;
    }
    size_t bad;
    if (fp_secagg_check_sum(sa->sum, sa->n_params, sa->n_u3, sa->clip, sa->frac_bits,
                            l2 / sa->n_u3, &bad) < 0)
        return fp_error_prefix("the unmasked sum is impossible for %u honest inputs: ", sa->n_u3);
    return 0;
}

/* Removes the masks of members fin_next.. for up to budget_ms, so that a
 * round of hundreds of members does not stop the event loop (heartbeats
 * keep being answered): for each member one secret, the self-mask seed of a
 * survivor or the mask key of one dropped after sharing (sa_end_upload's
 * disjoint lists), derived from the reconstructed scalar as the worker
 * derived it. A dropped member's pairwise masks are with its surviving
 * neighbours. 1 when every member is done, 0 for more, -1 on error. */
static int unmask_some(rounds *r, int64_t budget_ms)
{
    sa_server *sa = r->sa;
    uint8_t *secret = sodium_malloc(64);   /* the scalar | what it stands for */
    fp_secagg_peer *surv = calloc(sa->slots, sizeof *surv);
    int64_t until = clog_now_ms() + budget_ms;
    int rc = -1;
    if (!secret || !surv) {
        fp_error_set("out of memory");
        goto out;
    }
    for (; sa->fin_next < sa->n && clog_now_ms() < until; sa->fin_next++) {
        unsigned i = sa->fin_next;
        const sa_member *o = &sa->m[i];
        if (o->survived) {
            if (combine(r, sa->self_sh, sa->self_has, i, 0, secret) < 0)
                goto out;
            fp_vss_derive(secret + 32, secret, "self-mask");
            if (fp_secagg_unmask_self(sa->sum, sa->n_params, 0, secret + 32, r->round) < 0)
                goto out;
        } else if (o->shared) {
            size_t ns = 0;
            for (unsigned s = 0; s < o->n_hold; s++) {
                const sa_member *v = &sa->m[o->hold[s]];
                if (o->hold[s] == i || !v->survived)
                    continue;
                surv[ns].id = v->id;
                memcpy(surv[ns++].pk, v->mask_pk, 32);
            }
            if (combine(r, sa->key_sh, sa->key_has, i, 1, secret) < 0)
                goto out;
            fp_vss_derive(secret + 32, secret, "mask-key");
            if (fp_secagg_unmask_dropped(sa->sum, sa->n_params, 0, o->id, secret + 32, surv, ns,
                                         r->run_id, r->round) < 0)
                goto out;
        }
    }
    rc = sa->fin_next == sa->n;
out:
    if (secret)
        sodium_free(secret);
    free(surv);
    return rc;
}

/* Test builds: the dequantized sum and who is in it ("W <weight>" then one
 * survivor id a line), what the soak and the exactness tests recompute. */
static void dump_members(const rounds *r, const float *x, double W)
{
    const sa_server *sa = r->sa;
    rounds_dump(r, "sum.f32", x, sa->n_params * sizeof *x);
    size_t cap = 64 + (size_t)sa->n * (WIRE_MAX_ID + 2), len;
    char *text = malloc(cap);
    if (!text)
        return;
    len = (size_t)snprintf(text, cap, "W %.17g\n", W);
    for (unsigned i = 0; i < sa->n; i++)
        if (sa->m[i].survived)
            len += (size_t)snprintf(text + len, cap - len, "%s\n", sa->m[i].id);
    rounds_dump(r, "members.txt", text, len);
    free(text);
}

/* The unmasked sum: checked, dequantized, FedAvg (strategy gets sum / W
 * with weight W). */
static int finalize_sum(rounds *r)
{
    sa_server *sa = r->sa;
    double W = 0;
    for (unsigned i = 0; i < sa->n; i++)   /* sum p w Delta / sum p (agg_fedbuff.h) */
        if (sa->m[i].survived)
            W += sa->m[i].share;
    if (check_bounds(r, W) < 0)
        return -1;
    float *x = r->staging;
    fp_secagg_dequantize_sum(x, sa->sum, sa->n_params, sa->frac_bits);
    if (r->dump_dir)
        dump_members(r, x, W);
    /* Central DP: under DP every member weighs 1, so x is the clipped sum over
     * the sampled count and one member moves it by C / sampled_weight; the
     * noise is sigma times that (the release then divides as x does). */
    if (r->cfg->dp && r->cfg->dp_mode == COORD_DP_CENTRAL &&
        fp_dp_add_noise(r->noise, x, sa->n_params, r->cfg->dp_noise_multiplier,
                        r->cfg->dp_clip_norm / (r->sampled_weight > 0 ? r->sampled_weight
                                                                       : 1.0)) < 0)
        return -1;
    for (size_t i = 0; i < sa->n_params; i++)
        x[i] = (float)((double)x[i] / W);
    return strategy_add(r->strat, x, W);
}

sa_verdict sa_tick(rounds *r, int64_t now, char *reason, size_t cap)
{
    sa_server *sa = r->sa;
    switch (sa->phase) {
    case SA_KEYS:
        if (!phase_settled(r, keys_or_out, is_all) && now < sa->sub_deadline)
            return SA_GOING;
        if (sa->n_u1 < sa->t) {
            snprintf(reason, cap, "secure aggregation: %u workers advertised keys, below "
                 "the threshold t = %u", sa->n_u1, sa->t);
            return SA_FAILED;
        }
        if (build_graph(r) < 0) {
            snprintf(reason, cap, "secure aggregation: %s", fp_error_get());
            return SA_FAILED;
        }
        send_peer_keys(r, -1);
        clog_info("round %llu: secagg: %u workers advertised keys (U1); %s, %zu holders of "
                  "each secret, t = %u", (unsigned long long)r->round, sa->n_u1,
                  sa->degree + 1 == sa->n_u1 ? "the complete graph" : "a SecAgg+ graph",
                  sa->slots, sa->t);
        sa->phase = SA_SHARES;
        sa->sub_deadline = now + phase_ms(r, sa->n_u1);
        return SA_GOING;
    case SA_SHARES:
        if (sa->n_u2 < sa->n_u1 && !phase_settled(r, shared_or_out, has_keys) &&
            now < sa->sub_deadline)
            return SA_GOING;
        if (sa->n_u2 < sa->t) {
            snprintf(reason, cap, "secure aggregation: %u workers shared their keys, below "
                 "the threshold t = %u", sa->n_u2, sa->t);
            return SA_FAILED;
        }
        enter_upload(r, now);
        return SA_GOING;
    case SA_UPLOAD:
        return SA_UPLOADING;
    case SA_CONSIST:
        if (sa->n_u4 < sa->n_u3 && !phase_settled(r, signed_or_out, is_survivor) &&
            now < sa->sub_deadline)
            return SA_GOING;
        return start_unmask(r, now, reason, cap);
    case SA_UNMASK:
        if (!sa->unmasking) {
            if (sa->n_resp < sa->n_u4 && !phase_settled(r, responded_or_out, has_signed) &&
                now < sa->sub_deadline)
                return SA_GOING;
            if (sa->n_resp < sa->t) {
                snprintf(reason, cap, "secure aggregation: %u survivors sent their shares, "
                         "below the threshold t = %u", sa->n_resp, sa->t);
                return SA_FAILED;
            }
            sa->unmasking = 1;      /* from now on no share is taken (sa_on_unmask) */
            sa->fin_next = 0;
        }
        int st = unmask_some(r, 50);
        if (st == 0)
            return SA_GOING;
        if (st < 0 || finalize_sum(r) < 0) {
            clog_error("round %llu: secure aggregation failed: %s", (unsigned long long)r->round,
                       fp_error_get());
            snprintf(reason, cap, "secure aggregation (%u of %u shares' holders answered): %s",
                     sa->n_resp, sa->n_u3, fp_error_get());
            return SA_FAILED;
        }
        return SA_SUM_READY;
    }
    return SA_GOING;
}

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
#include "rounds_state.h"
#include "secagg.h"
#include "shamir.h"
#include "wire_secagg.h"

#define SH WIRE_SEALED_SHARE_BYTES

typedef struct {
    int w, x;                       /* server index; Shamir x (rank in U1, 1-based) */
    char id[WIRE_MAX_ID];
    uint8_t enc_pk[32], mask_pk[32];
    int keys, shared, survived, responded;
    double weight;
} sa_member;

struct sa_server {
    int phase;
    unsigned n, t, frac_bits;
    float clip;
    size_t n_params;
    sa_member *m;
    char **peer_ids;
    uint8_t *inbox, *inbox_has;     /* [recipient * n + sender] sealed shares */
    uint8_t *self_sh, *key_sh;      /* [owner * n + holder] revealed shares */
    uint8_t *self_has, *key_has;
    uint32_t *sum;
    unsigned n_u1, n_u2, n_u3, n_resp;
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

static int member_of(const sa_server *sa, int w)
{
    for (unsigned i = 0; i < sa->n; i++)
        if (sa->m[i].w == w)
            return (int)i;
    return -1;
}

static int member_by_id(const sa_server *sa, const char *id)
{
    for (unsigned i = 0; i < sa->n; i++)
        if (strcmp(sa->m[i].id, id) == 0)
            return (int)i;
    return -1;
}

int sa_in_u2(const sa_server *sa, int w)
{
    int i = member_of(sa, w);
    return i >= 0 && sa->m[i].shared;
}

sa_server *sa_new(rounds *r, const int *chosen, int k)
{
    const coord_config *c = r->cfg;
    unsigned t = sa_threshold(c->secagg_threshold, (unsigned)k);
    if (k > WIRE_MAX_PEERS) {
        fp_error_set("secure aggregation over %d workers: at most %d per round (lower "
                     "[sampling] max_workers)", k, WIRE_MAX_PEERS);
        return NULL;
    }
    if ((unsigned)k < t) {
        fp_error_set("secure aggregation needs at least t = %u sampled workers, %d were "
                     "sampled (set [secagg] enabled = false to aggregate in the clear)", t, k);
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
    sa->clip = c->secagg_clip;
    sa->frac_bits = (unsigned)c->secagg_frac_bits;
    sa->n_params = np;
    sa->m = calloc(n, sizeof *sa->m);
    sa->peer_ids = calloc(n, sizeof *sa->peer_ids);
    sa->inbox = malloc(n * n * SH);
    sa->inbox_has = calloc(n * n, 1);
    sa->self_sh = sodium_malloc(n * n * 32);
    sa->key_sh = sodium_malloc(n * n * 32);
    sa->self_has = calloc(n * n, 1);
    sa->key_has = calloc(n * n, 1);
    sa->sum = calloc(np, sizeof *sa->sum);
    if (!sa->m || !sa->peer_ids || !sa->inbox || !sa->inbox_has || !sa->self_sh || !sa->key_sh ||
        !sa->self_has || !sa->key_has || !sa->sum)
        goto oom;
    double total = 0;
    for (int i = 0; i < k; i++) {
        const worker_info *wi = server_worker(r->srv, chosen[i]);
        sa->m[i].w = chosen[i];
        snprintf(sa->m[i].id, sizeof sa->m[i].id, "%s", wi->id);
        sa->peer_ids[i] = sa->m[i].id;
        sa->m[i].weight = rounds_weight(r, sa->m[i].w, wi->n_examples);
        total += sa->m[i].weight;
    }
    for (int i = 0; i < k; i++)
        sa->m[i].weight /= total;
    sa->phase = SA_KEYS;
    double sub = r->cfg->deadline_s * 0.25;
    sa->sub_deadline = clog_now_ms() + (int64_t)((sub < 2.0 ? 2.0 : sub) * 1000.0);
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
    free(sa->inbox);
    free(sa->inbox_has);
    sodium_free(sa->self_sh);   /* wipes */
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

void sa_on_advertise(rounds *r, int w, const Fedpeft__AdvertiseKeys *m)
{
    if (!r->sa)
        return;
    int i = check_msg(r, w, m->task_id, m->round, SA_KEYS, "AdvertiseKeys");
    if (i < 0)
        return;
    sa_member *me = &r->sa->m[i];
    if (me->keys) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, FEDPEFT__REJECT__CODE__STALE,
                      "duplicate AdvertiseKeys for round %llu", (unsigned long long)r->round);
        return;
    }
    memcpy(me->enc_pk, m->enc_pk.data, 32);
    memcpy(me->mask_pk, m->mask_pk.data, 32);
    me->keys = 1;
    r->sa->n_u1++;
}

void sa_on_shares(rounds *r, int w, const Fedpeft__ShareKeys *m)
{
    sa_server *sa = r->sa;
    if (!sa)
        return;
    int i = check_msg(r, w, m->task_id, m->round, SA_SHARES, "ShareKeys");
    if (i < 0)
        return;
    if (!sa->m[i].keys || sa->m[i].shared) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, FEDPEFT__REJECT__CODE__STALE,
                      "ShareKeys %s", sa->m[i].shared ? "sent twice" : "without keys in U1");
        return;
    }
    /* One share for every other member of U1, each exactly once. */
    uint8_t seen[WIRE_MAX_PEERS] = {0};
    size_t need = sa->n_u1 - 1;
    for (size_t k = 0; k < m->n_shares; k++) {
        int to = member_by_id(sa, m->shares[k]->worker_id);
        if (to < 0 || to == i || !sa->m[to].keys || seen[to]) {
            server_reject(r->srv, w, NULL, REJ_INVALID, FEDPEFT__REJECT__CODE__BAD_MESSAGE,
                          "ShareKeys: share for '%s' (not a peer in U1, or twice)",
                          m->shares[k]->worker_id);
            return;
        }
        seen[to] = 1;
    }
    if (m->n_shares != need) {
        server_reject(r->srv, w, NULL, REJ_INVALID, FEDPEFT__REJECT__CODE__BAD_MESSAGE,
                      "ShareKeys holds %zu shares; U1 has %zu other members", m->n_shares, need);
        return;
    }
    for (size_t k = 0; k < m->n_shares; k++) {
        int to = member_by_id(sa, m->shares[k]->worker_id);
        memcpy(sa->inbox + ((size_t)to * sa->n + (size_t)i) * SH, m->shares[k]->sealed.data, SH);
        sa->inbox_has[(size_t)to * sa->n + (size_t)i] = 1;
    }
    sa->m[i].shared = 1;
    sa->n_u2++;
}

void sa_add_input(sa_server *sa, const uint32_t *y, size_t n)
{
    fp_secagg_sum_add(sa->sum, y, n);
}

static void send_peer_keys(rounds *r)
{
    sa_server *sa = r->sa;
    Fedpeft__PeerKey *keys = calloc(sa->n, sizeof *keys);
    Fedpeft__PeerKey **ptrs = calloc(sa->n, sizeof *ptrs);
    if (!keys || !ptrs)
        goto out;
    size_t k = 0;
    for (unsigned i = 0; i < sa->n; i++) {
        if (!sa->m[i].keys)
            continue;
        sa->m[i].x = (int)k + 1;
        fedpeft__peer_key__init(&keys[k]);
        keys[k].worker_id = sa->m[i].id;
        keys[k].enc_pk = (ProtobufCBinaryData){32, sa->m[i].enc_pk};
        keys[k].mask_pk = (ProtobufCBinaryData){32, sa->m[i].mask_pk};
        ptrs[k] = &keys[k];
        k++;
    }
    Fedpeft__PeerKeys pk = FEDPEFT__PEER_KEYS__INIT;
    pk.task_id = rounds_task_id(r, r->round, TASK_TRAIN);
    pk.round = r->round;
    pk.n_peers = k;
    pk.peers = ptrs;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_PEER_KEYS;
    env.peer_keys = &pk;
    for (unsigned i = 0; i < sa->n; i++)
        if (sa->m[i].keys)
            (void)server_send(r->srv, sa->m[i].w, &env);
out:
    free(keys);
    free(ptrs);
}

/* Each member of U2 gets the shares the other members of U2 sealed for it. */
static void route_shares(rounds *r)
{
    sa_server *sa = r->sa;
    Fedpeft__EncryptedShare *e = calloc(sa->n, sizeof *e);
    Fedpeft__EncryptedShare **ptrs = calloc(sa->n, sizeof *ptrs);
    if (!e || !ptrs)
        goto out;
    for (unsigned v = 0; v < sa->n; v++) {
        if (!sa->m[v].shared)
            continue;
        size_t k = 0;
        for (unsigned u = 0; u < sa->n; u++) {
            if (u == v || !sa->m[u].shared || !sa->inbox_has[(size_t)v * sa->n + u])
                continue;
            fedpeft__encrypted_share__init(&e[k]);
            e[k].worker_id = sa->m[u].id;
            e[k].sealed = (ProtobufCBinaryData){SH, sa->inbox + ((size_t)v * sa->n + u) * SH};
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

static int is_all(const sa_member *m) { (void)m; return 1; }
static int has_keys(const sa_member *m) { return m->keys; }
static int has_shared(const sa_member *m) { return m->shared; }
static int is_survivor(const sa_member *m) { return m->survived; }
static int has_responded(const sa_member *m) { return m->responded; }

static void enter_upload(rounds *r, int64_t now)
{
    sa_server *sa = r->sa;
    route_shares(r);
    sa->phase = SA_UPLOAD;
    r->n_targets = sa->n_u2;
    for (unsigned i = 0; i < sa->n; i++)
        if (!sa->m[i].shared)
            r->status[sa->m[i].w] = ST_NONE;     /* out of the round */
    clog_info("round %llu: secagg: %u of %u workers shared their keys (U2, t = %u); "
              "waiting for masked inputs", (unsigned long long)r->round, sa->n_u2, sa->n, sa->t);
    (void)now;
}

sa_verdict sa_start_unmask(rounds *r, int64_t now, const char *why, char *reason, size_t cap)
{
    sa_server *sa = r->sa;
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
    char **surv = calloc(sa->n, sizeof *surv), **drop = calloc(sa->n, sizeof *drop);
    if (!surv || !drop) {
        free(surv);
        free(drop);
        snprintf(reason, cap, "out of memory");
        return SA_FAILED;
    }
    size_t ns = 0, nd = 0;
    for (unsigned i = 0; i < sa->n; i++) {
        if (sa->m[i].survived)
            surv[ns++] = sa->m[i].id;
        else if (sa->m[i].shared)
            drop[nd++] = sa->m[i].id;
    }
    Fedpeft__UnmaskRequest u = FEDPEFT__UNMASK_REQUEST__INIT;
    u.task_id = rounds_task_id(r, r->round, TASK_TRAIN);
    u.round = r->round;
    u.n_survivors = ns;
    u.survivors = surv;
    u.n_dropped = nd;
    u.dropped = drop;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UNMASK_REQUEST;
    env.unmask_request = &u;
    for (unsigned i = 0; i < sa->n; i++)
        if (sa->m[i].survived)
            (void)server_send(r->srv, sa->m[i].w, &env);
    free(surv);
    free(drop);
    sa->phase = SA_UNMASK;
    sa->n_resp = 0;
    sa->sub_deadline = r->deadline_ms > now + 2000 ? r->deadline_ms : now + 2000;
    clog_info("round %llu: secagg: %u masked inputs (%s), %zu dropped after sharing; asking "
              "the survivors for their shares", (unsigned long long)r->round, sa->n_u3, why, nd);
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
    if (!sa->m[h].survived || sa->m[h].responded) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, FEDPEFT__REJECT__CODE__STALE,
                      "UnmaskResponse %s", sa->m[h].responded ? "sent twice" : "from a non-survivor");
        return;
    }
    /* Store only what was asked: self shares of survivors, key shares of the dropped. */
    for (size_t k = 0; k < m->n_self_shares; k++) {
        int v = member_by_id(sa, m->self_shares[k]->worker_id);
        if (v >= 0 && sa->m[v].survived) {
            memcpy(sa->self_sh + ((size_t)v * sa->n + (size_t)h) * 32,
                   m->self_shares[k]->share.data, 32);
            sa->self_has[(size_t)v * sa->n + (size_t)h] = 1;
        }
    }
    for (size_t k = 0; k < m->n_key_shares; k++) {
        int d = member_by_id(sa, m->key_shares[k]->worker_id);
        if (d >= 0 && sa->m[d].shared && !sa->m[d].survived) {
            memcpy(sa->key_sh + ((size_t)d * sa->n + (size_t)h) * 32,
                   m->key_shares[k]->share.data, 32);
            sa->key_has[(size_t)d * sa->n + (size_t)h] = 1;
        }
    }
    sa->m[h].responded = 1;
    sa->n_resp++;
}

/* Interpolates owner's secret from the shares its holders revealed. */
static int combine(const sa_server *sa, const uint8_t *sh, const uint8_t *has, unsigned owner,
                   uint8_t out[32])
{
    uint8_t (*rows)[32] = sodium_malloc((size_t)sa->n * 32);
    uint8_t xs[WIRE_MAX_PEERS];
    if (!rows)
        return fp_error_set("out of memory");
    size_t k = 0;
    for (unsigned h = 0; h < sa->n; h++)
        if (has[(size_t)owner * sa->n + h]) {
            memcpy(rows[k], sh + ((size_t)owner * sa->n + h) * 32, 32);
            xs[k++] = (uint8_t)sa->m[h].x;
        }
    int rc = fp_shamir_combine((const uint8_t (*)[32])rows, xs, k, sa->t, out);
    sodium_free(rows);
    if (rc < 0)
        return fp_error_prefix("%s: %zu shares: ", sa->m[owner].id, k);
    return 0;
}

static void dump_sum(const rounds *r, const float *x, size_t n)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/coord-round-%llu-sum.f32", r->dump_dir,
             (unsigned long long)r->round);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(x, sizeof *x, n, f);
        fclose(f);
    }
}

/* Unmasks the sum, dequantizes it, FedAvg: strategy gets sum / W with weight W. */
static int finalize(rounds *r, int64_t now)
{
    sa_server *sa = r->sa;
    uint8_t *secret = sodium_malloc(32);
    fp_secagg_peer *surv = calloc(sa->n, sizeof *surv);
    int rc = -1;
    if (!secret || !surv) {
        fp_error_set("out of memory");
        goto out;
    }
    size_t ns = 0;
    double W = 0;
    for (unsigned i = 0; i < sa->n; i++)
        if (sa->m[i].survived) {
            surv[ns].id = sa->m[i].id;
            memcpy(surv[ns++].pk, sa->m[i].mask_pk, 32);
            W += sa->m[i].weight;
        }
    for (unsigned i = 0; i < sa->n; i++) {
        if (sa->m[i].survived) {
            if (combine(sa, sa->self_sh, sa->self_has, i, secret) < 0 ||
                fp_secagg_unmask_self(sa->sum, sa->n_params, 0, secret, r->round) < 0)
                goto out;
        } else if (sa->m[i].shared) {
            if (combine(sa, sa->key_sh, sa->key_has, i, secret) < 0 ||
                fp_secagg_unmask_dropped(sa->sum, sa->n_params, 0, sa->m[i].id, secret, surv,
                                         ns, r->run_id, r->round) < 0)
                goto out;
        }
    }
    float *x = r->staging;
    fp_secagg_dequantize_sum(x, sa->sum, sa->n_params, sa->frac_bits);
    if (r->dump_dir)
        dump_sum(r, x, sa->n_params);
    if (r->cfg->dp && r->cfg->dp_mode == COORD_DP_CENTRAL &&
        fp_dp_add_noise(r->noise, x, sa->n_params, r->cfg->dp_noise_multiplier,
                        r->cfg->dp_clip_norm) < 0)
        goto out;
    for (size_t i = 0; i < sa->n_params; i++)
        x[i] = (float)((double)x[i] / W);
    if (strategy_add(r->strat, x, W) < 0)
        goto out;
    rc = 0;
out:
    sodium_free(secret);
    free(surv);
    (void)now;
    return rc;
}

sa_verdict sa_tick(rounds *r, int64_t now, char *reason, size_t cap)
{
    sa_server *sa = r->sa;
    switch (sa->phase) {
    case SA_KEYS:
        if (sa->n_u1 < sa->n && !phase_settled(r, has_keys, is_all) && now < sa->sub_deadline)
            return SA_GOING;
        if (sa->n_u1 < sa->t) {
            snprintf(reason, cap, "secure aggregation: %u workers advertised keys, below "
                 "the threshold t = %u", sa->n_u1, sa->t);
            return SA_FAILED;
        }
        send_peer_keys(r);
        sa->phase = SA_SHARES;
        sa->sub_deadline = now + (sa->sub_deadline - r->phase_start_ms);
        return SA_GOING;
    case SA_SHARES:
        if (sa->n_u2 < sa->n_u1 && !phase_settled(r, has_shared, has_keys) &&
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
    case SA_UNMASK:
        if (sa->n_resp < sa->n_u3 && !phase_settled(r, has_responded, is_survivor) &&
            now < sa->sub_deadline)
            return SA_GOING;
        if (sa->n_resp < sa->t) {
            snprintf(reason, cap, "secure aggregation: %u survivors sent their shares, below "
                 "the threshold t = %u", sa->n_resp, sa->t);
            return SA_FAILED;
        }
        if (finalize(r, now) < 0) {
            clog_error("round %llu: secure aggregation failed: %s", (unsigned long long)r->round,
                       fp_error_get());
            snprintf(reason, cap, "secure aggregation could not unmask the sum (%u of %u)",
                     sa->n_resp, sa->n_u3);
            return SA_FAILED;
        }
        return SA_SUM_READY;
    }
    return SA_GOING;
}

/* make_seeds.c - writes the generated seeds of tests/fuzz/corpus/: real
 * frames encoded by the project's own wire layer (wire_send and its builders,
 * captured from an inproc ZeroMQ PAIR), the fuzz_wire_asm and
 * fuzz_wire_secagg framings of them, and the tiny byte-level tokenizer.json.
 * Hand-written seeds (config.json, INI, data records, key files made by
 * `fedpeft keygen`) are committed as they are.
 *
 * usage: make_seeds CORPUS_DIR   (the corpus/<name>/ folders must exist) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "fuzz_util.h"
#include "wire.h"
#include "wire_secagg.h"

static const char *dir;
static void *tx, *rx;

static void put(const char *sub, const char *name, const void *d, size_t n)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/%s", dir, sub, name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0) {
        perror(p);
        exit(1);
    }
}

/* The frame the last send put on the wire. */
static size_t take(uint8_t *buf, size_t cap)
{
    int n = zmq_recv(rx, buf, cap, 0);
    if (n < 0 || (size_t)n > cap) {
        fprintf(stderr, "make_seeds: recv: %s\n", zmq_strerror(zmq_errno()));
        exit(1);
    }
    return (size_t)n;
}

static uint8_t frame[1 << 16];

static void send_env(const char *name, Fedpeft__Envelope *env)
{
    if (wire_send(tx, NULL, env) != 0) {
        fprintf(stderr, "make_seeds: %s: %s\n", name, fp_error_get());
        exit(1);
    }
    size_t n = take(frame, sizeof frame);
    put("wire", name, frame, n);
}

static void le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void chunks(void)
{
    /* fuzz_wire_asm: header (n, n_chunks as announced, task) + framed chunks. */
    float slab[40];
    for (int i = 0; i < 40; i++)
        slab[i] = (float)i * 0.25f - 3.0f;
    static uint8_t out[1 << 16];
    size_t len = 12;
    le32(out, 40), le32(out + 4, 0), le32(out + 8, 7);
    if (wire_send_slab(tx, NULL, 7, slab, 40) != 0)
        exit(1);
    size_t n = take(frame, sizeof frame);
    put("wire", "chunk", frame, n);
    le32(out + len, (uint32_t)n), memcpy(out + len + 4, frame, n), len += 4 + n;
    put("wire_asm", "one_chunk", out, len);
    /* a second chunk: one too many */
    le32(out + len, (uint32_t)n), memcpy(out + len + 4, frame, n), len += 4 + n;
    put("wire_asm", "extra_chunk", out, len);
}

/* sel: the body's index in fuzz_wire_secagg.c's table. */
static void secagg(const char *name, uint8_t sel, Fedpeft__Envelope__BodyCase body, void *msg)
{
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = body;
    env.sealed_chunk = msg;
    send_env(name, &env);
    /* fuzz_wire_secagg: selector byte (its index in that harness's table) + body. */
    static uint8_t out[1 << 16];
    out[0] = sel;
    size_t n = protobuf_c_message_pack(msg, out + 1);
    put("wire_secagg", name, out, n + 1);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds CORPUS_DIR\n");
        return 2;
    }
    dir = argv[1];
    void *ctx = zmq_ctx_new();
    tx = zmq_socket(ctx, ZMQ_PAIR), rx = zmq_socket(ctx, ZMQ_PAIR);
    if (zmq_bind(rx, "inproc://seeds") != 0 || zmq_connect(tx, "inproc://seeds") != 0)
        return 1;
    static const char hash[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    if (wire_send_hello(tx, "w01", hash, 120, 4096) != 0) return 1;
    put("wire", "hello", frame, take(frame, sizeof frame));
    if (wire_send_reject(tx, NULL, FEDPEFT__REJECT__CODE__MODEL, "model hash differs") != 0) return 1;
    put("wire", "reject", frame, take(frame, sizeof frame));
    if (wire_send_heartbeat(tx, NULL, 3, 1) != 0) return 1;
    put("wire", "heartbeat", frame, take(frame, sizeof frame));
    if (wire_send_pull(tx, NULL, 9) != 0) return 1;
    put("wire", "pull", frame, take(frame, sizeof frame));

    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__LoraSpec ls = FEDPEFT__LORA_SPEC__INIT;
    ls.rank = 4, ls.alpha = 8, ls.targets = 0x7f, ls.n_params = 3584;
    Fedpeft__Welcome w = FEDPEFT__WELCOME__INIT;
    w.run_id = "run-1", w.lora = &ls, w.heartbeat_ms = 1000;
    env.body_case = FEDPEFT__ENVELOPE__BODY_WELCOME, env.welcome = &w;
    send_env("welcome", &env);

    Fedpeft__TrainParams tp = FEDPEFT__TRAIN_PARAMS__INIT;
    tp.local_steps = 5, tp.batch = 4, tp.seq = 32, tp.lr = 1e-3f, tp.max_grad_norm = 1, tp.seed = 42;
    Fedpeft__SecAggParams sp = FEDPEFT__SEC_AGG_PARAMS__INIT;
    sp.threshold = 2, sp.clip = 1, sp.frac_bits = 22, sp.weight = 0.5;
    Fedpeft__DpParams dp = FEDPEFT__DP_PARAMS__INIT;
    dp.clip_norm = 1, dp.noise_multiplier = 1, dp.distributed = 1, dp.n_noise = 3;
    char *peers[] = {"w01", "w02", "w03"};
    uint32_t ranks[] = {4, 4};
    uint8_t pk[32] = {1, 2, 3};
    Fedpeft__Task t = FEDPEFT__TASK__INIT;
    t.kind = FEDPEFT__TASK__KIND__TRAIN, t.round = 2, t.task_id = 7, t.params = &tp;
    t.n_chunks = 1, t.deadline_unix_ms = 1700000000000ull;
    t.coordinator_pk = (ProtobufCBinaryData){32, pk};
    t.secagg = &sp, t.dp = &dp, t.n_peers = 3, t.peers = peers;
    t.fold_base = 1, t.n_fold_ranks = 2, t.fold_ranks = ranks;
    env.body_case = FEDPEFT__ENVELOPE__BODY_TASK, env.task = &t;
    send_env("task_train", &env);
    Fedpeft__Task te = FEDPEFT__TASK__INIT;
    te.kind = FEDPEFT__TASK__KIND__EVAL, te.round = 2, te.task_id = 8, te.n_chunks = 1;
    env.task = &te;
    send_env("task_eval", &env);
    Fedpeft__Task th = FEDPEFT__TASK__INIT;     /* async: a hold task, then its upload */
    th.kind = FEDPEFT__TASK__KIND__TRAIN, th.round = 3, th.task_id = 9, th.params = &tp;
    th.n_chunks = 1, th.coordinator_pk = (ProtobufCBinaryData){32, pk}, th.hold = 1;
    env.task = &th;
    send_env("task_hold", &env);
    Fedpeft__Task tu = FEDPEFT__TASK__INIT;
    tu.kind = FEDPEFT__TASK__KIND__TRAIN, tu.round = 4, tu.task_id = 10, tu.params = &tp;
    tu.coordinator_pk = (ProtobufCBinaryData){32, pk}, tu.from_update = 9;
    tu.secagg = &sp, tu.n_peers = 3, tu.peers = peers;
    env.task = &tu;
    send_env("task_from_update", &env);

    Fedpeft__UpdateReady ur = FEDPEFT__UPDATE_READY__INIT;
    ur.task_id = 7, ur.round = 2, ur.train_loss = 2.5f, ur.n_chunks = 1;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UPDATE_READY, env.update_ready = &ur;
    send_env("update_ready", &env);
    Fedpeft__EvalResult er = FEDPEFT__EVAL_RESULT__INIT;
    er.task_id = 8, er.loss = 2.25;
    env.body_case = FEDPEFT__ENVELOPE__BODY_EVAL_RESULT, env.eval_result = &er;
    send_env("eval_result", &env);

    chunks();

    uint8_t k1[32], k2[32], sealed[WIRE_SEALED_SHARE_BYTES], share[32], blob[24 + 16 + 64];
    uint8_t sig[64], sig2[64];
    memset(k1, 0x11, 32), memset(k2, 0x22, 32), memset(sealed, 0x33, sizeof sealed);
    memset(sig, 0x66, 64), memset(sig2, 0x77, 64);
    memset(share, 0x44, 32), memset(blob, 0x55, sizeof blob);
    Fedpeft__SealedChunk sc = FEDPEFT__SEALED_CHUNK__INIT;
    sc.task_id = 7, sc.round = 2, sc.index = 0, sc.n_chunks = 1, sc.data = (ProtobufCBinaryData){sizeof blob, blob};
    secagg("sealed_chunk", 0, FEDPEFT__ENVELOPE__BODY_SEALED_CHUNK, &sc);
    Fedpeft__AdvertiseKeys ak = FEDPEFT__ADVERTISE_KEYS__INIT;
    ak.task_id = 7, ak.round = 2, ak.enc_pk = (ProtobufCBinaryData){32, k1}, ak.mask_pk = (ProtobufCBinaryData){32, k2};
    ak.signature = (ProtobufCBinaryData){64, sig}, ak.self_commit = (ProtobufCBinaryData){32, k2};
    secagg("advertise_keys", 1, FEDPEFT__ENVELOPE__BODY_ADVERTISE_KEYS, &ak);
    Fedpeft__PeerKey p1 = FEDPEFT__PEER_KEY__INIT, p2 = FEDPEFT__PEER_KEY__INIT;
    p1.worker_id = "w01", p1.enc_pk = ak.enc_pk, p1.mask_pk = ak.mask_pk;
    p1.sign_pk = (ProtobufCBinaryData){32, k1}, p1.self_commit = (ProtobufCBinaryData){32, k2};
    p1.signature = (ProtobufCBinaryData){64, sig};
    p2 = p1, p2.worker_id = "w02", p2.signature = (ProtobufCBinaryData){64, sig2};
    Fedpeft__PeerKey *pks[] = {&p1, &p2};
    Fedpeft__PeerKeys pkm = FEDPEFT__PEER_KEYS__INIT;
    char *members[] = {"w01", "w02"};
    pkm.task_id = 7, pkm.round = 2, pkm.n_peers = 2, pkm.peers = pks;
    pkm.n_members = 2, pkm.members = members, pkm.degree = 1;
    pkm.graph_nonce = (ProtobufCBinaryData){32, share};
    secagg("peer_keys", 2, FEDPEFT__ENVELOPE__BODY_PEER_KEYS, &pkm);
    Fedpeft__EncryptedShare e1 = FEDPEFT__ENCRYPTED_SHARE__INIT;
    e1.worker_id = "w02", e1.sealed = (ProtobufCBinaryData){sizeof sealed, sealed};
    Fedpeft__EncryptedShare *es[] = {&e1};
    Fedpeft__ShareKeys sk = FEDPEFT__SHARE_KEYS__INIT;
    sk.task_id = 7, sk.round = 2, sk.n_shares = 1, sk.shares = es;
    secagg("share_keys", 3, FEDPEFT__ENVELOPE__BODY_SHARE_KEYS, &sk);
    char *surv[] = {"w01", "w02"}, *drop[] = {"w03"};
    Fedpeft__UnmaskRequest uq = FEDPEFT__UNMASK_REQUEST__INIT;
    uq.task_id = 7, uq.round = 2, uq.n_survivors = 2, uq.survivors = surv, uq.n_dropped = 1, uq.dropped = drop;
    secagg("unmask_request", 4, FEDPEFT__ENVELOPE__BODY_UNMASK_REQUEST, &uq);
    Fedpeft__RevealedShare r1 = FEDPEFT__REVEALED_SHARE__INIT, r2 = FEDPEFT__REVEALED_SHARE__INIT;
    r1.worker_id = "w02", r1.share = (ProtobufCBinaryData){32, share};
    r2 = r1, r2.worker_id = "w03";
    Fedpeft__RevealedShare *self[] = {&r1}, *keys[] = {&r2};
    Fedpeft__UnmaskResponse ux = FEDPEFT__UNMASK_RESPONSE__INIT;
    ux.task_id = 7, ux.round = 2, ux.n_self_shares = 1, ux.self_shares = self, ux.n_key_shares = 1, ux.key_shares = keys;
    secagg("unmask_response", 5, FEDPEFT__ENVELOPE__BODY_UNMASK_RESPONSE, &ux);

    /* The consistency round, and the signatures that prove it. */
    Fedpeft__ConsistencyCheck cc = FEDPEFT__CONSISTENCY_CHECK__INIT;
    cc.task_id = 7, cc.round = 2, cc.n_survivors = 2, cc.survivors = surv;
    secagg("consistency_check", 6, FEDPEFT__ENVELOPE__BODY_CONSISTENCY_CHECK, &cc);
    Fedpeft__ConsistencySig cs = FEDPEFT__CONSISTENCY_SIG__INIT;
    cs.task_id = 7, cs.round = 2, cs.signature = (ProtobufCBinaryData){64, sig};
    secagg("consistency_sig", 7, FEDPEFT__ENVELOPE__BODY_CONSISTENCY_SIG, &cs);
    Fedpeft__SurvivorSig s1 = FEDPEFT__SURVIVOR_SIG__INIT, s2 = FEDPEFT__SURVIVOR_SIG__INIT;
    s1.worker_id = "w01", s1.signature = (ProtobufCBinaryData){64, sig};
    s2.worker_id = "w02", s2.signature = (ProtobufCBinaryData){64, sig2};
    Fedpeft__SurvivorSig *sigs[] = {&s1, &s2};
    uq.n_signatures = 2, uq.signatures = sigs;
    secagg("unmask_request_signed", 4, FEDPEFT__ENVELOPE__BODY_UNMASK_REQUEST, &uq);
    Fedpeft__Hello hs = FEDPEFT__HELLO__INIT;
    hs.worker_id = "w01", hs.model_hash = (char *)hash, hs.n_train_examples = 120;
    hs.n_train_tokens = 4096, hs.sign_pk = (ProtobufCBinaryData){32, k1}, hs.secagg_task_id = 7;
    hs.session = 0x5e55105e55105e55ull, hs.attempt = 2;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HELLO, env.hello = &hs;
    send_env("hello_signed", &env);

    char *tok = fz_tiny_tokenizer_json();
    put("tokenizer", "bytelevel.json", tok, strlen(tok));
    free(tok);
    zmq_close(tx), zmq_close(rx);
    zmq_ctx_term(ctx);
    return 0;
}

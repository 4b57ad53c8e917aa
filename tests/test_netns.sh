#!/bin/bash
# test_netns.sh BUILD_DIR - the docker/compose.yaml topology without Docker: one network
# namespace per service (coordinator, worker 1..3) on a bridge in a switch namespace,
# the real programs started through docker/entrypoint.sh (keygen, prepare, coordinator,
# worker: shard claims, CURVE keys) with configs/docker-federation.ini.
#
#   run A  2 rounds over clean links: every sampled worker reports, exit 0, adapter.
#   run B  3 rounds with worker 3's link impaired (tc netem delay + loss; where the
#          kernel lacks sch_netem: a tbf rate limit + iptables random drop), and
#          worker 2's link cut (ip link set down) while it trains round 2: round 2
#          completes on quorum (reported < sampled, not abandoned) and the run ends.
#
# Needs root, iproute2 (ip netns, tc), util-linux (unshare); exit 77 (skipped)
# without root or network namespaces. Traffic stays inside the namespaces it
# creates (10.77.0.0/24); they and every process it started are removed on exit.
set -uo pipefail
BUILD=$(cd "${1:?usage: test_netns.sh BUILD_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
ENTRY=$SRC/docker/entrypoint.sh

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "ip (iproute2) not installed"
command -v unshare >/dev/null || skip "unshare (util-linux) not installed"

P=fp$$
SW=$P-sw
C=$P-c
NSS=()
PIDS=()
T=$(mktemp -d)
FAILED=0

cleanup() {
    local pid ns
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ "$FAILED" = 1 ]; then
        for f in "$T"/*/*.log; do
            [ -e "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }
        done
    fi
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { FAILED=1; echo "FAIL: $*" >&2; exit 1; }

ip netns add "$SW" 2>/dev/null || skip "cannot create a network namespace (ip netns add)"
NSS+=("$SW")
ip -n "$SW" link set lo up
ip -n "$SW" link add br0 type bridge || fail "cannot create a bridge in $SW"
ip -n "$SW" link set br0 up

# node NS ADDR PORT: a namespace whose eth0 (ADDR) is cabled to port PORT of br0.
node() {
    ip netns add "$1" || fail "ip netns add $1"
    NSS+=("$1")
    ip -n "$SW" link add "$3" type veth peer name eth0 netns "$1" || fail "veth for $1"
    ip -n "$SW" link set "$3" master br0 up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$1" link set lo up
}
node "$C" 10.77.0.1 p-c
for i in 1 2 3; do node "$P-w$i" "10.77.0.1$i" "p-w$i"; done

# What the compose services share through volumes: FEDPEFT_HOME here.
export PATH="$BUILD:$PATH" FEDPEFT_HOME=$T/home FEDPEFT_SHARE=$SRC FEDPEFT_WORKERS=3 \
       FEDPEFT_CONFIG=$SRC/configs/docker-federation.ini FEDPEFT_WAIT_S=30 OPENBLAS_NUM_THREADS=1
mkdir -p "$T/home" "$T/prep"
"$ENTRY" keygen >"$T/prep/keygen.log" 2>&1 || { FAILED=1; cat "$T/prep/keygen.log"; fail "entrypoint keygen"; }
"$ENTRY" prepare >"$T/prep/prepare.log" 2>&1 || { FAILED=1; cat "$T/prep/prepare.log"; fail "entrypoint prepare"; }
[ "$(grep -c . "$T/home/keys/allowlist")" = 3 ] || fail "the allowlist does not hold 3 worker keys"
MODEL=$T/home/prepared/model

# SLOW scales the time limits (never the assertions): 3 for a sanitizer build
# (ASan/UBSan run 2-3x slower) or FP_TEST_SLOW=1; FP_TEST_SLOW=N (N > 1) sets it.
SLOW=1
grep -q '^FEDPEFT_SANITIZE:BOOL=ON' "$BUILD/CMakeCache.txt" 2>/dev/null && SLOW=3
case "${FP_TEST_SLOW:-}" in
    '' | 0) ;;
    1) SLOW=3 ;;
    *[!0-9]*) SLOW=3 ;;
    *) [ "$FP_TEST_SLOW" -gt "$SLOW" ] && SLOW=$FP_TEST_SLOW ;;
esac

# Small rounds (2 cores), a 1 s heartbeat (SLOW s): a cut link is a dead worker after 3 s.
# (Workers heartbeat between training steps, and a step of 8 x 128 takes seconds on a
# slow, loaded machine.)
COORD_ARGS=(--model.path="$MODEL" --network.endpoint=tcp://10.77.0.1:5555
    --train.local_steps=30 --train.batch=8 --train.seq=128 --network.heartbeat_ms=$((1000 * SLOW))
    --round.deadline_s=$((60 * SLOW)) --round.eval_deadline_s=$((60 * SLOW))
    --round.min_quorum=2 --round.start_timeout_s=$((20 * SLOW)) --sampling.min_workers=3)
WORKER_ARGS=(--model.path="$MODEL" --worker.endpoint=tcp://10.77.0.1:5555
    --worker.connect_retries=60 --worker.retry_backoff_ms=200 --privacy.min_peers=2)

# wait_exit PID SECONDS: the exit status, or 124 after SECONDS.
wait_exit() {
    local t=0
    while kill -0 "$1" 2>/dev/null; do
        [ "$t" -ge $(($2 * 10)) ] && return 124
        sleep 0.1; t=$((t + 1))
    done
    wait "$1"
}

# field FILE ROUND KEY: KEY of ROUND's metrics line (one JSON object per line).
field() {
    grep "^{\"round\":$2," "$1" | tail -n1 | sed -n "s/.*\"$3\":\([^,}]*\).*/\1/p"
}

# start_run NAME ROUNDS: the coordinator and three workers; sets COORD_PID, W_PID[i].
declare -a W_PID
start_run() {
    mkdir -p "$T/$1"
    ip netns exec "$C" "$ENTRY" coordinator "${COORD_ARGS[@]}" --run.rounds="$2" \
        --run.state_dir="$T/$1/state" >"$T/$1/coordinator.log" 2>&1 &
    COORD_PID=$!
    PIDS+=("$COORD_PID")
    for i in 1 2 3; do
        # Each "container" has its own host name: the entrypoint claims a slot by it.
        ip netns exec "$P-w$i" unshare --uts sh -c 'hostname "$0"; exec "$@"' "node$i$P" \
            "$ENTRY" worker "${WORKER_ARGS[@]}" >"$T/$1/w$i.log" 2>&1 &
        W_PID[i]=$!
        PIDS+=("${W_PID[i]}")
    done
}

# finish_run NAME: the coordinator exits 0 within the time limit; workers exit.
finish_run() {
    local rc
    wait_exit "$COORD_PID" $((240 * SLOW)); rc=$?
    [ "$rc" = 0 ] || fail "run $1: coordinator exit status $rc"
    # Workers that heard the SHUTDOWN exit 0; a reconnecting one is stopped by cleanup.
    for i in 1 2 3; do wait_exit "${W_PID[i]}" 5 >/dev/null; done
    echo "run $1: done at ${SECONDS}s"
    [ -s "$T/$1/state/adapter/adapter_model.safetensors" ] || fail "run $1: no final adapter"
}

# --- run A: clean links ---------------------------------------------------------
start_run A 2
finish_run A
M=$T/A/state/metrics.jsonl
for r in 1 2; do
    s=$(field "$M" $r sampled); p=$(field "$M" $r reported); a=$(field "$M" $r abandoned)
    echo "run A round $r: reported $p of $s sampled, abandoned $a"
    [ "$s" = 3 ] && [ "$p" = 3 ] && [ "$a" = false ] || fail "run A round $r: $(grep "\"round\":$r," "$M")"
done
ids=$(cat "$T"/A/w*.log | sed -n 's/.*entrypoint: \(worker-[0-9]\) on .*/\1/p' | sort | tr '\n' ' ')
[ "$ids" = "worker-0 worker-1 worker-2 " ] || fail "workers did not claim distinct slots: $ids"

# --- run B: worker 3's link impaired, worker 2's link cut mid-round -----------------
if ip -n "$P-w3" link set eth0 up && ip netns exec "$P-w3" tc qdisc add dev eth0 root netem delay 60ms 20ms loss 3% 2>/dev/null; then
    ip -n "$SW" link set p-w3 up
    ip netns exec "$SW" tc qdisc add dev p-w3 root netem delay 60ms 20ms loss 3% ||
        fail "tc netem on the switch side"
    echo "run B: worker 3's link: netem delay 60ms +-20ms, loss 3% each way"
else
    # No sch_netem in this kernel: delay by queueing behind a slow link, drop at random.
    ip netns exec "$P-w3" tc qdisc add dev eth0 root tbf rate 2mbit burst 16kb latency 500ms &&
        ip netns exec "$SW" tc qdisc add dev p-w3 root tbf rate 2mbit burst 16kb latency 500ms ||
        fail "tc tbf on worker 3's link"
    command -v iptables >/dev/null || fail "neither sch_netem nor iptables: cannot impair a link"
    for chain in INPUT OUTPUT; do
        ip netns exec "$P-w3" iptables -A "$chain" -m statistic --mode random --probability 0.03 -j DROP ||
            fail "iptables statistic drop in worker 3's namespace"
    done
    echo "run B: worker 3's link: no sch_netem here; tbf 2 Mbit/s + iptables random drop 3% each way"
fi

start_run B 3
M=$T/B/state/metrics.jsonl
# Cut worker 2 while it trains round 2 (after its task, before its update): poll its
# log; the bound covers rounds 0-1 (one link impaired) on a slow, loaded machine.
end=$((SECONDS + 240 * SLOW))
until grep -q 'round 2: training' "$T/B/w2.log" 2>/dev/null; do
    kill -0 "$COORD_PID" 2>/dev/null || fail "run B: the coordinator exited before round 2"
    kill -0 "${W_PID[2]}" 2>/dev/null || fail "run B: worker 2 exited before round 2"
    grep -q '^{"round":2,' "$M" 2>/dev/null &&
        fail "run B: round 2 completed before worker 2 logged its training"
    [ "$SECONDS" -ge "$end" ] &&
        fail "run B: worker 2 never started round 2 ($((240 * SLOW)) s; metrics: $(tr '\n' ' ' <"$M" 2>/dev/null))"
    sleep 0.05
done
grep -q 'round 2: trained' "$T/B/w2.log" &&
    fail "run B: worker 2 finished round 2 before its link could be cut"
ip -n "$SW" link set p-w2 down
echo "run B: worker 2's link cut during round 2 (at ${SECONDS}s)"
end=$((SECONDS + 120 * SLOW))
until grep -q '^{"round":2,' "$M" 2>/dev/null; do
    [ "$SECONDS" -ge "$end" ] && fail "run B: round 2 did not complete"
    kill -0 "$COORD_PID" 2>/dev/null || fail "run B: the coordinator exited during round 2"
    sleep 0.1
done
ip -n "$SW" link set p-w2 up
finish_run B
s=$(field "$M" 1 sampled); p=$(field "$M" 1 reported)
echo "run B round 1 (impaired link): reported $p of $s sampled"
[ "$s" = 3 ] && [ "$p" = 3 ] || fail "run B round 1: $(grep '"round":1,' "$M")"
s=$(field "$M" 2 sampled); p=$(field "$M" 2 reported); a=$(field "$M" 2 abandoned)
echo "run B round 2 (link cut): reported $p of $s sampled, abandoned $a"
[ "$a" = false ] && [ "$p" -ge 2 ] && [ "$p" -lt "$s" ] ||
    fail "run B round 2 did not complete on quorum: $(grep '"round":2,' "$M")"
grep -q '^{"round":3,' "$M" || fail "run B: no round 3 after the cut"
grep -q 'round 2: training' "$T/B/w3.log" || fail "run B: worker 3 did not train round 2"
echo "PASS"

#!/bin/bash
# test_docker.sh BUILD_DIR - the README's Docker section for real, on a Docker engine:
# builds the image, runs the Compose federation (3 workers, CURVE) to the end and
# checks that the loss falls and the adapter copied out loads in BUILD_DIR/fedpeft
# eval; `docker kill`s the coordinator mid-run and brings it back with `up -d` (it
# resumes, every round completes); kills a worker (its round completes on quorum,
# the restarted container keeps its id); `up` after the finished run trains
# nothing; `new-run` + `up --force-recreate` trains again with the same keys and
# distinct worker ids; `down -v` leaves no container, volume or network.
#
# Uses the Docker engine that answers (DOCKER_HOST), else starts dockerd with its
# own data root (BUILD_DIR/docker-test, kept: its image cache makes reruns fast),
# exec root and socket, and stops it at the end. debian:bookworm-slim comes from a
# registry if one answers, else from debootstrap (minbase) with the mirror apt uses
# here, imported into the engine (the tarball is cached in BUILD_DIR/docker-test).
# Needs root, dockerd, docker, docker-compose, debootstrap: without them it FAILS.
# The Compose project is "fedpeft-test" (not the README's default "docker"), so a
# federation of yours on the same engine is never touched; the HTTP port is a free
# one on 127.0.0.1.
set -euo pipefail
BUILD=$(cd "${1:?usage: test_docker.sh BUILD_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
CACHE=$BUILD/docker-test
T=$(mktemp -d /tmp/fp-docker.XXXXXX)
P=fedpeft-test
T0=$(date +%s)
DPID=

log() { echo "[$(($(date +%s) - T0))s] $*"; }
fail() {
    echo "FAIL: $*" >&2
    if [ -n "${COMPOSE_UP:-}" ]; then
        C ps >&2 || true
        C logs --tail=30 >&2 || true
    fi
    exit 1
}

cleanup() {
    local rc=$?
    if [ -n "${COMPOSE_UP:-}" ]; then C down -v --remove-orphans >/dev/null 2>&1 || true; fi
    if [ -n "$DPID" ]; then
        kill "$DPID" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$DPID" 2>/dev/null || break; sleep 1; done
        kill -9 "$DPID" 2>/dev/null || true
    fi
    rm -rf "$T"
    exit $rc
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "needs root (it starts dockerd)"
for c in dockerd docker docker-compose debootstrap; do
    command -v "$c" >/dev/null || fail "$c not found: apt-get install docker.io docker-compose debootstrap"
done

# --- a Docker engine -------------------------------------------------------------------
mkdir -p "$CACHE"
if docker info >/dev/null 2>&1; then
    log "using the Docker engine at ${DOCKER_HOST:-the default socket}"
else
    mkdir -p "$CACHE/data" "$T/exec"
    export DOCKER_HOST=unix://$T/docker.sock
    dockerd --data-root "$CACHE/data" --exec-root "$T/exec" -H "$DOCKER_HOST" \
        --pidfile "$T/dockerd.pid" >"$T/dockerd.log" 2>&1 &
    DPID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$T/dockerd.log" >&2; fail "dockerd did not start"; }
    log "started dockerd (pid $DPID, data root $CACHE/data)"
fi

# --- debian:bookworm-slim --------------------------------------------------------------
# The first bookworm mirror apt uses on this machine (deb822 .sources or sources.list).
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk '/^URIs:/{u=$2} /^Suites:/{if ($0 ~ / bookworm( |$)/ && u != "") {print u; exit}}' "$f"
    done | awk 'NR == 1' | grep . && return
    awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null | grep .
}
if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    log "debian:bookworm-slim is in the engine"
elif timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    log "pulled debian:bookworm-slim"
else
    TARBALL=$CACHE/bookworm-minbase.tar.gz
    if [ ! -s "$TARBALL" ]; then
        mirror=$(apt_mirror) || fail "no registry answers and no bookworm mirror in /etc/apt"
        log "no registry: debootstrap --variant=minbase bookworm from $mirror"
        debootstrap --variant=minbase bookworm "$T/rootfs" "$mirror" >"$T/debootstrap.log" 2>&1 ||
            { tail -20 "$T/debootstrap.log" >&2; fail "debootstrap failed"; }
        # As the real slim image: no package lists or downloaded .debs.
        rm -rf "$T"/rootfs/var/lib/apt/lists/* "$T"/rootfs/var/cache/apt/*
        tar -C "$T/rootfs" -czf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
        rm -rf "$T/rootfs"
    fi
    docker import - debian:bookworm-slim <"$TARBALL" >/dev/null || fail "docker import failed"
    log "imported debian:bookworm-slim from $TARBALL"
fi

# --- the image, as the README builds it -------------------------------------------------
cd "$SRC"
t=$(date +%s)
docker build -f docker/Dockerfile -t fedpeft:latest . >"$T/build.log" 2>&1 ||
    { tail -30 "$T/build.log" >&2; fail "docker build failed"; }
size=$(docker image inspect -f '{{.Size}}' fedpeft:latest)
log "image built in $(($(date +%s) - t)) s, $((size / 1000000)) MB"
docker run --rm fedpeft:latest fedpeft --version | grep '^fedpeft ' >/dev/null || fail "fedpeft --version in the image"

# --- the federation ---------------------------------------------------------------------
PORT=$(comm -23 <(seq 18080 18180) <(ss -Htln | awk '{sub(/.*:/, "", $4); print $4}' | sort -u) | awk 'NR == 1')
# A shorter run than the README's (rounds, steps, deadlines), same file otherwise.
fed_ini() {  # ROUNDS
    sed -e "s/^rounds = .*/rounds = $1/" -e 's/^local_steps = .*/local_steps = 15/' \
        -e 's/^deadline_s = .*/deadline_s = 60/' -e 's/^start_timeout_s = .*/start_timeout_s = 90/' \
        "$SRC/configs/docker-federation.ini"
}
fed_ini 6 >"$T/fed.ini"
chmod 0644 "$T/fed.ini"
export FEDPEFT_WORKERS=3 FEDPEFT_INI=$T/fed.ini FEDPEFT_HTTP_PORT=$PORT
C() { docker-compose -p "$P" -f "$SRC/docker/compose.yaml" "$@"; }
COMPOSE_UP=1
cid() { C ps -q "$1"; }

# GET /status on the published port ("" while nothing answers).
status() {
    { exec 3<>"/dev/tcp/127.0.0.1/$PORT" &&
        printf 'GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && timeout 5 cat <&3; } 2>/dev/null || true
}
# Rounds in the coordinator's history (round 0, the base model's evaluation, is one).
completed() { status | grep -o '"completed_rounds":[0-9]*' | cut -d: -f2 || true; }  # empty while it is down
wait_rounds() {  # N SECONDS: until the coordinator has completed N rounds
    local end=$(($(date +%s) + $2)) n
    while :; do
        n=$(completed)
        [ "${n:-0}" -ge "$1" ] && return 0
        [ "$(date +%s)" -lt "$end" ] || fail "round $1 did not complete in $2 s (completed: ${n:-none})"
        sleep 2
    done
}
# The id a worker container last started as, from its entry point's log line. Not docker
# exec: a short run can end between "it runs" and the exec (CI saw "unable to upgrade to
# tcp, received 500" and an empty id), and the log outlives the container.
last_id() { docker logs "$1" 2>&1 | grep -o 'entrypoint: worker-[0-9]* on' | tail -n1 | awk '{print $2}'; }
# Prints "CONTAINER worker-K" for every running worker container.
worker_ids() {
    local c
    for c in $(cid worker); do
        [ "$(docker inspect -f '{{.State.Running}}' "$c")" = true ] || continue
        echo "$c $(last_id "$c")"
    done
}
# Like worker_ids, for every worker container, running or exited.
all_worker_ids() {
    local c
    for c in $(cid worker); do echo "$c $(last_id "$c")"; done
}
wait_healthy_workers() {  # SECONDS: 3 running workers, all healthy, ids worker-0..2
    local end=$(($(date +%s) + $1)) c ok
    while :; do
        ok=0
        for c in $(cid worker); do
            [ "$(docker inspect -f '{{.State.Health.Status}}' "$c" 2>/dev/null)" = healthy ] && ok=$((ok + 1))
        done
        [ "$ok" -eq 3 ] && break
        [ "$(date +%s)" -lt "$end" ] || fail "$ok of 3 workers healthy after $1 s"
        sleep 2
    done
    ids=$(worker_ids | awk '{print $2}' | sort | tr '\n' ' ')
    [ "$ids" = "worker-0 worker-1 worker-2 " ] || fail "worker ids are '$ids', not worker-0..2"
    names_match_ids
}
# The container named ${P}_worker_N runs worker-(N-1), as `docker ps` shows it.
names_match_ids() {  # [all]: exited containers too
    local c id name
    while read -r c id; do
        [ -n "$id" ] || fail "container $c logged no worker id"
        name=$(docker inspect -f '{{.Name}}' "$c")
        [ "${name#/}" = "${P}_worker_$((${id#worker-} + 1))" ] ||
            fail "container ${name#/} runs $id (its name should end in _$((${id#worker-} + 1)))"
    done < <(if [ "${1:-}" = all ]; then all_worker_ids; else worker_ids; fi)
}
# grep -q stops reading at its first match; under pipefail the writer's SIGPIPE then fails
# the pipeline, so logs are captured whole before they are searched.
logs_have() {  # CONTAINER PATTERN [docker logs options...]
    local c=$1 pat=$2
    shift 2
    docker logs "$@" "$c" >"$T/logs.txt" 2>&1 || true
    grep -q -- "$pat" "$T/logs.txt"
}
metrics() { C run --rm --no-deps --entrypoint cat coordinator /var/lib/fedpeft/state/metrics.jsonl 2>/dev/null; }
wait_exit() {  # CONTAINER SECONDS: until it stopped; prints its exit code
    local end=$(($(date +%s) + $2))
    while [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ]; do
        [ "$(date +%s)" -lt "$end" ] || fail "container $1 still runs after $2 s"
        sleep 2
    done
    docker inspect -f '{{.State.ExitCode}}' "$1"
}
# Checks metrics.jsonl: round 0 (the base model's evaluation), then 1..N once each,
# none abandoned; prints "first last" val_loss.
check_metrics() {  # FILE N
    local rounds
    rounds=$(grep -o '"round":[0-9]*' "$1" | cut -d: -f2 | tr '\n' ' ')
    [ "$rounds" = "$(seq -s' ' 0 "$2") " ] || fail "metrics rounds are '$rounds', not 0..$2"
    if grep -q '"abandoned":true' "$1"; then fail "an abandoned round: $(grep '"abandoned":true' "$1")"; fi
    grep -o '"val_loss":[-0-9.e+]*' "$1" | cut -d: -f2 | sed -n '1p;$p' | tr '\n' ' '
    echo
}

log "up: coordinator and 3 workers on 127.0.0.1:$PORT"
C up -d --scale worker=3 >"$T/up1.log" 2>&1 || { cat "$T/up1.log" >&2; fail "docker-compose up"; }
wait_healthy_workers 150
log "3 workers healthy: $(worker_ids | awk '{print $2}' | tr '\n' ' ')"
wait_rounds 2 300

# The coordinator: docker kill is a manual stop (not restarted); up -d brings it back.
coord=$(cid coordinator)
docker kill "$coord" >/dev/null
sleep 3
[ "$(docker inspect -f '{{.State.Running}}' "$coord")" = false ] || fail "the killed coordinator runs"
log "killed the coordinator with $(metrics | grep -c .) rounds in metrics.jsonl"
C up -d --scale worker=3 >"$T/up2.log" 2>&1 || { cat "$T/up2.log" >&2; fail "up after the kill"; }
wait_rounds 3 240
logs_have "$coord" 'resuming run .* round [0-9]* completed' ||
    fail "the coordinator did not resume from its checkpoint"
wait_healthy_workers 60
log "the coordinator resumed; workers keep distinct ids"

# A worker dies: its round completes on quorum; restarted, the container keeps its id.
read -r wc wid < <(worker_ids | awk '$2 == "worker-1"')
# Killed while it trains (before its update is sent), so that round has to do without it.
end=$(($(date +%s) + 120))
until logs_have "$wc" ': step [0-9]*/' --tail 1; do
    [ "$(date +%s)" -lt "$end" ] || fail "$wid did not train within 120 s"
    sleep 0.2
done
n=$(completed)
docker kill "$wc" >/dev/null
log "killed $wid (${wc:0:12}) with $n rounds done"
wait_rounds $((n + 1)) 180
C up -d --scale worker=3 >"$T/up3.log" 2>&1 || { cat "$T/up3.log" >&2; fail "up after the worker kill"; }
# The run may end (6 short rounds) before the restarted worker is healthy: from the logs.
end=$(($(date +%s) + 90))
until [ "$(docker logs "$wc" 2>&1 | grep -c 'entrypoint: worker-1 on')" -ge 2 ]; do
    [ "$(date +%s)" -lt "$end" ] ||
        fail "the restarted container $wc did not come back as worker-1: $(docker logs "$wc" 2>&1 | grep entrypoint)"
    sleep 1
done
[ "$(docker logs "$wc" 2>&1 | grep -c 'entrypoint: worker-1 on')" -eq 2 ] ||
    fail "the restarted container $wc started more than twice: $(docker logs "$wc" 2>&1 | grep entrypoint)"
ids=$(all_worker_ids | awk '{print $2}' | sort | tr '\n' ' ')
[ "$ids" = "worker-0 worker-1 worker-2 " ] || fail "after the worker kill, ids are '$ids', not worker-0..2"
names_match_ids all
log "$wid back in the same container"

code=$(wait_exit "$coord" 400)
[ "$code" -eq 0 ] || fail "the coordinator exited $code"
metrics >"$T/m1.jsonl"
fl=$(check_metrics "$T/m1.jsonl" 6)
read -r first last <<<"$fl"
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < a - 0.3)}' || fail "the loss did not fall: $first -> $last"
grep -q '"reported":2' "$T/m1.jsonl" || fail "no round completed on a quorum of 2: $(cat "$T/m1.jsonl")"
log "run 1: 6 rounds, val loss $first -> $last"

# The adapter, copied out as the README says, loads in the local build.
mkdir -p "$T/out" "$T/host"
docker run --rm -v "${P}_results:/r" -v "$T/out:/out" --user root --entrypoint cp fedpeft:latest -r /r/adapter /out/ ||
    fail "copying the adapter out"
"$BUILD/fedpeft" convert --llama2c "$SRC/data/stories260K/stories260K.bin" \
    --tokenizer "$SRC/data/stories260K/tok512.bin" --out "$T/host/model" >/dev/null
head -c 20000 "$SRC/data/tinyshakespeare/input.txt" >"$T/host/val.txt"
base=$("$BUILD/fedpeft" eval --model "$T/host/model" --data "$T/host/val.txt" --seq 128) || fail "eval of the base model"
tuned=$("$BUILD/fedpeft" eval --model "$T/host/model" --adapter "$T/out/adapter" --data "$T/host/val.txt" --seq 128) ||
    fail "fedpeft eval does not load the adapter"
lb=$(grep -o '"loss": *[0-9.]*' <<<"$base" | grep -o '[0-9.]*$')
lt=$(grep -o '"loss": *[0-9.]*' <<<"$tuned" | grep -o '[0-9.]*$')
awk -v a="$lb" -v b="$lt" 'BEGIN {exit !(b < a)}' || fail "the adapter does not lower the loss: $lb -> $lt"
log "adapter: eval loss $lb (base) -> $lt"

# up after a finished run: the coordinator says so and exits 0, nothing trains.
C up -d --scale worker=3 >"$T/up4.log" 2>&1 || { cat "$T/up4.log" >&2; fail "up after the end"; }
code=$(wait_exit "$coord" 60)
[ "$code" -eq 0 ] || fail "the coordinator of a finished run exited $code"
logs_have "$coord" 'resuming run .*: round 6 completed' ||
    fail "the coordinator did not resume the finished run: $(docker logs --tail 20 "$coord" 2>&1)"
for c in $(cid worker); do
    code=$(wait_exit "$c" 90)
    [ "$code" -eq 0 ] || fail "worker $c of a finished run exited $code"
done
metrics >"$T/m1b.jsonl"
[ "$(check_metrics "$T/m1b.jsonl" 6)" = "$fl" ] || fail "up after the end trained: $(cat "$T/m1b.jsonl")"
log "up after the end: coordinator and workers exit 0, still rounds 0..6"

# A new run with the same keys (README), on re-created containers (new host names).
keyhash() { docker run --rm -v "${P}_keys:/k" --entrypoint sha256sum fedpeft:latest /k/coordinator.pub /k/allowlist; }
k1=$(keyhash)
C run --rm --no-deps coordinator new-run >"$T/newrun.log" 2>&1 || { cat "$T/newrun.log" >&2; fail "new-run"; }
fed_ini 2 >"$T/fed.ini"
C up -d --force-recreate --scale worker=3 >"$T/up5.log" 2>&1 || { cat "$T/up5.log" >&2; fail "up for the new run"; }
coord=$(cid coordinator)
code=$(wait_exit "$coord" 300)
[ "$code" -eq 0 ] || fail "the new run's coordinator exited $code"
# New containers took over the old slots, one each (the run is over: from the logs).
ids=$(for c in $(cid worker); do docker logs "$c" 2>&1 | grep -o 'entrypoint: worker-[0-9]* on' | tail -n1; done |
    awk '{print $2}' | sort | tr '\n' ' ')
[ "$ids" = "worker-0 worker-1 worker-2 " ] || fail "re-created workers took ids '$ids', not worker-0..2"
for c in $(cid worker); do
    name=$(docker inspect -f '{{.Name}}' "$c")
    logs_have "$c" "entrypoint: worker-$((${name##*_} - 1)) on .*(container ${name#/} " ||
        fail "re-created ${name#/} did not come back as worker-$((${name##*_} - 1)): $(docker logs "$c" 2>&1 | grep entrypoint)"
done
metrics >"$T/m2.jsonl"
fl1=$fl
fl=$(check_metrics "$T/m2.jsonl" 2)
[ "$(keyhash)" = "$k1" ] || fail "the keys changed in the new run"
docker run --rm -v "${P}_results:/r" --entrypoint sh fedpeft:latest -c 'cat /r/previous/*/metrics.jsonl' >"$T/prev.jsonl"
[ "$(check_metrics "$T/prev.jsonl" 6)" = "$fl1" ] || fail "the first run's metrics are not in state/previous/"
log "new run: 2 rounds, same keys, run 1 kept in state/previous/"

# down -v leaves nothing of the project.
C down -v >"$T/down.log" 2>&1 || { cat "$T/down.log" >&2; fail "down -v"; }
COMPOSE_UP=
f=label=com.docker.compose.project=$P
left="$(docker ps -aq --filter "$f")$(docker volume ls -q --filter "$f")$(docker network ls -q --filter "$f")"
[ -z "$left" ] || fail "down -v left: $left"
log "PASS (down -v left nothing)"

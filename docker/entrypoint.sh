#!/bin/bash
# entrypoint.sh - the fedpeft image's entry point (docker/compose.yaml).
#
#   keygen        coordinator key + FEDPEFT_WORKERS worker keys and the allowlist,
#                 into $FEDPEFT_HOME/keys (kept if present: safe to run again)
#   prepare       the demo's base model (bundled stories260K, converted) and
#                 FEDPEFT_WORKERS shards of FEDPEFT_DATA into $FEDPEFT_HOME/prepared/{model,shards}
#   coordinator   fedpeft-coordinator --config $FEDPEFT_CONFIG [ARGS...]
#   worker        fedpeft-worker as worker-K on shard K [ARGS...]
#   healthcheck   the image's HEALTHCHECK (coordinator: GET /healthz; worker: alive)
#   anything else is run as a command (fedpeft generate ..., bash)
#
# A worker's index K (its id worker-K, key worker-K.key and shard-K) comes from, in
# order: WORKER_SHARD (0-based; set it per service or per `docker run -e`); a
# hostname ending in -N or _N (1-based, as compose/StatefulSet names number
# replicas; set `hostname:` to use it); else the first free slot claimed atomically
# (mkdir) in $FEDPEFT_HOME/claims, remembered by hostname so a restarted container
# keeps its slot (prepare clears the claims). `docker-compose up --scale worker=N`
# uses the last: each replica claims a different K. N must not exceed
# FEDPEFT_WORKERS (keys, shards); to change N, `docker-compose down -v` first.
set -euo pipefail

HOME_DIR=${FEDPEFT_HOME:-/var/lib/fedpeft}
KEYS=$HOME_DIR/keys            # volume: written by keygen
PREP=$HOME_DIR/prepared        # volume: model/, shards/, claims/ (written by prepare, workers)
CONFIG=${FEDPEFT_CONFIG:-/etc/fedpeft/docker-federation.ini}
WORKERS=${FEDPEFT_WORKERS:-3}
WAIT_S=${FEDPEFT_WAIT_S:-300}
SHARE=${FEDPEFT_SHARE:-/usr/share/fedpeft}

say() { echo "entrypoint: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Waits until every named path exists (the one-shot services write them).
wait_for() {
    local t=0 p
    for p in "$@"; do
        while [ ! -e "$p" ]; do
            [ "$t" -ge "$WAIT_S" ] && die "$p did not appear in ${WAIT_S}s: did the keygen and prepare services run?"
            [ "$t" -eq 0 ] && say "waiting for $p"
            sleep 1; t=$((t + 1))
        done
    done
}

# The --security.* options, when this build has CURVE (its --help lists them).
security_args() {  # PROGRAM KEY_NAME
    local help
    help=$("$1" --help 2>&1 || true)
    if grep -q 'security\.secret_key' <<<"$help"; then
        echo "--security.secret_key=$KEYS/$2.key"
        if [ "$2" = coordinator ]; then
            echo "--security.allowlist=$KEYS/allowlist"
        else
            echo "--security.coordinator_key=$KEYS/coordinator.pub"
        fi
    fi
}

cmd_keygen() {
    mkdir -p "$KEYS"
    chmod 0700 "$KEYS"
    [ -e "$KEYS/coordinator.key" ] || fedpeft keygen --out "$KEYS" --name coordinator >/dev/null
    local k line
    for ((k = 0; k < WORKERS; k++)); do
        [ -e "$KEYS/worker-$k.key" ] && continue
        line=$(fedpeft keygen --out "$KEYS" --name "worker-$k")
        echo "$line" >>"$KEYS/allowlist.tmp"
    done
    [ -e "$KEYS/allowlist.tmp" ] && cat "$KEYS/allowlist.tmp" >>"$KEYS/allowlist" && rm "$KEYS/allowlist.tmp"
    touch "$KEYS/allowlist"
    say "keys for coordinator and worker-0..$((WORKERS - 1)) in $KEYS ($(grep -c . "$KEYS/allowlist") allowed)"
}

cmd_prepare() {
    local data=${FEDPEFT_DATA:-$SHARE/data/tinyshakespeare/input.txt}
    mkdir -p "$PREP"
    if [ ! -e "$PREP/model/config.json" ]; then
        rm -rf "$PREP/model.tmp"
        fedpeft convert --llama2c "$SHARE/data/stories260K/stories260K.bin" \
            --tokenizer "$SHARE/data/stories260K/tok512.bin" --out "$PREP/model.tmp"
        mv "$PREP/model.tmp" "$PREP/model"
    fi
    if [ ! -d "$PREP/shards" ]; then
        rm -rf "$PREP/shards.tmp"
        fedpeft partition --data "$data" --workers "$WORKERS" \
            --by "${FEDPEFT_PARTITION:-speaker}" --seed "${FEDPEFT_SEED:-1234}" --out "$PREP/shards.tmp"
        mv "$PREP/shards.tmp" "$PREP/shards"
    fi
    # Each `docker-compose up` runs prepare before the workers start: fresh claims,
    # since recreated containers have new host names.
    rm -rf "$PREP/claims"
}

# Prints this container's worker index (see the header).
worker_index() {
    local host k
    host=$(hostname)
    if [ -n "${WORKER_SHARD:-}" ]; then
        echo "$WORKER_SHARD"; return
    fi
    if [[ "$host" =~ [-_]([0-9]+)$ ]]; then
        echo $((BASH_REMATCH[1] - 1)); return
    fi
    mkdir -p "$PREP/claims"
    for ((k = 0; k < WORKERS; k++)); do
        if [ "$(cat "$PREP/claims/$k/host" 2>/dev/null)" = "$host" ]; then
            echo "$k"; return
        fi
    done
    for ((k = 0; k < WORKERS; k++)); do
        if mkdir "$PREP/claims/$k" 2>/dev/null; then
            echo "$host" >"$PREP/claims/$k/host"
            echo "$k"; return
        fi
    done
    die "all $WORKERS worker slots are taken: raise FEDPEFT_WORKERS (and rerun keygen/prepare with it)"
}

cmd_coordinator() {
    wait_for "$PREP/model/config.json" "$KEYS/allowlist"
    mapfile -t sec < <(security_args fedpeft-coordinator coordinator)
    exec fedpeft-coordinator --config "$CONFIG" "${sec[@]}" "$@"
}

cmd_worker() {
    wait_for "$PREP/model/config.json" "$PREP/shards" "$KEYS/allowlist"
    local k shard
    k=$(worker_index)
    [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -lt "$WORKERS" ] ||
        die "worker index '$k' is not in 0..$((WORKERS - 1)) (FEDPEFT_WORKERS=$WORKERS)"
    shard=$(ls "$PREP/shards"/shard-"$(printf %03d "$k")".* 2>/dev/null | head -n1)
    [ -n "$shard" ] || die "no shard $k in $HOME_DIR/shards"
    mapfile -t sec < <(security_args fedpeft-worker "worker-$k")
    say "worker-$k on $shard"
    exec fedpeft-worker --config "$CONFIG" --worker.id="worker-$k" --worker.data="$shard" \
        "${sec[@]}" "$@"
}

# HEALTHCHECK: PID 1 is the service itself (exec above).
cmd_healthcheck() {
    local comm
    comm=$(cat /proc/1/comm 2>/dev/null || true)
    case "$comm" in
    fedpeft-coordin*)  # comm is cut at 15 characters
        exec 3<>"/dev/tcp/127.0.0.1/${FEDPEFT_HTTP_PORT:-8080}" || exit 1
        printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
        head -n1 <&3 | grep -q ' 200 ' ;;
    fedpeft-worker) kill -0 1 ;;
    *) exit 0 ;;  # the one-shot services
    esac
}

case "${1:-}" in
keygen | prepare | coordinator | worker | healthcheck)
    c=$1; shift; "cmd_$c" "$@" ;;
"") die "usage: entrypoint.sh keygen|prepare|coordinator|worker|healthcheck [ARGS...] or a command" ;;
*) exec "$@" ;;
esac

#!/bin/bash
# entrypoint.sh - the fedpeft image's entry point (docker/compose.yaml).
#
#   keygen        coordinator key + FEDPEFT_WORKERS worker keys and the allowlist,
#                 into $FEDPEFT_HOME/keys (kept if present: safe to run again)
#   prepare       the demo's base model (bundled stories260K, converted) and
#                 FEDPEFT_WORKERS shards of FEDPEFT_DATA into $FEDPEFT_HOME/prepared/{model,shards}
#                 (kept if present, with the workers' slot claims: safe at every `up`)
#   coordinator   fedpeft-coordinator --config $FEDPEFT_CONFIG [ARGS...]
#   worker        fedpeft-worker as worker-K on shard K [ARGS...]
#   new-run       moves the finished (or any) run's results in $FEDPEFT_HOME/state to
#                 state/previous/TIME, so the next `up` starts round 1; keys, model,
#                 shards and claims stay
#   healthcheck   the image's HEALTHCHECK (coordinator: GET /healthz; worker: the
#                 coordinator's /status lists worker-K as live)
#   anything else is run as a command (fedpeft generate ..., bash)
#
# Exit status: 0 done; 1 a failure worth retrying (a restart policy may); 2 a
# configuration error that a restart cannot fix (say what to change).
#
# A worker's index K (its id worker-K, key worker-K.key and shard-K) comes from, in
# order: WORKER_SHARD (0-based; set it per service or per `docker run -e`); a
# hostname ending in -N or _N (1-based, as StatefulSet names number replicas; set
# `hostname:` to use it); else a slot claimed in $FEDPEFT_HOME/prepared/claims/K
# (under a lock), which holds the claimant's hostname, its Compose container name
# and a lease file the container's healthcheck touches. Under Compose the slot is
# the container's number less one (PROJECT_worker_1 is worker-0, as `docker ps`
# shows it), read from Docker's DNS. A container keeps its slot across restarts
# (same hostname) and `up`; a re-created container (new hostname, same Compose
# name) takes its slot back at once; a slot whose lease is older than
# FEDPEFT_LEASE_S (its old container is gone) may be taken over; a slot with a
# live lease is never taken. When every slot is live (`--scale worker=N` above
# FEDPEFT_WORKERS) the extra worker waits, then exits 2. To change N,
# `docker-compose down -v` first (it deletes the keys too).
set -euo pipefail

HOME_DIR=${FEDPEFT_HOME:-/var/lib/fedpeft}
KEYS=$HOME_DIR/keys            # volume: written by keygen
PREP=$HOME_DIR/prepared        # volume: model/, shards/, claims/ (written by prepare, workers)
CONFIG=${FEDPEFT_CONFIG:-/etc/fedpeft/docker-federation.ini}
WORKERS=${FEDPEFT_WORKERS:-3}
WAIT_S=${FEDPEFT_WAIT_S:-300}
LEASE_S=${FEDPEFT_LEASE_S:-30}
SHARE=${FEDPEFT_SHARE:-/usr/share/fedpeft}
STATE=$HOME_DIR/state          # volume "results" (the coordinator's [run] state_dir)
ID_FILE=${FEDPEFT_ID_FILE:-/tmp/fedpeft-worker-id}  # this container's worker id, for the healthcheck
# The coordinator's HTTP port as the workers reach it (the compose service name).
COORD_HTTP=${FEDPEFT_COORDINATOR_HTTP:-coordinator:8080}

say() { echo "entrypoint: $*" >&2; }
die() { say "error: $*"; exit 1; }
config_error() { say "configuration error (not retried by a restart): $*"; exit 2; }

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
    # Every `up` runs prepare again: it keeps the shards and the workers' claims of
    # the run in progress, but cannot change the number of workers under it.
    local n
    n=$(find "$PREP/shards" -maxdepth 1 -name 'shard-*' | wc -l)
    [ "$n" -eq "$WORKERS" ] ||
        config_error "the prepared volume holds $n shards, FEDPEFT_WORKERS is $WORKERS: use $n, or \`docker-compose down -v\` to start over with new keys and shards"
}

# 0 when claims/K's lease was touched less than LEASE_S seconds ago.
lease_live() {
    local t
    t=$(stat -c %Y "$PREP/claims/$1/lease" 2>/dev/null) || return 1
    [ $(($(date +%s) - t)) -lt "$LEASE_S" ]
}

# This container's Compose name (PROJECT_SERVICE_N; PROJECT-SERVICE-N with Compose
# v2), or nothing outside Compose: Docker's embedded DNS answers a PTR query for the
# container's own address with it (/etc/hosts names only the container id, hence -s dns).
compose_name() {
    local ip name
    ip=$(getent -s files hosts "$(hostname)" | awk '{print $1; exit}' || true)
    [ -n "$ip" ] || return 0
    name=$(timeout 3 getent -s dns hosts "$ip" | awk '{print $2; exit}' || true)
    echo "${name%%.*}"
}

# Takes slot K for HOST/NAME (the caller holds the claims lock).
take_slot() {  # K HOST NAME
    local owner
    owner=$(cat "$PREP/claims/$1/host" 2>/dev/null || true)
    [ -n "$owner" ] && [ "$owner" != "$2" ] &&
        say "slot $1: taking it over from $owner ($(cat "$PREP/claims/$1/name" 2>/dev/null || echo '?'))"
    mkdir -p "$PREP/claims/$1"
    echo "$2" >"$PREP/claims/$1/host"
    echo "$3" >"$PREP/claims/$1/name"
    touch "$PREP/claims/$1/lease"
}

# One pass over the slots under the claims lock: prints K and returns 0 when this
# host holds (or now took) slot K; returns 1 when none is free to it. With PREF
# (the Compose number less one) only that slot is taken: when it is free, stale, or
# held by this container's previous incarnation (the same Compose name: Compose
# names are unique among a project's containers).
claim_slot() {  # HOST NAME [PREF]
    local k=0 pref=${3:-}
    exec 9>"$PREP/claims/.lock"
    flock 9
    for ((k = 0; k < WORKERS; k++)); do   # ours already (a restarted container)
        [ "$(cat "$PREP/claims/$k/host" 2>/dev/null)" = "$1" ] && break
    done
    if [ "$k" -eq "$WORKERS" ] && [ -n "$pref" ]; then
        k=$WORKERS
        if [ ! -e "$PREP/claims/$pref/host" ] || ! lease_live "$pref" ||
            { [ -n "$2" ] && [ "$(cat "$PREP/claims/$pref/name" 2>/dev/null)" = "$2" ]; }; then
            k=$pref
        fi
    elif [ "$k" -eq "$WORKERS" ]; then    # else a free slot, else a stale one
        for ((k = 0; k < WORKERS; k++)); do
            [ -e "$PREP/claims/$k/host" ] || break
        done
        if [ "$k" -eq "$WORKERS" ]; then
            for ((k = 0; k < WORKERS; k++)); do
                lease_live "$k" || break
            done
        fi
    fi
    [ "$k" -lt "$WORKERS" ] && take_slot "$k" "$1" "$2" && echo "$k"
    exec 9>&-
    [ "$k" -lt "$WORKERS" ]
}

# Prints this container's worker index (see the header); NAME is compose_name's.
worker_index() {  # NAME
    local host name=$1 pref="" t=0
    host=$(hostname)
    if [ -n "${WORKER_SHARD:-}" ]; then
        echo "$WORKER_SHARD"; return
    fi
    if [[ "$host" =~ [-_]([0-9]+)$ ]]; then
        echo $((BASH_REMATCH[1] - 1)); return
    fi
    if [[ "$name" =~ [-_]([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -ge 1 ] &&
        [ "${BASH_REMATCH[1]}" -le "$WORKERS" ]; then
        pref=$((BASH_REMATCH[1] - 1))
    fi
    mkdir -p "$PREP/claims"
    # A re-created federation's old leases age out within LEASE_S: wait that long.
    until claim_slot "$host" "$name" "$pref"; do
        if [ "$t" -eq 0 ]; then
            if [ -n "$pref" ]; then
                say "slot $pref ($name) is held by a live worker, $(cat "$PREP/claims/$pref/host" 2>/dev/null): waiting ${LEASE_S}s for it to free"
            else
                say "all $WORKERS worker slots are held by live workers: waiting ${LEASE_S}s for one to free"
            fi
        fi
        if [ "$t" -gt "$LEASE_S" ]; then
            [ -n "$pref" ] ||
                config_error "all $WORKERS worker slots are held by live workers: run at most FEDPEFT_WORKERS=$WORKERS workers (--scale worker=$WORKERS)"
            say "slot $pref is still held: taking any free one (this container's number will not match its id)"
            pref=""; t=0
        fi
        sleep 2; t=$((t + 2))
    done
}

cmd_coordinator() {
    wait_for "$PREP/model/config.json" "$KEYS/allowlist"
    mapfile -t sec < <(security_args fedpeft-coordinator coordinator)
    exec fedpeft-coordinator --config "$CONFIG" "${sec[@]}" "$@"
}

cmd_worker() {
    wait_for "$PREP/model/config.json" "$PREP/shards" "$KEYS/allowlist"
    local k shard name
    name=$(compose_name)    # once: outside Compose the DNS query may wait its 3 s
    k=$(worker_index "$name")
    [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -lt "$WORKERS" ] ||
        config_error "worker index '$k' is not in 0..$((WORKERS - 1)) (FEDPEFT_WORKERS=$WORKERS)"
    shard=$(ls "$PREP/shards"/shard-"$(printf %03d "$k")".* 2>/dev/null | head -n1)
    [ -n "$shard" ] || config_error "no shard $k in $PREP/shards"
    mapfile -t sec < <(security_args fedpeft-worker "worker-$k")
    echo "worker-$k $k" >"$ID_FILE"
    say "worker-$k on $shard (container $name $(hostname))"
    exec fedpeft-worker --config "$CONFIG" --worker.id="worker-$k" --worker.data="$shard" \
        "${sec[@]}" "$@"
}

cmd_new_run() {
    [ -d "$STATE" ] || config_error "$STATE is not mounted (run this as the coordinator service)"
    local dest f moved=0
    dest=$STATE/previous/$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$dest"
    for f in "$STATE"/* "$STATE"/.[!.]*; do
        [ -e "$f" ] && [ "$f" != "$STATE/previous" ] || continue
        mv "$f" "$dest/" && moved=$((moved + 1))
    done
    if [ "$moved" -eq 0 ]; then
        rmdir "$dest"; say "no results in $STATE: the next run starts at round 1"
    else
        say "the last run's results are in $dest; the next \`up\` starts at round 1 (same keys)"
    fi
}

# GET PATH from HOST:PORT; prints the response (status line, headers, body).
http_get() {  # HOST:PORT PATH
    exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "${1%:*}" >&3
    timeout 4 cat <&3
}

# HEALTHCHECK: PID 1 is the service itself (exec above).
cmd_healthcheck() {
    local comm id k
    comm=$(cat /proc/1/comm 2>/dev/null || true)
    case "$comm" in
    fedpeft-coordin*)  # comm is cut at 15 characters
        http_get "127.0.0.1:${FEDPEFT_HTTP_PORT:-8080}" /healthz | head -n1 | grep -q ' 200 ' ;;
    fedpeft-worker)
        read -r id k <"$ID_FILE" || exit 1
        touch "$PREP/claims/$k/lease" 2>/dev/null || true  # this slot's holder is alive
        if ! http_get "$COORD_HTTP" /status | grep -qF "\"id\":\"$id\",\"state\":\"live\""; then
            echo "$id: not registered with the coordinator ($COORD_HTTP/status)"; exit 1
        fi
        echo "$id: registered" ;;
    *) exit 0 ;;  # the one-shot services
    esac
}

case "${1:-}" in
keygen | prepare | coordinator | worker | new-run | healthcheck)
    c=${1//-/_}; shift; "cmd_$c" "$@" ;;
"") config_error "usage: entrypoint.sh keygen|prepare|coordinator|worker|new-run|healthcheck [ARGS...] or a command" ;;
*) exec "$@" ;;
esac

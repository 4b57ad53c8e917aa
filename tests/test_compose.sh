#!/bin/bash
# test_compose.sh BUILD_DIR - docker/ without a Docker engine, in seconds:
# docker/entrypoint.sh picks a worker's slot (WORKER_SHARD, or a claim: kept by its
# host, never taken while its lease is live, taken over once stale, exit 2 when all
# are live) and passes the right id, shard and keys to the program (a stand-in that
# prints its arguments); Debian's docker-compose accepts docker/compose.yaml.
# tests/test_docker.sh runs all of it on a real engine. Exit 77 (skipped) only when
# docker-compose is not installed (Debian package docker-compose).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

bash -n "$SRC/docker/entrypoint.sh" || fail "docker/entrypoint.sh has a syntax error"

# --- the entry point, with stand-in programs ------------------------------------------
mkdir -p "$T/bin" "$T/home/keys" "$T/home/prepared/model" "$T/home/prepared/shards"
cat >"$T/bin/fedpeft-worker" <<'STUB'
#!/bin/sh
if [ "$1" = --help ]; then echo "  security.secret_key  (text)"; exit 0; fi
echo "$@"
STUB
chmod +x "$T/bin/fedpeft-worker"
touch "$T/home/prepared/model/config.json" "$T/home/keys/allowlist"
for k in 0 1 2; do touch "$T/home/prepared/shards/shard-00$k.txt"; done
run_worker() {
    env PATH="$T/bin:$PATH" FEDPEFT_HOME="$T/home" FEDPEFT_WORKERS=3 FEDPEFT_WAIT_S=2 \
        FEDPEFT_CONFIG=/c.ini FEDPEFT_ID_FILE="$T/id" "$@" bash "$SRC/docker/entrypoint.sh" worker --x.y=1 2>/dev/null
}
out=$(run_worker WORKER_SHARD=2)
for want in "--worker.id=worker-2" "shards/shard-002.txt" "--security.secret_key=$T/home/keys/worker-2.key" \
            "--security.coordinator_key=$T/home/keys/coordinator.pub" "--x.y=1"; do
    grep -qF -- "$want" <<<"$out" || fail "WORKER_SHARD=2: '$want' not in: $out"
done
# Claims: the stand-in `hostname` says which container this is.
as_host() {  # HOST [ENV...]
    printf '#!/bin/sh\necho %s\n' "$1" >"$T/bin/hostname"; chmod +x "$T/bin/hostname"
    shift; run_worker FEDPEFT_LEASE_S=4 "$@"
}
id_of() { grep -o -- '--worker.id=worker-[0-9]*' <<<"$1" | cut -d= -f2; }
out=$(as_host ctr-a) && out2=$(as_host ctr-a)
[ "$(id_of "$out")" = worker-0 ] || fail "first claim is not slot 0: $out"
[ "$(id_of "$out2")" = worker-0 ] || fail "a restarted container lost its slot: $out2"
[ "$(cat "$T/home/prepared/claims/0/host")" = ctr-a ] || fail "no claim recorded"
[ "$(id_of "$(as_host ctr-b)")" = worker-1 ] || fail "a second container did not get slot 1"
[ "$(id_of "$(as_host ctr-c)")" = worker-2 ] || fail "a third container did not get slot 2"
# All three leases live (renewed as the containers' healthchecks do): a fourth
# claimant waits one lease time, then exit 2.
(while :; do touch "$T"/home/prepared/claims/?/lease; sleep 1; done) &
renew=$!
set +e; as_host ctr-d >/dev/null; rc=$?; set -e
kill "$renew"; wait "$renew" 2>/dev/null || true
[ "$rc" -eq 2 ] || fail "a fourth worker with 3 live slots exited $rc, not 2"
# ctr-b's container is gone (its lease is stale, the others fresh): a re-created one takes slot 1.
touch -d '-1 min' "$T/home/prepared/claims/1/lease"
touch "$T/home/prepared/claims/0/lease" "$T/home/prepared/claims/2/lease"
[ "$(id_of "$(as_host ctr-e)")" = worker-1 ] || fail "a stale slot was not taken over"
[ "$(cat "$T/home/prepared/claims/1/host")" = ctr-e ] || fail "the takeover was not recorded"
set +e; run_worker WORKER_SHARD=3 >/dev/null; rc=$?; set -e
[ "$rc" -eq 2 ] || fail "slot 3 of 3 exited $rc, not 2 (a configuration error)"

# --- the Compose file -----------------------------------------------------------------
if ! command -v docker-compose >/dev/null; then
    echo "SKIP: docker-compose not installed (apt-get install docker-compose)"
    exit 77
fi
cd "$SRC/docker"
docker-compose -f compose.yaml config -q || fail "docker-compose config rejects docker/compose.yaml"
services=$(docker-compose -f compose.yaml config --services | sort | tr '\n' ' ')
[ "$services" = "coordinator keygen prepare worker " ] || fail "services: $services"
volumes=$(docker-compose -f compose.yaml config --volumes | sort | tr '\n' ' ')
[ "$volumes" = "keys prepared results " ] || fail "volumes: $volumes"
FEDPEFT_WORKERS=5 docker-compose -f compose.yaml config -q || fail "config with FEDPEFT_WORKERS=5"
echo "PASS"

#!/bin/bash
# test_compose.sh BUILD_DIR - docker/ without a Docker engine, in seconds:
# docker/entrypoint.sh picks a worker's slot (WORKER_SHARD, or a claim: kept by its
# host, never taken while its lease is live, taken over once stale, exit 2 when all
# are live; under Compose the container's number less one, from a stand-in DNS) and passes the right id, shard and keys to the program (a stand-in that
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
# Docker's DNS, stood in for: `getent -s dns hosts IP` names the container FAKE_NAME
# (unset: no Compose name, as outside Compose).
cat >"$T/bin/getent" <<'STUB'
#!/bin/sh
case "$2" in
files) echo "10.9.8.7 $4" ;;
dns) [ -n "${FAKE_NAME:-}" ] || exit 2; echo "$4 $FAKE_NAME.proj_default" ;;
esac
STUB
chmod +x "$T/bin/getent"
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

# Under Compose the slot is the container number less one: proj_worker_3 is worker-2
# (slot 0 free), and the log names the container.
rm -rf "$T/home/prepared/claims"
out=$(as_host ctr-f FAKE_NAME=proj_worker_3 2>&1)
[ "$(id_of "$out")" = worker-2 ] || fail "proj_worker_3 is not worker-2: $out"
[ "$(cat "$T/home/prepared/claims/2/name")" = proj_worker_3 ] || fail "the claim does not record the Compose name"
# Re-created (new host name, same Compose name) while the old lease is live: slot 2 at once.
touch "$T/home/prepared/claims/2/lease"
t0=$(date +%s)
[ "$(id_of "$(as_host ctr-g FAKE_NAME=proj_worker_3)")" = worker-2 ] ||
    fail "a re-created proj_worker_3 did not take its slot back"
[ $(($(date +%s) - t0)) -lt 2 ] || fail "a re-created container waited for its own old lease"
# Compose v2 names (proj-worker-1) count the same way.
[ "$(id_of "$(as_host ctr-h FAKE_NAME=proj-worker-1)")" = worker-0 ] || fail "proj-worker-1 is not worker-0"
# Its slot held live by another container (claimed outside Compose): proj_worker_1
# waits one lease time, then takes the free slot 1 and says its number will not match.
echo ctr-x >"$T/home/prepared/claims/0/host"; echo other >"$T/home/prepared/claims/0/name"
(while :; do touch "$T"/home/prepared/claims/0/lease "$T"/home/prepared/claims/2/lease; sleep 1; done) &
renew=$!
out=$(as_host ctr-i FAKE_NAME=proj_worker_1 2>&1) || true
kill "$renew"; wait "$renew" 2>/dev/null || true
[ "$(id_of "$out")" = worker-1 ] || fail "proj_worker_1 with slot 0 held live did not take slot 1: $out"
# Above FEDPEFT_WORKERS: proj_worker_4 has no slot of its own and all are live: exit 2.
(while :; do touch "$T"/home/prepared/claims/?/lease; sleep 1; done) &
renew=$!
set +e; as_host ctr-j FAKE_NAME=proj_worker_4 >/dev/null; rc=$?; set -e
kill "$renew"; wait "$renew" 2>/dev/null || true
[ "$rc" -eq 2 ] || fail "proj_worker_4 of 3 with every slot live exited $rc, not 2"

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

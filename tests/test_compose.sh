#!/bin/bash
# test_compose.sh BUILD_DIR - checks docker/ without a Docker engine: Debian's
# docker-compose validates docker/compose.yaml (and its variables); the Dockerfile
# is multi-stage on bookworm-slim with a non-root user and a HEALTHCHECK, and copies
# only files that exist; docker/entrypoint.sh picks a worker's slot from WORKER_SHARD
# or a claim, and passes the right id, shard and keys. Exit 77 (skipped) only when
# docker-compose is not installed (Debian package docker-compose).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

bash -n "$SRC/docker/entrypoint.sh" || fail "docker/entrypoint.sh has a syntax error"

# --- the Dockerfile ------------------------------------------------------------------
DF=$SRC/docker/Dockerfile
[ "$(grep -c '^FROM debian:bookworm-slim' "$DF")" -ge 2 ] || fail "Dockerfile is not multi-stage on debian:bookworm-slim"
grep -q '^USER fedpeft' "$DF" || fail "Dockerfile does not switch to the user fedpeft"
grep -q '^HEALTHCHECK ' "$DF" || fail "Dockerfile has no HEALTHCHECK"
grep -q '^ENTRYPOINT \["/usr/local/bin/fedpeft-entrypoint"\]' "$DF" || fail "Dockerfile has no entry point"
# Every COPY from the build context names something that exists.
while read -r _ args; do
    set -- $args
    while [ $# -gt 1 ]; do
        [ -e "$SRC/$1" ] || fail "Dockerfile copies $1, which does not exist"
        shift
    done
done < <(grep -E '^COPY [^-]' "$DF")

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
        FEDPEFT_CONFIG=/c.ini "$@" bash "$SRC/docker/entrypoint.sh" worker --x.y=1 2>/dev/null
}
out=$(run_worker WORKER_SHARD=2)
for want in "--worker.id=worker-2" "shards/shard-002.txt" "--security.secret_key=$T/home/keys/worker-2.key" \
            "--security.coordinator_key=$T/home/keys/coordinator.pub" "--x.y=1"; do
    grep -qF -- "$want" <<<"$out" || fail "WORKER_SHARD=2: '$want' not in: $out"
done
out=$(run_worker) && out2=$(run_worker)
grep -qF -- "--worker.id=worker-0" <<<"$out" || fail "first claim is not slot 0: $out"
grep -qF -- "--worker.id=worker-0" <<<"$out2" || fail "a restarted container lost its slot: $out2"
[ -e "$T/home/prepared/claims/0/host" ] || fail "no claim recorded"
if run_worker WORKER_SHARD=3 >/dev/null; then fail "slot 3 of 3 was accepted"; fi

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
FEDPEFT_WORKERS=5 docker-compose -f compose.yaml config >"$T/resolved.yaml" || fail "config with FEDPEFT_WORKERS=5"
grep -q -- '--sampling.min_workers=5' "$T/resolved.yaml" || fail "FEDPEFT_WORKERS does not reach the coordinator"
grep -q "FEDPEFT_WORKERS: '5'" "$T/resolved.yaml" || fail "FEDPEFT_WORKERS does not reach the services"
# --scale worker=N needs a worker without a fixed name or published port.
awk '/^  worker:/{w=1;next} /^  [a-z]/{w=0} w' "$T/resolved.yaml" >"$T/worker.yaml"
if grep -qE 'container_name|ports:' "$T/worker.yaml"; then fail "the worker service cannot be scaled"; fi
grep -q 'configs/docker-federation.ini:/etc/fedpeft/docker-federation.ini:ro' "$T/resolved.yaml" ||
    fail "configs/docker-federation.ini is not mounted"
grep -q 'service_completed_successfully' "$T/resolved.yaml" || fail "the coordinator does not wait for keygen"
echo "PASS"

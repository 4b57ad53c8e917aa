#!/bin/bash
# test_slurm.sh BUILD_DIR - packaging/slurm/fedpeft-federation.sbatch on a real
# one-node Slurm cluster: munged, slurmctld and slurmd started here on
# localhost with their own slurm.conf (ports 46817/46818, state in a scratch
# dir), then the README's Slurm commands: a 4-worker federation (5 tasks) runs
# to completion with the bundled stories260K model; a second job is cancelled
# with scancel after round 2 and the same sbatch again resumes from its
# checkpoint and completes every round. Needs root, slurm-wlm and munge
# (README's test command installs them); fails, never skips, without them.
set -euo pipefail
BUILD=$(cd "${1:?usage: test_slurm.sh BUILD_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$BUILD/test-tmp/slurm-$$
fail() { echo "test_slurm: FAIL: $*" >&2; for f in "$T"/sl/log/*.log "$T"/job*/logs/*.log; do [ -e "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }; done; exit 1; }
for c in munged slurmctld slurmd sbatch squeue scancel scontrol sinfo; do
    command -v "$c" >/dev/null || fail "$c not found: apt-get install -y slurm-wlm munge"
done
[ "$(id -u)" = 0 ] || fail "needs root (slurmd runs jobs as their user; the daemons run as root here)"
rm -rf "$T" && mkdir -p "$T/sl/state" "$T/sl/spool" "$T/sl/log"

# munge: the key Debian's package made, or a new one; our own socket and pid.
MUNGE_SOCK=$T/sl/munge.socket
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
mkdir -p "$T/sl/munge" && chown munge:munge "$T/sl/munge" "$T/sl"
su -s /bin/sh munge -c "/usr/sbin/munged --socket=$MUNGE_SOCK --pid-file=$T/sl/munge/munged.pid --log-file=$T/sl/munge/munged.log --seed-file=$T/sl/munge/seed" ||
    fail "munged did not start"
HOST=$(hostname -s)
export SLURM_CONF=$T/sl/slurm.conf
cat >"$SLURM_CONF" <<CONF
ClusterName=fedpeft-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=46817
SlurmdPort=46818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$T/sl/state
SlurmdSpoolDir=$T/sl/spool
SlurmctldPidFile=$T/sl/slurmctld.pid
SlurmdPidFile=$T/sl/slurmd.pid
SlurmctldLogFile=$T/sl/log/slurmctld.log
SlurmdLogFile=$T/sl/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CONF
cleanup() {
    scancel --quiet -u root 2>/dev/null || true
    for p in slurmd slurmctld munge/munged; do
        [ -s "$T/sl/$p.pid" ] && kill "$(cat "$T/sl/$p.pid")" 2>/dev/null || true
    done
}
trap cleanup EXIT
slurmctld -f "$SLURM_CONF" -c || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
for i in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && break
    [ "$i" = 60 ] && fail "the node did not become idle: $(sinfo 2>&1)"
    sleep 1
done

# The run's inputs: the bundled model (converted) and text; a small config.
"$BUILD/fedpeft" convert --llama2c "$SRC/data/stories260K/stories260K.bin" \
    --tokenizer "$SRC/data/stories260K/tok512.bin" --out "$T/model" >/dev/null
cat >"$T/fed.ini" <<INI
[run]
rounds = ROUNDS
seed = 11
[lora]
rank = 4
alpha = 8
targets = all
[train]
local_steps = 4
batch = 4
seq = 64
lr = 5e-3
[sampling]
min_workers = 4
[round]
deadline_s = 60
min_quorum = 3
start_timeout_s = 60
[network]
heartbeat_ms = 500
[worker]
val_fraction = 0.1
threads = 1
connect_retries = 60
INI
submit() {  # JOB_DIR ROUNDS PORT -> job id
    sed "s/ROUNDS/$2/" "$T/fed.ini" >"$T/fed-$2.ini"
    FEDPEFT_BIN=$BUILD FEDPEFT_CONFIG=$T/fed-$2.ini FEDPEFT_MODEL=$T/model \
        FEDPEFT_DATA=$SRC/data/tinyshakespeare/input.txt FEDPEFT_PORT=$3 \
        sbatch --parsable -n 5 -o "$1/slurm-%j.out" --export=ALL \
        "$SRC/packaging/slurm/fedpeft-federation.sbatch" "$1"
}
wait_gone() {  # JOB_ID TIMEOUT_S
    for i in $(seq "$2"); do
        squeue -h -j "$1" 2>/dev/null | grep -q . || return 0
        sleep 1
    done
    fail "job $1 still queued or running after $2 s: $(squeue 2>&1)"
}
rounds_done() { cat "$1/state/metrics.jsonl" 2>/dev/null | grep -c '"round"' || true; }
check_complete() {  # JOB_DIR ROUNDS
    python3 - "$1/state/metrics.jsonl" "$2" <<'PY' || fail "metrics of $1"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
R = int(sys.argv[2])
assert [r["round"] for r in rows] == list(range(R + 1)), [r["round"] for r in rows]
assert all(not r["abandoned"] for r in rows), "a round was abandoned"
first, last = rows[0]["val_loss"], rows[-1]["val_loss"]
print(f"test_slurm: {sys.argv[1]}: rounds 0..{R}, validation loss {first:.3f} -> {last:.3f}")
assert last < first - 0.05, "the validation loss did not fall"
PY
    [ -e "$1/state/adapter/adapter_config.json" ] || fail "no final adapter in $1/state/adapter"
    "$BUILD/fedpeft" eval --model "$T/model" --adapter "$1/state/adapter" \
        --data "$(ls "$1"/shards/shard-000.* | head -n1)" --seq 64 >"$1/eval.txt" 2>&1 ||
        fail "fedpeft eval cannot use the adapter: $(cat "$1/eval.txt")"
}

# 1. A 4-worker federation to completion.
t0=$(date +%s)
mkdir -p "$T/job1"
J=$(submit "$T/job1" 3 46901)
echo "test_slurm: job $J: coordinator + 4 workers"
wait_gone "$J" 400
check_complete "$T/job1" 3
for k in 0 1 2 3; do grep -q "worker-$k registered" "$T/job1/logs/coordinator.log" || fail "worker-$k never registered"; done
echo "test_slurm: job 1 took $(( $(date +%s) - t0 )) s"

# 2. scancel after round 2, the same command again: it resumes.
mkdir -p "$T/job2"
J=$(submit "$T/job2" 6 46902)
for i in $(seq 400); do [ "$(rounds_done "$T/job2")" -ge 3 ] && break; sleep 1; done
[ "$(rounds_done "$T/job2")" -ge 3 ] || fail "job $J did not reach round 2"
scancel "$J"
wait_gone "$J" 120
done_before=$(rounds_done "$T/job2")
keys_before=$(md5sum "$T/job2/keys/allowlist")
J=$(submit "$T/job2" 6 46902)
echo "test_slurm: cancelled after $((done_before - 1)) rounds; resubmitted as job $J"
wait_gone "$J" 400
grep -q "resuming run" "$T/job2/logs/coordinator.log" || fail "the resubmitted job did not resume from the checkpoint"
[ "$(md5sum "$T/job2/keys/allowlist")" = "$keys_before" ] || fail "the resubmitted job made new keys"
check_complete "$T/job2" 6
echo "test_slurm: PASS ($(( $(date +%s) - t0 )) s)"

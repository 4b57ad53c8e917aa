#!/bin/bash
# test_slurm.sh BUILD_DIR - packaging/slurm/fedpeft-federation.sbatch on a real
# one-node Slurm cluster: munged, slurmctld and slurmd started here on localhost
# with their own slurm.conf, munge socket, ports and state in a scratch dir (a
# Slurm or munged already running on this machine keeps its own), then the
# README's Slurm commands: a 4-worker federation (5 tasks) runs to completion with
# the bundled stories260K model; a second job is cancelled with scancel after
# round 2 and the same sbatch again resumes from its checkpoint, with the same
# keys, and completes every round. Needs root, slurm-wlm and munge (the README's
# test command installs them); fails, never skips, without them.
set -euo pipefail
BUILD=$(cd "${1:?usage: test_slurm.sh BUILD_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$BUILD/test-tmp/slurm-$$
fail() {
    echo "test_slurm: FAIL: $*" >&2
    for f in "$T"/sl/log/*.log "$T"/job*/slurm-*.out "$T"/job*/logs/*.log; do
        [ -e "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }
    done
    exit 1
}
for c in munged mungekey slurmctld slurmd sbatch squeue scancel scontrol sinfo ss; do
    command -v "$c" >/dev/null || fail "$c not found: apt-get install -y slurm-wlm munge iproute2"
done
[ "$(id -u)" = 0 ] || fail "needs root (slurmd starts job tasks as their user; the daemons run as root here)"
rm -rf "$T" && mkdir -p "$T/sl/state" "$T/sl/spool" "$T/sl/log" "$T/sl/munge"

# Ports no socket holds: a Slurm already here keeps 6817/6818, a stale run its own.
# Below the kernel's ephemeral range (32768-60999 on Debian), so that no outgoing
# connection of a test running beside this one takes it between the check and
# slurmd's bind (seen: "Unable to bind listen port (46818)" while test_docker ran).
port_free() { [ -z "$(ss -Htan "sport = :$1")" ]; }
free_port() { local p=$1; while ! port_free "$p" || ! port_free $((p + 1)); do p=$((p + 2)); done; echo "$p"; }
CTLD_PORT=$(free_port 26817)
COORD_PORT=$(free_port $((CTLD_PORT + 2)))

cleanup() {
    # Our jobs only (and by id: `scancel -u root` idles about a minute here), then
    # give slurmd a moment to end their tasks before it goes.
    local p pid ids
    ids=$(squeue -h -o %i 2>/dev/null) || true
    if [ -n "$ids" ]; then
        scancel $ids 2>/dev/null || true
        for _ in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    for p in slurmd slurmctld munge/munged; do
        pid=$(cat "$T/sl/$p.pid" 2>/dev/null) || continue
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    # A failed run's files stay for a look.
    [ "$passed" = 1 ] && rm -rf "$T"
    return 0
}
passed=0
trap cleanup EXIT
trap 'exit 143' TERM INT

# munge: the key Debian's package made (or a new one), our own socket and pid file.
MUNGE_SOCK=$T/sl/munge.socket
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key && chown munge:munge /etc/munge/munge.key ||
        fail "cannot create /etc/munge/munge.key"
fi
chown munge:munge "$T/sl/munge" "$T/sl"
su -s /bin/sh munge -c "/usr/sbin/munged --socket=$MUNGE_SOCK --pid-file=$T/sl/munge/munged.pid --log-file=$T/sl/munge/munged.log --seed-file=$T/sl/munge/seed" ||
    fail "munged did not start: $(tail -5 "$T/sl/munge/munged.log" 2>&1)"
HOST=$(hostname -s)
export SLURM_CONF=$T/sl/slurm.conf
cat >"$SLURM_CONF" <<CONF
ClusterName=fedpeft-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
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
slurmctld -f "$SLURM_CONF" -c || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
t0=$(date +%s)
for i in $(seq 60); do
    [[ "$(sinfo -h -o %T 2>/dev/null)" == *idle* ]] && break
    [ "$i" = 60 ] && fail "the node did not become idle: $(sinfo 2>&1)"
    sleep 1
done
echo "test_slurm: slurmctld and slurmd up, node $HOST idle after $(($(date +%s) - t0)) s"

# The run's inputs: the bundled model (converted) and text.
"$BUILD/fedpeft" convert --llama2c "$SRC/data/stories260K/stories260K.bin" \
    --tokenizer "$SRC/data/stories260K/tok512.bin" --out "$T/model" >/dev/null
# fedpeft eval's loss of the base model on the play's last 60 kB (a quick check).
eval_loss() { sed -n 's/.*"loss": *\([0-9.]*\).*/\1/p' "$1"; }
tail -c 60000 "$SRC/data/tinyshakespeare/input.txt" >"$T/val.txt"
"$BUILD/fedpeft" eval --model "$T/model" --data "$T/val.txt" --seq 64 >"$T/eval-base.txt" 2>&1 ||
    fail "fedpeft eval of the base model: $(cat "$T/eval-base.txt")"
base=$(eval_loss "$T/eval-base.txt")
submit() {  # JOB_DIR ROUNDS PORT -> job id; the README's command
    FEDPEFT_BIN=$BUILD FEDPEFT_CONFIG=$SRC/configs/slurm-federation.ini FEDPEFT_MODEL=$T/model \
        FEDPEFT_DATA=$SRC/data/tinyshakespeare/input.txt FEDPEFT_ROUNDS=$2 FEDPEFT_PORT=$3 \
        sbatch --parsable -n 5 -o "$1/slurm-%j.out" --export=ALL \
        "$SRC/packaging/slurm/fedpeft-federation.sbatch" "$1" || fail "sbatch refused the job"
}
# wait_end JOB_ID TIMEOUT_S: waits until the job has left the queue; prints its
# final "JobState ExitCode" (slurmctld keeps ended jobs for MinJobAge seconds).
wait_end() {
    local i st
    for i in $(seq "$2"); do
        st=$(scontrol -o show job "$1" 2>&1) || fail "scontrol show job $1: $st"
        case $st in
        *JobState=PENDING* | *JobState=RUNNING* | *JobState=CONFIGURING* | *JobState=COMPLETING* | *JobState=REQUEUED*) sleep 1 ;;
        *) echo "$st" | sed -n 's/.*JobState=\([A-Z_]*\) .* ExitCode=\([0-9:]*\).*/\1 \2/p'; return 0 ;;
        esac
    done
    fail "job $1 still queued or running after $2 s: $(squeue 2>&1)"
}
rounds_done() { cat "$1/state/metrics.jsonl" 2>/dev/null | grep -c '^{"round":' || true; }
# field FILE ROUND KEY: KEY of ROUND's metrics line (one JSON object per line).
field() { grep "^{\"round\":$2," "$1" | tail -n1 | sed -n "s/.*\"$3\":\([^,}]*\).*/\1/p"; }
check_complete() {  # JOB_DIR ROUNDS
    local m=$1/state/metrics.jsonl got first last
    # Every round once, in order: a resumed run neither repeats nor skips one.
    got=$(sed -n 's/^{"round":\([0-9]*\),.*/\1/p' "$m" | tr '\n' ' ')
    [ "$got" = "$(seq -s ' ' 0 "$2") " ] || fail "$m: rounds '$got', expected 0..$2 once each"
    grep -q '"abandoned":true' "$m" && fail "$m: a round was abandoned: $(grep '"abandoned":true' "$m")"
    first=$(field "$m" 0 val_loss); last=$(field "$m" "$2" val_loss)
    echo "test_slurm: $1: rounds 0..$2, validation loss $first -> $last"
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(a != "" && b != "" && b < a - 0.05) }' ||
        fail "$m: the validation loss did not fall ($first -> $last)"
    [ -e "$1/state/adapter/adapter_config.json" ] || fail "no final adapter in $1/state/adapter"
    # The adapter loads, and on Shakespeare it does better than the base model.
    local tuned
    "$BUILD/fedpeft" eval --model "$T/model" --adapter "$1/state/adapter" \
        --data "$T/val.txt" --seq 64 >"$1/eval.txt" 2>&1 ||
        fail "fedpeft eval cannot use the adapter: $(cat "$1/eval.txt")"
    tuned=$(eval_loss "$1/eval.txt")
    echo "test_slurm: fedpeft eval: base model loss $base, with the adapter $tuned"
    awk -v a="$base" -v b="$tuned" 'BEGIN { exit !(a != "" && b != "" && b < a) }' ||
        fail "the adapter does not lower fedpeft eval's loss ($base -> $tuned)"
}

# 1. A 4-worker federation to completion.
t0=$(date +%s)
mkdir -p "$T/job1"
J=$(submit "$T/job1" 3 "$COORD_PORT")
echo "test_slurm: job $J: coordinator + 4 workers, 3 rounds"
st=$(wait_end "$J" 400)
[ "$st" = "COMPLETED 0:0" ] || fail "job $J ended '$st', expected 'COMPLETED 0:0'"
check_complete "$T/job1" 3
for k in 0 1 2 3; do
    grep -q "worker worker-$k registered" "$T/job1/logs/coordinator.log" || fail "worker-$k never registered"
done
echo "test_slurm: job 1 took $(($(date +%s) - t0)) s"

# 2. scancel after round 2, then the same command again: it resumes, same keys.
R=8
mkdir -p "$T/job2"
J=$(submit "$T/job2" $R $((COORD_PORT + 1)))
for _ in $(seq 2000); do [ "$(rounds_done "$T/job2")" -ge 3 ] && break; sleep 0.2; done
[ "$(rounds_done "$T/job2")" -ge 3 ] || fail "job $J did not reach round 2 in 400 s"
scancel "$J"
st=$(wait_end "$J" 120)
[ "${st%% *}" = CANCELLED ] || fail "job $J ended '$st' after scancel, expected CANCELLED"
last=$(($(rounds_done "$T/job2") - 1))
[ "$last" -lt $R ] || fail "job $J finished all $R rounds before scancel reached it"
grep -q "stopping: state saved at round $last" "$T/job2/logs/coordinator.log" ||
    fail "the cancelled coordinator did not log 'stopping: state saved at round $last'"
keys_before=$(cat "$T/job2/keys/"*.pub "$T/job2/keys/allowlist" | md5sum)
lines_before=$(wc -l <"$T/job2/logs/coordinator.log")
J=$(submit "$T/job2" $R $((COORD_PORT + 1)))
echo "test_slurm: cancelled after round $last; resubmitted as job $J"
st=$(wait_end "$J" 400)
[ "$st" = "COMPLETED 0:0" ] || fail "resubmitted job $J ended '$st', expected 'COMPLETED 0:0'"
resumed=$(tail -n +$((lines_before + 1)) "$T/job2/logs/coordinator.log")
grep -q "resuming run .*checkpoint.bin: round $last completed" <<<"$resumed" ||
    fail "the resubmitted coordinator did not resume at round $last from the checkpoint"
for r in $(seq 0 "$last"); do
    grep -q "round $r complete:" <<<"$resumed" && fail "the resubmitted job ran round $r again"
done
[ "$(cat "$T/job2/keys/"*.pub "$T/job2/keys/allowlist" | md5sum)" = "$keys_before" ] ||
    fail "the resubmitted job made new keys"
check_complete "$T/job2" $R
echo "test_slurm: PASS ($(($(date +%s) - t0)) s)"
passed=1

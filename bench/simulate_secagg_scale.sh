#!/bin/bash
# simulate_secagg_scale.sh [WORKERS] [ROUNDS] [OUT] - SecAgg+ at scale on one machine
# (issue 12): `fedpeft simulate` with WORKERS workers (default 500) for ROUNDS rounds
# (default 5) of 2 local steps of 2 x 32 tokens on the bundled model, secure
# aggregation on (the graph is chosen by the SecAgg+ bound: at 500 members each has
# 50 neighbours, t = 26). Samples the coordinator twice a second and prints its peak
# RSS and its CPU seconds per round, the rounds completed, and the bytes per worker
# per round from metrics.jsonl. A benchmark: it prints figures and asserts nothing.
# Needs build/ (Release).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-500}
R=${2:-5}
OUT=${3:-$SRC/build/bench-secagg-scale}
FP=$SRC/build/fedpeft
mkdir -p "$OUT"
SAMPLES=$OUT/coordinator-samples.txt
: >"$SAMPLES"

# Peak VmHWM (KiB) and CPU seconds of the coordinator, until it exits.
sample_coordinator() {
    local p=""
    while [ -z "$p" ]; do p=$(pgrep -f "fedpeft-coordinator.*$OUT" | head -1 || true); sleep 0.2; done
    while [ -d "/proc/$p" ]; do
        local hwm cpu
        hwm=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        cpu=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$p/stat" 2>/dev/null || true)
        [ -n "$hwm" ] && [ -n "$cpu" ] && echo "$hwm $cpu" >>"$SAMPLES"
        sleep 0.5
    done
}
sample_coordinator &
SAMPLER=$!
t0=$(date +%s)
"$FP" simulate --config "$SRC/configs/simulate-shakespeare.ini" --simulate.workers="$N" \
    --simulate.partition=iid --simulate.out_dir="$OUT/sim" --run.rounds="$R" \
    --train.local_steps=2 --train.batch=2 --train.seq=32 --round.deadline_s=600 \
    | tee "$OUT/simulate.txt"
wait "$SAMPLER" || true
wall=$(($(date +%s) - t0))
M=$OUT/sim/state/metrics.jsonl
done_rounds=$(grep -c '"abandoned":false' "$M" || true)
read -r hwm cpu < <(tail -n1 "$SAMPLES")
up=$(grep -o '"bytes_up":[0-9]*' "$M" | tail -n +2 | cut -d: -f2 | awk '{s += $1} END {print s / NR}')
down=$(grep -o '"bytes_down":[0-9]*' "$M" | tail -n +2 | cut -d: -f2 | awk '{s += $1} END {print s / NR}')
echo "secagg scale: $N workers, $R rounds, $wall s wall; $done_rounds of $((R + 1)) metrics lines complete (round 0 is the base model's evaluation)"
awk -v h="$hwm" -v c="$cpu" -v r="$R" -v n="$N" -v u="$up" -v d="$down" 'BEGIN {
    printf "coordinator: peak RSS %.1f MiB, CPU %.1f s in all (%.2f s per round)\n", h / 1024, c, c / r
    printf "per worker per round: %.1f KiB up, %.1f KiB down (the update is %d floats = %.1f KiB)\n",
        u / n / 1024, d / n / 1024, 46240, 46240 * 4 / 1024
}'
grep -h "a SecAgg+ graph\|the complete graph" "$OUT/sim/logs/coordinator.log" | head -1 | sed 's/.*secagg: /graph: /'

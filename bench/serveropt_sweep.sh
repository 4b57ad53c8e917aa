#!/usr/bin/env bash
# Server-optimizer sweep (issue 15): Shakespeare by speaker, stories260K, 8 workers, 20
# rounds of 10 local steps (the aggregation study's budget), secure aggregation on (the
# default), for FedAdam over its server learning rate and FedAvgM over (lr, momentum),
# next to plain FedAvg. Prints the final and the best federated validation loss of each
# run and draws the curves with `fedpeft report`; it is what chose the server_lr defaults
# (docs/aggregation.md). A benchmark: it prints figures and asserts nothing.
# Usage: bench/serveropt_sweep.sh [BUILD_DIR] [OUT_DIR]   (env: ROUNDS, STEPS)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-build}" && pwd)
out=${2:-serveropt-sweep}
mkdir -p "$out"
out=$(cd "$out" && pwd)
fp="$build/fedpeft"
R=${ROUNDS:-20} S=${STEPS:-10}
runs=("fedavg:--strategy.server_opt=none"
      "fedadam-lr0.01:--strategy.server_opt=fedadam --strategy.server_lr=0.01"
      "fedadam-lr0.03:--strategy.server_opt=fedadam --strategy.server_lr=0.03"
      "fedadam-lr0.1:--strategy.server_opt=fedadam --strategy.server_lr=0.1"
      "fedadam-lr0.3:--strategy.server_opt=fedadam --strategy.server_lr=0.3"
      "fedavgm-lr1-m0.3:--strategy.server_opt=fedavgm --strategy.server_lr=1 --strategy.beta1=0.3"
      "fedavgm-lr1-m0.6:--strategy.server_opt=fedavgm --strategy.server_lr=1 --strategy.beta1=0.6"
      "fedavgm-lr0.5-m0.6:--strategy.server_opt=fedavgm --strategy.server_lr=0.5 --strategy.beta1=0.6"
      "fedavgm-lr1-m0.9:--strategy.server_opt=fedavgm --strategy.server_lr=1 --strategy.beta1=0.9")
printf 'run\tfinal_val_loss\tbest_val_loss\tbest_round\n' > "$out/summary.tsv"
files=() labels=()
for r in "${runs[@]}"; do
    name=${r%%:*} args=${r#*:}
    dir="$out/$name"
    echo "== $name"
    # shellcheck disable=SC2086
    "$fp" simulate --config "$here/configs/simulate-shakespeare.ini" \
        --simulate.out_dir="$dir" --run.rounds="$R" --train.local_steps="$S" $args \
        > "$dir.log" 2>&1 || { echo "run failed: see $dir.log"; tail -5 "$dir.log"; exit 1; }
    m="$dir/state/metrics.jsonl"
    awk -v n="$name" '
        { if (match($0, /"round": ?[0-9]+/)) { r = substr($0, RSTART, RLENGTH); sub(/.*: ?/, "", r) }
          if (match($0, /"val_loss": ?[0-9.]+/)) { v = substr($0, RSTART, RLENGTH); sub(/.*: ?/, "", v)
              last = v; if (best == "" || v + 0 < best + 0) { best = v; at = r } } }
        END { printf "%s\t%s\t%s\t%s\n", n, last, best, at }' "$m" >> "$out/summary.tsv"
    files+=("$m") labels+=("$name")
done
(IFS=,; "$fp" report "${files[@]}" --labels "${labels[*]}" --out "$out/serveropt-sweep.svg")
column -t -s $'\t' "$out/summary.tsv"

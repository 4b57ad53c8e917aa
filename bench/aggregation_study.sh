#!/usr/bin/env bash
# Aggregation study (issue 6): Shakespeare, stories260K, 8 workers, 20 rounds, for each
# strategy (fedavg, ffa, svd, flora) and FedAvg with the FedAdam server optimizer, on the
# non-IID split by speaker and on an IID split. Prints the final federated validation loss
# and the mean bytes per round of each run, and draws docs-ready comparison plots with
# `fedpeft report`. Secure aggregation is off in every run so the strategies compare on
# equal terms (svd and flora cannot run under it). CURVE stays on.
# Usage: bench/aggregation_study.sh [BUILD_DIR] [OUT_DIR]   (env: ROUNDS, STEPS)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-build}" && pwd)
out=${2:-aggregation-study}
mkdir -p "$out"
out=$(cd "$out" && pwd)
fp="$build/fedpeft"
R=${ROUNDS:-20} S=${STEPS:-10}
runs=("fedavg:--strategy.name=fedavg" "ffa:--strategy.name=ffa" "svd:--strategy.name=svd"
      "flora:--strategy.name=flora" "fedadam:--strategy.name=fedavg --strategy.server_opt=fedadam")
printf 'split\tstrategy\tfinal_val_loss\tmean_bytes_up\tmean_bytes_down\n' > "$out/summary.tsv"
for split in speaker iid; do
    files=() labels=()
    for r in "${runs[@]}"; do
        name=${r%%:*} args=${r#*:}
        dir="$out/$split-$name"
        echo "== $split / $name"
        # shellcheck disable=SC2086
        "$fp" simulate --config "$here/configs/simulate-shakespeare.ini" \
            --simulate.out_dir="$dir" --simulate.partition="$split" --run.rounds="$R" \
            --train.local_steps="$S" --secagg.enabled=false --privacy.require_secagg=false $args > "$dir.log" 2>&1 \
            || { echo "run failed: see $dir.log"; tail -5 "$dir.log"; exit 1; }
        m="$dir/state/metrics.jsonl"
        awk -v s="$split" -v n="$name" '
            { if (match($0, /"val_loss": ?[0-9.]+/)) { v = substr($0, RSTART, RLENGTH); sub(/.*: ?/, "", v); last = v }
              if (match($0, /"round": ?[0-9]+/)) { r = substr($0, RSTART, RLENGTH); sub(/.*: ?/, "", r) }
              if (r > 0 && match($0, /"bytes_up": ?[0-9]+/)) { u = substr($0, RSTART, RLENGTH); sub(/.*: ?/, "", u); su += u; k++ }
              if (r > 0 && match($0, /"bytes_down": ?[0-9]+/)) { d = substr($0, RSTART, RLENGTH); sub(/.*: ?/, "", d); sd += d } }
            END { printf "%s\t%s\t%s\t%.0f\t%.0f\n", s, n, last, su / k, sd / k }' "$m" >> "$out/summary.tsv"
        files+=("$m") labels+=("$name")
    done
    (IFS=,; "$fp" report "${files[@]}" --labels "${labels[*]}" --out "$out/aggregation-$split.svg")
done
column -t -s $'\t' "$out/summary.tsv"

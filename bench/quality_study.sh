#!/usr/bin/env bash
# Quality study (issues 4 and 15): Shakespeare split by speaker, stories260K, 8 workers,
# secure aggregation on (the default) in every federated run. Compares, at the same total
# token budget (R rounds x 8 workers x S local steps), the held-out loss of
#   - each federated method (fedpeft simulate): FedAvg, FedAvg with 3x more rounds of a
#     third of the steps, FedProx, FedAdam, FedAvgM (three round lengths), SCAFFOLD
#     (alone and with FedAvgM), RoLoRA, FFA-LoRA, async FedBuff (K = 4, as many updates);
#   - centralized LoRA (fedpeft finetune on the pooled training text, R*8*S steps);
#   - local-only (each worker alone on its shard for R*S steps; mean over workers).
# Every method is evaluated on the same text no worker holds: the last 4,000 lines of
# tinyshakespeare. Prints a Markdown table and draws the federated validation loss per round
# of every method (quality-methods.svg). Usage: bench/quality_study.sh [BUILD_DIR] [OUT_DIR]
# (env FEDADAM_LR: FedAdam's server lr, default the one bench/serveropt_sweep.sh chose).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-build}" && pwd)
out=${2:-quality-study}
fp="$build/fedpeft"
R=10 S=30 B=8 T=128 LR=5e-3 W=8
mkdir -p "$out"
out=$(cd "$out" && pwd)
common=(--targets all-linear --rank 8 --alpha 16 --batch $B --seq $T --lr $LR --max-grad-norm 1.0)
RS="--run.rounds=$R --train.local_steps=$S"
methods=("fedavg|FedAvg, $R rounds x $S local steps|$RS"
         "fedavg-short|FedAvg, $((3 * R)) rounds x $((S / 3)) local steps|--run.rounds=$((3 * R)) --train.local_steps=$((S / 3))"
         "fedprox|FedProx (mu 0.01)|$RS --train.prox_mu=0.01"
         "fedadam|FedAdam (server lr ${FEDADAM_LR:-default})|$RS --strategy.server_opt=fedadam ${FEDADAM_LR:+--strategy.server_lr=$FEDADAM_LR}"
         "fedavgm|FedAvgM (server lr 1, momentum 0.6: the defaults)|$RS --strategy.server_opt=fedavgm"
         "fedavgm-short|FedAvgM, $((3 * R)) rounds x $((S / 3)) local steps|--run.rounds=$((3 * R)) --train.local_steps=$((S / 3)) --strategy.server_opt=fedavgm"
         "fedavgm-60x5|FedAvgM, $((6 * R)) rounds x $((S / 6)) local steps|--run.rounds=$((6 * R)) --train.local_steps=$((S / 6)) --strategy.server_opt=fedavgm"
         "scaffold|SCAFFOLD|$RS --strategy.name=scaffold"
         "scaffold-fedavgm-short|SCAFFOLD + FedAvgM, $((3 * R)) rounds x $((S / 3)) local steps|--run.rounds=$((3 * R)) --train.local_steps=$((S / 3)) --strategy.name=scaffold --strategy.server_opt=fedavgm"
         "scaffold-fedavgm-60x5|SCAFFOLD + FedAvgM, $((6 * R)) rounds x $((S / 6)) local steps|--run.rounds=$((6 * R)) --train.local_steps=$((S / 6)) --strategy.name=scaffold --strategy.server_opt=fedavgm"
         "rolora|RoLoRA (A and B in turn)|$RS --strategy.name=rolora"
         "ffa|FFA-LoRA (A frozen)|$RS --strategy.name=ffa"
         "async|async FedBuff, K = 4, $((R * W / 4)) versions x $S local steps (the same updates)|--run.rounds=$((R * W / 4)) --train.local_steps=$S --round.mode=async --round.buffer=4")

head -n 36000 "$here/data/tinyshakespeare/input.txt" > "$out/train.txt"
tail -n +36001 "$here/data/tinyshakespeare/input.txt" > "$out/test.txt"
loss() { sed -E 's/.*"loss": ([0-9.]+).*/\1/'; }

model="$out/fedavg/model"     # the first run converts it; every evaluation uses it
rows=() files=() labels=()
for m in "${methods[@]}"; do
    IFS='|' read -r name label args <<<"$m"
    echo "== $label"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    "$fp" simulate --config "$here/configs/simulate-shakespeare.ini" \
        --simulate.data="$out/train.txt" --simulate.out_dir="$out/$name" \
        --simulate.workers=$W --train.batch=$B --train.seq=$T --train.lr=$LR $args \
        > "$out/$name.log" 2>&1 \
        || { echo "run failed: see $out/$name.log"; tail -5 "$out/$name.log"; exit 1; }
    secs=$(($(date +%s) - t0))
    held=$("$fp" eval --model "$model" --adapter "$out/$name/adapter" --data "$out/test.txt" --seq $T | loss)
    val=$(tail -n 1 "$out/$name/state/metrics.jsonl" | sed -E 's/.*"val_loss": ?([0-9.]+).*/\1/')
    rows+=("| $label | $held | $val | $secs s |")
    files+=("$out/$name/state/metrics.jsonl") labels+=("$name")
done
base=$("$fp" eval --model "$model" --data "$out/test.txt" --seq $T | loss)
(IFS=,; "$fp" report "${files[@]}" --labels "${labels[*]}" --out "$out/quality-methods.svg")

echo "== centralized: $((R * W * S)) steps on the pooled text"
"$fp" finetune --model "$model" --data "$out/train.txt" --out "$out/central" \
    --steps $((R * W * S)) "${common[@]}" --seed 1 2>/dev/null
cen=$("$fp" eval --model "$model" --adapter "$out/central" --data "$out/test.txt" --seq $T | loss)

echo "== local-only: each worker alone, $((R * S)) steps"
sum=0
for shard in "$out"/fedavg/shards/shard-*; do
    name=$(basename "$shard"); name=${name%.*}
    "$fp" finetune --model "$model" --data "$shard" --out "$out/local/$name" \
        --steps $((R * S)) "${common[@]}" --val-fraction 0.1 --split-seed 0 --seed 1 2>/dev/null >/dev/null
    l=$("$fp" eval --model "$model" --adapter "$out/local/$name" --data "$out/test.txt" --seq $T | loss)
    echo "   $name: $l"
    sum=$(awk -v a="$sum" -v b="$l" 'BEGIN { print a + b }')
done
loc=$(awk -v s="$sum" -v n=$W 'BEGIN { printf "%.4f", s / n }')

printf '\n| method | held-out loss (last 4,000 lines) | federated validation loss | wall |\n| --- | --- | --- | --- |\n'
printf '| base model, no adapter | %s | | |\n' "$base"
printf '%s\n' "${rows[@]}"
printf '| centralized LoRA, same token budget | %s | | |\n| local-only, mean of %d workers | %s | | |\n' "$cen" $W "$loc"

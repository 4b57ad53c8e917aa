#!/usr/bin/env bash
# Quality study (issue 4): Shakespeare split by speaker, stories260K, 8 workers.
# Compares, at the same total token budget, the held-out loss of
#   - FedAvg (fedpeft simulate: 8 workers, R rounds x S local steps each),
#   - centralized LoRA (fedpeft finetune on the pooled training text, R*8*S steps),
#   - local-only (each worker alone on its shard for R*S steps; mean over workers).
# Every method is evaluated on the same text no worker holds: the last 4,000 lines of
# tinyshakespeare. Usage: bench/quality_study.sh [BUILD_DIR] [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-build}" && pwd)
out=${2:-quality-study}
fp="$build/fedpeft"
R=10 S=30 B=8 T=128 LR=5e-3 W=8
mkdir -p "$out"
out=$(cd "$out" && pwd)
common=(--targets all-linear --rank 8 --alpha 16 --batch $B --seq $T --lr $LR --max-grad-norm 1.0)

head -n 36000 "$here/data/tinyshakespeare/input.txt" > "$out/train.txt"
tail -n +36001 "$here/data/tinyshakespeare/input.txt" > "$out/test.txt"
loss() { sed -E 's/.*"loss": ([0-9.]+).*/\1/'; }

echo "== FedAvg: $W workers, $R rounds x $S local steps"
"$fp" simulate --config "$here/configs/simulate-shakespeare.ini" \
    --simulate.data="$out/train.txt" --simulate.out_dir="$out/fedavg" \
    --simulate.workers=$W --run.rounds=$R --train.local_steps=$S --train.batch=$B \
    --train.seq=$T --train.lr=$LR
model="$out/fedavg/model"
base=$("$fp" eval --model "$model" --data "$out/test.txt" --seq $T | loss)
fed=$("$fp" eval --model "$model" --adapter "$out/fedavg/adapter" --data "$out/test.txt" --seq $T | loss)
fedval=$(tail -n 1 "$out/fedavg/state/metrics.jsonl" | sed -E 's/.*"val_loss": ?([0-9.]+).*/\1/')

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

printf '\n| method | held-out loss (last 4,000 lines) |\n| --- | --- |\n'
printf '| base model, no adapter | %s |\n| FedAvg, %d workers x %d rounds | %s (federated validation loss %s) |\n' "$base" $W $R "$fed" "$fedval"
printf '| centralized LoRA, same token budget | %s |\n| local-only, mean of %d workers | %s |\n' "$cen" $W "$loc"

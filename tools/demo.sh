#!/usr/bin/env bash
# The README demo: fine-tune the bundled stories260K model (trained on children's
# stories) with LoRA on Shakespeare, and show the held-out loss before and after
# and a sample. Usage: tools/demo.sh [BUILD_DIR]   (default: build)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
fp="$build/fedpeft"
[ -x "$fp" ] || { echo "demo: $fp not found: build first (cmake -S . -B $build && cmake --build $build)" >&2; exit 1; }
out="$build/demo"
mkdir -p "$out"

echo "== 1. convert the llama2.c checkpoint into a Hugging Face directory"
"$fp" convert --llama2c "$here/data/stories260K/stories260K.bin" \
    --tokenizer "$here/data/stories260K/tok512.bin" --out "$out/stories260K"

echo "== 2. hold out the last 4,000 lines of Shakespeare for evaluation"
head -n 36000 "$here/data/tinyshakespeare/input.txt" > "$out/train.txt"
tail -n +36001 "$here/data/tinyshakespeare/input.txt" > "$out/valid.txt"

echo "== 3. loss of the base model on the held-out text"
before=$("$fp" eval --model "$out/stories260K" --data "$out/valid.txt" --seq 128)
echo "$before"

echo "== 4. LoRA fine-tune (rank 8 on every linear layer)"
"$fp" finetune --model "$out/stories260K" --data "$out/train.txt" --out "$out/adapter" \
    --targets all-linear --rank 8 --alpha 16 --steps 300 --batch 8 --seq 128 --lr 5e-3 \
    --schedule cosine --warmup 20 --max-grad-norm 1.0 --seed 1

echo "== 5. loss with the adapter on the same held-out text"
after=$("$fp" eval --model "$out/stories260K" --adapter "$out/adapter" --data "$out/valid.txt" --seq 128)
echo "$after"
lb=$(sed -E 's/.*"loss": ([0-9.]+).*/\1/' <<<"$before")
la=$(sed -E 's/.*"loss": ([0-9.]+).*/\1/' <<<"$after")
echo "held-out loss: before $lb -> after $la"

echo "== 6. a sample from the adapted model"
"$fp" generate --model "$out/stories260K" --adapter "$out/adapter" --prompt "ROMEO:" \
    -n 120 --temperature 0.8 --top-p 0.9 --seed 7
echo "adapter (PEFT format): $out/adapter"

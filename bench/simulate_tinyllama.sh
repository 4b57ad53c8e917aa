#!/bin/bash
# simulate_tinyllama.sh [DTYPE] [WORKERS] [OUT] - a TinyLlama-1.1B-shaped federation on
# one machine (issue 14): writes a random f32 model of that shape (dim 2048, 22 layers,
# 32 heads, 4 KV heads, hidden 5632, vocab 32000; 4.4 GB) with the bundled llama2
# tokenizer, runs `fedpeft simulate` with WORKERS workers (default 8) for one round on
# tinyshakespeare with base format DTYPE (default f32: every worker maps the same file;
# bf16/int8/nf4: each holds its own quantized copy), and samples every fedpeft process
# once a second. Prints the peak of the sum of PSS (shared page-cache pages counted
# once: what the machine spends) and of the sum of RSS (each process's resident pages).
# A benchmark: it prints figures and asserts nothing. Needs build/ (Release).
# heartbeat_ms is raised to 20 s: with 8 workers on 2 cores one forward pass of a batch
# takes longer than the default 3 missed heartbeats (1 s each), and a worker that
# heartbeats only between batches and steps is then declared dead.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
DT=${1:-f32}
N=${2:-8}
OUT=${3:-$SRC/build/bench-tinyllama}
FP=$SRC/build/fedpeft
MODEL=$OUT/model-tinyllama
mkdir -p "$OUT"
if [ ! -e "$MODEL/config.json" ]; then
    "$FP" bench train --dim 2048 --layers 22 --heads 32 --kv-heads 4 --hidden 5632 \
        --vocab 32000 --write-model "$MODEL"
    cp "$SRC/tests/fixtures/tokenizers/llama2/tokenizer.json" "$MODEL/"
fi

# Sum of Pss and Rss (KiB) over fedpeft processes, from /proc/PID/smaps_rollup.
sample() {
    local pss=0 rss=0 p v
    for p in $(pgrep -f 'fedpeft-(worker|coordinator)' || true); do
        v=$(awk '/^Pss:/{p=$2} /^Rss:/{r=$2} END{print p+0, r+0}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
        pss=$((pss + ${v% *})); rss=$((rss + ${v#* }))
    done
    echo "$pss $rss"
}

"$FP" simulate --config "$SRC/configs/simulate-shakespeare.ini" --simulate.workers="$N" \
    --simulate.model="$MODEL" --simulate.out_dir="$OUT/sim-$DT" --model.dtype="$DT" \
    --run.rounds=1 --lora.targets=q_proj,k_proj,v_proj,o_proj --train.local_steps=1 \
    --train.batch=1 --train.seq=64 --worker.val_fraction=0.01 --worker.threads=1 \
    --round.deadline_s=3600 --round.eval_deadline_s=3600 --round.start_timeout_s=600 \
    --network.heartbeat_ms=20000 \
    >"$OUT/simulate-$DT.log" 2>&1 &
SIM=$!
peak_pss=0 peak_rss=0 t0=$(date +%s)
while kill -0 "$SIM" 2>/dev/null; do
    read -r pss rss < <(sample)
    [ "$pss" -gt "$peak_pss" ] && peak_pss=$pss
    [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
    sleep 1
done
rc=0
wait "$SIM" || rc=$?
cat "$OUT/simulate-$DT.log"
[ "$rc" -eq 0 ] || echo "simulate failed (exit $rc); the figures below are of what ran"
awk -v d="$DT" -v n="$N" -v p="$peak_pss" -v r="$peak_rss" -v s=$(($(date +%s) - t0)) 'BEGIN {
    printf "TinyLlama-1.1B shape, %s base, %d workers + coordinator: peak total PSS %.2f GiB, peak sum of RSS %.2f GiB, %d s\n",
           d, n, p / 1048576, r / 1048576, s }'

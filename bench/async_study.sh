#!/usr/bin/env bash
# Asynchronous rounds with stragglers (issue 15): the quality study's task (Shakespeare by
# speaker, stories260K, 8 workers, 30 local steps of 8 x 128, secure aggregation on) with
# two of the eight workers at a quarter of their speed ([simulate] slow_workers, a real
# SIGSTOP/SIGCONT throttle). Runs
#   - sync FedAvg, 10 rounds (the quality study's budget: 80 updates), with the stragglers;
#   - sync FedAvg without stragglers (the reference wall time);
#   - async FedBuff, buffer K = 4, with the stragglers, for V versions (default 30; 20 is
#     the same 80 updates);
# each writing its adapter after every round ([run] save_every = 1). Every snapshot is
# evaluated on the held-out text (the last 4,000 lines of tinyshakespeare, which no worker
# holds) and placed at its wall time since training began (metrics.jsonl "unix_s", after
# round 0's evaluation). Prints a table, when async first reaches the sync run's final
# held-out loss and what fraction of the sync wall time that is, and draws held-out loss
# against wall time (async-vs-sync.svg). A benchmark: it prints figures and asserts nothing.
# Usage: bench/async_study.sh [BUILD_DIR] [OUT_DIR]   (env: VERSIONS, SLOW)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-build}" && pwd)
out=${2:-async-study}
fp="$build/fedpeft"
R=10 S=30 B=8 T=128 LR=5e-3 W=8 K=4
V=${VERSIONS:-30} SLOW=${SLOW:-w03:4,w07:4}
mkdir -p "$out"
out=$(cd "$out" && pwd)
head -n 36000 "$here/data/tinyshakespeare/input.txt" > "$out/train.txt"
tail -n +36001 "$here/data/tinyshakespeare/input.txt" > "$out/test.txt"
loss() { sed -E 's/.*"loss": ([0-9.]+).*/\1/'; }

runs=("sync-slow|sync FedAvg, $R rounds, $SLOW slower|--run.rounds=$R --simulate.slow_workers=$SLOW"
      "sync-fast|sync FedAvg, $R rounds, no straggler|--run.rounds=$R"
      "async-slow|async FedBuff K = $K, $V versions, $SLOW slower|--run.rounds=$V --round.mode=async --round.buffer=$K --simulate.slow_workers=$SLOW")
model="$out/sync-slow/model"
declare -A final_loss wall
for r in "${runs[@]}"; do
    IFS='|' read -r name label args <<<"$r"
    echo "== $label"
    # shellcheck disable=SC2086
    "$fp" simulate --config "$here/configs/simulate-shakespeare.ini" \
        --simulate.data="$out/train.txt" --simulate.out_dir="$out/$name" \
        --simulate.workers=$W --train.batch=$B --train.seq=$T --train.lr=$LR \
        --train.local_steps=$S --run.save_every=1 $args > "$out/$name.log" 2>&1 \
        || { echo "run failed: see $out/$name.log"; tail -5 "$out/$name.log"; exit 1; }
    m="$out/$name/state/metrics.jsonl"
    t0=$(head -n 1 "$m" | sed -E 's/.*"unix_s":([0-9.]+).*/\1/')
    : > "$out/$name.tsv"
    while read -r line; do
        rd=$(sed -E 's/^\{"round":([0-9]+),.*/\1/' <<<"$line")
        [ "$rd" -gt 0 ] || continue
        snap="$out/$name/state/adapters/round-$rd"
        [ -d "$snap" ] || continue      # an abandoned round writes none
        t=$(sed -E 's/.*"unix_s":([0-9.]+).*/\1/' <<<"$line")
        held=$("$fp" eval --model "$model" --adapter "$snap" --data "$out/test.txt" --seq $T | loss)
        printf '%s\t%.1f\t%s\n' "$rd" "$(awk -v a="$t" -v b="$t0" 'BEGIN { print a - b }')" \
            "$held" >> "$out/$name.tsv"
    done < "$m"
    final_loss[$name]=$(tail -n 1 "$out/$name.tsv" | cut -f3)
    wall[$name]=$(tail -n 1 "$out/$name.tsv" | cut -f2)
    echo "   final held-out loss ${final_loss[$name]} after ${wall[$name]} s"
done

# async at the sync run's budget (R x W updates = R x W / K versions), and the first
# version whose held-out loss is at or below the sync run's final one
same=$((R * W / K))
same_row=$(awk -F'\t' -v v=$same '$1 == v' "$out/async-slow.tsv")
reach=$(awk -F'\t' -v L="${final_loss[sync-slow]}" '$3 <= L { print; exit }' "$out/async-slow.tsv")

printf '\n| run | rounds / versions | wall (s, after round 0) | held-out loss |\n| --- | --- | --- | --- |\n'
for r in "${runs[@]}"; do
    IFS='|' read -r name label args <<<"$r"
    printf '| %s | %s | %s | %s |\n' "$label" "$(tail -n 1 "$out/$name.tsv" | cut -f1)" \
        "${wall[$name]}" "${final_loss[$name]}"
done
[ -n "$same_row" ] && printf '| async at the sync budget (%d updates) | %s | %s | %s |\n' \
    $((R * W)) "$(cut -f1 <<<"$same_row")" "$(cut -f2 <<<"$same_row")" "$(cut -f3 <<<"$same_row")"
if [ -n "$reach" ]; then
    tr=$(cut -f2 <<<"$reach")
    printf '\nasync reaches the sync run'"'"'s final held-out loss %s at version %s after %s s = %.0f%% of the sync wall time (%s s)\n' \
        "${final_loss[sync-slow]}" "$(cut -f1 <<<"$reach")" "$tr" \
        "$(awk -v a="$tr" -v b="${wall[sync-slow]}" 'BEGIN { print 100 * a / b }')" "${wall[sync-slow]}"
else
    echo "async did not reach the sync run's final held-out loss ${final_loss[sync-slow]} in $V versions"
fi

# held-out loss against wall time, one polyline per run
awk -F'\t' -v out="$out/async-vs-sync.svg" '
    FNR == 1 { n++; name[n] = FILENAME; sub(/.*\//, "", name[n]); sub(/\.tsv$/, "", name[n]) }
    { k = ++cnt[n]; x[n, k] = $2; y[n, k] = $3
      if ($2 > xmax) xmax = $2; if (ymin == "" || $3 < ymin) ymin = $3; if ($3 > ymax) ymax = $3 }
    END {
        Wd = 640; Ht = 360; L = 60; R = 170; Tp = 16; Bt = 44
        pad = (ymax - ymin) * 0.08 + 1e-3; ymin -= pad; ymax += pad
        split("#d93025 #1a73e8 #188038", col, " ")
        printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", Wd, Ht > out
        printf "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#fff\" stroke=\"#c9ced8\"/>\n", L, Tp, Wd - L - R, Ht - Tp - Bt > out
        for (i = 0; i <= 4; i++) {
            v = ymin + (ymax - ymin) * i / 4; yy = Tp + (ymax - v) / (ymax - ymin) * (Ht - Tp - Bt)
            printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" dy=\"4\">%.3f</text>\n", L - 6, yy, v > out
            t = xmax * i / 4; xx = L + t / xmax * (Wd - L - R)
            printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.0f</text>\n", xx, Ht - Bt + 16, t > out
        }
        printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">wall seconds after round 0</text>\n", (L + Wd - R) / 2, Ht - 8 > out
        printf "<text transform=\"translate(14,%d) rotate(-90)\" text-anchor=\"middle\">held-out loss</text>\n", (Tp + Ht - Bt) / 2 > out
        for (s = 1; s <= n; s++) {
            d = ""
            for (k = 1; k <= cnt[s]; k++)
                d = d sprintf("%s%.1f,%.1f ", k == 1 ? "M" : "L", L + x[s, k] / xmax * (Wd - L - R),
                              Tp + (ymax - y[s, k]) / (ymax - ymin) * (Ht - Tp - Bt))
            printf "<path d=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"/>\n", d, col[s] > out
            printf "<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", Wd - R + 8, Tp + 14 * s, col[s], name[s] > out
        }
        print "</svg>" > out
    }' "$out/sync-slow.tsv" "$out/sync-fast.tsv" "$out/async-slow.tsv"
echo "plot: $out/async-vs-sync.svg"

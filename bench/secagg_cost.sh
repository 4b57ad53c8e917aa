#!/usr/bin/env bash
# Cost of secure aggregation (issue 5): wire bytes and seconds per round with and without
# SecAgg, for 8 and 32 workers on loopback. Runs `fedpeft simulate` four times,
# {8, 32 workers} x {[secagg] enabled = true (the default), false}, with a small per-round
# workload so that the protocol's cost shows: ROUNDS rounds of STEPS local steps of
# BATCH x SEQ tokens, LoRA as in configs/simulate-shakespeare.ini (rank 8, alpha 16, every
# linear layer), tinyshakespeare split by speaker, CURVE on, one OpenBLAS thread per worker.
# Then prints one table row per run from OUT/RUN/state/metrics.jsonl (means over the
# training rounds 1..ROUNDS; round 0, the evaluation of the base model, is left out) and
# the secure/plain differences.
#
# Usage: bench/secagg_cost.sh [BUILD_DIR] [OUT_DIR]
# Environment: ROUNDS (10), STEPS (2), BATCH (2), SEQ (64), WORKERS ("8 32"),
#              PARTITION (speaker; it gives 32 shards of >= 100 examples each).
#
# Bytes are what the coordinator counts: the packed size of every Envelope it sends (down)
# or receives (up), heartbeats, evaluation tasks and results included; ZeroMQ framing,
# CURVE's per-message box (about 33 bytes) and TCP/IP headers are not counted.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-build}" && pwd)
out=${2:-secagg-cost}
fp="$build/fedpeft"
ROUNDS=${ROUNDS:-10} STEPS=${STEPS:-2} BATCH=${BATCH:-2} SEQ=${SEQ:-64}
WORKERS=${WORKERS:-"8 32"} PARTITION=${PARTITION:-speaker}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Deadlines are generous (32 worker processes may share 2 cores): a round ends as soon as
# every sampled worker has answered, so they cost nothing unless something is slow, and
# nobody is abandoned for being slow. The secagg key and share phases wait at most 25% of
# deadline_s each.
settings=(--run.rounds="$ROUNDS" --train.local_steps="$STEPS" --train.batch="$BATCH"
          --train.seq="$SEQ" --round.deadline_s=600 --round.start_timeout_s=600
          --round.eval_deadline_s=600 --round.min_quorum=1 --simulate.partition="$PARTITION"
          --simulate.insecure=false --worker.threads=1)

# One run's summary line (tab-separated) from its metrics.jsonl.
summarize() { # FILE N SECAGG WALL LOAD
    awk -v n="$2" -v sa="$3" -v wall="$4" -v load="$5" '
    function num(k,   m) {            # "k":NUMBER anywhere on the line (flat keys are unique)
        if (match($0, "\"" k "\":-?[0-9.eE+-]+")) { m = substr($0, RSTART, RLENGTH); sub(/^[^:]*:/, "", m); return m + 0 }
        return "nan"
    }
    {
        r = num("round")
        if (r == 0) { up0 = num("bytes_up"); down0 = num("bytes_down"); next }
        k++
        if ($0 ~ /"abandoned":true/ || num("sampled") != n || num("reported") != n || num("dropped") != 0) bad++
        if (($0 ~ /"secagg":true/) != (sa == "on")) bad++
        up += num("bytes_up"); down += num("bytes_down")
        tr += num("train"); ag += num("aggregate"); ev += num("eval"); ck += num("checkpoint")
        if ($0 ~ /"val_loss":[0-9]/) val = num("val_loss")
    }
    END {
        if (!k) { print "no training rounds in " FILENAME > "/dev/stderr"; exit 1 }
        printf "%d\t%s\t%d\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.4f\t%.1f\t%s\t%.0f\t%.0f\n",
            n, sa, k, bad + 0, up / k, down / k, up / k / n, down / k / n,
            (tr + ag + ev + ck) / k, tr / k, ag / k, ev / k, ck / k, val, wall, load, up0, down0
    }' "$1"
}

summary="$out/summary.tsv"
: > "$summary"
for n in $WORKERS; do
    for sa in on off; do
        run="$out/w$n-secagg-$sa"
        enabled=true; [ "$sa" = off ] && enabled=false
        load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')
        echo "== $n workers, secure aggregation $sa: $run (load average $load)"
        t0=$(date +%s.%N)
        "$fp" simulate --config "$here/configs/simulate-shakespeare.ini" --simulate.out_dir="$run" \
            --simulate.workers="$n" --secagg.enabled="$enabled" --privacy.require_secagg="$enabled" \
            "${settings[@]}"
        t1=$(date +%s.%N)
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
        summarize "$run/state/metrics.jsonl" "$n" "$sa" "$wall" "$load" >> "$summary"
    done
done

kib() { awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%.2f MiB", b / 1048576; else printf "%.1f KiB", b / 1024 }'; }
bad=0
printf '\n%s rounds x %s local steps of %s x %s tokens; means over rounds 1..%s (round 0 = evaluation only, left out)\n\n' \
    "$ROUNDS" "$STEPS" "$BATCH" "$SEQ" "$ROUNDS"
printf '| workers | secagg | rounds ok | up / round | down / round | up / worker / round | down / worker / round | s / round | train s | aggregate s | eval s | checkpoint s | final val loss | wall s | load |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
while IFS=$'\t' read -r n sa k nbad up down upw downw s tr ag ev ck val wall load up0 down0; do
    bad=$((bad + nbad))
    printf '| %s | %s | %s/%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$n" "$sa" $((k - nbad)) "$k" "$(kib "$up")" "$(kib "$down")" "$(kib "$upw")" "$(kib "$downw")" \
        "$s" "$tr" "$ag" "$ev" "$ck" "$val" "$wall" "$load"
done < "$summary"

printf '\nSecure minus plain, per worker per round (bytes) and per round (seconds of the train phase,\nwhich holds the whole SecAgg exchange: keys, shares, training, masked upload, unmasking):\n\n'
printf '| workers | extra up / worker | extra down / worker | extra up+down at the coordinator | train s on | train s off |\n'
printf '| --- | --- | --- | --- | --- | --- |\n'
awk -F'\t' '
    { key = $1; if ($2 == "on") { on_up[key] = $7; on_dn[key] = $8; on_tr[key] = $10 } else { off_up[key] = $7; off_dn[key] = $8; off_tr[key] = $10 }; if (!(key in seen)) { seen[key] = 1; order[++m] = key } }
    END { for (i = 1; i <= m; i++) { k = order[i]; if ((k in on_up) && (k in off_up))
        printf "| %s | %+.0f B | %+.0f B | %+.0f B | %.3f | %.3f |\n", k, on_up[k] - off_up[k], on_dn[k] - off_dn[k], (on_up[k] - off_up[k] + on_dn[k] - off_dn[k]) * k, on_tr[k], off_tr[k] } }
' "$summary"

printf '\nRound 0 (evaluation only) per run, bytes up / down: '
awk -F'\t' '{ printf "%s%s workers %s: %d / %d", (NR > 1 ? "; " : ""), $1, $2, $17, $18 } END { print "" }' "$summary"
if [ "$bad" -ne 0 ]; then
    echo "WARNING: $bad round(s) were abandoned, lost a worker or ran with the wrong aggregation: see the logs in $out/*/logs" >&2
    exit 1
fi
echo "every round: all sampled workers reported, none dropped"

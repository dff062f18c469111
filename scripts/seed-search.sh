#!/bin/sh
# Runs a scenario over seeds, or one seed again and again, and prints one line per run:
#
#   seed 7 run 1: fail (data-from-the-future failed-cleanly) held 6412 ms  reports/...
#
# "held" is how long the witness disk held the first read a disk fault (latency or hang)
# fired on: the history's completion time of that request minus its submission. A race
# that depends on a `latency` hold happens at the seeds where it is long; with a `hang`
# (teardown-race) it is the time the run took to act before it let the read go.
#
# usage: scripts/seed-search.sh SCENARIO FIRST LAST [blockwitness run options...]
#        scripts/seed-search.sh --replay SCENARIO SEED COUNT [blockwitness run options...]
#
# BLOCKWITNESS names the binary (default: target/release/blockwitness, built if missing).
set -eu

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 3 ] || usage
if [ "$1" = "--replay" ]; then
    scenario=$2 first=$3 last=$3 repeat=$4
    shift 4
else
    scenario=$1 first=$2 last=$3 repeat=1
    shift 3
fi
case "$first$last$repeat" in
*[!0-9]*) usage ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BLOCKWITNESS:-$root/target/release/blockwitness}
if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release --bin blockwitness --bin bw-disk) >&2
fi
disk=$(dirname "$bin")/bw-disk

# How long the first request a disk fault fired on was held, in ms ("-" if none).
held_ms() {
    history=$1
    [ -f "$history" ] && [ -x "$disk" ] || { echo -; return; }
    "$disk" history "$history" --records 2>/dev/null | awk '
        /^mark .*FaultFired/ && want == "" {
            match($0, /seq: [0-9]+/); want = substr($0, RSTART + 5, RLENGTH - 5)
        }
        /^req / { submit[$2] = $0 }
        END {
            if (want == "" || !(want in submit)) { print "-"; exit }
            n = split(submit[want], f, " ")
            for (i = 1; i <= n; i++) {
                if (f[i] == "submit") s = f[i + 1]
                if (f[i] == "done") { d = f[i + 1]; gsub(/[^0-9]/, "", d) }
            }
            if (d == "") { print "never"; exit }
            printf "%d", (d - s) / 1000000
        }'
}

seed=$first
while [ "$seed" -le "$last" ]; do
    i=1
    while [ "$i" -le "$repeat" ]; do
        out=$("$bin" run "$scenario" --seed "$seed" --plain "$@" 2>/dev/null || true)
        report=$(printf '%s\n' "$out" | sed -n 's/^  report: \(.*\)\/index.html$/\1/p' | tail -n 1)
        verdict=- found= held=-
        if [ -n "$report" ] && [ -f "$report/summary.json" ]; then
            verdict=$(jq -r .verdict "$report/summary.json")
            found=$(jq -r '([.counts | to_entries[] | select(.value > 0 and .key != "ok" and .key != "excluded") | .key] + .outcomes) | join(" ")' "$report/summary.json")
            first_history=$(ls "$report"/history-*.bwhist 2>/dev/null | head -n 1)
            held=$(held_ms "${first_history:-}")
        fi
        echo "seed $seed run $i: $verdict ($found) held $held ms  $report"
        i=$((i + 1))
    done
    seed=$((seed + 1))
done

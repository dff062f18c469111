#!/bin/sh
# guest-check.sh DEV MNT NAME: stamped workloads on MNT (the filesystem on DEV), then a sample
# of the newest piece at every device place is read from DEV and compared with the file.
dev=$1 mnt=$2 name=$3
work=$mnt/work
logs=/tmp/logs-$name
mkdir -p "$work" "$logs"
fail=0
w=0
for k in "fill --bytes 3MiB --max-file-size 512KiB" "overwrite --ops 60" "append --ops 15" \
         "delete-rewrite --ops 6 --max-file-size 256KiB" "overwrite --ops 40 --max-write 16KiB"; do
    w=$((w + 1))
    out=$(/bin/bw-workload $k --dir "$work" --stamped --seed 9 --writer $w --log "$logs/$w.log")
    rc=$?
    echo "$name writer $w ($k): rc $rc $(echo "$out" | grep -o '"writes":[0-9]*') $(echo "$out" | grep -o '"failure":[a-z"-]*') $(echo "$out" | grep -o '"errors":\[[^]]*\]')"
    [ $rc = 0 ] || fail=1
done
sync
for i in 1 2 3 4 5; do cat "$logs/$i.log"; done | tac | awk '
{
    if (!match($0, /"pieces":\[[0-9,]*\]/)) next
    p = substr($0, RSTART + 10, RLENGTH - 11)
    n = split(p, ps, ",")
    match($0, /"file":"[^"]*"/); f = substr($0, RSTART + 8, RLENGTH - 9)
    match($0, /"offset":[0-9]+/); off = substr($0, RSTART + 9, RLENGTH - 9)
    len = 4096 / n
    for (j = 1; j <= n; j++) {
        pl = ps[j]
        if (pl in seen) continue
        seen[pl] = 1
        if (++u % 3) continue
        printf "%d %d %s %d\n", pl, len, f, off + (j - 1) * len
    }
}' > "$logs/places"
checked=0 bad=0 gone=0 plen=0
while read place len file foff; do
    plen=$len
    if [ ! -f "$work/$file" ]; then gone=$((gone + 1)); continue; fi
    dd if="$dev" of=/tmp/a bs=$len skip=$((place / len)) count=1 iflag=direct 2>/dev/null
    dd if="$work/$file" of=/tmp/b bs=$len skip=$((foff / len)) count=1 2>/dev/null
    if [ ! -s /tmp/b ]; then gone=$((gone + 1)); continue; fi
    if cmp -s /tmp/a /tmp/b; then checked=$((checked + 1)); else bad=$((bad + 1)); echo "MISMATCH $place $len $file $foff"; fi
done < "$logs/places"
echo "$name: $plen-byte pieces: $checked sampled pieces match the device, $bad do not, $gone in deleted files"
[ $bad = 0 ] && [ $checked -gt 100 ] && [ $fail = 0 ] && echo "$name: OK" || { echo "$name: FAILED"; exit 1; }

#!/bin/sh
# Stamped workloads inside a real guest kernel on every filesystem block size: xfs
# (4 KiB), ext4 with 1 and 2 KiB blocks, ext2 with 1 KiB blocks. Every kind runs stamped
# and must end without a failure; then a sample of the newest piece at every device place
# is read from the raw device and compared with the file (guest-check.sh).
#
# Usage, as root from the repository root, after `blockwitness images build`:
#   guest/tests/vm/stamps-on-every-fs.sh [IMAGE]        (default debian-6.1)
# Prints "NAME: OK" per filesystem; exits non-zero on any failure.
set -eu
image=${1:-debian-6.1}
here=$(cd "$(dirname "$0")" && pwd)
pop=$(mktemp -d)
trap 'rm -rf "$pop"' EXIT
cp "$here/guest-check.sh" "$here/guest-run.sh" "$pop/"
mkfs.ext4 -q -F -b 1024 "$pop/ext4-1k.img" 24M >/dev/null
mkfs.ext4 -q -F -b 2048 "$pop/ext4-2k.img" 24M >/dev/null
mkfs.ext2 -q -F -b 1024 "$pop/ext2-1k.img" 24M >/dev/null
# bw-d0 carries the scripts and images, bw-d1 is xfs, bw-d2..4 receive the images.
cargo run --quiet --release --bin blockwitness -- exec --image "$image" \
    --disk "200:ext4:$pop" --disk 400:xfs --disk 24 --disk 24 --disk 24 --module xfs -- \
    sh -c 'mkdir -p /mnt/o
           for b in /sys/block/vd*; do
               [ "$(cat $b/serial)" = bw-d0 ] && mount -t ext4 /dev/${b##*/} /mnt/o
           done
           sh /mnt/o/guest-run.sh'

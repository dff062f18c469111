# Load and unload 100 times, 10 of them with a snapshot set up and torn down.
. ./lib.sh
mount $VOL /mnt || die "mount $VOL"
i=0
while [ $i -lt 100 ]; do
	insmod /lib/modules/bwsnap.ko || { fail "insmod $i"; break; }
	if [ $((i % 10)) -eq 0 ]; then
		$CTL setup --minor $((i % 32)) --cow /mnt/cow --cow-size 1m $VOL || fail "setup $i"
		$CTL start $((i % 32)) || fail "start $i"
		dd if=/dev/urandom of=/mnt/f bs=64k count=4 conv=fsync 2>/dev/null
		dd if=/dev/bwsnap$((i % 32)) of=/dev/null bs=1M count=1 2>/dev/null || fail "read $i"
		rmmod bwsnap 2>/dev/null && fail "rmmod with a snapshot $i"
		$CTL destroy $((i % 32)) || fail "destroy $i"
		rm -f /mnt/cow
	fi
	rmmod bwsnap || { fail "rmmod $i"; break; }
	i=$((i + 1))
done
check "100 cycles" test $i -eq 100
check "module gone" sh -c "! grep -q '^bwsnap ' /proc/modules"
umount /mnt
finish

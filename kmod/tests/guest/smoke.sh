# Load, look at the control device and the hooked symbol, unload.
. ./lib.sh
load
check "control device exists" test -c /dev/bwsnap-ctl
grep -E " (submit_bio|submit_bio_noacct)$" /proc/kallsyms
check "unused minor reads as none" sh -c "$CTL info 0 | grep -q None"
expect_errno 22 "info on minor 32" $CTL info 32
check "rmmod" rmmod bwsnap
finish

# Take down whatever a failed test left behind (snapshots, mounts, the module), so the
# next test in the same guest starts clean. Best effort; always exits 0.
BWTEST_CONTINUE=1
. ./lib.sh
reset_all

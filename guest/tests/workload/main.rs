//! bw-workload against real filesystems on the host: determinism per seed, paced runs
//! that do the same whatever the grant timing, stamps that sit where they say (checked on
//! the raw image of loop-mounted ext2 and ext4 with 1, 2 and 4 KiB blocks and xfs),
//! raw-device mode on a plain file, ENOSPC as the expected end of fill-to-full, rate
//! limits, SIGTERM, writes blocked by a frozen filesystem, and failed runs saying so.
//!
//! Loop mounts and tmpfs need root and mkfs tools; without them those tests say
//! "skipped" on stderr and pass, except under CI (CI=true), where they fail.

mod determinism;
mod limits;
mod paced;
mod stamps;
mod support;

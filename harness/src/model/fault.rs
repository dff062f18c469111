//! Every fault kind a scenario can inject: its name in scenario files, the layer it is
//! injected at, its parameters and what it does. The scenario key table, the validation,
//! the generated docs, the proxy and the pipelines all derive from [`FaultKind`]; adding a
//! kind here makes every exhaustive match over it ask for the new case.

use serde::{Deserialize, Serialize};

/// Where a fault is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layer {
    Module,
    Disk,
    Transport,
    Target,
    Guest,
    Agent,
}

impl Layer {
    pub const ALL: [Layer; 6] = [
        Layer::Module,
        Layer::Disk,
        Layer::Transport,
        Layer::Target,
        Layer::Guest,
        Layer::Agent,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Layer::Module => "module",
            Layer::Disk => "disk",
            Layer::Transport => "transport",
            Layer::Target => "target",
            Layer::Guest => "guest",
            Layer::Agent => "agent",
        }
    }
}

/// Whether a fault parameter must be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Required,
    Optional,
    /// Exactly one of the parameters marked `Either` must be given.
    Either,
}

/// A fault kind, as scenario files name it in `faults[].kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    CowReadLive,
    DropTracking,
    CorruptCow,
    DelayCow,
    DelayRead,
    OpenTeardown,
    DiskHang,
    DiskEio,
    DiskLatency,
    DiskTorn,
    BitFlip,
    Rewrite,
    DropFrame,
    Disconnect,
    WrongOffset,
    SkipVerify,
    CrashBeforeCommit,
    Reset,
    Panic,
    RemoveDisk,
    EndSnapshot,
    SkipBlocks,
}

use Need::{Either, Optional, Required};

impl FaultKind {
    /// Every kind, in the order of the docs' table.
    pub const ALL: [FaultKind; 22] = [
        FaultKind::CowReadLive,
        FaultKind::DropTracking,
        FaultKind::CorruptCow,
        FaultKind::DelayCow,
        FaultKind::DelayRead,
        FaultKind::OpenTeardown,
        FaultKind::DiskEio,
        FaultKind::DiskHang,
        FaultKind::DiskLatency,
        FaultKind::DiskTorn,
        FaultKind::BitFlip,
        FaultKind::Rewrite,
        FaultKind::DropFrame,
        FaultKind::Disconnect,
        FaultKind::WrongOffset,
        FaultKind::SkipVerify,
        FaultKind::CrashBeforeCommit,
        FaultKind::Reset,
        FaultKind::Panic,
        FaultKind::RemoveDisk,
        FaultKind::EndSnapshot,
        FaultKind::SkipBlocks,
    ];

    /// The kind's name as scenario files write it.
    pub const fn name(self) -> &'static str {
        match self {
            FaultKind::CowReadLive => "cow-read-live",
            FaultKind::DropTracking => "drop-tracking",
            FaultKind::CorruptCow => "corrupt-cow",
            FaultKind::DelayCow => "delay-cow",
            FaultKind::DelayRead => "delay-read",
            FaultKind::OpenTeardown => "open-teardown",
            FaultKind::DiskHang => "hang",
            FaultKind::DiskEio => "eio",
            FaultKind::DiskLatency => "latency",
            FaultKind::DiskTorn => "torn",
            FaultKind::BitFlip => "bit-flip",
            FaultKind::Rewrite => "rewrite",
            FaultKind::DropFrame => "drop-frame",
            FaultKind::Disconnect => "disconnect",
            FaultKind::WrongOffset => "wrong-offset",
            FaultKind::SkipVerify => "skip-verify",
            FaultKind::CrashBeforeCommit => "crash-before-commit",
            FaultKind::Reset => "reset",
            FaultKind::Panic => "panic",
            FaultKind::RemoveDisk => "remove-disk",
            FaultKind::EndSnapshot => "end-snapshot",
            FaultKind::SkipBlocks => "skip-blocks",
        }
    }

    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub const fn layer(self) -> Layer {
        match self {
            FaultKind::CowReadLive
            | FaultKind::DropTracking
            | FaultKind::CorruptCow
            | FaultKind::DelayCow
            | FaultKind::DelayRead
            | FaultKind::OpenTeardown => Layer::Module,
            FaultKind::DiskHang
            | FaultKind::DiskEio
            | FaultKind::DiskLatency
            | FaultKind::DiskTorn => Layer::Disk,
            FaultKind::BitFlip
            | FaultKind::Rewrite
            | FaultKind::DropFrame
            | FaultKind::Disconnect => Layer::Transport,
            FaultKind::WrongOffset | FaultKind::SkipVerify | FaultKind::CrashBeforeCommit => {
                Layer::Target
            }
            FaultKind::Reset
            | FaultKind::Panic
            | FaultKind::RemoveDisk
            | FaultKind::EndSnapshot => Layer::Guest,
            FaultKind::SkipBlocks => Layer::Agent,
        }
    }

    /// The `faults[]` keys the kind takes, and whether each must be given.
    pub const fn params(self) -> &'static [(&'static str, Need)] {
        match self {
            FaultKind::CowReadLive
            | FaultKind::DropTracking
            | FaultKind::CorruptCow
            | FaultKind::WrongOffset
            | FaultKind::SkipBlocks => &[("every", Required)],
            FaultKind::DelayCow | FaultKind::DelayRead => &[("ms", Required)],
            FaultKind::DiskEio | FaultKind::DiskHang => &[
                ("volume", Required),
                ("op", Optional),
                ("block", Optional),
                ("blocks", Optional),
                ("once", Optional),
                ("after_requests", Optional),
            ],
            FaultKind::DiskLatency => &[
                ("volume", Required),
                ("max_ms", Required),
                ("op", Optional),
                ("block", Optional),
                ("blocks", Optional),
            ],
            FaultKind::DiskTorn => &[("volume", Required), ("land", Optional)],
            FaultKind::BitFlip | FaultKind::Rewrite => &[("frame", Either), ("every", Either)],
            FaultKind::DropFrame => &[("frame", Required)],
            FaultKind::Disconnect => &[("after_frame", Required)],
            FaultKind::SkipVerify | FaultKind::CrashBeforeCommit | FaultKind::OpenTeardown => &[],
            FaultKind::Reset | FaultKind::Panic => &[("after_ms", Either), ("at_percent", Either)],
            FaultKind::RemoveDisk => &[("volume", Required), ("at", Optional)],
            FaultKind::EndSnapshot => &[("volume", Required), ("how", Optional)],
        }
    }

    /// What the fault does, for the generated docs.
    pub const fn doc(self) -> &'static str {
        match self {
            FaultKind::CowReadLive => "the module serves 1 read in `every` from the live disk instead of the COW copy (the intermittent field bug)",
            FaultKind::DropTracking => "the module drops 1 changed-block tracking update in `every` while tracking for this backup; `backup` must be an incremental",
            FaultKind::CorruptCow => "the module corrupts 1 COW copy in `every`",
            FaultKind::DelayCow => "the module delays every COW copy by `ms` milliseconds",
            FaultKind::DelayRead => "the module holds every snapshot read `ms` milliseconds before its I/O",
            FaultKind::OpenTeardown => "the module lets a snapshot read in flight when the snapshot stops serving (TO_INCREMENTAL, DESTROY) complete with what it read live instead of failing it with EIO: the teardown race re-opened on purpose (pairs with `end-snapshot`; logged for each block the read took live)",
            FaultKind::DiskEio => "from the backup's start until its end, the witness disk answers `op` requests to the volume (touching `blocks` 4 KiB blocks from `block`, if given) with an I/O error: every time, or only once with `once`; the first `after_requests` matching requests pass",
            FaultKind::DiskHang => "from the backup's start, the witness disk holds `op` requests to the volume (touching `blocks` blocks from `block`, if given; after `after_requests`; only the first with `once`) and never completes them until the run releases them at the backup's end",
            FaultKind::DiskLatency => "from the backup's start until its end, the witness disk holds each `op` request to the volume (touching `blocks` blocks from `block`, if given) for a delay in [0, `max_ms`] ms drawn from the run's seed (the same request gets the same delay in a replay)",
            FaultKind::DiskTorn => "after the snapshot instant, the next write to the volume covering more than `land` 4 KiB blocks (default 1) lands only its first `land` blocks and never completes; the run then resets the guest",
            FaultKind::BitFlip => "the proxy flips one bit in the data of block frame number `frame`, or of 1 frame in `every`",
            FaultKind::Rewrite => "the proxy flips one bit in the data of block frame number `frame` (or 1 frame in `every`) and rewrites the frame's hashes and the session's end digest to match: corruption the protocol cannot see",
            FaultKind::DropFrame => "the proxy drops block frame number `frame`",
            FaultKind::Disconnect => "the proxy closes both sides after block frame number `after_frame`; the agent should resume",
            FaultKind::WrongOffset => "the target writes 1 block in `every` at a wrong offset",
            FaultKind::SkipVerify => "the target does not re-read what it wrote before committing",
            FaultKind::CrashBeforeCommit => "the target aborts after the end frame, before the commit",
            FaultKind::Reset => "the harness resets the guest `after_ms` milliseconds into the backup, or when `at_percent` of the blocks crossed the transport",
            FaultKind::Panic => "the harness crashes the guest kernel (sysrq c) `after_ms` milliseconds into the backup, or when `at_percent` of the blocks crossed the transport",
            FaultKind::RemoveDisk => "the harness removes the volume's disk (QMP device_del) at the given moment of the backup",
            FaultKind::EndSnapshot => "while this backup's `latency` or `hang` disk fault holds a read of the volume's `block`s, the harness ends the volume's bwsnap snapshot (`how`: `to-incremental`, the default, or `destroy`), waits until the snapshot device is gone, overwrites those blocks through the live device and then lets a `hang` go; a read the module let through then returns data from the future (the teardown race)",
            FaultKind::SkipBlocks => "the agent leaves 1 block in `every` out of a full backup: it never crosses the transport; `backup` must be the full backup",
        }
    }

    /// `layer/kind`, as the nightly's detector matrix names a fault.
    pub fn label(self) -> String {
        format!("{}/{}", self.layer().name(), self.name())
    }
}

/// Which block frames a transport fault hits, numbered from 1 per session (every block
/// frame that reaches the proxy counts, resent ones included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameSel {
    Nth(u64),
    Every(u64),
}

impl FrameSel {
    /// Whether block frame number `n` is selected.
    pub fn hits(self, n: u64) -> bool {
        match self {
            FrameSel::Nth(k) => n == k,
            FrameSel::Every(k) => k > 0 && n.is_multiple_of(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_and_found_by_name() {
        for (i, k) in FaultKind::ALL.iter().enumerate() {
            assert_eq!(FaultKind::from_name(k.name()), Some(*k));
            assert!(!FaultKind::ALL[..i].contains(k), "{k:?} twice");
            assert!(!k.doc().is_empty());
        }
        assert_eq!(FaultKind::from_name("nope"), None);
    }

    #[test]
    fn frame_selection() {
        assert!(FrameSel::Nth(3).hits(3) && !FrameSel::Nth(3).hits(6));
        assert!(FrameSel::Every(3).hits(6) && !FrameSel::Every(3).hits(7));
        assert!(!FrameSel::Every(0).hits(0));
    }
}

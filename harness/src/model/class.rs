//! Block classes, run-level outcomes, the verdict of a run and the exit status it maps
//! to. Every enum here is matched exhaustively; "could not run" ([`Verdict::CouldNotRun`])
//! is a different variant from "ran and diverged" ([`Verdict::Fail`]).

use serde::{Deserialize, Serialize};

/// The class of one block: the first stage where it diverged from truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockClass {
    Ok,
    /// Snapshot != truth and == live: post-snapshot data. Culprit: the module.
    DataFromTheFuture,
    /// Snapshot != truth and != live. Culprit: the module.
    CorruptSnapshot,
    /// Incremental: changed but not sent; the target keeps old data.
    DataFromThePast,
    /// Full backup: never crossed the transport; or sent but absent at the target.
    MissingBlock,
    /// Snapshot == truth, transport != snapshot.
    TransportCorruption,
    /// Transport == truth, target re-read != transport.
    TargetCorruption,
    /// Differs from truth, and the stages that would say where were not recorded.
    Unattributed,
    /// A documented don't-care block (COW file extents, ...).
    Excluded,
}

impl BlockClass {
    pub const ALL: [BlockClass; 9] = [
        BlockClass::Ok,
        BlockClass::DataFromTheFuture,
        BlockClass::CorruptSnapshot,
        BlockClass::DataFromThePast,
        BlockClass::MissingBlock,
        BlockClass::TransportCorruption,
        BlockClass::TargetCorruption,
        BlockClass::Unattributed,
        BlockClass::Excluded,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            BlockClass::Ok => "ok",
            BlockClass::DataFromTheFuture => "data-from-the-future",
            BlockClass::CorruptSnapshot => "corrupt-snapshot",
            BlockClass::DataFromThePast => "data-from-the-past",
            BlockClass::MissingBlock => "missing-block",
            BlockClass::TransportCorruption => "transport-corruption",
            BlockClass::TargetCorruption => "target-corruption",
            BlockClass::Unattributed => "unattributed",
            BlockClass::Excluded => "excluded",
        }
    }

    pub fn from_name(name: &str) -> Option<BlockClass> {
        BlockClass::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether the block counts against a clean run.
    pub const fn is_problem(self) -> bool {
        match self {
            BlockClass::Ok | BlockClass::Excluded => false,
            BlockClass::DataFromTheFuture
            | BlockClass::CorruptSnapshot
            | BlockClass::DataFromThePast
            | BlockClass::MissingBlock
            | BlockClass::TransportCorruption
            | BlockClass::TargetCorruption
            | BlockClass::Unattributed => true,
        }
    }

    /// The part of the pipeline the class points at.
    pub const fn culprit(self) -> &'static str {
        match self {
            BlockClass::Ok | BlockClass::Excluded => "",
            BlockClass::DataFromTheFuture | BlockClass::CorruptSnapshot => "module",
            BlockClass::DataFromThePast => "module tracking or agent",
            BlockClass::MissingBlock => "agent",
            BlockClass::TransportCorruption => "transport",
            BlockClass::TargetCorruption => "target",
            BlockClass::Unattributed => "unknown (stages not recorded)",
        }
    }

    /// Compact code for block maps; the index in [`BlockClass::ALL`].
    pub fn code(self) -> u8 {
        BlockClass::ALL.iter().position(|c| *c == self).unwrap_or(0) as u8
    }

    /// Worst first: how the report orders its table of blocks.
    pub const fn severity(self) -> u8 {
        match self {
            BlockClass::DataFromTheFuture => 8,
            BlockClass::CorruptSnapshot => 7,
            BlockClass::DataFromThePast => 6,
            BlockClass::MissingBlock => 5,
            BlockClass::TargetCorruption => 4,
            BlockClass::TransportCorruption => 3,
            BlockClass::Unattributed => 2,
            BlockClass::Excluded => 1,
            BlockClass::Ok => 0,
        }
    }
}

/// A run-level outcome beside the blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The agent or target reported success on a wrong (or absent) backup: the worst.
    FalseSuccess,
    /// Nobody claimed success, nothing was committed, the previous generation is intact.
    FailedCleanly,
    GuestOops,
    GuestHang,
    VolumeVanished,
    /// Infrastructure: never a product pass or fail.
    HarnessError,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::FalseSuccess,
        Outcome::FailedCleanly,
        Outcome::GuestOops,
        Outcome::GuestHang,
        Outcome::VolumeVanished,
        Outcome::HarnessError,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::FalseSuccess => "false-success",
            Outcome::FailedCleanly => "failed-cleanly",
            Outcome::GuestOops => "guest-oops",
            Outcome::GuestHang => "guest-hang",
            Outcome::VolumeVanished => "volume-vanished",
            Outcome::HarnessError => "harness-error",
        }
    }
}

/// The verdict of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    /// The product did something the scenario does not allow.
    Fail {
        reasons: Vec<String>,
    },
    /// The harness could not run or judge the scenario: no product pass or fail.
    CouldNotRun {
        errors: Vec<String>,
    },
}

impl Verdict {
    pub fn exit(&self) -> Exit {
        match self {
            Verdict::Pass => Exit::Pass,
            Verdict::Fail { .. } => Exit::ProductFailure,
            Verdict::CouldNotRun { .. } => Exit::HarnessError,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail { .. } => "fail",
            Verdict::CouldNotRun { .. } => "harness-error",
        }
    }

    /// The reasons (failures or harness errors); empty for a pass.
    pub fn reasons(&self) -> &[String] {
        match self {
            Verdict::Pass => &[],
            Verdict::Fail { reasons } => reasons,
            Verdict::CouldNotRun { errors } => errors,
        }
    }
}

/// How a run (or a whole command) ends, for the process exit status: 0 pass, 1 product
/// failure, 2 harness error. Ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exit {
    Pass,
    ProductFailure,
    /// Infrastructure or bad input: never counted as a product pass or fail.
    HarnessError,
}

impl Exit {
    /// The process exit status.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Pass => 0,
            Exit::ProductFailure => 1,
            Exit::HarnessError => 2,
        }
    }

    /// The worse of two.
    pub fn worst(self, other: Exit) -> Exit {
        self.max(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_are_stable() {
        for (i, c) in BlockClass::ALL.iter().enumerate() {
            assert_eq!(c.code() as usize, i);
            assert_eq!(BlockClass::from_name(c.name()), Some(*c));
            assert_eq!(
                serde_json::to_string(c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
        for o in Outcome::ALL {
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                format!("\"{}\"", o.name())
            );
        }
        assert_eq!(Verdict::Pass.exit().code(), 0);
        assert_eq!(Verdict::Fail { reasons: vec![] }.exit().code(), 1);
        assert_eq!(Verdict::CouldNotRun { errors: vec![] }.exit().code(), 2);
        assert_eq!(Exit::Pass.worst(Exit::HarnessError), Exit::HarnessError);
        assert_eq!(Exit::ProductFailure.worst(Exit::Pass), Exit::ProductFailure);
    }
}

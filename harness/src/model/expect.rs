//! What a scenario expects of a run: the block classes and outcomes it must (or may)
//! produce, where the classes must be found, and the checks that must run.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::class::{BlockClass, Outcome};

/// What a run must find to pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectations {
    pub classes: BTreeSet<BlockClass>,
    pub allow_clean: bool,
    pub outcomes: BTreeSet<Outcome>,
    pub allow_outcomes: BTreeSet<Outcome>,
    pub at: Where,
    pub named_writes: bool,
    pub fsck: bool,
    pub remount: bool,
    pub skipped: Vec<Skipped>,
}

impl Expectations {
    /// The default: a clean run.
    pub fn clean() -> Expectations {
        Expectations {
            classes: BTreeSet::new(),
            allow_clean: false,
            outcomes: BTreeSet::new(),
            allow_outcomes: BTreeSet::new(),
            at: Where::Anywhere,
            named_writes: false,
            fsck: false,
            remount: false,
            skipped: Vec::new(),
        }
    }
}

/// Where expected block classes must be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Where {
    Anywhere,
    FaultSites,
}

/// A device discovery must skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skipped {
    Floppy,
    HangDisk,
}

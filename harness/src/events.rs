//! The interface between execution and presentation: a run emits typed events and never
//! prints; reporters (the terminal UI, logs, tests) consume them.

use std::sync::Arc;
use std::time::Duration;

/// Something that happened during a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A run of one scenario on one image with one seed begins.
    RunStarted {
        run_id: String,
        scenario: String,
        image: String,
        seed: u64,
    },
    /// A phase begins (building the image, booting, filling, backup N, hashing, ...).
    Phase { run_id: String, name: String },
    /// Progress within the current phase, in `unit`s.
    Progress {
        run_id: String,
        what: String,
        done: u64,
        total: u64,
        unit: Unit,
    },
    /// A fact worth a line (the accelerator chosen, a fault injected, ...).
    Note { run_id: String, text: String },
    /// Where a shrink session stands (`blockwitness shrink`): sent before each run,
    /// after each kept cut, and about once a second while a run goes on. Its runs send
    /// their own events, under their own run ids.
    Shrink {
        session: String,
        runs: u32,
        cuts_kept: usize,
        /// The run going on ("candidate 4 (volume data size 512MiB -> 64MiB), run 1 of
        /// 2"), or None between runs.
        trying: Option<String>,
        /// The smallest draft that has failed the same way so far, in a line.
        best: String,
        elapsed: Duration,
        budget: Duration,
    },
    /// The run ended.
    RunFinished {
        run_id: String,
        verdict: String,
        report_dir: String,
        elapsed: Duration,
    },
}

/// What a progress count counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Blocks,
    Steps,
}

/// Receives events. Implementations must be cheap: they are called on the hot path of
/// progress updates.
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}

/// Discards everything (library callers that want no output).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event) {}
}

/// A shared reporter handle.
pub type SharedReporter = Arc<dyn Reporter>;

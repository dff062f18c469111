//! The history oracle: judges a backup image against the write history of its volume,
//! with nothing asked of the pipeline under test.
//!
//! A snapshot taken at instant T is crash-consistent: it holds every write completed
//! before T and none submitted after T; a write in flight at T may be there or not. From
//! the history the oracle knows, for every version of every block, the span of cut
//! instants at which a snapshot may hold it ([`versions`]). A backup block's content
//! matches some versions, so it is consistent with the union of their spans; the oracle
//! looks for the instants that explain the most blocks (the sweep), takes the first of
//! them as the cut, and classifies every block against it ([`judge`]): consistent, data
//! from the future (naming the write that leaked), data from the past (naming the write
//! that is missing), corrupt, or excluded. It also gives the truth at the cut
//! ([`truth`]), and, where the pipeline announced its instant, checks that instant and
//! the verdicts against the truth taken then ([`announced`]).
//!
//! The input comes from a witness disk's history through [`adapter`];
//! [`Oracle::truth_at_cut`] is the truth for a pipeline that cannot announce its
//! instant. docs/architecture.md ("The history oracle") has a worked example.

pub mod adapter;
pub mod announced;
pub mod input;
pub mod judge;
pub(crate) mod sweep;
pub mod time;
pub mod truth;
pub mod versions;

#[cfg(test)]
mod tests;

pub use announced::{AnnouncedCheck, Disagreement, DisagreementKind, InstantPlace};
pub use input::{
    Announced, Backup, BackupError, BlockWrite, ContentHash, Extent, History, HistoryError, Write,
};
pub use judge::{BlockVerdict, Judgement, Leak, OracleClass, Stale, Verdict};
pub use time::{Moment, Span};
pub use truth::{CutTruth, Expected, Truth};
pub use versions::{Oracle, WriteRef};

//! The shared vocabulary: what a block is and how it is hashed, the classes and outcomes a
//! run can produce and the verdict over them, what a scenario expects, and every fault
//! kind with its layer and parameters.
//!
//! This module is a leaf: it imports nothing from the rest of the crate (a test holds it
//! so), and every other module may import it. Dependencies then run one way: scenario →
//! model, record → model, classify → record + model.

pub mod block;
pub mod class;
pub mod expect;
pub mod fault;

pub use block::{BackupKind, BlockHash, BLOCK, HASH_LEN};
pub use class::{BlockClass, Exit, Outcome, Verdict};
pub use expect::{Expectations, Skipped, Where};
pub use fault::{FaultKind, FrameSel, Layer, Need};

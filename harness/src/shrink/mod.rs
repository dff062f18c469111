//! `blockwitness shrink REPORT_DIR`: cuts a failing run's scenario down to the smallest
//! plan that still fails the same way, keeping its seed and image.
//!
//! - [`draft`]: the scenario document being cut, always valid (edited in place, so
//!   comments and keys this module does not know survive).
//! - [`passes`] and [`halve`]: the reduction passes, pure functions from a draft to
//!   smaller drafts.
//! - [`goal`]: what "fails the same way" means (by the verdict, or by findings for a
//!   scenario that expects them).
//! - [`search`]: the greedy loop to a fixed point or the budget, with confirmation runs;
//!   no VMs, a runner callback.
//! - [`session`]: the VM-driving part (real runs, the session directory, the file).
//! - [`output`]: the shrunk file's header.
//!
//! docs/shrink.md is the user's guide.

pub mod draft;
pub mod goal;
pub mod halve;
pub mod output;
pub mod passes;
pub mod search;
pub mod session;

pub use goal::{Finding, Goal, Keep};
pub use session::{shrink, ShrinkError, ShrinkOptions, Shrunk};

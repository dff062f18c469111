//! The reference backup target (`bw-target`): receives sessions over the wire protocol,
//! stores one image per volume and generation, verifies what it wrote, commits
//! atomically, and offers `verify` and `export` for the harness and for people.
//!
//! Layout: [`store`] owns files and names, [`session`] one session being received,
//! [`serve`] the listener, connections and the session registry, [`storage`] writing a
//! session's image and [`reread`] re-reading it behind the writes, [`verify`] re-reading
//! committed generations, [`export`] copying a generation out, [`bench`] the ingest
//! benchmark hook.

pub use crate::error_chain;

pub mod bench;
pub mod export;
pub mod reread;
pub mod serve;
pub mod session;
pub mod storage;
pub mod store;
pub mod verify;

use serde::{Deserialize, Serialize};

pub use serve::{
    EventSink, ServeOptions, Server, ServerHandle, SessionReport, SessionStatus, TargetEvent,
};
pub use store::{GenerationManifest, Store, StoreError};

/// Fault options for the harness; all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFaults {
    /// Write one block in N one block off its offset (the re-read catches it).
    pub wrong_offset_every: Option<u64>,
    /// Commit without re-reading: a buggy target that trusts its own writes.
    pub skip_verify: bool,
    /// abort() after the end frame is accepted and verified, before the renames.
    pub crash_before_commit: bool,
}

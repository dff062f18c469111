//! `bw-agent`: discovery, freezing, the snapshot instant with its hook, and streaming
//! the snapshot to the target.

pub mod backup;
pub mod discover;
pub mod freeze;
pub mod hook;

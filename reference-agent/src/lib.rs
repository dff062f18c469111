//! The reference backup pipeline's userspace half: `bw-agent` (in the guest) and
//! `bw-target` (the backup appliance), the wire protocol between them, and the Rust mirror
//! of the bwsnap kernel module's ABI.
//!
//! This crate is the pipeline *under test*; the harness depends on it only for the wire
//! protocol (its transport proxy parses frames) and the witness record format.

pub mod agent;
pub mod bwsnap;
pub mod sender;
pub mod target;
pub mod transport;
pub mod wire;
pub mod witness;

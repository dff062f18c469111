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

/// An error and its sources on one line ("a: b: c").
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

//! The witness disk: a vhost-user-blk backend that serves one raw image to QEMU, records
//! every request the guest sends in a write history, keeps point-in-time layers on
//! command, and injects disk faults, all steered over a JSON-lines control socket.
//!
//! For the harness: [`spawn::Backend`] starts a `bw-disk` child, [`client::Control`]
//! drives it (instant, arm, release, stats, shutdown), [`history::History`] reads what it
//! recorded and [`layers::Layers`] reads or materialises a generation. The protocol and
//! formats are documented in this crate's README.md.

pub mod backend;
pub mod client;
pub mod control;
pub mod cost;
pub mod driver;
pub mod engine;
pub mod faults;
pub mod hash;
pub mod history;
pub mod layers;
pub mod protocol;
pub mod request;
pub mod schedule;
pub mod serve;
pub mod spawn;

pub use client::{Control, ControlError};
pub use engine::{InstantReply, Stats};
pub use faults::{BlockRange, FaultSpec, OpFilter, Times};
pub use history::History;
pub use layers::{Generation, Layers};
pub use schedule::Schedule;
pub use spawn::{Backend, BackendConfig};

/// An error and its sources on one line ("a: b: c").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

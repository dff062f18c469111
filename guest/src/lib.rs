//! The guest side of the Blockwitness harness: the control protocol spoken between
//! `bw-init` (PID 1 in the guest) and the harness, virtio-serial port lookup, and the
//! stamped block format written by `bw-workload`.
//!
//! Nothing here is under test; it is the harness's hands inside the VM.

pub mod bwsnap_exec;
pub mod control;
pub mod init;
pub mod pipe;
pub mod ports;
pub mod stamp;
pub mod units;
pub mod workload;

/// An error and its sources on one line ("a: b: c"): the agent's, shared by every guest
/// binary.
pub use reference_agent::error_chain;

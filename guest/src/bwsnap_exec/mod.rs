//! `bwsnap-exec`: the guest end of the bwsnap model test (harness/tests/kmod_model.rs).
//! One long-lived process turns the host's requests into bwsnap ioctls, direct I/O on
//! the volumes and reads of the snapshot device, and answers with what it saw: errnos,
//! stamp contents, hashes. It keeps no model of its own; the host judges.

pub mod pattern;
pub mod protocol;
pub mod server;

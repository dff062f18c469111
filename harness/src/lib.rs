//! Blockwitness: boots a snapshot-backup pipeline in QEMU on real Debian kernels, runs
//! scenarios against it, records every block at every stage and classifies the first
//! stage where a block diverges from the point-in-time truth.
//!
//! The binary (`src/main.rs`) is a thin command-line layer over this library.

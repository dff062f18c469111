//! The point-in-time truth, independent of everything under test: an image of every
//! backed-up volume as it was at each snapshot instant, taken while the pipeline holds
//! the filesystems frozen, and the state each volume was left in after the run (for
//! fsck and the second boot).
//!
//! Who takes it depends on who serves the disks: QEMU's block layer gives QMP snapshots
//! ([`qmp`]); the witness disk freezes a generation of its layers ([`witness`]).

pub mod qmp;
pub mod witness;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use qmp::{flatten, QmpTruth};
pub use witness::{WitnessTruth, WitnessVolume};

use crate::qemu::{DiskFormat, Machine, QmpError};

/// Why the truth could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    #[error("taking the point-in-time snapshot of backup {backup}")]
    Snapshot {
        backup: u32,
        #[source]
        source: QmpError,
    },
    #[error("the witness disk of volume {volume} did not take the instant of backup {backup}")]
    Instant {
        volume: String,
        backup: u32,
        #[source]
        source: witness_disk::ControlError,
    },
    #[error("no point-in-time image of volume {volume} for backup {backup}: the instant was never reached")]
    NotTaken { volume: String, backup: u32 },
    #[error("flattening {layer} with qemu-img failed: {detail}")]
    Flatten { layer: PathBuf, detail: String },
    #[error("reading the witness disk's layers of volume {volume}")]
    Layers {
        volume: String,
        #[source]
        source: witness_disk::layers::LayerError,
    },
}

/// The truth of every backed-up volume across a run.
#[derive(Debug)]
pub enum Truth {
    Qmp(QmpTruth),
    Witness(WitnessTruth),
}

impl Truth {
    /// The QMP truth of QEMU-served disks: (volume name, QMP node name of the raw format
    /// node, raw file); overlays are created in `dir`.
    pub fn new(dir: &Path, disks: &[(String, String, PathBuf)]) -> Truth {
        Truth::Qmp(QmpTruth::new(dir, disks))
    }

    /// Freezes every volume as it is now, as the truth of `backup`. Returns how long it
    /// took (the guest's filesystems are frozen meanwhile).
    pub fn take(&mut self, machine: &mut Machine, backup: u32) -> Result<Duration, TruthError> {
        match self {
            Truth::Qmp(t) => t.take(machine, backup),
            Truth::Witness(t) => t.take(backup),
        }
    }

    /// Whether the instant of `backup` was captured.
    pub fn taken(&self, backup: u32) -> bool {
        match self {
            Truth::Qmp(t) => t.taken(backup),
            Truth::Witness(t) => t.taken(backup),
        }
    }

    /// A raw image of `volume` as of `backup`'s instant: a file that already is one (no
    /// copy), or one written to `scratch`. The second value says whether the image is a
    /// scratch copy the caller should delete.
    pub fn image(
        &self,
        volume: &str,
        backup: u32,
        scratch: &Path,
    ) -> Result<(PathBuf, bool), TruthError> {
        match self {
            Truth::Qmp(t) => t.image(volume, backup, scratch),
            Truth::Witness(t) => t.image(volume, backup, scratch),
        }
    }

    /// The state a volume was left in (for a second boot or fsck).
    pub fn top(&self, volume: &str) -> Option<(PathBuf, DiskFormat)> {
        match self {
            Truth::Qmp(t) => t.top(volume),
            Truth::Witness(t) => t.top(volume),
        }
    }

    /// The witness disks' truth, when the volumes are witness disks.
    pub fn witness(&self) -> Option<&WitnessTruth> {
        match self {
            Truth::Qmp(_) => None,
            Truth::Witness(t) => Some(t),
        }
    }
}

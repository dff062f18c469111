//! The truth on witness disks (`disk = "witness"`): at each instant every volume's
//! backend is told "instant" over its control socket, freezes the disk as a generation
//! of its layers and sends later writes to a copy-on-write overlay, as
//! blockdev-snapshot-sync does. Generation N is the truth image of backup N; the final
//! state (base plus every overlay) is materialised once the backends have ended, for
//! fsck and the second boot.
//!
//! The volumes are frozen by the pipeline while the instants are taken, so no write is
//! in flight on any of them and taking them one after another is one instant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use witness_disk::layers::Generation;
use witness_disk::{Control, InstantReply, Layers};

use super::TruthError;
use crate::qemu::DiskFormat;

/// Each control call's deadline.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// One volume's witness disk.
#[derive(Clone, Debug)]
pub struct WitnessVolume {
    pub volume: String,
    /// The disk id (`d<index>`).
    pub id: String,
    /// The image the backend serves (layer 0).
    pub base: PathBuf,
    pub control: PathBuf,
    pub state_dir: PathBuf,
}

/// The truth of every volume's witness disk across the run.
#[derive(Debug)]
pub struct WitnessTruth {
    dir: PathBuf,
    volumes: Vec<WitnessVolume>,
    /// Backup number → each volume's answer to its instant, in `volumes` order.
    instants: BTreeMap<u32, Vec<InstantReply>>,
    /// Volume → its final state, once materialised.
    finals: BTreeMap<String, PathBuf>,
}

impl WitnessTruth {
    /// Final images are written in `dir`.
    pub fn new(dir: &Path, volumes: Vec<WitnessVolume>) -> WitnessTruth {
        WitnessTruth {
            dir: dir.to_path_buf(),
            volumes,
            instants: BTreeMap::new(),
            finals: BTreeMap::new(),
        }
    }

    pub fn volumes(&self) -> &[WitnessVolume] {
        &self.volumes
    }

    /// Takes an instant on every volume's backend.
    pub fn take(&mut self, backup: u32) -> Result<Duration, TruthError> {
        let started = Instant::now();
        let mut replies = Vec::new();
        for v in &self.volumes {
            let label = format!("backup-{backup}");
            let reply = Control::connect(&v.control, CONTROL_TIMEOUT)
                .and_then(|mut c| c.instant(&label))
                .map_err(|source| TruthError::Instant {
                    volume: v.volume.clone(),
                    backup,
                    source,
                })?;
            replies.push(reply);
        }
        self.instants.insert(backup, replies);
        Ok(started.elapsed())
    }

    pub fn taken(&self, backup: u32) -> bool {
        self.instants.contains_key(&backup)
    }

    /// What `volume`'s backend answered to the instant of `backup`: its generation and
    /// the instant on the backend's clock (the history's).
    pub fn instant(&self, volume: &str, backup: u32) -> Option<InstantReply> {
        let i = self.volumes.iter().position(|v| v.volume == volume)?;
        self.instants.get(&backup).map(|r| r[i])
    }

    fn volume(&self, volume: &str) -> Option<&WitnessVolume> {
        self.volumes.iter().find(|v| v.volume == volume)
    }

    /// The image of `volume` at `backup`'s instant: the base image itself for the first
    /// generation (written in place until then, never after), else the generation
    /// materialised into `scratch`.
    pub fn image(
        &self,
        volume: &str,
        backup: u32,
        scratch: &Path,
    ) -> Result<(PathBuf, bool), TruthError> {
        let not_taken = || TruthError::NotTaken {
            volume: volume.to_string(),
            backup,
        };
        let reply = self.instant(volume, backup).ok_or_else(not_taken)?;
        let v = self.volume(volume).ok_or_else(not_taken)?;
        if reply.generation == 1 {
            return Ok((v.base.clone(), false));
        }
        let layers = |source| TruthError::Layers {
            volume: volume.to_string(),
            source,
        };
        Layers::open(&v.state_dir)
            .and_then(|l| l.materialise(Generation::At(reply.generation), scratch))
            .map_err(layers)?;
        Ok((scratch.to_path_buf(), true))
    }

    /// Writes every volume's final state (the base plus every overlay) as a raw file in
    /// the truth's directory; the base itself when no instant was taken. Call once the
    /// backends have ended and closed their layers.
    pub fn finalise(&mut self) -> Vec<TruthError> {
        let mut errors = Vec::new();
        for v in &self.volumes {
            let layers = match Layers::open(&v.state_dir) {
                Ok(l) => l,
                Err(source) => {
                    errors.push(TruthError::Layers {
                        volume: v.volume.clone(),
                        source,
                    });
                    continue;
                }
            };
            if layers.manifest.instants() == 0 {
                self.finals.insert(v.volume.clone(), v.base.clone());
                continue;
            }
            let out = self.dir.join(format!("{}.final.raw", v.id));
            match layers.materialise(Generation::Final, &out) {
                Ok(()) => {
                    self.finals.insert(v.volume.clone(), out);
                }
                Err(source) => errors.push(TruthError::Layers {
                    volume: v.volume.clone(),
                    source,
                }),
            }
        }
        errors
    }

    /// The state `volume` was left in, once [`WitnessTruth::finalise`] wrote it.
    pub fn top(&self, volume: &str) -> Option<(PathBuf, DiskFormat)> {
        self.finals
            .get(volume)
            .map(|p| (p.clone(), DiskFormat::Raw))
    }
}

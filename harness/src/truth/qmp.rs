//! The truth on QEMU-served disks (`disk = "qemu"`): QMP snapshots.
//!
//! Every volume disk starts as a raw file under a `raw` format node. At each snapshot
//! instant, while the agent holds the filesystems frozen, one QMP `transaction` of
//! `blockdev-snapshot-sync` actions puts a fresh qcow2 overlay on top of every volume
//! disk at once; the layer that was on top stops changing and is, with its backing chain,
//! the exact disk as of that instant. After the run each instant's chain is flattened to
//! a raw image (`qemu-img convert`) and hashed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::qemu::{DiskFormat, Machine, SnapshotLayer};

use super::TruthError;

/// One layer of a disk's chain.
#[derive(Clone, Debug)]
struct Layer {
    node: String,
    path: PathBuf,
    format: DiskFormat,
}

/// One volume's disk and the chain of layers put on it.
#[derive(Clone, Debug)]
struct ChainDisk {
    volume: String,
    /// layers[0] is the raw base; the last one is the active top.
    layers: Vec<Layer>,
}

/// The truth of every volume disk across the run.
#[derive(Debug)]
pub struct QmpTruth {
    dir: PathBuf,
    disks: Vec<ChainDisk>,
    /// Backup number → index of the layer that froze at its instant.
    frozen: BTreeMap<u32, usize>,
}

impl QmpTruth {
    /// `disks`: (volume name, QMP node name of the raw format node, raw file). Overlays
    /// are created in `dir`.
    pub fn new(dir: &Path, disks: &[(String, String, PathBuf)]) -> QmpTruth {
        QmpTruth {
            dir: dir.to_path_buf(),
            disks: disks
                .iter()
                .map(|(volume, node, path)| ChainDisk {
                    volume: volume.clone(),
                    layers: vec![Layer {
                        node: node.clone(),
                        path: path.clone(),
                        format: DiskFormat::Raw,
                    }],
                })
                .collect(),
            frozen: BTreeMap::new(),
        }
    }

    /// Freezes the current top of every disk, atomically across disks. Returns how long
    /// QEMU took (the guest's filesystems are frozen meanwhile).
    pub fn take(&mut self, machine: &mut Machine, backup: u32) -> Result<Duration, TruthError> {
        let started = Instant::now();
        let mut snapshots = Vec::new();
        let mut new_layers = Vec::new();
        for disk in &self.disks {
            let top = disk.layers.last().expect("a chain has a base");
            let node = format!("{}-b{backup}", disk.layers[0].node);
            let path = self.dir.join(format!("{node}.qcow2"));
            snapshots.push(SnapshotLayer {
                node: top.node.clone(),
                file: path.clone(),
                new_node: node.clone(),
            });
            new_layers.push(Layer {
                node,
                path,
                format: DiskFormat::Qcow2,
            });
        }
        machine
            .snapshot_disks(&snapshots, Duration::from_secs(60))
            .map_err(|source| TruthError::Snapshot { backup, source })?;
        let frozen_index = self.disks[0].layers.len() - 1;
        for (disk, layer) in self.disks.iter_mut().zip(new_layers) {
            disk.layers.push(layer);
        }
        self.frozen.insert(backup, frozen_index);
        Ok(started.elapsed())
    }

    /// Whether the instant of `backup` was captured.
    pub fn taken(&self, backup: u32) -> bool {
        self.frozen.contains_key(&backup)
    }

    fn disk(&self, volume: &str) -> Option<&ChainDisk> {
        self.disks.iter().find(|d| d.volume == volume)
    }

    /// A raw image of `volume` as of `backup`'s instant: the base file itself when it
    /// froze first (no copy), else the chain flattened into `scratch`. The second value
    /// says whether the image is a scratch copy the caller should delete.
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
        let index = *self.frozen.get(&backup).ok_or_else(not_taken)?;
        let disk = self.disk(volume).ok_or_else(not_taken)?;
        let layer = &disk.layers[index];
        if layer.format == DiskFormat::Raw {
            return Ok((layer.path.clone(), false));
        }
        flatten(&layer.path, scratch)?;
        Ok((scratch.to_path_buf(), true))
    }

    /// The current top of a volume's chain (its state now), for a second boot or fsck.
    pub fn top(&self, volume: &str) -> Option<(PathBuf, DiskFormat)> {
        self.disk(volume)
            .and_then(|d| d.layers.last())
            .map(|l| (l.path.clone(), l.format))
    }

    /// The QMP node name of the current top of a volume's chain.
    pub fn top_node(&self, volume: &str) -> Option<String> {
        self.disk(volume)
            .and_then(|d| d.layers.last())
            .map(|l| l.node.clone())
    }
}

/// `qemu-img convert` of a qcow2 chain to a raw file.
pub fn flatten(layer: &Path, out: &Path) -> Result<(), TruthError> {
    let result = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(layer)
        .arg(out)
        .output();
    match result {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(TruthError::Flatten {
            layer: layer.to_path_buf(),
            detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
        Err(e) => Err(TruthError::Flatten {
            layer: layer.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

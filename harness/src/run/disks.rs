//! Disks made on the host: a run's (one raw file per volume with its filesystem, mkfs
//! from e2fsprogs/xfsprogs with a UUID derived from the seed so a repro makes the same
//! filesystem; the never-answering extra disk, which a witness disk serves; the floppy
//! image), and the scratch disks of `blockwitness exec` and the benches, made the same
//! way.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::plan::{derive_seed, Plan, VolumePlan};
use crate::qemu::{Disk, DiskFormat, Floppy as QFloppy, VhostUserDisk};
use crate::scenario::{Filesystem, Floppy};

/// Why a disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create {path} of {bytes} bytes")]
    Create {
        path: PathBuf,
        bytes: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Mkfs { command: String, stderr: String },
    #[error("disk {spec:?}: {problem}")]
    Spec { spec: String, problem: String },
}

/// The disks a run made: volume disks and extra devices.
pub(super) struct RunDisks {
    /// Volume disks QEMU serves (none when witness disks serve them).
    pub volumes: Vec<Disk>,
    /// The never-answering disk's image (a witness disk serves it).
    pub hang: Option<Disk>,
    /// Disks served by witness disks, for QEMU.
    pub vhost: Vec<VhostUserDisk>,
    pub floppy: QFloppy,
}

/// The id of the extra disk whose reads never complete.
pub const HANG_ID: &str = "hang";

/// The raw file of volume number `index` in `dir`.
pub fn volume_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{}.raw", Disk::volume_id(index)))
}

/// A UUID (text form) from the run's seed and the volume's index.
fn uuid_for(seed: u64, index: usize) -> String {
    let a = derive_seed(seed, 100, index as u64, 0);
    let b = derive_seed(seed, 101, index as u64, 0);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4 layout
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The mkfs command line for a volume (None for a raw volume).
pub fn mkfs_command(v: &VolumePlan, seed: u64) -> Option<Vec<String>> {
    let uuid = uuid_for(seed, v.index);
    let label = v.name.chars().take(12).collect::<String>();
    let cmd: Vec<String> = match v.fs {
        Filesystem::Ext2 { block_size } | Filesystem::Ext4 { block_size } => vec![
            format!("mkfs.{}", v.fs.name()),
            "-q".into(),
            "-F".into(),
            "-b".into(),
            block_size.to_string(),
            "-L".into(),
            label,
            "-U".into(),
            uuid,
            "-E".into(),
            format!("hash_seed={}", uuid_for(seed, v.index + 1000)),
        ],
        Filesystem::Xfs => vec![
            "mkfs.xfs".into(),
            "-q".into(),
            "-f".into(),
            "-L".into(),
            label,
            "-m".into(),
            format!("uuid={uuid}"),
        ],
        Filesystem::None => return None,
    };
    Some(cmd)
}

/// A sparse file of `bytes` bytes at `path`.
pub fn make_raw(path: &Path, bytes: u64) -> Result<(), DiskError> {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(bytes))
        .map_err(|source| DiskError::Create {
            path: path.to_owned(),
            bytes,
            source,
        })
}

/// Runs an mkfs command line (`cmd`, then the image path) on the host.
pub fn mkfs(cmd: &[String], path: &Path) -> Result<(), DiskError> {
    let (program, args) = cmd.split_first().expect("an mkfs command has a program");
    let out = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .map_err(|source| DiskError::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            command: format!("{} {}", cmd.join(" "), path.display()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Makes volume `v`'s raw file in `dir` (with its filesystem, when the host makes it),
/// and its disk.
pub fn volume_disk(dir: &Path, v: &VolumePlan, seed: u64) -> Result<Disk, DiskError> {
    let path = volume_file(dir, v.index);
    make_raw(&path, v.disk_bytes)?;
    if let (true, Some(cmd)) = (v.mkfs_on_host, mkfs_command(v, seed)) {
        mkfs(&cmd, &path)?;
    }
    Ok(Disk::volume(v.index, path, DiskFormat::Raw))
}

/// A scratch disk for `blockwitness exec`: `SIZE_MIB[:FS[:DIR]]` with FS ext2, ext4 or
/// xfs (made on the host; an ext2/ext4 disk is populated from DIR when given), as volume
/// number `index`.
pub fn scratch_disk(dir: &Path, index: usize, spec: &str) -> Result<Disk, DiskError> {
    let bad = |problem: &str| DiskError::Spec {
        spec: spec.to_string(),
        problem: problem.to_string(),
    };
    let mut parts = spec.splitn(3, ':');
    let mib: u64 = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| bad("size in MiB expected"))?;
    let fs = parts.next();
    let populate = parts.next();
    let path = volume_file(dir, index);
    make_raw(&path, mib << 20)?;
    if let Some(fs) = fs {
        let mut cmd: Vec<String> = match fs {
            "ext2" | "ext4" => vec![format!("mkfs.{fs}"), "-q".into(), "-F".into()],
            "xfs" => vec!["mkfs.xfs".into(), "-q".into(), "-f".into()],
            other => {
                return Err(bad(&format!(
                    "unknown filesystem {other:?} (ext2, ext4, xfs)"
                )))
            }
        };
        if let (Some(d), "ext2" | "ext4") = (populate, fs) {
            cmd.extend(["-d".into(), d.to_string()]);
        }
        mkfs(&cmd, &path)?;
    }
    Ok(Disk::volume(index, path, DiskFormat::Raw))
}

/// The floppy drive a plan asks for.
fn floppy_for(plan: &Plan, work: &Path) -> Result<QFloppy, DiskError> {
    Ok(match plan.guest.floppy {
        Floppy::None => QFloppy::None,
        Floppy::Empty => QFloppy::Empty,
        Floppy::Media => {
            let path = work.join("floppy.img");
            make_raw(&path, 1_474_560)?;
            QFloppy::Media(path)
        }
    })
}

/// Makes every disk of the plan in `work`.
pub(super) fn create(plan: &Plan, work: &Path) -> Result<RunDisks, DiskError> {
    let volumes = plan
        .volumes
        .iter()
        .map(|v| volume_disk(work, v, plan.seed))
        .collect::<Result<Vec<_>, _>>()?;
    let hang = match plan.guest.hang_disk {
        Some(bytes) => {
            let path = work.join("hang.raw");
            make_raw(&path, bytes)?;
            Some(Disk::new(HANG_ID, path, DiskFormat::Raw))
        }
        None => None,
    };
    Ok(RunDisks {
        volumes,
        hang,
        vhost: Vec::new(),
        floppy: floppy_for(plan, work)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_specs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = scratch_disk(dir.path(), 2, "4").unwrap();
        assert_eq!((d.id.as_str(), d.serial.as_str()), ("d2", "bw-d2"));
        assert_eq!(std::fs::metadata(&d.path).unwrap().len(), 4 << 20);
        for bad in ["x", "4:zfs"] {
            let err = scratch_disk(dir.path(), 0, bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn uuids_are_stable_and_distinct() {
        assert_eq!(uuid_for(1, 0), uuid_for(1, 0));
        assert_ne!(uuid_for(1, 0), uuid_for(1, 1));
        assert_ne!(uuid_for(1, 0), uuid_for(2, 0));
        assert_eq!(uuid_for(7, 3).len(), 36);
    }
}

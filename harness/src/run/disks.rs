//! The disks of a run, made on the host: one raw file per volume with its filesystem
//! (mkfs from e2fsprogs/xfsprogs, with a UUID derived from the seed so a repro makes the
//! same filesystem), the never-answering extra disk, the floppy image.

use std::path::Path;
use std::process::Command;

use super::{floppy_for, RunDisks};
use crate::plan::{derive_seed, Plan, VolumePlan};
use crate::qemu::{Disk, DiskFormat};
use crate::scenario::Filesystem;

/// The serial a volume's disk carries; the guest finds the disk by it.
pub fn serial(index: usize) -> String {
    format!("bw-d{index}")
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

fn make_raw(path: &Path, bytes: u64) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.set_len(bytes)
        .map_err(|e| format!("sizing {} to {bytes} bytes: {e}", path.display()))
}

/// Makes every disk of the plan in `work`.
pub(super) fn create(plan: &Plan, work: &Path) -> Result<RunDisks, String> {
    let mut volumes = Vec::new();
    for v in &plan.volumes {
        let path = work.join(format!("d{}.raw", v.index));
        make_raw(&path, v.size_bytes)?;
        if let Some(cmd) = mkfs_command(v, plan.seed) {
            let out = Command::new(&cmd[0])
                .args(&cmd[1..])
                .arg(&path)
                .output()
                .map_err(|e| format!("running {}: {e}", cmd[0]))?;
            if !out.status.success() {
                return Err(format!(
                    "{} for volume {} failed: {}",
                    cmd.join(" "),
                    v.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        volumes.push(Disk {
            id: format!("d{}", v.index),
            path,
            format: DiskFormat::Raw,
            serial: serial(v.index),
            read_only: false,
            blkdebug: false,
        });
    }
    let hang = match plan.guest.hang_disk {
        Some(bytes) => {
            let path = work.join("hang.raw");
            make_raw(&path, bytes)?;
            Some(Disk {
                id: "hang".into(),
                path,
                format: DiskFormat::Raw,
                serial: "bw-hang".into(),
                read_only: false,
                blkdebug: true,
            })
        }
        None => None,
    };
    Ok(RunDisks {
        volumes,
        hang,
        floppy: floppy_for(plan, work)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_distinct() {
        assert_eq!(uuid_for(1, 0), uuid_for(1, 0));
        assert_ne!(uuid_for(1, 0), uuid_for(1, 1));
        assert_ne!(uuid_for(1, 0), uuid_for(2, 0));
        assert_eq!(uuid_for(7, 3).len(), 36);
    }
}

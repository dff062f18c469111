//! The kernel's dm-snapshot as the pipeline under test, driven with `dmsetup`.
//!
//! Each volume is used through a `snapshot-origin` device made on its disk at boot
//! (`bw-origin-<volume>`), so writes to it copy their old chunk into a snapshot's store
//! while one exists. A backup freezes the filesystem, suspends the origin without
//! locking the filesystem again (it is frozen already), loads a `snapshot` target
//! (`bw-snap-<volume>`) whose exception store is a disk of its own (`cow<i>`,
//! `backup.cow_size` large), persistent or transient, resumes the origin, takes the
//! truth and thaws. The harness's copier sends the snapshot device through the channel;
//! afterwards `dmsetup status` says whether the snapshot stayed valid: a store that
//! overflowed invalidates the snapshot (its reads fail), and that backup is a failure
//! of the product, never good data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::command::Env;
use super::driven::{dm_step, fsfreeze, Deliver, Provider, Runner, SnapshotMode};
use super::{guest_tools, GuestVolume, PipelineError};
use crate::plan::{Plan, VolumePlan};
use crate::qemu::{Disk, DiskFormat};
use crate::scenario::DmSnapshotSpec;

const STEP: Duration = Duration::from_secs(60);
/// The exception store's header and metadata chunks need room beside the data.
const STORE_SLACK_CHUNKS: u64 = 16;

/// The dm name of a volume's origin and of its snapshot.
pub fn origin_name(volume: &str) -> String {
    format!("bw-origin-{volume}")
}

pub fn snapshot_name(volume: &str) -> String {
    format!("bw-snap-{volume}")
}

/// The id of volume `index`'s store disk (serial `bw-cow<index>`).
pub fn store_disk_id(index: usize) -> String {
    format!("cow{index}")
}

/// The `snapshot` target line: `0 <sectors> snapshot <origin> <store> P|N <chunk sectors>`.
pub fn snapshot_table(
    sectors: u64,
    disk: &str,
    store: &str,
    persistent: bool,
    chunk: u64,
) -> String {
    format!(
        "0 {sectors} snapshot {disk} {store} {} {}",
        if persistent { "P" } else { "N" },
        chunk / 512
    )
}

/// Reads `dmsetup status` of a snapshot: `Invalid` (the store overflowed or failed),
/// `Overflow`, or `<used>/<total> <metadata>` while valid.
pub fn status_invalid(status: &str) -> Option<String> {
    let s = status.trim();
    if s.contains("Invalid") || s.contains("Overflow") || s.contains("Merge failed") {
        Some(s.to_string())
    } else {
        None
    }
}

/// Shell lookup of the guest device of the disk with serial `serial`.
pub fn device_of_serial(serial: &str) -> String {
    format!(
        "for d in /sys/block/vd*; do if [ \"$(cat $d/serial)\" = '{serial}' ]; then echo /dev/${{d##*/}}; fi; done"
    )
}

/// The dm-snapshot provider.
pub struct DmSnapshot {
    spec: DmSnapshotSpec,
    disks: Vec<Disk>,
    userland: PathBuf,
    /// Per volume: its disk's sectors, the disk and the store disk in the guest.
    volumes: BTreeMap<String, (u64, String, String)>,
    store_index: BTreeMap<String, usize>,
}

impl DmSnapshot {
    pub fn new(
        spec: DmSnapshotSpec,
        plan: &Plan,
        work: &Path,
    ) -> Result<DmSnapshot, PipelineError> {
        let mut disks = Vec::new();
        let mut store_index = BTreeMap::new();
        for v in plan.backed_up() {
            // The store holds whole chunks plus its header and exception tables.
            let bytes =
                v.cow_bytes.div_ceil(spec.chunk) * spec.chunk + STORE_SLACK_CHUNKS * spec.chunk;
            let path = work.join(format!("{}.raw", store_disk_id(v.index)));
            std::fs::File::create(&path)
                .and_then(|f| f.set_len(bytes))
                .map_err(|source| PipelineError::Io {
                    path: path.clone(),
                    source,
                })?;
            disks.push(Disk::new(store_disk_id(v.index), path, DiskFormat::Raw));
            store_index.insert(v.name.clone(), v.index);
        }
        let userland = work.join("userland-dm.cpio");
        guest_tools::dm_userland()?.write(&userland)?;
        Ok(DmSnapshot {
            spec,
            disks,
            userland,
            volumes: BTreeMap::new(),
            store_index,
        })
    }

    fn sh(r: &mut Runner, name: &str, script: &str) -> Result<String, PipelineError> {
        dm_step(r, name, script, STEP)
    }
}

impl Provider for DmSnapshot {
    fn name(&self) -> &'static str {
        "dm-snapshot"
    }

    fn disks(&self) -> Vec<Disk> {
        self.disks.clone()
    }

    fn userland(&self) -> Option<PathBuf> {
        Some(self.userland.clone())
    }

    fn attach(
        &mut self,
        r: &mut Runner,
        volume: &VolumePlan,
        disk: &str,
    ) -> Result<String, PipelineError> {
        if !volume.backup {
            return Ok(disk.to_string());
        }
        let sectors = volume.size_bytes / 512;
        let origin = origin_name(&volume.name);
        Self::sh(
            r,
            "origin",
            &format!("dmsetup create {origin} --table '0 {sectors} snapshot-origin {disk}'"),
        )?;
        let index = self.store_index[&volume.name];
        let store = Self::sh(
            r,
            "store disk",
            &device_of_serial(&Disk::serial_of(&store_disk_id(index))),
        )?
        .trim()
        .to_string();
        if store.is_empty() {
            return Err(PipelineError::failed(
                "dm-snapshot",
                format!(
                    "the store disk of volume {} is not in the guest",
                    volume.name
                ),
            ));
        }
        self.volumes
            .insert(volume.name.clone(), (sectors, disk.to_string(), store));
        Ok(format!("/dev/mapper/{origin}"))
    }

    fn mode(&self) -> SnapshotMode {
        SnapshotMode::FreezeSetupThaw
    }

    fn freeze(&mut self, r: &mut Runner, v: &GuestVolume, _g: u32) -> Result<(), PipelineError> {
        fsfreeze(r, v, STEP)
    }

    fn setup(&mut self, r: &mut Runner, v: &GuestVolume, _g: u32) -> Result<(), PipelineError> {
        let (sectors, disk, store) = self.volumes.get(&v.name).cloned().ok_or_else(|| {
            PipelineError::failed("dm-snapshot", format!("volume {} was not attached", v.name))
        })?;
        let origin = origin_name(&v.name);
        let snap = snapshot_name(&v.name);
        let table = snapshot_table(
            sectors,
            &disk,
            &store,
            self.spec.persistent,
            self.spec.chunk,
        );
        // A new persistent store must not be mistaken for an old one: zero its header.
        // The filesystem is frozen already: suspend without locking it again.
        Self::sh(
            r,
            "setup",
            &format!(
                "dd if=/dev/zero of={store} bs=64k count=1 conv=fsync 2>/dev/null && \
                 dmsetup suspend --nolockfs {origin} && \
                 {{ dmsetup create {snap} --table '{table}'; rc=$?; dmsetup resume {origin}; exit $rc; }}"
            ),
        )?;
        Ok(())
    }

    fn thaw(&mut self, r: &mut Runner, v: &GuestVolume, _g: u32) -> Result<(), PipelineError> {
        if let Some(m) = &v.mount {
            Self::sh(r, "thaw", &format!("fsfreeze --unfreeze {m}"))?;
        }
        Ok(())
    }

    fn device(
        &mut self,
        _r: &mut Runner,
        v: &GuestVolume,
        _g: u32,
    ) -> Result<String, PipelineError> {
        Ok(format!("/dev/mapper/{}", snapshot_name(&v.name)))
    }

    fn deliver(&self, _v: &GuestVolume, _g: u32, snapshot: &str, changed: Option<&str>) -> Deliver {
        let extents = changed
            .map(|f| format!(" --extents {f}"))
            .unwrap_or_default();
        Deliver::Stream {
            script: format!("exec /bin/bw-pipe send --device {snapshot}{extents}"),
            env: Env::new(),
        }
    }

    fn after_copy(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        _g: u32,
    ) -> Result<Option<String>, PipelineError> {
        let status = Self::sh(
            r,
            "status",
            &format!("dmsetup status {}", snapshot_name(&v.name)),
        )?;
        Ok(status_invalid(&status)
            .map(|s| format!("the dm snapshot was invalidated during the backup (status `{s}`)")))
    }

    fn release(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        _g: u32,
        _committed: bool,
    ) -> Result<(), PipelineError> {
        let snap = snapshot_name(&v.name);
        Self::sh(
            r,
            "destroy",
            &format!("if dmsetup info {snap} >/dev/null 2>&1; then dmsetup remove {snap}; fi"),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_status() {
        assert_eq!(
            snapshot_table(131072, "/dev/vdb", "/dev/vdc", true, 4096),
            "0 131072 snapshot /dev/vdb /dev/vdc P 8"
        );
        assert_eq!(
            snapshot_table(8, "/dev/vdb", "/dev/vdc", false, 65536),
            "0 8 snapshot /dev/vdb /dev/vdc N 128"
        );
        assert_eq!(status_invalid("0 131072 snapshot 16/8192 16"), None);
        assert!(status_invalid("0 131072 snapshot Invalid").is_some());
    }
}

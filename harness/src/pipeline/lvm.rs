//! LVM2 snapshots as the pipeline under test: `lvcreate -s`, classic (a COW volume of
//! `backup.cow_size`) or thin (a thin volume in a pool with `backup.cow_size` of room
//! for changes), and incrementals from `thin_delta` or a full re-read.
//!
//! The volume group is made at boot on the volume's disk (`bwvg<i>`, one physical
//! volume, 4 MiB extents from byte 1 MiB), the volume is `bwvg<i>/vol`, and its
//! filesystem is made in the guest. The filesystem sits on a pass-through dm-linear
//! device above the logical volume (`bw-top-<volume>`): a backup freezes the filesystem
//! (FIFREEZE), runs `lvcreate -s`, takes the truth and thaws. LVM suspends the origin
//! with "lockfs", which freezes the filesystem on that device; with the filesystem one
//! layer up there is none there to freeze again (on 6.1 freezing a frozen filesystem
//! that way fails with EBUSY), and the frozen filesystem above sends it no writes. The
//! truth of the volume is cut out of the disk's image on the host ([`super::lvmmap`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::command::Env;
use super::driven::{dm_step, fsfreeze, Deliver, Provider, Runner, SnapshotMode};
use super::lvmmap::{self, Layout};
use super::{guest_tools, GuestVolume, PipelineError};
use crate::plan::{Plan, VolumePlan, LVM_EXTENT, THIN_METADATA};
use crate::scenario::{LvmIncremental, LvmSpec};

const STEP: Duration = Duration::from_secs(120);

pub fn vg_name(index: usize) -> String {
    format!("bwvg{index}")
}

/// The pass-through device the filesystem sits on, above the logical volume.
pub fn top_name(volume: &str) -> String {
    format!("bw-top-{volume}")
}

fn snap_lv(g: u32) -> String {
    format!("snap{g}")
}

/// The dm name LVM gives `vg/lv` (dashes in names doubled).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// One attached volume.
#[derive(Clone, Debug)]
struct Attached {
    vg: String,
    size: u64,
    layout: Layout,
}

/// The LVM provider.
pub struct Lvm {
    spec: LvmSpec,
    userland: PathBuf,
    volumes: BTreeMap<String, Attached>,
    cow: BTreeMap<String, u64>,
    /// Per volume: the thin snapshot of the last committed generation, kept for the
    /// next thin_delta.
    base: BTreeMap<String, (u32, String)>,
    notes: Vec<String>,
}

impl Lvm {
    pub fn new(spec: LvmSpec, plan: &Plan, work: &Path) -> Result<Lvm, PipelineError> {
        let userland = work.join("userland-lvm.cpio");
        guest_tools::lvm_userland()?.write(&userland)?;
        Ok(Lvm {
            spec,
            userland,
            volumes: BTreeMap::new(),
            cow: plan
                .volumes
                .iter()
                .map(|v| (v.name.clone(), v.cow_bytes))
                .collect(),
            base: BTreeMap::new(),
            notes: Vec::new(),
        })
    }

    fn sh(r: &mut Runner, name: &str, script: &str) -> Result<String, PipelineError> {
        dm_step(r, name, script, STEP)
    }

    fn attached(&self, v: &str) -> Result<&Attached, PipelineError> {
        self.volumes
            .get(v)
            .ok_or_else(|| PipelineError::failed("lvm", format!("volume {v} was not attached")))
    }

    fn thin_id(r: &mut Runner, vg: &str, lv: &str) -> Result<u64, PipelineError> {
        let out = Self::sh(
            r,
            "thin id",
            &format!("lvm lvs --noheadings -o thin_id {vg}/{lv}"),
        )?;
        out.trim().parse().map_err(|_| {
            PipelineError::failed("lvm", format!("no thin id for {vg}/{lv}: {:?}", out.trim()))
        })
    }

    fn map_err(e: lvmmap::MapError) -> PipelineError {
        PipelineError::failed("the LVM volume's layout", crate::error_chain(&e))
    }
}

impl Provider for Lvm {
    fn name(&self) -> &'static str {
        "lvm"
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
        let vg = vg_name(volume.index);
        let size = volume.size_bytes;
        let cow = round_up(volume.cow_bytes, LVM_EXTENT);
        let create = if self.spec.thin {
            format!(
                "lvm lvcreate -y -Zn --type thin-pool -L {pool}b -c {chunk}b --poolmetadatasize {meta}b -n pool {vg} && \
                 lvm lvcreate -y -V {size}b -T {vg}/pool -n vol",
                pool = round_up(size, LVM_EXTENT) + cow,
                chunk = self.spec.chunk,
                meta = THIN_METADATA,
            )
        } else {
            format!("lvm lvcreate -y -Wn -Zn -L {size}b -n vol {vg}")
        };
        Self::sh(
            r,
            "volume group",
            &format!(
                "mkdir -p /run/lock/lvm && lvm pvcreate -ff -y --dataalignment 1m {disk} && \
                 lvm vgcreate -y -s {extent}b {vg} {disk} && {create}",
                extent = LVM_EXTENT
            ),
        )?;
        let lvs = Self::sh(
            r,
            "layout",
            &format!("lvm lvs -a --noheadings --units b --nosuffix -o lv_name,seg_start,seg_size,seg_pe_ranges {vg}"),
        )?;
        let pe_start: u64 = Self::sh(
            r,
            "layout",
            &format!("lvm pvs --noheadings --units b --nosuffix -o pe_start {disk}"),
        )?
        .trim()
        .parse()
        .map_err(|_| PipelineError::failed("lvm", "pvs printed no pe_start"))?;
        let segs = lvmmap::parse_lvs(&lvs).map_err(Self::map_err)?;
        let layout = if self.spec.thin {
            Layout::Thin {
                metadata: lvmmap::segments_of(&segs, "pool_tmeta", pe_start, LVM_EXTENT)
                    .map_err(Self::map_err)?,
                data: lvmmap::segments_of(&segs, "pool_tdata", pe_start, LVM_EXTENT)
                    .map_err(Self::map_err)?,
                thin_id: Self::thin_id(r, &vg, "vol")?,
            }
        } else {
            Layout::Linear {
                segments: lvmmap::segments_of(&segs, "vol", pe_start, LVM_EXTENT)
                    .map_err(Self::map_err)?,
            }
        };
        self.notes.push(format!(
            "volume {}: {vg}/vol on {disk}, {layout:?}",
            volume.name
        ));
        self.volumes.insert(
            volume.name.clone(),
            Attached {
                vg: vg.clone(),
                size,
                layout,
            },
        );
        let top = top_name(&volume.name);
        Self::sh(
            r,
            "top",
            &format!(
                "dmsetup create {top} --table '0 {} linear /dev/mapper/{} 0'",
                size / 512,
                dm_name(&vg, "vol")
            ),
        )?;
        Ok(format!("/dev/mapper/{top}"))
    }

    fn mode(&self) -> SnapshotMode {
        SnapshotMode::FreezeSetupThaw
    }

    fn freeze(&mut self, r: &mut Runner, v: &GuestVolume, _g: u32) -> Result<(), PipelineError> {
        fsfreeze(r, v, STEP)
    }

    fn setup(&mut self, r: &mut Runner, v: &GuestVolume, g: u32) -> Result<(), PipelineError> {
        let vg = self.attached(&v.name)?.vg.clone();
        let snap = snap_lv(g);
        let create = if self.spec.thin {
            format!("lvm lvcreate -y -s -kn -n {snap} {vg}/vol")
        } else {
            let cow = round_up(
                self.cow.get(&v.name).copied().unwrap_or(LVM_EXTENT),
                LVM_EXTENT,
            );
            format!(
                "lvm lvcreate -y -s -L {cow}b -c {}b -n {snap} {vg}/vol",
                self.spec.chunk
            )
        };
        Self::sh(r, "setup", &create)?;
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
        g: u32,
    ) -> Result<String, PipelineError> {
        let vg = &self.attached(&v.name)?.vg;
        Ok(format!("/dev/mapper/{}", dm_name(vg, &snap_lv(g))))
    }

    fn changed(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        g: u32,
    ) -> Result<Option<Vec<(u64, u64)>>, PipelineError> {
        if !self.spec.thin || self.spec.incremental != LvmIncremental::ThinDelta {
            return Ok(None);
        }
        let Some((_, base)) = self.base.get(&v.name).cloned() else {
            return Ok(None);
        };
        let a = self.attached(&v.name)?.clone();
        let left = Self::thin_id(r, &a.vg, &base)?;
        let right = Self::thin_id(r, &a.vg, &snap_lv(g))?;
        let pool = format!("{}-tpool", dm_name(&a.vg, "pool"));
        let tmeta = dm_name(&a.vg, "pool_tmeta");
        let xml = Self::sh(
            r,
            "thin_delta",
            &format!(
                "dmsetup message {pool} 0 reserve_metadata_snap && \
                 {{ thin_delta -m --snap1 {left} --snap2 {right} /dev/mapper/{tmeta}; rc=$?; \
                 dmsetup message {pool} 0 release_metadata_snap; exit $rc; }}"
            ),
        )?;
        let ranges = lvmmap::parse_thin_delta(&xml, a.size).map_err(Self::map_err)?;
        self.notes.push(format!(
            "volume {} backup {g}: thin_delta {base} -> {} changed {} bytes in {} ranges",
            v.name,
            snap_lv(g),
            ranges.iter().map(|(_, l)| l).sum::<u64>(),
            ranges.len()
        ));
        Ok(Some(ranges))
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
        g: u32,
    ) -> Result<Option<String>, PipelineError> {
        let vg = self.attached(&v.name)?.vg.clone();
        let status = if self.spec.thin {
            Self::sh(
                r,
                "status",
                &format!("dmsetup status {}-tpool", dm_name(&vg, "pool")),
            )?
        } else {
            Self::sh(
                r,
                "status",
                &format!("dmsetup status {}", dm_name(&vg, &snap_lv(g))),
            )?
        };
        let bad = ["Invalid", "Overflow", "Fail", "out_of_data_space", " ro "];
        Ok(bad.iter().any(|b| status.contains(b)).then(|| {
            format!(
                "the LVM snapshot failed during the backup (status `{}`)",
                status.trim()
            )
        }))
    }

    fn release(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        g: u32,
        committed: bool,
    ) -> Result<(), PipelineError> {
        let vg = self.attached(&v.name)?.vg.clone();
        let snap = snap_lv(g);
        let keep = self.spec.thin && self.spec.incremental == LvmIncremental::ThinDelta;
        let remove = |r: &mut Runner, lv: &str| {
            Self::sh(
                r,
                "destroy",
                &format!(
                    "if lvm lvs {vg}/{lv} >/dev/null 2>&1; then lvm lvremove -y {vg}/{lv}; fi"
                ),
            )
        };
        if keep && committed {
            // The new snapshot is the next incremental's base; the old one goes.
            if let Some((_, old)) = self.base.insert(v.name.clone(), (g, snap)) {
                remove(r, &old)?;
            }
        } else {
            remove(r, &snap)?;
        }
        Ok(())
    }

    fn static_layout(&self, volume: &str) -> Option<Vec<lvmmap::Segment>> {
        match &self.attached(volume).ok()?.layout {
            Layout::Linear { segments } => Some(segments.clone()),
            Layout::Thin { .. } => None,
        }
    }

    fn volume_image(
        &self,
        volume: &str,
        disk_image: &Path,
        out: &Path,
    ) -> Result<Option<PathBuf>, PipelineError> {
        let a = self.attached(volume)?;
        lvmmap::cut(
            &a.layout,
            disk_image,
            a.size,
            out,
            &out.with_extension("tmeta"),
        )
        .map_err(Self::map_err)?;
        Ok(Some(out.to_path_buf()))
    }

    fn notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_names_double_dashes() {
        assert_eq!(dm_name("bwvg0", "vol"), "bwvg0-vol");
        assert_eq!(dm_name("bw-vg", "pool_tmeta"), "bw--vg-pool_tmeta");
    }
}

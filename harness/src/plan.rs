//! The resolved plan of one run: a validated scenario plus one seed and one image become
//! sizes in bytes, block counts, COW sizes, the backup sequence with the workloads and
//! faults of each backup, per-workload and per-fault seeds, and the expectations. Nothing
//! boots before the plan exists, and the same scenario, seed and image always give the
//! same plan (the repro line relies on it).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{BackupKind, Expectations};
use crate::scenario::units::format_size;
use crate::scenario::{
    DiskBackend, FaultSpec, Filesystem, Floppy, PipelineSpec, Rate, Scenario, When, WorkloadSpec,
};

/// The module's COW default is a share of the volume, capped here.
pub const COW_CAP: u64 = 10 << 30;
/// Size of the extra disk whose I/O never completes.
pub const HANG_DISK_SIZE: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub scenario: String,
    pub scenario_file: PathBuf,
    pub description: String,
    pub story: String,
    pub image: String,
    pub seed: u64,
    pub timeout: Duration,
    pub guest: GuestPlan,
    pub volumes: Vec<VolumePlan>,
    /// Workloads that run to their end before the first backup (after the initial fill).
    pub before: Vec<WorkloadRun>,
    pub backups: Vec<BackupStep>,
    pub discovery_timeout: Duration,
    pub pipeline: PipelineSpec,
    pub expect: Expectations,
    /// One command line that reproduces this run.
    pub repro: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPlan {
    pub memory_bytes: u64,
    pub cpus: u32,
    /// Modules to load at boot: the scenario's, plus those its devices need.
    pub modules: Vec<String>,
    pub floppy: Floppy,
    /// Size of the never-answering disk, when the scenario asks for one.
    pub hang_disk: Option<u64>,
    /// Who serves the volumes.
    pub disk: DiskBackend,
    /// The witness disk's seeded completion schedule, if on.
    pub io_schedule: Option<IoSchedulePlan>,
}

/// The seeded schedule of every witness disk of a run (bw-disk's `--schedule-seed` and
/// `--schedule-max-delay-us`). The seed follows the run's seed, so the repro line
/// replays it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoSchedulePlan {
    pub seed: u64,
    pub max_delay_us: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumePlan {
    /// Position among the scenario's disks (QEMU node `d<index>`).
    pub index: usize,
    pub name: String,
    pub size_bytes: u64,
    /// 4 KiB blocks.
    pub blocks: u64,
    pub fs: Filesystem,
    pub mount: Option<String>,
    pub backup: bool,
    /// Bytes of initial fill (0 = none), and the seed that fills them.
    pub fill_bytes: u64,
    pub fill_seed: u64,
    /// Size of the COW store (bwsnap's file on the volume, or the pipeline's own).
    pub cow_bytes: u64,
    /// Size of the volume's disk: the volume itself, or (LVM) the physical volume that
    /// holds it with its metadata and snapshot space.
    pub disk_bytes: u64,
    /// The filesystem is made on the host (else in the guest, on the device the
    /// pipeline makes).
    pub mkfs_on_host: bool,
}

pub use crate::scenario::pipeline::LVM_EXTENT;
/// Where the first extent starts on a fresh physical volume.
pub const LVM_PE_START: u64 = 1 << 20;
/// A thin pool's metadata volume (and its spare).
pub const THIN_METADATA: u64 = 4 << 20;

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// The disk of an LVM volume: the first extent's offset, the volume, room for the
/// snapshot (a classic COW volume, or a thin pool's free space), a thin pool's metadata
/// and spare, and slack for rounding.
pub fn lvm_disk_bytes(volume: u64, cow: u64, thin: bool) -> u64 {
    let data = round_up(volume, LVM_EXTENT) + round_up(cow, LVM_EXTENT);
    let metadata = if thin { 2 * THIN_METADATA } else { 0 };
    LVM_PE_START + data + metadata + 2 * LVM_EXTENT
}

/// One run of a workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRun {
    /// Index in the scenario's `workloads`.
    pub index: usize,
    #[serde(flatten)]
    pub spec: WorkloadSpec,
    /// The seed of this run (distinct per workload and per backup).
    pub seed: u64,
    /// The workload's writer id (stamped blocks carry it).
    pub writer: u32,
}

/// One injected fault in one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRun {
    /// Index in the scenario's `faults`.
    pub index: usize,
    pub spec: FaultSpec,
    /// Seed for any random choice the injector makes (which bit to flip, ...).
    pub seed: u64,
}

/// One backup of the sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupStep {
    /// 1 = the full backup.
    pub number: u32,
    /// The target generation it should commit (the same number).
    pub generation: u32,
    pub kind: BackupKind,
    /// Run to their end before this backup starts (the `between` workloads).
    pub between: Vec<WorkloadRun>,
    /// Started before the snapshot, stopped when the backup ends.
    pub during: Vec<WorkloadRun>,
    pub faults: Vec<FaultRun>,
}

/// splitmix64: a seed per (scenario seed, purpose, index, backup), stable across
/// versions because the plan's reproducibility depends on it.
pub fn derive_seed(seed: u64, purpose: u64, index: u64, backup: u64) -> u64 {
    let mut z = seed
        ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ index.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ backup.wrapping_mul(0x1656_67b1_9e37_79f9);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const PURPOSE_FILL: u64 = 1;
const PURPOSE_WORKLOAD: u64 = 2;
const PURPOSE_FAULT: u64 = 3;
const PURPOSE_SCHEDULE: u64 = 4;

impl Scenario {
    /// The seeds the nightly runs: `seed`, `seed + 1`, ...
    pub fn seed_list(&self) -> Vec<u64> {
        (0..u64::from(self.seeds))
            .map(|i| self.seed.wrapping_add(i))
            .collect()
    }

    /// Every (image, seed) pair the nightly runs.
    pub fn matrix(&self) -> Vec<(String, u64)> {
        self.images
            .iter()
            .flat_map(|image| {
                self.seed_list()
                    .into_iter()
                    .map(move |seed| (image.clone(), seed))
            })
            .collect()
    }
}

impl Plan {
    /// Resolves a scenario for one seed and image. An image outside the scenario's list
    /// is allowed (a developer trying another kernel); the report says which ran.
    pub fn resolve(s: &Scenario, seed: u64, image: &str) -> Plan {
        let mut modules = s.guest.modules.clone();
        let mut need = |m: &str| {
            if !modules.iter().any(|have| have == m) {
                modules.push(m.to_string());
            }
        };
        if s.guest.floppy != Floppy::None {
            need("floppy");
        }
        // Every filesystem a volume is made with is loaded without being asked: a
        // scenario says `fs = "xfs"`, not also `modules = ["xfs"]`.
        for v in &s.volumes {
            if let Some(m) = v.fs.kernel_module() {
                need(m);
            }
        }
        let pipeline_modules: &[&str] = match &s.pipeline {
            PipelineSpec::Reference | PipelineSpec::External(_) => &[],
            PipelineSpec::DmSnapshot(_) => &["dm_snapshot"],
            // lvcreate -s checks for the snapshot target even for a thin snapshot.
            PipelineSpec::Lvm(l) if l.thin => &["dm_snapshot", "dm_thin_pool"],
            PipelineSpec::Lvm(_) => &["dm_snapshot"],
        };
        for m in pipeline_modules {
            if !modules.iter().any(|x| x == m) {
                modules.push(m.to_string());
            }
        }
        let volumes: Vec<VolumePlan> = s
            .volumes
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let cow_bytes = match &s.pipeline {
                    // The product's own COW file is capped at the size it declares.
                    PipelineSpec::External(e) => match &e.cow_file {
                        Some((_, max)) => *max,
                        None => s.backup.cow_size.resolve(v.size).clamp(4096, COW_CAP),
                    },
                    PipelineSpec::Reference
                    | PipelineSpec::DmSnapshot(_)
                    | PipelineSpec::Lvm(_) => {
                        s.backup.cow_size.resolve(v.size).clamp(4096, COW_CAP)
                    }
                };
                let (disk_bytes, mkfs_on_host) = match &s.pipeline {
                    PipelineSpec::Lvm(l) => (lvm_disk_bytes(v.size, cow_bytes, l.thin), false),
                    PipelineSpec::Reference
                    | PipelineSpec::DmSnapshot(_)
                    | PipelineSpec::External(_) => (v.size, true),
                };
                VolumePlan {
                    index,
                    name: v.name.clone(),
                    size_bytes: v.size,
                    blocks: v.blocks(),
                    fs: v.fs,
                    mount: v.mount.clone(),
                    backup: v.backup,
                    fill_bytes: v.fill.resolve(v.size),
                    fill_seed: derive_seed(seed, PURPOSE_FILL, index as u64, 0),
                    cow_bytes,
                    disk_bytes,
                    mkfs_on_host,
                }
            })
            .collect();
        let run_of = |index: usize, backup: u32| {
            let w = &s.workloads[index];
            WorkloadRun {
                index,
                spec: w.spec.clone(),
                seed: derive_seed(seed, PURPOSE_WORKLOAD, index as u64, u64::from(backup)),
                writer: index as u32 + 1,
            }
        };
        let before = s
            .workloads
            .iter()
            .enumerate()
            .filter(|(_, w)| w.when == When::Before)
            .map(|(i, _)| run_of(i, 0))
            .collect();
        let backups = (1..=s.backup.count())
            .map(|number| {
                let pick = |when: When| -> Vec<WorkloadRun> {
                    s.workloads
                        .iter()
                        .enumerate()
                        .filter(|(_, w)| w.when == when && w.backups.contains(&number))
                        .map(|(i, _)| run_of(i, number))
                        .collect()
                };
                BackupStep {
                    number,
                    generation: number,
                    kind: if number == 1 {
                        BackupKind::Full
                    } else {
                        BackupKind::Incremental
                    },
                    between: pick(When::Between),
                    during: pick(When::During),
                    faults: s
                        .faults
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| f.backup == number)
                        .map(|(i, f)| FaultRun {
                            index: i,
                            spec: f.spec.clone(),
                            seed: derive_seed(seed, PURPOSE_FAULT, i as u64, u64::from(number)),
                        })
                        .collect(),
                }
            })
            .collect();
        Plan {
            scenario: s.name.clone(),
            scenario_file: s.path.clone(),
            description: s.description.clone(),
            story: s.story.clone(),
            image: image.to_owned(),
            seed,
            timeout: s.timeout,
            guest: GuestPlan {
                memory_bytes: s.guest.memory,
                cpus: s.guest.cpus,
                modules,
                floppy: s.guest.floppy,
                hang_disk: s.guest.hang_disk.then_some(HANG_DISK_SIZE),
                disk: s.guest.disk,
                io_schedule: s.guest.io_max_delay.map(|d| IoSchedulePlan {
                    seed: derive_seed(seed, PURPOSE_SCHEDULE, 0, 0),
                    max_delay_us: d.as_micros().max(1) as u64,
                }),
            },
            volumes,
            before,
            backups,
            discovery_timeout: s.backup.discovery_timeout,
            pipeline: s.pipeline.clone(),
            expect: s.expect.clone(),
            repro: repro_line(&s.path, image, seed),
        }
    }

    /// The plan with its volumes served by `disk` instead of the scenario's choice
    /// (`run --disk`, `nightly --disk`); the repro line says so. Disk faults and the
    /// seeded schedule stay in the plan: on `qemu` the run refuses them.
    pub fn with_disk(mut self, disk: DiskBackend) -> Plan {
        if disk != self.guest.disk {
            self.guest.disk = disk;
            self.repro.push_str(&format!(" --disk {}", disk.name()));
        }
        self
    }

    /// The volumes that are backed up.
    pub fn backed_up(&self) -> impl Iterator<Item = &VolumePlan> {
        self.volumes.iter().filter(|v| v.backup)
    }
}

/// `blockwitness run FILE --image IMAGE --seed SEED`, shell-quoted where needed.
pub fn repro_line(file: &std::path::Path, image: &str, seed: u64) -> String {
    format!(
        "blockwitness run {} --image {} --seed {seed}",
        shell_quote(&file.display().to_string()),
        shell_quote(image)
    )
}

fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn describe_workload(run: &WorkloadRun) -> String {
    let w = &run.spec;
    let mut parts = vec![format!("{} on {}", w.kind.name(), w.volume)];
    if w.stamped {
        parts.push("stamped".into());
    }
    if let Some(r) = w.rate {
        parts.push(match r {
            Rate::BytesPerSec(b) => format!("{}/s", format_size(b)),
            Rate::OpsPerSec(o) => format!("{o} ops/s"),
        });
    }
    if let Some(p) = w.pace {
        parts.push(format!("paced {p}"));
    }
    if let Some(why) = &w.wall_clock_reason {
        parts.push(format!("wall clock: {why}"));
    }
    if let Some(a) = w.amount {
        parts.push(format_size(a));
    }
    if let Some(o) = w.ops {
        parts.push(format!("{o} ops"));
    }
    if let Some(d) = w.duration {
        parts.push(format!("{:?}", d));
    }
    parts.push(format!("seed {:#x}", run.seed));
    parts.join(", ")
}

impl fmt::Display for Plan {
    /// The timeline, for `check` and for people reading a report.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(
            f,
            "{} on {} with seed {} (timeout {:?})",
            self.scenario, self.image, self.seed, self.timeout
        )?;
        writeln!(f, "  pipeline: {}", self.pipeline.kind().name())?;
        writeln!(
            f,
            "  guest: {} memory, {} cpu(s), modules [{}], floppy {:?}{}, {} disk{}",
            format_size(self.guest.memory_bytes),
            self.guest.cpus,
            self.guest.modules.join(", "),
            self.guest.floppy,
            if self.guest.hang_disk.is_some() {
                ", hang disk"
            } else {
                ""
            },
            self.guest.disk.name(),
            match self.guest.io_schedule {
                Some(s) => format!(
                    ", seeded I/O schedule (seed {:#x}, at most {} us)",
                    s.seed, s.max_delay_us
                ),
                None => String::new(),
            }
        )?;
        for v in &self.volumes {
            writeln!(
                f,
                "  volume {} (d{}): {} = {} blocks, {}{}, fill {}, COW {}{}",
                v.name,
                v.index,
                format_size(v.size_bytes),
                v.blocks,
                v.fs.name(),
                v.mount
                    .as_deref()
                    .map(|m| format!(" at {m}"))
                    .unwrap_or_default(),
                format_size(v.fill_bytes),
                format_size(v.cow_bytes),
                if v.backup { "" } else { ", not backed up" }
            )?;
        }
        for w in &self.before {
            writeln!(f, "  before: {}", describe_workload(w))?;
        }
        for b in &self.backups {
            writeln!(f, "  backup {} ({:?}):", b.number, b.kind)?;
            for w in &b.between {
                writeln!(f, "    first: {}", describe_workload(w))?;
            }
            for w in &b.during {
                writeln!(f, "    during: {}", describe_workload(w))?;
            }
            for fault in &b.faults {
                writeln!(
                    f,
                    "    fault: {} {} {:?}",
                    fault.spec.layer().name(),
                    fault.spec.kind().name(),
                    fault.spec
                )?;
            }
        }
        write!(f, "  repro: {}", self.repro)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const TEXT: &str = r#"
name = "incremental-chain"
description = "A full backup and two incrementals."
story = "incremental tracking"
images = ["debian-6.1", "debian-6.12"]
seed = 10
seeds = 3
[guest]
floppy = "empty"
[[volumes]]
name = "data"
size = "64MiB"
fill = "25%"
[[workloads]]
kind = "overwrite"
stamped = true
rate = "1MiB per 10%"
[[workloads]]
kind = "append"
when = "between"
amount = "1MiB"
[backup]
incrementals = 2
[[faults]]
layer = "module"
kind = "drop-tracking"
every = 10
backup = 3
"#;

    fn scenario() -> Scenario {
        crate::scenario::parse(Path::new("scenarios/incremental-chain.toml"), TEXT).unwrap()
    }

    #[test]
    fn resolves_sizes_schedule_and_seeds() {
        let plan = Plan::resolve(&scenario(), 10, "debian-6.1");
        let v = &plan.volumes[0];
        assert_eq!(
            (v.size_bytes, v.blocks, v.fill_bytes),
            (64 << 20, 16384, 16 << 20)
        );
        assert_eq!(v.cow_bytes, (64u64 << 20) / 10 / 4096 * 4096);
        assert_eq!(plan.guest.modules, ["floppy", "ext4"]);
        assert_eq!(plan.backups.len(), 3);
        assert_eq!(plan.backups[0].kind, BackupKind::Full);
        assert!(plan.backups[0].between.is_empty());
        assert_eq!(plan.backups[1].between.len(), 1);
        assert_eq!(
            plan.backups
                .iter()
                .map(|b| b.during.len())
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert_eq!(plan.backups[2].faults.len(), 1);
        assert!(plan.backups[1].faults.is_empty());
        // Every workload run has its own seed.
        let seeds: std::collections::BTreeSet<u64> = plan
            .backups
            .iter()
            .flat_map(|b| b.during.iter().chain(&b.between))
            .map(|w| w.seed)
            .collect();
        assert_eq!(seeds.len(), 5);
        assert_eq!(
            plan.repro,
            "blockwitness run scenarios/incremental-chain.toml --image debian-6.1 --seed 10"
        );
    }

    #[test]
    fn same_inputs_same_plan_and_seeds_change_it() {
        let s = scenario();
        assert_eq!(
            Plan::resolve(&s, 10, "debian-6.1"),
            Plan::resolve(&s, 10, "debian-6.1")
        );
        let a = Plan::resolve(&s, 10, "debian-6.1");
        let b = Plan::resolve(&s, 11, "debian-6.1");
        assert_ne!(a.backups[0].during[0].seed, b.backups[0].during[0].seed);
        assert_ne!(a.volumes[0].fill_seed, b.volumes[0].fill_seed);
    }

    #[test]
    fn matrix_covers_images_and_seeds() {
        let m = scenario().matrix();
        assert_eq!(m.len(), 6);
        assert_eq!(m[0], ("debian-6.1".to_string(), 10));
        assert_eq!(m[5], ("debian-6.12".to_string(), 12));
    }

    #[test]
    fn an_lvm_disk_holds_the_volume_and_its_snapshot_space() {
        // 1 MiB before the first extent, the volume, the COW rounded to extents, slack.
        assert_eq!(
            lvm_disk_bytes(64 << 20, 6 << 20, false),
            (1 + 64 + 8 + 8) << 20
        );
        // A thin pool adds its metadata and the spare.
        assert_eq!(
            lvm_disk_bytes(64 << 20, 6 << 20, true),
            (1 + 64 + 8 + 8 + 8) << 20
        );
        let text = TEXT.replace(
            "[backup]",
            "[pipeline]\nkind = \"lvm\"\nthin = true\n[backup]",
        );
        let s = crate::scenario::parse(Path::new("x.toml"), &text.replace("\n[[faults]]\nlayer = \"module\"\nkind = \"drop-tracking\"\nevery = 10\nbackup = 3\n", "")).unwrap();
        let plan = Plan::resolve(&s, 1, "debian-6.1");
        assert!(!plan.volumes[0].mkfs_on_host);
        assert!(plan.volumes[0].disk_bytes > plan.volumes[0].size_bytes);
        assert!(plan.guest.modules.contains(&"dm_thin_pool".to_string()));
    }

    #[test]
    fn a_disk_override_is_in_the_repro_line() {
        let plan = Plan::resolve(&scenario(), 10, "debian-6.1");
        assert_eq!(plan.guest.disk, DiskBackend::Witness);
        assert_eq!(plan.clone().with_disk(DiskBackend::Witness), plan);
        let q = plan.with_disk(DiskBackend::Qemu);
        assert_eq!(q.guest.disk, DiskBackend::Qemu);
        assert!(q.repro.ends_with("--seed 10 --disk qemu"), "{}", q.repro);
    }

    #[test]
    fn the_seeded_schedule_follows_the_run_seed() {
        let text = TEXT.replace(
            "[guest]\nfloppy = \"empty\"",
            "[guest]\nfloppy = \"empty\"\nio_schedule = \"seeded\"\nio_max_delay = \"3ms\"",
        );
        let s = crate::scenario::parse(Path::new("s.toml"), &text).unwrap();
        let a = Plan::resolve(&s, 10, "debian-6.1")
            .guest
            .io_schedule
            .unwrap();
        let b = Plan::resolve(&s, 11, "debian-6.1")
            .guest
            .io_schedule
            .unwrap();
        assert_eq!(a.max_delay_us, 3000);
        assert_ne!(a.seed, b.seed);
        assert_eq!(
            a,
            Plan::resolve(&s, 10, "debian-6.1")
                .guest
                .io_schedule
                .unwrap()
        );
        assert_eq!(
            Plan::resolve(&scenario(), 10, "debian-6.1")
                .guest
                .io_schedule,
            None
        );
    }

    #[test]
    fn repro_quotes_odd_paths() {
        assert_eq!(
            repro_line(Path::new("my dir/x.toml"), "debian-6.1", 1),
            "blockwitness run 'my dir/x.toml' --image debian-6.1 --seed 1"
        );
    }

    #[test]
    fn every_filesystem_module_a_volume_needs_is_loaded_without_being_asked() {
        let text = TEXT.replace(
            "[[volumes]]\nname = \"data\"\nsize = \"64MiB\"",
            "[[volumes]]\nname = \"x\"\nsize = \"320MiB\"\nfs = \"xfs\"\n[[volumes]]\nname = \"data\"\nsize = \"64MiB\"\nfs = \"ext2\"",
        )
        .replace("kind = \"overwrite\"", "kind = \"overwrite\"\nvolume = \"data\"")
        .replace("kind = \"append\"", "kind = \"append\"\nvolume = \"data\"");
        let s = crate::scenario::parse(Path::new("x.toml"), &text).unwrap();
        let plan = Plan::resolve(&s, 1, "debian-6.1");
        // The guest's ext2 is mounted by the ext4 driver.
        assert_eq!(plan.guest.modules, ["floppy", "xfs", "ext4"]);
    }

    #[test]
    fn plan_prints_a_timeline() {
        let text = Plan::resolve(&scenario(), 10, "debian-6.1").to_string();
        assert!(text.contains("backup 3 (Incremental)"), "{text}");
        assert!(text.contains("fault: module drop-tracking"), "{text}");
        assert!(text.contains("paced 1MiB per 10%"), "{text}");
    }
}

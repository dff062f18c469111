//! The seam between a run and the pipeline under test.
//!
//! A run owns the timeline (disks, boot, workloads, the truth at each instant, guest
//! faults, checks, classification); a [`Pipeline`] owns everything that is specific to
//! one backup product: what it loads in the guest, what it runs for a backup, how it
//! announces its snapshot instant, where its target keeps what it stored, and whatever
//! recordings it can offer (witness, transport). The reference pipeline (bwsnap +
//! bw-agent + bw-target) is one implementation; [`driven`] is the other: the harness
//! drives a snapshot provider step by step (the kernel's dm-snapshot in [`dmsnap`], LVM
//! in [`lvm`], a vendor's product by its commands in [`external`]) and records it with
//! its own reader, channel and store. [`for_plan`] picks one.

pub mod channel;
pub mod command;
pub mod dmsnap;
pub mod driven;
pub mod external;
pub mod guest_tools;
mod lines;
pub mod lvm;
pub mod lvmmap;
pub mod reader;
pub mod reference;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::gate::Gate;
use crate::image::BuiltImage;
use crate::model::{BlockHash, Layer};
use crate::plan::{BackupStep, Plan, VolumePlan};
use crate::qemu::Disk;
use crate::record::{Claim, Live, Source};
use crate::scenario::PipelineSpec;
use crate::vm::Vm;

/// Why the pipeline could not be driven (infrastructure: a harness error, never a
/// product verdict).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("guest control channel")]
    Guest(#[from] crate::guest::GuestError),
    #[error("QEMU")]
    Qemu(#[from] crate::qemu::QemuError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Step(#[from] command::StepError),
    #[error("packing the guest userland")]
    Userland(#[from] crate::image::userland::UserlandError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl PipelineError {
    pub fn failed(what: impl Into<String>, detail: impl std::fmt::Display) -> PipelineError {
        PipelineError::Failed {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// Why the run could not act at the snapshot instant (the pipeline aborts the backup).
#[derive(Debug, thiserror::Error)]
pub enum InstantError {
    #[error(transparent)]
    Truth(#[from] crate::truth::TruthError),
    /// The volumes the pipeline announced are not the ones it was asked to back up.
    #[error("the pipeline announced {announced}, and the run backs up {backed}")]
    Volumes { announced: String, backed: String },
    /// A write to the volume went through while the pipeline said it was frozen.
    #[error(
        "volume {volume} is not frozen at the announced instant: a write to {mount} went through"
    )]
    NotFrozen { volume: String, mount: String },
    /// The write probe could not tell.
    #[error("could not tell whether volume {volume} is frozen: {detail}")]
    Probe { volume: String, detail: String },
}

/// A volume as the pipeline announced it at its instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncedVolume {
    pub name: String,
    /// e.g. /dev/vdb
    pub device: String,
    pub mount: Option<String>,
}

/// A volume as the pipeline sees it in the guest.
#[derive(Clone, Debug)]
pub struct GuestVolume {
    pub name: String,
    /// The volume's disk, e.g. /dev/vdb.
    pub disk: String,
    /// What the volume is used through: the disk, or a device the pipeline made on it
    /// (a dm snapshot-origin, a logical volume).
    pub device: String,
    pub mount: Option<String>,
    pub cow_bytes: u64,
}

/// What the run lets the pipeline do at the snapshot instant and while a backup runs.
pub trait RunHooks {
    /// Called once per backup while the pipeline holds the volumes frozen, with the
    /// volumes it says it froze: the run checks they are the ones it backs up and that
    /// they are really frozen, takes the truth (and injects faults that belong to the
    /// instant). An error aborts the backup.
    fn at_instant(
        &mut self,
        vm: &mut Vm,
        announced: &[AnnouncedVolume],
    ) -> Result<(), InstantError>;
    /// Called regularly while the backup runs, with what the pipeline knows of its
    /// progress; the run injects time- or progress-triggered guest faults here, and
    /// grants paced workloads their next allowance (which may take a moment: the
    /// workload writes it before the gate opens).
    fn tick(&mut self, vm: &mut Vm, progress: Progress);
    /// The pacing gate of this backup, when it has paced `during` workloads. A pipeline
    /// asks it before its progress passes a block ([`Gate::may_pass`]: "I am about to
    /// reach block N of volume V") and holds there while the answer is no, where it
    /// measures its progress: the reference pipeline in its transport proxy, another
    /// pipeline in its own reader. `tick` must keep being called while it holds. A
    /// pipeline that never asks makes paced workloads a harness error.
    fn gate(&self) -> Option<Arc<Gate>> {
        None
    }
}

/// How far a backup has got.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub elapsed: Duration,
    /// Blocks that crossed the transport so far, when the pipeline can tell.
    pub blocks_crossed: Option<u64>,
    /// Blocks the backup will send, when known.
    pub blocks_expected: Option<u64>,
}

/// One block as the pipeline's witness recorded it.
#[derive(Clone, Copy, Debug)]
pub struct WitnessBlock {
    pub snapshot: BlockHash,
    pub live: Live,
    pub source: Option<Source>,
}

/// What one backup produced for one volume.
#[derive(Clone, Debug, Default)]
pub struct VolumeBackup {
    pub volume: String,
    /// The generation the pipeline meant to make.
    pub generation: Option<u32>,
    pub incremental: bool,
    /// The agent's word for this volume.
    pub agent: Option<Claim>,
    /// The target's word.
    pub target: Option<Claim>,
    /// Witness records by block (None: the pipeline keeps none).
    pub witness: Option<BTreeMap<u64, WitnessBlock>>,
    /// The last frame hash that crossed the transport, by block (None: not recorded).
    pub transport: Option<BTreeMap<u64, BlockHash>>,
    pub retransmits: BTreeMap<u64, u32>,
    /// Blocks the pipeline's sender sent (an incremental's changed-block map as read).
    pub sent: BTreeSet<u64>,
    /// The pipeline's scratch file on the volume at this backup's instant (bwsnap's COW
    /// file), as a path from the volume's root: the harness maps it on the truth image.
    pub cow_file: Option<String>,
    /// What the pipeline says its scratch space (a COW file on the volume) covers, in
    /// bytes: (offset, length). The harness finds the file on the truth image itself and
    /// compares.
    pub cow_ranges: Option<Vec<(u64, u64)>>,
    /// Blocks where an injected fault acted, by the layer that logged them: only the
    /// layer that injected a backup's fault is believed about where it acted.
    pub fault_sites: BTreeMap<Layer, BTreeSet<u64>>,
    pub instant_ns: Option<u64>,
}

/// How often an injected fault fired, as its injecting layer counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// None: the count could not be read (why is in `counted_by`).
    pub count: Option<u64>,
    pub counted_by: String,
}

/// What one backup produced.
#[derive(Clone, Debug, Default)]
pub struct BackupResult {
    /// The agent's overall word (exit status and summary).
    pub agent: Option<Claim>,
    /// The instant was reached (the run's `at_instant` ran).
    pub instant_reached: bool,
    pub volumes: Vec<VolumeBackup>,
    /// Facts for the report (faults injected, retries, ...).
    pub notes: Vec<String>,
    /// The agent's raw output, kept for the report.
    pub agent_output: String,
    /// How often each of the step's pipeline-layer faults fired, by its index in the
    /// scenario's `faults` ([`crate::plan::FaultRun::index`]).
    pub fired: BTreeMap<usize, Fired>,
}

/// A pipeline under test.
pub trait Pipeline {
    /// Short name for reports.
    fn name(&self) -> &'static str;

    /// virtio-serial ports it needs in the guest.
    fn ports(&self) -> Vec<String>;

    /// Disks it needs beside the volumes (a COW store, a target disk), made on the host.
    fn disks(&self) -> Vec<Disk> {
        Vec::new()
    }

    /// newc archives to unpack after the image's initramfs (its guest userland).
    fn initrd_extra(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// After boot, before the volume is mounted: make the device the volume is used
    /// through on its disk `disk` (and the filesystem when the plan makes it in the
    /// guest). Returns that device.
    fn attach(
        &mut self,
        _vm: &mut Vm,
        _volume: &VolumePlan,
        disk: &str,
    ) -> Result<String, PipelineError> {
        Ok(disk.to_string())
    }

    /// The volume's image cut out of its disk's image (an LVM logical volume inside its
    /// physical volume), written to `out`; None when the disk is the volume.
    fn volume_image(
        &self,
        _volume: &str,
        _disk_image: &std::path::Path,
        _out: &std::path::Path,
    ) -> Result<Option<PathBuf>, PipelineError> {
        Ok(None)
    }

    /// Where the volume's blocks lie on its disk when that stayed put for the whole run (a
    /// linear logical volume), so the disk's write history can judge the volume; None
    /// when the disk is the volume, or when the layout moves (a thin volume's blocks are
    /// placed as they are first written).
    fn static_layout(&self, _volume: &str) -> Option<Vec<lvmmap::Segment>> {
        None
    }

    /// After boot: start host services and prepare the guest.
    fn start(&mut self, vm: &mut Vm, volumes: &[GuestVolume]) -> Result<(), PipelineError>;

    /// Runs one backup of `volumes`, with the faults of `step` that belong to the
    /// pipeline's layers (module, transport, target, agent).
    fn backup(
        &mut self,
        vm: &mut Vm,
        plan: &Plan,
        step: &BackupStep,
        volumes: &[GuestVolume],
        hooks: &mut dyn RunHooks,
        deadline: Duration,
    ) -> Result<BackupResult, PipelineError>;

    /// Where the target keeps `generation` of `volume`, for the harness's own re-read;
    /// None when it committed no such generation.
    fn stored_image(&self, volume: &str, generation: u32) -> Option<PathBuf>;

    /// Stops host services; returns notes for the report.
    fn stop(&mut self) -> Vec<String>;
}

/// The pipeline a plan names, ready to boot with. `work` is the run's work directory
/// (stores, built products, extra disks); `measure_dd` times a `dd` of each snapshot
/// device after a driven pipeline's copy (`bench pipelines`).
pub fn for_plan(
    plan: &Plan,
    image: &BuiltImage,
    work: &std::path::Path,
    measure_dd: bool,
) -> Result<Box<dyn Pipeline>, PipelineError> {
    Ok(match &plan.pipeline {
        PipelineSpec::Reference => Box::new(reference::Reference::new(image, work)?),
        PipelineSpec::DmSnapshot(spec) => Box::new(driven::Driven::new(
            Box::new(dmsnap::DmSnapshot::new(*spec, plan, work)?),
            plan,
            work,
            spec.reader,
            measure_dd,
        )?),
        PipelineSpec::Lvm(spec) => Box::new(driven::Driven::new(
            Box::new(lvm::Lvm::new(*spec, plan, work)?),
            plan,
            work,
            spec.reader,
            measure_dd,
        )?),
        PipelineSpec::External(spec) => Box::new(driven::Driven::new(
            Box::new(external::External::new(
                (**spec).clone(),
                plan,
                image,
                work,
            )?),
            plan,
            work,
            spec.reader,
            measure_dd,
        )?),
    })
}

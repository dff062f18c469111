//! A pipeline the harness drives step by step: a snapshot [`Provider`] (dm-snapshot,
//! LVM, a vendor's product) makes and removes snapshots; the harness runs the backup
//! around it and records it with its own parts, none of them on the product's word:
//!
//! - the truth at the instant: between freeze and thaw (the harness's or the product's
//!   commands), or when the product announces it with `bw-pipe instant`; a product that
//!   cannot announce ([`SnapshotMode::Unannounced`]) gets no truth here: the run judges
//!   its backup at the history oracle's cut;
//! - the snapshot and live points from its own reader (`bw-pipe read` on `bw.reader`),
//!   which reads the snapshot device and the live device during the backup window;
//! - the transport point on its channel (`bw.channel`) when the backup streams through
//!   it, and the target point from its store (or the target disk a `copy` wrote);
//! - a COW file on the volume the provider names, found by the harness on the truth
//!   image and capped at the declared size.
//!
//! Every step the provider runs goes through [`command`]'s contract; a step that fails
//! is a harness error, except the copy itself (`stream`/`copy`), whose exit status is
//! the product's claim about its backup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bw_guest::control::Finished;
use bw_guest::pipe::wire::{self, InstantMessage};

use super::channel::Channel;
use super::command::{self, Env, Output, Running, Step, StepError};
use super::lines::LinePort;
use super::lvmmap;
use super::reader::ReaderPort;
use super::store::Store;
use super::{
    AnnouncedVolume, BackupResult, GuestVolume, Pipeline, PipelineError, Progress, RunHooks,
    VolumeBackup,
};
use crate::model::{BackupKind, BLOCK};
use crate::plan::{BackupStep, Plan, VolumePlan};
use crate::qemu::Disk;
use crate::record::Claim;
use crate::vm::Vm;

/// How long bytes may still be on their way after the product's command has ended.
const GRACE: Duration = Duration::from_secs(10);
/// Where changed-block lists are written in the guest.
const CHANGED_DIR: &str = "/tmp/bw-changed";

/// A product's scratch file on the volume (its COW file), as a path from the volume's
/// root: the run finds it on the truth image itself and excludes it, capped at the
/// declared size; `ranges` is the guest's view of it, which the run compares.
#[derive(Clone, Debug)]
pub struct CowFile {
    pub path: String,
    pub ranges: Option<Vec<(u64, u64)>>,
}

/// How a provider's snapshot is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMode {
    /// freeze, setup, (truth), thaw: the harness takes the truth while frozen.
    FreezeSetupThaw,
    /// One command that announces its instant with `bw-pipe instant`.
    Announced,
    /// One command that freezes, snapshots and thaws on its own and cannot announce:
    /// no truth is taken at an instant (the run's is the history oracle's, at its cut).
    Unannounced,
}

/// How a backup leaves the guest.
#[derive(Clone, Debug)]
pub enum Deliver {
    /// A command writing to the channel (`$BW_CHANNEL`).
    Stream { script: String, env: Env },
    /// A command writing to a target disk; `image` is that disk's file on the host.
    Copy {
        script: String,
        env: Env,
        image: PathBuf,
    },
}

/// Runs guest steps and keeps their output for the report.
pub struct Runner<'a> {
    pub vm: &'a mut Vm,
    pub log: &'a mut String,
}

impl Runner<'_> {
    fn keep(&mut self, step: &Step, out: &Result<Finished, StepError>) {
        self.log
            .push_str(&format!("== {}: {}\n", step.name, step.script));
        match out {
            Ok(done) => {
                self.log.push_str(&done.stdout);
                self.log.push_str(&done.stderr);
            }
            Err(e) => self.log.push_str(&format!("{}\n", crate::error_chain(e))),
        }
    }

    /// Runs a step to its end.
    pub fn run(&mut self, step: &Step) -> Result<Finished, StepError> {
        let out = command::run(self.vm, step);
        self.keep(step, &out);
        out
    }

    /// Runs a step and returns the last line it printed (it must print one).
    pub fn line(&mut self, step: &Step) -> Result<String, StepError> {
        let done = self.run(step)?;
        Ok(done
            .stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string())
    }

    /// A harness shell line with no environment and a short limit.
    pub fn sh(&mut self, name: &str, script: &str, limit: Duration) -> Result<Finished, StepError> {
        let env = Env::new();
        self.run(&Step {
            name,
            script,
            env: &env,
            limit,
            output: Output::Any,
        })
    }

    fn spawned(&mut self, step: &Step, done: &Result<Option<Finished>, StepError>) {
        if let Ok(Some(_)) | Err(_) = done {
            let out = match done {
                Ok(Some(d)) => Ok(d.clone()),
                Err(e) => Err(StepError::Failed {
                    step: step.name.to_string(),
                    command: step.script.to_string(),
                    how: "see above".into(),
                    tail: crate::error_chain(e),
                }),
                Ok(None) => return,
            };
            self.keep(step, &out);
        }
    }
}

/// A snapshot provider the harness drives. Volumes are the run's [`GuestVolume`]s;
/// `g` is the backup's number (1 = the full backup), which is also its generation.
pub trait Provider {
    fn name(&self) -> &'static str;

    /// Disks beside the volumes.
    fn disks(&self) -> Vec<Disk> {
        Vec::new()
    }

    /// The guest userland archive, if the provider needs one.
    fn userland(&self) -> Option<PathBuf> {
        None
    }

    /// Before mounting: the device the volume is used through (see [`Pipeline::attach`]).
    fn attach(
        &mut self,
        _r: &mut Runner,
        _volume: &VolumePlan,
        disk: &str,
    ) -> Result<String, PipelineError> {
        Ok(disk.to_string())
    }

    /// After mounting, before the first backup.
    fn start(&mut self, _r: &mut Runner, _volumes: &[GuestVolume]) -> Result<(), PipelineError> {
        Ok(())
    }

    fn mode(&self) -> SnapshotMode;

    fn freeze(&mut self, _r: &mut Runner, _v: &GuestVolume, _g: u32) -> Result<(), PipelineError> {
        Ok(())
    }

    fn setup(&mut self, _r: &mut Runner, _v: &GuestVolume, _g: u32) -> Result<(), PipelineError> {
        Ok(())
    }

    fn thaw(&mut self, _r: &mut Runner, _v: &GuestVolume, _g: u32) -> Result<(), PipelineError> {
        Ok(())
    }

    /// [`SnapshotMode::Announced`] and [`SnapshotMode::Unannounced`]: the one command,
    /// and its environment.
    fn snapshot_command(&self, _v: &GuestVolume, _g: u32) -> (String, Env, Duration) {
        (String::new(), Env::new(), Duration::from_secs(60))
    }

    /// The snapshot device's path in the guest.
    fn device(&mut self, r: &mut Runner, v: &GuestVolume, g: u32) -> Result<String, PipelineError>;

    /// A scratch file the product keeps on the volume (see [`CowFile`]), or None.
    fn cow_file(
        &mut self,
        _r: &mut Runner,
        _v: &GuestVolume,
        _g: u32,
    ) -> Result<Option<CowFile>, PipelineError> {
        Ok(None)
    }

    /// For an incremental: the changed byte ranges since the last backup; None reads
    /// everything.
    fn changed(
        &mut self,
        _r: &mut Runner,
        _v: &GuestVolume,
        _g: u32,
    ) -> Result<Option<Vec<(u64, u64)>>, PipelineError> {
        Ok(None)
    }

    /// How the backup of `v` leaves the guest, reading `snapshot`; `changed` is the
    /// guest path of the changed-block list, when there is one.
    fn deliver(&self, v: &GuestVolume, g: u32, snapshot: &str, changed: Option<&str>) -> Deliver;

    /// After the copy: the provider's own reason to fail the backup (a dm snapshot that
    /// was invalidated while it was read), or None.
    fn after_copy(
        &mut self,
        _r: &mut Runner,
        _v: &GuestVolume,
        _g: u32,
    ) -> Result<Option<String>, PipelineError> {
        Ok(None)
    }

    /// Removes (or keeps, for the next incremental) the snapshot, after every backup;
    /// `committed` says whether generation `g` was committed.
    fn release(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        g: u32,
        committed: bool,
    ) -> Result<(), PipelineError>;

    /// See [`Pipeline::static_layout`].
    fn static_layout(&self, _volume: &str) -> Option<Vec<lvmmap::Segment>> {
        None
    }

    /// See [`Pipeline::volume_image`].
    fn volume_image(
        &self,
        _volume: &str,
        _disk_image: &Path,
        _out: &Path,
    ) -> Result<Option<PathBuf>, PipelineError> {
        Ok(None)
    }

    /// Facts for the report, taken once at the end.
    fn notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// A figure a driven backup puts in its notes, for `bench pipelines`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// The product's copy (stream or copy step), with the reader beside it when on.
    Copy,
    /// `dd` of the same snapshot device alone, after the copy.
    Dd,
}

impl Figure {
    fn label(self) -> &'static str {
        match self {
            Figure::Copy => "copy",
            Figure::Dd => "dd of the snapshot device",
        }
    }

    /// `volume V backup G: <label> read N bytes in S s`.
    pub fn note(self, volume: &str, g: u32, bytes: u64, took: Duration) -> String {
        format!(
            "volume {volume} backup {g}: {} read {bytes} bytes in {:.3} s",
            self.label(),
            took.as_secs_f64()
        )
    }

    /// (bytes, seconds) from a note of this figure.
    pub fn parse(self, note: &str) -> Option<(u64, f64)> {
        let rest = note.split_once(&format!(": {} read ", self.label()))?.1;
        let (bytes, rest) = rest.split_once(" bytes in ")?;
        let secs = rest.strip_suffix(" s")?;
        Some((bytes.parse().ok()?, secs.parse().ok()?))
    }
}

/// The volumes a driven backup froze, as the run checks them: the harness itself asked
/// for exactly these (the run still proves each is frozen with a write probe).
fn announced(volumes: &[GuestVolume]) -> Vec<AnnouncedVolume> {
    volumes
        .iter()
        .map(|v| AnnouncedVolume {
            name: v.name.clone(),
            device: v.device.clone(),
            mount: v.mount.clone(),
        })
        .collect()
}

/// A device-mapper or LVM command in the guest, its output. The guest has no udev:
/// libdevmapper makes the /dev/mapper nodes itself.
pub(super) fn dm_step(
    r: &mut Runner,
    name: &str,
    script: &str,
    limit: Duration,
) -> Result<String, PipelineError> {
    let mut env = Env::new();
    env.insert("DM_DISABLE_UDEV".into(), "1".into());
    Ok(r.run(&Step {
        name,
        script,
        env: &env,
        limit,
        output: Output::Any,
    })?
    .stdout)
}

/// Flushes and freezes a mounted volume before the harness sets up its snapshot.
pub(super) fn fsfreeze(
    r: &mut Runner,
    v: &GuestVolume,
    limit: Duration,
) -> Result<(), PipelineError> {
    if let Some(m) = &v.mount {
        dm_step(
            r,
            "freeze",
            &format!("sync && fsfreeze --freeze {m}"),
            limit,
        )?;
    }
    Ok(())
}

/// The engine: a [`Provider`] run as a [`Pipeline`].
pub struct Driven {
    provider: Box<dyn Provider>,
    store: Store,
    reader_on: bool,
    channel: Option<Channel>,
    reader: Option<ReaderPort>,
    /// The host end of `bw.instant`.
    instant: Option<LinePort>,
    volume_sizes: BTreeMap<String, u64>,
    notes: Vec<String>,
    measure_dd: bool,
}

impl Driven {
    pub fn new(
        provider: Box<dyn Provider>,
        plan: &Plan,
        work: &Path,
        reader: bool,
        measure_dd: bool,
    ) -> Result<Driven, PipelineError> {
        let dir = work.join("store");
        std::fs::create_dir_all(&dir).map_err(|source| PipelineError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Driven {
            provider,
            store: Store::new(&dir),
            reader_on: reader,
            channel: None,
            reader: None,
            instant: None,
            volume_sizes: plan
                .volumes
                .iter()
                .map(|v| (v.name.clone(), v.size_bytes))
                .collect(),
            notes: Vec::new(),
            measure_dd,
        })
    }

    /// Guest CLOCK_MONOTONIC now (the stamps' clock), for the instant.
    fn guest_now(r: &mut Runner) -> Option<u64> {
        r.sh("now", "/bin/bw-pipe now", Duration::from_secs(20))
            .ok()
            .and_then(|d| d.stdout.trim().parse().ok())
    }

    /// freeze, setup, truth, thaw (always), over every volume.
    fn instant_frozen(
        &mut self,
        r: &mut Runner,
        volumes: &[GuestVolume],
        g: u32,
        hooks: &mut dyn RunHooks,
        result: &mut BackupResult,
    ) -> Result<Option<u64>, PipelineError> {
        let mut frozen: Vec<&GuestVolume> = Vec::new();
        let mut failure: Option<PipelineError> = None;
        for v in volumes {
            match self.provider.freeze(r, v, g) {
                Ok(()) => frozen.push(v),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut made = Vec::new();
        if failure.is_none() {
            for v in volumes {
                match self.provider.setup(r, v, g) {
                    Ok(()) => made.push(v),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        let mut instant = None;
        if failure.is_none() {
            instant = Self::guest_now(r);
            match hooks.at_instant(r.vm, &announced(volumes)) {
                Ok(()) => result.instant_reached = true,
                Err(e) => result
                    .notes
                    .push(format!("instant aborted: {}", crate::error_chain(&e))),
            }
        }
        for v in frozen.iter().rev() {
            if let Err(e) = self.provider.thaw(r, v, g) {
                result
                    .notes
                    .push(format!("thawing {}: {}", v.name, crate::error_chain(&e)));
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            for v in made {
                if let Err(e) = self.provider.release(r, v, g, false) {
                    result.notes.push(format!(
                        "removing the snapshot of {} after a failed setup: {}",
                        v.name,
                        crate::error_chain(&e)
                    ));
                }
            }
            return Err(e);
        }
        Ok(instant)
    }

    /// Runs the product's `snapshot` command for `v` to its end, answering each line it
    /// sends on bw.instant with `answer`.
    fn run_snapshot(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        g: u32,
        answer: &mut dyn FnMut(&mut Vm, &str) -> InstantMessage,
    ) -> Result<(), PipelineError> {
        let (script, env, limit) = self.provider.snapshot_command(v, g);
        let step = Step {
            name: "snapshot",
            script: &script,
            env: &env,
            limit,
            output: Output::Any,
        };
        let mut running = Running::spawn(r.vm, &step)?;
        loop {
            if let Some(line) = self
                .instant
                .as_mut()
                .and_then(|p| p.poll(Duration::from_millis(50)))
            {
                let reply = answer(r.vm, &line);
                if let Some(p) = self.instant.as_mut() {
                    p.reply(&reply);
                }
            }
            let done = running.poll(r.vm, Duration::from_millis(100));
            r.spawned(&step, &done);
            match done {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The product's own snapshot command, answering its announced instant.
    fn instant_announced(
        &mut self,
        r: &mut Runner,
        volumes: &[GuestVolume],
        g: u32,
        hooks: &mut dyn RunHooks,
        result: &mut BackupResult,
    ) -> Result<Option<u64>, PipelineError> {
        let mut instant = None;
        for v in volumes {
            self.run_snapshot(r, v, g, &mut |vm, line| {
                match serde_json::from_str::<InstantMessage>(line) {
                    Ok(InstantMessage::Instant { instant_ns }) if !result.instant_reached => {
                        match hooks.at_instant(vm, &announced(volumes)) {
                            Ok(()) => {
                                result.instant_reached = true;
                                instant = Some(instant_ns);
                                InstantMessage::Continue
                            }
                            Err(e) => {
                                let reason = crate::error_chain(&e);
                                result.notes.push(format!("instant aborted: {reason}"));
                                InstantMessage::Abort { reason }
                            }
                        }
                    }
                    // A second announcement in one backup: the truth is taken.
                    Ok(InstantMessage::Instant { .. }) => InstantMessage::Continue,
                    Ok(InstantMessage::Continue | InstantMessage::Abort { .. }) | Err(_) => {
                        result
                            .notes
                            .push(format!("unexpected message on bw.instant: {line}"));
                        InstantMessage::Abort {
                            reason: "unexpected message".into(),
                        }
                    }
                }
            })?;
        }
        if !result.instant_reached {
            return Err(PipelineError::failed(
                "the product's snapshot command",
                "ended without announcing its instant with `bw-pipe instant`: the harness \
                 has no truth for this backup (a product that cannot announce its instant \
                 says so with `instant = \"oracle\"` in `[pipeline]`, and is judged at the \
                 history oracle's cut)",
            ));
        }
        Ok(instant)
    }

    /// The product's own snapshot command, which cannot announce its instant: run to its
    /// end, volume by volume, with no truth taken. Returns the guest's clock right after
    /// the last command ended: the instant lies before it (a stamped write made later is
    /// from after the instant). A product that runs `bw-pipe instant` anyway is told to
    /// abort (the scenario said it cannot announce), rather than left waiting.
    fn instant_unannounced(
        &mut self,
        r: &mut Runner,
        volumes: &[GuestVolume],
        g: u32,
        result: &mut BackupResult,
    ) -> Result<Option<u64>, PipelineError> {
        for v in volumes {
            self.run_snapshot(r, v, g, &mut |_, line| {
                result.notes.push(format!(
                    "the snapshot command of {} used bw.instant, and the scenario says the product cannot announce (instant = \"oracle\"): {line}",
                    v.name
                ));
                InstantMessage::Abort {
                    reason: "this scenario judges the product at the history oracle's cut (instant = \"oracle\")".into(),
                }
            })?;
        }
        Ok(Self::guest_now(r))
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_volume(
        &mut self,
        r: &mut Runner,
        step: &BackupStep,
        v: &GuestVolume,
        hooks: &mut dyn RunHooks,
        started: Instant,
        deadline: Duration,
        instant_ns: Option<u64>,
        notes: &mut Vec<String>,
    ) -> Result<VolumeBackup, PipelineError> {
        let g = step.number;
        let size = self.volume_sizes.get(&v.name).copied().unwrap_or(0);
        let device = self.provider.device(r, v, g)?;
        let cow = self.provider.cow_file(r, v, g)?;
        let wanted = if step.kind == BackupKind::Incremental {
            self.provider.changed(r, v, g)?
        } else {
            None
        };
        let previous = self.store.previous(&v.name, g);
        let changed = match (wanted, &previous) {
            (Some(c), Some(_)) => Some(c),
            (Some(_), None) => {
                notes.push(format!(
                    "volume {}: no earlier generation is committed; backup {g} reads the whole snapshot",
                    v.name
                ));
                None
            }
            (None, _) => None,
        };
        let changed_file = match &changed {
            Some(list) => {
                let path = format!("{CHANGED_DIR}-{}", v.name);
                let mut text = String::new();
                for (o, l) in list {
                    text.push_str(&format!("{o} {l}\n"));
                }
                r.vm.guest.write_file(&path, &text)?;
                Some(path)
            }
            None => None,
        };
        let deliver = self
            .provider
            .deliver(v, g, &device, changed_file.as_deref());
        if let Deliver::Stream { .. } = deliver {
            let base = if changed.is_some() {
                previous.as_ref().map(|(_, p)| p.as_path())
            } else {
                None
            };
            let partial = self.store.begin(&v.name, g, size, base)?;
            self.channel
                .as_ref()
                .expect("started")
                .begin(&partial, size, hooks.gate().map(|g| (g, v.name.clone())))
                .map_err(|source| PipelineError::Io {
                    path: partial.clone(),
                    source,
                })?;
        }
        let remaining = deadline.saturating_sub(started.elapsed());
        let empty = Env::new();
        let reader_script = format!(
            "exec /bin/bw-pipe read --snapshot {device} --live {} --volume {}{}",
            v.device,
            v.name,
            changed_file
                .as_deref()
                .map(|f| format!(" --extents {f}"))
                .unwrap_or_default()
        );
        let reader_step = Step {
            name: "reader",
            script: &reader_script,
            env: &empty,
            limit: remaining,
            output: Output::Any,
        };
        if let Some(rp) = &self.reader {
            rp.clear();
        }
        let mut reader = match self.reader_on {
            true => Some(Running::spawn(r.vm, &reader_step)?),
            false => None,
        };
        let (script, env, copy_image) = match &deliver {
            Deliver::Stream { script, env } => (script.clone(), env.clone(), None),
            Deliver::Copy { script, env, image } => {
                (script.clone(), env.clone(), Some(image.clone()))
            }
        };
        let name = if copy_image.is_some() {
            "copy"
        } else {
            "stream"
        };
        let copy_step = Step {
            name,
            script: &script,
            env: &env,
            limit: remaining,
            output: Output::Any,
        };
        let mut copier = match Running::spawn(r.vm, &copy_step) {
            Ok(c) => c,
            Err(e) => {
                if let Some(rd) = reader {
                    rd.kill(r.vm);
                }
                return Err(e.into());
            }
        };
        let copy_started = Instant::now();
        let mut copy_took: Option<Duration> = None;
        let expected = changed
            .as_ref()
            .map(|c| c.iter().map(|(_, l)| l / BLOCK as u64).sum::<u64>())
            .unwrap_or(size / BLOCK as u64);
        let mut copied: Option<Result<Finished, StepError>> = None;
        let mut read_done: Option<Result<Finished, StepError>> = None;
        loop {
            if copied.is_none() {
                let done = copier.poll(r.vm, Duration::from_millis(100));
                r.spawned(&copy_step, &done);
                match done {
                    Ok(Some(d)) => copied = Some(Ok(d)),
                    Ok(None) => {}
                    Err(e) => copied = Some(Err(e)),
                }
                if copied.is_some() {
                    copy_took = Some(copy_started.elapsed());
                }
            }
            if let (Some(rd), None) = (reader.as_mut(), &read_done) {
                let done = rd.poll(r.vm, Duration::from_millis(50));
                r.spawned(&reader_step, &done);
                match done {
                    Ok(Some(d)) => read_done = Some(Ok(d)),
                    Ok(None) => {}
                    Err(e) => read_done = Some(Err(e)),
                }
            }
            let crossed = match (&self.channel, copy_image.is_none()) {
                (Some(c), true) => c.blocks_crossed(),
                _ => self.reader.as_ref().map_or(0, ReaderPort::blocks_read),
            };
            hooks.tick(
                r.vm,
                Progress {
                    elapsed: started.elapsed(),
                    blocks_crossed: Some(crossed),
                    blocks_expected: Some(expected),
                },
            );
            let reader_finished = reader.is_none() || read_done.is_some();
            // The stream's last bytes may still wait in the port, held at the pacing gate
            // for the workload's last step: keep granting steps until they have crossed
            // (a stream that never completes is judged by `finish` after the grace).
            let stream_settled = match (&self.channel, copy_image.is_none()) {
                (Some(c), true) => {
                    c.settled() || copy_took.is_some_and(|t| copy_started.elapsed() > t + GRACE)
                }
                _ => true,
            };
            if copied.is_some() && reader_finished && stream_settled {
                break;
            }
            if r.vm.machine.exited().is_some() {
                notes.push(format!(
                    "volume {}: the guest stopped during the backup",
                    v.name
                ));
                break;
            }
        }
        // A copy that outlived the run's time is a harness error; so is a reader that
        // could not read (it reads through errors, so a failure is the harness's).
        let claim = match copied {
            Some(Ok(_)) => Claim::Success,
            Some(Err(StepError::Failed { how, tail, .. })) => {
                Claim::Failure(format!("{name} {how}: {}", tail.replace('\n', " | ")))
            }
            Some(Err(e)) => {
                if let (Some(rd), None) = (reader, &read_done) {
                    rd.kill(r.vm);
                }
                return Err(e.into());
            }
            None => Claim::Silent,
        };
        if let Some(Err(e)) = read_done {
            return Err(PipelineError::failed(
                "the harness's reader",
                crate::error_chain(&e),
            ));
        }
        let (reading, problems) = match &self.reader {
            Some(rp) if self.reader_on => {
                let (rd, p) = rp.take(&v.name, GRACE);
                (rd, p)
            }
            _ => (None, Vec::new()),
        };
        for p in problems {
            notes.push(format!("reader stream: {p}"));
        }
        if let Some(rd) = &reading {
            if !rd.complete {
                notes.push(format!(
                    "volume {}: the reader's stream is incomplete ({} of {} blocks)",
                    v.name,
                    rd.blocks.len(),
                    rd.expected
                ));
            }
            if rd.snapshot_errors > 0 {
                notes.push(format!(
                    "volume {}: {} snapshot blocks could not be read by the harness's reader",
                    v.name, rd.snapshot_errors
                ));
            }
        }
        let session = match copy_image {
            None => Some(self.channel.as_ref().expect("started").finish(GRACE)),
            Some(_) => None,
        };
        if let Some(took) = copy_took {
            notes.push(Figure::Copy.note(&v.name, g, expected * BLOCK as u64, took));
        }
        if self.measure_dd && claim == Claim::Success {
            // The baseline of `bench pipelines`: the same device read by dd alone.
            let bytes = size - size % (1 << 20);
            let script = format!(
                "dd if={device} of=/dev/null bs=1M count={} iflag=direct 2>&1",
                bytes >> 20
            );
            let at = Instant::now();
            r.sh("dd", &script, deadline.saturating_sub(started.elapsed()))?;
            notes.push(Figure::Dd.note(&v.name, g, bytes, at.elapsed()));
        }
        let own = self.provider.after_copy(r, v, g)?;
        let claim = match (claim, own) {
            (Claim::Success, Some(reason)) => Claim::Failure(reason),
            (c, Some(reason)) => {
                notes.push(format!("volume {}: {reason}", v.name));
                c
            }
            (c, None) => c,
        };
        // Commit what the product delivered, only when it claims success and (through
        // the channel) the stream is whole.
        let mut committed = false;
        match (&session, &copy_image) {
            (Some(s), _) => {
                if claim == Claim::Success && s.complete {
                    self.store.commit(&v.name, g)?;
                    committed = true;
                } else {
                    self.store.discard(&v.name, g);
                }
                for p in &s.problems {
                    notes.push(format!("volume {} channel: {p}", v.name));
                }
            }
            (None, Some(image)) => {
                if claim == Claim::Success {
                    // The appliance's view: whatever reached the disk once the guest
                    // flushed its caches.
                    r.sh("sync", "sync", Duration::from_secs(60))?;
                    self.store.commit_copy(&v.name, g, image)?;
                    committed = true;
                }
            }
            (None, None) => {}
        }
        if !committed {
            notes.push(format!(
                "volume {}: generation {g} not committed ({})",
                v.name,
                match &claim {
                    Claim::Success => "the stream was not whole".to_string(),
                    Claim::Failure(why) => why.clone(),
                    Claim::Silent => "the product said nothing".to_string(),
                }
            ));
        }
        let sent: BTreeSet<u64> = match (&session, &changed) {
            (Some(s), _) => s.blocks.keys().copied().collect(),
            (None, Some(list)) => list
                .iter()
                .flat_map(|(o, l)| o / BLOCK as u64..(o + l) / BLOCK as u64)
                .collect(),
            (None, None) => (0..size / BLOCK as u64).collect(),
        };
        let incremental = changed.is_some();
        let witness = reading.map(|rd| {
            if incremental {
                rd.blocks
                    .into_iter()
                    .filter(|(b, _)| sent.contains(b))
                    .collect()
            } else {
                rd.blocks
            }
        });
        Ok(VolumeBackup {
            volume: v.name.clone(),
            generation: Some(g),
            incremental,
            agent: Some(claim),
            target: None,
            witness,
            transport: session.as_ref().map(|s| s.blocks.clone()),
            retransmits: session.map(|s| s.retransmits).unwrap_or_default(),
            sent,
            cow_file: cow.as_ref().map(|c| c.path.clone()),
            cow_ranges: cow.and_then(|c| c.ranges),
            fault_sites: BTreeMap::new(),
            instant_ns,
        })
    }
}

impl Pipeline for Driven {
    fn name(&self) -> &'static str {
        self.provider.name()
    }

    fn ports(&self) -> Vec<String> {
        vec![
            wire::READER_PORT.to_string(),
            wire::CHANNEL_PORT.to_string(),
            wire::INSTANT_PORT.to_string(),
        ]
    }

    fn disks(&self) -> Vec<Disk> {
        self.provider.disks()
    }

    fn initrd_extra(&self) -> Vec<PathBuf> {
        self.provider.userland().into_iter().collect()
    }

    fn attach(
        &mut self,
        vm: &mut Vm,
        volume: &VolumePlan,
        disk: &str,
    ) -> Result<String, PipelineError> {
        let mut log = String::new();
        let out = self
            .provider
            .attach(&mut Runner { vm, log: &mut log }, volume, disk);
        if out.is_err() && !log.is_empty() {
            self.notes.push(format!("attach {}:\n{log}", volume.name));
        }
        out
    }

    fn volume_image(
        &self,
        volume: &str,
        disk_image: &Path,
        out: &Path,
    ) -> Result<Option<PathBuf>, PipelineError> {
        self.provider.volume_image(volume, disk_image, out)
    }

    fn static_layout(&self, volume: &str) -> Option<Vec<lvmmap::Segment>> {
        self.provider.static_layout(volume)
    }

    fn start(&mut self, vm: &mut Vm, volumes: &[GuestVolume]) -> Result<(), PipelineError> {
        self.channel = Some(Channel::start(vm.machine.connect_port(wire::CHANNEL_PORT)?));
        self.reader = Some(ReaderPort::start(
            vm.machine.connect_port(wire::READER_PORT)?,
        ));
        self.instant = Some(LinePort::new(vm.machine.connect_port(wire::INSTANT_PORT)?));
        let mut log = String::new();
        let out = self
            .provider
            .start(&mut Runner { vm, log: &mut log }, volumes);
        if !log.is_empty() {
            self.notes.push(format!("start:\n{}", log.trim_end()));
        }
        out
    }

    fn backup(
        &mut self,
        vm: &mut Vm,
        _plan: &Plan,
        step: &BackupStep,
        volumes: &[GuestVolume],
        hooks: &mut dyn RunHooks,
        deadline: Duration,
    ) -> Result<BackupResult, PipelineError> {
        let started = Instant::now();
        let g = step.number;
        let mut result = BackupResult::default();
        let mut log = String::new();
        let mut r = Runner { vm, log: &mut log };
        let instant = match self.provider.mode() {
            SnapshotMode::FreezeSetupThaw => {
                self.instant_frozen(&mut r, volumes, g, hooks, &mut result)
            }
            SnapshotMode::Announced => {
                self.instant_announced(&mut r, volumes, g, hooks, &mut result)
            }
            SnapshotMode::Unannounced => self.instant_unannounced(&mut r, volumes, g, &mut result),
        };
        // Without an instant to reach, the snapshot is made once its command ended.
        let snapshotted =
            result.instant_reached || self.provider.mode() == SnapshotMode::Unannounced;
        let instant = match instant {
            Ok(i) => i,
            Err(e) => {
                result.agent_output = log;
                return Err(e);
            }
        };
        let mut outcome = Ok(());
        for v in volumes {
            if !snapshotted {
                break;
            }
            let mut notes = Vec::new();
            let vb = self.copy_volume(
                &mut r, step, v, hooks, started, deadline, instant, &mut notes,
            );
            result.notes.extend(notes);
            // The snapshot goes after every backup, a failed one too.
            let committed = self.store.committed(&v.name, g).is_some();
            let released = if r.vm.machine.exited().is_none() {
                self.provider.release(&mut r, v, g, committed)
            } else {
                Ok(())
            };
            match (vb, released) {
                (Ok(vb), Ok(())) => result.volumes.push(vb),
                (Ok(vb), Err(e)) => {
                    result.volumes.push(vb);
                    outcome = Err(e);
                    break;
                }
                (Err(e), released) => {
                    if let Err(re) = released {
                        result.notes.push(format!(
                            "removing the snapshot of {} after the error: {}",
                            v.name,
                            crate::error_chain(&re)
                        ));
                    }
                    outcome = Err(e);
                    break;
                }
            }
        }
        if !snapshotted {
            for v in volumes {
                let _ = self.provider.release(&mut r, v, g, false);
            }
        }
        let all_ok = !result.volumes.is_empty()
            && result
                .volumes
                .iter()
                .all(|v| v.agent == Some(Claim::Success));
        result.agent = Some(if all_ok {
            Claim::Success
        } else {
            Claim::Failure("not every volume was backed up".into())
        });
        result.agent_output = log;
        outcome.map(|()| result)
    }

    fn stored_image(&self, volume: &str, generation: u32) -> Option<PathBuf> {
        self.store.committed(volume, generation)
    }

    fn stop(&mut self) -> Vec<String> {
        let mut notes = std::mem::take(&mut self.notes);
        notes.extend(self.provider.notes());
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_note_reads_back_and_only_as_its_own_figure() {
        let note = Figure::Copy.note("data", 1, 134_217_728, Duration::from_millis(2500));
        assert_eq!(
            note,
            "volume data backup 1: copy read 134217728 bytes in 2.500 s"
        );
        assert_eq!(Figure::Copy.parse(&note), Some((134_217_728, 2.5)));
        assert_eq!(Figure::Dd.parse(&note), None);
        let dd = Figure::Dd.note("data", 2, 1 << 20, Duration::from_secs(1));
        assert_eq!(Figure::Dd.parse(&dd), Some((1 << 20, 1.0)));
    }
}

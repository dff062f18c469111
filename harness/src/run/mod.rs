//! One run: a plan becomes disks on the host, a booted guest, workloads, backups with
//! the truth taken at every instant, the checks the scenario asks for, a recording, a
//! classification and a report under reports/<run-id>/.
//!
//! Anything that goes wrong with the infrastructure is recorded as a harness error (exit
//! 2), never as a product pass or failure; the report is written either way.

mod assemble;
mod cut;
pub mod disks;
mod freeze;
mod guestops;
mod oracle;
mod pace;
mod witness_disks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::accel::{self, AccelChoice};
pub(crate) use crate::error_chain as chain;
use crate::events::{Event, Reporter, Unit};
use crate::image::{self, BuildOptions, BuiltImage};
use crate::model::{BlockClass, Exit, Outcome, Verdict};
use crate::pipeline::{
    AnnouncedVolume, BackupResult, Fired, GuestVolume, InstantError, Pipeline, PipelineError,
    Progress, RunHooks,
};
use crate::plan::{BackupStep, Plan, WorkloadRun};
use crate::qemu::{Accel, Disk, DiskFormat};
use crate::record::{
    BackupSpeed, CheckKind, CheckResult, FaultFired, Recording, RunEvents, RunInfo, SlowRecord,
    Timing, TruthState,
};
use crate::scenario::{BlockSpan, DiskBackend, EndHow, FaultSpec, ResetAt};
use crate::truth::{Truth, WitnessTruth};
use crate::vm::{BootOptions, Vm};
use witness_disks::{ArmAt, RunWitness};

pub use assemble::BackupRecord;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub accel: AccelChoice,
    pub reports_dir: PathBuf,
    pub cache: PathBuf,
    pub project_root: PathBuf,
    /// Keep the work directory (disks, truth layers, target store) after the run.
    pub keep_work: bool,
    /// Images already built (the nightly builds each once, at its start): a run on one
    /// of these uses it as it is, never rebuilding or re-resolving it, so every run of a
    /// nightly runs the same kernel.
    pub prebuilt: Vec<BuiltImage>,
    /// For `bench pipelines`: a driven pipeline also times a `dd` of each snapshot
    /// device after its copy (the baseline its throughput is measured against).
    pub measure_dd: bool,
    /// `--slow N`: QEMU runs at 1/N of the wall clock (a stop/continue duty cycle, see
    /// `qemu::throttle`); the scenario's timeout and the run's deadlines grow N-fold.
    pub slow: Option<u32>,
}

impl RunOptions {
    /// The defaults every command uses.
    pub fn standard(accel: AccelChoice) -> RunOptions {
        RunOptions {
            accel,
            reports_dir: crate::paths::reports_dir(),
            cache: crate::paths::cache_dir(),
            project_root: crate::paths::project_root(),
            keep_work: false,
            prebuilt: Vec::new(),
            measure_dd: false,
            slow: None,
        }
    }

    /// The slow-down factor: 1 at full speed.
    pub fn slow_factor(&self) -> u32 {
        self.slow.unwrap_or(1).max(1)
    }
}

/// What a run ended with.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub run_id: String,
    pub scenario: String,
    pub image: String,
    pub seed: u64,
    pub report_dir: PathBuf,
    pub verdict: Verdict,
    pub elapsed: Duration,
    /// Block classes found, other than ok and excluded.
    pub found_classes: Vec<BlockClass>,
    /// Run-level outcomes found.
    pub outcomes: Vec<Outcome>,
    /// Every injected fault and how often it fired.
    pub faults: Vec<FaultFired>,
    /// Whether the history oracle agreed with the truth at the announced instant on
    /// every block of every generation it judged (None: no witness disk, nothing
    /// judged).
    pub oracle_agrees: Option<bool>,
    /// Whether the run's truth came from the history oracle's cut (a product that
    /// cannot announce its instant): such a run has no instant for the oracle to agree
    /// with, and `oracle_agrees` says nothing about it.
    pub judged_at_cut: bool,
}

impl RunResult {
    pub fn exit(&self) -> Exit {
        self.verdict.exit()
    }
}

/// A unique, readable run id: scenario, image, seed and the start time.
pub fn run_id(plan: &Plan) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{}-s{}-{}{:03}",
        plan.scenario,
        plan.image,
        plan.seed,
        now.as_secs(),
        now.subsec_millis()
    )
}

/// Runs one plan end to end and writes its report. Never panics on a failure of the
/// product or the infrastructure: both end up in the report. A panic of the harness
/// itself is caught and reported as a harness error; its work directory, temporary
/// directories and children go with the unwinding (and with Ctrl-C, see
/// [`crate::cleanup`]).
pub fn run_plan(
    plan: &Plan,
    scenario_text: &str,
    opts: &RunOptions,
    reporter: &dyn Reporter,
) -> RunResult {
    let started = Instant::now();
    let runs = opts.cache.join("runs");
    // Leftovers of runs whose process is gone (killed, or a power cut).
    let swept = crate::cleanup::sweep_stale(&runs);
    let wanted = run_id(plan);
    let (report_dir, reserve_error) = match crate::report::new_dir(&opts.reports_dir, &wanted) {
        Ok(dir) => (dir, None),
        Err(e) => (opts.reports_dir.join(&wanted), Some(chain(&e))),
    };
    let run_id = report_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(wanted);
    reporter.event(&Event::RunStarted {
        run_id: run_id.clone(),
        scenario: plan.scenario.clone(),
        image: plan.image.clone(),
        seed: plan.seed,
    });
    let workdir = crate::cleanup::WorkDir::create(&runs, &run_id);
    let work = match &workdir {
        Ok(w) => w.path().to_owned(),
        Err(_) => runs.join(&run_id),
    };
    let mut run = Runner::new(plan, opts, reporter, &run_id, work);
    for dir in swept {
        run.note(format!(
            "removed the work directory of a run that is gone: {}",
            dir.display()
        ));
    }
    match (&workdir, reserve_error) {
        (Err(e), _) => run.harness_error(format!(
            "creating the work directory under {}: {e}",
            runs.display()
        )),
        (Ok(_), Some(e)) => run.harness_error(format!("creating the report directory: {e}")),
        (Ok(_), None) => {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.execute()));
            if let Err(payload) = caught {
                let what = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic without a message");
                run.harness_error(format!("the harness panicked: {what}"));
            }
        }
    }
    let mut recording = run.recording();
    // The histories go into the report directory, beside the recording that names them.
    let histories = run.copy_histories(&report_dir);
    recording.events.harness_errors.extend(histories);
    let faults = recording.events.faults.clone();
    let oracle_agrees = oracle_agreement(&recording);
    let judged_at_cut = recording
        .volumes
        .iter()
        .flat_map(|v| &v.generations)
        .any(|g| matches!(g.truth_state, TruthState::AtCut { .. }));
    let console = run.work.join("run/console.log");
    let mut found_classes = Vec::new();
    let mut outcomes = Vec::new();
    let verdict = match crate::report::write(&report_dir, &recording, Some(scenario_text)) {
        Ok(outcome) => {
            found_classes = outcome.found;
            outcomes = outcome.outcomes;
            let _ = std::fs::copy(&console, report_dir.join("console.log"));
            for n in 1..=plan.backups.len() {
                let name = format!("agent-backup-{n}.log");
                let _ = std::fs::copy(run.work.join("run").join(&name), report_dir.join(&name));
            }
            outcome.verdict
        }
        Err(e) => Verdict::CouldNotRun {
            errors: vec![format!("writing the report: {}", chain(&e))],
        },
    };
    if let Ok(mut w) = workdir {
        if opts.keep_work {
            w.keep();
        }
    }
    let elapsed = started.elapsed();
    reporter.event(&Event::RunFinished {
        run_id: run_id.clone(),
        verdict: verdict.name().to_string(),
        report_dir: report_dir.display().to_string(),
        elapsed,
    });
    RunResult {
        run_id,
        scenario: plan.scenario.clone(),
        image: plan.image.clone(),
        seed: plan.seed,
        report_dir,
        verdict,
        elapsed,
        found_classes,
        outcomes,
        faults,
        oracle_agrees,
        judged_at_cut,
    }
}

/// Whether every generation the oracle judged agrees with the truth at its instant.
fn oracle_agreement(rec: &Recording) -> Option<bool> {
    let judged: Vec<bool> = rec
        .volumes
        .iter()
        .flat_map(|v| &v.generations)
        .filter_map(|g| g.oracle.as_ref().map(|o| o.agrees()))
        .collect();
    (!judged.is_empty()).then(|| judged.iter().all(|a| *a))
}

/// The state of one run.
struct Runner<'a> {
    plan: &'a Plan,
    opts: &'a RunOptions,
    reporter: &'a dyn Reporter,
    run_id: String,
    work: PathBuf,
    started: Instant,
    started_unix: u64,
    image: Option<BuiltImage>,
    accel: Option<(Accel, String)>,
    events: RunEvents,
    timings: Vec<Timing>,
    notes: Vec<String>,
    backups: Vec<BackupRecord>,
    truth: Option<Truth>,
    pipeline: Option<Box<dyn Pipeline>>,
    /// Files on each volume before the first shutdown, for the remount check.
    file_lists: Vec<(String, String)>,
    /// What the `--slow` throttle measured on the first boot.
    slowed: Option<crate::qemu::throttle::ThrottleStats>,
    /// Blocks per second of each backup, as the pipeline reported its progress.
    speeds: Vec<BackupSpeed>,
    /// The witness disks while the guest runs.
    witness: Option<RunWitness>,
    /// What they left behind.
    ended: Option<witness_disks::Ended>,
}

impl<'a> Runner<'a> {
    fn new(
        plan: &'a Plan,
        opts: &'a RunOptions,
        reporter: &'a dyn Reporter,
        run_id: &str,
        work: PathBuf,
    ) -> Self {
        Runner {
            plan,
            opts,
            reporter,
            run_id: run_id.to_string(),
            work,
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            image: None,
            accel: None,
            events: RunEvents::default(),
            timings: Vec::new(),
            notes: Vec::new(),
            backups: Vec::new(),
            truth: None,
            pipeline: None,
            file_lists: Vec::new(),
            slowed: None,
            speeds: Vec::new(),
            witness: None,
            ended: None,
        }
    }

    fn phase(&self, name: impl Into<String>) {
        self.reporter.event(&Event::Phase {
            run_id: self.run_id.clone(),
            name: name.into(),
        });
    }

    fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.reporter.event(&Event::Note {
            run_id: self.run_id.clone(),
            text: text.clone(),
        });
        self.notes.push(text);
    }

    fn timed<T>(&mut self, phase: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let t = Instant::now();
        let out = f(self);
        self.timings.push(Timing {
            phase: phase.to_string(),
            seconds: t.elapsed().as_secs_f64(),
        });
        out
    }

    fn harness_error(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.reporter.event(&Event::Note {
            run_id: self.run_id.clone(),
            text: format!("harness error: {text}"),
        });
        self.events.harness_errors.push(text);
    }

    /// The scenario's timeout, stretched by `--slow`.
    fn timeout(&self) -> Duration {
        self.plan.timeout * self.opts.slow_factor()
    }

    fn remaining(&self) -> Duration {
        self.timeout().saturating_sub(self.started.elapsed())
    }

    fn execute(&mut self) {
        if let Err(e) = crate::doctor::require(crate::doctor::FOR_RUN) {
            self.harness_error(e.to_string());
            return;
        }
        if let Some(f) = self.unsupported_fault() {
            self.harness_error(f);
            return;
        }
        // Refuse volumes the host cannot hold before anything is made.
        let need: u64 = self.plan.volumes.iter().map(|v| v.size_bytes).sum::<u64>()
            + self.plan.guest.hang_disk.unwrap_or(0);
        if let Some(free) = crate::scenario::host::free_bytes(&self.work) {
            if need > free {
                return self.harness_error(format!(
                    "the volumes need {} and {} holds {} free: nothing was created",
                    crate::scenario::units::format_size_approx(need),
                    self.work.display(),
                    crate::scenario::units::format_size_approx(free)
                ));
            }
        }
        if let Err(e) = std::fs::create_dir_all(self.work.join("run")) {
            self.harness_error(format!("creating {}: {e}", self.work.display()));
            return;
        }
        let pinned = self
            .opts
            .prebuilt
            .iter()
            .find(|i| i.name == self.plan.image)
            .cloned();
        if let Some(img) = &pinned {
            self.note(format!(
                "image {} as built at the start ({}, kernel {})",
                img.name, img.key, img.kernel_release
            ));
        } else {
            self.phase(format!("building image {}", self.plan.image));
        }
        let built = self.timed("image", |r| {
            if let Some(img) = pinned {
                return Ok(img);
            }
            let opts = BuildOptions {
                cache: r.opts.cache.clone(),
                project_root: r.opts.project_root.clone(),
                with_bwsnap: true,
            };
            let reporter = r.reporter;
            let run_id = r.run_id.clone();
            image::build(&r.plan.image, &opts, &mut |step| {
                reporter.event(&Event::Note {
                    run_id: run_id.clone(),
                    text: step.to_string(),
                })
            })
        });
        let image = match built {
            Ok(i) => i,
            Err(e) => {
                return self.harness_error(format!(
                    "building image {}: {}",
                    self.plan.image,
                    chain(&e)
                ))
            }
        };
        let decision = accel::decide(
            self.opts.accel,
            &image.kernel,
            &image.initramfs,
            &self.opts.cache,
        );
        self.note(format!(
            "accelerator {} ({})",
            decision.accel, decision.reason
        ));
        self.accel = Some((decision.accel, decision.reason));
        self.image = Some(image);

        self.phase("creating disks");
        let mut disks = match self.timed("disks", |r| disks::create(r.plan, &r.work)) {
            Ok(d) => d,
            Err(e) => return self.harness_error(format!("creating disks: {}", chain(&e))),
        };
        let witness_volumes = self.plan.guest.disk == DiskBackend::Witness;
        if witness_volumes || disks.hang.is_some() {
            let served = if witness_volumes {
                std::mem::take(&mut disks.volumes)
            } else {
                Vec::new()
            };
            let started = self.timed("witness disks", |r| {
                RunWitness::start(r.plan, &served, disks.hang.as_ref(), &r.work)
            });
            match started {
                Ok((w, vhost)) => {
                    disks.vhost = vhost;
                    self.witness = Some(w);
                }
                Err(e) => return self.harness_error(format!("starting the witness disks: {e}")),
            }
        }
        self.truth = Some(match (&mut self.witness, witness_volumes) {
            (Some(w), true) => {
                Truth::Witness(WitnessTruth::new(&self.work, w.truth_volumes(self.plan)))
            }
            (Some(_), false) | (None, _) => Truth::new(
                &self.work,
                &disks
                    .volumes
                    .iter()
                    .zip(&self.plan.volumes)
                    .filter(|(_, v)| v.backup)
                    .map(|(d, v)| (v.name.clone(), d.id.clone(), d.path.clone()))
                    .collect::<Vec<_>>(),
            ),
        });
        self.phase(format!(
            "preparing the {} pipeline",
            self.plan.pipeline.kind().name()
        ));
        let made = self.timed("pipeline", |r| {
            crate::pipeline::for_plan(
                r.plan,
                r.image.as_ref().expect("set above"),
                &r.work,
                r.opts.measure_dd,
            )
        });
        match made {
            Ok(p) => self.pipeline = Some(p),
            Err(e) => return self.harness_error(format!("preparing the pipeline: {}", chain(&e))),
        }
        self.guest_life(&disks);
        if let Some(p) = self.pipeline.as_mut() {
            let notes = p.stop();
            self.notes.extend(notes);
        }
        self.end_witness();
        self.after_guest();
    }

    /// Ends the witness disks (the guest has gone): their errors become harness
    /// errors, and the truth's final states are written for fsck and the second boot.
    fn end_witness(&mut self) {
        let Some(w) = self.witness.take() else {
            return;
        };
        self.phase("ending the witness disks");
        let ended = self.timed("witness disks end", |_| w.finish());
        for e in &ended.errors {
            self.harness_error(e.clone());
        }
        for d in &ended.disks {
            self.notes.push(format!(
                "witness disk {}: {} requests, {} read, {} written, history {} bytes{}",
                d.record.id,
                d.record.requests.values().sum::<u64>(),
                crate::scenario::units::format_size(d.record.bytes_read),
                crate::scenario::units::format_size(d.record.bytes_written),
                d.record.history_bytes,
                if d.record.complete {
                    ""
                } else {
                    " (cut short)"
                }
            ));
        }
        self.disk_fired_at_end(&ended.fired);
        self.ended = Some(ended);
        if let Some(Truth::Witness(t)) = self.truth.as_mut() {
            let errors = t.finalise();
            for e in errors {
                self.harness_error(format!("the final state of the volumes: {}", chain(&e)));
            }
        }
    }

    /// Copies every witness disk's history into the report directory; returns errors.
    fn copy_histories(&self, report_dir: &std::path::Path) -> Vec<String> {
        let Some(ended) = &self.ended else {
            return Vec::new();
        };
        if let Err(e) = std::fs::create_dir_all(report_dir) {
            return vec![format!("creating {}: {e}", report_dir.display())];
        }
        ended
            .disks
            .iter()
            .filter_map(|d| {
                let to = report_dir.join(&d.record.history_file);
                std::fs::copy(&d.history, &to).err().map(|e| {
                    format!(
                        "copying the history {} to {}: {e}",
                        d.history.display(),
                        to.display()
                    )
                })
            })
            .collect()
    }

    /// What this run cannot inject: disk faults and the seeded schedule without witness
    /// disks (a plan whose disk was overridden to `qemu`). A harness error, never a
    /// silent skip.
    fn unsupported_fault(&self) -> Option<String> {
        let witness = self.plan.guest.disk == DiskBackend::Witness;
        if !witness && self.plan.guest.io_schedule.is_some() {
            return Some(
                "the seeded I/O schedule is the witness disk's, and the volumes are served by QEMU"
                    .into(),
            );
        }
        self.plan
            .backups
            .iter()
            .flat_map(|b| &b.faults)
            .find_map(|f| match (run_fault(&f.spec), witness) {
                (RunFault::Disk | RunFault::EndSnapshot { .. }, false) => Some(format!(
                    "fault `{}` needs the volumes on witness disks, and they are served by QEMU",
                    f.spec.kind().label()
                )),
                (RunFault::Disk | RunFault::EndSnapshot { .. }, true)
                | (
                    RunFault::Pipeline | RunFault::Guest { .. } | RunFault::RemoveDisk { .. },
                    _,
                ) => None,
            })
    }

    /// Boot, set up, back up, shut down.
    fn guest_life(&mut self, disks: &disks::RunDisks) {
        let image = self.image.clone().expect("image built");
        let (accel, _) = self.accel.clone().expect("accel decided");
        let mut boot = BootOptions::new(accel, self.work.join("run"));
        boot.memory_mb = (self.plan.guest.memory_bytes >> 20) as u32;
        boot.cpus = self.plan.guest.cpus;
        boot.disks = disks.volumes.clone();
        boot.vhost_disks = disks.vhost.clone();
        boot.disks
            .extend(self.pipeline.as_ref().expect("set").disks());
        boot.initrd_extra = self.pipeline.as_ref().expect("set").initrd_extra();
        boot.floppy = disks.floppy.clone();
        boot.extra_modules = self.plan.guest.modules.clone();
        boot.ports = self.pipeline.as_ref().expect("set").ports();
        boot.slow = self.opts.slow;
        self.phase("booting");
        // The scenario's timeout counts from the boot: building an image is not the run.
        self.started = Instant::now();
        let booted = self.timed("boot", |_| Vm::boot(&image, boot));
        let mut vm = match booted {
            Ok(vm) => vm,
            Err(e) => return self.harness_error(format!("booting: {}", chain(&e))),
        };
        vm.machine.arm_watchdog(self.remaining());
        self.note(format!(
            "guest ready after {:.1}s (kernel {})",
            vm.boot_to_ready.as_secs_f64(),
            vm.ready.kernel
        ));

        let volumes = match self.timed("guest setup", |r| {
            guestops::setup(&mut vm, r.plan, r.pipeline.as_deref_mut())
        }) {
            Ok(v) => v,
            Err(e) => {
                self.finish_guest(vm);
                return self.harness_error(format!("setting up the guest: {e}"));
            }
        };
        if disks.hang.is_some() {
            let armed = match self.witness.as_mut() {
                Some(w) => w.arm_hang_disk(),
                None => Err("no witness disk serves it".into()),
            };
            if let Err(e) = armed {
                self.finish_guest(vm);
                return self.harness_error(format!("arming the never-answering disk: {e}"));
            }
            self.note("the extra disk `hang` now never answers a read");
        }
        let backed: Vec<GuestVolume> = volumes
            .iter()
            .filter(|v| {
                self.plan
                    .volumes
                    .iter()
                    .any(|p| p.name == v.name && p.backup)
            })
            .cloned()
            .collect();
        let started = self.timed("pipeline start", |r| {
            r.pipeline.as_mut().expect("set").start(&mut vm, &backed)
        });
        if let Err(e) = started {
            self.finish_guest(vm);
            return self.harness_error(format!(
                "starting the {} pipeline: {}",
                self.plan.pipeline.kind().name(),
                chain(&e)
            ));
        }

        self.phase("filling volumes");
        if let Err(e) = self.timed("fill", |r| {
            guestops::fill(&mut vm, r.plan, &volumes, r.reporter, &r.run_id)
        }) {
            self.finish_guest(vm);
            return self.harness_error(format!("initial fill: {e}"));
        }
        if !self.plan.expect.skipped.is_empty() {
            let checks = guestops::discovery_check(&mut vm, self.plan);
            self.events.checks.extend(checks);
        }

        for step in &self.plan.backups {
            if vm.machine.exited().is_some() {
                self.note(format!("backup {} not run: the guest is gone", step.number));
                break;
            }
            if self.remaining().is_zero() {
                self.note(format!(
                    "backup {} not run: the scenario timeout passed",
                    step.number
                ));
                break;
            }
            self.phase(format!(
                "backup {} ({})",
                step.number,
                if step.number == 1 {
                    "full"
                } else {
                    "incremental"
                }
            ));
            if let Err(e) =
                guestops::run_workloads(&mut vm, &step.between, &volumes, self.remaining())
            {
                self.harness_error(format!(
                    "between-backup workloads of backup {}: {e}",
                    step.number
                ));
                break;
            }
            let label = format!("backup {}", step.number);
            let outcome = self.timed(&label, |r| r.backup(&mut vm, step, &volumes, &backed));
            match outcome {
                Ok(rec) => self.backups.push(rec),
                Err(e) => {
                    self.harness_error(format!("backup {}: {}", step.number, chain(&e)));
                    break;
                }
            }
            if let Err(e) = guestops::check_volumes_present(&mut vm, &volumes) {
                for v in e {
                    if !self.events.vanished.contains(&v) {
                        self.note(format!("volume {v}: its device vanished from the guest"));
                        self.events.vanished.push(v);
                    }
                }
            }
        }

        if self.plan.expect.remount && vm.machine.exited().is_none() {
            match guestops::file_lists(&mut vm, &volumes) {
                Ok(lists) => self.file_lists = lists,
                Err(e) => self.harness_error(format!("listing files before shutdown: {e}")),
            }
        }
        self.finish_guest(vm);
    }

    /// Shuts the guest down (or notes why it was already down) and scans its console.
    fn finish_guest(&mut self, vm: Vm) {
        if let Some(stats) = vm.machine.throttle_stats() {
            self.slowed = Some(stats);
        }
        if vm.machine.watchdog_fired() {
            self.events.watchdog_fired = true;
            self.note(format!(
                "the watchdog ended the guest after {:?}",
                self.timeout()
            ));
        } else if vm.machine.exited().is_none() {
            self.phase("shutting down");
            if let Err(e) = vm.shutdown(Duration::from_secs(60)) {
                self.note(format!("shutdown: {}", chain(&e)));
            }
        }
        let console =
            std::fs::read_to_string(self.work.join("run/console.log")).unwrap_or_default();
        self.events.console = crate::console::scan(&console);
    }

    /// One backup: disk faults armed at its start, workloads during it, the pipeline's
    /// run with the truth at the instant, guest and disk faults on their triggers, the
    /// disk faults released at its end.
    fn backup(
        &mut self,
        vm: &mut Vm,
        step: &BackupStep,
        volumes: &[GuestVolume],
        backed: &[GuestVolume],
    ) -> Result<BackupRecord, BackupError> {
        if let Some(w) = self.witness.as_mut() {
            let notes = w
                .arm(self.plan, step, ArmAt::Start)
                .map_err(BackupError::DiskFault)?;
            for n in notes {
                self.note(n);
            }
        }
        // Paced workloads first: their working sets must exist before the instant.
        let pacing = match pace::Pacing::start(
            vm,
            self.plan,
            step.number,
            &step.during,
            volumes,
            self.opts.slow_factor(),
        ) {
            Ok(p) => p,
            Err(e) => {
                self.release_disk_faults(step.number);
                return Err(e.into());
            }
        };
        let wall_clock: Vec<WorkloadRun> = step
            .during
            .iter()
            .filter(|w| w.spec.pace.is_none())
            .cloned()
            .collect();
        let during = match guestops::start_workloads(vm, &wall_clock, volumes) {
            Ok(d) => d,
            Err(e) => {
                self.release_disk_faults(step.number);
                return Err(e.into());
            }
        };
        let deadline = self.timeout().saturating_sub(self.started.elapsed());
        let mut hooks = Hooks {
            truth: self.truth.as_mut().expect("set"),
            witness: self.witness.as_mut(),
            step,
            plan: self.plan,
            backed,
            volumes,
            reset_done: false,
            end_snapshot_done: false,
            notes: Vec::new(),
            errors: Vec::new(),
            instant_at: None,
            announced: false,
            refused: None,
            probes: Vec::new(),
            fired: BTreeMap::new(),
            reporter: self.reporter,
            run_id: &self.run_id,
            pacing,
            last: Progress::default(),
        };
        // The run injects guest faults itself: each counts from zero.
        for f in &step.faults {
            if f.spec.layer() == crate::model::Layer::Guest {
                hooks.fired.insert(
                    f.index,
                    Fired {
                        count: Some(0),
                        counted_by: "the run's hooks".into(),
                    },
                );
            }
        }
        let started = Instant::now();
        let result = self
            .pipeline
            .as_mut()
            .expect("set")
            .backup(vm, self.plan, step, backed, &mut hooks, deadline);
        let took = started.elapsed();
        let hook_notes = std::mem::take(&mut hooks.notes);
        let hook_errors = std::mem::take(&mut hooks.errors);
        let took_instant = hooks.instant_at;
        let (announced, refused) = (hooks.announced, hooks.refused.take());
        let probes = std::mem::take(&mut hooks.probes);
        let guest_fired = std::mem::take(&mut hooks.fired);
        let pacing = hooks.pacing.take();
        let last = hooks.last;
        for n in hook_notes {
            self.note(n);
        }
        for e in hook_errors {
            self.harness_error(e);
        }
        for n in freeze::reap(vm, probes) {
            self.note(n);
        }
        if let Some(why) = &refused {
            self.harness_error(format!(
                "backup {}: the harness did not take its truth: {why}",
                step.number
            ));
        }
        if let Some(p) = pacing {
            let (records, notes, errors) = p.finish(vm);
            for n in notes {
                self.note(n);
            }
            for e in errors {
                self.harness_error(e);
            }
            self.events.workloads.extend(records);
        }
        let stopped = guestops::stop_workloads(vm, during, step.number);
        for n in stopped.notes {
            self.note(n);
        }
        self.events.workloads.extend(stopped.records);
        for f in stopped.failures {
            // The scenario's load did not happen as asked: never a pass on it.
            self.harness_error(format!("backup {}: {f}", step.number));
        }
        if let Some(blocks) = last.blocks_crossed.filter(|b| *b > 0) {
            self.speeds.push(BackupSpeed {
                backup: step.number,
                blocks,
                millis: took.as_millis() as u64,
            });
        }
        self.release_disk_faults(step.number);
        let mut guest_fired = guest_fired;
        self.disk_fired(step, &mut guest_fired);
        let result: BackupResult = result?;
        for n in &result.notes {
            self.note(n.clone());
        }
        self.record_fired(step, &result.fired, &guest_fired);
        let truth_state = if self.truth.as_ref().is_some_and(|t| t.taken(step.number)) {
            TruthState::Taken
        } else if announced {
            TruthState::NotTaken {
                why: refused.unwrap_or_else(|| "the truth was not taken".into()),
            }
        } else {
            TruthState::NeverAnnounced
        };
        let log = self
            .work
            .join(format!("run/agent-backup-{}.log", step.number));
        if let Err(e) = std::fs::write(&log, &result.agent_output) {
            self.note(format!("cannot keep the agent's output: {e}"));
        }
        if let Some(t) = took_instant {
            self.note(format!("truth taken in {:.0} ms", t.as_secs_f64() * 1000.0));
        }
        // Re-read each generation this backup committed, right away: a later failed
        // backup must leave it exactly so.
        let mut stored_after = std::collections::BTreeMap::new();
        let mut problems = Vec::new();
        let pipeline = self.pipeline.as_ref().expect("set");
        for vb in &result.volumes {
            let Some(g) = vb.generation else { continue };
            if let Some(img) = pipeline.stored_image(&vb.volume, g) {
                match crate::hash::hash_image(&img) {
                    Ok(h) => {
                        stored_after.insert((vb.volume.clone(), g), h);
                    }
                    Err(e) => problems.push(format!("re-reading {}: {}", img.display(), chain(&e))),
                }
            }
        }
        for p in problems {
            self.note(p);
        }
        Ok(BackupRecord {
            number: step.number,
            result,
            stored_after,
            truth_state,
        })
    }

    /// How often each fault of the step fired, from the layer that injected it (the
    /// pipeline's count for its layers, the hooks' for the guest's). A fault nobody
    /// counted is recorded as uncounted: a harness error, never a silent pass.
    fn record_fired(
        &mut self,
        step: &BackupStep,
        pipeline: &BTreeMap<usize, Fired>,
        guest: &BTreeMap<usize, Fired>,
    ) {
        for f in &step.faults {
            let fired = pipeline.get(&f.index).or_else(|| guest.get(&f.index));
            let label = f.spec.kind().label();
            let (count, counted_by) = match fired {
                Some(x) => (x.count, x.counted_by.clone()),
                None => (None, "nobody counted it".to_string()),
            };
            if let Some(n) = count {
                self.note(format!(
                    "fault {label} of backup {} fired {n} time(s) ({counted_by})",
                    step.number
                ));
            }
            self.events.faults.push(FaultFired {
                backup: step.number,
                fault: label,
                fired: count,
                counted_by,
            });
        }
    }

    /// Disk faults are counted by their witness disk once the backends end (from its
    /// statistics at the fault's release, or its history when the backend went with the
    /// guest): until then each is uncounted.
    fn disk_fired(&self, step: &BackupStep, fired: &mut BTreeMap<usize, Fired>) {
        if self.witness.is_none() {
            return;
        }
        for f in step
            .faults
            .iter()
            .filter(|f| f.spec.layer() == crate::model::Layer::Disk)
        {
            fired.insert(
                f.index,
                Fired {
                    count: None,
                    counted_by: "the witness disk".into(),
                },
            );
        }
    }

    /// Each disk fault's count, from the backends as they end.
    fn disk_fired_at_end(&mut self, armed: &[(u32, crate::model::FaultKind, Option<u64>)]) {
        // The n-th fault of a kind in a backup was the n-th armed.
        let mut used = vec![false; armed.len()];
        for f in self.events.faults.iter_mut() {
            let Some(i) = (0..armed.len())
                .find(|&i| !used[i] && armed[i].0 == f.backup && armed[i].1.label() == f.fault)
            else {
                continue;
            };
            used[i] = true;
            if let (None, Some(n)) = (f.fired, armed[i].2) {
                f.fired = Some(n);
                f.counted_by = "the witness disk".into();
            }
        }
    }

    /// Releases the disk faults of a backup (a hang's held requests run).
    fn release_disk_faults(&mut self, backup: u32) {
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        let (notes, errors) = w.release(backup);
        for n in notes {
            self.note(n);
        }
        for e in errors {
            self.harness_error(e);
        }
    }

    /// After the guest is down: the checks that need the disks, then the recording.
    fn after_guest(&mut self) {
        let fsck = self.plan.expect.fsck;
        let remount = self.plan.expect.remount;
        if fsck {
            self.phase("fsck");
            let result = self.timed("fsck", |r| {
                guestops::fsck(r.plan, r.truth.as_ref(), &r.work)
            });
            self.events.checks.push(result);
        }
        if remount {
            self.phase("second boot");
            let result = self.timed("remount", |r| r.remount_check());
            self.events.checks.push(result);
        }
    }

    /// Boots again from the disks as they are now and checks every volume mounts with
    /// the files it had before the shutdown.
    fn remount_check(&mut self) -> CheckResult {
        let fail = |detail: String| CheckResult {
            kind: CheckKind::Remount,
            passed: false,
            detail,
        };
        let (Some(image), Some((accel, _)), Some(truth)) = (&self.image, &self.accel, &self.truth)
        else {
            return fail("not run: the first boot never happened".into());
        };
        if self.file_lists.is_empty() {
            return fail("not run: no file list was taken before the shutdown".into());
        }
        let mut boot = BootOptions::new(*accel, self.work.join("run2"));
        boot.memory_mb = (self.plan.guest.memory_bytes >> 20) as u32;
        boot.slow = self.opts.slow;
        boot.extra_modules = self.plan.guest.modules.clone();
        for v in &self.plan.volumes {
            let (path, format) = truth
                .top(&v.name)
                .unwrap_or_else(|| (disks::volume_file(&self.work, v.index), DiskFormat::Raw));
            boot.disks.push(Disk::volume(v.index, path, format));
        }
        let mut vm = match Vm::boot(image, boot) {
            Ok(vm) => vm,
            Err(e) => return fail(format!("second boot failed: {}", chain(&e))),
        };
        let result = guestops::remount_compare(&mut vm, self.plan, &self.file_lists);
        let _ = vm.shutdown(Duration::from_secs(60));
        match result {
            Ok(detail) => CheckResult {
                kind: CheckKind::Remount,
                passed: true,
                detail,
            },
            Err(e) => fail(chain(&e)),
        }
    }

    /// Truth, target re-reads and the pipeline's recordings, assembled per volume and
    /// generation.
    fn recording(&mut self) -> Recording {
        let (accel, reason) = self
            .accel
            .clone()
            .map(|(a, r)| (a.to_string(), r))
            .unwrap_or_else(|| ("none".into(), "no guest was started".into()));
        if !self.backups.is_empty() {
            self.phase("hashing truth and target");
        }
        let t = Instant::now();
        // The oracle's input: each backed-up volume's history.
        let mut histories = std::collections::BTreeMap::new();
        if let Some(ended) = &self.ended {
            for d in &ended.disks {
                let (Some(volume), Some(initial), true) = (&d.volume, &d.initial, d.readable)
                else {
                    continue;
                };
                match oracle::load(&d.history, initial.clone()) {
                    Ok(a) => {
                        histories.insert(volume.clone(), a);
                    }
                    Err(e) => self
                        .events
                        .harness_errors
                        .push(format!("the oracle's input for volume {volume}: {e}")),
                }
            }
        }
        let volumes = match (&self.truth, &self.pipeline) {
            (Some(truth), Some(pipeline)) => {
                let (vols, errors) = assemble::volumes(
                    self.plan,
                    truth,
                    pipeline.as_ref(),
                    &self.backups,
                    &histories,
                    &self.work,
                    &|done, total| {
                        self.reporter.event(&Event::Progress {
                            run_id: self.run_id.clone(),
                            what: "hashing".into(),
                            done,
                            total,
                            unit: Unit::Bytes,
                        })
                    },
                );
                for e in errors {
                    self.events.harness_errors.push(e);
                }
                vols
            }
            _ => Vec::new(),
        };
        self.timings.push(Timing {
            phase: "hashing and classification input".into(),
            seconds: t.elapsed().as_secs_f64(),
        });
        if volumes.is_empty() && self.events.harness_errors.is_empty() {
            self.events
                .harness_errors
                .push("nothing was recorded: no backup reached its snapshot instant".into());
        }
        let image = self.image.as_ref();
        let mut events = self.events.clone();
        events.harness_errors.dedup();
        events.notes = self.notes.clone();
        events.speeds = self.speeds.clone();
        let slow = self.slowed.map(|t| SlowRecord {
            factor: t.factor,
            method: format!(
                "SIGSTOP/SIGCONT duty cycle on the QEMU process: runs {} ms of every {} ms",
                (crate::qemu::throttle::PERIOD / t.factor.max(1)).as_millis(),
                crate::qemu::throttle::PERIOD.as_millis()
            ),
            duty: t.duty(),
            qemu_cpu_per_second: t.cpu_per_second(),
            seconds: (t.running + t.stopped).as_secs_f64(),
        });
        Recording {
            run: RunInfo {
                run_id: self.run_id.clone(),
                scenario: self.plan.scenario.clone(),
                scenario_file: self.plan.scenario_file.display().to_string(),
                seed: self.plan.seed,
                image: self.plan.image.clone(),
                kernel: image.map(|i| i.kernel_release.clone()).unwrap_or_default(),
                packages: image
                    .map(|i| {
                        i.packages
                            .iter()
                            .map(|p| crate::record::Package {
                                name: p.package.clone(),
                                version: p.version.clone(),
                                sha256: p.sha256.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                accelerator: format!("{accel} ({reason})"),
                pipeline: self.plan.pipeline.kind().name().into(),
                started_unix: self.started_unix,
                timings: self.timings.clone(),
                repro: match self.opts.slow_factor() {
                    1 => self.plan.repro.clone(),
                    n => format!("{} --slow {n}", self.plan.repro),
                },
                blockwitness_version: env!("CARGO_PKG_VERSION").into(),
                slow,
                disk: self.plan.guest.disk.name().into(),
                witness_disks: self
                    .ended
                    .as_ref()
                    .map(|e| e.disks.iter().map(|d| d.record.clone()).collect())
                    .unwrap_or_default(),
            },
            expect: self.plan.expect.clone(),
            volumes,
            events,
        }
    }
}

/// The run's share of a fault: what it does, and when.
enum RunFault<'a> {
    /// Injected by the pipeline under test (module, transport, target, agent layers).
    Pipeline,
    /// Injected by the witness disk (`witness_disks`): armed at the backup's start or
    /// its instant, released at its end.
    Disk,
    /// Reset the guest, or crash its kernel, when `at` is reached.
    Guest { at: &'a ResetAt, panic: bool },
    /// Remove the volume's disk while the filesystems are frozen.
    RemoveDisk { volume: &'a str },
    /// End the volume's snapshot while a disk fault holds a read.
    EndSnapshot { volume: &'a str, how: EndHow },
}

fn run_fault(spec: &FaultSpec) -> RunFault<'_> {
    match spec {
        FaultSpec::CowReadLive { .. }
        | FaultSpec::DropTracking { .. }
        | FaultSpec::CorruptCow { .. }
        | FaultSpec::DelayCow { .. }
        | FaultSpec::DelayRead { .. }
        | FaultSpec::OpenTeardown
        | FaultSpec::BitFlip { .. }
        | FaultSpec::Rewrite { .. }
        | FaultSpec::DropFrame { .. }
        | FaultSpec::Disconnect { .. }
        | FaultSpec::WrongOffset { .. }
        | FaultSpec::SkipVerify
        | FaultSpec::CrashBeforeCommit
        | FaultSpec::SkipBlocks { .. } => RunFault::Pipeline,
        FaultSpec::DiskEio { .. }
        | FaultSpec::DiskHang { .. }
        | FaultSpec::DiskLatency { .. }
        | FaultSpec::DiskTorn { .. } => RunFault::Disk,
        FaultSpec::Reset { at } => RunFault::Guest { at, panic: false },
        FaultSpec::Panic { at } => RunFault::Guest { at, panic: true },
        FaultSpec::RemoveDisk { volume, .. } => RunFault::RemoveDisk { volume },
        FaultSpec::EndSnapshot { volume, how } => RunFault::EndSnapshot { volume, how: *how },
    }
}

/// Why a backup could not be run (a harness error).
#[derive(Debug, thiserror::Error)]
enum BackupError {
    #[error(transparent)]
    Workloads(#[from] guestops::GuestOpError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("paced workloads")]
    Pace(#[from] pace::PaceError),
    #[error("injecting a disk fault: {0}")]
    DiskFault(String),
}

/// The run's side of a backup: the check of the instant, the truth, guest and disk
/// faults on their triggers, the witness disks watched.
struct Hooks<'a> {
    truth: &'a mut Truth,
    witness: Option<&'a mut RunWitness>,
    step: &'a BackupStep,
    plan: &'a Plan,
    /// The volumes the run asked the pipeline to back up.
    backed: &'a [GuestVolume],
    volumes: &'a [GuestVolume],
    reset_done: bool,
    end_snapshot_done: bool,
    notes: Vec<String>,
    /// Harness errors.
    errors: Vec<String>,
    instant_at: Option<Duration>,
    /// The pipeline announced its instant.
    announced: bool,
    /// Why the harness did not take its truth at the announced instant.
    refused: Option<String>,
    /// Write probes blocked in the frozen filesystems, reaped after the backup.
    probes: Vec<freeze::Probe>,
    /// How often each guest-layer fault fired, by fault index.
    fired: BTreeMap<usize, Fired>,
    reporter: &'a dyn Reporter,
    run_id: &'a str,
    /// This backup's paced workloads, granted their steps from `tick`.
    pacing: Option<pace::Pacing>,
    /// The last progress the pipeline reported.
    last: Progress,
}

impl Hooks<'_> {
    /// The instant: are these the volumes, are they frozen, then the truth.
    fn instant(&mut self, vm: &mut Vm, announced: &[AnnouncedVolume]) -> Result<(), InstantError> {
        freeze::check_volumes(announced, self.backed)?;
        let probing = Instant::now();
        freeze::probe_frozen(vm, self.backed, self.step.number, &mut self.probes)?;
        self.notes.push(format!(
            "every volume checked frozen (a write blocked) in {:.0} ms",
            probing.elapsed().as_secs_f64() * 1000.0
        ));
        let took = self.truth.take(&mut vm.machine, self.step.number)?;
        self.instant_at = Some(took);
        for f in &self.step.faults {
            if let RunFault::RemoveDisk { volume } = run_fault(&f.spec) {
                let Some(v) = self.plan.volumes.iter().find(|v| v.name == volume) else {
                    continue;
                };
                let id = Disk::volume_id(v.index);
                if let Some(w) = self.witness.as_deref_mut() {
                    w.removed(&id);
                }
                let removed = match vm.machine.remove_disk(&id) {
                    Ok(_) => {
                        self.notes.push(format!(
                            "fault: removed the disk of volume {volume} during the freeze"
                        ));
                        1
                    }
                    Err(e) => {
                        self.notes
                            .push(format!("fault: device_del of {volume} failed: {e}"));
                        0
                    }
                };
                self.fired.insert(
                    f.index,
                    Fired {
                        count: Some(removed),
                        counted_by: "the run's hooks (QMP device_del)".into(),
                    },
                );
            }
        }
        if let Some(w) = self.witness.as_deref_mut() {
            match w.arm(self.plan, self.step, ArmAt::Instant) {
                Ok(notes) => self.notes.extend(notes),
                Err(e) => self.errors.push(format!("injecting a disk fault: {e}")),
            }
            match w.cycle_hang_disk() {
                Ok(0) => {}
                Ok(n) => self.notes.push(format!(
                    "the never-answering disk let {n} held read(s) go at the instant, and holds the next ones again"
                )),
                Err(e) => self.errors.push(e),
            }
        }
        Ok(())
    }
}

impl RunHooks for Hooks<'_> {
    fn gate(&self) -> Option<std::sync::Arc<crate::gate::Gate>> {
        self.pacing.as_ref().map(pace::Pacing::gate)
    }

    fn at_instant(
        &mut self,
        vm: &mut Vm,
        announced: &[AnnouncedVolume],
    ) -> Result<(), InstantError> {
        self.announced = true;
        let result = self.instant(vm, announced);
        if let Err(e) = &result {
            self.refused = Some(chain(e));
        }
        result
    }

    fn tick(&mut self, vm: &mut Vm, progress: Progress) {
        self.last = progress;
        if let Some(p) = self.pacing.as_mut() {
            p.service(vm, &progress);
        }
        let total = progress.blocks_expected.unwrap_or(0);
        self.reporter.event(&Event::Progress {
            run_id: self.run_id.to_string(),
            what: format!("backup {}", self.step.number),
            done: progress.blocks_crossed.unwrap_or(0),
            total: total.max(progress.blocks_crossed.unwrap_or(0)),
            unit: Unit::Blocks,
        });
        self.watch_witness(vm);
        if self.reset_done {
            return;
        }
        self.torn_reset(vm);
        self.end_snapshot(vm);
        for f in &self.step.faults {
            let (at, panic) = match run_fault(&f.spec) {
                RunFault::Guest { at, panic } => (at, panic),
                // Faults of another moment (the instant, a held read) or of other layers.
                RunFault::Pipeline
                | RunFault::Disk
                | RunFault::RemoveDisk { .. }
                | RunFault::EndSnapshot { .. } => continue,
            };
            if self.reset_done {
                return;
            }
            let due = match at {
                ResetAt::AfterMs(ms) => progress.elapsed >= Duration::from_millis(*ms),
                ResetAt::AtPercent(p) => {
                    match (progress.blocks_crossed, progress.blocks_expected) {
                        (Some(c), Some(t)) if t > 0 => c * 100 >= t * u64::from(*p),
                        _ => false,
                    }
                }
            };
            if !due {
                continue;
            }
            self.reset_done = true;
            let when = format!(
                "{:.1}s into backup {} ({} blocks crossed)",
                progress.elapsed.as_secs_f64(),
                self.step.number,
                progress.blocks_crossed.unwrap_or(0)
            );
            let done = if panic {
                // Spawned, not waited for: the kernel dies before it could answer.
                vm.guest
                    .spawn(&["/bin/sh", "-c", "echo c > /proc/sysrq-trigger"])
                    .map(|_| ())
                    .map_err(|e| chain(&e))
            } else {
                vm.machine.reset().map_err(|e| e.to_string())
            };
            let what = if panic { "kernel panic" } else { "guest reset" };
            self.fired.insert(
                f.index,
                Fired {
                    count: Some(u64::from(done.is_ok())),
                    counted_by: "the run's hooks".into(),
                },
            );
            self.notes.push(match done {
                Ok(()) => format!("fault: {what} {when}"),
                Err(e) => format!("fault: {what} failed: {e}"),
            });
            return;
        }
    }
}

impl Hooks<'_> {
    /// A witness disk that died while the guest runs can no longer serve its volume:
    /// a harness error, and the guest is stopped rather than left to hang on it.
    fn watch_witness(&mut self, vm: &mut Vm) {
        let Some(w) = self.witness.as_deref_mut() else {
            return;
        };
        if vm.machine.exited().is_some() {
            return;
        }
        let dead = w.dead();
        if !dead.is_empty() {
            self.errors.extend(dead);
            vm.machine.kill();
        }
    }

    /// After a torn write the guest must die before anything completes it: reset.
    fn torn_reset(&mut self, vm: &mut Vm) {
        let Some(w) = self.witness.as_deref_mut() else {
            return;
        };
        let fired = w.fired(self.step.number, crate::model::FaultKind::DiskTorn);
        let Some((disk, n)) = fired else {
            return;
        };
        if n == 0 {
            return;
        }
        self.reset_done = true;
        self.notes.push(match vm.machine.reset() {
            Ok(()) => format!("fault: a torn write on disk {disk}; guest reset"),
            Err(e) => format!("fault: a torn write on disk {disk}; the guest reset failed: {e}"),
        });
    }

    /// `end-snapshot`: once the volume's disk holds a read (its latency or hang fault
    /// fired), end the snapshot, wait for the snapshot device to go, overwrite the
    /// held blocks through the live device, then let a hung read go.
    fn end_snapshot(&mut self, vm: &mut Vm) {
        if self.end_snapshot_done {
            return;
        }
        let Some((volume, how)) = self
            .step
            .faults
            .iter()
            .find_map(|f| match run_fault(&f.spec) {
                RunFault::EndSnapshot { volume, how } => Some((volume, how)),
                RunFault::Pipeline
                | RunFault::Disk
                | RunFault::Guest { .. }
                | RunFault::RemoveDisk { .. } => None,
            })
        else {
            return;
        };
        let Some((kind, blocks)) = self.step.faults.iter().find_map(|f| {
            f.spec
                .held_read()
                .filter(|(v, _)| *v == volume)
                .map(|(_, b)| (f.spec.kind(), b))
        }) else {
            return;
        };
        let Some(w) = self.witness.as_deref_mut() else {
            return;
        };
        match w.fired(self.step.number, kind) {
            Some((_, n)) if n > 0 => {}
            Some(_) | None => return,
        }
        self.end_snapshot_done = true;
        let Some(device) = self
            .volumes
            .iter()
            .find(|v| v.name == volume)
            .map(|v| v.device.clone())
        else {
            self.errors
                .push(format!("end-snapshot: volume {volume} is not in the guest"));
            return;
        };
        // A hung read goes once its blocks are overwritten, before the harness waits
        // for the ending call, which itself waits for that read.
        let number = self.step.number;
        let mut release = || {
            if kind == crate::model::FaultKind::DiskHang {
                w.release_kind(number, kind).map(|_| ())
            } else {
                Ok(())
            }
        };
        match end_snapshot(vm, &device, how, blocks, &mut release) {
            Ok(note) => {
                for f in &self.step.faults {
                    if f.spec.kind() == crate::model::FaultKind::EndSnapshot {
                        if let Some(x) = self.fired.get_mut(&f.index) {
                            x.count = Some(1);
                        }
                    }
                }
                self.notes.push(format!("fault: end-snapshot: {note}"))
            }
            Err(e) => self.errors.push(format!("end-snapshot on {volume}: {e}")),
        }
        // Whatever failed above: a hung read must not outlive its step.
        if let Err(e) = release() {
            self.errors.push(e);
        }
    }
}

/// Ends the bwsnap snapshot of `device` (`how`) while a read of it is held, waits until
/// the snapshot device has gone (the module lets writes through from then on),
/// overwrites `blocks` through the live device with O_DIRECT, and lets a hung read go
/// (`release`). The ending call itself waits for the held read, so it runs in the
/// background and is waited for last.
fn end_snapshot(
    vm: &mut Vm,
    device: &str,
    how: EndHow,
    blocks: BlockSpan,
    release: &mut dyn FnMut() -> Result<(), String>,
) -> Result<String, String> {
    let t = Duration::from_secs(30);
    let info = vm
        .guest
        .exec(&["/bin/bwsnap-ctl", "--json", "info"], t)
        .map_err(|e| chain(&e))?;
    #[derive(serde::Deserialize)]
    struct Minor {
        minor: u32,
        state: String,
        bdev_path: String,
    }
    let minors: Vec<Minor> = serde_json::from_str(info.stdout.trim())
        .map_err(|e| format!("bwsnap-ctl info: {e}: {}", info.describe()))?;
    let minor = minors
        .iter()
        .find(|m| m.bdev_path == device && m.state == "snapshot")
        .map(|m| m.minor)
        .ok_or_else(|| format!("no bwsnap snapshot of {device} ({})", info.stdout.trim()))?;
    let minor_text = minor.to_string();
    let ending = vm
        .guest
        .spawn(&["/bin/bwsnap-ctl", how.command(), &minor_text])
        .map_err(|e| chain(&e))?;
    let script = format!(
        "i=0; while [ -e /sys/block/bwsnap{minor} ]; do i=$((i + 1)); \
         [ $i -gt 2000 ] && echo 'the snapshot device never went' && exit 3; usleep 10000; done; \
         dd if=/dev/zero bs=4096 count={count} 2>/dev/null | tr '\\000' 'R' > /tmp/bw-end && \
         dd if=/tmp/bw-end of={device} bs=4096 seek={first} count={count} oflag=direct conv=notrunc 2>&1",
        count = blocks.count,
        first = blocks.first,
    );
    let wrote = vm
        .guest
        .exec(&["/bin/sh", "-c", &script], t)
        .map_err(|e| chain(&e))?;
    if !wrote.success() {
        return Err(format!("overwriting the held blocks: {}", wrote.describe()));
    }
    release()?;
    let ended = vm.guest.wait(ending, t).map_err(|e| chain(&e))?;
    let status = match ended {
        Some(done) if done.success() => "done".to_string(),
        Some(done) => format!("failed: {}", done.describe()),
        None => format!("still running after {t:?}"),
    };
    Ok(format!(
        "bwsnap-ctl {} {minor} while a read of {device} blocks {}..{} was held ({status}); overwrote them through {device}",
        how.command(),
        blocks.first,
        blocks.first + blocks.count
    ))
}

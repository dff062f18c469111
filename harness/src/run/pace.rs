//! Paced `during` workloads: what each writes follows the backup's progress, not the
//! wall clock, so a slow machine and a fast one write the same bytes in the same order
//! relative to the backup's reads.
//!
//! A workload with `rate = "A per S%"` runs as `bw-workload ... --paced FILE` (FILE in
//! the guest's /run, outside every volume under test). Its steps are the backup's
//! progress cut into shares of S%; at the start of step k the backup is held at that
//! step's first block by the pipeline's [`Gate`], the run grants the workload a
//! cumulative allowance of (k + 1) x A by writing FILE, waits (with a deadline) until
//! FILE.done shows it used it, records what it had written, and opens the gate to the
//! next workload boundary. Before the backup's instant the run waits for every FILE.done
//! to appear (the working set exists); after the backup it grants the final allowance
//! with `end`, waits for the workload to finish and reads its summary.
//!
//! The run drives this from the pipeline's `tick` (guest requests need the VM, which
//! the pipeline holds while the backup runs); the pipeline's side of the gate is where
//! it measures its progress (the reference pipeline's transport proxy).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bw_guest::control::Finished;
use bw_guest::workload::{PacedProgress, StopReason, WorkloadSummary};

use super::chain;
use super::guestops::{self, GuestOpError};
use crate::gate::Gate;
use crate::guest::GuestError;
use crate::pipeline::{GuestVolume, Progress};
use crate::plan::{Plan, WorkloadRun};
use crate::record::{PaceStep, WorkloadRecord};
use crate::scenario::Pace;
use crate::vm::Vm;

/// Where the allowance files live in the guest: a tmpfs, never a volume under test (a
/// frozen filesystem would block them).
const DIR: &str = "/run/bw-pace";
/// How long a workload may take to make its working set (FILE.done appears).
const READY: Duration = Duration::from_secs(300);
/// How long a workload may take to use one grant before it counts as stalled.
const STEP: Duration = Duration::from_secs(120);
/// How long a workload may take to end after its final grant.
const END: Duration = Duration::from_secs(120);
/// Between two looks at FILE.done.
const POLL: Duration = Duration::from_millis(10);

/// Why paced workloads could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PaceError {
    #[error(transparent)]
    Guest(#[from] GuestOpError),
    #[error("guest control channel")]
    Channel(#[from] crate::guest::GuestError),
    #[error("workload {what} ended before its working set was ready: {how}")]
    EndedEarly { what: String, how: String },
    #[error("workload {what} did not make its working set within {} s", waited.as_secs())]
    NotReady { what: String, waited: Duration },
}

/// What pacing needs from the guest once its workloads run: their files, and their
/// processes. The run's guest is a [`Vm`]; the tests drive real workloads on the host.
pub(super) trait PaceGuest {
    fn write_file(&mut self, path: &str, text: &str) -> Result<(), GuestError>;
    fn read_file(&mut self, path: &str) -> Result<String, GuestError>;
    /// How the workload ended, if it did within `timeout`.
    fn wait(&mut self, handle: u64, timeout: Duration) -> Result<Option<Finished>, GuestError>;
    fn kill(&mut self, handle: u64, signal: i32);
    /// The guest is gone (QEMU exited): nothing more can be asked.
    fn gone(&self) -> bool;
}

impl PaceGuest for Vm {
    fn write_file(&mut self, path: &str, text: &str) -> Result<(), GuestError> {
        self.guest.write_file(path, text)
    }

    fn read_file(&mut self, path: &str) -> Result<String, GuestError> {
        self.guest.read_file(path, 1 << 16)
    }

    fn wait(&mut self, handle: u64, timeout: Duration) -> Result<Option<Finished>, GuestError> {
        self.guest.wait(handle, timeout)
    }

    fn kill(&mut self, handle: u64, signal: i32) {
        let _ = self.guest.kill(handle, signal);
    }

    fn gone(&self) -> bool {
        self.machine.exited().is_some()
    }
}

/// One paced workload in one backup.
struct Paced {
    run: WorkloadRun,
    pace: Pace,
    file: String,
    handle: u64,
    /// Steps granted so far; the next grant is step `granted`.
    granted: u32,
    steps: Vec<PaceStep>,
    /// It stopped (its own end, an error, a stall): no more grants.
    finished: bool,
    stalled: bool,
}

impl Paced {
    fn what(&self) -> String {
        format!(
            "#{} ({} on {})",
            self.run.index,
            self.run.spec.kind.name(),
            self.run.spec.volume
        )
    }

    /// The block the backup is held at for this workload's next grant, if any is left.
    fn next_boundary(&self, total: u64) -> Option<u64> {
        (!self.finished && self.granted < self.pace.steps())
            .then(|| self.pace.boundary(self.granted, total))
    }
}

/// The paced workloads of one backup and the gate that holds the backup for them.
pub(super) struct Pacing {
    backup: u32,
    gate: Arc<Gate>,
    total: u64,
    workloads: Vec<Paced>,
    /// How long a workload may take to use one grant, and to end after its last.
    step_limit: Duration,
    end_limit: Duration,
    /// Harness errors: stalls, failures, a pipeline that never asked the gate.
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    /// The last progress the pipeline reported.
    last: Progress,
}

/// The paced runs among a backup's `during` workloads.
pub(super) fn paced_runs(runs: &[WorkloadRun]) -> impl Iterator<Item = &WorkloadRun> {
    runs.iter().filter(|w| w.spec.pace.is_some())
}

/// A stop reason as the workload's summary spells it ("allowance-used").
pub(super) fn stop_name(reason: StopReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{reason:?}"))
}

/// Reads FILE.done: None while it does not exist (or cannot be read yet).
fn progress(guest: &mut dyn PaceGuest, file: &str) -> Option<PacedProgress> {
    let text = guest.read_file(&format!("{file}.done")).ok()?;
    serde_json::from_str(text.trim()).ok()
}

impl Pacing {
    /// Starts the paced `during` workloads of backup `number` and waits until each has
    /// its working set. None when the backup has none.
    pub(super) fn start(
        vm: &mut Vm,
        plan: &Plan,
        number: u32,
        runs: &[WorkloadRun],
        volumes: &[GuestVolume],
        slow: u32,
    ) -> Result<Option<Pacing>, PaceError> {
        let runs: Vec<&WorkloadRun> = paced_runs(runs).collect();
        if runs.is_empty() {
            return Ok(None);
        }
        vm.guest.sh(
            &format!("mkdir -p {DIR} && rm -f {DIR}/b{number}-*"),
            Duration::from_secs(60),
        )?;
        let mut workloads = Vec::new();
        for run in runs {
            let Some(pace) = run.spec.pace else { continue };
            let file = format!("{DIR}/b{number}-w{}", run.writer);
            let mut argv =
                guestops::workload_argv(run, guestops::volume(volumes, &run.spec.volume)?);
            argv.extend(["--paced".to_string(), file.clone()]);
            let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
            let handle = vm
                .guest
                .spawn(&argv_ref)
                .map_err(|source| GuestOpError::Start {
                    command: argv.join(" "),
                    source,
                })?;
            workloads.push(Paced {
                run: run.clone(),
                pace,
                file,
                handle,
                granted: 0,
                steps: Vec::new(),
                finished: false,
                stalled: false,
            });
        }
        // Every working set exists before the instant: setting one up is not part of
        // what the workload does to the backup.
        let limit = READY * slow;
        for w in &workloads {
            let started = Instant::now();
            let mut last_check = Instant::now();
            while progress(vm as &mut dyn PaceGuest, &w.file).is_none() {
                if started.elapsed() > limit {
                    return Err(PaceError::NotReady {
                        what: w.what(),
                        waited: limit,
                    });
                }
                if last_check.elapsed() > Duration::from_millis(500) {
                    last_check = Instant::now();
                    if let Some(done) = vm.guest.wait(w.handle, Duration::ZERO)? {
                        return Err(PaceError::EndedEarly {
                            what: w.what(),
                            how: format!("{}: {}", done.describe(), done.stderr.trim()),
                        });
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let backed: Vec<(String, u64)> = plan
            .backed_up()
            .map(|v| (v.name.clone(), v.blocks))
            .collect();
        let gate = Arc::new(Gate::new(&backed));
        let total = gate.total();
        Ok(Some(Pacing {
            backup: number,
            gate,
            total,
            workloads,
            step_limit: STEP * slow,
            end_limit: END * slow,
            errors: Vec::new(),
            notes: Vec::new(),
            last: Progress::default(),
        }))
    }

    pub(super) fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// From the pipeline's tick: while the backup waits past a workload's next step
    /// boundary, grants that step and waits for the workload to use it; then opens the
    /// gate to the nearest boundary still ahead.
    pub(super) fn service(&mut self, guest: &mut dyn PaceGuest, progress: &Progress) {
        self.last = *progress;
        loop {
            if self.gate.released() || guest.gone() {
                return;
            }
            let requested = self.gate.requested();
            let total = self.total;
            let due: Vec<usize> = (0..self.workloads.len())
                .filter(|&i| {
                    self.workloads[i]
                        .next_boundary(total)
                        .is_some_and(|b| b < requested)
                })
                .collect();
            if due.is_empty() {
                break;
            }
            for &i in &due {
                self.grant(guest, i, false);
            }
            for &i in &due {
                self.wait_used(guest, i);
            }
            self.open();
        }
    }

    /// Opens the gate to the nearest boundary a workload still waits for; releases it
    /// when none is left.
    fn open(&self) {
        let next = self
            .workloads
            .iter()
            .filter_map(|w| w.next_boundary(self.total))
            .min();
        match next {
            Some(b) => self.gate.open(b),
            None => self.gate.release(),
        }
    }

    /// Writes the next cumulative allowance of workload `i` (and `end` when `last`).
    /// One line holding the whole amount: the guest's write-file truncates and writes,
    /// so a reader may see a prefix, and a prefix of one line is either incomplete
    /// (ignored) or the whole amount.
    fn grant(&mut self, guest: &mut dyn PaceGuest, i: usize, last: bool) {
        let w = &mut self.workloads[i];
        let amount = match (last, w.granted) {
            (true, 0) => 0,
            (true, n) => w.pace.allowance(n - 1),
            (false, n) => w.pace.allowance(n),
        };
        let mut text = format!("{}\n", w.pace.allowance_line(amount));
        if last {
            text.push_str("end\n");
        }
        if let Err(e) = guest.write_file(&w.file, &text) {
            let what = w.what();
            w.finished = true;
            self.errors.push(format!(
                "paced workload {what}: cannot write its allowance: {}",
                chain(&e)
            ));
            return;
        }
        if !last {
            w.granted += 1;
        }
    }

    /// Waits until workload `i` has used its latest grant (or stopped), and records the
    /// step; a stall past the deadline is a harness error naming it.
    fn wait_used(&mut self, guest: &mut dyn PaceGuest, i: usize) {
        let total = self.total;
        let limit = self.step_limit;
        let backup = self.backup;
        let w = &mut self.workloads[i];
        if w.finished || w.granted == 0 {
            return;
        }
        let k = w.granted - 1;
        let allowance = w.pace.allowance(k);
        let started = Instant::now();
        let mut seen = None;
        loop {
            if let Some(p) = progress(guest, &w.file) {
                // Done reaching the allowance is enough: a workload that overshot an
                // earlier grant by more than a step has nothing to do for this one (and
                // its progress file still shows the allowance it last needed to read).
                let used = p.done >= allowance;
                if used || p.stopped_by.is_some() {
                    w.steps.push(PaceStep {
                        step: k,
                        position: w.pace.boundary(k, total),
                        allowance,
                        done: p.done,
                        bytes: p.bytes,
                        ops: p.ops,
                    });
                    if !used {
                        // It ended by itself (a fill reached full, or it failed): the
                        // summary at the end says which.
                        w.finished = true;
                    }
                    return;
                }
                seen = Some(p);
            }
            if guest.gone() {
                w.finished = true;
                return;
            }
            if started.elapsed() > limit {
                let what = w.what();
                w.finished = true;
                w.stalled = true;
                let state = match &seen {
                    Some(p) => format!(
                        "it had done {} of {allowance}{}",
                        p.done,
                        p.last_error
                            .as_ref()
                            .map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    ),
                    None => "its progress file could not be read".into(),
                };
                self.errors.push(format!(
                    "paced workload {what} stalled: it did not use its allowance of {allowance} \
                     within {} s at step {k} of backup {backup} ({state})",
                    limit.as_secs()
                ));
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    /// After the backup: releases the gate, grants every workload its final allowance
    /// with `end`, waits for it to finish and reads its summary.
    pub(super) fn finish(
        mut self,
        guest: &mut dyn PaceGuest,
    ) -> (Vec<WorkloadRecord>, Vec<String>, Vec<String>) {
        self.gate.release();
        let crossed = self.last.blocks_crossed.unwrap_or(0);
        if !self.gate.consulted() && crossed > 0 {
            self.errors.push(format!(
                "backup {}: the pipeline never consulted the pacing gate, so its paced workloads \
                 could not follow its progress ({crossed} blocks crossed)",
                self.backup
            ));
        }
        let alive = !guest.gone();
        // A pipeline that never asked the gate paced nothing: its run is a harness error
        // already, and its workloads stay at what they were granted.
        if alive && self.gate.consulted() {
            self.grant_unreached(guest);
        }
        let mut records = Vec::new();
        for i in 0..self.workloads.len() {
            let summary = if alive { self.end_one(guest, i) } else { None };
            let w = &self.workloads[i];
            let failure = summary.as_ref().and_then(|s| s.failure).map(|f| {
                let errors = summary
                    .as_ref()
                    .map(|s| s.errors.join("; "))
                    .unwrap_or_default();
                format!("{f}: {errors}")
            });
            if let Some(f) = &failure {
                self.errors
                    .push(format!("paced workload {}: {f}", w.what()));
            }
            if alive && summary.is_none() {
                self.errors
                    .push(format!("paced workload {}: no summary came back", w.what()));
            }
            let s = summary.as_ref();
            let stopped_by = s.map(|s| stop_name(s.stopped_by));
            self.notes.push(format!(
                "workload {} paced {}: {} steps, {} bytes, {} ops{}",
                w.what(),
                w.pace,
                w.steps.len(),
                s.map_or(0, |s| s.bytes),
                s.map_or(0, |s| s.ops),
                stopped_by
                    .as_ref()
                    .map(|r| format!(", stopped by {r}"))
                    .unwrap_or_default()
            ));
            records.push(WorkloadRecord {
                backup: self.backup,
                index: w.run.index,
                writer: w.run.writer,
                kind: w.run.spec.kind.name().to_string(),
                volume: w.run.spec.volume.clone(),
                pacing: w.pace.to_string(),
                steps: w.steps.clone(),
                bytes: s.map(|s| s.bytes),
                ops: s.map(|s| s.ops),
                writes: s.map(|s| s.writes),
                stopped_by,
                failure,
            });
        }
        (records, self.notes, self.errors)
    }

    /// After the backup, the steps whose boundary its progress never reached, in order:
    /// an incremental's changed blocks may end short of the last boundaries, and where
    /// they end moves with the machine's timing (a journal commit, ext4's lazy inode
    /// table writes), so without these a seed would write less on one machine than on
    /// another.
    fn grant_unreached(&mut self, guest: &mut dyn PaceGuest) {
        let total = self.total;
        let mut late = vec![0u32; self.workloads.len()];
        loop {
            let due: Vec<usize> = (0..self.workloads.len())
                .filter(|&i| self.workloads[i].next_boundary(total).is_some())
                .collect();
            if due.is_empty() || guest.gone() {
                break;
            }
            for &i in &due {
                self.grant(guest, i, false);
                late[i] += 1;
            }
            for &i in &due {
                self.wait_used(guest, i);
            }
        }
        for (w, n) in self.workloads.iter().zip(late) {
            if n > 0 {
                self.notes.push(format!(
                    "workload {} paced {}: {n} step(s) granted after the backup, whose progress ended before their boundaries",
                    w.what(),
                    w.pace
                ));
            }
        }
    }

    /// Grants workload `i` its final allowance and `end` (or stops a stalled one), and
    /// waits for its summary.
    fn end_one(&mut self, guest: &mut dyn PaceGuest, i: usize) -> Option<WorkloadSummary> {
        let limit = self.end_limit;
        if self.workloads[i].stalled {
            guest.kill(self.workloads[i].handle, libc::SIGTERM);
        } else {
            self.grant(guest, i, true);
        }
        let w = &self.workloads[i];
        let done = match guest.wait(w.handle, limit) {
            Ok(Some(done)) => done,
            Ok(None) => {
                let what = w.what();
                guest.kill(w.handle, libc::SIGKILL);
                self.errors.push(format!(
                    "paced workload {what} did not end within {} s of its final allowance; killed",
                    limit.as_secs()
                ));
                return None;
            }
            Err(e) => {
                self.errors
                    .push(format!("paced workload {}: {}", w.what(), chain(&e)));
                return None;
            }
        };
        let summary = done
            .stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<WorkloadSummary>(l).ok());
        if summary.is_none() {
            self.notes.push(format!(
                "paced workload {}: {} ({})",
                w.what(),
                done.describe(),
                done.stderr.trim()
            ));
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;

    use bw_guest::workload::Config;

    use crate::scenario::{units::parse_pace, WorkloadKind, WorkloadSpec};

    /// The host as the guest: real bw-workload runs (the library) in threads, on a
    /// directory of the host, paced through real files.
    #[derive(Default)]
    struct Host {
        runs: HashMap<u64, (JoinHandle<WorkloadSummary>, Arc<AtomicBool>)>,
    }

    impl Host {
        fn start(&mut self, handle: u64, dir: &Path, file: &Path, seed: u64) {
            let config = Config::from_args([
                "overwrite",
                "--dir",
                dir.to_str().unwrap(),
                "--seed",
                &seed.to_string(),
                "--paced",
                file.to_str().unwrap(),
                "--set-size",
                "1MiB",
                "--max-file-size",
                "256KiB",
            ])
            .unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let run = std::thread::spawn(move || bw_guest::workload::run(&config, &flag).unwrap());
            self.runs.insert(handle, (run, stop));
        }
    }

    impl PaceGuest for Host {
        fn write_file(&mut self, path: &str, text: &str) -> Result<(), GuestError> {
            Ok(std::fs::write(path, text)?)
        }

        fn read_file(&mut self, path: &str) -> Result<String, GuestError> {
            Ok(std::fs::read_to_string(path)?)
        }

        fn wait(&mut self, handle: u64, timeout: Duration) -> Result<Option<Finished>, GuestError> {
            let t = Instant::now();
            let finished = |stdout: String| Finished {
                exit_code: Some(0),
                signal: None,
                timed_out: false,
                stdout,
                stderr: String::new(),
                duration_ms: 0,
            };
            let Some((run, _)) = self.runs.get(&handle) else {
                // A process that printed nothing.
                return Ok(Some(finished(String::new())));
            };
            while !run.is_finished() {
                if t.elapsed() > timeout {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let (run, _) = self.runs.remove(&handle).unwrap();
            let summary = run.join().unwrap();
            Ok(Some(finished(serde_json::to_string(&summary).unwrap())))
        }

        fn kill(&mut self, handle: u64, _signal: i32) {
            if let Some((_, stop)) = self.runs.get(&handle) {
                stop.store(true, Ordering::SeqCst);
            }
        }

        fn gone(&self) -> bool {
            false
        }
    }

    fn run_of(pace: &str) -> WorkloadRun {
        WorkloadRun {
            index: 0,
            spec: WorkloadSpec {
                kind: WorkloadKind::Overwrite,
                volume: "data".into(),
                stamped: false,
                rate: None,
                pace: parse_pace(pace),
                wall_clock_reason: None,
                amount: None,
                ops: None,
                duration: None,
            },
            seed: 5,
            writer: 1,
        }
    }

    fn pacing(file: &Path, pace: &str, step_limit: Duration) -> Pacing {
        let gate = Arc::new(Gate::new(&[("data".to_string(), 1000)]));
        let run = run_of(pace);
        Pacing {
            backup: 1,
            total: gate.total(),
            gate,
            workloads: vec![Paced {
                pace: run.spec.pace.unwrap(),
                run,
                file: file.to_str().unwrap().to_string(),
                handle: 1,
                granted: 0,
                steps: Vec::new(),
                finished: false,
                stalled: false,
            }],
            step_limit,
            end_limit: Duration::from_secs(60),
            errors: Vec::new(),
            notes: Vec::new(),
            last: Progress::default(),
        }
    }

    /// A pipeline reading 1000 blocks 10 at a time, asking the gate before each frame,
    /// while the run services the gate; returns what the run recorded.
    fn paced_backup(seed: u64, pace: &str) -> WorkloadRecord {
        paced_backup_to(seed, pace, 1000).0
    }

    /// As [`paced_backup`], with a backup whose reads end at block `reach` (an
    /// incremental whose changed blocks end there); also returns the run's notes.
    fn paced_backup_to(seed: u64, pace: &str, reach: u64) -> (WorkloadRecord, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("vol");
        std::fs::create_dir(&work).unwrap();
        let file = dir.path().join("b1-w1");
        let mut host = Host::default();
        host.start(1, &work, &file, seed);
        let mut p = pacing(&file, pace, Duration::from_secs(5));
        // The working set first, as the run waits for it before the instant.
        let t = Instant::now();
        while progress(&mut host, &p.workloads[0].file).is_none() {
            assert!(t.elapsed() < Duration::from_secs(60), "no working set");
            std::thread::sleep(Duration::from_millis(5));
        }
        let gate = p.gate();
        let reader = std::thread::spawn(move || {
            for end in (10..=reach).step_by(10) {
                let t = Instant::now();
                while !gate.may_pass("data", end) {
                    assert!(t.elapsed() < Duration::from_secs(60), "held at {end}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        while !reader.is_finished() {
            p.service(&mut host, &Progress::default());
            std::thread::sleep(Duration::from_millis(2));
        }
        reader.join().unwrap();
        let crossed = Progress {
            blocks_crossed: Some(1000),
            ..Progress::default()
        };
        p.service(&mut host, &crossed);
        let (mut records, notes, errors) = p.finish(&mut host);
        assert!(errors.is_empty(), "{errors:?}");
        (records.remove(0), notes)
    }

    #[test]
    fn steps_an_incremental_never_reached_are_granted_after_it() {
        let (full, _) = paced_backup_to(5, "64KiB per 25%", 1000);
        let (short, notes) = paced_backup_to(5, "64KiB per 25%", 600);
        // Held at 0, 250 and 500 during the backup; 750 after it: the same steps and
        // the same bytes as a backup that read to the end.
        assert_eq!(short.steps, full.steps);
        assert_eq!(short.bytes, full.bytes);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("1 step(s) granted after the backup")),
            "{notes:?}"
        );
    }

    #[test]
    fn each_step_is_granted_and_used_before_the_backup_passes_it() {
        let r = paced_backup(5, "64KiB per 25%");
        let positions: Vec<u64> = r.steps.iter().map(|s| s.position).collect();
        assert_eq!(positions, [0, 250, 500, 750]);
        for s in &r.steps {
            assert_eq!(s.allowance, 65536 * (u64::from(s.step) + 1));
            assert!(s.done >= s.allowance, "{s:?}");
        }
        let bytes = r.bytes.unwrap();
        assert!((4 * 65536..4 * 65536 + 65536).contains(&bytes), "{bytes}");
        assert_eq!(r.stopped_by.as_deref(), Some("allowance-used"));
        assert_eq!(r.failure, None);
        assert_eq!(r.pacing, "64KiB per 25%");
        // The same seed writes the same, step by step: the timing of the reader and
        // the run does not enter.
        assert_eq!(paced_backup(5, "64KiB per 25%"), r);
    }

    #[test]
    fn a_workload_ahead_of_its_grants_is_not_stalled() {
        // Writes of up to 64 KiB against grants of 4 KiB: one write covers several
        // steps, and the workload, with nothing to do, never reads those grants.
        let r = paced_backup(3, "4KiB per 25%");
        assert_eq!(r.steps.len(), 4);
        for s in &r.steps {
            assert!(s.done >= s.allowance, "{s:?}");
        }
        assert!(r.bytes.unwrap() >= 16384);
    }

    #[test]
    fn a_workload_that_never_uses_its_grant_is_a_harness_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b1-w1");
        // Ready, and then never moves: what a wedged workload looks like.
        let stuck = PacedProgress {
            allowance: Default::default(),
            done: 0,
            ops: 0,
            bytes: 0,
            writes: 0,
            last_seq: None,
            error_count: 0,
            last_error: None,
            stopped_by: None,
        };
        std::fs::write(
            dir.path().join("b1-w1.done"),
            serde_json::to_string(&stuck).unwrap(),
        )
        .unwrap();
        let mut host = Host::default();
        let mut p = pacing(&file, "64KiB per 25%", Duration::from_millis(200));
        let gate = p.gate();
        assert!(!gate.may_pass("data", 10));
        p.service(&mut host, &Progress::default());
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        let e = &p.errors[0];
        assert!(e.contains("#0 (overwrite on data) stalled"), "{e}");
        assert!(
            e.contains("allowance of 65536") && e.contains("step 0"),
            "{e}"
        );
        // The backup is not held hostage: the gate lets it go on.
        assert!(gate.may_pass("data", 1000));
        let (records, _, errors) = p.finish(&mut host);
        assert!(errors.iter().any(|e| e.contains("stalled")), "{errors:?}");
        assert_eq!(records[0].steps, []);
    }

    #[test]
    fn a_pipeline_that_never_asks_the_gate_is_a_harness_error() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("vol");
        std::fs::create_dir(&work).unwrap();
        let file = dir.path().join("b1-w1");
        let mut host = Host::default();
        host.start(1, &work, &file, 1);
        let mut p = pacing(&file, "64KiB per 25%", Duration::from_secs(60));
        let crossed = Progress {
            blocks_crossed: Some(1000),
            ..Progress::default()
        };
        p.service(&mut host, &crossed);
        let (records, _, errors) = p.finish(&mut host);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("never consulted the pacing gate")),
            "{errors:?}"
        );
        // Granted nothing, it wrote nothing, as asked.
        assert_eq!(records[0].bytes, Some(0));
    }
}

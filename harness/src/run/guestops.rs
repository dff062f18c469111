//! What the run does inside the guest through the control channel: find and mount the
//! volumes, fill them, run workloads, check discovery, list files, and the checks that
//! follow a run (fsck on the host, the second boot).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{chain, disks};
use bw_guest::control::Finished;
use bw_guest::workload::WorkloadSummary;
use reference_agent::agent::discover::Discovery;

use crate::events::{Event, Reporter};
use crate::guest::GuestError;
use crate::model::Skipped;
use crate::pipeline::{GuestVolume, Pipeline};
use crate::plan::{Plan, WorkloadRun};
use crate::qemu::{Disk, DiskFormat};
use crate::record::{CheckKind, CheckResult, WorkloadRecord};
use crate::scenario::{Filesystem, Rate};
use crate::truth::Truth;
use crate::vm::Vm;

const SHORT: Duration = Duration::from_secs(60);

/// Why something the run does in the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestOpError {
    #[error("guest control channel")]
    Guest(#[from] GuestError),
    #[error("volume {volume}: no disk with serial {serial} in the guest (found: {found:?})")]
    NoDisk {
        volume: String,
        serial: String,
        found: BTreeMap<String, String>,
    },
    #[error("mounting volume {volume}")]
    Mount {
        volume: String,
        #[source]
        source: GuestError,
    },
    #[error("no volume named {0}")]
    NoVolume(String),
    #[error("volume {volume}: the pipeline could not attach it")]
    Attach {
        volume: String,
        #[source]
        source: Box<crate::pipeline::PipelineError>,
    },
    #[error("`{command}` {how}")]
    Failed { command: String, how: String },
    #[error("starting `{command}`")]
    Start {
        command: String,
        #[source]
        source: GuestError,
    },
    #[error("volume {volume}")]
    List {
        volume: String,
        #[source]
        source: GuestError,
    },
    #[error(
        "volume {volume}: {differ} of {files} files differ or are missing after the second boot"
    )]
    FilesDiffer {
        volume: String,
        differ: usize,
        files: usize,
    },
}

/// Serial → device name of every disk the guest sees (sysfs only: no I/O to the disks).
fn serials(vm: &mut Vm) -> Result<BTreeMap<String, String>, GuestError> {
    let out = vm.guest.sh(
        r#"for d in /sys/block/*; do [ -f "$d/serial" ] && echo "$(cat "$d/serial") ${d##*/}"; done; true"#,
        SHORT,
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (s, d) = l.trim().split_once(' ')?;
            Some((s.to_string(), d.to_string()))
        })
        .collect())
}

fn mount_type(fs: Filesystem) -> Option<&'static str> {
    match fs {
        Filesystem::Ext2 { .. } => Some("ext2"),
        Filesystem::Ext4 { .. } => Some("ext4"),
        Filesystem::Xfs => Some("xfs"),
        Filesystem::None => None,
    }
}

/// Finds every volume's disk by its serial, lets the pipeline make the device the volume
/// is used through (and the filesystem, when the plan makes it in the guest), and
/// mounts it.
pub(super) fn setup(
    vm: &mut Vm,
    plan: &Plan,
    mut pipeline: Option<&mut (dyn Pipeline + '_)>,
) -> Result<Vec<GuestVolume>, GuestOpError> {
    let serials = serials(vm)?;
    let mut out = Vec::new();
    for v in &plan.volumes {
        let serial = Disk::serial_of(&Disk::volume_id(v.index));
        let dev = serials.get(&serial).ok_or_else(|| GuestOpError::NoDisk {
            volume: v.name.clone(),
            serial: serial.clone(),
            found: serials.clone(),
        })?;
        let disk = format!("/dev/{dev}");
        let device = match pipeline.as_deref_mut() {
            Some(p) => p
                .attach(vm, v, &disk)
                .map_err(|source| GuestOpError::Attach {
                    volume: v.name.clone(),
                    source: Box::new(source),
                })?,
            None => disk.clone(),
        };
        if let (false, Some(cmd)) = (v.mkfs_on_host, disks::mkfs_command(v, plan.seed)) {
            // The pipeline's device holds the filesystem (an LVM volume): made here,
            // with the same options and UUID the host would use.
            let (program, args) = cmd.split_first().expect("an mkfs command has a program");
            vm.guest
                .sh(
                    &format!("/usr/sbin/{program} {} {device}", args.join(" ")),
                    Duration::from_secs(300),
                )
                .map_err(|source| GuestOpError::Mount {
                    volume: v.name.clone(),
                    source,
                })?;
        }
        if let (Some(mount), Some(fstype)) = (&v.mount, mount_type(v.fs)) {
            vm.guest
                .sh(
                    &format!("mkdir -p {mount} && mount -t {fstype} {device} {mount}"),
                    SHORT,
                )
                .map_err(|source| GuestOpError::Mount {
                    volume: v.name.clone(),
                    source,
                })?;
        }
        out.push(GuestVolume {
            name: v.name.clone(),
            disk,
            device,
            mount: v.mount.clone(),
            cow_bytes: v.cow_bytes,
        });
    }
    Ok(out)
}

fn target_args(vol: &GuestVolume) -> Vec<String> {
    match &vol.mount {
        Some(m) => vec!["--dir".into(), m.clone()],
        None => vec!["--device".into(), vol.device.clone()],
    }
}

/// The bw-workload command line of one workload run.
pub fn workload_argv(run: &WorkloadRun, vol: &GuestVolume) -> Vec<String> {
    let w = &run.spec;
    let mut argv = vec!["/bin/bw-workload".to_string(), w.kind.name().to_string()];
    argv.extend(target_args(vol));
    argv.extend([
        "--seed".into(),
        run.seed.to_string(),
        "--writer".into(),
        run.writer.to_string(),
    ]);
    if w.stamped {
        argv.push("--stamped".into());
    }
    if let Some(rate) = w.rate {
        argv.push("--rate".into());
        argv.push(match rate {
            Rate::BytesPerSec(b) => format!("{b}/s"),
            Rate::OpsPerSec(o) => format!("{o}ops/s"),
        });
    }
    if let Some(a) = w.amount {
        argv.extend(["--bytes".into(), a.to_string()]);
    }
    if let Some(o) = w.ops {
        argv.extend(["--ops".into(), o.to_string()]);
    }
    if let Some(d) = w.duration {
        argv.extend(["--duration".into(), format!("{}ms", d.as_millis())]);
    }
    argv
}

pub(super) fn volume<'v>(
    volumes: &'v [GuestVolume],
    name: &str,
) -> Result<&'v GuestVolume, GuestOpError> {
    volumes
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| GuestOpError::NoVolume(name.to_string()))
}

fn run_to_end(vm: &mut Vm, argv: &[String], timeout: Duration) -> Result<String, GuestOpError> {
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    let done = vm.guest.exec(&argv_ref, timeout)?;
    if done.success() {
        Ok(done.stdout)
    } else {
        Err(GuestOpError::Failed {
            command: argv.join(" "),
            how: done.describe(),
        })
    }
}

/// The initial fill of every volume, then the `before` workloads, then a sync.
pub(super) fn fill(
    vm: &mut Vm,
    plan: &Plan,
    volumes: &[GuestVolume],
    reporter: &dyn Reporter,
    run_id: &str,
) -> Result<(), GuestOpError> {
    for v in &plan.volumes {
        if v.fill_bytes == 0 {
            continue;
        }
        let gv = volume(volumes, &v.name)?;
        let mut argv = vec!["/bin/bw-workload".to_string(), "fill".to_string()];
        argv.extend(target_args(gv));
        argv.extend([
            "--bytes".into(),
            v.fill_bytes.to_string(),
            "--seed".into(),
            v.fill_seed.to_string(),
        ]);
        reporter.event(&Event::Note {
            run_id: run_id.to_string(),
            text: format!("filling volume {} with {} MiB", v.name, v.fill_bytes >> 20),
        });
        run_to_end(vm, &argv, Duration::from_secs(1800))?;
    }
    run_workloads(vm, &plan.before, volumes, Duration::from_secs(1800))?;
    vm.guest.sh("sync", SHORT)?;
    Ok(())
}

/// Runs workloads one after another, each to its end.
pub(super) fn run_workloads(
    vm: &mut Vm,
    runs: &[WorkloadRun],
    volumes: &[GuestVolume],
    limit: Duration,
) -> Result<(), GuestOpError> {
    for w in runs {
        let argv = workload_argv(w, volume(volumes, &w.spec.volume)?);
        run_to_end(vm, &argv, limit)?;
    }
    Ok(())
}

/// A `during` workload running in the background.
pub(super) struct Running {
    handle: u64,
    run: WorkloadRun,
}

impl Running {
    fn what(&self) -> String {
        format!("{} on {}", self.run.spec.kind.name(), self.run.spec.volume)
    }
}

/// Starts the `during` workloads in the background.
pub(super) fn start_workloads(
    vm: &mut Vm,
    runs: &[WorkloadRun],
    volumes: &[GuestVolume],
) -> Result<Vec<Running>, GuestOpError> {
    let mut handles = Vec::new();
    for w in runs {
        let argv = workload_argv(w, volume(volumes, &w.spec.volume)?);
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let h = vm
            .guest
            .spawn(&argv_ref)
            .map_err(|source| GuestOpError::Start {
                command: argv.join(" "),
                source,
            })?;
        handles.push(Running {
            handle: h,
            run: w.clone(),
        });
    }
    Ok(handles)
}

/// What stopping the background workloads found: notes for the report, the workloads
/// that failed (a harness error: the run did not do what the scenario asked), and a
/// record of each.
#[derive(Debug, Default)]
pub(super) struct Stopped {
    pub notes: Vec<String>,
    pub failures: Vec<String>,
    pub records: Vec<WorkloadRecord>,
}

/// Stops background workloads (SIGTERM, then waits) and summarises what they did in
/// backup `backup`.
pub(super) fn stop_workloads(vm: &mut Vm, running: Vec<Running>, backup: u32) -> Stopped {
    let mut out = Stopped::default();
    for r in running {
        let what = r.what();
        let h = r.handle;
        let mut summary = None;
        if vm.machine.exited().is_some() {
            out.notes
                .push(format!("workload {what}: the guest is gone"));
        } else {
            let _ = vm.guest.kill(h, libc::SIGTERM);
            match vm.guest.wait(h, Duration::from_secs(20)) {
                Ok(Some(done)) => {
                    summary = done
                        .stdout
                        .lines()
                        .rev()
                        .find_map(|l| serde_json::from_str::<WorkloadSummary>(l).ok());
                    match judge_workload(&what, &done) {
                        Ok(note) => out.notes.push(note),
                        Err(failure) => out.failures.push(failure),
                    }
                }
                Ok(None) => {
                    let _ = vm.guest.kill(h, libc::SIGKILL);
                    out.failures
                        .push(format!("workload {what}: did not stop on SIGTERM; killed"));
                }
                // A guest fault (reset, panic) takes the workloads with it: not theirs.
                Err(e) => out.notes.push(format!("workload {what}: {}", chain(&e))),
            }
        }
        let s = summary.as_ref();
        out.records.push(WorkloadRecord {
            backup,
            index: r.run.index,
            writer: r.run.writer,
            kind: r.run.spec.kind.name().to_string(),
            volume: r.run.spec.volume.clone(),
            pacing: format!(
                "wall clock: {}",
                r.run
                    .spec
                    .wall_clock_reason
                    .as_deref()
                    .unwrap_or("no reason given")
            ),
            steps: Vec::new(),
            bytes: s.map(|s| s.bytes),
            ops: s.map(|s| s.ops),
            writes: s.map(|s| s.writes),
            stopped_by: s.map(|s| super::pace::stop_name(s.stopped_by)),
            failure: s.and_then(|s| s.failure).map(|f| f.to_string()),
        });
    }
    out
}

/// A finished background workload: its summary line for the report, or why it failed.
/// A workload that reports a failure (errors, or nothing written when asked to write),
/// leaves no summary, or exits non-zero did not do what the scenario asked.
pub(super) fn judge_workload(what: &str, done: &Finished) -> Result<String, String> {
    let summary = done
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<WorkloadSummary>(l).ok());
    let Some(s) = summary else {
        return Err(format!("workload {what}: no summary ({})", done.describe()));
    };
    let seq = |n: Option<u64>| n.map_or("null".into(), |n| n.to_string());
    let line = format!(
        "workload {what}: {} writes, {} MiB, writes #{}..#{}{}",
        s.writes,
        s.bytes >> 20,
        seq(s.first_seq),
        seq(s.last_seq),
        if s.errors.is_empty() {
            String::new()
        } else {
            format!(", errors: {:?}", s.errors)
        }
    );
    match (s.failure, done.success()) {
        (Some(f), _) => Err(format!("{line}: {f}")),
        (None, false) => Err(format!("{line}: {}", done.describe())),
        (None, true) => Ok(line),
    }
}

/// The volumes whose device is gone from the guest.
pub(super) fn check_volumes_present(
    vm: &mut Vm,
    volumes: &[GuestVolume],
) -> Result<(), Vec<String>> {
    if vm.machine.exited().is_some() {
        return Ok(());
    }
    let Ok(serials) = serials(vm) else {
        return Ok(());
    };
    let present: Vec<&String> = serials.values().collect();
    let gone: Vec<String> = volumes
        .iter()
        .filter(|v| {
            let name = v.disk.trim_start_matches("/dev/");
            !present.iter().any(|p| p.as_str() == name)
        })
        .map(|v| v.name.clone())
        .collect();
    if gone.is_empty() {
        Ok(())
    } else {
        Err(gone)
    }
}

/// Runs the agent's discovery and checks it skipped what the scenario expects, with a
/// reason, within the discovery timeout.
pub(super) fn discovery_check(vm: &mut Vm, plan: &Plan) -> Vec<CheckResult> {
    let limit = plan.discovery_timeout;
    let hang_name = serials(vm)
        .ok()
        .and_then(|s| s.get(&Disk::serial_of(disks::HANG_ID)).cloned());
    let probe = (limit / 4).max(Duration::from_millis(500));
    let started = Instant::now();
    let result = vm.guest.exec(
        &[
            "/bin/bw-agent",
            "list",
            "--json",
            "--probe-timeout",
            &format!("{:.3}", probe.as_secs_f64()),
        ],
        limit + Duration::from_secs(5),
    );
    let took = started.elapsed();
    plan.expect
        .skipped
        .iter()
        .map(|want| {
            let kind = CheckKind::skipped(*want);
            let fail = |detail: String| CheckResult {
                kind,
                passed: false,
                detail,
            };
            let done = match &result {
                Ok(d) => d,
                Err(e) => return fail(format!("bw-agent list: {}", chain(e))),
            };
            if done.timed_out || took > limit {
                return fail(format!(
                    "discovery took {took:?}, over its limit of {limit:?}"
                ));
            }
            let found: Discovery = serde_json::from_str(&done.stdout).unwrap_or_default();
            let name = match want {
                Skipped::Floppy => Some("fd0".to_string()),
                Skipped::HangDisk => hang_name.clone(),
            };
            let Some(name) = name else {
                return fail("the never-answering disk is not in the guest".into());
            };
            match found.skipped.iter().find(|s| s.name == name) {
                Some(s) if !s.reason.is_empty() => CheckResult {
                    kind,
                    passed: true,
                    detail: format!("{name} skipped in {:.1}s: {}", took.as_secs_f64(), s.reason),
                },
                _ => fail(format!(
                    "{name} was not skipped with a reason (discovery said: {})",
                    done.stdout.trim()
                )),
            }
        })
        .collect()
}

/// Every regular file of every mounted volume with its md5 (busybox), for the second
/// boot to compare.
pub(super) fn file_lists(
    vm: &mut Vm,
    volumes: &[GuestVolume],
) -> Result<Vec<(String, String)>, GuestOpError> {
    let mut out = Vec::new();
    for v in volumes {
        let Some(m) = &v.mount else { continue };
        let list = vm
            .guest
            .sh(
                &format!(
                    "cd {m} && find . -type f ! -name '.bwsnap-cow-*' | sort | xargs -r md5sum"
                ),
                Duration::from_secs(600),
            )
            .map_err(|source| GuestOpError::List {
                volume: v.name.clone(),
                source,
            })?;
        out.push((v.name.clone(), list));
    }
    Ok(out)
}

/// On the second boot: mount every volume and compare its files with the first boot's.
pub(super) fn remount_compare(
    vm: &mut Vm,
    plan: &Plan,
    before: &[(String, String)],
) -> Result<String, GuestOpError> {
    let volumes = setup(vm, plan, None)?;
    let after = file_lists(vm, &volumes)?;
    let mut files = 0;
    for (name, list) in before {
        let now = after
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.as_str())
            .unwrap_or("");
        if now != list {
            let a: Vec<&str> = list.lines().collect();
            let b: Vec<&str> = now.lines().collect();
            let differ = a.iter().filter(|l| !b.contains(l)).count();
            return Err(GuestOpError::FilesDiffer {
                volume: name.clone(),
                differ,
                files: a.len(),
            });
        }
        files += list.lines().count();
    }
    Ok(format!("every volume mounted again; {files} files intact"))
}

/// `e2fsck -fn` on every ext2/ext4 volume as it is after the run.
pub(super) fn fsck(plan: &Plan, truth: Option<&Truth>, work: &Path) -> CheckResult {
    let mut details = Vec::new();
    let mut passed = true;
    for v in plan.volumes.iter().filter(|v| v.fs.is_ext()) {
        let top = truth.and_then(|t| t.top(&v.name));
        let (path, scratch) = match top {
            Some((p, DiskFormat::Qcow2)) => {
                let out = work.join(format!("fsck-d{}.raw", v.index));
                if let Err(e) = crate::truth::flatten(&p, &out) {
                    passed = false;
                    details.push(format!("{}: {}", v.name, chain(&e)));
                    continue;
                }
                (out, true)
            }
            Some((p, DiskFormat::Raw)) => (p, false),
            None => (disks::volume_file(work, v.index), false),
        };
        let out = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => details.push(format!("{}: clean", v.name)),
            Ok(o) => {
                passed = false;
                let text = String::from_utf8_lossy(&o.stdout);
                let tail: Vec<&str> = text.lines().rev().take(4).collect();
                details.push(format!(
                    "{}: e2fsck -fn exit {}: {}",
                    v.name,
                    o.status.code().unwrap_or(-1),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            Err(e) => {
                passed = false;
                details.push(format!("{}: cannot run e2fsck: {e}", v.name));
            }
        }
        if scratch {
            let _ = std::fs::remove_file(&path);
        }
    }
    CheckResult {
        kind: CheckKind::Fsck,
        passed,
        detail: details.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bw_guest::workload::{Failure, Kind, StopReason};

    fn summary(writes: u64, failure: Option<Failure>) -> String {
        let s = WorkloadSummary {
            kind: Kind::Overwrite,
            seed: 1,
            writer: 1,
            stamped: true,
            target: "/mnt/data".into(),
            ops: writes,
            bytes: writes * 4096,
            writes,
            setup_bytes: 0,
            first_seq: (writes > 0).then_some(1),
            last_seq: (writes > 0).then_some(writes),
            first_write_ns: None,
            last_write_ns: None,
            start_ns: 0,
            end_ns: 1,
            files_touched: 1,
            stopped_by: StopReason::Signal,
            error_count: 0,
            errors: vec![],
            paced: None,
            failure,
        };
        serde_json::to_string(&s).unwrap()
    }

    fn finished(code: i32, stdout: String) -> Finished {
        Finished {
            exit_code: Some(code),
            signal: None,
            timed_out: false,
            stdout,
            stderr: String::new(),
            duration_ms: 5,
        }
    }

    #[test]
    fn a_workload_that_failed_or_wrote_nothing_is_never_a_clean_workload() {
        let ok = judge_workload("overwrite on data", &finished(0, summary(300, None)));
        assert_eq!(
            ok.unwrap(),
            "workload overwrite on data: 300 writes, 1 MiB, writes #1..#300"
        );
        let nothing = judge_workload(
            "overwrite on data",
            &finished(1, summary(0, Some(Failure::NothingWritten))),
        )
        .unwrap_err();
        assert!(
            nothing.contains("asked to write and wrote nothing"),
            "{nothing}"
        );
        let errors = judge_workload(
            "overwrite on data",
            &finished(1, summary(7, Some(Failure::Errors))),
        )
        .unwrap_err();
        assert!(errors.contains("hit errors"), "{errors}");
        // A non-zero exit without a failure in the summary still fails.
        let exit = judge_workload("x", &finished(3, summary(7, None))).unwrap_err();
        assert!(exit.contains("exit status 3"), "{exit}");
        let silent = judge_workload("x", &finished(0, "garbage".into())).unwrap_err();
        assert!(silent.contains("no summary"), "{silent}");
    }
}

//! How runs end: limits and rates, ENOSPC as the expected end of fill-to-full, SIGTERM,
//! usage errors, writes blocked by a frozen filesystem, and runs that failed or wrote
//! nothing saying so.

use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::support::{
    cannot_run, config, is_root, read_log, run, sh, Frozen, Fs, Mounted, TempDir, BIN,
};
use bw_guest::workload::{self, Failure, StopReason, WorkloadSummary};

#[test]
fn fill_to_full_ends_at_enospc_without_error_on_tmpfs() {
    if !is_root() {
        cannot_run("mounting tmpfs needs root");
        return;
    }
    let tmp = TempDir::new("tmpfs");
    let mnt = tmp.sub("mnt");
    if let Err(e) = sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ],
    ) {
        cannot_run(&e);
        return;
    }
    let summary = workload::run(
        &config(&format!(
            "fill-to-full --dir {} --max-file-size 256KiB",
            mnt.display()
        )),
        &AtomicBool::new(false),
    );
    let _ = sh("umount", &[mnt.to_str().unwrap()]);
    let summary = summary.unwrap();
    assert_eq!(summary.stopped_by, StopReason::Full);
    assert_eq!(summary.error_count, 0, "{:?}", summary.errors);
    assert!(
        summary.bytes > 1 << 20 && summary.bytes <= 2 << 20,
        "{}",
        summary.bytes
    );
}

#[test]
fn rates_are_kept() {
    let tmp = TempDir::new("rate");
    let d = tmp.0.display();
    run(&format!("fill --dir {d} --bytes 4MiB"));
    // A rate is a ceiling: a busy machine may do less, never more.
    let by_bytes = run(&format!(
        "overwrite --dir {d} --rate 1MiB/s --duration 1s --max-write 16KiB"
    ));
    assert_eq!(by_bytes.stopped_by, StopReason::Duration);
    assert!(
        (1..=(1 << 20) + (16 << 10)).contains(&by_bytes.bytes),
        "{}",
        by_bytes.bytes
    );
    let by_ops = run(&format!("overwrite --dir {d} --rate 20ops/s --duration 1s"));
    assert!((1..=21).contains(&by_ops.ops), "{}", by_ops.ops);
    let capped = run(&format!("append --dir {d} --bytes 100KiB --max-write 8KiB"));
    assert_eq!(capped.stopped_by, StopReason::Bytes);
    assert!(
        (100 << 10..(100 << 10) + (8 << 10)).contains(&capped.bytes),
        "{}",
        capped.bytes
    );
}

/// Spawns the binary, lets it run, sends SIGTERM, and times the exit.
fn stop_with_sigterm(args: &str, after: Duration) -> (WorkloadSummary, Duration, i32) {
    let child = Command::new(BIN)
        .args(args.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: WorkloadSummary = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (summary, took, out.status.code().unwrap_or(-1))
}

#[test]
fn sigterm_stops_promptly_with_a_summary() {
    let tmp = TempDir::new("sigterm");
    let d = tmp.0.display();
    let (busy, took, code) = stop_with_sigterm(
        &format!("overwrite --dir {d} --set-size 4MiB --seed 3"),
        Duration::from_millis(600),
    );
    // Generous bounds for a loaded machine; the paced case below is what a run that
    // ignored the signal would fail by the hour.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!((busy.stopped_by, code), (StopReason::Signal, 0));
    assert!(busy.ops > 0 && busy.writes > 0);
    assert!(busy.last_write_ns >= busy.first_write_ns && busy.end_ns > busy.start_ns);
    // Sleeping on a slow rate must not delay the stop either: at 1 byte/s the next
    // append is an hour away.
    let (paced, took, _) = stop_with_sigterm(
        &format!("append --dir {d} --rate 1B/s"),
        Duration::from_millis(300),
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(paced.stopped_by, StopReason::Signal);
}

#[test]
fn bad_invocations_exit_2_naming_the_problem() {
    let out = Command::new(BIN)
        .args(["overwrite", "--dir", "/nonexistent/bw"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bw"));
    let out = Command::new(BIN)
        .args(["append", "--device", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a filesystem"));
}

#[test]
fn writes_wait_out_a_frozen_filesystem() {
    let Some(fs) = Mounted::new(Fs::Ext4(4096), 32) else {
        return;
    };
    let mnt = fs.mnt.to_str().unwrap();
    run(&format!("fill --dir {mnt} --bytes 4MiB"));
    let logs = TempDir::new("freeze");
    let log = logs.0.join("w.log");
    let child = Command::new(BIN)
        .args([
            "overwrite",
            "--dir",
            mnt,
            "--stamped",
            "--duration",
            "4000ms",
            "--rate",
            "200ops/s",
        ])
        .args(["--sync", "20", "--log", log.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Freeze once the workload is writing (a loaded machine may take a while to start
    // it), not after a fixed sleep: a freeze before its first write shows no gap.
    let writing = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&log).map_or(0, |t| t.matches('\n').count()) < 5 {
        assert!(
            std::time::Instant::now() < writing,
            "the workload never started writing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sh("fsfreeze", &["--freeze", mnt]).unwrap();
    let frozen = Frozen(&fs.mnt);
    std::thread::sleep(Duration::from_millis(1200));
    drop(frozen);
    let out = child.wait_with_output().unwrap();
    let summary: WorkloadSummary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary.error_count, 0, "{:?}", summary.errors);
    assert_eq!(summary.stopped_by, StopReason::Duration);
    let times: Vec<u64> = read_log(&log).iter().map(|r| r.time_ns).collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        gap > 1_000_000_000,
        "no write waited for the thaw: longest gap {gap} ns"
    );
    let after_thaw = times
        .iter()
        .filter(|t| **t > times[0] + 1_200_000_000)
        .count();
    assert!(after_thaw > 0, "no writes after the thaw");
}

#[test]
fn a_run_stopped_before_its_first_operation_says_it_wrote_nothing() {
    let tmp = TempDir::new("nothing");
    let d = tmp.0.display();
    run(&format!("fill --dir {d} --bytes 1MiB"));
    // Stopped before it starts: a during workload on a backup faster than its first write.
    let stopped = AtomicBool::new(true);
    let summary = workload::run(&config(&format!("overwrite --dir {d}")), &stopped).unwrap();
    assert_eq!((summary.stopped_by, summary.ops), (StopReason::Signal, 0));
    assert_eq!(summary.error_count, 0);
    assert_eq!(summary.failure, Some(Failure::NothingWritten));
    // Asked for nothing, it did nothing: no failure.
    let none = workload::run(&config(&format!("overwrite --dir {d} --ops 0")), &stopped).unwrap();
    assert_eq!(none.failure, None);
}

#[test]
fn a_run_with_errors_exits_1_with_the_failure_in_its_summary() {
    // tmpfs has no FIEMAP, so a stamped write cannot name its place: a fatal error, and
    // nothing written.
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        cannot_run("no /dev/shm (tmpfs) to write to");
        return;
    }
    let tmp = tempdir_in(shm);
    let out = Command::new(BIN)
        .args(["overwrite", "--dir", tmp.0.to_str().unwrap(), "--stamped"])
        .args(["--set-size", "64KiB", "--ops", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let summary: WorkloadSummary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary.failure, Some(Failure::Errors));
    assert_eq!(summary.stopped_by, StopReason::Fatal);
    assert!(
        summary.errors.iter().any(|e| e.contains("FIEMAP")),
        "{:?}",
        summary.errors
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("hit errors"));
}

/// A TempDir under `parent` instead of the default temp dir.
fn tempdir_in(parent: &std::path::Path) -> TempDir {
    let dir = TempDir::new("shm");
    let path = parent.join(dir.0.file_name().unwrap());
    std::fs::create_dir_all(&path).unwrap();
    TempDir(path)
}

//! bw-workload against real filesystems on the host: determinism per seed, stamps that sit
//! at the LBA they name (checked on the raw image of loop-mounted ext4, ext2 and xfs),
//! raw-device mode on a plain file, ENOSPC as the expected end of fill-to-full, rate
//! limits, SIGTERM, and writes blocked by a frozen filesystem.
//!
//! Loop mounts and tmpfs need root and mkfs tools; without them those tests say
//! "skipped" on stderr and pass.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bw_guest::stamp::{Stamp, BLOCK_SIZE};
use bw_guest::workload::{self, Config, LogRecord, StopReason, Summary};

const BIN: &str = env!("CARGO_BIN_EXE_bw-workload");

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("bw-wl-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn sub(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::create_dir_all(&path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config(args: &str) -> Config {
    Config::from_args(args.split_whitespace()).unwrap_or_else(|e| panic!("{args}: {e}"))
}

fn run(args: &str) -> Summary {
    let summary = workload::run(&config(args), &AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("{args}: {e}"));
    assert_eq!(summary.error_count, 0, "{args}: {:?}", summary.errors);
    summary
}

fn read_log(path: &Path) -> Vec<LogRecord> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A log without its times (and LBAs, which depend on where the filesystem put things).
fn operations(log: &[LogRecord]) -> Vec<(u64, Option<String>, u64, String)> {
    log.iter()
        .map(|r| (r.seq, r.file.clone(), r.offset, r.op.clone()))
        .collect()
}

/// Every entry under `root`: path, directory or not, size of files, permission bits.
fn tree(root: &Path) -> Vec<(String, bool, u64, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string();
            out.push((
                rel,
                meta.is_dir(),
                if meta.is_dir() { 0 } else { meta.len() },
                meta.permissions().mode() & 0o777,
            ));
            if meta.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A filesystem image loop-mounted for the test; unmounted when dropped.
struct Mounted {
    _dir: TempDir,
    image: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

impl Mounted {
    /// None (with a note) when the machine cannot do it: not root, no mkfs, no loop.
    fn new(fs_type: &str, size_mib: u64) -> Option<Mounted> {
        if !is_root() {
            eprintln!("skipped: loop mounts need root");
            return None;
        }
        let dir = TempDir::new(fs_type);
        let image = dir.0.join("disk.img");
        let mnt = dir.sub("mnt");
        fs::File::create(&image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let img = image.to_str().unwrap();
        let made = match fs_type {
            "ext4" => sh("mkfs.ext4", &["-q", "-F", "-b", "4096", img]),
            "ext2" => sh("mkfs.ext2", &["-q", "-F", "-b", "4096", img]),
            "ext2-1k" => sh("mkfs.ext2", &["-q", "-F", "-b", "1024", img]),
            "xfs" => sh("mkfs.xfs", &["-q", "-f", img]),
            other => Err(format!("no mkfs for {other}")),
        };
        let kernel_type = fs_type.trim_end_matches("-1k");
        let mounted = made.and_then(|()| {
            sh(
                "mount",
                &["-t", kernel_type, "-o", "loop", img, mnt.to_str().unwrap()],
            )
        });
        match mounted {
            Ok(()) => Some(Mounted {
                _dir: dir,
                image,
                mnt,
                mounted: true,
            }),
            Err(e) => {
                eprintln!("skipped: cannot mount {fs_type}: {e}");
                None
            }
        }
    }

    fn unmount(&mut self) {
        if self.mounted {
            sh("umount", &[self.mnt.to_str().unwrap()]).unwrap();
            self.mounted = false;
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = sh("umount", &[self.mnt.to_str().unwrap()]);
        }
    }
}

/// Unfreezes a filesystem when dropped, so a failing test never leaves it frozen.
struct Frozen<'a>(&'a Path);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = sh("fsfreeze", &["--unfreeze", self.0.to_str().unwrap()]);
    }
}

#[test]
fn the_same_seed_issues_the_same_operations() {
    let tmp = TempDir::new("determinism");
    let kinds = [
        "fill --bytes 3MiB",
        "fill-to-full --bytes 2MiB",
        "overwrite --ops 60",
        "append --ops 30",
        "delete-rewrite --ops 12",
        "metadata-churn --ops 150",
    ];
    for (k, kind) in kinds.iter().enumerate() {
        let mut seen = Vec::new();
        for (copy, seed) in [(0, 5), (1, 5), (2, 6)] {
            let dir = tmp.sub(&format!("{k}-{copy}"));
            let d = dir.display();
            if !kind.starts_with("fill") {
                run(&format!(
                    "fill --dir {d} --bytes 4MiB --max-file-size 512KiB --seed {seed}"
                ));
            }
            let log = tmp.0.join(format!("{k}-{copy}.log"));
            let summary = run(&format!(
                "{kind} --dir {d} --seed {seed} --max-file-size 512KiB --log {}",
                log.display()
            ));
            assert!(summary.writes > 0, "{kind}: nothing written");
            seen.push((operations(&read_log(&log)), tree(&dir), summary));
        }
        let (a, b, other) = (&seen[0], &seen[1], &seen[2]);
        assert_eq!(a.0, b.0, "{kind}: same seed, different writes");
        assert_eq!(a.1, b.1, "{kind}: same seed, different trees");
        assert_eq!(
            (a.2.ops, a.2.bytes, a.2.writes),
            (b.2.ops, b.2.bytes, b.2.writes),
            "{kind}"
        );
        assert_ne!(a.0, other.0, "{kind}: another seed, same writes");
        assert_eq!(a.2.first_seq, Some(1), "{kind}");
        assert_eq!(a.2.last_seq, Some(a.2.writes), "{kind}");
        assert_eq!(
            a.0.len() as u64,
            a.2.writes,
            "{kind}: one log line per block"
        );
    }
}

#[test]
fn fill_creates_exactly_its_size_and_stops_done() {
    let tmp = TempDir::new("fill");
    let summary = run(&format!(
        "fill --dir {} --bytes 5MiB --seed 1",
        tmp.0.display()
    ));
    assert_eq!(summary.stopped_by, StopReason::Done);
    assert_eq!(summary.bytes, 5 << 20);
    let on_disk: u64 = tree(&tmp.0).iter().map(|e| e.2).sum();
    assert_eq!(on_disk, 5 << 20);
    assert_eq!(summary.files_touched, tree(&tmp.0).len() as u64);
}

#[test]
fn a_working_set_is_created_when_there_are_no_files() {
    let tmp = TempDir::new("setup");
    let summary = run(&format!(
        "overwrite --dir {} --ops 10 --set-size 2MiB",
        tmp.0.display()
    ));
    assert_eq!(summary.setup_bytes, 2 << 20);
    assert_eq!(summary.ops, 10);
    assert!(summary.bytes > 0 && summary.bytes <= 10 * 64 * 1024);
    let sizes: u64 = tree(&tmp.0).iter().map(|e| e.2).sum();
    assert_eq!(sizes, 2 << 20, "overwrite must not grow the files");
}

#[test]
fn raw_device_stamps_sit_at_their_offset() {
    let tmp = TempDir::new("raw");
    let dev = tmp.0.join("disk");
    fs::File::create(&dev).unwrap().set_len(8 << 20).unwrap();
    let d = dev.display();
    let (fill_log, over_log) = (tmp.0.join("fill.log"), tmp.0.join("over.log"));
    let fill = run(&format!(
        "fill --device {d} --stamped --writer 1 --seed 4 --log {}",
        fill_log.display()
    ));
    assert_eq!((fill.stopped_by, fill.bytes), (StopReason::Done, 8 << 20));
    let over = run(&format!(
        "overwrite --device {d} --stamped --writer 2 --seed 4 --ops 300 --log {}",
        over_log.display()
    ));
    assert_eq!(over.stopped_by, StopReason::Ops);

    // The last write to each LBA, in run order.
    let mut last: HashMap<u64, (u32, LogRecord)> = HashMap::new();
    for (writer, log) in [(1, &fill_log), (2, &over_log)] {
        for record in read_log(log) {
            assert_eq!(
                record.lba,
                Some(record.offset / 4096),
                "raw LBA is offset / 4096"
            );
            assert_eq!(record.file, None);
            last.insert(record.offset / 4096, (writer, record));
        }
    }
    assert_eq!(last.len(), 2048, "fill covers the whole device");
    let image = fs::read(&dev).unwrap();
    let mut overwritten = 0;
    for (lba, block) in image.chunks(BLOCK_SIZE).enumerate() {
        let stamp = Stamp::decode(block).unwrap_or_else(|e| panic!("block {lba}: {e}"));
        let (writer, record) = &last[&(lba as u64)];
        assert_eq!(
            (stamp.lba, stamp.writer, stamp.seq, stamp.time_ns),
            (lba as u64, *writer, record.seq, record.time_ns)
        );
        overwritten += usize::from(stamp.writer == 2);
    }
    assert!(overwritten > 100, "only {overwritten} blocks overwritten");

    // The same seed gives the same LBAs on a device.
    let again = tmp.0.join("again.log");
    run(&format!(
        "overwrite --device {d} --stamped --writer 2 --seed 4 --ops 300 --log {}",
        again.display()
    ));
    let lbas = |log: &Path| {
        read_log(log)
            .iter()
            .map(|r| (r.seq, r.lba))
            .collect::<Vec<_>>()
    };
    assert_eq!(lbas(&over_log), lbas(&again));

    let full = run(&format!("fill-to-full --device {d}"));
    assert_eq!((full.stopped_by, full.bytes), (StopReason::Full, 8 << 20));
}

/// Runs every kind stamped on a mounted filesystem, one writer id per run, then checks
/// every block of every remaining file: it is a valid stamp, the log has that write with
/// that LBA, it is the last write logged for that LBA, and the raw image holds exactly
/// this block at that LBA.
fn stamps_land_where_they_say(fs_type: &str, size_mib: u64) {
    let Some(mut fs) = Mounted::new(fs_type, size_mib) else {
        return;
    };
    let work = fs.mnt.join("work");
    fs::create_dir(&work).unwrap();
    let logs = TempDir::new("logs");
    let runs = [
        "fill --bytes 6MiB --max-file-size 1MiB",
        "overwrite --ops 150",
        "append --ops 30",
        "delete-rewrite --ops 8 --max-file-size 512KiB",
        "metadata-churn --ops 120",
        "overwrite --ops 100 --max-write 16KiB",
    ];
    let mut by_write: HashMap<(u32, u64), LogRecord> = HashMap::new();
    let mut last_at: HashMap<u64, (u32, u64)> = HashMap::new();
    for (i, kind) in runs.iter().enumerate() {
        let writer = i as u32 + 1;
        let log = logs.0.join(format!("{writer}.log"));
        let summary = run(&format!(
            "{kind} --dir {} --stamped --seed 21 --writer {writer} --log {}",
            work.display(),
            log.display()
        ));
        assert!(summary.writes > 0, "{fs_type} {kind}");
        for record in read_log(&log) {
            let lba = record
                .lba
                .unwrap_or_else(|| panic!("{fs_type} {kind}: stamped write without LBA"));
            last_at.insert(lba, (writer, record.seq));
            by_write.insert((writer, record.seq), record);
        }
    }

    let mut blocks: Vec<(String, Stamp, Vec<u8>)> = Vec::new();
    let mut todo = vec![work.clone()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let mut data = Vec::new();
            fs::File::open(&path)
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            for (n, block) in data.chunks(BLOCK_SIZE).enumerate() {
                let at = format!("{} block {n}", path.display());
                let stamp = Stamp::decode(block).unwrap_or_else(|e| panic!("{fs_type}: {at}: {e}"));
                let record = by_write
                    .get(&(stamp.writer, stamp.seq))
                    .unwrap_or_else(|| panic!("{fs_type}: {at}: stamp {stamp:?} not in any log"));
                assert_eq!(
                    (record.lba, record.time_ns),
                    (Some(stamp.lba), stamp.time_ns),
                    "{fs_type}: {at}"
                );
                assert_eq!(
                    last_at[&stamp.lba],
                    (stamp.writer, stamp.seq),
                    "{fs_type}: {at}: a later write to LBA {} is not here",
                    stamp.lba
                );
                blocks.push((at, stamp, block.to_vec()));
            }
        }
    }
    assert!(
        blocks.len() > 1000,
        "{fs_type}: only {} blocks",
        blocks.len()
    );

    fs.unmount();
    let image = fs::File::open(&fs.image).unwrap();
    let mut on_disk = vec![0u8; BLOCK_SIZE];
    for (at, stamp, block) in &blocks {
        image
            .read_exact_at(&mut on_disk, stamp.lba * BLOCK_SIZE as u64)
            .unwrap();
        assert!(
            on_disk == *block,
            "{fs_type}: {at}: the image at LBA {} holds something else",
            stamp.lba
        );
    }
}

#[test]
fn stamps_land_where_they_say_on_ext4() {
    stamps_land_where_they_say("ext4", 48);
}

#[test]
fn stamps_land_where_they_say_on_ext2_without_fallocate() {
    stamps_land_where_they_say("ext2", 48);
}

#[test]
fn stamps_land_where_they_say_on_xfs() {
    // mkfs.xfs refuses filesystems under 300 MiB; the image file stays sparse.
    stamps_land_where_they_say("xfs", 320);
}

#[test]
fn a_1k_block_filesystem_never_gets_a_lying_stamp() {
    let Some(mut fs) = Mounted::new("ext2-1k", 16) else {
        return;
    };
    let logs = TempDir::new("1k");
    let log = logs.0.join("fill.log");
    let summary = workload::run(
        &config(&format!(
            "fill --dir {} --stamped --bytes 2MiB --log {}",
            fs.mnt.display(),
            log.display()
        )),
        &AtomicBool::new(false),
    )
    .unwrap();
    fs.unmount();
    // Either every block happened to be a whole aligned 4 KiB device block, or the run
    // refused to stamp; writing a stamp with a wrong LBA is the one wrong answer.
    match summary.stopped_by {
        StopReason::Fatal => {
            assert!(
                summary.errors.iter().any(|e| e.contains("4 KiB")),
                "{:?}",
                summary.errors
            );
        }
        StopReason::Done => {
            assert_eq!(summary.error_count, 0, "{:?}", summary.errors);
            let image = fs::File::open(&fs.image).unwrap();
            let mut block = vec![0u8; BLOCK_SIZE];
            for record in read_log(&log) {
                let lba = record.lba.unwrap();
                image
                    .read_exact_at(&mut block, lba * BLOCK_SIZE as u64)
                    .unwrap();
                let stamp = Stamp::decode(&block).unwrap_or_else(|e| panic!("LBA {lba}: {e}"));
                assert_eq!((stamp.lba, stamp.seq), (lba, record.seq));
            }
        }
        other => panic!("unexpected end {other:?}: {:?}", summary.errors),
    }
}

#[test]
fn fill_to_full_ends_at_enospc_without_error_on_tmpfs() {
    if !is_root() {
        eprintln!("skipped: mounting tmpfs needs root");
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
        eprintln!("skipped: {e}");
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
fn stamped_fill_to_full_on_ext4() {
    let Some(fs) = Mounted::new("ext4", 16) else {
        return;
    };
    let m = fs.mnt.display();
    // A cap below the free space ends the run first.
    let capped = run(&format!("fill-to-full --dir {m} --stamped --bytes 1MiB"));
    assert_eq!(
        (capped.stopped_by, capped.bytes),
        (StopReason::Bytes, 1 << 20)
    );
    let full = run(&format!(
        "fill-to-full --dir {m} --stamped --max-file-size 1MiB"
    ));
    assert_eq!(full.stopped_by, StopReason::Full);
    assert!(full.bytes > 8 << 20, "{}", full.bytes);
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
fn stop_with_sigterm(args: &str, after: Duration) -> (Summary, Duration, i32) {
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
    let summary: Summary = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
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
    let Some(fs) = Mounted::new("ext4", 32) else {
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
            "2500ms",
            "--rate",
            "200ops/s",
        ])
        .args(["--sync", "20", "--log", log.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    sh("fsfreeze", &["--freeze", mnt]).unwrap();
    let frozen = Frozen(&fs.mnt);
    std::thread::sleep(Duration::from_millis(1200));
    drop(frozen);
    let out = child.wait_with_output().unwrap();
    let summary: Summary = serde_json::from_slice(&out.stdout).unwrap();
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
        .filter(|t| **t > times[0] + 1_900_000_000)
        .count();
    assert!(after_thaw > 0, "no writes after the thaw");
}

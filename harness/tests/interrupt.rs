//! Ctrl-C in the middle of a run leaves nothing behind: `blockwitness run` gets SIGINT
//! once its guest is up and its pipeline started, and then its work directory, the
//! lock beside it, its socket directories under /tmp and every child it started (QEMU,
//! bw-target) must be gone, none left a zombie.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Processes whose command line mentions `needle`: (pid, command line).
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// The /tmp directories named in a command line (`/tmp/bw-target-abc/target.sock` →
/// `/tmp/bw-target-abc`).
fn tmp_dirs(cmdline: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut rest = cmdline;
    while let Some(at) = rest.find("/tmp/") {
        let tail = &rest[at + "/tmp/".len()..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
            .collect();
        if !name.is_empty() {
            dirs.push(Path::new("/tmp").join(name));
        }
        rest = tail;
    }
    dirs
}

fn state_of(pid: i32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("State:"))
        .map(|l| l.to_string())
}

#[test]
fn vm_sigint_in_the_middle_of_a_run_leaves_nothing_behind() {
    // Build (or find) the image first, so the run below starts from the cache.
    common::image("debian-6.1");
    let dir = common::scratch("interrupt");
    let name = format!("sigint-{}", std::process::id());
    let scenario = dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &scenario,
        format!(
            "name = \"{name}\"\ndescription = \"Interrupted on purpose.\"\nstory = \"nothing left behind\"\ntimeout = \"10m\"\n\n[[volumes]]\nname = \"data\"\nsize = \"64MiB\"\nfill = \"20%\"\n\n[[workloads]]\nkind = \"overwrite\"\nrate = \"256KiB per 10%\"\n"
        ),
    )
    .unwrap();
    let accel = std::env::var("BW_ACCEL").unwrap_or_else(|_| "auto".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_blockwitness"))
        .args(["run", "--plain", "--accel", &accel])
        .arg(&scenario)
        .env("BLOCKWITNESS_REPORTS", dir.path().join("reports"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Wait until the pipeline has started: bw-target serves the run's store.
    let runs = blockwitness::paths::cache_dir().join("runs");
    let deadline = Instant::now() + Duration::from_secs(600);
    let (work, target) = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the pipeline never started");
        let work = std::fs::read_dir(&runs).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&name))
            })
        });
        if let Some(work) = work {
            let store = work.join("store").display().to_string();
            let target = processes_mentioning(&store);
            if !target.is_empty() && work.join("run/console.log").exists() {
                break (work, target);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Every child that names the work directory: QEMU (its run dir), bw-target (store).
    let work_text = work.display().to_string();
    let children = processes_mentioning(&work_text);
    assert!(
        children.iter().any(|(_, c)| c.contains("qemu-system")),
        "no QEMU found: {children:?}"
    );
    let mut temp: Vec<PathBuf> = children.iter().flat_map(|(_, c)| tmp_dirs(c)).collect();
    temp.extend(target.iter().flat_map(|(_, c)| tmp_dirs(c)));
    temp.sort();
    temp.dedup();
    assert!(!temp.is_empty(), "bw-target listens under /tmp: {target:?}");

    // SAFETY: signalling the child we started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the run did not end on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));

    assert!(!work.exists(), "{} was left behind", work.display());
    let mut lock = work.as_os_str().to_owned();
    lock.push(".lock");
    assert!(!Path::new(&lock).exists(), "its lock file was left behind");
    for t in &temp {
        assert!(!t.exists(), "{} was left behind", t.display());
    }
    // Children are gone (reaped by init once their parent is), never zombies.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (pid, cmd) in children.iter().chain(&target) {
        loop {
            match state_of(*pid) {
                None => break,
                Some(s) if Instant::now() > deadline => {
                    panic!("process {pid} ({cmd}) is still there: {s}")
                }
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

//! What the workload tests share: temp dirs, running a workload, reading its log, loop
//! mounts of freshly made filesystems, and the rule for tests the machine cannot run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bw_guest::workload::{self, Config, LogRecord, WorkloadSummary};

pub const BIN: &str = env!("CARGO_BIN_EXE_bw-workload");

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("bw-wl-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn sub(&self, name: &str) -> PathBuf {
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

pub fn config(args: &str) -> Config {
    Config::from_args(args.split_whitespace()).unwrap_or_else(|e| panic!("{args}: {e}"))
}

/// Runs a workload in-process; it must end without errors or a failure.
pub fn run(args: &str) -> WorkloadSummary {
    let summary = workload::run(&config(args), &AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("{args}: {e}"));
    assert_eq!(summary.error_count, 0, "{args}: {:?}", summary.errors);
    assert_eq!(summary.failure, None, "{args}");
    summary
}

pub fn read_log(path: &Path) -> Vec<LogRecord> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// An operation of the log: seq, file, offset, op.
pub type Operation = (u64, Option<String>, u64, String);

/// A log without its times (and LBAs, which depend on where the filesystem put things).
pub fn operations(log: &[LogRecord]) -> Vec<Operation> {
    log.iter()
        .map(|r| (r.seq, r.file.clone(), r.offset, r.op.clone()))
        .collect()
}

/// Every entry under `root`: path, directory or not, size of files, permission bits.
pub fn tree(root: &Path) -> Vec<(String, bool, u64, u32)> {
    use std::os::unix::fs::PermissionsExt;
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

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this is a CI run (CI=true, as CI services set it): there every test must run.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| matches!(v.trim(), "true" | "1"))
}

/// A test that this machine cannot run (not root, no mkfs, no loop devices). Under CI
/// that fails the test, since CI must measure it; elsewhere it is a note on stderr.
pub fn cannot_run(why: &str) {
    assert!(!under_ci(), "CI=true and this test cannot run here: {why}");
    eprintln!("skipped: {why}");
}

pub fn sh(program: &str, args: &[&str]) -> Result<(), String> {
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

/// A filesystem to make for a test.
#[derive(Clone, Copy, Debug)]
pub enum Fs {
    Ext2(u32),
    Ext4(u32),
    Xfs(u32),
}

impl Fs {
    /// The filesystem block size in bytes.
    pub fn block(self) -> u32 {
        match self {
            Fs::Ext2(b) | Fs::Ext4(b) | Fs::Xfs(b) => b,
        }
    }

    /// The smallest image worth making (mkfs.xfs refuses below 300 MiB; the file stays
    /// sparse).
    pub fn min_mib(self) -> u64 {
        match self {
            Fs::Ext2(_) | Fs::Ext4(_) => 16,
            Fs::Xfs(_) => 320,
        }
    }

    fn mkfs(self, image: &str) -> Result<(), String> {
        match self {
            Fs::Ext2(b) => sh("mkfs.ext2", &["-q", "-F", "-b", &b.to_string(), image]),
            Fs::Ext4(b) => sh("mkfs.ext4", &["-q", "-F", "-b", &b.to_string(), image]),
            Fs::Xfs(b) => sh("mkfs.xfs", &["-q", "-f", "-b", &format!("size={b}"), image]),
        }
    }

    fn kernel_type(self) -> &'static str {
        match self {
            Fs::Ext2(_) => "ext2",
            Fs::Ext4(_) => "ext4",
            Fs::Xfs(_) => "xfs",
        }
    }
}

impl std::fmt::Display for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} B blocks)", self.kernel_type(), self.block())
    }
}

/// A filesystem image loop-mounted for the test; unmounted when dropped.
pub struct Mounted {
    _dir: TempDir,
    pub image: PathBuf,
    pub mnt: PathBuf,
    mounted: bool,
}

impl Mounted {
    /// None (see [`cannot_run`]) when the machine cannot do it: not root, no mkfs, no loop.
    pub fn new(fs: Fs, size_mib: u64) -> Option<Mounted> {
        if !is_root() {
            cannot_run("loop mounts need root");
            return None;
        }
        let dir = TempDir::new(fs.kernel_type());
        let image = dir.0.join("disk.img");
        let mnt = dir.sub("mnt");
        fs::File::create(&image)
            .unwrap()
            .set_len(size_mib.max(fs.min_mib()) << 20)
            .unwrap();
        let img = image.to_str().unwrap();
        let mounted = fs.mkfs(img).and_then(|()| {
            sh(
                "mount",
                &[
                    "-t",
                    fs.kernel_type(),
                    "-o",
                    "loop",
                    img,
                    mnt.to_str().unwrap(),
                ],
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
                cannot_run(&format!("cannot make and mount {fs}: {e}"));
                None
            }
        }
    }

    pub fn unmount(&mut self) {
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
pub struct Frozen<'a>(pub &'a Path);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = sh("fsfreeze", &["--unfreeze", self.0.to_str().unwrap()]);
    }
}

//! Nothing left behind: every child process (QEMU, bw-target, bw-disk) and every
//! directory a run makes (its work directory under runs/, the short socket directories
//! under /tmp) is registered here while it lives, so Ctrl-C (or SIGTERM) can kill and
//! remove them before the harness exits; a panic unwinds through their owners' `Drop`.
//!
//! A run's work directory ([`WorkDir`]) has a lock file beside it (`runs/<id>.lock`),
//! flock'ed for the run's lifetime and created before the directory. A process that dies
//! without cleaning up (SIGKILL, a power cut) releases its lock with it, so the next
//! run's [`sweep_stale`] can tell a stale directory from a live one on a shared cache:
//! it removes a directory only when it can take its lock. Directories without a lock
//! file (another tool's, or an older harness's) are never touched.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the interrupt handler must clean up.
struct Registry {
    next: u64,
    /// Process ids; `true` when the process leads its own process group (kill the group).
    children: Vec<(u64, i32, bool)>,
    dirs: Vec<(u64, PathBuf)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 1,
    children: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A child process registered for the interrupt handler; unregisters on drop. The
/// owner still kills and reaps its child itself.
#[derive(Debug)]
pub struct TrackedChild(u64);

impl Drop for TrackedChild {
    fn drop(&mut self) {
        registry().children.retain(|(id, _, _)| *id != self.0);
    }
}

/// Registers child `pid`; `group`: it leads its own process group, killed as a whole.
/// Call [`spawn_tracked`] instead where the spawn and the registration must not be
/// separated by an interrupt.
pub fn track_child(pid: i32, group: bool) -> TrackedChild {
    let mut r = registry();
    let id = r.next;
    r.next += 1;
    r.children.push((id, pid, group));
    TrackedChild(id)
}

/// Spawns `cmd` and registers the child while holding the registry, so an interrupt
/// never misses a child between the two.
pub fn spawn_tracked(
    cmd: &mut std::process::Command,
    group: bool,
) -> io::Result<(std::process::Child, TrackedChild)> {
    let mut r = registry();
    let child = cmd.spawn()?;
    let id = r.next;
    r.next += 1;
    r.children.push((id, child.id() as i32, group));
    Ok((child, TrackedChild(id)))
}

/// A directory registered for the interrupt handler; unregisters on drop (the owner
/// removes the directory itself, e.g. a `tempfile::TempDir`).
#[derive(Debug)]
pub struct TrackedDir(u64);

impl Drop for TrackedDir {
    fn drop(&mut self) {
        registry().dirs.retain(|(id, _)| *id != self.0);
    }
}

/// Registers a directory the interrupt handler must remove.
pub fn track_dir(path: &Path) -> TrackedDir {
    let mut r = registry();
    let id = r.next;
    r.next += 1;
    r.dirs.push((id, path.to_owned()));
    TrackedDir(id)
}

/// A temporary directory (`tempfile`'s) that the interrupt handler also removes.
#[derive(Debug)]
pub struct TempDir {
    // Dropped in order: the registration, then the directory.
    _tracked: TrackedDir,
    dir: tempfile::TempDir,
}

impl TempDir {
    /// `<parent>/<prefix>XXXXXX`.
    pub fn new_in(parent: &Path, prefix: &str) -> io::Result<TempDir> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
        Ok(TempDir {
            _tracked: track_dir(dir.path()),
            dir,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory (no removal on drop; an interrupt still removes it).
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

/// Kills every registered child and removes every registered directory, now. What the
/// interrupt handler does before it exits.
pub fn clean_up_now() {
    let (children, dirs) = {
        let r = registry();
        (r.children.clone(), r.dirs.clone())
    };
    kill_and_remove(&children, &dirs);
}

fn kill_and_remove(children: &[(u64, i32, bool)], dirs: &[(u64, PathBuf)]) {
    for &(_, pid, group) in children {
        // SAFETY: signalling processes (or groups) this harness started.
        unsafe {
            libc::kill(if group { -pid } else { pid }, libc::SIGKILL);
        }
    }
    for (_, dir) in dirs {
        let dir = dir.as_path();
        // A thread of the run may still be writing in it: try a few times.
        for _ in 0..5 {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = std::fs::remove_file(lock_path(dir));
    }
}

/// Makes Ctrl-C and SIGTERM kill every registered child and remove every registered
/// directory, then exit with 130. Call once, from `main`.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        clean_up_now();
        eprintln!("interrupted: guests and helpers stopped, work directories removed");
        std::process::exit(130);
    });
}

/// The lock file of a work directory: beside it, `<dir>.lock`.
fn lock_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    dir.with_file_name(name)
}

/// Takes an exclusive flock on `file` without waiting; false when another process
/// holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A run's work directory under `runs/`: unique, locked while the run lives, removed
/// when dropped (also while unwinding from a panic) unless kept, and by the interrupt
/// handler.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    lock: Option<File>,
    keep: bool,
    _tracked: TrackedDir,
}

impl WorkDir {
    /// Creates `runs/<name>` (or `<name>-2`, `-3`, ... when taken) with its lock.
    pub fn create(runs: &Path, name: &str) -> io::Result<WorkDir> {
        std::fs::create_dir_all(runs)?;
        for n in 1..1000u32 {
            let path = if n == 1 {
                runs.join(name)
            } else {
                runs.join(format!("{name}-{n}"))
            };
            let lock_file = lock_path(&path);
            // The lock first: a directory whose lock file exists is never swept while
            // its lock is held.
            let lock = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock_file)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            if !try_lock(&lock)? {
                continue;
            }
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let _ = std::fs::write(&lock_file, format!("{}\n", std::process::id()));
                    return Ok(WorkDir {
                        _tracked: track_dir(&path),
                        path,
                        lock: Some(lock),
                        keep: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&lock_file);
                    continue;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&lock_file);
                    return Err(e);
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: 999 work directories named {name} exist",
                runs.display()
            ),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's name (the run id).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Keep the directory after the run (`--keep-work`); Ctrl-C still removes it.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
        let _ = std::fs::remove_file(lock_path(&self.path));
        self.lock.take();
    }
}

/// Removes the work directories under `runs` whose owner is gone (their lock can be
/// taken); returns them. Directories whose lock is held, and those without a lock file,
/// are left alone.
pub fn sweep_stale(runs: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(runs) else {
        return removed;
    };
    for entry in entries.flatten() {
        let lock_file = entry.path();
        let Some(name) = lock_file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lock"))
        else {
            continue;
        };
        let dir = runs.join(name);
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&lock_file) else {
            continue;
        };
        let gone = try_lock(&file).unwrap_or(false)
            && (std::fs::remove_dir_all(&dir).is_ok() || !dir.exists());
        if gone {
            let _ = std::fs::remove_file(&lock_file);
            removed.push(dir);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_dir_is_unique_locked_and_removed_when_dropped() {
        let runs = tempfile::tempdir().unwrap();
        let a = WorkDir::create(runs.path(), "s-1").unwrap();
        let b = WorkDir::create(runs.path(), "s-1").unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(b.name(), "s-1-2");
        std::fs::write(a.path().join("disk.raw"), b"x").unwrap();
        // Held locks: the sweep leaves both alone.
        assert!(sweep_stale(runs.path()).is_empty());
        let pa = a.path().to_owned();
        drop(a);
        assert!(!pa.exists());
        assert!(!lock_path(&pa).exists());
        drop(b);
        assert_eq!(std::fs::read_dir(runs.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_panic_inside_a_run_removes_its_work_dir() {
        let runs = tempfile::tempdir().unwrap();
        let seen = std::sync::Mutex::new(PathBuf::new());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let w = WorkDir::create(runs.path(), "p").unwrap();
            std::fs::write(w.path().join("f"), b"x").unwrap();
            *seen.lock().unwrap() = w.path().to_owned();
            panic!("a bug in the run");
        }));
        assert!(result.is_err());
        let path = seen.lock().unwrap().clone();
        assert!(!path.as_os_str().is_empty() && !path.exists());
    }

    #[test]
    fn the_sweep_removes_only_dirs_whose_owner_is_gone() {
        let runs = tempfile::tempdir().unwrap();
        // A run that died: its lock file exists and nobody holds it.
        std::fs::create_dir(runs.path().join("dead")).unwrap();
        std::fs::write(runs.path().join("dead/disk.raw"), b"x").unwrap();
        std::fs::write(runs.path().join("dead.lock"), b"1\n").unwrap();
        // Someone else's directory without a lock file.
        std::fs::create_dir(runs.path().join("foreign")).unwrap();
        // A live run.
        let live = WorkDir::create(runs.path(), "live").unwrap();
        let removed = sweep_stale(runs.path());
        assert_eq!(removed, [runs.path().join("dead")]);
        assert!(!runs.path().join("dead.lock").exists());
        assert!(runs.path().join("foreign").is_dir());
        assert!(live.path().is_dir());
    }

    #[test]
    fn an_interrupt_kills_tracked_children_and_removes_tracked_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // The handler's work on this test's own entries only: the process-wide
        // registry may hold other tests' children.
        kill_and_remove(&[(1, child.id() as i32, false)], &[(2, scratch.clone())]);
        let status = child.wait().unwrap();
        assert!(!status.success(), "sleep was not killed");
        assert!(!scratch.exists());
    }
}

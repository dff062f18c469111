//! The witness disks of one guest: a `bw-disk` backend per disk, started before QEMU
//! (QEMU connects to their sockets), driven over their control sockets, and ended after
//! QEMU so every history is finished. The backend is the `witness-disk` crate; this
//! module only finds its binary, lays out its files and owns the children.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use witness_disk::{Backend, BackendConfig, Schedule};

use crate::qemu::VhostUserDisk;

/// How long a backend may take to open its sockets.
const READY: Duration = Duration::from_secs(20);

/// Why witness disks could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("cannot build bw-disk (cargo build -p witness-disk): {tail}")]
    Build { tail: String },
    #[error("cannot create the socket directory")]
    SocketDir(#[source] std::io::Error),
    #[error("starting the witness disk {id}")]
    Spawn {
        id: String,
        #[source]
        source: witness_disk::spawn::SpawnError,
    },
}

/// The `bw-disk` executable: `BW_DISK` if set, else built from this checkout by cargo
/// (release profile; a no-op when it is up to date), once per process.
pub fn bw_disk_binary() -> Result<PathBuf, WitnessError> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(p) = std::env::var_os("BW_DISK") {
        return Ok(PathBuf::from(p));
    }
    BIN.get_or_init(build_bw_disk)
        .clone()
        .map_err(|tail| WitnessError::Build { tail })
}

fn build_bw_disk() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::paths::project_root())
        .args([
            "build",
            "--release",
            "-p",
            "witness-disk",
            "--bin",
            "bw-disk",
            "--message-format=json-render-diagnostics",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let lines: Vec<&str> = stderr.lines().collect();
        return Err(lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    // The executable's path, from cargo's own artifact message.
    #[derive(serde::Deserialize)]
    struct Artifact {
        reason: String,
        #[serde(default)]
        executable: Option<PathBuf>,
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Artifact>(l).ok())
        .filter(|a| a.reason == "compiler-artifact")
        .find_map(|a| a.executable.filter(|p| p.ends_with("bw-disk")))
        .ok_or_else(|| "cargo built no bw-disk executable".to_string())
}

/// One disk to serve.
#[derive(Clone, Debug)]
pub struct WitnessDiskSpec {
    pub id: String,
    /// The raw image (written in place until the first instant).
    pub image: PathBuf,
    /// What the guest reads in /sys/block/vdX/serial.
    pub serial: String,
}

/// How one backend ended.
#[derive(Clone, Debug)]
pub struct WitnessEnd {
    pub id: String,
    /// True when it exited by itself or on request (its history is finished); false when
    /// it had to be killed (its history reads as cut short).
    pub clean: bool,
    /// Its exit status, when it was reaped.
    pub status: Option<std::process::ExitStatus>,
    pub history: PathBuf,
    pub state_dir: PathBuf,
    pub log_tail: String,
}

impl WitnessEnd {
    /// Why the backend's recording cannot be trusted, if it cannot: it was killed, or
    /// it exited with an error.
    pub fn problem(&self) -> Option<String> {
        match (self.clean, self.status) {
            (false, _) => Some(format!(
                "witness disk {} did not end by itself and was killed; its history is cut short. Log: {}",
                self.id, self.log_tail
            )),
            (true, Some(s)) if !s.success() => Some(format!(
                "witness disk {} exited with {s}. Log: {}",
                self.id, self.log_tail
            )),
            (true, _) => None,
        }
    }
}

/// Running backends, one per disk; killed when dropped.
pub struct WitnessDisks {
    /// Each backend, registered for the interrupt handler while it lives.
    backends: Vec<(String, Backend, crate::cleanup::TrackedChild)>,
    /// Sockets live in a short directory of their own (sun_path is 108 bytes).
    _sockets: crate::cleanup::TempDir,
}

impl WitnessDisks {
    /// Starts a backend per disk. Histories, layers and logs go in `work_dir` as
    /// `<id>.history`, `<id>.state/`, `<id>.log`. Returns the disks to give QEMU.
    pub fn start(
        disks: &[WitnessDiskSpec],
        work_dir: &Path,
        num_queues: u16,
        schedule: Option<Schedule>,
    ) -> Result<(WitnessDisks, Vec<VhostUserDisk>), WitnessError> {
        let bin = bw_disk_binary()?;
        let sockets = crate::cleanup::TempDir::new_in(Path::new("/tmp"), "bw-wd-")
            .map_err(WitnessError::SocketDir)?;
        let mut backends = Vec::new();
        let mut vhost = Vec::new();
        for d in disks {
            let mut cfg = BackendConfig::in_dir(work_dir, &d.id, &d.image, &d.serial);
            cfg.vhost_socket = sockets.path().join(format!("{}.vu", d.id));
            cfg.control_socket = sockets.path().join(format!("{}.ctl", d.id));
            cfg.max_queues = num_queues.max(1);
            cfg.schedule = schedule;
            let backend =
                Backend::spawn(&bin, cfg, READY).map_err(|source| WitnessError::Spawn {
                    id: d.id.clone(),
                    source,
                })?;
            let tracked = crate::cleanup::track_child(backend.pid() as i32, true);
            vhost.push(VhostUserDisk {
                id: d.id.clone(),
                socket: backend.config().vhost_socket.clone(),
                num_queues: num_queues.max(1),
            });
            backends.push((d.id.clone(), backend, tracked));
        }
        Ok((
            WitnessDisks {
                backends,
                _sockets: sockets,
            },
            vhost,
        ))
    }

    /// The backend serving disk `id`.
    pub fn backend(&mut self, id: &str) -> Option<&mut Backend> {
        self.backends
            .iter_mut()
            .find(|(i, _, _)| i == id)
            .map(|(_, b, _)| b)
    }

    /// Backends that have exited, with their status and the tail of their log. While
    /// QEMU runs, none should have.
    pub fn exited(&mut self) -> Vec<(String, std::process::ExitStatus, String)> {
        self.backends
            .iter_mut()
            .filter_map(|(id, b, _)| match b.try_wait() {
                Ok(Some(status)) => Some((id.clone(), status, b.log_tail(5))),
                Ok(None) | Err(_) => None,
            })
            .collect()
    }

    /// Ends every backend (after QEMU has gone they exit by themselves; else they are
    /// asked to, and killed at the deadline).
    pub fn finish(mut self, timeout: Duration) -> Vec<WitnessEnd> {
        self.backends
            .iter_mut()
            .map(|(id, b, _)| {
                let (status, clean) = b.finish(Duration::from_secs(2), timeout);
                WitnessEnd {
                    id: id.clone(),
                    clean,
                    status,
                    history: b.config().history.clone(),
                    state_dir: b.config().state_dir.clone(),
                    log_tail: b.log_tail(5),
                }
            })
            .collect()
    }
}

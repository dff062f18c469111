//! Starting a `bw-disk` backend as a child process and owning it: the command line
//! (a pure function), the wait for its sockets (with a deadline, watching the child),
//! and the guard that kills and reaps it.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Control, ControlError};
use crate::schedule::Schedule;

/// Everything one backend needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// The raw image served (written in place until the first instant).
    pub image: PathBuf,
    /// QEMU connects here (`-chardev socket,path=...`).
    pub vhost_socket: PathBuf,
    pub control_socket: PathBuf,
    pub history: PathBuf,
    /// Layers go here; must be fresh.
    pub state_dir: PathBuf,
    /// What the guest reads as the disk's serial (at most 20 bytes).
    pub serial: String,
    /// Queues offered; QEMU's num-queues may be at most this.
    pub max_queues: u16,
    pub schedule: Option<Schedule>,
    /// The backend gives up (and exits) if QEMU has not connected by then.
    pub connect_timeout: Duration,
    /// The backend's stderr.
    pub log: PathBuf,
}

impl BackendConfig {
    /// A backend for `image` with every file in `dir`: `<name>.vhost.sock`,
    /// `<name>.ctl.sock`, `<name>.history`, `<name>.state/`, `<name>.log`.
    pub fn in_dir(dir: &Path, name: &str, image: &Path, serial: &str) -> BackendConfig {
        BackendConfig {
            image: image.to_path_buf(),
            vhost_socket: dir.join(format!("{name}.vhost.sock")),
            control_socket: dir.join(format!("{name}.ctl.sock")),
            history: dir.join(format!("{name}.history")),
            state_dir: dir.join(format!("{name}.state")),
            serial: serial.to_string(),
            max_queues: 8,
            schedule: None,
            connect_timeout: Duration::from_secs(60),
            log: dir.join(format!("{name}.log")),
        }
    }

    /// `bw-disk serve ...` arguments (without the program).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["serve".into()];
        let mut kv = |k: &str, v: OsString| {
            a.push(k.into());
            a.push(v);
        };
        kv("--image", self.image.clone().into());
        kv("--socket", self.vhost_socket.clone().into());
        kv("--control", self.control_socket.clone().into());
        kv("--history", self.history.clone().into());
        kv("--state-dir", self.state_dir.clone().into());
        kv("--serial", self.serial.clone().into());
        kv("--max-queues", self.max_queues.to_string().into());
        kv(
            "--connect-timeout-ms",
            self.connect_timeout.as_millis().to_string().into(),
        );
        if let Some(s) = self.schedule {
            kv("--schedule-seed", s.seed.to_string().into());
            kv("--schedule-max-delay-us", s.max_delay_us.to_string().into());
        }
        a
    }
}

/// Why a backend could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {bin}")]
    Start {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the backend's log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bw-disk exited at start ({status}): {log}")]
    EarlyExit { status: ExitStatus, log: String },
    #[error("bw-disk did not open {socket} within {timeout:?}: {log}")]
    NoSocket {
        socket: PathBuf,
        timeout: Duration,
        log: String,
    },
    #[error("waiting for bw-disk")]
    Wait(#[source] std::io::Error),
}

/// A running backend; killed and reaped when dropped.
pub struct Backend {
    child: Child,
    exited: Option<ExitStatus>,
    config: BackendConfig,
}

/// The last `n` lines of a file, for errors.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Backend {
    /// Starts `bin serve ...` and waits until its vhost-user and control sockets exist.
    pub fn spawn(
        bin: &Path,
        config: BackendConfig,
        ready: Duration,
    ) -> Result<Backend, SpawnError> {
        for p in [&config.vhost_socket, &config.control_socket] {
            let _ = std::fs::remove_file(p);
        }
        let log = File::create(&config.log).map_err(|source| SpawnError::Log {
            path: config.log.clone(),
            source,
        })?;
        let mut cmd = Command::new(bin);
        cmd.args(config.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("BW_DISK_LOG").unwrap_or("info".into()),
            )
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only sets this child's death signal, so
        // a harness that dies takes its backends along.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SpawnError::Start {
            bin: bin.to_path_buf(),
            source,
        })?;
        let mut backend = Backend {
            child,
            exited: None,
            config,
        };
        let start = Instant::now();
        for socket in [
            backend.config.control_socket.clone(),
            backend.config.vhost_socket.clone(),
        ] {
            while !socket.exists() {
                if let Some(status) = backend.try_wait().map_err(SpawnError::Wait)? {
                    return Err(SpawnError::EarlyExit {
                        status,
                        log: tail(&backend.config.log, 10),
                    });
                }
                if start.elapsed() > ready {
                    return Err(SpawnError::NoSocket {
                        socket,
                        timeout: ready,
                        log: tail(&backend.config.log, 10),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(backend)
    }

    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A control connection whose calls each have `timeout`.
    pub fn control(&self, timeout: Duration) -> Result<Control, ControlError> {
        Control::connect(&self.config.control_socket, timeout)
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// The last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.config.log, n)
    }

    /// Ends the backend cleanly: waits `grace` for it to exit by itself (it does when
    /// QEMU has gone), else asks it to shut down, and kills it if it is still there at
    /// `timeout`. Returns its exit status and whether it ended by itself (only then is
    /// its history finished).
    pub fn finish(&mut self, grace: Duration, timeout: Duration) -> (Option<ExitStatus>, bool) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.try_wait() {
                return (Some(s), true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Ok(mut c) = self.control(timeout) {
            let _ = c.shutdown();
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.try_wait() {
                return (Some(s), true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        (self.exited, false)
    }

    /// Kills it now (its history then reads as cut short).
    pub fn kill(&mut self) {
        if self.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling the process group we created.
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
        for p in [&self.config.vhost_socket, &self.config.control_socket] {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_names_every_file() {
        let mut c = BackendConfig::in_dir(Path::new("/r"), "d0", Path::new("/r/d0.raw"), "bw-d0");
        c.schedule = Some(Schedule {
            seed: 5,
            max_delay_us: 200,
        });
        let line = c
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            line,
            "serve --image /r/d0.raw --socket /r/d0.vhost.sock --control /r/d0.ctl.sock \
             --history /r/d0.history --state-dir /r/d0.state --serial bw-d0 --max-queues 8 \
             --connect-timeout-ms 60000 --schedule-seed 5 --schedule-max-delay-us 200"
        );
    }
}

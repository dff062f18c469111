//! The host end of the control protocol (`bw_guest::control`): waits for the guest's
//! ready message, sends requests, and matches responses to them by id.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bw_guest::control::{Finished, GuestMessage, Op, Ready, Reply, Request};

/// What went wrong talking to the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("control channel I/O")]
    Io(#[from] std::io::Error),
    #[error("the guest did not report ready within {0:?}")]
    NotReady(Duration),
    #[error("the control channel closed (the guest or QEMU went away) during {0}")]
    Closed(String),
    #[error("no answer to {op} within {timeout:?}")]
    Timeout { op: String, timeout: Duration },
    #[error("the guest refused {op}: {message}")]
    Refused { op: String, message: String },
    #[error("unexpected answer to {op}: {reply:?}")]
    Unexpected { op: String, reply: Box<Reply> },
    #[error("`{command}` failed in the guest: {how}")]
    Failed { command: String, how: String },
}

type Pending = Arc<Mutex<HashMap<u64, Sender<GuestMessage>>>>;

/// A connected control channel.
pub struct Guest {
    stream: UnixStream,
    pending: Pending,
    ready_rx: Receiver<Ready>,
    closed: Arc<AtomicBool>,
    next_id: u64,
}

/// Slack added to an op's own timeout for the answer to travel back.
const MARGIN: Duration = Duration::from_secs(10);

impl Guest {
    /// Starts reading the channel. Connect before the guest boots so nothing is lost.
    pub fn attach(stream: UnixStream) -> Result<Guest, GuestError> {
        let reader = stream.try_clone()?;
        let pending: Pending = Arc::default();
        let closed: Arc<AtomicBool> = Arc::default();
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let pending = pending.clone();
            let closed = closed.clone();
            std::thread::Builder::new()
                .name("guest-control".into())
                .spawn(move || {
                    for line in BufReader::new(reader).lines() {
                        let Ok(line) = line else { break };
                        match serde_json::from_str::<GuestMessage>(&line) {
                            Ok(GuestMessage::Ready(r)) => {
                                let _ = ready_tx.send(r);
                            }
                            Ok(msg @ GuestMessage::Response { id, .. }) => {
                                if let Some(tx) = pending.lock().unwrap().remove(&id) {
                                    let _ = tx.send(msg);
                                }
                            }
                            // Not ours (e.g. noise before the guest opened the port).
                            Err(_) => {}
                        }
                    }
                    closed.store(true, Ordering::SeqCst);
                    pending.lock().unwrap().clear();
                })?;
        }
        Ok(Guest {
            stream,
            pending,
            ready_rx,
            closed,
            next_id: 0,
        })
    }

    /// Waits for the ready message. `alive` is asked regularly so a dead QEMU ends the
    /// wait at once instead of at the deadline.
    pub fn wait_ready(
        &self,
        timeout: Duration,
        alive: impl Fn() -> bool,
    ) -> Result<Ready, GuestError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ready) => return Ok(ready),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(GuestError::Closed("boot".into()))
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !alive() || self.closed.load(Ordering::SeqCst) {
                        return Err(GuestError::Closed("boot".into()));
                    }
                    if Instant::now() >= deadline {
                        return Err(GuestError::NotReady(timeout));
                    }
                }
            }
        }
    }

    /// Sends one request and waits for its answer.
    pub fn request(&mut self, op: Op, timeout: Duration) -> Result<Reply, GuestError> {
        let name = op_name(&op);
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = mpsc::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut line = serde_json::to_string(&Request { id, op }).expect("requests serialize");
        line.push('\n');
        if let Err(e) = self.stream.write_all(line.as_bytes()) {
            self.pending.lock().unwrap().remove(&id);
            return Err(e.into());
        }
        let total = timeout + MARGIN;
        match rx.recv_timeout(total) {
            Ok(GuestMessage::Response {
                ok: Some(reply), ..
            }) => Ok(reply),
            Ok(GuestMessage::Response { err, .. }) => Err(GuestError::Refused {
                op: name,
                message: err.unwrap_or_else(|| "no reason given".into()),
            }),
            Ok(GuestMessage::Ready(_)) => unreachable!("ready messages are not routed by id"),
            Err(RecvTimeoutError::Timeout) => {
                self.pending.lock().unwrap().remove(&id);
                Err(GuestError::Timeout {
                    op: name,
                    timeout: total,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(GuestError::Closed(name)),
        }
    }

    /// Runs a program to completion (or its timeout) and returns how it ended.
    pub fn exec(&mut self, argv: &[&str], timeout: Duration) -> Result<Finished, GuestError> {
        let op = Op::Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Default::default(),
            stdin: None,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.request(op, timeout)? {
            Reply::Finished(f) => Ok(f),
            other => Err(unexpected("exec", other)),
        }
    }

    /// Runs a program with extra environment variables (and optional stdin) to
    /// completion or its timeout.
    pub fn exec_env(
        &mut self,
        argv: &[&str],
        env: &std::collections::BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Finished, GuestError> {
        let op = Op::Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env.clone(),
            stdin: None,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.request(op, timeout)? {
            Reply::Finished(f) => Ok(f),
            other => Err(unexpected("exec", other)),
        }
    }

    /// Starts a program with extra environment variables in the background.
    pub fn spawn_env(
        &mut self,
        argv: &[&str],
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<u64, GuestError> {
        let op = Op::Spawn {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env.clone(),
        };
        match self.request(op, Duration::from_secs(10))? {
            Reply::Spawned { handle, .. } => Ok(handle),
            other => Err(unexpected("spawn", other)),
        }
    }

    /// Runs a program and fails unless it exits 0; returns its stdout.
    pub fn check(&mut self, argv: &[&str], timeout: Duration) -> Result<String, GuestError> {
        let done = self.exec(argv, timeout)?;
        if done.success() {
            Ok(done.stdout)
        } else {
            Err(GuestError::Failed {
                command: argv.join(" "),
                how: done.describe(),
            })
        }
    }

    /// Runs a busybox shell script and fails unless it exits 0; returns its stdout.
    pub fn sh(&mut self, script: &str, timeout: Duration) -> Result<String, GuestError> {
        let done = self.exec(&["/bin/sh", "-c", script], timeout)?;
        if done.success() {
            Ok(done.stdout)
        } else {
            Err(GuestError::Failed {
                command: script.to_string(),
                how: done.describe(),
            })
        }
    }

    /// Starts a program in the background; returns its handle.
    pub fn spawn(&mut self, argv: &[&str]) -> Result<u64, GuestError> {
        let op = Op::Spawn {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Default::default(),
        };
        match self.request(op, Duration::from_secs(10))? {
            Reply::Spawned { handle, .. } => Ok(handle),
            other => Err(unexpected("spawn", other)),
        }
    }

    /// Waits for a spawned program; None if it is still running at the timeout.
    pub fn wait(&mut self, handle: u64, timeout: Duration) -> Result<Option<Finished>, GuestError> {
        let op = Op::Wait {
            handle,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.request(op, timeout)? {
            Reply::Finished(f) => Ok(Some(f)),
            Reply::Running => Ok(None),
            other => Err(unexpected("wait", other)),
        }
    }

    /// Signals a spawned program.
    pub fn kill(&mut self, handle: u64, signal: i32) -> Result<(), GuestError> {
        self.done(Op::Kill { handle, signal }, "kill")
    }

    /// Loads a kernel module that is in the guest's filesystem.
    pub fn insmod(&mut self, path: &str, params: &str) -> Result<(), GuestError> {
        self.done(
            Op::Insmod {
                path: path.into(),
                params: params.into(),
            },
            "insmod",
        )
    }

    /// Reads a guest file (at most `max` bytes).
    pub fn read_file(&mut self, path: &str, max: u64) -> Result<String, GuestError> {
        match self.request(
            Op::ReadFile {
                path: path.into(),
                max,
            },
            Duration::from_secs(30),
        )? {
            Reply::Data { data, .. } => Ok(data),
            other => Err(unexpected("read-file", other)),
        }
    }

    /// Writes a guest file.
    pub fn write_file(&mut self, path: &str, data: &str) -> Result<(), GuestError> {
        self.done(
            Op::WriteFile {
                path: path.into(),
                data: data.into(),
            },
            "write-file",
        )
    }

    /// Asks the guest to unmount, sync and power off (or reboot).
    pub fn shutdown(&mut self, reboot: bool) -> Result<(), GuestError> {
        self.done(Op::Shutdown { reboot }, "shutdown")
    }

    fn done(&mut self, op: Op, name: &str) -> Result<(), GuestError> {
        match self.request(op, Duration::from_secs(30))? {
            Reply::Done => Ok(()),
            other => Err(unexpected(name, other)),
        }
    }
}

fn unexpected(op: &str, reply: Reply) -> GuestError {
    GuestError::Unexpected {
        op: op.into(),
        reply: Box::new(reply),
    }
}

fn op_name(op: &Op) -> String {
    match op {
        Op::Exec { argv, .. } => format!("exec `{}`", argv.join(" ")),
        Op::Spawn { argv, .. } => format!("spawn `{}`", argv.join(" ")),
        Op::Ping => "ping".into(),
        Op::Wait { handle, .. } => format!("wait {handle}"),
        Op::Kill { handle, .. } => format!("kill {handle}"),
        Op::Insmod { path, .. } => format!("insmod {path}"),
        Op::ReadFile { path, .. } => format!("read {path}"),
        Op::WriteFile { path, .. } => format!("write {path}"),
        Op::Shutdown { .. } => "shutdown".into(),
    }
}

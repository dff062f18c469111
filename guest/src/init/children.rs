//! Child processes of PID 1: spawning with captured output, waiting with deadlines,
//! and reaping everything else.
//!
//! As PID 1, bw-init inherits every orphan in the guest, so one reaper thread owns
//! `waitpid(-1)`; threads that wait for their own child learn its status from the reaper.
//! A child stuck in uninterruptible sleep (a hung disk) cannot be killed: its waiter gives
//! up at the deadline and the child is left behind, never waited on forever.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::control::Finished;

/// Most output kept per stream; beyond it the oldest bytes are dropped.
const OUTPUT_CAP: usize = 32 << 20;

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Signaled(i32),
}

#[derive(Default)]
struct Table {
    watched: HashSet<u32>,
    exited: HashMap<u32, Status>,
}

/// The registry shared by the reaper and the waiters.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<(Mutex<Table>, Condvar)>,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> Reaper {
        let reaper = Reaper::default();
        let r = reaper.clone();
        thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.reap_forever())
            .expect("spawning the reaper thread");
        reaper
    }

    fn reap_forever(&self) {
        loop {
            let mut raw = 0;
            // SAFETY: plain waitpid on any child; `raw` is a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut raw, 0) };
            if pid <= 0 {
                // No children at all (ECHILD) or interrupted: look again shortly.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
            let status = if libc::WIFEXITED(raw) {
                Status::Exited(libc::WEXITSTATUS(raw))
            } else {
                Status::Signaled(libc::WTERMSIG(raw))
            };
            let (lock, cvar) = &*self.inner;
            let mut table = lock.lock().unwrap();
            if table.watched.remove(&(pid as u32)) {
                table.exited.insert(pid as u32, status);
                cvar.notify_all();
            }
        }
    }

    /// Waits for a watched child until `deadline`; None if it is still running then.
    pub fn wait(&self, pid: u32, deadline: Instant) -> Option<Status> {
        let (lock, cvar) = &*self.inner;
        let mut table = lock.lock().unwrap();
        loop {
            if let Some(status) = table.exited.remove(&pid) {
                return Some(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            table = cvar.wait_timeout(table, deadline - now).unwrap().0;
        }
    }
}

/// A captured output stream, filled by a reader thread.
#[derive(Clone, Default)]
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Capture {
    fn start(mut src: impl Read + Send + 'static) -> Capture {
        let cap = Capture::default();
        let c = cap.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 16384];
            while let Ok(n) = src.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut buf = c.buf.lock().unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > OUTPUT_CAP {
                    let excess = buf.len() - OUTPUT_CAP;
                    buf.drain(..excess);
                }
            }
            let (lock, cvar) = &*c.done;
            *lock.lock().unwrap() = true;
            cvar.notify_all();
        });
        cap
    }

    /// The output so far, after waiting (bounded) for the stream to end: a grandchild
    /// that keeps the pipe open must not hold up the answer.
    fn take(&self, grace: Duration) -> String {
        let (lock, cvar) = &*self.done;
        let done = lock.lock().unwrap();
        let _ = cvar.wait_timeout_while(done, grace, |d| !*d).unwrap();
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

/// A running child with captured output.
pub struct Proc {
    pub pid: u32,
    started: Instant,
    stdout: Capture,
    stderr: Capture,
}

impl Proc {
    /// Spawns `argv` in its own process group (so a kill reaches its descendants) and
    /// registers it with the reaper before the reaper can see it exit.
    pub fn spawn(
        reaper: &Reaper,
        argv: &[String],
        env: &std::collections::BTreeMap<String, String>,
        stdin: Option<String>,
    ) -> std::io::Result<Proc> {
        let Some((prog, args)) = argv.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty argv",
            ));
        };
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .envs(env)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let (lock, _) = &*reaper.inner;
        let mut table = lock.lock().unwrap();
        let mut child = cmd.spawn()?;
        let pid = child.id();
        table.watched.insert(pid);
        drop(table);
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
        }
        let stdout = Capture::start(child.stdout.take().expect("piped stdout"));
        let stderr = Capture::start(child.stderr.take().expect("piped stderr"));
        // The reaper owns waiting; dropping `child` does not wait or kill.
        drop(child);
        Ok(Proc {
            pid,
            started: Instant::now(),
            stdout,
            stderr,
        })
    }

    /// Sends `signal` to the child's whole process group.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill on our own child's process group id.
        unsafe {
            libc::kill(-(self.pid as i32), signal);
        }
    }

    /// Waits until `deadline`; None while the child is still running.
    pub fn wait(&self, reaper: &Reaper, deadline: Instant) -> Option<Finished> {
        let status = reaper.wait(self.pid, deadline)?;
        Some(self.finished(Some(status), false))
    }

    /// Waits up to `timeout`; on expiry kills the process group and waits a little for
    /// it to die. A child that does not die (uninterruptible sleep) is abandoned.
    pub fn wait_or_kill(&self, reaper: &Reaper, timeout: Duration) -> Finished {
        if let Some(done) = self.wait(reaper, Instant::now() + timeout) {
            return done;
        }
        self.signal(libc::SIGKILL);
        let status = reaper.wait(self.pid, Instant::now() + Duration::from_secs(2));
        self.finished(status, true)
    }

    fn finished(&self, status: Option<Status>, timed_out: bool) -> Finished {
        let grace = Duration::from_millis(if timed_out { 200 } else { 1000 });
        Finished {
            exit_code: match status {
                Some(Status::Exited(code)) => Some(code),
                _ => None,
            },
            signal: match status {
                Some(Status::Signaled(sig)) => Some(sig),
                _ => None,
            },
            timed_out,
            stdout: self.stdout.take(grace),
            stderr: self.stderr.take(grace),
            duration_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

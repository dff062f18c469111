//! Serving the control protocol: one thread reads requests, one thread per request
//! answers, and answers are written whole lines under one lock.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::children::{Proc, Reaper};
use super::{power_off, say};
use crate::control::{Finished, GuestMessage, Op, Ready, Reply, Request, MAX_LINE};
use crate::error_chain;

enum Handle {
    Running(Arc<Proc>),
    Finished(Finished),
}

struct Server {
    out: Mutex<File>,
    reaper: Reaper,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: Mutex<u64>,
}

impl Server {
    fn send(&self, msg: &GuestMessage) {
        let mut line = serde_json::to_string(msg).expect("guest messages always serialize");
        line.push('\n');
        let mut out = self.out.lock().unwrap();
        if let Err(err) = out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
            say!("control port write: {err}");
        }
    }

    fn handle(&self, op: Op) -> Result<Reply, String> {
        match op {
            Op::Ping => Ok(Reply::Pong),
            Op::Exec {
                argv,
                env,
                stdin,
                timeout_ms,
            } => {
                let proc = Proc::spawn(&self.reaper, &argv, &env, stdin)
                    .map_err(|e| format!("spawn {}: {e}", argv.join(" ")))?;
                Ok(Reply::Finished(proc.wait_or_kill(
                    &self.reaper,
                    Duration::from_millis(timeout_ms),
                )))
            }
            Op::Spawn { argv, env } => {
                let proc = Proc::spawn(&self.reaper, &argv, &env, None)
                    .map_err(|e| format!("spawn {}: {e}", argv.join(" ")))?;
                let pid = proc.pid;
                let mut next = self.next_handle.lock().unwrap();
                *next += 1;
                let handle = *next;
                self.handles
                    .lock()
                    .unwrap()
                    .insert(handle, Handle::Running(Arc::new(proc)));
                Ok(Reply::Spawned { handle, pid })
            }
            Op::Wait { handle, timeout_ms } => {
                let proc = match self.handles.lock().unwrap().get(&handle) {
                    None => return Err(format!("no spawned program with handle {handle}")),
                    Some(Handle::Finished(done)) => return Ok(Reply::Finished(done.clone())),
                    Some(Handle::Running(proc)) => proc.clone(),
                };
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                match proc.wait(&self.reaper, deadline) {
                    None => Ok(Reply::Running),
                    Some(done) => {
                        self.handles
                            .lock()
                            .unwrap()
                            .insert(handle, Handle::Finished(done.clone()));
                        Ok(Reply::Finished(done))
                    }
                }
            }
            Op::Kill { handle, signal } => match self.handles.lock().unwrap().get(&handle) {
                None => Err(format!("no spawned program with handle {handle}")),
                Some(Handle::Finished(_)) => Ok(Reply::Done),
                Some(Handle::Running(proc)) => {
                    proc.signal(signal);
                    Ok(Reply::Done)
                }
            },
            Op::Insmod { path, params } => super::modules::insmod(Path::new(&path), &params)
                .map(|()| Reply::Done)
                .map_err(|e| error_chain(&e)),
            Op::ReadFile { path, max } => {
                let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
                let mut data = Vec::new();
                file.take(max.saturating_add(1))
                    .read_to_end(&mut data)
                    .map_err(|e| format!("read {path}: {e}"))?;
                let truncated = data.len() as u64 > max;
                data.truncate(max as usize);
                Ok(Reply::Data {
                    data: String::from_utf8_lossy(&data).into_owned(),
                    truncated,
                })
            }
            Op::WriteFile { path, data } => std::fs::write(&path, data)
                .map(|()| Reply::Done)
                .map_err(|e| format!("write {path}: {e}")),
            Op::Shutdown { reboot } => {
                thread::spawn(move || {
                    // Let the answer reach the host before the machine goes away.
                    thread::sleep(Duration::from_millis(200));
                    unmount_all();
                    power_off(reboot);
                });
                Ok(Reply::Done)
            }
        }
    }
}

/// Unmounts real filesystems, innermost first, so disks are clean for a second boot.
fn unmount_all() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let virtual_fs = [
        "proc", "sysfs", "devtmpfs", "tmpfs", "debugfs", "rootfs", "ramfs", "devpts", "tracefs",
    ];
    let targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, target, fstype) = (f.next()?, f.next()?, f.next()?);
            (!virtual_fs.contains(&fstype)).then_some(target)
        })
        .collect();
    for target in targets.iter().rev() {
        let Ok(c) = std::ffi::CString::new(*target) else {
            continue;
        };
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount(c.as_ptr()) } != 0 {
            say!(
                "umount {target}: {}; syncing and leaving it",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn open_port(path: &Path) -> File {
    loop {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => return f,
            Err(err) => {
                say!("open {}: {err}; retrying", path.display());
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Serves requests forever (the process ends by power-off).
pub fn serve(port: &Path, ready: Ready) -> ! {
    let file = open_port(port);
    let out = file.try_clone().expect("duplicating the port descriptor");
    let server = Arc::new(Server {
        out: Mutex::new(out),
        reaper: Reaper::start(),
        handles: Mutex::new(HashMap::new()),
        next_handle: Mutex::new(0),
    });
    server.send(&GuestMessage::Ready(ready));
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => {
                // The host end is not connected: nothing to read until it is.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(_) => {}
            Err(err) => {
                say!("control port read: {err}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(err) => {
                // Answer with the id if there is one, so the host does not wait forever.
                let id = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("id")?.as_u64());
                say!("bad request: {err}");
                if let Some(id) = id {
                    server.send(&GuestMessage::Response {
                        id,
                        ok: None,
                        err: Some(format!("bad request: {err}")),
                    });
                }
                continue;
            }
        };
        let server = server.clone();
        thread::spawn(move || {
            let (ok, err) = match server.handle(request.op) {
                Ok(reply) => (Some(reply), None),
                Err(e) => (None, Some(e)),
            };
            server.send(&GuestMessage::Response {
                id: request.id,
                ok,
                err,
            });
        });
    }
}

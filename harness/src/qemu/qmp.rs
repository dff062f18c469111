//! A small QMP client, private to the QEMU module: greeting, capabilities negotiation,
//! commands with ids, and a deadline on every wait.
//!
//! A reader thread owns the socket's read side and hands each reply to the slot of its
//! id; asynchronous events are set aside (nothing here waits for one), so a burst of
//! events can never be mistaken for the answer to a command.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// What went wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket I/O")]
    Io(#[from] std::io::Error),
    #[error("no QMP greeting within {0:?}")]
    NoGreeting(Duration),
    #[error("QMP command {command} got no reply within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("QMP connection closed (QEMU exited?) while waiting for {0}")]
    Closed(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

type Pending = Arc<Mutex<HashMap<u64, Sender<Value>>>>;

/// A connected, negotiated QMP session.
pub struct Qmp {
    stream: UnixStream,
    pending: Pending,
    greeting: Receiver<Value>,
    next_id: u64,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, reads the greeting and enters command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let reader = stream.try_clone()?;
        let pending: Pending = Arc::default();
        let (greet_tx, greeting) = mpsc::channel();
        {
            let pending = pending.clone();
            std::thread::Builder::new()
                .name("qmp-reader".into())
                .spawn(move || read_loop(reader, pending, greet_tx))?;
        }
        let mut qmp = Qmp {
            stream,
            pending,
            greeting,
            next_id: 0,
        };
        match qmp.greeting.recv_timeout(timeout) {
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return Err(QmpError::NoGreeting(timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(QmpError::Closed("the greeting".into()))
            }
        }
        qmp.execute("qmp_capabilities", json!({}), timeout)?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = mpsc::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({ "execute": command, "id": id });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        if let Err(err) = self.stream.write_all(line.as_bytes()) {
            self.pending.lock().unwrap().remove(&id);
            return Err(err.into());
        }
        let reply = match rx.recv_timeout(timeout) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(QmpError::Timeout {
                    command: command.to_string(),
                    timeout,
                });
            }
            Err(RecvTimeoutError::Disconnected) => return Err(QmpError::Closed(command.into())),
        };
        if let Some(err) = reply.get("error") {
            return Err(QmpError::Command {
                command: command.to_string(),
                class: err["class"].as_str().unwrap_or("?").to_string(),
                desc: err["desc"].as_str().unwrap_or("?").to_string(),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Runs an HMP command through QMP (`human-monitor-command`), e.g. `qemu-io`.
    pub fn hmp(&mut self, command_line: &str, timeout: Duration) -> Result<String, QmpError> {
        let out = self.execute(
            "human-monitor-command",
            json!({ "command-line": command_line }),
            timeout,
        )?;
        Ok(out.as_str().unwrap_or_default().to_string())
    }
}

fn read_loop(stream: UnixStream, pending: Pending, greeting: Sender<Value>) {
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg.get("QMP").is_some() {
            let _ = greeting.send(msg);
        } else if msg.get("event").is_some() {
            // An event, not a reply: set aside.
        } else if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            if let Some(tx) = pending.lock().unwrap().remove(&id) {
                let _ = tx.send(msg);
            }
        }
    }
    // Dropping the senders wakes every waiter with Disconnected.
    pending.lock().unwrap().clear();
}

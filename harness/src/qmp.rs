//! A small QMP client: greeting, capabilities negotiation, commands with ids, events kept
//! apart from replies, and a deadline on every wait.
//!
//! A reader thread owns the socket's read side and sorts each message into the reply
//! slot of its id or the event list, so a burst of events can never be mistaken for the
//! answer to a command.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A QMP event as QEMU sent it.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, Sender<Value>>>>;

/// A connected, negotiated QMP session.
pub struct Qmp {
    stream: UnixStream,
    pending: Pending,
    events: Arc<Mutex<Vec<Event>>>,
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
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let (greet_tx, greeting) = mpsc::channel();
        {
            let pending = pending.clone();
            let events = events.clone();
            std::thread::Builder::new()
                .name("qmp-reader".into())
                .spawn(move || read_loop(reader, pending, events, greet_tx))?;
        }
        let mut qmp = Qmp {
            stream,
            pending,
            events,
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

    /// Events received so far (and forgets them).
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Waits for an event called `name`, keeping the others.
    pub fn wait_event(&self, name: &str, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut events = self.events.lock().unwrap();
                if let Some(at) = events.iter().position(|e| e.name == name) {
                    return Some(events.remove(at));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_loop(
    stream: UnixStream,
    pending: Pending,
    events: Arc<Mutex<Vec<Event>>>,
    greeting: Sender<Value>,
) {
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg.get("QMP").is_some() {
            let _ = greeting.send(msg);
        } else if let Some(name) = msg.get("event").and_then(Value::as_str) {
            events.lock().unwrap().push(Event {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            });
        } else if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            if let Some(tx) = pending.lock().unwrap().remove(&id) {
                let _ = tx.send(msg);
            }
        }
    }
    // Dropping the senders wakes every waiter with Disconnected.
    pending.lock().unwrap().clear();
}

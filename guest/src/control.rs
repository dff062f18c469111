//! The control protocol between the harness (host) and `bw-init` (guest PID 1).
//!
//! JSON, one object per line, over the `bw.control` virtio-serial port. The guest speaks
//! first with [`GuestMessage::Ready`]; after that every [`Request`] gets exactly one
//! [`GuestMessage::Response`] carrying its id. Responses may come out of order: bw-init
//! serves requests concurrently, so a long `exec` does not hold up a `ping`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Name of the virtio-serial port the control protocol runs on.
pub const PORT_NAME: &str = "bw.control";

/// Longest line either side accepts; a longer one is a protocol error, not an allocation.
pub const MAX_LINE: usize = 64 << 20;

/// A request from the host, with the id its response will carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// What the host asks of the guest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Op {
    /// Answered at once; proves the guest is serving.
    Ping,
    /// Run a program to completion. On timeout the child is killed (SIGKILL) and the
    /// response says so; a child stuck in uninterruptible sleep is abandoned, not waited.
    Exec {
        argv: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        stdin: Option<String>,
        timeout_ms: u64,
    },
    /// Start a program in the background; its output is kept for `wait`.
    Spawn {
        argv: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Wait for a spawned program. A timeout answers `running` and leaves it running.
    Wait { handle: u64, timeout_ms: u64 },
    /// Send a signal to a spawned program.
    Kill { handle: u64, signal: i32 },
    /// Load a kernel module from a path in the guest, with parameters.
    Insmod {
        path: String,
        #[serde(default)]
        params: String,
    },
    /// Read a file (at most `max` bytes), e.g. /sys or /proc entries, logs.
    ReadFile { path: String, max: u64 },
    /// Write (create or truncate) a file, e.g. a module parameter under /sys.
    WriteFile { path: String, data: String },
    /// Sync, then power off (or reboot). Answered before the guest goes down.
    Shutdown {
        #[serde(default)]
        reboot: bool,
    },
}

/// Everything the guest sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum GuestMessage {
    /// bw-init is up: filesystems mounted, boot modules loaded.
    Ready(Ready),
    /// The answer to request `id`: exactly one of `ok` and `err` is set.
    Response {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Reply>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        err: Option<String>,
    },
}

/// Sent once, when the guest is ready for requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// `uname -r` of the guest kernel.
    pub kernel: String,
    /// Guest uptime when ready.
    pub uptime_ms: u64,
    /// Modules loaded at boot, in load order.
    pub modules: Vec<String>,
    /// Boot modules that failed to load, with the reason; the harness treats any as an
    /// infrastructure error.
    #[serde(default)]
    pub module_errors: Vec<String>,
}

/// A successful answer; which variant depends on the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reply {
    Pong,
    /// The outcome of `exec`, or of `wait` on a finished program.
    Finished(Finished),
    /// `spawn` started the program.
    Spawned {
        handle: u64,
        pid: u32,
    },
    /// `wait` timed out: the program is still running.
    Running,
    /// `read-file`.
    Data {
        data: String,
        truncated: bool,
    },
    /// `kill`, `insmod`, `write-file`, `shutdown`.
    Done,
}

/// How a program ended, and what it printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// Exit status, when it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended it, when one did.
    pub signal: Option<i32>,
    /// The timeout expired and the program was killed (or abandoned, if unkillable).
    #[serde(default)]
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
}

impl Finished {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// One line for an error message: how it ended plus the end of its stderr.
    pub fn describe(&self) -> String {
        let how = match (self.timed_out, self.exit_code, self.signal) {
            (true, _, _) => format!("timed out after {} ms", self.duration_ms),
            (false, Some(code), _) => format!("exit status {code}"),
            (false, None, Some(sig)) => format!("killed by signal {sig}"),
            (false, None, None) => "ended without status".to_string(),
        };
        let tail = tail_lines(&self.stderr, 5);
        if tail.is_empty() {
            how
        } else {
            format!("{how}: {tail}")
        }
    }
}

/// The last `n` non-empty lines of `text`, joined with " | ".
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form() {
        let req = Request {
            id: 7,
            op: Op::Exec {
                argv: vec!["/bin/true".into()],
                env: BTreeMap::new(),
                stdin: None,
                timeout_ms: 1000,
            },
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            r#"{"id":7,"op":"exec","argv":["/bin/true"],"env":{},"stdin":null,"timeout_ms":1000}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
    }

    #[test]
    fn response_wire_form() {
        let msg = GuestMessage::Response {
            id: 3,
            ok: None,
            err: Some("no such file".into()),
        };
        let line = serde_json::to_string(&msg).unwrap();
        assert_eq!(line, r#"{"type":"response","id":3,"err":"no such file"}"#);
        assert_eq!(serde_json::from_str::<GuestMessage>(&line).unwrap(), msg);
    }

    #[test]
    fn unknown_fields_in_an_op_are_refused() {
        let bad = r#"{"id":1,"op":"wait","handle":1,"timeout_ms":5,"extra":1}"#;
        assert!(serde_json::from_str::<Request>(bad).is_err());
    }

    #[test]
    fn describe_names_the_ending() {
        let f = Finished {
            exit_code: Some(2),
            signal: None,
            timed_out: false,
            stdout: String::new(),
            stderr: "a\n\nmount: bad superblock\n".into(),
            duration_ms: 5,
        };
        assert_eq!(f.describe(), "exit status 2: a | mount: bad superblock");
        assert!(!f.success());
    }
}

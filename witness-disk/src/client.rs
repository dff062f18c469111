//! The control socket's client side: typed calls, each with a deadline.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine::{InstantReply, Stats};
use crate::faults::FaultSpec;
use crate::protocol::{
    ArmReply, ControlOp, ControlRequest, ControlResponse, PingReply, ReleaseReply, Reply,
    ShutdownReply,
};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control {op}: no answer within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("control {op}: the backend closed the connection")]
    Closed { op: &'static str },
    #[error("control {op}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("control {op} refused: {message}")]
    Refused { op: &'static str, message: String },
    #[error("control {op}: unreadable answer {line:?}")]
    BadReply { op: &'static str, line: String },
}

/// A connection to one backend's control socket.
pub struct Control {
    out: UnixStream,
    input: BufReader<UnixStream>,
    next_id: u64,
    timeout: Duration,
}

impl Control {
    /// Connects; every call then has `timeout` to be answered.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Control, ControlError> {
        let connect = |source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let out = UnixStream::connect(path).map_err(connect)?;
        out.set_read_timeout(Some(timeout)).map_err(connect)?;
        out.set_write_timeout(Some(timeout)).map_err(connect)?;
        let input = BufReader::new(out.try_clone().map_err(connect)?);
        Ok(Control {
            out,
            input,
            next_id: 1,
            timeout,
        })
    }

    fn call<T: Reply>(&mut self, op: ControlOp) -> Result<T, ControlError> {
        let name = op.name();
        let io = |source: std::io::Error| match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ControlError::Timeout {
                op: name,
                timeout: self.timeout,
            },
            _ => ControlError::Io { op: name, source },
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_string(&ControlRequest { id, op }).expect("serialises");
        line.push('\n');
        self.out.write_all(line.as_bytes()).map_err(io)?;
        let mut reply = String::new();
        loop {
            reply.clear();
            if self.input.read_line(&mut reply).map_err(io)? == 0 {
                return Err(ControlError::Closed { op: name });
            }
            let bad = || ControlError::BadReply {
                op: name,
                line: reply.trim_end().to_string(),
            };
            let r: ControlResponse = serde_json::from_str(&reply).map_err(|_| bad())?;
            // An answer to an earlier call that timed out: skip it.
            if r.id.is_some_and(|i| i < id) {
                continue;
            }
            if let Some(message) = r.err {
                return Err(ControlError::Refused { op: name, message });
            }
            let ok = r.ok.ok_or_else(bad)?;
            return serde_json::from_value(ok).map_err(|_| bad());
        }
    }

    /// Freezes the disk as it is now: generation N of the layers.
    pub fn instant(&mut self, label: &str) -> Result<InstantReply, ControlError> {
        self.call(ControlOp::Instant {
            label: label.to_string(),
        })
    }

    /// Arms a fault; returns its id.
    pub fn arm(&mut self, fault: FaultSpec) -> Result<u32, ControlError> {
        self.call::<ArmReply>(ControlOp::Arm { fault })
            .map(|r| r.fault)
    }

    /// Releases a fault; returns how many held requests it let go.
    pub fn release(&mut self, fault: u32) -> Result<u64, ControlError> {
        self.call::<ReleaseReply>(ControlOp::Release { fault })
            .map(|r| r.released)
    }

    pub fn stats(&mut self) -> Result<Stats, ControlError> {
        self.call(ControlOp::Stats)
    }

    pub fn ping(&mut self) -> Result<PingReply, ControlError> {
        self.call(ControlOp::Ping)
    }

    /// Asks the backend to finish its history and exit.
    pub fn shutdown(&mut self) -> Result<ShutdownReply, ControlError> {
        self.call(ControlOp::Shutdown)
    }
}

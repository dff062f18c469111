//! The host end of the `bw.model` port: one request, one reply, each within a
//! deadline.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bw_guest::bwsnap_exec::protocol::{Hello, Reply, Request};

/// Why the executor could not be talked to (a harness error, never a module result).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("the bw.model port")]
    Io(#[source] std::io::Error),
    #[error("bwsnap-exec did not answer {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("bwsnap-exec closed the port while {what} was pending")]
    Closed { what: String },
    #[error("bwsnap-exec sent a line that is not {what}: {line}")]
    Bad {
        what: &'static str,
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

pub struct Exec {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub hello: Hello,
}

impl Exec {
    /// Waits for the executor's hello on `stream`.
    pub fn connect(stream: UnixStream, timeout: Duration) -> Result<Exec, ExecError> {
        let writer = stream.try_clone().map_err(ExecError::Io)?;
        let mut reader = BufReader::new(stream);
        let line = read_line(&mut reader, "its hello", timeout)?;
        let hello = serde_json::from_str(&line).map_err(|source| ExecError::Bad {
            what: "a hello",
            line,
            source,
        })?;
        Ok(Exec {
            reader,
            writer,
            hello,
        })
    }

    /// Sends `req` and waits for its reply.
    pub fn call(&mut self, req: &Request, timeout: Duration) -> Result<Reply, ExecError> {
        let text = serde_json::to_string(req).expect("serializable");
        writeln!(self.writer, "{text}").map_err(ExecError::Io)?;
        let what = format!("{text:.120}");
        let line = read_line(&mut self.reader, &what, timeout)?;
        serde_json::from_str(&line).map_err(|source| ExecError::Bad {
            what: "a reply",
            line,
            source,
        })
    }
}

/// One line, waiting at most `timeout` in all.
fn read_line(
    reader: &mut BufReader<UnixStream>,
    what: &str,
    timeout: Duration,
) -> Result<String, ExecError> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ExecError::Timeout {
                what: what.into(),
                after: timeout,
            });
        }
        reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(ExecError::Io)?;
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => {
                return Err(ExecError::Closed { what: what.into() });
            }
            Ok(_) if line.ends_with(b"\n") => {
                return Ok(String::from_utf8_lossy(&line).trim().to_string());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ExecError::Io(e)),
        }
    }
}

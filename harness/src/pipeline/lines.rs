//! A JSON-lines conversation on a guest port: the agent's hook (`bw.hook`) and a driven
//! pipeline's instant (`bw.instant`) both announce a frozen instant this way and wait
//! for the harness's answer.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::Serialize;

/// The host end of a line-oriented port.
pub(super) struct LinePort {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl LinePort {
    pub(super) fn new(stream: UnixStream) -> LinePort {
        LinePort {
            stream,
            pending: Vec::new(),
        }
    }

    /// A complete line, trimmed, if one arrives within `wait`.
    pub(super) fn poll(&mut self, wait: Duration) -> Option<String> {
        if let Some(line) = self.take_line() {
            return Some(line);
        }
        let _ = self.stream.set_read_timeout(Some(wait));
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.stream.read(&mut buf) {
            self.pending.extend_from_slice(&buf[..n]);
        }
        self.take_line()
    }

    fn take_line(&mut self) -> Option<String> {
        let at = self.pending.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.pending.drain(..=at).collect();
        Some(String::from_utf8_lossy(&line).trim().to_string())
    }

    /// Sends `msg` as one line. A guest that has gone shows in what the run sees next,
    /// so a failed write is not an error here.
    pub(super) fn reply<T: Serialize>(&mut self, msg: &T) {
        let Ok(mut line) = serde_json::to_string(msg) else {
            return;
        };
        line.push('\n');
        let _ = self.stream.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_whole_however_the_bytes_arrive() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut port = LinePort::new(a);
        b.write_all(b"{\"type\":\"fro").unwrap();
        assert_eq!(port.poll(Duration::from_millis(50)), None);
        b.write_all(b"zen\"}\n{\"x\":1}\n").unwrap();
        assert_eq!(
            port.poll(Duration::from_millis(50)).as_deref(),
            Some("{\"type\":\"frozen\"}")
        );
        assert_eq!(
            port.poll(Duration::from_millis(50)).as_deref(),
            Some("{\"x\":1}")
        );
        port.reply(&serde_json::json!({"type": "continue"}));
        let mut got = [0u8; 20];
        let n = b.read(&mut got).unwrap();
        assert_eq!(&got[..n], b"{\"type\":\"continue\"}\n");
    }
}

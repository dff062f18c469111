//! The freeze hook: between the snapshot instant and the thaw, the agent tells whoever
//! listens on the hook channel (the harness) and waits for its go-ahead, so a
//! point-in-time copy of the disks can be taken while the filesystems are frozen.
//!
//! JSON lines: the agent sends `{"type":"frozen",...}`, the listener answers
//! `{"type":"continue"}` or `{"type":"abort","reason":"..."}`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::transport::Conn;

/// What the agent announces at the instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenVolume {
    pub id: String,
    pub device: String,
    pub mount_point: String,
    pub minor: u32,
}

/// Messages on the hook channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum HookMessage {
    Frozen {
        /// Backup run counter of this agent (1 for its first backup).
        run: u64,
        /// CLOCK_MONOTONIC ns of the instant (after the last START).
        instant_ns: u64,
        volumes: Vec<FrozenVolume>,
    },
    Continue,
    Abort {
        reason: String,
    },
}

/// Why the hook did not give the go-ahead.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook channel")]
    Transport(#[from] crate::transport::TransportError),
    #[error("the hook listener closed the channel without answering")]
    Closed,
    #[error("the hook listener sent something unexpected: {0}")]
    Unexpected(String),
    #[error("the hook listener aborted the backup: {0}")]
    Aborted(String),
}

/// Announces the instant on `channel` and waits (up to `timeout`) for the answer.
pub fn announce(channel: &mut Conn, msg: &HookMessage, timeout: Duration) -> Result<(), HookError> {
    let deadline = Instant::now() + timeout;
    let mut line = serde_json::to_string(msg).expect("hook messages serialize");
    line.push('\n');
    channel.write_all(line.as_bytes(), deadline)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.contains(&b'\n') {
        let n = channel.read_some(&mut buf, deadline)?;
        if n == 0 {
            return Err(HookError::Closed);
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() > 64 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let text = text.lines().next().unwrap_or("").trim();
    match serde_json::from_str::<HookMessage>(text) {
        Ok(HookMessage::Continue) => Ok(()),
        Ok(HookMessage::Abort { reason }) => Err(HookError::Aborted(reason)),
        _ => Err(HookError::Unexpected(text.to_string())),
    }
}

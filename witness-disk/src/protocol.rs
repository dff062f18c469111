//! The control protocol: JSON lines over the backend's control socket, one request →
//! one response with the same id. witness-disk/README.md documents it with examples.

use std::path::PathBuf;

use crate::engine::{InstantReply, Stats};
use crate::faults::FaultSpec;

/// Longest request line the backend reads.
pub const MAX_LINE: usize = 1 << 20;

/// A request: `{"id":1,"op":"instant","label":"backup-1"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlRequest {
    pub id: u64,
    #[serde(flatten)]
    pub op: ControlOp,
}

/// The operations.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlOp {
    /// Marks the instant and freezes the disk as it is (→ [`InstantReply`]).
    Instant { label: String },
    /// Arms a fault (→ [`ArmReply`]).
    Arm { fault: FaultSpec },
    /// Releases a fault; a hang's held requests run (→ [`ReleaseReply`]).
    Release { fault: u32 },
    /// Counts (→ [`Stats`]).
    Stats,
    /// Ends the run: drops held requests, closes the layers, finishes the history and
    /// exits (→ [`ShutdownReply`], sent before the backend goes).
    Shutdown,
    /// Answers at once (→ [`PingReply`]).
    Ping,
}

impl ControlOp {
    pub fn name(&self) -> &'static str {
        match self {
            ControlOp::Instant { .. } => "instant",
            ControlOp::Arm { .. } => "arm",
            ControlOp::Release { .. } => "release",
            ControlOp::Stats => "stats",
            ControlOp::Shutdown => "shutdown",
            ControlOp::Ping => "ping",
        }
    }
}

/// A response: `{"id":1,"ok":{...}}` or `{"id":1,"err":"..."}`. `id` is null when the
/// request line could not be read at all.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ControlResponse {
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
}

/// `arm` answers the fault's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArmReply {
    pub fault: u32,
}

/// `release` answers how many held requests it let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseReply {
    pub fault: u32,
    pub released: u64,
}

/// `shutdown` answers where the history is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShutdownReply {
    pub history: PathBuf,
}

/// `ping` answers the backend's uptime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PingReply {
    pub uptime_ns: u64,
    pub connected: bool,
}

/// Every typed reply, for documentation and for the client's decoding.
pub trait Reply: serde::de::DeserializeOwned {}
impl Reply for InstantReply {}
impl Reply for ArmReply {}
impl Reply for ReleaseReply {}
impl Reply for Stats {}
impl Reply for ShutdownReply {}
impl Reply for PingReply {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let r: ControlRequest =
            serde_json::from_str(r#"{"id":1,"op":"instant","label":"backup-1"}"#).unwrap();
        assert_eq!(
            r,
            ControlRequest {
                id: 1,
                op: ControlOp::Instant {
                    label: "backup-1".into()
                }
            }
        );
        let r: ControlRequest = serde_json::from_str(
            r#"{"id":2,"op":"arm","fault":{"kind":"hang","ops":"read","times":"once"}}"#,
        )
        .unwrap();
        assert_eq!(r.op.name(), "arm");
        let r: ControlRequest = serde_json::from_str(r#"{"id":3,"op":"stats"}"#).unwrap();
        assert_eq!(r.op, ControlOp::Stats);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"id":3,"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"stats"}"#).is_err());
    }

    #[test]
    fn responses_write_ok_or_err() {
        let ok = ControlResponse {
            id: Some(1),
            ok: Some(serde_json::json!({"fault": 2})),
            err: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"id":1,"ok":{"fault":2}}"#
        );
        let err = ControlResponse {
            id: None,
            ok: None,
            err: Some("bad".into()),
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"id":null,"err":"bad"}"#
        );
    }
}

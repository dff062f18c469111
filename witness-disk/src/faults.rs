//! Disk faults: what can be armed over the control socket, and the decision, per
//! request, of which armed faults fire. Pure bookkeeping; the engine carries the
//! decisions out (fails, holds, delays or tears the request).

use std::time::Duration;

use crate::hash::BLOCK_SIZE;
use crate::history::Op;
use crate::schedule::{self, RequestKey};

/// The longest latency a fault may add: beyond it the guest's own timeouts would decide.
pub const MAX_LATENCY_US: u64 = 30_000_000;

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpFilter {
    Read,
    /// write, discard and write-zeroes: everything that changes content.
    Write,
    /// read and write.
    #[default]
    Both,
    Flush,
    /// Every request the backend serves.
    All,
}

impl OpFilter {
    pub fn matches(self, op: Op) -> bool {
        let read = op == Op::Read;
        let write = op.modifies();
        match self {
            OpFilter::Read => read,
            OpFilter::Write => write,
            OpFilter::Both => read || write,
            OpFilter::Flush => op == Op::Flush,
            OpFilter::All => !matches!(op, Op::Other(_) | Op::Malformed),
        }
    }
}

/// 4 KiB blocks `start..end`; a request matches when its bytes touch any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRange {
    pub start: u64,
    pub end: u64,
}

/// How often a matching fault fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Times {
    /// On the first matching request (after `after`), then never again.
    Once,
    /// On every matching request (after `after`).
    #[default]
    Always,
}

/// A fault, as armed. JSON: `{"kind":"eio","ops":"write","blocks":{"start":0,"end":8},
/// "times":"once","after":3}`; omitted keys take their defaults (ops both, every block,
/// always, after 0).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultSpec {
    /// Answer matching requests with an I/O error; nothing is read or written.
    Eio {
        #[serde(default)]
        ops: OpFilter,
        #[serde(default)]
        blocks: Option<BlockRange>,
        #[serde(default)]
        times: Times,
        /// Let this many matching requests through first.
        #[serde(default)]
        after: u64,
    },
    /// Hold matching requests until the fault is released; then they run and complete.
    /// A held request is dropped (never completed) if its queue stops (guest reset) or
    /// the backend shuts down.
    Hang {
        #[serde(default)]
        ops: OpFilter,
        #[serde(default)]
        blocks: Option<BlockRange>,
        #[serde(default)]
        times: Times,
        #[serde(default)]
        after: u64,
    },
    /// Hold each matching request for a seeded delay in [0, max_us] microseconds (see
    /// `schedule` for what is deterministic).
    Latency {
        seed: u64,
        max_us: u64,
        #[serde(default)]
        ops: OpFilter,
        #[serde(default)]
        blocks: Option<BlockRange>,
    },
    /// The next write that covers more than `land` 4 KiB blocks lands only its first
    /// `land` blocks and is never completed (the harness resets the guest next).
    Torn { land: u32 },
}

impl FaultSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::Eio { .. } => "eio",
            FaultSpec::Hang { .. } => "hang",
            FaultSpec::Latency { .. } => "latency",
            FaultSpec::Torn { .. } => "torn",
        }
    }

    /// Checks the spec against the disk; names what is wrong.
    pub fn validate(&self, disk_blocks: u64) -> Result<(), FaultError> {
        let blocks = match self {
            FaultSpec::Eio { blocks, .. } | FaultSpec::Hang { blocks, .. } => *blocks,
            FaultSpec::Latency { max_us, blocks, .. } => {
                if *max_us > MAX_LATENCY_US {
                    return Err(FaultError::Invalid(format!(
                        "latency max_us {max_us} is above {MAX_LATENCY_US}"
                    )));
                }
                *blocks
            }
            FaultSpec::Torn { .. } => None,
        };
        if let Some(r) = blocks {
            if r.start >= r.end || r.end > disk_blocks {
                return Err(FaultError::Invalid(format!(
                    "blocks {}..{} is not a non-empty range within the disk's {disk_blocks} blocks",
                    r.start, r.end
                )));
            }
        }
        Ok(())
    }
}

/// Why an arm or release was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("invalid fault: {0}")]
    Invalid(String),
    #[error("no fault {0} was armed")]
    Unknown(u32),
    #[error("fault {0} is already released")]
    Released(u32),
}

/// What a request looks like to the faults.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub seq: u64,
    pub op: Op,
    pub offset: u64,
    pub len: u64,
    /// How many requests with the same op, offset and length came before (for seeded
    /// delays).
    pub occurrence: u64,
}

impl Seen {
    fn touches(&self, r: &Option<BlockRange>) -> bool {
        let Some(r) = r else { return true };
        if self.len == 0 {
            return false;
        }
        let first = self.offset / BLOCK_SIZE;
        let last = (self.offset + self.len - 1) / BLOCK_SIZE;
        first < r.end && last >= r.start
    }

    fn blocks(&self) -> u64 {
        if self.len == 0 {
            return 0;
        }
        (self.offset + self.len).div_ceil(BLOCK_SIZE) - self.offset / BLOCK_SIZE
    }
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Execute,
    /// Answer with an I/O error (fault id).
    Fail(u32),
    /// Hold until fault `0` is released.
    Hang(u32),
    /// Land the first `land` blocks, never complete (fault id, land).
    Tear(u32, u32),
}

/// The decision for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Latency faults' delay (the schedule's is added by the engine).
    pub delay: Duration,
    /// Every fault that fired on this request, in arming order.
    pub fired: Vec<u32>,
}

/// One armed fault and its counts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FaultStatus {
    pub fault: u32,
    pub spec: FaultSpec,
    /// Matching requests seen while armed.
    pub matched: u64,
    /// Times it fired.
    pub fired: u64,
    /// False once released, or once a `once` / `torn` fault has fired.
    pub active: bool,
    pub released: bool,
}

/// The armed faults of one disk, in arming order.
#[derive(Default)]
pub struct FaultTable {
    faults: Vec<FaultStatus>,
}

impl FaultTable {
    /// Arms a fault; returns its id (from 1).
    pub fn arm(&mut self, spec: FaultSpec, disk_blocks: u64) -> Result<u32, FaultError> {
        spec.validate(disk_blocks)?;
        let fault = self.faults.len() as u32 + 1;
        self.faults.push(FaultStatus {
            fault,
            spec,
            matched: 0,
            fired: 0,
            active: true,
            released: false,
        });
        Ok(fault)
    }

    /// Disarms a fault (a hang's held requests are the engine's to let go).
    pub fn release(&mut self, fault: u32) -> Result<&FaultStatus, FaultError> {
        let f = self
            .faults
            .get_mut((fault as usize).wrapping_sub(1))
            .ok_or(FaultError::Unknown(fault))?;
        if f.released {
            return Err(FaultError::Released(fault));
        }
        f.released = true;
        f.active = false;
        Ok(f)
    }

    pub fn status(&self) -> Vec<FaultStatus> {
        self.faults.clone()
    }

    /// True when any latency fault is active (the engine then counts occurrences).
    pub fn wants_occurrences(&self) -> bool {
        self.faults
            .iter()
            .any(|f| f.active && matches!(f.spec, FaultSpec::Latency { .. }))
    }

    /// Decides what happens to a request. Latency faults all add their delay; the first
    /// eio, hang or torn fault that fires decides the action, and the ones after it do
    /// not see the request.
    pub fn decide(&mut self, req: &Seen) -> Decision {
        let mut d = Decision {
            action: Action::Execute,
            delay: Duration::ZERO,
            fired: vec![],
        };
        for f in self.faults.iter_mut().filter(|f| f.active) {
            match &f.spec {
                FaultSpec::Latency {
                    seed,
                    max_us,
                    ops,
                    blocks,
                } => {
                    if ops.matches(req.op) && req.touches(blocks) {
                        f.matched += 1;
                        f.fired += 1;
                        d.fired.push(f.fault);
                        let key = RequestKey {
                            op: req.op,
                            offset: req.offset,
                            len: req.len,
                        };
                        d.delay += schedule::delay(*seed, *max_us, key, req.occurrence);
                    }
                }
                FaultSpec::Eio {
                    ops,
                    blocks,
                    times,
                    after,
                }
                | FaultSpec::Hang {
                    ops,
                    blocks,
                    times,
                    after,
                } => {
                    if d.action != Action::Execute || !ops.matches(req.op) || !req.touches(blocks) {
                        continue;
                    }
                    f.matched += 1;
                    if f.matched <= *after {
                        continue;
                    }
                    f.fired += 1;
                    d.fired.push(f.fault);
                    if *times == Times::Once {
                        f.active = false;
                    }
                    d.action = match f.spec {
                        FaultSpec::Eio { .. } => Action::Fail(f.fault),
                        _ => Action::Hang(f.fault),
                    };
                }
                FaultSpec::Torn { land } => {
                    if d.action != Action::Execute
                        || req.op != Op::Write
                        || req.blocks() < 2
                        || req.blocks() <= u64::from(*land)
                    {
                        continue;
                    }
                    f.matched += 1;
                    f.fired += 1;
                    f.active = false;
                    d.fired.push(f.fault);
                    d.action = Action::Tear(f.fault, *land);
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seq: u64, op: Op, offset: u64, len: u64) -> Seen {
        Seen {
            seq,
            op,
            offset,
            len,
            occurrence: 0,
        }
    }

    #[test]
    fn specs_read_from_json_with_defaults_and_refuse_unknown_keys() {
        let s: FaultSpec = serde_json::from_str(r#"{"kind":"eio","ops":"write"}"#).unwrap();
        assert_eq!(
            s,
            FaultSpec::Eio {
                ops: OpFilter::Write,
                blocks: None,
                times: Times::Always,
                after: 0
            }
        );
        let s: FaultSpec =
            serde_json::from_str(r#"{"kind":"latency","seed":3,"max_us":500}"#).unwrap();
        assert_eq!(s.kind(), "latency");
        let err = serde_json::from_str::<FaultSpec>(r#"{"kind":"eio","opz":"write"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("opz"), "{err}");
        assert!(serde_json::from_str::<FaultSpec>(r#"{"kind":"melt"}"#).is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = FaultSpec::Hang {
            ops: OpFilter::Read,
            blocks: Some(BlockRange { start: 5, end: 5 }),
            times: Times::Once,
            after: 0,
        };
        assert!(bad.validate(100).unwrap_err().to_string().contains("5..5"));
        let slow = FaultSpec::Latency {
            seed: 0,
            max_us: MAX_LATENCY_US + 1,
            ops: OpFilter::Both,
            blocks: None,
        };
        assert!(slow.validate(100).is_err());
    }

    #[test]
    fn eio_once_after_n_on_a_block_range() {
        let mut t = FaultTable::default();
        let id = t
            .arm(
                FaultSpec::Eio {
                    ops: OpFilter::Write,
                    blocks: Some(BlockRange { start: 10, end: 12 }),
                    times: Times::Once,
                    after: 1,
                },
                100,
            )
            .unwrap();
        // Outside the range, a read, then the first matching write passes.
        assert_eq!(
            t.decide(&seen(0, Op::Write, 0, 4096)).action,
            Action::Execute
        );
        assert_eq!(
            t.decide(&seen(1, Op::Read, 40960, 4096)).action,
            Action::Execute
        );
        assert_eq!(
            t.decide(&seen(2, Op::Write, 44 * 1024, 512)).action,
            Action::Execute
        );
        // The second one fails, once.
        let d = t.decide(&seen(3, Op::Write, 40960, 8192));
        assert_eq!((d.action, d.fired.clone()), (Action::Fail(id), vec![id]));
        assert_eq!(
            t.decide(&seen(4, Op::Write, 40960, 8192)).action,
            Action::Execute
        );
        let st = &t.status()[0];
        assert_eq!((st.fired, st.active), (1, false));
    }

    #[test]
    fn torn_takes_the_next_multi_block_write_only() {
        let mut t = FaultTable::default();
        let id = t.arm(FaultSpec::Torn { land: 2 }, 100).unwrap();
        assert_eq!(
            t.decide(&seen(0, Op::Write, 0, 4096)).action,
            Action::Execute
        );
        assert_eq!(
            t.decide(&seen(1, Op::Write, 0, 8192)).action,
            Action::Execute
        );
        assert_eq!(
            t.decide(&seen(2, Op::Read, 0, 65536)).action,
            Action::Execute
        );
        assert_eq!(
            t.decide(&seen(3, Op::Write, 0, 65536)).action,
            Action::Tear(id, 2)
        );
        assert_eq!(
            t.decide(&seen(4, Op::Write, 0, 65536)).action,
            Action::Execute
        );
    }

    #[test]
    fn latency_adds_up_and_a_release_ends_a_hang() {
        let mut t = FaultTable::default();
        let lat = t
            .arm(
                FaultSpec::Latency {
                    seed: 9,
                    max_us: 1000,
                    ops: OpFilter::All,
                    blocks: None,
                },
                100,
            )
            .unwrap();
        let hang = t
            .arm(
                FaultSpec::Hang {
                    ops: OpFilter::Read,
                    blocks: None,
                    times: Times::Always,
                    after: 0,
                },
                100,
            )
            .unwrap();
        let d = t.decide(&seen(0, Op::Read, 0, 4096));
        assert_eq!(d.action, Action::Hang(hang));
        assert_eq!(d.fired, vec![lat, hang]);
        assert!(d.delay <= Duration::from_micros(1000));
        t.release(hang).unwrap();
        assert_eq!(t.release(hang).unwrap_err(), FaultError::Released(hang));
        assert_eq!(t.release(77).unwrap_err(), FaultError::Unknown(77));
        assert_eq!(
            t.decide(&seen(1, Op::Read, 0, 4096)).action,
            Action::Execute
        );
    }
}

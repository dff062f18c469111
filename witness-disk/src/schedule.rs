//! Seeded delays: the completion schedule (a backend option, for races that replay) and
//! the `latency` fault share one pure function from a seed and a request's identity to
//! its delay.
//!
//! What is deterministic: the delay given to a request is a function of the seed, the
//! request's op, byte offset and length, and how many requests with that same op, offset
//! and length came before it in this run (its occurrence). So "the third 4 KiB write to
//! offset 1 MiB" is held the same time in every run with that seed, whatever else the
//! guest does around it, and two requests in flight together complete in the same order
//! whenever their submit times are the same.
//!
//! What is not: when the guest submits (TCG speed, host load, the guest's own timers),
//! and so which requests are in flight together; requests the guest sends differently
//! from run to run get different delays. The schedule removes the disk's own timing from
//! the race; it cannot remove the guest's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::history::Op;

/// The backend option: hold every request for a seeded delay of at most `max_delay_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub seed: u64,
    pub max_delay_us: u64,
}

/// A request's identity for delays: op, offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub op: Op,
    pub offset: u64,
    pub len: u64,
}

/// The seeded delay of the `occurrence`-th request with `key`, uniform in
/// [0, max_delay_us] microseconds.
pub fn delay(seed: u64, max_delay_us: u64, key: RequestKey, occurrence: u64) -> Duration {
    if max_delay_us == 0 {
        return Duration::ZERO;
    }
    let op = match key.op {
        crate::history::Op::Read => 0u64,
        Op::Write => 1,
        Op::Flush => 2,
        Op::Discard => 3,
        Op::WriteZeroes => 4,
        Op::GetId => 5,
        Op::Other(t) => 0x100 + u64::from(t),
        Op::Malformed => 6,
    };
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&op.to_le_bytes());
    bytes[8..16].copy_from_slice(&key.offset.to_le_bytes());
    bytes[16..24].copy_from_slice(&key.len.to_le_bytes());
    bytes[24..].copy_from_slice(&occurrence.to_le_bytes());
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, seed);
    Duration::from_micros(h % (max_delay_us + 1))
}

/// Counts occurrences of each request key in a run.
#[derive(Default)]
pub struct Occurrences {
    /// Guarded: key → requests with that key seen so far.
    seen: Mutex<HashMap<RequestKey, u64>>,
}

impl Occurrences {
    /// The occurrence index of this request (0 for the first with its key).
    pub fn next(&self, key: RequestKey) -> u64 {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = seen.entry(key).or_insert(0);
        let this = *n;
        *n += 1;
        this
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(offset: u64) -> RequestKey {
        RequestKey {
            op: Op::Write,
            offset,
            len: 4096,
        }
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let a: Vec<_> = (0..50).map(|i| delay(7, 5000, key(i * 4096), 0)).collect();
        let b: Vec<_> = (0..50).map(|i| delay(7, 5000, key(i * 4096), 0)).collect();
        let c: Vec<_> = (0..50).map(|i| delay(8, 5000, key(i * 4096), 0)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|d| *d <= Duration::from_micros(5000)));
        // Spread over the range, not stuck at one value.
        assert!(a.iter().any(|d| *d < Duration::from_micros(2500)));
        assert!(a.iter().any(|d| *d > Duration::from_micros(2500)));
    }

    #[test]
    fn occurrences_count_per_key() {
        let o = Occurrences::default();
        assert_eq!(o.next(key(0)), 0);
        assert_eq!(o.next(key(4096)), 0);
        assert_eq!(o.next(key(0)), 1);
        assert_eq!(delay(1, 0, key(0), 3), Duration::ZERO);
    }
}

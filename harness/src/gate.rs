//! The pacing gate: where a backup's progress is held at a step boundary while a paced
//! `during` workload uses its next allowance.
//!
//! Two sides share one [`Gate`]. The pipeline, wherever it measures its progress (the
//! reference pipeline's transport proxy; a dm-snapshot or vendor pipeline's own reader),
//! asks "I am about to reach block N of volume V, may I go on?" and holds while the
//! answer is no. The run opens the gate one step further each time the workloads have
//! used their grant (run/pace.rs). Positions count 4 KiB blocks over the backed-up
//! volumes in the order the backup reads them (the plan's order), so a backup of
//! several volumes has one progress from 0 to the sum of their blocks.
//!
//! Nothing here blocks without a deadline, and a released gate (the backup is over, or
//! pacing gave up) lets everything through.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The state both sides see. Protected by [`Gate::state`].
#[derive(Debug)]
struct State {
    /// (volume, first position, blocks), in backup order.
    volumes: Vec<(String, u64, u64)>,
    /// A request to reach a position at or below this passes.
    open_to: u64,
    /// The highest position asked for so far.
    requested: u64,
    /// Whether the pipeline has asked at all.
    consulted: bool,
    /// Everything passes from now on.
    released: bool,
}

/// A gate on one backup's progress.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    /// Signalled whenever the gate opens further.
    opened: Condvar,
}

impl Gate {
    /// A closed gate (nothing may pass yet) over `volumes` (name, 4 KiB blocks), in the
    /// order the backup reads them.
    pub fn new(volumes: &[(String, u64)]) -> Gate {
        let mut start = 0;
        let volumes = volumes
            .iter()
            .map(|(name, blocks)| {
                let v = (name.clone(), start, *blocks);
                start += blocks;
                v
            })
            .collect();
        Gate {
            state: Mutex::new(State {
                volumes,
                open_to: 0,
                requested: 0,
                consulted: false,
                released: false,
            }),
            opened: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the backup: the state stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The blocks of every volume together: the position of a finished backup.
    pub fn total(&self) -> u64 {
        self.lock()
            .volumes
            .iter()
            .map(|(_, _, blocks)| blocks)
            .sum()
    }

    /// The position of block `block` of `volume` (None: a volume the gate does not know).
    fn position(state: &State, volume: &str, block: u64) -> Option<u64> {
        state
            .volumes
            .iter()
            .find(|(name, _, _)| name == volume)
            .map(|(_, start, blocks)| start + block.min(*blocks))
    }

    /// Pipeline side, without waiting: may the backup go on until it has passed block
    /// `end_block` (exclusive) of `volume`? The request is recorded either way, so the
    /// run sees where the backup waits. A volume the gate does not know always passes.
    pub fn may_pass(&self, volume: &str, end_block: u64) -> bool {
        let mut s = self.lock();
        s.consulted = true;
        let Some(at) = Self::position(&s, volume, end_block) else {
            return true;
        };
        s.requested = s.requested.max(at);
        s.released || at <= s.open_to
    }

    /// Pipeline side, waiting up to `timeout` for the gate to open that far (for a
    /// pipeline whose reader has a thread of its own to block). False: still closed.
    pub fn wait_pass(&self, volume: &str, end_block: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        s.consulted = true;
        let Some(at) = Self::position(&s, volume, end_block) else {
            return true;
        };
        s.requested = s.requested.max(at);
        loop {
            if s.released || at <= s.open_to {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .opened
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Run side: the highest position the pipeline has asked for.
    pub fn requested(&self) -> u64 {
        self.lock().requested
    }

    /// Run side: how far the gate is open.
    pub fn open_to(&self) -> u64 {
        self.lock().open_to
    }

    /// Run side: whether the pipeline has consulted the gate at all.
    pub fn consulted(&self) -> bool {
        self.lock().consulted
    }

    /// Run side: lets requests up to `position` pass (never closes it again).
    pub fn open(&self, position: u64) {
        let mut s = self.lock();
        s.open_to = s.open_to.max(position);
        self.opened.notify_all();
    }

    /// Run side: lets everything pass from now on.
    pub fn release(&self) {
        self.lock().released = true;
        self.opened.notify_all();
    }

    pub fn released(&self) -> bool {
        self.lock().released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn gate() -> Gate {
        Gate::new(&[("boot".into(), 100), ("data".into(), 1000)])
    }

    #[test]
    fn positions_run_over_the_volumes_in_backup_order() {
        let g = gate();
        assert_eq!(g.total(), 1100);
        assert!(!g.consulted());
        assert!(!g.may_pass("boot", 1));
        assert!(g.consulted());
        assert_eq!(g.requested(), 1);
        g.open(150);
        assert!(g.may_pass("boot", 100));
        assert!(g.may_pass("data", 50));
        assert!(!g.may_pass("data", 51));
        assert_eq!(g.requested(), 151);
        // A block past a volume's end counts as its end.
        assert!(g.may_pass("boot", 5000));
        // Unknown volumes are not the gate's to hold.
        assert!(g.may_pass("other", 1 << 40));
        assert_eq!(g.requested(), 151);
        // Opening never closes.
        g.open(10);
        assert_eq!(g.open_to(), 150);
        g.release();
        assert!(g.may_pass("data", 1000));
    }

    #[test]
    fn a_waiting_pipeline_goes_on_when_the_run_opens() {
        let g = Arc::new(gate());
        let waiter = {
            let g = g.clone();
            std::thread::spawn(move || g.wait_pass("data", 10, Duration::from_secs(30)))
        };
        let started = Instant::now();
        while g.requested() < 110 {
            assert!(started.elapsed() < Duration::from_secs(30), "never asked");
            std::thread::sleep(Duration::from_millis(1));
        }
        g.open(110);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn a_wait_has_a_deadline() {
        let g = gate();
        let t = Instant::now();
        assert!(!g.wait_pass("boot", 1, Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
    }
}

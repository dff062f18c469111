//! What each `during` workload did in one backup (its totals, and for a workload paced
//! by the backup's progress what it had written at each step), how fast each backup
//! went, and how much a `--slow` run held QEMU back. Two runs of the same scenario and
//! seed, one slowed down, must record the same steps and totals.

use serde::{Deserialize, Serialize};

/// One grant of a paced workload: the backup was held at `position` until the
/// workload had used `allowance`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaceStep {
    /// From 0.
    pub step: u32,
    /// Where the backup was held, in 4 KiB blocks over the backed-up volumes.
    pub position: u64,
    /// The cumulative allowance granted, in the pace's unit.
    pub allowance: u64,
    /// What the workload had done by the time the backup went on: in the pace's unit,
    /// then data bytes and operations.
    pub done: u64,
    pub bytes: u64,
    pub ops: u64,
}

/// One `during` workload in one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub backup: u32,
    /// Index in the scenario's `workloads`.
    pub index: usize,
    /// The writer id its stamps carry.
    pub writer: u32,
    pub kind: String,
    pub volume: String,
    /// How it was paced: `"1MiB per 4%"`, or `"wall clock: <reason>"`.
    pub pacing: String,
    /// The grants of a paced workload, in order (empty for a wall-clock one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<PaceStep>,
    /// From its summary (None: no summary came back).
    pub bytes: Option<u64>,
    pub ops: Option<u64>,
    /// 4 KiB data blocks written, setup included.
    pub writes: Option<u64>,
    pub stopped_by: Option<String>,
    /// Why the workload does not count as one that ran as asked.
    pub failure: Option<String>,
}

/// How fast one backup went, as the pipeline reported its progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSpeed {
    pub backup: u32,
    /// Blocks that crossed (the pipeline's own count).
    pub blocks: u64,
    /// From the pipeline's start of the backup to its end, holds for paced workloads
    /// included.
    pub millis: u64,
}

impl BackupSpeed {
    pub fn blocks_per_second(&self) -> f64 {
        self.blocks as f64 * 1000.0 / (self.millis.max(1) as f64)
    }
}

/// How a `--slow N` run held QEMU back, as measured by the throttle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowRecord {
    pub factor: u32,
    /// How it was throttled.
    pub method: String,
    /// The share of wall time QEMU could run (1/factor when the duty held).
    pub duty: f64,
    /// QEMU's CPU seconds per wall second while throttled.
    pub qemu_cpu_per_second: Option<f64>,
    /// Wall seconds under the throttle.
    pub seconds: f64,
}

//! summary.json: what ran, the counts per class, the outcomes and the verdict, for
//! machines (the nightly's matrix, CI dashboards).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::classify::Classification;
use crate::model::{BackupKind, BlockClass, Verdict};
use crate::record::{
    BackupSpeed, Claim, FaultFired, OracleRecord, Recording, RunInfo, TruthState, WorkloadRecord,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub format: u32,
    /// What ran, where, and how to run it again: its fields sit at the top level.
    #[serde(flatten)]
    pub run: RunInfo,
    pub total_seconds: f64,
    pub verdict: String,
    pub exit_code: i32,
    pub reasons: Vec<String>,
    /// Every class, zero counts included, so dashboards see a stable shape.
    pub counts: BTreeMap<String, u64>,
    pub outcomes: Vec<String>,
    pub expected_classes: Vec<String>,
    pub expected_outcomes: Vec<String>,
    pub volumes: Vec<VolumeSummary>,
    pub console_findings: Vec<String>,
    pub harness_errors: Vec<String>,
    pub checks: Vec<String>,
    #[serde(default)]
    pub notes: Vec<String>,
    /// Every injected fault and how often it fired, as its layer counted.
    #[serde(default)]
    pub faults: Vec<FaultFired>,
    /// What each `during` workload wrote, step by step when paced by the backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadRecord>,
    /// How fast each backup went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub speeds: Vec<BackupSpeed>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeSummary {
    pub name: String,
    pub fs: String,
    pub generations: Vec<GenerationSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerationSummary {
    pub generation: u32,
    pub kind: BackupKind,
    pub blocks: u64,
    pub committed: bool,
    pub agent: Claim,
    pub target: Claim,
    pub stages: Vec<String>,
    pub counts: BTreeMap<String, u64>,
    pub outcomes: Vec<String>,
    pub excluded: Vec<String>,
    /// Whether the harness took its own truth for this backup.
    #[serde(default)]
    pub truth: TruthState,
    /// Where the truth came from, in words (the instant, or the history oracle's cut).
    #[serde(default)]
    pub truth_from: String,
    /// Where the pipeline's word on its COW file disagreed with the harness's.
    #[serde(default)]
    pub cow_findings: Vec<String>,
    /// The history oracle's judgement (witness disks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle: Option<OracleRecord>,
}

fn all_counts(counts: &BTreeMap<BlockClass, u64>) -> BTreeMap<String, u64> {
    BlockClass::ALL
        .iter()
        .map(|c| (c.name().to_owned(), counts.get(c).copied().unwrap_or(0)))
        .collect()
}

impl Summary {
    /// `class<sep>count` of every class with blocks.
    pub fn found_counts(&self, sep: &str) -> Vec<String> {
        self.counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{c}{sep}{n}"))
            .collect()
    }

    pub fn build(rec: &Recording, c: &Classification, verdict: &Verdict) -> Summary {
        let run = &rec.run;
        let volumes = rec
            .volumes
            .iter()
            .map(|v| VolumeSummary {
                name: v.name.clone(),
                fs: v.fs.clone(),
                generations: v
                    .generations
                    .iter()
                    .map(|g| {
                        let result = c
                            .generations
                            .iter()
                            .find(|r| r.volume == v.name && r.generation == g.generation);
                        GenerationSummary {
                            generation: g.generation,
                            kind: g.kind,
                            blocks: g.blocks,
                            committed: g.committed,
                            agent: g.agent.clone(),
                            target: g.target_claim.clone(),
                            stages: result
                                .map(|r| r.stages.iter().map(|s| s.to_string()).collect())
                                .unwrap_or_default(),
                            counts: result.map(|r| all_counts(&r.counts)).unwrap_or_default(),
                            outcomes: result
                                .map(|r| r.outcomes.iter().map(|o| o.name().to_owned()).collect())
                                .unwrap_or_default(),
                            excluded: g
                                .excluded
                                .iter()
                                .map(|e| {
                                    format!("{}-{}: {}", e.start, e.end.saturating_sub(1), e.reason)
                                })
                                .collect(),
                            truth: g.truth_state.clone(),
                            truth_from: super::truth_from(&g.truth_state),
                            cow_findings: g.cow_findings.clone(),
                            oracle: g.oracle.clone(),
                        }
                    })
                    .collect(),
            })
            .collect();
        Summary {
            format: 1,
            run: run.clone(),
            total_seconds: run.timings.iter().map(|t| t.seconds).sum(),
            verdict: verdict.name().to_owned(),
            exit_code: i32::from(verdict.exit().code()),
            reasons: verdict.reasons().to_vec(),
            counts: all_counts(&c.counts),
            outcomes: c.outcomes.iter().map(|o| o.name().to_owned()).collect(),
            expected_classes: rec
                .expect
                .classes
                .iter()
                .map(|c| c.name().to_owned())
                .collect(),
            expected_outcomes: rec
                .expect
                .outcomes
                .iter()
                .map(|o| o.name().to_owned())
                .collect(),
            volumes,
            console_findings: rec
                .events
                .console
                .iter()
                .map(|f| format!("{}: {}", f.line_no, f.line))
                .collect(),
            harness_errors: rec.events.harness_errors.clone(),
            checks: rec
                .events
                .checks
                .iter()
                .map(|c| {
                    format!(
                        "{:?}: {} {}",
                        c.kind,
                        if c.passed { "passed" } else { "FAILED" },
                        c.detail
                    )
                })
                .collect(),
            notes: rec.events.notes.clone(),
            faults: rec.events.faults.clone(),
            workloads: rec.events.workloads.clone(),
            speeds: rec.events.speeds.clone(),
        }
    }
}

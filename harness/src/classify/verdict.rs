//! The verdict of a run: a classified recording judged against the scenario's
//! expectations. A recording that cannot be classified is a harness error, never a
//! product failure.

use super::generation::{classify, Classification};
use crate::console::Trouble;
use crate::model::{BlockClass, Outcome, Verdict, Where};
use crate::record::{CheckKind, Recording};

/// A block of some class, found in a generation's findings.
struct FoundBlock<'a> {
    volume: &'a str,
    generation: u32,
    block: u64,
    /// A fault was injected at this block.
    fault_site: bool,
    /// The block names the stamped write it holds.
    names_write: bool,
}

fn blocks_text(blocks: &[u64]) -> String {
    let shown: Vec<String> = blocks.iter().take(5).map(|b| b.to_string()).collect();
    let more = if blocks.len() > 5 {
        format!(", ... ({} in all)", blocks.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

/// Judges a classified recording against its expectations.
pub fn verdict(c: &Classification, rec: &Recording) -> Verdict {
    let expect = &rec.expect;
    if !rec.events.harness_errors.is_empty() {
        return Verdict::CouldNotRun {
            errors: rec.events.harness_errors.clone(),
        };
    }
    let mut errors = Vec::new();
    let mut reasons = Vec::new();

    // Blocks.
    let found = c.problem_classes();
    let count = |class: BlockClass| c.counts.get(&class).copied().unwrap_or(0);
    let blocks_of = |class: BlockClass| -> Vec<FoundBlock> {
        c.generations
            .iter()
            .flat_map(|g| {
                g.findings
                    .iter()
                    .filter(move |f| f.class == class)
                    .map(move |f| FoundBlock {
                        volume: &g.volume,
                        generation: g.generation,
                        block: f.block,
                        fault_site: f.fault_site,
                        names_write: !f.write.is_empty(),
                    })
            })
            .collect()
    };
    for class in &found {
        if !expect.classes.contains(class) {
            let blocks: Vec<u64> = blocks_of(*class).iter().map(|b| b.block).collect();
            reasons.push(format!(
                "{} block(s) of {} (blocks {})",
                count(*class),
                class.name(),
                blocks_text(&blocks)
            ));
        }
    }
    let recovered = found.is_empty() && expect.allow_clean;
    if !recovered {
        for class in &expect.classes {
            if !found.contains(class) {
                reasons.push(format!("expected {} blocks, found none", class.name()));
            }
        }
    }
    if expect.at == Where::FaultSites {
        for class in expect.classes.iter().filter(|c| found.contains(c)) {
            let blocks = blocks_of(*class);
            let outside: Vec<u64> = blocks
                .iter()
                .filter(|b| !b.fault_site)
                .map(|b| b.block)
                .collect();
            if !outside.is_empty() {
                reasons.push(format!(
                    "{} {} block(s) are not where a fault was injected (blocks {})",
                    outside.len(),
                    class.name(),
                    blocks_text(&outside)
                ));
            }
            if blocks.iter().all(|b| !b.fault_site) {
                reasons.push(format!(
                    "no {} block was found where a fault was injected",
                    class.name()
                ));
            }
        }
    }
    if expect.named_writes {
        // Filesystem metadata (the journal, bitmaps) leaks with the data but is never
        // written by the stamped workload: only blocks of files must name their write.
        let owner = |b: &FoundBlock| -> Option<&str> {
            rec.volumes
                .iter()
                .find(|v| v.name == b.volume)?
                .generations
                .iter()
                .find(|g| g.generation == b.generation)?
                .owners
                .get(&b.block)
                .map(String::as_str)
        };
        let future = blocks_of(BlockClass::DataFromTheFuture);
        let unnamed: Vec<u64> = future
            .iter()
            .filter(|b| !b.names_write)
            .filter(|b| owner(b).is_none_or(|o| o.starts_with('/')))
            .map(|b| b.block)
            .collect();
        if !unnamed.is_empty() {
            reasons.push(format!(
                "{} data-from-the-future block(s) of files name no stamped write (blocks {})",
                unnamed.len(),
                blocks_text(&unnamed)
            ));
        }
        if !future.is_empty() && future.iter().all(|b| !b.names_write) {
            reasons.push("no data-from-the-future block names the stamped write it holds".into());
        }
    }

    // Run-level outcomes.
    for outcome in &c.outcomes {
        match outcome {
            Outcome::HarnessError => {}
            Outcome::FalseSuccess
            | Outcome::FailedCleanly
            | Outcome::GuestOops
            | Outcome::GuestHang
            | Outcome::VolumeVanished => {
                if !expect.outcomes.contains(outcome) && !expect.allow_outcomes.contains(outcome) {
                    reasons.push(format!(
                        "outcome {}: {}",
                        outcome.name(),
                        outcome_detail(*outcome, c, rec)
                    ));
                }
            }
        }
    }
    for outcome in &expect.outcomes {
        if !c.outcomes.contains(outcome) {
            reasons.push(format!(
                "expected outcome {}, which did not occur",
                outcome.name()
            ));
        }
    }
    for g in &c.generations {
        if g.previous_damaged {
            reasons.push(format!(
                "volume {} generation {}: the failed backup damaged the previous generation at the target",
                g.volume, g.generation
            ));
        }
    }

    // Post-run checks: expected ones must have run; any that ran must have passed.
    let mut wanted: Vec<CheckKind> = Vec::new();
    if expect.fsck {
        wanted.push(CheckKind::Fsck);
    }
    if expect.remount {
        wanted.push(CheckKind::Remount);
    }
    wanted.extend(expect.skipped.iter().map(|s| CheckKind::skipped(*s)));
    for kind in wanted {
        if !rec.events.checks.iter().any(|r| r.kind == kind) {
            errors.push(format!(
                "the scenario expects the {kind:?} check, and the run did not record it"
            ));
        }
    }
    for check in &rec.events.checks {
        if !check.passed {
            reasons.push(format!("check {:?} failed: {}", check.kind, check.detail));
        }
    }

    if !errors.is_empty() {
        Verdict::CouldNotRun { errors }
    } else if reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail { reasons }
    }
}

fn outcome_detail(outcome: Outcome, c: &Classification, rec: &Recording) -> String {
    match outcome {
        Outcome::FalseSuccess => {
            let g = c
                .generations
                .iter()
                .find(|g| g.outcomes.contains(&Outcome::FalseSuccess));
            match g {
                Some(g) if !g.committed => format!(
                    "volume {} generation {}: success claimed, nothing committed",
                    g.volume, g.generation
                ),
                Some(g) => format!(
                    "volume {} generation {}: success claimed on a backup with {} wrong block(s)",
                    g.volume,
                    g.generation,
                    g.findings.len()
                ),
                None => String::new(),
            }
        }
        Outcome::FailedCleanly => "the backup failed without claiming success".into(),
        Outcome::GuestOops => rec
            .events
            .console
            .iter()
            .find(|f| f.kind != Trouble::HungTask)
            .map(|f| format!("console.log:{}: {}", f.line_no, f.line.trim()))
            .unwrap_or_default(),
        Outcome::GuestHang => {
            if rec.events.watchdog_fired {
                "the watchdog ended the guest".into()
            } else {
                rec.events
                    .console
                    .iter()
                    .find(|f| f.kind == Trouble::HungTask)
                    .map(|f| format!("console.log:{}: {}", f.line_no, f.line.trim()))
                    .unwrap_or_default()
            }
        }
        Outcome::VolumeVanished => format!("vanished: {}", rec.events.vanished.join(", ")),
        Outcome::HarnessError => rec.events.harness_errors.join("; "),
    }
}

/// A classification and its verdict; a recording that cannot be classified is a harness
/// error, never a product failure.
#[derive(Debug)]
pub struct Evaluation {
    pub classification: Option<Classification>,
    pub verdict: Verdict,
}

pub fn evaluate(rec: &Recording) -> Evaluation {
    match classify(rec) {
        Ok(c) => {
            let verdict = verdict(&c, rec);
            Evaluation {
                classification: Some(c),
                verdict,
            }
        }
        Err(e) => {
            let mut errors = rec.events.harness_errors.clone();
            errors.push(crate::error_chain(&e));
            Evaluation {
                classification: None,
                verdict: Verdict::CouldNotRun { errors },
            }
        }
    }
}

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

/// What judging a run turned up, sorted by how far each kind can be trusted.
#[derive(Default)]
struct Judgement {
    /// Wrong data or a false claim the harness saw itself: product failures, judged
    /// even when the harness also failed somewhere.
    found: Vec<String>,
    /// Failures that a harness error could explain (an expected class not found, the
    /// backup failing cleanly): product failures only when the harness did its part.
    unmet: Vec<String>,
    /// The harness could not run or judge something.
    errors: Vec<String>,
}

/// Judges a classified recording against its expectations. Product findings are judged
/// even when a harness error also happened; a harness error alone is never a pass or a
/// product failure.
pub fn verdict(c: &Classification, rec: &Recording) -> Verdict {
    let expect = &rec.expect;
    let mut j = Judgement {
        errors: rec.events.harness_errors.clone(),
        ..Judgement::default()
    };

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
            let mut text = format!("{} block(s) of {}", count(*class), class.name());
            if !blocks.is_empty() {
                text.push_str(&format!(" (blocks {})", blocks_text(&blocks)));
            }
            for g in &c.generations {
                for (k, why) in &g.beyond {
                    if k == class {
                        text.push_str(&format!(
                            "; volume {} generation {}: {why}",
                            g.volume, g.generation
                        ));
                    }
                }
            }
            j.found.push(text);
        }
    }
    let recovered = found.is_empty() && expect.allow_clean;
    if !recovered {
        for class in &expect.classes {
            if !found.contains(class) {
                j.unmet
                    .push(format!("expected {} blocks, found none", class.name()));
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
                j.found.push(format!(
                    "{} {} block(s) are not where a fault was injected (blocks {})",
                    outside.len(),
                    class.name(),
                    blocks_text(&outside)
                ));
            }
            if blocks.iter().all(|b| !b.fault_site) {
                j.unmet.push(format!(
                    "no {} block was found where a fault was injected",
                    class.name()
                ));
            }
        }
    }
    if expect.named_writes {
        named_writes(&mut j, rec, &blocks_of(BlockClass::DataFromTheFuture));
    }
    for g in &c.generations {
        for f in &g.cow_findings {
            j.found.push(format!(
                "volume {} generation {}: {f}",
                g.volume, g.generation
            ));
        }
    }

    // Injected faults: one that never fired tested nothing.
    for f in &rec.events.faults {
        match f.fired {
            Some(0) => j.errors.push(format!(
                "fault {} of backup {} never fired ({}): the scenario tested nothing",
                f.fault, f.backup, f.counted_by
            )),
            Some(_) => {}
            None => j.errors.push(format!(
                "fault {} of backup {}: how often it fired could not be read ({})",
                f.fault, f.backup, f.counted_by
            )),
        }
    }

    // Run-level outcomes.
    for outcome in &c.outcomes {
        let unexpected =
            !expect.outcomes.contains(outcome) && !expect.allow_outcomes.contains(outcome);
        let text = || {
            format!(
                "outcome {}: {}",
                outcome.name(),
                outcome_detail(*outcome, c, rec)
            )
        };
        match outcome {
            Outcome::HarnessError => {}
            // A lie about the backup, or the guest kernel's own oops: seen, whatever
            // else went wrong.
            Outcome::FalseSuccess | Outcome::GuestOops if unexpected => j.found.push(text()),
            // A harness error can make a backup fail, time out or lose a device.
            Outcome::FailedCleanly | Outcome::GuestHang | Outcome::VolumeVanished if unexpected => {
                j.unmet.push(text())
            }
            Outcome::FalseSuccess
            | Outcome::GuestOops
            | Outcome::FailedCleanly
            | Outcome::GuestHang
            | Outcome::VolumeVanished => {}
        }
    }
    for outcome in &expect.outcomes {
        if !c.outcomes.contains(outcome) {
            j.unmet.push(format!(
                "expected outcome {}, which did not occur",
                outcome.name()
            ));
        }
    }
    for g in &c.generations {
        if g.previous_damaged {
            j.found.push(format!(
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
            j.errors.push(format!(
                "the scenario expects the {kind:?} check, and the run did not record it"
            ));
        }
    }
    for check in &rec.events.checks {
        if !check.passed {
            j.unmet
                .push(format!("check {:?} failed: {}", check.kind, check.detail));
        }
    }

    j.errors.dedup();
    if j.errors.is_empty() {
        let mut reasons = j.found;
        reasons.extend(j.unmet);
        if reasons.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail { reasons }
        }
    } else if !j.found.is_empty() {
        let mut reasons = j.found;
        reasons.push(format!(
            "the run also had harness errors: {}",
            j.errors.join("; ")
        ));
        Verdict::Fail { reasons }
    } else {
        Verdict::CouldNotRun { errors: j.errors }
    }
}

/// `expect.named_writes`: every data-from-the-future block of a file names the stamped
/// write it holds, and at least one does. Filesystem metadata (the journal, bitmaps,
/// inode tables) leaks with the data but is never written by the stamped workload, so
/// it alone is exempt; a block whose owner could not be mapped could not be checked.
fn named_writes(j: &mut Judgement, rec: &Recording, future: &[FoundBlock]) {
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
    let mut unnamed = Vec::new();
    let mut unchecked = Vec::new();
    for b in future.iter().filter(|b| !b.names_write) {
        match owner(b).map(OwnerKind::of) {
            Some(OwnerKind::Metadata) => {}
            Some(OwnerKind::Data) => unnamed.push(b.block),
            Some(OwnerKind::Unknown) | None => unchecked.push(b.block),
        }
    }
    if !unnamed.is_empty() {
        j.found.push(format!(
            "{} data-from-the-future block(s) of files name no stamped write (blocks {})",
            unnamed.len(),
            blocks_text(&unnamed)
        ));
    }
    if !unchecked.is_empty() {
        j.errors.push(format!(
            "named writes could not be checked for {} data-from-the-future block(s) whose owner is not mapped (blocks {})",
            unchecked.len(),
            blocks_text(&unchecked)
        ));
    }
    if !future.is_empty() && future.iter().all(|b| !b.names_write) {
        j.unmet
            .push("no data-from-the-future block names the stamped write it holds".into());
    }
}

/// What the owner text of a block says about it, for `named_writes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OwnerKind {
    /// Filesystem metadata (every part of the block).
    Metadata,
    /// A file, free space, an orphan inode, or a block beyond the filesystem: data the
    /// stamped workload may have written.
    Data,
    /// Not mapped: nobody knows.
    Unknown,
}

impl OwnerKind {
    /// Reads the owner texts of `fsmap::Owner` ("metadata: ...", "not mapped (...)",
    /// parts joined by " + ").
    fn of(owner: &str) -> OwnerKind {
        let parts: Vec<&str> = owner.split(" + ").collect();
        if parts.iter().any(|p| p.starts_with("not mapped")) {
            OwnerKind::Unknown
        } else if parts.iter().all(|p| p.starts_with("metadata: ")) {
            OwnerKind::Metadata
        } else {
            OwnerKind::Data
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_metadata_owners_are_exempt_from_named_writes() {
        assert_eq!(OwnerKind::of("metadata: journal"), OwnerKind::Metadata);
        assert_eq!(
            OwnerKind::of("metadata: inode table of group 0 + metadata: journal"),
            OwnerKind::Metadata
        );
        assert_eq!(OwnerKind::of("/data/f1"), OwnerKind::Data);
        assert_eq!(OwnerKind::of("free space"), OwnerKind::Data);
        assert_eq!(OwnerKind::of("inode 12 (no path)"), OwnerKind::Data);
        assert_eq!(
            OwnerKind::of("metadata: inode table of group 0 + /data/f1"),
            OwnerKind::Data
        );
        assert_eq!(
            OwnerKind::of("not mapped (more than 20000 blocks)"),
            OwnerKind::Unknown
        );
        assert_eq!(
            OwnerKind::of("not mapped (xfs: the mapper reads ext2/ext4 only)"),
            OwnerKind::Unknown
        );
    }
}

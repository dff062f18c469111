//! What "fails the same way" means for a shrink.
//!
//! A run's findings are the product's doing: the block classes found (other than ok
//! and excluded), the run-level outcomes (harness-error is never one) and the checks
//! that failed. The scenario's expectations are never cut, so two runs of drafts of
//! one scenario are judged against the same expectations.
//!
//! - **By the verdict** (the default, for a run that failed): a candidate fails the
//!   same way when its verdict is a failure and its findings are exactly the original
//!   run's. A pass is not the same way; neither is a failure with a finding more or
//!   less (a new symptom is a different bug, a lost one a different failure).
//! - **By findings** (`--keep-findings`, `--keep-finding NAME`): for a scenario that
//!   expects its findings (future-cow-read-live passes by finding data from the
//!   future), the user's "fails" is "the product still does it". A candidate is kept
//!   when it finds every kept finding and nothing the original run did not find,
//!   whatever its verdict.
//!
//! In both, a harness error is never the same way, and a run the budget stopped is no
//! result at all.

use std::collections::BTreeSet;
use std::fmt;

use crate::classify::evaluate;
use crate::model::{BlockClass, Outcome, Verdict};
use crate::record::{CheckKind, Recording};

/// One thing a run found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    Class(BlockClass),
    Outcome(Outcome),
    FailedCheck(CheckKind),
}

fn check_name(k: CheckKind) -> &'static str {
    match k {
        CheckKind::Fsck => "failed-fsck",
        CheckKind::Remount => "failed-remount",
        CheckKind::SkippedFloppy => "failed-skipped-floppy",
        CheckKind::SkippedHangDisk => "failed-skipped-hang-disk",
    }
}

const CHECKS: [CheckKind; 4] = [
    CheckKind::Fsck,
    CheckKind::Remount,
    CheckKind::SkippedFloppy,
    CheckKind::SkippedHangDisk,
];

impl Finding {
    pub fn name(self) -> &'static str {
        match self {
            Finding::Class(c) => c.name(),
            Finding::Outcome(o) => o.name(),
            Finding::FailedCheck(k) => check_name(k),
        }
    }

    /// Every finding a run can have, in name order of the vocabulary.
    pub fn all() -> Vec<Finding> {
        let classes = BlockClass::ALL
            .into_iter()
            .filter(|c| c.is_problem())
            .map(Finding::Class);
        let outcomes = Outcome::ALL
            .into_iter()
            .filter(|o| *o != Outcome::HarnessError)
            .map(Finding::Outcome);
        let checks = CHECKS.into_iter().map(Finding::FailedCheck);
        classes.chain(outcomes).chain(checks).collect()
    }

    pub fn parse(name: &str) -> Result<Finding, GoalError> {
        Finding::all()
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| GoalError::UnknownFinding {
                name: name.to_owned(),
                allowed: names(&Finding::all().into_iter().collect()),
            })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names, comma-separated; "nothing" for none.
pub fn names(set: &BTreeSet<Finding>) -> String {
    if set.is_empty() {
        return "nothing".into();
    }
    set.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

/// What one run came to, as far as a shrink cares.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub verdict: Verdict,
    pub findings: BTreeSet<Finding>,
    /// The run's watchdog ended the guest.
    pub watchdog_fired: bool,
}

impl Observed {
    /// Classifies a recording and judges it against its expectations.
    pub fn of(rec: &Recording) -> Observed {
        let eval = evaluate(rec);
        let mut findings = BTreeSet::new();
        if let Some(c) = &eval.classification {
            findings.extend(c.problem_classes().into_iter().map(Finding::Class));
            findings.extend(
                c.outcomes
                    .iter()
                    .filter(|o| **o != Outcome::HarnessError)
                    .map(|o| Finding::Outcome(*o)),
            );
        }
        findings.extend(
            rec.events
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| Finding::FailedCheck(c.kind)),
        );
        Observed {
            verdict: eval.verdict,
            findings,
            watchdog_fired: rec.events.watchdog_fired,
        }
    }

    /// A run that left no usable recording.
    pub fn harness_error(error: String) -> Observed {
        Observed {
            verdict: Verdict::CouldNotRun {
                errors: vec![error],
            },
            findings: BTreeSet::new(),
            watchdog_fired: false,
        }
    }
}

/// What the user asked to keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The failing verdict with the same findings.
    Verdict,
    /// Every finding of the original run.
    AllFindings,
    /// These findings.
    These(BTreeSet<Finding>),
}

#[derive(Debug, thiserror::Error)]
pub enum GoalError {
    #[error("the run is a harness error, not a product failure: {errors}")]
    HarnessError { errors: String },
    #[error(
        "the run passed: the scenario expects what it found ({found}); to shrink against \
         those findings, pass --keep-findings (all of them) or --keep-finding NAME"
    )]
    PassedWithFindings { found: String },
    #[error("the run passed and found nothing: there is no failure to shrink")]
    PassedClean,
    #[error("the run found nothing to keep (it failed its expectations: {reasons}); leave out --keep-findings to shrink against the verdict")]
    NothingToKeep { reasons: String },
    #[error("--keep-finding {finding}: the run did not find it (it found {found})")]
    NotFound { finding: Finding, found: String },
    #[error("unknown finding \"{name}\"; the findings are: {allowed}")]
    UnknownFinding { name: String, allowed: String },
}

/// Whether a run failed the same way as the original.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judged {
    Same,
    /// How it differs: "passed", "no false-success", "new missing-block", ...
    Differs(String),
}

/// When a candidate run counts as failing the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Goal {
    /// A failing verdict with exactly these findings.
    Fails { findings: BTreeSet<Finding> },
    /// Every finding of `keep`, none outside `original`, any verdict.
    Finds {
        keep: BTreeSet<Finding>,
        original: BTreeSet<Finding>,
    },
}

impl Goal {
    /// The goal for an original run and what the user asked to keep.
    pub fn choose(original: &Observed, keep: &Keep) -> Result<Goal, GoalError> {
        let found = &original.findings;
        match (&original.verdict, keep) {
            (Verdict::CouldNotRun { errors }, _) => Err(GoalError::HarnessError {
                errors: errors.join("; "),
            }),
            (Verdict::Pass, Keep::Verdict) if found.is_empty() => Err(GoalError::PassedClean),
            (Verdict::Pass, Keep::Verdict) => Err(GoalError::PassedWithFindings {
                found: names(found),
            }),
            (Verdict::Fail { .. }, Keep::Verdict) => Ok(Goal::Fails {
                findings: found.clone(),
            }),
            (Verdict::Pass, Keep::AllFindings) if found.is_empty() => Err(GoalError::PassedClean),
            (Verdict::Fail { reasons }, Keep::AllFindings) if found.is_empty() => {
                Err(GoalError::NothingToKeep {
                    reasons: reasons.join("; "),
                })
            }
            (Verdict::Pass | Verdict::Fail { .. }, Keep::AllFindings) => Ok(Goal::Finds {
                keep: found.clone(),
                original: found.clone(),
            }),
            (Verdict::Pass | Verdict::Fail { .. }, Keep::These(these)) => {
                if let Some(missing) = these.iter().find(|f| !found.contains(f)) {
                    return Err(GoalError::NotFound {
                        finding: *missing,
                        found: names(found),
                    });
                }
                Ok(Goal::Finds {
                    keep: these.clone(),
                    original: found.clone(),
                })
            }
        }
    }

    /// Whether `o` fails the same way, and if not how it differs.
    pub fn judge(&self, o: &Observed) -> Judged {
        if let Verdict::CouldNotRun { errors } = &o.verdict {
            return Judged::Differs(format!("harness error: {}", errors.join("; ")));
        }
        let differs = |missing: Vec<Finding>, new: Vec<Finding>| -> Judged {
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!("no {}", names(&missing.into_iter().collect())));
            }
            if !new.is_empty() {
                why.push(format!("new {}", names(&new.into_iter().collect())));
            }
            if why.is_empty() {
                Judged::Same
            } else {
                Judged::Differs(why.join("; "))
            }
        };
        match self {
            Goal::Fails { findings } => {
                if o.verdict == Verdict::Pass {
                    return Judged::Differs(format!("passed (found {})", names(&o.findings)));
                }
                differs(
                    findings.difference(&o.findings).copied().collect(),
                    o.findings.difference(findings).copied().collect(),
                )
            }
            Goal::Finds { keep, original } => differs(
                keep.difference(&o.findings).copied().collect(),
                o.findings.difference(original).copied().collect(),
            ),
        }
    }

    /// The goal in a sentence, for the output and the file's header.
    pub fn describe(&self) -> String {
        match self {
            Goal::Fails { findings } => format!(
                "the run fails its expectations with exactly the original's findings ({})",
                names(findings)
            ),
            Goal::Finds { keep, original } if keep == original => format!(
                "the run finds {} and nothing else, whatever its verdict",
                names(keep)
            ),
            Goal::Finds { keep, original } => format!(
                "the run finds {}, and nothing the original did not ({}), whatever its verdict",
                names(keep),
                names(original)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DFF: Finding = Finding::Class(BlockClass::DataFromTheFuture);
    const FS: Finding = Finding::Outcome(Outcome::FalseSuccess);
    const MISSING: Finding = Finding::Class(BlockClass::MissingBlock);

    fn obs(verdict: &str, findings: &[Finding]) -> Observed {
        Observed {
            verdict: match verdict {
                "pass" => Verdict::Pass,
                "fail" => Verdict::Fail {
                    reasons: vec!["r".into()],
                },
                _ => Verdict::CouldNotRun {
                    errors: vec!["qemu died".into()],
                },
            },
            findings: findings.iter().copied().collect(),
            watchdog_fired: false,
        }
    }

    #[test]
    fn names_parse_back() {
        for f in Finding::all() {
            assert_eq!(Finding::parse(f.name()).unwrap(), f);
        }
        assert!(Finding::parse("harness-error").is_err());
        let e = Finding::parse("future").unwrap_err().to_string();
        assert!(e.contains("data-from-the-future, "), "{e}");
    }

    #[test]
    fn the_goal_follows_the_original_and_what_is_kept() {
        let these = |f: &[Finding]| Keep::These(f.iter().copied().collect());
        let fails = obs("fail", &[DFF, FS]);
        assert_eq!(
            Goal::choose(&fails, &Keep::Verdict).unwrap(),
            Goal::Fails {
                findings: [DFF, FS].into()
            }
        );
        let expected = obs("pass", &[DFF, FS]);
        let e = Goal::choose(&expected, &Keep::Verdict).unwrap_err();
        assert!(
            e.to_string().contains("--keep-findings"),
            "the error says what to do: {e}"
        );
        assert_eq!(
            Goal::choose(&expected, &Keep::AllFindings).unwrap(),
            Goal::Finds {
                keep: [DFF, FS].into(),
                original: [DFF, FS].into()
            }
        );
        assert!(matches!(
            Goal::choose(&expected, &these(&[MISSING])),
            Err(GoalError::NotFound { .. })
        ));
        assert!(matches!(
            Goal::choose(&obs("pass", &[]), &Keep::AllFindings),
            Err(GoalError::PassedClean)
        ));
        assert!(matches!(
            Goal::choose(&obs("fail", &[]), &Keep::AllFindings),
            Err(GoalError::NothingToKeep { .. })
        ));
        assert!(matches!(
            Goal::choose(&obs("error", &[DFF]), &Keep::AllFindings),
            Err(GoalError::HarnessError { .. })
        ));
    }

    #[test]
    fn same_way_or_how_it_differs() {
        let by_verdict = Goal::Fails {
            findings: [DFF, FS].into(),
        };
        let all = Goal::Finds {
            keep: [DFF, FS].into(),
            original: [DFF, FS].into(),
        };
        let one = Goal::Finds {
            keep: [DFF].into(),
            original: [DFF, FS].into(),
        };
        let table: &[(&Goal, Observed, Option<&str>)] = &[
            (&by_verdict, obs("fail", &[DFF, FS]), None),
            (
                &by_verdict,
                obs("pass", &[DFF, FS]),
                Some("passed (found data-from-the-future, false-success)"),
            ),
            (&by_verdict, obs("fail", &[DFF]), Some("no false-success")),
            (
                &by_verdict,
                obs("fail", &[DFF, FS, MISSING]),
                Some("new missing-block"),
            ),
            (
                &by_verdict,
                obs("error", &[DFF, FS]),
                Some("harness error: qemu died"),
            ),
            (&all, obs("pass", &[DFF, FS]), None),
            (&all, obs("fail", &[DFF, FS]), None),
            (
                &all,
                obs("pass", &[]),
                Some("no data-from-the-future, false-success"),
            ),
            (
                &all,
                obs("error", &[DFF, FS]),
                Some("harness error: qemu died"),
            ),
            (&one, obs("fail", &[DFF]), None),
            (
                &one,
                obs("fail", &[DFF, MISSING]),
                Some("new missing-block"),
            ),
            (&one, obs("fail", &[FS]), Some("no data-from-the-future")),
        ];
        for (goal, o, want) in table {
            let want = match want {
                None => Judged::Same,
                Some(why) => Judged::Differs(why.to_string()),
            };
            assert_eq!(goal.judge(o), want, "{goal:?} {o:?}");
        }
    }
}

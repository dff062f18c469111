//! Progress-paced runs (`bw-workload ... --paced FILE`): the harness grants a cumulative
//! allowance as the backup advances, the workload does operations while what it has done
//! is below it, and reports what it has done. How much a `during` workload writes, and in
//! which order relative to the backup's reads, then depends on the seed and the backup's
//! progress only, never on how fast the machine is.
//!
//! The allowance file (written by the harness): one entry per line, each ending in '\n';
//! an unterminated last line is ignored until it is complete.
//! - an amount: a size ("1048576", "1MiB") for byte pacing, or "Nops" for op pacing;
//!   cumulative, never decreasing, all in one unit;
//! - "end", as the last line: the amount is final; the run stops once it is used.
//!
//! The harness may append lines or replace the file (write a temp file, then rename); a
//! missing or empty file leaves the allowance as it was.
//!
//! The progress file, FILE.done (written by the workload, temp file + rename, so a reader
//! never sees half of it): one JSON [`PacedProgress`]. It appears once the working set
//! exists (the workload is ready; the harness waits for it before the snapshot), is
//! rewritten after every operation, and a last time with `stopped_by` when the run ends.
//!
//! Operations run while done < allowance, so a run overshoots by at most one operation,
//! whose size comes from the seed. Both files must live outside the volumes under test
//! (a frozen filesystem would block them).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::StopReason;
use crate::units::parse_size;

/// How often the allowance file is read while waiting for it to grow.
const POLL: Duration = Duration::from_millis(5);

/// What an allowance counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaceUnit {
    /// Data bytes written by operations (the summary's `bytes`).
    Bytes,
    /// Operations completed (the summary's `ops`).
    Ops,
}

impl std::fmt::Display for PaceUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PaceUnit::Bytes => "bytes",
            PaceUnit::Ops => "ops",
        })
    }
}

/// What the allowance file grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allowance {
    /// None until the first amount.
    pub unit: Option<PaceUnit>,
    /// Cumulative amount granted, in `unit`.
    pub amount: u64,
    /// The amount is final: the run stops once it has used it.
    pub end: bool,
}

/// What is wrong with an allowance file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllowanceProblem {
    #[error("{0:?} is neither an amount (a size such as 1048576 or 1MiB, or a count such as 12ops) nor \"end\"")]
    NotAnAmount(String),
    #[error("an entry after \"end\"")]
    AfterEnd,
    #[error("the unit changed from {from} to {to}")]
    MixedUnits { from: PaceUnit, to: PaceUnit },
    #[error("the allowance went down from {from} to {to}")]
    Decreased { from: u64, to: u64 },
    #[error("the allowance changed after \"end\"")]
    ChangedAfterEnd,
}

/// Why a paced run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum PacedError {
    #[error("cannot read the allowance file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("allowance file {path}, line {line}")]
    Bad {
        path: PathBuf,
        line: usize,
        #[source]
        problem: AllowanceProblem,
    },
    #[error("allowance file {path}, since it was last read")]
    Changed {
        path: PathBuf,
        #[source]
        problem: AllowanceProblem,
    },
    #[error("cannot write the progress file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the allowance in {path} has not grown for {} s (is the harness gone?)", waited.as_secs())]
    Stalled { path: PathBuf, waited: Duration },
}

/// What a paced workload has done: the content of FILE.done.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PacedProgress {
    /// The allowance last read.
    pub allowance: Allowance,
    /// What counts against it, in its unit (0 before the first amount).
    pub done: u64,
    pub ops: u64,
    pub bytes: u64,
    /// 4 KiB data blocks written, setup included.
    pub writes: u64,
    /// Stamp sequence number of the last block written.
    pub last_seq: Option<u64>,
    pub error_count: u64,
    pub last_error: Option<String>,
    /// Set in the last progress of a run: why it ended. Nothing is written after it.
    pub stopped_by: Option<StopReason>,
}

/// Parses the complete lines of an allowance file. On error, the 1-based line.
pub fn parse_allowance(text: &str) -> Result<Allowance, (usize, AllowanceProblem)> {
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut allowance = Allowance::default();
    for (index, line) in complete.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fail = |problem| Err((index + 1, problem));
        if allowance.end {
            return fail(AllowanceProblem::AfterEnd);
        }
        if line == "end" {
            allowance.end = true;
            continue;
        }
        let Some((unit, amount)) = parse_amount(line) else {
            return fail(AllowanceProblem::NotAnAmount(line.to_string()));
        };
        match allowance.unit {
            Some(from) if from != unit => {
                return fail(AllowanceProblem::MixedUnits { from, to: unit })
            }
            _ => {}
        }
        if amount < allowance.amount {
            return fail(AllowanceProblem::Decreased {
                from: allowance.amount,
                to: amount,
            });
        }
        allowance.unit = Some(unit);
        allowance.amount = amount;
    }
    Ok(allowance)
}

fn parse_amount(text: &str) -> Option<(PaceUnit, u64)> {
    if let Some(count) = text.strip_suffix("ops") {
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return count.parse().ok().map(|n| (PaceUnit::Ops, n));
    }
    parse_size(text).map(|n| (PaceUnit::Bytes, n))
}

/// The paced side of a run: reads the allowance, waits for it, writes the progress.
pub(crate) struct Pacer {
    path: PathBuf,
    progress: PathBuf,
    progress_tmp: PathBuf,
    stall: Duration,
    allowance: Allowance,
}

impl Pacer {
    pub(crate) fn new(path: &Path, stall: Duration) -> Pacer {
        let with_suffix = |suffix: &str| {
            let mut name = OsString::from(path.as_os_str());
            name.push(suffix);
            PathBuf::from(name)
        };
        Pacer {
            path: path.to_path_buf(),
            progress: with_suffix(".done"),
            progress_tmp: with_suffix(".done.tmp"),
            stall,
            allowance: Allowance::default(),
        }
    }

    pub(crate) fn allowance(&self) -> Allowance {
        self.allowance
    }

    /// Waits until `done` (in the allowance's unit) is below the allowance. None: go on
    /// with the next operation; Some: the run ends, because the final allowance is used
    /// or `stop` said so.
    pub(crate) fn wait(
        &mut self,
        done: impl Fn(PaceUnit) -> u64,
        stop: impl Fn() -> Option<StopReason>,
    ) -> Result<Option<StopReason>, PacedError> {
        let below = |a: &Allowance| a.unit.is_some_and(|unit| done(unit) < a.amount);
        // Known to be below: no need to read the file before every operation.
        if below(&self.allowance) {
            return Ok(None);
        }
        let mut seen = self.allowance;
        let mut since = Instant::now();
        loop {
            self.refresh()?;
            if below(&self.allowance) {
                return Ok(None);
            }
            if self.allowance.end {
                return Ok(Some(StopReason::AllowanceUsed));
            }
            if let Some(reason) = stop() {
                return Ok(Some(reason));
            }
            if self.allowance != seen {
                seen = self.allowance;
                since = Instant::now();
            }
            let waited = since.elapsed();
            if waited >= self.stall {
                return Err(PacedError::Stalled {
                    path: self.path.clone(),
                    waited,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Reads the allowance file. A missing file, or one without a complete entry, leaves
    /// the allowance as it was (the harness has not written it yet, or is replacing it).
    fn refresh(&mut self) -> Result<(), PacedError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(PacedError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let new = parse_allowance(&text).map_err(|(line, problem)| PacedError::Bad {
            path: self.path.clone(),
            line,
            problem,
        })?;
        if new.unit.is_none() && !new.end {
            return Ok(());
        }
        let old = self.allowance;
        let changed = |problem| {
            Err(PacedError::Changed {
                path: self.path.clone(),
                problem,
            })
        };
        match (old.unit, new.unit) {
            (Some(from), Some(to)) if from != to => {
                return changed(AllowanceProblem::MixedUnits { from, to })
            }
            _ => {}
        }
        if new.amount < old.amount {
            return changed(AllowanceProblem::Decreased {
                from: old.amount,
                to: new.amount,
            });
        }
        if old.end && new != old {
            return changed(AllowanceProblem::ChangedAfterEnd);
        }
        self.allowance = new;
        Ok(())
    }

    /// Replaces the progress file (temp file + rename: readers see the old or the new).
    pub(crate) fn write_progress(&self, progress: &PacedProgress) -> Result<(), PacedError> {
        let write_err = |source| PacedError::Write {
            path: self.progress.clone(),
            source,
        };
        let mut text = serde_json::to_string(progress).map_err(|e| write_err(e.into()))?;
        text.push('\n');
        fs::write(&self.progress_tmp, text).map_err(write_err)?;
        fs::rename(&self.progress_tmp, &self.progress).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowance(unit: Option<PaceUnit>, amount: u64, end: bool) -> Allowance {
        Allowance { unit, amount, end }
    }

    #[test]
    fn allowance_files() {
        let bytes = Some(PaceUnit::Bytes);
        let ops = Some(PaceUnit::Ops);
        let cases: &[(&str, Allowance)] = &[
            ("", allowance(None, 0, false)),
            ("\n\n", allowance(None, 0, false)),
            ("1048576\n", allowance(bytes, 1 << 20, false)),
            ("1MiB\n2MiB\n", allowance(bytes, 2 << 20, false)),
            // The last line is still being written.
            ("1MiB\n2Mi", allowance(bytes, 1 << 20, false)),
            ("1MiB\n 3MiB \nend\n", allowance(bytes, 3 << 20, true)),
            ("4ops\n9ops\n", allowance(ops, 9, false)),
            ("0ops\nend\n", allowance(ops, 0, true)),
            ("end\n", allowance(None, 0, true)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_allowance(text), Ok(*want), "{text:?}");
        }
    }

    #[test]
    fn bad_allowance_files_name_the_line() {
        let cases: &[(&str, usize, AllowanceProblem)] = &[
            ("1MB\n", 1, AllowanceProblem::NotAnAmount("1MB".into())),
            ("1MiB\n-5\n", 2, AllowanceProblem::NotAnAmount("-5".into())),
            ("3ops\nend\n4ops\n", 3, AllowanceProblem::AfterEnd),
            (
                "3ops\n4096\n",
                2,
                AllowanceProblem::MixedUnits {
                    from: PaceUnit::Ops,
                    to: PaceUnit::Bytes,
                },
            ),
            (
                "8KiB\n4KiB\n",
                2,
                AllowanceProblem::Decreased {
                    from: 8192,
                    to: 4096,
                },
            ),
        ];
        for (text, line, problem) in cases {
            assert_eq!(
                parse_allowance(text),
                Err((*line, problem.clone())),
                "{text:?}"
            );
        }
    }

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("bw-paced-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    #[test]
    fn the_pacer_waits_goes_and_ends() {
        let dir = temp_dir("pacer");
        let file = dir.0.join("w0");
        let mut pacer = Pacer::new(&file, Duration::from_secs(60));
        let never = || None;
        // Nothing granted yet: the stop request is what ends the wait.
        let stopped = pacer.wait(|_| 0, || Some(StopReason::Signal)).unwrap();
        assert_eq!(stopped, Some(StopReason::Signal));
        fs::write(&file, "2ops\n").unwrap();
        assert_eq!(pacer.wait(|_| 1, never).unwrap(), None);
        fs::write(&file, "2ops\nend\n").unwrap();
        assert_eq!(
            pacer.wait(|_| 2, never).unwrap(),
            Some(StopReason::AllowanceUsed)
        );
        assert_eq!(pacer.allowance(), allowance(Some(PaceUnit::Ops), 2, true));
        // Emptied while being replaced: no news, not a decrease.
        fs::write(&file, "").unwrap();
        assert_eq!(
            pacer.wait(|_| 2, never).unwrap(),
            Some(StopReason::AllowanceUsed)
        );
    }

    #[test]
    fn the_pacer_refuses_a_shrinking_or_relabelled_allowance() {
        let dir = temp_dir("shrink");
        let file = dir.0.join("w0");
        let mut pacer = Pacer::new(&file, Duration::from_secs(60));
        fs::write(&file, "8KiB\n").unwrap();
        assert_eq!(pacer.wait(|_| 0, || None).unwrap(), None);
        fs::write(&file, "4KiB\n").unwrap();
        let err = pacer.wait(|_| 8192, || None).unwrap_err();
        assert!(
            matches!(
                err,
                PacedError::Changed {
                    problem: AllowanceProblem::Decreased {
                        from: 8192,
                        to: 4096
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        fs::write(&file, "9ops\n").unwrap();
        let err = pacer.wait(|_| 8192, || None).unwrap_err();
        assert!(
            matches!(
                err,
                PacedError::Changed {
                    problem: AllowanceProblem::MixedUnits { .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_wait_has_a_deadline() {
        let dir = temp_dir("stall");
        let file = dir.0.join("w0");
        fs::write(&file, "1ops\n").unwrap();
        let mut pacer = Pacer::new(&file, Duration::from_millis(30));
        let err = pacer.wait(|_| 1, || None).unwrap_err();
        assert!(matches!(err, PacedError::Stalled { .. }), "{err:?}");
        assert!(crate::error_chain(&err).contains("has not grown"));
    }

    #[test]
    fn progress_is_replaced_whole() {
        let dir = temp_dir("progress");
        let file = dir.0.join("w0");
        let pacer = Pacer::new(&file, Duration::from_secs(1));
        let mut progress = PacedProgress {
            allowance: allowance(Some(PaceUnit::Bytes), 4096, false),
            done: 4096,
            ops: 1,
            bytes: 4096,
            writes: 1,
            last_seq: Some(1),
            error_count: 0,
            last_error: None,
            stopped_by: None,
        };
        pacer.write_progress(&progress).unwrap();
        progress.stopped_by = Some(StopReason::AllowanceUsed);
        pacer.write_progress(&progress).unwrap();
        let text = fs::read_to_string(dir.0.join("w0.done")).unwrap();
        let back: PacedProgress = serde_json::from_str(&text).unwrap();
        assert_eq!(back, progress);
        assert!(!dir.0.join("w0.done.tmp").exists());
    }
}

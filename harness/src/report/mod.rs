//! Reports under reports/<run-id>/, built once from the accumulated recording when a run
//! ends (collect first, write once): summary.json, blocks.csv, junit.xml, index.html,
//! repro.txt, the scenario as run, and the recording itself (recording.bwrec), from which
//! `blockwitness report DIR` rebuilds everything else. console.log is copied in by the run.

mod csv;
mod html;
pub mod junit;
mod summary;

use std::path::{Path, PathBuf};

pub use summary::Summary;

use crate::classify::{evaluate, Classification};
use crate::model::{BlockClass, Outcome, Verdict};
use crate::record::{RecordError, Recording, RECORDING_FILE};

/// The files a report directory holds.
pub const SUMMARY_FILE: &str = "summary.json";
pub const BLOCKS_FILE: &str = "blocks.csv";
pub const JUNIT_FILE: &str = "junit.xml";
pub const HTML_FILE: &str = "index.html";
pub const REPRO_FILE: &str = "repro.txt";
pub const SCENARIO_FILE: &str = "scenario.toml";
pub const CONSOLE_FILE: &str = "console.log";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write report file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot rebuild the report in {dir}: no recording there")]
    NoRecording {
        dir: PathBuf,
        #[source]
        source: RecordError,
    },
    #[error("cannot save the recording")]
    Record(#[source] RecordError),
}

/// What writing a report produced: where, the verdict (for the exit code), and what
/// was found.
#[derive(Debug)]
pub struct ReportOutcome {
    pub dir: PathBuf,
    pub verdict: Verdict,
    pub summary: Summary,
    /// Block classes found that count against a clean run.
    pub found: Vec<BlockClass>,
    /// Run-level outcomes found.
    pub outcomes: Vec<Outcome>,
}

impl std::fmt::Display for ReportOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "{}: {} ({} on {}, seed {})",
            s.run.run_id,
            self.verdict.name().to_uppercase(),
            s.run.scenario,
            s.run.image,
            s.run.seed
        )?;
        writeln!(f, "  blocks: {}", s.found_counts(" ").join(", "))?;
        if !s.outcomes.is_empty() {
            writeln!(f, "  outcomes: {}", s.outcomes.join(", "))?;
        }
        for r in self.verdict.reasons() {
            writeln!(f, "  - {r}")?;
        }
        writeln!(f, "  repro: {}", s.run.repro)?;
        write!(f, "  report: {}", self.dir.join(HTML_FILE).display())
    }
}

/// Everything a report is made of, rendered in memory before anything is written.
struct Rendered {
    files: Vec<(&'static str, Vec<u8>)>,
    verdict: Verdict,
    summary: Summary,
    found: Vec<BlockClass>,
    outcomes: Vec<Outcome>,
}

impl Rendered {
    fn outcome(self, dir: &Path) -> ReportOutcome {
        ReportOutcome {
            dir: dir.to_owned(),
            verdict: self.verdict,
            summary: self.summary,
            found: self.found,
            outcomes: self.outcomes,
        }
    }
}

/// The run as one JUnit test case.
fn junit_suite(s: &Summary, verdict: &Verdict) -> junit::Suite {
    let suite = format!("blockwitness.{}", s.run.scenario);
    let counts = s.found_counts("=");
    junit::Suite {
        name: suite.clone(),
        cases: vec![junit::Case {
            classname: suite,
            name: format!("{}@{}#seed{}", s.run.scenario, s.run.image, s.run.seed),
            seconds: s.total_seconds,
            exit: verdict.exit(),
            message: verdict.reasons().first().cloned().unwrap_or_default(),
            detail: verdict.reasons().join("\n"),
            system_out: Some(format!(
                "verdict: {}\nblocks: {}\noutcomes: {}\nimage: {} kernel: {} accelerator: {}\nrepro: {}",
                s.verdict,
                counts.join(" "),
                s.outcomes.join(" "),
                s.run.image,
                s.run.kernel,
                s.run.accelerator,
                s.run.repro
            )),
        }],
    }
}

fn render(rec: &Recording) -> Rendered {
    let eval = evaluate(rec);
    let empty = Classification {
        generations: Vec::new(),
        outcomes: Default::default(),
        counts: Default::default(),
    };
    let c = eval.classification.as_ref().unwrap_or(&empty);
    let summary = Summary::build(rec, c, &eval.verdict);
    let json = serde_json::to_vec_pretty(&summary).expect("summary serializes");
    let files = vec![
        (SUMMARY_FILE, json),
        (BLOCKS_FILE, csv::render(rec, c).into_bytes()),
        (
            JUNIT_FILE,
            junit::render("blockwitness", &[junit_suite(&summary, &eval.verdict)]).into_bytes(),
        ),
        (
            HTML_FILE,
            html::render(rec, c, &summary, &eval.verdict).into_bytes(),
        ),
        (REPRO_FILE, format!("{}\n", rec.run.repro).into_bytes()),
    ];
    Rendered {
        files,
        verdict: eval.verdict,
        summary,
        found: c.problem_classes().into_iter().collect(),
        outcomes: c.outcomes.iter().copied().collect(),
    }
}

/// Creates a new, unique report directory `<parent>/<stem>` (or `<stem>-2`, `-3`, ...
/// when that exists): two runs or diffs started in the same second never share one.
pub fn new_dir(parent: &Path, stem: &str) -> Result<PathBuf, ReportError> {
    let err = |path: &Path, source| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
    let mut n = 1u32;
    loop {
        let path = if n == 1 {
            parent.join(stem)
        } else {
            parent.join(format!("{stem}-{n}"))
        };
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
            Err(e) => return Err(err(&path, e)),
        }
    }
}

/// Writes one file of a report; the error names the path.
pub(crate) fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|source| ReportError::Write { path, source })
}

/// Writes a complete report for a recording into `dir` (created if needed).
/// `scenario_text` is the scenario file as run; None keeps an existing scenario.toml.
pub fn write(
    dir: &Path,
    rec: &Recording,
    scenario_text: Option<&str>,
) -> Result<ReportOutcome, ReportError> {
    let rendered = render(rec);
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_owned(),
        source,
    })?;
    rec.save(&dir.join(RECORDING_FILE))
        .map_err(ReportError::Record)?;
    if let Some(text) = scenario_text {
        write_file(dir, SCENARIO_FILE, text.as_bytes())?;
    }
    for (name, bytes) in &rendered.files {
        write_file(dir, name, bytes)?;
    }
    Ok(rendered.outcome(dir))
}

/// `blockwitness report DIR`: rebuilds summary, CSV, JUnit and HTML from the saved
/// recording (classification runs again, so a newer classifier gives a newer verdict).
pub fn rebuild_report(dir: &Path) -> Result<ReportOutcome, ReportError> {
    let rec =
        Recording::load(&dir.join(RECORDING_FILE)).map_err(|source| ReportError::NoRecording {
            dir: dir.to_owned(),
            source,
        })?;
    let rendered = render(&rec);
    for (name, bytes) in &rendered.files {
        write_file(dir, name, bytes)?;
    }
    Ok(rendered.outcome(dir))
}

/// Where a generation's truth came from, in one sentence for the reader of a report.
pub(crate) fn truth_from(state: &crate::record::TruthState) -> String {
    use crate::record::TruthState;
    match state {
        TruthState::Taken => "taken by the harness at the announced instant".into(),
        TruthState::NeverAnnounced => {
            "none: the pipeline never announced an instant for this backup".into()
        }
        TruthState::NotTaken { why } => format!("none: the harness did not take it ({why})"),
        TruthState::AtCut { cut } => {
            let j = &cut.judgement;
            let mut s = format!(
                "the history oracle's cut (no instant was announced: the product cannot): found on {}, cut {} on the history's clock, span {}, {} of {} blocks explained, {} block(s) in flight at the cut",
                cut.image.describe(),
                j.cut_ns.map_or("before every write".to_string(), |n| format!("{n} ns")),
                j.span,
                j.explained,
                j.judged,
                cut.in_flight
            );
            if !j.consistent() {
                s.push_str("; that image is NOT one consistent cut");
            }
            if let Some(b) = &cut.backup {
                s.push_str(&format!(
                    "; the backup on its own: cut {}, span {}, {} of {} blocks explained{}",
                    b.cut_ns
                        .map_or("before every write".to_string(), |n| format!("{n} ns")),
                    b.span,
                    b.explained,
                    b.judged,
                    if b.consistent() {
                        ""
                    } else {
                        ", NOT one consistent cut"
                    }
                ));
            }
            s
        }
    }
}

/// Escapes text for HTML.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Whether XML 1.0 allows the character at all (escaped or not).
fn xml_allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}

/// Escapes text for XML; the characters XML forbids (most C0 controls, U+FFFE, U+FFFF)
/// are left out.
pub(crate) fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().filter(|c| xml_allowed(*c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_dirs_started_in_the_same_second_never_collide() {
        let parent = tempfile::tempdir().unwrap();
        let a = new_dir(parent.path(), "diff-1700000000").unwrap();
        let b = new_dir(parent.path(), "diff-1700000000").unwrap();
        let c = new_dir(parent.path(), "diff-1700000000").unwrap();
        assert_eq!(a, parent.path().join("diff-1700000000"));
        assert_eq!(b, parent.path().join("diff-1700000000-2"));
        assert_eq!(c, parent.path().join("diff-1700000000-3"));
        assert!(a.is_dir() && b.is_dir() && c.is_dir());
    }
}

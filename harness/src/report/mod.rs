//! Reports under reports/<run-id>/, built once from the accumulated recording when a run
//! ends (collect first, write once): summary.json, blocks.csv, junit.xml, index.html,
//! repro.txt, the scenario as run, and the recording itself (recording.bwrec), from which
//! `blockwitness report DIR` rebuilds everything else. console.log is copied in by the run.

mod csv;
mod html;
mod junit;
mod summary;

use std::path::{Path, PathBuf};

pub use summary::Summary;

use crate::classify::{evaluate, Classification, Verdict};
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

/// What writing a report produced: where, and the verdict (for the exit code).
#[derive(Debug)]
pub struct ReportOutcome {
    pub dir: PathBuf,
    pub verdict: Verdict,
    pub summary: Summary,
}

impl std::fmt::Display for ReportOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "{}: {} ({} on {}, seed {})",
            s.run_id,
            self.verdict.name().to_uppercase(),
            s.scenario,
            s.image,
            s.seed
        )?;
        let counts: Vec<String> = s
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        writeln!(f, "  blocks: {}", counts.join(", "))?;
        if !s.outcomes.is_empty() {
            writeln!(f, "  outcomes: {}", s.outcomes.join(", "))?;
        }
        for r in self.verdict.reasons() {
            writeln!(f, "  - {r}")?;
        }
        writeln!(f, "  repro: {}", s.repro)?;
        write!(f, "  report: {}", self.dir.join(HTML_FILE).display())
    }
}

/// Everything a report is made of, rendered in memory before anything is written.
struct Rendered {
    files: Vec<(&'static str, Vec<u8>)>,
    verdict: Verdict,
    summary: Summary,
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
            junit::render(&summary, &eval.verdict).into_bytes(),
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
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
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
    Ok(ReportOutcome {
        dir: dir.to_owned(),
        verdict: rendered.verdict,
        summary: rendered.summary,
    })
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
    Ok(ReportOutcome {
        dir: dir.to_owned(),
        verdict: rendered.verdict,
        summary: rendered.summary,
    })
}

/// Escapes text for HTML and XML.
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

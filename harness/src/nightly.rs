//! `blockwitness nightly`: every scenario on every image it names, over its seeds, one
//! after another, and one report over all of them: the per-run verdicts with links to
//! their reports, the detector matrix (each fault kind, the class or outcome it must
//! produce, and whether it did), JUnit XML and the total time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::events::Reporter;
use crate::model::{BlockClass, Exit, FaultKind, Outcome, Verdict};
use crate::plan::Plan;
use crate::report::junit;
use crate::report::{escape, write_file, ReportError};
use crate::run::{run_plan, RunOptions, RunResult};
use crate::scenario::{self, Scenario};

/// What to run.
#[derive(Clone, Debug)]
pub struct NightlyOptions {
    pub scenarios: Vec<PathBuf>,
    /// Only these images (default: each scenario's own list).
    pub images: Option<Vec<String>>,
    /// Run only the first `n` seeds of each scenario (default: all of them).
    pub max_seeds: Option<u32>,
    /// Only scenarios whose name contains this.
    pub filter: Option<String>,
    pub run: RunOptions,
}

/// One run of the nightly, as the nightly report lists it.
#[derive(Clone, Debug)]
pub struct NightlyRun {
    pub scenario: String,
    /// The pipeline under test (`reference`, `dm-snapshot`, `lvm`, `external`).
    pub pipeline: String,
    pub file: String,
    pub image: String,
    pub seed: u64,
    pub verdict: Verdict,
    pub report: String,
    pub seconds: f64,
    pub found_classes: Vec<BlockClass>,
    pub outcomes: Vec<Outcome>,
    /// Each injected fault.
    pub faults: Vec<FaultKind>,
    pub expected_classes: Vec<BlockClass>,
    pub expected_outcomes: Vec<Outcome>,
}

impl NightlyRun {
    /// The classes and outcomes the run found, by name.
    fn found_names(&self) -> Vec<&'static str> {
        let classes = self.found_classes.iter().map(|c| c.name());
        classes
            .chain(self.outcomes.iter().map(|o| o.name()))
            .collect()
    }
}

/// summary.json's shape of a run: names where the run holds enums.
impl Serialize for NightlyRun {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Row<'a> {
            scenario: &'a str,
            pipeline: &'a str,
            file: &'a str,
            image: &'a str,
            seed: u64,
            verdict: &'static str,
            exit_code: u8,
            reasons: &'a [String],
            report: &'a str,
            seconds: f64,
            found_classes: &'a [BlockClass],
            outcomes: &'a [Outcome],
            /// `layer/kind` of each injected fault.
            faults: Vec<String>,
            expected: Vec<&'static str>,
        }
        let expected = self.expected_classes.iter().map(|c| c.name());
        Row {
            scenario: &self.scenario,
            pipeline: &self.pipeline,
            file: &self.file,
            image: &self.image,
            seed: self.seed,
            verdict: self.verdict.name(),
            exit_code: self.verdict.exit().code(),
            reasons: self.verdict.reasons(),
            report: &self.report,
            seconds: self.seconds,
            found_classes: &self.found_classes,
            outcomes: &self.outcomes,
            faults: self.faults.iter().map(|f| f.label()).collect(),
            expected: expected
                .chain(self.expected_outcomes.iter().map(|o| o.name()))
                .collect(),
        }
        .serialize(s)
    }
}

/// Whether a row of the detector matrix was shown to fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowStatus {
    NotRun,
    /// A harness error kept a run from judging the detector.
    NotMeasured,
    Yes,
    No,
}

impl RowStatus {
    pub fn label(self) -> &'static str {
        match self {
            RowStatus::NotRun => "not run",
            RowStatus::NotMeasured => "not measured (harness error)",
            RowStatus::Yes => "yes",
            RowStatus::No => "NO",
        }
    }
}

/// One row of the detector matrix: a fault (or none) under one pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixRow {
    /// `layer/kind`, or `none` for the clean scenarios.
    pub fault: String,
    /// The pipeline under test.
    pub pipeline: String,
    /// What the scenarios say it must produce.
    pub must_produce: Vec<String>,
    pub scenarios: Vec<String>,
    pub runs: u32,
    /// Runs whose verdict was a pass (the expected class/outcome found, nothing else).
    pub passed: u32,
    pub harness_errors: u32,
}

impl MatrixRow {
    pub fn status(&self) -> RowStatus {
        if self.runs == 0 {
            RowStatus::NotRun
        } else if self.harness_errors > 0 {
            RowStatus::NotMeasured
        } else if self.passed == self.runs {
            RowStatus::Yes
        } else {
            RowStatus::No
        }
    }
}

/// The whole nightly.
#[derive(Clone, Debug, Serialize)]
pub struct NightlyReport {
    pub started_unix: u64,
    pub seconds: f64,
    pub runs: Vec<NightlyRun>,
    pub invalid_scenarios: Vec<String>,
    pub matrix: Vec<MatrixRow>,
    /// Every block class and run-level outcome, and the scenarios that produced it.
    pub coverage: BTreeMap<String, Vec<String>>,
    pub dir: String,
}

impl NightlyReport {
    /// Pass when every run passed; a harness error when a scenario is invalid or
    /// nothing ran; else the worst run's.
    pub fn exit(&self) -> Exit {
        let worst = self
            .runs
            .iter()
            .map(|r| r.verdict.exit())
            .max()
            .unwrap_or(Exit::HarnessError);
        if self.invalid_scenarios.is_empty() {
            worst
        } else {
            Exit::HarnessError
        }
    }
}

fn load_all(paths: &[PathBuf], filter: Option<&str>) -> (Vec<Scenario>, Vec<String>) {
    let report = scenario::check(paths);
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (path, result) in report.files {
        match result {
            Ok(s) if filter.is_none_or(|f| s.name.contains(f)) => ok.push(s),
            Ok(_) => {}
            Err(e) => bad.push(format!("{}: {e}", path.display())),
        }
    }
    (ok, bad)
}

/// Runs the nightly and writes `reports/nightly-<time>/`.
pub fn nightly(opts: &NightlyOptions, reporter: &dyn Reporter) -> NightlyReport {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = opts.run.reports_dir.join(format!("nightly-{started_unix}"));
    let (scenarios, invalid) = load_all(&opts.scenarios, opts.filter.as_deref());
    let mut runs = Vec::new();
    for s in &scenarios {
        let images = match &opts.images {
            Some(only) => s
                .images
                .iter()
                .filter(|i| only.contains(i))
                .cloned()
                .collect(),
            None => s.images.clone(),
        };
        let seeds: Vec<u64> = s
            .seed_list()
            .into_iter()
            .take(opts.max_seeds.map_or(usize::MAX, |n| n as usize))
            .collect();
        for image in &images {
            for &seed in &seeds {
                let plan = Plan::resolve(s, seed, image);
                let result = run_plan(&plan, &s.source, &opts.run, reporter);
                runs.push(nightly_run(s, &result));
            }
        }
    }
    let mut report = NightlyReport {
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        matrix: matrix(&scenarios, &runs),
        coverage: coverage(&runs),
        runs,
        invalid_scenarios: invalid,
        dir: dir.display().to_string(),
    };
    if let Err(e) = write(&dir, &report) {
        report.invalid_scenarios.push(format!(
            "writing the nightly report: {}",
            crate::error_chain(&e)
        ));
    }
    report
}

fn nightly_run(s: &Scenario, r: &RunResult) -> NightlyRun {
    NightlyRun {
        scenario: s.name.clone(),
        pipeline: s.pipeline.kind().name().to_string(),
        file: s.path.display().to_string(),
        image: r.image.clone(),
        seed: r.seed,
        verdict: r.verdict.clone(),
        report: r.report_dir.display().to_string(),
        seconds: r.elapsed.as_secs_f64(),
        found_classes: r.found_classes.clone(),
        outcomes: r.outcomes.clone(),
        faults: s.faults.iter().map(|f| f.spec.kind()).collect(),
        expected_classes: s.expect.classes.iter().copied().collect(),
        expected_outcomes: s.expect.outcomes.iter().copied().collect(),
    }
}

/// One row per fault kind and pipeline (and one per clean scenario).
fn matrix(scenarios: &[Scenario], runs: &[NightlyRun]) -> Vec<MatrixRow> {
    let mut rows: BTreeMap<(String, String), MatrixRow> = BTreeMap::new();
    for s in scenarios {
        let pipeline = s.pipeline.kind().name().to_string();
        // A scenario without faults is a row of its own: it must stay clean (or fail the
        // way it says, as a too-small COW file must).
        let keys: Vec<String> = if s.faults.is_empty() {
            vec![format!("none ({})", s.name)]
        } else {
            s.faults.iter().map(|f| f.spec.kind().label()).collect()
        };
        let mut must: Vec<String> = s
            .expect
            .classes
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        must.extend(s.expect.outcomes.iter().map(|o| o.name().to_string()));
        if must.is_empty() {
            must.push(if s.expect.allow_outcomes.is_empty() {
                "clean".into()
            } else {
                "clean or failed cleanly".into()
            });
        } else if s.expect.allow_clean {
            must.push("or clean (recovered)".into());
        }
        for key in keys {
            let row = rows
                .entry((key.clone(), pipeline.clone()))
                .or_insert_with(|| MatrixRow {
                    fault: key.clone(),
                    pipeline: pipeline.clone(),
                    must_produce: Vec::new(),
                    scenarios: Vec::new(),
                    runs: 0,
                    passed: 0,
                    harness_errors: 0,
                });
            for m in &must {
                if !row.must_produce.contains(m) {
                    row.must_produce.push(m.clone());
                }
            }
            row.scenarios.push(s.name.clone());
            for r in runs.iter().filter(|r| r.scenario == s.name) {
                row.runs += 1;
                match r.verdict.exit() {
                    Exit::Pass => row.passed += 1,
                    Exit::HarnessError => row.harness_errors += 1,
                    Exit::ProductFailure => {}
                }
            }
        }
    }
    rows.into_values().collect()
}

/// Which passing runs produced each class and outcome.
fn coverage(runs: &[NightlyRun]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in BlockClass::ALL {
        // `unattributed` is for recordings without the stages that place a divergence
        // (offline diffs, pipelines without a witness); the reference pipeline records
        // them all, so no scenario of it can produce that class.
        if c.is_problem() && c != BlockClass::Unattributed {
            out.insert(c.name().to_string(), Vec::new());
        }
    }
    for o in Outcome::ALL {
        if o != Outcome::HarnessError {
            out.insert(o.name().to_string(), Vec::new());
        }
    }
    for r in runs.iter().filter(|r| r.verdict.exit() == Exit::Pass) {
        for what in r.found_names() {
            let list = out.entry(what.to_string()).or_default();
            if !list.contains(&r.scenario) {
                list.push(r.scenario.clone());
            }
        }
    }
    out
}

/// The detector matrix as a Markdown table (the README carries one).
pub fn matrix_markdown(report: &NightlyReport) -> String {
    let mut t = String::from(
        "| fault | pipeline | must produce | scenarios | produced |\n|---|---|---|---|---|\n",
    );
    for r in &report.matrix {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} ({}/{}) |",
            r.fault,
            r.pipeline,
            r.must_produce.join(", "),
            r.scenarios.join(", "),
            r.status().label(),
            r.passed,
            r.runs
        );
    }
    t
}

fn write(dir: &Path, report: &NightlyReport) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let json = serde_json::to_vec_pretty(report).expect("the nightly report serializes");
    write_file(dir, "summary.json", &json)?;
    write_file(dir, "matrix.md", matrix_markdown(report).as_bytes())?;
    write_file(dir, "junit.xml", junit(report).as_bytes())?;
    write_file(dir, "index.html", html(report, dir).as_bytes())
}

fn junit(report: &NightlyReport) -> String {
    let cases = report
        .runs
        .iter()
        .map(|r| junit::Case {
            classname: r.scenario.clone(),
            name: format!("{}::{}::seed{}", r.scenario, r.image, r.seed),
            seconds: r.seconds,
            exit: r.verdict.exit(),
            message: r.verdict.reasons().join("; "),
            detail: r.report.clone(),
            system_out: None,
        })
        .collect();
    junit::render(
        "blockwitness nightly",
        &[junit::Suite {
            name: "scenarios".into(),
            cases,
        }],
    )
}

fn verdict_class(exit: Exit) -> &'static str {
    match exit {
        Exit::Pass => "pass",
        Exit::ProductFailure => "fail",
        Exit::HarnessError => "err",
    }
}

fn html(report: &NightlyReport, dir: &Path) -> String {
    let rel = |p: &str| -> String {
        let path = Path::new(p);
        match (path.parent(), dir.parent()) {
            (Some(a), Some(b)) if a == b => format!(
                "../{}/index.html",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
            _ => format!("{p}/index.html"),
        }
    };
    let passed = report
        .runs
        .iter()
        .filter(|r| r.verdict.exit() == Exit::Pass)
        .count();
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Blockwitness nightly</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.pass{color:#070}.fail{color:#b00;font-weight:bold}.err{color:#a60;font-weight:bold}</style></head><body>",
    );
    let _ = write!(
        h,
        "<h1>Blockwitness nightly</h1><p>{passed} of {} runs passed in {:.0} min.</p>",
        report.runs.len(),
        report.seconds / 60.0
    );
    if !report.invalid_scenarios.is_empty() {
        h.push_str("<h2>Invalid scenarios</h2><ul>");
        for e in &report.invalid_scenarios {
            let _ = write!(h, "<li><pre>{}</pre></li>", escape(e));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>Detector matrix</h2><table><tr><th>fault</th><th>pipeline</th><th>must produce</th><th>scenarios</th><th>produced</th></tr>");
    for r in &report.matrix {
        let class = match r.status() {
            RowStatus::Yes => "pass",
            RowStatus::No => "fail",
            RowStatus::NotRun | RowStatus::NotMeasured => "err",
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{} ({}/{})</td></tr>",
            escape(&r.fault),
            escape(&r.pipeline),
            escape(&r.must_produce.join(", ")),
            escape(&r.scenarios.join(", ")),
            r.status().label(),
            r.passed,
            r.runs
        );
    }
    h.push_str("</table><h2>Every class and outcome, and what produced it</h2><table><tr><th>class or outcome</th><th>produced by (passing runs)</th></tr>");
    for (what, by) in &report.coverage {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td></tr>",
            escape(what),
            if by.is_empty() { "fail" } else { "pass" },
            if by.is_empty() {
                "nothing".to_string()
            } else {
                escape(&by.join(", "))
            }
        );
    }
    h.push_str("</table><h2>Runs</h2><table><tr><th>scenario</th><th>pipeline</th><th>image</th><th>seed</th><th>verdict</th><th>found</th><th>time</th><th>why</th></tr>");
    for r in &report.runs {
        let class = verdict_class(r.verdict.exit());
        let found = r.found_names();
        let _ = write!(
            h,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{:.0}s</td><td>{}</td></tr>",
            escape(&rel(&r.report)),
            escape(&r.scenario),
            escape(&r.pipeline),
            escape(&r.image),
            r.seed,
            r.verdict.name(),
            escape(&found.join(", ")),
            r.seconds,
            escape(&r.verdict.reasons().join("; "))
        );
    }
    h.push_str("</table><p><a href=\"summary.json\">summary.json</a> · <a href=\"junit.xml\">junit.xml</a> · <a href=\"matrix.md\">matrix.md</a></p></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: &str, exit: Exit, found: &[BlockClass]) -> NightlyRun {
        let verdict = match exit {
            Exit::Pass => Verdict::Pass,
            Exit::ProductFailure => Verdict::Fail { reasons: vec![] },
            Exit::HarnessError => Verdict::CouldNotRun { errors: vec![] },
        };
        NightlyRun {
            scenario: scenario.into(),
            pipeline: "reference".into(),
            file: String::new(),
            image: "debian-6.1".into(),
            seed: 1,
            verdict,
            report: "/r/x".into(),
            seconds: 1.0,
            found_classes: found.to_vec(),
            outcomes: vec![],
            faults: vec![],
            expected_classes: vec![],
            expected_outcomes: vec![],
        }
    }

    #[test]
    fn coverage_counts_only_passing_runs() {
        let cov = coverage(&[
            run("a", Exit::Pass, &[BlockClass::DataFromTheFuture]),
            run("b", Exit::ProductFailure, &[BlockClass::CorruptSnapshot]),
        ]);
        assert_eq!(cov["data-from-the-future"], ["a"]);
        assert!(cov["corrupt-snapshot"].is_empty());
        assert!(cov.contains_key("false-success"));
        assert!(!cov.contains_key("harness-error"));
    }

    #[test]
    fn a_row_is_yes_only_when_every_run_passed() {
        let mut row = MatrixRow {
            fault: "module/cow-read-live".into(),
            pipeline: "reference".into(),
            must_produce: vec![],
            scenarios: vec![],
            runs: 2,
            passed: 2,
            harness_errors: 0,
        };
        assert_eq!(row.status().label(), "yes");
        row.passed = 1;
        assert_eq!(row.status().label(), "NO");
        row.harness_errors = 1;
        assert_eq!(row.status().label(), "not measured (harness error)");
    }

    #[test]
    fn junit_marks_failures_and_errors() {
        let rep = NightlyReport {
            started_unix: 0,
            seconds: 1.0,
            runs: vec![
                run("a", Exit::Pass, &[]),
                run("b", Exit::ProductFailure, &[]),
                run("c", Exit::HarnessError, &[]),
            ],
            invalid_scenarios: vec![],
            matrix: vec![],
            coverage: BTreeMap::new(),
            dir: String::new(),
        };
        let x = junit(&rep);
        assert!(x.contains("failures=\"1\" errors=\"1\""));
        assert_eq!(x.matches("<failure").count(), 1);
        assert_eq!(x.matches("<error").count(), 1);
        assert_eq!(rep.exit(), Exit::HarnessError);
        let json = serde_json::to_value(&rep.runs[1]).unwrap();
        assert_eq!(json["verdict"], "fail");
        assert_eq!(json["exit_code"], 1);
    }
}

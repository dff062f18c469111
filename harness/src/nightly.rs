//! `blockwitness nightly`: every scenario on every image it names, over its seeds, one
//! after another, and one report over all of them: the per-run verdicts with links to
//! their reports, the detector matrix (each fault kind, the class or outcome it must
//! produce, and whether it did), the exact kernels it ran, JUnit XML and the total time.
//!
//! Each image the nightly needs is resolved and built once, at its start, and every run
//! uses that build: an `apt-get update` in the middle of a nightly cannot move a kernel
//! between two of its runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::events::{Event, Reporter};
use crate::image::{self, BuildOptions, BuiltImage};
use crate::model::{BlockClass, Exit, FaultKind, Outcome, Verdict};
use crate::plan::Plan;
use crate::report::junit;
use crate::report::{escape, write_file, ReportError};
use crate::run::{run_plan, RunOptions, RunResult};
use crate::scenario::{self, DiskBackend, Scenario};

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
    /// Serve every scenario's volumes with this instead of its `guest.disk`.
    pub disk: Option<DiskBackend>,
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
    /// How often each injected fault fired (`layer/kind`, count; None: not counted).
    pub fired: Vec<(String, Option<u64>)>,
    pub expected_classes: Vec<BlockClass>,
    pub expected_outcomes: Vec<Outcome>,
    /// Whether the history oracle agreed with the truth at the announced instant on
    /// every block (None: not judged, no witness disk).
    pub oracle_agrees: Option<bool>,
    /// Whether the run was judged at the history oracle's cut (its product cannot
    /// announce an instant): such a run is never counted as agreeing with an instant.
    pub judged_at_cut: bool,
}

/// The matrix row of the oracle's own check.
pub const ORACLE_ROW: &str = "oracle vs the truth at the announced instant";
/// The matrix row of the runs whose truth was the oracle's cut.
pub const CUT_ROW: &str = "truth at the oracle's cut (no announced instant)";

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
            /// `layer/kind` and how often it fired (null: not counted).
            fired: Vec<(&'a str, Option<u64>)>,
            expected: Vec<&'static str>,
            oracle_agrees: Option<bool>,
            judged_at_cut: bool,
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
            fired: self.fired.iter().map(|(f, n)| (f.as_str(), *n)).collect(),
            expected: expected
                .chain(self.expected_outcomes.iter().map(|o| o.name()))
                .collect(),
            oracle_agrees: self.oracle_agrees,
            judged_at_cut: self.judged_at_cut,
        }
        .serialize(s)
    }
}

/// Whether a row of the detector matrix was shown to fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowStatus {
    NotRun,
    /// A harness error kept a run from judging the detector, and no run failed.
    NotMeasured,
    Yes,
    /// Some run of the row was a product failure (whatever the others were).
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
    /// `layer/kind`, or `none (<scenario>)` for a scenario without faults.
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
    /// The runs that were product failures, as `scenario image seed`.
    pub failed: Vec<String>,
    /// How often the row's fault fired, summed over its runs (None for `none` rows).
    pub fired: Option<u64>,
}

impl MatrixRow {
    /// A product failure anywhere in the row says "no", even beside a harness error.
    pub fn status(&self) -> RowStatus {
        if self.runs == 0 {
            RowStatus::NotRun
        } else if !self.failed.is_empty() {
            RowStatus::No
        } else if self.harness_errors > 0 {
            RowStatus::NotMeasured
        } else if self.passed == self.runs {
            RowStatus::Yes
        } else {
            RowStatus::No
        }
    }

    /// The status with the counts, and the failing runs when there are any.
    pub fn produced(&self) -> String {
        let mut text = format!("{} ({}/{}", self.status().label(), self.passed, self.runs);
        if self.harness_errors > 0 {
            let _ = write!(text, ", {} harness error(s)", self.harness_errors);
        }
        text.push(')');
        if !self.failed.is_empty() {
            let _ = write!(text, ": failing {}", self.failed.join(", "));
        }
        text
    }
}

/// An image the nightly built at its start, and exactly what it holds.
#[derive(Clone, Debug, Serialize)]
pub struct NightlyKernel {
    pub image: String,
    pub key: String,
    pub kernel_release: String,
    /// `package version sha256` of every Debian package in the image.
    pub packages: Vec<KernelPackage>,
    pub bwsnap_sha256: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl NightlyKernel {
    pub fn of(img: &BuiltImage) -> NightlyKernel {
        NightlyKernel {
            image: img.name.clone(),
            key: img.key.clone(),
            kernel_release: img.kernel_release.clone(),
            packages: img
                .packages
                .iter()
                .map(|p| KernelPackage {
                    name: p.package.clone(),
                    version: p.version.clone(),
                    sha256: p.sha256.clone(),
                })
                .collect(),
            bwsnap_sha256: img.bwsnap_sha256.clone(),
        }
    }

    /// One line: `debian-6.1: kernel 6.1.0-56-amd64 (linux-image-... 6.1.x sha256 ab12...)`.
    pub fn line(&self) -> String {
        let pkgs: Vec<String> = self
            .packages
            .iter()
            .map(|p| {
                format!(
                    "{} {} sha256:{}",
                    p.name,
                    p.version,
                    &p.sha256[..p.sha256.len().min(16)]
                )
            })
            .collect();
        format!(
            "{}: kernel {} ({})",
            self.image,
            self.kernel_release,
            pkgs.join(", ")
        )
    }
}

/// The whole nightly.
#[derive(Clone, Debug, Serialize)]
pub struct NightlyReport {
    pub started_unix: u64,
    pub seconds: f64,
    /// The images every run used, built once at the start.
    pub kernels: Vec<NightlyKernel>,
    /// Images that could not be built: each of their runs is a harness error.
    pub image_errors: BTreeMap<String, String>,
    pub runs: Vec<NightlyRun>,
    pub invalid_scenarios: Vec<String>,
    pub matrix: Vec<MatrixRow>,
    /// Every block class and run-level outcome, and the scenarios that produced it.
    pub coverage: BTreeMap<String, Vec<String>>,
    pub dir: String,
    /// `--slow N`: every run had QEMU at 1/N of the wall clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow: Option<u32>,
}

impl NightlyReport {
    /// Pass when every run passed and the oracle agreed with the announced-instant
    /// truth wherever it judged (a disagreement fails the nightly); a harness error
    /// when a scenario is invalid or nothing ran; else the worst run's.
    pub fn exit(&self) -> Exit {
        let mut worst = self
            .runs
            .iter()
            .map(|r| r.verdict.exit())
            .max()
            .unwrap_or(Exit::HarnessError);
        if self.runs.iter().any(|r| r.oracle_agrees == Some(false)) {
            worst = worst.worst(Exit::ProductFailure);
        }
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
    let stem = format!("nightly-{started_unix}");
    let dir = crate::report::new_dir(&opts.run.reports_dir, &stem)
        .unwrap_or_else(|_| opts.run.reports_dir.join(&stem));
    let (scenarios, invalid) = load_all(&opts.scenarios, opts.filter.as_deref());
    let images_of = |s: &Scenario| -> Vec<String> {
        match &opts.images {
            Some(only) => s
                .images
                .iter()
                .filter(|i| only.contains(i))
                .cloned()
                .collect(),
            None => s.images.clone(),
        }
    };
    // Every image once, now: the runs below never build or resolve again.
    let needed: BTreeSet<String> = scenarios.iter().flat_map(images_of).collect();
    let (run_opts, kernels, image_errors) = pin_images(&opts.run, &needed, reporter);
    let mut runs = Vec::new();
    for s in &scenarios {
        let seeds: Vec<u64> = s
            .seed_list()
            .into_iter()
            .take(opts.max_seeds.map_or(usize::MAX, |n| n as usize))
            .collect();
        for image in &images_of(s) {
            for &seed in &seeds {
                let run = match image_errors.get(image) {
                    Some(e) => not_run(s, image, seed, e),
                    None => {
                        let mut plan = Plan::resolve(s, seed, image);
                        if let Some(d) = opts.disk {
                            plan = plan.with_disk(d);
                        }
                        nightly_run(s, &run_plan(&plan, &s.source, &run_opts, reporter))
                    }
                };
                runs.push(run);
            }
        }
    }
    let mut report = NightlyReport {
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        kernels,
        image_errors,
        matrix: matrix(&scenarios, &runs),
        coverage: coverage(&runs),
        runs,
        invalid_scenarios: invalid,
        dir: dir.display().to_string(),
        slow: opts.run.slow.filter(|n| *n > 1),
    };
    if let Err(e) = write(&dir, &report) {
        report.invalid_scenarios.push(format!(
            "writing the nightly report: {}",
            crate::error_chain(&e)
        ));
    }
    report
}

/// Builds (or finds in the cache) each image once; returns the run options that carry
/// them, what each holds, and the images that failed.
fn pin_images(
    run: &RunOptions,
    needed: &BTreeSet<String>,
    reporter: &dyn Reporter,
) -> (RunOptions, Vec<NightlyKernel>, BTreeMap<String, String>) {
    let mut run = run.clone();
    let mut kernels = Vec::new();
    let mut errors = BTreeMap::new();
    let build = BuildOptions {
        cache: run.cache.clone(),
        project_root: run.project_root.clone(),
        with_bwsnap: true,
    };
    // Resolve them all first, so that a refresh of stale apt lists (a fresh machine)
    // happens before any image is built from the old lists.
    let to_build: Vec<String> = needed
        .iter()
        .filter(|n| !run.prebuilt.iter().any(|i| &i.name == *n))
        .cloned()
        .collect();
    for (name, resolved) in image::resolve_all(&to_build, &run.project_root, &mut |step| {
        reporter.event(&Event::Note {
            run_id: "nightly".into(),
            text: format!("images: {step}"),
        })
    }) {
        if let Err(e) = resolved {
            errors.insert(name, crate::error_chain(&e));
        }
    }
    for name in needed {
        if errors.contains_key(name) {
            continue;
        }
        if let Some(img) = run.prebuilt.iter().find(|i| &i.name == name) {
            kernels.push(NightlyKernel::of(img));
            continue;
        }
        let built = image::build(name, &build, &mut |step| {
            reporter.event(&Event::Note {
                run_id: "nightly".into(),
                text: format!("image {name}: {step}"),
            })
        });
        match built {
            Ok(img) => {
                kernels.push(NightlyKernel::of(&img));
                run.prebuilt.push(img);
            }
            Err(e) => {
                errors.insert(name.clone(), crate::error_chain(&e));
            }
        }
    }
    (run, kernels, errors)
}

/// A run that could not start: its image failed to build at the nightly's start.
fn not_run(s: &Scenario, image: &str, seed: u64, error: &str) -> NightlyRun {
    NightlyRun {
        scenario: s.name.clone(),
        pipeline: s.pipeline.kind().name().to_string(),
        file: s.path.display().to_string(),
        image: image.to_string(),
        seed,
        verdict: Verdict::CouldNotRun {
            errors: vec![format!(
                "image {image} could not be built at the nightly's start: {error}"
            )],
        },
        report: String::new(),
        seconds: 0.0,
        found_classes: Vec::new(),
        outcomes: Vec::new(),
        faults: s.faults.iter().map(|f| f.spec.kind()).collect(),
        fired: Vec::new(),
        expected_classes: s.expect.classes.iter().copied().collect(),
        expected_outcomes: s.expect.outcomes.iter().copied().collect(),
        oracle_agrees: None,
        judged_at_cut: false,
    }
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
        fired: r
            .faults
            .iter()
            .map(|f| (f.fault.clone(), f.fired))
            .collect(),
        expected_classes: s.expect.classes.iter().copied().collect(),
        expected_outcomes: s.expect.outcomes.iter().copied().collect(),
        oracle_agrees: r.oracle_agrees,
        judged_at_cut: r.judged_at_cut,
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
                    failed: Vec::new(),
                    fired: None,
                });
            for m in &must {
                if !row.must_produce.contains(m) {
                    row.must_produce.push(m.clone());
                }
            }
            row.scenarios.push(s.name.clone());
            for r in runs.iter().filter(|r| r.scenario == s.name) {
                row.runs += 1;
                for (fault, n) in &r.fired {
                    if fault == &key {
                        *row.fired.get_or_insert(0) += n.unwrap_or(0);
                    }
                }
                match r.verdict.exit() {
                    Exit::Pass => row.passed += 1,
                    Exit::HarnessError => row.harness_errors += 1,
                    Exit::ProductFailure => row
                        .failed
                        .push(format!("{} {} seed {}", r.scenario, r.image, r.seed)),
                }
            }
        }
    }
    let mut rows: Vec<MatrixRow> = rows.into_values().collect();
    rows.push(oracle_row(runs));
    rows.push(cut_row(runs));
    rows
}

/// The runs judged at the oracle's cut, as a row of their own: they have no announced
/// instant, so the oracle row cannot count them; here each counts by its verdict.
fn cut_row(runs: &[NightlyRun]) -> MatrixRow {
    let judged: Vec<&NightlyRun> = runs.iter().filter(|r| r.judged_at_cut).collect();
    let mut scenarios: Vec<String> = judged.iter().map(|r| r.scenario.clone()).collect();
    scenarios.sort();
    scenarios.dedup();
    let label = |r: &&NightlyRun| format!("{} {} seed {}", r.scenario, r.image, r.seed);
    let mut row = MatrixRow {
        fault: CUT_ROW.into(),
        pipeline: "external (instant = \"oracle\")".into(),
        must_produce: vec!["the scenario's expected verdict, judged at the cut".into()],
        scenarios,
        runs: judged.len() as u32,
        passed: 0,
        harness_errors: 0,
        failed: Vec::new(),
        fired: None,
    };
    for r in &judged {
        match r.verdict {
            Verdict::Pass => row.passed += 1,
            Verdict::Fail { .. } => row.failed.push(label(r)),
            Verdict::CouldNotRun { .. } => row.harness_errors += 1,
        }
    }
    row
}

/// The oracle's own check as a row: every run the oracle judged (the witness-disk
/// runs) must agree with the truth taken at the announced instant on every block.
fn oracle_row(runs: &[NightlyRun]) -> MatrixRow {
    let judged: Vec<&NightlyRun> = runs.iter().filter(|r| r.oracle_agrees.is_some()).collect();
    let mut scenarios: Vec<String> = judged.iter().map(|r| r.scenario.clone()).collect();
    scenarios.dedup();
    MatrixRow {
        fault: ORACLE_ROW.into(),
        pipeline: "any (witness disks)".into(),
        must_produce: vec!["agreement on every block".into()],
        scenarios,
        runs: judged.len() as u32,
        passed: judged
            .iter()
            .filter(|r| r.oracle_agrees == Some(true))
            .count() as u32,
        harness_errors: 0,
        failed: judged
            .iter()
            .filter(|r| r.oracle_agrees == Some(false))
            .map(|r| format!("{} {} seed {}", r.scenario, r.image, r.seed))
            .collect(),
        fired: None,
    }
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

/// The detector matrix as Markdown: a line naming the nightly it came from (its
/// directory, date, runs, kernels), then the table. `blockwitness readme-matrix` puts
/// it into the README as it is.
pub fn matrix_markdown(report: &NightlyReport) -> String {
    let name = Path::new(&report.dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| report.dir.clone());
    let mut t = format!(
        "From nightly `{name}` ({} UTC): {} runs in {:.0} min. Kernels: {}.\n\n",
        utc_date(report.started_unix),
        report.runs.len(),
        report.seconds / 60.0,
        if report.kernels.is_empty() {
            "none built".to_string()
        } else {
            report
                .kernels
                .iter()
                .map(NightlyKernel::line)
                .collect::<Vec<_>>()
                .join("; ")
        }
    );
    t.push_str("| fault | pipeline | must produce | scenarios | produced | fired |\n|---|---|---|---|---|---|\n");
    for r in &report.matrix {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            r.fault,
            r.pipeline,
            r.must_produce.join(", "),
            r.scenarios.join(", "),
            r.produced(),
            r.fired.map_or("-".to_string(), |n| n.to_string())
        );
    }
    t
}

/// `YYYY-MM-DD HH:MM` of a Unix time, UTC (days from the civil calendar algorithm).
fn utc_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// The README's detector matrix lies between these markers; `blockwitness readme-matrix`
/// rewrites what is between them.
pub const README_BEGIN: &str =
    "<!-- matrix:begin: generated by `blockwitness readme-matrix`; edits here are overwritten -->";
pub const README_END: &str = "<!-- matrix:end -->";

/// Why the README's matrix could not be regenerated.
#[derive(Debug, thiserror::Error)]
pub enum ReadmeMatrixError {
    #[error(
        "{dir} holds no matrix.md: give a nightly's report directory (reports/nightly-<time>)"
    )]
    NotANightly {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no `{README_BEGIN}` ... `{README_END}` markers around its matrix")]
    NoMarkers { path: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The README text with the matrix between the markers replaced by `matrix_md` (a
/// nightly's matrix.md, which names the nightly it came from), saying which command
/// and directory it came from. None when the markers are missing.
pub fn readme_with_matrix(readme: &str, matrix_md: &str, source: &str) -> Option<String> {
    let start = readme.find(README_BEGIN)? + README_BEGIN.len();
    let end = start + readme[start..].find(README_END)?;
    Some(format!(
        "{}\n\nGenerated by `blockwitness readme-matrix {source}` from `{source}/matrix.md`.\n\n{}\n{}",
        &readme[..start],
        matrix_md.trim_end(),
        &readme[end..]
    ))
}

/// `blockwitness readme-matrix DIR`: puts DIR/matrix.md into the README.
pub fn readme_matrix(dir: &Path, readme: &Path) -> Result<(), ReadmeMatrixError> {
    let matrix = std::fs::read_to_string(dir.join("matrix.md")).map_err(|source| {
        ReadmeMatrixError::NotANightly {
            dir: dir.to_owned(),
            source,
        }
    })?;
    let text = std::fs::read_to_string(readme).map_err(|source| ReadmeMatrixError::Read {
        path: readme.to_owned(),
        source,
    })?;
    let source = match (dir.parent().and_then(|p| p.file_name()), dir.file_name()) {
        (Some(parent), Some(name)) => {
            format!("{}/{}", parent.to_string_lossy(), name.to_string_lossy())
        }
        _ => dir.display().to_string(),
    };
    let updated = readme_with_matrix(&text, &matrix, &source).ok_or_else(|| {
        ReadmeMatrixError::NoMarkers {
            path: readme.to_owned(),
        }
    })?;
    std::fs::write(readme, updated).map_err(|source| ReadmeMatrixError::Write {
        path: readme.to_owned(),
        source,
    })
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
        "<h1>Blockwitness nightly</h1><p>{passed} of {} runs passed in {:.0} min{}.</p>",
        report.runs.len(),
        report.seconds / 60.0,
        report
            .slow
            .map(|n| format!(", QEMU slowed down {n}x (--slow {n})"))
            .unwrap_or_default()
    );
    h.push_str("<h2>Kernels</h2><p>Every run used these images, built once at the start.</p><ul>");
    for k in &report.kernels {
        let _ = write!(
            h,
            "<li><b>{}</b>: kernel {} (image {}{})<ul>",
            escape(&k.image),
            escape(&k.kernel_release),
            escape(&k.key),
            k.bwsnap_sha256
                .as_deref()
                .map(|b| format!(", bwsnap.ko sha256 {}", escape(b)))
                .unwrap_or_default()
        );
        for p in &k.packages {
            let _ = write!(
                h,
                "<li>{} {} sha256 {}</li>",
                escape(&p.name),
                escape(&p.version),
                escape(&p.sha256)
            );
        }
        h.push_str("</ul></li>");
    }
    for (image, e) in &report.image_errors {
        let _ = write!(
            h,
            "<li class=\"err\"><b>{}</b>: not built: {}</li>",
            escape(image),
            escape(e)
        );
    }
    h.push_str("</ul>");
    if !report.invalid_scenarios.is_empty() {
        h.push_str("<h2>Invalid scenarios</h2><ul>");
        for e in &report.invalid_scenarios {
            let _ = write!(h, "<li><pre>{}</pre></li>", escape(e));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>Detector matrix</h2><table><tr><th>fault</th><th>pipeline</th><th>must produce</th><th>scenarios</th><th>produced</th><th>fired</th></tr>");
    for r in &report.matrix {
        let class = match r.status() {
            RowStatus::Yes => "pass",
            RowStatus::No => "fail",
            RowStatus::NotRun | RowStatus::NotMeasured => "err",
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            escape(&r.fault),
            escape(&r.pipeline),
            escape(&r.must_produce.join(", ")),
            escape(&r.scenarios.join(", ")),
            escape(&r.produced()),
            r.fired.map_or("-".to_string(), |n| n.to_string())
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
            fired: vec![],
            expected_classes: vec![],
            expected_outcomes: vec![],
            oracle_agrees: None,
            judged_at_cut: false,
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
    fn an_oracle_disagreement_fails_the_nightly() {
        let mut a = run("a", Exit::Pass, &[]);
        a.oracle_agrees = Some(true);
        let mut b = run("b", Exit::Pass, &[]);
        b.oracle_agrees = Some(false);
        let c = run("c", Exit::Pass, &[]);
        let row = oracle_row(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!((row.runs, row.passed), (2, 1));
        assert_eq!(row.status(), RowStatus::No);
        let mut rep = NightlyReport {
            started_unix: 0,
            seconds: 1.0,
            kernels: vec![],
            image_errors: BTreeMap::new(),
            slow: None,
            runs: vec![a, c],
            invalid_scenarios: vec![],
            matrix: vec![],
            coverage: BTreeMap::new(),
            dir: String::new(),
        };
        assert_eq!(rep.exit(), Exit::Pass);
        rep.runs.push(b);
        assert_eq!(rep.exit(), Exit::ProductFailure);
    }

    #[test]
    fn runs_judged_at_the_cut_are_their_own_row_never_the_oracle_agreement() {
        let mut a = run("cut-clean", Exit::Pass, &[]);
        a.judged_at_cut = true;
        let mut b = run("cut-wrong", Exit::ProductFailure, &[]);
        b.judged_at_cut = true;
        let mut c = run("announced", Exit::Pass, &[]);
        c.oracle_agrees = Some(true);
        let runs = [a, b, c];
        let oracle = oracle_row(&runs);
        assert_eq!(oracle.scenarios, ["announced"]);
        assert_eq!((oracle.runs, oracle.passed), (1, 1));
        let cut = cut_row(&runs);
        assert_eq!(cut.fault, CUT_ROW);
        assert_eq!(cut.scenarios, ["cut-clean", "cut-wrong"]);
        assert_eq!((cut.runs, cut.passed), (2, 1));
        assert_eq!(cut.failed.len(), 1);
        assert!(cut.failed[0].starts_with("cut-wrong "), "{:?}", cut.failed);
        assert_eq!(cut.status(), RowStatus::No);
    }

    #[test]
    fn a_row_is_yes_only_when_every_run_passed_and_no_on_any_product_failure() {
        let s = |name: &str| {
            crate::scenario::parse(
                Path::new("x.toml"),
                &format!(
                    "name = \"{name}\"\ndescription = \"d\"\nstory = \"s\"\n[[volumes]]\nname = \"v\"\nsize = \"64MiB\"\n[[faults]]\nlayer = \"module\"\nkind = \"cow-read-live\"\nevery = 5\n[expect]\nclasses = [\"data-from-the-future\"]\n"
                ),
            )
            .unwrap()
        };
        let scenarios = [s("a")];
        let row = |runs: &[NightlyRun]| matrix(&scenarios, runs).remove(0);
        let mut fired = run("a", Exit::Pass, &[]);
        fired.fired = vec![("module/cow-read-live".into(), Some(7))];
        let yes = row(&[fired.clone(), fired]);
        assert_eq!(yes.status(), RowStatus::Yes);
        assert_eq!(yes.produced(), "yes (2/2)");
        assert_eq!(yes.fired, Some(14));
        let measured = row(&[run("a", Exit::Pass, &[]), run("a", Exit::HarnessError, &[])]);
        assert_eq!(measured.status(), RowStatus::NotMeasured);
        // One product failure beside a harness error is still a "no", naming the run.
        let mut failing = run("a", Exit::ProductFailure, &[]);
        failing.seed = 3;
        let no = row(&[run("a", Exit::HarnessError, &[]), failing]);
        assert_eq!(no.status(), RowStatus::No);
        assert_eq!(
            no.produced(),
            "NO (0/2, 1 harness error(s)): failing a debian-6.1 seed 3"
        );
    }

    #[test]
    fn junit_marks_failures_and_errors() {
        let rep = NightlyReport {
            started_unix: 0,
            seconds: 1.0,
            kernels: vec![],
            image_errors: BTreeMap::new(),
            runs: vec![
                run("a", Exit::Pass, &[]),
                run("b", Exit::ProductFailure, &[]),
                run("c", Exit::HarnessError, &[]),
            ],
            invalid_scenarios: vec![],
            matrix: vec![],
            coverage: BTreeMap::new(),
            dir: String::new(),
            slow: None,
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

    #[test]
    fn the_report_names_the_exact_kernels_it_ran_and_keeps_its_summary() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nightly-1700000000");
        let rep = NightlyReport {
            started_unix: 1_700_000_000,
            seconds: 120.0,
            kernels: vec![NightlyKernel {
                image: "debian-6.1".into(),
                key: "k1".into(),
                kernel_release: "6.1.0-48-amd64".into(),
                packages: vec![KernelPackage {
                    name: "linux-image-6.1.0-48-amd64".into(),
                    version: "6.1.158-1".into(),
                    sha256: "ab".repeat(32),
                }],
                bwsnap_sha256: None,
            }],
            image_errors: BTreeMap::from([("debian-6.12".into(), "no network".into())]),
            runs: vec![run("a", Exit::Pass, &[])],
            invalid_scenarios: vec![],
            matrix: vec![],
            coverage: BTreeMap::new(),
            dir: dir.display().to_string(),
            slow: None,
        };
        write(&dir, &rep).unwrap();
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["kernels"][0]["kernel_release"], "6.1.0-48-amd64");
        assert_eq!(summary["kernels"][0]["packages"][0]["version"], "6.1.158-1");
        assert_eq!(summary["image_errors"]["debian-6.12"], "no network");
        let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
        assert!(html.contains("6.1.0-48-amd64") && html.contains(&"ab".repeat(32)));
        assert!(html.contains("no network"));
        let md = std::fs::read_to_string(dir.join("matrix.md")).unwrap();
        assert!(
            md.starts_with("From nightly `nightly-1700000000` (2023-11-14 22:13 UTC): 1 runs"),
            "{md}"
        );
        assert!(md.contains("debian-6.1: kernel 6.1.0-48-amd64 (linux-image-6.1.0-48-amd64 6.1.158-1 sha256:abababababababab)"), "{md}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_date(1_798_761_599), "2026-12-31 23:59");
    }

    #[test]
    fn the_readme_matrix_is_replaced_between_its_markers_naming_its_source() {
        let readme = format!(
            "# Title\n\n## The detector matrix\n\n{README_BEGIN}\nold table\n{README_END}\n\nAfter.\n"
        );
        let md = "From nightly `nightly-1700000000` (2023-11-14 22:13 UTC): 2 runs.\n\n| fault |\n|---|\n| none (a) |\n";
        let out = readme_with_matrix(&readme, md, "reports/nightly-1700000000").unwrap();
        assert!(!out.contains("old table"));
        assert!(out.contains("Generated by `blockwitness readme-matrix reports/nightly-1700000000` from `reports/nightly-1700000000/matrix.md`."));
        assert!(out.contains("From nightly `nightly-1700000000`"));
        assert!(out.starts_with("# Title") && out.ends_with("\n\nAfter.\n"));
        // Idempotent: the markers survive for the next nightly.
        let again = readme_with_matrix(&out, md, "reports/nightly-1700000000").unwrap();
        assert_eq!(again, out);
        assert_eq!(readme_with_matrix("# no markers", md, "x"), None);
    }

    #[test]
    fn readme_matrix_refuses_a_directory_that_is_not_a_nightly() {
        let dir = tempfile::tempdir().unwrap();
        let e = readme_matrix(dir.path(), &dir.path().join("README.md")).unwrap_err();
        assert!(e.to_string().contains("holds no matrix.md"), "{e}");
        std::fs::write(dir.path().join("matrix.md"), "| x |\n").unwrap();
        std::fs::write(dir.path().join("README.md"), "# no markers\n").unwrap();
        let e = readme_matrix(dir.path(), &dir.path().join("README.md")).unwrap_err();
        assert!(e.to_string().contains("markers"), "{e}");
    }
}

//! The VM-driving half of a shrink: reads the failing run's report, runs the original
//! and the candidates as real runs (same seed, same image), judges each against the
//! goal, and writes the shrunk scenario (after every kept cut, so an interrupted
//! session leaves its best so far).
//!
//! A session lives in `reports/shrink-<scenario>-<image>-s<seed>-<time>/`: each draft
//! run as `candidate-NNN.toml` (000 is the original, pinned), the runs' reports under
//! `runs/`, `shrink.log` (one line per run) and, unless `--out` says otherwise,
//! `shrunk.toml`.
//!
//! The budget holds for runs in flight too: a run starts only when the budget left is
//! at least the last full run's time, and its scenario timeout is cut to the budget
//! left, so a run still going when the budget ends is ended by its own watchdog and
//! torn down like any other (its report is written; it counts as no result).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::draft::{Draft, DraftError};
use super::goal::{Goal, GoalError, Judged, Keep, Observed};
use super::output::{self, Header};
use super::passes::{describe, Cut};
use super::search::{self, Progress, SearchOptions, Step, Stop, Trial};
use crate::events::{Event, Reporter};
use crate::plan::{repro_line, Plan};
use crate::record::{RecordError, Recording, RECORDING_FILE};
use crate::report::SCENARIO_FILE;
use crate::run::{self, RunOptions};

/// Never start a run with less budget than this, whatever the last run took.
const MIN_RUN: Duration = Duration::from_secs(60);
/// How often the progress bar's clock moves while a run goes on.
const TICK: Duration = Duration::from_secs(1);

/// How to shrink.
#[derive(Clone, Debug)]
pub struct ShrinkOptions {
    /// The failing run's report directory.
    pub report: PathBuf,
    pub budget: Duration,
    /// Where to write the shrunk scenario (default: the session's `shrunk.toml`).
    pub out: Option<PathBuf>,
    pub confirm: u32,
    pub keep: Keep,
    pub run: RunOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ShrinkError {
    #[error("{dir} is not a run's report: it has no readable recording")]
    Recording {
        dir: PathBuf,
        #[source]
        source: RecordError,
    },
    #[error("cannot read the scenario the run ran, {path}")]
    ReadScenario {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the scenario of {dir} is not valid today, so it cannot be rerun")]
    Scenario {
        dir: PathBuf,
        #[source]
        source: DraftError,
    },
    #[error("cannot shrink the run in {dir}")]
    Goal {
        dir: PathBuf,
        #[source]
        source: GoalError,
    },
    #[error("the host cannot run scenarios")]
    Host(#[source] crate::doctor::Missing),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a session came to.
#[derive(Debug)]
pub struct Shrunk {
    pub session_dir: PathBuf,
    /// The shrunk scenario; None when the original did not fail the same way again.
    pub out: Option<PathBuf>,
    pub scenario: String,
    pub image: String,
    pub seed: u64,
    pub goal: String,
    pub original: String,
    pub best: String,
    pub kept: Vec<Cut>,
    pub runs: u32,
    pub candidates: u32,
    pub confirm: u32,
    pub elapsed: Duration,
    pub stop: Stop,
    pub repro: Option<String>,
}

impl std::fmt::Display for Shrunk {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        writeln!(
            f,
            "shrink {} ({}, seed {}): {} cuts kept, {} candidates, {} runs in {:.0} min",
            self.scenario,
            self.image,
            self.seed,
            self.kept.len(),
            self.candidates,
            self.runs,
            self.elapsed.as_secs_f64() / 60.0
        )?;
        writeln!(f, "  kept when {}", self.goal)?;
        writeln!(
            f,
            "  each cut confirmed by {} runs in a row (--confirm {}: TCG runs are noisy)",
            self.confirm + 1,
            self.confirm
        )?;
        writeln!(f, "  stopped: {}", output::stop_text(&self.stop))?;
        writeln!(f, "  before: {}", self.original)?;
        writeln!(f, "  after:  {}", self.best)?;
        for c in &self.kept {
            writeln!(f, "    - {c}")?;
        }
        match (&self.out, &self.repro) {
            (Some(out), Some(repro)) => {
                writeln!(f, "  wrote: {}", out.display())?;
                write!(f, "  repro: {repro}")
            }
            _ => write!(f, "  wrote nothing; runs: {}", self.session_dir.display()),
        }
    }
}

/// The failing run, as read from its report.
struct Original {
    dir: PathBuf,
    scenario: String,
    scenario_file: String,
    image: String,
    seed: u64,
    seconds: f64,
    goal: Goal,
    draft: Draft,
}

fn read_original(dir: &Path, keep: &Keep) -> Result<Original, ShrinkError> {
    let rec =
        Recording::load(&dir.join(RECORDING_FILE)).map_err(|source| ShrinkError::Recording {
            dir: dir.to_owned(),
            source,
        })?;
    let path = dir.join(SCENARIO_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| ShrinkError::ReadScenario { path, source })?;
    let goal = Goal::choose(&Observed::of(&rec), keep).map_err(|source| ShrinkError::Goal {
        dir: dir.to_owned(),
        source,
    })?;
    let draft = Draft::parse(Path::new(&rec.run.scenario_file), &text).map_err(|source| {
        ShrinkError::Scenario {
            dir: dir.to_owned(),
            source,
        }
    })?;
    Ok(Original {
        dir: dir.to_owned(),
        scenario: rec.run.scenario.clone(),
        scenario_file: rec.run.scenario_file.clone(),
        image: rec.run.image.clone(),
        seed: rec.run.seed,
        // Building the image is a one-off: the session's runs find it cached.
        seconds: rec
            .run
            .timings
            .iter()
            .filter(|t| t.phase != "image")
            .map(|t| t.seconds)
            .sum(),
        goal,
        draft,
    })
}

/// The original with its name marked, and its seed and image pinned: the shrunk file
/// then reruns this very run with a plain `blockwitness run FILE`.
fn pin(d: &Draft, name: &str, seed: u64, image: &str) -> Draft {
    let name = if name.ends_with("-shrunk") {
        name.to_owned()
    } else {
        format!("{name}-shrunk")
    };
    d.edited(|e| {
        e.set_top("name", name);
        e.set_top("seed", seed as i64);
        let mut images = toml_edit::Array::new();
        images.push(image);
        e.set_top("images", images);
        e.unset_top("seeds");
    })
    .unwrap_or_else(|| d.clone())
}

fn write(path: &Path, text: &str) -> Result<(), ShrinkError> {
    let err = |source| ShrinkError::Write {
        path: path.to_owned(),
        source,
    };
    // Write then rename: a reader (or an interrupted session) never sees half a file.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Forwards the runs' events and moves the shrink bar's clock about once a second.
struct Ticking<'a> {
    inner: &'a dyn Reporter,
    started: Instant,
    /// The last shrink event and when it was sent.
    last: Mutex<(Option<Event>, Instant)>,
}

impl Ticking<'_> {
    fn shrink(&self, event: Event) {
        self.inner.event(&event);
        if let Ok(mut last) = self.last.lock() {
            *last = (Some(event), Instant::now());
        }
    }
}

impl Reporter for Ticking<'_> {
    fn event(&self, event: &Event) {
        self.inner.event(event);
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.1.elapsed() < TICK {
            return;
        }
        if let Some(Event::Shrink { elapsed, .. }) = &mut last.0 {
            *elapsed = self.started.elapsed();
            let again = last.0.clone();
            last.1 = Instant::now();
            drop(last);
            if let Some(e) = again {
                self.inner.event(&e);
            }
        }
    }
}

/// Runs a shrink session end to end.
pub fn shrink(opts: &ShrinkOptions, reporter: &dyn Reporter) -> Result<Shrunk, ShrinkError> {
    let started = Instant::now();
    let original = read_original(&opts.report, &opts.keep)?;
    crate::doctor::require(crate::doctor::FOR_RUN).map_err(ShrinkError::Host)?;
    let start = pin(
        &original.draft,
        &original.scenario,
        original.seed,
        &original.image,
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let session = format!(
        "shrink-{}-{}-s{}-{now}",
        original.scenario, original.image, original.seed
    );
    let dir = opts.run.reports_dir.join(&session);
    std::fs::create_dir_all(dir.join("runs")).map_err(|source| ShrinkError::Write {
        path: dir.clone(),
        source,
    })?;
    let out = opts.out.clone().unwrap_or_else(|| dir.join("shrunk.toml"));
    let repro = repro_line(&out, &original.image, original.seed);
    let mut run_opts = opts.run.clone();
    run_opts.reports_dir = dir.join("runs");
    let goal_text = original.goal.describe();
    let original_line = describe(&start);
    let note = |text: String| {
        reporter.event(&Event::Note {
            run_id: session.clone(),
            text,
        })
    };
    note(format!(
        "shrinking {} ({}, seed {}), kept when {goal_text}; each cut is kept only after {} run(s) in a row fail the same way (--confirm {}: TCG runs are noisy); budget {} min; session {}",
        original.scenario,
        original.image,
        original.seed,
        opts.confirm + 1,
        opts.confirm,
        opts.budget.as_secs() / 60,
        dir.display()
    ));
    let ticking = Ticking {
        inner: reporter,
        started,
        last: Mutex::new((None, Instant::now())),
    };
    let log_path = dir.join("shrink.log");
    let mut log = std::fs::File::create(&log_path).map_err(|source| ShrinkError::Write {
        path: log_path.clone(),
        source,
    })?;
    let mut write_error: Option<ShrinkError> = None;
    let mut kept_written = 0;

    let mut run_step = |step: &Step| -> Trial {
        let file = dir.join(format!("candidate-{:03}.toml", step.number));
        let text = step.draft.text();
        if let Err(e) = write(&file, &text) {
            return Trial::Differs(crate::error_chain(&e));
        }
        let mut scenario = step.draft.scenario().clone();
        scenario.path = file.clone();
        scenario.source = text;
        let mut plan = Plan::resolve(&scenario, original.seed, &original.image);
        let capped = step.left < plan.timeout;
        if capped {
            plan.timeout = step.left;
        }
        let result = run::run_plan(&plan, &scenario.source, &run_opts, &ticking);
        let observed = match Recording::load(&result.report_dir.join(RECORDING_FILE)) {
            Ok(rec) => Observed::of(&rec),
            Err(e) => Observed::harness_error(format!(
                "the run left no recording: {}",
                crate::error_chain(&e)
            )),
        };
        let trial = if capped && observed.watchdog_fired {
            Trial::Stopped
        } else {
            match original.goal.judge(&observed) {
                Judged::Same => Trial::Same,
                Judged::Differs(why) => Trial::Differs(why),
            }
        };
        let said = match &trial {
            Trial::Same => "failed the same way".to_string(),
            Trial::Differs(why) => format!("differs: {why}"),
            Trial::Stopped => "stopped by the budget".to_string(),
        };
        let line = format!(
            "{}: {said} ({:.0}s, {})",
            step.label(),
            result.elapsed.as_secs_f64(),
            result.report_dir.display()
        );
        let _ = writeln!(log, "{line}");
        note(line);
        trial
    };

    let mut on_progress = |p: &Progress| {
        ticking.shrink(Event::Shrink {
            session: session.clone(),
            runs: p.runs,
            cuts_kept: p.kept.len(),
            trying: p.trying.clone(),
            best: p.best_line.to_string(),
            elapsed: p.elapsed,
            budget: p.budget,
        });
        if p.kept.len() > kept_written {
            kept_written = p.kept.len();
            let h = Header {
                report_dir: &original.dir,
                scenario_file: &original.scenario_file,
                image: &original.image,
                seed: original.seed,
                goal: &goal_text,
                original: &original_line,
                best: p.best_line,
                kept: p.kept,
                confirm: opts.confirm,
                runs: p.runs,
                candidates: p.candidates,
                elapsed: p.elapsed,
                stop: None,
                repro: &repro,
            };
            if let Err(e) = write(&out, &output::render(&h, p.best)) {
                write_error.get_or_insert(e);
            }
        }
    };

    let searched = search::search(
        start,
        &SearchOptions {
            budget: opts.budget,
            confirm: opts.confirm,
            min_run: MIN_RUN,
        },
        Duration::from_secs_f64(original.seconds),
        &|| started.elapsed(),
        &mut run_step,
        &mut on_progress,
    );
    if let Some(e) = write_error {
        return Err(e);
    }
    let elapsed = started.elapsed();
    let best_line = describe(&searched.best);
    let wrote = !matches!(searched.stop, Stop::NotReproduced { .. });
    if wrote {
        let h = Header {
            report_dir: &original.dir,
            scenario_file: &original.scenario_file,
            image: &original.image,
            seed: original.seed,
            goal: &goal_text,
            original: &original_line,
            best: &best_line,
            kept: &searched.kept,
            confirm: opts.confirm,
            runs: searched.runs,
            candidates: searched.candidates,
            elapsed,
            stop: Some(&searched.stop),
            repro: &repro,
        };
        write(&out, &output::render(&h, &searched.best))?;
    }
    reporter.event(&Event::RunFinished {
        run_id: session.clone(),
        verdict: if wrote { "shrunk" } else { "not reproduced" }.into(),
        report_dir: dir.display().to_string(),
        elapsed,
    });
    Ok(Shrunk {
        session_dir: dir,
        out: wrote.then_some(out),
        scenario: original.scenario,
        image: original.image,
        seed: original.seed,
        goal: goal_text,
        original: original_line,
        best: best_line,
        kept: searched.kept,
        runs: searched.runs,
        candidates: searched.candidates,
        confirm: opts.confirm,
        elapsed,
        stop: searched.stop,
        repro: wrote.then_some(repro),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_names_the_draft_and_fixes_its_seed_and_image() {
        let text = "name = \"x\"\ndescription = \"d\"\nstory = \"s\"\nimages = [\"debian-6.1\", \"debian-6.12\"]\n\
                    seeds = 5\n[[volumes]]\nname = \"data\"\nsize = \"64MiB\"\n";
        let d = Draft::parse(Path::new("x.toml"), text).unwrap();
        let p = pin(&d, "x", 7, "debian-6.12");
        let s = p.scenario();
        assert_eq!(s.name, "x-shrunk");
        assert_eq!(s.seed, 7);
        assert_eq!(s.seeds, 1);
        assert_eq!(s.images, vec!["debian-6.12".to_string()]);
        // Pinning a pinned draft changes nothing.
        assert_eq!(pin(&p, "x-shrunk", 7, "debian-6.12").text(), p.text());
    }

    #[test]
    fn a_directory_without_a_recording_is_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let e = read_original(tmp.path(), &Keep::Verdict).err().unwrap();
        assert!(e.to_string().contains("is not a run's report"), "{e}");
    }
}

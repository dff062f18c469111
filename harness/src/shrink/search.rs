//! The search: the reduction passes applied greedily until none of their candidates
//! fails the same way (a fixed point) or the budget ends. It knows nothing of VMs: a
//! runner callback runs one draft and says how it went, a clock callback says how much
//! time has gone, so the loop is tested with a fake runner and a fake clock.
//!
//! - The original is run `confirm` more times first: a failure that does not reproduce
//!   is not shrunk.
//! - A candidate is kept only when it fails the same way in 1 + `confirm` runs in a
//!   row (TCG runs are noisy: one failure is not a reproduction); the first run that
//!   differs rejects it.
//! - A draft is run at most once per search (by its text), so the fixed point costs one
//!   run per candidate of the final draft.
//! - No run starts with less budget left than the last full run took (at least
//!   `min_run`); a run the budget stopped anyway ends the search with the best so far.

use std::collections::HashSet;
use std::time::Duration;

use super::draft::Draft;
use super::passes::{describe, Cut, Pass};

#[derive(Clone, Debug)]
pub struct SearchOptions {
    pub budget: Duration,
    /// Runs beyond the first that a candidate must also fail the same way in, and runs
    /// of the original before the search.
    pub confirm: u32,
    /// No run starts with less budget left than this.
    pub min_run: Duration,
}

/// One run the search asks for.
#[derive(Debug)]
pub struct Step<'a> {
    /// 0 for the original, then candidates in the order tried.
    pub number: u32,
    pub cut: Option<&'a Cut>,
    /// Which run of this draft (from 1) and of how many.
    pub run: u32,
    pub of: u32,
    pub draft: &'a Draft,
    /// Budget left as the run starts: a runner must stop the run by then.
    pub left: Duration,
}

impl Step<'_> {
    /// "candidate 4 (volume data size 512MiB -> 64MiB), run 2 of 2".
    pub fn label(&self) -> String {
        let what = match self.cut {
            None => "the original".to_string(),
            Some(c) => format!("candidate {} ({c})", self.number),
        };
        format!("{what}, run {} of {}", self.run, self.of)
    }
}

/// How one run went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trial {
    /// It failed the same way.
    Same,
    Differs(String),
    /// The budget ended while it ran and it was stopped: no result.
    Stopped,
}

/// One run, for the session's log.
#[derive(Clone, Debug)]
pub struct Logged {
    pub label: String,
    pub trial: Trial,
    pub seconds: f64,
}

/// Why the search ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// No candidate of the best draft fails the same way.
    FixedPoint,
    /// Too little budget left for another run (`needed` is the last full run's time).
    /// `unconfirmed` is a candidate that had failed the same way but not yet often
    /// enough to be kept.
    Budget {
        left: Duration,
        needed: Duration,
        unconfirmed: Option<Cut>,
    },
    /// A run in flight when the budget ended was stopped.
    Stopped,
    /// The original did not fail the same way again.
    NotReproduced { run: u32, why: String },
}

/// The state of the search, for progress reporters.
#[derive(Debug)]
pub struct Progress<'a> {
    pub runs: u32,
    pub candidates: u32,
    /// The cuts kept so far, in order.
    pub kept: &'a [Cut],
    /// The run starting now, or None between runs.
    pub trying: Option<String>,
    pub best: &'a Draft,
    /// [`describe`] of `best`.
    pub best_line: &'a str,
    pub elapsed: Duration,
    pub budget: Duration,
}

/// What the search ended with.
#[derive(Debug)]
pub struct Searched {
    pub best: Draft,
    pub kept: Vec<Cut>,
    pub runs: u32,
    pub candidates: u32,
    pub stop: Stop,
    pub log: Vec<Logged>,
}

enum Tried {
    Kept,
    Rejected(String),
    Stop(Stop),
}

struct Search<'a> {
    opts: &'a SearchOptions,
    clock: &'a dyn Fn() -> Duration,
    run: &'a mut dyn FnMut(&Step) -> Trial,
    progress: &'a mut dyn FnMut(&Progress),
    /// How long a full run takes: the last run that failed the same way.
    estimate: Duration,
    runs: u32,
    candidates: u32,
    best: Draft,
    kept: Vec<Cut>,
    best_line: String,
    log: Vec<Logged>,
}

impl Search<'_> {
    fn report(&mut self, trying: Option<String>) {
        let p = Progress {
            runs: self.runs,
            candidates: self.candidates,
            kept: &self.kept,
            trying,
            best: &self.best,
            best_line: &self.best_line,
            elapsed: (self.clock)(),
            budget: self.opts.budget,
        };
        (self.progress)(&p);
    }

    /// Runs `draft` up to `of` times; kept when every run fails the same way.
    fn attempt(&mut self, number: u32, cut: Option<&Cut>, draft: &Draft, of: u32) -> Tried {
        for run in 1..=of {
            let left = self.opts.budget.saturating_sub((self.clock)());
            let needed = self.estimate.max(self.opts.min_run);
            if left < needed {
                return Tried::Stop(Stop::Budget {
                    left,
                    needed,
                    unconfirmed: cut.filter(|_| run > 1).cloned(),
                });
            }
            let step = Step {
                number,
                cut,
                run,
                of,
                draft,
                left,
            };
            let label = step.label();
            self.report(Some(label.clone()));
            let started = (self.clock)();
            let trial = (self.run)(&step);
            let took = (self.clock)().saturating_sub(started);
            self.runs += 1;
            self.log.push(Logged {
                label,
                trial: trial.clone(),
                seconds: took.as_secs_f64(),
            });
            match trial {
                Trial::Same => self.estimate = took,
                Trial::Differs(why) => return Tried::Rejected(why),
                Trial::Stopped => return Tried::Stop(Stop::Stopped),
            }
        }
        Tried::Kept
    }
}

/// Shrinks `start` (the original, already valid and pinned to its seed and image).
/// `estimate` is how long the original run took, for the budget check before the
/// first run.
pub fn search(
    start: Draft,
    opts: &SearchOptions,
    estimate: Duration,
    clock: &dyn Fn() -> Duration,
    run: &mut dyn FnMut(&Step) -> Trial,
    progress: &mut dyn FnMut(&Progress),
) -> Searched {
    let mut s = Search {
        opts,
        clock,
        run,
        progress,
        estimate,
        runs: 0,
        candidates: 0,
        best_line: describe(&start),
        best: start,
        kept: Vec::new(),
        log: Vec::new(),
    };
    let mut seen: HashSet<String> = HashSet::from([s.best.text()]);
    let stop = 'search: {
        if opts.confirm > 0 {
            let original = s.best.clone();
            match s.attempt(0, None, &original, opts.confirm) {
                Tried::Kept => {}
                Tried::Rejected(why) => {
                    let run = s.runs;
                    break 'search Stop::NotReproduced { run, why };
                }
                Tried::Stop(stop) => break 'search stop,
            }
        }
        let mut changed = true;
        while changed {
            changed = false;
            for pass in Pass::ALL {
                // Stay with a pass while it keeps cutting.
                'pass: loop {
                    for c in pass.candidates(&s.best) {
                        if !seen.insert(c.draft.text()) {
                            continue;
                        }
                        s.candidates += 1;
                        let number = s.candidates;
                        match s.attempt(number, Some(&c.cut), &c.draft, 1 + opts.confirm) {
                            Tried::Kept => {
                                s.best_line = describe(&c.draft);
                                s.best = c.draft;
                                s.kept.push(c.cut);
                                changed = true;
                                s.report(None);
                                continue 'pass;
                            }
                            Tried::Rejected(_) => {}
                            Tried::Stop(stop) => break 'search stop,
                        }
                    }
                    break 'pass;
                }
            }
        }
        Stop::FixedPoint
    };
    s.report(None);
    Searched {
        best: s.best,
        kept: s.kept,
        runs: s.runs,
        candidates: s.candidates,
        stop,
        log: s.log,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::scenario::SizeOrPercent;
    use crate::shrink::halve::{self, Quantity};

    const START: &str = r#"name = "future"
description = "d"
story = "s"
[[volumes]]
name = "data"
size = "512MiB"
fill = "50%"
[[workloads]]
kind = "overwrite"
wall_clock_reason = "a wall-clock workload under test"
stamped = true
rate = "1MiB/s"
[[workloads]]
kind = "append"
wall_clock_reason = "a wall-clock workload under test"
amount = "64MiB"
[backup]
incrementals = 2
[[faults]]
layer = "module"
kind = "cow-read-live"
every = 10
[[faults]]
layer = "transport"
kind = "bit-flip"
frame = 10
"#;

    fn start() -> Draft {
        Draft::parse(Path::new("future.toml"), START).unwrap()
    }

    /// The bug this fake product has: data from the future needs a volume of at least
    /// 64 MiB, the overwrite workload at 64 KiB/s or more, and the cow-read-live fault.
    fn fails(d: &Draft) -> bool {
        let s = d.scenario();
        let fast_overwrite = (0..s.workloads.len()).any(|i| {
            let rate = d
                .get("workloads", i, "rate")
                .and_then(|r| r.as_str())
                .and_then(halve::split_rate);
            s.workloads[i].spec.kind.name() == "overwrite"
                && matches!(rate, Some((Quantity::Bytes(b), _)) if b >= 64 << 10)
        });
        s.volumes[0].size >= 64 << 20
            && fast_overwrite
            && s.faults
                .iter()
                .any(|f| f.spec.kind().name() == "cow-read-live")
    }

    /// A fake session: a clock that runs forward `per_run` plus 1 s per MiB of volume
    /// for each run, and a runner that fails on [`fails`], except where `flaky` says.
    struct Fake {
        now: Cell<Duration>,
        per_run: Duration,
        runs_of: RefCell<HashMap<String, u32>>,
    }

    impl Fake {
        fn new(per_run: Duration) -> Fake {
            Fake {
                now: Cell::new(Duration::ZERO),
                per_run,
                runs_of: RefCell::new(HashMap::new()),
            }
        }

        fn run(&self, step: &Step, flaky: &dyn Fn(&Step) -> bool) -> Trial {
            *self
                .runs_of
                .borrow_mut()
                .entry(step.draft.text())
                .or_default() += 1;
            let mib = step.draft.scenario().volumes[0].size >> 20;
            self.now
                .set(self.now.get() + self.per_run + Duration::from_secs(mib));
            if fails(step.draft) && !flaky(step) {
                Trial::Same
            } else {
                Trial::Differs("passed".into())
            }
        }
    }

    fn opts(budget_s: u64, confirm: u32) -> SearchOptions {
        SearchOptions {
            budget: Duration::from_secs(budget_s),
            confirm,
            min_run: Duration::from_secs(1),
        }
    }

    fn go(fake: &Fake, o: &SearchOptions, flaky: &dyn Fn(&Step) -> bool) -> Searched {
        let mut progress = |_: &Progress| {};
        search(
            start(),
            o,
            Duration::from_secs(60),
            &|| fake.now.get(),
            &mut |step| fake.run(step, flaky),
            &mut progress,
        )
    }

    #[test]
    fn it_ends_at_the_smallest_draft_that_still_fails() {
        let fake = Fake::new(Duration::from_secs(10));
        let r = go(&fake, &opts(1_000_000, 1), &|_| false);
        assert_eq!(r.stop, Stop::FixedPoint);
        let s = r.best.scenario();
        assert!(fails(&r.best));
        assert_eq!(s.volumes[0].size, 64 << 20);
        assert_eq!(s.volumes[0].fill, SizeOrPercent::Bytes(0));
        assert_eq!(s.workloads.len(), 1);
        assert_eq!(s.backup.incrementals, 0);
        assert_eq!(s.faults.len(), 1);
        assert_eq!(
            r.best.get("workloads", 0, "rate").unwrap().as_str(),
            Some("64KiB/s")
        );
        // A fixed point: no candidate of the result fails.
        for pass in Pass::ALL {
            for c in pass.candidates(&r.best) {
                assert!(!fails(&c.draft), "{} still fails", c.cut);
            }
        }
        // The original ran twice (the report and a confirmation counted as one here:
        // confirm = 1 run), every kept cut twice, every other draft once.
        let runs = fake.runs_of.borrow();
        assert_eq!(runs[&start().text()], 1);
        for (text, n) in runs.iter() {
            let d = Draft::parse(Path::new("x.toml"), text).unwrap();
            if *text != start().text() {
                assert_eq!(*n, if fails(&d) { 2 } else { 1 }, "{text}");
            }
        }
        assert_eq!(r.runs as usize, runs.values().sum::<u32>() as usize);
        assert_eq!(r.log.len(), r.runs as usize);
        assert_eq!(runs.len() as u32, r.candidates + 1);
        assert!(r.kept.len() >= 8, "{:?}", r.kept);
    }

    #[test]
    fn a_candidate_that_fails_once_is_not_kept() {
        let fake = Fake::new(Duration::from_secs(10));
        // Every confirming run of a cut of the volume size passes: no size cut is kept.
        let flaky = |step: &Step| step.run == 2 && matches!(step.cut, Some(Cut::VolumeSize { .. }));
        let r = go(&fake, &opts(1_000_000, 1), &flaky);
        assert_eq!(r.stop, Stop::FixedPoint);
        assert_eq!(r.best.scenario().volumes[0].size, 512 << 20);
        assert!(r.kept.iter().all(|c| !matches!(c, Cut::VolumeSize { .. })));
        // With no confirmation the same flakiness does not show: sizes are cut.
        let fake = Fake::new(Duration::from_secs(10));
        let r = go(&fake, &opts(1_000_000, 0), &flaky);
        assert_eq!(r.best.scenario().volumes[0].size, 64 << 20);
        assert!(!r.log.iter().any(|l| l.label.contains("the original")));
    }

    #[test]
    fn the_budget_is_honoured() {
        for budget in [0, 30, 600, 700, 2000, 5000] {
            let fake = Fake::new(Duration::from_secs(10));
            let r = go(&fake, &opts(budget, 1), &|_| false);
            match &r.stop {
                Stop::Budget { left, needed, .. } => assert!(left < needed),
                Stop::FixedPoint if budget >= 2000 => {}
                other => panic!("budget {budget}: {other:?}"),
            }
            // No run started that the last full run's time said would not fit; the
            // runs here take at most that long, so the search ends within budget.
            assert!(
                fake.now.get() <= Duration::from_secs(budget),
                "budget {budget}: ran until {:?}",
                fake.now.get()
            );
            assert!(fails(&r.best));
        }
    }

    #[test]
    fn a_stopped_run_or_an_original_that_does_not_fail_again_ends_it() {
        let fake = Fake::new(Duration::from_secs(10));
        let mut progress = |_: &Progress| {};
        let mut calls = 0;
        let r = search(
            start(),
            &opts(1_000_000, 1),
            Duration::from_secs(60),
            &|| fake.now.get(),
            &mut |step| {
                calls += 1;
                if calls == 3 {
                    Trial::Stopped
                } else {
                    fake.run(step, &|_| false)
                }
            },
            &mut progress,
        );
        assert_eq!(r.stop, Stop::Stopped);
        assert_eq!(r.runs, 3);

        let r = search(
            start(),
            &opts(1_000_000, 2),
            Duration::from_secs(60),
            &|| Duration::ZERO,
            &mut |step| {
                if step.run == 2 {
                    Trial::Differs("passed".into())
                } else {
                    Trial::Same
                }
            },
            &mut progress,
        );
        assert_eq!(
            r.stop,
            Stop::NotReproduced {
                run: 2,
                why: "passed".into()
            }
        );
        assert_eq!(r.candidates, 0);
        assert_eq!(r.best.text(), start().text());
    }

    #[test]
    fn progress_names_the_run_and_the_best_so_far() {
        let fake = Fake::new(Duration::from_secs(10));
        let mut seen = Vec::new();
        let mut progress = |p: &Progress| {
            seen.push((p.trying.clone(), p.best_line.to_string(), p.kept.len()));
        };
        search(
            start(),
            &opts(1_000_000, 1),
            Duration::from_secs(60),
            &|| fake.now.get(),
            &mut |step| fake.run(step, &|_| false),
            &mut progress,
        );
        assert_eq!(seen[0].0.as_deref(), Some("the original, run 1 of 1"));
        assert_eq!(
            seen[1].0.as_deref(),
            Some("candidate 1 (volume data size 512MiB -> 64MiB), run 1 of 2")
        );
        let after = seen.iter().find(|s| s.2 == 1).unwrap();
        assert!(
            after.1.starts_with("1 volume (data 64MiB ext4 fill 50%)"),
            "{}",
            after.1
        );
    }
}

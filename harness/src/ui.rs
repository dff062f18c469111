//! Presenting run events: progress bars on a terminal (indicatif), plain lines otherwise
//! (CI logs), with progress lines throttled so a log stays readable.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::events::{Event, Reporter, Unit};

/// Writes events to stderr, as bars on a terminal and as lines elsewhere.
pub struct Terminal {
    bars: Option<MultiProgress>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bars: HashMap<(String, String), ProgressBar>,
    last_line: HashMap<(String, String), (Instant, u64)>,
    /// Per shrink session: the run and the cut count last printed (plain lines).
    shrink_said: HashMap<String, (Option<String>, usize)>,
}

impl Terminal {
    /// Bars when stderr is a terminal, unless `plain`.
    pub fn new(plain: bool) -> Terminal {
        let tty = std::io::stderr().is_terminal() && !plain;
        Terminal {
            bars: tty.then(MultiProgress::new),
            state: Mutex::new(State::default()),
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Ends the progress bars of one run.
    fn clear_bars(&self, run_id: &str) {
        let mut st = self.state.lock().unwrap();
        for ((r, _), bar) in st.bars.iter() {
            if r == run_id {
                bar.finish_and_clear();
            }
        }
        st.bars.retain(|(r, _), _| r != run_id);
    }
}

fn short(run_id: &str) -> &str {
    run_id.rsplit('/').next().unwrap_or(run_id)
}

/// "12m05s", "45s": budgets and elapsed times of a shrink.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn amount(n: u64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => format!("{:.1} MiB", n as f64 / 1048576.0),
        Unit::Blocks => format!("{n} blocks"),
        Unit::Steps => n.to_string(),
    }
}

impl Reporter for Terminal {
    fn event(&self, event: &Event) {
        match event {
            Event::RunStarted {
                run_id,
                scenario,
                image,
                seed,
            } => self.line(&format!(
                "[{}] run {scenario} on {image}, seed {seed}",
                short(run_id)
            )),
            Event::Phase { run_id, name } => {
                self.clear_bars(run_id);
                self.line(&format!("[{}] {name}", short(run_id)));
            }
            Event::Progress {
                run_id,
                what,
                done,
                total,
                unit,
            } => {
                let key = (run_id.clone(), what.clone());
                let mut st = self.state.lock().unwrap();
                if let Some(m) = &self.bars {
                    let bar = st.bars.entry(key).or_insert_with(|| {
                        let bar = m.add(ProgressBar::new(*total));
                        let template = match unit {
                            Unit::Bytes => "  {msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                            Unit::Blocks | Unit::Steps => "  {msg:24} [{bar:30}] {pos}/{len} eta {eta}",
                        };
                        bar.set_style(
                            ProgressStyle::with_template(template)
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        bar.set_message(what.clone());
                        bar
                    });
                    bar.set_length(*total);
                    bar.set_position(*done);
                    return;
                }
                // Plain: a line at most every 10 s or 25 %, and at the end.
                let (last_t, last_n) = st
                    .last_line
                    .get(&key)
                    .copied()
                    .unwrap_or((Instant::now() - Duration::from_secs(3600), 0));
                let quarter = (*total / 4).max(1);
                if done >= total
                    || last_t.elapsed() >= Duration::from_secs(10)
                    || done.saturating_sub(last_n) >= quarter
                {
                    if last_n == *done && *done != 0 {
                        return;
                    }
                    st.last_line.insert(key, (Instant::now(), *done));
                    drop(st);
                    self.line(&format!(
                        "[{}]   {what}: {} of {}",
                        short(run_id),
                        amount(*done, *unit),
                        amount(*total, *unit)
                    ));
                }
            }
            Event::Note { run_id, text } => self.line(&format!("[{}]   {text}", short(run_id))),
            Event::Shrink {
                session,
                runs,
                cuts_kept,
                trying,
                best,
                elapsed,
                budget,
            } => {
                let time = format!(
                    "{} of {} ({} left), {runs} runs, {cuts_kept} cuts kept",
                    clock(*elapsed),
                    clock(*budget),
                    clock(budget.saturating_sub(*elapsed))
                );
                let mut st = self.state.lock().unwrap();
                if let Some(m) = &self.bars {
                    let bar = st
                        .bars
                        .entry((session.clone(), "shrink".into()))
                        .or_insert_with(|| {
                            let bar = m.add(ProgressBar::new(budget.as_secs().max(1)));
                            bar.set_style(
                                ProgressStyle::with_template("  shrink [{bar:30}] {msg}")
                                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                                    .progress_chars("=> "),
                            );
                            bar
                        });
                    bar.set_position(elapsed.as_secs().min(budget.as_secs()));
                    bar.set_message(format!(
                        "{time}\n  trying: {}\n  best:   {best}",
                        trying.as_deref().unwrap_or("-")
                    ));
                    return;
                }
                // Plain: a line when a run starts or a cut is kept, not for the time.
                let said = st.shrink_said.entry(session.clone()).or_default();
                let text = match trying {
                    Some(t) if said.0.as_ref() != Some(t) => {
                        said.0 = Some(t.clone());
                        format!("{time}; trying {t}")
                    }
                    None if said.1 != *cuts_kept => {
                        said.1 = *cuts_kept;
                        format!("{time}; best so far: {best}")
                    }
                    Some(_) | None => return,
                };
                drop(st);
                self.line(&format!("[{}] {text}", short(session)));
            }
            Event::RunFinished {
                run_id,
                verdict,
                report_dir,
                elapsed,
            } => {
                self.clear_bars(run_id);
                self.line(&format!(
                    "[{}] {verdict} in {:.0}s: {report_dir}",
                    short(run_id),
                    elapsed.as_secs_f64()
                ));
            }
        }
    }
}

//! The shrunk scenario file: a comment header naming the original run, what "the same
//! way" meant, what was cut and how the search ended, then the draft's own text. The
//! result is a scenario `blockwitness check` accepts and `blockwitness run` repeats.

use std::path::Path;
use std::time::Duration;

use super::draft::Draft;
use super::passes::Cut;
use super::search::Stop;

/// What the header says.
#[derive(Debug)]
pub struct Header<'a> {
    pub report_dir: &'a Path,
    pub scenario_file: &'a str,
    pub image: &'a str,
    pub seed: u64,
    pub goal: &'a str,
    pub original: &'a str,
    pub best: &'a str,
    pub kept: &'a [Cut],
    pub confirm: u32,
    pub runs: u32,
    pub candidates: u32,
    pub elapsed: Duration,
    /// None while the search still runs (a best-so-far file).
    pub stop: Option<&'a Stop>,
    pub repro: &'a str,
}

/// Why the search ended, in a few words.
pub fn stop_text(stop: &Stop) -> String {
    match stop {
        Stop::FixedPoint => "no smaller candidate failed the same way (a fixed point)".into(),
        Stop::Budget {
            left,
            needed,
            unconfirmed,
        } => {
            let mut t = format!(
                "the budget ended ({}s left, a run takes about {}s)",
                left.as_secs(),
                needed.as_secs()
            );
            if let Some(c) = unconfirmed {
                t.push_str(&format!(
                    "; \"{c}\" had failed the same way once but was not confirmed"
                ));
            }
            t
        }
        Stop::Stopped => "the budget ended during a run, which was stopped".into(),
        Stop::NotReproduced { run, why } => {
            format!("the original did not fail the same way again (run {run}: {why})")
        }
    }
}

fn minutes(d: Duration) -> String {
    format!("{:.0} min", d.as_secs_f64() / 60.0)
}

/// The file's text: the header, then the draft.
pub fn render(h: &Header, best: &Draft) -> String {
    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(if text.is_empty() { "#" } else { "# " });
        out.push_str(text);
        out.push('\n');
    };
    line("Shrunk by `blockwitness shrink` from the run in");
    line(&format!("  {}", h.report_dir.display()));
    line(&format!(
        "(scenario {}, image {}, seed {}).",
        h.scenario_file, h.image, h.seed
    ));
    line(&format!("Kept when {}.", h.goal));
    line(&format!("Before: {}", h.original));
    line(&format!("After:  {}", h.best));
    if h.kept.is_empty() {
        line("Cut: nothing (no smaller candidate failed the same way).");
    } else {
        line("Cut, in order:");
        for c in h.kept {
            line(&format!("  - {c}"));
        }
    }
    line("name, seed and images are pinned to the run, so `blockwitness run FILE` repeats it.");
    line(&format!(
        "Each cut was kept after {} run(s) in a row failed the same way (--confirm {}: TCG runs are noisy).",
        h.confirm + 1,
        h.confirm
    ));
    line(&format!(
        "{} runs, {} candidates, {}; {}.",
        h.runs,
        h.candidates,
        minutes(h.elapsed),
        match h.stop {
            Some(s) => format!("stopped: {}", stop_text(s)),
            None => "still running: this is the best so far".into(),
        }
    ));
    line(&format!("Repro: {}", h.repro));
    line("");
    out.push_str(&best.text());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shrink::passes::Pass;

    #[test]
    fn the_file_is_a_valid_scenario_with_its_header() {
        let text = "# The field story.\nname = \"x-shrunk\"\ndescription = \"d\"\nstory = \"s\"\n\
                    seed = 3\nimages = [\"debian-6.1\"]\n[[volumes]]\nname = \"data\"\nsize = \"512MiB\"\n";
        let d = Draft::parse(Path::new("x.toml"), text).unwrap();
        let c = Pass::VolumeSize.candidates(&d).remove(0);
        let stop = Stop::Budget {
            left: Duration::from_secs(40),
            needed: Duration::from_secs(95),
            unconfirmed: Some(c.cut.clone()),
        };
        let h = Header {
            report_dir: Path::new("reports/x-debian-6.1-s3-1"),
            scenario_file: "scenarios/x.toml",
            image: "debian-6.1",
            seed: 3,
            goal: "the run finds data-from-the-future and nothing else, whatever its verdict",
            original: "1 volume (data 512MiB ext4)",
            best: "1 volume (data 64MiB ext4)",
            kept: std::slice::from_ref(&c.cut),
            confirm: 1,
            runs: 5,
            candidates: 3,
            elapsed: Duration::from_secs(600),
            stop: Some(&stop),
            repro: "blockwitness run out.toml --image debian-6.1 --seed 3",
        };
        let out = render(&h, &c.draft);
        let s = crate::scenario::parse(Path::new("out.toml"), &out).unwrap();
        assert_eq!(s.volumes[0].size, 64 << 20);
        assert_eq!(s.seed, 3);
        let want_start = "# Shrunk by `blockwitness shrink` from the run in\n\
                          #   reports/x-debian-6.1-s3-1\n\
                          # (scenario scenarios/x.toml, image debian-6.1, seed 3).\n";
        assert!(out.starts_with(want_start), "{out}");
        for want in [
            "#   - volume data size 512MiB -> 64MiB\n",
            "after 2 run(s) in a row failed the same way (--confirm 1",
            "5 runs, 3 candidates, 10 min; stopped: the budget ended (40s left, a run takes about 95s); \"volume data size 512MiB -> 64MiB\" had failed",
            "# Repro: blockwitness run out.toml --image debian-6.1 --seed 3\n#\n# The field story.\n",
        ] {
            assert!(out.contains(want), "{want}\n---\n{out}");
        }
    }
}

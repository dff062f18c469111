//! The reduction passes: pure functions from a draft to smaller drafts. Each candidate
//! is one cut (a fault, a workload, a backup or a volume fewer; a smaller volume or
//! fill; fewer operations; a slower pace) and is valid, because a draft is only made by
//! validating its text. Every cut makes the plan strictly smaller in one dimension and
//! larger in none, so repeating the passes reaches a fixed point.

use std::fmt;

use super::draft::{int_array, Draft};
use super::halve;
use crate::scenario::units::format_size;
use crate::scenario::{SizeOrPercent, When};

/// One cut, described in the file's own terms (numbers count from 1, at the time of
/// the cut: an earlier cut may have renumbered what follows).
#[derive(Clone, Debug, PartialEq)]
pub enum Cut {
    DropFault {
        number: usize,
        kind: String,
        backup: u32,
    },
    DropWorkload {
        number: usize,
        kind: String,
        volume: String,
    },
    /// A backup of the sequence, with the workloads and faults that only belonged to it.
    DropBackup {
        number: u32,
        of: u32,
        also: Vec<String>,
    },
    DropVolume {
        name: String,
    },
    /// A workload no longer runs in one backup.
    WorkloadBackup {
        workload: usize,
        backup: u32,
    },
    VolumeSize {
        volume: String,
        from: u64,
        to: u64,
    },
    Fill {
        volume: String,
        from: String,
        to: String,
    },
    /// `amount`, `ops` or `duration` of a workload.
    Bound {
        workload: usize,
        key: &'static str,
        from: String,
        to: String,
    },
    Rate {
        workload: usize,
        from: String,
        to: String,
    },
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Cut::DropFault {
                number,
                kind,
                backup,
            } => write!(f, "fault {number} ({kind} in backup {backup}) dropped"),
            Cut::DropWorkload {
                number,
                kind,
                volume,
            } => write!(f, "workload {number} ({kind} on {volume}) dropped"),
            Cut::DropBackup { number, of, also } => {
                write!(f, "backup {number} of {of} dropped")?;
                if !also.is_empty() {
                    write!(f, ", with {}", also.join(" and "))?;
                }
                Ok(())
            }
            Cut::DropVolume { name } => write!(f, "volume {name} dropped"),
            Cut::WorkloadBackup { workload, backup } => {
                write!(f, "workload {workload} no longer runs in backup {backup}")
            }
            Cut::VolumeSize { volume, from, to } => write!(
                f,
                "volume {volume} size {} -> {}",
                format_size(*from),
                format_size(*to)
            ),
            Cut::Fill { volume, from, to } => write!(f, "volume {volume} fill {from} -> {to}"),
            Cut::Bound {
                workload,
                key,
                from,
                to,
            } => write!(f, "workload {workload} {key} {from} -> {to}"),
            Cut::Rate { workload, from, to } => {
                write!(f, "workload {workload} rate {from} -> {to}")
            }
        }
    }
}

/// A smaller draft and the cut that made it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub draft: Draft,
    pub cut: Cut,
}

/// The reduction passes, in the order the search tries them: volume size first
/// (every later run is quicker on a smaller volume), then whole parts, then amounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    VolumeSize,
    DropFaults,
    DropWorkloads,
    DropBackups,
    DropVolumes,
    WorkloadBackups,
    Fill,
    Bounds,
    Rate,
}

impl Pass {
    pub const ALL: [Pass; 9] = [
        Pass::VolumeSize,
        Pass::DropFaults,
        Pass::DropWorkloads,
        Pass::DropBackups,
        Pass::DropVolumes,
        Pass::WorkloadBackups,
        Pass::Fill,
        Pass::Bounds,
        Pass::Rate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pass::VolumeSize => "volume size",
            Pass::DropFaults => "fewer faults",
            Pass::DropWorkloads => "fewer workloads",
            Pass::DropBackups => "fewer backups",
            Pass::DropVolumes => "fewer volumes",
            Pass::WorkloadBackups => "workloads in fewer backups",
            Pass::Fill => "less fill",
            Pass::Bounds => "fewer workload operations",
            Pass::Rate => "slower workloads",
        }
    }

    /// The valid smaller drafts this pass makes of `d`, most aggressive first.
    pub fn candidates(self, d: &Draft) -> Vec<Candidate> {
        match self {
            Pass::VolumeSize => volume_size(d),
            Pass::DropFaults => drop_faults(d),
            Pass::DropWorkloads => drop_workloads(d),
            Pass::DropBackups => drop_backups(d),
            Pass::DropVolumes => drop_volumes(d),
            Pass::WorkloadBackups => workload_backups(d),
            Pass::Fill => fill(d),
            Pass::Bounds => bounds(d),
            Pass::Rate => rate(d),
        }
    }
}

fn candidate(d: &Draft, cut: Cut, edit: impl FnOnce(&mut super::draft::Edit)) -> Option<Candidate> {
    d.edited(edit).map(|draft| Candidate { draft, cut })
}

fn volume_size(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    let mut out = Vec::new();
    for (i, v) in s.volumes.iter().enumerate() {
        for to in halve::volume_sizes(v.size) {
            let cut = Cut::VolumeSize {
                volume: v.name.clone(),
                from: v.size,
                to,
            };
            out.extend(candidate(d, cut, |e| {
                e.set("volumes", i, "size", format_size(to))
            }));
        }
    }
    out
}

/// "Fewer faults where more than one": the fault is what the scenario is about, so the
/// last one stays.
fn drop_faults(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    if s.faults.len() < 2 {
        return Vec::new();
    }
    s.faults
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let cut = Cut::DropFault {
                number: i + 1,
                kind: f.spec.kind().name().to_owned(),
                backup: f.backup,
            };
            candidate(d, cut, |e| e.remove("faults", i))
        })
        .collect()
}

fn drop_workloads(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    s.workloads
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let cut = Cut::DropWorkload {
                number: i + 1,
                kind: w.spec.kind.name().to_owned(),
                volume: w.spec.volume.clone(),
            };
            candidate(d, cut, |e| e.remove("workloads", i))
        })
        .collect()
}

/// Drops backup `j` of the sequence (the last first: plain "fewer incrementals"):
/// later backups move up one, explicit `backups` lists and fault backups follow, and a
/// workload or fault that only belonged to backup `j` goes with it (never the last
/// fault).
fn drop_backups(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    let count = s.backup.count();
    let mut out = Vec::new();
    for j in (1..=count).rev().filter(|_| count >= 2) {
        let mut also = Vec::new();
        // Workloads with an explicit list: the new list, or None when it empties.
        let mut lists: Vec<(usize, Option<Vec<u32>>)> = Vec::new();
        for (i, w) in s.workloads.iter().enumerate() {
            if d.get("workloads", i, "backups").is_none() {
                continue;
            }
            let list: Vec<u32> = w
                .backups
                .iter()
                .filter(|b| **b != j)
                .map(|b| if *b > j { b - 1 } else { *b })
                .collect();
            if list.is_empty() {
                also.push(format!("workload {} ({})", i + 1, w.spec.kind.name()));
                lists.push((i, None));
            } else if list != w.backups {
                lists.push((i, Some(list)));
            }
        }
        let mut faults: Vec<(usize, Option<u32>)> = Vec::new();
        for (i, f) in s.faults.iter().enumerate() {
            if f.backup == j {
                also.push(format!("fault {} ({})", i + 1, f.spec.kind().name()));
                faults.push((i, None));
            } else if f.backup > j {
                faults.push((i, Some(f.backup - 1)));
            }
        }
        let dropped_faults = faults.iter().filter(|(_, b)| b.is_none()).count();
        if !s.faults.is_empty() && dropped_faults == s.faults.len() {
            continue;
        }
        let cut = Cut::DropBackup {
            number: j,
            of: count,
            also,
        };
        out.extend(candidate(d, cut, |e| {
            e.set_in("backup", "incrementals", i64::from(count - 2));
            // Highest index first, so removals do not shift what is still to edit.
            for (i, list) in lists.iter().rev() {
                match list {
                    Some(l) => e.set("workloads", *i, "backups", int_array(l)),
                    None => e.remove("workloads", *i),
                }
            }
            for (i, backup) in faults.iter().rev() {
                match backup {
                    Some(b) => e.set("faults", *i, "backup", i64::from(*b)),
                    None => e.remove("faults", *i),
                }
            }
        }));
    }
    out
}

fn drop_volumes(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    if s.volumes.len() < 2 {
        return Vec::new();
    }
    s.volumes
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let cut = Cut::DropVolume {
                name: v.name.clone(),
            };
            candidate(d, cut, |e| e.remove("volumes", i))
        })
        .collect()
}

fn workload_backups(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    let mut out = Vec::new();
    for (i, w) in s.workloads.iter().enumerate() {
        if w.when == When::Before || w.backups.len() < 2 {
            continue;
        }
        for b in w.backups.iter().rev() {
            let list: Vec<u32> = w.backups.iter().copied().filter(|x| x != b).collect();
            let cut = Cut::WorkloadBackup {
                workload: i + 1,
                backup: *b,
            };
            out.extend(candidate(d, cut, |e| {
                e.set("workloads", i, "backups", int_array(&list))
            }));
        }
    }
    out
}

fn fill(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    let mut out = Vec::new();
    for (i, v) in s.volumes.iter().enumerate() {
        let (from, smaller): (String, Vec<String>) = match v.fill {
            SizeOrPercent::Bytes(0) => continue,
            SizeOrPercent::Percent(p) if p <= 0.0 => continue,
            SizeOrPercent::Bytes(b) => (
                format_size(b),
                halve::data_sizes(b).into_iter().map(format_size).collect(),
            ),
            SizeOrPercent::Percent(p) => (
                halve::format_percent(p),
                halve::percents(p)
                    .into_iter()
                    .map(halve::format_percent)
                    .collect(),
            ),
        };
        let none = Cut::Fill {
            volume: v.name.clone(),
            from: from.clone(),
            to: "none".into(),
        };
        out.extend(candidate(d, none, |e| e.unset("volumes", i, "fill")));
        for to in smaller {
            let cut = Cut::Fill {
                volume: v.name.clone(),
                from: from.clone(),
                to: to.clone(),
            };
            out.extend(candidate(d, cut, |e| e.set("volumes", i, "fill", to)));
        }
    }
    out
}

/// Fewer operations for workloads that end by themselves (or are bounded while a
/// backup runs): `amount`, `ops`, `duration` each cut.
fn bounds(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    let mut out = Vec::new();
    for (i, w) in s.workloads.iter().enumerate() {
        let mut tries: Vec<(&'static str, String, String)> = Vec::new();
        if let Some(a) = w.spec.amount {
            for to in halve::data_sizes(a) {
                tries.push(("amount", format_size(a), format_size(to)));
            }
        }
        if let Some(n) = w.spec.ops {
            for to in halve::counts(n) {
                tries.push(("ops", n.to_string(), to.to_string()));
            }
        }
        if let Some(t) = w.spec.duration {
            for to in halve::durations(t) {
                tries.push((
                    "duration",
                    halve::format_duration(t),
                    halve::format_duration(to),
                ));
            }
        }
        for (key, from, to) in tries {
            let cut = Cut::Bound {
                workload: i + 1,
                key,
                from,
                to: to.clone(),
            };
            out.extend(candidate(d, cut, |e| {
                if key == "ops" {
                    let n: i64 = to.parse().unwrap_or(0);
                    e.set("workloads", i, key, n)
                } else {
                    e.set("workloads", i, key, to)
                }
            }));
        }
    }
    out
}

/// A slower pace: a workload's rate (wall-clock, or a share of the backup's progress)
/// halved; the same run then writes fewer blocks.
fn rate(d: &Draft) -> Vec<Candidate> {
    let s = d.scenario();
    let mut out = Vec::new();
    for i in 0..s.workloads.len() {
        let Some(from) = d
            .get("workloads", i, "rate")
            .and_then(|r| r.as_str())
            .map(str::to_owned)
        else {
            continue;
        };
        for to in halve::rates(&from) {
            let cut = Cut::Rate {
                workload: i + 1,
                from: from.clone(),
                to: to.clone(),
            };
            out.extend(candidate(d, cut, |e| e.set("workloads", i, "rate", to)));
        }
    }
    out
}

/// The draft in one line, for "best so far" and the output file's header.
pub fn describe(d: &Draft) -> String {
    let s = d.scenario();
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let volumes: Vec<String> = s
        .volumes
        .iter()
        .map(|v| {
            let fill = match v.fill {
                SizeOrPercent::Bytes(0) => String::new(),
                SizeOrPercent::Bytes(b) => format!(" fill {}", format_size(b)),
                SizeOrPercent::Percent(p) => format!(" fill {}", halve::format_percent(p)),
            };
            format!("{} {} {}{fill}", v.name, format_size(v.size), v.fs.name())
        })
        .collect();
    let workloads: Vec<String> = s
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut bits = vec![w.spec.kind.name().to_owned()];
            if let Some(r) = d.get("workloads", i, "rate").and_then(|r| r.as_str()) {
                bits.push(r.to_owned());
            }
            if let Some(a) = w.spec.amount {
                bits.push(format!("amount {}", format_size(a)));
            }
            if let Some(n) = w.spec.ops {
                bits.push(format!("ops {n}"));
            }
            if let Some(t) = w.spec.duration {
                bits.push(format!("duration {}", halve::format_duration(t)));
            }
            bits.join(" ")
        })
        .collect();
    let faults: Vec<&str> = s.faults.iter().map(|f| f.spec.kind().name()).collect();
    let mut out = format!(
        "{} ({})",
        plural(s.volumes.len(), "volume"),
        volumes.join(", ")
    );
    out.push_str(&format!(", {}", plural(s.workloads.len(), "workload")));
    if !workloads.is_empty() {
        out.push_str(&format!(" ({})", workloads.join(", ")));
    }
    out.push_str(&format!(
        ", {}, {}",
        plural(s.backup.count() as usize, "backup"),
        plural(s.faults.len(), "fault")
    ));
    if !faults.is_empty() {
        out.push_str(&format!(" ({})", faults.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::scenario::Scenario;

    /// Counts an unbounded amount, count or rate: more than any bound in a test.
    const UNBOUNDED: u64 = 1 << 50;

    /// The plan's size in every dimension a cut may reduce.
    fn measure(d: &Draft) -> Vec<u64> {
        let s: &Scenario = d.scenario();
        let sum = |it: &mut dyn Iterator<Item = u64>| it.sum::<u64>();
        let rate_of = |i: usize, want_ops: bool| -> u64 {
            match d
                .get("workloads", i, "rate")
                .and_then(|r| r.as_str())
                .and_then(halve::split_rate)
            {
                Some((halve::Quantity::Bytes(b), _)) if !want_ops => b,
                Some((halve::Quantity::Ops(n), _)) if want_ops => n,
                Some(_) => 0,
                None => UNBOUNDED,
            }
        };
        vec![
            s.faults.len() as u64,
            s.workloads.len() as u64,
            u64::from(s.backup.count()),
            s.volumes.len() as u64,
            sum(&mut s.volumes.iter().map(|v| v.size)),
            sum(&mut s.volumes.iter().map(|v| v.fill.resolve(v.size))),
            sum(&mut s.workloads.iter().map(|w| w.backups.len().max(1) as u64)),
            sum(&mut s
                .workloads
                .iter()
                .map(|w| w.spec.amount.unwrap_or(UNBOUNDED))),
            sum(&mut s.workloads.iter().map(|w| w.spec.ops.unwrap_or(UNBOUNDED))),
            sum(&mut s
                .workloads
                .iter()
                .map(|w| w.spec.duration.map_or(UNBOUNDED, |t| t.as_millis() as u64))),
            sum(&mut (0..s.workloads.len()).map(|i| rate_of(i, false))),
            sum(&mut (0..s.workloads.len()).map(|i| rate_of(i, true))),
        ]
    }

    /// No dimension grows, at least one shrinks.
    fn assert_smaller(before: &Draft, c: &Candidate) {
        let (a, b) = (measure(before), measure(&c.draft));
        assert!(
            a.iter().zip(&b).all(|(x, y)| y <= x) && a != b,
            "{}: {a:?} -> {b:?}",
            c.cut
        );
    }

    fn library() -> Vec<(PathBuf, String)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        crate::scenario::scenario_files(&dir)
            .unwrap()
            .into_iter()
            .map(|p| {
                let t = std::fs::read_to_string(&p).unwrap();
                (p, t)
            })
            .collect()
    }

    /// Every pass, on every library scenario and on a scenario with more of
    /// everything, yields only valid, strictly smaller drafts; repeating the first
    /// candidate of each pass ends (a fixed point exists).
    #[test]
    fn every_candidate_is_valid_and_smaller() {
        let mut sources = library();
        assert!(sources.len() >= 10, "the library has {}", sources.len());
        sources.push((PathBuf::from("rich.toml"), RICH.to_string()));
        let mut seen = 0;
        for (path, text) in &sources {
            let d = Draft::parse(path, text).unwrap();
            for pass in Pass::ALL {
                for c in pass.candidates(&d) {
                    // Valid: it reloads from its own text.
                    let again = crate::scenario::parse(path, &c.draft.text());
                    assert!(again.is_ok(), "{}: {}: {again:?}", path.display(), c.cut);
                    assert_smaller(&d, &c);
                    seen += 1;
                }
                let mut cur = d.clone();
                for step in 0.. {
                    assert!(
                        step < 200,
                        "{}: {} does not end",
                        path.display(),
                        pass.name()
                    );
                    match pass.candidates(&cur).into_iter().next() {
                        Some(c) => cur = c.draft,
                        None => break,
                    }
                }
            }
        }
        assert!(seen > 100, "only {seen} candidates");
    }

    const RICH: &str = r#"# A scenario with more of everything.
name = "rich"
description = "d"
story = "s"

[[volumes]]
name = "boot"
size = "64MiB"
fs = "ext2"
fill = "8MiB" # absolute fill

[[volumes]]
name = "data"
size = "512MiB"
fill = "50%"

[[workloads]]
kind = "overwrite"
wall_clock_reason = "a wall-clock workload under test"
volume = "data"
stamped = true
rate = "1MiB/s" # a reason for this rate
backups = [1, 3]

[[workloads]]
kind = "append"
volume = "data"
when = "between"
amount = "64MiB"
backups = [3]

[[workloads]]
kind = "metadata-churn"
volume = "boot"
when = "before"
ops = 400
duration = "20s"

[backup]
incrementals = 2

[[faults]]
layer = "module"
kind = "drop-tracking"
every = 5
backup = 3

[[faults]]
layer = "transport"
kind = "bit-flip"
frame = 10
"#;

    fn rich() -> Draft {
        Draft::parse(Path::new("rich.toml"), RICH).unwrap()
    }

    fn cuts(pass: Pass, d: &Draft) -> Vec<String> {
        pass.candidates(d)
            .iter()
            .map(|c| c.cut.to_string())
            .collect()
    }

    #[test]
    fn each_pass_makes_the_cuts_it_names() {
        let d = rich();
        let table: &[(Pass, &[&str])] = &[
            (
                Pass::VolumeSize,
                &[
                    "volume boot size 64MiB -> 8MiB",
                    "volume boot size 64MiB -> 32MiB",
                    "volume data size 512MiB -> 64MiB",
                    "volume data size 512MiB -> 256MiB",
                ],
            ),
            (
                Pass::DropFaults,
                &[
                    "fault 1 (drop-tracking in backup 3) dropped",
                    "fault 2 (bit-flip in backup 1) dropped",
                ],
            ),
            (
                Pass::DropWorkloads,
                &[
                    "workload 1 (overwrite on data) dropped",
                    "workload 2 (append on data) dropped",
                    "workload 3 (metadata-churn on boot) dropped",
                ],
            ),
            (
                Pass::DropBackups,
                &[
                    "backup 3 of 3 dropped, with workload 2 (append) and fault 1 (drop-tracking)",
                    "backup 2 of 3 dropped",
                    "backup 1 of 3 dropped, with fault 2 (bit-flip)",
                ],
            ),
            // Each volume has a workload on it: dropping one is never valid.
            (Pass::DropVolumes, &[]),
            (
                Pass::WorkloadBackups,
                &[
                    "workload 1 no longer runs in backup 3",
                    "workload 1 no longer runs in backup 1",
                ],
            ),
            (
                Pass::Fill,
                &[
                    "volume boot fill 8MiB -> none",
                    "volume boot fill 8MiB -> 1MiB",
                    "volume boot fill 8MiB -> 4MiB",
                    "volume data fill 50% -> none",
                    "volume data fill 50% -> 6.25%",
                    "volume data fill 50% -> 25%",
                ],
            ),
            (
                Pass::Bounds,
                &[
                    "workload 2 amount 64MiB -> 8MiB",
                    "workload 2 amount 64MiB -> 32MiB",
                    "workload 3 ops 400 -> 50",
                    "workload 3 ops 400 -> 200",
                    "workload 3 duration 20s -> 2500ms",
                    "workload 3 duration 20s -> 10s",
                ],
            ),
            (Pass::Rate, &["workload 1 rate 1MiB/s -> 512KiB/s"]),
        ];
        for (pass, want) in table {
            assert_eq!(cuts(*pass, &d), *want, "{}", pass.name());
        }
    }

    #[test]
    fn dropping_a_backup_renumbers_what_follows() {
        let d = rich();
        let c = Pass::DropBackups
            .candidates(&d)
            .into_iter()
            .find(|c| matches!(c.cut, Cut::DropBackup { number: 2, .. }))
            .unwrap();
        let s = c.draft.scenario();
        assert_eq!(s.backup.incrementals, 1);
        assert_eq!(s.workloads[0].backups, vec![1, 2]);
        assert_eq!(s.workloads[1].backups, vec![2]);
        assert_eq!(s.faults[0].backup, 2);
        assert_eq!(s.faults[1].backup, 1);
        // The comments of the file survive the edit.
        let text = c.draft.text();
        assert!(text.starts_with("# A scenario with more of everything."));
        assert!(text.contains("# a reason for this rate"), "{text}");

        // The last fault (drop-tracking, in backup 3) never goes with its backup.
        let one = Pass::DropFaults.candidates(&d).remove(1).draft;
        assert_eq!(one.scenario().faults.len(), 1);
        assert_eq!(
            cuts(Pass::DropBackups, &one),
            vec!["backup 2 of 3 dropped", "backup 1 of 3 dropped"]
        );
        assert!(cuts(Pass::DropFaults, &one).is_empty());
    }

    #[test]
    fn the_description_names_what_is_left() {
        let text = "name = \"one\"\ndescription = \"d\"\nstory = \"s\"\n\
            [[volumes]]\nname = \"data\"\nsize = \"512MiB\"\nfill = \"50%\"\n\
            [[workloads]]\nkind = \"overwrite\"\nstamped = true\nrate = \"1MiB/s\"\nwall_clock_reason = \"w\"\n\
            [[faults]]\nlayer = \"module\"\nkind = \"cow-read-live\"\nevery = 10\n";
        let d = Draft::parse(Path::new("one.toml"), text).unwrap();
        assert_eq!(
            describe(&d),
            "1 volume (data 512MiB ext4 fill 50%), 1 workload (overwrite 1MiB/s), 1 backup, 1 fault (cow-read-live)"
        );
        assert_eq!(
            describe(&rich()),
            "2 volumes (boot 64MiB ext2 fill 8MiB, data 512MiB ext4 fill 50%), 3 workloads \
             (overwrite 1MiB/s, append amount 64MiB, metadata-churn ops 400 duration 20s), \
             3 backups, 2 faults (drop-tracking, bit-flip)"
        );
    }
}

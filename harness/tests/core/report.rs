//! Reports: the size budget of a clean 512 MiB run, the files a report holds, rebuilding
//! from the recording, and how verdicts come out of expectations.

use std::collections::BTreeSet;
use std::path::Path;

use blockwitness::classify::evaluate;
use blockwitness::console;
use blockwitness::model::*;
use blockwitness::record::*;
use blockwitness::report;

/// 5 MB, decimal: the budget of a clean 512 MiB run's whole report directory.
const BUDGET: u64 = 5_000_000;

fn h(tag: u64, i: u64) -> BlockHash {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&tag.to_le_bytes());
    b[8..].copy_from_slice(&i.to_le_bytes());
    BlockHash::of(&b)
}

/// A full backup of `n` blocks where every stage equals truth, the COW file excluded.
fn clean_generation(n: u64) -> GenerationRecord {
    let truth: Vec<BlockHash> = (0..n).map(|i| h(1, i)).collect();
    let mut g = GenerationRecord::new(1, BackupKind::Full, truth.clone());
    let col: Vec<Option<BlockHash>> = truth.iter().map(|t| Some(*t)).collect();
    g.snapshot = Some(col.clone());
    g.live = Some(vec![Live::Equal; n as usize]);
    g.source = Some(vec![Some(Source::Cow); n as usize]);
    g.transport = Some(col.clone());
    g.target = Some(col);
    g.committed = true;
    g.agent = Claim::Success;
    g.target_claim = Claim::Success;
    g.snapshot_instant_ns = Some(5_000_000_000);
    g.excluded.push(Exclusion {
        start: n / 2,
        end: n / 2 + n / 10,
        reason: "COW file extents".into(),
    });
    g
}

fn recording(g: GenerationRecord, expect: Expectations) -> Recording {
    Recording {
        run: RunInfo {
            run_id: "future-clean-debian-6.1-s1".into(),
            scenario: "future-clean".into(),
            scenario_file: "scenarios/future-clean.toml".into(),
            seed: 1,
            image: "debian-6.1".into(),
            kernel: "6.1.0-56-amd64".into(),
            packages: vec![Package {
                name: "linux-image-6.1.0-56-amd64".into(),
                version: "6.1.158-1".into(),
                sha256: "ab".repeat(32),
            }],
            accelerator: "tcg".into(),
            pipeline: "reference".into(),
            timings: vec![
                Timing {
                    phase: "boot".into(),
                    seconds: 8.5,
                },
                Timing {
                    phase: "backup".into(),
                    seconds: 40.0,
                },
            ],
            repro: "blockwitness run scenarios/future-clean.toml --image debian-6.1 --seed 1"
                .into(),
            ..RunInfo::default()
        },
        expect,
        volumes: vec![VolumeRecord {
            name: "data".into(),
            fs: "ext4".into(),
            generations: vec![g],
        }],
        events: RunEvents::default(),
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn a_clean_512_mib_run_report_stays_under_5_mb() {
    let rec = recording(clean_generation(131_072), Expectations::clean());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(report::CONSOLE_FILE),
        "[    0.000000] Linux version 6.1.0\n".repeat(400),
    )
    .unwrap();
    let out = report::write(dir.path(), &rec, Some("name = \"future-clean\"\n")).unwrap();
    assert_eq!(out.verdict, Verdict::Pass);
    let size = dir_size(dir.path());
    eprintln!("clean 512 MiB report: {size} bytes");
    assert!(size < BUDGET, "report is {size} bytes, budget {BUDGET}");
    for f in [
        RECORDING_FILE,
        report::SUMMARY_FILE,
        report::BLOCKS_FILE,
        report::JUNIT_FILE,
        report::HTML_FILE,
        report::REPRO_FILE,
        report::SCENARIO_FILE,
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    // The HTML's block map for 131072 clean blocks is one run.
    let html = std::fs::read_to_string(dir.path().join(report::HTML_FILE)).unwrap();
    assert!(
        html.contains("{\"rle\":[[0,65536],[8,13107],[0,52429]]}"),
        "block map encoding changed"
    );
    assert!(html.len() < 50_000, "index.html is {} bytes", html.len());
}

#[test]
fn a_failed_run_report_names_the_blocks_and_rebuilds_from_its_recording() {
    let mut g = clean_generation(4096);
    let stamp = bw_guest::stamp::Stamp {
        lba: 77,
        seq: 912,
        time_ns: 5_012_500_000,
        run: 1,
        writer: 1,
    };
    for b in [77u64, 78, 1000] {
        let x = h(9, b);
        g.snapshot.as_mut().unwrap()[b as usize] = Some(x);
        g.transport.as_mut().unwrap()[b as usize] = Some(x);
        g.target.as_mut().unwrap()[b as usize] = Some(x);
        g.fault_sites.insert(b);
    }
    g.stamps.insert(
        77,
        StampEvidence {
            held: vec![bw_guest::stamp::Piece {
                at: 0,
                len: 4096,
                stamp,
            }],
            truth: vec![],
        },
    );
    g.owners.insert(77, "/data/file-3".into());
    let expect = Expectations {
        classes: BTreeSet::from([BlockClass::DataFromTheFuture]),
        outcomes: BTreeSet::from([Outcome::FalseSuccess]),
        at: Where::FaultSites,
        ..Expectations::clean()
    };
    let rec = recording(g, expect);
    let dir = tempfile::tempdir().unwrap();
    let out = report::write(dir.path(), &rec, None).unwrap();
    assert_eq!(
        out.verdict,
        Verdict::Pass,
        "the detector fired where the fault was injected"
    );

    let csv = std::fs::read_to_string(dir.path().join(report::BLOCKS_FILE)).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows.len(),
        1 + 1 + 3,
        "header, the excluded range, three blocks:\n{csv}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("data,1,full,77,data-from-the-future,")
                && r.contains("/data/file-3")
                && r.contains(
                    "write #912 (writer 1) at LBA 77, 12.500 ms after the snapshot instant"
                )),
        "{csv}"
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(report::SUMMARY_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["counts"]["data-from-the-future"], 3);
    assert_eq!(summary["verdict"], "pass");
    assert_eq!(summary["outcomes"][0], "false-success");
    assert_eq!(summary["kernel"], "6.1.0-56-amd64");

    // Rebuild from the recording alone: same files.
    let before = std::fs::read(dir.path().join(report::HTML_FILE)).unwrap();
    std::fs::remove_file(dir.path().join(report::HTML_FILE)).unwrap();
    std::fs::remove_file(dir.path().join(report::BLOCKS_FILE)).unwrap();
    let rebuilt = report::rebuild_report(dir.path()).unwrap();
    assert_eq!(rebuilt.verdict, Verdict::Pass);
    assert_eq!(
        std::fs::read(dir.path().join(report::HTML_FILE)).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(report::BLOCKS_FILE)).unwrap(),
        csv
    );
}

#[test]
fn rebuilding_without_a_recording_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = report::rebuild_report(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no recording"), "{err}");
}

#[test]
fn junit_has_a_failure_for_product_failures_and_an_error_for_harness_errors() {
    let mut g = clean_generation(64);
    g.target.as_mut().unwrap()[3] = Some(h(5, 3));
    let dir = tempfile::tempdir().unwrap();
    let out = report::write(dir.path(), &recording(g, Expectations::clean()), None).unwrap();
    assert_eq!(out.verdict.exit(), Exit::ProductFailure);
    let junit = std::fs::read_to_string(dir.path().join(report::JUNIT_FILE)).unwrap();
    assert!(
        junit.contains("failures=\"1\" errors=\"0\"")
            && junit.contains("<failure type=\"product-failure\""),
        "{junit}"
    );
    assert!(
        junit.contains("name=\"future-clean@debian-6.1#seed1\""),
        "{junit}"
    );

    let mut rec = recording(clean_generation(64), Expectations::clean());
    rec.events
        .harness_errors
        .push("qemu exited: status 1 <stderr tail>".into());
    let out = report::write(dir.path(), &rec, None).unwrap();
    assert_eq!(out.verdict.exit(), Exit::HarnessError);
    let junit = std::fs::read_to_string(dir.path().join(report::JUNIT_FILE)).unwrap();
    assert!(
        junit.contains("<error type=\"harness-error\"") && junit.contains("&lt;stderr tail&gt;"),
        "{junit}"
    );
}

mod verdicts {
    use super::*;

    fn verdict(g: GenerationRecord, expect: Expectations, events: RunEvents) -> Verdict {
        let mut rec = recording(g, expect);
        rec.events = events;
        evaluate(&rec).verdict
    }

    fn future_at(blocks: &[u64], sites: &[u64]) -> GenerationRecord {
        let mut g = clean_generation(256);
        for &b in blocks {
            let x = h(7, b);
            g.snapshot.as_mut().unwrap()[b as usize] = Some(x);
            g.transport.as_mut().unwrap()[b as usize] = Some(x);
            g.target.as_mut().unwrap()[b as usize] = Some(x);
        }
        g.fault_sites = sites.iter().copied().collect();
        g
    }

    fn expect_future(at: Where) -> Expectations {
        Expectations {
            classes: BTreeSet::from([BlockClass::DataFromTheFuture]),
            outcomes: BTreeSet::from([Outcome::FalseSuccess]),
            at,
            ..Expectations::clean()
        }
    }

    #[test]
    fn clean_expectation() {
        assert_eq!(
            verdict(
                clean_generation(256),
                Expectations::clean(),
                RunEvents::default()
            ),
            Verdict::Pass
        );
        let v = verdict(
            future_at(&[3], &[]),
            Expectations::clean(),
            RunEvents::default(),
        );
        let Verdict::Fail { reasons } = v else {
            panic!("{v:?}")
        };
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("1 block(s) of data-from-the-future (blocks 3)")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("outcome false-success")),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_detector_must_fire_where_the_fault_was_injected() {
        assert_eq!(
            verdict(
                future_at(&[3, 4], &[3, 4, 9]),
                expect_future(Where::FaultSites),
                RunEvents::default()
            ),
            Verdict::Pass
        );
        // Found outside the fault sites: fail.
        assert!(matches!(
            verdict(
                future_at(&[3, 40], &[3]),
                expect_future(Where::FaultSites),
                RunEvents::default()
            ),
            Verdict::Fail { .. }
        ));
        // Anywhere: pass.
        assert_eq!(
            verdict(
                future_at(&[3, 40], &[3]),
                expect_future(Where::Anywhere),
                RunEvents::default()
            ),
            Verdict::Pass
        );
        // Not found at all: the detector did not fire.
        let mut g = clean_generation(256);
        g.fault_sites.insert(3);
        let v = verdict(g, expect_future(Where::FaultSites), RunEvents::default());
        let Verdict::Fail { reasons } = v else {
            panic!()
        };
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("expected data-from-the-future blocks, found none")),
            "{reasons:?}"
        );
    }

    #[test]
    fn allow_clean_accepts_a_recovered_fault_but_not_a_false_success() {
        let expect = Expectations {
            classes: BTreeSet::from([BlockClass::TransportCorruption]),
            allow_clean: true,
            allow_outcomes: BTreeSet::from([Outcome::FailedCleanly]),
            ..Expectations::clean()
        };
        assert_eq!(
            verdict(clean_generation(64), expect.clone(), RunEvents::default()),
            Verdict::Pass
        );
        let mut g = clean_generation(64);
        g.transport.as_mut().unwrap()[5] = Some(h(8, 5));
        g.target.as_mut().unwrap()[5] = Some(h(8, 5));
        let v = verdict(g.clone(), expect.clone(), RunEvents::default());
        let Verdict::Fail { reasons } = v else {
            panic!()
        };
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("outcome false-success"),
            "{reasons:?}"
        );
        // Detected and failed cleanly: nothing committed, nobody claimed success.
        g.committed = false;
        g.agent = Claim::Failure("transport: frame 12 corrupt after 3 retries".into());
        g.target_claim = Claim::Failure("aborted".into());
        assert_eq!(verdict(g, expect, RunEvents::default()), Verdict::Pass);
    }

    #[test]
    fn run_level_events_become_outcomes() {
        let events = RunEvents {
            console: console::scan("[ 9.1] BUG: unable to handle page fault\n"),
            watchdog_fired: true,
            vanished: vec!["boot".into()],
            ..RunEvents::default()
        };
        let v = verdict(clean_generation(64), Expectations::clean(), events.clone());
        let Verdict::Fail { reasons } = v else {
            panic!()
        };
        let text = reasons.join("\n");
        for o in ["guest-oops", "guest-hang", "volume-vanished"] {
            assert!(text.contains(o), "{o} missing: {text}");
        }
        let expect = Expectations {
            outcomes: BTreeSet::from([Outcome::VolumeVanished]),
            allow_outcomes: BTreeSet::from([Outcome::GuestOops, Outcome::GuestHang]),
            ..Expectations::clean()
        };
        assert_eq!(verdict(clean_generation(64), expect, events), Verdict::Pass);
    }

    #[test]
    fn harness_errors_and_unrecorded_checks_are_could_not_run() {
        let events = RunEvents {
            harness_errors: vec!["the workload wrote nothing".into()],
            ..RunEvents::default()
        };
        assert_eq!(
            verdict(clean_generation(64), Expectations::clean(), events.clone()).exit(),
            Exit::HarnessError
        );
        // What the harness saw wrong is judged even beside a harness error.
        let v = verdict(future_at(&[1], &[]), Expectations::clean(), events.clone());
        let Verdict::Fail { reasons } = v else {
            panic!("{v:?}")
        };
        assert!(reasons[0].contains("data-from-the-future"), "{reasons:?}");
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("also had harness errors: the workload wrote nothing")),
            "{reasons:?}"
        );
        // A failed backup beside a harness error may be the harness's doing: not judged.
        let mut g = clean_generation(64);
        g.committed = false;
        g.agent = Claim::Failure("aborted by the hook".into());
        g.target_claim = Claim::Silent;
        assert_eq!(
            verdict(g, Expectations::clean(), events).exit(),
            Exit::HarnessError
        );
        let expect = Expectations {
            fsck: true,
            ..Expectations::clean()
        };
        assert!(matches!(
            verdict(clean_generation(8), expect.clone(), RunEvents::default()),
            Verdict::CouldNotRun { .. }
        ));
        let events = RunEvents {
            checks: vec![CheckResult {
                kind: CheckKind::Fsck,
                passed: false,
                detail: "boot: e2fsck exit 4".into(),
            }],
            ..RunEvents::default()
        };
        assert!(matches!(
            verdict(clean_generation(8), expect, events),
            Verdict::Fail { .. }
        ));
        // A malformed recording is a harness error, not a product failure.
        let mut g = clean_generation(8);
        g.transport.as_mut().unwrap().pop();
        assert_eq!(
            verdict(g, Expectations::clean(), RunEvents::default()).exit(),
            Exit::HarnessError
        );
    }

    #[test]
    fn a_backup_committed_without_an_announced_instant_is_a_false_success() {
        // Nothing announced, so no truth: zero blocks to judge, and never a pass.
        let mut g = GenerationRecord::new(1, BackupKind::Full, Vec::new());
        g.truth_state = TruthState::NeverAnnounced;
        g.committed = true;
        g.agent = Claim::Silent;
        let v = verdict(g.clone(), Expectations::clean(), RunEvents::default());
        assert!(
            matches!(v, Verdict::Fail { ref reasons } if reasons.iter().any(|r| r.starts_with("outcome false-success"))),
            "{v:?}"
        );
        // Claimed success, nothing committed: the same lie.
        g.committed = false;
        g.agent = Claim::Success;
        assert_eq!(
            verdict(g.clone(), Expectations::clean(), RunEvents::default()).exit(),
            Exit::ProductFailure
        );
        // The harness refused the instant: its own error, not the pipeline's lie.
        g.truth_state = TruthState::NotTaken {
            why: "volume data is not frozen".into(),
        };
        g.agent = Claim::Failure("the hook aborted the backup".into());
        let events = RunEvents {
            harness_errors: vec![
                "backup 1: the harness did not take its truth: volume data is not frozen".into(),
            ],
            ..RunEvents::default()
        };
        assert_eq!(
            verdict(g, Expectations::clean(), events).exit(),
            Exit::HarnessError
        );
    }

    #[test]
    fn a_target_image_of_the_wrong_length_is_the_targets_finding() {
        // Shorter: the blocks past its end are missing.
        let mut g = clean_generation(64);
        let t = g.target.as_mut().unwrap();
        t[62] = None;
        t[63] = None;
        g.target_bytes = Some(62 * 4096);
        let v = verdict(g, Expectations::clean(), RunEvents::default());
        assert!(
            matches!(v, Verdict::Fail { ref reasons } if reasons.iter().any(|r| r.contains("2 block(s) of missing-block"))),
            "{v:?}"
        );
        // Longer: one target-corruption finding past the volume's end.
        let mut g = clean_generation(64);
        g.target_bytes = Some(64 * 4096 + 4096);
        let v = verdict(g, Expectations::clean(), RunEvents::default());
        assert!(
            matches!(v, Verdict::Fail { ref reasons } if reasons.iter().any(|r| r.contains("target-corruption") && r.contains("4096 bytes longer than the volume"))),
            "{v:?}"
        );
    }

    #[test]
    fn a_fault_that_never_fired_tested_nothing() {
        let fired = |n: Option<u64>| RunEvents {
            faults: vec![FaultFired {
                backup: 1,
                fault: "transport/bit-flip".into(),
                fired: n,
                counted_by: "the transport proxy".into(),
            }],
            ..RunEvents::default()
        };
        let expect = Expectations {
            classes: BTreeSet::from([BlockClass::TransportCorruption]),
            allow_clean: true,
            ..Expectations::clean()
        };
        // Clean, and the fault fired: recovered.
        assert_eq!(
            verdict(clean_generation(64), expect.clone(), fired(Some(3))),
            Verdict::Pass
        );
        // Clean because it never fired: not a "recovered" pass.
        let v = verdict(clean_generation(64), expect.clone(), fired(Some(0)));
        assert!(
            matches!(v, Verdict::CouldNotRun { ref errors } if errors.iter().any(|e| e.contains("transport/bit-flip of backup 1 never fired"))),
            "{v:?}"
        );
        let v = verdict(clean_generation(64), expect, fired(None));
        assert_eq!(v.exit(), Exit::HarnessError);
    }

    #[test]
    fn named_writes_exempts_metadata_only_and_unmapped_blocks_are_unchecked() {
        let expect = Expectations {
            named_writes: true,
            ..expect_future(Where::Anywhere)
        };
        let owned = |owner: &str| {
            let mut g = future_at(&[3], &[3]);
            g.owners.insert(3, owner.into());
            g
        };
        // Only the journal's block leaked, and it names no write: exempt, yet no block
        // names its write at all.
        let v = verdict(
            owned("metadata: journal"),
            expect.clone(),
            RunEvents::default(),
        );
        assert!(
            matches!(v, Verdict::Fail { ref reasons } if reasons.iter().any(|r| r.contains("no data-from-the-future block names"))),
            "{v:?}"
        );
        for data in ["/data/f1", "free space", "inode 12 (no path)"] {
            let v = verdict(owned(data), expect.clone(), RunEvents::default());
            assert!(
                matches!(v, Verdict::Fail { ref reasons } if reasons.iter().any(|r| r.contains("of files name no stamped write"))),
                "{data}: {v:?}"
            );
        }
        let v = verdict(
            owned("not mapped (xfs: the mapper reads ext2/ext4 only)"),
            expect,
            RunEvents::default(),
        );
        assert!(
            matches!(v, Verdict::CouldNotRun { ref errors } if errors.iter().any(|e| e.contains("could not be checked"))),
            "{v:?}"
        );
    }

    #[test]
    fn a_cow_file_the_pipeline_misreports_is_a_finding() {
        let mut g = clean_generation(64);
        g.cow_findings.push(
            "the pipeline reports its COW file at bytes 0+8192, and on the truth image it is at 4096+4096".into(),
        );
        let v = verdict(g, Expectations::clean(), RunEvents::default());
        assert!(
            matches!(v, Verdict::Fail { ref reasons } if reasons.iter().any(|r| r.contains("volume data generation 1: the pipeline reports its COW file"))),
            "{v:?}"
        );
    }

    #[test]
    fn failed_cleanly_needs_nothing_committed_and_the_previous_generation_intact() {
        let expect = Expectations {
            outcomes: BTreeSet::from([Outcome::FailedCleanly]),
            ..Expectations::clean()
        };
        let mut g = clean_generation(16);
        g.committed = false;
        g.agent = Claim::Failure("COW overflow".into());
        g.target_claim = Claim::Silent;
        g.previous_intact = Some(true);
        assert_eq!(
            verdict(g.clone(), expect.clone(), RunEvents::default()),
            Verdict::Pass
        );
        g.previous_intact = Some(false);
        let v = verdict(g.clone(), expect.clone(), RunEvents::default());
        assert!(
            matches!(v, Verdict::Fail { ref reasons } if reasons.iter().any(|r| r.contains("damaged the previous generation"))),
            "{v:?}"
        );
        // The agent claiming success with nothing committed is a false success.
        g.previous_intact = Some(true);
        g.agent = Claim::Success;
        let v = verdict(g, expect, RunEvents::default());
        assert!(
            matches!(v, Verdict::Fail { ref reasons } if reasons.iter().any(|r| r.contains("nothing committed"))),
            "{v:?}"
        );
    }
}

/// Two `diff` runs in the same second write two report directories: the one a clock
/// second names is never reused.
#[test]
fn diff_never_writes_into_an_existing_report_directory() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&a, vec![1u8; 16 * 4096]).unwrap();
    std::fs::write(&b, vec![1u8; 16 * 4096]).unwrap();
    // Every second the command could start in already has a report directory.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for t in now.saturating_sub(1)..now + 30 {
        std::fs::create_dir(reports.join(format!("diff-{t}"))).unwrap();
    }
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_blockwitness"))
            .args(["diff"])
            .arg(&a)
            .arg(&b)
            .env("BLOCKWITNESS_REPORTS", &reports)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run();
    run();
    let with_reports: Vec<String> = std::fs::read_dir(&reports)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("index.html").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(with_reports.len(), 2, "{with_reports:?}");
    for name in with_reports {
        assert!(name.matches('-').count() == 2, "wrote into {name}");
    }
}

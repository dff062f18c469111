//! Determinism per seed: the same seed and arguments over the same starting state issue
//! the same operations and leave the same tree; another seed does not.

use crate::support::{operations, read_log, run, tree, TempDir};
use bw_guest::workload::StopReason;

#[test]
fn the_same_seed_issues_the_same_operations() {
    let tmp = TempDir::new("determinism");
    let kinds = [
        "fill --bytes 3MiB",
        "fill-to-full --bytes 2MiB",
        "overwrite --ops 60",
        "append --ops 30",
        "delete-rewrite --ops 12",
        "metadata-churn --ops 150",
    ];
    for (k, kind) in kinds.iter().enumerate() {
        let mut seen = Vec::new();
        for (copy, seed) in [(0, 5), (1, 5), (2, 6)] {
            let dir = tmp.sub(&format!("{k}-{copy}"));
            let d = dir.display();
            if !kind.starts_with("fill") {
                run(&format!(
                    "fill --dir {d} --bytes 4MiB --max-file-size 512KiB --seed {seed}"
                ));
            }
            let log = tmp.0.join(format!("{k}-{copy}.log"));
            let summary = run(&format!(
                "{kind} --dir {d} --seed {seed} --max-file-size 512KiB --log {}",
                log.display()
            ));
            assert!(summary.writes > 0, "{kind}: nothing written");
            seen.push((operations(&read_log(&log)), tree(&dir), summary));
        }
        let (a, b, other) = (&seen[0], &seen[1], &seen[2]);
        assert_eq!(a.0, b.0, "{kind}: same seed, different writes");
        assert_eq!(a.1, b.1, "{kind}: same seed, different trees");
        assert_eq!(
            (a.2.ops, a.2.bytes, a.2.writes),
            (b.2.ops, b.2.bytes, b.2.writes),
            "{kind}"
        );
        assert_ne!(a.0, other.0, "{kind}: another seed, same writes");
        assert_eq!(a.2.first_seq, Some(1), "{kind}");
        assert_eq!(a.2.last_seq, Some(a.2.writes), "{kind}");
        assert_eq!(
            a.0.len() as u64,
            a.2.writes,
            "{kind}: one log line per block"
        );
    }
}

#[test]
fn fill_creates_exactly_its_size_and_stops_done() {
    let tmp = TempDir::new("fill");
    let summary = run(&format!(
        "fill --dir {} --bytes 5MiB --seed 1",
        tmp.0.display()
    ));
    assert_eq!(summary.stopped_by, StopReason::Done);
    assert_eq!(summary.bytes, 5 << 20);
    let on_disk: u64 = tree(&tmp.0).iter().map(|e| e.2).sum();
    assert_eq!(on_disk, 5 << 20);
    assert_eq!(summary.files_touched, tree(&tmp.0).len() as u64);
}

#[test]
fn a_working_set_is_created_when_there_are_no_files() {
    let tmp = TempDir::new("setup");
    let summary = run(&format!(
        "overwrite --dir {} --ops 10 --set-size 2MiB",
        tmp.0.display()
    ));
    assert_eq!(summary.setup_bytes, 2 << 20);
    assert_eq!(summary.ops, 10);
    assert!(summary.bytes > 0 && summary.bytes <= 10 * 64 * 1024);
    let sizes: u64 = tree(&tmp.0).iter().map(|e| e.2).sum();
    assert_eq!(sizes, 2 << 20, "overwrite must not grow the files");
}

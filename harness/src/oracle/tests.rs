//! The oracle's rules, one table row per rule and edge case; the errors on bad input;
//! the truth at an instant; the announced-instant check; and properties over random
//! histories: a snapshot built at a random instant with random in-flight outcomes is
//! judged one consistent cut, and one planted future, past or corrupt block is found,
//! alone, with the right write named.

use std::ops::Range;

use proptest::prelude::*;

use super::*;

fn h(n: u128) -> ContentHash {
    ContentHash::from_u128(n)
}

fn at(ns: u64) -> Moment {
    Moment::at(ns).unwrap()
}

fn span(from: Moment, until: Moment) -> Span {
    Span { from, until }
}

/// A write: sequence number, submit, complete (None: never), blocks and their new hashes.
fn w(seq: u64, submit: u64, complete: Option<u64>, blocks: &[(u64, u128)]) -> Write {
    Write {
        seq,
        submit_ns: submit,
        complete_ns: complete,
        blocks: blocks
            .iter()
            .map(|&(block, n)| BlockWrite { block, hash: h(n) })
            .collect(),
    }
}

fn history(initial: &[u128], writes: Vec<Write>) -> History {
    History {
        blocks: initial.len() as u64,
        initial: initial.iter().map(|&n| h(n)).collect(),
        writes,
    }
}

fn backup(hashes: &[u128], excluded: Vec<Range<u64>>) -> Backup {
    Backup {
        hashes: hashes.iter().map(|&n| h(n)).collect(),
        excluded,
    }
}

/// What a row expects of one block.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Consistent, holding this version, no write to it in flight at the cut.
    Holds(u32),
    /// Consistent, holding this version, a write to it in flight at the cut.
    InFlight(u32),
    /// Data from the future: the leaked write's seq and its time after the cut.
    Future(u64, Option<u64>),
    /// Data from the past: the missing write's seq and how long before the cut it completed.
    Past(u64, u64),
    /// Past or future: the missing and the leaked write.
    Both(u64, u64),
    Corrupt,
    Excluded,
}

fn check(want: Want, got: &BlockVerdict) -> bool {
    match (want, got.verdict) {
        (
            Want::Holds(k),
            Verdict::Consistent {
                version,
                block_in_flight_at_cut: false,
            },
        )
        | (
            Want::InFlight(k),
            Verdict::Consistent {
                version,
                block_in_flight_at_cut: true,
            },
        ) => k == version,
        (Want::Future(seq, after), Verdict::DataFromTheFuture(l)) => {
            l.write.seq == seq && l.after_cut_ns == after
        }
        (Want::Past(seq, before), Verdict::DataFromThePast(s)) => {
            s.missing.seq == seq && s.before_cut_ns == before
        }
        (Want::Both(missing, leaked), Verdict::PastOrFuture { stale, leak }) => {
            stale.missing.seq == missing && leak.write.seq == leaked
        }
        (Want::Corrupt, Verdict::Corrupt { .. }) | (Want::Excluded, Verdict::Excluded) => true,
        _ => false,
    }
}

struct Row {
    name: &'static str,
    history: History,
    backup: Backup,
    span: Span,
    other_best_spans: u64,
    want: Vec<Want>,
}

fn rows() -> Vec<Row> {
    use Want::*;
    vec![
        Row {
            name: "no writes: every block holds its starting content, at any instant",
            history: history(&[1, 2], vec![]),
            backup: backup(&[1, 2], vec![]),
            span: Span::ALL,
            other_best_spans: 0,
            want: vec![Holds(0), Holds(0)],
        },
        Row {
            name: "no writes, content that was never there: corrupt",
            history: history(&[1, 2], vec![]),
            backup: backup(&[1, 9], vec![]),
            span: Span::ALL,
            other_best_spans: 0,
            want: vec![Holds(0), Corrupt],
        },
        Row {
            name: "a write in flight at the cut: the old version is consistent",
            history: history(
                &[1, 2],
                vec![w(1, 10, Some(50), &[(0, 11)]), w(2, 20, Some(30), &[(1, 12)])],
            ),
            backup: backup(&[1, 12], vec![]),
            span: span(at(20), at(50)),
            other_best_spans: 0,
            want: vec![InFlight(0), InFlight(1)],
        },
        Row {
            name: "a write in flight at the cut: the new version is consistent too",
            history: history(
                &[1, 2],
                vec![w(1, 10, Some(50), &[(0, 11)]), w(2, 20, Some(30), &[(1, 12)])],
            ),
            backup: backup(&[11, 12], vec![]),
            span: span(at(20), Moment::END),
            other_best_spans: 0,
            want: vec![InFlight(1), InFlight(1)],
        },
        Row {
            name: "same content rewritten: the block is consistent with both spans",
            history: history(
                &[1, 2],
                vec![
                    w(1, 10, Some(20), &[(0, 11)]),
                    w(2, 28, Some(29), &[(0, 1)]),
                    w(3, 30, Some(31), &[(1, 12)]),
                ],
            ),
            backup: backup(&[1, 12], vec![]),
            span: span(at(30), Moment::END),
            other_best_spans: 0,
            want: vec![Holds(2), InFlight(1)],
        },
        Row {
            name: "a block rewritten many times holds a middle version",
            history: history(
                &[1],
                vec![
                    w(1, 10, Some(11), &[(0, 11)]),
                    w(2, 20, Some(21), &[(0, 12)]),
                    w(3, 30, Some(31), &[(0, 13)]),
                    w(4, 40, Some(41), &[(0, 14)]),
                ],
            ),
            backup: backup(&[12], vec![]),
            span: span(at(20), at(31)),
            other_best_spans: 0,
            want: vec![InFlight(2)],
        },
        Row {
            name: "a version equal to version 0: the starting content stays consistent",
            history: history(
                &[1, 2],
                vec![w(1, 5, Some(6), &[(1, 12)]), w(2, 10, Some(11), &[(0, 1)])],
            ),
            backup: backup(&[1, 12], vec![]),
            span: span(at(5), Moment::END),
            other_best_spans: 0,
            want: vec![Holds(0), InFlight(1)],
        },
        Row {
            name: "a write that never completed: the old version stays possible to the end",
            history: history(
                &[1, 2],
                vec![w(1, 10, None, &[(0, 11)]), w(2, 20, Some(21), &[(1, 12)])],
            ),
            backup: backup(&[1, 12], vec![]),
            span: span(at(20), Moment::END),
            other_best_spans: 0,
            want: vec![InFlight(0), InFlight(1)],
        },
        Row {
            name: "data from the future names the write and its time after the cut",
            history: history(
                &[1, 2, 3],
                vec![
                    w(1, 10, Some(11), &[(0, 11)]),
                    w(2, 20, Some(21), &[(1, 12)]),
                    w(3, 30, Some(31), &[(2, 13)]),
                ],
            ),
            backup: backup(&[11, 2, 13], vec![]),
            span: span(at(10), at(21)),
            other_best_spans: 1,
            want: vec![InFlight(1), Holds(0), Future(3, Some(20))],
        },
        Row {
            name: "a leaked write that never completed",
            history: history(
                &[1, 2, 3],
                vec![
                    w(1, 10, Some(11), &[(0, 11), (1, 12)]),
                    w(2, 30, None, &[(2, 13)]),
                    w(3, 20, Some(21), &[(0, 21)]),
                ],
            ),
            backup: backup(&[11, 12, 13], vec![]),
            span: span(at(10), at(21)),
            other_best_spans: 1,
            want: vec![InFlight(1), InFlight(1), Future(2, Some(20))],
        },
        Row {
            name: "data from the past names the missing write and how long before the cut",
            history: history(
                &[1, 2, 3],
                vec![
                    w(1, 10, Some(11), &[(0, 11)]),
                    w(2, 20, Some(21), &[(1, 12)]),
                    w(3, 25, Some(26), &[(2, 13)]),
                ],
            ),
            backup: backup(&[1, 12, 13], vec![]),
            span: span(at(25), Moment::END),
            other_best_spans: 0,
            want: vec![Past(1, 14), Holds(1), InFlight(1)],
        },
        Row {
            name: "content of an old and a later version, neither possible at the cut",
            history: history(
                &[1, 2, 3, 4, 5],
                vec![
                    w(1, 10, Some(11), &[(0, 11)]),
                    w(2, 20, Some(21), &[(1, 12), (4, 15)]),
                    w(3, 24, Some(25), &[(2, 13), (3, 14)]),
                    w(4, 30, Some(31), &[(0, 1)]),
                ],
            ),
            backup: backup(&[1, 12, 3, 4, 15], vec![]),
            span: span(at(20), at(25)),
            other_best_spans: 0,
            want: vec![Both(1, 4), InFlight(1), Holds(0), Holds(0), InFlight(1)],
        },
        Row {
            name: "completions out of order: a later write completing first ends the old version",
            history: history(
                &[1, 2, 3],
                vec![
                    w(1, 10, Some(50), &[(0, 11)]),
                    w(2, 20, Some(30), &[(0, 12)]),
                    w(3, 33, Some(34), &[(1, 13)]),
                    w(4, 35, Some(36), &[(2, 14)]),
                ],
            ),
            backup: backup(&[1, 13, 14], vec![]),
            span: span(at(35), Moment::END),
            other_best_spans: 0,
            want: vec![Past(2, 5), Holds(1), InFlight(1)],
        },
        Row {
            name: "spans are half-open: a version that ends at the cut is past, one that starts at it is possible",
            history: history(
                &[1, 2, 3],
                vec![
                    w(1, 10, Some(30), &[(0, 11)]),
                    w(2, 30, Some(31), &[(1, 12)]),
                    w(3, 30, Some(32), &[(2, 13)]),
                ],
            ),
            backup: backup(&[1, 12, 13], vec![]),
            span: span(at(30), Moment::END),
            other_best_spans: 0,
            want: vec![Past(1, 0), InFlight(1), InFlight(1)],
        },
        Row {
            name: "two disjoint best spans: the earliest wins, the later one is counted",
            history: history(
                &[1, 2],
                vec![w(1, 10, Some(11), &[(0, 11)]), w(2, 20, Some(21), &[(1, 12)])],
            ),
            backup: backup(&[1, 12], vec![]),
            span: span(Moment::START, at(11)),
            other_best_spans: 1,
            want: vec![Holds(0), Future(2, None)],
        },
        Row {
            name: "excluded blocks are judged excluded and do not move the cut",
            history: history(
                &[1, 2, 3],
                vec![w(1, 10, Some(11), &[(0, 11)]), w(2, 20, Some(21), &[(1, 12)])],
            ),
            backup: backup(&[1, 12, 77], vec![Range { start: 1, end: 3 }]),
            span: span(Moment::START, at(11)),
            other_best_spans: 0,
            want: vec![Holds(0), Excluded, Excluded],
        },
        Row {
            name: "a version possible at no instant (its successor completed as it was submitted)",
            history: history(
                &[1, 2],
                vec![
                    w(1, 10, Some(15), &[(0, 11)]),
                    w(2, 10, Some(10), &[(0, 12)]),
                    w(3, 20, Some(21), &[(1, 13)]),
                ],
            ),
            backup: backup(&[11, 2], vec![]),
            span: span(Moment::START, at(21)),
            other_best_spans: 0,
            want: vec![Future(1, None), Holds(0)],
        },
        Row {
            name: "an empty volume",
            history: history(&[], vec![]),
            backup: backup(&[], vec![]),
            span: Span::ALL,
            other_best_spans: 0,
            want: vec![],
        },
    ]
}

#[test]
fn rules_and_edge_cases() {
    for row in rows() {
        let oracle = Oracle::new(&row.history).unwrap_or_else(|e| panic!("{}: {e}", row.name));
        let j = oracle
            .judge(&row.backup)
            .unwrap_or_else(|e| panic!("{}: {e}", row.name));
        assert_eq!(j.span, row.span, "{}: span", row.name);
        assert_eq!(
            j.cut, row.span.from,
            "{}: the cut is the span's start",
            row.name
        );
        assert_eq!(
            j.other_best_spans, row.other_best_spans,
            "{}: other best spans",
            row.name
        );
        assert_eq!(j.blocks.len(), row.want.len(), "{}", row.name);
        for (want, got) in row.want.iter().zip(&j.blocks) {
            assert!(
                check(*want, got),
                "{}: block {}: want {want:?}, got {:?} ({})",
                row.name,
                got.block,
                got.verdict,
                got.reason
            );
        }
        let consistent = j
            .blocks
            .iter()
            .filter(|b| b.verdict.class() == OracleClass::Consistent)
            .count() as u64;
        assert_eq!(j.explained, consistent, "{}: the sweep's count", row.name);
        let excluded = row
            .want
            .iter()
            .filter(|w| matches!(w, Want::Excluded))
            .count() as u64;
        assert_eq!(j.judged, row.want.len() as u64 - excluded, "{}", row.name);
    }
}

/// docs/architecture.md, "A worked example": keep the two in step.
#[test]
fn worked_example() {
    // Blocks A..F are 0..5; their starting content 10..15; version k of a block is
    // 10 * (k + 1) + block (A1 = 20, A2 = 30, ...); X = 99.
    let (a, b, c, d, e) = (0, 1, 2, 3, 4);
    let hist = history(
        &[10, 11, 12, 13, 14, 15],
        vec![
            w(1, 5, Some(8), &[(e, 24)]),
            w(2, 10, Some(14), &[(a, 20)]),
            w(3, 12, Some(30), &[(b, 21)]),
            w(4, 20, Some(22), &[(c, 22), (d, 23)]),
            w(5, 25, Some(27), &[(a, 30)]),
            w(6, 40, Some(42), &[(d, 33)]),
        ],
    );
    let oracle = Oracle::new(&hist).unwrap();
    let j = oracle
        .judge(&backup(&[20, 11, 22, 33, 14, 99], vec![]))
        .unwrap();
    assert_eq!(j.span, span(at(20), at(27)));
    assert_eq!((j.explained, j.judged, j.other_best_spans), (3, 6, 0));
    let reasons: Vec<&str> = j.blocks.iter().map(|b| b.reason).collect();
    assert_eq!(
        reasons,
        [
            "holds the last write to it completed before the cut",
            "a write to it was in flight at the cut; it holds one of the versions possible then",
            "a write to it was in flight at the cut; it holds one of the versions possible then",
            "every version it matches was written by a write submitted after the cut",
            "every version it matches was replaced by a write completed before the cut",
            "matches no version of the block in the history",
        ]
    );
    match j.blocks[3].verdict {
        Verdict::DataFromTheFuture(l) => {
            assert_eq!(
                (l.write.seq, l.after_cut_ns, l.after_span_ns),
                (6, Some(20), 13)
            );
            assert!(l.block_in_flight_at_cut);
        }
        other => panic!("{other:?}"),
    }
    match j.blocks[4].verdict {
        Verdict::DataFromThePast(s) => assert_eq!((s.missing.seq, s.before_cut_ns), (1, 12)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        j.truth.blocks,
        [
            Expected::One(h(20)),
            Expected::Either(vec![h(11), h(21)]),
            Expected::Either(vec![h(12), h(22)]),
            Expected::Either(vec![h(13), h(23)]),
            Expected::One(h(24)),
            Expected::One(h(15)),
        ]
    );
}

/// The worked example's backup, as a pipeline without an announced instant sees it: the
/// truth at the cut keeps the backup's own content where a write was in flight, and the
/// one possible version elsewhere.
#[test]
fn truth_at_the_cut_serves_a_pipeline_without_an_instant() {
    let (a, b, c, d, e) = (0, 1, 2, 3, 4);
    let hist = history(
        &[10, 11, 12, 13, 14, 15],
        vec![
            w(1, 5, Some(8), &[(e, 24)]),
            w(2, 10, Some(14), &[(a, 20)]),
            w(3, 12, Some(30), &[(b, 21)]),
            w(4, 20, Some(22), &[(c, 22), (d, 23)]),
            w(5, 25, Some(27), &[(a, 30)]),
            w(6, 40, Some(42), &[(d, 33)]),
        ],
    );
    let oracle = Oracle::new(&hist).unwrap();
    let t = oracle
        .truth_at_cut(&backup(&[20, 11, 22, 33, 14, 99], vec![]))
        .unwrap();
    assert_eq!(t.judgement.cut, at(20));
    assert_eq!(t.hashes, [h(20), h(11), h(22), h(13), h(24), h(15)]);
    assert!(oracle.truth_at_cut(&backup(&[1], vec![])).is_err());
}

#[test]
fn reasons_name_the_rule() {
    let hist = history(
        &[1, 2, 3, 4],
        vec![
            w(1, 10, Some(11), &[(0, 11)]),
            w(2, 20, Some(21), &[(1, 12)]),
            w(3, 30, Some(31), &[(2, 13)]),
        ],
    );
    let oracle = Oracle::new(&hist).unwrap();
    let j = oracle.judge(&backup(&[11, 2, 13, 99], vec![])).unwrap();
    let reasons: Vec<&str> = j.blocks.iter().map(|b| b.reason).collect();
    assert_eq!(
        reasons,
        [
            "a write to it was in flight at the cut; it holds one of the versions possible then",
            "holds its starting content; no write to it was submitted by the cut",
            "every version it matches was written by a write submitted after the cut",
            "matches no version of the block in the history",
        ]
    );
    let leak = match j.blocks[2].verdict {
        Verdict::DataFromTheFuture(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        leak,
        Leak {
            version: 1,
            write: WriteRef {
                seq: 3,
                submit_ns: 30,
                complete_ns: Some(31)
            },
            after_cut_ns: Some(20),
            after_span_ns: 9,
            block_in_flight_at_cut: false,
        }
    );
    assert_eq!(
        j.counts().into_iter().collect::<Vec<_>>(),
        [
            (OracleClass::Consistent, 2),
            (OracleClass::DataFromTheFuture, 1),
            (OracleClass::Corrupt, 1)
        ]
    );
    assert_eq!(j.problems().map(|b| b.block).collect::<Vec<_>>(), [2, 3]);
    let json = serde_json::to_value(j.blocks[2]).unwrap();
    assert_eq!(json["verdict"]["class"], "data-from-the-future");
    assert_eq!(json["verdict"]["write"]["seq"], 3);
}

#[test]
fn bad_history_is_named() {
    let cases: Vec<(&str, History, HistoryError)> = vec![
        (
            "starting content of the wrong length",
            History {
                blocks: 3,
                initial: vec![h(1)],
                writes: vec![],
            },
            HistoryError::InitialLength { blocks: 3, got: 1 },
        ),
        (
            "a block beyond the volume",
            history(&[1, 2], vec![w(7, 1, Some(2), &[(2, 5)])]),
            HistoryError::BlockOutOfRange {
                seq: 7,
                block: 2,
                blocks: 2,
            },
        ),
        (
            "completion before submission",
            history(&[1], vec![w(7, 5, Some(4), &[(0, 5)])]),
            HistoryError::CompleteBeforeSubmit {
                seq: 7,
                submit_ns: 5,
                complete_ns: 4,
            },
        ),
        (
            "a time past the clock",
            history(&[1], vec![w(7, u64::MAX, None, &[(0, 5)])]),
            HistoryError::TimeOutOfRange {
                seq: 7,
                what: "submit",
                ns: u64::MAX,
                max: Moment::LATEST_NS,
            },
        ),
        (
            "a repeated sequence number",
            history(
                &[1],
                vec![w(7, 1, Some(2), &[(0, 5)]), w(7, 3, Some(4), &[(0, 6)])],
            ),
            HistoryError::DuplicateSeq { seq: 7 },
        ),
        (
            "a block listed twice in one write",
            history(&[1], vec![w(7, 1, Some(2), &[(0, 5), (0, 6)])]),
            HistoryError::BlockTwiceInWrite { seq: 7, block: 0 },
        ),
        (
            "writes to a block submitted out of sequence order",
            history(
                &[1],
                vec![w(8, 1, Some(2), &[(0, 5)]), w(7, 3, Some(4), &[(0, 6)])],
            ),
            HistoryError::SubmitOrder {
                block: 0,
                seq: 8,
                submit_ns: 1,
                earlier_seq: 7,
                earlier_ns: 3,
            },
        ),
    ];
    for (name, hist, want) in cases {
        match Oracle::new(&hist) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => {
                assert_eq!(e, want, "{name}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
    let e = HistoryError::SubmitOrder {
        block: 0,
        seq: 8,
        submit_ns: 1,
        earlier_seq: 7,
        earlier_ns: 3,
    };
    assert_eq!(
        e.to_string(),
        "block 0: write #8 was submitted at 1 ns, before the earlier write #7 at 3 ns \
         (writes to one block must be submitted in sequence order)"
    );
}

#[test]
fn bad_backup_is_named() {
    let hist = history(&[1, 2], vec![]);
    let oracle = Oracle::new(&hist).unwrap();
    let cases: Vec<(Backup, BackupError)> = vec![
        (
            backup(&[1], vec![]),
            BackupError::Length {
                what: "backup",
                blocks: 2,
                got: 1,
            },
        ),
        (
            backup(&[1, 2], vec![Range { start: 1, end: 3 }]),
            BackupError::Exclusion {
                start: 1,
                end: 3,
                blocks: 2,
            },
        ),
        (
            backup(&[1, 2], vec![Range { start: 2, end: 1 }]),
            BackupError::Exclusion {
                start: 2,
                end: 1,
                blocks: 2,
            },
        ),
    ];
    for (b, want) in cases {
        assert_eq!(oracle.judge(&b).unwrap_err(), want);
    }
    let good = backup(&[1, 2], vec![]);
    let j = oracle.judge(&good).unwrap();
    let bad_truth = Announced {
        instant_ns: 5,
        truth: vec![h(1)],
    };
    assert_eq!(
        oracle.check_announced(&j, &good, &bad_truth).unwrap_err(),
        BackupError::Length {
            what: "truth at the announced instant",
            blocks: 2,
            got: 1
        }
    );
    let late = Announced {
        instant_ns: u64::MAX,
        truth: vec![h(1), h(2)],
    };
    assert!(matches!(
        oracle.check_announced(&j, &good, &late),
        Err(BackupError::InstantOutOfRange { .. })
    ));
}

#[test]
fn truth_at_instants() {
    let hist = history(
        &[1, 2],
        vec![
            w(1, 10, Some(20), &[(0, 11)]),
            w(2, 12, Some(25), &[(0, 12)]),
            w(3, 15, Some(16), &[(1, 2)]),
        ],
    );
    let oracle = Oracle::new(&hist).unwrap();
    let cases: &[(Moment, Expected, Expected)] = &[
        (Moment::START, Expected::One(h(1)), Expected::One(h(2))),
        (at(9), Expected::One(h(1)), Expected::One(h(2))),
        (
            at(10),
            Expected::Either(vec![h(1), h(11)]),
            Expected::One(h(2)),
        ),
        // Two writes to block 0 in flight: three versions possible. Block 1's write in
        // flight rewrites the same content: one hash.
        (
            at(15),
            Expected::Either(vec![h(1), h(11), h(12)]),
            Expected::One(h(2)),
        ),
        (
            at(20),
            Expected::Either(vec![h(11), h(12)]),
            Expected::One(h(2)),
        ),
        (at(25), Expected::One(h(12)), Expected::One(h(2))),
        (Moment::END, Expected::One(h(12)), Expected::One(h(2))),
    ];
    for (t, b0, b1) in cases {
        let truth = oracle.truth_at(*t);
        assert_eq!(truth.at, *t);
        assert_eq!(truth.blocks, vec![b0.clone(), b1.clone()], "at {t}");
    }
}

#[test]
fn content_hash_is_xxh3_128_little_endian() {
    let block = [0u8; 4096];
    let v = xxhash_rust::xxh3::xxh3_128(&block);
    assert_eq!(ContentHash::of_block(&block).0, v.to_le_bytes());
    assert_eq!(
        ContentHash::from_u128(0x0102).to_string(),
        format!("{:032x}", 0x0201u128 << 112)
    );
}

/// Three blocks; the backup holds 11 (block 0's write), the starting 2, and 13.
fn future_case() -> History {
    history(
        &[1, 2, 3],
        vec![
            w(1, 10, Some(11), &[(0, 11)]),
            w(2, 20, Some(21), &[(1, 12)]),
            w(3, 30, Some(31), &[(2, 13)]),
        ],
    )
}

#[test]
fn announced_instant_checks() {
    let hist = future_case();
    let oracle = Oracle::new(&hist).unwrap();
    struct Case {
        name: &'static str,
        backup: Vec<u128>,
        instant: u64,
        truth: Vec<u128>,
        place: InstantPlace,
        disagree: Vec<(u64, DisagreementKind)>,
    }
    let cases = vec![
        Case {
            name: "a clean backup and the truth at an instant in the span",
            backup: vec![11, 2, 3],
            instant: 15,
            truth: vec![11, 2, 3],
            place: InstantPlace::InSpan,
            disagree: vec![],
        },
        Case {
            name: "the instant lies outside the oracle's span",
            backup: vec![11, 2, 3],
            instant: 40,
            truth: vec![11, 12, 13],
            place: InstantPlace::Outside,
            disagree: vec![
                (1, DisagreementKind::ConsistentButWrongAtInstant),
                (2, DisagreementKind::ConsistentButWrongAtInstant),
            ],
        },
        Case {
            name: "the truth holds what the history never allowed then",
            backup: vec![11, 2, 3],
            instant: 15,
            truth: vec![11, 2, 99],
            place: InstantPlace::InSpan,
            disagree: vec![(2, DisagreementKind::TruthNotInHistory)],
        },
        Case {
            name: "a tie broke the other way: the truth resolves it",
            backup: vec![11, 2, 13],
            instant: 35,
            truth: vec![11, 12, 13],
            place: InstantPlace::InOtherBestSpan,
            disagree: vec![
                (1, DisagreementKind::ConsistentButWrongAtInstant),
                (2, DisagreementKind::FlaggedButEqualsTruth),
            ],
        },
    ];
    for c in cases {
        let b = backup(&c.backup, vec![]);
        let j = oracle.judge(&b).unwrap();
        let announced = Announced {
            instant_ns: c.instant,
            truth: c.truth.iter().map(|&n| h(n)).collect(),
        };
        let check = oracle.check_announced(&j, &b, &announced).unwrap();
        assert_eq!(check.place, c.place, "{}: {check}", c.name);
        let got: Vec<(u64, DisagreementKind)> = check
            .disagreements
            .iter()
            .map(|d| (d.block, d.kind))
            .collect();
        assert_eq!(got, c.disagree, "{}", c.name);
        let agrees = c.disagree.is_empty() && c.place != InstantPlace::Outside;
        assert_eq!(check.agrees(), agrees, "{}", c.name);
    }
}

// ---- Properties over random histories ----

/// A generated history with a snapshot taken at `t` from it.
#[derive(Clone, Debug)]
struct Scene {
    history: History,
    /// Per write (in `history.writes` order): whether it is applied when in flight at t.
    choice: Vec<bool>,
    t: u64,
    excluded: Vec<bool>,
}

/// Sequence numbers of generated writes start here, leaving room to prepend.
const FIRST_SEQ: u64 = 100;
/// Planted content: hashes no generated version has.
const PLANTED: u128 = 1000;

fn scene() -> impl Strategy<Value = Scene> {
    (3u64..9)
        .prop_flat_map(|blocks| {
            let write = (
                0u64..5,
                proptest::option::weighted(0.9, 0u64..30),
                proptest::collection::btree_set(0..blocks, 1..=3),
                proptest::collection::vec(0u128..4, 3),
                any::<bool>(),
            );
            (
                Just(blocks),
                proptest::collection::vec(0u128..4, blocks as usize),
                proptest::collection::vec(write, 0..25),
                proptest::collection::vec(proptest::bool::weighted(0.2), blocks as usize),
                any::<u64>(),
            )
        })
        .prop_map(|(blocks, initial, specs, mut excluded, t_seed)| {
            let mut writes = Vec::new();
            let mut choice = Vec::new();
            let mut now = 0u64;
            let mut last = 0u64;
            for (i, (gap, duration, covered, hashes, chosen)) in specs.into_iter().enumerate() {
                now += gap;
                let complete = duration.map(|d| now + d);
                last = last.max(complete.unwrap_or(now));
                writes.push(Write {
                    seq: FIRST_SEQ + i as u64,
                    submit_ns: now,
                    complete_ns: complete,
                    blocks: covered
                        .into_iter()
                        .zip(hashes)
                        .map(|(block, n)| BlockWrite { block, hash: h(n) })
                        .collect(),
                });
                choice.push(chosen);
            }
            // The planting tests use blocks 0..3 as actors: keep them judged.
            excluded[..3].fill(false);
            Scene {
                history: History {
                    blocks,
                    initial: initial.into_iter().map(h).collect(),
                    writes,
                },
                choice,
                t: t_seed % (last + 10),
                excluded,
            }
        })
}

/// The snapshot at `t`: a write completed by t is applied, one submitted after t is
/// not, one in flight as its choice says; a block holds its last applied write.
fn snapshot(s: &Scene) -> Vec<ContentHash> {
    let mut order: Vec<usize> = (0..s.history.writes.len()).collect();
    order.sort_by_key(|&i| s.history.writes[i].seq);
    let mut held = s.history.initial.clone();
    for i in order {
        let w = &s.history.writes[i];
        let applied = w.complete_ns.is_some_and(|c| c <= s.t)
            || (w.submit_ns <= s.t && s.choice.get(i).copied().unwrap_or(false));
        if applied {
            for bw in &w.blocks {
                held[bw.block as usize] = bw.hash;
            }
        }
    }
    held
}

fn exclusions(s: &Scene) -> Vec<Range<u64>> {
    (0..s.history.blocks)
        .filter(|&b| s.excluded[b as usize])
        .map(|b| b..b + 1)
        .collect()
}

/// The backup: the snapshot, with garbage in the excluded blocks.
fn backup_of(s: &Scene) -> (Vec<ContentHash>, Backup) {
    let truth = snapshot(s);
    let mut hashes = truth.clone();
    for (b, e) in s.excluded.iter().enumerate() {
        if *e {
            hashes[b] = h(PLANTED + 99);
        }
    }
    let excluded = exclusions(s);
    (truth, Backup { hashes, excluded })
}

/// The latest time in the scene.
fn horizon(s: &Scene) -> u64 {
    s.history
        .writes
        .iter()
        .map(|w| w.complete_ns.unwrap_or(w.submit_ns))
        .chain([s.t])
        .max()
        .unwrap_or(0)
}

/// Actors among blocks 0..3, rotated by `r`: the planted block and two fence blocks.
fn actors(r: u8) -> (u64, u64, u64) {
    let b = u64::from(r % 3);
    (b, (b + 1) % 3, (b + 2) % 3)
}

/// Judges and asserts that exactly `block` is not consistent; returns the cut (in ns)
/// and the block's verdict.
fn only_problem(
    s: &Scene,
    backup: &Backup,
    block: u64,
) -> Result<(Option<u64>, Verdict), TestCaseError> {
    let oracle = Oracle::new(&s.history).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let j = oracle
        .judge(backup)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for v in &j.blocks {
        let want_excluded = s.excluded[v.block as usize];
        match (v.block == block, want_excluded, v.verdict.class()) {
            (true, _, class) => prop_assert!(class.is_problem(), "planted block {block}: {v:?}"),
            (false, true, class) => prop_assert_eq!(class, OracleClass::Excluded),
            (false, false, class) => {
                prop_assert_eq!(class, OracleClass::Consistent, "block {}: {:?}", v.block, v)
            }
        }
    }
    prop_assert_eq!(j.explained, j.judged - 1);
    Ok((j.cut.ns(), j.blocks[block as usize].verdict))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_snapshot_is_one_consistent_cut(s in scene()) {
        let (truth, backup) = backup_of(&s);
        let oracle = Oracle::new(&s.history).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let j = oracle.judge(&backup).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(j.is_consistent(), "explained {} of {}: {:?}", j.explained, j.judged, j.problems().collect::<Vec<_>>());
        for v in &j.blocks {
            let b = v.block as usize;
            match s.excluded[b] {
                true => prop_assert_eq!(v.verdict.class(), OracleClass::Excluded),
                false => {
                    prop_assert_eq!(v.verdict.class(), OracleClass::Consistent);
                    prop_assert!(j.truth.blocks[b].allows(&backup.hashes[b]), "block {}", b);
                }
            }
        }
        // The truth at the real instant agrees with the oracle.
        let announced = Announced { instant_ns: s.t, truth };
        let check = oracle.check_announced(&j, &backup, &announced)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(check.agrees(), "{}: {:?}", check, check.disagreements);
    }

    #[test]
    fn a_planted_future_block_is_found_alone(mut s in scene(), r in any::<u8>(), completes in any::<bool>()) {
        let (b, c, d) = actors(r);
        let z = horizon(&s);
        // A fence: c and d are rewritten, and the write completes as the leak is
        // submitted, so no instant holds both their backup content and the leak (spans
        // are half-open).
        s.history.writes.push(w(10_000, z + 1, Some(z + 2), &[(c, PLANTED + 1), (d, PLANTED + 2)]));
        s.history.writes.push(w(10_001, z + 2, completes.then_some(z + 15), &[(b, PLANTED + 3)]));
        let (_, mut backup) = backup_of(&s);
        backup.hashes[b as usize] = h(PLANTED + 3);
        match only_problem(&s, &backup, b)? {
            (cut, Verdict::DataFromTheFuture(leak)) => {
                prop_assert_eq!(leak.write.seq, 10_001);
                prop_assert_eq!(leak.write.complete_ns, completes.then_some(z + 15));
                prop_assert_eq!(leak.after_cut_ns, cut.map(|t| z + 2 - t));
                prop_assert!(leak.after_cut_ns.is_none_or(|a| a >= 1));
            }
            other => prop_assert!(false, "want data from the future, got {:?}", other),
        }
    }

    #[test]
    fn a_planted_past_block_is_found_alone(mut s in scene(), r in any::<u8>()) {
        let (b, c, d) = actors(r);
        // Move the history later and prepend: block b is written (done at 2) and c, d
        // fenced (submitted at 2) before it. The backup keeps b's starting content.
        const SHIFT: u64 = 100;
        for w in &mut s.history.writes {
            w.submit_ns += SHIFT;
            w.complete_ns = w.complete_ns.map(|c| c + SHIFT);
        }
        s.t += SHIFT;
        s.history.writes.push(w(1, 1, Some(2), &[(b, PLANTED + 3)]));
        s.history.writes.push(w(2, 2, Some(4), &[(c, PLANTED + 1), (d, PLANTED + 2)]));
        s.history.initial[b as usize] = h(PLANTED + 4);
        s.history.initial[c as usize] = h(PLANTED + 5);
        s.history.initial[d as usize] = h(PLANTED + 6);
        let (_, mut backup) = backup_of(&s);
        backup.hashes[b as usize] = h(PLANTED + 4);
        match only_problem(&s, &backup, b)? {
            (cut, Verdict::DataFromThePast(stale)) => {
                prop_assert_eq!(stale.version, 0);
                prop_assert_eq!(stale.missing.seq, 1);
                prop_assert_eq!(Some(stale.before_cut_ns), cut.map(|t| t - 2));
            }
            other => prop_assert!(false, "want data from the past, got {:?}", other),
        }
    }

    #[test]
    fn a_planted_corrupt_block_is_found_alone(s in scene(), r in any::<u8>()) {
        let (b, _, _) = actors(r);
        let (_, mut backup) = backup_of(&s);
        backup.hashes[b as usize] = h(PLANTED + 7);
        match only_problem(&s, &backup, b)? {
            (_, Verdict::Corrupt { versions }) => {
                let written = s.history.writes.iter().flat_map(|w| &w.blocks).filter(|bw| bw.block == b).count();
                prop_assert_eq!(versions as usize, written + 1);
            }
            other => prop_assert!(false, "want corrupt, got {:?}", other),
        }
    }
}

#[test]
fn a_linear_volume_s_history_is_its_extents_of_the_disk_s() {
    // Disk of 8 blocks; the volume is disk blocks 5..7 then 1..3 (4 blocks).
    let disk = history(
        &[10, 11, 12, 13, 14, 15, 16, 17],
        vec![
            w(1, 5, Some(8), &[(0, 20), (1, 21)]),
            w(2, 10, Some(14), &[(4, 24)]),
            w(3, 12, None, &[(6, 26), (2, 22)]),
        ],
    );
    let extents = [
        Extent {
            volume_block: 0,
            disk_block: 5,
            blocks: 2,
        },
        Extent {
            volume_block: 2,
            disk_block: 1,
            blocks: 2,
        },
    ];
    let vol = disk.restrict(&extents, 4).unwrap();
    assert_eq!(
        vol,
        history(
            &[15, 16, 11, 12],
            vec![
                w(1, 5, Some(8), &[(2, 21)]),
                w(3, 12, None, &[(1, 26), (3, 22)]),
            ],
        )
    );
    assert!(Oracle::new(&vol).is_ok());
    // Holes, overlaps and extents off the disk are refused.
    assert!(matches!(
        disk.restrict(&extents[..1], 4),
        Err(HistoryError::ExtentHole { block: 2 })
    ));
    let overlapping = [
        extents[0],
        Extent {
            disk_block: 6,
            ..extents[1]
        },
    ];
    assert!(matches!(
        disk.restrict(&overlapping, 4),
        Err(HistoryError::ExtentOverlap { .. })
    ));
    let off = [
        extents[0],
        Extent {
            disk_block: 7,
            ..extents[1]
        },
    ];
    assert!(matches!(
        disk.restrict(&off, 4),
        Err(HistoryError::ExtentOutOfRange { .. })
    ));
}

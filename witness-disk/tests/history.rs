//! The history format: round trips of every record kind, and every way a file can be
//! damaged is told apart (cut short, corrupt, not a history, another version).

use std::path::Path;

use witness_disk::hash::{block_hash, zero_block_hash};
use witness_disk::history::{
    EndReason, Flags, Header, History, HistoryError, HistoryWriter, Marker, MarkerRecord, Op,
    Outcome, Record, RequestRecord, Run, FORMAT_VERSION,
};

fn header() -> Header {
    Header {
        format_version: FORMAT_VERSION,
        block_size: 4096,
        sector_size: 512,
        disk_bytes: 64 << 20,
        hash: "xxh3-128".into(),
        origin_wall_ns: 1_700_000_000_000_000_000,
        origin_monotonic_ns: 123_456_789,
        serial: "bw-d0".into(),
        image: "/tmp/d0.raw".into(),
        max_queues: 4,
        schedule: Some(witness_disk::Schedule {
            seed: 3,
            max_delay_us: 100,
        }),
        writer: "test".into(),
    }
}

fn records() -> Vec<Record> {
    let h1 = block_hash(&[1u8; 4096]);
    let h2 = block_hash(&[2u8; 4096]);
    vec![
        Record::Marker(MarkerRecord {
            t_ns: 5,
            next_seq: 0,
            next_applied: 0,
            marker: Marker::Note {
                text: "vhost-user connected".into(),
            },
        }),
        Record::Request(RequestRecord {
            seq: 0,
            queue: 1,
            op: Op::Write,
            flags: Flags::default(),
            outcome: Outcome::Ok,
            offset: 8192,
            len: 8192,
            submit_ns: 1_000,
            complete_ns: Some(250_000),
            applied: Some(0),
            runs: vec![Run::Hashed {
                first_block: 2,
                hashes: vec![h1, h2],
            }],
        }),
        Record::Request(RequestRecord {
            seq: 1,
            queue: 0,
            op: Op::WriteZeroes,
            flags: Flags(Flags::UNMAP),
            outcome: Outcome::Ok,
            offset: 512,
            len: 3 * 4096,
            submit_ns: 2_000,
            complete_ns: Some(2_500),
            applied: Some(1),
            runs: vec![
                Run::Hashed {
                    first_block: 0,
                    hashes: vec![h1],
                },
                Run::Zero {
                    first_block: 1,
                    count: 2,
                },
                Run::Hashed {
                    first_block: 3,
                    hashes: vec![h2],
                },
            ],
        }),
        Record::Request(RequestRecord {
            seq: 2,
            queue: 0,
            op: Op::Other(99),
            flags: Flags(Flags::BARRIER),
            outcome: Outcome::Unsupported,
            offset: 0,
            len: 0,
            submit_ns: 3_000,
            complete_ns: Some(3_001),
            applied: None,
            runs: vec![],
        }),
        Record::Request(RequestRecord {
            seq: 3,
            queue: 2,
            op: Op::Write,
            flags: Flags::default(),
            outcome: Outcome::Torn,
            offset: 0,
            len: 65536,
            submit_ns: 4_000,
            complete_ns: None,
            applied: Some(2),
            runs: vec![Run::Hashed {
                first_block: 0,
                hashes: vec![h1],
            }],
        }),
        Record::Request(RequestRecord {
            seq: 4,
            queue: 0,
            op: Op::Read,
            flags: Flags::default(),
            outcome: Outcome::Dropped,
            offset: u64::MAX - 4096,
            len: 4096,
            submit_ns: u64::MAX - 1,
            complete_ns: None,
            applied: None,
            runs: vec![],
        }),
        Record::Marker(MarkerRecord {
            t_ns: 6_000,
            next_seq: 5,
            next_applied: 3,
            marker: Marker::Instant {
                generation: 1,
                label: "backup-1 ✓".into(),
            },
        }),
        Record::Marker(MarkerRecord {
            t_ns: 7_000,
            next_seq: 5,
            next_applied: 3,
            marker: Marker::FaultArmed {
                fault: 1,
                spec: r#"{"kind":"torn","land":1}"#.into(),
            },
        }),
        Record::Marker(MarkerRecord {
            t_ns: 7_001,
            next_seq: 5,
            next_applied: 3,
            marker: Marker::FaultFired { fault: 1, seq: 3 },
        }),
        Record::Marker(MarkerRecord {
            t_ns: 7_002,
            next_seq: 5,
            next_applied: 3,
            marker: Marker::FaultReleased {
                fault: 1,
                released: 7,
            },
        }),
    ]
}

fn write(path: &Path, finish: bool) {
    let w = HistoryWriter::create(path, &header()).unwrap();
    for r in records() {
        w.append(&r);
    }
    if finish {
        let end = w.finish(9_000, EndReason::Shutdown).unwrap();
        assert_eq!((end.records, end.requests, end.markers), (10, 5, 5));
    }
}

#[test]
fn every_record_kind_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("h");
    write(&path, true);
    let h = History::open(&path).unwrap();
    assert_eq!(h.header, header());
    assert_eq!(h.records, records());
    let end = h.end.as_ref().unwrap();
    assert_eq!((end.reason, end.t_ns), (EndReason::Shutdown, 9_000));
    // The helpers.
    assert_eq!(h.requests().count(), 5);
    assert_eq!(
        h.requests_by_seq()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    let instants = h.instants();
    assert_eq!(instants.len(), 1);
    assert_eq!((instants[0].0, instants[0].1), (1, "backup-1 ✓"));
    assert_eq!(h.fired_counts().get(&1), Some(&1));
    let zeroes: Vec<_> = h.requests().nth(1).unwrap().block_versions().collect();
    assert_eq!(zeroes.len(), 4);
    assert_eq!(zeroes[1], (1, zero_block_hash()));
    assert_eq!(zeroes[3], (3, block_hash(&[2u8; 4096])));
    assert_eq!(h.requests().nth(1).unwrap().blocks(), 0..4);
}

#[test]
fn a_history_cut_anywhere_reads_as_cut_short() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    write(&full, true);
    let bytes = std::fs::read(&full).unwrap();
    let cut = tmp.path().join("cut");
    let header_len = 14 + serde_json::to_vec(&header()).unwrap().len();
    // Every cut after the header: never accepted, never silently partial.
    for at in header_len..bytes.len() {
        std::fs::write(&cut, &bytes[..at]).unwrap();
        match History::open(&cut) {
            Err(HistoryError::Truncated { records: n, .. }) => {
                let partial = History::open_partial(&cut).unwrap();
                assert!(!partial.is_complete());
                assert_eq!(partial.records.len() as u64, n);
                assert_eq!(partial.records[..], records()[..n as usize]);
            }
            other => panic!("cut at {at}: {other:?}"),
        }
    }
    // A writer that never finished: the same.
    let unfinished = tmp.path().join("unfinished");
    write(&unfinished, false);
    assert!(matches!(
        History::open(&unfinished),
        Err(HistoryError::Truncated { records: 10, .. })
    ));
}

#[test]
fn damage_is_told_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    write(&full, true);
    let bytes = std::fs::read(&full).unwrap();
    let bad = tmp.path().join("bad");

    // A flipped bit in a hash: the digest catches it.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 60;
    flipped[at] ^= 0x10;
    std::fs::write(&bad, &flipped).unwrap();
    let err = History::open(&bad).unwrap_err();
    assert!(matches!(err, HistoryError::Corrupt { .. }), "{err}");

    // Bytes after the end record.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[1, 0]);
    std::fs::write(&bad, &longer).unwrap();
    let err = History::open(&bad).unwrap_err();
    assert!(err.to_string().contains("after the end record"), "{err}");

    std::fs::write(&bad, b"not a history at all").unwrap();
    assert!(matches!(
        History::open(&bad),
        Err(HistoryError::NotAHistory { .. })
    ));

    let mut v2 = bytes.clone();
    v2[8] = 2;
    std::fs::write(&bad, &v2).unwrap();
    let err = History::open(&bad).unwrap_err();
    assert!(
        matches!(err, HistoryError::Version { found: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("version 2"));

    assert!(matches!(
        History::open(tmp.path().join("missing")),
        Err(HistoryError::Io { .. })
    ));
}

//! The witness record stream: round trip, truncation, a crashed writer followed by a new
//! stream, and damage that must never panic the reader.

use proptest::prelude::*;
use reference_agent::witness::{
    read_all, read_from, BlockRecord, ByteRange, LiveCompare, ModuleInfo, Record, SessionEnd,
    SessionStart, SessionVerdict, Source, WitnessIssue, WitnessKind, WitnessWriter,
};

fn start(gen: u32) -> SessionStart {
    SessionStart {
        volume_index: 0,
        volume_id: "v0".into(),
        device: "/dev/vdb".into(),
        snapshot_device: Some("/dev/bwsnap0".into()),
        generation: gen,
        kind: if gen == 1 {
            WitnessKind::Full
        } else {
            WitnessKind::Incremental
        },
        parent_generation: (gen > 1).then_some(gen - 1),
        block_size: 4096,
        volume_size: 64 << 20,
        session: "01010101-0101-4101-8101-010101010101".into(),
        instant_monotonic_ns: 12_345_678_901,
        cow_extents: vec![ByteRange {
            offset: 1 << 20,
            len: 6 << 20,
        }],
        module: ModuleInfo {
            name: "bwsnap".into(),
            version: "0.1".into(),
            srcversion: "ABC".into(),
            params: [("cow_read_live_every".to_string(), "0".to_string())].into(),
        },
    }
}

fn block(gen: u32, b: u64) -> BlockRecord {
    BlockRecord {
        volume_index: 0,
        generation: gen,
        block: b,
        snapshot: [b as u8; 16],
        live_before: if matches!(b % 4, 0 | 3) {
            [0xEE; 16]
        } else {
            [0; 16]
        },
        live_after: if b.is_multiple_of(4) {
            [0xDD; 16]
        } else {
            [0; 16]
        },
        live: match b % 4 {
            0 => LiveCompare::Differs,
            1 => LiveCompare::Equal,
            2 => LiveCompare::NotRead,
            _ => LiveCompare::EqualAfter,
        },
        source: match b % 4 {
            0 => Source::Unknown,
            1 => Source::Live,
            2 => Source::Cow,
            _ => Source::Error,
        },
        fault: b.is_multiple_of(5) as u8,
    }
}

fn end(gen: u32, blocks: u64) -> SessionEnd {
    SessionEnd {
        volume_index: 0,
        generation: gen,
        blocks,
        result: SessionVerdict::Committed,
        message: None,
    }
}

/// One stream: start, `n` blocks, end. Returns bytes and the records.
fn stream(gen: u32, n: u64) -> (Vec<u8>, Vec<Record>) {
    let (bytes, recs, _) = stream_with_bounds(gen, n);
    (bytes, recs)
}

/// Also returns the byte offset where each record ends.
fn stream_with_bounds(gen: u32, n: u64) -> (Vec<u8>, Vec<Record>, Vec<usize>) {
    let mut w = WitnessWriter::new(Vec::new()).unwrap();
    let mut bounds = Vec::new();
    let mut recs = vec![Record::SessionStart(Box::new(start(gen)))];
    w.session_start(&start(gen)).unwrap();
    bounds.push(w.get_ref().len());
    for b in 0..n {
        w.block(&block(gen, b)).unwrap();
        bounds.push(w.get_ref().len());
        recs.push(Record::Block(block(gen, b)));
    }
    w.session_end(&end(gen, n)).unwrap();
    bounds.push(w.get_ref().len());
    recs.push(Record::SessionEnd(end(gen, n)));
    (w.into_inner(), recs, bounds)
}

#[test]
fn records_round_trip() {
    let (bytes, recs) = stream(1, 50);
    let log = read_all(&bytes);
    assert_eq!(log.issues, vec![]);
    assert_eq!(log.records, recs);
    let log2 = read_from(&bytes[..]).unwrap();
    assert_eq!(log2, log);
}

#[test]
fn truncation_keeps_every_whole_record_and_says_where() {
    let (bytes, recs, bounds) = stream_with_bounds(1, 5);
    for cut in 0..=bytes.len() {
        let log = read_all(&bytes[..cut]);
        let whole = bounds.iter().filter(|&&b| b <= cut).count();
        assert_eq!(log.records, recs[..whole], "cut {cut}");
        let at_boundary = cut == 0 || cut == 8 || bounds.contains(&cut);
        match log.issues.as_slice() {
            [] => assert!(at_boundary, "cut {cut}: a torn record went unreported"),
            [WitnessIssue::Truncated { offset, have, .. }] => {
                assert_eq!(*offset as usize + *have, cut, "cut {cut}");
            }
            other => panic!("cut {cut}: unexpected issues {other:?}"),
        }
    }
}

#[test]
fn a_crashed_writer_then_a_new_stream_loses_only_the_torn_record() {
    let (a, recs_a, bounds) = stream_with_bounds(1, 10);
    let (b, recs_b) = stream(2, 4);
    // The first agent died inside its 6th block record (bounds[0] ends the start).
    let torn = (bounds[5] + bounds[6]) / 2;
    let mut bytes = a[..torn].to_vec();
    bytes.extend_from_slice(&b);
    let log = read_all(&bytes);
    assert_eq!(log.issues.len(), 1, "{:?}", log.issues);
    assert!(matches!(log.issues[0], WitnessIssue::Corrupt { .. }));
    let n_a = log
        .records
        .iter()
        .filter(|r| matches!(r, Record::Block(b) if b.generation == 1))
        .count();
    assert_eq!(n_a, 5);
    assert!(log.records.ends_with(&recs_b));
    assert!(recs_a.starts_with(&log.records[..1]));
}

#[test]
fn a_stream_without_header_is_reported() {
    let (bytes, recs) = stream(1, 3);
    let mut bad = vec![1, 2, 3];
    bad.extend_from_slice(&bytes);
    let log = read_all(&bad);
    assert_eq!(log.records, recs);
    assert!(matches!(
        log.issues.as_slice(),
        [
            WitnessIssue::NoStreamHeader { offset: 0 },
            WitnessIssue::Corrupt { skipped: 3, .. }
        ]
    ));
}

proptest! {
    #[test]
    fn damage_never_panics_and_never_invents_records(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut bytes, recs) = stream(3, 8);
        for (at, bit) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        let k = cut.index(bytes.len() + 1);
        let log = read_all(&bytes[..k]);
        // CRC-protected: whatever is read back is one of the records written.
        for r in &log.records {
            prop_assert!(recs.contains(r), "invented record {:?}", r);
        }
    }
}

#[test]
fn a_batch_of_block_records_is_the_same_bytes_as_one_at_a_time() {
    let records: Vec<BlockRecord> = (0..300).map(|b| block(1, b)).collect();
    let mut one = WitnessWriter::new(Vec::new()).unwrap();
    for r in &records {
        one.block(r).unwrap();
    }
    let mut batch = WitnessWriter::new(Vec::new()).unwrap();
    batch.blocks(&records[..7]).unwrap();
    batch.blocks(&records[7..]).unwrap();
    assert_eq!(one.into_inner(), batch.into_inner());
}

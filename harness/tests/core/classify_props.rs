//! Property tests: random truth and stage vectors with planted divergences of every
//! class; the classifier (and the differ, on images and on recordings) must name exactly
//! the planted class at exactly the planted blocks, and nothing else.

use std::collections::BTreeMap;

use blockwitness::classify::{classify, classify_generation};
use blockwitness::model::*;
use blockwitness::record::*;
use bw_guest::stamp::Stamp;
use proptest::prelude::*;

fn hash(seed: u64, tag: u64, i: u64) -> BlockHash {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&tag.to_le_bytes());
    bytes[16..].copy_from_slice(&i.to_le_bytes());
    BlockHash::of(&bytes)
}

/// What a test plants at a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plant {
    Clean,
    Future,
    Corrupt,
    CorruptNoLive,
    MissingNeverCrossed,
    MissingAbsent,
    Transport,
    Target,
    Excluded,
    // Incremental only:
    Past,
    UnsentTargetCorruption,
    UnchangedUnsent,
}

impl Plant {
    fn class(self) -> BlockClass {
        match self {
            Plant::Clean | Plant::UnchangedUnsent => BlockClass::Ok,
            Plant::Future => BlockClass::DataFromTheFuture,
            Plant::Corrupt | Plant::CorruptNoLive => BlockClass::CorruptSnapshot,
            Plant::MissingNeverCrossed | Plant::MissingAbsent => BlockClass::MissingBlock,
            Plant::Transport => BlockClass::TransportCorruption,
            Plant::Target | Plant::UnsentTargetCorruption => BlockClass::TargetCorruption,
            Plant::Excluded => BlockClass::Excluded,
            Plant::Past => BlockClass::DataFromThePast,
        }
    }
}

fn full_plants() -> impl Strategy<Value = Plant> {
    prop_oneof![
        6 => Just(Plant::Clean),
        1 => Just(Plant::Future),
        1 => Just(Plant::Corrupt),
        1 => Just(Plant::CorruptNoLive),
        1 => Just(Plant::MissingNeverCrossed),
        1 => Just(Plant::MissingAbsent),
        1 => Just(Plant::Transport),
        1 => Just(Plant::Target),
        1 => Just(Plant::Excluded),
    ]
}

fn incremental_plants() -> impl Strategy<Value = Plant> {
    prop_oneof![
        4 => Just(Plant::Clean),
        4 => Just(Plant::UnchangedUnsent),
        1 => Just(Plant::Future),
        1 => Just(Plant::Corrupt),
        1 => Just(Plant::MissingNeverCrossed),
        1 => Just(Plant::MissingAbsent),
        1 => Just(Plant::Transport),
        1 => Just(Plant::Target),
        1 => Just(Plant::Excluded),
        1 => Just(Plant::Past),
        1 => Just(Plant::UnsentTargetCorruption),
    ]
}

/// Builds a generation with the plants at their blocks. `seed` varies the hashes.
fn build(kind: BackupKind, plants: &[Plant], seed: u64, success: bool) -> GenerationRecord {
    let n = plants.len();
    let truth: Vec<BlockHash> = (0..n as u64).map(|i| hash(seed, 1, i)).collect();
    let mut g = GenerationRecord::new(
        if kind == BackupKind::Full { 1 } else { 2 },
        kind,
        truth.clone(),
    );
    let mut snapshot = vec![None; n];
    let mut live = vec![Live::NotRead; n];
    let mut transport = vec![None; n];
    let mut target = vec![None; n];
    let mut previous = vec![None; n];
    let mut sent = std::collections::BTreeSet::new();
    for (i, plant) in plants.iter().enumerate() {
        let b = i as u64;
        let t = truth[i];
        let x = hash(seed, 2, b); // some other data
        let y = hash(seed, 3, b); // yet other data
        let old = hash(seed, 4, b); // the previous generation's data
                                    // Defaults: a sent, clean block; an incremental's sent blocks changed.
        previous[i] = Some(if kind == BackupKind::Incremental {
            old
        } else {
            t
        });
        let mut send =
            |s: Option<BlockHash>, l: Live, x_: Option<BlockHash>, r: Option<BlockHash>| {
                snapshot[i] = s;
                live[i] = l;
                transport[i] = x_;
                target[i] = r;
                sent.insert(b);
            };
        match plant {
            Plant::Clean => send(Some(t), Live::Equal, Some(t), Some(t)),
            Plant::Future => send(Some(x), Live::Equal, Some(x), Some(x)),
            Plant::Corrupt => send(Some(x), Live::Differs(y), Some(x), Some(x)),
            Plant::CorruptNoLive => send(Some(x), Live::NotRead, Some(x), Some(x)),
            Plant::MissingNeverCrossed => send(Some(t), Live::Equal, None, Some(y)),
            Plant::MissingAbsent => send(Some(t), Live::Equal, Some(t), None),
            Plant::Transport => send(Some(t), Live::Equal, Some(x), Some(x)),
            Plant::Target => send(Some(t), Live::Equal, Some(t), Some(x)),
            Plant::Excluded => {
                send(Some(x), Live::Differs(y), None, Some(y));
                g.excluded.push(Exclusion {
                    start: b,
                    end: b + 1,
                    reason: "COW file".into(),
                });
            }
            Plant::UnchangedUnsent => {
                previous[i] = Some(t);
                target[i] = Some(t);
            }
            Plant::Past => target[i] = Some(old),
            Plant::UnsentTargetCorruption => target[i] = Some(x),
        }
    }
    g.snapshot = Some(snapshot);
    g.live = Some(live);
    g.source = Some(vec![Some(Source::Cow); n]);
    g.transport = Some(transport);
    g.target = Some(target);
    g.committed = true;
    g.agent = if success {
        Claim::Success
    } else {
        Claim::Failure("no".into())
    };
    g.target_claim = g.agent.clone();
    if kind == BackupKind::Incremental {
        g.incremental = Some(IncrementalRecord {
            sent,
            previous: Some(previous),
        });
    }
    g
}

fn check(g: &GenerationRecord, plants: &[Plant], success: bool) -> Result<(), TestCaseError> {
    let result = classify_generation("v", g);
    for (i, plant) in plants.iter().enumerate() {
        prop_assert_eq!(
            result.classes[i],
            plant.class(),
            "block {} planted {:?}",
            i,
            plant
        );
    }
    let planted: BTreeMap<u64, BlockClass> = plants
        .iter()
        .enumerate()
        .filter(|(_, p)| p.class().is_problem())
        .map(|(i, p)| (i as u64, p.class()))
        .collect();
    let found: BTreeMap<u64, BlockClass> =
        result.findings.iter().map(|f| (f.block, f.class)).collect();
    prop_assert_eq!(&found, &planted);
    let false_success = result.outcomes.contains(&Outcome::FalseSuccess);
    prop_assert_eq!(false_success, success && !planted.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn full_backups_name_exactly_the_planted_blocks(
        plants in prop::collection::vec(full_plants(), 1..400),
        seed in any::<u64>(),
        success in any::<bool>(),
    ) {
        let g = build(BackupKind::Full, &plants, seed, success);
        check(&g, &plants, success)?;
    }

    #[test]
    fn incrementals_name_exactly_the_planted_blocks(
        plants in prop::collection::vec(incremental_plants(), 1..400),
        seed in any::<u64>(),
        success in any::<bool>(),
    ) {
        let g = build(BackupKind::Incremental, &plants, seed, success);
        check(&g, &plants, success)?;
    }

    #[test]
    fn recordings_survive_save_load_and_diff_with_themselves(
        plants in prop::collection::vec(full_plants(), 1..200),
        inc in prop::collection::vec(incremental_plants(), 1..200),
        seed in any::<u64>(),
    ) {
        // Both generations share a block count (a volume's size is fixed).
        let n = plants.len().min(inc.len());
        let (plants, inc) = (&plants[..n], &inc[..n]);
        let rec = Recording {
            run: RunInfo::default(),
            expect: Expectations::clean(),
            volumes: vec![VolumeRecord {
                name: "data".into(),
                fs: "ext4".into(),
                generations: vec![build(BackupKind::Full, plants, seed, true), build(BackupKind::Incremental, inc, seed ^ 1, true)],
            }],
            events: RunEvents::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORDING_FILE);
        rec.save(&path).unwrap();
        let loaded = Recording::load(&path).unwrap();
        prop_assert_eq!(&loaded, &rec);
        let out = blockwitness::diff::diff(dir.path(), dir.path(), &dir.path().join("diff")).unwrap();
        let want = classify(&rec).unwrap();
        for (g, (_, _, _, counts)) in want.generations.iter().zip(&out.compared) {
            prop_assert_eq!(&g.counts, counts);
        }
    }
}

/// One image block: stamped with (lba, seq), or raw bytes.
fn stamped(lba: u64, seq: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    Stamp {
        lba,
        seq,
        time_ns: seq * 1_000_000,
        run: 42,
        writer: 1,
    }
    .write_into(&mut b);
    b
}

#[derive(Clone, Copy, Debug)]
enum ImagePlant {
    Same,
    Later,
    Earlier,
    Damaged,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_image_differ_names_exactly_the_planted_blocks(
        plants in prop::collection::vec(
            prop_oneof![5 => Just(ImagePlant::Same), 1 => Just(ImagePlant::Later), 1 => Just(ImagePlant::Earlier), 1 => Just(ImagePlant::Damaged)],
            1..96,
        ),
        cut in 0usize..4,
    ) {
        let n = plants.len();
        let mut a = Vec::with_capacity(n * BLOCK);
        let mut b = Vec::with_capacity(n * BLOCK);
        let mut want: BTreeMap<BlockClass, u64> = BTreeMap::new();
        let keep = n.saturating_sub(cut).max(1);
        for (i, p) in plants.iter().enumerate() {
            let lba = i as u64;
            a.extend_from_slice(&stamped(lba, 10));
            let (block, class) = match p {
                ImagePlant::Same => (stamped(lba, 10), BlockClass::Ok),
                ImagePlant::Later => (stamped(lba, 11 + lba), BlockClass::DataFromTheFuture),
                ImagePlant::Earlier => (stamped(lba, 1 + lba % 9), BlockClass::DataFromThePast),
                ImagePlant::Damaged => {
                    let mut d = stamped(lba, 10);
                    d[100] ^= 0xff;
                    (d, BlockClass::Unattributed)
                }
            };
            if i < keep {
                b.extend_from_slice(&block);
                *want.entry(class).or_default() += 1;
            } else {
                *want.entry(BlockClass::MissingBlock).or_default() += 1;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (dir.path().join("truth.img"), dir.path().join("backup.img"));
        std::fs::write(&pa, &a).unwrap();
        std::fs::write(&pb, &b).unwrap();
        let out = blockwitness::diff::diff(&pa, &pb, &dir.path().join("r")).unwrap();
        let got: BTreeMap<BlockClass, u64> = out.compared[0].3.iter().filter(|(_, n)| **n > 0).map(|(c, n)| (*c, *n)).collect();
        prop_assert_eq!(got, want);
    }
}

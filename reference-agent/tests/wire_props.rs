//! Property tests of the wire protocol: every frame round-trips; every truncation is
//! "need more bytes"; every single-bit flip is an error or a block whose hash check
//! fails; arbitrary bytes never panic the decoder or the stream buffer.

use proptest::prelude::*;
use proptest::sample::Index;
use reference_agent::wire::{
    block_digest, decode, decode_view, Accept, Ack, BackupKind, BlockFrame, End, ErrorCode,
    ErrorFrame, FailReason, Frame, FrameBuffer, FrameView, Nack, NackReason, Outcome,
    SessionHeader, SessionId, SessionResult, MAX_BAD_BLOCKS,
};

fn session_id() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId)
}

fn header() -> impl Strategy<Value = SessionHeader> {
    (
        session_id(),
        "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}",
        9u32..=20,
        1u64..100_000,
        1u32..=u32::MAX,
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(
            |(session, volume_id, shift, blocks, generation, incr, resume, p)| {
                let block_size = 1u32 << shift;
                let kind = if incr && generation > 1 {
                    BackupKind::Incremental {
                        parent: 1 + p % (generation - 1),
                    }
                } else {
                    BackupKind::Full
                };
                SessionHeader {
                    session,
                    volume_id,
                    volume_size: blocks * u64::from(block_size),
                    block_size,
                    generation,
                    kind,
                    resume,
                }
            },
        )
}

fn block() -> impl Strategy<Value = BlockFrame> {
    (
        any::<u64>(),
        any::<u64>(),
        1usize..=4,
        prop::sample::select(vec![512usize, 1024, 4096]),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(seq, offset, n, bl, seed, good_hashes)| {
            let mut x = seed | 1;
            let data: Vec<u8> = (0..n * bl)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let hashes = data
                .chunks(bl)
                .map(|c| {
                    let h = block_digest(c);
                    if good_hashes {
                        h
                    } else {
                        [h[0] ^ 1; 16]
                    }
                })
                .collect();
            BlockFrame {
                seq,
                offset,
                hashes,
                data,
            }
        })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (any::<u32>(), any::<u64>()).prop_map(|(generation, block_count)| Outcome::Committed {
            generation,
            block_count
        }),
        (
            prop::sample::select(vec![
                FailReason::Verification,
                FailReason::Manifest,
                FailReason::Storage,
                FailReason::Protocol,
                FailReason::Aborted,
            ]),
            ".{0,200}",
            prop::collection::vec(any::<u64>(), 0..20),
            0u64..1000,
        )
            .prop_map(|(reason, message, bad_blocks, extra)| {
                let bad_total = bad_blocks.len() as u64 + extra;
                Outcome::Failed {
                    reason,
                    message,
                    bad_blocks,
                    bad_total,
                }
            }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        header().prop_map(Frame::Header),
        (session_id(), any::<u64>())
            .prop_map(|(session, next_seq)| Frame::Accept(Accept { session, next_seq })),
        block().prop_map(Frame::Block),
        (session_id(), any::<u64>())
            .prop_map(|(session, next_seq)| Frame::Ack(Ack { session, next_seq })),
        (session_id(), any::<u64>(), any::<bool>()).prop_map(|(session, seq, m)| {
            Frame::Nack(Nack {
                session,
                seq,
                reason: if m {
                    NackReason::HashMismatch
                } else {
                    NackReason::Missing
                },
            })
        }),
        (session_id(), any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(
            |(session, frame_count, block_count, manifest_digest)| Frame::End(End {
                session,
                frame_count,
                block_count,
                manifest_digest
            })
        ),
        (session_id(), outcome())
            .prop_map(|(session, outcome)| Frame::Result(SessionResult { session, outcome })),
        (session_id(), 1u16..=7, ".{0,200}").prop_map(|(session, code, message)| {
            Frame::Error(ErrorFrame {
                session,
                code: ErrorCode::from_u16(code).unwrap(),
                message,
            })
        }),
    ]
}

fn block_data_len(f: &Frame) -> usize {
    match f {
        Frame::Block(b) => b.data.len(),
        _ => 0,
    }
}

proptest! {
    #[test]
    fn frames_round_trip(f in frame()) {
        let bytes = f.to_bytes().unwrap();
        let (back, used) = decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&back, &f);
        // Trailing bytes belong to the next frame, not to this one.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let (again, used) = decode(&two).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(again, f);
    }

    #[test]
    fn every_truncation_asks_for_more(f in frame(), cut in any::<Index>()) {
        let bytes = f.to_bytes().unwrap();
        let k = cut.index(bytes.len());
        prop_assert_eq!(decode(&bytes[..k]).unwrap(), None);
    }

    #[test]
    fn a_bit_flip_is_an_error_or_a_failed_hash(f in frame(), at in any::<Index>(), bit in 0u8..8) {
        let mut bytes = f.to_bytes().unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        match decode_view(&bytes) {
            Err(_) => {}
            Ok(None) => prop_assert!(false, "a flip at byte {} made the frame look incomplete", i),
            Ok(Some((FrameView::Block(b), _))) => {
                // Only block data is outside the checksums; its hash must catch the flip.
                prop_assert!(i >= bytes.len() - block_data_len(&f), "flip at byte {} outside the data passed", i);
                prop_assert!(!b.mismatched_blocks().is_empty(), "flip at byte {} went unnoticed", i);
            }
            Ok(Some((FrameView::Other(g), _))) => {
                prop_assert!(false, "flip at byte {} decoded as {:?}", i, g);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
        let _ = reference_agent::wire::sync_offset(&bytes);
        for sync in [false, true] {
            let mut fb = FrameBuffer::new();
            fb.set_syncing(sync);
            fb.push(&bytes);
            for _ in 0..bytes.len() + 2 {
                match fb.next_item() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn header_prefix_with_garbage_never_panics(
        f in frame(),
        garbage in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = f.to_bytes().unwrap();
        bytes.truncate(20.min(bytes.len()));
        bytes.extend_from_slice(&garbage);
        let _ = decode(&bytes);
    }

    #[test]
    fn a_stream_in_random_pieces_yields_the_same_frames(
        frames in prop::collection::vec(frame(), 1..6),
        stale in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(1usize..3000, 1..20),
    ) {
        let mut stream: Vec<u8> = stale.iter().map(|b| if *b == b'B' { 0 } else { *b }).collect();
        for f in &frames {
            f.encode(&mut stream).unwrap();
        }
        let mut fb = FrameBuffer::new();
        fb.set_syncing(true);
        let mut got = Vec::new();
        let mut pos = 0;
        let mut ci = 0;
        while pos < stream.len() {
            let n = cuts[ci % cuts.len()].min(stream.len() - pos);
            ci += 1;
            fb.push(&stream[pos..pos + n]);
            pos += n;
            while let Some(v) = fb.next_frame().unwrap() {
                got.push(v.to_owned_frame());
            }
        }
        prop_assert_eq!(fb.skipped(), stale.len() as u64);
        prop_assert_eq!(got, frames);
    }
}

#[test]
fn encode_refuses_what_decode_would_refuse() {
    let good = SessionHeader {
        session: SessionId([1; 16]),
        volume_id: "v0".into(),
        volume_size: 8192,
        block_size: 4096,
        generation: 2,
        kind: BackupKind::Incremental { parent: 1 },
        resume: false,
    };
    let cases: Vec<(&str, SessionHeader)> = vec![
        (
            "empty volume id",
            SessionHeader {
                volume_id: String::new(),
                ..good.clone()
            },
        ),
        (
            "dot volume id",
            SessionHeader {
                volume_id: "..".into(),
                ..good.clone()
            },
        ),
        (
            "slash in volume id",
            SessionHeader {
                volume_id: "a/b".into(),
                ..good.clone()
            },
        ),
        (
            "block size 3000",
            SessionHeader {
                block_size: 3000,
                ..good.clone()
            },
        ),
        (
            "unaligned size",
            SessionHeader {
                volume_size: 8193,
                ..good.clone()
            },
        ),
        (
            "generation 0",
            SessionHeader {
                generation: 0,
                kind: BackupKind::Full,
                ..good.clone()
            },
        ),
        (
            "parent not older",
            SessionHeader {
                kind: BackupKind::Incremental { parent: 2 },
                ..good.clone()
            },
        ),
    ];
    for (what, h) in cases {
        let mut out = vec![9u8];
        assert!(Frame::Header(h).encode(&mut out).is_err(), "{what}");
        assert_eq!(out, vec![9u8], "{what}: a failed encode must not append");
    }
    let too_many = Frame::Result(SessionResult {
        session: SessionId([1; 16]),
        outcome: Outcome::Failed {
            reason: FailReason::Verification,
            message: String::new(),
            bad_blocks: vec![0; MAX_BAD_BLOCKS + 1],
            bad_total: MAX_BAD_BLOCKS as u64 + 1,
        },
    });
    assert!(too_many.to_bytes().is_err());
    assert!(Frame::Header(good).to_bytes().is_ok());
}

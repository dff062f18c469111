//! The engine end to end on the host: requests laid out in a real guest memory, a real
//! image file, the layers and the history; the faults and the schedule.

use std::path::{Path, PathBuf};
use std::time::Duration;

use witness_disk::driver::{HostDriver, HostRequest};
use witness_disk::engine::EngineConfig;
use witness_disk::faults::{BlockRange, FaultSpec, OpFilter, Times};
use witness_disk::hash::{block_hash, zero_block_hash};
use witness_disk::history::{EndReason, History, Marker, Op, Outcome};
use witness_disk::layers::{Generation, Layers};
use witness_disk::request::Segment;
use witness_disk::Schedule;

const T: Duration = Duration::from_secs(10);

struct Disk {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    d: HostDriver,
}

fn disk(mib: u64, schedule: Option<Schedule>) -> Disk {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let image = dir.join("d0.raw");
    // A recognisable base: every byte is its block number (mod 251).
    let blocks = (mib << 20) / 4096;
    let mut content = Vec::with_capacity((mib << 20) as usize);
    for b in 0..blocks {
        content.extend(std::iter::repeat_n((b % 251) as u8, 4096));
    }
    std::fs::write(&image, content).unwrap();
    let d = HostDriver::start(
        &image,
        &dir.join("state"),
        &dir.join("history"),
        EngineConfig {
            serial: "bw-test-serial".into(),
            max_queues: 4,
            schedule,
        },
    )
    .unwrap();
    Disk { _tmp: tmp, dir, d }
}

impl Disk {
    fn finish(&self) -> History {
        self.d.engine.finish(EndReason::Shutdown).unwrap();
        History::open(self.dir.join("history")).unwrap()
    }

    fn layers(&self) -> Layers {
        Layers::open(self.dir.join("state")).unwrap()
    }
}

/// Waits until at most `n` requests are in flight: a completion's bookkeeping ends a
/// moment after the guest sees it.
fn settle(e: &witness_disk::engine::Engine, n: u64) {
    let deadline = std::time::Instant::now() + T;
    while e.stats().in_flight > n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i / 7) as u8)).collect()
}

fn read_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn writes_reads_and_their_history() {
    let t = disk(4, None);
    let d = &t.d;
    let a = pattern(1, 8192);
    assert_eq!(
        d.run(&HostRequest::Write {
            offset: 4096,
            data: &a
        }),
        Some(0)
    );
    assert_eq!(d.read(4096, 8192).unwrap(), a);
    // A 512-byte write inside block 5: the history hashes the whole block after it.
    let small = pattern(9, 512);
    assert_eq!(
        d.run(&HostRequest::Write {
            offset: 5 * 4096 + 1024,
            data: &small
        }),
        Some(0)
    );
    let mut block5 = vec![5u8; 4096];
    block5[1024..1536].copy_from_slice(&small);
    assert_eq!(d.read(5 * 4096, 4096).unwrap(), block5);
    assert_eq!(d.run(&HostRequest::Flush), Some(0));
    assert_eq!(d.run(&HostRequest::GetId), Some(0));
    assert_eq!(&d.data(0, 20)[..14], b"bw-test-serial");
    // Discard from the middle of block 8 to the middle of block 11.
    assert_eq!(
        d.run(&HostRequest::Discard {
            offset: 8 * 4096 + 2048,
            len: 3 * 4096
        }),
        Some(0)
    );
    let z = d.read(8 * 4096, 4 * 4096).unwrap();
    assert!(z[..2048].iter().all(|b| *b == 8));
    assert!(z[2048..3 * 4096 + 2048].iter().all(|b| *b == 0));
    assert!(z[3 * 4096 + 2048..].iter().all(|b| *b == 11));
    // Beyond the end: an I/O error, and the disk is untouched.
    assert_eq!(
        d.run(&HostRequest::Write {
            offset: (4 << 20) - 512,
            data: &[1u8; 1024]
        }),
        Some(1)
    );

    let h = t.finish();
    assert!(h.is_complete());
    let reqs = h.requests_by_seq();
    let ops: Vec<_> = reqs.iter().map(|r| (r.op, r.outcome)).collect();
    assert_eq!(
        ops,
        vec![
            (Op::Write, Outcome::Ok),
            (Op::Read, Outcome::Ok),
            (Op::Write, Outcome::Ok),
            (Op::Read, Outcome::Ok),
            (Op::Flush, Outcome::Ok),
            (Op::GetId, Outcome::Ok),
            (Op::Discard, Outcome::Ok),
            (Op::Read, Outcome::Ok),
            (Op::Write, Outcome::IoError),
        ]
    );
    let w = reqs[0];
    assert_eq!(
        w.block_versions().collect::<Vec<_>>(),
        vec![(1, block_hash(&a[..4096])), (2, block_hash(&a[4096..]))]
    );
    assert!(w.complete_ns.unwrap() >= w.submit_ns);
    assert_eq!(
        reqs[2].block_versions().collect::<Vec<_>>(),
        vec![(5, block_hash(&block5))]
    );
    let mut b8 = vec![8u8; 4096];
    b8[2048..].fill(0);
    let mut b11 = vec![0u8; 4096];
    b11[2048..].fill(11);
    assert_eq!(
        reqs[6].block_versions().collect::<Vec<_>>(),
        vec![
            (8, block_hash(&b8)),
            (9, zero_block_hash()),
            (10, zero_block_hash()),
            (11, block_hash(&b11))
        ]
    );
    // Content changes are numbered in the order they were applied.
    let applied: Vec<_> = reqs.iter().filter_map(|r| r.applied).collect();
    assert_eq!(applied, vec![0, 1, 2]);
    assert!(reqs[8].runs.is_empty());
}

#[test]
fn instants_freeze_generations() {
    let t = disk(2, None);
    let d = &t.d;
    let a = pattern(1, 4096);
    let b = pattern(2, 4096);
    d.run(&HostRequest::Write {
        offset: 0,
        data: &a,
    });
    let i1 = t.d.engine.instant("backup-1").unwrap();
    assert_eq!(i1.generation, 1);
    d.run(&HostRequest::Write {
        offset: 0,
        data: &b,
    });
    d.run(&HostRequest::Write {
        offset: 4096 + 3072,
        data: &[7u8; 512],
    });
    let i2 = t.d.engine.instant("backup-2").unwrap();
    assert_eq!(i2.generation, 2);
    assert!(i2.seq > i1.seq && i2.t_ns > i1.t_ns);
    d.run(&HostRequest::WriteZeroes {
        offset: 0,
        len: 8192,
        unmap: true,
    });
    // Reads after an instant come block by block from the layer that holds each.
    let live = d.read(0, 3 * 4096).unwrap();
    assert!(live[..8192].iter().all(|x| *x == 0));
    assert_eq!(&live[8192 + 3072..8192 + 3584], &[2u8; 512][..]);
    // Generations are readable while the backend runs.
    let layers = t.layers();
    let g1 = t.dir.join("g1.raw");
    layers.materialise(Generation::At(1), &g1).unwrap();
    assert_eq!(&read_file(&g1)[..4096], &a[..]);
    let g2 = t.dir.join("g2.raw");
    layers.materialise(Generation::At(2), &g2).unwrap();
    let g2 = read_file(&g2);
    assert_eq!(&g2[..4096], &b[..]);
    assert_eq!(&g2[4096 + 3072..4096 + 3584], &[7u8; 512][..]);
    assert_eq!(&g2[4096..4096 + 3072], &[1u8; 3072][..]);

    let h = t.finish();
    let fin = t.dir.join("final.raw");
    t.layers().materialise(Generation::Final, &fin).unwrap();
    assert!(read_file(&fin)[..8192].iter().all(|x| *x == 0));
    // The history splits the writes at each instant: generation N holds exactly the
    // changes applied before its marker.
    let instants = h.instants();
    assert_eq!(instants.len(), 2);
    let cut1 = instants[0].2.next_applied;
    let before: Vec<_> = h
        .requests()
        .filter(|r| r.applied.is_some_and(|a| a < cut1))
        .collect();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].block_versions().next(), Some((0, block_hash(&a))));
    // Replaying the history over the base image gives each generation's hashes.
    let mut blocks: Vec<_> = (0..512u64)
        .map(|b| block_hash(&[(b % 251) as u8; 4096]))
        .collect();
    let mut reqs: Vec<_> = h.requests().filter(|r| r.applied.is_some()).collect();
    reqs.sort_by_key(|r| r.applied);
    let cut2 = instants[1].2.next_applied;
    for r in reqs.iter().filter(|r| r.applied.unwrap() < cut2) {
        for (blk, hash) in r.block_versions() {
            blocks[blk as usize] = hash;
        }
    }
    for (i, chunk) in g2.chunks(4096).enumerate() {
        assert_eq!(blocks[i], block_hash(chunk), "block {i}");
    }
}

#[test]
fn eio_hang_torn_and_latency_fire_and_count() {
    let t = disk(4, None);
    let d = &t.d;
    let e = &t.d.engine;
    // eio: the second write to blocks 10..12, once.
    let eio = e
        .arm(FaultSpec::Eio {
            ops: OpFilter::Write,
            blocks: Some(BlockRange { start: 10, end: 12 }),
            times: Times::Once,
            after: 1,
        })
        .unwrap();
    let w = pattern(3, 4096);
    assert_eq!(
        d.run(&HostRequest::Write {
            offset: 40960,
            data: &w
        }),
        Some(0)
    );
    assert_eq!(
        d.run(&HostRequest::Write {
            offset: 40960,
            data: &w
        }),
        Some(1)
    );
    assert_eq!(
        d.run(&HostRequest::Write {
            offset: 40960,
            data: &w
        }),
        Some(0)
    );
    assert_eq!(
        d.run(&HostRequest::Read {
            offset: 40960,
            len: 4096
        }),
        Some(0)
    );

    // hang: a read of block 0 is held until released; other requests go on.
    let hang = e
        .arm(FaultSpec::Hang {
            ops: OpFilter::Read,
            blocks: Some(BlockRange { start: 0, end: 1 }),
            times: Times::Always,
            after: 0,
        })
        .unwrap();
    d.submit(
        1,
        1,
        &HostRequest::Read {
            offset: 0,
            len: 4096,
        },
    );
    assert_eq!(d.wait(1, Duration::from_millis(300)), None);
    assert_eq!(
        d.run(&HostRequest::Read {
            offset: 8192,
            len: 4096
        }),
        Some(0)
    );
    settle(e, 1);
    assert_eq!(e.stats().in_flight, 1);
    assert_eq!(e.release(hang).unwrap(), 1);
    assert_eq!(d.wait(1, T), Some(0));
    assert_eq!(d.data(1, 4096), vec![0u8; 4096]);

    // torn: a 4-block write lands 1 block and never completes.
    let torn = e.arm(FaultSpec::Torn { land: 1 }).unwrap();
    let big = pattern(5, 4 * 4096);
    d.submit(
        0,
        2,
        &HostRequest::Write {
            offset: 20 * 4096,
            data: &big,
        },
    );
    assert_eq!(d.wait(2, Duration::from_millis(300)), None);
    let after = d.read(20 * 4096, 4 * 4096).unwrap();
    assert_eq!(&after[..4096], &big[..4096]);
    assert!(after[4096..8192].iter().all(|b| *b == 21));

    // latency: every request delayed up to 50 ms, seeded.
    let lat = e
        .arm(FaultSpec::Latency {
            seed: 11,
            max_us: 50_000,
            ops: OpFilter::All,
            blocks: None,
        })
        .unwrap();
    for _ in 0..5 {
        assert_eq!(d.run(&HostRequest::Flush), Some(0));
    }
    e.release(lat).unwrap();

    settle(e, 0);
    let stats = e.stats();
    let fired: Vec<_> = stats.faults.iter().map(|f| (f.fault, f.fired)).collect();
    assert_eq!(fired, vec![(eio, 1), (hang, 1), (torn, 1), (lat, 5)]);
    assert!(!stats.faults[0].active && stats.faults[0].matched == 2);
    assert_eq!(
        stats.in_flight, 0,
        "a torn write is finished, not in flight"
    );

    let h = t.finish();
    assert_eq!(h.fired_counts().into_iter().collect::<Vec<_>>(), fired);
    let torn_req = h.requests().find(|r| r.outcome == Outcome::Torn).unwrap();
    assert_eq!(torn_req.complete_ns, None);
    assert_eq!(
        torn_req.block_versions().collect::<Vec<_>>(),
        vec![(20, block_hash(&big[..4096]))]
    );
    let hung = h
        .requests()
        .find(|r| r.queue == 1 && r.op == Op::Read)
        .unwrap();
    assert!(hung.complete_ns.unwrap() - hung.submit_ns >= 300_000_000);
    // Every firing is a marker naming the request.
    let fired_seqs: Vec<_> = h
        .markers()
        .filter_map(|m| match m.marker {
            Marker::FaultFired { fault, seq } if fault == torn => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(fired_seqs, vec![torn_req.seq]);
}

#[test]
fn a_stopped_queue_drops_what_it_held_and_shutdown_drops_the_rest() {
    let t = disk(1, None);
    let d = &t.d;
    let e = &t.d.engine;
    e.arm(FaultSpec::Hang {
        ops: OpFilter::Both,
        blocks: None,
        times: Times::Always,
        after: 0,
    })
    .unwrap();
    d.submit(
        2,
        3,
        &HostRequest::Write {
            offset: 0,
            data: &[1u8; 4096],
        },
    );
    d.submit(
        3,
        4,
        &HostRequest::Read {
            offset: 0,
            len: 4096,
        },
    );
    e.stop_queue(2);
    assert_eq!(e.stats().in_flight, 1);
    let h = t.finish();
    let outcomes: Vec<_> = h
        .requests_by_seq()
        .iter()
        .map(|r| (r.queue, r.outcome, r.complete_ns))
        .collect();
    assert_eq!(
        outcomes,
        vec![(2, Outcome::Dropped, None), (3, Outcome::Dropped, None)]
    );
    assert_eq!(
        d.status(3),
        0xFF,
        "a dropped request's status is never written"
    );
    // Nothing the dropped write carried reached the disk.
    assert_eq!(read_file(&t.dir.join("d0.raw"))[..4096], [0u8; 4096]);
}

#[test]
fn malformed_chains_get_an_error_status_or_nothing() {
    let t = disk(1, None);
    let d = &t.d;
    // No writable byte: completed with nothing written.
    d.submit_raw(
        0,
        5,
        &[Segment {
            addr: 5 * (8 << 20),
            len: 16,
            writable: false,
        }],
    );
    assert!(d.wait(5, T).is_some());
    // A status beyond guest memory: same.
    d.submit_raw(
        0,
        6,
        &[Segment {
            addr: 1 << 40,
            len: 1,
            writable: true,
        }],
    );
    assert!(d.wait(6, T).is_some());
    // A header too short: an I/O error.
    d.submit_raw(
        0,
        7,
        &[
            Segment {
                addr: 7 * (8 << 20),
                len: 8,
                writable: false,
            },
            Segment {
                addr: 7 * (8 << 20) + 64,
                len: 1,
                writable: true,
            },
        ],
    );
    assert_eq!(d.wait(7, T), Some(1));
    let h = t.finish();
    let outcomes: Vec<_> = h.requests_by_seq().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Unanswerable,
            Outcome::Unanswerable,
            Outcome::IoError
        ]
    );
}

/// The seeded schedule holds each request for a delay that depends only on the seed
/// and the request, so requests in flight together complete in the same order every
/// time.
#[test]
fn the_seeded_schedule_replays_its_completion_order() {
    let order = |seed: u64| -> Vec<u16> {
        let t = disk(
            1,
            Some(Schedule {
                seed,
                max_delay_us: 400_000,
            }),
        );
        for head in 0..8u16 {
            t.d.submit(
                head % 4,
                head,
                &HostRequest::Read {
                    offset: u64::from(head) * 4096,
                    len: 4096,
                },
            );
        }
        for head in 0..8u16 {
            assert_eq!(t.d.wait(head, T), Some(0));
        }
        let h = t.finish();
        // The order the requests completed in, by the engine's own completion times.
        let mut by_done: Vec<_> = h.requests().collect();
        by_done.sort_by_key(|r| r.complete_ns);
        by_done.iter().map(|r| (r.offset / 4096) as u16).collect()
    };
    // Expected from the delays alone, keeping only pairs far enough apart that the
    // host's scheduling cannot swap them.
    let expect = |seed: u64| -> Vec<(u16, Duration)> {
        let mut v: Vec<_> = (0..8u16)
            .map(|h| {
                let key = witness_disk::schedule::RequestKey {
                    op: Op::Read,
                    offset: u64::from(h) * 4096,
                    len: 4096,
                };
                (h, witness_disk::schedule::delay(seed, 400_000, key, 0))
            })
            .collect();
        v.sort_by_key(|x| x.1);
        v
    };
    for seed in [1u64, 2] {
        let got = order(seed);
        let again = order(seed);
        let want = expect(seed);
        for w in want.windows(2) {
            if w[1].1 - w[0].1 > Duration::from_millis(40) {
                let pos = |h| got.iter().position(|x| *x == h).unwrap();
                assert!(
                    pos(w[0].0) < pos(w[1].0),
                    "seed {seed}: {got:?} vs {want:?}"
                );
                let pos2 = |h| again.iter().position(|x| *x == h).unwrap();
                assert!(pos2(w[0].0) < pos2(w[1].0), "seed {seed} replay: {again:?}");
            }
        }
    }
}

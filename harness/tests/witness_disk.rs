//! The witness disk under real guests: both Debian kernels boot on a `bw-disk`
//! vhost-user-blk disk; the guest makes a filesystem, writes, syncs, trims and reads;
//! known patterns appear in the history with their xxh3-128 hashes and in order; an
//! instant's frozen generation equals the history replayed to that instant; every fault
//! kind fires and is counted the same by the backend and the history.

mod common;

use std::time::{Duration, Instant};

use blockwitness::vm::{BootOptions, Vm};
use blockwitness::witness::{WitnessDiskSpec, WitnessDisks};
use witness_disk::faults::{BlockRange, FaultSpec, OpFilter, Times};
use witness_disk::hash::{block_hash, BlockHash};
use witness_disk::history::{History, Marker, Op, Outcome};
use witness_disk::layers::{Generation, Layers};

const T: Duration = Duration::from_secs(120);
const MIB: u64 = 64;
/// Where the raw-pattern checks write (the filesystem is unmounted by then).
const A_BLOCK: u64 = 4000;

/// 4 KiB of one byte value.
fn fill(b: u8) -> Vec<u8> {
    vec![b; 4096]
}

/// Every block's hash after replaying the history's content changes with applied
/// number below `cut` over an all-zero image.
fn replay(h: &History, cut: u64) -> Vec<BlockHash> {
    let mut blocks = vec![block_hash(&[0u8; 4096]); (MIB * 256) as usize];
    let mut changes: Vec<_> = h
        .requests()
        .filter(|r| r.applied.is_some_and(|a| a < cut))
        .collect();
    changes.sort_by_key(|r| r.applied);
    for r in changes {
        for (b, hash) in r.block_versions() {
            blocks[b as usize] = hash;
        }
    }
    blocks
}

fn hashes_of(path: &std::path::Path) -> Vec<BlockHash> {
    std::fs::read(path)
        .unwrap()
        .chunks(4096)
        .map(block_hash)
        .collect()
}

fn sh(vm: &mut Vm, script: &str) -> String {
    vm.guest
        .sh(script, T)
        .unwrap_or_else(|e| panic!("{script}: {}", common::error_chain(&e)))
}

/// Writes 4 KiB of `byte` at `block` with O_DIRECT, then syncs.
fn pattern(vm: &mut Vm, dev: &str, byte: char, block: u64) {
    sh(
        vm,
        &format!(
            "dd if=/dev/zero bs=4096 count=1 2>/dev/null | tr '\\000' '{byte}' > /tmp/p && \
             dd if=/tmp/p of={dev} bs=4096 seek={block} count=1 oflag=direct conv=notrunc \
             2>/dev/null && sync"
        ),
    );
}

fn witness_disk_on(kernel: &str) {
    let img = common::image(kernel);
    let accel = common::accel(img);
    let dir = common::scratch("witness");
    let raw = common::raw_disk(dir.path(), "w0", MIB, &[]);
    let (mut disks, vhost) = WitnessDisks::start(
        &[WitnessDiskSpec {
            id: "w0".into(),
            image: raw.path.clone(),
            serial: "bw-w0".into(),
        }],
        dir.path(),
        2,
        None,
    )
    .unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    let mut opts = BootOptions::new(accel, dir.path().join("run"));
    opts.vhost_disks = vhost;
    let mut vm = Vm::boot(img, opts).unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    let mut ctl = disks
        .backend("w0")
        .unwrap()
        .control(Duration::from_secs(30))
        .unwrap();

    // The guest finds the disk by the serial the backend answers to get-id, and uses
    // both queues.
    let dev = sh(&mut vm, "grep -l bw-w0 /sys/block/vd*/serial | cut -d/ -f4")
        .trim()
        .to_string();
    assert!(dev.starts_with("vd"), "{dev:?}");
    let queues = sh(&mut vm, &format!("ls /sys/block/{dev}/mq | wc -l"));
    assert_eq!(queues.trim(), "2");
    let d = format!("/dev/{dev}");

    // A filesystem's life: mkfs, mount, write, fsync, read back, delete, trim.
    let out = sh(
        &mut vm,
        &format!(
            "mke2fs -q -F {d} && mkdir -p /mnt/w && mount -t ext2 {d} /mnt/w && \
             dd if=/dev/urandom of=/mnt/w/f bs=64k count=16 2>/dev/null && sync && \
             sha256sum /mnt/w/f > /tmp/sum && echo 3 > /proc/sys/vm/drop_caches && \
             sha256sum -c /tmp/sum && rm /mnt/w/f && sync && fstrim /mnt/w; \
             umount /mnt/w && blkdiscard -o 1048576 -l 1048576 {d} && echo done"
        ),
    );
    assert!(
        out.contains("/mnt/w/f: OK") && out.ends_with("done\n"),
        "{out}"
    );

    // Known patterns around an instant.
    pattern(&mut vm, &d, 'A', A_BLOCK);
    let instant = ctl.instant("backup-1").unwrap();
    assert_eq!(instant.generation, 1);
    pattern(&mut vm, &d, 'B', A_BLOCK);
    let back = sh(
        &mut vm,
        &format!(
            "dd if={d} bs=4096 skip={A_BLOCK} count=1 iflag=direct 2>/dev/null | tr -d B | wc -c"
        ),
    );
    assert_eq!(back.trim(), "0");

    // eio: the first direct read of block A+1 fails, the next one works.
    let eio = ctl
        .arm(FaultSpec::Eio {
            ops: OpFilter::Read,
            blocks: Some(BlockRange {
                start: A_BLOCK + 1,
                end: A_BLOCK + 2,
            }),
            times: Times::Once,
            after: 0,
        })
        .unwrap();
    let read = |blk: u64| format!("dd if={d} of=/dev/null bs=4096 skip={blk} count=1 iflag=direct");
    let failed = vm
        .guest
        .exec(&["/bin/sh", "-c", &read(A_BLOCK + 1)], T)
        .unwrap();
    assert!(!failed.success(), "the eio read succeeded");
    sh(&mut vm, &read(A_BLOCK + 1));

    // hang: a read of block A+2 is held until released.
    let hang = ctl
        .arm(FaultSpec::Hang {
            ops: OpFilter::Read,
            blocks: Some(BlockRange {
                start: A_BLOCK + 2,
                end: A_BLOCK + 3,
            }),
            times: Times::Once,
            after: 0,
        })
        .unwrap();
    let held = vm
        .guest
        .spawn(&["/bin/sh", "-c", &read(A_BLOCK + 2)])
        .unwrap();
    let deadline = Instant::now() + T;
    while ctl.stats().unwrap().faults[1].fired == 0 {
        assert!(Instant::now() < deadline, "the hang never fired");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(vm
        .guest
        .wait(held, Duration::from_secs(1))
        .unwrap()
        .is_none());
    assert_eq!(ctl.release(hang).unwrap(), 1);
    let done = vm
        .guest
        .wait(held, T)
        .unwrap()
        .expect("released read finishes");
    assert!(done.success(), "{}", done.describe());

    // latency: ten direct reads of distinct blocks, each delayed by the seeded schedule.
    let latency = ctl
        .arm(FaultSpec::Latency {
            seed: 7,
            max_us: 20_000,
            ops: OpFilter::Read,
            blocks: Some(BlockRange {
                start: A_BLOCK + 20,
                end: A_BLOCK + 30,
            }),
        })
        .unwrap();
    sh(
        &mut vm,
        &format!(
            "i=0; while [ $i -lt 10 ]; do dd if={d} of=/dev/null bs=4096 skip=$(({} + i)) \
             count=1 iflag=direct 2>/dev/null || exit 1; i=$((i + 1)); done",
            A_BLOCK + 20
        ),
    );
    ctl.release(latency).unwrap();

    // torn: a 4-block write lands one block and never completes; then the guest dies.
    let torn = ctl.arm(FaultSpec::Torn { land: 1 }).unwrap();
    let tear = vm
        .guest
        .spawn(&[
            "/bin/sh",
            "-c",
            &format!(
                "dd if=/dev/zero bs=16384 count=1 2>/dev/null | tr '\\000' 'T' > /tmp/t && \
                 dd if=/tmp/t of={d} bs=16384 seek={} count=1 oflag=direct conv=notrunc",
                (A_BLOCK + 40) / 4
            ),
        ])
        .unwrap();
    let deadline = Instant::now() + T;
    let stats = loop {
        let s = ctl.stats().unwrap();
        if s.faults[3].fired == 1 {
            break s;
        }
        assert!(Instant::now() < deadline, "the torn write never came");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(vm
        .guest
        .wait(tear, Duration::from_secs(1))
        .unwrap()
        .is_none());
    let fired: Vec<_> = stats.faults.iter().map(|f| (f.fault, f.fired)).collect();
    assert_eq!(fired, vec![(eio, 1), (hang, 1), (latency, 10), (torn, 1)]);
    // The harness resets the guest after a torn write: here, QEMU goes.
    vm.machine.kill();
    drop(vm);
    let ends = disks.finish(Duration::from_secs(20));
    assert!(
        ends[0].clean,
        "backend did not end by itself: {}",
        ends[0].log_tail
    );

    // The history: finished, with the fault firings, the patterns in order, the torn
    // write, flushes and discards.
    let h =
        History::open(&ends[0].history).unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    assert_eq!(h.fired_counts().into_iter().collect::<Vec<_>>(), fired);
    let reqs = h.requests_by_seq();
    let write_of = |hash: BlockHash| {
        reqs.iter()
            .find(|r| r.op == Op::Write && r.block_versions().any(|v| v == (A_BLOCK, hash)))
            .unwrap_or_else(|| panic!("no write of the pattern"))
    };
    let wa = write_of(block_hash(&fill(b'A')));
    let wb = write_of(block_hash(&fill(b'B')));
    let mark = h.instants()[0].2.clone();
    assert!(wa.seq < mark.next_seq && mark.next_seq <= wb.seq);
    assert!(wa.applied.unwrap() < mark.next_applied && wb.applied.unwrap() >= mark.next_applied);
    assert!(wa.complete_ns.unwrap() <= mark.t_ns);
    for op in [Op::Flush, Op::Discard, Op::GetId, Op::Read] {
        assert!(
            reqs.iter().any(|r| r.op == op && r.outcome == Outcome::Ok),
            "{op:?}"
        );
    }
    let torn_req = reqs.iter().find(|r| r.outcome == Outcome::Torn).unwrap();
    assert_eq!(
        torn_req.block_versions().collect::<Vec<_>>(),
        vec![(A_BLOCK + 40, block_hash(&fill(b'T')))]
    );
    assert!(h
        .markers()
        .any(|m| matches!(m.marker, Marker::FaultFired { fault, seq } if fault == torn && seq == torn_req.seq)));
    let eio_req = reqs.iter().find(|r| r.outcome == Outcome::IoError).unwrap();
    assert_eq!(
        (eio_req.op, eio_req.offset),
        (Op::Read, (A_BLOCK + 1) * 4096)
    );

    // The frozen generation is the disk at the instant, and the final state is the
    // disk at the end: both equal the history replayed over the (all-zero) image.
    let layers = Layers::open(&ends[0].state_dir).unwrap();
    let g1 = dir.path().join("g1.raw");
    layers.materialise(Generation::At(1), &g1).unwrap();
    let g1 = hashes_of(&g1);
    assert_eq!(g1[A_BLOCK as usize], block_hash(&fill(b'A')));
    assert_eq!(g1, replay(&h, mark.next_applied));
    let fin = dir.path().join("final.raw");
    layers.materialise(Generation::Final, &fin).unwrap();
    let fin = hashes_of(&fin);
    assert_eq!(fin[A_BLOCK as usize], block_hash(&fill(b'B')));
    assert_eq!(fin[(A_BLOCK + 41) as usize], block_hash(&[0u8; 4096]));
    assert_eq!(fin, replay(&h, u64::MAX));
    eprintln!(
        "{kernel}: {} requests, history {} bytes",
        reqs.len(),
        std::fs::metadata(&ends[0].history).unwrap().len()
    );
}

#[test]
fn vm_witness_disk_debian_6_1() {
    witness_disk_on("debian-6.1");
}

#[test]
fn vm_witness_disk_debian_6_12() {
    witness_disk_on("debian-6.12");
}

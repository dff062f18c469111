//! Stamps that name their write: on a raw device (a plain file standing in for one) and
//! on loop-mounted ext2 and ext4 with 1, 2 and 4 KiB blocks and xfs, every piece a stamped
//! run leaves is checked against the write log and against the raw image.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::support::{read_log, run, Fs, Mounted, TempDir};
use bw_guest::stamp::{decode_block, Piece, Stamp, BLOCK_SIZE};
use bw_guest::workload::{LogRecord, StopReason};

#[test]
fn raw_device_stamps_sit_at_their_offset() {
    let tmp = TempDir::new("raw");
    let dev = tmp.0.join("disk");
    fs::File::create(&dev).unwrap().set_len(8 << 20).unwrap();
    let d = dev.display();
    let (fill_log, over_log) = (tmp.0.join("fill.log"), tmp.0.join("over.log"));
    let fill = run(&format!(
        "fill --device {d} --stamped --writer 1 --seed 4 --log {}",
        fill_log.display()
    ));
    assert_eq!((fill.stopped_by, fill.bytes), (StopReason::Done, 8 << 20));
    let over = run(&format!(
        "overwrite --device {d} --stamped --writer 2 --seed 4 --ops 300 --log {}",
        over_log.display()
    ));
    assert_eq!(over.stopped_by, StopReason::Ops);

    // The last write to each LBA, in run order.
    let mut last: HashMap<u64, (u32, LogRecord)> = HashMap::new();
    for (writer, log) in [(1, &fill_log), (2, &over_log)] {
        for record in read_log(log) {
            assert_eq!(
                record.lba,
                Some(record.offset / 4096),
                "raw LBA is offset / 4096"
            );
            assert_eq!(record.file, None);
            last.insert(record.offset / 4096, (writer, record));
        }
    }
    assert_eq!(last.len(), 2048, "fill covers the whole device");
    let image = fs::read(&dev).unwrap();
    let mut overwritten = 0;
    for (lba, block) in image.chunks(BLOCK_SIZE).enumerate() {
        let stamp = Stamp::decode(block).unwrap_or_else(|e| panic!("block {lba}: {e}"));
        let (writer, record) = &last[&(lba as u64)];
        assert_eq!(
            (stamp.lba, stamp.writer, stamp.seq, stamp.time_ns),
            (lba as u64, *writer, record.seq, record.time_ns)
        );
        overwritten += usize::from(stamp.writer == 2);
    }
    assert!(overwritten > 100, "only {overwritten} blocks overwritten");

    // The same seed gives the same LBAs on a device.
    let again = tmp.0.join("again.log");
    run(&format!(
        "overwrite --device {d} --stamped --writer 2 --seed 4 --ops 300 --log {}",
        again.display()
    ));
    let lbas = |log: &Path| {
        read_log(log)
            .iter()
            .map(|r| (r.seq, r.lba))
            .collect::<Vec<_>>()
    };
    assert_eq!(lbas(&over_log), lbas(&again));

    let full = run(&format!("fill-to-full --device {d}"));
    assert_eq!((full.stopped_by, full.bytes), (StopReason::Full, 8 << 20));
}

#[test]
fn stamped_fill_to_full_on_ext4() {
    let Some(fs) = Mounted::new(Fs::Ext4(4096), 16) else {
        return;
    };
    let m = fs.mnt.display();
    // A cap below the free space ends the run first.
    let capped = run(&format!("fill-to-full --dir {m} --stamped --bytes 1MiB"));
    assert_eq!(
        (capped.stopped_by, capped.bytes),
        (StopReason::Bytes, 1 << 20)
    );
    let full = run(&format!(
        "fill-to-full --dir {m} --stamped --max-file-size 1MiB"
    ));
    assert_eq!(full.stopped_by, StopReason::Full);
    assert!(full.bytes > 8 << 20, "{}", full.bytes);
}

/// Runs every kind stamped on a freshly made filesystem, one writer id per run, then reads
/// every file back piece by piece (one piece per filesystem block): each is a valid stamp,
/// the log has that write with that piece's device offset, no later write went to that
/// offset, and the raw image holds exactly this piece there, where decoding the 4 KiB
/// device block names it.
fn stamps_land_where_they_say(fs_kind: Fs) {
    let Some(mut fs) = Mounted::new(fs_kind, 48) else {
        return;
    };
    let work = fs.mnt.join("work");
    fs::create_dir(&work).unwrap();
    let logs = TempDir::new("logs");
    let runs = [
        "fill --bytes 6MiB --max-file-size 1MiB",
        "overwrite --ops 150",
        "append --ops 30",
        "delete-rewrite --ops 8 --max-file-size 512KiB",
        "metadata-churn --ops 120",
        "overwrite --ops 100 --max-write 16KiB",
    ];
    let piece = fs_kind.block().min(BLOCK_SIZE as u32) as usize;
    let mut by_write: HashMap<(u32, u64), LogRecord> = HashMap::new();
    let mut last_at: HashMap<u64, (u32, u64)> = HashMap::new();
    for (i, kind) in runs.iter().enumerate() {
        let writer = i as u32 + 1;
        let log = logs.0.join(format!("{writer}.log"));
        let summary = run(&format!(
            "{kind} --dir {} --stamped --seed 21 --writer {writer} --log {}",
            work.display(),
            log.display()
        ));
        assert!(summary.writes > 0, "{fs_kind} {kind}");
        for record in read_log(&log) {
            assert_eq!(
                record.pieces.len(),
                BLOCK_SIZE / piece,
                "{fs_kind} {kind}: one piece per filesystem block"
            );
            if piece == BLOCK_SIZE {
                assert_eq!(record.lba, Some(record.pieces[0] / BLOCK_SIZE as u64));
            }
            for &place in &record.pieces {
                last_at.insert(place, (writer, record.seq));
            }
            by_write.insert((writer, record.seq), record);
        }
    }

    let mut pieces: Vec<(String, Piece, Vec<u8>)> = Vec::new();
    let mut todo = vec![work.clone()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let mut data = Vec::new();
            fs::File::open(&path)
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            assert_eq!(data.len() % BLOCK_SIZE, 0, "{}", path.display());
            for (n, bytes) in data.chunks(piece).enumerate() {
                let at = format!("{fs_kind}: {} piece {n}", path.display());
                let p = Piece::decode(bytes).unwrap_or_else(|e| panic!("{at}: {e}"));
                let s = p.stamp;
                let record = by_write
                    .get(&(s.writer, s.seq))
                    .unwrap_or_else(|| panic!("{at}: stamp {s:?} not in any log"));
                assert_eq!(record.time_ns, s.time_ns, "{at}");
                assert_eq!(
                    record.pieces[n % (BLOCK_SIZE / piece)],
                    p.device_offset(),
                    "{at}: the log put this piece elsewhere"
                );
                assert_eq!(
                    last_at[&p.device_offset()],
                    (s.writer, s.seq),
                    "{at}: a later write to device byte {} is not here",
                    p.device_offset()
                );
                pieces.push((at, p, bytes.to_vec()));
            }
        }
    }
    let blocks = pieces.len() * piece / BLOCK_SIZE;
    assert!(blocks > 1000, "{fs_kind}: only {blocks} blocks");

    fs.unmount();
    let image = fs::File::open(&fs.image).unwrap();
    let mut device_block = vec![0u8; BLOCK_SIZE];
    let mut shared = 0;
    for (at, p, bytes) in &pieces {
        image
            .read_exact_at(&mut device_block, p.stamp.lba * BLOCK_SIZE as u64)
            .unwrap();
        let start = p.at as usize;
        assert!(
            device_block[start..start + piece] == bytes[..],
            "{at}: the image at device byte {} holds something else",
            p.device_offset()
        );
        let named = decode_block(&device_block).unwrap();
        assert!(
            named.contains(p),
            "{at}: decoding its device block misses it"
        );
        let writes: std::collections::HashSet<_> = named
            .iter()
            .map(|q| (q.stamp.writer, q.stamp.seq))
            .collect();
        shared += usize::from(writes.len() > 1);
    }
    eprintln!(
        "{fs_kind}: {} pieces checked, {shared} in device blocks that name several writes",
        pieces.len()
    );
}

#[test]
fn stamps_land_where_they_say_on_ext4_4k() {
    stamps_land_where_they_say(Fs::Ext4(4096));
}

#[test]
fn stamps_land_where_they_say_on_ext4_2k() {
    stamps_land_where_they_say(Fs::Ext4(2048));
}

#[test]
fn stamps_land_where_they_say_on_ext4_1k() {
    stamps_land_where_they_say(Fs::Ext4(1024));
}

#[test]
fn stamps_land_where_they_say_on_ext2_4k_without_fallocate() {
    stamps_land_where_they_say(Fs::Ext2(4096));
}

#[test]
fn stamps_land_where_they_say_on_ext2_2k() {
    stamps_land_where_they_say(Fs::Ext2(2048));
}

#[test]
fn stamps_land_where_they_say_on_ext2_1k() {
    stamps_land_where_they_say(Fs::Ext2(1024));
}

#[test]
fn stamps_land_where_they_say_on_xfs() {
    stamps_land_where_they_say(Fs::Xfs(4096));
}

#[test]
fn stamps_land_where_they_say_on_xfs_1k() {
    stamps_land_where_they_say(Fs::Xfs(1024));
}

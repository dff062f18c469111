//! bw-target against the real sender, as a real process: full and incremental
//! generations, verification, the fault options, crashes and restarts, malformed input.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use reference_agent::sender::{BlockExtent, BlockSource, SendError, Sender, SessionSpec};
use reference_agent::transport::Conn;
use reference_agent::wire::{
    encode_block, BackupKind, ErrorCode, Frame, FrameBuffer, FrameView, Outcome, SessionHeader,
    SessionId,
};

const VOL: &str = "v0";
const BLOCKS: u64 = 2048; // 8 MiB

fn sid(n: u8) -> SessionId {
    SessionId([n; 16])
}

fn full_spec(src: &MemSource, session: SessionId, generation: u32) -> SessionSpec {
    SessionSpec::full(session, VOL, src.volume_size(), BS, generation)
}

fn incr_spec(
    src: &MemSource,
    session: SessionId,
    generation: u32,
    parent: u32,
    blocks: &[u64],
) -> SessionSpec {
    SessionSpec {
        session,
        volume_id: VOL.into(),
        volume_size: src.volume_size(),
        block_size: BS,
        generation,
        kind: BackupKind::Incremental { parent },
        extents: blocks
            .iter()
            .map(|&b| BlockExtent { start: b, count: 1 })
            .collect(),
    }
}

fn verify_ok(store: &std::path::Path) -> (i32, String) {
    run_target(&["verify", "--store", store.to_str().unwrap(), "--json"])
}

#[test]
fn full_then_incremental_store_exact_images() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let t = TargetProc::start(&store, &dir.path().join("t.sock"), &[]);
    let mut src = MemSource::new(BLOCKS, 1, Some(5));
    let mut sender = Sender::new(t.addr.clone(), quick_opts());
    let c = sender
        .send(&full_spec(&src, sid(1), 1), &mut src.clone())
        .unwrap();
    assert_eq!((c.generation, c.blocks), (1, BLOCKS));
    let ev = t.session_event();
    assert_eq!(ev["status"], "committed");
    assert_eq!(ev["verified"], true);
    assert_eq!(export(&store, VOL, 1), src.data);

    // Zero blocks stay holes in a full image.
    let img = store.join(VOL).join("gen-000001.img");
    let md = std::fs::metadata(&img).unwrap();
    assert!(md.blocks() * 512 < md.len() * 9 / 10, "image is not sparse");

    let gen1 = src.data.clone();
    let changed = [0u64, 7, 8, 9, 1000, BLOCKS - 1];
    for (i, b) in changed.iter().enumerate() {
        src.scribble(*b, 0x40 + i as u8);
    }
    // The same connection carries the next session.
    let c = sender
        .send(&incr_spec(&src, sid(2), 2, 1, &changed), &mut src.clone())
        .unwrap();
    assert_eq!(c.blocks, changed.len() as u64);
    let ev = t.session_event();
    assert_eq!(ev["status"], "committed");
    assert_eq!(ev["parent"], 1);
    assert_eq!(export(&store, VOL, 2), src.data);
    assert_eq!(export(&store, VOL, 1), gen1, "the parent must not change");

    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join(VOL).join("gen-000002.json")).unwrap())
            .unwrap();
    assert_eq!(
        m["sent"],
        serde_json::json!([[0, 1], [7, 3], [1000, 1], [BLOCKS - 1, 1]])
    );
    // Nothing changed: still a generation, equal to its parent.
    let c = sender
        .send(&incr_spec(&src, sid(4), 3, 2, &[]), &mut src.clone())
        .unwrap();
    assert_eq!((c.generation, c.blocks, c.frames), (3, 0, 0));
    assert_eq!(t.session_event()["status"], "committed");
    assert_eq!(export(&store, VOL, 3), src.data);
    let (code, out) = verify_ok(&store);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 3);

    // A session for a committed generation is refused and changes nothing.
    let e = sender
        .send(&full_spec(&src, sid(3), 2), &mut src.clone())
        .unwrap_err();
    assert!(e.to_string().contains("already committed"), "{e}");
    assert!(
        matches!(
            e,
            SendError::Refused {
                code: "refused",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(export(&store, VOL, 2), src.data);
}

#[test]
fn wrong_offset_is_caught_and_the_previous_generation_survives() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let sock = dir.path().join("t.sock");
    let mut src = MemSource::new(BLOCKS, 2, None);
    {
        let t = TargetProc::start(&store, &sock, &[]);
        Sender::new(t.addr.clone(), quick_opts())
            .send(&full_spec(&src, sid(1), 1), &mut src.clone())
            .unwrap();
    }
    let gen1 = src.data.clone();
    let t = TargetProc::start(&store, &sock, &["--fault-wrong-offset", "100"]);
    let changed: Vec<u64> = (0..300).map(|i| i * 5).collect();
    for b in &changed {
        src.scribble(*b, 0x77);
    }
    let e = Sender::new(t.addr.clone(), quick_opts())
        .send(&incr_spec(&src, sid(2), 2, 1, &changed), &mut src.clone())
        .unwrap_err();
    let SendError::TargetFailed {
        reason,
        bad_blocks,
        bad_total,
        ..
    } = &e
    else {
        panic!("expected a verification failure, got {e}");
    };
    assert_eq!(*reason, "verification");
    // Every 100th changed block went to the wrong place: blocks 495, 995, 1495.
    for b in [495u64, 995, 1495] {
        assert!(bad_blocks.contains(&b), "{b} not in {bad_blocks:?}");
    }
    assert!(*bad_total >= 3);
    let ev = t.session_event();
    assert_eq!(ev["status"], "failed");
    assert_eq!(ev["reason"], "verification");
    assert!(!store.join(VOL).join("gen-000002.json").exists());
    assert!(files_with_prefix(&store.join(VOL), ".tmp").is_empty());
    assert_eq!(export(&store, VOL, 1), gen1);
    assert_eq!(verify_ok(&store).0, 0);
}

/// The target re-reads 8 MiB chunks while the session goes on; a stray write into a
/// chunk already handed to the re-read (here the last block's, one block back) is still
/// found: blocks written again are checked again after the fsync.
#[test]
fn a_stray_write_behind_the_reread_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // 8 MiB and one block: the last block is the 2049th stored, the only one faulted.
    let blocks = 2049;
    let t = TargetProc::start(
        &store,
        &dir.path().join("t.sock"),
        &["--fault-wrong-offset", "2049"],
    );
    let src = MemSource::new(blocks, 11, None);
    let e = Sender::new(t.addr.clone(), quick_opts())
        .send(&full_spec(&src, sid(1), 1), &mut src.clone())
        .unwrap_err();
    let SendError::TargetFailed {
        reason,
        bad_blocks,
        bad_total,
        ..
    } = &e
    else {
        panic!("expected a verification failure, got {e}");
    };
    assert_eq!(*reason, "verification");
    // 2048 was never written where it belongs; 2047 was overwritten by it.
    assert_eq!(bad_blocks, &vec![2047, 2048]);
    assert_eq!(*bad_total, 2);
}

#[test]
fn skip_verify_commits_wrong_data_and_verify_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let t = TargetProc::start(
        &store,
        &dir.path().join("t.sock"),
        &["--fault-wrong-offset", "300", "--fault-skip-verify"],
    );
    let src = MemSource::new(BLOCKS, 3, None);
    // The buggy target claims success: this is the false success the harness must catch.
    let c = Sender::new(t.addr.clone(), quick_opts())
        .send(&full_spec(&src, sid(1), 1), &mut src.clone())
        .unwrap();
    assert_eq!(c.generation, 1);
    let ev = t.session_event();
    assert_eq!(ev["status"], "committed");
    assert_eq!(ev["verified"], false);
    assert_ne!(export(&store, VOL, 1), src.data);
    let (code, out) = verify_ok(&store);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(v["bad_total"].as_u64().unwrap() >= 6, "{v}");
    assert_eq!(v["bad_blocks"][0], 299);
}

#[test]
fn crash_before_commit_keeps_the_previous_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let sock = dir.path().join("t.sock");
    let mut src = MemSource::new(BLOCKS, 4, None);
    {
        let t = TargetProc::start(&store, &sock, &[]);
        Sender::new(t.addr.clone(), quick_opts())
            .send(&full_spec(&src, sid(1), 1), &mut src.clone())
            .unwrap();
    }
    let gen1 = src.data.clone();
    src.scribble(3, 1);
    let mut t = TargetProc::start(&store, &sock, &["--fault-crash-before-commit"]);
    let mut opts = quick_opts();
    opts.max_reconnects = 2;
    let e = Sender::new(t.addr.clone(), opts)
        .send(&incr_spec(&src, sid(2), 2, 1, &[3]), &mut src.clone())
        .unwrap_err();
    // Honest: the target vanished before its result, so no success is claimed.
    assert!(matches!(e, SendError::ConnectionLost { .. }), "{e}");
    let st = t.wait_exit(Duration::from_secs(5));
    assert!(!st.success());
    assert!(!store.join(VOL).join("gen-000002.json").exists());
    assert!(!files_with_prefix(&store.join(VOL), ".tmp-gen-000002").is_empty());
    // A restart cleans the leftovers; generation 1 is intact.
    let t = TargetProc::start(&store, &sock, &[]);
    assert!(t.startup.iter().any(|e| e["event"] == "cleaned"));
    assert!(files_with_prefix(&store.join(VOL), ".tmp").is_empty());
    assert_eq!(export(&store, VOL, 1), gen1);
    assert_eq!(verify_ok(&store).0, 0);
}

/// A source that stops before reading block `pause_at` until told to go on.
struct PausingSource {
    inner: MemSource,
    pause_at: u64,
    reached: Option<mpsc::Sender<()>>,
    go: mpsc::Receiver<()>,
}

impl BlockSource for PausingSource {
    fn read_blocks(&mut self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if first >= self.pause_at {
            if let Some(tx) = self.reached.take() {
                let _ = tx.send(());
                let _ = self.go.recv_timeout(Duration::from_secs(20));
            }
        }
        self.inner.read_blocks(first, buf)
    }
}

fn pausing(
    inner: MemSource,
    pause_at: u64,
) -> (PausingSource, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    (
        PausingSource {
            inner,
            pause_at,
            reached: Some(reached_tx),
            go: go_rx,
        },
        reached_rx,
        go_tx,
    )
}

#[test]
fn sigkill_mid_backup_leaves_the_previous_generation_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let sock = dir.path().join("t.sock");
    let mut src = MemSource::new(BLOCKS, 5, None);
    let mut t = TargetProc::start(&store, &sock, &[]);
    Sender::new(t.addr.clone(), quick_opts())
        .send(&full_spec(&src, sid(1), 1), &mut src.clone())
        .unwrap();
    let gen1 = src.data.clone();
    for b in 0..BLOCKS {
        src.scribble(b, b as u8);
    }
    let (mut ps, reached, go) = pausing(src.clone(), BLOCKS / 2);
    let addr = t.addr.clone();
    let spec = full_spec(&src, sid(2), 2);
    let mut opts = quick_opts();
    opts.max_reconnects = 2;
    let h = std::thread::spawn(move || Sender::new(addr, opts).send(&spec, &mut ps));
    reached.recv_timeout(Duration::from_secs(20)).unwrap();
    // Half of generation 2 is written to a temporary image; kill the process there.
    let tmp = files_with_prefix(&store.join(VOL), ".tmp-gen-000002");
    assert!(!tmp.is_empty(), "no temporary image while receiving");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(t.pid(), libc::SIGKILL) }, 0);
    t.kill();
    go.send(()).unwrap();
    let e = h.join().unwrap().unwrap_err();
    assert!(matches!(e, SendError::ConnectionLost { .. }), "{e}");
    assert!(!store.join(VOL).join("gen-000002.json").exists());
    let t = TargetProc::start(&store, &sock, &[]);
    let cleaned: Vec<_> = t
        .startup
        .iter()
        .filter(|e| e["event"] == "cleaned")
        .collect();
    assert!(
        !cleaned.is_empty(),
        "the restart must clean the partial generation"
    );
    assert!(files_with_prefix(&store.join(VOL), ".tmp").is_empty());
    assert_eq!(export(&store, VOL, 1), gen1);
    let (code, out) = verify_ok(&store);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn target_restart_mid_session_starts_the_session_over_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let sock = dir.path().join("t.sock");
    let src = MemSource::new(BLOCKS, 6, None);
    let mut t = TargetProc::start(&store, &sock, &[]);
    let (mut ps, reached, go) = pausing(src.clone(), BLOCKS / 2);
    let addr = t.addr.clone();
    let spec = full_spec(&src, sid(1), 1);
    let h = std::thread::spawn(move || {
        let mut s = Sender::new(addr, quick_opts());
        let r = s.send(&spec, &mut ps);
        (r, s.stats().clone())
    });
    reached.recv_timeout(Duration::from_secs(20)).unwrap();
    t.kill();
    let t2 = TargetProc::start(&store, &sock, &[]);
    go.send(()).unwrap();
    let (r, stats) = h.join().unwrap();
    let c = r.unwrap();
    assert_eq!(c.blocks, BLOCKS);
    assert_eq!(stats.restarts, 1);
    assert!(stats.reconnects >= 1);
    assert_eq!(t2.session_event()["status"], "committed");
    assert_eq!(export(&store, VOL, 1), src.data);
}

fn send_frames(conn: &mut Conn, frames: &[Vec<u8>]) {
    for f in frames {
        conn.write_all(f, Instant::now() + Duration::from_secs(5))
            .unwrap();
    }
}

/// Reads frames until one that is not an ack arrives (or the stream ends).
fn reply(conn: &mut Conn) -> Option<Frame> {
    let mut fb = FrameBuffer::new();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(v) = fb.next_frame().unwrap() {
            match v {
                FrameView::Other(Frame::Ack(_)) => {}
                FrameView::Other(f) => return Some(f),
                FrameView::Block(_) => panic!("target sent a block"),
            }
        }
        let space = fb.space();
        let n = conn.read_some(space, until).unwrap();
        if n == 0 {
            return None;
        }
        fb.commit(n);
    }
}

fn header(session: SessionId, volume_size: u64) -> SessionHeader {
    SessionHeader {
        session,
        volume_id: "raw".into(),
        volume_size,
        block_size: BS,
        generation: 1,
        kind: BackupKind::Full,
        resume: false,
    }
}

#[test]
fn malformed_input_gets_clear_errors_while_other_sessions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let t = TargetProc::start(&store, &dir.path().join("t.sock"), &[]);
    // A good session runs alongside, paused in the middle while the bad ones arrive.
    let src = MemSource::new(BLOCKS, 7, None);
    let (mut ps, reached, go) = pausing(src.clone(), BLOCKS / 2);
    let addr = t.addr.clone();
    let spec = full_spec(&src, sid(9), 1);
    let good = std::thread::spawn(move || Sender::new(addr, quick_opts()).send(&spec, &mut ps));
    reached.recv_timeout(Duration::from_secs(20)).unwrap();

    let connect = || Conn::connect(&t.addr, Duration::from_secs(2)).unwrap();
    let expect_error = |conn: &mut Conn, want: ErrorCode, needle: &str| match reply(conn) {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code, want, "{e:?}");
            assert!(
                e.message.contains(needle),
                "{:?} lacks {needle:?}",
                e.message
            );
        }
        other => panic!("expected an error frame, got {other:?}"),
    };

    // Unknown version: an intact header from a newer peer.
    let mut f = Frame::Header(header(sid(1), 1 << 20)).to_bytes().unwrap();
    f[4] = 9;
    let crc = reference_agent::wire::crc32(&f[..16]);
    f[16..20].copy_from_slice(&crc.to_le_bytes());
    let mut c = connect();
    send_frames(&mut c, &[f]);
    expect_error(
        &mut c,
        ErrorCode::Malformed,
        "unsupported protocol version 9",
    );

    // Not the protocol at all: more than a frame's worth of bytes without a frame.
    // The target may stop reading and close as soon as it has decided, so the tail of
    // the write can meet a closed socket; its error frame is still there to read.
    let mut c = connect();
    let _ = c.write_all(
        &vec![0x5a; 1100 * 1024],
        Instant::now() + Duration::from_secs(5),
    );
    expect_error(&mut c, ErrorCode::Malformed, "no valid frame");

    // Oversize frame: a header that claims 64 MiB of payload.
    let mut f = vec![0u8; 20];
    f[..4].copy_from_slice(b"BWWP");
    f[4] = reference_agent::wire::VERSION;
    f[5] = 3;
    f[8..12].copy_from_slice(&(64u32 << 20).to_le_bytes());
    let crc = reference_agent::wire::crc32(&f[..16]);
    f[16..20].copy_from_slice(&crc.to_le_bytes());
    let mut c = connect();
    send_frames(&mut c, &[f]);
    expect_error(&mut c, ErrorCode::Malformed, "exceeds the limit");

    // A block outside the volume fails that session.
    let mut c = connect();
    let h = header(sid(2), 1 << 20);
    send_frames(&mut c, &[Frame::Header(h).to_bytes().unwrap()]);
    assert!(matches!(reply(&mut c), Some(Frame::Accept(_))));
    let data = vec![1u8; BS as usize];
    let hash = reference_agent::wire::block_digest(&data);
    let mut b = Vec::new();
    encode_block(&mut b, 0, 1 << 20, &[hash], &data).unwrap();
    send_frames(&mut c, &[b]);
    expect_error(&mut c, ErrorCode::Malformed, "outside the volume");

    // A hash mismatch is NACKed, not fatal.
    let mut c = connect();
    send_frames(
        &mut c,
        &[Frame::Header(header(sid(3), 1 << 20)).to_bytes().unwrap()],
    );
    assert!(matches!(reply(&mut c), Some(Frame::Accept(_))));
    let mut b = Vec::new();
    encode_block(&mut b, 0, 0, &[[0u8; 16]], &data).unwrap();
    send_frames(&mut c, &[b]);
    match reply(&mut c) {
        Some(Frame::Nack(n)) => assert_eq!(n.seq, 0),
        other => panic!("expected a NACK, got {other:?}"),
    }
    // A truncated stream: the connection ends inside a frame; the target notes it.
    let mut b = Vec::new();
    encode_block(&mut b, 0, 0, &[hash], &data).unwrap();
    send_frames(&mut c, &[b[..100].to_vec()]);
    drop(c);
    t.wait_message("connection", "ended inside a frame", Duration::from_secs(5));

    go.send(()).unwrap();
    let c = good.join().unwrap().unwrap();
    assert_eq!(c.blocks, BLOCKS);
    assert_eq!(export(&store, VOL, 1), src.data);
}

#[test]
fn a_lost_result_is_answered_again_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let t = TargetProc::start(&store, &dir.path().join("t.sock"), &[]);
    let src = MemSource::new(64, 8, None);
    let spec = full_spec(&src, sid(1), 1);
    Sender::new(t.addr.clone(), quick_opts())
        .send(&spec, &mut src.clone())
        .unwrap();
    let mut c = Conn::connect(&t.addr, Duration::from_secs(2)).unwrap();
    let mut h = SessionHeader {
        session: sid(1),
        volume_id: VOL.into(),
        volume_size: src.volume_size(),
        block_size: BS,
        generation: 1,
        kind: BackupKind::Full,
        resume: true,
    };
    send_frames(&mut c, &[Frame::Header(h.clone()).to_bytes().unwrap()]);
    match reply(&mut c) {
        Some(Frame::Result(r)) => assert_eq!(
            r.outcome,
            Outcome::Committed {
                generation: 1,
                block_count: 64
            }
        ),
        other => panic!("expected the result again, got {other:?}"),
    }
    // An unknown session asked to resume is answered as such.
    h.session = sid(2);
    h.generation = 2;
    send_frames(&mut c, &[Frame::Header(h).to_bytes().unwrap()]);
    match reply(&mut c) {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::UnknownSession),
        other => panic!("expected unknown-session, got {other:?}"),
    }
}

/// Opens a pty in raw mode; returns (master fd, slave path). The slave stays open in
/// this process so the raw settings hold.
fn raw_pty() -> (i32, i32, String) {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: out-pointers to locals; null termios and winsize are allowed.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: `slave` is an open tty; termios is filled by tcgetattr first.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave, &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave, libc::TCSANOW, &t), 0);
        let fl = libc::fcntl(master, libc::F_GETFL);
        libc::fcntl(master, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    // SAFETY: openpty wrote a NUL-terminated path.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    (master, slave, path)
}

#[test]
fn a_session_over_a_character_device_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let t = TargetProc::start(&store, &dir.path().join("t.sock"), &[]);
    let (master, slave, path) = raw_pty();
    // The host side: relay the pty master to the target, as QEMU and the proxy would.
    let mut tconn = Conn::connect(&t.addr, Duration::from_secs(2)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let relay = std::thread::spawn(move || {
        let mut to_t: Vec<u8> = Vec::new();
        let mut to_m: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: reading into a local buffer from our own descriptor.
            let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                to_t.extend_from_slice(&buf[..n as usize]);
            }
            if let Ok(Some(n)) = tconn.try_read(&mut buf) {
                to_m.extend_from_slice(&buf[..n]);
            }
            if let Ok(n) = tconn.try_write(&to_t) {
                to_t.drain(..n);
            }
            if !to_m.is_empty() {
                // SAFETY: writing a local buffer to our own descriptor.
                let n = unsafe { libc::write(master, to_m.as_ptr().cast(), to_m.len()) };
                if n > 0 {
                    to_m.drain(..n as usize);
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let src = MemSource::new(256, 9, Some(3));
    let addr: reference_agent::transport::Address = format!("dev:{path}").parse().unwrap();
    let c = Sender::new(addr, quick_opts())
        .send(&full_spec(&src, sid(1), 1), &mut src.clone())
        .unwrap();
    assert_eq!(c.blocks, 256);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    relay.join().unwrap();
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(slave);
        libc::close(master);
    }
    assert_eq!(t.session_event()["status"], "committed");
    assert_eq!(export(&store, VOL, 1), src.data);
}

//! The `bw-disk` process: its control socket without QEMU, its deadline for QEMU, a
//! vhost-user peer that dies or talks nonsense, and a kill: every ending leaves a
//! history that says how it ended, or reads as cut short.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use witness_disk::history::{EndReason, History, HistoryError, Marker};
use witness_disk::{Backend, BackendConfig, ControlError, FaultSpec};

const BIN: &str = env!("CARGO_BIN_EXE_bw-disk");
const T: Duration = Duration::from_secs(20);

fn config(dir: &Path, connect: Duration) -> BackendConfig {
    let image = dir.join("d0.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mut c = BackendConfig::in_dir(dir, "d0", &image, "bw-d0");
    c.connect_timeout = connect;
    c
}

fn wait_exit(b: &mut Backend) -> std::process::ExitStatus {
    let deadline = Instant::now() + T;
    loop {
        if let Some(s) = b.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "bw-disk did not exit: {}",
            b.log_tail(10)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn control_without_qemu_then_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Backend::spawn(Path::new(BIN), config(tmp.path(), T), T).unwrap();
    let mut c = b.control(T).unwrap();
    assert!(!c.ping().unwrap().connected);
    let err = c
        .arm(
            serde_json::from_str::<FaultSpec>(r#"{"kind":"eio","blocks":{"start":9,"end":3}}"#)
                .unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, ControlError::Refused { op: "arm", message } if message.contains("9..3")),
        "{err}"
    );
    let i = c.instant("early").unwrap();
    assert_eq!((i.generation, i.seq), (1, 0));
    assert!(matches!(
        c.release(42).unwrap_err(),
        ControlError::Refused { .. }
    ));
    assert_eq!(c.stats().unwrap().instants, 1);

    // Nonsense on a second connection gets an error line, and the first still works.
    let mut raw = UnixStream::connect(&b.config().control_socket).unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    raw.write_all(b"{\"op\":\"stats\"}\nnot json\n").unwrap();
    let mut lines = BufReader::new(raw.try_clone().unwrap()).lines();
    for _ in 0..2 {
        let l = lines.next().unwrap().unwrap();
        assert!(l.starts_with(r#"{"id":null,"err":"bad request: "#), "{l}");
    }
    assert!(c.ping().is_ok());

    let reply = c.shutdown().unwrap();
    assert!(wait_exit(&mut b).success());
    let h = History::open(&reply.history).unwrap();
    assert_eq!(h.end.as_ref().unwrap().reason, EndReason::Shutdown);
    assert_eq!(h.instants().len(), 1);
    assert!(h.markers().any(
        |m| matches!(&m.marker, Marker::Note { text } if text.contains("before QEMU connected"))
    ));
}

#[test]
fn qemu_that_never_connects_ends_the_backend_with_a_finished_history() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Backend::spawn(
        Path::new(BIN),
        config(tmp.path(), Duration::from_millis(300)),
        T,
    )
    .unwrap();
    let status = wait_exit(&mut b);
    assert_eq!(status.code(), Some(2));
    assert!(
        b.log_tail(5).contains("did not connect"),
        "{}",
        b.log_tail(5)
    );
    let h = History::open(&b.config().history).unwrap();
    assert_eq!(h.end.unwrap().reason, EndReason::NeverConnected);
}

#[test]
fn a_peer_that_hangs_up_or_talks_nonsense_is_a_disconnect() {
    for junk in [
        &b""[..],
        &b"\x01\x00\x00\x00garbage that is no vhost-user message"[..],
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = Backend::spawn(Path::new(BIN), config(tmp.path(), T), T).unwrap();
        let mut peer = UnixStream::connect(&b.config().vhost_socket).unwrap();
        peer.write_all(junk).unwrap();
        drop(peer);
        assert!(wait_exit(&mut b).success(), "{}", b.log_tail(10));
        let h = History::open(&b.config().history).unwrap();
        assert_eq!(h.end.unwrap().reason, EndReason::Disconnected);
    }
}

#[test]
fn a_killed_backend_leaves_a_history_that_reads_as_cut_short() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Backend::spawn(Path::new(BIN), config(tmp.path(), T), T).unwrap();
    b.control(T).unwrap().instant("one").unwrap();
    b.kill();
    let err = History::open(&b.config().history).unwrap_err();
    assert!(matches!(err, HistoryError::Truncated { .. }), "{err}");
    let partial = History::open_partial(&b.config().history).unwrap();
    assert!(!partial.is_complete());
    assert_eq!(partial.instants().len(), 1);
    // The layers still give the frozen generation, not the final state.
    let layers = witness_disk::Layers::open(&b.config().state_dir).unwrap();
    assert!(layers.view(witness_disk::Generation::At(1)).is_ok());
    assert!(layers.view(witness_disk::Generation::Final).is_err());
}

#[test]
fn bad_options_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path(), T);
    c.serial = "a serial far longer than twenty bytes".into();
    let err = Backend::spawn(Path::new(BIN), c, T).err().unwrap();
    assert!(err.to_string().contains("--serial"), "{err}");
    let mut c = config(tmp.path(), T);
    std::fs::write(&c.image, b"odd").unwrap();
    c.state_dir = tmp.path().join("other");
    let err = Backend::spawn(Path::new(BIN), c, T).err().unwrap();
    assert!(err.to_string().contains("4 KiB blocks"), "{err}");
}

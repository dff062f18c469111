//! The harness's channel (`bw.channel`): where a pipeline without a target of its own
//! streams its backup. The host end decodes the stream (raw image or extents, see
//! `bw_guest::pipe::wire`), hashes every 4 KiB block as it passes (the transport
//! recording point) and writes it into the store's partial file for the generation.
//! One session at a time: the pipeline opens it before the product streams and closes
//! it after the product ends.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bw_guest::pipe::wire::{ChannelDecoder, ChannelEvent};

use crate::gate::Gate;
use crate::model::{BlockHash, BLOCK};

/// The most the reading thread takes in one read, in blocks.
const READ_BLOCKS: u64 = 256;

/// How a stream arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Nothing arrived.
    Nothing,
    Raw,
    Extents,
}

/// What one session received.
#[derive(Clone, Debug)]
pub struct SessionEnd {
    pub format: Format,
    /// The stream is whole: a raw image of the volume's size, or an extents stream that
    /// reached its end marker; and nothing was malformed.
    pub complete: bool,
    pub bytes: u64,
    /// The last hash of each block that crossed.
    pub blocks: BTreeMap<u64, BlockHash>,
    /// Blocks that crossed more than once, and how many extra times.
    pub retransmits: BTreeMap<u64, u32>,
    /// Why it is not complete, or what was odd about it.
    pub problems: Vec<String>,
}

struct Session {
    size: u64,
    file: File,
    path: PathBuf,
    decoder: ChannelDecoder,
    format: Format,
    bytes: u64,
    /// A block being assembled from pieces, and where it starts.
    pending: Vec<u8>,
    pending_at: u64,
    blocks: BTreeMap<u64, BlockHash>,
    retransmits: BTreeMap<u64, u32>,
    problems: Vec<String>,
    ended: bool,
}

impl Session {
    fn take(&mut self, event: ChannelEvent) {
        match event {
            ChannelEvent::ExtentsStart => self.format = Format::Extents,
            ChannelEvent::Extent { offset, length } => {
                if offset + length > self.size {
                    self.problems.push(format!(
                        "an extent at {offset}+{length} ends past the volume's {} bytes",
                        self.size
                    ));
                }
                self.pending.clear();
                self.pending_at = offset;
            }
            ChannelEvent::End => self.ended = true,
            ChannelEvent::Data { offset, bytes } => {
                if self.format == Format::Nothing {
                    self.format = Format::Raw;
                }
                self.bytes += bytes.len() as u64;
                let end = offset + bytes.len() as u64;
                if end > self.size {
                    if !self.problems.iter().any(|p| p.contains("past the volume")) {
                        self.problems.push(format!(
                            "the stream ran past the volume's {} bytes",
                            self.size
                        ));
                    }
                    return;
                }
                if let Err(e) = self.file.write_all_at(&bytes, offset) {
                    self.problems
                        .push(format!("writing {}: {e}", self.path.display()));
                }
                if offset != self.pending_at + self.pending.len() as u64 {
                    self.pending.clear();
                    self.pending_at = offset;
                }
                self.pending.extend_from_slice(&bytes);
                let whole = self.pending.len() / BLOCK * BLOCK;
                for (i, block) in self.pending[..whole].chunks(BLOCK).enumerate() {
                    let b = self.pending_at / BLOCK as u64 + i as u64;
                    if self.blocks.insert(b, BlockHash::of(block)).is_some() {
                        *self.retransmits.entry(b).or_default() += 1;
                    }
                }
                self.pending.drain(..whole);
                self.pending_at += whole as u64;
            }
        }
    }

    /// Where the stream has got to in the volume, in blocks: the end of what arrived.
    fn position(&self) -> u64 {
        match self.format {
            Format::Nothing => 0,
            Format::Raw => self.bytes / BLOCK as u64,
            Format::Extents => (self.pending_at + self.pending.len() as u64).div_ceil(BLOCK as u64),
        }
    }

    fn complete(&self) -> bool {
        self.problems.is_empty()
            && match self.format {
                Format::Nothing => false,
                Format::Raw => self.bytes == self.size && self.pending.is_empty(),
                Format::Extents => self.ended && self.decoder.pending() == 0,
            }
    }
}

#[derive(Default)]
struct State {
    session: Option<Session>,
    /// The backup's pacing gate and the session's volume: the reading thread holds
    /// (reads nothing, so the guest's writer blocks) until the gate lets the stream on.
    gate: Option<(Arc<Gate>, String)>,
    /// Bytes that arrived with no session open.
    stray: u64,
    closed: bool,
}

/// Waits until the session's gate lets `n` more bytes cross (no gate or no session:
/// at once). Never holds the state's lock while waiting.
fn hold(st: &Mutex<State>, n: u64) {
    loop {
        let ask = {
            let s = st.lock().unwrap_or_else(|p| p.into_inner());
            match (&s.gate, &s.session) {
                (Some((gate, volume)), Some(sess)) => Some((
                    gate.clone(),
                    volume.clone(),
                    sess.position() + n.div_ceil(BLOCK as u64),
                )),
                _ => None,
            }
        };
        match ask {
            Some((gate, volume, end)) => {
                if gate.wait_pass(&volume, end, Duration::from_millis(50)) {
                    return;
                }
            }
            None => return,
        }
    }
}

/// The host end of `bw.channel`.
pub struct Channel {
    state: Arc<Mutex<State>>,
}

impl Channel {
    /// Starts reading the port.
    pub fn start(mut stream: UnixStream) -> Channel {
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        std::thread::Builder::new()
            .name("bw-channel".into())
            .spawn(move || {
                let mut buf = vec![0u8; READ_BLOCKS as usize * BLOCK];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            // Held at the gate (reading nothing more, so the guest's
                            // writer blocks) until these bytes may cross.
                            hold(&st, n as u64);
                            let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                            let state = &mut *s;
                            match state.session.as_mut() {
                                None => state.stray += n as u64,
                                Some(sess) => {
                                    sess.decoder.push(&buf[..n]);
                                    loop {
                                        match sess.decoder.next_event() {
                                            Ok(Some(e)) => sess.take(e),
                                            Ok(None) => break,
                                            Err(e) => {
                                                sess.problems.push(e.to_string());
                                                break;
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                st.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            })
            .expect("spawning a thread");
        Channel { state }
    }

    /// Opens a session that writes into `partial` (the store made it: sparse, or a copy
    /// of the previous generation), for a volume of `size` bytes; with `gate`, the stream
    /// of `volume` is held at the backup's pacing gate.
    pub fn begin(
        &self,
        partial: &Path,
        size: u64,
        gate: Option<(Arc<Gate>, String)>,
    ) -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).open(partial)?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.gate = gate;
        s.session = Some(Session {
            size,
            file,
            path: partial.to_path_buf(),
            decoder: ChannelDecoder::default(),
            format: Format::Nothing,
            bytes: 0,
            pending: Vec::new(),
            pending_at: 0,
            blocks: BTreeMap::new(),
            retransmits: BTreeMap::new(),
            problems: Vec::new(),
            ended: false,
        });
        Ok(())
    }

    /// Blocks that crossed so far in this session.
    pub fn blocks_crossed(&self) -> u64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.session.as_ref().map_or(0, |x| x.blocks.len() as u64)
    }

    /// Whether the session has nothing more to wait for: no session, a whole stream, a
    /// broken one, or a closed port.
    pub fn settled(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.closed
            || s.session
                .as_ref()
                .is_none_or(|x| x.complete() || !x.problems.is_empty())
    }

    /// Closes the session once it is complete, or when `grace` has passed (bytes still
    /// in flight in the virtio queue when the product's command exits).
    pub fn finish(&self, grace: Duration) -> SessionEnd {
        let started = Instant::now();
        loop {
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let done = s.session.as_ref().is_none_or(Session::complete) || s.closed;
                if done || started.elapsed() >= grace {
                    s.gate = None;
                    let stray = std::mem::take(&mut s.stray);
                    let Some(sess) = s.session.take() else {
                        return SessionEnd {
                            format: Format::Nothing,
                            complete: false,
                            bytes: 0,
                            blocks: BTreeMap::new(),
                            retransmits: BTreeMap::new(),
                            problems: vec!["no session was open".into()],
                        };
                    };
                    let complete = sess.complete();
                    let mut problems = sess.problems.clone();
                    if stray > 0 {
                        problems.push(format!("{stray} bytes arrived outside a session"));
                    }
                    if !complete {
                        problems.push(match sess.format {
                            Format::Nothing => "nothing arrived on the channel".to_string(),
                            Format::Raw => format!(
                                "{} of the volume's {} bytes arrived",
                                sess.bytes, sess.size
                            ),
                            Format::Extents => {
                                "the extents stream never reached its END line".to_string()
                            }
                        });
                    }
                    if let Err(e) = sess.file.sync_all() {
                        problems.push(format!("syncing {}: {e}", sess.path.display()));
                    }
                    return SessionEnd {
                        format: sess.format,
                        complete: complete && problems.is_empty(),
                        bytes: sess.bytes,
                        blocks: sess.blocks,
                        retransmits: sess.retransmits,
                        problems,
                    };
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pair() -> (UnixStream, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        (a, Channel::start(b))
    }

    #[test]
    fn a_raw_stream_is_stored_and_hashed_per_block() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("p");
        File::create(&partial).unwrap().set_len(3 * 4096).unwrap();
        let (mut guest, ch) = pair();
        ch.begin(&partial, 3 * 4096, None).unwrap();
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            guest.write_all(piece).unwrap();
        }
        let end = ch.finish(Duration::from_secs(5));
        assert!(end.complete, "{:?}", end.problems);
        assert_eq!(end.format, Format::Raw);
        assert_eq!(end.blocks.len(), 3);
        assert_eq!(end.blocks[&1], BlockHash::of(&data[4096..8192]));
        assert_eq!(std::fs::read(&partial).unwrap(), data);
    }

    #[test]
    fn a_stream_is_held_at_the_gate_until_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("p");
        let blocks = 2 * READ_BLOCKS;
        File::create(&partial)
            .unwrap()
            .set_len(blocks * 4096)
            .unwrap();
        let (mut guest, ch) = pair();
        let gate = Arc::new(Gate::new(&[("data".to_string(), blocks)]));
        ch.begin(&partial, blocks * 4096, Some((gate.clone(), "data".into())))
            .unwrap();
        let writer = std::thread::spawn(move || {
            guest
                .write_all(&vec![7u8; (blocks * 4096) as usize])
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(300));
        // Closed at 0: nothing may be read, so nothing has crossed, and the session is
        // not settled: the copy loop keeps granting the workload's steps.
        assert_eq!(ch.blocks_crossed(), 0);
        assert!(gate.requested() > 0, "the stream asked the gate");
        assert!(!ch.settled());
        gate.release();
        writer.join().unwrap();
        let settled = Instant::now();
        while !ch.settled() {
            assert!(settled.elapsed() < Duration::from_secs(5), "never settled");
            std::thread::sleep(Duration::from_millis(10));
        }
        let end = ch.finish(Duration::from_secs(5));
        assert!(end.complete, "{:?}", end.problems);
        assert_eq!(end.blocks.len() as u64, blocks);
    }

    #[test]
    fn a_short_raw_stream_is_not_complete() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("p");
        File::create(&partial).unwrap().set_len(2 * 4096).unwrap();
        let (mut guest, ch) = pair();
        ch.begin(&partial, 2 * 4096, None).unwrap();
        guest.write_all(&[1u8; 4096]).unwrap();
        let end = ch.finish(Duration::from_millis(300));
        assert!(!end.complete);
        assert!(
            end.problems
                .iter()
                .any(|p| p.contains("4096 of the volume's 8192")),
            "{:?}",
            end.problems
        );
    }

    #[test]
    fn an_extents_stream_writes_only_its_extents() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("p");
        std::fs::write(&partial, vec![9u8; 4 * 4096]).unwrap();
        let (mut guest, ch) = pair();
        ch.begin(&partial, 4 * 4096, None).unwrap();
        guest
            .write_all(b"BWX1 extents\nEXTENT 8192 4096\n")
            .unwrap();
        guest.write_all(&[5u8; 4096]).unwrap();
        guest.write_all(b"END\n").unwrap();
        let end = ch.finish(Duration::from_secs(5));
        assert!(end.complete, "{:?}", end.problems);
        assert_eq!(end.blocks.keys().copied().collect::<Vec<_>>(), [2]);
        let stored = std::fs::read(&partial).unwrap();
        assert_eq!(stored[8192], 5);
        assert_eq!(stored[0], 9);
    }
}

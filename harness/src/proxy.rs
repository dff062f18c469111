//! The transport proxy: sits between QEMU's `bw.transport` chardev socket (QEMU listens,
//! the proxy connects) and bw-target's listening socket. Forwards both directions
//! byte-exactly, parses the agent → target direction with the wire protocol, records
//! every block frame as it leaves the proxy (the transport recording point), and injects
//! the transport faults the caller asks for, deterministically from a seed.
//!
//! One thread, non-blocking sockets and `poll(2)` with a short interval: nothing blocks
//! forever, and [`ProxyHandle::shutdown`] stops it within one interval.
//!
//! With a pacing [`Gate`] set, the proxy is where the reference pipeline's progress is
//! held: a block frame that would take the backup past the gate's opening waits in the
//! proxy, and the proxy stops reading from QEMU, so the agent's writes (and its reads of
//! the snapshot) stall until the run opens the gate further. A disconnect
//! (injected, or either side closing) closes both sides; the proxy then reconnects to
//! QEMU after a pause, so the guest sees the host side go away and come back, and
//! connects to the target again when the agent next sends.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reference_agent::transport::TransportError;
use reference_agent::transport::{Address, Conn};
use reference_agent::wire::{
    block_digest, encode_block, BlockDigest, BlockView, End, Frame, FrameBuffer, FrameView, Item,
    ManifestDigest, SessionHeader, SessionId,
};

use crate::error_chain;
use crate::gate::Gate;
use crate::model::{BlockHash, FrameSel, BLOCK};

/// Why the proxy closed both sides of the link.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("poll")]
    Poll(#[source] std::io::Error),
    #[error("QEMU side closed")]
    QemuClosed,
    #[error("QEMU side")]
    Qemu(#[source] TransportError),
    #[error("target closed the connection")]
    TargetClosed,
    #[error("target side")]
    Target(#[source] TransportError),
}

/// A transport fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFault {
    /// Flip one bit (chosen from the seed) in the data of the selected block frames.
    BitFlip(FrameSel),
    /// Do not forward block frame number `frame`.
    DropFrame { frame: u64 },
    /// Close both sides after forwarding block frame number `after_frame`.
    Disconnect { after_frame: u64 },
    /// Flip one bit in the data of the selected frames and re-encode each frame with
    /// hashes and checksums that match the corrupted data: corruption the protocol cannot
    /// see (a buggy middlebox that recomputes checksums), which only a recording outside
    /// the pipeline catches.
    Rewrite(FrameSel),
}

/// What the proxy did to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    BitFlip {
        byte: u64,
        bit: u8,
    },
    /// A bit flip whose frame was re-encoded to look intact.
    Rewritten {
        byte: u64,
        bit: u8,
    },
    Dropped,
    DisconnectAfter,
}

/// One block frame as it left the proxy (the transport recording point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportRecord {
    pub session: SessionId,
    pub volume: String,
    pub generation: u32,
    /// 1-based count of block frames of this session seen by the proxy.
    pub frame_number: u64,
    pub seq: u64,
    pub offset: u64,
    pub length: u32,
    /// The harness's hash ([`BlockHash::of`]) of each 4 KiB of the data as forwarded
    /// (after any injected fault); the block of byte offset `offset + 4096 * i` is
    /// `block_hashes[i]`.
    pub block_hashes: Vec<BlockHash>,
    /// Whether the data still matched the frame's own hashes when it left the proxy.
    pub hashes_match: bool,
    /// A frame with this sequence number crossed the proxy before in this session.
    pub retransmit: bool,
    /// False when the proxy dropped it (it never reached the target).
    pub delivered: bool,
    pub fault: Option<InjectedFault>,
}

/// Everything the proxy reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyEvent {
    UpstreamConnected,
    TargetConnected,
    /// Both sides were closed; `reason` says why (a fault, EOF on one side, an error).
    Disconnected {
        reason: String,
    },
    /// A session header crossed towards the target.
    Session {
        header: SessionHeader,
    },
    Block(TransportRecord),
    /// The target's reply to a session, as it crossed towards the agent.
    TargetReply {
        frame: Frame,
    },
    /// Bytes that did not parse as frames, forwarded as they were.
    Unparsed {
        toward_target: bool,
        bytes: usize,
    },
    /// Could not connect to the target.
    TargetUnreachable {
        reason: String,
    },
}

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// QEMU's chardev socket for `bw.transport` (the proxy connects to it).
    pub upstream: PathBuf,
    /// bw-target's listening address.
    pub target: Address,
    /// Seed for the choices faults make (which bit to flip).
    pub seed: u64,
    pub faults: Vec<TransportFault>,
    pub connect_timeout: Duration,
    /// Pause between closing the QEMU side and reconnecting to it.
    pub reconnect_delay: Duration,
    /// Longest wait in one poll (bounds how late shutdown is noticed).
    pub poll_interval: Duration,
}

impl ProxyConfig {
    pub fn new(upstream: PathBuf, target: Address) -> ProxyConfig {
        ProxyConfig {
            upstream,
            target,
            seed: 0,
            faults: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            reconnect_delay: Duration::from_millis(300),
            poll_interval: Duration::from_millis(50),
        }
    }
}

/// Counters, returned at shutdown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub block_frames: u64,
    pub bytes_to_target: u64,
    pub bytes_to_agent: u64,
    pub faults_injected: u64,
    pub disconnects: u64,
}

/// The running proxy.
pub struct ProxyHandle {
    events: Receiver<ProxyEvent>,
    shutdown: Arc<AtomicBool>,
    faults: Arc<Mutex<Vec<TransportFault>>>,
    gate: SharedGate,
    disconnect: Arc<AtomicBool>,
    thread: Option<JoinHandle<ProxyStats>>,
}

/// The pacing gate of the backup under way, if any.
type SharedGate = Arc<Mutex<Option<Arc<Gate>>>>;

impl ProxyHandle {
    /// Starts the proxy thread.
    pub fn start(cfg: ProxyConfig) -> ProxyHandle {
        let (tx, rx) = mpsc::channel();
        let shutdown = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(Mutex::new(cfg.faults.clone()));
        let disconnect = Arc::new(AtomicBool::new(false));
        let gate: SharedGate = Arc::default();
        let mut p = Proxy {
            cfg,
            tx,
            shutdown: shutdown.clone(),
            faults: faults.clone(),
            gate: gate.clone(),
            held: None,
            disconnect: disconnect.clone(),
            up: None,
            target: None,
            up_in: FrameBuffer::new(),
            down_in: FrameBuffer::new(),
            to_target: Vec::new(),
            to_up: Vec::new(),
            current: None,
            sessions: HashMap::new(),
            pending_disconnect: None,
            stats: ProxyStats::default(),
            reconnect_at: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("bw-proxy".into())
            .spawn(move || {
                p.run();
                p.stats
            })
            .ok();
        ProxyHandle {
            events: rx,
            shutdown,
            faults,
            gate,
            disconnect,
            thread,
        }
    }

    /// Events so far and to come (records included).
    pub fn events(&self) -> &Receiver<ProxyEvent> {
        &self.events
    }

    /// Replaces the faults (e.g. before the next backup). Frame counts are per session.
    pub fn set_faults(&self, faults: Vec<TransportFault>) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Holds block frames at the gate's opening (None: forwards freely). Positions are
    /// the frames' ends in the session's volume, in 4 KiB blocks.
    pub fn set_gate(&self, gate: Option<Arc<Gate>>) {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = gate;
    }

    /// Closes both sides now (a disconnect at a moment the caller chooses).
    pub fn disconnect_now(&self) {
        self.disconnect.store(true, Ordering::Relaxed);
    }

    /// Stops the proxy and returns its counters.
    pub fn shutdown(mut self) -> ProxyStats {
        self.stop()
    }

    fn stop(&mut self) -> ProxyStats {
        self.shutdown.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Per-session bookkeeping for frame numbers and retransmits.
/// A frame as the proxy forwarded it: offset, block length, block hashes.
type ForwardedFrame = (u64, u32, Vec<BlockDigest>);

struct SessionState {
    header: SessionHeader,
    frames: u64,
    max_seq: Option<u64>,
    rng: ChaCha8Rng,
    /// With a rewrite fault: the hashes of every frame as forwarded, by sequence number
    /// (offset, block length, hashes), to fix up the end frame's manifest digest.
    forwarded: Option<BTreeMap<u64, ForwardedFrame>>,
    rewrites: u64,
}

/// Buffered bytes above which the proxy stops reading the side that feeds them.
const BACKLOG: usize = 8 << 20;
/// How often a frame held by the gate is looked at again.
const HELD_POLL: Duration = Duration::from_millis(5);

struct Proxy {
    cfg: ProxyConfig,
    tx: Sender<ProxyEvent>,
    shutdown: Arc<AtomicBool>,
    faults: Arc<Mutex<Vec<TransportFault>>>,
    gate: SharedGate,
    /// A block frame the gate holds, with its raw bytes: nothing more is read from QEMU
    /// until it may go on.
    held: Option<(OwnedBlock, Vec<u8>)>,
    disconnect: Arc<AtomicBool>,
    up: Option<Conn>,
    target: Option<Conn>,
    up_in: FrameBuffer,
    down_in: FrameBuffer,
    to_target: Vec<u8>,
    to_up: Vec<u8>,
    current: Option<SessionId>,
    sessions: HashMap<SessionId, SessionState>,
    /// Set by a disconnect fault: close both sides once this much is forwarded.
    pending_disconnect: Option<String>,
    stats: ProxyStats,
    reconnect_at: Instant,
}

impl Proxy {
    fn emit(&self, e: ProxyEvent) {
        // Nobody listening any more is not the proxy's problem.
        let _ = self.tx.send(e);
    }

    fn run(&mut self) {
        while !self.shutdown.load(Ordering::Relaxed) {
            if self.up.is_none() {
                if Instant::now() >= self.reconnect_at {
                    self.connect_upstream();
                }
                if self.up.is_none() {
                    std::thread::sleep(self.cfg.poll_interval);
                    continue;
                }
            }
            if self.disconnect.swap(false, Ordering::Relaxed) {
                self.close_both("disconnect requested by the harness".into());
                continue;
            }
            if self.target.is_none() && (self.up_in.buffered() > 0 || !self.to_target.is_empty()) {
                match Conn::connect(&self.cfg.target, self.cfg.connect_timeout) {
                    Ok(c) => {
                        self.target = Some(c);
                        self.down_in.clear();
                        self.down_in.set_syncing(true);
                        self.emit(ProxyEvent::TargetConnected);
                    }
                    Err(e) => {
                        let reason = error_chain(&e);
                        self.emit(ProxyEvent::TargetUnreachable {
                            reason: reason.clone(),
                        });
                        // The agent must see the link fail, as it would without a proxy.
                        self.close_both(format!("target unreachable: {reason}"));
                        continue;
                    }
                }
            }
            if let Err(e) = self.step() {
                self.close_both(error_chain(&e));
            }
        }
        if self.up.is_some() || self.target.is_some() {
            self.close_both("proxy shut down".into());
        }
    }

    fn connect_upstream(&mut self) {
        match UnixStream::connect(&self.cfg.upstream) {
            Ok(s) => match Conn::from_unix(s, format!("unix:{}", self.cfg.upstream.display())) {
                Ok(c) => {
                    self.up = Some(c);
                    self.up_in.clear();
                    // A guest writer may have left half a frame in QEMU's buffers.
                    self.up_in.set_syncing(true);
                    self.emit(ProxyEvent::UpstreamConnected);
                }
                Err(_) => self.reconnect_at = Instant::now() + self.cfg.poll_interval,
            },
            // QEMU not there (yet, or any more): try again shortly.
            Err(_) => self.reconnect_at = Instant::now() + self.cfg.poll_interval,
        }
    }

    fn close_both(&mut self, reason: String) {
        // Best effort: what the target should still get (the frame before an injected
        // disconnect) gets a short chance to leave.
        if let Some(t) = self.target.as_mut() {
            if !self.to_target.is_empty() {
                let _ = t.write_all(&self.to_target, Instant::now() + Duration::from_millis(500));
            }
        }
        for c in [self.up.take(), self.target.take()].into_iter().flatten() {
            c.shutdown();
        }
        self.to_target.clear();
        self.to_up.clear();
        self.held = None;
        self.up_in.clear();
        self.down_in.clear();
        self.current = None;
        self.pending_disconnect = None;
        self.stats.disconnects += 1;
        self.reconnect_at = Instant::now() + self.cfg.reconnect_delay;
        self.emit(ProxyEvent::Disconnected { reason });
    }

    /// One poll round: read what is ready, parse, write what is pending.
    fn step(&mut self) -> Result<(), LinkError> {
        let Some(up) = self.up.as_ref() else {
            return Ok(());
        };
        let reading = self.to_target.len() < BACKLOG && self.held.is_none();
        let mut fds = vec![libc::pollfd {
            fd: up.as_raw_fd(),
            events: poll_events(reading, !self.to_up.is_empty()),
            revents: 0,
        }];
        if let Some(t) = self.target.as_ref() {
            fds.push(libc::pollfd {
                fd: t.as_raw_fd(),
                events: poll_events(self.to_up.len() < BACKLOG, !self.to_target.is_empty()),
                revents: 0,
            });
        }
        // A held frame is looked at again soon: the gate opens without telling us.
        let interval = match self.held {
            Some(_) => self.cfg.poll_interval.min(HELD_POLL),
            None => self.cfg.poll_interval,
        };
        let ms = interval.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(LinkError::Poll(e));
        }
        let up_ready = fds[0].revents;
        let target_ready = fds.get(1).map_or(0, |f| f.revents);
        if up_ready & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read_upstream()?;
        }
        if target_ready & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read_target()?;
        }
        if self.held.is_some() {
            self.parse_upstream();
        }
        self.write_pending()?;
        if let Some(reason) = &self.pending_disconnect {
            if self.to_target.is_empty() {
                let reason = reason.clone();
                self.close_both(reason);
            }
        }
        Ok(())
    }

    fn read_upstream(&mut self) -> Result<(), LinkError> {
        let Some(up) = self.up.as_mut() else {
            return Ok(());
        };
        match up.try_read(self.up_in.space()) {
            Ok(None) => return Ok(()),
            Ok(Some(0)) => return Err(LinkError::QemuClosed),
            Ok(Some(n)) => self.up_in.commit(n),
            Err(e) => return Err(LinkError::Qemu(e)),
        }
        self.parse_upstream();
        Ok(())
    }

    /// Whether the pacing gate lets this block frame of the current session go on.
    fn gate_allows(&self, b: &OwnedBlock) -> bool {
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(gate) = gate else {
            return true;
        };
        let Some(st) = self.current.and_then(|sid| self.sessions.get(&sid)) else {
            return true;
        };
        let end = (b.offset + b.data_len as u64).div_ceil(BLOCK as u64);
        gate.may_pass(&st.header.volume_id, end)
    }

    fn parse_upstream(&mut self) {
        if let Some((b, raw)) = self.held.take() {
            if !self.gate_allows(&b) {
                self.held = Some((b, raw));
                return;
            }
            self.on_block(b, raw);
        }
        // After an injected disconnect, nothing more is forwarded on this connection.
        while self.pending_disconnect.is_none() {
            let item = match self.up_in.next_item() {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(_) => {
                    // Unparseable: forward one byte as it is and look for the next frame.
                    let b = self.up_in.discard(1).to_vec();
                    self.to_target.extend_from_slice(&b);
                    self.up_in.set_syncing(true);
                    let _ = self.tx.send(ProxyEvent::Unparsed {
                        toward_target: true,
                        bytes: 1,
                    });
                    continue;
                }
            };
            match item {
                Item::Skipped(bytes) => {
                    self.to_target.extend_from_slice(bytes);
                    let _ = self.tx.send(ProxyEvent::Unparsed {
                        toward_target: true,
                        bytes: bytes.len(),
                    });
                }
                Item::Frame { view, raw } => {
                    let raw = raw.to_vec();
                    match view {
                        FrameView::Block(b) => {
                            let b = OwnedBlock::from(&b);
                            if !self.gate_allows(&b) {
                                self.held = Some((b, raw));
                                break;
                            }
                            self.on_block(b, raw);
                        }
                        FrameView::Other(f) => {
                            if let Frame::Header(h) = &f {
                                self.on_header(h.clone());
                            }
                            let raw = match &f {
                                Frame::End(e) => self.fix_end(e, raw),
                                _ => raw,
                            };
                            self.to_target.extend_from_slice(&raw);
                        }
                    }
                }
            }
        }
    }

    /// After a rewrite, the end frame's manifest digest is recomputed over the blocks as
    /// forwarded, so the target cannot tell.
    fn fix_end(&mut self, e: &End, raw: Vec<u8>) -> Vec<u8> {
        let Some(st) = self.sessions.get(&e.session) else {
            return raw;
        };
        let (Some(forwarded), true) = (&st.forwarded, st.rewrites > 0) else {
            return raw;
        };
        let mut digest = ManifestDigest::new();
        for (offset, bl, hashes) in forwarded.values() {
            for (i, h) in hashes.iter().enumerate() {
                digest.add_block(offset + u64::from(*bl) * i as u64, *bl, h);
            }
        }
        let fixed = Frame::End(End {
            manifest_digest: digest.finish(),
            ..*e
        });
        let mut out = Vec::new();
        match fixed.encode(&mut out) {
            Ok(()) => out,
            Err(_) => raw,
        }
    }

    fn on_header(&mut self, h: SessionHeader) {
        self.current = Some(h.session);
        let seed = self.cfg.seed;
        let rewriting = self
            .faults
            .lock()
            .map(|f| f.iter().any(|x| matches!(x, TransportFault::Rewrite(_))))
            .unwrap_or(false);
        self.sessions
            .entry(h.session)
            .or_insert_with(|| SessionState {
                header: h.clone(),
                frames: 0,
                max_seq: None,
                rng: ChaCha8Rng::seed_from_u64(seed ^ u64::from_le_bytes(sid_prefix(h.session))),
                forwarded: rewriting.then(BTreeMap::new),
                rewrites: 0,
            });
        self.emit(ProxyEvent::Session { header: h });
    }

    fn on_block(&mut self, mut b: OwnedBlock, mut raw: Vec<u8>) {
        let faults = self
            .faults
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let Some(sid) = self.current else {
            // A block before any header: forward it; the target will refuse it.
            self.to_target.extend_from_slice(&raw);
            return;
        };
        let Some(st) = self.sessions.get_mut(&sid) else {
            self.to_target.extend_from_slice(&raw);
            return;
        };
        st.frames += 1;
        let n = st.frames;
        let retransmit = st.max_seq.is_some_and(|m| b.seq <= m);
        st.max_seq = Some(st.max_seq.map_or(b.seq, |m| m.max(b.seq)));
        let data_at = raw.len() - b.data_len;
        let mut fault = None;
        let mut delivered = true;
        for f in &faults {
            match *f {
                TransportFault::BitFlip(sel) if sel.hits(n) && b.data_len > 0 => {
                    let byte = st.rng.gen_range(0..b.data_len);
                    let bit = st.rng.gen_range(0..8u8);
                    raw[data_at + byte] ^= 1 << bit;
                    fault = Some(InjectedFault::BitFlip {
                        byte: byte as u64,
                        bit,
                    });
                }
                TransportFault::DropFrame { frame } if frame == n => {
                    delivered = false;
                    fault = Some(InjectedFault::Dropped);
                }
                TransportFault::Disconnect { after_frame } if after_frame == n => {
                    self.pending_disconnect = Some(format!(
                        "disconnect fault after block frame {n} of session {sid}"
                    ));
                    fault = fault.or(Some(InjectedFault::DisconnectAfter));
                }
                TransportFault::Rewrite(sel) if sel.hits(n) && b.data_len > 0 => {
                    let byte = st.rng.gen_range(0..b.data_len);
                    let bit = st.rng.gen_range(0..8u8);
                    let mut data = raw[data_at..].to_vec();
                    data[byte] ^= 1 << bit;
                    let bl = b.data_len / b.hashes.len().max(1);
                    // Forged with the pipeline's own hash, so its checks pass.
                    let hashes: Vec<BlockDigest> =
                        data.chunks(bl.max(1)).map(block_digest).collect();
                    let mut out = Vec::with_capacity(raw.len());
                    if encode_block(&mut out, b.seq, b.offset, &hashes, &data).is_ok() {
                        raw = out;
                        b.hashes = hashes;
                        st.rewrites += 1;
                        fault = Some(InjectedFault::Rewritten {
                            byte: byte as u64,
                            bit,
                        });
                    }
                }
                TransportFault::BitFlip(_)
                | TransportFault::Rewrite(_)
                | TransportFault::DropFrame { .. }
                | TransportFault::Disconnect { .. } => {}
            }
        }
        let data_at = raw.len() - b.data_len;
        let data = &raw[data_at..];
        if let Some(fwd) = st.forwarded.as_mut() {
            if delivered && !b.hashes.is_empty() {
                let bl = b.data_len / b.hashes.len();
                let hashes = data.chunks(bl).map(block_digest).collect();
                fwd.insert(b.seq, (b.offset, bl as u32, hashes));
            }
        }
        let block_hashes: Vec<BlockHash> = data.chunks(BLOCK).map(BlockHash::of).collect();
        let bl = if b.hashes.is_empty() {
            0
        } else {
            b.data_len / b.hashes.len()
        };
        let hashes_match = bl > 0
            && data
                .chunks(bl)
                .zip(&b.hashes)
                .all(|(c, h)| block_digest(c) == *h);
        if fault.is_some() {
            self.stats.faults_injected += 1;
        }
        self.stats.block_frames += 1;
        if delivered {
            self.to_target.extend_from_slice(&raw);
        }
        let rec = TransportRecord {
            session: sid,
            volume: st.header.volume_id.clone(),
            generation: st.header.generation,
            frame_number: n,
            seq: b.seq,
            offset: b.offset,
            length: b.data_len as u32,
            block_hashes,
            hashes_match,
            retransmit,
            delivered,
            fault,
        };
        self.emit(ProxyEvent::Block(rec));
    }

    fn read_target(&mut self) -> Result<(), LinkError> {
        let Some(t) = self.target.as_mut() else {
            return Ok(());
        };
        let mut buf = [0u8; 64 * 1024];
        let n = match t.try_read(&mut buf) {
            Ok(None) => return Ok(()),
            Ok(Some(0)) => {
                // Let the agent have the target's last words before closing.
                if let Some(up) = self.up.as_mut() {
                    let _ = up.write_all(&self.to_up, Instant::now() + Duration::from_millis(500));
                }
                self.to_up.clear();
                return Err(LinkError::TargetClosed);
            }
            Ok(Some(n)) => n,
            Err(e) => return Err(LinkError::Target(e)),
        };
        self.to_up.extend_from_slice(&buf[..n]);
        self.down_in.push(&buf[..n]);
        loop {
            match self.down_in.next_item() {
                Ok(Some(Item::Frame {
                    view: FrameView::Other(f),
                    ..
                })) => {
                    if !matches!(f, Frame::Ack(_)) {
                        let _ = self.tx.send(ProxyEvent::TargetReply { frame: f });
                    }
                }
                Ok(Some(Item::Frame { .. })) => {}
                Ok(Some(Item::Skipped(b))) => {
                    let _ = self.tx.send(ProxyEvent::Unparsed {
                        toward_target: false,
                        bytes: b.len(),
                    });
                }
                Ok(None) => break,
                Err(_) => {
                    let _ = self.down_in.discard(1);
                    self.down_in.set_syncing(true);
                }
            }
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), LinkError> {
        if let Some(t) = self.target.as_mut() {
            while !self.to_target.is_empty() {
                match t.try_write(&self.to_target) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.stats.bytes_to_target += n as u64;
                        self.to_target.drain(..n);
                    }
                    Err(e) => return Err(LinkError::Target(e)),
                }
            }
        }
        if let Some(up) = self.up.as_mut() {
            while !self.to_up.is_empty() {
                match up.try_write(&self.to_up) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.stats.bytes_to_agent += n as u64;
                        self.to_up.drain(..n);
                    }
                    Err(e) => return Err(LinkError::Qemu(e)),
                }
            }
        }
        Ok(())
    }
}

/// The parts of a block frame the proxy needs after the receive buffer moves on.
struct OwnedBlock {
    seq: u64,
    offset: u64,
    data_len: usize,
    hashes: Vec<BlockDigest>,
}

impl From<&BlockView<'_>> for OwnedBlock {
    fn from(b: &BlockView<'_>) -> Self {
        OwnedBlock {
            seq: b.seq,
            offset: b.offset,
            data_len: b.data.len(),
            hashes: (0..b.hash_count()).map(|i| b.hash(i)).collect(),
        }
    }
}

fn sid_prefix(s: SessionId) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&s.0[..8]);
    a
}

fn poll_events(read: bool, write: bool) -> i16 {
    let mut e = 0;
    if read {
        e |= libc::POLLIN;
    }
    if write {
        e |= libc::POLLOUT;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use reference_agent::sender::{
        BlockSource, Connector, SendError, Sender, SenderOptions, SessionSpec,
    };
    use reference_agent::target::{EventSink, ServeOptions, Server, TargetEvent};
    use reference_agent::transport::{Listener, TransportError};

    const BS: u32 = 4096;
    const BLOCKS: u64 = 512;

    /// Stands in for QEMU: the proxy connects to this listener; the sender (the guest
    /// agent) gets the accepted end of each of the proxy's connections.
    struct FakeQemu(Listener);

    impl Connector for FakeQemu {
        fn connect(&mut self, timeout: Duration) -> Result<Conn, TransportError> {
            match self.0.accept_timeout(timeout)? {
                Some(c) => Ok(c),
                None => Err(TransportError::Timeout {
                    op: "accept the proxy",
                    peer: self.0.address().to_string(),
                    waited: timeout,
                }),
            }
        }
    }

    #[derive(Clone)]
    struct Mem(Vec<u8>);

    impl BlockSource for Mem {
        fn read_blocks(&mut self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let s = first as usize * BS as usize;
            buf.copy_from_slice(&self.0[s..s + buf.len()]);
            Ok(())
        }
    }

    fn image(seed: u64) -> Mem {
        let mut x = seed | 1;
        Mem((0..BLOCKS as usize * BS as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 16) as u8
            })
            .collect())
    }

    struct Rig {
        _dir: tempfile::TempDir,
        store: PathBuf,
        target: Option<reference_agent::target::ServerHandle>,
        target_events: Receiver<TargetEvent>,
        proxy: ProxyHandle,
        qemu: Option<FakeQemu>,
    }

    fn rig(faults: Vec<TransportFault>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let (tx, target_events) = mpsc::channel();
        let tx = Mutex::new(tx);
        let sink: EventSink = Arc::new(move |e: &TargetEvent| {
            let _ = tx.lock().unwrap().send(e.clone());
        });
        let taddr = Address::Unix(dir.path().join("target.sock"));
        let target = Server::bind(&taddr, ServeOptions::new(store.clone()), sink)
            .unwrap()
            .spawn();
        let qsock = dir.path().join("qemu-transport.sock");
        let qemu = FakeQemu(Listener::bind(&Address::Unix(qsock.clone())).unwrap());
        let mut cfg = ProxyConfig::new(qsock, taddr);
        cfg.seed = 42;
        cfg.faults = faults;
        cfg.reconnect_delay = Duration::from_millis(100);
        let proxy = ProxyHandle::start(cfg);
        Rig {
            _dir: dir,
            store,
            target: Some(target),
            target_events,
            proxy,
            qemu: Some(qemu),
        }
    }

    fn opts() -> SenderOptions {
        SenderOptions {
            frame_bytes: BS as usize,
            window_bytes: 256 * 1024,
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(5),
            commit_timeout: Duration::from_secs(20),
            max_reconnects: 5,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            deadline: Duration::from_secs(60),
            max_sends_per_frame: 8,
        }
    }

    impl Rig {
        fn send(
            &mut self,
            src: &Mem,
        ) -> (
            Result<reference_agent::sender::Committed, SendError>,
            reference_agent::sender::SendStats,
        ) {
            let spec = SessionSpec::full(SessionId([7; 16]), "v0", src.0.len() as u64, BS, 1);
            let mut sender = Sender::new(self.qemu.take().unwrap(), opts());
            let r = sender.send(&spec, &mut src.clone());
            let stats = sender.stats().clone();
            (r, stats)
        }

        fn stored(&self) -> Vec<u8> {
            let store = reference_agent::target::Store::open(&self.store).unwrap();
            let mut out = Vec::new();
            reference_agent::target::export::export_to_writer(&store, "v0", 1, &mut out).unwrap();
            out
        }

        /// Stops everything and returns the proxy's events.
        fn finish(mut self) -> Vec<ProxyEvent> {
            let events: Vec<_> = self.proxy.events().try_iter().collect();
            if let Some(t) = self.target.take() {
                t.shutdown();
            }
            events
        }
    }

    fn blocks(events: &[ProxyEvent]) -> Vec<&TransportRecord> {
        events
            .iter()
            .filter_map(|e| match e {
                ProxyEvent::Block(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The last delivered record of every block carries the source's hash.
    fn assert_transport_column_exact(recs: &[&TransportRecord], src: &Mem) {
        let mut last: HashMap<u64, BlockHash> = HashMap::new();
        for r in recs.iter().filter(|r| r.delivered) {
            for (i, h) in r.block_hashes.iter().enumerate() {
                last.insert(r.offset / 4096 + i as u64, *h);
            }
        }
        assert_eq!(last.len() as u64, BLOCKS, "blocks that never crossed");
        for b in 0..BLOCKS {
            let s = b as usize * 4096;
            let want = BlockHash::of(&src.0[s..s + 4096]);
            assert_eq!(last[&b], want, "block {b}");
        }
    }

    #[test]
    fn a_gate_holds_frames_at_its_opening_until_the_run_opens_it() {
        let mut rig = rig(vec![]);
        let gate = Arc::new(Gate::new(&[("v0".to_string(), BLOCKS)]));
        gate.open(100);
        rig.proxy.set_gate(Some(gate.clone()));
        let src = image(5);
        let qemu = rig.qemu.take().unwrap();
        let sending = {
            let src = src.clone();
            std::thread::spawn(move || {
                let spec = SessionSpec::full(SessionId([7; 16]), "v0", BLOCKS * 4096, BS, 1);
                Sender::new(qemu, opts()).send(&spec, &mut src.clone())
            })
        };
        let mut events = Vec::new();
        let delivered = |events: &[ProxyEvent]| {
            blocks(events)
                .iter()
                .filter(|r| r.delivered)
                .map(|r| r.offset / 4096 + r.block_hashes.len() as u64)
                .max()
                .unwrap_or(0)
        };
        for step in [100, 228, 356, 484] {
            // The backup asks for more than is open, and gets no further.
            let t = Instant::now();
            while gate.requested() <= step {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "no request past {step}"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(100));
            events.extend(rig.proxy.events().try_iter());
            assert_eq!(delivered(&events), step, "frames passed the gate at {step}");
            gate.open(step + 128);
        }
        gate.release();
        sending.join().unwrap().unwrap();
        events.extend(rig.finish());
        assert_transport_column_exact(&blocks(&events), &src);
    }

    #[test]
    fn clean_run_forwards_exactly_and_records_every_block_once() {
        let mut rig = rig(vec![]);
        let src = image(1);
        let (r, stats) = rig.send(&src);
        r.unwrap();
        assert_eq!(stats.frames_resent, 0);
        assert_eq!(rig.stored(), src.0);
        let events = rig.finish();
        let recs = blocks(&events);
        assert_eq!(recs.len() as u64, BLOCKS);
        assert!(recs
            .iter()
            .all(|r| r.hashes_match && !r.retransmit && r.delivered));
        assert!(recs
            .iter()
            .enumerate()
            .all(|(i, r)| r.frame_number == i as u64 + 1));
        assert!(events.iter().any(|e| matches!(
            e,
            ProxyEvent::TargetReply {
                frame: Frame::Result(_)
            }
        )));
        assert_transport_column_exact(&recs, &src);
    }

    #[test]
    fn a_rewritten_frame_passes_the_target_with_wrong_data() {
        let mut rig = rig(vec![TransportFault::Rewrite(FrameSel::Nth(3))]);
        let src = image(2);
        let (r, stats) = rig.send(&src);
        r.unwrap();
        assert_eq!(stats.nacks, 0, "the protocol cannot see a rewritten frame");
        let stored = rig.stored();
        assert_ne!(stored, src.0, "the target stored the corrupted block");
        let events = rig.finish();
        let recs = blocks(&events);
        let hit: Vec<_> = recs.iter().filter(|r| r.fault.is_some()).collect();
        assert_eq!(hit.len(), 1);
        let f = hit[0];
        assert!(matches!(f.fault, Some(InjectedFault::Rewritten { .. })));
        assert!(f.hashes_match, "the frame's own hashes were fixed up");
        let Some(InjectedFault::Rewritten { byte, .. }) = f.fault else {
            unreachable!()
        };
        let at = (f.offset + byte) as usize;
        assert_ne!(stored[at], src.0[at]);
        assert_eq!(
            stored.iter().zip(&src.0).filter(|(a, b)| a != b).count(),
            1,
            "exactly one byte differs"
        );
    }

    #[test]
    fn a_bit_flip_is_nacked_and_resent() {
        let mut rig = rig(vec![TransportFault::BitFlip(FrameSel::Nth(7))]);
        let src = image(2);
        let (r, stats) = rig.send(&src);
        r.unwrap();
        assert!(stats.nacks >= 1 && stats.frames_resent >= 1, "{stats:?}");
        assert_eq!(rig.stored(), src.0);
        let events = rig.finish();
        let recs = blocks(&events);
        let flipped: Vec<_> = recs.iter().filter(|r| r.fault.is_some()).collect();
        assert_eq!(flipped.len(), 1);
        let f = flipped[0];
        assert!(matches!(f.fault, Some(InjectedFault::BitFlip { .. })));
        assert_eq!(f.frame_number, 7);
        assert!(!f.hashes_match);
        let want = BlockHash::of(&src.0[f.offset as usize..f.offset as usize + 4096]);
        assert_ne!(f.block_hashes[0], want, "the record holds the damaged data");
        let resent = recs
            .iter()
            .find(|r| r.seq == f.seq && r.retransmit)
            .expect("the flipped frame was resent");
        assert!(resent.hashes_match);
        assert_transport_column_exact(&recs, &src);
    }

    #[test]
    fn a_dropped_frame_is_asked_for_again() {
        let mut rig = rig(vec![TransportFault::DropFrame { frame: 30 }]);
        let src = image(3);
        let (r, stats) = rig.send(&src);
        r.unwrap();
        assert!(stats.nacks >= 1, "{stats:?}");
        assert_eq!(rig.stored(), src.0);
        let events = rig.finish();
        let recs = blocks(&events);
        let dropped = recs.iter().find(|r| r.frame_number == 30).unwrap();
        assert!(!dropped.delivered);
        assert!(recs
            .iter()
            .any(|r| r.seq == dropped.seq && r.delivered && r.retransmit));
        assert_transport_column_exact(&recs, &src);
    }

    #[test]
    fn resume_after_a_disconnect_ends_with_an_exact_image() {
        let mut rig = rig(vec![TransportFault::Disconnect { after_frame: 200 }]);
        let src = image(4);
        let (r, stats) = rig.send(&src);
        let c = r.unwrap();
        assert_eq!(c.blocks, BLOCKS);
        assert!(stats.reconnects >= 1, "{stats:?}");
        assert_eq!(stats.restarts, 0);
        assert_eq!(rig.stored(), src.0);
        let ev = rig.target_events.try_iter().find_map(|e| match e {
            TargetEvent::Session(r) => Some(r),
            _ => None,
        });
        let ev = ev.expect("a session report");
        assert!(ev.resumes >= 1, "{ev:?}");
        let events = rig.finish();
        assert!(events.iter().any(|e| matches!(e, ProxyEvent::Disconnected { reason } if reason.contains("after block frame 200"))));
        let recs = blocks(&events);
        assert_eq!(recs.iter().filter(|r| r.fault.is_some()).count(), 1);
        assert_transport_column_exact(&recs, &src);
    }

    #[test]
    fn one_in_n_flips_still_commit() {
        let mut rig = rig(vec![TransportFault::BitFlip(FrameSel::Every(50))]);
        let src = image(5);
        let (r, stats) = rig.send(&src);
        r.unwrap();
        assert!(stats.nacks >= 10, "{stats:?}");
        assert_eq!(rig.stored(), src.0);
        let recs_events = rig.finish();
        assert_transport_column_exact(&blocks(&recs_events), &src);
    }

    #[test]
    fn an_unreachable_target_looks_like_a_lost_link_to_the_agent() {
        let mut rig = rig(vec![]);
        if let Some(t) = rig.target.take() {
            t.shutdown();
        }
        let src = image(6);
        let spec = SessionSpec::full(SessionId([8; 16]), "v0", src.0.len() as u64, BS, 1);
        let mut o = opts();
        o.max_reconnects = 2;
        let mut sender = Sender::new(rig.qemu.take().unwrap(), o);
        let e = sender.send(&spec, &mut src.clone()).unwrap_err();
        assert!(matches!(e, SendError::ConnectionLost { .. }), "{e}");
        let events = rig.finish();
        assert!(events
            .iter()
            .any(|e| matches!(e, ProxyEvent::TargetUnreachable { .. })));
    }

    #[test]
    fn shutdown_is_prompt_without_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProxyConfig::new(
            dir.path().join("nobody.sock"),
            Address::Unix(dir.path().join("t.sock")),
        );
        let p = ProxyHandle::start(cfg);
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let stats = p.shutdown();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(stats, ProxyStats::default());
    }
}

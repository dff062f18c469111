//! The agent side of a backup session: streams a volume's blocks to a target over a
//! transport, handles acks and NACKs, resumes after a dropped connection, and returns an
//! honest result (committed only when the target says so for exactly this session).
//!
//! Flow control is a window of unacknowledged frames; recovery is go-back-N: a NACK or a
//! resume names the first frame the target needs and everything from there is re-read
//! from the [`BlockSource`] and sent again. Re-read blocks must hash the same as the
//! first time, or the session fails: a snapshot that reads differently twice is a bug.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::transport::{Address, Conn, TransportError};
use crate::wire::{
    encode_block, BackupKind, ErrorCode, ErrorFrame, FailReason, Frame, FrameBuffer, FrameView,
    ManifestDigest, Outcome, SessionHeader, SessionId, WireError, MAX_BLOCK_DATA, MAX_HASHES,
};

/// Where the blocks come from (the snapshot device in bw-agent, memory in tests).
pub trait BlockSource {
    /// Fills `buf` (a whole number of blocks) with the blocks starting at `first_block`.
    fn read_blocks(&mut self, first_block: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Called after a frame's blocks are read and hashed, before they are sent. `resend`
    /// is true when these blocks went out before (after a NACK or a reconnect). The agent
    /// writes its witness records here, reusing the hashes instead of hashing again.
    fn on_blocks(
        &mut self,
        first_block: u64,
        data: &[u8],
        hashes: &[[u8; 32]],
        resend: bool,
    ) -> io::Result<()> {
        let _ = (first_block, data, hashes, resend);
        Ok(())
    }
}

/// Opens connections to the target; called again after a connection drops.
pub trait Connector {
    fn connect(&mut self, timeout: Duration) -> Result<Conn, TransportError>;
}

impl Connector for Address {
    fn connect(&mut self, timeout: Duration) -> Result<Conn, TransportError> {
        Conn::connect(self, timeout)
    }
}

/// A run of consecutive blocks to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockExtent {
    pub start: u64,
    pub count: u64,
}

/// One session to send: what the header says plus which blocks, in order.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub session: SessionId,
    pub volume_id: String,
    pub volume_size: u64,
    pub block_size: u32,
    pub generation: u32,
    pub kind: BackupKind,
    /// Blocks to send, in sending order (a full backup: one extent over the volume).
    pub extents: Vec<BlockExtent>,
}

impl SessionSpec {
    /// A full backup of every block of the volume.
    pub fn full(
        session: SessionId,
        volume_id: &str,
        volume_size: u64,
        block_size: u32,
        generation: u32,
    ) -> SessionSpec {
        SessionSpec {
            session,
            volume_id: volume_id.to_string(),
            volume_size,
            block_size,
            generation,
            kind: BackupKind::Full,
            extents: vec![BlockExtent {
                start: 0,
                count: volume_size / u64::from(block_size.max(1)),
            }],
        }
    }

    fn header(&self, resume: bool) -> SessionHeader {
        SessionHeader {
            session: self.session,
            volume_id: self.volume_id.clone(),
            volume_size: self.volume_size,
            block_size: self.block_size,
            generation: self.generation,
            kind: self.kind,
            resume,
        }
    }
}

/// Tunables of a sender; the defaults suit a real backup, tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// Most data bytes per block frame (rounded down to whole blocks, at most 1 MiB).
    pub frame_bytes: usize,
    /// Most unacknowledged data bytes in flight.
    pub window_bytes: usize,
    /// Limit for one connect attempt.
    pub connect_timeout: Duration,
    /// Silence from the target longer than this while waiting means the link is dead.
    pub io_timeout: Duration,
    /// How long the target may take to commit after the end frame.
    pub commit_timeout: Duration,
    /// Consecutive failed connection attempts before giving up.
    pub max_reconnects: u32,
    /// First pause between attempts; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Overall limit for one session, reconnects included.
    pub deadline: Duration,
    /// Most times one frame is sent before the session fails.
    pub max_sends_per_frame: u32,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            frame_bytes: 256 * 1024,
            window_bytes: 16 << 20,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            commit_timeout: Duration::from_secs(600),
            max_reconnects: 8,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            deadline: Duration::from_secs(24 * 3600),
            max_sends_per_frame: 16,
        }
    }
}

/// Counters of the last session, for the agent's summary and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendStats {
    pub frames: u64,
    pub blocks: u64,
    /// Frame transmissions, first sends and resends.
    pub frames_sent: u64,
    pub frames_resent: u64,
    pub data_bytes_sent: u64,
    pub nacks: u64,
    /// Connections opened after the first.
    pub reconnects: u64,
    /// Times the session started over because the target forgot it.
    pub restarts: u64,
    pub duration: Duration,
    /// From the (last) end frame to the target's result: the target's commit time.
    pub commit_wait: Duration,
}

/// The target committed the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub session: SessionId,
    pub generation: u32,
    pub blocks: u64,
    pub frames: u64,
    pub manifest_digest: [u8; 32],
}

/// A session that did not commit, and why.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid session: {what}")]
    Plan { what: String },
    #[error("read block {block} from the source")]
    Source {
        block: u64,
        #[source]
        source: io::Error,
    },
    #[error("block {block} read differently when it was read again for a resend")]
    UnstableSource { block: u64 },
    #[error("target refused session {session} ({code}): {message}")]
    Refused {
        session: SessionId,
        code: &'static str,
        message: String,
    },
    #[error("target failed session {session} ({reason}, {bad_total} bad blocks {bad_blocks:?}): {message}")]
    TargetFailed {
        session: SessionId,
        reason: &'static str,
        message: String,
        bad_blocks: Vec<u64>,
        bad_total: u64,
    },
    #[error("connection to the target lost after {attempts} attempts over {elapsed:?}")]
    ConnectionLost {
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: TransportError,
    },
    #[error("target forgot session {session} again after it was started over once")]
    SessionLost { session: SessionId },
    #[error("target broke the protocol in session {session}: {what}")]
    Protocol { session: SessionId, what: String },
    #[error("session {session} did not finish within {deadline:?}")]
    Deadline {
        session: SessionId,
        deadline: Duration,
    },
    #[error("frame {seq} was sent {sends} times without the target taking it")]
    TooManySends { seq: u64, sends: u32 },
}

/// Why one connection ended.
enum ConnEnd {
    /// Lost link: reconnect and resume.
    Dropped(TransportError),
    /// The session is over (committed or failed for good).
    Done(Result<Committed, SendError>),
}

/// Maps a frame sequence number to its blocks.
struct FramePlan {
    extents: Vec<BlockExtent>,
    /// Frames before extent i.
    first_frame: Vec<u64>,
    frames: u64,
    blocks: u64,
    frame_blocks: u64,
}

impl FramePlan {
    fn new(spec: &SessionSpec, frame_bytes: usize) -> Result<FramePlan, SendError> {
        let bs = u64::from(spec.block_size);
        let max_blocks = (MAX_BLOCK_DATA as u64 / bs).min(MAX_HASHES as u64).max(1);
        let frame_blocks = (frame_bytes as u64 / bs).clamp(1, max_blocks);
        let vol_blocks = spec.volume_size / bs;
        let mut first_frame = Vec::with_capacity(spec.extents.len());
        let mut frames = 0u64;
        let mut blocks = 0u64;
        for e in &spec.extents {
            if e.count == 0
                || e.start
                    .checked_add(e.count)
                    .is_none_or(|end| end > vol_blocks)
            {
                return Err(SendError::Plan {
                    what: format!(
                        "extent of {} blocks at block {} is empty or outside the volume of {vol_blocks} blocks",
                        e.count, e.start
                    ),
                });
            }
            first_frame.push(frames);
            frames += e.count.div_ceil(frame_blocks);
            blocks += e.count;
        }
        Ok(FramePlan {
            extents: spec.extents.clone(),
            first_frame,
            frames,
            blocks,
            frame_blocks,
        })
    }

    /// (first block, block count) of frame `seq`.
    fn frame(&self, seq: u64) -> (u64, u64) {
        let i = self
            .first_frame
            .partition_point(|&f| f <= seq)
            .saturating_sub(1);
        let e = self.extents[i];
        let k = seq - self.first_frame[i];
        let start = e.start + k * self.frame_blocks;
        let n = self.frame_blocks.min(e.count - k * self.frame_blocks);
        (start, n)
    }
}

/// Hashes of a frame that the target has not acknowledged yet.
struct Pending {
    first_block: u64,
    hashes: Vec<[u8; 32]>,
    sends: u32,
}

/// Progress of one session across connections.
struct Progress {
    /// Every frame below is acknowledged by the target.
    acked: u64,
    /// Next frame to transmit.
    next: u64,
    /// Frames [acked, high) have been sent at least once; `pending[i]` is frame acked+i.
    pending: VecDeque<Pending>,
    /// Manifest over frames below `acked`.
    digest: ManifestDigest,
    end_sent: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            acked: 0,
            next: 0,
            pending: VecDeque::new(),
            digest: ManifestDigest::new(),
            end_sent: false,
        }
    }

    fn high(&self) -> u64 {
        self.acked + self.pending.len() as u64
    }

    fn ack(&mut self, n: u64, block_size: u32) {
        while self.acked < n {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            for (i, h) in p.hashes.iter().enumerate() {
                self.digest.add_block(
                    (p.first_block + i as u64) * u64::from(block_size),
                    block_size,
                    h,
                );
            }
            self.acked += 1;
        }
        if self.next < self.acked {
            self.next = self.acked;
        }
    }

    fn manifest(&self, block_size: u32) -> [u8; 32] {
        let mut d = self.digest.clone();
        for p in &self.pending {
            for (i, h) in p.hashes.iter().enumerate() {
                d.add_block(
                    (p.first_block + i as u64) * u64::from(block_size),
                    block_size,
                    h,
                );
            }
        }
        d.finish()
    }
}

/// Hashes every block of `data` into `out`, on several threads for a large frame: in a
/// guest without SHA instructions, hashing is what limits a backup's speed.
fn hash_blocks(data: &[u8], bs: usize, out: &mut Vec<[u8; 32]>) {
    let blocks = data.len() / bs;
    out.clear();
    out.resize(blocks, [0u8; 32]);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if threads < 2 || blocks < 64 {
        for (h, b) in out.iter_mut().zip(data.chunks_exact(bs)) {
            *h = Sha256::digest(b).into();
        }
        return;
    }
    let per = blocks.div_ceil(threads);
    std::thread::scope(|scope| {
        for (hs, chunk) in out.chunks_mut(per).zip(data.chunks(per * bs)) {
            scope.spawn(move || {
                for (h, b) in hs.iter_mut().zip(chunk.chunks_exact(bs)) {
                    *h = Sha256::digest(b).into();
                }
            });
        }
    });
}

/// Sends sessions to one target, reusing the connection between sessions.
pub struct Sender<C: Connector> {
    connector: C,
    opts: SenderOptions,
    conn: Option<Conn>,
    inbuf: FrameBuffer,
    out: Vec<u8>,
    stats: SendStats,
}

impl<C: Connector> Sender<C> {
    pub fn new(connector: C, opts: SenderOptions) -> Self {
        Sender {
            connector,
            opts,
            conn: None,
            inbuf: FrameBuffer::new(),
            out: Vec::with_capacity(2 << 20),
            stats: SendStats::default(),
        }
    }

    /// Counters of the last (or current) session.
    pub fn stats(&self) -> &SendStats {
        &self.stats
    }

    /// Closes the connection (the next session opens a new one).
    pub fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.shutdown();
        }
    }

    /// Sends one session and returns only when the target committed it, or with the
    /// reason it did not.
    pub fn send(
        &mut self,
        spec: &SessionSpec,
        source: &mut dyn BlockSource,
    ) -> Result<Committed, SendError> {
        let started_at = Instant::now();
        self.stats = SendStats::default();
        spec.header(false).validate().map_err(|e| SendError::Plan {
            what: e.to_string(),
        })?;
        let plan = FramePlan::new(spec, self.opts.frame_bytes)?;
        // An incremental with nothing changed is still a generation (a copy of its
        // parent); a full backup of nothing is a mistake.
        if plan.frames == 0 && spec.kind == BackupKind::Full {
            return Err(SendError::Plan {
                what: "a full backup with no blocks to send".into(),
            });
        }
        self.stats.frames = plan.frames;
        self.stats.blocks = plan.blocks;
        let deadline = started_at + self.opts.deadline;
        let mut progress = Progress::new();
        let mut session = Session {
            spec,
            plan: &plan,
            started: false,
            restarted: false,
        };
        let mut failures = 0u32;
        let mut backoff = self.opts.backoff_initial;
        let mut first_connection = true;
        let result = loop {
            if Instant::now() >= deadline {
                break Err(SendError::Deadline {
                    session: spec.session,
                    deadline: self.opts.deadline,
                });
            }
            let last_err = if self.conn.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.connector.connect(self.opts.connect_timeout.min(left)) {
                    Ok(c) => {
                        if !first_connection {
                            self.stats.reconnects += 1;
                        }
                        first_connection = false;
                        self.conn = Some(c);
                        self.inbuf.clear();
                        // The target side may still hold bytes for an older connection.
                        self.inbuf.set_syncing(true);
                        self.out.clear();
                        None
                    }
                    Err(e) => Some(e),
                }
            } else {
                None
            };
            let last_err = match last_err {
                Some(e) => e,
                None => {
                    let acked_before = progress.acked;
                    match self.run_connection(&mut session, &mut progress, source, deadline) {
                        ConnEnd::Done(r) => break r,
                        ConnEnd::Dropped(e) => {
                            self.close();
                            // Only a connection that moved the session on resets the count,
                            // so a target that accepts and then always drops still ends.
                            if progress.acked > acked_before {
                                failures = 0;
                                backoff = self.opts.backoff_initial;
                            }
                            e
                        }
                    }
                }
            };
            failures += 1;
            if failures > self.opts.max_reconnects {
                break Err(SendError::ConnectionLost {
                    attempts: failures,
                    elapsed: started_at.elapsed(),
                    last: last_err,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(self.opts.backoff_max);
        };
        self.stats.duration = started_at.elapsed();
        if let Err(e) = &result {
            let tell_target = match e {
                SendError::Plan { .. }
                | SendError::Source { .. }
                | SendError::UnstableSource { .. }
                | SendError::Protocol { .. }
                | SendError::Deadline { .. }
                | SendError::TooManySends { .. } => true,
                SendError::Refused { .. }
                | SendError::TargetFailed { .. }
                | SendError::ConnectionLost { .. }
                | SendError::SessionLost { .. } => false,
            };
            if tell_target {
                // Tell the target to drop the partial session now rather than at expiry.
                self.abort(spec.session, &e.to_string());
            } else if !matches!(e, SendError::TargetFailed { .. }) {
                self.close();
            }
        }
        result
    }

    fn abort(&mut self, session: SessionId, why: &str) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let frame = Frame::Error(ErrorFrame::new(session, ErrorCode::Aborted, why));
        if let Ok(bytes) = frame.to_bytes() {
            // Best effort: the session has already failed on this side.
            let _ = conn.write_all(&bytes, Instant::now() + Duration::from_secs(1));
        }
        self.close();
    }

    /// Writes `self.out` fully, reading whatever the target sends meanwhile (so neither
    /// side can block on a full buffer).
    fn flush(&mut self, timeout: Duration) -> Result<(), TransportError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(TransportError::Closed {
                peer: "target".into(),
            });
        };
        let mut done = 0;
        let mut last_progress = Instant::now();
        while done < self.out.len() {
            let n = conn.try_write(&self.out[done..])?;
            if n > 0 {
                done += n;
                last_progress = Instant::now();
                continue;
            }
            let waited = last_progress.elapsed();
            if waited >= timeout {
                return Err(TransportError::Timeout {
                    op: "write",
                    peer: conn.peer().to_string(),
                    waited,
                });
            }
            let r = conn.poll(true, true, Some(timeout - waited))?;
            if (r.readable || r.hangup) && read_into(conn, &mut self.inbuf)? == Read::Eof {
                return Err(TransportError::Closed {
                    peer: conn.peer().to_string(),
                });
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Reads what is available without waiting (or waits up to `wait` when given).
    /// Returns false when nothing arrived.
    fn receive(&mut self, wait: Option<Duration>) -> Result<bool, TransportError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(TransportError::Closed {
                peer: "target".into(),
            });
        };
        if let Some(w) = wait {
            let r = conn.poll(true, false, Some(w))?;
            if !r.readable && !r.hangup {
                return Ok(false);
            }
        }
        let mut got_any = false;
        loop {
            match read_into(conn, &mut self.inbuf)? {
                Read::Data => got_any = true,
                Read::WouldBlock => return Ok(got_any),
                Read::Eof => {
                    return Err(TransportError::Closed {
                        peer: conn.peer().to_string(),
                    })
                }
            }
        }
    }

    fn run_connection(
        &mut self,
        session: &mut Session<'_>,
        progress: &mut Progress,
        source: &mut dyn BlockSource,
        deadline: Instant,
    ) -> ConnEnd {
        match self.run_connection_inner(session, progress, source, deadline) {
            Ok(r) => ConnEnd::Done(r),
            Err(Stop::Dropped(e)) => ConnEnd::Dropped(e),
            Err(Stop::Fail(e)) => ConnEnd::Done(Err(e)),
        }
    }

    fn send_header(&mut self, spec: &SessionSpec, resume: bool) -> Result<(), Stop> {
        Frame::Header(spec.header(resume))
            .encode(&mut self.out)
            .map_err(|e| Stop::Fail(plan_err(e)))?;
        self.flush(self.opts.io_timeout).map_err(Stop::Dropped)
    }

    fn run_connection_inner(
        &mut self,
        s: &mut Session<'_>,
        p: &mut Progress,
        source: &mut dyn BlockSource,
        deadline: Instant,
    ) -> Result<Result<Committed, SendError>, Stop> {
        let spec = s.spec;
        let sid = spec.session;
        let bs = spec.block_size;
        self.send_header(spec, s.started)?;
        // Handshake: the first frame for this session decides how to go on.
        let mut last_rx = Instant::now();
        loop {
            let reply = self.next_frame_for(sid)?;
            let Some(frame) = reply else {
                if last_rx.elapsed() >= self.opts.io_timeout {
                    return Err(Stop::Dropped(self.timeout_err("handshake", last_rx)));
                }
                if Instant::now() >= deadline {
                    return Ok(Err(SendError::Deadline {
                        session: sid,
                        deadline: self.opts.deadline,
                    }));
                }
                if self
                    .receive(Some(Duration::from_millis(200)))
                    .map_err(Stop::Dropped)?
                {
                    last_rx = Instant::now();
                }
                continue;
            };
            match frame {
                Frame::Accept(a) => {
                    if !s.started {
                        if a.next_seq != 0 {
                            return Err(proto(
                                sid,
                                format!(
                                    "new session accepted from frame {} instead of 0",
                                    a.next_seq
                                ),
                            ));
                        }
                    } else if a.next_seq < p.acked || a.next_seq > p.high() {
                        return Err(proto(
                            sid,
                            format!(
                                "resume from frame {} outside the unacknowledged range {}..={}",
                                a.next_seq,
                                p.acked,
                                p.high()
                            ),
                        ));
                    }
                    p.ack(a.next_seq, bs);
                    p.next = a.next_seq;
                    p.end_sent = false;
                    s.started = true;
                    break;
                }
                Frame::Error(e) if e.code == ErrorCode::UnknownSession && s.started => {
                    if s.restarted {
                        return Ok(Err(SendError::SessionLost { session: sid }));
                    }
                    // The target lost the partial session (it restarted): start over once.
                    s.restarted = true;
                    s.started = false;
                    *p = Progress::new();
                    self.stats.restarts += 1;
                    self.send_header(spec, false)?;
                }
                Frame::Error(e) => {
                    return Ok(Err(SendError::Refused {
                        session: sid,
                        code: e.code.name(),
                        message: e.message,
                    }))
                }
                Frame::Result(r) => return Ok(self.result(s, p, r.outcome)),
                // Acks and NACKs left over from before the handshake mean nothing now.
                _ => {}
            }
        }
        let window_frames =
            (self.opts.window_bytes as u64 / (s.plan.frame_blocks * u64::from(bs))).max(1);
        let mut buf = vec![0u8; (s.plan.frame_blocks * u64::from(bs)) as usize];
        let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(s.plan.frame_blocks as usize);
        let mut last_rx = Instant::now();
        let mut end_at = Instant::now();
        loop {
            if self.receive(None).map_err(Stop::Dropped)? {
                last_rx = Instant::now();
            }
            while let Some(f) = self.next_frame_for(sid)? {
                match f {
                    Frame::Ack(a) => {
                        if a.next_seq > p.high() {
                            return Err(proto(
                                sid,
                                format!(
                                    "ack of frame {} beyond the {} frames sent",
                                    a.next_seq,
                                    p.high()
                                ),
                            ));
                        }
                        p.ack(a.next_seq, bs);
                    }
                    Frame::Nack(n) => {
                        self.stats.nacks += 1;
                        if n.seq >= p.acked && n.seq < p.next {
                            p.next = n.seq;
                            p.end_sent = false;
                            // What was queued past the NACKed frame is resent anyway.
                            self.out.clear();
                        }
                    }
                    Frame::Result(r) => {
                        if p.end_sent {
                            self.stats.commit_wait = end_at.elapsed();
                        }
                        return Ok(self.result(s, p, r.outcome));
                    }
                    Frame::Error(e) => {
                        return Ok(Err(SendError::Refused {
                            session: sid,
                            code: e.code.name(),
                            message: e.message,
                        }))
                    }
                    other => {
                        return Err(proto(
                            sid,
                            format!("unexpected {} frame during the transfer", other.kind()),
                        ))
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(Err(SendError::Deadline {
                    session: sid,
                    deadline: self.opts.deadline,
                }));
            }
            if p.next < s.plan.frames && p.next - p.acked < window_frames {
                self.queue_frame(s, p, source, &mut buf, &mut hashes)
                    .map_err(Stop::Fail)?;
                if self.out.len() >= 512 * 1024 {
                    self.flush(self.opts.io_timeout).map_err(Stop::Dropped)?;
                }
                continue;
            }
            if p.next == s.plan.frames && !p.end_sent {
                let end = Frame::End(crate::wire::End {
                    session: sid,
                    frame_count: s.plan.frames,
                    block_count: s.plan.blocks,
                    manifest_digest: p.manifest(bs),
                });
                end.encode(&mut self.out)
                    .map_err(|e| Stop::Fail(plan_err(e)))?;
                p.end_sent = true;
                end_at = Instant::now();
            }
            if !self.out.is_empty() {
                self.flush(self.opts.io_timeout).map_err(Stop::Dropped)?;
                continue;
            }
            // Nothing to send: wait for the target.
            let (since, limit) = if p.end_sent {
                (end_at.max(last_rx), self.opts.commit_timeout)
            } else {
                (last_rx, self.opts.io_timeout)
            };
            if since.elapsed() >= limit {
                return Err(Stop::Dropped(
                    self.timeout_err("waiting for the target", since),
                ));
            }
            let wait = (limit - since.elapsed()).min(Duration::from_millis(500));
            if self.receive(Some(wait)).map_err(Stop::Dropped)? {
                last_rx = Instant::now();
            }
        }
    }

    fn damaged(&self, what: String) -> TransportError {
        TransportError::Damaged {
            peer: self
                .conn
                .as_ref()
                .map(|c| c.peer().to_string())
                .unwrap_or_default(),
            what,
        }
    }

    fn timeout_err(&self, op: &'static str, since: Instant) -> TransportError {
        TransportError::Timeout {
            op,
            peer: self
                .conn
                .as_ref()
                .map(|c| c.peer().to_string())
                .unwrap_or_default(),
            waited: since.elapsed(),
        }
    }

    /// Reads, hashes and encodes frame `p.next` into the output buffer.
    fn queue_frame(
        &mut self,
        s: &Session<'_>,
        p: &mut Progress,
        source: &mut dyn BlockSource,
        buf: &mut [u8],
        hashes: &mut Vec<[u8; 32]>,
    ) -> Result<(), SendError> {
        let seq = p.next;
        let bs = s.spec.block_size as usize;
        let (first, n) = s.plan.frame(seq);
        let data = &mut buf[..n as usize * bs];
        source
            .read_blocks(first, data)
            .map_err(|e| SendError::Source {
                block: first,
                source: e,
            })?;
        hash_blocks(data, bs, hashes);
        let resend = seq < p.high();
        if resend {
            let entry = &mut p.pending[(seq - p.acked) as usize];
            if let Some(i) = (0..hashes.len()).find(|&i| entry.hashes.get(i) != Some(&hashes[i])) {
                return Err(SendError::UnstableSource {
                    block: first + i as u64,
                });
            }
            entry.sends += 1;
            if entry.sends > self.opts.max_sends_per_frame {
                return Err(SendError::TooManySends {
                    seq,
                    sends: entry.sends,
                });
            }
            self.stats.frames_resent += 1;
        } else {
            p.pending.push_back(Pending {
                first_block: first,
                hashes: hashes.clone(),
                sends: 1,
            });
        }
        source
            .on_blocks(first, data, hashes, resend)
            .map_err(|e| SendError::Source {
                block: first,
                source: e,
            })?;
        encode_block(&mut self.out, seq, first * bs as u64, hashes, data).map_err(plan_err)?;
        self.stats.frames_sent += 1;
        self.stats.data_bytes_sent += data.len() as u64;
        p.next += 1;
        Ok(())
    }

    /// The next buffered frame about this session; frames of other sessions are dropped.
    fn next_frame_for(&mut self, sid: SessionId) -> Result<Option<Frame>, Stop> {
        loop {
            let f = match self.inbuf.next_frame() {
                Ok(None) => return Ok(None),
                Ok(Some(FrameView::Other(f))) => f,
                Ok(Some(FrameView::Block(_))) => {
                    return Err(proto(sid, "target sent a block frame".into()))
                }
                Err(e) if e.is_damage() => return Err(Stop::Dropped(self.damaged(e.to_string()))),
                Err(e) => {
                    return Err(proto(
                        sid,
                        format!("undecodable frame from the target: {e}"),
                    ))
                }
            };
            let about = match &f {
                Frame::Accept(a) => a.session,
                Frame::Ack(a) => a.session,
                Frame::Nack(n) => n.session,
                Frame::Result(r) => r.session,
                // An error about no session in particular concerns the current one.
                Frame::Error(e) if e.session.is_nil() => sid,
                Frame::Error(e) => e.session,
                Frame::Header(_) | Frame::End(_) | Frame::Block(_) => sid,
            };
            if about != sid {
                continue;
            }
            if let Frame::Error(e) = &f {
                if e.code == ErrorCode::Damaged {
                    // The target saw our bytes damaged and closes: resume on a new link.
                    return Err(Stop::Dropped(self.damaged(e.message.clone())));
                }
            }
            return Ok(Some(f));
        }
    }

    fn result(
        &self,
        s: &Session<'_>,
        p: &Progress,
        outcome: Outcome,
    ) -> Result<Committed, SendError> {
        let sid = s.spec.session;
        match outcome {
            Outcome::Committed {
                generation,
                block_count,
            } => {
                if p.high() < s.plan.frames {
                    return Err(SendError::Protocol {
                        session: sid,
                        what: format!(
                            "target committed after {} of {} frames",
                            p.high(),
                            s.plan.frames
                        ),
                    });
                }
                if generation != s.spec.generation || block_count != s.plan.blocks {
                    return Err(SendError::Protocol {
                        session: sid,
                        what: format!(
                            "target committed generation {generation} with {block_count} blocks; sent generation {} with {} blocks",
                            s.spec.generation, s.plan.blocks
                        ),
                    });
                }
                Ok(Committed {
                    session: sid,
                    generation,
                    blocks: block_count,
                    frames: s.plan.frames,
                    manifest_digest: p.manifest(s.spec.block_size),
                })
            }
            Outcome::Failed {
                reason,
                message,
                bad_blocks,
                bad_total,
            } => Err(SendError::TargetFailed {
                session: sid,
                reason: fail_name(reason),
                message,
                bad_blocks,
                bad_total,
            }),
        }
    }
}

#[derive(PartialEq, Eq)]
enum Read {
    Data,
    WouldBlock,
    Eof,
}

fn read_into(conn: &mut Conn, inbuf: &mut FrameBuffer) -> Result<Read, TransportError> {
    match conn.try_read(inbuf.space())? {
        None => Ok(Read::WouldBlock),
        Some(0) => Ok(Read::Eof),
        Some(n) => {
            inbuf.commit(n);
            Ok(Read::Data)
        }
    }
}

struct Session<'a> {
    spec: &'a SessionSpec,
    plan: &'a FramePlan,
    /// The target accepted this session on some connection.
    started: bool,
    /// The session was started over once already.
    restarted: bool,
}

enum Stop {
    Dropped(TransportError),
    Fail(SendError),
}

fn proto(session: SessionId, what: String) -> Stop {
    Stop::Fail(SendError::Protocol { session, what })
}

fn plan_err(e: WireError) -> SendError {
    SendError::Plan {
        what: e.to_string(),
    }
}

fn fail_name(r: FailReason) -> &'static str {
    r.name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_plan_maps_sequences_to_blocks() {
        let spec = SessionSpec {
            session: SessionId([1; 16]),
            volume_id: "v".into(),
            volume_size: 100 * 4096,
            block_size: 4096,
            generation: 2,
            kind: BackupKind::Incremental { parent: 1 },
            extents: vec![
                BlockExtent { start: 3, count: 5 },
                BlockExtent {
                    start: 50,
                    count: 1,
                },
                BlockExtent {
                    start: 90,
                    count: 4,
                },
            ],
        };
        let plan = FramePlan::new(&spec, 2 * 4096).unwrap();
        let frames: Vec<_> = (0..plan.frames).map(|s| plan.frame(s)).collect();
        assert_eq!(
            frames,
            vec![(3, 2), (5, 2), (7, 1), (50, 1), (90, 2), (92, 2)]
        );
        assert_eq!(plan.blocks, 10);
        let mut bad = spec.clone();
        bad.extents.push(BlockExtent {
            start: 99,
            count: 2,
        });
        assert!(matches!(
            FramePlan::new(&bad, 4096),
            Err(SendError::Plan { .. })
        ));
    }
}

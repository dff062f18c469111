//! The agent side of a backup session: streams a volume's blocks to a target over a
//! transport, handles acks and NACKs, resumes after a dropped connection, and returns an
//! honest result (committed only when the target says so for exactly this session).
//!
//! Flow control is a window of unacknowledged frames; recovery is go-back-N: a NACK or a
//! resume names the first frame the target needs and everything from there is re-read
//! from the [`BlockSource`] and sent again. Re-read blocks must hash the same as the
//! first time, or the session fails: a snapshot that reads differently twice is a bug.
//!
//! Reading, hashing and framing run ahead of the socket on stages of their own
//! ([`pipeline`]); the caller's thread runs the protocol and writes each frame's head
//! and data as they are (no copy of the data into a send buffer).

mod pipeline;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::transport::{Address, Conn, TransportError};
use crate::wire::{
    BackupKind, BlockDigest, ErrorCode, ErrorFrame, FailReason, Frame, FrameBuffer, FrameView,
    ManifestDigest, Outcome, SessionHeader, SessionId, WireError, MAX_BLOCK_DATA, MAX_HASHES,
};
pub use pipeline::BUF_ALIGN;
use pipeline::{Pipeline, Ready, StageClock};

/// Where the blocks come from (the snapshot device in bw-agent, memory in tests). The
/// sender reads on a stage of its own, ahead of the socket, so a source is `Send`.
pub trait BlockSource: Send {
    /// Fills `buf` (a whole number of blocks) with the blocks starting at `first_block`.
    /// `buf` starts at a [`BUF_ALIGN`]-aligned address (an O_DIRECT read can land in it).
    fn read_blocks(&mut self, first_block: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A source that also notes something about each frame while it reads it (bw-agent:
/// the live reads around each snapshot read). The note travels with the frame through
/// the pipeline to the [`BlockObserver`], together with the frame's hashes. Every
/// [`BlockSource`] is one, with nothing to note.
pub trait NotingSource: Send {
    type Note: Send;

    /// Like [`BlockSource::read_blocks`], returning the note for these blocks.
    fn read_noting(&mut self, first_block: u64, buf: &mut [u8]) -> io::Result<Self::Note>;
}

impl<T: BlockSource + ?Sized> NotingSource for T {
    type Note = ();

    fn read_noting(&mut self, first_block: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_blocks(first_block, buf)
    }
}

/// Sees every frame after it is read and hashed, right before it is sent, on the
/// sending stage. bw-agent writes its witness records here, reusing the hashes.
pub trait BlockObserver<N> {
    /// `resend` is true when these blocks went out before (after a NACK or a
    /// reconnect); `note` is what the source noted while reading them this time.
    fn on_blocks(
        &mut self,
        first_block: u64,
        data: &[u8],
        hashes: &[BlockDigest],
        note: N,
        resend: bool,
    ) -> io::Result<()>;
}

/// An observer that looks at nothing.
pub struct NoObserver;

impl<N> BlockObserver<N> for NoObserver {
    fn on_blocks(
        &mut self,
        _first_block: u64,
        _data: &[u8],
        _hashes: &[BlockDigest],
        _note: N,
        _resend: bool,
    ) -> io::Result<()> {
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
    /// Busy time of each stage: the reading stage in the source, the hashing stage, and
    /// the sending stage in socket writes (waits for the peer included). They overlap;
    /// the largest says which stage set the pace.
    pub read_busy: Duration,
    pub hash_busy: Duration,
    pub write_busy: Duration,
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
    #[error("the reading and hashing stages stopped before the session ended")]
    StagesGone,
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
    hashes: Vec<BlockDigest>,
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

    /// The tunables this sender runs with.
    pub fn options(&self) -> &SenderOptions {
        &self.opts
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
    pub fn send<S: NotingSource>(
        &mut self,
        spec: &SessionSpec,
        source: &mut S,
    ) -> Result<Committed, SendError> {
        self.send_observed(spec, source, &mut NoObserver)
    }

    /// [`Sender::send`], showing every frame to `observer` before it goes out.
    pub fn send_observed<S, O>(
        &mut self,
        spec: &SessionSpec,
        source: &mut S,
        observer: &mut O,
    ) -> Result<Committed, SendError>
    where
        S: NotingSource,
        O: BlockObserver<S::Note>,
    {
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
        let clock = Arc::new(StageClock::default());
        let result = std::thread::scope(|scope| {
            let mut pipe =
                match Pipeline::start(scope, &plan, spec.block_size, source, clock.clone()) {
                    Ok(p) => p,
                    Err(e) => {
                        return Err(SendError::Source {
                            block: 0,
                            source: e,
                        })
                    }
                };
            // The stages stop when `pipe` drops at the end of this closure, before the
            // scope waits for them.
            self.drive(spec, &plan, &mut pipe, observer, started_at)
        });
        self.stats.read_busy = clock.read();
        self.stats.hash_busy = clock.hash();
        self.stats.duration = started_at.elapsed();
        if let Err(e) = &result {
            let tell_target = match e {
                SendError::Plan { .. }
                | SendError::Source { .. }
                | SendError::UnstableSource { .. }
                | SendError::StagesGone
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

    /// Connects, runs the session over as many connections as it takes, and says how it
    /// ended.
    fn drive<N, O: BlockObserver<N>>(
        &mut self,
        spec: &SessionSpec,
        plan: &FramePlan,
        pipe: &mut Pipeline<N>,
        observer: &mut O,
        started_at: Instant,
    ) -> Result<Committed, SendError>
    where
        N: Send,
    {
        let deadline = started_at + self.opts.deadline;
        let mut progress = Progress::new();
        let mut session = Session {
            spec,
            plan,
            started: false,
            restarted: false,
        };
        let mut failures = 0u32;
        let mut backoff = self.opts.backoff_initial;
        let mut first_connection = true;
        loop {
            if Instant::now() >= deadline {
                return Err(SendError::Deadline {
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
                    let mut stages = Stages { pipe, observer };
                    match self.run_connection(&mut session, &mut progress, &mut stages, deadline) {
                        ConnEnd::Done(r) => return r,
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
                return Err(SendError::ConnectionLost {
                    attempts: failures,
                    elapsed: started_at.elapsed(),
                    last: last_err,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(self.opts.backoff_max);
        }
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
        self.write_frame(&[], timeout)
    }

    /// Writes `self.out` and then `data` fully (a block frame's head is queued in
    /// `self.out`, its data written from the pipeline's buffer), reading whatever the
    /// target sends meanwhile.
    fn write_frame(&mut self, data: &[u8], timeout: Duration) -> Result<(), TransportError> {
        let t = Instant::now();
        let Some(conn) = self.conn.as_mut() else {
            return Err(TransportError::Closed {
                peer: "target".into(),
            });
        };
        let r = write_fully(conn, &mut self.inbuf, &self.out, timeout)
            .and_then(|()| write_fully(conn, &mut self.inbuf, data, timeout));
        self.out.clear();
        self.stats.write_busy += t.elapsed();
        r
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

    fn run_connection<N: Send, O: BlockObserver<N>>(
        &mut self,
        session: &mut Session<'_>,
        progress: &mut Progress,
        stages: &mut Stages<'_, N, O>,
        deadline: Instant,
    ) -> ConnEnd {
        match self.run_connection_inner(session, progress, stages, deadline) {
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

    fn run_connection_inner<N: Send, O: BlockObserver<N>>(
        &mut self,
        s: &mut Session<'_>,
        p: &mut Progress,
        stages: &mut Stages<'_, N, O>,
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
                // Frames come from the pipeline; while the next one is not ready yet, go
                // round and look at what the target said.
                match stages.pipe.take(p.next, PIPELINE_WAIT) {
                    Ok(Some(ready)) => self.send_ready(p, stages, ready)?,
                    Ok(None) => {}
                    Err(pipeline::StagesGone) => return Err(Stop::Fail(SendError::StagesGone)),
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

    /// Sends frame `p.next` as the pipeline delivered it: checks a resend against the
    /// hashes sent the first time, shows it to the observer, writes head and data.
    fn send_ready<N: Send, O: BlockObserver<N>>(
        &mut self,
        p: &mut Progress,
        stages: &mut Stages<'_, N, O>,
        ready: Ready<N>,
    ) -> Result<(), Stop> {
        let seq = ready.seq;
        let first = ready.first_block;
        let source_err = |source| {
            Stop::Fail(SendError::Source {
                block: first,
                source,
            })
        };
        let note = match ready.note {
            Ok(n) => n,
            Err(e) => return Err(source_err(e)),
        };
        if ready.head.is_empty() {
            return Err(Stop::Fail(SendError::Plan {
                what: format!("frame {seq} of {} bytes cannot be encoded", ready.len),
            }));
        }
        let resend = seq < p.high();
        if resend {
            let entry = &mut p.pending[(seq - p.acked) as usize];
            if let Some(i) =
                (0..ready.hashes.len()).find(|&i| entry.hashes.get(i) != Some(&ready.hashes[i]))
            {
                return Err(Stop::Fail(SendError::UnstableSource {
                    block: first + i as u64,
                }));
            }
            entry.sends += 1;
            if entry.sends > self.opts.max_sends_per_frame {
                return Err(Stop::Fail(SendError::TooManySends {
                    seq,
                    sends: entry.sends,
                }));
            }
            self.stats.frames_resent += 1;
        } else {
            p.pending.push_back(Pending {
                first_block: first,
                hashes: ready.hashes.clone(),
                sends: 1,
            });
        }
        stages
            .observer
            .on_blocks(first, ready.buf.get(ready.len), &ready.hashes, note, resend)
            .map_err(source_err)?;
        p.next += 1;
        self.stats.frames_sent += 1;
        self.stats.data_bytes_sent += ready.len as u64;
        self.out.extend_from_slice(&ready.head);
        self.write_frame(ready.buf.get(ready.len), self.opts.io_timeout)
            .map_err(Stop::Dropped)?;
        stages.pipe.give_back(ready.buf);
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

/// Writes `buf` fully to `conn`, reading what arrives meanwhile into `inbuf`. Fails when
/// no byte could be written for `timeout`.
fn write_fully(
    conn: &mut Conn,
    inbuf: &mut FrameBuffer,
    buf: &[u8],
    timeout: Duration,
) -> Result<(), TransportError> {
    let mut done = 0;
    let mut last_progress = Instant::now();
    while done < buf.len() {
        let n = conn.try_write(&buf[done..])?;
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
        if (r.readable || r.hangup) && read_into(conn, inbuf)? == Read::Eof {
            return Err(TransportError::Closed {
                peer: conn.peer().to_string(),
            });
        }
    }
    Ok(())
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

/// How long the sending stage waits for the pipeline before it looks at the socket again.
const PIPELINE_WAIT: Duration = Duration::from_millis(20);

/// The pipeline and the observer, as one connection uses them.
struct Stages<'a, N, O> {
    pipe: &'a mut Pipeline<N>,
    observer: &'a mut O,
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
    use crate::wire::{Accept, Ack, Nack, NackReason, SessionResult};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    const BS: u32 = 4096;

    /// Hands out one end of a socket pair, once.
    struct Pair(Option<Conn>);

    impl Connector for Pair {
        fn connect(&mut self, _timeout: Duration) -> Result<Conn, TransportError> {
            self.0.take().ok_or(TransportError::Closed {
                peer: "test pair".into(),
            })
        }
    }

    /// Blocks of recognisable content; block `moving` reads differently each time, and
    /// every read of a frame is counted by its first block.
    struct Source {
        blocks: u64,
        moving: Option<u64>,
        fail_at: Option<u64>,
        reads: Arc<Mutex<Vec<u64>>>,
        moved: AtomicU32,
    }

    impl Source {
        fn new(blocks: u64) -> Source {
            Source {
                blocks,
                moving: None,
                fail_at: None,
                reads: Arc::default(),
                moved: AtomicU32::new(0),
            }
        }

        fn content(&self, b: u64) -> Vec<u8> {
            (0..BS as u64)
                .map(|i| (i ^ b.wrapping_mul(7919)) as u8)
                .collect()
        }
    }

    impl BlockSource for Source {
        fn read_blocks(&mut self, first_block: u64, buf: &mut [u8]) -> io::Result<()> {
            assert!(first_block < self.blocks);
            assert_eq!(buf.as_ptr() as usize % BUF_ALIGN, 0, "buffers are aligned");
            self.reads.lock().unwrap().push(first_block);
            if self
                .fail_at
                .is_some_and(|f| f >= first_block && f < first_block + 4)
            {
                return Err(io::Error::other("the disk said no"));
            }
            for (i, chunk) in buf.chunks_mut(BS as usize).enumerate() {
                let b = first_block + i as u64;
                chunk.copy_from_slice(&self.content(b));
                if Some(b) == self.moving {
                    chunk[0] = self.moved.fetch_add(1, Ordering::Relaxed) as u8;
                }
            }
            Ok(())
        }
    }

    /// What the fake target saw.
    #[derive(Default)]
    struct Seen {
        frames: Vec<u64>,
        data: std::collections::BTreeMap<u64, Vec<u8>>,
        aborted: bool,
    }

    /// A minimal target on the other end of the pair: accepts, NACKs frame `nack` the
    /// first time it arrives, acks everything else, commits at the end frame.
    fn fake_target(sock: UnixStream, nack: Option<u64>) -> std::thread::JoinHandle<Seen> {
        std::thread::spawn(move || {
            let mut sock = sock;
            sock.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut buf = FrameBuffer::new();
            let mut seen = Seen::default();
            let mut nacked = false;
            let mut next = 0u64;
            let mut session = SessionId::NIL;
            let mut generation = 0;
            let send = |sock: &mut UnixStream, f: Frame| sock.write_all(&f.to_bytes().unwrap());
            loop {
                let n = match io::Read::read(&mut sock, buf.space()) {
                    Ok(0) | Err(_) => return seen,
                    Ok(n) => n,
                };
                buf.commit(n);
                while let Ok(Some(view)) = buf.next_frame() {
                    let reply = match view {
                        FrameView::Other(Frame::Header(h)) => {
                            session = h.session;
                            generation = h.generation;
                            Frame::Accept(Accept {
                                session,
                                next_seq: 0,
                            })
                        }
                        FrameView::Block(b) => {
                            seen.frames.push(b.seq);
                            // The sender's hashes are the protocol's block hash.
                            assert!(b.mismatched_blocks().is_empty());
                            if Some(b.seq) == nack && !nacked {
                                nacked = true;
                                Frame::Nack(Nack {
                                    session,
                                    seq: b.seq,
                                    reason: NackReason::HashMismatch,
                                })
                            } else if b.seq == next {
                                for i in 0..b.hash_count() {
                                    seen.data.insert(
                                        b.offset / u64::from(BS) + i as u64,
                                        b.block(i).to_vec(),
                                    );
                                }
                                next += 1;
                                Frame::Ack(Ack {
                                    session,
                                    next_seq: next,
                                })
                            } else {
                                continue;
                            }
                        }
                        // An End that overtook a NACKed frame (a loaded machine lets the
                        // sender finish its window first) is sent again after the resend:
                        // commit only once every frame is in, as the real target does.
                        FrameView::Other(Frame::End(e)) if next < e.frame_count => continue,
                        FrameView::Other(Frame::End(e)) => Frame::Result(SessionResult {
                            session,
                            outcome: Outcome::Committed {
                                generation,
                                block_count: e.block_count,
                            },
                        }),
                        FrameView::Other(Frame::Error(_)) => {
                            seen.aborted = true;
                            continue;
                        }
                        FrameView::Other(_) => continue,
                    };
                    // A sender that has given up may be gone already: what it sent
                    // before (an Error frame) is still read to the end.
                    let _ = send(&mut sock, reply);
                }
            }
        })
    }

    fn opts() -> SenderOptions {
        SenderOptions {
            frame_bytes: 4 * BS as usize,
            window_bytes: 64 * BS as usize,
            io_timeout: Duration::from_secs(10),
            commit_timeout: Duration::from_secs(10),
            max_reconnects: 0,
            deadline: Duration::from_secs(60),
            ..SenderOptions::default()
        }
    }

    fn run(
        source: &mut Source,
        nack: Option<u64>,
    ) -> (Result<Committed, SendError>, SendStats, Seen) {
        let (a, b) = UnixStream::pair().unwrap();
        let target = fake_target(b, nack);
        let conn = Conn::from_unix(a, "fake target").unwrap();
        let mut sender = Sender::new(Pair(Some(conn)), opts());
        let spec = SessionSpec::full(
            SessionId([3; 16]),
            "v",
            source.blocks * u64::from(BS),
            BS,
            1,
        );
        let r = sender.send(&spec, source);
        let stats = sender.stats().clone();
        sender.close();
        (r, stats, target.join().unwrap())
    }

    /// A NACK sends the pipeline back: the NACKed frame and everything after it are read
    /// again from the source and sent again, and the image arrives exact.
    #[test]
    fn a_nack_rereads_from_the_source_and_the_image_arrives_exact() {
        let mut source = Source::new(200);
        let (r, stats, seen) = run(&mut source, Some(10));
        let c = r.unwrap();
        assert_eq!((c.blocks, c.frames), (200, 50));
        assert!(stats.frames_resent >= 1, "{stats:?}");
        assert_eq!(stats.nacks, 1);
        // Frame 10 (blocks 40..44) was read twice: once before the NACK, once after.
        let reads = source.reads.lock().unwrap().clone();
        assert!(reads.iter().filter(|&&f| f == 40).count() >= 2, "{reads:?}");
        assert_eq!(seen.data.len(), 200);
        for (b, d) in &seen.data {
            assert_eq!(d, &source.content(*b), "block {b}");
        }
        // Every stage did some work, and the clock says so.
        assert!(stats.read_busy > Duration::ZERO && stats.hash_busy > Duration::ZERO);
        assert!(stats.write_busy > Duration::ZERO);
    }

    /// A block that reads differently when it is read again for a resend is an unstable
    /// snapshot: the session fails, naming the block, and the target is told.
    #[test]
    fn a_block_that_changes_between_reads_fails_the_session() {
        let mut source = Source::new(64);
        source.moving = Some(42);
        let (r, _, seen) = run(&mut source, Some(10));
        match r {
            Err(SendError::UnstableSource { block }) => assert_eq!(block, 42),
            other => panic!("expected an unstable source, got {other:?}"),
        }
        assert!(seen.aborted, "the target was told to drop the session");
    }

    /// A read error fails the session with the block where it happened.
    #[test]
    fn a_read_error_names_its_block() {
        let mut source = Source::new(64);
        source.fail_at = Some(33);
        let (r, _, seen) = run(&mut source, None);
        match r {
            Err(SendError::Source { block, source }) => {
                assert_eq!(block, 32);
                assert!(source.to_string().contains("the disk said no"));
            }
            other => panic!("expected a source error, got {other:?}"),
        }
        assert!(seen.aborted);
    }

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

//! `bw-target serve`: the listener, one thread per connection, and the registry of
//! sessions that outlive their connections (so a dropped agent can resume) until they
//! finish or expire.
//!
//! Locks: a slot's mutex is held while a frame is applied and during the commit, so a
//! resume that arrives mid-commit waits and then gets the final result. Holding a slot,
//! a thread may take the registry mutex (to free the session's volume and generation);
//! holding the registry, nobody waits for a slot (the reaper only try-locks), so the two
//! cannot deadlock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::session::{BlockError, BlockOutcome, EndOutcome, OpenError, Receiving};
use super::store::{Store, StoreError};
use super::{error_chain, TargetFaults};
use crate::transport::{Address, Conn, Listener, TransportError};
use crate::wire::{
    Accept, Ack, ErrorCode, ErrorFrame, FailReason, Frame, FrameBuffer, FrameView, Nack,
    NackReason, Outcome, SessionHeader, SessionId, SessionResult,
};

/// Options of a serving target.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub store: PathBuf,
    pub faults: TargetFaults,
    /// How long a session whose connection dropped waits for a resume.
    pub resume_window: Duration,
    /// A connection silent for this long is closed (its session waits for a resume).
    pub idle_timeout: Duration,
    /// Limit for writing a reply to the agent.
    pub write_timeout: Duration,
    /// Verify by reading the device (O_DIRECT after write-back), not the page cache.
    pub reread_from_disk: bool,
    /// Acknowledge at least every this many stored data bytes (and whenever input runs
    /// dry); well below the sender's window so the pipe never stalls on an ack.
    pub ack_every_bytes: u64,
}

impl ServeOptions {
    pub fn new(store: PathBuf) -> ServeOptions {
        ServeOptions {
            store,
            faults: TargetFaults::default(),
            resume_window: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(30),
            reread_from_disk: true,
            ack_every_bytes: 1 << 20,
        }
    }
}

/// How a session ended, as the target reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionStatus {
    Committed,
    Failed,
    /// Refused at the header (no session was opened).
    Refused,
    /// The connection dropped and no resume came within the window.
    Expired,
}

/// The target's claim about one session: one JSON line per session with `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    pub session: String,
    pub volume: String,
    pub generation: u32,
    pub kind: String,
    pub parent: Option<u32>,
    pub status: SessionStatus,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub frames: u64,
    pub blocks: u64,
    pub bad_total: u64,
    pub bad_blocks: Vec<u64>,
    /// Blocks an injected fault touched (for the harness's fault-site check).
    pub fault_sites: Vec<u64>,
    /// Whether the stored blocks were re-read and matched before the commit.
    pub verified: bool,
    pub resumes: u64,
    pub nacks: u64,
    pub ignored_frames: u64,
    pub duration_ms: u64,
    pub faults: TargetFaults,
}

/// What a serving target reports (execution never prints; the binary does). The harness
/// reads these back from `bw-target serve --json`, one per line.
// One event per session or connection: their size does not matter, boxing would.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum TargetEvent {
    Listening {
        address: String,
        store: String,
    },
    /// A leftover temporary or uncommitted file removed at start.
    Cleaned {
        path: String,
    },
    Session(SessionReport),
    /// A connection ended on an error that concerns no session.
    Connection {
        peer: String,
        message: String,
    },
}

/// Receives [`TargetEvent`]s, from any thread.
pub type EventSink = Arc<dyn Fn(&TargetEvent) + Send + Sync>;

enum SlotState {
    Receiving(Box<Receiving>),
    Finished { outcome: Outcome, at: Instant },
}

struct SlotInner {
    state: SlotState,
    /// Connection that may feed this session; 0 when detached.
    owner: u64,
    detached_at: Option<Instant>,
}

struct Slot {
    header: SessionHeader,
    /// Protected by its mutex: state, owner, detach time.
    inner: Mutex<SlotInner>,
}

#[derive(Default)]
struct Registry {
    slots: HashMap<SessionId, Arc<Slot>>,
    /// (volume, generation) being received or reserved, and by which session.
    active: HashMap<(String, u32), SessionId>,
}

struct Shared {
    store: Store,
    opts: ServeOptions,
    events: EventSink,
    /// Protected by its mutex; never held while waiting for a slot's mutex.
    registry: Mutex<Registry>,
    shutdown: AtomicBool,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the whole target down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bound target, ready to serve.
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

/// A target serving on its own thread.
pub struct ServerHandle {
    address: Address,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starting the target failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("open store")]
    Store(#[from] StoreError),
    #[error("listen")]
    Listen(#[from] TransportError),
}

impl Server {
    /// Opens the store (cleaning leftovers from a crash) and binds the address.
    pub fn bind(
        addr: &Address,
        opts: ServeOptions,
        events: EventSink,
    ) -> Result<Server, ServeError> {
        let store = Store::open(&opts.store)?;
        for p in store.clean_leftovers()? {
            events(&TargetEvent::Cleaned {
                path: p.display().to_string(),
            });
        }
        let listener = Listener::bind(addr)?;
        let shared = Arc::new(Shared {
            store,
            opts,
            events,
            registry: Mutex::new(Registry::default()),
            shutdown: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
        });
        Ok(Server { listener, shared })
    }

    /// The bound address (with the real port for `tcp:...:0`).
    pub fn address(&self) -> &Address {
        self.listener.address()
    }

    /// Serves until `shutdown` is called on a handle (see [`Server::spawn`]) or forever.
    pub fn run(self) {
        let shared = self.shared;
        (shared.events)(&TargetEvent::Listening {
            address: self.listener.address().to_string(),
            store: shared.opts.store.display().to_string(),
        });
        let reaper = {
            let shared = shared.clone();
            std::thread::spawn(move || reap_loop(&shared))
        };
        let mut conns: Vec<JoinHandle<()>> = Vec::new();
        while !shared.shutdown.load(Ordering::Relaxed) {
            match self.listener.accept_timeout(Duration::from_millis(200)) {
                Ok(Some(conn)) => {
                    let shared = shared.clone();
                    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                    conns.push(std::thread::spawn(move || {
                        serve_connection(&shared, conn, id)
                    }));
                }
                Ok(None) => {}
                Err(e) => {
                    (shared.events)(&TargetEvent::Connection {
                        peer: self.listener.address().to_string(),
                        message: error_chain(&e),
                    });
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            conns.retain(|h| !h.is_finished());
        }
        for h in conns {
            let _ = h.join();
        }
        let _ = reaper.join();
    }

    /// Serves on a new thread; the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let address = self.listener.address().clone();
        let shared = self.shared.clone();
        let thread = std::thread::spawn(move || self.run());
        ServerHandle {
            address,
            shared,
            thread: Some(thread),
        }
    }
}

impl ServerHandle {
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Stops accepting, lets connection threads notice within a fraction of a second,
    /// and waits for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reap_loop(shared: &Shared) {
    while !shared.shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let window = shared.opts.resume_window;
        let mut reg = lock(&shared.registry);
        let mut gone = Vec::new();
        for (id, slot) in &reg.slots {
            // A slot busy with a frame or a commit is not idle: skip it this round.
            let Ok(mut inner) = slot.inner.try_lock() else {
                continue;
            };
            match &inner.state {
                SlotState::Finished { at, .. } => {
                    if at.elapsed() > window {
                        gone.push((*id, None));
                    }
                }
                SlotState::Receiving(r) => {
                    if inner.detached_at.is_some_and(|t| t.elapsed() > window) {
                        r.discard();
                        let report = report(
                            &slot.header,
                            Some(r),
                            SessionStatus::Expired,
                            None,
                            Some(format!("connection lost and no resume within {window:?}")),
                            &shared.opts.faults,
                        );
                        inner.state = SlotState::Finished {
                            outcome: Outcome::Failed {
                                reason: FailReason::Aborted,
                                message: "session expired after its connection dropped".into(),
                                bad_blocks: Vec::new(),
                                bad_total: 0,
                            },
                            at: Instant::now(),
                        };
                        gone.push((*id, Some(report)));
                    }
                }
            }
        }
        for (id, rep) in gone {
            if let Some(rep) = rep {
                reg.active.retain(|_, sid| *sid != id);
                (shared.events)(&TargetEvent::Session(rep));
                // Keep the failed outcome around so a late resume hears about it.
                continue;
            }
            reg.slots.remove(&id);
        }
    }
}

fn report(
    h: &SessionHeader,
    r: Option<&Receiving>,
    status: SessionStatus,
    outcome: Option<&Outcome>,
    message: Option<String>,
    faults: &TargetFaults,
) -> SessionReport {
    let (reason, msg, bad_total, bad_blocks) = match outcome {
        Some(Outcome::Failed {
            reason,
            message,
            bad_blocks,
            bad_total,
        }) => (
            Some(reason.name().to_string()),
            Some(message.clone()),
            *bad_total,
            bad_blocks.clone(),
        ),
        Some(Outcome::Committed { .. }) | None => (None, None, 0, Vec::new()),
    };
    SessionReport {
        session: h.session.to_string(),
        volume: h.volume_id.clone(),
        generation: h.generation,
        kind: h.kind.name().to_string(),
        parent: h.kind.parent(),
        status,
        reason,
        message: message.or(msg),
        frames: r.map_or(0, |r| r.next_seq),
        blocks: r.map_or(0, |r| r.blocks),
        bad_total,
        bad_blocks,
        fault_sites: r.map_or_else(Vec::new, |r| r.counters.fault_sites.clone()),
        verified: r.is_some_and(|r| r.counters.verified),
        resumes: r.map_or(0, |r| r.counters.resumes),
        nacks: r.map_or(0, |r| r.counters.nacks),
        ignored_frames: r.map_or(0, |r| r.counters.ignored),
        duration_ms: r.map_or(0, |r| r.counters.started.elapsed().as_millis() as u64),
        faults: *faults,
    }
}

/// The reply to a session header.
enum HeaderReply {
    Accept(Arc<Slot>, u64),
    Result(Outcome),
    Error(ErrorCode, String),
}

impl Shared {
    fn open_session(&self, h: &SessionHeader, conn_id: u64) -> HeaderReply {
        let existing = lock(&self.registry).slots.get(&h.session).cloned();
        if let Some(slot) = existing {
            let mut inner = lock(&slot.inner);
            if !slot.header.same_backup(h) {
                return HeaderReply::Error(
                    ErrorCode::Refused,
                    format!("session {} is a different backup", h.session),
                );
            }
            let next = match &mut inner.state {
                SlotState::Finished { outcome, .. } => return HeaderReply::Result(outcome.clone()),
                SlotState::Receiving(r) => {
                    if !h.resume {
                        return HeaderReply::Error(
                            ErrorCode::Refused,
                            format!("session {} is already in progress", h.session),
                        );
                    }
                    r.counters.resumes += 1;
                    r.next_seq
                }
            };
            inner.owner = conn_id;
            inner.detached_at = None;
            drop(inner);
            return HeaderReply::Accept(slot, next);
        }
        // A committed generation answers for its own session (the result was lost).
        match self.store.manifest(&h.volume_id, h.generation) {
            Ok(Some(m)) => {
                if m.session == h.session.to_string() {
                    return HeaderReply::Result(Outcome::Committed {
                        generation: m.generation,
                        block_count: m.blocks,
                    });
                }
                return HeaderReply::Error(
                    ErrorCode::Refused,
                    format!(
                        "generation {} of volume {} is already committed by session {}",
                        h.generation, h.volume_id, m.session
                    ),
                );
            }
            Ok(None) => {}
            Err(e) => return HeaderReply::Error(ErrorCode::Internal, error_chain(&e)),
        }
        if h.resume {
            return HeaderReply::Error(
                ErrorCode::UnknownSession,
                format!("session {} is not known here", h.session),
            );
        }
        let key = (h.volume_id.clone(), h.generation);
        {
            let mut reg = lock(&self.registry);
            if let Some(other) = reg.active.get(&key) {
                return HeaderReply::Error(
                    ErrorCode::Busy,
                    format!(
                        "generation {} of volume {} is being received by session {other}",
                        h.generation, h.volume_id
                    ),
                );
            }
            reg.active.insert(key.clone(), h.session);
        }
        // Opening may copy a parent image: done outside the registry lock.
        let opened = Receiving::open(&self.store, h, self.opts.faults, self.opts.reread_from_disk);
        let mut reg = lock(&self.registry);
        match opened {
            Ok(r) => {
                let next = r.next_seq;
                let slot = Arc::new(Slot {
                    header: h.clone(),
                    inner: Mutex::new(SlotInner {
                        state: SlotState::Receiving(Box::new(r)),
                        owner: conn_id,
                        detached_at: None,
                    }),
                });
                reg.slots.insert(h.session, slot.clone());
                HeaderReply::Accept(slot, next)
            }
            Err(e) => {
                reg.active.remove(&key);
                let code = match e {
                    OpenError::Refused(_) => ErrorCode::Refused,
                    OpenError::Storage(_) => ErrorCode::Internal,
                };
                HeaderReply::Error(code, error_chain(&e))
            }
        }
    }

    /// Ends a session: records the outcome, frees its (volume, generation), reports.
    fn finish(&self, slot: &Slot, inner: &mut SlotInner, outcome: Outcome) {
        let status = match &outcome {
            Outcome::Committed { .. } => SessionStatus::Committed,
            Outcome::Failed { .. } => SessionStatus::Failed,
        };
        let rep = match &inner.state {
            SlotState::Receiving(r) => {
                if status == SessionStatus::Failed {
                    r.discard();
                }
                report(
                    &slot.header,
                    Some(r),
                    status,
                    Some(&outcome),
                    None,
                    &self.opts.faults,
                )
            }
            SlotState::Finished { .. } => return,
        };
        inner.state = SlotState::Finished {
            outcome,
            at: Instant::now(),
        };
        inner.owner = 0;
        lock(&self.registry)
            .active
            .remove(&(slot.header.volume_id.clone(), slot.header.generation));
        (self.events)(&TargetEvent::Session(rep));
    }
}

/// One connection's state.
struct ConnState<'a> {
    shared: &'a Shared,
    conn: Conn,
    id: u64,
    out: Vec<u8>,
    current: Option<Arc<Slot>>,
    /// Data bytes stored since the last ack.
    unacked: u64,
}

enum Flow {
    Continue,
    Close,
}

impl ConnState<'_> {
    fn queue(&mut self, f: &Frame) {
        // Frames built here always satisfy the encoder's rules; a failure would only
        // drop this reply, which the peer then sees as silence.
        let _ = f.encode(&mut self.out);
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self
            .conn
            .write_all(&self.out, Instant::now() + self.shared.opts.write_timeout);
        self.out.clear();
        r
    }

    fn error(&mut self, session: SessionId, code: ErrorCode, msg: &str) {
        self.queue(&Frame::Error(ErrorFrame::new(session, code, msg)));
    }

    fn queue_ack(&mut self) {
        let Some(slot) = self.current.clone() else {
            return;
        };
        if self.unacked == 0 {
            return;
        }
        let inner = lock(&slot.inner);
        if let SlotState::Receiving(r) = &inner.state {
            let f = Frame::Ack(Ack {
                session: slot.header.session,
                next_seq: r.next_seq,
            });
            drop(inner);
            self.queue(&f);
        }
        self.unacked = 0;
    }

    /// Lets go of the current session so another connection can resume it.
    fn detach(&mut self) {
        if let Some(slot) = self.current.take() {
            let mut inner = lock(&slot.inner);
            if inner.owner == self.id {
                inner.owner = 0;
                if matches!(inner.state, SlotState::Receiving(_)) {
                    inner.detached_at = Some(Instant::now());
                }
            }
        }
    }

    /// Ends the current session as failed, if this connection still owns it.
    fn finish_current(&mut self, reason: FailReason, message: String) {
        if let Some(slot) = self.current.take() {
            let mut inner = lock(&slot.inner);
            if inner.owner == self.id {
                self.shared.finish(
                    &slot,
                    &mut inner,
                    Outcome::Failed {
                        reason,
                        message,
                        bad_blocks: Vec::new(),
                        bad_total: 0,
                    },
                );
            }
        }
    }

    /// Fails the current session because of what this peer sent, and tells it.
    fn fail_current(&mut self, reason: FailReason, code: ErrorCode, msg: String) {
        let sid = self
            .current
            .as_ref()
            .map_or(SessionId::NIL, |s| s.header.session);
        self.finish_current(reason, msg.clone());
        self.error(sid, code, &msg);
    }

    fn on_header(&mut self, h: SessionHeader) -> Flow {
        // A new header ends whatever this connection was feeding (the agent moved on).
        self.detach();
        let reply = self.shared.open_session(&h, self.id);
        match reply {
            HeaderReply::Accept(slot, next_seq) => {
                self.queue(&Frame::Accept(Accept {
                    session: h.session,
                    next_seq,
                }));
                self.current = Some(slot);
                self.unacked = 0;
                Flow::Continue
            }
            HeaderReply::Result(outcome) => {
                self.queue(&Frame::Result(SessionResult {
                    session: h.session,
                    outcome,
                }));
                Flow::Continue
            }
            HeaderReply::Error(code, msg) => {
                if code != ErrorCode::UnknownSession {
                    let rep = report(
                        &h,
                        None,
                        SessionStatus::Refused,
                        None,
                        Some(format!("{}: {msg}", code.name())),
                        &self.shared.opts.faults,
                    );
                    (self.shared.events)(&TargetEvent::Session(rep));
                }
                self.error(h.session, code, &msg);
                Flow::Continue
            }
        }
    }

    fn on_block(&mut self, b: &crate::wire::BlockView<'_>) -> Flow {
        let Some(slot) = self.current.clone() else {
            self.error(
                SessionId::NIL,
                ErrorCode::Malformed,
                "block frame outside a session",
            );
            return Flow::Close;
        };
        let mut inner = lock(&slot.inner);
        if inner.owner != self.id {
            // Another connection resumed this session: this one is stale.
            drop(inner);
            self.current = None;
            return Flow::Close;
        }
        let SlotState::Receiving(r) = &mut inner.state else {
            // Late frames after the end: nothing to do with them.
            return Flow::Continue;
        };
        match r.block(b) {
            Ok(BlockOutcome::Stored) => {
                drop(inner);
                self.unacked += b.data.len() as u64;
                if self.unacked >= self.shared.opts.ack_every_bytes {
                    self.queue_ack();
                }
                Flow::Continue
            }
            Ok(BlockOutcome::Ignored) => Flow::Continue,
            Ok(BlockOutcome::Nack(seq, reason)) => {
                drop(inner);
                self.queue_ack();
                self.queue(&Frame::Nack(Nack {
                    session: slot.header.session,
                    seq,
                    reason,
                }));
                Flow::Continue
            }
            Err(BlockError::Protocol(e)) => {
                drop(inner);
                self.fail_current(FailReason::Protocol, ErrorCode::Malformed, e.to_string());
                Flow::Close
            }
            Err(e @ BlockError::Storage(_)) => {
                drop(inner);
                self.fail_current(FailReason::Storage, ErrorCode::Internal, error_chain(&e));
                Flow::Close
            }
        }
    }

    fn on_end(&mut self, e: &crate::wire::End) -> Flow {
        let Some(slot) = self.current.clone() else {
            self.error(
                e.session,
                ErrorCode::Malformed,
                "end frame outside a session",
            );
            return Flow::Close;
        };
        if slot.header.session != e.session {
            self.fail_current(
                FailReason::Protocol,
                ErrorCode::Malformed,
                format!(
                    "end frame for session {} inside session {}",
                    e.session, slot.header.session
                ),
            );
            return Flow::Close;
        }
        let mut inner = lock(&slot.inner);
        if inner.owner != self.id {
            drop(inner);
            self.current = None;
            return Flow::Close;
        }
        let outcome = match &mut inner.state {
            SlotState::Receiving(r) => match r.end(e) {
                EndOutcome::Nack(seq) => {
                    drop(inner);
                    self.queue(&Frame::Nack(Nack {
                        session: e.session,
                        seq,
                        reason: NackReason::Missing,
                    }));
                    return Flow::Continue;
                }
                EndOutcome::Done(o) => o,
            },
            SlotState::Finished { outcome, .. } => outcome.clone(),
        };
        self.shared.finish(&slot, &mut inner, outcome.clone());
        drop(inner);
        self.current = None;
        self.unacked = 0;
        self.queue(&Frame::Result(SessionResult {
            session: e.session,
            outcome,
        }));
        Flow::Continue
    }

    fn on_frame(&mut self, view: &FrameView<'_>) -> Flow {
        match view {
            FrameView::Block(b) => self.on_block(b),
            FrameView::Other(Frame::Header(h)) => self.on_header(h.clone()),
            FrameView::Other(Frame::End(e)) => self.on_end(e),
            FrameView::Other(Frame::Error(err)) => {
                let ours = self
                    .current
                    .as_ref()
                    .is_some_and(|s| s.header.session == err.session || err.session.is_nil());
                if ours {
                    let reason = if err.code == ErrorCode::Aborted {
                        FailReason::Aborted
                    } else {
                        FailReason::Protocol
                    };
                    let msg = format!("agent sent {}: {}", err.code.name(), err.message);
                    self.finish_current(reason, msg);
                }
                Flow::Continue
            }
            FrameView::Other(other) => {
                self.fail_current(
                    FailReason::Protocol,
                    ErrorCode::Malformed,
                    format!("{} frame is not for the target", other.kind()),
                );
                Flow::Close
            }
        }
    }
}

fn serve_connection(shared: &Shared, conn: Conn, id: u64) {
    let peer = conn.peer().to_string();
    let mut st = ConnState {
        shared,
        conn,
        id,
        out: Vec::with_capacity(4096),
        current: None,
        unacked: 0,
    };
    let mut inbuf = FrameBuffer::new();
    // Stale bytes from an earlier writer on the same channel are skipped at the start.
    inbuf.set_syncing(true);
    let mut last_rx = Instant::now();
    let end: Result<(), String> = 'conn: loop {
        loop {
            let flow = match inbuf.next_frame() {
                Ok(Some(view)) => st.on_frame(&view),
                Ok(None) => break,
                Err(e) if e.is_damage() => {
                    // Transport damage: close and let the agent resume on a new connection.
                    let sid = st
                        .current
                        .as_ref()
                        .map_or(SessionId::NIL, |s| s.header.session);
                    st.error(sid, ErrorCode::Damaged, &e.to_string());
                    let _ = st.flush();
                    break 'conn Err(format!("damaged frame: {e}"));
                }
                Err(e) => {
                    st.fail_current(FailReason::Protocol, ErrorCode::Malformed, e.to_string());
                    let _ = st.flush();
                    break 'conn Err(format!("malformed frame: {e}"));
                }
            };
            if let Flow::Close = flow {
                let _ = st.flush();
                break 'conn Ok(());
            }
        }
        // Input ran dry: acknowledge what was stored, send replies, then wait.
        st.queue_ack();
        if let Err(e) = st.flush() {
            break Err(error_chain(&e));
        }
        if shared.shutdown.load(Ordering::Relaxed) {
            break Ok(());
        }
        match st.conn.poll(true, false, Some(Duration::from_millis(200))) {
            Ok(r) if !r.readable && !r.hangup => {
                if last_rx.elapsed() > shared.opts.idle_timeout {
                    break Err(format!("idle for {:?}", last_rx.elapsed()));
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => break Err(error_chain(&e)),
        }
        match st.conn.try_read(inbuf.space()) {
            Ok(Some(0)) if inbuf.buffered() > 0 => {
                break Err(format!(
                    "stream ended inside a frame ({} bytes of it received)",
                    inbuf.buffered()
                ))
            }
            Ok(Some(0)) => break Ok(()),
            Ok(Some(n)) => {
                inbuf.commit(n);
                last_rx = Instant::now();
            }
            Ok(None) => {}
            Err(e) => break Err(error_chain(&e)),
        }
    };
    let session = st.current.as_ref().map(|s| s.header.session);
    st.detach();
    if let Err(message) = end {
        let message = match session {
            Some(s) => format!("{message} (session {s} waits for a resume)"),
            None => message,
        };
        (shared.events)(&TargetEvent::Connection { peer, message });
    }
}

//! The engine: takes parsed requests from the queues, asks the faults and the schedule
//! what to do with each, executes it on the layers, records it in the history and
//! completes it. Independent of vhost-user: the queues hand it descriptor chains and a
//! [`Completer`] that puts a finished request in the used ring.
//!
//! Threads: the vring threads (one per queue) submit and execute undelayed requests
//! inline; one scheduler thread executes delayed and released requests when they are
//! due; the control thread takes instants, arms and releases faults.
//!
//! Lock order: `faults` → `scheduler.state` → `gates[q]`; `layers` (shared by writes,
//! exclusive by an instant) → `stripes`. The history writer's lock is a leaf.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::faults::{Action, FaultError, FaultSpec, FaultStatus, FaultTable, Seen};
use crate::hash::{block_hash, BlockHash, BLOCK_SIZE};
use crate::history::{
    End, EndReason, Flags, HistoryError, HistoryWriter, Marker, MarkerRecord, Op, Outcome, Record,
    RequestRecord, Run, WriterStats,
};
use crate::layers::{LayerError, LiveLayers};
use crate::request::{parse, wire, Limits, Parsed, Request, Segment};
use crate::schedule::{self, Occurrences, RequestKey, Schedule};

/// Guest memory as the queues see it.
pub type Mem = GuestMemoryLoadGuard<GuestMemoryMmap<()>>;

/// Puts finished requests in a queue's used ring.
pub trait Completer: Send + Sync {
    /// Adds `head` to the used ring with `used_len` bytes written, and notifies the
    /// guest if it wants to be.
    fn complete(&self, head: u16, used_len: u32);
}

/// The longest read or write the backend takes, and what the config space advertises
/// so the guest never sends more: `SEG_MAX` segments of at most `SIZE_MAX` bytes. 254
/// segments is what QEMU's own virtio-blk offers with its 256-entry queues, so a guest
/// splits large requests the same way on both (longer chains use indirect descriptors).
pub const MAX_TRANSFER: u64 = 16 << 20;
pub const SEG_MAX: u32 = 254;
pub const SIZE_MAX: u32 = 64 << 10;
/// Longest discard / write-zeroes, in sectors (2 GiB).
pub const MAX_ZERO_SECTORS: u32 = 1 << 22;

/// Writes that touch the same block take the same stripe lock.
const STRIPES: u64 = 1024;

/// Nanoseconds since the backend's origin.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// Starts the clock; returns it with the origin's wall-clock and CLOCK_MONOTONIC
    /// times in nanoseconds.
    pub fn start() -> (Clock, u64, u64) {
        let origin = Instant::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        (Clock { origin }, wall, mono)
    }

    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// How the engine is set up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Answered to get-id (at most 20 bytes).
    pub serial: String,
    pub max_queues: u16,
    pub schedule: Option<Schedule>,
}

/// A request on its way: taken from a queue, not yet finished.
pub struct Pending {
    seq: u64,
    queue: u16,
    head: u16,
    /// The queue's epoch when it was taken; a stopped queue gets a new epoch and its old
    /// requests are never completed.
    epoch: u64,
    req: Request,
    mem: Mem,
    sink: Arc<dyn Completer>,
    submit_ns: u64,
    action: Action,
}

/// The answer to an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstantReply {
    /// Requests submitted before the instant have a smaller seq.
    pub seq: u64,
    pub t_ns: u64,
    pub generation: u32,
}

/// What the backend has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Requests finished, by op name.
    pub requests: BTreeMap<String, u64>,
    /// Requests finished, by outcome.
    pub outcomes: BTreeMap<String, u64>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests taken from the queues and not finished yet (held by a hang or a delay,
    /// or executing).
    pub in_flight: u64,
    pub faults: Vec<FaultStatus>,
    pub history: WriterStats,
    /// Instants taken.
    pub instants: u32,
    /// Blocks the top overlay holds (the copy-on-write cost since the last instant).
    pub overlay_blocks: u64,
    pub connected: bool,
    pub uptime_ns: u64,
}

/// Faults and the requests their hangs hold, under one lock so that a release never
/// misses a request being held.
struct FaultState {
    table: FaultTable,
    /// fault id → requests it holds.
    held: HashMap<u32, Vec<Pending>>,
}

struct SchedState {
    /// (due, seq), earliest first.
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    items: HashMap<u64, Pending>,
    stop: bool,
}

/// The backend's state, shared by every thread.
pub struct Engine {
    cfg: EngineConfig,
    limits: Limits,
    clock: Clock,
    layers: LiveLayers,
    history: HistoryWriter,
    seq: AtomicU64,
    /// Next content-change number (see the history docs); taken under the blocks'
    /// stripe locks and the shared layers lock.
    applied: AtomicU64,
    stripes: Vec<Mutex<()>>,
    faults: Mutex<FaultState>,
    occurrences: Occurrences,
    sched: Mutex<SchedState>,
    sched_cv: Condvar,
    /// Per queue: its epoch. Held while a request of that queue completes, so a queue
    /// stop and a completion never interleave.
    gates: Vec<Mutex<u64>>,
    counters: Mutex<Stats>,
    in_flight: AtomicU64,
    connected: AtomicBool,
    finished: AtomicBool,
}

thread_local! {
    /// Each thread's bounce buffer for data between guest memory and the layers.
    static BOUNCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Starts the engine and its scheduler thread.
    pub fn start(
        cfg: EngineConfig,
        clock: Clock,
        layers: LiveLayers,
        history: HistoryWriter,
    ) -> Arc<Engine> {
        let disk_bytes = layers.stack().disk_bytes();
        let engine = Arc::new(Engine {
            limits: Limits {
                capacity_bytes: disk_bytes,
                max_transfer_bytes: MAX_TRANSFER,
                max_discard_sectors: u64::from(MAX_ZERO_SECTORS),
                max_write_zeroes_sectors: u64::from(MAX_ZERO_SECTORS),
            },
            gates: (0..cfg.max_queues).map(|_| Mutex::new(0)).collect(),
            cfg,
            clock,
            layers,
            history,
            seq: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            faults: Mutex::new(FaultState {
                table: FaultTable::default(),
                held: HashMap::new(),
            }),
            occurrences: Occurrences::default(),
            sched: Mutex::new(SchedState {
                heap: BinaryHeap::new(),
                items: HashMap::new(),
                stop: false,
            }),
            sched_cv: Condvar::new(),
            counters: Mutex::new(Stats::default()),
            in_flight: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        });
        let e = engine.clone();
        std::thread::Builder::new()
            .name("bw-disk-sched".into())
            .spawn(move || e.scheduler())
            .expect("spawn the scheduler thread");
        engine
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn history_path(&self) -> &std::path::Path {
        self.history.path()
    }

    pub fn set_connected(&self, yes: bool) {
        self.connected.store(yes, Ordering::SeqCst);
    }

    fn marker(&self, marker: Marker) -> MarkerRecord {
        let m = MarkerRecord {
            t_ns: self.clock.now_ns(),
            next_seq: self.seq.load(Ordering::SeqCst),
            next_applied: self.applied.load(Ordering::SeqCst),
            marker,
        };
        self.history.append(&Record::Marker(m.clone()));
        m
    }

    /// Records a note in the history.
    pub fn note(&self, text: impl Into<String>) {
        self.marker(Marker::Note { text: text.into() });
    }

    /// Takes one descriptor chain from queue `queue`.
    pub fn submit(
        self: &Arc<Self>,
        queue: u16,
        head: u16,
        chain: &[Segment],
        mem: Mem,
        sink: Arc<dyn Completer>,
    ) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let submit_ns = self.clock.now_ns();
        let epoch = *lock(&self.gates[usize::from(queue).min(self.gates.len() - 1)]);
        let req = match parse(chain, &*mem, &self.limits) {
            Parsed::Ok(req) => req,
            Parsed::Refused {
                error,
                status,
                op,
                offset,
                len,
            } => {
                log::warn!("queue {queue}: request {seq} refused: {error}");
                let code = error.status();
                let _ = mem.write_slice(&[code], status);
                sink.complete(head, 1);
                let outcome = if u32::from(code) == wire::S_UNSUPP {
                    Outcome::Unsupported
                } else {
                    Outcome::IoError
                };
                self.record(RequestRecord {
                    seq,
                    queue,
                    op,
                    flags: Flags::default(),
                    outcome,
                    offset,
                    len,
                    submit_ns,
                    complete_ns: Some(self.clock.now_ns()),
                    applied: None,
                    runs: vec![],
                });
                return;
            }
            Parsed::Unanswerable { error } => {
                log::warn!("queue {queue}: request {seq} cannot be answered: {error}");
                sink.complete(head, 0);
                self.record(RequestRecord {
                    seq,
                    queue,
                    op: Op::Malformed,
                    flags: Flags::default(),
                    outcome: Outcome::Unanswerable,
                    offset: 0,
                    len: 0,
                    submit_ns,
                    complete_ns: Some(self.clock.now_ns()),
                    applied: None,
                    runs: vec![],
                });
                return;
            }
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let key = RequestKey {
            op: req.op,
            offset: req.offset,
            len: req.len,
        };
        let mut pending = Pending {
            seq,
            queue,
            head,
            epoch,
            req,
            mem,
            sink,
            submit_ns,
            action: Action::Execute,
        };
        let mut delay = Duration::ZERO;
        {
            let mut faults = lock(&self.faults);
            let occurrence = if self.cfg.schedule.is_some() || faults.table.wants_occurrences() {
                self.occurrences.next(key)
            } else {
                0
            };
            if let Some(s) = self.cfg.schedule {
                delay += schedule::delay(s.seed, s.max_delay_us, key, occurrence);
            }
            let d = faults.table.decide(&Seen {
                seq,
                op: key.op,
                offset: key.offset,
                len: key.len,
                occurrence,
            });
            for fault in &d.fired {
                self.marker(Marker::FaultFired { fault: *fault, seq });
            }
            delay += d.delay;
            pending.action = d.action;
            if let Action::Hang(fault) = d.action {
                faults.held.entry(fault).or_default().push(pending);
                return;
            }
        }
        if delay.is_zero() {
            self.run(pending);
        } else {
            self.schedule(pending, self.clock.now_ns() + delay.as_nanos() as u64);
        }
    }

    fn schedule(&self, p: Pending, due_ns: u64) {
        let mut s = lock(&self.sched);
        s.heap.push(Reverse((due_ns, p.seq)));
        s.items.insert(p.seq, p);
        self.sched_cv.notify_one();
    }

    /// The scheduler thread: runs held requests when they are due.
    fn scheduler(self: Arc<Self>) {
        let mut s = lock(&self.sched);
        loop {
            if s.stop {
                return;
            }
            let now = self.clock.now_ns();
            match s.heap.peek().copied() {
                Some(Reverse((due, seq))) if due <= now => {
                    s.heap.pop();
                    // A request dropped by a queue stop leaves its heap entry behind.
                    if let Some(p) = s.items.remove(&seq) {
                        drop(s);
                        self.run(p);
                        s = lock(&self.sched);
                    }
                }
                Some(Reverse((due, _))) => {
                    s = self
                        .sched_cv
                        .wait_timeout(s, Duration::from_nanos(due - now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                None => {
                    s = self.sched_cv.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Executes a request now and finishes it.
    fn run(&self, p: Pending) {
        let (status, outcome, applied, runs) = match p.action {
            Action::Fail(_) => (wire::S_IOERR as u8, Outcome::IoError, None, vec![]),
            Action::Tear(_, land) => {
                let first = p.req.offset / BLOCK_SIZE;
                let cut = ((first + u64::from(land)) * BLOCK_SIZE).min(p.req.offset + p.req.len);
                let landed = cut.saturating_sub(p.req.offset);
                let (applied, runs) = if landed == 0 {
                    (None, vec![])
                } else {
                    match self.write(&p, landed) {
                        Ok(v) => v,
                        Err(e) => {
                            log::error!("request {}: torn write failed: {e}", p.seq);
                            (None, vec![])
                        }
                    }
                };
                self.finish_request(p, None, Outcome::Torn, applied, runs);
                return;
            }
            Action::Execute | Action::Hang(_) => match self.execute(&p) {
                Ok((applied, runs)) => (wire::S_OK as u8, Outcome::Ok, applied, runs),
                Err(e) => {
                    log::error!(
                        "request {} ({} {} bytes at {}): {e}",
                        p.seq,
                        p.req.op.name(),
                        p.req.len,
                        p.req.offset
                    );
                    (wire::S_IOERR as u8, Outcome::IoError, None, vec![])
                }
            },
        };
        self.finish_request(p, Some(status), outcome, applied, runs);
    }

    /// Completes the request (unless `status` is `None` or its queue stopped since it
    /// was taken) and records it.
    fn finish_request(
        &self,
        p: Pending,
        status: Option<u8>,
        mut outcome: Outcome,
        applied: Option<u64>,
        runs: Vec<Run>,
    ) {
        let mut complete_ns = None;
        if let Some(code) = status {
            let gate = lock(&self.gates[usize::from(p.queue).min(self.gates.len() - 1)]);
            if *gate == p.epoch {
                if let Err(e) = p.mem.write_slice(&[code], p.req.status) {
                    log::error!("request {}: cannot write its status: {e}", p.seq);
                }
                p.sink
                    .complete(p.head, p.req.used_len(code == wire::S_OK as u8));
                complete_ns = Some(self.clock.now_ns());
            } else {
                outcome = Outcome::Dropped;
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.record(RequestRecord {
            seq: p.seq,
            queue: p.queue,
            op: p.req.op,
            flags: p.req.flags,
            outcome,
            offset: p.req.offset,
            len: p.req.len,
            submit_ns: p.submit_ns,
            complete_ns,
            applied,
            runs,
        });
    }

    fn record(&self, r: RequestRecord) {
        {
            let mut c = lock(&self.counters);
            *c.requests.entry(r.op.name().to_string()).or_insert(0) += 1;
            *c.outcomes.entry(r.outcome.name().to_string()).or_insert(0) += 1;
            if r.outcome == Outcome::Ok {
                match r.op {
                    Op::Read => c.bytes_read += r.len,
                    Op::Write => c.bytes_written += r.len,
                    Op::Flush
                    | Op::Discard
                    | Op::WriteZeroes
                    | Op::GetId
                    | Op::Other(_)
                    | Op::Malformed => {}
                }
            }
        }
        self.history.append(&Record::Request(r));
    }

    /// Executes a request; returns its content-change number and versions.
    fn execute(&self, p: &Pending) -> Result<(Option<u64>, Vec<Run>), ExecError> {
        let r = &p.req;
        match r.op {
            Op::Read => {
                let stack = self.layers.stack();
                if stack.is_flat() {
                    // No overlay: straight from the image into guest memory, as QEMU does.
                    let mut guards = Vec::with_capacity(r.data.len());
                    let mut iov = Vec::with_capacity(r.data.len());
                    for s in &r.data {
                        for slice in GuestMemoryBackend::get_slices(
                            &*p.mem,
                            GuestAddress(s.addr),
                            s.len as usize,
                        ) {
                            let slice = slice.map_err(|_| ExecError::Guest(s.addr))?;
                            let guard = slice.ptr_guard_mut();
                            iov.push(libc::iovec {
                                iov_base: guard.as_ptr().cast(),
                                iov_len: slice.len(),
                            });
                            guards.push(guard);
                        }
                    }
                    stack
                        .read_base_vectored(r.offset, &mut iov)
                        .map_err(ExecError::Disk)?;
                    return Ok((None, vec![]));
                }
                drop(stack);
                self.read_bounced(p)
            }
            Op::Write => self.write(p, r.len),
            Op::Discard | Op::WriteZeroes => self.zero(r.offset, r.len),
            Op::Flush => {
                self.layers.stack().sync_top().map_err(ExecError::Disk)?;
                Ok((None, vec![]))
            }
            Op::GetId => {
                let mut id = [0u8; wire::ID_BYTES as usize];
                let serial = self.cfg.serial.as_bytes();
                let n = serial.len().min(id.len());
                id[..n].copy_from_slice(&serial[..n]);
                let mut done = 0;
                for s in &r.data {
                    let n = s.len as usize;
                    p.mem
                        .write_slice(&id[done..done + n], GuestAddress(s.addr))
                        .map_err(|_| ExecError::Guest(s.addr))?;
                    done += n;
                }
                Ok((None, vec![]))
            }
            Op::Other(_) | Op::Malformed => unreachable!("the parser refuses these"),
        }
    }

    /// A read through a host buffer, block by block from the layer that holds each.
    fn read_bounced(&self, p: &Pending) -> Result<(Option<u64>, Vec<Run>), ExecError> {
        let r = &p.req;
        BOUNCE.with(|b| {
            let mut buf = b.borrow_mut();
            buf.resize(r.len as usize, 0);
            self.layers
                .stack()
                .read_at(r.offset, &mut buf)
                .map_err(ExecError::Disk)?;
            let mut done = 0;
            for s in &r.data {
                let n = s.len as usize;
                p.mem
                    .write_slice(&buf[done..done + n], GuestAddress(s.addr))
                    .map_err(|_| ExecError::Guest(s.addr))?;
                done += n;
            }
            Ok((None, vec![]))
        })
    }

    /// Locks the stripes of blocks `first..=last`, in stripe order.
    fn lock_blocks(&self, first: u64, last: u64) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<u64> = if last - first + 1 >= STRIPES {
            (0..STRIPES).collect()
        } else {
            (first..=last).map(|b| b % STRIPES).collect()
        };
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| lock(&self.stripes[i as usize]))
            .collect()
    }

    /// Writes the first `len` bytes of a write request's data.
    fn write(&self, p: &Pending, len: u64) -> Result<(Option<u64>, Vec<Run>), ExecError> {
        let r = &p.req;
        BOUNCE.with(|b| {
            let mut buf = b.borrow_mut();
            buf.resize(r.len as usize, 0);
            let mut done = 0;
            for s in &r.data {
                let n = s.len as usize;
                p.mem
                    .read_slice(&mut buf[done..done + n], GuestAddress(s.addr))
                    .map_err(|_| ExecError::Guest(s.addr))?;
                done += n;
            }
            let data = &buf[..len as usize];
            let first = r.offset / BLOCK_SIZE;
            let last = (r.offset + len - 1) / BLOCK_SIZE;
            let stack = self.layers.stack();
            let _locks = self.lock_blocks(first, last);
            stack.write_at(r.offset, data).map_err(ExecError::Disk)?;
            let mut hashes = Vec::with_capacity((last - first + 1) as usize);
            let mut whole = [0u8; BLOCK_SIZE as usize];
            for block in first..=last {
                let start = block * BLOCK_SIZE;
                if start >= r.offset && start + BLOCK_SIZE <= r.offset + len {
                    let at = (start - r.offset) as usize;
                    hashes.push(block_hash(&data[at..at + BLOCK_SIZE as usize]));
                } else {
                    // Part of the block: its whole new content, read back under its lock.
                    stack.read_at(start, &mut whole).map_err(ExecError::Disk)?;
                    hashes.push(block_hash(&whole));
                }
            }
            let applied = self.applied.fetch_add(1, Ordering::SeqCst);
            Ok((
                Some(applied),
                vec![Run::Hashed {
                    first_block: first,
                    hashes,
                }],
            ))
        })
    }

    /// Discard and write-zeroes: the range reads as zeroes afterwards.
    fn zero(&self, offset: u64, len: u64) -> Result<(Option<u64>, Vec<Run>), ExecError> {
        if len == 0 {
            return Ok((None, vec![]));
        }
        let first = offset / BLOCK_SIZE;
        let last = (offset + len - 1) / BLOCK_SIZE;
        let stack = self.layers.stack();
        let _locks = self.lock_blocks(first, last);
        stack.zero_at(offset, len).map_err(ExecError::Disk)?;
        let mut runs = Vec::new();
        let mut whole = [0u8; BLOCK_SIZE as usize];
        let mut partial = |block: u64, runs: &mut Vec<Run>| -> Result<(), ExecError> {
            stack
                .read_at(block * BLOCK_SIZE, &mut whole)
                .map_err(ExecError::Disk)?;
            let h: BlockHash = block_hash(&whole);
            runs.push(Run::Hashed {
                first_block: block,
                hashes: vec![h],
            });
            Ok(())
        };
        let whole_from = offset.div_ceil(BLOCK_SIZE);
        let whole_to = (offset + len) / BLOCK_SIZE;
        if whole_from >= whole_to {
            for b in first..=last {
                partial(b, &mut runs)?;
            }
        } else {
            if first < whole_from {
                partial(first, &mut runs)?;
            }
            runs.push(Run::Zero {
                first_block: whole_from,
                count: whole_to - whole_from,
            });
            if last >= whole_to {
                partial(last, &mut runs)?;
            }
        }
        let applied = self.applied.fetch_add(1, Ordering::SeqCst);
        Ok((Some(applied), runs))
    }

    /// The queue was stopped (the guest reset its device): its held requests will never
    /// complete. Records them as dropped.
    pub fn stop_queue(&self, queue: u16) {
        let Some(gate) = self.gates.get(usize::from(queue)) else {
            return;
        };
        let epoch = {
            let mut g = lock(gate);
            *g += 1;
            *g - 1
        };
        let mut dropped = Vec::new();
        {
            let mut f = lock(&self.faults);
            for held in f.held.values_mut() {
                let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(held)
                    .into_iter()
                    .partition(|p| p.queue == queue && p.epoch == epoch);
                *held = keep;
                dropped.extend(gone);
            }
        }
        {
            let mut s = lock(&self.sched);
            let seqs: Vec<u64> = s
                .items
                .values()
                .filter(|p| p.queue == queue && p.epoch == epoch)
                .map(|p| p.seq)
                .collect();
            for seq in seqs {
                dropped.extend(s.items.remove(&seq));
            }
        }
        let n = dropped.len();
        for p in dropped {
            self.finish_request(p, None, Outcome::Dropped, None, vec![]);
        }
        if n > 0 {
            self.note(format!("queue {queue} stopped: {n} held requests dropped"));
        }
    }

    /// The control socket's instant.
    pub fn instant(&self, label: &str) -> Result<InstantReply, LayerError> {
        let (generation, m) = self.layers.instant(label, |generation| {
            self.marker(Marker::Instant {
                generation,
                label: label.to_string(),
            })
        })?;
        self.history.flush();
        Ok(InstantReply {
            seq: m.next_seq,
            t_ns: m.t_ns,
            generation,
        })
    }

    /// Arms a fault; returns its id.
    pub fn arm(&self, spec: FaultSpec) -> Result<u32, FaultError> {
        let blocks = self.layers.stack().blocks();
        let mut f = lock(&self.faults);
        let text = serde_json::to_string(&spec).expect("a fault spec serialises");
        let fault = f.table.arm(spec, blocks)?;
        self.marker(Marker::FaultArmed { fault, spec: text });
        Ok(fault)
    }

    /// Releases a fault; a hang's held requests run now. Returns how many it held.
    pub fn release(&self, fault: u32) -> Result<u64, FaultError> {
        let held = {
            let mut f = lock(&self.faults);
            f.table.release(fault)?;
            let held = f.held.remove(&fault).unwrap_or_default();
            self.marker(Marker::FaultReleased {
                fault,
                released: held.len() as u64,
            });
            held
        };
        let n = held.len() as u64;
        let now = self.clock.now_ns();
        for p in held {
            self.schedule(p, now);
        }
        Ok(n)
    }

    pub fn stats(&self) -> Stats {
        let mut s = lock(&self.counters).clone();
        s.in_flight = self.in_flight.load(Ordering::SeqCst);
        s.faults = lock(&self.faults).table.status();
        s.history = self.history.stats();
        s.instants = self.layers.instants();
        s.overlay_blocks = self.layers.stack().top_blocks();
        s.connected = self.connected.load(Ordering::SeqCst);
        s.uptime_ns = self.clock.now_ns();
        s
    }

    /// Ends the run: drops every held request, closes the layers and writes the
    /// history's end record. Runs once; later calls return the same error kinds.
    pub fn finish(&self, reason: EndReason) -> Result<End, FinishError> {
        if self.finished.swap(true, Ordering::SeqCst) {
            return Err(FinishError::Twice);
        }
        let mut dropped: Vec<Pending> = Vec::new();
        {
            let mut f = lock(&self.faults);
            for (_, held) in f.held.drain() {
                dropped.extend(held);
            }
        }
        {
            let mut s = lock(&self.sched);
            s.stop = true;
            dropped.extend(s.items.drain().map(|(_, p)| p));
            s.heap.clear();
            self.sched_cv.notify_all();
        }
        for p in dropped {
            self.finish_request(p, None, Outcome::Dropped, None, vec![]);
        }
        // Requests executing on the vring threads finish within moments.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let layers = self.layers.close();
        let end = self
            .history
            .finish(self.clock.now_ns(), reason)
            .map_err(FinishError::History)?;
        layers.map_err(FinishError::Layers)?;
        Ok(end)
    }
}

/// Why a request could not be executed (answered with an I/O error).
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error("the image")]
    Disk(#[source] std::io::Error),
    #[error("guest memory at {0:#x}")]
    Guest(u64),
}

/// Why the run could not be ended cleanly.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("the run was already finished")]
    Twice,
    #[error("closing the history")]
    History(#[source] HistoryError),
    #[error("closing the layers")]
    Layers(#[source] LayerError),
}

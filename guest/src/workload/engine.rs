//! The run loop: opens the target and the write log, steps a kind until a limit, a signal,
//! the end of its work or its allowance, or too many failures, and executes its data
//! writes (stamped or plain, in chunks, paced, each block logged and counted), then builds
//! the summary.
//!
//! Kinds decide *what* to do (kinds.rs); everything that touches counters, the log, the
//! clock or the stop flag is here, so every kind stops, paces and reports the same way.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self as stdio, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::io::{self, BlockBuf};
use super::paced::{PaceUnit, PacedProgress, Pacer};
use super::{
    fiemap, kinds, Config, Failure, Kind, LogRecord, Rate, StopReason, Target, WorkloadError,
    WorkloadSummary, BLOCK, MAX_ERROR_MESSAGES,
};
use crate::stamp::{Piece, Stamp};

/// Blocks per write call: big enough for throughput, small enough that a stop request is
/// seen within a fraction of a second even on a slow emulated disk.
pub(crate) const CHUNK_BLOCKS: u64 = 64;
/// After this many failed operations in a row the target is taken as gone.
const MAX_FAILURES_IN_ROW: u32 = 100;
/// Longest sleep between checks of the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// A pace that fell further behind than this (the filesystem was frozen, say) restarts
/// from now instead of bursting to catch up.
const MAX_LAG: Duration = Duration::from_secs(1);

/// Whether writes count towards the run's limits and rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Creating a working set before the first operation.
    Setup,
    Main,
}

/// What one operation of a kind came to.
pub(crate) enum Step {
    Op,
    Finished(StopReason),
}

/// Why an operation did not complete.
#[derive(Debug)]
pub(crate) enum OpFailure {
    /// A stop was requested (signal or duration) in the middle of the operation.
    Interrupted(StopReason),
    /// The operation failed; the run goes on.
    Failed(String),
    /// The filesystem is full: the expected end of fill-to-full, a failure elsewhere.
    NoSpace(String),
    /// The run cannot go on.
    Fatal(String),
}

/// A write into a file of the target directory.
pub(crate) struct FileWrite {
    /// Create the file (it must not exist).
    pub create: bool,
    pub offset: u64,
    pub blocks: u64,
    /// The range is new (beyond the end of the file): allocate it before stamping.
    pub allocate: bool,
}

/// Where the blocks of a write go on the device.
enum Placement<'a> {
    /// Unstamped file data: the filesystem places it later.
    Unknown,
    /// The device byte offset of each `piece`-byte piece, in file order.
    Mapped { places: &'a [u64], piece: u64 },
    /// A raw device, from this 4 KiB block on.
    From(u64),
}

impl Placement<'_> {
    /// The device byte offsets of the pieces of block `index` of the write; None when
    /// unknown (or past the mapping, which would be a bug).
    fn pieces(&self, index: u64) -> Option<Vec<u64>> {
        match self {
            Placement::Unknown => None,
            Placement::Mapped { places, piece } => {
                let per = (BLOCK / piece) as usize;
                let first = index as usize * per;
                places.get(first..first + per).map(<[u64]>::to_vec)
            }
            Placement::From(first) => Some(vec![(first + index) * BLOCK]),
        }
    }

    /// The 4 KiB device block holding the whole of block `index`, when one does.
    fn lba(&self, index: u64) -> Option<u64> {
        let pieces = self.pieces(index)?;
        let first = *pieces.first()?;
        let step = BLOCK / pieces.len() as u64;
        let in_order = pieces
            .iter()
            .enumerate()
            .all(|(j, &p)| p == first + j as u64 * step);
        (first.is_multiple_of(BLOCK) && in_order).then_some(first / BLOCK)
    }
}

/// The opened target.
enum Place {
    Dir {
        path: PathBuf,
        handle: File,
        /// Bytes per stamped piece: the filesystem block size, at most 4 KiB.
        piece: u64,
    },
    Device {
        path: PathBuf,
        file: File,
        blocks: u64,
    },
}

impl Place {
    fn open(config: &Config) -> Result<Place, WorkloadError> {
        match &config.target {
            Target::Dir(path) => {
                let handle = File::open(path).map_err(|source| WorkloadError::Target {
                    path: path.clone(),
                    source,
                })?;
                let is_dir = handle
                    .metadata()
                    .map_err(|source| WorkloadError::Target {
                        path: path.clone(),
                        source,
                    })?
                    .is_dir();
                if !is_dir {
                    return Err(WorkloadError::NotADirectory { path: path.clone() });
                }
                let size = io::fs_block_size(&handle).map_err(|source| WorkloadError::Target {
                    path: path.clone(),
                    source,
                })?;
                if config.stamped && (size < 1024 || !size.is_power_of_two()) {
                    return Err(WorkloadError::BlockSize {
                        path: path.clone(),
                        size,
                    });
                }
                Ok(Place::Dir {
                    path: path.clone(),
                    handle,
                    piece: size.min(BLOCK),
                })
            }
            Target::Device(path) => {
                let target_err = |source| WorkloadError::Target {
                    path: path.clone(),
                    source,
                };
                // O_DIRECT so a block is on the device when its write returns, which is
                // what a stamp's time claims.
                let mut file = io::open_write(path, false, true).map_err(target_err)?;
                let size = file.seek(SeekFrom::End(0)).map_err(target_err)?;
                if size < BLOCK {
                    return Err(WorkloadError::DeviceTooSmall { path: path.clone() });
                }
                Ok(Place::Device {
                    path: path.clone(),
                    file,
                    blocks: size / BLOCK,
                })
            }
        }
    }

    fn sync(&self) -> stdio::Result<()> {
        match self {
            Place::Dir { handle, .. } => io::syncfs(handle),
            Place::Device { file, .. } => file.sync_all(),
        }
    }
}

/// The write log file.
struct Log {
    path: PathBuf,
    out: BufWriter<File>,
}

/// Counters, the log, the clock and the stop flag: everything a write or a stop check
/// touches, apart from the target itself.
struct Recorder<'c> {
    cfg: &'c Config,
    stop: &'c AtomicBool,
    deadline: Option<Instant>,
    byte_limit: Option<u64>,
    log: Option<Log>,
    buf: BlockBuf,
    next_seq: u64,
    /// Blocks written, and the first and last sequence numbers among them (a failed
    /// write uses sequence numbers too, so these can leave gaps).
    writes: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    ops: u64,
    bytes: u64,
    setup_bytes: u64,
    first_write_ns: Option<u64>,
    last_write_ns: Option<u64>,
    touched: HashSet<String>,
    error_count: u64,
    errors: Vec<String>,
    last_error: Option<String>,
    pace_base: Instant,
    pace_base_amount: u64,
}

/// A running workload: the target and its recorder. Kinds act through its methods.
pub(crate) struct Engine<'c> {
    place: Place,
    rec: Recorder<'c>,
    /// Set for a run paced by the backup's progress (`--paced`).
    pacer: Option<Pacer>,
}

pub(crate) fn run(cfg: &Config, stop: &AtomicBool) -> Result<WorkloadSummary, WorkloadError> {
    let start_ns = io::monotonic_ns();
    let started = Instant::now();
    let place = Place::open(cfg)?;
    let log = match &cfg.log {
        None => None,
        Some(path) => {
            let file = File::create(path).map_err(|source| WorkloadError::Log {
                path: path.clone(),
                source,
            })?;
            Some(Log {
                path: path.clone(),
                out: BufWriter::with_capacity(1 << 16, file),
            })
        }
    };
    let mut engine = Engine {
        place,
        rec: Recorder {
            cfg,
            stop,
            deadline: cfg.duration.map(|d| started + d),
            // fill and fill-to-full size their last file to --bytes themselves.
            byte_limit: match cfg.kind {
                Kind::Fill | Kind::FillToFull => None,
                _ => cfg.bytes,
            },
            log,
            buf: BlockBuf::new(CHUNK_BLOCKS as usize),
            next_seq: 1,
            writes: 0,
            first_seq: None,
            last_seq: None,
            ops: 0,
            bytes: 0,
            setup_bytes: 0,
            first_write_ns: None,
            last_write_ns: None,
            touched: HashSet::new(),
            error_count: 0,
            errors: Vec::new(),
            last_error: None,
            pace_base: started,
            pace_base_amount: 0,
        },
        pacer: cfg
            .paced
            .as_ref()
            .map(|file| Pacer::new(file, cfg.paced_timeout)),
    };
    let reason = engine.drive();
    Ok(engine.finish(reason, start_ns))
}

impl<'c> Engine<'c> {
    pub(crate) fn cfg(&self) -> &'c Config {
        self.rec.cfg
    }

    /// The target directory; a fatal failure on a raw device (argument checks rule that out).
    pub(crate) fn dir(&self) -> Result<&Path, OpFailure> {
        match &self.place {
            Place::Dir { path, .. } => Ok(path),
            Place::Device { .. } => Err(OpFailure::Fatal(format!(
                "kind {} needs a directory, not a device",
                self.rec.cfg.kind
            ))),
        }
    }

    /// Size of the raw device in blocks; a fatal failure for a directory.
    pub(crate) fn device_blocks(&self) -> Result<u64, OpFailure> {
        match &self.place {
            Place::Device { blocks, .. } => Ok(*blocks),
            Place::Dir { .. } => Err(OpFailure::Fatal(format!(
                "kind {} on a directory has no device size",
                self.rec.cfg.kind
            ))),
        }
    }

    /// Writes `w.blocks` data blocks into the file `rel` (relative to the directory).
    pub(crate) fn write_file(
        &mut self,
        rel: &str,
        w: FileWrite,
        op: &'static str,
        phase: Phase,
    ) -> Result<(), OpFailure> {
        self.rec.check()?;
        let path = self.dir()?.join(rel);
        let piece = match &self.place {
            Place::Dir { piece, .. } => *piece,
            Place::Device { .. } => BLOCK,
        };
        self.rec.touched.insert(rel.to_string());
        let stamped = self.rec.cfg.stamped;
        let fail = |what: String, e: stdio::Error| io_failure(op, rel, &what, &e);
        let file = io::open_write(&path, w.create, stamped).map_err(|e| fail("open".into(), e))?;
        if !stamped {
            return self.rec.write_blocks(
                &file,
                rel,
                w.offset,
                w.blocks,
                Placement::Unknown,
                op,
                phase,
            );
        }
        if w.allocate && w.blocks > 0 {
            io::allocate(&path, &file, w.offset, w.blocks * BLOCK).map_err(|e| {
                fail(
                    format!("allocate {} blocks at offset {}", w.blocks, w.offset),
                    e,
                )
            })?;
        }
        let places = fiemap::physical_pieces(&file, w.offset, w.blocks, piece)
            .map_err(|e| OpFailure::Fatal(format!("{op} {rel}: {}", crate::error_chain(&e))))?;
        self.rec.write_blocks(
            &file,
            rel,
            w.offset,
            w.blocks,
            Placement::Mapped {
                places: &places,
                piece,
            },
            op,
            phase,
        )
    }

    /// Writes `blocks` data blocks at block `first` of the raw device.
    pub(crate) fn write_device(
        &mut self,
        first: u64,
        blocks: u64,
        op: &'static str,
        phase: Phase,
    ) -> Result<(), OpFailure> {
        self.rec.check()?;
        match &self.place {
            Place::Device { path, file, .. } => {
                let name = path.display().to_string();
                self.rec.write_blocks(
                    file,
                    &name,
                    first * BLOCK,
                    blocks,
                    Placement::From(first),
                    op,
                    phase,
                )
            }
            Place::Dir { .. } => Err(OpFailure::Fatal(format!(
                "kind {} wrote to a device while the target is a directory",
                self.rec.cfg.kind
            ))),
        }
    }

    /// A metadata operation on `rel` (relative to the directory); `action` gets the full
    /// path. `also` names a second path it touches (a rename's new name).
    pub(crate) fn meta(
        &mut self,
        op: &'static str,
        rel: &str,
        also: Option<&str>,
        action: impl FnOnce(&Path) -> stdio::Result<()>,
    ) -> Result<(), OpFailure> {
        self.rec.check()?;
        let path = self.dir()?.join(rel);
        self.rec.touched.insert(rel.to_string());
        if let Some(other) = also {
            self.rec.touched.insert(other.to_string());
        }
        action(&path).map_err(|e| io_failure(op, rel, "", &e))
    }

    /// Steps the kind until something ends the run.
    fn drive(&mut self) -> StopReason {
        let mut work = match kinds::prepare(self) {
            Ok(work) => work,
            Err(OpFailure::Interrupted(reason)) => return reason,
            Err(
                OpFailure::Failed(message)
                | OpFailure::NoSpace(message)
                | OpFailure::Fatal(message),
            ) => {
                self.rec.record(format!("setup: {message}"));
                return StopReason::Fatal;
            }
        };
        // The first progress says the working set exists: the run is ready to be paced.
        if let Err(reason) = self.report_progress() {
            return reason;
        }
        let mut failures_in_row = 0;
        loop {
            if let Some(reason) = self.rec.limit_reached() {
                return reason;
            }
            if let Some(reason) = self.wait_for_allowance() {
                return reason;
            }
            let failure = match work.step(self) {
                Ok(Step::Finished(reason)) => return reason,
                Ok(Step::Op) => {
                    self.rec.ops += 1;
                    failures_in_row = 0;
                    let after = self.after_op();
                    if let Err(reason) = self.report_progress() {
                        return reason;
                    }
                    match after {
                        Ok(()) => continue,
                        Err(failure) => failure,
                    }
                }
                Err(failure) => failure,
            };
            match failure {
                OpFailure::Interrupted(reason) => return reason,
                OpFailure::NoSpace(_) if self.rec.cfg.kind == Kind::FillToFull => {
                    return StopReason::Full
                }
                OpFailure::Failed(message) | OpFailure::NoSpace(message) => {
                    self.rec.record(message);
                    if let Err(reason) = self.report_progress() {
                        return reason;
                    }
                    failures_in_row += 1;
                    if failures_in_row >= MAX_FAILURES_IN_ROW {
                        return StopReason::Errors;
                    }
                }
                OpFailure::Fatal(message) => {
                    self.rec.record(message);
                    return StopReason::Fatal;
                }
            }
        }
    }

    /// For a paced run: waits until what is done is below the allowance. Some: the run
    /// ends (the final allowance is used, a stop request, or a pacing error, recorded).
    fn wait_for_allowance(&mut self) -> Option<StopReason> {
        let (pacer, rec) = (self.pacer.as_mut()?, &self.rec);
        let done = |unit| rec.done(unit);
        match pacer.wait(done, || rec.interrupted()) {
            Ok(end) => end,
            Err(e) => {
                self.rec
                    .record(format!("paced: {}", crate::error_chain(&e)));
                Some(StopReason::Fatal)
            }
        }
    }

    /// For a paced run: replaces the progress file. Err: it could not be written, so the
    /// harness would wait in vain; the run ends (the error is recorded).
    fn report_progress(&mut self) -> Result<(), StopReason> {
        self.write_progress(None).map_err(|message| {
            self.rec.record(message);
            StopReason::Fatal
        })
    }

    fn write_progress(&self, stopped_by: Option<StopReason>) -> Result<(), String> {
        let Some(pacer) = &self.pacer else {
            return Ok(());
        };
        let rec = &self.rec;
        let allowance = pacer.allowance();
        let progress = PacedProgress {
            allowance,
            done: allowance.unit.map_or(0, |unit| rec.done(unit)),
            ops: rec.ops,
            bytes: rec.bytes,
            writes: rec.writes,
            last_seq: rec.last_seq,
            error_count: rec.error_count,
            last_error: rec.last_error.clone(),
            stopped_by,
        };
        pacer
            .write_progress(&progress)
            .map_err(|e| format!("paced: {}", crate::error_chain(&e)))
    }

    /// The periodic sync and the ops pace.
    fn after_op(&mut self) -> Result<(), OpFailure> {
        if let Some(every) = self.rec.cfg.sync_every {
            if self.rec.ops.is_multiple_of(every) {
                self.place.sync().map_err(|e| {
                    OpFailure::Failed(format!("sync after op {}: {e}", self.rec.ops))
                })?;
            }
        }
        self.rec.pace(false)
    }

    fn finish(mut self, reason: StopReason, start_ns: u64) -> WorkloadSummary {
        // On a signal the harness wants the workload gone, not its page cache flushed.
        if reason != StopReason::Signal {
            if let Err(e) = self.place.sync() {
                let expected = self.rec.cfg.kind == Kind::FillToFull && io::is_no_space(&e);
                if !expected {
                    self.rec.record(format!("final sync: {e}"));
                }
            }
        }
        if let Some(log) = self.rec.log.as_mut() {
            if let Err(e) = log.out.flush() {
                let message = format!("write log {}: {e}", log.path.display());
                self.rec.record(message);
            }
        }
        if let Err(message) = self.write_progress(Some(reason)) {
            self.rec.record(message);
        }
        let paced = self.pacer.as_ref().map(Pacer::allowance);
        let rec = self.rec;
        let cfg = rec.cfg;
        let target = match &cfg.target {
            Target::Dir(p) | Target::Device(p) => p.display().to_string(),
        };
        // Asked for nothing: a zero limit, or a paced run granted nothing.
        let asked_nothing =
            cfg.ops == Some(0) || cfg.bytes == Some(0) || paced.is_some_and(|a| a.amount == 0);
        let failure =
            if rec.error_count > 0 || matches!(reason, StopReason::Errors | StopReason::Fatal) {
                Some(Failure::Errors)
            } else if rec.ops == 0 && !asked_nothing {
                Some(Failure::NothingWritten)
            } else {
                None
            };
        WorkloadSummary {
            kind: cfg.kind,
            seed: cfg.seed,
            writer: cfg.writer,
            stamped: cfg.stamped,
            target,
            ops: rec.ops,
            bytes: rec.bytes,
            writes: rec.writes,
            setup_bytes: rec.setup_bytes,
            first_seq: rec.first_seq,
            last_seq: rec.last_seq,
            first_write_ns: rec.first_write_ns,
            last_write_ns: rec.last_write_ns,
            start_ns,
            end_ns: io::monotonic_ns(),
            files_touched: rec.touched.len() as u64,
            stopped_by: reason,
            error_count: rec.error_count,
            errors: rec.errors,
            paced,
            failure,
        }
    }
}

impl Recorder<'_> {
    /// A stop request that applies mid-operation: the signal or the duration.
    fn interrupted(&self) -> Option<StopReason> {
        if self.stop.load(Ordering::Relaxed) {
            return Some(StopReason::Signal);
        }
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Some(StopReason::Duration),
            _ => None,
        }
    }

    fn check(&self) -> Result<(), OpFailure> {
        self.interrupted()
            .map_or(Ok(()), |r| Err(OpFailure::Interrupted(r)))
    }

    /// Any reason to stop before the next operation.
    fn limit_reached(&self) -> Option<StopReason> {
        if let Some(reason) = self.interrupted() {
            return Some(reason);
        }
        if self.byte_limit.is_some_and(|limit| self.bytes >= limit) {
            return Some(StopReason::Bytes);
        }
        if self.cfg.ops.is_some_and(|limit| self.ops >= limit) {
            return Some(StopReason::Ops);
        }
        None
    }

    fn record(&mut self, message: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERROR_MESSAGES {
            self.errors.push(message.clone());
        }
        self.last_error = Some(message);
    }

    /// What counts against a paced allowance.
    fn done(&self, unit: PaceUnit) -> u64 {
        match unit {
            PaceUnit::Bytes => self.bytes,
            PaceUnit::Ops => self.ops,
        }
    }

    /// Sleeps as long as the rate asks, watching the stop flag. `bytes` says which
    /// amount was just advanced: bytes written, or operations done.
    fn pace(&mut self, bytes: bool) -> Result<(), OpFailure> {
        let (amount, per_sec) = match (self.cfg.rate, bytes) {
            (Some(Rate::BytesPerSec(rate)), true) => (self.bytes, rate),
            (Some(Rate::OpsPerSec(rate)), false) => (self.ops, rate),
            _ => return Ok(()),
        };
        let ahead = amount.saturating_sub(self.pace_base_amount);
        let due = self.pace_base + Duration::from_secs_f64(ahead as f64 / per_sec as f64);
        let now = Instant::now();
        if now > due + MAX_LAG {
            self.pace_base = now;
            self.pace_base_amount = amount;
            return Ok(());
        }
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= due {
                return Ok(());
            }
            std::thread::sleep((due - now).min(STOP_POLL));
        }
    }

    /// Writes `blocks` blocks at byte `offset` of `file` in chunks: fills each chunk with
    /// stamps (or plain data), writes it, counts and logs every block.
    #[allow(clippy::too_many_arguments)]
    fn write_blocks(
        &mut self,
        file: &File,
        name: &str,
        offset: u64,
        blocks: u64,
        placement: Placement<'_>,
        op: &'static str,
        phase: Phase,
    ) -> Result<(), OpFailure> {
        let is_device = matches!(placement, Placement::From(_));
        let mut done = 0;
        while done < blocks {
            self.check()?;
            let n = (blocks - done).min(CHUNK_BLOCKS);
            let first_seq = self.next_seq;
            // One time for the chunk, taken before its stamps are made: the write is
            // issued right after.
            let time_ns = io::monotonic_ns();
            for i in 0..n {
                let block = self.buf.block_mut(i as usize);
                let seq = first_seq + i;
                let (run, writer) = (self.cfg.seed, self.cfg.writer);
                if !self.cfg.stamped {
                    io::fill_plain(block, run, writer, seq);
                    continue;
                }
                let fatal = |what: String| OpFailure::Fatal(format!("{op} {name}: {what}"));
                let pieces = placement
                    .pieces(done + i)
                    .ok_or_else(|| fatal("no device offset known for a stamped block".into()))?;
                if let [whole] = pieces[..] {
                    if whole.is_multiple_of(BLOCK) {
                        let lba = whole / BLOCK;
                        Stamp {
                            lba,
                            seq,
                            time_ns,
                            run,
                            writer,
                        }
                        .write_into(block);
                        continue;
                    }
                }
                let len = block.len() / pieces.len();
                for (part, &place) in block.chunks_exact_mut(len).zip(&pieces) {
                    Piece::at_offset(place, len, seq, time_ns, run, writer)
                        .and_then(|piece| piece.write_into(part))
                        .map_err(|e| fatal(format!("stamp for device byte {place}: {e}")))?;
                }
            }
            self.next_seq += n;
            let at = offset + done * BLOCK;
            if let Err(e) = file.write_all_at(self.buf.bytes(n as usize), at) {
                let what = format!(
                    "write {n} blocks at offset {at} (seq {first_seq}..={})",
                    first_seq + n - 1
                );
                return Err(io_failure(op, name, &what, &e));
            }
            match phase {
                Phase::Main => self.bytes += n * BLOCK,
                Phase::Setup => self.setup_bytes += n * BLOCK,
            }
            self.writes += n;
            self.first_seq.get_or_insert(first_seq);
            self.last_seq = Some(first_seq + n - 1);
            self.first_write_ns.get_or_insert(time_ns);
            self.last_write_ns = Some(time_ns);
            if let Some(log) = self.log.as_mut() {
                for i in 0..n {
                    let record = LogRecord {
                        seq: first_seq + i,
                        lba: placement.lba(done + i),
                        pieces: if self.cfg.stamped {
                            placement.pieces(done + i).unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                        time_ns,
                        file: (!is_device).then(|| name.to_string()),
                        offset: at + i * BLOCK,
                        op: op.to_string(),
                    };
                    let written = serde_json::to_writer(&mut log.out, &record)
                        .map_err(stdio::Error::from)
                        .and_then(|()| log.out.write_all(b"\n"));
                    if let Err(e) = written {
                        return Err(OpFailure::Fatal(format!(
                            "write log {}: {e}",
                            log.path.display()
                        )));
                    }
                }
            }
            done += n;
            if phase == Phase::Main {
                self.pace(true)?;
            }
        }
        Ok(())
    }
}

/// An I/O failure of an operation, ENOSPC told apart.
pub(crate) fn io_failure(op: &str, name: &str, what: &str, e: &stdio::Error) -> OpFailure {
    let message = if what.is_empty() {
        format!("{op} {name}: {e}")
    } else {
        format!("{op} {name}: {what}: {e}")
    };
    if io::is_no_space(e) {
        OpFailure::NoSpace(message)
    } else {
        OpFailure::Failed(message)
    }
}

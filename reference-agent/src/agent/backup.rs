//! One backup run of a set of volumes: arm the snapshots, freeze, take the instant,
//! let the hook listener act, thaw (always), stream every snapshot to the target, go
//! back to incremental tracking, and say honestly what happened.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::discover::{self, Discovery};
use super::freeze::{FreezeError, Frozen};
use super::hook::{self, FrozenVolume, HookMessage};
use crate::bwsnap::{self, Control, CowSize, Source as ModSource, State};
use crate::error_chain;
use crate::sender::{
    BlockExtent, BlockObserver, Committed, NotingSource, SendError, Sender, SenderOptions,
    SessionSpec, BUF_ALIGN,
};
use crate::transport::{Address, Conn};
use crate::wire::{block_digest, BackupKind, BlockDigest, SessionId, HASH_LEN};
use crate::witness::{self, BlockRecord, LiveCompare, SessionEnd, SessionStart, WitnessWriter};

/// Block size of the whole pipeline.
const BLOCK: u64 = bwsnap::BLOCK_SIZE;

/// A volume to back up: its mount point, the id the target stores it under, and its COW
/// file size when it differs from the run's default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeArg {
    pub mount: PathBuf,
    pub id: String,
    pub cow_size: Option<CowSize>,
}

/// A `--volume` argument that does not read as `MOUNT[=ID[,cow=BYTES]]`.
#[derive(Debug, thiserror::Error)]
#[error("volume {text:?}: {problem}")]
pub struct VolumeArgError {
    pub text: String,
    pub problem: String,
}

impl std::str::FromStr for VolumeArg {
    type Err = VolumeArgError;

    /// `MOUNT[=ID[,cow=BYTES]]`
    fn from_str(text: &str) -> Result<VolumeArg, VolumeArgError> {
        let bad = |problem: String| VolumeArgError {
            text: text.to_string(),
            problem,
        };
        let (mount, rest) = match text.split_once('=') {
            Some((m, r)) => (m, Some(r)),
            None => (text, None),
        };
        if !mount.starts_with('/') {
            return Err(bad("the mount point must be an absolute path".into()));
        }
        let mut arg = VolumeArg {
            mount: mount.into(),
            id: mount.to_string(),
            cow_size: None,
        };
        if let Some(rest) = rest {
            let mut parts = rest.split(',');
            let id = parts.next().unwrap_or_default();
            if id.is_empty() {
                return Err(bad("empty id after '='".into()));
            }
            arg.id = id.to_string();
            for opt in parts {
                match opt.split_once('=') {
                    Some(("cow", bytes)) => {
                        let n: u64 = bytes
                            .parse()
                            .map_err(|_| bad(format!("cow={bytes} is not a byte count")))?;
                        arg.cow_size = Some(CowSize::Bytes(n));
                    }
                    _ => return Err(bad(format!("unknown option {opt:?} (allowed: cow=BYTES)"))),
                }
            }
        }
        Ok(arg)
    }
}

/// How to run a backup.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub volumes: Vec<VolumeArg>,
    pub target: Address,
    pub hook: Option<Address>,
    pub witness: Option<Address>,
    pub cow_size: CowSize,
    pub state_dir: PathBuf,
    /// Send every block even when an incremental would do.
    pub force_full: bool,
    pub hook_timeout: Duration,
    pub sender: SenderOptions,
    pub discovery: discover::Options,
    /// Fault for the harness (0 = off): leave 1 in N blocks out of a full backup, as a
    /// buggy agent would; the summary lists them.
    pub fault_skip_blocks: u64,
    /// Fault for the harness: make the freeze of these mount points fail.
    pub fault_freeze_fail: Vec<PathBuf>,
}

/// Why a backup run failed before or around its instant (the summary's `message` is
/// this error's chain).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no volumes given")]
    NoVolumes,
    #[error("{} is not a mounted block device", .0.display())]
    NotMounted(PathBuf),
    #[error(transparent)]
    Control(bwsnap::BwsnapError),
    #[error("arming {mount}")]
    Arm {
        mount: String,
        #[source]
        source: ArmError,
    },
    #[error("freeze failed, every volume was thawed")]
    Freeze(#[source] FreezeError),
    #[error("START on minor {minor}")]
    Start {
        minor: u32,
        #[source]
        source: bwsnap::BwsnapError,
    },
    #[error("hook")]
    HookConnect(#[source] crate::transport::TransportError),
    #[error(transparent)]
    Hook(#[from] hook::HookError),
    #[error("witness")]
    WitnessConnect(#[source] crate::transport::TransportError),
    #[error("witness")]
    WitnessOpen(#[source] witness::WitnessWriteError),
}

/// Why one volume could not be armed (SETUP or TO_SNAPSHOT).
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error(transparent)]
    Info(bwsnap::BwsnapError),
    #[error("TO_SNAPSHOT on minor {minor}{hint}")]
    ToSnapshot {
        minor: u32,
        hint: &'static str,
        #[source]
        source: bwsnap::BwsnapError,
    },
    #[error("no free bwsnap minor")]
    NoFreeMinor,
    #[error("SETUP of {device} as minor {minor}{hint}")]
    Setup {
        device: String,
        minor: u32,
        hint: &'static str,
        #[source]
        source: bwsnap::BwsnapError,
    },
}

/// Why one volume's session failed (its summary's `error` is this error's chain).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Module(bwsnap::BwsnapError),
    #[error("{device} is {size} bytes, not a whole number of 4 KiB blocks")]
    NotWholeBlocks { device: String, size: u64 },
    #[error("session id")]
    SessionId(#[source] io::Error),
    #[error("open {path}")]
    OpenSnapshot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("witness")]
    Witness(#[source] witness::WitnessWriteError),
    #[error("COW overflow: the snapshot's COW file ({cow_size} bytes) filled up during the backup and the snapshot failed")]
    CowOverflow {
        cow_size: u64,
        #[source]
        source: SendError,
    },
    #[error("the snapshot failed with errno {errno}")]
    SnapshotFailed {
        errno: i32,
        #[source]
        source: SendError,
    },
    #[error(transparent)]
    Send(SendError),
    #[error("the backup committed but its witness was lost: {0}")]
    WitnessLost(String),
}

/// What the agent remembers between runs (kept on tmpfs in the guest).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AgentState {
    runs: u64,
    volumes: BTreeMap<String, VolumeState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct VolumeState {
    minor: u32,
    device: String,
    /// The last generation the target committed for this volume.
    last_committed: Option<u32>,
    /// True when the module's changed-block map covers exactly the changes since
    /// `last_committed`'s instant, so an incremental is sound.
    chain_ok: bool,
}

/// The agent's account of one volume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VolumeSummary {
    pub id: String,
    pub mount: String,
    pub device: String,
    pub minor: Option<u32>,
    pub generation: Option<u32>,
    pub kind: Option<String>,
    pub blocks_sent: u64,
    pub bytes_sent: u64,
    pub committed: bool,
    pub cow_overflow: bool,
    pub error: Option<String>,
    pub frames_resent: u64,
    pub reconnects: u64,
    /// Blocks an injected agent fault left out.
    pub fault_sites: Vec<u64>,
    /// Where the time went, in milliseconds: reading the snapshot device, reading the
    /// live device, comparing and recording (witness), and the whole session.
    pub snapshot_read_ms: u64,
    pub witness_ms: u64,
    pub session_ms: u64,
    /// Busy time of the sender's stages (they overlap; the largest set the pace):
    /// reading (snapshot and live reads), hashing and framing, writing to the target.
    #[serde(default)]
    pub read_stage_ms: u64,
    #[serde(default)]
    pub hash_stage_ms: u64,
    #[serde(default)]
    pub send_stage_ms: u64,
}

/// The final JSON summary: the agent's honest word on the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// `ok` only when every volume committed and every filesystem thawed.
    pub result: String,
    pub message: Option<String>,
    pub run: u64,
    /// CLOCK_MONOTONIC ns of the snapshot instant, when one was taken.
    pub instant_ns: Option<u64>,
    pub volumes: Vec<VolumeSummary>,
    pub skipped_devices: Vec<discover::Skipped>,
    pub thaw_errors: Vec<String>,
    pub duration_ms: u64,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }

    /// The summary in the agent's output: its last line that reads as one.
    pub fn from_output(stdout: &str) -> Option<Summary> {
        stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock workloads stamp their writes with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A buffer aligned for O_DIRECT reads (a bounce buffer, and the live reads' buffers).
struct Aligned {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        // Over-allocate and start at the first aligned byte; the vector never grows.
        let bytes = vec![0u8; len + BUF_ALIGN];
        let start = bytes.as_ptr().align_offset(BUF_ALIGN).min(BUF_ALIGN);
        Aligned { bytes, start, len }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + len.min(self.len)]
    }
}

fn is_aligned(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(BUF_ALIGN) && buf.len().is_multiple_of(BUF_ALIGN)
}

/// Reads `buf.len()` bytes at `offset` with pread (retrying short reads).
fn pread_exact(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        // SAFETY: the buffer is valid for the remaining length.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("end of device at byte {}", offset + done as u64),
            ));
        }
        done += n as usize;
    }
    Ok(())
}

fn open_direct(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Writes witness records to a transport with a generous deadline per write.
struct ConnWriter(Conn);

impl io::Write for ConnWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .write_all(buf, Instant::now() + Duration::from_secs(120))
            .map_err(|e| io::Error::other(error_chain(&e)))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Witness = WitnessWriter<io::BufWriter<ConnWriter>>;

/// The snapshot device as a block source, on the sender's reading stage. With a
/// witness, each frame's snapshot read is bracketed by reads of the live device: one
/// right before and, for the blocks that differ from it, one right after. Snapshot data
/// equal to either live read is post-snapshot data; a workload write between the reads
/// cannot make it look like corruption (it would take two writes to the same block
/// within the bracket).
struct SnapshotSource<'a> {
    control: &'a Control,
    minor: u32,
    snapshot: File,
    /// The live device, when a witness is kept.
    live: Option<File>,
    /// The live reads before each snapshot read, issued one frame ahead.
    ahead: Option<LiveAhead>,
    /// For a caller's buffer that O_DIRECT cannot read into.
    bounce: Aligned,
    after: Aligned,
    /// Read sources from the module's trace, by block, not yet noted.
    sources: HashMap<u64, (ModSource, bool)>,
    read_time: Duration,
    witness_time: Duration,
}

/// The live read that comes before a frame's snapshot read, made on a thread of its
/// own while the previous frame is read from the snapshot device: the two devices are
/// read at the same time, and the read still comes before the snapshot read it brackets
/// (earlier than needed, which only widens the bracket).
struct LiveAhead {
    ask: Option<mpsc::Sender<(u64, Aligned)>>,
    got: mpsc::Receiver<(u64, Aligned, bool)>,
    /// The block the read in flight starts at, and its length.
    pending: Option<(u64, usize)>,
    spare: Option<Aligned>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveAhead {
    fn start(live: File, frame_bytes: usize) -> io::Result<LiveAhead> {
        let (ask, asks) = mpsc::channel::<(u64, Aligned)>();
        let (give, got) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bw-agent-live".into())
            .spawn(move || {
                for (first, mut buf) in asks {
                    let len = buf.len;
                    let ok = pread_exact(&live, buf.slice(len), first * BLOCK).is_ok();
                    if give.send((first, buf, ok)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(LiveAhead {
            ask: Some(ask),
            got,
            pending: None,
            spare: Some(Aligned::new(frame_bytes)),
            thread: Some(thread),
        })
    }

    /// Starts reading `len` bytes from block `first` (the next frame, most likely).
    fn prefetch(&mut self, first: u64, len: usize) {
        let Some(mut buf) = self.spare.take() else {
            return;
        };
        if self.pending.is_some() {
            self.spare = Some(buf);
            return;
        }
        buf.len = len.min(buf.bytes.len() - BUF_ALIGN);
        if self
            .ask
            .as_ref()
            .is_some_and(|a| a.send((first, buf)).is_ok())
        {
            self.pending = Some((first, len));
        }
    }

    /// The live read before the snapshot read of `len` bytes from block `first`: the one
    /// in flight if it is that one, else made now on `live`. Hand the buffer back with
    /// [`LiveAhead::recycle`].
    fn take(&mut self, live: &File, first: u64, len: usize) -> (Aligned, bool) {
        if let Some(p) = self.pending.take() {
            if let Ok((at, buf, ok)) = self.got.recv() {
                if p == (first, len) && at == first {
                    return (buf, ok);
                }
                // Read for another frame (the sender went back): read this one now.
                self.spare = Some(buf);
            }
        }
        let mut buf = self.spare.take().unwrap_or_else(|| Aligned::new(len));
        buf.len = len.min(buf.bytes.len() - BUF_ALIGN);
        let ok = buf.len == len && pread_exact(live, buf.slice(len), first * BLOCK).is_ok();
        (buf, ok)
    }

    fn recycle(&mut self, buf: Aligned) {
        if self.spare.is_none() {
            self.spare = Some(buf);
        }
    }
}

impl Drop for LiveAhead {
    fn drop(&mut self) {
        // The thread ends after the read in flight.
        self.ask = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the live device showed around the snapshot read of one block.
struct LiveNote {
    compare: LiveCompare,
    before: BlockDigest,
    after: BlockDigest,
    source: witness::Source,
    fault: bool,
}

impl SnapshotSource<'_> {
    fn drain_trace(&mut self) {
        // Small batches: a frame's reads are a few hundred events, and a buffer for the
        // whole ring (what trace_all asks for) would cost a MiB per frame.
        const BATCH: u32 = 4096;
        while let Ok(batch) = self.control.trace(self.minor, BATCH) {
            let n = batch.events.len();
            for ev in batch.events {
                self.sources.insert(ev.block, (ev.source, ev.fault));
            }
            if n < BATCH as usize {
                break;
            }
        }
    }

    fn read_snapshot(&mut self, first_block: u64, buf: &mut [u8]) -> io::Result<()> {
        let t = Instant::now();
        let read = if is_aligned(buf) {
            pread_exact(&self.snapshot, buf, first_block * BLOCK)
        } else {
            let b = self.bounce.slice(buf.len());
            pread_exact(&self.snapshot, b, first_block * BLOCK).map(|()| buf.copy_from_slice(b))
        };
        self.read_time += t.elapsed();
        read
    }

    /// The live reads around a snapshot read already in `data`, per block.
    fn bracket(
        live: &File,
        first_block: u64,
        data: &[u8],
        before: &[u8],
        after: &mut [u8],
    ) -> Vec<(LiveCompare, BlockDigest, BlockDigest)> {
        let bs = BLOCK as usize;
        let blocks = data.len() / bs;
        let same = |a: &[u8], i: usize| a[i * bs..(i + 1) * bs] == data[i * bs..(i + 1) * bs];
        let differs: Vec<usize> = (0..blocks).filter(|&i| !same(before, i)).collect();
        // Read again, after the snapshot read, the runs of blocks that differed before it.
        let mut after_ok = vec![false; blocks];
        let mut k = 0;
        while k < differs.len() {
            let start = differs[k];
            let mut end = start + 1;
            while k + 1 < differs.len() && differs[k + 1] == end {
                k += 1;
                end += 1;
            }
            k += 1;
            let range = start * bs..end * bs;
            if pread_exact(
                live,
                &mut after[range.clone()],
                (first_block + start as u64) * BLOCK,
            )
            .is_ok()
            {
                after_ok[start..end].iter_mut().for_each(|x| *x = true);
            }
        }
        let zero = [0u8; HASH_LEN];
        (0..blocks)
            .map(|i| {
                let block = &data[i * bs..(i + 1) * bs];
                if same(before, i) {
                    (LiveCompare::Equal, zero, zero)
                } else if !after_ok[i] {
                    (LiveCompare::NotRead, zero, zero)
                } else {
                    let h_before = block_digest(&before[i * bs..(i + 1) * bs]);
                    if &after[i * bs..(i + 1) * bs] == block {
                        (LiveCompare::EqualAfter, h_before, zero)
                    } else {
                        (
                            LiveCompare::Differs,
                            h_before,
                            block_digest(&after[i * bs..(i + 1) * bs]),
                        )
                    }
                }
            })
            .collect()
    }
}

impl NotingSource for SnapshotSource<'_> {
    /// Per block, when a witness is kept.
    type Note = Option<Vec<LiveNote>>;

    fn read_noting(&mut self, first_block: u64, buf: &mut [u8]) -> io::Result<Self::Note> {
        if self.live.is_none() {
            self.read_snapshot(first_block, buf)?;
            return Ok(None);
        }
        let t = Instant::now();
        let len = buf.len();
        let blocks = len / BLOCK as usize;
        let (mut before, before_ok) = match (self.ahead.as_mut(), self.live.as_ref()) {
            (Some(ahead), Some(live)) => ahead.take(live, first_block, len),
            (None, Some(live)) => {
                let mut b = Aligned::new(len);
                let ok = pread_exact(live, b.slice(len), first_block * BLOCK).is_ok();
                (b, ok)
            }
            (_, None) => (Aligned::new(0), false),
        };
        // The next frame's live read runs while this frame is read from the snapshot.
        if let Some(ahead) = self.ahead.as_mut() {
            ahead.prefetch(first_block + blocks as u64, len);
        }
        self.witness_time += t.elapsed();
        let read = self.read_snapshot(first_block, buf);
        let t = Instant::now();
        if let Err(e) = read {
            if let Some(ahead) = self.ahead.as_mut() {
                ahead.recycle(before);
            }
            return Err(e);
        }
        let compares = match (before_ok, self.live.as_ref()) {
            (true, Some(live)) => Self::bracket(
                live,
                first_block,
                buf,
                before.slice(len),
                self.after.slice(len),
            ),
            _ => vec![(LiveCompare::NotRead, [0u8; HASH_LEN], [0u8; HASH_LEN]); blocks],
        };
        if let Some(ahead) = self.ahead.as_mut() {
            ahead.recycle(before);
        }
        self.drain_trace();
        let notes = compares
            .into_iter()
            .enumerate()
            .map(|(i, (compare, before, after))| {
                let (source, fault) = match self.sources.remove(&(first_block + i as u64)) {
                    Some((ModSource::Live, f)) => (witness::Source::Live, f),
                    Some((ModSource::Cow, f)) => (witness::Source::Cow, f),
                    Some((ModSource::Error, f)) => (witness::Source::Error, f),
                    None => (witness::Source::Unknown, false),
                };
                LiveNote {
                    compare,
                    before,
                    after,
                    source,
                    fault,
                }
            })
            .collect();
        self.witness_time += t.elapsed();
        Ok(Some(notes))
    }
}

/// Writes a witness record for every block sent the first time, on the sending stage.
struct WitnessObserver<'a> {
    witness: Option<&'a mut Witness>,
    volume_index: u32,
    generation: u32,
    witness_error: Option<String>,
    recorded: u64,
    witness_time: Duration,
}

impl BlockObserver<Option<Vec<LiveNote>>> for WitnessObserver<'_> {
    fn on_blocks(
        &mut self,
        first_block: u64,
        _data: &[u8],
        hashes: &[BlockDigest],
        note: Option<Vec<LiveNote>>,
        resend: bool,
    ) -> io::Result<()> {
        let (Some(w), Some(notes), false) = (self.witness.as_deref_mut(), note, resend) else {
            return Ok(());
        };
        let t = Instant::now();
        let records: Vec<BlockRecord> = hashes
            .iter()
            .zip(notes)
            .enumerate()
            .map(|(i, (hash, n))| BlockRecord {
                volume_index: self.volume_index,
                generation: self.generation,
                block: first_block + i as u64,
                snapshot: *hash,
                live_before: n.before,
                live_after: n.after,
                live: n.compare,
                source: n.source,
                fault: u8::from(n.fault),
            })
            .collect();
        match w.blocks(&records) {
            Ok(()) => self.recorded += records.len() as u64,
            // A lost witness must not pass for a recorded one.
            Err(e) => {
                self.witness_error.get_or_insert_with(|| error_chain(&e));
            }
        }
        self.witness_time += t.elapsed();
        Ok(())
    }
}

fn load_state(dir: &Path) -> AgentState {
    std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(dir: &Path, state: &AgentState) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(state).expect("serializable"),
    )?;
    std::fs::rename(tmp, dir.join("state.json"))
}

/// A volume as this run sees it.
struct Vol {
    arg: VolumeArg,
    device: PathBuf,
    minor: u32,
    cow_path: PathBuf,
    full: bool,
    generation: u32,
    parent: Option<u32>,
    summary: VolumeSummary,
}

fn free_minor(control: &Control, taken: &[u32]) -> Option<u32> {
    (0..bwsnap::abi::MAX_MINORS).find(|m| {
        !taken.contains(m)
            && control
                .info(*m)
                .map(|i| i.state == State::None)
                .unwrap_or(false)
    })
}

/// What EBUSY from SETUP or TO_SNAPSHOT most likely means.
fn busy_hint(e: &bwsnap::BwsnapError) -> &'static str {
    if e.errno() == Some(libc::EBUSY) {
        " (the device is tracked already, or its filesystem is frozen)"
    } else {
        ""
    }
}

/// Arms one volume (SETUP or TO_SNAPSHOT) and decides full or incremental.
fn arm(
    control: &Control,
    state: &mut AgentState,
    vol: &mut Vol,
    taken: &[u32],
    opts: &BackupOptions,
) -> Result<(), ArmError> {
    let known = state.volumes.get(&vol.arg.id).cloned();
    let device = vol.device.display().to_string();
    if let Some(k) = known.filter(|k| k.device == device) {
        let info = control.info(k.minor).map_err(ArmError::Info)?;
        if info.state == State::Incremental && info.bdev_path == device {
            control
                .to_snapshot(
                    k.minor,
                    &vol.cow_path,
                    vol.arg.cow_size.unwrap_or(opts.cow_size),
                )
                .map_err(|source| ArmError::ToSnapshot {
                    minor: k.minor,
                    hint: busy_hint(&source),
                    source,
                })?;
            vol.minor = k.minor;
            vol.full = opts.force_full || !k.chain_ok || k.last_committed.is_none();
            vol.parent = k.last_committed;
            vol.generation = k.last_committed.map_or(1, |g| g + 1);
            return Ok(());
        }
        if info.state != State::None {
            // Left over from an interrupted run: start afresh with a full backup.
            let _ = control.destroy(k.minor);
        }
    }
    let minor = free_minor(control, taken).ok_or(ArmError::NoFreeMinor)?;
    control
        .setup(
            minor,
            &vol.device,
            &vol.cow_path,
            vol.arg.cow_size.unwrap_or(opts.cow_size),
        )
        .map_err(|source| ArmError::Setup {
            device: device.clone(),
            minor,
            hint: busy_hint(&source),
            source,
        })?;
    let last = state
        .volumes
        .get(&vol.arg.id)
        .and_then(|k| k.last_committed);
    vol.minor = minor;
    vol.full = true;
    vol.parent = last;
    vol.generation = last.map_or(1, |g| g + 1);
    state.volumes.insert(
        vol.arg.id.clone(),
        VolumeState {
            minor,
            device,
            last_committed: last,
            chain_ok: false,
        },
    );
    Ok(())
}

fn module_info() -> witness::ModuleInfo {
    let base = Path::new("/sys/module/bwsnap");
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mut params = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(base.join("parameters")) {
        for e in dir.flatten() {
            params.insert(e.file_name().to_string_lossy().into_owned(), read(e.path()));
        }
    }
    witness::ModuleInfo {
        name: "bwsnap".into(),
        version: read(base.join("version")),
        srcversion: read(base.join("srcversion")),
        params,
    }
}

/// Streams one armed-and-started volume to the target.
fn send_volume(
    control: &Control,
    sender: &mut Sender<Address>,
    vol: &mut Vol,
    index: u32,
    instant_ns: u64,
    witness: Option<&mut Witness>,
    skip_every: u64,
) -> Result<Committed, VolumeError> {
    let info = control.info(vol.minor).map_err(VolumeError::Module)?;
    if info.dev_size % BLOCK != 0 {
        return Err(VolumeError::NotWholeBlocks {
            device: vol.device.display().to_string(),
            size: info.dev_size,
        });
    }
    let blocks = info.dev_size / BLOCK;
    let extents: Vec<BlockExtent> = if vol.full && skip_every > 0 {
        // The injected agent bug: every `skip_every`-th block is never sent.
        let mut ex = Vec::new();
        let mut start = 0;
        for b in (skip_every - 1..blocks).step_by(skip_every as usize) {
            if b > start {
                ex.push(BlockExtent {
                    start,
                    count: b - start,
                });
            }
            vol.summary.fault_sites.push(b);
            start = b + 1;
        }
        if start < blocks {
            ex.push(BlockExtent {
                start,
                count: blocks - start,
            });
        }
        ex
    } else if vol.full {
        vec![BlockExtent {
            start: 0,
            count: blocks,
        }]
    } else {
        let map = control.read_map(vol.minor).map_err(VolumeError::Module)?;
        let mut ex: Vec<BlockExtent> = map
            .ranges()
            .into_iter()
            .map(|(a, b)| BlockExtent {
                start: a,
                count: b - a + 1,
            })
            .collect();
        if ex.is_empty() {
            // Nothing changed: one unchanged block keeps the session non-empty, and
            // sending it is harmless (it is the block as of the instant).
            ex.push(BlockExtent { start: 0, count: 1 });
        }
        ex
    };
    let session = SessionId::random().map_err(VolumeError::SessionId)?;
    let kind = match (vol.full, vol.parent) {
        (false, Some(parent)) => BackupKind::Incremental { parent },
        _ => BackupKind::Full,
    };
    vol.summary.kind = Some(if vol.full { "full" } else { "incremental" }.into());
    vol.summary.generation = Some(vol.generation);
    let spec = SessionSpec {
        session,
        volume_id: vol.arg.id.clone(),
        volume_size: info.dev_size,
        block_size: BLOCK as u32,
        generation: vol.generation,
        kind,
        extents,
    };
    let snap_path = bwsnap::snapshot_device(vol.minor);
    let snapshot = open_direct(&snap_path).map_err(|source| VolumeError::OpenSnapshot {
        path: snap_path.clone(),
        source,
    })?;
    let mut witness = witness;
    if let Some(w) = witness.as_deref_mut() {
        let cow = control.cow_extents(vol.minor).unwrap_or_default();
        let start = SessionStart {
            volume_index: index,
            volume_id: vol.arg.id.clone(),
            device: vol.device.display().to_string(),
            snapshot_device: Some(snap_path.display().to_string()),
            generation: vol.generation,
            kind: if vol.full {
                witness::WitnessKind::Full
            } else {
                witness::WitnessKind::Incremental
            },
            parent_generation: if vol.full { None } else { vol.parent },
            block_size: BLOCK as u32,
            volume_size: info.dev_size,
            session: session.to_string(),
            instant_monotonic_ns: instant_ns,
            cow_extents: cow
                .iter()
                .map(|e| witness::ByteRange {
                    offset: e.physical,
                    len: e.length,
                })
                .collect(),
            module: module_info(),
        };
        w.session_start(&start).map_err(VolumeError::Witness)?;
    }
    let has_witness = witness.is_some();
    // Buffers for a whole frame of live data (frames hold at most 1 MiB).
    let live_buf = if has_witness { 1 << 20 } else { 0 };
    let live = if has_witness {
        open_direct(&vol.device).ok()
    } else {
        None
    };
    // Without a second descriptor for the read-ahead, every live read is made in turn.
    let ahead = live
        .as_ref()
        .and_then(|l| l.try_clone().ok())
        .and_then(|l| LiveAhead::start(l, live_buf).ok());
    let mut source = SnapshotSource {
        control,
        minor: vol.minor,
        snapshot,
        live,
        ahead,
        bounce: Aligned::new(1 << 20),
        after: Aligned::new(live_buf),
        sources: HashMap::new(),
        read_time: Duration::ZERO,
        witness_time: Duration::ZERO,
    };
    let mut observer = WitnessObserver {
        witness,
        volume_index: index,
        generation: vol.generation,
        witness_error: None,
        recorded: 0,
        witness_time: Duration::ZERO,
    };
    let result = sender.send_observed(&spec, &mut source, &mut observer);
    let stats = sender.stats().clone();
    vol.summary.snapshot_read_ms = source.read_time.as_millis() as u64;
    vol.summary.witness_ms = (source.witness_time + observer.witness_time).as_millis() as u64;
    vol.summary.session_ms = stats.duration.as_millis() as u64;
    vol.summary.read_stage_ms = stats.read_busy.as_millis() as u64;
    vol.summary.hash_stage_ms = stats.hash_busy.as_millis() as u64;
    vol.summary.send_stage_ms = stats.write_busy.as_millis() as u64;
    vol.summary.blocks_sent = stats.blocks;
    vol.summary.bytes_sent = stats.data_bytes_sent;
    vol.summary.frames_resent = stats.frames_resent;
    vol.summary.reconnects = stats.reconnects;
    let witness_error = observer.witness_error.take();
    let recorded = observer.recorded;
    let result = result.map_err(|e| describe_send_error(control, vol.minor, e, &mut vol.summary));
    if let Some(w) = observer.witness.as_deref_mut() {
        let end = SessionEnd {
            volume_index: index,
            generation: vol.generation,
            blocks: recorded,
            result: if result.is_ok() {
                witness::SessionVerdict::Committed
            } else {
                witness::SessionVerdict::Failed
            },
            message: result.as_ref().err().map(|e| error_chain(e)),
        };
        let _ = w.session_end(&end).and_then(|()| w.flush());
    }
    match (result, witness_error) {
        (Ok(c), None) => Ok(c),
        (Ok(_), Some(w)) => Err(VolumeError::WitnessLost(w)),
        (Err(e), _) => Err(e),
    }
}

/// Names a failed session: a snapshot read error after a COW overflow is the overflow.
fn describe_send_error(
    control: &Control,
    minor: u32,
    err: SendError,
    summary: &mut VolumeSummary,
) -> VolumeError {
    if let Ok(info) = control.info(minor) {
        if info.error == -libc::ENOSPC {
            summary.cow_overflow = true;
            return VolumeError::CowOverflow {
                cow_size: info.cow_size,
                source: err,
            };
        }
        if info.error != 0 {
            return VolumeError::SnapshotFailed {
                errno: -info.error,
                source: err,
            };
        }
    }
    VolumeError::Send(err)
}

/// Runs one backup. Never panics on a product failure: the summary says what happened.
pub fn backup(opts: &BackupOptions) -> Summary {
    let started = Instant::now();
    let mut summary = Summary {
        result: "failed".into(),
        ..Summary::default()
    };
    let mut state = load_state(&opts.state_dir);
    state.runs += 1;
    summary.run = state.runs;
    let result = run(opts, &mut state, &mut summary);
    if let Err(e) = save_state(&opts.state_dir, &state) {
        summary
            .thaw_errors
            .push(format!("cannot save agent state: {e}"));
    }
    match result {
        Ok(()) if summary.thaw_errors.is_empty() && summary.volumes.iter().all(|v| v.committed) => {
            summary.result = "ok".into();
        }
        Ok(()) => {
            let failed: Vec<String> = summary
                .volumes
                .iter()
                .filter(|v| !v.committed)
                .map(|v| {
                    format!(
                        "{}: {}",
                        v.id,
                        v.error.clone().unwrap_or_else(|| "not committed".into())
                    )
                })
                .chain(summary.thaw_errors.iter().cloned())
                .collect();
            summary.message = Some(failed.join("; "));
        }
        Err(e) => summary.message = Some(error_chain(&e)),
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary
}

fn run(
    opts: &BackupOptions,
    state: &mut AgentState,
    summary: &mut Summary,
) -> Result<(), BackupError> {
    if opts.volumes.is_empty() {
        return Err(BackupError::NoVolumes);
    }
    // Discovery finds each mount's device without touching dead devices.
    let found: Discovery = discover::discover(&opts.discovery);
    summary.skipped_devices = found.skipped.clone();
    let mut vols = Vec::new();
    for arg in &opts.volumes {
        let dev = found
            .devices
            .iter()
            .find(|d| d.mount_points.iter().any(|m| m == &arg.mount))
            .ok_or_else(|| BackupError::NotMounted(arg.mount.clone()))?;
        vols.push(Vol {
            arg: arg.clone(),
            device: dev.path.clone(),
            minor: 0,
            cow_path: arg.mount.join(format!(".bwsnap-cow-{}", state.runs)),
            full: true,
            generation: 1,
            parent: None,
            summary: VolumeSummary {
                id: arg.id.clone(),
                mount: arg.mount.display().to_string(),
                device: dev.path.display().to_string(),
                ..VolumeSummary::default()
            },
        });
    }
    let control = Control::open().map_err(BackupError::Control)?;

    // Arm every volume while the filesystems are still writable (the COW file is
    // created and preallocated now).
    let mut taken = Vec::new();
    for i in 0..vols.len() {
        remove_leftover(&vols[i].cow_path);
        if let Err(e) = arm(&control, state, &mut vols[i], &taken, opts) {
            vols[i].summary.error = Some(error_chain(&e));
            let mount = vols[i].arg.mount.display().to_string();
            // Volumes armed so far go back to tracking; their chains are broken.
            back_to_incremental(&control, &vols[..i]);
            for v in &vols {
                if let Some(s) = state.volumes.get_mut(&v.arg.id) {
                    s.chain_ok = false;
                }
            }
            summary.volumes = vols.iter().map(|v| v.summary.clone()).collect();
            return Err(BackupError::Arm { mount, source: e });
        }
        taken.push(vols[i].minor);
        vols[i].summary.minor = Some(vols[i].minor);
    }
    // From here on the module's map no longer covers "since the last commit" unless this
    // run commits; it is set back to true per volume on success.
    for v in &vols {
        if let Some(s) = state.volumes.get_mut(&v.arg.id) {
            s.chain_ok = false;
        }
    }

    // The instant: sync, freeze all, START all, hook, thaw all. Only the backed-up
    // filesystems are synced: a global sync(2) also waits on every other device, and a
    // device that never answers would hang the agent right there.
    for vol in &vols {
        if let Ok(dir) = File::open(&vol.arg.mount) {
            // SAFETY: syncfs on a descriptor we own.
            unsafe { libc::syncfs(dir.as_raw_fd()) };
        }
    }
    let mounts: Vec<PathBuf> = vols.iter().map(|v| v.arg.mount.clone()).collect();
    let frozen = match Frozen::freeze_all(&mounts, &opts.fault_freeze_fail) {
        Ok(f) => f,
        Err(e) => {
            back_to_incremental(&control, &vols);
            summary.volumes = vols.iter().map(|v| v.summary.clone()).collect();
            return Err(BackupError::Freeze(e));
        }
    };
    let mut instant_result = Ok(());
    for vol in &vols {
        if let Err(source) = control.start(vol.minor) {
            instant_result = Err(BackupError::Start {
                minor: vol.minor,
                source,
            });
            break;
        }
    }
    let instant_ns = monotonic_ns();
    if instant_result.is_ok() {
        summary.instant_ns = Some(instant_ns);
        if let Some(addr) = &opts.hook {
            instant_result = announce(addr, state.runs, instant_ns, &vols, opts.hook_timeout);
        }
    }
    let thaw_errors: Vec<FreezeError> = frozen.thaw_all();
    summary.thaw_errors = thaw_errors.iter().map(|e| error_chain(e)).collect();
    if let Err(e) = instant_result {
        back_to_incremental(&control, &vols);
        summary.volumes = vols.iter().map(|v| v.summary.clone()).collect();
        return Err(e);
    }

    // Stream every snapshot.
    let mut witness = match &opts.witness {
        Some(addr) => Some(open_witness(addr)?),
        None => None,
    };
    let mut sender = Sender::new(opts.target.clone(), opts.sender.clone());
    for (i, vol) in vols.iter_mut().enumerate() {
        match send_volume(
            &control,
            &mut sender,
            vol,
            i as u32,
            instant_ns,
            witness.as_mut(),
            opts.fault_skip_blocks,
        ) {
            Ok(c) => {
                vol.summary.committed = c.generation == vol.generation;
                if !vol.summary.committed {
                    vol.summary.error = Some(format!(
                        "the target committed generation {} instead of {}",
                        c.generation, vol.generation
                    ));
                }
            }
            Err(e) => vol.summary.error = Some(error_chain(&e)),
        }
    }
    sender.close();
    if let Some(mut w) = witness {
        let _ = w.flush();
    }
    back_to_incremental(&control, &vols);
    for vol in &vols {
        if let Some(s) = state.volumes.get_mut(&vol.arg.id) {
            if vol.summary.committed {
                s.last_committed = Some(vol.generation);
                s.chain_ok = true;
            }
        }
    }
    summary.volumes = vols.iter().map(|v| v.summary.clone()).collect();
    Ok(())
}

/// Removes a COW file if there is one. Only then: unlink(2) waits for a frozen
/// filesystem even when the name does not exist, and someone else may have frozen it.
fn remove_leftover(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok() {
        let _ = std::fs::remove_file(path);
    }
}

/// Drops each snapshot (keeping change tracking) and removes its COW file.
fn back_to_incremental(control: &Control, vols: &[Vol]) {
    for vol in vols {
        if let Ok(info) = control.info(vol.minor) {
            if matches!(info.state, State::Snapshot | State::Armed) {
                if info.state == State::Armed {
                    // Never started: take a throwaway instant so the minor can drop its
                    // COW file; the chain is already marked broken.
                    let _ = control.start(vol.minor);
                }
                let _ = control.to_incremental(vol.minor);
            }
        }
        remove_leftover(&vol.cow_path);
    }
}

fn announce(
    addr: &Address,
    run: u64,
    instant_ns: u64,
    vols: &[Vol],
    timeout: Duration,
) -> Result<(), BackupError> {
    let mut conn =
        Conn::connect(addr, Duration::from_secs(30)).map_err(BackupError::HookConnect)?;
    let msg = HookMessage::Frozen {
        run,
        instant_ns,
        volumes: vols
            .iter()
            .map(|v| FrozenVolume {
                id: v.arg.id.clone(),
                device: v.device.display().to_string(),
                mount_point: v.arg.mount.display().to_string(),
                minor: v.minor,
            })
            .collect(),
    };
    Ok(hook::announce(&mut conn, &msg, timeout)?)
}

fn open_witness(addr: &Address) -> Result<Witness, BackupError> {
    let conn = Conn::connect(addr, Duration::from_secs(30)).map_err(BackupError::WitnessConnect)?;
    WitnessWriter::new(io::BufWriter::with_capacity(1 << 20, ConnWriter(conn)))
        .map_err(BackupError::WitnessOpen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn block(v: u8) -> Vec<u8> {
        vec![v; BLOCK as usize]
    }

    /// The live reads around a snapshot read, with a file standing in for the live
    /// device: what it holds is what the read after the snapshot read sees.
    #[test]
    fn the_bracket_tells_leaked_data_from_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let live = File::create(dir.path().join("live")).unwrap();
        let first = 10u64;
        // Snapshot data, the live read before it, and the live disk after it, per block:
        // 0: before equals the snapshot (no read after needed);
        // 1: the workload wrote the block between before and after, and the snapshot
        //    holds that later write (data from the future, seen by the read after);
        // 2: the snapshot equals neither (corruption);
        // 3: before equals the snapshot, the disk moved on since.
        let snap = [block(1), block(2), block(3), block(4)].concat();
        let before = [block(1), block(9), block(8), block(4)].concat();
        let after = [block(7), block(2), block(6), block(5)];
        for (i, b) in after.iter().enumerate() {
            live.write_all_at(b, (first + i as u64) * BLOCK).unwrap();
        }
        let live = File::open(dir.path().join("live")).unwrap();
        let mut after_buf = vec![0u8; snap.len()];
        let got = SnapshotSource::bracket(&live, first, &snap, &before, &mut after_buf);
        let zero = [0u8; HASH_LEN];
        assert_eq!(
            got,
            vec![
                (LiveCompare::Equal, zero, zero),
                (LiveCompare::EqualAfter, block_digest(&block(9)), zero),
                (
                    LiveCompare::Differs,
                    block_digest(&block(8)),
                    block_digest(&block(6))
                ),
                (LiveCompare::Equal, zero, zero),
            ]
        );
        // Only blocks 1 and 2 were read again.
        assert_eq!(&after_buf[..BLOCK as usize], &[0u8; BLOCK as usize][..]);
        assert_eq!(&after_buf[3 * BLOCK as usize..], &[0u8; BLOCK as usize][..]);
    }

    /// The read-ahead hands back the frame it read when that frame is asked for, and
    /// reads any other frame on the spot (after the sender went back).
    #[test]
    fn live_reads_ahead_serve_the_frame_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live");
        let f = File::create(&path).unwrap();
        for b in 0..16u64 {
            f.write_all_at(&block(b as u8 + 1), b * BLOCK).unwrap();
        }
        let live = File::open(&path).unwrap();
        let mut ahead = LiveAhead::start(live.try_clone().unwrap(), 4 * BLOCK as usize).unwrap();
        let len = 2 * BLOCK as usize;
        ahead.prefetch(4, len);
        let (mut b, ok) = ahead.take(&live, 4, len);
        assert!(ok);
        assert_eq!(b.slice(len), &[block(5), block(6)].concat()[..]);
        ahead.recycle(b);
        // Asked for another frame than the one in flight.
        ahead.prefetch(6, len);
        let (mut b, ok) = ahead.take(&live, 1, len);
        assert!(ok);
        assert_eq!(b.slice(len), &[block(2), block(3)].concat()[..]);
        ahead.recycle(b);
        // Past the end of the device: not read.
        let (_, ok) = ahead.take(&live, 15, len);
        assert!(!ok);
    }

    /// A live device that cannot be read after the snapshot read leaves the blocks
    /// that differed before it "not read": no guess.
    #[test]
    fn a_failed_read_after_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        // An empty file: every read past its end fails.
        let live = File::create(dir.path().join("live")).unwrap();
        let snap = [block(1), block(2)].concat();
        let before = [block(1), block(3)].concat();
        let mut after_buf = vec![0u8; snap.len()];
        let got = SnapshotSource::bracket(&live, 0, &snap, &before, &mut after_buf);
        let zero = [0u8; HASH_LEN];
        assert_eq!(
            got,
            vec![
                (LiveCompare::Equal, zero, zero),
                (LiveCompare::NotRead, zero, zero)
            ]
        );
    }
}

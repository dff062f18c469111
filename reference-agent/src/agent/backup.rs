//! One backup run of a set of volumes: arm the snapshots, freeze, take the instant,
//! let the hook listener act, thaw (always), stream every snapshot to the target, go
//! back to incremental tracking, and say honestly what happened.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::discover::{self, Discovery};
use super::freeze::{FreezeError, Frozen};
use super::hook::{self, FrozenVolume, HookMessage};
use crate::bwsnap::{self, Control, CowSize, Source as ModSource, State};
use crate::error_chain;
use crate::sender::{
    BlockExtent, BlockSource, Committed, SendError, Sender, SenderOptions, SessionSpec,
};
use crate::transport::{Address, Conn};
use crate::wire::{BackupKind, SessionId};
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
    /// live device and comparing (witness), and the whole session.
    pub snapshot_read_ms: u64,
    pub witness_ms: u64,
    pub session_ms: u64,
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

/// A buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout =
            std::alloc::Layout::from_size_align(len.max(4096), 4096).expect("valid layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
        Aligned { ptr, len }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.len);
        // SAFETY: ptr is valid for self.len bytes and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout =
            std::alloc::Layout::from_size_align(self.len.max(4096), 4096).expect("valid layout");
        // SAFETY: allocated with this layout in new().
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
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

/// The snapshot device as a block source; with a witness, every block sent is compared
/// with the live device right after it was read.
struct SnapshotSource<'a> {
    control: &'a Control,
    minor: u32,
    snapshot: File,
    live: Option<File>,
    buf: Aligned,
    live_buf: Aligned,
    witness: Option<&'a mut Witness>,
    volume_index: u32,
    generation: u32,
    /// Read sources of the blocks read last, from the module's trace.
    sources: HashMap<u64, (ModSource, bool)>,
    witness_error: Option<String>,
    recorded: u64,
    read_time: Duration,
    witness_time: Duration,
}

impl SnapshotSource<'_> {
    fn drain_trace(&mut self) {
        if let Ok(batch) = self.control.trace_all(self.minor) {
            for ev in batch.events {
                self.sources.insert(ev.block, (ev.source, ev.fault));
            }
        }
    }
}

impl BlockSource for SnapshotSource<'_> {
    fn read_blocks(&mut self, first_block: u64, buf: &mut [u8]) -> io::Result<()> {
        let t = Instant::now();
        let aligned = self.buf.slice(buf.len());
        let read = pread_exact(&self.snapshot, aligned, first_block * BLOCK);
        self.read_time += t.elapsed();
        read?;
        buf.copy_from_slice(aligned);
        if self.witness.is_some() {
            self.drain_trace();
        }
        Ok(())
    }

    fn on_blocks(
        &mut self,
        first_block: u64,
        data: &[u8],
        hashes: &[[u8; 32]],
        resend: bool,
    ) -> io::Result<()> {
        if resend || self.witness.is_none() {
            return Ok(());
        }
        let t = Instant::now();
        // Read the same blocks from the live device right after the snapshot read.
        let live_ok = match &self.live {
            Some(live) => {
                let lb = self.live_buf.slice(data.len());
                pread_exact(live, lb, first_block * BLOCK).is_ok()
            }
            None => false,
        };
        let live_data: &[u8] = self.live_buf.slice(data.len());
        let mut records = Vec::with_capacity(hashes.len());
        for (i, hash) in hashes.iter().enumerate() {
            let block = first_block + i as u64;
            let range = i * BLOCK as usize..(i + 1) * BLOCK as usize;
            let (live, live_sha256) = if !live_ok {
                (LiveCompare::NotRead, [0u8; 32])
            } else if data[range.clone()] == live_data[range.clone()] {
                // Equal bytes need no second hash.
                (LiveCompare::Equal, [0u8; 32])
            } else {
                use sha2::Digest;
                (
                    LiveCompare::Differs,
                    sha2::Sha256::digest(&live_data[range]).into(),
                )
            };
            let (source, fault) = match self.sources.remove(&block) {
                Some((ModSource::Live, f)) => (witness::Source::Live, f),
                Some((ModSource::Cow, f)) => (witness::Source::Cow, f),
                Some((ModSource::Error, f)) => (witness::Source::Error, f),
                None => (witness::Source::Unknown, false),
            };
            records.push(BlockRecord {
                volume_index: self.volume_index,
                generation: self.generation,
                block,
                snapshot_sha256: *hash,
                live_sha256,
                live,
                source,
                fault: u8::from(fault),
            });
        }
        if let Some(w) = self.witness.as_deref_mut() {
            for r in &records {
                if let Err(e) = w.block(r) {
                    // A lost witness must not pass for a recorded one.
                    self.witness_error.get_or_insert_with(|| error_chain(&e));
                    break;
                }
            }
        }
        self.recorded += records.len() as u64;
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
    let mut source = SnapshotSource {
        control,
        minor: vol.minor,
        snapshot,
        live: if has_witness {
            open_direct(&vol.device).ok()
        } else {
            None
        },
        buf: Aligned::new(1 << 20),
        live_buf: Aligned::new(1 << 20),
        witness,
        volume_index: index,
        generation: vol.generation,
        sources: HashMap::new(),
        witness_error: None,
        recorded: 0,
        read_time: Duration::ZERO,
        witness_time: Duration::ZERO,
    };
    let result = sender.send(&spec, &mut source);
    let stats = sender.stats().clone();
    vol.summary.snapshot_read_ms = source.read_time.as_millis() as u64;
    vol.summary.witness_ms = source.witness_time.as_millis() as u64;
    vol.summary.session_ms = stats.duration.as_millis() as u64;
    vol.summary.blocks_sent = stats.blocks;
    vol.summary.bytes_sent = stats.data_bytes_sent;
    vol.summary.frames_resent = stats.frames_resent;
    vol.summary.reconnects = stats.reconnects;
    let witness_error = source.witness_error.take();
    let recorded = source.recorded;
    let result = result.map_err(|e| describe_send_error(control, vol.minor, e, &mut vol.summary));
    if let Some(w) = source.witness.as_deref_mut() {
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

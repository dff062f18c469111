//! The Rust side of the bwsnap kernel module's ABI: a mirror of `kmod/bwsnap_abi.h`
//! (module [`abi`]: `#[repr(C)]` structures, constants, ioctl numbers) and safe wrappers
//! over the control device (`/dev/bwsnap-ctl`) for the agent and `bwsnap-ctl`.
//!
//! The header is the one definition; `tests/abi.rs` compiles a C probe against it and
//! checks every size, field offset and ioctl number here. Change both together.
//!
//! errno values the module returns, as [`BwsnapError::Ioctl`] sources:
//! `EPERM` (no CAP_SYS_ADMIN), `EINVAL` (bad argument, flags not 0, minor out of
//! range, call not allowed in the current state), `ENOENT` (minor not set up, or a
//! path that does not exist), `EBUSY` (minor in use, device already tracked), `EEXIST`
//! / `EISDIR` (COW path exists / is a directory), `EXDEV` (COW file not on the
//! tracked device), `ENOSPC` (no room for the COW file), `EOPNOTSUPP` (COW file on a
//! filesystem other than ext2/3/4 or xfs), `EFAULT` (bad user pointer).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The C ABI, field for field. Kept apart from the safe API so that `tests/abi.rs`
/// can check it against the header.
pub mod abi {
    pub const ABI_VERSION: u32 = 1;
    pub const CTL_NAME: &str = "bwsnap-ctl";
    pub const DEV_PREFIX: &str = "bwsnap";
    pub const BLOCK_SHIFT: u32 = 12;
    pub const BLOCK_SIZE: u32 = 1 << BLOCK_SHIFT;
    pub const MAX_MINORS: u32 = 32;
    pub const COW_SIZE_DEFAULT: u64 = !0;
    pub const INFO_PATH_MAX: usize = 128;

    pub const STATE_NONE: u32 = 0;
    pub const STATE_ARMED: u32 = 1;
    pub const STATE_SNAPSHOT: u32 = 2;
    pub const STATE_INCREMENTAL: u32 = 3;

    pub const SRC_LIVE: u32 = 1;
    pub const SRC_COW: u32 = 2;
    pub const SRC_ERROR: u32 = 3;

    pub const TRACE_FAULT: u32 = 1 << 0;

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Setup {
        pub bdev_path: u64,
        pub cow_path: u64,
        pub cow_size: u64,
        pub minor: u32,
        pub flags: u32,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ToSnapshot {
        pub cow_path: u64,
        pub cow_size: u64,
        pub minor: u32,
        pub flags: u32,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Minor {
        pub minor: u32,
        pub flags: u32,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Info {
        pub minor: u32,
        pub state: u32,
        pub error: i32,
        pub abi_version: u32,
        pub seq: u64,
        pub uuid: [u8; 16],
        pub dev_size: u64,
        pub cow_size: u64,
        pub cow_used: u64,
        pub changed_blocks: u64,
        pub tracking_blocks: u64,
        pub cow_copies: u64,
        pub cow_reads: u64,
        pub live_reads: u64,
        pub tracked_writes: u64,
        pub cow_extents: u32,
        pub reserved: u32,
        pub bdev_path: [u8; INFO_PATH_MAX],
    }

    impl Default for Info {
        fn default() -> Self {
            Info {
                minor: 0,
                state: 0,
                error: 0,
                abi_version: 0,
                seq: 0,
                uuid: [0; 16],
                dev_size: 0,
                cow_size: 0,
                cow_used: 0,
                changed_blocks: 0,
                tracking_blocks: 0,
                cow_copies: 0,
                cow_reads: 0,
                live_reads: 0,
                tracked_writes: 0,
                cow_extents: 0,
                reserved: 0,
                bdev_path: [0; INFO_PATH_MAX],
            }
        }
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Map {
        pub minor: u32,
        pub flags: u32,
        pub start_block: u64,
        pub nr_blocks: u64,
        pub buf: u64,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Extent {
        pub physical: u64,
        pub length: u64,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Extents {
        pub minor: u32,
        pub count: u32,
        pub buf: u64,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct TraceEvent {
        pub block: u64,
        pub source: u32,
        pub flags: u32,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Trace {
        pub minor: u32,
        pub count: u32,
        pub buf: u64,
        pub dropped: u64,
    }

    // asm-generic/ioctl.h, as on x86-64.
    const IOC_NRBITS: u32 = 8;
    const IOC_TYPEBITS: u32 = 8;
    const IOC_SIZEBITS: u32 = 14;
    const IOC_NRSHIFT: u32 = 0;
    const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
    const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
    const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
    const IOC_WRITE: u32 = 1;
    const IOC_READ: u32 = 2;

    const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
        (dir << IOC_DIRSHIFT)
            | ((size as u32) << IOC_SIZESHIFT)
            | (IOC_MAGIC << IOC_TYPESHIFT)
            | (nr << IOC_NRSHIFT)
    }

    pub const IOC_MAGIC: u32 = 0xbb;
    pub const IOC_SETUP: u32 = ioc(IOC_WRITE, 1, size_of::<Setup>());
    pub const IOC_START: u32 = ioc(IOC_WRITE, 2, size_of::<Minor>());
    pub const IOC_TO_INCREMENTAL: u32 = ioc(IOC_WRITE, 3, size_of::<Minor>());
    pub const IOC_TO_SNAPSHOT: u32 = ioc(IOC_WRITE, 4, size_of::<ToSnapshot>());
    pub const IOC_DESTROY: u32 = ioc(IOC_WRITE, 5, size_of::<Minor>());
    pub const IOC_INFO: u32 = ioc(IOC_READ | IOC_WRITE, 6, size_of::<Info>());
    pub const IOC_READ_MAP: u32 = ioc(IOC_READ | IOC_WRITE, 7, size_of::<Map>());
    pub const IOC_COW_EXTENTS: u32 = ioc(IOC_READ | IOC_WRITE, 8, size_of::<Extents>());
    pub const IOC_TRACE: u32 = ioc(IOC_READ | IOC_WRITE, 9, size_of::<Trace>());
}

/// Where the control device lives.
pub fn ctl_path() -> PathBuf {
    Path::new("/dev").join(abi::CTL_NAME)
}

/// The snapshot device of `minor`, e.g. `/dev/bwsnap0`.
pub fn snapshot_device(minor: u32) -> PathBuf {
    PathBuf::from(format!("/dev/{}{minor}", abi::DEV_PREFIX))
}

/// The 4 KiB block size every map, trace and COW slot counts in.
pub const BLOCK_SIZE: u64 = abi::BLOCK_SIZE as u64;

#[derive(Debug, thiserror::Error)]
pub enum BwsnapError {
    #[error("cannot open the bwsnap control device {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bwsnap {op} on minor {minor} failed")]
    Ioctl {
        op: &'static str,
        minor: u32,
        #[source]
        source: io::Error,
    },
    #[error("path {path:?} contains a NUL byte")]
    NulInPath { path: PathBuf },
    #[error("minor {minor}: the module reported unknown {what} {value}")]
    Unknown {
        minor: u32,
        what: &'static str,
        value: u32,
    },
    #[error("the module speaks bwsnap ABI {found}, this build {expected}")]
    AbiVersion { found: u32, expected: u32 },
}

impl BwsnapError {
    /// The errno behind a failed ioctl, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BwsnapError::Ioctl { source, .. } | BwsnapError::Open { source, .. } => {
                source.raw_os_error()
            }
            BwsnapError::NulInPath { .. }
            | BwsnapError::Unknown { .. }
            | BwsnapError::AbiVersion { .. } => None,
        }
    }
}

/// State of a minor (`enum bwsnap_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    None,
    Armed,
    Snapshot,
    Incremental,
}

impl State {
    fn from_raw(value: u32, minor: u32) -> Result<State, BwsnapError> {
        match value {
            abi::STATE_NONE => Ok(State::None),
            abi::STATE_ARMED => Ok(State::Armed),
            abi::STATE_SNAPSHOT => Ok(State::Snapshot),
            abi::STATE_INCREMENTAL => Ok(State::Incremental),
            value => Err(BwsnapError::Unknown {
                minor,
                what: "state",
                value,
            }),
        }
    }
}

/// Where a snapshot read of one block came from (`enum bwsnap_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Live,
    Cow,
    Error,
}

/// COW file size for SETUP / TO_SNAPSHOT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CowSize {
    /// The module parameters decide (cow_size_pct of the volume, at most cow_size_max_mb).
    Default,
    /// Bytes, a non-zero multiple of 4 KiB.
    Bytes(u64),
}

impl CowSize {
    fn raw(self) -> u64 {
        match self {
            CowSize::Default => abi::COW_SIZE_DEFAULT,
            CowSize::Bytes(n) => n,
        }
    }
}

/// What BWSNAP_IOC_INFO says about a minor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Info {
    pub minor: u32,
    pub state: State,
    /// 0, or the negative errno that failed the snapshot (-ENOSPC: COW file full).
    pub error: i32,
    pub seq: u64,
    pub uuid: String,
    pub dev_size: u64,
    pub cow_size: u64,
    pub cow_used: u64,
    pub changed_blocks: u64,
    pub tracking_blocks: u64,
    pub cow_copies: u64,
    pub cow_reads: u64,
    pub live_reads: u64,
    pub tracked_writes: u64,
    pub cow_extents: u32,
    pub bdev_path: String,
}

impl Info {
    fn from_raw(raw: &abi::Info) -> Result<Info, BwsnapError> {
        if raw.abi_version != abi::ABI_VERSION {
            return Err(BwsnapError::AbiVersion {
                found: raw.abi_version,
                expected: abi::ABI_VERSION,
            });
        }
        let path_len = raw
            .bdev_path
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw.bdev_path.len());
        Ok(Info {
            minor: raw.minor,
            state: State::from_raw(raw.state, raw.minor)?,
            error: raw.error,
            seq: raw.seq,
            uuid: uuid_string(&raw.uuid),
            dev_size: raw.dev_size,
            cow_size: raw.cow_size,
            cow_used: raw.cow_used,
            changed_blocks: raw.changed_blocks,
            tracking_blocks: raw.tracking_blocks,
            cow_copies: raw.cow_copies,
            cow_reads: raw.cow_reads,
            live_reads: raw.live_reads,
            tracked_writes: raw.tracked_writes,
            cow_extents: raw.cow_extents,
            bdev_path: String::from_utf8_lossy(&raw.bdev_path[..path_len]).into_owned(),
        })
    }

    /// Blocks of the tracked device (the last one may be partial).
    pub fn nr_blocks(&self) -> u64 {
        self.dev_size.div_ceil(BLOCK_SIZE)
    }
}

fn uuid_string(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A changed-block map: bit `b` of word `w` stands for block `start_block + 64 w + b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedMap {
    pub start_block: u64,
    pub nr_blocks: u64,
    pub words: Vec<u64>,
}

impl ChangedMap {
    pub fn contains(&self, block: u64) -> bool {
        if block < self.start_block || block >= self.start_block + self.nr_blocks {
            return false;
        }
        let i = block - self.start_block;
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// The changed blocks, ascending.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(move |(w, &word)| {
            let base = self.start_block + 64 * w as u64;
            (0..64u64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| base + b)
        })
    }

    /// The changed blocks as inclusive ranges, ascending.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in self.blocks() {
            match out.last_mut() {
                Some((_, end)) if *end + 1 == b => *end = b,
                _ => out.push((b, b)),
            }
        }
        out
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// One read-source trace event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    pub block: u64,
    pub source: Source,
    /// A fault knob changed this read.
    pub fault: bool,
}

/// What one drain of the trace ring returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceBatch {
    pub events: Vec<TraceEvent>,
    /// Events lost to a full ring since the previous drain.
    pub dropped: u64,
}

/// An extent of the COW file on the tracked device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub physical: u64,
    pub length: u64,
}

/// An open control device.
#[derive(Debug)]
pub struct Control {
    file: File,
}

fn c_path(path: &Path) -> Result<CString, BwsnapError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| BwsnapError::NulInPath {
        path: path.to_path_buf(),
    })
}

impl Control {
    /// Opens `/dev/bwsnap-ctl`.
    pub fn open() -> Result<Control, BwsnapError> {
        Control::open_path(&ctl_path())
    }

    pub fn open_path(path: &Path) -> Result<Control, BwsnapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| BwsnapError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Control { file })
    }

    /// Issues `request` with `arg`; the kernel reads and may write `*arg`.
    fn ioctl<T>(
        &self,
        op: &'static str,
        minor: u32,
        request: u32,
        arg: &mut T,
    ) -> Result<(), BwsnapError> {
        // SAFETY: `arg` is a live, exclusively borrowed #[repr(C)] value of the size
        // encoded in `request` (checked against the header by tests/abi.rs); any user
        // pointers inside it point to buffers the caller keeps alive for this call.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                request as _,
                arg as *mut T as *mut libc::c_void,
            )
        };
        if rc < 0 {
            return Err(BwsnapError::Ioctl {
                op,
                minor,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// SETUP: track `bdev` as `minor` and create the COW file `cow` (which must not
    /// exist, on the filesystem mounted from `bdev`). Leaves the minor ARMED.
    pub fn setup(
        &self,
        minor: u32,
        bdev: &Path,
        cow: &Path,
        cow_size: CowSize,
    ) -> Result<(), BwsnapError> {
        let bdev_c = c_path(bdev)?;
        let cow_c = c_path(cow)?;
        let mut a = abi::Setup {
            bdev_path: bdev_c.as_ptr() as u64,
            cow_path: cow_c.as_ptr() as u64,
            cow_size: cow_size.raw(),
            minor,
            flags: 0,
        };
        self.ioctl("setup", minor, abi::IOC_SETUP, &mut a)
    }

    /// START: the snapshot instant (call it with the filesystem frozen).
    pub fn start(&self, minor: u32) -> Result<(), BwsnapError> {
        let mut a = abi::Minor { minor, flags: 0 };
        self.ioctl("start", minor, abi::IOC_START, &mut a)
    }

    /// TO_INCREMENTAL: drop the snapshot and its COW file, keep tracking changes.
    pub fn to_incremental(&self, minor: u32) -> Result<(), BwsnapError> {
        let mut a = abi::Minor { minor, flags: 0 };
        self.ioctl("to-incremental", minor, abi::IOC_TO_INCREMENTAL, &mut a)
    }

    /// TO_SNAPSHOT: from INCREMENTAL, create a new COW file and arm the next START.
    pub fn to_snapshot(
        &self,
        minor: u32,
        cow: &Path,
        cow_size: CowSize,
    ) -> Result<(), BwsnapError> {
        let cow_c = c_path(cow)?;
        let mut a = abi::ToSnapshot {
            cow_path: cow_c.as_ptr() as u64,
            cow_size: cow_size.raw(),
            minor,
            flags: 0,
        };
        self.ioctl("to-snapshot", minor, abi::IOC_TO_SNAPSHOT, &mut a)
    }

    /// DESTROY: forget the minor, whatever its state. The COW file stays on disk.
    pub fn destroy(&self, minor: u32) -> Result<(), BwsnapError> {
        let mut a = abi::Minor { minor, flags: 0 };
        self.ioctl("destroy", minor, abi::IOC_DESTROY, &mut a)
    }

    /// INFO: an unused minor reads as [`State::None`].
    pub fn info(&self, minor: u32) -> Result<Info, BwsnapError> {
        let mut raw = abi::Info {
            minor,
            ..abi::Info::default()
        };
        self.ioctl("info", minor, abi::IOC_INFO, &mut raw)?;
        Info::from_raw(&raw)
    }

    /// READ_MAP: the period map frozen at the last START, for blocks
    /// `[start_block, start_block + nr_blocks)` clamped to the device.
    /// `start_block` must be a multiple of 64.
    pub fn read_map_range(
        &self,
        minor: u32,
        start_block: u64,
        nr_blocks: u64,
    ) -> Result<ChangedMap, BwsnapError> {
        let mut words = vec![0u64; nr_blocks.div_ceil(64) as usize];
        let mut a = abi::Map {
            minor,
            flags: 0,
            start_block,
            nr_blocks,
            buf: words.as_mut_ptr() as u64,
        };
        self.ioctl("read-map", minor, abi::IOC_READ_MAP, &mut a)?;
        words.truncate(a.nr_blocks.div_ceil(64) as usize);
        Ok(ChangedMap {
            start_block,
            nr_blocks: a.nr_blocks,
            words,
        })
    }

    /// READ_MAP over the whole device.
    pub fn read_map(&self, minor: u32) -> Result<ChangedMap, BwsnapError> {
        let nr_blocks = self.info(minor)?.nr_blocks();
        self.read_map_range(minor, 0, nr_blocks)
    }

    /// COW_EXTENTS: where the current COW file lies on the device (none outside
    /// ARMED and SNAPSHOT).
    pub fn cow_extents(&self, minor: u32) -> Result<Vec<Extent>, BwsnapError> {
        let mut buf: Vec<abi::Extent> = Vec::new();
        loop {
            let mut a = abi::Extents {
                minor,
                count: buf.len() as u32,
                buf: buf.as_mut_ptr() as u64,
            };
            self.ioctl("cow-extents", minor, abi::IOC_COW_EXTENTS, &mut a)?;
            let total = a.count as usize;
            if total <= buf.len() {
                buf.truncate(total);
                return Ok(buf
                    .iter()
                    .map(|e| Extent {
                        physical: e.physical,
                        length: e.length,
                    })
                    .collect());
            }
            buf = vec![abi::Extent::default(); total];
        }
    }

    /// TRACE: drain up to `max` events, oldest first.
    pub fn trace(&self, minor: u32, max: u32) -> Result<TraceBatch, BwsnapError> {
        let mut buf = vec![abi::TraceEvent::default(); max as usize];
        let mut a = abi::Trace {
            minor,
            count: max,
            buf: buf.as_mut_ptr() as u64,
            dropped: 0,
        };
        self.ioctl("trace", minor, abi::IOC_TRACE, &mut a)?;
        buf.truncate(a.count as usize);
        let events = buf
            .iter()
            .map(|e| {
                let source = match e.source {
                    abi::SRC_LIVE => Source::Live,
                    abi::SRC_COW => Source::Cow,
                    abi::SRC_ERROR => Source::Error,
                    value => {
                        return Err(BwsnapError::Unknown {
                            minor,
                            what: "trace source",
                            value,
                        })
                    }
                };
                Ok(TraceEvent {
                    block: e.block,
                    source,
                    fault: e.flags & abi::TRACE_FAULT != 0,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TraceBatch {
            events,
            dropped: a.dropped,
        })
    }

    /// TRACE until the ring is empty.
    pub fn trace_all(&self, minor: u32) -> Result<TraceBatch, BwsnapError> {
        const CHUNK: u32 = 65536;
        let mut all = TraceBatch {
            events: Vec::new(),
            dropped: 0,
        };
        loop {
            let batch = self.trace(minor, CHUNK)?;
            let n = batch.events.len();
            all.events.extend(batch.events);
            all.dropped += batch.dropped;
            if n < CHUNK as usize {
                return Ok(all);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(start_block: u64, nr_blocks: u64, words: &[u64]) -> ChangedMap {
        ChangedMap {
            start_block,
            nr_blocks,
            words: words.to_vec(),
        }
    }

    /// A map, the blocks it holds, and those blocks as ranges.
    type MapCase<'a> = (ChangedMap, &'a [u64], &'a [(u64, u64)]);

    #[test]
    fn map_blocks_and_ranges() {
        let cases: &[MapCase] = &[
            (map(0, 0, &[]), &[], &[]),
            (map(0, 10, &[0b1011]), &[0, 1, 3], &[(0, 1), (3, 3)]),
            (map(64, 128, &[1 << 63, 1]), &[127, 128], &[(127, 128)]),
            (
                map(0, 64, &[u64::MAX]),
                &(0..64).collect::<Vec<_>>(),
                &[(0, 63)],
            ),
        ];
        for (m, blocks, ranges) in cases {
            assert_eq!(m.blocks().collect::<Vec<_>>(), *blocks, "{m:?}");
            assert_eq!(m.ranges(), *ranges, "{m:?}");
            assert_eq!(m.count(), blocks.len() as u64);
            for b in *blocks {
                assert!(m.contains(*b));
            }
        }
        let m = map(64, 128, &[1 << 63, 1]);
        assert!(!m.contains(0));
        assert!(!m.contains(126));
        assert!(!m.contains(64 + 128 + 63));
    }

    #[test]
    fn uuid_is_formatted_like_the_kernel_prints_it() {
        let b: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(uuid_string(&b), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn info_rejects_another_abi_and_unknown_states() {
        let mut raw = abi::Info {
            abi_version: abi::ABI_VERSION + 1,
            ..abi::Info::default()
        };
        assert!(matches!(
            Info::from_raw(&raw),
            Err(BwsnapError::AbiVersion { .. })
        ));
        raw.abi_version = abi::ABI_VERSION;
        raw.state = 9;
        assert!(matches!(
            Info::from_raw(&raw),
            Err(BwsnapError::Unknown { value: 9, .. })
        ));
        raw.state = abi::STATE_SNAPSHOT;
        raw.bdev_path[..8].copy_from_slice(b"/dev/vdb");
        raw.dev_size = 3 * BLOCK_SIZE + 512;
        let info = Info::from_raw(&raw).expect("valid info");
        assert_eq!(info.state, State::Snapshot);
        assert_eq!(info.bdev_path, "/dev/vdb");
        assert_eq!(info.nr_blocks(), 4);
    }

    #[test]
    fn control_open_names_the_path() {
        let err = Control::open_path(Path::new("/nonexistent/bwsnap-ctl")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bwsnap-ctl"), "{err}");
        assert_eq!(err.errno(), Some(libc::ENOENT));
    }

    #[test]
    fn paths_with_nul_are_refused_before_the_kernel() {
        let err = c_path(Path::new("a\0b")).unwrap_err();
        assert!(matches!(err, BwsnapError::NulInPath { .. }));
    }
}

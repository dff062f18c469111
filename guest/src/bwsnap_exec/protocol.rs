//! The line protocol between the model test on the host and `bwsnap-exec` in the
//! guest: JSON, one object per line, over the `bw.model` virtio-serial port. The guest
//! speaks first with [`Hello`]; after that every [`Request`] gets exactly one
//! [`Reply`], in order.
//!
//! Addresses are absolute 512-byte sectors of a volume's block device. Arena sectors
//! (beyond the end of the volume's filesystem, written only by this protocol) hold
//! self-describing stamps ([`super::pattern`]) and are read back as [`Content`] runs;
//! the other blocks are compared, by hash, with the executor's own copy of the origin
//! taken right before START.

use serde::{Deserialize, Serialize};

/// Name of the virtio-serial port.
pub const PORT_NAME: &str = "bw.model";

/// The guest's first line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub kernel: String,
    pub volumes: Vec<Volume>,
}

/// One volume the executor drives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Block device, e.g. `/dev/vdb`.
    pub dev: String,
    /// Where its filesystem is mounted (COW files go there).
    pub mount: String,
    /// Bytes of the device.
    pub dev_size: u64,
    /// First 4 KiB block of the arena; the arena runs to the end of the device.
    pub arena_block: u64,
}

/// Where SETUP / TO_SNAPSHOT put the COW file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CowPath {
    /// A new file on the volume's own filesystem (`cow-<n>`).
    Fresh,
    /// A file that exists (EEXIST).
    Exists,
    /// A directory (EISDIR).
    Dir,
    /// A new file on another volume's filesystem (EXDEV).
    OtherVolume,
    /// A file in a directory that does not exist (ENOENT).
    MissingDir,
}

/// What the host asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Back to a known state between sequences: every minor destroyed, COW files
    /// removed, the module loaded with `params` (`name=value`, e.g. fault knobs), every
    /// arena sector stamped with `tag`, origin copies forgotten.
    Reset { tag: u64, params: Vec<String> },
    /// BWSNAP_IOC_SETUP of volume `vol` (its device) as `minor`.
    Setup {
        minor: u32,
        vol: usize,
        cow: CowPath,
        /// Bytes; None for the module's default.
        cow_size: Option<u64>,
    },
    /// syncfs, copy the origin of the volume `minor` tracks (if any), BWSNAP_IOC_START.
    Start { minor: u32 },
    /// BWSNAP_IOC_TO_INCREMENTAL, then remove the COW file.
    ToIncremental { minor: u32 },
    /// BWSNAP_IOC_TO_SNAPSHOT.
    ToSnapshot {
        minor: u32,
        cow: CowPath,
        cow_size: Option<u64>,
    },
    /// BWSNAP_IOC_DESTROY, then remove the COW file.
    Destroy { minor: u32 },
    /// O_DIRECT write of stamps with `tag` to the device of `vol`.
    Write {
        vol: usize,
        sector: u64,
        sectors: u64,
        tag: u64,
    },
    /// BLKZEROOUT on the device of `vol`.
    Zero {
        vol: usize,
        sector: u64,
        sectors: u64,
    },
    /// O_DIRECT read of `/dev/bwsnap<minor>` (opened for this read only). Arena sectors
    /// come back as content runs; whole blocks before the arena are compared with the
    /// origin copy taken at START.
    Read {
        minor: u32,
        sector: u64,
        sectors: u64,
    },
    /// Opens `/dev/bwsnap<minor>` (O_DIRECT) and keeps it open, closing the one held
    /// before.
    Hold { minor: u32 },
    /// A read, like [`Request::Read`], through the held descriptor (EBADF at the Open
    /// stage when none is held).
    ReadHeld { sector: u64, sectors: u64 },
    /// Closes the held descriptor.
    Release,
    /// BWSNAP_IOC_READ_MAP.
    Map {
        minor: u32,
        start_block: u64,
        nr_blocks: u64,
    },
    /// BWSNAP_IOC_INFO of each minor.
    Info { minors: Vec<u32> },
    /// delete_module, then finit_module with no parameters.
    Reload,
    /// Ends the executor.
    Quit,
}

/// What a 512-byte sector holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    /// The stamp of write `tag` for this very sector.
    Tag(u64),
    /// All zeros.
    Zero,
    /// A whole stamp of write `tag`, made for another sector.
    Moved { tag: u64, sector: u64 },
    /// Anything else (a damaged stamp, foreign data): its FNV-1a hash.
    Foreign(u64),
}

/// `count` consecutive sectors with the same content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub content: Content,
    pub count: u64,
}

/// Which step of a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The module's ioctl.
    Ioctl,
    /// Opening the snapshot device.
    Open,
    /// Reading the snapshot device.
    Read,
    /// Writing, or zeroing, the volume.
    Write,
    /// Removing the COW file after TO_INCREMENTAL or DESTROY.
    Unlink,
    /// delete_module.
    Unload,
    /// finit_module.
    Load,
}

/// INFO of one minor, the fields the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinorInfo {
    pub minor: u32,
    /// `enum bwsnap_state`.
    pub state: u32,
    pub error: i32,
    pub seq: u64,
    pub dev_size: u64,
    pub cow_size: u64,
    pub cow_used: u64,
    pub changed_blocks: u64,
}

/// A COW file extent, in bytes on the tracked device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub physical: u64,
    pub length: u64,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Reply {
    Ok,
    /// A system call failed with `errno` at `stage`. `cow_left`: after a failed SETUP
    /// or TO_SNAPSHOT with a fresh path, whether the COW file was left behind.
    Err {
        stage: Stage,
        errno: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cow_left: Option<bool>,
    },
    /// SETUP or TO_SNAPSHOT succeeded: where the new COW file lies.
    Armed {
        extents: Vec<Extent>,
    },
    /// START succeeded. `changed`: blocks before the arena whose origin differs from
    /// the copy taken at the previous START since the last SETUP (None at the first).
    Started {
        changed: Option<Vec<u64>>,
    },
    /// Arena sectors as content runs (`first_sector` is where the runs begin), and
    /// blocks before the arena that differ from the origin copy (None: no copy).
    Data {
        first_sector: u64,
        runs: Vec<Run>,
        differing: Option<Vec<u64>>,
    },
    /// The map's 64-bit words and how many blocks it covers.
    Map {
        nr_blocks: u64,
        words: Vec<u64>,
    },
    Info {
        minors: Vec<MinorInfo>,
    },
    /// The executor could not do what was asked (not a module result): a harness
    /// error with its reason.
    Broken {
        reason: String,
    },
}

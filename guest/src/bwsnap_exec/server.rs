//! Serving [`Request`]s: the system calls behind each one.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use reference_agent::bwsnap::{self, Control, CowSize};

use super::pattern::{self, SECTOR};
use super::protocol::{CowPath, Extent, Hello, MinorInfo, Reply, Request, Run, Stage, Volume};

const BLOCK: u64 = 4096;
const SECTORS_PER_BLOCK: u64 = BLOCK / SECTOR as u64;
/// Largest single read or write the executor issues.
const CHUNK: usize = 1 << 20;
/// BLKZEROOUT, `_IO(0x12, 127)`.
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// BLKGETSIZE64, `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const MODULE: &str = "bwsnap";

/// Why the executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("bad arguments: {0}; usage: bwsnap-exec --port NAME --module KO --vol DEV:MOUNT:ARENA_BLOCK...")]
    Args(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("finding the port")]
    Port(#[from] crate::ports::PortError),
    #[error("the port")]
    PortIo(#[source] io::Error),
    #[error("a request line is not valid: {line}")]
    Request {
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExecError {
    let path = path.to_path_buf();
    move |source| ExecError::Io { what, path, source }
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(BLOCK as usize), BLOCK as usize)
            .expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, len }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.len);
        // SAFETY: ptr is valid for self.len bytes and exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout =
            std::alloc::Layout::from_size_align(self.len.max(BLOCK as usize), BLOCK as usize)
                .expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// A volume as the executor sees it.
struct Vol {
    dev: PathBuf,
    mount: PathBuf,
    file: File,
    dev_size: u64,
    arena_block: u64,
    /// Block hashes of the origin before the arena, copied right before the last
    /// successful START since this volume's last SETUP.
    origin: Option<Vec<u64>>,
}

/// What the executor did with a minor: the volume it set up and its COW file.
struct MinorRec {
    vol: usize,
    cow: Option<PathBuf>,
}

pub struct Server {
    /// bwsnap.ko in the guest, for reloads.
    module: PathBuf,
    vols: Vec<Vol>,
    minors: BTreeMap<u32, MinorRec>,
    /// A snapshot device kept open across requests, and the volume behind it.
    held: Option<(File, usize)>,
    buf: Aligned,
    cow_counter: u64,
    kernel: String,
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn err(stage: Stage, e: &io::Error) -> Reply {
    Reply::Err {
        stage,
        errno: errno_of(e),
        cow_left: None,
    }
}

fn ioctl_err(e: &bwsnap::BwsnapError) -> Reply {
    match e.errno() {
        Some(errno) => Reply::Err {
            stage: Stage::Ioctl,
            errno,
            cow_left: None,
        },
        None => broken(e),
    }
}

fn broken(e: &dyn std::error::Error) -> Reply {
    Reply::Broken {
        reason: crate::error_chain(e),
    }
}

fn open_direct(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

fn dev_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// The command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub port: String,
    pub module: PathBuf,
    /// Device, mount point, first arena block.
    pub vols: Vec<(PathBuf, PathBuf, u64)>,
}

/// Parses `--port NAME --module KO --vol DEV:MOUNT:ARENA_BLOCK...`.
pub fn parse_args(args: &[String]) -> Result<Args, ExecError> {
    let mut port = None;
    let mut module = None;
    let mut vols = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| ExecError::Args(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--port" => port = Some(value()?),
            "--module" => module = Some(PathBuf::from(value()?)),
            "--vol" => {
                let v = value()?;
                let parts: Vec<&str> = v.split(':').collect();
                let [dev, mount, arena] = parts[..] else {
                    return Err(ExecError::Args(format!(
                        "--vol {v}: want DEV:MOUNT:ARENA_BLOCK"
                    )));
                };
                let arena = arena.parse().map_err(|_| {
                    ExecError::Args(format!("--vol {v}: {arena} is not a block number"))
                })?;
                vols.push((PathBuf::from(dev), PathBuf::from(mount), arena));
            }
            other => return Err(ExecError::Args(format!("unknown argument {other}"))),
        }
    }
    let port = port.ok_or_else(|| ExecError::Args("--port is required".into()))?;
    let module = module.ok_or_else(|| ExecError::Args("--module is required".into()))?;
    if vols.is_empty() {
        return Err(ExecError::Args("at least one --vol is required".into()));
    }
    Ok(Args { port, module, vols })
}

impl Server {
    pub fn new(args: &Args) -> Result<Server, ExecError> {
        let mut out = Vec::new();
        for (dev, mount, arena_block) in &args.vols {
            let file = open_direct(dev, true).map_err(io_err("opening", dev))?;
            let dev_size = dev_size(&file).map_err(io_err("sizing", dev))?;
            if *arena_block == 0 || arena_block * BLOCK >= dev_size {
                return Err(ExecError::Args(format!(
                    "arena block {arena_block} is outside {} ({dev_size} bytes)",
                    dev.display()
                )));
            }
            out.push(Vol {
                dev: dev.clone(),
                mount: mount.clone(),
                file,
                dev_size,
                arena_block: *arena_block,
                origin: None,
            });
        }
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_err(io_err("reading", Path::new("/proc/sys/kernel/osrelease")))?
            .trim()
            .to_string();
        Ok(Server {
            module: args.module.clone(),
            vols: out,
            minors: BTreeMap::new(),
            held: None,
            buf: Aligned::new(CHUNK),
            cow_counter: 0,
            kernel,
        })
    }

    pub fn hello(&self) -> Hello {
        Hello {
            kernel: self.kernel.clone(),
            volumes: self
                .vols
                .iter()
                .map(|v| Volume {
                    dev: v.dev.display().to_string(),
                    mount: v.mount.display().to_string(),
                    dev_size: v.dev_size,
                    arena_block: v.arena_block,
                })
                .collect(),
        }
    }

    /// Serves requests from `port` until Quit or end of input.
    pub fn serve(&mut self, port: &Path) -> Result<(), ExecError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(port)
            .map_err(io_err("opening", port))?;
        let mut out = file.try_clone().map_err(ExecError::PortIo)?;
        let mut lines = BufReader::new(file);
        let hello = serde_json::to_string(&self.hello()).expect("serializable");
        writeln!(out, "{hello}").map_err(ExecError::PortIo)?;
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).map_err(ExecError::PortIo)? == 0 {
                return Ok(());
            }
            if line.trim().is_empty() {
                continue;
            }
            let req: Request =
                serde_json::from_str(line.trim()).map_err(|source| ExecError::Request {
                    line: line.trim().to_string(),
                    source,
                })?;
            let quit = req == Request::Quit;
            let reply = if quit { Reply::Ok } else { self.handle(&req) };
            let text = serde_json::to_string(&reply).expect("serializable");
            writeln!(out, "{text}").map_err(ExecError::PortIo)?;
            if quit {
                return Ok(());
            }
        }
    }

    pub fn handle(&mut self, req: &Request) -> Reply {
        match req {
            Request::Reset { tag, params } => self.reset(*tag, params),
            Request::Setup {
                minor,
                vol,
                cow,
                cow_size,
            } => self.arm(*minor, Some(*vol), *cow, *cow_size),
            Request::ToSnapshot {
                minor,
                cow,
                cow_size,
            } => self.arm(*minor, None, *cow, *cow_size),
            Request::Start { minor } => self.start(*minor),
            Request::ToIncremental { minor } => self.leave(*minor, false),
            Request::Destroy { minor } => self.leave(*minor, true),
            Request::Write {
                vol,
                sector,
                sectors,
                tag,
            } => self.write(*vol, *sector, *sectors, Some(*tag)),
            Request::Zero {
                vol,
                sector,
                sectors,
            } => self.write(*vol, *sector, *sectors, None),
            Request::Read {
                minor,
                sector,
                sectors,
            } => self.read(*minor, *sector, *sectors),
            Request::Map {
                minor,
                start_block,
                nr_blocks,
            } => self.map(*minor, *start_block, *nr_blocks),
            Request::Info { minors } => self.info(minors),
            Request::Reload => self.reload(),
            Request::Hold { minor } => self.hold(*minor),
            Request::ReadHeld { sector, sectors } => self.read_held(*sector, *sectors),
            Request::Release => {
                self.held = None;
                Reply::Ok
            }
            Request::Quit => Reply::Ok,
        }
    }

    fn vol(&self, vol: usize) -> Result<&Vol, Reply> {
        self.vols.get(vol).ok_or_else(|| Reply::Broken {
            reason: format!("no volume {vol} (the executor has {})", self.vols.len()),
        })
    }

    fn control() -> Result<Control, Reply> {
        Control::open().map_err(|e| broken(&e))
    }

    fn cow_path(&mut self, vol: usize, cow: CowPath) -> Result<PathBuf, Reply> {
        let mount = self.vol(vol)?.mount.clone();
        self.cow_counter += 1;
        let n = self.cow_counter;
        Ok(match cow {
            CowPath::Fresh => mount.join(format!("cow-{n}")),
            CowPath::Exists => mount.join("exists"),
            CowPath::Dir => mount.join("adir"),
            CowPath::OtherVolume => {
                let other = (vol + 1) % self.vols.len();
                self.vols[other].mount.join(format!("cow-{n}"))
            }
            CowPath::MissingDir => mount.join("missing").join("cow"),
        })
    }

    /// SETUP (`vol` given) or TO_SNAPSHOT.
    fn arm(&mut self, minor: u32, vol: Option<usize>, cow: CowPath, size: Option<u64>) -> Reply {
        let target = match vol {
            Some(v) => v,
            // TO_SNAPSHOT of a minor the executor never set up: any volume's path does,
            // the module must refuse it before looking at the file.
            None => self.minors.get(&minor).map(|m| m.vol).unwrap_or(0),
        };
        let path = match self.cow_path(target, cow) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let ctl = match Self::control() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let size = size.map_or(CowSize::Default, CowSize::Bytes);
        let result = match vol {
            Some(v) => ctl.setup(minor, &self.vols[v].dev, &path, size),
            None => ctl.to_snapshot(minor, &path, size),
        };
        if let Err(e) = result {
            let mut reply = ioctl_err(&e);
            if let Reply::Err { cow_left, .. } = &mut reply {
                if matches!(cow, CowPath::Fresh | CowPath::OtherVolume) {
                    *cow_left = Some(path.exists());
                    // Whatever the module left must not break later requests.
                    let _ = std::fs::remove_file(&path);
                }
            }
            return reply;
        }
        let extents = match ctl.cow_extents(minor) {
            Ok(x) => x,
            Err(e) => return broken(&e),
        };
        if let Some(v) = vol {
            // A new tracking lineage: no previous origin copy to compare with.
            self.vols[v].origin = None;
            self.minors.insert(minor, MinorRec { vol: v, cow: None });
        }
        if let Some(rec) = self.minors.get_mut(&minor) {
            rec.cow = Some(path);
        }
        Reply::Armed {
            extents: extents
                .iter()
                .map(|e| Extent {
                    physical: e.physical,
                    length: e.length,
                })
                .collect(),
        }
    }

    /// Hashes of the origin's blocks before the arena.
    fn copy_origin(&mut self, vol: usize) -> io::Result<Vec<u64>> {
        let blocks = self.vols[vol].arena_block;
        let mut hashes = Vec::with_capacity(blocks as usize);
        let mut at = 0u64;
        while at < blocks {
            let n = (blocks - at).min(CHUNK as u64 / BLOCK);
            let len = (n * BLOCK) as usize;
            let buf = self.buf.slice(len);
            self.vols[vol].file.read_exact_at(buf, at * BLOCK)?;
            hashes.extend(buf.chunks_exact(BLOCK as usize).map(pattern::fnv));
            at += n;
        }
        Ok(hashes)
    }

    fn start(&mut self, minor: u32) -> Reply {
        let vol = self.minors.get(&minor).map(|m| m.vol);
        let mut origin = None;
        if let Some(v) = vol {
            // Nothing of the filesystem may be in flight while the origin is copied.
            let mount = match File::open(&self.vols[v].mount) {
                Ok(f) => f,
                Err(e) => return broken(&e),
            };
            // SAFETY: syncfs on an open descriptor.
            if unsafe { libc::syncfs(mount.as_raw_fd()) } < 0 {
                return broken(&io::Error::last_os_error());
            }
            match self.copy_origin(v) {
                Ok(h) => origin = Some(h),
                Err(e) => return broken(&e),
            }
        }
        let ctl = match Self::control() {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(e) = ctl.start(minor) {
            return ioctl_err(&e);
        }
        let changed = match (vol, origin) {
            (Some(v), Some(now)) => {
                let before = self.vols[v].origin.replace(now.clone());
                before.map(|b| {
                    (0..now.len() as u64)
                        .filter(|&i| b[i as usize] != now[i as usize])
                        .collect()
                })
            }
            _ => None,
        };
        Reply::Started { changed }
    }

    /// TO_INCREMENTAL or DESTROY, then the COW file goes (as the agent does).
    fn leave(&mut self, minor: u32, destroy: bool) -> Reply {
        let ctl = match Self::control() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let result = if destroy {
            ctl.destroy(minor)
        } else {
            ctl.to_incremental(minor)
        };
        if let Err(e) = result {
            return ioctl_err(&e);
        }
        let cow = if destroy {
            self.minors.remove(&minor).and_then(|m| m.cow)
        } else {
            self.minors.get_mut(&minor).and_then(|m| m.cow.take())
        };
        if let Some(path) = cow {
            if let Err(e) = std::fs::remove_file(&path) {
                return err(Stage::Unlink, &e);
            }
        }
        Reply::Ok
    }

    /// Stamps (`tag`) or BLKZEROOUT (None) on sectors of a volume.
    fn write(&mut self, vol: usize, sector: u64, sectors: u64, tag: Option<u64>) -> Reply {
        let fd = match self.vol(vol) {
            Ok(v) => v.file.as_raw_fd(),
            Err(r) => return r,
        };
        let Some(tag) = tag else {
            let range = [sector * SECTOR as u64, sectors * SECTOR as u64];
            // SAFETY: BLKZEROOUT reads two u64 from the pointer.
            let rc = unsafe { libc::ioctl(fd, BLKZEROOUT as _, range.as_ptr()) };
            if rc < 0 {
                return err(Stage::Write, &io::Error::last_os_error());
            }
            return Reply::Ok;
        };
        let mut at = sector;
        let end = sector + sectors;
        while at < end {
            let n = (end - at).min((CHUNK / SECTOR) as u64);
            let buf = self.buf.slice(n as usize * SECTOR);
            for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
                pattern::stamp(s, tag, at + i as u64);
            }
            if let Err(e) = self.vols[vol].file.write_all_at(buf, at * SECTOR as u64) {
                return err(Stage::Write, &e);
            }
            at += n;
        }
        Reply::Ok
    }

    fn read(&mut self, minor: u32, sector: u64, sectors: u64) -> Reply {
        let vol = self.minors.get(&minor).map(|m| m.vol).unwrap_or(0);
        let arena_sector = self.vols[vol].arena_block * SECTORS_PER_BLOCK;
        if sector < arena_sector
            && (!sector.is_multiple_of(SECTORS_PER_BLOCK)
                || sector + sectors < arena_sector && !sectors.is_multiple_of(SECTORS_PER_BLOCK))
        {
            return Reply::Broken {
                reason: format!(
                    "read of sectors {sector}+{sectors}: before the arena only whole blocks are compared"
                ),
            };
        }
        let dev = bwsnap::snapshot_device(minor);
        let file = match open_direct(&dev, false) {
            Ok(f) => f,
            Err(e) => return err(Stage::Open, &e),
        };
        self.read_from(&file, vol, sector, sectors)
    }

    /// Keeps `/dev/bwsnap<minor>` open (closing one held before).
    fn hold(&mut self, minor: u32) -> Reply {
        let vol = self.minors.get(&minor).map(|m| m.vol).unwrap_or(0);
        match open_direct(&bwsnap::snapshot_device(minor), false) {
            Ok(f) => {
                self.held = Some((f, vol));
                Reply::Ok
            }
            Err(e) => err(Stage::Open, &e),
        }
    }

    fn read_held(&mut self, sector: u64, sectors: u64) -> Reply {
        let Some((file, vol)) = self.held.take() else {
            return Reply::Err {
                stage: Stage::Open,
                errno: libc::EBADF,
                cow_left: None,
            };
        };
        let reply = self.read_from(&file, vol, sector, sectors);
        self.held = Some((file, vol));
        reply
    }

    fn read_from(&mut self, file: &File, vol: usize, sector: u64, sectors: u64) -> Reply {
        let arena_sector = self.vols[vol].arena_block * SECTORS_PER_BLOCK;
        let origin = self.vols[vol].origin.clone();
        let mut runs: Vec<Run> = Vec::new();
        let mut differing = Vec::new();
        let mut at = sector;
        let end = sector + sectors;
        while at < end {
            let n = (end - at).min((CHUNK / SECTOR) as u64);
            let buf = self.buf.slice(n as usize * SECTOR);
            if let Err(e) = file.read_exact_at(buf, at * SECTOR as u64) {
                return err(Stage::Read, &e);
            }
            let mut s = at;
            while s < at + n {
                let off = ((s - at) as usize) * SECTOR;
                if s >= arena_sector {
                    pattern::push(&mut runs, pattern::decode(&buf[off..off + SECTOR], s));
                    s += 1;
                } else {
                    let block = s / SECTORS_PER_BLOCK;
                    let hash = pattern::fnv(&buf[off..off + BLOCK as usize]);
                    if origin.as_ref().is_some_and(|o| o[block as usize] != hash) {
                        differing.push(block);
                    }
                    s += SECTORS_PER_BLOCK;
                }
            }
            at += n;
        }
        Reply::Data {
            first_sector: sector.max(arena_sector),
            runs,
            differing: origin.map(|_| differing),
        }
    }

    fn map(&mut self, minor: u32, start_block: u64, nr_blocks: u64) -> Reply {
        let ctl = match Self::control() {
            Ok(c) => c,
            Err(r) => return r,
        };
        match ctl.read_map_range(minor, start_block, nr_blocks) {
            Ok(m) => Reply::Map {
                nr_blocks: m.nr_blocks,
                words: m.words,
            },
            Err(e) => ioctl_err(&e),
        }
    }

    fn info(&mut self, minors: &[u32]) -> Reply {
        let ctl = match Self::control() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let mut out = Vec::new();
        for &minor in minors {
            // Raw state numbers: an unknown one is the model's to judge.
            match ctl.info(minor) {
                Ok(i) => out.push(MinorInfo {
                    minor,
                    state: match i.state {
                        bwsnap::State::None => 0,
                        bwsnap::State::Armed => 1,
                        bwsnap::State::Snapshot => 2,
                        bwsnap::State::Incremental => 3,
                    },
                    error: i.error,
                    seq: i.seq,
                    dev_size: i.dev_size,
                    cow_size: i.cow_size,
                    cow_used: i.cow_used,
                    changed_blocks: i.changed_blocks,
                }),
                Err(e) => return ioctl_err(&e),
            }
        }
        Reply::Info { minors: out }
    }

    fn load(&self) -> io::Result<()> {
        let file = File::open(&self.module)?;
        let params = CString::new("").expect("no NUL");
        // SAFETY: finit_module with an open descriptor and a NUL-terminated string.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn unload() -> io::Result<()> {
        let name = CString::new(MODULE).expect("no NUL");
        // SAFETY: delete_module with a NUL-terminated name.
        let rc = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn forget(&mut self) {
        self.minors.clear();
        for v in &mut self.vols {
            v.origin = None;
        }
    }

    fn reload(&mut self) -> Reply {
        if let Err(e) = Self::unload() {
            return err(Stage::Unload, &e);
        }
        self.forget();
        if let Err(e) = self.load() {
            return err(Stage::Load, &e);
        }
        Reply::Ok
    }

    fn reset(&mut self, tag: u64, params: &[String]) -> Reply {
        self.held = None;
        if !Path::new("/sys/module").join(MODULE).exists() {
            if let Err(e) = self.load() {
                return err(Stage::Load, &e);
            }
        }
        let ctl = match Self::control() {
            Ok(c) => c,
            Err(r) => return r,
        };
        for minor in 0..bwsnap::abi::MAX_MINORS {
            match ctl.info(minor) {
                Ok(i) if i.state == bwsnap::State::None => {}
                Ok(_) => {
                    if let Err(e) = ctl.destroy(minor) {
                        return broken(&e);
                    }
                }
                Err(e) => return broken(&e),
            }
        }
        drop(ctl);
        self.forget();
        for p in params {
            let Some((name, value)) = p.split_once('=') else {
                return Reply::Broken {
                    reason: format!("module parameter {p:?} is not name=value"),
                };
            };
            let path = Path::new("/sys/module")
                .join(MODULE)
                .join("parameters")
                .join(name);
            if let Err(e) = std::fs::write(&path, value) {
                return Reply::Broken {
                    reason: format!("writing {}: {e}", path.display()),
                };
            }
        }
        for v in 0..self.vols.len() {
            let mount = self.vols[v].mount.clone();
            let prepared = (|| -> io::Result<()> {
                for entry in std::fs::read_dir(&mount)? {
                    let path = entry?.path();
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    if name.starts_with("cow-") {
                        std::fs::remove_file(&path)?;
                    }
                }
                if !mount.join("exists").exists() {
                    File::create(mount.join("exists"))?;
                }
                std::fs::create_dir_all(mount.join("adir"))?;
                Ok(())
            })();
            if let Err(e) = prepared {
                return Reply::Broken {
                    reason: format!("preparing {}: {e}", mount.display()),
                };
            }
            let first = self.vols[v].arena_block * SECTORS_PER_BLOCK;
            let sectors = self.vols[v].dev_size / SECTOR as u64 - first;
            if let reply @ (Reply::Err { .. } | Reply::Broken { .. }) =
                self.write(v, first, sectors, Some(tag))
            {
                return reply;
            }
        }
        Reply::Ok
    }
}

/// Entry point of the binary: arguments, the port, serve.
pub fn main_with(args: &[String]) -> Result<(), ExecError> {
    let args = parse_args(args)?;
    let mut server = Server::new(&args)?;
    let path = crate::ports::find(&args.port)?;
    server.serve(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bwsnap_exec::protocol::Content;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_are_checked() {
        let args = parse_args(&s(&[
            "--port",
            "bw.model",
            "--module",
            "/m.ko",
            "--vol",
            "/dev/vdb:/mnt/v0:1536",
        ]))
        .unwrap();
        assert_eq!(
            args,
            Args {
                port: "bw.model".into(),
                module: "/m.ko".into(),
                vols: vec![("/dev/vdb".into(), "/mnt/v0".into(), 1536)],
            }
        );
        for bad in [
            &["--port", "p", "--vol", "/dev/vdb:/m:1"][..],
            &["--port"][..],
            &["--vol", "/dev/vdb:/mnt"],
            &["--port", "p"],
            &["--port", "p", "--vol", "/dev/vdb:/m:x"],
            &["--nope"],
        ] {
            assert!(parse_args(&s(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply::Data {
            first_sector: 12288,
            runs: vec![Run {
                content: Content::Moved { tag: 3, sector: 9 },
                count: 2,
            }],
            differing: Some(vec![1, 2]),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), r);
    }
}

//! `bw-pipe`: the harness's hands around a pipeline that is not its own (dm-snapshot,
//! LVM, a vendor's product driven by commands).
//!
//! - `read`: the harness's own witness. Reads the product's snapshot device and the live
//!   device during the backup window, a chunk at a time, each block of the snapshot
//!   right before the same block of the live device (both O_DIRECT), and sends the
//!   bytes to the host on `bw.reader`, which hashes them. Nothing is hashed or judged in
//!   the guest.
//! - `send`: the built-in pipelines' copier: a snapshot device (or extents of it) to the
//!   harness's channel `bw.channel`, raw or in the extents format.
//! - `instant`: a product that freezes on its own announces its instant with it: the
//!   harness takes its truth before it returns.
//! - `now`: CLOCK_MONOTONIC in ns (the stamps' clock).
//! - `extents FILE`: the device byte ranges of a file (FIEMAP), for exclusions.
//!
//! The formats are in [`wire`]. Every command prints one JSON summary line on success;
//! errors go to stderr and end with exit status 2 (1: the harness said abort).

pub mod wire;

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wire::{InstantMessage, BLOCK};

/// Why a bw-pipe command failed.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("port")]
    Port(#[from] crate::ports::PortError),
    #[error("{path}: {detail}")]
    Extents { path: PathBuf, detail: String },
    #[error("the harness did not answer the instant within {0:?}")]
    NoAnswer(Duration),
    #[error("the harness answered the instant with {0:?}")]
    BadAnswer(String),
    #[error("FIEMAP of {path}")]
    Fiemap {
        path: PathBuf,
        #[source]
        source: crate::workload::fiemap::FiemapError,
    },
}

/// How `main` ends.
pub enum Done {
    Ok,
    /// The harness answered abort at the instant.
    Aborted(String),
}

const USAGE: &str = "bw-pipe read --snapshot DEV --live DEV --volume NAME [--extents FILE] [--port NAME] [--chunk BLOCKS]
bw-pipe send --device DEV [--extents FILE] [--port NAME]
bw-pipe instant [--port NAME] [--timeout SECONDS]
bw-pipe now
bw-pipe extents FILE";

/// `--key value` options after the subcommand.
struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, PipeError> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let key = a
                .strip_prefix("--")
                .ok_or_else(|| PipeError::Usage(format!("unexpected {a:?}\n{USAGE}")))?;
            let value = it
                .next()
                .ok_or_else(|| PipeError::Usage(format!("--{key} needs a value\n{USAGE}")))?;
            out.push((key.to_string(), value.clone()));
        }
        Ok(Opts(out))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, key: &str) -> Result<&str, PipeError> {
        self.get(key)
            .ok_or_else(|| PipeError::Usage(format!("--{key} is required\n{USAGE}")))
    }

    fn check(&self, allowed: &[&str]) -> Result<(), PipeError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(PipeError::Usage(format!("unknown option --{k}\n{USAGE}"))),
            None => Ok(()),
        }
    }
}

/// Runs `bw-pipe` with its arguments (without the program name).
pub fn main_with(args: &[String]) -> Result<Done, PipeError> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(PipeError::Usage(USAGE.into()));
    };
    match cmd.as_str() {
        "read" => {
            let o = Opts::parse(rest)?;
            o.check(&["snapshot", "live", "volume", "extents", "port", "chunk"])?;
            let chunk = match o.get("chunk") {
                Some(c) => c
                    .parse::<usize>()
                    .ok()
                    .filter(|c| (1..=4096).contains(c))
                    .ok_or_else(|| PipeError::Usage("--chunk is 1 to 4096 blocks".into()))?,
                None => 64,
            };
            read(
                Path::new(o.need("snapshot")?),
                Path::new(o.need("live")?),
                o.need("volume")?,
                o.get("extents").map(Path::new),
                o.get("port").unwrap_or(wire::READER_PORT),
                chunk,
            )?;
        }
        "send" => {
            let o = Opts::parse(rest)?;
            o.check(&["device", "extents", "port"])?;
            send(
                Path::new(o.need("device")?),
                o.get("extents").map(Path::new),
                o.get("port").unwrap_or(wire::CHANNEL_PORT),
            )?;
        }
        "instant" => {
            let o = Opts::parse(rest)?;
            o.check(&["port", "timeout"])?;
            let timeout = o
                .get("timeout")
                .map(|t| t.parse::<u64>())
                .transpose()
                .map_err(|_| PipeError::Usage("--timeout is whole seconds".into()))?
                .unwrap_or(120);
            return instant(
                o.get("port").unwrap_or(wire::INSTANT_PORT),
                Duration::from_secs(timeout),
            );
        }
        "now" => println!("{}", monotonic_ns()),
        "extents" => {
            let [file] = rest else {
                return Err(PipeError::Usage(USAGE.into()));
            };
            file_extents(Path::new(file))?;
        }
        other => {
            return Err(PipeError::Usage(format!(
                "unknown command {other:?}\n{USAGE}"
            )))
        }
    }
    Ok(Done::Ok)
}

/// CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A zeroed buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len.max(BLOCK), BLOCK).expect("valid layout");
        // SAFETY: a non-zero size; the pointer is checked.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes were allocated and zeroed.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(BLOCK), BLOCK).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr, layout) };
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PipeError + 'a {
    move |source| PipeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn open_direct(path: &Path) -> Result<File, PipeError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(io_err("opening", path))
}

fn device_size(file: &File, path: &Path) -> Result<u64, PipeError> {
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    use std::os::unix::io::AsRawFd;
    // SAFETY: the ioctl writes one u64.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc == 0 {
        return Ok(size);
    }
    // Not a block device (a file in a test): its length.
    file.metadata()
        .map(|m| m.len())
        .map_err(io_err("sizing", path))
}

/// The byte ranges to read: the extents file's, or the whole device.
fn ranges(extents: Option<&Path>, size: u64) -> Result<Vec<(u64, u64)>, PipeError> {
    match extents {
        None => Ok(vec![(0, size - size % BLOCK as u64)]),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(io_err("reading", path))?;
            let list = wire::parse_extents(&text).map_err(|detail| PipeError::Extents {
                path: path.to_path_buf(),
                detail,
            })?;
            for &(o, l) in &list {
                if o + l > size {
                    return Err(PipeError::Extents {
                        path: path.to_path_buf(),
                        detail: format!("{o} {l} ends past the device's {size} bytes"),
                    });
                }
            }
            Ok(list)
        }
    }
}

fn open_port(name: &str) -> Result<File, PipeError> {
    let path = if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        crate::ports::find(name)?
    };
    OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("opening port", &path))
}

/// Reads `len` bytes at `offset` with O_DIRECT; on an error, block by block, so one bad
/// block does not cost its neighbours. Returns which blocks read.
fn read_chunk(file: &File, buf: &mut [u8], offset: u64) -> Vec<bool> {
    let blocks = buf.len() / BLOCK;
    if file.read_exact_at(buf, offset).is_ok() {
        return vec![true; blocks];
    }
    (0..blocks)
        .map(|i| {
            file.read_exact_at(
                &mut buf[i * BLOCK..(i + 1) * BLOCK],
                offset + (i * BLOCK) as u64,
            )
            .is_ok()
        })
        .collect()
}

/// The harness's witness reader.
fn read(
    snapshot: &Path,
    live: &Path,
    volume: &str,
    extents: Option<&Path>,
    port: &str,
    chunk: usize,
) -> Result<(), PipeError> {
    let started = Instant::now();
    let snap = open_direct(snapshot)?;
    let live_file = open_direct(live)?;
    let size = device_size(&snap, snapshot)?;
    let list = ranges(extents, size)?;
    let blocks: u64 = list.iter().map(|(_, l)| l / BLOCK as u64).sum();
    let mut out = io::BufWriter::with_capacity(1 << 20, open_port(port)?);
    let port_path = PathBuf::from(port);
    let werr = |e| PipeError::Io {
        what: "writing to",
        path: port_path.clone(),
        source: e,
    };
    out.write_all(&wire::reader_header(volume, blocks))
        .map_err(werr)?;
    let mut sbuf = Aligned::new(chunk * BLOCK);
    let mut lbuf = Aligned::new(chunk * BLOCK);
    let (mut records, mut equal, mut differs, mut snap_errors, mut live_errors) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (offset, length) in list {
        let mut at = offset;
        let end = offset + length;
        while at < end {
            let n = ((end - at) as usize).min(chunk * BLOCK);
            let s_ok = read_chunk(&snap, &mut sbuf.bytes_mut()[..n], at);
            let l_ok = read_chunk(&live_file, &mut lbuf.bytes_mut()[..n], at);
            for i in 0..n / BLOCK {
                let block = at / BLOCK as u64 + i as u64;
                let s = &sbuf.bytes()[i * BLOCK..(i + 1) * BLOCK];
                let l = &lbuf.bytes()[i * BLOCK..(i + 1) * BLOCK];
                out.write_all(&block.to_le_bytes()).map_err(werr)?;
                if !s_ok[i] {
                    snap_errors += 1;
                    out.write_all(&[wire::TAG_SNAP_ERROR]).map_err(werr)?;
                } else if !l_ok[i] {
                    live_errors += 1;
                    out.write_all(&[wire::TAG_LIVE_ERROR]).map_err(werr)?;
                    out.write_all(s).map_err(werr)?;
                } else if s == l {
                    equal += 1;
                    out.write_all(&[wire::TAG_EQUAL]).map_err(werr)?;
                    out.write_all(s).map_err(werr)?;
                } else {
                    differs += 1;
                    out.write_all(&[wire::TAG_DIFFERS]).map_err(werr)?;
                    out.write_all(s).map_err(werr)?;
                    out.write_all(l).map_err(werr)?;
                }
                records += 1;
            }
            at += n as u64;
        }
    }
    out.write_all(&wire::reader_end(records)).map_err(werr)?;
    out.flush().map_err(werr)?;
    println!(
        "{{\"blocks\":{records},\"live_equal\":{equal},\"live_differs\":{differs},\"snapshot_errors\":{snap_errors},\"live_errors\":{live_errors},\"seconds\":{:.3}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The built-in copier: the device (or its extents) to the channel.
fn send(device: &Path, extents: Option<&Path>, port: &str) -> Result<(), PipeError> {
    const CHUNK: usize = 1 << 20;
    let started = Instant::now();
    let dev = open_direct(device)?;
    let size = device_size(&dev, device)?;
    let list = ranges(extents, size)?;
    let mut out = open_port(port)?;
    let port_path = PathBuf::from(port);
    let werr = |e| PipeError::Io {
        what: "writing to",
        path: port_path.clone(),
        source: e,
    };
    let mut buf = Aligned::new(CHUNK);
    let mut bytes = 0u64;
    if extents.is_some() {
        out.write_all(wire::EXTENTS_MAGIC).map_err(werr)?;
    }
    for &(offset, length) in &list {
        if extents.is_some() {
            out.write_all(format!("EXTENT {offset} {length}\n").as_bytes())
                .map_err(werr)?;
        }
        let mut at = offset;
        while at < offset + length {
            let n = ((offset + length - at) as usize).min(CHUNK);
            dev.read_exact_at(&mut buf.bytes_mut()[..n], at)
                .map_err(io_err("reading", device))?;
            out.write_all(&buf.bytes()[..n]).map_err(werr)?;
            at += n as u64;
            bytes += n as u64;
        }
    }
    if extents.is_some() {
        out.write_all(b"END\n").map_err(werr)?;
    }
    out.flush().map_err(werr)?;
    println!(
        "{{\"bytes\":{bytes},\"extents\":{},\"seconds\":{:.3}}}",
        list.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Announces the instant and waits for the harness's answer.
fn instant(port: &str, timeout: Duration) -> Result<Done, PipeError> {
    let at = monotonic_ns();
    let path = if port.starts_with('/') {
        PathBuf::from(port)
    } else {
        crate::ports::find(port)?
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err("opening port", &path))?;
    let mut line =
        serde_json::to_string(&InstantMessage::Instant { instant_ns: at }).expect("serializes");
    line.push('\n');
    (&file)
        .write_all(line.as_bytes())
        .map_err(io_err("writing to", &path))?;
    // The answer comes on the same port; a reader thread keeps the deadline honest
    // (a port read does not time out by itself).
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = file.try_clone().map_err(io_err("duplicating", &path))?;
    std::thread::spawn(move || {
        let mut lines = BufReader::new(reader);
        let mut answer = String::new();
        let _ = lines.read_line(&mut answer);
        let _ = tx.send(answer);
    });
    let answer = rx
        .recv_timeout(timeout)
        .map_err(|_| PipeError::NoAnswer(timeout))?;
    match serde_json::from_str::<InstantMessage>(answer.trim()) {
        Ok(InstantMessage::Continue) => {
            println!("{{\"instant_ns\":{at}}}");
            Ok(Done::Ok)
        }
        Ok(InstantMessage::Abort { reason }) => Ok(Done::Aborted(reason)),
        Ok(InstantMessage::Instant { .. }) | Err(_) => {
            Err(PipeError::BadAnswer(answer.trim().to_string()))
        }
    }
}

/// Prints the device byte ranges of a file, one `<offset> <length>` per line.
fn file_extents(path: &Path) -> Result<(), PipeError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let ranges =
        crate::workload::fiemap::physical_ranges(&file).map_err(|source| PipeError::Fiemap {
            path: path.to_path_buf(),
            source,
        })?;
    for (offset, length) in ranges {
        println!("{offset} {length}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn usage_errors_name_the_problem() {
        for bad in [
            &["frobnicate"][..],
            &["read", "--snapshot"],
            &["send", "--device", "/x", "--bogus", "1"],
            &["read", "--live", "/a", "--volume", "v"],
            &["extents"],
        ] {
            match main_with(&args(bad)) {
                Err(PipeError::Usage(text)) => assert!(!text.is_empty()),
                Err(other) => panic!("{bad:?}: {other}"),
                Ok(_) => panic!("{bad:?} passed"),
            }
        }
    }

    #[test]
    fn the_reader_writes_every_block_with_its_live_comparison() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        let live = dir.path().join("live");
        let port = dir.path().join("port");
        let mut s = vec![1u8; 3 * BLOCK];
        let mut l = s.clone();
        l[BLOCK + 5] = 9;
        s[2 * BLOCK] = 7;
        l[2 * BLOCK] = 7;
        std::fs::write(&snap, &s).unwrap();
        std::fs::write(&live, &l).unwrap();
        std::fs::write(&port, b"").unwrap();
        // tmpfs refuses O_DIRECT; skip where the test directory cannot do it.
        if open_direct(&snap).is_err() {
            return;
        }
        read(&snap, &live, "v", None, port.to_str().unwrap(), 2).unwrap();
        let bytes = std::fs::read(&port).unwrap();
        let mut d = wire::ReaderDecoder::default();
        d.push(&bytes);
        let mut tags = Vec::new();
        while let Some(e) = d.next_event().unwrap() {
            if let wire::ReaderEvent::Block { live, .. } = e {
                tags.push(live);
            }
        }
        assert_eq!(tags.len(), 3);
        assert_eq!(tags[0], wire::LiveRead::Equal);
        assert!(matches!(tags[1], wire::LiveRead::Differs(_)));
        assert_eq!(tags[2], wire::LiveRead::Equal);
    }
}

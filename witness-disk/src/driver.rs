//! Drives an [`Engine`] from the host, without QEMU: requests are laid out as
//! descriptor chains in a real guest memory (vm-memory's mmap) and go through the same
//! parser, faults, layers and history as the guest's. For tests and for the cost
//! benchmark (`bw-disk cost`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::engine::{Clock, Completer, Engine, EngineConfig};
use crate::hash::{BLOCK_SIZE, SECTOR_SIZE};
use crate::history::{Header, HistoryWriter, FORMAT_VERSION};
use crate::layers::LiveLayers;
use crate::request::{wire, Segment};
use crate::serve::ServeError;

/// Guest memory per slot (a slot is one request in flight).
const SLOT: u64 = 8 << 20;
/// Slots, so heads 0..SLOTS.
pub const SLOTS: u16 = 8;

/// Collects completions: head → used length.
#[derive(Default)]
pub struct Recorder {
    done: Mutex<HashMap<u16, u32>>,
    cv: Condvar,
}

impl Completer for Recorder {
    fn complete(&self, head: u16, used_len: u32) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(head, used_len);
        self.cv.notify_all();
    }
}

/// A request to lay out in a slot.
#[derive(Clone, Debug)]
pub enum HostRequest<'a> {
    Read { offset: u64, len: u64 },
    Write { offset: u64, data: &'a [u8] },
    Flush,
    GetId,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// An engine with a host-side guest.
pub struct HostDriver {
    pub engine: Arc<Engine>,
    mem: GuestMemoryAtomic<GuestMemoryMmap<()>>,
    recorder: Arc<Recorder>,
}

impl HostDriver {
    /// Opens the layers over `image` in `state_dir`, a history at `history`, and starts
    /// an engine.
    pub fn start(
        image: &Path,
        state_dir: &Path,
        history: &Path,
        cfg: EngineConfig,
    ) -> Result<HostDriver, ServeError> {
        let layers = LiveLayers::create(image, state_dir)?;
        let (clock, wall, mono) = Clock::start();
        let header = Header {
            format_version: FORMAT_VERSION,
            block_size: BLOCK_SIZE,
            sector_size: SECTOR_SIZE,
            disk_bytes: layers.stack().disk_bytes(),
            hash: "xxh3-128".into(),
            origin_wall_ns: wall,
            origin_monotonic_ns: mono,
            serial: cfg.serial.clone(),
            image: image.to_path_buf(),
            max_queues: cfg.max_queues,
            schedule: cfg.schedule,
            writer: "host driver".into(),
        };
        let writer = HistoryWriter::create(history, &header)?;
        let mmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (SLOT * u64::from(SLOTS)) as usize)])
                .map_err(|e| ServeError::Invalid(format!("guest memory: {e}")))?;
        Ok(HostDriver {
            engine: Engine::start(cfg, clock, layers, writer),
            mem: GuestMemoryAtomic::new(mmap),
            recorder: Arc::default(),
        })
    }

    fn header(&self, at: u64, typ: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&typ.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .memory()
            .write_slice(&h, GuestAddress(at))
            .expect("in memory");
    }

    /// Lays out `req` in slot `head` and submits it on `queue`.
    pub fn submit(&self, queue: u16, head: u16, req: &HostRequest) {
        assert!(head < SLOTS, "slot {head} out of range");
        self.recorder
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&head);
        let base = u64::from(head) * SLOT;
        let (hdr, status, data) = (base, base + 64, base + 4096);
        let mem = self.mem.memory();
        mem.write_slice(&[0xFF], GuestAddress(status))
            .expect("in memory");
        let seg = |addr, len: u64, writable| Segment {
            addr,
            len: len as u32,
            writable,
        };
        let mut chain = vec![seg(hdr, 16, false)];
        match req {
            HostRequest::Read { offset, len } => {
                self.header(hdr, wire::T_IN, offset / SECTOR_SIZE);
                chain.push(seg(data, *len, true));
            }
            HostRequest::Write {
                offset,
                data: bytes,
            } => {
                self.header(hdr, wire::T_OUT, offset / SECTOR_SIZE);
                mem.write_slice(bytes, GuestAddress(data))
                    .expect("in memory");
                chain.push(seg(data, bytes.len() as u64, false));
            }
            HostRequest::Flush => self.header(hdr, wire::T_FLUSH, 0),
            HostRequest::GetId => {
                self.header(hdr, wire::T_GET_ID, 0);
                chain.push(seg(data, 20, true));
            }
            HostRequest::Discard { offset, len } | HostRequest::WriteZeroes { offset, len, .. } => {
                let (typ, flags) = match req {
                    HostRequest::WriteZeroes { unmap: true, .. } => {
                        (wire::T_WRITE_ZEROES, wire::FLAG_UNMAP)
                    }
                    HostRequest::WriteZeroes { .. } => (wire::T_WRITE_ZEROES, 0),
                    _ => (wire::T_DISCARD, 0),
                };
                self.header(hdr, typ, 0);
                let mut r = [0u8; 16];
                r[0..8].copy_from_slice(&(offset / SECTOR_SIZE).to_le_bytes());
                r[8..12].copy_from_slice(&((len / SECTOR_SIZE) as u32).to_le_bytes());
                r[12..16].copy_from_slice(&flags.to_le_bytes());
                mem.write_slice(&r, GuestAddress(hdr + 16))
                    .expect("in memory");
                chain[0].len = 32;
            }
        }
        chain.push(seg(status, 1, true));
        self.engine
            .submit(queue, head, &chain, mem, self.recorder.clone());
    }

    /// Submits a raw chain (for malformed-request tests).
    pub fn submit_raw(&self, queue: u16, head: u16, chain: &[Segment]) {
        self.recorder
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&head);
        self.engine
            .submit(queue, head, chain, self.mem.memory(), self.recorder.clone());
    }

    /// Waits until slot `head` completes; its status byte, or `None` at the deadline.
    pub fn wait(&self, head: u16, timeout: Duration) -> Option<u8> {
        let deadline = Instant::now() + timeout;
        let mut done = self.recorder.done.lock().unwrap_or_else(|p| p.into_inner());
        while !done.contains_key(&head) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            done = self
                .recorder
                .cv
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(done);
        Some(self.status(head))
    }

    /// The status byte in slot `head` (0xFF until the request completes).
    pub fn status(&self, head: u16) -> u8 {
        let mut b = [0u8];
        self.mem
            .memory()
            .read_slice(&mut b, GuestAddress(u64::from(head) * SLOT + 64))
            .expect("in memory");
        b[0]
    }

    /// The data area of slot `head`.
    pub fn data(&self, head: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut b, GuestAddress(u64::from(head) * SLOT + 4096))
            .expect("in memory");
        b
    }

    /// Submits on slot 0, queue 0, and waits up to 10 s: the status.
    pub fn run(&self, req: &HostRequest) -> Option<u8> {
        self.submit(0, 0, req);
        self.wait(0, Duration::from_secs(10))
    }

    /// Reads `len` bytes; `None` unless the read completed with OK.
    pub fn read(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        match self.run(&HostRequest::Read { offset, len })? {
            0 => Some(self.data(0, len as usize)),
            _ => None,
        }
    }
}

//! Helpers shared by the integration tests: a real `bw-target` process, an in-memory
//! block source, and sender options with short timeouts.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use reference_agent::sender::{BlockSource, SenderOptions};
use reference_agent::transport::Address;

pub const BS: u32 = 4096;

pub fn target_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bw-target"))
}

/// A running `bw-target serve --json`, killed on drop.
pub struct TargetProc {
    child: Child,
    pub addr: Address,
    pub store: PathBuf,
    events: Receiver<serde_json::Value>,
    /// Events printed before "listening" (e.g. "cleaned").
    pub startup: Vec<serde_json::Value>,
}

impl TargetProc {
    pub fn start(store: &Path, sock: &Path, extra: &[&str]) -> TargetProc {
        let addr = Address::Unix(sock.to_path_buf());
        let mut child = Command::new(target_bin())
            .arg("serve")
            .arg("--store")
            .arg(store)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--json")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bw-target");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: serde_json::Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(e) => panic!("bw-target printed a non-JSON line {line:?}: {e}"),
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut t = TargetProc {
            child,
            addr,
            store: store.to_path_buf(),
            events: rx,
            startup: Vec::new(),
        };
        loop {
            let v = t
                .events
                .recv_timeout(Duration::from_secs(10))
                .expect("bw-target did not report listening within 10 s");
            if v["event"] == "listening" {
                break;
            }
            t.startup.push(v);
        }
        t
    }

    /// The next event of this kind whose message contains `needle`.
    pub fn wait_message(&self, kind: &str, needle: &str, timeout: Duration) -> serde_json::Value {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let v = self.wait_event(kind, left);
            if v["message"].as_str().is_some_and(|m| m.contains(needle)) {
                return v;
            }
        }
    }

    /// The next event of this kind (others are skipped), or panics after `timeout`.
    pub fn wait_event(&self, kind: &str, timeout: Duration) -> serde_json::Value {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v["event"] == kind => return v,
                Ok(_) => {}
                Err(_) => panic!("no {kind:?} event from bw-target within {timeout:?}"),
            }
        }
    }

    /// Events received so far, without waiting.
    pub fn drain(&self) -> Vec<serde_json::Value> {
        self.events.try_iter().collect()
    }

    pub fn session_event(&self) -> serde_json::Value {
        self.wait_event("session", Duration::from_secs(20))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself (e.g. the crash fault).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < until,
                "bw-target did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TargetProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An image in memory as the block source.
#[derive(Clone)]
pub struct MemSource {
    pub data: Vec<u8>,
    pub bs: usize,
}

impl MemSource {
    /// Deterministic, non-zero content; `zero_every` blocks are left all zero.
    pub fn new(blocks: u64, seed: u64, zero_every: Option<u64>) -> MemSource {
        let bs = BS as usize;
        let mut data = vec![0u8; blocks as usize * bs];
        let mut x = seed | 1;
        for (b, chunk) in data.chunks_mut(bs).enumerate() {
            if zero_every.is_some_and(|n| b as u64 % n == n - 1) {
                continue;
            }
            for byte in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = (x >> 32) as u8;
            }
        }
        MemSource { data, bs }
    }

    pub fn volume_size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Overwrites block `b` with a recognisable pattern.
    pub fn scribble(&mut self, b: u64, val: u8) {
        let s = b as usize * self.bs;
        for (i, byte) in self.data[s..s + self.bs].iter_mut().enumerate() {
            *byte = val ^ (i as u8);
        }
    }
}

impl BlockSource for MemSource {
    fn read_blocks(&mut self, first_block: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let s = first_block as usize * self.bs;
        buf.copy_from_slice(&self.data[s..s + buf.len()]);
        Ok(())
    }
}

/// Sender options for tests: short timeouts, quick retries.
pub fn quick_opts() -> SenderOptions {
    SenderOptions {
        frame_bytes: 64 * 1024,
        window_bytes: 1 << 20,
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        commit_timeout: Duration::from_secs(20),
        max_reconnects: 6,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        deadline: Duration::from_secs(60),
        max_sends_per_frame: 8,
    }
}

/// Runs `bw-target` with arguments and returns (exit code, stdout).
pub fn run_target(args: &[&str]) -> (i32, String) {
    let out = Command::new(target_bin())
        .args(args)
        .output()
        .expect("run bw-target");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `bw-target export` of a generation into memory.
pub fn export(store: &Path, volume: &str, generation: u32) -> Vec<u8> {
    let out = Command::new(target_bin())
        .arg("export")
        .arg("--store")
        .arg(store)
        .arg("--volume")
        .arg(volume)
        .arg(generation.to_string())
        .output()
        .expect("run bw-target export");
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Files in a volume directory whose names start with `prefix`.
pub fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

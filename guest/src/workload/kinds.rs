//! The workload kinds: what each operation is. Every choice comes from the kind's seeded
//! RNG and its in-memory model of the files it manages, drawn before the operation's I/O,
//! so the sequence depends on the seed, the arguments and the starting directory only.
//!
//! Files are named `f000000`, `f000001`, ... in the target directory (fill creates them;
//! overwrite, append and delete-rewrite work on them, or create a working set of that
//! form when there are none). metadata-churn works in its own subdirectory `churn.W`.
//! Concurrent workloads that create or delete files need distinct directories.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::engine::{Engine, FileWrite, OpFailure, Phase, Step, CHUNK_BLOCKS};
use super::{Config, Kind, StopReason, Target, BLOCK};

/// One workload kind in progress.
pub(crate) trait Work {
    /// Runs one operation.
    fn step(&mut self, eng: &mut Engine<'_>) -> Result<Step, OpFailure>;
}

/// Scans the target and builds the kind's state, creating a working set if it needs one.
pub(crate) fn prepare(eng: &mut Engine<'_>) -> Result<Box<dyn Work>, OpFailure> {
    let cfg = eng.cfg();
    let mut rng = rng_for(cfg);
    let max_file_blocks = cfg.max_file_size / BLOCK;
    let max_write_blocks = cfg.max_write / BLOCK;
    match (&cfg.target, cfg.kind) {
        (Target::Device(_), Kind::Fill | Kind::FillToFull) => {
            let device = eng.device_blocks()?;
            let end = cfg.bytes.map_or(device, |b| (b / BLOCK).min(device));
            let at_end = match cfg.kind {
                Kind::Fill => StopReason::Done,
                _ if end == device => StopReason::Full,
                _ => StopReason::Bytes,
            };
            Ok(Box::new(DeviceFill {
                next: 0,
                end,
                at_end,
            }))
        }
        (Target::Device(_), Kind::Overwrite) => Ok(Box::new(DeviceOverwrite {
            rng,
            blocks: eng.device_blocks()?,
            max_write_blocks,
        })),
        (Target::Device(_), kind) => Err(OpFailure::Fatal(format!(
            "kind {kind} needs a filesystem directory, not a device"
        ))),
        (Target::Dir(_), Kind::Fill | Kind::FillToFull) => {
            let set = FileSet::scan(eng.dir()?)?;
            let (remaining, at_end) = match cfg.kind {
                Kind::Fill => (cfg.bytes.map(|b| b / BLOCK), StopReason::Done),
                _ => (cfg.bytes.map(|b| b / BLOCK), StopReason::Bytes),
            };
            Ok(Box::new(Fill {
                rng,
                next_index: set.next_index,
                remaining,
                at_end,
                max_file_blocks,
            }))
        }
        (Target::Dir(_), Kind::Overwrite) => {
            let set = FileSet::scan_or_create(eng, &mut rng)?;
            let mut ends = Vec::with_capacity(set.files.len());
            let mut total = 0;
            for file in &set.files {
                total += file.blocks;
                ends.push(total);
            }
            Ok(Box::new(Overwrite {
                rng,
                set,
                ends,
                total,
                max_write_blocks,
            }))
        }
        (Target::Dir(_), Kind::Append) => {
            let set = FileSet::scan_or_create(eng, &mut rng)?;
            Ok(Box::new(Append {
                rng,
                set,
                max_write_blocks,
            }))
        }
        (Target::Dir(_), Kind::DeleteRewrite) => {
            let set = FileSet::scan_or_create(eng, &mut rng)?;
            let budget = set.total_blocks();
            Ok(Box::new(DeleteRewrite {
                rng,
                set,
                budget,
                max_file_blocks,
            }))
        }
        (Target::Dir(_), Kind::MetadataChurn) => Ok(Box::new(Churn::start(eng, rng)?)),
    }
}

/// The RNG of a run: its own stream per (seed, kind, writer), so an overwrite after a fill
/// with the same seed does not mirror the fill's choices.
fn rng_for(cfg: &Config) -> ChaCha8Rng {
    let kind = Kind::ALL.iter().position(|k| *k == cfg.kind).unwrap_or(0) as u64;
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&cfg.seed.to_le_bytes());
    key[8..16].copy_from_slice(&kind.to_le_bytes());
    key[16..20].copy_from_slice(&cfg.writer.to_le_bytes());
    key[20..28].copy_from_slice(b"bw-wrkld");
    ChaCha8Rng::from_seed(key)
}

/// A file size in blocks, log-uniform in 1..=max: many small files, a few large ones.
/// Integers only, so host and guest draw the same sizes.
fn draw_blocks(rng: &mut ChaCha8Rng, max: u64) -> u64 {
    let max = max.max(1);
    let top = 63 - max.leading_zeros();
    let k = rng.gen_range(0..=top);
    let low = 1u64 << k;
    let high = ((low << 1) - 1).min(max);
    rng.gen_range(low..=high)
}

fn file_name(index: u64) -> String {
    format!("f{index:06}")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('f')?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SetFile {
    index: u64,
    /// Whole 4 KiB blocks; a partial tail is never written.
    blocks: u64,
}

/// The `fNNNNNN` files of the directory, by index.
#[derive(Debug, Default)]
struct FileSet {
    files: Vec<SetFile>,
    next_index: u64,
}

impl FileSet {
    fn scan(dir: &Path) -> Result<FileSet, OpFailure> {
        let failed = |e: io::Error| OpFailure::Fatal(format!("scan {}: {e}", dir.display()));
        let mut set = FileSet::default();
        for entry in fs::read_dir(dir).map_err(failed)? {
            let entry = entry.map_err(failed)?;
            let Some(index) = entry.file_name().to_str().and_then(parse_file_name) else {
                continue;
            };
            let meta = entry.metadata().map_err(failed)?;
            if meta.is_file() {
                set.files.push(SetFile {
                    index,
                    blocks: meta.len() / BLOCK,
                });
                set.next_index = set.next_index.max(index + 1);
            }
        }
        set.files.sort_by_key(|f| f.index);
        set.files.retain(|f| f.blocks > 0);
        Ok(set)
    }

    /// The existing files, or a new working set of `--set-size` when there are none.
    fn scan_or_create(eng: &mut Engine<'_>, rng: &mut ChaCha8Rng) -> Result<FileSet, OpFailure> {
        let mut set = FileSet::scan(eng.dir()?)?;
        if !set.files.is_empty() {
            return Ok(set);
        }
        let cfg = eng.cfg();
        let mut remaining = cfg.set_size / BLOCK;
        // Several files even for a small set, so operations spread over files.
        let max = (cfg.max_file_size / BLOCK).min((remaining / 8).max(1));
        while remaining > 0 {
            let blocks = draw_blocks(rng, max).min(remaining);
            let index = set.next_index;
            set.next_index += 1;
            eng.write_file(&file_name(index), new_file(blocks), "setup", Phase::Setup)?;
            set.files.push(SetFile { index, blocks });
            remaining -= blocks;
        }
        Ok(set)
    }

    fn total_blocks(&self) -> u64 {
        self.files.iter().map(|f| f.blocks).sum()
    }
}

fn new_file(blocks: u64) -> FileWrite {
    FileWrite {
        create: true,
        offset: 0,
        blocks,
        allocate: true,
    }
}

/// fill and fill-to-full over a directory: new files of seeded sizes.
struct Fill {
    rng: ChaCha8Rng,
    next_index: u64,
    /// Blocks still to write; None for fill-to-full without --bytes.
    remaining: Option<u64>,
    at_end: StopReason,
    max_file_blocks: u64,
}

impl Work for Fill {
    fn step(&mut self, eng: &mut Engine<'_>) -> Result<Step, OpFailure> {
        if self.remaining == Some(0) {
            return Ok(Step::Finished(self.at_end));
        }
        let mut blocks = draw_blocks(&mut self.rng, self.max_file_blocks);
        if let Some(remaining) = self.remaining {
            blocks = blocks.min(remaining);
        }
        let index = self.next_index;
        self.next_index += 1;
        eng.write_file(&file_name(index), new_file(blocks), "fill", Phase::Main)?;
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining -= blocks;
        }
        Ok(Step::Op)
    }
}

/// Random in-place writes, every block of the set equally likely.
struct Overwrite {
    rng: ChaCha8Rng,
    set: FileSet,
    /// Cumulative block counts: `ends[i]` is the end of file i in the concatenated set.
    ends: Vec<u64>,
    total: u64,
    max_write_blocks: u64,
}

impl Work for Overwrite {
    fn step(&mut self, eng: &mut Engine<'_>) -> Result<Step, OpFailure> {
        let at = self.rng.gen_range(0..self.total);
        let len = self.rng.gen_range(1..=self.max_write_blocks);
        let i = self.ends.partition_point(|&end| end <= at);
        let Some(file) = self.set.files.get(i).copied() else {
            return Err(OpFailure::Fatal(format!(
                "block {at} is outside the working set"
            )));
        };
        let start = at - (self.ends[i] - file.blocks);
        let write = FileWrite {
            create: false,
            offset: start * BLOCK,
            blocks: len.min(file.blocks - start),
            allocate: false,
        };
        eng.write_file(&file_name(file.index), write, "overwrite", Phase::Main)?;
        Ok(Step::Op)
    }
}

/// Appends to a random file of the set.
struct Append {
    rng: ChaCha8Rng,
    set: FileSet,
    max_write_blocks: u64,
}

impl Work for Append {
    fn step(&mut self, eng: &mut Engine<'_>) -> Result<Step, OpFailure> {
        let i = self.rng.gen_range(0..self.set.files.len());
        let blocks = self.rng.gen_range(1..=self.max_write_blocks);
        let file = &mut self.set.files[i];
        let write = FileWrite {
            create: false,
            offset: file.blocks * BLOCK,
            blocks,
            allocate: true,
        };
        let name = file_name(file.index);
        eng.write_file(&name, write, "append", Phase::Main)?;
        file.blocks += blocks;
        Ok(Step::Op)
    }
}

/// Deletes a random file and writes a new one, keeping the set within its starting size
/// so the freed space is what gets reused.
struct DeleteRewrite {
    rng: ChaCha8Rng,
    set: FileSet,
    budget: u64,
    max_file_blocks: u64,
}

impl Work for DeleteRewrite {
    fn step(&mut self, eng: &mut Engine<'_>) -> Result<Step, OpFailure> {
        let victim = match self.set.files.len() {
            0 => None,
            n => Some(self.rng.gen_range(0..n)),
        };
        let drawn = draw_blocks(&mut self.rng, self.max_file_blocks);
        if let Some(i) = victim {
            let name = file_name(self.set.files[i].index);
            eng.meta("delete", &name, None, |path| fs::remove_file(path))?;
            self.set.files.remove(i);
        }
        let room = self.budget.saturating_sub(self.set.total_blocks()).max(1);
        let blocks = drawn.min(room);
        let index = self.set.next_index;
        self.set.next_index += 1;
        eng.write_file(&file_name(index), new_file(blocks), "rewrite", Phase::Main)?;
        self.set.files.push(SetFile { index, blocks });
        Ok(Step::Op)
    }
}

/// fill or fill-to-full of a raw device, front to back.
struct DeviceFill {
    next: u64,
    end: u64,
    at_end: StopReason,
}

impl Work for DeviceFill {
    fn step(&mut self, eng: &mut Engine<'_>) -> Result<Step, OpFailure> {
        if self.next >= self.end {
            return Ok(Step::Finished(self.at_end));
        }
        let blocks = (self.end - self.next).min(CHUNK_BLOCKS);
        eng.write_device(self.next, blocks, "fill", Phase::Main)?;
        self.next += blocks;
        Ok(Step::Op)
    }
}

/// Random writes anywhere on a raw device.
struct DeviceOverwrite {
    rng: ChaCha8Rng,
    blocks: u64,
    max_write_blocks: u64,
}

impl Work for DeviceOverwrite {
    fn step(&mut self, eng: &mut Engine<'_>) -> Result<Step, OpFailure> {
        let at = self.rng.gen_range(0..self.blocks);
        let len = self.rng.gen_range(1..=self.max_write_blocks);
        eng.write_device(at, len.min(self.blocks - at), "overwrite", Phase::Main)?;
        Ok(Step::Op)
    }
}

/// Most files metadata-churn keeps; past it, creates turn into unlinks.
const CHURN_MAX_FILES: usize = 512;
const CHURN_MAX_DIRS: usize = 64;
const CHURN_MODES: [u32; 5] = [0o600, 0o640, 0o644, 0o444, 0o755];

struct ChurnFile {
    path: String,
    bytes: u64,
}

/// create/rename/unlink/mkdir/chmod/truncate of small files under `churn.W`.
struct Churn {
    rng: ChaCha8Rng,
    dirs: Vec<String>,
    files: Vec<ChurnFile>,
    counter: u64,
}

#[derive(Clone, Copy, Debug)]
enum ChurnOp {
    Create,
    Rename,
    Unlink,
    Mkdir,
    Chmod,
    Truncate,
}

impl Churn {
    fn start(eng: &mut Engine<'_>, rng: ChaCha8Rng) -> Result<Churn, OpFailure> {
        let dir = eng.dir()?;
        let writer = eng.cfg().writer;
        // A directory of its own, fresh, so names never collide with an earlier run's.
        let root = (0..)
            .map(|n| match n {
                0 => format!("churn.{writer}"),
                n => format!("churn.{writer}.{n}"),
            })
            .find(|name| !dir.join(name).exists())
            .unwrap_or_else(|| format!("churn.{writer}"));
        eng.meta("mkdir", &root, None, |path| fs::create_dir(path))?;
        Ok(Churn {
            rng,
            dirs: vec![root],
            files: Vec::new(),
            counter: 0,
        })
    }

    fn choose(&mut self) -> ChurnOp {
        let roll = self.rng.gen_range(0..100);
        let op = match roll {
            0..=24 => ChurnOp::Create,
            25..=39 => ChurnOp::Rename,
            40..=54 => ChurnOp::Unlink,
            55..=59 => ChurnOp::Mkdir,
            60..=79 => ChurnOp::Chmod,
            _ => ChurnOp::Truncate,
        };
        match op {
            _ if self.files.is_empty() => ChurnOp::Create,
            ChurnOp::Create if self.files.len() >= CHURN_MAX_FILES => ChurnOp::Unlink,
            ChurnOp::Mkdir if self.dirs.len() >= CHURN_MAX_DIRS => ChurnOp::Create,
            op => op,
        }
    }

    fn new_name(&mut self, prefix: char) -> String {
        let dir = &self.dirs[self.rng.gen_range(0..self.dirs.len())];
        self.counter += 1;
        format!("{dir}/{prefix}{:06}", self.counter)
    }
}

impl Work for Churn {
    fn step(&mut self, eng: &mut Engine<'_>) -> Result<Step, OpFailure> {
        let stamped = eng.cfg().stamped;
        match self.choose() {
            ChurnOp::Create => {
                let path = self.new_name('c');
                let blocks = self.rng.gen_range(0..=2);
                eng.write_file(&path, new_file(blocks), "churn-create", Phase::Main)?;
                self.files.push(ChurnFile {
                    path,
                    bytes: blocks * BLOCK,
                });
            }
            ChurnOp::Rename => {
                let i = self.rng.gen_range(0..self.files.len());
                let to = self.new_name('c');
                let full_to = eng.dir()?.join(&to);
                eng.meta("rename", &self.files[i].path, Some(&to), |from| {
                    fs::rename(from, &full_to)
                })?;
                self.files[i].path = to;
            }
            ChurnOp::Unlink => {
                let i = self.rng.gen_range(0..self.files.len());
                eng.meta("unlink", &self.files[i].path, None, |path| {
                    fs::remove_file(path)
                })?;
                self.files.swap_remove(i);
            }
            ChurnOp::Mkdir => {
                let path = self.new_name('d');
                eng.meta("mkdir", &path, None, |p| fs::create_dir(p))?;
                self.dirs.push(path);
            }
            ChurnOp::Chmod => {
                let i = self.rng.gen_range(0..self.files.len());
                let mode = CHURN_MODES[self.rng.gen_range(0..CHURN_MODES.len())];
                eng.meta("chmod", &self.files[i].path, None, |path| {
                    fs::set_permissions(path, fs::Permissions::from_mode(mode))
                })?;
            }
            ChurnOp::Truncate => {
                let i = self.rng.gen_range(0..self.files.len());
                let bytes = self.files[i].bytes;
                // Stamped files keep whole blocks: a cut block would fail its checksum.
                let len = if stamped {
                    self.rng.gen_range(0..=bytes / BLOCK) * BLOCK
                } else {
                    self.rng.gen_range(0..=bytes + BLOCK)
                };
                eng.meta("truncate", &self.files[i].path, None, |path| {
                    fs::OpenOptions::new().write(true).open(path)?.set_len(len)
                })?;
                self.files[i].bytes = len;
            }
        }
        Ok(Step::Op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_log_uniform_within_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let draws: Vec<u64> = (0..2000).map(|_| draw_blocks(&mut rng, 2048)).collect();
        assert!(draws.iter().all(|b| (1..=2048).contains(b)));
        let small = draws.iter().filter(|b| **b < 16).count();
        let large = draws.iter().filter(|b| **b >= 1024).count();
        // Each power of two up to 2^11 is a twelfth of the draws: 4 of 12 below 16, and
        // 2 of 12 at 1024 or more (1024..=2047, then 2048 alone).
        assert!((500..=830).contains(&small), "small {small}");
        assert!((250..=420).contains(&large), "large {large}");
        assert_eq!(draw_blocks(&mut rng, 1), 1);
        assert_eq!(draw_blocks(&mut rng, 0), 1);
    }

    #[test]
    fn set_file_names_round_trip() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&file_name(1_234_567)), Some(1_234_567));
        for other in ["f12", "g000001", "f00000x", "churn.0", "f"] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn streams_differ_by_kind_and_writer_but_not_by_run() {
        let base = Config {
            kind: Kind::Overwrite,
            target: Target::Dir("/d".into()),
            seed: 9,
            writer: 0,
            rate: None,
            paced: None,
            paced_timeout: crate::workload::DEFAULT_PACED_TIMEOUT,
            duration: None,
            bytes: None,
            ops: None,
            stamped: false,
            sync_every: None,
            log: None,
            set_size: 1 << 20,
            max_file_size: 1 << 20,
            max_write: 1 << 16,
        };
        let first = |cfg: &Config| rng_for(cfg).gen::<u64>();
        assert_eq!(first(&base), first(&base.clone()));
        assert_ne!(
            first(&base),
            first(&Config {
                kind: Kind::Fill,
                ..base.clone()
            })
        );
        assert_ne!(
            first(&base),
            first(&Config {
                writer: 1,
                ..base.clone()
            })
        );
        assert_ne!(
            first(&base),
            first(&Config {
                seed: 10,
                ..base.clone()
            })
        );
    }
}

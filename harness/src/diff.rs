//! `blockwitness diff A B`: classify offline, block by block, for a developer holding
//! field data.
//!
//! - Two raw images: A is the truth, B the backup. Only the target stage exists, so a
//!   differing block is unattributed, unless both blocks carry stamps from the stamped
//!   workload: a later write in B is data from the future, an older one data from the
//!   past. Blocks B lacks (B shorter) are missing. ext2/ext4 blocks are mapped to files.
//! - Two report directories (recordings): A supplies the truth, B every other stage, per
//!   volume and generation present in both. `diff R R` reproduces R's own classification.
//!
//! Either way the result is a report directory and a printed summary.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fsmap;
use crate::hash::{hash_image, HashError};
use crate::model::{BackupKind, BlockClass, Exit, Expectations, BLOCK};
use crate::record::{
    Claim, GenerationRecord, RecordError, Recording, RunEvents, RunInfo, StampEvidence,
    VolumeRecord, RECORDING_FILE,
};
use crate::report::{self, ReportError, ReportOutcome};
use crate::scenario::Filesystem;

/// Problem blocks whose content is read back for stamps; beyond this they stay
/// unattributed rather than making a diff of two unrelated disks read both twice.
const MAX_STAMP_READS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot diff an image with a report directory: give two images (truth, backup) or two report directories ({a} is {a_kind}, {b} is {b_kind})")]
    Mixed {
        a: PathBuf,
        a_kind: &'static str,
        b: PathBuf,
        b_kind: &'static str,
    },
    #[error("hashing failed")]
    Hash(#[source] HashError),
    #[error("cannot read block {block} of {path}")]
    ReadBlock {
        path: PathBuf,
        block: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the recording in {dir}")]
    Recording {
        dir: PathBuf,
        #[source]
        source: RecordError,
    },
    #[error(
        "volume {volume} generation {generation}: {a} has {a_blocks} blocks and {b} has {b_blocks}"
    )]
    Shape {
        volume: String,
        generation: u32,
        a: PathBuf,
        a_blocks: u64,
        b: PathBuf,
        b_blocks: u64,
    },
    #[error("the recordings share no volume and generation: nothing to compare")]
    NothingInCommon,
    #[error("mapping blocks to files failed")]
    FsMap(#[source] fsmap::FsMapError),
    #[error("writing the diff report failed")]
    Report(#[source] ReportError),
}

/// What a diff found.
#[derive(Debug)]
pub struct DiffOutcome {
    pub report: ReportOutcome,
    /// Volume/generation pairs compared, with their problem blocks per class.
    pub compared: Vec<(String, u32, u64, BTreeMap<BlockClass, u64>)>,
    /// Pairs present on one side only.
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
}

impl DiffOutcome {
    /// Pass when the images agree, a product failure when blocks differ.
    pub fn exit(&self) -> Exit {
        let differs = self
            .compared
            .iter()
            .any(|(_, _, _, c)| c.iter().any(|(k, n)| k.is_problem() && *n > 0));
        if differs {
            Exit::ProductFailure
        } else {
            Exit::Pass
        }
    }
}

impl std::fmt::Display for DiffOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        for (volume, generation, blocks, counts) in &self.compared {
            let problems: Vec<String> = counts
                .iter()
                .filter(|(c, n)| c.is_problem() && **n > 0)
                .map(|(c, n)| format!("{} {n}", c.name()))
                .collect();
            let verdict = if problems.is_empty() {
                "identical".to_string()
            } else {
                problems.join(", ")
            };
            writeln!(
                f,
                "{volume} generation {generation}: {blocks} blocks, {verdict}"
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "skipped: {s}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        let worst: Vec<String> = self
            .report
            .summary
            .volumes
            .iter()
            .flat_map(|v| v.generations.iter().map(move |g| (v, g)))
            .filter(|(_, g)| {
                g.counts
                    .iter()
                    .any(|(c, n)| c != "ok" && c != "excluded" && *n > 0)
            })
            .map(|(v, g)| format!("{}#{}", v.name, g.generation))
            .collect();
        if !worst.is_empty() {
            writeln!(f, "differing: {}", worst.join(", "))?;
        }
        write!(
            f,
            "report: {}",
            self.report.dir.join(report::HTML_FILE).display()
        )
    }
}

/// Diffs A against B and writes a report into `out`.
pub fn diff(a: &Path, b: &Path, out: &Path) -> Result<DiffOutcome, DiffError> {
    let kind = |p: &Path| -> Result<&'static str, DiffError> {
        if p.is_dir() {
            Ok("a directory")
        } else if p.is_file() {
            Ok("a file")
        } else {
            Err(DiffError::Missing { path: p.to_owned() })
        }
    };
    let (ka, kb) = (kind(a)?, kind(b)?);
    match (a.is_dir(), b.is_dir()) {
        (false, false) => diff_images(a, b, out),
        (true, true) => diff_recordings(a, b, out),
        _ => Err(DiffError::Mixed {
            a: a.to_owned(),
            a_kind: ka,
            b: b.to_owned(),
            b_kind: kb,
        }),
    }
}

fn run_info(a: &Path, b: &Path, what: &str) -> RunInfo {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    RunInfo {
        run_id: format!("diff-{started_unix}"),
        scenario: "diff".into(),
        scenario_file: String::new(),
        pipeline: what.into(),
        started_unix,
        repro: format!("blockwitness diff {} {}", a.display(), b.display()),
        blockwitness_version: env!("CARGO_PKG_VERSION").into(),
        ..RunInfo::default()
    }
}

fn read_block(file: &File, path: &Path, block: u64) -> Result<Option<[u8; BLOCK]>, DiffError> {
    let mut buf = [0u8; BLOCK];
    match file.read_exact_at(&mut buf, block * BLOCK as u64) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(source) => Err(DiffError::ReadBlock {
            path: path.to_owned(),
            block,
            source,
        }),
    }
}

/// Decodes the stamped pieces `held` holds at `blocks` (at most [`MAX_STAMP_READS`] of
/// them), with the truth image's pieces at the same block. Blocks without a valid piece
/// in `held`, or past its end, are left out.
pub fn read_stamps(
    truth: &Path,
    held: &Path,
    blocks: &[u64],
) -> Result<BTreeMap<u64, StampEvidence>, DiffError> {
    let open = |p: &Path| {
        File::open(p).map_err(|source| DiffError::ReadBlock {
            path: p.to_owned(),
            block: 0,
            source,
        })
    };
    let (ft, fh) = (open(truth)?, open(held)?);
    let mut out = BTreeMap::new();
    for &block in blocks.iter().take(MAX_STAMP_READS) {
        let Some(data) = read_block(&fh, held, block)? else {
            continue;
        };
        let held = bw_guest::stamp::decode_block(&data).unwrap_or_default();
        if !held.is_empty() {
            let truth = read_block(&ft, truth, block)?
                .and_then(|t| bw_guest::stamp::decode_block(&t).ok())
                .unwrap_or_default();
            out.insert(block, StampEvidence { held, truth });
        }
    }
    Ok(out)
}

/// For the run, after a generation is recorded: classifies it, then fills in the owning
/// file of every problem block (from the truth image) and the stamp each one holds (from
/// the target's stored image, when there is one). Returns notes for the report.
pub fn annotate_generation(
    volume: &str,
    g: &mut GenerationRecord,
    fs: Filesystem,
    truth_image: &Path,
    target_image: Option<&Path>,
) -> Result<Vec<String>, DiffError> {
    let problems: Vec<u64> = crate::classify::classify_generation(volume, g)
        .findings
        .iter()
        .map(|f| f.block)
        .collect();
    let mut notes = Vec::new();
    if problems.is_empty() {
        return Ok(notes);
    }
    let owners = fsmap::map_blocks(truth_image, fs, &problems).map_err(DiffError::FsMap)?;
    g.owners
        .extend(owners.into_iter().map(|(b, o)| (b, o.to_string())));
    if let Some(target) = target_image {
        g.stamps
            .extend(read_stamps(truth_image, target, &problems)?);
        if problems.len() > MAX_STAMP_READS {
            notes.push(format!(
                "volume {volume}: only the first {MAX_STAMP_READS} problem blocks were read for stamps"
            ));
        }
    }
    Ok(notes)
}

/// The filesystem of an image, if e2fsprogs recognise it.
fn detect_ext(image: &Path) -> Option<Filesystem> {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let block_size = text
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())?;
    let journal = text
        .lines()
        .any(|l| l.starts_with("Filesystem features:") && l.contains("has_journal"));
    Some(if journal {
        Filesystem::Ext4 { block_size }
    } else {
        Filesystem::Ext2 { block_size }
    })
}

fn diff_images(a: &Path, b: &Path, out: &Path) -> Result<DiffOutcome, DiffError> {
    let (ha, hb) = rayon::join(|| hash_image(a), || hash_image(b));
    let (ha, hb) = (ha.map_err(DiffError::Hash)?, hb.map_err(DiffError::Hash)?);
    let mut notes = Vec::new();
    if hb.len() > ha.len() {
        notes.push(format!(
            "{} has {} blocks past the end of {}; they are not compared",
            b.display(),
            hb.len() - ha.len(),
            a.display()
        ));
    }
    let n = ha.len();
    let mut g = GenerationRecord::new(1, BackupKind::Full, ha.clone());
    g.target = Some((0..n).map(|i| hb.get(i).copied()).collect());
    g.committed = true;
    g.agent = Claim::Silent;
    g.target_claim = Claim::Silent;

    // Stamps of the differing blocks.
    let differing: Vec<u64> = (0..n)
        .filter(|&i| hb.get(i) != Some(&ha[i]))
        .map(|i| i as u64)
        .collect();
    g.stamps = read_stamps(a, b, &differing)?;
    if differing.len() > MAX_STAMP_READS {
        notes.push(format!(
            "only the first {MAX_STAMP_READS} differing blocks were read for stamps"
        ));
    }

    let fs = detect_ext(a);
    match fs {
        Some(fs) => {
            let owners = fsmap::map_blocks(a, fs, &differing).map_err(DiffError::FsMap)?;
            g.owners = owners
                .into_iter()
                .map(|(b, o)| (b, o.to_string()))
                .collect();
        }
        None => notes.push(format!(
            "{} is not an ext2/ext4 image: blocks are not mapped to files",
            a.display()
        )),
    }

    let name = a
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let rec = Recording {
        run: run_info(a, b, "offline diff of two images (A = truth, B = backup)"),
        expect: Expectations::clean(),
        volumes: vec![VolumeRecord {
            name,
            fs: fs
                .map(|f| f.name().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            generations: vec![g],
        }],
        events: RunEvents::default(),
    };
    finish(rec, out, Vec::new(), notes)
}

fn diff_recordings(a: &Path, b: &Path, out: &Path) -> Result<DiffOutcome, DiffError> {
    let load = |dir: &Path| {
        Recording::load(&dir.join(RECORDING_FILE)).map_err(|source| DiffError::Recording {
            dir: dir.to_owned(),
            source,
        })
    };
    let (ra, rb) = (load(a)?, load(b)?);
    let mut volumes = Vec::new();
    let mut skipped = Vec::new();
    for vb in &rb.volumes {
        let va = ra.volumes.iter().find(|v| v.name == vb.name);
        let mut generations = Vec::new();
        for gb in &vb.generations {
            let Some(ga) =
                va.and_then(|v| v.generations.iter().find(|g| g.generation == gb.generation))
            else {
                skipped.push(format!(
                    "volume {} generation {} is only in {}",
                    vb.name,
                    gb.generation,
                    b.display()
                ));
                continue;
            };
            if ga.blocks != gb.blocks {
                return Err(DiffError::Shape {
                    volume: vb.name.clone(),
                    generation: gb.generation,
                    a: a.to_owned(),
                    a_blocks: ga.blocks,
                    b: b.to_owned(),
                    b_blocks: gb.blocks,
                });
            }
            let mut g = gb.clone();
            g.truth = ga.truth.clone();
            // Owners and stamps were worked out against B's own truth; keep B's, they
            // name what B's blocks hold.
            generations.push(g);
        }
        if !generations.is_empty() {
            volumes.push(VolumeRecord {
                name: vb.name.clone(),
                fs: vb.fs.clone(),
                generations,
            });
        }
    }
    for va in &ra.volumes {
        for ga in &va.generations {
            let in_b = rb.volumes.iter().any(|v| {
                v.name == va.name && v.generations.iter().any(|g| g.generation == ga.generation)
            });
            if !in_b {
                skipped.push(format!(
                    "volume {} generation {} is only in {}",
                    va.name,
                    ga.generation,
                    a.display()
                ));
            }
        }
    }
    if volumes.is_empty() {
        return Err(DiffError::NothingInCommon);
    }
    let mut run = run_info(
        a,
        b,
        "offline diff of two recordings (truth from A, other stages from B)",
    );
    run.image = rb.run.image.clone();
    run.kernel = rb.run.kernel.clone();
    run.seed = rb.run.seed;
    let rec = Recording {
        run,
        expect: Expectations::clean(),
        volumes,
        events: RunEvents::default(),
    };
    finish(rec, out, skipped, Vec::new())
}

fn finish(
    rec: Recording,
    out: &Path,
    skipped: Vec<String>,
    notes: Vec<String>,
) -> Result<DiffOutcome, DiffError> {
    let report = report::write(out, &rec, None).map_err(DiffError::Report)?;
    let c = crate::classify::classify(&rec).ok();
    let compared = c
        .map(|c| {
            c.generations
                .into_iter()
                .map(|g| (g.volume, g.generation, g.blocks, g.counts))
                .collect()
        })
        .unwrap_or_default();
    Ok(DiffOutcome {
        report,
        compared,
        skipped,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bw_guest::stamp::Stamp;

    fn stamped(lba: u64, seq: u64) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        Stamp {
            lba,
            seq,
            time_ns: seq * 1000,
            run: 7,
            writer: 1,
        }
        .write_into(&mut b);
        b
    }

    #[test]
    fn images_with_stamps_name_future_and_past_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("truth.img"), dir.path().join("backup.img"));
        let mut ta = vec![0u8; 64 * BLOCK];
        for lba in 0..64u64 {
            ta[lba as usize * BLOCK..][..BLOCK].copy_from_slice(&stamped(lba, 10));
        }
        let mut tb = ta.clone();
        tb[5 * BLOCK..][..BLOCK].copy_from_slice(&stamped(5, 11)); // later write: future
        tb[9 * BLOCK..][..BLOCK].copy_from_slice(&stamped(9, 3)); // older write: past
        tb[20 * BLOCK] ^= 1; // damaged, no valid stamp: unattributed
        tb.truncate(62 * BLOCK); // two blocks missing
        std::fs::write(&a, &ta).unwrap();
        std::fs::write(&b, &tb).unwrap();
        let out = diff(&a, &b, &dir.path().join("report")).unwrap();
        let (_, _, blocks, counts) = &out.compared[0];
        assert_eq!(*blocks, 64);
        assert_eq!(counts.get(&BlockClass::DataFromTheFuture), Some(&1));
        assert_eq!(counts.get(&BlockClass::DataFromThePast), Some(&1));
        assert_eq!(counts.get(&BlockClass::Unattributed), Some(&1));
        assert_eq!(counts.get(&BlockClass::MissingBlock), Some(&2));
        assert_eq!(out.exit(), Exit::ProductFailure);
        let csv = std::fs::read_to_string(dir.path().join("report/blocks.csv")).unwrap();
        assert!(csv.contains("write #11"), "{csv}");
        assert!(dir.path().join("report/index.html").is_file());
    }

    #[test]
    fn annotate_fills_stamps_and_says_raw_volumes_are_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let (t, b) = (dir.path().join("truth.img"), dir.path().join("target.img"));
        let mut truth = vec![0u8; 8 * BLOCK];
        truth[2 * BLOCK..3 * BLOCK].copy_from_slice(&stamped(2, 4));
        let mut target = truth.clone();
        target[2 * BLOCK..3 * BLOCK].copy_from_slice(&stamped(2, 6));
        std::fs::write(&t, &truth).unwrap();
        std::fs::write(&b, &target).unwrap();
        let mut g = GenerationRecord::new(1, BackupKind::Full, crate::hash::hash_bytes(&truth));
        g.target = Some(
            crate::hash::hash_bytes(&target)
                .into_iter()
                .map(Some)
                .collect(),
        );
        g.committed = true;
        annotate_generation("data", &mut g, Filesystem::None, &t, Some(&b)).unwrap();
        assert_eq!(g.stamps[&2].held[0].stamp.seq, 6);
        assert_eq!(g.stamps[&2].truth[0].stamp.seq, 4);
        assert!(g.owners[&2].starts_with("not mapped"), "{}", g.owners[&2]);
        let r = crate::classify::classify_generation("data", &g);
        assert_eq!(r.findings[0].class, BlockClass::DataFromTheFuture);
    }

    #[test]
    fn identical_images_are_identical() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        std::fs::write(&a, vec![3u8; 16 * BLOCK]).unwrap();
        let out = diff(&a, &a, &dir.path().join("r")).unwrap();
        assert_eq!(out.exit(), Exit::Pass);
        assert!(out.to_string().contains("identical"), "{out}");
    }

    #[test]
    fn mixed_inputs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        std::fs::write(&a, [0u8; 10]).unwrap();
        let err = diff(&a, dir.path(), &dir.path().join("r"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("two images") && err.contains("a directory"),
            "{err}"
        );
        let err = diff(&dir.path().join("nope"), &a, &dir.path().join("r"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}

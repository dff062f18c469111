//! `blockwitness bench oracle`: builds a seeded synthetic history of a 512 MiB volume
//! (100k writes, many in flight at once, hot blocks rewritten often, some rewrites of the
//! starting content, a few writes that never complete), a backup image taken at an
//! instant in its middle with a few planted future, past and corrupt blocks and an
//! excluded extent, then times the history oracle on it against hashing the same image
//! with xxh3-128 (the oracle's block hash) and with sha256, for reference. The oracle's
//! verdicts are checked against what was planted: a wrong answer is an error, not a
//! figure.

use std::fmt;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::oracle::{
    Backup, BackupError, BlockWrite, ContentHash, History, HistoryError, Oracle, OracleClass,
    Verdict, Write,
};

const BLOCK: usize = 4096;

#[derive(Clone, Debug)]
pub struct BenchOracleOptions {
    pub seed: u64,
    /// Volume size in 4 KiB blocks (default 131072: 512 MiB).
    pub blocks: u64,
    /// Writes in the history (default 100000).
    pub writes: u64,
    /// Timed runs of each contender; the best is reported.
    pub runs: u32,
}

impl Default for BenchOracleOptions {
    fn default() -> Self {
        BenchOracleOptions {
            seed: 1,
            blocks: 131_072,
            writes: 100_000,
            runs: 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchOracleError {
    #[error(
        "the synthetic volume needs at least 64 blocks and 10 writes (got {blocks} and {writes})"
    )]
    TooSmall { blocks: u64, writes: u64 },
    #[error("the synthetic history was rejected")]
    History(#[source] HistoryError),
    #[error("the synthetic backup was rejected")]
    Backup(#[source] BackupError),
    #[error("block {block}: planted {want}, the oracle says {got} ({reason})")]
    Missed {
        block: u64,
        want: String,
        got: String,
        reason: &'static str,
    },
    #[error("block {block} was not planted, yet the oracle says {got} ({reason})")]
    Unexpected {
        block: u64,
        got: OracleClass,
        reason: &'static str,
    },
}

/// One planted fault and what the oracle must say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// The block holds the data of write `seq`, submitted well after the instant.
    Future {
        seq: u64,
    },
    /// The block holds a version replaced long before the instant; `missing` is the
    /// first later write of the block to complete.
    Past {
        missing: u64,
    },
    Corrupt,
}

impl fmt::Display for Plant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plant::Future { seq } => write!(f, "data-from-the-future leaked by write #{seq}"),
            Plant::Past { missing } => write!(f, "data-from-the-past missing write #{missing}"),
            Plant::Corrupt => f.write_str("corrupt"),
        }
    }
}

/// A synthetic history and a backup image of it.
pub struct Synthetic {
    pub history: History,
    /// The backup image, `blocks * 4096` bytes.
    pub image: Vec<u8>,
    pub instant_ns: u64,
    pub excluded: std::ops::Range<u64>,
    pub planted: Vec<(u64, Plant)>,
}

/// Per (block, tag) 4 KiB of content; tag 0 is the starting content, a write's tag is
/// its sequence number + 1, unless it rewrites the starting content.
fn fill(seed: u64, block: u64, tag: u64, out: &mut [u8]) {
    let mut x =
        seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ tag.wrapping_mul(0xd1b5_4a32_d192_ed03);
    for chunk in out.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

fn content_hash(seed: u64, block: u64, tag: u64) -> ContentHash {
    let mut buf = [0u8; BLOCK];
    fill(seed, block, tag, &mut buf);
    ContentHash::of_block(&buf)
}

/// One block write in twenty rewrites the block's starting content.
fn tag_of(seed: u64, seq: u64, block: u64) -> u64 {
    let mix = (seed ^ seq.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ block.wrapping_mul(0x9e37_79b9))
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    if (mix >> 40).is_multiple_of(20) {
        0
    } else {
        seq + 1
    }
}

/// Builds the history, the snapshot at its middle instant, and plants faults.
pub fn synthesize(opts: &BenchOracleOptions) -> Result<Synthetic, BenchOracleError> {
    if opts.blocks < 64 || opts.writes < 10 {
        return Err(BenchOracleError::TooSmall {
            blocks: opts.blocks,
            writes: opts.writes,
        });
    }
    let seed = opts.seed;
    let blocks = opts.blocks;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let hot: Vec<u64> = (0..64).map(|_| rng.gen_range(0..blocks)).collect();

    // Submissions every 0-20 us, each taking 50 us to 3 ms: about a hundred in flight.
    let mut writes = Vec::with_capacity(opts.writes as usize);
    let mut choice = Vec::with_capacity(opts.writes as usize);
    let mut now = 0u64;
    for seq in 0..opts.writes {
        now += rng.gen_range(0..20_000);
        let complete = match rng.gen_range(0..2000) {
            0 => None,
            _ => Some(now + rng.gen_range(50_000..3_000_000)),
        };
        let first = match rng.gen_range(0..5) {
            0 => hot[rng.gen_range(0..hot.len())],
            _ => rng.gen_range(0..blocks),
        };
        let len = rng.gen_range(1..=8u64).min(blocks - first);
        writes.push(Write {
            seq,
            submit_ns: now,
            complete_ns: complete,
            blocks: (first..first + len)
                .map(|block| BlockWrite {
                    block,
                    hash: ContentHash::default(),
                })
                .collect(),
        });
        choice.push(rng.gen_bool(0.5));
    }
    writes.par_iter_mut().for_each(|w| {
        for bw in &mut w.blocks {
            bw.hash = content_hash(seed, bw.block, tag_of(seed, w.seq, bw.block));
        }
    });
    let initial: Vec<ContentHash> = (0..blocks)
        .into_par_iter()
        .map(|b| content_hash(seed, b, 0))
        .collect();

    // The snapshot at the middle write's submission: completed writes applied, later
    // ones not, those in flight as chosen; a block holds its last applied write.
    let t = writes[writes.len() / 2].submit_ns + 1;
    let mut held = vec![0u64; blocks as usize];
    for (w, chosen) in writes.iter().zip(&choice) {
        let applied = w.complete_ns.is_some_and(|c| c <= t) || (w.submit_ns <= t && *chosen);
        if applied {
            for bw in &w.blocks {
                held[bw.block as usize] = tag_of(seed, w.seq, bw.block);
            }
        }
    }

    // Faults, far enough from the instant (5% of the history) to be unambiguous, on
    // blocks whose versions all differ.
    let margin = now / 20;
    let mut planted: Vec<(u64, Plant)> = Vec::new();
    let excluded = 0..64u64.min(blocks / 2);
    let usable = |b: u64, planted: &[(u64, Plant)]| {
        !excluded.contains(&b)
            && !planted.iter().any(|(p, _)| *p == b)
            && writes.iter().all(|w| {
                w.blocks
                    .iter()
                    .all(|bw| bw.block != b || tag_of(seed, w.seq, b) != 0)
            })
    };
    let late = writes.partition_point(|w| w.submit_ns <= t + margin);
    let early = writes.partition_point(|w| w.submit_ns + margin < t);
    for _ in 0..200 {
        if planted.len() >= 12 {
            break;
        }
        let future = planted
            .iter()
            .filter(|p| matches!(p.1, Plant::Future { .. }))
            .count();
        let past = planted
            .iter()
            .filter(|p| matches!(p.1, Plant::Past { .. }))
            .count();
        if future < 4 && late < writes.len() {
            let w = &writes[rng.gen_range(late..writes.len())];
            let b = w.blocks[0].block;
            if usable(b, &planted) {
                held[b as usize] = tag_of(seed, w.seq, b);
                planted.push((b, Plant::Future { seq: w.seq }));
            }
        } else if past < 4 && early > 0 {
            let w = &writes[rng.gen_range(0..early)];
            let b = w.blocks[0].block;
            if w.complete_ns.is_some_and(|c| c + margin < t) && usable(b, &planted) {
                // The block's version before w, and the first of the later writes to
                // complete (on a tie, the lower sequence number).
                let on_b = writes
                    .iter()
                    .filter(|x| x.blocks.iter().any(|bw| bw.block == b));
                let prev = on_b.clone().rfind(|x| x.seq < w.seq);
                let missing = on_b
                    .filter(|x| x.seq >= w.seq)
                    .filter_map(|x| x.complete_ns.map(|c| (c, x.seq)))
                    .min();
                if let Some((_, missing)) = missing {
                    held[b as usize] = prev.map_or(0, |p| tag_of(seed, p.seq, b));
                    planted.push((b, Plant::Past { missing }));
                }
            }
        } else {
            let b = rng.gen_range(0..blocks);
            if usable(b, &planted) {
                held[b as usize] = u64::MAX - b;
                planted.push((b, Plant::Corrupt));
            }
        }
    }
    planted.sort_by_key(|p| p.0);

    let mut image = vec![0u8; blocks as usize * BLOCK];
    image
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, chunk)| {
            // The excluded extent holds anything at all (a COW file's data).
            let tag = match excluded.contains(&(b as u64)) {
                true => u64::MAX / 2 + b as u64,
                false => held[b],
            };
            fill(seed, b as u64, tag, chunk);
        });
    Ok(Synthetic {
        history: History {
            blocks,
            initial,
            writes,
        },
        image,
        instant_ns: t,
        excluded,
        planted,
    })
}

/// The figures of one `bench oracle` run.
#[derive(Clone, Debug)]
pub struct BenchOracleReport {
    pub opts: BenchOracleOptions,
    pub threads: usize,
    pub load_average: Option<f64>,
    pub block_writes: u64,
    pub index: Duration,
    pub judge: Duration,
    /// Best of the runs of index + judge together.
    pub oracle: Duration,
    pub xxh3: Duration,
    pub sha256: Duration,
    pub explained: u64,
    pub judged: u64,
    pub planted: Vec<(u64, Plant)>,
}

impl BenchOracleReport {
    pub fn ratio_to_xxh3(&self) -> f64 {
        self.oracle.as_secs_f64() / self.xxh3.as_secs_f64().max(1e-9)
    }

    pub fn ratio_to_sha256(&self) -> f64 {
        self.oracle.as_secs_f64() / self.sha256.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for BenchOracleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = (self.opts.blocks * BLOCK as u64) >> 20;
        let s = |d: Duration| d.as_secs_f64();
        write!(
            f,
            "bench oracle: {} blocks ({mib} MiB), {} writes ({} block writes), seed {}, {} thread(s), best of {}",
            self.opts.blocks, self.opts.writes, self.block_writes, self.opts.seed, self.threads, self.opts.runs
        )?;
        match self.load_average {
            Some(l) if l > 0.5 => writeln!(
                f,
                "\n  load average {l:.2} at start: other work shares the cores, figures are noisy"
            )?,
            Some(_) | None => writeln!(f)?,
        }
        writeln!(
            f,
            "  history oracle          {:>7.3} s  (index {:.3} s, judge {:.3} s)  target < 2 s",
            s(self.oracle),
            s(self.index),
            s(self.judge)
        )?;
        writeln!(
            f,
            "  xxh3-128 of the image   {:>7.3} s  {:>6.2} GB/s   ratio oracle / xxh3-128  {:.2}",
            s(self.xxh3),
            (self.opts.blocks * BLOCK as u64) as f64 / s(self.xxh3).max(1e-9) / 1e9,
            self.ratio_to_xxh3()
        )?;
        writeln!(
            f,
            "  sha256 of the image     {:>7.3} s  {:>6.2} GB/s   ratio oracle / sha256    {:.2}",
            s(self.sha256),
            (self.opts.blocks * BLOCK as u64) as f64 / s(self.sha256).max(1e-9) / 1e9,
            self.ratio_to_sha256()
        )?;
        let count = |want: fn(&Plant) -> bool| self.planted.iter().filter(|p| want(&p.1)).count();
        write!(
            f,
            "  verdicts: {} of {} judged blocks consistent at the cut; planted {} future, {} past, {} corrupt: each found with its class and write, nothing else flagged",
            self.explained,
            self.judged,
            count(|p| matches!(p, Plant::Future { .. })),
            count(|p| matches!(p, Plant::Past { .. })),
            count(|p| matches!(p, Plant::Corrupt)),
        )
    }
}

/// Checks the oracle's verdicts against what was planted.
fn verify(
    verdicts: &[crate::oracle::BlockVerdict],
    planted: &[(u64, Plant)],
) -> Result<(), BenchOracleError> {
    for v in verdicts {
        let plant = planted.iter().find(|p| p.0 == v.block).map(|p| p.1);
        let found = match (plant, v.verdict) {
            (None, verdict) => match verdict.class() {
                OracleClass::Consistent | OracleClass::Excluded => true,
                got @ (OracleClass::DataFromTheFuture
                | OracleClass::DataFromThePast
                | OracleClass::PastOrFuture
                | OracleClass::Corrupt) => {
                    return Err(BenchOracleError::Unexpected {
                        block: v.block,
                        got,
                        reason: v.reason,
                    })
                }
            },
            (Some(Plant::Future { seq }), Verdict::DataFromTheFuture(l)) => l.write.seq == seq,
            (Some(Plant::Past { missing }), Verdict::DataFromThePast(s)) => {
                s.missing.seq == missing
            }
            (Some(Plant::Corrupt), Verdict::Corrupt { .. }) => true,
            (Some(_), _) => false,
        };
        if !found {
            return Err(BenchOracleError::Missed {
                block: v.block,
                want: plant.map_or_else(|| "nothing".into(), |p| p.to_string()),
                got: format!("{:?}", v.verdict),
                reason: v.reason,
            });
        }
    }
    Ok(())
}

/// Runs the benchmark.
pub fn bench_oracle(opts: &BenchOracleOptions) -> Result<BenchOracleReport, super::BenchError> {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|l| l.parse().ok()));
    let synthetic = synthesize(opts)?;
    let runs = opts.runs.max(1);

    let mut xxh3 = Duration::MAX;
    let mut hashes = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        hashes = synthetic
            .image
            .par_chunks(BLOCK)
            .map(ContentHash::of_block)
            .collect::<Vec<_>>();
        xxh3 = xxh3.min(start.elapsed());
    }
    let mut sha256 = Duration::MAX;
    for _ in 0..runs {
        let start = Instant::now();
        let sums = crate::hash::hash_bytes(&synthetic.image);
        sha256 = sha256.min(start.elapsed());
        drop(sums);
    }

    let backup = Backup {
        hashes,
        excluded: vec![synthetic.excluded.clone()],
    };
    let timed = || -> Result<_, BenchOracleError> {
        let start = Instant::now();
        let o = Oracle::new(&synthetic.history).map_err(BenchOracleError::History)?;
        let indexed = start.elapsed();
        let j = o.judge(&backup).map_err(BenchOracleError::Backup)?;
        let total = start.elapsed();
        Ok((indexed, total - indexed, total, j))
    };
    let (mut index, mut judge, mut oracle, mut j) = timed()?;
    for _ in 1..runs {
        let (i, jd, total, next) = timed()?;
        index = index.min(i);
        judge = judge.min(jd);
        oracle = oracle.min(total);
        j = next;
    }
    verify(&j.blocks, &synthetic.planted)?;

    Ok(BenchOracleReport {
        opts: opts.clone(),
        threads: rayon::current_num_threads(),
        load_average,
        block_writes: synthetic
            .history
            .writes
            .iter()
            .map(|w| w.blocks.len() as u64)
            .sum(),
        index,
        judge,
        oracle,
        xxh3,
        sha256,
        explained: j.explained,
        judged: j.judged,
        planted: synthetic.planted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_finds_what_was_planted() {
        let opts = BenchOracleOptions {
            seed: 7,
            blocks: 4096,
            writes: 5000,
            runs: 1,
        };
        let report = bench_oracle(&opts).unwrap();
        let count = |want: fn(&Plant) -> bool| report.planted.iter().filter(|p| want(&p.1)).count();
        assert!(
            count(|p| matches!(p, Plant::Future { .. })) >= 2,
            "{:?}",
            report.planted
        );
        assert!(
            count(|p| matches!(p, Plant::Past { .. })) >= 2,
            "{:?}",
            report.planted
        );
        assert!(
            count(|p| matches!(p, Plant::Corrupt)) >= 2,
            "{:?}",
            report.planted
        );
        assert_eq!(
            report.explained,
            report.judged - report.planted.len() as u64
        );
        let text = report.to_string();
        assert!(text.contains("ratio oracle / xxh3-128"), "{text}");
    }

    #[test]
    fn synthesis_is_seeded() {
        let opts = BenchOracleOptions {
            seed: 3,
            blocks: 256,
            writes: 300,
            runs: 1,
        };
        let a = synthesize(&opts).unwrap();
        let b = synthesize(&opts).unwrap();
        assert_eq!(a.history, b.history);
        assert_eq!(a.image, b.image);
        assert_eq!(a.planted, b.planted);
    }

    #[test]
    fn a_wrong_verdict_is_an_error() {
        let planted = [(0u64, Plant::Corrupt)];
        let verdicts = [crate::oracle::BlockVerdict {
            block: 0,
            verdict: Verdict::Excluded,
            reason: "excluded by the caller",
        }];
        let err = verify(&verdicts, &planted).unwrap_err();
        assert!(
            err.to_string().starts_with("block 0: planted corrupt"),
            "{err}"
        );
        assert!(matches!(
            synthesize(&BenchOracleOptions {
                blocks: 8,
                ..Default::default()
            }),
            Err(BenchOracleError::TooSmall { .. })
        ));
    }
}

//! `blockwitness bench cow`: write throughput on a volume's origin while a snapshot is
//! active, for bwsnap and for the kernel's own dm-snapshot, in one guest, against the
//! same volume with no snapshot.
//!
//! The guest reaches the scripts of kmod/tests/guest on the tools disk (`image::tools`).
//! dm-snapshot without dmsetup (not in busybox): `bwtool dm` creates the snapshot-origin
//! and snapshot devices through the device-mapper ioctls. The origin disk has two
//! partitions: 1 holds the ext4 filesystem that is written (and bwsnap's COW file), 2 is
//! dm-snapshot's exception store, so both snapshots keep their copies on the same disk.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{load_average, median, run_host, BenchError};
use crate::image::tools::{guest_dev, mount_tools, script_command, tools_disk};
use crate::image::BuiltImage;
use crate::qemu::{Accel, Disk, DiskFormat};
use crate::vm::{BootOptions, Vm};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Path {
        path: path.to_path_buf(),
        source,
    }
}

/// A raw disk with an MBR of two Linux partitions, `p1_mib` and `p2_mib` MiB, the first
/// at 1 MiB, holding an ext4 filesystem (4 KiB blocks) made on the host.
fn partitioned_disk(dir: &Path, id: &str, p1_mib: u32, p2_mib: u32) -> Result<Disk, BenchError> {
    let path = dir.join(format!("{id}.raw"));
    let sectors = |mib: u32| mib * 2048;
    let mut mbr = [0u8; 512];
    for (i, (start, len)) in [
        (sectors(1), sectors(p1_mib)),
        (sectors(1 + p1_mib), sectors(p2_mib)),
    ]
    .into_iter()
    .enumerate()
    {
        let e = &mut mbr[446 + 16 * i..446 + 16 * (i + 1)];
        // CHS fields say "use the LBA fields" (all ones); type 0x83 is Linux.
        e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[4] = 0x83;
        e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&len.to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    std::fs::write(&path, mbr).map_err(io_err(&path))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.set_len(u64::from(1 + p1_mib + p2_mib) << 20)
        .map_err(io_err(&path))?;
    run_host(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-E", "offset=1048576"])
            .arg(&path)
            .arg(format!("{p1_mib}M")),
    )?;
    Ok(Disk::new(id, path, DiskFormat::Raw))
}

/// The write patterns measured.
pub const MODES: [&str; 2] = ["rand4k", "seq1m"];
/// The set-ups measured per mode, as kmod/tests/guest/bench.sh names them.
pub const SETUPS: [&str; 5] = [
    "none",
    "bwsnap",
    "dm-none",
    "dm-snapshot-N",
    "dm-snapshot-P",
];

/// Settings of `bench cow`.
#[derive(Clone, Debug)]
pub struct CowBenchOptions {
    /// Seconds each timed run lasts (default 5).
    pub seconds: u32,
    /// Rounds, each measuring every set-up once; figures are their medians (default 3).
    pub rounds: u32,
}

impl Default for CowBenchOptions {
    fn default() -> Self {
        CowBenchOptions {
            seconds: 5,
            rounds: 3,
        }
    }
}

/// One set-up's figures in one mode, a run per round.
#[derive(Clone, Debug, PartialEq)]
pub struct CowFigure {
    pub mode: &'static str,
    pub setup: &'static str,
    /// MiB/s of each round's run.
    pub runs: Vec<f64>,
    /// 4 KiB copies the snapshot made in each run (0 without a snapshot).
    pub copies: Vec<u64>,
    /// The 99th percentile of each run's write latencies, microseconds.
    pub p99_us: Vec<f64>,
}

impl CowFigure {
    /// The median run, MiB/s.
    pub fn median(&self) -> f64 {
        median(self.runs.clone())
    }

    /// The median of the runs' p99 write latencies, microseconds.
    pub fn p99_median(&self) -> f64 {
        median(self.p99_us.clone())
    }
}

/// The figures of one `bench cow` run.
#[derive(Clone, Debug)]
pub struct CowBench {
    pub accel: Accel,
    pub image: String,
    pub kernel_release: String,
    pub seconds: u32,
    pub rounds: u32,
    /// The host's 1-minute load average when the guest booted: TCG figures are noisy
    /// when other work shares the cores.
    pub load_average: Option<f64>,
    pub figures: Vec<CowFigure>,
}

impl CowBench {
    /// Median throughput of `setup` in `mode`, MiB/s.
    pub fn rate(&self, mode: &str, setup: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.mode == mode && f.setup == setup)
            .map(CowFigure::median)
    }

    /// Throughput of `setup` relative to no snapshot at all, in `mode`.
    pub fn ratio_to_none(&self, mode: &str, setup: &str) -> Option<f64> {
        Some(self.rate(mode, setup)? / self.rate(mode, "none")?.max(1e-9))
    }

    /// bwsnap's throughput over dm-snapshot's (store `N` or `P`): at least 1.0 means
    /// bwsnap's overhead is no worse.
    pub fn bwsnap_over_dm(&self, mode: &str, store: char) -> Option<f64> {
        let dm = self.rate(mode, &format!("dm-snapshot-{store}"))?;
        Some(self.rate(mode, "bwsnap")? / dm.max(1e-9))
    }

    /// Median p99 write latency of `setup` in `mode`, microseconds.
    pub fn p99(&self, mode: &str, setup: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.mode == mode && f.setup == setup)
            .map(CowFigure::p99_median)
    }
}

/// The throughput goal of `bench cow` in `mode`: bwsnap over dm-snapshot's transient
/// store (issue 14).
pub fn throughput_goal(mode: &str) -> f64 {
    match mode {
        "seq1m" => 4.0,
        _ => 1.0,
    }
}

impl fmt::Display for CowBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn label(setup: &str) -> &str {
            match setup {
                "none" => "no snapshot",
                "bwsnap" => "bwsnap",
                "dm-none" => "dm origin, no snapshot",
                "dm-snapshot-N" => "dm-snapshot, transient",
                "dm-snapshot-P" => "dm-snapshot, persistent",
                other => other,
            }
        }
        writeln!(
            f,
            "bench cow ({}, {} {}): O_DIRECT overwrites of a 64 MiB file on ext4, every snapshot fresh",
            self.accel, self.image, self.kernel_release
        )?;
        writeln!(
            f,
            "  rand4k: {} s of random 4 KiB writes; seq1m: one pass of 1 MiB writes with a snapshot, {} s without; median of {} round(s)",
            self.seconds, self.seconds, self.rounds
        )?;
        if let Some(load) = self.load_average {
            let note = if load > 0.5 {
                ": other work shares the cores, figures are noisy"
            } else {
                ""
            };
            writeln!(f, "  host load average {load:.2} at start{note}")?;
        }
        for mode in MODES {
            writeln!(f, "  {mode}")?;
            for fig in self.figures.iter().filter(|x| x.mode == mode) {
                write!(
                    f,
                    "    {:<24} {:>8.2} MiB/s  p99 {:>8.0} us",
                    label(fig.setup),
                    fig.median(),
                    fig.p99_median()
                )?;
                if fig.runs.len() > 1 {
                    let lo = fig.runs.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = fig.runs.iter().copied().fold(0.0, f64::max);
                    write!(f, " ({lo:.2}-{hi:.2})")?;
                }
                if fig.setup != "none" {
                    if let Some(r) = self.ratio_to_none(mode, fig.setup) {
                        write!(f, "  {r:>5.3} of no snapshot")?;
                    }
                }
                if let Some(c) = fig.copies.iter().max().filter(|c| **c > 0) {
                    write!(f, "  (up to {c} copies)")?;
                }
                writeln!(f)?;
            }
            if let (Some(n), Some(p)) = (
                self.bwsnap_over_dm(mode, 'N'),
                self.bwsnap_over_dm(mode, 'P'),
            ) {
                let goal = throughput_goal(mode);
                let verdict = if n >= goal {
                    "met".to_string()
                } else {
                    format!("missed by {:.0}%", (1.0 - n / goal) * 100.0)
                };
                writeln!(
                    f,
                    "    bwsnap / dm-snapshot: {n:.2} (transient), {p:.2} (persistent); target >= {goal:.2} against the transient store (like for like: bwsnap keeps its index in memory): {verdict}"
                )?;
            }
            if let (Some(b), Some(d)) = (self.p99(mode, "bwsnap"), self.p99(mode, "dm-snapshot-N"))
            {
                let verdict = if b <= d { "met" } else { "missed" };
                writeln!(
                    f,
                    "    p99 write latency: bwsnap {b:.0} us, dm-snapshot (transient) {d:.0} us; target bwsnap <= dm-snapshot: {verdict}"
                )?;
            }
        }
        Ok(())
    }
}

/// Reads the `BENCH MODE SETUP MIB/S COPIES P99_US` lines of kmod/tests/guest/bench.sh:
/// every mode and set-up must have `rounds` runs, and every snapshot must have made
/// copies.
pub fn parse_figures(output: &str, rounds: u32) -> Result<Vec<CowFigure>, BenchError> {
    let mut figures = Vec::new();
    for mode in MODES {
        for setup in SETUPS {
            let missing = || BenchError::MissingFigure {
                mode,
                setup,
                output: output.to_string(),
            };
            let mut fig = CowFigure {
                mode,
                setup,
                runs: vec![],
                copies: vec![],
                p99_us: vec![],
            };
            for line in output.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                if let ["BENCH", m, s, rate, copies, p99] = w.as_slice() {
                    if *m == mode && *s == setup {
                        let rate: f64 = rate.parse().map_err(|_| missing())?;
                        // -1: the script saw the snapshot fail (overflow, invalid).
                        let copies: u64 = copies.parse().map_err(|_| missing())?;
                        let p99: f64 = p99.parse().map_err(|_| missing())?;
                        if setup.contains("snap") && copies == 0 {
                            return Err(BenchError::NoCopies { mode, setup });
                        }
                        fig.runs.push(rate);
                        fig.copies.push(copies);
                        fig.p99_us.push(p99);
                    }
                }
            }
            if fig.runs.len() != rounds as usize {
                return Err(missing());
            }
            figures.push(fig);
        }
    }
    Ok(figures)
}

/// `bench cow` with the default settings.
pub fn bench_cow(img: &BuiltImage, accel: Accel, dir: &Path) -> Result<CowBench, BenchError> {
    bench_cow_with(img, accel, dir, &CowBenchOptions::default())
}

/// `bench cow`: boots `img` once with the tools disk and a two-partition origin disk,
/// runs kmod/tests/guest/bench.sh there and reads its figures. `dir` holds the disks
/// and the run directory.
pub fn bench_cow_with(
    img: &BuiltImage,
    accel: Accel,
    dir: &Path,
    opts: &CowBenchOptions,
) -> Result<CowBench, BenchError> {
    if img.bwsnap_sha256.is_none() {
        return Err(BenchError::NoModule {
            image: img.name.clone(),
        });
    }
    let load_average = load_average();
    let tools = tools_disk(&crate::paths::project_root(), dir)?;
    // 1: ext4 with the 64 MiB file and bwsnap's 96 MiB COW file; 2: dm's store, room
    // for every block of the file plus its metadata.
    let origin = partitioned_disk(dir, "origin", 256, 128)?;
    let origin_serial = origin.serial.clone();
    let mut boot = BootOptions::new(accel, dir.join("run"));
    boot.disks = vec![tools, origin];
    boot.extra_modules = vec!["dm_snapshot".into()];
    let mut vm = Vm::boot(img, boot)?;
    let console = vm.machine.console_path();
    mount_tools(&mut vm.guest)?;
    let dev = guest_dev(&mut vm.guest, &origin_serial)?;
    let command = script_command(
        "bench.sh",
        "",
        &format!(
            "VOL=/dev/{dev}1 COWDEV=/dev/{dev}2 BENCH_SECS={} BENCH_ROUNDS={}",
            opts.seconds, opts.rounds
        ),
    );
    // At most 10 timed runs a round, plus filling the file and setting up snapshots.
    let timeout = Duration::from_secs(u64::from(opts.seconds * opts.rounds) * 10 + 300);
    let done = vm.guest.exec(&["/bin/sh", "-c", &command], timeout)?;
    let output = format!("{}{}", done.stdout, done.stderr);
    let figures = if done.success() {
        parse_figures(&done.stdout, opts.rounds)
    } else {
        Err(BenchError::Script {
            how: done.describe(),
            output: output.clone(),
        })
    };
    vm.shutdown(Duration::from_secs(60))?;
    let text = std::fs::read(&console)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(io_err(&console))?;
    if let Some(trouble) = crate::console::scan(&text).into_iter().next() {
        return Err(BenchError::Kernel { line: trouble.line });
    }
    Ok(CowBench {
        accel,
        image: img.name.clone(),
        kernel_release: img.kernel_release.clone(),
        seconds: opts.seconds,
        rounds: opts.rounds,
        load_average,
        figures: figures?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rounds of figures: `base - i` MiB/s for the i-th set-up, round 2 faster.
    fn output() -> String {
        let mut s = String::from("ok: something\n");
        for round in 0..2 {
            for mode in MODES {
                for (i, setup) in SETUPS.iter().enumerate() {
                    let copies = if setup.contains("snap") { 100 } else { 0 };
                    let rate = 10.5 - i as f64 + round as f64;
                    let p99 = 100 * (i + 1);
                    s.push_str(&format!("BENCH {mode} {setup} {rate} {copies} {p99}\n"));
                }
            }
        }
        s + "FAILS 0\n"
    }

    #[test]
    fn reads_every_figure_and_computes_ratios_of_medians() {
        let figures = parse_figures(&output(), 2).unwrap();
        assert_eq!(figures.len(), 10);
        assert_eq!(figures[1].runs, [9.5, 10.5]);
        let b = CowBench {
            accel: Accel::Tcg,
            image: "debian-6.1".into(),
            kernel_release: "6.1.0-56-amd64".into(),
            seconds: 5,
            rounds: 2,
            load_average: Some(1.5),
            figures,
        };
        // The median of two runs is the upper one.
        assert_eq!(b.rate("seq1m", "bwsnap"), Some(10.5));
        assert!((b.ratio_to_none("rand4k", "bwsnap").unwrap() - 10.5 / 11.5).abs() < 1e-9);
        assert!((b.bwsnap_over_dm("rand4k", 'N').unwrap() - 10.5 / 8.5).abs() < 1e-9);
        let text = b.to_string();
        assert!(text.contains("target >= 1.00"), "{text}");
        assert!(text.contains("target >= 4.00"), "{text}");
        assert!(text.contains(": met"), "{text}");
        // bwsnap (set-up 1) at 200 us against dm transient (set-up 3) at 400 us.
        assert_eq!(b.p99("rand4k", "bwsnap"), Some(200.0));
        assert!(
            text.contains(
                "bwsnap 200 us, dm-snapshot (transient) 400 us; target bwsnap <= dm-snapshot: met"
            ),
            "{text}"
        );
        assert!(text.contains("figures are noisy"), "{text}");
        assert!(text.contains("(9.50-10.50)"), "{text}");
    }

    #[test]
    fn a_missing_or_meaningless_figure_is_an_error() {
        assert!(matches!(
            parse_figures(&output(), 3),
            Err(BenchError::MissingFigure { .. })
        ));
        let without = output().replacen("BENCH seq1m dm-none", "XBENCH", 1);
        assert!(matches!(
            parse_figures(&without, 2),
            Err(BenchError::MissingFigure {
                mode: "seq1m",
                setup: "dm-none",
                ..
            })
        ));
        let no_copies = output().replacen("bwsnap 9.5 100", "bwsnap 9.5 0", 1);
        let no_p99 = output().replacen("bwsnap 9.5 100 200", "bwsnap 9.5 100", 1);
        assert!(matches!(
            parse_figures(&no_p99, 2),
            Err(BenchError::MissingFigure {
                setup: "bwsnap",
                ..
            })
        ));
        assert!(matches!(
            parse_figures(&no_copies, 2),
            Err(BenchError::NoCopies {
                setup: "bwsnap",
                ..
            })
        ));
        let failed = output().replacen("dm-snapshot-P 6.5 100", "dm-snapshot-P 6.5 -1", 1);
        assert!(parse_figures(&failed, 2).is_err());
    }

    #[test]
    fn the_origin_disk_has_two_partitions_and_a_filesystem_on_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let disk = partitioned_disk(dir.path(), "o", 32, 8).unwrap();
        let bytes = std::fs::read(&disk.path).unwrap();
        assert_eq!(bytes.len(), 41 << 20);
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        let lba =
            |i: usize| u32::from_le_bytes(bytes[454 + 16 * i..458 + 16 * i].try_into().unwrap());
        assert_eq!((lba(0), lba(1)), (2048, 2048 * 33));
        // ext4's magic 0xEF53 at byte 56 of the superblock, 1024 bytes into partition 1.
        let sb = (1 << 20) + 1024;
        assert_eq!(&bytes[sb + 56..sb + 58], &[0x53, 0xef]);
    }
}

//! `bwsnap-ctl`: a small command line over the bwsnap control device, for tests and
//! people. Every command maps to one ioctl (see `reference_agent::bwsnap`); `--json`
//! prints one JSON document instead of text.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use reference_agent::bwsnap::{self, Control, CowSize};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "bwsnap-ctl", about = "Drive the bwsnap snapshot module")]
struct Cli {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The control device.
    #[arg(long, global = true, default_value = "/dev/bwsnap-ctl")]
    ctl: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Track a mounted block device and create its COW file (state ARMED).
    Setup {
        #[arg(long)]
        minor: u32,
        /// COW file to create, on the filesystem mounted from BDEV.
        #[arg(long)]
        cow: PathBuf,
        /// COW size in bytes (suffix k, m, g: binary); default: the module's parameters.
        #[arg(long, value_parser = parse_size)]
        cow_size: Option<u64>,
        bdev: PathBuf,
    },
    /// Take the snapshot (call it with the filesystem frozen).
    Start { minor: u32 },
    /// Drop the snapshot, keep tracking changes.
    ToIncremental { minor: u32 },
    /// From incremental, create a new COW file and arm the next start.
    ToSnapshot {
        minor: u32,
        #[arg(long)]
        cow: PathBuf,
        #[arg(long, value_parser = parse_size)]
        cow_size: Option<u64>,
    },
    /// Forget a minor.
    Destroy { minor: u32 },
    /// State and counters of one minor, or of every minor in use.
    Info { minor: Option<u32> },
    /// The changed-block map frozen at the last start.
    Map {
        minor: u32,
        /// Print block ranges (default) or every block.
        #[arg(long)]
        blocks: bool,
    },
    /// Where the COW file lies on the device.
    Extents { minor: u32 },
    /// Drain the read-source trace.
    Trace {
        minor: u32,
        /// At most this many events (default: drain everything).
        #[arg(long)]
        max: Option<u32>,
    },
}

/// "4096", "64k", "10m", "1g" → bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&s[..i], 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&s[..i], 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or with k/m/g)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn cow_size(v: Option<u64>) -> CowSize {
    v.map_or(CowSize::Default, CowSize::Bytes)
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn info_text(i: &bwsnap::Info) -> String {
    format!(
        "minor {} {:?} error={} seq={} uuid={} bdev={} dev_size={} cow_size={} cow_used={} \
         changed_blocks={} tracking_blocks={} cow_copies={} cow_reads={} live_reads={} \
         tracked_writes={} cow_extents={}\n",
        i.minor,
        i.state,
        i.error,
        i.seq,
        i.uuid,
        i.bdev_path,
        i.dev_size,
        i.cow_size,
        i.cow_used,
        i.changed_blocks,
        i.tracking_blocks,
        i.cow_copies,
        i.cow_reads,
        i.live_reads,
        i.tracked_writes,
        i.cow_extents,
    )
}

#[derive(Serialize)]
struct MapOut {
    minor: u32,
    nr_blocks: u64,
    changed: u64,
    ranges: Vec<(u64, u64)>,
}

fn run(cli: Cli) -> Result<()> {
    let ctl = Control::open_path(&cli.ctl)?;
    let json = cli.json;
    let ok = serde_json::json!({"ok": true});
    match cli.cmd {
        Cmd::Setup {
            minor,
            cow,
            cow_size: size,
            bdev,
        } => {
            ctl.setup(minor, &bdev, &cow, cow_size(size))?;
            print(json, &ok, String::new)
        }
        Cmd::Start { minor } => {
            ctl.start(minor)?;
            print(json, &ok, String::new)
        }
        Cmd::ToIncremental { minor } => {
            ctl.to_incremental(minor)?;
            print(json, &ok, String::new)
        }
        Cmd::ToSnapshot {
            minor,
            cow,
            cow_size: size,
        } => {
            ctl.to_snapshot(minor, &cow, cow_size(size))?;
            print(json, &ok, String::new)
        }
        Cmd::Destroy { minor } => {
            ctl.destroy(minor)?;
            print(json, &ok, String::new)
        }
        Cmd::Info { minor: Some(minor) } => {
            let info = ctl.info(minor)?;
            print(json, &info, || info_text(&info))
        }
        Cmd::Info { minor: None } => {
            let mut all = Vec::new();
            for minor in 0..bwsnap::abi::MAX_MINORS {
                let info = ctl.info(minor)?;
                if info.state != bwsnap::State::None {
                    all.push(info);
                }
            }
            print(json, &all, || all.iter().map(info_text).collect())
        }
        Cmd::Map { minor, blocks } => {
            let map = ctl.read_map(minor)?;
            let out = MapOut {
                minor,
                nr_blocks: map.nr_blocks,
                changed: map.count(),
                ranges: map.ranges(),
            };
            print(json, &out, || {
                if blocks {
                    map.blocks().map(|b| format!("{b}\n")).collect()
                } else {
                    out.ranges
                        .iter()
                        .map(|(a, b)| format!("{a}-{b}\n"))
                        .collect()
                }
            })
        }
        Cmd::Extents { minor } => {
            let ext = ctl.cow_extents(minor)?;
            print(json, &ext, || {
                ext.iter()
                    .map(|e| format!("{} {}\n", e.physical, e.length))
                    .collect()
            })
        }
        Cmd::Trace { minor, max } => {
            let batch = match max {
                Some(0) => bail!("--max must be at least 1"),
                Some(max) => ctl.trace(minor, max)?,
                None => ctl.trace_all(minor)?,
            };
            print(json, &batch, || {
                let mut s = format!("dropped {}\n", batch.dropped);
                for e in &batch.events {
                    let src = match e.source {
                        bwsnap::Source::Live => "live",
                        bwsnap::Source::Cow => "cow",
                        bwsnap::Source::Error => "error",
                    };
                    s.push_str(&format!(
                        "{} {}{}\n",
                        e.block,
                        src,
                        if e.fault { " fault" } else { "" }
                    ));
                }
                s
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).context("bwsnap-ctl") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        let cases: &[(&str, Result<u64, ()>)] = &[
            ("4096", Ok(4096)),
            ("64k", Ok(65536)),
            ("10M", Ok(10 << 20)),
            ("1g", Ok(1 << 30)),
            ("", Err(())),
            ("k", Err(())),
            ("1.5m", Err(())),
            ("-1", Err(())),
            ("99999999999999999999g", Err(())),
            ("17179869184g", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).map_err(|_| ()), *want, "{input:?}");
        }
    }
}

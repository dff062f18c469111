//! `bw-agent`: the reference backup agent (runs in the guest). See
//! `reference_agent::agent`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use reference_agent::agent::backup::{self, BackupOptions, VolumeArg};
use reference_agent::agent::discover::{self, Options};
use reference_agent::bwsnap::CowSize;
use reference_agent::sender::SenderOptions;
use reference_agent::transport::Address;

#[derive(Parser)]
#[command(name = "bw-agent", about = "Reference snapshot backup agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List block devices (size, filesystem, mount point) and what was skipped, and why.
    List {
        /// Probe floppy drives too (they can hang a prober).
        #[arg(long)]
        probe_floppy: bool,
        /// Longest one device probe may take, in seconds.
        #[arg(long, default_value_t = 3.0)]
        probe_timeout: f64,
        #[arg(long)]
        json: bool,
    },
    /// Back up mounted volumes through bwsnap snapshots to a target.
    Backup {
        /// A mount point to back up: `MOUNT[=ID[,cow=BYTES]]` (ID: what the target
        /// stores it under, default the mount point; cow: this volume's COW file size).
        #[arg(long = "volume", required = true)]
        volumes: Vec<String>,
        /// The target: unix:PATH, tcp:HOST:PORT, dev:PATH or port:NAME (virtio-serial).
        #[arg(long)]
        target: String,
        /// Where to announce the snapshot instant and wait for the go-ahead.
        #[arg(long)]
        hook: Option<String>,
        /// Where to write witness records (every block: snapshot hash, live compare,
        /// read source).
        #[arg(long)]
        witness: Option<String>,
        /// COW file size in bytes (default: the module's parameters).
        #[arg(long)]
        cow_size: Option<u64>,
        /// Where the agent keeps its state between runs.
        #[arg(long, default_value = "/run/bw-agent")]
        state_dir: PathBuf,
        /// Send every block even when an incremental would do.
        #[arg(long)]
        full: bool,
        /// Seconds to wait for the hook listener's answer.
        #[arg(long, default_value_t = 120)]
        hook_timeout: u64,
        #[arg(long)]
        probe_floppy: bool,
        /// Fault for the harness: leave 1 in N blocks out of a full backup.
        #[arg(long, default_value_t = 0, hide = true)]
        fault_skip_blocks: u64,
        /// Fault for the harness: make the freeze of this mount point fail.
        #[arg(long, hide = true)]
        fault_freeze_fail: Vec<PathBuf>,
    },
    /// (internal) Probe one device and print its filesystem type.
    #[command(name = "__probe", hide = true)]
    Probe { device: PathBuf },
}

/// `port:NAME` names a virtio-serial port; everything else is a transport address.
fn address(text: &str) -> anyhow::Result<Address> {
    if let Some(name) = text.strip_prefix("port:") {
        let dir = std::path::Path::new("/sys/class/virtio-ports");
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            if port_name.trim() == name {
                return Ok(Address::Dev(PathBuf::from("/dev").join(entry.file_name())));
            }
        }
        bail!("no virtio-serial port named {name:?}");
    }
    text.parse().with_context(|| format!("address {text:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { device } => match discover::probe_child(&device) {
            Ok(kind) => {
                println!("{}", kind.unwrap_or(""));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", device.display());
                ExitCode::from(1)
            }
        },
        Command::List {
            probe_floppy,
            probe_timeout,
            json,
        } => {
            let found = discover::discover(&Options {
                probe_floppy,
                probe_timeout: Duration::from_secs_f64(probe_timeout),
                ..Options::default()
            });
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&found).expect("serializable")
                );
            } else {
                for d in &found.devices {
                    println!(
                        "{:10} {:>12} {:8} {}",
                        d.path.display(),
                        d.size_bytes,
                        d.fs_type.as_deref().unwrap_or("-"),
                        d.mount_points
                            .iter()
                            .map(|m| m.display().to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                }
                for s in &found.skipped {
                    println!("skipped {}: {}", s.name, s.reason);
                }
            }
            ExitCode::SUCCESS
        }
        Command::Backup {
            volumes,
            target,
            hook,
            witness,
            cow_size,
            state_dir,
            full,
            hook_timeout,
            probe_floppy,
            fault_skip_blocks,
            fault_freeze_fail,
        } => {
            let opts = (|| -> anyhow::Result<BackupOptions> {
                Ok(BackupOptions {
                    volumes: volumes
                        .iter()
                        .map(|v| v.parse::<VolumeArg>().map_err(anyhow::Error::msg))
                        .collect::<anyhow::Result<_>>()?,
                    target: address(&target)?,
                    hook: hook.as_deref().map(address).transpose()?,
                    witness: witness.as_deref().map(address).transpose()?,
                    cow_size: match cow_size {
                        Some(n) => CowSize::Bytes(n),
                        None => CowSize::Default,
                    },
                    state_dir,
                    force_full: full,
                    hook_timeout: Duration::from_secs(hook_timeout),
                    // Whole-MiB frames: snapshot reads cost per request, so fewer, larger
                    // reads stream faster.
                    sender: SenderOptions {
                        frame_bytes: 1 << 20,
                        ..SenderOptions::default()
                    },
                    discovery: Options {
                        probe_floppy,
                        ..Options::default()
                    },
                    fault_skip_blocks,
                    fault_freeze_fail,
                })
            })();
            let opts = match opts {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("bw-agent: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let summary = backup::backup(&opts);
            println!("{}", serde_json::to_string(&summary).expect("serializable"));
            if summary.ok() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "bw-agent: backup failed: {}",
                    summary.message.as_deref().unwrap_or("see the summary")
                );
                ExitCode::from(1)
            }
        }
    }
}

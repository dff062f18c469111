//! `bw-disk`: the witness disk's backend process. `bw-disk serve` serves one image to
//! QEMU over vhost-user-blk; `bw-disk history` and `bw-disk materialise` read what a run
//! left behind. Exit codes: 0 served and finished, 2 error (the history says how far it
//! got).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use witness_disk::history::{History, Record};
use witness_disk::layers::{Generation, Layers};
use witness_disk::schedule::Schedule;
use witness_disk::serve::{serve, ServeOptions};

#[derive(Parser)]
#[command(
    name = "bw-disk",
    version,
    about = "The witness disk: a recording vhost-user-blk backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a raw image to one QEMU until it disconnects or a shutdown is asked for.
    Serve {
        #[arg(long)]
        image: PathBuf,
        /// The vhost-user socket QEMU connects to.
        #[arg(long)]
        socket: PathBuf,
        /// The control socket (JSON lines).
        #[arg(long)]
        control: PathBuf,
        #[arg(long)]
        history: PathBuf,
        /// A fresh directory for the point-in-time layers.
        #[arg(long)]
        state_dir: PathBuf,
        /// What the guest reads as the serial (at most 20 bytes).
        #[arg(long, default_value = "")]
        serial: String,
        /// Queues offered (QEMU's num-queues may be up to this).
        #[arg(long, default_value_t = 8)]
        max_queues: u16,
        /// Exit if QEMU has not connected by then.
        #[arg(long, default_value_t = 60_000)]
        connect_timeout_ms: u64,
        /// Hold every request for a seeded delay (with --schedule-max-delay-us).
        #[arg(long, requires = "schedule_max_delay_us")]
        schedule_seed: Option<u64>,
        #[arg(long, requires = "schedule_seed")]
        schedule_max_delay_us: Option<u64>,
    },
    /// Print a history: its header, a summary, and with --records every record.
    History {
        path: PathBuf,
        #[arg(long)]
        records: bool,
    },
    /// Measure the history's size and the backend's memory on the host (no guest): a
    /// full sequential write of a sparse volume, then random 4 KiB writes and reads.
    Cost {
        /// Where the scratch image and history go (the image is removed after).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 10)]
        size_gib: u64,
        #[arg(long, default_value_t = 1_000_000)]
        random_ops: u64,
    },
    /// Write generation N (or the final state) of a state directory as a raw file.
    Materialise {
        state_dir: PathBuf,
        /// A generation number, or "final".
        generation: String,
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logger = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    init_log(&logger);
    let result = match cli.command {
        Command::Serve {
            image,
            socket,
            control,
            history,
            state_dir,
            serial,
            max_queues,
            connect_timeout_ms,
            schedule_seed,
            schedule_max_delay_us,
        } => {
            let schedule = schedule_seed
                .zip(schedule_max_delay_us)
                .map(|(seed, max)| Schedule {
                    seed,
                    max_delay_us: max,
                });
            serve(&ServeOptions {
                image,
                socket,
                control,
                history,
                state_dir,
                serial,
                max_queues,
                schedule,
                connect_timeout: Duration::from_millis(connect_timeout_ms),
            })
            .map(|end| {
                log::info!(
                    "history finished: {} requests, {} markers ({:?})",
                    end.requests,
                    end.markers,
                    end.reason
                );
            })
            .map_err(anyhow::Error::from)
        }
        Command::History { path, records } => print_history(&path, records),
        Command::Cost {
            dir,
            size_gib,
            random_ops,
        } => witness_disk::cost::measure(&dir, size_gib << 30, random_ops)
            .map(|r| println!("{r}"))
            .map_err(anyhow::Error::from),
        Command::Materialise {
            state_dir,
            generation,
            out,
        } => materialise(&state_dir, &generation, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("bw-disk: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_history(path: &std::path::Path, records: bool) -> anyhow::Result<()> {
    let h = History::open_partial(path)?;
    println!("{}", serde_json::to_string_pretty(&h.header)?);
    let requests = h.requests().count();
    println!(
        "{} records ({} requests, {} markers); {}",
        h.records.len(),
        requests,
        h.records.len() - requests,
        match &h.end {
            Some(end) => format!("finished ({:?})", end.reason),
            None => "CUT SHORT: no end record".into(),
        }
    );
    if records {
        for r in &h.records {
            match r {
                Record::Request(q) => println!(
                    "req {} q{} {} {:?} {}+{} submit {} done {:?} applied {:?} blocks {}",
                    q.seq,
                    q.queue,
                    q.op.name(),
                    q.outcome,
                    q.offset,
                    q.len,
                    q.submit_ns,
                    q.complete_ns,
                    q.applied,
                    q.block_versions().count()
                ),
                Record::Marker(m) => {
                    println!("mark t={} seq<{} {:?}", m.t_ns, m.next_seq, m.marker)
                }
            }
        }
    }
    anyhow::ensure!(h.is_complete(), "{} was cut short", path.display());
    Ok(())
}

fn materialise(state: &std::path::Path, which: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let generation = match which {
        "final" => Generation::Final,
        n => Generation::At(
            n.parse()
                .map_err(|_| anyhow::anyhow!("generation {n:?}: a number or \"final\""))?,
        ),
    };
    Layers::open(state)?.materialise(generation, out)?;
    Ok(())
}

/// A stderr logger with a level from RUST_LOG (error, warn, info, debug, trace).
fn init_log(level: &str) {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("bw-disk {} {}: {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level = level.parse().unwrap_or(log::LevelFilter::Info);
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(level));
}

//! `bw-target`: the reference backup target. `serve` receives sessions, `verify` re-reads
//! stored generations, `export` writes a generation out as a raw image, `list` shows the
//! store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use reference_agent::target::verify::{verify_generation, GenerationCheck};
use reference_agent::target::{
    export, ServeOptions, Server, SessionStatus, Store, TargetEvent, TargetFaults,
};
use reference_agent::transport::Address;

#[derive(Parser)]
#[command(
    name = "bw-target",
    version,
    about = "The Blockwitness reference backup target"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Receive backup sessions and store them.
    Serve {
        /// Store directory (one folder per volume).
        #[arg(long)]
        store: PathBuf,
        /// unix:/path or tcp:host:port
        #[arg(long)]
        listen: String,
        /// One JSON line per event on stdout (listening, each session's outcome).
        #[arg(long)]
        json: bool,
        /// Seconds a session whose connection dropped waits for a resume.
        #[arg(long, default_value_t = 300)]
        resume_window: u64,
        /// Seconds a silent connection is kept open.
        #[arg(long, default_value_t = 600)]
        idle_timeout: u64,
        /// Re-read from the page cache instead of dropping it first (faster, weaker).
        #[arg(long)]
        reread_from_cache: bool,
        /// Fault: write 1 block in N at a wrong offset.
        #[arg(long, value_name = "N")]
        fault_wrong_offset: Option<u64>,
        /// Fault: commit without re-reading what was written.
        #[arg(long)]
        fault_skip_verify: bool,
        /// Fault: abort() after the end frame, before the commit renames.
        #[arg(long)]
        fault_crash_before_commit: bool,
    },
    /// Re-read committed generations against their stored per-block hashes.
    Verify {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        generation: Option<u32>,
        /// One JSON line per generation.
        #[arg(long)]
        json: bool,
    },
    /// Write a committed generation out as a raw image.
    Export {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        volume: String,
        /// Generation number.
        generation: u32,
        /// Output file (sparse); standard output when omitted.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List volumes and committed generations.
    List {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bw-target: {}", format_chain(&e));
            ExitCode::from(2)
        }
    }
}

fn format_chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve {
            store,
            listen,
            json,
            resume_window,
            idle_timeout,
            reread_from_cache,
            fault_wrong_offset,
            fault_skip_verify,
            fault_crash_before_commit,
        } => {
            if fault_wrong_offset == Some(0) {
                bail!("--fault-wrong-offset takes N >= 1");
            }
            let addr: Address = listen.parse()?;
            let mut opts = ServeOptions::new(store);
            opts.resume_window = Duration::from_secs(resume_window);
            opts.idle_timeout = Duration::from_secs(idle_timeout);
            opts.reread_from_disk = !reread_from_cache;
            opts.faults = TargetFaults {
                wrong_offset_every: fault_wrong_offset,
                skip_verify: fault_skip_verify,
                crash_before_commit: fault_crash_before_commit,
            };
            let events: reference_agent::target::EventSink = Arc::new(move |ev: &TargetEvent| {
                if json {
                    if let Ok(line) = serde_json::to_string(ev) {
                        let mut out = std::io::stdout().lock();
                        // The harness reads these lines; a closed stdout is its business.
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                } else {
                    eprintln!("{}", human(ev));
                }
            });
            let server = Server::bind(&addr, opts, events)
                .with_context(|| format!("start serving on {addr}"))?;
            server.run();
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            store,
            volume,
            generation,
            json,
        } => {
            let st = Store::open(&store)?;
            let volumes = match volume {
                Some(v) => vec![v],
                None => st.volumes()?,
            };
            let mut checks: Vec<GenerationCheck> = Vec::new();
            for v in &volumes {
                let gens = match generation {
                    Some(g) => vec![g],
                    None => st.generations(v)?,
                };
                for g in gens {
                    checks.push(verify_generation(&st, v, g));
                }
            }
            if checks.is_empty() {
                bail!("no committed generation matches in {}", store.display());
            }
            let mut bad = false;
            for c in &checks {
                bad |= !c.ok();
                if json {
                    println!("{}", serde_json::to_string(c)?);
                } else if let Some(e) = &c.error {
                    println!("{} gen {}: cannot verify: {e}", c.volume, c.generation);
                } else if c.bad_total > 0 {
                    println!(
                        "{} gen {}: {} of {} blocks do not match, first {:?}",
                        c.volume, c.generation, c.bad_total, c.blocks, c.bad_blocks
                    );
                } else {
                    println!("{} gen {}: {} blocks ok", c.volume, c.generation, c.blocks);
                }
            }
            Ok(if bad {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Export {
            store,
            volume,
            generation,
            out,
        } => {
            let st = Store::open(&store)?;
            match out {
                Some(p) => {
                    let n = export::export_to_file(&st, &volume, generation, &p)?;
                    eprintln!("{volume} gen {generation}: {n} bytes to {}", p.display());
                }
                None => {
                    let mut so = std::io::stdout().lock();
                    export::export_to_writer(&st, &volume, generation, &mut so)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::List { store, json } => {
            let st = Store::open(&store)?;
            for v in st.volumes()? {
                for g in st.generations(&v)? {
                    let Some(m) = st.manifest(&v, g)? else {
                        continue;
                    };
                    if json {
                        println!("{}", serde_json::to_string(&m)?);
                    } else {
                        println!(
                            "{v} gen {g}: {} {}{} bytes, {} blocks sent, verified {}",
                            m.kind,
                            m.parent.map(|p| format!("on {p}, ")).unwrap_or_default(),
                            m.volume_size,
                            m.blocks,
                            m.verified
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn human(ev: &TargetEvent) -> String {
    match ev {
        TargetEvent::Listening { address, store } => {
            format!("listening on {address}, store {store}")
        }
        TargetEvent::Cleaned { path } => format!("removed leftover {path}"),
        TargetEvent::Connection { peer, message } => format!("connection {peer}: {message}"),
        TargetEvent::Session(r) => {
            let what = match r.status {
                SessionStatus::Committed => "committed".to_string(),
                SessionStatus::Failed => format!(
                    "FAILED ({}): {}",
                    r.reason.as_deref().unwrap_or("?"),
                    r.message.as_deref().unwrap_or("")
                ),
                SessionStatus::Refused => {
                    format!("refused: {}", r.message.as_deref().unwrap_or(""))
                }
                SessionStatus::Expired => "expired".to_string(),
            };
            format!(
                "{} gen {} ({}, session {}): {what}; {} blocks, {} resumes, {} nacks",
                r.volume, r.generation, r.kind, r.session, r.blocks, r.resumes, r.nacks
            )
        }
    }
}

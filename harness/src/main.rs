//! `blockwitness`: the command line. Parsing and printing live here; the work is in the
//! library. This is the one place an error becomes an exit code: 0 pass, 1 product
//! failure, 2 harness error (infrastructure, bad input).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use blockwitness::accel::{self, AccelChoice};
use blockwitness::image::{self, BuildOptions, BuiltImage};
use blockwitness::model::Exit;
use blockwitness::plan::Plan;
use blockwitness::run::RunOptions;
use blockwitness::vm::{BootOptions, Vm};
use blockwitness::witness::{WitnessDiskSpec, WitnessDisks};
use blockwitness::{doctor, paths};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "blockwitness",
    version,
    about = "Proves, block by block, that a snapshot backup copied the volume as it was at the snapshot instant"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the host requirements and print how to fix what is missing.
    Doctor,
    /// Install missing host requirements with apt-get (as root).
    Setup,
    /// Build or list guest images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Boot an image and run one command in it (for debugging images).
    Exec {
        #[arg(long, default_value = "debian-6.1")]
        image: String,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        /// Boot an image without bwsnap.ko.
        #[arg(long)]
        without_bwsnap: bool,
        /// Attach a scratch disk: `SIZE_MIB[:FS[:DIR]]` with FS ext2, ext4 or xfs (made on
        /// the host; an ext2/ext4 disk is populated from DIR when given); serials bw-d0,
        /// bw-d1, ... in order.
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Extra modules to load at boot.
        #[arg(long = "module")]
        modules: Vec<String>,
        /// Who serves the disks: QEMU's block layer, or a witness disk (`bw-disk`, a
        /// vhost-user-blk backend that records every request).
        #[arg(long, value_enum, default_value = "qemu")]
        disk_backend: DiskBackend,
        /// Virtqueues per witness disk.
        #[arg(long, default_value_t = 2)]
        queues: u16,
        /// Keep the scratch directory (disks, histories, layers, logs) and print where.
        #[arg(long)]
        keep: bool,
        /// Pack a built-in pipeline's guest userland (dmsetup; lvm, thin tools, mkfs).
        #[arg(long, value_enum)]
        userland: Option<ExecUserland>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Run scenarios: boot, back up, record every block, classify, report.
    Run {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Image to run on (default: the scenario's first image).
        #[arg(long)]
        image: Option<String>,
        /// Seed (default: the scenario's seed).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        /// Keep the work directory (disks, truth layers, target store) for inspection.
        #[arg(long)]
        keep_work: bool,
        /// Run QEMU at 1/N of the wall clock (a stop/continue duty cycle the harness
        /// applies itself; the scenario's timeout grows N-fold): what a slow machine does
        /// to the scenario.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
        slow: Option<u32>,
        /// Serve the volumes with this instead of the scenario's `guest.disk` (the repro
        /// line says so).
        #[arg(long, value_enum)]
        disk: Option<DiskBackend>,
        /// Plain progress lines even on a terminal.
        #[arg(long)]
        plain: bool,
    },
    /// The main job: every scenario on every image over its seeds, one report with the
    /// detector matrix.
    Nightly {
        /// Scenario files or directories (default: scenarios/).
        paths: Vec<PathBuf>,
        /// Only these images (default: each scenario's list).
        #[arg(long = "image")]
        images: Vec<String>,
        /// Only the first N seeds of each scenario.
        #[arg(long)]
        max_seeds: Option<u32>,
        /// Only scenarios whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        /// Run QEMU at 1/N of the wall clock (a stop/continue duty cycle the harness
        /// applies itself; the scenario's timeout grows N-fold): what a slow machine does
        /// to the scenario.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
        slow: Option<u32>,
        /// Serve every scenario's volumes with this instead of its `guest.disk`.
        #[arg(long, value_enum)]
        disk: Option<DiskBackend>,
        #[arg(long)]
        plain: bool,
    },
    /// Validate scenario files without booting (default: scenarios/).
    Check { paths: Vec<PathBuf> },
    /// Classify two raw images (truth, backup) or two report directories block by block.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Where to write the report (default: reports/diff-<time>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Rebuild a report's summary, CSV, JUnit and HTML from its recording.
    Report { dir: PathBuf },
    /// Put a nightly's detector matrix (DIR/matrix.md) into the README, naming the
    /// nightly it came from.
    ReadmeMatrix {
        /// The nightly's report directory, e.g. reports/nightly-1795900000.
        dir: PathBuf,
    },
    /// Cut a failing run down: rerun its scenario (same seed and image) with smaller
    /// plans and write the smallest that still fails the same way (docs/shrink.md).
    Shrink(ShrinkArgs),
    /// Print a performance figure as a ratio against its baseline.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
}

#[derive(clap::Args)]
struct ShrinkArgs {
    /// The run's report directory (reports/<run-id>).
    report: PathBuf,
    /// Time for the whole session (a run in flight at the end is stopped).
    #[arg(long, default_value = "30m", value_parser = parse_budget)]
    budget: Duration,
    /// Where to write the shrunk scenario (default: shrunk.toml in the session's
    /// directory, reports/shrink-...).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Runs beyond the first that a cut must also fail the same way in before it
    /// is kept, and reruns of the original first (TCG runs are noisy).
    #[arg(long, default_value_t = 1)]
    confirm: u32,
    /// Keep these findings (a class or outcome name) instead of the failing
    /// verdict; for a scenario that expects what it finds. Repeatable.
    #[arg(long = "keep-finding")]
    keep_finding: Vec<String>,
    /// Keep every finding of the run instead of its failing verdict.
    #[arg(long, conflicts_with = "keep_finding")]
    keep_findings: bool,
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    plain: bool,
}

/// Who serves a guest's disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DiskBackend {
    Qemu,
    Witness,
}

impl DiskBackend {
    fn scenario(self) -> blockwitness::scenario::DiskBackend {
        match self {
            DiskBackend::Qemu => blockwitness::scenario::DiskBackend::Qemu,
            DiskBackend::Witness => blockwitness::scenario::DiskBackend::Witness,
        }
    }
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Fetch the kernel, build bwsnap.ko and the binaries, pack the initramfs.
    Build {
        /// Image names (default: every image in images/).
        names: Vec<String>,
        /// Leave bwsnap.ko out (only to debug an image without the module under test).
        #[arg(long)]
        without_bwsnap: bool,
    },
    /// Show what is cached: image, kernel version, packages and hashes.
    List,
    /// Resolve each image's meta-packages to the exact kernel it would build today
    /// (refreshing stale apt lists once, as root). Fetches nothing.
    Resolve {
        /// Image names (default: every image in images/).
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Hash and classify a 1 GiB image against the machine's in-memory block-hash limit.
    Hash,
    /// bw-agent's full-backup throughput against dd of the snapshot device, and
    /// bw-target's ingest against dd on the host.
    Agent {
        #[arg(long, default_value = "debian-6.1")]
        image: String,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
    },
    /// The harness's share of a scenario's wall time, against a bare boot with the same
    /// fill and a `dd` of each volume; and the nightly's scenario-runs per hour.
    Scenario {
        #[arg(default_value = "scenarios/future-clean.toml")]
        file: PathBuf,
        #[arg(long, default_value = "debian-6.1")]
        image: String,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        /// The nightly report whose runs per hour to quote (default: the newest
        /// reports/nightly-*).
        #[arg(long)]
        nightly: Option<PathBuf>,
    },
    /// The nightly's clean scenarios at full speed and slowed down: per workload the
    /// ratio of bytes written (goal 1.00 ± 0.02), and whether the verdicts matched.
    Slow {
        /// Scenario files or directories (default: scenarios/); only the clean ones run.
        paths: Vec<PathBuf>,
        #[arg(long, default_value = "debian-6.1")]
        image: String,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        /// The slow-down factor.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=20))]
        factor: u32,
        /// Only scenarios whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// The history oracle on a seeded synthetic history (512 MiB, 100k writes) against
    /// hashing the same image with xxh3-128 and sha256.
    Oracle {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Volume size in 4 KiB blocks.
        #[arg(long, default_value_t = 131_072)]
        blocks: u64,
        #[arg(long, default_value_t = 100_000)]
        writes: u64,
        /// Timed runs of each contender; the best is reported.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// The witness disk's throughput against QEMU's own virtio-blk in the same guest,
    /// and the history's size per million requests.
    Disk {
        #[arg(long, default_value = "debian-6.1")]
        image: String,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
    },
    /// Write throughput and p99 latency on a volume with a bwsnap snapshot against the
    /// kernel's dm-snapshot (transient and persistent) and no snapshot, in one guest.
    Cow {
        #[arg(long, default_value = "debian-6.1")]
        image: String,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        /// Seconds each timed run lasts.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Rounds, each measuring every set-up once; figures are their medians.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// The same clean scenario under each built-in pipeline: each driven pipeline's copy
    /// throughput against dd of the same snapshot device, and the recording overhead
    /// (the harness's reader on against off).
    Pipelines {
        #[arg(long, default_value = "debian-6.1")]
        image: String,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
    },
    /// Boot-to-ready and boot-to-shutdown of an image against a bare busybox boot.
    Boot {
        #[arg(long, default_value = "debian-6.1")]
        image: String,
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
}

fn build_image(name: &str, with_bwsnap: bool) -> anyhow::Result<BuiltImage> {
    let opts = BuildOptions {
        cache: paths::cache_dir(),
        project_root: paths::project_root(),
        with_bwsnap,
    };
    let started = std::time::Instant::now();
    let img = image::build(name, &opts, &mut |step| eprintln!("==> {step}"))
        .with_context(|| format!("building image {name}"))?;
    eprintln!(
        "==> image {} ready ({}, kernel {}) in {:.1}s",
        img.name,
        img.key,
        img.kernel_release,
        started.elapsed().as_secs_f64()
    );
    Ok(img)
}

fn images_build(names: Vec<String>, without_bwsnap: bool) -> anyhow::Result<()> {
    let names = if names.is_empty() {
        image::list_defs(&paths::images_dir())
    } else {
        names
    };
    for name in names {
        let img = build_image(&name, !without_bwsnap)?;
        println!("{}\t{}\t{}", img.name, img.key, img.kernel.display());
    }
    Ok(())
}

fn images_resolve(names: Vec<String>) -> anyhow::Result<()> {
    let names = if names.is_empty() {
        image::list_defs(&paths::images_dir())
    } else {
        names
    };
    let resolved = image::resolve_all(&names, &paths::project_root(), &mut |step| {
        eprintln!("==> {step}")
    });
    for (name, pkgs) in resolved {
        let pkgs = pkgs.with_context(|| format!("resolving image {name}"))?;
        println!("{name}\t{}\t{}", pkgs.release, pkgs.image.version);
    }
    Ok(())
}

fn images_list() {
    let built = image::list_built(&paths::cache_dir());
    if built.is_empty() {
        println!("no images in {}", paths::cache_dir().display());
        return;
    }
    for img in built {
        println!("{} {}  kernel {}", img.name, img.key, img.kernel_release);
        for p in &img.packages {
            println!("    {} {} sha256:{}", p.package, p.version, p.sha256);
        }
        match &img.bwsnap_sha256 {
            Some(h) => println!("    bwsnap.ko sha256:{h}"),
            None => println!("    bwsnap.ko: not in this image"),
        }
        for (name, h) in &img.binaries {
            println!("    {name} sha256:{h}");
        }
        println!("    busybox sha256:{}", img.busybox_sha256);
        println!("    modules: {}", img.modules.join(" "));
    }
}

/// Installs the host requirements, then makes sure every image's kernel resolves, so a
/// machine whose apt lists predate a kernel is ready after one command.
fn setup_cmd() -> anyhow::Result<()> {
    let ran = doctor::setup()?;
    if ran.is_empty() {
        eprintln!("every host requirement is already there");
    }
    for r in ran {
        eprintln!("ran: {r}");
    }
    images_resolve(Vec::new())
}

fn doctor_cmd() -> bool {
    let (checks, notes) = doctor::report(&paths::cache_dir());
    for c in &checks {
        println!(
            "{:7} {:16} {}",
            if c.ok { "found" } else { "MISSING" },
            c.name,
            c.detail
        );
    }
    for n in notes {
        println!("note    {n}");
    }
    if let Err(missing) = doctor::require(doctor::ALL) {
        println!(
            "\nfix (as root): {}\nor run: blockwitness setup",
            missing.fix
        );
        return false;
    }
    true
}

/// A scratch directory under the cache, removed at the end (and on Ctrl-C).
fn run_temp_dir(what: &str) -> anyhow::Result<blockwitness::cleanup::TempDir> {
    let base = paths::cache_dir().join("tmp");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    Ok(blockwitness::cleanup::TempDir::new_in(
        &base,
        &format!("{what}-"),
    )?)
}

/// How `exec` serves its disks.
struct ExecDisks {
    backend: DiskBackend,
    queues: u16,
    keep: bool,
}

/// A built-in pipeline's guest userland, for `exec --userland`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExecUserland {
    Dm,
    Lvm,
}

#[allow(clippy::too_many_arguments)]
fn exec_cmd(
    image: &str,
    accel: AccelChoice,
    without_bwsnap: bool,
    disks: &[String],
    how: ExecDisks,
    modules: Vec<String>,
    userland: Option<ExecUserland>,
    argv: Vec<String>,
) -> anyhow::Result<Exit> {
    doctor::require(doctor::FOR_BOOT)?;
    let img = build_image(image, !without_bwsnap)?;
    let decision = accel::decide(accel, &img.kernel, &img.initramfs, &paths::cache_dir());
    eprintln!("==> accelerator {} ({})", decision.accel, decision.reason);
    let dir = run_temp_dir("exec")?;
    let mut opts = BootOptions::new(decision.accel, dir.path().to_path_buf());
    let mut witness = None;
    let mut specs = Vec::new();
    for (i, spec) in disks.iter().enumerate() {
        let disk = blockwitness::run::disks::scratch_disk(dir.path(), i, spec)?;
        match how.backend {
            DiskBackend::Qemu => opts.disks.push(disk),
            DiskBackend::Witness => specs.push(WitnessDiskSpec {
                id: disk.id,
                image: disk.path,
                serial: disk.serial,
            }),
        }
    }
    if !specs.is_empty() {
        let (w, vhost) = WitnessDisks::start(&specs, dir.path(), how.queues, None)?;
        opts.vhost_disks = vhost;
        witness = Some(w);
    }
    opts.extra_modules = modules;
    if let Some(which) = userland {
        let u = match which {
            ExecUserland::Dm => blockwitness::pipeline::guest_tools::dm_userland()?,
            ExecUserland::Lvm => blockwitness::pipeline::guest_tools::lvm_userland()?,
        };
        let archive = dir.path().join("userland.cpio");
        u.write(&archive)?;
        opts.initrd_extra.push(archive);
    }
    let mut vm = Vm::boot(&img, opts)?;
    eprintln!("==> ready after {:.1}s", vm.boot_to_ready.as_secs_f64());
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    let done = vm.guest.exec(&argv_ref, Duration::from_secs(600))?;
    print!("{}", done.stdout);
    eprint!("{}", done.stderr);
    vm.shutdown(Duration::from_secs(30))?;
    for end in witness
        .map(|w| w.finish(Duration::from_secs(10)))
        .unwrap_or_default()
    {
        match witness_disk::History::open(&end.history) {
            Ok(h) => eprintln!(
                "==> witness disk {}: {} requests, {} markers, history {} bytes",
                end.id,
                h.requests().count(),
                h.markers().count(),
                std::fs::metadata(&end.history).map_or(0, |m| m.len())
            ),
            Err(e) => eprintln!(
                "==> witness disk {}: {} (log: {})",
                end.id,
                blockwitness::error_chain(&e),
                end.log_tail
            ),
        }
    }
    if how.keep {
        eprintln!("==> kept {}", dir.keep().display());
    }
    // The command's own failure, as a product failure would be.
    Ok(if done.success() {
        Exit::Pass
    } else {
        Exit::ProductFailure
    })
}

fn main() -> ExitCode {
    blockwitness::cleanup::install_interrupt_handler();
    let cli = Cli::parse();
    let result: anyhow::Result<Exit> = match cli.command {
        Command::Doctor => Ok(if doctor_cmd() {
            Exit::Pass
        } else {
            Exit::HarnessError
        }),
        Command::Setup => setup_cmd().map(|()| Exit::Pass),
        Command::Images { command } => match command {
            ImagesCommand::Build {
                names,
                without_bwsnap,
            } => images_build(names, without_bwsnap).map(|()| Exit::Pass),
            ImagesCommand::List => {
                images_list();
                Ok(Exit::Pass)
            }
            ImagesCommand::Resolve { names } => images_resolve(names).map(|()| Exit::Pass),
        },
        Command::Exec {
            image,
            accel,
            without_bwsnap,
            disks,
            modules,
            disk_backend,
            queues,
            keep,
            userland,
            argv,
        } => exec_cmd(
            &image,
            accel,
            without_bwsnap,
            &disks,
            ExecDisks {
                backend: disk_backend,
                queues,
                keep,
            },
            modules,
            userland,
            argv,
        ),
        Command::Run {
            files,
            image,
            seed,
            accel,
            keep_work,
            slow,
            disk,
            plain,
        } => run_cmd(
            files,
            image,
            seed,
            keep_work,
            RunKnobs {
                accel,
                slow,
                disk,
                plain,
            },
        ),
        Command::Nightly {
            paths,
            images,
            max_seeds,
            filter,
            accel,
            slow,
            disk,
            plain,
        } => nightly_cmd(
            paths,
            images,
            max_seeds,
            filter,
            RunKnobs {
                accel,
                slow,
                disk,
                plain,
            },
        ),
        Command::Check { paths } => {
            let report = blockwitness::scenario::check(&paths);
            println!("{report}");
            Ok(report.exit())
        }
        Command::Diff { a, b, out } => diff_cmd(&a, &b, out),
        Command::ReadmeMatrix { dir } => {
            let readme = paths::project_root().join("README.md");
            blockwitness::nightly::readme_matrix(&dir, &readme)
                .map(|()| {
                    println!(
                        "{}: detector matrix from {}",
                        readme.display(),
                        dir.display()
                    );
                    Exit::Pass
                })
                .map_err(Into::into)
        }
        Command::Report { dir } => blockwitness::report::rebuild_report(&dir)
            .map(|outcome| {
                println!(
                    "{}: {} ({})",
                    outcome.dir.display(),
                    outcome.verdict.name(),
                    outcome.verdict.reasons().join("; ")
                );
                outcome.verdict.exit()
            })
            .map_err(Into::into),
        Command::Shrink(args) => shrink_cmd(args),
        Command::Bench { bench } => match bench {
            BenchCommand::Agent { image, accel } => {
                bench_vm(&image, accel, "bench-agent", |img, accel, dir| {
                    blockwitness::bench::agent(img, accel, dir).map(|r| r.to_string())
                })
            }
            BenchCommand::Scenario {
                file,
                image,
                accel,
                nightly,
            } => bench_scenario(&file, &image, accel, nightly.as_deref()),
            BenchCommand::Slow {
                paths,
                image,
                accel,
                factor,
                filter,
            } => bench_slow(paths, &image, accel, factor, filter.as_deref()),
            BenchCommand::Hash => blockwitness::bench::hash::bench_hash(&Default::default())
                .map(|r| {
                    println!("{r}");
                    Exit::Pass
                })
                .map_err(Into::into),
            BenchCommand::Oracle {
                seed,
                blocks,
                writes,
                runs,
            } => blockwitness::bench::oracle::bench_oracle(
                &blockwitness::bench::oracle::BenchOracleOptions {
                    seed,
                    blocks,
                    writes,
                    runs,
                },
            )
            .map(|r| {
                println!("{r}");
                Exit::Pass
            })
            .map_err(Into::into),
            BenchCommand::Disk { image, accel } => {
                bench_vm(&image, accel, "bench-disk", |img, accel, dir| {
                    blockwitness::bench::disk::bench_disk(img, accel, dir).map(|r| r.to_string())
                })
            }
            BenchCommand::Pipelines { image, accel } => bench_pipelines(&image, accel),
            BenchCommand::Boot { image, accel, runs } => {
                bench_boot(&image, accel, runs).map(|()| Exit::Pass)
            }
            BenchCommand::Cow {
                image,
                accel,
                seconds,
                rounds,
            } => bench_cow(&image, accel, seconds, rounds).map(|()| Exit::Pass),
        },
    };
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(Exit::HarnessError.code())
        }
    }
}

fn diff_cmd(
    a: &std::path::Path,
    b: &std::path::Path,
    out: Option<PathBuf>,
) -> anyhow::Result<Exit> {
    let out = match out {
        Some(out) => out,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            // Unique: two diffs in the same second get two directories.
            blockwitness::report::new_dir(&paths::reports_dir(), &format!("diff-{now}"))?
        }
    };
    let outcome = blockwitness::diff::diff(a, b, &out)?;
    println!("{outcome}");
    Ok(outcome.exit())
}

/// How `run` and `nightly` run each scenario: the accelerator, the slow-down, who
/// serves the volumes, and the progress display.
struct RunKnobs {
    accel: AccelChoice,
    slow: Option<u32>,
    disk: Option<DiskBackend>,
    plain: bool,
}

fn nightly_cmd(
    paths: Vec<PathBuf>,
    images: Vec<String>,
    max_seeds: Option<u32>,
    filter: Option<String>,
    knobs: RunKnobs,
) -> anyhow::Result<Exit> {
    let RunKnobs {
        accel,
        slow,
        disk,
        plain,
    } = knobs;
    // The main job sets up the host itself (as root), so a fresh machine needs nothing else.
    if doctor::require(doctor::FOR_RUN).is_err() {
        for ran in doctor::setup()? {
            eprintln!("setup ran: {ran}");
        }
    }
    let reporter = blockwitness::ui::Terminal::new(plain);
    let opts = blockwitness::nightly::NightlyOptions {
        scenarios: if paths.is_empty() {
            vec![paths::scenarios_dir()]
        } else {
            paths
        },
        images: (!images.is_empty()).then_some(images),
        max_seeds,
        filter,
        disk: disk.map(DiskBackend::scenario),
        run: RunOptions {
            slow,
            ..RunOptions::standard(accel)
        },
    };
    let report = blockwitness::nightly::nightly(&opts, &reporter);
    println!("{}", blockwitness::nightly::matrix_markdown(&report));
    for r in &report.runs {
        println!(
            "{:5} {} {} seed {} ({:.0}s) {}",
            r.verdict.name(),
            r.scenario,
            r.image,
            r.seed,
            r.seconds,
            r.verdict.reasons().join("; ")
        );
    }
    for e in &report.invalid_scenarios {
        println!("invalid: {e}");
    }
    println!(
        "{} runs in {:.0} min; report: {}/index.html",
        report.runs.len(),
        report.seconds / 60.0,
        report.dir
    );
    Ok(report.exit())
}

fn run_cmd(
    files: Vec<PathBuf>,
    image: Option<String>,
    seed: Option<u64>,
    keep_work: bool,
    knobs: RunKnobs,
) -> anyhow::Result<Exit> {
    let RunKnobs {
        accel,
        slow,
        disk,
        plain,
    } = knobs;
    let reporter = blockwitness::ui::Terminal::new(plain);
    let mut opts = RunOptions::standard(accel);
    opts.keep_work = keep_work;
    opts.slow = slow;
    let mut worst = Exit::Pass;
    for file in files {
        let scenario = match blockwitness::scenario::load(&file) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                worst = worst.worst(Exit::HarnessError);
                continue;
            }
        };
        let image = image
            .clone()
            .unwrap_or_else(|| scenario.images.first().cloned().unwrap_or_default());
        let mut plan = Plan::resolve(&scenario, seed.unwrap_or(scenario.seed), &image);
        if let Some(d) = disk {
            plan = plan.with_disk(d.scenario());
        }
        let result = blockwitness::run::run_plan(&plan, &scenario.source, &opts, &reporter);
        println!(
            "{} {} on {} seed {}: {}{}\n  report: {}\n  repro: {}",
            match result.exit() {
                Exit::Pass => "PASS",
                Exit::ProductFailure | Exit::HarnessError => "FAIL",
            },
            result.scenario,
            result.image,
            result.seed,
            result.verdict.name(),
            match result.verdict.reasons() {
                [] => String::new(),
                r => format!(" ({})", r.join("; ")),
            },
            result.report_dir.join("index.html").display(),
            plan.repro,
        );
        worst = worst.worst(result.exit());
    }
    Ok(worst)
}

fn parse_budget(text: &str) -> Result<Duration, String> {
    blockwitness::scenario::units::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!(
                "\"{text}\" is not a budget: {}",
                blockwitness::scenario::units::DURATION_HELP
            )
        })
}

fn shrink_cmd(args: ShrinkArgs) -> anyhow::Result<Exit> {
    use blockwitness::shrink::{Finding, Keep, ShrinkOptions};
    let ShrinkArgs {
        report,
        budget,
        out,
        confirm,
        keep_finding,
        keep_findings,
        accel,
        plain,
    } = args;
    let keep = if keep_findings {
        Keep::AllFindings
    } else if keep_finding.is_empty() {
        Keep::Verdict
    } else {
        Keep::These(
            keep_finding
                .iter()
                .map(|n| Finding::parse(n))
                .collect::<Result<_, _>>()?,
        )
    };
    let reporter = blockwitness::ui::Terminal::new(plain);
    let shrunk = blockwitness::shrink::shrink(
        &ShrinkOptions {
            report,
            budget,
            out,
            confirm,
            keep,
            run: RunOptions::standard(accel),
        },
        &reporter,
    )?;
    println!("{shrunk}");
    // 0 when a scenario was written; 2 when the failure did not reproduce.
    Ok(if shrunk.out.is_some() {
        Exit::Pass
    } else {
        Exit::HarnessError
    })
}

/// Builds the image, decides the accelerator and runs a VM benchmark in a scratch dir.
fn bench_vm(
    image: &str,
    accel: AccelChoice,
    what: &str,
    bench: impl FnOnce(
        &BuiltImage,
        blockwitness::qemu::Accel,
        &std::path::Path,
    ) -> Result<String, blockwitness::bench::BenchError>,
) -> anyhow::Result<Exit> {
    doctor::require(doctor::FOR_RUN)?;
    let img = build_image(image, true)?;
    let decision = accel::decide(accel, &img.kernel, &img.initramfs, &paths::cache_dir());
    eprintln!("==> accelerator {} ({})", decision.accel, decision.reason);
    let dir = run_temp_dir(what)?;
    println!("{}", bench(&img, decision.accel, dir.path())?);
    Ok(Exit::Pass)
}

fn bench_scenario(
    file: &std::path::Path,
    image: &str,
    accel: AccelChoice,
    nightly: Option<&std::path::Path>,
) -> anyhow::Result<Exit> {
    let scenario = blockwitness::scenario::load(file)?;
    let plan = Plan::resolve(&scenario, scenario.seed, image);
    bench_vm(image, accel, "bench-scenario", |img, _, dir| {
        blockwitness::bench::scenario(
            &plan,
            &scenario.source,
            &RunOptions::standard(accel),
            img,
            dir,
            nightly,
        )
        .map(|r| r.to_string())
    })
}

fn bench_pipelines(image: &str, accel: AccelChoice) -> anyhow::Result<Exit> {
    doctor::require(doctor::FOR_RUN)?;
    let report = blockwitness::bench::pipelines::pipelines(image, &RunOptions::standard(accel))?;
    println!("{report}");
    Ok(Exit::Pass)
}

fn bench_cow(image: &str, accel: AccelChoice, seconds: u32, rounds: u32) -> anyhow::Result<()> {
    doctor::require(doctor::FOR_RUN)?;
    let img = build_image(image, true)?;
    let decision = accel::decide(accel, &img.kernel, &img.initramfs, &paths::cache_dir());
    eprintln!("==> accelerator {} ({})", decision.accel, decision.reason);
    let dir = run_temp_dir("bench-cow")?;
    let opts = blockwitness::bench::cow::CowBenchOptions { seconds, rounds };
    let report = blockwitness::bench::cow::bench_cow_with(&img, decision.accel, dir.path(), &opts)?;
    println!("{report}");
    Ok(())
}

fn bench_slow(
    paths: Vec<PathBuf>,
    image: &str,
    accel: AccelChoice,
    factor: u32,
    filter: Option<&str>,
) -> anyhow::Result<Exit> {
    doctor::require(doctor::FOR_RUN)?;
    let paths = if paths.is_empty() {
        vec![paths::scenarios_dir()]
    } else {
        paths
    };
    let report = blockwitness::scenario::check(&paths);
    if !report.all_valid() {
        anyhow::bail!("invalid scenarios:\n{report}");
    }
    let scenarios: Vec<_> = report
        .files
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .filter(|s| filter.is_none_or(|f| s.name.contains(f)))
        .collect();
    let bench = blockwitness::bench::slow::bench_slow(
        &scenarios,
        image,
        &RunOptions::standard(accel),
        factor,
        &|what| eprintln!("==> {what}"),
    );
    println!("{bench}");
    Ok(if bench.pairs.is_empty() || !bench.errors.is_empty() {
        Exit::HarnessError
    } else {
        Exit::Pass
    })
}

fn bench_boot(image: &str, accel: AccelChoice, runs: u32) -> anyhow::Result<()> {
    doctor::require(doctor::FOR_BOOT)?;
    let img = build_image(image, true)?;
    let decision = accel::decide(accel, &img.kernel, &img.initramfs, &paths::cache_dir());
    let dir = run_temp_dir("bench-boot")?;
    let report = blockwitness::bench::boot(&img, decision.accel, runs, dir.path())?;
    println!("{report}");
    Ok(())
}

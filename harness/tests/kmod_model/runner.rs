//! Runs sequences in one guest: boots it with two small volumes, starts
//! `bwsnap-exec`, and plays each sequence against the module and the model, checking
//! after every step. Drives proptest (generation, shrinking, seeds) and prints a failing
//! sequence as a one-line repro.

use std::cell::RefCell;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockwitness::console;
use blockwitness::image::BuiltImage;
use blockwitness::qemu::{Disk, DiskFormat};
use blockwitness::vm::{BootOptions, Vm};
use bw_guest::bwsnap_exec::protocol::{self as proto, Reply, Request};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use proptest_state_machine::ReferenceStateMachine;

use super::exec::Exec;
use super::model::{span_sectors, Geometry, MState, Model, BLOCK, MINORS};
use super::ops::{self, Op, Reference, Span, ARENA_SECTORS};
use crate::common;

/// Each volume: 8 MiB; its filesystem takes the first 6 MiB, the arena the last 2.
const VOLUME_MIB: u64 = 8;
const FS_MIB: u64 = 6;
const ARENA_BLOCK: u64 = FS_MIB * 256;
/// Where the image build puts the module in the guest.
const BWSNAP_KO: &str = "/lib/modules/bwsnap.ko";
/// Sequences are 1 to this many steps long.
pub const MAX_STEPS: usize = 32;
/// CI's sequences per kernel unless BW_MODEL_CASES says otherwise.
pub const DEFAULT_CASES: u32 = 200;
/// A request's deadline; generous for TCG on a loaded host. A hung ioctl shows here.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// The fault knobs, off unless a detection check turns one on.
const KNOBS: [&str; 4] = [
    "fault_cow_read_live",
    "fault_corrupt_cow",
    "fault_drop_tracking",
    "fault_delay_cow_ms",
];

/// How a sequence failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The module disagreed with the model at step `step` (0-based).
    Mismatch { step: usize, message: String },
    /// The harness could not run the sequence (executor gone, timeout, bad reply).
    Harness(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Failure::Mismatch { step, message } => write!(f, "step {}: {message}", step + 1),
            Failure::Harness(m) => write!(f, "harness error: {m}"),
        }
    }
}

/// The two volumes: ext4 with 4 KiB blocks (fallocated COW files) and ext2 with 1 KiB
/// blocks (zero-filled COW files, slots at 1 KiB offsets). No journal: nothing writes
/// to the filesystem behind the test's back, so COW slot use is exact.
fn volume(dir: &Path, id: &str, mkfs: &[&str]) -> Disk {
    let path = dir.join(format!("{id}.raw"));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(VOLUME_MIB << 20).unwrap();
    let out = Command::new(mkfs[0])
        .args(&mkfs[1..])
        .arg(&path)
        .arg(format!("{FS_MIB}M"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", mkfs[0]));
    assert!(
        out.status.success(),
        "{mkfs:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Disk::new(id, path, DiskFormat::Raw)
}

const MKFS: [(&str, &[&str]); 2] = [
    (
        "ext4",
        &[
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
        ],
    ),
    ("ext2", &["mkfs.ext2", "-q", "-F", "-b", "1024"]),
];

/// A guest with its executor.
pub struct Rig {
    /// Steps run, by op and result ("write ok", "start EINVAL"...).
    pub stats: std::collections::BTreeMap<String, u64>,
    /// Snapshots that overflowed their COW file.
    pub overflows: u64,
    vm: Vm,
    exec: Exec,
    handle: u64,
    pub geo: Geometry,
    cases: u64,
    _dir: tempfile::TempDir,
}

impl Rig {
    pub fn boot(img: &BuiltImage) -> Rig {
        let dir = common::scratch(&format!("model-{}", img.name));
        let d = dir.path();
        let disks: Vec<Disk> = MKFS
            .iter()
            .enumerate()
            .map(|(i, (_, mkfs))| volume(d, &format!("v{i}"), mkfs))
            .collect();
        let mut opts = BootOptions::new(common::accel(img), d.join("run"));
        opts.disks = disks;
        opts.ports = vec![proto::PORT_NAME.to_string()];
        let mut vm = Vm::boot(img, opts)
            .unwrap_or_else(|e| panic!("booting {}: {}", img.name, common::error_chain(&e)));
        let mut vols = Vec::new();
        for (i, (fs, _)) in MKFS.iter().enumerate() {
            let dev = blockwitness::image::tools::guest_dev(&mut vm.guest, &format!("bw-v{i}"))
                .unwrap_or_else(|e| panic!("finding volume v{i}: {}", common::error_chain(&e)));
            vm.guest
                .sh(
                    &format!("mkdir -p /mnt/v{i} && mount -t {fs} -o noatime /dev/{dev} /mnt/v{i}"),
                    Duration::from_secs(60),
                )
                .unwrap_or_else(|e| panic!("mounting v{i}: {}", common::error_chain(&e)));
            vols.push(format!("/dev/{dev}:/mnt/v{i}:{ARENA_BLOCK}"));
        }
        let stream = vm
            .machine
            .connect_port(proto::PORT_NAME)
            .unwrap_or_else(|e| {
                panic!("connecting the bw.model port: {}", common::error_chain(&e))
            });
        let mut argv = vec![
            "/bin/bwsnap-exec",
            "--port",
            proto::PORT_NAME,
            "--module",
            BWSNAP_KO,
        ];
        for v in &vols {
            argv.extend(["--vol", v.as_str()]);
        }
        let handle = vm
            .guest
            .spawn(&argv)
            .unwrap_or_else(|e| panic!("starting bwsnap-exec: {}", common::error_chain(&e)));
        let exec = match Exec::connect(stream, Duration::from_secs(60)) {
            Ok(e) => e,
            Err(e) => {
                let end = vm.guest.wait(handle, Duration::from_secs(5));
                panic!(
                    "bwsnap-exec did not say hello: {}; it ended: {end:?}",
                    common::error_chain(&e)
                )
            }
        };
        let v = &exec.hello.volumes[0];
        let geo = Geometry {
            blocks: v.dev_size / BLOCK,
            arena_block: v.arena_block,
        };
        assert!(
            exec.hello
                .volumes
                .iter()
                .all(|x| x.dev_size == v.dev_size && x.arena_block == v.arena_block),
            "the volumes differ in size: {:?}",
            exec.hello.volumes
        );
        assert_eq!(
            geo.arena_sectors(),
            ARENA_SECTORS,
            "the generator's arena size and the volumes' disagree"
        );
        eprintln!(
            "{}: kernel {}, volumes {:?}",
            img.name, exec.hello.kernel, exec.hello.volumes
        );
        Rig {
            stats: Default::default(),
            overflows: 0,
            vm,
            exec,
            handle,
            geo,
            cases: 0,
            _dir: dir,
        }
    }

    fn call(&mut self, req: &Request) -> Result<Reply, Failure> {
        match self.exec.call(req, CALL_TIMEOUT) {
            Ok(Reply::Broken { reason }) => Err(Failure::Harness(format!(
                "bwsnap-exec could not do {req:?}: {reason}"
            ))),
            Ok(r) => Ok(r),
            Err(e) => Err(Failure::Harness(format!(
                "{}; console:\n{}",
                common::error_chain(&e),
                self.vm.machine.console_tail(30)
            ))),
        }
    }

    /// Keeps an op inside the arena (the generator does not know where it ends).
    fn clip(&self, op: Op) -> Op {
        let n = self.geo.arena_sectors();
        let fit = |sector: u64, sectors: u64| (sector % n, sectors.min(n - sector % n));
        match op {
            Op::Write {
                vol,
                sector,
                sectors,
            } => {
                let (sector, sectors) = fit(sector, sectors);
                Op::Write {
                    vol,
                    sector,
                    sectors,
                }
            }
            Op::Zero {
                vol,
                sector,
                sectors,
            } => {
                let (sector, sectors) = fit(sector, sectors);
                Op::Zero {
                    vol,
                    sector,
                    sectors,
                }
            }
            Op::Read {
                minor,
                span: Span::Arena { sector, sectors },
            } => {
                let (sector, sectors) = fit(sector, sectors);
                Op::Read {
                    minor,
                    span: Span::Arena { sector, sectors },
                }
            }
            Op::ReadHeld {
                span: Span::Arena { sector, sectors },
            } => {
                let (sector, sectors) = fit(sector, sectors);
                Op::ReadHeld {
                    span: Span::Arena { sector, sectors },
                }
            }
            other => other,
        }
    }

    fn request(&self, op: &Op, tag: u64) -> Request {
        let a0 = self.geo.arena_sector();
        let dev_size = self.geo.blocks * BLOCK;
        match *op {
            Op::Setup {
                minor,
                vol,
                cow,
                size,
            } => Request::Setup {
                minor,
                vol,
                cow,
                cow_size: size.bytes(dev_size),
            },
            Op::Start { minor } => Request::Start { minor },
            Op::ToIncremental { minor } => Request::ToIncremental { minor },
            Op::ToSnapshot { minor, cow, size } => Request::ToSnapshot {
                minor,
                cow,
                cow_size: size.bytes(dev_size),
            },
            Op::Destroy { minor } => Request::Destroy { minor },
            Op::Write {
                vol,
                sector,
                sectors,
            } => Request::Write {
                vol,
                sector: a0 + sector,
                sectors,
                tag,
            },
            Op::Zero {
                vol,
                sector,
                sectors,
            } => Request::Zero {
                vol,
                sector: a0 + sector,
                sectors,
            },
            Op::Read { minor, span } => {
                let (sector, sectors) = span_sectors(&self.geo, &span);
                Request::Read {
                    minor,
                    sector,
                    sectors,
                }
            }
            Op::Map { minor, start_block } => Request::Map {
                minor,
                start_block,
                nr_blocks: self.geo.blocks,
            },
            Op::Reload => Request::Reload,
            Op::Hold { minor } => Request::Hold { minor },
            Op::ReadHeld { span } => {
                let (sector, sectors) = span_sectors(&self.geo, &span);
                Request::ReadHeld { sector, sectors }
            }
            Op::Release => Request::Release,
        }
    }

    /// Plays `ops` from a fresh state with the module parameters `params` (the fault
    /// knobs not named are off). `seen` counts the steps run (for proptest's shrinking).
    pub fn run_case(
        &mut self,
        ops: &[Op],
        params: &[&str],
        seen: Option<&AtomicUsize>,
    ) -> Result<(), Failure> {
        self.cases += 1;
        let base = self.cases << 32;
        let mut all: Vec<String> = KNOBS
            .iter()
            .filter(|k| !params.iter().any(|p| p.starts_with(&format!("{k}="))))
            .map(|k| format!("{k}=0"))
            .collect();
        all.extend(params.iter().map(|p| p.to_string()));
        match self.call(&Request::Reset {
            tag: base,
            params: all,
        })? {
            Reply::Ok => {}
            other => return Err(Failure::Harness(format!("reset: {other:?}"))),
        }
        let mut model = Model::new(self.geo, MKFS.len(), base);
        for (i, op) in ops.iter().enumerate() {
            if let Some(seen) = seen {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            let op = self.clip(*op);
            let tag = base | (i as u64 + 1);
            let mismatch = |message: String| Failure::Mismatch { step: i, message };
            // Before a snapshot goes away, all of it once more.
            if let Op::ToIncremental { minor } | Op::Destroy { minor } = op {
                if model.ctl.state(minor) == MState::Snapshot {
                    self.verify(&mut model, minor, Span::Whole, base)
                        .map_err(|e| at_verify(e, i, "before it", &op))?;
                }
            }
            let reply = self.call(&self.request(&op, tag))?;
            let live = model.live_snapshots().len();
            model.step(&op, &reply, tag, base).map_err(mismatch)?;
            self.count(&op, &reply);
            if model.live_snapshots().len() < live
                && matches!(op, Op::Write { .. } | Op::Zero { .. })
            {
                self.overflows += 1;
            }
            match self.call(&Request::Info {
                minors: (0..MINORS).collect(),
            })? {
                Reply::Info { minors } => model
                    .check_info(&minors)
                    .map_err(|e| mismatch(format!("after `{op}`: {e}")))?,
                other => return Err(Failure::Harness(format!("info: {other:?}"))),
            }
            let mut checks = model.touched(&op);
            if let (Op::Start { minor }, Reply::Started { .. }) = (&op, &reply) {
                checks.push((*minor, Span::Whole));
            }
            for (minor, span) in checks {
                self.verify(&mut model, minor, span, base)
                    .map_err(|e| at_verify(e, i, "after it", &op))?;
            }
        }
        for minor in model.snapshots() {
            self.verify(&mut model, minor, Span::Whole, base)
                .map_err(|e| match ops.last() {
                    Some(op) => at_verify(e, ops.len() - 1, "at the end, after", op),
                    None => e,
                })?;
        }
        Ok(())
    }

    fn count(&mut self, op: &Op, reply: &Reply) {
        let verb = op.to_string();
        let verb = verb.split_whitespace().next().unwrap_or_default();
        let result = match reply {
            Reply::Err { errno, .. } => format!("errno {errno}"),
            _ => "ok".into(),
        };
        *self.stats.entry(format!("{verb} {result}")).or_default() += 1;
    }

    /// One line of what ran.
    pub fn summary(&self) -> String {
        let steps: u64 = self.stats.values().sum();
        let parts: Vec<String> = self
            .stats
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!(
            "{steps} steps, {} COW overflows; {}",
            self.overflows,
            parts.join(", ")
        )
    }

    /// A read the runner adds: it must match the model like any other.
    fn verify(
        &mut self,
        model: &mut Model,
        minor: u32,
        span: Span,
        base: u64,
    ) -> Result<(), Failure> {
        let op = Op::Read { minor, span };
        let reply = self.call(&self.request(&op, 0))?;
        model
            .step(&op, &reply, 0, base)
            .map_err(|message| Failure::Mismatch { step: 0, message })
    }

    /// Ends the executor and the guest; panics on kernel trouble in the console.
    pub fn finish(mut self, what: &str) {
        let _ = self.exec.call(&Request::Quit, Duration::from_secs(10));
        let _ = self.vm.guest.wait(self.handle, Duration::from_secs(10));
        let console_path = self.vm.machine.console_path();
        self.vm
            .shutdown(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{what}: shutting down: {}", common::error_chain(&e)));
        let text = std::fs::read(&console_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let found = console::scan(&text);
        assert!(
            found.is_empty(),
            "{what}: kernel trouble on the console ({}):\n{}",
            console_path.display(),
            found
                .iter()
                .map(|f| format!("line {}: {}", f.line_no, f.line))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn at_verify(e: Failure, step: usize, when: &str, op: &Op) -> Failure {
    match e {
        Failure::Mismatch { message, .. } => Failure::Mismatch {
            step,
            message: format!("snapshot check {when} `{op}`: {message}"),
        },
        h @ Failure::Harness(_) => h,
    }
}

/// The seed: BW_MODEL_SEED, else from the clock.
fn seed() -> u64 {
    match std::env::var("BW_MODEL_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("BW_MODEL_SEED={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// Sequences to run: BW_MODEL_CASES, else `default`.
pub fn cases(default: u32) -> u32 {
    match std::env::var("BW_MODEL_CASES") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("BW_MODEL_CASES={s:?} is not a number")),
        Err(_) => default,
    }
}

/// The command that reruns exactly `ops` on `test`.
pub fn repro_line(test: &str, ops: &[Op]) -> String {
    format!(
        "BW_MODEL_REPRO='{}' cargo nextest run -p blockwitness --test kmod_model -E 'test(={test})'",
        ops::line(ops)
    )
}

/// What a generated run found.
pub struct RunReport {
    pub seed: u64,
    pub cases: u32,
    pub took: Duration,
    /// The shrunk failing sequence and why it fails.
    pub failure: Option<(Vec<Op>, Failure)>,
}

/// `cases` generated sequences (proptest, seeded), shrinking a failure.
pub fn run_generated(rig: &mut Rig, cases: u32) -> RunReport {
    let seed = seed();
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        // Shrinking replays sequences in the guest: bound it.
        max_shrink_time: 600_000,
        max_global_rejects: 100_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = Reference::sequential_strategy(1..=MAX_STEPS);
    let rig = RefCell::new(rig);
    // After a harness error nothing more is run: every case fails at once, so the
    // shrinker stops quickly, and the error is reported as what it is.
    let harness: RefCell<Option<String>> = RefCell::new(None);
    let last: RefCell<Option<(Vec<Op>, Failure)>> = RefCell::new(None);
    let started = Instant::now();
    let result = runner.run(
        &strategy,
        |(_, ops, seen): (_, Vec<Op>, Option<Arc<AtomicUsize>>)| {
            if let Some(h) = harness.borrow().as_ref() {
                return Err(TestCaseError::fail(h.clone()));
            }
            let outcome = rig.borrow_mut().run_case(&ops, &[], seen.as_deref());
            match outcome {
                Ok(()) => Ok(()),
                Err(f) => {
                    if let Failure::Harness(h) = &f {
                        *harness.borrow_mut() = Some(h.clone());
                    }
                    let msg = f.to_string();
                    *last.borrow_mut() = Some((ops, f));
                    Err(TestCaseError::fail(msg))
                }
            }
        },
    );
    let failure = match result {
        Ok(()) => None,
        Err(TestError::Fail(_, (_, ops, _))) => {
            // Rerun the minimal sequence once: its own message, not the last shrink
            // attempt's.
            let f = match harness.borrow().as_ref() {
                Some(h) => Failure::Harness(h.clone()),
                None => match rig.borrow_mut().run_case(&ops, &[], None) {
                    Err(f) => f,
                    Ok(()) => Failure::Harness(format!(
                        "the shrunk sequence passed when run again (flaky); the last failure was: {}",
                        last.borrow().as_ref().map_or(String::new(), |l| l.1.to_string())
                    )),
                },
            };
            Some((ops, f))
        }
        Err(TestError::Abort(why)) => {
            Some((vec![], Failure::Harness(format!("proptest gave up: {why}"))))
        }
    };
    RunReport {
        seed,
        cases,
        took: started.elapsed(),
        failure,
    }
}

/// Strategies must give the same sequences for the same seed (what BW_MODEL_SEED
/// relies on).
pub fn generation_is_seeded() {
    let gen = |seed: u8| {
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
        );
        let s = Reference::sequential_strategy(1..=MAX_STEPS);
        (0..5)
            .map(|_| ops::line(&s.new_tree(&mut runner).unwrap().current().1))
            .collect::<Vec<_>>()
    };
    assert_eq!(gen(3), gen(3));
    assert_ne!(gen(3), gen(4));
}

/// A sequence the module must fail under a fault knob, and what the failure must say.
pub struct Detection {
    pub knob: &'static str,
    pub ops: &'static str,
    pub says: &'static str,
}

pub const DETECTIONS: &[Detection] = &[
    Detection {
        knob: "fault_cow_read_live=1",
        ops: "setup m0 v0 cow=fresh size=default; start m0; write v0 s=0+8; read m0 s=0+8",
        says: "data from the future",
    },
    Detection {
        knob: "fault_corrupt_cow=1",
        ops: "setup m1 v1 cow=fresh size=slots:8; start m1; write v1 s=9+2; read m1 s=0+16",
        says: "foreign data",
    },
    Detection {
        knob: "fault_drop_tracking=1",
        ops: "setup m0 v0 cow=fresh size=default; start m0; write v0 s=16+8; to-incremental m0; \
              to-snapshot m0 cow=fresh size=default; start m0; map m0 from=0",
        says: "period map is wrong",
    },
];

/// Each detection sequence passes with its knob off and fails, saying what it should,
/// with it on: the checks can see a bad module.
pub fn check_detections(rig: &mut Rig) -> Vec<String> {
    let mut problems = Vec::new();
    for d in DETECTIONS {
        let ops = ops::parse_line(d.ops).expect("a valid detection sequence");
        if let Err(f) = rig.run_case(&ops, &[], None) {
            problems.push(format!("`{}` fails with no fault knob: {f}", d.ops));
            continue;
        }
        match rig.run_case(&ops, &[d.knob], None) {
            Err(Failure::Mismatch { message, .. }) if message.contains(d.says) => {}
            other => problems.push(format!(
                "with {} `{}` must fail saying {:?}; it gave {other:?}",
                d.knob, d.ops, d.says
            )),
        }
    }
    problems
}

/// Boots, runs the detection checks and `cases` generated sequences (or the one in
/// BW_MODEL_REPRO), and panics with a repro line on failure.
pub fn model_test(image: &str, test: &str) {
    let img = common::image(image);
    let mut rig = Rig::boot(img);
    if let Ok(line) = std::env::var("BW_MODEL_REPRO") {
        let ops = ops::parse_line(&line).unwrap_or_else(|e| panic!("BW_MODEL_REPRO: {e}"));
        let result = rig.run_case(&ops, &[], None);
        rig.finish(test);
        if let Err(f) = result {
            panic!(
                "{image}: the sequence fails: {f}\n  {}\nrepro: {}",
                ops::line(&ops),
                repro_line(test, &ops)
            );
        }
        eprintln!("{image}: the sequence passes ({} steps)", ops.len());
        return;
    }
    let started = Instant::now();
    let problems = check_detections(&mut rig);
    eprintln!(
        "{image}: detection checks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let cases = cases(DEFAULT_CASES);
    let report = run_generated(&mut rig, cases);
    eprintln!(
        "{image}: {} sequences (seed {}) in {:.1} s",
        report.cases,
        report.seed,
        report.took.as_secs_f64()
    );
    eprintln!("{image}: {}", rig.summary());
    rig.finish(test);
    let mut text = Vec::new();
    if !problems.is_empty() {
        text.push(format!(
            "the model test cannot see a bad module:\n  {}",
            problems.join("\n  ")
        ));
    }
    if let Some((ops, f)) = report.failure {
        text.push(format!(
            "a sequence fails (seed {}, shrunk to {} steps): {f}\n  {}\nrepro: {}\n\
             regenerate: BW_MODEL_SEED={} BW_MODEL_CASES={} cargo nextest run -p blockwitness --test kmod_model -E 'test(={test})'",
            report.seed,
            ops.len(),
            ops::line(&ops),
            repro_line(test, &ops),
            report.seed,
            report.cases,
        ));
    }
    assert!(text.is_empty(), "{image}: {}", text.join("\n\n"));
}

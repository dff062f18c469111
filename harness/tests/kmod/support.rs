//! The bodies of the kmod VM tests: booting a guest with the tools disk, running the
//! guest scripts and judging their output, the concurrency test against the QEMU truth,
//! and the host mirror of `bwtool hash`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use blockwitness::bench::cow as bench_cow;
use blockwitness::console;
use blockwitness::image::tools::{self, script_command};
use blockwitness::image::BuiltImage;
use blockwitness::paths;
use blockwitness::qemu::Disk;
use blockwitness::truth::Truth;
use blockwitness::vm::{BootOptions, Vm};

use crate::common;

/// A guest script's time limit (they take 10–60 s under TCG on a 2-core machine).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(400);

/// Unwraps, panicking with the whole error chain.
fn or_die<T, E: std::error::Error>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {}", common::error_chain(&e)))
}

/// The module was built with W=1 (the image build passes it) and the compiler said
/// nothing: no line of the build log carries a warning.
fn assert_build_warning_free(img: &BuiltImage) {
    let log = img
        .bwsnap_build_log
        .as_ref()
        .unwrap_or_else(|| panic!("image {} records no bwsnap build log", img.name));
    let text = std::fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("reading the build log {}: {e}", log.display()));
    assert!(
        text.contains("CC [M]") && text.contains("bwsnap.ko"),
        "{} is not a build log of bwsnap.ko:\n{text}",
        log.display()
    );
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("warning:"))
        .collect();
    assert!(
        warnings.is_empty(),
        "bwsnap.ko ({}) builds with warnings:\n{}",
        img.kernel_release,
        warnings.join("\n")
    );
}

/// Panics if the console has kernel trouble (oops, BUG, WARN, hung task, panic).
fn assert_console_clean(what: &str, console_log: &Path) {
    let text = std::fs::read(console_log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| panic!("reading {}: {e}", console_log.display()));
    let found = console::scan(&text);
    assert!(
        found.is_empty(),
        "{what}: kernel trouble on the console ({}):\n{}",
        console_log.display(),
        found
            .iter()
            .map(|f| format!("line {}: {}", f.line_no, f.line))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A booted guest with the tools disk mounted, and where its console goes.
struct Guest {
    vm: Vm,
    console: std::path::PathBuf,
    booted: Instant,
}

impl Guest {
    fn boot(img: &BuiltImage, dir: &Path, mut disks: Vec<Disk>, modules: &[&str]) -> Guest {
        let tools = or_die(
            "building the tools disk",
            tools::tools_disk(&paths::project_root(), dir),
        );
        disks.insert(0, tools);
        let mut opts = BootOptions::new(common::accel(img), dir.join("run"));
        opts.disks = disks;
        opts.extra_modules = modules.iter().map(|m| m.to_string()).collect();
        let booted = Instant::now();
        let mut vm = or_die(&format!("booting {}", img.name), Vm::boot(img, opts));
        or_die("mounting the tools disk", tools::mount_tools(&mut vm.guest));
        let console = vm.machine.console_path();
        Guest {
            vm,
            console,
            booted,
        }
    }

    /// `/dev/vdX` of the disk with id `id`.
    fn dev(&mut self, id: &str) -> String {
        let dev = or_die(
            &format!("finding disk {id}"),
            tools::guest_dev(&mut self.vm.guest, &Disk::serial_of(id)),
        );
        format!("/dev/{dev}")
    }

    /// Runs a kmod/tests/guest script; returns how it ended.
    fn script(&mut self, script: &str, args: &str, env: &str) -> bw_guest::control::Finished {
        let command = script_command(script, args, env);
        or_die(
            &format!("running {script} {args}"),
            self.vm
                .guest
                .exec(&["/bin/sh", "-c", &command], SCRIPT_TIMEOUT),
        )
    }

    /// Runs a script step that must succeed; returns its stdout.
    fn step(&mut self, script: &str, args: &str, env: &str) -> String {
        let done = self.script(script, args, env);
        assert!(
            done.success(),
            "{script} {args}: {}\n{}{}",
            done.describe(),
            done.stdout,
            done.stderr
        );
        done.stdout
    }

    fn read(&mut self, path: &str) -> String {
        let data = or_die(
            &format!("reading {path} in the guest"),
            self.vm.guest.read_file(path, 64 << 20),
        );
        data
    }

    /// Shuts down, scans the console; returns the guest's wall time.
    fn finish(self, what: &str) -> Duration {
        let Guest {
            vm,
            console,
            booted,
        } = self;
        or_die(
            &format!("{what}: shutting down"),
            vm.shutdown(Duration::from_secs(120)),
        );
        assert_console_clean(what, &console);
        booted.elapsed()
    }
}

/// A guest script and the filesystem of the volume it runs on.
pub struct Script {
    name: &'static str,
    /// Names the volume (`<name>-<fs>`, serial `bw-<name>-<fs>`).
    fs: &'static str,
    mkfs: &'static [&'static str],
    mib: u64,
}

const EXT4: &[&str] = &["mkfs.ext4", "-q", "-F", "-b", "4096"];
/// ext2 with 1 KiB blocks: no extents (the COW file is written with zeros instead of
/// fallocated) and slots that start at 1 KiB offsets.
const EXT2_1K: &[&str] = &["mkfs.ext2", "-q", "-F", "-b", "1024"];
const XFS: &[&str] = &["mkfs.xfs", "-q", "-f"];

/// Volume and scratch disk size (MiB) of the scripts. The scratch disks take copies of
/// a volume; small volumes keep those copies quick.
const VOLUME_MIB: u64 = 128;
/// The race volume: room for its 80 MiB of files and 80 MiB COW file; 65536 blocks, so
/// one pass of trace events fits the module's ring.
const RACE_MIB: u64 = 256;
/// mkfs.xfs refuses filesystems under 300 MB (the xfs scripts make no copies).
const XFS_MIB: u64 = 320;

const fn script(
    name: &'static str,
    fs: &'static str,
    mkfs: &'static [&'static str],
    mib: u64,
) -> Script {
    Script {
        name,
        fs,
        mkfs,
        mib,
    }
}

/// In this order, each on a fresh volume of its own: every script on ext4, the cheap
/// ones again on the module's other filesystems. loadunload last: it takes the module
/// through 100 cycles, a failure there should not hide the others.
pub const SCRIPTS: &[Script] = &[
    script("state", "ext4", EXT4, VOLUME_MIB),
    script("state", "xfs", XFS, XFS_MIB),
    script("state", "ext2k1", EXT2_1K, VOLUME_MIB),
    script("incr", "ext4", EXT4, VOLUME_MIB),
    script("full", "ext4", EXT4, VOLUME_MIB),
    script("full", "xfs", XFS, XFS_MIB),
    script("faults", "ext4", EXT4, VOLUME_MIB),
    script("teardown", "ext4", EXT4, VOLUME_MIB),
    script("loadunload", "ext4", EXT4, VOLUME_MIB),
];

/// The bugs of issue 14 (and the teardown race of issue 12), one script each, every
/// one written to fail against the module as it was (kmod/README.md says how each
/// failed), and the snapshot-read ordering the completion-driven copies must keep.
/// discard.sh needs the helper disk ([`helper_disk`]).
pub const BUG_SCRIPTS: &[Script] = &[
    script("closing", "ext4", EXT4, VOLUME_MIB),
    script("readorder", "ext4", EXT4, VOLUME_MIB),
    script("pool", "ext4", EXT4, VOLUME_MIB),
    script("discard", "ext4", EXT4, VOLUME_MIB),
    script("perminor", "ext4", EXT4, VOLUME_MIB),
    script("extents", "ext4", EXT4, VOLUME_MIB),
    script("adddisk", "ext4", EXT4, VOLUME_MIB),
    script("ownbio", "ext2k1", EXT2_1K, VOLUME_MIB),
];

impl Script {
    fn id(&self) -> String {
        format!("{}-{}", self.name, self.fs)
    }
}

/// What a script's output says: its `FAIL:` lines and whether it ended with `FAILS 0`.
fn judge(name: &str, done: &bw_guest::control::Finished) -> Result<usize, String> {
    let fails: Vec<&str> = done
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL:"))
        .collect();
    let passed = done.stdout.lines().filter(|l| l.starts_with("ok:")).count();
    let clean_end = done.stdout.lines().last() == Some("FAILS 0");
    if done.success() && fails.is_empty() && clean_end && passed > 0 {
        Ok(passed)
    } else {
        Err(format!(
            "{name}: {} ({passed} checks passed)\n  {}\n--- output ---\n{}{}",
            done.describe(),
            fails.join("\n  "),
            done.stdout,
            done.stderr
        ))
    }
}

/// The scripts of `set` that `BW_KMOD_SCRIPTS` (comma-separated script names, for
/// working on one) selects; all of them when it is unset.
fn selected(set: &'static [Script]) -> Vec<&'static Script> {
    let only = std::env::var("BW_KMOD_SCRIPTS").unwrap_or_default();
    let only: Vec<&str> = only.split(',').filter(|s| !s.is_empty()).collect();
    set.iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .collect()
}

/// Builds the helper module kmod/tests/helper/bwtest.ko against the image's headers
/// and puts it on a small read-only ext4 disk (id `helper`).
fn helper_disk(img: &BuiltImage, dir: &Path) -> Disk {
    let src = paths::project_root().join("kmod/tests/helper");
    let build = dir.join("helper-build");
    let tree = dir.join("helper-tree");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::create_dir_all(&tree).unwrap();
    for f in ["Kbuild", "bwtest.c"] {
        std::fs::copy(src.join(f), build.join(f)).unwrap_or_else(|e| panic!("copying {f}: {e}"));
    }
    let out = std::process::Command::new("make")
        .arg("-C")
        .arg(&img.headers_dir)
        .arg(format!("M={}", build.display()))
        .arg("modules")
        .output()
        .expect("running make");
    assert!(
        out.status.success(),
        "building bwtest.ko against {}: {}{}",
        img.headers_dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::copy(build.join("bwtest.ko"), tree.join("bwtest.ko")).unwrap();
    let path = dir.join("helper.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-d"])
        .arg(&tree)
        .arg(&path)
        .output()
        .expect("running mkfs.ext4");
    assert!(
        out.status.success(),
        "mkfs.ext4 of the helper disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Disk {
        id: "helper".into(),
        path,
        format: blockwitness::qemu::DiskFormat::Raw,
        serial: "bw-helper".into(),
        read_only: true,
        blkdebug: false,
    }
}

/// Every selected script of `set` in one guest of image `name`.
pub fn scripts(name: &str, set: &'static [Script]) {
    let img = common::image(name);
    assert_build_warning_free(img);
    let chosen = selected(set);
    assert!(
        !chosen.is_empty(),
        "BW_KMOD_SCRIPTS selects no script of this set"
    );
    let dir = common::scratch(&format!("kmod-{name}"));
    let d = dir.path();
    let mut disks = vec![
        common::raw_disk(d, "s1", VOLUME_MIB, EXT4),
        common::raw_disk(d, "s2", VOLUME_MIB, &[]),
        helper_disk(img, d),
    ];
    for s in &chosen {
        disks.push(common::raw_disk(d, &s.id(), s.mib, s.mkfs));
    }
    let mut g = Guest::boot(img, d, disks, &["xfs"]);
    let env = format!(
        "S1={} S2={} HELPER={}",
        g.dev("s1"),
        g.dev("s2"),
        g.dev("helper")
    );
    let mut failures = Vec::new();
    for s in &chosen {
        let vol = g.dev(&s.id());
        let started = Instant::now();
        let done = g.script(&format!("{}.sh", s.name), "", &format!("VOL={vol} {env}"));
        match judge(&s.id(), &done) {
            Ok(checks) => eprintln!(
                "{name}: {}.sh on {}: {checks} checks passed in {:.0} s",
                s.name,
                s.fs,
                started.elapsed().as_secs_f64()
            ),
            Err(report) => {
                eprintln!("{name}: {report}");
                failures.push(report);
                // Take down what the failed script left, so the next one starts clean.
                g.script("reset.sh", "", "");
            }
        }
    }
    let took = g.finish(&format!("{name} scripts"));
    eprintln!("{name}: scripts guest {:.0} s", took.as_secs_f64());
    assert!(
        failures.is_empty(),
        "{name}: {} script(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// START and a write in flight (kmod/tests/guest/startdrain.sh): the host holds a raw
/// write to the volume in QEMU (blkdebug) while the guest calls START, and lets it go
/// a few seconds later. START must not return before that write completed, and the
/// snapshot must not change after START returned.
pub fn start_drain(name: &str) {
    let img = common::image(name);
    let dir = common::scratch(&format!("kmod-drain-{name}"));
    let d = dir.path();
    let mut vol = common::raw_disk(d, "vol", VOLUME_MIB, EXT4);
    vol.blkdebug = true;
    let mut g = Guest::boot(img, d, vec![vol], &[]);
    let env = format!("VOL={}", g.dev("vol"));
    let step = |g: &mut Guest, args: &str| g.step("startdrain.sh", args, &env);
    let spawn = |g: &mut Guest, args: &str| {
        or_die(
            &format!("spawning startdrain.sh {args}"),
            g.vm.guest.spawn(&[
                "/bin/sh",
                "-c",
                &format!(
                    "{} > /tmp/startdrain.{} 2>&1",
                    script_command("startdrain.sh", args, &env),
                    args
                ),
            ]),
        )
    };
    step(&mut g, "prepare");
    or_die(
        "setting the blkdebug break",
        g.vm.machine.hmp(r#"qemu-io vol "break write_aio bwdrain""#),
    );
    let write = spawn(&mut g, "write");
    std::thread::sleep(Duration::from_secs(2));
    let pending = g.step("startdrain.sh", "pending", &env);
    let start = spawn(&mut g, "start");
    std::thread::sleep(Duration::from_secs(4));
    let early = step(&mut g, "early");
    eprintln!("{name}: {}", early.trim());
    or_die(
        "resuming the held write",
        g.vm.machine.hmp(r#"qemu-io vol "resume bwdrain""#),
    );
    for (what, handle) in [("write", write), ("start", start)] {
        let ended = or_die(
            &format!("waiting for the {what} step"),
            g.vm.guest.wait(handle, Duration::from_secs(120)),
        );
        assert!(
            ended.is_some(),
            "{name}: the {what} step did not end within 120 s of the resume"
        );
    }
    let done = g.script("startdrain.sh", "finish", &env);
    let verdict = judge("startdrain", &done);
    g.finish(&format!("{name} start drain"));
    eprintln!("{name}: {pending}{}", done.stdout);
    if let Err(report) = verdict {
        panic!("{name}: {report}");
    }
}

/// The hash `bwtool hash` prints per 4 KiB block: FNV-1a over little-endian 64-bit
/// words.
pub fn block_hash(block: &[u8]) -> u64 {
    block.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(0x100_0000_01b3)
    })
}

/// Hashes of every 4 KiB block of a host file.
fn file_hashes(path: &Path) -> Vec<u64> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    data.chunks_exact(4096).map(block_hash).collect()
}

/// `bwtool hash` output → hashes, checking its closing `blocks N`.
fn parse_hashes(what: &str, text: &str) -> Vec<u64> {
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.pop().unwrap_or_default();
    let hashes: Vec<u64> = lines
        .iter()
        .map(|l| {
            u64::from_str_radix(l, 16)
                .unwrap_or_else(|_| panic!("{what}: not a hash line: {l:?} (last line {last:?})"))
        })
        .collect();
    assert_eq!(
        last,
        format!("blocks {}", hashes.len()),
        "{what}: hash output incomplete"
    );
    hashes
}

/// Blocks overlapping the COW file's extents (`bwsnap-ctl extents`: "physical length"
/// in bytes per line): the snapshot shows them live, the harness excludes them.
fn cow_blocks(extents: &str) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for line in extents.lines() {
        let nums: Vec<u64> = line
            .split_whitespace()
            .map(|w| w.parse().unwrap_or_else(|_| panic!("extent line {line:?}")))
            .collect();
        let [physical, length] = nums[..] else {
            panic!("extent line {line:?}")
        };
        set.extend(physical / 4096..(physical + length).div_ceil(4096));
    }
    set
}

/// Blocks where `got` differs from `truth`, outside `excluded`.
fn differing(got: &[u64], truth: &[u64], excluded: &BTreeSet<u64>) -> Vec<u64> {
    assert_eq!(
        got.len(),
        truth.len(),
        "hashed a different number of blocks"
    );
    (0..got.len() as u64)
        .filter(|b| got[*b as usize] != truth[*b as usize] && !excluded.contains(b))
        .collect()
}

fn show(blocks: &[u64]) -> String {
    let head: Vec<String> = blocks.iter().take(20).map(u64::to_string).collect();
    format!("{} blocks: {} …", blocks.len(), head.join(" "))
}

/// The concurrency test on image `name` (kmod/tests/guest/race.sh drives the guest).
pub fn race(name: &str) {
    let img = common::image(name);
    let dir = common::scratch(&format!("kmod-race-{name}"));
    let d = dir.path();
    let vol = common::raw_disk(d, "vol", RACE_MIB, EXT4);
    let vol_path = vol.path.clone();
    let mut g = Guest::boot(img, d, vec![vol], &[]);
    let env = format!("VOL={}", g.dev("vol"));

    g.step("race.sh", "prepare", &env);
    let writers = or_die(
        "starting the writers",
        g.vm.guest.spawn(&[
            "/bin/sh",
            "-c",
            &format!(
                "{} > /tmp/writers.log 2>&1",
                script_command("race.sh", "writers", &env)
            ),
        ]),
    );
    std::thread::sleep(Duration::from_secs(3));

    // The instant: the guest freezes, the host takes the truth, the guest starts the
    // snapshot and thaws.
    g.step("race.sh", "freeze", &env);
    let truth_dir = d.join("truth");
    std::fs::create_dir_all(&truth_dir).unwrap();
    let mut truth = Truth::new(
        &truth_dir,
        &[("vol".into(), "vol".into(), vol_path.clone())],
    );
    let took = truth.take(&mut g.vm.machine, 1);
    // Thaw whatever happened: a frozen guest would hang the rest.
    let extents = g.step("race.sh", "start", &env);
    let took = or_die("taking the truth", took);
    eprintln!("{name}: truth taken in {:.2} s", took.as_secs_f64());

    let started = Instant::now();
    let mut passes = Vec::new();
    for (pass, args) in [(1, "read 1"), (2, "read 2"), (3, "read 3 fault")] {
        let out = g.step("race.sh", args, &env);
        assert!(!out.contains("FAIL:"), "race.sh {args}:\n{out}");
        passes.push((
            pass,
            parse_hashes(args, &g.read(&format!("/tmp/hash.{pass}"))),
        ));
    }
    eprintln!(
        "{name}: three snapshot passes under load in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let faults = g.read("/sys/kernel/debug/bwsnap/faults");
    or_die(
        "stopping the writers",
        g.vm.guest.sh("touch /tmp/stop", Duration::from_secs(10)),
    );
    let stopped = or_die(
        "waiting for the writers",
        g.vm.guest.wait(writers, Duration::from_secs(120)),
    );
    let writers_log = g.read("/tmp/writers.log");
    assert!(
        stopped.is_some_and(|f| f.success()),
        "the writers did not end cleanly: {writers_log}"
    );
    g.step("race.sh", "live", &env);
    let live = parse_hashes("live", &g.read("/tmp/hash.live"));
    let finish = g.step("race.sh", "finish", &env);
    let took = g.finish(&format!("{name} race"));
    eprintln!(
        "{name}: race guest {:.0} s; {}",
        took.as_secs_f64(),
        writers_log.trim().replace('\n', ", ")
    );
    eprintln!(
        "{}",
        finish
            .lines()
            .find(|l| l.starts_with("minor 0"))
            .unwrap_or("")
    );

    let (image, scratch) = or_die(
        "the point-in-time image",
        truth.image("vol", 1, &d.join("truth-1.raw")),
    );
    assert!(!scratch, "the raw base froze first: it is the image itself");
    let truth_hashes = file_hashes(&image);
    let excluded = cow_blocks(&extents);
    // 80 MiB of COW file, give or take its last partial block.
    assert!(
        (20480..=20481).contains(&excluded.len()),
        "COW extents cover {} blocks, want 20480: {extents}",
        excluded.len()
    );

    for (pass, hashes) in &passes[..2] {
        let diff = differing(hashes, &truth_hashes, &excluded);
        assert!(
            diff.is_empty(),
            "{name}: snapshot pass {pass} differs from the point-in-time truth at {}",
            show(&diff)
        );
    }
    // The writers really changed the volume while the snapshot was read.
    let changed = differing(&live, &truth_hashes, &excluded);
    assert!(
        changed.len() > 100,
        "{name}: the live volume differs from the truth in only {} blocks: the test did not load the module",
        changed.len()
    );
    // With every read of a copied block served live, the comparison must see it, and
    // only at the blocks the module logged.
    let fired: BTreeSet<u64> = faults
        .lines()
        .filter_map(|l| l.strip_prefix("cow-read-live minor=0 block="))
        .map(|b| {
            b.trim()
                .parse()
                .unwrap_or_else(|_| panic!("fault line {b:?}"))
        })
        .collect();
    let leaked = differing(&passes[2].1, &truth_hashes, &excluded);
    assert!(
        !leaked.is_empty(),
        "{name}: with fault_cow_read_live=1 the snapshot still equals the truth: the comparison cannot see a bad snapshot ({} firings logged)",
        fired.len()
    );
    let unexplained: Vec<u64> = leaked
        .iter()
        .copied()
        .filter(|b| !fired.contains(b))
        .collect();
    assert!(
        unexplained.is_empty(),
        "{name}: the fault pass differs from the truth at blocks the fault log does not name: {}",
        show(&unexplained)
    );
    eprintln!(
        "{name}: passes 1 and 2 equal the truth ({} blocks, {} COW blocks excluded); live differs at {}; the fault pass leaked {} of {} firings",
        truth_hashes.len(),
        excluded.len(),
        changed.len(),
        leaked.len(),
        fired.len()
    );
}

/// `bench cow` end to end with one short round (`BW_BENCH_COW_SECS` and
/// `BW_BENCH_COW_ROUNDS` set a full run by hand): every figure present, every snapshot
/// made copies.
pub fn bench_cow_smoke(name: &str) {
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let opts = bench_cow::CowBenchOptions {
        seconds: env("BW_BENCH_COW_SECS", 1),
        rounds: env("BW_BENCH_COW_ROUNDS", 1),
    };
    let img = common::image(name);
    let dir = common::scratch(&format!("bench-cow-{name}"));
    let started = Instant::now();
    let bench = or_die(
        "bench cow",
        bench_cow::bench_cow_with(img, common::accel(img), dir.path(), &opts),
    );
    eprintln!("{bench}");
    eprintln!("bench cow guest {:.0} s", started.elapsed().as_secs_f64());
    for mode in bench_cow::MODES {
        for setup in bench_cow::SETUPS {
            let rate = bench.rate(mode, setup).unwrap();
            assert!(rate > 0.0, "{mode} {setup}: {rate} MiB/s");
        }
    }
}

/// Builds bwtool on the host and checks its hash against [`block_hash`] on random data.
pub fn hash_matches_bwtool() {
    let dir = common::scratch("bwtool-hash");
    let d = dir.path();
    let bwtool = d.join("bwtool");
    let out = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bwtool)
        .arg(paths::project_root().join("kmod/tests/tools/bwtool.c"))
        .output()
        .expect("running gcc");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data: Vec<u8> = (0..(3u64 << 20) / 8)
        .flat_map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes())
        .collect();
    let file = d.join("data");
    std::fs::write(&file, &data).unwrap();
    let out = std::process::Command::new(&bwtool)
        .arg("hash")
        .arg(&file)
        .output()
        .expect("running bwtool");
    assert!(
        out.status.success(),
        "bwtool hash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = parse_hashes("bwtool hash", &String::from_utf8_lossy(&out.stdout));
    assert_eq!(theirs, file_hashes(&file));
    assert_eq!(theirs.len(), 768);
    // One flipped bit changes its block's hash and no other.
    let mut flipped = data.clone();
    flipped[5 * 4096 + 100] ^= 1;
    let mine: Vec<u64> = flipped.chunks_exact(4096).map(block_hash).collect();
    assert_eq!(differing(&mine, &theirs, &BTreeSet::new()), vec![5]);
}

/// A script passes only when it exits 0, prints no `FAIL:` line, ends with `FAILS 0`
/// and passed at least one check.
pub fn judge_needs_a_clean_run() {
    let run = |code: i32, stdout: &str| bw_guest::control::Finished {
        exit_code: Some(code),
        signal: None,
        timed_out: false,
        stdout: stdout.into(),
        stderr: String::new(),
        duration_ms: 1,
    };
    assert_eq!(judge("t", &run(0, "ok: a\nok: b\nFAILS 0\n")), Ok(2));
    for (code, out) in [
        (1, "ok: a\nFAILS 0\n"),
        (0, "ok: a\nFAIL: b\nFAILS 0\n"),
        (0, "ok: a\n"),
        (0, "FAILS 0\n"),
        (0, "ok: a\nFAILS 1\n"),
    ] {
        assert!(judge("t", &run(code, out)).is_err(), "{code} {out:?}");
    }
    let mut timed_out = run(0, "ok: a\nFAILS 0\n");
    timed_out.timed_out = true;
    assert!(judge("t", &timed_out).is_err());
}

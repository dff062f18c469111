//! bw-agent in a real guest: discovery that cannot hang, and freezing that always
//! thaws. (Full and incremental backups against the point-in-time truth are the
//! scenario tests' job: tests/scenarios.rs.)

mod common;

use std::time::{Duration, Instant};

use blockwitness::qemu::Floppy;
use blockwitness::vm::{BootOptions, Vm};
use blockwitness::witness::{WitnessDiskSpec, WitnessDisks};
use witness_disk::faults::{FaultSpec, OpFilter, Times};

/// Boot options with `n` 32 MiB ext4 disks d0, d1, ... in a scratch directory.
fn with_ext4_disks(
    what: &str,
    n: usize,
) -> (
    &'static blockwitness::image::BuiltImage,
    tempfile::TempDir,
    BootOptions,
) {
    let img = common::image("debian-6.1");
    let dir = common::scratch(what);
    let mut opts = BootOptions::new(common::accel(img), dir.path().join("run"));
    for i in 0..n {
        let id = format!("d{i}");
        let disk = common::raw_disk(dir.path(), &id, 32, &["mkfs.ext4", "-q", "-F"]);
        opts.disks.push(disk);
    }
    (img, dir, opts)
}

#[test]
fn vm_discovery_skips_a_floppy_and_a_dead_disk_in_time() {
    let (img, dir, mut opts) = with_ext4_disks("agent-discovery", 1);
    // The dead disk: a witness disk whose reads are held, once the guest is up.
    let dead = common::raw_disk(dir.path(), "dead", 16, &[]);
    let (mut witness, vhost) = WitnessDisks::start(
        &[WitnessDiskSpec {
            id: "dead".into(),
            image: dead.path.clone(),
            serial: "bw-dead".into(),
        }],
        dir.path(),
        1,
        None,
    )
    .unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    opts.vhost_disks = vhost;
    opts.floppy = Floppy::Empty;
    opts.extra_modules = vec!["floppy".into()];
    let mut vm = Vm::boot(img, opts).unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    // From now on no read of the dead disk completes.
    witness
        .backend("dead")
        .unwrap()
        .control(Duration::from_secs(10))
        .unwrap()
        .arm(FaultSpec::Hang {
            ops: OpFilter::Read,
            blocks: None,
            times: Times::Always,
            after: 0,
        })
        .unwrap();
    let t = Duration::from_secs(60);
    let dead_dev = vm
        .guest
        .sh("grep -l bw-dead /sys/block/vd*/serial | cut -d/ -f4", t)
        .unwrap()
        .trim()
        .to_string();
    assert!(!dead_dev.is_empty());
    // Something else reads the dead disk first and hangs in uninterruptible sleep.
    vm.guest
        .spawn(&[
            "/bin/sh",
            "-c",
            &format!("dd if=/dev/{dead_dev} of=/dev/null bs=4k count=1 iflag=direct"),
        ])
        .unwrap();

    let started = Instant::now();
    let done = vm
        .guest
        .exec(
            &["/bin/bw-agent", "list", "--json", "--probe-timeout", "2"],
            Duration::from_secs(30),
        )
        .unwrap();
    let took = started.elapsed();
    assert!(done.success(), "{}", done.describe());
    assert!(took < Duration::from_secs(15), "discovery took {took:?}");
    let found: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    let skipped = found["skipped"].as_array().unwrap();
    let reason = |name: &str| {
        skipped
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["reason"].as_str())
            .unwrap_or_else(|| panic!("{name} not skipped: {}", done.stdout))
            .to_string()
    };
    assert!(reason("fd0").contains("floppy"));
    assert!(reason(&dead_dev).contains("did not answer"));
    let devices = found["devices"].as_array().unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d["serial"] == "bw-d0" && d["fs_type"] == "ext4"),
        "{}",
        done.stdout
    );
    // The held reads are dropped when QEMU stops the device.
    vm.shutdown(Duration::from_secs(60)).unwrap();
    let ends = witness.finish(Duration::from_secs(20));
    assert!(ends[0].problem().is_none(), "{:?}", ends[0].problem());
}

/// Runs a backup of /mnt/v0 and /mnt/v1 to a target that is not there (the freeze
/// comes before any transfer); returns the agent's summary.
fn failing_backup(vm: &mut Vm, extra: &[&str]) -> serde_json::Value {
    let mut argv = vec![
        "/bin/bw-agent",
        "backup",
        "--volume",
        "/mnt/v0=v0",
        "--volume",
        "/mnt/v1=v1",
        "--target",
        "unix:/tmp/no-target",
        "--state-dir",
        "/tmp/agent-state",
    ];
    argv.extend_from_slice(extra);
    let started = Instant::now();
    let done = vm.guest.exec(&argv, Duration::from_secs(60)).unwrap();
    assert_eq!(done.exit_code, Some(1), "{}", done.describe());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the agent took {:?} to give up",
        started.elapsed()
    );
    let summary: serde_json::Value =
        serde_json::from_str(done.stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(summary["result"], "failed");
    summary
}

/// v0 is writable: a write completes instead of blocking on a frozen filesystem; and
/// the module holds no snapshot for either volume.
fn assert_thawed_and_released(vm: &mut Vm) {
    let write = vm
        .guest
        .exec(
            &["/bin/sh", "-c", "echo after > /mnt/v0/after && sync"],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(write.success(), "v0 is still frozen: {}", write.describe());
    let info = vm
        .guest
        .sh(
            "bwsnap-ctl info 0; bwsnap-ctl info 1",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        !info.contains("snapshot") && !info.contains("armed"),
        "{info}"
    );
}

#[test]
fn vm_a_failed_freeze_thaws_the_volumes_already_frozen() {
    let (img, _dir, opts) = with_ext4_disks("agent-freeze", 2);
    let mut vm = Vm::boot(img, opts).unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    let t = Duration::from_secs(60);
    vm.guest
        .sh(
            "insmod /lib/modules/bwsnap.ko && \
             for i in 0 1; do d=$(grep -l bw-d$i /sys/block/vd*/serial | cut -d/ -f4); \
             mkdir -p /mnt/v$i && mount -t ext4 /dev/$d /mnt/v$i; done",
            t,
        )
        .unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));

    // 1. v0 freezes, v1's freeze fails (injected): v0 must be thawed again.
    let summary = failing_backup(&mut vm, &["--fault-freeze-fail", "/mnt/v1"]);
    let message = summary["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("freeze failed") && message.contains("/mnt/v1"),
        "{message}"
    );
    assert_thawed_and_released(&mut vm);

    // 2. v1 is frozen by someone else before the backup: the agent must not hang in
    // creating v1's COW file, and must leave v0 as it found it.
    vm.guest.sh("fsfreeze --freeze /mnt/v1", t).unwrap();
    let summary = failing_backup(&mut vm, &[]);
    let message = summary["message"].as_str().unwrap_or_default();
    assert!(message.contains("frozen"), "{message}");
    assert_thawed_and_released(&mut vm);

    vm.guest.sh("fsfreeze --unfreeze /mnt/v1", t).unwrap();
    vm.shutdown(Duration::from_secs(60)).unwrap();
}

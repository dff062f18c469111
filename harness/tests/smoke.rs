//! The foundation's smoke test: build debian-6.1, boot it, mount an ext4 volume made on
//! the host, run commands over the control channel, shut down cleanly.

mod common;

use std::time::Duration;

use blockwitness::vm::{BootOptions, Vm};

#[test]
fn vm_smoke_debian_6_1() {
    let img = common::image("debian-6.1");
    let accel = common::accel(img);
    let dir = common::scratch("smoke");
    let disk = common::raw_disk(
        dir.path(),
        "d0",
        64,
        &["mkfs.ext4", "-q", "-F", "-L", "smoke"],
    );
    let mut opts = BootOptions::new(accel, dir.path().join("run"));
    opts.disks.push(disk);
    let mut vm = Vm::boot(img, opts).unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    assert_eq!(vm.ready.kernel, img.kernel_release);

    let t = Duration::from_secs(60);
    let out = vm
        .guest
        .sh(
            "dev=$(grep -l bw-d0 /sys/block/vd*/serial | cut -d/ -f4) && \
             mkdir -p /mnt/smoke && mount -t ext4 /dev/$dev /mnt/smoke && \
             echo hello-from-the-guest > /mnt/smoke/hello && sync && \
             cat /mnt/smoke/hello && grep /mnt/smoke /proc/mounts",
            t,
        )
        .unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    assert!(out.starts_with("hello-from-the-guest\n"), "{out}");
    assert!(out.contains("/mnt/smoke ext4 rw"), "{out}");

    // A failing command is reported as such, with its status.
    let failed = vm.guest.exec(&["/bin/sh", "-c", "exit 3"], t).unwrap();
    assert_eq!(failed.exit_code, Some(3));
    // A command that overruns its timeout is killed and says so.
    let slow = vm
        .guest
        .exec(&["/bin/sleep", "30"], Duration::from_millis(500))
        .unwrap();
    assert!(slow.timed_out && !slow.success());

    let boot_to_ready = vm.boot_to_ready;
    let boot_to_shutdown = vm
        .shutdown(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}", common::error_chain(&e)));
    eprintln!(
        "boot-to-ready {:.2}s, boot-to-shutdown {:.2}s ({accel})",
        boot_to_ready.as_secs_f64(),
        boot_to_shutdown.as_secs_f64()
    );

    // The guest unmounted the volume on the way down: the host's fsck finds it clean.
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(dir.path().join("d0.raw"))
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let debugfs = std::process::Command::new("debugfs")
        .args(["-R", "cat /hello"])
        .arg(dir.path().join("d0.raw"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&debugfs.stdout),
        "hello-from-the-guest\n"
    );
}

//! `blockwitness bench boot`: the image's boot-to-ready and boot-to-shutdown against a
//! bare busybox boot of the same kernel.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::{failed, median, BenchError};
use crate::image::cpio::CpioWriter;
use crate::image::BuiltImage;
use crate::qemu::{self, Accel};
use crate::vm::{BootOptions, Vm};

/// Figures of `bench boot`.
pub struct BootBench {
    pub accel: Accel,
    pub runs: u32,
    pub bare_ready: Duration,
    pub bare_exit: Duration,
    pub image_ready: Duration,
    pub image_exit: Duration,
}

impl fmt::Display for BootBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "bench boot ({}, median of {} runs)",
            self.accel, self.runs
        )?;
        writeln!(
            f,
            "  boot-to-ready:    image {:6.2}s   bare busybox {:6.2}s   ratio {:.2} (target <= 1.20)",
            self.image_ready.as_secs_f64(),
            self.bare_ready.as_secs_f64(),
            ratio(self.image_ready, self.bare_ready)
        )?;
        write!(
            f,
            "  boot-to-shutdown: image {:6.2}s   bare busybox {:6.2}s   ratio {:.2} (target <= 1.20)",
            self.image_exit.as_secs_f64(),
            self.bare_exit.as_secs_f64(),
            ratio(self.image_exit, self.bare_exit)
        )
    }
}

/// A busybox initramfs whose init prints a marker and powers off at once.
fn bare_initramfs(path: &Path) -> std::io::Result<()> {
    let mut w = CpioWriter::new(std::io::BufWriter::new(std::fs::File::create(path)?));
    for d in ["/bin", "/dev", "/proc"] {
        w.dir(d)?;
    }
    w.char_dev("/dev/console", 0o600, 5, 1)?;
    w.file("/bin/busybox", 0o755, &std::fs::read("/bin/busybox")?)?;
    w.file(
        "/init",
        0o755,
        b"#!/bin/busybox sh\n/bin/busybox echo BARE-READY\n/bin/busybox poweroff -f\n",
    )?;
    w.finish()?;
    Ok(())
}

/// One bare boot: time to the marker on the console, and to QEMU's exit.
fn bare_boot(
    img: &BuiltImage,
    accel: Accel,
    initrd: &Path,
    dir: &Path,
) -> Result<(Duration, Duration), BenchError> {
    let console = dir.join("bare-console.log");
    let boot = qemu::bare_boot(
        accel,
        &img.kernel,
        initrd,
        "console=ttyS0 loglevel=5 panic=-1",
        &console,
        "BARE-READY",
        Duration::from_secs(120),
    )?;
    match (boot.marker_at, boot.exited_at) {
        (Some(ready), Some(exit)) => Ok((ready, exit)),
        (None, _) => Err(failed(
            "bare boot",
            format!(
                "no marker on the console: {}",
                crate::console::tail(&console, 5)
            ),
        )),
        (Some(_), None) => Err(failed("bare boot", "did not power off within 120 s")),
    }
}

/// `bench boot`: the image's boot-to-ready and boot-to-shutdown against a bare busybox
/// boot of the same kernel, same accelerator, alternating, `runs` times each.
pub fn boot(
    img: &BuiltImage,
    accel: Accel,
    runs: u32,
    dir: &Path,
) -> Result<BootBench, BenchError> {
    let initrd = dir.join("bare.cpio");
    bare_initramfs(&initrd)?;
    let (mut br, mut be, mut ir, mut ie) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs.max(1) {
        let (r, e) = bare_boot(img, accel, &initrd, dir)?;
        br.push(r);
        be.push(e);
        let vm = Vm::boot(img, BootOptions::new(accel, dir.join(format!("vm{i}"))))?;
        ir.push(vm.boot_to_ready);
        ie.push(vm.shutdown(Duration::from_secs(60))?);
    }
    Ok(BootBench {
        accel,
        runs: runs.max(1),
        bare_ready: median(br),
        bare_exit: median(be),
        image_ready: median(ir),
        image_exit: median(ie),
    })
}

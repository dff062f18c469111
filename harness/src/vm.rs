//! A booted guest: the QEMU machine plus its control channel, ready for commands.
//! This is what tests, benches and scenario runs hold.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bw_guest::control::Ready;

use crate::guest::{Guest, GuestError};
use crate::image::BuiltImage;
use crate::qemu::{Accel, Disk, Floppy, Machine, MachineSpec, QemuError, VhostUserDisk};

/// How to boot.
#[derive(Clone, Debug)]
pub struct BootOptions {
    pub accel: Accel,
    pub memory_mb: u32,
    pub cpus: u32,
    pub disks: Vec<Disk>,
    /// Disks served by vhost-user backends (see `witness`).
    pub vhost_disks: Vec<VhostUserDisk>,
    pub floppy: Floppy,
    /// Modules to load at boot beyond the image's boot modules.
    pub extra_modules: Vec<String>,
    /// virtio-serial ports beyond `bw.control`.
    pub ports: Vec<String>,
    /// newc archives unpacked after the image's initramfs (a pipeline's userland, see
    /// `image::userland`); the image stays as it was built.
    pub initrd_extra: Vec<PathBuf>,
    pub run_dir: PathBuf,
    /// How long the guest may take to report ready (multiplied by `slow`).
    pub ready_timeout: Duration,
    /// `--slow N`: QEMU runs at 1/N of the wall clock from its launch on (see
    /// `qemu::throttle`). None or 1: full speed.
    pub slow: Option<u32>,
}

impl BootOptions {
    /// Defaults for a guest with no disks, running in `run_dir`.
    pub fn new(accel: Accel, run_dir: PathBuf) -> BootOptions {
        BootOptions {
            accel,
            memory_mb: 1024,
            cpus: 2,
            disks: vec![],
            vhost_disks: vec![],
            floppy: Floppy::None,
            extra_modules: vec![],
            ports: vec![],
            initrd_extra: vec![],
            run_dir,
            ready_timeout: Duration::from_secs(120),
            slow: None,
        }
    }
}

/// Why a guest could not be booted or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("starting QEMU")]
    Qemu(#[from] QemuError),
    #[error("the guest never became ready ({cause}); last console lines:\n{console}\nQEMU stderr: {stderr}")]
    NotReady {
        cause: String,
        console: String,
        stderr: String,
    },
    #[error("the guest could not load its boot modules: {0}")]
    Modules(String),
    #[error("control channel")]
    Guest(#[from] GuestError),
    #[error("the guest did not power off within {timeout:?}; it was killed. Last console lines:\n{console}")]
    NoPowerOff { timeout: Duration, console: String },
    #[error("assembling the initramfs {path}")]
    Initrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The image's initramfs, or (with extra archives) their concatenation in the run
/// directory: the kernel unpacks concatenated newc archives one after the other.
fn initrd_with_extras(image: &BuiltImage, opts: &BootOptions) -> Result<PathBuf, VmError> {
    if opts.initrd_extra.is_empty() {
        return Ok(image.initramfs.clone());
    }
    let out = opts.run_dir.join("initramfs.cpio");
    let err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| VmError::Initrd { path, source }
    };
    std::fs::create_dir_all(&opts.run_dir).map_err(err(&opts.run_dir))?;
    let mut file = std::fs::File::create(&out).map_err(err(&out))?;
    for part in std::iter::once(&image.initramfs).chain(&opts.initrd_extra) {
        let mut src = std::fs::File::open(part).map_err(err(part))?;
        std::io::copy(&mut src, &mut file).map_err(err(part))?;
    }
    Ok(out)
}

/// A running, ready guest.
pub struct Vm {
    pub machine: Machine,
    pub guest: Guest,
    pub ready: Ready,
    /// From QEMU's start to the guest's ready message.
    pub boot_to_ready: Duration,
    started: Instant,
}

impl Vm {
    /// Boots `image` and waits until bw-init reports ready.
    pub fn boot(image: &BuiltImage, opts: BootOptions) -> Result<Vm, VmError> {
        let started = Instant::now();
        let mut ports = vec![bw_guest::control::PORT_NAME.to_string()];
        ports.extend(opts.ports.iter().cloned());
        let initrd = initrd_with_extras(image, &opts)?;
        let spec = MachineSpec {
            kernel: image.kernel.clone(),
            initrd,
            append: image.append(&opts.extra_modules),
            memory_mb: opts.memory_mb,
            cpus: opts.cpus,
            accel: opts.accel,
            disks: opts.disks.clone(),
            vhost_disks: opts.vhost_disks.clone(),
            floppy: opts.floppy.clone(),
            ports,
            run_dir: opts.run_dir.clone(),
        };
        let mut machine = Machine::launch(&spec)?;
        let slow = opts.slow.unwrap_or(1).max(1);
        if slow > 1 {
            machine.slow_down(slow);
        }
        let not_ready = |machine: &Machine, cause: String| VmError::NotReady {
            cause,
            console: machine.console_tail(25),
            stderr: machine.stderr_tail(5),
        };
        let stream = machine.connect_port(bw_guest::control::PORT_NAME)?;
        let guest = Guest::attach(stream)?;
        let ready = match guest.wait_ready(opts.ready_timeout * slow, || machine.exited().is_none())
        {
            Ok(r) => r,
            Err(e) => {
                let cause = match machine.exited() {
                    Some(status) => format!("QEMU exited ({status})"),
                    None => e.to_string(),
                };
                return Err(not_ready(&machine, cause));
            }
        };
        if !ready.module_errors.is_empty() {
            return Err(VmError::Modules(ready.module_errors.join("; ")));
        }
        Ok(Vm {
            boot_to_ready: started.elapsed(),
            machine,
            guest,
            ready,
            started,
        })
    }

    /// Asks the guest to power off and waits for QEMU to end. Returns the time from
    /// QEMU's start to its exit.
    pub fn shutdown(mut self, timeout: Duration) -> Result<Duration, VmError> {
        self.guest.shutdown(false)?;
        let (_, by_itself) = self.machine.wait_exit(timeout);
        if !by_itself {
            return Err(VmError::NoPowerOff {
                timeout,
                console: self.machine.console_tail(20),
            });
        }
        Ok(self.started.elapsed())
    }
}

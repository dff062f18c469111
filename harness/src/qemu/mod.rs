//! The QEMU process: command-line construction (small pure functions, one per device),
//! launch, the guard that kills and reaps it, the watchdog, and connections to its
//! sockets (the virtio-serial ports, and QMP, which stays private to this module: the
//! rest of the harness asks [`Machine`] for what it needs done).
//!
//! No QEMU outlives its runner: every launch (a [`Machine`] or a [`bare_boot`]) runs in
//! its own process group, is killed on drop (also while unwinding from a panic), on
//! Ctrl-C (see [`crate::cleanup`]) and, as a last resort, by PR_SET_PDEATHSIG
//! when the harness dies.
//!
//! Disk naming lives here too: a disk's block node is its id, its device `<id>-dev`, its
//! serial (how the guest finds it) `bw-<id>`, and volume `i`'s id is `d<i>`.

mod qmp;
pub mod throttle;

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use qmp::Qmp;
pub use qmp::QmpError;

/// How the guest CPU is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Image format of a disk file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// A virtio-blk disk. Its block node is called `id` (the format layer) and `<id>-file`
/// (the protocol layer), so QMP can address it.
#[derive(Clone, Debug)]
pub struct Disk {
    pub id: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    /// Shown in the guest as /sys/block/vdX/serial; how the guest finds this disk.
    pub serial: String,
    pub read_only: bool,
    /// Put a blkdebug layer under the format node so requests can be suspended on
    /// demand (`qemu-io <id> "break write_aio <tag>"`). Runs hold requests on the
    /// witness disk; the kmod tests still use this on QEMU-served disks.
    pub blkdebug: bool,
}

impl Disk {
    /// A writable disk called `id`, with serial `bw-<id>`.
    pub fn new(id: impl Into<String>, path: PathBuf, format: DiskFormat) -> Disk {
        let id = id.into();
        Disk {
            serial: Disk::serial_of(&id),
            id,
            path,
            format,
            read_only: false,
            blkdebug: false,
        }
    }

    /// The disk of volume number `index` (its position among a scenario's volumes).
    pub fn volume(index: usize, path: PathBuf, format: DiskFormat) -> Disk {
        Disk::new(Disk::volume_id(index), path, format)
    }

    /// The id (and block node name) of volume number `index`'s disk: `d<index>`.
    pub fn volume_id(index: usize) -> String {
        format!("d{index}")
    }

    /// The serial the guest sees for the disk called `id`: `bw-<id>`.
    pub fn serial_of(id: &str) -> String {
        format!("bw-{id}")
    }

    /// The id of the disk's virtio-blk device (what `device_del` removes).
    pub fn device_id(&self) -> String {
        Disk::device_id_of(&self.id)
    }

    /// The virtio-blk device id of the disk called `id`: `<id>-dev`.
    pub fn device_id_of(id: &str) -> String {
        format!("{id}-dev")
    }
}

/// One disk's part of a point-in-time snapshot: a qcow2 overlay `file`, node `new_node`,
/// goes on top of node `node`.
#[derive(Clone, Debug)]
pub struct SnapshotLayer {
    pub node: String,
    pub file: PathBuf,
    pub new_node: String,
}

/// A disk served by a vhost-user-blk backend (the witness disk, `bw-disk`), not by
/// QEMU's block layer. The guest sees a virtio-blk disk; its serial is what the backend
/// answers to get-id (vhost-user-blk-pci has no `serial` property). Any such disk needs
/// the guest memory shared with the backend ([`shared_memory_args`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostUserDisk {
    pub id: String,
    /// The backend's listening socket.
    pub socket: PathBuf,
    /// Virtqueues; the backend must offer at least this many.
    pub num_queues: u16,
}

/// The floppy drive of the `pc` machine's controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Floppy {
    /// No drive at all.
    #[default]
    None,
    /// A drive without a disk in it.
    Empty,
    /// A drive holding this raw image.
    Media(PathBuf),
}

/// Everything needed to start one guest.
#[derive(Clone, Debug)]
pub struct MachineSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    pub memory_mb: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub disks: Vec<Disk>,
    /// Disks served by vhost-user backends, after `disks` on the PCI bus.
    pub vhost_disks: Vec<VhostUserDisk>,
    pub floppy: Floppy,
    /// virtio-serial port names; each gets a unix socket `<run_dir>/<name>.sock`.
    pub ports: Vec<String>,
    /// Sockets, console log and QEMU's own stderr go here.
    pub run_dir: PathBuf,
}

/// Why a guest could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot start qemu-system-x86_64")]
    Spawn(#[source] std::io::Error),
    #[error("cannot create the run directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-system-x86_64 exited at start ({status}): {stderr}")]
    EarlyExit { status: String, stderr: String },
    #[error("qemu-system-x86_64 did not open its QMP socket within {0:?}")]
    NoSocket(Duration),
    #[error("QMP")]
    Qmp(#[from] QmpError),
    #[error("cannot connect to the {name} port socket {path}")]
    Port {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for qemu-system-x86_64")]
    Wait(#[source] std::io::Error),
}

/// `-machine`, `-cpu`, `-m`, `-smp`.
pub fn machine_args(accel: Accel, memory_mb: u32, cpus: u32) -> Vec<String> {
    let cpu = match accel {
        Accel::Kvm => "host",
        // Every feature TCG can emulate (rdrand among them: early guest entropy).
        Accel::Tcg => "max",
    };
    vec![
        "-machine".into(),
        format!("pc,accel={accel}"),
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        memory_mb.to_string(),
        "-smp".into(),
        cpus.to_string(),
    ]
}

/// Direct kernel boot.
pub fn kernel_args(kernel: &Path, initrd: &Path, append: &str) -> Vec<String> {
    vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        append.into(),
    ]
}

/// One virtio-blk disk: protocol node, optional blkdebug, format node, device.
pub fn disk_args(disk: &Disk) -> Vec<String> {
    let file = serde_json::json!({
        "driver": "file",
        "filename": disk.path.display().to_string(),
        "node-name": format!("{}-file", disk.id),
        "read-only": disk.read_only,
    });
    let format = match disk.format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    let protocol = if disk.blkdebug {
        serde_json::json!({ "driver": "blkdebug", "image": file })
    } else {
        file
    };
    let node = serde_json::json!({
        "driver": format,
        "node-name": disk.id,
        "file": protocol,
        "read-only": disk.read_only,
    });
    vec![
        "-blockdev".into(),
        node.to_string(),
        "-device".into(),
        format!(
            "virtio-blk-pci,drive={},id={},serial={}",
            disk.id,
            disk.device_id(),
            disk.serial
        ),
    ]
}

/// Guest RAM in a shared memfd, so a vhost-user backend can map it. `memory_mb` must
/// equal `-m`.
pub fn shared_memory_args(memory_mb: u32) -> Vec<String> {
    vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={memory_mb}M,share=on"),
        "-machine".into(),
        "memory-backend=mem".into(),
    ]
}

/// One vhost-user-blk disk: the chardev that connects to its backend and the device,
/// with 256-entry queues like QEMU's own virtio-blk (whose default is 256, this
/// device's 128).
pub fn vhost_user_disk_args(disk: &VhostUserDisk) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id={}-vu,path={}", disk.id, disk.socket.display()),
        "-device".into(),
        format!(
            "vhost-user-blk-pci,chardev={}-vu,id={}-dev,num-queues={},queue-size=256",
            disk.id, disk.id, disk.num_queues
        ),
    ]
}

/// The floppy drive on the `pc` machine's built-in controller.
pub fn floppy_args(floppy: &Floppy) -> Vec<String> {
    match floppy {
        Floppy::None => vec![],
        Floppy::Empty => vec!["-device".into(), "floppy,unit=0".into()],
        Floppy::Media(path) => vec![
            "-blockdev".into(),
            serde_json::json!({
                "driver": "raw",
                "node-name": "fd0",
                "file": {"driver": "file", "filename": path.display().to_string()},
            })
            .to_string(),
            "-device".into(),
            "floppy,unit=0,drive=fd0".into(),
        ],
    }
}

/// The serial console, captured to a file.
pub fn console_args(path: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("file,id=console,path={}", path.display()),
        "-serial".into(),
        "chardev:console".into(),
    ]
}

/// Socket path of a virtio-serial port.
pub fn port_socket(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.sock"))
}

/// One virtio-serial controller and a named port per entry, each on a listening socket.
pub fn ports_args(run_dir: &Path, names: &[String]) -> Vec<String> {
    if names.is_empty() {
        return vec![];
    }
    let mut args = vec!["-device".into(), "virtio-serial-pci,id=vser0".into()];
    for (i, name) in names.iter().enumerate() {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id=port{i},path={},server=on,wait=off",
            port_socket(run_dir, name).display()
        ));
        args.push("-device".into());
        args.push(format!(
            "virtserialport,bus=vser0.0,chardev=port{i},name={name}"
        ));
    }
    args
}

/// The QMP socket.
pub fn qmp_args(path: &Path) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", path.display()),
    ]
}

/// Longest path a unix socket may have (sun_path holds 108 bytes with its NUL).
const SOCKET_PATH_MAX: usize = 100;

/// The whole command line (without the program name); sockets go in `socket_dir`.
pub fn qemu_args(spec: &MachineSpec, socket_dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["-nodefaults", "-no-user-config", "-display", "none"]
        .map(String::from)
        .to_vec();
    // A guest reset or panic ends QEMU instead of rebooting into the same run.
    args.push("-no-reboot".into());
    args.extend(machine_args(spec.accel, spec.memory_mb, spec.cpus));
    args.extend(kernel_args(&spec.kernel, &spec.initrd, &spec.append));
    args.extend(console_args(&spec.run_dir.join("console.log")));
    args.extend(qmp_args(&socket_dir.join("qmp.sock")));
    for disk in &spec.disks {
        args.extend(disk_args(disk));
    }
    if !spec.vhost_disks.is_empty() {
        args.extend(shared_memory_args(spec.memory_mb));
    }
    for disk in &spec.vhost_disks {
        args.extend(vhost_user_disk_args(disk));
    }
    args.extend(floppy_args(&spec.floppy));
    args.extend(ports_args(socket_dir, &spec.ports));
    args
}

/// What a bare boot (no QMP, no ports) saw.
#[derive(Clone, Debug)]
pub struct BareBoot {
    /// When the marker appeared on the console, if it did.
    pub marker_at: Option<Duration>,
    /// When QEMU exited by itself, if it did before the deadline.
    pub exited_at: Option<Duration>,
    /// The last lines QEMU printed on stderr.
    pub stderr: String,
}

/// Boots a kernel and initrd with nothing but a console (no QMP: a guest that hangs may
/// not serve its monitor) and waits, until `timeout`, for `marker` on the console and
/// for QEMU to exit; kills it at the deadline.
pub fn bare_boot(
    accel: Accel,
    kernel: &Path,
    initrd: &Path,
    append: &str,
    console: &Path,
    marker: &str,
    timeout: Duration,
) -> std::io::Result<BareBoot> {
    let _ = std::fs::remove_file(console);
    let mut args: Vec<String> = [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec();
    args.extend(machine_args(accel, 1024, 2));
    args.extend(kernel_args(kernel, initrd, append));
    args.extend(console_args(console));
    let stderr_path = console.with_extension("stderr.log");
    let started = Instant::now();
    let mut guard = spawn(&args, File::create(&stderr_path)?)?;
    let seen = || {
        std::fs::read_to_string(console)
            .map(|t| t.contains(marker))
            .unwrap_or(false)
    };
    let mut boot = BareBoot {
        marker_at: None,
        exited_at: None,
        stderr: String::new(),
    };
    loop {
        if boot.marker_at.is_none() && seen() {
            boot.marker_at = Some(started.elapsed());
        }
        if guard.try_wait()?.is_some() {
            boot.exited_at = Some(started.elapsed());
            if boot.marker_at.is_none() && seen() {
                boot.marker_at = boot.exited_at;
            }
            break;
        }
        if started.elapsed() > timeout {
            // Dropping the guard kills and reaps it.
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(guard);
    boot.stderr = crate::console::tail(&stderr_path, 5);
    Ok(boot)
}

fn kill_group(pid: i32) {
    // SAFETY: signalling a process group we created.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Starts qemu-system-x86_64 with `args` in its own process group, dying with the
/// harness, and registered for the Ctrl-C handler until its guard drops.
fn spawn(args: &[String], stderr: File) -> std::io::Result<Guard> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; only sets this child's death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // Registered in the same step as the spawn, so Ctrl-C never misses a QEMU.
    let (child, tracked) = crate::cleanup::spawn_tracked(&mut cmd, true)?;
    Ok(Guard {
        child,
        exited: None,
        _tracked: tracked,
    })
}

/// Owns the QEMU child: kills and reaps it when dropped.
struct Guard {
    child: Child,
    exited: Option<ExitStatus>,
    /// Registered for the interrupt handler until the guard drops.
    _tracked: crate::cleanup::TrackedChild,
}

impl Guard {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.exited.is_none() {
            kill_group(self.pid());
            let _ = self.child.wait();
        }
    }
}

/// A running guest.
pub struct Machine {
    guard: Arc<Mutex<Guard>>,
    qmp: Qmp,
    run_dir: PathBuf,
    socket_dir: PathBuf,
    /// Removes the short socket directory when the machine goes.
    _socket_tmp: Option<crate::cleanup::TempDir>,
    started: Instant,
    watchdog_fired: Arc<AtomicBool>,
    watchdog_stop: Option<mpsc::Sender<()>>,
    /// `--slow N`: the duty cycle that holds QEMU to 1/N of the wall clock.
    throttle: Option<throttle::Throttle>,
}

impl Machine {
    /// Starts QEMU and connects QMP. The virtio-serial sockets are listening once this
    /// returns; connect to them with [`Machine::connect_port`] before the guest needs them.
    pub fn launch(spec: &MachineSpec) -> Result<Machine, QemuError> {
        std::fs::create_dir_all(&spec.run_dir).map_err(|source| QemuError::RunDir {
            path: spec.run_dir.clone(),
            source,
        })?;
        // A deep run directory makes socket paths too long for sun_path: use a short
        // directory of our own then.
        let longest = spec.ports.iter().map(String::len).max().unwrap_or(0).max(3) + 6;
        let (socket_dir, socket_tmp) =
            if spec.run_dir.as_os_str().len() + longest <= SOCKET_PATH_MAX {
                (spec.run_dir.clone(), None)
            } else {
                let tmp = crate::cleanup::TempDir::new_in(Path::new("/tmp"), "bw-").map_err(
                    |source| QemuError::RunDir {
                        path: "/tmp".into(),
                        source,
                    },
                )?;
                (tmp.path().to_path_buf(), Some(tmp))
            };
        let qmp_path = socket_dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp_path);
        for name in &spec.ports {
            let _ = std::fs::remove_file(port_socket(&socket_dir, name));
        }
        let stderr_path = spec.run_dir.join("qemu.stderr.log");
        let stderr = File::create(&stderr_path).map_err(|source| QemuError::RunDir {
            path: stderr_path.clone(),
            source,
        })?;
        let guard = spawn(&qemu_args(spec, &socket_dir), stderr).map_err(QemuError::Spawn)?;
        let guard = Arc::new(Mutex::new(guard));

        let socket_deadline = Duration::from_secs(20);
        let start = Instant::now();
        while !qmp_path.exists() {
            if let Some(status) = guard.lock().unwrap().try_wait().map_err(QemuError::Wait)? {
                return Err(QemuError::EarlyExit {
                    status: status.to_string(),
                    stderr: crate::console::tail(&stderr_path, 10),
                });
            }
            if start.elapsed() > socket_deadline {
                return Err(QemuError::NoSocket(socket_deadline));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // QEMU binds the socket (the file appears) before it listens: a connect in
        // between is refused, and on a loaded host that window is hit. Try again while
        // QEMU lives, within the same deadline.
        let connected = loop {
            match Qmp::connect(&qmp_path, Duration::from_secs(20)) {
                Err(QmpError::Connect { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused
                        && start.elapsed() <= socket_deadline
                        && guard
                            .lock()
                            .unwrap()
                            .try_wait()
                            .map_err(QemuError::Wait)?
                            .is_none() =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        let qmp = match connected {
            Ok(q) => q,
            Err(e) => {
                // Give a dying QEMU a moment to exit, so its own words reach the error.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(status) = guard.lock().unwrap().try_wait().map_err(QemuError::Wait)? {
                    return Err(QemuError::EarlyExit {
                        status: status.to_string(),
                        stderr: crate::console::tail(&stderr_path, 10),
                    });
                }
                return Err(e.into());
            }
        };
        Ok(Machine {
            guard,
            qmp,
            run_dir: spec.run_dir.clone(),
            socket_dir,
            _socket_tmp: socket_tmp,
            started: Instant::now(),
            watchdog_fired: Arc::default(),
            watchdog_stop: None,
            throttle: None,
        })
    }

    /// Slows QEMU down to 1/`factor` of the wall clock for the rest of its life (see
    /// [`throttle`]). False when it could not be throttled (QEMU has already exited).
    pub fn slow_down(&mut self, factor: u32) -> bool {
        let guard = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        // Pinned under the guard's lock, so the child cannot be reaped meanwhile.
        if guard.exited.is_some() {
            return false;
        }
        let t = throttle::Throttle::start(guard.pid(), factor);
        let active = t.active();
        drop(guard);
        self.throttle = Some(t);
        active
    }

    /// What the throttle measured so far (None: not slowed down).
    pub fn throttle_stats(&self) -> Option<throttle::ThrottleStats> {
        self.throttle.as_ref().map(throttle::Throttle::stats)
    }

    /// Connects to the host end of a virtio-serial port.
    pub fn connect_port(&self, name: &str) -> Result<UnixStream, QemuError> {
        let path = self.port_path(name);
        UnixStream::connect(&path).map_err(|source| QemuError::Port {
            name: name.to_string(),
            path,
            source,
        })
    }

    /// Runs an HMP command through QMP (e.g. `qemu-io NODE "break read_aio TAG"`).
    pub fn hmp(&mut self, command_line: &str) -> Result<String, QmpError> {
        self.qmp.hmp(command_line, Duration::from_secs(10))
    }

    /// Resets the guest at once (with `-no-reboot`, QEMU then exits).
    pub fn reset(&mut self) -> Result<(), QmpError> {
        self.qmp
            .execute(
                "system_reset",
                serde_json::json!({}),
                Duration::from_secs(10),
            )
            .map(|_| ())
    }

    /// Unplugs a disk's device from the running guest (QMP `device_del`).
    pub fn remove_disk(&mut self, disk_id: &str) -> Result<(), QmpError> {
        let device = Disk::device_id_of(disk_id);
        self.qmp
            .execute(
                "device_del",
                serde_json::json!({ "id": device }),
                Duration::from_secs(10),
            )
            .map(|_| ())
    }

    /// Puts a qcow2 overlay on top of each listed node in one QMP `transaction`, so the
    /// layers below stop changing at the same instant.
    pub fn snapshot_disks(
        &mut self,
        layers: &[SnapshotLayer],
        timeout: Duration,
    ) -> Result<(), QmpError> {
        let actions: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "type": "blockdev-snapshot-sync",
                    "data": {
                        "node-name": l.node,
                        "snapshot-file": l.file.display().to_string(),
                        "snapshot-node-name": l.new_node,
                        "format": "qcow2",
                    }
                })
            })
            .collect();
        self.qmp
            .execute(
                "transaction",
                serde_json::json!({ "actions": actions }),
                timeout,
            )
            .map(|_| ())
    }

    /// The host socket of a virtio-serial port.
    pub fn port_path(&self, name: &str) -> PathBuf {
        port_socket(&self.socket_dir, name)
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn console_path(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The last lines of the console, for error messages.
    pub fn console_tail(&self, n: usize) -> String {
        crate::console::tail(&self.console_path(), n)
    }

    /// The last lines QEMU printed on stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        crate::console::tail(&self.run_dir.join("qemu.stderr.log"), n)
    }

    /// Time since launch.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The exit status if QEMU has ended.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.guard.lock().unwrap().try_wait().ok().flatten()
    }

    /// Waits for QEMU to end by itself; kills it at the deadline. Returns the status and
    /// whether it ended by itself.
    pub fn wait_exit(&self, timeout: Duration) -> (Option<ExitStatus>, bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return (Some(status), true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        (self.exited(), false)
    }

    /// Kills QEMU now.
    pub fn kill(&self) {
        let mut guard = self.guard.lock().unwrap();
        if guard.try_wait().ok().flatten().is_none() {
            kill_group(guard.pid());
            let _ = guard.child.wait().map(|s| guard.exited = Some(s));
        }
    }

    /// Kills the guest if it is still running after `timeout`; see
    /// [`Machine::watchdog_fired`]. Re-arming replaces the previous deadline.
    pub fn arm_watchdog(&mut self, timeout: Duration) {
        let (tx, rx) = mpsc::channel::<()>();
        self.watchdog_stop = Some(tx);
        let guard = self.guard.clone();
        let fired = self.watchdog_fired.clone();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                let mut g = guard.lock().unwrap();
                if g.try_wait().ok().flatten().is_none() {
                    fired.store(true, Ordering::SeqCst);
                    kill_group(g.pid());
                    let _ = g.child.wait().map(|s| g.exited = Some(s));
                }
            }
        });
    }

    /// True once the watchdog has killed the guest.
    pub fn watchdog_fired(&self) -> bool {
        self.watchdog_fired.load(Ordering::SeqCst)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Disarm: dropping the sender ends the watchdog thread's wait early.
        self.watchdog_stop.take();
        self.kill();
        if let Some(mut t) = self.throttle.take() {
            t.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MachineSpec {
        MachineSpec {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd".into(),
            append: "console=ttyS0".into(),
            memory_mb: 512,
            cpus: 2,
            accel: Accel::Tcg,
            disks: vec![Disk::volume(0, "/r/d0.raw".into(), DiskFormat::Raw)],
            vhost_disks: vec![],
            floppy: Floppy::None,
            ports: vec!["bw.control".into()],
            run_dir: "/r".into(),
        }
    }

    #[test]
    fn command_line_has_no_defaults_no_network_and_named_nodes() {
        let args = qemu_args(&spec(), Path::new("/r"));
        let line = args.join(" ");
        assert!(line.starts_with("-nodefaults"));
        assert!(!line.contains("-netdev") && !line.contains("-nic"));
        assert!(line.contains("-machine pc,accel=tcg -cpu max -m 512 -smp 2"));
        assert!(line.contains(r#""node-name":"d0""#));
        assert!(line.contains(r#""node-name":"d0-file""#));
        assert!(line.contains("virtio-blk-pci,drive=d0,id=d0-dev,serial=bw-d0"));
        assert!(line.contains(
            "socket,id=port0,path=/r/bw.control.sock,server=on,wait=off -device \
             virtserialport,bus=vser0.0,chardev=port0,name=bw.control"
        ));
        assert!(line.contains("-qmp unix:/r/qmp.sock,server=on,wait=off"));
    }

    #[test]
    fn blkdebug_sits_between_format_and_file() {
        let mut disk = spec().disks[0].clone();
        disk.blkdebug = true;
        let args = disk_args(&disk);
        let node: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(node["driver"], "raw");
        assert_eq!(node["file"]["driver"], "blkdebug");
        assert_eq!(node["file"]["image"]["node-name"], "d0-file");
    }

    #[test]
    fn vhost_user_disks_share_guest_memory() {
        let mut spec = spec();
        let line = qemu_args(&spec, Path::new("/r")).join(" ");
        assert!(!line.contains("memory-backend"), "{line}");
        spec.vhost_disks.push(VhostUserDisk {
            id: "w0".into(),
            socket: "/s/w0.vhost.sock".into(),
            num_queues: 2,
        });
        let line = qemu_args(&spec, Path::new("/r")).join(" ");
        assert!(line.contains(
            "-object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem"
        ));
        assert!(line.contains(
            "-chardev socket,id=w0-vu,path=/s/w0.vhost.sock -device \
             vhost-user-blk-pci,chardev=w0-vu,id=w0-dev,num-queues=2,queue-size=256"
        ));
        // The QEMU-served disk is still there, before it.
        assert!(line.find("virtio-blk-pci").unwrap() < line.find("vhost-user-blk-pci").unwrap());
    }

    #[test]
    fn floppy_variants() {
        assert!(floppy_args(&Floppy::None).is_empty());
        assert_eq!(floppy_args(&Floppy::Empty), ["-device", "floppy,unit=0"]);
        let media = floppy_args(&Floppy::Media("/f.img".into())).join(" ");
        assert!(media.contains("floppy,unit=0,drive=fd0"));
    }

    #[test]
    fn disks_are_named_in_one_place() {
        let d = Disk::volume(3, "/r/d3.raw".into(), DiskFormat::Raw);
        assert_eq!(
            (d.id.as_str(), d.serial.as_str(), d.device_id().as_str()),
            ("d3", "bw-d3", "d3-dev")
        );
        let t = Disk::new("tools", "/t".into(), DiskFormat::Raw);
        assert_eq!(t.serial, Disk::serial_of("tools"));
        assert!(disk_args(&d).join(" ").contains("id=d3-dev,serial=bw-d3"));
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        assert_eq!(machine_args(Accel::Kvm, 1, 1)[3], "host");
    }
}

//! A vendor's product as the pipeline under test, driven by the commands the scenario
//! gives (`[pipeline.commands]`; docs/your-pipeline.md is the contract).
//!
//! Before the guest boots, the product's directory is copied into the run's work
//! directory and built there by its own `build` command against the image's kernel
//! headers; the built directory is packed at /product in the guest with the shared
//! libraries `ldd` finds for its programs. Nothing is fetched during a run. After boot
//! the harness loads the product's modules, runs `prepare`, and for each backup:
//! `freeze`/`setup`/(truth)/`thaw` or the announcing `snapshot`, `device`, `changed`
//! (incrementals), `stream` or `copy` beside the harness's reader, `transition` and
//! `destroy`. Every command runs with the volume's variables (`BW_VOLUME`, `BW_DEVICE`,
//! `BW_MOUNT`, `BW_SNAPSHOT`, `BW_CHANNEL`, ...) and its limit.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bw_guest::pipe::wire;

use super::command::{Env, Output, Step};
use super::driven::{CowFile, Deliver, Provider, Runner, SnapshotMode};
use super::{GuestVolume, PipelineError};
use crate::image::userland::Userland;
use crate::image::BuiltImage;
use crate::plan::{Plan, VolumePlan};
use crate::qemu::{Disk, DiskFormat};
use crate::scenario::{Delivery, ExternalSpec, SnapshotSteps};

/// Where the product lives in the guest.
pub const GUEST_DIR: &str = "/product";
/// Lines of the build's output an error keeps.
const BUILD_TAIL: usize = 15;

/// Why the product could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the product directory {0} does not exist")]
    NoDir(PathBuf),
    #[error("copying the product directory {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the build command `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the build command `{command}` failed ({how}) against the headers {headers}; its output ends:\n{tail}")]
    Failed {
        command: String,
        how: String,
        headers: String,
        tail: String,
    },
    #[error("the build command `{command}` did not finish within {limit:?} and was killed; its output ends:\n{tail}")]
    Hung {
        command: String,
        limit: Duration,
        tail: String,
    },
    #[error("module {module} is not in the product after its build (looked at {path})")]
    NoModule { module: String, path: PathBuf },
}

/// Copies a directory tree, keeping permissions and symlinks.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let kind = e.file_type()?;
        let dest = to.join(e.file_name());
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dest)?;
        } else if kind.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

fn tail_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let t = lines[lines.len().saturating_sub(n)..].join("\n");
    if t.is_empty() {
        "(nothing)".into()
    } else {
        t
    }
}

/// Runs the build command in `dir` with the kernel's variables, in its own process
/// group (killed whole at the limit); output goes to `log`.
pub fn build(
    command: &str,
    dir: &Path,
    headers: &Path,
    release: &str,
    limit: Duration,
    log: &Path,
) -> Result<(), BuildError> {
    let out = std::fs::File::create(log).map_err(|source| BuildError::Spawn {
        command: command.into(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| BuildError::Spawn {
        command: command.into(),
        source,
    })?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("BW_KERNEL_HEADERS", headers)
        .env("BW_KERNEL_RELEASE", release)
        .env("BW_PRODUCT", dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // SAFETY: prctl only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| BuildError::Spawn {
        command: command.into(),
        source,
    })?;
    let started = Instant::now();
    let read_log = || {
        let mut text = String::new();
        let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut text));
        tail_of(&text, BUILD_TAIL)
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(BuildError::Failed {
                    command: command.into(),
                    how: status.to_string(),
                    headers: headers.display().to_string(),
                    tail: read_log(),
                })
            }
            Ok(None) | Err(_) => {}
        }
        if started.elapsed() > limit {
            // SAFETY: signalling the process group we created.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            return Err(BuildError::Hung {
                command: command.into(),
                limit,
                tail: read_log(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Per volume: the devices the harness made for the product.
#[derive(Clone, Debug, Default)]
struct Devices {
    scratch: Option<String>,
    target: Option<String>,
    snapshot: Option<String>,
}

/// The external provider.
pub struct External {
    spec: ExternalSpec,
    userland: PathBuf,
    disks: Vec<Disk>,
    /// Host files of the target disks, by volume.
    targets: BTreeMap<String, PathBuf>,
    devices: BTreeMap<String, Devices>,
    sizes: BTreeMap<String, u64>,
    /// The channel's device in the guest.
    channel: Option<String>,
    /// The modules are loaded.
    loaded: bool,
    notes: Vec<String>,
}

fn disk_file(work: &Path, id: &str, bytes: u64) -> Result<Disk, PipelineError> {
    let path = work.join(format!("{id}.raw"));
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(bytes))
        .map_err(|source| PipelineError::Io {
            path: path.clone(),
            source,
        })?;
    Ok(Disk::new(id, path, DiskFormat::Raw))
}

pub fn scratch_id(index: usize) -> String {
    format!("scratch{index}")
}

pub fn target_id(index: usize) -> String {
    format!("target{index}")
}

impl External {
    pub fn new(
        spec: ExternalSpec,
        plan: &Plan,
        image: &BuiltImage,
        work: &Path,
    ) -> Result<External, PipelineError> {
        let build_err =
            |e: BuildError| PipelineError::failed("the product", crate::error_chain(&e));
        if !spec.dir.is_dir() {
            return Err(build_err(BuildError::NoDir(spec.dir.clone())));
        }
        let copy = work.join("product");
        let _ = std::fs::remove_dir_all(&copy);
        copy_tree(&spec.dir, &copy).map_err(|source| {
            build_err(BuildError::Copy {
                from: spec.dir.clone(),
                to: copy.clone(),
                source,
            })
        })?;
        let mut notes = Vec::new();
        if let Some(cmd) = &spec.build {
            let log = work.join("product-build.log");
            build(
                cmd,
                &copy,
                &image.headers_dir,
                &image.kernel_release,
                spec.build_timeout,
                &log,
            )
            .map_err(build_err)?;
            notes.push(format!(
                "product built with `{cmd}` against {} (log {})",
                image.headers_dir.display(),
                log.display()
            ));
        }
        for m in &spec.modules {
            let path = copy.join(m);
            if !path.is_file() {
                return Err(build_err(BuildError::NoModule {
                    module: m.clone(),
                    path,
                }));
            }
        }
        let mut u = Userland::new();
        u.tree(&copy, GUEST_DIR)?;
        let userland = work.join("userland-product.cpio");
        u.write(&userland)?;
        let mut disks = Vec::new();
        let mut targets = BTreeMap::new();
        for v in plan.backed_up() {
            if let Some(bytes) = spec.scratch_disk {
                disks.push(disk_file(work, &scratch_id(v.index), bytes)?);
            }
            if let Delivery::Copy(_) = spec.delivery {
                let d = disk_file(work, &target_id(v.index), v.size_bytes)?;
                targets.insert(v.name.clone(), d.path.clone());
                disks.push(d);
            }
        }
        Ok(External {
            spec,
            userland,
            disks,
            targets,
            devices: BTreeMap::new(),
            sizes: plan
                .volumes
                .iter()
                .map(|v| (v.name.clone(), v.size_bytes))
                .collect(),
            channel: None,
            loaded: false,
            notes,
        })
    }

    /// The variables every command of volume `v` sees.
    fn env(&self, v: &GuestVolume, g: u32) -> Env {
        let mut env = Env::new();
        let d = self.devices.get(&v.name).cloned().unwrap_or_default();
        let mut set = |k: &str, val: String| {
            env.insert(k.to_string(), val);
        };
        set("BW_VOLUME", v.name.clone());
        set("BW_DEVICE", v.device.clone());
        set("BW_DISK", v.disk.clone());
        set("BW_MOUNT", v.mount.clone().unwrap_or_default());
        set(
            "BW_VOLUME_BYTES",
            self.sizes.get(&v.name).copied().unwrap_or(0).to_string(),
        );
        set("BW_GENERATION", g.to_string());
        set(
            "BW_KIND",
            if g > 1 { "incremental" } else { "full" }.to_string(),
        );
        set("BW_PRODUCT", GUEST_DIR.to_string());
        set("DM_DISABLE_UDEV", "1".into());
        set(
            "PATH",
            format!("{GUEST_DIR}/bin:{GUEST_DIR}/sbin:/bin:/sbin:/usr/bin:/usr/sbin"),
        );
        if let Some(s) = d.scratch {
            set("BW_SCRATCH", s);
        }
        if let Some(t) = d.target {
            set("BW_TARGET", t);
        }
        if let Some(s) = d.snapshot {
            set("BW_SNAPSHOT", s);
        }
        if let Some(c) = &self.channel {
            set("BW_CHANNEL", c.clone());
        }
        env
    }

    fn step(
        &self,
        r: &mut Runner,
        name: &str,
        script: &str,
        env: &Env,
        output: Output,
    ) -> Result<String, PipelineError> {
        Ok(r.run(&Step {
            name,
            script,
            env,
            limit: self.spec.step_timeout,
            output,
        })?
        .stdout)
    }

    fn device_of(r: &mut Runner, serial: &str) -> Result<Option<String>, PipelineError> {
        let out = r.sh(
            "find disk",
            &super::dmsnap::device_of_serial(serial),
            Duration::from_secs(30),
        )?;
        Ok(Some(out.stdout.trim().to_string()).filter(|s| !s.is_empty()))
    }

    /// The product is set up before its volumes are mounted (a product like dm-snapshot
    /// must sit under the filesystem from the start): the modules load on the first
    /// volume, then `prepare` runs for each backed-up volume and may print the device the
    /// volume is to be mounted through.
    fn attach_volume(
        &mut self,
        r: &mut Runner,
        volume: &VolumePlan,
        disk: &str,
    ) -> Result<String, PipelineError> {
        if !self.loaded {
            self.load(r)?;
            self.loaded = true;
        }
        if !volume.backup {
            return Ok(disk.to_string());
        }
        let mut d = Devices::default();
        if self.spec.scratch_disk.is_some() {
            d.scratch = Self::device_of(r, &Disk::serial_of(&scratch_id(volume.index)))?;
        }
        if self.targets.contains_key(&volume.name) {
            d.target = Self::device_of(r, &Disk::serial_of(&target_id(volume.index)))?;
        }
        self.devices.insert(volume.name.clone(), d);
        let Some(prepare) = self.spec.prepare.clone() else {
            return Ok(disk.to_string());
        };
        let v = GuestVolume {
            name: volume.name.clone(),
            disk: disk.to_string(),
            device: disk.to_string(),
            mount: volume.mount.clone(),
            cow_bytes: volume.cow_bytes,
        };
        let env = self.env(&v, 0);
        let out = self.step(r, "prepare", &prepare, &env, Output::Any)?;
        let Some(device) = out.lines().rev().map(str::trim).find(|l| !l.is_empty()) else {
            return Ok(disk.to_string());
        };
        if r.sh(
            "device check",
            &format!("test -b '{device}'"),
            Duration::from_secs(20),
        )
        .is_err()
        {
            return Err(PipelineError::failed(
                format!("step `prepare` (`{prepare}`)"),
                format!("printed {device:?} as the device to mount volume {} through, which is not a block device in the guest", volume.name),
            ));
        }
        Ok(device.to_string())
    }

    /// Finds the channel and loads the product's modules, in order.
    fn load(&mut self, r: &mut Runner) -> Result<(), PipelineError> {
        let port = r.sh(
            "find the channel",
            &format!(
                "for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = {} ] && echo /dev/${{p##*/}}; done; true",
                wire::CHANNEL_PORT
            ),
            Duration::from_secs(30),
        )?;
        self.channel = Some(port.stdout.trim().to_string()).filter(|s| !s.is_empty());
        for m in &self.spec.modules {
            let path = format!("{GUEST_DIR}/{m}");
            if let Err(e) = r.vm.guest.insmod(&path, "") {
                let dmesg = r
                    .sh("dmesg", "dmesg | tail -n 8", Duration::from_secs(20))
                    .map(|d| d.stdout)
                    .unwrap_or_default();
                return Err(PipelineError::failed(
                    format!("loading the product's module {m}"),
                    format!(
                        "{}; the kernel said:\n{}",
                        crate::error_chain(&e),
                        dmesg.trim()
                    ),
                ));
            }
            self.notes.push(format!("loaded the product's module {m}"));
        }
        Ok(())
    }
}

/// Parses the `changed` step's output: `none`, or `<offset> <length>` lines.
pub fn parse_changed(text: &str) -> Result<Vec<(u64, u64)>, String> {
    let body: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if body == ["none"] {
        return Ok(Vec::new());
    }
    wire::parse_extents(&body.join("\n"))
}

impl Provider for External {
    fn name(&self) -> &'static str {
        "external"
    }

    fn disks(&self) -> Vec<Disk> {
        self.disks.clone()
    }

    fn userland(&self) -> Option<PathBuf> {
        Some(self.userland.clone())
    }

    fn attach(
        &mut self,
        r: &mut Runner,
        volume: &VolumePlan,
        disk: &str,
    ) -> Result<String, PipelineError> {
        self.attach_volume(r, volume, disk)
    }

    fn mode(&self) -> SnapshotMode {
        match self.spec.snapshot {
            SnapshotSteps::FreezeSetupThaw { .. } => SnapshotMode::FreezeSetupThaw,
            SnapshotSteps::Announced { .. } => SnapshotMode::Announced,
            SnapshotSteps::Unannounced { .. } => SnapshotMode::Unannounced,
        }
    }

    fn freeze(&mut self, r: &mut Runner, v: &GuestVolume, g: u32) -> Result<(), PipelineError> {
        if let SnapshotSteps::FreezeSetupThaw { freeze, .. } = &self.spec.snapshot {
            self.step(r, "freeze", freeze, &self.env(v, g), Output::Any)?;
        }
        Ok(())
    }

    fn setup(&mut self, r: &mut Runner, v: &GuestVolume, g: u32) -> Result<(), PipelineError> {
        if let SnapshotSteps::FreezeSetupThaw { setup, .. } = &self.spec.snapshot {
            self.step(r, "setup", setup, &self.env(v, g), Output::Any)?;
        }
        Ok(())
    }

    fn thaw(&mut self, r: &mut Runner, v: &GuestVolume, g: u32) -> Result<(), PipelineError> {
        if let SnapshotSteps::FreezeSetupThaw { thaw, .. } = &self.spec.snapshot {
            self.step(r, "thaw", thaw, &self.env(v, g), Output::Any)?;
        }
        Ok(())
    }

    fn snapshot_command(&self, v: &GuestVolume, g: u32) -> (String, Env, Duration) {
        let script = match &self.spec.snapshot {
            SnapshotSteps::Announced { snapshot } | SnapshotSteps::Unannounced { snapshot } => {
                snapshot.clone()
            }
            SnapshotSteps::FreezeSetupThaw { .. } => String::new(),
        };
        (script, self.env(v, g), self.spec.step_timeout)
    }

    fn device(&mut self, r: &mut Runner, v: &GuestVolume, g: u32) -> Result<String, PipelineError> {
        let out = self.step(
            r,
            "device",
            &self.spec.device.clone(),
            &self.env(v, g),
            Output::Required("the snapshot device's path"),
        )?;
        let path = out
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string();
        let found = r.sh(
            "device check",
            &format!("test -b '{path}'"),
            Duration::from_secs(20),
        );
        if found.is_err() {
            return Err(PipelineError::failed(
                format!("step `device` (`{}`)", self.spec.device),
                format!("printed {path:?}, which is not a block device in the guest"),
            ));
        }
        self.devices.entry(v.name.clone()).or_default().snapshot = Some(path.clone());
        Ok(path)
    }

    fn cow_file(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        g: u32,
    ) -> Result<Option<CowFile>, PipelineError> {
        let Some((file, _max)) = self.spec.cow_file.clone() else {
            return Ok(None);
        };
        let Some(mount) = &v.mount else {
            return Err(PipelineError::failed(
                "pipeline.cow_file",
                format!("volume {} has no filesystem to hold {file}", v.name),
            ));
        };
        let env = self.env(v, g);
        // The guest's FIEMAP view, compared with what the harness finds on the truth
        // image (which alone decides the exclusion, capped at `cow_file_max`).
        let out = self.step(
            r,
            "cow file extents",
            &format!("/bin/bw-pipe extents '{mount}/{file}'"),
            &env,
            Output::Any,
        )?;
        let ranges =
            wire::parse_extents(&out).map_err(|e| PipelineError::failed("pipeline.cow_file", e))?;
        Ok(Some(CowFile {
            path: file,
            ranges: Some(ranges),
        }))
    }

    fn changed(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        g: u32,
    ) -> Result<Option<Vec<(u64, u64)>>, PipelineError> {
        let Some(cmd) = self.spec.changed.clone() else {
            return Ok(None);
        };
        let out = self.step(
            r,
            "changed",
            &cmd,
            &self.env(v, g),
            Output::Required("the changed byte ranges (`<offset> <length>` lines) or `none`"),
        )?;
        parse_changed(&out)
            .map(Some)
            .map_err(|e| PipelineError::failed(format!("step `changed` (`{cmd}`)"), e))
    }

    fn deliver(&self, v: &GuestVolume, g: u32, snapshot: &str, changed: Option<&str>) -> Deliver {
        let mut env = self.env(v, g);
        env.insert("BW_SNAPSHOT".into(), snapshot.to_string());
        if let Some(c) = changed {
            env.insert("BW_CHANGED".into(), c.to_string());
        }
        match &self.spec.delivery {
            Delivery::Stream(script) => Deliver::Stream {
                script: script.clone(),
                env,
            },
            Delivery::Copy(script) => Deliver::Copy {
                script: script.clone(),
                env,
                image: self.targets.get(&v.name).cloned().unwrap_or_default(),
            },
        }
    }

    fn release(
        &mut self,
        r: &mut Runner,
        v: &GuestVolume,
        g: u32,
        _committed: bool,
    ) -> Result<(), PipelineError> {
        let env = self.env(v, g);
        let mut first = None;
        if let Some(t) = self.spec.transition.clone() {
            if let Err(e) = self.step(r, "transition", &t, &env, Output::Any) {
                first = Some(e);
            }
        }
        // destroy runs even when transition failed: the snapshot must go.
        let destroy = self.spec.destroy.clone();
        let destroyed = self.step(r, "destroy", &destroy, &env, Output::Any);
        if let Some(d) = self.devices.get_mut(&v.name) {
            d.snapshot = None;
        }
        match (first, destroyed) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(_)) => Ok(()),
        }
    }

    fn notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_output_is_extents_or_none() {
        assert_eq!(parse_changed("none\n"), Ok(vec![]));
        assert_eq!(parse_changed("0 4096\n8192 8192\n").unwrap().len(), 2);
        assert!(parse_changed("0 100\n").is_err());
    }

    #[test]
    fn a_failing_build_names_its_command_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let e = build(
            "echo compiling; echo 'fatal: no such header' >&2; exit 3",
            dir.path(),
            Path::new("/nonexistent/headers"),
            "6.1.0-x",
            Duration::from_secs(20),
            &log,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("fatal: no such header"), "{e}");
        assert!(e.contains("/nonexistent/headers"), "{e}");
        let e = build(
            "sleep 30",
            dir.path(),
            Path::new("/h"),
            "r",
            Duration::from_millis(300),
            &log,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(build(
            "test \"$BW_KERNEL_RELEASE\" = r",
            dir.path(),
            Path::new("/h"),
            "r",
            Duration::from_secs(10),
            &log
        )
        .is_ok());
    }
}

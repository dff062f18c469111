//! Host requirements: what Blockwitness needs on the machine, how to check each, and the
//! exact command that fixes it. `doctor` prints the table, `setup` installs what is
//! missing, and every command that needs a requirement calls [`require`] so it fails
//! with the same message instead of half-running.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Something the host must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// qemu-system-x86_64 (Debian package qemu-system-x86).
    QemuSystem,
    /// qemu-img (qemu-utils).
    QemuUtils,
    /// A statically linked /bin/busybox (busybox-static) for the guest.
    Busybox,
    /// mkfs.ext4, e2fsck, debugfs (e2fsprogs).
    E2fsprogs,
    /// mkfs.xfs (xfsprogs).
    Xfsprogs,
    /// depmod (kmod), to index the fetched kernel's modules.
    Kmod,
    /// make and gcc, to build the module against the fetched headers.
    Toolchain,
    /// pahole (dwarves): the 6.12 headers' module BTF step needs it.
    Pahole,
    /// xz (xz-utils): 6.12 ships compressed modules.
    Xz,
    /// Package lists, so kernels can be resolved and fetched with apt-get.
    AptLists,
    /// dmsetup, lvm and thin_delta (dmsetup, lvm2, thin-provisioning-tools): packed
    /// into the guest for the dm-snapshot and LVM pipelines.
    DmTools,
}

use Requirement::*;

/// Everything `doctor` checks, in display order.
pub const ALL: &[Requirement] = &[
    QemuSystem, QemuUtils, Busybox, E2fsprogs, Xfsprogs, Kmod, Toolchain, Pahole, Xz, AptLists,
    DmTools,
];

/// What building an image needs.
pub const FOR_IMAGES: &[Requirement] = &[Busybox, Kmod, Toolchain, Pahole, Xz, AptLists];
/// What booting a guest needs.
pub const FOR_BOOT: &[Requirement] = &[QemuSystem, QemuUtils];
/// What a scenario run needs (images, boot, filesystems).
pub const FOR_RUN: &[Requirement] = &[
    QemuSystem, QemuUtils, Busybox, E2fsprogs, Xfsprogs, Kmod, Toolchain, Pahole, Xz, AptLists,
];

/// The result of checking one requirement.
#[derive(Clone, Debug)]
pub struct Check {
    pub requirement: Requirement,
    pub name: &'static str,
    pub ok: bool,
    /// What was found, or what is missing.
    pub detail: String,
    /// The Debian packages that provide it (empty when no package fixes it).
    pub packages: Vec<String>,
}

/// The requirements that are missing, with the command that fixes them.
#[derive(Debug, thiserror::Error)]
#[error("missing host requirements: {}\n  fix (as root): {fix}\n  or run: blockwitness setup", .missing.join(", "))]
pub struct Missing {
    pub missing: Vec<String>,
    pub fix: String,
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn version_line(prog: &str, arg: &str) -> String {
    Command::new(prog)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// True when the ELF file has no program interpreter (statically linked).
pub fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 64-bit ELF file");
    if data.len() < 64 || &data[0..4] != b"\x7fELF" || data[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = data.get(at..at + 4).ok_or_else(bad)?;
        if u32::from_le_bytes(kind.try_into().unwrap()) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

fn apt_lists_present() -> bool {
    std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false)
}

fn tool(requirement: Requirement, name: &'static str, progs: &[&str], pkgs: &[&str]) -> Check {
    let missing: Vec<&str> = progs
        .iter()
        .copied()
        .filter(|p| which(p).is_none())
        .collect();
    Check {
        requirement,
        name,
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            let first = which(progs[0]).unwrap();
            format!("{}", first.display())
        } else {
            format!("not found: {}", missing.join(", "))
        },
        packages: pkgs.iter().map(|s| s.to_string()).collect(),
    }
}

/// Checks one requirement.
pub fn check(requirement: Requirement) -> Check {
    match requirement {
        QemuSystem => {
            let mut c = tool(requirement, "qemu-system-x86", &["qemu-system-x86_64"], &[]);
            if c.ok {
                c.detail = version_line("qemu-system-x86_64", "--version");
            }
            c.packages = qemu_packages();
            c
        }
        QemuUtils => {
            let mut c = tool(requirement, "qemu-utils", &["qemu-img"], &[]);
            if c.ok {
                c.detail = version_line("qemu-img", "--version");
            }
            c.packages = qemu_packages();
            c
        }
        Busybox => {
            let path = Path::new("/bin/busybox");
            let (ok, detail) = match is_static_elf(path) {
                Ok(true) => (true, "/bin/busybox (static)".to_string()),
                Ok(false) => (false, "/bin/busybox is dynamically linked".to_string()),
                Err(err) => (false, format!("/bin/busybox: {err}")),
            };
            Check {
                requirement,
                name: "busybox-static",
                ok,
                detail,
                packages: vec!["busybox-static".into()],
            }
        }
        E2fsprogs => tool(
            requirement,
            "e2fsprogs",
            &["mkfs.ext4", "e2fsck", "debugfs"],
            &["e2fsprogs"],
        ),
        Xfsprogs => tool(requirement, "xfsprogs", &["mkfs.xfs"], &["xfsprogs"]),
        Kmod => tool(requirement, "kmod", &["depmod"], &["kmod"]),
        Toolchain => tool(requirement, "make, gcc", &["make", "gcc"], &["make", "gcc"]),
        Pahole => tool(requirement, "dwarves", &["pahole"], &["dwarves"]),
        Xz => tool(requirement, "xz-utils", &["xz"], &["xz-utils"]),
        DmTools => tool(
            requirement,
            "dmsetup, lvm2, thin-provisioning-tools",
            &["dmsetup", "lvm", "thin_delta"],
            &["dmsetup", "lvm2", "thin-provisioning-tools"],
        ),
        AptLists => {
            let ok = apt_lists_present();
            Check {
                requirement,
                name: "apt lists",
                ok,
                detail: if ok {
                    "/var/lib/apt/lists has package lists".into()
                } else {
                    "no package lists: kernels cannot be resolved".into()
                },
                packages: vec![],
            }
        }
    }
}

/// The candidate version of a package in the apt lists, if any.
fn candidate_version(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))?
        .trim()
        .to_string();
    (version != "(none)").then_some(version)
}

/// qemu-system-x86 and qemu-utils must come from the same QEMU release: installing
/// qemu-system-x86 alone removes a qemu-utils of another release (a backport, say). So both
/// are pinned to qemu-system-x86's candidate, allowing a downgrade of qemu-utils.
fn qemu_packages() -> Vec<String> {
    match candidate_version("qemu-system-x86") {
        Some(v) => vec![format!("qemu-system-x86={v}"), format!("qemu-utils={v}")],
        None => vec!["qemu-system-x86".into(), "qemu-utils".into()],
    }
}

/// The apt-get command that installs `packages`.
pub fn install_command(packages: &[String]) -> String {
    format!(
        "apt-get install -y --no-install-recommends --allow-downgrades {}",
        packages.join(" ")
    )
}

fn fix_for(checks: &[Check]) -> String {
    let mut packages: Vec<String> = Vec::new();
    let mut update = false;
    for c in checks.iter().filter(|c| !c.ok) {
        if c.requirement == AptLists {
            update = true;
        }
        for p in &c.packages {
            if !packages.contains(p) {
                packages.push(p.clone());
            }
        }
    }
    let mut steps = Vec::new();
    if update {
        steps.push("apt-get update".to_string());
    }
    if !packages.is_empty() {
        steps.push(install_command(&packages));
    }
    steps.join(" && ")
}

/// Fails with the fix when any of `requirements` is missing.
pub fn require(requirements: &[Requirement]) -> Result<(), Missing> {
    let checks: Vec<Check> = requirements.iter().map(|r| check(*r)).collect();
    let missing: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Missing {
            missing,
            fix: fix_for(&checks),
        })
    }
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut probe = path.to_path_buf();
    while !probe.exists() {
        probe = probe.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| st.f_bavail * st.f_frsize)
}

/// What `doctor` prints: every requirement, the free disk and the KVM state.
pub fn report(cache: &Path) -> (Vec<Check>, Vec<String>) {
    let checks: Vec<Check> = ALL.iter().map(|r| check(*r)).collect();
    let mut notes = Vec::new();
    match free_bytes(cache) {
        Some(free) => notes.push(format!(
            "free disk under {}: {:.1} GiB{}",
            cache.display(),
            free as f64 / (1u64 << 30) as f64,
            if free < 5 << 30 {
                " (less than the 5 GiB a cache of two kernels and a nightly wants)"
            } else {
                ""
            }
        )),
        None => notes.push(format!("free disk under {}: unknown", cache.display())),
    }
    notes.push(crate::accel::kvm_state().describe());
    (checks, notes)
}

/// Installs every missing requirement with apt-get (root only). Returns what it ran.
pub fn setup() -> Result<Vec<String>, SetupError> {
    let checks: Vec<Check> = ALL.iter().map(|r| check(*r)).collect();
    if checks.iter().all(|c| c.ok) {
        return Ok(vec![]);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(SetupError::NotRoot(fix_for(&checks)));
    }
    let mut ran = Vec::new();
    let run = |args: &[&str], ran: &mut Vec<String>| -> Result<(), SetupError> {
        let line = args.join(" ");
        ran.push(line.clone());
        let status = Command::new(args[0])
            .args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|source| SetupError::Spawn {
                command: line.clone(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(SetupError::Failed {
                command: line,
                status: status.to_string(),
            })
        }
    };
    if !apt_lists_present() {
        run(&["apt-get", "update"], &mut ran)?;
    }
    // Resolve after the update: the qemu pin needs the lists.
    let checks: Vec<Check> = ALL.iter().map(|r| check(*r)).collect();
    let mut packages: Vec<String> = Vec::new();
    for c in checks.iter().filter(|c| !c.ok) {
        for p in &c.packages {
            if !packages.contains(p) {
                packages.push(p.clone());
            }
        }
    }
    if !packages.is_empty() {
        let mut args = vec![
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "--allow-downgrades",
        ];
        args.extend(packages.iter().map(String::as_str));
        run(&args, &mut ran)?;
    }
    require(ALL).map_err(SetupError::StillMissing)?;
    Ok(ran)
}

/// Why `setup` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("setup installs packages and must run as root; as root run: {0}")]
    NotRoot(String),
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status})")]
    Failed { command: String, status: String },
    #[error("after installing")]
    StillMissing(#[source] Missing),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        // The test binary itself is dynamically linked.
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let not_elf = dir.path().join("x");
        std::fs::write(&not_elf, b"#!/bin/sh\n").unwrap();
        assert!(is_static_elf(&not_elf).is_err());
    }

    #[test]
    fn fix_command_names_every_missing_package_once() {
        let mk = |requirement, ok, pkgs: &[&str]| Check {
            requirement,
            name: "x",
            ok,
            detail: String::new(),
            packages: pkgs.iter().map(|s| s.to_string()).collect(),
        };
        let checks = [
            mk(AptLists, false, &[]),
            mk(E2fsprogs, false, &["e2fsprogs"]),
            mk(Toolchain, true, &["make", "gcc"]),
            mk(QemuSystem, false, &["qemu-system-x86=1", "qemu-utils=1"]),
            mk(QemuUtils, false, &["qemu-system-x86=1", "qemu-utils=1"]),
        ];
        assert_eq!(
            fix_for(&checks),
            "apt-get update && apt-get install -y --no-install-recommends --allow-downgrades \
             e2fsprogs qemu-system-x86=1 qemu-utils=1"
        );
    }
}

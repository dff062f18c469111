//! Choosing the accelerator: KVM when it really works, TCG otherwise.
//!
//! /dev/kvm can open and still be useless (a nested guest that hangs right after the
//! BIOS), so `auto` boots the image's kernel under KVM with the probe flag and a short
//! deadline; no probe marker in time means TCG. The verdict is cached per host boot.

use std::path::Path;
use std::time::Duration;

use crate::qemu::{self, Accel};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// How /dev/kvm looks from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmState {
    Missing,
    NoAccess(String),
    Opens,
}

impl KvmState {
    pub fn describe(&self) -> String {
        match self {
            KvmState::Missing => "KVM: /dev/kvm does not exist; TCG will be used".into(),
            KvmState::NoAccess(e) => {
                format!("KVM: /dev/kvm cannot be opened ({e}); TCG will be used")
            }
            KvmState::Opens => {
                "KVM: /dev/kvm opens; `--accel auto` probes whether a guest really runs on it"
                    .into()
            }
        }
    }
}

/// Looks at /dev/kvm without starting anything.
pub fn kvm_state() -> KvmState {
    let path = Path::new("/dev/kvm");
    if !path.exists() {
        return KvmState::Missing;
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => KvmState::Opens,
        Err(e) => KvmState::NoAccess(e.to_string()),
    }
}

/// The accelerator chosen for a run, and why, for the report.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(serde::Serialize, serde::Deserialize)]
struct ProbeCache {
    boot_id: String,
    kernel: String,
    works: bool,
    detail: String,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Boots `kernel`+`initrd` (a Blockwitness image: its init answers `bw.probe=1`) under
/// KVM and reports whether the probe marker appeared in time. QEMU is run bare (no QMP):
/// a hanging KVM guest may not even serve its monitor.
fn probe_kvm(kernel: &Path, initrd: &Path, run_dir: &Path) -> (bool, String) {
    if let Err(e) = std::fs::create_dir_all(run_dir) {
        return (false, format!("cannot create {}: {e}", run_dir.display()));
    }
    let boot = qemu::bare_boot(
        Accel::Kvm,
        kernel,
        initrd,
        "console=ttyS0 bw.probe=1 panic=-1",
        &run_dir.join("console.log"),
        "BW-PROBE-OK",
        PROBE_TIMEOUT,
    );
    match boot {
        Err(e) => (false, format!("cannot start qemu-system-x86_64: {e}")),
        Ok(b) if b.marker_at.is_some() && b.exited_at.is_some() => {
            (true, "a KVM guest booted and powered off".into())
        }
        Ok(b) if b.exited_at.is_some() => (
            false,
            format!("a KVM guest ended without booting: {}", b.stderr),
        ),
        Ok(_) => (
            false,
            format!("a KVM guest did not finish booting within {PROBE_TIMEOUT:?}"),
        ),
    }
}

/// Resolves `choice` to an accelerator, probing KVM for `auto` (cached in `cache_dir`).
pub fn decide(
    choice: AccelChoice,
    kernel: &Path,
    initrd: &Path,
    cache_dir: &Path,
) -> AccelDecision {
    match choice {
        AccelChoice::Tcg => AccelDecision {
            accel: Accel::Tcg,
            reason: "asked for (--accel tcg)".into(),
        },
        AccelChoice::Kvm => AccelDecision {
            accel: Accel::Kvm,
            reason: "asked for (--accel kvm)".into(),
        },
        AccelChoice::Auto => {
            let state = kvm_state();
            if state != KvmState::Opens {
                return AccelDecision {
                    accel: Accel::Tcg,
                    reason: state.describe(),
                };
            }
            let cache_path = cache_dir.join("kvm-probe.json");
            let kernel_key = kernel.display().to_string();
            if let Some(cached) = std::fs::read(&cache_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ProbeCache>(&b).ok())
                .filter(|c| c.boot_id == boot_id() && c.kernel == kernel_key)
            {
                return verdict(
                    cached.works,
                    format!("{} (probed earlier this boot)", cached.detail),
                );
            }
            let run_dir = cache_dir
                .join("tmp")
                .join(format!("kvm-probe-{}", std::process::id()));
            let (works, detail) = probe_kvm(kernel, initrd, &run_dir);
            let _ = std::fs::remove_dir_all(&run_dir);
            let record = ProbeCache {
                boot_id: boot_id(),
                kernel: kernel_key,
                works,
                detail: detail.clone(),
            };
            if let Ok(text) = serde_json::to_vec(&record) {
                let _ = std::fs::create_dir_all(cache_dir);
                let _ = std::fs::write(&cache_path, text);
            }
            verdict(works, detail)
        }
    }
}

fn verdict(works: bool, detail: String) -> AccelDecision {
    if works {
        AccelDecision {
            accel: Accel::Kvm,
            reason: format!("auto: {detail}"),
        }
    } else {
        AccelDecision {
            accel: Accel::Tcg,
            reason: format!("auto: {detail}; using TCG"),
        }
    }
}

//! `bw-init`: PID 1 of every Blockwitness guest.
//!
//! Mounts the kernel filesystems, loads the boot modules named on the kernel command
//! line, then serves the harness's control protocol on the `bw.control` port until told
//! to shut down. It prints its own progress on the console (stderr) prefixed `bw-init:`.

pub mod children;
pub mod modules;
mod server;

use std::ffi::CString;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::Ready;

/// Prints a line on the console.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("bw-init: {}", format!($($arg)*)) };
}
pub(crate) use say;

/// Kernel command line settings bw-init reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `bw.modules=a,b`: modules to load at boot.
    pub modules: Vec<String>,
    /// `bw.probe=1`: accelerator probe; power off at once.
    pub probe: bool,
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut out = Cmdline::default();
        for word in text.split_whitespace() {
            if let Some(list) = word.strip_prefix("bw.modules=") {
                out.modules = list
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect();
            } else if word == "bw.probe=1" {
                out.probe = true;
            }
        }
        out
    }
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("static mount strings have no NUL");
    let (src, tgt, fs) = (c(source), c(target), c(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings; no mount data.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            say!("mount {fstype} on {target}: {err}");
        }
    }
}

/// Powers the machine off (or reboots) after syncing. Never returns.
pub fn power_off(reboot: bool) -> ! {
    // SAFETY: sync and reboot take no pointers; we are PID 1.
    unsafe {
        libc::sync();
        libc::reboot(if reboot {
            libc::RB_AUTOBOOT
        } else {
            libc::RB_POWER_OFF
        });
    }
    // reboot(2) only returns on failure; there is nothing else PID 1 can do.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Waits for the control port to appear (virtio_console may still be probing).
fn wait_for_port(deadline: Duration) -> Option<std::path::PathBuf> {
    let start = Instant::now();
    loop {
        match crate::ports::find(crate::control::PORT_NAME) {
            Ok(path) if path.exists() => return Some(path),
            Ok(_) | Err(_) if start.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(err) => {
                say!("{err}");
                return None;
            }
            Ok(path) => {
                say!("{} has no device node", path.display());
                return None;
            }
        }
    }
}

/// The whole life of PID 1.
pub fn run() -> ! {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if cmdline.probe {
        say!("BW-PROBE-OK");
        power_off(false);
    }
    mount("tmpfs", "/run", "tmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    mount("debugfs", "/sys/kernel/debug", "debugfs");
    // Surface hung tasks well inside a scenario's timeout.
    let _ = std::fs::write("/proc/sys/kernel/hung_task_timeout_secs", "30");
    std::env::set_var("PATH", "/bin:/sbin:/usr/bin:/usr/sbin");

    let release = kernel_release();
    let mut loaded = Vec::new();
    let mut module_errors = Vec::new();
    match modules::DepTable::load(&Path::new("/lib/modules").join(&release)) {
        Ok(table) => {
            for name in &cmdline.modules {
                match modules::load_with_deps(&table, name) {
                    Ok(names) => {
                        for n in names {
                            if !loaded.contains(&n) {
                                loaded.push(n);
                            }
                        }
                    }
                    Err(err) => module_errors.push(format!("{name}: {err}")),
                }
            }
        }
        Err(err) => module_errors.push(err.to_string()),
    }
    for err in &module_errors {
        say!("module: {err}");
    }

    let Some(port) = wait_for_port(Duration::from_secs(30)) else {
        say!("no control port; powering off");
        power_off(false);
    };
    let ready = Ready {
        kernel: release,
        uptime_ms: uptime_ms(),
        modules: loaded,
        module_errors,
    };
    say!(
        "ready after {} ms, serving {}",
        ready.uptime_ms,
        port.display()
    );
    server::serve(&port, ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keys() {
        let c = Cmdline::parse("console=ttyS0 bw.modules=virtio_blk,ext4, quiet bw.probe=1");
        assert_eq!(c.modules, ["virtio_blk", "ext4"]);
        assert!(c.probe);
        assert_eq!(Cmdline::parse("quiet"), Cmdline::default());
    }
}

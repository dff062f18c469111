//! Assembling the initramfs: bw-init as /init, busybox and its applets, the project's
//! binaries, the kernel modules with a modules.dep of their own, and bwsnap.ko.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use bw_guest::init::modules::DepTable;

use super::cpio::CpioWriter;
use super::ImageError;

/// What goes into one initramfs.
pub(crate) struct Contents<'a> {
    pub kernel_root: &'a Path,
    pub release: &'a str,
    pub modules: &'a [String],
    pub init: &'a Path,
    /// Installed as /bin/<name>.
    pub binaries: &'a [(String, PathBuf)],
    pub busybox: &'a Path,
    pub bwsnap: Option<&'a Path>,
}

/// Where bwsnap.ko sits in the guest.
pub const BWSNAP_GUEST_PATH: &str = "/lib/modules/bwsnap.ko";

/// Resolves the module list to every module needed, dependencies first.
pub(crate) fn resolve_modules(
    table: &DepTable,
    wanted: &[String],
    image: &str,
) -> Result<Vec<String>, ImageError> {
    let mut all: Vec<String> = Vec::new();
    for name in wanted {
        let order = table.load_order(name).map_err(|e| ImageError::Invalid {
            path: PathBuf::from(format!("images/{image}.toml")),
            detail: format!("module {name}: {e}"),
        })?;
        for (n, _) in order {
            if !all.contains(&n) {
                all.push(n);
            }
        }
    }
    Ok(all)
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|e| ImageError::io(path, e))
}

/// A module file's bytes, decompressed when the kernel ships it as .ko.xz: busybox and
/// bw-init load plain .ko files, and decompressing on the host is faster than in a TCG
/// guest.
fn module_bytes(path: &Path) -> Result<Vec<u8>, ImageError> {
    if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .map_err(|source| ImageError::Tool {
                tool: "xz".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(ImageError::Invalid {
                path: path.into(),
                detail: format!("xz -dc: {}", String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(out.stdout)
    } else {
        read(path)
    }
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|source| ImageError::Tool {
            tool: busybox.display().to_string(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "init" && *a != "linuxrc" && *a != "busybox")
        .map(str::to_string)
        .collect())
}

/// Writes the initramfs to `out`; returns the modules packed, in load order.
pub(crate) fn write(out: &Path, c: &Contents) -> Result<Vec<String>, ImageError> {
    let moddir = c.kernel_root.join("lib/modules").join(c.release);
    let table = DepTable::load(&moddir).map_err(|e| ImageError::Invalid {
        path: moddir.clone(),
        detail: e.to_string(),
    })?;
    let packed = resolve_modules(&table, c.modules, c.release)?;

    let file = std::fs::File::create(out).map_err(|e| ImageError::io(out, e))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    let io = |e| ImageError::io(out, e);
    for dir in [
        "/bin",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/tmp",
        "/mnt",
        "/root",
        "/etc",
        "/var",
        "/lib",
        "/lib/modules",
    ] {
        w.dir(dir).map_err(io)?;
    }
    w.char_dev("/dev/console", 0o600, 5, 1).map_err(io)?;
    w.file("/init", 0o755, &read(c.init)?).map_err(io)?;
    w.file("/bin/busybox", 0o755, &read(c.busybox)?)
        .map_err(io)?;
    for applet in busybox_applets(c.busybox)? {
        w.symlink(&format!("/bin/{applet}"), "busybox")
            .map_err(io)?;
    }
    for (name, path) in c.binaries {
        w.file(&format!("/bin/{name}"), 0o755, &read(path)?)
            .map_err(io)?;
    }
    if let Some(ko) = c.bwsnap {
        w.file(BWSNAP_GUEST_PATH, 0o644, &read(ko)?).map_err(io)?;
    }

    // Modules, under their usual paths (decompressed), plus a modules.dep for just them.
    let base = format!("/lib/modules/{}", c.release);
    w.dir(&base).map_err(io)?;
    let mut made_dirs: Vec<String> = vec![base.clone()];
    let mut dep_lines = Vec::new();
    let plain = |p: &str| p.trim_end_matches(".xz").to_string();
    for name in &packed {
        let (rel, deps) = table
            .entry(name)
            .expect("resolved modules are in the table");
        let rel_plain = plain(rel);
        let mut dir = base.clone();
        for part in Path::new(&rel_plain)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            dir = format!("{dir}/{}", part.as_os_str().to_string_lossy());
            if !made_dirs.contains(&dir) {
                w.dir(&dir).map_err(io)?;
                made_dirs.push(dir.clone());
            }
        }
        let bytes = module_bytes(&moddir.join(rel))?;
        w.file(&format!("{base}/{rel_plain}"), 0o644, &bytes)
            .map_err(io)?;
        let dep_paths: Vec<String> = deps
            .iter()
            .map(|d| plain(table.entry(d).expect("deps are in the table").0))
            .collect();
        dep_lines.push(format!("{rel_plain}: {}", dep_paths.join(" ")));
    }
    let mut dep = dep_lines.join("\n");
    dep.push('\n');
    w.file(&format!("{base}/modules.dep"), 0o644, dep.as_bytes())
        .map_err(io)?;
    w.finish().map_err(io)?;
    Ok(packed)
}

//! Finding a virtio-serial port by its name inside the guest.
//!
//! The initramfs has no udev, so the `/dev/virtio-ports/<name>` links do not exist; the
//! names are in `/sys/class/virtio-ports/vportNpM/name` and the device nodes are
//! `/dev/vportNpM` (devtmpfs).

use std::fs;
use std::path::{Path, PathBuf};

/// Why a port could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no virtio-serial port named {name:?} (ports present: {present})")]
    NotFound { name: String, present: String },
    #[error("cannot list virtio-serial ports in {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The device node of the port called `name`, looking under `sysfs_dir`
/// (normally `/sys/class/virtio-ports`) and `dev_dir` (normally `/dev`).
pub fn find_in(sysfs_dir: &Path, dev_dir: &Path, name: &str) -> Result<PathBuf, PortError> {
    let entries = fs::read_dir(sysfs_dir).map_err(|source| PortError::List {
        dir: sysfs_dir.to_path_buf(),
        source,
    })?;
    let mut present = Vec::new();
    for entry in entries.flatten() {
        let node = entry.file_name().to_string_lossy().into_owned();
        let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        let port_name = port_name.trim();
        if port_name == name {
            return Ok(dev_dir.join(&node));
        }
        present.push(format!("{node}={port_name}"));
    }
    present.sort();
    Err(PortError::NotFound {
        name: name.to_string(),
        present: if present.is_empty() {
            "none".to_string()
        } else {
            present.join(", ")
        },
    })
}

/// The device node of the port called `name` in a running guest.
pub fn find(name: &str) -> Result<PathBuf, PortError> {
    find_in(
        Path::new("/sys/class/virtio-ports"),
        Path::new("/dev"),
        name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_name_and_lists_what_is_there() {
        let sys = tempfile::tempdir().unwrap();
        for (node, name) in [("vport0p1", "bw.control"), ("vport0p2", "bw.hook")] {
            fs::create_dir(sys.path().join(node)).unwrap();
            fs::write(sys.path().join(node).join("name"), format!("{name}\n")).unwrap();
        }
        let found = find_in(sys.path(), Path::new("/dev"), "bw.hook").unwrap();
        assert_eq!(found, Path::new("/dev/vport0p2"));
        let err = find_in(sys.path(), Path::new("/dev"), "bw.witness").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no virtio-serial port named \"bw.witness\" (ports present: vport0p1=bw.control, vport0p2=bw.hook)"
        );
    }
}

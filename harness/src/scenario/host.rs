//! What a scenario is checked against besides its own text: the images defined in
//! images/ and the space free where runs make their disks. `check` and `run` refuse a
//! scenario that names an image that does not exist or a volume the host cannot hold,
//! with the key's line and column, before anything is created.

use std::path::{Path, PathBuf};

/// The host a scenario must fit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Image names defined in images/ (None: not checked).
    pub images: Option<Vec<String>>,
    /// Where runs make their disks, and the bytes free there (None: not checked).
    pub free: Option<(PathBuf, u64)>,
}

impl Host {
    /// No host checks: the text alone (for tests and docs).
    pub fn unchecked() -> Host {
        Host::default()
    }

    /// This machine: the images in the project's images/, the space free in the cache.
    pub fn probe() -> Host {
        let images_dir = crate::paths::images_dir();
        let images = std::fs::read_dir(&images_dir).ok().map(|d| {
            let mut names: Vec<String> = d
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".toml")
                        .map(str::to_string)
                })
                .collect();
            names.sort();
            names
        });
        let cache = crate::paths::cache_dir();
        Host {
            images,
            free: free_bytes(&cache).map(|b| (cache, b)),
        }
    }
}

/// Bytes available to this user on the filesystem holding `path` (or its nearest
/// existing ancestor: the cache may not exist yet).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut at = path;
    while !at.exists() {
        at = at.parent()?;
    }
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_from_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let here = free_bytes(dir.path()).unwrap();
        assert!(here > 0);
        let deeper = free_bytes(&dir.path().join("not/yet/made")).unwrap();
        // Same filesystem: the two readings are close (other writers may interleave).
        assert!(here.abs_diff(deeper) < 1 << 30, "{here} vs {deeper}");
    }

    #[test]
    fn the_probe_sees_the_project_images() {
        let host = Host::probe();
        let images = host.images.unwrap();
        assert!(images.contains(&"debian-6.1".to_string()), "{images:?}");
        assert!(host.free.is_some());
    }
}

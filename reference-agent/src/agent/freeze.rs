//! Freezing and thawing filesystems (FIFREEZE / FITHAW), with a guard that thaws
//! whatever it froze on every path out — a filesystem left frozen is a failure.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `_IOWR('X', 119, int)`
const FIFREEZE: libc::c_ulong = 0xc004_5877;
/// `_IOWR('X', 120, int)`
const FITHAW: libc::c_ulong = 0xc004_5878;

/// A freeze or thaw that failed.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("cannot open {path} to freeze it")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot freeze {path}")]
    Freeze {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot thaw {path}: the filesystem may be left frozen")]
    Thaw {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn ioctl(file: &File, request: libc::c_ulong) -> std::io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE/FITHAW take an int argument; the fd is a directory we opened.
    if unsafe { libc::ioctl(file.as_raw_fd(), request, &mut arg) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Filesystems frozen by this guard, thawed when it is dropped.
pub struct Frozen {
    held: Vec<(PathBuf, File)>,
}

impl Frozen {
    /// Freezes every mount point in order. If one fails, the ones already frozen are
    /// thawed before the error is returned. `fail` names mount points whose freeze is
    /// made to fail (EBUSY) on purpose: a fault the harness injects to prove the others
    /// are thawed.
    pub fn freeze_all(mount_points: &[PathBuf], fail: &[PathBuf]) -> Result<Frozen, FreezeError> {
        let mut frozen = Frozen { held: Vec::new() };
        for mp in mount_points {
            let file = File::open(mp).map_err(|source| FreezeError::Open {
                path: mp.clone(),
                source,
            })?;
            let result = if fail.contains(mp) {
                Err(std::io::Error::from_raw_os_error(libc::EBUSY))
            } else {
                ioctl(&file, FIFREEZE)
            };
            result.map_err(|source| FreezeError::Freeze {
                path: mp.clone(),
                source,
            })?;
            frozen.held.push((mp.clone(), file));
        }
        Ok(frozen)
    }

    /// Mount points currently held frozen.
    pub fn mount_points(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(|(p, _)| p.as_path())
    }

    /// Thaws everything, in reverse order; every thaw is attempted, the failures are
    /// returned.
    pub fn thaw_all(mut self) -> Vec<FreezeError> {
        self.thaw_inner()
    }

    fn thaw_inner(&mut self) -> Vec<FreezeError> {
        let mut errors = Vec::new();
        while let Some((path, file)) = self.held.pop() {
            if let Err(source) = ioctl(&file, FITHAW) {
                errors.push(FreezeError::Thaw { path, source });
            }
        }
        errors
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for err in self.thaw_inner() {
            eprintln!("bw-agent: {err}");
        }
    }
}

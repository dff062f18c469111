//! Guest images: a Debian kernel and an initramfs holding busybox, the kernel modules
//! the image needs, the project's static binaries and bwsnap.ko built against that
//! kernel's headers.
//!
//! Definitions live in `images/*.toml`. Everything fetched or built goes to the cache,
//! keyed by exact package versions and content hashes, and is built in a staging
//! directory that is renamed into place only when complete, so an interrupted build
//! leaves nothing half-written.

mod build;
pub mod cpio;
pub mod debian;
mod initramfs;
pub mod tools;
pub mod userland;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

pub use build::{build, resolve, resolve_all, BuildOptions};

/// An image definition (`images/<name>.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDef {
    pub name: String,
    pub description: String,
    /// Meta-package naming the kernel, e.g. `linux-image-amd64`.
    pub kernel: String,
    /// Meta-package naming the matching headers, e.g. `linux-headers-amd64`.
    pub headers: String,
    /// Modules packed into the initramfs (their dependencies come along).
    pub modules: Vec<String>,
    /// Modules bw-init loads at boot; the rest are loaded on demand.
    pub boot_modules: Vec<String>,
}

/// A built image, as recorded in its `image.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuiltImage {
    pub name: String,
    /// Content key: changes when any input changes.
    pub key: String,
    pub kernel_release: String,
    /// Every Debian package used, with version and measured sha256.
    pub packages: Vec<debian::FetchedPackage>,
    /// Modules in the initramfs, and the ones loaded at boot.
    pub modules: Vec<String>,
    pub boot_modules: Vec<String>,
    /// sha256 of bwsnap.ko, when the image carries it.
    pub bwsnap_sha256: Option<String>,
    /// The module's build log (W=1), for the warning-free check.
    pub bwsnap_build_log: Option<PathBuf>,
    /// sha256 of each project binary in the image.
    pub binaries: Vec<(String, String)>,
    pub busybox_sha256: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The unpacked headers this image's module was built against.
    pub headers_dir: PathBuf,
    /// Host path of the static `bw-target` built with the image.
    pub bw_target: PathBuf,
    /// Seconds since the epoch.
    pub built_at: u64,
}

impl BuiltImage {
    /// Kernel command line for a normal boot of this image.
    pub fn append(&self, extra_modules: &[String]) -> String {
        let mut modules = self.boot_modules.clone();
        for m in extra_modules {
            if !modules.contains(m) {
                modules.push(m.clone());
            }
        }
        // loglevel 5 puts warnings (WARN splats) on the console, where the harness scans.
        format!(
            "console=ttyS0 loglevel=5 panic=-1 bw.modules={}",
            modules.join(",")
        )
    }
}

/// Why an image could not be built or found.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image {name:?}; images defined in {dir}: {known}")]
    UnknownImage {
        name: String,
        dir: PathBuf,
        known: String,
    },
    #[error("image definition {path}: {detail}")]
    BadDefinition { path: PathBuf, detail: String },
    #[error("package {package} is not in the apt lists ({detail}); run `apt-get update`, or fix the image definition")]
    PackageUnknown { package: String, detail: String },
    #[error("resolving the kernel packages: {0}")]
    Resolve(String),
    #[error("cannot download {package}: {detail}; the archive may have moved on: run `apt-get update` and build again")]
    Download { package: String, detail: String },
    #[error("cannot unpack {package}: {detail}")]
    Unpack { package: String, detail: String },
    #[error("building bwsnap.ko against {headers} failed; last lines of {log}:\n{tail}")]
    Kmod {
        headers: String,
        log: PathBuf,
        tail: String,
    },
    #[error("building the guest binaries with cargo failed; last lines of {log}:\n{tail}")]
    Cargo { log: PathBuf, tail: String },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("cannot run {tool}")]
    Tool {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{cause}; the apt lists need `apt-get update`, which needs root: run it as root, or run `blockwitness setup` as root")]
    ListsNeedRoot { cause: String },
    #[error(transparent)]
    Missing(#[from] crate::doctor::Missing),
}

impl ImageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A command that failed, with the tail of its log.
#[derive(Debug, thiserror::Error)]
#[error("{command} failed ({status}): {tail}")]
pub struct CommandFailed {
    pub command: String,
    pub status: String,
    pub tail: String,
}

/// Runs a command with stdout and stderr going to `log`; on failure the error carries
/// the log's last lines.
pub(crate) fn run_logged(cmd: &mut Command, log: &Path) -> Result<(), CommandFailed> {
    let command = format!("{cmd:?}");
    let failed = |status: String, tail: String| CommandFailed {
        command: command.clone(),
        status,
        tail,
    };
    let out = File::create(log)
        .map_err(|e| failed("not started".into(), format!("{}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| failed("not started".into(), e.to_string()))?;
    let status = cmd
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| failed("not started".into(), e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(status.to_string(), crate::console::tail(log, 15)))
    }
}

/// A directory under the cache's tmp/ that is removed on drop unless persisted by
/// renaming it into place.
pub(crate) struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Staging {
    pub(crate) fn new(cache_tmp: &Path, what: &str) -> Result<Staging, ImageError> {
        std::fs::create_dir_all(cache_tmp).map_err(|e| ImageError::io(cache_tmp, e))?;
        let path = tempfile::Builder::new()
            .prefix(&format!("{what}-"))
            .tempdir_in(cache_tmp)
            .map_err(|e| ImageError::io(cache_tmp, e))?
            .keep();
        Ok(Staging { path, keep: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staging directory to `dest` (which must not exist).
    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), ImageError> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
        }
        std::fs::rename(&self.path, dest).map_err(|e| ImageError::io(dest, e))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// An exclusive lock on a file under the cache, held until dropped, so parallel test
/// processes build each thing once.
pub(crate) struct CacheLock(#[allow(dead_code)] File);

impl CacheLock {
    pub(crate) fn acquire(cache: &Path, name: &str) -> Result<CacheLock, ImageError> {
        let dir = cache.join("locks");
        std::fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        let path = dir.join(format!("{name}.lock"));
        let file = File::create(&path).map_err(|e| ImageError::io(&path, e))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ImageError::io(&path, std::io::Error::last_os_error()));
        }
        Ok(CacheLock(file))
    }
}

/// Reads the definition of image `name` from `images_dir`.
pub fn load_def(images_dir: &Path, name: &str) -> Result<(ImageDef, PathBuf), ImageError> {
    let path = images_dir.join(format!("{name}.toml"));
    if !path.is_file() {
        return Err(ImageError::UnknownImage {
            name: name.to_string(),
            dir: images_dir.to_path_buf(),
            known: list_defs(images_dir).join(", "),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ImageError::io(&path, e))?;
    let def: ImageDef = toml::from_str(&text).map_err(|e| ImageError::BadDefinition {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if def.name != name {
        return Err(ImageError::BadDefinition {
            path,
            detail: format!("name is {:?} but the file is named {name:?}", def.name),
        });
    }
    if let Some(m) = def.boot_modules.iter().find(|m| !def.modules.contains(m)) {
        return Err(ImageError::BadDefinition {
            path,
            detail: format!("boot module {m:?} is not in modules"),
        });
    }
    Ok((def, path))
}

/// Names of the images defined in `images_dir`.
pub fn list_defs(images_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(images_dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".toml").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every built image in the cache, newest first.
pub fn list_built(cache: &Path) -> Vec<BuiltImage> {
    let mut out = Vec::new();
    let Ok(names) = std::fs::read_dir(cache.join("images")) else {
        return out;
    };
    for name in names.flatten() {
        let Ok(keys) = std::fs::read_dir(name.path()) else {
            continue;
        };
        for key in keys.flatten() {
            if let Some(img) = std::fs::read(key.path().join("image.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<BuiltImage>(&b).ok())
            {
                out.push(img);
            }
        }
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.built_at));
    out
}

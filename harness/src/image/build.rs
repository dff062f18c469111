//! `blockwitness images build`: kernel packages → bwsnap.ko → static binaries →
//! initramfs, each step cached by what went into it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::debian::{self, FetchedPackage, KernelPackages};
use super::initramfs::{self, Contents};
use super::{load_def, run_logged, BuiltImage, CacheLock, ImageError, Staging};
use crate::doctor;

/// Bumped when the image layout changes, so old cache entries are not reused.
const FORMAT: &str = "blockwitness-image-v1";

/// Guest binaries packed into /bin (bw-init becomes /init).
const GUEST_BINARIES: &[&str] = &[
    "bw-agent",
    "bw-workload",
    "bwsnap-ctl",
    "bw-target",
    "bwsnap-exec",
    "bw-pipe",
];
/// Binaries that must exist; the others are packed when the workspace has them.
const REQUIRED_BINARIES: &[&str] = &["bw-init", "bw-agent", "bw-workload", "bw-target"];

/// How to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub cache: PathBuf,
    pub project_root: PathBuf,
    /// Build and pack bwsnap.ko (off only to debug an image without the module).
    pub with_bwsnap: bool,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_path(path: &Path) -> Result<String, ImageError> {
    Ok(sha256_hex(
        &std::fs::read(path).map_err(|e| ImageError::io(path, e))?,
    ))
}

/// Fetches and unpacks the kernel packages once per exact version.
fn ensure_kernel(
    pkgs: &KernelPackages,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, Vec<FetchedPackage>), ImageError> {
    let dir = cache
        .join("kernels")
        .join(format!("{}_{}", pkgs.release, pkgs.image.version));
    let _lock = CacheLock::acquire(cache, &format!("kernel-{}", pkgs.release))?;
    let record = dir.join("packages.json");
    if let Some(fetched) = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<FetchedPackage>>(&b).ok())
    {
        return Ok((dir.join("root"), fetched));
    }
    let tmp = cache.join("tmp");
    let mut debs = Vec::new();
    let mut fetched = Vec::new();
    for pkg in std::iter::once(&pkgs.image).chain(&pkgs.headers) {
        progress(&format!("fetching {} {}", pkg.package, pkg.version));
        let (path, f) = debian::fetch(pkg, &cache.join("debs"), &tmp)?;
        debs.push(path);
        fetched.push(f);
    }
    progress(&format!("unpacking kernel {}", pkgs.release));
    let staging = Staging::new(&tmp, "kernel")?;
    let root = staging.path().join("root");
    std::fs::create_dir_all(&root).map_err(|e| ImageError::io(&root, e))?;
    debian::unpack(&debs, &root, &pkgs.release)?;
    // The Makefile rewrite points at the staging path; point it at the final place.
    let makefile = root.join(format!("usr/src/linux-headers-{}/Makefile", pkgs.release));
    let text = std::fs::read_to_string(&makefile).map_err(|e| ImageError::io(&makefile, e))?;
    let text = text.replace(
        &root.display().to_string(),
        &dir.join("root").display().to_string(),
    );
    std::fs::write(&makefile, text).map_err(|e| ImageError::io(&makefile, e))?;
    let json = serde_json::to_vec_pretty(&fetched).expect("serializable");
    std::fs::write(staging.path().join("packages.json"), json)
        .map_err(|e| ImageError::io(&record, e))?;
    if dir.exists() {
        // A leftover without packages.json is incomplete by construction.
        std::fs::remove_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
    }
    staging.persist(&dir)?;
    Ok((dir.join("root"), fetched))
}

/// The module's source files, sorted: what its cache key is made of.
fn kmod_sources(kmod: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut files = Vec::new();
    let mut stack = vec![kmod.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| ImageError::io(&dir, e))? {
            let path = entry.map_err(|e| ImageError::io(&dir, e))?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                if name != "tests" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name == "Kbuild"
                || name == "Makefile"
                || (name.ends_with(".c") && !name.ends_with(".mod.c"))
                || name.ends_with(".h")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    if !files
        .iter()
        .any(|f| f.file_name().is_some_and(|n| n == "Kbuild"))
    {
        return Err(ImageError::Invalid {
            path: kmod.to_path_buf(),
            detail: "no Kbuild file: the module cannot be built".into(),
        });
    }
    Ok(files)
}

/// Builds bwsnap.ko against the kernel's headers, once per source and header version.
/// Returns the module and its build log.
fn build_kmod(
    kmod: &Path,
    kernel_root: &Path,
    pkgs: &KernelPackages,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, PathBuf), ImageError> {
    let sources = kmod_sources(kmod)?;
    let mut h = Sha256::new();
    for f in &sources {
        h.update(
            f.strip_prefix(kmod)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update([0]);
        h.update(std::fs::read(f).map_err(|e| ImageError::io(f, e))?);
        h.update([0]);
    }
    let key = hex::encode(h.finalize());
    let dir = cache
        .join("kmod")
        .join(format!("{}_{}", pkgs.release, pkgs.image.version))
        .join(&key[..16]);
    let ko = dir.join("bwsnap.ko");
    let log = dir.join("build.log");
    let _lock = CacheLock::acquire(cache, &format!("kmod-{}", pkgs.release))?;
    if ko.is_file() {
        return Ok((ko, log));
    }
    progress(&format!("building bwsnap.ko for {}", pkgs.release));
    let staging = Staging::new(&cache.join("tmp"), "kmod")?;
    for f in &sources {
        let dest = staging.path().join(f.strip_prefix(kmod).unwrap_or(f));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
        }
        std::fs::copy(f, &dest).map_err(|e| ImageError::io(&dest, e))?;
    }
    let headers = kernel_root.join(format!("usr/src/linux-headers-{}", pkgs.release));
    let staging_log = staging.path().join("build.log");
    let result = run_logged(
        Command::new("make")
            .arg("-C")
            .arg(&headers)
            .arg(format!("M={}", staging.path().display()))
            .arg("W=1")
            .arg("modules"),
        &staging_log,
    );
    if let Err(failed) = result {
        // Keep the log where the user can read it, outside the staging dir.
        let kept = cache
            .join("logs")
            .join(format!("bwsnap-{}.log", pkgs.release));
        let _ = std::fs::create_dir_all(kept.parent().expect("has parent"));
        let _ = std::fs::copy(&staging_log, &kept);
        return Err(ImageError::Kmod {
            headers: headers.display().to_string(),
            log: kept,
            tail: failed.tail,
        });
    }
    let out = Staging::new(&cache.join("tmp"), "kmod-out")?;
    std::fs::copy(
        staging.path().join("bwsnap.ko"),
        out.path().join("bwsnap.ko"),
    )
    .map_err(|e| ImageError::io(&ko, e))?;
    std::fs::copy(&staging_log, out.path().join("build.log"))
        .map_err(|e| ImageError::io(&log, e))?;
    out.persist(&dir)?;
    Ok((ko, log))
}

/// Builds the project's binaries as static executables; returns name → path.
fn build_binaries(
    project_root: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<(String, PathBuf)>, ImageError> {
    progress("building static guest binaries (cargo)");
    let target_dir = project_root.join("target/guest");
    std::fs::create_dir_all(&target_dir).map_err(|e| ImageError::io(&target_dir, e))?;
    let log = target_dir.join("build.log");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let result = run_logged(
        Command::new(cargo)
            .current_dir(project_root)
            .args([
                "build",
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "-p",
                "bw-guest",
                "-p",
                "reference-agent",
                "--bins",
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"),
        &log,
    );
    if let Err(failed) = result {
        return Err(ImageError::Cargo {
            log,
            tail: failed.tail,
        });
    }
    let bin_dir = target_dir.join("x86_64-unknown-linux-gnu/release");
    let mut out = Vec::new();
    for name in REQUIRED_BINARIES.iter().chain(GUEST_BINARIES) {
        let path = bin_dir.join(name);
        if !path.is_file() {
            if REQUIRED_BINARIES.contains(name) {
                return Err(ImageError::Invalid {
                    path,
                    detail: "cargo built no such binary".into(),
                });
            }
            continue;
        }
        match doctor::is_static_elf(&path) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ImageError::Invalid {
                    path,
                    detail: "is dynamically linked; the guest has no libc".into(),
                })
            }
            Err(e) => return Err(ImageError::io(&path, e)),
        }
        if !out.iter().any(|(n, _): &(String, PathBuf)| n == name) {
            out.push((name.to_string(), path));
        }
    }
    Ok(out)
}

/// Resolves an image definition's meta-packages to the exact kernel packages, refreshing
/// stale apt lists once (as root). Nothing is fetched.
pub fn resolve(
    name: &str,
    project_root: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelPackages, ImageError> {
    let (def, _) = load_def(&project_root.join("images"), name)?;
    debian::with_fresh_lists(progress, |progress| {
        progress(&format!("resolving {} and {}", def.kernel, def.headers));
        debian::resolve(&def.kernel, &def.headers)
    })
}

/// Resolves every image in `names` against the same apt lists. When one of them finds the
/// lists stale and refreshes them, the ones resolved before are resolved again: on a fresh
/// machine the old lists name an old 6.1 kernel and no 6.12 at all, and one nightly must
/// not pin one image from the old lists and the next from the new.
pub fn resolve_all(
    names: &[String],
    project_root: &Path,
    progress: &mut dyn FnMut(&str),
) -> Vec<(String, Result<KernelPackages, ImageError>)> {
    let refreshed_before = debian::lists_refreshed();
    let once = |progress: &mut dyn FnMut(&str)| -> Vec<_> {
        names
            .iter()
            .map(|n| (n.clone(), resolve(n, project_root, progress)))
            .collect()
    };
    let first = once(progress);
    if !refreshed_before && debian::lists_refreshed() {
        progress("the apt lists were refreshed: resolving every image again from the new lists");
        return once(progress);
    }
    first
}

/// Builds image `name` (or finds it in the cache) and returns its record.
pub fn build(
    name: &str,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    doctor::require(doctor::FOR_IMAGES)?;
    let images_dir = opts.project_root.join("images");
    let (def, def_path) = load_def(&images_dir, name)?;
    let def_text = std::fs::read(&def_path).map_err(|e| ImageError::io(&def_path, e))?;
    let cache = &opts.cache;

    // Lists older than the kernels (a fresh machine) or than the archive (a version
    // since removed) are refreshed once, as root, and the step runs again.
    let (pkgs, (kernel_root, fetched)) = debian::with_fresh_lists(progress, |progress| {
        progress(&format!("resolving {} and {}", def.kernel, def.headers));
        let pkgs = debian::resolve(&def.kernel, &def.headers)?;
        let kernel = ensure_kernel(&pkgs, cache, progress)?;
        Ok((pkgs, kernel))
    })?;
    let bwsnap = if opts.with_bwsnap {
        Some(build_kmod(
            &opts.project_root.join("kmod"),
            &kernel_root,
            &pkgs,
            cache,
            progress,
        )?)
    } else {
        None
    };
    let binaries = build_binaries(&opts.project_root, progress)?;
    let busybox = Path::new("/bin/busybox");

    let mut key = Sha256::new();
    key.update(FORMAT);
    key.update(&def_text);
    key.update(pkgs.release.as_bytes());
    for p in &fetched {
        key.update(format!("{} {} {}\n", p.package, p.version, p.sha256));
    }
    let bwsnap_sha256 = match &bwsnap {
        Some((ko, _)) => Some(sha256_path(ko)?),
        None => None,
    };
    key.update(bwsnap_sha256.as_deref().unwrap_or("no-bwsnap"));
    let mut binary_hashes = Vec::new();
    for (n, p) in &binaries {
        let h = sha256_path(p)?;
        key.update(format!("{n} {h}\n"));
        binary_hashes.push((n.clone(), h));
    }
    let busybox_sha256 = sha256_path(busybox)?;
    key.update(&busybox_sha256);
    // What is packed, not only what was built, decides the image.
    for name in GUEST_BINARIES {
        key.update(format!("packed {name}\n"));
    }
    let key = hex::encode(key.finalize())[..16].to_string();

    let dir = cache.join("images").join(name).join(&key);
    let _lock = CacheLock::acquire(cache, &format!("image-{name}"))?;
    if let Some(img) = std::fs::read(dir.join("image.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<BuiltImage>(&b).ok())
    {
        return Ok(img);
    }

    progress(&format!("packing the initramfs of {name} ({key})"));
    let staging = Staging::new(&cache.join("tmp"), &format!("image-{name}"))?;
    let kernel_src = kernel_root.join(format!("boot/vmlinuz-{}", pkgs.release));
    std::fs::copy(&kernel_src, staging.path().join("vmlinuz"))
        .map_err(|e| ImageError::io(&kernel_src, e))?;
    let init = &binaries
        .iter()
        .find(|(n, _)| n == "bw-init")
        .expect("bw-init is required")
        .1;
    let packed_bins: Vec<(String, PathBuf)> = binaries
        .iter()
        .filter(|(n, _)| GUEST_BINARIES.contains(&n.as_str()))
        .cloned()
        .collect();
    let modules = initramfs::write(
        &staging.path().join("initramfs.cpio"),
        &Contents {
            kernel_root: &kernel_root,
            release: &pkgs.release,
            modules: &def.modules,
            init,
            binaries: &packed_bins,
            busybox,
            bwsnap: bwsnap.as_ref().map(|(ko, _)| ko.as_path()),
        },
    )?;
    let bw_target = binaries
        .iter()
        .find(|(n, _)| n == "bw-target")
        .expect("bw-target is required")
        .1
        .clone();
    // The image keeps its own copy, so a later cargo build cannot change a cached image.
    std::fs::copy(&bw_target, staging.path().join("bw-target"))
        .map_err(|e| ImageError::io(&bw_target, e))?;
    let image = BuiltImage {
        name: name.to_string(),
        key: key.clone(),
        kernel_release: pkgs.release.clone(),
        packages: fetched,
        modules,
        boot_modules: def.boot_modules.clone(),
        bwsnap_sha256,
        bwsnap_build_log: bwsnap.as_ref().map(|(_, log)| log.clone()),
        binaries: binary_hashes,
        busybox_sha256,
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio"),
        headers_dir: kernel_root.join(format!("usr/src/linux-headers-{}", pkgs.release)),
        bw_target: dir.join("bw-target"),
        built_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let json = serde_json::to_vec_pretty(&image).expect("serializable");
    std::fs::write(staging.path().join("image.json"), json)
        .map_err(|e| ImageError::io(staging.path(), e))?;
    staging.persist(&dir)?;
    Ok(image)
}

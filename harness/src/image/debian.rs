//! Debian kernels from the archive, never installed: resolve a meta-package to the exact
//! kernel and header packages, `apt-get download` them into the cache, check their
//! sha256 against the archive's, and `dpkg -x` them into one root per kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{run_logged, ImageError, Staging};

/// One package record from the apt lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageInfo {
    pub package: String,
    pub version: String,
    /// sha256 of the .deb as the archive lists it.
    pub sha256: String,
    pub depends: Vec<String>,
}

/// A fetched .deb, with the hash we measured.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchedPackage {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

/// The exact packages behind an image's meta-packages.
#[derive(Clone, Debug)]
pub struct KernelPackages {
    /// e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub image: PackageInfo,
    /// Arch headers, -common headers and kbuild, in that order.
    pub headers: Vec<PackageInfo>,
}

/// Parses `apt-cache show` output: the first stanza only.
pub fn parse_stanza(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with(' ') {
            if let Some(key) = &last {
                let v: &mut String = fields.get_mut(key).expect("continued field exists");
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.to_string(), v.trim().to_string());
            last = Some(k.to_string());
        }
    }
    fields
}

/// The package names of a Depends field, first alternative of each, without versions.
pub fn depends_names(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first.split_whitespace().next()?;
            Some(name.to_string())
        })
        .collect()
}

/// The candidate record of `package` in the apt lists.
pub fn show(package: &str) -> Result<PackageInfo, ImageError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "apt-cache".into(),
            source: e,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields = parse_stanza(&text);
    if !out.status.success() || fields.get("Package").map(String::as_str) != Some(package) {
        return Err(ImageError::PackageUnknown {
            package: package.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(PackageInfo {
        package: package.to_string(),
        version: fields.get("Version").cloned().unwrap_or_default(),
        sha256: fields.get("SHA256").cloned().unwrap_or_default(),
        depends: depends_names(fields.get("Depends").map(String::as_str).unwrap_or("")),
    })
}

/// Follows the kernel and headers meta-packages to the exact packages.
pub fn resolve(kernel_meta: &str, headers_meta: &str) -> Result<KernelPackages, ImageError> {
    let meta = show(kernel_meta)?;
    let image_name = meta
        .depends
        .iter()
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| {
            ImageError::Resolve(format!("{kernel_meta} depends on no linux-image-* package"))
        })?;
    let image = show(image_name)?;
    let release = image_name
        .strip_prefix("linux-image-")
        .expect("checked prefix")
        .trim_end_matches("-unsigned")
        .to_string();

    let hmeta = show(headers_meta)?;
    let arch_name = hmeta
        .depends
        .iter()
        .find(|d| d.starts_with("linux-headers-"))
        .ok_or_else(|| {
            ImageError::Resolve(format!(
                "{headers_meta} depends on no linux-headers-* package"
            ))
        })?;
    let arch = show(arch_name)?;
    if arch_name != &format!("linux-headers-{release}") {
        return Err(ImageError::Resolve(format!(
            "{kernel_meta} resolves to {image_name} but {headers_meta} to {arch_name}: \
             the archive is mid-update; run `apt-get update` and build again"
        )));
    }
    let mut headers = vec![arch.clone()];
    for dep in &arch.depends {
        if dep.starts_with("linux-headers-") || dep.starts_with("linux-kbuild-") {
            headers.push(show(dep)?);
        }
    }
    if image.version != arch.version {
        return Err(ImageError::Resolve(format!(
            "{image_name} is {} but {arch_name} is {}",
            image.version, arch.version
        )));
    }
    Ok(KernelPackages {
        release,
        image,
        headers,
    })
}

/// Whether this process already refreshed the apt lists: `apt-get update` runs at most
/// once per process, so a package that is still missing afterwards is an error, not a loop.
static LISTS_REFRESHED: Mutex<bool> = Mutex::new(false);

/// Whether this process has refreshed the apt lists.
pub fn lists_refreshed() -> bool {
    *LISTS_REFRESHED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `err` may be cured by fresher apt lists: a package the lists do not name yet
/// (lists older than the kernel), a meta-package pair caught mid-update, or a version the
/// archive no longer serves (lists older than the archive).
pub fn stale_lists(err: &ImageError) -> bool {
    match err {
        ImageError::PackageUnknown { .. }
        | ImageError::Resolve(_)
        | ImageError::Download { .. } => true,
        ImageError::UnknownImage { .. }
        | ImageError::BadDefinition { .. }
        | ImageError::Unpack { .. }
        | ImageError::Kmod { .. }
        | ImageError::Cargo { .. }
        | ImageError::Invalid { .. }
        | ImageError::Tool { .. }
        | ImageError::Io { .. }
        | ImageError::ListsNeedRoot { .. }
        | ImageError::Missing(_) => false,
    }
}

/// Runs `apt-get update` once per process (as root) because `cause` says the lists are
/// stale. Returns false when it already ran, so the caller reports `cause` as it is.
pub fn refresh_lists(cause: &ImageError) -> Result<bool, ImageError> {
    let mut refreshed = LISTS_REFRESHED.lock().unwrap_or_else(|p| p.into_inner());
    if *refreshed {
        return Ok(false);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::ListsNeedRoot {
            cause: cause.to_string(),
        });
    }
    let out = Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "apt-get".into(),
            source: e,
        })?;
    *refreshed = true;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(ImageError::Resolve(format!(
            "the apt lists looked stale ({cause}) and `apt-get update` failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    Ok(true)
}

/// Runs `step` (a resolution or a download); when it fails because the apt lists are
/// stale, refreshes them once (as root) and runs it again. `progress` hears about the
/// refresh, which takes a while.
pub fn with_fresh_lists<T>(
    progress: &mut dyn FnMut(&str),
    mut step: impl FnMut(&mut dyn FnMut(&str)) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    match step(progress) {
        Err(e) if stale_lists(&e) => {
            progress(&format!("{e}: running `apt-get update` once and retrying"));
            if refresh_lists(&e)? {
                step(progress)
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Downloads `pkg` into `debs` (kept there as a cache) and checks its hash.
pub fn fetch(
    pkg: &PackageInfo,
    debs: &Path,
    staging_root: &Path,
) -> Result<(PathBuf, FetchedPackage), ImageError> {
    std::fs::create_dir_all(debs).map_err(|e| ImageError::io(debs, e))?;
    let prefix = format!("{}_{}_", pkg.package, pkg.version.replace(':', "%3a"));
    let existing = std::fs::read_dir(debs)
        .map_err(|e| ImageError::io(debs, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .map(|n| {
                    n.to_string_lossy().starts_with(&prefix)
                        && n.to_string_lossy().ends_with(".deb")
                })
                .unwrap_or(false)
        });
    let path = match existing {
        Some(p) => p,
        None => {
            let staging = Staging::new(staging_root, "download")?;
            let spec = format!("{}={}", pkg.package, pkg.version);
            let log = staging.path().join("apt-get.log");
            run_logged(
                Command::new("apt-get")
                    .args(["download", &spec])
                    .current_dir(staging.path()),
                &log,
            )
            .map_err(|e| ImageError::Download {
                package: spec.clone(),
                detail: e.to_string(),
            })?;
            let deb = std::fs::read_dir(staging.path())
                .map_err(|e| ImageError::io(staging.path(), e))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or_else(|| ImageError::Download {
                    package: spec.clone(),
                    detail: "apt-get download produced no .deb".into(),
                })?;
            let dest = debs.join(deb.file_name().expect("a file"));
            std::fs::rename(&deb, &dest).map_err(|e| ImageError::io(&dest, e))?;
            dest
        }
    };
    let sha256 = sha256_file(&path).map_err(|e| ImageError::io(&path, e))?;
    if !pkg.sha256.is_empty() && sha256 != pkg.sha256 {
        let _ = std::fs::remove_file(&path);
        return Err(ImageError::Download {
            package: pkg.package.clone(),
            detail: format!(
                "sha256 {sha256} does not match the archive's {}; the file was removed, build again",
                pkg.sha256
            ),
        });
    }
    Ok((
        path,
        FetchedPackage {
            package: pkg.package.clone(),
            version: pkg.version.clone(),
            sha256,
        },
    ))
}

/// Unpacks the packages into `root` and makes the headers usable from there: their
/// Makefile includes the -common tree by absolute /usr/src path, which is rewritten to
/// the cache; `depmod` indexes the modules (Debian does that at install time).
pub fn unpack(debs: &[PathBuf], root: &Path, release: &str) -> Result<(), ImageError> {
    for deb in debs {
        run_logged(
            Command::new("dpkg").arg("-x").arg(deb).arg(root),
            &root.with_extension("dpkg.log"),
        )
        .map_err(|e| ImageError::Unpack {
            package: deb.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    let _ = std::fs::remove_file(root.with_extension("dpkg.log"));
    let makefile = root.join(format!("usr/src/linux-headers-{release}/Makefile"));
    let text = std::fs::read_to_string(&makefile).map_err(|e| ImageError::io(&makefile, e))?;
    let fixed = text.replace(
        "include /usr/src/",
        &format!("include {}/usr/src/", root.display()),
    );
    std::fs::write(&makefile, fixed).map_err(|e| ImageError::io(&makefile, e))?;
    let modules = root.join("lib/modules").join(release);
    if !modules.is_dir() {
        return Err(ImageError::Resolve(format!(
            "the kernel package has no lib/modules/{release}"
        )));
    }
    run_logged(
        Command::new("depmod").arg("-b").arg(root).arg(release),
        &root.with_extension("depmod.log"),
    )
    .map_err(|e| ImageError::Unpack {
        package: format!("depmod for {release}"),
        detail: e.to_string(),
    })?;
    let _ = std::fs::remove_file(root.with_extension("depmod.log"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_and_depends() {
        let text = "Package: linux-headers-6.1.0-56-amd64\nVersion: 6.1.192-2\n\
Depends: linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), \
linux-compiler-gcc-12-x86 (>= 6.1.192-2)\nSHA256: abcd\nDescription: x\n more\n\nPackage: other\n";
        let f = parse_stanza(text);
        assert_eq!(f["Version"], "6.1.192-2");
        assert_eq!(f["Description"], "x\nmore");
        assert_eq!(
            depends_names(&f["Depends"]),
            [
                "linux-headers-6.1.0-56-common",
                "linux-kbuild-6.1",
                "linux-compiler-gcc-12-x86"
            ]
        );
        assert_eq!(
            depends_names("linux-image-6.12.117+deb12-amd64 | linux-image-6.12.117+deb12-amd64-unsigned (= 1)"),
            ["linux-image-6.12.117+deb12-amd64"]
        );
    }
}

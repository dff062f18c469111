//! Where things live: the project checkout, the cache of kernels and images, reports.

use std::path::PathBuf;

/// The project checkout: `BLOCKWITNESS_ROOT`, else the workspace this binary was built
/// from.
pub fn project_root() -> PathBuf {
    if let Some(root) = std::env::var_os("BLOCKWITNESS_ROOT") {
        return PathBuf::from(root);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cache of fetched kernels, built modules and images: `BLOCKWITNESS_CACHE`, else
/// `$XDG_CACHE_HOME/blockwitness`, else `~/.cache/blockwitness`. It survives
/// `cargo clean`; deleting it only costs a refetch.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BLOCKWITNESS_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("blockwitness");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/blockwitness"),
        None => project_root().join("target/blockwitness-cache"),
    }
}

/// Where runs write `reports/<run-id>/`: `BLOCKWITNESS_REPORTS`, else `<root>/reports`.
pub fn reports_dir() -> PathBuf {
    std::env::var_os("BLOCKWITNESS_REPORTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("reports"))
}

/// The image definitions folder.
pub fn images_dir() -> PathBuf {
    project_root().join("images")
}

/// The scenarios folder.
pub fn scenarios_dir() -> PathBuf {
    project_root().join("scenarios")
}

//! Shared set-up for the VM tests: the image (built once per test process), the
//! accelerator decision, and scratch directories under the cache.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use blockwitness::accel::{self, AccelChoice};
use blockwitness::image::{self, BuildOptions, BuiltImage};
use blockwitness::paths;
use blockwitness::qemu::{Accel, Disk, DiskFormat};
use blockwitness::run::disks;

/// Builds (or finds in the cache) image `name`, once per process.
pub fn image(name: &str) -> &'static BuiltImage {
    static IMAGES: OnceLock<std::sync::Mutex<Vec<&'static BuiltImage>>> = OnceLock::new();
    let images = IMAGES.get_or_init(Default::default);
    let mut images = images.lock().unwrap();
    if let Some(img) = images.iter().find(|i| i.name == name) {
        return img;
    }
    let opts = BuildOptions {
        cache: paths::cache_dir(),
        project_root: paths::project_root(),
        with_bwsnap: true,
    };
    let img = image::build(name, &opts, &mut |s| eprintln!("image {name}: {s}"))
        .unwrap_or_else(|e| panic!("building image {name}: {}", error_chain(&e)));
    let img: &'static BuiltImage = Box::leak(Box::new(img));
    images.push(img);
    img
}

/// The accelerator for VM tests: `BW_ACCEL` (auto, kvm, tcg), default auto.
pub fn accel(img: &BuiltImage) -> Accel {
    let choice = match std::env::var("BW_ACCEL").as_deref() {
        Ok("kvm") => AccelChoice::Kvm,
        Ok("tcg") => AccelChoice::Tcg,
        _ => AccelChoice::Auto,
    };
    let d = accel::decide(choice, &img.kernel, &img.initramfs, &paths::cache_dir());
    eprintln!("accelerator: {} ({})", d.accel, d.reason);
    d.accel
}

/// A scratch directory, removed at the end of the test.
pub fn scratch(what: &str) -> tempfile::TempDir {
    let base = paths::cache_dir().join("tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(&format!("test-{what}-"))
        .tempdir_in(base)
        .unwrap()
}

/// Creates a raw disk of `mib` MiB with a filesystem made by `mkfs` on the host.
pub fn raw_disk(dir: &Path, id: &str, mib: u64, mkfs: &[&str]) -> Disk {
    let path: PathBuf = dir.join(format!("{id}.raw"));
    disks::make_raw(&path, mib << 20).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    if !mkfs.is_empty() {
        let cmd: Vec<String> = mkfs.iter().map(|a| a.to_string()).collect();
        disks::mkfs(&cmd, &path).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    }
    Disk::new(id, path, DiskFormat::Raw)
}

pub use blockwitness::error_chain;

//! Stale apt lists on a fresh machine: `blockwitness images resolve` (what `setup` and
//! every image build do first) runs `apt-get update` once when a kernel package is not in
//! the lists, then resolves. apt-cache and apt-get are stand-ins on PATH that only know
//! the kernel after an "update".

use std::path::Path;
use std::process::Command;

const APT_CACHE: &str = r#"#!/bin/sh
# apt-cache show --no-all-versions PKG
here=$(dirname "$0")
pkg="$3"
stanza() { printf 'Package: %s\nVersion: %s\n%s\n' "$1" "$2" "$3"; }
case "$pkg" in
linux-image-fake)
    [ -e "$here/../updated" ] || { echo "E: No packages found" >&2; exit 100; }
    stanza "$pkg" 1 "Depends: linux-image-6.99.0-1-amd64 (= 6.99.1-1)" ;;
linux-image-moving)
    # The old lists name an older kernel; the refreshed ones the newer.
    if [ -e "$here/../updated" ]; then
        stanza "$pkg" 1 "Depends: linux-image-6.99.0-1-amd64 (= 6.99.1-1)"
    else
        stanza "$pkg" 1 "Depends: linux-image-6.98.0-1-amd64 (= 6.98.1-1)"
    fi ;;
linux-image-6.98.0-1-amd64) stanza "$pkg" 6.98.1-1 "SHA256: 00" ;;
linux-image-6.99.0-1-amd64) stanza "$pkg" 6.99.1-1 "SHA256: 00" ;;
linux-headers-fake) stanza "$pkg" 1 "Depends: linux-headers-6.99.0-1-amd64 (= 6.99.1-1)" ;;
linux-headers-6.99.0-1-amd64)
    stanza "$pkg" 6.99.1-1 "Depends: linux-headers-6.99.0-1-common (= 6.99.1-1), linux-kbuild-6.99" ;;
linux-headers-6.99.0-1-common|linux-kbuild-6.99) stanza "$pkg" 6.99.1-1 "" ;;
*) echo "E: No packages found" >&2; exit 100 ;;
esac
"#;

const APT_GET: &str = r#"#!/bin/sh
here=$(dirname "$0")
echo "$*" >> "$here/../apt-get.log"
[ "$1" = update ] && touch "$here/../updated"
exit 0
"#;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A project root with one image definition and a PATH whose apt tools are stand-ins.
fn fake_host(dir: &Path, kernel: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, text) in [("apt-cache", APT_CACHE), ("apt-get", APT_GET)] {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(dir.join("root/images")).unwrap();
    std::fs::write(
        dir.join("root/images/fake.toml"),
        format!(
            "name = \"fake\"\ndescription = \"x\"\nkernel = \"{kernel}\"\n\
             headers = \"linux-headers-fake\"\nmodules = []\nboot_modules = []\n"
        ),
    )
    .unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn resolve(dir: &Path, path: &str) -> std::process::Output {
    resolve_images(dir, path, &["fake"])
}

fn resolve_images(dir: &Path, path: &str, names: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blockwitness"))
        .args(["images", "resolve"])
        .args(names)
        .env("PATH", path)
        .env("BLOCKWITNESS_ROOT", dir.join("root"))
        .env("BLOCKWITNESS_CACHE", dir.join("cache"))
        .output()
        .unwrap()
}

fn apt_get_calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("apt-get.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn stale_lists_are_refreshed_once_then_the_kernel_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_host(dir.path(), "linux-image-fake");
    let out = resolve(dir.path(), &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !is_root() {
        // The refresh itself needs root: CI must measure it.
        crate::cannot_run("the apt-get update retry needs root");
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("needs root"), "{stderr}");
        assert!(apt_get_calls(dir.path()).is_empty());
        return;
    }
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    assert_eq!(stdout.trim(), "fake\t6.99.0-1-amd64\t6.99.1-1");
    assert_eq!(apt_get_calls(dir.path()), ["update -q"]);
    assert!(stderr.contains("not in the apt lists"), "{stderr}");
}

#[test]
fn a_package_missing_after_the_refresh_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_host(dir.path(), "linux-image-never");
    let out = resolve(dir.path(), &path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("linux-image-never"), "{stderr}");
    // At most one update, never a loop.
    assert!(apt_get_calls(dir.path()).len() <= 1);
}

#[test]
fn images_resolved_before_a_refresh_are_resolved_again_from_the_new_lists() {
    if !is_root() {
        crate::cannot_run("the apt-get update retry needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = fake_host(dir.path(), "linux-image-fake");
    std::fs::write(
        dir.path().join("root/images/a-moving.toml"),
        "name = \"a-moving\"\ndescription = \"x\"\nkernel = \"linux-image-moving\"\n\
         headers = \"linux-headers-fake\"\nmodules = []\nboot_modules = []\n",
    )
    .unwrap();
    // a-moving resolves from the old lists first (to 6.98), then fake finds them stale.
    let out = resolve_images(dir.path(), &path, &["a-moving", "fake"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "a-moving\t6.99.0-1-amd64\t6.99.1-1",
            "fake\t6.99.0-1-amd64\t6.99.1-1"
        ],
        "{stderr}"
    );
    assert_eq!(apt_get_calls(dir.path()), ["update -q"]);
}

//! The guest test tools of kmod/ (the static `bwtool` helper and the shell scripts of
//! kmod/tests/guest), which reach a guest on a small read-only ext4 "tools" disk built on
//! the host, so the image stays as it is. The kmod VM tests (harness/tests/kmod.rs) and
//! `bench cow` use it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{run_logged, CommandFailed};
use crate::guest::{Guest, GuestError};
use crate::qemu::{Disk, DiskFormat};

/// Where the tools disk is mounted in the guest: `bwtool` at the top, the scripts of
/// kmod/tests/guest under `guest/`.
pub const TOOLS_MOUNT: &str = "/tools";
/// The tools disk's id (its serial is `bw-tools`).
pub const TOOLS_ID: &str = "tools";

/// Why the tools disk could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("building the guest tools")]
    Command(#[from] CommandFailed),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ToolsError + '_ {
    move |source| ToolsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds the tools disk in `dir`: `bwtool` compiled static from
/// kmod/tests/tools/bwtool.c, `iobench` from witness-disk/tools/iobench.c, and
/// kmod/tests/guest/*.sh, on an 8 MiB ext4 image made
/// with `mkfs.ext4 -d`. Attached read-only.
pub fn tools_disk(project_root: &Path, dir: &Path) -> Result<Disk, ToolsError> {
    let tests = project_root.join("kmod/tests");
    let tree = dir.join("tools-tree");
    let scripts = tree.join("guest");
    std::fs::create_dir_all(&scripts).map_err(io_err(&scripts))?;
    run_logged(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(tree.join("bwtool"))
            .arg(tests.join("tools/bwtool.c")),
        &dir.join("bwtool-build.log"),
    )?;
    run_logged(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(tree.join("iobench"))
            .arg(project_root.join("witness-disk/tools/iobench.c")),
        &dir.join("iobench-build.log"),
    )?;
    let guest_dir = tests.join("guest");
    for entry in std::fs::read_dir(&guest_dir).map_err(io_err(&guest_dir))? {
        let path = entry.map_err(io_err(&guest_dir))?.path();
        if path.extension().is_some_and(|e| e == "sh") {
            let dest = scripts.join(path.file_name().expect("a file has a name"));
            std::fs::copy(&path, &dest).map_err(io_err(&dest))?;
        }
    }
    let image = dir.join("tools.raw");
    let file = std::fs::File::create(&image).map_err(io_err(&image))?;
    file.set_len(8 << 20).map_err(io_err(&image))?;
    run_logged(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal", "-L", "bw-tools", "-d"])
            .arg(&tree)
            .arg(&image),
        &dir.join("tools-mkfs.log"),
    )?;
    Ok(Disk {
        read_only: true,
        ..Disk::new(TOOLS_ID, image, DiskFormat::Raw)
    })
}

/// The guest's device name (`vdX`) of the disk with serial `serial`.
pub fn guest_dev(guest: &mut Guest, serial: &str) -> Result<String, GuestError> {
    let out = guest.sh(
        &format!("grep -lx '{serial}' /sys/block/vd*/serial | cut -d/ -f4"),
        Duration::from_secs(30),
    )?;
    match out.lines().next() {
        Some(dev) if !dev.is_empty() => Ok(dev.to_string()),
        _ => Err(GuestError::Failed {
            command: format!("find the disk with serial {serial}"),
            how: "no such disk in the guest".into(),
        }),
    }
}

/// Mounts the tools disk read-only on [`TOOLS_MOUNT`].
pub fn mount_tools(guest: &mut Guest) -> Result<(), GuestError> {
    let dev = guest_dev(guest, &Disk::serial_of(TOOLS_ID))?;
    guest.sh(
        &format!("mkdir -p {TOOLS_MOUNT} && mount -t ext4 -o ro /dev/{dev} {TOOLS_MOUNT}"),
        Duration::from_secs(30),
    )?;
    Ok(())
}

/// A shell command line that runs kmod/tests/guest/`script` (with `args`) from the
/// tools disk, `bwtool` on the PATH and `env` (NAME=value words) set.
pub fn script_command(script: &str, args: &str, env: &str) -> String {
    format!("cd {TOOLS_MOUNT}/guest && PATH={TOOLS_MOUNT}:$PATH {env} sh ./{script} {args}")
}

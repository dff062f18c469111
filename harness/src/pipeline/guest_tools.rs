//! The guest userland of the built-in pipelines: Debian's `dmsetup`, `lvm`, the
//! thin-provisioning-tools and the mkfs programs, taken from the host (installed by
//! `blockwitness setup`) with their libraries, and the configuration they need in an
//! initramfs without udev.

use crate::image::userland::{find_program, Userland, UserlandError};

/// LVM in a guest without udev, lvmetad or a devices file: it creates its own device
/// nodes, scans only the virtio disks (never the dm devices it makes), keeps no metadata
/// backups (the initramfs is thrown away) and never extends a thin pool on its own.
pub const LVM_CONF: &str = r#"# Written by blockwitness for a guest without udev.
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
    scan = [ "/dev" ]
    global_filter = [ "a|^/dev/vd[a-z]+$|", "r|.*|" ]
    multipath_component_detection = 0
    md_component_detection = 0
    fw_raid_component_detection = 0
}
global {
    use_lvmlockd = 0
    locking_dir = "/run/lock/lvm"
    event_activation = 0
    thin_check_executable = "/usr/sbin/thin_check"
    thin_check_options = [ "-q", "--clear-needs-check-flag" ]
}
activation {
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 1
    monitoring = 0
    thin_pool_autoextend_threshold = 100
    snapshot_autoextend_threshold = 100
}
backup {
    backup = 0
    archive = 0
}
"#;

/// dmsetup alone (the dm-snapshot pipeline).
pub fn dm_userland() -> Result<Userland, UserlandError> {
    let mut u = Userland::new();
    u.host_program("dmsetup", "dmsetup")?;
    Ok(u)
}

/// The thin-provisioning-tools programs the LVM pipeline uses (one multi-call binary).
const PDATA: &[&str] = &["thin_check", "thin_delta", "thin_dump", "thin_repair"];

/// lvm, dmsetup, the thin tools and mkfs (LVM volumes are made in the guest).
pub fn lvm_userland() -> Result<Userland, UserlandError> {
    let mut u = dm_userland()?;
    u.host_program("lvm", "lvm2")?;
    let pdata = u.host_program("pdata_tools", "thin-provisioning-tools")?;
    let dir = pdata
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "/usr/sbin".into());
    for tool in PDATA {
        u.symlink(&format!("{dir}/{tool}"), "pdata_tools")?;
    }
    if dir != "/usr/sbin" {
        for tool in PDATA {
            u.symlink(&format!("/usr/sbin/{tool}"), &format!("{dir}/pdata_tools"))?;
        }
    }
    // mkfs under /usr/sbin whatever the host's PATH found: the run calls them there
    // (busybox's applets in /bin would shadow them on the PATH).
    for (name, package) in [("mke2fs", "e2fsprogs"), ("mkfs.xfs", "xfsprogs")] {
        let found = find_program(name).ok_or_else(|| UserlandError::MissingProgram {
            program: name.into(),
            package: package.into(),
        })?;
        u.program(&found, &format!("/usr/sbin/{name}"))?;
    }
    for name in ["mkfs.ext2", "mkfs.ext4"] {
        u.symlink(&format!("/usr/sbin/{name}"), "mke2fs")?;
    }
    if let Ok(conf) = std::fs::read("/etc/mke2fs.conf") {
        // The same features as the host's mkfs makes for the other pipelines.
        u.bytes("/etc/mke2fs.conf", &conf, 0o644)?;
    }
    // Its locking directory is under /run, a tmpfs bw-init mounts: made at setup.
    u.bytes("/etc/lvm/lvm.conf", LVM_CONF.as_bytes(), 0o644)?;
    Ok(u)
}

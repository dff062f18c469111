//! Finding block devices without ever hanging on one.
//!
//! Every probe that opens a device runs in a child process (this same binary, re-executed
//! with a hidden subcommand) that is abandoned after a timeout: a process stuck in
//! uninterruptible sleep on a dead device cannot be killed, but it need not be waited
//! for. Floppy drives (major 2) are not probed at all by default: probing one is the
//! classic way to hang a backup agent. Everything skipped is listed with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Major number of floppy drives.
pub const FLOPPY_MAJOR: u32 = 2;

/// A block device found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// e.g. `vdb`, `vda1`.
    pub name: String,
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: u64,
    /// Filesystem type: from the mount table when mounted, else from a probe.
    pub fs_type: Option<String>,
    pub mount_points: Vec<PathBuf>,
    /// /sys/block/<disk>/serial, when the device has one.
    pub serial: Option<String>,
    pub read_only: bool,
}

/// A device left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// The result of a discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    pub devices: Vec<Device>,
    pub skipped: Vec<Skipped>,
}

/// How to discover.
#[derive(Clone, Debug)]
pub struct Options {
    /// Probe floppy drives too (off by default).
    pub probe_floppy: bool,
    /// Longest a single device probe may take before it is abandoned.
    pub probe_timeout: Duration,
    /// Where sysfs and procfs are (tests point these at fixtures).
    pub sys: PathBuf,
    pub mountinfo: PathBuf,
    /// Program to run for a probe (`<prog> __probe <device>`); None: probe in-process
    /// only from the mount table (no device is opened).
    pub prober: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            probe_floppy: false,
            probe_timeout: Duration::from_secs(3),
            sys: PathBuf::from("/sys"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            prober: std::env::current_exe().ok(),
        }
    }
}

/// A mount table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/self/mountinfo.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let (left, right) = match line.split_once(" - ") {
            Some(p) => p,
            None => continue,
        };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        if l.len() < 5 || r.len() < 2 {
            continue;
        }
        let Some((major, minor)) = l[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        out.push(Mount {
            major,
            minor,
            mount_point: PathBuf::from(unescape(l[4])),
            fs_type: r[0].to_string(),
            source: unescape(r[1]),
        });
    }
    out
}

/// The mount table of this process.
pub fn mounts(mountinfo: &Path) -> std::io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(mountinfo)?))
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Names of the filesystem whose superblock is in `head` (the first 64 KiB of a device).
pub fn identify(head: &[u8]) -> Option<&'static str> {
    if head.len() >= 4 && &head[0..4] == b"XFSB" {
        return Some("xfs");
    }
    // ext2/3/4: superblock at 1024, magic 0xEF53 at offset 56 within it.
    if head.len() >= 1024 + 104 && head[1024 + 56] == 0x53 && head[1024 + 57] == 0xef {
        let le32 = |o: usize| u32::from_le_bytes(head[1024 + o..1024 + o + 4].try_into().unwrap());
        let compat = le32(92);
        let incompat = le32(96);
        let has_journal = compat & 0x4 != 0;
        // extents, 64bit, flex_bg
        let ext4_only = incompat & (0x40 | 0x80 | 0x200) != 0;
        return Some(if ext4_only {
            "ext4"
        } else if has_journal {
            "ext3"
        } else {
            "ext2"
        });
    }
    None
}

/// Runs in the probe child: opens the device read-only, reads its head, prints the
/// filesystem type (or nothing). Called by `bw-agent __probe DEVICE`.
pub fn probe_child(device: &Path) -> std::io::Result<Option<&'static str>> {
    use std::io::Read;
    let mut f = std::fs::File::open(device)?;
    let mut head = vec![0u8; 65536];
    let mut got = 0;
    while got < head.len() {
        let n = f.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(identify(&head[..got]))
}

/// The outcome of probing one device in a child process.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    Found(Option<String>),
    Failed(String),
    TimedOut,
}

/// Probes `device` with `prober __probe DEVICE`, abandoning it after `timeout`.
pub fn probe_in_child(prober: &Path, device: &Path, timeout: Duration) -> Probe {
    let mut child = match Command::new(prober)
        .arg("__probe")
        .arg(device)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Probe::Failed(format!("cannot start the probe: {e}")),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                let mut err = String::new();
                use std::io::Read;
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return if status.success() {
                    let t = out.trim();
                    Probe::Found((!t.is_empty()).then(|| t.to_string()))
                } else {
                    Probe::Failed(err.trim().to_string())
                };
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                // It may be in uninterruptible sleep: SIGKILL is queued and the child is
                // left behind (its parent-to-be, init, reaps it if it ever wakes).
                let _ = child.kill();
                return Probe::TimedOut;
            }
        }
    }
}

/// Lists block devices (whole disks and partitions).
pub fn discover(opts: &Options) -> Discovery {
    let mut result = Discovery::default();
    let mounts = mounts(&opts.mountinfo).unwrap_or_default();
    let block = opts.sys.join("block");
    let mut disks: Vec<PathBuf> = std::fs::read_dir(&block)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    disks.sort();
    for disk in disks {
        let disk_name = disk
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let serial = read_trim(&disk.join("serial"));
        let mut nodes = vec![disk.clone()];
        let mut parts: Vec<PathBuf> = std::fs::read_dir(&disk)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("partition").exists())
                    .collect()
            })
            .unwrap_or_default();
        parts.sort();
        nodes.extend(parts);
        for node in nodes {
            let name = node
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Some((major, minor)) = read_trim(&node.join("dev")).and_then(|d| {
                let (a, b) = d.split_once(':')?;
                Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
            }) else {
                result.skipped.push(Skipped {
                    name,
                    reason: "no device number in sysfs".into(),
                });
                continue;
            };
            let size_bytes = read_trim(&node.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                * 512;
            let path = PathBuf::from("/dev").join(&name);
            if major == FLOPPY_MAJOR && !opts.probe_floppy {
                result.skipped.push(Skipped {
                    name,
                    reason: "floppy drive (major 2): probing one can hang in uninterruptible \
                             sleep; pass --probe-floppy to probe it"
                        .into(),
                });
                continue;
            }
            if size_bytes == 0 {
                result.skipped.push(Skipped {
                    name,
                    reason: "size 0 (no media)".into(),
                });
                continue;
            }
            let mounted: Vec<&Mount> = mounts
                .iter()
                .filter(|m| m.major == major && m.minor == minor)
                .collect();
            let fs_type = if let Some(m) = mounted.first() {
                Some(m.fs_type.clone())
            } else if let Some(prober) = &opts.prober {
                match probe_in_child(prober, &path, opts.probe_timeout) {
                    Probe::Found(t) => t,
                    Probe::Failed(why) => {
                        result.skipped.push(Skipped {
                            name,
                            reason: format!("probe failed: {why}"),
                        });
                        continue;
                    }
                    Probe::TimedOut => {
                        result.skipped.push(Skipped {
                            name,
                            reason: format!(
                                "did not answer a probe within {:?} (device not responding); \
                                 the probe was abandoned",
                                opts.probe_timeout
                            ),
                        });
                        continue;
                    }
                }
            } else {
                None
            };
            result.devices.push(Device {
                name,
                path,
                major,
                minor,
                size_bytes,
                fs_type,
                mount_points: mounted.iter().map(|m| m.mount_point.clone()).collect(),
                serial: serial.clone(),
                read_only: read_trim(&node.join("ro")).as_deref() == Some("1"),
            });
        }
        let _ = disk_name;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields() {
        let text = "\
22 1 0:5 / /dev rw - devtmpfs devtmpfs rw
30 1 254:16 / /mnt/data rw,relatime - ext4 /dev/vdb rw
31 1 254:32 / /mnt/with\\040space rw - ext2 /dev/vdc rw
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!((m[1].major, m[1].minor), (254, 16));
        assert_eq!(m[1].mount_point, Path::new("/mnt/data"));
        assert_eq!(m[1].fs_type, "ext4");
        assert_eq!(m[2].mount_point, Path::new("/mnt/with space"));
    }

    fn ext_head(compat: u32, incompat: u32) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[1024 + 56] = 0x53;
        h[1024 + 57] = 0xef;
        h[1024 + 92..1024 + 96].copy_from_slice(&compat.to_le_bytes());
        h[1024 + 96..1024 + 100].copy_from_slice(&incompat.to_le_bytes());
        h
    }

    #[test]
    fn identifies_filesystems() {
        assert_eq!(identify(&ext_head(0, 0)), Some("ext2"));
        assert_eq!(identify(&ext_head(4, 0)), Some("ext3"));
        assert_eq!(identify(&ext_head(4, 0x40)), Some("ext4"));
        let mut xfs = vec![0u8; 512];
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(identify(&xfs), Some("xfs"));
        assert_eq!(identify(&[0u8; 4096]), None);
    }

    fn fake_sys(root: &Path, name: &str, dev: &str, sectors: u64) {
        let d = root.join("block").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        std::fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
    }

    #[test]
    fn skips_floppies_and_empty_devices_with_a_reason() {
        let sys = tempfile::tempdir().unwrap();
        fake_sys(sys.path(), "fd0", "2:0", 2880);
        fake_sys(sys.path(), "sr0", "11:0", 0);
        fake_sys(sys.path(), "vdb", "254:16", 131072);
        std::fs::write(sys.path().join("block/vdb/serial"), "bw-d0\n").unwrap();
        let mi = sys.path().join("mountinfo");
        std::fs::write(&mi, "30 1 254:16 / /mnt/data rw - ext4 /dev/vdb rw\n").unwrap();
        let found = discover(&Options {
            sys: sys.path().into(),
            mountinfo: mi,
            prober: None,
            ..Options::default()
        });
        assert_eq!(found.devices.len(), 1);
        let vdb = &found.devices[0];
        assert_eq!(vdb.size_bytes, 64 << 20);
        assert_eq!(vdb.fs_type.as_deref(), Some("ext4"));
        assert_eq!(vdb.serial.as_deref(), Some("bw-d0"));
        let skipped: Vec<&str> = found.skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(skipped, ["fd0", "sr0"]);
        assert!(found.skipped[0].reason.contains("floppy"));
    }

    #[test]
    fn a_probe_that_never_answers_is_abandoned_in_time() {
        // `sleep` stands in for a probe stuck on a dead device.
        let dir = tempfile::tempdir().unwrap();
        let prober = dir.path().join("stuck");
        std::fs::write(&prober, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prober, std::fs::Permissions::from_mode(0o755)).unwrap();
        let start = Instant::now();
        let r = probe_in_child(&prober, Path::new("/dev/null"), Duration::from_millis(300));
        assert_eq!(r, Probe::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

//! Before the truth is taken, the harness checks the pipeline's instant for itself: the
//! volumes it announced are the ones the run backs up, and each is really frozen.
//!
//! "Frozen" is proven by a write that must block: a `touch -c` of the volume's mount
//! point (a timestamp update: it needs the filesystem's write access, so it waits in
//! `sb_start_write` while the filesystem is frozen). The probe is never waited on with a
//! clock alone, which a slow guest would fool: the harness reads the probe's state from
//! /proc until it is either gone (the write went through: not frozen) or asleep in the
//! freeze (state D, waiting on the superblock's percpu rwsem). It is left blocked and
//! reaped after the backup; its timestamp update lands after the thaw, so it is one more
//! write after the instant, which the snapshot must not show anyway. It creates nothing
//! before the freeze and allocates no data block.

use std::time::{Duration, Instant};

use crate::pipeline::{AnnouncedVolume, GuestVolume, InstantError};
use crate::vm::Vm;

/// How long a probe may take to finish or block. It is a bound on a wait for the guest
/// to schedule a `touch`, not a measure of anything.
const PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// A probe left blocked in a frozen filesystem, to reap after the thaw.
#[derive(Debug)]
pub(super) struct Probe {
    pub volume: String,
    pub handle: u64,
    pub pid_file: String,
}

/// The announced volumes must be exactly the backed-up ones, on the same devices and
/// mount points.
pub(super) fn check_volumes(
    announced: &[AnnouncedVolume],
    backed: &[GuestVolume],
) -> Result<(), InstantError> {
    let mut want: Vec<(String, String, Option<String>)> = backed
        .iter()
        .map(|v| (v.name.clone(), v.device.clone(), v.mount.clone()))
        .collect();
    let mut got: Vec<(String, String, Option<String>)> = announced
        .iter()
        .map(|v| (v.name.clone(), v.device.clone(), v.mount.clone()))
        .collect();
    want.sort();
    got.sort();
    if want == got {
        return Ok(());
    }
    let show = |list: &[(String, String, Option<String>)]| -> String {
        if list.is_empty() {
            return "no volume".into();
        }
        list.iter()
            .map(|(n, d, m)| match m {
                Some(m) => format!("{n} ({d} at {m})"),
                None => format!("{n} ({d})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(InstantError::Volumes {
        announced: show(&got),
        backed: show(&want),
    })
}

/// What the probe's /proc entries say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ProbeState {
    /// Not started yet (no pid file), or running.
    Pending,
    /// Asleep waiting for the frozen filesystem.
    BlockedInFreeze,
}

/// Reads `State:` of /proc/PID/status, then /proc/PID/wchan and /proc/PID/stack, as the
/// probe's state script prints them.
pub(super) fn probe_state(text: &str) -> ProbeState {
    let asleep = text
        .lines()
        .any(|l| l.starts_with("State:") && l.contains("D (disk sleep)"));
    // sb_start_write() is percpu_down_read() on the superblock's freeze rwsem; on 6.1
    // and 6.12 the sleeper shows as percpu_rwsem_wait (wchan) under mnt_want_write.
    let in_freeze = ["percpu_rwsem_wait", "percpu_down_read", "sb_start_write"]
        .iter()
        .any(|f| text.contains(f));
    if asleep && in_freeze {
        ProbeState::BlockedInFreeze
    } else {
        ProbeState::Pending
    }
}

/// Starts a write probe on each mounted volume and waits until each is blocked in the
/// freeze. Blocked probes are pushed to `probes` (also on error) to be reaped.
pub(super) fn probe_frozen(
    vm: &mut Vm,
    volumes: &[GuestVolume],
    backup: u32,
    probes: &mut Vec<Probe>,
) -> Result<(), InstantError> {
    for (i, v) in volumes.iter().enumerate() {
        let Some(mount) = &v.mount else { continue };
        let fail = |detail: String| InstantError::Probe {
            volume: v.name.clone(),
            detail,
        };
        let pid_file = format!("/tmp/bw-freeze-probe-{backup}-{i}.pid");
        let script = format!("echo $$ > {pid_file}; exec /bin/busybox touch -c {mount}");
        let handle = vm
            .guest
            .spawn(&["/bin/busybox", "sh", "-c", &script])
            .map_err(|e| {
                fail(format!(
                    "starting the write probe: {}",
                    crate::error_chain(&e)
                ))
            })?;
        let started = Instant::now();
        loop {
            match vm.guest.wait(handle, Duration::ZERO) {
                Ok(Some(done)) if done.success() => {
                    return Err(InstantError::NotFrozen {
                        volume: v.name.clone(),
                        mount: mount.clone(),
                    })
                }
                Ok(Some(done)) => {
                    return Err(fail(format!("the write probe failed: {}", done.describe())))
                }
                Ok(None) => {}
                Err(e) => return Err(fail(format!("the write probe: {}", crate::error_chain(&e)))),
            }
            let state = vm
                .guest
                .sh(
                    &format!(
                        "p=$(cat {pid_file} 2>/dev/null) || exit 0; grep '^State:' /proc/$p/status 2>/dev/null; cat /proc/$p/wchan 2>/dev/null; echo; cat /proc/$p/stack 2>/dev/null; true"
                    ),
                    Duration::from_secs(10),
                )
                .map_err(|e| fail(format!("reading the probe's state: {}", crate::error_chain(&e))))?;
            if probe_state(&state) == ProbeState::BlockedInFreeze {
                probes.push(Probe {
                    volume: v.name.clone(),
                    handle,
                    pid_file,
                });
                break;
            }
            if started.elapsed() > PROBE_DEADLINE {
                // Leave it to be reaped: it may still block or finish.
                probes.push(Probe {
                    volume: v.name.clone(),
                    handle,
                    pid_file,
                });
                return Err(fail(format!(
                    "the write probe neither finished nor blocked in the freeze within {PROBE_DEADLINE:?} (last state: {})",
                    state.split_whitespace().collect::<Vec<_>>().join(" ")
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// After the backup: every probe must have finished (its write landed after the thaw).
/// Returns notes for the report.
pub(super) fn reap(vm: &mut Vm, probes: Vec<Probe>) -> Vec<String> {
    let mut notes = Vec::new();
    for p in probes {
        if vm.machine.exited().is_some() {
            return notes;
        }
        match vm.guest.wait(p.handle, Duration::from_secs(10)) {
            Ok(Some(_)) => {}
            Ok(None) => notes.push(format!(
                "the write probe of volume {} was still blocked 10 s after the backup: the filesystem stayed frozen",
                p.volume
            )),
            Err(e) => notes.push(format!(
                "the write probe of volume {}: {}",
                p.volume,
                crate::error_chain(&e)
            )),
        }
        let _ = vm.guest.exec(
            &["/bin/busybox", "rm", "-f", &p.pid_file],
            Duration::from_secs(10),
        );
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str, dev: &str, mount: &str) -> GuestVolume {
        GuestVolume {
            name: name.into(),
            disk: dev.into(),
            device: dev.into(),
            mount: Some(mount.into()),
            cow_bytes: 0,
        }
    }

    fn ann(name: &str, dev: &str, mount: &str) -> AnnouncedVolume {
        AnnouncedVolume {
            name: name.into(),
            device: dev.into(),
            mount: Some(mount.into()),
        }
    }

    #[test]
    fn the_announced_volumes_must_be_the_backed_up_ones() {
        let backed = [
            vol("boot", "/dev/vdb", "/boot"),
            vol("data", "/dev/vdc", "/mnt/data"),
        ];
        assert!(check_volumes(
            &[
                ann("data", "/dev/vdc", "/mnt/data"),
                ann("boot", "/dev/vdb", "/boot")
            ],
            &backed
        )
        .is_ok());
        let missing = check_volumes(&[ann("data", "/dev/vdc", "/mnt/data")], &backed)
            .unwrap_err()
            .to_string();
        assert_eq!(
            missing,
            "the pipeline announced data (/dev/vdc at /mnt/data), and the run backs up boot (/dev/vdb at /boot), data (/dev/vdc at /mnt/data)"
        );
        let other_device = check_volumes(
            &[
                ann("data", "/dev/vdd", "/mnt/data"),
                ann("boot", "/dev/vdb", "/boot"),
            ],
            &backed,
        );
        assert!(other_device.is_err());
        assert!(check_volumes(&[], &backed)
            .unwrap_err()
            .to_string()
            .contains("announced no volume"));
    }

    #[test]
    fn a_probe_is_frozen_only_asleep_in_the_freeze() {
        // As read from a frozen ext4 on debian-6.1 (6.12's is the same but for offsets).
        let blocked = "State:\tD (disk sleep)\npercpu_rwsem_wait\n[<0>] percpu_rwsem_wait+0x116/0x140\n[<0>] mnt_want_write+0x8b/0xc0\n[<0>] vfs_utimes+0x22c/0x270\n[<0>] do_utimes+0xe6/0x150\n";
        assert_eq!(probe_state(blocked), ProbeState::BlockedInFreeze);
        // Asleep on something else (the disk itself): not proof of a freeze.
        let io = "State:\tD (disk sleep)\nio_schedule\n[<0>] io_schedule+0x42/0x70\n";
        assert_eq!(probe_state(io), ProbeState::Pending);
        assert_eq!(probe_state("State:\tR (running)\n0\n"), ProbeState::Pending);
        assert_eq!(probe_state(""), ProbeState::Pending);
    }
}

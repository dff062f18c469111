//! The run's witness disks: a `bw-disk` backend per volume when the plan's volumes are
//! witness disks, and the never-answering extra disk (a witness disk with a `hang`
//! fault) in every run that asks for one. This is **where disk faults are injected**:
//! armed at a backup's start (eio, hang, latency) or at its instant (torn), released at
//! its end, each fault's firings counted by its backend (a fault that never fired is a
//! harness error). It also watches the backends (one that dies while the guest runs is
//! a harness error), and at the end reads every history: a summary for the recording,
//! the file for the report, the oracle's input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use witness_disk::faults::{BlockRange, FaultSpec as DiskFault, OpFilter, Times};
use witness_disk::history::{EndReason, Marker};
use witness_disk::{Control, History, Schedule};

use crate::model::FaultKind;
use crate::oracle::input::ContentHash;
use crate::plan::{BackupStep, Plan};
use crate::qemu::{Disk, VhostUserDisk};
use crate::record::DiskRecord;
use crate::scenario::{BlockSpan, FaultSpec, Op};
use crate::truth::WitnessVolume;
use crate::witness::{WitnessDiskSpec, WitnessDisks, WitnessEnd};

use super::disks::HANG_ID;

/// Each control call's deadline.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long backends may take to end after QEMU.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// One disk served by a backend.
struct Served {
    id: String,
    /// The volume it serves; None for the never-answering disk.
    volume: Option<String>,
    image: PathBuf,
    /// Every block's hash before the backend started (a backed-up volume's, for the
    /// oracle).
    initial: Option<Vec<ContentHash>>,
}

/// When a disk fault is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ArmAt {
    /// The backup's start (before its `during` workloads).
    Start,
    /// Its snapshot instant, right after the truth.
    Instant,
}

/// A disk fault armed in a backup.
#[derive(Clone, Debug)]
pub(super) struct Armed {
    pub backup: u32,
    pub kind: FaultKind,
    /// The disk id and the backend's fault id.
    pub disk: String,
    pub fault: u32,
    /// For messages: `eio on volume data`.
    pub label: String,
    /// Firings, from the backend's stats when it was released, else from its history.
    pub fired: Option<u64>,
    pub released: bool,
}

/// The witness disks of one run.
pub(super) struct RunWitness {
    disks: WitnessDisks,
    served: Vec<Served>,
    armed: Vec<Armed>,
    /// Disks the run removed from the guest (their backends may end early).
    removed: Vec<String>,
    schedule: Option<Schedule>,
    /// Backends already reported dead.
    reported: Vec<String>,
    /// The never-answering disk's hang fault, while armed.
    hang_fault: Option<u32>,
}

/// What the run's witness disks left behind.
pub(super) struct Ended {
    /// Harness errors: backends that had to be killed or failed, faults that never
    /// fired, histories that cannot be read.
    pub errors: Vec<String>,
    /// Per served disk: its record for the report and, for a backed-up volume, the
    /// oracle's input (history path and starting hashes).
    pub disks: Vec<EndedDisk>,
    /// Every armed disk fault, in the order armed: its backup, kind and firings (from
    /// the backend's statistics at its release, else from the history).
    pub fired: Vec<(u32, FaultKind, Option<u64>)>,
}

pub(super) struct EndedDisk {
    pub record: DiskRecord,
    pub history: PathBuf,
    pub volume: Option<String>,
    pub initial: Option<Vec<ContentHash>>,
    /// The backend's history could be read in full.
    pub readable: bool,
}

fn op_filter(op: Op) -> OpFilter {
    match op {
        Op::Read => OpFilter::Read,
        Op::Write => OpFilter::Write,
        Op::Both => OpFilter::Both,
    }
}

fn range(span: Option<BlockSpan>) -> Option<BlockRange> {
    span.map(|s| BlockRange {
        start: s.first,
        end: s.first + s.count,
    })
}

/// The backend's fault for a scenario's disk fault, and when it is armed; None for the
/// other layers.
pub(super) fn disk_fault(spec: &FaultSpec, seed: u64) -> Option<(DiskFault, ArmAt)> {
    let times = |once: bool| if once { Times::Once } else { Times::Always };
    Some(match spec {
        FaultSpec::DiskEio { at } => (
            DiskFault::Eio {
                ops: op_filter(at.op),
                blocks: range(at.blocks),
                times: times(at.once),
                after: at.after_requests,
            },
            ArmAt::Start,
        ),
        FaultSpec::DiskHang { at } => (
            DiskFault::Hang {
                ops: op_filter(at.op),
                blocks: range(at.blocks),
                times: times(at.once),
                after: at.after_requests,
            },
            ArmAt::Start,
        ),
        FaultSpec::DiskLatency {
            op, blocks, max_ms, ..
        } => (
            DiskFault::Latency {
                seed,
                max_us: max_ms.saturating_mul(1000),
                ops: op_filter(*op),
                blocks: range(*blocks),
            },
            ArmAt::Start,
        ),
        FaultSpec::DiskTorn { land, .. } => (DiskFault::Torn { land: *land }, ArmAt::Instant),
        FaultSpec::CowReadLive { .. }
        | FaultSpec::DropTracking { .. }
        | FaultSpec::CorruptCow { .. }
        | FaultSpec::DelayCow { .. }
        | FaultSpec::DelayRead { .. }
        | FaultSpec::OpenTeardown
        | FaultSpec::BitFlip { .. }
        | FaultSpec::Rewrite { .. }
        | FaultSpec::DropFrame { .. }
        | FaultSpec::Disconnect { .. }
        | FaultSpec::WrongOffset { .. }
        | FaultSpec::SkipVerify
        | FaultSpec::CrashBeforeCommit
        | FaultSpec::SkipBlocks { .. }
        | FaultSpec::Reset { .. }
        | FaultSpec::Panic { .. }
        | FaultSpec::RemoveDisk { .. }
        | FaultSpec::EndSnapshot { .. } => return None,
    })
}

impl RunWitness {
    /// Starts a backend per disk: `volumes` are the volume disks to serve (empty when
    /// QEMU serves them), `hang` the never-answering disk. Hashes each backed-up
    /// volume's image first: the oracle's starting content.
    pub(super) fn start(
        plan: &Plan,
        volumes: &[Disk],
        hang: Option<&Disk>,
        work: &Path,
    ) -> Result<(RunWitness, Vec<VhostUserDisk>), String> {
        let mut served = Vec::new();
        for d in volumes {
            let v = plan
                .volumes
                .iter()
                .find(|v| Disk::volume_id(v.index) == d.id);
            let initial = match v {
                Some(v) if v.backup => {
                    Some(crate::oracle::adapter::image_hashes(&d.path).map_err(|e| {
                        format!("hashing {}: {}", d.path.display(), super::chain(&e))
                    })?)
                }
                Some(_) | None => None,
            };
            served.push(Served {
                id: d.id.clone(),
                volume: v.map(|v| v.name.clone()),
                image: d.path.clone(),
                initial,
            });
        }
        if let Some(h) = hang {
            served.push(Served {
                id: h.id.clone(),
                volume: None,
                image: h.path.clone(),
                initial: None,
            });
        }
        let specs: Vec<WitnessDiskSpec> = served
            .iter()
            .map(|s| WitnessDiskSpec {
                id: s.id.clone(),
                image: s.image.clone(),
                serial: Disk::serial_of(&s.id),
            })
            .collect();
        let schedule = plan.guest.io_schedule.map(|s| Schedule {
            seed: s.seed,
            max_delay_us: s.max_delay_us,
        });
        let queues = plan.guest.cpus.clamp(1, 8) as u16;
        let (disks, vhost) =
            WitnessDisks::start(&specs, work, queues, schedule).map_err(|e| super::chain(&e))?;
        Ok((
            RunWitness {
                disks,
                served,
                armed: Vec::new(),
                removed: Vec::new(),
                schedule,
                reported: Vec::new(),
                hang_fault: None,
            },
            vhost,
        ))
    }

    /// The backed-up volumes' disks, for the truth.
    pub(super) fn truth_volumes(&mut self, plan: &Plan) -> Vec<WitnessVolume> {
        let mut out = Vec::new();
        for v in plan.backed_up() {
            let id = Disk::volume_id(v.index);
            let Some(s) = self.served.iter().find(|s| s.id == id) else {
                continue;
            };
            let image = s.image.clone();
            if let Some(b) = self.disks.backend(&id) {
                out.push(WitnessVolume {
                    volume: v.name.clone(),
                    id: id.clone(),
                    base: image,
                    control: b.config().control_socket.clone(),
                    state_dir: b.config().state_dir.clone(),
                });
            }
        }
        out
    }

    fn control(&mut self, id: &str) -> Result<Control, String> {
        let backend = self
            .disks
            .backend(id)
            .ok_or_else(|| format!("no witness disk {id}"))?;
        backend
            .control(CONTROL_TIMEOUT)
            .map_err(|e| format!("witness disk {id}: {}", super::chain(&e)))
    }

    /// The never-answering disk: from now on no read of it completes.
    pub(super) fn arm_hang_disk(&mut self) -> Result<(), String> {
        let fault = DiskFault::Hang {
            ops: OpFilter::Read,
            blocks: None,
            times: Times::Always,
            after: 0,
        };
        let id = self
            .control(HANG_ID)?
            .arm(fault)
            .map_err(|e| format!("arming the hang disk: {}", super::chain(&e)))?;
        self.hang_fault = Some(id);
        Ok(())
    }

    /// Lets the reads the never-answering disk holds go, and holds the next ones again.
    /// Called at every snapshot instant: a task stuck on such a read for longer than
    /// the guest's hung-task timeout (30 s in these images) would be reported as a hung
    /// guest, which it is not; discovery, which the disk is there to test, probes it
    /// before the instant. Returns how many reads were let go.
    pub(super) fn cycle_hang_disk(&mut self) -> Result<u64, String> {
        let Some(fault) = self.hang_fault.take() else {
            return Ok(0);
        };
        let released = self
            .control(HANG_ID)?
            .release(fault)
            .map_err(|e| format!("releasing the hang disk: {}", super::chain(&e)))?;
        self.arm_hang_disk()?;
        Ok(released)
    }

    /// Arms the disk faults of `step` that belong to `when`. Returns notes; an error is
    /// a harness error (the fault could not be injected).
    pub(super) fn arm(
        &mut self,
        plan: &Plan,
        step: &BackupStep,
        when: ArmAt,
    ) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        for f in &step.faults {
            let Some((fault, at)) = disk_fault(&f.spec, f.seed) else {
                continue;
            };
            if at != when {
                continue;
            }
            let volume = f.spec.disk_volume().unwrap_or_default().to_string();
            let v = plan
                .volumes
                .iter()
                .find(|v| v.name == volume)
                .ok_or_else(|| format!("disk fault on unknown volume {volume}"))?;
            let id = Disk::volume_id(v.index);
            let json = serde_json::to_string(&fault).unwrap_or_default();
            let fault_id = self
                .control(&id)?
                .arm(fault)
                .map_err(|e| format!("arming {json} on {id}: {}", super::chain(&e)))?;
            let label = format!("{} on volume {volume}", f.spec.kind().name());
            notes.push(format!("fault: armed {label} ({json})"));
            self.armed.push(Armed {
                backup: step.number,
                kind: f.spec.kind(),
                disk: id,
                fault: fault_id,
                label,
                fired: None,
                released: false,
            });
        }
        Ok(notes)
    }

    /// How often the fault of `kind` armed in `backup` on a volume has fired so far
    /// (None: no such fault, or its backend cannot say).
    pub(super) fn fired(&mut self, backup: u32, kind: FaultKind) -> Option<(String, u64)> {
        let a = self
            .armed
            .iter()
            .find(|a| a.backup == backup && a.kind == kind && !a.released)?
            .clone();
        let stats = self.control(&a.disk).ok()?.stats().ok()?;
        stats
            .faults
            .iter()
            .find(|f| f.fault == a.fault)
            .map(|f| (a.disk.clone(), f.fired))
    }

    /// Releases a `hang` fault of `backup` now (its held requests run).
    pub(super) fn release_kind(&mut self, backup: u32, kind: FaultKind) -> Result<u64, String> {
        let Some(i) = self
            .armed
            .iter()
            .position(|a| a.backup == backup && a.kind == kind && !a.released)
        else {
            return Ok(0);
        };
        self.release_one(i)
    }

    fn release_one(&mut self, i: usize) -> Result<u64, String> {
        let (disk, fault) = (self.armed[i].disk.clone(), self.armed[i].fault);
        let mut control = self.control(&disk)?;
        if let Some(f) = control
            .stats()
            .ok()
            .and_then(|s| s.faults.into_iter().find(|f| f.fault == fault))
        {
            self.armed[i].fired = Some(f.fired);
        }
        self.armed[i].released = true;
        control
            .release(fault)
            .map_err(|e| format!("releasing {}: {}", self.armed[i].label, super::chain(&e)))
    }

    /// Releases every fault of `backup` still armed (a hang's held requests run), taking
    /// each one's firings from its backend. Returns notes and harness errors; a backend
    /// that has gone with its guest (a reset) is counted from its history at the end.
    pub(super) fn release(&mut self, backup: u32) -> (Vec<String>, Vec<String>) {
        let (mut notes, mut errors) = (Vec::new(), Vec::new());
        for i in 0..self.armed.len() {
            if self.armed[i].backup != backup || self.armed[i].released {
                continue;
            }
            let gone = self
                .disks
                .backend(&self.armed[i].disk)
                .is_none_or(|b| b.try_wait().ok().flatten().is_some());
            if gone {
                self.armed[i].released = true;
                continue;
            }
            match self.release_one(i) {
                Ok(n) => notes.push(format!(
                    "fault: released {} (fired {} time(s){})",
                    self.armed[i].label,
                    self.armed[i].fired.unwrap_or(0),
                    if n > 0 {
                        format!(", {n} held request(s) let go")
                    } else {
                        String::new()
                    }
                )),
                Err(e) => errors.push(e),
            }
        }
        (notes, errors)
    }

    /// Marks a disk as removed from the guest on purpose.
    pub(super) fn removed(&mut self, id: &str) {
        self.removed.push(id.to_string());
    }

    /// Backends that died while the guest runs (each reported once).
    pub(super) fn dead(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (id, status, log) in self.disks.exited() {
            if self.removed.contains(&id) || self.reported.contains(&id) {
                continue;
            }
            self.reported.push(id.clone());
            out.push(format!(
                "witness disk {id} exited while the guest ran ({status}); its volume can no longer be served. Log: {log}"
            ));
        }
        out
    }

    /// Ends every backend (QEMU has gone) and reads what each recorded.
    pub(super) fn finish(self) -> Ended {
        let RunWitness {
            disks,
            served,
            mut armed,
            schedule,
            ..
        } = self;
        let ends = disks.finish(FINISH_TIMEOUT);
        let mut errors: Vec<String> = ends.iter().filter_map(WitnessEnd::problem).collect();
        let mut out = Vec::new();
        for s in served {
            let Some(end) = ends.iter().find(|e| e.id == s.id) else {
                continue;
            };
            let size = std::fs::metadata(&end.history).map_or(0, |m| m.len());
            let (history, readable) = match History::open(&end.history) {
                Ok(h) => (Some(h), true),
                Err(e) => {
                    errors.push(format!(
                        "the history of witness disk {}: {}",
                        s.id,
                        super::chain(&e)
                    ));
                    (History::open_partial(&end.history).ok(), false)
                }
            };
            let mut record = DiskRecord {
                volume: s.volume.clone().unwrap_or_default(),
                id: s.id.clone(),
                history_file: history_file(&s),
                history_bytes: size,
                schedule: schedule
                    .map(|sc| format!("seed {:#x}, at most {} us", sc.seed, sc.max_delay_us)),
                ..DiskRecord::default()
            };
            if let Some(h) = &history {
                summarise(h, &mut record);
                let fired = h.fired_counts();
                for a in armed.iter_mut().filter(|a| a.disk == s.id) {
                    let n = a
                        .fired
                        .unwrap_or_else(|| fired.get(&a.fault).copied().unwrap_or(0));
                    a.fired = Some(n);
                }
            }
            out.push(EndedDisk {
                record,
                history: end.history.clone(),
                volume: s.volume.clone(),
                initial: s.initial,
                readable,
            });
        }
        for a in &armed {
            if a.fired == Some(0) {
                errors.push(format!(
                    "fault {} of backup {} never fired: the scenario did not test what it says",
                    a.label, a.backup
                ));
            }
        }
        let fired = armed.iter().map(|a| (a.backup, a.kind, a.fired)).collect();
        Ended {
            errors,
            disks: out,
            fired,
        }
    }
}

/// The history's name in the report directory.
fn history_file(s: &Served) -> String {
    match &s.volume {
        Some(v) => format!("history-{v}.bwhist"),
        None => format!("history-{}.bwhist", s.id),
    }
}

/// Requests, bytes and faults of a history.
fn summarise(h: &History, r: &mut DiskRecord) {
    for q in h.requests() {
        *r.requests.entry(q.op.name().to_string()).or_default() += 1;
        *r.outcomes.entry(q.outcome.name().to_string()).or_default() += 1;
        if q.outcome == witness_disk::history::Outcome::Ok {
            match q.op {
                witness_disk::history::Op::Read => r.bytes_read += q.len,
                witness_disk::history::Op::Write => r.bytes_written += q.len,
                witness_disk::history::Op::Flush
                | witness_disk::history::Op::Discard
                | witness_disk::history::Op::WriteZeroes
                | witness_disk::history::Op::GetId
                | witness_disk::history::Op::Other(_)
                | witness_disk::history::Op::Malformed => {}
            }
        }
    }
    r.records = h.records.len() as u64;
    r.complete = h.is_complete();
    r.end = match h.end.as_ref().map(|e| e.reason) {
        Some(EndReason::Disconnected) => "disconnected".into(),
        Some(EndReason::Shutdown) => "shutdown".into(),
        Some(EndReason::NeverConnected) => "never-connected".into(),
        Some(EndReason::Failed) => "failed".into(),
        None => "cut short".into(),
    };
    r.instants = h.instants().len() as u32;
    let fired = h.fired_counts();
    for m in h.markers() {
        if let Marker::FaultArmed { fault, spec } = &m.marker {
            r.faults
                .push((spec.clone(), fired.get(fault).copied().unwrap_or(0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::DiskMatch;

    #[test]
    fn scenario_disk_faults_become_backend_faults_armed_at_their_moment() {
        let at = DiskMatch {
            volume: "data".into(),
            op: Op::Write,
            blocks: Some(BlockSpan {
                first: 10,
                count: 4,
            }),
            once: true,
            after_requests: 3,
        };
        assert_eq!(
            disk_fault(&FaultSpec::DiskEio { at: at.clone() }, 9),
            Some((
                DiskFault::Eio {
                    ops: OpFilter::Write,
                    blocks: Some(BlockRange { start: 10, end: 14 }),
                    times: Times::Once,
                    after: 3,
                },
                ArmAt::Start
            ))
        );
        let hang = disk_fault(
            &FaultSpec::DiskHang {
                at: DiskMatch {
                    op: Op::Both,
                    blocks: None,
                    once: false,
                    after_requests: 0,
                    ..at
                },
            },
            9,
        );
        assert_eq!(
            hang,
            Some((
                DiskFault::Hang {
                    ops: OpFilter::Both,
                    blocks: None,
                    times: Times::Always,
                    after: 0,
                },
                ArmAt::Start
            ))
        );
        // The latency's seed is the fault's, so a replay holds the same requests as long.
        assert_eq!(
            disk_fault(
                &FaultSpec::DiskLatency {
                    volume: "data".into(),
                    op: Op::Read,
                    blocks: None,
                    max_ms: 7,
                },
                42
            ),
            Some((
                DiskFault::Latency {
                    seed: 42,
                    max_us: 7000,
                    ops: OpFilter::Read,
                    blocks: None,
                },
                ArmAt::Start
            ))
        );
        assert_eq!(
            disk_fault(
                &FaultSpec::DiskTorn {
                    volume: "data".into(),
                    land: 2
                },
                0
            ),
            Some((DiskFault::Torn { land: 2 }, ArmAt::Instant))
        );
        assert_eq!(disk_fault(&FaultSpec::SkipVerify, 0), None);
    }
}

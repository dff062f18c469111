//! The reference pipeline: bwsnap.ko and bw-agent in the guest, bw-target on the host,
//! the harness's transport proxy between them, the agent's witness stream and the
//! module's fault log as extra recordings.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reference_agent::agent::backup::{Summary, VolumeSummary};
use reference_agent::agent::hook::HookMessage;
use reference_agent::target::{SessionReport, SessionStatus, TargetEvent};
use reference_agent::transport::Address;
use reference_agent::witness::{self, LiveCompare, Record, WitnessDecoder, WitnessEvent};

use super::lines::LinePort;
use super::{
    AnnouncedVolume, BackupResult, Fired, GuestVolume, Pipeline, PipelineError, Progress, RunHooks,
    VolumeBackup, WitnessBlock,
};
use crate::image::BuiltImage;
use crate::model::{BlockHash, FaultKind, Layer, BLOCK};
use crate::plan::{BackupStep, Plan};
use crate::proxy::{InjectedFault, ProxyConfig, ProxyEvent, ProxyHandle, TransportFault};
use crate::record::{Claim, Live, Source};
use crate::scenario::FaultSpec;
use crate::vm::Vm;

/// Where bwsnap.ko sits in every image.
const BWSNAP_KO: &str = "/lib/modules/bwsnap.ko";
const FAULT_LOG: &str = "/sys/kernel/debug/bwsnap/faults";
const MODULE_KNOBS: [&str; 6] = [
    "fault_cow_read_live",
    "fault_drop_tracking",
    "fault_corrupt_cow",
    "fault_delay_cow_ms",
    "fault_delay_read_ms",
    "fault_teardown_open",
];

/// Options bw-target runs with during one backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TargetFlags {
    wrong_offset: Option<u64>,
    skip_verify: bool,
    crash_before_commit: bool,
}

impl TargetFlags {
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(n) = self.wrong_offset {
            a.extend(["--fault-wrong-offset".to_string(), n.to_string()]);
        }
        if self.skip_verify {
            a.push("--fault-skip-verify".into());
        }
        if self.crash_before_commit {
            a.push("--fault-crash-before-commit".into());
        }
        a
    }
}

/// A running bw-target, with its JSON event lines collected.
struct TargetProc {
    child: Child,
    flags: TargetFlags,
    events: Arc<Mutex<Vec<TargetEvent>>>,
    /// Registered for the interrupt handler while it lives.
    _tracked: crate::cleanup::TrackedChild,
}

impl TargetProc {
    fn start(
        exe: &Path,
        store: &Path,
        socket: &Path,
        flags: TargetFlags,
        log: &Path,
    ) -> Result<TargetProc, PipelineError> {
        let _ = std::fs::remove_file(socket);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| PipelineError::Io {
                path: log.to_path_buf(),
                source,
            })?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--store")
            .arg(store)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--json")
            .args(flags.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: prctl only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (mut child, tracked) = crate::cleanup::spawn_tracked(&mut cmd, false)
            .map_err(|e| PipelineError::failed(format!("starting {}", exe.display()), e))?;
        let events: Arc<Mutex<Vec<TargetEvent>>> = Arc::default();
        let out = child.stdout.take().expect("piped stdout");
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(e) = serde_json::from_str::<TargetEvent>(&line) {
                    ev.lock().unwrap().push(e);
                }
            }
        });
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(PipelineError::failed(
                    "bw-target exited at start",
                    format!("{status}; see {}", log.display()),
                ));
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Err(PipelineError::failed(
                    "bw-target",
                    "did not listen within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(TargetProc {
            child,
            flags,
            events,
            _tracked: tracked,
        })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TargetProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes from the witness port, decoded as they arrive.
struct WitnessCollector {
    events: Arc<Mutex<Vec<WitnessEvent>>>,
}

impl WitnessCollector {
    fn start(mut stream: UnixStream) -> WitnessCollector {
        let events: Arc<Mutex<Vec<WitnessEvent>>> = Arc::default();
        let ev = events.clone();
        std::thread::spawn(move || {
            let mut decoder = WitnessDecoder::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        decoder.push(&buf[..n]);
                        let mut out = Vec::new();
                        while let Some(e) = decoder.next_event() {
                            out.push(e);
                        }
                        if !out.is_empty() {
                            ev.lock().unwrap().extend(out);
                        }
                    }
                }
            }
        });
        WitnessCollector { events }
    }

    fn session_ends(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, WitnessEvent::Record(Record::SessionEnd(_))))
            .count()
    }

    fn take(&self) -> Vec<WitnessEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

/// The reference pipeline.
pub struct Reference {
    bw_target: PathBuf,
    work: PathBuf,
    target: Option<TargetProc>,
    proxy: Option<ProxyHandle>,
    proxy_events: Vec<ProxyEvent>,
    witness: Option<WitnessCollector>,
    /// The agent's hook announcements.
    hook: Option<LinePort>,
    /// bwsnap minor of each volume, from the agent's summaries.
    minors: BTreeMap<String, u32>,
    notes: Vec<String>,
    /// A short directory for the target's socket (sun_path is 108 bytes).
    sockets: crate::cleanup::TempDir,
}

impl Reference {
    /// `work` holds the target's store and logs.
    pub fn new(image: &BuiltImage, work: &Path) -> Result<Reference, PipelineError> {
        let sockets =
            crate::cleanup::TempDir::new_in(Path::new("/tmp"), "bw-target-").map_err(|source| {
                PipelineError::Io {
                    path: "/tmp".into(),
                    source,
                }
            })?;
        Ok(Reference {
            sockets,
            bw_target: image.bw_target.clone(),
            work: work.to_path_buf(),
            target: None,
            proxy: None,
            proxy_events: Vec::new(),
            witness: None,
            hook: None,
            minors: BTreeMap::new(),
            notes: Vec::new(),
        })
    }

    fn store(&self) -> PathBuf {
        self.work.join("store")
    }

    fn target_socket(&self) -> PathBuf {
        self.sockets.path().join("target.sock")
    }

    fn ensure_target(&mut self, flags: TargetFlags) -> Result<(), PipelineError> {
        let restart = match &mut self.target {
            Some(t) => !t.alive() || t.flags != flags,
            None => true,
        };
        if restart {
            // Keep the old process's events: they are the claims of earlier backups.
            let old = self.target.take().map(|t| t.events.clone());
            let t = TargetProc::start(
                &self.bw_target,
                &self.store(),
                &self.target_socket(),
                flags,
                &self.work.join("bw-target.log"),
            )?;
            if let Some(old) = old {
                let prev = std::mem::take(&mut *old.lock().unwrap());
                t.events.lock().unwrap().splice(0..0, prev);
            }
            self.target = Some(t);
        }
        Ok(())
    }

    fn drain_proxy(&mut self) {
        if let Some(p) = &self.proxy {
            while let Ok(e) = p.events().try_recv() {
                self.proxy_events.push(e);
            }
        }
    }

    fn blocks_crossed(&self) -> u64 {
        self.proxy_events
            .iter()
            .map(|e| match e {
                ProxyEvent::Block(r) if r.delivered && !r.retransmit => {
                    (r.length as u64).div_ceil(BLOCK as u64)
                }
                _ => 0,
            })
            .sum()
    }

    /// The target's session reports for (volume, generation), in order.
    fn sessions(&self, volume: &str, generation: u32) -> Vec<SessionReport> {
        let Some(t) = self.target.as_ref() else {
            return Vec::new();
        };
        let events = t.events.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                TargetEvent::Session(r) if r.volume == volume && r.generation == generation => {
                    Some(r.clone())
                }
                TargetEvent::Session(_)
                | TargetEvent::Listening { .. }
                | TargetEvent::Cleaned { .. }
                | TargetEvent::Connection { .. } => None,
            })
            .collect()
    }

    /// The target's claim for (volume, generation): its last session event.
    fn target_claim(&self, volume: &str, generation: u32) -> Option<Claim> {
        let r = self.sessions(volume, generation).pop()?;
        let status = match r.status {
            SessionStatus::Committed => return Some(Claim::Success),
            SessionStatus::Failed => "failed",
            SessionStatus::Refused => "refused",
            SessionStatus::Expired => "expired",
        };
        Some(Claim::Failure(format!(
            "{status}: {}",
            r.message.as_deref().unwrap_or("no message")
        )))
    }

    fn target_fault_sites(&self, volume: &str, generation: u32) -> BTreeSet<u64> {
        self.sessions(volume, generation)
            .into_iter()
            .flat_map(|r| r.fault_sites)
            .collect()
    }
}

/// The module's fault log as read after a backup: one entry per firing, in order.
#[derive(Debug, Default, PartialEq, Eq)]
struct FaultLog {
    /// (kind as the log names it, minor, block).
    firings: Vec<(String, u32, u64)>,
}

impl FaultLog {
    /// Parses `cow-read-live minor=0 block=1234` lines. A log that overflowed (its last
    /// line `dropped N`) or holds a line that does not parse is an error: counting from
    /// it would be silence where the module fired.
    fn parse(text: &str) -> Result<FaultLog, String> {
        let mut firings = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(n) = line.strip_prefix("dropped ") {
                return Err(format!(
                    "the module's fault log overflowed: {} firing(s) were not logged",
                    n.trim()
                ));
            }
            let mut words = line.split_whitespace();
            let kind = words.next().unwrap_or_default().to_string();
            let (mut minor, mut block) = (None, None);
            for word in words {
                if let Some(v) = word.strip_prefix("minor=") {
                    minor = v.parse().ok();
                } else if let Some(v) = word.strip_prefix("block=") {
                    block = v.parse().ok();
                }
            }
            match (minor, block) {
                (Some(m), Some(b)) => firings.push((kind, m, b)),
                _ => {
                    return Err(format!(
                        "the module's fault log has a line it cannot read: {line:?}"
                    ))
                }
            }
        }
        Ok(FaultLog { firings })
    }

    fn count(&self, kind: FaultKind) -> u64 {
        self.firings
            .iter()
            .filter(|(k, _, _)| k == kind.name())
            .count() as u64
    }
}

fn agent_volume_claim(v: &VolumeSummary) -> Claim {
    if v.committed {
        Claim::Success
    } else {
        Claim::Failure(v.error.clone().unwrap_or_else(|| "not committed".into()))
    }
}

impl Pipeline for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn ports(&self) -> Vec<String> {
        vec!["bw.hook".into(), "bw.witness".into(), "bw.transport".into()]
    }

    fn start(&mut self, vm: &mut Vm, _volumes: &[GuestVolume]) -> Result<(), PipelineError> {
        std::fs::create_dir_all(self.store()).map_err(|source| PipelineError::Io {
            path: self.store(),
            source,
        })?;
        self.ensure_target(TargetFlags::default())?;
        let upstream = vm.machine.port_path("bw.transport");
        let mut cfg = ProxyConfig::new(upstream, Address::Unix(self.target_socket()));
        cfg.connect_timeout = Duration::from_secs(10);
        self.proxy = Some(ProxyHandle::start(cfg));
        self.witness = Some(WitnessCollector::start(
            vm.machine.connect_port("bw.witness")?,
        ));
        self.hook = Some(LinePort::new(vm.machine.connect_port("bw.hook")?));
        vm.guest.insmod(BWSNAP_KO, "")?;
        vm.guest
            .sh("test -c /dev/bwsnap-ctl", Duration::from_secs(10))
            .map_err(|e| {
                PipelineError::failed("bwsnap loaded but /dev/bwsnap-ctl is missing", e)
            })?;
        Ok(())
    }

    fn backup(
        &mut self,
        vm: &mut Vm,
        plan: &Plan,
        step: &BackupStep,
        volumes: &[GuestVolume],
        hooks: &mut dyn RunHooks,
        deadline: Duration,
    ) -> Result<BackupResult, PipelineError> {
        let started = Instant::now();
        let mut result = BackupResult::default();

        // Faults of this backup that belong to the pipeline.
        let mut knobs: BTreeMap<&str, u64> = MODULE_KNOBS.iter().map(|k| (*k, 0)).collect();
        let mut transport = Vec::new();
        let mut flags = TargetFlags::default();
        let mut skip_blocks = 0u64;
        for f in &step.faults {
            match &f.spec {
                FaultSpec::CowReadLive { every } => {
                    knobs.insert("fault_cow_read_live", *every);
                }
                FaultSpec::DropTracking { every } => {
                    knobs.insert("fault_drop_tracking", *every);
                }
                FaultSpec::CorruptCow { every } => {
                    knobs.insert("fault_corrupt_cow", *every);
                }
                FaultSpec::DelayRead { ms } => {
                    knobs.insert("fault_delay_read_ms", *ms);
                }
                FaultSpec::DelayCow { ms } => {
                    knobs.insert("fault_delay_cow_ms", *ms);
                }
                // Every eligible read (the knob's N = 1).
                FaultSpec::OpenTeardown => {
                    knobs.insert("fault_teardown_open", 1);
                }
                FaultSpec::BitFlip { frames } => transport.push(TransportFault::BitFlip(*frames)),
                FaultSpec::Rewrite { frames } => transport.push(TransportFault::Rewrite(*frames)),
                FaultSpec::DropFrame { frame } => {
                    transport.push(TransportFault::DropFrame { frame: *frame })
                }
                FaultSpec::Disconnect { after_frame } => {
                    transport.push(TransportFault::Disconnect {
                        after_frame: *after_frame,
                    })
                }
                FaultSpec::WrongOffset { every } => flags.wrong_offset = Some(*every),
                FaultSpec::SkipVerify => flags.skip_verify = true,
                FaultSpec::CrashBeforeCommit => flags.crash_before_commit = true,
                FaultSpec::SkipBlocks { every } => skip_blocks = *every,
                // The run's layers (disk, guest).
                FaultSpec::DiskHang { .. }
                | FaultSpec::DiskEio { .. }
                | FaultSpec::DiskLatency { .. }
                | FaultSpec::DiskTorn { .. }
                | FaultSpec::Reset { .. }
                | FaultSpec::Panic { .. }
                | FaultSpec::RemoveDisk { .. }
                | FaultSpec::EndSnapshot { .. } => {}
            }
        }
        for (knob, value) in &knobs {
            vm.guest.write_file(
                &format!("/sys/module/bwsnap/parameters/{knob}"),
                &value.to_string(),
            )?;
            if *value != 0 {
                result.notes.push(format!("module knob {knob}={value}"));
            }
        }
        vm.guest.write_file(FAULT_LOG, "0")?;
        if let Some(p) = &self.proxy {
            if !transport.is_empty() {
                result
                    .notes
                    .push(format!("transport faults: {transport:?}"));
            }
            p.set_faults(transport);
        }
        if let Some(p) = &self.proxy {
            // Paced workloads: the backup's progress is held where it crosses the proxy.
            p.set_gate(hooks.gate());
        }
        if flags != TargetFlags::default() {
            result
                .notes
                .push(format!("target faults: {}", flags.args().join(" ")));
        }
        self.ensure_target(flags.clone())?;
        self.drain_proxy();
        self.proxy_events.clear();
        if let Some(w) = &self.witness {
            w.take();
        }

        // The agent.
        let mut argv: Vec<String> = vec!["/bin/bw-agent".into(), "backup".into()];
        for v in volumes {
            let Some(mount) = &v.mount else {
                return Err(PipelineError::failed(
                    "reference pipeline",
                    format!(
                        "volume {} has no filesystem: bw-agent backs up mounted volumes",
                        v.name
                    ),
                ));
            };
            argv.push("--volume".into());
            argv.push(format!("{mount}={},cow={}", v.name, v.cow_bytes));
        }
        argv.extend(
            [
                "--target",
                "port:bw.transport",
                "--hook",
                "port:bw.hook",
                "--witness",
                "port:bw.witness",
            ]
            .map(String::from),
        );
        if skip_blocks > 0 {
            argv.push("--fault-skip-blocks".into());
            argv.push(skip_blocks.to_string());
            result
                .notes
                .push(format!("agent fault: skip 1 block in {skip_blocks}"));
        }
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let handle = vm.guest.spawn(&argv_ref)?;
        let blocks_expected: u64 = match step.number {
            1 => plan.backed_up().map(|v| v.blocks).sum(),
            _ => 0,
        };

        let mut finished = None;
        let mut crash_restarts = 0;
        let mut agent_run: Option<u64> = None;
        // The module's fault log as last read while the backup ran: a guest that a
        // watchdog or a reset takes away takes its log too, and a fault that fired
        // before then still fired.
        let module_faults = step.faults.iter().any(|f| f.spec.layer() == Layer::Module);
        let mut early_log: Option<(FaultLog, Instant)> = None;
        let mut log_read_at = Instant::now();
        loop {
            match vm.guest.wait(handle, Duration::from_millis(150)) {
                Ok(Some(done)) => {
                    finished = Some(done);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    result
                        .notes
                        .push(format!("lost the guest while the agent ran: {e}"));
                    break;
                }
            }
            if let Some(line) = self
                .hook
                .as_mut()
                .and_then(|h| h.poll(Duration::from_millis(50)))
            {
                let answer = match serde_json::from_str::<HookMessage>(&line) {
                    Ok(HookMessage::Frozen { volumes, run, .. }) => {
                        // The agent names its COW file after its run counter.
                        agent_run = Some(run);
                        let announced: Vec<AnnouncedVolume> = volumes
                            .into_iter()
                            .map(|v| AnnouncedVolume {
                                name: v.id,
                                device: v.device,
                                mount: Some(v.mount_point),
                            })
                            .collect();
                        match hooks.at_instant(vm, &announced) {
                            Ok(()) => {
                                result.instant_reached = true;
                                HookMessage::Continue
                            }
                            Err(e) => {
                                let reason = crate::error_chain(&e);
                                result.notes.push(format!("instant aborted: {reason}"));
                                HookMessage::Abort { reason }
                            }
                        }
                    }
                    Ok(HookMessage::Continue | HookMessage::Abort { .. }) | Err(_) => {
                        result
                            .notes
                            .push(format!("unexpected hook message: {line}"));
                        HookMessage::Abort {
                            reason: "unexpected message".into(),
                        }
                    }
                };
                if let Some(h) = self.hook.as_mut() {
                    h.reply(&answer);
                }
            }
            self.drain_proxy();
            // A target that died (an injected crash) is restarted as an appliance's
            // service manager would; the agent may then resume or start over.
            if let Some(t) = self.target.as_mut() {
                if !t.alive() && crash_restarts < 1 {
                    crash_restarts += 1;
                    result.notes.push(
                        "bw-target exited during the backup; restarted without faults".into(),
                    );
                    self.ensure_target(TargetFlags::default())?;
                }
            }
            if module_faults && log_read_at.elapsed() >= Duration::from_secs(2) {
                log_read_at = Instant::now();
                if let Ok(Ok(log)) = vm
                    .guest
                    .read_file(FAULT_LOG, 16 << 20)
                    .map(|text| FaultLog::parse(&text))
                {
                    early_log = Some((log, Instant::now()));
                }
            }
            let crossed = self.blocks_crossed();
            hooks.tick(
                vm,
                Progress {
                    elapsed: started.elapsed(),
                    blocks_crossed: Some(crossed),
                    blocks_expected: (blocks_expected > 0).then_some(blocks_expected),
                },
            );
            if vm.machine.exited().is_some() {
                result
                    .notes
                    .push("the guest stopped while the agent ran".into());
                break;
            }
            if started.elapsed() > deadline {
                result.notes.push(format!(
                    "the agent did not finish within {deadline:?}; killed"
                ));
                let _ = vm.guest.kill(handle, libc::SIGKILL);
                break;
            }
        }

        if let Some(p) = &self.proxy {
            p.set_gate(None);
        }

        // The agent's word.
        let mut summary = Summary::default();
        match &finished {
            Some(done) => {
                result.agent_output = format!("{}{}", done.stdout, done.stderr);
                let read = Summary::from_output(&done.stdout);
                let ok = read.as_ref().is_some_and(Summary::ok);
                result.agent = Some(if done.success() && ok {
                    Claim::Success
                } else {
                    Claim::Failure(
                        read.as_ref()
                            .and_then(|s| s.message.clone())
                            .unwrap_or_else(|| done.describe()),
                    )
                });
                summary = read.unwrap_or_default();
            }
            None => result.agent = Some(Claim::Silent),
        }

        // Let the last witness records and frames arrive.
        let sessions = summary
            .volumes
            .iter()
            .filter(|v| v.generation.is_some())
            .count();
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(5) {
            let ends = self.witness.as_ref().map_or(0, |w| w.session_ends());
            if ends >= sessions {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        self.drain_proxy();

        // The module's fault log, then every knob back to off.
        let module_log: Result<FaultLog, String> = if vm.machine.exited().is_some() {
            match early_log {
                Some((log, at)) => {
                    result.notes.push(format!(
                        "the guest was gone at the end: the module's fault log as read {:.0} s before",
                        at.elapsed().as_secs_f64()
                    ));
                    Ok(log)
                }
                None => {
                    Err("the guest was gone before the module's fault log could be read".into())
                }
            }
        } else {
            vm.guest
                .read_file(FAULT_LOG, 16 << 20)
                .map_err(|e| {
                    format!(
                        "the module's fault log could not be read: {}",
                        crate::error_chain(&e)
                    )
                })
                .and_then(|text| FaultLog::parse(&text))
        };
        if vm.machine.exited().is_none() {
            for knob in MODULE_KNOBS {
                let _ = vm
                    .guest
                    .write_file(&format!("/sys/module/bwsnap/parameters/{knob}"), "0");
            }
        }
        for v in &summary.volumes {
            if let Some(minor) = v.minor {
                self.minors.insert(v.id.clone(), minor);
            }
        }

        // Witness records by volume.
        let events = self.witness.as_ref().map(|w| w.take()).unwrap_or_default();
        let mut starts: BTreeMap<u32, witness::SessionStart> = BTreeMap::new();
        let mut blocks: BTreeMap<String, BTreeMap<u64, WitnessBlock>> = BTreeMap::new();
        for e in events {
            match e {
                WitnessEvent::Record(Record::SessionStart(s)) => {
                    blocks.entry(s.volume_id.clone()).or_default();
                    starts.insert(s.volume_index, *s);
                }
                WitnessEvent::Record(Record::Block(b)) => {
                    let Some(s) = starts.get(&b.volume_index) else {
                        continue;
                    };
                    let live = match b.live {
                        LiveCompare::Equal | LiveCompare::EqualAfter => Live::Equal,
                        LiveCompare::Differs => Live::Bracketed {
                            before: BlockHash(b.live_before),
                            after: BlockHash(b.live_after),
                        },
                        LiveCompare::NotRead => Live::NotRead,
                    };
                    let source = match b.source {
                        witness::Source::Live => Some(Source::Live),
                        witness::Source::Cow => Some(Source::Cow),
                        witness::Source::Error => Some(Source::Error),
                        witness::Source::Unknown => None,
                    };
                    blocks.entry(s.volume_id.clone()).or_default().insert(
                        b.block,
                        WitnessBlock {
                            snapshot: BlockHash(b.snapshot),
                            live,
                            source,
                        },
                    );
                }
                WitnessEvent::Record(Record::SessionEnd(_)) => {}
                WitnessEvent::Issue(issue) => result.notes.push(format!("witness stream: {issue}")),
            }
        }

        for v in volumes {
            let agent_v = summary.volumes.iter().find(|x| x.id == v.name);
            let generation = agent_v.and_then(|a| a.generation);
            let start = starts.values().find(|s| s.volume_id == v.name);
            let mut vb = VolumeBackup {
                volume: v.name.clone(),
                generation,
                incremental: agent_v.and_then(|a| a.kind.as_deref()) == Some("incremental"),
                agent: agent_v.map(agent_volume_claim),
                target: generation.and_then(|g| self.target_claim(&v.name, g)),
                witness: blocks.remove(&v.name),
                instant_ns: start.map(|s| s.instant_monotonic_ns),
                cow_file: agent_run.map(|r| format!(".bwsnap-cow-{r}")),
                cow_ranges: start.map(|s| {
                    s.cow_extents
                        .iter()
                        .filter(|r| r.len > 0)
                        .map(|r| (r.offset, r.len))
                        .collect()
                }),
                ..VolumeBackup::default()
            };
            let mut sites = |layer: Layer, blocks: &mut dyn Iterator<Item = u64>| {
                vb.fault_sites.entry(layer).or_default().extend(blocks);
            };
            if let Some(g) = generation {
                let mut crossed: BTreeMap<u64, BlockHash> = BTreeMap::new();
                let mut retransmits: BTreeMap<u64, u32> = BTreeMap::new();
                for e in &self.proxy_events {
                    let ProxyEvent::Block(r) = e else { continue };
                    if r.volume != v.name || r.generation != g {
                        continue;
                    }
                    let first = r.offset / BLOCK as u64;
                    if !r.delivered {
                        if let Some(InjectedFault::Dropped) = r.fault {
                            sites(
                                Layer::Transport,
                                &mut (first..first + r.block_hashes.len() as u64),
                            );
                        }
                        continue;
                    }
                    for (i, h) in r.block_hashes.iter().enumerate() {
                        let b = first + i as u64;
                        if crossed.insert(b, *h).is_some() {
                            *retransmits.entry(b).or_default() += 1;
                        }
                    }
                    if let Some(
                        InjectedFault::BitFlip { byte, .. } | InjectedFault::Rewritten { byte, .. },
                    ) = r.fault
                    {
                        sites(
                            Layer::Transport,
                            &mut std::iter::once(first + byte / BLOCK as u64),
                        );
                    }
                }
                vb.transport = Some(crossed);
                vb.retransmits = retransmits;
                sites(
                    Layer::Target,
                    &mut self.target_fault_sites(&v.name, g).into_iter(),
                );
            }
            if let Some(a) = agent_v {
                sites(Layer::Agent, &mut a.fault_sites.iter().copied());
            }
            if let (Some(minor), Ok(log)) = (self.minors.get(&v.name), &module_log) {
                sites(
                    Layer::Module,
                    &mut log
                        .firings
                        .iter()
                        .filter(|(_, m, _)| m == minor)
                        .map(|(_, _, b)| *b),
                );
            }
            if let Some(w) = &vb.witness {
                vb.sent = w.keys().copied().collect();
            } else if let Some(t) = &vb.transport {
                vb.sent = t.keys().copied().collect();
            }
            result.volumes.push(vb);
        }

        // How often each of this backup's faults fired, as its injecting layer counted.
        let generations: Vec<(String, u32)> = result
            .volumes
            .iter()
            .filter_map(|v| Some((v.volume.clone(), v.generation?)))
            .collect();
        let sessions: Vec<SessionReport> = generations
            .iter()
            .flat_map(|(v, g)| self.sessions(v, *g))
            .collect();
        let proxy_count = |hit: &dyn Fn(&InjectedFault) -> bool| -> u64 {
            self.proxy_events
                .iter()
                .filter(|e| matches!(e, ProxyEvent::Block(r) if r.fault.as_ref().is_some_and(hit)))
                .count() as u64
        };
        for f in &step.faults {
            let kind = f.spec.kind();
            let by = |count: u64, who: &str| Fired {
                count: Some(count),
                counted_by: who.to_string(),
            };
            let proxy = |n: u64| by(n, "the transport proxy");
            let target = |n: u64| by(n, "bw-target's events");
            let fired = match kind {
                FaultKind::CowReadLive
                | FaultKind::DropTracking
                | FaultKind::CorruptCow
                | FaultKind::DelayCow
                | FaultKind::DelayRead
                | FaultKind::OpenTeardown => match &module_log {
                    Ok(log) => by(log.count(kind), "the module's fault log"),
                    Err(e) => Fired {
                        count: None,
                        counted_by: e.clone(),
                    },
                },
                FaultKind::BitFlip => {
                    proxy(proxy_count(&|x| matches!(x, InjectedFault::BitFlip { .. })))
                }
                FaultKind::Rewrite => proxy(proxy_count(&|x| {
                    matches!(x, InjectedFault::Rewritten { .. })
                })),
                FaultKind::DropFrame => {
                    proxy(proxy_count(&|x| matches!(x, InjectedFault::Dropped)))
                }
                FaultKind::Disconnect => proxy(proxy_count(&|x| {
                    matches!(x, InjectedFault::DisconnectAfter)
                })),
                FaultKind::WrongOffset => {
                    target(sessions.iter().map(|r| r.fault_sites.len() as u64).sum())
                }
                // A session committed without the re-read the target owes.
                FaultKind::SkipVerify => target(
                    sessions
                        .iter()
                        .filter(|r| r.status == SessionStatus::Committed && !r.verified)
                        .count() as u64,
                ),
                FaultKind::CrashBeforeCommit => target(crash_restarts),
                FaultKind::SkipBlocks => by(
                    summary
                        .volumes
                        .iter()
                        .map(|v| v.fault_sites.len() as u64)
                        .sum(),
                    "the agent's summary",
                ),
                // The run's faults (disk, guest): it counts them itself.
                FaultKind::DiskHang
                | FaultKind::DiskEio
                | FaultKind::DiskLatency
                | FaultKind::DiskTorn
                | FaultKind::EndSnapshot
                | FaultKind::Reset
                | FaultKind::Panic
                | FaultKind::RemoveDisk => continue,
            };
            result.fired.insert(f.index, fired);
        }
        Ok(result)
    }

    fn stored_image(&self, volume: &str, generation: u32) -> Option<PathBuf> {
        let dir = self.store().join(volume);
        let stem = format!("gen-{generation:06}");
        dir.join(format!("{stem}.json"))
            .is_file()
            .then(|| dir.join(format!("{stem}.img")))
    }

    fn stop(&mut self) -> Vec<String> {
        if let Some(p) = self.proxy.take() {
            let stats = p.shutdown();
            self.notes.push(format!(
                "proxy: {} block frames, {} faults injected, {} disconnects",
                stats.block_frames, stats.faults_injected, stats.disconnects
            ));
        }
        self.target.take();
        std::mem::take(&mut self.notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_log_lines_and_an_overflow_that_is_an_error() {
        let log = FaultLog::parse(
            "cow-read-live minor=0 block=1234\ndrop-tracking minor=1 block=7\ncow-read-live minor=1 block=9\n",
        )
        .unwrap();
        assert_eq!(log.count(FaultKind::CowReadLive), 2);
        assert_eq!(log.count(FaultKind::DropTracking), 1);
        assert_eq!(log.count(FaultKind::CorruptCow), 0);
        assert_eq!(log.firings[1], ("drop-tracking".to_string(), 1, 7));
        assert_eq!(FaultLog::parse("").unwrap().firings.len(), 0);
        let e = FaultLog::parse("cow-read-live minor=0 block=1\ndropped 3\n").unwrap_err();
        assert!(e.contains("overflowed") && e.contains('3'), "{e}");
        let e = FaultLog::parse("cow-read-live minor=zero\n").unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}

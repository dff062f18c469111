//! Benchmarks that print figures and ratios against a baseline measured in the same run.
//! Targets are reported, never asserted: a noisy machine must not fail a build.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::image::cpio::CpioWriter;
use crate::image::BuiltImage;
use crate::qemu::{self, Accel};
use crate::vm::{BootOptions, Vm};

/// Why a benchmark could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
}

/// The median of a list of durations.
pub fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

/// Figures of `bench boot`.
pub struct BootBench {
    pub accel: Accel,
    pub runs: u32,
    pub bare_ready: Duration,
    pub bare_exit: Duration,
    pub image_ready: Duration,
    pub image_exit: Duration,
}

impl fmt::Display for BootBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "bench boot ({}, median of {} runs)",
            self.accel, self.runs
        )?;
        writeln!(
            f,
            "  boot-to-ready:    image {:6.2}s   bare busybox {:6.2}s   ratio {:.2} (target <= 1.20)",
            self.image_ready.as_secs_f64(),
            self.bare_ready.as_secs_f64(),
            ratio(self.image_ready, self.bare_ready)
        )?;
        write!(
            f,
            "  boot-to-shutdown: image {:6.2}s   bare busybox {:6.2}s   ratio {:.2} (target <= 1.20)",
            self.image_exit.as_secs_f64(),
            self.bare_exit.as_secs_f64(),
            ratio(self.image_exit, self.bare_exit)
        )
    }
}

/// A busybox initramfs whose init prints a marker and powers off at once.
fn bare_initramfs(path: &Path) -> std::io::Result<()> {
    let mut w = CpioWriter::new(std::io::BufWriter::new(std::fs::File::create(path)?));
    for d in ["/bin", "/dev", "/proc"] {
        w.dir(d)?;
    }
    w.char_dev("/dev/console", 0o600, 5, 1)?;
    w.file("/bin/busybox", 0o755, &std::fs::read("/bin/busybox")?)?;
    w.file(
        "/init",
        0o755,
        b"#!/bin/busybox sh\n/bin/busybox echo BARE-READY\n/bin/busybox poweroff -f\n",
    )?;
    w.finish()?;
    Ok(())
}

/// One bare boot: time to the marker on the console, and to QEMU's exit.
fn bare_boot(
    img: &BuiltImage,
    accel: Accel,
    initrd: &Path,
    dir: &Path,
) -> Result<(Duration, Duration), BenchError> {
    let console = dir.join("bare-console.log");
    let boot = qemu::bare_boot(
        accel,
        &img.kernel,
        initrd,
        "console=ttyS0 loglevel=5 panic=-1",
        &console,
        "BARE-READY",
        Duration::from_secs(120),
    )?;
    match (boot.marker_at, boot.exited_at) {
        (Some(ready), Some(exit)) => Ok((ready, exit)),
        (None, _) => Err(failed(
            "bare boot",
            format!(
                "no marker on the console: {}",
                crate::console::tail(&console, 5)
            ),
        )),
        (Some(_), None) => Err(failed("bare boot", "did not power off within 120 s")),
    }
}

/// `bench boot`: the image's boot-to-ready and boot-to-shutdown against a bare busybox
/// boot of the same kernel, same accelerator, alternating, `runs` times each.
pub fn boot(
    img: &BuiltImage,
    accel: Accel,
    runs: u32,
    dir: &Path,
) -> Result<BootBench, BenchError> {
    let initrd = dir.join("bare.cpio");
    bare_initramfs(&initrd)?;
    let (mut br, mut be, mut ir, mut ie) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs.max(1) {
        let (r, e) = bare_boot(img, accel, &initrd, dir)?;
        br.push(r);
        be.push(e);
        let vm = Vm::boot(img, BootOptions::new(accel, dir.join(format!("vm{i}"))))?;
        ir.push(vm.boot_to_ready);
        ie.push(vm.shutdown(Duration::from_secs(60))?);
    }
    Ok(BootBench {
        accel,
        runs: runs.max(1),
        bare_ready: median(br),
        bare_exit: median(be),
        image_ready: median(ir),
        image_exit: median(ie),
    })
}

/// Figures of `bench agent`.
pub struct AgentBench {
    pub accel: Accel,
    pub volume_mib: u64,
    /// dd of the snapshot device to /dev/null in the guest, MiB/s.
    pub dd_snapshot: f64,
    /// bw-agent full backup to bw-target through the harness's transport, MiB/s.
    pub agent: f64,
    pub agent_witness: f64,
    /// Busy time of the agent's sender stages in each run (read, hash, send), from its
    /// summary: the largest set the pace.
    pub agent_stages: String,
    pub agent_witness_stages: String,
    /// bw-target ingest on the host, and dd writing the same bytes, MiB/s.
    pub target_ingest: f64,
    pub dd_host: f64,
}

impl fmt::Display for AgentBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |a: f64, b: f64| a / b.max(1e-9);
        writeln!(
            f,
            "bench agent ({}, a {} MiB ext4 volume)",
            self.accel, self.volume_mib
        )?;
        writeln!(
            f,
            "  dd of the snapshot device (guest):  {:7.1} MiB/s",
            self.dd_snapshot
        )?;
        writeln!(
            f,
            "  bw-agent, no witness:               {:7.1} MiB/s   ratio {:.2} (target >= 0.50)  {}",
            self.agent,
            r(self.agent, self.dd_snapshot),
            self.agent_stages
        )?;
        writeln!(
            f,
            "  bw-agent, with witness:             {:7.1} MiB/s   ratio {:.2} (target >= 0.45)  {}",
            self.agent_witness,
            r(self.agent_witness, self.dd_snapshot),
            self.agent_witness_stages
        )?;
        writeln!(
            f,
            "  dd writing the same bytes (host):   {:7.1} MiB/s",
            self.dd_host
        )?;
        write!(
            f,
            "  bw-target ingest (host):            {:7.1} MiB/s   ratio {:.2} (target >= 0.90)\n  \
             (block hash xxh3-128; the agent reads, hashes and sends on separate stages; \
             the target re-reads from the device behind its writes)",
            self.target_ingest,
            r(self.target_ingest, self.dd_host)
        )
    }
}

fn failed(what: &str, detail: impl fmt::Display) -> BenchError {
    BenchError::Failed {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// Runs `argv` in the guest and fails unless it exits 0; returns stdout and the time.
fn timed_exec(vm: &mut Vm, argv: &[&str]) -> Result<(String, Duration), BenchError> {
    let t = Instant::now();
    let done = vm
        .guest
        .exec(argv, Duration::from_secs(1800))
        .map_err(|e| failed(&argv.join(" "), e))?;
    if !done.success() {
        return Err(failed(&argv.join(" "), done.describe()));
    }
    Ok((done.stdout, t.elapsed()))
}

/// `bench agent`: the agent's throughput against dd in the same guest, and the
/// target's ingest against dd on the host.
pub fn agent(img: &BuiltImage, accel: Accel, dir: &Path) -> Result<AgentBench, BenchError> {
    use crate::proxy::{ProxyConfig, ProxyHandle};
    use reference_agent::transport::Address;

    const MIB: u64 = 256;
    let disk_path = dir.join("d0.raw");
    std::fs::File::create(&disk_path)?.set_len(MIB << 20)?;
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk_path)
        .status()?;
    if !mkfs.success() {
        return Err(failed("mkfs.ext4", mkfs));
    }
    let mut opts = BootOptions::new(accel, dir.join("run"));
    opts.disks.push(qemu::Disk {
        id: "d0".into(),
        path: disk_path,
        format: qemu::DiskFormat::Raw,
        serial: "bw-d0".into(),
        read_only: false,
        blkdebug: false,
    });
    opts.ports = vec!["bw.transport".into(), "bw.witness".into()];
    let mut vm = Vm::boot(img, opts)?;

    // The target on the host, the proxy bridging QEMU's port to it, a witness sink.
    let store = dir.join("store");
    let sockets = tempfile::Builder::new()
        .prefix("bw-bench-")
        .tempdir_in("/tmp")?;
    let sock = sockets.path().join("target.sock");
    let mut target = Command::new(&img.bw_target)
        .arg("serve")
        .arg("--store")
        .arg(&store)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while !sock.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _proxy = ProxyHandle::start(ProxyConfig::new(
        vm.machine.port_path("bw.transport"),
        Address::Unix(sock.clone()),
    ));
    let mut witness = vm
        .machine
        .connect_port("bw.witness")
        .map_err(|e| failed("the witness port", e))?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut witness, &mut std::io::sink());
    });

    let result = (|| -> Result<AgentBench, BenchError> {
        timed_exec(
            &mut vm,
            &[
                "/bin/sh",
                "-c",
                "d=$(grep -l bw-d0 /sys/block/vd*/serial | cut -d/ -f4) && mkdir -p /mnt/d && \
                 mount -t ext4 /dev/$d /mnt/d && bw-workload fill --dir /mnt/d --bytes 200MiB \
                 --seed 1 >/dev/null && insmod /lib/modules/bwsnap.ko && \
                 bwsnap-ctl setup --minor 9 --cow /mnt/d/.bench-cow /dev/$d >/dev/null && \
                 bwsnap-ctl start 9 >/dev/null",
            ],
        )?;
        let (_, dd) = timed_exec(
            &mut vm,
            &[
                "dd",
                "if=/dev/bwsnap9",
                "of=/dev/null",
                "bs=1M",
                "iflag=direct",
            ],
        )?;
        timed_exec(
            &mut vm,
            &[
                "/bin/sh",
                "-c",
                "bwsnap-ctl destroy 9 >/dev/null && rm /mnt/d/.bench-cow",
            ],
        )?;
        let session = |vm: &mut Vm, witness: bool| -> Result<(f64, String), BenchError> {
            let mut argv = vec![
                "/bin/bw-agent",
                "backup",
                "--volume",
                "/mnt/d=bench",
                "--target",
                "port:bw.transport",
                "--full",
            ];
            if witness {
                argv.extend(["--witness", "port:bw.witness"]);
            }
            let (out, _) = timed_exec(vm, &argv)?;
            let summary: serde_json::Value = out
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .ok_or_else(|| failed("bw-agent", "no summary"))?;
            let v = &summary["volumes"][0];
            let ms = v["session_ms"].as_u64().unwrap_or(0);
            let stage = |k: &str| {
                v[k].as_u64()
                    .map_or("?".into(), |n| format!("{:.1}", n as f64 / 1000.0))
            };
            let stages = format!(
                "[read {} s, hash {} s, send {} s of {:.1} s]",
                stage("read_stage_ms"),
                stage("hash_stage_ms"),
                stage("send_stage_ms"),
                ms as f64 / 1000.0
            );
            Ok((MIB as f64 / (ms.max(1) as f64 / 1000.0), stages))
        };
        let (agent, agent_stages) = session(&mut vm, false)?;
        let (agent_witness, agent_witness_stages) = session(&mut vm, true)?;

        let ingest =
            reference_agent::target::bench::bench_ingest(&img.bw_target, MIB, &dir.join("ingest"))
                .map_err(|e| failed("bw-target ingest", e))?;
        // dd writing the same bytes: the pattern the ingest sent, from a file, synced.
        let pattern = dir.join("pattern.bin");
        {
            let src = reference_agent::target::bench::PatternSource::new(4096);
            let mut f = std::io::BufWriter::new(std::fs::File::create(&pattern)?);
            let mut block = vec![0u8; 4096];
            for b in 0..MIB * 256 {
                src.fill(b, &mut block);
                std::io::Write::write_all(&mut f, &block)?;
            }
        }
        let t = Instant::now();
        let dd_host = Command::new("dd")
            .arg(format!("if={}", pattern.display()))
            .arg(format!("of={}", dir.join("dd.img").display()))
            .args(["bs=1M", "conv=fsync", "status=none"])
            .status()?;
        if !dd_host.success() {
            return Err(failed("dd on the host", dd_host));
        }
        let dd_host = MIB as f64 / t.elapsed().as_secs_f64();
        Ok(AgentBench {
            accel,
            volume_mib: MIB,
            dd_snapshot: MIB as f64 / dd.as_secs_f64(),
            agent,
            agent_witness,
            agent_stages,
            agent_witness_stages,
            target_ingest: ingest.mib_per_s(),
            dd_host,
        })
    })();
    let _ = vm.shutdown(Duration::from_secs(60));
    let _ = target.kill();
    let _ = target.wait();
    result
}

/// Figures of `bench scenario`.
pub struct ScenarioBench {
    pub accel: String,
    pub scenario: String,
    /// The scenario's run, from boot to the written report.
    pub scenario_wall: Duration,
    /// Its backup phase alone.
    pub backup: Duration,
    /// A bare boot, the same fill and the same workload for as long as the backup ran,
    /// shutdown: no backup, no recording.
    pub bare_wall: Duration,
}

impl fmt::Display for ScenarioBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: Duration| d.as_secs_f64();
        writeln!(f, "bench scenario ({}, {})", self.scenario, self.accel)?;
        writeln!(
            f,
            "  scenario run (boot to report):        {:7.1} s",
            s(self.scenario_wall)
        )?;
        writeln!(
            f,
            "  of which the backup itself:           {:7.1} s",
            s(self.backup)
        )?;
        writeln!(
            f,
            "  bare boot + fill + workload, no backup: {:5.1} s",
            s(self.bare_wall)
        )?;
        write!(
            f,
            "  ratio run / (bare + backup):          {:7.2} (target <= 1.20)",
            s(self.scenario_wall) / (s(self.bare_wall) + s(self.backup)).max(1e-9)
        )
    }
}

fn phase_seconds(summary: &serde_json::Value, phase: &str) -> f64 {
    summary["timings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["phase"] == phase)
        .filter_map(|t| t["seconds"].as_f64())
        .sum()
}

/// `bench scenario`: one run of `plan` against a bare run of the same boot, fill and
/// workload, same image and accelerator.
pub fn scenario(
    plan: &crate::plan::Plan,
    scenario_text: &str,
    opts: &crate::run::RunOptions,
    img: &BuiltImage,
    dir: &Path,
) -> Result<ScenarioBench, BenchError> {
    let result = crate::run::run_plan(plan, scenario_text, opts, &crate::events::Silent);
    if result.exit_code() != 0 {
        return Err(failed(
            &format!("running {}", plan.scenario),
            format!(
                "{}: {}",
                result.verdict.name(),
                result.verdict.reasons().join("; ")
            ),
        ));
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(result.report_dir.join("summary.json"))?)
            .map_err(|e| failed("summary.json", e))?;
    let total = summary["total_seconds"].as_f64().unwrap_or(0.0);
    let scenario_wall =
        Duration::from_secs_f64((total - phase_seconds(&summary, "image")).max(0.0));
    let backup = Duration::from_secs_f64(phase_seconds(&summary, "backup 1"));
    let accel = summary["accelerator"].as_str().unwrap_or("?").to_string();
    let accel_used = if accel.starts_with("kvm") {
        Accel::Kvm
    } else {
        Accel::Tcg
    };

    // The bare run: same disks (made the same way), fill, workload for `backup`, shutdown.
    let started = Instant::now();
    let mut opts_boot = BootOptions::new(accel_used, dir.join("bare"));
    opts_boot.memory_mb = (plan.guest.memory_bytes >> 20) as u32;
    opts_boot.cpus = plan.guest.cpus;
    let mut mounts = Vec::new();
    for v in &plan.volumes {
        let path = dir.join(format!("bare-d{}.raw", v.index));
        std::fs::File::create(&path)?.set_len(v.size_bytes)?;
        if let Some(cmd) = crate::run::mkfs_command(v, plan.seed) {
            let ok = Command::new(&cmd[0]).args(&cmd[1..]).arg(&path).status()?;
            if !ok.success() {
                return Err(failed("mkfs", ok));
            }
        }
        opts_boot.disks.push(qemu::Disk {
            id: format!("d{}", v.index),
            path,
            format: qemu::DiskFormat::Raw,
            serial: format!("bw-d{}", v.index),
            read_only: false,
            blkdebug: false,
        });
        if let Some(m) = &v.mount {
            mounts.push(format!(
                "d=$(grep -l bw-d{} /sys/block/vd*/serial | cut -d/ -f4) && mkdir -p {m} && mount /dev/$d {m} && \
                 bw-workload fill --dir {m} --bytes {} --seed {} >/dev/null",
                v.index, v.fill_bytes, v.fill_seed
            ));
        }
    }
    let mut vm = Vm::boot(img, opts_boot)?;
    timed_exec(&mut vm, &["/bin/sh", "-c", &mounts.join(" && ")])?;
    let step = plan
        .backups
        .first()
        .ok_or_else(|| failed("the plan", "has no backup"))?;
    let mut handles = Vec::new();
    for w in &step.during {
        let vol = plan
            .volumes
            .iter()
            .find(|v| v.name == w.volume)
            .ok_or_else(|| failed("workload", "unknown volume"))?;
        let mut argv = vec![
            "/bin/bw-workload".to_string(),
            w.kind.name().to_string(),
            "--dir".into(),
            vol.mount.clone().unwrap_or_default(),
            "--seed".into(),
            w.seed.to_string(),
            "--duration".into(),
            format!("{}ms", backup.as_millis()),
        ];
        if w.stamped {
            argv.push("--stamped".into());
        }
        if let Some(crate::scenario::Rate::BytesPerSec(b)) = w.rate {
            argv.extend(["--rate".into(), format!("{b}/s")]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        handles.push(vm.guest.spawn(&argv).map_err(|e| failed("workload", e))?);
    }
    for h in handles {
        let _ = vm.guest.wait(h, backup + Duration::from_secs(60));
    }
    vm.shutdown(Duration::from_secs(60))?;
    Ok(ScenarioBench {
        accel,
        scenario: plan.scenario.clone(),
        scenario_wall,
        backup,
        bare_wall: started.elapsed(),
    })
}

//! `blockwitness bench agent`: bw-agent's full-backup throughput against dd of the
//! snapshot device in the same guest, and bw-target's ingest against dd on the host.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{failed, timed_exec, BenchError};
use crate::image::BuiltImage;
use crate::qemu::Accel;
use crate::run::disks;
use crate::vm::{BootOptions, Vm};
use reference_agent::agent::backup::Summary;

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

/// `bench agent`: the agent's throughput against dd in the same guest, and the
/// target's ingest against dd on the host.
pub fn agent(img: &BuiltImage, accel: Accel, dir: &Path) -> Result<AgentBench, BenchError> {
    use crate::proxy::{ProxyConfig, ProxyHandle};
    use reference_agent::transport::Address;

    const MIB: u64 = 256;
    let disk = disks::scratch_disk(dir, 0, &format!("{MIB}:ext4"))?;
    let serial = disk.serial.clone();
    let mut opts = BootOptions::new(accel, dir.join("run"));
    opts.disks.push(disk);
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
                &format!(
                    "d=$(grep -l {serial} /sys/block/vd*/serial | cut -d/ -f4) && mkdir -p /mnt/d && \
                     mount -t ext4 /dev/$d /mnt/d && bw-workload fill --dir /mnt/d --bytes 200MiB \
                     --seed 1 >/dev/null && insmod /lib/modules/bwsnap.ko && \
                     bwsnap-ctl setup --minor 9 --cow /mnt/d/.bench-cow /dev/$d >/dev/null && \
                     bwsnap-ctl start 9 >/dev/null"
                ),
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
            let summary =
                Summary::from_output(&out).ok_or_else(|| failed("bw-agent", "no summary"))?;
            let v = summary
                .volumes
                .first()
                .ok_or_else(|| failed("bw-agent", "a summary without volumes"))?;
            let secs = |ms: u64| ms as f64 / 1000.0;
            let stages = format!(
                "[read {:.1} s, hash {:.1} s, send {:.1} s of {:.1} s]",
                secs(v.read_stage_ms),
                secs(v.hash_stage_ms),
                secs(v.send_stage_ms),
                secs(v.session_ms)
            );
            Ok((MIB as f64 / secs(v.session_ms.max(1)), stages))
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

//! The ingest benchmark hook runs a real bw-target and reports a throughput.

use std::path::PathBuf;

use reference_agent::target::bench::bench_ingest;

fn target_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bw-target"))
}

#[test]
fn ingest_benchmark_commits_and_measures() {
    let dir = tempfile::tempdir().unwrap();
    let b = bench_ingest(&target_bin(), 8, dir.path()).unwrap();
    assert_eq!(b.bytes, 8 << 20);
    assert_eq!(b.stats.blocks, 2048);
    assert_eq!(b.stats.frames_resent, 0);
    assert!(b.mib_per_s() > 0.0);
    // The store is removed afterwards.
    assert!(!dir.path().join("bench-store").exists());
}

/// `cargo test --release -p reference-agent --test bench_hook -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check"]
fn ingest_benchmark_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let b = bench_ingest(&target_bin(), 256, dir.path()).unwrap();
    println!(
        "bw-target ingest: {} MiB in {:?} = {:.0} MiB/s (commit {:?})",
        b.bytes >> 20,
        b.duration,
        b.mib_per_s(),
        b.stats.commit_wait
    );
}

#[test]
#[ignore = "a measurement, not a check"]
fn sha256_speed() {
    use sha2::Digest;
    let data = vec![7u8; 64 << 20];
    let t = std::time::Instant::now();
    let mut n = 0u8;
    for c in data.chunks(4096) {
        n ^= sha2::Sha256::digest(c)[0];
    }
    println!(
        "sha256 4 KiB blocks: {:.0} MiB/s ({n})",
        64.0 / t.elapsed().as_secs_f64()
    );
}

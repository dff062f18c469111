//! Runs that must stop before they boot: a run given a prebuilt image never builds or
//! resolves one, and a run whose volumes the host cannot hold creates nothing. Neither
//! boots a guest (the first fails at QEMU's start on a kernel that is not there).

use std::path::Path;

use blockwitness::accel::AccelChoice;
use blockwitness::events::{Event, Reporter};
use blockwitness::image::BuiltImage;
use blockwitness::model::Exit;
use blockwitness::plan::Plan;
use blockwitness::run::{run_plan, RunOptions};

struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: &Event) {}
}

fn scenario(size: &str) -> blockwitness::scenario::Scenario {
    blockwitness::scenario::parse(
        Path::new("x.toml"),
        &format!(
            "name = \"x\"\ndescription = \"d\"\nstory = \"s\"\n[[volumes]]\nname = \"data\"\nsize = \"{size}\"\n"
        ),
    )
    .unwrap()
}

fn options(dir: &Path) -> RunOptions {
    let mut opts = RunOptions::standard(AccelChoice::Tcg);
    opts.cache = dir.join("cache");
    opts.reports_dir = dir.join("reports");
    // No images/ here: building or resolving an image would fail naming it.
    opts.project_root = dir.join("project");
    std::fs::create_dir_all(&opts.project_root).unwrap();
    opts
}

fn host_ready() -> bool {
    match blockwitness::doctor::require(blockwitness::doctor::FOR_RUN) {
        Ok(()) => true,
        Err(e) => {
            crate::cannot_run(&format!("the host lacks run requirements: {e}"));
            false
        }
    }
}

#[test]
fn a_run_given_a_prebuilt_image_never_builds_or_resolves_one() {
    if !host_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        prebuilt: vec![BuiltImage {
            name: "debian-6.1".into(),
            key: "pinned".into(),
            kernel_release: "6.1.0-99-pinned".into(),
            packages: vec![],
            modules: vec![],
            boot_modules: vec![],
            bwsnap_sha256: None,
            bwsnap_build_log: None,
            binaries: vec![],
            busybox_sha256: String::new(),
            kernel: dir.path().join("no-such-vmlinuz"),
            initramfs: dir.path().join("no-such-initramfs"),
            headers_dir: dir.path().join("no-headers"),
            bw_target: dir.path().join("no-bw-target"),
            built_at: 0,
        }],
        ..options(dir.path())
    };
    let plan = Plan::resolve(&scenario("64MiB"), 1, "debian-6.1");
    let r = run_plan(&plan, "", &opts, &Quiet);
    assert_eq!(r.exit(), Exit::HarnessError);
    let why = r.verdict.reasons().join("; ");
    assert!(!why.contains("building image"), "{why}");
    assert!(why.contains("booting"), "{why}");
    // The report names the pinned kernel.
    let summary = std::fs::read_to_string(r.report_dir.join("summary.json")).unwrap();
    assert!(summary.contains("6.1.0-99-pinned"), "{summary}");
}

#[test]
fn a_run_whose_volumes_the_host_cannot_hold_creates_nothing() {
    if !host_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let plan = Plan::resolve(&scenario("1024TiB"), 1, "debian-6.1");
    let r = run_plan(&plan, "", &opts, &Quiet);
    assert_eq!(r.exit(), Exit::HarnessError);
    let why = r.verdict.reasons().join("; ");
    assert!(
        why.contains("the volumes need 1024.0TiB") && why.contains("free: nothing was created"),
        "{why}"
    );
    // The work directory is gone, and it never held a disk.
    let runs = opts.cache.join("runs");
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0);
}

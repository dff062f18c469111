//! The scenario library as it ships (scenarios/, never a copy): every file loads and
//! resolves for every image and seed it names, every fault kind the run can inject has a
//! scenario, every class and outcome is expected somewhere, and the field stories say
//! what they need.

use std::collections::BTreeSet;

use blockwitness::model::{BlockClass, FaultKind, Layer, Outcome, Skipped, Where};
use blockwitness::plan::Plan;
use blockwitness::scenario::{self, Floppy, Scenario};

fn library() -> Vec<Scenario> {
    let dir = blockwitness::paths::scenarios_dir();
    let files = scenario::scenario_files(&dir).unwrap();
    assert!(
        files.len() >= 18,
        "{} scenarios in {}",
        files.len(),
        dir.display()
    );
    files
        .iter()
        .map(|f| scenario::load(f).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn named(name: &str) -> Scenario {
    library()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("scenarios/{name}.toml is gone"))
}

#[test]
fn every_scenario_loads_and_resolves_for_its_matrix() {
    let mut names = BTreeSet::new();
    let mut images = BTreeSet::new();
    for s in library() {
        assert_eq!(
            Some(s.name.as_str()),
            s.path.file_stem().and_then(|n| n.to_str()),
            "name = file name"
        );
        assert!(names.insert(s.name.clone()));
        for (image, seed) in s.matrix() {
            let plan = Plan::resolve(&s, seed, &image);
            assert_eq!(plan.backups.len() as u32, s.backup.count());
            assert!(plan.repro.contains(&format!("--seed {seed}")));
            assert!(plan.repro.contains("scenarios/"), "{}", plan.repro);
            images.insert(image);
        }
    }
    assert_eq!(
        images,
        BTreeSet::from(["debian-6.1".to_string(), "debian-6.12".to_string()])
    );
}

#[test]
fn every_fault_kind_the_run_injects_has_a_scenario() {
    let injected: BTreeSet<&str> = library()
        .iter()
        .flat_map(|s| s.faults.iter().map(|f| f.spec.kind().name()))
        .collect();
    for kind in FaultKind::ALL {
        // Disk faults belong to the witness disk, which injects them in its own runs.
        if kind.layer() == Layer::Disk {
            continue;
        }
        assert!(
            injected.contains(kind.name()),
            "no scenario injects {}",
            kind.label()
        );
    }
}

#[test]
fn every_class_and_outcome_is_expected_by_some_scenario() {
    let all = library();
    for class in BlockClass::ALL {
        if !class.is_problem() || class == BlockClass::Unattributed {
            continue;
        }
        assert!(
            all.iter().any(|s| s.expect.classes.contains(&class)),
            "no scenario expects {}",
            class.name()
        );
    }
    for outcome in Outcome::ALL {
        if outcome == Outcome::HarnessError {
            continue;
        }
        assert!(
            all.iter().any(|s| s.expect.outcomes.contains(&outcome)),
            "no scenario expects {}",
            outcome.name()
        );
    }
}

#[test]
fn detectors_fire_where_the_fault_was_injected_and_module_faults_must_fire() {
    for s in library() {
        if s.faults.is_empty() || s.expect.classes.is_empty() {
            continue;
        }
        assert_eq!(s.expect.at, Where::FaultSites, "{}", s.name);
        if s.faults.iter().any(|f| f.spec.layer() == Layer::Module) {
            assert!(
                !s.expect.allow_clean,
                "{}: a module detector must fire",
                s.name
            );
        }
    }
    assert!(named("future-cow-read-live").expect.named_writes);
}

#[test]
fn no_scenario_lets_a_false_success_pass_unannounced() {
    // A false success is either what a scenario expects, or a failure: never "allowed".
    for s in library() {
        assert!(
            !s.expect.allow_outcomes.contains(&Outcome::FalseSuccess),
            "{} allows a false success",
            s.name
        );
    }
}

#[test]
fn stories_about_devices_and_filesystems() {
    let s = named("ext2-ext4-freeze");
    assert!(s.expect.fsck && s.expect.remount);
    let boot = s.volumes.iter().find(|v| v.name == "boot").unwrap();
    assert_eq!(boot.mount.as_deref(), Some("/boot"));
    assert_eq!(boot.fs.name(), "ext2");
    assert_eq!(boot.fs.block_size(), Some(1024));
    let s = named("floppy-hang-disk");
    assert_eq!(s.guest.floppy, Floppy::Empty);
    let plan = Plan::resolve(&s, s.seed, "debian-6.1");
    assert!(plan.guest.modules.contains(&"floppy".to_string()));
    assert!(plan.guest.hang_disk.is_some());
    assert_eq!(s.expect.skipped, [Skipped::Floppy, Skipped::HangDisk]);
    let s = named("cow-overflow");
    assert!(Plan::resolve(&s, s.seed, "debian-6.1").volumes[0].cow_bytes < 1 << 20);
    assert!(s.expect.outcomes.contains(&Outcome::FailedCleanly));
}

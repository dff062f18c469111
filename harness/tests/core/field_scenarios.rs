//! The field-story scenarios of the scenario library (issue 6), kept as fixtures: each
//! must load, resolve for every image and seed it names, and say what the story needs.

use std::collections::BTreeSet;

use blockwitness::model::{BackupKind, BlockClass, Outcome, Skipped, Where};
use blockwitness::plan::Plan;
use blockwitness::scenario::{self, FaultSpec, Floppy, Scenario};

use crate::fixtures;

fn load(name: &str) -> Scenario {
    scenario::load(&fixtures(&format!("scenarios/{name}.toml"))).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_fixture_loads_and_resolves_for_its_matrix() {
    let files = scenario::scenario_files(&fixtures("scenarios")).unwrap();
    assert!(files.len() >= 18);
    let mut names = BTreeSet::new();
    for file in files {
        let s = scenario::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Some(s.name.as_str()),
            file.file_stem().and_then(|n| n.to_str()),
            "name = file name"
        );
        assert!(names.insert(s.name.clone()));
        for (image, seed) in s.matrix() {
            let plan = Plan::resolve(&s, seed, &image);
            assert_eq!(plan.backups.len() as u32, s.backup.count());
            assert!(plan.repro.contains(&format!("--seed {seed}")));
        }
    }
}

#[test]
fn future_clean_is_131072_blocks_over_five_seeds_and_two_images() {
    let s = load("future-clean");
    assert_eq!(s.matrix().len(), 10);
    let plan = Plan::resolve(&s, s.seed, "debian-6.1");
    assert_eq!(plan.volumes[0].blocks, 131_072);
    assert_eq!(plan.backups[0].during.len(), 1);
    assert!(plan.backups[0].during[0].spec.stamped);
    assert!(plan.expect.classes.is_empty() && plan.expect.outcomes.is_empty());
}

#[test]
fn detectors_expect_their_class_where_the_fault_was_injected() {
    let cases = [
        ("future-cow-read-live", BlockClass::DataFromTheFuture),
        ("module-corrupt-cow", BlockClass::CorruptSnapshot),
        ("incremental-drop-tracking", BlockClass::DataFromThePast),
    ];
    for (name, class) in cases {
        let s = load(name);
        assert_eq!(s.expect.classes, BTreeSet::from([class]), "{name}");
        assert_eq!(s.expect.at, Where::FaultSites, "{name}");
        assert!(!s.expect.allow_clean, "{name}: a detector must fire");
    }
    let s = load("incremental-drop-tracking");
    let plan = Plan::resolve(&s, 1, "debian-6.1");
    assert_eq!(plan.backups[2].kind, BackupKind::Incremental);
    assert!(matches!(
        plan.backups[2].faults[0].spec,
        FaultSpec::DropTracking { every: 5 }
    ));
    assert!(load("future-cow-read-live").expect.named_writes);
}

#[test]
fn recoverable_faults_never_allow_a_false_success() {
    for name in [
        "transport-bit-flip",
        "transport-drop-frame",
        "transport-disconnect",
        "target-wrong-offset",
        "target-crash-before-commit",
    ] {
        let e = load(name).expect;
        assert!(
            !e.outcomes.contains(&Outcome::FalseSuccess)
                && !e.allow_outcomes.contains(&Outcome::FalseSuccess),
            "{name}"
        );
    }
    assert_eq!(
        load("target-skip-verify").expect.outcomes,
        BTreeSet::from([Outcome::FalseSuccess])
    );
}

#[test]
fn stories_about_devices_and_filesystems() {
    let s = load("ext2-ext4-freeze");
    assert!(s.expect.fsck && s.expect.remount);
    assert_eq!(s.volumes[0].mount.as_deref(), Some("/boot"));
    assert_eq!(s.volumes[0].fs.name(), "ext2");
    assert_eq!(
        load("ext2-ext4-freeze-remove-disk").expect.outcomes,
        BTreeSet::from([Outcome::VolumeVanished])
    );
    let s = load("floppy-hang-disk");
    assert_eq!(s.guest.floppy, Floppy::Empty);
    let plan = Plan::resolve(&s, 1, "debian-6.1");
    assert!(plan.guest.modules.contains(&"floppy".to_string()));
    assert!(plan.guest.hang_disk.is_some());
    assert_eq!(s.expect.skipped, [Skipped::Floppy, Skipped::HangDisk]);
    let s = load("cow-overflow");
    assert_eq!(
        Plan::resolve(&s, 1, "debian-6.1").volumes[0].cow_bytes,
        1 << 20
    );
    assert_eq!(s.expect.outcomes, BTreeSet::from([Outcome::FailedCleanly]));
}

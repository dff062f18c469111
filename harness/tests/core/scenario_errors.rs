//! Golden error tests: one scenario file per kind of mistake in fixtures/errors/, the
//! message it must produce in the `.err` beside it (file, line, column, key path, what
//! is allowed). BW_BLESS=1 rewrites the `.err` files.

use std::path::{Path, PathBuf};

use blockwitness::model::Exit;
use blockwitness::scenario::{self, Host};

use crate::{bless, fixtures};

/// The host the golden messages are written against: the project's two images and
/// 64 GiB free in a fixed cache path.
fn host() -> Host {
    Host {
        images: Some(vec!["debian-6.1".into(), "debian-6.12".into()]),
        free: Some((PathBuf::from("/var/cache/blockwitness"), 64 << 30)),
    }
}

#[test]
fn every_mistake_gives_its_golden_message() {
    let dir = fixtures("errors");
    let files = scenario::scenario_files(&dir).unwrap();
    assert!(
        files.len() >= 30,
        "expected the full set of error fixtures, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        // A short, stable path in the message, the way `check` shows a relative path.
        let shown = Path::new("errors").join(file.file_name().unwrap());
        let err = match scenario::parse_for(&shown, &text, &host()) {
            Ok(_) => {
                failures.push(format!("{stem}: was accepted"));
                continue;
            }
            Err(e) => e,
        };
        let n = err.diagnostics().len();
        if !stem.starts_with("several") && n != 1 {
            failures.push(format!("{stem}: {n} diagnostics for one mistake:\n{err}"));
        }
        for d in err.diagnostics() {
            if d.location.is_none() && !d.path.0.is_empty() && d.path.0.len() > 1 {
                failures.push(format!("{stem}: `{}` has no line and column", d.path));
            }
        }
        let rendered = format!("{err}\n");
        let golden = file.with_extension("err");
        if bless() {
            std::fs::write(&golden, &rendered).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == rendered => {}
            Ok(want) => failures.push(format!(
                "{stem}: message changed\n--- want\n{want}--- got\n{rendered}"
            )),
            Err(_) => failures.push(format!(
                "{stem}: no golden file {} (run with BW_BLESS=1)",
                golden.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn several_mistakes_are_all_reported_in_one_pass() {
    let text = std::fs::read_to_string(fixtures("errors/several-mistakes-at-once.toml")).unwrap();
    let err = scenario::parse(Path::new("x.toml"), &text).unwrap_err();
    let paths: Vec<String> = err
        .diagnostics()
        .iter()
        .map(|d| d.path.to_string())
        .collect();
    for want in [
        "name",
        "description",
        "seeds",
        "volumes[0].size",
        "volumes[0].block_size",
        "workloads[0].rate",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} not reported; got {paths:?}"
        );
    }
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let err = scenario::load(Path::new("/nonexistent/x.toml")).unwrap_err();
    assert!(matches!(err, scenario::ScenarioError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/x.toml"));
}

#[test]
fn check_reports_each_file_and_exit_codes() {
    let library = blockwitness::paths::scenarios_dir();
    let report = scenario::check(&[fixtures("errors/bad-size-unit.toml"), library.clone()]);
    assert_eq!(report.exit(), Exit::ProductFailure);
    assert!(!report.all_valid());
    let text = report.to_string();
    assert!(text.contains("FAIL") && text.contains("ok    "), "{text}");
    let good = scenario::check(&[library]);
    assert_eq!(good.exit(), Exit::Pass, "{good}");
    let none = scenario::check(&[fixtures("no-such-dir")]);
    assert_eq!(none.exit(), Exit::HarnessError);
}

//! The `external` pipeline end to end in a VM: a product kept outside the repository
//! runs with nothing changed but one scenario file, and a product command that fails,
//! hangs past its limit or prints nothing where it must is a harness error naming the
//! step, the command, how it ended and its output's tail, with nothing left running; so
//! is a one-command `snapshot` that never announces in a scenario that did not declare
//! `instant = "oracle"`.

mod common;

use std::path::{Path, PathBuf};

use blockwitness::accel::AccelChoice;
use blockwitness::events::{Event, Reporter};
use blockwitness::model::Exit;
use blockwitness::plan::Plan;
use blockwitness::run::{run_plan, RunOptions, RunResult};

const FIXTURE: &str = "tests/fixtures/products/dmwrap";

struct Lines;

impl Reporter for Lines {
    fn event(&self, event: &Event) {
        if let Event::Phase { name, .. } = event {
            eprintln!("== {name}");
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A scenario for dmwrap at `dir` (absolute), with `commands` as its command table.
fn scenario(name: &str, dir: &Path, extra: &str, commands: &str) -> String {
    format!(
        r#"name = "{name}"
description = "dmwrap from outside the repository"
story = "data from the future"
images = ["debian-6.1"]
timeout = "10m"

[guest]
memory = "1GiB"
cpus = 2
modules = ["dm_snapshot"]

[pipeline]
kind = "external"
dir = "{}"
build = "sh build.sh"
modules = ["module/bwx_linear.ko"]
scratch_disk = "80MiB"
{extra}
[pipeline.commands]
{commands}

[[volumes]]
name = "data"
size = "64MiB"
fill = "50%"

[[workloads]]
kind = "overwrite"
stamped = true
rate = "1MiB per 4%"
"#,
        dir.display()
    )
}

const DMWRAP: &str = r#"prepare = "dmwrap prepare"
freeze = "dmwrap freeze"
setup = "dmwrap setup"
thaw = "dmwrap thaw"
device = "dmwrap device"
stream = "dmwrap stream"
destroy = "dmwrap destroy""#;

fn run(file: &Path, text: &str) -> (RunResult, Plan) {
    common::image("debian-6.1");
    std::fs::write(file, text).unwrap();
    let s = blockwitness::scenario::parse(file, text)
        .unwrap_or_else(|e| panic!("scenario invalid:\n{e}"));
    let plan = Plan::resolve(&s, s.seed, "debian-6.1");
    let result = run_plan(
        &plan,
        &s.source,
        &RunOptions::standard(AccelChoice::Auto),
        &Lines,
    );
    (result, plan)
}

/// No process of the run is left (QEMU names the run's work directory).
fn nothing_left(result: &RunResult) {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&result.run_id) && !cmdline.contains("pipelines-") {
            left.push(cmdline);
        }
    }
    assert!(left.is_empty(), "left running: {left:?}");
}

fn outside() -> (tempfile::TempDir, PathBuf) {
    let tmp = common::scratch("pipelines");
    let product = tmp.path().join("dmwrap");
    copy_tree(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIXTURE),
        &product,
    );
    (tmp, product)
}

#[test]
fn vm_a_product_outside_the_repository_runs_from_one_scenario_file() {
    let (tmp, product) = outside();
    let file = tmp.path().join("dmwrap.toml");
    let (result, plan) = run(&file, &scenario("dmwrap-outside", &product, "", DMWRAP));
    assert_eq!(
        result.exit(),
        Exit::Pass,
        "{}: {:?}\nrepro: {}",
        result.verdict.name(),
        result.verdict.reasons(),
        plan.repro
    );
    nothing_left(&result);
}

/// Each bad command (step, its command table, fragments the error must hold).
#[test]
fn vm_a_failing_hanging_or_silent_command_is_a_harness_error_naming_it() {
    let (tmp, product) = outside();
    let cases: [(&str, String, &str, Vec<&str>); 4] = [
        (
            "fails",
            DMWRAP.replace(
                "device = \"dmwrap device\"",
                "device = \"echo no-device-here >&2; exit 3\"",
            ),
            "",
            vec!["step `device`", "exit status 3", "no-device-here"],
        ),
        (
            "hangs",
            DMWRAP.replace(
                "setup = \"dmwrap setup\"",
                "setup = \"echo stuck; sleep 600\"",
            ),
            "step_timeout = \"5s\"\n",
            vec!["step `setup`", "limit of 5s", "stuck"],
        ),
        (
            "silent",
            DMWRAP.replace("device = \"dmwrap device\"", "device = \"true\""),
            "",
            vec!["step `device`", "printed nothing"],
        ),
        (
            // A one-command snapshot that does not announce, in a scenario that did not
            // say `instant = "oracle"`: never taken for a product judged at the cut.
            "unannounced",
            DMWRAP.replace(
                "freeze = \"dmwrap freeze\"\nsetup = \"dmwrap setup\"\nthaw = \"dmwrap thaw\"",
                "snapshot = \"dmwrap snapshot\"",
            ),
            "",
            vec!["ended without announcing", "instant = \"oracle\""],
        ),
    ];
    for (name, commands, extra, want) in cases {
        let file = tmp.path().join(format!("{name}.toml"));
        let (result, _) = run(
            &file,
            &scenario(&format!("dmwrap-{name}"), &product, extra, &commands),
        );
        assert_eq!(
            result.exit(),
            Exit::HarnessError,
            "{name}: {:?}",
            result.verdict
        );
        let reasons = result.verdict.reasons().join("\n");
        for w in want {
            assert!(reasons.contains(w), "{name}: {w:?} not in:\n{reasons}");
        }
        nothing_left(&result);
    }
}

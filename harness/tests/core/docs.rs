//! docs/scenarios.md and the schema stay in step: the key reference in the doc is
//! generated from the key table (BW_BLESS=1 regenerates it), the key table agrees with
//! what serde accepts in both directions, and every full example in the doc is valid.

use std::path::{Path, PathBuf};

use blockwitness::scenario::keys::{self, KeyType, KEYS};
use blockwitness::scenario::raw::RawScenario;

use crate::bless;

const BEGIN: &str = "<!-- keys:begin (generated from harness/src/scenario/keys.rs; BW_BLESS=1 cargo test regenerates) -->\n";
const END: &str = "<!-- keys:end -->";

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/scenarios.md")
}

#[test]
fn the_key_reference_is_generated_from_the_key_table() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).expect("docs/scenarios.md exists");
    let start = doc.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = doc.find(END).expect("end marker");
    let want = keys::reference_markdown();
    if doc[start..end] != want {
        if bless() {
            let updated = format!("{}{}{}", &doc[..start], want, &doc[end..]);
            std::fs::write(&path, updated).unwrap();
            return;
        }
        panic!("docs/scenarios.md's key reference is out of date with keys.rs: run BW_BLESS=1 cargo test -p blockwitness --test core docs");
    }
}

/// A scenario text with every key of the table set to its example; `extra` adds a line to
/// the table at a schema path ("" = top level), `over` replaces a key's value.
fn full_example(extra: Option<(&str, &str)>, over: Option<(&str, &str)>) -> String {
    let value = |k: &keys::KeyDoc| match over {
        Some((path, v)) if path == k.path => v.to_string(),
        _ => k.example.to_string(),
    };
    let body = |parent: &str| -> String {
        let mut out = String::new();
        for k in keys::children(parent) {
            if !matches!(k.ty, KeyType::Table | KeyType::TableArray) {
                out.push_str(&format!("{} = {}\n", k.name(), value(k)));
            }
        }
        if let Some((at, line)) = extra {
            if at == parent {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    };
    let mut text = body("");
    for k in keys::children("") {
        match k.ty {
            KeyType::Table => {
                text.push_str(&format!("[{}]\n{}", k.path, body(k.path)));
                // Tables inside it (`[pipeline.commands]`).
                for sub in keys::children(k.path).filter(|s| s.ty == KeyType::Table) {
                    text.push_str(&format!("[{}]\n{}", sub.path, body(sub.path)));
                }
            }
            KeyType::TableArray => text.push_str(&format!(
                "[[{}]]\n{}",
                k.path,
                body(&format!("{}[]", k.path))
            )),
            _ => {}
        }
    }
    text
}

/// The backquoted names after "expected" in a serde error message.
fn expected_list(message: &str) -> Vec<String> {
    let tail = &message[message.find("expected").expect("an 'expected' list")..];
    tail.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn serde_accepts_every_documented_key() {
    let text = full_example(None, None);
    if let Err(e) = toml::from_str::<RawScenario>(&text) {
        panic!("{e}\n{text}");
    }
}

#[test]
fn every_key_serde_accepts_is_documented() {
    let tables = [
        "",
        "guest",
        "volumes[]",
        "workloads[]",
        "backup",
        "faults[]",
        "expect",
        "pipeline",
        "pipeline.commands",
    ];
    for parent in tables {
        let text = full_example(Some((parent, "zz_probe = 1")), None);
        let err = toml::from_str::<RawScenario>(&text).expect_err("probe key must be refused");
        let mut accepted = expected_list(err.message());
        accepted.sort();
        let mut documented: Vec<String> = keys::children(parent)
            .map(|k| k.name().to_owned())
            .collect();
        documented.sort();
        assert_eq!(
            accepted, documented,
            "table `{parent}`: serde and keys.rs disagree"
        );
    }
    // And the table list above is every table of the schema.
    let all: Vec<String> = KEYS.iter().map(|k| k.parent().to_owned()).collect();
    for p in all {
        assert!(tables.contains(&p.as_str()), "table {p} not probed");
    }
}

#[test]
fn enum_values_agree_with_serde() {
    for k in KEYS {
        let (values, list) = match k.ty {
            KeyType::Enum(v) => (v, false),
            KeyType::EnumList(v) => (v, true),
            _ => continue,
        };
        // faults[].kind is a string checked against the fault table, not a serde enum.
        if k.path == "faults[].kind" {
            continue;
        }
        for v in values {
            let lit = if list {
                format!("[\"{v}\"]")
            } else {
                format!("\"{v}\"")
            };
            let text = full_example(None, Some((k.path, &lit)));
            assert!(
                toml::from_str::<RawScenario>(&text).is_ok(),
                "{} = {lit} refused by serde",
                k.path
            );
        }
        let bogus = if list {
            "[\"zz-bogus\"]"
        } else {
            "\"zz-bogus\""
        };
        let err = toml::from_str::<RawScenario>(&full_example(None, Some((k.path, bogus))))
            .expect_err("bogus value");
        let serde_values = expected_list(err.message());
        // Expectation lists accept a subset of the classes and outcomes serde knows.
        for v in values {
            assert!(
                serde_values.iter().any(|s| s == v),
                "{}: {v} unknown to serde",
                k.path
            );
        }
        if !k.path.starts_with("expect.") {
            assert_eq!(
                serde_values.len(),
                values.len(),
                "{}: serde has {:?}",
                k.path,
                serde_values
            );
        }
    }
}

#[test]
fn full_examples_in_the_doc_are_valid_scenarios() {
    let doc = std::fs::read_to_string(doc_path()).unwrap();
    let mut n = 0;
    for block in doc.split("```toml\n").skip(1) {
        let text = &block[..block.find("```").expect("closed code block")];
        if !text.starts_with("name = ") {
            continue; // a fragment
        }
        n += 1;
        if let Err(e) = blockwitness::scenario::parse(Path::new("docs/scenarios.md"), text) {
            panic!("an example in docs/scenarios.md is invalid:\n{e}\n{text}");
        }
    }
    assert!(n >= 2, "the doc should hold full examples (found {n})");
}

/// Every example value of the key table is well formed where it stands, and the
/// validation does catch a malformed value at that very key: each typed key is tried
/// with its example and with nonsense.
#[test]
fn example_values_are_well_formed_and_nonsense_is_caught_at_its_key() {
    let malformed = [
        "is not a size",
        "is not a duration",
        "is not a rate",
        "is neither",
        "cannot be",
        "is not a valid name",
        "is not a usable",
    ];
    // Diagnostics (path, message) of a scenario text; parse errors count as none.
    let diagnostics = |text: &str| -> Vec<(String, String)> {
        match blockwitness::scenario::parse(Path::new("all-keys.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .diagnostics()
                .iter()
                .map(|d| (d.path.to_string(), d.message.clone()))
                .collect(),
        }
    };
    let mut tried = 0;
    for k in KEYS {
        let nonsense = match k.ty {
            KeyType::Size | KeyType::Duration | KeyType::SizeOrPercent | KeyType::Rate => {
                "\"zz nonsense\""
            }
            KeyType::Name => "\"Not A Name\"",
            _ => continue,
        };
        let at = k.path.replace("[]", "[0]");
        let good = diagnostics(&full_example(None, None));
        for (path, message) in &good {
            assert!(
                !(path == &at && malformed.iter().any(|m| message.contains(m))),
                "the example of `{}` is malformed: {message}",
                k.path
            );
        }
        let bad = diagnostics(&full_example(None, Some((k.path, nonsense))));
        assert!(
            bad.iter().any(|(path, _)| path == &at),
            "`{} = {nonsense}` was not reported at {at}; got {bad:?}",
            k.path
        );
        tried += 1;
    }
    assert!(tried >= 12, "only {tried} typed keys tried");
}

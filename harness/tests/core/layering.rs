//! The harness's modules depend on each other one way: the vocabulary (`model`) imports
//! nothing from the crate, and no two modules import each other, directly or around a
//! longer loop. Read from the `crate::` paths in the sources (imports and inline paths,
//! tests included), so a new cycle fails here before it settles in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`run/disks.rs` → `run`), or None for
/// the crate roots.
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The top-level modules a source text names through `crate::`, outside comments.
fn crate_deps(text: &str) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: the first segment of each entry.
                let end = group.find('}').unwrap_or(group.len());
                for entry in group[..end].split(',') {
                    let name: String = entry
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        deps.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    deps.insert(name);
                }
            }
        }
    }
    deps
}

/// Module → the other top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(crate_deps(&text).into_iter().filter(|d| *d != module));
    }
    graph
}

#[test]
fn the_model_imports_nothing_from_the_rest_of_the_crate() {
    let mut files = Vec::new();
    rust_files(&src().join("model"), &mut files);
    assert!(files.len() >= 5, "model/ has {} files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let outside: Vec<String> = crate_deps(&text)
            .into_iter()
            .filter(|d| d != "model")
            .collect();
        assert!(
            outside.is_empty(),
            "{} imports {outside:?} from outside model/",
            file.display()
        );
    }
}

#[test]
fn no_two_modules_depend_on_each_other() {
    let graph = graph();
    // Depth-first search for a back edge; report the loop it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        loops: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            loops.push(cycle.join(" -> "));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, loops);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut loops = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut loops);
    }
    assert!(
        loops.is_empty(),
        "import cycles between harness modules:\n{}",
        loops.join("\n")
    );
}

#[test]
fn the_dependency_reader_sees_imports_and_skips_comments() {
    let deps = crate_deps(
        "use crate::model::{BlockClass, Outcome};\nuse crate::{qemu, vm::Vm};\n\
         // crate::nightly is only mentioned\nlet x = crate::hash::hash_image(p);\n",
    );
    let want: BTreeSet<String> = ["model", "qemu", "vm", "hash"].map(String::from).into();
    assert_eq!(deps, want);
}

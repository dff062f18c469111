//! Checks the Rust mirror of the bwsnap ABI (`reference_agent::bwsnap::abi`) against its
//! one definition, `kmod/bwsnap_abi.h`: a C probe is compiled with the system C compiler
//! against the header, prints every size, field offset, constant and ioctl number, and
//! each must equal what Rust computes.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use reference_agent::bwsnap::abi;

fn header_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kmod")
}

/// Every (name, C expression) the probe prints, and what Rust says it is.
fn expectations() -> Vec<(String, String, u64)> {
    let mut v: Vec<(String, String, u64)> = Vec::new();
    let mut add = |name: &str, c: &str, rust: u64| v.push((name.into(), c.into(), rust));

    macro_rules! layout {
        ($rust:ty, $c:literal, [$($field:ident),* $(,)?]) => {{
            add(concat!($c, ".size"), concat!("sizeof(struct ", $c, ")"),
                size_of::<$rust>() as u64);
            $(
                add(concat!($c, ".", stringify!($field)),
                    concat!("offsetof(struct ", $c, ", ", stringify!($field), ")"),
                    offset_of!($rust, $field) as u64);
            )*
        }};
    }

    layout!(
        abi::Setup,
        "bwsnap_setup",
        [bdev_path, cow_path, cow_size, minor, flags]
    );
    layout!(
        abi::ToSnapshot,
        "bwsnap_to_snapshot",
        [cow_path, cow_size, minor, flags]
    );
    layout!(abi::Minor, "bwsnap_minor", [minor, flags]);
    layout!(
        abi::Info,
        "bwsnap_info",
        [
            minor,
            state,
            error,
            abi_version,
            seq,
            uuid,
            dev_size,
            cow_size,
            cow_used,
            changed_blocks,
            tracking_blocks,
            cow_copies,
            cow_reads,
            live_reads,
            tracked_writes,
            cow_extents,
            reserved,
            bdev_path,
        ]
    );
    layout!(
        abi::Map,
        "bwsnap_map",
        [minor, flags, start_block, nr_blocks, buf]
    );
    layout!(abi::Extent, "bwsnap_extent", [physical, length]);
    layout!(abi::Extents, "bwsnap_extents", [minor, count, buf]);
    layout!(
        abi::TraceEvent,
        "bwsnap_trace_event",
        [block, source, flags]
    );
    layout!(abi::Trace, "bwsnap_trace", [minor, count, buf, dropped]);

    let consts: &[(&str, u64)] = &[
        ("BWSNAP_ABI_VERSION", abi::ABI_VERSION.into()),
        ("BWSNAP_BLOCK_SHIFT", abi::BLOCK_SHIFT.into()),
        ("BWSNAP_BLOCK_SIZE", abi::BLOCK_SIZE.into()),
        ("BWSNAP_MAX_MINORS", abi::MAX_MINORS.into()),
        ("BWSNAP_COW_SIZE_DEFAULT", abi::COW_SIZE_DEFAULT),
        ("BWSNAP_INFO_PATH_MAX", abi::INFO_PATH_MAX as u64),
        ("BWSNAP_STATE_NONE", abi::STATE_NONE.into()),
        ("BWSNAP_STATE_ARMED", abi::STATE_ARMED.into()),
        ("BWSNAP_STATE_SNAPSHOT", abi::STATE_SNAPSHOT.into()),
        ("BWSNAP_STATE_INCREMENTAL", abi::STATE_INCREMENTAL.into()),
        ("BWSNAP_SRC_LIVE", abi::SRC_LIVE.into()),
        ("BWSNAP_SRC_COW", abi::SRC_COW.into()),
        ("BWSNAP_SRC_ERROR", abi::SRC_ERROR.into()),
        ("BWSNAP_TRACE_FAULT", abi::TRACE_FAULT.into()),
        ("BWSNAP_IOC_MAGIC", abi::IOC_MAGIC.into()),
        ("BWSNAP_IOC_SETUP", abi::IOC_SETUP.into()),
        ("BWSNAP_IOC_START", abi::IOC_START.into()),
        ("BWSNAP_IOC_TO_INCREMENTAL", abi::IOC_TO_INCREMENTAL.into()),
        ("BWSNAP_IOC_TO_SNAPSHOT", abi::IOC_TO_SNAPSHOT.into()),
        ("BWSNAP_IOC_DESTROY", abi::IOC_DESTROY.into()),
        ("BWSNAP_IOC_INFO", abi::IOC_INFO.into()),
        ("BWSNAP_IOC_READ_MAP", abi::IOC_READ_MAP.into()),
        ("BWSNAP_IOC_COW_EXTENTS", abi::IOC_COW_EXTENTS.into()),
        ("BWSNAP_IOC_TRACE", abi::IOC_TRACE.into()),
    ];
    for (name, rust) in consts {
        v.push((
            name.to_string(),
            format!("(unsigned long long)({name})"),
            *rust,
        ));
    }
    v
}

/// Compiles and runs the probe; returns name → value as C sees it.
fn probe(exprs: &[(String, String, u64)]) -> BTreeMap<String, u64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("probe.c");
    let bin = dir.path().join("probe");
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"bwsnap_abi.h\"\nint main(void)\n{\n",
    );
    for (name, expr, _) in exprs {
        c.push_str(&format!(
            "\tprintf(\"%s %llu\\n\", \"{name}\", (unsigned long long)({expr}));\n"
        ));
    }
    // String constants are checked as strings.
    c.push_str("\tprintf(\"BWSNAP_CTL_NAME=%s\\n\", BWSNAP_CTL_NAME);\n");
    c.push_str("\tprintf(\"BWSNAP_DEV_PREFIX=%s\\n\", BWSNAP_DEV_PREFIX);\n");
    c.push_str("\treturn 0;\n}\n");
    std::fs::write(&src, c).expect("write probe");

    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-I"])
        .arg(header_dir())
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(
        out.status.success(),
        "the probe does not compile against kmod/bwsnap_abi.h:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin).output().expect("run the probe");
    assert!(run.status.success(), "probe failed");
    let text = String::from_utf8(run.stdout).expect("utf-8 probe output");
    let mut values = BTreeMap::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("BWSNAP_CTL_NAME=") {
            assert_eq!(s, abi::CTL_NAME, "BWSNAP_CTL_NAME");
        } else if let Some(s) = line.strip_prefix("BWSNAP_DEV_PREFIX=") {
            assert_eq!(s, abi::DEV_PREFIX, "BWSNAP_DEV_PREFIX");
        } else {
            let (name, value) = line.split_once(' ').expect("name value");
            values.insert(name.to_string(), value.parse().expect("number"));
        }
    }
    values
}

#[test]
fn rust_mirror_matches_the_header() {
    let exprs = expectations();
    let c = probe(&exprs);
    let mismatches: Vec<String> = exprs
        .iter()
        .filter_map(|(name, _, rust)| match c.get(name) {
            Some(cval) if cval == rust => None,
            Some(cval) => Some(format!("{name}: C {cval:#x}, Rust {rust:#x}")),
            None => Some(format!("{name}: not printed by the probe")),
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "bwsnap ABI mismatches:\n{}",
        mismatches.join("\n")
    );
    // Sanity: the probe really printed every expectation.
    assert_eq!(c.len(), exprs.len());
}

#[test]
fn structures_have_no_implicit_padding() {
    // The header promises naturally aligned fields with no holes; the Rust mirror
    // must not add any either, or 32/64-bit callers would disagree.
    let c = probe(&expectations());
    assert_eq!(c["bwsnap_setup.size"], 32);
    assert_eq!(c["bwsnap_minor.size"], 8);
    assert_eq!(c["bwsnap_trace_event.size"], 16);
    assert_eq!(c["bwsnap_info.size"] % 8, 0);
}

//! The guest's serial console: captured to a file by QEMU, read back and scanned for
//! kernel trouble (oops, BUG, WARN, hung tasks, lockdep, panics).

use std::path::Path;

/// A kind of kernel trouble seen on the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trouble {
    Oops,
    Bug,
    Warn,
    HungTask,
    Lockdep,
    Panic,
}

/// One line of trouble, with its line number in the console log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub kind: Trouble,
    pub line_no: usize,
    pub line: String,
}

/// How each kind of trouble shows on the console; matched against the text after the
/// `[ timestamp]` prefix.
const PATTERNS: &[(&str, Trouble)] = &[
    ("Oops:", Trouble::Oops),
    ("general protection fault", Trouble::Oops),
    ("invalid opcode:", Trouble::Oops),
    ("Unable to handle kernel", Trouble::Oops),
    ("BUG:", Trouble::Bug),
    ("kernel BUG at", Trouble::Bug),
    ("possible circular locking dependency", Trouble::Lockdep),
    ("possible recursive locking", Trouble::Lockdep),
    ("inconsistent lock state", Trouble::Lockdep),
    ("WARNING:", Trouble::Warn),
    ("blocked for more than", Trouble::HungTask),
    ("Kernel panic", Trouble::Panic),
];

/// Scans console text for trouble.
pub fn scan(text: &str) -> Vec<Finding> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let body = match line.find("] ") {
            Some(at) if line.starts_with('[') => &line[at + 2..],
            _ => line,
        };
        if let Some((_, trouble)) = PATTERNS.iter().find(|(p, _)| body.contains(p)) {
            found.push(Finding {
                kind: *trouble,
                line_no: i + 1,
                line: line.trim_end().to_string(),
            });
        }
    }
    found
}

/// The last `n` lines of the console log, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_kind_and_ignores_ordinary_lines() {
        let log = "\
[    0.000000] Linux version 6.1.0-56-amd64
[    5.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008
[    5.100001] Oops: 0002 [#1] PREEMPT SMP NOPTI
[    6.000000] WARNING: CPU: 0 PID: 1 at block/blk-core.c:1 submit_bio_noacct+0x1
[   40.000000] INFO: task bw-agent:77 blocked for more than 30 seconds.
[   41.000000] EXT4-fs (vdb): mounted filesystem with ordered data mode
bw-init: ready after 4000 ms
";
        let kinds: Vec<Trouble> = scan(log).iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                Trouble::Bug,
                Trouble::Oops,
                Trouble::Warn,
                Trouble::HungTask
            ]
        );
        assert_eq!(scan(log)[0].line_no, 2);
    }

    #[test]
    fn finds_panics_and_numbers_lines_from_one() {
        let log = "[    1.0] ok\n[    2.5] BUG: kernel NULL pointer dereference, address: 0\n\
                   [    3.0] WARNING: CPU: 0 PID: 1 at fs/ext4/super.c:123\n\
                   [  120.1] INFO: task bw-agent:77 blocked for more than 120 seconds.\n\
                   [  130.0] Kernel panic - not syncing: Fatal exception\nplain line\n";
        let kinds: Vec<Trouble> = scan(log).iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                Trouble::Bug,
                Trouble::Warn,
                Trouble::HungTask,
                Trouble::Panic
            ]
        );
        assert_eq!(scan(log)[0].line_no, 2);
    }
}

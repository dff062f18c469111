//! The pipeline's scratch file on the volume (bwsnap's COW file, written behind the
//! filesystem's back), found by the harness itself on the truth image: its byte
//! extents (`debugfs stat` for ext2/ext4, `xfs_db bmap` for xfs), the blocks they
//! exclude from classification (whole 4 KiB blocks only; a block the file covers in
//! part is judged byte by byte on the rest), the cap at the COW size, and where the
//! pipeline's own report of the file disagrees.
//!
//! Nothing the pipeline says about its COW file decides what is excluded: a module
//! that reported too much would hide the very blocks it got wrong.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::model::BLOCK;
use crate::record::{Exclusion, PartialBlock};
use crate::scenario::Filesystem;

#[derive(Debug, thiserror::Error)]
pub enum CowFileError {
    #[error("cannot run `{tool}` on {image}")]
    Spawn {
        tool: &'static str,
        image: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{tool}` on {image}: {detail}")]
    Tool {
        tool: &'static str,
        image: PathBuf,
        detail: String,
    },
    #[error("reading block {block} of {path}")]
    Read {
        path: PathBuf,
        block: u64,
        #[source]
        source: std::io::Error,
    },
}

/// A byte range on the device: (offset, length).
pub type Range = (u64, u64);

fn run(tool: &'static str, args: &[&str], image: &Path) -> Result<String, CowFileError> {
    let out = Command::new(tool)
        .args(args)
        .arg(image)
        .output()
        .map_err(|source| CowFileError::Spawn {
            tool,
            image: image.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(CowFileError::Tool {
            tool,
            image: image.to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The device byte ranges of the data of `file` (a path from the filesystem's root) on
/// `image`, in file order; None when there is no such file.
pub fn find(image: &Path, fs: Filesystem, file: &str) -> Result<Option<Vec<Range>>, CowFileError> {
    let path = format!("/{}", file.trim_start_matches('/'));
    match fs {
        Filesystem::Ext2 { block_size } | Filesystem::Ext4 { block_size } => {
            let out = Command::new("debugfs")
                .arg("-R")
                .arg(format!("stat {path}"))
                .arg(image)
                .output()
                .map_err(|source| CowFileError::Spawn {
                    tool: "debugfs",
                    image: image.to_owned(),
                    source,
                })?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("File not found") {
                return Ok(None);
            }
            if !out.status.success() || !stdout.contains("Inode:") {
                return Err(CowFileError::Tool {
                    tool: "debugfs",
                    image: image.to_owned(),
                    detail: format!("stat {path}: {}", stderr.trim()),
                });
            }
            Ok(Some(ext_ranges(&stdout, u64::from(block_size))))
        }
        Filesystem::Xfs => {
            let sb = run(
                "xfs_db",
                &["-r", "-c", "sb 0", "-c", "p blocksize agblocks"],
                image,
            )?;
            let field = |name: &str| -> Option<u64> {
                sb.lines().find_map(|l| {
                    l.strip_prefix(name)?
                        .trim()
                        .strip_prefix('=')?
                        .trim()
                        .parse()
                        .ok()
                })
            };
            let (Some(block_size), Some(agblocks)) = (field("blocksize"), field("agblocks")) else {
                return Err(CowFileError::Tool {
                    tool: "xfs_db",
                    image: image.to_owned(),
                    detail: format!("no blocksize or agblocks in {sb:?}"),
                });
            };
            let out = Command::new("xfs_db")
                .args(["-r", "-c", &format!("path {path}"), "-c", "bmap"])
                .arg(image)
                .output()
                .map_err(|source| CowFileError::Spawn {
                    tool: "xfs_db",
                    image: image.to_owned(),
                    source,
                })?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file") || stdout.contains("No such file") {
                return Ok(None);
            }
            if !out.status.success() || !stderr.trim().is_empty() {
                return Err(CowFileError::Tool {
                    tool: "xfs_db",
                    image: image.to_owned(),
                    detail: format!("path {path}: {}{}", stderr.trim(), stdout.trim()),
                });
            }
            Ok(Some(xfs_ranges(&stdout, block_size, agblocks)))
        }
        Filesystem::None => Ok(None),
    }
}

/// Data ranges from `debugfs stat`'s BLOCKS: or EXTENTS: section: `(0-11):615-626`,
/// `(0-3000[u]):1192-4192` (unwritten, still the file's), `(12):700`; indirect and
/// extent-tree blocks (`(IND):627`, `(ETB0):9`) are the filesystem's, not the file's data.
fn ext_ranges(stat: &str, block_size: u64) -> Vec<Range> {
    let mut ranges = Vec::new();
    let mut inside = false;
    for line in stat.lines() {
        let line = line.trim();
        if line == "BLOCKS:" || line == "EXTENTS:" {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if line.is_empty() || line.starts_with("TOTAL") {
            break;
        }
        for entry in line.split(", ") {
            let Some((logical, physical)) = entry.trim().split_once("):") else {
                continue;
            };
            let logical = logical.trim_start_matches('(').trim_end_matches("[u]");
            if !logical.starts_with(|c: char| c.is_ascii_digit()) {
                continue; // IND, DIND, TIND, ETBn
            }
            let (a, b) = match physical.split_once('-') {
                Some((a, b)) => (a.parse::<u64>(), b.parse::<u64>()),
                None => (physical.parse(), physical.parse()),
            };
            if let (Ok(a), Ok(b)) = (a, b) {
                ranges.push((a * block_size, (b - a + 1) * block_size));
            }
        }
    }
    ranges
}

/// Data ranges from `xfs_db bmap`: `data offset 0 startblock 24 (0/24) count 74 flag 0`,
/// the `(agno/agbno)` pair placing the extent on the device.
fn xfs_ranges(bmap: &str, block_size: u64, agblocks: u64) -> Vec<Range> {
    bmap.lines()
        .filter(|l| l.trim_start().starts_with("data offset"))
        .filter_map(|l| {
            let open = l.find('(')?;
            let close = l[open..].find(')')? + open;
            let (agno, agbno) = l[open + 1..close].split_once('/')?;
            let (agno, agbno): (u64, u64) = (agno.parse().ok()?, agbno.parse().ok()?);
            let count: u64 = l
                .split_whitespace()
                .skip_while(|w| *w != "count")
                .nth(1)?
                .parse()
                .ok()?;
            Some(((agno * agblocks + agbno) * block_size, count * block_size))
        })
        .collect()
}

/// Sorted, with touching and overlapping ranges merged: two reports of the same bytes
/// compare equal however their extents were cut.
pub fn normalise(ranges: &[Range]) -> Vec<Range> {
    let mut sorted: Vec<Range> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
    sorted.sort_unstable();
    let mut out: Vec<Range> = Vec::new();
    for (start, len) in sorted {
        match out.last_mut() {
            Some((s, l)) if start <= *s + *l => *l = (*l).max(start + len - *s),
            _ => out.push((start, len)),
        }
    }
    out
}

fn total(ranges: &[Range]) -> u64 {
    ranges.iter().map(|r| r.1).sum()
}

/// What the COW file's ranges leave out of classification.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cover {
    /// Whole 4 KiB blocks inside the file.
    pub excluded: Vec<Exclusion>,
    /// 4 KiB blocks the file covers in part: the file's bytes inside each, (offset, length).
    pub partial: BTreeMap<u64, Vec<(u32, u32)>>,
    /// Bytes of the file beyond `cap` that were not excluded.
    pub over_cap: u64,
}

/// The blocks `ranges` (in file order) exclude, taking at most `cap` bytes of them.
pub fn cover(ranges: &[Range], cap: u64, reason: &str) -> Cover {
    let mut kept = Vec::new();
    let mut left = cap;
    let mut over = 0;
    for &(start, len) in ranges {
        let take = len.min(left);
        if take > 0 {
            kept.push((start, take));
        }
        left -= take;
        over += len - take;
    }
    let b = BLOCK as u64;
    let mut out = Cover {
        over_cap: over,
        ..Cover::default()
    };
    for (start, len) in normalise(&kept) {
        let end = start + len;
        let first_whole = start.div_ceil(b);
        let end_whole = end / b;
        if first_whole < end_whole {
            out.excluded.push(Exclusion {
                start: first_whole,
                end: end_whole,
                reason: reason.to_string(),
            });
        }
        // The ragged ends: the 4 KiB blocks the range only partly covers.
        let mut piece = |block: u64, from: u64, to: u64| {
            let at = (from - block * b) as u32;
            out.partial
                .entry(block)
                .or_default()
                .push((at, (to - from) as u32));
        };
        if first_whole > end_whole {
            // Wholly inside one block.
            piece(start / b, start, end);
            continue;
        }
        if start % b != 0 {
            piece(start / b, start, (start / b + 1) * b);
        }
        if end % b != 0 && end_whole >= first_whole {
            piece(end_whole, end_whole * b, end);
        }
    }
    // Pieces of one block from two ranges that together fill it: the block is whole.
    let whole: Vec<u64> = out
        .partial
        .iter()
        .filter(|(_, p)| p.iter().map(|x| u64::from(x.1)).sum::<u64>() >= b)
        .map(|(k, _)| *k)
        .collect();
    for k in whole {
        out.partial.remove(&k);
        out.excluded.push(Exclusion {
            start: k,
            end: k + 1,
            reason: reason.to_string(),
        });
    }
    out
}

/// Where the pipeline's report of its COW file disagrees with what the harness found.
pub fn disagreement(found: &[Range], reported: Option<&[Range]>) -> Option<String> {
    let found = normalise(found);
    let Some(reported) = reported else {
        return (!found.is_empty()).then(|| {
            format!(
                "the pipeline reports no COW file, and the truth image holds one of {} bytes",
                total(&found)
            )
        });
    };
    let reported = normalise(reported);
    if found == reported {
        return None;
    }
    let show = |r: &[Range]| -> String {
        let shown: Vec<String> = r.iter().take(4).map(|(s, l)| format!("{s}+{l}")).collect();
        let more = if r.len() > 4 {
            format!(" ... ({} ranges)", r.len())
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    };
    Some(format!(
        "the pipeline reports its COW file at bytes {} ({} bytes), and on the truth image it is at {} ({} bytes)",
        show(&reported),
        total(&reported),
        show(&found),
        total(&found)
    ))
}

/// Whether every byte of block `block` outside the `cow` pieces is the same in `truth`
/// and `target`. A target too short to hold the block differs.
pub fn outside_equal(
    truth: &Path,
    target: &Path,
    block: u64,
    cow: &[(u32, u32)],
) -> Result<bool, CowFileError> {
    let read = |path: &Path| -> Result<Option<Vec<u8>>, CowFileError> {
        let err = |source| CowFileError::Read {
            path: path.to_owned(),
            block,
            source,
        };
        let file = File::open(path).map_err(err)?;
        let mut buf = vec![0u8; BLOCK];
        match file.read_exact_at(&mut buf, block * BLOCK as u64) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(err(e)),
        }
    };
    let (Some(mut a), Some(mut b)) = (read(truth)?, read(target)?) else {
        return Ok(false);
    };
    for &(at, len) in cow {
        let range = at as usize..(at + len).min(BLOCK as u32) as usize;
        a[range.clone()].fill(0);
        b[range].fill(0);
    }
    Ok(a == b)
}

/// The partial blocks with their verdict on the bytes outside the COW file.
pub fn judge_partial(
    partial: &BTreeMap<u64, Vec<(u32, u32)>>,
    truth: &Path,
    target: Option<&Path>,
) -> Result<BTreeMap<u64, PartialBlock>, CowFileError> {
    let mut out = BTreeMap::new();
    for (&block, cow) in partial {
        let outside_equal = match target {
            Some(t) => Some(outside_equal(truth, t, block, cow)?),
            None => None,
        };
        out.insert(
            block,
            PartialBlock {
                cow: cow.clone(),
                outside_equal,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugfs_stat_gives_data_ranges_only() {
        let ext2 = "Inode: 13   Type: regular\nBLOCKS:\n(0-11):615-626, (IND):627, (12-267):628-883, (DIND):884, (IND):885, (268-523):886-1141\nTOTAL: 705\n";
        assert_eq!(
            ext_ranges(ext2, 1024),
            [
                (615 * 1024, 12 * 1024),
                (628 * 1024, 256 * 1024),
                (886 * 1024, 256 * 1024)
            ]
        );
        let ext4 = "Inode: 13\nEXTENTS:\n(ETB0):90, (0-3000[u]):1192-4192, (3001):5000\n";
        assert_eq!(
            ext_ranges(ext4, 4096),
            [(1192 * 4096, 3001 * 4096), (5000 * 4096, 4096)]
        );
    }

    #[test]
    fn xfs_bmap_places_extents_by_allocation_group() {
        let bmap = "data offset 0 startblock 24 (0/24) count 74 flag 0\ndata offset 74 startblock 8388618 (1/10) count 2 flag 1\n";
        assert_eq!(
            xfs_ranges(bmap, 4096, 20480),
            [(24 * 4096, 74 * 4096), ((20480 + 10) * 4096, 2 * 4096)]
        );
    }

    #[test]
    fn a_1k_block_file_excludes_whole_blocks_only() {
        // 1 KiB filesystem blocks 5..=14: bytes 5120..15360. 4 KiB blocks 2 and 3 are
        // wholly inside; block 1 holds 3 KiB of the file, block 3's end is inside.
        let c = cover(&[(5 * 1024, 10 * 1024)], u64::MAX, "COW");
        assert_eq!(
            c.excluded
                .iter()
                .map(|e| (e.start, e.end))
                .collect::<Vec<_>>(),
            [(2, 3)]
        );
        assert_eq!(c.partial[&1], [(1024, 3072)]);
        assert_eq!(c.partial[&3], [(0, 3072)]);
        assert_eq!(c.over_cap, 0);
        // Never 3 KiB of a neighbour hidden: block 1's first KiB and block 3's last are
        // judged.
        assert!(!c.excluded.iter().any(|e| e.start <= 1 && 1 < e.end));
    }

    #[test]
    fn two_pieces_that_fill_a_block_make_it_whole_and_the_cap_holds() {
        let c = cover(&[(0, 6144), (6144, 2048)], u64::MAX, "COW");
        assert_eq!(c.partial.len(), 0);
        assert_eq!(
            normalise(
                &c.excluded
                    .iter()
                    .map(|e| (e.start * 4096, (e.end - e.start) * 4096))
                    .collect::<Vec<_>>()
            ),
            [(0, 8192)]
        );
        let c = cover(&[(0, 8192), (40960, 8192)], 12288, "COW");
        assert_eq!(c.over_cap, 4096);
        assert_eq!(
            c.excluded
                .iter()
                .map(|e| (e.start, e.end))
                .collect::<Vec<_>>(),
            [(0, 2), (10, 11)]
        );
    }

    #[test]
    fn reports_are_compared_however_their_extents_were_cut() {
        let found = [(4096, 8192), (20480, 4096)];
        assert_eq!(
            disagreement(&found, Some(&[(20480, 4096), (4096, 4096), (8192, 4096)])),
            None
        );
        let d = disagreement(&found, Some(&[(4096, 16384)])).unwrap();
        assert!(d.contains("4096+16384") && d.contains("12288 bytes"), "{d}");
        assert!(disagreement(&found, None)
            .unwrap()
            .contains("reports no COW file"));
        assert_eq!(disagreement(&[], None), None);
    }

    #[test]
    fn outside_bytes_are_compared_with_the_cow_bytes_masked() {
        let dir = tempfile::tempdir().unwrap();
        let (t, g) = (dir.path().join("t"), dir.path().join("g"));
        let truth = vec![7u8; 2 * BLOCK];
        let mut target = truth.clone();
        target[BLOCK + 2000] = 9; // inside the COW piece of block 1
        std::fs::write(&t, &truth).unwrap();
        std::fs::write(&g, &target).unwrap();
        assert!(outside_equal(&t, &g, 1, &[(1024, 3072)]).unwrap());
        target[BLOCK + 10] = 9; // outside it: a neighbour's byte changed
        std::fs::write(&g, &target).unwrap();
        assert!(!outside_equal(&t, &g, 1, &[(1024, 3072)]).unwrap());
        // A target too short differs.
        std::fs::write(&g, &target[..BLOCK]).unwrap();
        assert!(!outside_equal(&t, &g, 1, &[(1024, 3072)]).unwrap());
    }

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("-V").output().is_ok()
    }

    #[test]
    fn finds_a_preallocated_file_on_real_ext4_ext2_and_xfs_images() {
        if !have("debugfs") || !have("xfs_db") {
            return crate::cannot_run("e2fsprogs or xfsprogs is missing");
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a"), vec![1u8; 20_000]).unwrap();
        for (kind, bs) in [("ext4", 1024u32), ("ext2", 1024), ("ext4", 4096)] {
            let img = dir.path().join(format!("{kind}-{bs}.img"));
            let ok = Command::new("mke2fs")
                .args(["-q", "-F", "-t", kind, "-b", &bs.to_string(), "-d"])
                .arg(&root)
                .arg(&img)
                .arg("16M")
                .status()
                .unwrap()
                .success();
            assert!(ok);
            let script = "write /dev/null .bwsnap-cow-2\nfallocate /.bwsnap-cow-2 0 299\n";
            let mut cmd = Command::new("debugfs");
            cmd.args(["-w", "-f", "-"]).arg(&img);
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success());
            let fs = if kind == "ext2" {
                Filesystem::Ext2 { block_size: bs }
            } else {
                Filesystem::Ext4 { block_size: bs }
            };
            let ranges = find(&img, fs, ".bwsnap-cow-2").unwrap().unwrap();
            assert_eq!(
                total(&ranges),
                300 * u64::from(bs),
                "{kind} {bs}: {ranges:?}"
            );
            assert_eq!(find(&img, fs, ".bwsnap-cow-9").unwrap(), None);
        }
        // xfs: a file made by mkfs's prototype; its extents must hold its bytes.
        let data = dir.path().join("data");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&data, &bytes).unwrap();
        let proto = dir.path().join("proto");
        std::fs::write(
            &proto,
            format!(
                "/dev/null\n0 0\nd--755 0 0\n.bwsnap-cow-2 ---644 0 0 {}\n$\n$\n",
                data.display()
            ),
        )
        .unwrap();
        let img = dir.path().join("x.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let ok = Command::new("mkfs.xfs")
            .args(["-q", "-f", "-p"])
            .arg(&proto)
            .arg(&img)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let ranges = find(&img, Filesystem::Xfs, ".bwsnap-cow-2")
            .unwrap()
            .unwrap();
        let file = File::open(&img).unwrap();
        let mut read = Vec::new();
        for (start, len) in &ranges {
            let mut buf = vec![0u8; *len as usize];
            file.read_exact_at(&mut buf, *start).unwrap();
            read.extend(buf);
        }
        assert_eq!(&read[..bytes.len()], &bytes[..]);
        assert_eq!(find(&img, Filesystem::Xfs, ".bwsnap-cow-9").unwrap(), None);
    }
}

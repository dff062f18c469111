//! Maps 4 KiB block numbers of an ext2/ext4 image to what owns them: a file's path, the
//! journal, a named piece of metadata (superblock, group descriptors, bitmaps, inode
//! tables), or free space. Uses e2fsprogs on the host: `dumpe2fs` for the layout and free
//! ranges, `debugfs` `icheck` (block → inode) then `ncheck` (inode → path). xfs and raw
//! volumes say honestly that they are not mapped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::model::BLOCK;
use crate::scenario::Filesystem;

/// At most this many blocks are mapped per image; the rest say so. icheck scans every
/// inode per call, so the cost grows with the block count only through output size, but
/// a report never needs owners for more blocks than its tables show.
pub const MAX_MAPPED: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum FsMapError {
    #[error("`{tool}` is not installed: mapping blocks to files needs it (install with: apt-get install e2fsprogs)")]
    MissingTool { tool: &'static str },
    #[error("cannot run `{tool}` on {image}")]
    Spawn {
        tool: &'static str,
        image: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{tool}` failed on {image}: {stderr}")]
    Failed {
        tool: &'static str,
        image: PathBuf,
        stderr: String,
    },
}

/// What a block belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    File(String),
    /// In use by an inode that has no path (orphan, or a special inode).
    Inode(u64),
    Journal,
    Metadata(String),
    FreeSpace,
    OutsideFilesystem,
    NotMapped(String),
    /// A 4 KiB block holding smaller filesystem blocks with different owners.
    Several(Vec<Owner>),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Owner::File(p) => f.write_str(p),
            Owner::Inode(i) => write!(f, "inode {i} (no path)"),
            Owner::Journal => f.write_str("metadata: journal"),
            Owner::Metadata(what) => write!(f, "metadata: {what}"),
            Owner::FreeSpace => f.write_str("free space"),
            Owner::OutsideFilesystem => f.write_str("outside the filesystem"),
            Owner::NotMapped(why) => write!(f, "not mapped ({why})"),
            Owner::Several(all) => {
                let parts: Vec<String> = all.iter().map(|o| o.to_string()).collect();
                f.write_str(&parts.join(" + "))
            }
        }
    }
}

/// Maps `blocks` (4 KiB units) of the image to their owners.
pub fn map_blocks(
    image: &Path,
    fs: Filesystem,
    blocks: &[u64],
) -> Result<BTreeMap<u64, Owner>, FsMapError> {
    let block_size = match fs {
        Filesystem::Ext2 { block_size } | Filesystem::Ext4 { block_size } => u64::from(block_size),
        Filesystem::Xfs => {
            return Ok(all(
                blocks,
                Owner::NotMapped("xfs: the mapper reads ext2/ext4 only".into()),
            ))
        }
        Filesystem::None => {
            return Ok(all(
                blocks,
                Owner::NotMapped("raw volume, no filesystem".into()),
            ))
        }
    };
    let unique: BTreeSet<u64> = blocks.iter().copied().collect();
    let (mapped, rest): (Vec<u64>, Vec<u64>) = {
        let v: Vec<u64> = unique.into_iter().collect();
        let cut = v.len().min(MAX_MAPPED);
        (v[..cut].to_vec(), v[cut..].to_vec())
    };
    let mut out = all(
        &rest,
        Owner::NotMapped(format!("more than {MAX_MAPPED} blocks")),
    );
    if mapped.is_empty() {
        return Ok(out);
    }
    let layout = Layout::read(image)?;
    let per = (BLOCK as u64 / block_size).max(1);
    // fs block → 4 KiB block
    let mut fs_blocks: Vec<(u64, u64)> = Vec::new();
    for &b in &mapped {
        for i in 0..per {
            fs_blocks.push((b * per + i, b));
        }
    }
    let mut owners_fs: BTreeMap<u64, Owner> = BTreeMap::new();
    let mut need_icheck = Vec::new();
    for &(fb, _) in &fs_blocks {
        if fb >= layout.total_blocks {
            owners_fs.insert(fb, Owner::OutsideFilesystem);
        } else if let Some(what) = layout.metadata_at(fb) {
            owners_fs.insert(fb, Owner::Metadata(what));
        } else if layout.is_free(fb) {
            owners_fs.insert(fb, Owner::FreeSpace);
        } else {
            need_icheck.push(fb);
        }
    }
    let inodes = icheck(image, &need_icheck)?;
    let wanted: BTreeSet<u64> = inodes.values().copied().filter(|&i| i != 8).collect();
    let paths = ncheck(image, &wanted)?;
    for fb in need_icheck {
        let owner = match inodes.get(&fb) {
            Some(8) => Owner::Journal,
            Some(7) => Owner::Metadata("reserved GDT blocks (resize inode)".into()),
            Some(&i) => match paths.get(&i) {
                Some(p) => Owner::File(p.clone()),
                None => Owner::Inode(i),
            },
            None => Owner::Metadata("in use, no inode owns it".into()),
        };
        owners_fs.insert(fb, owner);
    }
    for &b in &mapped {
        let mut parts: Vec<Owner> = Vec::new();
        for i in 0..per {
            if let Some(o) = owners_fs.get(&(b * per + i)) {
                if !parts.contains(o) {
                    parts.push(o.clone());
                }
            }
        }
        let owner = if parts.len() == 1 {
            parts.remove(0)
        } else {
            Owner::Several(parts)
        };
        out.insert(b, owner);
    }
    Ok(out)
}

fn all(blocks: &[u64], owner: Owner) -> BTreeMap<u64, Owner> {
    blocks.iter().map(|b| (*b, owner.clone())).collect()
}

fn run(tool: &'static str, args: &[&std::ffi::OsStr], image: &Path) -> Result<String, FsMapError> {
    let out = Command::new(tool).args(args).output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            FsMapError::MissingTool { tool }
        } else {
            FsMapError::Spawn {
                tool,
                image: image.to_owned(),
                source,
            }
        }
    })?;
    if !out.status.success() {
        return Err(FsMapError::Failed {
            tool,
            image: image.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The filesystem layout from `dumpe2fs`: metadata ranges and free ranges.
struct Layout {
    total_blocks: u64,
    metadata: Vec<(u64, u64, String)>,
    free: Vec<(u64, u64)>,
}

impl Layout {
    fn read(image: &Path) -> Result<Layout, FsMapError> {
        let text = run("dumpe2fs", &[image.as_os_str()], image)?;
        Ok(Layout::parse(&text))
    }

    fn parse(text: &str) -> Layout {
        let mut total_blocks = u64::MAX;
        let mut metadata = Vec::new();
        let mut free = Vec::new();
        let mut group = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("Block count:") {
                total_blocks = rest.trim().parse().unwrap_or(u64::MAX);
            } else if let Some(rest) = line.strip_prefix("Group ") {
                group = rest.split(':').next().unwrap_or("").to_owned();
            } else if let Some(rest) = line.strip_prefix("Free blocks: ") {
                free.extend(rest.split(", ").filter_map(parse_range));
            } else {
                for part in line.split(", ") {
                    let names: [(&str, &str); 7] = [
                        ("Primary superblock at ", "superblock"),
                        ("Backup superblock at ", "backup superblock"),
                        ("Group descriptors at ", "group descriptors"),
                        ("Reserved GDT blocks at ", "reserved GDT blocks"),
                        ("Block bitmap at ", "block bitmap"),
                        ("Inode bitmap at ", "inode bitmap"),
                        ("Inode table at ", "inode table"),
                    ];
                    for (prefix, name) in names {
                        if let Some(rest) = part.strip_prefix(prefix) {
                            let range = rest.split_whitespace().next().unwrap_or("");
                            if let Some((a, b)) = parse_range(range) {
                                metadata.push((a, b, format!("{name} of group {group}")));
                            }
                        }
                    }
                }
            }
        }
        Layout {
            total_blocks,
            metadata,
            free,
        }
    }

    fn metadata_at(&self, b: u64) -> Option<String> {
        self.metadata
            .iter()
            .find(|(a, z, _)| *a <= b && b <= *z)
            .map(|(_, _, n)| n.clone())
    }

    fn is_free(&self, b: u64) -> bool {
        self.free.iter().any(|(a, z)| *a <= b && b <= *z)
    }
}

/// "12" or "12-40" (inclusive).
fn parse_range(text: &str) -> Option<(u64, u64)> {
    let text = text.trim();
    match text.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let n = text.parse().ok()?;
            Some((n, n))
        }
    }
}

/// Numbers per command line: debugfs reads a command file line by line into a fixed
/// buffer (8 KiB), and the rest of a longer line comes back as a command of its own
/// ("Command not found 58"). 400 numbers of up to 12 digits stay well inside it.
const PER_LINE: usize = 400;

fn debugfs(image: &Path, commands: &str) -> Result<String, FsMapError> {
    let mut file = tempfile::NamedTempFile::new().map_err(|source| FsMapError::Spawn {
        tool: "debugfs",
        image: image.to_owned(),
        source,
    })?;
    file.write_all(commands.as_bytes())
        .map_err(|source| FsMapError::Spawn {
            tool: "debugfs",
            image: image.to_owned(),
            source,
        })?;
    run(
        "debugfs",
        &["-f".as_ref(), file.path().as_os_str(), image.as_os_str()],
        image,
    )
}

/// fs block → inode, for the blocks some inode owns.
fn icheck(image: &Path, blocks: &[u64]) -> Result<BTreeMap<u64, u64>, FsMapError> {
    let mut out = BTreeMap::new();
    if blocks.is_empty() {
        return Ok(out);
    }
    let mut commands = String::new();
    for chunk in blocks.chunks(PER_LINE) {
        commands.push_str("icheck");
        for b in chunk {
            commands.push_str(&format!(" {b}"));
        }
        commands.push('\n');
    }
    for line in debugfs(image, &commands)?.lines() {
        let mut parts = line.split('\t');
        if let (Some(b), Some(i), None) = (parts.next(), parts.next(), parts.next()) {
            if let (Ok(b), Ok(i)) = (b.trim().parse::<u64>(), i.trim().parse::<u64>()) {
                out.insert(b, i);
            }
        }
    }
    Ok(out)
}

/// inode → its first path.
fn ncheck(image: &Path, inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, String>, FsMapError> {
    let mut out = BTreeMap::new();
    if inodes.is_empty() {
        return Ok(out);
    }
    let list: Vec<u64> = inodes.iter().copied().collect();
    let mut commands = String::new();
    for chunk in list.chunks(PER_LINE) {
        commands.push_str("ncheck");
        for i in chunk {
            commands.push_str(&format!(" {i}"));
        }
        commands.push('\n');
    }
    for line in debugfs(image, &commands)?.lines() {
        if let Some((i, path)) = line.split_once('\t') {
            if let Ok(i) = i.trim().parse::<u64>() {
                // debugfs writes the root's children as "//name".
                let path = format!("/{}", path.trim_start_matches('/'));
                out.entry(i).or_insert(path);
            }
        }
    }
    if inodes.contains(&2) {
        out.entry(2).or_insert_with(|| "/".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("-V").output().is_ok()
    }

    /// Builds a small ext image from a directory without mounting (mke2fs -d).
    fn image(kind: &str, block_size: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::write(root.join("dir/file1"), vec![0x5a; 200_000]).unwrap();
        std::fs::write(root.join("small"), vec![0xa5; 9000]).unwrap();
        let img = dir.path().join("img");
        let status = Command::new("mke2fs")
            .args(["-q", "-F", "-t", kind, "-b", &block_size.to_string(), "-d"])
            .arg(&root)
            .arg(&img)
            .arg("16M")
            .status()
            .unwrap();
        assert!(status.success());
        (dir, img)
    }

    fn bmap(img: &Path, file: &str) -> u64 {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("bmap {file} 0"))
            .arg(img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    #[test]
    fn ext4_blocks_map_to_files_metadata_and_free_space() {
        if !have("debugfs") {
            return crate::cannot_run("e2fsprogs is missing (doctor reports it)");
        }
        let (_dir, img) = image("ext4", 4096);
        let file_block = bmap(&img, "/dir/file1");
        let owners = map_blocks(
            &img,
            Filesystem::Ext4 { block_size: 4096 },
            &[0, 3, file_block, 3500, 99_999],
        )
        .unwrap();
        assert_eq!(owners[&file_block], Owner::File("/dir/file1".into()));
        assert_eq!(owners[&0].to_string(), "metadata: superblock of group 0");
        assert_eq!(owners[&3].to_string(), "metadata: block bitmap of group 0");
        assert_eq!(owners[&3500], Owner::FreeSpace);
        assert_eq!(owners[&99_999], Owner::OutsideFilesystem);
    }

    #[test]
    fn thousands_of_file_blocks_map_in_one_go() {
        if !have("debugfs") {
            return crate::cannot_run("e2fsprogs is missing (doctor reports it)");
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("big"), vec![0x3c; 12 << 20]).unwrap();
        let img = dir.path().join("img");
        let status = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-d"])
            .arg(&root)
            .arg(&img)
            .arg("16M")
            .status()
            .unwrap();
        assert!(status.success());
        // 1 KiB blocks: each 4 KiB block asks icheck about four, over 12000 data blocks
        // in all: far more numbers than one debugfs command line holds.
        let first = bmap(&img, "/big") / 4;
        let blocks: Vec<u64> = (first..first + 3000).collect();
        let owners = map_blocks(&img, Filesystem::Ext4 { block_size: 1024 }, &blocks).unwrap();
        let mapped = blocks
            .iter()
            .filter(|b| owners[b].to_string().contains("/big"))
            .count();
        // The rest are the block groups' own metadata between the file's extents.
        assert!(mapped > 2500, "{mapped} of 3000 blocks mapped to /big");
    }

    #[test]
    fn ext2_with_1k_blocks_maps_each_4k_block() {
        if !have("debugfs") {
            return crate::cannot_run("e2fsprogs is missing (doctor reports it)");
        }
        let (_dir, img) = image("ext2", 1024);
        let fs_block = bmap(&img, "/small");
        let owners =
            map_blocks(&img, Filesystem::Ext2 { block_size: 1024 }, &[fs_block / 4]).unwrap();
        assert!(
            owners[&(fs_block / 4)].to_string().contains("/small"),
            "{}",
            owners[&(fs_block / 4)]
        );
    }

    #[test]
    fn xfs_and_raw_say_not_mapped() {
        let owners = map_blocks(Path::new("/nonexistent"), Filesystem::Xfs, &[1, 2]).unwrap();
        assert!(matches!(owners[&1], Owner::NotMapped(_)));
        let owners = map_blocks(Path::new("/nonexistent"), Filesystem::None, &[1]).unwrap();
        assert_eq!(
            owners[&1].to_string(),
            "not mapped (raw volume, no filesystem)"
        );
    }

    #[test]
    fn layout_parses_dumpe2fs_group_lines() {
        let text = "Block count:              4096\nGroup 0: (Blocks 0-4095) csum 0x4899\n  Primary superblock at 0, Group descriptors at 1-1\n  Reserved GDT blocks at 2-2\n  Block bitmap at 3 (+3), csum 0xad30592f\n  Inode table at 35-290 (+35)\n  Free blocks: 1344-4095\n";
        let l = Layout::parse(text);
        assert_eq!(l.total_blocks, 4096);
        assert_eq!(
            l.metadata_at(100).as_deref(),
            Some("inode table of group 0")
        );
        assert!(l.is_free(2000) && !l.is_free(1000));
    }
}

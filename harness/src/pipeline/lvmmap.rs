//! Where an LVM logical volume's blocks are on its disk, so the harness can cut the
//! volume's truth out of the disk's point-in-time image on the host: a linear volume is
//! a list of extent ranges (from `lvs` at setup); a thin volume's blocks are wherever
//! the pool mapped them, read from the pool's own metadata in that same image with
//! `thin_dump` (thin-provisioning-tools on the host), never from the guest.
//! Also: reading `thin_delta`'s changed ranges.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A piece of a logical volume: `len` bytes at `lv_offset` of the volume are at
/// `disk_offset` of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub lv_offset: u64,
    pub disk_offset: u64,
    pub len: u64,
}

/// How a volume lies on its disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    Linear {
        segments: Vec<Segment>,
    },
    /// A thin volume: the pool's metadata and data volumes, and the volume's thin id.
    Thin {
        metadata: Vec<Segment>,
        data: Vec<Segment>,
        thin_id: u64,
    },
}

/// Why a layout could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("`lvs` output: {0}")]
    Lvs(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("thin_dump of the pool's metadata failed ({status}): {stderr}")]
    ThinDump { status: String, stderr: String },
    #[error("thin_dump is not on this host: install thin-provisioning-tools (or run `blockwitness setup`)")]
    NoThinDump(#[source] std::io::Error),
    #[error("thin_dump output: {0}")]
    Xml(String),
    #[error("the pool's metadata has no thin device {0}")]
    NoDevice(u64),
    #[error(
        "a mapping of the thin volume points past the pool's data volume (data block {block})"
    )]
    PastData { block: u64 },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MapError + 'a {
    move |source| MapError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One line of `lvs -a --noheadings --units b --nosuffix -o
/// lv_name,seg_start,seg_size,seg_pe_ranges`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvsSegment {
    pub lv: String,
    pub seg_start: u64,
    pub seg_size: u64,
    /// First and last physical extent.
    pub pe_first: u64,
    pub pe_last: u64,
}

/// Parses the `lvs` lines above. Hidden volumes come bracketed (`[pool_tdata]`); the
/// brackets are dropped. Segments without a physical range (a thin volume's) are
/// skipped.
pub fn parse_lvs(text: &str) -> Result<Vec<LvsSegment>, MapError> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 4 {
            continue;
        }
        let bad = || MapError::Lvs(format!("cannot read {line:?}"));
        let lv = w[0]
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let seg_start: u64 = w[1].parse().map_err(|_| bad())?;
        let seg_size: u64 = w[2].parse().map_err(|_| bad())?;
        // `/dev/vda:0-15`
        let range = w[3].rsplit_once(':').map(|(_, r)| r).ok_or_else(bad)?;
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        out.push(LvsSegment {
            lv,
            seg_start,
            seg_size,
            pe_first: a.parse().map_err(|_| bad())?,
            pe_last: b.parse().map_err(|_| bad())?,
        });
    }
    Ok(out)
}

/// The segments of volume `lv`, given the first extent's offset and the extent size.
pub fn segments_of(
    lvs: &[LvsSegment],
    lv: &str,
    pe_start: u64,
    extent: u64,
) -> Result<Vec<Segment>, MapError> {
    let segs: Vec<Segment> = lvs
        .iter()
        .filter(|s| s.lv == lv)
        .map(|s| Segment {
            lv_offset: s.seg_start,
            disk_offset: pe_start + s.pe_first * extent,
            len: s.seg_size,
        })
        .collect();
    if segs.is_empty() {
        return Err(MapError::Lvs(format!("no segment of {lv}")));
    }
    for (s, l) in segs.iter().zip(lvs.iter().filter(|s| s.lv == lv)) {
        if (l.pe_last - l.pe_first + 1) * extent != s.len {
            return Err(MapError::Lvs(format!(
                "{lv}: extents {}-{} do not make {} bytes",
                l.pe_first, l.pe_last, s.len
            )));
        }
    }
    Ok(segs)
}

/// Copies `len` bytes at `from` in `src` to `to` in `dst` (in 1 MiB pieces).
fn copy_range(src: &File, dst: &File, from: u64, to: u64, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], from + done)?;
        // Holes stay holes: most of a fresh volume is zeros.
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], to + done)?;
        }
        done += n as u64;
    }
    Ok(())
}

/// Where byte `offset` of a volume made of `segments` is on the disk.
fn locate(segments: &[Segment], offset: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| s.lv_offset <= offset && offset < s.lv_offset + s.len)
        .map(|s| s.disk_offset + (offset - s.lv_offset))
}

/// Copies the volume at `segments` out of `disk` into a new sparse file `out` of
/// `size` bytes.
fn cut_linear(disk: &Path, segments: &[Segment], size: u64, out: &Path) -> Result<(), MapError> {
    let src = File::open(disk).map_err(io("opening", disk))?;
    let dst = new_sparse(out, size)?;
    for s in segments {
        let len = s.len.min(size.saturating_sub(s.lv_offset));
        copy_range(&src, &dst, s.disk_offset, s.lv_offset, len).map_err(io("copying", out))?;
    }
    Ok(())
}

fn new_sparse(path: &Path, size: u64) -> Result<File, MapError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("creating", path))?;
    f.set_len(size).map_err(io("sizing", path))?;
    Ok(f)
}

/// One thin device's mappings, in data blocks: (volume block, pool data block, count).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ThinMappings {
    /// Bytes per data block.
    pub block_bytes: u64,
    pub runs: Vec<(u64, u64, u64)>,
}

/// The attribute `name="..."` of an XML element's text.
fn attr(element: &str, name: &str) -> Option<u64> {
    let key = format!(" {name}=\"");
    let at = element.find(&key)? + key.len();
    let end = element[at..].find('"')?;
    element[at..at + end].parse().ok()
}

/// Reads `thin_dump`'s XML: the superblock's `data_block_size` (sectors) and the
/// range and single mappings of device `dev_id`.
pub fn parse_thin_dump(xml: &str, dev_id: u64) -> Result<ThinMappings, MapError> {
    let sb = xml
        .find("<superblock")
        .map(|at| &xml[at..at + xml[at..].find('>').unwrap_or(0)])
        .ok_or_else(|| MapError::Xml("no <superblock>".into()))?;
    let sectors =
        attr(sb, "data_block_size").ok_or_else(|| MapError::Xml("no data_block_size".into()))?;
    let mut out = ThinMappings {
        block_bytes: sectors * 512,
        runs: Vec::new(),
    };
    let mut inside = false;
    let mut found = false;
    for raw in xml.split('<').skip(1) {
        let element = format!(" {}", raw.split('>').next().unwrap_or(""));
        let name = raw
            .split(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .next()
            .unwrap_or("");
        match name {
            "device" => {
                inside = attr(&element, "dev_id") == Some(dev_id);
                found |= inside;
            }
            "range_mapping" if inside => {
                let (Some(o), Some(d), Some(n)) = (
                    attr(&element, "origin_begin"),
                    attr(&element, "data_begin"),
                    attr(&element, "length"),
                ) else {
                    return Err(MapError::Xml(format!("range_mapping {element:?}")));
                };
                out.runs.push((o, d, n));
            }
            "single_mapping" if inside => {
                let (Some(o), Some(d)) =
                    (attr(&element, "origin_block"), attr(&element, "data_block"))
                else {
                    return Err(MapError::Xml(format!("single_mapping {element:?}")));
                };
                out.runs.push((o, d, 1));
            }
            _ => {
                if raw.starts_with("/device") {
                    inside = false;
                }
            }
        }
    }
    if !found {
        return Err(MapError::NoDevice(dev_id));
    }
    Ok(out)
}

/// Runs `thin_dump` on a metadata image.
fn thin_dump(metadata: &Path) -> Result<String, MapError> {
    let out = Command::new("thin_dump")
        .arg(metadata)
        .output()
        .or_else(|e| {
            // Non-root PATHs often lack sbin.
            Command::new("/usr/sbin/thin_dump")
                .arg(metadata)
                .output()
                .map_err(|_| e)
        })
        .map_err(MapError::NoThinDump)?;
    if !out.status.success() {
        return Err(MapError::ThinDump {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Cuts the volume laid out as `layout` out of the disk image `disk` into `out`
/// (`size` bytes). `scratch` is a path the pool's metadata may be copied to.
pub fn cut(
    layout: &Layout,
    disk: &Path,
    size: u64,
    out: &Path,
    scratch: &Path,
) -> Result<(), MapError> {
    match layout {
        Layout::Linear { segments } => cut_linear(disk, segments, size, out),
        Layout::Thin {
            metadata,
            data,
            thin_id,
        } => {
            let meta_size: u64 = metadata.iter().map(|s| s.len).sum();
            cut_linear(disk, metadata, meta_size, scratch)?;
            let xml = thin_dump(scratch);
            let _ = std::fs::remove_file(scratch);
            let map = parse_thin_dump(&xml?, *thin_id)?;
            let src = File::open(disk).map_err(io("opening", disk))?;
            let dst = new_sparse(out, size)?;
            let data_len: u64 = data.iter().map(|s| s.len).sum();
            let bs = map.block_bytes;
            for &(origin, data_block, count) in &map.runs {
                for i in 0..count {
                    let from = (data_block + i) * bs;
                    if from + bs > data_len {
                        return Err(MapError::PastData {
                            block: data_block + i,
                        });
                    }
                    let to = (origin + i) * bs;
                    if to >= size {
                        continue;
                    }
                    let disk_at = locate(data, from).ok_or(MapError::PastData {
                        block: data_block + i,
                    })?;
                    copy_range(&src, &dst, disk_at, to, bs.min(size - to))
                        .map_err(io("copying", out))?;
                }
            }
            Ok(())
        }
    }
}

/// The changed ranges of `thin_delta`'s XML (`different`, `left_only`, `right_only`
/// elements, in data blocks of the superblock's `data_block_size`), as byte
/// `(offset, length)` pairs clipped to `size`, merged where adjacent.
pub fn parse_thin_delta(xml: &str, size: u64) -> Result<Vec<(u64, u64)>, MapError> {
    let sb = xml
        .find("<superblock")
        .map(|at| &xml[at..at + xml[at..].find('>').unwrap_or(0)])
        .ok_or_else(|| MapError::Xml("no <superblock> in thin_delta's output".into()))?;
    let bs = attr(sb, "data_block_size")
        .ok_or_else(|| MapError::Xml("no data_block_size".into()))?
        * 512;
    let mut ranges: BTreeMap<u64, u64> = BTreeMap::new();
    for raw in xml.split('<').skip(1) {
        let element = format!(" {}", raw.split('>').next().unwrap_or(""));
        let name = raw
            .split(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .next()
            .unwrap_or("");
        if matches!(name, "different" | "left_only" | "right_only") {
            let (Some(b), Some(n)) = (attr(&element, "begin"), attr(&element, "length")) else {
                return Err(MapError::Xml(format!("{element:?}")));
            };
            let start = b * bs;
            if start < size {
                ranges.insert(start, (n * bs).min(size - start));
            }
        }
    }
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (o, l) in ranges {
        match out.last_mut() {
            Some((po, pl)) if *po + *pl >= o => *pl = (*pl).max(o + l - *po),
            _ => out.push((o, l)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvs_lines_become_segments() {
        let text = "  vol 0 67108864 /dev/vda:0-15\n  [pool_tdata] 0 41943040 /dev/vda:17-26\n  thin 0 33554432 \n";
        let lvs = parse_lvs(text).unwrap();
        assert_eq!(lvs.len(), 2);
        assert_eq!(lvs[1].lv, "pool_tdata");
        let s = segments_of(&lvs, "vol", 1 << 20, 4 << 20).unwrap();
        assert_eq!(
            s,
            [Segment {
                lv_offset: 0,
                disk_offset: 1 << 20,
                len: 64 << 20
            }]
        );
        assert!(segments_of(&lvs, "nope", 0, 4 << 20).is_err());
    }

    #[test]
    fn a_linear_volume_is_cut_from_its_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let mut bytes = vec![0u8; 64 << 10];
        bytes[8192..12288].fill(7);
        std::fs::write(&disk, &bytes).unwrap();
        let out = dir.path().join("out");
        let layout = Layout::Linear {
            segments: vec![Segment {
                lv_offset: 0,
                disk_offset: 8192,
                len: 16384,
            }],
        };
        cut(&layout, &disk, 16384, &out, &dir.path().join("s")).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), 16384);
        assert!(got[..4096].iter().all(|&b| b == 7));
        assert!(got[4096..].iter().all(|&b| b == 0));
    }

    #[test]
    fn thin_dump_mappings_of_one_device() {
        let xml = r#"<superblock uuid="" time="1" transaction="2" version="2" data_block_size="128" nr_data_blocks="640">
  <device dev_id="1" mapped_blocks="3" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="2" time="0"/>
    <single_mapping origin_block="7" data_block="3" time="1"/>
  </device>
  <device dev_id="2" mapped_blocks="1" transaction="1" creation_time="1" snap_time="1">
    <single_mapping origin_block="0" data_block="99" time="1"/>
  </device>
</superblock>"#;
        let m = parse_thin_dump(xml, 1).unwrap();
        assert_eq!(m.block_bytes, 65536);
        assert_eq!(m.runs, [(0, 10, 2), (7, 3, 1)]);
        assert_eq!(parse_thin_dump(xml, 2).unwrap().runs, [(0, 99, 1)]);
        assert!(matches!(
            parse_thin_dump(xml, 5),
            Err(MapError::NoDevice(5))
        ));
    }

    #[test]
    fn thin_delta_ranges_in_bytes() {
        let xml = r#"<superblock uuid="" time="2" transaction="3" data_block_size="128" nr_data_blocks="640">
  <diff left="2" right="3">
    <same begin="0" length="4"/>
    <different begin="4" length="1"/>
    <right_only begin="5" length="2"/>
    <same begin="7" length="100"/>
    <left_only begin="600" length="1"/>
  </diff>
</superblock>"#;
        let r = parse_thin_delta(xml, 32 << 20).unwrap();
        assert_eq!(r, [(4 * 65536, 3 * 65536)]);
        assert!(parse_thin_delta("nothing", 1).is_err());
    }
}

//! blocks.csv: every block that is not ok, with its hash at every recording point, its
//! class, why, its owning file and the stamped write it holds. Excluded blocks are one
//! row per excluded range (a COW file is thousands of blocks; a row each would bury the
//! findings and break the size budget of a clean report).

use crate::classify::Classification;
use crate::model::BlockHash;
use crate::record::{Live, Recording, Source};

/// The columns, in order.
pub const COLUMNS: [&str; 17] = [
    "volume",
    "generation",
    "kind",
    "block",
    "class",
    "why",
    "truth",
    "snapshot",
    "live",
    "source",
    "transport",
    "retransmits",
    "target",
    "previous",
    "fault_site",
    "owner",
    "write",
];

/// "-" = stage not recorded, "none" = not read / never crossed / absent.
fn hash_cell(column: Option<&Option<BlockHash>>) -> String {
    match column {
        None => "-".into(),
        Some(None) => "none".into(),
        Some(Some(h)) => h.hex(),
    }
}

pub fn render(rec: &Recording, c: &Classification) -> String {
    let mut out = csv::Writer::from_writer(Vec::new());
    // Writing records into memory cannot fail; the field counts agree by construction.
    let mut row = |fields: &[String]| {
        out.write_record(fields)
            .expect("a CSV row is written to memory")
    };
    row(&COLUMNS.map(String::from));
    for v in &rec.volumes {
        for g in &v.generations {
            let kind = g.kind.name();
            for e in &g.excluded {
                let mut fields = vec![
                    v.name.clone(),
                    g.generation.to_string(),
                    kind.into(),
                    format!("{}-{}", e.start, e.end.saturating_sub(1)),
                    "excluded".into(),
                    e.reason.clone(),
                ];
                fields.resize(COLUMNS.len(), String::new());
                row(&fields);
            }
            let Some(result) = c
                .generations
                .iter()
                .find(|r| r.volume == v.name && r.generation == g.generation)
            else {
                continue;
            };
            for f in &result.findings {
                let b = f.block as usize;
                let live = match g.live.as_ref().map(|l| l[b]) {
                    None => "-".into(),
                    Some(Live::NotRead) => "not-read".into(),
                    Some(Live::Equal) => "equal".into(),
                    Some(Live::Differs(h)) => h.hex(),
                    // Before and after the snapshot read.
                    Some(Live::Bracketed { before, after }) => {
                        format!("{}/{}", before.hex(), after.hex())
                    }
                };
                let source = match g.source.as_ref().map(|s| s[b]) {
                    None => "-",
                    Some(None) => "none",
                    Some(Some(Source::Cow)) => "cow",
                    Some(Some(Source::Live)) => "live",
                    Some(Some(Source::Error)) => "error",
                };
                let target = if g.committed {
                    hash_cell(g.target.as_ref().map(|t| &t[b]))
                } else {
                    "not-committed".into()
                };
                let previous = hash_cell(
                    g.incremental
                        .as_ref()
                        .and_then(|i| i.previous.as_ref())
                        .map(|p| &p[b]),
                );
                row(&[
                    v.name.clone(),
                    g.generation.to_string(),
                    kind.into(),
                    f.block.to_string(),
                    f.class.name().into(),
                    f.why.clone(),
                    g.truth[b].hex(),
                    hash_cell(g.snapshot.as_ref().map(|s| &s[b])),
                    live,
                    source.into(),
                    hash_cell(g.transport.as_ref().map(|t| &t[b])),
                    g.retransmits
                        .get(&f.block)
                        .copied()
                        .unwrap_or(0)
                        .to_string(),
                    target,
                    previous,
                    if f.fault_site { "yes" } else { "no" }.into(),
                    g.owners.get(&f.block).cloned().unwrap_or_default(),
                    f.writes_text(),
                ]);
            }
        }
    }
    let bytes = out.into_inner().expect("a CSV writer into memory flushes");
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::model::{BackupKind, Expectations};
    use crate::record::{Claim, Exclusion, GenerationRecord, RunEvents, RunInfo, VolumeRecord};

    fn recording() -> Recording {
        let truth: Vec<BlockHash> = (0..8u64).map(|i| BlockHash::of(&i.to_le_bytes())).collect();
        let mut g = GenerationRecord::new(1, BackupKind::Full, truth.clone());
        let mut target: Vec<Option<BlockHash>> = truth.iter().copied().map(Some).collect();
        target[3] = Some(BlockHash::of(b"wrong"));
        g.target = Some(target);
        g.committed = true;
        g.agent = Claim::Success;
        g.excluded.push(Exclusion {
            start: 6,
            end: 8,
            reason: "COW file, \"bwsnap\", 2 blocks".into(),
        });
        g.owners.insert(3, "/data/a,b.txt".into());
        Recording {
            run: RunInfo::default(),
            expect: Expectations::clean(),
            volumes: vec![VolumeRecord {
                name: "data".into(),
                fs: "ext4".into(),
                generations: vec![g],
            }],
            events: RunEvents::default(),
        }
    }

    #[test]
    fn rows_read_back_with_every_column_and_quoted_fields_intact() {
        let rec = recording();
        let c = classify(&rec).unwrap();
        let text = render(&rec, &c);
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        // The header is the file's interface: spreadsheets and scripts read it by name.
        assert_eq!(
            text.lines().next(),
            Some("volume,generation,kind,block,class,why,truth,snapshot,live,source,transport,retransmits,target,previous,fault_site,owner,write")
        );
        assert_eq!(reader.headers().unwrap().len(), COLUMNS.len());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2, "{text}");
        // Every row has every column.
        assert!(rows.iter().all(|r| r.len() == COLUMNS.len()));
        let excluded = &rows[0];
        assert_eq!(&excluded[3], "6-7");
        assert_eq!(&excluded[4], "excluded");
        assert_eq!(&excluded[5], "COW file, \"bwsnap\", 2 blocks");
        let bad = &rows[1];
        assert_eq!((&bad[3], &bad[4]), ("3", "unattributed"));
        assert_eq!(&bad[6], rec.volumes[0].generations[0].truth[3].hex());
        assert_eq!(
            (&bad[7], &bad[12]),
            ("-", BlockHash::of(b"wrong").hex().as_str())
        );
        assert_eq!(&bad[15], "/data/a,b.txt");
    }
}

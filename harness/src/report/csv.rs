//! blocks.csv: every block that is not ok, with its hash at every recording point, its
//! class, why, its owning file and the stamped write it holds. Excluded blocks are one
//! row per excluded range (a COW file is thousands of blocks; a row each would bury the
//! findings and break the size budget of a clean report).

use crate::classify::Classification;
use crate::record::{BlockHash, Live, Recording, Source};

pub const HEADER: &str = "volume,generation,kind,block,class,why,truth,snapshot,live,source,transport,retransmits,target,previous,fault_site,owner,write";

fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// "-" = stage not recorded, "none" = not read / never crossed / absent.
fn hash_cell(column: Option<&Option<BlockHash>>) -> String {
    match column {
        None => "-".into(),
        Some(None) => "none".into(),
        Some(Some(h)) => h.hex(),
    }
}

pub fn render(rec: &Recording, c: &Classification) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for v in &rec.volumes {
        for g in &v.generations {
            let kind = match g.kind {
                crate::record::BackupKind::Full => "full",
                crate::record::BackupKind::Incremental => "incremental",
            };
            for e in &g.excluded {
                let row = [
                    field(&v.name),
                    g.generation.to_string(),
                    kind.into(),
                    format!("{}-{}", e.start, e.end.saturating_sub(1)),
                    "excluded".into(),
                    field(&e.reason),
                ];
                out.push_str(&row.join(","));
                out.push_str(",,,,,,,,,,,\n");
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
                let row = [
                    field(&v.name),
                    g.generation.to_string(),
                    kind.into(),
                    f.block.to_string(),
                    f.class.name().into(),
                    field(&f.why),
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
                    if f.fault_site {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    field(g.owners.get(&f.block).map(String::as_str).unwrap_or("")),
                    field(&f.write.map(|w| w.to_string()).unwrap_or_default()),
                ];
                out.push_str(&row.join(","));
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_fields_that_need_it() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn header_and_rows_have_the_same_columns() {
        let cols = HEADER.split(',').count();
        assert_eq!(cols, 17);
        // An excluded row: 6 fields plus 11 empty ones.
        assert_eq!(6 + ",,,,,,,,,,,".len(), cols);
    }
}

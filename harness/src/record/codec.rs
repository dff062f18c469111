//! The binary layout of `recording.bwrec`: MAGIC, varint length + JSON of [`Meta`], then
//! for each volume and generation: varint length + JSON of [`GenMeta`] and the columns it
//! says are present. A column of optional hashes is a run-length list of (tag, count) with
//! tag 0 = none, 1 = equal to the reference, 2 = explicit ([`HASH_LEN`] bytes each, after
//! the runs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    Claim, Exclusion, GenerationRecord, IncrementalRecord, Live, OracleRecord, PartialBlock,
    RecordError, Recording, RunEvents, RunInfo, Source, StampEvidence, TruthState, VolumeRecord,
    MAGIC,
};
use crate::model::{BackupKind, BlockHash, Expectations, HASH_LEN};

#[derive(Serialize, Deserialize)]
struct Meta {
    run: RunInfo,
    expect: Expectations,
    events: RunEvents,
    volumes: Vec<VolMeta>,
}

#[derive(Serialize, Deserialize)]
struct VolMeta {
    name: String,
    fs: String,
    generations: usize,
}

#[derive(Serialize, Deserialize)]
struct GenMeta {
    generation: u32,
    kind: BackupKind,
    blocks: u64,
    has_snapshot: bool,
    has_live: bool,
    has_source: bool,
    has_transport: bool,
    has_target: bool,
    incremental: bool,
    has_previous: bool,
    retransmits: BTreeMap<u64, u32>,
    excluded: Vec<Exclusion>,
    agent: Claim,
    target_claim: Claim,
    committed: bool,
    previous_intact: Option<bool>,
    snapshot_instant_ns: Option<u64>,
    stamps: BTreeMap<u64, StampEvidence>,
    owners: BTreeMap<u64, String>,
    #[serde(default)]
    truth_state: TruthState,
    #[serde(default)]
    partial: BTreeMap<u64, PartialBlock>,
    #[serde(default)]
    target_bytes: Option<u64>,
    #[serde(default)]
    cow_findings: Vec<String>,
    #[serde(default)]
    oracle: Option<OracleRecord>,
}

pub fn encode(rec: &Recording) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let meta = Meta {
        run: rec.run.clone(),
        expect: rec.expect.clone(),
        events: rec.events.clone(),
        volumes: rec
            .volumes
            .iter()
            .map(|v| VolMeta {
                name: v.name.clone(),
                fs: v.fs.clone(),
                generations: v.generations.len(),
            })
            .collect(),
    };
    put_json(&mut out, &meta);
    for v in &rec.volumes {
        let mut prev_truth: Option<&[BlockHash]> = None;
        for g in &v.generations {
            let gm = GenMeta {
                generation: g.generation,
                kind: g.kind,
                blocks: g.blocks,
                has_snapshot: g.snapshot.is_some(),
                has_live: g.live.is_some(),
                has_source: g.source.is_some(),
                has_transport: g.transport.is_some(),
                has_target: g.target.is_some(),
                incremental: g.incremental.is_some(),
                has_previous: g.incremental.as_ref().is_some_and(|i| i.previous.is_some()),
                retransmits: g.retransmits.clone(),
                excluded: g.excluded.clone(),
                agent: g.agent.clone(),
                target_claim: g.target_claim.clone(),
                committed: g.committed,
                previous_intact: g.previous_intact,
                snapshot_instant_ns: g.snapshot_instant_ns,
                stamps: g.stamps.clone(),
                owners: g.owners.clone(),
                truth_state: g.truth_state.clone(),
                partial: g.partial.clone(),
                target_bytes: g.target_bytes,
                cow_findings: g.cow_findings.clone(),
                oracle: g.oracle.clone(),
            };
            put_json(&mut out, &gm);
            // Truth relative to the previous generation's truth, when lengths agree.
            match prev_truth.filter(|p| p.len() == g.truth.len()) {
                Some(p) => {
                    out.push(1);
                    let opt: Vec<Option<BlockHash>> = g.truth.iter().map(|h| Some(*h)).collect();
                    put_hashes(&mut out, &opt, p);
                }
                None => {
                    out.push(0);
                    for h in &g.truth {
                        out.extend_from_slice(&h.0);
                    }
                }
            }
            prev_truth = Some(&g.truth);
            if let Some(c) = &g.snapshot {
                put_hashes(&mut out, c, &g.truth);
            }
            if let Some(c) = &g.live {
                let tags: Vec<(u8, Option<BlockHash>)> = c
                    .iter()
                    .map(|l| match l {
                        Live::NotRead => (0, None),
                        Live::Equal => (1, None),
                        Live::Differs(h) => (2, Some(*h)),
                        Live::Bracketed { before, .. } => (3, Some(*before)),
                    })
                    .collect();
                put_tagged(&mut out, &tags);
                // The second hash of each bracketed read, in block order.
                for l in c {
                    if let Live::Bracketed { after, .. } = l {
                        out.extend_from_slice(&after.0);
                    }
                }
            }
            if let Some(c) = &g.source {
                let tags: Vec<(u8, Option<BlockHash>)> = c
                    .iter()
                    .map(|s| match s {
                        None => (0, None),
                        Some(Source::Cow) => (1, None),
                        Some(Source::Live) => (2, None),
                        Some(Source::Error) => (3, None),
                    })
                    .collect();
                put_tagged(&mut out, &tags);
            }
            put_set(&mut out, &g.fault_sites);
            if let Some(c) = &g.transport {
                put_hashes(&mut out, c, &g.truth);
            }
            if let Some(c) = &g.target {
                put_hashes(&mut out, c, &g.truth);
            }
            if let Some(inc) = &g.incremental {
                put_set(&mut out, &inc.sent);
                if let Some(p) = &inc.previous {
                    put_hashes(&mut out, p, &g.truth);
                }
            }
        }
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_json<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    // Serializing plain structs of strings, numbers and maps with string-able keys
    // cannot fail.
    let json = serde_json::to_vec(value).expect("recording metadata serializes");
    put_varint(out, json.len() as u64);
    out.extend_from_slice(&json);
}

fn put_hashes(out: &mut Vec<u8>, column: &[Option<BlockHash>], reference: &[BlockHash]) {
    let tags: Vec<(u8, Option<BlockHash>)> = column
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            None => (0, None),
            Some(h) if reference.get(i) == Some(h) => (1, None),
            Some(h) => (2, Some(*h)),
        })
        .collect();
    put_tagged(out, &tags);
}

/// Runs of tags, then the explicit hashes in block order.
fn put_tagged(out: &mut Vec<u8>, tags: &[(u8, Option<BlockHash>)]) {
    let mut runs: Vec<(u8, u64)> = Vec::new();
    for (tag, _) in tags {
        match runs.last_mut() {
            Some((t, n)) if t == tag => *n += 1,
            _ => runs.push((*tag, 1)),
        }
    }
    put_varint(out, runs.len() as u64);
    for (tag, n) in runs {
        out.push(tag);
        put_varint(out, n);
    }
    for (_, h) in tags {
        if let Some(h) = h {
            out.extend_from_slice(&h.0);
        }
    }
}

fn put_set(out: &mut Vec<u8>, set: &BTreeSet<u64>) {
    // Ranges of consecutive blocks: (gap from the previous range's end, length).
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &b in set {
        match ranges.last_mut() {
            Some((start, len)) if *start + *len == b => *len += 1,
            _ => ranges.push((b, 1)),
        }
    }
    put_varint(out, ranges.len() as u64);
    let mut end = 0;
    for (start, len) in ranges {
        put_varint(out, start - end);
        put_varint(out, len);
        end = start + len;
    }
}

struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn corrupt(&self, what: impl Into<String>) -> RecordError {
        RecordError::Corrupt {
            path: self.path.to_owned(),
            offset: self.at,
            what: what.into(),
        }
    }

    fn byte(&mut self) -> Result<u8, RecordError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.corrupt("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.corrupt("truncated"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn hash(&mut self) -> Result<BlockHash, RecordError> {
        let mut h = [0u8; HASH_LEN];
        h.copy_from_slice(self.take(HASH_LEN)?);
        Ok(BlockHash(h))
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, RecordError> {
        let n = self.varint()? as usize;
        let path = self.path.to_owned();
        serde_json::from_slice(self.take(n)?).map_err(|source| RecordError::Json { path, source })
    }

    /// Reads tag runs for `blocks` entries; returns the tags.
    fn tags(&mut self, blocks: u64, max_tag: u8) -> Result<Vec<u8>, RecordError> {
        let runs = self.varint()?;
        let mut tags = Vec::with_capacity(blocks.min(1 << 28) as usize);
        for _ in 0..runs {
            let tag = self.byte()?;
            let n = self.varint()?;
            if tag > max_tag || tags.len() as u64 + n > blocks {
                return Err(self.corrupt("bad run"));
            }
            tags.resize(tags.len() + n as usize, tag);
        }
        if tags.len() as u64 != blocks {
            return Err(self.corrupt(format!(
                "column has {} entries for {blocks} blocks",
                tags.len()
            )));
        }
        Ok(tags)
    }

    fn hashes(
        &mut self,
        blocks: u64,
        reference: &[BlockHash],
    ) -> Result<Vec<Option<BlockHash>>, RecordError> {
        let tags = self.tags(blocks, 2)?;
        let mut out = Vec::with_capacity(tags.len());
        for (i, tag) in tags.iter().enumerate() {
            out.push(match tag {
                0 => None,
                1 => Some(
                    *reference
                        .get(i)
                        .ok_or_else(|| self.corrupt("reference too short"))?,
                ),
                _ => Some(self.hash()?),
            });
        }
        Ok(out)
    }

    fn set(&mut self) -> Result<BTreeSet<u64>, RecordError> {
        let ranges = self.varint()?;
        let mut set = BTreeSet::new();
        let mut end: u64 = 0;
        for _ in 0..ranges {
            let start = end
                .checked_add(self.varint()?)
                .ok_or_else(|| self.corrupt("bad range"))?;
            let len = self.varint()?;
            end = start
                .checked_add(len)
                .ok_or_else(|| self.corrupt("bad range"))?;
            if len > 1 << 40 {
                return Err(self.corrupt("bad range"));
            }
            set.extend(start..end);
        }
        Ok(set)
    }
}

pub fn decode(path: &Path, bytes: &[u8]) -> Result<Recording, RecordError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(RecordError::Magic {
            path: path.to_owned(),
        });
    }
    let mut r = Reader {
        path,
        bytes,
        at: MAGIC.len(),
    };
    let meta: Meta = r.json()?;
    let mut volumes = Vec::new();
    for vm in meta.volumes {
        let mut generations: Vec<GenerationRecord> = Vec::new();
        for _ in 0..vm.generations {
            let gm: GenMeta = r.json()?;
            if gm.blocks > 1 << 36 {
                return Err(r.corrupt("implausible block count"));
            }
            let truth = match r.byte()? {
                0 => (0..gm.blocks)
                    .map(|_| r.hash())
                    .collect::<Result<Vec<_>, _>>()?,
                1 => {
                    let prev = generations
                        .last()
                        .map(|g| g.truth.clone())
                        .unwrap_or_default();
                    r.hashes(gm.blocks, &prev)?
                        .into_iter()
                        .map(|h| h.ok_or_else(|| r.corrupt("truth hash missing")))
                        .collect::<Result<Vec<_>, _>>()?
                }
                _ => return Err(r.corrupt("bad truth encoding")),
            };
            let snapshot = if gm.has_snapshot {
                Some(r.hashes(gm.blocks, &truth)?)
            } else {
                None
            };
            let live = if gm.has_live {
                let tags = r.tags(gm.blocks, 3)?;
                let mut out = Vec::with_capacity(tags.len());
                for t in tags {
                    out.push(match t {
                        0 => Live::NotRead,
                        1 => Live::Equal,
                        2 => Live::Differs(r.hash()?),
                        _ => Live::Bracketed {
                            before: r.hash()?,
                            after: BlockHash([0; HASH_LEN]),
                        },
                    });
                }
                for l in out.iter_mut() {
                    if let Live::Bracketed { after, .. } = l {
                        *after = r.hash()?;
                    }
                }
                Some(out)
            } else {
                None
            };
            let source = if gm.has_source {
                let tags = r.tags(gm.blocks, 3)?;
                Some(
                    tags.into_iter()
                        .map(|t| match t {
                            1 => Some(Source::Cow),
                            2 => Some(Source::Live),
                            3 => Some(Source::Error),
                            _ => None,
                        })
                        .collect(),
                )
            } else {
                None
            };
            let fault_sites = r.set()?;
            let transport = if gm.has_transport {
                Some(r.hashes(gm.blocks, &truth)?)
            } else {
                None
            };
            let target = if gm.has_target {
                Some(r.hashes(gm.blocks, &truth)?)
            } else {
                None
            };
            let incremental = if gm.incremental {
                let sent = r.set()?;
                let previous = if gm.has_previous {
                    Some(r.hashes(gm.blocks, &truth)?)
                } else {
                    None
                };
                Some(IncrementalRecord { sent, previous })
            } else {
                None
            };
            generations.push(GenerationRecord {
                generation: gm.generation,
                kind: gm.kind,
                blocks: gm.blocks,
                truth,
                snapshot,
                live,
                source,
                fault_sites,
                transport,
                retransmits: gm.retransmits,
                target,
                excluded: gm.excluded,
                incremental,
                agent: gm.agent,
                target_claim: gm.target_claim,
                committed: gm.committed,
                previous_intact: gm.previous_intact,
                snapshot_instant_ns: gm.snapshot_instant_ns,
                stamps: gm.stamps,
                owners: gm.owners,
                truth_state: gm.truth_state,
                partial: gm.partial,
                target_bytes: gm.target_bytes,
                cow_findings: gm.cow_findings,
                oracle: gm.oracle,
            });
        }
        volumes.push(VolumeRecord {
            name: vm.name,
            fs: vm.fs,
            generations,
        });
    }
    if r.at != bytes.len() {
        return Err(r.corrupt("trailing bytes"));
    }
    Ok(Recording {
        run: meta.run,
        expect: meta.expect,
        volumes,
        events: meta.events,
    })
}

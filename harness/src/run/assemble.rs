//! Turning what a run saw into the recording classification works on: per volume and
//! backup, the truth image hashed, the pipeline's recordings laid out per block, the
//! harness's own re-read of what the target stored, owners and stamps of problem blocks,
//! and on witness disks the history oracle's judgement.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::hash::HashError;
use crate::model::{BackupKind, BlockHash, Layer};
use crate::oracle::adapter::Adapted;
use crate::oracle::{Extent, History, HistoryError, Oracle};
use crate::pipeline::{BackupResult, Pipeline, VolumeBackup};
use crate::plan::{Plan, VolumePlan};
use crate::record::{
    Claim, Exclusion, GenerationRecord, IncrementalRecord, Live, TruthState, VolumeRecord,
};
use crate::truth::Truth;

use super::chain;

/// One backup of the run and what the pipeline made of it.
#[derive(Clone, Debug)]
pub struct BackupRecord {
    pub number: u32,
    pub result: BackupResult,
    /// The harness's re-read, right after this backup, of every generation the target
    /// had committed then, by (volume, generation): the reference for "intact later".
    pub stored_after: BTreeMap<(String, u32), Vec<BlockHash>>,
    /// Whether the harness took its truth at this backup's instant, and if not why.
    pub truth_state: TruthState,
}

fn hash(
    path: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
    total: u64,
) -> Result<Vec<BlockHash>, HashError> {
    crate::hash::hash_image_with_progress(path, &|done| progress(done, total))
}

/// The harness's re-read of the committed generation at the target: one hash per block
/// of the volume (None past the end of a short image), also set on `g`. An image of the
/// wrong length is the target's finding: blocks past its end are absent, blocks past
/// the volume's end are judged as one finding of their own.
fn reread_target(
    stored: Option<&Path>,
    v: &VolumePlan,
    blocks: usize,
    g: &mut GenerationRecord,
    progress: &(dyn Fn(u64, u64) + Sync),
    errors: &mut Vec<String>,
) -> Option<Vec<Option<BlockHash>>> {
    let img = stored?;
    match hash(img, progress, v.size_bytes) {
        Ok(h) => {
            g.committed = true;
            g.target_bytes = std::fs::metadata(img).ok().map(|m| m.len());
            let column: Vec<Option<BlockHash>> = (0..blocks).map(|i| h.get(i).copied()).collect();
            g.target = Some(column.clone());
            Some(column)
        }
        Err(e) => {
            errors.push(format!(
                "re-reading generation {} of volume {} at the target: {}",
                g.generation,
                v.name,
                chain(&e)
            ));
            None
        }
    }
}

/// The history of volume `v` cut out of its disk's, when the pipeline knows a layout that
/// stayed put (None: it does not, e.g. a thin volume).
fn volume_history(
    pipeline: &dyn Pipeline,
    v: &VolumePlan,
    disk: &History,
) -> Result<Option<History>, HistoryError> {
    const BLOCK: u64 = crate::model::BLOCK as u64;
    let Some(segments) = pipeline.static_layout(&v.name) else {
        return Ok(None);
    };
    if segments
        .iter()
        .any(|s| (s.lv_offset | s.disk_offset | s.len) % BLOCK != 0)
    {
        // LVM's extents are MiB-aligned; a layout that is not cannot be judged in blocks.
        return Ok(None);
    }
    // The logical volume may end past the scenario's size (LVM rounds up to extents):
    // only the scenario's size is backed up and judged.
    let size = v.size_bytes;
    let extents: Vec<Extent> = segments
        .iter()
        .filter(|s| s.lv_offset < size)
        .map(|s| Extent {
            volume_block: s.lv_offset / BLOCK,
            disk_block: s.disk_offset / BLOCK,
            blocks: s.len.min(size - s.lv_offset).div_ceil(BLOCK),
        })
        .collect();
    disk.restrict(&extents, size.div_ceil(BLOCK)).map(Some)
}

/// The recording of every backed-up volume. Errors are infrastructure problems (a
/// truth image that cannot be read); they go to the report as harness errors.
pub(super) fn volumes(
    plan: &Plan,
    truth: &Truth,
    pipeline: &dyn Pipeline,
    backups: &[BackupRecord],
    histories: &BTreeMap<String, Adapted>,
    work: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> (Vec<VolumeRecord>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    if backups.is_empty() {
        return (out, errors);
    }
    let scratch = work.join("truth-scratch.raw");
    for v in plan.backed_up() {
        let mut gens = Vec::new();
        let history = histories.get(&v.name);
        // The history is the disk's; a volume cut out of its disk is judged on the disk's
        // writes to its extents (a linear LVM volume), or not at all (a thin one).
        let volume_is_disk = v.disk_bytes == v.size_bytes;
        let restricted = match (history, volume_is_disk) {
            (Some(h), false) => match volume_history(pipeline, v, &h.history) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!(
                        "the history of volume {} within its disk: {}",
                        v.name,
                        chain(&e)
                    ));
                    None
                }
            },
            _ => None,
        };
        let judged = match (history, volume_is_disk) {
            (Some(h), true) => Some(&h.history),
            _ => restricted.as_ref(),
        };
        let oracle = match judged.map(Oracle::new) {
            Some(Ok(o)) => Some(o),
            Some(Err(e)) => {
                errors.push(format!(
                    "the history oracle refused the history of volume {}: {}",
                    v.name,
                    chain(&e)
                ));
                None
            }
            None => None,
        };
        // The last committed generation and its target hashes now (one per block of
        // the volume; None past the end of a short image).
        let mut previous: Option<(u32, Vec<Option<BlockHash>>)> = None;
        // Fault sites of the generations an incremental is built from: a change the
        // module failed to track stays wrong in every later generation.
        let mut inherited_sites: BTreeSet<u64> = BTreeSet::new();
        for br in backups {
            let step = plan.backups.iter().find(|s| s.number == br.number);
            let vb = br.result.volumes.iter().find(|x| x.volume == v.name);
            let generation = vb
                .and_then(|x| x.generation)
                .or(step.map(|s| s.generation))
                .unwrap_or(br.number);
            let kind = if vb.is_some_and(|x| x.incremental) {
                BackupKind::Incremental
            } else {
                BackupKind::Full
            };
            let agent = vb
                .and_then(|x| x.agent.clone())
                .or_else(|| br.result.agent.clone())
                .unwrap_or(Claim::Silent);
            let target_claim = vb.and_then(|x| x.target.clone()).unwrap_or(Claim::Silent);
            let stored = pipeline.stored_image(&v.name, generation);
            // After a failed backup: is the previous generation as it was right after
            // its own backup? (Its correctness is judged in its own record.)
            let previous_intact = match &previous {
                Some((pg, now)) if stored.is_none() => backups
                    .iter()
                    .find_map(|b| b.stored_after.get(&(v.name.clone(), *pg)))
                    .map(|then| (0..now.len()).all(|i| then.get(i) == now[i].as_ref())),
                _ => None,
            };
            // Fault sites only from the layers that injected this backup's faults.
            let layers: BTreeSet<Layer> = step
                .map(|s| s.faults.iter().map(|f| f.spec.layer()).collect())
                .unwrap_or_default();

            if plan.pipeline.at_cut() {
                // No instant, so no truth image: the truth is the oracle's, at its cut.
                let mut g = GenerationRecord::new(generation, kind, Vec::new());
                g.agent = agent;
                g.target_claim = target_claim;
                g.previous_intact = previous_intact;
                let blocks = (v.size_bytes / crate::model::BLOCK as u64) as usize;
                let target_hashes =
                    reread_target(stored.as_deref(), v, blocks, &mut g, progress, &mut errors);
                let whole_backup: Option<Vec<BlockHash>> = target_hashes
                    .as_ref()
                    .and_then(|c| c.iter().copied().collect::<Option<Vec<_>>>());
                // The reader's snapshot, when it read every block of the volume.
                let snapshot = vb.and_then(|vb| vb.witness.as_ref()).and_then(|w| {
                    let hashes: Vec<BlockHash> =
                        w.range(..blocks as u64).map(|(_, r)| r.snapshot).collect();
                    (kind == BackupKind::Full
                        && hashes.len() == blocks
                        && w.keys().take(blocks).copied().eq(0..blocks as u64))
                    .then_some(hashes)
                });
                let at_cut = match (&oracle, history, volume_is_disk) {
                    (_, _, false) => Err(super::cut::CutError::NotWholeDisk {
                        volume: v.name.clone(),
                    }),
                    (Some(o), Some(h), true) => super::cut::truth(
                        o,
                        h.moved_submits,
                        &v.name,
                        generation,
                        &super::cut::Images {
                            snapshot,
                            backup: whole_backup.as_deref(),
                        },
                    ),
                    (None, _, true) | (_, None, true) => Err(super::cut::CutError::NoHistory {
                        volume: v.name.clone(),
                    }),
                };
                match at_cut {
                    Ok(at) => {
                        g.blocks = at.truth.len() as u64;
                        g.truth = at.truth;
                        if let Some(vb) = vb {
                            // The guest's clock after the snapshot command ended: the
                            // instant lies before it (stamps later than it leaked).
                            g.snapshot_instant_ns = vb.instant_ns;
                            recorded_points(
                                &mut g,
                                vb,
                                blocks,
                                &layers,
                                &inherited_sites,
                                &previous,
                            );
                        }
                        if super::cut::unseen_by_comparison(
                            &at.record,
                            &g.truth,
                            g.target.as_deref(),
                        ) {
                            errors.push(format!(
                                "volume {} generation {generation}: the history oracle finds the backup no single cut, and no block of it differs from the truth at the cut",
                                v.name
                            ));
                        }
                        g.truth_state = TruthState::AtCut {
                            cut: Box::new(at.record),
                        };
                        if let Some(img) = stored.as_deref().filter(|_| g.committed) {
                            // Owners from the backup's own filesystem; stamps ordered
                            // against the instant's bound alone (no truth image holds
                            // the truth's stamps).
                            if let Err(e) = crate::diff::annotate_generation(
                                &v.name,
                                &mut g,
                                v.fs,
                                img,
                                Some(img),
                            ) {
                                errors.push(format!(
                                    "mapping problem blocks of volume {}: {}",
                                    v.name,
                                    chain(&e)
                                ));
                            }
                            for e in g.stamps.values_mut() {
                                e.truth.clear();
                            }
                        }
                    }
                    Err(e) => {
                        let why = chain(&e);
                        errors.push(format!(
                            "the truth of volume {} generation {generation} at the history oracle's cut: {why}",
                            v.name
                        ));
                        g.truth_state = TruthState::NotTaken { why };
                        // Nothing to compare it with: the claims still count.
                        g.target = None;
                    }
                }
                if let Some(h) = target_hashes {
                    inherited_sites = g.fault_sites.clone();
                    previous = Some((generation, h));
                }
                gens.push(g);
                continue;
            }
            if !truth.taken(br.number) {
                // No truth: nothing to compare, but the claims still count (a backup
                // that failed before its instant is a failure; one that committed
                // without an instant is a lie).
                let mut g = GenerationRecord::new(generation, kind, Vec::new());
                g.truth_state = br.truth_state.clone();
                g.agent = agent;
                g.target_claim = target_claim;
                g.committed = stored.is_some();
                g.previous_intact = previous_intact;
                gens.push(g);
                continue;
            }
            let (image, is_scratch) = match truth.image(&v.name, br.number, &scratch) {
                Ok(x) => x,
                Err(e) => {
                    errors.push(format!(
                        "truth of volume {} backup {}: {}",
                        v.name,
                        br.number,
                        chain(&e)
                    ));
                    continue;
                }
            };
            // The volume inside its disk (an LVM volume in its physical volume).
            let (image, is_scratch) =
                match pipeline.volume_image(&v.name, &image, &work.join("truth-volume.raw")) {
                    Ok(Some(cut)) => {
                        if is_scratch {
                            let _ = std::fs::remove_file(&image);
                        }
                        (cut, true)
                    }
                    Ok(None) => (image, is_scratch),
                    Err(e) => {
                        errors.push(format!(
                            "cutting volume {} out of its disk's truth: {}",
                            v.name,
                            chain(&e)
                        ));
                        continue;
                    }
                };
            let truth_hashes = match hash(&image, progress, v.size_bytes) {
                Ok(h) => h,
                Err(e) => {
                    errors.push(format!(
                        "hashing the truth of volume {}: {}",
                        v.name,
                        chain(&e)
                    ));
                    continue;
                }
            };
            let blocks = truth_hashes.len();
            let mut g = GenerationRecord::new(generation, kind, truth_hashes);
            g.agent = agent;
            g.target_claim = target_claim;
            g.previous_intact = previous_intact;
            let mut cow_partial = BTreeMap::new();
            if let Some(vb) = vb {
                g.snapshot_instant_ns = vb.instant_ns;
                // A pipeline that fell silent (a reset, a crash) made no report on its
                // COW file to hold against it; one that spoke, or claimed success, did.
                let spoke = !matches!(g.agent, Claim::Silent);
                match scratch_file(v, vb, &image, spoke) {
                    Ok((cover, findings)) => {
                        g.excluded = cover.excluded;
                        cow_partial = cover.partial;
                        g.cow_findings = findings;
                    }
                    Err(e) => errors.push(format!(
                        "finding the COW file of volume {} on the truth of backup {}: {}",
                        v.name,
                        br.number,
                        chain(&e)
                    )),
                }
                recorded_points(&mut g, vb, blocks, &layers, &inherited_sites, &previous);
            }
            let target_hashes =
                reread_target(stored.as_deref(), v, blocks, &mut g, progress, &mut errors);
            match crate::cowfile::judge_partial(&cow_partial, &image, stored.as_deref()) {
                Ok(p) => g.partial = p,
                Err(e) => errors.push(format!(
                    "judging the blocks volume {} shares with its COW file: {}",
                    v.name,
                    chain(&e)
                )),
            }
            if let Err(e) =
                crate::diff::annotate_generation(&v.name, &mut g, v.fs, &image, stored.as_deref())
            {
                errors.push(format!(
                    "mapping problem blocks of volume {}: {}",
                    v.name,
                    chain(&e)
                ));
            }
            let instant = truth.witness().and_then(|w| w.instant(&v.name, br.number));
            if let (Some(o), Some(h), Some(i)) = (&oracle, history, instant) {
                // A block the COW file shares with other data (filesystem blocks under
                // 4 KiB) holds COW bytes the module writes after the instant: the
                // classifier judges its other bytes; the oracle, which knows whole
                // blocks only, leaves it out.
                let mut excluded = g.excluded.clone();
                excluded.extend(g.partial.keys().map(|&b| Exclusion {
                    start: b,
                    end: b + 1,
                    reason: "shared with the COW file".into(),
                }));
                // A short backup gives the blocks it has, and the oracle says it is short.
                let backup: Option<Vec<BlockHash>> = target_hashes
                    .as_ref()
                    .map(|c| c.iter().map_while(|h| *h).collect());
                match super::oracle::judge(
                    o,
                    h.moved_submits,
                    i.t_ns,
                    &g.truth,
                    backup.as_deref(),
                    &excluded,
                ) {
                    Ok(rec) => g.oracle = Some(rec),
                    Err(e) => errors.push(format!(
                        "the history oracle on volume {} generation {generation}: {e}",
                        v.name
                    )),
                }
            }
            if is_scratch {
                let _ = std::fs::remove_file(&image);
            }
            if let Some(h) = target_hashes {
                inherited_sites = g.fault_sites.clone();
                previous = Some((generation, h));
            }
            gens.push(g);
        }
        if !gens.is_empty() {
            out.push(VolumeRecord {
                name: v.name.clone(),
                fs: v.fs.name().to_string(),
                generations: gens,
            });
        }
    }
    (out, errors)
}

/// The points the pipeline and the harness's parts recorded for one generation of
/// `blocks` blocks: fault sites, the reader's snapshot and live, the transport, and
/// what an incremental sent.
fn recorded_points(
    g: &mut GenerationRecord,
    vb: &VolumeBackup,
    blocks: usize,
    layers: &BTreeSet<Layer>,
    inherited_sites: &BTreeSet<u64>,
    previous: &Option<(u32, Vec<Option<BlockHash>>)>,
) {
    let kind = g.kind;
    g.fault_sites = vb
        .fault_sites
        .iter()
        .filter(|(layer, _)| layers.contains(layer))
        .flat_map(|(_, sites)| sites.iter().copied())
        .collect();
    if kind == BackupKind::Incremental {
        g.fault_sites.extend(inherited_sites.iter().copied());
    }
    g.retransmits = vb.retransmits.clone();
    if let Some(w) = &vb.witness {
        let mut snap = vec![None; blocks];
        let mut live = vec![Live::NotRead; blocks];
        let mut source = vec![None; blocks];
        for (&b, rec) in w.range(..blocks as u64) {
            snap[b as usize] = Some(rec.snapshot);
            live[b as usize] = rec.live;
            source[b as usize] = rec.source;
        }
        g.snapshot = Some(snap);
        g.live = Some(live);
        // The source point is the module's trace; a witness without one
        // (the harness's own reader) leaves the stage unrecorded.
        if source.iter().any(Option::is_some) {
            g.source = Some(source);
        }
    }
    if let Some(t) = &vb.transport {
        let mut col = vec![None; blocks];
        for (&b, h) in t.range(..blocks as u64) {
            col[b as usize] = Some(*h);
        }
        g.transport = Some(col);
    }
    if kind == BackupKind::Incremental {
        g.incremental = Some(IncrementalRecord {
            sent: vb.sent.clone(),
            previous: previous.as_ref().map(|(_, h)| h.clone()),
        });
    }
}

/// The pipeline's COW file as the harness finds it on the truth image: the blocks it
/// excludes (capped at the COW size the run asked for), the blocks it shares with other
/// data, and where the pipeline's own report of it disagrees (product findings).
fn scratch_file(
    v: &VolumePlan,
    vb: &VolumeBackup,
    truth_image: &Path,
    spoke: bool,
) -> Result<(crate::cowfile::Cover, Vec<String>), crate::cowfile::CowFileError> {
    let mut findings = Vec::new();
    let reported = vb.cow_ranges.as_deref();
    let Some(file) = vb.cow_file.as_deref() else {
        if let Some(d) = crate::cowfile::disagreement(&[], reported) {
            findings.push(d);
        }
        return Ok((crate::cowfile::Cover::default(), findings));
    };
    let Some(ranges) = crate::cowfile::find(truth_image, v.fs, file)? else {
        findings.push(format!(
            "the pipeline names its COW file {file}, and the truth image holds no such file"
        ));
        return Ok((crate::cowfile::Cover::default(), findings));
    };
    let fs_block = u64::from(v.fs.block_size().unwrap_or(4096));
    let cap = v.cow_bytes.div_ceil(fs_block) * fs_block;
    let cover = crate::cowfile::cover(
        &ranges,
        cap,
        &format!(
            "{file}, the COW file (found on the truth image): the module's own scratch space, written behind the filesystem's back"
        ),
    );
    if cover.over_cap > 0 {
        findings.push(format!(
            "the COW file {file} holds {} bytes more than the {} bytes asked for; they are judged, not excluded",
            cover.over_cap, v.cow_bytes
        ));
    }
    if reported.is_some() || spoke {
        if let Some(d) = crate::cowfile::disagreement(&ranges, reported) {
            findings.push(d);
        }
    }
    Ok((cover, findings))
}

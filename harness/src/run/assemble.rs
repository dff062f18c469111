//! Turning what a run saw into the recording classification works on: per volume and
//! backup, the truth image hashed, the pipeline's recordings laid out per block, the
//! harness's own re-read of what the target stored, owners and stamps of problem blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::hash::HashError;
use crate::model::{BackupKind, BlockHash};
use crate::pipeline::{BackupResult, Pipeline};
use crate::plan::Plan;
use crate::record::{Claim, GenerationRecord, IncrementalRecord, Live, VolumeRecord};
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
}

fn hash(
    path: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
    total: u64,
) -> Result<Vec<BlockHash>, HashError> {
    crate::hash::hash_image_with_progress(path, &|done| progress(done, total))
}

/// The recording of every backed-up volume. Errors are infrastructure problems (a
/// truth image that cannot be read); they go to the report as harness errors.
pub(super) fn volumes(
    plan: &Plan,
    truth: &Truth,
    pipeline: &dyn Pipeline,
    backups: &[BackupRecord],
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
        // The last committed generation and its target hashes now.
        let mut previous: Option<(u32, Vec<BlockHash>)> = None;
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
                    .map(|then| then == now),
                _ => None,
            };

            if !truth.taken(br.number) {
                // No instant, no truth: nothing to compare, but the claims still count
                // (a backup that failed before its instant is a failure, or a lie).
                let mut g = GenerationRecord::new(generation, kind, Vec::new());
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
            if let Some(vb) = vb {
                g.snapshot_instant_ns = vb.instant_ns;
                g.excluded = vb.excluded.clone();
                g.fault_sites = vb.fault_sites.clone();
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
                        previous: previous
                            .as_ref()
                            .map(|(_, h)| h.iter().copied().map(Some).collect()),
                    });
                }
            }
            let mut target_hashes = None;
            if let Some(img) = &stored {
                match hash(img, progress, v.size_bytes) {
                    Ok(h) => {
                        g.committed = true;
                        g.target = Some(h.iter().copied().map(Some).collect());
                        target_hashes = Some(h);
                    }
                    Err(e) => errors.push(format!(
                        "re-reading generation {generation} of volume {} at the target: {}",
                        v.name,
                        chain(&e)
                    )),
                }
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
            if is_scratch {
                let _ = std::fs::remove_file(&image);
            }
            if let Some(h) = target_hashes {
                inherited_sites = if kind == BackupKind::Incremental {
                    g.fault_sites.clone()
                } else {
                    vb.map(|x| x.fault_sites.clone()).unwrap_or_default()
                };
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

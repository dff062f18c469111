//! Phase two of loading: the raw serde structs become a typed [`Scenario`], checking what
//! the key table cannot (units, ranges, references between entries, combinations), and
//! naming the key path of every mistake.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use super::error::Diagnostic;
use super::host::Host;
use super::pipeline::PipelineSpec;
use super::raw::*;
use super::tree::{quoted, KeyPath, Tree};
use super::units::{self, Rate, SizeOrPercent};
use super::*;
use crate::model::{BlockClass, FaultKind, FrameSel, Layer, Need, Outcome, Skipped, Where};

/// Collects diagnostics, finding each one's span from its key path.
pub(super) struct Ctx<'a> {
    tree: &'a Tree,
    found: Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub(super) fn err(&mut self, path: &KeyPath, message: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::new(message, path.clone());
        if let Some(span) = self.tree.locate(path) {
            d = d.with_span(span);
        }
        if let Some(help) = help {
            d = d.with_help(help);
        }
        self.found.push(d);
    }

    pub(super) fn size(&mut self, path: &KeyPath, text: &str) -> Option<u64> {
        let parsed = units::parse_size(text);
        if parsed.is_none() {
            self.err(
                path,
                format!("`{path}`: \"{text}\" is not a size"),
                Some(units::SIZE_HELP.into()),
            );
        }
        parsed
    }

    pub(super) fn duration(&mut self, path: &KeyPath, text: &str) -> Option<Duration> {
        match units::parse_duration(text) {
            Some(d) if !d.is_zero() => Some(d),
            Some(_) => {
                self.err(path, format!("`{path}` must be longer than zero"), None);
                None
            }
            None => {
                self.err(
                    path,
                    format!("`{path}`: \"{text}\" is not a duration"),
                    Some(units::DURATION_HELP.into()),
                );
                None
            }
        }
    }

    pub(super) fn size_or_percent(&mut self, path: &KeyPath, text: &str) -> Option<SizeOrPercent> {
        let parsed = units::parse_size_or_percent(text);
        if parsed.is_none() {
            self.err(
                path,
                format!("`{path}`: \"{text}\" is neither a size nor a share"),
                Some(format!("{}; or {}", units::SIZE_HELP, units::PERCENT_HELP)),
            );
        }
        parsed
    }

    pub(super) fn name(&mut self, path: &KeyPath, text: &str, extra: &str) {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(c)
            });
        if !ok {
            let also = if extra.is_empty() {
                String::new()
            } else {
                format!(", `{extra}`")
            };
            self.err(
                path,
                format!("`{path}`: \"{text}\" is not a valid name"),
                Some(format!("use lowercase letters, digits and `-`{also}, starting with a letter or digit, at most 64 characters")),
            );
        }
    }

    pub(super) fn range(&mut self, path: &KeyPath, value: u64, low: u64, high: u64) -> bool {
        if value < low || value > high {
            self.err(
                path,
                format!("`{path}` must be between {low} and {high}, found {value}"),
                None,
            );
            return false;
        }
        true
    }
}

/// Checks and types a raw scenario. `tree` locates the mistakes.
pub(super) fn validate(
    raw: RawScenario,
    tree: &Tree,
    path: &std::path::Path,
    source: &str,
    host: &Host,
) -> Result<Scenario, Vec<Diagnostic>> {
    let mut cx = Ctx {
        tree,
        found: Vec::new(),
    };
    let root = KeyPath::root();

    cx.name(&root.key("name"), &raw.name, "");
    for (key, text) in [("description", &raw.description), ("story", &raw.story)] {
        if text.trim().is_empty() {
            cx.err(&root.key(key), format!("`{key}` must not be empty"), None);
        }
    }

    let images = raw.images.unwrap_or_else(|| vec!["debian-6.1".to_string()]);
    if images.is_empty() {
        cx.err(
            &root.key("images"),
            "`images` must name at least one image",
            Some("e.g. images = [\"debian-6.1\"]".into()),
        );
    }
    let mut seen = HashSet::new();
    for (i, image) in images.iter().enumerate() {
        let path = root.key("images").index(i);
        cx.name(&path, image, "._");
        if !seen.insert(image) {
            cx.err(&path, format!("image \"{image}\" is listed twice"), None);
        }
        if let Some(known) = &host.images {
            if !known.contains(image) {
                let names: Vec<&str> = known.iter().map(String::as_str).collect();
                cx.err(
                    &path,
                    format!("image \"{image}\" is not defined in images/"),
                    Some(format!("images: {}", quoted(&names))),
                );
            }
        }
    }

    let seed = raw.seed.unwrap_or(1);
    let seeds = raw.seeds.unwrap_or(1);
    cx.range(&root.key("seeds"), seeds, 1, 1000);
    let timeout = match &raw.timeout {
        Some(t) => cx.duration(&root.key("timeout"), t).unwrap_or_default(),
        None => Duration::from_secs(600),
    };

    let guest = validate_guest(&mut cx, raw.guest);
    let volumes = validate_volumes(&mut cx, raw.volumes);
    if let Some((dir, free)) = &host.free {
        for (i, v) in volumes.iter().enumerate() {
            if v.size > *free {
                let path = root.key("volumes").index(i).key("size");
                cx.err(
                    &path,
                    format!(
                        "`{path}` is {}, more than this host can hold: {} free in {}, where runs make their disks",
                        units::format_size(v.size),
                        units::format_size_approx(*free),
                        dir.display()
                    ),
                    Some("make the volume smaller, or free space there".into()),
                );
            }
        }
    }
    let short = raw.backup.pipeline;
    let backup = validate_backup(&mut cx, raw.backup);
    let pipeline = super::pipeline::validate(&mut cx, raw.pipeline, short, path);
    let backups = 1 + backup.incrementals;
    let workloads = validate_workloads(&mut cx, raw.workloads, &volumes, backups, timeout);
    let faults = validate_faults(&mut cx, raw.faults, &volumes, backups, &guest);
    let expect = validate_expect(&mut cx, raw.expect, &guest, &faults, &workloads);
    pipeline_fit(&mut cx, &pipeline, &guest, &volumes, &faults, &expect);

    if cx.found.is_empty() {
        Ok(Scenario {
            path: path.to_owned(),
            source: source.to_owned(),
            name: raw.name,
            description: raw.description,
            story: raw.story,
            images,
            seed,
            seeds: seeds as u32,
            timeout,
            guest,
            volumes,
            workloads,
            backup,
            pipeline,
            faults,
            expect,
        })
    } else {
        Err(cx.found)
    }
}

fn validate_guest(cx: &mut Ctx, raw: RawGuest) -> Guest {
    let base = KeyPath::root().key("guest");
    let memory = match &raw.memory {
        Some(m) => {
            let path = base.key("memory");
            let bytes = cx.size(&path, m).unwrap_or(512 << 20);
            if !(128 << 20..=16 << 30).contains(&bytes) {
                cx.err(
                    &path,
                    format!(
                        "`{path}` must be between 128MiB and 16GiB, found {}",
                        units::format_size(bytes)
                    ),
                    None,
                );
            }
            bytes
        }
        None => 512 << 20,
    };
    let cpus = raw.cpus.unwrap_or(1);
    cx.range(&base.key("cpus"), cpus, 1, 8);
    let modules = raw.modules.unwrap_or_default();
    for (i, m) in modules.iter().enumerate() {
        cx.name(&base.key("modules").index(i), m, "_");
    }
    let disk = raw.disk.unwrap_or(DEFAULT_DISK);
    let io_max_delay = match (
        raw.io_schedule.unwrap_or(IoSchedule::Off),
        &raw.io_max_delay,
    ) {
        (IoSchedule::Off, None) => None,
        (IoSchedule::Off, Some(_)) => {
            cx.err(
                &base.key("io_max_delay"),
                "`io_max_delay` bounds the seeded schedule, and `io_schedule` is off",
                Some("set `io_schedule = \"seeded\"`, or remove `io_max_delay`".into()),
            );
            None
        }
        (IoSchedule::Seeded, text) => {
            let path = base.key("io_max_delay");
            let d = match text {
                Some(t) => cx.duration(&path, t).unwrap_or(DEFAULT_IO_MAX_DELAY),
                None => DEFAULT_IO_MAX_DELAY,
            };
            if d > MAX_IO_MAX_DELAY {
                cx.err(
                    &path,
                    format!(
                        "`{path}` is {d:?}; at most {MAX_IO_MAX_DELAY:?}, beyond which the guest's own timeouts decide"
                    ),
                    None,
                );
            }
            if disk != DiskBackend::Witness {
                cx.err(
                    &base.key("io_schedule"),
                    "the seeded schedule is the witness disk's, and `guest.disk` is \"qemu\"",
                    Some("set `guest.disk = \"witness\"`".into()),
                );
            }
            Some(d)
        }
    };
    Guest {
        memory,
        cpus: cpus as u32,
        modules,
        floppy: raw.floppy.unwrap_or(Floppy::None),
        hang_disk: raw.hang_disk.unwrap_or(false),
        disk,
        io_max_delay,
    }
}

/// Who serves the volumes when a scenario does not say.
pub const DEFAULT_DISK: DiskBackend = DiskBackend::Witness;
const DEFAULT_IO_MAX_DELAY: Duration = Duration::from_millis(2);
const MAX_IO_MAX_DELAY: Duration = Duration::from_secs(1);
/// The longest `latency` a disk fault may add (the witness disk's own limit).
const MAX_LATENCY_MS: u64 = 30_000;

/// mkfs.xfs (xfsprogs 5.19 and later) refuses smaller filesystems.
const XFS_MIN: u64 = 300 << 20;
/// Below this mke2fs cannot make a useful filesystem with a 4 KiB block.
const EXT_MIN: u64 = 1 << 20;

fn validate_volumes(cx: &mut Ctx, raw: Vec<RawVolume>) -> Vec<Volume> {
    let base = KeyPath::root().key("volumes");
    if raw.is_empty() {
        cx.err(
            &base,
            "`volumes` must hold at least one volume",
            Some("add a `[[volumes]]` table with `name` and `size`".into()),
        );
    }
    let mut names = HashSet::new();
    let mut mounts = HashSet::new();
    let mut out = Vec::new();
    for (i, v) in raw.into_iter().enumerate() {
        let at = base.index(i);
        cx.name(&at.key("name"), &v.name, "");
        if !names.insert(v.name.clone()) {
            cx.err(
                &at.key("name"),
                format!("volume name \"{}\" is used twice", v.name),
                Some("volume names must be unique".into()),
            );
        }
        let size = cx.size(&at.key("size"), &v.size).unwrap_or(0);
        let kind = v.fs.unwrap_or(FsKind::Ext4);
        if size != 0 && !size.is_multiple_of(4096) {
            cx.err(
                &at.key("size"),
                format!(
                    "`{}` must be a multiple of 4KiB, found {size} bytes",
                    at.key("size")
                ),
                None,
            );
        }
        let min = match kind {
            FsKind::Xfs => XFS_MIN,
            FsKind::Ext2 | FsKind::Ext4 => EXT_MIN,
            FsKind::None => 4096,
        };
        if size != 0 && size.is_multiple_of(4096) && size < min {
            cx.err(
                &at.key("size"),
                format!(
                    "`{}` is {}, too small for {}",
                    at.key("size"),
                    units::format_size(size),
                    fs_name(kind)
                ),
                Some(format!(
                    "the smallest {} volume is {}",
                    fs_name(kind),
                    units::format_size(min)
                )),
            );
        }
        let fs = match (kind, v.block_size) {
            (FsKind::Ext2 | FsKind::Ext4, bs) => {
                let bs = bs.unwrap_or(4096);
                if ![1024, 2048, 4096].contains(&bs) {
                    cx.err(
                        &at.key("block_size"),
                        format!("`{}` cannot be {bs}", at.key("block_size")),
                        Some("allowed: 1024, 2048, 4096".into()),
                    );
                }
                if kind == FsKind::Ext2 {
                    Filesystem::Ext2 {
                        block_size: bs as u32,
                    }
                } else {
                    Filesystem::Ext4 {
                        block_size: bs as u32,
                    }
                }
            }
            (_, Some(_)) => {
                cx.err(
                    &at.key("block_size"),
                    format!(
                        "`block_size` applies to ext2 and ext4 only, and `{}` is {}",
                        at.key("fs"),
                        fs_name(kind)
                    ),
                    Some("remove `block_size`".into()),
                );
                Filesystem::None
            }
            (FsKind::Xfs, None) => Filesystem::Xfs,
            (FsKind::None, None) => Filesystem::None,
        };
        let mount = match (kind, v.mount) {
            (FsKind::None, Some(_)) => {
                cx.err(
                    &at.key("mount"),
                    "a volume with `fs = \"none\"` is not mounted",
                    Some("remove `mount`, or choose a filesystem".into()),
                );
                None
            }
            (FsKind::None, None) => None,
            (_, Some(m)) => {
                if !m.starts_with('/')
                    || m == "/"
                    || m.contains(char::is_whitespace)
                    || m.split('/').any(|p| p == "..")
                {
                    cx.err(&at.key("mount"), format!("`{}`: \"{m}\" is not a usable mount point", at.key("mount")), Some("an absolute path other than /, without spaces or `..`, e.g. \"/mnt/data\"".into()));
                }
                Some(m)
            }
            (_, None) => Some(format!("/mnt/{}", v.name)),
        };
        if let Some(m) = &mount {
            if !mounts.insert(m.clone()) {
                cx.err(
                    &at.key("mount"),
                    format!("mount point \"{m}\" is used twice"),
                    None,
                );
            }
        }
        let fill = match &v.fill {
            Some(f) => cx
                .size_or_percent(&at.key("fill"), f)
                .unwrap_or(SizeOrPercent::Bytes(0)),
            None => SizeOrPercent::Bytes(0),
        };
        if let SizeOrPercent::Bytes(b) = fill {
            if size != 0 && b > size {
                cx.err(
                    &at.key("fill"),
                    format!(
                        "`{}` ({}) is larger than the volume ({})",
                        at.key("fill"),
                        units::format_size(b),
                        units::format_size(size)
                    ),
                    None,
                );
            }
        }
        out.push(Volume {
            name: v.name,
            size,
            fs,
            mount,
            backup: v.backup.unwrap_or(true),
            fill,
        });
    }
    if !out.is_empty() && !out.iter().any(|v| v.backup) {
        cx.err(
            &base,
            "no volume is backed up",
            Some("set `backup = true` on at least one volume".into()),
        );
    }
    out
}

fn fs_name(kind: FsKind) -> &'static str {
    match kind {
        FsKind::Ext2 => "ext2",
        FsKind::Ext4 => "ext4",
        FsKind::Xfs => "xfs",
        FsKind::None => "none",
    }
}

fn validate_backup(cx: &mut Ctx, raw: RawBackup) -> BackupSpec {
    let base = KeyPath::root().key("backup");
    let incrementals = raw.incrementals.unwrap_or(0);
    cx.range(&base.key("incrementals"), incrementals, 0, 100);
    let cow_size = match &raw.cow_size {
        Some(c) => {
            let path = base.key("cow_size");
            let parsed = cx.size_or_percent(&path, c);
            match parsed {
                Some(SizeOrPercent::Bytes(b)) if b < 4096 => {
                    cx.err(&path, format!("`{path}` must be at least 4KiB"), None);
                }
                Some(SizeOrPercent::Percent(p)) if p <= 0.0 => {
                    cx.err(&path, format!("`{path}` must be more than 0%"), None);
                }
                _ => {}
            }
            parsed.unwrap_or(SizeOrPercent::Percent(10.0))
        }
        None => SizeOrPercent::Percent(10.0),
    };
    let discovery_timeout = match &raw.discovery_timeout {
        Some(d) => cx
            .duration(&base.key("discovery_timeout"), d)
            .unwrap_or_default(),
        None => Duration::from_secs(10),
    };
    BackupSpec {
        incrementals: incrementals as u32,
        cow_size,
        discovery_timeout,
    }
}

/// What the scenario asks of a pipeline that it cannot do: faults only the reference
/// pipeline injects, checks that need bw-agent or a plain disk.
fn pipeline_fit(
    cx: &mut Ctx,
    pipeline: &PipelineSpec,
    guest: &Guest,
    volumes: &[Volume],
    faults: &[Fault],
    expect: &Expectations,
) {
    let kind = pipeline.kind();
    if kind == PipelineKind::Reference {
        return;
    }
    let name = kind.name();
    let faults_at = KeyPath::root().key("faults");
    for (i, f) in faults.iter().enumerate() {
        let layer = f.spec.layer();
        if matches!(
            layer,
            Layer::Module | Layer::Transport | Layer::Target | Layer::Agent
        ) {
            cx.err(
                &faults_at.index(i).key("layer"),
                format!(
                    "{} faults are injected into the reference pipeline, and this scenario runs the {name} pipeline",
                    layer.name()
                ),
                Some("guest faults work with every pipeline; use `[pipeline] kind = \"reference\"` for the others".into()),
            );
        }
    }
    let at = KeyPath::root().key("expect");
    if !expect.skipped.is_empty() {
        cx.err(
            &at.key("skipped"),
            format!(
                "`skipped` checks bw-agent's discovery, and the {name} pipeline has no bw-agent"
            ),
            None,
        );
    }
    if expect.remount {
        cx.err(
            &at.key("remount"),
            format!("the second boot mounts the disks as plain filesystems, which the {name} pipeline's volumes are not"),
            Some("remove `remount`, or use the reference pipeline".into()),
        );
    }
    if let PipelineSpec::External(e) = pipeline {
        let backed = volumes.iter().filter(|v| v.backup).count();
        if e.snapshot.at_cut() && backed > 1 {
            // Each volume's history gives its own cut; nothing would check that the
            // product took them at one moment.
            cx.err(
                &KeyPath::root().key("pipeline").key("instant"),
                format!("`instant = \"oracle\"` judges each volume at its own cut, and {backed} volumes are backed up: nothing would prove they were snapshotted together"),
                Some("back up one volume, or let the product announce its instant".into()),
            );
        }
        if matches!(e.snapshot, super::SnapshotSteps::Announced { .. }) && backed > 1 {
            cx.err(
                &KeyPath::root().key("pipeline").key("commands").key("snapshot"),
                format!("an announced `snapshot` gives one instant per command, and {backed} volumes are backed up"),
                Some("use `freeze`, `setup` and `thaw`: the harness takes one truth for every volume between them".into()),
            );
        }
        // The oracle's history is the witness disk's, one per volume's disk; the
        // external pipeline's volumes are whole disks, so each has its own.
        if e.snapshot.at_cut() && guest.disk != DiskBackend::Witness {
            cx.err(
                &KeyPath::root().key("pipeline").key("instant"),
                "`instant = \"oracle\"` judges each backup against the witness disk's write history, and `guest.disk` is \"qemu\"",
                Some("set `guest.disk = \"witness\"` (the default)".into()),
            );
        }
        // These fire at the instant the harness takes its truth; a product judged at
        // the oracle's cut gives none, so they could never fire.
        if e.snapshot.at_cut() {
            for (i, f) in faults.iter().enumerate() {
                let kind = f.spec.kind();
                if matches!(kind, FaultKind::RemoveDisk | FaultKind::DiskTorn) {
                    cx.err(
                        &faults_at.index(i).key("kind"),
                        format!(
                            "`{}` fires at the snapshot instant, and a product with `instant = \"oracle\"` announces none",
                            kind.name()
                        ),
                        Some("drop the fault, or let the product announce its instant (`bw-pipe instant`)".into()),
                    );
                }
            }
        }
    }
    if kind == PipelineKind::Lvm {
        if expect.fsck {
            cx.err(
                &at.key("fsck"),
                "an LVM volume is a logical volume inside its disk: the host's e2fsck cannot check the disk",
                Some("remove `fsck`".into()),
            );
        }
        for (i, v) in volumes.iter().enumerate() {
            if v.size != 0 && !v.size.is_multiple_of(super::pipeline::LVM_EXTENT) {
                cx.err(
                    &KeyPath::root().key("volumes").index(i).key("size"),
                    format!(
                        "an LVM volume is a whole number of 4MiB extents, and `volumes[{i}].size` is {}",
                        units::format_size(v.size)
                    ),
                    None,
                );
            }
        }
    }
}

fn volume_ref(cx: &mut Ctx, path: &KeyPath, name: &str, volumes: &[Volume]) -> bool {
    if volumes.iter().any(|v| v.name == name) {
        return true;
    }
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    cx.err(
        path,
        format!("`{path}`: there is no volume \"{name}\""),
        Some(format!("volumes: {}", quoted(&names))),
    );
    false
}

fn validate_workloads(
    cx: &mut Ctx,
    raw: Vec<RawWorkload>,
    volumes: &[Volume],
    backups: u32,
    timeout: Duration,
) -> Vec<Workload> {
    let base = KeyPath::root().key("workloads");
    let mut out = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let at = base.index(i);
        let volume = match (&w.volume, volumes) {
            (Some(name), _) => {
                volume_ref(cx, &at.key("volume"), name, volumes);
                name.clone()
            }
            (None, [only]) => only.name.clone(),
            (None, _) => {
                cx.err(
                    &at,
                    format!("`{at}` needs `volume`: the scenario has more than one volume"),
                    Some(format!(
                        "volumes: {}",
                        quoted(&volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>())
                    )),
                );
                String::new()
            }
        };
        let target = volumes.iter().find(|v| v.name == volume);
        if let Some(v) = target {
            if v.fs == Filesystem::None && w.kind != WorkloadKind::Overwrite {
                cx.err(
                    &at.key("kind"),
                    format!(
                        "a `{}` workload needs a filesystem, and volume \"{}\" has `fs = \"none\"`",
                        w.kind.name(),
                        v.name
                    ),
                    Some("on a raw volume only \"overwrite\" works".into()),
                );
            }
        }
        let stamped = w.stamped.unwrap_or(false);
        if stamped && w.kind == WorkloadKind::MetadataChurn {
            cx.err(
                &at.key("stamped"),
                "a `metadata-churn` workload writes no data blocks to stamp",
                Some("remove `stamped`, or use a data workload".into()),
            );
        }
        let when = w.when.unwrap_or(When::During);
        let (rate, pace) = match &w.rate {
            Some(r) => validate_rate(cx, &at.key("rate"), r, when),
            None => (None, None),
        };
        let amount = w
            .amount
            .as_ref()
            .and_then(|a| cx.size(&at.key("amount"), a));
        if let (Some(a), Some(v)) = (amount, target) {
            if a == 0 {
                cx.err(
                    &at.key("amount"),
                    format!("`{}` must be more than zero", at.key("amount")),
                    None,
                );
            } else if w.kind == WorkloadKind::FillToFull && a > v.size {
                cx.err(
                    &at.key("amount"),
                    format!(
                        "`{}` is larger than volume \"{}\"",
                        at.key("amount"),
                        v.name
                    ),
                    None,
                );
            }
        }
        if w.ops == Some(0) {
            cx.err(
                &at.key("ops"),
                format!("`{}` must be more than zero", at.key("ops")),
                None,
            );
        }
        let duration = w
            .duration
            .as_ref()
            .and_then(|d| cx.duration(&at.key("duration"), d));
        if let Some(d) = duration {
            if d >= timeout {
                cx.err(
                    &at.key("duration"),
                    format!(
                        "`{}` ({d:?}) is not shorter than the scenario's `timeout` ({timeout:?})",
                        at.key("duration")
                    ),
                    None,
                );
            }
        }
        if pace.is_some() {
            if let Some(d) = &w.duration {
                let path = at.key("duration");
                cx.err(
                    &path,
                    format!("`{path}` (\"{d}\"): a paced workload's amount follows the backup's progress, not the clock"),
                    Some("remove `duration`; `amount` or `ops` cap the total".into()),
                );
            }
        }
        let reason = validate_wall_clock(cx, &at, &w, when, rate, pace);
        let bounded = amount.is_some()
            || w.ops.is_some()
            || duration.is_some()
            || w.kind == WorkloadKind::FillToFull;
        if when != When::During && !bounded {
            let name = if when == When::Before {
                "before"
            } else {
                "between"
            };
            cx.err(
                &at,
                format!("a workload that runs `{name}` backups must end by itself"),
                Some("give it `amount`, `ops` or `duration`".into()),
            );
        }
        let applicable: Vec<u32> = match when {
            When::Before => Vec::new(),
            When::During => (1..=backups).collect(),
            When::Between => (2..=backups).collect(),
        };
        if when == When::Between && applicable.is_empty() {
            cx.err(
                &at.key("when"),
                "`between` needs incrementals: there is only the full backup",
                Some("set `backup.incrementals`, or use \"before\" or \"during\"".into()),
            );
        }
        let chosen = match w.backups {
            Some(list) => {
                let path = at.key("backups");
                if when == When::Before {
                    cx.err(&path, "a `before` workload runs once, before the first backup: it takes no `backups`", Some("remove `backups`".into()));
                }
                let mut set = BTreeSet::new();
                for (j, b) in list.iter().enumerate() {
                    let ok = u32::try_from(*b).ok().filter(|b| applicable.contains(b));
                    match ok {
                        Some(b) if !set.insert(b) => {
                            cx.err(&path.index(j), format!("backup {b} is listed twice"), None);
                        }
                        Some(_) => {}
                        None if when != When::Before => {
                            let allowed = applicable
                                .iter()
                                .map(|n| n.to_string())
                                .collect::<Vec<_>>()
                                .join(", ");
                            cx.err(
                                &path.index(j),
                                format!(
                                    "`{}`: there is no backup {b} a `{}` workload can run for",
                                    path.index(j),
                                    if when == When::During {
                                        "during"
                                    } else {
                                        "between"
                                    }
                                ),
                                Some(format!("allowed: {allowed} (1 is the full backup)")),
                            );
                        }
                        None => {}
                    }
                }
                set.into_iter().collect()
            }
            None => applicable,
        };
        out.push(Workload {
            spec: WorkloadSpec {
                kind: w.kind,
                volume,
                stamped,
                rate,
                pace,
                wall_clock_reason: reason,
                amount,
                ops: w.ops,
                duration,
            },
            when,
            backups: chosen,
        });
    }
    out
}

/// A workload's `rate`: a pace (a rate per share of the backup's progress) for a
/// `during` workload, a rate per second otherwise.
fn validate_rate(
    cx: &mut Ctx,
    path: &KeyPath,
    text: &str,
    when: When,
) -> (Option<Rate>, Option<Pace>) {
    if text.contains(" per ") {
        let Some(pace) = units::parse_pace(text) else {
            cx.err(
                path,
                format!("`{path}`: \"{text}\" is not a rate"),
                Some(units::RATE_HELP.into()),
            );
            return (None, None);
        };
        let zero = matches!(pace.amount, PaceAmount::Bytes(0) | PaceAmount::Ops(0));
        if zero {
            cx.err(path, format!("`{path}` must grant more than zero"), None);
        } else if pace.share < units::MIN_PACE_SHARE {
            cx.err(
                path,
                format!(
                    "`{path}`: a step of {}% is below the smallest, {}%",
                    pace.share,
                    units::MIN_PACE_SHARE
                ),
                Some("each step holds the backup for a round trip to the guest: use a larger share and a larger amount".into()),
            );
        }
        if when != When::During {
            cx.err(
                path,
                format!(
                    "`{path}`: a `{}` workload runs while no backup does, so there is no progress to pace it by",
                    when_name(when)
                ),
                Some("give it a rate per second, e.g. \"1MiB/s\", or none".into()),
            );
        }
        return (None, Some(pace));
    }
    match units::parse_rate(text) {
        None => {
            cx.err(
                path,
                format!("`{path}`: \"{text}\" is not a rate"),
                Some(units::RATE_HELP.into()),
            );
            (None, None)
        }
        Some(Rate::BytesPerSec(0) | Rate::OpsPerSec(0)) => {
            cx.err(path, format!("`{path}` must be more than zero"), None);
            (None, None)
        }
        Some(r) => (Some(r), None),
    }
}

fn when_name(when: When) -> &'static str {
    match when {
        When::Before => "before",
        When::During => "during",
        When::Between => "between",
    }
}

/// A `during` workload paced by the wall clock (a rate per second, or none) writes more
/// on a slower machine; the scenario must say why it wants that. Nowhere else does
/// `wall_clock_reason` belong.
fn validate_wall_clock(
    cx: &mut Ctx,
    at: &KeyPath,
    w: &RawWorkload,
    when: When,
    rate: Option<Rate>,
    pace: Option<Pace>,
) -> Option<String> {
    let path = at.key("wall_clock_reason");
    // A rate that did not parse has had its error already.
    let wall_clock = when == When::During && pace.is_none() && (w.rate.is_none() || rate.is_some());
    match &w.wall_clock_reason {
        Some(reason) if !wall_clock => {
            let why = if when != When::During {
                format!(
                    "a `{}` workload is paced by the wall clock anyway",
                    when_name(when)
                )
            } else {
                "the workload is paced by the backup's progress".to_string()
            };
            cx.err(
                &path,
                format!(
                    "`{path}` is only for a `during` workload paced by the wall clock, and {why}"
                ),
                Some("remove `wall_clock_reason`".into()),
            );
            Some(reason.clone())
        }
        Some(reason) if reason.trim().is_empty() => {
            cx.err(&path, format!("`{path}` must say why"), None);
            None
        }
        Some(reason) => Some(reason.clone()),
        None if wall_clock => {
            let (key, what) = match rate {
                Some(_) => (at.key("rate"), "a `during` workload with a rate per second writes more the slower the machine runs the backup"),
                None => (at.clone(), "a `during` workload without a rate writes as much as the machine's speed allows while the backup runs"),
            };
            cx.err(
                &key,
                format!("`{key}`: {what}"),
                Some("pace it by the backup's progress, e.g. rate = \"1MiB per 4%\", or say why the wall clock is wanted in `wall_clock_reason`".into()),
            );
            None
        }
        None => None,
    }
}

fn validate_faults(
    cx: &mut Ctx,
    raw: Vec<RawFault>,
    volumes: &[Volume],
    backups: u32,
    guest: &Guest,
) -> Vec<Fault> {
    let base = KeyPath::root().key("faults");
    let mut out = Vec::new();
    // For `end-snapshot`: (index, backup, volume) of each, checked against the disk
    // faults once all are read.
    let mut ends: Vec<(usize, u32, String)> = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let at = base.index(i);
        let Some(kind) = FaultKind::from_name(&f.kind) else {
            // The schema walk has already said the kind is unknown.
            continue;
        };
        if kind.layer() != f.layer {
            let same: Vec<&str> = FaultKind::ALL
                .iter()
                .filter(|k| k.layer() == f.layer)
                .map(|k| k.name())
                .collect();
            cx.err(
                &at.key("kind"),
                format!(
                    "`{}` is a {} fault, not a {} fault",
                    f.kind,
                    kind.layer().name(),
                    f.layer.name()
                ),
                Some(format!(
                    "{} faults: {}; or set `layer = \"{}\"`",
                    f.layer.name(),
                    quoted(&same),
                    kind.layer().name()
                )),
            );
            continue;
        }
        let given: Vec<(&str, bool)> = vec![
            ("every", f.every.is_some()),
            ("frame", f.frame.is_some()),
            ("after_frame", f.after_frame.is_some()),
            ("ms", f.ms.is_some()),
            ("after_ms", f.after_ms.is_some()),
            ("at_percent", f.at_percent.is_some()),
            ("volume", f.volume.is_some()),
            ("op", f.op.is_some()),
            ("block", f.block.is_some()),
            ("once", f.once.is_some()),
            ("at", f.at.is_some()),
            ("blocks", f.blocks.is_some()),
            ("after_requests", f.after_requests.is_some()),
            ("max_ms", f.max_ms.is_some()),
            ("land", f.land.is_some()),
            ("how", f.how.is_some()),
        ];
        let (layer, kind_name) = (kind.layer().name(), kind.name());
        let param_names: Vec<&str> = kind.params().iter().map(|(n, _)| *n).collect();
        let allowed_text = if param_names.is_empty() {
            format!("`{kind_name}` takes no parameters")
        } else {
            format!("`{kind_name}` takes: {}", param_names.join(", "))
        };
        let mut params_ok = true;
        for (name, present) in &given {
            if *present && !param_names.contains(name) {
                cx.err(
                    &at.key(name),
                    format!("`{name}` is not a parameter of {layer} fault `{kind_name}`"),
                    Some(allowed_text.clone()),
                );
                params_ok = false;
            }
        }
        let present = |name: &str| given.iter().any(|(n, p)| *n == name && *p);
        for (param, need) in kind.params() {
            if *need == Need::Required && !present(param) {
                cx.err(
                    &at,
                    format!("{layer} fault `{kind_name}` needs `{param}`"),
                    Some(allowed_text.clone()),
                );
                params_ok = false;
            }
        }
        let either: Vec<&str> = kind
            .params()
            .iter()
            .filter(|(_, n)| *n == Need::Either)
            .map(|(n, _)| *n)
            .collect();
        if !either.is_empty() {
            let count = either.iter().filter(|n| present(n)).count();
            if count != 1 {
                let what = if count == 0 {
                    "needs"
                } else {
                    "takes only one of"
                };
                cx.err(
                    &at,
                    format!(
                        "{layer} fault `{kind_name}` {what} `{}`",
                        either.join("` or `")
                    ),
                    Some(allowed_text.clone()),
                );
                params_ok = false;
            }
        }
        let backup = f.backup.unwrap_or(1);
        let backup_ok = (1..=u64::from(backups)).contains(&backup);
        if !backup_ok {
            let path = at.key("backup");
            let help = if backups == 1 {
                "there is only backup 1, the full backup; add incrementals with `backup.incrementals`".to_string()
            } else {
                format!(
                    "backups are 1 (the full) to {backups} (`backup.incrementals` = {})",
                    backups - 1
                )
            };
            cx.err(
                &path,
                format!("`{path}` is {backup}, and there is no backup {backup}"),
                Some(help),
            );
        }
        if backup_ok && kind == FaultKind::DropTracking && backup < 2 {
            cx.err(&at.key("backup"), "`drop-tracking` acts on the tracking an incremental backup reads, and backup 1 is the full backup", Some(if backups >= 2 { format!("use a backup from 2 to {backups}") } else { "add incrementals with `backup.incrementals`".to_string() }));
        }
        if backup_ok && kind == FaultKind::SkipBlocks && backup != 1 {
            cx.err(
                &at.key("backup"),
                "`skip-blocks` leaves blocks out of a full backup, and only backup 1 is full",
                Some("use backup = 1".to_string()),
            );
        }
        for key in ["every", "frame", "after_frame", "ms"] {
            let value = match key {
                "every" => f.every,
                "frame" => f.frame,
                "after_frame" => f.after_frame,
                _ => f.ms,
            };
            if let Some(v) = value {
                if v == 0 && key != "after_frame" {
                    cx.err(
                        &at.key(key),
                        format!("`{}` must be at least 1", at.key(key)),
                        None,
                    );
                    params_ok = false;
                }
            }
        }
        if let Some(p) = f.at_percent {
            params_ok &= cx.range(&at.key("at_percent"), p, 1, 99);
        }
        if let Some(v) = &f.volume {
            params_ok &= volume_ref(cx, &at.key("volume"), v, volumes);
        }
        if let (Some(b), Some(v)) = (
            f.block,
            f.volume
                .as_ref()
                .and_then(|n| volumes.iter().find(|v| &v.name == n)),
        ) {
            let count = f.blocks.unwrap_or(1);
            if v.size != 0 && b.saturating_add(count) > v.size / 4096 {
                let what = if count == 1 {
                    format!("`{}` is {b}", at.key("block"))
                } else {
                    format!("blocks {b} to {}", b.saturating_add(count) - 1)
                };
                cx.err(
                    &at.key("block"),
                    format!(
                        "{what}, past the end of volume \"{}\" ({} blocks)",
                        v.name,
                        v.size / 4096
                    ),
                    None,
                );
                params_ok = false;
            }
        }
        // A frame or block count no backup of these volumes reaches: the fault could
        // never fire, and the run would test nothing.
        let stream = volumes
            .iter()
            .filter(|v| v.backup)
            .max_by_key(|v| v.size)
            .map(|v| (v.name.as_str(), v.size, v.size / 4096));
        if let Some((name, size, blocks)) = stream.filter(|s| s.2 > 0) {
            let counted: &[(&str, Option<u64>)] = match kind {
                FaultKind::BitFlip | FaultKind::Rewrite => {
                    &[("frame", f.frame), ("every", f.every)]
                }
                FaultKind::DropFrame => &[("frame", f.frame)],
                FaultKind::Disconnect => &[("after_frame", f.after_frame)],
                FaultKind::WrongOffset | FaultKind::SkipBlocks => &[("every", f.every)],
                // Counted in events no scenario bounds (COW copies, tracking updates),
                // in time, or a disk block (checked above).
                FaultKind::CowReadLive
                | FaultKind::DropTracking
                | FaultKind::CorruptCow
                | FaultKind::DelayCow
                | FaultKind::DelayRead
                | FaultKind::OpenTeardown
                | FaultKind::DiskHang
                | FaultKind::DiskEio
                | FaultKind::DiskLatency
                | FaultKind::DiskTorn
                | FaultKind::EndSnapshot
                | FaultKind::SkipVerify
                | FaultKind::CrashBeforeCommit
                | FaultKind::Reset
                | FaultKind::Panic
                | FaultKind::RemoveDisk => &[],
            };
            for (key, value) in counted {
                let Some(n) = value else { continue };
                // `after_frame` fires after frame n: the stream needs n + 1 frames.
                let needs = if *key == "after_frame" { n + 1 } else { *n };
                if needs > blocks {
                    let path = at.key(key);
                    cx.err(
                        &path,
                        format!(
                            "`{path}` is {n}, and a backup of volume \"{name}\" ({}) carries at most {blocks} blocks: the fault can never fire",
                            units::format_size(size)
                        ),
                        Some(format!("use a value up to {}", if *key == "after_frame" { blocks - 1 } else { blocks })),
                    );
                    params_ok = false;
                }
            }
        }
        if f.blocks.is_some() && f.block.is_none() {
            cx.err(
                &at.key("blocks"),
                "`blocks` counts blocks from `block`, and there is no `block`",
                Some("add `block`, the first 4 KiB block".into()),
            );
            params_ok = false;
        }
        for (key, value) in [("blocks", f.blocks), ("land", f.land)] {
            if value == Some(0) {
                cx.err(
                    &at.key(key),
                    format!("`{}` must be at least 1", at.key(key)),
                    None,
                );
                params_ok = false;
            }
        }
        if let Some(ms) = f.max_ms {
            params_ok &= cx.range(&at.key("max_ms"), ms, 1, MAX_LATENCY_MS);
        }
        if let Some(land) = f.land {
            params_ok &= cx.range(&at.key("land"), land, 1, 4095);
        }
        if kind.layer() == Layer::Disk && guest.disk != DiskBackend::Witness {
            cx.err(
                &at.key("layer"),
                format!(
                    "disk fault `{}` is injected by the witness disk, and `guest.disk` is \"qemu\"",
                    kind.name()
                ),
                Some("set `guest.disk = \"witness\"` (the default)".into()),
            );
            params_ok = false;
        }
        if kind == FaultKind::EndSnapshot && guest.disk != DiskBackend::Witness {
            cx.err(
                &at.key("kind"),
                "`end-snapshot` waits for a read the witness disk holds, and `guest.disk` is \"qemu\"",
                Some("set `guest.disk = \"witness\"` (the default)".into()),
            );
            params_ok = false;
        }
        if !params_ok {
            continue;
        }
        let volume = || f.volume.clone().unwrap_or_default();
        let op = f.op.unwrap_or(Op::Read);
        let blocks = f.block.map(|first| BlockSpan {
            first,
            count: f.blocks.unwrap_or(1),
        });
        let disk_match = || DiskMatch {
            volume: volume(),
            op,
            blocks,
            once: f.once.unwrap_or(false),
            after_requests: f.after_requests.unwrap_or(0),
        };
        let frames = || match (f.frame, f.every) {
            (Some(n), _) => FrameSel::Nth(n),
            (None, e) => FrameSel::Every(e.unwrap_or(1)),
        };
        let reset_at = || match (f.after_ms, f.at_percent) {
            (Some(ms), _) => ResetAt::AfterMs(ms),
            (None, p) => ResetAt::AtPercent(p.unwrap_or(50) as u8),
        };
        let every = f.every.unwrap_or(1);
        let spec = match kind {
            FaultKind::CowReadLive => FaultSpec::CowReadLive { every },
            FaultKind::DropTracking => FaultSpec::DropTracking { every },
            FaultKind::CorruptCow => FaultSpec::CorruptCow { every },
            FaultKind::DelayCow => FaultSpec::DelayCow {
                ms: f.ms.unwrap_or(0),
            },
            FaultKind::DelayRead => FaultSpec::DelayRead {
                ms: f.ms.unwrap_or(0),
            },
            FaultKind::OpenTeardown => FaultSpec::OpenTeardown,
            FaultKind::DiskHang => FaultSpec::DiskHang { at: disk_match() },
            FaultKind::DiskEio => FaultSpec::DiskEio { at: disk_match() },
            FaultKind::DiskLatency => FaultSpec::DiskLatency {
                volume: volume(),
                op,
                blocks,
                max_ms: f.max_ms.unwrap_or(1),
            },
            FaultKind::DiskTorn => FaultSpec::DiskTorn {
                volume: volume(),
                land: f.land.unwrap_or(1) as u32,
            },
            FaultKind::BitFlip => FaultSpec::BitFlip { frames: frames() },
            FaultKind::Rewrite => FaultSpec::Rewrite { frames: frames() },
            FaultKind::DropFrame => FaultSpec::DropFrame {
                frame: f.frame.unwrap_or(1),
            },
            FaultKind::Disconnect => FaultSpec::Disconnect {
                after_frame: f.after_frame.unwrap_or(0),
            },
            FaultKind::WrongOffset => FaultSpec::WrongOffset { every },
            FaultKind::SkipVerify => FaultSpec::SkipVerify,
            FaultKind::CrashBeforeCommit => FaultSpec::CrashBeforeCommit,
            FaultKind::SkipBlocks => FaultSpec::SkipBlocks { every },
            FaultKind::Reset => FaultSpec::Reset { at: reset_at() },
            FaultKind::Panic => FaultSpec::Panic { at: reset_at() },
            FaultKind::RemoveDisk => FaultSpec::RemoveDisk {
                volume: volume(),
                at: f.at.unwrap_or(FaultAt::Freeze),
            },
            FaultKind::EndSnapshot => {
                ends.push((i, backup as u32, volume()));
                FaultSpec::EndSnapshot {
                    volume: volume(),
                    how: f.how.unwrap_or(EndHow::ToIncremental),
                }
            }
        };
        out.push(Fault {
            backup: backup as u32,
            spec,
        });
    }
    for (i, backup, volume) in ends {
        let holds_a_read = out
            .iter()
            .any(|f| f.backup == backup && f.spec.held_read().is_some_and(|(v, _)| v == volume));
        if !holds_a_read {
            cx.err(
                &base.index(i),
                format!(
                    "`end-snapshot` acts while a disk fault holds a read of volume \"{volume}\", and backup {backup} has none"
                ),
                Some(format!(
                    "add a `latency` or `hang` disk fault with `volume = \"{volume}\"`, `block` and `op = \"read\"` in backup {backup}"
                )),
            );
        }
        if volumes.iter().any(|v| v.name == volume && !v.backup) {
            cx.err(
                &base.index(i).key("volume"),
                format!(
                    "`end-snapshot` ends a snapshot of volume \"{volume}\", which is not backed up"
                ),
                None,
            );
        }
    }
    out
}

fn validate_expect(
    cx: &mut Ctx,
    raw: RawExpect,
    guest: &Guest,
    faults: &[Fault],
    workloads: &[Workload],
) -> Expectations {
    let base = KeyPath::root().key("expect");
    let classes: BTreeSet<BlockClass> = raw.classes.unwrap_or_default().into_iter().collect();
    let outcomes: BTreeSet<Outcome> = raw.outcomes.unwrap_or_default().into_iter().collect();
    let allow_outcomes: BTreeSet<Outcome> =
        raw.allow_outcomes.unwrap_or_default().into_iter().collect();
    let allow_clean = raw.allow_clean.unwrap_or(false);
    if allow_clean && classes.is_empty() {
        cx.err(&base.key("allow_clean"), "`allow_clean` only makes sense with `classes`: without them the run must be clean anyway", Some("list the classes the fault may produce in `expect.classes`, or remove `allow_clean`".into()));
    }
    if let Some(both) = outcomes.intersection(&allow_outcomes).next() {
        cx.err(
            &base.key("allow_outcomes"),
            format!(
                "\"{}\" is in both `outcomes` and `allow_outcomes`",
                both.name()
            ),
            Some("`outcomes` must occur, `allow_outcomes` may: list it once".into()),
        );
    }
    // A scenario that injects a fault and expects its class passes only when the class is
    // found where the fault was injected, unless it says otherwise.
    let at = raw
        .at
        .unwrap_or(if !faults.is_empty() && !classes.is_empty() {
            Where::FaultSites
        } else {
            Where::Anywhere
        });
    if raw.at == Some(Where::FaultSites) {
        if faults.is_empty() {
            cx.err(
                &base.key("at"),
                "`at = \"fault-sites\"` needs a fault to find",
                Some("add a `[[faults]]` entry, or remove `at`".into()),
            );
        }
        if classes.is_empty() {
            cx.err(
                &base.key("at"),
                "`at = \"fault-sites\"` needs `classes` to look for",
                None,
            );
        }
    }
    let named_writes = raw.named_writes.unwrap_or(false);
    if named_writes {
        if !workloads.iter().any(|w| w.spec.stamped) {
            cx.err(
                &base.key("named_writes"),
                "`named_writes` needs a stamped workload",
                Some("set `stamped = true` on a data workload".into()),
            );
        }
        if !classes.contains(&BlockClass::DataFromTheFuture) {
            cx.err(&base.key("named_writes"), "`named_writes` names the writes of data-from-the-future blocks, and `classes` does not expect any", None);
        }
    }
    let skipped: BTreeSet<Skipped> = raw.skipped.unwrap_or_default().into_iter().collect();
    if skipped.contains(&Skipped::Floppy) && guest.floppy == Floppy::None {
        cx.err(
            &base.key("skipped"),
            "`skipped` names the floppy, and the guest has none",
            Some("set `guest.floppy = \"empty\"` or \"media\"".into()),
        );
    }
    if skipped.contains(&Skipped::HangDisk) && !guest.hang_disk {
        cx.err(
            &base.key("skipped"),
            "`skipped` names the hang disk, and the guest has none",
            Some("set `guest.hang_disk = true`".into()),
        );
    }
    Expectations {
        classes,
        allow_clean,
        outcomes,
        allow_outcomes,
        at,
        named_writes,
        fsck: raw.fsck.unwrap_or(false),
        remount: raw.remount.unwrap_or(false),
        skipped: skipped.into_iter().collect(),
    }
}

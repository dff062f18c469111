//! The `[pipeline]` section (and its short form `backup.pipeline`): the typed pipeline a
//! scenario runs, and the checks the key table cannot make (keys of another kind,
//! commands that go together, sizes and paths).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::{pipeline_kinds, PIPELINE_KEY_KINDS};
use super::raw::{InstantSource, LvmIncremental, PipelineKind, RawPipeline};

use super::tree::{quoted, KeyPath};
use super::units;
use super::validate::Ctx;

/// The pipeline under test, with its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PipelineSpec {
    Reference,
    DmSnapshot(DmSnapshotSpec),
    Lvm(LvmSpec),
    External(Box<ExternalSpec>),
}

impl PipelineSpec {
    pub fn kind(&self) -> PipelineKind {
        match self {
            PipelineSpec::Reference => PipelineKind::Reference,
            PipelineSpec::DmSnapshot(_) => PipelineKind::DmSnapshot,
            PipelineSpec::Lvm(_) => PipelineKind::Lvm,
            PipelineSpec::External(_) => PipelineKind::External,
        }
    }

    /// Whether the harness's own reader records the snapshot and live points.
    pub fn reader(&self) -> bool {
        match self {
            PipelineSpec::Reference => false,
            PipelineSpec::DmSnapshot(d) => d.reader,
            PipelineSpec::Lvm(l) => l.reader,
            PipelineSpec::External(e) => e.reader,
        }
    }

    /// Whether each backup is judged at the history oracle's cut, not at an instant
    /// (an external product that cannot announce it).
    pub fn at_cut(&self) -> bool {
        match self {
            PipelineSpec::Reference | PipelineSpec::DmSnapshot(_) | PipelineSpec::Lvm(_) => false,
            PipelineSpec::External(e) => e.snapshot.at_cut(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmSnapshotSpec {
    pub reader: bool,
    pub persistent: bool,
    /// Bytes.
    pub chunk: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvmSpec {
    pub reader: bool,
    pub thin: bool,
    pub incremental: LvmIncremental,
    /// Bytes.
    pub chunk: u64,
}

/// How a product's snapshot is taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotSteps {
    /// freeze, setup, (the harness's truth), thaw.
    FreezeSetupThaw {
        freeze: String,
        setup: String,
        thaw: String,
    },
    /// One command that announces its instant with `bw-pipe instant`.
    Announced { snapshot: String },
    /// One command that freezes, snapshots and thaws on its own and cannot announce
    /// (`instant = "oracle"`): the truth is the history oracle's at its cut.
    Unannounced { snapshot: String },
}

impl SnapshotSteps {
    /// Whether the truth comes from the history oracle's cut, not an instant.
    pub fn at_cut(&self) -> bool {
        match self {
            SnapshotSteps::FreezeSetupThaw { .. } | SnapshotSteps::Announced { .. } => false,
            SnapshotSteps::Unannounced { .. } => true,
        }
    }
}

/// Where a product puts its backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Through the harness's channel (the transport point records it).
    Stream(String),
    /// Onto a target disk the harness re-reads.
    Copy(String),
}

/// An external product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalSpec {
    pub reader: bool,
    /// Absolute.
    pub dir: PathBuf,
    pub build: Option<String>,
    pub build_timeout: Duration,
    /// Paths in `dir`.
    pub modules: Vec<String>,
    pub step_timeout: Duration,
    pub scratch_disk: Option<u64>,
    /// Path from the mount point, and the most it may occupy.
    pub cow_file: Option<(String, u64)>,
    pub prepare: Option<String>,
    pub snapshot: SnapshotSteps,
    pub device: String,
    pub delivery: Delivery,
    pub changed: Option<String>,
    pub transition: Option<String>,
    pub destroy: String,
}

/// LVM allocates in extents of this size; an LVM volume is a whole number of them.
pub const LVM_EXTENT: u64 = 4 << 20;

/// The chunk sizes dm-snapshot and LVM accept here.
const CHUNK_MIN: u64 = 4 << 10;
const THIN_CHUNK_MIN: u64 = 64 << 10;
const CHUNK_MAX: u64 = 1 << 20;

/// Types `[pipeline]` (or `backup.pipeline`, its short form). `file` is the scenario's
/// path: `dir` is relative to it.
pub(super) fn validate(
    cx: &mut Ctx,
    raw: Option<RawPipeline>,
    short: Option<PipelineKind>,
    file: &Path,
) -> PipelineSpec {
    let base = KeyPath::root().key("pipeline");
    let raw = match (raw, short) {
        (Some(r), Some(_)) => {
            cx.err(
                &KeyPath::root().key("backup").key("pipeline"),
                "the pipeline is given twice: `backup.pipeline` and `[pipeline]`",
                Some("`backup.pipeline` is the short form of `[pipeline] kind`: keep one".into()),
            );
            r
        }
        (Some(r), None) => r,
        (None, Some(PipelineKind::External)) => {
            cx.err(
                &KeyPath::root().key("backup").key("pipeline"),
                "an external pipeline needs a `[pipeline]` table with its directory and commands",
                Some("see docs/your-pipeline.md".into()),
            );
            return PipelineSpec::Reference;
        }
        (None, Some(kind)) => RawPipeline::of_kind(kind),
        (None, None) => return PipelineSpec::Reference,
    };
    let kind = raw.kind;
    // Keys of another kind.
    for (name, given) in raw.given() {
        if !given {
            continue;
        }
        let kinds = pipeline_kinds(&format!("pipeline.{name}")).unwrap_or(&[]);
        if !kinds.contains(&kind) {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            let takes: Vec<&str> = PIPELINE_KEY_KINDS
                .iter()
                .filter(|(_, ks)| ks.contains(&kind))
                .map(|(k, _)| *k)
                .collect();
            cx.err(
                &base.key(name),
                format!(
                    "`pipeline.{name}` is a key of {}, and `pipeline.kind` is \"{}\"",
                    quoted(&names),
                    kind.name()
                ),
                Some(format!("{} takes: {}", kind.name(), takes.join(", "))),
            );
        }
    }
    let reader = raw.reader.unwrap_or(true);
    match kind {
        PipelineKind::Reference => PipelineSpec::Reference,
        PipelineKind::DmSnapshot => PipelineSpec::DmSnapshot(DmSnapshotSpec {
            reader,
            persistent: raw.persistent.unwrap_or(true),
            chunk: chunk(cx, &base, raw.chunk_size.as_deref(), CHUNK_MIN),
        }),
        PipelineKind::Lvm => {
            let thin = raw.thin.unwrap_or(false);
            let incremental = raw.incremental.unwrap_or(if thin {
                LvmIncremental::ThinDelta
            } else {
                LvmIncremental::Full
            });
            if incremental == LvmIncremental::ThinDelta && !thin {
                cx.err(
                    &base.key("incremental"),
                    "`thin-delta` compares two thin snapshots, and this volume is not thin",
                    Some("set `thin = true`, or `incremental = \"full\"`".into()),
                );
            }
            let min = if thin { THIN_CHUNK_MIN } else { CHUNK_MIN };
            PipelineSpec::Lvm(LvmSpec {
                reader,
                thin,
                incremental,
                chunk: chunk(cx, &base, raw.chunk_size.as_deref(), min),
            })
        }
        PipelineKind::External => external(cx, &base, raw, reader, file),
    }
}

fn chunk(cx: &mut Ctx, base: &KeyPath, text: Option<&str>, min: u64) -> u64 {
    let Some(text) = text else { return min };
    let path = base.key("chunk_size");
    let Some(bytes) = cx.size(&path, text) else {
        return min;
    };
    if !bytes.is_power_of_two() || !(min..=CHUNK_MAX).contains(&bytes) {
        cx.err(
            &path,
            format!(
                "`{path}` must be a power of two from {} to {}, found {}",
                units::format_size(min),
                units::format_size(CHUNK_MAX),
                units::format_size(bytes)
            ),
            None,
        );
        return min;
    }
    bytes
}

fn external(
    cx: &mut Ctx,
    base: &KeyPath,
    raw: RawPipeline,
    reader: bool,
    file: &Path,
) -> PipelineSpec {
    let dir = match &raw.dir {
        Some(d) if !d.trim().is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                file.parent().unwrap_or(Path::new(".")).join(p)
            }
        }
        Some(_) | None => {
            cx.err(
                base,
                "an external pipeline needs `dir`: the product's directory",
                Some("e.g. dir = \"../products/myproduct\" (relative to this file)".into()),
            );
            PathBuf::new()
        }
    };
    let duration = |cx: &mut Ctx, key: &str, text: &Option<String>, default: u64| match text {
        Some(t) => cx
            .duration(&base.key(key), t)
            .unwrap_or(Duration::from_secs(default)),
        None => Duration::from_secs(default),
    };
    let build_timeout = duration(cx, "build_timeout", &raw.build_timeout, 600);
    let step_timeout = duration(cx, "step_timeout", &raw.step_timeout, 60);
    let modules = raw.modules.clone().unwrap_or_default();
    for (i, m) in modules.iter().enumerate() {
        if m.starts_with('/') || m.split('/').any(|p| p == "..") || !m.ends_with(".ko") {
            cx.err(
                &base.key("modules").index(i),
                format!("`pipeline.modules[{i}]`: \"{m}\" is not a .ko path inside `dir`"),
                Some("a relative path in the product's directory, e.g. \"module/foo.ko\"".into()),
            );
        }
    }
    let scratch_disk = raw
        .scratch_disk
        .as_ref()
        .and_then(|t| cx.size(&base.key("scratch_disk"), t));
    if let Some(s) = scratch_disk {
        if s < (1 << 20) || !s.is_multiple_of(4096) {
            cx.err(
                &base.key("scratch_disk"),
                "`pipeline.scratch_disk` must be at least 1MiB, in 4KiB units",
                None,
            );
        }
    }
    let cow_file = match (&raw.cow_file, &raw.cow_file_max) {
        (Some(f), Some(max)) => {
            if f.is_empty() || f.starts_with('/') || f.split('/').any(|p| p == "..") {
                cx.err(
                    &base.key("cow_file"),
                    format!("`pipeline.cow_file`: \"{f}\" is not a path inside the volume"),
                    Some("a path from the mount point, e.g. \".product/cow\"".into()),
                );
            }
            cx.size(&base.key("cow_file_max"), max)
                .map(|m| (f.clone(), m))
        }
        (Some(_), None) => {
            cx.err(
                &base.key("cow_file"),
                "`pipeline.cow_file` needs `cow_file_max`: an exclusion is capped by a declared size",
                None,
            );
            None
        }
        (None, Some(_)) => {
            cx.err(
                &base.key("cow_file_max"),
                "`pipeline.cow_file_max` without `cow_file`",
                None,
            );
            None
        }
        (None, None) => None,
    };
    let c = raw.commands.unwrap_or_default();
    let at = base.key("commands");
    let text = |s: &Option<String>| s.clone().filter(|t| !t.trim().is_empty());
    let snapshot = match (
        text(&c.freeze),
        text(&c.setup),
        text(&c.thaw),
        text(&c.snapshot),
    ) {
        (None, None, None, Some(snapshot)) => SnapshotSteps::Announced { snapshot },
        (Some(freeze), Some(setup), Some(thaw), None) => SnapshotSteps::FreezeSetupThaw {
            freeze,
            setup,
            thaw,
        },
        (None, None, None, None) => {
            cx.err(
                &at,
                "the product needs a way to make its snapshot: `snapshot`, or `freeze`, `setup` and `thaw`",
                None,
            );
            SnapshotSteps::Announced {
                snapshot: String::new(),
            }
        }
        (_, _, _, Some(_)) => {
            cx.err(
                &at.key("snapshot"),
                "give `snapshot` alone, or `freeze`, `setup` and `thaw`, not both",
                None,
            );
            SnapshotSteps::Announced {
                snapshot: String::new(),
            }
        }
        (f, s, t, None) => {
            let missing: Vec<&str> = [("freeze", f), ("setup", s), ("thaw", t)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| n)
                .collect();
            cx.err(
                &at,
                format!(
                    "`freeze`, `setup` and `thaw` go together: `{}` is missing",
                    missing.join("` and `")
                ),
                None,
            );
            SnapshotSteps::Announced {
                snapshot: String::new(),
            }
        }
    };
    let snapshot = match (raw.instant.unwrap_or(InstantSource::Announced), snapshot) {
        (InstantSource::Oracle, SnapshotSteps::Announced { snapshot }) => {
            if cow_file.is_some() {
                cx.err(
                    &base.key("cow_file"),
                    "`pipeline.cow_file` cannot go with `instant = \"oracle\"`: the harness finds the COW file on the truth image taken at the instant, and a product judged at the oracle's cut has none",
                    Some("keep the product's scratch space off the volume (`scratch_disk`), or announce the instant".into()),
                );
            }
            SnapshotSteps::Unannounced { snapshot }
        }
        (InstantSource::Oracle, steps @ SnapshotSteps::FreezeSetupThaw { .. }) => {
            cx.err(
                &base.key("instant"),
                "`instant = \"oracle\"` is for a product whose one `snapshot` command freezes and snapshots on its own; with `freeze`, `setup` and `thaw` the harness takes its truth between `setup` and `thaw`",
                Some("give `snapshot` alone, or leave `instant` at \"announced\"".into()),
            );
            steps
        }
        (InstantSource::Oracle | InstantSource::Announced, steps) => steps,
    };
    let delivery = match (text(&c.stream), text(&c.copy)) {
        (Some(s), None) => Delivery::Stream(s),
        (None, Some(c)) => Delivery::Copy(c),
        (Some(_), Some(_)) => {
            cx.err(
                &at.key("copy"),
                "give `stream` (through the harness's channel) or `copy` (to a target disk), not both",
                None,
            );
            Delivery::Stream(String::new())
        }
        (None, None) => {
            cx.err(
                &at,
                "the product needs `stream` or `copy`: how its backup leaves the guest",
                None,
            );
            Delivery::Stream(String::new())
        }
    };
    let mut required = |name: &str, v: Option<String>| {
        v.unwrap_or_else(|| {
            cx.err(&at, format!("`pipeline.commands.{name}` is required"), None);
            String::new()
        })
    };
    let device = required("device", text(&c.device));
    let destroy = required("destroy", text(&c.destroy));
    PipelineSpec::External(Box::new(ExternalSpec {
        reader,
        dir,
        build: text(&raw.build),
        build_timeout,
        modules,
        step_timeout,
        scratch_disk,
        cow_file,
        prepare: text(&c.prepare),
        snapshot,
        device,
        delivery,
        changed: text(&c.changed),
        transition: text(&c.transition),
        destroy,
    }))
}

impl RawPipeline {
    /// The table `backup.pipeline = KIND` stands for.
    fn of_kind(kind: PipelineKind) -> RawPipeline {
        RawPipeline {
            kind,
            reader: None,
            persistent: None,
            chunk_size: None,
            thin: None,
            incremental: None,
            dir: None,
            build: None,
            build_timeout: None,
            modules: None,
            step_timeout: None,
            scratch_disk: None,
            cow_file: None,
            cow_file_max: None,
            instant: None,
            commands: None,
        }
    }

    /// Each key of the table and whether it is set.
    fn given(&self) -> [(&'static str, bool); 16] {
        [
            ("kind", true),
            ("reader", self.reader.is_some()),
            ("persistent", self.persistent.is_some()),
            ("chunk_size", self.chunk_size.is_some()),
            ("thin", self.thin.is_some()),
            ("incremental", self.incremental.is_some()),
            ("dir", self.dir.is_some()),
            ("build", self.build.is_some()),
            ("build_timeout", self.build_timeout.is_some()),
            ("modules", self.modules.is_some()),
            ("step_timeout", self.step_timeout.is_some()),
            ("scratch_disk", self.scratch_disk.is_some()),
            ("cow_file", self.cow_file.is_some()),
            ("cow_file_max", self.cow_file_max.is_some()),
            ("instant", self.instant.is_some()),
            ("commands", self.commands.is_some()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_given_list_is_the_key_table() {
        let raw = RawPipeline::of_kind(PipelineKind::Lvm);
        let given: Vec<&str> = raw.given().iter().map(|(n, _)| *n).collect();
        let table: Vec<&str> = PIPELINE_KEY_KINDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(given, table);
    }

    fn external(instant: &str, commands: &str) -> Result<PipelineSpec, String> {
        let text = format!(
            "name = \"x\"\ndescription = \"x\"\nstory = \"x\"\n\n[pipeline]\nkind = \"external\"\ndir = \"p\"\n{instant}\n\n[pipeline.commands]\n{commands}\ndevice = \"d\"\nstream = \"s\"\ndestroy = \"x\"\n\n[[volumes]]\nname = \"data\"\nsize = \"64MiB\"\n"
        );
        let host = crate::scenario::Host {
            images: None,
            free: None,
        };
        crate::scenario::parse_for(Path::new("x.toml"), &text, &host)
            .map(|s| s.pipeline)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_instant_key_chooses_the_oracle_only_when_asked() {
        let oracle = external("instant = \"oracle\"", "snapshot = \"snap\"").unwrap();
        assert!(oracle.at_cut());
        let PipelineSpec::External(e) = &oracle else {
            panic!("{oracle:?}")
        };
        assert_eq!(
            e.snapshot,
            SnapshotSteps::Unannounced {
                snapshot: "snap".into()
            }
        );
        // Without the key, a one-command snapshot must announce: never guessed.
        let announced = external("", "snapshot = \"snap\"").unwrap();
        assert!(!announced.at_cut());
        let explicit = external("instant = \"announced\"", "snapshot = \"snap\"").unwrap();
        assert_eq!(announced, explicit);
        let fst = external("", "freeze = \"f\"\nsetup = \"s\"\nthaw = \"t\"").unwrap();
        assert!(!fst.at_cut());
        let bad = external("instant = \"guess\"", "snapshot = \"snap\"").unwrap_err();
        assert!(bad.contains("guess"), "{bad}");
    }
}

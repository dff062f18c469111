//! The one table of every key a scenario file may hold: its type, default, meaning and an
//! example. It drives the unknown-key and type checks (with "allowed here" lists), the key
//! reference in docs/scenarios.md (generated from it, a test keeps the file in step), and
//! a test that it agrees with the serde structs in `raw.rs`. The fault kinds and their
//! parameters come from [`FaultKind`].

use super::raw::PipelineKind;
use crate::model::{BlockClass, FaultKind, Layer, Need, Outcome};

/// What a key's value must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// Free text.
    Str,
    /// An identifier: lowercase letters, digits, `-` (and `_` for module names).
    Name,
    Int,
    Bool,
    /// "512MiB".
    Size,
    /// "20s".
    Duration,
    /// "300MiB" or "50%".
    SizeOrPercent,
    /// "20MiB/s" or "100ops/s".
    Rate,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
    StrList,
    IntList,
    EnumList(&'static [&'static str]),
    Table,
    TableArray,
}

impl KeyType {
    /// How the type is written in the reference and in "expected ..." messages.
    pub fn describe(self) -> String {
        match self {
            KeyType::Str => "string".into(),
            KeyType::Name => "name".into(),
            KeyType::Int => "integer".into(),
            KeyType::Bool => "boolean".into(),
            KeyType::Size => "size".into(),
            KeyType::Duration => "duration".into(),
            KeyType::SizeOrPercent => "size or %".into(),
            KeyType::Rate => "rate".into(),
            KeyType::Enum(values) => values.join(" \\| "),
            KeyType::StrList => "list of strings".into(),
            KeyType::IntList => "list of integers".into(),
            KeyType::EnumList(_) => "list (values below)".into(),
            KeyType::Table => "table".into(),
            KeyType::TableArray => "array of tables".into(),
        }
    }
}

/// One key of the schema.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    /// Dotted path; `[]` marks an array of tables: `volumes[].size`.
    pub path: &'static str,
    pub ty: KeyType,
    /// `None` = required.
    pub default: Option<&'static str>,
    pub doc: &'static str,
    /// A TOML value for this key (not used for tables).
    pub example: &'static str,
}

impl KeyDoc {
    /// The last path component: the key as written in the file.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('.').next().unwrap_or(self.path)
    }

    /// The path of the table this key lives in ("" for the top level).
    pub fn parent(&self) -> &'static str {
        match self.path.rfind('.') {
            Some(at) => &self.path[..at],
            None => "",
        }
    }
}

const fn key(
    path: &'static str,
    ty: KeyType,
    default: Option<&'static str>,
    doc: &'static str,
    example: &'static str,
) -> KeyDoc {
    KeyDoc {
        path,
        ty,
        default,
        doc,
        example,
    }
}

pub const FLOPPY: &[&str] = &["none", "empty", "media"];
pub const FILESYSTEMS: &[&str] = &["ext2", "ext4", "xfs", "none"];
pub const WORKLOAD_KINDS: &[&str] = &[
    "overwrite",
    "append",
    "delete-rewrite",
    "fill-to-full",
    "metadata-churn",
];
pub const WHEN: &[&str] = &["before", "during", "between"];
pub const DISKS: &[&str] = &["witness", "qemu"];
pub const IO_SCHEDULES: &[&str] = &["off", "seeded"];
pub const END_HOW: &[&str] = &["to-incremental", "destroy"];
/// The names of every value of an enum with a const `ALL` and a const `name()`.
macro_rules! names {
    ($t:ty) => {{
        let mut out = [""; <$t>::ALL.len()];
        let mut i = 0;
        while i < out.len() {
            out[i] = <$t>::ALL[i].name();
            i += 1;
        }
        out
    }};
}

/// Every layer name, from [`Layer::ALL`].
pub const LAYERS: &[&str] = &names!(Layer);
/// Every pipeline kind, from [`PipelineKind::ALL`].
pub const PIPELINES: &[&str] = &names!(PipelineKind);
pub const LVM_INCREMENTALS: &[&str] = &["thin-delta", "full"];
pub const INSTANTS: &[&str] = &["announced", "oracle"];
pub const OPS: &[&str] = &["read", "write", "both"];
pub const FAULT_AT: &[&str] = &["freeze"];
pub const WHERE: &[&str] = &["anywhere", "fault-sites"];
pub const SKIPPED: &[&str] = &["floppy", "hang-disk"];
pub const EXPECTABLE_CLASSES: &[&str] = &[
    BlockClass::DataFromTheFuture.name(),
    BlockClass::CorruptSnapshot.name(),
    BlockClass::DataFromThePast.name(),
    BlockClass::MissingBlock.name(),
    BlockClass::TransportCorruption.name(),
    BlockClass::TargetCorruption.name(),
];
pub const EXPECTABLE_OUTCOMES: &[&str] = &[
    Outcome::FalseSuccess.name(),
    Outcome::FailedCleanly.name(),
    Outcome::GuestOops.name(),
    Outcome::GuestHang.name(),
    Outcome::VolumeVanished.name(),
];

/// Every fault kind name, in [`FaultKind::ALL`]'s order (for the `faults[].kind` key).
pub const FAULT_KIND_NAMES: &[&str] = &names!(FaultKind);

/// The fault parameters: every key of `faults[]` other than layer, kind and backup.
pub const FAULT_PARAMS: &[&str] = &[
    "every",
    "frame",
    "after_frame",
    "ms",
    "after_ms",
    "at_percent",
    "volume",
    "op",
    "block",
    "once",
    "at",
    "blocks",
    "after_requests",
    "max_ms",
    "land",
    "how",
];

use KeyType::*;

/// Every key of the scenario schema, in reference order.
pub const KEYS: &[KeyDoc] = &[
    key("name", Name, None, "Identifier of the scenario: lowercase letters, digits and `-`. Names the report directory.", "\"future-clean\""),
    key("description", Str, None, "What the scenario does, in a sentence or two.", "\"Heavy overwrites during a full backup of a 512 MiB ext4 volume.\""),
    key("story", Str, None, "The field story it stands for (see shared/field-stories.txt), in a few words.", "\"data from the future\""),
    key("images", StrList, Some("[\"debian-6.1\"]"), "Guest images (images/*.toml) the scenario runs on; the nightly runs every one of them.", "[\"debian-6.1\", \"debian-6.12\"]"),
    key("seed", Int, Some("1"), "The seed that drives workloads, faults and timing choices.", "7"),
    key("seeds", Int, Some("1"), "How many seeds the nightly runs: `seed`, `seed + 1`, ...", "5"),
    key("timeout", Duration, Some("\"10m\""), "Wall-clock limit of one run, from the guest's boot (building the image does not count); the watchdog ends the guest after it.", "\"15m\""),
    key("guest", Table, Some("(all defaults)"), "The virtual machine.", ""),
    key("guest.memory", Size, Some("\"512MiB\""), "Guest memory.", "\"1GiB\""),
    key("guest.cpus", Int, Some("1"), "Guest vCPUs (1 to 8).", "2"),
    key("guest.modules", StrList, Some("[]"), "Extra kernel modules to load at boot (dependencies are resolved from modules.dep).", "[\"dm-snapshot\"]"),
    key("guest.floppy", Enum(FLOPPY), Some("\"none\""), "A floppy controller with the floppy module loaded: `none`, `empty` (drive without media) or `media` (a 1.44 MB image in the drive).", "\"empty\""),
    key("guest.hang_disk", Bool, Some("false"), "Add a disk that never answers a read: a witness disk with a `hang` fault, armed once the guest is ready; the reads it holds are let go at each snapshot instant (so the tasks stuck on them do not read as a hung guest) and the next ones held again. Never backed up; discovery must skip it.", "true"),
    key("guest.disk", Enum(DISKS), Some("\"witness\""), "Who serves the volumes: `witness` (the witness disk, `bw-disk`: every request recorded in the run's history, the truth taken from its layers, disk faults, the seeded schedule, the history oracle) or `qemu` (QEMU's own block layer, QMP snapshots for the truth; kept for comparison).", "\"qemu\""),
    key("guest.io_schedule", Enum(IO_SCHEDULES), Some("\"off\""), "`seeded`: the witness disk holds every request for a delay drawn from the run's seed (at most `io_max_delay`), so requests in flight together complete in an order the seed decides and a race replays with the same seed.", "\"seeded\""),
    key("guest.io_max_delay", Duration, Some("\"2ms\" when seeded"), "The longest the seeded schedule holds a request (at most 1s).", "\"5ms\""),
    key("volumes", TableArray, None, "The disks, one per volume, created on the host with mkfs. At least one.", ""),
    key("volumes[].name", Name, None, "Identifier of the volume, unique in the scenario.", "\"data\""),
    key("volumes[].size", Size, None, "Size of the disk, a multiple of 4 KiB.", "\"512MiB\""),
    key("volumes[].fs", Enum(FILESYSTEMS), Some("\"ext4\""), "Filesystem made on the host: `ext2` (mounted by the guest's ext4 driver), `ext4`, `xfs` (at least 300 MiB) or `none` (raw device).", "\"ext2\""),
    key("volumes[].block_size", Int, Some("4096"), "Filesystem block size for ext2/ext4: 1024, 2048 or 4096.", "1024"),
    key("volumes[].mount", Str, Some("\"/mnt/<name>\""), "Mount point in the guest (an absolute path). Not for `fs = \"none\"`.", "\"/boot\""),
    key("volumes[].backup", Bool, Some("true"), "Whether the volume is backed up. At least one volume must be.", "false"),
    key("volumes[].fill", SizeOrPercent, Some("\"0%\""), "Initial fill before the first backup: files totalling this size, or this share of the volume.", "\"50%\""),
    key("workloads", TableArray, Some("[]"), "Seeded guest workloads (bw-workload). Each gets its own seed derived from the scenario's.", ""),
    key("workloads[].kind", Enum(WORKLOAD_KINDS), None, "`overwrite` (in place), `append`, `delete-rewrite` (freed space is reused), `fill-to-full` (until ENOSPC), `metadata-churn` (create, rename, unlink, chmod, truncate).", "\"overwrite\""),
    key("workloads[].volume", Name, Some("the only volume"), "The volume it writes to. Required when there is more than one volume.", "\"data\""),
    key("workloads[].stamped", Bool, Some("false"), "Every data block written carries its LBA, a write sequence number, a time and a checksum, so a leaked block names its write. Not for `metadata-churn`.", "true"),
    key("workloads[].rate", Rate, Some("unlimited"), "For a `during` workload, a size or a number of operations per share of the backup's progress (`\"1MiB per 4%\"`: 1 MiB more at the start of every 4% of the backup, which waits until the workload has written it), so the amount written and its order relative to the backup's reads do not depend on the machine's speed. For `before` and `between`, a size or operations per second. A `during` workload with a rate per second, or none, needs `wall_clock_reason`.", "\"1MiB per 4%\""),
    key("workloads[].wall_clock_reason", Str, Some("none"), "Why a `during` workload is paced by the wall clock (a rate per second, or no rate) instead of by the backup's progress: what it writes then depends on the machine's speed. Only for such workloads.", "\"a steady trickle for as long as the backup lasts, however long that is\""),
    key("workloads[].amount", Size, Some("unlimited"), "Stop after writing this much data.", "\"256MiB\""),
    key("workloads[].ops", Int, Some("unlimited"), "Stop after this many operations.", "5000"),
    key("workloads[].duration", Duration, Some("unlimited"), "Stop after this long.", "\"20s\""),
    key("workloads[].when", Enum(WHEN), Some("\"during\""), "`before` the first backup (runs to its end), `during` backups (started before the snapshot, stopped when the backup ends), or `between` backups (before each incremental, runs to its end). `before` and `between` need `amount`, `ops` or `duration`.", "\"between\""),
    key("workloads[].backups", IntList, Some("every backup `when` applies to"), "Which backups (1 = the full, 2 = the first incremental, ...) a `during` or `between` workload runs for.", "[2, 3]"),
    key("backup", Table, Some("(all defaults)"), "The backup plan: a full backup, then incrementals.", ""),
    key("backup.incrementals", Int, Some("0"), "How many incremental backups follow the full one.", "5"),
    key("backup.cow_size", SizeOrPercent, Some("\"10%\""), "Size of the COW store, a size or a share of the volume (at most 10 GiB): bwsnap's preallocated COW file, the dm-snapshot store disk, a classic LVM snapshot's COW volume, or the room a thin pool keeps for changes after the snapshot.", "\"4MiB\""),
    key("backup.discovery_timeout", Duration, Some("\"10s\""), "How long the agent's volume discovery may take.", "\"5s\""),
    key("backup.pipeline", Enum(PIPELINES), Some("\"reference\""), "The short form of `[pipeline] kind`, for a kind that needs no other key. Give the pipeline once: here or in `[pipeline]`.", "\"dm-snapshot\""),
    key("pipeline", Table, Some("the reference pipeline"), "The pipeline under test and its keys. Which keys a kind takes is listed below; any other is an error.", ""),
    key("pipeline.kind", Enum(PIPELINES), None, "`reference` (bwsnap, bw-agent, bw-target), `dm-snapshot` (the kernel's dm snapshot target, driven with dmsetup), `lvm` (LVM2 snapshots, classic or thin) or `external` (a vendor's product, driven by the commands in `[pipeline.commands]`; see docs/your-pipeline.md).", "\"dm-snapshot\""),
    key("pipeline.reader", Bool, Some("true"), "The harness's own reader records the snapshot and live points: it reads the snapshot device and the live device block by block during the backup and hashes them on the host. Without it only truth, transport and target are recorded.", "false"),
    key("pipeline.persistent", Bool, Some("true"), "The dm snapshot's exception store: persistent (`P`, survives a reboot) or transient (`N`). The store is a disk of its own, `backup.cow_size` large.", "false"),
    key("pipeline.chunk_size", Size, Some("`\"4KiB\"`; `\"64KiB\"` for a thin pool"), "The snapshot's chunk (copy-on-write unit): a power of two from 4KiB to 1MiB (64KiB to 1MiB for a thin pool).", "\"8KiB\""),
    key("pipeline.thin", Bool, Some("false"), "A thin volume in a thin pool, snapshotted with `lvcreate -s` without a size; otherwise a linear volume with a classic COW snapshot.", "true"),
    key("pipeline.incremental", Enum(LVM_INCREMENTALS), Some("`\"thin-delta\"` for a thin volume, else `\"full\"`"), "How an incremental backup finds its blocks: `thin-delta` (the blocks thin_delta says changed between the last snapshot and this one; thin only) or `full` (the whole snapshot again).", "\"full\""),
    key("pipeline.dir", Str, Some("(external: required)"), "The product's directory (relative to the scenario file, or absolute): its binaries, scripts and module sources. It is copied, built with `build`, and packed into the guest at /product with the libraries ldd finds for its programs.", "\"../products/dmwrap\""),
    key("pipeline.build", Str, Some("none"), "Host shell command run in the copy of `dir` before the guest boots, with BW_KERNEL_HEADERS (the image's kernel headers), BW_KERNEL_RELEASE and BW_PRODUCT set. A failure is a harness error with its output.", "\"make -C module KDIR=$BW_KERNEL_HEADERS\""),
    key("pipeline.build_timeout", Duration, Some("\"10m\""), "How long `build` may take.", "\"2m\""),
    key("pipeline.modules", StrList, Some("[]"), "Kernel modules the build made (paths in `dir`), loaded in the guest in this order before `prepare`.", "[\"module/bwx_linear.ko\"]"),
    key("pipeline.step_timeout", Duration, Some("\"60s\""), "How long each command other than `stream` and `copy` may take (those have the run's time).", "\"30s\""),
    key("pipeline.scratch_disk", Size, Some("none"), "A scratch disk of this size per volume for the product (e.g. its COW store), as BW_SCRATCH. Never backed up.", "\"64MiB\""),
    key("pipeline.cow_file", Str, Some("none"), "A file the product keeps on the volume (path from the mount point) whose blocks are don't-care in the backup: the harness finds it on the truth image itself and excludes its blocks, at most `cow_file_max`; the guest's FIEMAP view of it is compared, and a disagreement is a finding.", "\".dmwrap-cow\""),
    key("pipeline.cow_file_max", Size, Some("(with cow_file: required)"), "The most `cow_file` may occupy; blocks beyond it are judged like any other, never a wider exclusion.", "\"16MiB\""),
    key("pipeline.instant", Enum(INSTANTS), Some("\"announced\""), "Where the product's snapshot instant comes from. `announced`: between `setup` and `thaw`, or `bw-pipe instant` run by `snapshot` (a `snapshot` that ends without announcing is a harness error). `oracle`: the product freezes and snapshots on its own inside `snapshot` and cannot say when; the harness takes no truth at an instant and judges each backup at the history oracle's cut over the witness disk's write history. Needs `guest.disk = \"witness\"` and the one-command `snapshot`; `cow_file` cannot go with it (the COW file is found on a truth image, and there is none).", "\"oracle\""),
    key("pipeline.commands", Table, Some("(external: required)"), "The product's steps, each a shell command run in the guest (docs/your-pipeline.md has the contract of each).", ""),
    key("pipeline.commands.prepare", Str, Some("none"), "Once after boot, after `modules` are loaded: set the product up.", "\"/product/bin/setup\""),
    key("pipeline.commands.freeze", Str, Some("none"), "Freeze the volume (with `setup` and `thaw`; the harness takes its truth between `setup` and `thaw`).", "\"fsfreeze --freeze $BW_MOUNT\""),
    key("pipeline.commands.setup", Str, Some("none"), "Make the snapshot while the volume is frozen.", "\"/product/bin/snap create\""),
    key("pipeline.commands.thaw", Str, Some("none"), "Thaw the volume (always run after `freeze`).", "\"fsfreeze --unfreeze $BW_MOUNT\""),
    key("pipeline.commands.snapshot", Str, Some("none"), "Instead of freeze, setup and thaw: one command that freezes, snapshots and thaws on its own, and announces its instant with `bw-pipe instant` while frozen.", "\"/product/bin/snap --announce\""),
    key("pipeline.commands.device", Str, Some("(required)"), "Prints the snapshot device's path (its last line counts).", "\"echo /dev/mapper/dmwrap-$BW_VOLUME\""),
    key("pipeline.commands.stream", Str, Some("none"), "Writes the backup to the harness's channel $BW_CHANNEL: the raw image, or the extents format. Exit 0 claims success.", "\"dd if=$BW_SNAPSHOT of=$BW_CHANNEL bs=1M\""),
    key("pipeline.commands.copy", Str, Some("none"), "Instead of `stream`: writes the backup to the target disk $BW_TARGET (which holds the previous generation). Exit 0 claims success.", "\"dd if=$BW_SNAPSHOT of=$BW_TARGET bs=1M\""),
    key("pipeline.commands.changed", Str, Some("none (incrementals read everything)"), "For an incremental: prints the changed byte ranges since the last backup, `<offset> <length>` per line, or `none`; they are in $BW_CHANGED for `stream` and `copy`.", "\"/product/bin/changed\""),
    key("pipeline.commands.transition", Str, Some("none"), "After each backup, before `destroy`: e.g. switch to changed-block tracking.", "\"/product/bin/track\""),
    key("pipeline.commands.destroy", Str, Some("(required)"), "Remove the snapshot (after every backup, also a failed one).", "\"/product/bin/snap remove\""),
    key("faults", TableArray, Some("[]"), "Injected faults. The kinds and their parameters are listed below.", ""),
    key("faults[].layer", Enum(LAYERS), None, "Where the fault is injected.", "\"module\""),
    key("faults[].kind", Enum(FAULT_KIND_NAMES), None, "What is injected; must belong to `layer` (table below).", "\"cow-read-live\""),
    key("faults[].backup", Int, Some("1"), "The backup it is active in (1 = the full backup).", "2"),
    key("faults[].every", Int, Some("(per kind)"), "1 in `every` (at least 1).", "50"),
    key("faults[].frame", Int, Some("(per kind)"), "A block frame number, from 1, counted over the backup's stream.", "100"),
    key("faults[].after_frame", Int, Some("(per kind)"), "A block frame number after which the fault fires.", "2000"),
    key("faults[].ms", Int, Some("(per kind)"), "A delay in milliseconds.", "5"),
    key("faults[].after_ms", Int, Some("(per kind)"), "Milliseconds after the backup starts.", "1500"),
    key("faults[].at_percent", Int, Some("(per kind)"), "A share of the backup's blocks, 1 to 99.", "40"),
    key("faults[].volume", Name, Some("(per kind)"), "The volume whose disk the fault hits.", "\"boot\""),
    key("faults[].op", Enum(OPS), Some("\"read\""), "Which requests a disk fault hits: `read`, `write` (writes, discards, write-zeroes) or `both`.", "\"write\""),
    key("faults[].block", Int, Some("any block"), "The first 4 KiB block of the range a disk fault is limited to (a request matches when it touches the range).", "1024"),
    key("faults[].blocks", Int, Some("1"), "How many 4 KiB blocks from `block` the range holds.", "16"),
    key("faults[].once", Bool, Some("false"), "A disk fault fires on the first matching request only.", "true"),
    key("faults[].after_requests", Int, Some("0"), "A disk fault lets this many matching requests through before it fires (counted from the backup's start).", "100"),
    key("faults[].max_ms", Int, Some("(per kind)"), "The longest delay a `latency` fault adds, in milliseconds (1 to 30000).", "200"),
    key("faults[].land", Int, Some("1"), "The 4 KiB blocks of a `torn` write that land.", "2"),
    key("faults[].how", Enum(END_HOW), Some("\"to-incremental\""), "How `end-snapshot` ends the snapshot: bwsnap's TO_INCREMENTAL or DESTROY.", "\"destroy\""),
    key("faults[].at", Enum(FAULT_AT), Some("\"freeze\""), "When `remove-disk` fires: while the filesystems are frozen for the snapshot.", "\"freeze\""),
    key("expect", Table, Some("clean"), "What the run must find. The default is a clean run: every block ok or excluded, no run-level outcome.", ""),
    key("expect.classes", EnumList(EXPECTABLE_CLASSES), Some("[]"), "Block classes that must be found (each at least once); any other class fails the run.", "[\"data-from-the-future\"]"),
    key("expect.allow_clean", Bool, Some("false"), "A run in which the fault was recovered (no block diverged) passes too.", "true"),
    key("expect.outcomes", EnumList(EXPECTABLE_OUTCOMES), Some("[]"), "Run-level outcomes that must occur; any other outcome fails the run.", "[\"failed-cleanly\"]"),
    key("expect.allow_outcomes", EnumList(EXPECTABLE_OUTCOMES), Some("[]"), "Run-level outcomes that may occur without failing the run.", "[\"failed-cleanly\"]"),
    key("expect.at", Enum(WHERE), Some("`\"fault-sites\"` when there are faults and classes, else `\"anywhere\"`"), "`fault-sites`: every block of an expected class must be one where a fault was injected (the module's log, the proxy's record), and at least one must be found there.", "\"fault-sites\""),
    key("expect.named_writes", Bool, Some("false"), "Every data-from-the-future block of a file must name the stamped write it holds, and at least one must (needs a stamped workload; filesystem metadata such as the journal is exempt).", "true"),
    key("expect.fsck", Bool, Some("false"), "After the run, `e2fsck -fn` must be clean on every ext2/ext4 volume.", "true"),
    key("expect.remount", Bool, Some("false"), "After the run, the guest boots again from the same disks and every volume mounts with its files intact.", "true"),
    key("expect.skipped", EnumList(SKIPPED), Some("[]"), "Devices the agent's discovery must skip, giving a reason, within `backup.discovery_timeout`.", "[\"floppy\"]"),
];

use PipelineKind::{DmSnapshot, External, Lvm, Reference};

/// The pipeline kinds each key of `[pipeline]` belongs to; a key of another kind is an
/// error naming the kinds that take it.
pub const PIPELINE_KEY_KINDS: &[(&str, &[PipelineKind])] = &[
    ("kind", &[Reference, DmSnapshot, Lvm, External]),
    ("reader", &[DmSnapshot, Lvm, External]),
    ("persistent", &[DmSnapshot]),
    ("chunk_size", &[DmSnapshot, Lvm]),
    ("thin", &[Lvm]),
    ("incremental", &[Lvm]),
    ("dir", &[External]),
    ("build", &[External]),
    ("build_timeout", &[External]),
    ("modules", &[External]),
    ("step_timeout", &[External]),
    ("scratch_disk", &[External]),
    ("cow_file", &[External]),
    ("cow_file_max", &[External]),
    ("instant", &[External]),
    ("commands", &[External]),
];

/// The kinds a `[pipeline]` key (schema path) belongs to; None for other keys.
pub fn pipeline_kinds(path: &str) -> Option<&'static [PipelineKind]> {
    let name = path.strip_prefix("pipeline.")?;
    let top = name.split('.').next().unwrap_or(name);
    PIPELINE_KEY_KINDS
        .iter()
        .find(|(k, _)| *k == top)
        .map(|(_, kinds)| *kinds)
}

/// Looks a key up by its schema path (`volumes[].size`).
pub fn lookup(path: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|k| k.path == path)
}

/// The keys directly inside the table at `parent` ("" for the top level).
pub fn children(parent: &str) -> impl Iterator<Item = &'static KeyDoc> + '_ {
    KEYS.iter().filter(move |k| k.parent() == parent)
}

/// The key reference of docs/scenarios.md, generated from [`KEYS`] and [`FaultKind`].
pub fn reference_markdown() -> String {
    let mut out = String::new();
    let sections: &[(&str, &str)] = &[
        ("", "Top level"),
        ("guest", "`[guest]`"),
        ("volumes[]", "`[[volumes]]`"),
        ("workloads[]", "`[[workloads]]`"),
        ("backup", "`[backup]`"),
        ("pipeline", "`[pipeline]`"),
        ("pipeline.commands", "`[pipeline.commands]`"),
        ("faults[]", "`[[faults]]`"),
        ("expect", "`[expect]`"),
    ];
    for (parent, title) in sections {
        out.push_str(&format!("### {title}\n\n"));
        out.push_str("| key | type | default | meaning | example |\n|---|---|---|---|---|\n");
        for k in children(parent) {
            let default = match k.default {
                None => "**required**".to_string(),
                Some(d)
                    if d.starts_with('"')
                        || d.starts_with('[')
                        || d.parse::<f64>().is_ok()
                        || d == "true"
                        || d == "false" =>
                {
                    format!("`{d}`")
                }
                Some(d) => d.to_string(),
            };
            let example = if k.example.is_empty() {
                String::new()
            } else {
                format!("`{} = {}`", k.name(), k.example)
            };
            let kinds = match pipeline_kinds(k.path) {
                Some(kinds) if kinds.len() < PipelineKind::ALL.len() => format!(
                    "({}) ",
                    kinds
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(_) | None => String::new(),
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {kinds}{} | {} |\n",
                k.path,
                k.ty.describe(),
                default,
                k.doc,
                example
            ));
            if let KeyType::EnumList(values) = k.ty {
                out.push_str(&format!(
                    "| | | | values: {} | |\n",
                    values
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        out.push('\n');
    }
    out.push_str(
        "### Fault kinds\n\n| layer | kind | parameters | what it does |\n|---|---|---|---|\n",
    );
    for f in FaultKind::ALL {
        let either: Vec<String> = f
            .params()
            .iter()
            .filter(|(_, need)| *need == Need::Either)
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        let mut params: Vec<String> = f
            .params()
            .iter()
            .filter_map(|(name, need)| match need {
                Need::Required => Some(format!("`{name}`")),
                Need::Optional => Some(format!("`{name}` (optional)")),
                Need::Either => None,
            })
            .collect();
        if !either.is_empty() {
            params.insert(0, format!("exactly one of {}", either.join(", ")));
        }
        let params = if params.is_empty() {
            "none".to_string()
        } else {
            params.join(", ")
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            f.layer().name(),
            f.name(),
            params,
            f.doc()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_kind_is_named_once_and_its_params_are_keys() {
        let names: Vec<&str> = FaultKind::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names, FAULT_KIND_NAMES);
        for f in FaultKind::ALL {
            assert!(LAYERS.contains(&f.layer().name()), "{}", f.name());
            for (p, _) in f.params() {
                assert!(
                    FAULT_PARAMS.contains(p),
                    "{} uses unknown param {p}",
                    f.name()
                );
                assert!(
                    lookup(&format!("faults[].{p}")).is_some(),
                    "{p} is not a key"
                );
            }
        }
        for p in FAULT_PARAMS {
            assert!(lookup(&format!("faults[].{p}")).is_some(), "{p}");
        }
    }

    #[test]
    fn every_pipeline_key_names_its_kinds() {
        for k in children("pipeline") {
            assert!(pipeline_kinds(k.path).is_some(), "{}", k.path);
        }
        for (name, _) in PIPELINE_KEY_KINDS {
            assert!(lookup(&format!("pipeline.{name}")).is_some(), "{name}");
        }
    }

    #[test]
    fn every_parent_is_a_table_key() {
        for k in KEYS {
            let parent = k.parent();
            if parent.is_empty() {
                continue;
            }
            let table =
                lookup(parent.trim_end_matches("[]")).unwrap_or_else(|| panic!("{}", k.path));
            let want = if parent.ends_with("[]") {
                KeyType::TableArray
            } else {
                KeyType::Table
            };
            assert_eq!(table.ty, want, "{}", k.path);
        }
    }
}

//! The pure model of bwsnap's documented semantics (kmod/README.md, bwsnap_abi.h,
//! docs/architecture.md): which call succeeds or fails with which errno, what the
//! snapshot device must read, what the changed-block map must hold, what INFO says.
//!
//! Two layers. [`Control`] is the state machine of the minors alone (no data); the
//! generator steers with it and the full [`Model`] uses it to predict every call's
//! result. [`Model`] adds the data: the arena's content per 512-byte sector, the
//! point-in-time image each snapshot must show, COW slot use and overflow, and the
//! tracking and period maps. It learns from replies only what the semantics leave to
//! the system (how many slots a COW file got, where its extents lie, which
//! filesystem blocks changed between two instants), never what it predicts.

use std::collections::BTreeSet;

use bw_guest::bwsnap_exec::pattern;
use bw_guest::bwsnap_exec::protocol::{Content, Extent, MinorInfo, Reply, Stage};

use super::ops::{CowSizeChoice, Op, Span};

/// Minors the sequences use; a third (`BAD_MINOR`) is out of range.
pub const MINORS: u32 = 2;
pub const BAD_MINOR: u32 = 32;
pub const BLOCK: u64 = 4096;
pub const SPB: u64 = BLOCK / 512;

const EINVAL: i32 = libc::EINVAL;
const ENOENT: i32 = libc::ENOENT;
const EBUSY: i32 = libc::EBUSY;
const EEXIST: i32 = libc::EEXIST;
const EISDIR: i32 = libc::EISDIR;
const EXDEV: i32 = libc::EXDEV;
const ENOSPC: i32 = libc::ENOSPC;
const EIO: i32 = libc::EIO;

/// A minor's state (`enum bwsnap_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MState {
    None,
    Armed,
    Snapshot,
    Incremental,
}

impl MState {
    pub fn abi(self) -> u32 {
        match self {
            MState::None => 0,
            MState::Armed => 1,
            MState::Snapshot => 2,
            MState::Incremental => 3,
        }
    }
}

/// What a call must return: success, or a failure at `stage` with one of `errnos`
/// (several when more than one documented cause applies and the order of the checks
/// is not part of the contract).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail(Stage, BTreeSet<i32>),
}

fn fail(stage: Stage, errnos: &[i32]) -> Outcome {
    Outcome::Fail(stage, errnos.iter().copied().collect())
}

/// The minors' state machine: state and volume of each minor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub minors: Vec<(MState, usize)>,
    /// The held snapshot descriptor: its minor, and whether its snapshot still lives
    /// (it dies at TO_INCREMENTAL or DESTROY of that minor).
    pub held: Option<(u32, bool)>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            minors: vec![(MState::None, 0); MINORS as usize],
            held: None,
        }
    }
}

/// Errnos of the COW file arguments (size and path) of SETUP / TO_SNAPSHOT.
fn cow_errnos(size: CowSizeChoice, path: bw_guest::bwsnap_exec::protocol::CowPath) -> Vec<i32> {
    use bw_guest::bwsnap_exec::protocol::CowPath;
    let mut e = Vec::new();
    match size {
        CowSizeChoice::Zero | CowSizeChoice::Unaligned => e.push(EINVAL),
        CowSizeChoice::Huge => e.push(ENOSPC),
        CowSizeChoice::Default | CowSizeChoice::Slots(_) => {}
    }
    match path {
        CowPath::Fresh => {}
        CowPath::Exists => e.push(EEXIST),
        CowPath::Dir => e.push(EISDIR),
        CowPath::OtherVolume => e.push(EXDEV),
        CowPath::MissingDir => e.push(ENOENT),
    }
    // An invalid size is refused before the file is looked at; ENOSPC comes only
    // from creating it, so with a bad path it may or may not be reached.
    if e.contains(&EINVAL) {
        return vec![EINVAL];
    }
    e
}

impl Control {
    pub fn state(&self, minor: u32) -> MState {
        self.minors
            .get(minor as usize)
            .map_or(MState::None, |m| m.0)
    }

    /// The minor tracking `vol`, if any.
    pub fn tracker(&self, vol: usize) -> Option<u32> {
        (0..MINORS).find(|&m| {
            let (s, v) = self.minors[m as usize];
            s != MState::None && v == vol
        })
    }

    pub fn any_in_use(&self) -> bool {
        self.minors.iter().any(|m| m.0 != MState::None)
    }

    /// What `op` returns in this state.
    pub fn outcome(&self, op: &Op) -> Outcome {
        let ioctl = Stage::Ioctl;
        // ENOENT for an unused minor, EINVAL for one out of range.
        let lookup = |minor: u32| -> Option<Outcome> {
            if minor >= BAD_MINOR {
                Some(fail(ioctl, &[EINVAL]))
            } else if self.state(minor) == MState::None {
                Some(fail(ioctl, &[ENOENT]))
            } else {
                None
            }
        };
        let in_state = |minor: u32, want: MState| -> Outcome {
            if let Some(o) = lookup(minor) {
                return o;
            }
            if self.state(minor) == want {
                Outcome::Ok
            } else {
                fail(ioctl, &[EINVAL])
            }
        };
        match *op {
            Op::Setup {
                minor,
                vol,
                cow,
                size,
            } => {
                if minor >= BAD_MINOR {
                    return fail(ioctl, &[EINVAL]);
                }
                if self.state(minor) != MState::None {
                    return fail(ioctl, &[EBUSY]);
                }
                if self.tracker(vol).is_some() {
                    return fail(ioctl, &[EBUSY]);
                }
                let e = cow_errnos(size, cow);
                if e.is_empty() {
                    Outcome::Ok
                } else {
                    fail(ioctl, &e)
                }
            }
            Op::Start { minor } => in_state(minor, MState::Armed),
            Op::ToIncremental { minor } => in_state(minor, MState::Snapshot),
            Op::ToSnapshot { minor, cow, size } => match in_state(minor, MState::Incremental) {
                Outcome::Ok => {
                    let e = cow_errnos(size, cow);
                    if e.is_empty() {
                        Outcome::Ok
                    } else {
                        fail(ioctl, &e)
                    }
                }
                o => o,
            },
            Op::Destroy { minor } => lookup(minor).unwrap_or(Outcome::Ok),
            Op::Map { minor, start_block } => match lookup(minor) {
                Some(o) if start_block % 64 != 0 => match o {
                    Outcome::Fail(s, mut e) => {
                        e.insert(EINVAL);
                        Outcome::Fail(s, e)
                    }
                    Outcome::Ok => Outcome::Ok,
                },
                Some(o) => o,
                None if start_block % 64 != 0 => fail(ioctl, &[EINVAL]),
                None => Outcome::Ok,
            },
            Op::Read { minor, .. } | Op::Hold { minor } => {
                if self.state(minor) == MState::Snapshot && minor < BAD_MINOR {
                    Outcome::Ok
                } else {
                    // The snapshot device exists from START to TO_INCREMENTAL/DESTROY.
                    fail(Stage::Open, &[ENOENT])
                }
            }
            Op::Write { .. } | Op::Zero { .. } => Outcome::Ok,
            Op::ReadHeld { .. } => match self.held {
                None => fail(Stage::Open, &[libc::EBADF]),
                Some((_, true)) => Outcome::Ok,
                // The snapshot behind the descriptor is gone: reads fail, never
                // return data.
                Some((_, false)) => fail(Stage::Read, &[EIO, libc::ENXIO, libc::ENODEV]),
            },
            Op::Release => Outcome::Ok,
            Op::Reload => {
                if self.any_in_use() || self.held.is_some() {
                    // Each minor pins the module, and so does an open snapshot device.
                    fail(Stage::Unload, &[libc::EWOULDBLOCK])
                } else {
                    Outcome::Ok
                }
            }
        }
    }

    /// The state after `op` returned `outcome`.
    pub fn apply(&mut self, op: &Op, outcome: &Outcome) {
        if *outcome != Outcome::Ok {
            return;
        }
        let mut set = |minor: u32, s: MState| {
            if let Some(m) = self.minors.get_mut(minor as usize) {
                m.0 = s;
            }
        };
        if let Op::ToIncremental { minor } | Op::Destroy { minor } = *op {
            if let Some((held, alive)) = self.held.as_mut() {
                if *held == minor {
                    *alive = false;
                }
            }
        }
        match *op {
            Op::Hold { minor } => self.held = Some((minor, true)),
            Op::Release => self.held = None,
            Op::Setup { minor, vol, .. } => {
                if let Some(m) = self.minors.get_mut(minor as usize) {
                    *m = (MState::Armed, vol);
                }
            }
            Op::Start { minor } => set(minor, MState::Snapshot),
            Op::ToIncremental { minor } => set(minor, MState::Incremental),
            Op::ToSnapshot { minor, .. } => set(minor, MState::Armed),
            Op::Destroy { minor } => set(minor, MState::None),
            Op::Write { .. }
            | Op::Zero { .. }
            | Op::Read { .. }
            | Op::Map { .. }
            | Op::ReadHeld { .. }
            | Op::Reload => {}
        }
    }
}

/// A volume's layout as the executor reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// 4 KiB blocks of the device.
    pub blocks: u64,
    /// First block of the arena (the arena runs to the end of the device).
    pub arena_block: u64,
}

impl Geometry {
    pub fn arena_sectors(&self) -> u64 {
        (self.blocks - self.arena_block) * SPB
    }

    /// First device sector of the arena.
    pub fn arena_sector(&self) -> u64 {
        self.arena_block * SPB
    }
}

/// The COW file of a minor in ARMED or SNAPSHOT.
#[derive(Clone, Debug, Default)]
struct Cow {
    /// Slots, learned from INFO's cow_size right after SETUP / TO_SNAPSHOT.
    slots: u64,
    extents: Vec<Extent>,
}

impl Cow {
    /// Device blocks holding any byte of the COW file.
    fn blocks(&self) -> BTreeSet<u64> {
        self.extents
            .iter()
            .flat_map(|e| e.physical / BLOCK..(e.physical + e.length).div_ceil(BLOCK))
            .collect()
    }

    /// Device blocks holding the first `n` slots: 4 KiB each, cut from the extents in
    /// order, never straddling one (kmod/README.md, "The COW store").
    fn slot_blocks(&self, n: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        let mut left = n;
        for e in &self.extents {
            let mut at = e.physical;
            while left > 0 && at + BLOCK <= e.physical + e.length {
                // A slot at a 1 KiB offset spans two blocks.
                let last_byte = at + BLOCK - 1;
                out.insert(at / BLOCK);
                out.insert(last_byte / BLOCK);
                at += BLOCK;
                left -= 1;
            }
        }
        out
    }
}

/// The snapshot of a minor in SNAPSHOT.
#[derive(Clone, Debug)]
struct Snap {
    /// The arena at START, per sector: what every read must return.
    image: Vec<Content>,
    /// Device blocks that got a COW copy (each takes a slot).
    copied: BTreeSet<u64>,
    /// Slots ran out: every read fails EIO from then on.
    invalid: bool,
}

/// One minor's data-side state.
#[derive(Clone, Debug, Default)]
struct Minor {
    seq: u64,
    cow: Option<Cow>,
    snap: Option<Snap>,
    /// Arena blocks written since the last START (since SETUP before the first).
    tracking: BTreeSet<u64>,
    /// Blocks outside the arena that must be in the next period map.
    tracking_must: BTreeSet<u64>,
    /// The period map frozen at START: arena blocks, exactly.
    period: BTreeSet<u64>,
    /// Blocks outside the arena the period map must hold.
    period_must: BTreeSet<u64>,
    /// COW file blocks at START: their content is the filesystem's business.
    cow_at_start: BTreeSet<u64>,
    /// Slots handed out (known while the snapshot is valid).
    slots_used: u64,
}

/// A failed check: what the module did against what the model says.
pub type Mismatch = String;

/// The whole model.
#[derive(Clone, Debug)]
pub struct Model {
    pub geo: Geometry,
    pub ctl: Control,
    /// The live arena of each volume, per sector.
    arena: Vec<Vec<Content>>,
    minors: Vec<Minor>,
    /// Popcount of the last map read in this step (checked against INFO).
    last_map_count: Option<(u32, u64)>,
}

/// Arena-relative sector range → device sectors.
pub fn span_sectors(geo: &Geometry, span: &Span) -> (u64, u64) {
    match *span {
        Span::Arena { sector, sectors } => (geo.arena_sector() + sector, sectors),
        Span::Whole => (0, geo.blocks * SPB),
    }
}

/// Device blocks touched by device sectors `[sector, sector + sectors)`.
fn blocks_of(sector: u64, sectors: u64) -> std::ops::Range<u64> {
    sector / SPB..(sector + sectors).div_ceil(SPB)
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

pub fn describe_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "success".into(),
        Outcome::Fail(stage, e) => format!(
            "{stage:?} fails with {}",
            e.iter()
                .map(|&e| errno_name(e))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}

fn describe_reply(r: &Reply) -> String {
    match r {
        Reply::Err {
            stage,
            errno,
            cow_left,
        } => format!(
            "{stage:?} failed with {}{}",
            errno_name(*errno),
            match cow_left {
                Some(true) => " (and left the COW file behind)",
                _ => "",
            }
        ),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

/// What the content at a sector says, for a person.
fn show(c: &Content, base: u64) -> String {
    match *c {
        Content::Tag(t) if t & !0xffff_ffff == base & !0xffff_ffff => {
            if t & 0xffff_ffff == 0 {
                "initial content".into()
            } else {
                format!("write of step {}", t & 0xffff_ffff)
            }
        }
        Content::Tag(t) => format!("stamp {t:#x} of another sequence"),
        Content::Zero => "zeros".into(),
        Content::Moved { tag, sector } => {
            format!("stamp {tag:#x} written for sector {sector} (misplaced)")
        }
        Content::Foreign(h) => format!("foreign data (hash {h:#x})"),
    }
}

impl Model {
    /// Every minor unused, every arena sector holding `tag`.
    pub fn new(geo: Geometry, vols: usize, tag: u64) -> Model {
        Model {
            geo,
            ctl: Control::default(),
            arena: vec![vec![Content::Tag(tag); geo.arena_sectors() as usize]; vols],
            minors: vec![Minor::default(); MINORS as usize],
            last_map_count: None,
        }
    }

    /// Minors in SNAPSHOT whose snapshot is still valid.
    pub fn live_snapshots(&self) -> Vec<u32> {
        (0..MINORS)
            .filter(|&m| {
                self.ctl.state(m) == MState::Snapshot
                    && self.minors[m as usize]
                        .snap
                        .as_ref()
                        .is_some_and(|s| !s.invalid)
            })
            .collect()
    }

    /// Minors in SNAPSHOT (valid or not).
    pub fn snapshots(&self) -> Vec<u32> {
        (0..MINORS)
            .filter(|&m| self.ctl.state(m) == MState::Snapshot)
            .collect()
    }

    /// Checks `reply` to `op` (step `step`, tags based on `base`) and moves on.
    pub fn step(&mut self, op: &Op, reply: &Reply, tag: u64, base: u64) -> Result<(), Mismatch> {
        self.last_map_count = None;
        let outcome = self.ctl.outcome(op);
        // The result class first: success or the predicted failure.
        match (&outcome, reply) {
            (
                Outcome::Fail(stage, errnos),
                Reply::Err {
                    stage: got_stage,
                    errno,
                    cow_left,
                },
            ) => {
                if stage != got_stage || !errnos.contains(errno) {
                    return Err(format!(
                        "`{op}`: the model says {}, the module: {}",
                        describe_outcome(&outcome),
                        describe_reply(reply)
                    ));
                }
                if *cow_left == Some(true) {
                    return Err(format!(
                        "`{op}` failed as it should, but left its COW file on the filesystem"
                    ));
                }
                return Ok(());
            }
            // A read of a snapshot may fail (EIO after overflow): check_read judges.
            (Outcome::Ok, Reply::Err { .. })
                if matches!(op, Op::Read { .. } | Op::ReadHeld { .. }) => {}
            (Outcome::Fail(..), _) | (Outcome::Ok, Reply::Err { .. }) => {
                return Err(format!(
                    "`{op}`: the model says {}, the module: {}",
                    describe_outcome(&outcome),
                    describe_reply(reply)
                ));
            }
            (Outcome::Ok, _) => {}
        }
        match (op, reply) {
            (Op::Setup { minor, .. }, Reply::Armed { extents })
            | (Op::ToSnapshot { minor, .. }, Reply::Armed { extents }) => {
                let first = matches!(op, Op::Setup { .. });
                let m = &mut self.minors[*minor as usize];
                if first {
                    *m = Minor::default();
                }
                // The period map reads as zeros until the next START.
                m.period.clear();
                m.period_must.clear();
                m.cow = Some(Cow {
                    slots: 0,
                    extents: extents.clone(),
                });
                self.ctl.apply(op, &outcome);
                Ok(())
            }
            (Op::Start { minor }, Reply::Started { changed }) => {
                let vol = self.ctl.minors[*minor as usize].1;
                let image = self.arena[vol].clone();
                let m = &mut self.minors[*minor as usize];
                let cow_blocks = m.cow.as_ref().map(Cow::blocks).unwrap_or_default();
                m.period = std::mem::take(&mut m.tracking);
                m.period_must = std::mem::take(&mut m.tracking_must);
                if let Some(changed) = changed {
                    // Every block that changed between two instants is in the map
                    // (the COW file's own blocks are the filesystem's business).
                    m.period_must
                        .extend(changed.iter().filter(|b| !cow_blocks.contains(b)));
                }
                m.cow_at_start = cow_blocks;
                m.seq += 1;
                m.slots_used = 0;
                m.snap = Some(Snap {
                    image,
                    copied: BTreeSet::new(),
                    invalid: false,
                });
                self.ctl.apply(op, &outcome);
                Ok(())
            }
            (Op::ToIncremental { minor }, Reply::Ok) => {
                let m = &mut self.minors[*minor as usize];
                // Blocks holding a slot the module handed out were written behind the
                // filesystem's back: the next incremental must resend them.
                if let (Some(cow), Some(snap)) = (&m.cow, &m.snap) {
                    let used = if snap.invalid {
                        cow.slots
                    } else {
                        m.slots_used
                    };
                    m.tracking_must.extend(cow.slot_blocks(used));
                }
                m.cow = None;
                m.snap = None;
                self.ctl.apply(op, &outcome);
                Ok(())
            }
            (Op::Destroy { minor }, Reply::Ok) => {
                self.minors[*minor as usize] = Minor::default();
                self.ctl.apply(op, &outcome);
                Ok(())
            }
            (Op::Reload | Op::Release, Reply::Ok) => {
                self.ctl.apply(op, &outcome);
                Ok(())
            }
            (Op::Hold { .. }, Reply::Ok) => {
                self.ctl.apply(op, &outcome);
                Ok(())
            }
            (Op::ReadHeld { span }, reply) => {
                let (sector, sectors) = span_sectors(&self.geo, span);
                let (minor, _) = self.ctl.held.expect("a live held descriptor");
                self.check_read(minor, sector, sectors, reply, base)
                    .map_err(|e| format!("`{op}` (minor {minor}): {e}"))
            }
            (
                Op::Write {
                    vol,
                    sector,
                    sectors,
                },
                Reply::Ok,
            ) => {
                self.write(*vol, *sector, *sectors, Content::Tag(tag));
                Ok(())
            }
            (
                Op::Zero {
                    vol,
                    sector,
                    sectors,
                },
                Reply::Ok,
            ) => {
                self.write(*vol, *sector, *sectors, Content::Zero);
                Ok(())
            }
            (Op::Read { minor, span }, reply) => {
                let (sector, sectors) = span_sectors(&self.geo, span);
                self.check_read(*minor, sector, sectors, reply, base)
                    .map_err(|e| format!("`{op}`: {e}"))
            }
            (Op::Map { minor, .. }, Reply::Map { nr_blocks, words }) => self
                .check_map(*minor, *nr_blocks, words)
                .map_err(|e| format!("`{op}`: {e}")),
            (op, reply) => Err(format!(
                "`{op}`: the executor answered {}",
                describe_reply(reply)
            )),
        }
    }

    /// The live effect of a write of `content` to arena sectors of `vol`: tracking,
    /// copy-on-write, overflow.
    fn write(&mut self, vol: usize, sector: u64, sectors: u64, content: Content) {
        let first = self.geo.arena_sector() + sector;
        let blocks = blocks_of(first, sectors);
        if let Some(minor) = self.ctl.tracker(vol) {
            let state = self.ctl.state(minor);
            let m = &mut self.minors[minor as usize];
            m.tracking.extend(blocks.clone());
            if state == MState::Snapshot {
                let slots = m.cow.as_ref().map_or(0, |c| c.slots);
                if let Some(snap) = m.snap.as_mut() {
                    for b in blocks {
                        if snap.invalid || snap.copied.contains(&b) {
                            continue;
                        }
                        if (snap.copied.len() as u64) < slots {
                            snap.copied.insert(b);
                            m.slots_used += 1;
                        } else {
                            // Slots ran out: the snapshot is invalidated, the write
                            // goes on uncopied.
                            snap.invalid = true;
                        }
                    }
                }
            }
        }
        let arena = &mut self.arena[vol];
        for s in sector..sector + sectors {
            arena[s as usize] = content;
        }
    }

    /// A read of device sectors `[sector, sector + sectors)` of `/dev/bwsnap<minor>`.
    fn check_read(
        &self,
        minor: u32,
        sector: u64,
        sectors: u64,
        reply: &Reply,
        base: u64,
    ) -> Result<(), Mismatch> {
        let m = &self.minors[minor as usize];
        let snap = m.snap.as_ref().expect("a minor in SNAPSHOT has a snapshot");
        if snap.invalid {
            // After overflow every read fails, never live data.
            return match reply {
                Reply::Err {
                    stage: Stage::Read,
                    errno: EIO,
                    ..
                } => Ok(()),
                other => Err(format!(
                    "the snapshot overflowed its COW file, so the read must fail with EIO; the module: {}",
                    describe_reply(other)
                )),
            };
        }
        let Reply::Data {
            first_sector,
            runs,
            differing,
        } = reply
        else {
            return Err(format!(
                "the read must succeed; the module: {}",
                describe_reply(reply)
            ));
        };
        let arena0 = self.geo.arena_sector();
        let want_first = sector.max(arena0);
        if *first_sector != want_first {
            return Err(format!(
                "the executor returned data from sector {first_sector}, asked from {want_first}"
            ));
        }
        let got = pattern::expand(runs);
        let end = sector + sectors;
        let want_len = end.saturating_sub(want_first);
        if got.len() as u64 != want_len {
            return Err(format!(
                "{} arena sectors came back, {want_len} were read",
                got.len()
            ));
        }
        let mut bad = Vec::new();
        for (i, c) in got.iter().enumerate() {
            let dev_sector = want_first + i as u64;
            let want = snap.image[(dev_sector - arena0) as usize];
            if *c != want {
                bad.push((dev_sector, want, *c));
            }
        }
        if let Some((s, want, got_c)) = bad.first() {
            let vol = self.ctl.minors[minor as usize].1;
            let live = self.arena[vol][(s - arena0) as usize];
            let why = if *got_c == live && live != *want {
                " (the live data written after START: data from the future)"
            } else {
                ""
            };
            return Err(format!(
                "{} arena sectors differ from the point-in-time image; first: sector {s} (block {}) \
                 should hold {} and holds {}{why}",
                bad.len(),
                s / SPB,
                show(want, base),
                show(got_c, base)
            ));
        }
        if sector < arena0 {
            let Some(differing) = differing else {
                return Err("the executor has no copy of the origin at START".into());
            };
            let bad: Vec<u64> = differing
                .iter()
                .copied()
                .filter(|b| !m.cow_at_start.contains(b))
                .collect();
            if !bad.is_empty() {
                return Err(format!(
                    "{} filesystem blocks differ from the origin at START (COW file excluded): {:?}",
                    bad.len(),
                    &bad[..bad.len().min(20)]
                ));
            }
        }
        Ok(())
    }

    fn check_map(&mut self, minor: u32, nr_blocks: u64, words: &[u64]) -> Result<(), Mismatch> {
        if nr_blocks != self.geo.blocks {
            return Err(format!(
                "the map covers {nr_blocks} blocks, the device has {}",
                self.geo.blocks
            ));
        }
        let set: BTreeSet<u64> = (0..nr_blocks)
            .filter(|b| words[(b / 64) as usize] & (1 << (b % 64)) != 0)
            .collect();
        self.last_map_count = Some((minor, set.len() as u64));
        let m = &self.minors[minor as usize];
        if self.ctl.state(minor) == MState::Armed {
            return if set.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "between SETUP/TO_SNAPSHOT and START the period map reads as zeros; it has {} blocks: {:?}",
                    set.len(),
                    set.iter().take(20).collect::<Vec<_>>()
                ))
            };
        }
        let arena: BTreeSet<u64> = set
            .iter()
            .copied()
            .filter(|&b| b >= self.geo.arena_block)
            .collect();
        let missing: Vec<u64> = m.period.difference(&arena).copied().collect();
        let extra: Vec<u64> = arena.difference(&m.period).copied().collect();
        let lost: Vec<u64> = m.period_must.difference(&set).copied().collect();
        if missing.is_empty() && extra.is_empty() && lost.is_empty() {
            return Ok(());
        }
        let head = |v: &[u64]| format!("{:?}", &v[..v.len().min(16)]);
        Err(format!(
            "the period map is wrong: {} arena blocks written in the period are missing {}, \
             {} arena blocks not written are set {}, {} other blocks that changed (or held \
             COW slots) are missing {}",
            missing.len(),
            head(&missing),
            extra.len(),
            head(&extra),
            lost.len(),
            head(&lost)
        ))
    }

    /// Checks INFO of every minor against the model; learns a new COW file's slots.
    pub fn check_info(&mut self, infos: &[MinorInfo]) -> Result<(), Mismatch> {
        for info in infos {
            let minor = info.minor;
            let state = self.ctl.state(minor);
            let m = &mut self.minors[minor as usize];
            let mut bad = Vec::new();
            if info.state != state.abi() {
                bad.push(format!("state {} (model: {state:?})", info.state));
            }
            if state != MState::None {
                let size = self.geo.blocks * BLOCK;
                if info.dev_size != size {
                    bad.push(format!("dev_size {} (device: {size})", info.dev_size));
                }
                if info.seq != m.seq {
                    bad.push(format!("seq {} (model: {})", info.seq, m.seq));
                }
            }
            match (state, m.cow.as_mut()) {
                (MState::Armed, Some(cow)) => {
                    if info.cow_size == 0 || info.cow_size % BLOCK != 0 {
                        bad.push(format!("cow_size {} in ARMED", info.cow_size));
                    }
                    cow.slots = info.cow_size / BLOCK;
                    if info.cow_used != 0 {
                        bad.push(format!("cow_used {} before START", info.cow_used));
                    }
                }
                (MState::Snapshot, Some(cow)) => {
                    if info.cow_size != cow.slots * BLOCK {
                        bad.push(format!(
                            "cow_size {} (at START: {})",
                            info.cow_size,
                            cow.slots * BLOCK
                        ));
                    }
                    let snap = m.snap.as_ref().expect("snapshot");
                    if snap.invalid {
                        if info.error != -ENOSPC {
                            bad.push(format!(
                                "error {} after the COW file overflowed (want -ENOSPC)",
                                info.error
                            ));
                        }
                    } else {
                        if info.error != 0 {
                            bad.push(format!("error {} with COW slots to spare", info.error));
                        }
                        if info.cow_used != m.slots_used * BLOCK {
                            bad.push(format!(
                                "cow_used {} (model: {} copies of {} slots)",
                                info.cow_used, m.slots_used, cow.slots
                            ));
                        }
                    }
                }
                (MState::Incremental | MState::None, _) => {
                    if info.cow_size != 0 || info.cow_used != 0 {
                        bad.push(format!(
                            "cow_size {} cow_used {} without a COW file",
                            info.cow_size, info.cow_used
                        ));
                    }
                }
                (MState::Armed | MState::Snapshot, None) => {
                    bad.push("the model lost the COW file (model bug)".into());
                }
            }
            if let Some((mm, count)) = self.last_map_count {
                if mm == minor && info.changed_blocks != count {
                    bad.push(format!(
                        "changed_blocks {} but the map has {count} blocks",
                        info.changed_blocks
                    ));
                }
            }
            if !bad.is_empty() {
                return Err(format!("INFO of minor {minor}: {}", bad.join(", ")));
            }
        }
        Ok(())
    }

    /// Whole-block sector ranges of the snapshot of `minor` that `op` may have changed
    /// had the module got it wrong: the blocks it wrote, for a minor in SNAPSHOT
    /// tracking that volume.
    pub fn touched(&self, op: &Op) -> Vec<(u32, Span)> {
        let (vol, sector, sectors) = match *op {
            Op::Write {
                vol,
                sector,
                sectors,
            }
            | Op::Zero {
                vol,
                sector,
                sectors,
            } => (vol, sector, sectors),
            _ => return vec![],
        };
        let Some(minor) = self.ctl.tracker(vol) else {
            return vec![];
        };
        if self.ctl.state(minor) != MState::Snapshot {
            return vec![];
        }
        let first = sector / SPB * SPB;
        let end = (sector + sectors).div_ceil(SPB) * SPB;
        vec![(
            minor,
            Span::Arena {
                sector: first,
                sectors: end - first,
            },
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bw_guest::bwsnap_exec::protocol::{CowPath, Run};

    const GEO: Geometry = Geometry {
        blocks: 2048,
        arena_block: 1536,
    };

    fn setup(minor: u32, vol: usize, size: CowSizeChoice) -> Op {
        Op::Setup {
            minor,
            vol,
            cow: CowPath::Fresh,
            size,
        }
    }

    fn info(m: &Model, minor: u32, cow_size: u64, cow_used: u64, error: i32) -> MinorInfo {
        MinorInfo {
            minor,
            state: m.ctl.state(minor).abi(),
            error,
            seq: m.minors[minor as usize].seq,
            dev_size: GEO.blocks * BLOCK,
            cow_size,
            cow_used,
            changed_blocks: 0,
        }
    }

    fn armed() -> Reply {
        Reply::Armed {
            extents: vec![Extent {
                physical: 100 * BLOCK,
                length: 4 * BLOCK,
            }],
        }
    }

    fn data(first_sector: u64, content: Content, count: u64) -> Reply {
        Reply::Data {
            first_sector,
            runs: vec![Run { content, count }],
            differing: None,
        }
    }

    #[test]
    fn errors_follow_the_state_machine() {
        let c = Control::default();
        let cases = [
            (Op::Start { minor: 0 }, fail(Stage::Ioctl, &[ENOENT])),
            (
                Op::Destroy { minor: BAD_MINOR },
                fail(Stage::Ioctl, &[EINVAL]),
            ),
            (
                Op::Read {
                    minor: 0,
                    span: Span::Whole,
                },
                fail(Stage::Open, &[ENOENT]),
            ),
            (
                setup(0, 0, CowSizeChoice::Zero),
                fail(Stage::Ioctl, &[EINVAL]),
            ),
            (
                setup(0, 0, CowSizeChoice::Huge),
                fail(Stage::Ioctl, &[ENOSPC]),
            ),
            (setup(0, 0, CowSizeChoice::Default), Outcome::Ok),
            (Op::Reload, Outcome::Ok),
        ];
        for (op, want) in cases {
            assert_eq!(c.outcome(&op), want, "{op}");
        }
        let mut c = Control::default();
        c.apply(&setup(0, 1, CowSizeChoice::Default), &Outcome::Ok);
        assert_eq!(
            c.outcome(&setup(1, 1, CowSizeChoice::Default)),
            fail(Stage::Ioctl, &[EBUSY]),
            "a tracked device on another minor"
        );
        assert_eq!(
            c.outcome(&setup(0, 0, CowSizeChoice::Default)),
            fail(Stage::Ioctl, &[EBUSY]),
            "a minor in use"
        );
        assert_eq!(
            c.outcome(&Op::ToIncremental { minor: 0 }),
            fail(Stage::Ioctl, &[EINVAL])
        );
        assert_eq!(
            c.outcome(&Op::Reload),
            fail(Stage::Unload, &[libc::EWOULDBLOCK])
        );
        assert_eq!(
            c.outcome(&Op::Map {
                minor: 1,
                start_block: 3
            }),
            fail(Stage::Ioctl, &[EINVAL, ENOENT])
        );
        // A held snapshot descriptor reads while its snapshot lives, fails after,
        // and pins the module.
        let held = Op::ReadHeld { span: Span::Whole };
        assert_eq!(c.outcome(&held), fail(Stage::Open, &[libc::EBADF]));
        for op in [Op::Start { minor: 0 }, Op::Hold { minor: 0 }] {
            let o = c.outcome(&op);
            assert_eq!(o, Outcome::Ok, "{op}");
            c.apply(&op, &o);
        }
        assert_eq!(c.outcome(&held), Outcome::Ok);
        for op in [Op::Destroy { minor: 0 }, Op::Reload] {
            let o = c.outcome(&op);
            c.apply(&op, &o);
        }
        assert_eq!(
            c.outcome(&held),
            fail(Stage::Read, &[EIO, libc::ENXIO, libc::ENODEV])
        );
        assert_eq!(
            c.outcome(&Op::Reload),
            fail(Stage::Unload, &[libc::EWOULDBLOCK])
        );
        c.apply(&Op::Release, &Outcome::Ok);
        assert_eq!(c.outcome(&Op::Reload), Outcome::Ok);
    }

    /// The snapshot shows the arena at START; with one slot, the second copied block
    /// overflows it and reads must then fail.
    #[test]
    fn snapshot_image_and_overflow() {
        let base = 7 << 32;
        let mut m = Model::new(GEO, 2, base);
        let a0 = GEO.arena_sector();
        m.step(&setup(0, 0, CowSizeChoice::Slots(1)), &armed(), 0, base)
            .unwrap();
        let i = info(&m, 0, BLOCK, 0, 0);
        m.check_info(&[i]).unwrap();
        m.step(
            &Op::Start { minor: 0 },
            &Reply::Started { changed: None },
            0,
            base,
        )
        .unwrap();
        let write = |block: u64| Op::Write {
            vol: 0,
            sector: block * SPB,
            sectors: 1,
        };
        m.step(&write(0), &Reply::Ok, base + 1, base).unwrap();
        let read = Op::Read {
            minor: 0,
            span: Span::Arena {
                sector: 0,
                sectors: 8,
            },
        };
        m.step(&read, &data(a0, Content::Tag(base), 8), 0, base)
            .unwrap();
        let future = m
            .step(&read, &data(a0, Content::Tag(base + 1), 8), 0, base)
            .unwrap_err();
        assert!(future.contains("data from the future"), "{future}");
        let i = info(&m, 0, BLOCK, BLOCK, 0);
        m.check_info(&[i]).unwrap();
        // The same block again takes no slot; another one overflows.
        m.step(&write(0), &Reply::Ok, base + 2, base).unwrap();
        assert_eq!(m.live_snapshots(), vec![0]);
        m.step(&write(5), &Reply::Ok, base + 3, base).unwrap();
        assert!(m.live_snapshots().is_empty());
        let eio = Reply::Err {
            stage: Stage::Read,
            errno: EIO,
            cow_left: None,
        };
        m.step(&read, &eio, 0, base).unwrap();
        assert!(m
            .step(&read, &data(a0, Content::Tag(base), 8), 0, base)
            .is_err());
        let i = info(&m, 0, BLOCK, BLOCK, 0);
        assert!(m.check_info(&[i]).is_err(), "overflow must show in INFO");
        let i = info(&m, 0, BLOCK, BLOCK, -ENOSPC);
        m.check_info(&[i]).unwrap();
    }

    /// The period map at the second START holds exactly the arena blocks written since
    /// the first, and the blocks of the slots handed out.
    #[test]
    fn period_map_is_exact_in_the_arena() {
        let base = 1 << 32;
        let mut m = Model::new(GEO, 2, base);
        m.step(&setup(1, 0, CowSizeChoice::Slots(4)), &armed(), 0, base)
            .unwrap();
        let i = info(&m, 1, 4 * BLOCK, 0, 0);
        m.check_info(&[i]).unwrap();
        let map = |blocks: &[u64]| {
            let mut words = vec![0u64; 32];
            for b in blocks {
                words[(b / 64) as usize] |= 1 << (b % 64);
            }
            Reply::Map {
                nr_blocks: 2048,
                words,
            }
        };
        let op_map = Op::Map {
            minor: 1,
            start_block: 0,
        };
        m.step(&op_map, &map(&[]), 0, base).unwrap();
        assert!(
            m.step(&op_map, &map(&[3]), 0, base).is_err(),
            "zeros while armed"
        );
        m.step(
            &Op::Start { minor: 1 },
            &Reply::Started { changed: None },
            0,
            base,
        )
        .unwrap();
        // A 1 KiB write straddling blocks 2 and 3 of the arena.
        let w = Op::Write {
            vol: 0,
            sector: 2 * SPB + 6,
            sectors: 4,
        };
        m.step(&w, &Reply::Ok, base + 1, base).unwrap();
        m.step(&Op::ToIncremental { minor: 1 }, &Reply::Ok, 0, base)
            .unwrap();
        let to_snap = Op::ToSnapshot {
            minor: 1,
            cow: CowPath::Fresh,
            size: CowSizeChoice::Default,
        };
        m.step(&to_snap, &armed(), 0, base).unwrap();
        m.step(
            &Op::Start { minor: 1 },
            &Reply::Started {
                changed: Some(vec![0, 101]),
            },
            0,
            base,
        )
        .unwrap();
        // Block 0 changed; 100 and 101 held the two slots (101 is the new COW file's).
        let want = [0, 100, 101, 1538, 1539];
        m.step(&op_map, &map(&want), 0, base).unwrap();
        m.step(&op_map, &map(&[0, 100, 101, 1538, 1539, 7]), 0, base)
            .unwrap();
        assert!(m
            .step(&op_map, &map(&[0, 100, 101, 1538]), 0, base)
            .is_err());
        assert!(m
            .step(&op_map, &map(&[0, 101, 1538, 1539]), 0, base)
            .is_err());
        assert!(m
            .step(&op_map, &map(&[0, 100, 101, 1538, 1539, 1600]), 0, base)
            .is_err());
    }
}

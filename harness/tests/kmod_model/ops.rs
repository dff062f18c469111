//! The operations of a sequence, their one-line text form (what a repro line
//! carries), and the proptest-state-machine reference machine that generates them.

use std::fmt;
use std::str::FromStr;

use bw_guest::bwsnap_exec::protocol::CowPath;
use proptest::prelude::*;
use proptest_state_machine::ReferenceStateMachine;

use super::model::{Control, MState, BAD_MINOR, MINORS, SPB};

/// Arena size in sectors the generator aims at (the real one comes from the executor;
/// offsets beyond it are clipped by the runner).
pub const ARENA_SECTORS: u64 = 512 * SPB;

/// COW file size asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CowSizeChoice {
    /// The module's default (10% of the volume).
    Default,
    /// This many 4 KiB slots.
    Slots(u64),
    /// 0 bytes (EINVAL).
    Zero,
    /// Not a multiple of 4096 (EINVAL).
    Unaligned,
    /// Larger than the volume (ENOSPC).
    Huge,
}

impl CowSizeChoice {
    /// Bytes for the ioctl (None: the default), given the device size.
    pub fn bytes(self, dev_size: u64) -> Option<u64> {
        match self {
            CowSizeChoice::Default => None,
            CowSizeChoice::Slots(n) => Some(n * 4096),
            CowSizeChoice::Zero => Some(0),
            CowSizeChoice::Unaligned => Some(1000),
            CowSizeChoice::Huge => Some(dev_size * 2),
        }
    }
}

/// What a snapshot read covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// Sectors of the arena (relative to its first sector).
    Arena { sector: u64, sectors: u64 },
    /// The whole device, filesystem included.
    Whole,
}

/// One step of a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Setup {
        minor: u32,
        vol: usize,
        cow: CowPath,
        size: CowSizeChoice,
    },
    Start {
        minor: u32,
    },
    ToIncremental {
        minor: u32,
    },
    ToSnapshot {
        minor: u32,
        cow: CowPath,
        size: CowSizeChoice,
    },
    Destroy {
        minor: u32,
    },
    /// Stamps to arena sectors (relative) of a volume.
    Write {
        vol: usize,
        sector: u64,
        sectors: u64,
    },
    /// BLKZEROOUT of arena sectors.
    Zero {
        vol: usize,
        sector: u64,
        sectors: u64,
    },
    Read {
        minor: u32,
        span: Span,
    },
    Map {
        minor: u32,
        start_block: u64,
    },
    Reload,
    /// Keep `/dev/bwsnap<minor>` open across steps.
    Hold {
        minor: u32,
    },
    /// A read through the held descriptor.
    ReadHeld {
        span: Span,
    },
    /// Close the held descriptor.
    Release,
}

fn cow_name(c: CowPath) -> &'static str {
    match c {
        CowPath::Fresh => "fresh",
        CowPath::Exists => "exists",
        CowPath::Dir => "dir",
        CowPath::OtherVolume => "other-volume",
        CowPath::MissingDir => "missing-dir",
    }
}

impl fmt::Display for CowSizeChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            CowSizeChoice::Default => write!(f, "default"),
            CowSizeChoice::Slots(n) => write!(f, "slots:{n}"),
            CowSizeChoice::Zero => write!(f, "zero"),
            CowSizeChoice::Unaligned => write!(f, "unaligned"),
            CowSizeChoice::Huge => write!(f, "huge"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Op::Setup {
                minor,
                vol,
                cow,
                size,
            } => write!(f, "setup m{minor} v{vol} cow={} size={size}", cow_name(cow)),
            Op::Start { minor } => write!(f, "start m{minor}"),
            Op::ToIncremental { minor } => write!(f, "to-incremental m{minor}"),
            Op::ToSnapshot { minor, cow, size } => {
                write!(f, "to-snapshot m{minor} cow={} size={size}", cow_name(cow))
            }
            Op::Destroy { minor } => write!(f, "destroy m{minor}"),
            Op::Write {
                vol,
                sector,
                sectors,
            } => write!(f, "write v{vol} s={sector}+{sectors}"),
            Op::Zero {
                vol,
                sector,
                sectors,
            } => write!(f, "zero v{vol} s={sector}+{sectors}"),
            Op::Read {
                minor,
                span: Span::Arena { sector, sectors },
            } => write!(f, "read m{minor} s={sector}+{sectors}"),
            Op::Read {
                minor,
                span: Span::Whole,
            } => write!(f, "read m{minor} whole"),
            Op::Map { minor, start_block } => write!(f, "map m{minor} from={start_block}"),
            Op::Reload => write!(f, "reload"),
            Op::Hold { minor } => write!(f, "hold m{minor}"),
            Op::ReadHeld {
                span: Span::Arena { sector, sectors },
            } => write!(f, "read-held s={sector}+{sectors}"),
            Op::ReadHeld { span: Span::Whole } => write!(f, "read-held whole"),
            Op::Release => write!(f, "release"),
        }
    }
}

/// A sequence in its one-line form: the ops joined by "; ".
pub fn line(ops: &[Op]) -> String {
    ops.iter().map(Op::to_string).collect::<Vec<_>>().join("; ")
}

/// Why a repro line could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read op {op:?}: {why}")]
pub struct ParseError {
    op: String,
    why: String,
}

fn parse_op(text: &str) -> Result<Op, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some((&verb, args)) = words.split_first() else {
        return Err("empty".into());
    };
    let num = |s: &str, what: &str| -> Result<u64, String> {
        s.parse::<u64>()
            .map_err(|_| format!("{what} {s:?} is not a number"))
    };
    let prefixed = |prefix: &str| -> Result<u64, String> {
        let a = args
            .iter()
            .find_map(|a| a.strip_prefix(prefix))
            .ok_or_else(|| format!("missing {prefix}"))?;
        num(a, prefix)
    };
    let minor = || prefixed("m").map(|m| m as u32);
    let vol = || prefixed("v").map(|v| v as usize);
    let key = |k: &str| -> Result<&str, String> {
        args.iter()
            .find_map(|a| a.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .ok_or_else(|| format!("missing {k}="))
    };
    let range = || -> Result<(u64, u64), String> {
        let r = key("s")?;
        let (a, b) = r
            .split_once('+')
            .ok_or_else(|| format!("s={r}: want SECTOR+SECTORS"))?;
        Ok((num(a, "sector")?, num(b, "sectors")?))
    };
    let cow = || -> Result<CowPath, String> {
        Ok(match key("cow")? {
            "fresh" => CowPath::Fresh,
            "exists" => CowPath::Exists,
            "dir" => CowPath::Dir,
            "other-volume" => CowPath::OtherVolume,
            "missing-dir" => CowPath::MissingDir,
            other => return Err(format!("unknown cow={other}")),
        })
    };
    let size = || -> Result<CowSizeChoice, String> {
        let s = key("size")?;
        Ok(match s {
            "default" => CowSizeChoice::Default,
            "zero" => CowSizeChoice::Zero,
            "unaligned" => CowSizeChoice::Unaligned,
            "huge" => CowSizeChoice::Huge,
            other => match other.strip_prefix("slots:") {
                Some(n) => CowSizeChoice::Slots(num(n, "slots")?),
                None => return Err(format!("unknown size={other}")),
            },
        })
    };
    Ok(match verb {
        "setup" => Op::Setup {
            minor: minor()?,
            vol: vol()?,
            cow: cow()?,
            size: size()?,
        },
        "start" => Op::Start { minor: minor()? },
        "to-incremental" => Op::ToIncremental { minor: minor()? },
        "to-snapshot" => Op::ToSnapshot {
            minor: minor()?,
            cow: cow()?,
            size: size()?,
        },
        "destroy" => Op::Destroy { minor: minor()? },
        "write" | "zero" => {
            let (sector, sectors) = range()?;
            let vol = vol()?;
            if verb == "write" {
                Op::Write {
                    vol,
                    sector,
                    sectors,
                }
            } else {
                Op::Zero {
                    vol,
                    sector,
                    sectors,
                }
            }
        }
        "read" => Op::Read {
            minor: minor()?,
            span: if args.contains(&"whole") {
                Span::Whole
            } else {
                let (sector, sectors) = range()?;
                Span::Arena { sector, sectors }
            },
        },
        "map" => Op::Map {
            minor: minor()?,
            start_block: num(key("from")?, "from")?,
        },
        "reload" => Op::Reload,
        "hold" => Op::Hold { minor: minor()? },
        "read-held" => Op::ReadHeld {
            span: if args.contains(&"whole") {
                Span::Whole
            } else {
                let (sector, sectors) = range()?;
                Span::Arena { sector, sectors }
            },
        },
        "release" => Op::Release,
        other => return Err(format!("unknown op {other:?}")),
    })
}

impl FromStr for Op {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Op, ParseError> {
        parse_op(s).map_err(|why| ParseError {
            op: s.trim().to_string(),
            why,
        })
    }
}

/// A repro line back into its ops.
pub fn parse_line(text: &str) -> Result<Vec<Op>, ParseError> {
    text.split(';')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// The reference machine: the minors' state machine steers generation toward
/// transitions that do something in the current state, with a share of refused ones.
pub struct Reference;

fn any_minor() -> BoxedStrategy<u32> {
    prop_oneof![
        12 => 0..MINORS,
        1 => Just(BAD_MINOR),
    ]
    .boxed()
}

/// A minor in `state` if there is one, else any.
fn minor_in(c: &Control, state: MState) -> BoxedStrategy<u32> {
    let fit: Vec<u32> = (0..MINORS).filter(|&m| c.state(m) == state).collect();
    if fit.is_empty() {
        any_minor()
    } else {
        prop_oneof![9 => proptest::sample::select(fit), 1 => any_minor()].boxed()
    }
}

fn cow_path() -> BoxedStrategy<CowPath> {
    prop_oneof![
        40 => Just(CowPath::Fresh),
        1 => Just(CowPath::Exists),
        1 => Just(CowPath::Dir),
        1 => Just(CowPath::OtherVolume),
        1 => Just(CowPath::MissingDir),
    ]
    .boxed()
}

fn cow_size() -> BoxedStrategy<CowSizeChoice> {
    prop_oneof![
        6 => Just(CowSizeChoice::Default),
        8 => (1u64..48).prop_map(CowSizeChoice::Slots),
        1 => Just(CowSizeChoice::Zero),
        1 => Just(CowSizeChoice::Unaligned),
        1 => Just(CowSizeChoice::Huge),
    ]
    .boxed()
}

/// Where a write lands: often in a small hot region (rewrites of copied blocks),
/// whole blocks mostly, 1 KiB-aligned and odd sectors sometimes, long runs rarely.
fn extent() -> BoxedStrategy<(u64, u64)> {
    let hot = 32 * SPB;
    prop_oneof![
        // Whole blocks.
        6 => (0..ARENA_SECTORS / SPB, 1u64..=8)
            .prop_map(|(b, n)| (b * SPB, n * SPB)),
        4 => (0..hot / SPB, 1u64..=4).prop_map(|(b, n)| (b * SPB, n * SPB)),
        // 1 KiB-aligned, under 4 KiB, may straddle two blocks.
        3 => (0..hot / 2, 1u64..=3).prop_map(|(k, n)| (k * 2, n * 2)),
        // Any sectors.
        2 => (0..hot, 1u64..=12),
        // Longer than one 64-block run of the module.
        1 => (0..ARENA_SECTORS / SPB, 60u64..=160).prop_map(|(b, n)| (b * SPB, n * SPB)),
    ]
    .boxed()
}

fn span() -> BoxedStrategy<Span> {
    prop_oneof![
        6 => (0..ARENA_SECTORS / SPB, 1u64..=32)
            .prop_map(|(b, n)| Span::Arena { sector: b * SPB, sectors: n * SPB }),
        2 => (0..ARENA_SECTORS, 1u64..=16)
            .prop_map(|(sector, sectors)| Span::Arena { sector, sectors }),
        1 => Just(Span::Whole),
    ]
    .boxed()
}

impl ReferenceStateMachine for Reference {
    type State = Control;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Control> {
        Just(Control::default()).boxed()
    }

    fn transitions(c: &Control) -> BoxedStrategy<Op> {
        // Writes go mostly to a volume with a snapshot, else to a tracked one.
        let snap_vols: Vec<usize> = (0..MINORS)
            .filter(|&m| c.state(m) == MState::Snapshot)
            .map(|m| c.minors[m as usize].1)
            .collect();
        let vol = if snap_vols.is_empty() {
            (0usize..2).boxed()
        } else {
            prop_oneof![4 => proptest::sample::select(snap_vols), 1 => 0usize..2].boxed()
        };
        let free_vols: Vec<usize> = (0..2).filter(|&v| c.tracker(v).is_none()).collect();
        let setup_vol = if free_vols.is_empty() {
            (0usize..2).boxed()
        } else {
            proptest::sample::select(free_vols).boxed()
        };
        let free_minor = minor_in(c, MState::None);
        let snap_minor = minor_in(c, MState::Snapshot);
        let has = |s: MState| (0..MINORS).any(|m| c.state(m) == s);
        // Transitions that do something in this state are likelier; refused ones
        // still come up.
        let w = |yes: bool, busy: u32, idle: u32| if yes { busy } else { idle };
        let snap = has(MState::Snapshot);
        let can_setup = has(MState::None) && (0..2).any(|v| c.tracker(v).is_none());
        prop_oneof![
            w(can_setup, 10, 1) => (free_minor, setup_vol, cow_path(), cow_size())
                .prop_map(|(minor, vol, cow, size)| Op::Setup { minor, vol, cow, size }),
            w(has(MState::Armed), 10, 1) => minor_in(c, MState::Armed).prop_map(|minor| Op::Start { minor }),
            w(snap, 18, 6) => (vol.clone(), extent())
                .prop_map(|(vol, (sector, sectors))| Op::Write { vol, sector, sectors }),
            w(snap, 3, 1) => (vol, extent())
                .prop_map(|(vol, (sector, sectors))| Op::Zero { vol, sector, sectors }),
            w(snap, 8, 1) => (snap_minor.clone(), span()).prop_map(|(minor, span)| Op::Read { minor, span }),
            w(snap, 4, 1) => snap_minor.prop_map(|minor| Op::ToIncremental { minor }),
            w(has(MState::Incremental), 10, 1) => (minor_in(c, MState::Incremental), cow_path(), cow_size())
                .prop_map(|(minor, cow, size)| Op::ToSnapshot { minor, cow, size }),
            4 => (any_minor(), prop_oneof![9 => Just(0u64), 1 => 1u64..64])
                .prop_map(|(minor, start_block)| Op::Map { minor, start_block }),
            2 => any_minor().prop_map(|minor| Op::Destroy { minor }),
            1 => Just(Op::Reload),
            w(snap, 2, 1) => minor_in(c, MState::Snapshot).prop_map(|minor| Op::Hold { minor }),
            w(c.held.is_some(), 6, 1) => span().prop_map(|span| Op::ReadHeld { span }),
            1 => Just(Op::Release),
        ]
        .boxed()
    }

    /// A COW path on the other volume makes the module create (and unlink) a file on
    /// that filesystem: writes the model cannot count. Not while that volume has a
    /// snapshot whose COW slot use the model checks exactly.
    fn preconditions(c: &Control, op: &Op) -> bool {
        let target = match *op {
            Op::Setup {
                vol,
                cow: CowPath::OtherVolume,
                ..
            } => vol,
            Op::ToSnapshot {
                minor,
                cow: CowPath::OtherVolume,
                ..
            } => c.minors.get(minor as usize).map_or(0, |m| m.1),
            _ => return true,
        };
        let other = (target + 1) % 2;
        c.tracker(other)
            .is_none_or(|m| c.state(m) != MState::Snapshot)
    }

    fn apply(mut c: Control, op: &Op) -> Control {
        let outcome = c.outcome(op);
        c.apply(op, &outcome);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn every_op_reads_back_from_its_line() {
        let ops = vec![
            Op::Setup {
                minor: 1,
                vol: 0,
                cow: CowPath::OtherVolume,
                size: CowSizeChoice::Slots(9),
            },
            Op::Start { minor: 32 },
            Op::ToIncremental { minor: 0 },
            Op::ToSnapshot {
                minor: 0,
                cow: CowPath::Fresh,
                size: CowSizeChoice::Huge,
            },
            Op::Destroy { minor: 1 },
            Op::Write {
                vol: 1,
                sector: 17,
                sectors: 3,
            },
            Op::Zero {
                vol: 0,
                sector: 8,
                sectors: 16,
            },
            Op::Read {
                minor: 0,
                span: Span::Arena {
                    sector: 5,
                    sectors: 2,
                },
            },
            Op::Read {
                minor: 1,
                span: Span::Whole,
            },
            Op::Map {
                minor: 0,
                start_block: 3,
            },
            Op::Reload,
            Op::Hold { minor: 1 },
            Op::ReadHeld {
                span: Span::Arena {
                    sector: 9,
                    sectors: 7,
                },
            },
            Op::ReadHeld { span: Span::Whole },
            Op::Release,
        ];
        let text = line(&ops);
        assert!(!text.contains('\n'));
        assert_eq!(parse_line(&text).unwrap(), ops);
        for bad in [
            "explode m0",
            "write v0",
            "setup m0 v0 cow=fresh size=slots:x",
        ] {
            let err = parse_line(bad).unwrap_err().to_string();
            assert!(
                err.contains(bad.split_whitespace().next().unwrap()),
                "{err}"
            );
        }
    }

    /// Generated sequences do reach every state.
    #[test]
    fn generation_reaches_every_state() {
        let mut runner = TestRunner::deterministic();
        let strategy = Reference::sequential_strategy(20..40);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let (mut c, ops, _) = strategy.new_tree(&mut runner).unwrap().current();
            for op in &ops {
                c = Reference::apply(c, op);
                for m in 0..MINORS {
                    seen.insert(format!("{:?}", c.state(m)));
                }
            }
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }
}

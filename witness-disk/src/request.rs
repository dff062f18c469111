//! virtio-blk requests: from a descriptor chain to a checked [`Request`], or to the
//! reason it is refused. Pure: reads the header and discard ranges from guest memory
//! and touches nothing else, so property tests can feed it any chain.
//!
//! The chain is taken as a byte stream (VIRTIO_F_ANY_LAYOUT): first every device-readable
//! byte, then every device-writable byte. The header is the first 16 readable bytes; the
//! status is the last writable byte; the data is what lies between (readable for write,
//! discard and write-zeroes, writable for read and get-id).

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::hash::SECTOR_SIZE;
use crate::history::{Flags, Op};

/// virtio-blk request types and statuses (virtio 1.2, 5.2.6).
pub mod wire {
    pub use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_ID_BYTES as ID_BYTES, VIRTIO_BLK_S_IOERR as S_IOERR, VIRTIO_BLK_S_OK as S_OK,
        VIRTIO_BLK_S_UNSUPP as S_UNSUPP, VIRTIO_BLK_T_BARRIER as T_BARRIER,
        VIRTIO_BLK_T_DISCARD as T_DISCARD, VIRTIO_BLK_T_FLUSH as T_FLUSH,
        VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN, VIRTIO_BLK_T_OUT as T_OUT,
        VIRTIO_BLK_T_WRITE_ZEROES as T_WRITE_ZEROES,
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP as FLAG_UNMAP,
    };
}

/// Header size: type u32, reserved u32, sector u64.
const HEADER: u64 = 16;
/// One discard / write-zeroes range: sector u64, num_sectors u32, flags u32.
const RANGE: u64 = 16;

/// One descriptor, as the chain gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A request the backend can execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub flags: Flags,
    /// Byte range on the disk (0, 0 for flush and get-id).
    pub offset: u64,
    pub len: u64,
    /// Guest buffers for the data: readable for write, writable for read and get-id,
    /// empty otherwise. Their lengths add up to `len` (get-id: to the buffer's size).
    pub data: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// Bytes the device writes into the chain when it completes: the data of a read or
    /// get-id plus the status byte.
    pub fn used_len(&self, ok: bool) -> u32 {
        let data: u64 = match self.op {
            Op::Read | Op::GetId if ok => self.data.iter().map(|s| u64::from(s.len)).sum(),
            _ => 0,
        };
        (data + 1).min(u64::from(u32::MAX)) as u32
    }
}

/// Why a chain is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the chain has no descriptors")]
    Empty,
    #[error("the chain has no device-writable byte for the status")]
    NoStatus,
    #[error("a descriptor at {addr:#x} ({len} bytes) lies outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the header needs 16 readable bytes, the chain has {0}")]
    ShortHeader(u64),
    #[error("request type {0:#x} is not supported")]
    Unsupported(u32),
    #[error("{op} data of {len} bytes is not a whole number of sectors")]
    Unaligned { op: &'static str, len: u64 },
    #[error("{op} has {bytes} bytes of device-{which} data it cannot have")]
    UnexpectedData {
        op: &'static str,
        which: &'static str,
        bytes: u64,
    },
    #[error("{op} of {len} bytes at byte {offset} goes beyond the disk's {capacity} bytes")]
    BeyondEnd {
        op: &'static str,
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("{op} carries {segments} ranges; the backend takes one")]
    TooManyRanges { op: &'static str, segments: u64 },
    #[error("{op} range flags {flags:#x} are not allowed")]
    RangeFlags { op: &'static str, flags: u32 },
    #[error("{op} of {len} bytes is longer than the {max} bytes the backend takes")]
    TooLong {
        op: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{op} covers {sectors} sectors, more than the {max} allowed")]
    RangeTooLong {
        op: &'static str,
        sectors: u64,
        max: u64,
    },
}

impl ParseError {
    /// The status to answer with: unsupported for what the device does not do, I/O error
    /// for everything malformed.
    pub fn status(&self) -> u8 {
        match self {
            ParseError::Unsupported(_)
            | ParseError::TooManyRanges { .. }
            | ParseError::RangeFlags { .. } => wire::S_UNSUPP as u8,
            ParseError::Empty
            | ParseError::NoStatus
            | ParseError::OutsideMemory { .. }
            | ParseError::ReadableAfterWritable
            | ParseError::ShortHeader(_)
            | ParseError::Unaligned { .. }
            | ParseError::UnexpectedData { .. }
            | ParseError::BeyondEnd { .. }
            | ParseError::TooLong { .. }
            | ParseError::RangeTooLong { .. } => wire::S_IOERR as u8,
        }
    }
}

/// What parsing a chain gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Ok(Request),
    /// Refused: answer `error.status()` at `status`. `op`, `offset` and `len` are what the
    /// header said, for the history.
    Refused {
        error: ParseError,
        status: GuestAddress,
        op: Op,
        offset: u64,
        len: u64,
    },
    /// Refused with nowhere to put a status: complete with no bytes written.
    Unanswerable {
        error: ParseError,
    },
}

/// Limits the device advertised in its config space.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub capacity_bytes: u64,
    /// The longest read or write taken (the data passes through a host buffer).
    pub max_transfer_bytes: u64,
    pub max_discard_sectors: u64,
    pub max_write_zeroes_sectors: u64,
}

/// Takes `n` bytes starting `skip` bytes into `segs`.
fn slice(segs: &[Segment], mut skip: u64, mut n: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for s in segs {
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        if n == 0 {
            break;
        }
        let take = (len - skip).min(n);
        out.push(Segment {
            addr: s.addr + skip,
            len: take as u32,
            writable: s.writable,
        });
        n -= take;
        skip = 0;
    }
    out
}

/// Reads `buf.len()` bytes from the start of `segs`.
fn gather<M: GuestMemory>(mem: &M, segs: &[Segment], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for s in slice(segs, 0, buf.len() as u64) {
        let n = s.len as usize;
        if mem
            .read_slice(&mut buf[done..done + n], GuestAddress(s.addr))
            .is_err()
        {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Parses one chain.
pub fn parse<M: GuestMemory>(chain: &[Segment], mem: &M, limits: &Limits) -> Parsed {
    if chain.is_empty() {
        return Parsed::Unanswerable {
            error: ParseError::Empty,
        };
    }
    // The status byte: the last byte of the last descriptor, which must be writable.
    let last = chain[chain.len() - 1];
    if !last.writable || last.len == 0 {
        return Parsed::Unanswerable {
            error: ParseError::NoStatus,
        };
    }
    let Some(status_addr) = last.addr.checked_add(u64::from(last.len) - 1) else {
        return Parsed::Unanswerable {
            error: ParseError::OutsideMemory {
                addr: last.addr,
                len: last.len,
            },
        };
    };
    let status = GuestAddress(status_addr);
    if !mem.check_range(status, 1, Permissions::Write) {
        return Parsed::Unanswerable {
            error: ParseError::OutsideMemory {
                addr: last.addr,
                len: last.len,
            },
        };
    }
    let refuse = |error, op, offset, len| Parsed::Refused {
        error,
        status,
        op,
        offset,
        len,
    };
    let split = chain.iter().position(|s| s.writable).unwrap_or(chain.len());
    let (readable, writable) = chain.split_at(split);
    if writable.iter().any(|s| !s.writable) {
        return refuse(ParseError::ReadableAfterWritable, Op::Malformed, 0, 0);
    }
    for s in chain {
        let access = if s.writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(GuestAddress(s.addr), s.len as usize, access) {
            return refuse(
                ParseError::OutsideMemory {
                    addr: s.addr,
                    len: s.len,
                },
                Op::Malformed,
                0,
                0,
            );
        }
    }
    let readable_bytes = total(readable);
    let mut header = [0u8; HEADER as usize];
    if readable_bytes < HEADER || !gather(mem, readable, &mut header) {
        return refuse(ParseError::ShortHeader(readable_bytes), Op::Malformed, 0, 0);
    }
    let raw_type = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let mut flags = Flags::default();
    if raw_type & wire::T_BARRIER != 0 {
        flags.0 |= Flags::BARRIER;
    }
    let typ = raw_type & !wire::T_BARRIER;
    let in_data = readable_bytes - HEADER;
    let out_data = total(writable) - 1;
    let capacity = limits.capacity_bytes;
    let in_range = |op: Op, offset: Option<u64>, len: u64| -> Result<u64, ParseError> {
        let offset = offset.ok_or(ParseError::BeyondEnd {
            op: op.name(),
            offset: u64::MAX,
            len,
            capacity,
        })?;
        match offset.checked_add(len) {
            Some(end) if end <= capacity => Ok(offset),
            _ => Err(ParseError::BeyondEnd {
                op: op.name(),
                offset,
                len,
                capacity,
            }),
        }
    };
    match typ {
        wire::T_IN | wire::T_OUT => {
            let (op, len, data, stray, which) = if typ == wire::T_IN {
                (
                    Op::Read,
                    out_data,
                    slice(writable, 0, out_data),
                    in_data,
                    "readable",
                )
            } else {
                (
                    Op::Write,
                    in_data,
                    slice(readable, HEADER, in_data),
                    out_data,
                    "writable",
                )
            };
            let offset = sector.checked_mul(SECTOR_SIZE);
            let shown = offset.unwrap_or(0);
            if stray != 0 {
                return refuse(
                    ParseError::UnexpectedData {
                        op: op.name(),
                        which,
                        bytes: stray,
                    },
                    op,
                    shown,
                    len,
                );
            }
            if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
                return refuse(ParseError::Unaligned { op: op.name(), len }, op, shown, len);
            }
            if len > limits.max_transfer_bytes {
                return refuse(
                    ParseError::TooLong {
                        op: op.name(),
                        len,
                        max: limits.max_transfer_bytes,
                    },
                    op,
                    shown,
                    len,
                );
            }
            match in_range(op, offset, len) {
                Ok(offset) => Parsed::Ok(Request {
                    op,
                    flags,
                    offset,
                    len,
                    data,
                    status,
                }),
                Err(e) => refuse(e, op, shown, len),
            }
        }
        wire::T_FLUSH | wire::T_GET_ID => {
            let (op, expect_out) = if typ == wire::T_FLUSH {
                (Op::Flush, false)
            } else {
                (Op::GetId, true)
            };
            if in_data != 0 {
                return refuse(
                    ParseError::UnexpectedData {
                        op: op.name(),
                        which: "readable",
                        bytes: in_data,
                    },
                    op,
                    0,
                    0,
                );
            }
            if !expect_out && out_data != 0 {
                return refuse(
                    ParseError::UnexpectedData {
                        op: op.name(),
                        which: "writable",
                        bytes: out_data,
                    },
                    op,
                    0,
                    0,
                );
            }
            let data = if expect_out {
                slice(writable, 0, out_data.min(u64::from(wire::ID_BYTES)))
            } else {
                vec![]
            };
            Parsed::Ok(Request {
                op,
                flags,
                offset: 0,
                len: 0,
                data,
                status,
            })
        }
        wire::T_DISCARD | wire::T_WRITE_ZEROES => {
            let (op, max) = if typ == wire::T_DISCARD {
                (Op::Discard, limits.max_discard_sectors)
            } else {
                (Op::WriteZeroes, limits.max_write_zeroes_sectors)
            };
            if out_data != 0 {
                return refuse(
                    ParseError::UnexpectedData {
                        op: op.name(),
                        which: "writable",
                        bytes: out_data,
                    },
                    op,
                    0,
                    0,
                );
            }
            if in_data != RANGE {
                return if in_data != 0 && in_data.is_multiple_of(RANGE) {
                    refuse(
                        ParseError::TooManyRanges {
                            op: op.name(),
                            segments: in_data / RANGE,
                        },
                        op,
                        0,
                        0,
                    )
                } else {
                    refuse(
                        ParseError::Unaligned {
                            op: op.name(),
                            len: in_data,
                        },
                        op,
                        0,
                        0,
                    )
                };
            }
            let mut range = [0u8; RANGE as usize];
            let range_segs = slice(readable, HEADER, RANGE);
            if !gather(mem, &range_segs, &mut range) {
                return refuse(ParseError::ShortHeader(readable_bytes), op, 0, 0);
            }
            let r_sector = u64::from_le_bytes(range[0..8].try_into().expect("8 bytes"));
            let sectors = u64::from(u32::from_le_bytes(range[8..12].try_into().expect("4")));
            let r_flags = u32::from_le_bytes(range[12..16].try_into().expect("4 bytes"));
            let offset = r_sector.checked_mul(SECTOR_SIZE);
            let len = sectors * SECTOR_SIZE;
            let shown = offset.unwrap_or(0);
            let allowed = if op == Op::WriteZeroes {
                wire::FLAG_UNMAP
            } else {
                0
            };
            if r_flags & !allowed != 0 {
                return refuse(
                    ParseError::RangeFlags {
                        op: op.name(),
                        flags: r_flags,
                    },
                    op,
                    shown,
                    len,
                );
            }
            if r_flags & wire::FLAG_UNMAP != 0 {
                flags.0 |= Flags::UNMAP;
            }
            if sectors > max {
                return refuse(
                    ParseError::RangeTooLong {
                        op: op.name(),
                        sectors,
                        max,
                    },
                    op,
                    shown,
                    len,
                );
            }
            match in_range(op, offset, len) {
                Ok(offset) => Parsed::Ok(Request {
                    op,
                    flags,
                    offset,
                    len,
                    data: vec![],
                    status,
                }),
                Err(e) => refuse(e, op, shown, len),
            }
        }
        other => refuse(ParseError::Unsupported(other), Op::Other(other), 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::GuestMemoryMmap;

    const MEM: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            capacity_bytes: 1 << 20,
            max_transfer_bytes: 64 << 10,
            max_discard_sectors: 2048,
            max_write_zeroes_sectors: 2048,
        }
    }

    fn header(mem: &GuestMemoryMmap<()>, at: u64, typ: u32, sector: u64) -> Segment {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&typ.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
        Segment {
            addr: at,
            len: 16,
            writable: false,
        }
    }

    fn seg(addr: u64, len: u32, writable: bool) -> Segment {
        Segment {
            addr,
            len,
            writable,
        }
    }

    #[test]
    fn a_read_the_way_linux_sends_it() {
        let m = mem();
        let chain = [
            header(&m, 0, wire::T_IN, 8),
            seg(4096, 4096, true),
            seg(8192, 1, true),
        ];
        let Parsed::Ok(r) = parse(&chain, &m, &limits()) else {
            panic!()
        };
        assert_eq!((r.op, r.offset, r.len), (Op::Read, 4096, 4096));
        assert_eq!(r.data, vec![seg(4096, 4096, true)]);
        assert_eq!(r.status, GuestAddress(8192));
        assert_eq!(r.used_len(true), 4097);
    }

    #[test]
    fn header_data_and_status_may_share_descriptors() {
        let m = mem();
        // One readable descriptor holding header and 512 bytes of write data.
        header(&m, 0, wire::T_OUT, 1);
        let chain = [seg(0, 16 + 512, false), seg(9000, 1, true)];
        let Parsed::Ok(r) = parse(&chain, &m, &limits()) else {
            panic!()
        };
        assert_eq!((r.op, r.offset, r.len), (Op::Write, 512, 512));
        assert_eq!(r.data, vec![seg(16, 512, false)]);
        // A read whose data and status share one writable descriptor.
        let chain = [header(&m, 0, wire::T_IN, 0), seg(4096, 513, true)];
        let Parsed::Ok(r) = parse(&chain, &m, &limits()) else {
            panic!()
        };
        assert_eq!(r.data, vec![seg(4096, 512, true)]);
        assert_eq!(r.status, GuestAddress(4096 + 512));
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let m = mem();
        let st = seg(9000, 1, true);
        let cases: Vec<(Vec<Segment>, u8, &str)> = vec![
            (
                vec![header(&m, 256, wire::T_IN, 2047), seg(4096, 1024, true), st],
                wire::S_IOERR as u8,
                "beyond the disk",
            ),
            (
                vec![
                    header(&m, 512, wire::T_IN, u64::MAX / 256),
                    seg(4096, 512, true),
                    st,
                ],
                wire::S_IOERR as u8,
                "beyond the disk",
            ),
            (
                vec![header(&m, 768, wire::T_OUT, 0), seg(4096, 100, false), st],
                wire::S_IOERR as u8,
                "whole number of sectors",
            ),
            (
                vec![header(&m, 1024, 99, 0), st],
                wire::S_UNSUPP as u8,
                "not supported",
            ),
            (
                vec![seg(0, 8, false), st],
                wire::S_IOERR as u8,
                "16 readable bytes",
            ),
            (
                vec![
                    header(&m, 1280, wire::T_IN, 0),
                    seg(4096, 512, true),
                    seg(0, 4, false),
                    st,
                ],
                wire::S_IOERR as u8,
                "follows a device-writable",
            ),
            (
                vec![
                    header(&m, 1536, wire::T_IN, 0),
                    seg(MEM - 10, 512, true),
                    st,
                ],
                wire::S_IOERR as u8,
                "outside guest memory",
            ),
            (
                vec![header(&m, 1792, wire::T_FLUSH, 0), seg(4096, 512, true), st],
                wire::S_IOERR as u8,
                "device-writable data",
            ),
        ];
        for (chain, status, why) in cases {
            match parse(&chain, &m, &limits()) {
                Parsed::Refused {
                    error, status: at, ..
                } => {
                    assert_eq!(error.status(), status, "{error}");
                    assert!(error.to_string().contains(why), "{error} / {why}");
                    assert_eq!(at, GuestAddress(9000));
                }
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(&[], &m, &limits()),
            Parsed::Unanswerable {
                error: ParseError::Empty
            }
        ));
        assert!(matches!(
            parse(&[header(&m, 0, wire::T_FLUSH, 0)], &m, &limits()),
            Parsed::Unanswerable {
                error: ParseError::NoStatus
            }
        ));
        assert!(matches!(
            parse(
                &[header(&m, 0, wire::T_FLUSH, 0), seg(MEM, 1, true)],
                &m,
                &limits()
            ),
            Parsed::Unanswerable { .. }
        ));
    }

    fn range(m: &GuestMemoryMmap<()>, at: u64, sector: u64, n: u32, flags: u32) -> Segment {
        let mut r = [0u8; 16];
        r[0..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&n.to_le_bytes());
        r[12..16].copy_from_slice(&flags.to_le_bytes());
        m.write_slice(&r, GuestAddress(at)).unwrap();
        seg(at, 16, false)
    }

    #[test]
    fn discard_and_write_zeroes() {
        let m = mem();
        let st = seg(9000, 1, true);
        let chain = [
            header(&m, 0, wire::T_WRITE_ZEROES, 0),
            range(&m, 100, 8, 16, wire::FLAG_UNMAP),
            st,
        ];
        let Parsed::Ok(r) = parse(&chain, &m, &limits()) else {
            panic!()
        };
        assert_eq!((r.op, r.offset, r.len), (Op::WriteZeroes, 4096, 8192));
        assert!(r.flags.unmap());
        // Discard must not carry unmap.
        let chain = [
            header(&m, 0, wire::T_DISCARD, 0),
            range(&m, 100, 8, 16, wire::FLAG_UNMAP),
            st,
        ];
        assert!(matches!(
            parse(&chain, &m, &limits()),
            Parsed::Refused {
                error: ParseError::RangeFlags { .. },
                ..
            }
        ));
        // Two ranges: unsupported (max_discard_seg is 1).
        let chain = [
            header(&m, 0, wire::T_DISCARD, 0),
            range(&m, 100, 8, 16, 0),
            range(&m, 116, 64, 16, 0),
            st,
        ];
        match parse(&chain, &m, &limits()) {
            Parsed::Refused { error, .. } => assert_eq!(error.status(), wire::S_UNSUPP as u8),
            other => panic!("{other:?}"),
        }
        let chain = [
            header(&m, 0, wire::T_DISCARD, 0),
            range(&m, 100, 0, 4096, 0),
            st,
        ];
        assert!(matches!(
            parse(&chain, &m, &limits()),
            Parsed::Refused {
                error: ParseError::RangeTooLong { .. },
                ..
            }
        ));
    }

    #[test]
    fn get_id_writes_at_most_twenty_bytes() {
        let m = mem();
        let chain = [
            header(&m, 0, wire::T_GET_ID, 0),
            seg(4096, 512, true),
            seg(9000, 1, true),
        ];
        let Parsed::Ok(r) = parse(&chain, &m, &limits()) else {
            panic!()
        };
        assert_eq!(r.op, Op::GetId);
        assert_eq!(r.data, vec![seg(4096, 20, true)]);
    }

    fn arb_segment() -> impl Strategy<Value = Segment> {
        (
            prop_oneof![
                0..MEM + 8192,
                Just(MEM - 1),
                Just(u64::MAX - 4),
                any::<u64>()
            ],
            prop_oneof![0u32..9000, Just(0), Just(1), Just(16), any::<u32>()],
            any::<bool>(),
        )
            .prop_map(|(addr, len, writable)| Segment {
                addr,
                len,
                writable,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any chain over any memory content parses to a request, a refusal or an
        /// unanswerable chain, without panicking; an accepted request always lies on
        /// the disk and in guest memory.
        #[test]
        fn arbitrary_chains_never_panic(
            chain in proptest::collection::vec(arb_segment(), 0..8),
            typ in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), Just(11), Just(13), any::<u32>()],
            sector in prop_oneof![0u64..4096, any::<u64>()],
            range_words in any::<[u64; 2]>(),
        ) {
            let m = mem();
            let mut h = [0u8; 32];
            h[0..4].copy_from_slice(&typ.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            h[16..24].copy_from_slice(&range_words[0].to_le_bytes());
            h[24..32].copy_from_slice(&range_words[1].to_le_bytes());
            // Plant header-like bytes where the chain points, so parsing goes deep.
            for s in &chain {
                if s.addr.checked_add(32).is_some_and(|e| e <= MEM) {
                    m.write_slice(&h, GuestAddress(s.addr)).unwrap();
                }
            }
            match parse(&chain, &m, &limits()) {
                Parsed::Ok(r) => {
                    prop_assert!(r.offset.checked_add(r.len).is_some_and(|e| e <= limits().capacity_bytes));
                    prop_assert!(m.check_range(r.status, 1, Permissions::Write));
                    for d in &r.data {
                        prop_assert!(m.check_range(GuestAddress(d.addr), d.len as usize, Permissions::Read));
                    }
                    match r.op {
                        Op::Read | Op::Write => {
                            prop_assert_eq!(total(&r.data), r.len);
                            prop_assert!(r.len > 0 && r.len % 512 == 0);
                        }
                        Op::GetId => prop_assert!(total(&r.data) <= 20),
                        Op::Flush | Op::Discard | Op::WriteZeroes => prop_assert!(r.data.is_empty()),
                        Op::Other(_) | Op::Malformed => prop_assert!(false, "accepted {:?}", r.op),
                    }
                }
                Parsed::Refused { error, status, .. } => {
                    prop_assert!(m.check_range(status, 1, Permissions::Write));
                    prop_assert!(error.status() == 1 || error.status() == 2);
                }
                Parsed::Unanswerable { .. } => {}
            }
        }

        /// Well-formed reads and writes split over random descriptor boundaries parse
        /// back to exactly the request that was built.
        #[test]
        fn well_formed_requests_round_trip(
            write in any::<bool>(),
            sector in 0u64..1024,
            sectors in 1u64..16,
            cuts in proptest::collection::vec(1u32..4096, 0..4),
        ) {
            let m = mem();
            let len = sectors * 512;
            prop_assume!(sector * 512 + len <= limits().capacity_bytes);
            let typ = if write { wire::T_OUT } else { wire::T_IN };
            let mut chain = vec![header(&m, 0, typ, sector)];
            let mut at = 65536;
            let mut left = len;
            for c in cuts {
                let c = u64::from(c).min(left.saturating_sub(1));
                if c == 0 { continue; }
                chain.push(seg(at, c as u32, !write));
                at += c + 100;
                left -= c;
            }
            chain.push(seg(at, left as u32, !write));
            chain.push(seg(900_000, 1, true));
            let Parsed::Ok(r) = parse(&chain, &m, &limits()) else {
                return Err(TestCaseError::fail("refused a well-formed request"));
            };
            prop_assert_eq!(r.op, if write { Op::Write } else { Op::Read });
            prop_assert_eq!(r.offset, sector * 512);
            prop_assert_eq!(r.len, len);
            prop_assert_eq!(&r.data[..], &chain[1..chain.len() - 1]);
            prop_assert_eq!(r.status, GuestAddress(900_000));
        }
    }
}

//! Record bodies: LEB128 varints, one byte per small enum, 16 bytes per hash.
//!
//! ```text
//! request (kind 0x01): seq, queue, op u8 [raw type if op = other], flags u8, outcome u8,
//!                      offset, len, submit_ns, [complete_ns - submit_ns if completed],
//!                      applied + 1 (0 = none), runs: count, then per run
//!                      tag u8 (0 hashed: first_block, n, n x 16 bytes; 1 zero: first_block, n)
//! marker  (kind 0x02): t_ns, next_seq, next_applied, tag u8, then per tag
//!                      1 instant: generation, label | 2 armed: fault, spec |
//!                      3 fired: fault, seq | 4 released: fault, released | 5 note: text
//!                      (strings: length, UTF-8 bytes)
//! end     (kind 0xFF): records, requests, markers, t_ns, reason u8, digest u64 LE (8 bytes)
//! ```
//! Unsigned integers without a stated width are varints.

use super::{End, EndReason, Flags, Marker, MarkerRecord, Op, Outcome, Record, RequestRecord, Run};

pub const KIND_REQUEST: u8 = 0x01;
pub const KIND_MARKER: u8 = 0x02;
pub const KIND_END: u8 = 0xFF;

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn op_code(op: Op) -> u8 {
    match op {
        Op::Read => 0,
        Op::Write => 1,
        Op::Flush => 2,
        Op::Discard => 3,
        Op::WriteZeroes => 4,
        Op::GetId => 5,
        Op::Malformed => 0xFE,
        Op::Other(_) => 0xFF,
    }
}

fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Ok => 0,
        Outcome::IoError => 1,
        Outcome::Unsupported => 2,
        Outcome::Dropped => 0x80,
        Outcome::Torn => 0x81,
        Outcome::Unanswerable => 0x82,
    }
}

fn reason_code(r: EndReason) -> u8 {
    match r {
        EndReason::Disconnected => 0,
        EndReason::Shutdown => 1,
        EndReason::NeverConnected => 2,
        EndReason::Failed => 3,
    }
}

/// Appends the record (kind, body length, body) to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(64);
    let kind = match record {
        Record::Request(r) => {
            encode_request(r, &mut body);
            KIND_REQUEST
        }
        Record::Marker(m) => {
            encode_marker(m, &mut body);
            KIND_MARKER
        }
    };
    frame(kind, &body, out);
}

/// Appends the end record.
pub fn encode_end(end: &End, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(32);
    put_varint(&mut body, end.records);
    put_varint(&mut body, end.requests);
    put_varint(&mut body, end.markers);
    put_varint(&mut body, end.t_ns);
    body.push(reason_code(end.reason));
    body.extend_from_slice(&end.digest.to_le_bytes());
    frame(KIND_END, &body, out);
}

fn frame(kind: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn encode_request(r: &RequestRecord, b: &mut Vec<u8>) {
    put_varint(b, r.seq);
    put_varint(b, r.queue.into());
    b.push(op_code(r.op));
    if let Op::Other(t) = r.op {
        put_varint(b, t.into());
    }
    b.push(r.flags.0);
    b.push(outcome_code(r.outcome));
    put_varint(b, r.offset);
    put_varint(b, r.len);
    put_varint(b, r.submit_ns);
    if r.outcome.completed() {
        let done = r.complete_ns.unwrap_or(r.submit_ns);
        put_varint(b, done.saturating_sub(r.submit_ns));
    }
    put_varint(b, r.applied.map_or(0, |a| a + 1));
    put_varint(b, r.runs.len() as u64);
    for run in &r.runs {
        match run {
            Run::Hashed {
                first_block,
                hashes,
            } => {
                b.push(0);
                put_varint(b, *first_block);
                put_varint(b, hashes.len() as u64);
                for h in hashes {
                    b.extend_from_slice(h);
                }
            }
            Run::Zero { first_block, count } => {
                b.push(1);
                put_varint(b, *first_block);
                put_varint(b, *count);
            }
        }
    }
}

fn encode_marker(m: &MarkerRecord, b: &mut Vec<u8>) {
    put_varint(b, m.t_ns);
    put_varint(b, m.next_seq);
    put_varint(b, m.next_applied);
    match &m.marker {
        Marker::Instant { generation, label } => {
            b.push(1);
            put_varint(b, (*generation).into());
            put_str(b, label);
        }
        Marker::FaultArmed { fault, spec } => {
            b.push(2);
            put_varint(b, (*fault).into());
            put_str(b, spec);
        }
        Marker::FaultFired { fault, seq } => {
            b.push(3);
            put_varint(b, (*fault).into());
            put_varint(b, *seq);
        }
        Marker::FaultReleased { fault, released } => {
            b.push(4);
            put_varint(b, (*fault).into());
            put_varint(b, *released);
        }
        Marker::Note { text } => {
            b.push(5);
            put_str(b, text);
        }
    }
}

/// A cursor over one record body; errors name what was malformed.
pub struct Body<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Body<'a> {
    pub fn new(bytes: &'a [u8]) -> Body<'a> {
        Body { bytes, pos: 0 }
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| format!("{what}: body ends early"))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    return Err(format!("{what}: varint overflows u64"));
                }
                return Ok(v);
            }
        }
        Err(format!("{what}: varint longer than 10 bytes"))
    }

    fn narrow<T: TryFrom<u64>>(&mut self, what: &str) -> Result<T, String> {
        let v = self.varint(what)?;
        T::try_from(v).map_err(|_| format!("{what}: {v} out of range"))
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| format!("{what}: body ends early"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n: usize = self.narrow(what)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
    }

    fn finish(&self, what: &str) -> Result<(), String> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(format!(
                "{what}: {} bytes left over",
                self.bytes.len() - self.pos
            ))
        }
    }
}

pub fn decode_request(body: &[u8]) -> Result<RequestRecord, String> {
    let mut b = Body::new(body);
    let seq = b.varint("request seq")?;
    let queue = b.narrow("request queue")?;
    let op = match b.u8("request op")? {
        0 => Op::Read,
        1 => Op::Write,
        2 => Op::Flush,
        3 => Op::Discard,
        4 => Op::WriteZeroes,
        5 => Op::GetId,
        0xFE => Op::Malformed,
        0xFF => Op::Other(b.narrow("request raw type")?),
        other => return Err(format!("request op: unknown code {other}")),
    };
    let flags = Flags(b.u8("request flags")?);
    let outcome = match b.u8("request outcome")? {
        0 => Outcome::Ok,
        1 => Outcome::IoError,
        2 => Outcome::Unsupported,
        0x80 => Outcome::Dropped,
        0x81 => Outcome::Torn,
        0x82 => Outcome::Unanswerable,
        other => return Err(format!("request outcome: unknown code {other}")),
    };
    let offset = b.varint("request offset")?;
    let len = b.varint("request len")?;
    let submit_ns = b.varint("request submit time")?;
    let complete_ns = if outcome.completed() {
        let d = b.varint("request completion time")?;
        Some(
            submit_ns
                .checked_add(d)
                .ok_or("request completion time overflows")?,
        )
    } else {
        None
    };
    let applied = b.varint("request applied")?.checked_sub(1);
    let nruns: usize = b.narrow("request run count")?;
    let mut runs = Vec::with_capacity(nruns.min(1024));
    for _ in 0..nruns {
        let tag = b.u8("run tag")?;
        let first_block = b.varint("run first block")?;
        match tag {
            0 => {
                let n: usize = b.narrow("run length")?;
                let raw = b.bytes(
                    n.checked_mul(16).ok_or("run length overflows")?,
                    "run hashes",
                )?;
                let hashes = raw
                    .chunks_exact(16)
                    .map(|c| c.try_into().expect("16-byte chunk"))
                    .collect();
                runs.push(Run::Hashed {
                    first_block,
                    hashes,
                });
            }
            1 => runs.push(Run::Zero {
                first_block,
                count: b.varint("run length")?,
            }),
            other => return Err(format!("run tag: unknown {other}")),
        }
    }
    b.finish("request")?;
    Ok(RequestRecord {
        seq,
        queue,
        op,
        flags,
        outcome,
        offset,
        len,
        submit_ns,
        complete_ns,
        applied,
        runs,
    })
}

pub fn decode_marker(body: &[u8]) -> Result<MarkerRecord, String> {
    let mut b = Body::new(body);
    let t_ns = b.varint("marker time")?;
    let next_seq = b.varint("marker next seq")?;
    let next_applied = b.varint("marker next applied")?;
    let marker = match b.u8("marker tag")? {
        1 => Marker::Instant {
            generation: b.narrow("instant generation")?,
            label: b.string("instant label")?,
        },
        2 => Marker::FaultArmed {
            fault: b.narrow("armed fault")?,
            spec: b.string("armed spec")?,
        },
        3 => Marker::FaultFired {
            fault: b.narrow("fired fault")?,
            seq: b.varint("fired seq")?,
        },
        4 => Marker::FaultReleased {
            fault: b.narrow("released fault")?,
            released: b.varint("released count")?,
        },
        5 => Marker::Note {
            text: b.string("note")?,
        },
        other => return Err(format!("marker tag: unknown {other}")),
    };
    b.finish("marker")?;
    Ok(MarkerRecord {
        t_ns,
        next_seq,
        next_applied,
        marker,
    })
}

pub fn decode_end(body: &[u8]) -> Result<End, String> {
    let mut b = Body::new(body);
    let records = b.varint("end records")?;
    let requests = b.varint("end requests")?;
    let markers = b.varint("end markers")?;
    let t_ns = b.varint("end time")?;
    let reason = match b.u8("end reason")? {
        0 => EndReason::Disconnected,
        1 => EndReason::Shutdown,
        2 => EndReason::NeverConnected,
        3 => EndReason::Failed,
        other => return Err(format!("end reason: unknown {other}")),
    };
    let digest = u64::from_le_bytes(b.bytes(8, "end digest")?.try_into().expect("8 bytes"));
    b.finish("end")?;
    Ok(End {
        records,
        requests,
        markers,
        t_ns,
        reason,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0,
            1,
            127,
            128,
            16383,
            16384,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Body::new(&out).varint("v").unwrap(), v, "{v}");
        }
        // Eleven continuation bytes never decode.
        assert!(Body::new(&[0xFF; 11]).varint("v").is_err());
        // A tenth byte above 1 overflows.
        let mut over = vec![0xFF; 9];
        over.push(0x02);
        assert!(Body::new(&over).varint("v").is_err());
    }
}

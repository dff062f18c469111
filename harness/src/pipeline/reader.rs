//! The host end of the harness's own witness (`bw-pipe read` on `bw.reader`): the
//! snapshot and live recording points for a pipeline that keeps no witness of its own.
//! The guest sends the bytes it read; they are hashed here, so the guest's part stays a
//! plain reader and nothing the product says enters these columns.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bw_guest::pipe::wire::{LiveRead, ReaderDecoder, ReaderEvent};

use super::WitnessBlock;
use crate::model::BlockHash;
use crate::record::Live;

/// One volume's reading.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub volume: String,
    /// Blocks the reader said it would read.
    pub expected: u64,
    pub blocks: BTreeMap<u64, WitnessBlock>,
    /// Blocks whose snapshot read failed (an invalidated snapshot answers EIO).
    pub snapshot_errors: u64,
    /// The end record arrived.
    pub complete: bool,
}

#[derive(Default)]
struct State {
    current: Option<Reading>,
    finished: Vec<Reading>,
    problems: Vec<String>,
}

/// The host end of `bw.reader`.
pub struct ReaderPort {
    state: Arc<Mutex<State>>,
}

impl ReaderPort {
    pub fn start(mut stream: UnixStream) -> ReaderPort {
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        std::thread::Builder::new()
            .name("bw-reader".into())
            .spawn(move || {
                let mut decoder = ReaderDecoder::default();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    decoder.push(&buf[..n]);
                    // Hash outside the lock; publish per batch.
                    let mut events = Vec::new();
                    let mut problem = None;
                    loop {
                        match decoder.next_event() {
                            Ok(Some(e)) => events.push(e),
                            Ok(None) => break,
                            Err(e) => {
                                problem = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    let hashed: Vec<Hashed> = events.into_iter().map(hash_event).collect();
                    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                    for h in hashed {
                        s.take(h);
                    }
                    if let Some(p) = problem {
                        s.problems.push(p);
                    }
                }
            })
            .expect("spawning a thread");
        ReaderPort { state }
    }

    /// Blocks read so far in the current session.
    pub fn blocks_read(&self) -> u64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.current.as_ref().map_or(0, |r| r.blocks.len() as u64)
    }

    /// The reading of `volume`, once its end record arrived or `grace` passed (then
    /// incomplete); None when nothing arrived for it.
    pub fn take(&self, volume: &str, grace: Duration) -> (Option<Reading>, Vec<String>) {
        let started = Instant::now();
        loop {
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(i) = s.finished.iter().position(|r| r.volume == volume) {
                    let r = s.finished.remove(i);
                    return (Some(r), std::mem::take(&mut s.problems));
                }
                if started.elapsed() >= grace {
                    let current = s.current.take().filter(|r| r.volume == volume);
                    return (current, std::mem::take(&mut s.problems));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Forgets everything (before a backup).
    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = State::default();
    }
}

/// A decoded event with its hashes.
enum Hashed {
    Start {
        volume: String,
        blocks: u64,
    },
    Block {
        block: u64,
        witness: Option<WitnessBlock>,
    },
    End,
}

fn hash_event(e: ReaderEvent) -> Hashed {
    match e {
        ReaderEvent::Start { volume, blocks } => Hashed::Start { volume, blocks },
        ReaderEvent::End { .. } => Hashed::End,
        ReaderEvent::Block {
            block,
            snapshot,
            live,
        } => Hashed::Block {
            block,
            witness: snapshot.map(|s| WitnessBlock {
                snapshot: BlockHash::of(&s),
                live: match live {
                    LiveRead::Equal => Live::Equal,
                    LiveRead::Differs(l) => Live::Differs(BlockHash::of(&l)),
                    LiveRead::NotRead => Live::NotRead,
                },
                source: None,
            }),
        },
    }
}

impl State {
    fn take(&mut self, h: Hashed) {
        match h {
            Hashed::Start { volume, blocks } => {
                if let Some(old) = self.current.take() {
                    self.finished.push(old);
                }
                self.current = Some(Reading {
                    volume,
                    expected: blocks,
                    ..Reading::default()
                });
            }
            Hashed::Block { block, witness } => {
                let Some(r) = self.current.as_mut() else {
                    self.problems
                        .push(format!("reader block {block} outside a session"));
                    return;
                };
                match witness {
                    Some(w) => {
                        r.blocks.insert(block, w);
                    }
                    None => r.snapshot_errors += 1,
                }
            }
            Hashed::End => {
                if let Some(mut r) = self.current.take() {
                    r.complete = true;
                    self.finished.push(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bw_guest::pipe::wire::{reader_end, reader_header, TAG_DIFFERS, TAG_SNAP_ERROR};
    use std::io::Write;

    #[test]
    fn blocks_are_hashed_on_the_host() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let port = ReaderPort::start(host);
        let mut bytes = reader_header("data", 2);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.push(TAG_DIFFERS);
        bytes.extend_from_slice(&[1u8; 4096]);
        bytes.extend_from_slice(&[2u8; 4096]);
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.push(TAG_SNAP_ERROR);
        bytes.extend(reader_end(2));
        guest.write_all(&bytes).unwrap();
        let (r, problems) = port.take("data", Duration::from_secs(5));
        let r = r.expect("a reading");
        assert!(problems.is_empty());
        assert!(r.complete);
        assert_eq!(r.snapshot_errors, 1);
        let w = r.blocks[&0];
        assert_eq!(w.snapshot, BlockHash::of(&[1u8; 4096]));
        assert_eq!(w.live, Live::Differs(BlockHash::of(&[2u8; 4096])));
    }
}

//! The search for the best cut: given, for every judged block, the disjoint spans of
//! instants its content is consistent with, find the instants that explain the most
//! blocks. A sweep over the sorted span ends: between two consecutive distinct ends the
//! set of explained blocks is constant (an elementary segment), so the best segment is
//! found by counting.
//!
//! Tie breaking: of the segments that explain the most blocks, the earliest is chosen;
//! the others are counted. A block's spans are merged before they reach the sweep (no two
//! of them touch), so at every segment boundary some block starts or stops being
//! explained: two best segments never hold the same set of blocks.

use rayon::slice::ParallelSliceMut;

use super::time::{Moment, Span};

/// One end of a block's span: +1 where it starts, -1 where it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub at: Moment,
    pub delta: i32,
}

impl Event {
    /// The two events of a non-empty span.
    pub fn of(span: Span) -> [Event; 2] {
        [
            Event {
                at: span.from,
                delta: 1,
            },
            Event {
                at: span.until,
                delta: -1,
            },
        ]
    }
}

/// The earliest best segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Best {
    pub span: Span,
    /// Blocks explained anywhere in `span`.
    pub explained: u64,
    /// Other segments that explain as many blocks.
    pub other_best_spans: u64,
}

/// Sorts `events` and sweeps them. With no events, the whole clock explains nothing.
pub(crate) fn best_cut(events: &mut [Event]) -> Best {
    events.par_sort_unstable_by_key(|e| e.at);
    let mut best: Option<Best> = None;
    let mut consider = |span: Span, count: i64| {
        let count = count.max(0) as u64;
        match &mut best {
            Some(b) if count < b.explained => {}
            Some(b) if count == b.explained => b.other_best_spans += 1,
            Some(_) | None => {
                best = Some(Best {
                    span,
                    explained: count,
                    other_best_spans: 0,
                })
            }
        }
    };
    let mut count = 0i64;
    let mut from = Moment::START;
    let mut i = 0;
    while i < events.len() {
        let at = events[i].at;
        if at > from {
            consider(Span { from, until: at }, count);
        }
        while i < events.len() && events[i].at == at {
            count += i64::from(events[i].delta);
            i += 1;
        }
        from = at;
    }
    if from < Moment::END {
        consider(
            Span {
                from,
                until: Moment::END,
            },
            count,
        );
    }
    best.unwrap_or(Best {
        span: Span::ALL,
        explained: 0,
        other_best_spans: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ns: u64) -> Moment {
        Moment::at(ns).unwrap()
    }

    fn span(from: Moment, until: Moment) -> Span {
        Span { from, until }
    }

    fn sweep(spans: &[Span]) -> Best {
        let mut events: Vec<Event> = spans.iter().flat_map(|s| Event::of(*s)).collect();
        best_cut(&mut events)
    }

    #[test]
    fn cases() {
        let cases: &[(&str, Vec<Span>, Best)] = &[
            (
                "nothing to explain: the whole clock, zero blocks",
                vec![],
                Best {
                    span: Span::ALL,
                    explained: 0,
                    other_best_spans: 0,
                },
            ),
            (
                "one unbounded span",
                vec![Span::ALL],
                Best {
                    span: Span::ALL,
                    explained: 1,
                    other_best_spans: 0,
                },
            ),
            (
                "overlap is the intersection",
                vec![span(Moment::START, at(10)), span(at(5), Moment::END)],
                Best {
                    span: span(at(5), at(10)),
                    explained: 2,
                    other_best_spans: 0,
                },
            ),
            (
                "touching spans do not overlap (half-open)",
                vec![span(Moment::START, at(5)), span(at(5), Moment::END)],
                Best {
                    span: span(Moment::START, at(5)),
                    explained: 1,
                    other_best_spans: 1,
                },
            ),
            (
                "two equally good segments: the earliest wins, the other is counted",
                vec![span(at(0), at(10)), span(at(0), at(3)), span(at(7), at(20))],
                Best {
                    span: span(at(0), at(3)),
                    explained: 2,
                    other_best_spans: 1,
                },
            ),
            (
                "the most blocks win over the earliest",
                vec![span(at(0), at(2)), span(at(5), at(9)), span(at(6), at(9))],
                Best {
                    span: span(at(6), at(9)),
                    explained: 2,
                    other_best_spans: 0,
                },
            ),
        ];
        for (name, spans, want) in cases {
            assert_eq!(sweep(spans), *want, "{name}");
        }
    }
}

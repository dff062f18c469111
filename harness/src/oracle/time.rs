//! The history's clock: a [`Moment`] is an instant in nanoseconds from the recording's
//! origin, or one of the clock's two open ends, and a [`Span`] is a half-open stretch of
//! moments. Version 0 of a block is valid from the start of time, and the last version
//! until its end, so both ends are part of the domain.

use std::fmt;

use serde::{Serialize, Serializer};

/// An instant on the history's clock, or one of its two ends. Ordered:
/// [`Moment::START`] < every instant < [`Moment::END`].
///
/// Encoded in one u64 (START = 0, instant `ns` = `ns + 1`, END = `u64::MAX`) so that the
/// sweep sorts plain integers.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Moment(u64);

impl Moment {
    /// Before every event of the history (minus infinity).
    pub const START: Moment = Moment(0);
    /// After every event of the history (plus infinity).
    pub const END: Moment = Moment(u64::MAX);
    /// The latest instant the clock can hold, in ns.
    pub const LATEST_NS: u64 = u64::MAX - 2;
    /// The latest instant: at or after every event of a valid history.
    pub const LAST: Moment = Moment(u64::MAX - 1);

    /// The instant `ns` from the origin; None past [`Moment::LATEST_NS`].
    pub const fn at(ns: u64) -> Option<Moment> {
        if ns <= Moment::LATEST_NS {
            Some(Moment(ns + 1))
        } else {
            None
        }
    }

    /// Callers have checked `ns` against [`Moment::LATEST_NS`] (the history's validation).
    pub(crate) const fn at_checked(ns: u64) -> Moment {
        debug_assert!(ns <= Moment::LATEST_NS);
        Moment(ns + 1)
    }

    /// The instant in ns, or None for either end.
    pub const fn ns(self) -> Option<u64> {
        match self.0 {
            0 | u64::MAX => None,
            n => Some(n - 1),
        }
    }

    /// Nanoseconds from `earlier_ns` to this moment: 0 when this is not later (START), and
    /// `u64::MAX` for END.
    pub fn ns_since(self, earlier_ns: u64) -> u64 {
        match (self.ns(), self == Moment::END) {
            (Some(t), _) => t.saturating_sub(earlier_ns),
            (None, true) => u64::MAX,
            (None, false) => 0,
        }
    }
}

impl fmt::Display for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ns(), *self == Moment::START) {
            (Some(ns), _) => write!(f, "{ns} ns"),
            (None, true) => f.write_str("-inf"),
            (None, false) => f.write_str("+inf"),
        }
    }
}

impl fmt::Debug for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An instant as its ns; the two ends as the strings "-inf" and "+inf".
impl Serialize for Moment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.ns(), *self == Moment::START) {
            (Some(ns), _) => s.serialize_u64(ns),
            (None, true) => s.serialize_str("-inf"),
            (None, false) => s.serialize_str("+inf"),
        }
    }
}

/// The moments `from <= t < until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    pub from: Moment,
    pub until: Moment,
}

impl Span {
    pub const ALL: Span = Span {
        from: Moment::START,
        until: Moment::END,
    };

    pub fn contains(&self, t: Moment) -> bool {
        self.from <= t && t < self.until
    }

    pub fn is_empty(&self) -> bool {
        self.from >= self.until
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.from, self.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_ends() {
        let a = Moment::at(0).unwrap();
        let b = Moment::at(7).unwrap();
        assert!(Moment::START < a && a < b && b < Moment::END);
        assert_eq!(b.ns(), Some(7));
        assert_eq!(Moment::START.ns(), None);
        assert_eq!(Moment::END.ns(), None);
        assert_eq!(Moment::at(Moment::LATEST_NS + 1), None);
        assert!(Moment::at(Moment::LATEST_NS).unwrap() < Moment::END);
        assert_eq!(b.ns_since(3), 4);
        assert_eq!(Moment::START.ns_since(3), 0);
        assert_eq!(Moment::END.ns_since(3), u64::MAX);
        assert_eq!(
            Span {
                from: Moment::START,
                until: b
            }
            .to_string(),
            "[-inf, 7 ns)"
        );
        assert!(Span::ALL.contains(a) && !Span::ALL.is_empty());
        assert_eq!(
            serde_json::to_string(&Span::ALL).unwrap(),
            r#"{"from":"-inf","until":"+inf"}"#
        );
    }
}

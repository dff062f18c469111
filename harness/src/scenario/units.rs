//! Parsing of the human units scenario files use: sizes ("512MiB"), durations ("20s"),
//! percentages ("10%"), rates per second ("20MiB/s", "100ops/s") and paces, a rate per
//! share of the backup's progress ("1MiB per 4%", "20ops per 5%").
//!
//! Binary units only: a QA author who writes "512MB" most likely means MiB, and silently
//! taking 10^6 would make a volume 5% smaller than the field story's; so it is an error.

use bw_guest::units::split_number;
pub use bw_guest::units::{parse_duration, parse_rate, parse_size, Rate};

/// A size given either absolutely or as a share of something (the volume).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeOrPercent {
    Bytes(u64),
    Percent(f64),
}

impl SizeOrPercent {
    /// Resolves against `whole` bytes, rounded down to a 4 KiB multiple.
    pub fn resolve(self, whole: u64) -> u64 {
        let bytes = match self {
            SizeOrPercent::Bytes(b) => b,
            SizeOrPercent::Percent(p) => ((whole as f64) * p / 100.0) as u64,
        };
        bytes / 4096 * 4096
    }
}

pub const SIZE_HELP: &str =
    "a size is a number and a binary unit: B, KiB, MiB, GiB or TiB, e.g. \"512MiB\"";
pub const DURATION_HELP: &str =
    "a duration is a number and a unit: ms, s, m or h, e.g. \"20s\" or \"1.5m\"";
pub const PERCENT_HELP: &str = "a share is a number and %, e.g. \"10%\"";
pub const RATE_HELP: &str = "a rate is a size or a number of operations per share of the \
     backup's progress (\"1MiB per 4%\", \"20ops per 5%\"), or per second (\"20MiB/s\", \
     \"100ops/s\")";

/// What a paced workload is granted at each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaceAmount {
    /// Data bytes written.
    Bytes(u64),
    /// Operations completed.
    Ops(u64),
}

/// A rate per share of the backup's progress: `amount` more at the start of every
/// `share` percent of the backup, so what a `during` workload writes, and where it
/// writes it relative to the backup's reads, does not depend on the machine's speed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pace {
    pub amount: PaceAmount,
    /// Percent of the backup's progress per step, in (0, 100].
    pub share: f64,
}

/// The smallest share a pace may step by: each step costs the backup a round trip to
/// the guest, and 100 steps are plenty of resolution.
pub const MIN_PACE_SHARE: f64 = 1.0;

impl Pace {
    /// Steps over a whole backup: one grant at the start of each.
    pub fn steps(&self) -> u32 {
        (100.0 / self.share).ceil().max(1.0) as u32
    }

    /// The first position (of `total` blocks) of step `k` (from 0): where the backup is
    /// held while the workload uses the grant of step `k`.
    pub fn boundary(&self, k: u32, total: u64) -> u64 {
        let at = (total as f64) * f64::from(k) * self.share / 100.0;
        (at.floor() as u64).min(total)
    }

    /// The cumulative allowance after the grant of step `k` (from 0).
    pub fn allowance(&self, k: u32) -> u64 {
        let per = match self.amount {
            PaceAmount::Bytes(b) => b,
            PaceAmount::Ops(n) => n,
        };
        per.saturating_mul(u64::from(k) + 1)
    }

    /// An allowance as bw-workload's allowance file writes it.
    pub fn allowance_line(&self, amount: u64) -> String {
        match self.amount {
            PaceAmount::Bytes(_) => amount.to_string(),
            PaceAmount::Ops(_) => format!("{amount}ops"),
        }
    }
}

impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.amount {
            PaceAmount::Bytes(b) => write!(f, "{} per {}%", format_size(b), self.share),
            PaceAmount::Ops(n) => write!(f, "{n}ops per {}%", self.share),
        }
    }
}

/// Parses "1MiB per 4%" or "20ops per 5%" (the share unchecked beyond 0 < share <= 100).
pub fn parse_pace(text: &str) -> Option<Pace> {
    let (amount, share) = text.trim().split_once(" per ")?;
    let amount = amount.trim();
    let amount = match amount.strip_suffix("ops") {
        Some(n) => {
            let n = n.trim();
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            PaceAmount::Ops(n.parse().ok()?)
        }
        None => PaceAmount::Bytes(parse_size(amount)?),
    };
    let share = parse_percent(share)?;
    (share > 0.0).then_some(Pace { amount, share })
}

/// Parses "10%" or "0.5%" into a percentage in 0..=100.
pub fn parse_percent(text: &str) -> Option<f64> {
    let (value, unit) = split_number(text)?;
    (unit == "%" && value <= 100.0).then_some(value)
}

/// Parses a size or a percentage ("300MiB" or "50%").
pub fn parse_size_or_percent(text: &str) -> Option<SizeOrPercent> {
    if text.trim_end().ends_with('%') {
        parse_percent(text).map(SizeOrPercent::Percent)
    } else {
        parse_size(text).map(SizeOrPercent::Bytes)
    }
}

/// Formats a byte count the way scenario files write it, exactly when possible.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, scale) in UNITS {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{name}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

/// A size for people, rounded: "37.2GiB", "512MiB", "900B".
pub fn format_size_approx(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, scale) in UNITS {
        if bytes >= scale {
            return format!("{:.1}{name}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("512MiB", Some(512 << 20)),
            ("4KiB", Some(4096)),
            ("1.5GiB", Some(3 << 29)),
            ("4096", Some(4096)),
            ("4096B", Some(4096)),
            ("1_024KiB", Some(1 << 20)),
            (" 8 MiB ", Some(8 << 20)),
            ("512MB", None),
            ("MiB", None),
            ("-1MiB", None),
            ("0.5B", None),
            ("1.MiB", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), *want, "{text:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("20"), None);
        assert_eq!(parse_duration("20 sec"), None);
    }

    #[test]
    fn percents_and_rates() {
        assert_eq!(parse_percent("10%"), Some(10.0));
        assert_eq!(parse_percent("101%"), None);
        assert_eq!(parse_percent("10"), None);
        assert_eq!(
            parse_size_or_percent("50%"),
            Some(SizeOrPercent::Percent(50.0))
        );
        assert_eq!(
            parse_size_or_percent("8MiB"),
            Some(SizeOrPercent::Bytes(8 << 20))
        );
        assert_eq!(SizeOrPercent::Percent(10.0).resolve(512 << 20), 53_686_272);
        assert_eq!(parse_rate("20MiB/s"), Some(Rate::BytesPerSec(20 << 20)));
        assert_eq!(parse_rate("100ops/s"), Some(Rate::OpsPerSec(100)));
        assert_eq!(parse_rate("100ops"), None);
        assert_eq!(parse_rate("fast/s"), None);
    }

    #[test]
    fn paces() {
        let cases: &[(&str, Option<(PaceAmount, f64)>)] = &[
            ("1MiB per 4%", Some((PaceAmount::Bytes(1 << 20), 4.0))),
            ("20ops per 5%", Some((PaceAmount::Ops(20), 5.0))),
            (
                " 512KiB per 2.5% ",
                Some((PaceAmount::Bytes(512 << 10), 2.5)),
            ),
            ("1MiB per 0%", None),
            ("1MiB per 101%", None),
            ("1MiB per 4", None),
            ("1MB per 4%", None),
            ("ops per 4%", None),
            ("1MiB/s", None),
            ("1MiB per", None),
        ];
        for (text, want) in cases {
            let got = parse_pace(text).map(|p| (p.amount, p.share));
            assert_eq!(got, *want, "{text:?}");
        }
        let p = parse_pace("1MiB per 4%").unwrap();
        assert_eq!(p.to_string(), "1MiB per 4%");
        assert_eq!(parse_pace(&p.to_string()), Some(p));
        assert_eq!(p.steps(), 25);
        assert_eq!(p.boundary(0, 1000), 0);
        assert_eq!(p.boundary(1, 1000), 40);
        assert_eq!(p.boundary(24, 1000), 960);
        assert_eq!(p.allowance(0), 1 << 20);
        assert_eq!(p.allowance(24), 25 << 20);
        assert_eq!(p.allowance_line(3 << 20), "3145728");
        let ops = parse_pace("20ops per 30%").unwrap();
        // 30% steps: 0, 30, 60, 90 → four grants.
        assert_eq!(ops.steps(), 4);
        assert_eq!(ops.boundary(3, 100), 90);
        assert_eq!(ops.allowance_line(ops.allowance(3)), "80ops");
    }

    #[test]
    fn sizes_format_back() {
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(4097), "4097B");
    }
}

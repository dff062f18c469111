//! Parsing of the human units scenario files use: sizes ("512MiB"), durations ("20s"),
//! percentages ("10%") and rates ("20MiB/s", "100ops/s").
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
pub const RATE_HELP: &str =
    "a rate is a size per second (\"20MiB/s\") or operations per second (\"100ops/s\")";

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
    fn sizes_format_back() {
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(4097), "4097B");
    }
}

//! The human units the harness and the workload generator share: sizes ("512MiB"),
//! durations ("20s") and rates ("20MiB/s", "100ops/s"). Binary units only: "512MB" is
//! refused, because it is most likely a slip for MiB.

use std::time::Duration;

/// A rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rate {
    /// Bytes per second.
    BytesPerSec(u64),
    /// Operations per second.
    OpsPerSec(u64),
}

/// Splits "12.5MiB" into (12.5, "MiB"); None without a leading number.
pub fn split_number(text: &str) -> Option<(f64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let digits: String = text[..end].chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || digits.starts_with('.') || digits.ends_with('.') {
        return None;
    }
    Some((digits.parse().ok()?, text[end..].trim()))
}

/// Parses "512MiB", "4KiB", "1.5GiB", "4096B" or "4096" into bytes (binary units only).
pub fn parse_size(text: &str) -> Option<u64> {
    let (value, unit) = split_number(text)?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes.fract() != 0.0 || bytes >= u64::MAX as f64 {
        return None;
    }
    Some(bytes as u64)
}

/// Parses "20s", "500ms", "1.5m", "2h".
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (value, unit) = split_number(text)?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds <= 1.0e9).then(|| Duration::from_secs_f64(seconds))
}

/// Parses "20MiB/s" or "100ops/s".
pub fn parse_rate(text: &str) -> Option<Rate> {
    let per_second = text.trim().strip_suffix("/s")?;
    if let Some(ops) = per_second.strip_suffix("ops") {
        let ops = ops.trim();
        if ops.is_empty() || !ops.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        return ops.parse().ok().map(Rate::OpsPerSec);
    }
    parse_size(per_second).map(Rate::BytesPerSec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512MB"), None);
        assert_eq!(parse_size("0.3B"), None);
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("20"), None);
        assert_eq!(parse_rate("100ops/s"), Some(Rate::OpsPerSec(100)));
        assert_eq!(parse_rate("1.5MiB/s"), Some(Rate::BytesPerSec(3 << 19)));
        assert_eq!(parse_rate("1.5ops/s"), None);
        assert_eq!(split_number("12.5 MiB"), Some((12.5, "MiB")));
    }
}

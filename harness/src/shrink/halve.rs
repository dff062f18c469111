//! Smaller values for the quantities a scenario writes as text: sizes, shares,
//! durations, counts and rates. Each function returns the values to try, most
//! aggressive first, every one strictly smaller than the input and none zero: a value
//! that cannot shrink gives an empty list, which is how the shrinker's numbers reach a
//! fixed point.
//!
//! Rates are read as a leading quantity and an untouched rest (`1MiB` + `/s`,
//! `20ops` + ` per 5%`), so the shrinker keeps working whatever a rate may say after
//! its quantity; the scenario loader decides whether the result is valid.

use std::time::Duration;

use crate::scenario::units::{format_size, parse_size};

/// The divisors tried, in order: an eighth first (a big step that often holds), then
/// a half.
const DIVISORS: [u64; 2] = [8, 2];

/// Smaller sizes of a volume: whole MiB when at least 1 MiB, else 4 KiB multiples.
pub fn volume_sizes(bytes: u64) -> Vec<u64> {
    smaller(bytes, |b| {
        let unit = if b >= 1 << 20 { 1 << 20 } else { 4096 };
        b / unit * unit
    })
}

/// Smaller sizes of data (an amount, a fill): 4 KiB multiples.
pub fn data_sizes(bytes: u64) -> Vec<u64> {
    smaller(bytes, |b| b / 4096 * 4096)
}

/// Smaller counts (operations).
pub fn counts(n: u64) -> Vec<u64> {
    smaller(n, |n| n)
}

/// Shorter durations, in whole milliseconds.
pub fn durations(d: Duration) -> Vec<Duration> {
    smaller(d.as_millis() as u64, |ms| ms)
        .into_iter()
        .map(Duration::from_millis)
        .collect()
}

/// Smaller shares (percent); a share under 1% is not tried (the fill cut tries none).
pub fn percents(p: f64) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for d in DIVISORS {
        // Two decimals are plenty for a fill share and keep the file readable.
        let v = (p / d as f64 * 100.0).floor() / 100.0;
        if v >= 1.0 && v < p && !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// How a duration is written back: `20s` or `1500ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// How a share is written back: `25%`, `12.5%`.
pub fn format_percent(p: f64) -> String {
    format!("{p}%")
}

/// The leading quantity of a rate: bytes or operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    Bytes(u64),
    Ops(u64),
}

/// Splits a rate into its leading quantity and the rest (`1MiB/s` → 1 MiB, `/s`).
pub fn split_rate(text: &str) -> Option<(Quantity, &str)> {
    let t = text.trim_start();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let after_num = &t[num_end..];
    let unit_len = after_num
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(after_num.len());
    let (unit, rest) = after_num.split_at(unit_len);
    if num_end == 0 || unit.is_empty() {
        return None;
    }
    let number = &t[..num_end];
    let q = if unit == "ops" {
        Quantity::Ops(number.replace('_', "").parse().ok()?)
    } else {
        Quantity::Bytes(parse_size(&format!("{number}{unit}"))?)
    };
    Some((q, rest))
}

/// Slower versions of a rate: its quantity halved (only halved: a rate is a pace, and
/// big steps in pace change a race more than a smaller plan means to), never below one
/// 4 KiB block (a workload writes whole blocks: a smaller figure cuts nothing real and
/// costs a confirmed run per halving).
pub fn rates(text: &str) -> Vec<String> {
    let Some((q, rest)) = split_rate(text) else {
        return Vec::new();
    };
    match q {
        Quantity::Bytes(b) => {
            let half = if b / 2 >= 8192 {
                b / 2 / 4096 * 4096
            } else {
                b / 2
            };
            if half < 4096 || half >= b {
                return Vec::new();
            }
            vec![format!("{}{rest}", format_size(half))]
        }
        Quantity::Ops(n) => {
            if n / 2 == 0 {
                return Vec::new();
            }
            vec![format!("{}ops{rest}", n / 2)]
        }
    }
}

fn smaller(value: u64, round: impl Fn(u64) -> u64) -> Vec<u64> {
    let mut out = Vec::new();
    for d in DIVISORS {
        let v = round(value / d);
        if v > 0 && v < value && !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_smaller_and_none_is_zero() {
        assert_eq!(volume_sizes(512 << 20), vec![64 << 20, 256 << 20]);
        assert_eq!(volume_sizes(3 << 20), vec![384 << 10, 1 << 20]);
        assert_eq!(volume_sizes(1 << 20), vec![128 << 10, 512 << 10]);
        assert_eq!(volume_sizes(4096), Vec::<u64>::new());
        assert_eq!(data_sizes(10_000), vec![4096]);
        assert_eq!(counts(5000), vec![625, 2500]);
        assert_eq!(counts(1), Vec::<u64>::new());
        assert_eq!(counts(3), vec![1]);
        assert_eq!(
            durations(Duration::from_secs(20)),
            vec![Duration::from_millis(2500), Duration::from_secs(10)]
        );
        assert_eq!(percents(50.0), vec![6.25, 25.0]);
        assert_eq!(percents(1.5), Vec::<f64>::new());
        assert_eq!(format_percent(12.5), "12.5%");
        assert_eq!(format_percent(25.0), "25%");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2500ms");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
    }

    #[test]
    fn rates_halve_their_quantity_and_keep_the_rest() {
        let cases: &[(&str, &[&str])] = &[
            ("1MiB/s", &["512KiB/s"]),
            ("20MiB/s", &["10MiB/s"]),
            ("100ops/s", &["50ops/s"]),
            ("1ops/s", &[]),
            ("12KiB/s", &["6KiB/s"]),
            ("1MiB per 4%", &["512KiB per 4%"]),
            ("20ops per 5%", &["10ops per 5%"]),
            ("fast", &[]),
            ("1B/s", &[]),
            // Never below one 4 KiB block.
            ("8KiB per 4%", &["4KiB per 4%"]),
            ("4KiB per 4%", &[]),
            ("6KiB/s", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(rates(text), want.to_vec(), "{text}");
        }
        assert_eq!(
            split_rate("1MiB per 4%"),
            Some((Quantity::Bytes(1 << 20), " per 4%"))
        );
    }
}

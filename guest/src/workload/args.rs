//! The `bw-workload` command line: parsing and validation into a [`Config`].
//!
//! Units are the ones scenario files use (harness `scenario::units`), so the harness can
//! pass a scenario's values through unchanged: binary sizes ("512MiB", "4096"), durations
//! with a unit ("20s", "500ms"), rates per second ("20MiB/s", "100ops/s").

use std::ffi::OsString;
use std::path::PathBuf;

use super::{Config, Kind, Target, BLOCK, DEFAULT_PACED_TIMEOUT};
use crate::units::{parse_duration, parse_rate, parse_size, Rate};

/// The help text printed by `bw-workload --help` and after a usage error.
pub const USAGE: &str = "\
usage: bw-workload KIND (--dir DIR | --device DEV) [options]

kinds:
  fill             create files totalling --bytes (sizes from the seed), then sync
  overwrite        random 4 KiB-aligned in-place writes into existing files
  append           append blocks to existing files
  delete-rewrite   delete files and write new ones, so freed space is reused
  fill-to-full     create files until the filesystem is full (ENOSPC is expected)
  metadata-churn   create/rename/unlink/mkdir/chmod/truncate small files
  With --device (a raw block device, filesystem \"none\"): fill, overwrite, fill-to-full.

options:
  --seed N            seed of the operation sequence (default 0)
  --writer ID         writer id put into every stamp (default 0)
  --rate R            limit by the wall clock: \"20MiB/s\" or \"100ops/s\"
  --paced FILE        pace by an allowance the harness writes into FILE (cumulative,
                      one amount a line: \"1048576\" or \"1MiB\" for bytes, \"12ops\" for
                      operations; a last line \"end\" makes it final); operations run
                      while what is done is below it, and FILE.done gets the progress
                      as JSON (temp + rename) after every operation. Excludes --rate
                      and --duration.
  --paced-timeout D   longest wait for the allowance to grow (default 10m)
  --duration D        stop after D (\"20s\", \"500ms\", \"2m\")
  --bytes SIZE        stop after SIZE of data; for fill, the total size to create
  --ops N             stop after N operations
  --stamped           every filesystem block written is a stamped piece naming its device
                      offset (FIEMAP, O_DIRECT); 4 KiB pieces on a raw device
  --sync N            syncfs (fsync for --device) after every N operations
  --log FILE          write one JSON line per 4 KiB block written
  --set-size SIZE     working set created when there are no files to work on (default 16MiB)
  --max-file-size SIZE  largest file created (default 8MiB)
  --max-write SIZE    largest single overwrite or append (default 64KiB)

SIGTERM or SIGINT stops the run within a second (unless a write is blocked on a frozen
filesystem); the JSON summary goes to stdout. Exit: 0 done, 1 ran with errors or wrote
nothing although asked to (the summary's \"failure\"), 2 usage or start failure.";

/// A command line that cannot be run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("help requested")]
    Help,
    #[error("missing the workload kind")]
    MissingKind,
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    #[error("unexpected argument {0:?}")]
    Unexpected(String),
    #[error("argument {0:?} is not UTF-8")]
    NotUtf8(OsString),
    #[error("option {option} needs a value")]
    MissingValue { option: &'static str },
    #[error("option {option} takes no value")]
    NoValueAllowed { option: &'static str },
    #[error("option {option} is given twice")]
    Repeated { option: &'static str },
    #[error("option {option}: {value:?} is not {expected}")]
    BadValue {
        option: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("one of --dir or --device is required")]
    NoTarget,
    #[error("--dir and --device exclude each other")]
    TwoTargets,
    #[error("kind {kind} needs a filesystem: use --dir, not --device")]
    NeedsDir { kind: Kind },
    #[error("fill over a directory needs --bytes, the total size to create")]
    FillNeedsBytes,
    #[error(
        "--paced excludes {option}: a paced run's amount must not depend on the machine's speed"
    )]
    PacedExcludes { option: &'static str },
    #[error("option {option} needs {needs}")]
    Requires {
        option: &'static str,
        needs: &'static str,
    },
}

const SIZE: &str = "a size such as 4096, 64KiB, 16MiB or 1GiB";
const BLOCK_SIZE_MULTIPLE: &str = "a size that is a non-zero multiple of 4KiB";
const DURATION: &str = "a duration with a unit: ms, s, m or h (e.g. 20s)";
const RATE: &str = "a rate: a size per second (20MiB/s) or operations per second (100ops/s)";
const COUNT: &str = "a whole number";
const POSITIVE: &str = "a whole number above zero";

/// Options that take a value, and the flag.
const OPTIONS: &[&str] = &[
    "--dir",
    "--device",
    "--seed",
    "--writer",
    "--rate",
    "--paced",
    "--paced-timeout",
    "--duration",
    "--bytes",
    "--ops",
    "--sync",
    "--log",
    "--set-size",
    "--max-file-size",
    "--max-write",
    "--stamped",
];

impl Config {
    /// Parses the arguments after the program name.
    pub fn from_args<I>(args: I) -> Result<Config, ArgsError>
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        let mut raw = RawArgs::default();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            let arg = arg.into_string().map_err(ArgsError::NotUtf8)?;
            if arg == "--help" || arg == "-h" {
                return Err(ArgsError::Help);
            }
            if !arg.starts_with("--") {
                if raw.kind.is_some() {
                    return Err(ArgsError::Unexpected(arg));
                }
                raw.kind = Some(arg.parse::<Kind>()?);
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let option = *OPTIONS
                .iter()
                .find(|o| **o == name)
                .ok_or_else(|| ArgsError::UnknownOption(name.clone()))?;
            if option == "--stamped" {
                if inline.is_some() {
                    return Err(ArgsError::NoValueAllowed { option });
                }
                raw.set(option, String::new())?;
                continue;
            }
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or(ArgsError::MissingValue { option })?
                    .into_string()
                    .map_err(ArgsError::NotUtf8)?,
            };
            raw.set(option, value)?;
        }
        raw.resolve()
    }
}

/// Arguments as given, before their values are checked.
#[derive(Default)]
struct RawArgs {
    kind: Option<Kind>,
    values: Vec<(&'static str, String)>,
}

impl RawArgs {
    fn set(&mut self, option: &'static str, value: String) -> Result<(), ArgsError> {
        if self.values.iter().any(|(o, _)| *o == option) {
            return Err(ArgsError::Repeated { option });
        }
        self.values.push((option, value));
        Ok(())
    }

    fn get(&self, option: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(o, _)| *o == option)
            .map(|(_, v)| v.as_str())
    }

    fn parsed<T>(
        &self,
        option: &'static str,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ArgsError> {
        match self.get(option) {
            None => Ok(None),
            Some(value) => parse(value).map(Some).ok_or_else(|| ArgsError::BadValue {
                option,
                value: value.to_string(),
                expected,
            }),
        }
    }

    fn resolve(self) -> Result<Config, ArgsError> {
        let kind = self.kind.ok_or(ArgsError::MissingKind)?;
        let target = match (self.get("--dir"), self.get("--device")) {
            (Some(dir), None) => Target::Dir(PathBuf::from(dir)),
            (None, Some(dev)) => Target::Device(PathBuf::from(dev)),
            (None, None) => return Err(ArgsError::NoTarget),
            (Some(_), Some(_)) => return Err(ArgsError::TwoTargets),
        };
        let block_multiple = |v: &str| parse_size(v).filter(|b| *b > 0 && *b % BLOCK == 0);
        let positive = |v: &str| v.parse::<u64>().ok().filter(|n| *n > 0);
        let config = Config {
            kind,
            seed: self
                .parsed("--seed", COUNT, |v| v.parse().ok())?
                .unwrap_or(0),
            writer: self
                .parsed("--writer", COUNT, |v| v.parse().ok())?
                .unwrap_or(0),
            rate: self.parsed("--rate", RATE, |v| {
                parse_rate(v).filter(|r| !matches!(r, Rate::BytesPerSec(0) | Rate::OpsPerSec(0)))
            })?,
            paced: self.get("--paced").map(PathBuf::from),
            paced_timeout: self
                .parsed("--paced-timeout", DURATION, |v| {
                    parse_duration(v).filter(|d| !d.is_zero())
                })?
                .unwrap_or(DEFAULT_PACED_TIMEOUT),
            duration: self.parsed("--duration", DURATION, parse_duration)?,
            bytes: self.parsed("--bytes", SIZE, parse_size)?,
            ops: self.parsed("--ops", COUNT, |v| v.parse().ok())?,
            stamped: self.get("--stamped").is_some(),
            sync_every: self.parsed("--sync", POSITIVE, positive)?,
            log: self.get("--log").map(PathBuf::from),
            set_size: self
                .parsed("--set-size", BLOCK_SIZE_MULTIPLE, block_multiple)?
                .unwrap_or(16 << 20),
            max_file_size: self
                .parsed("--max-file-size", BLOCK_SIZE_MULTIPLE, block_multiple)?
                .unwrap_or(8 << 20),
            max_write: self
                .parsed("--max-write", BLOCK_SIZE_MULTIPLE, block_multiple)?
                .unwrap_or(64 << 10),
            target,
        };
        if let Target::Device(_) = config.target {
            if !matches!(kind, Kind::Fill | Kind::FillToFull | Kind::Overwrite) {
                return Err(ArgsError::NeedsDir { kind });
            }
        }
        if config.paced.is_some() {
            for (option, given) in [
                ("--rate", config.rate.is_some()),
                ("--duration", config.duration.is_some()),
            ] {
                if given {
                    return Err(ArgsError::PacedExcludes { option });
                }
            }
        } else if self.get("--paced-timeout").is_some() {
            return Err(ArgsError::Requires {
                option: "--paced-timeout",
                needs: "--paced",
            });
        }
        if kind == Kind::Fill
            && matches!(config.target, Target::Dir(_))
            && !matches!(config.bytes, Some(b) if b >= BLOCK)
        {
            return Err(ArgsError::FillNeedsBytes);
        }
        Ok(config)
    }
}

impl std::str::FromStr for Kind {
    type Err = ArgsError;

    fn from_str(text: &str) -> Result<Kind, ArgsError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == text)
            .ok_or_else(|| ArgsError::UnknownKind(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(line: &str) -> Result<Config, ArgsError> {
        Config::from_args(line.split_whitespace())
    }

    #[test]
    fn a_full_command_line() {
        let c = parse(
            "overwrite --dir /mnt/v0 --seed 7 --writer=2 --rate 4MiB/s --duration 1.5s \
             --ops 100 --stamped --sync 8 --log /tmp/w.log --set-size 32MiB --max-write 8KiB",
        )
        .unwrap();
        assert_eq!(c.kind, Kind::Overwrite);
        assert_eq!(c.target, Target::Dir("/mnt/v0".into()));
        assert_eq!((c.seed, c.writer), (7, 2));
        assert_eq!(c.rate, Some(Rate::BytesPerSec(4 << 20)));
        assert_eq!(c.duration, Some(Duration::from_millis(1500)));
        assert_eq!((c.ops, c.bytes), (Some(100), None));
        assert!(c.stamped);
        assert_eq!(c.sync_every, Some(8));
        assert_eq!(c.log, Some(PathBuf::from("/tmp/w.log")));
        assert_eq!(
            (c.set_size, c.max_file_size, c.max_write),
            (32 << 20, 8 << 20, 8192)
        );
    }

    #[test]
    fn defaults() {
        let c = parse("metadata-churn --dir /d").unwrap();
        assert_eq!((c.seed, c.writer, c.stamped), (0, 0, false));
        assert_eq!(
            (c.rate, c.duration, c.bytes, c.ops, c.sync_every),
            (None, None, None, None, None)
        );
        assert_eq!((c.set_size, c.max_write), (16 << 20, 64 << 10));
        assert_eq!((c.paced, c.paced_timeout), (None, DEFAULT_PACED_TIMEOUT));
    }

    #[test]
    fn paced_runs() {
        let c =
            parse("delete-rewrite --dir /d --paced /run/w0 --paced-timeout 90s --ops 40").unwrap();
        assert_eq!(c.paced, Some(PathBuf::from("/run/w0")));
        assert_eq!(c.paced_timeout, Duration::from_secs(90));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn every_kind_parses_by_its_name() {
        for kind in Kind::ALL {
            assert_eq!(kind.name().parse::<Kind>(), Ok(kind));
        }
    }

    #[test]
    fn mistakes_are_named() {
        let cases: &[(&str, ArgsError)] = &[
            ("--dir /d", ArgsError::MissingKind),
            (
                "scribble --dir /d",
                ArgsError::UnknownKind("scribble".into()),
            ),
            (
                "fill --dir /d --bytes 1MiB extra",
                ArgsError::Unexpected("extra".into()),
            ),
            (
                "overwrite --dir /d --fast",
                ArgsError::UnknownOption("--fast".into()),
            ),
            (
                "overwrite --dir",
                ArgsError::MissingValue { option: "--dir" },
            ),
            (
                "overwrite --dir /d --stamped=yes",
                ArgsError::NoValueAllowed {
                    option: "--stamped",
                },
            ),
            (
                "overwrite --dir /d --seed 1 --seed 2",
                ArgsError::Repeated { option: "--seed" },
            ),
            ("overwrite", ArgsError::NoTarget),
            (
                "overwrite --dir /d --device /dev/vdb",
                ArgsError::TwoTargets,
            ),
            (
                "append --device /dev/vdb",
                ArgsError::NeedsDir { kind: Kind::Append },
            ),
            ("fill --dir /d", ArgsError::FillNeedsBytes),
            ("fill --dir /d --bytes 100", ArgsError::FillNeedsBytes),
            (
                "overwrite --dir /d --paced /run/p --rate 1MiB/s",
                ArgsError::PacedExcludes { option: "--rate" },
            ),
            (
                "overwrite --dir /d --paced /run/p --duration 5s",
                ArgsError::PacedExcludes {
                    option: "--duration",
                },
            ),
            (
                "overwrite --dir /d --paced-timeout 5s",
                ArgsError::Requires {
                    option: "--paced-timeout",
                    needs: "--paced",
                },
            ),
            (
                "overwrite --dir /d --paced /run/p --paced-timeout 0s",
                ArgsError::BadValue {
                    option: "--paced-timeout",
                    value: "0s".into(),
                    expected: DURATION,
                },
            ),
            (
                "overwrite --dir /d --bytes 512MB",
                ArgsError::BadValue {
                    option: "--bytes",
                    value: "512MB".into(),
                    expected: SIZE,
                },
            ),
            (
                "overwrite --dir /d --rate 0ops/s",
                ArgsError::BadValue {
                    option: "--rate",
                    value: "0ops/s".into(),
                    expected: RATE,
                },
            ),
            (
                "overwrite --dir /d --duration 20",
                ArgsError::BadValue {
                    option: "--duration",
                    value: "20".into(),
                    expected: DURATION,
                },
            ),
            (
                "overwrite --dir /d --sync 0",
                ArgsError::BadValue {
                    option: "--sync",
                    value: "0".into(),
                    expected: POSITIVE,
                },
            ),
            (
                "overwrite --dir /d --max-write 6KiB",
                ArgsError::BadValue {
                    option: "--max-write",
                    value: "6KiB".into(),
                    expected: BLOCK_SIZE_MULTIPLE,
                },
            ),
            (
                "overwrite --dir /d --seed -1",
                ArgsError::BadValue {
                    option: "--seed",
                    value: "-1".into(),
                    expected: COUNT,
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line).unwrap_err(), *want, "{line}");
        }
        assert_eq!(parse("fill --help").unwrap_err(), ArgsError::Help);
    }

    #[test]
    fn raw_devices_take_fill_overwrite_and_fill_to_full() {
        for line in [
            "fill --device /dev/vdb",
            "fill-to-full --device /dev/vdb",
            "overwrite --device /dev/vdb",
        ] {
            assert_eq!(
                parse(line).unwrap().target,
                Target::Device("/dev/vdb".into()),
                "{line}"
            );
        }
    }

    #[test]
    fn configs_built_in_code_are_checked_too() {
        let good = parse("overwrite --dir /d").unwrap();
        assert!(good.validate().is_ok());
        let cases = [
            Config {
                max_write: 0,
                ..good.clone()
            },
            Config {
                set_size: 5000,
                ..good.clone()
            },
            Config {
                rate: Some(Rate::OpsPerSec(0)),
                ..good.clone()
            },
            Config {
                sync_every: Some(0),
                ..good.clone()
            },
            Config {
                paced: Some("/run/p".into()),
                rate: Some(Rate::OpsPerSec(5)),
                ..good.clone()
            },
            Config {
                paced: Some("/run/p".into()),
                duration: Some(Duration::from_secs(1)),
                ..good.clone()
            },
            Config {
                paced_timeout: Duration::ZERO,
                ..good.clone()
            },
            Config {
                kind: Kind::Append,
                target: Target::Device("/dev/vdb".into()),
                ..good.clone()
            },
        ];
        for case in cases {
            assert!(case.validate().is_err(), "{case:?}");
        }
    }

    #[test]
    fn units() {
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1_024KiB"), Some(1 << 20));
        assert_eq!(parse_size("0.5B"), None);
        assert_eq!(parse_size("1M"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2 days"), None);
        assert_eq!(parse_rate("100ops/s"), Some(Rate::OpsPerSec(100)));
        assert_eq!(parse_rate("1.5MiB/s"), Some(Rate::BytesPerSec(3 << 19)));
        assert_eq!(parse_rate("100ops"), None);
        assert_eq!(parse_rate("x ops/s"), None);
    }
}

//! JUnit XML, the one writer: a run's junit.xml (one test case) and the nightly's (a
//! test case per run), so CI dashboards and nextest-merged reports show scenarios as
//! tests. A product failure is a `<failure>`, a harness error an `<error>` (never counted
//! as the product failing). Text goes through [`escape_xml`]: characters XML forbids are
//! left out.

use std::fmt::Write as _;

use super::escape_xml;
use crate::model::Exit;

/// One test case.
#[derive(Clone, Debug)]
pub struct Case {
    pub classname: String,
    pub name: String,
    pub seconds: f64,
    pub exit: Exit,
    /// The failure's or error's `message` attribute (unused for a pass).
    pub message: String,
    /// The failure's or error's text (unused for a pass).
    pub detail: String,
    pub system_out: Option<String>,
}

/// One `<testsuite>`.
#[derive(Clone, Debug)]
pub struct Suite {
    pub name: String,
    pub cases: Vec<Case>,
}

fn counts<'a>(cases: impl Iterator<Item = &'a Case>) -> (usize, usize, usize, f64) {
    let (mut tests, mut failures, mut errors, mut time) = (0, 0, 0, 0.0);
    for c in cases {
        tests += 1;
        time += c.seconds;
        match c.exit {
            Exit::Pass => {}
            Exit::ProductFailure => failures += 1,
            Exit::HarnessError => errors += 1,
        }
    }
    (tests, failures, errors, time)
}

/// The whole document: `<testsuites name=NAME>` holding `suites`.
pub fn render(name: &str, suites: &[Suite]) -> String {
    let (tests, failures, errors, time) = counts(suites.iter().flat_map(|s| &s.cases));
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">",
        escape_xml(name)
    );
    for suite in suites {
        let (tests, failures, errors, time) = counts(suite.cases.iter());
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">",
            escape_xml(&suite.name)
        );
        for case in &suite.cases {
            let _ = writeln!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
                escape_xml(&case.classname),
                escape_xml(&case.name),
                case.seconds
            );
            let element = match case.exit {
                Exit::Pass => None,
                Exit::ProductFailure => Some(("failure", "product-failure")),
                Exit::HarnessError => Some(("error", "harness-error")),
            };
            if let Some((element, kind)) = element {
                let _ = writeln!(
                    out,
                    "      <{element} type=\"{kind}\" message=\"{}\">{}</{element}>",
                    escape_xml(&case.message),
                    escape_xml(&case.detail)
                );
            }
            if let Some(text) = &case.system_out {
                let _ = writeln!(out, "      <system-out>{}</system-out>", escape_xml(text));
            }
            out.push_str("    </testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(exit: Exit, message: &str) -> Case {
        Case {
            classname: "s".into(),
            name: "s@i#seed1".into(),
            seconds: 1.5,
            exit,
            message: message.into(),
            detail: "detail".into(),
            system_out: None,
        }
    }

    #[test]
    fn counts_failures_and_errors_per_suite_and_in_all() {
        let x = render(
            "all",
            &[
                Suite {
                    name: "a".into(),
                    cases: vec![case(Exit::Pass, ""), case(Exit::ProductFailure, "m")],
                },
                Suite {
                    name: "b".into(),
                    cases: vec![case(Exit::HarnessError, "e")],
                },
            ],
        );
        assert!(
            x.contains(
                "<testsuites name=\"all\" tests=\"3\" failures=\"1\" errors=\"1\" time=\"4.500\">"
            ),
            "{x}"
        );
        assert!(
            x.contains("<testsuite name=\"a\" tests=\"2\" failures=\"1\" errors=\"0\""),
            "{x}"
        );
        assert_eq!(x.matches("<failure type=\"product-failure\"").count(), 1);
        assert_eq!(x.matches("<error type=\"harness-error\"").count(), 1);
    }

    #[test]
    fn characters_xml_forbids_are_left_out() {
        let x = render(
            "n",
            &[Suite {
                name: "s".into(),
                cases: vec![case(Exit::ProductFailure, "bad \u{1b}[31mred\u{0} <b>")],
            }],
        );
        assert!(x.contains("message=\"bad [31mred &lt;b&gt;\""), "{x}");
        assert!(!x.contains('\u{1b}') && !x.contains('\u{0}'));
    }
}

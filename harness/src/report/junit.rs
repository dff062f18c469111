//! junit.xml: one test case per run, so CI dashboards and nextest-merged reports show
//! scenarios as tests. A product failure is a `<failure>`, a harness error an `<error>`
//! (never counted as the product failing).

use super::escape;
use super::summary::Summary;
use crate::classify::Verdict;

pub fn render(s: &Summary, verdict: &Verdict) -> String {
    let (failures, errors) = match verdict {
        Verdict::Pass => (0, 0),
        Verdict::Fail { .. } => (1, 0),
        Verdict::CouldNotRun { .. } => (0, 1),
    };
    let suite = format!("blockwitness.{}", s.scenario);
    let name = format!("{}@{}#seed{}", s.scenario, s.image, s.seed);
    let time = format!("{:.3}", s.total_seconds);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"blockwitness\" tests=\"1\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time}\">\n"
    ));
    out.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"1\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time}\">\n",
        escape(&suite)
    ));
    out.push_str(&format!(
        "    <testcase classname=\"{}\" name=\"{}\" time=\"{time}\">\n",
        escape(&suite),
        escape(&name)
    ));
    let body = verdict.reasons().join("\n");
    let first = verdict.reasons().first().cloned().unwrap_or_default();
    match verdict {
        Verdict::Pass => {}
        Verdict::Fail { .. } => out.push_str(&format!(
            "      <failure type=\"product-failure\" message=\"{}\">{}</failure>\n",
            escape(&first),
            escape(&body)
        )),
        Verdict::CouldNotRun { .. } => out.push_str(&format!(
            "      <error type=\"harness-error\" message=\"{}\">{}</error>\n",
            escape(&first),
            escape(&body)
        )),
    }
    let counts: Vec<String> = s
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| format!("{c}={n}"))
        .collect();
    out.push_str(&format!(
        "      <system-out>verdict: {}\nblocks: {}\noutcomes: {}\nimage: {} kernel: {} accelerator: {}\nrepro: {}</system-out>\n",
        escape(&s.verdict),
        escape(&counts.join(" ")),
        escape(&s.outcomes.join(" ")),
        escape(&s.image),
        escape(&s.kernel),
        escape(&s.accelerator),
        escape(&s.repro)
    ));
    out.push_str("    </testcase>\n  </testsuite>\n</testsuites>\n");
    out
}

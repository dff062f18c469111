//! Scenario errors: one [`Diagnostic`] per mistake, each naming the file, line and column,
//! the key path, and what is allowed there; rendered like a compiler message so a QA author
//! can fix every mistake of a file in one pass.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use super::tree::KeyPath;

/// One mistake in a scenario file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// The key path the mistake is at (empty for syntax errors and the top level).
    pub path: KeyPath,
    /// Byte span in the file, when known.
    pub span: Option<Range<usize>>,
    /// What is allowed there, or how to fix it.
    pub help: Option<String>,
    /// Filled in by [`Diagnostic::locate`].
    pub location: Option<Location>,
}

/// A resolved position: 1-based line and column, and the text of that line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    pub line_text: String,
    /// Caret count under the line (at least 1).
    pub width: usize,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, path: KeyPath) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            path,
            span: None,
            help: None,
            location: None,
        }
    }

    pub fn with_span(mut self, span: Range<usize>) -> Diagnostic {
        self.span = Some(span);
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Turns the byte span into line, column and the line's text.
    pub fn locate(mut self, text: &str) -> Diagnostic {
        let start = match &self.span {
            Some(span) => span.start.min(text.len()),
            None => return self,
        };
        let start = floor_char_boundary(text, start);
        let line_start = text[..start].rfind('\n').map_or(0, |at| at + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |at| start + at);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let end = self
            .span
            .as_ref()
            .map_or(start, |s| s.end.clamp(start, line_end));
        let end = floor_char_boundary(text, end);
        let width = text[start..end].chars().count().max(1);
        self.location = Some(Location {
            line,
            column,
            line_text: text[line_start..line_end].trim_end_matches('\r').to_owned(),
            width,
        });
        self
    }

    /// Renders the diagnostic for `file`.
    pub fn render(&self, file: &str) -> String {
        let mut out = format!("error: {}\n", self.message);
        match &self.location {
            Some(loc) => {
                let gutter = loc.line.to_string().len();
                let pad = " ".repeat(gutter);
                out.push_str(&format!("{pad}--> {file}:{}:{}\n", loc.line, loc.column));
                out.push_str(&format!("{pad} |\n"));
                out.push_str(&format!("{} | {}\n", loc.line, loc.line_text));
                let lead: String = loc
                    .line_text
                    .chars()
                    .take(loc.column - 1)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                out.push_str(&format!("{pad} | {lead}{}\n", "^".repeat(loc.width)));
                if let Some(help) = &self.help {
                    out.push_str(&format!("{pad} = {help}\n"));
                }
            }
            None => {
                out.push_str(&format!(" --> {file}\n"));
                if let Some(help) = &self.help {
                    out.push_str(&format!("  = {help}\n"));
                }
            }
        }
        out
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_all(path, diagnostics))]
    Invalid {
        path: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
}

impl ScenarioError {
    /// The mistakes found (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ScenarioError::Read { .. } => &[],
            ScenarioError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

fn render_all(path: &std::path::Path, diagnostics: &[Diagnostic]) -> String {
    let file = path.display().to_string();
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.render(&file));
        out.push('\n');
    }
    let n = diagnostics.len();
    out.push_str(&format!(
        "{file}: {n} {}",
        if n == 1 { "error" } else { "errors" }
    ));
    out
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_column_and_carets() {
        let text = "name = \"x\"\nsise = 3\n";
        let d = Diagnostic::new("unknown key `sise`", KeyPath::root().key("sise"))
            .with_span(11..15)
            .with_help("allowed here: name, size")
            .locate(text);
        assert_eq!(
            d.render("a.toml"),
            "error: unknown key `sise`\n --> a.toml:2:1\n  |\n2 | sise = 3\n  | ^^^^\n  = allowed here: name, size\n"
        );
    }
}

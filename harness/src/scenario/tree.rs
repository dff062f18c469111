//! A spanned view of a TOML document and the schema walk over it.
//!
//! Phase one of loading: the document is read into a tree that keeps the byte span of
//! every key and value, then walked against [`keys::KEYS`]: unknown keys (with their full
//! path and the keys allowed there), wrong value types and values outside an enum are
//! reported before serde sees the file. Later validation errors find their line and column
//! through [`Tree::locate`].

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::error::Diagnostic;
use super::keys::{self, KeyType};

/// One TOML value with spans kept.
#[derive(Debug)]
pub enum Tree {
    Table(Vec<(Spanned<String>, Spanned<Tree>)>),
    Array(Vec<Spanned<Tree>>),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Dates and times: valid TOML, never valid in a scenario.
    Other,
}

impl Tree {
    fn kind(&self) -> &'static str {
        match self {
            Tree::Table(_) => "a table",
            Tree::Array(_) => "an array",
            Tree::Str(_) => "a string",
            Tree::Int(_) => "an integer",
            Tree::Float(_) => "a float",
            Tree::Bool(_) => "a boolean",
            Tree::Other => "a date or time",
        }
    }

    fn get(&self, key: &str) -> Option<(&Spanned<String>, &Spanned<Tree>)> {
        match self {
            Tree::Table(entries) => entries
                .iter()
                .find(|(k, _)| k.get_ref() == key)
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// The span of the value at `path`, or of the deepest existing part of it.
    pub fn locate(&self, path: &KeyPath) -> Option<Range<usize>> {
        self.locate_inner(path, false)
    }

    /// Like [`Tree::locate`], but a key's own span rather than its value's.
    pub fn locate_key(&self, path: &KeyPath) -> Option<Range<usize>> {
        self.locate_inner(path, true)
    }

    fn locate_inner(&self, path: &KeyPath, want_key: bool) -> Option<Range<usize>> {
        let mut node = self;
        let mut best: Option<Range<usize>> = None;
        let last = path.0.len().saturating_sub(1);
        for (i, seg) in path.0.iter().enumerate() {
            match (seg, node) {
                (Seg::Key(name), Tree::Table(_)) => {
                    let Some((k, v)) = node.get(name) else { break };
                    best = Some(if want_key && i == last {
                        k.span()
                    } else {
                        v.span()
                    });
                    node = v.get_ref();
                }
                (Seg::Index(index), Tree::Array(items)) => {
                    let Some(item) = items.get(*index) else { break };
                    best = Some(item.span());
                    node = item.get_ref();
                }
                _ => break,
            }
        }
        best
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TreeVisitor;
        impl<'de> Visitor<'de> for TreeVisitor {
            type Value = Tree;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Tree, E> {
                Ok(Tree::Str(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Tree, E> {
                Ok(Tree::Str(s))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tree, E> {
                Ok(Tree::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tree, E> {
                Ok(i64::try_from(v)
                    .map(Tree::Int)
                    .unwrap_or(Tree::Float(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tree, E> {
                Ok(Tree::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Tree, E> {
                Ok(Tree::Bool(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Tree::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    // Dates arrive as a one-key map with toml's private marker key.
                    if key.get_ref().starts_with("$__toml_private") {
                        let _: de::IgnoredAny = map.next_value()?;
                        return Ok(Tree::Other);
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Tree::Table(entries))
            }
        }
        d.deserialize_any(TreeVisitor)
    }
}

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where a value is in the document: `volumes[1].size`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    pub fn key(&self, name: &str) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Seg::Key(name.to_owned()));
        next
    }

    pub fn index(&self, index: usize) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Seg::Index(index));
        next
    }

    /// The schema path: indexes become `[]`.
    pub fn schema(&self) -> String {
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(_) => out.push_str("[]"),
            }
        }
        out
    }

    /// Parses `volumes[1].size` (the form [`fmt::Display`] writes).
    pub fn parse(text: &str) -> KeyPath {
        let mut path = KeyPath::root();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (name, rest) = part.split_once('[').unwrap_or((part, ""));
            path = path.key(name);
            for index in rest.split('[') {
                if let Ok(i) = index.trim_end_matches(']').parse() {
                    path = path.index(i);
                }
            }
        }
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        if first {
            f.write_str("(top level)")?;
        }
        Ok(())
    }
}

/// Reads the document, or the one syntax error in it.
pub fn parse(text: &str) -> Result<Tree, (String, Option<Range<usize>>)> {
    toml::from_str::<Tree>(text).map_err(|e| (e.message().to_owned(), e.span()))
}

/// Walks the tree against the key table; returns every problem found.
pub fn check_schema(root: &Tree) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    check_table(root, None, &KeyPath::root(), "", &mut found);
    found
}

fn check_table(
    node: &Tree,
    span: Option<Range<usize>>,
    path: &KeyPath,
    schema: &str,
    found: &mut Vec<Diagnostic>,
) {
    let Tree::Table(entries) = node else { return };
    let required: Vec<&str> = keys::children(schema)
        .filter(|k| k.default.is_none())
        .map(|k| k.name())
        .collect();
    // A misspelt required key is one mistake, not two: the unknown-key diagnostic
    // suggests the right name, so the "missing" one is left out.
    let allowed: Vec<&str> = keys::children(schema).map(|k| k.name()).collect();
    let misspelt: Vec<&str> = entries
        .iter()
        .filter(|(k, _)| !allowed.contains(&k.get_ref().as_str()))
        .filter_map(|(k, _)| closest(k.get_ref(), &allowed))
        .collect();
    for name in &required {
        if node.get(name).is_none() && !misspelt.contains(name) {
            let place = if path.0.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{path}`")
            };
            let mut d = Diagnostic::new(format!("missing key `{name}` {place}"), path.key(name))
                .with_help(format!("required here: {}", required.join(", ")));
            if let Some(span) = &span {
                d = d.with_span(span.clone());
            }
            found.push(d);
        }
    }
    for (key, value) in entries {
        let name = key.get_ref();
        let child_schema = if schema.is_empty() {
            name.clone()
        } else {
            format!("{schema}.{name}")
        };
        let child_path = path.key(name);
        let Some(doc) = keys::lookup(&child_schema) else {
            let allowed: Vec<&str> = keys::children(schema).map(|k| k.name()).collect();
            let place = if path.0.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{path}`")
            };
            let help = match closest(name, &allowed) {
                Some(close) => format!(
                    "did you mean `{close}`? allowed here: {}",
                    allowed.join(", ")
                ),
                None => format!("allowed here: {}", allowed.join(", ")),
            };
            found.push(
                Diagnostic::new(format!("unknown key `{name}` {place}"), child_path)
                    .with_span(key.span())
                    .with_help(help),
            );
            continue;
        };
        check_value(value, &child_path, doc, found);
    }
}

fn check_value(
    value: &Spanned<Tree>,
    path: &KeyPath,
    doc: &keys::KeyDoc,
    found: &mut Vec<Diagnostic>,
) {
    let tree = value.get_ref();
    let mismatch = |expected: String| {
        Diagnostic::new(
            format!("`{path}` must be {expected}, found {}", tree.kind()),
            path.clone(),
        )
        .with_span(value.span())
    };
    match (doc.ty, tree) {
        (KeyType::Table, Tree::Table(_)) => {
            check_table(tree, Some(value.span()), path, doc.path, found)
        }
        (KeyType::Table, _) => found.push(mismatch(format!("a table (`[{}]`)", doc.path))),
        (KeyType::TableArray, Tree::Array(items)) => {
            let schema = format!("{}[]", doc.path);
            for (i, item) in items.iter().enumerate() {
                if matches!(item.get_ref(), Tree::Table(_)) {
                    check_table(
                        item.get_ref(),
                        Some(item.span()),
                        &path.index(i),
                        &schema,
                        found,
                    );
                } else {
                    found.push(
                        Diagnostic::new(
                            format!(
                                "`{}` must be a table, found {}",
                                path.index(i),
                                item.get_ref().kind()
                            ),
                            path.index(i),
                        )
                        .with_span(item.span())
                        .with_help(format!(
                            "write each entry as `[[{}]]` followed by its keys",
                            doc.path
                        )),
                    );
                }
            }
        }
        (KeyType::TableArray, _) => found.push(
            mismatch(format!("an array of tables (`[[{}]]`)", doc.path)).with_help(format!(
                "write each entry as `[[{}]]` followed by its keys",
                doc.path
            )),
        ),
        (KeyType::Int, Tree::Int(v)) if *v < 0 => found.push(
            Diagnostic::new(
                format!("`{path}` must not be negative, found {v}"),
                path.clone(),
            )
            .with_span(value.span()),
        ),
        (KeyType::Int, Tree::Int(_)) | (KeyType::Bool, Tree::Bool(_)) => {}
        (KeyType::Int, Tree::Str(text)) if text.trim().parse::<u64>().is_ok() => {
            found.push(mismatch("an integer".into()).with_help(format!(
                "write the number without quotes: `{} = {}`",
                doc.name(),
                text.trim()
            )))
        }
        (KeyType::Int, _) => found.push(mismatch("an integer".into())),
        (KeyType::Bool, _) => found.push(mismatch("true or false".into())),
        (KeyType::Enum(values), Tree::Str(s)) => {
            if !values.contains(&s.as_str()) {
                found.push(not_one_of(s, values, path, value.span()));
            }
        }
        (
            KeyType::Str
            | KeyType::Name
            | KeyType::Size
            | KeyType::Duration
            | KeyType::SizeOrPercent
            | KeyType::Rate,
            Tree::Str(_),
        ) => {}
        (
            ty @ (KeyType::Str
            | KeyType::Name
            | KeyType::Enum(_)
            | KeyType::Size
            | KeyType::Duration
            | KeyType::SizeOrPercent
            | KeyType::Rate),
            _,
        ) => {
            let mut d = mismatch("a string".into());
            if let Some(help) = string_help(ty) {
                d = d.with_help(help);
            }
            found.push(d);
        }
        (KeyType::StrList | KeyType::IntList | KeyType::EnumList(_), Tree::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = path.index(i);
                match (doc.ty, item.get_ref()) {
                    (KeyType::StrList, Tree::Str(_)) => {}
                    (KeyType::IntList, Tree::Int(v)) if *v >= 0 => {}
                    (KeyType::EnumList(values), Tree::Str(s)) => {
                        if !values.contains(&s.as_str()) {
                            found.push(not_one_of(s, values, &item_path, item.span()));
                        }
                    }
                    (ty, other) => {
                        let want = if ty == KeyType::IntList {
                            "a non-negative integer"
                        } else {
                            "a string"
                        };
                        found.push(
                            Diagnostic::new(
                                format!("`{item_path}` must be {want}, found {}", other.kind()),
                                item_path,
                            )
                            .with_span(item.span()),
                        );
                    }
                }
            }
        }
        (KeyType::StrList | KeyType::IntList | KeyType::EnumList(_), _) => found.push(mismatch(
            format!("an array, e.g. `{} = {}`", doc.name(), doc.example),
        )),
    }
}

fn string_help(ty: KeyType) -> Option<String> {
    use super::units::*;
    match ty {
        KeyType::Size => Some(SIZE_HELP.into()),
        KeyType::Duration => Some(DURATION_HELP.into()),
        KeyType::SizeOrPercent => Some(format!("{SIZE_HELP}; or {PERCENT_HELP}")),
        KeyType::Rate => Some(RATE_HELP.into()),
        KeyType::Enum(values) => Some(format!("allowed: {}", quoted(values))),
        _ => None,
    }
}

fn not_one_of(value: &str, allowed: &[&str], path: &KeyPath, span: Range<usize>) -> Diagnostic {
    let mut help = format!("allowed: {}", quoted(allowed));
    if let Some(close) = closest(value, allowed) {
        help = format!("did you mean \"{close}\"? {help}");
    }
    Diagnostic::new(format!("`{path}` cannot be \"{value}\""), path.clone())
        .with_span(span)
        .with_help(help)
}

/// `"a", "b", "c"`.
pub fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The allowed word nearest to a misspelling, if it is near enough to be a likely typo.
pub fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let near: Vec<(usize, &str)> = allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4) && *d < a.len())
        .collect();
    let best = near.iter().map(|(d, _)| *d).min()?;
    // A tie (ext3: ext2 or ext4?) is no suggestion at all.
    match near.iter().filter(|(d, _)| *d == best).collect::<Vec<_>>()[..] {
        [(_, only)] => Some(only),
        _ => None,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_round_trip() {
        let p = KeyPath::root().key("volumes").index(1).key("size");
        assert_eq!(p.to_string(), "volumes[1].size");
        assert_eq!(p.schema(), "volumes[].size");
        assert_eq!(KeyPath::parse("volumes[1].size"), p);
        assert_eq!(KeyPath::root().to_string(), "(top level)");
    }

    #[test]
    fn locate_finds_values_and_keys() {
        let text =
            "name = \"x\"\n[[volumes]]\nname = \"a\"\n[[volumes]]\nname = \"b\"\nsize = \"1MiB\"\n";
        let tree = parse(text).unwrap();
        let path = KeyPath::parse("volumes[1].size");
        assert_eq!(&text[tree.locate(&path).unwrap()], "\"1MiB\"");
        assert_eq!(&text[tree.locate_key(&path).unwrap()], "size");
        // A missing key falls back to its table.
        let missing = tree.locate(&KeyPath::parse("volumes[0].size")).unwrap();
        assert!(text[missing].contains("name = \"a\""));
    }

    #[test]
    fn typos_get_suggestions() {
        assert_eq!(closest("sise", &["name", "size"]), Some("size"));
        assert_eq!(closest("ext3", &["ext2", "ext4", "xfs"]), None);
        assert_eq!(
            closest("ovrewrite", &["overwrite", "append"]),
            Some("overwrite")
        );
        assert_eq!(closest("zzzzzz", &["name", "size"]), None);
    }
}

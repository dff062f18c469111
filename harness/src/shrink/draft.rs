//! A scenario being shrunk: its TOML document, edited in place so that comments, key
//! order and keys the shrinker knows nothing about survive every cut, beside the typed
//! scenario it validates to. A draft is only ever made by [`Draft::parse`], which runs
//! the scenario loader on the text: every draft is a valid scenario, and its text is
//! what `blockwitness check` and `run` read back.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, Value};

use crate::scenario::{self, Scenario, ScenarioError};

/// The arrays of tables a scenario holds, each normalised to `[[...]]` form.
pub(super) const ARRAYS: [&str; 3] = ["volumes", "workloads", "faults"];
/// The tables a scenario holds, each normalised to `[...]` form.
const TABLES: [&str; 3] = ["guest", "backup", "expect"];

#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    #[error("the scenario is not valid")]
    Invalid(#[source] ScenarioError),
    /// The loader accepted the text and toml_edit did not: the two TOML parsers disagree.
    #[error("cannot edit {path}: {message}")]
    Edit { path: PathBuf, message: String },
}

/// A valid scenario and the document it was read from.
#[derive(Clone, Debug)]
pub struct Draft {
    doc: DocumentMut,
    scenario: Scenario,
}

impl Draft {
    /// Validates `text` as a scenario and opens it for editing; `path` names the file in
    /// messages.
    pub fn parse(path: &Path, text: &str) -> Result<Draft, DraftError> {
        let scenario = scenario::parse(path, text).map_err(DraftError::Invalid)?;
        let mut doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| DraftError::Edit {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?;
        normalise(&mut doc);
        Ok(Draft { doc, scenario })
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The item at (`workloads`, 0, `rate`), as the file wrote it.
    pub(super) fn get(&self, array: &str, index: usize, key: &str) -> Option<&Item> {
        self.doc
            .get(array)?
            .as_array_of_tables()?
            .get(index)?
            .get(key)
    }

    /// The scenario file's text.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// A copy edited by `edit`: None when the edit changed nothing or the result is not
    /// a valid scenario, so a cut can never produce an invalid draft.
    pub(super) fn edited(&self, edit: impl FnOnce(&mut Edit)) -> Option<Draft> {
        let mut e = Edit {
            doc: self.doc.clone(),
        };
        edit(&mut e);
        let text = e.doc.to_string();
        if text == self.text() {
            return None;
        }
        let scenario = scenario::parse(&self.scenario.path, &text).ok()?;
        Some(Draft {
            doc: e.doc,
            scenario,
        })
    }
}

/// Writes `[[volumes]]`-style arrays and `[backup]`-style tables for sections a file
/// wrote inline, so edits address every scenario the same way. The meaning is unchanged.
fn normalise(doc: &mut DocumentMut) {
    let root = doc.as_table_mut();
    for key in ARRAYS {
        if let Some(item) = root.get_mut(key) {
            let taken = std::mem::take(item);
            *item = match taken.into_array_of_tables() {
                Ok(aot) => Item::ArrayOfTables(aot),
                Err(back) => back,
            };
        }
        header_key(root, key);
    }
    for key in TABLES {
        if let Some(item) = root.get_mut(key) {
            if item.is_inline_table() {
                let taken = std::mem::take(item);
                *item = match taken.into_table() {
                    Ok(t) => Item::Table(t),
                    Err(back) => back,
                };
                header_key(root, key);
            }
        }
    }
}

/// A key that was written `key = ...` keeps its spacing when it becomes a header:
/// `[backup ]`. Headers are written plain.
fn header_key(root: &mut Table, key: &str) {
    if let Some(mut k) = root.key_mut(key) {
        k.leaf_decor_mut().clear();
    }
}

/// Edits of a scenario document, addressed the way the key table names keys:
/// (`volumes`, 0, `size`), (`backup`, `incrementals`), top-level `seed`.
pub(super) struct Edit {
    doc: DocumentMut,
}

impl Edit {
    fn entry(&mut self, array: &str, index: usize) -> Option<&mut Table> {
        self.doc
            .as_table_mut()
            .get_mut(array)?
            .as_array_of_tables_mut()?
            .get_mut(index)
    }

    /// Removes entry `index` of an array of tables (the section goes when it empties).
    pub fn remove(&mut self, array: &str, index: usize) {
        let root = self.doc.as_table_mut();
        let Some(aot) = root.get_mut(array).and_then(Item::as_array_of_tables_mut) else {
            return;
        };
        if index < aot.len() {
            aot.remove(index);
        }
        if aot.is_empty() {
            root.remove(array);
        }
    }

    /// Sets a key of an array entry, keeping the comment that followed the old value.
    pub fn set(&mut self, array: &str, index: usize, key: &str, value: impl Into<Value>) {
        if let Some(t) = self.entry(array, index) {
            put(t, key, value.into());
        }
    }

    pub fn unset(&mut self, array: &str, index: usize, key: &str) {
        if let Some(t) = self.entry(array, index) {
            t.remove(key);
        }
    }

    /// Sets a key of a table (`backup`, ...), creating the table if the file has none.
    pub fn set_in(&mut self, table: &str, key: &str, value: impl Into<Value>) {
        let root = self.doc.as_table_mut();
        if !root.contains_key(table) {
            root.insert(table, Item::Table(Table::new()));
        }
        if let Some(t) = root.get_mut(table).and_then(Item::as_table_like_mut) {
            match t.get_mut(key) {
                Some(item) => replace(item, value.into()),
                None => {
                    t.insert(key, Item::Value(value.into()));
                }
            }
        }
    }

    /// Sets a top-level key.
    pub fn set_top(&mut self, key: &str, value: impl Into<Value>) {
        put(self.doc.as_table_mut(), key, value.into());
    }

    pub fn unset_top(&mut self, key: &str) {
        self.doc.as_table_mut().remove(key);
    }
}

fn put(t: &mut Table, key: &str, value: Value) {
    match t.get_mut(key) {
        Some(item) => replace(item, value),
        None => {
            t.insert(key, Item::Value(value));
        }
    }
}

/// Replaces a value, keeping its decor (the comment after it, the spacing around it).
fn replace(item: &mut Item, mut value: Value) {
    if let Some(old) = item.as_value() {
        *value.decor_mut() = old.decor().clone();
    }
    *item = Item::Value(value);
}

/// A list of integers as a TOML array value.
pub(super) fn int_array(values: &[u32]) -> Value {
    let mut a = toml_edit::Array::new();
    for v in values {
        a.push(i64::from(*v));
    }
    Value::Array(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INLINE: &str = r#"# a comment that must survive
name = "inline"
description = "d"
story = "s"
backup = { incrementals = 2 }
volumes = [{ name = "data", size = "64MiB" }] # trailing

[[workloads]]
kind = "overwrite"
wall_clock_reason = "a wall-clock workload under test"
rate = "1MiB/s" # why this rate
future_key_the_shrinker_ignores = 1
"#;

    #[test]
    fn a_draft_is_validated_and_inline_sections_become_tables() {
        let err = Draft::parse(Path::new("x.toml"), INLINE).unwrap_err();
        // The unknown key is the loader's business: a draft is always valid.
        assert!(matches!(err, DraftError::Invalid(_)), "{err:?}");

        let text = INLINE.replace("future_key_the_shrinker_ignores = 1\n", "");
        let d = Draft::parse(Path::new("x.toml"), &text).unwrap();
        let out = d.text();
        assert!(out.starts_with("# a comment that must survive\n"), "{out}");
        assert!(out.contains("[[volumes]]"), "{out}");
        assert!(out.contains("[backup]"), "{out}");
        let again = Draft::parse(Path::new("x.toml"), &out).unwrap();
        assert_eq!(again.scenario().backup.incrementals, 2);
        assert_eq!(again.scenario().volumes[0].size, 64 << 20);
    }

    #[test]
    fn edits_keep_comments_and_refuse_invalid_or_empty_results() {
        let text = INLINE.replace("future_key_the_shrinker_ignores = 1\n", "");
        let d = Draft::parse(Path::new("x.toml"), &text).unwrap();
        let slower = d
            .edited(|e| e.set("workloads", 0, "rate", "512KiB/s"))
            .unwrap();
        assert!(
            slower
                .text()
                .contains("rate = \"512KiB/s\" # why this rate"),
            "{}",
            slower.text()
        );
        // Nothing changed: no draft.
        assert!(d
            .edited(|e| e.set("workloads", 0, "rate", "1MiB/s"))
            .is_none());
        // Invalid (a volume smaller than ext4's minimum): no draft.
        assert!(d.edited(|e| e.set("volumes", 0, "size", "4KiB")).is_none());
        // The last volume cannot go.
        assert!(d.edited(|e| e.remove("volumes", 0)).is_none());
        let fewer = d.edited(|e| e.set_in("backup", "incrementals", 0)).unwrap();
        assert_eq!(fewer.scenario().backup.incrementals, 0);
        let dropped = d.edited(|e| e.remove("workloads", 0)).unwrap();
        assert!(dropped.scenario().workloads.is_empty());
        assert!(!dropped.text().contains("workloads"), "{}", dropped.text());
    }
}

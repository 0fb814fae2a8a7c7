//! lvm2's configuration text format, as used for VG metadata and backup files:
//! `name { ... }` sections, `key = value` settings, values that are integers, floats,
//! strings or arrays of them, and `#` comments.

use thiserror::Error;

/// A value on the right of `key = `.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    /// Kept as written so that a rewrite gives back the same text.
    Float(String),
    Str(String),
    Array(Vec<Value>),
}

/// An entry of a section: a setting or a subsection.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Value(Value),
    Section(Section),
}

/// A section body: entries in the order they were written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section {
    pub entries: Vec<(String, Node)>,
}

/// A syntax error with its position (1-based line and column).
#[derive(Debug, Clone, Error, PartialEq)]
#[error("line {line}, column {column}: {message}")]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Section {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }
    pub fn get_value(&self, key: &str) -> Option<&Value> {
        match self.get(key) {
            Some(Node::Value(v)) => Some(v),
            _ => None,
        }
    }
    pub fn get_section(&self, key: &str) -> Option<&Section> {
        match self.get(key) {
            Some(Node::Section(s)) => Some(s),
            _ => None,
        }
    }
    pub fn get_int(&self, key: &str) -> Option<i64> {
        match self.get_value(key) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get_value(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        match self.get_value(key) {
            Some(Value::Array(a)) => Some(a),
            _ => None,
        }
    }
    /// Replaces the entry `key` in place, or appends it.
    pub fn set(&mut self, key: &str, node: Node) {
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| k == key) {
            slot.1 = node;
        } else {
            self.entries.push((key.to_string(), node));
        }
    }
    pub fn set_value(&mut self, key: &str, value: Value) {
        self.set(key, Node::Value(value));
    }
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }
    /// The subsections, in order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.entries.iter().filter_map(|(k, n)| match n {
            Node::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
}

/// How printed text is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// As lvm2 writes metadata areas: no indentation.
    Disk,
    /// As lvm2 writes backup and archive files: one tab per level of nesting.
    File,
}

/// Parses a whole text (the body of an implicit top-level section).
/// A trailing NUL, as stored in metadata areas, ends the text.
pub fn parse(text: &[u8]) -> Result<Section, ConfigError> {
    let _ = text;
    todo!("parser")
}

/// Prints a section body so that `parse` gives it back.
pub fn print(section: &Section, style: Style) -> String {
    let _ = (section, style);
    todo!("printer")
}

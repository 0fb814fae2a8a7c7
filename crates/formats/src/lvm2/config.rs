//! lvm2's configuration text format, as used for VG metadata and backup files:
//! `name { ... }` sections, `key = value` settings, values that are integers, floats,
//! strings or arrays of them, and `#` comments.
//!
//! The grammar is that of lvm2's libdm-config, including its quirks:
//! - The tokenizer decides between key and value by the previous token alone: after `=`,
//!   `[` or `,` a word is a value, elsewhere a key. Tokens need no separator (`a=1b=2`).
//! - Keys are words running up to whitespace, `#`, `=`, `{` or `}` (so `a[0]` or `x,y` are
//!   keys), or quoted strings. A `/` in a key is a path: `a/b = 1` is `a { b = 1 }`.
//! - Integers are `[+-]?[0-9]+` read as by `strtoll(s, 0)`: a leading 0 means octal, and hex
//!   is refused (the token stops at the `x`). Floats are `[+-]?[0-9]*\.[0-9]*`.
//! - `"..."` strings unescape only `\"` and `\\`; `'...'` strings have no escapes; an
//!   unquoted word in value position is a string.
//! - In arrays, commas may be left out only before quoted strings: `["a" "b"]` is fine but
//!   `[1 2]` is not, since `2]` then reads as a key.
//! - Duplicate keys are kept in order, as lvm2 does when reading metadata.

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

/// Sections nested deeper than this are refused, so hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 128;

/// Parses a whole text (the body of an implicit top-level section).
/// A trailing NUL, as stored in metadata areas, ends the text.
///
/// The grammar is libdm-config's (see the module documentation). Strings and keys must be
/// UTF-8; invalid UTF-8 is an error rather than being replaced, so nothing is lost silently.
pub fn parse(text: &[u8]) -> Result<Section, ConfigError> {
    // lvm2's tokenizer stops at the first NUL wherever it is.
    let text = text
        .iter()
        .position(|&b| b == 0)
        .map_or(text, |n| &text[..n]);
    let mut p = Parser {
        lx: Lexer {
            text,
            tok: Tok::SectionEnd,
            start: 0,
            end: 0,
        },
    };
    p.advance()?;
    let mut root = Section::new();
    p.body(&mut root, 0, None)?;
    Ok(root)
}

/// Prints a section body so that `parse` gives it back.
///
/// That holds for every tree `parse` can return: keys non-empty and without `/` (lvm2 reads
/// `/` as a path separator), no NUL anywhere, floats written as `[+-]digits.digits`, and
/// arrays holding only scalars. Other trees are printed but cannot be read back.
pub fn print(section: &Section, style: Style) -> String {
    let mut out = String::new();
    write_section(&mut out, section, style, 0);
    out
}

/// Parses `text` and, if it parses, checks that printing it in both styles parses back to
/// the same tree. Used by the fuzz target and the corpus test; `Err` describes a mismatch.
pub fn check_round_trip(text: &[u8]) -> Result<(), String> {
    let Ok(tree) = parse(text) else { return Ok(()) };
    for style in [Style::Disk, Style::File] {
        let printed = print(&tree, style);
        match parse(printed.as_bytes()) {
            Ok(back) if back == tree => {}
            Ok(back) => {
                return Err(format!(
                    "{style:?} text reads back differently:\n{printed}\n{back:?}"
                ))
            }
            Err(e) => return Err(format!("{style:?} text does not parse: {e}\n{printed}")),
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Int,
    Float,
    /// 'single-quoted': no escapes.
    Quoted,
    /// "double-quoted": `\"` and `\\` escapes.
    Escaped,
    /// An unquoted word where a value is expected.
    Bare,
    /// An unquoted word where a key is expected.
    Ident,
    Eq,
    SectionBegin,
    SectionEnd,
    ArrayBegin,
    ArrayEnd,
    Comma,
    Eof,
}

/// C `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Bytes that end an identifier or bare word.
fn ends_word(b: u8) -> bool {
    is_space(b) || matches!(b, b'#' | b'=' | b'{' | b'}')
}

/// lvm2's tokenizer. Whether a word is a value or a key depends only on the previous
/// token, and tokens need no separator: `a=1b=2` is two settings.
struct Lexer<'a> {
    text: &'a [u8],
    tok: Tok,
    start: usize,
    end: usize,
}

impl<'a> Lexer<'a> {
    fn token(&self) -> &'a [u8] {
        &self.text[self.start..self.end]
    }

    /// Where an error at byte `at` is, 1-based, counting columns in characters.
    fn error(&self, at: usize, message: impl Into<String>) -> ConfigError {
        let before = &self.text[..at.min(self.text.len())];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |n| n + 1);
        ConfigError {
            line: self.line_of(at),
            column: before[line_start..]
                .iter()
                .filter(|&&b| b & 0xc0 != 0x80)
                .count()
                + 1,
            message: message.into(),
        }
    }

    fn line_of(&self, at: usize) -> usize {
        self.text[..at.min(self.text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The current token, quoted and shortened, for messages.
    fn describe(&self) -> String {
        if self.tok == Tok::Eof {
            return "end of text".into();
        }
        format!("'{}'", clip(&String::from_utf8_lossy(self.token())))
    }

    fn advance(&mut self) -> Result<(), ConfigError> {
        let values = matches!(self.tok, Tok::Eq | Tok::ArrayBegin | Tok::Comma);
        let t = self.text;
        let mut i = self.end;
        loop {
            match t.get(i) {
                Some(&b) if is_space(b) => i += 1,
                Some(b'#') => {
                    i = t[i..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(t.len(), |n| i + n)
                }
                _ => break,
            }
        }
        self.start = i;
        let Some(&c) = t.get(i) else {
            self.tok = Tok::Eof;
            self.end = i;
            return Ok(());
        };
        let mut e = i + 1;
        self.tok = match c {
            b'{' => Tok::SectionBegin,
            b'}' => Tok::SectionEnd,
            b'[' => Tok::ArrayBegin,
            b']' => Tok::ArrayEnd,
            b',' => Tok::Comma,
            b'=' => Tok::Eq,
            b'"' => loop {
                match t.get(e) {
                    Some(b'"') => {
                        e += 1;
                        break Tok::Escaped;
                    }
                    Some(b'\\') if e + 1 < t.len() => e += 2,
                    Some(b'\\') => {
                        return Err(self.error(i, "unterminated string: '\\' at end of text"))
                    }
                    Some(_) => e += 1,
                    None => return Err(self.error(i, "unterminated string")),
                }
            },
            b'\'' => match t[e..].iter().position(|&b| b == b'\'') {
                Some(n) => {
                    e += n + 1;
                    Tok::Quoted
                }
                None => return Err(self.error(i, "unterminated string")),
            },
            b'0'..=b'9' | b'+' | b'-' | b'.' if values => {
                let mut tok = if c == b'.' { Tok::Float } else { Tok::Int };
                while let Some(&b) = t.get(e) {
                    match b {
                        b'0'..=b'9' => {}
                        b'.' if tok == Tok::Int => tok = Tok::Float,
                        _ => break,
                    }
                    e += 1;
                }
                tok
            }
            _ => {
                while t.get(e).is_some_and(|&b| !ends_word(b)) {
                    e += 1;
                }
                if values {
                    Tok::Bare
                } else {
                    Tok::Ident
                }
            }
        };
        self.end = e;
        Ok(())
    }
}

struct Parser<'a> {
    lx: Lexer<'a>,
}

impl Parser<'_> {
    fn advance(&mut self) -> Result<(), ConfigError> {
        self.lx.advance()
    }

    fn error(&self, message: impl Into<String>) -> ConfigError {
        self.lx.error(self.lx.start, message)
    }

    /// Entries up to the end of text (top level) or the `}` closing `open`.
    fn body(
        &mut self,
        out: &mut Section,
        depth: usize,
        open: Option<(&str, usize)>,
    ) -> Result<(), ConfigError> {
        loop {
            match self.lx.tok {
                Tok::Eof => {
                    return match open {
                        None => Ok(()),
                        Some((name, at)) => Err(self.error(format!(
                            "unbalanced braces: section '{}' opened at line {} is never closed",
                            clip(name),
                            self.lx.line_of(at)
                        ))),
                    }
                }
                Tok::SectionEnd if open.is_some() => return self.advance(),
                Tok::SectionEnd => {
                    return Err(self.error("unbalanced braces: '}' without a matching '{'"))
                }
                Tok::Ident | Tok::Quoted | Tok::Escaped => self.entry(out, depth)?,
                Tok::Eq => return Err(self.error("missing key before '='")),
                Tok::SectionBegin => return Err(self.error("missing section name before '{'")),
                _ => {
                    return Err(self.error(format!("expected a key, found {}", self.lx.describe())))
                }
            }
        }
    }

    /// `key = value` or `key { ... }`.
    fn entry(&mut self, out: &mut Section, depth: usize) -> Result<(), ConfigError> {
        let at = self.lx.start;
        let key = self.text(self.lx.tok)?;
        if key.is_empty() {
            return Err(self.error("empty key"));
        }
        // lvm2 reads `a/b = 1` as `a { b = 1 }`, skipping empty components but making an
        // empty key of a trailing one, which we refuse instead.
        if key.ends_with('/') {
            return Err(self.error(format!("key '{}' ends with '/'", clip(&key))));
        }
        let path: Vec<&str> = key.split('/').filter(|s| !s.is_empty()).collect();
        let depth = depth + path.len();
        if depth > MAX_DEPTH {
            return Err(self.error(format!("sections nested deeper than {MAX_DEPTH} levels")));
        }
        self.advance()?;
        let mut node = match self.lx.tok {
            Tok::SectionBegin => {
                self.advance()?;
                let mut section = Section::new();
                self.body(&mut section, depth, Some((&key, at)))?;
                Node::Section(section)
            }
            Tok::Eq => {
                self.advance()?;
                Node::Value(self.value()?)
            }
            _ => {
                return Err(self.error(format!(
                    "expected '=' or '{{' after '{}', found {}",
                    clip(&key),
                    self.lx.describe()
                )))
            }
        };
        let Some((first, rest)) = path.split_first() else {
            return Err(self.lx.error(at, "empty key")); // unreachable: key has a non-'/' byte
        };
        for name in rest.iter().rev() {
            node = Node::Section(Section {
                entries: vec![(name.to_string(), node)],
            });
        }
        out.entries.push((first.to_string(), node));
        Ok(())
    }

    /// A scalar or `[ scalar, ... ]`; commas are optional only where the tokenizer can
    /// tell values apart without them (before a quoted string).
    fn value(&mut self) -> Result<Value, ConfigError> {
        if self.lx.tok != Tok::ArrayBegin {
            return self.scalar();
        }
        let open = self.lx.start;
        self.advance()?;
        let mut items = Vec::new();
        loop {
            match self.lx.tok {
                Tok::ArrayEnd => {
                    self.advance()?;
                    return Ok(Value::Array(items));
                }
                Tok::Eof => {
                    return Err(self.error(format!(
                        "unterminated array: '[' at line {} is never closed",
                        self.lx.line_of(open)
                    )))
                }
                Tok::ArrayBegin => return Err(self.error("nested arrays are not allowed")),
                // Only possible straight after an element: without a comma, the next
                // unquoted word is read as a key, as lvm2 does.
                Tok::Ident => {
                    return Err(self.error(format!(
                        "expected ',' or ']' after an array element, found {}",
                        self.lx.describe()
                    )))
                }
                _ => items.push(self.scalar()?),
            }
            if self.lx.tok == Tok::Comma {
                self.advance()?;
            }
        }
    }

    fn scalar(&mut self) -> Result<Value, ConfigError> {
        let value = match self.lx.tok {
            Tok::Int => Value::Int(
                parse_int(self.lx.token(), &self.lx.text[self.lx.end..])
                    .map_err(|m| self.error(m))?,
            ),
            Tok::Float => {
                let text = self.text(Tok::Float)?;
                check_float(&text).map_err(|m| self.error(m))?;
                Value::Float(text)
            }
            t @ (Tok::Quoted | Tok::Escaped | Tok::Bare) => Value::Str(self.text(t)?),
            _ => return Err(self.error(format!("expected a value, found {}", self.lx.describe()))),
        };
        self.advance()?;
        Ok(value)
    }

    /// The current token's text, unquoted and unescaped.
    fn text(&self, tok: Tok) -> Result<String, ConfigError> {
        let raw = self.lx.token();
        let bytes = match tok {
            Tok::Quoted => raw[1..raw.len() - 1].to_vec(),
            Tok::Escaped => unescape(&raw[1..raw.len() - 1]),
            _ => raw.to_vec(),
        };
        String::from_utf8(bytes).map_err(|_| self.error("invalid UTF-8"))
    }
}

/// Shortens text quoted in a message.
fn clip(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((n, _)) => format!("{}...", &text[..n]),
        None => text.to_string(),
    }
}

/// Undoes `\"` and `\\`; lvm2 keeps any other backslash as it is.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && matches!(s.get(i + 1), Some(b'"' | b'\\')) {
            i += 1;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// lvm2 hands an integer token (`[+-]?[0-9]*`) to `strtoll(..., 0)` and fails unless it
/// reads exactly the token: so a leading 0 means octal, and `0x1f` fails because strtoll
/// would read past the token, which has stopped at the `x`.
fn parse_int(tok: &[u8], after: &[u8]) -> Result<i64, String> {
    let shown = String::from_utf8_lossy(tok);
    let (negative, digits) = match tok {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, tok),
    };
    if digits.is_empty() {
        return Err(format!("invalid integer '{shown}'"));
    }
    if digits == b"0" && matches!(after, [b'x' | b'X', h, ..] if h.is_ascii_hexdigit()) {
        let hex = after
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        let hex = String::from_utf8_lossy(&after[..hex]);
        return Err(format!(
            "hexadecimal integer '{shown}{hex}' is not accepted by lvm2"
        ));
    }
    let (radix, digits) = match digits {
        [b'0', rest @ ..] if !rest.is_empty() => (8, rest),
        _ => (10, digits),
    };
    let mut magnitude: u64 = 0;
    for &d in digits {
        let d = u64::from(d - b'0');
        if d >= radix {
            return Err(format!(
                "invalid octal integer '{shown}' (a leading 0 means octal)"
            ));
        }
        magnitude = magnitude
            .checked_mul(radix)
            .and_then(|m| m.checked_add(d))
            .ok_or_else(|| format!("integer {shown} out of range"))?;
    }
    let value = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    i64::try_from(value).map_err(|_| format!("integer {shown} out of range"))
}

/// lvm2 fails where strtod reports ERANGE; a token with no digits at all (`.`, `-.`)
/// reads as 0 there, so it is accepted.
fn check_float(text: &str) -> Result<(), String> {
    let digits = text.trim_start_matches(['+', '-']);
    if digits == "." {
        return Ok(());
    }
    let value: f64 = text
        .parse()
        .map_err(|_| format!("invalid float '{text}'"))?;
    let nonzero = digits.bytes().any(|b| matches!(b, b'1'..=b'9'));
    if value.is_infinite() || value.is_subnormal() || (value == 0.0 && nonzero) {
        return Err(format!("float {text} out of range"));
    }
    Ok(())
}

fn write_section(out: &mut String, section: &Section, style: Style, level: usize) {
    let indent = match style {
        Style::Disk => 0,
        Style::File => level,
    };
    for (key, node) in &section.entries {
        out.push_str(&"\t".repeat(indent));
        write_key(out, key);
        match node {
            Node::Section(sub) => {
                out.push_str(" {\n");
                write_section(out, sub, style, level + 1);
                out.push_str(&"\t".repeat(indent));
                out.push_str("}\n");
            }
            Node::Value(value) => {
                out.push_str(" = ");
                write_value(out, value);
                out.push('\n');
            }
        }
    }
}

/// Keys are bare where the tokenizer reads them back whole; lvm2 also quotes any key
/// containing `#`, `"` or `!`.
fn write_key(out: &mut String, key: &str) {
    let bare = match key.as_bytes() {
        [] => false,
        [b'[' | b']' | b',' | b'\'', ..] => false,
        bytes => !bytes
            .iter()
            .any(|&b| ends_word(b) || matches!(b, b'"' | b'!')),
    };
    if bare {
        out.push_str(key);
    } else {
        write_string(out, key);
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(f),
        Value::Str(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What lvm2 2.03.16 wrote to a metadata area (NUL-terminated there).
    const DISK: &str = "vgt {
id = \"GxcpjS-hnrn-M2oA-1cVn-t1hJ-6Dzt-xawGVU\"
seqno = 1
format = \"lvm2\"
status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = \"thNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8\"
device = \"/dev/loop0\"

status = [\"ALLOCATABLE\"]
flags = []
dev_size = 131072
pe_start = 2048
pe_count = 15
}
}

}
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Sun Nov 22 22:48:32 2026

contents = \"Text Format Volume Group\"
version = 1

description = \"Write from vgcreate --devices /dev/loop0 vgt /dev/loop0.\"

creation_host = \"vm\"\t# Linux vm 6.18.44-fc-v769 #1 SMP PREEMPT_DYNAMIC @0 x86_64
creation_time = 1795387712\t# Sun Nov 22 22:48:32 2026
";

    /// What lvm2 2.03.16's vgcfgbackup wrote.
    const BACKUP: &str = "\
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Sun Nov 22 22:53:24 2026\n\
\n\
contents = \"Text Format Volume Group\"\n\
version = 1\n\
\n\
description = \"vgcfgbackup --devices /dev/loop0 -f /tmp/cfgwork/out.vg cfgvg\"\n\
\n\
creation_host = \"vm\"\t# Linux vm 6.18.44-fc-v769 #1 SMP PREEMPT_DYNAMIC @0 x86_64\n\
creation_time = 1795388004\t# Sun Nov 22 22:53:24 2026\n\
\n\
cfgvg {\n\
\tid = \"vXZFBb-UH40-Pe2D-lof9-20B5-fcIV-J3alRC\"\n\
\tseqno = 1\n\
\tformat = \"lvm2\"\t\t\t# informational\n\
\tstatus = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\n\
\tflags = []\n\
\textent_size = 8192\t\t# 4 Megabytes\n\
\tmax_lv = 0\n\
\tmax_pv = 0\n\
\tmetadata_copies = 0\n\
\n\
\tphysical_volumes {\n\
\n\
\t\tpv0 {\n\
\t\t\tid = \"NjQRUc-hA28-3Fuh-9OJt-l5Oo-Y59q-LnIb8o\"\n\
\t\t\tdevice = \"/dev/loop0\"\t# Hint only\n\
\n\
\t\t\tstatus = [\"ALLOCATABLE\"]\n\
\t\t\tflags = []\n\
\t\t\tdev_size = 131072\t# 64 Megabytes\n\
\t\t\tpe_start = 2048\n\
\t\t\tpe_count = 15\t# 60 Megabytes\n\
\t\t}\n\
\t}\n\
\n\
\n\
}\n";

    /// lvm2's layout without its blank lines and comments: what `print` should give.
    fn strip_comments(text: &str) -> String {
        text.lines()
            .map(|l| {
                l.split_once("\t#")
                    .map_or(l, |(l, _)| l)
                    .trim_end_matches('\t')
            })
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn strs(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::Str(s.to_string())).collect())
    }

    fn err(text: &str) -> ConfigError {
        parse(text.as_bytes()).expect_err(text)
    }

    #[test]
    fn config_disk_text() {
        let mut raw = DISK.as_bytes().to_vec();
        raw.extend_from_slice(b"\0\0garbage after the NUL");
        let tree = parse(&raw).unwrap();
        let keys: Vec<_> = tree.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "vgt",
                "contents",
                "version",
                "description",
                "creation_host",
                "creation_time"
            ]
        );
        assert_eq!(tree.get_int("creation_time"), Some(1795387712));
        assert_eq!(tree.get_str("creation_host"), Some("vm"));
        let vg = tree.get_section("vgt").unwrap();
        assert_eq!(
            vg.get_value("status"),
            Some(&strs(&["RESIZEABLE", "READ", "WRITE"]))
        );
        assert_eq!(vg.get_array("flags"), Some(&[][..]));
        let pv = vg
            .get_section("physical_volumes")
            .unwrap()
            .get_section("pv0")
            .unwrap();
        assert_eq!(pv.get_str("device"), Some("/dev/loop0"));
        assert_eq!(pv.get_value("status"), Some(&strs(&["ALLOCATABLE"])));
        assert_eq!(pv.get_int("pe_count"), Some(15));
        // Line for line what lvm2 wrote, less blank lines and comments.
        assert_eq!(print(&tree, Style::Disk), strip_comments(DISK));
        assert_eq!(parse(print(&tree, Style::File).as_bytes()).unwrap(), tree);
    }

    #[test]
    fn config_backup_file() {
        let tree = parse(BACKUP.as_bytes()).unwrap();
        let vg = tree.get_section("cfgvg").unwrap();
        assert_eq!(vg.get_str("format"), Some("lvm2"));
        assert_eq!(vg.get_int("extent_size"), Some(8192));
        let pv = vg
            .get_section("physical_volumes")
            .unwrap()
            .get_section("pv0")
            .unwrap();
        assert_eq!(pv.get_int("dev_size"), Some(131072));
        assert_eq!(print(&tree, Style::File), strip_comments(BACKUP));
        assert_eq!(parse(print(&tree, Style::Disk).as_bytes()).unwrap(), tree);
    }

    #[test]
    fn config_lv_segment_multiline_array() {
        // lvm2 writes area lists over several lines.
        let text = "segment1 {\nstart_extent = 0\nextent_count = 2\n\ntype = \"striped\"\n\
                    stripe_count = 1\n\nstripes = [\n\"pv0\", 0,\n\"pv1\", 7\n]\n}\n";
        let seg = parse(text.as_bytes()).unwrap();
        let seg = seg.get_section("segment1").unwrap();
        let want = [
            Value::Str("pv0".into()),
            Value::Int(0),
            Value::Str("pv1".into()),
            Value::Int(7),
        ];
        assert_eq!(seg.get_array("stripes"), Some(&want[..]));
        assert_eq!(
            print(&parse(text.as_bytes()).unwrap(), Style::File)
                .lines()
                .nth(5),
            Some("\tstripes = [\"pv0\", 0, \"pv1\", 7]")
        );
    }

    #[test]
    fn config_print_styles() {
        let mut inner = Section::new();
        inner.set_value("n", Value::Int(-3));
        inner.set_value("f", Value::Float("0.50".into()));
        inner.set_value("a", Value::Array(vec![Value::Int(1), Value::Int(2)]));
        let mut root = Section::new();
        root.set(
            "vg",
            Node::Section(Section {
                entries: vec![("pv".into(), Node::Section(inner))],
            }),
        );
        root.set_value("s", Value::Str("say \"hi\" \\o/".into()));
        root.set_value("key with space", Value::Array(vec![]));
        assert_eq!(
            print(&root, Style::Disk),
            "vg {\npv {\nn = -3\nf = 0.50\na = [1, 2]\n}\n}\ns = \"say \\\"hi\\\" \\\\o/\"\n\
             \"key with space\" = []\n"
        );
        assert_eq!(
            print(&root, Style::File),
            "vg {\n\tpv {\n\t\tn = -3\n\t\tf = 0.50\n\t\ta = [1, 2]\n\t}\n}\n\
             s = \"say \\\"hi\\\" \\\\o/\"\n\"key with space\" = []\n"
        );
        for style in [Style::Disk, Style::File] {
            assert_eq!(parse(print(&root, style).as_bytes()).unwrap(), root);
        }
    }

    #[test]
    fn config_lexical_quirks() {
        let tree = parse(
            b"a=1b=\"x\"c{d=2}# comment\r\n\
              'quoted key' = 'no \\escapes' \"esc\\\"aped\" = \"\\\\ \\n \\\"\"\n\
              oct = 010 neg = -0777 plus = +5 big = -9223372036854775808\n\
              f = -1. g = .5 h = .\n\
              bare = foo,bar] odd[0],x = word\n\
              arr = [ \"a\" \"b\" 'c', 1 , 2.5, w ,] e = [ ]\n\
              p/q//r = 1 dup = 1 dup = 2\n\
              multi = \"line1\nline2\"",
        )
        .unwrap();
        let expect = [
            ("a", Value::Int(1)),
            ("b", Value::Str("x".into())),
            ("quoted key", Value::Str("no \\escapes".into())),
            ("esc\"aped", Value::Str("\\ \\n \"".into())),
            ("oct", Value::Int(8)),
            ("neg", Value::Int(-511)),
            ("plus", Value::Int(5)),
            ("big", Value::Int(i64::MIN)),
            ("f", Value::Float("-1.".into())),
            ("g", Value::Float(".5".into())),
            ("h", Value::Float(".".into())),
            ("bare", Value::Str("foo,bar]".into())),
            ("odd[0],x", Value::Str("word".into())),
        ];
        for (key, value) in expect {
            assert_eq!(tree.get_value(key), Some(&value), "{key}");
        }
        assert_eq!(tree.get_section("c").unwrap().get_int("d"), Some(2));
        let arr = [
            Value::Str("a".into()),
            Value::Str("b".into()),
            Value::Str("c".into()),
            Value::Int(1),
            Value::Float("2.5".into()),
            Value::Str("w".into()),
        ];
        assert_eq!(tree.get_array("arr"), Some(&arr[..]));
        assert_eq!(tree.get_array("e"), Some(&[][..]));
        // A '/' in a key is a path, as lvm2 reads it.
        let r = tree
            .get_section("p")
            .unwrap()
            .get_section("q")
            .unwrap()
            .get_int("r");
        assert_eq!(r, Some(1));
        // Duplicates are kept in order; lookups see the first.
        let dups: Vec<_> = tree.entries.iter().filter(|(k, _)| k == "dup").collect();
        assert_eq!(dups.len(), 2);
        assert_eq!(tree.get_int("dup"), Some(1));
        assert_eq!(tree.get_str("multi"), Some("line1\nline2"));
        check_round_trip(b"a=1").unwrap();
    }

    #[test]
    fn config_empty_inputs() {
        for text in ["", "   \n\t", "# only a comment", "\0vg { x = 1"] {
            assert_eq!(parse(text.as_bytes()).unwrap(), Section::new(), "{text:?}");
        }
        assert_eq!(print(&Section::new(), Style::File), "");
    }

    #[test]
    fn config_errors() {
        let cases: &[(&str, usize, usize, &str)] = &[
            (
                "x = 1\nvg0 {\n a = 1\n",
                4,
                1,
                "unbalanced braces: section 'vg0' opened at line 2 is never closed",
            ),
            (
                "a = 1\n}\n",
                2,
                1,
                "unbalanced braces: '}' without a matching '{'",
            ),
            ("a = \"abc\n", 1, 5, "unterminated string"),
            ("a = 'abc", 1, 5, "unterminated string"),
            (
                "a = \"abc\\",
                1,
                5,
                "unterminated string: '\\' at end of text",
            ),
            ("foo 1", 1, 5, "expected '=' or '{' after 'foo', found '1'"),
            (
                "foo",
                1,
                4,
                "expected '=' or '{' after 'foo', found end of text",
            ),
            ("= 1", 1, 1, "missing key before '='"),
            ("{ a = 1 }", 1, 1, "missing section name before '{'"),
            ("a = 1 ]", 1, 7, "expected a key, found ']'"),
            ("a = 1 , b = 2", 1, 7, "expected a key, found ','"),
            (
                "@@@ !!!",
                1,
                5,
                "expected '=' or '{' after '@@@', found '!!!'",
            ),
            (
                "a = 99999999999999999999",
                1,
                5,
                "integer 99999999999999999999 out of range",
            ),
            (
                "a = 9223372036854775808",
                1,
                5,
                "integer 9223372036854775808 out of range",
            ),
            (
                "a = -9223372036854775809",
                1,
                5,
                "integer -9223372036854775809 out of range",
            ),
            (
                "a = 0x10",
                1,
                5,
                "hexadecimal integer '0x10' is not accepted by lvm2",
            ),
            (
                "a = 09",
                1,
                5,
                "invalid octal integer '09' (a leading 0 means octal)",
            ),
            ("a = -", 1, 5, "invalid integer '-'"),
            (
                "a = 1.5e3",
                1,
                10,
                "expected '=' or '{' after 'e3', found end of text",
            ),
            (
                "a = [1, 2",
                1,
                10,
                "unterminated array: '[' at line 1 is never closed",
            ),
            ("a = [[1]]", 1, 6, "nested arrays are not allowed"),
            (
                "a = [1 2]",
                1,
                8,
                "expected ',' or ']' after an array element, found '2]'",
            ),
            ("a = [1,,2]", 1, 8, "expected a value, found ','"),
            ("a = [1, }", 1, 9, "expected a value, found '}'"),
            ("a =", 1, 4, "expected a value, found end of text"),
            ("a = {", 1, 5, "expected a value, found '{'"),
            ("\"\" = 1", 1, 1, "empty key"),
            ("'' { }", 1, 1, "empty key"),
            ("a/ = 1", 1, 1, "key 'a/' ends with '/'"),
            (
                "a = \"\u{e9}\"\nb = \"\\\u{e9}",
                2,
                5,
                "unterminated string",
            ),
        ];
        for &(text, line, column, message) in cases {
            assert_eq!(
                err(text),
                ConfigError {
                    line,
                    column,
                    message: message.into()
                },
                "{text:?}"
            );
        }
        // Columns count characters, not bytes.
        assert_eq!(err("é = [1 2]").column, 8);
        let e = parse(b"a = 1\nb = \"\xff\"").unwrap_err();
        assert_eq!(
            (e.line, e.column, e.message.as_str()),
            (2, 5, "invalid UTF-8")
        );
        assert_eq!(parse(b"\xc3 = 1").unwrap_err().message, "invalid UTF-8");
        let big = format!("a = 1{}.0", "0".repeat(400));
        assert_eq!(
            err(&big).message,
            format!("float 1{}.0 out of range", "0".repeat(400))
        );
        assert!(err(&format!("a = 0.{}1", "0".repeat(400)))
            .message
            .ends_with("out of range"));
        assert_eq!(
            err("a = 1\nb = 2 3").to_string(),
            "line 2, column 8: expected '=' or '{' after '3', found end of text"
        );
    }

    #[test]
    fn config_depth_limit() {
        let nest = |n: usize| format!("{}x = 1{}", "s {".repeat(n), "}".repeat(n));
        parse(nest(MAX_DEPTH - 1).as_bytes()).unwrap();
        let e = err(&nest(MAX_DEPTH));
        assert_eq!(
            e.message,
            format!("sections nested deeper than {MAX_DEPTH} levels")
        );
        assert_eq!(err(&"a{".repeat(100_000)).message, e.message);
        let path = vec!["p"; MAX_DEPTH + 1].join("/");
        assert_eq!(err(&format!("{path} = 1")).message, e.message);
    }

    #[test]
    fn config_fuzz_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/lvm2_text");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read(&path).unwrap();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
            check_round_trip(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        assert!(seen >= 3);
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z_][a-z0-9_.+-]{0,8}", "[^/\u{0}]{1,8}"]
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Int),
            "[+-]?[0-9]{0,6}\\.[0-9]{0,6}".prop_map(Value::Float),
            "[^\u{0}]{0,12}".prop_map(Value::Str),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            scalar(),
            prop::collection::vec(scalar(), 0..4).prop_map(Value::Array)
        ]
    }

    fn section() -> impl Strategy<Value = Section> {
        let leaf = prop::collection::vec((key(), value().prop_map(Node::Value)), 0..5);
        leaf.prop_map(|entries| Section { entries })
            .prop_recursive(4, 40, 5, |inner| {
                prop::collection::vec(
                    (
                        key(),
                        prop_oneof![value().prop_map(Node::Value), inner.prop_map(Node::Section)],
                    ),
                    0..5,
                )
                .prop_map(|entries| Section { entries })
            })
    }

    proptest! {
        #[test]
        fn config_print_parse_round_trip(tree in section()) {
            for style in [Style::Disk, Style::File] {
                let text = print(&tree, style);
                prop_assert_eq!(parse(text.as_bytes()), Ok(tree.clone()), "{}", text);
            }
        }

        #[test]
        fn config_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(check_round_trip(&bytes).is_ok());
        }

        #[test]
        fn config_parse_never_panics_on_near_text(
            text in "[a-z0-9 \n\t#=\\{\\}\\[\\],\"'\\\\./+-]{0,80}"
        ) {
            prop_assert!(check_round_trip(text.as_bytes()).is_ok());
        }
    }
}

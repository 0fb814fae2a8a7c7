//! Tables in dmsetup's text syntax: one row per line, `<start> <length> <type> [<params>]`,
//! start and length in 512-byte sectors.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The largest device size in sectors: its size in bytes must still fit in a `u64`.
pub const MAX_SECTORS: u64 = u64::MAX >> 9;

/// Why a table's text or a row added to it is not a valid table. Lines are numbered from 1
/// in the text; for rows added with [`Table::push`], the line is the row's number, which is
/// its line in the printed table.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TableError {
    #[error("table line {line}: expected `<start> <length> <target type> [<params>...]`, found {found:?}")]
    MissingFields { line: usize, found: String },
    #[error("table line {line}: {field} {value:?} is not a whole number of sectors")]
    BadNumber {
        line: usize,
        field: &'static str,
        value: String,
    },
    #[error("table line {line}: the row has length 0; every row must cover at least one sector")]
    ZeroLength { line: usize },
    #[error("table line {line}: the row starts at sector {start}, but the rows before it end at sector {expected}; rows must follow each other without gaps or overlaps, from sector 0")]
    NotContiguous {
        line: usize,
        start: u64,
        expected: u64,
    },
    #[error("table line {line}: the row ends past sector {max}, the largest device size tessera can address (start {start} + length {length})")]
    TooLarge {
        line: usize,
        start: u64,
        length: u64,
        max: u64,
    },
    #[error("table line {line}: target type {target_type:?} must be one word")]
    BadTargetType { line: usize, target_type: String },
    #[error("table line {line}: the parameters contain a line break; a row is one line")]
    LineBreak { line: usize },
}

/// One row: `length_sectors` sectors from `start_sectors` go to a target of `target_type`,
/// built from `params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub start_sectors: u64,
    pub length_sectors: u64,
    pub target_type: String,
    /// The rest of the line, trimmed; see [`Row::args`] for how targets see it.
    pub params: String,
}

impl Row {
    /// The parameters split into arguments as dm does: on whitespace, with a backslash
    /// making the next character literal (so a file name may hold a space as `\ `).
    pub fn args(&self) -> Vec<String> {
        split_args(&self.params)
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.start_sectors, self.length_sectors, self.target_type
        )?;
        if !self.params.is_empty() {
            write!(f, " {}", self.params)?;
        }
        Ok(())
    }
}

/// A valid table: rows contiguous from sector 0, none empty, the end addressable. It may
/// have no rows; a mapped device refuses to load such a table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    rows: Vec<Row>,
}

impl Table {
    /// A table with no rows.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses dmsetup table text. Blank lines and lines starting with `#` are ignored.
    pub fn parse(text: &str) -> Result<Table, TableError> {
        let mut table = Table::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim_ascii();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (start, rest) = split_word(trimmed);
            let (length, rest) = split_word(rest);
            let (target_type, params) = split_word(rest);
            if target_type.is_empty() {
                return Err(TableError::MissingFields {
                    line,
                    found: trimmed.to_string(),
                });
            }
            let number = |field, value: &str| {
                value.parse::<u64>().map_err(|_| TableError::BadNumber {
                    line,
                    field,
                    value: value.to_string(),
                })
            };
            let start = number("start", start)?;
            let length = number("length", length)?;
            table.check_next(line, start, length)?;
            table.rows.push(Row {
                start_sectors: start,
                length_sectors: length,
                target_type: target_type.to_string(),
                params: params.to_string(),
            });
        }
        Ok(table)
    }

    /// Appends a row after the last one.
    pub fn push(
        &mut self,
        length_sectors: u64,
        target_type: &str,
        params: &str,
    ) -> Result<&Row, TableError> {
        let line = self.rows.len() + 1;
        if target_type.is_empty() || target_type.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(TableError::BadTargetType {
                line,
                target_type: target_type.to_string(),
            });
        }
        if params.contains(['\n', '\r']) {
            return Err(TableError::LineBreak { line });
        }
        let start = self.size_sectors();
        self.check_next(line, start, length_sectors)?;
        self.rows.push(Row {
            start_sectors: start,
            length_sectors,
            target_type: target_type.to_string(),
            params: params.trim_ascii().to_string(),
        });
        Ok(&self.rows[line - 1])
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Sectors the table covers: the end of its last row.
    pub fn size_sectors(&self) -> u64 {
        self.rows
            .last()
            .map_or(0, |r| r.start_sectors + r.length_sectors)
    }

    fn check_next(&self, line: usize, start: u64, length: u64) -> Result<(), TableError> {
        if length == 0 {
            return Err(TableError::ZeroLength { line });
        }
        let expected = self.size_sectors();
        if start != expected {
            return Err(TableError::NotContiguous {
                line,
                start,
                expected,
            });
        }
        match start.checked_add(length) {
            Some(end) if end <= MAX_SECTORS => Ok(()),
            _ => Err(TableError::TooLarge {
                line,
                start,
                length,
                max: MAX_SECTORS,
            }),
        }
    }
}

impl FromStr for Table {
    type Err = TableError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Table::parse(text)
    }
}

/// One row per line, each ending in a newline, as `dmsetup table` prints.
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for row in &self.rows {
            writeln!(f, "{row}")?;
        }
        Ok(())
    }
}

/// The first word of `s` and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_ascii_start();
    let end = s.find(|c: char| c.is_ascii_whitespace()).unwrap_or(s.len());
    (&s[..end], s[end..].trim_ascii())
}

/// Splits target parameters as the kernel's `dm_split_args` does.
pub fn split_args(params: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = params.chars();
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() {
            args.extend(current.take());
            continue;
        }
        let word = current.get_or_insert_with(String::new);
        match c {
            // A trailing backslash has nothing to escape and stays literal.
            '\\' => word.push(chars.next().unwrap_or('\\')),
            _ => word.push(c),
        }
    }
    args.extend(current);
    args
}

/// Quotes one argument so that [`split_args`] gives it back whole: the inverse for targets
/// printing device names in their table line.
pub fn escape_arg(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    for c in arg.chars() {
        if c == '\\' || c.is_ascii_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LVM_LIKE: &str = "\
# vg0-lv0, as lvm2 would load it
0 2048 linear /dev/loop0 2048

2048 4096 striped 2 128 /dev/loop1 2048 /dev/loop2 2048
6144 8 zero
";

    #[test]
    fn parses_and_prints_rows() {
        let table = Table::parse(LVM_LIKE).unwrap();
        assert_eq!(table.rows().len(), 3);
        assert_eq!(table.size_sectors(), 6152);
        let r = &table.rows()[1];
        assert_eq!((r.start_sectors, r.length_sectors), (2048, 4096));
        assert_eq!(r.target_type, "striped");
        assert_eq!(r.params, "2 128 /dev/loop1 2048 /dev/loop2 2048");
        assert_eq!(table.rows()[2].params, "");
        assert_eq!(
            table.to_string(),
            "0 2048 linear /dev/loop0 2048\n\
             2048 4096 striped 2 128 /dev/loop1 2048 /dev/loop2 2048\n\
             6144 8 zero\n"
        );
        assert_eq!(Table::parse(&table.to_string()).unwrap(), table);
    }

    #[test]
    fn whitespace_and_comments_are_normalized() {
        let text = "  \t# comment\r\n\t0\t100   linear  pv0.img   0  \r\n   \n100 1 error\n";
        let table: Table = text.parse().unwrap();
        assert_eq!(table.to_string(), "0 100 linear pv0.img   0\n100 1 error\n");
        assert_eq!(table.rows()[0].args(), ["pv0.img", "0"]);
        assert_eq!(Table::parse("").unwrap(), Table::new());
        assert!(Table::parse("# only a comment\n\n").unwrap().is_empty());
    }

    #[test]
    fn push_builds_the_same_table() {
        let mut table = Table::new();
        table.push(2048, "linear", "/dev/loop0 2048").unwrap();
        table
            .push(4096, "striped", " 2 128 /dev/loop1 2048 /dev/loop2 2048 ")
            .unwrap();
        table.push(8, "zero", "").unwrap();
        assert_eq!(table, Table::parse(LVM_LIKE).unwrap());
    }

    #[test]
    fn args_split_like_dm() {
        assert_eq!(split_args(r"my\ disk.img 0"), ["my disk.img", "0"]);
        assert_eq!(split_args(r"a\\b c\"), [r"a\b", r"c\"]);
        assert_eq!(split_args("  "), Vec::<String>::new());
        assert_eq!(split_args("x\t\ty"), ["x", "y"]);
        for arg in [r"my disk", r"a\b", "tab\there", "plain"] {
            let line = format!("{} next", escape_arg(arg));
            assert_eq!(split_args(&line), [arg, "next"], "{line}");
        }
    }

    fn err(text: &str) -> TableError {
        Table::parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        use TableError::*;
        let cases: Vec<(&str, TableError)> = vec![
            (
                "0",
                MissingFields {
                    line: 1,
                    found: "0".into(),
                },
            ),
            (
                "# c\n0 100",
                MissingFields {
                    line: 2,
                    found: "0 100".into(),
                },
            ),
            (
                "x 100 zero",
                BadNumber {
                    line: 1,
                    field: "start",
                    value: "x".into(),
                },
            ),
            (
                "0 -5 zero",
                BadNumber {
                    line: 1,
                    field: "length",
                    value: "-5".into(),
                },
            ),
            (
                "0 1.5 zero",
                BadNumber {
                    line: 1,
                    field: "length",
                    value: "1.5".into(),
                },
            ),
            (
                "0 18446744073709551616 zero",
                BadNumber {
                    line: 1,
                    field: "length",
                    value: "18446744073709551616".into(),
                },
            ),
            ("0 0 zero", ZeroLength { line: 1 }),
            (
                "1 100 zero",
                NotContiguous {
                    line: 1,
                    start: 1,
                    expected: 0,
                },
            ),
            (
                "0 100 zero\n\n101 5 zero",
                NotContiguous {
                    line: 3,
                    start: 101,
                    expected: 100,
                },
            ),
            (
                "0 100 zero\n50 5 zero",
                NotContiguous {
                    line: 2,
                    start: 50,
                    expected: 100,
                },
            ),
            (
                "0 36028797018963968 zero",
                TooLarge {
                    line: 1,
                    start: 0,
                    length: 1 << 55,
                    max: MAX_SECTORS,
                },
            ),
            (
                "0 10 zero\n10 18446744073709551615 zero",
                TooLarge {
                    line: 2,
                    start: 10,
                    length: u64::MAX,
                    max: MAX_SECTORS,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "{text:?}");
        }
        let msg = err("0 100 zero\n50 5 zero").to_string();
        assert!(msg.starts_with("table line 2:"), "{msg}");
        assert!(
            msg.contains("sector 50") && msg.contains("sector 100"),
            "{msg}"
        );
        // The largest addressable table is fine.
        Table::parse(&format!("0 {MAX_SECTORS} zero")).unwrap();
    }

    #[test]
    fn push_rejects_bad_rows() {
        let mut t = Table::new();
        assert_eq!(
            t.push(0, "zero", ""),
            Err(TableError::ZeroLength { line: 1 })
        );
        assert!(matches!(
            t.push(1, "two words", ""),
            Err(TableError::BadTargetType { line: 1, .. })
        ));
        assert!(matches!(
            t.push(1, "", ""),
            Err(TableError::BadTargetType { .. })
        ));
        assert_eq!(
            t.push(1, "linear", "pv0 0\n1 1 zero"),
            Err(TableError::LineBreak { line: 1 })
        );
        t.push(MAX_SECTORS - 1, "zero", "").unwrap();
        assert!(matches!(
            t.push(2, "zero", ""),
            Err(TableError::TooLarge { line: 2, .. })
        ));
        assert_eq!(t.rows().len(), 1, "failed pushes leave the table alone");
    }

    fn arb_row() -> impl Strategy<Value = (u64, String, String)> {
        (
            1u64..1 << 40,
            "[a-z][a-z0-9_-]{0,15}",
            "([!-~]{1,12}( |\t){1,2}){0,5}[!-~]{0,12}",
        )
    }

    proptest! {
        #[test]
        fn print_parse_round_trip(rows in prop::collection::vec(arb_row(), 0..8)) {
            let mut table = Table::new();
            for (len, ty, params) in &rows {
                table.push(*len, ty, params).unwrap();
            }
            let text = table.to_string();
            prop_assert_eq!(Table::parse(&text).unwrap(), table.clone());
            prop_assert_eq!(text.lines().count(), rows.len());
        }
    }
}

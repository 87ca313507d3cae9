//! Printing results to stdout: tables for people, JSON/YAML for scripts.

use std::io::Write;

use serde::Serialize;
use unicode_width::UnicodeWidthStr;

use crate::cli::OutputFormat;
use crate::exit::Failure;

/// A kubectl-style table: upper-case headers, no borders, each column as wide as its widest
/// cell, two spaces between columns, no padding at either end of a line.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut columns = Columns::new(headers);
    for r in &rows {
        columns.fit(r);
    }
    let mut lines = vec![columns.header()];
    lines.extend(rows.iter().map(|r| columns.row(r)));
    lines.join("\n")
}

/// The layout of a [`table`], built a row at a time: [`Columns::fit`] every row first, then
/// print the header and each row. A table of any length is printed this way in memory that
/// does not grow with it, reading its rows twice (`inspect --files`); kubectl itself aligns
/// a table over all its rows, buffering them in a `tabwriter` until the end.
///
/// The same text as comfy-table's `NOTHING` preset with each line trimmed, which this table
/// was before (a test holds them equal): a column is as wide as its widest line (terminal
/// columns, `unicode-width`), at least 1; a cell is padded by a space either side; a cell
/// with newlines spans as many lines. (comfy-table also wraps a line wider than 65,535
/// columns; no path is that long.)
#[derive(Debug, Clone)]
pub struct Columns {
    headers: Vec<String>,
    widths: Vec<usize>,
}

impl Columns {
    pub fn new(headers: &[&str]) -> Columns {
        let headers: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
        let mut c = Columns {
            widths: vec![1; headers.len()],
            headers: Vec::new(),
        };
        c.fit(&headers);
        c.headers = headers;
        c
    }

    /// Widens the columns to hold `row`.
    pub fn fit<S: AsRef<str>>(&mut self, row: &[S]) {
        for (w, cell) in self.widths.iter_mut().zip(row) {
            for line in cell.as_ref().split('\n') {
                *w = (*w).max(line.width());
            }
        }
    }

    /// The header line.
    pub fn header(&self) -> String {
        self.row(&self.headers)
    }

    /// `row`'s line (lines, if a cell holds newlines), without a trailing newline.
    pub fn row<S: AsRef<str>>(&self, row: &[S]) -> String {
        let cell = |i: usize| row.get(i).map_or("", |c| c.as_ref());
        let height = (0..self.widths.len())
            .map(|i| cell(i).split('\n').count())
            .max()
            .unwrap_or(1);
        // A line at a time into one string (a row is printed a million times by `inspect`).
        let mut out = String::new();
        for n in 0..height {
            if n > 0 {
                out.push('\n');
            }
            let start = out.len();
            for (i, w) in self.widths.iter().enumerate() {
                let text = match height {
                    1 => cell(i),
                    _ => cell(i).split('\n').nth(n).unwrap_or(""),
                };
                out.push(' ');
                out.push_str(text);
                out.extend(std::iter::repeat_n(' ', w.saturating_sub(text.width()) + 1));
            }
            let end = start + out[start..].trim_end().len();
            out.truncate(end);
            let lead = end - start - out[start..].trim_start().len();
            out.drain(start..start + lead);
        }
        out
    }
}

/// Writes `value` as JSON or YAML; a closed pipe (`| head`) is not an error.
pub fn structured<T: Serialize + ?Sized>(format: OutputFormat, value: &T) -> Result<(), Failure> {
    print_stdout(&rendered(format, value)?)
}

/// `value` as [`structured`] prints it.
pub fn rendered<T: Serialize + ?Sized>(format: OutputFormat, value: &T) -> Result<String, Failure> {
    Ok(match format {
        OutputFormat::Yaml => serde_yaml::to_string(value)
            .map_err(|e| Failure::runtime(format!("cannot render YAML: {e}")))?,
        _ => {
            serde_json::to_string_pretty(value)
                .map_err(|e| Failure::runtime(format!("cannot render JSON: {e}")))?
                + "\n"
        }
    })
}

pub fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut out = Stdout::new();
    out.write(text)?;
    out.finish()
}

/// stdout for output written a piece at a time (a table of a million rows): buffered, and
/// a closed pipe (`| head`) is not an error but the end: [`Stdout::write`] says when to stop.
pub struct Stdout {
    out: Option<std::io::BufWriter<std::io::StdoutLock<'static>>>,
}

impl Default for Stdout {
    fn default() -> Self {
        Stdout::new()
    }
}

impl Stdout {
    pub fn new() -> Stdout {
        Stdout {
            out: Some(std::io::BufWriter::with_capacity(
                64 << 10,
                std::io::stdout().lock(),
            )),
        }
    }

    /// Writes `text`; false once the reader has gone (nothing more needs writing).
    pub fn write(&mut self, text: &str) -> Result<bool, Failure> {
        let Some(out) = &mut self.out else {
            return Ok(false);
        };
        match out.write_all(text.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) => self.failed(e).map(|()| false),
        }
    }

    /// Flushes what is buffered.
    pub fn finish(mut self) -> Result<(), Failure> {
        match self.out.as_mut().map(|o| o.flush()) {
            Some(Err(e)) => self.failed(e),
            _ => Ok(()),
        }
    }

    fn failed(&mut self, e: std::io::Error) -> Result<(), Failure> {
        // Nothing more is written, and dropping the writer must not try to flush again.
        if let Some(w) = self.out.take() {
            let _ = w.into_parts();
        }
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(Failure::runtime(format!("cannot write to stdout: {e}")))
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`table`] printed when comfy-table drew it: the reference [`Columns`] must match,
    /// whatever the cells hold.
    fn comfy(headers: &[&str], rows: &[Vec<String>]) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING);
        t.set_header(headers.iter().map(|h| h.to_uppercase()));
        for r in rows {
            t.add_row(r.clone());
        }
        t.to_string()
            .lines()
            .map(|l| l.trim_start().trim_end())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn columns_print_what_comfy_table_printed() {
        let rows = |v: &[[&str; 4]]| -> Vec<Vec<String>> {
            v.iter()
                .map(|r| r.iter().map(|c| c.to_string()).collect())
                .collect()
        };
        let headers = ["type", "path", "size", "link"];
        for case in [
            rows(&[]),
            rows(&[["file", "a", "1", ""]]),
            // Wide (CJK, emoji) and zero-width (combining) characters count in terminal columns.
            rows(&[
                ["file", "日本語/ファイル.txt", "12", ""],
                ["symlink", "e\u{301}cole", "0", "-> 🦀/x"],
                ["dir", "", "", ""],
            ]),
            // A newline in a name makes a cell of two lines; trailing and leading spaces.
            rows(&[
                ["file", "two\nlines", "5", ""],
                ["file", " lead", "1", "-> trail "],
                ["hardlink", "x", "0", "-> a\nb\nc"],
            ]),
            // Cells left empty to the left of a line; tabs and control characters.
            rows(&[["", "tab\there", "", ""], ["file", "bell\u{7}", "3", ""]]),
        ] {
            let mut streamed = Columns::new(&headers);
            for r in &case {
                streamed.fit(r);
            }
            let mut lines = vec![streamed.header()];
            lines.extend(case.iter().map(|r| streamed.row(r)));
            assert_eq!(lines.join("\n"), comfy(&headers, &case), "{case:?}");
            assert_eq!(table(&headers, case.clone()), comfy(&headers, &case));
        }
    }

    #[test]
    fn tables_look_like_kubectl() {
        let t = table(&["name", "size"], vec![vec!["a".into(), "1".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with('a'));
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}

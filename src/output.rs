//! Printing results to stdout: tables for people, JSON/YAML for scripts.

use std::io::Write;

use comfy_table::{presets, Table};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::exit::Failure;

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(headers.iter().map(|h| h.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    // kubectl's tables have no left padding and two spaces between columns.
    let text = t.to_string();
    text.lines()
        .map(|l| l.trim_start().trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `value` as JSON or YAML; a closed pipe (`| head`) is not an error.
pub fn structured<T: Serialize>(format: OutputFormat, value: &T) -> Result<(), Failure> {
    let text = match format {
        OutputFormat::Yaml => serde_yaml::to_string(value)
            .map_err(|e| Failure::runtime(format!("cannot render YAML: {e}")))?,
        _ => {
            serde_json::to_string_pretty(value)
                .map_err(|e| Failure::runtime(format!("cannot render JSON: {e}")))?
                + "\n"
        }
    };
    print_stdout(&text)
}

pub fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::runtime(format!("cannot write to stdout: {e}"))),
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

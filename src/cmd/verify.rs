//! `kubectl pvbackup verify`: recompute every checksum of an archive and compare it with its
//! manifest. Offline; streams; exit 3 on any difference.

use serde_json::json;

use crate::archive::{verify_archive, verify_archive_streamed};
use crate::cli::OutputFormat;
use crate::destination::Destination;
use crate::destination::StoreOptions;
use crate::encryption::Identities;
use crate::exit::Failure;
use crate::locate::{encrypted_header, entries_failure, locate_open, resolve};
use crate::manifest::Header;
use crate::output;

pub fn run(
    backup: &str,
    from: Option<&str>,
    store: &StoreOptions,
    keys: Option<&Identities>,
    format: OutputFormat,
) -> Result<(), Failure> {
    if keys.is_none() {
        let (dest, mkey) = resolve(backup, from, store)?;
        if let Some(header) = encrypted_header(dest.as_ref(), &mkey) {
            return stored_only(dest.as_ref(), &mkey, &header, format);
        }
    }
    let (loc, entries) = locate_open(backup, from, store, keys)?;
    let reader = loc.open_archive()?;
    let started = std::time::Instant::now();
    let stored = std::io::BufReader::with_capacity(1 << 20, reader);
    let report = match entries {
        // Schema 2: the entries stream and the archive side by side, memory flat.
        Some(reader) => {
            let file = reader.file_name().to_string();
            let mut damaged = None;
            let mut entries = reader.map_while(|line| match line {
                Ok((e, _)) => Some(e),
                Err(e) => {
                    damaged = Some(e);
                    None
                }
            });
            let report = verify_archive_streamed(
                stored,
                loc.manifest.compression,
                &loc.manifest,
                &mut entries,
            );
            drop(entries);
            // A damaged entries stream is the finding, whatever the archive holds.
            if let Some(e) = damaged {
                return Err(entries_failure(&loc, &file, e));
            }
            report?
        }
        // Schema 1: read whole, as the release that wrote it did.
        None => verify_archive(stored, loc.manifest.compression, &loc.manifest)?,
    };
    let secs = started.elapsed().as_secs_f64();
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    let ok = report.is_ok();
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(
            format,
            &json!({
                "backup": loc.destination.locate(&loc.manifest_key),
                "archive": loc.destination.locate(&loc.archive_key),
                "ok": ok,
                "entries": loc.manifest.entry_count,
                "bytes": loc.manifest.archive.size,
                "seconds": secs,
                "problems": problems,
            }),
        )?,
        _ => {
            let mut text = String::new();
            for p in &problems {
                text.push_str(&format!("MISMATCH {p}\n"));
            }
            text.push_str(&format!(
                "{}: {} ({} entries, {} checked in {secs:.2}s)\n",
                loc.destination.locate(&loc.archive_key),
                if ok { "OK" } else { "DAMAGED" },
                loc.manifest.entry_count,
                output::human_bytes(loc.manifest.archive.size)
            ));
            output::print_stdout(&text)?;
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::integrity(format!(
            "{} problem(s) found; do not restore this backup",
            problems.len()
        )))
    }
}

/// What is left to check of an encrypted backup without its key: that every stored object is
/// the one the header names (size and sha256). Exit 0 when they all are, 3 when one is not;
/// the report says what could not be checked.
fn stored_only(
    dest: &dyn Destination,
    mkey: &str,
    header: &Header,
    format: OutputFormat,
) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let checks = crate::encryption::check_stored(dest, mkey, header)?;
    let secs = started.elapsed().as_secs_f64();
    let problems: Vec<String> = checks
        .iter()
        .filter_map(|c| c.problem.as_ref().map(|p| format!("{}: {p}", c.location)))
        .collect();
    let ok = problems.is_empty();
    let kinds = header
        .encryption
        .as_ref()
        .map(|e| crate::encryption::kinds_text(&e.recipients))
        .unwrap_or_default();
    const NOT_CHECKED: &str =
        "decryption, the entries and every file's sha256 (pass --identity to check them)";
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(
            format,
            &json!({
                "backup": dest.locate(mkey),
                "ok": ok,
                "encrypted": format!("age: {kinds}"),
                "checked": "stored_bytes",
                "stored": checks,
                "not_checked": ["decryption", "entries", "file_sha256"],
                "seconds": secs,
                "problems": problems,
            }),
        )?,
        _ => {
            let mut text = String::new();
            for c in &checks {
                text.push_str(&format!(
                    "{} {} {}: {}\n",
                    if c.problem.is_some() {
                        "MISMATCH"
                    } else {
                        "OK      "
                    },
                    c.part,
                    c.location,
                    c.problem.clone().unwrap_or_else(|| format!(
                        "{} stored, size and sha256 as the header says",
                        output::human_bytes(c.bytes)
                    )),
                ));
            }
            text.push_str(&format!(
                "{}: {} (encrypted, age: {kinds}; checked: the stored bytes of {} objects in {secs:.2}s; not checked without a key: {NOT_CHECKED})\n",
                dest.locate(mkey),
                if ok { "STORED BYTES OK" } else { "DAMAGED" },
                checks.len(),
            ));
            output::print_stdout(&text)?;
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::integrity(format!(
            "{} stored object(s) differ from the header; do not restore this backup",
            problems.len()
        )))
    }
}

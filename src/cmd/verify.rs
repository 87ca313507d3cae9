//! `kubectl pvbackup verify`: recompute every checksum of an archive and compare it with its
//! manifest. Offline; streams; exit 3 on any difference.

use serde_json::json;

use crate::archive::{verify_archive, verify_archive_streamed};
use crate::cli::OutputFormat;
use crate::destination::StoreOptions;
use crate::exit::Failure;
use crate::locate::{entries_failure, locate_open};
use crate::output;

pub fn run(
    backup: &str,
    from: Option<&str>,
    store: &StoreOptions,
    format: OutputFormat,
) -> Result<(), Failure> {
    let (loc, entries) = locate_open(backup, from, store)?;
    let reader = loc
        .destination
        .open(&loc.archive_key)
        .map_err(crate::locate::archive_missing)?;
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

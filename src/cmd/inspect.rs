//! `kubectl pvbackup inspect`: a manifest's summary, and with `--files` its entries.

use crate::cli::OutputFormat;
use crate::destination::StoreOptions;
use crate::exit::Failure;
use crate::locate::{entries_failure, locate, locate_open};
use crate::output;

pub fn run(
    backup: &str,
    from: Option<&str>,
    store: &StoreOptions,
    files: bool,
    keys: Option<&crate::encryption::Identities>,
    format: OutputFormat,
) -> Result<(), Failure> {
    if !files && keys.is_none() {
        let (dest, mkey) = crate::locate::resolve(backup, from, store)?;
        if let Some(header) = crate::locate::encrypted_header(dest.as_ref(), &mkey) {
            return header_only(dest.as_ref(), &mkey, &header, format);
        }
    }
    // Without --files the entries are only checked (read as a stream, memory flat whatever
    // their number, through the decryptor for an encrypted backup); with it they are printed,
    // so loaded.
    let loc = if files {
        locate(backup, from, store, keys)?
    } else {
        let (loc, entries) = locate_open(backup, from, store, keys)?;
        if let Some(reader) = entries {
            let file = reader.file_name().to_string();
            for line in reader {
                line.map_err(|e| entries_failure(&loc, &file, e))?;
            }
        }
        loc
    };
    let m = &loc.manifest;
    if let Some(warning) = crate::manifest::skipped_warning(&m.skipped) {
        eprintln!("{warning}");
    }
    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            if files {
                output::structured(format, m)
            } else {
                let mut v = serde_json::to_value(m).map_err(|e| Failure::runtime(e.to_string()))?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("entries");
                    o.remove("entry_notes");
                }
                output::structured(format, &v)
            }
        }
        _ => {
            let pods: Vec<String> = m
                .source_pods
                .iter()
                .map(|p| {
                    format!(
                        "{}{}",
                        p.name,
                        p.mesh
                            .as_ref()
                            .map(|x| format!(" ({x})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let mut text = format!(
                "Backup:        {}\nCreated:       {}{}\nCluster:       {}{}\nPVC:           {}/{} (uid {})\nCapacity:      {}\nAccess modes:  {}\nStorage class: {}\nSource pods:   {}\nHelper image:  {}\nArchive:       {} ({}, {}, sha256 {})\nData:          {} in {} entries\n",
                m.backup_id,
                m.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                m.cluster
                    .created_by
                    .as_ref()
                    .map(|u| format!(" by {u}"))
                    .unwrap_or_default(),
                m.cluster.server,
                m.cluster.context.as_ref().map(|c| format!(" (context {c})")).unwrap_or_default(),
                m.namespace,
                m.pvc.name,
                m.pvc.uid,
                m.pvc.capacity.clone().unwrap_or_else(|| "-".into()),
                m.pvc.access_modes.join(","),
                m.pvc.storage_class.clone().unwrap_or_else(|| "-".into()),
                if pods.is_empty() { "-".into() } else { pods.join(", ") },
                m.helper_image,
                loc.destination.locate(&loc.archive_key),
                m.compression.algorithm(),
                output::human_bytes(m.archive.size),
                m.archive.sha256,
                output::human_bytes(m.uncompressed_size),
                m.entry_count,
            );
            if m.schema_version != crate::manifest::SCHEMA_VERSION {
                text.push_str(&format!(
                    "Schema:        version {} (written by {})\n",
                    m.schema_version, m.tool_version
                ));
            }
            if let Some(c) = &m.consistency {
                text.push_str(&format!(
                    "Consistency:   {}{}\n",
                    serde_json::to_value(c.method)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    c.snapshot
                        .as_ref()
                        .map(|s| format!(
                            " (VolumeSnapshot {}{}{})",
                            s.name,
                            s.class
                                .as_ref()
                                .map(|c| format!(", class {c}"))
                                .unwrap_or_default(),
                            s.cut_time
                                .map(|t| format!(
                                    ", cut {}",
                                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                                ))
                                .unwrap_or_default()
                        ))
                        .unwrap_or_default()
                ));
                if c.files_changed_while_read > 0 {
                    text.push_str(&format!(
                        "               {} file(s) changed while they were read; this copy may be inconsistent\n",
                        c.files_changed_while_read
                    ));
                }
                // The manifest's words (`pre`, `succeeded`), not Rust's.
                let word = |v: serde_json::Result<serde_json::Value>| {
                    v.ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                };
                for h in &c.hooks {
                    text.push_str(&format!(
                        "Hook:          {} in {}/{}: {} ({})\n",
                        word(serde_json::to_value(h.phase)),
                        h.pod,
                        h.container,
                        h.command.join(" "),
                        word(serde_json::to_value(h.outcome))
                    ));
                }
            }
            if let (Some(e), Some(s)) = (&m.encryption, &loc.sealed) {
                text.push_str(&format!(
                    "Encrypted:     age ({}); stored {} with sha256 {}\n",
                    crate::encryption::kinds_text(&e.recipients),
                    output::human_bytes(s.stored.size),
                    s.stored.sha256
                ));
            }
            if let Some(p) = &m.parent {
                text.push_str(&format!("Parent:        {}\n", p.backup_id));
            }
            if !m.skipped.is_empty() {
                text.push_str(&format!(
                    "Not backed up: {} (a restore will not recreate them)\n",
                    m.skipped
                        .iter()
                        .map(|s| format!("{} ({})", s.path, s.reason))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if files {
                let rows = m
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            format!("{:?}", e.kind).to_lowercase(),
                            format!("{:04o}", e.mode & 0o7777),
                            format!("{}:{}", e.uid, e.gid),
                            e.size.to_string(),
                            e.path.clone(),
                            e.link_target
                                .clone()
                                .map(|t| format!("-> {t}"))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                text.push('\n');
                text.push_str(&output::table(
                    &["type", "mode", "owner", "size", "path", "link"],
                    rows,
                ));
                text.push('\n');
            }
            output::print_stdout(&text)
        }
    }
}

/// An encrypted backup without its key: what its header says (id, namespace, PVC, time,
/// sizes, the stored objects, the kinds of recipients), and that the rest is encrypted.
fn header_only(
    dest: &dyn crate::destination::Destination,
    mkey: &str,
    h: &crate::manifest::Header,
    format: OutputFormat,
) -> Result<(), Failure> {
    let kinds = h
        .encryption
        .as_ref()
        .map(|e| crate::encryption::kinds_text(&e.recipients))
        .unwrap_or_default();
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(format, h),
        _ => {
            let dir = mkey
                .rsplit_once('/')
                .map(|(d, _)| format!("{d}/"))
                .unwrap_or_default();
            output::print_stdout(&format!(
                "Backup:        {}\nCreated:       {}\nPVC:           {}/{}\nArchive:       {} ({}, {} stored, sha256 {})\nData:          {} in {} entries ({} files, {})\nEncrypted:     age ({kinds})\n               The cluster, the PVC's spec and labels, the pods and every path are encrypted: pass --identity FILE to see them\n",
                h.backup_id,
                h.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                h.namespace,
                h.pvc_name,
                dest.locate(&format!("{dir}{}", h.archive.file_name)),
                h.compression.algorithm(),
                output::human_bytes(h.archive.size),
                h.archive.sha256,
                output::human_bytes(h.uncompressed_size),
                h.entry_count,
                h.file_count,
                output::human_bytes(h.file_bytes),
            ))
        }
    }
}

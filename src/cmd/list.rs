//! `kubectl pvbackup list DEST`: backups at a destination; archives without a manifest are
//! shown as incomplete and never as restorable.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::destination;
use crate::exit::Failure;
use crate::manifest;
use crate::output;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedBackup {
    pub id: String,
    pub namespace: String,
    pub pvc: String,
    pub created: Option<String>,
    pub size: Option<u64>,
    pub files: Option<u64>,
    pub compression: Option<String>,
    /// `age: x25519, ssh-ed25519` for an encrypted backup (readable without its key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<String>,
    /// Entries of the volume the backup does not hold (device nodes, sockets).
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped: u64,
    /// `snapshot`, `clone` or `live` (manifests from before schema 2 do not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<crate::manifest::ConsistencyMethod>,
    /// Live copies: files that changed while they were read.
    #[serde(skip_serializing_if = "is_zero")]
    pub changed_while_read: u64,
    pub complete: bool,
    pub restorable: bool,
    pub manifest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `(backup id, namespace, pvc)` → `(manifest key, archive key)`.
pub type Grouped = BTreeMap<(String, String, String), (Option<String>, Option<String>)>;

/// Groups keys `<id>/<ns>/<pvc>.<ext>` into backups (pure; unit-tested).
pub fn group_keys(keys: &[String]) -> Grouped {
    let mut out = Grouped::new();
    for k in keys {
        let parts: Vec<&str> = k.split('/').collect();
        let [id, ns, file] = parts.as_slice() else {
            continue;
        };
        if file.starts_with('.') {
            // A partial upload (`.<name>.partial-…`): it belongs to no backup yet.
            continue;
        }
        if let Some(pvc) = file.strip_suffix(".manifest.json") {
            out.entry((id.to_string(), ns.to_string(), pvc.to_string()))
                .or_default()
                .0 = Some(k.clone());
        } else if let Some(pvc) = [".tar.gz", ".tar.zst", ".tar"].iter().find_map(|s| {
            let file = file
                .strip_suffix(crate::encryption::AGE_SUFFIX)
                .unwrap_or(file);
            file.strip_suffix(s)
        }) {
            out.entry((id.to_string(), ns.to_string(), pvc.to_string()))
                .or_default()
                .1 = Some(k.clone());
        }
    }
    out
}

pub fn run(
    dest_arg: &str,
    store: &destination::StoreOptions,
    format: OutputFormat,
) -> Result<(), Failure> {
    let dest = destination::parse_with(dest_arg, store)?;
    let keys = dest.list("")?;
    let mut items = Vec::new();
    for ((id, ns, pvc), (manifest_key, archive_key)) in group_keys(&keys) {
        let mut item = ListedBackup {
            id,
            namespace: ns,
            pvc,
            created: None,
            size: None,
            files: None,
            skipped: 0,
            copy: None,
            changed_while_read: 0,
            compression: None,
            encrypted: None,
            complete: false,
            restorable: false,
            manifest: manifest_key.as_ref().map(|k| dest.locate(k)),
            problem: None,
        };
        match &manifest_key {
            None => {
                item.problem = Some("archive without manifest: interrupted or failed backup".into())
            }
            Some(k) => {
                // The header alone: a schema-2 backup's entries are not read, and a schema-1
                // manifest's are counted as they stream by.
                let parsed = dest.open(k).ok().map(manifest::read_summary);
                match parsed {
                    Some(Ok(m)) => {
                        item.created =
                            Some(m.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                        item.size = Some(m.size);
                        item.files = Some(m.files);
                        item.skipped = m.skipped as u64;
                        item.copy = m.consistency.as_ref().map(|c| c.method);
                        item.changed_while_read = m
                            .consistency
                            .as_ref()
                            .map_or(0, |c| c.files_changed_while_read);
                        item.compression = Some(m.compression.algorithm().to_string());
                        item.encrypted = m
                            .encrypted_to
                            .as_ref()
                            .map(|k| format!("age: {}", crate::encryption::kinds_text(k)));
                        item.complete = archive_key.is_some();
                        item.restorable = archive_key.is_some();
                        if archive_key.is_none() {
                            item.problem = Some("manifest without archive".into());
                        }
                    }
                    Some(Err(manifest::SummaryError::Invalid(e))) => {
                        item.problem = Some(format!("invalid manifest: {e}"))
                    }
                    Some(Err(manifest::SummaryError::Read(_))) | None => {
                        item.problem = Some("manifest unreadable".into())
                    }
                }
            }
        }
        items.push(item);
    }
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(
            format,
            &serde_json::json!({"destination": dest.describe(), "items": items}),
        ),
        _ => {
            if items.is_empty() {
                eprintln!("No backups at {}", dest.describe());
                return Ok(());
            }
            let rows = items
                .iter()
                .map(|i| {
                    vec![
                        i.id.clone(),
                        i.created.clone().unwrap_or_else(|| "-".into()),
                        i.namespace.clone(),
                        i.pvc.clone(),
                        i.size
                            .map(output::human_bytes)
                            .unwrap_or_else(|| "-".into()),
                        i.files.map(|f| f.to_string()).unwrap_or_else(|| "-".into()),
                        i.compression.clone().unwrap_or_else(|| "-".into()),
                        if i.complete && i.skipped > 0 {
                            format!("complete ({} left out)", i.skipped)
                        } else if i.complete {
                            "complete".into()
                        } else {
                            format!("INCOMPLETE ({})", i.problem.clone().unwrap_or_default())
                        } + &i
                            .encrypted
                            .as_ref()
                            .map(|e| format!(", encrypted ({e})"))
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            output::print_stdout(
                &(output::table(
                    &[
                        "id",
                        "created",
                        "namespace",
                        "pvc",
                        "size",
                        "files",
                        "compression",
                        "state",
                    ],
                    rows,
                ) + "\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_and_orphans_are_not_backups() {
        let keys: Vec<String> = [
            "b1/shop/db.tar.zst",
            "b1/shop/db.manifest.json",
            "b2/shop/db.tar.zst",
            "b3/shop/.db.tar.zst.partial-1234",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let g = group_keys(&keys);
        assert_eq!(g.len(), 2);
        assert!(g[&("b1".into(), "shop".into(), "db".into())].0.is_some());
        assert!(g[&("b2".into(), "shop".into(), "db".into())].0.is_none());
    }
}

//! Resolving a BACKUP argument: a manifest path, an archive path next to its manifest, or
//! `BACKUP_ID/NAMESPACE/PVC` at a `--from` destination.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::destination::{self, Destination};
use crate::exit::Failure;
use crate::manifest::Manifest;

pub struct Located {
    pub destination: Arc<dyn Destination>,
    pub manifest_key: String,
    pub archive_key: String,
    pub manifest: Manifest,
}

const MANIFEST_SUFFIX: &str = ".manifest.json";

pub fn locate(backup: &str, from: Option<&str>) -> Result<Located, Failure> {
    let (dest, mkey): (Arc<dyn Destination>, String) = match from {
        Some(f) => {
            let d: Arc<dyn Destination> = Arc::from(destination::parse(f)?);
            let key = if backup.ends_with(MANIFEST_SUFFIX) {
                backup.to_string()
            } else {
                format!("{}{MANIFEST_SUFFIX}", backup.trim_end_matches('/'))
            };
            (d, key)
        }
        None => {
            let p = Path::new(backup);
            let manifest_path = if backup.ends_with(MANIFEST_SUFFIX) {
                p.to_path_buf()
            } else {
                // An archive path: its manifest sits beside it with the compression suffix replaced.
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let stem = [".tar.gz", ".tar.zst", ".tar"].iter().find_map(|s| name.strip_suffix(s)).ok_or_else(|| {
                    Failure::usage(format!("{backup:?} is neither a manifest (*.manifest.json) nor an archive (*.tar, *.tar.gz, *.tar.zst); for a backup id, add --from DEST"))
                })?;
                p.with_file_name(format!("{stem}{MANIFEST_SUFFIX}"))
            };
            let dir = manifest_path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let key = manifest_path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            (Arc::new(destination::local::LocalDir::new(dir)), key)
        }
    };
    let mut bytes = Vec::new();
    dest.open(&mkey)
        .map_err(|e| match e {
            destination::DestinationError::NotFound { path, .. } => Failure::usage(format!("no manifest at {path}: the backup does not exist or is incomplete (an archive without a manifest is never restorable). `kubectl pvbackup list DEST` shows what is there")),
            other => Failure::from(other),
        })?
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::runtime(format!("reading {}: {e}", dest.locate(&mkey))))?;
    let manifest = Manifest::from_json(&bytes).map_err(|e| {
        Failure::integrity(format!("manifest {} is invalid: {e}", dest.locate(&mkey)))
    })?;
    let dir = mkey
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    let archive_key = format!("{dir}{}", manifest.archive.file_name);
    if manifest.archive.file_name.contains('/') || manifest.archive.file_name.contains("..") {
        return Err(Failure::integrity(format!(
            "manifest {} names archive {:?}, which is not a plain file name",
            dest.locate(&mkey),
            manifest.archive.file_name
        )));
    }
    Ok(Located {
        destination: dest,
        manifest_key: mkey,
        archive_key,
        manifest,
    })
}

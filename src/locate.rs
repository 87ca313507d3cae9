//! Resolving a BACKUP argument: a manifest path or object URL, an archive path or URL next to
//! its manifest, or `BACKUP_ID/NAMESPACE/PVC` at a `--from` destination.

use std::path::Path;
use std::sync::Arc;

use crate::destination::{self, Destination, DestinationError, StoreOptions};
use crate::exit::Failure;
use crate::manifest::{EntryReader, LoadError, Manifest, ManifestError};

#[derive(Clone)]
pub struct Located {
    pub destination: Arc<dyn Destination>,
    pub manifest_key: String,
    pub archive_key: String,
    /// For an encrypted backup, [`Manifest::archive`] describes the archive before
    /// encryption; what is stored is in [`Located::sealed`].
    pub manifest: Manifest,
    pub sealed: Option<SealedArchive>,
}

/// An encrypted backup's archive: as stored, and the keys that open it.
#[derive(Clone)]
pub struct SealedArchive {
    pub stored: crate::manifest::ArchiveInfo,
    pub keys: crate::encryption::Identities,
}

impl Located {
    /// The archive's stored bytes, decrypted for an encrypted backup (the stored size and
    /// sha256 are checked at the end of the stream: see [`crate::encryption::Identities::open`]).
    pub fn open_archive(&self) -> Result<Box<dyn std::io::Read + Send>, Failure> {
        let reader = self
            .destination
            .open(&self.archive_key)
            .map_err(archive_missing)?;
        let Some(s) = &self.sealed else {
            return Ok(reader);
        };
        let kinds = self
            .manifest
            .encryption
            .as_ref()
            .map(|e| e.recipients.clone())
            .unwrap_or_default();
        let stored = crate::manifest::StoredObject {
            file_name: s.stored.file_name.clone(),
            size: s.stored.size,
            sha256: s.stored.sha256.clone(),
        };
        Ok(Box::new(s.keys.open(
            std::io::BufReader::with_capacity(1 << 20, reader),
            &self.destination.locate(&self.archive_key),
            &stored,
            &kinds,
        )?))
    }
}

impl Located {
    /// A schema-2 backup's entries, read again from the destination (through the decryptor
    /// for an encrypted one), for a command that reads them more than once to keep its
    /// memory flat (`inspect --files`). Refused if the manifest is no longer the one
    /// located: the backup was replaced meanwhile.
    pub fn reopen_entries(&self) -> Result<EntryReader<'static>, Failure> {
        let keys = self.sealed.as_ref().map(|s| &s.keys);
        let (manifest, entries, _) =
            crate::manifest::open_with(self.destination.as_ref(), &self.manifest_key, keys)
                .map_err(load_failure)?;
        match entries {
            Some(reader) if manifest == self.manifest => Ok(reader),
            _ => Err(Failure::runtime(format!(
                "the manifest {} changed while it was being read (was the backup replaced?); run the command again",
                self.destination.locate(&self.manifest_key)
            ))),
        }
    }
}

use crate::manifest::MANIFEST_SUFFIX;

/// The manifest's file name for a BACKUP file name: itself, or the archive's with the
/// compression suffix replaced.
fn manifest_name(backup: &str, name: &str) -> Result<String, Failure> {
    if name.ends_with(MANIFEST_SUFFIX) {
        return Ok(name.to_string());
    }
    let name = name
        .strip_suffix(crate::encryption::AGE_SUFFIX)
        .unwrap_or(name);
    let stem = [".tar.gz", ".tar.zst", ".tar"].iter().find_map(|s| name.strip_suffix(s)).ok_or_else(|| {
        Failure::usage(format!("{backup:?} is neither a manifest (*.manifest.json) nor an archive (*.tar, *.tar.gz, *.tar.zst); for a backup id, add --from DEST"))
    })?;
    Ok(format!("{stem}{MANIFEST_SUFFIX}"))
}

/// A manifest names an archive that cannot be opened: missing means the backup is damaged
/// (exit 3); any other error (network, credentials) is not the backup's fault.
pub fn archive_missing(e: DestinationError) -> Failure {
    match e {
        DestinationError::NotFound { .. } => Failure::integrity(format!(
            "{e} (the manifest names it, so the backup is damaged)"
        )),
        other => Failure::from(other),
    }
}

/// `drill --latest`: the newest complete backup (manifest and archive stored, header
/// readable) of `NAMESPACE/PVC` at `from`, as `BACKUP_ID/NAMESPACE/PVC` for [`locate`]. Only
/// that PVC's headers are read, as `list` reads them; the choice is [`retention::newest`], the
/// backup `prune` never removes.
///
/// [`retention::newest`]: crate::retention::newest
pub fn latest(target: &str, from: &str, store: &StoreOptions) -> Result<String, Failure> {
    let Some((ns, pvc)) = target
        .split_once('/')
        .filter(|(ns, pvc)| !ns.is_empty() && !pvc.is_empty() && !pvc.contains('/'))
        .map(|(ns, pvc)| (ns.to_string(), pvc.to_string()))
    else {
        return Err(Failure::usage(format!(
            "with --latest, BACKUP is NAMESPACE/PVC (e.g. shop/data-orders-db-0), not {target:?}"
        )));
    };
    let dest = destination::parse_with(from, store)?;
    let keys = dest.list("")?;
    let mut candidates = Vec::new();
    let mut unreadable = 0;
    for ((id, n, p), keys) in crate::cmd::list::group_keys(&keys) {
        let (Some(manifest_key), Some(_archive)) = keys else {
            continue;
        };
        if n != ns || p != pvc {
            continue;
        }
        match dest.open(&manifest_key).map(crate::manifest::read_summary) {
            Ok(Ok(summary)) => candidates.push(crate::retention::Candidate {
                id,
                namespace: n,
                pvc: p,
                created: summary.created,
            }),
            _ => unreadable += 1,
        }
    }
    let newest = crate::retention::newest(&candidates, &ns, &pvc).ok_or_else(|| {
        let skipped = if unreadable > 0 {
            format!(" ({unreadable} with an unreadable manifest were left out)")
        } else {
            String::new()
        };
        Failure::usage(format!(
            "no complete backup of {ns}/{pvc} at {}{skipped}: back it up first (`kubectl pvbackup create {pvc} -n {ns} --to {from}`), or see what is there with `kubectl pvbackup list {from}`",
            dest.describe()
        ))
    })?;
    Ok(format!("{}/{ns}/{pvc}", newest.id))
}

/// Resolves BACKUP and loads its manifest, decrypting an encrypted backup's with `keys`
/// (refused, exit 2, without them).
pub fn locate(
    backup: &str,
    from: Option<&str>,
    store: &StoreOptions,
    keys: Option<&crate::encryption::Identities>,
) -> Result<Located, Failure> {
    let (dest, mkey) = resolve(backup, from, store)?;
    let (manifest, stored) =
        crate::manifest::load_with(dest.as_ref(), &mkey, keys).map_err(load_failure)?;
    located(dest, mkey, manifest, stored, keys)
}

/// [`locate`] without reading a schema-2 backup's entries into memory: its
/// [`Located::manifest`] has none, and they come from the reader (through the decryptor for
/// an encrypted backup), checked as they are read (errors convert with [`entries_failure`]).
pub fn locate_open(
    backup: &str,
    from: Option<&str>,
    store: &StoreOptions,
    keys: Option<&crate::encryption::Identities>,
) -> Result<(Located, Option<EntryReader<'static>>), Failure> {
    let (dest, mkey) = resolve(backup, from, store)?;
    let (manifest, entries, stored) =
        crate::manifest::open_with(dest.as_ref(), &mkey, keys).map_err(load_failure)?;
    Ok((located(dest, mkey, manifest, stored, keys)?, entries))
}

/// An error of the entries reader [`locate_open`] returned.
pub fn entries_failure(loc: &Located, reader_file: &str, e: ManifestError) -> Failure {
    load_failure(LoadError::from_entries(
        loc.destination.as_ref(),
        &loc.manifest_key,
        reader_file,
        e,
    ))
}

fn load_failure(e: LoadError) -> Failure {
    match e {
        LoadError::NoManifest { location } => Failure::usage(format!("no manifest at {location}: the backup does not exist or is incomplete (an archive without a manifest is never restorable). `kubectl pvbackup list DEST` shows what is there")),
        e @ (LoadError::NoEntries { .. } | LoadError::Invalid { .. }) => Failure::integrity(e.to_string()),
        e @ LoadError::Read { .. } => Failure::runtime(e.to_string()),
        LoadError::Destination(e) => Failure::from(e),
        LoadError::Encryption(e) => Failure::from(e),
    }
}

/// The destination and manifest key a BACKUP argument names.
pub fn resolve(
    backup: &str,
    from: Option<&str>,
    store: &StoreOptions,
) -> Result<(Arc<dyn Destination>, String), Failure> {
    let (dest, mkey): (Arc<dyn Destination>, String) = match from {
        Some(f) => {
            let d: Arc<dyn Destination> = Arc::from(destination::parse_with(f, store)?);
            let key = if backup.ends_with(MANIFEST_SUFFIX) {
                backup.to_string()
            } else {
                format!("{}{MANIFEST_SUFFIX}", backup.trim_end_matches('/'))
            };
            (d, key)
        }
        None if destination::object::url::parse(backup).is_some() => {
            let url = destination::object::url::parse(backup)
                .expect("checked")
                .map_err(|e| {
                    Failure::usage(format!("{backup:?} is not a valid object URL: {e}"))
                })?;
            let (parent, name) = url.split_last().ok_or_else(|| {
                Failure::usage(format!("{backup:?} names a whole {}; name a manifest (…/<pvc>.manifest.json), or pass BACKUP_ID/NAMESPACE/PVC with --from {backup}", url.provider.bucket_word()))
            })?;
            let key = manifest_name(backup, &name)?;
            let d: Arc<dyn Destination> =
                Arc::from(destination::parse_with(&parent.to_string(), store)?);
            (d, key)
        }
        None => {
            let p = Path::new(backup);
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let manifest_path = p.with_file_name(manifest_name(backup, &name)?);
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
    Ok((dest, mkey))
}

fn located(
    dest: Arc<dyn Destination>,
    mkey: String,
    manifest: Manifest,
    stored: Option<crate::manifest::ArchiveInfo>,
    keys: Option<&crate::encryption::Identities>,
) -> Result<Located, Failure> {
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
        sealed: stored.map(|stored| SealedArchive {
            stored,
            keys: keys.expect("decrypted with them").clone(),
        }),
    })
}

/// The header at `mkey` when it is a readable, encrypted one (anything else is left to
/// [`locate`], which explains it).
pub fn encrypted_header(dest: &dyn Destination, mkey: &str) -> Option<crate::manifest::Header> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut dest.open(mkey).ok()?, &mut bytes).ok()?;
    match crate::manifest::parse(&bytes).ok()? {
        crate::manifest::Document::Header(h) if h.encryption.is_some() => Some(*h),
        _ => None,
    }
}

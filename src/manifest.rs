//! The backup manifest: what a backup holds, written next to its archive.
//!
//! # Layout (schema version 2, written since 0.2)
//!
//! Three objects per PVC, side by side at the destination, written in this order:
//!
//! 1. `<pvc>.tar[.gz|.zst]`: the archive;
//! 2. `<pvc>.entries.jsonl[.gz|.zst]`: the **entries stream**: one [`EntryRecord`] per line
//!    (JSON Lines), sorted by the raw bytes of the canonical path (`a/b`, `.` for the root),
//!    compressed like the archive. A line may carry per-entry notes ([`EntryNote`]):
//!    `changed_while_read`, `in_parent`, `archive`;
//! 3. `<pvc>.manifest.json`: the **header**, small whatever the file count: what `list` reads
//!    without the entries, and the size and sha256 of the stored entries stream. It is the
//!    commit marker, written last: a backup without it is incomplete.
//!
//! ```json
//! {
//!   "schema_version": 2,
//!   "kind": "PVBackupManifest",
//!   "backup_id": "20250101T120000Z-3f2a",
//!   "tool_version": "0.2.0",
//!   "created": "2025-01-01T12:00:00Z",
//!   "namespace": "shop",
//!   "pvc_name": "data-web-0",
//!   "compression": { "algorithm": "zstd", "level": 1 },
//!   "archive": { "file_name": "data-web-0.tar.zst", "size": 1234, "sha256": "…64 hex…" },
//!   "uncompressed_size": 10240,
//!   "entry_count": 3,
//!   "file_count": 1,
//!   "file_bytes": 5,
//!   "entries": { "file_name": "data-web-0.entries.jsonl.zst", "format": "json_lines",
//!                "order": "path_bytes", "compression": { "algorithm": "zstd", "level": 1 },
//!                "size": 321, "sha256": "…64 hex…" },
//!   "details": {
//!     "cluster": { "server": "https://10.0.0.1:6443", "context": "prod" },
//!     "pvc": { "name": "data-web-0", "uid": "…", "capacity": "10Gi",
//!              "access_modes": ["ReadWriteOnce"], "storage_class": "standard",
//!              "volume_mode": "Filesystem", "labels": { "app": "web" } },
//!     "source_pods": [ { "name": "web-0", "node": "n1", "mesh": "istio",
//!                        "proxy_container": "istio-proxy", "proxy_version": "1.22.0" } ],
//!     "helper_image": "busybox:1.36",
//!     "skipped": [ { "path": "chroot/dev/null", "reason": "char_device" } ]
//!   },
//!   "consistency": { "method": "snapshot", "snapshot": { "name": "pvb-3f2a", "class": "csi",
//!                    "cut_time": "2025-01-01T11:59:58Z" }, "hooks": [],
//!                    "files_changed_while_read": 0 },
//!   "parent": { "backup_id": "20241231T120000Z-0b1c",
//!               "manifest": "20241231T120000Z-0b1c/shop/data-web-0.manifest.json",
//!               "manifest_sha256": "…64 hex…" },
//!   "additional_archives": [],
//!   "proxy_state": [ { "pod": "web-0", "container": "istio-proxy", "kind": "envoy_config_dump",
//!                      "file_name": "data-web-0.proxy-web-0.json", "size": 5120,
//!                      "sha256": "…64 hex…" } ]
//! }
//! ```
//!
//! with the entries stream (decompressed):
//!
//! ```text
//! {"path":".","kind":"dir","size":0,"mode":493,"uid":0,"gid":0,"mtime":1735732800}
//! {"path":"current","kind":"symlink","size":0,"mode":511,"uid":0,"gid":0,"mtime":1735732800,"link_target":"/var/lib/app/releases/v2"}
//! {"path":"ünï\ncode","kind":"file","size":5,"mode":384,"uid":1000,"gid":1000,"mtime":1735732800,"sha256":"…64 hex…","changed_while_read":true}
//! ```
//!
//! Why this shape:
//!
//! * **Streams.** Entries are never part of the header, so `list` reads a few hundred bytes
//!   per backup at any file count, and the entries can be written, read and compared as sorted
//!   streams (the sort order makes duplicates adjacent and two listings mergeable).
//! * **Sections** are typed and optional ([`sections`]): `consistency` (snapshot, clone or
//!   live; hooks; files changed while read), `encryption` (age; recipient kinds; which parts;
//!   when present, `details` moves into an encrypted object so the header holds only what
//!   `list` needs), `parent` (incremental backups), `additional_archives` (several streams per
//!   backup), `proxy_state` (files captured from mesh proxies), and `details.skipped` (entries
//!   of the volume the backup does not hold, and why: see [`crate::archive::SkipReason`]).
//! * **Integrity.** The header records the stored entries stream's size and sha256, so a
//!   damaged or swapped stream is an integrity failure, like a damaged archive.
//!
//! # Schema version 1 (0.1), read forever
//!
//! One JSON document with every entry inline, in archive order:
//!
//! ```json
//! {
//!   "schema_version": 1, "kind": "PVBackupManifest", "backup_id": "…", "tool_version": "0.1.0",
//!   "created": "2025-01-01T12:00:00Z", "cluster": { "server": "…", "context": "prod" },
//!   "namespace": "shop", "pvc": { "name": "data-web-0", "uid": "…" }, "source_pods": [],
//!   "helper_image": "busybox:1.36", "compression": { "algorithm": "zstd", "level": 1 },
//!   "archive": { "file_name": "data-web-0.tar.zst", "size": 1234, "sha256": "…" },
//!   "uncompressed_size": 10240, "entry_count": 1,
//!   "entries": [ { "path": ".", "kind": "dir", "size": 0, "mode": 493, "uid": 0, "gid": 0,
//!                  "mtime": 1735732800 } ]
//! }
//! ```
//!
//! # In memory
//!
//! Both versions load into one [`Manifest`], which keeps every entry in
//! [`Manifest::entries`] (schema 1: archive order; schema 2: path order). Its serde form (the
//! "expanded" form `inspect -o json --files` prints) is the header's fields flattened, with
//! `entries` inline; [`Manifest::from_json`] reads it back, and schema-1 documents.
//!
//! Entry names that are not valid UTF-8 carry an extra `path_hex` (and `link_target_hex`)
//! with the exact bytes; see [`EntryRecord`]. `mode` is a decimal JSON number (493 = 0o755).
//! Unknown fields are rejected everywhere so a typo in a hand-edited manifest is an error
//! instead of being silently ignored.

pub mod sections;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::{
    canonical_key, check_entries_safe, ArchiveSummary, Compression, EntryKind, EntryRecord,
    HashingWriter, UnsafeEntry,
};
pub use crate::archive::{SkipReason, SkippedEntry};
use crate::destination::{Destination, DestinationError};
pub use sections::{
    AdditionalArchive, Consistency, ConsistencyMethod, EncryptedPart, Encryption, EncryptionScheme,
    EntryNote, HookOutcome, HookPhase, HookRun, ParentBackup, ProxyStateFile, ProxyStateKind,
    RecipientKind, SnapshotInfo, StoredObject,
};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 2;
/// Every schema version this build reads.
pub const SCHEMA_VERSIONS_READ: [u32; 2] = [1, 2];
/// Value of the `kind` field.
pub const MANIFEST_KIND: &str = "PVBackupManifest";
/// Suffix of a header's (and a schema-1 manifest's) key.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Suffix of the entries stream's key, before the compression's (`.gz`, `.zst`).
pub const ENTRIES_SUFFIX: &str = ".entries.jsonl";

/// A backup's manifest, whichever schema version it was read from. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The version it was read from (1 or 2); new manifests are [`SCHEMA_VERSION`].
    pub schema_version: u32,
    pub kind: String,
    pub backup_id: String,
    pub tool_version: String,
    /// RFC 3339 in JSON.
    pub created: DateTime<Utc>,
    pub cluster: ClusterInfo,
    pub namespace: String,
    pub pvc: PvcInfo,
    #[serde(default)]
    pub source_pods: Vec<SourcePod>,
    pub helper_image: String,
    pub compression: Compression,
    pub archive: ArchiveInfo,
    /// Size of the raw tar stream in bytes.
    pub uncompressed_size: u64,
    pub entry_count: u64,
    pub entries: Vec<EntryRecord>,
    /// Per-entry notes (schema 2), at most one per entry, only for entries that have any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_notes: Vec<EntryNote>,
    /// Entries of the volume the backup does not hold (schema 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentBackup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_archives: Vec<AdditionalArchive>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_state: Vec<ProxyStateFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInfo {
    /// API server URL.
    pub server: String,
    /// kubeconfig context name, if one was used.
    #[serde(default)]
    pub context: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvcInfo {
    pub name: String,
    pub uid: String,
    /// `status.capacity.storage` (or the request), as a Kubernetes quantity string.
    #[serde(default)]
    pub capacity: Option<String>,
    #[serde(default)]
    pub access_modes: Vec<String>,
    #[serde(default)]
    pub storage_class: Option<String>,
    /// `Filesystem` or `Block`.
    #[serde(default)]
    pub volume_mode: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePod {
    pub name: String,
    #[serde(default)]
    pub node: Option<String>,
    /// Detected service mesh (`istio`, `linkerd`, ...), if any.
    #[serde(default)]
    pub mesh: Option<String>,
    #[serde(default)]
    pub proxy_container: Option<String>,
    #[serde(default)]
    pub proxy_version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveInfo {
    /// File name (no directory) of the stored archive, relative to the manifest.
    pub file_name: String,
    /// Stored (compressed) size in bytes.
    pub size: u64,
    /// sha256 of the stored bytes, 64 lowercase hex digits.
    pub sha256: String,
}

/// The stored header of a schema-2 manifest (`<pvc>.manifest.json`). See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub schema_version: u32,
    pub kind: String,
    pub backup_id: String,
    pub tool_version: String,
    pub created: DateTime<Utc>,
    pub namespace: String,
    pub pvc_name: String,
    pub compression: Compression,
    pub archive: ArchiveInfo,
    pub uncompressed_size: u64,
    pub entry_count: u64,
    /// Regular files among the entries.
    pub file_count: u64,
    /// Sum of the regular files' sizes.
    pub file_bytes: u64,
    pub entries: EntriesObject,
    /// Absent only when encrypted (then [`Encryption::details`] names where it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentBackup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_archives: Vec<AdditionalArchive>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_state: Vec<ProxyStateFile>,
}

/// The part of a header that encryption moves out of sight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Details {
    pub cluster: ClusterInfo,
    pub pvc: PvcInfo,
    #[serde(default)]
    pub source_pods: Vec<SourcePod>,
    pub helper_image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedEntry>,
}

/// Where a header's entries are, and how to check them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesObject {
    /// File name (no directory), relative to the header.
    pub file_name: String,
    pub format: EntriesFormat,
    pub order: EntriesOrder,
    pub compression: Compression,
    /// Stored size in bytes.
    pub size: u64,
    /// sha256 of the stored bytes.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntriesFormat {
    /// One JSON object per line (<https://jsonlines.org>), `\n`-terminated.
    JsonLines,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntriesOrder {
    /// Strictly increasing by the raw bytes of the canonical path.
    PathBytes,
}

/// What `list` shows of a backup, from the header alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub schema_version: u32,
    pub created: DateTime<Utc>,
    /// Stored archive bytes.
    pub size: u64,
    pub files: u64,
    pub compression: Compression,
    /// Entries of the volume the backup does not hold.
    pub skipped: usize,
    /// How the copy was made (`consistency`), when the manifest says.
    pub consistency: Option<Consistency>,
    /// The kinds of recipients an encrypted backup was made for.
    pub encrypted_to: Option<Vec<RecipientKind>>,
}

/// A parsed `<pvc>.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// A whole manifest: schema 1, or the expanded schema-2 form.
    Whole(Box<Manifest>),
    /// A schema-2 header; its entries are in [`Header::entries`].
    Header(Box<Header>),
}

/// The cluster-side facts the caller fills in; see [`Manifest::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestMeta {
    pub backup_id: String,
    pub tool_version: String,
    pub created: DateTime<Utc>,
    pub cluster: ClusterInfo,
    pub namespace: String,
    pub pvc: PvcInfo,
    pub source_pods: Vec<SourcePod>,
    pub helper_image: String,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "the manifest is not valid JSON for schema version {version}: {source}. \
         Fix the field named here (hand edits often introduce typos) or restore the \
         manifest written by the backup"
    )]
    Json {
        version: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "manifest schema_version {found} is not supported (this build reads versions 1 and \
         2); use a kubectl-pvbackup at least as new as the one that wrote the backup"
    )]
    UnsupportedSchema { found: u32 },
    #[error(
        "manifest kind is {found:?}, expected {MANIFEST_KIND:?}: this is not a pvbackup manifest"
    )]
    WrongKind { found: String },
    #[error(
        "manifest entry_count is {declared} but it lists {actual} entries; the manifest is \
         incomplete or was edited — restore the original"
    )]
    EntryCount { declared: u64, actual: usize },
    #[error(
        "manifest {field} is {declared} but the entries say {actual}; the manifest was edited \
         or its entries stream belongs to another backup — restore the originals"
    )]
    Totals {
        field: &'static str,
        declared: u64,
        actual: u64,
    },
    #[error("{field} is {value:?}, which is not a sha256 (64 lowercase hex digits); correct it or restore the original manifest")]
    BadSha256 { field: String, value: String },
    #[error("entry {path:?} is a regular file but has no sha256; the manifest is damaged — restore the original")]
    MissingSha256 { path: String },
    #[error("entry {path:?} is a {kind}, which must not have a sha256; remove the field")]
    UnexpectedSha256 { path: String, kind: EntryKind },
    #[error("entry {path:?} is a {kind} without a link_target; the manifest is damaged — restore the original")]
    MissingLinkTarget { path: String, kind: EntryKind },
    #[error("entry {path:?} has an invalid {field} {value:?}: it must be the hex encoding of the name whose lossy UTF-8 form is the text field")]
    BadHexName {
        path: String,
        field: &'static str,
        value: String,
    },
    #[error("entry {path:?} has mode {mode:#o}, which has bits beyond 0o7777; only permission bits are recorded")]
    BadMode { path: String, mode: u32 },
    #[error("entry {path:?} is listed more than once; remove the duplicate")]
    DuplicatePath { path: String },
    #[error("the manifest lists an entry that is unsafe to restore: {source}")]
    Unsafe {
        #[source]
        source: UnsafeEntry,
    },
    #[error("a schema-1 manifest has no {field:?} (it came with schema 2); the manifest was edited — restore the original")]
    NotInSchema1 { field: &'static str },
    #[error("{0}; the manifest was edited or damaged — restore the original")]
    Inconsistent(String),
    #[error(
        "the manifest names {what} {name:?}, which is not a plain file name next to it; the \
         manifest was edited — restore the original"
    )]
    BadFileName { what: &'static str, name: String },
    #[error(
        "this is a schema-2 manifest header: its entries are in {0:?} beside it. Open the \
         backup with `kubectl pvbackup inspect`, `verify` or `restore`, which read both"
    )]
    HeaderOnly(String),
    #[error(
        "the entries stream {file:?} is damaged: {detail}. The backup cannot be trusted; \
         use another backup"
    )]
    Entries { file: String, detail: String },
    /// Reading the stored entries stream failed (the destination's fault, not the backup's).
    #[error("reading the entries stream {file:?} failed: {source}")]
    Read {
        file: String,
        #[source]
        source: io::Error,
    },
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_sha(field: impl FnOnce() -> String, value: &str) -> Result<(), ManifestError> {
    if is_sha256_hex(value) {
        Ok(())
    } else {
        Err(ManifestError::BadSha256 {
            field: field(),
            value: value.to_string(),
        })
    }
}

fn check_file_name(what: &'static str, name: &str) -> Result<(), ManifestError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(ManifestError::BadFileName {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

fn check_hex_name(
    path: &str,
    text: &str,
    hex_form: Option<&str>,
    field: &'static str,
) -> Result<(), ManifestError> {
    let Some(h) = hex_form else { return Ok(()) };
    let ok = hex::decode(h)
        .map(|b| String::from_utf8_lossy(&b) == text)
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(ManifestError::BadHexName {
            path: path.to_string(),
            field,
            value: h.to_string(),
        })
    }
}

fn raw_name(path: &str, hex_form: Option<&str>) -> Vec<u8> {
    hex_form
        .and_then(|h| hex::decode(h).ok())
        .unwrap_or_else(|| path.as_bytes().to_vec())
}

/// The entries stream's file name for a header key `…/<pvc>.manifest.json`.
pub fn entries_file_name(manifest_key: &str, compression: Compression) -> String {
    let name = manifest_key.rsplit('/').next().unwrap_or(manifest_key);
    let stem = name.strip_suffix(MANIFEST_SUFFIX).unwrap_or(name);
    let ext = match compression {
        Compression::None => "",
        Compression::Gzip { .. } => ".gz",
        Compression::Zstd { .. } => ".zst",
    };
    format!("{stem}{ENTRIES_SUFFIX}{ext}")
}

/// The warning `create`, `inspect` and `restore` print for a backup that does not hold
/// every entry of its volume; `None` when it holds them all.
pub fn skipped_warning(skipped: &[SkippedEntry]) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let shown: Vec<String> = skipped
        .iter()
        .take(5)
        .map(|s| format!("{:?} ({})", s.path, s.reason))
        .collect();
    let more = if skipped.len() > 5 {
        format!(" and {} more", skipped.len() - 5)
    } else {
        String::new()
    };
    Some(format!(
        "warning: the backup does not hold {} entr{} of the volume, which a restore will not recreate: {}{more}. Device nodes and sockets hold no data (the application, or the kubelet, creates the ones it needs when it starts); `kubectl pvbackup inspect BACKUP` lists them all",
        skipped.len(),
        if skipped.len() == 1 { "y" } else { "ies" },
        shown.join(", "),
    ))
}

/// `dir/` of a key (empty for a key without one).
fn key_dir(key: &str) -> &str {
    key.rsplit_once('/')
        .map(|(d, _)| &key[..=d.len()])
        .unwrap_or("")
}

impl Manifest {
    /// Build a manifest for a finished backup.
    pub fn new(
        meta: ManifestMeta,
        compression: Compression,
        file_name: impl Into<String>,
        summary: ArchiveSummary,
    ) -> Manifest {
        Manifest {
            schema_version: SCHEMA_VERSION,
            kind: MANIFEST_KIND.to_string(),
            backup_id: meta.backup_id,
            tool_version: meta.tool_version,
            created: meta.created,
            cluster: meta.cluster,
            namespace: meta.namespace,
            pvc: meta.pvc,
            source_pods: meta.source_pods,
            helper_image: meta.helper_image,
            compression,
            archive: ArchiveInfo {
                file_name: file_name.into(),
                size: summary.stored_bytes,
                sha256: summary.archive_sha256,
            },
            uncompressed_size: summary.tar_bytes,
            entry_count: summary.entries.len() as u64,
            entries: summary.entries,
            entry_notes: Vec::new(),
            skipped: summary.skipped,
            consistency: None,
            encryption: None,
            parent: None,
            additional_archives: Vec::new(),
            proxy_state: Vec::new(),
        }
    }

    /// Parse a whole manifest (schema 1, or the expanded schema-2 form) and
    /// [`validate`](Manifest::validate) it. A schema-2 header is refused
    /// ([`ManifestError::HeaderOnly`]): use [`parse`] or [`load`].
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        match parse(bytes)? {
            Document::Whole(m) => Ok(*m),
            Document::Header(h) => Err(ManifestError::HeaderOnly(h.entries.file_name)),
        }
    }

    /// The expanded form as pretty JSON with a trailing newline (what `inspect -o json
    /// --files` prints; [`Manifest::from_json`] reads it back). Backups are stored with
    /// [`store`], not in this form.
    pub fn to_json_pretty(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }

    /// Regular files and their total size.
    pub fn file_totals(&self) -> (u64, u64) {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .fold((0, 0), |(n, b), e| (n + 1, b + e.size))
    }

    /// What `list` shows.
    pub fn summary(&self) -> Summary {
        Summary {
            schema_version: self.schema_version,
            created: self.created,
            size: self.archive.size,
            files: self.file_totals().0,
            compression: self.compression,
            skipped: self.skipped.len(),
            consistency: self.consistency.clone(),
            encrypted_to: self.encryption.as_ref().map(|e| e.recipients.clone()),
        }
    }

    /// The note of an entry, if it has one.
    pub fn note(&self, entry: &EntryRecord) -> Option<&EntryNote> {
        let key = canonical_key(&entry.raw_path());
        self.entry_notes
            .iter()
            .find(|n| canonical_key(&raw_name(&n.path, n.path_hex.as_deref())) == key)
    }

    /// Check the invariants loading relies on: schema version and kind, `entry_count`,
    /// sha256 syntax, file/sha and link/target consistency, hex names, no duplicate paths,
    /// the restore-safety rules ([`check_entries_safe`]), and that the schema-2 sections
    /// are consistent (notes name entries, archives exist, a schema-1 manifest has none).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if !SCHEMA_VERSIONS_READ.contains(&self.schema_version) {
            return Err(ManifestError::UnsupportedSchema {
                found: self.schema_version,
            });
        }
        if self.kind != MANIFEST_KIND {
            return Err(ManifestError::WrongKind {
                found: self.kind.clone(),
            });
        }
        if self.schema_version == 1 {
            for (present, field) in [
                (!self.entry_notes.is_empty(), "entry_notes"),
                (!self.skipped.is_empty(), "skipped"),
                (self.consistency.is_some(), "consistency"),
                (self.encryption.is_some(), "encryption"),
                (self.parent.is_some(), "parent"),
                (!self.additional_archives.is_empty(), "additional_archives"),
                (!self.proxy_state.is_empty(), "proxy_state"),
            ] {
                if present {
                    return Err(ManifestError::NotInSchema1 { field });
                }
            }
        }
        if let Some(e) = &self.encryption {
            validate_encryption(e)?;
        }
        if self.entry_count != self.entries.len() as u64 {
            return Err(ManifestError::EntryCount {
                declared: self.entry_count,
                actual: self.entries.len(),
            });
        }
        check_file_name("archive", &self.archive.file_name)?;
        check_sha(|| "archive.sha256".into(), &self.archive.sha256)?;
        let mut seen = HashSet::with_capacity(self.entries.len());
        for e in &self.entries {
            check_entry_fields(e)?;
            if !seen.insert(canonical_key(&e.raw_path())) {
                return Err(ManifestError::DuplicatePath {
                    path: e.path.clone(),
                });
            }
        }
        self.validate_sections(&seen)?;
        check_entries_safe(&self.entries).map_err(|source| ManifestError::Unsafe { source })
    }

    fn validate_sections(&self, paths: &HashSet<Vec<u8>>) -> Result<(), ManifestError> {
        let mut indices = HashSet::new();
        for a in &self.additional_archives {
            if a.index == 0 || !indices.insert(a.index) {
                return Err(ManifestError::Inconsistent(format!(
                    "additional archive {:?} has index {}, which is 0 or used twice",
                    a.file_name, a.index
                )));
            }
            check_file_name("an additional archive", &a.file_name)?;
            check_sha(
                || format!("sha256 of additional archive {:?}", a.file_name),
                &a.sha256,
            )?;
        }
        for p in &self.proxy_state {
            check_file_name("a proxy state file", &p.file_name)?;
            check_sha(
                || format!("sha256 of proxy state file {:?}", p.file_name),
                &p.sha256,
            )?;
        }
        if let Some(p) = &self.parent {
            check_sha(|| "parent.manifest_sha256".into(), &p.manifest_sha256)?;
        }
        let mut noted = HashSet::new();
        for n in &self.entry_notes {
            check_hex_name(&n.path, &n.path, n.path_hex.as_deref(), "path_hex")?;
            let key = canonical_key(&raw_name(&n.path, n.path_hex.as_deref()));
            if !paths.contains(&key) || !noted.insert(key) {
                return Err(ManifestError::Inconsistent(format!(
                    "the note on {:?} names no entry, or is there twice",
                    n.path
                )));
            }
            if n.archive != 0 && !indices.contains(&n.archive) {
                return Err(ManifestError::Inconsistent(format!(
                    "entry {:?} is in archive {}, which the manifest does not list",
                    n.path, n.archive
                )));
            }
            if n.in_parent && self.parent.is_none() {
                return Err(ManifestError::Inconsistent(format!(
                    "entry {:?} is in the parent backup, but the manifest has no parent",
                    n.path
                )));
            }
        }
        for s in &self.skipped {
            check_hex_name(&s.path, &s.path, s.path_hex.as_deref(), "path_hex")?;
        }
        Ok(())
    }

    /// The schema-2 header for this manifest, its entries stream described by `entries`.
    pub fn header(&self, entries: EntriesObject) -> Header {
        let (file_count, file_bytes) = self.file_totals();
        Header {
            schema_version: SCHEMA_VERSION,
            kind: MANIFEST_KIND.to_string(),
            backup_id: self.backup_id.clone(),
            tool_version: self.tool_version.clone(),
            created: self.created,
            namespace: self.namespace.clone(),
            pvc_name: self.pvc.name.clone(),
            compression: self.compression,
            archive: self.archive.clone(),
            uncompressed_size: self.uncompressed_size,
            entry_count: self.entries.len() as u64,
            file_count,
            file_bytes,
            entries,
            details: Some(Details {
                cluster: self.cluster.clone(),
                pvc: self.pvc.clone(),
                source_pods: self.source_pods.clone(),
                helper_image: self.helper_image.clone(),
                skipped: self.skipped.clone(),
            }),
            consistency: self.consistency.clone(),
            encryption: self.encryption.clone(),
            parent: self.parent.clone(),
            additional_archives: self.additional_archives.clone(),
            proxy_state: self.proxy_state.clone(),
        }
    }

    /// Writes the entries stream (sorted, compressed like the archive) to `out`; returns
    /// `out` and the stored size and sha256.
    pub fn write_entries<W: Write>(
        &self,
        compression: Compression,
        out: W,
    ) -> io::Result<(W, u64, String)> {
        let notes: HashMap<Vec<u8>, &EntryNote> = self
            .entry_notes
            .iter()
            .map(|n| (canonical_key(&raw_name(&n.path, n.path_hex.as_deref())), n))
            .collect();
        let mut sorted: Vec<(Vec<u8>, &EntryRecord)> = self
            .entries
            .iter()
            .map(|e| (canonical_key(&e.raw_path()), e))
            .collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let sink = HashingWriter::new(BufWriter::with_capacity(1 << 16, out));
        let mut enc = compression.encoder(sink)?;
        for (key, e) in &sorted {
            let note = notes.get(key).copied().cloned().unwrap_or_default();
            let line = LineOut {
                entry: e,
                changed_while_read: note.changed_while_read,
                in_parent: note.in_parent,
                archive: note.archive,
            };
            serde_json::to_writer(&mut enc, &line)?;
            enc.write_all(b"\n")?;
        }
        let sink = enc.finish()?;
        let (buffered, sha, size) = sink.into_parts();
        let out = buffered.into_inner().map_err(|e| e.into_error())?;
        Ok((out, size, sha))
    }
}

/// One line of the entries stream, written: the record and its note's fields.
#[derive(Serialize)]
struct LineOut<'a> {
    #[serde(flatten)]
    entry: &'a EntryRecord,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    changed_while_read: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    in_parent: bool,
    #[serde(skip_serializing_if = "is_zero")]
    archive: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One line of the entries stream, read (every field named, unknown ones refused).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    path: String,
    #[serde(default)]
    path_hex: Option<String>,
    kind: EntryKind,
    size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    #[serde(default)]
    link_target: Option<String>,
    #[serde(default)]
    link_target_hex: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    changed_while_read: bool,
    #[serde(default)]
    in_parent: bool,
    #[serde(default)]
    archive: u32,
}

/// An `encryption` section: age, at least one recipient kind, and the parts that leak content
/// (archive, entries, details) all encrypted, the details in a named, hashed object.
fn validate_encryption(e: &Encryption) -> Result<(), ManifestError> {
    let EncryptionScheme::Age = e.scheme;
    if e.recipients.is_empty() {
        return Err(ManifestError::Inconsistent(
            "the encryption section names no recipient kind".into(),
        ));
    }
    for part in [
        EncryptedPart::Archive,
        EncryptedPart::Entries,
        EncryptedPart::Details,
    ] {
        if !e.parts.contains(&part) {
            return Err(ManifestError::Inconsistent(format!(
                "the encryption section leaves the {part:?} part in clear"
            )));
        }
    }
    let Some(d) = &e.details else {
        return Err(ManifestError::Inconsistent(
            "the encryption section names no details object".into(),
        ));
    };
    check_file_name("the encrypted details", &d.file_name)?;
    check_sha(|| "encryption.details.sha256".into(), &d.sha256)
}

fn check_entry_fields(e: &EntryRecord) -> Result<(), ManifestError> {
    check_hex_name(&e.path, &e.path, e.path_hex.as_deref(), "path_hex")?;
    if let Some(t) = &e.link_target {
        check_hex_name(&e.path, t, e.link_target_hex.as_deref(), "link_target_hex")?;
    }
    match (&e.sha256, e.kind) {
        (Some(s), EntryKind::File) => check_sha(|| format!("sha256 of entry {:?}", e.path), s)?,
        (None, EntryKind::File) => {
            return Err(ManifestError::MissingSha256 {
                path: e.path.clone(),
            })
        }
        (Some(_), kind) => {
            return Err(ManifestError::UnexpectedSha256 {
                path: e.path.clone(),
                kind,
            })
        }
        (None, _) => {}
    }
    if matches!(e.kind, EntryKind::Symlink | EntryKind::Hardlink) && e.link_target.is_none() {
        return Err(ManifestError::MissingLinkTarget {
            path: e.path.clone(),
            kind: e.kind,
        });
    }
    if e.mode & !0o7777 != 0 {
        return Err(ManifestError::BadMode {
            path: e.path.clone(),
            mode: e.mode,
        });
    }
    Ok(())
}

/// Parse a `<pvc>.manifest.json`: a schema-1 manifest, a schema-2 header, or the expanded
/// schema-2 form. Whole manifests are validated; a header is checked on its own (its entries
/// are checked by [`Header::read_entries`]).
pub fn parse(bytes: &[u8]) -> Result<Document, ManifestError> {
    // Look at schema_version/kind first so a future manifest gets the "unsupported version"
    // message rather than an unknown-field error, and tell a header from a whole manifest.
    #[derive(Deserialize)]
    struct Probe {
        schema_version: Option<u32>,
        kind: Option<String>,
        pvc_name: Option<IgnoredAny>,
    }
    let mut header = false;
    let mut version = 1;
    if let Ok(p) = serde_json::from_slice::<Probe>(bytes) {
        if let Some(kind) = p.kind.filter(|k| k != MANIFEST_KIND) {
            return Err(ManifestError::WrongKind { found: kind });
        }
        if let Some(found) = p
            .schema_version
            .filter(|v| !SCHEMA_VERSIONS_READ.contains(v))
        {
            return Err(ManifestError::UnsupportedSchema { found });
        }
        version = p.schema_version.unwrap_or(1);
        header = version >= 2 && p.pvc_name.is_some();
    }
    if header {
        let h: Header = serde_json::from_slice(bytes)
            .map_err(|source| ManifestError::Json { version, source })?;
        h.validate()?;
        return Ok(Document::Header(Box::new(h)));
    }
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Json { version, source })?;
    m.validate()?;
    Ok(Document::Whole(Box::new(m)))
}

impl Document {
    /// What `list` shows, without reading any entries.
    pub fn summary(&self) -> Summary {
        match self {
            Document::Whole(m) => m.summary(),
            Document::Header(h) => Summary {
                schema_version: h.schema_version,
                created: h.created,
                size: h.archive.size,
                files: h.file_count,
                compression: h.compression,
                skipped: h.details.as_ref().map_or(0, |d| d.skipped.len()),
                consistency: h.consistency.clone(),
                encrypted_to: h.encryption.as_ref().map(|e| e.recipients.clone()),
            },
        }
    }
}

/// Reader that hashes and counts what passes through, and keeps the first read error so
/// that a failing destination is not mistaken for a damaged stream.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    error: Option<io::Error>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error.get_or_insert(e);
                Err(copy)
            }
        }
    }
}

impl Header {
    /// Checks of the header on its own.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema_version != 2 {
            return Err(ManifestError::UnsupportedSchema {
                found: self.schema_version,
            });
        }
        check_file_name("archive", &self.archive.file_name)?;
        check_file_name("entries stream", &self.entries.file_name)?;
        check_sha(|| "archive.sha256".into(), &self.archive.sha256)?;
        check_sha(|| "entries.sha256".into(), &self.entries.sha256)?;
        if let Some(e) = &self.encryption {
            validate_encryption(e)?;
            if self.details.is_some() {
                return Err(ManifestError::Inconsistent(
                    "the header is encrypted but holds its details in clear".into(),
                ));
            }
            return Ok(());
        }
        let Some(d) = &self.details else {
            return Err(ManifestError::Inconsistent(
                "the header has no details and is not encrypted".into(),
            ));
        };
        if d.pvc.name != self.pvc_name {
            return Err(ManifestError::Inconsistent(format!(
                "pvc_name is {:?} but details.pvc.name is {:?}",
                self.pvc_name, d.pvc.name
            )));
        }
        Ok(())
    }

    /// Reads the stored entries stream `stored` (the object [`Header::entries`] names),
    /// checks its size, sha256 and order, and returns the whole, validated manifest.
    pub fn read_entries<R: Read>(self, stored: R) -> Result<Manifest, ManifestError> {
        let file = self.entries.file_name.clone();
        let damaged = |detail: String| ManifestError::Entries {
            file: file.clone(),
            detail,
        };
        let mut hashing = Hashing {
            inner: stored,
            hasher: Sha256::new(),
            count: 0,
            error: None,
        };
        let mut entries = Vec::with_capacity(self.entry_count.min(1 << 20) as usize);
        let mut notes = Vec::new();
        let mut problem: Option<ManifestError> = None;
        {
            let decoder = self
                .entries
                .compression
                .decoder(&mut hashing)
                .map_err(|e| damaged(format!("cannot decompress it: {e}")))?;
            let mut lines = BufReader::with_capacity(1 << 16, decoder);
            let mut line = Vec::new();
            let mut last: Option<Vec<u8>> = None;
            let mut number = 0u64;
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        problem = Some(damaged(format!("cannot decompress it: {e}")));
                        break;
                    }
                }
                number += 1;
                if line.last() != Some(&b'\n') {
                    problem = Some(damaged(format!("line {number} is cut short")));
                    break;
                }
                let l: LineIn = match serde_json::from_slice(&line) {
                    Ok(l) => l,
                    Err(source) => {
                        problem = Some(damaged(format!("line {number}: {source}")));
                        break;
                    }
                };
                let key = canonical_key(&raw_name(&l.path, l.path_hex.as_deref()));
                if last.as_ref().is_some_and(|p| *p >= key) {
                    problem = Some(ManifestError::Inconsistent(format!(
                        "entry {:?} (line {number} of {file:?}) is out of order or listed twice",
                        l.path
                    )));
                    break;
                }
                last = Some(key);
                let note = EntryNote {
                    path: l.path.clone(),
                    path_hex: l.path_hex.clone(),
                    changed_while_read: l.changed_while_read,
                    in_parent: l.in_parent,
                    archive: l.archive,
                };
                if !note.is_empty() {
                    notes.push(note);
                }
                entries.push(EntryRecord {
                    path: l.path,
                    path_hex: l.path_hex,
                    kind: l.kind,
                    size: l.size,
                    mode: l.mode,
                    uid: l.uid,
                    gid: l.gid,
                    mtime: l.mtime,
                    link_target: l.link_target,
                    link_target_hex: l.link_target_hex,
                    sha256: l.sha256,
                });
            }
        }
        // The rest of the stored bytes count for the hash (a trailer, or what follows a
        // problem), so that a damaged object is reported as such.
        if hashing.error.is_none() {
            let _ = io::copy(&mut hashing, &mut io::sink());
        }
        if let Some(source) = hashing.error.take() {
            return Err(ManifestError::Read { file, source });
        }
        let sha = hex::encode(hashing.hasher.finalize());
        if hashing.count != self.entries.size || sha != self.entries.sha256 {
            return Err(damaged(format!(
                "it is {} bytes with sha256 {sha}, the header says {} bytes with sha256 {}",
                hashing.count, self.entries.size, self.entries.sha256
            )));
        }
        if let Some(p) = problem {
            return Err(p);
        }
        let details = self.details.expect("validated");
        let m = Manifest {
            schema_version: self.schema_version,
            kind: self.kind,
            backup_id: self.backup_id,
            tool_version: self.tool_version,
            created: self.created,
            cluster: details.cluster,
            namespace: self.namespace,
            pvc: details.pvc,
            source_pods: details.source_pods,
            helper_image: details.helper_image,
            compression: self.compression,
            archive: self.archive,
            uncompressed_size: self.uncompressed_size,
            entry_count: self.entry_count,
            entries,
            entry_notes: notes,
            skipped: details.skipped,
            consistency: self.consistency,
            encryption: self.encryption,
            parent: self.parent,
            additional_archives: self.additional_archives,
            proxy_state: self.proxy_state,
        };
        let (files, bytes) = m.file_totals();
        for (field, declared, actual) in [
            ("file_count", self.file_count, files),
            ("file_bytes", self.file_bytes, bytes),
        ] {
            if declared != actual {
                return Err(ManifestError::Totals {
                    field,
                    declared,
                    actual,
                });
            }
        }
        m.validate()?;
        Ok(m)
    }
}

/// A manifest that could not be loaded from a destination.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no manifest at {location}")]
    NoManifest { location: String },
    #[error(
        "the entries stream {location} that the manifest names is missing, so the backup is \
         damaged (was it deleted, or only partly copied?)"
    )]
    NoEntries { location: String },
    #[error("manifest {location} is invalid: {source}")]
    Invalid {
        location: String,
        #[source]
        source: ManifestError,
    },
    #[error("reading {location}: {source}")]
    Read {
        location: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// An encrypted backup without a matching identity, or a damaged encrypted object.
    #[error(transparent)]
    Encryption(#[from] crate::encryption::EncryptionError),
}

/// Loads the manifest whose header (or schema-1 document) is at `manifest_key`, reading the
/// entries stream beside it for schema 2.
pub fn load(dest: &dyn Destination, manifest_key: &str) -> Result<Manifest, LoadError> {
    load_with(dest, manifest_key, None).map(|(m, _)| m)
}

/// [`load`], decrypting an encrypted backup with `keys` ([`crate::encryption`]). Also returns
/// the stored (encrypted) archive's size and sha256 from the header for an encrypted backup,
/// whose [`Manifest::archive`] then describes the archive before encryption (what the
/// decrypted stream is checked against).
pub fn load_with(
    dest: &dyn Destination,
    manifest_key: &str,
    keys: Option<&crate::encryption::Identities>,
) -> Result<(Manifest, Option<ArchiveInfo>), LoadError> {
    let location = dest.locate(manifest_key);
    let mut bytes = Vec::new();
    dest.open(manifest_key)
        .map_err(|e| match e {
            DestinationError::NotFound { path, .. } => LoadError::NoManifest { location: path },
            other => LoadError::Destination(other),
        })?
        .read_to_end(&mut bytes)
        .map_err(|source| LoadError::Read {
            location: location.clone(),
            source,
        })?;
    let invalid = |source| LoadError::Invalid {
        location: location.clone(),
        source,
    };
    match parse(&bytes).map_err(invalid)? {
        Document::Whole(m) => Ok((*m, None)),
        Document::Header(h) => {
            let key = format!("{}{}", key_dir(manifest_key), h.entries.file_name);
            let (h, sealed) = match h.encryption.clone() {
                None => (*h, None),
                Some(e) => {
                    let keys =
                        keys.ok_or_else(|| crate::encryption::EncryptionError::NoIdentity {
                            kinds: e.recipients.clone(),
                        })?;
                    let (h, stored) = crate::encryption::unseal_header(
                        dest,
                        key_dir(manifest_key),
                        *h,
                        &e,
                        keys,
                    )?;
                    (h, Some((keys, e, stored)))
                }
            };
            let reader = dest.open(&key).map_err(|e| match e {
                DestinationError::NotFound { .. } => LoadError::NoEntries {
                    location: dest.locate(&key),
                },
                other => LoadError::Destination(other),
            })?;
            let (reader, stored_archive): (Box<dyn Read + Send>, _) = match sealed {
                None => (reader, None),
                Some((keys, e, (entries, archive))) => (
                    Box::new(keys.open(reader, &dest.locate(&key), &entries, &e.recipients)?),
                    Some(archive),
                ),
            };
            let m = h
                .read_entries(BufReader::with_capacity(1 << 20, reader))
                .map_err(|e| match e {
                    ManifestError::Read { source, .. } => {
                        match crate::encryption::damage(&source) {
                            Some(d) => invalid(ManifestError::Entries {
                                file: dest.locate(&key),
                                detail: d.to_string(),
                            }),
                            None => LoadError::Read {
                                location: dest.locate(&key),
                                source,
                            },
                        }
                    }
                    e => invalid(e),
                })?;
            Ok((m, stored_archive))
        }
    }
}

/// Stores `m` as schema 2 at `manifest_key` (`…/<pvc>.manifest.json`): the entries stream
/// first, committed, then the header, committed last (the commit marker). Nothing is visible
/// under the header's name unless both are complete.
pub fn store(
    dest: &dyn Destination,
    manifest_key: &str,
    m: &Manifest,
) -> Result<Header, DestinationError> {
    store_with(dest, manifest_key, m, None)
}

/// [`store`], encrypting the entries stream and the details when `seal` says so
/// ([`crate::encryption::Seal`]).
pub fn store_with(
    dest: &dyn Destination,
    manifest_key: &str,
    m: &Manifest,
    seal: Option<&crate::encryption::Seal>,
) -> Result<Header, DestinationError> {
    let mut file_name = entries_file_name(manifest_key, m.compression);
    if seal.is_some() {
        file_name.push_str(crate::encryption::AGE_SUFFIX);
    }
    let key = format!("{}{file_name}", key_dir(manifest_key));
    let write_error = |k: &str, source: io::Error| DestinationError::Io {
        action: "write",
        path: PathBuf::from(dest.locate(k)),
        source,
    };
    let writer = dest.create(&key)?;
    let (writer, size, sha256, plain) = match seal {
        None => {
            let (w, size, sha) = m
                .write_entries(m.compression, writer)
                .map_err(|e| write_error(&key, e))?;
            (w, size, sha, None)
        }
        Some(seal) => seal
            .entries(|sealed| m.write_entries(m.compression, sealed), writer)
            .map(|(w, size, sha, plain)| (w, size, sha, Some(plain)))
            .map_err(|e| write_error(&key, e))?,
    };
    writer.commit()?;
    let mut header = m.header(EntriesObject {
        file_name,
        format: EntriesFormat::JsonLines,
        order: EntriesOrder::PathBytes,
        compression: m.compression,
        size,
        sha256,
    });
    if let (Some(seal), Some(plain)) = (seal, plain) {
        seal.details(
            dest,
            key_dir(manifest_key),
            manifest_key,
            m,
            &mut header,
            plain,
        )?;
    }
    let mut json = serde_json::to_vec_pretty(&header).expect("header serialises");
    json.push(b'\n');
    let mut w = dest.create(manifest_key)?;
    w.write_all(&json)
        .map_err(|e| write_error(manifest_key, e))?;
    w.commit()?;
    Ok(header)
}

#[cfg(test)]
mod tests;

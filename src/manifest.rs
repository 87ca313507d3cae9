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
//! Both versions load into one [`Manifest`] ([`load`]), which keeps every entry in
//! [`Manifest::entries`] (schema 1: archive order; schema 2: path order). Its serde form (the
//! "expanded" form `inspect -o json --files` prints) is the header's fields flattened, with
//! `entries` inline; [`Manifest::from_json`] reads it back, and schema-1 documents.
//!
//! At a million files that is hundreds of MiB, so the commands that need not hold the entries
//! stream them in memory that does not grow with their number (issue #14): `create` spools
//! them in path order as the archive is read ([`crate::archive::Spool`], an external sort) and
//! writes the stream from the merge ([`write_entries_object`]); `verify` and `inspect` read a
//! schema-2 stream line by line ([`open`], [`EntryReader`]) and `verify` compares it with the
//! archive's members, spooled in path order, as two sorted streams; `list` and `prune` read
//! headers only, and count a schema-1 document's entries as they stream by ([`read_summary`]).
//! Schema-1 manifests are still loaded whole: they are bounded by what 0.1 wrote.
//!
//! Entry names that are not valid UTF-8 carry an extra `path_hex` (and `link_target_hex`)
//! with the exact bytes; see [`EntryRecord`]. `mode` is a decimal JSON number (493 = 0o755).
//! Unknown fields are rejected everywhere so a typo in a hand-edited manifest is an error
//! instead of being silently ignored.

pub mod sections;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::rc::Rc;

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::{
    canonical_key, check_entries_safe, ArchiveSummary, Compression, EntryKind, EntryRecord,
    HashingWriter, Spooled, UnsafeEntry,
};
pub use crate::archive::{SkipReason, SkippedEntry};
use crate::destination::{Destination, DestinationError, ObjectWriter};
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
    /// Who made the backup, for audits: the user the API server authenticated
    /// (SelfSubjectReview), e.g. `system:serviceaccount:shop:pvbackup-nightly` for a schedule.
    /// Absent in manifests of earlier releases and when the cluster does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
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
            entry_count: summary.entry_count,
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

    /// The schema-2 header for this manifest, its entries stream described by `entries`, which
    /// holds `totals`.
    pub fn header(&self, entries: EntriesObject, totals: Totals) -> Header {
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
            entry_count: totals.entries,
            file_count: totals.files,
            file_bytes: totals.file_bytes,
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
/// are checked as [`load`] or [`open`] reads them).
pub fn parse(bytes: &[u8]) -> Result<Document, ManifestError> {
    let (version, header) = probe(bytes)?;
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

/// The most of a `<pvc>.manifest.json` [`read_summary`] holds in memory. A schema-2 header is
/// a few KiB whatever the file count (its `details.skipped` list aside); anything longer is a
/// whole manifest with its entries inline (schema 1, or the expanded form).
pub const SUMMARY_BUFFER: u64 = 1 << 20;

/// What `list` and `prune` read of a `<pvc>.manifest.json`: its [`Summary`], in memory
/// bounded by [`SUMMARY_BUFFER`] whatever the manifest holds.
///
/// A schema-2 header is [`parse`]d and checked whole (one past the buffer, which only
/// thousands of `details.skipped` entries make, gives its counts unchecked). A whole manifest
/// (schema 1, or the expanded form) is read as a stream: each entry is parsed, its own fields checked and
/// counted, and dropped, so the rules across entries (no duplicates, hard link targets,
/// nothing beneath a symlink) are not checked here; `verify`, `inspect` and `restore`, which
/// read every entry, check them.
pub fn read_summary<R: Read>(mut reader: R) -> Result<Summary, SummaryError> {
    let mut head = Vec::new();
    reader
        .by_ref()
        .take(SUMMARY_BUFFER)
        .read_to_end(&mut head)
        .map_err(SummaryError::Read)?;
    if (head.len() as u64) < SUMMARY_BUFFER {
        let (version, header) = probe(&head)?;
        if header {
            return Ok(parse(&head)?.summary());
        }
        return stream_summary(&head[..], version);
    }
    // serde_json reads byte by byte: buffered.
    let rest = BufReader::with_capacity(1 << 16, reader);
    stream_summary(io::Cursor::new(head).chain(rest), 1)
}

/// A manifest whose summary could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    #[error("reading it failed: {0}")]
    Read(#[source] io::Error),
}

/// The summary of a whole manifest, entries counted as they stream by; `version` is what a
/// JSON error reports (the declared one, when known before the stream was read).
fn stream_summary<R: Read>(reader: R, version: u32) -> Result<Summary, SummaryError> {
    /// The fields a summary needs; every other field is skipped unparsed.
    #[derive(Deserialize)]
    struct Whole {
        schema_version: Option<u32>,
        kind: Option<String>,
        created: DateTime<Utc>,
        compression: Compression,
        archive: ArchiveInfo,
        entry_count: u64,
        entries: Tally,
        #[serde(default)]
        skipped: Vec<IgnoredAny>,
        #[serde(default)]
        consistency: Option<Consistency>,
        #[serde(default)]
        encryption: Option<Encryption>,
        /// A header past the buffer (thousands of `details.skipped`): its counts.
        #[serde(default)]
        file_count: Option<u64>,
        #[serde(default)]
        details: Option<SkippedOnly>,
    }
    #[derive(Deserialize)]
    struct SkippedOnly {
        #[serde(default)]
        skipped: Vec<IgnoredAny>,
    }
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = Whole::deserialize(&mut de).and_then(|w| de.end().map(|()| w));
    let w = match parsed {
        Ok(w) => w,
        Err(e) if e.is_io() => return Err(SummaryError::Read(e.into())),
        Err(source) => return Err(ManifestError::Json { version, source }.into()),
    };
    if let Some(kind) = w.kind.filter(|k| k != MANIFEST_KIND) {
        return Err(ManifestError::WrongKind { found: kind }.into());
    }
    let version = w.schema_version.unwrap_or(1);
    if !SCHEMA_VERSIONS_READ.contains(&version) {
        return Err(ManifestError::UnsupportedSchema { found: version }.into());
    }
    if let Some(e) = w.entries.problem {
        return Err(e.into());
    }
    if w.entries.header {
        return Ok(Summary {
            schema_version: version,
            created: w.created,
            size: w.archive.size,
            files: w.file_count.unwrap_or_default(),
            compression: w.compression,
            skipped: w.details.map_or(0, |d| d.skipped.len()),
            consistency: w.consistency,
            encrypted_to: w.encryption.map(|e| e.recipients),
        });
    }
    if w.entry_count != w.entries.entries {
        return Err(ManifestError::EntryCount {
            declared: w.entry_count,
            actual: w.entries.entries as usize,
        }
        .into());
    }
    check_sha(|| "archive.sha256".into(), &w.archive.sha256)?;
    Ok(Summary {
        schema_version: version,
        created: w.created,
        size: w.archive.size,
        files: w.entries.files,
        compression: w.compression,
        skipped: w.skipped.len(),
        consistency: w.consistency,
        encrypted_to: w.encryption.map(|e| e.recipients),
    })
}

/// A whole manifest's `entries`, counted one by one (each parsed, checked on its own and
/// dropped) instead of collected; or a header's `entries` object (`header`).
#[derive(Default)]
struct Tally {
    entries: u64,
    files: u64,
    /// The first entry whose fields are wrong.
    problem: Option<ManifestError>,
    header: bool,
}

impl<'de> Deserialize<'de> for Tally {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counting;
        impl<'de> serde::de::Visitor<'de> for Counting {
            type Value = Tally;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Tally, A::Error> {
                let mut t = Tally::default();
                while let Some(e) = seq.next_element::<EntryRecord>()? {
                    t.entries += 1;
                    if e.kind == EntryKind::File {
                        t.files += 1;
                    }
                    if t.problem.is_none() {
                        t.problem = check_entry_fields(&e).err();
                    }
                }
                Ok(t)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Tally, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Tally {
                    header: true,
                    ..Tally::default()
                })
            }
        }
        d.deserialize_any(Counting)
    }
}

/// `schema_version`/`kind` checked first, so that a future manifest gets the "unsupported
/// version" message rather than an unknown-field error; and whether it is a schema-2 header
/// (true) or a whole manifest. Returns the version.
fn probe(bytes: &[u8]) -> Result<(u32, bool), ManifestError> {
    #[derive(Deserialize)]
    struct Probe {
        schema_version: Option<u32>,
        kind: Option<String>,
        pvc_name: Option<IgnoredAny>,
    }
    let Ok(p) = serde_json::from_slice::<Probe>(bytes) else {
        return Ok((1, false));
    };
    if let Some(kind) = p.kind.filter(|k| k != MANIFEST_KIND) {
        return Err(ManifestError::WrongKind { found: kind });
    }
    if let Some(found) = p
        .schema_version
        .filter(|v| !SCHEMA_VERSIONS_READ.contains(v))
    {
        return Err(ManifestError::UnsupportedSchema { found });
    }
    let version = p.schema_version.unwrap_or(1);
    Ok((version, version >= 2 && p.pvc_name.is_some()))
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

    /// The manifest without its entries ([`Manifest::entries`] and `entry_notes` empty), and
    /// the entries read from `stored` one by one, in path order, each with its note. Memory
    /// stays bounded whatever the number of entries: see [`EntryReader`] for what is checked
    /// on the way and at the end.
    pub fn stream_entries<'a, R: Read + 'a>(
        self,
        stored: R,
    ) -> Result<(Manifest, EntryReader<'a>), ManifestError> {
        let raw = Rc::new(RefCell::new(Hashing {
            inner: Box::new(stored) as Box<dyn Read + 'a>,
            hasher: Sha256::new(),
            count: 0,
            error: None,
        }));
        let file = self.entries.file_name.clone();
        let decoder = self
            .entries
            .compression
            .decoder(Shared(Rc::clone(&raw)))
            .map_err(|e| ManifestError::Entries {
                file: file.clone(),
                detail: format!("cannot decompress it: {e}"),
            })?;
        let reader = EntryReader {
            raw,
            lines: BufReader::with_capacity(1 << 16, decoder),
            file,
            object: self.entries.clone(),
            declared: Totals {
                entries: self.entry_count,
                files: self.file_count,
                file_bytes: self.file_bytes,
            },
            archives: self.additional_archives.iter().map(|a| a.index).collect(),
            has_parent: self.parent.is_some(),
            line: Vec::new(),
            number: 0,
            last: None,
            symlinks: Vec::new(),
            totals: Totals::default(),
            done: false,
        };
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
            entries: Vec::new(),
            entry_notes: Vec::new(),
            skipped: details.skipped,
            consistency: self.consistency,
            encryption: self.encryption,
            parent: self.parent,
            additional_archives: self.additional_archives,
            proxy_state: self.proxy_state,
        };
        m.validate_sections(&HashSet::new())?;
        Ok((m, reader))
    }
}

/// A [`Hashing`] reader shared between the decompressor (which reads through it) and the
/// [`EntryReader`] (which drains and checks it at the end).
struct Shared<'a>(Rc<RefCell<Hashing<Box<dyn Read + 'a>>>>);

impl Read for Shared<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

/// The entries of a schema-2 backup, read one line at a time ([`Header::stream_entries`]).
///
/// Checked on the way, in memory that does not grow with the number of entries: each line's
/// fields ([`check_entry_fields`]) and note (its archive is listed, `in_parent` only with a
/// parent), the rules on single entries ([`crate::archive::check_entry_safe`]), that paths
/// strictly increase (so none is listed twice), and that nothing lies beneath a symlink (the
/// symlinks that can still have entries beneath the current one are its prefixes, so few).
/// At the end (the item after the last entry, an `Err` if any): the stored size and sha256,
/// and the header's entry, file and byte counts.
///
/// Not checked here: that a hard link's target is an entry, which needs the entries before
/// and after it. `verify`, `restore` and `drill` check it against the archive, in archive
/// order ([`crate::archive::SortedRules`]); `inspect` in a second read of the entries, with
/// the same rules; [`load`] checks it in memory.
pub struct EntryReader<'a> {
    raw: Rc<RefCell<Hashing<Box<dyn Read + 'a>>>>,
    lines: BufReader<Box<dyn Read + 'a>>,
    file: String,
    object: EntriesObject,
    declared: Totals,
    archives: HashSet<u32>,
    has_parent: bool,
    line: Vec<u8>,
    number: u64,
    last: Option<Vec<u8>>,
    symlinks: Vec<Vec<u8>>,
    totals: Totals,
    done: bool,
}

impl EntryReader<'_> {
    fn damaged(&self, detail: String) -> ManifestError {
        ManifestError::Entries {
            file: self.file.clone(),
            detail,
        }
    }

    /// The next line, `Ok(None)` at the end of the decompressed stream.
    fn next_line(&mut self) -> Result<Option<(EntryRecord, Option<EntryNote>)>, ManifestError> {
        self.line.clear();
        match self.lines.read_until(b'\n', &mut self.line) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(self.damaged(format!("cannot decompress it: {e}"))),
        }
        self.number += 1;
        let number = self.number;
        if self.line.last() != Some(&b'\n') {
            return Err(self.damaged(format!("line {number} is cut short")));
        }
        let l: LineIn = serde_json::from_slice(&self.line)
            .map_err(|source| self.damaged(format!("line {number}: {source}")))?;
        let key = canonical_key(&raw_name(&l.path, l.path_hex.as_deref()));
        if self.last.as_ref().is_some_and(|p| *p >= key) {
            return Err(ManifestError::Inconsistent(format!(
                "entry {:?} (line {number} of {:?}) is out of order or listed twice",
                l.path, self.file
            )));
        }
        let note = EntryNote {
            path: l.path.clone(),
            path_hex: l.path_hex.clone(),
            changed_while_read: l.changed_while_read,
            in_parent: l.in_parent,
            archive: l.archive,
        };
        let e = EntryRecord {
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
        };
        check_entry_fields(&e)?;
        crate::archive::check_entry_safe(&e).map_err(|source| ManifestError::Unsafe { source })?;
        if note.archive != 0 && !self.archives.contains(&note.archive) {
            return Err(ManifestError::Inconsistent(format!(
                "entry {:?} is in archive {}, which the manifest does not list",
                e.path, note.archive
            )));
        }
        if note.in_parent && !self.has_parent {
            return Err(ManifestError::Inconsistent(format!(
                "entry {:?} is in the parent backup, but the manifest has no parent",
                e.path
            )));
        }
        // Keys beneath symlink `s` are exactly those in [s + "/", s + "0"): '0' follows '/'.
        self.symlinks.retain(|s| {
            let mut end = s.clone();
            end.push(b'0');
            key < end
        });
        if let Some(s) = self
            .symlinks
            .iter()
            .find(|s| key.len() > s.len() && key.starts_with(s) && key[s.len()] == b'/')
        {
            return Err(ManifestError::Unsafe {
                source: UnsafeEntry {
                    path: e.path.clone(),
                    reason: crate::archive::UnsafeReason::BeneathSymlink {
                        symlink: String::from_utf8_lossy(s).into_owned(),
                    },
                },
            });
        }
        if e.kind == EntryKind::Symlink {
            self.symlinks.push(key.clone());
        }
        self.last = Some(key);
        self.totals.entries += 1;
        if e.kind == EntryKind::File {
            self.totals.files += 1;
            self.totals.file_bytes += e.size;
        }
        Ok(Some((e, (!note.is_empty()).then_some(note))))
    }

    /// After the last line: the rest of the stored bytes count for the hash (a trailer, or
    /// what follows a problem), so that a damaged object is reported as such.
    fn end(&mut self, problem: Option<ManifestError>) -> Result<(), ManifestError> {
        let mut raw = self.raw.borrow_mut();
        if raw.error.is_none() {
            let _ = io::copy(&mut *raw, &mut io::sink());
        }
        if let Some(source) = raw.error.take() {
            return Err(ManifestError::Read {
                file: self.file.clone(),
                source,
            });
        }
        let sha = hex::encode(std::mem::take(&mut raw.hasher).finalize());
        if raw.count != self.object.size || sha != self.object.sha256 {
            return Err(self.damaged(format!(
                "it is {} bytes with sha256 {sha}, the header says {} bytes with sha256 {}",
                raw.count, self.object.size, self.object.sha256
            )));
        }
        drop(raw);
        if let Some(p) = problem {
            return Err(p);
        }
        if self.totals.entries != self.declared.entries {
            return Err(ManifestError::EntryCount {
                declared: self.declared.entries,
                actual: self.totals.entries as usize,
            });
        }
        for (field, declared, actual) in [
            ("file_count", self.declared.files, self.totals.files),
            (
                "file_bytes",
                self.declared.file_bytes,
                self.totals.file_bytes,
            ),
        ] {
            if declared != actual {
                return Err(ManifestError::Totals {
                    field,
                    declared,
                    actual,
                });
            }
        }
        Ok(())
    }
}

impl Iterator for EntryReader<'_> {
    type Item = Result<(EntryRecord, Option<EntryNote>), ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let problem = match self.next_line() {
            Ok(Some(line)) => return Some(Ok(line)),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        self.done = true;
        self.end(problem).err().map(Err)
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
    let (mut m, entries, stored_archive) = open_with(dest, manifest_key, keys)?;
    let Some(reader) = entries else {
        return Ok((m, stored_archive));
    };
    let entries_location = dest.locate(&format!("{}{}", key_dir(manifest_key), reader.file));
    let mut all = Vec::with_capacity(m.entry_count.min(1 << 20) as usize);
    for line in reader {
        let (e, note) = line.map_err(|e| load_error(&location, &entries_location, e))?;
        m.entry_notes.extend(note);
        all.push(e);
    }
    m.entries = all;
    m.validate()
        .map_err(|source| LoadError::Invalid { location, source })?;
    Ok((m, stored_archive))
}

fn load_error(location: &str, entries_location: &str, e: ManifestError) -> LoadError {
    match e {
        // A decrypted stream's damage (a changed or cut ciphertext) comes as a read error of
        // the plaintext, but says nothing about the destination: the backup is damaged.
        ManifestError::Read { source, .. } => match crate::encryption::damage(&source) {
            Some(d) => LoadError::Invalid {
                location: location.to_string(),
                source: ManifestError::Entries {
                    file: entries_location.to_string(),
                    detail: d.to_string(),
                },
            },
            None => LoadError::Read {
                location: entries_location.to_string(),
                source,
            },
        },
        e => LoadError::Invalid {
            location: location.to_string(),
            source: e,
        },
    }
}

/// [`load`] without reading the entries into memory: a schema-1 (or expanded) manifest whole,
/// with `None`; a schema-2 one without its entries, and an [`EntryReader`] over the entries
/// stream beside it, which checks them as they are read (see there what it checks, and what
/// the caller must). Errors of the reader convert with [`LoadError::from_entries`].
pub fn open(
    dest: &dyn Destination,
    manifest_key: &str,
) -> Result<(Manifest, Option<EntryReader<'static>>), LoadError> {
    open_with(dest, manifest_key, None).map(|(m, entries, _)| (m, entries))
}

/// [`open`], decrypting an encrypted backup with `keys` ([`crate::encryption`]): the entries
/// are read through the decryptor, memory flat as for a plain backup. Also returns, like
/// [`load_with`], the stored (encrypted) archive's size and sha256 for an encrypted backup.
#[allow(clippy::type_complexity)]
pub fn open_with(
    dest: &dyn Destination,
    manifest_key: &str,
    keys: Option<&crate::encryption::Identities>,
) -> Result<(Manifest, Option<EntryReader<'static>>, Option<ArchiveInfo>), LoadError> {
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
        Document::Whole(m) => Ok((*m, None, None)),
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
            let (m, entries) = h
                .stream_entries(BufReader::with_capacity(1 << 20, reader))
                .map_err(|e| load_error(&location, &dest.locate(&key), e))?;
            Ok((m, Some(entries), stored_archive))
        }
    }
}

impl LoadError {
    /// An error of the [`EntryReader`] that [`open`] returned for `manifest_key`.
    pub fn from_entries(
        dest: &dyn Destination,
        manifest_key: &str,
        reader_file: &str,
        e: ManifestError,
    ) -> LoadError {
        load_error(
            &dest.locate(manifest_key),
            &dest.locate(&format!("{}{reader_file}", key_dir(manifest_key))),
            e,
        )
    }
}

impl EntryReader<'_> {
    /// The entries stream's file name (beside the header).
    pub fn file_name(&self) -> &str {
        &self.file
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
    let mut sorted: Vec<(Vec<u8>, &EntryRecord)> = m
        .entries
        .iter()
        .map(|e| (canonical_key(&e.raw_path()), e))
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let entries = sorted.into_iter().enumerate().map(|(seq, (key, e))| {
        Ok(Spooled {
            key,
            seq: seq as u64,
            item: e.clone(),
        })
    });
    let written = match write_entries_object(dest, manifest_key, m, entries, |_, _, _| Ok(()), seal)
    {
        Ok(w) => w,
        Err(StoreError::Destination(e)) => return Err(e),
        Err(other) => unreachable!("an in-memory manifest without checks: {other}"),
    };
    written.writer.commit()?;
    store_header(
        dest,
        manifest_key,
        m,
        written.object,
        written.totals,
        seal.zip(written.plain),
    )
}

/// Regular files and entries of a written entries stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
}

/// An entries stream written but not committed (see [`write_entries_object`]).
pub struct WrittenEntries {
    pub writer: Box<dyn ObjectWriter>,
    /// The stored object: for an encrypted stream, its encrypted bytes.
    pub object: EntriesObject,
    pub totals: Totals,
    /// For an encrypted stream, the size and sha256 of its plaintext (compressed), which go
    /// into the encrypted details ([`store_header`]).
    pub plain: Option<crate::encryption::PlainObject>,
}

/// Why an entries stream was not written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// A check of the caller's refused an entry.
    #[error(transparent)]
    Refused(#[from] crate::archive::SortedProblem),
}

/// Writes the entries stream of `m` at the key beside `manifest_key`, from `entries` in path
/// order (each checked by `check` first, with its key and archive position), with the notes
/// of `m.entry_notes` on their lines (notes that name no entry are dropped), compressed like
/// the archive, then encrypted when `seal` is given (compress → encrypt → hash the stored
/// bytes); not committed. Memory stays bounded whatever the number of entries: each is
/// written as it comes.
pub fn write_entries_object<I, C>(
    dest: &dyn Destination,
    manifest_key: &str,
    m: &Manifest,
    entries: I,
    check: C,
    seal: Option<&crate::encryption::Seal>,
) -> Result<WrittenEntries, StoreError>
where
    I: Iterator<Item = io::Result<Spooled<EntryRecord>>>,
    C: FnMut(&[u8], u64, &EntryRecord) -> Result<(), crate::archive::SortedProblem>,
{
    let mut file_name = entries_file_name(manifest_key, m.compression);
    if seal.is_some() {
        file_name.push_str(crate::encryption::AGE_SUFFIX);
    }
    let key = format!("{}{file_name}", key_dir(manifest_key));
    let write_error = |source: io::Error| DestinationError::Io {
        action: "write",
        path: PathBuf::from(dest.locate(&key)),
        source,
    };
    let notes: HashMap<Vec<u8>, &EntryNote> = m
        .entry_notes
        .iter()
        .map(|n| (canonical_key(&raw_name(&n.path, n.path_hex.as_deref())), n))
        .collect();
    let writer = dest.create(&key)?;
    let buffered = BufWriter::with_capacity(1 << 16, writer);
    let (buffered, size, sha256, plain, totals) = match seal {
        None => {
            let sink = HashingWriter::new(buffered);
            let (sink, totals) =
                write_entry_lines(sink, m.compression, &notes, entries, check, write_error)?;
            let (buffered, sha256, size) = sink.into_parts();
            (buffered, size, sha256, None, totals)
        }
        Some(seal) => {
            let (buffered, size, sha256, plain, totals) = seal.entries(
                buffered,
                |e| StoreError::from(write_error(e)),
                |sink| write_entry_lines(sink, m.compression, &notes, entries, check, write_error),
            )?;
            (buffered, size, sha256, Some(plain), totals)
        }
    };
    let writer = buffered
        .into_inner()
        .map_err(|e| write_error(e.into_error()))?;
    Ok(WrittenEntries {
        writer,
        object: EntriesObject {
            file_name,
            format: EntriesFormat::JsonLines,
            order: EntriesOrder::PathBytes,
            compression: m.compression,
            size,
            sha256,
        },
        totals,
        plain,
    })
}

/// The lines of an entries stream (see [`write_entries_object`]), compressed into `sink`;
/// returns `sink` and the totals.
fn write_entry_lines<W, I, C>(
    sink: W,
    compression: Compression,
    notes: &HashMap<Vec<u8>, &EntryNote>,
    entries: I,
    mut check: C,
    write_error: impl Fn(io::Error) -> DestinationError,
) -> Result<(W, Totals), StoreError>
where
    W: Write,
    I: Iterator<Item = io::Result<Spooled<EntryRecord>>>,
    C: FnMut(&[u8], u64, &EntryRecord) -> Result<(), crate::archive::SortedProblem>,
{
    let mut enc = compression.encoder(sink).map_err(&write_error)?;
    let mut totals = Totals::default();
    for e in entries {
        let e = e.map_err(|e| StoreError::Refused(crate::archive::SortedProblem::Io(e)))?;
        check(&e.key, e.seq, &e.item)?;
        totals.entries += 1;
        if e.item.kind == EntryKind::File {
            totals.files += 1;
            totals.file_bytes += e.item.size;
        }
        let note = notes.get(&e.key).copied().cloned().unwrap_or_default();
        let line = LineOut {
            entry: &e.item,
            changed_while_read: note.changed_while_read,
            in_parent: note.in_parent,
            archive: note.archive,
        };
        serde_json::to_writer(&mut enc, &line).map_err(|e| write_error(e.into()))?;
        enc.write_all(b"\n").map_err(&write_error)?;
    }
    let sink = enc.finish().map_err(&write_error)?;
    Ok((sink, totals))
}

/// Writes and commits the header of `m` (the commit marker), its entries stream `object`
/// already committed, with the `totals` it holds. With `sealed` (the seal and the entries
/// stream's plaintext size and sha256), the details move into the encrypted details object
/// first ([`crate::encryption::Seal::details`]).
pub fn store_header(
    dest: &dyn Destination,
    manifest_key: &str,
    m: &Manifest,
    object: EntriesObject,
    totals: Totals,
    sealed: Option<(&crate::encryption::Seal, crate::encryption::PlainObject)>,
) -> Result<Header, DestinationError> {
    let mut header = m.header(object, totals);
    if let Some((seal, plain)) = sealed {
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
    w.write_all(&json).map_err(|source| DestinationError::Io {
        action: "write",
        path: PathBuf::from(dest.locate(manifest_key)),
        source,
    })?;
    w.commit()?;
    Ok(header)
}

#[cfg(test)]
pub(crate) mod tests;

//! The optional, typed sections of a schema-2 manifest. Each is absent (or empty) unless the
//! feature that fills it ran; a schema-1 manifest has none of them.
//!
//! Defined now, even where no command fills a section yet, so that the features that will
//! (snapshots and hooks, encryption, incremental backups, several archives, proxy state) only
//! fill in fields instead of changing the schema again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::Compression;

/// How the data was made consistent before it was read (`consistency`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    pub method: ConsistencyMethod,
    /// The VolumeSnapshot read from (`method: snapshot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
    /// The PVC cloned from the source and read from (`method: clone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_pvc: Option<String>,
    /// Hooks run around the cut (freeze/thaw, `pg_backup_start`, …), in the order they ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRun>,
    /// Files whose content changed while they were read (`method: live` only; each such
    /// entry carries `changed_while_read` in the entries stream).
    #[serde(default)]
    pub files_changed_while_read: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyMethod {
    /// A CSI VolumeSnapshot of the PVC, restored into a temporary PVC that was read.
    Snapshot,
    /// A CSI clone of the PVC (a PVC with `dataSource` the source PVC) that was read.
    Clone,
    /// The live volume was read while in use: files may have changed while they were read.
    Live,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    /// `metadata.name` of the VolumeSnapshot.
    pub name: String,
    /// `spec.volumeSnapshotClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// `status.boundVolumeSnapshotContentName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_name: Option<String>,
    /// `status.creationTime`: when the storage system cut the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRun {
    pub phase: HookPhase,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub outcome: HookOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPhase {
    /// Before the cut (e.g. `fsfreeze -f`, a database checkpoint).
    Pre,
    /// After the cut (e.g. `fsfreeze -u`).
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookOutcome {
    Succeeded,
    Failed,
    TimedOut,
    /// Not run (an earlier hook failed).
    Skipped,
}

/// Encryption of a backup's parts (`encryption`). When a manifest has this section, its
/// header keeps only what `list` needs (id, namespace, PVC name, time, sizes): `details`
/// moves into the encrypted object named by [`Encryption::details`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    pub scheme: EncryptionScheme,
    /// The kinds of the recipients (never the keys themselves).
    pub recipients: Vec<RecipientKind>,
    /// Which parts are encrypted.
    pub parts: Vec<EncryptedPart>,
    /// The encrypted object holding the header's `details`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StoredObject>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionScheme {
    /// age v1 (<https://age-encryption.org/v1>).
    Age,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientKind {
    /// An `age1…` X25519 recipient.
    X25519,
    /// An `ssh-ed25519` public key.
    SshEd25519,
    /// An `ssh-rsa` public key.
    SshRsa,
    /// A passphrase (age's scrypt recipient).
    Passphrase,
    /// An age plugin recipient (`age1<plugin>1…`, e.g. a YubiKey).
    Plugin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptedPart {
    Archive,
    Entries,
    Details,
    ProxyState,
}

/// An object stored next to the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredObject {
    /// File name (no directory), relative to the manifest.
    pub file_name: String,
    /// Stored size in bytes.
    pub size: u64,
    /// sha256 of the stored bytes.
    pub sha256: String,
}

/// The backup an incremental backup builds on (`parent`). Entries whose content is in the
/// parent's archive say `in_parent` in the entries stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentBackup {
    pub backup_id: String,
    /// The parent's manifest, as a key relative to the destination root
    /// (`<id>/<namespace>/<pvc>.manifest.json`).
    pub manifest: String,
    /// sha256 of the parent's stored manifest header: a parent replaced later is detected.
    pub manifest_sha256: String,
}

/// An archive besides the main one (`additional_archives`): e.g. a volume split into
/// parallel streams. Entries name theirs with `archive` (0, the default, is the main one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdditionalArchive {
    /// 1, 2, …: what an entry's `archive` refers to.
    pub index: u32,
    pub compression: Compression,
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
}

/// A file captured from a mesh proxy (`proxy_state`), stored as its own object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyStateFile {
    pub pod: String,
    pub container: String,
    pub kind: ProxyStateKind,
    /// The stored object, next to the manifest.
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyStateKind {
    /// Envoy's `/config_dump` (Istio, Consul, Kuma, OSM).
    EnvoyConfigDump,
    /// The proxy's workload certificate chain (no private key).
    CertificateChain,
    /// linkerd2-proxy's identity and policy state.
    LinkerdProxyState,
}

/// Per-entry facts that only some entries have. In the stored entries stream they are fields
/// of the entry's own line; in memory they are kept beside
/// [`Manifest::entries`](super::Manifest::entries) (whose element type stays
/// [`EntryRecord`](crate::archive::EntryRecord)), one note per entry that has any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryNote {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// The file changed while it was read (live backups): its content may be torn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_while_read: bool,
    /// The content is in the parent backup's archive, not this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_parent: bool,
    /// Which archive holds the content: 0 the main one, else an
    /// [`AdditionalArchive::index`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub archive: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl EntryNote {
    /// Whether the note says anything (an empty one is not stored).
    pub fn is_empty(&self) -> bool {
        !self.changed_while_read && !self.in_parent && self.archive == 0
    }
}

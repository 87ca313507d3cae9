//! The backup manifest: a JSON document written next to every archive.
//!
//! # Shape (schema version 1)
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "kind": "PVBackupManifest",
//!   "backup_id": "data-web-0-20250101T120000Z",
//!   "tool_version": "0.1.0",
//!   "created": "2025-01-01T12:00:00Z",
//!   "cluster": { "server": "https://10.0.0.1:6443", "context": "prod" },
//!   "namespace": "shop",
//!   "pvc": { "name": "data-web-0", "uid": "…", "capacity": "10Gi",
//!            "access_modes": ["ReadWriteOnce"], "storage_class": "standard",
//!            "volume_mode": "Filesystem", "labels": { "app": "web" } },
//!   "source_pods": [ { "name": "web-0", "node": "n1", "mesh": "istio",
//!                      "proxy_container": "istio-proxy", "proxy_version": "1.22.0" } ],
//!   "helper_image": "busybox:1.36",
//!   "compression": { "algorithm": "zstd", "level": 1 },
//!   "archive": { "file_name": "data-web-0.tar.zst", "size": 1234, "sha256": "…64 hex…" },
//!   "uncompressed_size": 10240,
//!   "entry_count": 2,
//!   "entries": [
//!     { "path": ".", "kind": "dir", "size": 0, "mode": 493, "uid": 0, "gid": 0, "mtime": 1735732800 },
//!     { "path": "a b/ünï\ncode", "kind": "file", "size": 5, "mode": 384, "uid": 1000,
//!       "gid": 1000, "mtime": 1735732800, "sha256": "…64 hex…" }
//!   ]
//! }
//! ```
//!
//! Entry names that are not valid UTF-8 carry an extra `path_hex` (and
//! `link_target_hex`) with the exact bytes; see
//! [`EntryRecord`](crate::archive::EntryRecord). `mode` is a decimal JSON
//! number (493 = 0o755). Unknown fields are rejected everywhere so a typo in
//! a hand-edited manifest is an error instead of being silently ignored.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::{
    check_entries_safe, ArchiveSummary, Compression, EntryKind, EntryRecord, UnsafeEntry,
};

/// The only schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Value of the `kind` field.
pub const MANIFEST_KIND: &str = "PVBackupManifest";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
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
        "the manifest is not valid JSON for schema version {SCHEMA_VERSION}: {source}. \
         Fix the field named here (hand edits often introduce typos) or restore the \
         manifest written by the backup"
    )]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "manifest schema_version {found} is not supported (this build reads version \
         {SCHEMA_VERSION}); use the kubectl-pvbackup version that wrote the backup"
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
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
        }
    }

    /// Parse and [`validate`](Manifest::validate).
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        // Look at schema_version/kind first so a future manifest gets the
        // "unsupported version" message rather than an unknown-field error.
        #[derive(Deserialize)]
        struct Probe {
            schema_version: Option<u32>,
            kind: Option<String>,
        }
        if let Ok(p) = serde_json::from_slice::<Probe>(bytes) {
            if let Some(kind) = p.kind.filter(|k| k != MANIFEST_KIND) {
                return Err(ManifestError::WrongKind { found: kind });
            }
            if let Some(found) = p.schema_version.filter(|v| *v != SCHEMA_VERSION) {
                return Err(ManifestError::UnsupportedSchema { found });
            }
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Json { source })?;
        m.validate()?;
        Ok(m)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json_pretty(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }

    /// Check the invariants `from_json` relies on: schema version and kind,
    /// `entry_count`, sha256 syntax, file/sha and link/target consistency,
    /// hex names, no duplicate paths, and restore safety of every entry.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ManifestError::UnsupportedSchema {
                found: self.schema_version,
            });
        }
        if self.kind != MANIFEST_KIND {
            return Err(ManifestError::WrongKind {
                found: self.kind.clone(),
            });
        }
        if self.entry_count != self.entries.len() as u64 {
            return Err(ManifestError::EntryCount {
                declared: self.entry_count,
                actual: self.entries.len(),
            });
        }
        if !is_sha256_hex(&self.archive.sha256) {
            return Err(ManifestError::BadSha256 {
                field: "archive.sha256".into(),
                value: self.archive.sha256.clone(),
            });
        }
        let mut seen = HashSet::with_capacity(self.entries.len());
        for e in &self.entries {
            check_hex_name(&e.path, &e.path, e.path_hex.as_deref(), "path_hex")?;
            if let Some(t) = &e.link_target {
                check_hex_name(&e.path, t, e.link_target_hex.as_deref(), "link_target_hex")?;
            }
            match (&e.sha256, e.kind) {
                (Some(s), EntryKind::File) if !is_sha256_hex(s) => {
                    return Err(ManifestError::BadSha256 {
                        field: format!("sha256 of entry {:?}", e.path),
                        value: s.clone(),
                    })
                }
                (None, EntryKind::File) => {
                    return Err(ManifestError::MissingSha256 {
                        path: e.path.clone(),
                    })
                }
                (Some(_), kind) if kind != EntryKind::File => {
                    return Err(ManifestError::UnexpectedSha256 {
                        path: e.path.clone(),
                        kind,
                    })
                }
                _ => {}
            }
            if matches!(e.kind, EntryKind::Symlink | EntryKind::Hardlink) && e.link_target.is_none()
            {
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
            if !seen.insert(crate::archive::canonical_key(&e.raw_path())) {
                return Err(ManifestError::DuplicatePath {
                    path: e.path.clone(),
                });
            }
        }
        check_entries_safe(&self.entries).map_err(|source| ManifestError::Unsafe { source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::EntryRecord;

    fn entry(path: &str, kind: EntryKind, sha: Option<&str>) -> EntryRecord {
        EntryRecord {
            path: path.into(),
            path_hex: None,
            kind,
            size: if sha.is_some() { 5 } else { 0 },
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime: 1_735_732_800,
            link_target: None,
            link_target_hex: None,
            sha256: sha.map(str::to_string),
        }
    }

    const SHA: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn sample() -> Manifest {
        let mut link = entry("a b/link", EntryKind::Symlink, None);
        link.link_target = Some("../ünï\ncode".into());
        let mut bad = entry("bad-\u{fffd}", EntryKind::File, Some(SHA));
        bad.path_hex = Some(hex::encode(b"bad-\xff"));
        Manifest {
            schema_version: SCHEMA_VERSION,
            kind: MANIFEST_KIND.into(),
            backup_id: "data-web-0-20250101T120000Z".into(),
            tool_version: "0.1.0".into(),
            created: DateTime::parse_from_rfc3339("2025-01-01T12:00:00Z")
                .unwrap()
                .into(),
            cluster: ClusterInfo {
                server: "https://10.0.0.1:6443".into(),
                context: Some("prod".into()),
            },
            namespace: "shop".into(),
            pvc: PvcInfo {
                name: "data-web-0".into(),
                uid: "6f1c".into(),
                capacity: Some("10Gi".into()),
                access_modes: vec!["ReadWriteOnce".into()],
                storage_class: Some("standard".into()),
                volume_mode: Some("Filesystem".into()),
                labels: [("app".to_string(), "web".to_string())].into(),
            },
            source_pods: vec![SourcePod {
                name: "web-0".into(),
                node: Some("n1".into()),
                mesh: Some("istio".into()),
                proxy_container: Some("istio-proxy".into()),
                proxy_version: Some("1.22.0".into()),
            }],
            helper_image: "busybox:1.36".into(),
            compression: Compression::Zstd { level: 1 },
            archive: ArchiveInfo {
                file_name: "data-web-0.tar.zst".into(),
                size: 1234,
                sha256: SHA.into(),
            },
            uncompressed_size: 10240,
            entry_count: 5,
            entries: vec![
                entry(".", EntryKind::Dir, None),
                entry("a b", EntryKind::Dir, None),
                entry("ünï\ncode", EntryKind::File, Some(SHA)),
                link,
                bad,
            ],
        }
    }

    fn json_value(m: &Manifest) -> serde_json::Value {
        serde_json::from_str(&m.to_json_pretty()).unwrap()
    }

    fn load(v: &serde_json::Value) -> Result<Manifest, ManifestError> {
        Manifest::from_json(serde_json::to_string(v).unwrap().as_bytes())
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let json = m.to_json_pretty();
        assert!(json.contains("\"kind\": \"PVBackupManifest\""), "{json}");
        assert!(
            json.contains("\"created\": \"2025-01-01T12:00:00Z\""),
            "{json}"
        );
        assert!(json.contains("\"algorithm\": \"zstd\""), "{json}");
        assert!(json.contains("ünï\\ncode"), "{json}");
        assert_eq!(Manifest::from_json(json.as_bytes()).unwrap(), m);
    }

    #[test]
    fn rejects_bad_sha() {
        let mut v = json_value(&sample());
        v["archive"]["sha256"] = SHA.to_uppercase().into();
        let msg = load(&v).unwrap_err().to_string();
        assert!(
            msg.contains("archive.sha256") && msg.contains("64 lowercase hex"),
            "{msg}"
        );

        let mut v = json_value(&sample());
        v["entries"][2]["sha256"] = "abc".into();
        let msg = load(&v).unwrap_err().to_string();
        assert!(
            msg.contains("\"ünï\\ncode\"") && msg.contains("\"abc\""),
            "{msg}"
        );

        let mut v = json_value(&sample());
        v["entries"][2].as_object_mut().unwrap().remove("sha256");
        assert!(matches!(load(&v), Err(ManifestError::MissingSha256 { .. })));

        let mut v = json_value(&sample());
        v["entries"][1]["sha256"] = SHA.into();
        assert!(matches!(
            load(&v),
            Err(ManifestError::UnexpectedSha256 { .. })
        ));
    }

    #[test]
    fn rejects_duplicate_paths() {
        let mut m = sample();
        m.entries.push(entry("a b/", EntryKind::Dir, None));
        m.entry_count += 1;
        let err = Manifest::from_json(m.to_json_pretty().as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::DuplicatePath { .. }), "{err}");
        assert!(err.to_string().contains("\"a b/\""), "{err}");
        assert!(err.to_string().contains("remove the duplicate"), "{err}");
    }

    #[test]
    fn rejects_unknown_fields() {
        let mut v = json_value(&sample());
        let entries = v.as_object_mut().unwrap().remove("entries").unwrap();
        v["entires"] = entries;
        let msg = load(&v).unwrap_err().to_string();
        assert!(msg.contains("unknown field `entires`"), "{msg}");
        assert!(msg.contains("typo"), "{msg}");

        let mut v = json_value(&sample());
        v["entries"][0]["sha265"] = SHA.into();
        let msg = load(&v).unwrap_err().to_string();
        assert!(msg.contains("unknown field `sha265`"), "{msg}");

        let mut v = json_value(&sample());
        v["pvc"]["storageClass"] = "x".into();
        assert!(load(&v).is_err());
    }

    #[test]
    fn rejects_other_invariant_violations() {
        let mut v = json_value(&sample());
        v["entry_count"] = 4.into();
        let msg = load(&v).unwrap_err().to_string();
        assert!(
            msg.contains("entry_count is 4") && msg.contains("5 entries"),
            "{msg}"
        );

        let mut v = json_value(&sample());
        v["schema_version"] = 2.into();
        v["new_field"] = true.into();
        assert!(matches!(
            load(&v),
            Err(ManifestError::UnsupportedSchema { found: 2 })
        ));

        let mut v = json_value(&sample());
        v["kind"] = "Other".into();
        assert!(matches!(load(&v), Err(ManifestError::WrongKind { .. })));

        let mut v = json_value(&sample());
        v["entries"][4]["path_hex"] = "zz".into();
        assert!(matches!(load(&v), Err(ManifestError::BadHexName { .. })));

        let mut v = json_value(&sample());
        v["entries"][0]["mode"] = (0o100755).into();
        assert!(matches!(load(&v), Err(ManifestError::BadMode { .. })));

        let mut v = json_value(&sample());
        v["created"] = "yesterday".into();
        assert!(matches!(load(&v), Err(ManifestError::Json { .. })));
    }

    #[test]
    fn rejects_unsafe_entries() {
        for (path, kind, target) in [
            ("../evil", EntryKind::Dir, None),
            ("/etc/passwd", EntryKind::Fifo, None),
            ("a/x", EntryKind::Symlink, Some("../../x")),
            ("dev", EntryKind::Block, None),
        ] {
            let mut m = sample();
            let mut e = entry(path, kind, None);
            e.link_target = target.map(str::to_string);
            m.entries.push(e);
            m.entry_count += 1;
            let err = Manifest::from_json(m.to_json_pretty().as_bytes()).unwrap_err();
            assert!(matches!(err, ManifestError::Unsafe { .. }), "{err}");
            assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
        }
    }
}

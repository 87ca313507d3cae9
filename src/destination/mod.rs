//! Where backups are stored: a local directory or an object store (S3 and compatibles, Azure
//! Blob, GCS), behind one trait, so the backup and restore paths do not know which.
//!
//! Layout, the same for every destination:
//! `<root>/<backup-id>/<namespace>/<pvc>.tar[.gz|.zst]` and `<pvc>.manifest.json` beside it.
//! The manifest is the commit marker: an archive without one is an incomplete leftover.

use std::io::{Read, Write};
use std::path::PathBuf;

pub mod cleanup;
pub mod local;
pub mod object;

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("destination {url:?} is not a valid location: {why}. Use a local directory such as ./backups, file:///var/backups, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix")]
    BadUrl { url: String, why: String },
    #[error("destination {url:?} uses {scheme}://, which is not supported. Use a local directory, file://, s3://, az:// (azure://) or gs://")]
    Unsupported { url: String, scheme: String },
    /// Settings or credentials missing or inconsistent, found before any request.
    #[error("{0}")]
    Config(String),
    /// The object store failed or refused a request (already worded for the user).
    #[error("{message}")]
    Store { message: String, permanent: bool },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} not found at {path}")]
    NotFound { what: String, path: String },
}

/// An object being written; nothing is visible under its final name until `commit`.
pub trait ObjectWriter: Write + Send {
    /// Make the object durable and visible under its final name.
    fn commit(self: Box<Self>) -> Result<(), DestinationError>;
}

pub trait Destination: Send + Sync {
    /// How to show the destination to a user.
    fn describe(&self) -> String;
    /// Start writing `key` (a `/`-separated relative path).
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, DestinationError>;
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, DestinationError>;
    /// Every key under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, DestinationError>;
    /// A user-facing location for `key` (a path or URL).
    fn locate(&self, key: &str) -> String;
    /// Removes every object still being written (after an interrupt, when writers may be
    /// blocked on a stream that will never finish).
    fn abort_incomplete(&self);
    /// Checks, before any work starts, that the destination is reachable with the configured
    /// credentials (object stores: one list request).
    fn check(&self) -> Result<(), DestinationError> {
        Ok(())
    }
    /// Every committed object, with its size and last modification (for `cleanup --to`).
    fn list_stored(&self) -> Result<Vec<StoredObject>, DestinationError>;
    /// Writes this tool started and never committed (partial files, open multipart uploads),
    /// or why the store cannot list them.
    fn list_unfinished(&self) -> Result<Unfinished, DestinationError>;
    /// Deletes a committed object.
    fn remove(&self, key: &str) -> Result<(), DestinationError>;
    /// Removes a partial file or aborts an open multipart upload.
    fn discard(&self, write: &UnfinishedWrite) -> Result<(), DestinationError>;
}

/// A committed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// A write that was started and never committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedWrite {
    /// The key the write was meant to create.
    pub key: String,
    /// What names the write itself: the partial file's key, or the multipart upload id.
    pub handle: String,
    /// A local partial file's last write, or when a multipart upload was started (S3 reports
    /// nothing later without a request per upload).
    pub since: chrono::DateTime<chrono::Utc>,
    /// Bytes written so far, when the store says.
    pub size: Option<u64>,
}

/// What a destination can say about unfinished writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfinished {
    /// A directory's partial files.
    PartialFiles(Vec<UnfinishedWrite>),
    /// A bucket's open multipart uploads.
    Uploads(Vec<UnfinishedWrite>),
    /// The store offers no way to list or discard them; `why` says what happens to them.
    NotListable { why: String },
}

/// Settings for object-storage destinations, from flags (the environment is read directly).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// `--endpoint`: an S3-compatible (MinIO, Ceph RGW), Azure or GCS endpoint URL.
    pub endpoint: Option<String>,
    /// `--part-size`, bytes (default 8 MiB).
    pub part_size: Option<u64>,
}

/// Parses a destination argument: a path, `file://`, `s3://`, `az://`/`azure://` or `gs://` URL.
pub fn parse(url: &str) -> Result<Box<dyn Destination>, DestinationError> {
    parse_with(url, &StoreOptions::default())
}

/// [`parse`] with object-storage settings.
pub fn parse_with(
    url: &str,
    opts: &StoreOptions,
) -> Result<Box<dyn Destination>, DestinationError> {
    if url.trim().is_empty() {
        return Err(DestinationError::BadUrl {
            url: url.into(),
            why: "it is empty".into(),
        });
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(DestinationError::BadUrl {
                url: url.into(),
                why: "a file:// URL needs an absolute path (file:///path)".into(),
            });
        }
        return Ok(Box::new(local::LocalDir::new(PathBuf::from(rest))));
    }
    if let Some(parsed) = object::url::parse(url) {
        let parsed = parsed.map_err(|e| DestinationError::BadUrl {
            url: url.into(),
            why: e.to_string(),
        })?;
        return Ok(Box::new(object::open(parsed, opts)?));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(DestinationError::Unsupported {
            url: url.into(),
            scheme: scheme.into(),
        });
    }
    Ok(Box::new(local::LocalDir::new(PathBuf::from(url))))
}

/// Keys of one backup's files.
pub fn archive_key(backup_id: &str, namespace: &str, pvc: &str, extension: &str) -> String {
    format!("{backup_id}/{namespace}/{pvc}{extension}")
}

pub fn manifest_key(backup_id: &str, namespace: &str, pvc: &str) -> String {
    format!("{backup_id}/{namespace}/{pvc}.manifest.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_refuses_unknown_schemes() {
        assert!(parse("./backups").is_ok());
        assert!(parse("file:///tmp/b").is_ok());
        assert!(matches!(
            parse("file://relative").err(),
            Some(DestinationError::BadUrl { .. })
        ));
        assert!(matches!(
            parse("ftp://x/y").err(),
            Some(DestinationError::Unsupported { .. })
        ));
        assert!(matches!(
            parse("").err(),
            Some(DestinationError::BadUrl { .. })
        ));
    }
}

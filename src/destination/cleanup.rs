//! `cleanup --to DEST`: what interrupted backups left at a destination, and removing it.
//!
//! A `create` that is killed (SIGKILL, OOM, a lost machine) cannot run its own cleanup, and
//! leaves, depending on when it died:
//! - a partial file `.<name>.partial-<hex>` in a directory (the write before the rename);
//! - an open multipart upload in an S3 bucket (invisible to listings, its parts still stored);
//!   Azure's uncommitted blocks and GCS's uploads are not listable here (see `object::uploads`);
//! - an archive without a manifest, when it died between the two (`list` shows it INCOMPLETE).
//!
//! Only what this tool writes is considered: partial files of its own naming, and keys of the
//! backup layout (`<backup-id>/<namespace>/<file>`, a backup id as `create` makes them, a file
//! name `list` recognises). Whether a backup is complete is decided by `list`'s own grouping
//! ([`group_keys`]): a backup with a manifest is never touched, whatever its age.
//!
//! Age: a leftover is removed only once it has been untouched for `--older-than` (default
//! [`DEFAULT_OLDER_THAN`]), so that a backup running right now, from this machine or another,
//! keeps its files. A partial file's age is the time since its last write (every write moves
//! its mtime), an archive's since it was stored; an S3 upload's since it was *started*, the only
//! time ListMultipartUploads reports, which is why the default is a day and not an hour: an
//! archive of a few TiB through one stream can take that long.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Destination, DestinationError, StoredObject, Unfinished, UnfinishedWrite};
use crate::cmd::list::group_keys;

/// The default of `--older-than`: longer than any one backup runs, so that nothing a running
/// `create` still writes is removed (see the module docs).
pub const DEFAULT_OLDER_THAN: &str = "24h";

/// What a leftover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Leftover {
    /// A local partial file.
    PartialFile,
    /// An open multipart upload.
    MultipartUpload,
    /// An archive whose manifest was never written.
    ArchiveWithoutManifest,
    /// A schema-2 entries stream (`<pvc>.entries.jsonl[.gz|.zst]`) whose header was never
    /// written: `create` died between the two, the last steps of a commit.
    EntriesWithoutManifest,
    /// An encrypted backup's details (`<pvc>.details.json.age`) whose header was never written:
    /// `create` writes them just before the header.
    DetailsWithoutManifest,
}

impl Leftover {
    /// The KIND column of `cleanup --to` and `prune`.
    pub fn label(self) -> &'static str {
        match self {
            Leftover::PartialFile => "partial file",
            Leftover::MultipartUpload => "multipart upload",
            Leftover::ArchiveWithoutManifest => "archive without manifest",
            Leftover::EntriesWithoutManifest => "entries without manifest",
            Leftover::DetailsWithoutManifest => "details without manifest",
        }
    }
}

/// What happened to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Removed,
    WouldRemove,
    /// Younger than `--older-than`: maybe still being written.
    Kept,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub kind: Leftover,
    /// The key the leftover belongs to (`<backup-id>/<namespace>/<file>`).
    pub key: String,
    /// Where it is, for a user: the partial file's path, the object's URL.
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Last write (partial file), stored (archive) or started (upload).
    pub since: DateTime<Utc>,
    pub age_seconds: u64,
    pub size: Option<u64>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Write(UnfinishedWrite),
    Object(String),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub destination: String,
    pub older_than: String,
    pub older_than_seconds: u64,
    pub dry_run: bool,
    pub items: Vec<Item>,
    /// What could not be looked at, and why (e.g. Azure's uncommitted blocks).
    pub notes: Vec<String>,
}

impl Report {
    /// Leftovers old enough to remove (removed, to remove, or failed).
    pub fn stale(&self) -> usize {
        self.items
            .iter()
            .filter(|i| i.outcome != Outcome::Kept)
            .count()
    }

    pub fn failed(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.outcome == Outcome::Failed)
    }
}

/// Whether `id` has the form of the backup ids `create` makes (`20261122T101500Z-3f2a`, see
/// `cmd::create::new_backup_id`).
pub fn is_backup_id(id: &str) -> bool {
    let Some((stamp, suffix)) = id.split_once('-') else {
        return false;
    };
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").is_ok()
        && stamp.len() == 16
        && suffix.len() == 4
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `key` is a file of the backup layout (`<backup-id>/<namespace>/<archive or
/// manifest>`), as `list` reads it.
fn in_layout(key: &str) -> bool {
    key.split('/').next().is_some_and(is_backup_id) && !group_keys(&[key.to_string()]).is_empty()
}

/// `--older-than` as a person writes it: `24h`, `7d`, `90m` (humantime's own rendering says
/// `1day`).
fn flag_duration(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if d.subsec_nanos() != 0 || s == 0 => humantime::format_duration(d).to_string(),
        s if s % 86400 == 0 && s >= 2 * 86400 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn age(now: DateTime<Utc>, since: DateTime<Utc>) -> u64 {
    // A clock behind the store's gives a negative age: that is "just now".
    (now - since).num_seconds().max(0) as u64
}

/// Decides, without touching anything, which leftovers are stale (pure; unit-tested).
pub fn select(
    stored: &[StoredObject],
    unfinished: &[UnfinishedWrite],
    unfinished_kind: Leftover,
    now: DateTime<Utc>,
    older_than: std::time::Duration,
    locate: &dyn Fn(&str) -> String,
) -> Vec<Item> {
    let decide = |since| {
        if age(now, since) >= older_than.as_secs() {
            Outcome::WouldRemove
        } else {
            Outcome::Kept
        }
    };
    let mut items: Vec<Item> = unfinished
        .iter()
        .filter(|w| in_layout(&w.key))
        .map(|w| {
            let upload = unfinished_kind == Leftover::MultipartUpload;
            Item {
                kind: unfinished_kind,
                key: w.key.clone(),
                location: locate(if upload { &w.key } else { &w.handle }),
                upload_id: upload.then(|| w.handle.clone()),
                since: w.since,
                age_seconds: age(now, w.since),
                size: w.size,
                outcome: decide(w.since),
                error: None,
                target: Target::Write(w.clone()),
            }
        })
        .collect();
    let keys: Vec<String> = stored.iter().map(|o| o.key.clone()).collect();
    for ((id, _, _), (manifest, archive)) in group_keys(&keys) {
        let (None, Some(archive)) = (manifest, archive) else {
            continue;
        };
        if !is_backup_id(&id) {
            continue;
        }
        let Some(obj) = stored.iter().find(|o| o.key == archive) else {
            continue;
        };
        items.push(Item {
            kind: Leftover::ArchiveWithoutManifest,
            key: obj.key.clone(),
            location: locate(&obj.key),
            upload_id: None,
            since: obj.modified,
            age_seconds: age(now, obj.modified),
            size: Some(obj.size),
            outcome: decide(obj.modified),
            error: None,
            target: Target::Object(obj.key.clone()),
        });
    }
    // `group_keys` (what `list` reads) knows archives and headers only; an entries stream and
    // an encrypted backup's details belong to the backup whose header has the same stem.
    let parts = [
        (
            crate::manifest::ENTRIES_SUFFIX,
            Leftover::EntriesWithoutManifest,
        ),
        (
            crate::encryption::DETAILS_SUFFIX,
            Leftover::DetailsWithoutManifest,
        ),
    ];
    for obj in stored {
        let Some((stem, kind)) = parts
            .iter()
            .find_map(|(suffix, kind)| obj.key.split_once(suffix).map(|(stem, _)| (stem, *kind)))
        else {
            continue;
        };
        let id = stem.split('/').next().unwrap_or_default();
        if stem.split('/').count() != 3 || !is_backup_id(id) {
            continue;
        }
        let header = format!("{stem}{}", crate::manifest::MANIFEST_SUFFIX);
        if stored.iter().any(|o| o.key == header) {
            continue;
        }
        items.push(Item {
            kind,
            key: obj.key.clone(),
            location: locate(&obj.key),
            upload_id: None,
            since: obj.modified,
            age_seconds: age(now, obj.modified),
            size: Some(obj.size),
            outcome: decide(obj.modified),
            error: None,
            target: Target::Object(obj.key.clone()),
        });
    }
    items
}

/// Looks at `dest` and decides what is stale; changes nothing.
pub fn find(
    dest: &dyn Destination,
    older_than: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Report, DestinationError> {
    let stored = dest.list_stored()?;
    let mut notes = Vec::new();
    let (unfinished, kind) = match dest.list_unfinished()? {
        Unfinished::PartialFiles(w) => (w, Leftover::PartialFile),
        Unfinished::Uploads(w) => (w, Leftover::MultipartUpload),
        Unfinished::NotListable { why } => {
            notes.push(why);
            (Vec::new(), Leftover::MultipartUpload)
        }
    };
    let items = select(&stored, &unfinished, kind, now, older_than, &|k| {
        dest.locate(k)
    });
    Ok(Report {
        destination: dest.describe(),
        older_than: flag_duration(older_than),
        older_than_seconds: older_than.as_secs(),
        dry_run: true,
        items,
        notes,
    })
}

/// Removes every stale leftover of `report` (unfinished writes first, then archives and entries
/// streams without a header); a failure is recorded on its item and the others go on.
pub fn apply(dest: &dyn Destination, mut report: Report) -> Report {
    report.dry_run = false;
    report
        .items
        .sort_by_key(|i| i.kind != Leftover::PartialFile && i.kind != Leftover::MultipartUpload);
    for item in report
        .items
        .iter_mut()
        .filter(|i| i.outcome == Outcome::WouldRemove)
    {
        let done = match &item.target {
            Target::Write(w) => dest.discard(w),
            Target::Object(key) => dest.remove(key),
        };
        match done {
            Ok(()) => item.outcome = Outcome::Removed,
            Err(e) => {
                item.outcome = Outcome::Failed;
                item.error = Some(e.to_string());
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ID: &str = "20261122T101500Z-3f2a";

    fn at(hours_ago: i64) -> DateTime<Utc> {
        now() - chrono::Duration::hours(hours_ago)
    }

    fn now() -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    fn obj(key: &str, hours_ago: i64) -> StoredObject {
        StoredObject {
            key: key.into(),
            size: 10,
            modified: at(hours_ago),
        }
    }

    fn write(key: &str, handle: &str, hours_ago: i64) -> UnfinishedWrite {
        UnfinishedWrite {
            key: key.into(),
            handle: handle.into(),
            since: at(hours_ago),
            size: Some(3),
        }
    }

    fn decided(items: &[Item]) -> Vec<(&str, Leftover, Outcome)> {
        items
            .iter()
            .map(|i| (i.key.as_str(), i.kind, i.outcome))
            .collect()
    }

    #[test]
    fn older_than_reads_as_typed() {
        let d = |s| flag_duration(humantime::parse_duration(s).unwrap());
        assert_eq!(d("24h"), "24h");
        assert_eq!(d("7d"), "7d");
        assert_eq!(d("90m"), "90m");
        assert_eq!(d("1h 30s"), "3630s");
        assert_eq!(d("1s"), "1s");
    }

    #[test]
    fn backup_ids_are_the_ones_create_makes() {
        assert!(is_backup_id(ID));
        assert!(is_backup_id(&crate::cmd::create::new_backup_id()));
        for other in [
            "nightly",
            "20261122T101500Z",
            "20261122T101500Z-3F2A",
            "20261122T101500Z-3f2a9",
            "20261322T101500Z-3f2a",
            "x0261122T101500Z-3f2a",
        ] {
            assert!(!is_backup_id(other), "{other}");
        }
    }

    #[test]
    fn only_stale_leftovers_of_our_layout_go_and_complete_backups_never() {
        let stored = [
            // Complete and ancient: never a candidate.
            obj(&format!("{ID}/shop/db.tar.zst"), 900),
            obj(&format!("{ID}/shop/db.entries.jsonl.zst"), 900),
            obj(&format!("{ID}/shop/db.manifest.json"), 900),
            // An archive whose manifest never came: stale, and a fresh one.
            obj(&format!("{ID}/shop/cache.tar.zst"), 30),
            obj("20261130T230000Z-0001/shop/cache.tar.zst", 0),
            obj(&format!("{ID}/shop/cache.entries.jsonl.zst"), 30),
            obj(&format!("{ID}/shop/cache.details.json.age"), 30),
            // An encrypted backup that is complete: its details stay.
            obj(&format!("{ID}/shop/web.tar.zst.age"), 900),
            obj(&format!("{ID}/shop/web.details.json.age"), 900),
            obj(&format!("{ID}/shop/web.manifest.json"), 900),
            // Not of our layout: someone else's files.
            obj("notes/shop/cache.tar.zst", 900),
            obj(&format!("{ID}/shop/readme.txt"), 900),
        ];
        let unfinished = [
            write(
                &format!("{ID}/shop/db.tar.zst"),
                &format!("{ID}/shop/.db.tar.zst.partial-0a1b2c3d"),
                25,
            ),
            write(
                "20261130T230000Z-0001/shop/x.tar.zst",
                "20261130T230000Z-0001/shop/.x.tar.zst.partial-0a1b2c3d",
                1,
            ),
            write(
                "elsewhere/x.tar.zst",
                "elsewhere/.x.tar.zst.partial-0a1b2c3d",
                900,
            ),
        ];
        let items = select(
            &stored,
            &unfinished,
            Leftover::PartialFile,
            now(),
            Duration::from_secs(24 * 3600),
            &|k| format!("/b/{k}"),
        );
        assert_eq!(
            decided(&items),
            [
                (
                    format!("{ID}/shop/db.tar.zst").as_str(),
                    Leftover::PartialFile,
                    Outcome::WouldRemove
                ),
                (
                    "20261130T230000Z-0001/shop/x.tar.zst",
                    Leftover::PartialFile,
                    Outcome::Kept
                ),
                (
                    format!("{ID}/shop/cache.tar.zst").as_str(),
                    Leftover::ArchiveWithoutManifest,
                    Outcome::WouldRemove
                ),
                (
                    "20261130T230000Z-0001/shop/cache.tar.zst",
                    Leftover::ArchiveWithoutManifest,
                    Outcome::Kept
                ),
                (
                    format!("{ID}/shop/cache.entries.jsonl.zst").as_str(),
                    Leftover::EntriesWithoutManifest,
                    Outcome::WouldRemove
                ),
                (
                    format!("{ID}/shop/cache.details.json.age").as_str(),
                    Leftover::DetailsWithoutManifest,
                    Outcome::WouldRemove
                ),
            ]
        );
        assert_eq!(
            items[0].location,
            format!("/b/{ID}/shop/.db.tar.zst.partial-0a1b2c3d")
        );
        assert_eq!(items[0].age_seconds, 25 * 3600);
    }

    #[test]
    fn uploads_are_located_by_their_key_and_carry_their_id() {
        let up = UnfinishedWrite {
            key: format!("{ID}/shop/db.tar.zst"),
            handle: "upload-1".into(),
            since: at(48),
            size: None,
        };
        let items = select(
            &[],
            &[up],
            Leftover::MultipartUpload,
            now(),
            Duration::from_secs(3600),
            &|k| format!("s3://b/{k}"),
        );
        assert_eq!(items[0].location, format!("s3://b/{ID}/shop/db.tar.zst"));
        assert_eq!(items[0].upload_id.as_deref(), Some("upload-1"));
        assert_eq!(items[0].outcome, Outcome::WouldRemove);
        // A store clock ahead of ours: age 0, kept.
        let ahead = UnfinishedWrite {
            since: now() + chrono::Duration::minutes(5),
            ..items[0].target_write().clone()
        };
        let items = select(
            &[],
            &[ahead],
            Leftover::MultipartUpload,
            now(),
            Duration::from_secs(60),
            &|k| k.to_string(),
        );
        assert_eq!((items[0].age_seconds, items[0].outcome), (0, Outcome::Kept));
    }

    impl Item {
        fn target_write(&self) -> &UnfinishedWrite {
            match &self.target {
                Target::Write(w) => w,
                Target::Object(_) => panic!("not a write"),
            }
        }
    }
}

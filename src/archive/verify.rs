//! Streaming verification of a stored archive against its manifest.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::pipeline::{unpacked_walk, Unpacked};
use super::safety::canonical_key;
use super::{
    check_entries_safe, check_entry_safe, spool_entry, walk, ArchiveError, ArchiveOrder,
    Compression, EntryKind, EntryRecord, LinkRef, SortedProblem, SortedRules, Spool,
};
use crate::manifest::Manifest;

/// One discrepancy found by [`verify_archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The stored bytes do not hash to `manifest.archive.sha256`.
    ArchiveSha256 { expected: String, actual: String },
    /// The stored byte count differs from `manifest.archive.size`.
    ArchiveSize { expected: u64, actual: u64 },
    /// An entry exists in both but a field differs. `field` is the
    /// manifest field name (`kind`, `size`, `mode`, `uid`, `gid`, `mtime`,
    /// `link_target`, `sha256`).
    Mismatch {
        path: String,
        field: &'static str,
        expected: String,
        actual: String,
    },
    /// In the manifest but not in the archive (only reported when the
    /// archive could be read to the end).
    Missing { path: String },
    /// In the archive but not in the manifest (or present twice).
    Unexpected { path: String },
    /// The decompressed tar stream ends early.
    Truncated { detail: String },
    /// The gzip/zstd stream is corrupt.
    Decompression { detail: String },
    /// The tar stream is malformed (bad header checksum, unsupported type).
    Corrupt { detail: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ArchiveSha256 { expected, actual } => write!(
                f,
                "archive sha256 is {actual}, manifest says {expected}: the file was modified \
                 or damaged"
            ),
            Problem::ArchiveSize { expected, actual } => write!(
                f,
                "archive is {actual} bytes, manifest says {expected}: the file was truncated \
                 or modified"
            ),
            Problem::Mismatch {
                path,
                field,
                expected,
                actual,
            } => write!(f, "{path:?}: {field} is {actual}, manifest says {expected}"),
            Problem::Missing { path } => {
                write!(f, "{path:?}: in the manifest but not in the archive")
            }
            Problem::Unexpected { path } => {
                write!(f, "{path:?}: in the archive but not in the manifest")
            }
            Problem::Truncated { detail } => write!(f, "the archive is truncated: {detail}"),
            Problem::Decompression { detail } => {
                write!(f, "decompression failed, the archive is corrupt: {detail}")
            }
            Problem::Corrupt { detail } => write!(f, "the tar stream is corrupt: {detail}"),
        }
    }
}

/// Outcome of [`verify_archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// sha256 of the stored bytes as read.
    pub archive_sha256: String,
    /// Stored bytes read.
    pub stored_bytes: u64,
    /// Archive entries read and compared.
    pub entries_checked: u64,
    /// Regular files whose content was hashed.
    pub files_hashed: u64,
    /// Whether the tar stream was read through its end-of-archive marker.
    pub complete: bool,
    /// Everything that did not match; empty when the archive is intact.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.complete
    }
}

/// Reader that hashes and counts what passes and keeps the first error so
/// a real I/O failure is not mistaken for corruption.
pub(crate) struct HashingReader<R> {
    pub(crate) inner: R,
    pub(crate) hasher: Sha256,
    pub(crate) count: u64,
    pub(crate) error: Option<io::Error>,
}

impl<R: Read> Read for HashingReader<R> {
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

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "none".into())
}

pub(crate) fn compare(m: &EntryRecord, a: &EntryRecord, problems: &mut Vec<Problem>) {
    let mut diff = |field: &'static str, expected: String, actual: String| {
        if expected != actual {
            problems.push(Problem::Mismatch {
                path: a.path.clone(),
                field,
                expected,
                actual,
            });
        }
    };
    diff("kind", m.kind.to_string(), a.kind.to_string());
    diff("size", m.size.to_string(), a.size.to_string());
    diff("mode", format!("{:04o}", m.mode), format!("{:04o}", a.mode));
    diff("uid", m.uid.to_string(), a.uid.to_string());
    diff("gid", m.gid.to_string(), a.gid.to_string());
    if m.kind == EntryKind::File && a.kind == EntryKind::File {
        diff("mtime", m.mtime.to_string(), a.mtime.to_string());
    }
    // As bytes (escaped), so that targets differing only in invalid UTF-8 never look equal.
    let target = |e: &EntryRecord| e.raw_link_target().map(|t| t.escape_ascii().to_string());
    diff("link_target", opt(&target(m)), opt(&target(a)));
    diff("sha256", opt(&m.sha256), opt(&a.sha256));
}

/// Verify a stored archive against its manifest in one streaming pass:
/// sha256 + size of the stored bytes, decompression, and every entry's
/// metadata and content hash.
///
/// Content problems are collected in the returned [`VerifyReport`]
/// (check [`VerifyReport::is_ok`]). `Err` is returned when `stored` cannot
/// be read (an I/O error, not corruption) and when the manifest or the
/// archive contains an entry that would be unsafe to restore.
pub fn verify_archive<R: Read + Send>(
    stored: R,
    compression: Compression,
    manifest: &Manifest,
) -> Result<VerifyReport, ArchiveError> {
    check_entries_safe(&manifest.entries)?;
    let mut expected: HashMap<Vec<u8>, (usize, bool)> =
        HashMap::with_capacity(manifest.entries.len());
    for (i, e) in manifest.entries.iter().enumerate() {
        expected.insert(canonical_key(&e.raw_path()), (i, false));
    }
    let mut problems = Vec::new();
    // Unsafe entries, including the rules that need the entries before (hard links to an
    // earlier member).
    let mut order = ArchiveOrder::default();
    let mut entries_checked = 0u64;
    let mut files_hashed = 0u64;
    let (walked, mut unpacked) = unpacked_walk(stored, compression, |src| {
        let visit = |rec: EntryRecord| {
            order.check(&rec)?;
            entries_checked += 1;
            if rec.sha256.is_some() {
                files_hashed += 1;
            }
            match expected.get_mut(canonical_key(&rec.raw_path()).as_slice()) {
                Some((i, seen)) if !*seen => {
                    *seen = true;
                    compare(&manifest.entries[*i], &rec, &mut problems);
                }
                _ => problems.push(Problem::Unexpected { path: rec.path }),
            }
            Ok(())
        };
        walk::walk(src, io::sink(), None, None, visit).map(|_| ())
    })?;
    let complete = finish_walk(&mut unpacked, walked, false, &mut problems)?;
    if complete {
        let mut missing: Vec<usize> = expected
            .values()
            .filter(|(_, seen)| !seen)
            .map(|(i, _)| *i)
            .collect();
        missing.sort_unstable();
        for i in missing {
            problems.push(Problem::Missing {
                path: manifest.entries[i].path.clone(),
            });
        }
    }
    Ok(report(
        unpacked,
        manifest,
        problems,
        complete,
        entries_checked,
        files_hashed,
    ))
}

/// After a walk ([`unpacked_walk`]): turns how it ended into problems. Returns whether the
/// tar stream was read through its end (`Err` for a read error of the stored bytes, not the
/// archive's fault).
pub(crate) fn finish_walk(
    unpacked: &mut Unpacked,
    walked: Result<(), ArchiveError>,
    stopped: bool,
    problems: &mut Vec<Problem>,
) -> Result<bool, ArchiveError> {
    if let Some(source) = unpacked.read_error.take() {
        return Err(ArchiveError::Read { source });
    }
    Ok(match walked {
        Ok(_) => true,
        Err(_) if stopped => false,
        Err(e) => {
            if let Some(detail) = unpacked.decompress_error.take() {
                problems.push(Problem::Decompression { detail });
            } else {
                match e {
                    ArchiveError::Truncated { offset, detail } => {
                        problems.push(Problem::Truncated {
                            detail: format!("{detail} (at tar byte {offset})"),
                        })
                    }
                    ArchiveError::Corrupt { offset, source } => problems.push(Problem::Corrupt {
                        detail: format!("{source} (at tar byte {offset})"),
                    }),
                    e @ ArchiveError::UnsupportedEntry { .. } => problems.push(Problem::Corrupt {
                        detail: e.to_string(),
                    }),
                    other => return Err(other),
                }
            }
            false
        }
    })
}

/// The report, archive-level findings first: they explain the rest.
pub(crate) fn report(
    unpacked: Unpacked,
    manifest: &Manifest,
    mut problems: Vec<Problem>,
    complete: bool,
    entries_checked: u64,
    files_hashed: u64,
) -> VerifyReport {
    let archive_sha256 = unpacked.sha256;
    let stored_bytes = unpacked.count;
    let mut head = Vec::new();
    if archive_sha256 != manifest.archive.sha256 {
        head.push(Problem::ArchiveSha256 {
            expected: manifest.archive.sha256.clone(),
            actual: archive_sha256.clone(),
        });
    }
    if stored_bytes != manifest.archive.size {
        head.push(Problem::ArchiveSize {
            expected: manifest.archive.size,
            actual: stored_bytes,
        });
    }
    head.append(&mut problems);
    VerifyReport {
        archive_sha256,
        stored_bytes,
        entries_checked,
        files_hashed,
        complete,
        problems: head,
    }
}

/// [`verify_archive`] at any file count, for a manifest whose entries come as a stream in
/// path order (`entries`; `manifest` gives the archive's size and sha256). The archive's
/// members are spooled in path order as they are read and hashed ([`Spool`]), then the two
/// sorted streams are compared side by side; the rules across entries are checked on the
/// members in that pass ([`SortedRules`], in archive order). Memory stays bounded whatever the
/// number of entries; problems come in path order.
pub fn verify_archive_streamed<R: Read + Send>(
    stored: R,
    compression: Compression,
    manifest: &Manifest,
    entries: &mut dyn Iterator<Item = EntryRecord>,
) -> Result<VerifyReport, ArchiveError> {
    let spool = |source| ArchiveError::Spool { source };
    let mut members: Spool<EntryRecord> = Spool::default();
    let mut links: Spool<LinkRef> = Spool::default();
    let mut entries_checked = 0u64;
    let mut files_hashed = 0u64;
    let (walked, mut unpacked) = unpacked_walk(stored, compression, |src| {
        walk::walk(src, io::sink(), None, None, |rec| {
            check_entry_safe(&rec)?;
            entries_checked += 1;
            if rec.sha256.is_some() {
                files_hashed += 1;
            }
            spool_entry(&mut members, &mut links, &rec).map_err(spool)
        })
        .map(|_| ())
    })?;
    let mut problems = Vec::new();
    let complete = finish_walk(&mut unpacked, walked, false, &mut problems)?;

    let mut rules = SortedRules::new(links.finish().map_err(spool)?, true);
    let mut members = members.finish().map_err(spool)?;
    let mut next_member = || members.next().transpose().map_err(spool);
    let mut entries = entries.map(|e| (canonical_key(&e.raw_path()), e));
    let (mut have, mut want) = (next_member()?, entries.next());
    loop {
        let order = match (&have, &want) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(m), Some((key, _))) => m.key.cmp(key),
        };
        if order != std::cmp::Ordering::Greater {
            let m = have.take().expect("a member");
            match rules.check(&m.key, m.seq, &m.item) {
                // A member listed twice is reported below, as not in the manifest.
                Ok(()) | Err(SortedProblem::Duplicate(_)) => {}
                Err(SortedProblem::Unsafe(u)) => return Err(u.into()),
                Err(SortedProblem::Io(e)) => return Err(spool(e)),
            }
            if order == std::cmp::Ordering::Equal {
                let (_, e) = want.take().expect("an entry");
                compare(&e, &m.item, &mut problems);
                want = entries.next();
            } else {
                problems.push(Problem::Unexpected { path: m.item.path });
            }
            have = next_member()?;
        } else {
            let (_, e) = want.take().expect("an entry");
            if complete {
                problems.push(Problem::Missing { path: e.path });
            }
            want = entries.next();
        }
    }
    match rules.finish() {
        Ok(()) | Err(SortedProblem::Duplicate(_)) => {}
        Err(SortedProblem::Unsafe(u)) => return Err(u.into()),
        Err(SortedProblem::Io(e)) => return Err(spool(e)),
    }
    Ok(report(
        unpacked,
        manifest,
        problems,
        complete,
        entries_checked,
        files_hashed,
    ))
}

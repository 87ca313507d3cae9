//! The archive checked against the manifest while it streams into the helper pod's `tar -x`,
//! in memory that does not grow with the number of entries: each member is looked up in the
//! manifest's [`Entries`] table by path (the archive's order is `tar -c`'s, not the
//! manifest's), and one bit per entry says which were seen.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};

use super::entries::Entries;
use crate::archive::{
    canonical_key, check_entry_safe, compare_entry, finish_walk, report, unpacked_walk, walk_gated,
    ArchiveError, EntryKind, EntryRecord, Problem, UnsafeEntry, UnsafeReason, VerifyReport,
};
use crate::manifest::Manifest;

/// Entries reported missing at most (each is a line; the restore shows the first few).
const MISSING_SHOWN: usize = 100;

/// One bit per entry of the table.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    fn set(&mut self, i: u64) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
}

/// [`crate::archive::verify_archive`] for a restore: the decompressed tar stream goes to
/// `sink` (the helper pod's `tar -x`) as it is checked, so the archive is read once. A member
/// reaches `sink` only after its header was found among `entries` (not seen before) with the
/// same type, size, mode, owner, mtime and link target, a hard link only once its target was
/// (a non-directory member before it: `tar` extracts in order), and the walk stops at the
/// first problem, so `tar` sees nothing past it. Files' content is not hashed here (the
/// helper pod hashes what it wrote). Whether the stream was whole (the stored archive's size
/// and sha256, no entry missing) is known at the end: until [`VerifyReport::is_ok`], what
/// `sink` extracted must not be trusted.
///
/// `members` is told of every admitted member in archive order, before any of its bytes reach
/// `sink` (the in-pod hashing is cut into chunks by it). `Err(ArchiveError::Write)` is a
/// failure of `sink`.
pub fn stream_checked<R: Read + Send, W: Write>(
    stored: R,
    manifest: &Manifest,
    entries: &Entries,
    sink: W,
    members: &mut dyn FnMut(&EntryRecord),
) -> Result<VerifyReport, ArchiveError> {
    let table = &entries.table;
    let lookup_failed = |source: io::Error| ArchiveError::Spool { source };
    let seen = RefCell::new(Bits::new(table.len()));
    // The admitted member whose content is streaming: its entry, for the content hash.
    let pending: RefCell<Option<EntryRecord>> = RefCell::new(None);
    let problems = RefCell::new(Vec::new());
    let stopped = Cell::new(false);
    let stop = || {
        stopped.set(true);
        ArchiveError::Corrupt {
            offset: 0,
            source: io::Error::other("stopped at the first problem"),
        }
    };
    let mut entries_checked = 0u64;
    let mut files_hashed = 0u64;
    let (walked, mut unpacked) = unpacked_walk(stored, manifest.compression, |src| {
        let mut admit = |rec: &EntryRecord| -> Result<(), ArchiveError> {
            check_entry_safe(rec)?;
            let key = canonical_key(&rec.raw_path());
            let want = match table.get(&key).map_err(lookup_failed)? {
                Some((i, want)) if !seen.borrow().get(i) => {
                    if rec.kind == EntryKind::Hardlink {
                        let target = rec.raw_link_target().unwrap_or_default();
                        let earlier =
                            match table.get(&canonical_key(&target)).map_err(lookup_failed)? {
                                Some((j, t)) => {
                                    j != i && seen.borrow().get(j) && t.kind != EntryKind::Dir
                                }
                                None => false,
                            };
                        if !earlier {
                            return Err(UnsafeEntry {
                                path: rec.path.clone(),
                                reason: UnsafeReason::HardlinkNotEarlier {
                                    target: String::from_utf8_lossy(&target).into_owned(),
                                },
                            }
                            .into());
                        }
                    }
                    seen.borrow_mut().set(i);
                    want
                }
                _ => {
                    problems.borrow_mut().push(Problem::Unexpected {
                        path: rec.path.clone(),
                    });
                    return Err(stop());
                }
            };
            // Everything but the content hash, before the member reaches the sink.
            let mut header = rec.clone();
            header.sha256 = want.sha256.clone();
            let mut problems = problems.borrow_mut();
            let before = problems.len();
            compare_entry(&want, &header, &mut problems);
            if problems.len() > before {
                return Err(stop());
            }
            *pending.borrow_mut() = Some(want);
            members(rec);
            Ok(())
        };
        let visit = |mut rec: EntryRecord| -> Result<(), ArchiveError> {
            entries_checked += 1;
            if rec.sha256.is_some() {
                files_hashed += 1;
            }
            let mut problems = problems.borrow_mut();
            let before = problems.len();
            match pending.borrow_mut().take() {
                Some(want) if canonical_key(&want.raw_path()) == canonical_key(&rec.raw_path()) => {
                    // The gated walk does not hash content: the helper pod hashes each file it
                    // wrote, and compares it with the manifest.
                    rec.sha256.clone_from(&want.sha256);
                    compare_entry(&want, &rec, &mut problems)
                }
                _ => problems.push(Problem::Unexpected { path: rec.path }),
            }
            if problems.len() > before {
                return Err(stop());
            }
            Ok(())
        };
        walk_gated(src, sink, &mut admit, visit).map(|_| ())
    })?;
    let mut problems = problems.into_inner();
    let complete = finish_walk(&mut unpacked, walked, stopped.get(), &mut problems)?;
    let seen = seen.into_inner();
    if complete && seen.count() < table.len() {
        let mut missing = 0usize;
        for (i, e) in table.iter().enumerate() {
            let (_, e) = e.map_err(lookup_failed)?;
            if !seen.get(i as u64) {
                missing += 1;
                if missing <= MISSING_SHOWN {
                    problems.push(Problem::Missing { path: e.path });
                }
            }
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

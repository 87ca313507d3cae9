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

#[cfg(test)]
mod tests {
    //! What the gate lets through to `tar -x`, and what it stops: archives made by busybox
    //! tar from the archive tests' fixture tree.

    use std::sync::Arc;

    use super::*;
    use crate::archive::tests::{backup, busybox_tar, fixture, manifest_for, raw_entry, ALL};
    use crate::archive::Compression;
    use crate::destination::local::LocalDir;
    use crate::locate::Located;

    /// [`stream_checked`] of `stored` against `manifest`'s entries, read into their table as a
    /// restore reads a schema-1 manifest's.
    fn checked<W: Write>(
        stored: &[u8],
        manifest: &Manifest,
        sink: W,
        members: &mut dyn FnMut(&EntryRecord),
    ) -> Result<VerifyReport, ArchiveError> {
        let dir = tempfile::tempdir().unwrap();
        let loc = Located {
            destination: Arc::new(LocalDir::new(dir.path().to_path_buf())),
            manifest_key: "b1.manifest.json".into(),
            archive_key: "b1.tar".into(),
            manifest: manifest.clone(),
            sealed: None,
        };
        let entries = Entries::read(&loc, None).unwrap();
        stream_checked(stored, manifest, &entries, sink, members)
    }

    fn stops_before(sink: &[u8], tar: &[u8], name: &str) {
        let at = header_at(tar, name);
        assert!(tar.starts_with(sink));
        assert!(
            sink.len() + 512 > at && sink.len() <= at,
            "{} vs {at}",
            sink.len()
        );
    }

    /// Byte offset in `tar` of the header naming `name` (`./name` as busybox writes it).
    fn header_at(tar: &[u8], name: &str) -> usize {
        let want = format!("./{name}");
        (0..tar.len())
            .step_by(512)
            .find(|&o| tar[o..].starts_with(want.as_bytes()) && tar[o + want.len()] == 0)
            .unwrap()
    }

    #[test]
    fn stream_checked_passes_the_exact_tar_stream_once_checked() {
        let tar = busybox_tar(fixture().path());
        for c in ALL {
            let (s, out) = backup(&tar, c).unwrap();
            let manifest = manifest_for(c, &s);
            let mut sink = Vec::new();
            let r = checked(&out[..], &manifest, &mut sink, &mut |_| {}).unwrap();
            assert!(r.is_ok(), "{c:?}: {:?}", r.problems);
            assert_eq!(r.entries_checked, s.entries.len() as u64);
            assert_eq!(
                sink, tar,
                "{c:?}: the sink gets the tar stream byte for byte"
            );
        }
    }

    #[test]
    fn stream_checked_stops_before_a_member_the_manifest_does_not_describe() {
        let tar = busybox_tar(fixture().path());
        let (s, out) = backup(&tar, Compression::None).unwrap();
        // Not in the manifest at all: its header never reaches the sink, nor anything after it.
        let mut manifest = manifest_for(Compression::None, &s);
        manifest.entries.retain(|e| e.path != "with space.txt");
        let mut sink = Vec::new();
        let r = checked(&out[..], &manifest, &mut sink, &mut |_| {}).unwrap();
        assert!(!r.is_ok() && !r.complete);
        assert!(r.problems.contains(&Problem::Unexpected {
            path: "with space.txt".into()
        }));
        stops_before(&sink, &tar, "with space.txt");
        // In the manifest with another mode: the same, before its content is read.
        let mut manifest = manifest_for(Compression::None, &s);
        let i = manifest
            .entries
            .iter()
            .position(|e| e.path == "secret")
            .unwrap();
        manifest.entries[i].mode = 0o644;
        let mut sink = Vec::new();
        let r = checked(&out[..], &manifest, &mut sink, &mut |_| {}).unwrap();
        assert!(!r.is_ok() && !r.complete);
        assert!(r.problems.iter().any(
            |p| matches!(p, Problem::Mismatch { path, field: "mode", .. } if path == "secret")
        ));
        stops_before(&sink, &tar, "secret");
    }

    #[test]
    fn stream_checked_leaves_content_to_the_pod_and_fails_a_damaged_archive_by_its_hash() {
        let tar = busybox_tar(fixture().path());
        let (s, out) = backup(&tar, Compression::None).unwrap();
        let manifest = manifest_for(Compression::None, &s);
        let pos = out.windows(10).position(|w| w == b"top secret").unwrap();
        let mut bad = out.clone();
        bad[pos + 4] ^= 0x20;
        let mut sink = Vec::new();
        let r = checked(&bad[..], &manifest, &mut sink, &mut |_| {}).unwrap();
        // Files are not hashed on the client (the helper pod hashes what it wrote): the stream goes
        // on to its end, where the stored archive's sha256 fails it, so nothing is swapped in.
        assert!(!r.is_ok());
        assert!(
            r.problems
                .iter()
                .any(|p| matches!(p, Problem::ArchiveSha256 { .. })),
            "{:?}",
            r.problems
        );
        assert!(!r.problems.iter().any(|p| matches!(
            p,
            Problem::Mismatch {
                field: "sha256",
                ..
            }
        )));
        assert_eq!(r.files_hashed, 0);
        assert_eq!(
            sink, bad,
            "the damaged bytes went out whole, to be rolled back"
        );
    }

    /// Schema 2 lists entries by path, not in archive order: the streaming check matches members
    /// by name, so any order of the manifest's entries passes the same stream through (symlinks,
    /// whatever their target, hard links after their target, as the archive has them).
    #[test]
    fn stream_checked_accepts_entries_in_any_order() {
        let tar = busybox_tar(fixture().path());
        let (s, out) = backup(&tar, Compression::None).unwrap();
        let mut manifest = manifest_for(Compression::None, &s);
        assert!(manifest
            .entries
            .iter()
            .any(|e| e.kind == EntryKind::Symlink));
        manifest
            .entries
            .sort_by(|a, b| a.raw_path().cmp(&b.raw_path()));
        manifest.entries.reverse();
        // The members are told in the archive's order, each before its first byte reaches the
        // sink (a restore cuts the in-pod hashing by it).
        let sink = Shared::default();
        let mut told = Vec::new();
        let r = checked(&out[..], &manifest, sink.clone(), &mut |e| {
            told.push((e.path.clone(), sink.0.borrow().len()))
        })
        .unwrap();
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(*sink.0.borrow(), tar);
        let archive_order: Vec<&str> = s.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            told.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            archive_order
        );
        // (the regular files with names that fit a ustar header, which `header_at` finds)
        let files = s
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && e.path.len() < 90);
        for f in files {
            let sent = told.iter().find(|(p, _)| *p == f.path).unwrap().1;
            assert!(sent <= header_at(&tar, &f.path), "{}: {sent}", f.path);
        }
    }

    /// A sink whose bytes can be looked at while it is written.
    #[derive(Clone, Default)]
    struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A member whose name would write outside the volume, or a hard link before its target
    /// (`tar` extracts in order, so it would link to nothing, or to what is already on the
    /// volume), is refused before its header reaches `tar`.
    #[test]
    fn stream_checked_refuses_unsafe_members_before_tar_sees_them() {
        use tar::EntryType as T;
        for (kind, name, link, says) in [
            (T::Regular, "../evil", "", "../evil"),
            (T::Regular, "/etc/passwd", "", "/etc/passwd"),
            (T::Link, "h", "/etc/shadow", "/etc/shadow"),
        ] {
            let mut b = tar::Builder::new(Vec::new());
            raw_entry(&mut b, kind, name, link);
            let (s, out) = backup(&b.into_inner().unwrap(), Compression::None).unwrap();
            // Not in the (clean) manifest either: the name is refused, not merely unexpected.
            let mut manifest = manifest_for(Compression::None, &s);
            manifest.entries.clear();
            manifest.entry_count = 0;
            let mut sink = Vec::new();
            let err = checked(&out[..], &manifest, &mut sink, &mut |_| {}).unwrap_err();
            assert!(matches!(err, ArchiveError::Unsafe(_)), "{name}: {err}");
            assert!(err.to_string().contains(says), "{err}");
            assert!(sink.is_empty(), "{name}: nothing reached tar");
        }
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, T::Link, "h", "f");
        raw_entry(&mut b, T::Regular, "f", "");
        let (s, out) = backup(&b.into_inner().unwrap(), Compression::None).unwrap();
        let manifest = manifest_for(Compression::None, &s);
        let mut sink = Vec::new();
        let err = checked(&out[..], &manifest, &mut sink, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("does not come earlier"), "{err}");
        assert!(sink.is_empty(), "the link's header never reached tar");
    }
}

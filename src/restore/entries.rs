//! The manifest's entries as a restore reads them: by path, on disk ([`Table`]), with the
//! figures the restore plans with, in memory that does not grow with the number of entries.
//!
//! A schema-2 manifest's entries stream in path order and are written to the table as they
//! come (checked by [`crate::manifest::EntryReader`] on the way); a schema-1 manifest is small
//! and whole in memory, and is sorted before it is written.

use std::io;

use super::table::{Table, TableWriter};
use crate::archive::{canonical_key, EntryKind, EntryRecord, LinkRef, Spool};
use crate::exit::Failure;
use crate::locate::{entries_failure, Located};
use crate::manifest::EntryReader;

/// The entries of a backup, by canonical path.
pub struct Entries {
    pub table: Table<EntryRecord>,
    /// Regular files.
    pub files: u64,
    /// What the restored tree occupies, estimated generously: every file rounded up to 4 KiB
    /// pages, a page per directory and symlink, never less than the tar stream itself, plus
    /// 1 MiB for filesystem metadata.
    pub needed: u64,
    /// The backup holds a top-level `lost+found`.
    pub has_lost_found: bool,
}

/// What [`Entries::add`] tallies.
#[derive(Default)]
struct Tally {
    files: u64,
    pages: u64,
    lost_found: bool,
}

impl Tally {
    fn add(&mut self, key: &[u8], e: &EntryRecord) {
        match e.kind {
            EntryKind::File => {
                self.files += 1;
                self.pages += e.size.div_ceil(4096) * 4096 + 4096;
            }
            EntryKind::Hardlink => {}
            _ => self.pages += 4096,
        }
        self.lost_found |= key == b"lost+found";
    }
}

impl Entries {
    /// Reads the entries of `loc` (from `reader` for schema 2, else from the manifest) into
    /// the table. Refuses, as an integrity failure, a manifest whose entries are damaged,
    /// listed twice, unsafe to restore, or a hard link whose target is not a non-directory
    /// entry (what `check_entries_safe` refuses of a whole manifest).
    pub fn read(loc: &Located, reader: Option<EntryReader<'static>>) -> Result<Entries, Failure> {
        let tmp = |e: io::Error| {
            Failure::runtime(format!(
                "writing the manifest's entries to a temporary file failed: {e}; check that the temporary directory (TMPDIR, else /tmp) has free space, then retry"
            ))
        };
        let mut w = TableWriter::new(super::table::LOOKED_UP).map_err(tmp)?;
        let mut tally = Tally::default();
        let mut links: Spool<LinkRef> = Spool::default();
        let mut add = |key: &[u8], e: &EntryRecord| -> Result<(), Failure> {
            if let Some((target, link)) = LinkRef::of(e, 0) {
                links.push(target, &link).map_err(tmp)?;
            }
            tally.add(key, e);
            w.push(key, e).map_err(|err| match err.kind() {
                io::ErrorKind::InvalidInput => Failure::integrity(format!(
                    "the manifest lists entry {:?} twice, so the backup is damaged",
                    e.path
                )),
                _ => tmp(err),
            })
        };
        match reader {
            Some(reader) => {
                let file = reader.file_name().to_string();
                for line in reader {
                    let (e, _note) = line.map_err(|err| entries_failure(loc, &file, err))?;
                    add(&canonical_key(&e.raw_path()), &e)?;
                }
            }
            None => {
                let m = &loc.manifest;
                crate::archive::check_entries_safe(&m.entries)
                    .map_err(|e| Failure::integrity(e.to_string()))?;
                let mut order: Vec<(Vec<u8>, &EntryRecord)> = m
                    .entries
                    .iter()
                    .map(|e| (canonical_key(&e.raw_path()), e))
                    .collect();
                order.sort_by(|a, b| a.0.cmp(&b.0));
                for (key, e) in order {
                    add(&key, e)?;
                }
            }
        }
        let table = w.finish().map_err(tmp)?;
        // A hard link's target must be a non-directory entry other than itself (the order in
        // the archive is checked as it streams).
        for l in links.finish().map_err(tmp)? {
            let l = l.map_err(tmp)?;
            let target = table.get(&l.key).map_err(tmp)?;
            let ok = matches!(&target, Some((_, t)) if t.kind != EntryKind::Dir && t.path != l.item.path);
            if !ok {
                return Err(Failure::integrity(format!(
                    "entry {:?} is a hard link to {:?}, which is not a file of the backup, so the backup is unsafe to restore",
                    l.item.path, l.item.target
                )));
            }
        }
        let m = &loc.manifest;
        Ok(Entries {
            table,
            files: tally.files,
            needed: tally.pages.max(m.uncompressed_size) + (1 << 20),
            has_lost_found: tally.lost_found,
        })
    }

    /// Every entry in path order; a read failure of the temporary file is a runtime failure.
    pub fn each(&self) -> impl Iterator<Item = Result<(Vec<u8>, EntryRecord), Failure>> + '_ {
        self.table.iter().map(|r| r.map_err(reread))
    }
}

/// Reading the entries back from their temporary file failed.
pub fn reread(e: io::Error) -> Failure {
    Failure::runtime(format!(
        "reading the manifest's entries back from a temporary file failed: {e}"
    ))
}

/// Resolves BACKUP and reads its manifest ([`crate::locate::locate_open`]: a schema-2
/// backup's entries are not held in memory) and its entries ([`Entries::read`]).
pub fn locate(
    backup: &str,
    from: Option<&str>,
    store: &crate::destination::StoreOptions,
    keys: Option<&crate::encryption::Identities>,
) -> Result<(Located, Entries), Failure> {
    let (loc, reader) = crate::locate::locate_open(backup, from, store, keys)?;
    let entries = Entries::read(&loc, reader)?;
    Ok((loc, entries))
}

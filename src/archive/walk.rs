//! The single-pass tar walker shared by backup, verify and restore.
//!
//! A [`Tee`] sits between the byte source and the `tar` crate and copies
//! every byte the crate consumes into a sink (the compressor for backup,
//! nothing for verify). After the last entry the rest of the stream (the
//! second zero block and any record padding) is drained through the same
//! tee, so the sink receives exactly the input bytes — except the entries
//! the caller asks to leave out (device nodes, at backup time): the tee holds
//! each entry's header blocks until the walker has decided, then writes or
//! drops them, so the sink receives the input minus those entries' blocks,
//! still a valid tar stream. A restore's walk is gated the same way: a member's header
//! blocks reach `tar -x` only once the manifest check admitted it ([`walk_gated`]).

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tar::EntryType;

use super::{
    name_fields, ArchiveError, EntryKind, EntryRecord, SkipReason, SkippedEntry, BUF_SIZE,
};

/// Call the progress callback every this many bytes.
const PROGRESS_STEP: u64 = 1024 * 1024;

/// What the tee observed; shared with the walker because the `tar` crate
/// owns the reader while iterating and wraps its errors.
#[derive(Default)]
struct TeeState {
    /// Bytes passed through so far.
    pos: Cell<u64>,
    /// The source returned end-of-file to a non-empty read.
    eof: Cell<bool>,
    /// First error from the source, kept so it is reported as a read error
    /// rather than as whatever the `tar` crate wrapped it into.
    read_error: RefCell<Option<io::Error>>,
    /// First error from the sink.
    write_error: RefCell<Option<io::Error>>,
    /// Bytes written to the sink.
    written: Cell<u64>,
    /// While set, bytes read are kept in `held` instead of being written.
    holding: Cell<bool>,
    /// Bytes read while holding; they start at stream position `held_from`.
    held: RefCell<Vec<u8>>,
    held_from: Cell<u64>,
    /// What to do with `held` before the next read: `(n, keep_first, keep_rest)`: the first
    /// `n` bytes are written if `keep_first`, the rest if `keep_rest`.
    decision: Cell<Option<(u64, bool, bool)>>,
}

struct Tee<'p, R, S> {
    src: R,
    sink: S,
    state: Rc<TeeState>,
    progress: Option<&'p dyn Fn(u64)>,
    last_progress: u64,
}

impl<R, S: Write> Tee<'_, R, S> {
    fn write_out(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.sink.write_all(bytes) {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.state.write_error.borrow_mut().get_or_insert(e);
            return Err(copy);
        }
        self.state
            .written
            .set(self.state.written.get() + bytes.len() as u64);
        Ok(())
    }

    /// Carries out the walker's decision on the held bytes, if it made one.
    fn settle(&mut self) -> io::Result<()> {
        let Some((n, keep_first, keep_rest)) = self.state.decision.take() else {
            return Ok(());
        };
        let held = std::mem::take(&mut *self.state.held.borrow_mut());
        let n = (n as usize).min(held.len());
        if keep_first {
            self.write_out(&held[..n])?;
        }
        if keep_rest {
            self.write_out(&held[n..])?;
        }
        Ok(())
    }
}

impl<R: Read, S: Write> Read for Tee<'_, R, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.settle()?;
        if self.state.holding.get() && self.state.held.borrow().is_empty() {
            self.state.held_from.set(self.state.pos.get());
        }
        let n = match self.src.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.state.read_error.borrow_mut().get_or_insert(e);
                return Err(copy);
            }
        };
        if n == 0 {
            if !buf.is_empty() {
                self.state.eof.set(true);
            }
            return Ok(0);
        }
        if self.state.holding.get() {
            self.state.held.borrow_mut().extend_from_slice(&buf[..n]);
        } else {
            self.write_out(&buf[..n])?;
        }
        let pos = self.state.pos.get() + n as u64;
        self.state.pos.set(pos);
        if let Some(p) = self.progress {
            if pos - self.last_progress >= PROGRESS_STEP {
                self.last_progress = pos;
                p(pos);
            }
        }
        Ok(n)
    }
}

/// Turn an I/O error seen while walking into the right [`ArchiveError`],
/// using what the tee observed.
fn classify(state: &TeeState, err: io::Error) -> ArchiveError {
    if let Some(source) = state.read_error.borrow_mut().take() {
        return ArchiveError::Read { source };
    }
    if let Some(source) = state.write_error.borrow_mut().take() {
        return ArchiveError::Write { source };
    }
    let offset = state.pos.get();
    if state.eof.get() {
        return ArchiveError::Truncated {
            offset,
            detail: format!("stream ended inside a tar record: {err}"),
        };
    }
    ArchiveError::Corrupt {
        offset,
        source: err,
    }
}

/// Member-name normalisation: `./a/b/` -> `a/b`, `./` -> `.`.
/// busybox and GNU tar, given `-C dir .`, name members `./…` and
/// directories with a trailing slash (GNU tar manual, "Basic Tar Format").
fn normalise(raw: &[u8]) -> &[u8] {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    while p.len() > 1 && p.ends_with(b"/") {
        p = &p[..p.len() - 1];
    }
    if p.is_empty() || p == b"." {
        b"."
    } else {
        p
    }
}

fn kind_of(t: EntryType) -> Option<EntryKind> {
    Some(match t {
        // '7' (contiguous file) is a regular file for every tar in use
        // (POSIX ustar: "implementations may treat it as a regular file").
        EntryType::Regular | EntryType::Continuous => EntryKind::File,
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => EntryKind::Symlink,
        EntryType::Link => EntryKind::Hardlink,
        EntryType::Char => EntryKind::Char,
        EntryType::Block => EntryKind::Block,
        EntryType::Fifo => EntryKind::Fifo,
        _ => return None,
    })
}

/// An all-NUL/space numeric header field reads as 0. Some writers (e.g. the
/// `tar` crate's `Header::new_gnu` when a field is never set) leave fields
/// empty; GNU tar also treats them as 0 rather than failing.
fn lenient<T: Default>(parsed: io::Result<T>, field: &[u8]) -> io::Result<T> {
    match parsed {
        Err(_) if field.iter().all(|&b| b == 0 || b == b' ') => Ok(T::default()),
        other => other,
    }
}

/// Walk the tar stream in `src`, tee every byte into `sink`, call `visit`
/// with each entry record (regular files hashed).
///
/// With `skip`, device nodes are left out of the sink (their header blocks, and any
/// extension headers of theirs, are dropped) and reported to `skip` instead of `visit`;
/// without it they are visited like any entry.
///
/// Returns the number of tar bytes read and written (they differ only when entries were
/// skipped) and the sink.
pub(crate) fn walk<R: Read, S: Write>(
    src: R,
    sink: S,
    progress: Option<&dyn Fn(u64)>,
    skip: Option<&mut dyn FnMut(SkippedEntry)>,
    visit: impl FnMut(EntryRecord) -> Result<(), ArchiveError>,
) -> Result<(u64, u64, S), ArchiveError> {
    walk_inner(src, sink, progress, skip, None, visit)
}

/// The gate of [`walk_gated`].
pub(crate) type Admit<'a> = &'a mut dyn FnMut(&EntryRecord) -> Result<(), ArchiveError>;

/// [`walk`] with a gate: each member's header blocks (long-name and PAX records included)
/// reach `sink` only once `admit` accepted the member's record (`sha256` not known yet);
/// its content follows as it is read. A refusal ends the walk with `admit`'s error, and the
/// refused member's header never reaches the sink. A restore streams into `tar -x` this way,
/// so that `tar` never sees a member its manifest does not describe. Device nodes are not
/// left out here: they reach `admit` like any member (a backup left them out when it was made).
///
/// File content is passed through, not hashed: `visit` gets records without `sha256`. A
/// restore checks each file's content where it landed, in the helper pod, and the stored
/// bytes by the archive's sha256; hashing it here too cost a third of the client's CPU.
pub(crate) fn walk_gated<R: Read, S: Write>(
    src: R,
    sink: S,
    admit: Admit<'_>,
    visit: impl FnMut(EntryRecord) -> Result<(), ArchiveError>,
) -> Result<(u64, u64, S), ArchiveError> {
    walk_inner(src, sink, None, None, Some(admit), visit)
}

fn walk_inner<R: Read, S: Write>(
    src: R,
    sink: S,
    progress: Option<&dyn Fn(u64)>,
    mut skip: Option<&mut dyn FnMut(SkippedEntry)>,
    mut admit: Option<Admit<'_>>,
    mut visit: impl FnMut(EntryRecord) -> Result<(), ArchiveError>,
) -> Result<(u64, u64, S), ArchiveError> {
    // A gated walk feeds a restore, which hashes the files in the pod (see `walk_gated`).
    let hash_files = admit.is_none();
    let state = Rc::new(TeeState::default());
    let tee = Tee {
        src,
        sink,
        state: Rc::clone(&state),
        progress,
        last_progress: 0,
    };
    let mut archive = tar::Archive::new(tee);
    let mut buf = vec![0u8; BUF_SIZE];
    // Where the previous entry's blocks end, and whether they go to the sink. The bytes held
    // when the next entry arrives are the previous entry's rest (padding, unread data) up to
    // `prev_end`, then the new entry's own header blocks.
    let mut prev_end = 0u64;
    let mut prev_kept = true;
    let mut left_out: std::collections::HashMap<Vec<u8>, SkipReason> = Default::default();
    state.holding.set(true);
    {
        let entries = archive.entries().map_err(|e| classify(&state, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| classify(&state, e))?;
            let etype = entry.header().entry_type();
            let (path, path_hex) = name_fields(normalise(&entry.path_bytes()));
            // A device node is left out, and so is a hard link to one left out (tar stores
            // the second name of a hard-linked device node as a link to the first).
            let reason = match etype {
                _ if skip.is_none() => None,
                EntryType::Char => Some(SkipReason::CharDevice),
                EntryType::Block => Some(SkipReason::BlockDevice),
                EntryType::Link => entry
                    .link_name_bytes()
                    .and_then(|t| left_out.get(normalise(&t)).copied()),
                _ => None,
            };
            let leave_out = reason.is_some();
            let first = prev_end.saturating_sub(state.held_from.get());
            // What is held (the previous entry's rest, then this entry's header blocks) is
            // written or dropped before the next read: at once for an entry left out or a
            // global header, after the gate for a member.
            let (tee_state, keep_prev) = (&*state, prev_kept);
            let decide = move |keep: bool| {
                tee_state.decision.set(Some((first, keep_prev, keep)));
                tee_state.holding.set(false);
            };
            prev_end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
            prev_kept = !leave_out;
            // PAX global headers ('g') are returned as entries by the tar
            // crate; they describe defaults, not a member. Skip them.
            if etype == EntryType::XGlobalHeader {
                decide(true);
                state.holding.set(true);
                continue;
            }
            if let Some(reason) = reason {
                decide(false);
                left_out.insert(normalise(&entry.path_bytes()).to_vec(), reason);
                if let Some(report) = skip.as_mut() {
                    report(SkippedEntry {
                        path,
                        path_hex,
                        reason,
                    });
                }
                state.holding.set(true);
                continue;
            }
            let Some(kind) = kind_of(etype) else {
                return Err(ArchiveError::UnsupportedEntry {
                    path,
                    type_byte: etype.as_byte() as char,
                });
            };
            let header = entry.header();
            let old = header.as_old();
            let corrupt = |e| classify(&state, e);
            let mode = lenient(header.mode(), &old.mode).map_err(corrupt)? & 0o7777;
            // The tar crate has already applied PAX uid/gid/size overrides.
            let uid = lenient(header.uid(), &old.uid).map_err(corrupt)?;
            let gid = lenient(header.gid(), &old.gid).map_err(corrupt)?;
            let mut mtime = lenient(header.mtime(), &old.mtime).map_err(corrupt)? as i64;
            let size = entry.size();
            // PAX `mtime` may be fractional or negative (POSIX pax,
            // "pax Extended Header Keywords"); keep whole seconds.
            if let Some(exts) = entry.pax_extensions().map_err(|e| classify(&state, e))? {
                for ext in exts.flatten() {
                    if ext.key_bytes() == b"mtime" {
                        if let Some(secs) = ext
                            .value()
                            .ok()
                            .and_then(|v| v.split('.').next())
                            .and_then(|v| v.parse::<i64>().ok())
                        {
                            mtime = secs;
                        }
                    }
                }
            }
            let (link_target, link_target_hex) = match kind {
                EntryKind::Symlink => {
                    let (t, h) = name_fields(&entry.link_name_bytes().unwrap_or_default());
                    (Some(t), h)
                }
                EntryKind::Hardlink => {
                    let (t, h) =
                        name_fields(normalise(&entry.link_name_bytes().unwrap_or_default()));
                    (Some(t), h)
                }
                _ => (None, None),
            };
            let mut record = EntryRecord {
                path,
                path_hex,
                kind,
                size,
                mode,
                uid,
                gid,
                mtime,
                link_target,
                link_target_hex,
                sha256: None,
            };
            // Nothing of a refused member reaches the sink: its header stays held.
            if let Some(admit) = admit.as_mut() {
                admit(&record)?;
            }
            decide(true);
            let path = &record.path;
            record.sha256 = if kind == EntryKind::File {
                let mut hasher = hash_files.then(Sha256::new);
                let mut got = 0u64;
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(classify(&state, e)),
                    };
                    if n == 0 {
                        break;
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(&buf[..n]);
                    }
                    got += n as u64;
                }
                // The tar crate reads entry data through `Take`, which just
                // stops at EOF; a short entry is only visible here.
                if got != size {
                    return Err(ArchiveError::Truncated {
                        offset: state.pos.get(),
                        detail: format!(
                            "file {path:?} should have {size} bytes but the stream ended \
                             after {got}"
                        ),
                    });
                }
                hasher.map(|h| hex::encode(h.finalize()))
            } else {
                None
            };
            // Hold from the first byte the content does not use: the next header.
            state.holding.set(true);
            visit(record)?;
        }
    }
    // What is held now: the last entry's rest, then the end-of-archive blocks (kept).
    let first = prev_end.saturating_sub(state.held_from.get());
    state.decision.set(Some((first, prev_kept, true)));
    state.holding.set(false);

    // The tar crate stops (Ok) both on a zero block and on EOF at a header
    // boundary. Only the former is a complete archive: POSIX ustar ends
    // with two 512-byte zero blocks, and GNU tar accepts one ("A lone zero
    // block" warning). EOF while the crate was reading means the stream was
    // cut; the crate never reads past what it needs, so `eof` is set only
    // in that case.
    if state.eof.get() {
        return Err(ArchiveError::Truncated {
            offset: state.pos.get(),
            detail: "no end-of-archive marker (zero blocks) after the last entry".into(),
        });
    }
    let mut tee = archive.into_inner();
    // Drain the second zero block and any blocking-factor padding through
    // the tee so the stored archive is byte-identical to the input.
    loop {
        match tee.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(classify(&state, e)),
        }
    }
    tee.settle().map_err(|e| classify(&state, e))?;
    Ok((state.pos.get(), state.written.get(), tee.sink))
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn normalise_names() {
        assert_eq!(normalise(b"./"), b".");
        assert_eq!(normalise(b"."), b".");
        assert_eq!(normalise(b""), b".");
        assert_eq!(normalise(b"./a/b"), b"a/b");
        assert_eq!(normalise(b"./a/b/"), b"a/b");
        assert_eq!(normalise(b"a"), b"a");
        assert_eq!(normalise(b"././x"), b"x");
        assert_eq!(normalise(b"/abs"), b"/abs");
    }
}

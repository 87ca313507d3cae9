//! The single-pass tar walker shared by backup and verify.
//!
//! A [`Tee`] sits between the byte source and the `tar` crate and copies
//! every byte the crate consumes into a sink (the compressor for backup,
//! nothing for verify). After the last entry the rest of the stream (the
//! second zero block and any record padding) is drained through the same
//! tee, so the sink receives exactly the input bytes.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tar::EntryType;

use super::{name_fields, ArchiveError, EntryKind, EntryRecord, BUF_SIZE};

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
    /// A gated walk holds each member's header blocks back (here) until the gate admitted
    /// the member: while `holding`, bytes read are kept instead of going to the sink.
    holding: Cell<bool>,
    held: RefCell<Vec<u8>>,
    /// The held bytes go to the sink before the next read.
    release: Cell<bool>,
}

struct Tee<'p, R, S> {
    src: R,
    sink: S,
    state: Rc<TeeState>,
    progress: Option<&'p dyn Fn(u64)>,
    last_progress: u64,
}

impl<R, S: Write> Tee<'_, R, S> {
    fn write_sink(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sink.write_all(bytes).map_err(|e| {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.state.write_error.borrow_mut().get_or_insert(e);
            copy
        })
    }
}

impl<R: Read, S: Write> Read for Tee<'_, R, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.state.release.replace(false) {
            let held = std::mem::take(&mut *self.state.held.borrow_mut());
            self.write_sink(&held)?;
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
            self.write_sink(&buf[..n])?;
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
/// with each entry record (regular files hashed). Returns the number of
/// tar bytes read and the sink.
pub(crate) fn walk<R: Read, S: Write>(
    src: R,
    sink: S,
    progress: Option<&dyn Fn(u64)>,
    visit: impl FnMut(EntryRecord) -> Result<(), ArchiveError>,
) -> Result<(u64, S), ArchiveError> {
    walk_inner(src, sink, progress, None, visit)
}

/// The gate of [`walk_gated`].
pub(crate) type Admit<'a> = &'a mut dyn FnMut(&EntryRecord) -> Result<(), ArchiveError>;

/// [`walk`] with a gate: each member's header blocks (long-name and PAX records included)
/// reach `sink` only once `admit` accepted the member's record (`sha256` not known yet);
/// its content follows as it is read. A refusal ends the walk with `admit`'s error, and the
/// refused member's header never reaches the sink. A restore streams into `tar -x` this way,
/// so that `tar` never sees a member its manifest does not describe.
pub(crate) fn walk_gated<R: Read, S: Write>(
    src: R,
    sink: S,
    admit: Admit<'_>,
    visit: impl FnMut(EntryRecord) -> Result<(), ArchiveError>,
) -> Result<(u64, S), ArchiveError> {
    walk_inner(src, sink, None, Some(admit), visit)
}

fn walk_inner<R: Read, S: Write>(
    src: R,
    sink: S,
    progress: Option<&dyn Fn(u64)>,
    mut admit: Option<Admit<'_>>,
    mut visit: impl FnMut(EntryRecord) -> Result<(), ArchiveError>,
) -> Result<(u64, S), ArchiveError> {
    let state = Rc::new(TeeState::default());
    state.holding.set(admit.is_some());
    let tee = Tee {
        src,
        sink,
        state: Rc::clone(&state),
        progress,
        last_progress: 0,
    };
    let mut archive = tar::Archive::new(tee);
    let mut buf = vec![0u8; BUF_SIZE];
    {
        let entries = archive.entries().map_err(|e| classify(&state, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| classify(&state, e))?;
            let etype = entry.header().entry_type();
            // PAX global headers ('g') are returned as entries by the tar
            // crate; they describe defaults, not a member. Skip them.
            if etype == EntryType::XGlobalHeader {
                continue;
            }
            let (path, path_hex) = name_fields(normalise(&entry.path_bytes()));
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
            if let Some(admit) = admit.as_mut() {
                admit(&record)?;
                // The header goes out before the content (next read); the next header is
                // held again, from the first byte the content does not use.
                state.release.set(true);
                state.holding.set(false);
            }
            let path = &record.path;
            record.sha256 = if kind == EntryKind::File {
                let mut hasher = Sha256::new();
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
                    hasher.update(&buf[..n]);
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
                Some(hex::encode(hasher.finalize()))
            } else {
                None
            };
            if admit.is_some() {
                state.holding.set(true);
            }
            visit(record)?;
        }
    }

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
    // The end-of-archive blocks the crate read while holding, then the rest, go through.
    state.holding.set(false);
    state.release.set(true);
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
    Ok((state.pos.get(), tee.sink))
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

//! The cluster-free data layer: turning the raw `tar` stream produced in the
//! helper pod into a compressed, hashed archive plus a per-entry listing,
//! and checking such an archive later.
//!
//! Everything here is streaming: the tar stream is read once, entry content
//! is never buffered whole, and buffers are [`BUF_SIZE`] bytes.

mod compression;
mod pipeline;
mod safety;
mod sorted;
mod verify;
mod walk;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use compression::{
    Compression, CompressionParseError, Encoder, DEFAULT_GZIP_LEVEL, DEFAULT_ZSTD_LEVEL,
};
pub(crate) use safety::canonical_key;
pub use safety::{
    check_entries_safe, check_entry_safe, ArchiveOrder, AtCreate, Rule, UnsafeEntry, UnsafeReason,
    RULES,
};
pub use sorted::{
    spool_entry, Duplicate, LinkRef, Sorted, SortedProblem, SortedRules, Spool, Spooled,
};
pub use verify::{verify_archive, verify_archive_streamed, Problem, VerifyReport};
// The parts of a verification a restore's gated stream over an on-disk index reuses.
pub(crate) use pipeline::unpacked_walk;
pub(crate) use verify::{compare as compare_entry, finish_walk, report};
pub(crate) use walk::walk_gated;

/// Size of the read/write buffers on the hot path.
pub const BUF_SIZE: usize = 256 * 1024;

/// Type of a tar member, as recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
        })
    }
}

/// One member of the archive.
///
/// # Names
///
/// `path` is the member name with the leading `./` that `tar -C /data .`
/// emits removed and trailing `/` of directories removed; the volume root
/// itself (`./`) is `.`. Long names (GNU `L`/`K` records, PAX `path` /
/// `linkpath`) are resolved, so `path` is the full name.
///
/// Tar names are bytes. When a name is valid UTF-8 it is stored in `path`
/// as is (spaces, newlines, any Unicode — JSON escapes what it must) and
/// `path_hex` is absent. When it is not valid UTF-8, `path` holds a lossy
/// rendering for humans (invalid bytes become U+FFFD) and `path_hex` holds
/// the exact bytes in lowercase hex; `path_hex` is then authoritative.
/// `link_target` / `link_target_hex` follow the same rule.
///
/// # Links
///
/// For a symlink `link_target` is the literal link content. For a hard link
/// it is the name of the earlier member it links to, normalised like `path`.
///
/// # Metadata
///
/// `mode` holds only the permission bits including setuid/setgid/sticky
/// (`& 0o7777`), `mtime` is seconds since the Unix epoch (fractional PAX
/// times are truncated). `sha256` is present for regular files only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRecord {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl EntryRecord {
    /// The exact name bytes (decoded from `path_hex` when present; an
    /// undecodable `path_hex` falls back to `path`, the manifest loader
    /// rejects that case).
    pub fn raw_path(&self) -> Cow<'_, [u8]> {
        raw_of(&self.path, self.path_hex.as_deref())
    }

    /// The exact link target bytes, if this is a link.
    pub fn raw_link_target(&self) -> Option<Cow<'_, [u8]>> {
        self.link_target
            .as_deref()
            .map(|t| raw_of(t, self.link_target_hex.as_deref()))
    }
}

fn raw_of<'a>(text: &'a str, hex_form: Option<&str>) -> Cow<'a, [u8]> {
    match hex_form.and_then(|h| hex::decode(h).ok()) {
        Some(b) => Cow::Owned(b),
        None => Cow::Borrowed(text.as_bytes()),
    }
}

/// Split name bytes into the (`text`, `hex`) pair described on [`EntryRecord`].
pub(crate) fn name_fields(raw: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(raw) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(raw).into_owned(),
            Some(hex::encode(raw)),
        ),
    }
}

/// An entry of the volume that a backup does not hold, and why (recorded in the manifest's
/// `skipped` list; `create`, `inspect` and `restore` warn about it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedEntry {
    /// Named like [`EntryRecord::path`] (with `path_hex` for names that are not UTF-8).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub reason: SkipReason,
}

/// Why an entry is not in a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A character device node: the helper pod cannot create one (no `CAP_MKNOD`), and it
    /// holds no data (an application or the kubelet recreates the ones it needs).
    CharDevice,
    /// A block device node, likewise.
    BlockDevice,
    /// A Unix socket: it exists only while a process listens on it; tar does not archive
    /// sockets (busybox tar says "socket ignored").
    Socket,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::CharDevice => "character device",
            SkipReason::BlockDevice => "block device",
            SkipReason::Socket => "socket",
        })
    }
}

/// Result of [`stream_backup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// sha256 (lowercase hex) of the bytes written to `out`.
    pub archive_sha256: String,
    /// Number of bytes written to `out`.
    pub stored_bytes: u64,
    /// Number of tar bytes stored (headers, padding and trailer included): the input
    /// minus the blocks of skipped entries.
    pub tar_bytes: u64,
    /// Every member, in archive order ([`stream_backup`]; empty from [`stream_backup_each`],
    /// which hands each to its caller instead).
    pub entries: Vec<EntryRecord>,
    /// Number of members.
    pub entry_count: u64,
    /// Number of regular files.
    pub file_count: u64,
    /// Sum of regular file sizes.
    pub total_file_bytes: u64,
    /// Entries of the stream left out of the archive (see [`SkipReason`]), in stream order.
    pub skipped: Vec<SkippedEntry>,
}

impl ArchiveSummary {
    /// The entries `verify`/`restore`/`drill` would refuse (the rules of [`RULES`], on the
    /// archive in order and on the set), so that `create` refuses the backup instead.
    /// Device nodes are not among them: [`stream_backup`] leaves them out.
    pub fn unsafe_entries(&self) -> Vec<UnsafeEntry> {
        let mut out = Vec::new();
        let mut order = ArchiveOrder::default();
        for e in &self.entries {
            if let Err(u) = order.check(e) {
                out.push(u);
            }
        }
        if out.is_empty() {
            if let Err(u) = check_entries_safe(&self.entries) {
                out.push(u);
            }
        }
        out
    }
}

/// Errors of the archive layer.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "reading the tar stream failed: {source}; the helper pod or the connection to it \
         probably went away — retry the backup"
    )]
    Read {
        #[source]
        source: io::Error,
    },
    #[error(
        "writing the archive failed: {source}; check that the destination is writable and \
         has free space, then retry"
    )]
    Write {
        #[source]
        source: io::Error,
    },
    #[error(
        "the tar stream is truncated ({detail}) after {offset} bytes; the archive is \
         incomplete — retry the backup (if this persists, check that `tar` in the helper \
         pod is not being killed, e.g. by OOM or a timeout)"
    )]
    Truncated { offset: u64, detail: String },
    #[error(
        "the tar stream is not a valid archive at byte {offset}: {source}; it may be \
         corrupt or not produced by `tar -cf -`"
    )]
    Corrupt {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "entry {path:?} has tar type {type_byte:?}, which is not supported (only files, \
         directories, links, devices and fifos are); recreate the archive without it"
    )]
    UnsupportedEntry { path: String, type_byte: char },
    #[error("starting the {algorithm} decompressor failed: {source}")]
    Decompress {
        algorithm: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Unsafe(#[from] UnsafeEntry),
    #[error(
        "sorting the entries in temporary files failed: {source}; check that the temporary \
         directory (TMPDIR, else /tmp) is writable and has free space (about 200 bytes per \
         file of the volume), then retry"
    )]
    Spool {
        #[source]
        source: io::Error,
    },
}

/// Writer that hashes (sha256) and counts everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(crate) fn into_parts(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Back up one tar stream.
///
/// Reads `tar_stream` exactly once. Every byte goes both into a tar walker
/// (which records each entry and sha256-hashes each regular file) and,
/// unchanged, through `compression` into `out`; the stored bytes are
/// hashed on the way. `progress` is called with the cumulative number of
/// raw tar bytes read, about every MiB and once at the end.
///
/// The stream must end with the tar end-of-archive marker; a stream cut
/// anywhere is [`ArchiveError::Truncated`]. `out` is flushed but not synced
/// (call `File::sync_all` yourself). On error, `out` holds an incomplete
/// archive: delete it.
///
/// Device nodes are left out of the stored archive (a restore could not
/// create them) and listed in [`ArchiveSummary::skipped`]; `tar_bytes` counts
/// what was stored. Every other entry is stored and recorded as it is; the
/// ones the restore-safety rules refuse (which a tar of a real directory never
/// holds) are listed by [`ArchiveSummary::unsafe_entries`] for the caller to
/// refuse the backup.
pub fn stream_backup<R: Read, W: Write>(
    tar_stream: R,
    compression: Compression,
    out: W,
    progress: &dyn Fn(u64),
) -> Result<ArchiveSummary, ArchiveError> {
    let mut entries = Vec::new();
    let mut summary = stream_backup_each(tar_stream, compression, out, progress, &mut |rec| {
        entries.push(rec);
        Ok(())
    })?;
    summary.entries = entries;
    Ok(summary)
}

/// [`stream_backup`] at any file count: each member's record goes to `visit` as it is read
/// (a [`Spool`] sorts them in bounded memory) and [`ArchiveSummary::entries`] stays empty.
/// An error of `visit` ends the walk as [`ArchiveError::Spool`].
pub fn stream_backup_each<R: Read, W: Write>(
    tar_stream: R,
    compression: Compression,
    out: W,
    progress: &dyn Fn(u64),
    visit: &mut dyn FnMut(EntryRecord) -> io::Result<()>,
) -> Result<ArchiveSummary, ArchiveError> {
    let sink = HashingWriter::new(BufWriter::with_capacity(BUF_SIZE, out));
    let encoder = compression
        .encoder(sink)
        .map_err(|source| ArchiveError::Write { source })?;

    let mut skipped = Vec::new();
    let mut entry_count = 0u64;
    let mut file_count = 0u64;
    let mut total_file_bytes = 0u64;
    let (read, tar_bytes, encoder) = walk::walk(
        BufReader::with_capacity(BUF_SIZE, tar_stream),
        encoder,
        Some(progress),
        Some(&mut |s| skipped.push(s)),
        |rec| {
            entry_count += 1;
            if rec.kind == EntryKind::File {
                file_count += 1;
                total_file_bytes += rec.size;
            }
            visit(rec).map_err(|source| ArchiveError::Spool { source })
        },
    )?;

    let sink = encoder
        .finish()
        .map_err(|source| ArchiveError::Write { source })?;
    let (mut out, archive_sha256, stored_bytes) = sink.into_parts();
    out.flush()
        .map_err(|source| ArchiveError::Write { source })?;
    progress(read);
    Ok(ArchiveSummary {
        archive_sha256,
        stored_bytes,
        tar_bytes,
        entries: Vec::new(),
        entry_count,
        file_count,
        total_file_bytes,
        skipped,
    })
}

#[cfg(test)]
pub(crate) mod tests;

//! The stages of the backup and verify data paths on their own threads, connected by bounded
//! channels of owned chunks (issue #14: one thread doing everything in series was the
//! bottleneck of `create` and `verify`).
//!
//! A stage hands bytes on as [`CHUNK`]-byte buffers through a channel of [`DEPTH`] slots; the
//! receiver gives every buffer back through a second channel, so the same few buffers go round
//! and memory stays at about `(DEPTH + 2) × CHUNK` per link whatever the volume holds. The
//! stages:
//!
//! * backup: the tar walk with each file's sha256 ([`super::walk`]) writes into a
//!   [`ChunkWriter`]; [`store`] compresses what it receives, hashes the stored bytes and writes
//!   them to the destination.
//! * verify and restore: [`unpack`] reads the stored bytes, hashes them and decompresses them
//!   into a [`ChunkWriter`]; the walk reads a [`ChunkReader`].
//!
//! An end is explicit: the sender's [`ChunkWriter::finish`] says "that was all". A receiver
//! that sees the channel close without it knows its sender failed (that sender's error is the
//! one to report) and stops without finishing its own output.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

use sha2::{Digest, Sha256};

use super::{ArchiveError, Compression, HashingWriter, BUF_SIZE};

/// Bytes per buffer handed between stages.
pub(crate) const CHUNK: usize = 1 << 20;
/// Buffers in flight between two stages.
pub(crate) const DEPTH: usize = 4;

enum Msg {
    Data(Vec<u8>),
    /// The sender failed with this error; nothing more comes.
    Failed(io::ErrorKind, String),
    /// Everything was sent.
    End,
}

/// Connects two stages: bytes written to the [`ChunkWriter`] come out of the [`ChunkReader`].
pub(crate) fn link() -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = sync_channel(DEPTH);
    let (back_tx, back_rx) = channel();
    (
        ChunkWriter {
            tx,
            spare: back_rx,
            buf: Vec::with_capacity(CHUNK),
        },
        ChunkReader {
            rx,
            back: back_tx,
            buf: Vec::new(),
            pos: 0,
            state: ReadState::Open,
        },
    )
}

/// The sending end of [`link`].
pub(crate) struct ChunkWriter {
    tx: SyncSender<Msg>,
    spare: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the next stage of the pipeline stopped",
    )
}

impl ChunkWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        self.tx.send(Msg::Data(full)).map_err(|_| gone())
    }

    /// Sends what is buffered and the end marker.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send_buf()?;
        }
        self.tx.send(Msg::End).map_err(|_| gone())
    }

    /// Tells the receiver this stage failed with `e` (it reads it as its own read error).
    pub(crate) fn fail(self, e: &io::Error) {
        let _ = self.tx.send(Msg::Failed(e.kind(), e.to_string()));
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK {
            self.send_buf()?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum ReadState {
    Open,
    Ended,
}

/// The receiving end of [`link`]: a reader of what was written, which fails if the writer
/// failed or went away without [`ChunkWriter::finish`].
pub(crate) struct ChunkReader {
    rx: Receiver<Msg>,
    back: Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    state: ReadState,
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.buf.len() {
            if let ReadState::Ended = self.state {
                return Ok(&[]);
            }
            match self.rx.recv() {
                Ok(Msg::Data(next)) => {
                    let mut used = std::mem::replace(&mut self.buf, next);
                    used.clear();
                    // The sender may be gone already; then the buffer is simply freed.
                    let _ = self.back.send(used);
                    self.pos = 0;
                }
                Ok(Msg::End) => self.state = ReadState::Ended,
                Ok(Msg::Failed(kind, text)) => return Err(io::Error::new(kind, text)),
                Err(_) => {
                    return Err(io::Error::other(
                        "the previous stage of the pipeline stopped without finishing",
                    ))
                }
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(out.len());
        out[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The backup's store stage: compresses the tar bytes `input` receives, hashes (sha256) and
/// counts the stored bytes and writes them to `out`. Returns `out` (flushed), the stored
/// bytes' sha256 and their count once `input`'s sender finished; if the sender failed, returns
/// that failure as a write error (the caller reports the sender's own error instead) and
/// leaves `out` incomplete.
pub(crate) fn store<W: Write>(
    input: ChunkReader,
    compression: Compression,
    out: W,
) -> Result<(W, String, u64), ArchiveError> {
    let write = |source| ArchiveError::Write { source };
    let sink = HashingWriter::new(io::BufWriter::with_capacity(BUF_SIZE, out));
    let mut encoder = compression.encoder(sink).map_err(write)?;
    let mut input = input;
    loop {
        let chunk = input.fill_buf().map_err(write)?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        encoder.write_all(chunk).map_err(write)?;
        input.consume(n);
    }
    let (out, sha256, count) = encoder.finish().map_err(write)?.into_parts();
    let out = out.into_inner().map_err(|e| write(e.into_error()))?;
    Ok((out, sha256, count))
}

/// What [`unpack`] saw of the stored bytes.
pub(crate) struct Unpacked {
    /// sha256 of every stored byte read (the whole file, unless reading it failed).
    pub sha256: String,
    pub count: u64,
    /// Reading the stored bytes failed (not the archive's fault).
    pub read_error: Option<io::Error>,
    /// The decompressor's first error: the archive is corrupt.
    pub decompress_error: Option<String>,
}

/// Reader that hashes and counts what passes and keeps the first error so a real I/O failure
/// is not mistaken for corruption.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    error: Option<io::Error>,
}

impl<R: Read> Read for Hashing<R> {
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

/// The verify/restore unpack stage: reads `stored`, hashes it and decompresses it into `out`.
/// After the decompressed stream ends (or fails, or the next stage stops reading), the rest of
/// the stored bytes is still read and hashed, so that the hash covers the whole file.
///
/// `Err` only when the decompressor cannot even start.
pub(crate) fn unpack<R: Read>(
    stored: R,
    compression: Compression,
    mut out: ChunkWriter,
) -> Result<Unpacked, ArchiveError> {
    let mut hr = Hashing {
        inner: stored,
        hasher: Sha256::new(),
        count: 0,
        error: None,
    };
    let mut decompress_error = None;
    {
        let decoder = compression.decoder(&mut hr);
        let mut decoder = match decoder {
            Ok(d) => d,
            Err(source) => {
                return Err(ArchiveError::Decompress {
                    algorithm: compression.algorithm(),
                    source,
                })
            }
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match decoder.read(&mut buf) {
                Ok(0) => {
                    let _ = out.finish();
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    decompress_error = Some(e.to_string());
                    out.fail(&e);
                    break;
                }
            };
            if out.write_all(&buf[..n]).is_err() {
                // The walk stopped (at a problem it reports); only the hash is still owed.
                break;
            }
        }
    }
    if hr.error.is_none() {
        let _ = io::copy(&mut hr, &mut io::sink());
    }
    Ok(Unpacked {
        sha256: hex::encode(hr.hasher.finalize()),
        count: hr.count,
        read_error: hr.error,
        decompress_error,
    })
}

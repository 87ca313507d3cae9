//! Stages of a data path on their own threads, connected by bounded channels of owned chunks
//! (issue #14: `verify` did everything in series on one thread).
//!
//! A stage hands bytes on as [`CHUNK`]-byte buffers through a channel of [`DEPTH`] slots; the
//! receiver gives every buffer back through a second channel, so the same few buffers go round
//! and memory stays at about `(DEPTH + 2) × CHUNK` per link whatever the volume holds. Verify
//! and restore: [`unpack`] reads the stored bytes, hashes them and decompresses them into a
//! [`ChunkWriter`]; the tar walk reads the [`ChunkReader`]. (A backup stays on one thread: see
//! [`super::stream_backup_each`].)
//!
//! An end is explicit: the sender's [`ChunkWriter::finish`] says "that was all". A receiver
//! that sees the channel close without it knows its sender failed (that sender's error is the
//! one to report) and stops without finishing its own output.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

use sha2::{Digest, Sha256};

use super::{ArchiveError, Compression};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn bytes_come_out_in_order_across_chunks() {
        let data = pattern(3 * CHUNK + 12_345);
        let (mut w, mut r) = link();
        let sent = data.clone();
        let sender = std::thread::spawn(move || {
            // Odd write sizes, so that writes straddle chunk boundaries.
            for part in sent.chunks(99_991) {
                w.write_all(part).unwrap();
            }
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        assert_eq!(got, data);
    }

    /// A stage that dies must not look like a stream that ended: a backup of a cut stream
    /// would otherwise be stored as complete.
    #[test]
    fn a_sender_gone_without_finish_is_an_error_not_an_end() {
        let (mut w, mut r) = link();
        w.write_all(&pattern(CHUNK + 10)).unwrap();
        drop(w);
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("without finishing"), "{e}");

        let (mut w, mut r) = link();
        w.write_all(b"abc").unwrap();
        w.fail(&io::Error::other("zstd: corrupt block"));
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "zstd: corrupt block");
    }

    /// The unpack stage hashes the whole stored file even when the walk stops reading early
    /// (a restore stops at the first problem), and reports a corrupt stream as corrupt.
    #[test]
    fn unpack_hashes_every_stored_byte() {
        let data = pattern(3 * CHUNK);
        let mut enc = Compression::Zstd { level: 1 }.encoder(Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        let stored = enc.finish().unwrap();
        let want = hex::encode(Sha256::digest(&stored));

        let (w, r) = link();
        let reader = std::thread::spawn(move || {
            let mut r = r;
            let mut first = vec![0u8; 1000];
            r.read_exact(&mut first).unwrap();
            drop(r);
            first
        });
        let u = unpack(&stored[..], Compression::Zstd { level: 1 }, w).unwrap();
        assert_eq!(reader.join().unwrap(), data[..1000]);
        assert_eq!((u.sha256, u.count), (want, stored.len() as u64));
        assert!(u.read_error.is_none() && u.decompress_error.is_none());

        let mut bad = stored.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let (w, mut r) = link();
        let reader = std::thread::spawn(move || r.read_to_end(&mut Vec::new()).is_err());
        let u = unpack(&bad[..], Compression::Zstd { level: 1 }, w).unwrap();
        assert!(
            reader.join().unwrap(),
            "the walk saw the stream end cleanly"
        );
        assert!(u.decompress_error.is_some());
        assert_eq!(u.count, bad.len() as u64);
    }
}

//! Reading a stored archive on three threads (issue #14: `verify` did everything in series on
//! one thread, at 0.45× the speed of hashing the same bytes once).
//!
//! [`unpacked_walk`]: one thread reads the stored bytes and hashes them, a second decompresses
//! them, and the caller's tar walk (which hashes each file for `verify`, or feeds the helper
//! pod's `tar -x` for a restore) reads the result on this thread. Hashing the stored bytes,
//! decompressing and walking cost about 0.3, 0.2 and 0.3 s of CPU for the 540 MB mixed set here
//! (perf: 37/25/38%), so two cores check it in about half the time of the sum (0.5 s, not
//! 0.85 s; benches/results/verify.md), and three would in about the time of the walk alone.
//!
//! A stage hands bytes on as [`CHUNK`]-byte buffers through a channel of [`DEPTH`] slots; the
//! receiver gives every buffer back through a second channel, so the same few buffers go round
//! and memory stays at about `(DEPTH + 2) × CHUNK` whatever the volume holds. The decompressor
//! writes straight into those buffers.
//!
//! An end is explicit: [`ChunkWriter::finish`] says "that was all". A reader that sees the
//! channel close without it knows its writer failed and fails too, so a cut stream never looks
//! like a complete one.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

use sha2::{Digest, Sha256};

use super::verify::HashingReader;
use super::{ArchiveError, Compression};

/// Bytes per buffer handed between the threads.
const CHUNK: usize = 256 << 10;
/// Buffers in flight between the threads.
const DEPTH: usize = 4;

enum Msg {
    /// A buffer and how many of its bytes are data.
    Data(Vec<u8>, usize),
    /// The writer failed with this error; nothing more comes.
    Failed(io::ErrorKind, String),
    /// Everything was sent.
    End,
}

/// Connects two threads: bytes the [`ChunkWriter`] takes in come out of the [`ChunkReader`].
fn link() -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = sync_channel(DEPTH);
    let (back_tx, back_rx) = channel();
    (
        ChunkWriter {
            tx,
            spare: back_rx,
            buf: vec![0; CHUNK],
            filled: 0,
        },
        ChunkReader {
            rx,
            back: back_tx,
            buf: Vec::new(),
            len: 0,
            pos: 0,
            ended: false,
        },
    )
}

/// The sending end of [`link`].
struct ChunkWriter {
    tx: SyncSender<Msg>,
    spare: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    filled: usize,
}

/// The reading end went away (the walk stopped at a problem it reports).
struct Gone;

impl ChunkWriter {
    fn send_buf(&mut self) -> Result<(), Gone> {
        let next = self.spare.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let full = std::mem::replace(&mut self.buf, next);
        let len = std::mem::take(&mut self.filled);
        self.tx.send(Msg::Data(full, len)).map_err(|_| Gone)
    }

    /// One read of `src` straight into the current buffer (sent when full): the read's own
    /// result (`Ok(0)` at the end of `src`), or `Err(Gone)`.
    fn read_from(&mut self, src: &mut impl Read) -> Result<io::Result<usize>, Gone> {
        if self.filled == CHUNK {
            self.send_buf()?;
        }
        let read = src.read(&mut self.buf[self.filled..]);
        if let Ok(n) = read {
            self.filled += n;
        }
        Ok(read)
    }

    /// Sends what is buffered and the end marker.
    fn finish(mut self) -> Result<(), Gone> {
        if self.filled > 0 {
            self.send_buf()?;
        }
        self.tx.send(Msg::End).map_err(|_| Gone)
    }

    /// Tells the reader this stage failed with `e` (it reads it as its own read error).
    fn fail(self, e: &io::Error) {
        let _ = self.tx.send(Msg::Failed(e.kind(), e.to_string()));
    }
}

/// The receiving end of [`link`]: a reader of what was sent, which fails if the writer failed
/// or went away without [`ChunkWriter::finish`].
pub(crate) struct ChunkReader {
    rx: Receiver<Msg>,
    back: Sender<Vec<u8>>,
    buf: Vec<u8>,
    len: usize,
    pos: usize,
    ended: bool,
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.len {
            if self.ended {
                return Ok(&[]);
            }
            match self.rx.recv() {
                Ok(Msg::Data(next, len)) => {
                    let used = std::mem::replace(&mut self.buf, next);
                    // The writer may be gone already; then the buffer is simply freed.
                    if !used.is_empty() {
                        let _ = self.back.send(used);
                    }
                    (self.len, self.pos) = (len, 0);
                }
                Ok(Msg::End) => self.ended = true,
                Ok(Msg::Failed(kind, text)) => return Err(io::Error::new(kind, text)),
                Err(_) => {
                    return Err(io::Error::other(
                        "the archive's reading thread stopped without finishing",
                    ))
                }
            }
        }
        Ok(&self.buf[self.pos..self.len])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.len);
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

/// What the reading threads saw of the stored bytes.
pub(crate) struct Unpacked {
    /// sha256 of every stored byte read (the whole file, unless reading it failed).
    pub sha256: String,
    pub count: u64,
    /// Reading the stored bytes failed (not the archive's fault).
    pub read_error: Option<io::Error>,
    /// The decompressor's first error: the archive is corrupt.
    pub decompress_error: Option<String>,
}

/// Reads `stored` into `out`, hashing it. After the next stage stops taking bytes (at the end
/// of the compressed stream, at a corruption, or when the walk stops at a problem), the rest
/// is still read and hashed, so that the hash covers the whole file.
fn read_hashed<R: Read>(stored: R, mut out: ChunkWriter) -> (String, u64, Option<io::Error>) {
    let mut hr = HashingReader {
        inner: stored,
        hasher: Sha256::new(),
        count: 0,
        error: None,
    };
    let error = pump(&mut hr, &mut out);
    finish_or_fail(out, error.as_ref());
    if hr.error.is_none() {
        let _ = io::copy(&mut hr, &mut io::sink());
    }
    (hex::encode(hr.hasher.finalize()), hr.count, hr.error)
}

/// Moves `src` into `out` until `src` ends or fails, or `out`'s reader is gone. Returns the
/// error of `src`, if any.
fn pump(src: &mut impl Read, out: &mut ChunkWriter) -> Option<io::Error> {
    loop {
        match out.read_from(src) {
            Ok(Ok(0)) => return None,
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Some(e),
            Err(Gone) => return None,
        }
    }
}

/// Ends `out`: a failure if `error`, the end marker otherwise.
fn finish_or_fail(out: ChunkWriter, error: Option<&io::Error>) {
    match error {
        Some(e) => out.fail(e),
        None => {
            let _ = out.finish();
        }
    }
}

/// Decompresses `stored` into `out`; the decompressor's error, if any.
fn decompress(
    stored: ChunkReader,
    compression: Compression,
    mut out: ChunkWriter,
) -> Option<String> {
    let error = match compression.decoder(stored) {
        Ok(mut decoder) => pump(&mut decoder, &mut out),
        Err(e) => Some(e),
    };
    finish_or_fail(out, error.as_ref());
    error.map(|e| e.to_string())
}

/// A thread's result; its panic goes on in this thread.
fn joined<T>(r: std::thread::Result<T>) -> T {
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `walk` over the decompressed tar stream of `stored` while other threads read and hash
/// the stored bytes ([`read_hashed`]) and decompress them ([`decompress`]; not for an
/// uncompressed archive). Returns the walk's result and what those threads saw.
pub(crate) fn unpacked_walk<R: Read + Send, T>(
    stored: R,
    compression: Compression,
    walk: impl FnOnce(ChunkReader) -> T,
) -> Result<(T, Unpacked), ArchiveError> {
    let spawn_failed = |source| ArchiveError::Read { source };
    // A bucket's reader blocks on the async runtime of the thread that opened it: the reading
    // thread runs in the same runtime context.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let read_hashed = move |stored, out| {
        let _entered = runtime.as_ref().map(|r| r.enter());
        read_hashed(stored, out)
    };
    let (out, tar) = link();
    std::thread::scope(|scope| {
        let (reading, decompressing) = if compression == Compression::None {
            let reading = std::thread::Builder::new()
                .name("pvbackup-read".into())
                .spawn_scoped(scope, move || read_hashed(stored, out))
                .map_err(spawn_failed)?;
            (reading, None)
        } else {
            let (raw_out, raw) = link();
            let reading = std::thread::Builder::new()
                .name("pvbackup-read".into())
                .spawn_scoped(scope, move || read_hashed(stored, raw_out))
                .map_err(spawn_failed)?;
            let decompressing = std::thread::Builder::new()
                .name("pvbackup-unpack".into())
                .spawn_scoped(scope, move || decompress(raw, compression, out))
                .map_err(spawn_failed)?;
            (reading, Some(decompressing))
        };
        let walked = walk(tar);
        let decompress_error = decompressing.and_then(|d| joined(d.join()));
        let (sha256, count, read_error) = joined(reading.join());
        Ok((
            walked,
            Unpacked {
                sha256,
                count,
                read_error,
                decompress_error,
            },
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        let mut enc = Compression::Zstd { level: 1 }.encoder(Vec::new()).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn bytes_come_out_in_order_across_chunks() {
        let data = pattern(3 * CHUNK + 12_345);
        let stored = zstd(&data);
        let (got, u) = unpacked_walk(&stored[..], Compression::Zstd { level: 1 }, |mut r| {
            let mut got = Vec::new();
            // Odd read sizes, so that reads straddle chunk boundaries.
            let mut buf = vec![0u8; 99_991];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break got;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
        .unwrap();
        assert_eq!(got, data);
        assert_eq!(u.sha256, hex::encode(Sha256::digest(&stored)));
        assert_eq!(u.count, stored.len() as u64);
        assert!(u.read_error.is_none() && u.decompress_error.is_none());
    }

    /// A writer that dies must not look like a stream that ended: a cut stream would otherwise
    /// be checked as complete.
    #[test]
    fn a_writer_gone_without_finish_is_an_error_not_an_end() {
        let (mut w, mut r) = link();
        assert!(matches!(w.read_from(&mut &pattern(CHUNK)[..]), Ok(Ok(n)) if n == CHUNK));
        assert!(matches!(w.read_from(&mut &b"abc"[..]), Ok(Ok(3))));
        drop(w);
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("without finishing"), "{e}");

        let (mut w, mut r) = link();
        assert!(matches!(w.read_from(&mut &b"abc"[..]), Ok(Ok(3))));
        w.fail(&io::Error::other("zstd: corrupt block"));
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "zstd: corrupt block");
    }

    /// The stored file is hashed whole even when the walk stops reading early (a restore stops
    /// at the first problem), and a corrupt stream is reported as corrupt, not as an end.
    #[test]
    fn every_stored_byte_is_hashed_and_corruption_is_an_error() {
        let data = pattern(3 * CHUNK);
        let stored = zstd(&data);
        let want = hex::encode(Sha256::digest(&stored));
        let (first, u) = unpacked_walk(&stored[..], Compression::Zstd { level: 1 }, |mut r| {
            let mut first = vec![0u8; 1000];
            r.read_exact(&mut first).unwrap();
            first
        })
        .unwrap();
        assert_eq!(first, data[..1000]);
        assert_eq!((u.sha256, u.count), (want, stored.len() as u64));
        assert!(u.decompress_error.is_none());

        let mut bad = stored.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let (failed, u) = unpacked_walk(&bad[..], Compression::Zstd { level: 1 }, |mut r| {
            r.read_to_end(&mut Vec::new()).is_err()
        })
        .unwrap();
        assert!(failed, "the walk saw the stream end cleanly");
        assert!(u.decompress_error.is_some());
        assert_eq!(u.count, bad.len() as u64);
        assert_eq!(u.sha256, hex::encode(Sha256::digest(&bad)));
    }

    /// A read error of the stored bytes is kept as such: it is not the archive's fault.
    #[test]
    fn a_read_error_is_not_corruption() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(b'x');
                self.0 -= n;
                Ok(n)
            }
        }
        let ((), u) = unpacked_walk(Failing(CHUNK + 7), Compression::None, |mut r| {
            assert!(r.read_to_end(&mut Vec::new()).is_err());
        })
        .unwrap();
        assert_eq!(u.read_error.unwrap().to_string(), "disk on fire");
        assert_eq!(u.count, (CHUNK + 7) as u64);
    }
}

//! A table of items sorted by byte key, on disk: written once in key order, then read in
//! order or looked up by key, in memory that grows only with one key per block of items.
//!
//! A restore needs the manifest's entries by path in archive order (the gate of the streamed
//! extraction), the volume's listing by path (a hard link's target), and both in path order
//! (the final compare). A million entries held as records cost hundreds of MiB; here they
//! live in an unnamed temporary file (deleted by the OS when closed, even if the process is
//! killed) and memory holds the first key of every block. Reads use `pread` (not `mmap`,
//! whose resident pages would count in the process's RSS), so the OS page cache holds the
//! file, not the process.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Items per block of a table looked up once per entry (the manifest's, by the gate): a
/// lookup reads one block (a few KiB) and parses only the item it wants.
pub const LOOKED_UP: u64 = 32;
/// Items per block of a table mostly read in order (the listing, the hashes): a lookup (a hard
/// link's target) is rare, so the keys kept in memory are few.
pub const READ_IN_ORDER: u64 = 1024;

/// The run budget of the [`crate::archive::Spool`]s that sort a restore's listing and hashes
/// into tables: a quarter of the default, because a restore holds a spool next to its tables,
/// the archive's stream and the exec sessions' buffers. A smaller budget makes more runs, each
/// with a 64 KiB read buffer while they merge: 3 MiB keeps both near 4 MiB at a million entries.
pub const SPOOL_BYTES: usize = 3 << 20;

/// Writes a [`Table`]: items pushed in strictly increasing key order.
pub struct TableWriter<T> {
    block: u64,
    out: BufWriter<File>,
    blocks: Vec<(Vec<u8>, u64)>,
    pos: u64,
    len: u64,
    last: Option<Vec<u8>>,
    _item: PhantomData<fn(&T)>,
}

/// A sorted table written by [`TableWriter`]: `(key, item)`s, item `i` being the `i`-th
/// smallest key.
pub struct Table<T> {
    block: u64,
    file: File,
    /// First key of each block, and the block's offset.
    blocks: Vec<(Vec<u8>, u64)>,
    end: u64,
    len: u64,
    _item: PhantomData<fn() -> T>,
}

impl<T: Serialize> TableWriter<T> {
    /// A table of `block` items per block ([`LOOKED_UP`], [`READ_IN_ORDER`]).
    pub fn new(block: u64) -> io::Result<Self> {
        Ok(TableWriter {
            block: block.max(1),
            out: BufWriter::with_capacity(1 << 16, tempfile::tempfile()?),
            blocks: Vec::new(),
            pos: 0,
            len: 0,
            last: None,
            _item: PhantomData,
        })
    }

    /// Appends `item` under `key`, which must be greater than every key before it
    /// (`InvalidInput` otherwise: the caller says what a repeated key means).
    pub fn push(&mut self, key: &[u8], item: &T) -> io::Result<()> {
        if self.last.as_deref().is_some_and(|l| l >= key) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{:?} is out of order or repeated",
                    String::from_utf8_lossy(key)
                ),
            ));
        }
        if self.len.is_multiple_of(self.block) {
            self.blocks.push((key.to_vec(), self.pos));
        }
        let payload = serde_json::to_vec(item)?;
        self.out.write_all(&(key.len() as u32).to_le_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out.write_all(&payload)?;
        self.pos += 8 + key.len() as u64 + payload.len() as u64;
        self.len += 1;
        let last = self.last.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(key);
        Ok(())
    }

    pub fn finish(self) -> io::Result<Table<T>> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(Table {
            block: self.block,
            file,
            blocks: self.blocks,
            end: self.pos,
            len: self.len,
            _item: PhantomData,
        })
    }
}

impl<T: DeserializeOwned> Table<T> {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The item under `key` and its place in key order.
    pub fn get(&self, key: &[u8]) -> io::Result<Option<(u64, T)>> {
        let b = self.blocks.partition_point(|(k, _)| k.as_slice() <= key);
        if b == 0 {
            return Ok(None);
        }
        let b = b - 1;
        let start = self.blocks[b].1;
        let end = self.blocks.get(b + 1).map_or(self.end, |n| n.1);
        let mut buf = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        let mut r = &buf[..];
        let mut i = b as u64 * self.block;
        while let Some((k, payload)) = record(&mut r)? {
            match k.cmp(key) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Equal => {
                    return Ok(Some((i, serde_json::from_slice(payload)?)))
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(None)
    }

    /// Every `(key, item)` in key order.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            r: BufReader::with_capacity(
                1 << 16,
                At {
                    file: &self.file,
                    pos: 0,
                    end: self.end,
                },
            ),
            _item: PhantomData,
        }
    }
}

/// The next `(key, payload)` of a block in memory.
fn record<'a>(r: &mut &'a [u8]) -> io::Result<Option<(&'a [u8], &'a [u8])>> {
    if r.is_empty() {
        return Ok(None);
    }
    let mut field = || -> io::Result<&'a [u8]> {
        let n = r
            .get(..4)
            .map(|n| u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let f = r
            .get(4..4 + n)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        *r = &r[4 + n..];
        Ok(f)
    };
    let key = field()?;
    Ok(Some((key, field()?)))
}

/// A reader of `file` from `pos` with its own offset (a lookup's `pread` never moves it).
struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// [`Table::iter`].
pub struct Iter<'a, T> {
    r: BufReader<At<'a>>,
    _item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Iterator for Iter<'_, T> {
    type Item = io::Result<(Vec<u8>, T)>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut n = [0u8; 4];
        match self.r.read_exact(&mut n) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(e)),
        }
        let mut read = || -> io::Result<(Vec<u8>, T)> {
            let mut key = vec![0u8; u32::from_le_bytes(n) as usize];
            self.r.read_exact(&mut key)?;
            let mut m = [0u8; 4];
            self.r.read_exact(&mut m)?;
            let mut payload = vec![0u8; u32::from_le_bytes(m) as usize];
            self.r.read_exact(&mut payload)?;
            Ok((key, serde_json::from_slice(&payload)?))
        };
        Some(read())
    }
}

/// A forward-only reader of a sorted stream: [`Ahead::find`] is asked for increasing keys.
pub struct Ahead<I: Iterator> {
    it: std::iter::Peekable<I>,
}

impl<T, I: Iterator<Item = io::Result<(Vec<u8>, T)>>> Ahead<I> {
    pub fn new(it: I) -> Self {
        Ahead { it: it.peekable() }
    }

    /// The item under `key`, skipping smaller keys; `key` must not be smaller than the last
    /// one asked for.
    pub fn find(&mut self, key: &[u8]) -> io::Result<Option<T>> {
        loop {
            match self.it.peek() {
                Some(Ok((k, _))) if k.as_slice() < key => {
                    self.it.next();
                }
                Some(Ok((k, _))) if k.as_slice() == key => {
                    return Ok(self.it.next().and_then(|r| r.ok()).map(|(_, t)| t));
                }
                Some(Ok(_)) | None => return Ok(None),
                Some(Err(_)) => {
                    return Err(self.it.next().expect("peeked").err().expect("an error"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_finds_every_key_and_none_between_them_and_reads_back_in_order() {
        const BLOCK: u64 = LOOKED_UP;
        for n in [0u64, 1, BLOCK - 1, BLOCK, BLOCK + 1, 10 * BLOCK + 7] {
            let mut w: TableWriter<u64> = TableWriter::new(BLOCK).unwrap();
            for i in 0..n {
                w.push(format!("k{:06}", i * 2).as_bytes(), &i).unwrap();
            }
            let t = w.finish().unwrap();
            assert_eq!(t.len(), n);
            for i in 0..n {
                assert_eq!(
                    t.get(format!("k{:06}", i * 2).as_bytes()).unwrap(),
                    Some((i, i))
                );
                assert_eq!(
                    t.get(format!("k{:06}", i * 2 + 1).as_bytes()).unwrap(),
                    None
                );
            }
            assert_eq!(t.get(b"a").unwrap(), None);
            assert_eq!(t.get(b"z").unwrap(), None);
            let all: Vec<(Vec<u8>, u64)> = t.iter().map(Result::unwrap).collect();
            assert_eq!(all.len() as u64, n);
            assert!(all
                .iter()
                .enumerate()
                .all(|(i, (k, v))| *v == i as u64 && *k == format!("k{:06}", i * 2).as_bytes()));
            // Lookups between the reads do not move the reader.
            let mut it = t.iter();
            if n > 2 {
                it.next();
                t.get(b"k000000").unwrap();
                assert_eq!(it.next().unwrap().unwrap().1, 1);
            }
            let mut ahead = Ahead::new(t.iter());
            assert_eq!(ahead.find(b"k000001").unwrap(), None);
            if n > 3 {
                assert_eq!(ahead.find(b"k000004").unwrap(), Some(2));
                assert_eq!(ahead.find(b"k000004").unwrap(), None);
            }
        }
    }

    #[test]
    fn a_key_out_of_order_or_repeated_is_refused() {
        let mut w: TableWriter<u8> = TableWriter::new(LOOKED_UP).unwrap();
        w.push(b"b", &1).unwrap();
        for k in [&b"b"[..], b"a"] {
            let e = w.push(k, &2).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
    }
}

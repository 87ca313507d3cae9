//! Entries in path order with memory bounded whatever their number: an external sort
//! ([`Spool`]: sorted runs spilled to unnamed temporary files, then a k-way merge) and the
//! restore-safety rules checked in one pass over the sorted stream ([`SortedRules`]).
//!
//! `tar -c` walks a directory in `readdir` order, which is not path order, while a schema-2
//! manifest lists entries by the raw bytes of their canonical path (see [`crate::manifest`]).
//! Collecting a million entries to sort them costs hundreds of MiB; a spool keeps at most
//! [`RUN_BYTES`] of them in memory and a small read buffer per spilled run.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::safety::{check_entry_safe, refuse, UnsafeEntry, UnsafeReason};
use super::{canonical_key, EntryKind, EntryRecord};

/// Bytes of buffered items (keys and serialized payloads) a [`Spool`] holds before it sorts
/// them and spills them as a run.
pub const RUN_BYTES: usize = 8 << 20;
/// Read buffer of each spilled run during the merge.
const RUN_READ_BUF: usize = 64 << 10;
/// Per buffered item, what a `(Vec, u64, Vec)` costs beyond its bytes.
const ITEM_OVERHEAD: usize = 64;

/// A serialized item: its key, its place in push order, and its JSON.
type Record = (Vec<u8>, u64, Vec<u8>);

/// An item of a [`Spool`] as it comes out: its sort key, its place in push order, and the
/// item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled<T> {
    pub key: Vec<u8>,
    /// 0 for the first item pushed, 1 for the next, …: ties between equal keys come out in
    /// this order.
    pub seq: u64,
    pub item: T,
}

/// External sort by byte key. Items are serialized (JSON) as they are pushed; when the
/// buffered bytes pass the run budget they are sorted and written to an unnamed temporary file
/// (deleted by the OS when closed, even if the process is killed).
pub struct Spool<T> {
    buf: Vec<Record>,
    bytes: usize,
    budget: usize,
    runs: Vec<File>,
    seq: u64,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Default for Spool<T> {
    fn default() -> Self {
        Spool::with_budget(RUN_BYTES)
    }
}

impl<T: Serialize + DeserializeOwned> Spool<T> {
    /// A spool that spills every `budget` bytes (tests use small budgets to get many runs).
    pub fn with_budget(budget: usize) -> Self {
        Spool {
            buf: Vec::new(),
            bytes: 0,
            budget: budget.max(1),
            runs: Vec::new(),
            seq: 0,
            _item: std::marker::PhantomData,
        }
    }

    /// Items pushed so far.
    pub fn len(&self) -> u64 {
        self.seq
    }

    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }

    pub fn push(&mut self, key: Vec<u8>, item: &T) -> io::Result<()> {
        let payload = serde_json::to_vec(item)?;
        self.bytes += key.len() + payload.len() + ITEM_OVERHEAD;
        self.buf.push((key, self.seq, payload));
        self.seq += 1;
        if self.bytes >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buf
            .sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut w = BufWriter::with_capacity(RUN_READ_BUF, tempfile::tempfile()?);
        for (key, seq, payload) in self.buf.drain(..) {
            write_record(&mut w, &key, seq, &payload)?;
        }
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        f.rewind()?;
        self.runs.push(f);
        self.bytes = 0;
        self.buf.shrink_to(1024);
        Ok(())
    }

    /// Every pushed item, by key (then push order).
    pub fn finish(mut self) -> io::Result<Sorted<T>> {
        let mut memory = None;
        if self.runs.is_empty() {
            self.buf
                .sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            memory = Some(std::mem::take(&mut self.buf).into_iter());
        } else if !self.buf.is_empty() {
            self.spill()?;
        }
        let mut s = Sorted {
            memory,
            runs: self
                .runs
                .into_iter()
                .map(|f| BufReader::with_capacity(RUN_READ_BUF, f))
                .collect(),
            heads: Vec::new(),
            heap: BinaryHeap::new(),
            _item: std::marker::PhantomData,
        };
        s.heads = (0..s.runs.len()).map(|_| None).collect();
        for i in 0..s.runs.len() {
            s.advance(i)?;
        }
        Ok(s)
    }
}

fn write_record(w: &mut impl Write, key: &[u8], seq: u64, payload: &[u8]) -> io::Result<()> {
    w.write_all(&(key.len() as u32).to_le_bytes())?;
    w.write_all(key)?;
    w.write_all(&seq.to_le_bytes())?;
    w.write_all(&(payload.len() as u32).to_le_bytes())?;
    w.write_all(payload)
}

/// The next record of a run, `None` at its end.
fn read_record(r: &mut impl Read) -> io::Result<Option<Record>> {
    let mut n = [0u8; 4];
    match r.read_exact(&mut n) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut key = vec![0u8; u32::from_le_bytes(n) as usize];
    r.read_exact(&mut key)?;
    let mut seq = [0u8; 8];
    r.read_exact(&mut seq)?;
    r.read_exact(&mut n)?;
    let mut payload = vec![0u8; u32::from_le_bytes(n) as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((key, u64::from_le_bytes(seq), payload)))
}

/// The merge of a [`Spool`]'s runs: an iterator over its items by key.
pub struct Sorted<T> {
    /// Nothing was spilled: the items, sorted in memory.
    memory: Option<std::vec::IntoIter<Record>>,
    runs: Vec<BufReader<File>>,
    /// Each run's next payload (its key and seq are in `heap`).
    heads: Vec<Option<Vec<u8>>>,
    heap: BinaryHeap<Reverse<(Vec<u8>, u64, usize)>>,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T> Sorted<T> {
    fn advance(&mut self, run: usize) -> io::Result<()> {
        if let Some((key, seq, payload)) = read_record(&mut self.runs[run])? {
            self.heads[run] = Some(payload);
            self.heap.push(Reverse((key, seq, run)));
        }
        Ok(())
    }
}

impl<T: DeserializeOwned> Iterator for Sorted<T> {
    type Item = io::Result<Spooled<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, seq, payload) = match &mut self.memory {
            Some(items) => items.next()?,
            None => {
                let Reverse((key, seq, run)) = self.heap.pop()?;
                let payload = self.heads[run].take().expect("a head per heap item");
                if let Err(e) = self.advance(run) {
                    return Some(Err(e));
                }
                (key, seq, payload)
            }
        };
        Some(
            serde_json::from_slice(&payload)
                .map(|item| Spooled { key, seq, item })
                .map_err(io::Error::from),
        )
    }
}

/// A hard link, spooled by its target's key so that [`SortedRules`] meets it when the sorted
/// entries reach its target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkRef {
    /// The link's own path (for the error).
    pub path: String,
    /// Its place in archive order.
    pub seq: u64,
    /// Its target as recorded (for the error).
    pub target: String,
}

impl LinkRef {
    /// A hard link's [`LinkRef`] (`seq` its place in archive order, where known) and its
    /// target's key, to spool by; `None` for any other entry.
    pub fn of(e: &EntryRecord, seq: u64) -> Option<(Vec<u8>, LinkRef)> {
        if e.kind != EntryKind::Hardlink {
            return None;
        }
        let target = canonical_key(&e.raw_link_target()?);
        Some((
            target,
            LinkRef {
                path: e.path.clone(),
                seq,
                target: e.link_target.clone().unwrap_or_default(),
            },
        ))
    }
}

/// The rules of [`super::safety`] on entries coming in path order, in bounded memory:
/// [`check_entry_safe`] on each; no entry listed twice; nothing beneath a symlink (the
/// symlinks still open are prefixes of the current path, so at most as many as it has
/// components); and each hard link's target, met when the sorted entries reach it, is a
/// non-directory entry that came earlier in the archive (when `archive_order` is known).
///
/// Hard links are spooled by target ([`Spool<LinkRef>`]) while the archive is read; their
/// merge is walked in step with the entries.
pub struct SortedRules {
    last: Option<Vec<u8>>,
    /// Symlink keys that may still have entries beneath them, outermost first.
    symlinks: Vec<Vec<u8>>,
    links: std::iter::Peekable<Sorted<LinkRef>>,
    /// Whether `seq` of entries and links is archive order (false: only existence is checked).
    archive_order: bool,
}

/// An entry listed twice in a sorted stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub path: String,
}

/// What [`SortedRules`] refuses, or reading the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SortedProblem {
    #[error(transparent)]
    Unsafe(UnsafeEntry),
    #[error("entry {:?} is listed twice", .0.path)]
    Duplicate(Duplicate),
    #[error(
        "reading the entries back from temporary files failed: {0}; check that the temporary \
         directory (TMPDIR, else /tmp) has free space, then retry"
    )]
    Io(io::Error),
}

impl SortedRules {
    /// `links`: every hard link of the stream, by target key (see [`LinkRef`]).
    pub fn new(links: Sorted<LinkRef>, archive_order: bool) -> Self {
        SortedRules {
            last: None,
            symlinks: Vec::new(),
            links: links.peekable(),
            archive_order,
        }
    }

    /// Checks the next entry, `key` its canonical key and `seq` its place in archive order.
    pub fn check(&mut self, key: &[u8], seq: u64, e: &EntryRecord) -> Result<(), SortedProblem> {
        check_entry_safe(e).map_err(SortedProblem::Unsafe)?;
        if self.last.as_deref().is_some_and(|l| l >= key) {
            return Err(SortedProblem::Duplicate(Duplicate {
                path: e.path.clone(),
            }));
        }
        // Keys beneath symlink `s` are exactly those in [s + "/", s + "0"): '0' follows '/'.
        self.symlinks.retain(|s| {
            let mut end = s.clone();
            end.push(b'0');
            key < end.as_slice()
        });
        if let Some(s) = self
            .symlinks
            .iter()
            .find(|s| key.len() > s.len() && key.starts_with(s) && key[s.len()] == b'/')
        {
            return Err(SortedProblem::Unsafe(refuse(
                e,
                UnsafeReason::BeneathSymlink {
                    symlink: String::from_utf8_lossy(s).into_owned(),
                },
            )));
        }
        if e.kind == EntryKind::Symlink {
            self.symlinks.push(key.to_vec());
        }
        self.links_before(key)?;
        while let Some(l) = self.links.next_if(|l| matches!(l, Ok(l) if l.key == key)) {
            let l = l.map_err(SortedProblem::Io)?;
            let later = self.archive_order && seq >= l.item.seq;
            if e.kind == EntryKind::Dir || l.item.path == e.path || later {
                return Err(self.link_problem(l.item));
            }
        }
        self.last = Some(key.to_vec());
        Ok(())
    }

    /// A hard link whose target is not a non-directory entry before it in the archive. In
    /// archive order every such link is "not earlier" (what [`super::ArchiveOrder`] says
    /// first); without it, "unknown" (what [`super::check_entries_safe`] says).
    fn link_problem(&self, l: LinkRef) -> SortedProblem {
        let reason = if self.archive_order {
            UnsafeReason::HardlinkNotEarlier { target: l.target }
        } else {
            UnsafeReason::HardlinkUnknown { target: l.target }
        };
        SortedProblem::Unsafe(UnsafeEntry {
            path: l.path,
            reason,
        })
    }

    /// A link whose target sorts before `key` and was not met names no entry.
    fn links_before(&mut self, key: &[u8]) -> Result<(), SortedProblem> {
        match self.links.peek() {
            Some(Ok(l)) if l.key.as_slice() < key => {
                let l = self
                    .links
                    .next()
                    .expect("peeked")
                    .map_err(SortedProblem::Io)?;
                Err(self.link_problem(l.item))
            }
            Some(Err(_)) => Err(SortedProblem::Io(
                self.links.next().expect("peeked").expect_err("an error"),
            )),
            _ => Ok(()),
        }
    }

    /// After the last entry: any link left names no entry.
    pub fn finish(mut self) -> Result<(), SortedProblem> {
        match self.links.next() {
            Some(l) => Err(self.link_problem(l.map_err(SortedProblem::Io)?.item)),
            None => Ok(()),
        }
    }
}

/// Spools `e` (seq = its archive position) and, for a hard link, its [`LinkRef`].
pub fn spool_entry(
    entries: &mut Spool<EntryRecord>,
    links: &mut Spool<LinkRef>,
    e: &EntryRecord,
) -> io::Result<()> {
    if let Some((target, link)) = LinkRef::of(e, entries.len()) {
        links.push(target, &link)?;
    }
    entries.push(canonical_key(&e.raw_path()), e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::safety::tests::rec;

    #[test]
    fn spool_sorts_across_many_runs_and_keeps_push_order_for_ties() {
        for budget in [1, 200, 1 << 20] {
            let mut s: Spool<u32> = Spool::with_budget(budget);
            // A permutation of 0..5000 (7919 is prime), and each key twice.
            let keys: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % 5000).collect();
            for (i, k) in keys.iter().enumerate() {
                s.push(format!("{k:05}").into_bytes(), &(i as u32)).unwrap();
                s.push(format!("{k:05}").into_bytes(), &(i as u32 + 10_000))
                    .unwrap();
            }
            assert_eq!(s.len(), 10_000);
            let out: Vec<Spooled<u32>> = s.finish().unwrap().map(Result::unwrap).collect();
            assert_eq!(out.len(), 10_000, "budget {budget}");
            for w in out.windows(2) {
                assert!(
                    (&w[0].key, w[0].seq) < (&w[1].key, w[1].seq),
                    "budget {budget}"
                );
            }
            for pair in out.chunks(2) {
                assert_eq!(pair[0].key, pair[1].key);
                assert_eq!(pair[0].item + 10_000, pair[1].item, "push order for ties");
            }
        }
    }

    /// Runs the sorted rules over `entries` given in archive order.
    fn sorted_rules(entries: &[EntryRecord]) -> Result<(), SortedProblem> {
        let mut es: Spool<EntryRecord> = Spool::with_budget(300);
        let mut ls: Spool<LinkRef> = Spool::with_budget(300);
        for e in entries {
            spool_entry(&mut es, &mut ls, e).unwrap();
        }
        let mut rules = SortedRules::new(ls.finish().unwrap(), true);
        for s in es.finish().unwrap() {
            let s = s.unwrap();
            rules.check(&s.key, s.seq, &s.item)?;
        }
        rules.finish()
    }

    fn reason(r: Result<(), SortedProblem>) -> Option<UnsafeReason> {
        match r {
            Ok(()) => None,
            Err(SortedProblem::Unsafe(u)) => Some(u.reason),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn sorted_rules_agree_with_the_in_memory_ones() {
        use super::super::safety::{check_entries_safe, ArchiveOrder};
        let d = |p: &str| rec(p, EntryKind::Dir, None);
        let f = |p: &str| rec(p, EntryKind::File, None);
        let sym = |p: &str, t: &str| rec(p, EntryKind::Symlink, Some(t));
        let hard = |p: &str, t: &str| rec(p, EntryKind::Hardlink, Some(t));
        let cases: Vec<(&str, Vec<EntryRecord>)> = vec![
            ("plain", vec![d("."), d("a"), f("a/x"), f("a-b"), f("a/y")]),
            (
                "beneath",
                vec![d("."), sym("a", "/etc"), f("a-b"), f("a/passwd")],
            ),
            (
                "beneath deep",
                vec![d("."), d("a"), sym("a/l", "x"), f("a/l/z")],
            ),
            (
                "beside",
                vec![d("."), sym("a", "/etc"), f("a-b"), f("a0"), f("b")],
            ),
            ("link ok", vec![d("."), f("z"), hard("a", "z")]),
            ("link later", vec![d("."), hard("a", "z"), f("z")]),
            ("link to dir", vec![d("."), d("z"), hard("a", "z")]),
            ("link to nothing", vec![d("."), f("b"), hard("a", "q")]),
            ("link past the end", vec![d("."), f("b"), hard("a", "zz")]),
            ("link to itself", vec![d("."), hard("a", "a")]),
            ("absolute", vec![d("."), f("/etc/x")]),
        ];
        for (name, entries) in cases {
            let mut order = ArchiveOrder::default();
            let memory = entries
                .iter()
                .try_for_each(|e| order.check(e))
                .and_then(|()| check_entries_safe(&entries))
                .err()
                .map(|u| u.reason);
            let sorted = reason(sorted_rules(&entries));
            assert_eq!(
                sorted.as_ref().map(|r| r.rule().name),
                memory.as_ref().map(|r| r.rule().name),
                "{name}: sorted {sorted:?}, in memory {memory:?}"
            );
        }
        assert!(matches!(
            sorted_rules(&[d("."), f("a"), f("./a")]),
            Err(SortedProblem::Duplicate(_))
        ));
    }
}

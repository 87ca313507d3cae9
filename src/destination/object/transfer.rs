//! The sync ↔ async bridge for object storage.
//!
//! Upload: [`UploadWriter`] (a `std::io::Write` used on a blocking thread) fills one part at a
//! time and hands full parts over a channel of capacity 1 to an async task, which uploads at
//! most `concurrency` parts at once and completes the multipart upload only on commit. So
//! memory is at most `part size × (concurrency + 2)` (the part being filled, one in the
//! channel, the ones in flight) whatever the archive's size; a slow store slows the writer
//! down instead of filling memory. An archive smaller than one part is a single PUT. Parts grow (×2 every 1000 parts, the in-flight byte budget staying the same)
//! so that stores with a 10,000-part limit take archives up to ~2.5 TiB at the 8 MiB default.
//!
//! Download: [`DownloadReader`] reads fixed ranges (conditional on the ETag seen at open, so a
//! replaced object is an error, not a splice) with a little read-ahead. Each range is its own
//! request with object_store's retries, so a long download is never one long request.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::multipart::PartId;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStoreExt, PutPayload};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::{block_on, Backend, Context, OpenUploads, READ_AHEAD, READ_CHUNK};
use crate::destination::{DestinationError, ObjectWriter};

/// Part size for part number `index` (0-based): doubles every 1000 parts, at most 64×.
pub fn part_size(base: usize, index: usize) -> usize {
    base << (index / 1000).min(6)
}

pub struct Upload {
    pub store: Arc<dyn Backend>,
    pub path: StorePath,
    pub key: String,
    pub ctx: Arc<Context>,
    pub base_part: usize,
    pub concurrency: usize,
    pub uploads: OpenUploads,
    pub token: u64,
}

pub struct UploadWriter {
    base_part: usize,
    parts_sent: usize,
    buf: Vec<u8>,
    tx: Option<mpsc::Sender<Chunk>>,
    task: Option<JoinHandle<Result<(), DestinationError>>>,
    ctx: Arc<Context>,
    key: String,
}

/// A full part, or (`last`) what remains at commit. The channel closing without a last chunk
/// means the writer was dropped: abort.
struct Chunk {
    data: Bytes,
    last: bool,
}

impl UploadWriter {
    pub fn start(handle: tokio::runtime::Handle, upload: Upload) -> UploadWriter {
        let (tx, rx) = mpsc::channel::<Chunk>(1);
        let base_part = upload.base_part;
        let ctx = upload.ctx.clone();
        let key = upload.key.clone();
        let task = handle.spawn(run(upload, rx));
        UploadWriter {
            base_part,
            parts_sent: 0,
            buf: Vec::new(),
            tx: Some(tx),
            task: Some(task),
            ctx,
            key,
        }
    }

    /// The upload task's own error, once it has stopped taking parts.
    fn task_error(&mut self) -> DestinationError {
        self.tx = None;
        let fallback = || DestinationError::Store {
            message: format!(
                "uploading {} stopped unexpectedly",
                self.ctx.locate(&self.key)
            ),
            permanent: false,
        };
        match self.task.take() {
            Some(t) => match block_on(t) {
                Ok(Ok(Err(e))) => e,
                _ => fallback(),
            },
            None => fallback(),
        }
    }

    fn send(&mut self, last: bool) -> Result<(), DestinationError> {
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let Some(tx) = self.tx.clone() else {
            return Err(self.task_error());
        };
        self.parts_sent += 1;
        match block_on(tx.send(Chunk { data, last }))? {
            Ok(()) => Ok(()),
            Err(_) => Err(self.task_error()),
        }
    }

    fn finish(&mut self) -> Result<(), DestinationError> {
        self.send(true)?;
        self.tx = None;
        let task = self.task.take().ok_or_else(|| DestinationError::Store {
            message: format!("{} was already finished", self.ctx.locate(&self.key)),
            permanent: false,
        })?;
        match block_on(task)? {
            Ok(r) => r,
            Err(e) => Err(DestinationError::Store {
                message: format!("uploading {} failed: {e}", self.ctx.locate(&self.key)),
                permanent: false,
            }),
        }
    }
}

impl Write for UploadWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let cap = part_size(self.base_part, self.parts_sent);
        if self.buf.capacity() == 0 {
            // One allocation per part, not a doubling series of copies.
            self.buf.reserve_exact(cap);
        }
        let n = data.len().min(cap - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == cap {
            self.send(false).map_err(io::Error::other)?;
        }
        Ok(n)
    }

    /// Parts leave when full: cutting a short part here would break the stores' 5 MiB minimum.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for UploadWriter {
    fn commit(mut self: Box<Self>) -> Result<(), DestinationError> {
        self.finish()
    }
}

impl Drop for UploadWriter {
    fn drop(&mut self) {
        // Not committed: closing the channel without a last chunk tells the task to abort the
        // multipart upload; wait (bounded) so that no upload is left open when the process exits.
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = block_on(async {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(20), task).await;
            });
        }
    }
}

struct Multipart {
    id: object_store::MultipartId,
    parts: Vec<Option<PartId>>,
    running: JoinSet<(usize, object_store::Result<PartId>)>,
}

async fn run(up: Upload, mut rx: mpsc::Receiver<Chunk>) -> Result<(), DestinationError> {
    let mut mp: Option<Multipart> = None;
    let result = upload(&up, &mut rx, &mut mp).await;
    if let Some(m) = mp {
        up.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&up.token);
        if result.is_err() {
            let mut running = m.running;
            running.abort_all();
            if let Err(e) = up.store.abort_multipart(&up.path, &m.id).await {
                tracing::warn!(
                    "aborting the multipart upload of {} failed: {}",
                    up.ctx.locate(&up.key),
                    up.ctx.redact(&e.to_string())
                );
            }
        }
    }
    result
}

async fn upload(
    up: &Upload,
    rx: &mut mpsc::Receiver<Chunk>,
    mp: &mut Option<Multipart>,
) -> Result<(), DestinationError> {
    let err = |action: &str, e: &object_store::Error| up.ctx.error(action, &up.key, e);
    let budget = up.base_part * up.concurrency;
    let last = loop {
        let next = match mp.as_mut() {
            Some(m) if !m.running.is_empty() => tokio::select! {
                biased;
                done = m.running.join_next() => {
                    finished(m, done, &err)?;
                    continue;
                }
                c = rx.recv() => c,
            },
            _ => rx.recv().await,
        };
        match next {
            None => {
                return Err(DestinationError::Store {
                    message: format!("upload of {} abandoned", up.ctx.locate(&up.key)),
                    permanent: false,
                })
            }
            Some(Chunk { data, last: true }) => break data,
            Some(Chunk { data, last: false }) => start_part(up, mp, data, budget, &err).await?,
        }
    };
    match mp.as_mut() {
        None => {
            // Smaller than one part: one PUT, atomic by itself.
            up.store
                .put(&up.path, PutPayload::from(last))
                .await
                .map_err(|e| err("upload", &e))?;
        }
        Some(_) => {
            if !last.is_empty() {
                start_part(up, mp, last, usize::MAX, &err).await?;
            }
            let m = mp.as_mut().expect("multipart started");
            while let Some(done) = m.running.join_next().await {
                finished(m, Some(done), &err)?;
            }
            let parts: Vec<PartId> = m
                .parts
                .iter()
                .map(|p| p.clone().expect("every part finished"))
                .collect();
            up.store
                .complete_multipart(&up.path, &m.id, parts)
                .await
                .map_err(|e| err("complete the upload of", &e))?;
        }
    }
    Ok(())
}

type JoinOutcome = Result<(usize, object_store::Result<PartId>), tokio::task::JoinError>;

fn finished(
    m: &mut Multipart,
    done: Option<JoinOutcome>,
    err: &(dyn Fn(&str, &object_store::Error) -> DestinationError + Sync),
) -> Result<(), DestinationError> {
    match done {
        Some(Ok((idx, Ok(part)))) => {
            m.parts[idx] = Some(part);
            Ok(())
        }
        Some(Ok((_, Err(e)))) => Err(err("upload a part of", &e)),
        Some(Err(e)) => Err(DestinationError::Store {
            message: format!("a part upload task failed: {e}"),
            permanent: false,
        }),
        None => Ok(()),
    }
}

async fn start_part(
    up: &Upload,
    mp: &mut Option<Multipart>,
    data: Bytes,
    budget: usize,
    err: &(dyn Fn(&str, &object_store::Error) -> DestinationError + Sync),
) -> Result<(), DestinationError> {
    if mp.is_none() {
        let id = up
            .store
            .create_multipart(&up.path)
            .await
            .map_err(|e| err("start uploading", &e))?;
        up.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(up.token, (up.path.clone(), id.clone()));
        *mp = Some(Multipart {
            id,
            parts: Vec::new(),
            running: JoinSet::new(),
        });
    }
    let m = mp.as_mut().expect("just set");
    // Bytes in flight stay within the budget however large parts have grown (one at least).
    let limit = (budget / data.len().max(1)).max(1);
    while m.running.len() >= limit {
        let done = m.running.join_next().await;
        finished(m, done, err)?;
    }
    let idx = m.parts.len();
    m.parts.push(None);
    let store = up.store.clone();
    let path = up.path.clone();
    let id = m.id.clone();
    m.running.spawn(async move {
        let r = store
            .put_part(&path, &id, idx, PutPayload::from(data))
            .await;
        (idx, r)
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------

pub struct DownloadReader {
    rx: mpsc::Receiver<Result<Bytes, DestinationError>>,
    current: Bytes,
    task: JoinHandle<()>,
}

impl DownloadReader {
    pub fn open(
        store: Arc<dyn Backend>,
        path: StorePath,
        key: &str,
        ctx: Arc<Context>,
    ) -> Result<DownloadReader, DestinationError> {
        let head = {
            let store = store.clone();
            let path = path.clone();
            block_on(async move { store.head(&path).await })?
        }
        .map_err(|e| ctx.error("read", key, &e))?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            DestinationError::Config(
                "object storage needs the async runtime (internal error)".into(),
            )
        })?;
        let (tx, rx) = mpsc::channel(1);
        let size = head.size;
        let etag = head.e_tag.clone();
        let key = key.to_string();
        let task = handle.spawn(async move {
            let ranges = (0..size.div_ceil(READ_CHUNK))
                .map(|i| i * READ_CHUNK..((i + 1) * READ_CHUNK).min(size));
            let mut chunks = futures::stream::iter(ranges)
                .map(|r| {
                    let store = store.clone();
                    let path = path.clone();
                    let etag = etag.clone();
                    async move {
                        let opts = GetOptions {
                            range: Some(GetRange::Bounded(r)),
                            if_match: etag,
                            ..Default::default()
                        };
                        match store.get_opts(&path, opts).await {
                            Ok(g) => g.bytes().await,
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffered(READ_AHEAD);
            while let Some(chunk) = chunks.next().await {
                let item = chunk.map_err(|e| match e {
                    object_store::Error::Precondition { .. } => DestinationError::Store {
                        message: format!(
                            "{} was replaced while it was being read; read it again",
                            ctx.locate(&key)
                        ),
                        permanent: false,
                    },
                    e => ctx.error("read", &key, &e),
                });
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(DownloadReader {
            rx,
            current: Bytes::new(),
            task,
        })
    }
}

impl Read for DownloadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match block_on(self.rx.recv()).map_err(io::Error::other)? {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

impl Drop for DownloadReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_to_fit_ten_thousand() {
        let base = 8 << 20;
        assert_eq!(part_size(base, 0), base);
        assert_eq!(part_size(base, 999), base);
        assert_eq!(part_size(base, 1000), base * 2);
        assert_eq!(part_size(base, 6000), base * 64);
        assert_eq!(part_size(base, 9999), base * 64);
        let total: u64 = (0..10_000).map(|i| part_size(base, i) as u64).sum();
        assert!(total > 2 << 40, "10,000 parts hold {total} bytes");
    }
}

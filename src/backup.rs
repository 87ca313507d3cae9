//! Backing up one PVC: helper pod → `tar -c` over exec → hash + parse + compress → destination,
//! then the manifest as the commit marker. Retries transient failures with a fresh helper pod
//! and a fresh partial file; the destination never shows a half-written archive as complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use kube::api::Api;
use serde::Serialize;

use crate::archive::{
    check_entry_safe, spool_entry, stream_backup_each, Compression, SortedProblem, SortedRules,
    Spool,
};
use crate::attempts::with_retries;
use crate::connect::explain;
use crate::destination::{archive_key, manifest_key, Destination};
use crate::discover::{detect_mesh, Target};
use crate::exit::{ExitKind, Failure};
use crate::helper_pod::{admissible_pod, HelperOptions, HelperPodRequest, Purpose};
use crate::helper_session::{HelperPod, Registry, Watch};
use crate::manifest::StoreError;
use crate::manifest::{ClusterInfo, Manifest, ManifestMeta, PvcInfo, SourcePod};
use crate::progress::Progress;
use crate::retry::{AttemptRecord, RetryPolicy};

/// Everything a backup run needs besides the targets.
pub struct BackupSettings {
    pub backup_id: String,
    pub compression: Compression,
    pub helper: HelperOptions,
    pub retry: RetryPolicy,
    pub cluster: ClusterInfo,
    /// `--snapshot`, `--require-consistent`, hooks.
    pub consistency: crate::snapshot::ConsistencySettings,
    /// Snapshots, temporary PVCs and owed post hooks of this run.
    pub run_state: crate::snapshot::RunState,
    /// Helper pods per node (`--max-per-node`), shared by the run's targets.
    pub node_slots: crate::node_slots::NodeSlots,
    /// Encrypt the archive, the entries and the details to these recipients.
    pub encryption: Option<crate::encryption::Recipients>,
    /// Exec streams per volume (`--streams`, streams.rs).
    pub streams: crate::streams::StreamCount,
    /// The client runs inside the cluster (a schedule's CronJob pod, connect.rs): `auto` is
    /// one stream there.
    pub in_cluster: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetResult {
    pub namespace: String,
    pub pvc: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub kind: Option<ExitKind>,
    pub attempts: u32,
    /// Every attempt, with the error of each failed one.
    pub attempt_log: Vec<AttemptRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Entries of the volume the backup does not hold (device nodes, sockets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<crate::archive::SkippedEntry>,
    pub seconds: f64,
    /// How the copy was made: snapshot, clone or live; what changed during a live copy; hooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<crate::snapshot::Consistency>,
    /// The exec streams of the copy that was stored, and why (`--streams`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<crate::streams::Choice>,
}

/// What the cluster told us about the target, gathered once.
pub struct TargetContext {
    pub target: Target,
    pub pvc: PersistentVolumeClaim,
    pub pods: Vec<Pod>,
    pub namespace: Option<Namespace>,
    pub nodes: Vec<Node>,
}

/// The helper pod of attempt `attempt` (1-based). Later attempts get their own pod name, so a
/// predecessor still terminating after an outage never blocks them. `copy_claim` is the
/// temporary PVC of a snapshot or clone: nothing else mounts it, so the helper may run on any
/// node, not only where the workload has the volume attached.
pub fn helper_request(
    ctx: &TargetContext,
    s: &BackupSettings,
    attempt: u32,
    copy_claim: Option<&str>,
) -> Result<HelperPodRequest, Failure> {
    if let Some(claim) = copy_claim {
        return Ok(HelperPodRequest::unplaced(
            &ctx.target.namespace,
            claim,
            run_id(s, attempt),
            Purpose::Backup,
            &s.helper,
        ));
    }
    HelperPodRequest::placed(
        &ctx.target,
        &ctx.nodes,
        run_id(s, attempt),
        Purpose::Backup,
        &s.helper,
    )
}

fn run_id(s: &BackupSettings, attempt: u32) -> String {
    if attempt <= 1 {
        s.backup_id.clone()
    } else {
        format!("{}-a{attempt}", s.backup_id)
    }
}

pub async fn backup_target(
    client: &kube::Client,
    ctx: &TargetContext,
    s: &BackupSettings,
    dest: Arc<dyn Destination>,
    registry: &Registry,
    progress: &Progress,
) -> TargetResult {
    let started = Instant::now();
    let mut result = TargetResult {
        namespace: ctx.target.namespace.clone(),
        pvc: ctx.target.pvc.clone(),
        status: "failed",
        error: None,
        kind: None,
        attempts: 0,
        attempt_log: Vec::new(),
        archive: None,
        manifest: None,
        files: 0,
        bytes: 0,
        stored_bytes: 0,
        sha256: None,
        skipped: Vec::new(),
        seconds: 0.0,
        consistency: None,
        streams: None,
    };
    let bar = progress.bar(&format!("{}/{}", ctx.target.namespace, ctx.target.pvc));
    let info = crate::snapshot::TargetInfo {
        namespace: &ctx.target.namespace,
        pvc: &ctx.pvc,
        pods: &ctx.pods,
        ns_object: ctx.namespace.as_ref(),
        backup_id: &s.backup_id,
    };
    let prepared = crate::snapshot::prepare(client, &info, &s.consistency, &s.run_state, &|m| {
        bar.note(m)
    })
    .await;
    let prepared = match prepared {
        Ok(p) => p,
        Err((f, hooks)) => {
            let left = release(client, ctx, s).await;
            bar.finish(&format!("failed: {}", f.message));
            result.kind = Some(f.kind);
            result.error = Some(format!("{}{left}", f.message));
            result.attempts = 0;
            result.consistency = (!hooks.is_empty()).then(|| crate::snapshot::Consistency {
                source: crate::snapshot::CopySource::live(&ctx.target.pvc, None),
                changed_files: Vec::new(),
                changed_file_count: 0,
                hooks,
            });
            result.seconds = started.elapsed().as_secs_f64();
            return result;
        }
    };
    let done = with_retries(&s.retry, &bar, |number| {
        attempt(
            client,
            ctx,
            s,
            &prepared,
            dest.clone(),
            registry,
            &bar,
            number,
        )
    })
    .await;
    result.attempts = done.log.len() as u32;
    result.attempt_log = done.log;
    match done.result {
        Ok(Copied {
            manifest: m,
            files,
            changes,
            streams,
        }) => {
            result.streams = Some(streams);
            result.consistency = Some(crate::snapshot::Consistency {
                source: prepared.source.clone(),
                changed_files: changes.0,
                changed_file_count: changes.1,
                hooks: prepared.hooks.clone(),
            });
            result.status = "ok";
            result.files = files;
            result.bytes = m.uncompressed_size;
            result.stored_bytes = m.archive.size;
            result.sha256 = Some(m.archive.sha256.clone());
            result.skipped = m.skipped.clone();
            result.archive = Some(dest.locate(&archive_key(
                &s.backup_id,
                &m.namespace,
                &m.pvc.name,
                &extension(s),
            )));
            result.manifest =
                Some(dest.locate(&manifest_key(&s.backup_id, &m.namespace, &m.pvc.name)));
            bar.finish(&format!("done, {} files", result.files));
        }
        Err(f) => {
            bar.finish(&format!("failed: {}", f.message));
            result.kind = Some(f.kind);
            result.error = Some(f.message);
        }
    }
    // Live copies owe their post hooks until now; snapshots and clones ran them at the cut.
    let post = s
        .run_state
        .owed
        .run_for(client, &ctx.target.namespace, &prepared.post)
        .await;
    let post_failure = post.iter().find_map(crate::hooks::failure);
    let left = release(client, ctx, s).await;
    let c = result
        .consistency
        .get_or_insert_with(|| crate::snapshot::Consistency {
            source: prepared.source.clone(),
            changed_files: Vec::new(),
            changed_file_count: 0,
            hooks: prepared.hooks.clone(),
        });
    c.hooks.extend(post);
    if result.status == "ok" {
        if let Some(f) = post_failure {
            // The archive is committed and good; the application may not have been resumed.
            result.kind = Some(f.kind);
            result.error = Some(f.message);
            result.status = "failed";
        }
    }
    if !left.is_empty() {
        result.error = Some(format!(
            "{}{left}",
            result.error.clone().unwrap_or_default()
        ));
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// Deletes this target's snapshot and temporary PVC; a note for the error if some are left.
async fn release(client: &kube::Client, ctx: &TargetContext, s: &BackupSettings) -> String {
    let name = crate::snapshot::temp_name(&ctx.target.pvc, &s.backup_id);
    let left = s
        .run_state
        .leftovers
        .delete_matching(client, &ctx.target.namespace, &name)
        .await;
    if left.is_empty() {
        String::new()
    } else {
        format!(
            " (could not delete {}; delete them with kubectl)",
            left.join(", ")
        )
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    client: &kube::Client,
    ctx: &TargetContext,
    s: &BackupSettings,
    prepared: &crate::snapshot::Prepared,
    dest: Arc<dyn Destination>,
    registry: &Registry,
    bar: &crate::progress::Bar,
    number: u32,
) -> Result<Copied, Failure> {
    let copy = &prepared.source;
    let temp = (copy.method != crate::snapshot::CopyMethod::Live).then_some(copy.claim.as_str());
    let req = helper_request(ctx, s, number, temp)?;
    bar.note("waiting for room on a node");
    // Held until the helper pod is gone (`delete` waits for that), not merely deleted.
    let mut slot = s.node_slots.acquire(req.node.as_deref()).await;
    let pod = admissible_pod(&req, ctx.namespace.as_ref())?;
    bar.note("starting helper pod");
    let mut helper = HelperPod::launch(client, pod, s.helper.pod_timeout, registry).await?;
    slot.landed(helper.node.as_deref());
    let out = stream(&helper, ctx, s, prepared, dest, bar).await;
    helper.delete().await;
    drop(slot);
    out
}

async fn stream(
    helper: &HelperPod,
    ctx: &TargetContext,
    s: &BackupSettings,
    prepared: &crate::snapshot::Prepared,
    dest: Arc<dyn Destination>,
    bar: &crate::progress::Bar,
) -> Result<Copied, Failure> {
    let copy = &prepared.source;
    // A cheap size estimate for the progress bar; the backup does not depend on it, so it
    // gets a short leash.
    let mut volume_bytes = None;
    if let Ok(Ok(du)) =
        tokio::time::timeout(Duration::from_secs(30), helper.run(&["du", "-sk", "/data"])).await
    {
        if let Some(kib) = du
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        {
            bar.set_length(kib * 1024);
            volume_bytes = Some(kib * 1024);
        }
    }
    let live = copy.method == crate::snapshot::CopyMethod::Live;
    let listing = async {
        if live {
            // Every file's size, mtime and ctime now, to compare with after the stream.
            helper
                .run(&["sh", "-c", crate::snapshot::CHANGE_LISTING, "sh", "before"])
                .await
                .map_err(|f| {
                    Failure::runtime(format!(
                        "listing the volume before the copy failed ({}); the helper image needs find, xargs, stat and awk",
                        f.message
                    ))
                })?;
        }
        Ok::<(), Failure>(())
    };
    // `--streams auto` measures the link (streams.rs `probe`) while the volume is listed.
    let probing = crate::streams::needs_probe(s.streams, s.in_cluster, volume_bytes);
    let measuring = async {
        if probing {
            bar.note("measuring the link");
            Some(crate::streams::probe(helper).await)
        } else {
            None
        }
    };
    let (listed, measured) = tokio::join!(listing, measuring);
    listed?;
    if let Some(Err(why)) = &measured {
        tracing::info!(
            "{}/{}: the link could not be measured ({why}); the streams follow the volume's size",
            ctx.target.namespace,
            ctx.target.pvc
        );
    }
    let mut choice = crate::streams::choose(s.streams, s.in_cluster, volume_bytes, measured);
    // One tar, or several whose members streams.rs merges into one tar stream.
    let plan = crate::streams::plan(helper, choice.streams).await;
    if plan.streams() != choice.streams {
        choice.wanted = Some(choice.streams);
        choice.streams = plan.streams();
    }
    bar.note(&format!("streaming over {}", choice.describe()));
    let mut tar = crate::streams::start(
        helper,
        &plan,
        Watch {
            stdout_stall: Some(s.retry.stall),
            stdin_stall: None,
        },
    )
    .await?;
    let tar_reader = std::mem::replace(&mut tar.reader, Box::new(std::io::empty()));
    let key = archive_key(
        &s.backup_id,
        &ctx.target.namespace,
        &ctx.target.pvc,
        &extension(s),
    );
    let compression = s.compression;
    let bar2 = bar.clone();
    let dest2 = dest.clone();
    let recipients = s.encryption.clone();
    let stored_name = file_name(&ctx.target.pvc, s);
    let writer_job = tokio::task::spawn_blocking(move || -> Result<Streamed, Failure> {
        let _active = ActiveWriter::enter();
        let reader = tar_reader;
        let mut writer = dest2.create(&key)?;
        // Entries are spooled in path order as they come, in bounded memory (issue #14); the
        // rules on single entries are checked here, the ones across entries when the sorted
        // entries are written.
        let mut entries = Spool::default();
        let mut links = Spool::default();
        let mut refused = Refused::default();
        let progress = |n| bar2.set_position(n);
        let mut visit = |e| {
            if let Err(u) = check_entry_safe(&e) {
                refused.add(u);
            }
            spool_entry(&mut entries, &mut links, &e)
        };
        let (summary, stored) = match recipients {
            None => (
                stream_backup_each(reader, compression, &mut writer, &progress, &mut visit)?,
                None,
            ),
            Some(r) => {
                // Compress, then encrypt: the summary's sha256 is the compressed plaintext's,
                // the stored bytes' is taken under age's writer.
                let write = |source| crate::archive::ArchiveError::Write { source };
                let mut sealed = r
                    .seal(crate::archive::HashingWriter::new(&mut writer))
                    .map_err(write)?;
                let summary =
                    stream_backup_each(reader, compression, &mut sealed, &progress, &mut visit)?;
                let (_, sha256, size) = sealed.finish().map_err(write)?.into_parts();
                let stored = crate::manifest::ArchiveInfo {
                    file_name: stored_name,
                    size,
                    sha256,
                };
                (summary, Some(stored))
            }
        };
        Ok(Streamed {
            summary,
            entries,
            links,
            refused,
            writer,
            stored,
        })
    });
    let written = writer_job
        .await
        .map_err(|e| Failure::runtime(format!("the archive writer failed: {e}")))?;
    // The copy counts only when every tar exited 0, said nothing alarming, and the stream ended
    // with the end-of-archive marker (checked by stream_backup). Anything else discards the
    // partial file (the writer's Drop removes it). A lost session explains itself best, so it
    // wins, then a failed tar (TarSource::finish).
    let streamed = match (tar.finish(s.retry.stall, &helper.name).await, written) {
        (Err(f), _) => return Err(f),
        (Ok(errors), Ok(w)) => (w, errors),
        (Ok(_), Err(f)) => {
            return Err(Failure::new(
                ExitKind::Runtime,
                format!("the archive stream was not complete: {}", f.message),
            ))
        }
    };
    let (streamed, errors) = streamed;
    let (sockets, serious) = tar_stderr(&errors);
    if !serious.is_empty() {
        return Err(Failure::runtime(format!(
            "tar reported read errors, so the copy is not trusted: {}",
            serious.join("; ")
        )));
    }
    let changes = if live {
        let out = helper
            .run(&["sh", "-c", crate::snapshot::CHANGE_LISTING, "sh", "after"])
            .await?;
        crate::snapshot::parse_changes(&out)
    } else {
        (Vec::new(), 0)
    };
    if changes.1 > 0 && s.consistency.require_consistent {
        // The writer is dropped uncommitted: its partial file goes, nothing is published.
        return Err(Failure::runtime(format!(
            "{} file(s) changed while the volume was read ({}{}), and --require-consistent is set; nothing was written. Back up from a snapshot (--snapshot always, with a VolumeSnapshotClass for the PVC's driver) or quiesce the application with --pre-hook/--post-hook",
            changes.1,
            changes.0.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if changes.1 > 5 { ", …" } else { "" }
        ))
        .permanent());
    }
    let Streamed {
        summary,
        entries,
        links,
        refused,
        writer,
        stored,
    } = streamed;
    refused.check()?;
    let files = summary.file_count;
    let mut manifest = Manifest::new(
        meta(ctx, s),
        s.compression,
        file_name(&ctx.target.pvc, s),
        summary,
    );
    manifest.skipped.extend(sockets);
    crate::snapshot::record(&mut manifest, copy, &changes, &prepared.hooks);
    if let Some(warning) = crate::manifest::skipped_warning(&manifest.skipped) {
        bar.event(&warning);
    }
    // The archive is complete (for object stores: its multipart upload completed) before the
    // entries stream, and both before the header, the commit marker. All block on I/O, so off
    // the async threads.
    // The entries stream is written (and the rules across entries checked) before anything
    // is committed, so that a refused stream leaves nothing behind.
    let mkey = manifest_key(&s.backup_id, &ctx.target.namespace, &ctx.target.pvc);
    let copy = manifest.clone();
    let seal = match (&s.encryption, stored) {
        (Some(recipients), Some(archive)) => Some(crate::encryption::Seal {
            recipients: recipients.clone(),
            archive,
        }),
        _ => None,
    };
    let header = tokio::task::spawn_blocking(move || {
        commit(
            dest.as_ref(),
            &mkey,
            &copy,
            entries,
            links,
            writer,
            seal.as_ref(),
        )
    })
    .await
    .map_err(|e| Failure::runtime(format!("the manifest writer failed: {e}")))??;
    // What was stored: for an encrypted backup, the archive as encrypted.
    manifest.archive = header.archive;
    manifest.encryption = header.encryption;
    Ok(Copied {
        manifest,
        files,
        changes,
        streams: choice,
    })
}

/// What a successful attempt hands back: the committed manifest, the files archived, what
/// changed during a live copy (names, count), and the streams the copy used.
struct Copied {
    manifest: Manifest,
    files: u64,
    changes: (Vec<String>, u64),
    streams: crate::streams::Choice,
}

/// Splits tar's stderr into the sockets it left out and the lines that make the copy
/// untrustworthy. busybox tar (`archival/tar.c`) reports a socket as
/// `tar: NAME: socket ignored` and goes on; it archives no sockets.
fn tar_stderr(errors: &str) -> (Vec<crate::archive::SkippedEntry>, Vec<&str>) {
    let mut sockets = Vec::new();
    let mut serious = Vec::new();
    for line in errors.lines().filter(|l| !l.trim().is_empty()) {
        let name = line
            .strip_prefix("tar: ")
            .and_then(|l| l.strip_suffix(": socket ignored"));
        match name {
            Some(name) => {
                let name = name.strip_prefix("./").unwrap_or(name);
                sockets.push(crate::archive::SkippedEntry {
                    path: name.to_string(),
                    path_hex: None,
                    reason: crate::archive::SkipReason::Socket,
                });
            }
            None if line.contains("socket ignored") => {}
            None => serious.push(line),
        }
    }
    (sockets, serious)
}

/// What the archive writer hands back: the archive (not committed), its entries spooled in
/// path order, hard links by target, and the entries the rules on single entries refused.
struct Streamed {
    summary: crate::archive::ArchiveSummary,
    entries: Spool<crate::archive::EntryRecord>,
    links: Spool<crate::archive::LinkRef>,
    refused: Refused,
    writer: Box<dyn crate::destination::ObjectWriter>,
    /// The stored (encrypted) archive, for an encrypted backup.
    stored: Option<crate::manifest::ArchiveInfo>,
}

/// `create`'s side of the round-trip rules ([`crate::archive::RULES`]): a stream holding an
/// entry that `verify`/`restore` would refuse is not stored as a backup. (Device nodes, the
/// rule whose `at_create` is skip, never get here: the archive leaves them out.) The first
/// few refused entries are kept to be named, the rest counted.
#[derive(Default)]
struct Refused {
    shown: Vec<crate::archive::UnsafeEntry>,
    count: usize,
}

impl Refused {
    fn add(&mut self, u: crate::archive::UnsafeEntry) {
        if self.shown.len() < 5 {
            self.shown.push(u);
        }
        self.count += 1;
    }

    fn check(&self) -> Result<(), Failure> {
        if self.count == 0 {
            return Ok(());
        }
        let shown: Vec<String> = self
            .shown
            .iter()
            .map(|u| format!("{:?} ({})", u.path, u.reason))
            .collect();
        Err(Failure::refused(format!(
            "the helper's tar stream holds {} entr{} that a restore would refuse: {}{}. `tar -c` of a volume never produces these, so the stream is not a plain copy of the volume and nothing was stored; check that the helper image (--image) runs an unmodified busybox tar",
            self.count,
            if self.count == 1 { "y" } else { "ies" },
            shown.join(", "),
            if self.count > 5 { format!(" and {} more", self.count - 5) } else { String::new() },
        ))
        .permanent())
    }
}

/// Writes the entries stream of `m` from the spooled `entries` (the rules across entries
/// checked on the way), then commits the archive `writer`, the entries stream and the header,
/// in that order. A refused stream commits nothing: the writers' partial files go.
fn commit(
    dest: &dyn Destination,
    mkey: &str,
    m: &Manifest,
    entries: Spool<crate::archive::EntryRecord>,
    links: Spool<crate::archive::LinkRef>,
    writer: Box<dyn crate::destination::ObjectWriter>,
    seal: Option<&crate::encryption::Seal>,
) -> Result<crate::manifest::Header, Failure> {
    let spool =
        |e: std::io::Error| Failure::from(crate::archive::ArchiveError::Spool { source: e });
    let mut rules = SortedRules::new(links.finish().map_err(spool)?, true);
    let written = crate::manifest::write_entries_object(
        dest,
        mkey,
        m,
        entries.finish().map_err(spool)?,
        |key, seq, e| rules.check(key, seq, e),
        seal,
    )
    .and_then(|w| rules.finish().map(|()| w).map_err(StoreError::from));
    let written = match written {
        Ok(w) => w,
        Err(StoreError::Destination(e)) => return Err(e.into()),
        Err(StoreError::Refused(p)) => return Err(refused_across(p)),
    };
    writer.commit()?;
    written.writer.commit()?;
    Ok(crate::manifest::store_header(
        dest,
        mkey,
        m,
        written.object,
        written.totals,
        seal.zip(written.plain),
    )?)
}

/// A rule across entries refused the sorted stream (the first such entry is named).
fn refused_across(p: SortedProblem) -> Failure {
    match p {
        SortedProblem::Unsafe(u) => {
            let mut r = Refused::default();
            r.add(u);
            r.check().expect_err("one refused entry")
        }
        SortedProblem::Duplicate(d) => Failure::refused(format!(
            "the helper's tar stream holds {:?} twice, which a restore would refuse; `tar -c` of a volume never does this, so nothing was stored; check that the helper image (--image) runs an unmodified busybox tar",
            d.path
        ))
        .permanent(),
        p @ SortedProblem::Io(_) => Failure::runtime(p.to_string()),
    }
}

/// Archive writers still running on blocking threads. After an interrupt the helper pods are
/// deleted, which ends their exec streams; waiting for this to reach zero lets each writer drop
/// its partial file before the process exits.
static ACTIVE_WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct ActiveWriter;

impl ActiveWriter {
    fn enter() -> Self {
        ACTIVE_WRITERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ActiveWriter
    }
}

impl Drop for ActiveWriter {
    fn drop(&mut self) {
        ACTIVE_WRITERS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits (bounded) until every archive writer has finished and removed its partial file.
pub async fn wait_for_writers(limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while ACTIVE_WRITERS.load(std::sync::atomic::Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stored archive's file name: `<pvc>.tar[.gz|.zst]`, with `.age` when encrypted.
pub fn file_name(pvc: &str, s: &BackupSettings) -> String {
    format!("{pvc}{}", extension(s))
}

pub fn extension(s: &BackupSettings) -> String {
    let age = if s.encryption.is_some() {
        crate::encryption::AGE_SUFFIX
    } else {
        ""
    };
    format!("{}{age}", s.compression.extension())
}

fn meta(ctx: &TargetContext, s: &BackupSettings) -> ManifestMeta {
    let spec = ctx.pvc.spec.clone().unwrap_or_default();
    let capacity = ctx
        .pvc
        .status
        .as_ref()
        .and_then(|st| st.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .or_else(|| {
            spec.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
        })
        .map(|q| q.0.clone());
    let source_pods = ctx
        .pods
        .iter()
        .map(|p| {
            let m = detect_mesh(p, ctx.namespace.as_ref());
            SourcePod {
                name: p.metadata.name.clone().unwrap_or_default(),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                mesh: m.as_ref().map(|m| m.mesh.to_string()),
                proxy_container: m.as_ref().and_then(|m| m.proxy_container.clone()),
                proxy_version: m.as_ref().and_then(|m| m.proxy_version.clone()),
            }
        })
        .collect();
    ManifestMeta {
        backup_id: s.backup_id.clone(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created: chrono::Utc::now(),
        cluster: s.cluster.clone(),
        namespace: ctx.target.namespace.clone(),
        pvc: PvcInfo {
            name: ctx.target.pvc.clone(),
            uid: ctx.pvc.metadata.uid.clone().unwrap_or_default(),
            capacity,
            access_modes: spec.access_modes.clone().unwrap_or_default(),
            storage_class: spec.storage_class_name.clone(),
            volume_mode: spec.volume_mode.clone(),
            labels: ctx.pvc.metadata.labels.clone().unwrap_or_default(),
        },
        source_pods,
        helper_image: s.helper.image.clone(),
    }
}

/// Fetches the PVC object for a target (fresh, for its uid and spec).
pub async fn get_pvc(client: &kube::Client, t: &Target) -> Result<PersistentVolumeClaim, Failure> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &t.namespace);
    api.get(&t.pvc)
        .await
        .map_err(|e| explain(&format!("reading PVC {}/{}", t.namespace, t.pvc), &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{SkipReason, SkippedEntry};

    /// `create`'s path at any file count: entries spooled as the archive is read, the entries
    /// stream written from the merge. Across several spilled runs the stored backup loads to
    /// the same entries as the in-memory path; a stream a rule across entries refuses (a member
    /// beneath a symlink, a hard link to a later member) commits nothing at all.
    #[test]
    fn spooled_entries_commit_a_backup_or_nothing() {
        use crate::destination::local::LocalDir;
        fn tar_of(members: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for (name, kind, target) in members {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(*kind);
                h.set_mode(0o644);
                h.set_size(0);
                if !target.is_empty() {
                    h.set_link_name(target).unwrap();
                }
                b.append_data(&mut h, name, &b""[..]).unwrap();
            }
            b.into_inner().unwrap()
        }
        fn run(tar: &[u8], budget: usize) -> (tempfile::TempDir, Result<(), Failure>, Manifest) {
            let d = tempfile::tempdir().unwrap();
            let dest = LocalDir::new(d.path().to_path_buf());
            let mut writer = dest.create("b/ns/data.tar").unwrap();
            let mut entries = Spool::with_budget(budget);
            let mut links = Spool::with_budget(budget);
            let summary =
                stream_backup_each(tar, Compression::None, &mut writer, &|_| {}, &mut |e| {
                    spool_entry(&mut entries, &mut links, &e)
                })
                .unwrap();
            let meta = ManifestMeta {
                backup_id: "b".into(),
                tool_version: "0".into(),
                created: chrono::Utc::now(),
                cluster: ClusterInfo::default(),
                namespace: "ns".into(),
                pvc: PvcInfo {
                    name: "data".into(),
                    ..Default::default()
                },
                source_pods: vec![],
                helper_image: "busybox".into(),
            };
            let m = Manifest::new(meta, Compression::None, "data.tar", summary);
            let r = commit(
                &dest,
                "b/ns/data.manifest.json",
                &m,
                entries,
                links,
                writer,
                None,
            )
            .map(drop);
            (d, r, m)
        }
        let mut members = vec![(".", tar::EntryType::Directory, "")];
        let names: Vec<String> = (0..3000)
            .map(|i| format!("d{}/f{i:05}", (i * 7) % 13))
            .collect();
        let dirs: Vec<String> = (0..13).map(|i| format!("d{i}")).collect();
        for d in &dirs {
            members.push((d, tar::EntryType::Directory, ""));
        }
        for n in names.iter().rev() {
            members.push((n, tar::EntryType::Regular, ""));
        }
        members.push(("hard", tar::EntryType::Link, names[5].as_str()));
        let tar = tar_of(&members);
        let (d, r, _) = run(&tar, 4096);
        r.unwrap();
        let dest = LocalDir::new(d.path().to_path_buf());
        let loaded = crate::manifest::load(&dest, "b/ns/data.manifest.json").unwrap();
        let in_memory =
            crate::archive::stream_backup(&tar[..], Compression::None, std::io::sink(), &|_| {})
                .unwrap();
        let mut want = in_memory.entries;
        want.sort_by_key(|e| crate::archive::canonical_key(&e.raw_path()));
        assert_eq!(loaded.entries, want);

        for (name, bad) in [
            (
                "beneath a symlink",
                vec![
                    (".", tar::EntryType::Directory, ""),
                    ("a", tar::EntryType::Symlink, "/etc"),
                    ("a-b", tar::EntryType::Regular, ""),
                    ("a/passwd", tar::EntryType::Regular, ""),
                ],
            ),
            (
                "hard link to a later member",
                vec![
                    (".", tar::EntryType::Directory, ""),
                    ("a", tar::EntryType::Link, "z"),
                    ("z", tar::EntryType::Regular, ""),
                ],
            ),
        ] {
            let (d, r, _) = run(&tar_of(&bad), 64);
            let f = r.unwrap_err();
            assert_eq!(f.kind, ExitKind::Refused, "{name}: {}", f.message);
            assert!(
                f.message.contains("nothing was stored"),
                "{name}: {}",
                f.message
            );
            let left: Vec<_> = walk_files(d.path());
            assert!(left.is_empty(), "{name}: {left:?}");
        }
    }

    fn walk_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    #[test]
    fn sockets_tar_ignored_are_recorded_and_other_stderr_is_serious() {
        // busybox tar's own words (archival/tar.c: "%s: socket ignored"), in busybox 1.35
        let (sockets, serious) = tar_stderr(
            "tar: ./run/app.sock: socket ignored\ntar: ./a b/x.sock: socket ignored\n\ntar: ./f: Permission denied\n",
        );
        assert_eq!(
            sockets,
            vec![
                SkippedEntry {
                    path: "run/app.sock".into(),
                    path_hex: None,
                    reason: SkipReason::Socket
                },
                SkippedEntry {
                    path: "a b/x.sock".into(),
                    path_hex: None,
                    reason: SkipReason::Socket
                },
            ]
        );
        assert_eq!(serious, vec!["tar: ./f: Permission denied"]);
        assert_eq!(tar_stderr(""), (vec![], vec![]));
    }

    #[test]
    fn a_stream_a_restore_would_refuse_is_refused_at_create() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..7].copy_from_slice(b"../evil");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let summary =
            crate::archive::stream_backup(&tar[..], Compression::None, std::io::sink(), &|_| {})
                .unwrap();
        let mut refused = Refused::default();
        for e in &summary.entries {
            if let Err(u) = check_entry_safe(e) {
                refused.add(u);
            }
        }
        let f = refused.check().unwrap_err();
        assert_eq!(f.kind, ExitKind::Refused);
        assert!(f.permanent, "no retry can change what tar streams");
        assert!(f.message.contains("\"../evil\""), "{}", f.message);
        assert!(f.message.contains("--image"), "{}", f.message);
    }
}

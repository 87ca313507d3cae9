//! Backing up one PVC: helper pod → `tar -c` over exec → hash + parse + compress → destination,
//! then the manifest as the commit marker. Retries transient failures with a fresh helper pod
//! and a fresh partial file; the destination never shows a half-written archive as complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use kube::api::Api;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::archive::{stream_backup, Compression};
use crate::attempts::with_retries;
use crate::connect::explain;
use crate::destination::{archive_key, manifest_key, Destination};
use crate::discover::{detect_mesh, Target};
use crate::exit::{ExitKind, Failure};
use crate::helper_pod::{admissible_pod, HelperOptions, HelperPodRequest, Purpose};
use crate::helper_session::{HelperPod, Registry, Watch};
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
    pub seconds: f64,
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
/// predecessor still terminating after an outage never blocks them.
pub fn helper_request(
    ctx: &TargetContext,
    s: &BackupSettings,
    attempt: u32,
) -> Result<HelperPodRequest, Failure> {
    let run_id = if attempt <= 1 {
        s.backup_id.clone()
    } else {
        format!("{}-a{attempt}", s.backup_id)
    };
    HelperPodRequest::placed(&ctx.target, &ctx.nodes, run_id, Purpose::Backup, &s.helper)
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
        seconds: 0.0,
    };
    let bar = progress.bar(&format!("{}/{}", ctx.target.namespace, ctx.target.pvc));
    let done = with_retries(&s.retry, &bar, |number| {
        attempt(client, ctx, s, dest.clone(), registry, &bar, number)
    })
    .await;
    result.attempts = done.log.len() as u32;
    result.attempt_log = done.log;
    match done.result {
        Ok(m) => {
            result.status = "ok";
            result.files = m.entries.iter().filter(|e| e.sha256.is_some()).count() as u64;
            result.bytes = m.uncompressed_size;
            result.stored_bytes = m.archive.size;
            result.sha256 = Some(m.archive.sha256.clone());
            result.archive = Some(dest.locate(&archive_key(
                &s.backup_id,
                &m.namespace,
                &m.pvc.name,
                s.compression.extension(),
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
    result.seconds = started.elapsed().as_secs_f64();
    result
}

async fn attempt(
    client: &kube::Client,
    ctx: &TargetContext,
    s: &BackupSettings,
    dest: Arc<dyn Destination>,
    registry: &Registry,
    bar: &crate::progress::Bar,
    number: u32,
) -> Result<Manifest, Failure> {
    let req = helper_request(ctx, s, number)?;
    let pod = admissible_pod(&req, ctx.namespace.as_ref())?;
    bar.note("starting helper pod");
    let mut helper = HelperPod::launch(client, pod, s.helper.pod_timeout, registry).await?;
    let out = stream(&helper, ctx, s, dest, bar).await;
    helper.delete().await;
    out
}

async fn stream(
    helper: &HelperPod,
    ctx: &TargetContext,
    s: &BackupSettings,
    dest: Arc<dyn Destination>,
    bar: &crate::progress::Bar,
) -> Result<Manifest, Failure> {
    // A cheap size estimate for the progress bar; the backup does not depend on it, so it
    // gets a short leash.
    if let Ok(Ok(du)) =
        tokio::time::timeout(Duration::from_secs(30), helper.run(&["du", "-sk", "/data"])).await
    {
        if let Some(kib) = du
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        {
            bar.set_length(kib * 1024);
        }
    }
    bar.note("streaming");
    let mut session = helper
        .session(
            &["tar", "-cf", "-", "-C", "/data", "."],
            false,
            Watch {
                stdout_stall: Some(s.retry.stall),
                stdin_stall: None,
            },
        )
        .await?;
    let stdout = session
        .stdout
        .take()
        .ok_or_else(|| Failure::runtime("exec gave no stdout"))?;
    let mut stderr = session
        .stderr
        .take()
        .ok_or_else(|| Failure::runtime("exec gave no stderr"))?;
    let key = archive_key(
        &s.backup_id,
        &ctx.target.namespace,
        &ctx.target.pvc,
        s.compression.extension(),
    );
    let compression = s.compression;
    let bar2 = bar.clone();
    let dest2 = dest.clone();
    let writer_job = tokio::task::spawn_blocking(move || -> Result<(crate::archive::ArchiveSummary, Box<dyn crate::destination::ObjectWriter>), Failure> {
        let _active = ActiveWriter::enter();
        let reader = tokio_util::io::SyncIoBridge::new(stdout);
        let mut writer = dest2.create(&key)?;
        let summary = stream_backup(reader, compression, &mut writer, &|n| bar2.set_position(n))?;
        Ok((summary, writer))
    });
    let stderr_job = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).to_string()
    });
    let written = writer_job
        .await
        .map_err(|e| Failure::runtime(format!("the archive writer failed: {e}")))?;
    let errors = stderr_job.await.unwrap_or_default();
    let st = session.finish(s.retry.stall).await;
    // The copy counts only when tar exited 0, said nothing alarming, and the stream ended with
    // the end-of-archive marker (checked by stream_backup). Anything else discards the partial
    // file (the writer's Drop removes it). A lost session explains itself best, so it wins.
    let (summary, writer) = match (st, written) {
        (Err(lost), _) => return Err(lost),
        (Ok(st), _) if st.status.as_deref() != Some("Success") => {
            return Err(Failure::runtime(format!(
                "tar in helper pod {} failed: {}{}",
                helper.name,
                crate::helper_session::describe_status(&st),
                if errors.trim().is_empty() {
                    String::new()
                } else {
                    format!(" (stderr: {})", errors.trim())
                }
            )))
        }
        (Ok(_), Ok(w)) => w,
        (Ok(_), Err(f)) => {
            return Err(Failure::new(
                ExitKind::Runtime,
                format!("the archive stream was not complete: {}", f.message),
            ))
        }
    };
    let serious: Vec<&str> = errors
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("socket ignored"))
        .collect();
    if !serious.is_empty() {
        return Err(Failure::runtime(format!(
            "tar reported read errors, so the copy is not trusted: {}",
            serious.join("; ")
        )));
    }
    let manifest = Manifest::new(
        meta(ctx, s),
        s.compression,
        file_name(&ctx.target.pvc, s.compression),
        summary,
    );
    // The archive is complete (for object stores: its multipart upload completed) before the
    // manifest, the commit marker, is written. Both block on I/O, so off the async threads.
    let mkey = manifest_key(&s.backup_id, &ctx.target.namespace, &ctx.target.pvc);
    let json = manifest.to_json_pretty();
    tokio::task::spawn_blocking(move || -> Result<(), Failure> {
        writer.commit()?;
        let mut mw = dest.create(&mkey)?;
        use std::io::Write;
        mw.write_all(json.as_bytes())
            .map_err(|e| Failure::runtime(format!("writing the manifest: {e}")))?;
        mw.commit()?;
        Ok(())
    })
    .await
    .map_err(|e| Failure::runtime(format!("the manifest writer failed: {e}")))??;
    Ok(manifest)
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

pub fn file_name(pvc: &str, c: Compression) -> String {
    format!("{pvc}{}", c.extension())
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

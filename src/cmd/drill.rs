//! `kubectl pvbackup drill`: the weekly test restore, as one command. Restores a backup into a
//! scratch PVC created for the purpose (never an existing one), lets the restore engine check
//! every file's checksum, mode and owner inside the cluster, reports time-to-restore, throughput
//! and the verdict, and deletes the scratch PVC and helper pods whatever happens.
//!
//! The archive is read once, straight into the cluster (no local verification pass first, as
//! `restore` makes): the stored bytes are hashed on the way against the manifest, and the
//! extracted tree is compared with it in the pod. A damaged backup is exit 3, a drill that
//! could not run is exit 1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, PostParams};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::collect::collect_nodes;
use crate::connect::{explain, Connection};
use crate::discover::{parse_quantity_bytes, AccessMode, Target};
use crate::exit::{ExitKind, Failure};
use crate::helper_pod::{APP_NAME, LABEL_MANAGED_BY};
use crate::helper_session::Registry;
use crate::locate::Located;
use crate::output;
use crate::retry::{AttemptRecord, RetryPolicy};

use crate::helper_pod::HelperOptions;
use crate::restore::{execute, new_pvc, new_run_id, Execution, Mode};

/// The label that marks a scratch PVC of a drill (its value: the backup id).
pub const LABEL_DRILL: &str = "pvbackup.dev/drill";

pub struct DrillPlan {
    pub backup: String,
    pub from: Option<String>,
    /// `-n`, when given; else the backup's namespace.
    pub namespace: Option<String>,
    pub storage_class: Option<String>,
    pub size: Option<String>,
    pub image: String,
    pub run_as_user: Option<i64>,
    pub pod_timeout: Duration,
    pub retry: RetryPolicy,
    pub output: OutputFormat,
    pub store: crate::destination::StoreOptions,
    /// `--identity`: decrypts an encrypted backup, here in the client.
    pub keys: Option<crate::encryption::Identities>,
}

/// What a drill found, as printed with `-o json|yaml`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    pub backup_id: String,
    pub backup: String,
    /// The PVC the backup was taken from.
    pub source: String,
    pub namespace: String,
    pub scratch_pvc: String,
    pub storage_class: Option<String>,
    pub size: String,
    /// `intact`: restored and every checksum matched; `corrupt`: the backup does not restore
    /// to what its manifest says (exit 3); `failed`: the drill could not be carried out (exit 1).
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// From the start of the drill until the scratch volume was restored and verified
    /// (PVC provisioning and helper pod start included), or until the drill failed.
    pub time_to_restore_seconds: f64,
    /// Restored bytes per second of `timeToRestoreSeconds` (0 unless intact).
    pub throughput_bytes_per_second: f64,
    pub attempts: usize,
    pub attempt_log: Vec<AttemptRecord>,
    /// The scratch PVC and every helper pod were seen deleted.
    pub cleaned_up: bool,
    pub exit_code: u8,
}

/// `pvbackup-drill-<pvc>-<random>`: a DNS label no user PVC is likely to have, and never
/// reused (the create itself is the collision check).
fn scratch_name(pvc: &str) -> String {
    let mut short: String = pvc
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(30)
        .collect();
    short = short.trim_matches('-').to_string();
    if short.is_empty() {
        short = "pvc".into();
    }
    format!(
        "pvbackup-drill-{short}-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    )
}

/// The scratch PVC: the backup's access modes, class and size unless overridden, and labels
/// of its own (not the source PVC's, which selectors of the real workload may match).
fn scratch_pvc(
    loc: &Located,
    ns: &str,
    name: &str,
    storage_class: Option<&str>,
    size: &str,
) -> PersistentVolumeClaim {
    let mut pvc = new_pvc(&loc.manifest, ns, name, storage_class, size);
    let id: String = loc
        .manifest
        .backup_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    pvc.metadata.labels = Some(
        [
            (LABEL_MANAGED_BY.to_string(), APP_NAME.to_string()),
            (LABEL_DRILL.to_string(), id),
        ]
        .into(),
    );
    pvc
}

pub async fn run(conn: &Connection, plan: DrillPlan) -> Result<(), Failure> {
    let started = Instant::now();
    // The manifest's entries are read (and checked: safe to restore, hard links to files of
    // the backup) into a table on disk.
    let (loc, entries) = tokio::task::block_in_place(|| {
        crate::restore::entries::locate(
            &plan.backup,
            plan.from.as_deref(),
            &plan.store,
            plan.keys.as_ref(),
        )
    })?;
    let (loc, entries) = (Arc::new(loc), Arc::new(entries));
    let m = loc.manifest.clone();
    if m.pvc.volume_mode.as_deref() == Some("Block") {
        return Err(Failure::refused(
            "the backup is of a Block volume, which restore (and so drill) does not support",
        ));
    }
    let ns = plan
        .namespace
        .clone()
        .unwrap_or_else(|| m.namespace.clone());
    let needed = entries.needed;
    let size = plan
        .size
        .clone()
        .or_else(|| m.pvc.capacity.clone())
        .unwrap_or_else(|| format!("{}Mi", needed.div_ceil(1 << 20)));
    let bytes = parse_quantity_bytes(&size).map_err(|e| Failure::usage(e.to_string()))?;
    if bytes < needed {
        return Err(Failure::refused(format!(
            "a scratch PVC of {size} ({}) is smaller than the restore needs ({}); pass --size {}Mi or more",
            output::human_bytes(bytes),
            output::human_bytes(needed),
            needed.div_ceil(1 << 20)
        )));
    }
    let storage_class = plan
        .storage_class
        .clone()
        .or_else(|| m.pvc.storage_class.clone());
    let name = scratch_name(&m.pvc.name);
    let files = entries.files;
    let registry = Registry::default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(conn.client.clone(), &ns);
    let created = std::sync::atomic::AtomicBool::new(false);
    let mut log = Vec::new();

    let work = async {
        let pvc = scratch_pvc(&loc, &ns, &name, storage_class.as_deref(), &size);
        match pvcs.create(&PostParams::default(), &pvc).await {
            Ok(_) => created.store(true, std::sync::atomic::Ordering::SeqCst),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Err(Failure::refused(format!(
                    "PVC {ns}/{name} already exists; a drill never touches an existing PVC. Run the drill again (it picks a new random name)"
                )))
            }
            Err(e) => return Err(explain(&format!("creating scratch PVC {ns}/{name}"), &e)),
        }
        eprintln!(
            "drill: restoring {} into scratch PVC {ns}/{name} ({size}{})",
            loc.destination.locate(&loc.manifest_key),
            storage_class
                .as_deref()
                .map(|c| format!(", StorageClass {c}"))
                .unwrap_or_default()
        );
        let namespace_obj = Api::<Namespace>::all(conn.client.clone())
            .get_opt(&ns)
            .await
            .ok()
            .flatten();
        let exec = Execution {
            loc: loc.clone(),
            entries: entries.clone(),
            ns: ns.clone(),
            name: name.clone(),
            target: Target {
                namespace: ns.clone(),
                pvc: name.clone(),
                pods: Vec::new(),
                access_modes: m
                    .pvc
                    .access_modes
                    .iter()
                    .map(|a| AccessMode::parse(a))
                    .collect(),
                capacity_bytes: Some(bytes),
                storage_class: storage_class.clone(),
                attached_node: None,
            },
            nodes: collect_nodes(conn).await,
            namespace_obj,
            run_id: new_run_id(),
            mode: Mode::Replace,
            in_place: false,
            helper: HelperOptions::new(plan.image.clone(), plan.run_as_user, plan.pod_timeout),
            retry: plan.retry,
            needed,
            recover_on_interrupt: false,
        };
        let done = execute(&conn.client, &exec, &registry).await;
        log = done.attempt_log;
        done.result
    };
    let outcome = tokio::select! {
        r = work => r,
        _ = crate::signals::interrupted() => Err(Failure::interrupted()),
    };
    let time_to_restore = started.elapsed().as_secs_f64();

    // Whatever happened: no helper pod and no scratch PVC stays behind.
    let mut cleaned_up = registry.delete_all(&conn.client).await.is_empty();
    if created.load(std::sync::atomic::Ordering::SeqCst) {
        cleaned_up &= delete_pvc(&pvcs, &name).await;
    }
    if !cleaned_up {
        eprintln!(
            "warning: the drill's scratch PVC {ns}/{name} or a helper pod could not be deleted; remove them with `kubectl delete pvc -n {ns} {name}` and `kubectl pvbackup cleanup -n {ns}`"
        );
    }
    if let Err(f) = &outcome {
        if f.kind == ExitKind::Interrupted {
            return Err(Failure::new(
                ExitKind::Interrupted,
                if cleaned_up {
                    "interrupted; the drill's scratch PVC and helper pods were deleted".to_string()
                } else {
                    format!("interrupted; scratch PVC {ns}/{name} may be left")
                },
            ));
        }
    }
    let (verdict, kind) = match &outcome {
        Ok(()) => ("intact", None),
        Err(f) if f.kind == ExitKind::Integrity => ("corrupt", Some(ExitKind::Integrity)),
        Err(f) => ("failed", Some(f.kind)),
    };
    // Cleanup that failed turns a passed drill into a runtime failure; it never hides a verdict.
    let kind = match (kind, cleaned_up) {
        (None, false) => Some(ExitKind::Runtime),
        (k, _) => k,
    };
    let report = DrillReport {
        backup_id: m.backup_id.clone(),
        backup: loc.destination.locate(&loc.manifest_key),
        source: format!("{}/{}", m.namespace, m.pvc.name),
        namespace: ns.clone(),
        scratch_pvc: name.clone(),
        storage_class,
        size,
        verdict,
        error: outcome.as_ref().err().map(|f| f.message.clone()),
        files,
        bytes: m.uncompressed_size,
        stored_bytes: m.archive.size,
        time_to_restore_seconds: time_to_restore,
        throughput_bytes_per_second: if outcome.is_ok() && time_to_restore > 0.0 {
            m.uncompressed_size as f64 / time_to_restore
        } else {
            0.0
        },
        attempts: log.len(),
        attempt_log: log,
        cleaned_up,
        exit_code: kind.map_or(0, ExitKind::code),
    };
    print_report(&report, plan.output)?;
    match kind {
        None => Ok(()),
        Some(kind) => Err(Failure::new(
            kind,
            match &outcome {
                Err(f) if verdict == "corrupt" => {
                    format!("the backup does not restore intact: {}", f.message)
                }
                Err(f) => format!("the drill failed: {}", f.message),
                Ok(()) => format!(
                    "the backup restored intact, but the drill could not clean up scratch PVC {ns}/{name}"
                ),
            },
        )),
    }
}

/// Deletes the scratch PVC and waits (bounded) until it is gone; true when confirmed.
async fn delete_pvc(api: &Api<PersistentVolumeClaim>, name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            api.delete(name, &DeleteParams::default()),
        )
        .await
        {
            Ok(Ok(_)) | Ok(Err(kube::Error::Api(_))) => break,
            _ if Instant::now() >= deadline => return false,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    // The pvc-protection finalizer holds it until no pod uses it; helper pods are gone by now.
    while Instant::now() < deadline {
        if let Ok(Ok(None)) = tokio::time::timeout(Duration::from_secs(10), api.get_opt(name)).await
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

fn print_report(r: &DrillReport, format: OutputFormat) -> Result<(), Failure> {
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(format, r),
        _ => {
            let mut text = format!(
                "drill of backup {} ({}) in scratch PVC {}/{}\n",
                r.backup_id, r.source, r.namespace, r.scratch_pvc
            );
            text.push_str(&output::table(
                &[
                    "verdict",
                    "files",
                    "size",
                    "stored",
                    "time to restore",
                    "throughput",
                    "attempts",
                    "scratch pvc",
                ],
                vec![vec![
                    r.verdict.to_string(),
                    r.files.to_string(),
                    output::human_bytes(r.bytes),
                    output::human_bytes(r.stored_bytes),
                    format!("{:.1}s", r.time_to_restore_seconds),
                    if r.verdict == "intact" {
                        format!(
                            "{}/s",
                            output::human_bytes(r.throughput_bytes_per_second as u64)
                        )
                    } else {
                        "-".into()
                    },
                    r.attempts.to_string(),
                    if r.cleaned_up {
                        "deleted"
                    } else {
                        "LEFT BEHIND"
                    }
                    .to_string(),
                ]],
            ));
            text.push('\n');
            output::print_stdout(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_dns_labels_and_fresh() {
        let a = scratch_name("data-orders-db-0");
        let b = scratch_name("data-orders-db-0");
        assert!(a.starts_with("pvbackup-drill-data-orders-db-0-"), "{a}");
        assert_ne!(a, b, "two drills must not share a scratch PVC name");
        let long = scratch_name(&"X_y".repeat(60));
        assert!(long.len() <= 63, "{long}");
        assert!(long
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert!(scratch_name("__").starts_with("pvbackup-drill-pvc-"));
    }
}

//! `kubectl pvbackup create`: back up the selected PVCs, one archive and manifest each.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use crate::archive::Compression;
use crate::backup::{
    backup_target, get_pvc, helper_request, BackupSettings, TargetContext, TargetResult,
};
use crate::cli::OutputFormat;
use crate::collect::{collect_inventory, collect_nodes};
use crate::connect::Connection;
use crate::destination::Destination;
use crate::discover::{discover_targets, Mesh, TargetSelection};
use crate::exit::{ExitKind, Failure};
use crate::helper_pod::{build_helper_pod, HelperOptions};
use crate::helper_session::Registry;
use crate::manifest::ClusterInfo;
use crate::output;
use crate::progress::Progress;

pub struct CreatePlan {
    pub selection: TargetSelection,
    pub selector: Option<String>,
    pub destination: Arc<dyn Destination>,
    pub compression: Compression,
    /// `--encrypt-to`/`--encrypt-to-file`: encrypt the backup with age.
    pub encryption: Option<crate::encryption::Recipients>,
    pub image: String,
    pub run_as_user: Option<i64>,
    pub pod_timeout: Duration,
    pub retry: crate::retry::RetryPolicy,
    pub consistency: crate::snapshot::ConsistencySettings,
    pub parallel: usize,
    /// Helper pods per node at once (`--max-per-node`).
    pub max_per_node: usize,
    /// Exec streams per volume (`--streams`).
    pub streams: crate::streams::StreamCount,
    pub dry_run: bool,
    pub output: OutputFormat,
    pub progress: bool,
}

/// `--mesh` text to a mesh, with the list of valid names on error.
pub fn parse_mesh(s: &str) -> Result<Mesh, Failure> {
    s.parse::<Mesh>()
        .map_err(|e| Failure::usage(format!("{e}")))
}

pub fn new_backup_id() -> String {
    format!(
        "{}-{:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        rand::random::<u16>()
    )
}

async fn allowed(
    api: &Api<SelfSubjectAccessReview>,
    ns: &str,
    verb: &str,
    group: &str,
    resource: &str,
    sub: &str,
) -> Result<bool, Failure> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.to_string()),
                verb: Some(verb.to_string()),
                group: (!group.is_empty()).then(|| group.to_string()),
                resource: Some(resource.to_string()),
                subresource: (!sub.is_empty()).then(|| sub.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| crate::connect::explain("checking permissions (SelfSubjectAccessReview)", &e))?
        .status
        .is_some_and(|s| s.allowed))
}

async fn preflight(
    client: &kube::Client,
    namespaces: &[String],
    consistency: &mut crate::snapshot::ConsistencySettings,
) -> Result<(), Failure> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    let mut missing_snapshot = Vec::new();
    for ns in namespaces {
        // The rows of the one permission table (crate::rbac) that are asked about up front.
        for p in crate::rbac::NAMESPACED {
            let list = match p.need {
                crate::rbac::Need::Backup => &mut missing,
                crate::rbac::Need::Snapshot
                    if consistency.mode != crate::snapshot::SnapshotMode::Never =>
                {
                    &mut missing_snapshot
                }
                _ => continue,
            };
            if !allowed(&api, ns, p.verb, p.group, p.resource, p.subresource).await? {
                list.push(format!("{} {} (namespace {ns})", p.verb, p.display()));
            }
        }
    }
    snapshot_permissions(missing_snapshot, consistency)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "missing permissions, nothing was created: {}. Grant them with the Role in the README (RBAC section).",
            missing.join(", ")
        )))
    }
}

/// Snapshot permissions: `always` needs them; `auto` makes live copies without them, and says so.
fn snapshot_permissions(
    missing: Vec<String>,
    consistency: &mut crate::snapshot::ConsistencySettings,
) -> Result<(), Failure> {
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(", ");
    match consistency.mode {
        crate::snapshot::SnapshotMode::Always => Err(Failure::runtime(format!(
            "--snapshot always needs permissions you lack, nothing was created: {list}. Grant them with the Role in the README (RBAC section), or use --snapshot auto"
        ))),
        _ => {
            // Recorded as the fallback reason of every live copy of this run.
            consistency.denied = Some(format!("missing permissions for snapshots: {list}"));
            Ok(())
        }
    }
}

pub async fn run(conn: &Connection, plan: CreatePlan) -> Result<(), Failure> {
    let inv = collect_inventory(conn, None).await?;
    let mut selection = plan.selection.clone();
    if let Some(sel) = &plan.selector {
        // `-l` picks pods; their PVCs become the named targets.
        let labelled = collect_inventory(conn, Some(sel)).await?;
        let names: std::collections::BTreeSet<String> = crate::discover::extract_rows(
            &labelled.pods,
            &labelled.pvcs,
            &labelled.namespaces,
            &crate::discover::DiscoverOptions { all_pods: true },
        )
        .into_iter()
        .filter(|r| r.pod.is_some() && r.pvc_exists)
        .filter(|r| selection.mesh.is_none_or(|m| r.mesh == Some(m)) || selection.all_pvcs)
        .map(|r| format!("{}/{}", r.namespace, r.pvc))
        .collect();
        if names.is_empty() {
            return Err(Failure::runtime(format!(
                "no pod matching -l {sel} mounts a PVC in scope"
            )));
        }
        selection.pvc_names.extend(names);
    }
    let targets = discover_targets(&inv.pods, &inv.pvcs, &inv.namespaces, &selection)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let nodes = collect_nodes(conn).await;
    let backup_id = new_backup_id();
    let mut settings = BackupSettings {
        backup_id: backup_id.clone(),
        compression: plan.compression,
        helper: HelperOptions::new(plan.image.clone(), plan.run_as_user, plan.pod_timeout),
        retry: plan.retry,
        cluster: ClusterInfo {
            server: conn.server.clone(),
            context: conn.context.clone(),
            created_by: if plan.dry_run {
                None
            } else {
                crate::collect::whoami(&conn.client).await
            },
        },
        consistency: plan.consistency.clone(),
        run_state: Default::default(),
        node_slots: crate::node_slots::NodeSlots::new(
            plan.max_per_node,
            crate::node_slots::eligible(&nodes),
        ),
        encryption: plan.encryption.clone(),
        streams: plan.streams,
        in_cluster: conn.in_cluster,
    };
    let mut contexts = Vec::new();
    for t in targets {
        let pvc = get_pvc(&conn.client, &t).await?;
        let pods = inv
            .pods
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(t.namespace.as_str())
                    && t.pods
                        .iter()
                        .any(|m| Some(&m.name) == p.metadata.name.as_ref())
            })
            .cloned()
            .collect();
        let namespace = inv
            .namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(t.namespace.as_str()))
            .cloned();
        contexts.push(TargetContext {
            target: t,
            pvc,
            pods,
            namespace,
            nodes: nodes.clone(),
        });
    }
    if plan.dry_run {
        return print_dry_run(&contexts, &settings, plan.destination.as_ref(), plan.output);
    }
    // Credentials and bucket, before any helper pod exists.
    let dest = plan.destination.clone();
    tokio::task::spawn_blocking(move || dest.check())
        .await
        .map_err(|e| Failure::runtime(format!("checking the destination failed: {e}")))??;
    let mut namespaces: Vec<String> = contexts
        .iter()
        .map(|c| c.target.namespace.clone())
        .collect();
    namespaces.dedup();
    preflight(&conn.client, &namespaces, &mut settings.consistency).await?;
    // Tells `cleanup` that this run's snapshots and temporary PVCs are in use.
    let _renewing = settings
        .run_state
        .leftovers
        .keep_alive(&conn.client, settings.run_state.lease);

    // Where each helper will run, as far as known now: one node's volumes interleaved with the
    // others', so that `--parallel` keeps every node busy (`node_slots` enforces the cap).
    let expected: Vec<Option<String>> = contexts
        .iter()
        .map(|c| {
            helper_request(c, &settings, 1, None)
                .ok()
                .and_then(|r| r.node)
        })
        .collect();
    let contexts: Vec<TargetContext> = {
        let mut slots: Vec<Option<TargetContext>> = contexts.into_iter().map(Some).collect();
        crate::node_slots::spread_order(&expected)
            .into_iter()
            .filter_map(|i| slots[i].take())
            .collect()
    };
    let registry = Registry::default();
    let progress = Progress::new(
        plan.progress && matches!(plan.output, OutputFormat::Table | OutputFormat::Wide),
    );
    let work = futures::stream::iter(contexts.iter())
        .map(|ctx| {
            backup_target(
                &conn.client,
                ctx,
                &settings,
                plan.destination.clone(),
                &registry,
                &progress,
            )
        })
        .buffer_unordered(plan.parallel)
        .collect::<Vec<TargetResult>>();
    let results = tokio::select! {
        r = work => r,
        _ = crate::signals::interrupted() => {
            // The application first: post hooks whose pre hook ran.
            for o in settings.run_state.owed.run_all(&conn.client).await {
                if o.result != crate::hooks::HookResult::Ok {
                    eprintln!("post hook in {}/{} failed: {}", o.pod, o.container, o.error.unwrap_or_default());
                }
            }
            let left = registry.delete_all(&conn.client).await;
            if !left.is_empty() {
                eprintln!("could not delete helper pods {}; run `kubectl pvbackup cleanup`", left.join(", "));
            }
            // Deleting the pods ends their streams and the writers drop their partial files;
            // whatever is still blocked after a short wait is removed here.
            crate::backup::wait_for_writers(Duration::from_secs(3)).await;
            plan.destination.abort_incomplete();
            let copies = settings.run_state.leftovers.delete_all(&conn.client).await;
            if !copies.is_empty() {
                eprintln!("could not delete {}; delete them with kubectl", copies.join(", "));
            }
            return Err(Failure::interrupted());
        }
    };
    let left = registry.delete_all(&conn.client).await;
    if !left.is_empty() {
        eprintln!(
            "warning: could not delete helper pods {}; run `kubectl pvbackup cleanup`",
            left.join(", ")
        );
    }
    let mut results = results;
    results.sort_by(|a, b| (&a.namespace, &a.pvc).cmp(&(&b.namespace, &b.pvc)));
    report(&backup_id, plan.destination.as_ref(), &results, plan.output)?;
    // `--snapshot auto` that made live copies: one warning per reason (a cluster without the
    // snapshot API is one reason for every PVC), not one per PVC.
    let mut fallbacks: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for r in &results {
        if let Some(why) = r
            .consistency
            .as_ref()
            .and_then(|c| c.source.fallback_reason.as_deref())
        {
            fallbacks
                .entry(why)
                .or_default()
                .push(format!("{}/{}", r.namespace, r.pvc));
        }
    }
    for (why, pvcs) in fallbacks {
        eprintln!(
            "warning: live copy of {} instead of a point-in-time one: {why}",
            pvcs.join(", ")
        );
    }
    for r in &results {
        if let Some(c) = r.consistency.as_ref().filter(|c| c.changed_file_count > 0) {
            eprintln!(
                "warning: {}/{}: {} file(s) changed while they were read ({}{}); this live copy may not be consistent. Use --snapshot always with a VolumeSnapshotClass for the PVC's driver, or quiesce the application with --pre-hook/--post-hook (or Velero hook annotations); --require-consistent makes this an error",
                r.namespace,
                r.pvc,
                c.changed_file_count,
                c.changed_files.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if c.changed_file_count > 5 { ", …" } else { "" }
            );
        }
    }
    for r in results.iter().filter(|r| r.status != "ok") {
        eprintln!(
            "error: {}/{}: {}",
            r.namespace,
            r.pvc,
            r.error.clone().unwrap_or_default()
        );
    }
    let worst = results
        .iter()
        .filter_map(|r| r.kind)
        .reduce(ExitKind::worst);
    match worst {
        None => Ok(()),
        Some(kind) => {
            let failed = results.iter().filter(|r| r.status != "ok").count();
            Err(Failure::new(
                kind,
                format!("{failed} of {} PVC backups failed", results.len()),
            ))
        }
    }
}

fn report(
    id: &str,
    dest: &dyn Destination,
    results: &[TargetResult],
    format: OutputFormat,
) -> Result<(), Failure> {
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(
            format,
            &serde_json::json!({"backupId": id, "destination": dest.describe(), "results": results}),
        ),
        _ => {
            let rows = results
                .iter()
                .map(|r| {
                    vec![
                        r.namespace.clone(),
                        r.pvc.clone(),
                        r.status.to_string(),
                        r.files.to_string(),
                        output::human_bytes(r.bytes),
                        output::human_bytes(r.stored_bytes),
                        format!("{:.1}s", r.seconds),
                        r.attempts.to_string(),
                        r.error
                            .clone()
                            .or_else(|| r.archive.clone())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            output::print_stdout(&format!(
                "backup {id} → {}\n{}\n",
                dest.describe(),
                output::table(
                    &[
                        "namespace",
                        "pvc",
                        "status",
                        "files",
                        "size",
                        "stored",
                        "time",
                        "attempts",
                        "archive"
                    ],
                    rows
                )
            ))
        }
    }
}

fn print_dry_run(
    contexts: &[TargetContext],
    s: &BackupSettings,
    dest: &dyn Destination,
    format: OutputFormat,
) -> Result<(), Failure> {
    let mut plans = Vec::new();
    for c in contexts {
        let pod = helper_request(c, s, 1, None).map(|r| build_helper_pod(&r));
        plans.push(serde_json::json!({
            "namespace": c.target.namespace,
            "pvc": c.target.pvc,
            "archive": dest.locate(&crate::destination::archive_key(&s.backup_id, &c.target.namespace, &c.target.pvc, &crate::backup::extension(s))),
            "helperPod": pod.as_ref().ok(),
            "refused": pod.as_ref().err().map(|f| f.message.clone()),
        }));
    }
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(
            format,
            &serde_json::json!({"dryRun": true, "backupId": s.backup_id, "targets": plans}),
        ),
        _ => {
            let mut text = format!(
                "dry run: backup {} → {} ({} PVCs); nothing is created\n",
                s.backup_id,
                dest.describe(),
                plans.len()
            );
            for p in &plans {
                text.push_str(&format!(
                    "\n# {}/{} → {}\n",
                    p["namespace"].as_str().unwrap_or_default(),
                    p["pvc"].as_str().unwrap_or_default(),
                    p["archive"].as_str().unwrap_or_default()
                ));
                if let Some(r) = p["refused"].as_str() {
                    text.push_str(&format!("refused: {r}\n"));
                } else {
                    text.push_str(&serde_yaml::to_string(&p["helperPod"]).unwrap_or_default());
                }
            }
            output::print_stdout(&text)
        }
    }
}

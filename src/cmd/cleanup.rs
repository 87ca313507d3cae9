//! `kubectl pvbackup cleanup`: delete helper pods a killed client left behind (they also stop
//! by themselves once their lease expires, and are killed at their activeDeadlineSeconds),
//! and finish what interrupted restores left on their volumes: the volume of every restore
//! helper pod found is checked in a fresh helper pod, an unfinished restore is rolled back,
//! and what finished ones left is deleted. It also deletes the VolumeSnapshots and temporary
//! PVCs of `create --snapshot` runs that were killed: only those whose run stopped renewing
//! them (see `snapshot::abandoned`), never a running backup's.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::cli::OutputFormat;
use crate::connect::{explain, Connection};
use crate::exit::Failure;
use crate::helper_pod::{Purpose, APP_NAME, LABEL_MANAGED_BY, LABEL_PURPOSE, LABEL_PVC};
use crate::helper_session::delete_and_wait;
use crate::output;
use crate::restore::{recover_volume, Recovered, VolumeRecovery};

/// How long a helper pod started to check a volume may take to run.
const POD_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(conn: &Connection, yes: bool, format: OutputFormat) -> Result<(), Failure> {
    let api: Api<Pod> = if conn.all_namespaces {
        Api::all(conn.client.clone())
    } else {
        Api::namespaced(conn.client.clone(), &conn.namespace)
    };
    let pods = api
        .list(&ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={APP_NAME}")))
        .await
        .map_err(|e| explain("listing helper pods", &e))?
        .items;
    let names: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    let volumes = restored_volumes(&pods);
    let ns_scope = (!conn.all_namespaces).then_some(conn.namespace.as_str());
    let copies = crate::snapshot::collect_copies(&conn.client, ns_scope).await?;
    let (abandoned, running): (Vec<_>, Vec<_>) = copies.into_iter().partition(|c| c.abandoned);
    if (!names.is_empty() || !abandoned.is_empty()) && !yes {
        let mut question = if names.is_empty() {
            String::new()
        } else {
            format!(
                "Delete {} helper pod(s): {}",
                names.len(),
                names
                    .iter()
                    .map(|(n, p)| format!("{n}/{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        if !volumes.is_empty() {
            question.push_str(&format!(
                ", and undo what interrupted restores left on PVC(s) {}",
                volumes
                    .iter()
                    .map(|(ns, pvc, _)| format!("{ns}/{pvc}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !abandoned.is_empty() {
            question.push_str(&format!(
                "{}the {} left by killed backups",
                if names.is_empty() {
                    "Delete "
                } else {
                    ", and "
                },
                abandoned
                    .iter()
                    .map(|c| format!("{} {}/{}", c.kind, c.namespace, c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        crate::confirm::confirm(&format!("{question}?"))?;
    }
    for (ns, name) in &names {
        let a: Api<Pod> = Api::namespaced(conn.client.clone(), ns);
        // Gone before a volume it mounted is touched: a step it still runs must not race
        // with the rollback.
        if !delete_and_wait(&a, name, Duration::from_secs(60)).await {
            return Err(Failure::runtime(format!(
                "helper pod {ns}/{name} could not be deleted (or is still terminating after 60s); run cleanup again, or delete it with kubectl delete pod -n {ns} {name}"
            )));
        }
    }
    // After the helper pods: a temporary PVC is deleted once nothing mounts it.
    let copies_left = crate::snapshot::delete_copies(&conn.client, &abandoned).await;
    let mut recovered: Vec<VolumeRecovery> = Vec::new();
    let mut failed = Vec::new();
    for (ns, pvc, template) in &volumes {
        match recover_volume(&conn.client, ns, pvc, template, POD_TIMEOUT).await {
            Ok(r) => recovered.push(r),
            Err(f) => failed.push(format!("PVC {ns}/{pvc}: {}", f.message)),
        }
    }
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(
            format,
            &serde_json::json!({
                "deleted": names.iter().map(|(n, p)| format!("{n}/{p}")).collect::<Vec<_>>(),
                "copies": abandoned.iter().map(|c| (c, if copies_left.iter().any(|l| l.ends_with(&format!("{}/{}", c.namespace, c.name))) { "failed" } else { "deleted" }))
                    .chain(running.iter().map(|c| (c, "kept")))
                    .map(|(c, action)| serde_json::json!({
                        "kind": c.kind, "namespace": c.namespace, "name": c.name, "runId": c.run_id,
                        "idleSeconds": c.idle_seconds, "action": action,
                    }))
                    .collect::<Vec<_>>(),
                "volumes": recovered.iter().map(|v| serde_json::json!({
                    "namespace": v.namespace,
                    "pvc": v.pvc,
                    "rolledBack": v.recovered.iter().filter_map(|r| match r {
                        Recovered::RolledBack { run_id } | Recovered::Emptied { run_id } => {
                            Some(run_id.clone())
                        }
                        _ => None,
                    }).collect::<Vec<_>>(),
                    "removed": v.recovered.iter().filter_map(|r| match r {
                        Recovered::Removed { name } => Some(name.clone()),
                        _ => None,
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        )?,
        _ => {
            let mut text: String = if names.is_empty() && abandoned.is_empty() {
                "no helper pods found\n".to_string()
            } else {
                names
                    .iter()
                    .map(|(n, p)| format!("pod/{p} deleted (namespace {n})\n"))
                    .collect()
            };
            for c in &abandoned {
                if !copies_left
                    .iter()
                    .any(|l| l.ends_with(&format!("{}/{}", c.namespace, c.name)))
                {
                    text.push_str(&format!(
                        "{}/{} deleted (namespace {}): left by killed backup run {}\n",
                        c.kind, c.name, c.namespace, c.run_id
                    ));
                }
            }
            for c in &running {
                text.push_str(&format!(
                    "{}/{} kept (namespace {}): backup run {} is still running (renewed {}s ago)\n",
                    c.kind, c.name, c.namespace, c.run_id, c.idle_seconds
                ));
            }
            for v in &recovered {
                if v.recovered.is_empty() {
                    text.push_str(&format!(
                        "pvc/{} (namespace {}): nothing left by an interrupted restore\n",
                        v.pvc, v.namespace
                    ));
                }
                for r in &v.recovered {
                    text.push_str(&match r {
                        Recovered::RolledBack { run_id } => format!(
                            "pvc/{} (namespace {}): rolled back interrupted restore {run_id}; it holds what it held before\n",
                            v.pvc, v.namespace
                        ),
                        Recovered::Emptied { run_id } => format!(
                            "pvc/{} (namespace {}): rolled back interrupted restore {run_id}; it was restoring into the empty volume, which is empty again\n",
                            v.pvc, v.namespace
                        ),
                        Recovered::Removed { name } => format!(
                            "pvc/{} (namespace {}): removed {name}\n",
                            v.pvc, v.namespace
                        ),
                    });
                }
            }
            output::print_stdout(&text)?;
        }
    }
    let mut errors = Vec::new();
    if !failed.is_empty() {
        errors.push(format!(
            "what interrupted restores left could not be checked on {}; run cleanup again (a re-run of the restore also finishes it)",
            failed.join("; ")
        ));
    }
    if !copies_left.is_empty() {
        errors.push(format!(
            "{} could not be deleted; run cleanup again, or delete them with kubectl",
            copies_left.join(", ")
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(errors.join(". ")))
    }
}

/// The PVCs that restore helper pods mounted, once each, with one of those pods (the last
/// listed) as the model of the pod that checks the volume.
fn restored_volumes(pods: &[Pod]) -> Vec<(String, String, Pod)> {
    let mut out: Vec<(String, String, Pod)> = Vec::new();
    for p in pods {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if labels.get(LABEL_PURPOSE).map(String::as_str) != Some(Purpose::Restore.as_str()) {
            continue;
        }
        let Some(pvc) = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LABEL_PVC))
            .cloned()
        else {
            continue;
        };
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        match out.iter_mut().find(|(n, c, _)| n == &ns && c == &pvc) {
            Some(e) => e.2 = p.clone(),
            None => out.push((ns, pvc, p.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, purpose: &str, pvc: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop",
                "labels": {LABEL_MANAGED_BY: APP_NAME, LABEL_PURPOSE: purpose},
                "annotations": {LABEL_PVC: pvc}},
        }))
        .unwrap()
    }

    #[test]
    fn only_restore_pods_name_volumes_to_check_once_each() {
        let v = restored_volumes(&[
            pod("a", "restore", "data"),
            pod("b", "backup", "logs"),
            pod("c", "restore", "data"),
            pod("d", "restore", "cache"),
        ]);
        let names: Vec<_> = v
            .iter()
            .map(|(ns, pvc, p)| format!("{ns}/{pvc}:{}", p.metadata.name.clone().unwrap()))
            .collect();
        assert_eq!(names, ["shop/data:c", "shop/cache:d"]);
    }
}

/// `cleanup --to DEST`, as a plan.
pub struct DestinationPlan {
    pub dest: String,
    pub store: crate::destination::StoreOptions,
    pub older_than: std::time::Duration,
    pub dry_run: bool,
    pub yes: bool,
    pub output: OutputFormat,
}

/// Removes what interrupted backups left at a destination (`destination::cleanup`), after a
/// confirmation, and reports each leftover: removed, would be removed, kept (too young) or
/// failed. Exit 1 when any removal failed.
pub fn run_destination(plan: &DestinationPlan) -> Result<(), Failure> {
    use crate::destination::{self, cleanup};
    let dest = destination::parse_with(&plan.dest, &plan.store)?;
    let found = cleanup::find(dest.as_ref(), plan.older_than, chrono::Utc::now())?;
    let stale = found.stale();
    if stale > 0 && !plan.dry_run && !plan.yes {
        crate::confirm::confirm(&format!(
            "Remove {stale} leftover(s) of interrupted backups at {} (untouched for {} or more)?",
            found.destination, found.older_than
        ))?;
    }
    let report = if plan.dry_run {
        found
    } else {
        cleanup::apply(dest.as_ref(), found)
    };
    match plan.output {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(plan.output, &report)?,
        _ => {
            for note in &report.notes {
                eprintln!("note: {note}");
            }
            output::print_stdout(&destination_table(&report))?;
        }
    }
    let failed: Vec<&cleanup::Item> = report.failed().collect();
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(Failure::runtime(format!(
            "{} of {stale} leftover(s) at {} could not be removed; the first: {}. Fix that, then run the same cleanup again",
            failed.len(),
            report.destination,
            first.error.as_deref().unwrap_or("unknown error")
        ))),
    }
}

fn destination_table(report: &crate::destination::cleanup::Report) -> String {
    use crate::destination::cleanup::{Leftover, Outcome};
    if report.items.is_empty() {
        return format!(
            "no leftovers of interrupted backups at {}\n",
            report.destination
        );
    }
    let rows = report
        .items
        .iter()
        .map(|i| {
            let upload = i.kind == Leftover::MultipartUpload;
            vec![
                i.kind.label().to_string(),
                i.location.clone(),
                age(i.age_seconds),
                i.size
                    .map(output::human_bytes)
                    .unwrap_or_else(|| "-".into()),
                match (i.outcome, upload) {
                    (Outcome::Removed, false) => "removed".into(),
                    (Outcome::Removed, true) => "aborted".into(),
                    (Outcome::WouldRemove, false) => "would remove".into(),
                    (Outcome::WouldRemove, true) => "would abort".into(),
                    (Outcome::Kept, _) => format!("kept: younger than {}", report.older_than),
                    (Outcome::Failed, _) => {
                        format!("FAILED: {}", i.error.as_deref().unwrap_or_default())
                    }
                },
            ]
        })
        .collect();
    output::table(&["kind", "location", "age", "size", "action"], rows) + "\n"
}

/// An age as kubectl shows one: `45s`, `12m`, `5h`, `3d`.
fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod destination_tests {
    use super::age;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(25 * 3600), "25h");
        assert_eq!(age(9 * 86400 + 5), "9d");
    }
}

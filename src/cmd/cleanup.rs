//! `kubectl pvbackup cleanup`: delete helper pods a killed client left behind (they also stop
//! by themselves once their lease expires, and are killed at their activeDeadlineSeconds),
//! and finish what interrupted restores left on their volumes: the volume of every restore
//! helper pod found is checked in a fresh helper pod, an unfinished restore is rolled back,
//! and what finished ones left is deleted.

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
    if !names.is_empty() && !yes {
        let mut question = format!(
            "Delete {} helper pod(s): {}",
            names.len(),
            names
                .iter()
                .map(|(n, p)| format!("{n}/{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
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
                "volumes": recovered.iter().map(|v| serde_json::json!({
                    "namespace": v.namespace,
                    "pvc": v.pvc,
                    "rolledBack": v.recovered.iter().filter_map(|r| match r {
                        Recovered::RolledBack { run_id } => Some(run_id.clone()),
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
            let mut text: String = if names.is_empty() {
                "no helper pods found\n".to_string()
            } else {
                names
                    .iter()
                    .map(|(n, p)| format!("pod/{p} deleted (namespace {n})\n"))
                    .collect()
            };
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
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "what interrupted restores left could not be checked on {}; run cleanup again (a re-run of the restore also finishes it)",
            failed.join("; ")
        )))
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

//! `kubectl-pvbackup __complete WORDS…` (see `cli::completion_request`): what kubectl's plugin
//! completion runs (through `completions/kubectl_complete-pvbackup`). Prints candidates for the last word and a Cobra
//! directive line; asks the cluster or the destination only for names that live there, within
//! a short deadline, and prints nothing but the directive when anything goes wrong: a
//! completion must never show an error or keep the shell waiting.

use std::time::Duration;

use clap::CommandFactory;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;

use crate::cli::Cli;
use crate::complete::{self, directive, Request, Scope, Want};
use crate::connect::{connect, ConnectOptions};
use crate::discover::Mesh;
use crate::output;

/// The whole budget for a cluster or destination lookup. A shell user waits for it on every
/// TAB, and an unreachable cluster otherwise costs the TCP connect timeout.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// Answers a completion request on its own small runtime; always succeeds (a failure is an
/// empty answer). Work still pending at the deadline is dropped, not waited for.
pub fn answer(words: &[String]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return print(vec![], directive::ERROR);
    };
    rt.block_on(run(words));
    rt.shutdown_background();
}

async fn run(words: &[String]) {
    let mut root = Cli::command();
    root.build();
    let req = complete::analyze(&root, words);
    let (candidates, dir) = candidates(&root, &req).await;
    print(candidates, dir);
}

fn print(candidates: Vec<String>, dir: u8) {
    let mut text = String::new();
    for c in candidates {
        text.push_str(&c);
        text.push('\n');
    }
    text.push_str(&format!(":{dir}\n"));
    let _ = output::print_stdout(&text);
}

async fn candidates(root: &clap::Command, req: &Request) -> (Vec<String>, u8) {
    let cmd = complete::command_for(root, req);
    let sub = req.subcommand.as_deref().unwrap_or_default();
    match &req.want {
        Want::Subcommand => (
            complete::subcommand_candidates(root, &req.current),
            directive::NO_FILE_COMP,
        ),
        Want::Flag => (complete::flag_candidates(cmd, req), directive::NO_FILE_COMP),
        Want::Value { arg, prefix } => {
            let (values, dir) = match arg.as_str() {
                "namespace" => (
                    cluster(&req.scope, Lookup::Namespaces).await,
                    directive::NO_FILE_COMP,
                ),
                "to_pvc" => (
                    cluster(&req.scope, Lookup::Pvcs).await,
                    directive::NO_FILE_COMP,
                ),
                "storage_class" => (
                    cluster(&req.scope, Lookup::StorageClasses).await,
                    directive::NO_FILE_COMP,
                ),
                "context" => (contexts(&req.scope), directive::NO_FILE_COMP),
                "mesh" => (
                    Mesh::ALL.iter().map(|m| m.as_str().to_string()).collect(),
                    directive::NO_FILE_COMP,
                ),
                // Paths: let the shell complete files or directories.
                "kubeconfig" => (vec![], directive::DEFAULT),
                "to" | "from" => (vec![], directive::FILTER_DIRS),
                other => match cmd.get_arguments().find(|a| a.get_id() == other) {
                    Some(a) if !a.get_possible_values().is_empty() => {
                        (complete::possible_values(a), directive::NO_FILE_COMP)
                    }
                    _ => (vec![], directive::NO_FILE_COMP),
                },
            };
            let values = complete::filter(values, &req.current)
                .into_iter()
                .map(|v| format!("{prefix}{v}"))
                .collect();
            (values, dir)
        }
        Want::Positional { index } => match (sub, index) {
            ("create", _) => {
                let typed = &req.positionals;
                let pvcs = cluster(&req.scope, Lookup::Pvcs)
                    .await
                    .into_iter()
                    .filter(|c| !typed.iter().any(|t| c.split('\t').next() == Some(t)))
                    .collect();
                (
                    complete::filter(pvcs, &req.current),
                    directive::NO_FILE_COMP,
                )
            }
            ("verify" | "inspect" | "restore" | "drill", 0) => match &req.scope.from {
                Some(from) => (
                    complete::filter(backup_ids(from.clone()).await, &req.current),
                    directive::NO_FILE_COMP,
                ),
                // A manifest or archive path.
                None => (vec![], directive::DEFAULT),
            },
            ("list", 0) => (vec![], directive::FILTER_DIRS),
            _ => {
                let values = cmd
                    .get_positionals()
                    .nth(*index)
                    .map(complete::possible_values)
                    .unwrap_or_default();
                (
                    complete::filter(values, &req.current),
                    directive::NO_FILE_COMP,
                )
            }
        },
    }
}

#[derive(Clone, Copy)]
enum Lookup {
    Namespaces,
    Pvcs,
    StorageClasses,
}

/// Names from the cluster; empty on any error or after the deadline.
async fn cluster(scope: &Scope, what: Lookup) -> Vec<String> {
    tokio::time::timeout(DEADLINE, ask_cluster(scope, what))
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn ask_cluster(scope: &Scope, what: Lookup) -> Option<Vec<String>> {
    let kubeconfig = scope.kubeconfig.as_ref().map(std::path::PathBuf::from);
    let conn = connect(&ConnectOptions {
        kubeconfig: kubeconfig.as_deref(),
        context: scope.context.as_deref(),
        namespace: scope.namespace.as_deref(),
        all_namespaces: scope.all_namespaces,
    })
    .await
    .ok()?;
    let lp = ListParams::default();
    Some(match what {
        Lookup::Namespaces => Api::<Namespace>::all(conn.client)
            .list(&lp)
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect(),
        Lookup::StorageClasses => Api::<StorageClass>::all(conn.client)
            .list(&lp)
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|s| {
                let name = s.metadata.name?;
                Some(complete::with_help(&name, &s.provisioner))
            })
            .collect(),
        Lookup::Pvcs => {
            let api: Api<PersistentVolumeClaim> = if conn.all_namespaces {
                Api::all(conn.client)
            } else {
                Api::namespaced(conn.client, &conn.namespace)
            };
            api.list(&lp)
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|p| {
                    let name = p.metadata.name?;
                    // With -A, `create` takes NAMESPACE/NAME.
                    let name = match (conn.all_namespaces, p.metadata.namespace) {
                        (true, Some(ns)) => format!("{ns}/{name}"),
                        _ => name,
                    };
                    Some(complete::with_help(&name, &pvc_summary(&p.spec, &p.status)))
                })
                .collect()
        }
    })
}

/// `1Gi ReadWriteOnce standard`: what tells two PVCs apart in a completion menu.
fn pvc_summary(
    spec: &Option<k8s_openapi::api::core::v1::PersistentVolumeClaimSpec>,
    status: &Option<k8s_openapi::api::core::v1::PersistentVolumeClaimStatus>,
) -> String {
    let capacity = status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone());
    let modes = spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .map(|m| m.join(","));
    let class = spec.as_ref().and_then(|s| s.storage_class_name.clone());
    [capacity, modes, class]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Context names from the kubeconfig (a local file; no cluster involved).
fn contexts(scope: &Scope) -> Vec<String> {
    let kc = match &scope.kubeconfig {
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    };
    kc.map(|k| k.contexts.into_iter().map(|c| c.name).collect())
        .unwrap_or_default()
}

/// `BACKUP_ID/NAMESPACE/PVC` of every complete backup at a destination. Listing runs on its
/// own thread: a destination's client may block, and a detached thread neither delays the
/// answer past the deadline nor holds up the process exit.
async fn backup_ids(from: String) -> Vec<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("complete-list".into())
        .spawn(move || {
            let ids = crate::destination::parse(&from)
                .ok()
                .and_then(|d| d.list("").ok())
                .map(|keys| {
                    crate::cmd::list::group_keys(&keys)
                        .into_iter()
                        .filter(|(_, (manifest, archive))| manifest.is_some() && archive.is_some())
                        .map(|((id, ns, pvc), _)| format!("{id}/{ns}/{pvc}"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let _ = tx.send(ids);
        });
    if spawned.is_err() {
        return vec![];
    }
    tokio::time::timeout(DEADLINE, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

//! `kubectl pvbackup restore`: the plan (verify the archive locally, check the target, ask),
//! then the restore engine (`crate::restore`), then the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, PostParams};

use crate::cli::{OutputFormat, RestoreModeArg};
use crate::collect::collect_nodes;
use crate::connect::{explain, Connection};
use crate::discover::{
    discover_targets, parse_quantity_bytes, AccessMode, Target, TargetSelection,
};
use crate::exit::{ExitKind, Failure};
use crate::helper_pod::{
    build_helper_pod, podsecurity_conflict, HelperOptions, HelperPodRequest, Purpose, APP_NAME,
    LABEL_MANAGED_BY,
};
use crate::helper_session::Registry;
use crate::locate::Located;
use crate::manifest::Manifest;
use crate::output;
use crate::restore::{execute, new_pvc, new_run_id, Execution, Mode};
use crate::retry::RetryPolicy;

pub struct RestorePlan {
    pub backup: String,
    pub from: Option<String>,
    pub to_pvc: Option<String>,
    /// `-n`, when given; else the manifest's namespace.
    pub namespace: Option<String>,
    pub create_pvc: bool,
    pub storage_class: Option<String>,
    pub size: Option<String>,
    pub mode: RestoreModeArg,
    pub yes: bool,
    pub dry_run: bool,
    pub force: bool,
    /// Delete the current content and extract straight into the volume: no staging, no
    /// rollback (see [`check_in_place`]).
    pub in_place: bool,
    /// `--in-place`: the snapshot of the target to cut first.
    pub rollback: crate::snapshot::RollbackSettings,
    pub image: String,
    pub run_as_user: Option<i64>,
    pub pod_timeout: Duration,
    pub retry: RetryPolicy,
    pub output: OutputFormat,
    pub store: crate::destination::StoreOptions,
    /// `--identity`: decrypts an encrypted backup, here in the client.
    pub keys: Option<crate::encryption::Identities>,
}

/// The rules of `--in-place`, checked before any API call; returns whether the restore runs in
/// place. It exists for an existing PVC whose data leaves no room to stage the backup next to
/// it, and only a replace can make that room (by deleting the data first).
pub fn check_in_place(
    in_place: bool,
    create_pvc: bool,
    mode: RestoreModeArg,
) -> Result<bool, Failure> {
    if !in_place {
        return Ok(false);
    }
    if create_pvc {
        return Err(Failure::usage(
            "--in-place and --create-pvc do not go together: --in-place gives up the rollback to make room in an existing, full PVC, while a PVC that --create-pvc makes is sized for the backup and has room to stage it; drop --in-place",
        ));
    }
    if mode == RestoreModeArg::Merge {
        return Err(Failure::usage(
            "--in-place works with --mode replace only: a merge keeps the current files, so it needs as much free space in place as it does staged, and the staged merge can roll back; drop --in-place",
        ));
    }
    Ok(true)
}

/// What can be checked before anything changes without reading the archive: every entry of
/// the manifest is safe to restore, and the archive is there. The archive itself is checked
/// while it streams into the helper pod (one read instead of two), before anything is swapped
/// in (see `restore::execute`).
fn preflight(loc: &Located) -> Result<(), Failure> {
    drop(loc.open_archive()?);
    Ok(())
}

fn pvc_capacity(pvc: &PersistentVolumeClaim) -> Option<u64> {
    let from_status = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"));
    let from_spec = pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    from_status
        .or(from_spec)
        .and_then(|q| parse_quantity_bytes(&q.0).ok())
}

/// The cluster's view of the target, gathered before anything changes.
struct TargetState {
    pvc: Option<PersistentVolumeClaim>,
    target: Target,
    namespace_obj: Option<Namespace>,
    /// Running (or about to run) pods that mount the PVC, helper pods excluded.
    users: Vec<String>,
}

async fn target_state(
    conn: &Connection,
    ns: &str,
    name: &str,
    m: &Manifest,
) -> Result<TargetState, Failure> {
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(conn.client.clone(), ns);
    let pvc = pvc_api
        .get_opt(name)
        .await
        .map_err(|e| explain(&format!("reading PVC {ns}/{name}"), &e))?;
    let pods_api: Api<Pod> = Api::namespaced(conn.client.clone(), ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(&format!("listing pods in namespace {ns}"), &e))?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                .map(String::as_str)
                != Some(APP_NAME)
        })
        .collect();
    let ns_api: Api<Namespace> = Api::all(conn.client.clone());
    let namespace_obj = ns_api.get_opt(ns).await.ok().flatten();
    let target = match &pvc {
        Some(p) => {
            let sel = TargetSelection {
                pvc_names: vec![format!("{ns}/{name}")],
                mesh: None,
                all_pvcs: true,
            };
            discover_targets(
                &pods,
                std::slice::from_ref(p),
                &namespace_obj.clone().into_iter().collect::<Vec<_>>(),
                &sel,
            )
            .map_err(|e| Failure::runtime(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| Failure::runtime(format!("PVC {ns}/{name} could not be resolved")))?
        }
        None => Target {
            namespace: ns.to_string(),
            pvc: name.to_string(),
            pods: Vec::new(),
            access_modes: m
                .pvc
                .access_modes
                .iter()
                .map(|a| AccessMode::parse(a))
                .collect(),
            capacity_bytes: None,
            storage_class: m.pvc.storage_class.clone(),
            attached_node: None,
        },
    };
    let users = target
        .pods
        .iter()
        .filter(|p| p.active || !matches!(p.phase.as_deref(), Some("Succeeded") | Some("Failed")))
        .map(|p| p.name.clone())
        .collect();
    Ok(TargetState {
        pvc,
        target,
        namespace_obj,
        users,
    })
}

pub async fn run(conn: &Connection, plan: RestorePlan) -> Result<(), Failure> {
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
    if let Some(warning) = crate::manifest::skipped_warning(&loc.manifest.skipped) {
        eprintln!("{warning}");
    }
    let m = loc.manifest.clone();
    // 1. The manifest's entries, and the archive's presence.
    let verify_loc = Arc::new(loc);
    {
        let l = verify_loc.clone();
        tokio::task::spawn_blocking(move || preflight(&l))
            .await
            .map_err(|e| Failure::runtime(format!("the preflight failed: {e}")))??;
    }
    let ns = plan
        .namespace
        .clone()
        .unwrap_or_else(|| m.namespace.clone());
    let name = plan.to_pvc.clone().unwrap_or_else(|| m.pvc.name.clone());
    if m.pvc.volume_mode.as_deref() == Some("Block") {
        return Err(Failure::refused(
            "the backup is of a Block volume, which restore does not support",
        ));
    }
    // 2. The target.
    let state = target_state(conn, &ns, &name, &m).await?;
    let needed = entries.needed;
    let files = entries.files;
    let create_size = match (&state.pvc, plan.create_pvc) {
        (None, false) => {
            return Err(Failure::refused(format!(
                "PVC {ns}/{name} does not exist; pass --create-pvc to create it from the backup's spec (add --storage-class / --size to change them)"
            )))
        }
        (None, true) => {
            let size = plan.size.clone().or_else(|| m.pvc.capacity.clone()).unwrap_or_else(|| format!("{}Mi", needed.div_ceil(1 << 20)));
            let bytes = parse_quantity_bytes(&size).map_err(|e| Failure::usage(e.to_string()))?;
            if bytes < needed {
                return Err(Failure::refused(format!(
                    "--size {size} ({}) is smaller than the data to restore needs ({}); ask for at least {}Mi",
                    output::human_bytes(bytes),
                    output::human_bytes(needed),
                    needed.div_ceil(1 << 20)
                )));
            }
            Some(size)
        }
        (Some(p), _) => {
            if plan.create_pvc {
                eprintln!("note: PVC {ns}/{name} already exists; restoring into it (--create-pvc, --storage-class and --size are ignored)");
            }
            if let Some(cap) = pvc_capacity(p) {
                if cap < needed {
                    return Err(Failure::refused(format!(
                        "PVC {ns}/{name} holds {} but the backup needs {} (data plus filesystem overhead); restore into a larger PVC (--to-pvc NAME --create-pvc --size Q)",
                        output::human_bytes(cap),
                        output::human_bytes(needed)
                    )));
                }
            }
            None
        }
    };
    if !state.users.is_empty() && !plan.force && !plan.dry_run {
        return Err(Failure::refused(format!(
            "PVC {ns}/{name} is mounted by running pod(s) {}; restoring under a running workload corrupts it. Scale it down first (kubectl scale --replicas=0), or pass --force",
            state.users.join(", ")
        )));
    }
    let run_id = new_run_id();
    let nodes = collect_nodes(conn).await;
    let helper = HelperOptions::new(plan.image.clone(), plan.run_as_user, plan.pod_timeout);
    let request = |purpose_run_id: &str| -> Result<HelperPodRequest, Failure> {
        HelperPodRequest::placed(
            &state.target,
            &nodes,
            purpose_run_id,
            Purpose::Restore,
            &helper,
        )
    };
    if !plan.dry_run {
        // The plan's pod must be admissible before anything changes (the PVC included).
        let pod = build_helper_pod(&request(&run_id)?);
        if let Some(nso) = &state.namespace_obj {
            if let Some(conflict) = podsecurity_conflict(nso, &pod) {
                return Err(Failure::runtime(conflict));
            }
        }
    }
    let engine_mode = match plan.mode {
        RestoreModeArg::Replace => Mode::Replace,
        RestoreModeArg::Merge => Mode::Merge,
    };
    let mode = engine_mode.as_str();
    // What tables and prompts call the mode; JSON keeps `mode` and adds `inPlace`.
    let mode_label = if plan.in_place {
        "replace, in place"
    } else {
        mode
    };
    if plan.dry_run {
        let pod = request(&run_id).map(|r| build_helper_pod(&r));
        // What the run would decide about its rollback snapshot (under `always`, a refusal).
        let rollback = match (&state.pvc, plan.in_place) {
            (Some(pvc), true) => {
                Some(crate::snapshot::rollback_class(&conn.client, &ns, pvc, &plan.rollback).await?)
            }
            _ => None,
        };
        let doc = serde_json::json!({
            "dryRun": true,
            "backup": verify_loc.destination.locate(&verify_loc.manifest_key),
            "target": name,
            "namespace": ns,
            "mode": mode,
            "inPlace": plan.in_place,
            "createPvc": create_size.as_ref().map(|s| serde_json::json!({"size": s, "storageClass": plan.storage_class.clone().or(m.pvc.storage_class.clone())})),
            "files": files,
            "bytes": m.uncompressed_size,
            "podsUsingIt": state.users,
            "refused": if !state.users.is_empty() && !plan.force { Some("the PVC is mounted by running pods; --force is needed") } else { None },
            "helperPod": pod.as_ref().ok(),
            "placementRefused": pod.as_ref().err().map(|f| f.message.clone()),
            "rollbackSnapshot": rollback.as_ref().map(|r| match r {
                Ok(class) => serde_json::json!({"cut": true, "class": class}),
                Err(why) => serde_json::json!({"cut": false, "reason": why}),
            }),
        });
        return match plan.output {
            OutputFormat::Json | OutputFormat::Yaml => output::structured(plan.output, &doc),
            _ => {
                let mut text = format!(
                    "dry run: restore {} → {ns}/{name} ({mode_label}); nothing is changed\n",
                    doc["backup"].as_str().unwrap_or_default()
                );
                match &rollback {
                    Some(Ok(class)) => text.push_str(&format!(
                        "in place: a VolumeSnapshot of {ns}/{name} (class {}) is cut first and holds the current content; then it is deleted and the backup extracted straight into the volume\n",
                        class.as_deref().unwrap_or("the driver's default")
                    )),
                    Some(Err(why)) => text.push_str(&format!(
                        "in place: the current content is deleted first, then the backup is extracted straight into the volume; no snapshot ({why}), so no rollback\n"
                    )),
                    None if plan.in_place => text.push_str("in place: the current content is deleted first, then the backup is extracted straight into the volume; no rollback\n"),
                    None => {}
                }
                text.push_str(&summary_table(
                    &name,
                    &ns,
                    mode_label,
                    files,
                    m.uncompressed_size,
                    &state.users,
                ));
                text.push('\n');
                if let Some(s) = &create_size {
                    text.push_str(&format!("would create PVC {ns}/{name} of {s}\n"));
                }
                if let Some(r) = doc["refused"].as_str() {
                    text.push_str(&format!("refused: {r}\n"));
                }
                match &pod {
                    Ok(p) => text.push_str(&format!(
                        "\n# helper pod\n{}",
                        serde_yaml::to_string(p).unwrap_or_default()
                    )),
                    Err(f) => text.push_str(&format!("refused: {}\n", f.message)),
                }
                output::print_stdout(&text)
            }
        };
    }
    let registry = Registry::default();
    let exec = Execution {
        loc: verify_loc.clone(),
        entries: Arc::new(entries),
        ns: ns.clone(),
        name: name.clone(),
        target: state.target.clone(),
        nodes: nodes.clone(),
        namespace_obj: state.namespace_obj.clone(),
        run_id,
        mode: engine_mode,
        in_place: plan.in_place,
        helper: helper.clone(),
        retry: plan.retry,
        needed,
        recover_on_interrupt: true,
    };
    // 3. Confirmation, once the volume is known to have room (nobody should type the PVC's
    // name for a restore that is then refused).
    if !plan.yes {
        if state.pvc.is_some() {
            crate::restore::check_room(&conn.client, &exec, &registry).await?;
        }
        eprintln!(
            "{}",
            summary_table(
                &name,
                &ns,
                mode_label,
                files,
                m.uncompressed_size,
                &state.users
            )
        );
        match plan.mode {
            RestoreModeArg::Replace => crate::confirm::confirm_typed(
                &format!(
                    "Replace the whole content of PVC {ns}/{name} with backup {}?",
                    m.backup_id
                ),
                &name,
            )?,
            RestoreModeArg::Merge => crate::confirm::confirm(&format!(
                "Overwrite {files} files of PVC {ns}/{name} with backup {}?",
                m.backup_id
            ))?,
        }
        if plan.in_place {
            // The second, louder question: the first one is the same as for a restore that
            // can roll back, so it alone does not say what is given up.
            crate::confirm::confirm_loud(
                &format!(
                    "WARNING: --in-place has no rollback. The current content of PVC {ns}/{name} is deleted first, then the backup is extracted into it; if the restore fails or is interrupted, the PVC is left partly restored until the restore is run again."
                ),
                "Restore in place, without a rollback?",
                "in-place",
            )?;
        }
    }
    // 4. From here on the cluster changes.
    if let Some(size) = &create_size {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(conn.client.clone(), &ns);
        let obj = new_pvc(&m, &ns, &name, plan.storage_class.as_deref(), size);
        api.create(&PostParams::default(), &obj)
            .await
            .map_err(|e| explain(&format!("creating PVC {ns}/{name}"), &e))?;
        eprintln!("created PVC {ns}/{name} ({size})");
    }
    // The one restore without a rollback gets one where the cluster can: a snapshot of the
    // target, cut before its content is deleted.
    let mut before = match (&state.pvc, plan.in_place) {
        (Some(pvc), true) => {
            match crate::snapshot::snapshot_before_restore(
                &conn.client,
                &ns,
                pvc,
                &exec.run_id,
                &plan.rollback,
            )
            .await?
            {
                Ok(k) => {
                    eprintln!(
                        "cut VolumeSnapshot {ns}/{} of PVC {ns}/{name}: it holds the content before this restore",
                        k.name
                    );
                    Some(k)
                }
                Err(why) => {
                    if plan.rollback.mode != crate::snapshot::SnapshotMode::Never {
                        eprintln!("warning: no snapshot of PVC {ns}/{name} before restoring in place ({why}); there is no rollback");
                    }
                    None
                }
            }
        }
        _ => None,
    };
    let mut done = execute(&conn.client, &exec, &registry).await;
    if let Some(k) = before.as_mut() {
        match &mut done.result {
            Ok(()) if !plan.rollback.keep => {
                if let Err(e) = crate::snapshot::delete_kept(&conn.client, k).await {
                    eprintln!(
                        "warning: {e}; delete it with kubectl delete volumesnapshot -n {ns} {}",
                        k.name
                    );
                }
            }
            Ok(()) => {}
            Err(f) => {
                f.message = format!(
                    "{}. The content before the restore is kept in VolumeSnapshot {ns}/{}: {}",
                    f.message,
                    k.name,
                    k.how_to_restore()
                );
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let doc = serde_json::json!({
        "snapshot": before,
        "target": name,
        "namespace": ns,
        "mode": mode,
        "inPlace": plan.in_place,
        "files": files,
        "bytes": m.uncompressed_size,
        "seconds": secs,
        "verified": done.result.is_ok(),
        "status": if done.result.is_ok() { "ok" } else { "failed" },
        "error": done.result.as_ref().err().map(|f| f.message.clone()),
        "attempts": done.attempt_log.len(),
        "attemptLog": done.attempt_log,
    });
    if let Err(f) = done.result {
        // Scripts get the attempts of a failed restore too; the error itself goes to stderr.
        if matches!(plan.output, OutputFormat::Json | OutputFormat::Yaml)
            && f.kind != ExitKind::Interrupted
        {
            output::structured(plan.output, &doc)?;
        }
        return Err(f);
    }
    match plan.output {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(plan.output, &doc),
        _ => output::print_stdout(&format!(
            "{}\nrestored and verified in {secs:.1}s\n{}",
            output::table(
                &[
                    "namespace",
                    "pvc",
                    "mode",
                    "files",
                    "size",
                    "time",
                    "attempts",
                    "verified"
                ],
                vec![vec![
                    ns.clone(),
                    name.clone(),
                    mode_label.to_string(),
                    files.to_string(),
                    output::human_bytes(m.uncompressed_size),
                    format!("{secs:.1}s"),
                    done.attempt_log.len().to_string(),
                    "yes".into()
                ]]
            ),
            match &before {
                Some(k) if k.kept => format!(
                    "the content before the restore is kept in VolumeSnapshot {ns}/{} (delete it with kubectl delete volumesnapshot -n {ns} {} once it is not needed)\n",
                    k.name, k.name
                ),
                Some(k) => format!("VolumeSnapshot {ns}/{} deleted (--keep-snapshot=false)\n", k.name),
                None => String::new(),
            }
        )),
    }
}

fn summary_table(
    name: &str,
    ns: &str,
    mode: &str,
    files: u64,
    bytes: u64,
    users: &[String],
) -> String {
    output::table(
        &[
            "target",
            "namespace",
            "mode",
            "files",
            "bytes",
            "pods using it",
        ],
        vec![vec![
            name.to_string(),
            ns.to_string(),
            mode.to_string(),
            files.to_string(),
            output::human_bytes(bytes),
            if users.is_empty() {
                "none".into()
            } else {
                users.join(",")
            },
        ]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_is_for_replacing_an_existing_pvc() {
        assert!(!check_in_place(false, true, RestoreModeArg::Merge).unwrap());
        assert!(check_in_place(true, false, RestoreModeArg::Replace).unwrap());
        let f = check_in_place(true, true, RestoreModeArg::Replace).unwrap_err();
        assert_eq!(f.kind, ExitKind::Usage);
        assert!(f.message.contains("--create-pvc") && f.message.contains("drop --in-place"));
        let f = check_in_place(true, false, RestoreModeArg::Merge).unwrap_err();
        assert_eq!(f.kind, ExitKind::Usage);
        assert!(f.message.contains("--mode replace") && f.message.contains("drop --in-place"));
    }
}

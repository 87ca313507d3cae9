//! `kubectl pvbackup restore`: verify the archive locally, check the target, ask, then in a
//! helper pod extract into a staging directory on the same volume, verify it there, swap it
//! in with renames, verify the result in place, and only then drop the originals. Any failure
//! after the first change rolls the volume back (in a fresh helper pod if the first one died).
//!
//! `--in-place` (replace mode, for a volume without room to stage) is the exception: it deletes
//! the current content and extracts straight into the volume, so there is nothing to roll back
//! to; a failure after the delete says the volume is partly restored, and a retry (or re-run)
//! deletes and extracts again.

mod engine;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use tokio::io::AsyncReadExt;

use crate::archive::{check_entries_safe, verify_archive};
use crate::cli::{OutputFormat, RestoreModeArg};
use crate::collect::collect_nodes;
use crate::connect::{explain, Connection};
use crate::discover::{
    discover_targets, parse_quantity_bytes, placement, AccessMode, Target, TargetSelection,
};
use crate::exit::{ExitKind, Failure};
use crate::helper_pod::{
    build_helper_pod, podsecurity_conflict, HelperPodRequest, Purpose, APP_NAME, LABEL_MANAGED_BY,
};
use crate::helper_session::{HelperPod, Registry, Watch};
use crate::locate::{locate, Located};
use crate::manifest::Manifest;
use crate::output;
use crate::retry::{jitter, AttemptRecord, GiveUp, RetryPolicy};

pub use engine::{compare, needed_bytes, parse_listing};

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
    pub image: String,
    pub run_as_user: Option<i64>,
    pub pod_timeout: Duration,
    pub retry: RetryPolicy,
    pub output: OutputFormat,
    pub store: crate::destination::StoreOptions,
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

/// What a failed in-place restore leaves behind, and how to finish it.
fn partly_restored(ns: &str, name: &str) -> String {
    format!(
        "PVC {ns}/{name} is left partly restored (--in-place deleted its previous content and has no rollback); run the same restore command again to finish it"
    )
}

fn mode_name(m: RestoreModeArg) -> &'static str {
    match m {
        RestoreModeArg::Replace => "replace",
        RestoreModeArg::Merge => "merge",
    }
}

pub(crate) fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        chrono::Utc::now().format("%Y%m%dt%H%M%S"),
        rand::random::<u16>()
    )
}

/// Streams the whole archive through `verify_archive`; any problem is exit 3.
fn verify_locally(loc: &Located) -> Result<(), Failure> {
    check_entries_safe(&loc.manifest.entries).map_err(|e| Failure::integrity(e.to_string()))?;
    let reader = loc
        .destination
        .open(&loc.archive_key)
        .map_err(crate::locate::archive_missing)?;
    let report = verify_archive(
        std::io::BufReader::with_capacity(1 << 20, reader),
        loc.manifest.compression,
        &loc.manifest,
    )?;
    if report.is_ok() {
        return Ok(());
    }
    let mut problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    if !report.complete && problems.is_empty() {
        problems.push("the archive ends early".into());
    }
    Err(Failure::integrity(format!(
        "the backup does not match its manifest, so nothing was restored: {}",
        problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    )))
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

/// The PVC `--create-pvc` creates: the manifest's access modes, class, size and labels.
pub(crate) fn new_pvc(
    m: &Manifest,
    ns: &str,
    name: &str,
    storage_class: Option<&str>,
    size: &str,
) -> PersistentVolumeClaim {
    let mut labels: BTreeMap<String, String> = m.pvc.labels.clone();
    labels.insert(
        "pvbackup.dev/restored-from".into(),
        m.backup_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(63)
            .collect(),
    );
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(if m.pvc.access_modes.is_empty() {
                vec!["ReadWriteOnce".to_string()]
            } else {
                m.pvc.access_modes.clone()
            }),
            storage_class_name: storage_class
                .map(str::to_string)
                .or_else(|| m.pvc.storage_class.clone()),
            volume_mode: m.pvc.volume_mode.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
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
    let loc = locate(&plan.backup, plan.from.as_deref(), &plan.store)?;
    if let Some(warning) = crate::manifest::skipped_warning(&loc.manifest.skipped) {
        eprintln!("{warning}");
    }
    let m = loc.manifest.clone();
    // 1. The archive, checked end to end before anything else.
    let verify_loc = Arc::new(loc);
    {
        let l = verify_loc.clone();
        tokio::task::spawn_blocking(move || verify_locally(&l))
            .await
            .map_err(|e| Failure::runtime(format!("the verifier failed: {e}")))??;
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
    let needed = needed_bytes(&m);
    let files = m.entries.iter().filter(|e| e.sha256.is_some()).count() as u64;
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
    let request = |purpose_run_id: &str| -> Result<HelperPodRequest, Failure> {
        let place =
            placement(&state.target, &nodes).map_err(|e| Failure::refused(e.to_string()))?;
        let mut req = HelperPodRequest::new(&ns, &name, purpose_run_id, Purpose::Restore);
        req.image = plan.image.clone();
        req.node = place.node;
        req.tolerations = place.tolerations;
        req.run_as_user = plan.run_as_user;
        Ok(req)
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
    let mode = mode_name(plan.mode);
    // What tables and prompts call the mode; JSON keeps `mode` and adds `inPlace`.
    let mode_label = if plan.in_place {
        "replace, in place"
    } else {
        mode
    };
    if plan.dry_run {
        let pod = request(&run_id).map(|r| build_helper_pod(&r));
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
        });
        return match plan.output {
            OutputFormat::Json | OutputFormat::Yaml => output::structured(plan.output, &doc),
            _ => {
                let mut text = format!(
                    "dry run: restore {} → {ns}/{name} ({mode_label}); nothing is changed\n",
                    doc["backup"].as_str().unwrap_or_default()
                );
                if plan.in_place {
                    text.push_str("in place: the current content is deleted first, then the backup is extracted straight into the volume; no rollback\n");
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
    // 3. Confirmation.
    if !plan.yes {
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
    let registry = Registry::default();
    let exec = Execution {
        loc: verify_loc.clone(),
        ns: ns.clone(),
        name: name.clone(),
        target: state.target.clone(),
        nodes: nodes.clone(),
        namespace_obj: state.namespace_obj.clone(),
        run_id,
        mode: plan.mode,
        in_place: plan.in_place,
        image: plan.image.clone(),
        run_as_user: plan.run_as_user,
        pod_timeout: plan.pod_timeout,
        retry: plan.retry,
        needed,
        recover_on_interrupt: true,
    };
    let done = execute(&conn.client, &exec, &registry).await;
    let secs = started.elapsed().as_secs_f64();
    let doc = serde_json::json!({
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
            "{}\nrestored and verified in {secs:.1}s\n",
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
            )
        )),
    }
}

/// Everything the in-cluster half of a restore needs; shared by `restore` and `drill`.
pub(crate) struct Execution {
    pub loc: Arc<Located>,
    pub ns: String,
    pub name: String,
    pub target: Target,
    pub nodes: Vec<k8s_openapi::api::core::v1::Node>,
    pub namespace_obj: Option<Namespace>,
    pub run_id: String,
    pub mode: RestoreModeArg,
    /// `--in-place`: no staging, no rollback (replace mode only).
    pub in_place: bool,
    pub image: String,
    pub run_as_user: Option<i64>,
    pub pod_timeout: Duration,
    pub retry: RetryPolicy,
    pub needed: u64,
    /// On Ctrl-C/SIGTERM, roll the volume back before returning (a drill's scratch volume is
    /// deleted instead, so it skips this).
    pub recover_on_interrupt: bool,
}

impl Execution {
    /// The helper pod request for one pod of this run (`suffix` makes its name unique).
    fn request(&self, suffix: &str) -> Result<HelperPodRequest, Failure> {
        let place =
            placement(&self.target, &self.nodes).map_err(|e| Failure::refused(e.to_string()))?;
        let mut req = HelperPodRequest::new(
            &self.ns,
            &self.name,
            format!("{}{suffix}", self.run_id),
            Purpose::Restore,
        );
        req.image = self.image.clone();
        req.node = place.node;
        req.tolerations = place.tolerations;
        req.run_as_user = self.run_as_user;
        Ok(req)
    }
}

/// The outcome of [`execute`]: every attempt, and the final result.
pub(crate) struct Executed {
    pub result: Result<(), Failure>,
    pub attempt_log: Vec<AttemptRecord>,
}

/// Restores in helper pods, retrying transient failures. Every attempt after a failure first
/// rolls the volume back to its original state (removing a half-extracted staging directory,
/// undoing a half-done swap), and only once the previous helper pod is confirmed gone, so two
/// pods never work on the volume at once; the swap therefore stays all-or-nothing across
/// attempts. Helper pods are deleted whatever happens. An in-place restore has nothing to roll
/// back to: every attempt deletes the volume's content and extracts again, and a failure after
/// the first delete says the volume is partly restored.
pub(crate) async fn execute(
    client: &kube::Client,
    ex: &Execution,
    registry: &Registry,
) -> Executed {
    let phase = Mutex::new(Phase::Nothing);
    let ghost = Mutex::new(None);
    let job = Job {
        loc: ex.loc.clone(),
        run_id: ex.run_id.clone(),
        mode: ex.mode,
        in_place: ex.in_place,
        timeout: ex.pod_timeout,
        needed: ex.needed,
        stall: ex.retry.stall,
    };
    let mut log = Vec::new();
    let outcome = tokio::select! {
        r = attempts(client, ex, &job, registry, &phase, &ghost, &mut log) => r,
        _ = crate::signals::interrupted() => {
            if ex.recover_on_interrupt && !ex.in_place {
                eprintln!("interrupted; rolling back");
                if *phase.lock().unwrap_or_else(|p| p.into_inner()) != Phase::Nothing {
                    if let Err(f) = recover(client, ex, &job, registry, &ghost).await {
                        eprintln!("{}", f.message);
                    }
                }
            }
            Err(Failure::interrupted())
        }
    };
    let outcome = match outcome {
        Err(f)
            if f.kind != ExitKind::Interrupted
                && *phase.lock().unwrap_or_else(|p| p.into_inner()) == Phase::NeedsRecovery =>
        {
            match recover(client, ex, &job, registry, &ghost).await {
                Ok(()) => Err(Failure::new(
                    f.kind,
                    format!(
                        "{}; the volume was rolled back to its previous content",
                        f.message
                    ),
                )),
                Err(r) => Err(Failure::new(
                    f.kind,
                    format!("{}; {}", f.message, r.message),
                )),
            }
        }
        Err(f) if *phase.lock().unwrap_or_else(|p| p.into_inner()) == Phase::PartlyRestored => {
            // The generic interruption message speaks of partial files removed; here the
            // partial state is the point.
            let what = if f.kind == ExitKind::Interrupted {
                "interrupted; the helper pods were removed".to_string()
            } else {
                f.message
            };
            Err(Failure::new(
                f.kind,
                format!("{what}; {}", partly_restored(&ex.ns, &ex.name)),
            ))
        }
        other => other,
    };
    let left = registry.delete_all(client).await;
    if !left.is_empty() {
        eprintln!(
            "warning: could not delete helper pods {}; run `kubectl pvbackup cleanup`",
            left.join(", ")
        );
    }
    Executed {
        result: outcome,
        attempt_log: log,
    }
}

/// The retry loop of [`execute`]; `log` receives one record per attempt.
async fn attempts(
    client: &kube::Client,
    ex: &Execution,
    job: &Job,
    registry: &Registry,
    phase: &Mutex<Phase>,
    ghost: &Mutex<Option<String>>,
    log: &mut Vec<AttemptRecord>,
) -> Result<(), Failure> {
    let label = format!("{}/{}", ex.ns, ex.name);
    let mut first_failure: Option<Instant> = None;
    for number in 1u32.. {
        let began = Instant::now();
        let suffix = if number == 1 {
            String::new()
        } else {
            format!("-a{number}")
        };
        let outcome = async {
            let last_pod = ghost.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(g) = last_pod {
                if !wait_gone(client, &ex.ns, &g, Duration::from_secs(60)).await {
                    *ghost.lock().unwrap_or_else(|p| p.into_inner()) = Some(g.clone());
                    return Err((Failure::runtime(format!(
                        "helper pod {}/{g} of the previous attempt still exists, so another attempt could race with it on the volume; delete it, then run the restore again",
                        ex.ns
                    ))
                    .permanent(), None));
                }
            }
            let pod = build_helper_pod(&ex.request(&suffix).map_err(|f| (f, None))?);
            if let Some(nso) = &ex.namespace_obj {
                if let Some(conflict) = podsecurity_conflict(nso, &pod) {
                    return Err((Failure::runtime(conflict).permanent(), None));
                }
            }
            // In place there is nothing to roll back to: the attempt deletes and extracts again.
            restore_in_pod(client, pod, job, registry, phase, number > 1 && !job.in_place).await
        }
        .await;
        let seconds = began.elapsed().as_secs_f64();
        let f = match outcome {
            Ok(()) => {
                log.push(AttemptRecord {
                    attempt: number,
                    outcome: "ok",
                    error: None,
                    seconds,
                    retry_after_seconds: None,
                });
                if number > 1 {
                    eprintln!("{label}: attempt {number} succeeded");
                }
                return Ok(());
            }
            Err((f, not_gone)) => {
                if not_gone.is_some() {
                    *ghost.lock().unwrap_or_else(|p| p.into_inner()) = not_gone;
                }
                f
            }
        };
        let since = first_failure.get_or_insert_with(Instant::now).elapsed();
        let next = ex.retry.next(&f, number, since, jitter());
        log.push(AttemptRecord {
            attempt: number,
            outcome: "failed",
            error: Some(f.message.clone()),
            seconds,
            retry_after_seconds: next.as_ref().ok().map(Duration::as_secs_f64),
        });
        match next {
            Ok(wait) => {
                eprintln!(
                    "{label}: attempt {number} failed: {}; retrying in {:.1}s",
                    f.message,
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
            Err(give_up) => {
                if number > 1 || give_up != GiveUp::Permanent {
                    eprintln!("{label}: attempt {number} failed: {}", f.message);
                }
                return Err(Failure {
                    message: format!("{}{}", f.message, give_up.note(number)),
                    ..f
                });
            }
        }
    }
    unreachable!("the attempt counter is unbounded")
}

/// Waits (bounded) until pod `ns/name` no longer exists; true when confirmed.
async fn wait_gone(client: &kube::Client, ns: &str, name: &str, limit: Duration) -> bool {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Ok(None)) = tokio::time::timeout(Duration::from_secs(10), api.get_opt(name)).await
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing on the volume changed yet.
    Nothing,
    /// Staging or the swap may have touched the volume: a failure must roll back.
    NeedsRecovery,
    /// Committed (or rolled back): nothing left to undo.
    Done,
    /// In place: the original content was (or is being) deleted; there is nothing to roll back
    /// to, only a restore to finish. Stays so across attempts until one succeeds.
    PartlyRestored,
}

struct Job {
    loc: Arc<Located>,
    run_id: String,
    mode: RestoreModeArg,
    in_place: bool,
    timeout: Duration,
    needed: u64,
    stall: Duration,
}

/// Streams the archive, decompressed, into the helper pod's `tar -x`, and checks on the way
/// that the stored archive is the one the manifest describes (size and sha256 of the stored
/// bytes). Reading or decoding problems are integrity failures (exit 3, never retried); a
/// write that fails is the connection's or the pod's problem (runtime, retried).
fn feed<W: tokio::io::AsyncWrite + Unpin>(loc: &Located, stdin: W) -> Result<u64, Failure> {
    use sha2::Digest;
    use std::io::{Read, Write};
    let m = &loc.manifest;
    let mut bridge = tokio_util::io::SyncIoBridge::new(stdin);
    let reader = loc.destination.open(&loc.archive_key).map_err(|e| {
        Failure::integrity(format!(
            "{e} (the manifest names it, so the backup is damaged)"
        ))
    })?;
    let mut hashing = HashingReader {
        inner: reader,
        hasher: sha2::Sha256::new(),
        bytes: 0,
    };
    let mut decoder = m
        .compression
        .decoder(std::io::BufReader::with_capacity(1 << 20, &mut hashing))
        .map_err(|e| Failure::integrity(format!("cannot decompress the archive: {e}")))?;
    let corrupt = |e: std::io::Error| {
        Failure::integrity(format!(
            "the archive {} cannot be read back: {e}",
            loc.destination.locate(&loc.archive_key)
        ))
    };
    let broken = |e: std::io::Error| {
        Failure::runtime(format!(
            "streaming the archive to the helper pod failed: {e}"
        ))
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e)),
        };
        bridge.write_all(&buf[..n]).map_err(broken)?;
        total += n as u64;
    }
    drop(decoder);
    // The decoder may stop at the end of its stream; the rest of the file still counts.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(corrupt)?;
    let (digest, size) = hashing.finish();
    if size != m.archive.size || digest != m.archive.sha256 {
        return Err(Failure::integrity(format!(
            "the stored archive is not the one the manifest describes (sha256 {digest}, {size} bytes; the manifest says {}, {} bytes)",
            m.archive.sha256, m.archive.size
        )));
    }
    bridge.flush().map_err(broken)?;
    bridge
        .shutdown()
        .map_err(|e| Failure::runtime(format!("closing the helper pod's stdin failed: {e}")))?;
    Ok(total)
}

/// Counts and hashes the stored bytes as they are read.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<R> HashingReader<R> {
    fn finish(self) -> (String, u64) {
        use sha2::Digest;
        (hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl Job {
    fn staging(&self) -> String {
        format!("{}/{}", engine::MOUNT, engine::staging_name(&self.run_id))
    }
    /// Top-level names a replace keeps: `lost+found` when the backup has none.
    fn keep(&self) -> Vec<String> {
        let has = self
            .loc
            .manifest
            .entries
            .iter()
            .any(|e| crate::archive::canonical_key(&e.raw_path()) == b"lost+found");
        if has {
            Vec::new()
        } else {
            vec!["lost+found".to_string()]
        }
    }
}

fn set(p: &Mutex<Phase>, v: Phase) {
    *p.lock().unwrap_or_else(|e| e.into_inner()) = v;
}

/// One attempt in one helper pod. On failure, also returns the pod's name when it touched the
/// volume and could not be confirmed gone (a later pod must not start on the volume while it
/// may still run).
async fn restore_in_pod(
    client: &kube::Client,
    pod: Pod,
    job: &Job,
    registry: &Registry,
    phase: &Mutex<Phase>,
    rollback_first: bool,
) -> Result<(), (Failure, Option<String>)> {
    let mut helper = HelperPod::launch(client, pod, job.timeout, registry)
        .await
        .map_err(|f| (f, None))?;
    let r = async {
        if rollback_first {
            // Back to the original state before anything else: a previous attempt may have
            // left a partial staging directory or a half-done swap (ROLLBACK is idempotent).
            set(phase, Phase::NeedsRecovery);
            helper
                .run_bytes(&as_strs(&rollback_argv(job)))
                .await
                .map_err(|f| {
                    Failure::runtime(format!(
                        "undoing the previous attempt failed: {}",
                        f.message
                    ))
                })?;
            set(phase, Phase::Nothing);
        }
        steps(&helper, job, phase).await
    }
    .await;
    let mut r = r;
    if r.is_err() && *phase.lock().unwrap_or_else(|e| e.into_inner()) == Phase::NeedsRecovery {
        // Roll back in this pod while it is alive; `recover` retries in a fresh one otherwise.
        if helper
            .run_bytes(&as_strs(&rollback_argv(job)))
            .await
            .is_ok()
        {
            set(phase, Phase::Done);
            r = r.map_err(|f| {
                Failure::new(
                    f.kind,
                    format!(
                        "{}; the volume was rolled back to its previous content",
                        f.message
                    ),
                )
            });
        }
    }
    let gone = helper.delete().await;
    let touched = matches!(
        *phase.lock().unwrap_or_else(|e| e.into_inner()),
        Phase::NeedsRecovery | Phase::PartlyRestored
    );
    r.map_err(|f| (f, (touched && !gone).then(|| helper.name.clone())))
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn rollback_argv(job: &Job) -> Vec<String> {
    let mut v = vec![
        "sh".into(),
        "-c".into(),
        engine::ROLLBACK.into(),
        "sh".into(),
        job.run_id.clone(),
        mode_name(job.mode).into(),
    ];
    v.extend(job.keep());
    v
}

/// Runs `argv`, returns raw stdout; non-zero exit or a lost stream is a runtime failure.
async fn run_bytes(helper: &HelperPod, argv: &[String]) -> Result<Vec<u8>, Failure> {
    helper.run_bytes(&as_strs(argv)).await
}

fn sh(script: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        script.to_string(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// An integrity failure naming `what` and the first 20 differences, when there are any.
fn mismatches(what: &str, problems: &[String]) -> Result<(), Failure> {
    if problems.is_empty() {
        return Ok(());
    }
    let first: Vec<&str> = problems.iter().take(20).map(String::as_str).collect();
    Err(Failure::integrity(format!("{what}: {}", first.join("; "))))
}

/// Lists `dir` in the helper pod; `hash`: regular files are hashed too.
async fn listing(
    helper: &HelperPod,
    dir: &str,
    job: &Job,
    hash: bool,
) -> Result<Vec<engine::Seen>, Failure> {
    let how = if hash { "hash" } else { "stat" };
    let out = run_bytes(helper, &sh(engine::LIST, &[dir, &job.run_id, how])).await?;
    parse_listing(&out, hash).map_err(|e| {
        Failure::runtime(format!(
            "the file listing from helper pod {} is unreadable: {e}",
            helper.name
        ))
    })
}

/// What [`engine::ROOM`] measured on the volume.
struct Room {
    /// Free bytes.
    free: u64,
    /// Bytes held by what a replace deletes: everything but the kept top-level names.
    held: u64,
}

/// Measures the volume; `None` when `df`/`du` printed something unexpected.
async fn room(helper: &HelperPod, job: &Job) -> Result<Option<Room>, Failure> {
    let keep = job.keep();
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    let out = run_bytes(helper, &sh(engine::ROOM, &keep)).await?;
    let out = String::from_utf8_lossy(&out);
    let mut kib = out
        .split_whitespace()
        .map(|n| n.parse::<u64>().ok().map(|n| n * 1024));
    Ok(match (kib.next().flatten(), kib.next().flatten()) {
        (Some(free), Some(held)) => Some(Room { free, held }),
        _ => None,
    })
}

async fn steps(helper: &HelperPod, job: &Job, phase: &Mutex<Phase>) -> Result<(), Failure> {
    if job.in_place {
        return steps_in_place(helper, job, phase).await;
    }
    let m = &job.loc.manifest;
    // Room for staging: the originals stay until the swap.
    let df = run_bytes(helper, &["df".into(), "-Pk".into(), engine::MOUNT.into()]).await?;
    let df = String::from_utf8_lossy(&df);
    if let Some(avail) = df
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u64>().ok())
    {
        let avail = avail * 1024;
        if avail < job.needed {
            // Whether deleting the content first would make room decides what to suggest;
            // measured only now, as `du` walks the whole volume.
            let held = match job.mode {
                RestoreModeArg::Replace => room(helper, job).await?.map(|r| r.held),
                RestoreModeArg::Merge => None,
            };
            let larger = "restore into a larger PVC (--to-pvc NAME --create-pvc)";
            let what_to_do = match held {
                Some(held) if avail + held >= job.needed => format!(
                    "free space on it, {larger}, or pass --in-place to delete the current content ({}) first and extract straight into the volume, with no rollback: if that restore fails, the volume is left partly restored",
                    output::human_bytes(held)
                ),
                Some(held) => format!(
                    "free space on it or {larger} (--in-place would not fit either: the current content holds only {})",
                    output::human_bytes(held)
                ),
                None => format!("free space on it or {larger}"),
            };
            return Err(Failure::refused(format!(
                "the volume has {} free but staging the backup needs {} next to the current data; {what_to_do}",
                output::human_bytes(avail),
                output::human_bytes(job.needed)
            )));
        }
    }
    set(phase, Phase::NeedsRecovery);
    // Extract: archive → decompress here → tar -x in the pod, over exec stdin.
    let staging = job.staging();
    extract(
        helper,
        job,
        sh(
            "mkdir -m 700 \"$1\" && exec tar -x --numeric-owner -f - -C \"$1\"",
            &[&staging],
        ),
    )
    .await?;
    fix_symlink_owners(helper, job, &staging).await?;
    // Verify the staged tree inside the pod.
    let staged = listing(helper, &staging, job, true).await?;
    let problems = compare(m, &staged, true);
    mismatches(
        "the extracted files do not match the manifest, so the volume was not changed",
        &problems,
    )?;
    // Swap.
    let argv = match job.mode {
        RestoreModeArg::Replace => {
            let mut v = vec![
                "sh".into(),
                "-c".into(),
                engine::SWAP_REPLACE.into(),
                "sh".into(),
                job.run_id.clone(),
            ];
            v.extend(job.keep());
            v
        }
        RestoreModeArg::Merge => sh(engine::SWAP_MERGE, &[&job.run_id]),
    };
    run_bytes(helper, &argv).await?;
    // Verify in place: every path, type, mode, owner, size, mtime and link; file contents by
    // identity with the staged files just hashed (see `engine::carry_hashes`).
    let mut seen = listing(helper, engine::MOUNT, job, false).await?;
    engine::carry_hashes(&staged, &mut seen);
    let problems = compare(m, &seen, job.mode == RestoreModeArg::Replace);
    mismatches(
        "after the swap the volume does not match the manifest",
        &problems,
    )?;
    run_bytes(
        helper,
        &[
            "sh".into(),
            "-c".into(),
            engine::COMMIT.into(),
            "sh".into(),
            job.run_id.clone(),
        ],
    )
    .await?;
    set(phase, Phase::Done);
    Ok(())
}

/// `--in-place` (replace mode): delete the current content (but `lost+found` when the backup
/// has none), extract straight into the volume, verify it exactly. No staging, no rollback;
/// the same steps finish what a failed attempt left.
async fn steps_in_place(
    helper: &HelperPod,
    job: &Job,
    phase: &Mutex<Phase>,
) -> Result<(), Failure> {
    let m = &job.loc.manifest;
    // Once the delete starts there is no way back, so the room must be known, not guessed.
    let room = room(helper, job).await?.ok_or_else(|| {
        Failure::runtime(format!(
            "helper pod {} printed no readable free space (df) or usage (du) for the volume, so the in-place restore did not start",
            helper.name
        ))
    })?;
    if room.free + room.held < job.needed {
        return Err(Failure::refused(format!(
            "the volume has {} free and its current content holds {}, but the backup needs {}: it does not fit even in place; restore into a larger PVC (--to-pvc NAME --create-pvc --size Q)",
            output::human_bytes(room.free),
            output::human_bytes(room.held),
            output::human_bytes(job.needed)
        )));
    }
    set(phase, Phase::PartlyRestored);
    let keep = job.keep();
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    run_bytes(helper, &sh(engine::CLEAR, &keep)).await?;
    extract(
        helper,
        job,
        sh(
            "exec tar -x --numeric-owner -f - -C \"$1\"",
            &[engine::MOUNT],
        ),
    )
    .await?;
    fix_symlink_owners(helper, job, engine::MOUNT).await?;
    let seen = listing(helper, engine::MOUNT, job, true).await?;
    let problems = compare(m, &seen, true);
    mismatches(
        "the files restored in place do not match the manifest",
        &problems,
    )?;
    set(phase, Phase::Done);
    Ok(())
}

/// Runs `argv` (a `tar -x` into some directory) with the archive, decompressed here, on its
/// stdin.
async fn extract(helper: &HelperPod, job: &Job, argv: Vec<String>) -> Result<(), Failure> {
    let mut session = helper
        .session(
            &as_strs(&argv),
            true,
            Watch {
                stdin_stall: Some(job.stall),
                stdout_stall: None,
            },
        )
        .await?;
    let stdin = session
        .stdin
        .take()
        .ok_or_else(|| Failure::runtime("exec gave no stdin"))?;
    let mut stdout = session
        .stdout
        .take()
        .ok_or_else(|| Failure::runtime("exec gave no stdout"))?;
    let mut stderr = session
        .stderr
        .take()
        .ok_or_else(|| Failure::runtime("exec gave no stderr"))?;
    let loc = job.loc.clone();
    let feeder = tokio::task::spawn_blocking(move || feed(&loc, stdin));
    let drain = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut so = (&mut stdout).take(64 << 10);
        let mut se = (&mut stderr).take(64 << 10);
        let _ = tokio::join!(so.read_to_end(&mut out), se.read_to_end(&mut err));
        String::from_utf8_lossy(&err).into_owned()
    });
    let fed = feeder
        .await
        .map_err(|e| Failure::runtime(format!("the archive feeder failed: {e}")))?;
    // A damaged archive explains a failed tar best (and tar may still wait for input: the
    // session is dropped on return, which ends it); a lost session explains a broken feed best.
    if let Err(f) = &fed {
        if f.kind == ExitKind::Integrity {
            return Err(f.clone());
        }
        if let Some(why) = session.lost_reason() {
            return Err(Failure::runtime(why));
        }
    }
    let errors = drain.await.unwrap_or_default();
    let st = session.finish(job.stall).await?;
    if st.status.as_deref() != Some("Success") {
        return Err(Failure::runtime(format!(
            "tar -x in helper pod {} failed: {} {}",
            helper.name,
            crate::helper_session::describe_status(&st),
            errors.trim()
        )));
    }
    fed?;
    Ok(())
}

/// Ownership of symlinks under `dir` (busybox tar leaves them to root).
async fn fix_symlink_owners(helper: &HelperPod, job: &Job, dir: &str) -> Result<(), Failure> {
    let owners = engine::symlink_owners(&job.loc.manifest);
    for chunk in owners.chunks(500) {
        let mut args = vec![dir.to_string()];
        for (o, p) in chunk {
            args.push(o.clone());
            args.push(p.clone());
        }
        let argv: Vec<String> = ["sh", "-c", engine::FIX_SYMLINKS, "sh"]
            .iter()
            .map(|s| s.to_string())
            .chain(args)
            .collect();
        run_bytes(helper, &argv).await?;
    }
    Ok(())
}

/// Rolls the volume back in a fresh helper pod (the first one died or is unreachable).
async fn recover(
    client: &kube::Client,
    ex: &Execution,
    job: &Job,
    registry: &Registry,
    ghost: &Mutex<Option<String>>,
) -> Result<(), Failure> {
    let manual = || {
        format!(
            "the volume may hold a partial restore; run `kubectl pvbackup restore` again, or in a pod mounting it run: cd /data; ls -a (entries of run {} are named .pvbackup-*-{})",
            job.run_id, job.run_id
        )
    };
    let last_pod = ghost.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(g) = last_pod {
        if !wait_gone(client, &ex.ns, &g, Duration::from_secs(60)).await {
            return Err(Failure::runtime(format!(
                "helper pod {}/{g} could not be confirmed gone, so no rollback was attempted next to it; {}",
                ex.ns,
                manual()
            )));
        }
    }
    let mut last = String::new();
    for attempt in 0..3 {
        let req = ex
            .request(&format!("-rb{attempt}"))
            .map_err(|f| Failure::runtime(format!("{}; {}", f.message, manual())))?;
        match HelperPod::launch(client, build_helper_pod(&req), job.timeout, registry).await {
            Ok(mut h) => {
                let r = run_bytes(&h, &rollback_argv(job)).await;
                h.delete().await;
                match r {
                    Ok(_) => return Ok(()),
                    Err(f) => last = f.message,
                }
            }
            Err(f) => last = f.message,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(Failure::runtime(format!(
        "rolling back failed ({last}); {}",
        manual()
    )))
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

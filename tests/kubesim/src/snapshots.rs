//! CSI volume snapshots: the snapshot controller, the CSI driver's side of a snapshot (the
//! csi-snapshotter sidecar and the driver behind it), and provisioning a claim from a
//! `dataSource`/`dataSourceRef` (a VolumeSnapshot, or another PVC: CSI cloning).
//!
//! Sources (read at kubernetes-csi/external-snapshotter afb2f0d8 and
//! kubernetes-csi/external-provisioner 0688604f):
//! * object names, finalizers, the default-class annotation and the event reasons and texts come
//!   from external-snapshotter `pkg/utils/util.go` and `pkg/common-controller/snapshot_controller.go`
//!   (`snapcontent-<uid>`, `CreatingSnapshot`, `SnapshotCreated`, `SnapshotReady`,
//!   `SnapshotValidationError`, `SnapshotPVCSourceMissing`, `SnapshotDeletePending`, and
//!   `SetDefaultSnapshotClass`: "cannot find default snapshot class");
//! * the sidecar's `SnapshotCreationFailed` event and content `status.error` from
//!   `pkg/sidecar-controller/snapshot_controller.go`;
//! * the provisioner's checks and their messages (`snapshot %s is not Ready`, `snapshotcontent
//!   %s for snapshot %s is not handled by CSI driver of StorageClass %s`, `requested volume size
//!   %d is less than the size %d for the source snapshot %s`, the clone size rule, "Assuming an
//!   external populator will provision the volume") from external-provisioner
//!   `pkg/controller/controller.go`;
//! * a snapshot is a point-in-time copy (CSI spec, `CreateSnapshot`: "the snapshot is cut at
//!   creation_time"). The real csi-snapshotter does not freeze anything; drivers that promise
//!   consistency quiesce the filesystem (`fsfreeze`). kubesim does the equivalent: every process
//!   of every container that mounts the volume is stopped while the copy is taken, and
//!   `creationTime` is the instant they were stopped.
//!
//! The CSI drivers kubesim knows: `hostpath.csi.kubesim.dev` (the default provisioner) reports
//! `CREATE_DELETE_SNAPSHOT` and `CLONE_VOLUME`; `clone-only.csi.kubesim.dev` only
//! `CLONE_VOLUME`; any other provisioner neither. A driver without `CREATE_DELETE_SNAPSHOT` has
//! no csi-snapshotter sidecar, so a VolumeSnapshot of its volume is never cut (it stays
//! `readyToUse: false` with no error, as in a real cluster).
//!
//! A VolumeSnapshotClass can make the driver misbehave through its `parameters` (a real driver
//! gets the same map in `CreateSnapshotRequest.parameters`):
//! * `kubesim.dev/fail-snapshots: "<message>"`: every snapshot fails with that message;
//! * `kubesim.dev/ready-after-seconds: "<n>"`: the snapshot is cut at once but becomes
//!   `readyToUse` only n seconds later (a cloud upload).

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::resources;
use crate::sim::{Sim, SimRef};
use crate::store::now_rfc3339;

pub const GROUP: &str = "snapshot.storage.k8s.io";
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";
pub const CONTENT_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";
pub const BOUND_FINALIZER: &str = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
pub const AS_SOURCE_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection";
pub const FAIL_PARAMETER: &str = "kubesim.dev/fail-snapshots";
pub const READY_AFTER_PARAMETER: &str = "kubesim.dev/ready-after-seconds";
pub const HOSTPATH_DRIVER: &str = "hostpath.csi.kubesim.dev";
pub const CLONE_ONLY_DRIVER: &str = "clone-only.csi.kubesim.dev";

const CONTROLLER: &str = "snapshot-controller";
const SIDECAR: &str = "csi-snapshotter";

/// CSI controller capabilities of a driver: (`CREATE_DELETE_SNAPSHOT`, `CLONE_VOLUME`).
pub fn capabilities(driver: &str) -> (bool, bool) {
    match driver {
        HOSTPATH_DRIVER => (true, true),
        CLONE_ONLY_DRIVER => (false, true),
        _ => (false, false),
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or_default()
}

/// Where the driver keeps a cut snapshot (its "snapshot handle").
pub fn snapshot_dir(sim: &Sim, content: &str) -> PathBuf {
    sim.state_dir.join("snapshots").join(content)
}

/// `resource.NewQuantity(bytes, BinarySI).String()`: the largest binary suffix that divides.
pub fn binary_quantity(bytes: u64) -> String {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// API-server side of a PVC create: since Kubernetes 1.24 (AnyVolumeDataSource GA in 1.33) the
/// apiserver copies `dataSource` into an empty `dataSourceRef` and back
/// (pkg/api/persistentvolumeclaim/util.go `NormalizeDataSources`).
pub fn normalize_data_sources(pvc: &mut Value) {
    let spec = &mut pvc["spec"];
    if !spec.is_object() {
        return;
    }
    let ds = spec["dataSource"].clone();
    let dsr = spec["dataSourceRef"].clone();
    if ds.is_object() && dsr.is_null() {
        spec["dataSourceRef"] = ds;
    } else if dsr.is_object() && ds.is_null() && dsr["namespace"].is_null() {
        spec["dataSource"] = dsr;
    }
}

/// One pass of the snapshot controller and the csi-snapshotter sidecar.
pub fn reconcile(sim: &SimRef) {
    let (snaps, _) = sim.store.list(resources::volume_snapshots(), None);
    for vs in &snaps {
        if !vs["metadata"]["deletionTimestamp"].is_null() {
            delete_snapshot(sim, vs);
        } else if vs["status"]["boundVolumeSnapshotContentName"].is_null() {
            bind_snapshot(sim, vs);
        }
    }
    let (contents, _) = sim.store.list(resources::volume_snapshot_contents(), None);
    for c in &contents {
        if !c["metadata"]["deletionTimestamp"].is_null() || snapshot_gone(sim, c) {
            delete_content(sim, c);
            continue;
        }
        cut_or_mature(sim, c);
    }
    // Copy what the driver reported to the VolumeSnapshots (common controller,
    // `updateSnapshotStatus`).
    let (snaps, _) = sim.store.list(resources::volume_snapshots(), None);
    for vs in snaps
        .iter()
        .filter(|v| v["metadata"]["deletionTimestamp"].is_null())
    {
        let Some(cname) = vs["status"]["boundVolumeSnapshotContentName"].as_str() else {
            continue;
        };
        if let Some(c) = sim
            .store
            .try_get(resources::volume_snapshot_contents(), None, cname)
        {
            sync_status(sim, vs, &c);
        }
    }
}

fn snapshot_gone(sim: &Sim, c: &Value) -> bool {
    let ns = s(c, &["spec", "volumeSnapshotRef", "namespace"]);
    let name = s(c, &["spec", "volumeSnapshotRef", "name"]);
    let uid = s(c, &["spec", "volumeSnapshotRef", "uid"]);
    match sim
        .store
        .try_get(resources::volume_snapshots(), Some(ns), name)
    {
        Some(vs) => vs["metadata"]["uid"].as_str() != Some(uid),
        None => true,
    }
}

fn snapshot_error(sim: &Sim, vs: &Value, reason: &str, message: &str) {
    let ns = s(vs, &["metadata", "namespace"]).to_string();
    let name = s(vs, &["metadata", "name"]).to_string();
    if vs["status"]["error"]["message"] == message {
        return;
    }
    if let Ok(v) = sim
        .store
        .update(resources::volume_snapshots(), Some(&ns), &name, |o| {
            o["status"]["error"] = json!({"message": message, "time": now_rfc3339()});
            o["status"]["readyToUse"] = json!(false);
            Ok(())
        })
    {
        sim.record(&v, "Warning", reason, message, CONTROLLER);
    }
}

/// The PV a snapshot or clone of `claim` reads, or why there is none.
fn bound_volume(sim: &Sim, ns: &str, claim: &str) -> Result<(Value, Value), String> {
    let pvc = sim
        .store
        .try_get(resources::pvcs(), Some(ns), claim)
        .ok_or_else(|| {
            format!("failed to retrieve PVC {claim} from the lister: \"persistentvolumeclaim \\\"{claim}\\\" not found\"")
        })?;
    if pvc["status"]["phase"] != "Bound" {
        return Err(format!(
            "the PVC {claim} is not yet bound to a PV, will not attempt to take a snapshot"
        ));
    }
    let pv_name = s(&pvc, &["spec", "volumeName"]);
    let pv = sim
        .store
        .try_get(resources::pvs(), None, pv_name)
        .ok_or_else(|| format!("failed to retrieve PV {pv_name} from the API server"))?;
    Ok((pvc, pv))
}

/// Common controller for a new dynamic VolumeSnapshot: pick the class, create the content,
/// bind.
fn bind_snapshot(sim: &Sim, vs: &Value) {
    let ns = s(vs, &["metadata", "namespace"]).to_string();
    let name = s(vs, &["metadata", "name"]).to_string();
    let key = format!("{ns}/{name}");
    let Some(claim) = vs["spec"]["source"]["persistentVolumeClaimName"].as_str() else {
        snapshot_error(
            sim,
            vs,
            "SnapshotValidationError",
            "kubesim models dynamic snapshots only: spec.source.persistentVolumeClaimName must be set",
        );
        return;
    };
    let (_, pv) = match bound_volume(sim, &ns, claim) {
        Ok(v) => v,
        Err(e) => {
            snapshot_error(sim, vs, "SnapshotPVCSourceMissing", &e);
            return;
        }
    };
    let driver = s(&pv, &["spec", "csi", "driver"]).to_string();
    let (classes, _) = sim.store.list(resources::volume_snapshot_classes(), None);
    let class = match vs["spec"]["volumeSnapshotClassName"].as_str() {
        Some(c) => match classes.iter().find(|k| k["metadata"]["name"] == c) {
            Some(k) => k.clone(),
            None => {
                snapshot_error(
                    sim,
                    vs,
                    "SnapshotValidationError",
                    &format!("failed to get input parameters to create snapshot {name}: \"failed to retrieve snapshot class {c} from the informer: \\\"volumesnapshotclass.snapshot.storage.k8s.io \\\\\\\"{c}\\\\\\\" not found\\\"\""),
                );
                return;
            }
        },
        None => {
            let defaults: Vec<&Value> = classes
                .iter()
                .filter(|k| {
                    k["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true"
                        && k["driver"] == driver.as_str()
                })
                .collect();
            match defaults.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    snapshot_error(
                        sim,
                        vs,
                        "SnapshotValidationError",
                        "cannot find default snapshot class",
                    );
                    return;
                }
                many => {
                    snapshot_error(
                        sim,
                        vs,
                        "SnapshotValidationError",
                        &format!("{} default snapshot classes were found", many.len()),
                    );
                    return;
                }
            }
        }
    };
    let class_name = s(&class, &["metadata", "name"]).to_string();
    if class["driver"] != driver.as_str() {
        // The sidecar of the class's driver rejects a volume of another driver.
        snapshot_error(
            sim,
            vs,
            "SnapshotValidationError",
            &format!(
                "failed to take snapshot of the volume {}: snapshot class {class_name} has driver {} but the volume is handled by {driver}",
                s(&pv, &["spec", "csi", "volumeHandle"]),
                s(&class, &["driver"])
            ),
        );
        return;
    }
    let policy = class["deletionPolicy"].as_str().unwrap_or("Delete");
    let uid = s(vs, &["metadata", "uid"]);
    let content_name = format!("snapcontent-{uid}");
    let content = json!({
        "metadata": {"name": content_name, "finalizers": [CONTENT_FINALIZER]},
        "spec": {
            "deletionPolicy": policy,
            "driver": driver,
            "source": {"volumeHandle": s(&pv, &["spec", "csi", "volumeHandle"])},
            "sourceVolumeMode": pv["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
            "volumeSnapshotClassName": class_name,
            "volumeSnapshotRef": {
                "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshot",
                "name": name, "namespace": ns, "uid": uid,
                "resourceVersion": vs["metadata"]["resourceVersion"],
            },
        },
    });
    if sim
        .store
        .try_get(resources::volume_snapshot_contents(), None, &content_name)
        .is_none()
    {
        if let Err(e) = sim
            .store
            .create(resources::volume_snapshot_contents(), None, content)
        {
            sim.record(
                vs,
                "Warning",
                "CreateSnapshotContentFailed",
                &format!(
                    "Error creating volume snapshot content object for snapshot {key}: {}.",
                    e.message
                ),
                CONTROLLER,
            );
            return;
        }
    }
    let bound = sim
        .store
        .update(resources::volume_snapshots(), Some(&ns), &name, |o| {
            o["spec"]["volumeSnapshotClassName"] = json!(class_name);
            let mut fins: Vec<Value> = o["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut wanted = vec![AS_SOURCE_FINALIZER];
            // external-snapshotter adds the bound finalizer only for deletionPolicy Delete.
            if policy == "Delete" {
                wanted.push(BOUND_FINALIZER);
            }
            for f in wanted {
                if !fins.iter().any(|x| x == f) {
                    fins.push(json!(f));
                }
            }
            o["metadata"]["finalizers"] = json!(fins);
            o["status"] =
                json!({"boundVolumeSnapshotContentName": content_name, "readyToUse": false});
            Ok(())
        });
    if let Ok(v) = bound {
        sim.record(
            &v,
            "Normal",
            "CreatingSnapshot",
            &format!("Waiting for a snapshot {key} to be created by the CSI driver."),
            CONTROLLER,
        );
    }
}

/// The running containers that mount `claim` in `ns`, paused for as long as the guards live.
fn freeze_users(sim: &Sim, ns: &str, claim: &str) -> Vec<crate::sandbox::Frozen> {
    let (pods, _) = sim.store.list(resources::pods(), Some(ns));
    let mut frozen = Vec::new();
    for p in pods.iter().filter(|p| !crate::kubelet::pod_finished(p)) {
        let vols: Vec<&str> = p["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["persistentVolumeClaim"]["claimName"] == claim)
            .filter_map(|v| v["name"].as_str())
            .collect();
        if vols.is_empty() {
            continue;
        }
        let uid = s(p, &["metadata", "uid"]);
        for c in ["initContainers", "containers"]
            .iter()
            .flat_map(|k| p["spec"][*k].as_array().cloned().unwrap_or_default())
        {
            let mounts = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"].as_str().is_some_and(|n| vols.contains(&n)));
            if !mounts {
                continue;
            }
            if let Some(running) = sim.runtime.container(uid, s(&c, &["name"])) {
                frozen.push(running.freeze());
            }
        }
    }
    frozen
}

/// `cp -a SRC/. DST`: contents, modes, owners, times, symlinks and hard links.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dst).map_err(|e| format!("creating {}: {e}", dst.display()))?;
    let out = Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(src.join("."))
        .arg(dst)
        .output()
        .map_err(|e| format!("running cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "copying {} to {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Copies the volume of `claim` while every container that mounts it is paused; returns the
/// instant the copy was cut.
fn point_in_time_copy(
    sim: &Sim,
    ns: &str,
    claim: &str,
    dst: &Path,
) -> Result<DateTime<Utc>, String> {
    let src = crate::kubelet::volume_path(sim, ns, claim);
    let frozen = freeze_users(sim, ns, claim);
    let cut = Utc::now();
    let copied = copy_tree(&src, dst);
    drop(frozen);
    copied.map(|_| cut)
}

/// The csi-snapshotter sidecar: `CreateSnapshot` for a new content, and later `readyToUse`.
fn cut_or_mature(sim: &Sim, c: &Value) {
    let name = s(c, &["metadata", "name"]).to_string();
    let driver = s(c, &["spec", "driver"]);
    if !capabilities(driver).0 || !c["status"]["error"].is_null() {
        return;
    }
    let class = sim.store.try_get(
        resources::volume_snapshot_classes(),
        None,
        s(c, &["spec", "volumeSnapshotClassName"]),
    );
    let param = |k: &str| {
        class
            .as_ref()
            .and_then(|cl| cl["parameters"][k].as_str().map(str::to_string))
    };
    let ready_after: i64 = param(READY_AFTER_PARAMETER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(created) = c["status"]["creationTime"].as_i64() {
        if c["status"]["readyToUse"] == false {
            let since = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX) - created;
            if since >= ready_after * 1_000_000_000 {
                let _ = sim
                    .store
                    .update(resources::volume_snapshot_contents(), None, &name, |o| {
                        o["status"]["readyToUse"] = json!(true);
                        Ok(())
                    });
            }
        }
        return;
    }
    let handle = s(c, &["spec", "source", "volumeHandle"]).to_string();
    let ns = s(c, &["spec", "volumeSnapshotRef", "namespace"]).to_string();
    let vs = sim.store.try_get(
        resources::volume_snapshots(),
        Some(&ns),
        s(c, &["spec", "volumeSnapshotRef", "name"]),
    );
    let claim = vs
        .as_ref()
        .and_then(|v| v["spec"]["source"]["persistentVolumeClaimName"].as_str())
        .unwrap_or_default()
        .to_string();
    let result = match param(FAIL_PARAMETER) {
        Some(msg) => Err(msg),
        None => bound_volume(sim, &ns, &claim).and_then(|(_, pv)| {
            let bytes = pv["spec"]["capacity"]["storage"]
                .as_str()
                .and_then(crate::controllers::quantity_bytes)
                .unwrap_or(0);
            point_in_time_copy(sim, &ns, &claim, &snapshot_dir(sim, &name)).map(|t| (t, bytes))
        }),
    };
    match result {
        Ok((cut, bytes)) => {
            let _ = sim
                .store
                .update(resources::volume_snapshot_contents(), None, &name, |o| {
                    o["status"] = json!({
                        "creationTime": cut.timestamp_nanos_opt().unwrap_or_default(),
                        "readyToUse": ready_after <= 0,
                        "restoreSize": bytes,
                        "snapshotHandle": format!("kubesim-snapshot/{name}"),
                    });
                    Ok(())
                });
        }
        Err(msg) => {
            let message = format!(
                "Failed to create snapshot: failed to take snapshot of the volume {handle}: \"rpc error: code = Internal desc = {msg}\""
            );
            if let Ok(v) =
                sim.store
                    .update(resources::volume_snapshot_contents(), None, &name, |o| {
                        o["status"]["error"] = json!({"message": message, "time": now_rfc3339()});
                        o["status"]["readyToUse"] = json!(false);
                        Ok(())
                    })
            {
                sim.record(&v, "Warning", "SnapshotCreationFailed", &message, SIDECAR);
            }
        }
    }
}

/// Common controller, `updateSnapshotStatus`: creationTime, readyToUse, restoreSize, error.
fn sync_status(sim: &Sim, vs: &Value, c: &Value) {
    let ns = s(vs, &["metadata", "namespace"]).to_string();
    let name = s(vs, &["metadata", "name"]).to_string();
    let key = format!("{ns}/{name}");
    let mut next = vs["status"].clone();
    if let Some(nanos) = c["status"]["creationTime"].as_i64() {
        let t = DateTime::from_timestamp_nanos(nanos)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        next["creationTime"] = json!(t);
    }
    if let Some(r) = c["status"]["readyToUse"].as_bool() {
        next["readyToUse"] = json!(r);
    }
    if let Some(b) = c["status"]["restoreSize"].as_u64() {
        next["restoreSize"] = json!(binary_quantity(b));
    }
    if !c["status"]["error"].is_null() {
        next["error"] = c["status"]["error"].clone();
    }
    if next == vs["status"] {
        return;
    }
    let was_created = !vs["status"]["creationTime"].is_null();
    let was_ready = vs["status"]["readyToUse"] == true;
    if let Ok(v) = sim
        .store
        .update(resources::volume_snapshots(), Some(&ns), &name, |o| {
            o["status"] = next.clone();
            Ok(())
        })
    {
        if !was_created && !next["creationTime"].is_null() {
            sim.record(
                &v,
                "Normal",
                "SnapshotCreated",
                &format!("Snapshot {key} was successfully created by the CSI driver."),
                CONTROLLER,
            );
        }
        if !was_ready && next["readyToUse"] == true {
            sim.record(
                &v,
                "Normal",
                "SnapshotReady",
                &format!("Snapshot {key} is ready to use."),
                CONTROLLER,
            );
        }
    }
}

fn references(pvc: &Value, kind: &str, name: &str) -> bool {
    ["dataSource", "dataSourceRef"]
        .iter()
        .any(|k| pvc["spec"][*k]["kind"] == kind && pvc["spec"][*k]["name"] == name)
}

/// A VolumeSnapshot marked for deletion: wait while a claim is being provisioned from it, then
/// delete (or retain) its content and let it go.
fn delete_snapshot(sim: &Sim, vs: &Value) {
    let ns = s(vs, &["metadata", "namespace"]).to_string();
    let name = s(vs, &["metadata", "name"]).to_string();
    let (pvcs, _) = sim.store.list(resources::pvcs(), Some(&ns));
    if pvcs
        .iter()
        .any(|p| p["status"]["phase"] == "Pending" && references(p, "VolumeSnapshot", &name))
    {
        sim.record(
            vs,
            "Warning",
            "SnapshotDeletePending",
            "Snapshot is being used to restore a PVC",
            CONTROLLER,
        );
        return;
    }
    if let Some(cname) = vs["status"]["boundVolumeSnapshotContentName"].as_str() {
        if let Some(c) = sim
            .store
            .try_get(resources::volume_snapshot_contents(), None, cname)
        {
            if c["spec"]["deletionPolicy"] == "Delete" {
                delete_content(sim, &c);
            }
        }
    }
    let _ = sim
        .store
        .remove(resources::volume_snapshots(), Some(&ns), &name);
}

/// A content whose snapshot is gone (or that was deleted itself once unbound): the driver
/// deletes the snapshot when the policy is Delete; Retain keeps the object and the data.
fn delete_content(sim: &Sim, c: &Value) {
    let name = s(c, &["metadata", "name"]).to_string();
    let deleting = !c["metadata"]["deletionTimestamp"].is_null();
    if !deleting && c["spec"]["deletionPolicy"] != "Delete" {
        return;
    }
    if deleting && !snapshot_gone(sim, c) {
        // Still bound: the bound-protection finalizer holds it until the snapshot goes.
        let vs_ns = s(c, &["spec", "volumeSnapshotRef", "namespace"]);
        let vs_name = s(c, &["spec", "volumeSnapshotRef", "name"]);
        if sim
            .store
            .try_get(resources::volume_snapshots(), Some(vs_ns), vs_name)
            .is_some_and(|v| v["metadata"]["deletionTimestamp"].is_null())
        {
            return;
        }
    }
    if c["spec"]["deletionPolicy"] == "Delete" {
        let _ = std::fs::remove_dir_all(snapshot_dir(sim, &name));
    }
    let _ = sim
        .store
        .remove(resources::volume_snapshot_contents(), None, &name);
}

/// What a new claim is filled from.
pub enum Source {
    Empty,
    /// A cut snapshot's data.
    Snapshot(PathBuf),
    /// Another claim's volume, copied while its users are paused.
    Clone {
        namespace: String,
        claim: String,
    },
}

/// Why a claim cannot be provisioned yet: the reason and message of the event.
pub struct NotYet {
    pub reason: &'static str,
    pub message: String,
}

/// external-provisioner's checks of `dataSourceRef` (or `dataSource`) before `CreateVolume`.
pub fn claim_source(sim: &Sim, pvc: &Value, sc: &Value, requested: u64) -> Result<Source, NotYet> {
    let spec = &pvc["spec"];
    let ds = if spec["dataSourceRef"].is_object() {
        &spec["dataSourceRef"]
    } else {
        &spec["dataSource"]
    };
    if !ds.is_object() {
        return Ok(Source::Empty);
    }
    let ns = s(pvc, &["metadata", "namespace"]);
    let sc_name = s(sc, &["metadata", "name"]);
    let provisioner = s(sc, &["provisioner"]);
    let (can_snapshot, can_clone) = capabilities(provisioner);
    let kind = s(ds, &["kind"]);
    let group = s(ds, &["apiGroup"]);
    let name = s(ds, &["name"]);
    let failed = |message: String| NotYet {
        reason: "ProvisioningFailed",
        message: format!("failed to provision volume with StorageClass \"{sc_name}\": {message}"),
    };
    match (kind, group) {
        ("VolumeSnapshot", GROUP) => {
            if !can_snapshot {
                return Err(failed("CSI driver does not support snapshot restore: controller CREATE_DELETE_SNAPSHOT capability is not reported".into()));
            }
            let handle_err = |e: String| {
                failed(format!(
                    "error getting handle for DataSource Type VolumeSnapshot by Name {name}: {e}"
                ))
            };
            let vs = sim
                .store
                .try_get(resources::volume_snapshots(), Some(ns), name)
                .ok_or_else(|| {
                    handle_err(format!("error getting snapshot {name} from api server: volumesnapshots.snapshot.storage.k8s.io \"{name}\" not found"))
                })?;
            let Some(cname) = vs["status"]["boundVolumeSnapshotContentName"].as_str() else {
                return Err(handle_err(format!("snapshot {name} not bound")));
            };
            let c = sim
                .store
                .try_get(resources::volume_snapshot_contents(), None, cname)
                .ok_or_else(|| {
                    handle_err(format!(
                        "error getting snapshotcontent {cname} for snapshot {name}"
                    ))
                })?;
            if c["spec"]["driver"] != provisioner {
                return Err(handle_err(format!("snapshotcontent {cname} for snapshot {name} is not handled by CSI driver of StorageClass {sc_name}")));
            }
            if vs["status"]["readyToUse"] != true {
                return Err(handle_err(format!("snapshot {name} is not Ready")));
            }
            let restore = vs["status"]["restoreSize"]
                .as_str()
                .and_then(crate::controllers::quantity_bytes)
                .unwrap_or(0);
            if requested < restore {
                return Err(handle_err(format!("requested volume size {requested} is less than the size {restore} for the source snapshot {name}")));
            }
            Ok(Source::Snapshot(snapshot_dir(sim, cname)))
        }
        ("PersistentVolumeClaim", "") => {
            if !can_clone {
                return Err(failed("CSI driver does not support clone operations: controller CLONE_VOLUME capability is not reported".into()));
            }
            let handle_err = |e: String| {
                failed(format!(
                    "error getting handle for DataSource Type PersistentVolumeClaim by Name {name}: {e}"
                ))
            };
            let src = sim
                .store
                .try_get(resources::pvcs(), Some(ns), name)
                .ok_or_else(|| handle_err(format!("error getting PVC {name} (namespace \"{ns}\") from api server: persistentvolumeclaims \"{name}\" not found")))?;
            if src["status"]["phase"] != "Bound" {
                return Err(handle_err(format!(
                    "the PVC DataSource {name} must have a status of Bound.  Got {}",
                    src["status"]
                )));
            }
            if !src["metadata"]["deletionTimestamp"].is_null() {
                return Err(handle_err(format!(
                    "the PVC DataSource {name} is currently being deleted"
                )));
            }
            let src_size = src["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(crate::controllers::quantity_bytes)
                .unwrap_or(0);
            if requested < src_size {
                return Err(handle_err(format!("error, new PVC request must be greater than or equal in size to the specified PVC data source, requested {requested} but source is {src_size}")));
            }
            let pv = sim
                .store
                .try_get(resources::pvs(), None, s(&src, &["spec", "volumeName"]));
            if pv.is_none_or(|pv| pv["spec"]["csi"]["driver"] != provisioner) {
                return Err(handle_err(
                    "claim in dataSource not bound or invalid".into(),
                ));
            }
            Ok(Source::Clone {
                namespace: ns.to_string(),
                claim: name.to_string(),
            })
        }
        _ => Err(NotYet {
            reason: "Provisioning",
            message: "Assuming an external populator will provision the volume".into(),
        }),
    }
}

/// Fills a freshly provisioned volume at `host` from its source.
pub fn fill(sim: &Sim, source: &Source, host: &Path) -> Result<(), String> {
    match source {
        Source::Empty => Ok(()),
        Source::Snapshot(dir) => copy_tree(dir, host),
        Source::Clone { namespace, claim } => {
            point_in_time_copy(sim, namespace, claim, host).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_print_like_binary_si() {
        assert_eq!(binary_quantity(256 << 20), "256Mi");
        assert_eq!(binary_quantity(1 << 30), "1Gi");
        assert_eq!(binary_quantity(1000), "1000");
        assert_eq!(binary_quantity(1536), "1536");
    }

    #[test]
    fn data_source_is_mirrored_both_ways() {
        let mut a = json!({"spec": {"dataSource": {"kind": "VolumeSnapshot", "apiGroup": GROUP, "name": "s"}}});
        normalize_data_sources(&mut a);
        assert_eq!(a["spec"]["dataSourceRef"]["name"], "s");
        let mut b =
            json!({"spec": {"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "p"}}});
        normalize_data_sources(&mut b);
        assert_eq!(b["spec"]["dataSource"]["name"], "p");
    }
}

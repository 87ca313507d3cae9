//! Point-in-time copies for `create`: cut a CSI VolumeSnapshot of the PVC (or clone it when the
//! driver clones but cannot snapshot), provision a temporary PVC from it, and let the backup
//! read that PVC instead of the live one. Without either, the copy is "live" and the backup
//! lists the files that changed while they were read (see [`CHANGE_LISTING`]).
//!
//! The snapshot API is the external-snapshotter's `snapshot.storage.k8s.io/v1` (a CRD: no
//! k8s-openapi types, so `DynamicObject`). What is decided from what the cluster says
//! ([`decide`]) is a pure function; the API calls around it are in [`prepare`] and [`Leftovers`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::connect::explain;
use crate::exit::Failure;
use crate::helper_pod::{
    ANNOTATION_LEASE, APP_NAME, LABEL_MANAGED_BY, LABEL_PURPOSE, LABEL_PVC, LABEL_RUN_ID,
};

pub const GROUP: &str = "snapshot.storage.k8s.io";
pub const VERSION: &str = "v1";
/// external-snapshotter `pkg/utils/util.go` `IsDefaultSnapshotClassAnnotation`.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// `--snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Snapshot (or clone) when the cluster can; otherwise a live copy that lists what changed.
    Auto,
    /// Snapshot or clone, or fail.
    Always,
    /// Today's live copy.
    Never,
}

/// How the copy in an archive was made. Serialized into results and manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    Snapshot,
    Clone,
    Live,
}

/// What `create` was asked for, as plain values.
#[derive(Debug, Clone)]
pub struct ConsistencySettings {
    pub mode: SnapshotMode,
    pub class: Option<String>,
    pub require_consistent: bool,
    /// How long a snapshot may take to be cut and become readyToUse, and a PVC to bind.
    pub timeout: Duration,
    pub hooks: crate::hooks::HookPlan,
    /// Under `auto`, the snapshot permissions this user lacks (found by the preflight): every
    /// copy is live, and says why.
    pub denied: Option<String>,
}

impl Default for ConsistencySettings {
    fn default() -> Self {
        ConsistencySettings {
            mode: SnapshotMode::Never,
            class: None,
            require_consistent: false,
            timeout: Duration::from_secs(600),
            hooks: Default::default(),
            denied: None,
        }
    }
}

/// One VolumeSnapshotClass, reduced to what the choice needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotClass {
    pub name: String,
    pub driver: String,
    pub default: bool,
}

/// What the cluster told us about snapshotting one PVC. `None` means "could not find out"
/// (forbidden to read it): the snapshot controller then decides, and says so in the snapshot.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// `snapshot.storage.k8s.io/v1` is served.
    pub api: bool,
    /// The PV's CSI driver (or the StorageClass's provisioner).
    pub driver: Option<String>,
    /// The driver was read from the PV's `spec.csi`: the volume is a CSI volume, which a
    /// claim with a PVC `dataSource` may clone (only CSI drivers clone: kubernetes.io/docs
    /// "CSI Volume Cloning"). A provisioner name from the StorageClass does not say that.
    pub csi: bool,
    pub classes: Option<Vec<SnapshotClass>>,
}

/// The plan for one PVC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Snapshot with this class (None: let the controller pick the driver's default).
    Snapshot {
        class: Option<String>,
    },
    /// No class for the driver and `--snapshot always`: try a CSI clone.
    Clone,
    Live {
        reason: String,
    },
}

/// Picks snapshot, clone or live from what the cluster offers. Errors are for `always` (and an
/// explicit `--snapshot-class` that cannot work), and name the fix.
pub fn decide(mode: SnapshotMode, class: Option<&str>, offer: &Offer) -> Result<Decision, String> {
    if mode == SnapshotMode::Never {
        return Ok(Decision::Live {
            reason: "--snapshot never".into(),
        });
    }
    let live_or_fail = |why: String| {
        match mode {
        SnapshotMode::Always => Err(format!("{why}; --snapshot always cannot be honoured. Use --snapshot auto to fall back to a live copy")),
        _ => Ok(Decision::Live { reason: why }),
    }
    };
    if !offer.api {
        return live_or_fail("the cluster does not serve snapshot.storage.k8s.io/v1 (VolumeSnapshot); install the external-snapshotter CRDs and snapshot controller to get point-in-time copies".into());
    }
    if let Some(name) = class {
        if let (Some(classes), Some(driver)) = (&offer.classes, &offer.driver) {
            match classes.iter().find(|c| c.name == name) {
                None => return Err(format!("VolumeSnapshotClass {name} does not exist (--snapshot-class); `kubectl get volumesnapshotclass` lists them")),
                Some(c) if &c.driver != driver => return Err(format!("VolumeSnapshotClass {name} is for driver {}, but the PVC's volume is handled by {driver} (--snapshot-class)", c.driver)),
                Some(_) => {}
            }
        }
        return Ok(Decision::Snapshot {
            class: Some(name.to_string()),
        });
    }
    let (Some(classes), Some(driver)) = (&offer.classes, &offer.driver) else {
        return Ok(Decision::Snapshot { class: None });
    };
    let mine: Vec<&SnapshotClass> = classes.iter().filter(|c| &c.driver == driver).collect();
    let defaults: Vec<&&SnapshotClass> = mine.iter().filter(|c| c.default).collect();
    match (defaults.as_slice(), mine.as_slice()) {
        ([one], _) => Ok(Decision::Snapshot {
            class: Some(one.name.clone()),
        }),
        ([], [one]) => Ok(Decision::Snapshot {
            class: Some(one.name.clone()),
        }),
        // No class for the driver: a CSI clone is the next point-in-time copy. Whether the
        // driver clones is reported nowhere but in the provisioner's answer (CLONE_VOLUME is a
        // controller capability, not an API field), so the clone is tried, and a refusal
        // (`ProvisioningFailed` "... capability is not reported") falls back to a live copy
        // under `auto`. `always` tries it in any case. `auto` tries it only where the cluster
        // is set up for snapshots (some VolumeSnapshotClass exists) but not for this driver,
        // which then most likely cannot snapshot; a cluster that never set up snapshots keeps
        // its live copies rather than a full clone of every volume on every backup. And only
        // on a volume known to be CSI (driver read from the PV): another provisioner may not
        // check `dataSource` at all and hand back an empty volume.
        ([], []) if mode == SnapshotMode::Always => Ok(Decision::Clone),
        ([], []) if offer.csi && !classes.is_empty() => Ok(Decision::Clone),
        ([], []) => Ok(Decision::Live {
            reason: format!("no VolumeSnapshotClass for driver {driver}; --snapshot always would try a CSI clone"),
        }),
        _ => {
            let names: Vec<&str> = mine.iter().map(|c| c.name.as_str()).collect();
            live_or_fail(format!(
                "driver {driver} has several VolumeSnapshotClasses ({}) and no single default; pick one with --snapshot-class",
                names.join(", ")
            ))
        }
    }
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

pub fn snapshots_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &resource("VolumeSnapshot", "volumesnapshots"),
    )
}

fn classes_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &resource("VolumeSnapshotClass", "volumesnapshotclasses"),
    )
}

fn forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

/// Asks the cluster what it offers for `pvc`. Discovery first, so a cluster without the API
/// costs one 404 and nothing else.
pub async fn collect_offer(
    client: &kube::Client,
    pvc: &PersistentVolumeClaim,
) -> Result<Offer, Failure> {
    let api = match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(l) => l.resources.iter().any(|r| r.name == "volumesnapshots"),
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(e) => {
            return Err(explain(
                "asking the cluster whether it serves VolumeSnapshots",
                &e,
            ))
        }
    };
    if !api {
        return Ok(Offer::default());
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    let mut driver = None;
    let mut csi = false;
    if let Some(pv) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        match Api::<PersistentVolume>::all(client.clone()).get(pv).await {
            Ok(pv) => {
                driver = pv.spec.and_then(|s| s.csi).map(|c| c.driver);
                csi = driver.is_some();
            }
            Err(e) if forbidden(&e) => {}
            Err(e) => return Err(explain(&format!("reading PersistentVolume {pv}"), &e)),
        }
    }
    if driver.is_none() {
        if let Some(sc) = spec.storage_class_name.as_deref() {
            if let Ok(sc) = Api::<k8s_openapi::api::storage::v1::StorageClass>::all(client.clone())
                .get(sc)
                .await
            {
                driver = Some(sc.provisioner);
            }
        }
    }
    let classes = match classes_api(client).list(&ListParams::default()).await {
        Ok(l) => Some(
            l.items
                .iter()
                .map(|c| SnapshotClass {
                    name: c.metadata.name.clone().unwrap_or_default(),
                    driver: c.data["driver"].as_str().unwrap_or_default().to_string(),
                    default: c
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                        .is_some_and(|v| v == "true"),
                })
                .collect(),
        ),
        Err(e) if forbidden(&e) => None,
        Err(e) => return Err(explain("listing VolumeSnapshotClasses", &e)),
    };
    Ok(Offer {
        api,
        driver,
        csi,
        classes,
    })
}

/// Snapshots and temporary PVCs this run created and has not deleted yet; whatever happens
/// (success, failure, retries, Ctrl-C/SIGTERM) they are deleted before the command exits.
#[derive(Clone, Default)]
pub struct Leftovers(Arc<Mutex<BTreeSet<(u8, String, String)>>>);

const PVC: u8 = 0;
const SNAPSHOT: u8 = 1;

impl Leftovers {
    fn add(&self, kind: u8, ns: &str, name: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert((
            kind,
            ns.to_string(),
            name.to_string(),
        ));
    }

    pub fn pending(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, ns, n)| {
                let kind = if *k == PVC {
                    "persistentvolumeclaim"
                } else {
                    "volumesnapshot"
                };
                format!("{kind} {ns}/{n}")
            })
            .collect()
    }

    /// Deletes everything registered (interrupt path); see [`Leftovers::delete_matching`].
    pub async fn delete_all(&self, client: &kube::Client) -> Vec<String> {
        self.delete_where(client, |_, _| true).await
    }

    /// Deletes the temporary PVC and the snapshot called `name` in `ns`.
    pub async fn delete_matching(
        &self,
        client: &kube::Client,
        ns: &str,
        name: &str,
    ) -> Vec<String> {
        self.delete_where(client, |n, x| n == ns && x == name).await
    }

    /// Deletes the temporary PVCs first (their helper pods are gone by then), then the
    /// snapshots, and waits (30 s at most) until they are gone. Returns what could not be
    /// deleted.
    async fn delete_where(
        &self,
        client: &kube::Client,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Vec<String> {
        let items: Vec<(u8, String, String)> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, ns, n)| keep(ns, n))
            .cloned()
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (kind, ns, name) in items {
            let gone = loop {
                let r = if kind == PVC {
                    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => api.get_opt(&name).await.map(|o| o.is_none()),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
                        Err(e) => Err(e),
                    }
                } else {
                    let api = snapshots_api(client, &ns);
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => api.get_opt(&name).await.map(|o| o.is_none()),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
                        Err(e) => Err(e),
                    }
                };
                match r {
                    Ok(true) => break true,
                    Err(kube::Error::Api(s)) if s.code == 403 => break false,
                    _ if tokio::time::Instant::now() > deadline => break false,
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            };
            if gone {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&(
                    kind,
                    ns.clone(),
                    name.clone(),
                ));
            }
        }
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, ns, n)| keep(ns, n))
            .map(|(k, ns, n)| {
                let kind = if *k == PVC {
                    "persistentvolumeclaim"
                } else {
                    "volumesnapshot"
                };
                format!("{kind} {ns}/{n}")
            })
            .collect()
    }
    /// Renews the lease of every snapshot and temporary PVC registered here (their
    /// [`ANNOTATION_RENEWED`]) every `helper_session::renewal_period(lease)` until the guard is
    /// dropped, so that `cleanup` never takes a running backup's copy for a leftover. A failed
    /// renewal is tried again the next round; the lease outlasts a few.
    pub fn keep_alive(&self, client: &kube::Client, lease: Duration) -> KeepAlive {
        let me = self.clone();
        let client = client.clone();
        let period = crate::helper_session::renewal_period(lease);
        KeepAlive(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let items: Vec<(u8, String, String)> =
                    me.0.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .cloned()
                        .collect();
                let patch =
                    json!({"metadata": {"annotations": {ANNOTATION_RENEWED: now_rfc3339()}}});
                let pp = PatchParams::default();
                for (kind, ns, name) in items {
                    // Registered just before it is created, or already deleted: a 404 is fine.
                    let _ = if kind == PVC {
                        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                            .patch(&name, &pp, &Patch::Merge(&patch))
                            .await
                            .map(drop)
                    } else {
                        snapshots_api(&client, &ns)
                            .patch(&name, &pp, &Patch::Merge(&patch))
                            .await
                            .map(drop)
                    };
                }
            }
        }))
    }
}

/// Stops [`Leftovers::keep_alive`]'s renewals when dropped.
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A snapshot or temporary PVC of a backup run, as `cleanup` finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyObject {
    /// `volumesnapshot` or `persistentvolumeclaim`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub run_id: String,
    /// Seconds since its run last renewed it.
    pub idle_seconds: i64,
    pub lease_seconds: u64,
    /// Its run is gone: not renewed for twice the lease.
    pub abandoned: bool,
}

/// Whether the run that made an object is gone, from its annotations (or, without them, its
/// creation time and the default lease): not renewed for twice its lease, by this machine's
/// clock. Twice, because the renewal is written with the clock of the machine that runs the
/// backup: a skew of up to one lease between that machine and this one must not make a running
/// backup's copy look abandoned. Returns (idle seconds, lease seconds, abandoned).
pub fn abandoned(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    created: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> (i64, u64, bool) {
    let get = |k: &str| annotations.and_then(|a| a.get(k));
    let lease = get(ANNOTATION_LEASE)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(crate::helper_pod::DEFAULT_LEASE_SECONDS);
    let renewed = get(ANNOTATION_RENEWED)
        .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or(created);
    let idle = renewed.map(|t| (now - t).num_seconds()).unwrap_or(i64::MAX);
    (idle, lease, idle > 2 * lease as i64)
}

/// Lists the snapshots and temporary PVCs of backup runs (label `pvbackup.dev/purpose:
/// backup-copy`; the snapshot `restore --in-place` keeps is not one) in `ns` (all namespaces
/// when None). A cluster without the snapshot API has no snapshots to list.
pub async fn collect_copies(
    client: &kube::Client,
    ns: Option<&str>,
) -> Result<Vec<CopyObject>, Failure> {
    let lp = ListParams::default().labels(&format!(
        "{LABEL_MANAGED_BY}={APP_NAME},{LABEL_PURPOSE}={PURPOSE_COPY}"
    ));
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    let mut add = |kind: &'static str, meta: &kube::api::ObjectMeta| {
        let (idle_seconds, lease_seconds, abandoned) = abandoned(
            meta.annotations.as_ref(),
            meta.creation_timestamp
                .as_ref()
                .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0)),
            now,
        );
        out.push(CopyObject {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            run_id: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_RUN_ID))
                .cloned()
                .unwrap_or_default(),
            idle_seconds,
            lease_seconds,
            abandoned,
        });
    };
    let pvcs: Api<PersistentVolumeClaim> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Forbidden to list: that kind is not cleaned up, and the note says why; the rest of
    // cleanup still runs.
    let denied = |what: &str| {
        eprintln!("note: not allowed to list {what}, so those left by killed backups are not cleaned up; grant list on them (README, RBAC section)");
    };
    match pvcs.list(&lp).await {
        Ok(l) => l
            .items
            .iter()
            .for_each(|p| add("persistentvolumeclaim", &p.metadata)),
        Err(e) if forbidden(&e) => denied("persistentvolumeclaims"),
        Err(e) => return Err(explain("listing the temporary PVCs of backups", &e)),
    }
    let snaps = match ns {
        Some(ns) => snapshots_api(client, ns),
        None => Api::all_with(
            client.clone(),
            &resource("VolumeSnapshot", "volumesnapshots"),
        ),
    };
    match snaps.list(&lp).await {
        Ok(l) => l
            .items
            .iter()
            .for_each(|v| add("volumesnapshot", &v.metadata)),
        // No snapshot API (no external-snapshotter CRDs): no snapshots.
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) if forbidden(&e) => denied("volumesnapshots.snapshot.storage.k8s.io"),
        Err(e) => return Err(explain("listing the VolumeSnapshots of backups", &e)),
    }
    Ok(out)
}

/// Deletes `copies` (temporary PVCs first) and waits until they are gone; returns what could
/// not be deleted.
pub async fn delete_copies(client: &kube::Client, copies: &[CopyObject]) -> Vec<String> {
    let l = Leftovers::default();
    for c in copies {
        let kind = if c.kind == "persistentvolumeclaim" {
            PVC
        } else {
            SNAPSHOT
        };
        l.add(kind, &c.namespace, &c.name);
    }
    l.delete_all(client).await
}

/// `restore --in-place`'s rollback snapshot, as plain values.
#[derive(Debug, Clone)]
pub struct RollbackSettings {
    /// `auto`: when the target's driver has a VolumeSnapshotClass; `always`: or refuse;
    /// `never`: no snapshot.
    pub mode: SnapshotMode,
    pub class: Option<String>,
    pub timeout: Duration,
    /// Keep the snapshot after a successful restore (it is always kept after a failed one).
    pub keep: bool,
}

/// The snapshot `restore --in-place` cut of its target before deleting anything.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptSnapshot {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub cut_time: String,
    /// Still there when the command ended.
    pub kept: bool,
}

impl KeptSnapshot {
    /// How to get the content back, for messages.
    pub fn how_to_restore(&self) -> String {
        format!(
            "create a PVC with spec.dataSource {{apiGroup: {GROUP}, kind: VolumeSnapshot, name: {}}} in namespace {} to get it back",
            self.name, self.namespace
        )
    }
}

/// Whether `restore --in-place` of `pvc` gets its rollback snapshot, read-only (what
/// [`snapshot_before_restore`] and `restore --dry-run` decide by): `Ok(class)` (the
/// VolumeSnapshotClass to name, `None` for the driver's default) or `Err(why not)`; under
/// `always` a "not" is the refusal.
pub async fn rollback_class(
    client: &kube::Client,
    ns: &str,
    pvc: &PersistentVolumeClaim,
    rs: &RollbackSettings,
) -> Result<Result<Option<String>, String>, Failure> {
    let pvc_name = pvc.metadata.name.clone().unwrap_or_default();
    let without = |why: String| {
        match rs.mode {
        SnapshotMode::Always => Err(Failure::refused(format!(
            "no snapshot of PVC {ns}/{pvc_name} can be cut before restoring in place: {why}; nothing was changed. --snapshot auto restores in place without one"
        ))),
        _ => Ok(Err(why)),
    }
    };
    if rs.mode == SnapshotMode::Never {
        return Ok(Err("--snapshot never".into()));
    }
    let offer = match collect_offer(client, pvc).await {
        Ok(o) => o,
        Err(f) => return without(f.message),
    };
    // Decided as under auto: a clone is no snapshot, and `always` is refused here with a
    // restore's words rather than a backup's.
    match decide(SnapshotMode::Auto, rs.class.as_deref(), &offer) {
        Ok(Decision::Snapshot { class }) => Ok(Ok(class)),
        Ok(Decision::Live { reason }) => without(reason),
        Ok(Decision::Clone) => without(format!(
            "no VolumeSnapshotClass for driver {}",
            offer.driver.as_deref().unwrap_or("(unknown)")
        )),
        Err(m) => Err(Failure::refused(m)),
    }
}

/// Cuts a snapshot of `pvc` (the target of `restore --in-place`) and waits until it is
/// readyToUse: the restore deletes the volume's content next, and a snapshot that is cut but
/// still being processed by the driver (an upload) may yet fail, which would leave no rollback.
/// `Ok(Err(reason))`: under `auto`, no snapshot can be cut (the reason is for a note).
pub async fn snapshot_before_restore(
    client: &kube::Client,
    ns: &str,
    pvc: &PersistentVolumeClaim,
    run_id: &str,
    rs: &RollbackSettings,
) -> Result<Result<KeptSnapshot, String>, Failure> {
    let pvc_name = pvc.metadata.name.clone().unwrap_or_default();
    let class = match rollback_class(client, ns, pvc, rs).await? {
        Ok(class) => class,
        Err(why) => return Ok(Err(why)),
    };
    let name = object_name(&pvc_name, "before-restore", run_id);
    let metadata = json!({"name": name, "labels": {
        LABEL_MANAGED_BY: APP_NAME, LABEL_RUN_ID: run_id.to_ascii_lowercase(),
        LABEL_PVC: crate::helper_pod::label_value(&pvc_name), LABEL_PURPOSE: PURPOSE_BEFORE_RESTORE}});
    let registered = Leftovers::default();
    let cut = match cut_snapshot(
        client,
        ns,
        &pvc_name,
        metadata,
        class.as_deref(),
        rs.timeout,
        &registered,
    )
    .await
    {
        Ok(c) => wait_ready(client, ns, &c.0, rs.timeout).await.map(|_| c),
        Err(f) => Err(f),
    };
    match cut {
        Ok((name, class, cut_time)) => Ok(Ok(KeptSnapshot {
            namespace: ns.to_string(),
            name,
            class,
            cut_time,
            kept: true,
        })),
        Err(f) => {
            // A snapshot that failed is no rollback; it goes.
            let _ = registered.delete_all(client).await;
            Err(Failure {
                message: format!(
                    "{}. Nothing was changed on PVC {ns}/{pvc_name}: restore --in-place cuts a snapshot of it first (--snapshot never skips that, leaving no rollback)",
                    f.message
                ),
                ..f
            })
        }
    }
}

/// Deletes the snapshot `restore --in-place` cut (`--keep-snapshot=false`, after success).
pub async fn delete_kept(client: &kube::Client, kept: &mut KeptSnapshot) -> Result<(), String> {
    let l = Leftovers::default();
    l.add(SNAPSHOT, &kept.namespace, &kept.name);
    let left = l.delete_all(client).await;
    kept.kept = !left.is_empty();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("could not delete {}", left.join(", ")))
    }
}

/// The copy a backup reads: the PVC itself (live) or a temporary one.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopySource {
    pub method: CopyMethod,
    /// The PVC the helper mounts.
    #[serde(skip)]
    pub claim: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_class: Option<String>,
    /// When the snapshot was cut (the VolumeSnapshot's `status.creationTime`), or when the
    /// clone was requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_time: Option<String>,
    /// Why a live copy was made under `--snapshot auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

impl CopySource {
    pub fn live(pvc: &str, reason: Option<String>) -> Self {
        CopySource {
            method: CopyMethod::Live,
            claim: pvc.to_string(),
            snapshot: None,
            snapshot_class: None,
            cut_time: None,
            fallback_reason: reason,
        }
    }
}

/// DNS-1123 names from the PVC and the backup id: `<pvc>-pvb-<id>`, lower case, at most 63
/// characters (PVC names become label values and pod volume references).
pub fn temp_name(pvc: &str, backup_id: &str) -> String {
    object_name(pvc, "pvb", backup_id)
}

/// `<pvc>-<tag>-<id>`, lower case, the PVC's name cut so the whole fits in 63 characters.
fn object_name(pvc: &str, tag: &str, id: &str) -> String {
    let id = id.to_ascii_lowercase();
    let suffix = format!("-{tag}-{id}");
    let keep = 63usize.saturating_sub(suffix.len());
    let head: String = pvc.chars().take(keep).collect();
    format!("{}{suffix}", head.trim_end_matches(['-', '.']))
}

/// `pvbackup.dev/purpose` of the snapshots and temporary PVCs `create` makes: the ones
/// `cleanup` may delete once their run is gone.
pub const PURPOSE_COPY: &str = "backup-copy";
/// `pvbackup.dev/purpose` of the snapshot `restore --in-place` keeps: never cleaned up.
pub const PURPOSE_BEFORE_RESTORE: &str = "before-restore";
/// When the run that owns a snapshot or temporary PVC last said it is alive (RFC 3339, the
/// client's clock); with [`ANNOTATION_LEASE`] it tells `cleanup` whether the run is gone.
pub const ANNOTATION_RENEWED: &str = "pvbackup.dev/renewed-at";

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Labels and annotations of a snapshot or temporary PVC of a backup run: its lease starts now.
fn copy_metadata(name: &str, pvc: &str, backup_id: &str, lease: Duration) -> serde_json::Value {
    json!({
        "name": name,
        "labels": {LABEL_MANAGED_BY: APP_NAME, LABEL_RUN_ID: backup_id.to_ascii_lowercase(),
                   LABEL_PVC: crate::helper_pod::label_value(pvc), LABEL_PURPOSE: PURPOSE_COPY},
        "annotations": {ANNOTATION_LEASE: lease.as_secs().max(1).to_string(),
                        ANNOTATION_RENEWED: now_rfc3339()},
    })
}

/// Polls `f` every half second until it returns Some or `limit` passes. API errors during the
/// wait (an outage) are retried; only the deadline ends it.
async fn poll<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The message of the newest event about `name` with `reason`, if events may be read.
async fn event(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Option<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .ok()?;
    list.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .max_by_key(|e| e.last_timestamp.clone().map(|t| t.0))
        .and_then(|e| e.message)
}

/// Creates a VolumeSnapshot of `pvc` and waits until it is cut (`status.creationTime`), not
/// until it is readyToUse: the caller's post hook may resume the application from then on.
/// Returns the snapshot's name, class and cut time.
/// `metadata` names the snapshot (`name`) and carries its labels and annotations.
pub async fn cut_snapshot(
    client: &kube::Client,
    ns: &str,
    pvc: &str,
    metadata: serde_json::Value,
    class: Option<&str>,
    timeout: Duration,
    leftovers: &Leftovers,
) -> Result<(String, Option<String>, String), Failure> {
    let api = snapshots_api(client, ns);
    let name = metadata["name"].as_str().unwrap_or_default().to_string();
    let mut obj = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "VolumeSnapshot",
        "metadata": metadata,
        "spec": {"source": {"persistentVolumeClaimName": pvc}},
    });
    if let Some(c) = class {
        obj["spec"]["volumeSnapshotClassName"] = json!(c);
    }
    let obj: DynamicObject = serde_json::from_value(obj)
        .map_err(|e| Failure::runtime(format!("building the VolumeSnapshot: {e}")))?;
    leftovers.add(SNAPSHOT, ns, &name);
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        // A retry of the whole run with the same id: the snapshot is ours.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(explain(
                &format!("creating VolumeSnapshot {ns}/{name} of PVC {pvc}"),
                &e,
            ))
        }
    }
    let state = poll(timeout, || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let o = api.get(&name).await.ok()?;
            let st = &o.data["status"];
            if let Some(e) = st["error"]["message"].as_str() {
                return Some(Err(e.to_string()));
            }
            st["creationTime"].as_str().map(|t| {
                Ok((
                    t.to_string(),
                    o.data["spec"]["volumeSnapshotClassName"]
                        .as_str()
                        .map(str::to_string),
                ))
            })
        }
    })
    .await;
    match state {
        Some(Ok((t, class))) => Ok((name, class, t)),
        Some(Err(e)) => Err(Failure::runtime(format!(
            "VolumeSnapshot {ns}/{name} of PVC {pvc} failed: {e}. See `kubectl describe volumesnapshot -n {ns} {name}`; --snapshot never makes a live copy instead"
        ))
        .permanent()),
        None => Err(Failure::runtime(format!(
            "VolumeSnapshot {ns}/{name} of PVC {pvc} was not cut within {}s (no creationTime); is the snapshot controller and the driver's csi-snapshotter running? Raise --snapshot-timeout, or use --snapshot never",
            timeout.as_secs()
        ))
        .permanent()),
    }
}

/// Waits until the snapshot is readyToUse.
pub async fn wait_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<String>, Failure> {
    let api = snapshots_api(client, ns);
    let r = poll(timeout, || {
        let api = api.clone();
        async move {
            let o = api.get(name).await.ok()?;
            let st = &o.data["status"];
            if let Some(e) = st["error"]["message"].as_str() {
                return Some(Err(e.to_string()));
            }
            (st["readyToUse"] == true).then(|| Ok(st["restoreSize"].as_str().map(str::to_string)))
        }
    })
    .await;
    match r {
        Some(Ok(size)) => Ok(size),
        Some(Err(e)) => Err(Failure::runtime(format!("VolumeSnapshot {ns}/{name} failed: {e}")).permanent()),
        None => Err(Failure::runtime(format!(
            "VolumeSnapshot {ns}/{name} was cut but not readyToUse within {}s; raise --snapshot-timeout",
            timeout.as_secs()
        ))
        .permanent()),
    }
}

/// Outcome of provisioning the temporary PVC.
pub enum Provisioned {
    Ready,
    /// The driver cannot do it (clone without CLONE_VOLUME): the message of the event.
    Unsupported(String),
}

/// Creates the temporary PVC from `source` (a VolumeSnapshot or the PVC itself) and waits until
/// it is Bound, or waits for its first consumer (WaitForFirstConsumer classes bind when the
/// helper pod is scheduled).
#[allow(clippy::too_many_arguments)]
pub async fn provision_copy(
    client: &kube::Client,
    ns: &str,
    pvc: &PersistentVolumeClaim,
    backup_id: &str,
    source: serde_json::Value,
    size: Option<String>,
    timeout: Duration,
    leftovers: &Leftovers,
    lease: Duration,
) -> Result<(String, Provisioned), Failure> {
    let pvc_name = pvc.metadata.name.clone().unwrap_or_default();
    let name = temp_name(&pvc_name, backup_id);
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = size
        .or_else(|| {
            pvc.status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .map(|q| q.0.clone())
        })
        .or_else(|| {
            spec.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone())
        })
        .unwrap_or_else(|| "1Gi".into());
    let mut obj = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": copy_metadata(&name, &pvc_name, backup_id, lease),
        "spec": {
            // Only the helper mounts it, once.
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": request}},
            "dataSource": source,
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
        },
    });
    if let Some(sc) = &spec.storage_class_name {
        obj["spec"]["storageClassName"] = json!(sc);
    }
    let obj: PersistentVolumeClaim = serde_json::from_value(obj)
        .map_err(|e| Failure::runtime(format!("building the temporary PVC: {e}")))?;
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    leftovers.add(PVC, ns, &name);
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(explain(
                &format!("creating the temporary PVC {ns}/{name}"),
                &e,
            ))
        }
    }
    let outcome = poll(timeout, || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let o = api.get(&name).await.ok()?;
            if o.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
                return Some(Ok(Provisioned::Ready));
            }
            if event(client, ns, &name, "WaitForFirstConsumer")
                .await
                .is_some()
            {
                return Some(Ok(Provisioned::Ready));
            }
            if let Some(m) = event(client, ns, &name, "ProvisioningFailed").await {
                if m.contains("capability is not reported") {
                    return Some(Ok(Provisioned::Unsupported(m)));
                }
                // Not ready yet ("snapshot … is not Ready") is retried by the provisioner;
                // size and driver mismatches are not going to change.
                if m.contains("is less than")
                    || m.contains("not handled by CSI driver")
                    || m.contains("must be greater than or equal")
                {
                    return Some(Err(m));
                }
            }
            None
        }
    })
    .await;
    match outcome {
        Some(Ok(p)) => Ok((name, p)),
        Some(Err(m)) => Err(Failure::runtime(format!(
            "the temporary PVC {ns}/{name} cannot be provisioned: {m}"
        ))
        .permanent()),
        None => Err(Failure::runtime(format!(
            "the temporary PVC {ns}/{name} was not bound within {}s; see `kubectl describe pvc -n {ns} {name}`",
            timeout.as_secs()
        ))
        .permanent()),
    }
}

/// Lists, inside the helper, every non-directory entry under /data with size, mtime and
/// ctime (nanoseconds), into /tmp/pvbackup-stat-before (`before`) or compares a fresh listing
/// with it (`after`).
///
/// Contract. Inputs: the volume at /data; for `after`, the file `before` wrote. Output of
/// `before`: nothing on stdout; `after` prints one line per changed path (`changed <path>`,
/// `added <path>`, `removed <path>`, at most 1000) and a last line `total <n>`. Leaves only
/// files under /tmp (the helper's emptyDir); nothing on the volume. Stopped at any point it
/// leaves at most a partial listing in /tmp, which the next attempt's new helper never sees.
/// busybox `stat -c %y/%z` prints nanoseconds, so a rewrite within the same second is seen.
/// Names containing a newline are split over two lines; they can only add false positives.
/// A file that goes between `find` and `stat` is not listed (stat's complaint is dropped), so
/// it counts as removed when the `before` listing had it.
pub const CHANGE_LISTING: &str = r#"for t in find xargs stat awk; do command -v $t > /dev/null || { echo "$t: not found" >&2; exit 127; }; done
cd /data || exit 1
find . -xdev ! -type d -print0 | xargs -0 -r stat -c '%s %y %z %n' 2> /dev/null > /tmp/pvbackup-stat-$1
[ "$1" = before ] && exit 0
awk 'function key(l,   k, i) { k = l; for (i = 0; i < 7; i++) sub(/^[^ ]* /, "", k); return k }
     function sig(l,   k) { k = key(l); return substr(l, 1, length(l) - length(k)) }
     NR == FNR { b[key($0)] = sig($0); next }
     { k = key($0); seen[k] = 1
       if (!(k in b)) { n++; if (n <= 1000) print "added " k }
       else if (b[k] != sig($0)) { n++; if (n <= 1000) print "changed " k } }
     END { for (k in b) if (!(k in seen)) { n++; if (n <= 1000) print "removed " k }
           print "total " n + 0 }' /tmp/pvbackup-stat-before /tmp/pvbackup-stat-after
"#;

/// Paths that changed while the volume was read, from the `after` output; and the total.
pub fn parse_changes(out: &str) -> (Vec<String>, u64) {
    let mut paths = Vec::new();
    let mut total = 0;
    for line in out.lines() {
        if let Some(n) = line.strip_prefix("total ") {
            total = n.trim().parse().unwrap_or(0);
        } else if let Some((_, p)) = line.split_once(' ') {
            paths.push(p.strip_prefix("./").unwrap_or(p).to_string());
        }
    }
    paths.sort();
    paths.dedup();
    (paths, total)
}

/// How one PVC's copy was made, reported in the result and recorded in the manifest.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Consistency {
    #[serde(flatten)]
    pub source: CopySource,
    /// Live copies: paths whose size, mtime or ctime moved while the volume was read (at most
    /// 1000), and how many there were in all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_files: Vec<String>,
    pub changed_file_count: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::hooks::HookOutcome>,
}

/// The copy to read, prepared: hooks run, snapshot cut, temporary PVC created.
pub struct Prepared {
    pub source: CopySource,
    pub hooks: Vec<crate::hooks::HookOutcome>,
    /// Post hooks still owed (live copies: they run when the copy is done).
    pub post: Vec<crate::hooks::Hook>,
}

/// Everything the consistency step needs to know about one target.
pub struct TargetInfo<'a> {
    pub namespace: &'a str,
    pub pvc: &'a PersistentVolumeClaim,
    pub pods: &'a [k8s_openapi::api::core::v1::Pod],
    pub ns_object: Option<&'a k8s_openapi::api::core::v1::Namespace>,
    pub backup_id: &'a str,
}

/// Shared by every target of a run: what to clean up and which post hooks are owed.
#[derive(Clone)]
pub struct RunState {
    pub leftovers: Leftovers,
    pub owed: crate::hooks::Owed,
    /// How long the run's snapshots and temporary PVCs outlive its last renewal before
    /// `cleanup` may take them for leftovers of a killed run (the helper pods' lease).
    pub lease: Duration,
}

impl Default for RunState {
    fn default() -> Self {
        RunState {
            leftovers: Leftovers::default(),
            owed: Default::default(),
            lease: crate::helper_pod::lease_from_env(),
        }
    }
}

/// Runs the pre hooks, then snapshots (or clones) the PVC, runs the post hooks as soon as the
/// copy is cut, and provisions the temporary PVC the helper will read. On failure the post
/// hooks have run; the caller deletes what [`Leftovers`] holds.
pub async fn prepare(
    client: &kube::Client,
    t: &TargetInfo<'_>,
    cs: &ConsistencySettings,
    run: &RunState,
    note: &(dyn Fn(&str) + Sync),
) -> Result<Prepared, (Failure, Vec<crate::hooks::HookOutcome>)> {
    use crate::hooks::{self, Phase};
    let pvc_name = t.pvc.metadata.name.clone().unwrap_or_default();
    let ns = t.namespace;
    let refuse = |m: String| (Failure::refused(m).permanent(), Vec::new());
    let pre = hooks::resolve(
        Phase::Pre,
        cs.hooks.pre.as_ref(),
        t.pods,
        &pvc_name,
        t.ns_object,
    )
    .map_err(refuse)?;
    let post = hooks::resolve(
        Phase::Post,
        cs.hooks.post.as_ref(),
        t.pods,
        &pvc_name,
        t.ns_object,
    )
    .map_err(refuse)?;
    let decision = if cs.mode == SnapshotMode::Never {
        Decision::Live {
            reason: "--snapshot never".into(),
        }
    } else if let Some(denied) = &cs.denied {
        Decision::Live {
            reason: denied.clone(),
        }
    } else {
        match collect_offer(client, t.pvc).await {
            Ok(offer) => decide(cs.mode, cs.class.as_deref(), &offer).map_err(refuse)?,
            Err(f) if cs.mode == SnapshotMode::Always => return Err((f, Vec::new())),
            // `auto` must not make a backup fail that would have worked live.
            Err(f) => Decision::Live {
                reason: format!(
                    "could not find out whether the PVC can be snapshotted: {}",
                    f.message
                ),
            },
        }
    };
    let mut outcomes = Vec::new();
    // From the first pre hook on, the post hooks are owed, whatever happens.
    run.owed.add(ns, &post);
    for h in &pre {
        note(&format!("pre hook in {}/{}", h.pod, h.container));
        let o = hooks::run(client, ns, h).await;
        let failed = hooks::failure(&o);
        outcomes.push(o);
        if let Some(f) = failed {
            outcomes.extend(run.owed.run_for(client, ns, &post).await);
            return Err((f, outcomes));
        }
    }
    let live = |reason: Option<String>, outcomes: Vec<hooks::HookOutcome>| Prepared {
        source: CopySource::live(&pvc_name, reason),
        hooks: outcomes,
        post: post.clone(),
    };
    match decision {
        Decision::Live { reason } => {
            let reason = (cs.mode != SnapshotMode::Never).then_some(reason);
            Ok(live(reason, outcomes))
        }
        Decision::Snapshot { class } => {
            note("cutting a snapshot");
            let cut = cut_snapshot(
                client,
                ns,
                &pvc_name,
                copy_metadata(
                    &temp_name(&pvc_name, t.backup_id),
                    &pvc_name,
                    t.backup_id,
                    run.lease,
                ),
                class.as_deref(),
                cs.timeout,
                &run.leftovers,
            )
            .await;
            // The snapshot is cut (or will not be): the application may go on.
            outcomes.extend(run.owed.run_for(client, ns, &post).await);
            let (snap, class, cut_time) = cut.map_err(|f| (f, outcomes.clone()))?;
            if let Some(f) = outcomes.iter().find_map(hooks::failure) {
                return Err((f, outcomes));
            }
            note("waiting for the snapshot to be ready");
            let size = wait_ready(client, ns, &snap, cs.timeout)
                .await
                .map_err(|f| (f, outcomes.clone()))?;
            let size = larger(size, t.pvc);
            let (claim, p) = provision_copy(
                client,
                ns,
                t.pvc,
                t.backup_id,
                json!({"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": snap}),
                size,
                cs.timeout,
                &run.leftovers,
                run.lease,
            )
            .await
            .map_err(|f| (f, outcomes.clone()))?;
            if let Provisioned::Unsupported(m) = p {
                return Err((
                    Failure::runtime(format!(
                        "the temporary PVC cannot be provisioned from the snapshot: {m}"
                    ))
                    .permanent(),
                    outcomes,
                ));
            }
            Ok(Prepared {
                source: CopySource {
                    method: CopyMethod::Snapshot,
                    claim,
                    snapshot: Some(snap),
                    snapshot_class: class,
                    cut_time: Some(cut_time),
                    fallback_reason: None,
                },
                hooks: outcomes,
                post: Vec::new(),
            })
        }
        Decision::Clone => {
            note("cloning the PVC");
            let requested = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let r = provision_copy(
                client,
                ns,
                t.pvc,
                t.backup_id,
                json!({"kind": "PersistentVolumeClaim", "name": pvc_name}),
                None,
                cs.timeout,
                &run.leftovers,
                run.lease,
            )
            .await;
            match r {
                Ok((claim, Provisioned::Ready)) => {
                    outcomes.extend(run.owed.run_for(client, ns, &post).await);
                    if let Some(f) = outcomes.iter().find_map(hooks::failure) {
                        return Err((f, outcomes));
                    }
                    Ok(Prepared {
                        source: CopySource {
                            method: CopyMethod::Clone,
                            claim,
                            snapshot: None,
                            snapshot_class: None,
                            cut_time: Some(requested),
                            fallback_reason: None,
                        },
                        hooks: outcomes,
                        post: Vec::new(),
                    })
                }
                Ok((_, Provisioned::Unsupported(m))) => {
                    let why = format!(
                        "the PVC's driver has no VolumeSnapshotClass and cannot clone ({m})"
                    );
                    if cs.mode == SnapshotMode::Always {
                        outcomes.extend(run.owed.run_for(client, ns, &post).await);
                        return Err((
                            Failure::refused(format!("{why}; --snapshot always cannot be honoured. Use --snapshot auto to fall back to a live copy")).permanent(),
                            outcomes,
                        ));
                    }
                    Ok(live(Some(why), outcomes))
                }
                Err(f) => {
                    outcomes.extend(run.owed.run_for(client, ns, &post).await);
                    Err((f, outcomes))
                }
            }
        }
    }
}

/// Fills the manifest's `consistency` section and marks the entries that changed while read.
/// Post hooks of a live copy run after the manifest (the commit marker) is written, so they
/// are in the result only.
pub fn record(
    m: &mut crate::manifest::Manifest,
    copy: &CopySource,
    changes: &(Vec<String>, u64),
    hooks: &[crate::hooks::HookOutcome],
) {
    use crate::hooks::HookResult;
    use crate::manifest::{
        Consistency as Section, ConsistencyMethod, HookOutcome, HookPhase, HookRun, SnapshotInfo,
    };
    let method = match copy.method {
        CopyMethod::Snapshot => ConsistencyMethod::Snapshot,
        CopyMethod::Clone => ConsistencyMethod::Clone,
        CopyMethod::Live => ConsistencyMethod::Live,
    };
    m.consistency = Some(Section {
        method,
        snapshot: copy.snapshot.as_ref().map(|name| SnapshotInfo {
            name: name.clone(),
            class: copy.snapshot_class.clone(),
            content_name: None,
            cut_time: copy
                .cut_time
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        }),
        clone_pvc: (copy.method == CopyMethod::Clone).then(|| copy.claim.clone()),
        hooks: hooks
            .iter()
            .map(|h| HookRun {
                phase: match h.phase {
                    crate::hooks::Phase::Pre => HookPhase::Pre,
                    crate::hooks::Phase::Post => HookPhase::Post,
                },
                pod: h.pod.clone(),
                container: h.container.clone(),
                command: h.command.clone(),
                outcome: match h.result {
                    HookResult::Ok => HookOutcome::Succeeded,
                    HookResult::Failed => HookOutcome::Failed,
                    HookResult::TimedOut => HookOutcome::TimedOut,
                },
                exit_code: h.exit_code,
                started: None,
                duration_ms: None,
            })
            .collect(),
        files_changed_while_read: changes.1,
    });
    if changes.0.is_empty() {
        return;
    }
    // A note per changed file; the entries stream carries those of the entries the archive
    // holds and drops the rest (a file that vanished has no entry), see
    // `manifest::write_entries_object`. The entries themselves are not in memory (issue #14).
    let notes = changes.0.iter().map(|path| crate::manifest::EntryNote {
        path: path.clone(),
        path_hex: None,
        changed_while_read: true,
        in_parent: false,
        archive: 0,
    });
    m.entry_notes.extend(notes);
}

/// The temporary PVC's size: the snapshot's restoreSize or the PVC's capacity, the larger.
fn larger(restore: Option<String>, pvc: &PersistentVolumeClaim) -> Option<String> {
    let cap = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone());
    match (restore, cap) {
        (Some(r), Some(c)) => {
            let (rb, cb) = (
                crate::discover::parse_quantity_bytes(&r).ok(),
                crate::discover::parse_quantity_bytes(&c).ok(),
            );
            if rb.unwrap_or(0) > cb.unwrap_or(0) {
                Some(r)
            } else {
                Some(c)
            }
        }
        (r, c) => c.or(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, default: bool) -> SnapshotClass {
        SnapshotClass {
            name: name.into(),
            driver: driver.into(),
            default,
        }
    }

    fn offer(classes: Vec<SnapshotClass>) -> Offer {
        Offer {
            api: true,
            driver: Some("d.csi".into()),
            csi: false,
            classes: Some(classes),
        }
    }

    #[test]
    fn never_is_live_and_no_api_falls_back_or_explains() {
        assert!(matches!(
            decide(SnapshotMode::Never, None, &offer(vec![])),
            Ok(Decision::Live { .. })
        ));
        let none = Offer::default();
        assert!(matches!(
            decide(SnapshotMode::Auto, None, &none),
            Ok(Decision::Live { reason }) if reason.contains("external-snapshotter")
        ));
        let e = decide(SnapshotMode::Always, None, &none).unwrap_err();
        assert!(
            e.contains("snapshot.storage.k8s.io/v1") && e.contains("--snapshot auto"),
            "{e}"
        );
    }

    #[test]
    fn the_drivers_default_class_wins_then_a_single_class_then_clone() {
        let classes = vec![
            class("other", "x.csi", true),
            class("a", "d.csi", false),
            class("b", "d.csi", true),
        ];
        assert_eq!(
            decide(SnapshotMode::Auto, None, &offer(classes)),
            Ok(Decision::Snapshot {
                class: Some("b".into())
            })
        );
        assert_eq!(
            decide(
                SnapshotMode::Auto,
                None,
                &offer(vec![class("a", "d.csi", false)])
            ),
            Ok(Decision::Snapshot {
                class: Some("a".into())
            })
        );
        assert_eq!(
            decide(
                SnapshotMode::Always,
                None,
                &offer(vec![class("o", "x.csi", true)])
            ),
            Ok(Decision::Clone)
        );
        assert!(matches!(
            decide(SnapshotMode::Auto, None, &offer(vec![class("o", "x.csi", true)])),
            Ok(Decision::Live { reason }) if reason.contains("no VolumeSnapshotClass for driver d.csi")
        ));
        // A CSI volume (driver read from the PV) on a cluster set up for snapshots, but not
        // for this driver: a clone under auto too; with no class at all, live.
        let csi = Offer {
            csi: true,
            ..offer(vec![class("o", "x.csi", true)])
        };
        assert_eq!(decide(SnapshotMode::Auto, None, &csi), Ok(Decision::Clone));
        let bare = Offer {
            csi: true,
            ..offer(vec![])
        };
        assert!(matches!(
            decide(SnapshotMode::Auto, None, &bare),
            Ok(Decision::Live { .. })
        ));
        let two = vec![class("a", "d.csi", false), class("b", "d.csi", false)];
        assert!(decide(SnapshotMode::Always, None, &offer(two.clone()))
            .unwrap_err()
            .contains("--snapshot-class"));
        assert!(matches!(
            decide(SnapshotMode::Auto, None, &offer(two)),
            Ok(Decision::Live { .. })
        ));
    }

    #[test]
    fn a_named_class_must_exist_and_match_the_driver() {
        let classes = vec![class("x", "x.csi", false)];
        assert!(
            decide(SnapshotMode::Auto, Some("nope"), &offer(classes.clone()))
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(decide(SnapshotMode::Auto, Some("x"), &offer(classes))
            .unwrap_err()
            .contains("handled by d.csi"));
        // Classes not readable (RBAC): the controller decides.
        let blind = Offer {
            api: true,
            driver: None,
            csi: false,
            classes: None,
        };
        assert_eq!(
            decide(SnapshotMode::Auto, None, &blind),
            Ok(Decision::Snapshot { class: None })
        );
    }

    #[test]
    fn a_copy_is_abandoned_only_after_twice_its_lease_without_renewal() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T07:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let ann = |lease: &str, renewed: &str| {
            std::collections::BTreeMap::from([
                (ANNOTATION_LEASE.to_string(), lease.to_string()),
                (ANNOTATION_RENEWED.to_string(), renewed.to_string()),
            ])
        };
        // Renewed 100 s ago with a 60 s lease: kept (a clock skew of up to a lease is fine).
        assert_eq!(
            abandoned(Some(&ann("60", "2026-12-07T06:58:20Z")), None, now),
            (100, 60, false)
        );
        assert_eq!(
            abandoned(Some(&ann("60", "2026-12-07T06:57:59Z")), None, now),
            (121, 60, true)
        );
        // Without annotations: the creation time and the default lease.
        let created = now - chrono::Duration::seconds(30);
        assert_eq!(abandoned(None, Some(created), now), (30, 60, false));
        let old = now - chrono::Duration::seconds(3600);
        assert!(abandoned(Some(&ann("x", "garbage")), Some(old), now).2);
    }

    #[test]
    fn temp_names_are_dns_labels() {
        let n = temp_name("data-orders-db-0", "20261201T005934Z-ab12");
        assert_eq!(n, "data-orders-db-0-pvb-20261201t005934z-ab12");
        let long = temp_name(&"p".repeat(80), "20261201T005934Z-ab12");
        assert!(long.len() <= 63 && long.ends_with("-pvb-20261201t005934z-ab12"));
        let kept = object_name(&"q".repeat(80), "before-restore", "20261207t065500-ab12");
        assert!(kept.len() <= 63 && kept.ends_with("-before-restore-20261207t065500-ab12"));
    }

    #[test]
    fn change_listing_finds_changed_added_and_removed_files_in_busybox() {
        let Ok(bb) = which_busybox() else {
            eprintln!("skipping: busybox not installed");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // The script works on /data; run it in a copy that uses the temp dir instead.
        let data = dir.path().join("data");
        let script = CHANGE_LISTING
            .replace(
                "/tmp/pvbackup",
                &format!("{}/pvbackup", dir.path().display()),
            )
            .replace("cd /data", &format!("cd '{}'", data.display()));
        std::fs::create_dir_all(data.join("sub dir")).unwrap();
        for f in ["same", "grows", "touched", "goes", "sub dir/with space"] {
            std::fs::write(data.join(f), b"1").unwrap();
        }
        let run = |phase: &str| {
            let out = std::process::Command::new(&bb)
                .args(["sh", "-c", &script, "sh", phase])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run("before"), "");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(data.join("grows"), b"12").unwrap();
        // Same size, new content within the same second: only the nanoseconds move.
        std::fs::write(data.join("touched"), b"2").unwrap();
        std::fs::remove_file(data.join("goes")).unwrap();
        std::fs::write(data.join("sub dir/new"), b"n").unwrap();
        let out = run("after");
        let (paths, total) = parse_changes(&out);
        assert_eq!(total, 4, "{out}");
        assert_eq!(paths, ["goes", "grows", "sub dir/new", "touched"], "{out}");
    }

    fn which_busybox() -> Result<std::path::PathBuf, ()> {
        ["/usr/bin/busybox", "/bin/busybox"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or(())
    }

    #[test]
    fn changes_parse_and_strip_the_dot() {
        let (p, n) = parse_changes("changed ./a b\nadded ./c\ntotal 1002\n");
        assert_eq!(p, ["a b", "c"]);
        assert_eq!(n, 1002);
    }
}

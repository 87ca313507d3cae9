//! The CSI snapshot model against kube-rs: discovery of snapshot.storage.k8s.io/v1, the
//! snapshot controller's binding and status fields, a point-in-time cut of a volume that a
//! container keeps writing, provisioning from a snapshot and from a PVC (cloning), deletion
//! policies, and the failures a real provisioner and snapshotter report.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{AttachParams, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use kubesim::{Cluster, ClusterOptions, Scenario};
use serde_json::{json, Value};

async fn start() -> (Cluster, Client) {
    let c = Cluster::start(ClusterOptions {
        scenario: Scenario::Empty,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let client = client_for(c.kubeconfig()).await;
    (c, client)
}

async fn client_for(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

fn ar(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", kind),
        plural,
    )
}

fn snapshots(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ar("VolumeSnapshot", "volumesnapshots"))
}
fn contents(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ar("VolumeSnapshotContent", "volumesnapshotcontents"),
    )
}
fn classes(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ar("VolumeSnapshotClass", "volumesnapshotclasses"),
    )
}

async fn create_dyn(api: &Api<DynamicObject>, v: Value) -> DynamicObject {
    api.create(
        &PostParams::default(),
        &serde_json::from_value(v).expect("object"),
    )
    .await
    .expect("create")
}

async fn apply_core(client: &Client, v: Value) {
    let kind = v["kind"].as_str().unwrap_or_default().to_string();
    match kind.as_str() {
        "StorageClass" => {
            let api: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
            api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
                .await
                .expect("storage class");
        }
        "PersistentVolumeClaim" => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
            api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
                .await
                .expect("pvc");
        }
        "Pod" => {
            let api: Api<Pod> = Api::namespaced(client.clone(), "default");
            api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
                .await
                .expect("pod");
        }
        other => panic!("unexpected kind {other}"),
    }
}

fn storage_class(name: &str, driver: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
           "provisioner": driver, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"})
}

fn snapshot_class(name: &str, driver: &str, default: bool, params: Value) -> Value {
    let mut v = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": name}, "driver": driver, "deletionPolicy": "Delete", "parameters": params});
    if default {
        v["metadata"]["annotations"] =
            json!({"snapshot.storage.kubernetes.io/is-default-class": "true"});
    }
    v
}

fn claim(name: &str, class: &str, size: &str, source: Option<Value>) -> Value {
    let mut v = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                 "resources": {"requests": {"storage": size}}}});
    if let Some(s) = source {
        v["spec"]["dataSource"] = s;
    }
    v
}

fn snapshot(name: &str, pvc: &str, class: Option<&str>) -> Value {
    let mut v = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name}, "spec": {"source": {"persistentVolumeClaimName": pvc}}});
    if let Some(c) = class {
        v["spec"]["volumeSnapshotClassName"] = json!(c);
    }
    v
}

/// Pairs of files written in lockstep by one process: for each pair, `log` then `data`, each
/// replaced atomically (write a temporary file, rename it) with the round number `n` on its
/// first line and 64 KiB after it. Any instant of the volume therefore has, for every pair,
/// `log == data` or `log == data + 1`; a copy that reads the two files at different moments
/// can break that.
const PAIR_WRITER: &str = r#"trap 'exit 0' TERM
head -c 65536 /dev/zero > /pad
n=0
while true; do
  n=$((n+1))
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do
    d=/data/pairs/$i
    mkdir -p $d
    { echo $n; cat /pad; } > $d/log.tmp && mv $d/log.tmp $d/log
    { echo $n; cat /pad; } > $d/data.tmp && mv $d/data.tmp $d/data
  done
done"#;

fn writer_pod(name: &str, pvc: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", PAIR_WRITER],
                            "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": pvc}}]}})
}

fn round(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let line = bytes.split(|b| *b == b'\n').next()?;
    let n = std::str::from_utf8(line).ok()?.trim().parse().ok()?;
    // A torn file would be shorter: the number, a newline, 64 KiB.
    assert_eq!(
        bytes.len(),
        line.len() + 1 + 65536,
        "{} is complete",
        path.display()
    );
    Some(n)
}

/// (pairs seen, pairs that disagree) in a copy of the writer's volume.
fn check_pairs(root: &Path) -> (usize, Vec<String>) {
    let mut seen = 0;
    let mut bad = Vec::new();
    for i in 1..=16 {
        let d = root.join("pairs").join(i.to_string());
        let (Some(log), Some(data)) = (round(&d.join("log")), round(&d.join("data"))) else {
            continue;
        };
        seen += 1;
        if !(log == data || log == data + 1) {
            bad.push(format!("pair {i}: log {log}, data {data}"));
        }
    }
    (seen, bad)
}

async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(api: &Api<DynamicObject>, name: &str) -> DynamicObject {
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api.clone(), name, |o: Option<&DynamicObject>| {
            o.is_some_and(|o| o.data["status"]["readyToUse"] == true)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("snapshot {name} not readyToUse in 30s"))
    .expect("watch works")
    .expect("snapshot exists")
}

async fn bound(client: &Client, name: &str) -> PersistentVolumeClaim {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    eventually(30, &format!("PVC {name} bound"), || {
        let api = api.clone();
        async move {
            api.get(name)
                .await
                .ok()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        }
    })
    .await
}

async fn events_for(client: &Client, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::all(client.clone());
    api.list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_the_snapshot_api() {
    let (_c, client) = start().await;
    let d = kube::Discovery::new(client.clone())
        .filter(&["snapshot.storage.k8s.io"])
        .run()
        .await
        .expect("discovery");
    let mut kinds: Vec<(String, bool)> = d
        .groups()
        .flat_map(|g| g.recommended_resources())
        .map(|(ar, caps)| {
            (
                ar.kind.clone(),
                caps.scope == kube::discovery::Scope::Namespaced,
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("VolumeSnapshot".to_string(), true),
            ("VolumeSnapshotClass".to_string(), false),
            ("VolumeSnapshotContent".to_string(), false),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_snapshot_api_the_group_is_not_served() {
    let c = Cluster::start(ClusterOptions {
        scenario: Scenario::Empty,
        without_snapshot_api: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let client = client_for(c.kubeconfig()).await;
    let groups = client.list_api_groups().await.expect("/apis");
    assert!(
        !groups
            .groups
            .iter()
            .any(|g| g.name == "snapshot.storage.k8s.io"),
        "{groups:?}"
    );
    assert!(groups.groups.iter().any(|g| g.name == "storage.k8s.io"));
    let not_found = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(
                (s.code, s.reason.as_str(), s.message.as_str()),
                (
                    404,
                    "NotFound",
                    "the server could not find the requested resource"
                )
            );
        }
        other => panic!("expected the apiserver's 404, got {other:?}"),
    };
    not_found(
        client
            .list_api_group_resources("snapshot.storage.k8s.io/v1")
            .await
            .map(drop),
    );
    not_found(
        snapshots(&client, "default")
            .list(&ListParams::default())
            .await
            .map(drop),
    );
    not_found(
        classes(&client)
            .create(
                &PostParams::default(),
                &serde_json::from_value(snapshot_class(
                    "c",
                    "hostpath.csi.kubesim.dev",
                    true,
                    json!({}),
                ))
                .expect("object"),
            )
            .await
            .map(drop),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_a_point_in_time_copy_that_a_claim_restores() {
    let (c, client) = start().await;
    apply_core(
        &client,
        storage_class("standard", "hostpath.csi.kubesim.dev"),
    )
    .await;
    create_dyn(
        &classes(&client),
        snapshot_class("csi-hostpath", "hostpath.csi.kubesim.dev", true, json!({})),
    )
    .await;
    apply_core(&client, claim("data", "standard", "64Mi", None)).await;
    bound(&client, "data").await;
    apply_core(&client, writer_pod("writer", "data")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(pods.clone(), "writer", conditions::is_pod_running()),
    )
    .await
    .expect("writer runs")
    .expect("watch");
    let live = c.volume_path("default", "data");
    eventually(30, "the writer to complete a few rounds", || {
        let live = live.clone();
        async move { round(&live.join("pairs/16/data")).filter(|n| *n >= 3) }
    })
    .await;

    let vs_api = snapshots(&client, "default");
    create_dyn(&vs_api, snapshot("snap-1", "data", None)).await;
    let vs = ready(&vs_api, "snap-1").await;
    let st = &vs.data["status"];
    let content_name = st["boundVolumeSnapshotContentName"]
        .as_str()
        .expect("bound")
        .to_string();
    assert_eq!(
        content_name,
        format!("snapcontent-{}", vs.metadata.uid.clone().unwrap())
    );
    assert_eq!(st["restoreSize"], "64Mi");
    assert!(st["creationTime"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(vs.data["spec"]["volumeSnapshotClassName"], "csi-hostpath");
    let content = contents(&client).get(&content_name).await.expect("content");
    assert_eq!(content.data["spec"]["driver"], "hostpath.csi.kubesim.dev");
    assert_eq!(content.data["spec"]["deletionPolicy"], "Delete");
    assert_eq!(content.data["spec"]["volumeSnapshotRef"]["name"], "snap-1");
    assert_eq!(content.data["status"]["readyToUse"], true);
    assert_eq!(content.data["status"]["restoreSize"], 64 << 20);
    let reasons: Vec<String> = events_for(&client, "snap-1")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    for r in ["CreatingSnapshot", "SnapshotCreated", "SnapshotReady"] {
        assert!(reasons.iter().any(|x| x == r), "{r} in {reasons:?}");
    }

    // Written after the cut: must not be in the snapshot.
    let ap = AttachParams::default().container("app").stderr(false);
    let mut p = pods
        .exec("writer", ["sh", "-c", "echo late > /data/after-cut"], &ap)
        .await
        .expect("exec");
    p.take_status().expect("status").await;

    apply_core(
        &client,
        claim(
            "restored",
            "standard",
            "64Mi",
            Some(
                json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap-1"}),
            ),
        ),
    )
    .await;
    let restored = bound(&client, "restored").await;
    assert_eq!(
        restored
            .spec
            .unwrap()
            .data_source_ref
            .expect("dataSourceRef mirrored")
            .name,
        "snap-1"
    );
    let copy = c.volume_path("default", "restored");
    assert!(
        !copy.join("after-cut").exists(),
        "a write after the cut is in the snapshot"
    );
    assert!(live.join("after-cut").exists());
    let (seen, bad) = check_pairs(&copy);
    assert_eq!(seen, 16, "every pair is in the snapshot");
    assert!(bad.is_empty(), "pairs disagree in a snapshot: {bad:?}");
    // The writer kept going after the cut (it was paused, not stopped).
    let at_cut = round(&copy.join("pairs/16/data")).unwrap();
    eventually(30, "the writer to go on after the cut", || {
        let live = live.clone();
        async move { round(&live.join("pairs/16/data")).filter(|n| *n > at_cut + 1) }
    })
    .await;

    // Clone from the live claim: also point-in-time.
    apply_core(
        &client,
        claim(
            "cloned",
            "standard",
            "64Mi",
            Some(json!({"kind": "PersistentVolumeClaim", "name": "data"})),
        ),
    )
    .await;
    bound(&client, "cloned").await;
    let (seen, bad) = check_pairs(&c.volume_path("default", "cloned"));
    assert_eq!(seen, 16);
    assert!(bad.is_empty(), "pairs disagree in a clone: {bad:?}");

    // deletionPolicy Delete: deleting the snapshot removes its content and the driver's data.
    vs_api
        .delete("snap-1", &DeleteParams::default())
        .await
        .expect("delete snapshot");
    eventually(30, "the snapshot and its content to go", || {
        let (vs_api, capi, n) = (vs_api.clone(), contents(&client), content_name.clone());
        async move {
            let vs_gone = vs_api.get_opt("snap-1").await.expect("get").is_none();
            let c_gone = capi.get_opt(&n).await.expect("get").is_none();
            (vs_gone && c_gone).then_some(())
        }
    })
    .await;
    assert!(!c.state_dir().join("snapshots").join(&content_name).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_failures_read_like_the_real_controllers() {
    let (_c, client) = start().await;
    apply_core(
        &client,
        storage_class("standard", "hostpath.csi.kubesim.dev"),
    )
    .await;
    apply_core(
        &client,
        storage_class("clones", "clone-only.csi.kubesim.dev"),
    )
    .await;
    apply_core(&client, claim("data", "standard", "64Mi", None)).await;
    apply_core(&client, claim("c-data", "clones", "64Mi", None)).await;
    bound(&client, "data").await;
    bound(&client, "c-data").await;
    let vs_api = snapshots(&client, "default");

    // No class for the driver.
    create_dyn(&vs_api, snapshot("no-class", "data", None)).await;
    let err = eventually(10, "an error on no-class", || {
        let api = vs_api.clone();
        async move {
            api.get("no-class").await.ok().and_then(|o| {
                o.data["status"]["error"]["message"]
                    .as_str()
                    .map(str::to_string)
            })
        }
    })
    .await;
    assert_eq!(err, "cannot find default snapshot class");

    // A class that fails every snapshot.
    create_dyn(
        &classes(&client),
        snapshot_class(
            "broken",
            "hostpath.csi.kubesim.dev",
            false,
            json!({"kubesim.dev/fail-snapshots": "backend unavailable"}),
        ),
    )
    .await;
    create_dyn(&vs_api, snapshot("fails", "data", Some("broken"))).await;
    let err = eventually(10, "an error on fails", || {
        let api = vs_api.clone();
        async move {
            api.get("fails").await.ok().and_then(|o| {
                o.data["status"]["error"]["message"]
                    .as_str()
                    .map(str::to_string)
            })
        }
    })
    .await;
    assert!(err.contains("backend unavailable"), "{err}");
    let vs = vs_api.get("fails").await.unwrap();
    assert_eq!(vs.data["status"]["readyToUse"], false);
    assert!(vs.data["status"]["creationTime"].is_null());

    // A slow class: cut at once, readyToUse later; a claim from it waits until then.
    create_dyn(
        &classes(&client),
        snapshot_class(
            "slow",
            "hostpath.csi.kubesim.dev",
            false,
            json!({"kubesim.dev/ready-after-seconds": "3"}),
        ),
    )
    .await;
    create_dyn(&vs_api, snapshot("slow-1", "data", Some("slow"))).await;
    let cut = eventually(10, "slow-1 cut", || {
        let api = vs_api.clone();
        async move {
            api.get("slow-1")
                .await
                .ok()
                .filter(|o| o.data["status"]["creationTime"].is_string())
        }
    })
    .await;
    assert_eq!(cut.data["status"]["readyToUse"], false);
    apply_core(
        &client,
        claim(
            "from-slow",
            "standard",
            "64Mi",
            Some(
                json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "slow-1"}),
            ),
        ),
    )
    .await;
    ready(&vs_api, "slow-1").await;
    bound(&client, "from-slow").await;
    let waited = events_for(&client, "from-slow").await;
    assert!(
        waited
            .iter()
            .any(|(r, m)| r == "ProvisioningFailed" && m.contains("snapshot slow-1 is not Ready")),
        "{waited:?}"
    );

    // Too small for the snapshot's restoreSize.
    apply_core(
        &client,
        claim(
            "too-small",
            "standard",
            "32Mi",
            Some(
                json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "slow-1"}),
            ),
        ),
    )
    .await;
    let ev = eventually(10, "too-small to fail", || {
        let client = client.clone();
        async move {
            events_for(&client, "too-small")
                .await
                .into_iter()
                .find(|(r, _)| r == "ProvisioningFailed")
        }
    })
    .await;
    assert!(
        ev.1.contains("requested volume size 33554432 is less than the size 67108864 for the source snapshot slow-1"),
        "{ev:?}"
    );

    // A snapshot of another driver's class restored into this driver's class.
    apply_core(
        &client,
        claim(
            "wrong-driver",
            "clones",
            "64Mi",
            Some(
                json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "slow-1"}),
            ),
        ),
    )
    .await;
    let ev = eventually(10, "wrong-driver to fail", || {
        let client = client.clone();
        async move {
            events_for(&client, "wrong-driver")
                .await
                .into_iter()
                .find(|(r, _)| r == "ProvisioningFailed")
        }
    })
    .await;
    assert!(ev.1.contains("CREATE_DELETE_SNAPSHOT"), "{ev:?}");

    // A clone-only driver: a snapshot of its volume is never cut (no csi-snapshotter), but a
    // clone works.
    create_dyn(
        &classes(&client),
        snapshot_class("clone-only", "clone-only.csi.kubesim.dev", true, json!({})),
    )
    .await;
    create_dyn(&vs_api, snapshot("never", "c-data", None)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let never = vs_api.get("never").await.unwrap();
    assert!(never.data["status"]["boundVolumeSnapshotContentName"].is_string());
    assert!(never.data["status"]["creationTime"].is_null());
    assert_eq!(never.data["status"]["readyToUse"], false);
    apply_core(
        &client,
        claim(
            "c-clone",
            "clones",
            "64Mi",
            Some(json!({"kind": "PersistentVolumeClaim", "name": "c-data"})),
        ),
    )
    .await;
    bound(&client, "c-clone").await;

    // Cloning a PVC of another driver fails.
    apply_core(
        &client,
        claim(
            "cross-clone",
            "clones",
            "64Mi",
            Some(json!({"kind": "PersistentVolumeClaim", "name": "data"})),
        ),
    )
    .await;
    let ev = eventually(10, "cross-clone to fail", || {
        let client = client.clone();
        async move {
            events_for(&client, "cross-clone")
                .await
                .into_iter()
                .find(|(r, _)| r == "ProvisioningFailed")
        }
    })
    .await;
    assert!(
        ev.1.contains("claim in dataSource not bound or invalid"),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_keeps_the_content_and_rbac_applies() {
    let (c, client) = start().await;
    apply_core(
        &client,
        storage_class("standard", "hostpath.csi.kubesim.dev"),
    )
    .await;
    let mut class = snapshot_class("keep", "hostpath.csi.kubesim.dev", true, json!({}));
    class["deletionPolicy"] = json!("Retain");
    create_dyn(&classes(&client), class).await;
    apply_core(&client, claim("data", "standard", "64Mi", None)).await;
    bound(&client, "data").await;
    std::fs::write(c.volume_path("default", "data").join("f"), b"x").unwrap();
    let vs_api = snapshots(&client, "default");
    create_dyn(&vs_api, snapshot("s", "data", None)).await;
    let vs = ready(&vs_api, "s").await;
    let content = vs.data["status"]["boundVolumeSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_string();
    vs_api.delete("s", &DeleteParams::default()).await.unwrap();
    eventually(10, "s to go", || {
        let api = vs_api.clone();
        async move { api.get_opt("s").await.unwrap().is_none().then_some(()) }
    })
    .await;
    let kept = contents(&client)
        .get(&content)
        .await
        .expect("retained content");
    assert_eq!(kept.data["spec"]["deletionPolicy"], "Retain");
    assert!(c
        .state_dir()
        .join("snapshots")
        .join(&content)
        .join("f")
        .exists());

    // A user who may only read pods cannot create snapshots: the real RBAC error.
    let kc = c
        .add_user(
            "viewer",
            vec![kubesim::rule(&["get", "list"], &["pods"], &[])],
        )
        .unwrap();
    let viewer = client_for(&kc).await;
    let err = snapshots(&viewer, "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(snapshot("x", "data", None)).unwrap(),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert!(
                s.message
                    .contains("volumesnapshots.snapshot.storage.k8s.io"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

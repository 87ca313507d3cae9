//! Many volumes in one `create`: 40 PVCs on 3 nodes with `--parallel`, and no node ever
//! running more helper pods than `--max-per-node`, as a watch on the pods sees it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kubesim::{Cluster, ClusterOptions, Scenario};
use serde_json::json;

const NS: &str = "fleet";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

async fn client(c: &Cluster) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(c.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// Pods per node seen by a watch, and the most any node ever had at once. A helper pod counts
/// from the moment it is bound to a node until it is gone (a Terminating pod still counts: its
/// processes may still be reading the volume).
#[derive(Default)]
struct Peak {
    on: BTreeMap<String, String>,
    max: BTreeMap<String, usize>,
}

impl Peak {
    fn record(&mut self) {
        let mut now: BTreeMap<&str, usize> = BTreeMap::new();
        for node in self.on.values() {
            *now.entry(node).or_default() += 1;
        }
        for (node, n) in now {
            let m = self.max.entry(node.to_string()).or_default();
            *m = (*m).max(n);
        }
    }
}

fn watch_helpers(client: kube::Client) -> (Arc<Mutex<Peak>>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(Mutex::new(Peak::default()));
    let p = peak.clone();
    let api: Api<Pod> = Api::namespaced(client, NS);
    let cfg = watcher::Config::default().labels("app.kubernetes.io/managed-by=kubectl-pvbackup");
    let task = tokio::spawn(async move {
        let mut events = watcher(api, cfg).boxed();
        while let Some(e) = events.next().await {
            let mut peak = p.lock().unwrap();
            match e {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    if let Some(node) = pod.spec.and_then(|s| s.node_name) {
                        peak.on.insert(name, node);
                    }
                }
                Ok(watcher::Event::Delete(pod)) => {
                    peak.on.remove(&pod.metadata.name.unwrap_or_default());
                }
                _ => {}
            }
            peak.record();
        }
    });
    (peak, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_pvcs_on_three_nodes_back_up_in_one_run_within_the_per_node_cap() {
    let cluster = Cluster::start(ClusterOptions {
        scenario: Scenario::Empty,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = client(&cluster).await;
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &from_json(json!({"metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "hostpath.csi.kubesim.dev", "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete"})))
        .await
        .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": NS}})),
        )
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    // 30 ReadWriteOnce volumes mounted 5 each by 6 pods, 2 pods per node: their helpers must
    // run on that node. 10 more nobody mounts: their helpers may go anywhere.
    let mut names = Vec::new();
    for i in 0..40 {
        let name = format!("vol-{i:02}");
        pvcs.create(&PostParams::default(), &from_json(json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Mi"}}}})))
            .await
            .unwrap();
        names.push(name);
    }
    for p in 0..6 {
        let node = NODES[p % 3];
        let claims = &names[p * 5..p * 5 + 5];
        let volumes: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        let mounts: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": c, "mountPath": format!("/data/{c}")}))
            .collect();
        pods.create(&PostParams::default(), &from_json(json!({"metadata": {"name": format!("app-{p}")}, "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "workload", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"], "volumeMounts": mounts}],
            "volumes": volumes}})))
            .await
            .unwrap();
    }
    cluster
        .wait_for_pods_running(Duration::from_secs(90))
        .await
        .unwrap();
    // 3 MiB of noise per volume in 12 files, so that streams overlap.
    let mut seed = 0x2545f4914f6cdd1du64;
    for name in &names {
        let dir = cluster.volume_path(NS, name);
        for f in 0..12 {
            let mut buf = vec![0u8; 256 << 10];
            for chunk in buf.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(dir.join(format!("f{f:02}.bin")), &buf).unwrap();
        }
    }

    let (peak, watch) = watch_helpers(client.clone());
    // Let the watch list what exists (nothing) before the run starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dest = tempfile::tempdir().unwrap();
    let run = plugin(
        &cluster,
        &[
            "create",
            "-n",
            NS,
            "--all-pvcs",
            "--snapshot",
            "never",
            "--to",
            dest.path().to_str().unwrap(),
            "--parallel",
            "8",
            "--max-per-node",
            "2",
            "-o",
            "json",
        ],
    )
    .await;
    // The run deletes its helpers and waits until they are gone; give the watch a moment to
    // see the last deletions.
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.abort();
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let out = json(&run);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 40, "{results:#?}");
    for r in results {
        assert_eq!(r["status"], "ok", "{r:#?}");
        assert_eq!(r["files"], 12, "{r:#?}");
        let verify = plugin(&cluster, &["verify", r["manifest"].as_str().unwrap()]).await;
        assert_eq!(
            verify.code, 0,
            "verify {}: {}{}",
            r["pvc"], verify.stdout, verify.stderr
        );
    }
    let peak = peak.lock().unwrap();
    assert!(
        peak.on.is_empty(),
        "helper pods left on nodes: {:?}",
        peak.on
    );
    assert!(
        peak.max.values().all(|&n| n <= 2),
        "a node ran more than 2 helpers at once: {:?}",
        peak.max
    );
    // The cap was reached, and all three nodes worked: the run was spread, not serial.
    assert_eq!(
        peak.max.keys().map(String::as_str).collect::<Vec<_>>(),
        NODES,
        "{:?}",
        peak.max
    );
    assert!(peak.max.values().any(|&n| n == 2), "{:?}", peak.max);
    assert!(helper_pods(&cluster).is_empty());
}

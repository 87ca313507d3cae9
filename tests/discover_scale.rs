//! `discover -A` over 5,000 pods on hollow kubesim nodes finds exactly the PVCs of the mesh
//! pods, each with its mesh, and nothing from the namespaces without a mesh. (How long it takes
//! is measured by `benches/many_volumes.rs`, not here.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use kubesim::{Cluster, ClusterOptions};

const PODS: usize = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_all_namespaces_over_5000_pods_finds_exactly_the_mesh_volumes() {
    let cluster = Cluster::start(ClusterOptions {
        hollow_nodes: 10,
        ..Default::default()
    })
    .await
    .expect("kubesim starts");
    let objects = kubesim::scenario::fleet_objects(PODS);
    // What discover must find, read off the objects: the mesh of each namespace (Istio by
    // label, Linkerd by annotation), then every PVC a pod there mounts.
    let mesh_of: BTreeMap<String, &str> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .filter_map(|n| {
            let md = &n["metadata"];
            let mesh = if md["labels"]["istio-injection"] == "enabled" {
                "istio"
            } else if md["annotations"]["linkerd.io/inject"] == "enabled" {
                "linkerd"
            } else {
                return None;
            };
            Some((md["name"].as_str()?.to_string(), mesh))
        })
        .collect();
    let pods = objects.iter().filter(|o| o["kind"] == "Pod").count();
    let want: BTreeSet<(String, String, String, String)> = objects
        .iter()
        .filter(|o| o["kind"] == "Pod")
        .flat_map(|p| {
            let ns = p["metadata"]["namespace"].as_str().unwrap().to_string();
            let pod = p["metadata"]["name"].as_str().unwrap().to_string();
            let mesh = mesh_of.get(&ns).map(|m| m.to_string());
            p["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |v| {
                    let claim = v["persistentVolumeClaim"]["claimName"].as_str()?;
                    Some((ns.clone(), pod.clone(), claim.to_string(), mesh.clone()?))
                })
        })
        .collect();
    assert_eq!(pods, PODS);
    assert_eq!(mesh_of.len(), 40, "30 Istio and 10 Linkerd namespaces");
    assert_eq!(want.len(), 800, "one mesh pod in five has a PVC");

    cluster.apply(objects).expect("the fleet is created");
    cluster
        .wait_for_pods_running(Duration::from_secs(300))
        .await
        .expect("every fleet pod runs");

    let run = plugin(&cluster, &["discover", "-A", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rows = out["items"].as_array().unwrap();
    let got: BTreeSet<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("namespace"), s("pod"), s("pvc"), s("mesh"))
        })
        .collect();
    assert_eq!(rows.len(), got.len(), "no row twice");
    assert_eq!(got, want);
    assert!(
        rows.iter()
            .all(|r| r["phase"] == "Running" && r["pvc_exists"] == true),
        "every row is a running pod with its PVC"
    );
    cluster.shutdown().await;
}

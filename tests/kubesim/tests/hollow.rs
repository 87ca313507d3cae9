//! Hollow nodes (for scale tests) and node-field affinity with NotIn, through kube-rs.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use kubesim::{Cluster, ClusterOptions};
use serde_json::json;

async fn client(c: &Cluster) -> Client {
    let kc = kube::config::Kubeconfig::read_from(c.kubeconfig()).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

fn pod(name: &str, spec_extra: serde_json::Value) -> Pod {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["true"]}],
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"]}],
        },
    });
    for (k, val) in spec_extra.as_object().unwrap() {
        v["spec"][k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hollow_node_reports_its_pods_running_without_running_them() {
    let c = Cluster::start(ClusterOptions {
        hollow_nodes: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let api: Api<Pod> = Api::default_namespaced(client(&c).await);
    api.create(
        &PostParams::default(),
        &pod("h", json!({"nodeSelector": {"kubesim.dev/hollow": "true"}})),
    )
    .await
    .unwrap();
    let p = tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(api.clone(), "h", conditions::is_pod_running()),
    )
    .await
    .expect("running within 20 s")
    .unwrap()
    .unwrap();
    let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
    assert!(node.starts_with("hollow-"), "{node}");
    let st = p.status.unwrap();
    let main = &st.container_statuses.unwrap()[0];
    assert!(main.ready && main.started == Some(true), "{main:?}");
    assert!(main.state.as_ref().unwrap().running.is_some());
    let init = &st.init_container_statuses.unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
    assert!(st
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));
    assert!(st.pod_ip.is_some() && st.host_ip.is_some());

    // Nothing runs there: exec says so.
    let err = api
        .exec("h", ["true"], &AttachParams::default().stderr(false))
        .await
        .err()
        .expect("exec on a hollow pod is refused");
    assert!(
        err.to_string().contains("hollow node") || format!("{err:?}").contains("hollow node"),
        "{err:?}"
    );

    // Deleted, it is gone at once, grace period or not.
    api.delete("h", &DeleteParams::default()).await.unwrap();
    let gone = tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(
            api.clone(),
            "h",
            conditions::is_deleted(&p.metadata.uid.unwrap()),
        ),
    )
    .await;
    assert!(gone.is_ok(), "a hollow pod's fake containers stop at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_field_not_in_keeps_a_pod_off_the_named_nodes() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let api: Api<Pod> = Api::default_namespaced(client(&c).await);
    let not_in = |nodes: &[&str]| json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": nodes.iter().map(|n| json!({"key": "metadata.name", "operator": "NotIn", "values": [n]})).collect::<Vec<_>>()}]}}}});
    // node-3 is tainted, so NotIn node-1 leaves node-2 only.
    api.create(&PostParams::default(), &pod("a", not_in(&["node-1"])))
        .await
        .unwrap();
    let p = tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(api.clone(), "a", conditions::is_pod_running()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("node-2"));
    // Both untainted nodes excluded: unschedulable, with the scheduler's reason.
    api.create(
        &PostParams::default(),
        &pod("b", not_in(&["node-1", "node-2"])),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = api.get("b").await.unwrap();
    assert_eq!(b.spec.as_ref().unwrap().node_name, None);
    let msg = b.status.unwrap().conditions.unwrap()[0]
        .message
        .clone()
        .unwrap();
    assert!(msg.contains("didn't match Pod's node affinity"), "{msg}");
    // Two values in one node-field requirement: refused as the apiserver refuses it.
    let two: Pod = {
        let mut p = pod("c", json!({}));
        let mut v = serde_json::to_value(&p).unwrap();
        v["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["node-1", "node-2"]}]}]}}});
        p = serde_json::from_value(v).unwrap();
        p
    };
    let err = api.create(&PostParams::default(), &two).await.unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err:?}")
    };
    assert_eq!(s.code, 422);
    assert!(
        s.message.contains(
            "must be only one value when `operator` is 'In' or 'NotIn' for node field selector"
        ),
        "{}",
        s.message
    );
}

//! Hollow nodes (for scale tests), paged lists of a big fleet, and node-field affinity with
//! NotIn, through kube-rs.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, DeleteParams, ListParams, PostParams};
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

/// A list of a big collection comes in consistent pages: `limit` bounds each, `continue`
/// resumes at the first page's resourceVersion even after a change, `remainingItemCount` counts
/// what is left (without selectors), a selector may shorten a page, `resourceVersion=0` is
/// served whole (the watch cache), and a token whose snapshot is gone gets 410 Expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_is_listed_in_consistent_pages() {
    let c = Cluster::start(ClusterOptions {
        hollow_nodes: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    c.apply(kubesim::scenario::fleet_objects(1200)).unwrap();
    c.wait_for_pods_running(Duration::from_secs(120))
        .await
        .unwrap();
    let kube = client(&c).await;
    let api: Api<Pod> = Api::all(kube.clone());
    let key = |p: &Pod| {
        format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap(),
            p.metadata.name.as_deref().unwrap()
        )
    };

    let first = api.list(&ListParams::default().limit(500)).await.unwrap();
    assert_eq!(first.items.len(), 500);
    assert_eq!(first.metadata.remaining_item_count, Some(700));
    let rv = first.metadata.resource_version.clone().unwrap();
    // A pod the later pages hold goes away before they are read: the list still shows it.
    let late = "app-023";
    Api::<Pod>::namespaced(kube.clone(), "team-49")
        .delete(late, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let mut keys: Vec<String> = first.items.iter().map(key).collect();
    let mut token = first.metadata.continue_.clone();
    let mut pages = 1;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(500).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        keys.extend(page.items.iter().map(key));
        token = page.metadata.continue_;
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(keys.len(), 1200, "every pod once");
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, keys, "in key order, no repeats");
    assert!(keys.contains(&format!("team-49/{late}")));
    let now = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(now.items.len(), 1199);
    assert!(now.metadata.continue_.is_none());

    // A selector: pages of at most `limit`, no count.
    let one_ns = api
        .list(
            &ListParams::default()
                .fields("metadata.namespace=team-01")
                .limit(10),
        )
        .await
        .unwrap();
    assert_eq!(one_ns.items.len(), 10);
    assert!(one_ns.items.iter().all(|p| key(p).starts_with("team-01/")));
    assert!(one_ns.metadata.continue_.is_some());
    assert_eq!(one_ns.metadata.remaining_item_count, None);

    // resourceVersion=0: from the watch cache, whole (kube-rs leaves rv=0 out when it pages,
    // so the request is spelled out).
    let cached: serde_json::Value = serde_json::from_str(
        &kube
            .request_text(
                hyper::Request::get("/api/v1/pods?limit=500&resourceVersion=0")
                    .body(Vec::new())
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cached["items"].as_array().map(Vec::len), Some(1199));
    assert!(cached["metadata"]["continue"].is_null());

    // A token whose snapshot is not kept (rv 1 was never listed): 410 Expired.
    let stale = kubesim::paging::encode("team-10/app-000\u{0}", 1);
    let e = api
        .list(&ListParams::default().limit(500).continue_token(&stale))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(
        (s.code, s.reason.as_str()),
        (410, "Expired"),
        "{}",
        s.message
    );
    // The token such a 410 carries (rv -1) continues from the current state.
    let rest = api
        .list(
            &ListParams::default()
                .limit(5000)
                .continue_token(&kubesim::paging::encode("team-10/app-000\u{0}", -1)),
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items.first().map(key).as_deref(),
        Some("team-10/app-001")
    );
    assert_eq!(rest.items.len(), 1199 - 10 * 24 - 1);
}

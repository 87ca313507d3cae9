//! `create` against kubesim: what a user checks after a backup, and after one that went wrong.

mod common;

use std::time::Duration;

use common::*;
use kubesim::FaultRequest;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_pvc_backs_up_to_an_identical_tree() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let run = plugin(
        &cluster,
        &[
            "create",
            "-A",
            "--all-pvcs",
            "--to",
            dest.path().to_str().unwrap(),
            "-o",
            "json",
            "--parallel",
            "3",
        ],
    )
    .await;
    let out = json(&run);
    let results = out["results"].as_array().unwrap();
    // payments/keys is ReadWriteOncePod and in use by vault-0: refused (exit 4), the rest succeed.
    assert_eq!(run.code, 4, "stderr: {}", run.stderr);
    let refused: Vec<&Value> = results.iter().filter(|r| r["status"] != "ok").collect();
    assert_eq!(refused.len(), 1, "{results:#?}");
    assert_eq!(refused[0]["pvc"], "keys");
    assert!(refused[0]["error"]
        .as_str()
        .unwrap()
        .contains("ReadWriteOncePod"));
    assert_eq!(results.len(), 9, "every demo PVC is a target");
    for r in results.iter().filter(|r| r["status"] == "ok") {
        let (ns, pvc) = (r["namespace"].as_str().unwrap(), r["pvc"].as_str().unwrap());
        let archive = std::path::PathBuf::from(r["archive"].as_str().unwrap());
        let unpacked = tempfile::tempdir().unwrap();
        untar(&archive, unpacked.path());
        let volume = cluster.volume_path(ns, pvc);
        let (want, got) = (snapshot(&volume), snapshot(unpacked.path()));
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "{ns}/{pvc}: paths differ"
        );
        for (path, node) in &want {
            assert_eq!(node, &got[path], "{ns}/{pvc}: {} differs", path.display());
        }
        assert_eq!(
            hardlinks(&volume),
            hardlinks(unpacked.path()),
            "{ns}/{pvc}: hard links differ"
        );
        // The manifest's checksums are the ones `verify` recomputes.
        let verify = plugin(&cluster, &["verify", r["manifest"].as_str().unwrap()]).await;
        assert_eq!(
            verify.code, 0,
            "verify {ns}/{pvc}: {}{}",
            verify.stdout, verify.stderr
        );
    }
    assert!(
        helper_pods(&cluster).is_empty(),
        "helper pods left: {:?}",
        helper_pods(&cluster)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_leaves_nothing_that_looks_complete() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    // Every exec stream dies after 1 MiB, and no retry is allowed.
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 1 << 20,
        count: 0,
    });
    let run = plugin(
        &cluster,
        &[
            "create",
            "data-orders-db-0",
            "-n",
            "shop",
            "--to",
            dest.path().to_str().unwrap(),
            "--retries",
            "0",
        ],
    )
    .await;
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        files_under(dest.path()).is_empty(),
        "left at DEST: {:?}",
        files_under(dest.path())
    );
    assert!(
        helper_pods(&cluster).is_empty(),
        "helper pods left: {:?}",
        helper_pods(&cluster)
    );
    let listed = plugin(
        &cluster,
        &["list", dest.path().to_str().unwrap(), "-o", "json"],
    )
    .await;
    assert!(json(&listed)["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["restorable"] == false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_crash_is_retried_and_the_backup_is_whole() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    // The size estimate (`du`) is the first exec; its output is tiny, so the fault hits tar.
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 4 << 20,
        count: 1,
    });
    let run = plugin(
        &cluster,
        &[
            "create",
            "data-orders-db-0",
            "-n",
            "shop",
            "--to",
            dest.path().to_str().unwrap(),
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let r = &json(&run)["results"][0];
    assert_eq!(
        r["attempts"], 2,
        "the first attempt must have been killed: {r}"
    );
    let verify = plugin(&cluster, &["verify", r["manifest"].as_str().unwrap()]).await;
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_stream_fails_cleanly_without_retries() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    // Slow the stream so the outage lands in the middle of it (58 MiB at 8 MiB/s ≈ 7 s).
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 8 << 20,
    });
    let run = spawn_plugin(
        &cluster,
        &[
            "create",
            "data-orders-db-0",
            "-n",
            "shop",
            "--to",
            dest.path().to_str().unwrap(),
            "--retries",
            "0",
        ],
    );
    // Wait until tar is streaming (the helper pod is running), then cut the API off for 3 s.
    wait_for_running_helper(&cluster, "shop").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.fault(FaultRequest::Outage { seconds: 3.0 });
    let run = run.await.unwrap();
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        files_under(dest.path()).is_empty(),
        "left at DEST: {:?}",
        files_under(dest.path())
    );
    // Deletion is retried through the outage: nothing is left behind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !helper_pods(&cluster).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "helper pods left: {:?}",
            helper_pods(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_retry_budget_ends_in_success() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 16 << 20,
    });
    let run = spawn_plugin(
        &cluster,
        &[
            "create",
            "data-orders-db-0",
            "-n",
            "shop",
            "--to",
            dest.path().to_str().unwrap(),
            "--retries",
            "3",
            "-o",
            "json",
        ],
    );
    outage_while_streaming(&cluster, "shop", Duration::from_millis(1000)).await;
    let run = run.await.unwrap();
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let r = &json(&run)["results"][0];
    assert!(r["attempts"].as_u64().unwrap() >= 2, "{r}");
    let unpacked = tempfile::tempdir().unwrap();
    untar(
        std::path::Path::new(r["archive"].as_str().unwrap()),
        unpacked.path(),
    );
    assert_eq!(
        snapshot(&cluster.volume_path("shop", "data-orders-db-0")),
        snapshot(unpacked.path())
    );
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pod_create_permission_nothing_is_created() {
    let cluster = demo().await;
    let viewer = cluster
        .add_user(
            "viewer",
            vec![kubesim::rule(
                &["get", "list", "watch"],
                &[
                    "pods",
                    "persistentvolumeclaims",
                    "namespaces",
                    "nodes",
                    "events",
                ],
                &[],
            )],
        )
        .unwrap();
    let dest = tempfile::tempdir().unwrap();
    let run = plugin_with(
        &viewer,
        &[
            "create",
            "-n",
            "shop",
            "--to",
            dest.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("missing permissions"), "{}", run.stderr);
    assert!(
        run.stderr.contains("create pods (namespace shop)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("create pods/exec (namespace shop)"),
        "{}",
        run.stderr
    );
    assert!(helper_pods(&cluster).is_empty());
    assert!(files_under(dest.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_namespace_gets_an_explanation() {
    let cluster = demo().await;
    let client = kube_client(&cluster).await;
    use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
    use kube::api::{Api, PostParams};
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "locked", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Mi"}}}})).unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "locked")
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    let dest = tempfile::tempdir().unwrap();
    let run = plugin(
        &cluster,
        &[
            "create",
            "data",
            "-n",
            "locked",
            "--to",
            dest.path().to_str().unwrap(),
            "--all-pvcs",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("restricted"), "{}", run.stderr);
    assert!(
        run.stderr.contains("--run-as-user"),
        "the error must name the way out: {}",
        run.stderr
    );
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_pods_get_no_proxy_mount_read_only_and_land_on_the_attached_node() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, PostParams};
    use kube::runtime::{conditions::is_pod_running, wait::await_condition};
    use kubectl_pvbackup::helper_pod::{build_helper_pod, HelperPodRequest, Purpose};
    let cluster = demo().await;
    let client = kube_client(&cluster).await;
    for (ns, pvc, owner) in [
        ("shop", "data-orders-db-0", "orders-db-0"),
        ("payments", "ledger-data", "ledger-0"),
        ("inventory", "stock-db", "stock-db-0"),
    ] {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let owner_node = api
            .get(owner)
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .unwrap();
        let mut req = HelperPodRequest::new(ns, pvc, "test-run-1", Purpose::Backup);
        // What `create` does for an attached RWO volume (placement pins to the node).
        req.node = Some(owner_node.clone());
        let pod = build_helper_pod(&req);
        let name = pod.metadata.name.clone().unwrap();
        api.create(&PostParams::default(), &pod).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, is_pod_running()),
        )
        .await
        .expect("helper runs")
        .unwrap();
        let live = api.get(&name).await.unwrap();
        let spec = live.spec.unwrap();
        let names: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
        assert_eq!(
            names,
            vec!["pvbackup".to_string()],
            "{ns}: a proxy was injected"
        );
        assert!(
            spec.init_containers.unwrap_or_default().is_empty(),
            "{ns}: init containers were injected"
        );
        assert_eq!(
            spec.node_name.as_deref(),
            Some(owner_node.as_str()),
            "{ns}: not on the attached node"
        );
        // The kernel enforces the read-only mount: a write inside the helper fails.
        let host_file_count = files_under(&cluster.volume_path(ns, pvc)).len();
        let out = std::process::Command::new(kubectl("1.33"))
            .args([
                "exec",
                "-n",
                ns,
                &name,
                "-c",
                "pvbackup",
                "--",
                "sh",
                "-c",
                "touch /data/x",
            ])
            .env("KUBECONFIG", cluster.kubeconfig())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            files_under(&cluster.volume_path(ns, pvc)).len(),
            host_file_count
        );
        api.delete(&name, &Default::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_creates_nothing_and_shows_the_pod() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let run = plugin(
        &cluster,
        &[
            "create",
            "-n",
            "shop",
            "--to",
            dest.path().to_str().unwrap(),
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = json(&run);
    let pod = &out["targets"][0]["helperPod"];
    assert_eq!(
        pod["metadata"]["annotations"]["sidecar.istio.io/inject"],
        "false"
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"],
        true
    );
    assert!(helper_pods(&cluster).is_empty());
    assert!(files_under(dest.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_usage_error() {
    let cluster = demo().await;
    let r = plugin(&cluster, &["create", "--to", "ftp://x/y", "-n", "shop"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("ftp://"), "{}", r.stderr);
    let r = plugin(
        &cluster,
        &["create", "--to", "/tmp/x", "--mesh", "envoyish"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = plugin(
        &cluster,
        &[
            "create",
            "--to",
            "/tmp/x",
            "--compression",
            "gzip",
            "--level",
            "42",
        ],
    )
    .await;
    assert_eq!(r.code, 2);
    let r = plugin(
        &cluster,
        &["create", "no-such-pvc", "-n", "shop", "--to", "/tmp/x"],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no-such-pvc") && r.stderr.contains("data-orders-db-0"),
        "the error lists what exists: {}",
        r.stderr
    );
}

pub fn kubectl(version: &str) -> std::path::PathBuf {
    let dir =
        std::env::var("KUBECTL_DIR").unwrap_or_else(|_| "/usr/lib/google-cloud-sdk/bin".into());
    std::path::PathBuf::from(dir).join(format!("kubectl.{version}"))
}

async fn kube_client(cluster: &kubesim::Cluster) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_cleans_up_and_exits_130() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 4 << 20,
    });
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"))
        .args([
            "create",
            "data-orders-db-0",
            "-n",
            "shop",
            "--to",
            dest.path().to_str().unwrap(),
        ])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_running_helper(&cluster, "shop").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // SAFETY: the pid is our own running child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        files_under(dest.path()).is_empty(),
        "left at DEST: {:?}",
        files_under(dest.path())
    );
    assert!(
        helper_pods(&cluster).is_empty(),
        "helper pods left: {:?}",
        helper_pods(&cluster)
    );
}

//! `create --snapshot`, live-change detection, `--require-consistent`, hooks, the clone
//! fallback, a cluster without the snapshot API, `cleanup` of what a killed run left, and
//! `restore --in-place`'s snapshot, against kubesim, with a workload that keeps writing pairs
//! of files that must agree.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubesim::{Cluster, ClusterOptions, FaultRequest, Scenario};
use serde_json::{json, Value};

/// Pairs of files written in lockstep by one process: for each pair, `log` then `data`, each
/// replaced atomically (temporary file, then rename) with the round number `n` on its first
/// line and 64 KiB after it. At any instant every pair has `log == data` or `log == data + 1`.
/// The fault benchmark's paired-writer row runs the same script.
const PAIR_WRITER: &str = include_str!("fixtures/pair-writer.sh");

async fn client(c: &Cluster) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(c.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn snapshot_classes(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass"),
            "volumesnapshotclasses",
        ),
    )
}

const HOSTPATH: &str = "hostpath.csi.kubesim.dev";
const CLONE_ONLY: &str = "clone-only.csi.kubesim.dev";

/// A cluster with a `standard` class of the hostpath driver, a default VolumeSnapshotClass
/// for it (with `params`, unless None: then no class at all), a 64 MiB RWO PVC `data` and the
/// pair writer in pod `writer` (container `app`, next to an `istio-proxy` sidecar that does
/// not mount the volume), running and past its third round.
async fn workload(params: Option<Value>, annotations: Value) -> (Cluster, kube::Client) {
    workload_on(HOSTPATH, true, params, annotations).await
}

/// [`workload`] with `standard` provisioned by `driver` (the VolumeSnapshotClass stays the
/// hostpath driver's), on a cluster that serves the snapshot API or not.
async fn workload_on(
    driver: &str,
    snapshot_api: bool,
    params: Option<Value>,
    annotations: Value,
) -> (Cluster, kube::Client) {
    let c = Cluster::start(ClusterOptions {
        scenario: Scenario::Empty,
        without_snapshot_api: !snapshot_api,
        ..Default::default()
    })
    .await
    .unwrap();
    let k = client(&c).await;
    let sc: k8s_openapi::api::storage::v1::StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "standard"}, "provisioner": driver,
        "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}))
    .unwrap();
    Api::all(k.clone())
        .create(&PostParams::default(), &sc)
        .await
        .unwrap();
    if let Some(params) = params {
        let class: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": "csi-hostpath", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
            "driver": "hostpath.csi.kubesim.dev", "deletionPolicy": "Delete", "parameters": params}))
        .unwrap();
        snapshot_classes(&k)
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
    }
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                 "resources": {"requests": {"storage": "64Mi"}}}}))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(k.clone(), "default")
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "writer", "annotations": annotations},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.22.0", "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]},
                {"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", PAIR_WRITER],
                 "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}))
    .unwrap();
    Api::<Pod>::namespaced(k.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    c.wait_for_pods_running(Duration::from_secs(60))
        .await
        .unwrap();
    let live = c.volume_path("default", "data");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while round(&live.join("pairs/16/data")).is_none_or(|n| n < 3) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer did not get going"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (c, k)
}

fn round(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let line = bytes.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

/// Pairs that disagree in an unpacked copy, and how many pairs it has.
fn inconsistent_pairs(root: &Path) -> (usize, Vec<String>) {
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

fn names(c: &Cluster, plural: &str) -> Vec<String> {
    c.objects(plural, None)
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Nothing of the run is left: no snapshot, no content, no temporary PVC, no helper pod.
async fn assert_nothing_left(c: &Cluster) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = names(c, "volumesnapshots")
            .into_iter()
            .chain(names(c, "volumesnapshotcontents"))
            .chain(
                names(c, "persistentvolumeclaims")
                    .into_iter()
                    .filter(|n| n != "data"),
            )
            .chain(helper_pods(c))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `create data -n default --to DEST -o json EXTRA…`, the backup every test here makes.
async fn create_json(c: &Cluster, dest: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "create",
        "data",
        "-n",
        "default",
        "--to",
        dest.to_str().unwrap(),
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    plugin(c, &args).await
}

fn result(run: &Run) -> Value {
    let out = json(run);
    out["results"][0].clone()
}

fn events(c: &Cluster, reason: &str) -> Vec<Value> {
    c.objects("events", None)
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

fn hook_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.volume_path("default", "data").join("hooks.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_backup_has_only_consistent_pairs_and_leaves_nothing_behind() {
    let (c, _) = workload(Some(json!({})), json!({})).await;
    let dest = tempfile::tempdir().unwrap();
    let run = create_json(&c, dest.path(), &["--snapshot", "always"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = result(&run);
    let cons = &r["consistency"];
    assert_eq!(cons["method"], "snapshot", "{r:#}");
    assert_eq!(cons["snapshotClass"], "csi-hostpath");
    assert!(cons["snapshot"].as_str().unwrap().starts_with("data-pvb-"));
    assert!(cons["cutTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(cons["changedFileCount"], 0);
    // The manifest records it; inspect shows it.
    let header: Value =
        serde_json::from_slice(&std::fs::read(r["manifest"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(header["consistency"]["method"], "snapshot", "{header:#}");
    assert_eq!(header["consistency"]["snapshot"]["name"], cons["snapshot"]);
    assert_eq!(header["consistency"]["snapshot"]["class"], "csi-hostpath");
    assert!(header["consistency"]["snapshot"]["cut_time"].is_string());
    let shown = plugin(&c, &["inspect", r["manifest"].as_str().unwrap()]).await;
    assert!(
        shown
            .stdout
            .contains("Consistency:   snapshot (VolumeSnapshot data-pvb-")
            && shown.stdout.contains("class csi-hostpath, cut "),
        "{}{}",
        shown.stdout,
        shown.stderr
    );
    let unpacked = tempfile::tempdir().unwrap();
    untar(Path::new(r["archive"].as_str().unwrap()), unpacked.path());
    let (seen, bad) = inconsistent_pairs(unpacked.path());
    assert_eq!(seen, 16);
    assert!(
        bad.is_empty(),
        "inconsistent pairs from a snapshot: {bad:?}"
    );
    assert_nothing_left(&c).await;
    // The volume is RWO and attached where the writer runs; the helper read the snapshot's
    // copy on another node.
    let writer_node = c
        .objects("pods", Some("default"))
        .iter()
        .find(|p| p["metadata"]["name"] == "writer")
        .and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
        .unwrap();
    let helper_nodes: Vec<String> = events(&c, "Scheduled")
        .iter()
        .filter(|e| {
            e["involvedObject"]["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("pvbackup-backup-")
        })
        .map(|e| {
            e["message"]
                .as_str()
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!helper_nodes.is_empty());
    assert!(
        helper_nodes.iter().all(|n| *n != writer_node),
        "helper on {helper_nodes:?}, writer on {writer_node}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_backup_lists_what_changed_and_require_consistent_commits_nothing() {
    let (c, _) = workload(None, json!({})).await;
    // Slow the stream so the writer rewrites every pair while the volume is read.
    c.fault(FaultRequest::Bandwidth {
        bytes_per_second: 1 << 20,
    });
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let run = create_json(&c, dest.path(), &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = result(&run);
    let cons = &r["consistency"];
    assert_eq!(cons["method"], "live", "{r:#}");
    assert!(
        cons["fallbackReason"]
            .as_str()
            .unwrap()
            .contains("no VolumeSnapshotClass for driver hostpath.csi.kubesim.dev"),
        "{cons:#}"
    );
    assert!(cons["changedFileCount"].as_u64().unwrap() > 0, "{cons:#}");
    let changed: Vec<&str> = cons["changedFiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        changed
            .iter()
            .any(|p| p.starts_with("pairs/") && (p.ends_with("/log") || p.ends_with("/data"))),
        "{changed:?}"
    );
    assert!(
        run.stderr.contains("changed while they were read") && run.stderr.contains("--snapshot"),
        "{}",
        run.stderr
    );
    assert!(!files_under(dest.path()).is_empty());
    let header: Value =
        serde_json::from_slice(&std::fs::read(r["manifest"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(header["consistency"]["method"], "live", "{header:#}");
    assert_eq!(
        header["consistency"]["files_changed_while_read"],
        cons["changedFileCount"]
    );
    let listed = json(&plugin(&c, &["list", d, "-o", "json"]).await);
    assert_eq!(listed["items"][0]["copy"], "live", "{listed:#}");
    assert_eq!(
        listed["items"][0]["changedWhileRead"],
        cons["changedFileCount"]
    );

    let strict = tempfile::tempdir().unwrap();
    let run = create_json(
        &c,
        strict.path(),
        &["--snapshot", "never", "--require-consistent"],
    )
    .await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    let r = result(&run);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("--require-consistent"),
        "{r:#}"
    );
    assert_eq!(
        r["attempts"], 1,
        "not retried: it would fail the same way: {r:#}"
    );
    assert!(
        files_under(strict.path()).is_empty(),
        "committed: {:?}",
        files_under(strict.path())
    );
    assert_nothing_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_the_app_container_around_the_cut() {
    let (c, _) = workload(Some(json!({})), json!({})).await;
    let dest = tempfile::tempdir().unwrap();
    let run = create_json(
        &c,
        dest.path(),
        &[
            "--pre-hook",
            "echo pre:$(hostname) >> /data/hooks.log",
            "--post-hook",
            "echo post >> /data/hooks.log",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(hook_log(&c), "pre:writer\npost\n");
    let r = result(&run);
    let hooks = r["consistency"]["hooks"].as_array().unwrap();
    let seen = hook_triples(hooks, "result");
    assert_eq!(
        seen,
        [
            ("pre".into(), "app".into(), "ok".into()),
            ("post".into(), "app".into(), "ok".into())
        ]
    );
    // The manifest records both hooks and their outcome; inspect shows them.
    let header: Value =
        serde_json::from_slice(&std::fs::read(r["manifest"].as_str().unwrap()).unwrap()).unwrap();
    let recorded = hook_triples(
        header["consistency"]["hooks"].as_array().unwrap(),
        "outcome",
    );
    assert_eq!(
        recorded,
        [
            ("pre".into(), "app".into(), "succeeded".into()),
            ("post".into(), "app".into(), "succeeded".into())
        ],
        "{header:#}"
    );
    let shown = plugin(&c, &["inspect", r["manifest"].as_str().unwrap()]).await;
    assert!(
        shown.stdout.contains("Hook:          pre in writer/app: sh -c echo pre:$(hostname) >> /data/hooks.log (succeeded)")
            && shown.stdout.contains("Hook:          post in writer/app: sh -c echo post >> /data/hooks.log (succeeded)"),
        "{}",
        shown.stdout
    );
    // The pre hook's line is in the snapshot, the post hook's is not: it ran after the cut.
    let unpacked = tempfile::tempdir().unwrap();
    untar(Path::new(r["archive"].as_str().unwrap()), unpacked.path());
    assert_eq!(
        std::fs::read_to_string(unpacked.path().join("hooks.log")).unwrap(),
        "pre:writer\n"
    );

    // A failing pre hook with on-error fail: no snapshot is cut, no helper starts, nothing is
    // written; the post hook still runs.
    std::fs::remove_file(c.volume_path("default", "data").join("hooks.log")).unwrap();
    let cut_before = events(&c, "CreatingSnapshot").len();
    let helpers_before = events(&c, "Scheduled").len();
    let failed = tempfile::tempdir().unwrap();
    let run = create_json(
        &c,
        failed.path(),
        &[
            "--pre-hook",
            "echo broken >&2; exit 3",
            "--post-hook",
            "echo post >> /data/hooks.log",
        ],
    )
    .await;
    assert_ne!(run.code, 0);
    let r = result(&run);
    assert!(r["error"].as_str().unwrap().contains("pre hook"), "{r:#}");
    assert_eq!(r["consistency"]["hooks"][0]["exitCode"], 3, "{r:#}");
    assert_eq!(hook_log(&c), "post\n");
    assert_eq!(
        events(&c, "CreatingSnapshot").len(),
        cut_before,
        "a snapshot was cut"
    );
    assert_eq!(
        events(&c, "Scheduled").len(),
        helpers_before,
        "a helper pod was started"
    );
    assert!(files_under(failed.path()).is_empty());
    assert_nothing_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velero_annotations_are_honoured_and_post_runs_after_a_failed_snapshot() {
    let (c, _) = workload(
        Some(json!({"kubesim.dev/fail-snapshots": "disk array offline"})),
        json!({
            "pre.hook.backup.velero.io/command": "[\"sh\", \"-c\", \"echo vpre >> /data/hooks.log\"]",
            "pre.hook.backup.velero.io/container": "app",
            "post.hook.backup.velero.io/command": "[\"sh\", \"-c\", \"echo vpost >> /data/hooks.log\"]",
            "post.hook.backup.velero.io/timeout": "20s",
        }),
    )
    .await;
    let dest = tempfile::tempdir().unwrap();
    let run = create_json(&c, dest.path(), &[]).await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    let r = result(&run);
    assert!(
        r["error"].as_str().unwrap().contains("disk array offline"),
        "{r:#}"
    );
    assert_eq!(hook_log(&c), "vpre\nvpost\n");
    assert!(files_under(dest.path()).is_empty());
    assert_nothing_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_the_snapshot_cleans_up_and_resumes_the_app() {
    let (c, _) = workload(
        Some(json!({"kubesim.dev/ready-after-seconds": "60"})),
        json!({}),
    )
    .await;
    let dest = tempfile::tempdir().unwrap();
    let child = plugin_command(
        c.kubeconfig(),
        &[
            "create",
            "data",
            "-n",
            "default",
            "--to",
            dest.path().to_str().unwrap(),
            "--pre-hook",
            "echo pre >> /data/hooks.log",
            "--post-hook",
            "echo post >> /data/hooks.log",
        ],
        &[],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Cut, post hook run, waiting for readyToUse.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !c
        .objects("volumesnapshots", Some("default"))
        .iter()
        .any(|v| v["status"]["creationTime"].is_string())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot was cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    assert_eq!(hook_log(&c), "pre\npost\n");
    assert!(files_under(dest.path()).is_empty());
    assert_nothing_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_snapshot_backup_reads_the_same_snapshot_and_cleans_up() {
    let (c, _) = workload(Some(json!({})), json!({})).await;
    // The first helper's tar dies after 200 KiB; the retry reads the same temporary PVC.
    c.fault(FaultRequest::KillExec {
        after_bytes: 200 << 10,
        count: 1,
    });
    let dest = tempfile::tempdir().unwrap();
    let run = create_json(&c, dest.path(), &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = result(&run);
    assert_eq!(r["attempts"], 2, "{r:#}");
    assert_eq!(r["consistency"]["method"], "snapshot");
    let unpacked = tempfile::tempdir().unwrap();
    untar(Path::new(r["archive"].as_str().unwrap()), unpacked.path());
    let (seen, bad) = inconsistent_pairs(unpacked.path());
    assert_eq!(seen, 16);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        events(&c, "CreatingSnapshot").len(),
        1,
        "one snapshot for both attempts"
    );
    assert_nothing_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_clones_a_volume_whose_driver_clones_but_cannot_snapshot() {
    // The cluster is set up for snapshots (a class for the hostpath driver), the PVC's driver
    // has no class: it can only clone.
    let (c, _) = workload_on(CLONE_ONLY, true, Some(json!({})), json!({})).await;
    let dest = tempfile::tempdir().unwrap();
    let run = create_json(&c, dest.path(), &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = result(&run);
    let cons = &r["consistency"];
    assert_eq!(cons["method"], "clone", "{r:#}");
    assert!(cons.get("snapshot").is_none(), "{cons:#}");
    let header: Value =
        serde_json::from_slice(&std::fs::read(r["manifest"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(header["consistency"]["method"], "clone", "{header:#}");
    assert!(
        header["consistency"]["clone_pvc"]
            .as_str()
            .unwrap()
            .starts_with("data-pvb-"),
        "{header:#}"
    );
    let shown = plugin(&c, &["inspect", r["manifest"].as_str().unwrap()]).await;
    assert!(
        shown.stdout.contains("Consistency:   clone"),
        "{}",
        shown.stdout
    );
    // The clone was cut with the writer paused: every pair agrees.
    let unpacked = tempfile::tempdir().unwrap();
    untar(Path::new(r["archive"].as_str().unwrap()), unpacked.path());
    let (seen, bad) = inconsistent_pairs(unpacked.path());
    assert_eq!(seen, 16);
    assert!(bad.is_empty(), "inconsistent pairs from a clone: {bad:?}");
    // The temporary PVC was provisioned from the PVC itself, and is gone.
    let provisioned: Vec<Value> = events(&c, "ProvisioningSucceeded")
        .into_iter()
        .filter(|e| {
            e["involvedObject"]["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("data-pvb-")
        })
        .collect();
    assert_eq!(provisioned.len(), 1, "{provisioned:#?}");
    assert!(events(&c, "CreatingSnapshot").is_empty());
    assert_nothing_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_snapshot_api_auto_warns_once_and_always_names_the_fix() {
    let (c, k) = workload_on(HOSTPATH, false, None, json!({})).await;
    // kubesim answers as a cluster without the external-snapshotter CRDs does.
    let groups = k.list_api_groups().await.unwrap();
    assert!(
        !groups
            .groups
            .iter()
            .any(|g| g.name == "snapshot.storage.k8s.io"),
        "{groups:?}"
    );
    let dest = tempfile::tempdir().unwrap();
    let run = create_json(&c, dest.path(), &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let cons = &result(&run)["consistency"];
    assert_eq!(cons["method"], "live", "{cons:#}");
    let why = cons["fallbackReason"].as_str().unwrap();
    assert!(
        why.contains("does not serve snapshot.storage.k8s.io/v1")
            && why.contains("external-snapshotter"),
        "{why}"
    );
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("point-in-time"))
        .collect();
    assert_eq!(
        warnings,
        [format!(
            "warning: live copy of default/data instead of a point-in-time one: {why}"
        )],
        "{}",
        run.stderr
    );
    for noise in ["404", "NotFound", "could not find the requested resource"] {
        assert!(!run.stderr.contains(noise), "{}", run.stderr);
    }

    let strict = tempfile::tempdir().unwrap();
    let run = create_json(&c, strict.path(), &["--snapshot", "always"]).await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    let error = result(&run)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("does not serve snapshot.storage.k8s.io/v1")
            && error.contains("install the external-snapshotter")
            && error.contains("--snapshot auto"),
        "{error}"
    );
    for noise in ["404", "NotFound", "could not find the requested resource"] {
        assert!(
            !run.stderr.contains(noise) && !error.contains(noise),
            "{}",
            run.stderr
        );
    }
    assert!(files_under(strict.path()).is_empty());
    assert_nothing_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_what_a_killed_snapshot_backup_left_but_never_a_running_ones() {
    // The snapshot is cut at once but ready only after 8 s; the stream then crawls.
    let (c, _) = workload(
        Some(json!({"kubesim.dev/ready-after-seconds": "8"})),
        json!({}),
    )
    .await;
    c.fault(FaultRequest::Bandwidth {
        bytes_per_second: 128 << 10,
    });
    let lease = [("PVBACKUP_LEASE_SECONDS".to_string(), "2".to_string())];
    let dest = tempfile::tempdir().unwrap();
    let mut child = plugin_command(
        c.kubeconfig(),
        &[
            "create",
            "data",
            "-n",
            "default",
            "--to",
            dest.path().to_str().unwrap(),
        ],
        &lease,
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let snapshot_names = || {
        names(&c, "volumesnapshots")
            .into_iter()
            .filter(|n| n.starts_with("data-pvb-"))
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while snapshot_names().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past twice the lease: only the run's renewals keep its snapshot from looking abandoned.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let cleanup = || plugin(&c, &["cleanup", "-n", "default", "--yes", "-o", "json"]);
    let kept = cleanup().await;
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    let report = json(&kept);
    let snap = snapshot_names()[0].clone();
    assert!(
        report["copies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == snap.as_str() && x["action"] == "kept"),
        "{report:#}"
    );
    assert_eq!(
        snapshot_names(),
        std::slice::from_ref(&snap),
        "a running backup's snapshot went"
    );
    // Ready, temporary PVC provisioned, helper streaming: now the client dies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while helper_pods(&c).is_empty() || !names(&c, "persistentvolumeclaims").contains(&snap) {
        assert!(tokio::time::Instant::now() < deadline, "no helper");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    // Twice the lease later the run is known to be gone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let gone = cleanup().await;
    assert_eq!(gone.code, 0, "{}", gone.stderr);
    let report = json(&gone);
    let deleted: Vec<(String, String)> = report["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["kind"].as_str().unwrap().to_string(),
                x["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        deleted,
        [
            ("persistentvolumeclaim".to_string(), "deleted".to_string()),
            ("volumesnapshot".to_string(), "deleted".to_string())
        ],
        "{report:#}"
    );
    // No snapshot, no content, no temporary PVC, no helper; the workload's PVC and data stay.
    assert_nothing_left(&c).await;
    assert!(round(&c.volume_path("default", "data").join("pairs/16/data")).is_some());
}

/// A cluster with `standard` (hostpath driver) and its default VolumeSnapshotClass, and PVC
/// `data` that no pod mounts, bound.
async fn idle_claim() -> Cluster {
    let (c, k) = {
        let c = Cluster::start(ClusterOptions {
            scenario: Scenario::Empty,
            ..Default::default()
        })
        .await
        .unwrap();
        let k = client(&c).await;
        (c, k)
    };
    let sc: k8s_openapi::api::storage::v1::StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "standard"}, "provisioner": HOSTPATH,
        "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}))
    .unwrap();
    Api::all(k.clone())
        .create(&PostParams::default(), &sc)
        .await
        .unwrap();
    let class: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": "csi-hostpath", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
        "driver": HOSTPATH, "deletionPolicy": "Delete"}))
    .unwrap();
    snapshot_classes(&k)
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    claim(&c, &k, "data", None).await;
    c
}

/// Creates PVC `name` (64 Mi, `standard`, from `source` when given) and waits until it is bound.
async fn claim(c: &Cluster, k: &kube::Client, name: &str, source: Option<Value>) {
    let mut pvc = json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                 "resources": {"requests": {"storage": "64Mi"}}}});
    if let Some(s) = source {
        pvc["spec"]["dataSource"] = s;
    }
    let pvc: PersistentVolumeClaim = serde_json::from_value(pvc).unwrap();
    let api = Api::<PersistentVolumeClaim>::namespaced(k.clone(), "default");
    api.create(&PostParams::default(), &pvc).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = api.get(name).await.unwrap();
        if p.status.and_then(|s| s.phase).as_deref() == Some("Bound") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "PVC {name} not bound: {:?}",
            c.objects("events", Some("default"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_in_place_keeps_a_snapshot_that_restores_the_old_content() {
    let c = idle_claim().await;
    let k = client(&c).await;
    let vol = c.volume_path("default", "data");
    std::fs::write(vol.join("config.txt"), b"version one\n").unwrap();
    std::fs::create_dir_all(vol.join("db")).unwrap();
    std::fs::write(vol.join("db/table"), vec![7u8; 300 << 10]).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let made = create_json(&c, dest.path(), &["--snapshot", "never"]).await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let manifest = result(&made)["manifest"].as_str().unwrap().to_string();
    // What the restore is about to replace.
    std::fs::write(vol.join("config.txt"), b"version two\n").unwrap();
    std::fs::write(vol.join("db/table"), vec![9u8; 400 << 10]).unwrap();
    std::fs::write(vol.join("written-since"), b"new\n").unwrap();

    // --dry-run says the snapshot would be cut, and with which class; it cuts nothing.
    let dry = plugin(&c, &["restore", &manifest, "--in-place", "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout
            .contains("a VolumeSnapshot of default/data (class csi-hostpath) is cut first"),
        "{}",
        dry.stdout
    );
    let dry = plugin(
        &c,
        &[
            "restore",
            &manifest,
            "--in-place",
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(
        json(&dry)["rollbackSnapshot"],
        json!({"cut": true, "class": "csi-hostpath"}),
        "{}",
        dry.stdout
    );
    let dry = plugin(
        &c,
        &[
            "restore",
            &manifest,
            "--in-place",
            "--dry-run",
            "--snapshot",
            "never",
        ],
    )
    .await;
    assert!(
        dry.stdout
            .contains("no snapshot (--snapshot never), so no rollback"),
        "{}",
        dry.stdout
    );
    assert!(names(&c, "volumesnapshots").is_empty());
    assert_eq!(
        std::fs::read(vol.join("config.txt")).unwrap(),
        b"version two\n"
    );

    let run = plugin(
        &c,
        &["restore", &manifest, "--in-place", "--yes", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = json(&run);
    let snap = out["snapshot"]["name"].as_str().unwrap().to_string();
    assert!(snap.starts_with("data-before-restore-"), "{out:#}");
    assert_eq!(out["snapshot"]["kept"], true, "{out:#}");
    assert_eq!(out["snapshot"]["class"], "csi-hostpath", "{out:#}");
    assert!(
        run.stderr.contains(&format!(
            "cut VolumeSnapshot default/{snap} of PVC default/data"
        )),
        "{}",
        run.stderr
    );
    // The volume holds the backup again.
    assert_eq!(
        std::fs::read(vol.join("config.txt")).unwrap(),
        b"version one\n"
    );
    assert!(!vol.join("written-since").exists());
    // The kept snapshot, provisioned into a new PVC, holds what the restore replaced.
    claim(
        &c,
        &k,
        "before",
        Some(
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snap}),
        ),
    )
    .await;
    let old = c.volume_path("default", "before");
    assert_eq!(
        std::fs::read(old.join("config.txt")).unwrap(),
        b"version two\n"
    );
    assert_eq!(
        std::fs::read(old.join("db/table")).unwrap(),
        vec![9u8; 400 << 10]
    );
    assert_eq!(std::fs::read(old.join("written-since")).unwrap(), b"new\n");
    // cleanup leaves it alone: it is no leftover of a backup.
    let cleaned = plugin(&c, &["cleanup", "-n", "default", "--yes"]).await;
    assert_eq!(cleaned.code, 0, "{}", cleaned.stderr);
    assert!(names(&c, "volumesnapshots").contains(&snap));

    // --keep-snapshot=false: cut, used as the safety net, deleted after the success; the
    // table output says so.
    let run = plugin(
        &c,
        &[
            "restore",
            &manifest,
            "--in-place",
            "--yes",
            "--keep-snapshot=false",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("deleted (--keep-snapshot=false)"),
        "{}",
        run.stdout
    );
    let left: Vec<String> = names(&c, "volumesnapshots");
    assert_eq!(
        left,
        std::slice::from_ref(&snap),
        "only the first restore's snapshot stays"
    );
    assert_eq!(names(&c, "volumesnapshotcontents").len(), 1);
    assert_eq!(
        std::fs::read(vol.join("config.txt")).unwrap(),
        b"version one\n"
    );
}

/// (phase, container, `outcome_field`) of each hook, as the result (`result`) or the manifest
/// (`outcome`) lists them.
fn hook_triples(hooks: &[Value], outcome_field: &str) -> Vec<(String, String, String)> {
    hooks
        .iter()
        .map(|h| {
            (
                h["phase"].as_str().unwrap().into(),
                h["container"].as_str().unwrap().into(),
                h[outcome_field].as_str().unwrap().into(),
            )
        })
        .collect()
}

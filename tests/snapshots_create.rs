//! `create --snapshot`, live-change detection, `--require-consistent` and hooks against
//! kubesim, with a workload that keeps writing pairs of files that must agree.

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

/// A cluster with a `standard` class of the hostpath driver, a default VolumeSnapshotClass
/// for it (with `params`, unless None: then no class at all), a 64 MiB RWO PVC `data` and the
/// pair writer in pod `writer` (container `app`, next to an `istio-proxy` sidecar that does
/// not mount the volume), running and past its third round.
async fn workload(params: Option<Value>, annotations: Value) -> (Cluster, kube::Client) {
    let c = Cluster::start(ClusterOptions {
        scenario: Scenario::Empty,
        ..Default::default()
    })
    .await
    .unwrap();
    let k = client(&c).await;
    let sc: k8s_openapi::api::storage::v1::StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "standard"}, "provisioner": "hostpath.csi.kubesim.dev",
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
    let seen: Vec<(String, String, String)> = hooks
        .iter()
        .map(|h| {
            (
                h["phase"].as_str().unwrap().into(),
                h["container"].as_str().unwrap().into(),
                h["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("pre".into(), "app".into(), "ok".into()),
            ("post".into(), "app".into(), "ok".into())
        ]
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

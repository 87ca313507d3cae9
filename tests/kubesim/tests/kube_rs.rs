//! Conformance of kubesim against kube-rs (the client kubectl-pvbackup uses): list/watch,
//! create/delete, await_condition, exec over WebSocket with stdin and status, port-forward, API
//! error codes, scheduling and image-pull failures, and injected faults.

use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{Api, Client};
use kubesim::{Cluster, ClusterOptions, FaultRequest, Scenario};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(scenario: Scenario) -> Cluster {
    Cluster::start(ClusterOptions {
        scenario,
        ..Default::default()
    })
    .await
    .expect("cluster starts")
}

async fn client_for(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

fn sleeper(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": "kube-rs"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}],
        },
    }))
    .expect("pod")
}

async fn running(api: &Api<Pod>, name: &str) -> Pod {
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api.clone(), name, conditions::is_pod_running()),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} did not start running in 30s"))
    .expect("watch works")
    .expect("pod exists")
}

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected kube::Error::Api, got {other:?}"),
    }
}

/// Polls `f` until it yields Some, or panics after `secs`.
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_create_delete_pods() {
    let c = start(Scenario::Empty).await;
    let client = client_for(c.kubeconfig()).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");

    // A watcher started before the pod exists sees it appear, run, and go.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let w = watcher(
        pods.clone(),
        watcher::Config::default().labels("test=kube-rs"),
    );
    let watch_task = tokio::spawn(async move {
        let mut s = w.boxed();
        while let Some(ev) = s.try_next().await.expect("watch stream errors") {
            let _ = tx.send(ev);
        }
    });

    let created = pods
        .create(&PostParams::default(), &sleeper("w1", "busybox:1.36"))
        .await
        .expect("create");
    let uid = created.metadata.uid.clone().expect("uid assigned");
    assert!(created.metadata.resource_version.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));

    let pod = running(&pods, "w1").await;
    let st = pod.status.expect("status");
    assert!(pod.spec.expect("spec").node_name.is_some(), "scheduled");
    assert!(st.pod_ip.is_some(), "running pod has an IP");
    let cs = &st.container_statuses.expect("container statuses")[0];
    assert!(cs.ready && cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());

    let list = pods
        .list(&ListParams::default().labels("test=kube-rs"))
        .await
        .expect("list");
    assert_eq!(
        list.items
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        ["w1"]
    );
    assert!(list.metadata.resource_version.is_some());
    let other = pods
        .list(&ListParams::default().labels("test=other"))
        .await
        .expect("list with a non-matching selector");
    assert!(other.items.is_empty());

    // Api::watch from the list's resourceVersion sees the deletion as MODIFIED/DELETED events.
    let rv = list.metadata.resource_version.clone().expect("rv");
    let raw = pods
        .watch(
            &kube::api::WatchParams::default().labels("test=kube-rs"),
            &rv,
        )
        .await
        .expect("watch");
    pods.delete("w1", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(pods.clone(), "w1", conditions::is_deleted(&uid)),
    )
    .await
    .expect("w1 is deleted within 30s")
    .expect("watch works");
    let mut raw = raw.boxed();
    let saw_deleted = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = raw.try_next().await.expect("raw watch") {
            if let kube::api::WatchEvent::Deleted(p) = ev {
                return p.metadata.name.as_deref() == Some("w1");
            }
        }
        false
    })
    .await
    .expect("DELETED event within 10s");
    assert!(saw_deleted, "Api::watch reports the deletion");

    // The runtime watcher reported the pod's arrival, a Running version, and its deletion.
    let mut applied_running = false;
    let mut deleted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(applied_running && deleted) {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("watcher events within 10s")
            .expect("watcher alive");
        match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p)
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") =>
            {
                applied_running = true;
            }
            watcher::Event::Delete(p) => {
                assert_eq!(p.metadata.uid.as_deref(), Some(uid.as_str()));
                deleted = true;
            }
            _ => {}
        }
    }
    watch_task.abort();
    assert!(pods.get_opt("w1").await.expect("get").is_none());
    let err = api_error(pods.get("w1").await.expect_err("gone"));
    assert_eq!(err.code, 404);
    assert_eq!(err.reason, "NotFound");
    c.shutdown().await;
}

async fn read_all(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut buf).await.expect("read stream");
    }
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_stdin_and_status() {
    let c = start(Scenario::Empty).await;
    let client = client_for(c.kubeconfig()).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &sleeper("ex", "busybox:1.36"))
        .await
        .expect("create");
    running(&pods, "ex").await;

    // stdin → the process; closing stdin (v5 CLOSE) gives it EOF; a non-zero exit is a
    // Failure status with reason NonZeroExitCode and an ExitCode cause.
    let data: Vec<u8> = (0..(2 * 1024 * 1024 + 5) as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let before = c.exec_bytes();
    let mut p = pods
        .exec(
            "ex",
            ["sh", "-c", "wc -c; echo to-stderr >&2; exit 7"],
            &AttachParams::default().stdin(true).stderr(true),
        )
        .await
        .expect("exec");
    let mut stdin = p.stdin().expect("stdin");
    let stdout = p.stdout();
    let stderr = p.stderr();
    let status = p.take_status().expect("status");
    let writer = tokio::spawn(async move {
        stdin.write_all(&data).await.expect("write stdin");
        stdin.shutdown().await.expect("close stdin");
    });
    let (out, err) = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join(read_all(stdout), read_all(stderr)),
    )
    .await
    .expect("exec finishes in 30s");
    writer.await.expect("writer");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "2097157");
    assert_eq!(String::from_utf8_lossy(&err), "to-stderr\n");
    let s = status.await.expect("a status");
    assert_eq!(s.status.as_deref(), Some("Failure"));
    assert_eq!(s.reason.as_deref(), Some("NonZeroExitCode"));
    let causes = s.details.expect("details").causes.unwrap_or_default();
    assert!(
        causes
            .iter()
            .any(|c| c.reason.as_deref() == Some("ExitCode") && c.message.as_deref() == Some("7")),
        "{causes:?}"
    );
    p.join().await.expect("join");
    // The exec byte counter saw what went in and what came out, nothing else.
    let after = c.exec_bytes();
    assert_eq!(after.stdin - before.stdin, 2097157);
    assert_eq!(after.stdout - before.stdout, "2097157\n".len() as u64);

    // A zero exit is a Success status.
    let mut p = pods
        .exec("ex", ["cat", "/etc/hostname"], &AttachParams::default())
        .await
        .expect("exec");
    let stdout = p.stdout();
    let status = p.take_status().expect("status");
    let out = tokio::time::timeout(Duration::from_secs(20), read_all(stdout))
        .await
        .expect("exec finishes");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        "ex",
        "hostname is the pod name"
    );
    let s = status.await.expect("a status");
    assert_eq!(s.status.as_deref(), Some("Success"), "{s:?}");
    p.join().await.expect("join");

    // A missing binary: the runtime's "executable file not found" as a 500-ish failure.
    let mut p = pods
        .exec("ex", ["no-such-binary"], &AttachParams::default())
        .await
        .expect("exec upgrade succeeds");
    let status = p.take_status().expect("status");
    let s = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("status within 20s")
        .expect("a status");
    assert_eq!(s.status.as_deref(), Some("Failure"), "{s:?}");
    assert!(
        s.message
            .as_deref()
            .unwrap_or_default()
            .contains("no-such-binary"),
        "{s:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_have_real_codes() {
    let c = start(Scenario::Empty).await;
    let admin = client_for(c.kubeconfig()).await;
    let pods: Api<Pod> = Api::namespaced(admin, "default");
    let created = pods
        .create(&PostParams::default(), &sleeper("target", "busybox:1.36"))
        .await
        .expect("create");

    // RBAC denial → 403 Forbidden with the authorizer's message.
    let viewer_cfg = c
        .add_user(
            "viewer",
            vec![kubesim::rule(
                &["get", "list", "watch"],
                &["pods"],
                &["default"],
            )],
        )
        .expect("user");
    let viewer: Api<Pod> = Api::namespaced(client_for(&viewer_cfg).await, "default");
    assert!(viewer.get("target").await.is_ok(), "viewer may get");
    let e = api_error(
        viewer
            .create(&PostParams::default(), &sleeper("nope", "busybox:1.36"))
            .await
            .expect_err("viewer may not create"),
    );
    assert_eq!(e.code, 403);
    assert_eq!(e.reason, "Forbidden");
    assert!(
        e.message
            .contains("User \"viewer\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{}",
        e.message
    );
    let e = api_error(
        viewer
            .delete("target", &DeleteParams::default())
            .await
            .expect_err("viewer may not delete"),
    );
    assert_eq!(e.code, 403);
    let other_ns: Api<Pod> = Api::namespaced(client_for(&viewer_cfg).await, "kube-system");
    assert_eq!(
        api_error(
            other_ns
                .list(&ListParams::default())
                .await
                .expect_err("other ns")
        )
        .code,
        403
    );

    // Delete with a stale uid precondition → 409 Conflict; the pod stays.
    let e = api_error(
        pods.delete(
            "target",
            &DeleteParams::default().preconditions(Preconditions {
                uid: Some("00000000-0000-0000-0000-000000000000".into()),
                resource_version: None,
            }),
        )
        .await
        .expect_err("wrong uid"),
    );
    assert_eq!(e.code, 409);
    assert_eq!(e.reason, "Conflict");
    assert!(
        e.message
            .contains("Precondition failed: UID in precondition"),
        "{}",
        e.message
    );
    let still = pods.get("target").await.expect("still there");
    assert_eq!(still.metadata.uid, created.metadata.uid);
    assert!(still.metadata.deletion_timestamp.is_none());

    // Creating the same name again → 409 AlreadyExists.
    let e = api_error(
        pods.create(&PostParams::default(), &sleeper("target", "busybox:1.36"))
            .await
            .expect_err("duplicate"),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    // A container without an image → 422 Invalid with a cause on spec.containers[0].image.
    let bad: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "no-image"},
        "spec": {"containers": [{"name": "main", "command": ["sleep", "1"]}]},
    }))
    .expect("pod");
    let e = api_error(
        pods.create(&PostParams::default(), &bad)
            .await
            .expect_err("no image"),
    );
    assert_eq!(e.code, 422);
    assert_eq!(e.reason, "Invalid");
    let causes = e.details.expect("details").causes;
    assert!(
        causes
            .iter()
            .any(|c| c.field == "spec.containers[0].image" && c.reason == "FieldValueRequired"),
        "{causes:?}"
    );
    assert!(pods.get_opt("no-image").await.expect("get").is_none());

    // Delete with the right uid works.
    pods.delete(
        "target",
        &DeleteParams::default().preconditions(Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: None,
        }),
    )
    .await
    .expect("delete with the right uid");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_once_pod_second_pod_is_unschedulable() {
    let c = start(Scenario::Demo).await;
    c.wait_for_pods_running(Duration::from_secs(60))
        .await
        .expect("demo runs");
    let client = client_for(c.kubeconfig()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "payments");
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client, "payments");
    let keys = pvcs.get("keys").await.expect("keys pvc");
    assert_eq!(
        keys.spec.expect("spec").access_modes.expect("modes"),
        ["ReadWriteOncePod"]
    );
    let holder = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .find(|p| {
            p.spec.as_ref().is_some_and(|s| {
                s.volumes.iter().flatten().any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == "keys")
                })
            })
        })
        .expect("a pod holds the RWOP claim");
    assert_eq!(holder.metadata.name.as_deref(), Some("vault-0"));

    let second: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "second-reader"},
        "spec": {
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"],
                            "volumeMounts": [{"name": "k", "mountPath": "/k"}]}],
            "volumes": [{"name": "k", "persistentVolumeClaim": {"claimName": "keys"}}],
        },
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &second)
        .await
        .expect("create");
    let cond = eventually(20, "a PodScheduled=False condition", || async {
        let p = pods.get("second-reader").await.expect("get");
        p.status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    let msg = cond.message.expect("message");
    assert!(
        msg.starts_with("0/3 nodes are available:")
            && msg.contains("node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode"),
        "{msg}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client_for(c.kubeconfig()).await, "payments");
    let evs = events
        .list(&ListParams::default().fields("involvedObject.name=second-reader"))
        .await
        .expect("events");
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedScheduling")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref() == Some(msg.as_str())),
        "{:?}",
        evs.items
    );
    let p = pods.get("second-reader").await.expect("get");
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    assert!(
        p.spec.expect("spec").node_name.is_none(),
        "never bound to a node"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_image_pull_backs_off() {
    let c = start(Scenario::Empty).await;
    let image = "registry.example.com/broken/app:1.0";
    c.fault(FaultRequest::FailImage {
        image: image.into(),
    });
    let pods: Api<Pod> = Api::namespaced(client_for(c.kubeconfig()).await, "default");
    pods.create(&PostParams::default(), &sleeper("broken", image))
        .await
        .expect("create");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains("ImagePullBackOff") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ImagePullBackOff within 30s; saw {seen:?}"
        );
        let p = pods.get("broken").await.expect("get");
        let st = p.status.expect("status");
        assert_ne!(
            st.phase.as_deref(),
            Some("Running"),
            "a failing image never runs"
        );
        for cs in st.container_statuses.into_iter().flatten() {
            assert!(!cs.ready);
            if let Some(w) = cs.state.and_then(|s| s.waiting) {
                let reason = w.reason.unwrap_or_default();
                if reason == "ErrImagePull" || reason == "ImagePullBackOff" {
                    assert!(
                        w.message.as_deref().unwrap_or_default().contains(image),
                        "{reason}: {:?}",
                        w.message
                    );
                    seen.insert(reason);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.contains("ErrImagePull"),
        "ErrImagePull comes first: {seen:?}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client_for(c.kubeconfig()).await, "default");
    let evs = events
        .list(&ListParams::default().fields("involvedObject.name=broken"))
        .await
        .expect("events");
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Failed")
                && e.message.as_deref() == Some("Error: ErrImagePull")),
        "{:?}",
        evs.items.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_exec_fault_ends_the_stream_early() {
    let c = start(Scenario::Empty).await;
    let pods: Api<Pod> = Api::namespaced(client_for(c.kubeconfig()).await, "default");
    pods.create(&PostParams::default(), &sleeper("victim", "busybox:1.36"))
        .await
        .expect("create");
    running(&pods, "victim").await;
    let limit = 1024 * 1024u64;
    c.fault(FaultRequest::KillExec {
        after_bytes: limit,
        count: 1,
    });
    let mut p = pods
        .exec(
            "victim",
            ["cat", "/dev/zero"],
            &AttachParams::default().stderr(false),
        )
        .await
        .expect("exec");
    let mut stdout = p.stdout().expect("stdout");
    let status = p.take_status().expect("status");
    let n = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return n,
                Ok(k) => {
                    assert!(buf[..k].iter().all(|b| *b == 0));
                    n += k as u64;
                }
            }
        }
    })
    .await
    .expect("the killed stream ends within 30s");
    assert!(n >= limit / 2, "got {n} bytes before the kill");
    assert!(n < 512 * 1024 * 1024, "stream ended early ({n} bytes)");
    let s = tokio::time::timeout(Duration::from_secs(10), status)
        .await
        .expect("status in time");
    let s = s.expect("the killed session reports a status");
    assert_eq!(s.status.as_deref(), Some("Failure"), "{s:?}");
    drop(p);

    // The kill crashed the container (as a process killed under a real runtime does); the
    // kubelet restarts it, and the fault was for one session: the next exec is unharmed.
    eventually(30, "the container to restart and be ready", || async {
        let p = pods.get("victim").await.expect("get");
        let cs = p.status?.container_statuses?.into_iter().next()?;
        (cs.restart_count >= 1 && cs.ready).then_some(())
    })
    .await;
    let mut p = pods
        .exec(
            "victim",
            ["sh", "-c", "head -c 3000000 /dev/zero | wc -c"],
            &AttachParams::default().stderr(false),
        )
        .await
        .expect("exec");
    let out = tokio::time::timeout(Duration::from_secs(30), read_all(p.stdout()))
        .await
        .expect("second exec finishes");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "3000000");
    c.shutdown().await;
}

/// The link model (faults.rs `SharedLink`): each exec stream gets the per-stream cap on its
/// own, and streams together get no more than the shared cap, which they split evenly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_model_caps_each_stream_then_all_together() {
    let c = start(Scenario::Empty).await;
    let pods: Api<Pod> = Api::namespaced(client_for(c.kubeconfig()).await, "default");
    pods.create(&PostParams::default(), &sleeper("link", "busybox:1.36"))
        .await
        .expect("create");
    running(&pods, "link").await;
    const BYTES: u64 = 6_000_000;
    // Two streams at once, each reading BYTES; the seconds each took.
    let pair = || async {
        let one = || async {
            let started = tokio::time::Instant::now();
            let mut p = pods
                .exec(
                    "link",
                    ["head", "-c", &BYTES.to_string(), "/dev/zero"],
                    &AttachParams::default().stderr(false),
                )
                .await
                .expect("exec");
            let out = read_all(p.stdout()).await;
            assert_eq!(out.len() as u64, BYTES);
            started.elapsed().as_secs_f64()
        };
        let (a, b) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(one(), one())
        })
        .await
        .expect("both streams finish in 60s");
        (a, b)
    };
    // Per stream 3 MB/s, shared 12 MB/s: the shared cap does not bind, each gets 3 MB/s (2 s).
    c.fault(FaultRequest::Link {
        per_stream: Some(3_000_000),
        shared: Some(12_000_000),
    });
    let (a, b) = pair().await;
    for t in [a, b] {
        assert!(
            (1.8..3.0).contains(&t),
            "each stream alone at 3 MB/s: {a:.2}s, {b:.2}s"
        );
    }
    // Shared 4 MB/s binds: the two split it, 2 MB/s each (3 s), instead of 3 MB/s.
    c.fault(FaultRequest::Link {
        per_stream: Some(3_000_000),
        shared: Some(4_000_000),
    });
    let (a, b) = pair().await;
    for t in [a, b] {
        assert!(
            (2.8..4.2).contains(&t),
            "two streams sharing 4 MB/s: {a:.2}s, {b:.2}s"
        );
    }
    // `bandwidth` alone is the per-stream cap: nothing shared, each at 6 MB/s (1 s).
    c.fault(FaultRequest::Clear);
    c.fault(FaultRequest::Bandwidth {
        bytes_per_second: 6_000_000,
    });
    let (a, b) = pair().await;
    for t in [a, b] {
        assert!(
            (0.9..1.9).contains(&t),
            "per-stream cap only: {a:.2}s, {b:.2}s"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_requests_then_recovers() {
    let c = start(Scenario::Empty).await;
    let pods: Api<Pod> = Api::namespaced(client_for(c.kubeconfig()).await, "default");
    pods.list(&ListParams::default())
        .await
        .expect("list before the outage");
    let started = tokio::time::Instant::now();
    c.fault(FaultRequest::Outage { seconds: 2.0 });
    let during = tokio::time::timeout(Duration::from_secs(10), pods.list(&ListParams::default()))
        .await
        .expect("a request during the outage ends promptly");
    assert!(during.is_err(), "a request during the outage succeeded");
    let mut attempts = 0;
    let recovered = loop {
        attempts += 1;
        match tokio::time::timeout(Duration::from_secs(5), pods.list(&ListParams::default())).await
        {
            Ok(Ok(_)) => break started.elapsed(),
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "still failing after 15s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(attempts > 1, "recovered on the first retry");
    assert!(
        recovered >= Duration::from_millis(1500),
        "recovered after only {recovered:?}"
    );
    // And a create works afterwards, on the same client.
    pods.create(&PostParams::default(), &sleeper("after", "busybox:1.36"))
        .await
        .expect("create after the outage");
    c.shutdown().await;
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A hand-rolled WebSocket exec (TLS with the cluster's CA, bearer token), to see exactly what
/// arrives on the wire: frames, channels, and how the connection ends.
async fn raw_exec(
    c: &Cluster,
    ns: &str,
    pod: &str,
    query: &str,
    protocol: &str,
) -> (
    RawWs,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let kc: serde_json::Value =
        serde_yaml::from_slice(&std::fs::read(c.kubeconfig()).expect("kubeconfig")).expect("yaml");
    let token = kc["users"][0]["user"]["token"].as_str().expect("token");
    let ca = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(
                kc["clusters"][0]["cluster"]["certificate-authority-data"]
                    .as_str()
                    .expect("ca"),
            )
            .expect("base64")
    };
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("pem")).expect("ca cert");
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = c.url().trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name"),
            tcp,
        )
        .await
        .expect("tls handshake");
    let url = format!("wss://{addr}/api/v1/namespaces/{ns}/pods/{pod}/exec?{query}");
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().expect("header"));
    tokio_tungstenite::client_async(req, stream)
        .await
        .expect("websocket upgrade")
}

/// An outage is the API server going away: an exec stream in flight sees its connection reset
/// (as client-go does when the apiserver process dies), not a Status and not a close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_resets_exec_streams_without_a_status() {
    use tokio_tungstenite::tungstenite::Message;
    let c = start(Scenario::Empty).await;
    let pods: Api<Pod> = Api::namespaced(client_for(c.kubeconfig()).await, "default");
    pods.create(&PostParams::default(), &sleeper("streamer", "busybox:1.36"))
        .await
        .expect("create");
    running(&pods, "streamer").await;
    let (mut ws, _) = raw_exec(
        &c,
        "default",
        "streamer",
        "command=cat&command=/dev/zero&stdout=true",
        "v5.channel.k8s.io",
    )
    .await;
    let mut got = 0usize;
    while got < 1 << 20 {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) if b.first() == Some(&1) => got += b.len() - 1,
            Some(Ok(Message::Binary(b))) if b.len() == 1 => {}
            other => panic!("unexpected before the outage: {other:?}"),
        }
    }
    c.fault(FaultRequest::Outage { seconds: 1.0 });
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&1) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends promptly");
    match end {
        Some(Err(tokio_tungstenite::tungstenite::Error::Io(e))) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}")
        }
        // rustls reports a reset under TLS as an I/O error too; anything that is a Status,
        // a Close frame or a clean end is the old, too-polite behaviour.
        other => panic!("expected a connection reset, got {other:?}"),
    }
    c.shutdown().await;
}

/// A NotReady node is unreachable: an exec stream through it stalls (no bytes, no status) and
/// resumes when the node is back; a new exec is refused; a deletion is not carried out until
/// the kubelet can see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_ready_node_stalls_exec_and_keeps_pods_terminating() {
    let c = start(Scenario::Empty).await;
    let pods: Api<Pod> = Api::namespaced(client_for(c.kubeconfig()).await, "default");
    pods.create(&PostParams::default(), &sleeper("ticker", "busybox:1.36"))
        .await
        .expect("create");
    let node = running(&pods, "ticker")
        .await
        .spec
        .and_then(|s| s.node_name)
        .expect("scheduled");
    let mut p = pods
        .exec(
            "ticker",
            ["sh", "-c", "while :; do echo tick; sleep 0.05; done"],
            &AttachParams::default().stderr(false),
        )
        .await
        .expect("exec");
    let mut stdout = p.stdout().expect("stdout");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stdout.read(&mut buf))
        .await
        .expect("ticks flow")
        .expect("read");
    assert!(n > 0);
    c.fault(FaultRequest::NodeNotReady { node: node.clone() });
    // What was already on its way may still arrive; then nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Ok(k)) =
        tokio::time::timeout(Duration::from_millis(300), stdout.read(&mut buf)).await
    {
        assert!(k > 0, "the stream ended instead of stalling");
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(2), stdout.read(&mut buf))
            .await
            .is_err(),
        "data flowed from a NotReady node"
    );
    match pods
        .exec("ticker", ["true"], &AttachParams::default())
        .await
    {
        Ok(_) => panic!("exec on a NotReady node was accepted"),
        Err(e) => assert!(e.to_string().contains("error dialing backend"), "{e}"),
    }
    pods.delete("ticker", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = pods.get("ticker").await.expect("still there");
    assert!(stuck.metadata.deletion_timestamp.is_some());
    c.fault(FaultRequest::NodeReady { node });
    let k = tokio::time::timeout(Duration::from_secs(10), stdout.read(&mut buf))
        .await
        .expect("the stream resumes or ends once the node is back")
        .expect("read");
    let _ = k;
    eventually(30, "the pod to be gone once its node is back", || async {
        pods.get_opt("ticker")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    c.shutdown().await;
}

/// kube-rs offers `v5.channel.k8s.io, v4.channel.k8s.io` and so always lands on v5 here; older
/// clients (kube-rs < 0.99, client-go's WebSocket executor before v5) speak v4, where stdin
/// cannot be half-closed and the status arrives as JSON on channel 3. A hand-rolled client
/// offering only v4 checks that path: stdout on channel 1, stderr on 2, a `Status` on 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket_v4() {
    use tokio_tungstenite::tungstenite::Message;

    let c = start(Scenario::Empty).await;
    let pods: Api<Pod> = Api::namespaced(client_for(c.kubeconfig()).await, "default");
    pods.create(&PostParams::default(), &sleeper("v4", "busybox:1.36"))
        .await
        .expect("create");
    running(&pods, "v4").await;

    let (mut ws, resp) = raw_exec(
        &c,
        "default",
        "v4",
        "command=sh&command=-c&command=echo%20out%3B%20echo%20err%20%3E%262%3B%20exit%205&stdout=true&stderr=true",
        "v4.channel.k8s.io",
    )
    .await;
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("v4.channel.k8s.io")
    );
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Binary(b)) if !b.is_empty() => match b[0] {
                    1 => out.extend_from_slice(&b[1..]),
                    2 => err.extend_from_slice(&b[1..]),
                    3 => status.extend_from_slice(&b[1..]),
                    ch => panic!("unexpected channel {ch}"),
                },
                Ok(Message::Close(_)) | Err(_) => break,
                _ => {}
            }
        }
    })
    .await
    .expect("v4 exec finishes");
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    let st: serde_json::Value = serde_json::from_slice(&status).expect("status JSON on channel 3");
    assert_eq!(st["status"], "Failure", "{st}");
    assert_eq!(st["reason"], "NonZeroExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["message"], "5", "{st}");
    c.shutdown().await;
}

/// A client that vanishes mid-exec (killed, its connection dropped) does not take the
/// process with it, as under real container runtimes (kubernetes/kubernetes#89031,
/// containerd/containerd#8856): the process reads EOF on stdin and runs to its end, its
/// output going nowhere, and only dies with its container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_outlives_its_vanished_client() {
    let c = start(Scenario::Empty).await;
    let pods: Api<Pod> = Api::namespaced(client_for(c.kubeconfig()).await, "default");
    pods.create(&PostParams::default(), &sleeper("orphans", "busybox:1.36"))
        .await
        .expect("create");
    running(&pods, "orphans").await;
    let mut p = pods
        .exec(
            "orphans",
            [
                "sh",
                "-c",
                "cat > /tmp/got; echo eof > /tmp/eof; yes | head -c 1000000; sleep 1; echo done > /tmp/done",
            ],
            &AttachParams::default().stdin(true).stderr(false),
        )
        .await
        .expect("exec");
    let mut stdin = p.stdin().expect("stdin");
    stdin.write_all(b"partial input").await.expect("write");
    stdin.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The client goes away without closing stdin or reading a byte.
    p.abort();
    drop(stdin);
    drop(p);
    let read = |path: &'static str| {
        let pods = pods.clone();
        async move {
            let mut p = pods
                .exec(
                    "orphans",
                    ["cat", path],
                    &AttachParams::default().stderr(false),
                )
                .await
                .ok()?;
            let out = read_all(p.stdout()).await;
            let ok = p.take_status()?.await?.status.as_deref() == Some("Success");
            ok.then(|| String::from_utf8_lossy(&out).into_owned())
        }
    };
    let done = eventually(20, "the orphaned exec to finish", || read("/tmp/done")).await;
    assert_eq!(done, "done\n");
    assert_eq!(read("/tmp/eof").await.as_deref(), Some("eof\n"));
    assert_eq!(read("/tmp/got").await.as_deref(), Some("partial input"));
    c.shutdown().await;
}

/// A TCP port nothing listens on right now (for a pod's server: every pod of every test shares
/// the host's loopback, see kubesim's README).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `Api::portforward` over WebSocket `v4.channel.k8s.io`: two ports on one connection, one to a
/// busybox `nc -e cat` echo server in the pod (1 MiB goes there and back byte for byte), one to
/// a port nothing in the pod listens on (its error channel carries containerd's "connection
/// refused"), and a port the *host* listens on, which the pod's network namespace would not
/// reach either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portforward_round_trips_bytes_and_refuses_closed_ports() {
    let c = start(Scenario::Empty).await;
    let client = client_for(c.kubeconfig()).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let (echo, closed) = (free_port(), free_port());
    let mut pod = sleeper("echo", "busybox:1.36");
    pod.spec.as_mut().expect("spec").containers[0].command = Some(vec![
        "nc".into(),
        "-ll".into(),
        "-p".into(),
        echo.to_string(),
        "-e".into(),
        "cat".into(),
    ]);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    running(&pods, "echo").await;

    let data: Vec<u8> = (0..(1024 * 1024 + 3) as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    // The server binds after the container starts; retry until it listens.
    let (got, refused) = eventually(30, "the echo server through port-forward", || {
        let (pods, data) = (pods.clone(), data.clone());
        async move {
            let mut pf = pods.portforward("echo", &[echo, closed]).await.ok()?;
            let closed_error = pf.take_error(closed).expect("error future");
            let echo_error = pf.take_error(echo).expect("error future");
            let stream = pf.take_stream(echo).expect("stream");
            let (mut r, mut w) = tokio::io::split(stream);
            let sent = data.clone();
            let writer = tokio::spawn(async move { w.write_all(&sent).await.map(|_| w) });
            let mut got = vec![0u8; data.len()];
            let read = tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut got)).await;
            if !matches!(read, Ok(Ok(_))) {
                // Not listening yet: the error channel says so.
                let e = echo_error.await;
                assert!(
                    e.as_deref()
                        .is_some_and(|m| m.contains("connection refused")),
                    "{e:?}"
                );
                return None;
            }
            drop(writer.await.expect("writer task").expect("write"));
            let refused = closed_error.await.expect("an error for the closed port");
            pf.abort();
            Some((got, refused))
        }
    })
    .await;
    assert!(got == data, "the bytes came back changed");
    assert!(
        refused.starts_with(&format!("error forwarding port {closed} to pod ")),
        "{refused}"
    );
    assert!(
        refused.contains(&format!(
            "failed to connect to localhost:{closed} inside namespace"
        )) && refused.contains("connect: connection refused"),
        "{refused}"
    );

    // The host listens on this one; the pod does not.
    let host = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let host_port = host.local_addr().expect("addr").port();
    let mut pf = pods
        .portforward("echo", &[host_port])
        .await
        .expect("portforward");
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        pf.take_error(host_port).expect("error future"),
    )
    .await
    .expect("an answer in time")
    .expect("an error for the host's port");
    assert!(err.contains("connection refused"), "{err}");
    let accepted = tokio::time::timeout(Duration::from_millis(200), host.accept()).await;
    assert!(accepted.is_err(), "the host's listener was reached");

    // A NotReady node stalls a forward in flight, both ways, and a new one is refused; the
    // bytes flow again once the node is back.
    let mut pf = pods
        .portforward("echo", &[echo])
        .await
        .expect("portforward");
    let mut s = pf.take_stream(echo).expect("stream");
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"ping");
    let node = pods
        .get("echo")
        .await
        .expect("get")
        .spec
        .and_then(|s| s.node_name)
        .expect("scheduled");
    c.fault(FaultRequest::NodeNotReady { node: node.clone() });
    s.write_all(b"pong").await.expect("write");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .is_err(),
        "bytes flowed through a NotReady node"
    );
    let refused = pods
        .portforward("echo", &[echo])
        .await
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("error dialing backend"),
        "{refused}"
    );
    c.fault(FaultRequest::NodeReady { node });
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("the forward resumes once the node is back")
        .expect("read");
    assert_eq!(&buf, b"pong");
    pf.abort();

    // RBAC: the WebSocket GET needs `create pods/portforward`, like exec (KEP-4006).
    let viewer = c
        .add_user(
            "viewer",
            vec![kubesim::rule(&["get", "list"], &["pods"], &["default"])],
        )
        .expect("user");
    let viewer_pods: Api<Pod> = Api::namespaced(client_for(&viewer).await, "default");
    let denied = api_error(
        viewer_pods
            .portforward("echo", &[echo])
            .await
            .err()
            .expect("a viewer cannot port-forward"),
    );
    assert_eq!(denied.code, 403, "{denied:?}");
    assert_eq!(
        denied.message,
        "pods \"echo\" is forbidden: User \"viewer\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"default\""
    );
    c.shutdown().await;
}

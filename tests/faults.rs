//! Fault tolerance against kubesim: outages and crashes during `create` and `restore` are
//! survived within the retry budget, with intact data; exhausted retries fail cleanly; a dead
//! node or a stalled stream never hangs the client.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use kubesim::{Cluster, FaultRequest};
use serde_json::Value;

/// Entries a restore run leaves on the volume if it does not clean up after itself.
fn leftovers(vol: &Path) -> Vec<String> {
    std::fs::read_dir(vol)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pvbackup-"))
        .collect()
}

async fn until_no_helper_pods(cluster: &Cluster, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !helper_pods(cluster).is_empty() {
        assert!(
            Instant::now() < deadline,
            "helper pods left: {:?}",
            helper_pods(cluster)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pseudo-random bytes (xorshift), incompressible enough that the stream takes its time.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn attempt_log(r: &Value) -> &Vec<Value> {
    r["attemptLog"]
        .as_array()
        .unwrap_or_else(|| panic!("no attemptLog in {r}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_during_create_is_survived_and_the_archive_is_whole() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let volume = cluster.volume_path("shop", "data-orders-db-0");
    let before = snapshot(&volume);
    // Slow the stream so that the outage lands in the middle of it.
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
            "5",
            "--retry-timeout",
            "2m",
            "-o",
            "json",
        ],
    );
    outage_while_streaming(&cluster, "shop", Duration::from_millis(1000)).await;
    let run = run.await.unwrap();
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let r = &json(&run)["results"][0];
    let log = attempt_log(r);
    assert!(log.len() >= 2, "the outage must have cost an attempt: {r}");
    assert_eq!(r["attempts"].as_u64(), Some(log.len() as u64));
    assert_eq!(log[0]["outcome"], "failed");
    assert!(
        !log[0]["error"].as_str().unwrap_or_default().is_empty(),
        "a failed attempt says why: {r}"
    );
    assert!(log[0]["retryAfterSeconds"].as_f64().unwrap() > 0.0);
    assert_eq!(log.last().unwrap()["outcome"], "ok");
    // Progress output tells the story too.
    assert!(
        run.stderr.contains("attempt 1 failed") && run.stderr.contains("retrying in"),
        "{}",
        run.stderr
    );
    let unpacked = tempfile::tempdir().unwrap();
    untar(Path::new(r["archive"].as_str().unwrap()), unpacked.path());
    assert_eq!(
        before,
        snapshot(unpacked.path()),
        "the archive is not the volume"
    );
    assert_eq!(before, snapshot(&volume), "the source volume changed");
    // One archive, its entries stream and its manifest header: the failed attempt left no
    // partial file.
    assert_eq!(
        files_under(dest.path()).len(),
        3,
        "{:?}",
        files_under(dest.path())
    );
    until_no_helper_pods(&cluster, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_during_restore_is_survived_and_the_volume_is_exactly_the_backup() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path("shop", "scratch-unattached");
    // Enough data that the extraction takes a few seconds at the capped rate below.
    std::fs::write(vol.join("blob.bin"), noise(6 << 20, 7)).unwrap();
    let before = state(&vol);
    let manifest = backup(&cluster, "shop", "scratch-unattached", dest.path()).await;
    // Damage the volume so that the restore has work to do.
    std::fs::remove_file(vol.join("blob.bin")).unwrap();
    std::fs::write(vol.join("not-in-the-backup"), b"x").unwrap();
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 2 << 20,
    });
    let run = spawn_plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "--yes",
            "--retries",
            "5",
            "--retry-timeout",
            "2m",
            "-o",
            "json",
        ],
    );
    outage_while_streaming(&cluster, "shop", Duration::from_millis(1200)).await;
    let run = run.await.unwrap();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = json(&run);
    assert_eq!(out["verified"], true);
    let log = attempt_log(&out);
    assert!(
        log.len() >= 2,
        "the outage must have cost an attempt: {out}"
    );
    assert_eq!(log[0]["outcome"], "failed");
    assert!(!log[0]["error"].as_str().unwrap_or_default().is_empty());
    assert_eq!(log.last().unwrap()["outcome"], "ok");
    // Exactly the backup's files: nothing missing, nothing extra, no staging left over.
    assert_same(&before, &state(&vol), "after the restore");
    assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
    until_no_helper_pods(&cluster, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_restore_is_retried_from_a_clean_volume() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path("shop", "scratch-unattached");
    let before = state(&vol);
    let manifest = backup(&cluster, "shop", "scratch-unattached", dest.path()).await;
    std::fs::write(vol.join("config/settings.conf"), b"changed\n").unwrap();
    // The first session to print 1 KiB is the in-pod verification of the staged tree: the
    // container crashes with staging half-checked.
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 1024,
        count: 1,
    });
    let run = plugin(
        &cluster,
        &["restore", manifest.to_str().unwrap(), "--yes", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = json(&run);
    let log = attempt_log(&out);
    assert_eq!(out["attempts"], 2, "{out}");
    assert!(
        log[0]["error"].as_str().unwrap().contains("exit code 137"),
        "{out}"
    );
    assert_same(&before, &state(&vol), "after the retried restore");
    assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
    until_no_helper_pods(&cluster, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_helper_pod_is_replaced_and_the_archive_is_whole() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams};
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let volume = cluster.volume_path("shop", "data-orders-db-0");
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
            "-o",
            "json",
        ],
    );
    wait_for_running_helper(&cluster, "shop").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // What an eviction does (the Eviction API ends in a graceful delete of the pod).
    let helper = helper_pods(&cluster)
        .pop()
        .expect("a helper pod")
        .split_once('/')
        .map(|(_, n)| n.to_string())
        .unwrap();
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "shop");
    pods.delete(&helper, &DeleteParams::default())
        .await
        .unwrap();
    cluster.fault(FaultRequest::Clear);
    let run = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the backup finished")
        .unwrap();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = &json(&run)["results"][0];
    let log = attempt_log(r);
    assert!(
        log.len() >= 2,
        "the eviction must have cost an attempt: {r}"
    );
    assert_eq!(log[0]["outcome"], "failed");
    let unpacked = tempfile::tempdir().unwrap();
    untar(Path::new(r["archive"].as_str().unwrap()), unpacked.path());
    assert_eq!(snapshot(&volume), snapshot(unpacked.path()));
    until_no_helper_pods(&cluster, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_that_outlast_the_retries_fail_cleanly() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let volume = cluster.volume_path("shop", "data-orders-db-0");
    let before = snapshot(&volume);
    // Every exec session dies after 1 MiB of output, for as long as the fault lasts.
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
            "1",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let r = &json(&run)["results"][0];
    assert_eq!(r["status"], "failed");
    assert_eq!(r["attempts"], 2, "{r}");
    let log = attempt_log(r);
    assert!(log.iter().all(|a| a["outcome"] == "failed"), "{r}");
    assert!(log[0]["retryAfterSeconds"].as_f64().is_some(), "{r}");
    assert!(log[1]["retryAfterSeconds"].is_null(), "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("--retries 1"),
        "the error names the limit that was reached: {r}"
    );
    assert!(
        files_under(dest.path()).is_empty(),
        "no archive, manifest or partial file: {:?}",
        files_under(dest.path())
    );
    until_no_helper_pods(&cluster, 20).await;
    assert_eq!(before, snapshot(&volume), "the source volume changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_are_not_retried() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    cluster.fault(FaultRequest::FailImage {
        image: "registry.invalid/busybox:1.36".into(),
    });
    let started = Instant::now();
    let run = plugin(
        &cluster,
        &[
            "create",
            "data-orders-db-0",
            "-n",
            "shop",
            "--to",
            dest.path().to_str().unwrap(),
            "--image",
            "registry.invalid/busybox:1.36",
            "--retries",
            "5",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let r = &json(&run)["results"][0];
    assert_eq!(
        r["attempts"], 1,
        "an image that cannot be pulled is not retried: {r}"
    );
    assert!(
        r["error"].as_str().unwrap().contains("cannot be pulled"),
        "{r}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    until_no_helper_pods(&cluster, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_going_not_ready_mid_backup_ends_the_wait_with_an_explanation() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 4 << 20,
    });
    let started = Instant::now();
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
    wait_for_running_helper(&cluster, "shop").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let node = cluster
        .objects("pods", Some("shop"))
        .iter()
        .find(|p| p["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl-pvbackup")
        .and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
        .expect("the helper pod has a node");
    // The node drops off the network: the stream stalls, it does not end.
    cluster.fault(FaultRequest::NodeNotReady { node: node.clone() });
    let run = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the client gave up in bounded time")
        .unwrap();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&node) && run.stderr.contains("NotReady"),
        "the user is told what happened: {}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(
        files_under(dest.path()).is_empty(),
        "{:?}",
        files_under(dest.path())
    );
    // The helper's deletion completes once the node is back (until then, as for real, it is
    // stuck Terminating on a node nobody can reach).
    cluster.fault(FaultRequest::NodeReady { node });
    until_no_helper_pods(&cluster, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_given_up_after_the_stall_timeout() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    // One 512-byte chunk, then nothing for minutes: a connection that is open but dead.
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 1,
    });
    let started = Instant::now();
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
            "--stall-timeout",
            "3s",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("--stall-timeout") && run.stderr.contains("3s"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
    assert!(files_under(dest.path()).is_empty());
    until_no_helper_pods(&cluster, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_flags_are_validated() {
    let cluster = demo().await;
    for (args, needle) in [
        (&["--retry-timeout", "5 parsecs"][..], "--retry-timeout"),
        (&["--retry-timeout", "30"][..], "--retry-timeout"),
        (&["--retry-timeout", "0s"][..], "--retries 0"),
        (&["--stall-timeout", "10ms"][..], "--stall-timeout"),
    ] {
        let mut argv = vec!["create", "-n", "shop", "--to", "/tmp/never-written"];
        argv.extend_from_slice(args);
        let r = plugin(&cluster, &argv).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    assert!(!Path::new("/tmp/never-written").exists());
    assert!(helper_pods(&cluster).is_empty());
}

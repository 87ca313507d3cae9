//! `drill` against kubesim: a good backup restores intact (exit 0), a damaged one does not
//! (exit 3), and either way no scratch PVC, no helper pod and no change to the source remain.

mod common;

use std::time::Duration;

use common::*;
use kubesim::Cluster;
use serde_json::Value;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";

fn pvc_names(cluster: &Cluster, ns: &str) -> Vec<String> {
    let mut v: Vec<String> = cluster
        .objects("persistentvolumeclaims", Some(ns))
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// Every PVC and helper pod a drill made is gone (a PVC held by its protection finalizer
/// while a pod still used it would show here).
fn assert_clean(cluster: &Cluster, ns: &str, pvcs_before: &[String]) {
    assert_eq!(
        pvc_names(cluster, ns),
        pvcs_before,
        "the drill left a scratch PVC"
    );
    assert!(
        cluster
            .objects("persistentvolumeclaims", None)
            .iter()
            .all(|p| p["metadata"]["labels"]["pvbackup.dev/drill"].is_null()),
        "a drill PVC is left somewhere"
    );
    assert!(
        helper_pods(cluster).is_empty(),
        "helper pods left: {:?}",
        helper_pods(cluster)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_backup_drills_intact_and_leaves_nothing() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let source = cluster.volume_path(NS, PVC);
    let before = snapshot(&source);
    let pvcs_before = pvc_names(&cluster, NS);
    let run = plugin(
        &cluster,
        &["drill", manifest.to_str().unwrap(), "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = json(&run);
    assert_eq!(r["verdict"], "intact", "{r:#}");
    assert_eq!(r["exitCode"], 0);
    assert_eq!(r["namespace"], NS);
    assert_eq!(r["source"], format!("{NS}/{PVC}"));
    let scratch = r["scratchPvc"].as_str().unwrap();
    assert!(
        scratch.starts_with("pvbackup-drill-scratch-unattached-"),
        "{scratch}"
    );
    assert!(!pvcs_before.contains(&scratch.to_string()));
    let m: Value = whole_manifest(&manifest);
    assert_eq!(r["backupId"], m["backup_id"]);
    assert_eq!(r["bytes"], m["uncompressed_size"]);
    assert_eq!(r["storedBytes"], m["archive"]["size"]);
    assert_eq!(
        r["size"], m["pvc"]["capacity"],
        "same size as the backed-up PVC"
    );
    assert_eq!(r["storageClass"], m["pvc"]["storage_class"]);
    assert!(r["files"].as_u64().unwrap() > 50, "{r}");
    let t = r["timeToRestoreSeconds"].as_f64().unwrap();
    assert!(t > 0.0, "{r}");
    let tp = r["throughputBytesPerSecond"].as_f64().unwrap();
    assert!(
        (tp - r["bytes"].as_f64().unwrap() / t).abs() < 1.0,
        "throughput is bytes over time-to-restore: {r}"
    );
    assert_eq!(r["attempts"], 1);
    assert_eq!(r["attemptLog"][0]["outcome"], "ok");
    assert_eq!(r["cleanedUp"], true);
    assert!(r["error"].is_null());
    assert_clean(&cluster, NS, &pvcs_before);
    assert_eq!(
        before,
        snapshot(&source),
        "the drill touched the source volume"
    );

    // The table says the same for people.
    let run = plugin(&cluster, &["drill", manifest.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("VERDICT"), "{}", run.stdout);
    assert!(
        run.stdout.contains("intact") && run.stdout.contains("deleted"),
        "{}",
        run.stdout
    );
    assert_clean(&cluster, NS, &pvcs_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flip_in_the_archive_is_exit_3_and_leaves_nothing() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let archive = manifest
        .parent()
        .unwrap()
        .join(m["archive"]["file_name"].as_str().unwrap());
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&archive, bytes).unwrap();
    let pvcs_before = pvc_names(&cluster, NS);
    let run = plugin(
        &cluster,
        &["drill", manifest.to_str().unwrap(), "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let r = json(&run);
    assert_eq!(r["verdict"], "corrupt", "{r:#}");
    assert_eq!(r["exitCode"], 3);
    assert_eq!(r["attempts"], 1, "integrity failures are not retried: {r}");
    assert_eq!(r["throughputBytesPerSecond"], 0.0);
    assert_eq!(r["cleanedUp"], true);
    assert!(!r["error"].as_str().unwrap().is_empty());
    assert!(
        run.stderr.contains("does not restore intact"),
        "{}",
        run.stderr
    );
    assert_clean(&cluster, NS, &pvcs_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_the_files_do_not_match_is_exit_3_and_leaves_nothing() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    // A manifest whose checksum for one file disagrees with the archive (it parses fine: only
    // comparing the restored file with it shows the problem).
    let mut m: Value = whole_manifest(&manifest);
    let entry = m["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["sha256"].is_string())
        .expect("a file entry");
    let path = entry["path"].as_str().unwrap().to_string();
    let sum = entry["sha256"].as_str().unwrap();
    let flipped = format!(
        "{}{}",
        if sum.starts_with('0') { '1' } else { '0' },
        &sum[1..]
    );
    entry["sha256"] = Value::String(flipped);
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let pvcs_before = pvc_names(&cluster, NS);
    let run = plugin(
        &cluster,
        &["drill", manifest.to_str().unwrap(), "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let r = json(&run);
    assert_eq!(r["verdict"], "corrupt", "{r:#}");
    let err = r["error"].as_str().unwrap();
    assert!(
        err.contains(&path) && err.contains("sha256"),
        "the error names the file and the check: {err}"
    );
    assert_eq!(r["cleanedUp"], true);
    assert_clean(&cluster, NS, &pvcs_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_drill_cleans_up_and_exits_130() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let pvcs_before = pvc_names(&cluster, NS);
    // Slow the stream so that the signal lands while the scratch volume is being written.
    cluster.fault(kubesim::FaultRequest::Bandwidth {
        bytes_per_second: 64 << 10,
    });
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"))
        .args(["drill", manifest.to_str().unwrap()])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_running_helper(&cluster, NS).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_ne!(
        pvc_names(&cluster, NS),
        pvcs_before,
        "the scratch PVC exists mid-drill"
    );
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
    assert_clean(&cluster, NS, &pvcs_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_backup_or_a_too_small_size_changes_nothing() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let pvcs_before = pvc_names(&cluster, NS);
    let r = plugin(
        &cluster,
        &[
            "drill",
            "no-such-id/shop/x",
            "--from",
            dest.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no manifest"), "{}", r.stderr);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let r = plugin(
        &cluster,
        &["drill", manifest.to_str().unwrap(), "--size", "1Ki"],
    )
    .await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("--size"), "{}", r.stderr);
    assert_clean(&cluster, NS, &pvcs_before);
}

/// `drill --latest NS/PVC --from DEST` drills the newest complete backup of that PVC (what a
/// schedule's drill CronJob runs); with none there, exit 2 names the PVC and the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_drills_the_newest_complete_backup() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let older = whole_manifest(&backup(&cluster, NS, PVC, dest.path()).await);
    // A later second, and different content, so the two backups differ in id and size.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let source = cluster.volume_path(NS, PVC);
    std::fs::write(source.join("only-in-the-newer.bin"), vec![7u8; 40_000]).unwrap();
    let newer = whole_manifest(&backup(&cluster, NS, PVC, dest.path()).await);
    assert_ne!(older["backup_id"], newer["backup_id"]);
    assert_ne!(older["uncompressed_size"], newer["uncompressed_size"]);
    // An archive without a manifest (an interrupted backup) newer than both is not complete,
    // so it is not the latest.
    let leftover = dest.path().join("29991231T235959Z-ffff").join(NS);
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join(format!("{PVC}.tar.zst")), b"partial").unwrap();
    let pvcs_before = pvc_names(&cluster, NS);

    let target = format!("{NS}/{PVC}");
    let from = dest.path().to_str().unwrap();
    let run = plugin(
        &cluster,
        &["drill", "--latest", &target, "--from", from, "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = json(&run);
    assert_eq!(r["backupId"], newer["backup_id"], "{r:#}");
    assert_eq!(r["bytes"], newer["uncompressed_size"]);
    assert_eq!(r["verdict"], "intact");
    assert_clean(&cluster, NS, &pvcs_before);

    // No complete backup of that PVC: a usage error, before any cluster object is made.
    let run = plugin(
        &cluster,
        &["drill", "--latest", &format!("{NS}/nope"), "--from", from],
    )
    .await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("no complete backup of shop/nope at"),
        "{}",
        run.stderr
    );
    // BACKUP must be NAMESPACE/PVC with --latest; --latest needs --from.
    let run = plugin(&cluster, &["drill", "--latest", PVC, "--from", from]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("BACKUP is NAMESPACE/PVC"),
        "{}",
        run.stderr
    );
    let run = plugin(&cluster, &["drill", "--latest", &target]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--from"), "{}", run.stderr);
    assert_clean(&cluster, NS, &pvcs_before);
}

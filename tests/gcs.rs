//! Backups to and from Google Cloud Storage, end to end: kubesim for the cluster,
//! fake-gcs-server on loopback for the bucket (one of each per test). How fake-gcs-server
//! differs from GCS, and what the adapter in front of it does, is in `common/fake_gcs.rs`.

mod common;

use std::time::Duration;

use common::fake_gcs::FakeGcs;
use common::*;
use kubesim::{Cluster, FaultRequest};
use serde_json::Value;
use sha2::Digest;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";
const BUCKET: &str = "pv-backups";

/// Host settings that would point the plugin at a real Google account.
const SCRUB: &[&str] = &[
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "SERVICE_ACCOUNT",
    "GOOGLE_BUCKET",
    "GCE_METADATA_IP",
];

fn command(cluster: &Cluster, gcs: &FakeGcs, args: &[&str]) -> std::process::Command {
    let mut c = plugin_command(cluster.kubeconfig(), args, &gcs.env());
    for k in SCRUB {
        c.env_remove(k);
    }
    c
}

async fn run_gcs(cluster: &Cluster, gcs: &FakeGcs, args: &[&str]) -> Run {
    let mut c = command(cluster, gcs, args);
    let out = tokio::task::spawn_blocking(move || c.output().expect("the plugin runs"))
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_verify_restore_through_a_bucket() {
    let cluster = demo().await;
    let gcs = FakeGcs::start();
    gcs.create_bucket(BUCKET);
    let vol = cluster.volume_path(NS, PVC);
    // 12 MiB that zstd cannot shrink: three parts at --part-size 5, so the archive goes up
    // as a multipart upload and the manifest as one PUT.
    random_file(&vol.join("blob.bin"), 12 << 20, 42);
    let before = snapshot(&vol);

    let dest = format!("gs://{BUCKET}/nightly");
    let run = run_gcs(
        &cluster,
        &gcs,
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            &dest,
            "--part-size",
            "5",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = json(&run);
    let id = out["backupId"].as_str().unwrap().to_string();
    let r = &out["results"][0];
    let archive_url = r["archive"].as_str().unwrap();
    let manifest_url = r["manifest"].as_str().unwrap();
    assert_eq!(
        archive_url,
        format!("gs://{BUCKET}/nightly/{id}/{NS}/{PVC}.tar.zst")
    );
    assert_eq!(
        manifest_url,
        format!("gs://{BUCKET}/nightly/{id}/{NS}/{PVC}.manifest.json")
    );
    assert_eq!(
        gcs.objects(BUCKET),
        vec![
            format!("nightly/{id}/{NS}/{PVC}.entries.jsonl.zst"),
            format!("nightly/{id}/{NS}/{PVC}.manifest.json"),
            format!("nightly/{id}/{NS}/{PVC}.tar.zst"),
        ]
    );
    assert!(gcs.open_uploads().is_empty(), "{:?}", gcs.open_uploads());
    // The archive went up in parts; the entries stream and the manifest header (schema 2)
    // in one PUT each.
    assert_eq!(gcs.finished_uploads(), (2, 1));
    // What the bucket holds is what the manifest describes, byte for byte, and unpacks with
    // the system's tools to the volume's tree.
    let stored = gcs.object(BUCKET, &format!("nightly/{id}/{NS}/{PVC}.tar.zst"));
    assert!(stored.len() > 10 << 20, "{}", stored.len());
    let manifest: Value = serde_json::from_slice(
        &gcs.object(BUCKET, &format!("nightly/{id}/{NS}/{PVC}.manifest.json")),
    )
    .unwrap();
    assert_eq!(
        manifest["archive"]["size"].as_u64().unwrap(),
        stored.len() as u64
    );
    assert_eq!(
        manifest["archive"]["sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(&stored))
    );
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("a.tar.zst");
    std::fs::write(&file, &stored).unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    untar(&file, unpacked.path());
    assert_eq!(snapshot(unpacked.path()), before);

    let run = run_gcs(&cluster, &gcs, &["list", &dest, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let items = json(&run)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["restorable"], true);
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["manifest"], manifest_url);

    let backup = format!("{id}/{NS}/{PVC}");
    let run = run_gcs(&cluster, &gcs, &["verify", &backup, "--from", &dest]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("OK"), "{}", run.stdout);
    let run = run_gcs(&cluster, &gcs, &["verify", manifest_url, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json(&run)["ok"], true);

    let run = run_gcs(
        &cluster,
        &gcs,
        &[
            "restore",
            &backup,
            "--from",
            &dest,
            "-n",
            NS,
            "--to-pvc",
            "from-gcs",
            "--create-pvc",
            "--size",
            "64Mi",
            "--yes",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(json(&run)["verified"], true);
    assert_eq!(snapshot(&cluster.volume_path(NS, "from-gcs")), before);
    assert!(
        helper_pods(&cluster).is_empty(),
        "{:?}",
        helper_pods(&cluster)
    );

    // One flipped byte in the bucket: verify exits 3, restore refuses (3), the volume restored
    // before is untouched.
    let mut damaged = stored.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x01;
    gcs.put_object(
        BUCKET,
        &format!("nightly/{id}/{NS}/{PVC}.tar.zst"),
        &damaged,
    );
    let run = run_gcs(&cluster, &gcs, &["verify", &backup, "--from", &dest]).await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("sha256"), "{}", run.stdout);
    let run = run_gcs(
        &cluster,
        &gcs,
        &[
            "restore", &backup, "--from", &dest, "-n", NS, "--to-pvc", "from-gcs", "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(snapshot(&cluster.volume_path(NS, "from-gcs")), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_upload_aborts_it_and_leaves_nothing() {
    let cluster = demo().await;
    let gcs = FakeGcs::start();
    gcs.create_bucket(BUCKET);
    let dest = format!("gs://{BUCKET}/b");
    let vol = cluster.volume_path(NS, PVC);
    random_file(&vol.join("blob.bin"), 24 << 20, 7);
    // Slow enough to be stopped between parts.
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 4 << 20,
    });
    let child = command(
        &cluster,
        &gcs,
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            &dest,
            "--part-size",
            "5",
            "--retries",
            "0",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while gcs.open_uploads().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the multipart upload never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    assert!(gcs.objects(BUCKET).is_empty(), "{:?}", gcs.objects(BUCKET));
    assert!(
        gcs.open_uploads().is_empty(),
        "a multipart upload was left open: {:?}",
        gcs.open_uploads()
    );
    assert!(
        helper_pods(&cluster).is_empty(),
        "{:?}",
        helper_pods(&cluster)
    );
    cluster.fault(FaultRequest::Clear);
    let run = run_gcs(&cluster, &gcs, &["list", &dest, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(json(&run)["items"].as_array().unwrap().is_empty());
}

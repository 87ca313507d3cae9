//! Backups to and from an S3 bucket, end to end: kubesim for the cluster, moto's S3 server on
//! loopback for the bucket (one of each per test).

mod common;

use std::time::Duration;

use common::moto::{Moto, SECRET};
use common::*;
use kubesim::{Cluster, FaultRequest};
use serde_json::Value;
use sha2::Digest;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";
const BUCKET: &str = "pv-backups";

async fn run_s3(cluster: &Cluster, moto: &Moto, args: &[&str]) -> Run {
    plugin_env(cluster.kubeconfig(), args, &moto.env()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_verify_restore_through_a_bucket() {
    let cluster = demo().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let vol = cluster.volume_path(NS, PVC);
    // 20 MiB that zstd cannot shrink: three parts at the default 8 MiB part size.
    random_file(&vol.join("blob.bin"), 20 << 20, 42);
    let before = snapshot(&vol);

    let dest = format!("s3://{BUCKET}/nightly");
    let run = run_s3(
        &cluster,
        &moto,
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            &dest,
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
        format!("s3://{BUCKET}/nightly/{id}/{NS}/{PVC}.tar.zst")
    );
    assert_eq!(
        manifest_url,
        format!("s3://{BUCKET}/nightly/{id}/{NS}/{PVC}.manifest.json")
    );
    assert!(r["storedBytes"].as_u64().unwrap() > 16 << 20, "{r}");
    let mut keys = moto.keys(BUCKET);
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("nightly/{id}/{NS}/{PVC}.entries.jsonl.zst"),
            format!("nightly/{id}/{NS}/{PVC}.manifest.json"),
            format!("nightly/{id}/{NS}/{PVC}.tar.zst"),
        ]
    );
    assert!(moto.open_uploads(BUCKET).is_empty());
    // What the bucket holds is what the manifest describes, byte for byte.
    let stored = moto.object(BUCKET, &format!("nightly/{id}/{NS}/{PVC}.tar.zst"));
    let manifest: Value = serde_json::from_slice(
        &moto.object(BUCKET, &format!("nightly/{id}/{NS}/{PVC}.manifest.json")),
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
    // A user without this plugin can unpack it.
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("a.tar.zst");
    std::fs::write(&file, &stored).unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    untar(&file, unpacked.path());
    assert_eq!(snapshot(unpacked.path()), before);

    let run = run_s3(&cluster, &moto, &["list", &dest, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let items = json(&run)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["restorable"], true);
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["manifest"], manifest_url);

    let backup = format!("{id}/{NS}/{PVC}");
    let run = run_s3(&cluster, &moto, &["verify", &backup, "--from", &dest]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("OK"), "{}", run.stdout);
    // A manifest URL works without --from, for verify and inspect.
    let run = run_s3(&cluster, &moto, &["verify", manifest_url, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json(&run)["ok"], true);
    let run = run_s3(&cluster, &moto, &["inspect", archive_url, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json(&run)["backup_id"], id.as_str());

    // Restore from the bucket into a new PVC: the same tree.
    let run = run_s3(
        &cluster,
        &moto,
        &[
            "restore",
            &backup,
            "--from",
            &dest,
            "-n",
            NS,
            "--to-pvc",
            "from-s3",
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
    assert_eq!(snapshot(&cluster.volume_path(NS, "from-s3")), before);
    assert!(
        helper_pods(&cluster).is_empty(),
        "{:?}",
        helper_pods(&cluster)
    );

    // Damage in the bucket is found by verify (exit 3) and refused by restore.
    let mut damaged = stored.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let (code, body) = moto.s3(
        "PUT",
        &format!("/{BUCKET}/nightly/{id}/{NS}/{PVC}.tar.zst"),
        &damaged,
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let run = run_s3(&cluster, &moto, &["verify", &backup, "--from", &dest]).await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("sha256"), "{}", run.stdout);
    // restore reads the archive once, checking it as it streams into the helper pod; into a new
    // PVC (room for it, so the damage is what stops it), which is left empty.
    let run = run_s3(
        &cluster,
        &moto,
        &[
            "restore",
            &backup,
            "--from",
            &dest,
            "--to-pvc",
            "damaged-copy",
            "--create-pvc",
            "--size",
            "64Mi",
            "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    let copy = cluster.volume_path(NS, "damaged-copy");
    let left: Vec<_> = std::fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "lost+found")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Starts `create` to the bucket as a child process, slowed down so it can be stopped
/// mid-upload, and waits until its multipart upload has begun.
async fn create_in_background(cluster: &Cluster, moto: &Moto, dest: &str) -> std::process::Child {
    let vol = cluster.volume_path(NS, PVC);
    random_file(&vol.join("blob.bin"), 24 << 20, 7);
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 4 << 20,
    });
    let child = plugin_command(
        cluster.kubeconfig(),
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            dest,
            "--part-size",
            "5",
            "--retries",
            "0",
        ],
        &moto.env(),
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while moto.open_uploads(BUCKET).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the multipart upload never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child
}

async fn wait(child: std::process::Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_upload_aborts_it_and_leaves_no_backup() {
    let cluster = demo().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dest = format!("s3://{BUCKET}/b");
    let child = create_in_background(&cluster, &moto, &dest).await;
    // SAFETY: the pid is our own running child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = wait(child).await;
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(moto.keys(BUCKET).is_empty(), "{:?}", moto.keys(BUCKET));
    assert!(
        moto.open_uploads(BUCKET).is_empty(),
        "a multipart upload was left open: {:?}",
        moto.open_uploads(BUCKET)
    );
    assert!(
        helper_pods(&cluster).is_empty(),
        "{:?}",
        helper_pods(&cluster)
    );
    let run = run_s3(&cluster, &moto, &["list", &dest, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(json(&run)["items"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_leaves_nothing_restorable() {
    let cluster = demo().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dest = format!("s3://{BUCKET}/b");
    let mut child = create_in_background(&cluster, &moto, &dest).await;
    // No cleanup is possible after SIGKILL: the upload stays open until the bucket's
    // lifecycle rule (README) removes it, but it is invisible and nothing names it.
    child.kill().unwrap();
    let _ = wait(child).await;
    assert!(moto.keys(BUCKET).is_empty(), "{:?}", moto.keys(BUCKET));
    let run = run_s3(&cluster, &moto, &["list", &dest, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(json(&run)["items"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_upload_aborts_the_upload() {
    let cluster = demo().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    random_file(&cluster.volume_path(NS, PVC).join("blob.bin"), 16 << 20, 9);
    // The tar stream dies after 12 MiB, past the first two 5 MiB parts.
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 12 << 20,
        count: 0,
    });
    let dest = format!("s3://{BUCKET}/b");
    let run = run_s3(
        &cluster,
        &moto,
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
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(moto.keys(BUCKET).is_empty(), "{:?}", moto.keys(BUCKET));
    assert!(
        moto.open_uploads(BUCKET).is_empty(),
        "{:?}",
        moto.open_uploads(BUCKET)
    );
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_buckets_that_do_not_work_are_named() {
    let cluster = demo().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let (key_id, secret) = moto.enable_auth();
    let dest = format!("s3://{BUCKET}/x");
    let env_with = |pairs: &[(&str, &str)]| {
        let mut env = moto.env();
        for (k, v) in pairs {
            env.retain(|(n, _)| n != k);
            env.push((k.to_string(), v.to_string()));
        }
        env
    };

    // The right keys work.
    let good = env_with(&[
        ("AWS_ACCESS_KEY_ID", &key_id),
        ("AWS_SECRET_ACCESS_KEY", &secret),
    ]);
    let run = plugin_env(cluster.kubeconfig(), &["list", &dest], &good).await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    // A wrong secret: exit 1, the variables to check are named, the secret is not printed.
    let wrong_secret = "wrong-secret-do-not-print-0123456789";
    let bad = env_with(&[
        ("AWS_ACCESS_KEY_ID", &key_id),
        ("AWS_SECRET_ACCESS_KEY", wrong_secret),
    ]);
    let run = plugin_env(cluster.kubeconfig(), &["list", &dest], &bad).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
    assert!(
        run.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("AWS_SECRET_ACCESS_KEY"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(wrong_secret), "{}", run.stderr);
    assert!(!run.stdout.contains(wrong_secret));
    // An unknown key id, from create: refused before any helper pod exists.
    let unknown = env_with(&[("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000")]);
    let run = plugin_env(
        cluster.kubeconfig(),
        &["create", PVC, "-n", NS, "--all-pvcs", "--to", &dest],
        &unknown,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("InvalidAccessKeyId"), "{}", run.stderr);
    assert!(!run.stderr.contains(SECRET), "{}", run.stderr);
    assert!(cluster
        .objects("pods", Some(NS))
        .iter()
        .all(|p| p["metadata"]["labels"]["app.kubernetes.io/managed-by"] != "kubectl-pvbackup"));

    // A profile in ~/.aws/credentials, chosen with AWS_PROFILE.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!("[backup]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        format!(
            "[profile backup]\nregion = us-east-1\nendpoint_url = {}\n",
            moto.endpoint
        ),
    )
    .unwrap();
    let mut profile_env: Vec<(String, String)> = moto
        .env()
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "AWS_ACCESS_KEY_ID"
                    | "AWS_SECRET_ACCESS_KEY"
                    | "AWS_CONFIG_FILE"
                    | "AWS_SHARED_CREDENTIALS_FILE"
                    | "AWS_ENDPOINT_URL"
            )
        })
        .collect();
    profile_env.push(("HOME".into(), home.path().display().to_string()));
    profile_env.push(("AWS_PROFILE".into(), "backup".into()));
    let run = plugin_env(
        cluster.kubeconfig(),
        &["list", &dest, "-o", "json"],
        &profile_env,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // A profile that is not there.
    let mut missing = profile_env.clone();
    missing.retain(|(k, _)| k != "AWS_PROFILE");
    missing.push(("AWS_PROFILE".into(), "nope".into()));
    let run = plugin_env(cluster.kubeconfig(), &["list", &dest], &missing).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("AWS_PROFILE=nope"), "{}", run.stderr);
    assert!(!run.stderr.contains(&secret), "{}", run.stderr);

    // No credentials at all (and instance metadata off): exit 2, the variables named.
    let mut none = profile_env.clone();
    none.retain(|(k, _)| k != "AWS_PROFILE" && k != "HOME");
    none.push(("HOME".into(), "/nonexistent".into()));
    let run = plugin_env(cluster.kubeconfig(), &["list", &dest], &none).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("no AWS credentials found"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", run.stderr);

    // A bucket that does not exist: exit 1, named, before any helper pod.
    let run = plugin_env(
        cluster.kubeconfig(),
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            "s3://no-such-bucket/x",
        ],
        &good,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("Bucket no-such-bucket does not exist"),
        "{}",
        run.stderr
    );
    assert!(helper_pods(&cluster).is_empty());
    let run = plugin_env(
        cluster.kubeconfig(),
        &["verify", "id/ns/pvc", "--from", "s3://no-such-bucket"],
        &good,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);

    // Malformed URLs are usage errors.
    let run = plugin_env(cluster.kubeconfig(), &["list", "s3://"], &good).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("names no bucket"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_an_unreachable_store_is_given_up_on() {
    let cluster = demo().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    // Every third request to the store is answered 503 SlowDown.
    let proxy = common::moto::ThrottlingProxy::start(moto.port, 3);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    random_file(&cluster.volume_path(NS, PVC).join("blob.bin"), 12 << 20, 3);
    let dest = format!("s3://{BUCKET}/t");
    let run = run_s3(
        &cluster,
        &moto,
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            &dest,
            "--endpoint",
            &endpoint,
            "--part-size",
            "5",
            "--retries",
            "0",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let id = json(&run)["backupId"].as_str().unwrap().to_string();
    let run = run_s3(
        &cluster,
        &moto,
        &[
            "verify",
            &format!("{id}/{NS}/{PVC}"),
            "--from",
            &dest,
            "--endpoint",
            &endpoint,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let throttled = proxy.throttled.load(std::sync::atomic::Ordering::SeqCst);
    assert!(throttled >= 3, "only {throttled} requests were throttled");
    assert!(moto.open_uploads(BUCKET).is_empty());

    // Nothing listens: a bounded number of retries, then a clear error (exit 1).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let run = run_s3(&cluster, &moto, &["list", &dest, "--endpoint", &dead]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot reach the store"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("after 8 retries"), "{}", run.stderr);
}

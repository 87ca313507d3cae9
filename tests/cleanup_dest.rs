//! `cleanup --to DEST`, end to end: a real `create` is killed with SIGKILL mid-stream (slowed
//! by a kubesim bandwidth fault so the kill lands mid-write), and cleanup removes what it left
//! at a directory, an S3 bucket (moto) and an Azure container (Azurite), and nothing else.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::azurite::Azurite;
use common::moto::Moto;
use common::*;
use kubesim::{Cluster, FaultRequest};
use serde_json::Value;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";
const BUCKET: &str = "pv-backups";
/// A backup id of `create`'s form, for leftovers a test places itself.
const OLD_ID: &str = "20261101T000000Z-beef";

/// Makes `path` look untouched for `hours` (its mtime, which is what ages a local file).
fn age_by(path: &Path, hours: u64) {
    let t = SystemTime::now() - Duration::from_secs(hours * 3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn partials(dir: &Path) -> BTreeSet<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".partial-"))
        })
        .collect()
}

fn create_args(dest: &str) -> Vec<&str> {
    vec![
        "create",
        PVC,
        "-n",
        NS,
        "--all-pvcs",
        "--to",
        dest,
        "--retries",
        "0",
    ]
}

/// Starts `create` into the directory `dest`, waits until its partial archive holds data,
/// kills it with SIGKILL, and returns the partial file it left.
async fn killed_create_to_dir(cluster: &Cluster, dest: &Path) -> PathBuf {
    let before = partials(dest);
    let mut child = plugin_command(
        cluster.kubeconfig(),
        &create_args(dest.to_str().unwrap()),
        &[],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let writing = partials(dest)
            .into_iter()
            .find(|p| !before.contains(p) && std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
        if let Some(p) = writing {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "create never started writing into {}",
            dest.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        partial.exists(),
        "SIGKILL gives create no chance to remove {}",
        partial.display()
    );
    partial
}

fn item<'a>(report: &'a Value, location: &str) -> &'a Value {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["location"] == location)
        .unwrap_or_else(|| panic!("{location} is not in the report: {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_create_leaves_a_partial_file_that_cleanup_removes_and_nothing_else() {
    let cluster = demo().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&cluster.volume_path(NS, PVC).join("blob.bin"), 24 << 20, 7);

    // A complete backup, two days old: older than any --older-than here, and still kept.
    let manifest = backup(&cluster, NS, PVC, d).await;
    for f in files_under(d) {
        age_by(&f, 48);
    }
    let complete = snapshot(manifest.parent().unwrap().parent().unwrap());
    // An archive whose manifest was never written (create died between the two), two days old.
    let archive = manifest.with_file_name(format!("{PVC}.tar.zst"));
    let orphan = d.join(OLD_ID).join(NS).join(format!("{PVC}.tar.zst"));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::copy(&archive, &orphan).unwrap();
    age_by(&orphan, 48);
    // Files that are not this tool's, old too: one even looks like a partial, outside the layout.
    std::fs::write(d.join("README.txt"), b"backups of shop\n").unwrap();
    std::fs::create_dir(d.join("notes")).unwrap();
    std::fs::write(d.join("notes/.plan.txt.partial-0a1b2c3d"), b"draft").unwrap();
    std::fs::write(d.join(OLD_ID).join(NS).join(".keep"), b"").unwrap();
    for f in ["README.txt", "notes/.plan.txt.partial-0a1b2c3d"] {
        age_by(&d.join(f), 48);
    }

    // Two creates killed mid-stream: the first one's partial made to look two days old, the
    // second one's as fresh as a backup still running.
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 4 << 20,
    });
    let stale = killed_create_to_dir(&cluster, d).await;
    age_by(&stale, 48);
    let fresh = killed_create_to_dir(&cluster, d).await;
    cluster.fault(FaultRequest::Clear);
    let stale_backup_dir = stale.parent().unwrap().parent().unwrap().to_path_buf();
    let everything = snapshot(d);
    let dest = d.to_str().unwrap();

    // --dry-run: the report, and not a byte changed.
    let run = plugin(
        &cluster,
        &["cleanup", "--to", dest, "--dry-run", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run);
    assert_eq!(report["dryRun"], true);
    assert_eq!(report["olderThan"], "24h");
    assert_eq!(report["items"].as_array().unwrap().len(), 3, "{report:#}");
    let s = item(&report, stale.to_str().unwrap());
    assert_eq!(
        (&s["kind"], &s["outcome"]),
        (&"partialFile".into(), &"wouldRemove".into())
    );
    assert!(s["ageSeconds"].as_u64().unwrap() >= 48 * 3600, "{s}");
    let f = item(&report, fresh.to_str().unwrap());
    assert_eq!(f["outcome"], "kept", "{f}");
    let o = item(&report, orphan.to_str().unwrap());
    assert_eq!(
        (&o["kind"], &o["outcome"]),
        (&"archiveWithoutManifest".into(), &"wouldRemove".into())
    );
    assert_eq!(snapshot(d), everything, "--dry-run changed the destination");

    // No terminal and no --yes: refused, exit 4, nothing changed.
    let run = plugin(&cluster, &["cleanup", "--to", dest]).await;
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert_eq!(
        snapshot(d),
        everything,
        "a refused cleanup changed something"
    );

    let run = plugin(&cluster, &["cleanup", "--to", dest, "--yes", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run);
    assert_eq!(report["dryRun"], false);
    assert_eq!(item(&report, stale.to_str().unwrap())["outcome"], "removed");
    assert_eq!(
        item(&report, orphan.to_str().unwrap())["outcome"],
        "removed"
    );
    assert_eq!(item(&report, fresh.to_str().unwrap())["outcome"], "kept");
    assert!(!stale.exists(), "the stale partial is still there");
    assert!(
        !stale_backup_dir.exists(),
        "the killed backup's emptied directory {} is still there",
        stale_backup_dir.display()
    );
    assert!(
        !orphan.exists(),
        "the archive without manifest is still there"
    );
    assert!(
        d.join(OLD_ID).join(NS).join(".keep").exists(),
        "a directory with another file in it must stay"
    );
    assert!(
        fresh.exists(),
        "the fresh partial (a running backup's) was removed"
    );
    for f in ["README.txt", "notes/.plan.txt.partial-0a1b2c3d"] {
        assert!(d.join(f).exists(), "{f} is not this tool's and was removed");
    }
    assert_eq!(
        snapshot(manifest.parent().unwrap().parent().unwrap()),
        complete,
        "the complete backup changed"
    );
    let run = plugin(&cluster, &["verify", manifest.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = plugin(&cluster, &["list", dest, "-o", "json"]).await;
    let listed = json(&run)["items"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["complete"], true);

    // What remains, as a person reads it: the fresh partial, kept.
    let run = plugin(&cluster, &["cleanup", "--to", dest, "--yes"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[0].starts_with("KIND") && lines[0].contains("ACTION"),
        "{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with("partial file")
            && lines[1].contains(fresh.to_str().unwrap())
            && lines[1].ends_with("kept: younger than 24h"),
        "{}",
        run.stdout
    );
    assert!(fresh.exists());

    // A shorter --older-than takes the fresh one too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = plugin(
        &cluster,
        &["cleanup", "--to", dest, "--older-than", "1s", "--yes"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("removed"), "{}", run.stdout);
    assert!(partials(d).iter().all(|p| p.starts_with(d.join("notes"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_flags_are_checked_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().to_str().unwrap();
    let kubeconfig = dir.path().join("no-kubeconfig");
    // No cluster is needed (or reachable) for a destination.
    let run = plugin_with(&kubeconfig, &["cleanup", "--to", dest, "--dry-run"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!("no leftovers of interrupted backups at {dest}\n")
    );
    for (args, says) in [
        (
            vec!["cleanup", "--to", dest, "--older-than", "soon"],
            "--older-than",
        ),
        (vec!["cleanup", "--older-than", "1h"], "--to"),
        (vec!["cleanup", "--dry-run"], "--to"),
        (vec!["cleanup", "--to", dest, "-A"], "-A"),
        (vec!["cleanup", "--to", "ftp://x/y"], "ftp"),
    ] {
        let run = plugin_with(&kubeconfig, &args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    let run = plugin_with(&kubeconfig, &["cleanup", "--to", "/nonexistent/backups"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("/nonexistent/backups"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upload_is_aborted_and_other_uploads_and_backups_stay() {
    let cluster = demo().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let env = moto.env();
    random_file(&cluster.volume_path(NS, PVC).join("blob.bin"), 24 << 20, 7);
    let dest = format!("s3://{BUCKET}/b");

    let mut args = create_args(&dest);
    args.extend(["-o", "json"]);
    let run = plugin_env(cluster.kubeconfig(), &args, &env).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let manifest = json(&run)["results"][0]["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = moto.keys(BUCKET);
    // Uploads that are not this destination's: another tool's under the prefix, and one of
    // the backup layout under a sibling prefix (b2/ is not under b/).
    for key in [
        "b/other/file.bin".to_string(),
        format!("b2/{OLD_ID}/{NS}/{PVC}.tar.zst"),
    ] {
        let (code, body) = moto.s3("POST", &format!("/{BUCKET}/{key}?uploads"), b"");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    }

    // create, slowed down, killed once its multipart upload has begun.
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 4 << 20,
    });
    let mut args = create_args(&dest);
    args.extend(["--part-size", "5"]);
    let mut child = plugin_command(cluster.kubeconfig(), &args, &env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while moto.open_uploads(BUCKET).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the multipart upload never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    cluster.fault(FaultRequest::Clear);
    let open = moto.open_uploads(BUCKET);
    let killed = open
        .iter()
        .find(|k| k.starts_with("b/2"))
        .unwrap_or_else(|| panic!("no upload of the killed create: {open:?}"))
        .clone();
    // Invisible to list: only cleanup sees it.
    let run = plugin_env(cluster.kubeconfig(), &["list", &dest, "-o", "json"], &env).await;
    assert_eq!(json(&run)["items"].as_array().unwrap().len(), 1);

    let cleanup = |extra: &'static [&'static str]| {
        let mut a = vec!["cleanup", "--to", dest.as_str(), "-o", "json"];
        a.extend(extra);
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let env = env.clone();
        let kubeconfig = cluster.kubeconfig().to_path_buf();
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            plugin_env(&kubeconfig, &a, &env).await
        }
    };
    let run = cleanup(&["--dry-run"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run);
    let items = report["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        1,
        "only the killed create's upload: {report:#}"
    );
    assert_eq!(items[0]["kind"], "multipartUpload");
    assert_eq!(items[0]["location"], format!("s3://{BUCKET}/{killed}"));
    assert!(items[0]["uploadId"].as_str().is_some_and(|s| !s.is_empty()));
    // moto answers every upload with a fixed Initiated of 2010-11-10T20:48:33Z
    // (moto/s3/responses.py, list_multipart_uploads), so here every upload is years old and
    // the age rule is covered by the unit tests and the directory and Azure tests instead.
    assert_eq!(items[0]["since"], "2010-11-10T20:48:33Z");
    assert_eq!(items[0]["outcome"], "wouldRemove");
    assert_eq!(
        moto.open_uploads(BUCKET).len(),
        3,
        "--dry-run aborted something"
    );

    let run = cleanup(&["--yes"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json(&run)["items"][0]["outcome"], "removed");
    let mut left = moto.open_uploads(BUCKET);
    left.sort();
    assert_eq!(
        left,
        [
            "b/other/file.bin".to_string(),
            format!("b2/{OLD_ID}/{NS}/{PVC}.tar.zst")
        ]
    );
    assert_eq!(moto.keys(BUCKET), stored, "objects changed");
    let run = plugin_env(cluster.kubeconfig(), &["verify", &manifest], &env).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = cleanup(&["--yes"]).await;
    assert_eq!(json(&run)["items"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_archives_without_manifest_go_and_uncommitted_blocks_are_explained() {
    let az = Azurite::start();
    az.create_container("backups");
    let env = az.env();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("no-kubeconfig");
    let id = "20261130T120000Z-0a0b";
    let complete = [
        format!("p/{id}/{NS}/db.tar.zst"),
        format!("p/{id}/{NS}/db.manifest.json"),
    ];
    let orphan = format!("p/{OLD_ID}/{NS}/db.tar.zst");
    let foreign = format!("p/notes/{NS}/db.tar.zst");
    for name in complete.iter().chain([&orphan, &foreign]) {
        az.put_blob("backups", name, b"bytes");
    }
    let dest = "az://backups/p";
    let run_json = |extra: &[&str]| {
        let mut a = vec!["cleanup", "--to", dest, "-o", "json"];
        a.extend(extra);
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let env = env.clone();
        let kubeconfig = kubeconfig.clone();
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            plugin_env(&kubeconfig, &a, &env).await
        }
    };

    // Just stored: younger than the default day, kept.
    let run = run_json(&["--yes"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run);
    assert_eq!(report["items"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["items"][0]["kind"], "archiveWithoutManifest");
    assert_eq!(report["items"][0]["outcome"], "kept");
    assert!(
        report["notes"][0].as_str().unwrap().contains("7 days"),
        "{report:#}"
    );
    assert_eq!(az.blobs("backups").len(), 4);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = run_json(&["--older-than", "1s", "--yes"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run);
    assert_eq!(
        report["items"][0]["location"],
        format!("az://backups/{orphan}")
    );
    assert_eq!(report["items"][0]["outcome"], "removed");
    let mut left = az.blobs("backups");
    left.sort();
    let mut want = vec![complete[0].clone(), complete[1].clone(), foreign.clone()];
    want.sort();
    assert_eq!(left, want);

    // The note reaches a person on stderr, the table on stdout.
    let run = plugin_env(&kubeconfig, &["cleanup", "--to", dest], &env).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("note: Azure"), "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("no leftovers of interrupted backups at az://backups/p"),
        "{}",
        run.stdout
    );
}

//! `prune DEST`: a month of real (small) backups, made with the library the way `create`
//! makes them and dated for the test, pruned with `--keep-last 2 --keep-daily 7` in a
//! directory and in an S3 bucket (moto); what stays is what restic's policy keeps.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::moto::Moto;
use kubectl_pvbackup::archive::{stream_backup, Compression};
use kubectl_pvbackup::destination::{archive_key, local::LocalDir, manifest_key};
use kubectl_pvbackup::manifest::{ClusterInfo, Manifest, ManifestMeta, PvcInfo};
use serde_json::Value;

const BUCKET: &str = "pv-backups";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn plugin(args: &[&str], env: &[(String, String)]) -> Out {
    let o = common::plugin_command(Path::new("/nonexistent"), args, env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// A backup id as `create` makes them, for `created`.
fn id_at(created: &str, n: usize) -> String {
    let t: chrono::DateTime<chrono::Utc> = created.parse().unwrap();
    format!("{}-{:04x}", t.format("%Y%m%dT%H%M%SZ"), 0xa000 + n)
}

/// Stores one small backup of `ns/pvc` at `dest`, as `create` does: archive, entries
/// stream, header last.
fn make_backup(dest: &Path, id: &str, ns: &str, pvc: &str, created: &str) {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("data.txt"), format!("{id} {pvc}\n")).unwrap();
    let tar = Command::new("busybox")
        .args(["tar", "-cf", "-", "-C"])
        .arg(src.path())
        .arg(".")
        .output()
        .unwrap();
    assert!(tar.status.success());
    let compression = Compression::Zstd { level: 1 };
    let apath = dest.join(archive_key(id, ns, pvc, compression.extension()));
    std::fs::create_dir_all(apath.parent().unwrap()).unwrap();
    let summary = stream_backup(
        &tar.stdout[..],
        compression,
        std::fs::File::create(&apath).unwrap(),
        &|_| {},
    )
    .unwrap();
    let meta = ManifestMeta {
        backup_id: id.into(),
        tool_version: "test".into(),
        created: created.parse().unwrap(),
        cluster: ClusterInfo {
            server: "https://127.0.0.1:6443".into(),
            context: Some("kubesim".into()),
            created_by: None,
        },
        namespace: ns.into(),
        pvc: PvcInfo {
            name: pvc.into(),
            uid: "uid-1".into(),
            capacity: Some("1Gi".into()),
            access_modes: vec!["ReadWriteOnce".into()],
            storage_class: Some("standard".into()),
            volume_mode: Some("Filesystem".into()),
            labels: Default::default(),
        },
        source_pods: vec![],
        helper_image: "busybox:1.36".into(),
    };
    let m = Manifest::new(
        meta,
        compression,
        format!("{pvc}{}", compression.extension()),
        summary,
    );
    kubectl_pvbackup::manifest::store(
        &LocalDir::new(dest.to_path_buf()),
        &manifest_key(id, ns, pvc),
        &m,
    )
    .unwrap();
}

/// The history: shop/db backed up daily at 10:15 UTC through November 2026, and a second
/// time at 22:00 on the 29th and 30th; shop/cache once, a year earlier. Returns the ids of
/// shop/db by `created`.
fn month(dest: &Path) -> Vec<(String, String)> {
    let mut times: Vec<String> = (1..=30)
        .map(|d| format!("2026-11-{d:02}T10:15:00Z"))
        .collect();
    times.push("2026-11-29T22:00:00Z".into());
    times.push("2026-11-30T22:00:00Z".into());
    let mut db = Vec::new();
    for (n, t) in times.iter().enumerate() {
        let id = id_at(t, n);
        make_backup(dest, &id, "shop", "db", t);
        db.push((t.clone(), id));
    }
    make_backup(
        dest,
        &id_at("2025-11-01T00:00:00Z", 99),
        "shop",
        "cache",
        "2025-11-01T00:00:00Z",
    );
    db
}

/// What restic's policy keeps of shop/db with `--keep-last 2 --keep-daily 7`, worked out by
/// hand: the two newest (30th 22:00 and 10:15), and the newest of each of the last seven days
/// that hold a backup (30th 22:00, 29th 22:00, 28th…24th 10:15). Everything else goes.
fn restic_keeps(db: &[(String, String)]) -> BTreeSet<String> {
    let want: BTreeSet<&str> = [
        "2026-11-30T22:00:00Z",
        "2026-11-30T10:15:00Z",
        "2026-11-29T22:00:00Z",
        "2026-11-28T10:15:00Z",
        "2026-11-27T10:15:00Z",
        "2026-11-26T10:15:00Z",
        "2026-11-25T10:15:00Z",
        "2026-11-24T10:15:00Z",
    ]
    .into();
    db.iter()
        .filter(|(t, _)| want.contains(t.as_str()))
        .map(|(_, id)| id.clone())
        .collect()
}

/// Relative paths of every file under `root`.
fn files(root: &Path) -> BTreeSet<String> {
    common::files_under(root)
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

fn age_by(path: &Path, hours: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(hours * 3600))
        .unwrap();
}

/// `(id, namespace/pvc) → action` from `prune -o json`.
fn actions(out: &Out) -> Vec<(String, String, String)> {
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    b["namespace"].as_str().unwrap(),
                    b["pvc"].as_str().unwrap()
                ),
                b["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn kept_ids(out: &Out, pvc: &str) -> BTreeSet<String> {
    actions(out)
        .into_iter()
        .filter(|(_, p, a)| p == pvc && a == "keep")
        .map(|(id, _, _)| id)
        .collect()
}

#[test]
fn a_month_in_a_directory_keeps_what_restic_keeps_and_every_pvcs_newest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let db = month(root);
    let want = restic_keeps(&db);
    assert_eq!(want.len(), 8);
    // Leftovers of interrupted backups: an archive without a manifest from last week
    // (removed) and one being written right now (kept), and an old partial file.
    let stale = format!("{}/shop/db.tar.zst", id_at("2026-11-20T03:00:00Z", 50));
    let fresh = format!("{}/shop/db.tar.zst", id_at("2026-11-30T23:00:00Z", 51));
    let partial = format!("{}/shop/.db.tar.zst.partial-0a1b2c3d", db[5].1);
    for k in [&stale, &fresh, &partial] {
        std::fs::create_dir_all(root.join(k).parent().unwrap()).unwrap();
        std::fs::write(root.join(k), b"half an archive").unwrap();
    }
    age_by(&root.join(&stale), 24 * 7);
    age_by(&root.join(&partial), 48);
    let before = files(root);
    let bytes_before: Vec<(String, Vec<u8>)> = before
        .iter()
        .map(|f| (f.clone(), std::fs::read(root.join(f)).unwrap()))
        .collect();
    let dest = root.to_str().unwrap();
    let policy = ["--keep-last", "2", "--keep-daily", "7"];

    // Dry run: the decisions, and nothing touched.
    let mut args = vec!["prune", dest, "--dry-run", "-o", "json"];
    args.extend(policy);
    let dry = plugin(&args, &[]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(kept_ids(&dry, "shop/db"), want);
    assert_eq!(
        kept_ids(&dry, "shop/cache"),
        BTreeSet::from([id_at("2025-11-01T00:00:00Z", 99)]),
        "the only backup of a PVC is its newest and stays, however old"
    );
    let remove: Vec<_> = actions(&dry)
        .into_iter()
        .filter(|(_, _, a)| a == "wouldRemove")
        .collect();
    assert_eq!(remove.len(), db.len() - want.len());
    let v: Value = serde_json::from_str(&dry.stdout).unwrap();
    let newest = v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == db[31].1.as_str())
        .unwrap();
    assert_eq!(newest["reasons"], serde_json::json!(["last", "daily"]));
    assert_eq!(files(root), before, "a dry run removes nothing");

    // No terminal and no --yes: refused, exit 4, nothing removed.
    let mut args = vec!["prune", dest];
    args.extend(policy);
    let refused = plugin(&args, &[]);
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(files(root), before);

    // The real run: the table names every backup, its action and reasons.
    args.push("--yes");
    let run = plugin(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["BACKUP", "NAMESPACE/PVC", "CREATED", "ACTION", "REASONS"],
        "{}",
        run.stdout
    );
    let line = |id: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not in\n{}", run.stdout))
            .split_whitespace()
            .skip(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line(&db[31].1), "keep last, daily");
    assert_eq!(line(&db[30].1), "keep daily");
    assert_eq!(line(&db[0].1), "removed not kept by the policy");

    // What is left: the kept backups, whole and unchanged; the fresh leftover.
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for (f, bytes) in &bytes_before {
        let id = f.split('/').next().unwrap();
        let keep = want.contains(id) || id == id_at("2025-11-01T00:00:00Z", 99) || f == &fresh;
        if keep {
            assert_eq!(&std::fs::read(root.join(f)).unwrap(), bytes, "{f} changed");
            expected.insert(f.clone());
        }
    }
    // Each kept backup has its header, entries stream and archive.
    assert_eq!(expected.len(), (want.len() + 1) * 3 + 1);
    assert_eq!(files(root), expected);

    // `list` agrees: exactly the kept backups, all complete, and the fresh leftover.
    let list = plugin(&["list", dest, "-o", "json"], &[]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let v: Value = serde_json::from_str(&list.stdout).unwrap();
    let complete: BTreeSet<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["complete"] == true)
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let mut all = want.clone();
    all.insert(id_at("2025-11-01T00:00:00Z", 99));
    assert_eq!(complete, all);

    // Again: the same policy finds nothing more to remove.
    let again = plugin(&args, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(!again.stdout.contains("removed"), "{}", again.stdout);
    assert_eq!(files(root), expected);
}

#[test]
fn a_policy_is_required_and_named() {
    let dir = tempfile::tempdir().unwrap();
    make_backup(
        dir.path(),
        &id_at("2026-11-01T00:00:00Z", 1),
        "shop",
        "db",
        "2026-11-01T00:00:00Z",
    );
    let before = files(dir.path());
    for args in [
        vec!["prune", dir.path().to_str().unwrap(), "--yes"],
        vec![
            "prune",
            dir.path().to_str().unwrap(),
            "--keep-daily",
            "0",
            "--yes",
        ],
    ] {
        let out = plugin(&args, &[]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        for flag in [
            "--keep-last",
            "--keep-hourly",
            "--keep-daily",
            "--keep-weekly",
            "--keep-monthly",
        ] {
            assert!(
                out.stderr.contains(flag),
                "{flag} not named: {}",
                out.stderr
            );
        }
    }
    assert_eq!(files(dir.path()), before);
}

#[test]
fn a_month_in_a_bucket_is_pruned_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let db = month(dir.path());
    let want = restic_keeps(&db);
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    // An archive whose manifest never came, uploaded just now: younger than --older-than,
    // so it stays.
    let fresh = format!("{}/shop/db.tar.zst", id_at("2026-11-30T23:00:00Z", 51));
    std::fs::create_dir_all(dir.path().join(&fresh).parent().unwrap()).unwrap();
    std::fs::write(dir.path().join(&fresh), b"half an archive").unwrap();
    let local = files(dir.path());
    for f in &local {
        let (code, body) = moto.s3(
            "PUT",
            &format!("/{BUCKET}/prod/{f}"),
            &std::fs::read(dir.path().join(f)).unwrap(),
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    }
    let dest = format!("s3://{BUCKET}/prod");
    let env = moto.env();
    let run = plugin(
        &[
            "prune",
            &dest,
            "--keep-last",
            "2",
            "--keep-daily",
            "7",
            "--yes",
            "-o",
            "json",
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(kept_ids(&run, "shop/db"), want);
    let removed = actions(&run)
        .into_iter()
        .filter(|(_, _, a)| a == "removed")
        .count();
    assert_eq!(removed, db.len() - want.len());
    let left: BTreeSet<String> = moto
        .keys(BUCKET)
        .into_iter()
        .map(|k| k.strip_prefix("prod/").unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = local
        .into_iter()
        .filter(|f| {
            let id = f.split('/').next().unwrap();
            want.contains(id) || id == id_at("2025-11-01T00:00:00Z", 99) || f == &fresh
        })
        .collect();
    assert_eq!(left, expected);
    // Every kept backup still whole: three objects each, and the fresh leftover.
    assert_eq!(left.len(), (want.len() + 1) * 3 + 1);
}

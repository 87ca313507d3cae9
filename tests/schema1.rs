//! Backups written by 0.1 (schema 1, `tests/fixtures/schema1/`) stay usable: `verify`,
//! `inspect`, `list`, `restore` and `drill` accept them, and a restore gives back exactly the
//! tree they were made from — including the symlinks 0.1 itself then refused (issue #11).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema1");

/// A copy of fixture `name` (so no test touches the repository); returns the copy's root and
/// its manifest.
fn fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(Path::new(FIXTURES).join(name))
        .arg(d.path())
        .status()
        .unwrap();
    assert!(status.success());
    let root = d.path().join(name);
    let manifest = walk(&root)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .unwrap();
    (d, manifest)
}

/// The tree `populate.sh` makes for `kind`: what the fixture was made from.
fn expected(kind: &str) -> (tempfile::TempDir, BTreeMap<Vec<u8>, String>) {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg(Path::new(FIXTURES).join("populate.sh"))
        .arg(d.path())
        .arg(kind)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = tree(d.path());
    (d, t)
}

fn offline(args: &[&str]) -> Run {
    let o = Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

#[test]
fn verify_inspect_and_list_accept_schema_1_backups() {
    for (name, entries, files) in [("plain", 13, 5), ("symlinks", 8, 1)] {
        let (d, manifest) = fixture(name);
        let m = manifest.to_str().unwrap();
        let v = offline(&["verify", m, "-o", "json"]);
        assert_eq!(v.code, 0, "{name}: {}\n{}", v.stdout, v.stderr);
        let v: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["entries"], entries);

        let i = offline(&["inspect", m, "--files"]);
        assert_eq!(i.code, 0, "{}", i.stderr);
        assert!(
            i.stdout.contains("Schema:        version 1"),
            "{}",
            i.stdout
        );
        assert!(
            i.stdout.contains(&format!("in {entries} entries")),
            "{}",
            i.stdout
        );
        let j = offline(&["inspect", m, "--files", "-o", "json"]);
        let j: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
        assert_eq!(j["schema_version"], 1);
        assert_eq!(j["entries"].as_array().unwrap().len(), entries);

        let l = offline(&["list", d.path().join(name).to_str().unwrap(), "-o", "json"]);
        assert_eq!(l.code, 0, "{}", l.stderr);
        let l: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
        assert_eq!(l["items"][0]["restorable"], true, "{l}");
        assert_eq!(l["items"][0]["files"], files, "{l}");
    }
    // The symlink targets 0.1 refused to verify are listed as they are.
    let (_d, manifest) = fixture("symlinks");
    let i = offline(&["inspect", manifest.to_str().unwrap(), "--files"]);
    for target in [
        "-> /var/lib/app/releases/v2",
        "-> /mnt/wal",
        "-> ../../etc/passwd",
    ] {
        assert!(i.stdout.contains(target), "{target}: {}", i.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_1_backups_restore_exactly_and_drill_intact() {
    let cluster = demo().await;
    let vol = cluster.volume_path(NS, PVC);
    for name in ["plain", "symlinks"] {
        let (_d, manifest) = fixture(name);
        let m = manifest.to_str().unwrap();
        let run = plugin(&cluster, &["restore", m, "--yes", "-o", "json"]).await;
        assert_eq!(run.code, 0, "{name}: {}\n{}", run.stdout, run.stderr);
        let (_e, want) = expected(name);
        assert_eq!(tree(&vol), want, "{name}: the restored volume");

        let run = plugin(&cluster, &["drill", m, "-o", "json"]).await;
        assert_eq!(run.code, 0, "{name}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(json(&run)["verdict"], "intact");
    }
    assert!(
        helper_pods(&cluster).is_empty(),
        "{:?}",
        helper_pods(&cluster)
    );
}

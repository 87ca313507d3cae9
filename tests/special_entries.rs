//! Issue #11 §1: whatever `create` accepts, `verify`, `restore` and `drill` accept. A volume
//! holding symlinks of every shape (absolute, dangling, above the root, long, odd bytes), a
//! device node and a socket backs up with a warning naming what it leaves out, verifies,
//! restores exactly (minus what it left out) and drills intact.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::*;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";

fn fill(vol: &Path) {
    for e in std::fs::read_dir(vol).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    for d in ["releases/v2", "sub", "dev", "run"] {
        std::fs::create_dir_all(vol.join(d)).unwrap();
    }
    std::fs::write(vol.join("releases/v2/app.conf"), b"port = 8080\n").unwrap();
    std::fs::write(vol.join("data.bin"), vec![7u8; 100_000]).unwrap();
    let long = format!("/var/lib/app/releases/{}/v2", "x".repeat(150));
    for (name, target) in [
        ("current", &b"/var/lib/app/releases/v2"[..]),
        ("pg_wal", b"/mnt/wal"),
        ("sub/escape", b"../../etc/passwd"),
        ("sub/up", b".."),
        ("dangling", b"does/not/exist"),
        ("long", long.as_bytes()),
        ("odd", b"odd\nname\xff x"),
        ("relative", b"releases/v2/app.conf"),
    ] {
        std::os::unix::fs::symlink(OsStr::from_bytes(target), vol.join(name)).unwrap();
    }
    let ok = std::process::Command::new("mknod")
        .arg(vol.join("dev/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(ok.success(), "mknod needs root, as every kubesim test does");
    // A socket file stays after its listener is gone.
    drop(std::os::unix::net::UnixListener::bind(vol.join("run/app.sock")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_of_every_shape_round_trip_and_device_nodes_and_sockets_are_recorded() {
    let cluster = demo().await;
    let vol = cluster.volume_path(NS, PVC);
    fill(&vol);
    let mut want = tree(&vol);
    assert!(want.remove(&b"dev/null"[..]).is_some());
    assert!(want.remove(&b"run/app.sock"[..]).is_some());

    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let run = plugin(
        &cluster,
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            d,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = &json(&run)["results"][0];
    let skipped = r["skipped"].as_array().unwrap();
    assert_eq!(
        skipped,
        &vec![
            serde_json::json!({"path": "dev/null", "reason": "char_device"}),
            serde_json::json!({"path": "run/app.sock", "reason": "socket"}),
        ],
        "{r}"
    );
    for needle in [
        "does not hold 2 entries",
        "\"dev/null\"",
        "\"run/app.sock\"",
    ] {
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }
    let manifest = r["manifest"].as_str().unwrap().to_string();

    let v = plugin(&cluster, &["verify", &manifest]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    let l = plugin(&cluster, &["list", d]).await;
    assert!(l.stdout.contains("complete (2 left out)"), "{}", l.stdout);

    let i = plugin(&cluster, &["inspect", &manifest, "--files"]).await;
    assert_eq!(i.code, 0, "{}", i.stderr);
    assert!(
        i.stdout
            .contains("Not backed up: dev/null (character device), run/app.sock (socket)"),
        "{}",
        i.stdout
    );
    assert!(i.stderr.contains("does not hold 2 entries"), "{}", i.stderr);
    assert!(i.stdout.contains("-> /mnt/wal"), "{}", i.stdout);

    // Wipe the volume, restore: exactly the tree, less what the backup says it left out.
    std::fs::write(vol.join("data.bin"), b"changed").unwrap();
    std::fs::remove_file(vol.join("current")).unwrap();
    let run = plugin(&cluster, &["restore", &manifest, "--yes"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("does not hold 2 entries"),
        "{}",
        run.stderr
    );
    assert_eq!(tree(&vol), want, "the restored volume");

    let run = plugin(&cluster, &["drill", &manifest, "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(json(&run)["verdict"], "intact");
    assert!(
        helper_pods(&cluster).is_empty(),
        "{:?}",
        helper_pods(&cluster)
    );
}

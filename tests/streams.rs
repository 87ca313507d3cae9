//! `create --streams N` against kubesim: the volume is read by several tars over several exec
//! streams, and what is stored is one archive that restores and verifies like any other.

mod common;

use std::path::Path;

use common::*;
use kubesim::{Cluster, FaultRequest};

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";

/// Adds what makes a split worth checking: three 3 MiB files, a directory of 150 small files,
/// an empty directory, a read-only directory with a file in it, a symlink to a directory.
fn fill(vol: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(vol.join("media/raw")).unwrap();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..3 << 20)
            .map(|x: u32| (x.wrapping_mul(2_654_435_761) >> (8 + i)) as u8)
            .collect();
        std::fs::write(vol.join(format!("media/raw/clip-{i}.bin")), data).unwrap();
    }
    std::fs::create_dir_all(vol.join("notes")).unwrap();
    for i in 0..150 {
        std::fs::write(
            vol.join(format!("notes/{i:03}.txt")),
            format!("note {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    std::fs::create_dir_all(vol.join("empty/inside")).unwrap();
    std::fs::create_dir_all(vol.join("sealed")).unwrap();
    std::fs::write(vol.join("sealed/ro.txt"), b"read only\n").unwrap();
    std::fs::set_permissions(vol.join("sealed"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::os::unix::fs::symlink("media/raw", vol.join("clips")).unwrap();
}

/// The tar sessions of the run that sent at least `min` bytes.
fn streaming_tars(cluster: &Cluster, min: u64) -> Vec<kubesim::faults::ExecSession> {
    cluster
        .exec_sessions()
        .into_iter()
        .filter(|s| s.argv.first().map(String::as_str) == Some("tar") && s.stdout_bytes >= min)
        .collect()
}

fn assert_tree_equal(want: &Path, got: &Path) {
    let (want, got) = (snapshot(want), snapshot(got));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "paths differ"
    );
    for (path, node) in &want {
        assert_eq!(node, &got[path], "{} differs", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_streams_store_one_archive_that_restores_byte_exact_and_verifies() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    fill(&vol);
    let before = state(&vol);
    let run = plugin(
        &cluster,
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            dest.path().to_str().unwrap(),
            "--streams",
            "3",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = &json(&run)["results"][0];
    assert_eq!(r["attempts"], 1, "{r}");

    // The files were split: at least two tars each streamed a 3 MiB file's worth, and no tar
    // streamed the whole volume.
    let tars = streaming_tars(&cluster, 3 << 20);
    assert!(
        tars.len() >= 2,
        "one stream carried the data: {:#?}",
        cluster.exec_sessions()
    );
    assert!(
        tars.iter()
            .all(|t| !t.argv.iter().any(|a| a == ".")
                || t.argv.iter().any(|a| a == "--no-recursion")),
        "a tar of the whole volume ran: {tars:#?}"
    );

    // One archive holding the volume exactly.
    let unpacked = tempfile::tempdir().unwrap();
    untar(Path::new(r["archive"].as_str().unwrap()), unpacked.path());
    assert_tree_equal(&vol, unpacked.path());
    let manifest = r["manifest"].as_str().unwrap();
    let verify = plugin(&cluster, &["verify", manifest]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);

    // Restored over a changed volume: exactly the backup again, verified in the cluster.
    std::fs::remove_file(vol.join("media/raw/clip-1.bin")).unwrap();
    std::fs::write(vol.join("notes/000.txt"), b"changed\n").unwrap();
    let run = plugin(&cluster, &["restore", manifest, "--yes", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(json(&run)["verified"], true);
    assert_same(&before, &state(&vol), "after restore");
}

/// A stream killed mid-copy (its container crashes) fails the attempt as a whole: with no
/// retries nothing is left at the destination; with retries the next attempt starts every
/// stream again and the backup is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_killed_mid_copy_fails_or_retries_the_whole_backup() {
    let cluster = demo().await;
    let vol = cluster.volume_path(NS, PVC);
    fill(&vol);
    let create = |dest: &Path, retries: &str| {
        vec![
            "create".to_string(),
            PVC.into(),
            "-n".into(),
            NS.into(),
            "--all-pvcs".into(),
            "--to".into(),
            dest.to_str().unwrap().into(),
            "--streams".into(),
            "3".into(),
            "--retries".into(),
            retries.into(),
            "-o".into(),
            "json".into(),
        ]
    };
    // Slow enough that the other streams are mid-member when one is killed.
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 4 << 20,
    });

    let dest = tempfile::tempdir().unwrap();
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 1 << 20,
        count: 1,
    });
    let args = create(dest.path(), "0");
    let run = plugin(
        &cluster,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        files_under(dest.path()).is_empty(),
        "left at DEST: {:?}",
        files_under(dest.path())
    );

    let dest = tempfile::tempdir().unwrap();
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 1 << 20,
        count: 1,
    });
    let args = create(dest.path(), "2");
    let run = plugin(
        &cluster,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = &json(&run)["results"][0];
    assert_eq!(
        r["attempts"], 2,
        "the first attempt must have been killed: {r}"
    );
    let tars = streaming_tars(&cluster, 3 << 20);
    assert!(tars.len() >= 2, "one stream carried the data: {tars:#?}");
    let unpacked = tempfile::tempdir().unwrap();
    untar(Path::new(r["archive"].as_str().unwrap()), unpacked.path());
    assert_tree_equal(&vol, unpacked.path());
    let verify = plugin(&cluster, &["verify", r["manifest"].as_str().unwrap()]).await;
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(helper_pods(&cluster).is_empty());
}

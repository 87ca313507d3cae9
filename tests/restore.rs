//! `restore` against kubesim: the volume afterwards is exactly the backup, or exactly what it
//! was before.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use kubesim::{Cluster, FaultRequest};
use serde_json::Value;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";

/// Deletes files, changes one, adds an extra one, changes a mode and an owner.
fn tamper(vol: &Path) -> PathBuf {
    std::fs::remove_dir_all(vol.join("tmp/build/shard-0")).unwrap();
    std::fs::write(vol.join("config/settings.conf"), b"changed\n").unwrap();
    std::fs::set_permissions(
        vol.join("bin/rotate.sh"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(vol.join("tmp/build/app.a"), Some(4242), Some(4242)).unwrap();
    let extra = vol.join("extra-file.txt");
    std::fs::write(&extra, b"not in the backup\n").unwrap();
    extra
}

async fn assert_no_helper_pods(cluster: &Cluster) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = helper_pods(cluster);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "helper pods left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn leftovers(vol: &Path) -> Vec<String> {
    std::fs::read_dir(vol)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pvbackup-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_brings_back_the_exact_tree() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    // Some metadata a naive restore loses: a 0600 file of uid 1000, a symlink owned by 1000.
    std::fs::write(vol.join("secret"), b"s3cret").unwrap();
    std::fs::set_permissions(vol.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(vol.join("secret"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(vol.join("current"), Some(1000), Some(1001)).unwrap();
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&vol, Some(1000), Some(1000)).unwrap();
    let before = state(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;

    let extra = tamper(&vol);
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&vol, Some(0), Some(0)).unwrap();
    let run = plugin(
        &cluster,
        &["restore", manifest.to_str().unwrap(), "--yes", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = json(&run);
    assert_eq!(out["verified"], true);
    assert_eq!(out["mode"], "replace");
    assert_eq!(out["target"], PVC);
    assert_eq!(out["namespace"], NS);
    assert!(out["files"].as_u64().unwrap() > 100);
    assert!(
        !extra.exists(),
        "replace mode removes what the backup does not have"
    );
    assert_same(&before, &state(&vol), "after restore");
    assert!(leftovers(&vol).is_empty());
    assert_no_helper_pods(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_restores_the_backup_and_keeps_the_rest() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let before = state(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let extra = tamper(&vol);
    std::fs::create_dir(vol.join("extra-dir")).unwrap();
    std::fs::write(vol.join("extra-dir/x"), b"x").unwrap();

    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "--mode",
            "merge",
            "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("merge") && run.stdout.contains("yes"),
        "{}",
        run.stdout
    );
    assert_eq!(std::fs::read(&extra).unwrap(), b"not in the backup\n");
    assert_eq!(std::fs::read(vol.join("extra-dir/x")).unwrap(), b"x");
    let mut after = state(&vol);
    for p in ["extra-file.txt", "extra-dir", "extra-dir/x"] {
        after.0.remove(Path::new(p));
    }
    assert_same(&before, &after, "after merge");
    assert!(leftovers(&vol).is_empty());
    assert_no_helper_pods(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_pvc_restores_into_another_namespace() {
    use k8s_openapi::api::core::v1::Namespace;
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let before = state(&cluster.volume_path(NS, PVC));
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;

    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let api: kube::Api<Namespace> = kube::Api::all(client);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "shop-copy"}})).unwrap();
    api.create(&Default::default(), &ns).await.unwrap();

    // Without --create-pvc the missing PVC is a refusal.
    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "-n",
            "shop-copy",
            "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("--create-pvc"), "{}", run.stderr);
    // A size smaller than the data is refused, and nothing is created.
    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "-n",
            "shop-copy",
            "--create-pvc",
            "--size",
            "1Mi",
            "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("smaller"), "{}", run.stderr);
    assert!(cluster
        .objects("persistentvolumeclaims", Some("shop-copy"))
        .is_empty());

    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "-n",
            "shop-copy",
            "--to-pvc",
            "copy",
            "--create-pvc",
            "--size",
            "48Mi",
            "--yes",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(json(&run)["namespace"], "shop-copy");
    let pvcs = cluster.objects("persistentvolumeclaims", Some("shop-copy"));
    assert_eq!(pvcs.len(), 1);
    assert_eq!(pvcs[0]["spec"]["resources"]["requests"]["storage"], "48Mi");
    assert_eq!(pvcs[0]["spec"]["accessModes"][0], "ReadWriteOnce");
    assert_same(
        &before,
        &state(&cluster.volume_path("shop-copy", "copy")),
        "restored copy",
    );
    assert_no_helper_pods(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_archive_is_refused_and_the_volume_untouched() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    tamper(&vol);
    let before = state(&vol);
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let archive = manifest
        .parent()
        .unwrap()
        .join(m["archive"]["file_name"].as_str().unwrap());
    let good = std::fs::read(&archive).unwrap();

    // One flipped byte.
    let mut flipped = good.clone();
    let i = flipped.len() / 2;
    flipped[i] ^= 0x01;
    std::fs::write(&archive, &flipped).unwrap();
    let run = plugin(&cluster, &["restore", manifest.to_str().unwrap(), "--yes"]).await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_same(&before, &state(&vol), "after a flipped byte");

    // Truncated.
    std::fs::write(&archive, &good[..good.len() * 2 / 3]).unwrap();
    let run = plugin(&cluster, &["restore", manifest.to_str().unwrap(), "--yes"]).await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_same(&before, &state(&vol), "after a truncated archive");
    // The archive is checked while it streams into staging: the helper pod that found the
    // damage rolled staging back and is gone.
    assert!(helper_pods(&cluster).is_empty(), "a helper pod is left");
    assert!(cluster
        .objects("pods", Some(NS))
        .iter()
        .all(|p| !p["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("pvbackup-restore")));
}

/// A tar header for `name` (raw, so `..` is not refused by the builder).
fn raw_header(name: &str, kind: u8, body_len: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{body_len:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_archive_is_refused() {
    use sha2::Digest;
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let before = state(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    // Hand-made: a root dir and `../evil`, listed in a manifest whose checksums all match.
    let mut tar = Vec::new();
    tar.extend_from_slice(&raw_header("./", b'5', 0));
    tar.extend_from_slice(&raw_header("../evil", b'0', 5));
    let mut body = b"evil\n".to_vec();
    body.resize(512, 0);
    tar.extend_from_slice(&body);
    tar.extend_from_slice(&[0u8; 1024]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("evil.tar"), &tar).unwrap();
    let mut m: Value = whole_manifest(&manifest);
    m["compression"] = serde_json::json!({"algorithm": "none"});
    m["archive"] = serde_json::json!({"file_name": "evil.tar", "size": tar.len(), "sha256": hex::encode(sha2::Sha256::digest(&tar))});
    m["uncompressed_size"] = tar.len().into();
    m["entry_count"] = 2.into();
    m["entries"] = serde_json::json!([
        {"path": ".", "kind": "dir", "size": 0, "mode": 420, "uid": 0, "gid": 0, "mtime": 0},
        {"path": "../evil", "kind": "file", "size": 5, "mode": 420, "uid": 0, "gid": 0, "mtime": 0, "sha256": hex::encode(sha2::Sha256::digest(b"evil\n"))},
    ]);
    let evil_manifest = dir.path().join("evil.manifest.json");
    std::fs::write(&evil_manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let run = plugin(
        &cluster,
        &[
            "restore",
            evil_manifest.to_str().unwrap(),
            "-n",
            NS,
            "--to-pvc",
            PVC,
            "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("../evil"), "{}", run.stderr);
    assert_same(&before, &state(&vol), "after the malicious archive");
    assert!(!vol.parent().unwrap().join("evil").exists());
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_or_yes_nothing_changes_and_dry_run_creates_nothing() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    tamper(&vol);
    let before = state(&vol);
    let run = plugin(&cluster, &["restore", manifest.to_str().unwrap()]).await;
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert!(
        run.stderr.contains("TARGET") && run.stderr.contains(PVC),
        "the summary is shown: {}",
        run.stderr
    );
    assert_same(&before, &state(&vol), "after the refusal");

    let run = plugin(
        &cluster,
        &["restore", manifest.to_str().unwrap(), "--dry-run"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("kind: Pod") || run.stdout.contains("pvbackup-restore-"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("dry run"), "{}", run.stdout);
    assert_same(&before, &state(&vol), "after the dry run");
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_replace_asks_for_the_pvc_name() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let original = state(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let extra = tamper(&vol);
    let tampered = state(&vol);
    let args = ["restore", manifest.to_str().unwrap(), "--no-progress"];
    let prompt = format!("Type \"{PVC}\" to confirm");

    // A near miss aborts: exit 4, the volume as it was, no helper pod.
    let (code, screen) = plugin_on_terminal(&cluster, &args, &prompt, "scratch").await;
    assert_eq!(code, 4, "{screen}");
    assert!(
        screen.contains("TARGET"),
        "the summary precedes the prompt: {screen}"
    );
    assert!(screen.contains("aborted"), "{screen}");
    assert_same(&tampered, &state(&vol), "after a wrong answer");
    assert!(extra.exists());
    assert!(helper_pods(&cluster).is_empty());

    // The PVC's name proceeds: the volume is the backup again.
    let (code, screen) = plugin_on_terminal(&cluster, &args, &prompt, PVC).await;
    assert_eq!(code, 0, "{screen}");
    assert_same(&original, &state(&vol), "after the confirmed restore");
    assert!(!extra.exists());
    assert_no_helper_pods(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pvc_in_use_needs_force() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let db = cluster.volume_path(NS, "data-orders-db-0");
    let before = snapshot(&db);
    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "--to-pvc",
            "data-orders-db-0",
            "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("orders-db-0") && run.stderr.contains("--force"),
        "{}",
        run.stderr
    );
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        snapshot(&db).keys().collect::<Vec<_>>()
    );
    // With --force the plan goes ahead: the helper is pinned next to the running pod.
    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "--to-pvc",
            "data-orders-db-0",
            "--force",
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan = json(&run);
    assert_eq!(plan["podsUsingIt"][0], "orders-db-0");
    assert!(
        plan["helperPod"]["spec"]["affinity"].is_object(),
        "{plan:#}"
    );
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_restore_rolls_the_volume_back() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    tamper(&vol);
    let before = state(&vol);
    // The volume check prints less than 1 KiB, tar -x prints nothing: the first session to
    // cross 1 KiB of stdout is the hashing of the extracted files, once staging was written.
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 1024,
        count: 1,
    });
    // Without retries (with them, the next attempt succeeds: tests/faults.rs).
    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "--yes",
            "--retries",
            "0",
        ],
    )
    .await;
    cluster.fault(FaultRequest::Clear);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);
    assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
    assert_same(&before, &state(&vol), "after the crash");
    assert_no_helper_pods(&cluster).await;
    // And a second attempt succeeds.
    let run = plugin(&cluster, &["restore", manifest.to_str().unwrap(), "--yes"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_without_room_for_staging_is_refused() {
    use std::io::Write;
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    // Fill the 32Mi volume until about 1 MiB is left: less than the backup needs to be staged.
    let mut f = std::fs::File::create(vol.join("filler")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
        assert!(written < 1 << 30, "the volume's capacity is not enforced");
    }
    drop(f);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(vol.join("filler"))
        .unwrap();
    f.set_len(written - (1 << 20)).unwrap();
    drop(f);
    let before = state(&vol);
    let run = plugin(&cluster, &["restore", manifest.to_str().unwrap(), "--yes"]).await;
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("free"), "{}", run.stderr);
    assert_same(&before, &state(&vol), "after the refusal");
    assert!(leftovers(&vol).is_empty());
    assert_no_helper_pods(&cluster).await;
}

/// Writes `mib` MiB of a repeating, non-zero pattern to `vol/filler`.
fn fill(vol: &Path, mib: usize) {
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut data = Vec::with_capacity(mib << 20);
    for _ in 0..mib {
        data.extend_from_slice(&chunk);
    }
    std::fs::write(vol.join("filler"), data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_restores_a_backup_too_big_to_stage() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    // 18 MiB of data on the 32Mi volume: the backup fits the volume, but not next to its own
    // data (about 13 MiB stay free).
    fill(&vol, 18);
    // The volume root's own mode and owner are part of the backup too.
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&vol, Some(1000), Some(1000)).unwrap();
    let original = state(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let extra = tamper(&vol);
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&vol, Some(0), Some(0)).unwrap();
    let tampered = state(&vol);

    // Staging is refused, and the refusal names --in-place and what it gives up.
    let run = plugin(&cluster, &["restore", manifest.to_str().unwrap(), "--yes"]).await;
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("free") && run.stderr.contains("--in-place"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("partly restored"), "{}", run.stderr);
    assert_same(&tampered, &state(&vol), "after the refusal");
    assert!(leftovers(&vol).is_empty());
    assert_no_helper_pods(&cluster).await;

    // The plan says in place.
    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "--in-place",
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json(&run)["inPlace"], true);
    assert_same(&tampered, &state(&vol), "after the dry run");

    let run = plugin(
        &cluster,
        &[
            "restore",
            manifest.to_str().unwrap(),
            "--in-place",
            "--yes",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = json(&run);
    assert_eq!(out["verified"], true);
    assert_eq!(out["inPlace"], true);
    assert_eq!(out["mode"], "replace");
    assert!(!extra.exists());
    assert_same(&original, &state(&vol), "after the in-place restore");
    assert!(leftovers(&vol).is_empty());
    assert_no_helper_pods(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_without_a_terminal_or_yes_changes_nothing() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    tamper(&vol);
    let before = state(&vol);
    let run = plugin(
        &cluster,
        &["restore", manifest.to_str().unwrap(), "--in-place"],
    )
    .await;
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert_same(&before, &state(&vol), "after the refusal");
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_in_place_asks_a_second_time() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let original = state(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let extra = tamper(&vol);
    let tampered = state(&vol);
    let args = [
        "restore",
        manifest.to_str().unwrap(),
        "--in-place",
        "--no-progress",
    ];
    let first = format!("Type \"{PVC}\" to confirm");
    let second = "Type \"in-place\" to confirm";

    // The PVC's name, then anything but "in-place": exit 4, the volume as it was.
    for wrong in ["", PVC, "y"] {
        let (code, screen) =
            plugin_on_terminal_answering(&cluster, &args, &[(&first, PVC), (second, wrong)]).await;
        assert_eq!(code, 4, "{wrong:?}: {screen}");
        assert!(screen.contains("no rollback"), "{screen}");
        assert!(screen.contains("partly restored"), "{screen}");
        assert!(screen.contains("aborted"), "{screen}");
        assert_same(
            &tampered,
            &state(&vol),
            "after declining the second question",
        );
        assert!(extra.exists());
        assert!(helper_pods(&cluster).is_empty());
    }

    // Both answered: the volume is the backup again.
    let (code, screen) =
        plugin_on_terminal_answering(&cluster, &args, &[(&first, PVC), (second, "in-place")]).await;
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("in place"), "{screen}");
    assert_same(
        &original,
        &state(&vol),
        "after the confirmed in-place restore",
    );
    assert!(!extra.exists());
    assert_no_helper_pods(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_in_place_restore_says_partly_restored_and_a_rerun_finishes() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let original = state(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let extra = tamper(&vol);
    // The measuring step prints two numbers, deleting and tar -x print nothing: the first
    // session to cross 1 KiB of stdout is the verification, after the volume was cleared and
    // extracted into.
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 1024,
        count: 1,
    });
    let args = [
        "restore",
        manifest.to_str().unwrap(),
        "--in-place",
        "--yes",
        "-o",
        "json",
    ];
    let mut no_retries = args.to_vec();
    no_retries.extend(["--retries", "0"]);
    let run = plugin(&cluster, &no_retries).await;
    cluster.fault(FaultRequest::Clear);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("partly restored"), "{}", run.stderr);
    assert!(
        run.stderr.contains("run the same restore command again"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("rolled back"), "{}", run.stderr);
    assert_eq!(json(&run)["status"], "failed");
    assert!(
        !extra.exists(),
        "the in-place restore had deleted the content"
    );
    assert_no_helper_pods(&cluster).await;

    // The same command, with retries, while the fault strikes once more: the second attempt
    // deletes and extracts again, and the volume is exactly the backup.
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 1024,
        count: 1,
    });
    let run = plugin(&cluster, &args).await;
    cluster.fault(FaultRequest::Clear);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = json(&run);
    assert_eq!(out["attempts"], 2, "{out:#}");
    assert_eq!(out["inPlace"], true);
    assert!(!run.stderr.contains("rolled back"), "{}", run.stderr);
    assert_same(&original, &state(&vol), "after the re-run");
    assert!(leftovers(&vol).is_empty());
    assert_no_helper_pods(&cluster).await;
}

/// Entries of a volume's root but `lost+found`.
fn entries(vol: &Path) -> Vec<String> {
    std::fs::read_dir(vol)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect()
}

/// A new, empty PVC is restored into directly (no staging, no swap), and stays all or nothing:
/// a damaged archive or a crash leaves it empty again; the next restore fills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_into_a_new_pvc_leaves_it_empty() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let before = state(&cluster.volume_path(NS, PVC));
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let archive = manifest
        .parent()
        .unwrap()
        .join(m["archive"]["file_name"].as_str().unwrap());
    let good = std::fs::read(&archive).unwrap();
    let restore = |extra: &'static [&'static str]| {
        let mut args = vec![
            "restore",
            manifest.to_str().unwrap(),
            "--to-pvc",
            "fresh",
            "--create-pvc",
            "--size",
            "48Mi",
            "--yes",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let vol = cluster.volume_path(NS, "fresh");

    // A flipped byte, found while streaming: exit 3, and the new PVC is empty again.
    let mut flipped = good.clone();
    let i = flipped.len() / 2;
    flipped[i] ^= 0x01;
    std::fs::write(&archive, &flipped).unwrap();
    let args = restore(&[]);
    let run = plugin(
        &cluster,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(entries(&vol).is_empty(), "{:?}", entries(&vol));
    assert_no_helper_pods(&cluster).await;
    std::fs::write(&archive, &good).unwrap();

    // The helper's container killed once the in-pod hashing has printed 1 KiB (the data is on
    // the volume by then), without retries: rolled back to empty in a fresh helper pod.
    cluster.fault(FaultRequest::KillExec {
        after_bytes: 1024,
        count: 1,
    });
    let args = restore(&["--retries", "0"]);
    let run = plugin(
        &cluster,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    cluster.fault(FaultRequest::Clear);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);
    assert!(entries(&vol).is_empty(), "{:?}", entries(&vol));
    assert_no_helper_pods(&cluster).await;

    // The PVC exists now, still empty: restored into directly, exactly the backup.
    let args = restore(&[]);
    let run = plugin(
        &cluster,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_same(&before, &state(&vol), "restored into the empty PVC");
    assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
    assert_no_helper_pods(&cluster).await;
}

/// On a terminal, a volume without room to stage the backup is refused before the question,
/// not after the user typed the PVC's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_no_room_is_refused_before_the_question() {
    use std::io::Write;
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let mut f = std::fs::File::create(vol.join("filler")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
        assert!(written < 1 << 30, "the volume's capacity is not enforced");
    }
    drop(f);
    let before = state(&vol);
    let args = ["restore", manifest.to_str().unwrap(), "--no-progress"];
    let (code, screen) = plugin_on_terminal_answering(&cluster, &args, &[]).await;
    assert_eq!(code, 4, "{screen}");
    assert!(screen.contains("free"), "{screen}");
    assert!(!screen.contains("to confirm"), "asked anyway: {screen}");
    assert_same(&before, &state(&vol), "after the refusal");
    assert!(leftovers(&vol).is_empty());
    assert_no_helper_pods(&cluster).await;
}

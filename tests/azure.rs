//! Backups to and from Azure Blob Storage, end to end: kubesim for the cluster, Azurite (the
//! official emulator) on loopback for the storage account.

mod common;

use std::io::Write;

use common::azurite::Azurite;
use common::*;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_verify_restore_through_a_container() {
    let cluster = demo().await;
    let az = Azurite::start();
    az.create_container("backups");
    let vol = cluster.volume_path(NS, PVC);
    // 12 MiB that zstd cannot shrink: three blocks at --part-size 5.
    let mut x = 0x2545f4914f6cdd1du64;
    let mut f = std::io::BufWriter::new(std::fs::File::create(vol.join("blob.bin")).unwrap());
    for _ in 0..(12 << 20) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
    drop(f);
    let before = snapshot(&vol);
    let env = az.env();
    let dest = "az://backups/cluster-a";

    let run = plugin_env(
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
            "-o",
            "json",
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = json(&run);
    let id = out["backupId"].as_str().unwrap().to_string();
    let mut blobs = az.blobs("backups");
    blobs.sort();
    assert_eq!(
        blobs,
        vec![
            format!("cluster-a/{id}/{NS}/{PVC}.entries.jsonl.zst"),
            format!("cluster-a/{id}/{NS}/{PVC}.manifest.json"),
            format!("cluster-a/{id}/{NS}/{PVC}.tar.zst"),
        ]
    );
    let stored = az.blob("backups", &format!("cluster-a/{id}/{NS}/{PVC}.tar.zst"));
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("a.tar.zst");
    std::fs::write(&file, &stored).unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    untar(&file, unpacked.path());
    assert_eq!(snapshot(unpacked.path()), before);

    let run = plugin_env(
        cluster.kubeconfig(),
        &["list", "azure://backups/cluster-a", "-o", "json"],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let items = json(&run)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["restorable"], true);

    let backup = format!("{id}/{NS}/{PVC}");
    let run = plugin_env(
        cluster.kubeconfig(),
        &["verify", &backup, "--from", dest],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    let run = plugin_env(
        cluster.kubeconfig(),
        &[
            "restore",
            &backup,
            "--from",
            dest,
            "-n",
            NS,
            "--to-pvc",
            "from-azure",
            "--create-pvc",
            "--size",
            "64Mi",
            "--yes",
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(snapshot(&cluster.volume_path(NS, "from-azure")), before);

    // A blob changed behind the tool's back is caught.
    let mut damaged = stored;
    let at = damaged.len() / 3;
    damaged[at] ^= 1;
    az.put_blob(
        "backups",
        &format!("cluster-a/{id}/{NS}/{PVC}.tar.zst"),
        &damaged,
    );
    let run = plugin_env(
        cluster.kubeconfig(),
        &["verify", &backup, "--from", dest],
        &env,
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);

    // A wrong account key is refused and not printed.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMTIzNDU2Nzg5MA==";
    let bad_env = vec![
        (
            "AZURE_STORAGE_CONNECTION_STRING".to_string(),
            format!(
                "DefaultEndpointsProtocol=http;AccountName={};AccountKey={wrong};BlobEndpoint={};",
                common::azurite::ACCOUNT,
                az.blob_endpoint()
            ),
        ),
        (
            "AZURE_MSI_ENDPOINT".to_string(),
            "http://127.0.0.1:9/token".to_string(),
        ),
    ];
    let run = plugin_env(cluster.kubeconfig(), &["list", dest], &bad_env).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
    assert!(
        run.stderr.contains("AZURE_STORAGE_CONNECTION_STRING"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(wrong), "{}", run.stderr);
    assert!(helper_pods(&cluster).is_empty());
}

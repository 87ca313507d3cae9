//! Client-side encryption with age, end to end (README: Encryption): kubesim for the cluster, a
//! directory or moto's S3 server for the destination. What a user checks: a marker planted in
//! the volume is nowhere at the destination, `list` works without a key, a restore with the key
//! is exact, and without it (or with a wrong one) nothing is touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use age::secrecy::ExposeSecret;
use common::moto::Moto;
use common::*;

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";
const MARKER: &str = "ZEBRA-MARKER-7f3c2a";

/// A new age X25519 key: (identity file, recipient), as `age-keygen -o FILE` writes it.
// age 0.13 calls X25519 keys legacy (not post-quantum); they are what `age-keygen` makes.
#[allow(deprecated)]
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "# created: by the test\n# public key: {recipient}\n{}\n",
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    (path, recipient)
}

/// Plants the marker in a file's content and in a file name, in a directory whose name has it
/// too.
fn plant(vol: &Path) {
    let dir = vol.join(format!("dir-{MARKER}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{MARKER}.txt")),
        format!("the secret is {MARKER}\n").repeat(100),
    )
    .unwrap();
    std::fs::write(vol.join("plain.txt"), format!("{MARKER}\n")).unwrap();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_round_trip_to_a_directory() {
    let cluster = demo().await;
    let keys = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_key(keys.path(), "key.txt");
    let (wrong, _) = age_key(keys.path(), "other.txt");
    let vol = cluster.volume_path(NS, PVC);
    plant(&vol);
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
            arg(dest.path()),
            "--encrypt-to",
            &recipient,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let manifest = PathBuf::from(json(&run)["results"][0]["manifest"].as_str().unwrap());
    assert!(json(&run)["results"][0]["archive"]
        .as_str()
        .unwrap()
        .ends_with(".tar.zst.age"));

    // The marker is nowhere at the destination: not in any object's bytes, nor in a name.
    let stored = files_under(dest.path());
    assert_eq!(
        stored.len(),
        4,
        "archive, entries, details, header: {stored:?}"
    );
    for f in &stored {
        assert!(!f.to_string_lossy().contains(MARKER), "{}", f.display());
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !contains(&bytes, MARKER.as_bytes()),
            "{} holds the marker",
            f.display()
        );
        assert!(
            !contains(&bytes, b"plain.txt"),
            "{} holds a path",
            f.display()
        );
    }

    // Without a key: list, inspect and a verify of the stored bytes work.
    let run = plugin(&cluster, &["list", arg(dest.path())]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("complete, encrypted (age: x25519)"),
        "{}",
        run.stdout
    );
    let run = plugin(&cluster, &["inspect", arg(&manifest)]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("Encrypted:     age (x25519)"),
        "{}",
        run.stdout
    );
    let run = plugin(&cluster, &["verify", arg(&manifest)]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("STORED BYTES OK"), "{}", run.stdout);
    assert!(
        run.stdout.contains("not checked without a key"),
        "{}",
        run.stdout
    );
    let run = plugin(&cluster, &["inspect", arg(&manifest), "--files"]).await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);

    // With the key, verify checks everything.
    let run = plugin(
        &cluster,
        &["verify", arg(&manifest), "--identity", arg(&identity)],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(": OK ("), "{}", run.stdout);
    let run = plugin(
        &cluster,
        &[
            "inspect",
            arg(&manifest),
            "--files",
            "--identity",
            arg(&identity),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("dir-{MARKER}/{MARKER}.txt")),
        "{}",
        run.stdout
    );

    // Change the volume; a restore without the key, or with another one, touches nothing.
    std::fs::remove_file(vol.join("plain.txt")).unwrap();
    let changed = state(&vol);
    for (extra, why) in [
        (vec![], "no identity was given"),
        (vec!["--identity", arg(&wrong)], "none of the identities"),
    ] {
        let mut args = vec!["restore", arg(&manifest), "--yes"];
        args.extend(extra);
        let run = plugin(&cluster, &args).await;
        assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(why), "{}", run.stderr);
        assert!(run.stderr.contains("age: x25519"), "{}", run.stderr);
        assert!(
            helper_pods(&cluster).is_empty(),
            "{:?}",
            helper_pods(&cluster)
        );
        assert_same(&changed, &state(&vol), "after a refused restore");
    }

    // With the key (named by the environment variable), the restore is exact.
    let run = plugin_env(
        cluster.kubeconfig(),
        &["restore", arg(&manifest), "--yes", "-o", "json"],
        &[("PVBACKUP_IDENTITY_FILE".into(), arg(&identity).into())],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(json(&run)["verified"], true);
    assert_same(&before, &state(&vol), "after restore");

    // A drill decrypts in the client too; without the key it creates nothing.
    let run = plugin(&cluster, &["drill", arg(&manifest), "-o", "json"]).await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(helper_pods(&cluster).is_empty());
    let run = plugin(
        &cluster,
        &[
            "drill",
            arg(&manifest),
            "--identity",
            arg(&identity),
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(json(&run)["verdict"], "intact");

    // A flipped byte in the encrypted archive: integrity failure (exit 3), volume untouched.
    let archive = stored
        .iter()
        .find(|f| f.to_string_lossy().ends_with(".tar.zst.age"))
        .unwrap();
    let mut bytes = std::fs::read(archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(archive, &bytes).unwrap();
    let run = plugin(
        &cluster,
        &["verify", arg(&manifest), "--identity", arg(&identity)],
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let run = plugin(&cluster, &["verify", arg(&manifest)]).await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("MISMATCH archive"), "{}", run.stdout);
    std::fs::remove_file(vol.join("plain.txt")).unwrap();
    let changed = state(&vol);
    let run = plugin(
        &cluster,
        &[
            "restore",
            arg(&manifest),
            "--yes",
            "--identity",
            arg(&identity),
        ],
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_same(
        &changed,
        &state(&vol),
        "after a restore of a damaged backup",
    );
}

/// `ssh-keygen -t ed25519`: (private key, public key line).
fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "test",
            "-f",
            arg(&key),
        ])
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success());
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    (key, public.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_round_trip_through_a_bucket_to_ssh_and_age_recipients() {
    let cluster = demo().await;
    let moto = Moto::start();
    moto.create_bucket("vault");
    let keys = tempfile::tempdir().unwrap();
    let (ssh_private, ssh_public) = ssh_key(keys.path());
    let (_, age_recipient) = age_key(keys.path(), "key.txt");
    let recipients = keys.path().join("recipients.txt");
    std::fs::write(
        &recipients,
        format!("# the team\n{age_recipient}\n\n{ssh_public}\n"),
    )
    .unwrap();
    let vol = cluster.volume_path(NS, PVC);
    plant(&vol);
    let before = state(&vol);
    let env = moto.env();

    let run = plugin_env(
        cluster.kubeconfig(),
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            "s3://vault/team",
            "--encrypt-to-file",
            arg(&recipients),
            "-o",
            "json",
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let manifest = json(&run)["results"][0]["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = moto.keys("vault");
    assert_eq!(stored.len(), 4, "{stored:?}");
    for k in &stored {
        assert!(!k.contains(MARKER), "{k}");
        let bytes = moto.object("vault", k);
        assert!(!contains(&bytes, MARKER.as_bytes()), "{k} holds the marker");
    }

    let run = plugin_env(cluster.kubeconfig(), &["list", "s3://vault/team"], &env).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("encrypted (age: x25519, ssh-ed25519)"),
        "{}",
        run.stdout
    );

    std::fs::remove_file(vol.join("plain.txt")).unwrap();
    let mut with_key = env.clone();
    with_key.push(("PVBACKUP_IDENTITY_FILE".into(), arg(&ssh_private).into()));
    let run = plugin_env(cluster.kubeconfig(), &["verify", &manifest], &with_key).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let run = plugin_env(
        cluster.kubeconfig(),
        &["restore", &manifest, "--yes", "-o", "json"],
        &with_key,
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_same(&before, &state(&vol), "after restore from the bucket");
    assert!(helper_pods(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_recipients_are_refused_before_anything_runs() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let run = plugin(
        &cluster,
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            arg(dest.path()),
            "--encrypt-to",
            "age1notakey",
        ],
    )
    .await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("--encrypt-to \"age1notakey\""),
        "{}",
        run.stderr
    );
    assert!(files_under(dest.path()).is_empty());
    assert!(helper_pods(&cluster).is_empty());
}

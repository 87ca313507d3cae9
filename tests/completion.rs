//! kubectl's plugin completion, through real kubectl (>= 1.26): `kubectl __complete pvbackup …`
//! finds `kubectl_complete-pvbackup` on PATH (the committed script), which runs the plugin
//! binary; candidates come from kubesim and from a destination directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubesim::{Cluster, ClusterOptions, Scenario};

fn kubectl(version: &str) -> PathBuf {
    let dir =
        std::env::var("KUBECTL_DIR").unwrap_or_else(|_| "/usr/lib/google-cloud-sdk/bin".into());
    PathBuf::from(dir).join(format!("kubectl.{version}"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A PATH directory holding the plugin and the committed completion script, as a user sets up.
fn plugin_path() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_kubectl-pvbackup"),
        dir.path().join("kubectl-pvbackup"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        repo().join("completions/kubectl_complete-pvbackup"),
        dir.path().join("kubectl_complete-pvbackup"),
    )
    .unwrap();
    dir
}

struct Answer {
    candidates: Vec<String>,
    directive: String,
    stderr: String,
    elapsed: Duration,
}

impl Answer {
    /// The candidates without their descriptions.
    fn names(&self) -> BTreeSet<String> {
        self.candidates
            .iter()
            .map(|c| c.split('\t').next().unwrap().to_string())
            .collect()
    }
}

/// `kubectl.<version> __complete pvbackup WORDS…`, as the shell's completion script calls it.
async fn complete(version: &str, kubeconfig: &Path, words: &[&str]) -> Answer {
    let path = plugin_path();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(kubectl(version));
    cmd.arg("__complete")
        .arg("pvbackup")
        .args(words)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", path.path().display()),
        )
        .env("HOME", home.path())
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null());
    let answer = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = cmd.output().expect("kubectl runs");
        let elapsed = started.elapsed();
        assert!(out.status.success(), "kubectl __complete failed: {out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut lines: Vec<String> = stdout.lines().map(str::to_string).collect();
        let directive = lines.pop().expect("a directive line");
        Answer {
            candidates: lines,
            directive,
            stderr: String::from_utf8_lossy(&out.stderr).into(),
            elapsed,
        }
    })
    .await
    .unwrap();
    drop((path, home));
    answer
}

fn names_in(cluster: &Cluster, plural: &str, namespace: Option<&str>) -> BTreeSet<String> {
    cluster
        .objects(plural, namespace)
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn demo_cluster() -> Cluster {
    // Completion reads names only; no need to wait for the demo pods to run.
    Cluster::start(ClusterOptions {
        scenario: Scenario::Demo,
        ..Default::default()
    })
    .await
    .expect("kubesim starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_complete_after_n_through_kubectl() {
    let cluster = demo_cluster().await;
    let namespaces = names_in(&cluster, "namespaces", None);
    for ns in ["shop", "payments", "inventory", "edge", "batch", "ambient"] {
        assert!(namespaces.contains(ns), "demo namespace {ns} missing");
    }
    for version in ["1.27", "1.33"] {
        let a = complete(version, cluster.kubeconfig(), &["create", "-n", ""]).await;
        assert_eq!(a.names(), namespaces, "kubectl {version}");
        // NoFileComp: a namespace is never a file name.
        assert_eq!(a.directive, ":4", "kubectl {version}");
    }
    let a = complete("1.33", cluster.kubeconfig(), &["create", "--namespace=pa"]).await;
    assert_eq!(a.candidates, vec!["--namespace=payments"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_names_complete_for_create_and_restore_targets() {
    let cluster = demo_cluster().await;
    let shop = names_in(&cluster, "persistentvolumeclaims", Some("shop"));
    assert!(
        shop.contains("data-orders-db-0") && shop.len() >= 3,
        "{shop:?}"
    );

    let a = complete("1.33", cluster.kubeconfig(), &["create", "-n", "shop", ""]).await;
    assert_eq!(a.names(), shop);
    // Descriptions tell PVCs apart: capacity, access modes, storage class.
    let orders = a
        .candidates
        .iter()
        .find(|c| c.starts_with("data-orders-db-0\t"))
        .expect("a description");
    assert!(orders.contains("ReadWriteOnce"), "{orders}");

    // A PVC already on the line is not offered again; the typed prefix filters.
    let a = complete(
        "1.33",
        cluster.kubeconfig(),
        &["create", "-n", "shop", "data-orders-db-0", ""],
    )
    .await;
    assert!(!a.names().contains("data-orders-db-0"));
    assert_eq!(a.names().len(), shop.len() - 1);
    let a = complete(
        "1.33",
        cluster.kubeconfig(),
        &["create", "-n", "shop", "da"],
    )
    .await;
    assert_eq!(
        a.names(),
        shop.iter()
            .filter(|n| n.starts_with("da"))
            .cloned()
            .collect()
    );

    // With -A, create takes NAMESPACE/NAME.
    let a = complete("1.33", cluster.kubeconfig(), &["create", "-A", "payments/"]).await;
    let payments: BTreeSet<String> = names_in(&cluster, "persistentvolumeclaims", Some("payments"))
        .into_iter()
        .map(|n| format!("payments/{n}"))
        .collect();
    assert_eq!(a.names(), payments);

    // restore --to-pvc: PVCs of the -n namespace.
    let a = complete(
        "1.33",
        cluster.kubeconfig(),
        &["restore", "x.manifest.json", "-n", "shop", "--to-pvc", ""],
    )
    .await;
    assert_eq!(a.names(), shop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommands_flags_and_values_complete_without_a_cluster() {
    let nowhere = Path::new("/nonexistent/kubeconfig");
    let a = complete("1.33", nowhere, &["ver"]).await;
    assert_eq!(
        a.names(),
        ["verify", "version"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let a = complete("1.33", nowhere, &["create", "--comp"]).await;
    assert_eq!(
        a.names(),
        ["--compression".to_string()].into_iter().collect()
    );
    let a = complete("1.33", nowhere, &["create", "--compression", ""]).await;
    assert_eq!(
        a.names(),
        ["gzip", "zstd", "none"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let a = complete("1.33", nowhere, &["discover", "-o", "j"]).await;
    assert_eq!(a.candidates, vec!["json"]);
    // --to takes a directory: the shell completes directories (Cobra's FilterDirs, 16).
    let a = complete("1.33", nowhere, &["create", "--to", ""]).await;
    assert!(a.candidates.is_empty());
    assert_eq!(a.directive, ":16");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_ids_complete_from_the_from_destination() {
    let dest = tempfile::tempdir().unwrap();
    let put = |rel: &str| {
        let p = dest.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    };
    put("20260101T000000Z-aaaa/shop/data-orders-db-0.tar.zst");
    put("20260101T000000Z-aaaa/shop/data-orders-db-0.manifest.json");
    put("20260102T000000Z-bbbb/payments/ledger.tar.gz");
    put("20260102T000000Z-bbbb/payments/ledger.manifest.json");
    // An interrupted backup (no manifest) is never offered.
    put("20260103T000000Z-cccc/shop/media.tar.zst");
    let from = dest.path().to_str().unwrap();
    let nowhere = Path::new("/nonexistent/kubeconfig");
    for sub in ["verify", "inspect", "restore"] {
        let a = complete("1.33", nowhere, &[sub, "--from", from, ""]).await;
        assert_eq!(
            a.names(),
            [
                "20260101T000000Z-aaaa/shop/data-orders-db-0",
                "20260102T000000Z-bbbb/payments/ledger"
            ]
            .map(String::from)
            .into_iter()
            .collect(),
            "{sub}"
        );
    }
    let a = complete("1.33", nowhere, &["restore", "--from", from, "20260102"]).await;
    assert_eq!(a.candidates, vec!["20260102T000000Z-bbbb/payments/ledger"]);
}

/// A server that accepts connections and never answers: the worst case for a completion,
/// where nothing fails fast.
fn black_hole() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_gives_a_quick_silent_empty_answer() {
    let (_listener, port) = black_hole();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: shop}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: t}}\n"
        ),
    )
    .unwrap();

    let a = complete("1.33", &kubeconfig, &["create", "-n", ""]).await;
    assert!(a.candidates.is_empty(), "{:?}", a.candidates);
    assert_eq!(a.directive, ":4");
    // kubectl's stderr holds its own debug lines (Cobra's CompDebugln), nothing from the plugin.
    for line in a.stderr.lines() {
        assert!(
            line.starts_with("[Debug] ") || line.starts_with("Completion ended with directive: "),
            "not from kubectl: {line:?}"
        );
    }
    // The completer gives up after its 2 s deadline; without one it would wait on the
    // silent server for as long as the TLS handshake is allowed to take (no limit here).
    assert!(a.elapsed < Duration::from_secs(8), "took {:?}", a.elapsed);

    // The binary itself is silent too (the script's 2>/dev/null is a second line of defence).
    let kc = kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"))
            .args(["__complete", "create", "-n", "shop", ""])
            .env("KUBECONFIG", &kc)
            .env("PVBACKUP_LOG", "trace")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), ":4\n");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_binary_answers_when_called_as_the_completion_executable() {
    // A copy named kubectl_complete-pvbackup(.exe) is how Windows users, who cannot run the
    // shell script, get plugin completion.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kubectl_complete-pvbackup");
    std::fs::copy(env!("CARGO_BIN_EXE_kubectl-pvbackup"), &copy).unwrap();
    let out = Command::new(&copy)
        .args(["cle"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cleanup\tDelete what interrupted runs left: helper pods, or (--to) partial backups at DEST\n:4\n"
    );
}

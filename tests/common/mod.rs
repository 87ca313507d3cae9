//! Shared by the plugin's integration tests: a kubesim per test, and running the real binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kubesim::{Cluster, ClusterOptions, Scenario};

pub mod azurite;
pub mod fake_gcs;
pub mod moto;
pub mod s3s_fs;

pub async fn demo() -> Cluster {
    let c = Cluster::start(ClusterOptions {
        scenario: Scenario::Demo,
        ..Default::default()
    })
    .await
    .expect("kubesim starts");
    c.wait_for_pods_running(Duration::from_secs(60))
        .await
        .expect("demo pods run");
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl-pvbackup ARGS` against the cluster, with no TTY and no stdin, off the async
/// runtime's threads.
pub async fn plugin(cluster: &Cluster, args: &[&str]) -> Run {
    plugin_with(cluster.kubeconfig(), args).await
}

pub async fn plugin_with(kubeconfig: &Path, args: &[&str]) -> Run {
    plugin_env(kubeconfig, args, &[]).await
}

/// The plugin's command with `env` set and the host's cloud settings removed (tests never
/// reach a real cloud or a metadata endpoint).
pub fn plugin_command(kubeconfig: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"));
    c.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("PVBACKUP_LOG")
        .stdin(Stdio::null());
    for k in moto::SCRUB {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// [`plugin_with`] with extra environment variables.
pub async fn plugin_env(kubeconfig: &Path, args: &[&str], env: &[(String, String)]) -> Run {
    let kubeconfig = kubeconfig.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = plugin_command(&kubeconfig, &args, &env)
            .output()
            .expect("the plugin binary runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    })
    .await
    .expect("join")
}

/// Runs the plugin on a pseudo-terminal (stdin, stdout and stderr all on it, as at a shell),
/// waits until the terminal shows `prompt`, types `answer` and Enter, and returns the exit code
/// and everything the terminal showed.
pub async fn plugin_on_terminal(
    cluster: &Cluster,
    args: &[&str],
    prompt: &str,
    answer: &str,
) -> (i32, String) {
    plugin_on_terminal_answering(cluster, args, &[(prompt, answer)]).await
}

/// [`plugin_on_terminal`] for several prompts in turn: for each `(prompt, answer)`, waits until
/// the terminal shows the prompt, then types the answer and Enter.
pub async fn plugin_on_terminal_answering(
    cluster: &Cluster,
    args: &[&str],
    dialogue: &[(&str, &str)],
) -> (i32, String) {
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let dialogue: Vec<(String, String)> = dialogue
        .iter()
        .map(|(p, a)| (p.to_string(), a.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"));
        cmd.args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("TERM", "xterm")
            .env_remove("PVBACKUP_LOG");
        let mut term = rexpect::session::spawn_command(cmd, Some(60_000)).expect("spawn on a pty");
        let mut screen = String::new();
        for (prompt, answer) in &dialogue {
            let shown = term.exp_string(prompt).unwrap_or_else(|e| {
                panic!("the terminal never showed {prompt:?}: {e}\nit showed: {screen}")
            });
            screen.push_str(&shown);
            screen.push_str(prompt);
            term.send_line(answer).expect("type the answer");
        }
        let rest = term.exp_eof().expect("the plugin exits");
        let code = match term.process().wait().expect("wait") {
            rexpect::process::WaitStatus::Exited(_, code) => code,
            other => panic!("the plugin did not exit normally: {other:?}"),
        };
        screen.push_str(&rest);
        (code, screen)
    })
    .await
    .expect("join")
}

/// Once a helper pod in `ns` runs and has streamed for `after`, cuts the API off for 2 s
/// (connections reset, new ones refused), then clears the fault.
pub async fn outage_while_streaming(cluster: &Cluster, ns: &str, after: std::time::Duration) {
    wait_for_running_helper(cluster, ns).await;
    tokio::time::sleep(after).await;
    cluster.fault(kubesim::FaultRequest::Outage { seconds: 2.0 });
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    cluster.fault(kubesim::FaultRequest::Clear);
}

/// Starts the plugin in the background, for tests that inject a fault while it runs.
pub fn spawn_plugin(cluster: &Cluster, args: &[&str]) -> tokio::task::JoinHandle<Run> {
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        plugin_with(&kubeconfig, &args).await
    })
}

/// What a user compares between two trees: type, content, permission bits, owner, link target,
/// and which paths are hard links to the same file.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub mtime: i64,
}

pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let (kind, content, link) = if md.file_type().is_symlink() {
                ("symlink", None, Some(std::fs::read_link(&p).unwrap()))
            } else if md.is_dir() {
                stack.push(p.clone());
                ("dir", None, None)
            } else {
                ("file", Some(std::fs::read(&p).unwrap()), None)
            };
            let mtime = if kind == "file" { md.mtime() } else { 0 };
            out.insert(
                rel,
                Node {
                    kind,
                    mode: md.permissions().mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    content,
                    link,
                    mtime,
                },
            );
        }
    }
    out
}

/// Hard-link groups (paths sharing an inode), as sorted lists.
pub fn hardlinks(root: &Path) -> Vec<Vec<PathBuf>> {
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() && md.nlink() > 1 {
                by_ino
                    .entry(md.ino())
                    .or_default()
                    .push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    by_ino
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect()
}

/// Unpacks an archive with the system's tools, the way a user without this plugin would.
pub fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let name = archive.to_string_lossy();
    let decompress = if name.ends_with(".zst") {
        "zstd -dc"
    } else if name.ends_with(".gz") {
        "gzip -dc"
    } else {
        "cat"
    };
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{decompress} \"$0\" | tar --numeric-owner -xpf - -C \"$1\""
        ))
        .arg(archive)
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {} failed", archive.display());
}

/// Every regular file under `dir` (relative path → bytes), for "nothing was written" checks.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Helper pods this plugin created that still exist in the cluster.
pub fn helper_pods(cluster: &Cluster) -> Vec<String> {
    cluster
        .objects("pods", None)
        .iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl-pvbackup")
        .map(|p| {
            format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or_default(),
                p["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Waits until a helper pod of this plugin runs in `namespace` (its stream is then flowing).
pub async fn wait_for_running_helper(cluster: &Cluster, namespace: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let running = cluster.objects("pods", Some(namespace)).iter().any(|p| {
            p["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl-pvbackup"
                && p["status"]["phase"] == "Running"
        });
        if running {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no helper pod ran in {namespace}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tree, its hard links and the root directory's own mode and owner.
pub type State = (
    std::collections::BTreeMap<PathBuf, Node>,
    Vec<Vec<PathBuf>>,
    (u32, u32, u32),
);

pub fn state(root: &Path) -> State {
    let md = std::fs::metadata(root).unwrap();
    (
        snapshot(root),
        hardlinks(root),
        (md.permissions().mode() & 0o7777, md.uid(), md.gid()),
    )
}

pub fn assert_same(want: &State, got: &State, what: &str) {
    assert_eq!(
        want.0.keys().collect::<Vec<_>>(),
        got.0.keys().collect::<Vec<_>>(),
        "{what}: paths differ"
    );
    for (p, n) in &want.0 {
        assert_eq!(n, &got.0[p], "{what}: {} differs", p.display());
    }
    assert_eq!(want.1, got.1, "{what}: hard links differ");
    assert_eq!(want.2, got.2, "{what}: the volume root's mode/owner differ");
}

/// A command's stdout as JSON; panics showing both streams when it is not.
pub fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            run.stdout, run.stderr
        )
    })
}

/// The whole manifest (schema-2 header and its entries stream, or a schema-1 document) at
/// `path`, in the expanded form `inspect --files -o json` prints. Written back (edited) to a
/// `*.manifest.json`, it is a manifest every command reads.
pub fn whole_manifest(path: &Path) -> serde_json::Value {
    let dest =
        kubectl_pvbackup::destination::local::LocalDir::new(path.parent().unwrap().to_path_buf());
    let key = path.file_name().unwrap().to_str().unwrap();
    let m = kubectl_pvbackup::manifest::load(&dest, key).unwrap();
    serde_json::to_value(&m).unwrap()
}

/// Backs up `ns/pvc` with `create`; returns the manifest path.
pub async fn backup(cluster: &Cluster, ns: &str, pvc: &str, dest: &Path) -> PathBuf {
    let run = plugin(
        cluster,
        &[
            "create",
            pvc,
            "-n",
            ns,
            "--all-pvcs",
            "--to",
            dest.to_str().unwrap(),
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "backup failed: {}\n{}", run.stdout, run.stderr);
    PathBuf::from(json(&run)["results"][0]["manifest"].as_str().unwrap())
}

/// Every path under `root`, sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every entry under `root` (not `root` itself): type, mode, owner, content or link target as
/// bytes, file mtime; hard links as the inode's first path. Fifos are not read.
pub fn tree(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut inodes = BTreeMap::new();
    walk(root)
        .into_iter()
        .map(|p| {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let ft = md.file_type();
            let what = if ft.is_symlink() {
                format!(
                    "symlink -> {:?}",
                    String::from_utf8_lossy(std::fs::read_link(&p).unwrap().as_os_str().as_bytes())
                )
            } else if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else if ft.is_file() {
                let first = inodes.entry(md.ino()).or_insert_with(|| rel.clone());
                format!(
                    "file {:?} mtime {} first name {:?}",
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()),
                    md.mtime(),
                    String::from_utf8_lossy(first)
                )
            } else {
                format!("other {:o}", md.mode())
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                md.mode() & 0o7777
            };
            (
                rel,
                format!("{what} mode {mode:o} owner {}:{}", md.uid(), md.gid()),
            )
        })
        .collect()
}

/// A file of `len` bytes that no compressor shrinks, from `seed` (xorshift64).
pub fn random_file(path: &Path, len: usize, seed: u64) {
    use std::io::Write;
    let mut x = seed | 1;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..len / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
}

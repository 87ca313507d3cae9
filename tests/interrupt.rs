//! Interruptions the client cannot clean up after: `kubectl pvbackup` killed with SIGKILL (a
//! closed laptop, a dropped VPN) in every phase of a restore — streaming into staging, the
//! swap, the final check, the rollback — and during a `create`.
//!
//! Afterwards the volume holds exactly its old tree or exactly the backup and nothing else:
//! the helper pod notices that its client stopped renewing its lease, rolls the restore back
//! by itself and stops. A plain re-run then ends exactly on the backup, and no helper pod is
//! left running. kubesim's bandwidth cap widens the phases enough to be hit.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kubesim::{Cluster, FaultRequest};

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";
/// The helper's lease in these tests (the default is 60 s), so that a vanished client's
/// helper gives up within seconds. Long enough that a client starved of CPU by the tests
/// running next to it still renews in time.
const LEASE: &str = "8";
/// A lease no test outlives: the helper of a vanished client is still running when the next
/// command comes.
const LONG_LEASE: &str = "600";

fn lease(secs: &str) -> Vec<(String, String)> {
    vec![("PVBACKUP_LEASE_SECONDS".to_string(), secs.to_string())]
}

/// The run's entries at the volume root (`.pvbackup-*`).
fn leftovers(vol: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(vol)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pvbackup-"))
        .collect();
    v.sort();
    v
}

fn has(vol: &Path, prefix: &str) -> bool {
    leftovers(vol).iter().any(|n| n.starts_with(prefix))
}

/// 1,500 more top-level files, so that the swap (a rename each) takes a while.
fn widen(vol: &Path) {
    for i in 0..1500 {
        std::fs::write(vol.join(format!("top-{i:04}.txt")), format!("entry {i}\n")).unwrap();
    }
}

/// Changes the tree after the backup: what a restore replaces.
fn change(vol: &Path) {
    std::fs::write(vol.join("top-0007.txt"), b"changed after the backup\n").unwrap();
    std::fs::remove_file(vol.join("top-0010.txt")).unwrap();
    std::fs::write(vol.join("only-in-the-old-tree"), b"x\n").unwrap();
}

/// The plugin running in the background, its stderr collected as it comes.
struct Client {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Client {
    fn start(cluster: &Cluster, args: &[&str], env: &[(String, String)]) -> Client {
        let mut child = plugin_command(cluster.kubeconfig(), args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the plugin starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Client { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// SIGKILL: the client can clean up nothing.
    fn kill(mut self) {
        self.signal(libc::SIGKILL);
        self.child.wait().unwrap();
    }

    /// Waits until `cond` holds, failing the test if the client exits first or it takes
    /// longer than `limit`.
    async fn until(&mut self, what: &str, limit: Duration, mut cond: impl FnMut(&Client) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(self) {
                return;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("the client exited ({st}) before {what}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Helper pods of this plugin whose phase is Running.
fn running_helpers(cluster: &Cluster) -> Vec<String> {
    cluster
        .objects("pods", None)
        .iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl-pvbackup")
        .filter(|p| p["status"]["phase"] == "Running")
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Waits (bounded) until no helper pod runs any more: a vanished client's helper stops by
/// itself once its lease expires.
async fn until_no_running_helper(cluster: &Cluster, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let left = running_helpers(cluster);
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "helper pods still running {limit:?} after the client was killed: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_no_helper_pods(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = helper_pods(cluster);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "helper pods left: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The archive is being extracted into staging.
    Streaming,
    /// The originals are being moved aside and the staged tree moved in.
    Swap,
    /// The restored tree is being compared with the manifest in place.
    FinalCheck,
    /// After Ctrl-C in the final check, the client is rolling the volume back.
    Rollback,
}

/// Backs up the volume, changes it, starts a restore of the backup and SIGKILLs the client
/// in `phase`. Then: the helper stops by itself; the volume is exactly the old tree (or, once
/// the final check may have passed, exactly the backup); nothing of the run is left on it; a
/// plain re-run restores the backup exactly and leaves no helper pod.
async fn sigkill_in(phase: Phase) {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    widen(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let backed_up = state(&vol);
    change(&vol);
    let old = state(&vol);
    let manifest = manifest.to_str().unwrap();
    if phase == Phase::Streaming {
        // ~1.7 MB of tar at 200 kB/s: several seconds of streaming.
        cluster.fault(FaultRequest::Bandwidth {
            bytes_per_second: 200_000,
        });
    }
    let mut client = Client::start(&cluster, &["restore", manifest, "--yes"], &lease(LEASE));
    let limit = Duration::from_secs(60);
    match phase {
        Phase::Streaming => {
            client
                .until("staging", limit, |_| has(&vol, ".pvbackup-staging-"))
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(!has(&vol, ".pvbackup-old-"), "the swap began already");
        }
        Phase::Swap => {
            client
                .until("the swap", limit, |_| has(&vol, ".pvbackup-old-"))
                .await;
            assert!(has(&vol, ".pvbackup-staging-"), "the swap ended already");
        }
        Phase::FinalCheck | Phase::Rollback => {
            client
                .until("the swap", limit, |_| has(&vol, ".pvbackup-old-"))
                .await;
            // The in-place listing starts after the swap: 2 kB/s makes it last.
            cluster.fault(FaultRequest::Bandwidth {
                bytes_per_second: 2_000,
            });
            client
                .until("the end of the swap", limit, |_| {
                    !has(&vol, ".pvbackup-staging-")
                })
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(has(&vol, ".pvbackup-old-"), "the restore committed already");
            if phase == Phase::Rollback {
                cluster.fault(FaultRequest::Clear);
                client.signal(libc::SIGINT);
                client
                    .until("the rollback", limit, |c| {
                        c.stderr().contains("interrupted; rolling back")
                            && running_helpers(&cluster).iter().any(|p| p.contains("-rb"))
                    })
                    .await;
            }
        }
    }
    client.kill();
    cluster.fault(FaultRequest::Clear);
    let took = until_no_running_helper(&cluster, Duration::from_secs(60)).await;
    eprintln!("{phase:?}: the helper stopped {took:?} after the client was killed");
    assert!(
        leftovers(&vol).is_empty(),
        "{phase:?}: left on the volume: {:?}",
        leftovers(&vol)
    );
    let now = state(&vol);
    if phase == Phase::FinalCheck && now == backed_up {
        eprintln!("FinalCheck: the kill came after the commit; the volume is the backup");
    } else {
        assert_same(&old, &now, &format!("after SIGKILL in {phase:?}"));
    }
    // A plain re-run ends exactly on the backup.
    let run = plugin_env(
        cluster.kubeconfig(),
        &["restore", manifest, "--yes"],
        &lease(LEASE),
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_same(&backed_up, &state(&vol), "after the re-run");
    assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
    until_no_helper_pods(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_streaming_into_staging() {
    sigkill_in(Phase::Streaming).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_swap() {
    sigkill_in(Phase::Swap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_final_check() {
    sigkill_in(Phase::FinalCheck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_rollback() {
    sigkill_in(Phase::Rollback).await;
}

/// The swap of a vanished client ran to its end in the helper pod, whose lease has not
/// expired yet: `cleanup` removes the helper, rolls the volume back and says so; `restore`
/// then does the same before it restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_and_restore_undo_what_a_vanished_client_left() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    widen(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let backed_up = state(&vol);
    change(&vol);
    let old = state(&vol);
    let manifest = manifest.to_str().unwrap();
    for command in ["cleanup", "restore"] {
        let mut client = Client::start(
            &cluster,
            &["restore", manifest, "--yes"],
            &lease(LONG_LEASE),
        );
        client
            .until("the swap", Duration::from_secs(60), |_| {
                has(&vol, ".pvbackup-old-")
            })
            .await;
        client.kill();
        // The orphaned swap runs to its end in the helper pod, which keeps running.
        let deadline = Instant::now() + Duration::from_secs(30);
        while has(&vol, ".pvbackup-staging-") {
            assert!(Instant::now() < deadline, "{:?}", leftovers(&vol));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(has(&vol, ".pvbackup-journal-"), "{:?}", leftovers(&vol));
        assert_eq!(running_helpers(&cluster).len(), 1);
        if command == "cleanup" {
            let run = plugin_env(
                cluster.kubeconfig(),
                &["cleanup", "-n", NS, "--yes"],
                &lease(LEASE),
            )
            .await;
            assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
            assert!(
                run.stdout.contains("rolled back") && run.stdout.contains(PVC),
                "{}\n{}",
                run.stdout,
                run.stderr
            );
            assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
            assert_same(&old, &state(&vol), "after cleanup");
            until_no_helper_pods(&cluster).await;
        } else {
            let run = plugin_env(
                cluster.kubeconfig(),
                &["restore", manifest, "--yes"],
                &lease(LEASE),
            )
            .await;
            assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
            assert!(
                run.stderr.contains("rolled back an interrupted restore"),
                "{}",
                run.stderr
            );
            assert_same(&backed_up, &state(&vol), "after the re-run");
            assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
            until_no_helper_pods(&cluster).await;
        }
    }
}

/// A killed `create` leaves no Running helper pod once the lease has expired (not after the
/// 6-hour deadline), so the volume's attachment is free for the workload again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_create_leaves_no_running_helper() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 50_000,
    });
    let mut client = Client::start(
        &cluster,
        &[
            "create",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--to",
            dest.path().to_str().unwrap(),
        ],
        &lease(LEASE),
    );
    client
        .until("a running helper", Duration::from_secs(60), |_| {
            !running_helpers(&cluster).is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.kill();
    let took = until_no_running_helper(&cluster, Duration::from_secs(40)).await;
    eprintln!("create: the helper stopped {took:?} after the client was killed");
    cluster.fault(FaultRequest::Clear);
    // The stopped pod is still listed (Succeeded); cleanup removes it.
    let run = plugin(&cluster, &["cleanup", "-n", NS, "--yes"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    until_no_helper_pods(&cluster).await;
}

/// A restore into an empty volume extracts straight into it (no staging). SIGKILLed while it
/// streams, the helper's watchdog rolls it back: the volume is empty again, nothing of the run
/// is left, and a plain re-run restores the backup exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_direct_restore_leaves_the_volume_empty() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    widen(&vol);
    let manifest = backup(&cluster, NS, PVC, dest.path()).await;
    let backed_up = state(&vol);
    for e in std::fs::read_dir(&vol).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let empty = state(&vol);
    let manifest = manifest.to_str().unwrap();
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 200_000,
    });
    let mut client = Client::start(&cluster, &["restore", manifest, "--yes"], &lease(LEASE));
    client
        .until("the direct restore", Duration::from_secs(60), |_| {
            has(&vol, ".pvbackup-direct-")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!has(&vol, ".pvbackup-staging-"), "{:?}", leftovers(&vol));
    client.kill();
    cluster.fault(FaultRequest::Clear);
    until_no_running_helper(&cluster, Duration::from_secs(60)).await;
    assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
    assert_same(&empty, &state(&vol), "after SIGKILL in a direct restore");
    let run = plugin_env(
        cluster.kubeconfig(),
        &["restore", manifest, "--yes"],
        &lease(LEASE),
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_same(&backed_up, &state(&vol), "after the re-run");
    assert!(leftovers(&vol).is_empty(), "{:?}", leftovers(&vol));
    until_no_helper_pods(&cluster).await;
}

/// A `create --streams 3` killed with SIGKILL while its streams are spooled: the client can
/// clean up nothing, and yet nothing of it stays in TMPDIR (the spools are files without a
/// name, freed by the kernel with the process), what it left at DEST is a partial file that
/// `cleanup --to` removes, and `cleanup` removes its helper pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_multi_stream_create_leaves_nothing_cleanup_does_not_remove() {
    let cluster = demo().await;
    let dest = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let vol = cluster.volume_path(NS, PVC);
    // Three files of 2 MiB in three directories, each stream gets some.
    for i in 0..3u8 {
        std::fs::create_dir_all(vol.join(format!("part-{i}"))).unwrap();
        let data: Vec<u8> = (0..2u32 << 20)
            .map(|x| (x.wrapping_mul(2_654_435_761) >> (8 + i)) as u8)
            .collect();
        std::fs::write(vol.join(format!("part-{i}/blob.bin")), data).unwrap();
    }
    // ~7 MB over three streams at 500 kB/s each: several seconds of streaming.
    cluster.fault(FaultRequest::Bandwidth {
        bytes_per_second: 500_000,
    });
    let mut env = lease(LEASE);
    env.push(("TMPDIR".into(), tmp.path().to_str().unwrap().into()));
    let mut client = Client::start(
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
        ],
        &env,
    );
    // The archive's partial file exists once the streams run and the merge writes.
    client
        .until("a partial file at DEST", Duration::from_secs(60), |_| {
            files_under(dest.path())
                .iter()
                .any(|p| p.to_string_lossy().contains(".partial-"))
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.kill();
    cluster.fault(FaultRequest::Clear);

    let in_tmp: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(in_tmp.is_empty(), "left in TMPDIR: {in_tmp:?}");
    let left = files_under(dest.path());
    assert!(
        left.iter()
            .all(|p| p.to_string_lossy().contains(".partial-")),
        "a killed create left more than a partial file: {left:?}"
    );
    // The partial file is stale once untouched for --older-than.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = plugin(
        &cluster,
        &[
            "cleanup",
            "--to",
            dest.path().to_str().unwrap(),
            "--older-than",
            "1s",
            "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        files_under(dest.path()).is_empty(),
        "cleanup --to left {:?}",
        files_under(dest.path())
    );
    let run = plugin(&cluster, &["cleanup", "-n", NS, "--yes"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    until_no_helper_pods(&cluster).await;
}

//! What the benchmarks share: measuring a command from a fresh launcher (wait4 rusage), medians,
//! volume fillers, the machine description, and a kubesim namespace with PVCs and pods that
//! mount them. Each bench uses part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{conditions::is_pod_running, wait::await_condition};
use kubesim::{Cluster, ClusterOptions};
use sha2::{Digest, Sha256};

/// One measured command.
#[derive(Debug, Clone)]
pub struct Sample {
    pub secs: f64,
    pub max_rss_kib: i64,
    pub cpu_secs: f64,
    /// Exit code; 128+N when killed by signal N.
    pub code: i32,
    /// Interrupted (and killed if it did not stop) for running longer than its time limit.
    pub timed_out: bool,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// Runs a command and returns wall time, peak RSS (of it and every descendant it waited for)
/// and CPU time, from wait4's rusage. After `limit` the command's process group gets SIGINT,
/// as from a user's Ctrl-C, and SIGKILL [`INTERRUPT_GRACE`] later, so that a hung tool ends the
/// measurement instead of the benchmark, with the chance to clean up that a user would give it.
fn measure(cmd: &mut Command, limit: Option<Duration>) -> Sample {
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let start = Instant::now();
    cmd.process_group(0);
    // Reaped by wait4 below (std's wait would not give the rusage).
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    if let Some(limit) = limit {
        let (done, timed_out) = (done.clone(), timed_out.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY (both killpg): plain syscalls; the group is the child's own
            // (process_group(0)) and the child is not reaped yet (`done` is set right after
            // wait4), so its id cannot have been reused.
            if done.load(Ordering::SeqCst) {
                return;
            }
            timed_out.store(true, Ordering::SeqCst);
            unsafe { libc::killpg(pid, libc::SIGINT) };
            let deadline = Instant::now() + INTERRUPT_GRACE;
            while Instant::now() < deadline {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !done.load(Ordering::SeqCst) {
                unsafe { libc::killpg(pid, libc::SIGKILL) };
            }
        });
    }
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child; status and ru are valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    done.store(true, Ordering::SeqCst);
    assert_eq!(r, pid, "wait4 failed");
    let secs = start.elapsed().as_secs_f64();
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Sample {
        secs,
        max_rss_kib: ru.ru_maxrss,
        cpu_secs: cpu,
        code,
        timed_out: timed_out.load(Ordering::SeqCst),
    }
}

/// How long an interrupted command may take to clean up before it is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(30);

/// The launcher side of [`measured`]: when this process was started as
/// `BENCH --measure LIMIT_SECS STDOUT STDERR PROGRAM ARGS…`, runs PROGRAM with its output in
/// those files (killed after LIMIT_SECS unless that is 0), prints
/// `secs rss_kib cpu_secs code timed_out` and returns true (the caller then exits).
pub fn launcher_main() -> bool {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) != Some("--measure") {
        return false;
    }
    let limit: f64 = argv[2].parse().expect("launcher time limit");
    let out = std::fs::File::create(&argv[3]).expect("launcher stdout file");
    let err = std::fs::File::create(&argv[4]).expect("launcher stderr file");
    let mut c = Command::new(&argv[5]);
    c.args(&argv[6..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let s = measure(
        &mut c,
        (limit > 0.0).then(|| Duration::from_secs_f64(limit)),
    );
    println!(
        "{} {} {} {} {}",
        s.secs, s.max_rss_kib, s.cpu_secs, s.code, s.timed_out
    );
    true
}

/// Peak RSS from wait4 includes what the forking process had before `exec` (the kernel keeps
/// the old mm's high-water mark), so commands are launched from a fresh, small copy of this
/// binary (`--measure …`, see [`launcher_main`]) that reports the child's rusage. The command's
/// stdout and stderr go to the given files (`/dev/null` to drop them); after `limit` it is
/// killed.
pub fn measured(cmd: &Command, stdout: &Path, stderr: &Path, limit: Option<Duration>) -> Sample {
    let envs: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
        .collect();
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .arg("--measure")
        .arg(limit.map(|l| l.as_secs_f64()).unwrap_or(0.0).to_string())
        .arg(stdout)
        .arg(stderr)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(envs)
        .stderr(Stdio::null())
        .output()
        .expect("run the launcher");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 5, "launcher said {text:?}");
    Sample {
        secs: f[0].parse().unwrap(),
        max_rss_kib: f[1].parse().unwrap(),
        cpu_secs: f[2].parse().unwrap(),
        code: f[3].parse().unwrap(),
        timed_out: f[4] == "true",
    }
}

/// Runs a benchmark on a 2-thread runtime. Ctrl-C or SIGTERM drops it, and with it the
/// kubesim cluster, which kills the containers and unmounts the volumes.
pub fn run(bench: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = bench => {}
                _ = tokio::signal::ctrl_c() => eprintln!("interrupted"),
                _ = term.recv() => eprintln!("terminated"),
            }
        });
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn kubectl() -> PathBuf {
    let dir =
        std::env::var("KUBECTL_DIR").unwrap_or_else(|_| "/usr/lib/google-cloud-sdk/bin".into());
    PathBuf::from(dir).join("kubectl.1.33")
}

/// "N cores, Linux x.y" for the reports.
pub fn machine() -> String {
    format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        first_line(Command::new("uname").arg("-sr"))
    )
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`, what `uptime` prints), recorded
/// with results measured on this shared machine: a busy spell shows up in them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

/// The first line a command prints on stdout, or what went wrong.
pub fn first_line(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        Err(e) => format!("unavailable ({e})"),
    }
}

/// xorshift64: fast, reproducible filler bytes that no compressor can shrink.
pub struct Noise(u64);

impl Default for Noise {
    fn default() -> Self {
        Noise(0x9e3779b97f4a7c15)
    }
}

impl Noise {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

const JSON_LINE: &[u8] =
    b"{\"order\": 12345, \"sku\": \"ABC-000\", \"qty\": 3, \"note\": \"lorem ipsum dolor sit amet\"}\n";

/// Text-like bytes that compress about 20:1 with zstd-1 or gzip-1.
pub fn fill_text(buf: &mut [u8]) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = JSON_LINE[j % JSON_LINE.len()];
    }
}

/// Half incompressible, half text-like; 64 MiB files for 90% of the bytes and up to 20,000
/// small ones for the rest. Returns the bytes written.
pub fn fill_mixed(dir: &Path, mib: usize) -> u64 {
    let mut total = 0u64;
    let mut noise = Noise::default();
    let big = 64usize << 20;
    let n_big = (mib << 20) * 9 / 10 / big;
    std::fs::create_dir_all(dir.join("big")).unwrap();
    for i in 0..n_big {
        let mut buf = vec![0u8; big];
        if i % 2 == 0 {
            noise.fill(&mut buf);
        } else {
            fill_text(&mut buf);
        }
        std::fs::write(dir.join(format!("big/{i:03}.bin")), &buf).unwrap();
        total += buf.len() as u64;
    }
    let small_budget = (mib << 20) as u64 - total;
    let mut i = 0;
    while total < (mib << 20) as u64 && i < 20_000 {
        let size = (small_budget / 4000).clamp(512, 64 << 10) as usize;
        let mut buf = vec![0u8; size];
        noise.fill(&mut buf);
        let d = dir.join(format!("small/{:02}", i % 50));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{i:05}.dat")), &buf).unwrap();
        total += size as u64;
        i += 1;
    }
    total
}

/// The mixed set of issues #11 and #14 (restore, backup, verify and link benches): `files`
/// text-like files of 50–70 KB in 20 directories (`docs/NN/`, 2,000 there), and 4 noise files of
/// `big_mib` MiB (`blobs/N.bin`, 100).
pub fn fill_mixed_set(dir: &Path, files: usize, big_mib: usize) -> u64 {
    let mut total = 0u64;
    let mut noise = Noise::default();
    for i in 0..files {
        let size = 50_000 + (i * 7919) % 20_000;
        let mut buf = vec![0u8; size];
        fill_text(&mut buf);
        // Each file differs from the others (a real set would), and stays compressible.
        buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let d = dir.join(format!("docs/{:02}", i % 20));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{i:05}.json")), &buf).unwrap();
        total += size as u64;
    }
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    let mut buf = vec![0u8; big_mib << 20];
    for i in 0..4 {
        noise.fill(&mut buf);
        std::fs::write(dir.join(format!("blobs/{i}.bin")), &buf).unwrap();
        total += buf.len() as u64;
    }
    total
}

/// `files` small files (512 B to 8 KiB, every other one text-like) in 100 directories.
pub fn fill_small_files(dir: &Path, files: usize) -> u64 {
    let mut noise = Noise::default();
    let mut total = 0u64;
    let mut buf = vec![0u8; 8 << 10];
    for i in 0..files {
        let size = 512 + (i * 7919) % ((8 << 10) - 512);
        if i % 2 == 0 {
            noise.fill(&mut buf[..size]);
        } else {
            fill_text(&mut buf[..size]);
        }
        let d = dir.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{i:05}.txt")), &buf[..size]).unwrap();
        total += size as u64;
    }
    total
}

/// `mib` MiB in 4 MiB files, text-like (`compressible`) or noise.
pub fn fill_uniform(dir: &Path, mib: usize, compressible: bool) -> u64 {
    let mut noise = Noise::default();
    let mut total = 0u64;
    let mut remaining = (mib as u64) << 20;
    let mut i = 0;
    while remaining > 0 {
        let n = remaining.min(4 << 20) as usize;
        let mut buf = vec![0u8; n];
        if compressible {
            fill_text(&mut buf);
        } else {
            noise.fill(&mut buf);
        }
        std::fs::write(dir.join(format!("{i:04}.bin")), &buf).unwrap();
        total += n as u64;
        remaining -= n as u64;
        i += 1;
    }
    total
}

/// Relative path → sha256 (empty for entries that are not regular files).
pub type FileHashes = BTreeMap<PathBuf, Vec<u8>>;

/// sha256 of every regular file under `dir`, by relative path; symlinks and other non-regular,
/// non-directory entries are recorded with an empty digest so that their presence counts.
pub fn tree_digest(dir: &Path) -> FileHashes {
    fn walk(root: &Path, dir: &Path, out: &mut FileHashes) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file() {
                let mut h = Sha256::new();
                let mut f = std::fs::File::open(&p).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                out.insert(rel, h.finalize().to_vec());
            } else {
                out.insert(rel, Vec::new());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Removes everything inside `dir`, keeping `dir` (a mount point).
pub fn empty_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// A PVC in the bench namespace and the long-running pod (container `app`) that mounts it at
/// `/data`, as a workload would.
#[derive(Debug, Clone)]
pub struct Volume {
    pub pvc: String,
    pub pod: String,
    /// The volume's directory as kubesim's "host" sees it.
    pub path: PathBuf,
}

pub const NAMESPACE: &str = "bench";

/// A kubesim cluster (scenario Empty) with a default StorageClass and the bench namespace.
pub struct BenchCluster {
    pub cluster: Cluster,
    pub client: kube::Client,
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

impl BenchCluster {
    pub async fn start() -> BenchCluster {
        let cluster = Cluster::start(ClusterOptions::default())
            .await
            .expect("kubesim");
        let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap(),
        )
        .unwrap();
        Api::<StorageClass>::all(client.clone())
            .create(&PostParams::default(), &from_json(serde_json::json!({"metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "hostpath.csi.kubesim.dev", "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete"})))
            .await
            .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &from_json(serde_json::json!({"metadata": {"name": NAMESPACE}})),
            )
            .await
            .unwrap();
        BenchCluster { cluster, client }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// Creates PVC `pvc` of `bytes` (rounded up to MiB) and pod `pod` mounting it; waits until
    /// the pod runs.
    pub async fn volume(&self, pvc: &str, pod: &str, bytes: u64) -> Volume {
        let claim: PersistentVolumeClaim = from_json(
            serde_json::json!({"metadata": {"name": pvc}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": format!("{}Mi", bytes.div_ceil(1 << 20))}}}}),
        );
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), NAMESPACE)
            .create(&PostParams::default(), &claim)
            .await
            .unwrap();
        let v = Volume {
            pvc: pvc.to_string(),
            pod: pod.to_string(),
            path: self.cluster.volume_path(NAMESPACE, pvc),
        };
        self.start_pod(&v).await;
        v
    }

    /// Creates PVC `pvc` of `bytes` (rounded up to MiB) with no pod mounting it (`pod` is
    /// empty until [`BenchCluster::mount`]).
    pub async fn claim(&self, pvc: &str, bytes: u64) -> Volume {
        let claim: PersistentVolumeClaim = from_json(
            serde_json::json!({"metadata": {"name": pvc}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": format!("{}Mi", bytes.div_ceil(1 << 20))}}}}),
        );
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), NAMESPACE)
            .create(&PostParams::default(), &claim)
            .await
            .unwrap();
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), NAMESPACE);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = pvcs.get(pvc).await.unwrap();
            if p.status.and_then(|s| s.phase).as_deref() == Some("Bound") {
                break;
            }
            assert!(Instant::now() < deadline, "PVC {pvc} not bound in 60s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Volume {
            pvc: pvc.to_string(),
            pod: String::new(),
            path: self.cluster.volume_path(NAMESPACE, pvc),
        }
    }

    /// Starts pod `pod` mounting the claim, as a workload would; waits until it runs.
    pub async fn mount(&self, v: &mut Volume, pod: &str) {
        v.pod = pod.to_string();
        self.start_pod(v).await;
    }

    /// Deletes the volume's pod (if any) and its PVC, and waits until both are gone (kubesim
    /// then releases the volume's directory).
    pub async fn delete_claim(&self, v: &Volume) {
        let pods = self.pods();
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), NAMESPACE);
        if !v.pod.is_empty() {
            let _ = pods.delete(&v.pod, &DeleteParams::default()).await;
        }
        let _ = pvcs.delete(&v.pvc, &DeleteParams::default()).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pod_gone = v.pod.is_empty() || pods.get_opt(&v.pod).await.unwrap().is_none();
            if pod_gone && pvcs.get_opt(&v.pvc).await.unwrap().is_none() {
                return;
            }
            assert!(Instant::now() < deadline, "PVC {} not gone in 120s", v.pvc);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start_pod(&self, v: &Volume) {
        let pod: Pod = from_json(
            serde_json::json!({"metadata": {"name": v.pod}, "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"], "volumeMounts": [{"name": "d", "mountPath": "/data"}]}], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": v.pvc}}]}}),
        );
        let pods = self.pods();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(pods.clone(), &v.pod, is_pod_running()),
        )
        .await
        .expect("the pod runs within 60s")
        .unwrap();
    }

    /// A workload pod whose container was crashed (restarted, or in back-off) is replaced by a
    /// fresh one, so that the kubelet's growing back-off does not leak into the next run.
    pub async fn heal(&self, v: &Volume) {
        let pods = self.pods();
        let p = pods.get(&v.pod).await.unwrap();
        let restarted = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .is_none_or(|c| c.restart_count > 0 || !c.ready);
        if !restarted {
            return;
        }
        pods.delete(&v.pod, &DeleteParams::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while pods.get_opt(&v.pod).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "pod {} not gone in 60s", v.pod);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.start_pod(v).await;
    }
}

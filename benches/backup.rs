//! Backup throughput and peak RSS on kubesim, side by side in one run: kubectl-pvbackup
//! (default zstd-1, `--compression none`, gzip-1) to a local directory and to an S3 bucket
//! (moto's S3 server on loopback), next to `kubectl cp` and the hand-rolled
//! `kubectl exec -- tar cf - | gzip -1`, on the same volume, medians of several runs.
//!
//! `cargo bench --bench backup` (env: PVBACKUP_BENCH_MIB=1024, PVBACKUP_BENCH_RUNS=3; moto
//! from PVBACKUP_MOTO_SERVER or target/ci-tools/moto, see .ci/run).
//! Writes benches/results/backup.md and backup.json.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::{conditions::is_pod_running, wait::await_condition};
use kubesim::{Cluster, ClusterOptions};

struct Sample {
    secs: f64,
    max_rss_kib: i64,
    cpu_secs: f64,
    ok: bool,
}

/// Runs a command and returns wall time, peak RSS (of it and every descendant it waited for)
/// and CPU time, from wait4's rusage.
fn measure(cmd: &mut Command) -> Sample {
    let start = Instant::now();
    // Reaped by wait4 below (std's wait would not give the rusage).
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child; status and ru are valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4 failed");
    let secs = start.elapsed().as_secs_f64();
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    Sample {
        secs,
        max_rss_kib: ru.ru_maxrss,
        cpu_secs: cpu,
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Half incompressible, half text-like; a few large files and many small ones.
fn fill(dir: &Path, mib: usize) -> u64 {
    let mut total = 0u64;
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = |buf: &mut [u8]| {
        for chunk in buf.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = seed.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    };
    let big = 64usize << 20;
    let n_big = (mib << 20) * 9 / 10 / big;
    std::fs::create_dir_all(dir.join("big")).unwrap();
    for i in 0..n_big {
        let mut buf = vec![0u8; big];
        if i % 2 == 0 {
            rnd(&mut buf);
        } else {
            let line = b"{\"order\": 12345, \"sku\": \"ABC-000\", \"qty\": 3, \"note\": \"lorem ipsum dolor sit amet\"}\n";
            for (j, b) in buf.iter_mut().enumerate() {
                *b = line[j % line.len()];
            }
        }
        std::fs::write(dir.join(format!("big/{i:03}.bin")), &buf).unwrap();
        total += buf.len() as u64;
    }
    let small_budget = (mib << 20) as u64 - total;
    let mut i = 0;
    while total < (mib << 20) as u64 && i < 20_000 {
        let size = (small_budget / 4000).clamp(512, 64 << 10) as usize;
        let mut buf = vec![0u8; size];
        rnd(&mut buf);
        let d = dir.join(format!("small/{:02}", i % 50));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{i:05}.dat")), &buf).unwrap();
        total += size as u64;
        i += 1;
    }
    total
}

/// moto's S3 server on a free loopback port, for the S3 rows.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let bin = std::env::var_os("PVBACKUP_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools/moto/bin/moto_server")
            });
        assert!(
            bin.is_file(),
            "moto_server not found at {} (set PVBACKUP_MOTO_SERVER or run .ci/run once)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let m = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while m.http("GET", "/moto-api/") != 200 {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    fn http(&self, method: &str, path: &str) -> u16 {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return 0;
        };
        let _ = write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.port
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// An empty bucket for the next run (moto keeps objects in memory and temp files).
    fn fresh_bucket(&self) {
        assert_eq!(self.http("POST", "/moto-api/reset"), 200);
        assert_eq!(self.http("PUT", "/bench"), 200);
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "AKIABENCH"),
            ("AWS_SECRET_ACCESS_KEY", "bench-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([(
            "AWS_ENDPOINT_URL".to_string(),
            format!("http://127.0.0.1:{}", self.port),
        )])
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl() -> PathBuf {
    let dir =
        std::env::var("KUBECTL_DIR").unwrap_or_else(|_| "/usr/lib/google-cloud-sdk/bin".into());
    PathBuf::from(dir).join("kubectl.1.33")
}

/// Peak RSS from wait4 includes what the forking process had before `exec` (the kernel keeps
/// the old mm's high-water mark), so commands are launched from a fresh, small copy of this
/// binary (`--measure CMD…`) that reports the child's rusage on stdout.
fn measured(cmd: &mut Command) -> Sample {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
        .collect();
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--measure")
        .arg(program)
        .args(args)
        .envs(envs)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    Sample {
        secs: f[0].parse().unwrap(),
        max_rss_kib: f[1].parse().unwrap(),
        cpu_secs: f[2].parse().unwrap(),
        ok: f[3] == "true",
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--measure") {
        let mut c = Command::new(&argv[2]);
        c.args(&argv[3..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let s = measure(&mut c);
        println!("{} {} {} {}", s.secs, s.max_rss_kib, s.cpu_secs, s.ok);
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

async fn bench() {
    let mib: usize = std::env::var("PVBACKUP_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let runs: usize = std::env::var("PVBACKUP_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
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
    let sc: k8s_openapi::api::storage::v1::StorageClass = serde_json::from_value(serde_json::json!({"metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "hostpath.csi.kubesim.dev", "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete"})).unwrap();
    Api::<k8s_openapi::api::storage::v1::StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await
        .unwrap();
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "bench"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({"metadata": {"name": "big"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": format!("{}Mi", mib + mib / 4 + 64)}}}})).unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "bench")
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "app"}, "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"], "volumeMounts": [{"name": "d", "mountPath": "/data"}]}], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "big"}}]}})).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods.clone(), "app", is_pod_running()),
    )
    .await
    .unwrap()
    .unwrap();
    let bytes = fill(&cluster.volume_path("bench", "big"), mib);
    eprintln!("volume: {} MiB", bytes >> 20);

    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-pvbackup"));
    let moto = std::sync::Arc::new(Moto::start());
    let work = tempfile::tempdir().unwrap();
    let kcfg = cluster.kubeconfig().to_path_buf();
    type Tool = (&'static str, Box<dyn Fn(&Path) -> Command>);
    let tools: Vec<Tool> = vec![
        (
            "kubectl-pvbackup (zstd-1, default)",
            Box::new({
                let p = plugin.clone();
                move |out: &Path| {
                    let mut c = Command::new(&p);
                    c.args(["create", "big", "-n", "bench", "--no-progress", "--to"])
                        .arg(out);
                    c
                }
            }),
        ),
        (
            "kubectl-pvbackup --compression none",
            Box::new({
                let p = plugin.clone();
                move |out: &Path| {
                    let mut c = Command::new(&p);
                    c.args([
                        "create",
                        "big",
                        "-n",
                        "bench",
                        "--no-progress",
                        "--compression",
                        "none",
                        "--to",
                    ])
                    .arg(out);
                    c
                }
            }),
        ),
        (
            "kubectl-pvbackup --compression gzip",
            Box::new({
                let p = plugin.clone();
                move |out: &Path| {
                    let mut c = Command::new(&p);
                    c.args([
                        "create",
                        "big",
                        "-n",
                        "bench",
                        "--no-progress",
                        "--compression",
                        "gzip",
                        "--to",
                    ])
                    .arg(out);
                    c
                }
            }),
        ),
        (
            "kubectl-pvbackup → S3 (moto), zstd-1",
            Box::new({
                let p = plugin.clone();
                let moto = moto.clone();
                move |_: &Path| {
                    moto.fresh_bucket();
                    let mut c = Command::new(&p);
                    c.args([
                        "create",
                        "big",
                        "-n",
                        "bench",
                        "--no-progress",
                        "--to",
                        "s3://bench/run",
                    ])
                    .envs(moto.env());
                    c
                }
            }),
        ),
        (
            "kubectl-pvbackup → S3 (moto), --compression none",
            Box::new({
                let p = plugin.clone();
                let moto = moto.clone();
                move |_: &Path| {
                    moto.fresh_bucket();
                    let mut c = Command::new(&p);
                    c.args([
                        "create",
                        "big",
                        "-n",
                        "bench",
                        "--no-progress",
                        "--compression",
                        "none",
                        "--to",
                        "s3://bench/run",
                    ])
                    .envs(moto.env());
                    c
                }
            }),
        ),
        (
            "kubectl cp",
            Box::new(|out: &Path| {
                let mut c = Command::new(kubectl());
                c.args(["cp", "-c", "app", "bench/app:/data"])
                    .arg(out.join("copy"));
                c
            }),
        ),
        (
            "kubectl exec tar | gzip -1",
            Box::new(|out: &Path| {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!(
                    "{} exec -n bench app -c app -- tar cf - -C /data . | gzip -1 > {}",
                    kubectl().display(),
                    out.join("x.tar.gz").display()
                ));
                c
            }),
        ),
    ];
    let mut rows = Vec::new();
    for (name, make) in &tools {
        let mut samples = Vec::new();
        for r in 0..runs {
            let out = work.path().join(format!("{}-{r}", samples.len()));
            std::fs::create_dir_all(&out).unwrap();
            let mut cmd = make(&out);
            cmd.env("KUBECONFIG", &kcfg);
            let s = measured(&mut cmd);
            eprintln!(
                "{name} run {r}: {:.2}s rss {} MiB ok={}",
                s.secs,
                s.max_rss_kib / 1024,
                s.ok
            );
            samples.push(s);
            let _ = std::fs::remove_dir_all(&out);
        }
        let secs = median(samples.iter().map(|s| s.secs).collect());
        rows.push(serde_json::json!({
            "tool": name,
            "median_seconds": secs,
            "throughput_mib_s": (bytes as f64 / (1 << 20) as f64) / secs,
            "median_peak_rss_mib": median(samples.iter().map(|s| s.max_rss_kib as f64 / 1024.0).collect()),
            "median_cpu_seconds": median(samples.iter().map(|s| s.cpu_secs).collect()),
            "all_ok": samples.iter().all(|s| s.ok),
            "runs": runs,
        }));
    }
    let base = rows
        .iter()
        .find(|r| r["tool"] == "kubectl cp")
        .map(|r| r["median_seconds"].as_f64().unwrap())
        .unwrap_or(f64::NAN);
    let mut md = format!(
        "# Backup benchmark (kubesim, one run)\n\nVolume: {} MiB ({}), {} runs each, medians. Machine: {} cores, {}. Ratio = kubectl cp time / tool time.\n\n| tool | time (s) | MiB/s | peak RSS (MiB) | client CPU (s) | vs kubectl cp | all ok |\n|---|---|---|---|---|---|---|\n",
        bytes >> 20,
        "half random, half JSON-like; 64 MiB files + many small files",
        runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        String::from_utf8_lossy(&Command::new("uname").arg("-sr").output().map(|o| o.stdout).unwrap_or_default()).trim()
    );
    for r in &rows {
        let s = r["median_seconds"].as_f64().unwrap();
        md.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2}× | {} |\n",
            r["tool"].as_str().unwrap(),
            s,
            r["throughput_mib_s"].as_f64().unwrap(),
            r["median_peak_rss_mib"].as_f64().unwrap(),
            r["median_cpu_seconds"].as_f64().unwrap(),
            base / s,
            r["all_ok"]
        ));
    }
    println!("{md}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("backup.md"), &md).unwrap();
    std::fs::write(
        dir.join("backup.json"),
        serde_json::to_string_pretty(&serde_json::json!({"volume_bytes": bytes, "rows": rows}))
            .unwrap(),
    )
    .unwrap();
    cluster.shutdown().await;
}

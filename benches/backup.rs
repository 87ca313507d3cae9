//! Backup throughput and peak RSS on kubesim, side by side in one run, on two data sets:
//!
//! * `set`, the mixed set of issue #14 (2,000 compressible files of ~60 KB and 4 random files
//!   of 100 MiB, [`support::fill_mixed_set`]): `create` (default zstd-1, to a directory) next to
//!   `kubectl cp` pod → local, runs alternating between the two, with wall time, client CPU
//!   per GB and peak RSS; the goal is `create` ≤ 0.8× `kubectl cp`'s wall time.
//! * `mixed`, a 1 GiB tree ([`support::fill_mixed`]): kubectl-pvbackup (default zstd-1,
//!   `--compression none`, gzip-1) to a local directory and to an S3 bucket (moto's S3 server
//!   on loopback), next to `kubectl cp` and the hand-rolled `kubectl exec -- tar cf - | gzip -1`.
//!
//! Medians of several runs; the load average before and after is recorded, as the machine is
//! shared.
//!
//! `cargo bench --bench backup` (env: PVBACKUP_BENCH_SETS=set,mixed, PVBACKUP_BENCH_SET_RUNS=5,
//! PVBACKUP_BENCH_BEFORE=another kubectl-pvbackup binary to measure in the `set` rows too,
//! PVBACKUP_BENCH_MIB=1024, PVBACKUP_BENCH_RUNS=3; moto from PVBACKUP_MOTO_SERVER or
//! target/ci-tools/moto, see .ci/run).
//! Writes benches/results/backup.md and backup.json.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    env_or, fill_mixed, fill_mixed_set, kubectl, load_average, machine, measured, median,
    BenchCluster, Sample,
};

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

fn main() {
    if support::launcher_main() {
        return;
    }
    support::run(bench());
}

async fn bench() {
    let sets: String = env_or("PVBACKUP_BENCH_SETS", "set,mixed".to_string());
    let bench = BenchCluster::start().await;
    let mut md = format!(
        "# Backup benchmark (kubesim, one run)\n\nMachine: {}. Load average (1, 5, 15 min) at the start: {}.\n\n",
        machine(),
        load_average()
    );
    let mut json = serde_json::Map::new();
    if sets.split(',').any(|s| s == "set") {
        let (text, rows) = mixed_set(&bench).await;
        md.push_str(&text);
        json.insert("set".into(), rows);
    }
    if sets.split(',').any(|s| s == "mixed") {
        let (text, rows) = mixed_tree(&bench).await;
        md.push_str(&text);
        json.insert("mixed".into(), rows);
    }
    md.push_str(&format!("Load average at the end: {}.\n", load_average()));
    println!("{md}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("backup.md"), &md).unwrap();
    json.insert("machine".into(), machine().into());
    std::fs::write(
        dir.join("backup.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json)).unwrap(),
    )
    .unwrap();
    bench.cluster.shutdown().await;
}

/// The mixed set of issue #14: `create` next to `kubectl cp` pod → local, runs alternating.
async fn mixed_set(bench: &BenchCluster) -> (String, serde_json::Value) {
    let runs: usize = env_or("PVBACKUP_BENCH_SET_RUNS", 5);
    let vol = bench.volume("set", "setapp", 700 << 20).await;
    let bytes = fill_mixed_set(&vol.path, 2_000, 100);
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-pvbackup"));
    let work = tempfile::tempdir().unwrap();
    let kcfg = bench.cluster.kubeconfig().to_path_buf();
    type Make<'a> = Box<dyn Fn(&Path) -> Command + 'a>;
    // Another build of the plugin (say, the last release) measured in the same run.
    let before = std::env::var_os("PVBACKUP_BENCH_BEFORE").map(PathBuf::from);
    let create = |bin: PathBuf| -> Make {
        Box::new(move |out: &Path| {
            let mut c = Command::new(&bin);
            c.args(["create", "set", "-n", "bench", "--no-progress", "--to"])
                .arg(out);
            c
        })
    };
    let mut tools: Vec<(String, Make)> = vec![
        (
            "kubectl cp pod → local".into(),
            Box::new(|out: &Path| {
                let mut c = Command::new(kubectl());
                c.args(["cp", "-c", "app", "bench/setapp:/data"])
                    .arg(out.join("copy"));
                c
            }),
        ),
        (
            "kubectl-pvbackup create (zstd-1, default)".into(),
            create(plugin.clone()),
        ),
    ];
    if let Some(b) = before {
        tools.push((
            format!("kubectl-pvbackup create, other build ({})", b.display()),
            create(b),
        ));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
    // Run 1 of each tool, then run 2, …: a slow spell of the shared machine hits both alike.
    for r in 0..runs {
        for (i, (name, make)) in tools.iter().enumerate() {
            let out = work.path().join(format!("{i}-{r}"));
            std::fs::create_dir_all(&out).unwrap();
            let mut cmd = make(&out);
            cmd.env("KUBECONFIG", &kcfg);
            let s = measured(&cmd, Path::new("/dev/null"), Path::new("/dev/null"), None);
            eprintln!(
                "set: {name} run {r}: {:.2}s cpu {:.2}s rss {} MiB ok={}",
                s.secs,
                s.cpu_secs,
                s.max_rss_kib / 1024,
                s.ok()
            );
            assert!(s.ok(), "{name} failed");
            samples[i].push(s);
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    let gb = bytes as f64 / 1e9;
    let rows: Vec<serde_json::Value> = tools
        .iter()
        .zip(&samples)
        .map(|((name, _), s)| {
            let secs = median(s.iter().map(|s| s.secs).collect());
            let cpu = median(s.iter().map(|s| s.cpu_secs).collect());
            serde_json::json!({
                "tool": name,
                "median_seconds": secs,
                "seconds": s.iter().map(|s| s.secs).collect::<Vec<_>>(),
                "median_cpu_seconds": cpu,
                "cpu_seconds_per_gb": cpu / gb,
                "median_peak_rss_mib": median(s.iter().map(|s| s.max_rss_kib as f64 / 1024.0).collect()),
                "runs": runs,
            })
        })
        .collect();
    let cp = rows[0]["median_seconds"].as_f64().unwrap();
    let mut md = format!(
        "## Mixed set (issue #14): `create` next to `kubectl cp` pod → local\n\n{} MB: 2,000 compressible files of 50–70 KB + 4 random files of 100 MiB. {runs} runs of each, alternating, medians. Goal: `create` ≤ 0.8× `kubectl cp`'s wall time, client CPU ≤ 2.65 s/GB (half of 5.3).\n\n| tool | wall (s) | × kubectl cp wall | client CPU (s) | client CPU (s/GB) | peak RSS (MiB) |\n|---|---|---|---|---|---|\n",
        bytes / 1_000_000
    );
    for r in &rows {
        let s = r["median_seconds"].as_f64().unwrap();
        md.push_str(&format!(
            "| {} | {:.2} | {:.2}× | {:.2} | {:.2} | {:.0} |\n",
            r["tool"].as_str().unwrap(),
            s,
            s / cp,
            r["median_cpu_seconds"].as_f64().unwrap(),
            r["cpu_seconds_per_gb"].as_f64().unwrap(),
            r["median_peak_rss_mib"].as_f64().unwrap(),
        ));
    }
    md.push('\n');
    (
        md,
        serde_json::json!({"volume_bytes": bytes, "runs": runs, "rows": rows}),
    )
}

/// The 1 GiB tree: every way of making the backup, to a directory and to S3.
async fn mixed_tree(bench: &BenchCluster) -> (String, serde_json::Value) {
    let mib: usize = env_or("PVBACKUP_BENCH_MIB", 1024);
    let runs: usize = env_or("PVBACKUP_BENCH_RUNS", 3);
    let vol = bench
        .volume("big", "app", ((mib + mib / 4 + 64) as u64) << 20)
        .await;
    let bytes = fill_mixed(&vol.path, mib);
    eprintln!("volume: {} MiB", bytes >> 20);
    let cluster = &bench.cluster;

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
            let s = measured(&cmd, Path::new("/dev/null"), Path::new("/dev/null"), None);
            eprintln!(
                "{name} run {r}: {:.2}s rss {} MiB ok={}",
                s.secs,
                s.max_rss_kib / 1024,
                s.ok()
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
            "all_ok": samples.iter().all(|s| s.ok()),
            "runs": runs,
        }));
    }
    let base = rows
        .iter()
        .find(|r| r["tool"] == "kubectl cp")
        .map(|r| r["median_seconds"].as_f64().unwrap())
        .unwrap_or(f64::NAN);
    let mut md = format!(
        "## Mixed tree: every way of making the backup\n\nVolume: {} MiB ({}), {} runs each, medians. Ratio = kubectl cp time / tool time.\n\n| tool | time (s) | MiB/s | peak RSS (MiB) | client CPU (s) | vs kubectl cp | all ok |\n|---|---|---|---|---|---|---|\n",
        bytes >> 20,
        "half random, half JSON-like; 64 MiB files + many small files",
        runs,
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
    md.push('\n');
    (md, serde_json::json!({"volume_bytes": bytes, "rows": rows}))
}

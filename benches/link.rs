//! `create` against `kubectl cp` (pod → local) on a distant cluster, side by side in one run:
//! kubesim's link model (tests/kubesim/src/faults.rs `SharedLink`) caps every exec stream at
//! PER_STREAM and all of them together at SHARED. The mixed set of the restore benchmark
//! (2,000 compressible ~60 KB files and 4 random files of 100 MiB, ~545 MB).
//!
//! Why 40 MB/s per stream and 100 MB/s shared: one exec is one TCP connection whose window
//! bounds it to window/RTT; a 4 MiB window (Linux's default `tcp_rmem` maximum is 6 MiB, and a
//! SPDY/WebSocket proxy hop adds its own buffers) at 100 ms RTT is ~40 MiB/s. 100 MB/s is a
//! gigabit path's payload (a laptop on an office LAN or a VPN with gigabit egress): more than
//! one stream can fill, less than three. Both are env-tunable.
//!
//! Rows, each run alternating between the tools: `create` with its defaults (`--streams auto`),
//! `create --streams 1` (one stream, as before `--streams`), and `kubectl cp`; then the same
//! without a link cap, to show what the default costs when the link is not the limit.
//! Each `create` backup is verified with `verify` after its run.
//!
//! `cargo bench --bench link` (env: PVBACKUP_LINK_RUNS=3, PVBACKUP_LINK_PER_STREAM=40MB/s,
//! PVBACKUP_LINK_SHARED=100MB/s, PVBACKUP_LINK_MIXED_FILES=2000, PVBACKUP_LINK_BIG_MIB=100,
//! PVBACKUP_LINK_UNTHROTTLED=1). Writes benches/results/link.md and link.json.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use kubesim::FaultRequest;
use support::{
    env_or, fill_mixed_set, first_line, kubectl, machine, measured, median, BenchCluster,
};

fn main() {
    if support::launcher_main() {
        return;
    }
    support::run(bench());
}

struct Tool {
    name: &'static str,
    /// `create` arguments after the common ones; None for `kubectl cp`.
    create: Option<&'static [&'static str]>,
}

const TOOLS: &[Tool] = &[
    Tool {
        name: "kubectl-pvbackup create (defaults)",
        create: Some(&[]),
    },
    Tool {
        name: "kubectl-pvbackup create --streams 1",
        create: Some(&["--streams", "1"]),
    },
    Tool {
        name: "kubectl cp",
        create: None,
    },
];

async fn bench() {
    let runs: usize = env_or("PVBACKUP_LINK_RUNS", 3);
    let per_stream =
        kubesim::faults::parse_rate(&env_or("PVBACKUP_LINK_PER_STREAM", "40MB/s".to_string()))
            .expect("PVBACKUP_LINK_PER_STREAM");
    let shared =
        kubesim::faults::parse_rate(&env_or("PVBACKUP_LINK_SHARED", "100MB/s".to_string()))
            .expect("PVBACKUP_LINK_SHARED");
    let files: usize = env_or("PVBACKUP_LINK_MIXED_FILES", 2_000);
    let big_mib: usize = env_or("PVBACKUP_LINK_BIG_MIB", 100);
    let unthrottled: bool = env_or("PVBACKUP_LINK_UNTHROTTLED", 1) == 1;

    let bench = BenchCluster::start().await;
    let cap = (files as u64) * 78_000 + ((4 * big_mib as u64) << 20) + (64 << 20);
    let vol = bench.volume("mixed", "app", cap).await;
    let bytes = fill_mixed_set(&vol.path, files, big_mib);
    eprintln!("volume: {:.0} MB", bytes as f64 / 1e6);
    let cluster = &bench.cluster;
    let plugin = std::env::var_os("PVBACKUP_BENCH_PLUGIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kubectl-pvbackup")));
    let kcfg = cluster.kubeconfig().to_path_buf();
    let work = tempfile::tempdir().unwrap();

    let mut links = vec![(
        format!(
            "per stream {:.0} MB/s, shared {:.0} MB/s",
            per_stream as f64 / 1e6,
            shared as f64 / 1e6
        ),
        FaultRequest::Link {
            per_stream: Some(per_stream),
            shared: Some(shared),
        },
    )];
    if unthrottled {
        links.push(("unthrottled".to_string(), FaultRequest::Clear));
    }
    let mut rows = Vec::new();
    for (link, fault) in &links {
        cluster.fault(fault.clone());
        let mut samples: Vec<Vec<(support::Sample, u64)>> = vec![Vec::new(); TOOLS.len()];
        // The streams each `create` run used and why (its `-o json` `streams`).
        let mut choices: Vec<Vec<String>> = vec![Vec::new(); TOOLS.len()];
        for r in 0..runs {
            for (t, tool) in TOOLS.iter().enumerate() {
                let out = work.path().join(format!("{t}-{r}"));
                std::fs::create_dir_all(&out).unwrap();
                let mut cmd = match tool.create {
                    Some(extra) => {
                        let mut c = Command::new(&plugin);
                        c.args([
                            "create",
                            "mixed",
                            "-n",
                            "bench",
                            "--no-progress",
                            "-o",
                            "json",
                        ])
                        .args(extra)
                        .arg("--to")
                        .arg(&out);
                        c
                    }
                    None => {
                        let mut c = Command::new(kubectl());
                        c.args(["cp", "-c", "app", "bench/app:/data"])
                            .arg(out.join("copy"));
                        c
                    }
                };
                cmd.env("KUBECONFIG", &kcfg);
                let wire_before = cluster.exec_bytes().stdout;
                let stdout = work.path().join("stdout");
                let stderr = work.path().join("stderr");
                let s = measured(&cmd, &stdout, &stderr, None);
                let wire = cluster.exec_bytes().stdout - wire_before;
                let mut ok = s.ok();
                if ok && tool.create.is_some() {
                    // The backup is whole: verify reads it back against its manifest.
                    let out: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(&stdout).unwrap()).unwrap();
                    let manifest = out["results"][0]["manifest"].as_str().unwrap().to_string();
                    let c = &out["results"][0]["streams"];
                    choices[t].push(match c["measuredBytesPerSecond"].as_f64() {
                        Some(rate) => format!(
                            "{} ({}, {:.0} MB/s measured)",
                            c["streams"],
                            c["reason"].as_str().unwrap_or_default(),
                            rate / 1e6
                        ),
                        None => format!(
                            "{} ({})",
                            c["streams"],
                            c["reason"].as_str().unwrap_or_default()
                        ),
                    });
                    let v = Command::new(&plugin)
                        .args(["verify", &manifest])
                        .env("KUBECONFIG", &kcfg)
                        .output()
                        .unwrap();
                    ok = v.status.success();
                }
                if !ok {
                    eprintln!(
                        "{} failed: {}",
                        tool.name,
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
                eprintln!(
                    "[{link}] {} run {r}: {:.2}s, {:.0} MB over exec, cpu {:.2}s, rss {} MiB, ok={ok}",
                    tool.name,
                    s.secs,
                    wire as f64 / 1e6,
                    s.cpu_secs,
                    s.max_rss_kib / 1024
                );
                let mut s = s;
                if !ok {
                    s.code = s.code.max(1);
                }
                samples[t].push((s, wire));
                let _ = std::fs::remove_dir_all(&out);
                bench.heal(&vol).await;
            }
        }
        let secs: Vec<f64> = samples
            .iter()
            .map(|v| median(v.iter().map(|(s, _)| s.secs).collect()))
            .collect();
        let cp = secs[TOOLS.len() - 1];
        for (t, tool) in TOOLS.iter().enumerate() {
            let v = &samples[t];
            rows.push(serde_json::json!({
                "link": link,
                "tool": tool.name,
                "median_seconds": secs[t],
                "all_seconds": v.iter().map(|(s, _)| s.secs).collect::<Vec<_>>(),
                "mb_per_s": bytes as f64 / 1e6 / secs[t],
                "median_exec_mb": median(v.iter().map(|(_, w)| *w as f64 / 1e6).collect()),
                "median_cpu_seconds": median(v.iter().map(|(s, _)| s.cpu_secs).collect()),
                "median_peak_rss_mib": median(v.iter().map(|(s, _)| s.max_rss_kib as f64 / 1024.0).collect()),
                "ratio_to_kubectl_cp": secs[t] / cp,
                "all_ok": v.iter().all(|(s, _)| s.ok()),
                "streams": choices[t],
                "runs": v.len(),
            }));
        }
    }

    let kubectl_version = first_line(Command::new(kubectl()).args(["version", "--client"]));
    let mut md = format!(
        "# Link-bound backup benchmark (kubesim link model)\n\n\
         Volume: the mixed set, {files} compressible files of 50–70 KB + 4 random files of {big_mib} MiB, {:.0} MB. \
         {runs} runs per tool, alternating, medians. Ratio = tool time / `kubectl cp` time (lower is better). \
         Every `create` backup was verified (`verify`) after its run. \"exec MB\" is what crossed exec streams (stdout). \
         Machine: {}. kubectl: {kubectl_version}. Plugin and kubesim: release builds (`cargo bench --bench link`).\n\n\
         \"streams\" is what each `create` run used and why (its `-o json` `streams`: `auto` measures one stream first).\n\n\
         | link | tool | time (s) | MB/s | exec MB | client CPU (s) | peak RSS (MiB) | vs kubectl cp | all ok | streams |\n|---|---|---|---|---|---|---|---|---|---|\n",
        bytes as f64 / 1e6,
        machine(),
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2}× | {} | {} |\n",
            r["link"].as_str().unwrap(),
            r["tool"].as_str().unwrap(),
            r["median_seconds"].as_f64().unwrap(),
            r["mb_per_s"].as_f64().unwrap(),
            r["median_exec_mb"].as_f64().unwrap(),
            r["median_cpu_seconds"].as_f64().unwrap(),
            r["median_peak_rss_mib"].as_f64().unwrap(),
            r["ratio_to_kubectl_cp"].as_f64().unwrap(),
            r["all_ok"],
            r["streams"]
                .as_array()
                .map(|v| v
                    .iter()
                    .filter_map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default(),
        ));
    }
    println!("{md}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("link.md"), &md).unwrap();
    std::fs::write(
        dir.join("link.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "volume_bytes": bytes,
            "per_stream_bytes_per_second": per_stream,
            "shared_bytes_per_second": shared,
            "runs": runs,
            "rows": rows,
        }))
        .unwrap(),
    )
    .unwrap();
    bench.cluster.shutdown().await;
}

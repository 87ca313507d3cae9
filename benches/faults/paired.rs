//! The paired-writer row: a workload keeps rewriting 16 pairs of files that must agree
//! (tests/fixtures/pair-writer.sh: per round, `log` then `data`, each replaced atomically with
//! the round number on its first line, so at any instant `log == data` or `log == data + 1`)
//! while kubectl-pvbackup backs its volume up, as a live copy (`--snapshot never`) and from a
//! CSI snapshot (`--snapshot always`). Every backup is unpacked and each pair judged; a pair
//! whose two files come from rounds that never coexisted is inconsistent, as a database's data
//! file and write-ahead log read seconds apart would be.
//!
//! Both modes stream under the same bandwidth cap (a slow link stretches a live copy over many
//! of the writer's rounds, as a large volume would).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubesim::FaultRequest;
use serde::{Deserialize, Serialize};

use crate::support::{BenchCluster, NAMESPACE};

pub const SCRIPT: &str = include_str!("../../tests/fixtures/pair-writer.sh");
const PAIRS: usize = 16;
const PVC: &str = "paired";
const POD: &str = "paired-writer";

/// PVBACKUP_FAULTS_PAIRED_RUNS and PVBACKUP_FAULTS_PAIRED_RATE, and the load while it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairedSettings {
    pub runs: usize,
    /// Bandwidth cap of every exec stream, bytes/s.
    pub rate: u64,
    /// `/proc/loadavg` when the row started (the machine is shared).
    pub load: String,
    /// `kubectl-pvbackup version` of the row (it may be measured apart from the other rows).
    pub plugin: String,
    /// `debug` or `release`: the pair counts do not depend on it, the seconds do.
    #[serde(default)]
    pub profile: String,
    pub total_seconds: f64,
}

/// One backup of the paired writer's volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairedRun {
    /// `live (--snapshot never)` or `snapshot (--snapshot always)`.
    pub mode: String,
    pub run: usize,
    pub exit_code: i32,
    pub seconds: f64,
    /// Pairs found in the backup (both files present).
    pub pairs: usize,
    pub inconsistent_pairs: usize,
    /// `consistency.method` of the result.
    pub method: Option<String>,
    /// `consistency.changedFileCount`: what the plugin itself reported as changed while read.
    pub changed_files_reported: Option<u64>,
    pub detail: String,
}

fn round(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let line = bytes.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

/// (pairs present, inconsistent pairs, a description of the first few bad ones).
fn judge(root: &Path) -> (usize, usize, String) {
    let mut seen = 0;
    let mut bad = Vec::new();
    for i in 1..=PAIRS {
        let d = root.join("pairs").join(i.to_string());
        let (Some(log), Some(data)) = (round(&d.join("log")), round(&d.join("data"))) else {
            continue;
        };
        seen += 1;
        if !(log == data || log == data + 1) {
            bad.push(format!("pair {i}: log {log}, data {data}"));
        }
    }
    let n = bad.len();
    bad.truncate(3);
    (seen, n, bad.join("; "))
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// Starts the writer on its own PVC and gives the bench's hostpath driver a default
/// VolumeSnapshotClass (so this row runs after every other scenario: their `--snapshot auto`
/// copies stay live, as before).
async fn workload(bench: &BenchCluster) {
    let classes: Api<DynamicObject> = Api::all_with(
        bench.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass"),
            "volumesnapshotclasses",
        ),
    );
    classes
        .create(
            &PostParams::default(),
            &from_json(serde_json::json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                "metadata": {"name": "csi-hostpath", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
                "driver": "hostpath.csi.kubesim.dev", "deletionPolicy": "Delete"})),
        )
        .await
        .expect("the VolumeSnapshotClass");
    Api::<PersistentVolumeClaim>::namespaced(bench.client.clone(), NAMESPACE)
        .create(
            &PostParams::default(),
            &from_json(serde_json::json!({"metadata": {"name": PVC}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}})),
        )
        .await
        .expect("the writer's PVC");
    bench
        .pods()
        .create(
            &PostParams::default(),
            &from_json::<Pod>(serde_json::json!({"metadata": {"name": POD}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", SCRIPT],
                                "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": PVC}}]}})),
        )
        .await
        .expect("the writer pod");
    let last = bench
        .cluster
        .volume_path(NAMESPACE, PVC)
        .join("pairs/16/data");
    let deadline = Instant::now() + Duration::from_secs(60);
    while round(&last).is_none_or(|n| n < 3) {
        assert!(
            Instant::now() < deadline,
            "the pair writer did not get going"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the row: `runs` backups in each mode, alternating.
pub async fn run(
    bench: &BenchCluster,
    plugin: &Path,
    work: &Path,
    runs: usize,
    rate: u64,
) -> (PairedSettings, Vec<PairedRun>) {
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    workload(bench).await;
    let mut out = Vec::new();
    for run in 0..runs {
        for (mode, snapshot) in [
            ("live (--snapshot never)", "never"),
            ("snapshot (--snapshot always)", "always"),
        ] {
            let dest = work.join(format!("paired-{snapshot}-{run}"));
            std::fs::create_dir_all(&dest).unwrap();
            bench.cluster.fault(FaultRequest::Bandwidth {
                bytes_per_second: rate,
            });
            let t = Instant::now();
            let o = Command::new(plugin)
                .args([
                    "create",
                    PVC,
                    "-n",
                    NAMESPACE,
                    "--no-progress",
                    "-o",
                    "json",
                ])
                .args(["--compression", "none", "--snapshot", snapshot, "--to"])
                .arg(&dest)
                .env("KUBECONFIG", bench.cluster.kubeconfig())
                .output()
                .expect("the plugin runs");
            let seconds = t.elapsed().as_secs_f64();
            bench.cluster.fault(FaultRequest::Clear);
            let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let r = &doc["results"][0];
            let mut rec = PairedRun {
                mode: mode.to_string(),
                run,
                exit_code: o.status.code().unwrap_or(-1),
                seconds,
                pairs: 0,
                inconsistent_pairs: 0,
                method: r["consistency"]["method"].as_str().map(str::to_string),
                changed_files_reported: r["consistency"]["changedFileCount"].as_u64(),
                detail: String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .to_string(),
            };
            if let Some(archive) = r["archive"].as_str() {
                let unpacked = work.join(format!("paired-{snapshot}-{run}-unpacked"));
                std::fs::create_dir_all(&unpacked).unwrap();
                let ok = Command::new("tar")
                    .arg("-xf")
                    .arg(archive)
                    .arg("-C")
                    .arg(&unpacked)
                    .status()
                    .is_ok_and(|s| s.success());
                let (pairs, bad, which) = judge(&unpacked);
                rec.pairs = pairs;
                rec.inconsistent_pairs = bad;
                if !ok {
                    rec.detail = format!("tar -xf failed on {archive}");
                } else if bad > 0 {
                    rec.detail = which;
                }
                let _ = std::fs::remove_dir_all(&unpacked);
            }
            let _ = std::fs::remove_dir_all(&dest);
            eprintln!(
                "paired writer | {mode} run {run}: exit {}, {} pairs, {} inconsistent, {:.1}s",
                rec.exit_code, rec.pairs, rec.inconsistent_pairs, rec.seconds
            );
            out.push(rec);
        }
    }
    (
        PairedSettings {
            runs,
            rate,
            load,
            plugin: crate::support::first_line(Command::new(plugin).arg("version")),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_string(),
            total_seconds: started.elapsed().as_secs_f64(),
        },
        out,
    )
}

/// The row's section of faults.md.
pub fn markdown(s: &PairedSettings, runs: &[PairedRun]) -> String {
    let mut md = format!(
        "\n## Paired writer: live copy vs `--snapshot`\n\n\
         A workload rewrites {PAIRS} pairs of 64 KiB files in lockstep (`log` then `data`, each \
         replaced atomically; a pair is consistent when `log == data` or `log == data + 1`) \
         while kubectl-pvbackup backs its volume up, every exec stream capped at {:.1} MiB/s, \
         {} run(s) per mode, alternating. Each backup is unpacked and every pair judged. \
         Measured in {:.0} s with {}, a {} build (`PVBACKUP_FAULTS_ONLY=paired-writer` measures \
         this row alone; the pair counts do not depend on the build, the seconds do); load \
         average at the start: {}.\n\n\
         | mode | runs | exit codes | pairs backed up | inconsistent pairs | files the plugin reported changed while read | copy method | seconds (median) |\n\
         |---|---|---|---|---|---|---|---|\n",
        s.rate as f64 / (1u64 << 20) as f64,
        s.runs,
        s.total_seconds,
        s.plugin,
        s.profile,
        s.load
    );
    let mut modes: Vec<&str> = runs.iter().map(|r| r.mode.as_str()).collect();
    modes.dedup();
    modes.sort();
    modes.dedup();
    for mode in modes {
        let rs: Vec<&PairedRun> = runs.iter().filter(|r| r.mode == mode).collect();
        let join = |f: &dyn Fn(&PairedRun) -> String| {
            rs.iter().map(|r| f(r)).collect::<Vec<_>>().join(" / ")
        };
        let mut secs: Vec<f64> = rs.iter().map(|r| r.seconds).collect();
        secs.sort_by(f64::total_cmp);
        md.push_str(&format!(
            "| {mode} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            rs.len(),
            join(&|r| r.exit_code.to_string()),
            join(&|r| r.pairs.to_string()),
            join(&|r| r.inconsistent_pairs.to_string()),
            join(&|r| r
                .changed_files_reported
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())),
            join(&|r| r.method.clone().unwrap_or_else(|| "-".into())),
            secs.get(secs.len() / 2).copied().unwrap_or(0.0),
        ));
    }
    md
}

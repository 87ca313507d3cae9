//! Restore time on kubesim, side by side in one run: `kubectl pvbackup restore` into a fresh
//! (empty, unmounted) PVC, with `--create-pvc`, and over an existing PVC holding the data,
//! next to `kubectl cp` local → pod into a fresh PVC, on the two data sets of issue #11:
//!
//! * mixed: 2,000 compressible files of ~60 KB and 4 random files of 100 MiB (~545 MB);
//! * small: 200,000 small files (256 B to 4 KiB, every other one text-like) in 1,000 directories.
//!
//! Each data set is backed up once (`create`, default zstd-1); `kubectl cp` copies the same tree
//! from the source volume's directory. Runs alternate between the tools (run 1 of every tool,
//! then run 2, …) so that a slow spell of this shared machine hits them alike; medians of
//! `PVBACKUP_RESTORE_RUNS` (3). Every restore is checked: exit 0 and the sha256 of every file of
//! the target equal to the source's.
//!
//! `cargo bench --bench restore` (env: PVBACKUP_RESTORE_RUNS=3, PVBACKUP_RESTORE_SMALL_FILES=200000,
//! PVBACKUP_RESTORE_MIXED_FILES=2000, PVBACKUP_RESTORE_BIG_MIB=100, PVBACKUP_RESTORE_SETS=mixed,small,
//! PVBACKUP_RESTORE_PLUGIN=another kubectl-pvbackup binary, PVBACKUP_RESTORE_OUT=results file stem,
//! PVBACKUP_RESTORE_LOGS=a directory for each run's stderr: with PVBACKUP_LOG=debug the plugin
//! logs how long each step in the helper pod took).
//! Writes benches/results/restore.md and restore.json.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    env_or, fill_mixed_set, fill_text, first_line, kubectl, machine, measured, median, tree_digest,
    BenchCluster, FileHashes, Noise, Sample, Volume, NAMESPACE,
};

fn main() {
    if support::launcher_main() {
        return;
    }
    support::run(bench());
}

/// `files` files of 256 B to 4 KiB (every other one text-like) in 1,000 directories.
fn fill_small_set(dir: &Path, files: usize) -> u64 {
    let mut noise = Noise::default();
    let mut total = 0u64;
    let mut buf = vec![0u8; 4096];
    for i in 0..files {
        let size = 256 + (i * 7919) % (4096 - 256);
        if i % 2 == 0 {
            noise.fill(&mut buf[..size]);
        } else {
            fill_text(&mut buf[..size]);
            buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        let d = dir.join(format!("d{:03}", i % 1000));
        if i < 1000 {
            std::fs::create_dir_all(&d).unwrap();
        }
        std::fs::write(d.join(format!("{i:06}.txt")), &buf[..size]).unwrap();
        total += size as u64;
    }
    total
}

/// The 1-minute load average (`/proc/loadavg`), as printed there.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// One data set: its source volume, its backup and what every restore must reproduce.
struct Set {
    name: &'static str,
    what: String,
    files: usize,
    bytes: u64,
    /// A PVC size that holds the set once, with tmpfs' page per file.
    cap: u64,
    src: Volume,
    manifest: PathBuf,
    archive_bytes: u64,
    digest: FileHashes,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    /// `restore --to-pvc NEW` into an empty PVC made before the run.
    Fresh,
    /// `restore --to-pvc NEW --create-pvc`: the PVC is made by the restore.
    CreatePvc,
    /// `restore` over a PVC that holds the data set already.
    Existing,
    /// `kubectl cp SRC/. pod:/data` into an empty PVC a fresh pod mounts.
    KubectlCp,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Fresh => "kubectl-pvbackup restore → fresh PVC",
            Tool::CreatePvc => "kubectl-pvbackup restore --create-pvc",
            Tool::Existing => "kubectl-pvbackup restore → existing PVC (replace)",
            Tool::KubectlCp => "kubectl cp local → pod, fresh PVC",
        }
    }
}

const TOOLS: [Tool; 4] = [
    Tool::Fresh,
    Tool::CreatePvc,
    Tool::Existing,
    Tool::KubectlCp,
];

async fn prepare(
    bench: &BenchCluster,
    work: &Path,
    plugin: &Path,
    name: &'static str,
    what: String,
    cap: u64,
    fill: impl FnOnce(&Path) -> u64,
) -> Set {
    let mut src = bench.claim(&format!("src-{name}"), cap).await;
    bench.mount(&mut src, &format!("src-{name}")).await;
    let bytes = fill(&src.path);
    let digest = tree_digest(&src.path);
    eprintln!("{name}: {} files, {} MiB", digest.len(), bytes >> 20);
    let out = work.join(format!("backup-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    let mut c = Command::new(plugin);
    c.args([
        "create",
        &src.pvc,
        "-n",
        NAMESPACE,
        "--no-progress",
        "-o",
        "json",
        "--to",
    ])
    .arg(&out)
    .env("KUBECONFIG", bench.cluster.kubeconfig());
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "backup of {name} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let manifest = PathBuf::from(
        v.pointer("/results/0/manifest")
            .and_then(|m| m.as_str())
            .unwrap_or_else(|| panic!("no manifest in {v}")),
    );
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    Set {
        name,
        what,
        files: digest.len(),
        bytes,
        cap,
        src,
        archive_bytes: m["archive"]["size"].as_u64().unwrap(),
        manifest,
        digest,
    }
}

/// What the target held afterwards against the source: None when equal.
fn differs(want: &FileHashes, dir: &Path) -> Option<String> {
    let got = tree_digest(dir);
    if &got == want {
        return None;
    }
    let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
    let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
    let changed = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .count();
    Some(format!(
        "{missing} missing, {extra} extra, {changed} changed files"
    ))
}

async fn bench() {
    let runs: usize = env_or("PVBACKUP_RESTORE_RUNS", 3usize).max(1);
    let small_files: usize = env_or("PVBACKUP_RESTORE_SMALL_FILES", 200_000);
    let mixed_files: usize = env_or("PVBACKUP_RESTORE_MIXED_FILES", 2_000);
    let big_mib: usize = env_or("PVBACKUP_RESTORE_BIG_MIB", 100);
    let sets_wanted: String = env_or("PVBACKUP_RESTORE_SETS", "mixed,small".to_string());
    let load_before = loadavg();
    let bench = BenchCluster::start().await;
    // PVBACKUP_RESTORE_PLUGIN: another build of the plugin (a copy of an older commit's, to
    // compare), instead of this one's.
    let plugin = std::env::var_os("PVBACKUP_RESTORE_PLUGIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kubectl-pvbackup")));
    let work = tempfile::Builder::new()
        .prefix("pvbackup-restore-bench-")
        .tempdir()
        .unwrap();
    let kcfg = bench.cluster.kubeconfig().to_path_buf();
    let mut sets = Vec::new();
    if sets_wanted.split(',').any(|s| s == "mixed") {
        let bytes = (mixed_files as u64) * 70_000 + ((4 * big_mib as u64) << 20);
        let cap = bytes + (mixed_files as u64) * 8192 + (64 << 20);
        sets.push(
            prepare(
                &bench,
                work.path(),
                &plugin,
                "mixed",
                format!(
                    "{mixed_files} compressible files of 50–70 KB + 4 random files of {big_mib} MiB"
                ),
                cap,
                |d| fill_mixed_set(d, mixed_files, big_mib),
            )
            .await,
        );
    }
    if sets_wanted.split(',').any(|s| s == "small") {
        let cap = (small_files as u64) * 8192 + (64 << 20);
        sets.push(
            prepare(
                &bench,
                work.path(),
                &plugin,
                "small",
                format!(
                    "{small_files} files of 256 B–4 KiB in 1,000 directories (half random, half text)"
                ),
                cap,
                |d| fill_small_set(d, small_files),
            )
            .await,
        );
    }

    let mut report = Vec::new();
    for set in &sets {
        // The PVC a replace restores over: the data set already, and room to stage it again.
        let existing = bench
            .claim(&format!("existing-{}", set.name), set.cap * 2 + (64 << 20))
            .await;
        let o = Command::new("cp")
            .arg("-a")
            .arg(set.src.path.join("."))
            .arg(&existing.path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); TOOLS.len()];
        let mut problems: Vec<Vec<String>> = vec![Vec::new(); TOOLS.len()];
        let mut seq = 0;
        for run in 0..runs {
            for (t, tool) in TOOLS.iter().enumerate() {
                seq += 1;
                let stdout = work.path().join(format!("{}-{seq}.out", set.name));
                let stderr = work.path().join(format!("{}-{seq}.err", set.name));
                let (mut cmd, target) = match tool {
                    Tool::Fresh => {
                        let v = bench
                            .claim(&format!("fresh-{}-{seq}", set.name), set.cap)
                            .await;
                        let mut c = Command::new(&plugin);
                        c.arg("restore")
                            .arg(&set.manifest)
                            .args(["--to-pvc", &v.pvc, "-n", NAMESPACE])
                            .args(["--yes", "--no-progress", "-o", "json"]);
                        (c, Some(v))
                    }
                    Tool::CreatePvc => {
                        let name = format!("new-{}-{seq}", set.name);
                        let mut c = Command::new(&plugin);
                        c.arg("restore")
                            .arg(&set.manifest)
                            .args(["--to-pvc", &name, "-n", NAMESPACE, "--create-pvc"])
                            .args(["--yes", "--no-progress", "-o", "json"]);
                        let v = Volume {
                            path: bench.cluster.volume_path(NAMESPACE, &name),
                            pvc: name,
                            pod: String::new(),
                        };
                        (c, Some(v))
                    }
                    Tool::Existing => {
                        let mut c = Command::new(&plugin);
                        c.arg("restore")
                            .arg(&set.manifest)
                            .args(["--to-pvc", &existing.pvc, "-n", NAMESPACE])
                            .args(["--yes", "--no-progress", "-o", "json"]);
                        (c, None)
                    }
                    Tool::KubectlCp => {
                        let mut v = bench
                            .claim(&format!("cp-{}-{seq}", set.name), set.cap)
                            .await;
                        bench.mount(&mut v, &format!("cp-{}-{seq}", set.name)).await;
                        let mut c = Command::new(kubectl());
                        c.args(["cp", "-c", "app"])
                            .arg(set.src.path.join("."))
                            .arg(format!("{NAMESPACE}/{}:/data", v.pod));
                        (c, Some(v))
                    }
                };
                cmd.env("KUBECONFIG", &kcfg);
                let s = measured(&cmd, &stdout, &stderr, Some(Duration::from_secs(900)));
                let dir = target
                    .as_ref()
                    .map(|v| v.path.clone())
                    .unwrap_or_else(|| existing.path.clone());
                let wrong = if s.ok() {
                    differs(&set.digest, &dir)
                } else {
                    Some(format!(
                        "exit {}: {}",
                        s.code,
                        std::fs::read_to_string(&stderr).unwrap_or_default().trim()
                    ))
                };
                eprintln!(
                    "{} | {} | run {run}: {:.2}s rss {} MiB cpu {:.2}s {}",
                    set.name,
                    tool.label(),
                    s.secs,
                    s.max_rss_kib / 1024,
                    s.cpu_secs,
                    wrong.as_deref().unwrap_or("ok")
                );
                if let Some(keep) = std::env::var_os("PVBACKUP_RESTORE_LOGS") {
                    // Each run's stderr, for a look at where the time went (with PVBACKUP_LOG=debug).
                    let _ = std::fs::create_dir_all(&keep);
                    let _ = std::fs::copy(
                        &stderr,
                        Path::new(&keep).join(format!("{}-{seq}-{tool:?}.err", set.name)),
                    );
                }
                if let Some(w) = wrong {
                    problems[t].push(w);
                }
                samples[t].push(s);
                if let Some(v) = &target {
                    bench.delete_claim(v).await;
                }
            }
        }
        bench.delete_claim(&existing).await;
        let cp = median(samples[3].iter().map(|s| s.secs).collect());
        let rows: Vec<serde_json::Value> = TOOLS
            .iter()
            .enumerate()
            .map(|(t, tool)| {
                let secs = median(samples[t].iter().map(|s| s.secs).collect());
                serde_json::json!({
                    "tool": tool.label(),
                    "median_seconds": secs,
                    "vs_kubectl_cp": secs / cp,
                    "throughput_mib_s": (set.bytes as f64 / (1 << 20) as f64) / secs,
                    "median_peak_rss_mib": median(samples[t].iter().map(|s| s.max_rss_kib as f64 / 1024.0).collect()),
                    "median_cpu_seconds": median(samples[t].iter().map(|s| s.cpu_secs).collect()),
                    "seconds": samples[t].iter().map(|s| s.secs).collect::<Vec<_>>(),
                    "all_ok": problems[t].is_empty(),
                    "problems": problems[t],
                })
            })
            .collect();
        report.push(serde_json::json!({
            "set": set.name,
            "what": set.what,
            "files": set.files,
            "bytes": set.bytes,
            "archive_bytes": set.archive_bytes,
            "rows": rows,
        }));
        bench.delete_claim(&set.src).await;
        write_report(&report, runs, &load_before, &plugin);
    }

    bench.cluster.shutdown().await;
}

/// Writes benches/results/<stem>.md and .json with the sets measured so far (after each set,
/// so that a long run interrupted in its second set keeps the first).
fn write_report(report: &[serde_json::Value], runs: usize, load_before: &str, plugin: &Path) {
    let kubectl_version = first_line(Command::new(kubectl()).args(["version", "--client"]));
    let load_after = loadavg();
    let mut md = format!(
    "# Restore benchmark (kubesim, one run)\n\n{runs} runs of each tool, alternating, medians. Machine: {}; \
     1-minute load average {load_before} at the start, {load_after} at the end (the machine is shared). \
     Plugin: {}. kubectl: {} ({kubectl_version}). Ratio = tool time / `kubectl cp` time (lower is better). \
     Every restore checked: exit 0 and every file's sha256 equal to the source's.\n",
    machine(),
    plugin.display(),
    kubectl().display()
);
    for set in report {
        md.push_str(&format!(
        "\n## {} set: {}\n\n{} files, {} MiB; archive (zstd-1) {} MiB.\n\n\
         | tool | time (s) | runs (s) | MiB/s | vs kubectl cp | peak RSS (MiB) | client CPU (s) | all ok |\n|---|---|---|---|---|---|---|---|\n",
        set["set"].as_str().unwrap(),
        set["what"].as_str().unwrap(),
        set["files"],
        set["bytes"].as_u64().unwrap() >> 20,
        set["archive_bytes"].as_u64().unwrap() >> 20,
    ));
        for r in set["rows"].as_array().unwrap() {
            md.push_str(&format!(
                "| {} | {:.2} | {} | {:.0} | {:.2}× | {:.0} | {:.2} | {} |\n",
                r["tool"].as_str().unwrap(),
                r["median_seconds"].as_f64().unwrap(),
                r["seconds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| format!("{:.2}", s.as_f64().unwrap()))
                    .collect::<Vec<_>>()
                    .join(", "),
                r["throughput_mib_s"].as_f64().unwrap(),
                r["vs_kubectl_cp"].as_f64().unwrap(),
                r["median_peak_rss_mib"].as_f64().unwrap(),
                r["median_cpu_seconds"].as_f64().unwrap(),
                r["all_ok"]
            ));
        }
    }
    println!("{md}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).unwrap();
    let stem: String = env_or("PVBACKUP_RESTORE_OUT", "restore".to_string());
    std::fs::write(dir.join(format!("{stem}.md")), &md).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&serde_json::json!({
            "machine": machine(),
            "plugin": plugin.display().to_string(),
            "load_average_1m": [load_before, load_after],
            "runs": runs,
            "sets": report,
        }))
        .unwrap(),
    )
    .unwrap();
}

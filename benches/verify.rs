//! `verify` throughput next to `sha256sum` on the same archive, medians of several runs, no
//! cluster: a 1 GiB mixed tree is packed the way `create` packs it (busybox tar →
//! `stream_backup`), once per compression, then each command reads the stored archive.
//! `sha256sum` only hashes the stored bytes; `verify` also decompresses, walks the tar and hashes
//! every entry against the manifest, so the ratio says what that extra checking costs.
//!
//! `cargo bench --bench verify` (env: PVBACKUP_BENCH_MIB=1024, PVBACKUP_BENCH_RUNS=5).
//! Writes benches/results/verify.md and verify.json.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use kubectl_pvbackup::archive::{stream_backup, Compression};
use kubectl_pvbackup::manifest::{ClusterInfo, Manifest, ManifestMeta, PvcInfo};
use support::{env_or, fill_mixed, machine, measured, median, Sample};

/// Packs `src` like `create` does and writes archive + manifest into `dest`; returns the paths.
fn pack(src: &Path, dest: &Path, c: Compression) -> (std::path::PathBuf, std::path::PathBuf) {
    let name = format!("vol{}", c.extension());
    let archive = dest.join(&name);
    let mut tar = Command::new("busybox")
        .args(["tar", "-cf", "-", "-C"])
        .arg(src)
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .expect("busybox tar");
    let out = std::fs::File::create(&archive).unwrap();
    let summary = stream_backup(tar.stdout.take().unwrap(), c, out, &|_| {}).expect("pack");
    assert!(tar.wait().unwrap().success());
    let meta = ManifestMeta {
        backup_id: "bench".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created: chrono::Utc::now(),
        cluster: ClusterInfo {
            server: "https://127.0.0.1".into(),
            context: None,
            created_by: None,
        },
        namespace: "bench".into(),
        pvc: PvcInfo {
            name: "vol".into(),
            uid: "bench".into(),
            capacity: None,
            access_modes: vec![],
            storage_class: None,
            volume_mode: None,
            labels: Default::default(),
        },
        source_pods: vec![],
        helper_image: "busybox".into(),
    };
    let manifest = dest.join("vol.manifest.json");
    let m = Manifest::new(meta, c, name, summary);
    std::fs::write(&manifest, m.to_json_pretty()).unwrap();
    (archive, manifest)
}

fn runs(cmd: &Command, n: usize) -> Vec<Sample> {
    let null = Path::new("/dev/null");
    // One warm-up so every tool reads the archive from the page cache, as the others do.
    let _ = measured(cmd, null, null, None);
    (0..n).map(|_| measured(cmd, null, null, None)).collect()
}

fn main() {
    if support::launcher_main() {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks; nothing to list
    }
    let mib: usize = env_or("PVBACKUP_BENCH_MIB", 1024);
    let n: usize = env_or("PVBACKUP_BENCH_RUNS", 5);
    let plugin = env!("CARGO_BIN_EXE_kubectl-pvbackup");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = fill_mixed(&src, mib);
    let mut rows = Vec::new();
    for c in [
        Compression::None,
        Compression::Zstd { level: 1 },
        Compression::Gzip { level: 1 },
    ] {
        let dir = work.path().join(c.algorithm());
        std::fs::create_dir_all(&dir).unwrap();
        let (archive, manifest) = pack(&src, &dir, c);
        let stored = std::fs::metadata(&archive).unwrap().len();
        let mut verify = Command::new(plugin);
        verify.arg("verify").arg(&manifest).arg("--no-progress");
        let mut sum = Command::new("sha256sum");
        sum.arg(&archive);
        let v = runs(&verify, n);
        let s = runs(&sum, n);
        assert!(v.iter().all(Sample::ok), "verify failed on a good archive");
        assert!(s.iter().all(Sample::ok), "sha256sum failed");
        let vt = median(v.iter().map(|x| x.secs).collect());
        let st = median(s.iter().map(|x| x.secs).collect());
        let vrss = median(v.iter().map(|x| x.max_rss_kib as f64).collect()) / 1024.0;
        rows.push(serde_json::json!({
            "compression": c.algorithm(),
            "stored_mib": stored as f64 / 1048576.0,
            "data_mib": data as f64 / 1048576.0,
            "verify_secs": vt,
            "sha256sum_secs": st,
            "verify_stored_mib_s": stored as f64 / 1048576.0 / vt,
            "sha256sum_mib_s": stored as f64 / 1048576.0 / st,
            "verify_data_mib_s": data as f64 / 1048576.0 / vt,
            "verify_peak_rss_mib": vrss,
            "ratio_verify_to_sha256sum": vt / st,
        }));
    }
    let mut md = format!(
        "# verify throughput next to sha256sum\n\nProduced by `cargo bench --bench verify`. Machine: {}. Data: {mib} MiB mixed tree (half random, half JSON-like; 64 MiB files plus small files), packed as `create` packs it. Medians of {n} runs after one warm-up, archive in the page cache. `sha256sum` hashes the stored archive only; `verify` also decompresses, walks the tar and checks every entry against the manifest.\n\n| compression | stored MiB | sha256sum s | sha256sum MiB/s | verify s | verify MiB/s (stored) | verify MiB/s (data) | verify peak RSS MiB | verify / sha256sum |\n|---|---|---|---|---|---|---|---|---|\n",
        machine()
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2}× |\n",
            r["compression"].as_str().unwrap(),
            r["stored_mib"].as_f64().unwrap(),
            r["sha256sum_secs"].as_f64().unwrap(),
            r["sha256sum_mib_s"].as_f64().unwrap(),
            r["verify_secs"].as_f64().unwrap(),
            r["verify_stored_mib_s"].as_f64().unwrap(),
            r["verify_data_mib_s"].as_f64().unwrap(),
            r["verify_peak_rss_mib"].as_f64().unwrap(),
            r["ratio_verify_to_sha256sum"].as_f64().unwrap(),
        ));
    }
    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("verify.md"), md).unwrap();
    std::fs::write(
        out.join("verify.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"machine": machine(), "mib": mib, "runs": n, "rows": rows}),
        )
        .unwrap(),
    )
    .unwrap();
}

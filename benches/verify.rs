//! `verify` throughput next to plain sha256 on the same bytes, medians of several runs, no
//! cluster. A data set is packed the way `create` packs it (busybox tar → `stream_backup`),
//! once per compression, then each command reads the stored archive:
//!
//! * `sha256sum` hashes the stored archive only;
//! * the SHA-NI reference of issue #14 hashes the uncompressed tar bytes in this process with
//!   the `sha2` crate (which uses the CPU's SHA extensions when it has them; the report says
//!   whether it does), 1 MiB reads from the page cache: the least any check of every byte can
//!   cost on one core;
//! * `verify` decompresses, walks the tar, hashes every file and the stored bytes, and checks
//!   every entry against the manifest. Goal: its throughput in uncompressed bytes ≥ 0.8× the
//!   reference's.
//!
//! Data sets: `set`, the mixed set of issue #14 (2,000 compressible files of ~60 KB + 4 random
//! files of 100 MiB, [`support::fill_mixed_set`]), and `mixed`, a 1 GiB tree
//! ([`support::fill_mixed`]).
//!
//! `cargo bench --bench verify` (env: PVBACKUP_BENCH_SETS=set,mixed, PVBACKUP_BENCH_MIB=1024,
//! PVBACKUP_BENCH_RUNS=5, PVBACKUP_BENCH_BEFORE=another kubectl-pvbackup binary to time too). Writes benches/results/verify.md and verify.json.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use kubectl_pvbackup::archive::{stream_backup, Compression};
use kubectl_pvbackup::manifest::{ClusterInfo, Manifest, ManifestMeta, PvcInfo};
use support::{
    env_or, fill_mixed, fill_mixed_set, load_average, machine, measured, median, Sample,
};

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

/// Seconds to sha256 `path` with the `sha2` crate, 1 MiB reads (the file is in the page cache).
fn sha2_seconds(path: &Path) -> f64 {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut h = Sha256::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    std::hint::black_box(h.finalize());
    started.elapsed().as_secs_f64()
}

/// Whether this CPU has the SHA extensions (`sha_ni` in /proc/cpuinfo) that `sha2` uses.
fn sha_ni() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "sha_ni"))
}

fn main() {
    if support::launcher_main() {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks; nothing to list
    }
    let sets: String = env_or("PVBACKUP_BENCH_SETS", "set,mixed".to_string());
    let mib: usize = env_or("PVBACKUP_BENCH_MIB", 1024);
    let n: usize = env_or("PVBACKUP_BENCH_RUNS", 5);
    let plugin = env!("CARGO_BIN_EXE_kubectl-pvbackup");
    // Another build of the plugin (say, the last release) measured on the same archives.
    let mut builds = vec![("this".to_string(), std::path::PathBuf::from(plugin))];
    if let Some(b) = std::env::var_os("PVBACKUP_BENCH_BEFORE") {
        let b = std::path::PathBuf::from(b);
        builds.push((format!("other ({})", b.display()), b));
    }
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut md_rows = String::new();
    for set in sets.split(',') {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let (data, what) = match set {
            "set" => (
                fill_mixed_set(&src, 2_000, 100),
                "mixed set (2,000 files of ~60 KB + 4 × 100 MiB random)".to_string(),
            ),
            "mixed" => (fill_mixed(&src, mib), format!("{mib} MiB mixed tree")),
            other => panic!("unknown data set {other:?}: use set or mixed"),
        };
        // The uncompressed tar stream, for the reference: what `verify` hashes file by file.
        let mut tar_bytes = 0u64;
        let mut reference = f64::NAN;
        for c in [
            Compression::None,
            Compression::Zstd { level: 1 },
            Compression::Gzip { level: 1 },
        ] {
            let dir = work.path().join(c.algorithm());
            std::fs::create_dir_all(&dir).unwrap();
            let (archive, manifest) = pack(&src, &dir, c);
            let stored = std::fs::metadata(&archive).unwrap().len();
            if c == Compression::None {
                tar_bytes = stored;
                let _ = sha2_seconds(&archive); // warm-up: into the page cache
                reference = median((0..n).map(|_| sha2_seconds(&archive)).collect());
            }
            let mut sum = Command::new("sha256sum");
            sum.arg(&archive);
            let s = runs(&sum, n);
            assert!(s.iter().all(Sample::ok), "sha256sum failed");
            let st = median(s.iter().map(|x| x.secs).collect());
            let mb = |b: u64, s: f64| b as f64 / 1e6 / s;
            for (build, bin) in builds.iter() {
                let mut verify = Command::new(bin);
                verify.arg("verify").arg(&manifest).arg("--no-progress");
                let v = runs(&verify, n);
                assert!(v.iter().all(Sample::ok), "verify failed on a good archive");
                let vt = median(v.iter().map(|x| x.secs).collect());
                let vrss = median(v.iter().map(|x| x.max_rss_kib as f64).collect()) / 1024.0;
                let vcpu = median(v.iter().map(|x| x.cpu_secs).collect());
                let row = serde_json::json!({
                    "set": set,
                    "build": build,
                    "compression": c.algorithm(),
                    "stored_mb": stored as f64 / 1e6,
                    "data_mb": data as f64 / 1e6,
                    "tar_mb": tar_bytes as f64 / 1e6,
                    "verify_secs": vt,
                    "verify_cpu_secs": vcpu,
                    "sha256sum_secs": st,
                    "sha2_reference_secs": reference,
                    "sha2_reference_mb_s": mb(tar_bytes, reference),
                    "sha256sum_mb_s": mb(stored, st),
                    "verify_tar_mb_s": mb(tar_bytes, vt),
                    "verify_peak_rss_mib": vrss,
                    "verify_to_reference_throughput": reference / vt,
                });
                md_rows.push_str(&format!(
                "| {what} | {build} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | **{:.2}×** |\n",
                c.algorithm(),
                stored as f64 / 1e6,
                tar_bytes as f64 / 1e6,
                st,
                mb(stored, st),
                vt,
                mb(tar_bytes, vt),
                vcpu,
                vrss,
                mb(tar_bytes, reference),
                reference / vt,
            ));
                rows.push(row);
            }
        }
    }
    let md = format!(
        "# verify throughput next to sha256\n\nProduced by `cargo bench --bench verify`. Machine: {}, SHA extensions (sha_ni): {}. Load average (1, 5, 15 min) before: {load_before}, after: {}. Medians of {n} runs after one warm-up, archive in the page cache. `sha256sum` hashes the stored archive only; the reference hashes the uncompressed tar bytes with the `sha2` crate in one thread (no decompression, no checks); `verify` decompresses, walks the tar, hashes every file and the stored bytes and checks every entry against the manifest. Goal (issue #14): verify ≥ 0.8× the reference's throughput over the same uncompressed bytes.\n\n| data | build | compression | stored MB | tar MB | sha256sum s | sha256sum MB/s | verify s | verify MB/s (tar) | verify CPU s | verify peak RSS MiB | reference MB/s (tar) | verify / reference throughput |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n{md_rows}",
        machine(),
        if sha_ni() { "yes" } else { "no" },
        load_average()
    );
    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("verify.md"), md).unwrap();
    std::fs::write(
        out.join("verify.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"machine": machine(), "sha_ni": sha_ni(), "load_before": load_before, "mib": mib, "runs": n, "rows": rows}),
        )
        .unwrap(),
    )
    .unwrap();
}

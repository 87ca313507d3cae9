//! Fault tolerance, measured: each tool backs up and restores the same kubesim volumes while
//! kubesim injects the classic faults, and every restore is judged by the sha256 of every file
//! against the original: *detected* (a step failed loudly), *survived* (data intact) or
//! *silently wrong* (every step exited 0 but the data differs).
//!
//! `cargo bench --bench faults`; the environment variables are listed in [`Settings`]. Writes
//! benches/results/faults.md, faults.json and faults.svg. `PVBACKUP_FAULTS_ONLY=paired-writer`
//! measures only the paired-writer row (`paired`) and merges it into the saved faults.json; the
//! other scenarios share their data sets and run only together.
//!
//! Tools: kubectl-pvbackup with its defaults and with `--compression none`, `kubectl cp`
//! (pod → local, then local → pod), and the hand-rolled `kubectl exec -- tar cf - | gzip -1`
//! (restored with `gunzip | kubectl exec -i -- tar xf -`), run by bash with `set -o pipefail`
//! so that the baseline gets the benefit of the doubt on exit codes. A new tool is one more
//! [`Tool`] with its backup and restore commands.

#[path = "support/mod.rs"]
mod support;

#[path = "faults/report.rs"]
mod report;

#[path = "faults/paired.rs"]
mod paired;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ListParams};
use kubesim::FaultRequest;
use serde::{Deserialize, Serialize};

use support::{
    empty_dir, env_or, fill_mixed, fill_small_files, fill_uniform, kubectl, measured, tree_digest,
    BenchCluster, FileHashes, Sample, Volume, NAMESPACE,
};

/// Sizes and repetitions, from the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// PVBACKUP_FAULTS_MIB: the mixed volume of the clean comparison.
    pub mixed_mib: usize,
    /// PVBACKUP_FAULTS_FAULT_MIB: the mixed volume every fault scenario uses. A fault's outcome
    /// does not depend on the volume being 1 GiB rather than 256 MiB, but the run time does.
    #[serde(default = "default_fault_mib")]
    pub fault_mib: usize,
    /// PVBACKUP_FAULTS_FILES: files in the small-file volume.
    pub small_files: usize,
    /// PVBACKUP_FAULTS_SLOW_MIB: each slow-link volume (compressible, incompressible).
    pub slow_mib: usize,
    /// PVBACKUP_FAULTS_SLOW_RATE: the bandwidth cap of the slow link, bytes/s per stream.
    pub slow_rate: u64,
    /// PVBACKUP_FAULTS_RUNS: runs of the clean round trips (medians are reported).
    pub runs: usize,
    /// PVBACKUP_FAULTS_FAULT_RUNS: runs of each fault scenario and of the slow-link round trips.
    pub fault_runs: usize,
    /// PVBACKUP_FAULTS_OUTAGE_SECS: length of an API outage.
    pub outage_secs: f64,
    /// PVBACKUP_FAULTS_TIMEOUT: time limit of a clean step. A step under a fault may take
    /// `HANG_FACTOR` times the tool's slowest clean step on the same data, plus the outage,
    /// and at least `HANG_FLOOR_SECS`; past that it is killed and counted as hung.
    pub timeout_secs: f64,
}

fn default_fault_mib() -> usize {
    256
}

pub const HANG_FACTOR: f64 = 3.0;
pub const HANG_FLOOR_SECS: f64 = 30.0;

impl Settings {
    fn from_env() -> Settings {
        Settings {
            mixed_mib: env_or("PVBACKUP_FAULTS_MIB", 1024),
            fault_mib: env_or("PVBACKUP_FAULTS_FAULT_MIB", default_fault_mib()),
            small_files: env_or("PVBACKUP_FAULTS_FILES", 20_000),
            slow_mib: env_or("PVBACKUP_FAULTS_SLOW_MIB", 16),
            slow_rate: env_or("PVBACKUP_FAULTS_SLOW_RATE", 8 << 20),
            runs: env_or("PVBACKUP_FAULTS_RUNS", 3usize).max(1),
            fault_runs: env_or("PVBACKUP_FAULTS_FAULT_RUNS", 1usize).max(1),
            outage_secs: env_or("PVBACKUP_FAULTS_OUTAGE_SECS", 5.0),
            timeout_secs: env_or("PVBACKUP_FAULTS_TIMEOUT", 600.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pvbackup,
    KubectlCp,
    ExecTarGzip,
}

/// A tool under test: how it backs up a volume and restores into one.
#[derive(Debug, Clone)]
struct Tool {
    name: String,
    kind: Kind,
    /// Extra `create` arguments (kubectl-pvbackup only).
    create_args: Vec<String>,
}

/// What a backup left behind; dropping it deletes it (a few backups of 1 GiB per tool would
/// otherwise pile up in the temporary directory).
#[derive(Debug)]
struct Artifact {
    /// The backup's own scratch directory.
    dir: PathBuf,
    /// What restore is given: a manifest, a copied directory, a .tar.gz.
    handle: PathBuf,
    /// The file a corruption scenario damages: the archive, the largest copied file, the .tar.gz.
    payload: PathBuf,
    stored_bytes: u64,
    /// kubectl-pvbackup's manifest, whose per-file sha256 show drift between two backups.
    manifest: Option<PathBuf>,
}

struct Ctx {
    bench: BenchCluster,
    plugin: PathBuf,
    kubeconfig: PathBuf,
    work: tempfile::TempDir,
    /// Restores go here (a workload pod `sink` mounts it, so kubectl-pvbackup needs --force,
    /// exactly as when restoring under a running workload).
    target: Volume,
    /// A volume half the size of the fault scenarios' data set, for "volume full on restore".
    tiny: Volume,
    seq: std::sync::atomic::AtomicUsize,
    /// How long a step may run before it counts as hung and is killed.
    limit: std::sync::Mutex<Duration>,
}

/// A data set: a volume filled once, and its digest.
struct Dataset {
    name: String,
    volume: Volume,
    bytes: u64,
    digest: FileHashes,
}

impl Drop for Artifact {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Tool {
    fn backup(&self, ctx: &Ctx, src: &Volume, out: &Path) -> Command {
        let mut c = match self.kind {
            Kind::Pvbackup => {
                let mut c = Command::new(&ctx.plugin);
                c.args(["create", &src.pvc, "-n", NAMESPACE, "--no-progress", "-o"])
                    .args(["json", "--to"])
                    .arg(out)
                    .args(&self.create_args);
                c
            }
            Kind::KubectlCp => {
                let mut c = Command::new(kubectl());
                c.args(["cp", "-c", "app", &format!("{NAMESPACE}/{}:/data", src.pod)])
                    .arg(out.join("copy"));
                c
            }
            Kind::ExecTarGzip => {
                let mut c = Command::new("bash");
                c.args(["-c", "set -o pipefail; \"$0\" exec -n \"$1\" \"$2\" -c app -- tar cf - -C /data . | gzip -1 > \"$3\""])
                    .arg(kubectl())
                    .args([NAMESPACE, &src.pod])
                    .arg(out.join("volume.tar.gz"));
                c
            }
        };
        c.env("KUBECONFIG", &ctx.kubeconfig);
        c
    }

    fn restore(&self, ctx: &Ctx, art: &Artifact, dst: &Volume) -> Command {
        let mut c = match self.kind {
            Kind::Pvbackup => {
                let mut c = Command::new(&ctx.plugin);
                c.arg("restore")
                    .arg(&art.handle)
                    .args(["--to-pvc", &dst.pvc, "-n", NAMESPACE])
                    .args(["--yes", "--force", "--no-progress", "-o", "json"]);
                c
            }
            Kind::KubectlCp => {
                // `DIR/.` copies the directory's content into /data (not into /data/DIR).
                let mut c = Command::new(kubectl());
                c.args(["cp", "-c", "app"])
                    .arg(art.handle.join("."))
                    .arg(format!("{NAMESPACE}/{}:/data", dst.pod));
                c
            }
            Kind::ExecTarGzip => {
                let mut c = Command::new("bash");
                c.args(["-c", "set -o pipefail; gunzip -c \"$3\" | \"$0\" exec -i -n \"$1\" \"$2\" -c app -- tar xf - -C /data"])
                    .arg(kubectl())
                    .args([NAMESPACE, &dst.pod])
                    .arg(&art.handle);
                c
            }
        };
        c.env("KUBECONFIG", &ctx.kubeconfig);
        c
    }

    /// Finds what a successful backup wrote into `out` (`stdout` is what the tool printed).
    fn artifact(&self, out: &Path, stdout: &str) -> Option<Artifact> {
        match self.kind {
            Kind::Pvbackup => {
                let v: serde_json::Value = serde_json::from_str(stdout).ok()?;
                let r = &v["results"][0];
                let archive = PathBuf::from(r["archive"].as_str()?);
                let manifest = PathBuf::from(r["manifest"].as_str()?);
                Some(Artifact {
                    dir: out.to_path_buf(),
                    stored_bytes: std::fs::metadata(&archive).ok()?.len(),
                    handle: manifest.clone(),
                    payload: archive,
                    manifest: Some(manifest),
                })
            }
            Kind::KubectlCp => {
                let dir = out.join("copy");
                let mut largest = (0u64, None);
                let mut total = 0;
                for rel in files_under(&dir) {
                    let len = std::fs::metadata(dir.join(&rel)).ok()?.len();
                    total += len;
                    if len > largest.0 || largest.1.is_none() {
                        largest = (len, Some(dir.join(rel)));
                    }
                }
                Some(Artifact {
                    dir: out.to_path_buf(),
                    handle: dir,
                    payload: largest.1?,
                    stored_bytes: total,
                    manifest: None,
                })
            }
            Kind::ExecTarGzip => {
                let f = out.join("volume.tar.gz");
                Some(Artifact {
                    dir: out.to_path_buf(),
                    stored_bytes: std::fs::metadata(&f).ok()?.len(),
                    handle: f.clone(),
                    payload: f,
                    manifest: None,
                })
            }
        }
    }

    /// Attempts a backup (`pointer` = `/results/0/attempts`) or a restore (`/attempts`) took,
    /// when the tool reports them (kubectl-pvbackup `-o json`); the others never retry.
    fn attempts(&self, stdout: &str, pointer: &str) -> Option<u32> {
        match self.kind {
            Kind::Pvbackup => serde_json::from_str::<serde_json::Value>(stdout)
                .ok()?
                .pointer(pointer)?
                .as_u64()
                .map(|n| n as u32),
            _ => Some(1),
        }
    }
}

/// Relative paths of the regular files under `dir` (no hashing).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path().strip_prefix(dir).unwrap().to_path_buf()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Where a restore goes: the volume, what it held before (None: nothing), and a fault to
/// inject mid-stream.
struct RestoreInto<'a> {
    volume: &'a Volume,
    before: Option<&'a FileHashes>,
    during: Option<Trigger>,
}

/// Which exec direction a mid-stream fault waits for.
#[derive(Debug, Clone, Copy)]
enum Flow {
    /// Bytes from the container (a backup's tar stream).
    Out,
    /// Bytes into the container (a restore's tar stream).
    In,
}

/// A fault injected once `after` bytes flowed in `flow` during a step (0: before it starts).
#[derive(Debug, Clone)]
struct Trigger {
    flow: Flow,
    after: u64,
    fault: FaultRequest,
}

/// One measured command of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    pub exit_code: i32,
    /// Interrupted by the bench (SIGINT, then SIGKILL if need be) after `limit_seconds`.
    pub timed_out: bool,
    pub limit_seconds: f64,
    /// Bytes over exec streams during the step: container → client, client → container.
    pub exec_bytes_out: u64,
    pub exec_bytes_in: u64,
    /// The last line the tool wrote on stderr (why it failed, usually).
    pub stderr_tail: String,
    #[serde(skip)]
    stdout: String,
    /// Whether the step's fault fired (a mid-stream fault needs the stream to get that far).
    pub fault_injected: Option<bool>,
}

impl Step {
    fn ok(&self) -> bool {
        self.exit_code == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Detected,
    Survived,
    SilentlyWrong,
    /// No result within the time limit; the bench killed the tool.
    Hung,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Detected => "detected",
            Outcome::Survived => "survived",
            Outcome::SilentlyWrong => "silently wrong",
            Outcome::Hung => "hung",
        }
    }
}

/// One run of one scenario with one tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub scenario: String,
    pub dataset: String,
    pub dataset_bytes: u64,
    pub tool: String,
    pub run: usize,
    pub backup: Option<Step>,
    pub restore: Option<Step>,
    /// Attempts of the backup.
    pub attempts: Option<u32>,
    /// Attempts of the restore (absent in reports made before it was recorded).
    #[serde(default)]
    pub restore_attempts: Option<u32>,
    pub stored_bytes: Option<u64>,
    pub outcome: Outcome,
    /// "backup" or "restore" when detected or hung.
    pub failed_at: Option<String>,
    pub detail: String,
    /// After a failed restore: whether the target volume was left as it was before.
    pub target_after_failure: Option<String>,
    /// kubectl-pvbackup helper pods still present after the run (deleted by the bench).
    pub leftover_helper_pods: usize,
    /// Bit rot: what a fresh backup shows about the change since the first backup.
    pub drift: Option<String>,
}

/// Differences between two trees: missing, differing, extra files.
fn diff(want: &FileHashes, got: &FileHashes) -> Option<String> {
    let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
    let differ = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .count();
    let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
    if missing + differ + extra == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if differ > 0 {
        parts.push(format!("{differ} files differ"));
    }
    if missing > 0 {
        parts.push(format!("{missing} missing"));
    }
    if extra > 0 {
        parts.push(format!("{extra} extra"));
    }
    Some(parts.join(", "))
}

impl Ctx {
    fn scratch(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = self.work.path().join(format!("{n:04}-{what}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Runs `cmd` measured; fires `trigger` when its byte threshold is reached; kills it after
    /// the current time limit.
    async fn step(&self, cmd: Command, trigger: Option<Trigger>) -> Step {
        let limit = *self.limit.lock().unwrap();
        let logs = self.scratch("logs");
        let (out, err) = (logs.join("stdout"), logs.join("stderr"));
        let before = self.bench.cluster.exec_bytes();
        let mut fired = None;
        let mut outage_started = None;
        if let Some(t) = trigger.as_ref().filter(|t| t.after == 0) {
            self.bench.cluster.fault(t.fault.clone());
            fired = Some(true);
        }
        let (o, e) = (out.clone(), err.clone());
        let mut task = tokio::task::spawn_blocking(move || measured(&cmd, &o, &e, Some(limit)));
        let sample: Sample = loop {
            tokio::select! {
                r = &mut task => break r.expect("the measuring thread"),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            if let Some(t) = trigger.as_ref().filter(|_| fired.is_none()) {
                let now = self.bench.cluster.exec_bytes();
                let flowed = match t.flow {
                    Flow::Out => now.stdout - before.stdout,
                    Flow::In => now.stdin - before.stdin,
                };
                if flowed >= t.after {
                    if matches!(t.fault, FaultRequest::Outage { .. }) {
                        outage_started = Some(Instant::now());
                    }
                    self.bench.cluster.fault(t.fault.clone());
                    fired = Some(true);
                }
            }
        };
        let after = self.bench.cluster.exec_bytes();
        if let Some(t) = &trigger {
            match t.fault {
                FaultRequest::Outage { seconds } => {
                    if let Some(s) = outage_started {
                        let end = s + Duration::from_secs_f64(seconds);
                        tokio::time::sleep_until(end.into()).await;
                    }
                    self.api_back().await;
                }
                _ => self.bench.cluster.fault(FaultRequest::Clear),
            }
        }
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&logs);
        Step {
            seconds: sample.secs,
            cpu_seconds: sample.cpu_secs,
            peak_rss_mib: sample.max_rss_kib as f64 / 1024.0,
            exit_code: sample.code,
            timed_out: sample.timed_out,
            limit_seconds: limit.as_secs_f64(),
            exec_bytes_out: after.stdout - before.stdout,
            exec_bytes_in: after.stdin - before.stdin,
            stderr_tail: stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect(),
            stdout,
            fault_injected: trigger.map(|_| fired.unwrap_or(false)),
        }
    }

    /// `kubectl pvbackup verify MANIFEST` (offline); its exit code.
    async fn plugin_verify(&self, manifest: &Path) -> i32 {
        let mut c = Command::new(&self.plugin);
        c.arg("verify").arg(manifest);
        self.step(c, None).await.exit_code
    }

    /// Waits until the API answers again after an outage.
    async fn api_back(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .bench
            .pods()
            .list(&ListParams::default())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "kubesim did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes helper pods a run left behind; returns how many there were.
    async fn sweep_helpers(&self) -> usize {
        let pods = self.bench.pods();
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=kubectl-pvbackup");
        let left = pods.list(&lp).await.map(|l| l.items.len()).unwrap_or(0);
        if left > 0 {
            let _ = pods
                .delete_collection(&DeleteParams::default().grace_period(0), &lp)
                .await;
            let deadline = Instant::now() + Duration::from_secs(60);
            while pods.list(&lp).await.map(|l| l.items.len()).unwrap_or(1) > 0 {
                assert!(Instant::now() < deadline, "helper pods not gone in 60s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        left
    }

    fn run_record(&self, scenario: &str, ds: &Dataset, tool: &Tool, run: usize) -> Run {
        Run {
            scenario: scenario.to_string(),
            dataset: ds.name.clone(),
            dataset_bytes: ds.bytes,
            tool: tool.name.clone(),
            run,
            backup: None,
            restore: None,
            attempts: None,
            restore_attempts: None,
            stored_bytes: None,
            outcome: Outcome::Detected,
            failed_at: None,
            detail: String::new(),
            target_after_failure: None,
            leftover_helper_pods: 0,
            drift: None,
        }
    }

    /// Backs `ds` up; on success returns the artifact (and fills the run's backup fields).
    async fn backup_into(
        &self,
        tool: &Tool,
        src: &Volume,
        trigger: Option<Trigger>,
        rec: &mut Run,
    ) -> Option<Artifact> {
        let out = self.scratch("backup");
        let step = self.step(tool.backup(self, src, &out), trigger).await;
        rec.attempts = tool.attempts(&step.stdout, "/results/0/attempts");
        let ok = step.ok();
        let art = ok.then(|| tool.artifact(&out, &step.stdout)).flatten();
        if art.is_none() {
            let _ = std::fs::remove_dir_all(&out);
        }
        rec.stored_bytes = art.as_ref().map(|a| a.stored_bytes);
        if step.timed_out {
            rec.outcome = Outcome::Hung;
            rec.failed_at = Some("backup".into());
            rec.detail = hung_detail(&step);
        } else if !ok {
            rec.outcome = Outcome::Detected;
            rec.failed_at = Some("backup".into());
            rec.detail = format!("exit {}: {}", step.exit_code, step.stderr_tail);
        } else if art.is_none() {
            rec.outcome = Outcome::SilentlyWrong;
            rec.detail = "exit 0 but no backup was written".into();
        }
        rec.backup = Some(step);
        art
    }

    /// Restores `art` into `dst` and judges the result against `want`. `before` is the target's
    /// content before the restore (None: empty), to tell whether a failed restore left it alone.
    async fn restore_and_judge(
        &self,
        tool: &Tool,
        art: &Artifact,
        into: RestoreInto<'_>,
        want: &FileHashes,
        rec: &mut Run,
    ) {
        let RestoreInto {
            volume: dst,
            before,
            during,
        } = into;
        let step = self.step(tool.restore(self, art, dst), during).await;
        rec.restore_attempts = tool.attempts(&step.stdout, "/attempts");
        let got = tree_digest(&dst.path);
        if !step.ok() {
            (rec.outcome, rec.detail) = if step.timed_out {
                (Outcome::Hung, hung_detail(&step))
            } else {
                (
                    Outcome::Detected,
                    format!("exit {}: {}", step.exit_code, step.stderr_tail),
                )
            };
            rec.failed_at = Some("restore".into());
            let empty = BTreeMap::new();
            rec.target_after_failure = Some(match diff(before.unwrap_or(&empty), &got) {
                None => "unchanged".into(),
                Some(d) => format!("changed ({d})"),
            });
        } else {
            match diff(want, &got) {
                None => {
                    rec.outcome = Outcome::Survived;
                    rec.detail = "all files intact".into();
                }
                Some(d) => {
                    rec.outcome = Outcome::SilentlyWrong;
                    rec.detail = format!("exit 0 but {d}");
                }
            }
        }
        rec.restore = Some(step);
    }

    /// Backup of `ds`, restore into the empty target, judge. Faults: `setup` for the whole
    /// round trip (cleared afterwards), `during_backup` / `during_restore` mid-stream.
    #[allow(clippy::too_many_arguments)]
    async fn round_trip(
        &self,
        scenario: &str,
        tool: &Tool,
        ds: &Dataset,
        run: usize,
        setup: Option<FaultRequest>,
        during_backup: Option<Trigger>,
        during_restore: Option<Trigger>,
    ) -> (Run, Option<Artifact>) {
        let mut rec = self.run_record(scenario, ds, tool, run);
        empty_dir(&self.target.path);
        if let Some(f) = &setup {
            self.bench.cluster.fault(f.clone());
        }
        let art = self
            .backup_into(tool, &ds.volume, during_backup, &mut rec)
            .await;
        rec.leftover_helper_pods += self.sweep_helpers().await;
        if let Some(a) = &art {
            let into = RestoreInto {
                volume: &self.target,
                before: None,
                during: during_restore,
            };
            self.restore_and_judge(tool, a, into, &ds.digest, &mut rec)
                .await;
            rec.leftover_helper_pods += self.sweep_helpers().await;
        }
        if setup.is_some() {
            self.bench.cluster.fault(FaultRequest::Clear);
        }
        self.bench.heal(&ds.volume).await;
        self.bench.heal(&self.target).await;
        (rec, art)
    }

    /// Bit rot after the backup: the backup is restored, then bits flip in 3 files of the
    /// restored volume. A fresh backup of the rotten volume (does it show the drift?), then the
    /// old backup restored over it (does it repair it?).
    async fn bit_rot(&self, tool: &Tool, ds: &Dataset, art: &Artifact, run: usize) -> Run {
        let mut rec = self.run_record("bit rot in the volume", ds, tool, run);
        empty_dir(&self.target.path);
        let setup = self.step(tool.restore(self, art, &self.target), None).await;
        assert!(
            setup.ok(),
            "{}: restoring the clean backup failed",
            tool.name
        );
        self.sweep_helpers().await;
        let files: Vec<&PathBuf> = ds.digest.keys().collect();
        let rotten: Vec<&PathBuf> = [0, files.len() / 2, files.len() - 1]
            .iter()
            .map(|i| files[*i])
            .collect();
        for f in &rotten {
            flip_bit(&self.target.path.join(f));
        }
        let rotten_digest = tree_digest(&self.target.path);
        if let Some(fresh) = self.backup_into(tool, &self.target, None, &mut rec).await {
            rec.drift = Some(match (&art.manifest, &fresh.manifest) {
                (Some(old), Some(new)) => {
                    // `verify` checks a backup against its own manifest, so it passes; the
                    // drift shows in the per-file sha256 of the two manifests.
                    let verify = self.plugin_verify(new).await;
                    format!(
                        "`verify` of it exits {verify}; its manifest and the old one differ in {} files' sha256",
                        manifest_drift(old, new)
                    )
                }
                _ => "no per-file checksums are recorded, so nothing shows the drift short of a second full copy compared byte by byte".into(),
            });
        } else {
            rec.drift = Some("the fresh backup failed".into());
        }
        rec.leftover_helper_pods += self.sweep_helpers().await;
        let into = RestoreInto {
            volume: &self.target,
            before: Some(&rotten_digest),
            during: None,
        };
        self.restore_and_judge(tool, art, into, &ds.digest, &mut rec)
            .await;
        if rec.outcome == Outcome::Survived {
            rec.detail = "the restore repaired the 3 rotten files".into();
        }
        rec.leftover_helper_pods += self.sweep_helpers().await;
        self.bench.heal(&self.target).await;
        rec
    }

    /// A damaged backup (`damage` applied to its payload, `undo` afterwards) restored into the
    /// empty target (or `into`).
    async fn damaged_restore(
        &self,
        mut rec: Run,
        tool: &Tool,
        ds: &Dataset,
        art: &Artifact,
        into: &Volume,
        damage: &dyn Fn(&Path) -> String,
    ) -> Run {
        empty_dir(&into.path);
        let what = damage(&art.payload);
        let target = RestoreInto {
            volume: into,
            before: None,
            during: None,
        };
        self.restore_and_judge(tool, art, target, &ds.digest, &mut rec)
            .await;
        if !what.is_empty() {
            rec.detail = format!("{what}; {}", rec.detail);
        }
        rec.stored_bytes = Some(art.stored_bytes);
        rec.leftover_helper_pods += self.sweep_helpers().await;
        empty_dir(&into.path);
        self.bench.heal(into).await;
        rec
    }
}

fn hung_detail(step: &Step) -> String {
    format!(
        "no result after {:.0} s; after Ctrl-C: exit {}: {}",
        step.limit_seconds, step.exit_code, step.stderr_tail
    )
}

/// Flips the lowest bit of the middle byte of `f`; flipping twice restores it.
fn flip_bit(f: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(f)
        .unwrap();
    let len = file.metadata().unwrap().len();
    let at = len / 2;
    let mut b = [0u8];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut b).unwrap();
    b[0] ^= 1;
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&b).unwrap();
    format!("bit flipped at byte {at} of {len}")
}

/// Files whose sha256 differs between two kubectl-pvbackup manifests (what a user sees by
/// comparing `kubectl pvbackup inspect --files -o json` of both).
fn manifest_drift(old: &Path, new: &Path) -> usize {
    let read = |p: &Path| -> BTreeMap<String, String> {
        let dest =
            kubectl_pvbackup::destination::local::LocalDir::new(p.parent().unwrap().to_path_buf());
        let m = kubectl_pvbackup::manifest::load(&dest, p.file_name().unwrap().to_str().unwrap())
            .expect("a manifest");
        m.entries
            .into_iter()
            .filter_map(|e| Some((e.path, e.sha256?)))
            .collect()
    };
    let (a, b) = (read(old), read(new));
    a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count()
        + b.keys().filter(|k| !a.contains_key(*k)).count()
}

fn tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "kubectl-pvbackup (defaults: zstd-1)".into(),
            kind: Kind::Pvbackup,
            create_args: Vec::new(),
        },
        Tool {
            name: "kubectl-pvbackup --compression none".into(),
            kind: Kind::Pvbackup,
            create_args: vec!["--compression".into(), "none".into()],
        },
        Tool {
            name: "kubectl cp".into(),
            kind: Kind::KubectlCp,
            create_args: Vec::new(),
        },
        Tool {
            name: "kubectl exec tar | gzip -1".into(),
            kind: Kind::ExecTarGzip,
            create_args: Vec::new(),
        },
    ]
}

fn main() {
    if support::launcher_main() {
        return;
    }
    // Re-render the Markdown and the chart from a saved faults.json, without measuring.
    if let Ok(json) = std::env::var("PVBACKUP_FAULTS_REPORT_FROM") {
        let results: report::Results =
            serde_json::from_slice(&std::fs::read(&json).expect("read the results"))
                .expect("a faults.json");
        println!("{}", report::write(&results));
        return;
    }
    match std::env::var("PVBACKUP_FAULTS_ONLY").as_deref() {
        Err(_) => support::run(bench()),
        Ok("paired-writer") => support::run(paired_only()),
        Ok(other) => {
            eprintln!("PVBACKUP_FAULTS_ONLY={other}: only `paired-writer` runs alone; unset it to run every scenario");
            std::process::exit(2);
        }
    }
}

fn paired_settings() -> (usize, u64) {
    (
        env_or("PVBACKUP_FAULTS_PAIRED_RUNS", 3usize).max(1),
        env_or("PVBACKUP_FAULTS_PAIRED_RATE", 1u64 << 20),
    )
}

/// The paired-writer row alone, merged into the saved results (the other rows stay as they
/// were measured).
async fn paired_only() {
    let saved =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/faults.json");
    let mut results: report::Results = serde_json::from_slice(
        &std::fs::read(&saved)
            .expect("benches/results/faults.json: run the whole bench once first"),
    )
    .expect("a faults.json");
    let bench = BenchCluster::start().await;
    let work = tempfile::Builder::new()
        .prefix("pvbackup-paired-")
        .tempdir()
        .unwrap();
    let (runs, rate) = paired_settings();
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-pvbackup"));
    let (ps, rows) = paired::run(&bench, &plugin, work.path(), runs, rate).await;
    results.paired_settings = Some(ps);
    results.paired = rows;
    println!("{}", report::write(&results));
    bench.cluster.shutdown().await;
}

async fn dataset(
    bench: &BenchCluster,
    name: &str,
    pvc: &str,
    bytes_hint: u64,
    fill: impl FnOnce(&Path) -> u64,
) -> Dataset {
    let volume = bench.volume(pvc, &format!("app-{pvc}"), bytes_hint).await;
    let bytes = fill(&volume.path);
    let digest = tree_digest(&volume.path);
    let name = format!("{name} ({} files)", digest.len());
    eprintln!("data set {name}: {} MiB", bytes >> 20);
    Dataset {
        name,
        volume,
        bytes,
        digest,
    }
}

async fn bench() {
    let settings = Settings::from_env();
    let started = Instant::now();
    let bench = BenchCluster::start().await;
    let s = &settings;
    let mixed_cap = ((s.mixed_mib as u64) << 20) * 5 / 4 + (64 << 20);
    // Every file costs at least a page on tmpfs, plus the directory entries.
    let small_cap = s.small_files as u64 * (8 << 10) * 2 + (64 << 20);
    let slow_cap = ((s.slow_mib as u64) << 20) * 5 / 4 + (16 << 20);
    let mixed = dataset(
        &bench,
        &format!("mixed {} MiB", s.mixed_mib),
        "mixed",
        mixed_cap,
        |d| fill_mixed(d, s.mixed_mib),
    )
    .await;
    let fault_cap = ((s.fault_mib as u64) << 20) * 5 / 4 + (64 << 20);
    let faulted = dataset(
        &bench,
        &format!("fault set, mixed {} MiB", s.fault_mib),
        "faulted",
        fault_cap,
        |d| fill_mixed(d, s.fault_mib),
    )
    .await;
    let small = dataset(&bench, "small files", "small", small_cap, |d| {
        fill_small_files(d, s.small_files)
    })
    .await;
    let text = dataset(
        &bench,
        &format!("compressible {} MiB", s.slow_mib),
        "text",
        slow_cap,
        |d| fill_uniform(d, s.slow_mib, true),
    )
    .await;
    let noise = dataset(
        &bench,
        &format!("incompressible {} MiB", s.slow_mib),
        "noise",
        slow_cap,
        |d| fill_uniform(d, s.slow_mib, false),
    )
    .await;
    // kubectl-pvbackup restores over existing data through a staging copy next to it (all or
    // nothing), so the bit-rot repair needs room for the data twice; the clean restores go
    // into an empty target and need it once (and "volume full" tests the refusal).
    let target = bench
        .volume("target", "sink", (mixed_cap * 5 / 2).max(small_cap))
        .await;
    let tiny = bench.volume("tiny", "tiny-sink", faulted.bytes / 2).await;
    let ctx = Ctx {
        kubeconfig: bench.cluster.kubeconfig().to_path_buf(),
        bench,
        plugin: PathBuf::from(env!("CARGO_BIN_EXE_kubectl-pvbackup")),
        work: tempfile::Builder::new()
            .prefix("pvbackup-faults-")
            .tempdir()
            .unwrap(),
        target,
        tiny,
        seq: Default::default(),
        limit: std::sync::Mutex::new(Duration::from_secs_f64(s.timeout_secs)),
    };
    let tools = tools();
    let mut runs: Vec<Run> = Vec::new();
    let log = |r: &Run| {
        eprintln!(
            "[{:>5.0}s] {} | {} | {} run {}: {}{} — {}",
            started.elapsed().as_secs_f64(),
            r.scenario,
            r.dataset,
            r.tool,
            r.run,
            r.outcome.label(),
            r.failed_at
                .as_deref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default(),
            r.detail
        )
    };

    let reset_limit = || {
        *ctx.limit.lock().unwrap() = Duration::from_secs_f64(s.timeout_secs);
    };
    for tool in &tools {
        reset_limit();
        // Clean round trips; the fault set's last backup is the one the corruption scenarios
        // reuse.
        let mut clean_art = None;
        for ds in [&mixed, &small, &faulted] {
            for run in 0..s.runs {
                let (r, art) = ctx
                    .round_trip("clean", tool, ds, run, None, None, None)
                    .await;
                log(&r);
                runs.push(r);
                if std::ptr::eq(ds, &faulted) {
                    clean_art = art;
                }
            }
        }
        // Faults may slow a tool down, but not without bound.
        let slowest = runs
            .iter()
            .filter(|r| r.tool == tool.name && r.scenario == "clean" && r.dataset == faulted.name)
            .flat_map(|r| [&r.backup, &r.restore])
            .flatten()
            .map(|st| st.seconds)
            .fold(0.0, f64::max);
        *ctx.limit.lock().unwrap() =
            Duration::from_secs_f64((slowest * HANG_FACTOR + s.outage_secs).max(HANG_FLOOR_SECS));
        let third = faulted.bytes / 3;
        for run in 0..s.fault_runs {
            let kill = Trigger {
                flow: Flow::Out,
                after: 0,
                fault: FaultRequest::KillExec {
                    after_bytes: third,
                    count: 1,
                },
            };
            let (r, _) = ctx
                .round_trip(
                    "container crash mid-backup",
                    tool,
                    &faulted,
                    run,
                    None,
                    Some(kill),
                    None,
                )
                .await;
            log(&r);
            runs.push(r);
            let outage = |flow| Trigger {
                flow,
                after: third,
                fault: FaultRequest::Outage {
                    seconds: s.outage_secs,
                },
            };
            let (r, _) = ctx
                .round_trip(
                    "API outage mid-backup",
                    tool,
                    &faulted,
                    run,
                    None,
                    Some(outage(Flow::Out)),
                    None,
                )
                .await;
            log(&r);
            runs.push(r);
            let (r, _) = ctx
                .round_trip(
                    "API outage mid-restore",
                    tool,
                    &faulted,
                    run,
                    None,
                    None,
                    Some(outage(Flow::In)),
                )
                .await;
            log(&r);
            runs.push(r);
        }
        let Some(art) = clean_art else {
            eprintln!(
                "{}: no clean backup of the fault set; skipping the corruption scenarios",
                tool.name
            );
            continue;
        };
        for run in 0..s.fault_runs {
            let r = ctx.bit_rot(tool, &faulted, &art, run).await;
            log(&r);
            runs.push(r);
            let r = ctx
                .damaged_restore(
                    ctx.run_record("volume full on restore", &faulted, tool, run),
                    tool,
                    &faulted,
                    &art,
                    &ctx.tiny,
                    &|_| String::new(),
                )
                .await;
            log(&r);
            runs.push(r);
            let r = ctx
                .damaged_restore(
                    ctx.run_record("archive bit flip", &faulted, tool, run),
                    tool,
                    &faulted,
                    &art,
                    &ctx.target,
                    &flip_bit,
                )
                .await;
            log(&r);
            runs.push(r);
            flip_bit(&art.payload);
        }
        // Truncation destroys the backup, so it comes last and runs once.
        let r = ctx
            .damaged_restore(
                ctx.run_record("archive truncated", &faulted, tool, 0),
                tool,
                &faulted,
                &art,
                &ctx.target,
                &|p| {
                    let len = std::fs::metadata(p).unwrap().len();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(len / 2)
                        .unwrap();
                    format!("cut to {} of {len} bytes", len / 2)
                },
            )
            .await;
        log(&r);
        runs.push(r);
        reset_limit();
        for ds in [&text, &noise] {
            for run in 0..s.fault_runs {
                let cap = FaultRequest::Bandwidth {
                    bytes_per_second: s.slow_rate,
                };
                let (r, _) = ctx
                    .round_trip("slow link", tool, ds, run, Some(cap), None, None)
                    .await;
                log(&r);
                runs.push(r);
            }
        }
    }
    // Last: it gives the driver a VolumeSnapshotClass, which would turn every `--snapshot auto`
    // copy above into a snapshot.
    let (paired_runs, rate) = paired_settings();
    let (ps, paired) =
        paired::run(&ctx.bench, &ctx.plugin, ctx.work.path(), paired_runs, rate).await;
    let results = report::Results {
        environment: report::Environment::collect(
            &ctx.plugin,
            started.elapsed().as_secs_f64(),
            settings,
        ),
        tools: tools.iter().map(|t| t.name.clone()).collect(),
        runs,
        paired_settings: Some(ps),
        paired,
    };
    println!("{}", report::write(&results));
    ctx.bench.cluster.shutdown().await;
}

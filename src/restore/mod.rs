//! The restore engine: streams a verified backup into a PVC through a helper pod and leaves
//! the volume either exactly as it was or exactly as the backup.
//!
//! In the helper pod the archive is extracted into a staging directory on the same volume,
//! verified there, swapped in with renames, verified in place, and only then are the originals
//! dropped. Any failure after the first change rolls the volume back (in a fresh helper pod if
//! the first one died). The steps in the pod are typed ([`step::Step`]); their scripts and
//! what each leaves on the volume when stopped are in [`script`].
//!
//! `--in-place` (replace mode, for a volume without room to stage) is the exception: it
//! deletes the current content and extracts straight into the volume, so there is nothing to
//! roll back to; a failure after the delete says the volume is partly restored, and a retry
//! (or re-run) deletes and extracts again.
//!
//! `cmd::restore` and `cmd::drill` turn their plans into an [`Execution`] and report what
//! [`execute`] returns.

pub mod entries;
mod gate;
pub mod script;
pub mod step;
pub mod table;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use tokio::io::AsyncReadExt;

use crate::archive::Spool;
use crate::attempts::with_retries;
use crate::discover::Target;
use crate::exit::{ExitKind, Failure};
use crate::helper_pod::{
    admissible_pod, lease_of, HelperOptions, HelperPodRequest, Purpose, APP_NAME, LABEL_MANAGED_BY,
    LABEL_PURPOSE, LABEL_PVC, LABEL_RUN_ID, TMP_MOUNT_PATH, TMP_VOLUME,
};
use crate::helper_session::{
    delete_and_wait, renewal_period, run_in, wait_gone, HelperPod, Registry, Watch,
};
use crate::locate::Located;
use crate::manifest::Manifest;
use crate::output;
use crate::progress::Progress;
use crate::retry::{AttemptRecord, RetryPolicy};

pub use entries::Entries;
pub use script::{compare, parse_listing, Recovered};
use step::{InPod, Step};

/// What a restore does with the files already on the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The volume ends up holding exactly the backup.
    Replace,
    /// The backup's files are written over the volume; other files stay.
    Merge,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replace => "replace",
            Mode::Merge => "merge",
        }
    }
}

/// A fresh id for one restore run: names its entries on the volume and its helper pods.
pub fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        chrono::Utc::now().format("%Y%m%dt%H%M%S"),
        rand::random::<u16>()
    )
}

/// The PVC a restore creates (`restore --create-pvc`, a drill's scratch PVC): the manifest's
/// access modes, class, size and labels.
pub fn new_pvc(
    m: &Manifest,
    ns: &str,
    name: &str,
    storage_class: Option<&str>,
    size: &str,
) -> PersistentVolumeClaim {
    let mut labels: BTreeMap<String, String> = m.pvc.labels.clone();
    labels.insert(
        "pvbackup.dev/restored-from".into(),
        m.backup_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(63)
            .collect(),
    );
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(if m.pvc.access_modes.is_empty() {
                vec!["ReadWriteOnce".to_string()]
            } else {
                m.pvc.access_modes.clone()
            }),
            storage_class_name: storage_class
                .map(str::to_string)
                .or_else(|| m.pvc.storage_class.clone()),
            volume_mode: m.pvc.volume_mode.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// What a failed in-place restore leaves behind, and how to finish it.
fn partly_restored(ns: &str, name: &str) -> String {
    format!(
        "PVC {ns}/{name} is left partly restored (--in-place deleted its previous content and has no rollback); run the same restore command again to finish it"
    )
}
/// Everything the in-cluster half of a restore needs; built by `restore` and `drill`.
pub struct Execution {
    pub loc: Arc<Located>,
    /// The manifest's entries ([`Entries::read`]).
    pub entries: Arc<Entries>,
    pub ns: String,
    pub name: String,
    pub target: Target,
    pub nodes: Vec<Node>,
    pub namespace_obj: Option<Namespace>,
    pub run_id: String,
    pub mode: Mode,
    /// `--in-place`: no staging, no rollback (replace mode only).
    pub in_place: bool,
    pub helper: HelperOptions,
    pub retry: RetryPolicy,
    pub needed: u64,
    /// On Ctrl-C/SIGTERM, roll the volume back before returning (a drill's scratch volume is
    /// deleted instead, so it skips this).
    pub recover_on_interrupt: bool,
}

impl Execution {
    /// The helper pod request for one pod of this run (`suffix` makes its name unique).
    pub fn request(&self, suffix: &str) -> Result<HelperPodRequest, Failure> {
        let mut req = HelperPodRequest::placed(
            &self.target,
            &self.nodes,
            format!("{}{suffix}", self.run_id),
            Purpose::Restore,
            &self.helper,
        )?;
        // A vanished client's helper rolls this run back by itself before it stops.
        let pod = InPod {
            mount: &req.mount_path,
            run: TMP_MOUNT_PATH,
        };
        req.on_lease_expiry = step::on_lease_expiry(&pod, &self.run_id);
        Ok(req)
    }
}

/// The outcome of [`execute`]: every attempt, and the final result.
pub struct Executed {
    pub result: Result<(), Failure>,
    pub attempt_log: Vec<AttemptRecord>,
}

/// Restores in helper pods, retrying transient failures. Every attempt after a failure first
/// rolls the volume back to its original state (removing a half-extracted staging directory,
/// undoing a half-done swap), and only once the previous helper pod is confirmed gone, so two
/// pods never work on the volume at once; the swap therefore stays all-or-nothing across
/// attempts. Helper pods are deleted whatever happens. An in-place restore has nothing to roll
/// back to: every attempt deletes the volume's content and extracts again, and a failure after
/// the first delete says the volume is partly restored.
pub async fn execute(client: &kube::Client, ex: &Execution, registry: &Registry) -> Executed {
    let phase = Mutex::new(Phase::Nothing);
    let ghost = Mutex::new(None);
    let job = Job::of(ex);
    let mut log = Vec::new();
    let work = async {
        take_over(client, ex, registry).await?;
        attempts(client, ex, &job, registry, &phase, &ghost, &mut log).await
    };
    let outcome = tokio::select! {
        r = work => r,
        _ = crate::signals::interrupted() => {
            if ex.recover_on_interrupt && !ex.in_place {
                eprintln!("interrupted; rolling back");
                if *phase.lock().unwrap_or_else(|p| p.into_inner()) != Phase::Nothing {
                    // The attempt's pod may still run a step (an exec'd process outlives its
                    // stream): it goes first, so that the rollback never runs next to it.
                    let left = registry.delete_all(client).await;
                    if let Some(pod) = left.first() {
                        let name = pod.rsplit('/').next().unwrap_or(pod).to_string();
                        *ghost.lock().unwrap_or_else(|p| p.into_inner()) = Some(name);
                    }
                    if let Err(f) = recover(client, ex, &job, registry, &ghost).await {
                        eprintln!("{}", f.message);
                    }
                }
            }
            Err(Failure::interrupted())
        }
    };
    let outcome = match outcome {
        Err(f)
            if f.kind != ExitKind::Interrupted
                && *phase.lock().unwrap_or_else(|p| p.into_inner()) == Phase::NeedsRecovery =>
        {
            match recover(client, ex, &job, registry, &ghost).await {
                Ok(()) => Err(Failure::new(
                    f.kind,
                    format!(
                        "{}; the volume was rolled back to its previous content",
                        f.message
                    ),
                )),
                Err(r) => Err(Failure::new(
                    f.kind,
                    format!("{}; {}", f.message, r.message),
                )),
            }
        }
        Err(f) if *phase.lock().unwrap_or_else(|p| p.into_inner()) == Phase::PartlyRestored => {
            // The generic interruption message speaks of partial files removed; here the
            // partial state is the point.
            let what = if f.kind == ExitKind::Interrupted {
                "interrupted; the helper pods were removed".to_string()
            } else {
                f.message
            };
            Err(Failure::new(
                f.kind,
                format!("{what}; {}", partly_restored(&ex.ns, &ex.name)),
            ))
        }
        other => other,
    };
    let left = registry.delete_all(client).await;
    if !left.is_empty() {
        eprintln!(
            "warning: could not delete helper pods {}; run `kubectl pvbackup cleanup`",
            left.join(", ")
        );
    }
    Executed {
        result: outcome,
        attempt_log: log,
    }
}

/// The attempts of [`execute`] (the shared loop of `crate::attempts`); `log` receives one
/// record per attempt.
async fn attempts(
    client: &kube::Client,
    ex: &Execution,
    job: &Job,
    registry: &Registry,
    phase: &Mutex<Phase>,
    ghost: &Mutex<Option<String>>,
    log: &mut Vec<AttemptRecord>,
) -> Result<(), Failure> {
    let bar = Progress::new(false).bar(&format!("{}/{}", ex.ns, ex.name));
    let done = with_retries(&ex.retry, &bar, |number| async move {
        let suffix = if number == 1 {
            String::new()
        } else {
            format!("-a{number}")
        };
        let last_pod = ghost.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(g) = last_pod {
            if !pod_gone(client, &ex.ns, &g).await {
                *ghost.lock().unwrap_or_else(|p| p.into_inner()) = Some(g.clone());
                return Err(Failure::runtime(format!(
                    "helper pod {}/{g} of the previous attempt still exists, so another attempt could race with it on the volume; delete it, then run the restore again",
                    ex.ns
                ))
                .permanent());
            }
        }
        let pod = admissible_pod(&ex.request(&suffix)?, ex.namespace_obj.as_ref())?;
        restore_in_pod(client, pod, job, registry, phase)
            .await
            .map_err(|(f, not_gone)| {
                if not_gone.is_some() {
                    *ghost.lock().unwrap_or_else(|p| p.into_inner()) = not_gone;
                }
                f
            })
    })
    .await;
    *log = done.log;
    done.result
}

/// Waits (a minute at most) until helper pod `ns/name` is gone.
async fn pod_gone(client: &kube::Client, ns: &str, name: &str) -> bool {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_gone(&api, name, None, Duration::from_secs(60)).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing on the volume changed yet.
    Nothing,
    /// Staging or the swap may have touched the volume: a failure must roll back.
    NeedsRecovery,
    /// Committed (or rolled back): nothing left to undo.
    Done,
    /// In place: the original content was (or is being) deleted; there is nothing to roll back
    /// to, only a restore to finish. Stays so across attempts until one succeeds.
    PartlyRestored,
}

struct Job {
    loc: Arc<Located>,
    entries: Arc<Entries>,
    run_id: String,
    mode: Mode,
    in_place: bool,
    timeout: Duration,
    needed: u64,
    stall: Duration,
    /// `namespace/pvc`, for what the user reads.
    label: String,
}

/// Streams the archive, decompressed, into the helper pod's `tar -x`, checking it against the
/// manifest on the way ([`gate::stream_checked`]): the archive is read once, and
/// `tar` only ever sees members the manifest describes. Whether the stream was whole (the
/// stored archive's size and sha256) is known at its end, so what was extracted is trusted only
/// when this returns `Ok` and the pod's hashes of the files it wrote match the manifest's: a
/// failure rolls the volume back. A
/// damaged archive is an integrity failure (exit 3, never retried); a write that fails is the
/// connection's or the pod's problem (runtime, retried).
fn feed<W: tokio::io::AsyncWrite + Unpin>(
    loc: &Located,
    entries: &Entries,
    stdin: W,
    hashing: HashFeed,
) -> Result<u64, Failure> {
    use std::io::{Read, Write};
    let m = &loc.manifest;
    let mut bridge = tokio_util::io::SyncIoBridge::new(stdin);
    let reader = loc.open_archive()?;
    let broken = |e: std::io::Error| {
        Failure::runtime(format!(
            "streaming the archive to the helper pod failed: {e}"
        ))
    };
    let mut hashing = hashing;
    let report = gate::stream_checked(
        std::io::BufReader::with_capacity(1 << 20, reader),
        m,
        entries,
        &mut bridge,
        &mut |e| hashing.member(e),
    );
    // The hashing sessions' input ends with the stream (a damaged archive fails the extraction,
    // which decides; the sessions are then dropped).
    hashing.finish();
    let report = report.map_err(|e| match e {
        crate::archive::ArchiveError::Write { source } => broken(source),
        other => Failure::from(other),
    });
    // On a damaged archive `tar` gets an end of input now, and ends (`extract` waits for that
    // before anything rolls back).
    let report = report.inspect_err(|_| {
        let _ = bridge.shutdown();
    })?;
    if !report.is_ok() {
        let _ = bridge.shutdown();
        let mut problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        if problems.is_empty() {
            problems.push("the archive ends early".into());
        }
        return Err(Failure::integrity(format!(
            "the backup does not match its manifest (found while streaming it to the helper pod): {}",
            problems
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    // The zeros that make the stream whole blocks for EXTRACT's count (`tar` drains them).
    let padding = script::padded(m.uncompressed_size) - m.uncompressed_size;
    std::io::copy(&mut std::io::repeat(0).take(padding), &mut bridge).map_err(broken)?;
    bridge.flush().map_err(broken)?;
    bridge
        .shutdown()
        .map_err(|e| Failure::runtime(format!("closing the helper pod's stdin failed: {e}")))?;
    Ok(report.stored_bytes)
}

impl Job {
    fn of(ex: &Execution) -> Job {
        Job {
            loc: ex.loc.clone(),
            entries: ex.entries.clone(),
            run_id: ex.run_id.clone(),
            mode: ex.mode,
            in_place: ex.in_place,
            timeout: ex.helper.pod_timeout,
            needed: ex.needed,
            stall: ex.retry.stall,
            label: format!("{}/{}", ex.ns, ex.name),
        }
    }

    /// Top-level names a replace keeps: `lost+found` when the backup has none.
    fn keep(&self) -> Vec<String> {
        if self.entries.has_lost_found {
            Vec::new()
        } else {
            vec!["lost+found".to_string()]
        }
    }

    fn rollback<'a>(&'a self, keep: &'a [String]) -> Step<'a> {
        Step::Rollback {
            run_id: &self.run_id,
            mode: self.mode,
            keep,
        }
    }
}

fn set(p: &Mutex<Phase>, v: Phase) {
    *p.lock().unwrap_or_else(|e| e.into_inner()) = v;
}

/// The paths of `helper`'s pod, for its steps.
fn in_pod(helper: &HelperPod) -> InPod<'_> {
    InPod {
        mount: &helper.mount,
        run: &helper.run_dir,
    }
}

/// Runs `step` in `helper`, returns its raw stdout; a non-zero exit or a lost stream is a
/// runtime failure.
async fn run(helper: &HelperPod, step: &Step<'_>) -> Result<Vec<u8>, Failure> {
    let argv = step.argv(&in_pod(helper));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let began = std::time::Instant::now();
    let out = helper.run_bytes(&argv).await;
    tracing::debug!(
        "{}: {} in {:.2}s",
        helper.name,
        step.name(),
        began.elapsed().as_secs_f64()
    );
    out
}

/// One attempt in one helper pod. On failure, also returns the pod's name when it touched the
/// volume and could not be confirmed gone (a later pod must not start on the volume while it
/// may still run).
async fn restore_in_pod(
    client: &kube::Client,
    pod: Pod,
    job: &Job,
    registry: &Registry,
    phase: &Mutex<Phase>,
) -> Result<(), (Failure, Option<String>)> {
    let began = std::time::Instant::now();
    let mut helper = HelperPod::launch(client, pod, job.timeout, registry)
        .await
        .map_err(|f| (f, None))?;
    tracing::debug!(
        "{}: running in {:.2}s",
        helper.name,
        began.elapsed().as_secs_f64()
    );
    let keep = job.keep();
    let r = async {
        // Back to a volume no run is half-way through before anything else: a previous
        // attempt, or an earlier run whose client vanished, may have left a partial staging
        // directory or a half-done swap (RECOVER rolls back what has a journal, and deletes
        // what finished runs left).
        let out = run(&helper, &Step::Recover { only: None })
            .await
            .map_err(|f| {
                Failure::runtime(format!(
                    "finishing what an earlier restore left on the volume failed: {}",
                    f.message
                ))
            })?;
        tell_recovered(
            &job.label,
            &script::parse_recovered(&String::from_utf8_lossy(&out)),
            &job.run_id,
        );
        if !job.in_place {
            // In place, the state stays "partly restored" until an attempt succeeds.
            set(phase, Phase::Nothing);
        }
        steps(&helper, job, phase).await
    }
    .await;
    let mut r = r;
    if r.is_err() && *phase.lock().unwrap_or_else(|e| e.into_inner()) == Phase::NeedsRecovery {
        // Roll back in this pod while it is alive; `recover` retries in a fresh one otherwise.
        if run(&helper, &job.rollback(&keep)).await.is_ok() {
            set(phase, Phase::Done);
            r = r.map_err(|f| {
                Failure::new(
                    f.kind,
                    format!(
                        "{}; the volume was rolled back to its previous content",
                        f.message
                    ),
                )
            });
        }
    }
    let began = std::time::Instant::now();
    let gone = helper.delete().await;
    tracing::debug!(
        "{}: deleted in {:.2}s",
        helper.name,
        began.elapsed().as_secs_f64()
    );
    let touched = matches!(
        *phase.lock().unwrap_or_else(|e| e.into_inner()),
        Phase::NeedsRecovery | Phase::PartlyRestored
    );
    r.map_err(|f| (f, (touched && !gone).then(|| helper.name.clone())))
}

/// An integrity failure naming `what` and the first 20 differences, when there are any.
fn mismatches(what: &str, problems: &[String]) -> Result<(), Failure> {
    if problems.is_empty() {
        return Ok(());
    }
    let first: Vec<&str> = problems.iter().take(20).map(String::as_str).collect();
    Err(Failure::integrity(format!("{what}: {}", first.join("; "))))
}

/// Lists `dir` in the helper pod ([`script::LIST`], regular files not hashed), parsing the
/// output as it arrives into a table by path: memory stays bounded whatever the number of
/// entries.
async fn listing(
    helper: &HelperPod,
    dir: &str,
    job: &Job,
) -> Result<table::Table<script::Seen>, Failure> {
    use tokio::io::AsyncReadExt;
    let step = Step::List {
        dir,
        run_id: &job.run_id,
        hash: false,
    };
    let argv = step.argv(&in_pod(helper));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let began = std::time::Instant::now();
    let mut session = helper.session(&argv, false, Watch::default()).await?;
    let (mut stdout, mut stderr) = session.stdio()?;
    let unreadable = |e: String| {
        Failure::runtime(format!(
            "the file listing from helper pod {} is unreadable: {e}",
            helper.name
        ))
    };
    let spool_failed = |e: std::io::Error| {
        Failure::runtime(format!(
            "writing the volume's listing to a temporary file failed: {e}; check that the temporary directory (TMPDIR, else /tmp) has free space, then retry"
        ))
    };
    let read = async {
        let mut parser = script::ListingParser::new(false);
        let mut table = script::ListingTable::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stdout.read(&mut buf).await.map_err(|e| {
                Failure::runtime(format!("reading from helper pod {}: {e}", helper.name))
            })?;
            if n == 0 {
                break;
            }
            let mut io_error = None;
            parser
                .feed(&buf[..n], &mut |s| {
                    table.push(s).map_err(|e| {
                        let m = e.to_string();
                        io_error = Some(e);
                        m
                    })
                })
                .map_err(|e| match io_error.take() {
                    Some(io) => spool_failed(io),
                    None => unreadable(e),
                })?;
        }
        parser.finish().map_err(unreadable)?;
        Ok::<_, Failure>(table)
    };
    let mut err = Vec::new();
    let mut se = (&mut stderr).take(64 << 10);
    let (table, _) = tokio::join!(read, se.read_to_end(&mut err));
    if let Some(why) = session.lost_reason() {
        return Err(Failure::runtime(why));
    }
    let st = session.finish(Duration::from_secs(60)).await?;
    if st.status.as_deref() != Some("Success") {
        return Err(Failure::runtime(format!(
            "listing the files in helper pod {} failed: {} {}",
            helper.name,
            crate::helper_session::describe_status(&st),
            String::from_utf8_lossy(&err).trim()
        )));
    }
    let table = table?;
    let table = tokio::task::spawn_blocking(move || table.finish())
        .await
        .map_err(|e| Failure::runtime(format!("sorting the volume's listing failed: {e}")))?
        .map_err(spool_failed)?;
    tracing::debug!(
        "{}: listed {} entries in {:.2}s",
        helper.name,
        table.len(),
        began.elapsed().as_secs_f64()
    );
    Ok(table)
}

/// What [`script::ROOM`] measured on the volume.
struct Room {
    /// Free bytes.
    free: u64,
    /// Bytes held by what a replace deletes: everything but the kept top-level names.
    held: u64,
    /// The helper's processors.
    cpus: usize,
}

/// Measures the volume; `None` when `df`/`du` printed something unexpected.
async fn room(helper: &HelperPod, job: &Job) -> Result<Option<Room>, Failure> {
    let keep = job.keep();
    let out = run(helper, &Step::Room { keep: &keep }).await?;
    let out = String::from_utf8_lossy(&out);
    let mut n = out.split_whitespace().map(|n| n.parse::<u64>().ok());
    Ok(match (n.next().flatten(), n.next().flatten()) {
        (Some(free), Some(held)) => Some(Room {
            free: free * 1024,
            held: held * 1024,
            cpus: n.next().flatten().map_or(1, |c| c.max(1) as usize),
        }),
        _ => None,
    })
}

/// What [`script::PREPARE`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prepared {
    /// The backup does not fit: free KiB.
    NoRoom(u64),
    /// Extract straight into the (empty) volume.
    Direct { cpus: usize },
    /// Extract into the staging directory, then swap.
    Staged { cpus: usize },
}

/// Parses [`script::PREPARE`]'s one line.
fn parse_prepared(out: &[u8]) -> Option<Prepared> {
    let out = String::from_utf8_lossy(out);
    let f: Vec<&str> = out.split_whitespace().collect();
    let cpus = || {
        f.get(2)
            .and_then(|c| c.parse().ok())
            .unwrap_or(1usize)
            .max(1)
    };
    match f.first().copied()? {
        "noroom" => Some(Prepared::NoRoom(f.get(1)?.parse().ok()?)),
        "direct" => Some(Prepared::Direct { cpus: cpus() }),
        "staged" => Some(Prepared::Staged { cpus: cpus() }),
        _ => None,
    }
}

/// Hashing sessions per restore: the node's processors, at most 4 (each is one `sha256sum` at
/// a time; `tar` and the API server's stream need their share too).
fn hashers(cpus: usize) -> usize {
    cpus.clamp(1, 4)
}

async fn steps(helper: &HelperPod, job: &Job, phase: &Mutex<Phase>) -> Result<(), Failure> {
    if job.in_place {
        return steps_in_place(helper, job, phase).await;
    }
    let keep = job.keep();
    // From here PREPARE may have created the staging directory or the direct-restore record.
    set(phase, Phase::NeedsRecovery);
    // The journal first: from here on, an interruption is rolled back by whoever comes next
    // (this pod's watchdog, the next restore, `cleanup`), a direct restore included.
    run(
        helper,
        &Step::Begin {
            run_id: &job.run_id,
            mode: job.mode,
            keep: &keep,
        },
    )
    .await?;
    let out = run(
        helper,
        &Step::Prepare {
            run_id: &job.run_id,
            need_kib: job.needed.div_ceil(1024),
            direct: true,
        },
    )
    .await?;
    let prepared = parse_prepared(&out).ok_or_else(|| {
        Failure::runtime(format!(
            "helper pod {} answered the volume check with {:?}",
            helper.name,
            String::from_utf8_lossy(&out).trim()
        ))
    })?;
    let (direct, cpus) = match prepared {
        Prepared::NoRoom(free_kib) => {
            // PREPARE changed nothing; the journal goes (a rollback of a run that did nothing).
            run(helper, &job.rollback(&keep)).await?;
            set(phase, Phase::Nothing);
            return Err(no_room(helper, job, free_kib * 1024).await);
        }
        Prepared::Direct { cpus } => (true, cpus),
        Prepared::Staged { cpus } => (false, cpus),
    };
    let dir = if direct {
        helper.mount.clone()
    } else {
        format!("{}/{}", helper.mount, script::staging_name(&job.run_id))
    };
    let extracted = extract_verified(helper, job, &dir, cpus).await?;
    if direct {
        // A volume that held nothing: the restored tree is checked where it is, and a failure
        // empties the volume again (ROLLBACK).
        mismatches(
            "the restored files do not match the manifest, so the volume was emptied again",
            &extracted.check(job, true, None)?,
        )?;
        run(
            helper,
            &Step::Commit {
                run_id: &job.run_id,
            },
        )
        .await?;
        set(phase, Phase::Done);
        return Ok(());
    }
    // The staged files' inodes and hashes by path, for the check after the swap.
    let mut carry = table::TableWriter::new(table::READ_IN_ORDER).map_err(Extracted::tmp)?;
    mismatches(
        "the extracted files do not match the manifest, so the volume was not changed",
        &extracted.check(job, true, Some(&mut carry))?,
    )?;
    drop(extracted);
    let staged = carry.finish().map_err(Extracted::tmp)?;
    // Swap.
    run(
        helper,
        &Step::Swap {
            run_id: &job.run_id,
            mode: job.mode,
            keep: &keep,
        },
    )
    .await?;
    // Verify in place: every path, type, mode, owner, size, mtime and link; file contents by
    // identity with the staged files just hashed: `rename(2)` keeps the inode and the
    // content, and the staged files were hashed and checked against the manifest a moment
    // ago, so a regular file in place takes the hash of the staged file at its path when it
    // is that same inode, and none (a difference) otherwise.
    let seen = listing(helper, &helper.mount, job).await?;
    let mut carried = table::Ahead::new(staged.iter());
    let problems = tokio::task::block_in_place(|| {
        compare(
            &mut job.entries.each(),
            &seen,
            &mut |key, s| {
                Ok(match carried.find(key).map_err(entries::reread)? {
                    Some((inode, h)) if inode == s.inode => Some(h),
                    _ => None,
                })
            },
            job.mode == Mode::Replace,
        )
    })?;
    mismatches(
        "after the swap the volume does not match the manifest",
        &problems,
    )?;
    run(
        helper,
        &Step::Commit {
            run_id: &job.run_id,
        },
    )
    .await?;
    set(phase, Phase::Done);
    Ok(())
}

/// The refusal of a volume without room for the backup next to its data, with what to do.
async fn no_room(helper: &HelperPod, job: &Job, avail: u64) -> Failure {
    // Whether deleting the content first would make room decides what to suggest; measured
    // only now, as `du` walks the whole volume.
    let held = match job.mode {
        Mode::Replace => match room(helper, job).await {
            Ok(r) => r.map(|r| r.held),
            Err(f) => return f,
        },
        Mode::Merge => None,
    };
    no_room_refusal(job, avail, held)
}

/// [`no_room`]'s message; `held`: what the content a replace deletes holds, when measured.
fn no_room_refusal(job: &Job, avail: u64, held: Option<u64>) -> Failure {
    let larger = "restore into a larger PVC (--to-pvc NAME --create-pvc)";
    let what_to_do = match held {
        Some(held) if avail + held >= job.needed => format!(
            "free space on it, {larger}, or pass --in-place to delete the current content ({}) first and extract straight into the volume, with no rollback: if that restore fails, the volume is left partly restored",
            output::human_bytes(held)
        ),
        Some(held) => format!(
            "free space on it or {larger} (--in-place would not fit either: the current content holds only {})",
            output::human_bytes(held)
        ),
        None => format!("free space on it or {larger}"),
    };
    Failure::refused(format!(
        "the volume has {} free but staging the backup needs {} next to the current data; {what_to_do}",
        output::human_bytes(avail),
        output::human_bytes(job.needed)
    ))
}

/// `--in-place` (replace mode): delete the current content (but `lost+found` when the backup
/// has none), extract straight into the volume, verify it exactly. No staging, no rollback;
/// the same steps finish what a failed attempt left.
async fn steps_in_place(
    helper: &HelperPod,
    job: &Job,
    phase: &Mutex<Phase>,
) -> Result<(), Failure> {
    // Once the delete starts there is no way back, so the room must be known, not guessed.
    let room = room(helper, job).await?.ok_or_else(|| {
        Failure::runtime(format!(
            "helper pod {} printed no readable free space (df) or usage (du) for the volume, so the in-place restore did not start",
            helper.name
        ))
    })?;
    if room.free + room.held < job.needed {
        return Err(no_room_in_place(job, &room));
    }
    set(phase, Phase::PartlyRestored);
    let keep = job.keep();
    run(helper, &Step::Clear { keep: &keep }).await?;
    let extracted = extract_verified(helper, job, &helper.mount, room.cpus).await?;
    let problems = extracted.check(job, true, None)?;
    mismatches(
        "the files restored in place do not match the manifest",
        &problems,
    )?;
    // An in-place run has no journal to commit (nothing to roll back to): what it left of its
    // own (the end-of-extraction marker) is deleted as RECOVER deletes a finished run's.
    run(
        helper,
        &Step::Recover {
            only: Some(&job.run_id),
        },
    )
    .await?;
    set(phase, Phase::Done);
    Ok(())
}

fn no_room_in_place(job: &Job, room: &Room) -> Failure {
    Failure::refused(format!(
        "the volume has {} free and its current content holds {}, but the backup needs {}: it does not fit even in place; restore into a larger PVC (--to-pvc NAME --create-pvc --size Q)",
        output::human_bytes(room.free),
        output::human_bytes(room.held),
        output::human_bytes(job.needed)
    ))
}

/// Before a user is asked to confirm a restore into an existing PVC: measures the volume in a
/// helper pod ([`script::ROOM`], which changes nothing) and refuses exactly as the restore
/// would, so that nobody types the PVC's name for a restore that cannot fit. A volume whose
/// free space cannot be read is left to the restore's own check.
pub async fn check_room(
    client: &kube::Client,
    ex: &Execution,
    registry: &Registry,
) -> Result<(), Failure> {
    let job = Job::of(ex);
    let pod = admissible_pod(&ex.request("-room")?, ex.namespace_obj.as_ref())?;
    let mut helper = HelperPod::launch(client, pod, job.timeout, registry).await?;
    let measured = room(&helper, &job).await;
    helper.delete().await;
    let Some(room) = measured? else {
        return Ok(());
    };
    if job.in_place {
        if room.free + room.held < job.needed {
            return Err(no_room_in_place(&job, &room));
        }
    } else if room.free < job.needed {
        let held = (job.mode == Mode::Replace).then_some(room.held);
        return Err(no_room_refusal(&job, room.free, held));
    }
    Ok(())
}

/// Extracts the archive into `dir` while the helper pod hashes the files `tar` has finished
/// (`hashers(cpus)` sessions of [`script::HASH`], fed chunk by chunk in the archive's order as
/// it streams, see [`HashFeed`]), restores the owners of symlinks, and lists `dir`: every
/// entry as it is on the volume, and regular files' sha256 of their content there, each by
/// path on disk ([`Extracted`]). A file whose in-flight hash does not match the manifest is
/// hashed once more now that `tar` is done (a member order other than `tar -c`'s can open a
/// gate early), so only what is on the volume decides.
async fn extract_verified(
    helper: &HelperPod,
    job: &Job,
    dir: &str,
    cpus: usize,
) -> Result<Extracted, Failure> {
    let m = &job.loc.manifest;
    let done = script::extracted_marker(&helper.mount, &job.run_id);
    // No more sessions than chunks.
    let files = job.entries.files as usize;
    let sessions = hashers(cpus).min(files.div_ceil(script::HASH_CHUNK_FILES));
    let (to, from): (Vec<_>, Vec<_>) = (0..sessions)
        .map(|_| tokio::sync::mpsc::channel(HASH_CHUNKS_QUEUED))
        .unzip();
    let feed = HashFeed {
        chunks: script::HashChunks::new(sessions),
        done: done.clone(),
        to,
    };
    let hashes = Mutex::new(Spool::<String>::with_budget(table::SPOOL_BYTES));
    let hashing = futures::future::try_join_all(
        from.into_iter()
            .map(|rx| hash(helper, dir, &done, rx, &hashes)),
    );
    let step = Step::Extract {
        dir,
        done: &done,
        bytes: script::padded(m.uncompressed_size),
    };
    let extraction = extract(helper, job, &step, feed);
    tokio::pin!(hashing, extraction);
    let mut hashed = None;
    // The extraction decides: when it fails, the hashers (which may wait for a file that never
    // comes) are dropped with it.
    let began = std::time::Instant::now();
    let extracted = loop {
        tokio::select! {
            r = &mut extraction => break r,
            h = &mut hashing, if hashed.is_none() => hashed = Some(h),
        }
    };
    extracted?;
    tracing::debug!(
        "{}: extracted in {:.2}s",
        helper.name,
        began.elapsed().as_secs_f64()
    );
    match hashed {
        Some(h) => h,
        None => hashing.await,
    }?;
    tracing::debug!(
        "{}: hashed in {:.2}s ({sessions} sessions)",
        helper.name,
        began.elapsed().as_secs_f64(),
    );
    // (taken: the finished sessions still borrow it)
    let hashes = std::mem::take(&mut *hashes.lock().unwrap_or_else(|p| p.into_inner()));
    // The hashes by path, and the files whose hash is not the manifest's (side by side with
    // the entries, in path order).
    let (hashes, again) = tokio::task::block_in_place(|| -> Result<_, Failure> {
        let mut w = table::TableWriter::new(table::READ_IN_ORDER).map_err(Extracted::tmp)?;
        let mut again = Vec::new();
        let mut sorted = hashes.finish().map_err(Extracted::tmp)?.peekable();
        for e in job.entries.each() {
            let (key, e) = e?;
            if e.kind != crate::archive::EntryKind::File {
                continue;
            }
            let mut got = None;
            while let Some(h) = sorted.next_if(|h| !matches!(h, Ok(h) if h.key > key)) {
                let h = h.map_err(Extracted::tmp)?;
                if h.key == key {
                    w.push(&h.key, &h.item).map_err(Extracted::tmp)?;
                    got = Some(h.item);
                }
            }
            if got != e.sha256 {
                again.push(e);
            }
        }
        Ok((w.finish().map_err(Extracted::tmp)?, again))
    })?;
    fix_symlink_owners(helper, job, dir).await?;
    let mut rehashed = std::collections::HashMap::new();
    if !again.is_empty() {
        let chunks = script::hash_after_extraction(&again, &done);
        let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
        for chunk in chunks {
            let _ = tx.try_send(chunk);
        }
        drop(tx);
        let again = Mutex::new(Spool::<String>::default());
        hash(helper, dir, &done, rx, &again).await?;
        let again = again.into_inner().unwrap_or_else(|p| p.into_inner());
        for h in again.finish().map_err(Extracted::tmp)? {
            let h = h.map_err(Extracted::tmp)?;
            rehashed.insert(h.key, h.item);
        }
    }
    let seen = listing(helper, dir, job).await?;
    Ok(Extracted {
        seen,
        hashes,
        rehashed,
    })
}

/// What [`extract_verified`] found on the volume, by path.
struct Extracted {
    seen: table::Table<script::Seen>,
    /// The regular files' hashes as the sessions printed them while `tar` ran.
    hashes: table::Table<String>,
    /// The files hashed again after the extraction (few: see [`extract_verified`]).
    rehashed: std::collections::HashMap<Vec<u8>, String>,
}

impl Extracted {
    fn tmp(e: std::io::Error) -> Failure {
        Failure::runtime(format!(
            "a temporary file of the restore failed: {e}; check that the temporary directory (TMPDIR, else /tmp) has free space, then retry"
        ))
    }

    /// The differences from the manifest ([`compare`]); `carry` gets every regular file's
    /// inode and hash by path.
    fn check(
        &self,
        job: &Job,
        exact: bool,
        mut carry: Option<&mut table::TableWriter<(u64, String)>>,
    ) -> Result<Vec<String>, Failure> {
        let mut hashes = table::Ahead::new(self.hashes.iter());
        tokio::task::block_in_place(|| {
            compare(
                &mut job.entries.each(),
                &self.seen,
                &mut |key, s| {
                    let h = match self.rehashed.get(key) {
                        Some(h) => Some(h.clone()),
                        None => hashes.find(key).map_err(Extracted::tmp)?,
                    };
                    if let (Some(w), Some(h)) = (carry.as_deref_mut(), &h) {
                        w.push(key, &(s.inode, h.clone())).map_err(Extracted::tmp)?;
                    }
                    Ok(h)
                },
                exact,
            )
        })
    }
}

/// Chunks queued per hashing session while it is busy: when the hashing falls that far
/// behind `tar`, the stream waits for it (memory stays bounded; `tar` has by then long
/// written the files the oldest queued chunk waits for, so the wait always ends).
const HASH_CHUNKS_QUEUED: usize = 16;

/// Cuts the regular files into [`script::HASH`] chunks while the archive streams, in the
/// archive's order ([`script::HashChunks`]), and hands each to its session. Told of every
/// member before `tar` sees it (by [`gate::stream_checked`]), so a chunk reaches its
/// session while `tar` is still writing the files before its gate.
struct HashFeed {
    chunks: script::HashChunks,
    done: String,
    to: Vec<tokio::sync::mpsc::Sender<script::HashChunk>>,
}

impl HashFeed {
    fn member(&mut self, e: &crate::archive::EntryRecord) {
        if let Some(c) = self.chunks.member(e) {
            self.send(c);
        }
    }

    /// The end of the stream: the last chunk goes (gated by the end of the extraction), and
    /// the sessions' input ends.
    fn finish(mut self) {
        if let Some(c) = self.chunks.finish(&self.done) {
            self.send(c);
        }
    }

    /// Called from the feeder's blocking thread.
    fn send(&self, c: script::HashChunk) {
        // A session that is gone reports its own failure.
        if let Some(to) = self.to.get(c.shard) {
            let _ = to.blocking_send(c);
        }
    }
}

/// One [`script::HASH`] session: the chunks `from` sends on its stdin; the hashes it prints,
/// parsed as they arrive, go to `into` by path.
async fn hash(
    helper: &HelperPod,
    dir: &str,
    done: &str,
    mut from: tokio::sync::mpsc::Receiver<script::HashChunk>,
    into: &Mutex<Spool<String>>,
) -> Result<(), Failure> {
    use tokio::io::AsyncWriteExt;
    let argv = Step::Hash { dir, done }.argv(&in_pod(helper));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // Silent while it waits for `tar`: no stall limit on its output (the extraction has one).
    let mut session = helper
        .session(
            &argv,
            true,
            Watch {
                stdin_stall: None,
                stdout_stall: None,
            },
        )
        .await?;
    let mut stdin = session.stdin()?;
    let (mut stdout, mut stderr) = session.stdio()?;
    let mut err = Vec::new();
    // The names sent and not yet answered, in order: they say where each output line ends.
    let names = Mutex::new(std::collections::VecDeque::new());
    let write = async {
        while let Some(c) = from.recv().await {
            names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(c.names);
            stdin.write_all(&c.stdin).await?;
        }
        stdin.shutdown().await
    };
    let read = async {
        let mut parser = script::HashParser::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stdout.read(&mut buf).await.map_err(|e| e.to_string())?;
            let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
            if n == 0 {
                return parser.finish(&names);
            }
            let mut into = into.lock().unwrap_or_else(|p| p.into_inner());
            parser.feed(&buf[..n], &mut names, &mut |key, h| {
                into.push(key, &h).map_err(|e| {
                    format!("writing them to a temporary file failed: {e}; check that the temporary directory (TMPDIR, else /tmp) has free space")
                })
            })?;
        }
    };
    let mut stderr = (&mut stderr).take(64 << 10);
    let (w, o, _) = tokio::join!(write, read, stderr.read_to_end(&mut err));
    let st = session.finish(Duration::from_secs(60)).await?;
    if st.status.as_deref() != Some("Success") {
        return Err(Failure::runtime(format!(
            "hashing the restored files in helper pod {} failed: {} {}",
            helper.name,
            crate::helper_session::describe_status(&st),
            String::from_utf8_lossy(&err).trim()
        )));
    }
    w.map_err(|e| {
        Failure::runtime(format!(
            "the hashing session in helper pod {} broke: {e}",
            helper.name
        ))
    })?;
    o.map_err(|e| {
        Failure::runtime(format!(
            "the file hashes from helper pod {} are unreadable: {e}",
            helper.name
        ))
    })
}

/// Runs `step` (a `tar -x` into some directory) with the archive, decompressed here, on its
/// stdin.
async fn extract(
    helper: &HelperPod,
    job: &Job,
    step: &Step<'_>,
    hashing: HashFeed,
) -> Result<(), Failure> {
    let argv = step.argv(&in_pod(helper));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut session = helper
        .session(
            &argv,
            true,
            Watch {
                stdin_stall: Some(job.stall),
                stdout_stall: None,
            },
        )
        .await?;
    let stdin = session.stdin()?;
    let (mut stdout, mut stderr) = session.stdio()?;
    let (loc, entries) = (job.loc.clone(), job.entries.clone());
    let feeder = tokio::task::spawn_blocking(move || feed(&loc, &entries, stdin, hashing));
    let drain = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut so = (&mut stdout).take(64 << 10);
        let mut se = (&mut stderr).take(64 << 10);
        let _ = tokio::join!(so.read_to_end(&mut out), se.read_to_end(&mut err));
        String::from_utf8_lossy(&err).into_owned()
    });
    let fed = feeder
        .await
        .map_err(|e| Failure::runtime(format!("the archive feeder failed: {e}")))?;
    // A damaged archive explains a failed tar best; a lost session explains a broken feed
    // best.
    if let Err(f) = &fed {
        if f.kind == ExitKind::Integrity {
            // `tar` got an end of input: wait (bounded) until it has ended, so that it does not
            // write on while the volume is rolled back.
            let _ = session.finish(job.stall).await;
            return Err(f.clone());
        }
        if let Some(why) = session.lost_reason() {
            return Err(Failure::runtime(why));
        }
    }
    let errors = drain.await.unwrap_or_default();
    let st = session.finish(job.stall).await?;
    if st.status.as_deref() != Some("Success") {
        return Err(Failure::runtime(format!(
            "tar -x in helper pod {} failed: {} {}",
            helper.name,
            crate::helper_session::describe_status(&st),
            errors.trim()
        )));
    }
    fed?;
    Ok(())
}

/// Ownership of symlinks under `dir` (busybox tar leaves them to root): `chown -h` in batches
/// of 500, from the entries in path order. Names that are not UTF-8 cannot travel as exec
/// arguments and are skipped (the in-pod verification then reports them).
async fn fix_symlink_owners(helper: &HelperPod, job: &Job, dir: &str) -> Result<(), Failure> {
    let mut entries = job.entries.each();
    loop {
        let owners = tokio::task::block_in_place(|| -> Result<Vec<(String, String)>, Failure> {
            let mut owners = Vec::new();
            for e in entries.by_ref() {
                let (key, e) = e?;
                if e.kind == crate::archive::EntryKind::Symlink
                    && (e.uid != 0 || e.gid != 0)
                    && e.path_hex.is_none()
                {
                    owners.push((
                        format!("{}:{}", e.uid, e.gid),
                        format!("./{}", String::from_utf8_lossy(&key)),
                    ));
                    if owners.len() == 500 {
                        break;
                    }
                }
            }
            Ok(owners)
        })?;
        if owners.is_empty() {
            return Ok(());
        }
        run(
            helper,
            &Step::FixSymlinks {
                dir,
                owners: &owners,
            },
        )
        .await?;
    }
}

/// Rolls the volume back in a fresh helper pod (the first one died or is unreachable).
async fn recover(
    client: &kube::Client,
    ex: &Execution,
    job: &Job,
    registry: &Registry,
    ghost: &Mutex<Option<String>>,
) -> Result<(), Failure> {
    let manual = || {
        format!(
            "the volume may hold a partial restore; run `kubectl pvbackup restore` again, or in a pod mounting it run: cd /data; ls -a (entries of run {} are named .pvbackup-*-{})",
            job.run_id, job.run_id
        )
    };
    let last_pod = ghost.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(g) = last_pod {
        if !pod_gone(client, &ex.ns, &g).await {
            return Err(Failure::runtime(format!(
                "helper pod {}/{g} could not be confirmed gone, so no rollback was attempted next to it; {}",
                ex.ns,
                manual()
            )));
        }
    }
    let mut last = String::new();
    for attempt in 0..3 {
        let req = ex
            .request(&format!("-rb{attempt}"))
            .map_err(|f| Failure::runtime(format!("{}; {}", f.message, manual())))?;
        match HelperPod::launch(
            client,
            crate::helper_pod::build_helper_pod(&req),
            job.timeout,
            registry,
        )
        .await
        {
            Ok(mut h) => {
                let r = run(
                    &h,
                    &Step::Recover {
                        only: Some(&job.run_id),
                    },
                )
                .await;
                h.delete().await;
                match r {
                    Ok(_) => return Ok(()),
                    Err(f) => last = f.message,
                }
            }
            Err(f) => last = f.message,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(Failure::runtime(format!(
        "rolling back failed ({last}); {}",
        manual()
    )))
}

/// Tells the user what [`script::RECOVER`] found and did on the volume (`own`: this run's
/// id; its own leftovers of a failed attempt go unmentioned).
fn tell_recovered(label: &str, done: &[Recovered], own: &str) {
    for r in done {
        match r {
            Recovered::RolledBack { run_id } if run_id != own => eprintln!(
                "{label}: rolled back an interrupted restore (run {run_id}) found on the volume: it holds what it held before that restore"
            ),
            Recovered::Emptied { run_id } if run_id != own => eprintln!(
                "{label}: rolled back an interrupted restore (run {run_id}) found on the volume: it was restoring into the empty volume, which is empty again"
            ),
            Recovered::Removed { name } if !name.ends_with(own) => {
                eprintln!("{label}: removed {name}, left on the volume by an earlier restore")
            }
            _ => {}
        }
    }
}

/// Helper pods that earlier restores of this PVC left behind (their client was killed or cut
/// off) go before this run starts, so that no two runs ever work on the volume at once:
/// a finished one is deleted; a running one is deleted once it is clear that its client is
/// gone (the lease not renewed for four renewal periods); one whose client keeps renewing is
/// another restore in progress, and this one is refused.
async fn take_over(
    client: &kube::Client,
    ex: &Execution,
    registry: &Registry,
) -> Result<(), Failure> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &ex.ns);
    let lp = kube::api::ListParams::default().labels(&format!(
        "{LABEL_MANAGED_BY}={APP_NAME},{LABEL_PURPOSE}={}",
        Purpose::Restore
    ));
    let pods = tokio::time::timeout(Duration::from_secs(30), api.list(&lp))
        .await
        .map_err(|_| {
            Failure::runtime(format!(
                "listing helper pods in namespace {}: no answer from the API server in 30s",
                ex.ns
            ))
        })?
        .map_err(|e| {
            crate::connect::explain(&format!("listing helper pods in namespace {}", ex.ns), &e)
        })?
        .items;
    let ours = registry.pending();
    for p in pods {
        let annotations = p.metadata.annotations.clone().unwrap_or_default();
        if annotations.get(LABEL_PVC) != Some(&ex.name) {
            continue;
        }
        let name = p.metadata.name.clone().unwrap_or_default();
        if ours.iter().any(|(ns, n)| ns == &ex.ns && n == &name) {
            continue;
        }
        let run = annotations.get(LABEL_RUN_ID).cloned().unwrap_or_default();
        let running = |p: &Pod| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        };
        if running(&p) {
            let lease = lease_of(&p);
            let abandoned = (renewal_period(lease) * 4).min(lease);
            let run_dir = crate::helper_pod::mount_path(&p, TMP_VOLUME)
                .unwrap_or_else(|| TMP_MOUNT_PATH.to_string());
            let age_step = Step::LeaseAge.argv(&InPod {
                mount: "",
                run: &run_dir,
            });
            let deadline = tokio::time::Instant::now() + lease + Duration::from_secs(30);
            let mut last_age = None;
            loop {
                let current = api.get_opt(&name).await.ok().flatten();
                if !current.as_ref().is_some_and(running) {
                    break;
                }
                let age = run_in(&api, &name, &age_step)
                    .await
                    .ok()
                    .and_then(|o| String::from_utf8_lossy(&o).trim().parse::<u64>().ok());
                if age.is_some_and(|a| a >= abandoned.as_secs()) {
                    break;
                }
                last_age = age.or(last_age);
                if tokio::time::Instant::now() >= deadline {
                    return Err(Failure::refused(format!(
                        "another restore of PVC {} is running in helper pod {name} (run {run}; its client renewed its lease {}s ago); wait for it to finish, or if its client is gone for good, remove it with `kubectl pvbackup cleanup -n {}`",
                        ex.name,
                        last_age.map_or("a few".to_string(), |a| a.to_string()),
                        ex.ns
                    )));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            eprintln!(
                "{}/{}: helper pod {name} of an interrupted restore (run {run}) is left without its client; deleting it",
                ex.ns, ex.name
            );
        } else {
            eprintln!(
                "{}/{}: deleting helper pod {name}, left by an interrupted restore (run {run})",
                ex.ns, ex.name
            );
        }
        if !delete_and_wait(&api, &name, Duration::from_secs(60)).await {
            return Err(Failure::runtime(format!(
                "helper pod {}/{name} of an earlier restore could not be confirmed gone, so this restore did not start next to it; delete it (kubectl delete pod -n {} {name}), then run the restore again",
                ex.ns, ex.ns
            )));
        }
    }
    Ok(())
}

/// What `cleanup` found on one volume.
pub struct VolumeRecovery {
    pub namespace: String,
    pub pvc: String,
    pub recovered: Vec<Recovered>,
}

/// Finishes what interrupted restores left on PVC `ns/pvc`, in a fresh helper pod built like
/// `left` (a helper pod of such a restore, already deleted: same image, user, node and
/// tolerations, so it can mount the volume where it is attached).
pub async fn recover_volume(
    client: &kube::Client,
    ns: &str,
    pvc: &str,
    left: &Pod,
    pod_timeout: Duration,
) -> Result<VolumeRecovery, Failure> {
    let spec = left.spec.clone().unwrap_or_default();
    let mut req = HelperPodRequest::new(
        ns,
        pvc,
        format!("cleanup-{}", new_run_id()),
        Purpose::Restore,
    );
    if let Some(image) = spec.containers.first().and_then(|c| c.image.clone()) {
        req.image = image;
    }
    req.run_as_user = spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .filter(|u| *u != 0);
    req.node = spec.node_name.clone();
    req.tolerations = spec.tolerations.clone().unwrap_or_default();
    let registry = Registry::default();
    let mut helper = HelperPod::launch(
        client,
        crate::helper_pod::build_helper_pod(&req),
        pod_timeout,
        &registry,
    )
    .await?;
    let out = run(&helper, &Step::Recover { only: None }).await;
    helper.delete().await;
    registry.delete_all(client).await;
    let out = out?;
    Ok(VolumeRecovery {
        namespace: ns.to_string(),
        pvc: pvc.to_string(),
        recovered: script::parse_recovered(&String::from_utf8_lossy(&out)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_answers_parse() {
        assert_eq!(
            parse_prepared(b"noroom 1234\n"),
            Some(Prepared::NoRoom(1234))
        );
        assert_eq!(
            parse_prepared(b"direct 99 8\n"),
            Some(Prepared::Direct { cpus: 8 })
        );
        // `df` unreadable (`?`), `nproc` missing or odd: one CPU.
        assert_eq!(
            parse_prepared(b"staged ? x\n"),
            Some(Prepared::Staged { cpus: 1 })
        );
        assert_eq!(
            parse_prepared(b"staged 5 0"),
            Some(Prepared::Staged { cpus: 1 })
        );
        assert_eq!(parse_prepared(b"noroom ?"), None);
        assert_eq!(parse_prepared(b""), None);
        assert_eq!(hashers(1), 1);
        assert_eq!(hashers(64), 4);
    }
}

//! `create --streams N`: one volume copied over several exec streams at once, stored as one
//! archive.
//!
//! # Why
//! Every exec is its own TCP connection to the API server, proxied to the kubelet: over a long
//! path one stream gets window/RTT, whatever the link can carry (kubesim's link model,
//! tests/kubesim/src/faults.rs `SharedLink`). N streams get up to N times that, until the link
//! itself is full.
//!
//! # How
//! * **Choice** ([`choose`]): `--streams N`, or `auto`: one stream when the client runs in the
//!   cluster (connect.rs) or the volume is below 64 MiB; otherwise one exec streams 8 MiB of
//!   zeros from the helper pod ([`probe`], next to the listing before the copy) and the
//!   measured rate decides: a stream that carries the client's pace ([`CLIENT_PACE`]) is one
//!   stream and no plan (on a fast link the listings and the spools cost more than extra
//!   streams gain); a slower one gets as many streams as make up that pace and one spare,
//!   within what the volume's size allows. The choice and its reason are shown (progress, `-v`, `-o json`).
//! * **Plan** ([`plan`]): the volume is cut into pieces (top-level entries, and the entries of the
//!   largest directories, expanded until no directory piece holds more than 1/(2N) of the
//!   volume) with `du`, and the pieces are dealt to N in-pod tars, largest first to the
//!   least-loaded (balanced by size). A structure tar carries the root and every expanded
//!   directory itself (`--no-recursion`), so each entry is in exactly one tar. The pieces that
//!   hold hard-linked files go to one tar together (a link split from its target would be
//!   restored as a second copy). Directories whose entries are not UTF-8 or hold a newline
//!   (they cannot be named on an exec command line) stay whole; a failed listing, or more
//!   hard links than [`HARD_LINKS`] lists, makes the copy one tar, as without `--streams`.
//! * **Merge** ([`start`]): each tar's output is spooled to temporary segment files as it comes;
//!   the archive is one tar stream made of whole members taken from whichever spool holds a
//!   complete one next. Every member reaches the archive, the manifest and the hashes exactly
//!   as one tar would have produced it: `verify` and `restore` read the archive as before, and
//!   the manifest schema does not change. Memory stays flat; the temporary disk holds what the
//!   archive writer has not taken yet (segments it has read are deleted), bounded by
//!   [`UNREAD_LIMIT`] plus the members still arriving.
//! * **Failure**: any stream that fails, stalls or ends inside a member fails the whole attempt
//!   (the archive writer drops its partial file); the retry starts every stream again.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::exit::Failure;
use crate::helper_session::{HelperPod, Session, Watch};

/// Where the helper pod mounts the volume (backup.rs streams `tar -C /data` as well).
const MOUNT: &str = "/data";

/// How many streams `create` uses for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamCount {
    /// Chosen per volume from where the client runs, the volume's size and the measured link
    /// ([`choose`]).
    #[default]
    Auto,
    Fixed(usize),
}

/// Below this a volume is one stream: the plan's listings and the extra sessions cost more
/// than a second window gains.
const AUTO_MIN_BYTES: u64 = 64 << 20;
/// `auto` uses at most one stream per this many bytes, up to [`AUTO_MAX`].
const AUTO_BYTES_PER_STREAM: u64 = 32 << 20;
/// `auto`'s most streams: with a per-stream cap of 40 MB/s, four fill a 160 MB/s link; more
/// only add sessions once the link is full.
const AUTO_MAX: usize = 4;

/// The most streams the size of a volume of `bytes` (as `du` counts it) is worth: one below
/// 64 MiB, then one per 32 MiB up to four. Unknown size: one.
pub fn streams_for_size(bytes: Option<u64>) -> usize {
    match bytes {
        Some(b) if b >= AUTO_MIN_BYTES => ((b / AUTO_BYTES_PER_STREAM) as usize).clamp(1, AUTO_MAX),
        _ => 1,
    }
}

/// What one stream's data path in this client takes in (TLS, WebSocket frames, the tar walk
/// with per-file sha256, zstd, the archive's sha256, the write): measured with `--streams 1`
/// on an unthrottled link, ~125 MB/s for the benchmark's mixed set (benches/results/link.md,
/// release build); 100 MB/s leaves room for a busier client. A stream that carries this much
/// already keeps the client busy: more streams only add the plan's listings and the spools.
/// A slower stream leaves the client waiting, and `auto` adds streams until together they
/// could carry this much.
pub const CLIENT_PACE: f64 = 100e6;

/// Why `create` used the streams it used (shown in the progress line, `-v` and `-o json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// `--streams N`.
    Fixed,
    /// `auto` inside the cluster (a schedule's CronJob pod): the API server is on the
    /// cluster network, so one stream, and no plan.
    InCluster,
    /// `auto` for a volume below 64 MiB (or of unknown size): one stream, no measurement.
    SmallVolume,
    /// `auto`: one stream carried at least [`CLIENT_PACE`]; more would not be faster.
    FastLink,
    /// `auto`: one stream carried less than [`CLIENT_PACE`]; enough streams to make it up.
    SlowLink,
    /// `auto`: the link could not be measured; the streams follow the volume's size.
    NotMeasured,
}

/// The streams of one copy and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Choice {
    /// The exec streams that carried the volume's files (the plan may fall back to one tar:
    /// a volume that cannot be split, see [`plan`]).
    pub streams: usize,
    pub reason: Reason,
    /// What one probing stream carried from the helper pod, bytes/s ([`probe`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_bytes_per_second: Option<u64>,
    /// The streams asked for, when the plan could not split the volume into as many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wanted: Option<usize>,
}

/// Whether `auto` measures the link for a volume of `bytes`: only where more than one stream
/// could be chosen, so that small volumes and in-cluster runs pay nothing.
pub fn needs_probe(want: StreamCount, in_cluster: bool, bytes: Option<u64>) -> bool {
    want == StreamCount::Auto && !in_cluster && streams_for_size(bytes) > 1
}

/// How many streams to use, and why. `measured` is the probe's outcome (bytes/s per stream),
/// when [`needs_probe`] asked for one. Pure: unit-tested below.
pub fn choose(
    want: StreamCount,
    in_cluster: bool,
    bytes: Option<u64>,
    measured: Option<Result<f64, String>>,
) -> Choice {
    let choice = |streams, reason, rate: Option<f64>| Choice {
        streams,
        reason,
        measured_bytes_per_second: rate.map(|r| r as u64),
        wanted: None,
    };
    let by_size = streams_for_size(bytes);
    match want {
        StreamCount::Fixed(n) => choice(n.max(1), Reason::Fixed, None),
        StreamCount::Auto if in_cluster => choice(1, Reason::InCluster, None),
        StreamCount::Auto if by_size < 2 => choice(1, Reason::SmallVolume, None),
        StreamCount::Auto => match measured {
            Some(Ok(rate)) if rate >= CLIENT_PACE => choice(1, Reason::FastLink, Some(rate)),
            Some(Ok(rate)) => {
                // Enough streams to make up the client's pace, and one spare: the probe sees
                // one stream's window, not a pipe the streams share, and the tars, balanced
                // by size, do not end together; the last one runs alone at one stream's rate
                // (benches/results/link.md), and one more stream shortens that tail.
                let n = (CLIENT_PACE / rate.max(1.0)).ceil() as usize + 1;
                choice(n.clamp(2, by_size), Reason::SlowLink, Some(rate))
            }
            _ => choice(by_size, Reason::NotMeasured, None),
        },
    }
}

impl Choice {
    /// The choice in words, for the progress line and `-v`.
    pub fn describe(&self) -> String {
        let rate = || {
            self.measured_bytes_per_second
                .map(|r| format!("{:.0} MB/s", r as f64 / 1e6))
                .unwrap_or_default()
        };
        let why = match self.reason {
            Reason::Fixed => "--streams".to_string(),
            Reason::InCluster => "auto: running in the cluster".to_string(),
            Reason::SmallVolume => "auto: volume below 64 MiB".to_string(),
            Reason::FastLink => format!("auto: one stream carries {}", rate()),
            Reason::SlowLink => format!(
                "auto: one stream carries {}, below the client's {:.0} MB/s",
                rate(),
                CLIENT_PACE / 1e6
            ),
            Reason::NotMeasured => "auto: link not measured, by volume size".to_string(),
        };
        let what = match (self.streams, self.wanted) {
            (1, None) => "one exec stream".to_string(),
            (n, None) => format!("{n} exec streams"),
            (n, Some(w)) => format!(
                "{n} exec stream{} ({w} wanted; the volume could not be split)",
                if n == 1 { "" } else { "s" }
            ),
        };
        format!("{what} ({why})")
    }
}

/// What the probe streams: 8 MiB of zeros, which no exec stream compresses (neither SPDY nor
/// the WebSocket protocol of `pods/exec` negotiates compression), enough to see a rate past
/// the first packets. `dd` writes them in 64 KiB blocks, as large as a pipe takes at once,
/// the way busybox `tar` hands file data over (`sendfile`, seen with strace); busybox
/// `head -c` writes 4 KiB at a time, and the cost of that many small messages (API server,
/// kubelet, client) would be measured instead of the link. `dd` and `/dev/zero` are in every
/// busybox.
const PROBE_ARGV: [&str; 5] = ["dd", "if=/dev/zero", "bs=65536", "count=128", "status=none"];
/// The probe stops reading this long after its first byte, with what arrived so far: on a
/// slow link 8 MiB would take seconds, and a fifth of a second of it tells the rate.
const PROBE_TIME: Duration = Duration::from_millis(200);
/// The whole probe, exec included, at most: a stuck exec leaves the choice to the size.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Measures what one exec stream carries from the helper pod to this client, bytes/s: the
/// bytes after the first read over the time since it (so the exec's setup does not count).
/// Runs next to the other pre-copy work of the attempt (backup.rs), so on a fast link it
/// costs nothing visible; on a slow one at most [`PROBE_TIME`] of the shared link.
pub async fn probe(helper: &HelperPod) -> Result<f64, String> {
    let measure = async {
        let mut session = helper
            .session(&PROBE_ARGV, false, Watch::default())
            .await
            .map_err(|f| f.message)?;
        let (mut stdout, _stderr) = session.stdio().map_err(|f| f.message)?;
        let mut buf = vec![0u8; 256 << 10];
        let mut first = None;
        let mut after_first = 0u64;
        loop {
            let n = stdout.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            match first {
                None => first = Some(std::time::Instant::now()),
                Some(t) => {
                    after_first += n as u64;
                    if t.elapsed() >= PROBE_TIME {
                        break;
                    }
                }
            }
        }
        // Dropping the session ends the exec: the rest of a cut probe goes nowhere.
        let secs = first.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        if after_first == 0 || secs <= 0.0 {
            return Err("the probe stream carried too little to measure".to_string());
        }
        Ok(after_first as f64 / secs)
    };
    tokio::time::timeout(PROBE_LIMIT, measure)
        .await
        .map_err(|_| format!("the probe took longer than {PROBE_LIMIT:?}"))?
}

/// What the in-pod tars of one copy archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One `tar -c .` of the whole volume.
    Whole,
    /// `structure`: the root and the expanded directories, without their contents; `parts`:
    /// one list of pieces (archived recursively) per further stream.
    Split {
        structure: Vec<String>,
        parts: Vec<Vec<String>>,
    },
}

impl Plan {
    /// The in-pod commands, one per exec stream.
    pub fn argvs(&self) -> Vec<Vec<String>> {
        let tar = |extra: &[&str], paths: &[String]| -> Vec<String> {
            ["tar", "-cf", "-", "-C", MOUNT]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .chain(paths.iter().cloned())
                .collect()
        };
        match self {
            Plan::Whole => vec![tar(&[], &[".".to_string()])],
            Plan::Split { structure, parts } => {
                std::iter::once(tar(&["--no-recursion", "--"], structure))
                    .chain(parts.iter().map(|p| tar(&["--"], p)))
                    .collect()
            }
        }
    }

    /// How many exec streams carry file data.
    pub fn streams(&self) -> usize {
        match self {
            Plan::Whole => 1,
            Plan::Split { parts, .. } => parts.len(),
        }
    }
}

/// An entry of the volume as a piece of the plan: its path as tar names it (`./a/b`), its
/// size in KiB (`du -k`) and whether it is a directory that could be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub path: String,
    pub kib: u64,
    pub dir: bool,
}

/// `sh -c LIST sh MOUNT DIR`: the entries directly in DIR: the non-directories NUL-terminated,
/// an empty name, the directories NUL-terminated, an empty name, then `du -a -k -d 1 DIR`'s
/// lines (`KIB<TAB>PATH`). Names come from `find`, exact; sizes are looked up by name, so a
/// name with a newline (which would break `du`'s lines) is seen and makes DIR unexpandable.
/// A directory of more than [`LIST_MAX`] entries prints only `many` (it could not be named on
/// a command line anyway), so the listing stays small whatever the volume holds.
pub const LIST: &str = r#"
cd "$1" || exit 1
n=$(find "$2" -mindepth 1 -maxdepth 1 | head -n 2049 | wc -l)
[ "$n" -gt 2048 ] && { echo many; exit 0; }
find "$2" -mindepth 1 -maxdepth 1 ! -type d -print0 || exit 1
printf '\0'
find "$2" -mindepth 1 -maxdepth 1 -type d -print0 || exit 1
printf '\0'
du -a -k -d 1 "$2" || exit 1
"#;

/// [`LIST`]'s most entries of a directory.
pub const LIST_MAX: usize = 2048;

/// `sh -c HARD_LINKS sh MOUNT`: the non-directories with more than one link, NUL-terminated,
/// at most [`HARD_LINKS_MAX`] bytes of them.
pub const HARD_LINKS: &str = r#"
cd "$1" || exit 1
find . -xdev ! -type d -links +1 -print0 | head -c 1048576
"#;

/// [`HARD_LINKS`]'s cap: a listing this long may be cut, and the copy is one tar.
pub const HARD_LINKS_MAX: usize = 1 << 20;

/// The children of `dir` from [`LIST`]'s output, or None when they cannot all be named on a
/// command line (not UTF-8, a newline in the name) or the output is not what LIST prints.
pub fn parse_children(dir: &str, out: &[u8]) -> Option<Vec<Piece>> {
    // NUL-terminated names, an empty one ending each list.
    let mut rest = out;
    let mut lists: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let end = rest.iter().position(|b| *b == 0)?;
            let name = &rest[..end];
            rest = &rest[end + 1..];
            if name.is_empty() {
                break;
            }
            let name = std::str::from_utf8(name).ok()?;
            if name.contains('\n') || !name.starts_with(dir) {
                return None;
            }
            list.push(name.to_string());
        }
    }
    let du = std::str::from_utf8(rest).ok()?;
    let sizes: HashMap<&str, u64> = du
        .lines()
        .filter_map(|l| {
            let (kib, path) = l.split_once('\t')?;
            Some((path, kib.parse().ok()?))
        })
        .collect();
    let [files, dirs] = lists;
    Some(
        files
            .into_iter()
            .map(|p| (p, false))
            .chain(dirs.into_iter().map(|p| (p, true)))
            .map(|(path, dir)| Piece {
                kib: sizes.get(path.as_str()).copied().unwrap_or(0),
                path,
                dir,
            })
            .collect(),
    )
}

/// The most path bytes a plan names: each stream's paths travel in its exec request's URL.
const PATH_BUDGET: usize = 96 * 1024;
/// The most directories a plan lists (one exec each).
const MAX_EXPANSIONS: usize = 32;

/// Cuts a volume into pieces for `n` streams, without a cluster: [`plan`] feeds it listings.
#[derive(Debug)]
pub struct Planner {
    n: usize,
    structure: Vec<String>,
    pieces: Vec<Piece>,
    /// Directories that cannot be expanded (odd names, a failed listing, the budget).
    whole: Vec<String>,
    path_bytes: usize,
    /// Hard-linked paths: the pieces holding them go to one stream.
    linked: Vec<Vec<u8>>,
}

impl Planner {
    pub fn new(n: usize) -> Self {
        Planner {
            n: n.max(1),
            structure: Vec::new(),
            pieces: vec![Piece {
                path: ".".into(),
                kib: 0,
                dir: true,
            }],
            whole: Vec::new(),
            path_bytes: 1,
            linked: Vec::new(),
        }
    }

    /// Paths (as [`HARD_LINKS`] prints them) of files with other links.
    pub fn hard_linked(&mut self, paths: Vec<Vec<u8>>) {
        self.linked = paths;
    }

    fn total(&self) -> u64 {
        self.pieces.iter().map(|p| p.kib).sum()
    }

    /// The directory to list next: the root first, then the largest directory piece that holds
    /// more than 1/(2N) of the volume; None when the pieces are fine enough.
    pub fn next(&self) -> Option<String> {
        if self.structure.is_empty() {
            return Some(".".into());
        }
        if self.structure.len() > MAX_EXPANSIONS {
            return None;
        }
        let limit = self.total() / (2 * self.n as u64);
        self.pieces
            .iter()
            .filter(|p| p.dir && p.kib > limit && !self.whole.contains(&p.path))
            .max_by_key(|p| p.kib)
            .map(|p| p.path.clone())
    }

    /// `dir`'s children replace it; `None` (they could not be listed or named) keeps it whole.
    pub fn expand(&mut self, dir: &str, children: Option<Vec<Piece>>) {
        let added: usize = children.iter().flatten().map(|c| c.path.len() + 1).sum();
        match children {
            Some(children) if self.path_bytes + added <= PATH_BUDGET => {
                self.pieces.retain(|p| p.path != dir);
                self.pieces.extend(children);
                self.structure.push(dir.to_string());
                self.path_bytes += added;
            }
            _ if dir == "." => {
                // The root cannot be split: one tar.
                self.structure.push(".".into());
                self.whole.push(".".into());
            }
            _ => self.whole.push(dir.to_string()),
        }
    }

    /// Deals the pieces to the streams, largest first to the least-loaded.
    pub fn finish(self) -> Plan {
        if self.whole.iter().any(|d| d == ".") || self.n < 2 {
            return Plan::Whole;
        }
        // Items to deal: the pieces holding hard-linked files as one bundle, every other
        // piece on its own. An empty directory weighs something, so that many spread out too.
        let holds = |piece: &str, path: &[u8]| {
            path == piece.as_bytes()
                || (path.starts_with(piece.as_bytes()) && path.get(piece.len()) == Some(&b'/'))
        };
        let (bundle, single): (Vec<Piece>, Vec<Piece>) = self
            .pieces
            .into_iter()
            .partition(|p| self.linked.iter().any(|l| holds(&p.path, l)));
        let mut items: Vec<(u64, Vec<String>)> = single
            .into_iter()
            .map(|p| (p.kib.max(1), vec![p.path]))
            .collect();
        if !bundle.is_empty() {
            items.push((
                bundle.iter().map(|p| p.kib.max(1)).sum(),
                bundle.into_iter().map(|p| p.path).collect(),
            ));
        }
        items.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut parts: Vec<(u64, Vec<String>)> = vec![(0, Vec::new()); self.n];
        for (kib, paths) in items {
            let least = parts
                .iter_mut()
                .min_by_key(|(load, _)| *load)
                .expect("n >= 1");
            least.0 += kib;
            least.1.extend(paths);
        }
        let parts: Vec<Vec<String>> = parts
            .into_iter()
            .map(|(_, mut paths)| {
                paths.sort();
                paths
            })
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() < 2 {
            return Plan::Whole;
        }
        Plan::Split {
            structure: self.structure,
            parts,
        }
    }
}

/// Plans the copy of the helper's volume over `n` streams. A listing that fails only costs
/// the split: the copy is then one tar.
pub async fn plan(helper: &HelperPod, n: usize) -> Plan {
    if n < 2 {
        return Plan::Whole;
    }
    let mut planner = Planner::new(n);
    match helper
        .run_bytes(&["sh", "-c", HARD_LINKS, "sh", MOUNT])
        .await
    {
        Ok(out) if out.len() < HARD_LINKS_MAX => planner.hard_linked(
            out.split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
        ),
        _ => return Plan::Whole,
    }
    while let Some(dir) = planner.next() {
        let children = match helper
            .run_bytes(&["sh", "-c", LIST, "sh", MOUNT, &dir])
            .await
        {
            Ok(out) => parse_children(&dir, &out),
            Err(_) => None,
        };
        planner.expand(&dir, children);
    }
    planner.finish()
}

/// The size of the temporary files a spool is cut into; a segment the archive writer has
/// read past is deleted.
const SEGMENT: u64 = 32 << 20;
/// Spools stop taking data while this much is waiting for the archive writer and the writer
/// has a complete member to take (so that it never waits for a stream that is paused).
pub const UNREAD_LIMIT: u64 = 256 << 20;

/// The tar stream of one copy, and the exec sessions behind it.
pub struct TarSource {
    /// One tar stream: the single tar's stdout, or the merge of the spools.
    pub reader: Box<dyn Read + Send>,
    sessions: Vec<Session>,
    stderr: Vec<tokio::task::JoinHandle<String>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    /// Bytes each stream carried, once the pumps are done (the single stream is not counted).
    carried: Option<Arc<Spools>>,
}

/// Starts the plan's tars in `helper`; each stream gets `watch`'s stall limit.
pub async fn start(helper: &HelperPod, plan: &Plan, watch: Watch) -> Result<TarSource, Failure> {
    let argvs = plan.argvs();
    // All at once: each exec's upgrade is a round trip to the API server and the kubelet.
    let opened = futures::future::try_join_all(argvs.iter().map(|argv| async move {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        helper.session(&argv, false, watch).await
    }))
    .await?;
    let mut sessions = Vec::new();
    let mut stdouts = Vec::new();
    let mut stderr = Vec::new();
    for mut session in opened {
        let (stdout, mut err) = session.stdio()?;
        stderr.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut err).take(64 << 10).read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).to_string()
        }));
        stdouts.push(stdout);
        sessions.push(session);
    }
    if stdouts.len() == 1 {
        let stdout = stdouts.pop().expect("one stream");
        return Ok(TarSource {
            reader: Box::new(tokio_util::io::SyncIoBridge::new(stdout)),
            sessions,
            stderr,
            pumps: Vec::new(),
            carried: None,
        });
    }
    let spools = Arc::new(Spools::new(stdouts.len())?);
    let pumps = stdouts
        .into_iter()
        .enumerate()
        .map(|(i, stdout)| {
            let spools = spools.clone();
            let reader = tokio_util::io::SyncIoBridge::new(stdout);
            tokio::task::spawn_blocking(move || spools.pump(i, reader))
        })
        .collect();
    Ok(TarSource {
        reader: Box::new(MergedTar::new(spools.clone())),
        sessions,
        stderr,
        pumps,
        carried: Some(spools),
    })
}

impl TarSource {
    /// Waits for every stream to end. A lost session explains itself best, so the first one
    /// wins; then a tar that did not exit 0. Returns the tars' stderr, joined.
    pub async fn finish(mut self, limit: Duration, helper: &str) -> Result<String, Failure> {
        let mut errors = String::new();
        for job in self.stderr.drain(..) {
            errors.push_str(&job.await.unwrap_or_default());
        }
        let mut statuses = Vec::new();
        for session in &mut self.sessions {
            statuses.push(session.finish(limit).await);
        }
        for pump in self.pumps.drain(..) {
            let _ = pump.await;
        }
        let mut failed = None;
        for st in statuses {
            let st = st?;
            if failed.is_none() && st.status.as_deref() != Some("Success") {
                failed = Some(st);
            }
        }
        if let Some(st) = failed {
            return Err(Failure::runtime(format!(
                "tar in helper pod {helper} failed: {}{}",
                crate::helper_session::describe_status(&st),
                if errors.trim().is_empty() {
                    String::new()
                } else {
                    format!(" (stderr: {})", errors.trim())
                }
            )));
        }
        Ok(errors)
    }

    /// Bytes of tar stream each stream carried (empty for a single stream).
    pub fn carried(&self) -> Vec<u64> {
        match &self.carried {
            Some(s) => s.lock().sources.iter().map(|s| s.written).collect(),
            None => Vec::new(),
        }
    }
}

/// The spools of a merge: per stream, segment files and how far they have been written and
/// read.
struct Spools {
    /// The segments not yet read past, by stream and number. They are files without a name in
    /// TMPDIR (`O_TMPFILE`, or unlinked as soon as created: `tempfile::tempfile`), so that
    /// however this process ends, a SIGKILL included, nothing of them is left behind: the
    /// kernel frees them with their last descriptor.
    segments: Mutex<HashMap<(usize, u64), Arc<File>>>,
    state: Mutex<SpoolState>,
    changed: Condvar,
}

#[derive(Default)]
struct SpoolState {
    sources: Vec<Source>,
    /// Bumped on every change, so a waiter sees whether anything moved since it looked.
    generation: u64,
    /// The merge found no complete member and waits: every spool must keep taking data.
    reader_waiting: bool,
    /// The merge was dropped: the pumps drain their streams without keeping anything.
    closed: bool,
}

#[derive(Default, Clone)]
struct Source {
    written: u64,
    read: u64,
    end: Option<Result<(), String>>,
}

impl Spools {
    fn new(n: usize) -> Result<Self, Failure> {
        // A first segment's worth of checking before any stream starts: a TMPDIR that cannot
        // hold files fails here, with the fix, rather than as a failed stream.
        new_segment().map_err(|e| Failure::runtime(e.to_string()))?;
        Ok(Spools {
            segments: Mutex::default(),
            state: Mutex::new(SpoolState {
                sources: vec![Source::default(); n],
                ..Default::default()
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SpoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segments(&self) -> MutexGuard<'_, HashMap<(usize, u64), Arc<File>>> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies stream `i` into its spool until it ends, then records how it ended.
    /// Once the merge is dropped (the archive writer failed) the stream is dropped too, as a
    /// single tar's stdout would be: the attempt is over.
    fn pump(&self, i: usize, mut r: impl Read) {
        let end = self.pump_inner(i, &mut r);
        drop(r);
        let mut st = self.lock();
        st.sources[i].end = Some(end);
        st.generation += 1;
        self.changed.notify_all();
    }

    fn pump_inner(&self, i: usize, r: &mut impl Read) -> Result<(), String> {
        let mut buf = vec![0u8; 256 << 10];
        let mut file: Option<(u64, Arc<File>)> = None;
        let mut written = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            };
            if self.lock().closed {
                return Ok(());
            }
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                let seg = written / SEGMENT;
                if file.as_ref().map(|(s, _)| *s) != Some(seg) {
                    let f = Arc::new(new_segment().map_err(|e| e.to_string())?);
                    self.segments().insert((i, seg), f.clone());
                    file = Some((seg, f));
                }
                let room = ((seg + 1) * SEGMENT - written) as usize;
                let take = room.min(chunk.len());
                let (_, f) = file.as_ref().expect("opened above");
                (&**f)
                    .write_all(&chunk[..take])
                    .map_err(|e| format!("cannot write the spool of stream {i}: {e}"))?;
                written += take as u64;
                chunk = &chunk[take..];
            }
            let mut st = self.lock();
            st.sources[i].written = written;
            st.generation += 1;
            self.changed.notify_all();
            while !st.closed && !st.reader_waiting && unread(&st) > UNREAD_LIMIT {
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    fn read_at(&self, source: usize, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let seg = offset / SEGMENT;
        let within = offset % SEGMENT;
        let len = buf.len().min((SEGMENT - within) as usize);
        let f = self
            .segments()
            .get(&(source, seg))
            .cloned()
            .ok_or_else(|| {
                other(format!(
                    "stream {}: a spool segment was read after it was released",
                    source + 1
                ))
            })?;
        f.read_exact_at(&mut buf[..len], within)?;
        Ok(len)
    }

    fn read_exact_at(
        &self,
        source: usize,
        mut offset: u64,
        mut buf: &mut [u8],
    ) -> std::io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(source, offset, buf)?;
            offset += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// The archive writer has taken stream `i` up to `read`: older segments go.
    fn consumed(&self, i: usize, read: u64) {
        let mut st = self.lock();
        let before = st.sources[i].read / SEGMENT;
        st.sources[i].read = read;
        st.generation += 1;
        self.changed.notify_all();
        drop(st);
        let mut segments = self.segments();
        for seg in before..read / SEGMENT {
            segments.remove(&(i, seg));
        }
    }
}

/// A spool segment: a file without a name in TMPDIR ([`Spools::segments`]).
fn new_segment() -> std::io::Result<File> {
    tempfile::tempfile().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot create a spool file for the streams in {} ({e}); set TMPDIR to a writable directory or use --streams 1",
                std::env::temp_dir().display()
            ),
        )
    })
}

fn unread(st: &SpoolState) -> u64 {
    st.sources.iter().map(|s| s.written - s.read).sum()
}

/// What the next member of a spool looks like.
enum Next {
    /// A complete member (its headers and data) of this many bytes.
    Member(u64),
    /// Not all of it has arrived.
    Waiting,
    /// The spool's archive ended (its end-of-archive block).
    End,
}

fn other(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// One tar stream made of the spools' members, ending with one end-of-archive marker.
struct MergedTar {
    spools: Arc<Spools>,
    /// Where each spool's next member starts.
    pos: Vec<u64>,
    done: Vec<bool>,
    /// The member being copied: its spool and the bytes left.
    current: Option<(usize, u64)>,
    trailer: usize,
}

impl MergedTar {
    fn new(spools: Arc<Spools>) -> Self {
        let n = spools.lock().sources.len();
        MergedTar {
            spools,
            pos: vec![0; n],
            done: vec![false; n],
            current: None,
            trailer: 1024,
        }
    }

    /// Looks at spool `i`'s next member with `src` as last seen.
    fn next_member(&self, i: usize, src: &Source) -> std::io::Result<Next> {
        let start = self.pos[i];
        let mut at = start;
        let ended = src.end.is_some();
        loop {
            if src.written < at + 512 {
                return if !ended {
                    Ok(Next::Waiting)
                } else if at == start && src.written == start {
                    // busybox tar always ends with zero blocks; a stream without them
                    // was cut short.
                    Err(other(format!(
                        "stream {} ended without an end-of-archive marker",
                        i + 1
                    )))
                } else {
                    Err(other(format!("stream {} ended inside a member", i + 1)))
                };
            }
            let mut block = [0u8; 512];
            self.spools.read_exact_at(i, at, &mut block)?;
            if block.iter().all(|b| *b == 0) {
                return if at == start {
                    Ok(Next::End)
                } else {
                    Err(other(format!(
                        "stream {} holds an end-of-archive block inside a member",
                        i + 1
                    )))
                };
            }
            let header = tar::Header::from_byte_slice(&block);
            let sum = header
                .cksum()
                .map_err(|e| other(format!("stream {} is not a tar stream: {e}", i + 1)))?;
            let computed: u32 = block[..148]
                .iter()
                .chain(&[b' '; 8])
                .chain(&block[156..])
                .map(|b| *b as u32)
                .sum();
            if sum != computed {
                return Err(other(format!(
                    "stream {} is not a tar stream: a header's checksum does not match",
                    i + 1
                )));
            }
            let size = header
                .entry_size()
                .map_err(|e| other(format!("stream {} is not a tar stream: {e}", i + 1)))?;
            at += 512 + size.div_ceil(512) * 512;
            // GNU long names/links and pax headers describe the header that follows.
            if !matches!(block[156], b'L' | b'K' | b'x' | b'g') {
                return if src.written >= at {
                    Ok(Next::Member(at - start))
                } else if ended {
                    Err(other(format!("stream {} ended inside a member", i + 1)))
                } else {
                    Ok(Next::Waiting)
                };
            }
        }
    }

    /// Picks the next complete member, waiting for one; None once every spool has ended.
    fn pick(&mut self) -> std::io::Result<Option<(usize, u64)>> {
        loop {
            let (sources, generation) = {
                let st = self.spools.lock();
                (st.sources.clone(), st.generation)
            };
            for (i, src) in sources.iter().enumerate() {
                if let Some(Err(e)) = &src.end {
                    return Err(other(format!("stream {} failed: {e}", i + 1)));
                }
            }
            for (i, src) in sources.iter().enumerate() {
                if self.done[i] {
                    continue;
                }
                match self.next_member(i, src)? {
                    Next::Member(len) => return Ok(Some((i, len))),
                    Next::End => self.done[i] = true,
                    Next::Waiting => {}
                }
            }
            if self.done.iter().all(|d| *d) {
                return Ok(None);
            }
            let mut st = self.spools.lock();
            st.reader_waiting = true;
            self.spools.changed.notify_all();
            while st.generation == generation {
                st = self
                    .spools
                    .changed
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner());
            }
            st.reader_waiting = false;
        }
    }
}

impl Read for MergedTar {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((i, left)) = self.current {
                if left == 0 {
                    self.current = None;
                    self.spools.consumed(i, self.pos[i]);
                    continue;
                }
                let want = (buf.len() as u64).min(left) as usize;
                let n = self.spools.read_at(i, self.pos[i], &mut buf[..want])?;
                self.pos[i] += n as u64;
                self.current = Some((i, left - n as u64));
                return Ok(n);
            }
            if self.done.iter().all(|d| *d) {
                let n = self.trailer.min(buf.len());
                buf[..n].fill(0);
                self.trailer -= n;
                return Ok(n);
            }
            self.current = self.pick()?;
        }
    }
}

impl Drop for MergedTar {
    fn drop(&mut self) {
        let mut st = self.spools.lock();
        st.closed = true;
        self.spools.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(path: &str, kib: u64, dir: bool) -> Piece {
        Piece {
            path: path.into(),
            kib,
            dir,
        }
    }

    #[test]
    fn the_size_allows_one_stream_below_64_mib_and_up_to_four() {
        assert_eq!(streams_for_size(None), 1);
        assert_eq!(streams_for_size(Some(10 << 20)), 1);
        assert_eq!(streams_for_size(Some(64 << 20)), 2);
        assert_eq!(streams_for_size(Some(100 << 20)), 3);
        assert_eq!(streams_for_size(Some(525_000_000)), 4);
        assert_eq!(streams_for_size(Some(1 << 40)), 4);
    }

    /// `auto` measures only where it could choose more than one stream; a fast stream means
    /// one, a slow one as many as make up the client's pace, within what the size allows.
    #[test]
    fn auto_chooses_from_where_it_runs_the_size_and_the_measured_stream() {
        let big = Some(525_000_000);
        let small = Some(10 << 20);
        assert!(needs_probe(StreamCount::Auto, false, big));
        assert!(!needs_probe(StreamCount::Auto, true, big), "in the cluster");
        assert!(!needs_probe(StreamCount::Auto, false, small), "small");
        assert!(!needs_probe(StreamCount::Auto, false, None), "size unknown");
        assert!(!needs_probe(StreamCount::Fixed(3), false, big), "fixed");

        let pick = |want, in_cluster, bytes, measured: Option<Result<f64, String>>| {
            let c = choose(want, in_cluster, bytes, measured);
            (c.streams, c.reason)
        };
        assert_eq!(
            pick(StreamCount::Fixed(3), false, small, None),
            (3, Reason::Fixed)
        );
        assert_eq!(
            pick(StreamCount::Auto, true, big, None),
            (1, Reason::InCluster)
        );
        assert_eq!(
            pick(StreamCount::Auto, false, small, None),
            (1, Reason::SmallVolume)
        );
        // Unthrottled here: one stream carries ~300 MB/s of zeros.
        assert_eq!(
            pick(StreamCount::Auto, false, big, Some(Ok(300e6))),
            (1, Reason::FastLink)
        );
        assert_eq!(
            pick(StreamCount::Auto, false, big, Some(Ok(CLIENT_PACE))),
            (1, Reason::FastLink)
        );
        // The benchmark's distant link: 40 MB/s per stream.
        assert_eq!(
            pick(StreamCount::Auto, false, big, Some(Ok(40e6))),
            (4, Reason::SlowLink)
        );
        assert_eq!(
            pick(StreamCount::Auto, false, big, Some(Ok(70e6))),
            (3, Reason::SlowLink)
        );
        assert_eq!(
            pick(StreamCount::Auto, false, big, Some(Ok(1e6))),
            (4, Reason::SlowLink)
        );
        // 100 MiB allows three streams at most.
        assert_eq!(
            pick(StreamCount::Auto, false, Some(100 << 20), Some(Ok(1e6))),
            (3, Reason::SlowLink)
        );
        assert_eq!(
            pick(StreamCount::Auto, false, big, Some(Err("no head".into()))),
            (4, Reason::NotMeasured)
        );
        let c = choose(StreamCount::Auto, false, big, Some(Ok(38.4e6)));
        assert_eq!(c.measured_bytes_per_second, Some(38_400_000));
        assert_eq!(
            c.describe(),
            "4 exec streams (auto: one stream carries 38 MB/s, below the client's 100 MB/s)"
        );
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"streams": 4, "reason": "slow-link", "measuredBytesPerSecond": 38_400_000})
        );
    }

    #[test]
    fn list_output_parses_and_odd_names_keep_a_directory_whole() {
        let out = [
            &b"./a.bin\0./l\0\0./docs\0\0"[..],
            b"102400\t./a.bin\n0\t./l\n20480\t./docs\n122880\t.\n",
        ]
        .concat();
        let out = &out[..];
        assert_eq!(
            parse_children(".", out),
            Some(vec![
                piece("./a.bin", 102400, false),
                piece("./l", 0, false),
                piece("./docs", 20480, true),
            ])
        );
        // A newline in a name: du's lines cannot be trusted, nor the name on a command line.
        let odd = b"./x\n5\t./y\0\0\0";
        assert_eq!(parse_children(".", odd), None);
        // Not UTF-8.
        assert_eq!(parse_children(".", b"./\xff\0\0\0"), None);
        // Cut short, or too many entries to name.
        assert_eq!(parse_children(".", b"./a\0"), None);
        assert_eq!(parse_children(".", b"many\n"), None);
    }

    /// The benchmark's mixed set: 20 directories of ~6 MB and 4 blobs of 100 MiB: the root and
    /// both big directories are expanded, and 4 streams get a blob and 5 directories each.
    #[test]
    fn the_mixed_set_splits_evenly_over_four_streams() {
        let mut p = Planner::new(4);
        assert_eq!(p.next().as_deref(), Some("."));
        p.expand(
            ".",
            Some(vec![
                piece("./docs", 120_000, true),
                piece("./blobs", 409_600, true),
            ]),
        );
        assert_eq!(p.next().as_deref(), Some("./blobs"));
        p.expand(
            "./blobs",
            Some(
                (0..4)
                    .map(|i| piece(&format!("./blobs/{i}.bin"), 102_400, false))
                    .collect(),
            ),
        );
        assert_eq!(p.next().as_deref(), Some("./docs"));
        p.expand(
            "./docs",
            Some(
                (0..20)
                    .map(|i| piece(&format!("./docs/{i:02}"), 6_000, true))
                    .collect(),
            ),
        );
        assert_eq!(p.next(), None);
        let Plan::Split { structure, parts } = p.finish() else {
            panic!("not split")
        };
        assert_eq!(structure, vec![".", "./blobs", "./docs"]);
        assert_eq!(parts.len(), 4);
        for part in &parts {
            assert_eq!(
                part.iter().filter(|p| p.ends_with(".bin")).count(),
                1,
                "{part:?}"
            );
            assert_eq!(part.len(), 6, "{part:?}");
        }
        let mut all: Vec<&String> = parts.iter().flatten().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 24, "every piece exactly once");
        let argvs = Plan::Split { structure, parts }.argvs();
        assert_eq!(argvs.len(), 5);
        assert_eq!(
            argvs[0],
            [
                "tar",
                "-cf",
                "-",
                "-C",
                "/data",
                "--no-recursion",
                "--",
                ".",
                "./blobs",
                "./docs"
            ]
        );
    }

    /// Hard-linked files (here ./a/x linked to ./b/y) keep their pieces in one stream, so the
    /// tar that meets the second name stores it as a link.
    #[test]
    fn pieces_holding_hard_links_go_to_one_stream() {
        let mut p = Planner::new(3);
        p.hard_linked(vec![b"./a/x".to_vec(), b"./b/y".to_vec()]);
        p.expand(
            ".",
            Some(vec![
                piece("./a", 100, true),
                piece("./b", 100, true),
                piece("./ab", 100, false),
                piece("./c", 100, false),
            ]),
        );
        let Plan::Split { parts, .. } = p.finish() else {
            panic!("not split")
        };
        let with_a = parts
            .iter()
            .find(|p| p.contains(&"./a".to_string()))
            .unwrap();
        assert!(with_a.contains(&"./b".to_string()), "{parts:?}");
        assert!(
            !with_a.contains(&"./ab".to_string()),
            "./ab is not ./a: {parts:?}"
        );
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn an_unlistable_root_or_one_stream_is_one_tar() {
        let mut p = Planner::new(3);
        p.expand(".", None);
        assert_eq!(p.next(), None);
        assert_eq!(p.finish(), Plan::Whole);
        let mut p = Planner::new(3);
        p.expand(".", Some(vec![piece("./only", 500, false)]));
        assert_eq!(p.finish(), Plan::Whole, "one piece cannot be split");
        assert_eq!(
            Plan::Whole.argvs(),
            vec![vec!["tar", "-cf", "-", "-C", "/data", "."]]
        );
    }

    /// Three tar streams written into spools in small, interleaved chunks merge into one tar
    /// stream holding every member once, byte for byte, with one end-of-archive marker.
    #[test]
    fn spooled_streams_merge_into_one_archive_of_whole_members() {
        fn archive(prefix: &str, sizes: &[usize]) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for (k, size) in sizes.iter().enumerate() {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(*size as u64);
                let data: Vec<u8> = (0..*size).map(|x| (x * 7 + k) as u8).collect();
                // A long name: a GNU 'L' header before the member's own.
                let name = format!("{prefix}/{}/{k}", "n".repeat(if k == 1 { 120 } else { 3 }));
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
            b.into_inner().unwrap()
        }
        let streams = [
            archive("./a", &[0, 70_000, 3]),
            archive("./b", &[1_000_000]),
            archive("./c", &[512, 511, 513]),
        ];
        let spools = Arc::new(Spools::new(3).unwrap());
        let mut merged = MergedTar::new(spools.clone());
        let feeders: Vec<_> = streams
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, bytes)| {
                let spools = spools.clone();
                std::thread::spawn(move || {
                    // Dribbles in 1000-byte reads, so members arrive in pieces.
                    struct Slow(Vec<u8>, usize);
                    impl Read for Slow {
                        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                            let n = buf.len().min(1000).min(self.0.len() - self.1);
                            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                            self.1 += n;
                            Ok(n)
                        }
                    }
                    spools.pump(i, Slow(bytes, 0))
                })
            })
            .collect();
        let mut out = Vec::new();
        merged.read_to_end(&mut out).unwrap();
        for f in feeders {
            f.join().unwrap();
        }
        let mut got: Vec<(String, Vec<u8>)> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (e.path().unwrap().display().to_string(), data)
            })
            .collect();
        let mut want: Vec<(String, Vec<u8>)> = streams
            .iter()
            .flat_map(|s| {
                tar::Archive::new(&s[..])
                    .entries()
                    .unwrap()
                    .map(|e| {
                        let mut e = e.unwrap();
                        let mut data = Vec::new();
                        e.read_to_end(&mut data).unwrap();
                        (e.path().unwrap().display().to_string(), data)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got.len(), 7);
        assert_eq!(got, want);
        assert!(out.ends_with(&[0u8; 1024]));
        // Every segment but the last of each stream was read and released.
        let left = spools.segments().len();
        assert!(left <= 3, "{left} segments kept");
    }

    /// A stream cut inside a member (a killed tar) fails the merge: no archive is complete.
    #[test]
    fn a_stream_cut_inside_a_member_fails_the_merge() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(10_000);
        b.append_data(&mut h, "./big", &vec![1u8; 10_000][..])
            .unwrap();
        let whole = b.into_inner().unwrap();
        let spools = Arc::new(Spools::new(2).unwrap());
        let mut merged = MergedTar::new(spools.clone());
        spools.pump(0, &whole[..]);
        spools.pump(1, &whole[..4_000]);
        let mut out = Vec::new();
        let e = merged.read_to_end(&mut out).unwrap_err();
        assert!(
            e.to_string().contains("stream 2 ended inside a member"),
            "{e}"
        );
    }
}

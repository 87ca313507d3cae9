//! Fault injection for tests and the benchmark: container crashes during exec, API outages,
//! the link exec streams cross ([`LinkModel`]: a per-stream and a shared bandwidth cap), nodes
//! going NotReady, images that fail to pull.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A fault request, as sent to `POST /kubesim/v1/faults` and by `kubesim fault`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum FaultRequest {
    /// Kill the exec'd process (and crash its container) once it has sent `after_bytes` of
    /// stdout. `count` exec sessions are hit (0 = every one until cleared).
    KillExec {
        #[serde(rename = "afterBytes")]
        after_bytes: u64,
        #[serde(default = "one")]
        count: u32,
    },
    /// Reset every API connection (exec streams included) and refuse new ones for `seconds`.
    Outage {
        seconds: f64,
    },
    /// Cap every exec stream (each direction) at this rate: the link model's per-stream cap
    /// alone (its shared cap, if set, stays).
    Bandwidth {
        #[serde(rename = "bytesPerSecond")]
        bytes_per_second: u64,
    },
    /// The link between client and cluster, as [`LinkModel`] describes it: each exec stream
    /// (each direction) at most `perStream` bytes/s, all of them together at most `shared`.
    /// An absent cap is no cap; both absent is an unthrottled link.
    Link {
        #[serde(rename = "perStream", default, skip_serializing_if = "Option::is_none")]
        per_stream: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shared: Option<u64>,
    },
    NodeNotReady {
        node: String,
    },
    NodeReady {
        node: String,
    },
    /// Pulls of this image fail (`ErrImagePull`, then `ImagePullBackOff`).
    FailImage {
        image: String,
    },
    Clear,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct FaultState {
    pub kill_exec: Option<(u64, u32)>,
    /// The per-stream cap of the link model (`bandwidth` and `link --per-stream`).
    pub bandwidth: Option<u64>,
    /// The shared cap of the link model (`link --shared`).
    pub shared_bandwidth: Option<u64>,
    pub not_ready_nodes: Vec<String>,
    pub failing_images: Vec<String>,
}

pub struct Faults {
    state: Mutex<FaultState>,
    outage_until: Mutex<Option<Instant>>,
    outage_tx: watch::Sender<u64>,
    exec_bytes: ExecBytes,
    /// The pipes of the shared cap, one per direction; replaced (not retuned) when the cap
    /// changes, so sessions that started under the old link keep it, as with the per-stream cap.
    shared: Mutex<Option<Arc<SharedLink>>>,
    /// The latest exec sessions, for tests that check how a client used its streams.
    sessions: Mutex<std::collections::VecDeque<ExecSession>>,
}

/// An exec session that ended: where, what ran, and how many bytes it streamed to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecSession {
    pub pod: String,
    pub argv: Vec<String>,
    pub stdout_bytes: u64,
}

/// How many ended sessions [`Faults::exec_sessions`] keeps.
const SESSIONS_KEPT: usize = 4096;

/// Bytes that crossed exec streams since the cluster started, all sessions together: what a
/// process wrote to stdout and was handed to the transport, and what the client sent on stdin
/// and was written to the process. The benchmark reads deltas to report wire bytes per tool.
#[derive(Debug, Default)]
struct ExecBytes {
    stdout: AtomicU64,
    stdin: AtomicU64,
}

/// A reading of [`ExecBytes`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExecByteCount {
    pub stdout: u64,
    pub stdin: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            state: Mutex::default(),
            outage_until: Mutex::default(),
            outage_tx: watch::channel(0).0,
            exec_bytes: ExecBytes::default(),
            shared: Mutex::default(),
            sessions: Mutex::default(),
        }
    }
}

impl Faults {
    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn apply(&self, req: &FaultRequest) {
        match req {
            FaultRequest::KillExec { after_bytes, count } => {
                self.state().kill_exec = Some((*after_bytes, *count))
            }
            FaultRequest::Outage { seconds } => {
                *self.outage_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + Duration::from_secs_f64(seconds.max(0.0)));
                self.outage_tx.send_modify(|g| *g += 1);
            }
            FaultRequest::Bandwidth { bytes_per_second } => {
                self.state().bandwidth = Some(*bytes_per_second)
            }
            FaultRequest::Link { per_stream, shared } => {
                let mut s = self.state();
                s.bandwidth = *per_stream;
                s.shared_bandwidth = *shared;
                *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = shared
                    .filter(|r| *r > 0)
                    .map(|r| Arc::new(SharedLink::new(r)));
            }
            FaultRequest::NodeNotReady { node } => {
                let mut s = self.state();
                if !s.not_ready_nodes.contains(node) {
                    s.not_ready_nodes.push(node.clone());
                }
            }
            FaultRequest::NodeReady { node } => self.state().not_ready_nodes.retain(|n| n != node),
            FaultRequest::FailImage { image } => self.state().failing_images.push(image.clone()),
            FaultRequest::Clear => {
                *self.state() = FaultState::default();
                *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = None;
                *self.outage_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
    }

    pub fn snapshot(&self) -> FaultState {
        self.state().clone()
    }

    pub fn in_outage(&self) -> bool {
        self.outage_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t)
    }

    /// Changes whenever an outage starts; connections select on it and drop themselves.
    pub fn outage_signal(&self) -> watch::Receiver<u64> {
        self.outage_tx.subscribe()
    }

    /// The stdout byte count after which an exec session is killed, if the fault is armed.
    pub fn kill_exec_threshold(&self) -> Option<u64> {
        self.state().kill_exec.map(|(after, _)| after)
    }

    /// Called when a session reaches the threshold: true if it is to be killed (the fault was
    /// still armed), counting it against `count`. Sessions that never reach the threshold
    /// (a short `du`) do not use up the fault.
    pub fn fire_kill_exec(&self) -> bool {
        let mut s = self.state();
        let Some((after, count)) = s.kill_exec else {
            return false;
        };
        match count {
            0 => {}
            1 => s.kill_exec = None,
            n => s.kill_exec = Some((after, n - 1)),
        }
        true
    }

    pub fn count_exec_stdout(&self, n: usize) {
        self.exec_bytes
            .stdout
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn count_exec_stdin(&self, n: usize) {
        self.exec_bytes.stdin.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn record_exec_session(&self, session: ExecSession) {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == SESSIONS_KEPT {
            s.pop_front();
        }
        s.push_back(session);
    }

    /// The latest ended exec sessions, oldest first.
    pub fn exec_sessions(&self) -> Vec<ExecSession> {
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().cloned().collect()
    }

    pub fn exec_bytes(&self) -> ExecByteCount {
        ExecByteCount {
            stdout: self.exec_bytes.stdout.load(Ordering::Relaxed),
            stdin: self.exec_bytes.stdin.load(Ordering::Relaxed),
        }
    }

    /// The link a new exec session crosses: its per-stream caps (fresh, this session's own)
    /// and the shared pipes every session of the current link model goes through.
    pub fn link(&self) -> SessionLink {
        let per_stream = self.state().bandwidth.filter(|r| *r > 0);
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        SessionLink {
            down: LinkDirection {
                own: per_stream.map(Pipe::new),
                shared: shared.clone().map(|s| (s, Direction::Down)),
            },
            up: LinkDirection {
                own: per_stream.map(Pipe::new),
                shared: shared.map(|s| (s, Direction::Up)),
            },
        }
    }

    pub fn node_ready(&self, node: &str) -> bool {
        !self.state().not_ready_nodes.iter().any(|n| n == node)
    }

    pub fn image_fails(&self, image: &str) -> bool {
        self.state().failing_images.iter().any(|i| i == image)
    }
}

/// The two caps of the link model ([`SharedLink`]), for `ClusterOptions::link` and
/// `kubesim serve --link-per-stream/--link-shared`: bytes per second, None for no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCaps {
    pub per_stream: Option<u64>,
    pub shared: Option<u64>,
}

impl LinkCaps {
    pub fn fault(self) -> FaultRequest {
        FaultRequest::Link {
            per_stream: self.per_stream,
            shared: self.shared,
        }
    }
}

/// Parses a rate as users write it: `40MB/s`, `40MiB/s`, `500k`, `1048576`. Decimal
/// (`k`, `M`, `G`) and binary (`Ki`, `Mi`, `Gi`) prefixes; the `B` and `/s` are optional.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; write e.g. 40MB/s, 40MiB/s or 40000000"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate; write e.g. 40MB/s, 40MiB/s or 40000000"))?;
    let r = (n * mult as f64).round();
    // NaN (from "nan") fails this as well.
    if r.is_nan() || r < 1.0 {
        return Err(format!("{s:?}: a rate must be at least 1 byte/s"));
    }
    Ok(r as u64)
}

/// How kubesim models the network between a client and the cluster for exec streams.
///
/// An exec (and `kubectl cp`, which is `tar` over exec) is an HTTP/1.1 upgrade: every session
/// is its own TCP connection from the client to the API server, which proxies it to the node's
/// kubelet over another connection of its own (apiserver `util/proxy/upgradeaware.go`; with the
/// `ExtendWebSocketsToKubelet` gate, beta in 1.36, the apiserver proxies straight to the kubelet,
/// kubernetes/website `feature-gates/extend-websockets-to-kubelet.md`). Two limits follow:
///
/// * **per stream**: one connection carries at most window/RTT. Its window is the smallest of
///   the TCP receive window, the sender's buffer and the congestion window ("the TCP window
///   should be no smaller than the bandwidth-delay product", GÉANT PERT knowledge base,
///   kb.pert.geant.net `WindowBasedTransmission`), and a SPDY/3.1 exec adds its own per-stream
///   and per-connection flow-control windows on top (tatsuhiro-t/spdylay#140 explains the two
///   levels). Over a long path (a laptop far from its cluster, a VPN, a bastion) that product,
///   not the thinnest link, is what one stream gets: 4 MiB in flight at 100 ms RTT is 40 MiB/s,
///   whatever the link's capacity. A second connection gets its own window.
/// * **shared**: the thinnest link on the path (the laptop's uplink, the VPN gateway, the
///   cluster's egress) is one pipe that all streams share: more connections than it can carry
///   just split it.
///
/// `FaultRequest::Link` sets both; `FaultRequest::Bandwidth` only the per-stream cap (the model
/// kubesim had before, where each stream was throttled on its own and nothing was shared).
/// Each direction is capped on its own: a link is full duplex. Only exec streams are
/// modelled; API requests and port-forward connections are not throttled.
#[derive(Debug)]
pub struct SharedLink {
    down: Pipe,
    up: Pipe,
}

impl SharedLink {
    fn new(rate: u64) -> Self {
        SharedLink {
            down: Pipe::new(rate),
            up: Pipe::new(rate),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    /// From the pod to the client (stdout).
    Down,
    /// From the client to the pod (stdin).
    Up,
}

/// A pipe of `rate` bytes/s: every chunk takes its length/rate of the pipe's time, after the
/// chunks before it, and chunks from several streams queue in the order they come, so equal
/// streams share it equally. An idle pipe banks at most [`BURST`] of credit: a window's worth
/// may go at once (window = rate × RTT, so one RTT of the modelled 100 ms path), but a link
/// that carried nothing for a second cannot send two seconds' worth. The credit also absorbs
/// late timer wake-ups on a loaded host, which would otherwise be lost and slow every stream
/// below its cap.
/// The credit an idle [`Pipe`] keeps: one round trip of the modelled path.
const BURST: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Pipe {
    rate: u64,
    free_at: Mutex<Instant>,
}

impl Pipe {
    fn new(rate: u64) -> Self {
        Pipe {
            rate,
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Books `n` bytes on the pipe; the instant they have gone through.
    fn book(&self, n: usize) -> Instant {
        let mut free_at = self.free_at.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let start = (*free_at).max(now.checked_sub(BURST).unwrap_or(now));
        *free_at = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
        *free_at
    }
}

/// One exec session's view of the link ([`SharedLink`]): both directions.
#[derive(Debug)]
pub struct SessionLink {
    pub down: LinkDirection,
    pub up: LinkDirection,
}

/// One direction of one session: its own per-stream pipe, then the shared one.
#[derive(Debug)]
pub struct LinkDirection {
    own: Option<Pipe>,
    shared: Option<(Arc<SharedLink>, Direction)>,
}

impl LinkDirection {
    /// Waits until `n` more bytes have crossed the link: through this stream's window first,
    /// then through the pipe every stream shares.
    pub async fn pass(&self, n: usize) {
        if let Some(own) = &self.own {
            tokio::time::sleep_until(own.book(n).into()).await;
        }
        if let Some((link, dir)) = &self.shared {
            let pipe = match dir {
                Direction::Down => &link.down,
                Direction::Up => &link.up,
            };
            tokio::time::sleep_until(pipe.book(n).into()).await;
        }
    }

    /// A read size that keeps the pacing smooth: about 1/20 s of the slowest cap.
    pub fn chunk_size(&self) -> usize {
        let shared = self.shared.as_ref().map(|(l, _)| l.down.rate);
        match self
            .own
            .as_ref()
            .map(|p| p.rate)
            .into_iter()
            .chain(shared)
            .min()
        {
            Some(r) => (r / 20).clamp(512, 64 * 1024) as usize,
            None => 64 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_exec_counts_down_and_outage_expires() {
        let f = Faults::default();
        f.apply(&FaultRequest::KillExec {
            after_bytes: 10,
            count: 2,
        });
        assert_eq!(f.kill_exec_threshold(), Some(10));
        assert!(f.fire_kill_exec());
        assert!(f.fire_kill_exec());
        assert!(!f.fire_kill_exec());
        assert_eq!(f.kill_exec_threshold(), None);
        f.apply(&FaultRequest::Outage { seconds: 0.05 });
        assert!(f.in_outage());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!f.in_outage());
        let parsed: FaultRequest =
            serde_json::from_str(r#"{"action":"kill-exec","afterBytes":5}"#).unwrap();
        assert_eq!(
            parsed,
            FaultRequest::KillExec {
                after_bytes: 5,
                count: 1
            }
        );
    }

    #[test]
    fn rates_parse_as_users_write_them() {
        assert_eq!(parse_rate("40MB/s"), Ok(40_000_000));
        assert_eq!(parse_rate("40MiB/s"), Ok(40 << 20));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_rate("500k"), Ok(500_000));
        assert_eq!(parse_rate("1048576"), Ok(1_048_576));
        assert!(parse_rate("fast").unwrap_err().contains("40MB/s"));
        assert!(parse_rate("40XB/s").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("0").is_err());
    }

    /// The shared pipe serializes bookings: two streams booking 2 MB each on a 10 MB/s pipe
    /// are through after 0.4 s (less the 0.1 s burst), not 0.2 s; an idle pipe banks one
    /// burst, not the whole idle time.
    #[test]
    fn a_pipe_books_chunks_one_after_another() {
        let p = Pipe::new(10_000_000);
        let t0 = Instant::now();
        let a = p.book(2_000_000);
        let b = p.book(2_000_000);
        assert!(a >= t0 + Duration::from_millis(100));
        assert!(b >= t0 + Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(500));
        let now = Instant::now();
        let c = p.book(3_000_000);
        assert!(
            c >= now + Duration::from_millis(200),
            "more than a burst was banked"
        );
    }
}

//! Fault injection for tests and the benchmark: container crashes during exec, API outages,
//! bandwidth caps on exec streams, nodes going NotReady, images that fail to pull.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
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
    /// Cap every exec stream (each direction) at this rate.
    Bandwidth {
        #[serde(rename = "bytesPerSecond")]
        bytes_per_second: u64,
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
    pub bandwidth: Option<u64>,
    pub not_ready_nodes: Vec<String>,
    pub failing_images: Vec<String>,
}

pub struct Faults {
    state: Mutex<FaultState>,
    outage_until: Mutex<Option<Instant>>,
    outage_tx: watch::Sender<u64>,
    exec_bytes: ExecBytes,
}

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

    pub fn exec_bytes(&self) -> ExecByteCount {
        ExecByteCount {
            stdout: self.exec_bytes.stdout.load(Ordering::Relaxed),
            stdin: self.exec_bytes.stdin.load(Ordering::Relaxed),
        }
    }

    pub fn bandwidth(&self) -> Option<u64> {
        self.state().bandwidth
    }

    pub fn node_ready(&self, node: &str) -> bool {
        !self.state().not_ready_nodes.iter().any(|n| n == node)
    }

    pub fn image_fails(&self, image: &str) -> bool {
        self.state().failing_images.iter().any(|i| i == image)
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
}

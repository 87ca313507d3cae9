//! The seam between an exec transport (WebSocket `v4`/`v5.channel.k8s.io`, SPDY/3.1) and the
//! process that runs inside a container. A transport turns an upgraded connection into an
//! [`ExecIo`]; the exec runner pumps the process's pipes through it.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Which streams the client asked for in the exec URL (`stdin=true&stdout=true&stderr=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamsWanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// One exec session's plumbing, transport-independent.
///
/// * `stdin`: chunks the client sent; the channel closing means EOF (v5 close signal, SPDY FIN,
///   or the connection ending).
/// * `stdout`/`stderr`: chunks to send; a failed `send` means the client is gone and the runner
///   must kill the process.
/// * `status`: the final `metav1.Status` (as JSON) written on the error channel (3) / SPDY error
///   stream; the transport sends it after all stdout/stderr data, then closes the connection
///   (WebSocket close frame 1000).
pub struct ExecIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub status: oneshot::Sender<serde_json::Value>,
}

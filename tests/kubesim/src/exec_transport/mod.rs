//! Server side of the `pods/exec` streaming transports: WebSocket (`v5.channel.k8s.io`, used by
//! kubectl >= 1.30 and kube-rs) and SPDY/3.1 (`v4.channel.k8s.io`, used by kubectl <= 1.29 and as
//! the fallback of newer kubectl). A transport turns an upgraded HTTP/1.1 connection into an
//! [`ExecIo`](crate::exec_io::ExecIo) that the exec runner pumps a process's pipes through.
//! Negotiation ([`negotiate_for`]) and the SPDY frame codec are shared with `pods/portforward`
//! (`crate::portforward`), which accepts other protocols ([`ServerProtocols`]).
//!
//! # Wiring into a hyper server
//!
//! ```ignore
//! let (negotiated, headers) = match exec_transport::negotiate(req.headers()) {
//!     Ok(ok) => ok,
//!     // Same status code (and, for SPDY, the `X-Accepted-Stream-Protocol-Versions` headers)
//!     // and body text as the real kubelet / apiserver.
//!     Err(e) => return respond(e.status_code(), e.response_headers(), e.to_string()),
//! };
//! let on_upgrade = hyper::upgrade::on(&mut req);
//! tokio::spawn(async move {
//!     let upgraded = on_upgrade.await?;
//!     let io = hyper_util::rt::TokioIo::new(upgraded);
//!     let exec_io = exec_transport::accept(io, &negotiated, wanted).await?;
//!     runner.run(exec_io).await
//! });
//! // 101 Switching Protocols with exactly `headers`; the connection must be served with
//! // `hyper::server::conn::http1::Builder::serve_connection(..).with_upgrades()`.
//! ```

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::exec_io::{ExecIo, StreamsWanted};

pub mod spdy;
pub mod ws;

/// `v5.channel.k8s.io`: adds the CLOSE signal (channel 255) to v4. The apiserver's WebSocket
/// server only speaks this one (k8s.io/apiserver `pkg/util/proxy/websocket.go`,
/// `createWebSocketStreams`: "WebSocket server only supports remote command version 5").
pub const V5_CHANNEL_PROTOCOL: &str = "v5.channel.k8s.io";
/// `v4.channel.k8s.io`: the error channel carries a JSON `metav1.Status` with the exit code
/// (k8s.io/apimachinery `pkg/util/remotecommand/constants.go`). Spoken over SPDY by the kubelet
/// (`SupportedStreamingProtocols`) and over WebSocket by the pre-1.30 kubelet
/// (k8s.io/kubelet `pkg/cri/streaming/remotecommand/websocket.go`, `v4BinaryWebsocketProtocol`).
pub const V4_CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";

/// The protocols one streaming endpoint accepts, each list in the server's order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerProtocols {
    /// `Sec-WebSocket-Protocol` values.
    pub websocket: &'static [&'static str],
    /// `X-Stream-Protocol-Version` values for a SPDY/3.1 upgrade.
    pub spdy: &'static [&'static str],
}

/// `pods/exec` and `pods/attach`. The kubelet's SPDY server also accepts v3/v2/v1, but every
/// kubectl we test (1.27+) offers v4, and v4 is the only one whose error stream carries the
/// exit code (`remotecommand.SupportedStreamingProtocols`).
pub const EXEC_PROTOCOLS: ServerProtocols = ServerProtocols {
    websocket: &[V5_CHANNEL_PROTOCOL, V4_CHANNEL_PROTOCOL],
    spdy: &[V4_CHANNEL_PROTOCOL],
};

/// `httpstream.HeaderProtocolVersion` (k8s.io/apimachinery `pkg/util/httpstream/httpstream.go`).
const HEADER_PROTOCOL_VERSION: &str = "x-stream-protocol-version";
/// `httpstream.HeaderAcceptedProtocolVersions`, sent with the 403 when negotiation fails.
const HEADER_ACCEPTED_PROTOCOL_VERSIONS: &str = "x-accepted-stream-protocol-versions";
/// `spdy.HeaderSpdy31` (k8s.io/apimachinery `pkg/util/httpstream/spdy/upgrade.go`).
const SPDY_31: &str = "SPDY/3.1";

/// `remotecommand.DefaultStreamCreationTimeout` (k8s.io/apimachinery
/// `pkg/util/remotecommand/constants.go`), the kubelet streaming server's default
/// `StreamCreationTimeout` (k8s.io/kubelet `pkg/cri/streaming/server.go`).
pub const DEFAULT_STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Chunks buffered between a transport and the exec runner, per direction.
const CHANNEL_CAPACITY: usize = 16;

/// The protocol a request negotiated; pass it to [`accept`] once the connection is upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// WebSocket with the k8s channel protocol (`v5.channel.k8s.io` or `v4.channel.k8s.io`).
    WebSocket { subprotocol: &'static str },
    /// SPDY/3.1 with the remotecommand stream protocol (`v4.channel.k8s.io`).
    Spdy { protocol_version: &'static str },
}

/// Why a request could not be upgraded. `Display` is the body text the real server answers with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NegotiateError {
    /// Neither `Upgrade: websocket` nor `Upgrade: SPDY/3.1` together with `Connection: Upgrade`
    /// (`httpstream.IsUpgradeRequest`, `wsstream.IsWebSocketRequest`).
    #[error("unable to upgrade: the request is not a WebSocket or SPDY/3.1 upgrade request")]
    NotUpgrade,
    /// Text of `httpstream.Handshake` (k8s.io/apimachinery `pkg/util/httpstream/httpstream.go`),
    /// which the kubelet answers with 400 Bad Request.
    #[error("unable to upgrade: header X-Stream-Protocol-Version does not exist in request with {header_count} headers")]
    MissingProtocolVersion { header_count: usize },
    /// `httpstream.Handshake`, 400 Bad Request.
    #[error("unable to upgrade: header X-Stream-Protocol-Version contains {}, but no valid protocols", go_list(.values))]
    NoValidProtocolVersion { values: Vec<String> },
    /// `httpstream.Handshake`, 403 Forbidden plus `X-Accepted-Stream-Protocol-Versions`. kubectl
    /// shows it as "error: unable to upgrade connection: <this text>" (client-go
    /// `transport/spdy` `NewConnection`).
    #[error("unable to upgrade: unable to negotiate protocol: client supports {}, server accepts {}", go_list(.client), go_list(.server))]
    NoCommonSpdyProtocol {
        client: Vec<String>,
        server: &'static [&'static str],
    },
    /// Text of `wsstream` `handshake` (k8s.io/apimachinery
    /// `pkg/util/httpstream/wsstream/conn.go`); golang.org/x/net/websocket then answers 403.
    #[error("requested protocol(s) are not supported: {}; supports {}", go_list(.client), go_list(.server))]
    NoCommonWebSocketProtocol {
        client: Vec<String>,
        server: &'static [&'static str],
    },
    /// RFC 6455 section 4.2.1: the handshake needs a `Sec-WebSocket-Key`.
    #[error("websocket: missing or invalid Sec-WebSocket-Key")]
    MissingWebSocketKey,
    /// RFC 6455 section 4.4: only version 13 exists; answer 400 with `Sec-WebSocket-Version: 13`.
    #[error("websocket: unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedWebSocketVersion,
}

impl NegotiateError {
    /// The HTTP status the real server answers this error with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            NegotiateError::NoCommonSpdyProtocol { .. }
            | NegotiateError::NoCommonWebSocketProtocol { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Extra headers for the error response (`X-Accepted-Stream-Protocol-Versions` like
    /// `httpstream.Handshake`, `Sec-WebSocket-Version` like RFC 6455 section 4.4).
    pub fn response_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self {
            NegotiateError::NoCommonSpdyProtocol { server, .. } => {
                for p in *server {
                    headers.append(
                        HEADER_ACCEPTED_PROTOCOL_VERSIONS,
                        HeaderValue::from_static(p),
                    );
                }
            }
            NegotiateError::UnsupportedWebSocketVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        headers
    }
}

/// Formats a list the way Go's `%v` prints a `[]string`: `[a b c]`.
fn go_list<S: AsRef<str>>(items: &[S]) -> String {
    let joined: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", joined.join(" "))
}

/// Why a transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// kubelet's `waitForStreams` error text (k8s.io/kubelet
    /// `pkg/cri/streaming/remotecommand/httpstream.go`).
    #[error("timed out waiting for client to create streams")]
    StreamCreationTimeout,
    #[error("connection closed before the exec streams were set up: {0}")]
    ClosedBeforeReady(String),
    #[error("websocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("SPDY error: {0}")]
    Spdy(#[from] spdy::SpdyError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether the SPDY server limits what it sends to the windows the client grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpdySendFlowControl {
    /// Send without looking at the client's windows. This is what the real server does, and it
    /// must: moby/spdystream (the SPDY implementation of every kubectl and of the kubelet) never
    /// sends WINDOW_UPDATE or SETTINGS (its frame handler drops them as "unhandled frame type",
    /// `connection.go`), so honouring the 64 KiB initial window would stall any stdout larger
    /// than 64 KiB forever.
    #[default]
    Ignore,
    /// Never exceed the per-stream and connection windows (SPDY/3.1 sections 2.6.8 and 2.6.9);
    /// for clients that implement flow control.
    Enforce,
}

/// Tunables for [`accept_with_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportOptions {
    /// How long the SPDY client may take to open its streams.
    pub stream_creation_timeout: Duration,
    pub spdy_send_flow_control: SpdySendFlowControl,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            stream_creation_timeout: DEFAULT_STREAM_CREATION_TIMEOUT,
            spdy_send_flow_control: SpdySendFlowControl::Ignore,
        }
    }
}

/// Picks the transport for an exec request and builds the headers of the 101 response.
pub fn negotiate(headers: &HeaderMap) -> Result<(Negotiated, HeaderMap), NegotiateError> {
    negotiate_for(headers, &EXEC_PROTOCOLS)
}

/// Picks the transport among `protocols` and builds the headers of the 101 response.
pub fn negotiate_for(
    headers: &HeaderMap,
    protocols: &ServerProtocols,
) -> Result<(Negotiated, HeaderMap), NegotiateError> {
    // `httpstream.IsUpgradeRequest`: some `Connection` value contains "upgrade".
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("upgrade"));
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if !connection_upgrade {
        return Err(NegotiateError::NotUpgrade);
    }
    if upgrade.eq_ignore_ascii_case("websocket") {
        negotiate_websocket(headers, protocols.websocket)
    } else if upgrade.eq_ignore_ascii_case(SPDY_31) {
        negotiate_spdy(headers, protocols.spdy)
    } else {
        Err(NegotiateError::NotUpgrade)
    }
}

/// Splits comma-separated values spread over several header lines, like
/// `httpstream.commaSeparatedHeaderValues`.
fn comma_separated(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<Vec<String>> {
    let mut any = false;
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        any = true;
        let Ok(value) = value.to_str() else { continue };
        out.extend(
            value
                .split(',')
                .map(|p| p.trim_matches(' '))
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    any.then_some(out)
}

fn negotiate_websocket(
    headers: &HeaderMap,
    server: &'static [&'static str],
) -> Result<(Negotiated, HeaderMap), NegotiateError> {
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if version != Some("13") {
        return Err(NegotiateError::UnsupportedWebSocketVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .filter(|k| !k.is_empty())
        .ok_or(NegotiateError::MissingWebSocketKey)?;
    let client = comma_separated(headers, header::SEC_WEBSOCKET_PROTOCOL).unwrap_or_default();
    // The server's preference decides (v5 over v4), whatever order the client lists them in.
    let subprotocol = server
        .iter()
        .copied()
        .find(|p| client.iter().any(|c| c == p))
        .ok_or_else(|| NegotiateError::NoCommonWebSocketProtocol {
            client: client.clone(),
            server,
        })?;

    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    let mut response = HeaderMap::new();
    response.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    response.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|_| NegotiateError::MissingWebSocketKey)?,
    );
    response.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(subprotocol),
    );
    Ok((Negotiated::WebSocket { subprotocol }, response))
}

fn negotiate_spdy(
    headers: &HeaderMap,
    server: &'static [&'static str],
) -> Result<(Negotiated, HeaderMap), NegotiateError> {
    // Mirrors `httpstream.Handshake`, including its error texts and status codes.
    let client = comma_separated(headers, HEADER_PROTOCOL_VERSION).ok_or(
        NegotiateError::MissingProtocolVersion {
            // Go's server moves Host out of `req.Header`, so it is not counted.
            header_count: headers.keys_len() - usize::from(headers.contains_key(header::HOST)),
        },
    )?;
    if client.is_empty() {
        let values = headers
            .get_all(HEADER_PROTOCOL_VERSION)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        return Err(NegotiateError::NoValidProtocolVersion { values });
    }
    // `negotiateProtocol` takes the first client protocol the server knows.
    let protocol_version = client
        .iter()
        .find_map(|c| server.iter().copied().find(|s| s == c))
        .ok_or_else(|| NegotiateError::NoCommonSpdyProtocol {
            client: client.clone(),
            server,
        })?;

    // k8s.io/apimachinery `pkg/util/httpstream/spdy/upgrade.go` `UpgradeResponse` answers
    // `Connection: Upgrade`, `Upgrade: SPDY/3.1`; `Handshake` adds the chosen version.
    let mut response = HeaderMap::new();
    response.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response.insert(header::UPGRADE, HeaderValue::from_static(SPDY_31));
    response.insert(
        HEADER_PROTOCOL_VERSION,
        HeaderValue::from_static(protocol_version),
    );
    Ok((Negotiated::Spdy { protocol_version }, response))
}

/// Runs the exec transport on an upgraded connection (after the 101 response was sent) and
/// returns the [`ExecIo`] once the session is ready: immediately for WebSocket, once the client
/// has opened all expected streams for SPDY (at most [`DEFAULT_STREAM_CREATION_TIMEOUT`]).
pub async fn accept<IO>(
    io: IO,
    negotiated: &Negotiated,
    wanted: StreamsWanted,
) -> Result<ExecIo, TransportError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    accept_with_options(io, negotiated, wanted, TransportOptions::default()).await
}

/// [`accept`] with explicit [`TransportOptions`].
pub async fn accept_with_options<IO>(
    io: IO,
    negotiated: &Negotiated,
    wanted: StreamsWanted,
    options: TransportOptions,
) -> Result<ExecIo, TransportError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (exec_io, ends) = channels(wanted);
    match *negotiated {
        Negotiated::WebSocket { subprotocol } => ws::start(io, subprotocol, ends).await?,
        Negotiated::Spdy { .. } => spdy::start(io, wanted, options, ends).await?,
    }
    Ok(exec_io)
}

/// The transport's ends of the [`ExecIo`] channels.
pub(crate) struct TransportEnds {
    pub stdin: Option<mpsc::Sender<Bytes>>,
    pub stdout: Option<mpsc::Receiver<Bytes>>,
    pub stderr: Option<mpsc::Receiver<Bytes>>,
    pub status: oneshot::Receiver<serde_json::Value>,
}

/// stderr is never used with a TTY: the kubelet drops it (`NewOptions`: "Access to exec with tty
/// and stderr is not supported, bypassing stderr") and kubectl does not create the stream.
pub(crate) fn stderr_used(wanted: StreamsWanted) -> bool {
    wanted.stderr && !wanted.tty
}

fn channels(wanted: StreamsWanted) -> (ExecIo, TransportEnds) {
    let (stdin_tx, stdin_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (stdout_tx, stdout_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (stderr_tx, stderr_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (status_tx, status_rx) = oneshot::channel();
    let stderr = stderr_used(wanted);
    let exec_io = ExecIo {
        stdin: wanted.stdin.then_some(stdin_rx),
        stdout: wanted.stdout.then_some(stdout_tx),
        stderr: stderr.then_some(stderr_tx),
        status: status_tx,
    };
    let ends = TransportEnds {
        stdin: wanted.stdin.then_some(stdin_tx),
        stdout: wanted.stdout.then_some(stdout_rx),
        stderr: stderr.then_some(stderr_rx),
        status: status_rx,
    };
    (exec_io, ends)
}

/// The Status written when the runner drops its `status` sender without using it, so the client
/// never mistakes a lost status for success (an empty v4 error stream means success). The
/// runner drops it only when the connection is already gone (client left, or an outage, whose
/// reset of the socket keeps this from leaving: `server.rs`), so in practice no client reads it.
pub(crate) fn lost_status() -> serde_json::Value {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "exec runner ended without reporting a status",
        "reason": "InternalError",
        "code": 500,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn websocket_prefers_v5_and_computes_accept_key() {
        let req = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            // RFC 6455 section 1.3 example key.
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "sec-websocket-protocol",
                "v4.channel.k8s.io, v5.channel.k8s.io",
            ),
        ]);
        let (negotiated, resp) = negotiate(&req).unwrap();
        assert_eq!(
            negotiated,
            Negotiated::WebSocket {
                subprotocol: V5_CHANNEL_PROTOCOL
            }
        );
        assert_eq!(resp["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(resp["sec-websocket-protocol"], "v5.channel.k8s.io");
        assert_eq!(resp["upgrade"], "websocket");
        assert_eq!(resp["connection"], "Upgrade");
    }

    #[test]
    fn websocket_without_common_protocol_is_forbidden() {
        let req = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "base64.channel.k8s.io"),
        ]);
        let err = negotiate(&req).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::FORBIDDEN);
        assert_eq!(
            err.to_string(),
            "requested protocol(s) are not supported: [base64.channel.k8s.io]; \
             supports [v5.channel.k8s.io v4.channel.k8s.io]"
        );
    }

    #[test]
    fn spdy_picks_v4_from_kubectl_headers() {
        // kubectl sends one X-Stream-Protocol-Version line per protocol.
        let req = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v5.channel.k8s.io"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            (
                "x-stream-protocol-version",
                "v3.channel.k8s.io,v2.channel.k8s.io",
            ),
        ]);
        let (negotiated, resp) = negotiate(&req).unwrap();
        assert_eq!(
            negotiated,
            Negotiated::Spdy {
                protocol_version: V4_CHANNEL_PROTOCOL
            }
        );
        assert_eq!(resp["x-stream-protocol-version"], "v4.channel.k8s.io");
        assert_eq!(resp["upgrade"], "SPDY/3.1");
        assert_eq!(resp["connection"], "Upgrade");
    }

    #[test]
    fn spdy_errors_match_httpstream_handshake() {
        let req = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            (
                "x-stream-protocol-version",
                "v3.channel.k8s.io, v2.channel.k8s.io",
            ),
        ]);
        let err = negotiate(&req).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::FORBIDDEN);
        assert_eq!(
            err.to_string(),
            "unable to upgrade: unable to negotiate protocol: client supports \
             [v3.channel.k8s.io v2.channel.k8s.io], server accepts [v4.channel.k8s.io]"
        );
        assert_eq!(
            err.response_headers()["x-accepted-stream-protocol-versions"],
            "v4.channel.k8s.io"
        );

        let req = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        let err = negotiate(&req).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(
            err.to_string(),
            "unable to upgrade: header X-Stream-Protocol-Version does not exist in request with 2 headers"
        );

        let req = headers(&[("upgrade", "SPDY/3.1")]);
        assert_eq!(negotiate(&req).unwrap_err(), NegotiateError::NotUpgrade);
    }
}

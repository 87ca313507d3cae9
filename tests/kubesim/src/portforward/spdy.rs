//! The SPDY/3.1 `portforward.k8s.io` session of the kubelet's streaming server
//! (k8s.io/kubelet `pkg/cri/streaming/portforward/httpstream.go`), on the frame codec of
//! [`crate::exec_transport::spdy`].
//!
//! For every local connection the client opens an error stream, then a data stream, both with
//! the headers `port`, `requestID` and `streamType` (client-go `tools/portforward/portforward.go`
//! `handleConnection`). A stream with a missing or invalid header is reset
//! (`httpStreamReceived`; apimachinery `httpstream/spdy/connection.go` `newSpdyStream` →
//! spdystream `Reset`, RST_STREAM CANCEL); a valid one is answered with an empty SYN_REPLY. Once
//! both streams of a request ID are there the port is forwarded; a pair still incomplete after
//! the stream creation timeout gets "timed out waiting for streams" on its error stream. When the
//! forward ends the kubelet writes its error, if any, on the error stream and closes both
//! streams (FIN); the connection stays up for the next pair until the client closes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;

use super::PodTarget;
use crate::exec_transport::spdy::{
    encode_frame, read_frames, AbortOnDrop, Frame, HeaderCompressor, SpdyError, MAX_DATA_FRAME,
    RST_CANCEL, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM,
};

/// Frames queued for the writer.
const OUT_CAPACITY: usize = 64;
/// Chunks of one data stream queued for its forward (then the session stops reading the
/// socket, the TCP backpressure spdystream's blocking frame workers give).
const INBOUND_CAPACITY: usize = 16;

/// `api.StreamType`, `api.PortHeader`, `api.PortForwardRequestIDHeader` (k8s.io/api
/// `core/v1/types.go`), lower-cased as SPDY header names are.
const HEADER_STREAM_TYPE: &str = "streamtype";
const HEADER_PORT: &str = "port";
const HEADER_REQUEST_ID: &str = "requestid";

#[derive(Default)]
struct Pending {
    port: u16,
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Bytes>)>,
}

enum Event {
    Frame(Option<Result<Frame, SpdyError>>),
    Timeout(String),
}

/// Serves one port-forward connection until the client closes it.
pub async fn serve<IO>(io: IO, target: Arc<PodTarget>, stream_creation_timeout: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let (frames_tx, mut frames) = mpsc::channel(64);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(read_half, frames_tx)));
    let (out, out_rx) = mpsc::channel(OUT_CAPACITY);
    let writer = tokio::spawn(write_frames(write_half, out_rx));
    let (timeout_tx, mut timeouts) = mpsc::channel(16);
    let mut session = Session {
        out,
        target,
        timeout_tx,
        stream_creation_timeout,
        pending: HashMap::new(),
        inbound: HashMap::new(),
        forwards: JoinSet::new(),
        last_client_stream: 0,
        goaway_received: false,
    };
    loop {
        let event = tokio::select! {
            f = frames.recv() => Event::Frame(f),
            Some(id) = timeouts.recv() => Event::Timeout(id),
            // Reap finished forwards so a long session does not accumulate them.
            Some(_) = session.forwards.join_next() => continue,
        };
        let result = match event {
            Event::Frame(Some(Ok(frame))) => session.on_frame(frame).await,
            Event::Frame(Some(Err(e))) => Err(e),
            Event::Frame(None) => Err(SpdyError::ClientClosed),
            Event::Timeout(id) => session.on_timeout(&id).await,
        };
        if let Err(e) = result {
            debug!(error = %e, "port-forward SPDY session ended");
            break;
        }
    }
    // Dropping the session aborts every forward (closing its pod connection) and, with the last
    // frame sender gone, ends the writer.
    drop(session);
    let _ = writer.await;
}

async fn write_frames<W>(w: W, mut rx: mpsc::Receiver<Frame>)
where
    W: AsyncWrite + Unpin,
{
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let Ok(mut compressor) = HeaderCompressor::new() else {
        return;
    };
    let mut scratch = BytesMut::new();
    while let Some(frame) = rx.recv().await {
        scratch.clear();
        if encode_frame(&frame, &mut compressor, &mut scratch).is_err()
            || w.write_all(&scratch).await.is_err()
        {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

struct Session {
    out: mpsc::Sender<Frame>,
    target: Arc<PodTarget>,
    timeout_tx: mpsc::Sender<String>,
    stream_creation_timeout: Duration,
    /// Request IDs with one of their two streams.
    pending: HashMap<String, Pending>,
    /// Data stream id → its forward's input.
    inbound: HashMap<u32, mpsc::Sender<Bytes>>,
    forwards: JoinSet<()>,
    last_client_stream: u32,
    goaway_received: bool,
}

impl Session {
    async fn send(&self, frame: Frame) -> Result<(), SpdyError> {
        self.out
            .send(frame)
            .await
            .map_err(|_| SpdyError::ClientClosed)
    }

    async fn write_error(&self, stream_id: u32, msg: &str) -> Result<(), SpdyError> {
        self.send(Frame::Data {
            stream_id,
            fin: false,
            data: Bytes::copy_from_slice(msg.as_bytes()),
        })
        .await
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), SpdyError> {
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => self.on_syn_stream(stream_id, &headers).await?,
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if let Some(tx) = self.inbound.get(&stream_id) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        self.inbound.remove(&stream_id);
                    }
                }
                if fin {
                    // EOF for the forward's copy to the pod.
                    self.inbound.remove(&stream_id);
                }
            }
            // client-go resets the data stream once the pod side is done; a read of a reset
            // spdystream stream is EOF.
            Frame::RstStream { stream_id, .. } => {
                self.inbound.remove(&stream_id);
            }
            // Echo the client's pings (odd ids), as spdystream does.
            Frame::Ping(id) => {
                if !id.is_multiple_of(2) {
                    self.send(Frame::Ping(id)).await?;
                }
            }
            Frame::GoAway { .. } => self.goaway_received = true,
            // spdystream never sends WINDOW_UPDATE and ignores windows; so does this server
            // (see `SpdySendFlowControl::Ignore`).
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings(_)
            | Frame::WindowUpdate { .. }
            | Frame::Unknown => {}
        }
        Ok(())
    }

    async fn on_syn_stream(
        &mut self,
        stream_id: u32,
        headers: &[(String, String)],
    ) -> Result<(), SpdyError> {
        if self.goaway_received
            || stream_id.is_multiple_of(2)
            || stream_id <= self.last_client_stream
        {
            let status = if self.goaway_received {
                RST_REFUSED_STREAM
            } else {
                RST_PROTOCOL_ERROR
            };
            return self.send(Frame::RstStream { stream_id, status }).await;
        }
        self.last_client_stream = stream_id;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let (port, stream_type) = match validate(header(HEADER_PORT), header(HEADER_STREAM_TYPE)) {
            Ok(ok) => ok,
            Err(reason) => {
                debug!(stream_id, %reason, "port-forward stream rejected");
                return self
                    .send(Frame::RstStream {
                        stream_id,
                        status: RST_CANCEL,
                    })
                    .await;
            }
        };
        self.send(Frame::SynReply {
            stream_id,
            fin: false,
            headers: Vec::new(),
        })
        .await?;

        // Clients older than the requestID header get one from the stream id (`requestID`).
        let request_id = match header(HEADER_REQUEST_ID) {
            "" => match stream_type {
                StreamType::Error => stream_id.to_string(),
                StreamType::Data => stream_id.saturating_sub(2).to_string(),
            },
            id => id.to_string(),
        };
        if !self.pending.contains_key(&request_id) {
            self.pending.insert(
                request_id.clone(),
                Pending {
                    port,
                    ..Pending::default()
                },
            );
            let (tx, id, after) = (
                self.timeout_tx.clone(),
                request_id.clone(),
                self.stream_creation_timeout,
            );
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(id).await;
            });
        }
        let pair = self.pending.get_mut(&request_id).expect("inserted above");
        let duplicate = match stream_type {
            StreamType::Error if pair.error.is_some() => Some("error stream already assigned"),
            StreamType::Data if pair.data.is_some() => Some("data stream already assigned"),
            StreamType::Error => {
                pair.error = Some(stream_id);
                None
            }
            StreamType::Data => {
                let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
                self.inbound.insert(stream_id, tx);
                pair.data = Some((stream_id, rx));
                // The data stream's port is the one forwarded (`portForward`).
                pair.port = port;
                None
            }
        };
        if let Some(reason) = duplicate {
            if let Some(error) = pair.error {
                let msg = format!("error processing stream for request {request_id}: {reason}");
                self.write_error(error, &msg).await?;
            }
            return Ok(());
        }
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pending {
                port,
                error: Some(error),
                data: Some((data, inbound)),
            }) = self.pending.remove(&request_id)
            else {
                return Ok(());
            };
            self.forwards.spawn(forward_pair(
                self.target.clone(),
                port,
                error,
                data,
                inbound,
                self.out.clone(),
            ));
        }
        Ok(())
    }

    /// `monitorStreamPair`: a pair that is still incomplete gets the error on its error stream
    /// (if it has one) and is forgotten.
    async fn on_timeout(&mut self, request_id: &str) -> Result<(), SpdyError> {
        let Some(pair) = self.pending.remove(request_id) else {
            return Ok(());
        };
        if let Some((data, _)) = &pair.data {
            self.inbound.remove(data);
        }
        if let Some(error) = pair.error {
            // The kubelet prints its connection pointer here (`conn=%v`); kubesim has none.
            let msg = format!("(conn=spdy, request={request_id}) timed out waiting for streams");
            self.write_error(error, &msg).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamType {
    Error,
    Data,
}

/// `httpStreamReceived`'s checks, with its error texts.
fn validate(port: &str, stream_type: &str) -> Result<(u16, StreamType), String> {
    if port.is_empty() {
        return Err("\"port\" header is required".into());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("unable to parse \"{port}\" as a port"))?;
    if port < 1 {
        return Err(format!("port \"{port}\" must be > 0"));
    }
    match stream_type {
        "" => Err("\"streamType\" header is required".into()),
        "error" => Ok((port, StreamType::Error)),
        "data" => Ok((port, StreamType::Data)),
        other => Err(format!("invalid stream type \"{other}\"")),
    }
}

/// Forwards one pair's connection, then writes the kubelet's error (if any) and closes both
/// streams (`portForward`: `defer dataStream.Close(); defer errorStream.Close()`).
async fn forward_pair(
    target: Arc<PodTarget>,
    port: u16,
    error: u32,
    data: u32,
    inbound: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Frame>,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let pump = async {
        while let Some(chunk) = rx.recv().await {
            for piece in chunk.chunks(MAX_DATA_FRAME) {
                let frame = Frame::Data {
                    stream_id: data,
                    fin: false,
                    data: chunk.slice_ref(piece),
                };
                if out.send(frame).await.is_err() {
                    return;
                }
            }
        }
    };
    let (result, ()) = tokio::join!(target.forward(port, inbound, tx), pump);
    let mut frames = Vec::new();
    if let Err(msg) = result {
        frames.push(Frame::Data {
            stream_id: error,
            fin: false,
            data: Bytes::from(msg),
        });
    }
    for stream_id in [error, data] {
        frames.push(Frame::Data {
            stream_id,
            fin: true,
            data: Bytes::new(),
        });
    }
    for frame in frames {
        if out.send(frame).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_transport::spdy::tests::Client;
    use tokio::io::AsyncReadExt;

    /// The next frame, which must come.
    async fn next(c: &mut Client) -> Frame {
        c.next().await.expect("connection closed")
    }

    /// Collects data of `data`/`error` until both carried FIN.
    async fn until_fin(c: &mut Client, data: u32, error: u32) -> (Vec<u8>, Vec<u8>) {
        let (mut d, mut e, mut fins) = (Vec::new(), Vec::new(), 0);
        while fins < 2 {
            if let Frame::Data {
                stream_id,
                fin,
                data: bytes,
            } = next(c).await
            {
                match stream_id {
                    id if id == data => d.extend_from_slice(&bytes),
                    id if id == error => e.extend_from_slice(&bytes),
                    other => panic!("data on stream {other}"),
                }
                fins += usize::from(fin);
            }
        }
        (d, e)
    }

    fn pair_headers<'a>(port: &'a str, id: &'a str, ty: &'a str) -> [(&'a str, &'a str); 3] {
        [("streamType", ty), ("port", port), ("requestID", id)]
    }

    /// Two forwarded connections over one session, as kubectl makes them: a pod-side echo
    /// server gets 300 kB back and forth; a closed port gets containerd's error; a stream
    /// without a port header is reset; a lone error stream times out.
    #[tokio::test]
    async fn pairs_forward_refuse_reject_and_time_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 300_000];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            // Closing ends the forward (after containerd's grace for the other direction).
        });
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // This test process plays the pod: it owns the listener.
        let target = Arc::new(PodTarget::with_pids("uid-1", vec![std::process::id()]));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(server_io, target, Duration::from_millis(500)));
        let mut c = Client::new(client_io);

        let p = port.to_string();
        c.open_with(1, &pair_headers(&p, "0", "error")).await;
        c.open_with(3, &pair_headers(&p, "0", "data")).await;
        for id in [1, 3] {
            assert!(
                matches!(next(&mut c).await, Frame::SynReply { stream_id, .. } if stream_id == id)
            );
        }
        let input: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
        for chunk in input.chunks(16 * 1024) {
            c.send(Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::copy_from_slice(chunk),
            })
            .await;
        }
        let (echoed, error) = until_fin(&mut c, 3, 1).await;
        assert!(echoed == input, "echo differs");
        assert!(error.is_empty(), "{}", String::from_utf8_lossy(&error));

        let q = closed.to_string();
        c.open_with(5, &pair_headers(&q, "1", "error")).await;
        c.open_with(7, &pair_headers(&q, "1", "data")).await;
        let (data, error) = until_fin(&mut c, 7, 5).await;
        assert!(data.is_empty());
        let error = String::from_utf8(error).unwrap();
        assert!(
            error.contains(&format!(
                "failed to connect to localhost:{closed} inside namespace"
            )) && error.contains("connection refused"),
            "{error}"
        );

        c.open_with(9, &[("streamType", "data"), ("requestID", "2")])
            .await;
        assert_eq!(
            next(&mut c).await,
            Frame::RstStream {
                stream_id: 9,
                status: RST_CANCEL
            }
        );

        c.open_with(11, &pair_headers(&p, "3", "error")).await;
        let timed_out = loop {
            if let Frame::Data {
                stream_id: 11,
                data,
                ..
            } = next(&mut c).await
            {
                break String::from_utf8(data.to_vec()).unwrap();
            }
        };
        assert_eq!(
            timed_out,
            "(conn=spdy, request=3) timed out waiting for streams"
        );

        drop(c);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("session ends with the connection")
            .unwrap();
    }

    #[test]
    fn stream_headers_checked_like_the_kubelet() {
        assert_eq!(validate("8080", "data"), Ok((8080, StreamType::Data)));
        assert_eq!(validate("1", "error"), Ok((1, StreamType::Error)));
        assert_eq!(
            validate("", "data").unwrap_err(),
            "\"port\" header is required"
        );
        assert_eq!(validate("0", "data").unwrap_err(), "port \"0\" must be > 0");
        assert_eq!(
            validate("70000", "data").unwrap_err(),
            "unable to parse \"70000\" as a port"
        );
        assert_eq!(
            validate("80", "").unwrap_err(),
            "\"streamType\" header is required"
        );
        assert_eq!(
            validate("80", "stdout").unwrap_err(),
            "invalid stream type \"stdout\""
        );
    }
}

//! The WebSocket side of `pods/portforward`: the kubelet's `v4.channel.k8s.io` channel protocol
//! ([`serve_channels`]) and the apiserver's SPDY-over-WebSocket tunnel ([`tunnel`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::PodTarget;
use crate::exec_transport::ws::send_channel;

/// Chunks of one port's data queued for its forward.
const INBOUND_CAPACITY: usize = 16;
/// How long to wait for the client's answer to our Close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer between the tunnel's WebSocket and the SPDY session it carries.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// Serves `ports` over the channel protocol until every port's forward has ended or the client
/// has gone (k8s.io/kubelet `pkg/cri/streaming/portforward/websocket.go`
/// `handleWebSocketStreams`): channel `2i` carries port i's data both ways, channel `2i+1` its
/// error; the server first writes the port (u16, little-endian) on both; each port is forwarded
/// once, as soon as the connection is up, and the connection closes (Close 1000, as
/// x/net/websocket's `Close` sends) when every forward is done.
pub async fn serve_channels<IO>(io: IO, ports: Vec<u16>, target: Arc<PodTarget>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut stream) = ws.split();
    for (i, port) in ports.iter().enumerate() {
        for channel in [2 * i, 2 * i + 1] {
            let Ok(channel) = u8::try_from(channel) else {
                return;
            };
            if send_channel(&mut sink, channel, &port.to_le_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    let (out, mut out_rx) = mpsc::channel::<(u8, Bytes)>(64);
    let mut inbound = Vec::with_capacity(ports.len());
    let mut forwards = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        inbound.push(Some(tx));
        let (target, out) = (target.clone(), out.clone());
        // Both channel numbers fit in a u8: checked when the port frames were sent.
        let data = (2 * i) as u8;
        forwards.spawn(async move {
            let (tx, mut from_pod) = mpsc::channel::<Bytes>(4);
            let pump = async {
                while let Some(chunk) = from_pod.recv().await {
                    if out.send((data, chunk)).await.is_err() {
                        return;
                    }
                }
            };
            let (result, ()) = tokio::join!(target.forward(port, rx, tx), pump);
            if let Err(msg) = result {
                let _ = out.send((data + 1, Bytes::from(msg))).await;
            }
        });
    }
    drop(out);

    let reader = async {
        while let Some(message) = stream.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Text(text)) => Bytes::from(text),
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => {
                    debug!(error = %e, "port-forward websocket read ended");
                    break;
                }
            };
            let Some((&channel, _)) = data.split_first() else {
                continue;
            };
            // Only data channels are readable (`ReadWriteChannel`); the kubelet ignores what
            // arrives on error channels (`WriteChannel`).
            if channel % 2 != 0 {
                continue;
            }
            let index = usize::from(channel / 2);
            let Some(Some(tx)) = inbound.get(index) else {
                continue;
            };
            if tx.send(data.slice(1..)).await.is_err() {
                inbound[index] = None;
            }
        }
        // The client is gone: every forward's copy to the pod reads EOF.
        inbound.clear();
    };
    let writer = async {
        while let Some((channel, chunk)) = out_rx.recv().await {
            if send_channel(&mut sink, channel, &chunk).await.is_err() {
                return;
            }
        }
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = sink.send(close).await;
    };
    tokio::pin!(reader, writer);
    tokio::select! {
        () = &mut reader => {
            // Let the forwards finish their grace period, then drop whatever is left.
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, &mut writer).await;
        }
        () = &mut writer => {
            // Wait for the client's answer to our Close.
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, &mut reader).await;
        }
    }
    forwards.abort_all();
}

/// Turns a WebSocket carrying SPDY (`SPDY/3.1+portforward.k8s.io`) back into the byte stream
/// the SPDY session reads and writes. client-go's `TunnelingConnection` writes each chunk of its
/// SPDY stream as one binary message and reads binary messages back to back, rejecting any other
/// type ("invalid message type received"); a Close with 1000 is its EOF.
pub async fn tunnel<IO>(io: IO) -> DuplexStream
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (ours, theirs) = tokio::io::duplex(TUNNEL_BUFFER);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let (mut r, mut w) = tokio::io::split(ours);
        let up = async {
            while let Some(message) = stream.next().await {
                match message {
                    Ok(Message::Binary(data)) => {
                        if w.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                    Ok(Message::Text(_) | Message::Close(_)) | Err(_) => break,
                }
            }
            let _ = w.shutdown().await;
        };
        let down = async {
            let mut buf = vec![0u8; TUNNEL_BUFFER];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }));
            let _ = sink.send(close).await;
        };
        tokio::join!(up, down);
    });
    theirs
}

//! Server side of the Kubernetes WebSocket channel protocol (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`) for `pods/exec`.
//!
//! Every message is binary and starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error
//! (the JSON `metav1.Status`), 4 resize; v5 adds 255 = "close", whose single payload byte is the
//! channel the client half-closes (k8s.io/apimachinery `pkg/util/remotecommand/constants.go`,
//! `pkg/util/httpstream/wsstream/conn.go` `handle`).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::{lost_status, TransportEnds, TransportError, V5_CHANNEL_PROTOCOL};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
/// `remotecommand.StreamClose`, v5 only.
const CLOSE_SIGNAL: u8 = 255;

/// How long to wait for the client's answer to our Close frame before dropping the connection.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type Sink<IO> = SplitSink<WebSocketStream<IO>, Message>;

pub(crate) async fn start<IO>(
    io: IO,
    subprotocol: &'static str,
    ends: TransportEnds,
) -> Result<(), TransportError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The HTTP handshake (101 with Sec-WebSocket-Accept) was done by the HTTP server.
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, stream) = ws.split();

    // "Send an empty message to the lowest writable channel to notify the client the connection
    // is established" (k8s.io/apiserver `pkg/util/proxy/websocket.go` `createWebSocketStreams`;
    // the kubelet's `pkg/cri/streaming/remotecommand/websocket.go` does the same for v4).
    let first = if ends.stdout.is_some() {
        STDOUT
    } else if ends.stderr.is_some() {
        STDERR
    } else {
        ERROR
    };
    sink.send(Message::Binary(Bytes::copy_from_slice(&[first])))
        .await?;

    let supports_close = subprotocol == V5_CHANNEL_PROTOCOL;
    let reader = tokio::spawn(read_loop(stream, ends.stdin, supports_close));
    tokio::spawn(write_loop(
        sink,
        reader,
        ends.stdout,
        ends.stderr,
        ends.status,
    ));
    Ok(())
}

/// Demultiplexes client messages, like wsstream `Conn.handle`: stdin goes to the runner, the v5
/// close signal for channel 0 ends stdin, resize and unknown channels are dropped. Returns when
/// the client closes or disconnects; dropping `stdin` then tells the runner EOF.
async fn read_loop<IO>(
    mut stream: SplitStream<WebSocketStream<IO>>,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    supports_close: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // Pings are answered by tungstenite itself: the Pong is queued on receipt and flushed by the
    // next read or write. client-go's heartbeat pings every 5 s and gives up after ~61 s without
    // a Pong (client-go `tools/remotecommand/websocket.go`, `pingPeriod`/`pingReadDeadline`).
    while let Some(message) = stream.next().await {
        let data: Bytes = match message {
            Ok(Message::Binary(data)) => data,
            // golang.org/x/net/websocket's `Message.Receive` into []byte accepts text frames too.
            Ok(Message::Text(text)) => Bytes::from(text),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                debug!(error = %e, "exec websocket read ended");
                break;
            }
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue; // wsstream skips empty messages
        };
        if supports_close && channel == CLOSE_SIGNAL {
            // wsstream: "Single channel byte should follow stream close signal", else it stops
            // reading (a protocol error ends the connection).
            if payload.len() != 1 {
                debug!(len = payload.len(), "malformed v5 close signal");
                break;
            }
            if payload[0] == STDIN {
                stdin = None;
            }
            continue;
        }
        if channel == STDIN {
            if let Some(tx) = &stdin {
                // Blocking here (the runner is not reading stdin) stops reading the socket, as the
                // real server's io.Pipe does.
                if tx.send(data.slice(1..)).await.is_err() {
                    stdin = None; // the runner no longer wants stdin; discard the rest
                }
            }
        }
        // Channel 4 (resize) and anything else: ExecIo has no resize, drop it.
    }
}

async fn write_loop<IO>(
    mut sink: Sink<IO>,
    mut reader: tokio::task::JoinHandle<()>,
    mut stdout: Option<mpsc::Receiver<Bytes>>,
    mut stderr: Option<mpsc::Receiver<Bytes>>,
    mut status: tokio::sync::oneshot::Receiver<serde_json::Value>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let status = loop {
        tokio::select! {
            chunk = recv(&mut stdout) => match chunk {
                Some(chunk) => {
                    if send_channel(&mut sink, STDOUT, &chunk).await.is_err() {
                        return; // client gone: dropping the receivers fails the runner's sends
                    }
                }
                None => stdout = None,
            },
            chunk = recv(&mut stderr) => match chunk {
                Some(chunk) => {
                    if send_channel(&mut sink, STDERR, &chunk).await.is_err() {
                        return;
                    }
                }
                None => stderr = None,
            },
            result = &mut status => break result.unwrap_or_else(|_| lost_status()),
            _ = &mut reader => {
                // The client closed or vanished before the process ended. Returning drops the
                // stdout/stderr receivers so the runner's sends fail and it kills the process.
                debug!("exec websocket client went away before the status");
                return;
            }
        }
    };

    // The runner sends all its output before the status; whatever is still queued goes first.
    for (channel, rx) in [(STDOUT, &mut stdout), (STDERR, &mut stderr)] {
        if let Some(rx) = rx {
            while let Ok(chunk) = rx.try_recv() {
                if send_channel(&mut sink, channel, &chunk).await.is_err() {
                    return;
                }
            }
        }
    }
    drop((stdout, stderr));

    let json = match serde_json::to_vec(&status) {
        Ok(json) => json,
        Err(_) => b"{}".to_vec(),
    };
    if send_channel(&mut sink, ERROR, &json).await.is_err() {
        return;
    }
    // The apiserver closes the connection after the status (`conn.Close()`); x/net/websocket
    // sends a Close frame with 1000. client-go maps 1000 to io.EOF on every stream.
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    if sink.send(close).await.is_err() {
        return;
    }
    // Wait for the client's Close answer (read by the reader task) so unread input does not make
    // our close a TCP reset that could destroy the status in flight.
    if tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    let _ = sink.close().await;
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn send_channel<IO>(
    sink: &mut Sink<IO>,
    channel: u8,
    data: &[u8],
) -> Result<(), TransportError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut frame = BytesMut::with_capacity(data.len() + 1);
    frame.put_u8(channel);
    frame.put_slice(data);
    sink.send(Message::Binary(frame.freeze())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_io::{ExecIo, StreamsWanted};
    use crate::exec_transport::{accept, Negotiated};

    /// Echoes stdin to stdout, writes a line to stderr, then reports success.
    async fn echo_runner(io: ExecIo) {
        let ExecIo {
            stdin,
            stdout,
            stderr,
            status,
        } = io;
        let (mut stdin, stdout) = (stdin.unwrap(), stdout.unwrap());
        while let Some(chunk) = stdin.recv().await {
            if stdout.send(chunk).await.is_err() {
                return;
            }
        }
        stderr
            .unwrap()
            .send(Bytes::from_static(b"bye\n"))
            .await
            .unwrap();
        let _ = status.send(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"
        }));
    }

    #[tokio::test]
    async fn v5_exec_round_trip() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let wanted = StreamsWanted {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let server = tokio::spawn(async move {
            let io = accept(
                server_io,
                &Negotiated::WebSocket {
                    subprotocol: V5_CHANNEL_PROTOCOL,
                },
                wanted,
            )
            .await
            .unwrap();
            echo_runner(io).await;
        });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;

        // The initial empty message on the lowest writable channel.
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(first, Message::Binary(Bytes::from_static(&[STDOUT])));

        client
            .send(Message::Ping(Bytes::from_static(b"hb")))
            .await
            .unwrap();
        let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in input.chunks(10_000) {
            let mut frame = vec![STDIN];
            frame.extend_from_slice(chunk);
            client.send(Message::Binary(frame.into())).await.unwrap();
        }
        // v5 close signal for stdin.
        client
            .send(Message::Binary(Bytes::from_static(&[CLOSE_SIGNAL, STDIN])))
            .await
            .unwrap();

        let (mut out, mut err, mut status, mut pong) = (Vec::new(), Vec::new(), None, false);
        let close = loop {
            match client.next().await.unwrap().unwrap() {
                Message::Binary(data) => match data[0] {
                    STDOUT => out.extend_from_slice(&data[1..]),
                    STDERR => err.extend_from_slice(&data[1..]),
                    ERROR => {
                        status =
                            Some(serde_json::from_slice::<serde_json::Value>(&data[1..]).unwrap())
                    }
                    c => panic!("unexpected channel {c}"),
                },
                Message::Pong(p) => {
                    assert_eq!(&p[..], b"hb");
                    pong = true;
                }
                Message::Close(frame) => break frame,
                other => panic!("unexpected message {other:?}"),
            }
        };
        assert!(pong, "ping was not answered");
        assert_eq!(out, input);
        assert_eq!(err, b"bye\n");
        assert_eq!(status.unwrap()["status"], "Success");
        assert_eq!(close.unwrap().code, CloseCode::Normal);
        // tungstenite answers the close; the server then ends.
        assert!(client.next().await.is_none());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn client_disconnect_fails_runner_sends() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let wanted = StreamsWanted {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let io = {
            let accept = accept(
                server_io,
                &Negotiated::WebSocket {
                    subprotocol: "v4.channel.k8s.io",
                },
                wanted,
            );
            let (io, mut client) = tokio::join!(accept, async {
                WebSocketStream::from_raw_socket(client_io, Role::Client, None).await
            });
            let first = client.next().await.unwrap().unwrap();
            assert_eq!(first, Message::Binary(Bytes::from_static(&[STDOUT])));
            drop(client);
            io.unwrap()
        };
        assert!(io.stderr.is_none(), "no stderr with a tty");
        let stdout = io.stdout.unwrap();
        let mut stdin = io.stdin.unwrap();
        // stdin ends, and stdout sends fail once the transport noticed the disconnect.
        assert!(tokio::time::timeout(Duration::from_secs(5), stdin.recv())
            .await
            .unwrap()
            .is_none());
        let failed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if stdout.send(Bytes::from_static(b"x")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            failed.is_ok(),
            "stdout sends kept succeeding after disconnect"
        );
    }
}

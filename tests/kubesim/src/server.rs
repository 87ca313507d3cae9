//! The HTTPS listener: TLS on 127.0.0.1, HTTP/1.1 with upgrades (exec), and the outage fault,
//! during which new connections are reset and open ones are reset too — upgraded exec streams
//! included — as when the API server process dies: its peers see `ECONNRESET`, not a goodbye.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api;
use crate::sim::SimRef;

pub async fn serve(
    sim: SimRef,
    listener: TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if sim.faults.in_outage() {
            // SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer".
            // (Deprecated because a non-zero linger blocks on drop; zero does not.)
            #[allow(deprecated)]
            let _ = tcp.set_linger(Some(Duration::ZERO));
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let sim = sim.clone();
        let acceptor = acceptor.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut outage = sim.faults.outage_signal();
            let tcp = Severable::new(tcp, sim.faults.outage_signal());
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    _ => return,
                };
            let svc_sim = sim.clone();
            let svc = service_fn(move |req| api::handle(svc_sim.clone(), req));
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = outage.changed() => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// A server-side TCP connection that an outage kills: from the moment an outage starts, every
/// read and write fails and the socket is closed with `SO_LINGER` 0, which sends a TCP RST.
/// The check is made on every poll, so nothing (not a final chunk, not an exec Status) leaves
/// after the outage began; a pending read is woken by the outage itself. Wrapping the socket
/// (rather than the HTTP connection) reaches upgraded exec streams too, which hyper hands to
/// the exec transport.
struct Severable {
    tcp: TcpStream,
    generation: u64,
    outage: watch::Receiver<u64>,
    changed: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
}

impl Severable {
    fn new(tcp: TcpStream, outage: watch::Receiver<u64>) -> Self {
        let generation = *outage.borrow();
        let mut rx = outage.clone();
        Severable {
            tcp,
            generation,
            outage,
            changed: Box::pin(async move {
                let _ = rx.changed().await;
            }),
        }
    }

    fn severed(&self) -> bool {
        *self.outage.borrow() != self.generation
    }

    /// Fails the call if the outage began (registering the waker when it has not).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.severed() || self.changed.as_mut().poll(cx).is_ready() {
            // (Deprecated because a non-zero linger blocks on drop; zero does not.)
            #[allow(deprecated)]
            let _ = self.tcp.set_linger(Some(Duration::ZERO));
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "kubesim outage: connection reset",
            ));
        }
        Ok(())
    }
}

impl Drop for Severable {
    fn drop(&mut self) {
        if self.severed() {
            #[allow(deprecated)]
            let _ = self.tcp.set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for Severable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Severable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

//! The HTTPS listener: TLS on 127.0.0.1, HTTP/1.1 with upgrades (exec), and the outage fault,
//! during which new connections are reset and open ones are dropped.

use std::time::Duration;

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

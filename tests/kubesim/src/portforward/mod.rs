//! `pods/portforward`, as the apiserver, the kubelet's streaming server and containerd serve it.
//!
//! Three transports reach the same forwarder:
//! * SPDY/3.1 with `X-Stream-Protocol-Version: portforward.k8s.io` (kubectl ≤ 1.30, and the
//!   fallback of newer kubectl): one stream pair per forwarded TCP connection, each stream
//!   carrying the headers `port`, `requestID` and `streamType` (`data` or `error`)
//!   (k8s.io/kubelet `pkg/cri/streaming/portforward/httpstream.go`; client-go
//!   `tools/portforward/portforward.go` `handleConnection`). See [`spdy`].
//! * WebSocket `v4.channel.k8s.io` with a `ports` query parameter (kube-rs `Api::portforward`):
//!   channel `2i` is port i's data, `2i+1` its error, and the server's first message on each
//!   channel is the port, little-endian u16 (k8s.io/kubelet
//!   `pkg/cri/streaming/portforward/websocket.go`). See [`ws`].
//! * WebSocket `SPDY/3.1+portforward.k8s.io` (kubectl ≥ 1.31, feature PortForwardWebsockets):
//!   the SPDY session of the first case, its bytes carried in binary WebSocket messages
//!   (client-go `tools/portforward/tunneling_connection.go`; the apiserver's
//!   `pkg/util/proxy/streamtunnel.go` `TunnelingHandler`, which proxies it to the kubelet as a
//!   plain SPDY upgrade).
//!
//! What a forwarded port connects to: kubesim has no network namespaces, so a container's
//! listening socket is on the host's loopback, next to every other pod's and the host's. A
//! connection is made only to a port on which a process of *this* pod listens (on a loopback
//! or wildcard address), found by matching the socket inodes of `/proc/net/tcp{,6}` with the
//! pod's processes' file descriptors; anything else is answered as containerd answers a port
//! nothing listens on in the pod's namespace, "connection refused", on the error stream.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::api::{full, Body, Target};
use crate::errors::{ApiError, ApiResult};
use crate::exec_transport::{self, Negotiated, ServerProtocols, V4_CHANNEL_PROTOCOL};
use crate::resources;
use crate::sandbox::Container;
use crate::sim::SimRef;

pub mod spdy;
pub mod ws;

/// `portforward.PortForwardProtocolV1Name` (k8s.io/apimachinery `pkg/util/portforward`).
pub const PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// `constants.WebsocketsSPDYTunnelingPortForwardV1`: `SPDY/3.1+` + the SPDY protocol.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The apiserver tunnels `SPDY/3.1+portforward.k8s.io` itself and proxies every other
/// WebSocket request to the kubelet, whose port-forward server speaks `v4.channel.k8s.io`
/// (also `v4.base64.channel.k8s.io` and no subprotocol at all, which kubesim does not serve).
/// No `v5.channel.k8s.io` here: that is remotecommand's (kube-rs offers v5 then v4 and gets v4).
pub const PORTFORWARD_PROTOCOLS: ServerProtocols = ServerProtocols {
    websocket: &[TUNNEL_PROTOCOL, V4_CHANNEL_PROTOCOL],
    spdy: &[PORTFORWARD_PROTOCOL],
};

/// containerd's `dialTimeout` for each connect attempt
/// (`internal/cri/server/sandbox_portforward_linux.go`).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// After one direction of a forwarded connection ends, containerd gives the other this long
/// before closing everything ("give a chance to terminate gracefully or timeout after 1s",
/// same file).
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Read buffer of the pod-side connection (Go's `io.Copy` buffer).
const COPY_BUFFER: usize = 32 * 1024;

pub async fn handle(
    sim: SimRef,
    t: Target,
    q: HashMap<String, Vec<String>>,
    mut req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let name = t.name.clone().unwrap_or_default();
    let ns = t.namespace.clone().unwrap_or_default();
    let pod = sim.store.get(resources::pods(), Some(&ns), &name)?;
    let node = crate::exec::kubelet_node(&sim, &pod)?;
    let (negotiated, headers) =
        exec_transport::negotiate_for(req.headers(), &PORTFORWARD_PROTOCOLS)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Only the kubelet's WebSocket server reads `ports`; SPDY streams name their port in a
    // header (`NewV4Options` returns empty options for anything but a WebSocket request).
    let ports = match negotiated {
        Negotiated::WebSocket {
            subprotocol: V4_CHANNEL_PROTOCOL,
        } => parse_ports(&q).map_err(ApiError::bad_request)?,
        _ => Vec::new(),
    };
    let target = Arc::new(PodTarget::new(&sim, &pod, node)?);

    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!("portforward upgrade failed: {e}");
                return;
            }
        };
        match negotiated {
            Negotiated::Spdy { .. } => {
                spdy::serve(
                    upgraded,
                    target,
                    exec_transport::DEFAULT_STREAM_CREATION_TIMEOUT,
                )
                .await
            }
            Negotiated::WebSocket {
                subprotocol: TUNNEL_PROTOCOL,
            } => {
                let tunnel = ws::tunnel(upgraded).await;
                spdy::serve(
                    tunnel,
                    target,
                    exec_transport::DEFAULT_STREAM_CREATION_TIMEOUT,
                )
                .await
            }
            Negotiated::WebSocket { .. } => ws::serve_channels(upgraded, ports, target).await,
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The `ports` query parameter of a WebSocket request, with the kubelet's error texts
/// (`NewV4Options`, k8s.io/kubelet `pkg/cri/streaming/portforward/websocket.go`).
fn parse_ports(q: &HashMap<String, Vec<String>>) -> Result<Vec<u16>, String> {
    let values = q.get("ports").map(Vec::as_slice).unwrap_or_default();
    if values.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    let mut ports = Vec::new();
    for value in values {
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in value.split(',') {
            let port: u16 = p.parse().map_err(|_| {
                format!("unable to parse \"{value}\" as a port: strconv.ParseUint: parsing \"{p}\": invalid syntax")
            })?;
            if port < 1 {
                return Err(format!("port \"{value}\" must be > 0"));
            }
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The pod a port-forward session reaches: its running containers (whose processes may own
/// listening sockets) and the names containerd would print in its errors.
pub struct PodTarget {
    processes: Processes,
    /// The CRI sandbox ID, which the kubelet passes on as the "pod" of its error messages.
    sandbox_id: String,
    /// The network namespace path containerd names in its errors (`/var/run/netns/cni-<uuid>`).
    netns: String,
    /// The pod's node: while it is NotReady (unreachable), forwarded bytes stall both ways, as
    /// an exec stream's do (see `exec::reachable`).
    node: Option<(SimRef, String)>,
}

impl PodTarget {
    fn new(sim: &SimRef, pod: &serde_json::Value, node: String) -> ApiResult<PodTarget> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let containers: Vec<Arc<Container>> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .filter_map(|c| sim.runtime.container(uid, &c))
            .filter(|c| c.is_running())
            .collect();
        if containers.is_empty() {
            // kubectl itself refuses a pod that is not Running before it asks ("unable to
            // forward port because pod is not running"); a client that asks anyway finds no
            // sandbox to forward into.
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: pod {name} has no running container"
            )));
        }
        let mut target = PodTarget::new_named(uid, Processes::Containers(containers));
        target.node = Some((sim.clone(), node));
        Ok(target)
    }

    /// A target whose processes are `pids` (a test's own process, say), named after `uid`.
    pub fn with_pids(uid: &str, pids: Vec<u32>) -> PodTarget {
        PodTarget::new_named(uid, Processes::Pids(pids))
    }

    fn new_named(uid: &str, processes: Processes) -> PodTarget {
        use sha2::Digest;
        let hex = |s: &str| -> String {
            sha2::Sha256::digest(s.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let ns_id = hex(&format!("netns/{uid}"));
        PodTarget {
            node: None,
            processes,
            sandbox_id: hex(&format!("sandbox/{uid}")),
            netns: format!(
                "/var/run/netns/cni-{}-{}-{}-{}-{}",
                &ns_id[0..8],
                &ns_id[8..12],
                &ns_id[12..16],
                &ns_id[16..20],
                &ns_id[20..32]
            ),
        }
    }

    /// Waits while the pod's node is unreachable; false if `client` went away meanwhile.
    async fn reachable(&self, client: Option<&mpsc::Sender<Bytes>>) -> bool {
        match &self.node {
            Some((sim, node)) => crate::exec::reachable(sim, node, client).await,
            None => true,
        }
    }

    /// Where a connection to `port` "inside the pod" goes: 127.0.0.1 or ::1, if a process of
    /// this pod listens there (IPv4 first, like containerd's `dialLocalhost`).
    fn loopback_listener(&self, port: u16) -> Option<SocketAddr> {
        let listeners = listening_sockets(port);
        if listeners.is_empty() {
            return None;
        }
        let owned = |inode: u64| {
            let wanted = format!("socket:[{inode}]");
            self.processes.pids().into_iter().any(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|l| l.as_os_str() == wanted.as_str())
                    })
            })
        };
        let mut v6 = None;
        for l in listeners {
            if !owned(l.inode) {
                continue;
            }
            match l.family {
                Family::V4 => return Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
                // A dual-stack wildcard (`[::]:port`, what busybox binds) takes IPv4 too; it is
                // still tried as IPv4 first, as containerd does.
                Family::V6 { wildcard: true } => {
                    return Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
                }
                Family::V6 { wildcard: false } => {
                    v6 = Some(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
                }
            }
        }
        v6
    }

    /// The error containerd returns when nothing listens on `port` in the pod's network
    /// namespace (`dialLocalhost` tries tcp4 then tcp6 localhost; containerd 1.7:
    /// "failed to connect to localhost:%d inside namespace %q, IPv4: %v IPv6 %v "), wrapped by
    /// `portForward` ("failed to execute portforward in network namespace %q: %w") and by the
    /// kubelet's stream handler ("error forwarding port %d to pod %s, uid %v: %v", the uid
    /// empty on the CRI path). As seen by users, e.g. olric-data/olric#262.
    fn refused(&self, port: u16) -> String {
        self.wrap(
            port,
            &format!(
                "failed to connect to localhost:{port} inside namespace \"{}\", IPv4: dial tcp4 127.0.0.1:{port}: connect: connection refused IPv6 dial tcp6 [::1]:{port}: connect: connection refused ",
                self.sandbox_id
            ),
        )
    }

    fn wrap(&self, port: u16, cause: &str) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid : failed to execute portforward in network namespace \"{}\": {cause}",
            self.sandbox_id, self.netns
        )
    }

    async fn dial(&self, port: u16) -> Result<TcpStream, String> {
        let Some(addr) = self.loopback_listener(port) else {
            return Err(self.refused(port));
        };
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            // The listener went away between the look-up and the connect.
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(self.refused(port)),
            Ok(Err(e)) => Err(self.wrap(port, &format!("dial tcp {addr}: {e}"))),
            Err(_) => Err(self.wrap(port, &format!("dial tcp {addr}: i/o timeout"))),
        }
    }

    /// Forwards one connection to `port`: what arrives on `inbound` is written to the pod's
    /// socket, what the pod sends goes to `outbound`. Like containerd's `portForward`, the
    /// first direction to end (EOF or error) gives the other [`HALF_CLOSE_GRACE`], then the
    /// connection is closed (never half-closed: the pod sees EOF only when it is closed). The
    /// error is the text the kubelet writes on the port's error stream.
    pub async fn forward(
        &self,
        port: u16,
        mut inbound: mpsc::Receiver<Bytes>,
        outbound: mpsc::Sender<Bytes>,
    ) -> Result<(), String> {
        let stream = self.dial(port).await?;
        let peer = stream.peer_addr().ok();
        let local = stream.local_addr().ok();
        let (mut r, mut w) = stream.into_split();
        let to_pod = async {
            while let Some(chunk) = inbound.recv().await {
                self.reachable(None).await;
                w.write_all(&chunk).await.map_err(|e| ("write", e))?;
            }
            Ok::<(), (&str, io::Error)>(())
        };
        let from_pod = async {
            let mut buf = vec![0u8; COPY_BUFFER];
            loop {
                let n = r.read(&mut buf).await.map_err(|e| ("read", e))?;
                if n == 0 {
                    return Ok::<(), (&str, io::Error)>(());
                }
                if !self.reachable(Some(&outbound)).await {
                    return Ok(());
                }
                if outbound
                    .send(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
                {
                    // The client's stream is gone; containerd's copy would fail writing to it
                    // and the kubelet's message would go nowhere.
                    return Ok(());
                }
            }
        };
        tokio::pin!(to_pod, from_pod);
        let (first, to_pod_first) = tokio::select! {
            r = &mut to_pod => (r, true),
            r = &mut from_pod => (r, false),
        };
        let rest = async {
            if to_pod_first {
                (&mut from_pod).await
            } else {
                (&mut to_pod).await
            }
        };
        let second = tokio::time::timeout(HALF_CLOSE_GRACE, rest)
            .await
            .unwrap_or(Ok(()));
        first.or(second).map_err(|(op, e)| {
            let (l, p) = (
                local.map(|a| a.to_string()).unwrap_or_default(),
                peer.map(|a| a.to_string()).unwrap_or_default(),
            );
            self.wrap(port, &format!("{op} tcp4 {l}->{p}: {op}: {}", go_errno(&e)))
        })
    }
}

/// Whose sockets count as the pod's.
enum Processes {
    /// Every process of these containers (a pod's).
    Containers(Vec<Arc<Container>>),
    Pids(Vec<u32>),
}

impl Processes {
    fn pids(&self) -> Vec<u32> {
        match self {
            Processes::Containers(cs) => cs.iter().flat_map(|c| c.process_ids()).collect(),
            Processes::Pids(p) => p.clone(),
        }
    }
}

/// Go's text for the errno behind `e` (`syscall.Errno.Error`), for the few a copy meets.
fn go_errno(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => e.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6 { wildcard: bool },
}

#[derive(Debug)]
struct Listener {
    inode: u64,
    family: Family,
}

/// TCP sockets in LISTEN state on `port` whose address a connection to localhost reaches
/// (127.0.0.0/8 or 0.0.0.0; ::1, :: or v4-mapped loopback), from `/proc/net/tcp` and
/// `/proc/net/tcp6` (proc(5): `local_address` is hex `ADDR:PORT` with the address in host byte
/// order, `st` 0A is LISTEN, the 10th column is the inode).
fn listening_sockets(port: u16) -> Vec<Listener> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        out.extend(
            table
                .lines()
                .skip(1)
                .filter_map(|line| parse_listener(line, v6, port)),
        );
    }
    out
}

fn parse_listener(line: &str, v6: bool, port: u16) -> Option<Listener> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    if cols.len() < 10 || cols[3] != "0A" {
        return None;
    }
    let (addr, p) = cols[1].split_once(':')?;
    if u16::from_str_radix(p, 16).ok()? != port {
        return None;
    }
    let inode = cols[9].parse().ok()?;
    // Each 32-bit word is in host (little-endian) byte order: 127.0.0.1 is `0100007F`.
    let loopback_v4 = |word: &str| word.len() == 8 && word.ends_with("7F");
    let family = if !v6 {
        if addr == "00000000" || loopback_v4(addr) {
            Family::V4
        } else {
            return None;
        }
    } else if addr == "00000000000000000000000000000000" {
        Family::V6 { wildcard: true }
    } else if addr == "00000000000000000000000001000000" {
        Family::V6 { wildcard: false }
    } else if addr.len() == 32
        && &addr[..24] == "0000000000000000FFFF0000"
        && loopback_v4(&addr[24..])
    {
        Family::V4
    } else {
        return None;
    };
    Some(Listener { inode, family })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_query_like_the_kubelet() {
        let q = |v: &[&str]| {
            HashMap::from([(
                "ports".to_string(),
                v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )])
        };
        assert_eq!(
            parse_ports(&q(&["80,8080", "9000"])).unwrap(),
            vec![80, 8080, 9000]
        );
        assert_eq!(
            parse_ports(&HashMap::new()).unwrap_err(),
            "query parameter \"port\" is required"
        );
        assert_eq!(
            parse_ports(&q(&["0"])).unwrap_err(),
            "port \"0\" must be > 0"
        );
        assert!(parse_ports(&q(&["http"]))
            .unwrap_err()
            .starts_with("unable to parse \"http\" as a port"));
    }

    #[test]
    fn proc_net_tcp_lines() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        let l = parse_listener(v4, false, 8080).unwrap();
        assert_eq!((l.inode, l.family), (4242, Family::V4));
        assert!(parse_listener(v4, false, 8081).is_none());
        // Established, not LISTEN.
        assert!(parse_listener(&v4.replace(" 0A ", " 01 "), false, 8080).is_none());
        // Bound to another address (10.0.0.5): localhost does not reach it.
        assert!(parse_listener(&v4.replace("0100007F:", "0500000A:"), false, 8080).is_none());
        let any6 = "   1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_listener(any6, true, 8080).unwrap().family,
            Family::V6 { wildcard: true }
        );
    }

    #[test]
    fn refused_message_is_containerds() {
        let t = PodTarget::with_pids("uid-1", Vec::new());
        let msg = t.refused(8080);
        assert!(
            msg.starts_with("error forwarding port 8080 to pod "),
            "{msg}"
        );
        assert!(
            msg.contains(
                ", uid : failed to execute portforward in network namespace \"/var/run/netns/cni-"
            ),
            "{msg}"
        );
        assert!(msg.contains(&format!(
            "failed to connect to localhost:8080 inside namespace \"{}\", IPv4: dial tcp4 127.0.0.1:8080: connect: connection refused IPv6 dial tcp6 [::1]:8080: connect: connection refused",
            t.sandbox_id
        )), "{msg}");
        assert_eq!(t.sandbox_id.len(), 64);
    }
}

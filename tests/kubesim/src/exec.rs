//! `pods/exec`: validates the request like the apiserver and kubelet do, upgrades the
//! connection (WebSocket or SPDY, see `exec_transport`), runs the command inside the
//! container, and reports the outcome as the kubelet's remotecommand server does
//! (staging/src/k8s.io/kubelet/pkg/cri/streaming/remotecommand/exec.go: `NonZeroExitCode`
//! with an `ExitCode` cause). Faults: kill after N bytes, the link model (faults.rs `SharedLink`:
//! per-stream and shared caps), outages (the
//! connection is reset, no status), NotReady nodes (the stream stalls, see [`reachable`]).
//! A process whose stream is gone keeps running to its end, stdin closed (`Ended::Aborted`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{full, Body, Target};
use crate::errors::{ApiError, ApiResult};
use crate::exec_io::{ExecIo, StreamsWanted};
use crate::exec_transport;
use crate::resources;
use crate::sandbox::{Container, SandboxError};
use crate::sim::SimRef;

fn flag(q: &HashMap<String, Vec<String>>, k: &str) -> bool {
    q.get(k)
        .and_then(|v| v.first())
        .is_some_and(|v| v == "true" || v == "1")
}

pub async fn handle(
    sim: SimRef,
    t: Target,
    q: HashMap<String, Vec<String>>,
    mut req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let name = t.name.clone().unwrap_or_default();
    let ns = t.namespace.clone().unwrap_or_default();
    let pod = sim.store.get(resources::pods(), Some(&ns), &name)?;
    let argv: Vec<String> = q.get("command").cloned().unwrap_or_default();
    if argv.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let wanted = StreamsWanted {
        stdin: flag(&q, "stdin"),
        stdout: flag(&q, "stdout"),
        stderr: flag(&q, "stderr"),
        tty: flag(&q, "tty"),
    };
    if !wanted.stdin && !wanted.stdout && !wanted.stderr {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    // Container choice as pkg/registry/core/pod/strategy.go `streamLocation`.
    let names: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let init_names: Vec<String> = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let cname = match q.get("container").and_then(|v| v.first()) {
        Some(c) if !c.is_empty() => c.clone(),
        _ if names.len() == 1 => names[0].clone(),
        _ => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            );
            if !init_names.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init_names.join(" ")
                ));
            }
            return Err(ApiError::bad_request(msg));
        }
    };
    if !names.contains(&cname) && !init_names.contains(&cname) {
        return Err(ApiError::bad_request(format!(
            "container {cname} is not valid for pod {name}"
        )));
    }
    let node = kubelet_node(&sim, &pod)?;
    if crate::hollow::is_hollow(&sim, &node) {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: {}",
            crate::hollow::no_containers(&name, &node)
        )));
    }
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let container = sim
        .runtime
        .container(&uid, &cname)
        .filter(|c| c.is_running())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to upgrade connection: container not found (\"{cname}\")"
            ))
        })?;
    let (negotiated, headers) = exec_transport::negotiate(req.headers())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let upgrade = hyper::upgrade::on(&mut req);
    let sim2 = sim.clone();
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("exec upgrade failed: {e}");
                return;
            }
        };
        let io = match exec_transport::accept(TokioIo::new(upgraded), &negotiated, wanted).await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!("exec transport failed: {e}");
                return;
            }
        };
        run(sim2, container, node, argv, io, format!("{ns}/{name}")).await;
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The node whose kubelet serves a streaming request (exec, attach, portforward) for `pod`,
/// with the apiserver's errors when there is none or it cannot be reached
/// (pkg/registry/core/pod/strategy.go `streamLocation`/`PortForwardLocation`; pkg/kubelet/client
/// and the proxy's dial errors).
pub(crate) fn kubelet_node(sim: &SimRef, pod: &Value) -> ApiResult<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let Some(node) = pod["spec"]["nodeName"].as_str().map(str::to_string) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    if !sim.faults.node_ready(&node) {
        return Err(ApiError::internal(format!(
            "error dialing backend: dial tcp {node}:10250: connect: no route to host"
        )));
    }
    Ok(node)
}

enum Ended {
    Exited(i32),
    /// The connection went away (client gone, outage): no status is sent.
    Aborted,
}

async fn run(
    sim: SimRef,
    container: Arc<Container>,
    node: String,
    argv: Vec<String>,
    io: ExecIo,
    pod: String,
) {
    let ExecIo {
        stdin,
        stdout,
        stderr,
        status,
    } = io;
    let mut child = match container.exec(&argv, &[]) {
        Ok(c) => c,
        Err(e) => {
            let msg = match &e {
                SandboxError::ExecutableNotFound(_) | SandboxError::NoSuchExecutable(_) => format!(
                    "Internal error occurred: error executing command in container: failed to exec in container: failed to start exec: OCI runtime exec failed: exec failed: unable to start container process: {e}: unknown"
                ),
                SandboxError::NotRunning => "Internal error occurred: error executing command in container: container is not running".to_string(),
                other => format!("Internal error occurred: error executing command in container: {other}"),
            };
            let _ = status.send(json!({"metadata": {}, "status": "Failure", "message": msg, "reason": "InternalError", "details": {"causes": [{"message": msg}]}, "code": 500}));
            return;
        }
    };
    // The link this session crosses (faults.rs `SharedLink`): its own per-stream window and
    // the pipe all sessions share, each direction on its own.
    let crate::faults::SessionLink { down, up } = sim.faults.link();
    let kill_after = sim.faults.kill_exec_threshold();
    let mut child_stdin = child.stdin.take();
    let child_stdout = child.stdout.take();
    let child_stderr = child.stderr.take();

    let stdin_sim = sim.clone();
    let stdin_node = node.clone();
    let stdin_task = tokio::spawn(async move {
        let Some(mut rx) = stdin else { return };
        let Some(w) = child_stdin.as_mut() else {
            return;
        };
        while let Some(chunk) = rx.recv().await {
            reachable(&stdin_sim, &stdin_node, None).await;
            up.pass(chunk.len()).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
            stdin_sim.faults.count_exec_stdin(chunk.len());
        }
        let _ = w.shutdown().await;
        drop(child_stdin);
    });

    let faults_sim = sim.clone();
    let pump_node = node.clone();
    // What this session delivered to the client, for the session log.
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pump_delivered = delivered.clone();
    let pump = |r: Option<tokio::process::ChildStdout>,
                tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
                limit: Option<u64>,
                container: Arc<Container>| async move {
        let Some(mut r) = r else { return true };
        let mut buf = vec![0u8; down.chunk_size()];
        let mut total = 0u64;
        // Once the client is gone the process is not killed: its output goes nowhere
        // (see `Ended::Aborted`).
        let mut gone = false;
        loop {
            let mut n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return !gone,
                Ok(n) => n,
            };
            if let Some(limit) = limit {
                if total + n as u64 >= limit && faults_sim.faults.fire_kill_exec() {
                    n = (limit - total) as usize;
                    if let Some(tx) = &tx {
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_ok() {
                            faults_sim.faults.count_exec_stdout(n);
                            pump_delivered
                                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    // A container crash: the exec'd process and the container die together.
                    container.kill_all();
                    return true;
                }
            }
            if gone {
                total += n as u64;
                continue;
            }
            total += n as u64;
            down.pass(n).await;
            if !reachable(&faults_sim, &pump_node, tx.as_ref()).await {
                gone = true;
                continue;
            }
            if let Some(tx) = &tx {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    gone = true;
                    continue;
                }
                faults_sim.faults.count_exec_stdout(n);
                pump_delivered.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    let out_task = tokio::spawn(pump(child_stdout, stdout, kill_after, container.clone()));
    let err_sim = sim.clone();
    let err_node = node.clone();
    let err_task = tokio::spawn(async move {
        let Some(mut r) = child_stderr else {
            return true;
        };
        let mut buf = vec![0u8; 16 * 1024];
        let mut gone = false;
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return !gone,
                Ok(_) if gone => {}
                Ok(n) => {
                    if !reachable(&err_sim, &err_node, stderr.as_ref()).await {
                        gone = true;
                        continue;
                    }
                    if let Some(tx) = &stderr {
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            gone = true;
                        }
                    }
                }
            }
        }
    });

    let mut outage = sim.faults.outage_signal();
    let ended = tokio::select! {
        r = async {
            let out_ok = out_task.await.unwrap_or(false);
            let err_ok = err_task.await.unwrap_or(false);
            let st = child.wait().await;
            // The exit status crosses the same dead link as the output.
            let reached = reachable(&sim, &node, None).await;
            (out_ok && err_ok && reached, st)
        } => match r {
            (true, Ok(st)) => Ended::Exited(exit_code(st)),
            (true, Err(_)) => Ended::Exited(137),
            (false, _) => Ended::Aborted,
        },
        // The API server's sockets die with it: the transport sees its connection reset
        // (server.rs) and sends nothing more, not even a Status.
        _ = outage.changed() => Ended::Aborted,
    };
    stdin_task.abort();
    sim.faults.record_exec_session(crate::faults::ExecSession {
        pod,
        argv: argv.clone(),
        stdout_bytes: delivered.load(std::sync::atomic::Ordering::Relaxed),
    });
    match ended {
        Ended::Exited(0) => {
            let _ = status.send(json!({"metadata": {}, "status": "Success"}));
        }
        Ended::Exited(code) => {
            let _ = status.send(non_zero(&argv, code));
        }
        Ended::Aborted => {
            // The stream is gone (client killed, connection or API server lost), but the
            // process is not: container runtimes do not kill an exec'd process when its
            // stream ends (kubernetes/kubernetes#89031, kubernetes/kubectl#1076; containerd
            // only closes the process's stdin once the stream's stdin copy ends,
            // containerd/containerd#13936, and keeps exec processes of vanished clients
            // running, containerd/containerd#8856). So it reads EOF on stdin (the stdin task
            // is aborted above, which closes the pipe), runs to its end with its output
            // dropped, and dies only with its container.
            drop(status);
        }
    }
    let _ = child.wait().await;
}

/// Waits while `node` is NotReady. kubesim's NotReady node is unreachable (down, or cut off
/// from the control plane): the apiserver's connection to its kubelet neither delivers nor
/// fails, so an exec stream through it stalls — no bytes, no status — and resumes if the node
/// comes back. (For real, the stalled TCP connection ends only when retransmissions give up,
/// ~15 min with Linux defaults, `tcp_retries2`; client-go then sees EOF on every stream and,
/// through the apiserver's stream translator, a *Success* status: kubernetes/kubectl#1726.)
/// Returns false when the client went away meanwhile (`client` is the channel to it).
pub(crate) async fn reachable(
    sim: &SimRef,
    node: &str,
    client: Option<&tokio::sync::mpsc::Sender<Bytes>>,
) -> bool {
    while !sim.faults.node_ready(node) {
        let gone = async {
            match client {
                Some(tx) => tx.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = gone => return false,
        }
    }
    true
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9))
}

/// The Status the kubelet writes for a non-zero exit (remotecommand `ServeExec`), whose
/// `ExitCode` cause kubectl turns into `command terminated with exit code N`.
fn non_zero(argv: &[String], code: i32) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: command '{}' exited with {code}: ", argv.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

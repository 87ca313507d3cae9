//! A helper pod's life: create it, wait (with a timeout) until it runs or clearly cannot,
//! exec into it, and delete it whatever happens. Every created pod is registered so that
//! Ctrl-C, SIGTERM or a failure removes it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::connect::explain;
use crate::exit::Failure;

/// The longest a single API request may take before it counts as failed (the client has no
/// read timeout of its own: exec streams may be legitimately quiet, see `connect`).
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// Pods this process created and has not yet seen deleted.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeSet<(String, String)>>>);

impl Registry {
    fn add(&self, ns: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((ns.to_string(), name.to_string()));
    }
    fn remove(&self, ns: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ns.to_string(), name.to_string()));
    }
    pub fn pending(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Deletes every registered pod, retrying through short outages, and waits (30 s at most)
    /// until they are gone, so that no helper pod outlives the command, not even a Terminating
    /// one. Returns the pods whose deletion could not be requested.
    pub async fn delete_all(&self, client: &kube::Client) -> Vec<String> {
        let mut left = Vec::new();
        let mut deleted = Vec::new();
        for (ns, name) in self.pending() {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if delete_with_retry(&api, &name).await {
                self.remove(&ns, &name);
                deleted.push((api, name));
            } else {
                left.push(format!("{ns}/{name}"));
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (api, name) in deleted {
            let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
            wait_gone(&api, &name, None, rest).await;
        }
        left
    }
}

/// Waits (at most `limit`) until pod `name` no longer exists — or, with `uid`, until no pod of
/// that uid does (a new pod may reuse the name). True when seen gone: its processes are over,
/// so another pod may work on the volume. The one "wait until gone" of every command.
pub async fn wait_gone(api: &Api<Pod>, name: &str, uid: Option<&str>, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let gone = move |p: Option<&Pod>| match (p, uid) {
        (None, _) => true,
        (Some(p), Some(uid)) => p.metadata.uid.as_deref() != Some(uid),
        (Some(_), None) => false,
    };
    loop {
        // A watch on the one pod ends the wait as the API server reports it deleted. Polling
        // every 250 ms added up to that much to every command that removes a helper pod.
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        let watched = kube::runtime::wait::await_condition(api.clone(), name, gone);
        match tokio::time::timeout(rest, watched).await {
            Ok(Ok(_)) => return true,
            Err(_) => return false,
            // The watch failed (a dropped connection, a proxy that cuts watches): look once,
            // then watch again.
            Ok(Err(_)) => {
                if let Ok(Ok(p)) =
                    tokio::time::timeout(Duration::from_secs(10), api.get_opt(name)).await
                {
                    if gone(p.as_ref()) {
                        return true;
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Deletes pod `name` (retrying through short outages) and waits (at most `limit`) until it
/// is gone; true when seen gone.
pub async fn delete_and_wait(api: &Api<Pod>, name: &str, limit: Duration) -> bool {
    delete_with_retry(api, name).await && wait_gone(api, name, None, limit).await
}

/// Runs a short command in a helper pod this process did not launch (one an earlier run
/// left) and returns its stdout; anything but exit 0 within 30 s is a runtime failure.
pub async fn run_in(api: &Api<Pod>, pod: &str, argv: &[String]) -> Result<Vec<u8>, Failure> {
    use tokio::io::AsyncReadExt;
    let ap = AttachParams::default()
        .container(crate::helper_pod::CONTAINER_NAME)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let run = async {
        let mut p = api
            .exec(pod, argv.iter().cloned(), &ap)
            .await
            .map_err(|e| explain(&format!("exec into helper pod {pod}"), &e))?;
        let mut out = Vec::new();
        if let Some(mut so) = p.stdout() {
            let _ = so.read_to_end(&mut out).await;
        }
        let st = match p.take_status() {
            Some(st) => st.await,
            None => None,
        };
        match st {
            Some(st) if st.status.as_deref() == Some("Success") => Ok(out),
            Some(st) => Err(Failure::runtime(format!(
                "a command in helper pod {pod} failed: {}",
                describe_status(&st)
            ))),
            None => Err(Failure::runtime(format!(
                "the exec stream of helper pod {pod} ended without an exit status"
            ))),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::runtime(format!(
                "a command in helper pod {pod} did not answer within 30s"
            )))
        })
}

/// Deletes a pod, retrying for ~40 s so a brief API outage does not strand it. The pod's own
/// activeDeadlineSeconds is the last safety net.
async fn delete_with_retry(api: &Api<Pod>, name: &str) -> bool {
    let mut delay = Duration::from_millis(250);
    for _ in 0..12 {
        let params = DeleteParams::default().grace_period(1);
        match tokio::time::timeout(Duration::from_secs(10), api.delete(name, &params)).await {
            Ok(Ok(_)) => return true,
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => return true,
            Ok(Err(e)) => tracing::debug!("deleting helper pod {name}: {e}; retrying"),
            Err(_) => tracing::debug!("deleting helper pod {name}: no answer in 10s; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(8));
    }
    false
}

pub struct HelperPod {
    api: Api<Pod>,
    client: kube::Client,
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// Where the container mounts the PVC, as its pod spec says.
    pub mount: String,
    /// Where the container mounts its scratch directory (the lease lives there).
    pub run_dir: String,
    registry: Registry,
    /// Fires when the pod or its node dies; every exec session of the pod fails with it.
    lost: Lost,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    /// Renews the pod's lease while this client lives (see `helper_pod::WATCHDOG`).
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for HelperPod {
    fn drop(&mut self) {
        for task in [self.watchdog.take(), self.renewal.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// How often the client renews a helper's lease: a quarter of the lease, at most every 5 s,
/// so a few lost renewals (a short outage) never let it expire.
pub fn renewal_period(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// Touches the helper's lease file every [`renewal_period`], through a short exec, for as long
/// as this client lives. Failures are ignored: a lease that is not renewed for the whole lease
/// period lets the pod stop by itself, which is the point.
async fn renew_lease(api: Api<Pod>, name: String, file: String, lease: Duration) {
    let period = renewal_period(lease);
    loop {
        tokio::time::sleep(period).await;
        let ap = AttachParams::default()
            .container(crate::helper_pod::CONTAINER_NAME)
            .stdin(false)
            .stdout(false)
            .stderr(true);
        let renew = async {
            if let Ok(mut p) = api.exec(&name, ["touch", file.as_str()], &ap).await {
                if let Some(st) = p.take_status() {
                    let _ = st.await;
                }
                let _ = p.join().await;
            }
        };
        let _ = tokio::time::timeout(period * 2, renew).await;
    }
}

/// The kubelet reports that the helper's image cannot be pulled.
fn image_pull_failed(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .any(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                .is_some_and(|r| {
                    r == "ErrImagePull" || r == "ImagePullBackOff" || r == "InvalidImageName"
                })
        })
}

/// Why a helper pod did not come up, in words a user can act on.
fn diagnose(pod: &Pod, events: &[Event]) -> Option<String> {
    let status = pod.status.as_ref()?;
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return Some(format!(
            "the scheduler cannot place it: {}",
            c.message.clone().unwrap_or_default()
        ));
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            if reason == "ErrImagePull"
                || reason == "ImagePullBackOff"
                || reason == "InvalidImageName"
            {
                return Some(format!(
                    "its image {} cannot be pulled ({reason}: {}). In an air-gapped cluster, mirror busybox and pass --image REGISTRY/{}",
                    cs.image,
                    w.message.clone().unwrap_or_default(),
                    crate::helper_pod::DEFAULT_IMAGE
                ));
            }
        }
        if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            return Some(format!(
                "its container exited ({}: {})",
                t.reason.clone().unwrap_or_default(),
                t.message.clone().unwrap_or_default()
            ));
        }
    }
    if matches!(status.phase.as_deref(), Some("Failed") | Some("Succeeded")) {
        return Some(format!(
            "it ended with phase {} ({})",
            status.phase.clone().unwrap_or_default(),
            status.message.clone().unwrap_or_default()
        ));
    }
    events
        .iter()
        .rev()
        .find(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            )
        })
        .map(|m| {
            if m.contains("Multi-Attach") {
                format!("{m}. The volume is attached to another node; the helper must run there")
            } else {
                m
            }
        })
}

impl HelperPod {
    /// Creates `pod` and waits until its container runs. On any failure the pod is deleted.
    pub async fn launch(
        client: &kube::Client,
        pod: Pod,
        timeout: Duration,
        registry: &Registry,
    ) -> Result<HelperPod, Failure> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mounted = |volume: &str| {
            crate::helper_pod::mount_path(&pod, volume).ok_or_else(|| {
                Failure::runtime(format!("helper pod {name} mounts no volume {volume}"))
            })
        };
        let mount = mounted(crate::helper_pod::DATA_VOLUME)?;
        let run_dir = mounted(crate::helper_pod::TMP_VOLUME)?;
        let lease = crate::helper_pod::lease_of(&pod);
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        // Registered before the request: if the answer is lost, the pod may exist all the same.
        registry.add(&namespace, &name);
        match tokio::time::timeout(API_TIMEOUT, api.create(&PostParams::default(), &pod)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                // Refused (or a 409: a pod of that name that is not ours): nothing to clean up.
                registry.remove(&namespace, &name);
                return Err(explain(
                    &format!("creating helper pod {name} in namespace {namespace}"),
                    &e,
                ));
            }
            Err(_) => {
                return Err(Failure::runtime(format!(
                    "creating helper pod {name} in namespace {namespace}: no answer from the API server in {}s",
                    API_TIMEOUT.as_secs()
                )))
            }
        }
        let mut helper = HelperPod {
            api: api.clone(),
            client: client.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            node: None,
            mount,
            run_dir,
            registry: registry.clone(),
            lost: Lost::default(),
            watchdog: None,
            renewal: None,
        };
        let settled = await_condition(api.clone(), &name, |p: Option<&Pod>| {
            let Some(p) = p else { return true };
            let Some(st) = p.status.as_ref() else {
                return false;
            };
            if st.phase.as_deref() == Some("Running")
                || st.phase.as_deref() == Some("Failed")
                || st.phase.as_deref() == Some("Succeeded")
            {
                return true;
            }
            image_pull_failed(p)
        });
        let outcome = tokio::time::timeout(timeout, settled).await;
        let current = tokio::time::timeout(API_TIMEOUT, api.get_opt(&name))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let running = current
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Running");
        if let (Ok(Ok(_)), true) = (&outcome, running) {
            helper.node = current.and_then(|p| p.spec.and_then(|s| s.node_name));
            helper.watchdog = Some(tokio::spawn(watch_pod(
                client.clone(),
                api.clone(),
                name.clone(),
                helper.node.clone(),
                helper.lost.clone(),
            )));
            helper.renewal = Some(tokio::spawn(renew_lease(
                api.clone(),
                name.clone(),
                format!("{}/{}", helper.run_dir, crate::helper_pod::LEASE_FILE),
                lease,
            )));
            return Ok(helper);
        }
        let events = pod_events(client, &namespace, &name).await;
        let why = current
            .as_ref()
            .and_then(|p| diagnose(p, &events))
            .unwrap_or_else(|| {
                if outcome.is_err() {
                    format!(
                        "it was not running after {}s (raise --pod-timeout if the cluster is slow)",
                        timeout.as_secs()
                    )
                } else {
                    "it disappeared".into()
                }
            });
        helper.delete().await;
        let failure = Failure::runtime(format!(
            "helper pod {name} in namespace {namespace} did not start: {why}"
        ));
        if current.as_ref().is_some_and(image_pull_failed) {
            return Err(failure.permanent());
        }
        Err(failure)
    }

    /// Runs `argv` in the helper's container with stdout (and stderr) piped back.
    async fn exec(&self, argv: &[&str], stdin: bool) -> Result<Exec, Failure> {
        let what = || format!("exec into helper pod {}/{}", self.namespace, self.name);
        let ap = AttachParams::default()
            .container(crate::helper_pod::CONTAINER_NAME)
            .stdin(stdin)
            .stdout(true)
            .stderr(true);
        let mut req =
            kube::core::Request::new(format!("/api/v1/namespaces/{}/pods", self.namespace))
                .exec(&self.name, argv.iter().map(|s| s.to_string()), &ap)
                .map_err(|e| Failure::runtime(format!("{}: {e}", what())))?;
        // What kube-rs' `Api::exec` marks the request with (its metrics and logs).
        req.extensions_mut().insert("exec");
        let conn = self
            .client
            .connect(req)
            .await
            .map_err(|e| explain(&what(), &e))?;
        let (stdin_r, stdin_w) = tokio::io::simplex(1 << 20);
        let (stdout_r, stdout_w) = tokio::io::simplex(1 << 20);
        let (stderr_r, stderr_w) = tokio::io::simplex(64 << 10);
        let (status_tx, status_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(exec_loop(
            conn,
            stdin_r,
            Some(stdout_w),
            Some(stderr_w),
            status_tx,
        ));
        Ok(Exec {
            has_stdin: stdin,
            stdin: Some(stdin_w),
            stdout: Some(stdout_r),
            stderr: Some(stderr_r),
            status: Some(status_rx),
            task: Some(task),
        })
    }

    /// Runs `argv` with every wait bounded: the streams fail as soon as the connection is lost
    /// or the helper pod or its node dies (see [`Lost`]), and a stream given a stall limit in
    /// `watch` fails when no byte moves through it for that long.
    pub async fn session(
        &self,
        argv: &[&str],
        stdin: bool,
        watch: Watch,
    ) -> Result<Session, Failure> {
        let lost = self.lost.child();
        let mut proc = self.exec(argv, stdin).await?;
        let label: Arc<str> = Arc::from(format!("helper pod {}/{}", self.namespace, self.name));
        let wrap_r = |r, stall| Watched::new(r, lost.clone(), stall, label.clone());
        let stdout = proc.stdout.take().map(|r| wrap_r(r, watch.stdout_stall));
        let stderr = proc.stderr.take().map(|r| wrap_r(r, None));
        // stdin also fails once the command has exited (its status arrived): kube-rs then no
        // longer drains the pipe, and a writer would block on it forever.
        let stdin_lost = lost.child();
        let stdin = proc
            .take_stdin()
            .map(|w| Watched::new(w, stdin_lost.clone(), watch.stdin_stall, label.clone()));
        let status = proc
            .status
            .take()
            .ok_or_else(|| Failure::runtime("exec gave no status channel"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let link_lost = lost.clone();
        let link_label = label.clone();
        // kube-rs ends its message loop when the status arrives, the server closes, or the
        // connection fails. In the last case it drops its pipe ends without closing them, so
        // a reader would wait forever: the status future resolving to None is the signal to
        // fail every stream of the session instead.
        let link = tokio::spawn(async move {
            let st = status.await.ok();
            if st.is_none() {
                let detail = match tokio::time::timeout(Duration::from_secs(2), proc.join()).await {
                    Ok(Err(e)) => format!(" ({e})"),
                    _ => String::new(),
                };
                link_lost.fire(format!(
                    "the exec stream of {link_label} ended without an exit status: the connection to the API server was lost{detail}"
                ));
            } else {
                stdin_lost.fire(format!(
                    "the command in {link_label} exited before it read all its input"
                ));
                let _ = tokio::time::timeout(Duration::from_secs(2), proc.join()).await;
            }
            let _ = tx.send(st);
        });
        Ok(Session {
            stdin,
            stdout,
            stderr,
            status: Some(rx),
            lost,
            link,
        })
    }

    /// Runs a short command and returns its stdout, failing on a non-zero exit.
    pub async fn run(&self, argv: &[&str]) -> Result<String, Failure> {
        let out = self.run_bytes(argv).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs a command and returns its raw stdout; a non-zero exit, a lost connection or a dead
    /// pod is a runtime failure. No stall limit: a command such as hashing a large file may be
    /// silent for a long time; losing the pod, its node or the connection still ends the wait.
    pub async fn run_bytes(&self, argv: &[&str]) -> Result<Vec<u8>, Failure> {
        use tokio::io::AsyncReadExt;
        let mut s = self.session(argv, false, Watch::default()).await?;
        let (mut so, mut se) = s.stdio()?;
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut se = (&mut se).take(64 << 10);
        let (a, b) = tokio::join!(so.read_to_end(&mut out), se.read_to_end(&mut err));
        if let Some(why) = s.lost_reason() {
            return Err(Failure::runtime(why));
        }
        a.and(b)
            .map_err(|e| Failure::runtime(format!("reading from helper pod {}: {e}", self.name)))?;
        let st = s.finish(Duration::from_secs(60)).await?;
        let what = match argv {
            ["sh", "-c", script, ..] => script
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("sh")
                .trim()
                .to_string(),
            _ => argv.join(" "),
        };
        if st.status.as_deref() == Some("Success") {
            Ok(out)
        } else {
            Err(Failure::runtime(format!(
                "`{what}` failed in helper pod {}: {} {}",
                self.name,
                describe_status(&st),
                String::from_utf8_lossy(&err).trim()
            )))
        }
    }

    /// Deletes the pod and waits (bounded) until it is gone, so that when a command returns,
    /// no helper pod of it is left, not even a Terminating one.
    /// Returns true when the pod was seen gone (its processes are over), false when that could
    /// not be confirmed in time (an outage, a node that does not answer).
    pub async fn delete(&mut self) -> bool {
        // Our own deletion is not a death to report.
        for task in [self.watchdog.take(), self.renewal.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        let uid = tokio::time::timeout(Duration::from_secs(10), self.api.get_opt(&self.name))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .and_then(|p| p.metadata.uid);
        if !delete_with_retry(&self.api, &self.name).await {
            return false;
        }
        self.registry.remove(&self.namespace, &self.name);
        wait_gone(
            &self.api,
            &self.name,
            uid.as_deref(),
            Duration::from_secs(30),
        )
        .await
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }
}

async fn pod_events(client: &kube::Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    match tokio::time::timeout(API_TIMEOUT, api.list(&lp)).await {
        Ok(Ok(l)) => l.items,
        _ => Vec::new(),
    }
}

/// A failed exec's Status in a few words: "exit code 137" for a command that ended badly
/// (the kubelet's `NonZeroExitCode` message repeats the whole command line), else its message.
pub fn describe_status(st: &Status) -> String {
    if st.reason.as_deref() == Some("NonZeroExitCode") {
        if let Some(code) = st
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.clone())
        {
            let hint = match code.as_str() {
                "137" => " (killed: the container crashed or ran out of memory)",
                "143" => " (terminated)",
                _ => "",
            };
            return format!("exit code {code}{hint}");
        }
    }
    st.message.clone().unwrap_or_else(|| "failed".into())
}

/// How often the watchdog looks at a running helper pod and its node.
const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// Watches a running helper pod until its owner deletes it: the pod deleted or evicted by
/// someone else, its container ended, or its node not Ready (the kubelet stopped reporting:
/// an exec stream through it stalls rather than ends) fires `lost` with what happened. API
/// errors are ignored here: a lost connection surfaces through the exec session itself.
async fn watch_pod(
    client: kube::Client,
    api: Api<Pod>,
    name: String,
    node: Option<String>,
    lost: Lost,
) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(WATCH_PERIOD).await;
        let pod = match tokio::time::timeout(Duration::from_secs(10), api.get_opt(&name)).await {
            Ok(Ok(p)) => p,
            _ => continue,
        };
        let why = match &pod {
            None => Some(format!(
                "helper pod {name} was deleted by someone else (evicted?)"
            )),
            Some(p) => pod_trouble(p),
        };
        if let Some(why) = why {
            lost.fire(why);
            return;
        }
        if let Some(node) = &node {
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), nodes.get(node)).await
            {
                if let Some(why) = node_trouble(&n) {
                    lost.fire(format!("helper pod {name} is on {why}"));
                    return;
                }
            }
        }
    }
}

/// What is wrong with a helper pod that should be running, if anything.
fn pod_trouble(p: &Pod) -> Option<String> {
    let name = p.metadata.name.as_deref().unwrap_or("helper");
    if p.metadata.deletion_timestamp.is_some() {
        return Some(format!(
            "helper pod {name} is being deleted by someone else (evicted or deleted)"
        ));
    }
    let st = p.status.as_ref()?;
    if matches!(st.phase.as_deref(), Some("Failed") | Some("Succeeded")) {
        return Some(format!(
            "helper pod {name} ended (phase {}{})",
            st.phase.clone().unwrap_or_default(),
            st.reason
                .as_ref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default()
        ));
    }
    st.container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref())
        .map(|t| {
            format!(
                "the container of helper pod {name} ended ({}, exit code {})",
                t.reason.clone().unwrap_or_default(),
                t.exit_code
            )
        })
}

/// "node N, which is NotReady (…)" when the node's Ready condition is not True.
fn node_trouble(n: &Node) -> Option<String> {
    let ready = n
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")?;
    (ready.status != "True").then(|| {
        format!(
            "node {}, which is NotReady ({}: {}); the node may be down or cut off from the control plane",
            n.metadata.name.clone().unwrap_or_default(),
            ready.reason.clone().unwrap_or_default(),
            ready.message.clone().unwrap_or_default()
        )
    })
}

/// A one-shot alarm with its reason: the first `fire` wins. A child fires with its parent, and
/// reports the parent's reason when it has none of its own.
#[derive(Clone, Default)]
pub struct Lost {
    token: CancellationToken,
    why: Arc<Mutex<Option<String>>>,
    parent: Option<Arc<Mutex<Option<String>>>>,
}

impl Lost {
    pub fn fire(&self, why: String) {
        let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() && !self.token.is_cancelled() {
            tracing::debug!("{why}");
            *w = Some(why);
        }
        drop(w);
        self.token.cancel();
    }

    pub fn child(&self) -> Lost {
        Lost {
            token: self.token.child_token(),
            why: Arc::default(),
            parent: Some(self.why.clone()),
        }
    }

    pub fn reason(&self) -> Option<String> {
        if !self.token.is_cancelled() {
            return None;
        }
        let own = self.why.lock().unwrap_or_else(|p| p.into_inner()).clone();
        own.or_else(|| {
            self.parent
                .as_ref()
                .and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).clone())
        })
        .or_else(|| Some("the helper pod was lost".into()))
    }

    fn cancelled(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

/// Stall limits of an exec session's streams (None: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Watch {
    pub stdin_stall: Option<Duration>,
    pub stdout_stall: Option<Duration>,
}

/// An exec session's stream that fails instead of waiting forever: when the session is lost,
/// and (with a stall limit) when no byte has moved for that long while the consumer waited.
/// A stall fires the session's [`Lost`], so its other streams and its status fail with it.
pub struct Watched<T> {
    inner: T,
    lost: Lost,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    stall: Option<Duration>,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// True while the consumer is blocked on this stream (the stall clock runs only then, so a
    /// slow consumer is never mistaken for a stalled stream).
    waiting: bool,
    label: Arc<str>,
}

impl<T> Watched<T> {
    fn new(inner: T, lost: Lost, stall: Option<Duration>, label: Arc<str>) -> Self {
        Watched {
            inner,
            cancelled: Box::pin(lost.cancelled()),
            lost,
            stall,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            waiting: false,
            label,
        }
    }

    fn aborted(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            self.lost
                .reason()
                .unwrap_or_else(|| "the session was lost".into()),
        )
    }

    /// Checks the alarm (registering the waker) before touching the stream.
    fn check_lost(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        if self.lost.token.is_cancelled() || self.cancelled.as_mut().poll(cx).is_ready() {
            return Err(self.aborted());
        }
        Ok(())
    }

    /// Called when the stream returned Pending: starts or checks the stall clock.
    fn check_stall(&mut self, cx: &mut Context<'_>, dir: &str) -> Result<(), io::Error> {
        let Some(stall) = self.stall else {
            return Ok(());
        };
        if !self.waiting {
            self.waiting = true;
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + stall);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.lost.fire(format!(
                "no data {dir} {} for {} (--stall-timeout): the pod, its node or the network stopped answering",
                self.label,
                humantime::format_duration(stall)
            ));
            return Err(self.aborted());
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_lost(cx) {
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.waiting = false;
                Poll::Ready(r)
            }
            Poll::Pending => match this.check_stall(cx, "from") {
                Err(e) => Poll::Ready(Err(e)),
                Ok(()) => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check_lost(cx) {
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.waiting = false;
                Poll::Ready(r)
            }
            Poll::Pending => match this.check_stall(cx, "accepted by") {
                Err(e) => Poll::Ready(Err(e)),
                Ok(()) => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_lost(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_lost(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

type Pipe = tokio::io::SimplexStream;

/// Bytes per WebSocket message of a session's stdin. kube-rs (5.0) sends stdin in messages of
/// at most 4 KiB (its message loop reads stdin with `tokio_util::io::ReaderStream::new`, whose
/// buffer is 4 KiB; `AttachParams::max_stdin_buf_size` only sizes the pipe in front of it);
/// client-go sends what one `io.Copy` buffer holds, 32 KiB. Every message costs a frame to
/// build, mask and encrypt here, one to decrypt and parse in the API server, a write into the
/// container's stdin and a wake-up of the reader there, so a restore streaming hundreds of MiB
/// in 4 KiB messages spends more time on messages than on data. The API server takes much
/// larger ones (its WebSocket reader allows 32 MiB, golang.org/x/net/websocket
/// `DefaultMaxPayloadBytes`).
const STDIN_MESSAGE: usize = 128 << 10;

/// A command running in the helper's container: its pipes and exit status, served by
/// [`exec_loop`].
struct Exec {
    /// Whether the command has a stdin (without one, the pipe is kept all the same, so that
    /// the loop never sees its end and signals none, as kube-rs does).
    has_stdin: bool,
    stdin: Option<tokio::io::WriteHalf<Pipe>>,
    stdout: Option<tokio::io::ReadHalf<Pipe>>,
    stderr: Option<tokio::io::ReadHalf<Pipe>>,
    status: Option<tokio::sync::oneshot::Receiver<Status>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Exec {
    fn take_stdin(&mut self) -> Option<tokio::io::WriteHalf<Pipe>> {
        if self.has_stdin {
            self.stdin.take()
        } else {
            None
        }
    }

    /// Waits for the message loop to end (the streams are dropped first, so that it never waits
    /// on a reader that is gone).
    async fn join(mut self) -> Result<(), String> {
        if let Some(mut w) = self.stdin.take() {
            use tokio::io::AsyncWriteExt;
            let _ = w.shutdown().await;
        }
        self.stdout = None;
        self.stderr = None;
        self.status = None;
        match self.task.take() {
            Some(t) => t.await.unwrap_or_else(|e| Err(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The exec message loop of kube-rs (`kube_client::api::remote_command::start_message_loop`:
/// the channel protocol of k8s.io/apimachinery `pkg/util/remotecommand`), with stdin sent in
/// messages of up to [`STDIN_MESSAGE`] bytes. Ends when the status arrives, the server closes
/// the connection, or it fails (then `status` is dropped unsent).
///
/// Sending and receiving run side by side, never one after the other: a command that writes
/// while it reads (the in-pod hashing prints a line per file it is sent) stops reading its
/// stdin when its stdout is not drained, and then the API server stops taking stdin
/// messages. A loop that waited in a send of stdin without receiving meanwhile never
/// drained that stdout, so both ends waited on each other until a timeout (a 1,000,000-file
/// restore failed so: "failed to send a stdin data: timed out"). Likewise a consumer that
/// is slow to read stdout no longer holds up stdin.
async fn exec_loop(
    conn: kube::client::Connection,
    stdin: tokio::io::ReadHalf<Pipe>,
    stdout: Option<tokio::io::WriteHalf<Pipe>>,
    stderr: Option<tokio::io::WriteHalf<Pipe>>,
    status: tokio::sync::oneshot::Sender<Status>,
) -> Result<(), String> {
    use futures::StreamExt;
    let closes = conn.supports_stream_close();
    let (tx, rx) = conn.into_stream().split();
    let receive = receive_loop(rx, stdout, stderr, status);
    let send = send_loop(tx, stdin, closes);
    tokio::pin!(receive, send);
    // Receiving decides the end; sending ends early only when it fails.
    tokio::select! {
        r = &mut receive => r,
        r = &mut send => match r {
            Err(e) => Err(e),
            Ok(()) => receive.await,
        },
    }
}

// Channels of k8s.io/apimachinery `pkg/util/remotecommand/constants.go`; 255 is v5's close
// signal.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE: u8 = 255;

/// The receiving half of [`exec_loop`]: the command's output into its pipes, until the status
/// arrives or the server closes.
async fn receive_loop(
    mut rx: impl futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
    mut stdout: Option<tokio::io::WriteHalf<Pipe>>,
    mut stderr: Option<tokio::io::WriteHalf<Pipe>>,
    status: tokio::sync::oneshot::Sender<Status>,
) -> Result<(), String> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match rx.next().await {
            Some(Ok(Message::Binary(b))) if b.len() > 1 => {
                let to = match b[0] {
                    STDOUT => stdout.as_mut(),
                    STDERR => stderr.as_mut(),
                    STATUS => {
                        let st: Status = serde_json::from_slice(&b[1..])
                            .map_err(|e| format!("the exec status is unreadable: {e}"))?;
                        let _ = status.send(st);
                        break;
                    }
                    _ => None,
                };
                if let Some(w) = to {
                    w.write_all(&b[1..])
                        .await
                        .map_err(|e| format!("passing on the command's output failed: {e}"))?;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("receiving from the exec stream failed: {e}")),
            None => break,
        }
    }
    for w in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = w.shutdown().await;
    }
    Ok(())
}

/// The sending half of [`exec_loop`]: stdin in messages, its end, and a ping a minute (an
/// idle connection is kept alive through proxies, as kube-rs does). Returns only on a
/// failure, or `Ok` once the connection was closed for the end of stdin (before v5).
async fn send_loop(
    mut tx: impl futures::Sink<
            tokio_tungstenite::tungstenite::Message,
            Error = tokio_tungstenite::tungstenite::Error,
        > + Unpin,
    stdin: tokio::io::ReadHalf<Pipe>,
    closes: bool,
) -> Result<(), String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut input = Some(tokio_util::io::ReaderStream::with_capacity(
        stdin,
        STDIN_MESSAGE,
    ));
    let mut ping = tokio::time::interval(Duration::from_secs(60));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    loop {
        let next_input = async {
            match input.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ping.tick() => {
                tx.send(Message::Ping(Default::default()))
                    .await
                    .map_err(|e| format!("sending a ping failed: {e}"))?;
            }
            chunk = next_input => match chunk {
                Some(Ok(bytes)) => {
                    let mut m = Vec::with_capacity(bytes.len() + 1);
                    m.push(STDIN);
                    m.extend_from_slice(&bytes);
                    tx.send(Message::binary(m))
                        .await
                        .map_err(|e| format!("sending stdin failed: {e}"))?;
                }
                Some(Err(e)) => return Err(format!("reading stdin failed: {e}")),
                None => {
                    // The end of stdin: v5 says so on its own; before v5 only closing the
                    // whole connection does (the output may then be cut short).
                    if closes {
                        tx.send(Message::binary(vec![CLOSE, STDIN]))
                            .await
                            .map_err(|e| format!("closing stdin failed: {e}"))?;
                    } else {
                        tx.close().await.map_err(|e| format!("closing stdin failed: {e}"))?;
                        return Ok(());
                    }
                    input = None;
                }
            },
        }
    }
}

/// A running exec: its watched streams and, at the end, its exit status.
pub struct Session {
    stdin: Option<SessionInput>,
    stdout: Option<SessionOutput>,
    stderr: Option<SessionOutput>,
    status: Option<tokio::sync::oneshot::Receiver<Option<Status>>>,
    lost: Lost,
    link: tokio::task::JoinHandle<()>,
}

/// The reading end of a session's stdout or stderr.
pub type SessionOutput = Watched<tokio::io::ReadHalf<Pipe>>;
/// The writing end of a session's stdin.
pub type SessionInput = Watched<tokio::io::WriteHalf<Pipe>>;

impl Session {
    /// Takes the session's stdout and stderr (once: they are moved out of the session).
    pub fn stdio(&mut self) -> Result<(SessionOutput, SessionOutput), Failure> {
        Ok((
            taken(&mut self.stdout, "stdout")?,
            taken(&mut self.stderr, "stderr")?,
        ))
    }

    /// Takes the session's stdin (once), which it has only if it was opened with stdin.
    pub fn stdin(&mut self) -> Result<SessionInput, Failure> {
        taken(&mut self.stdin, "stdin")
    }

    /// Why the session was cut short, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.reason()
    }

    /// The exit status, waiting at most `limit` once the streams are done. A lost session,
    /// a stream that ended without a status, or no status in time is a runtime failure.
    pub async fn finish(&mut self, limit: Duration) -> Result<Status, Failure> {
        let Some(rx) = self.status.take() else {
            return Err(Failure::runtime("the exec status was already taken"));
        };
        let lost = self.lost.cancelled();
        tokio::select! {
            biased;
            st = rx => match st {
                Ok(Some(st)) => Ok(st),
                _ => Err(Failure::runtime(self.lost.reason().unwrap_or_else(|| "the exec stream ended without an exit status".into()))),
            },
            _ = lost => Err(Failure::runtime(self.lost.reason().unwrap_or_default())),
            _ = tokio::time::sleep(limit) => Err(Failure::runtime(format!(
                "the command in the helper pod sent no exit status within {} after its output ended",
                humantime::format_duration(limit)
            ))),
        }
    }
}

/// A stream of a session, moved out of it; already taken (or never opened) is a bug of ours,
/// reported rather than panicked on.
fn taken<T>(slot: &mut Option<T>, what: &str) -> Result<T, Failure> {
    slot.take()
        .ok_or_else(|| Failure::runtime(format!("exec gave no {what}")))
}

impl Drop for Session {
    fn drop(&mut self) {
        // Streams handed out (to a task still reading, say) must not wait on a closed session.
        self.lost.fire("the exec session was closed".into());
        // Dropping the kube-rs process (inside the link) also ends its message loop.
        self.link.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn label() -> Arc<str> {
        Arc::from("helper pod ns/p")
    }

    #[tokio::test]
    async fn a_silent_stream_fails_after_the_stall_limit_and_fires_the_session() {
        let (r, _w) = tokio::io::simplex(16);
        let lost = Lost::default();
        let mut watched = Watched::new(r, lost.clone(), Some(Duration::from_millis(200)), label());
        let mut buf = [0u8; 4];
        let e = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        assert!(
            e.to_string()
                .contains("no data from helper pod ns/p for 200ms"),
            "{e}"
        );
        assert!(lost.reason().unwrap().contains("--stall-timeout"));
    }

    #[tokio::test]
    async fn a_slow_consumer_is_not_a_stall() {
        let (r, mut w) = tokio::io::simplex(16);
        let mut watched = Watched::new(
            r,
            Lost::default(),
            Some(Duration::from_millis(100)),
            label(),
        );
        w.write_all(b"abcd").await.unwrap();
        // The consumer is busy for longer than the limit; the data is there when it reads.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut buf = [0u8; 4];
        assert_eq!(watched.read(&mut buf).await.unwrap(), 4);
        w.shutdown().await.unwrap();
        assert_eq!(watched.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_parent_alarm_fails_blocked_readers_and_writers_with_its_reason() {
        let parent = Lost::default();
        let child = parent.child();
        let (r, _w) = tokio::io::simplex(16);
        let (_r2, w2) = tokio::io::simplex(4);
        let mut reader = Watched::new(r, child.clone(), None, label());
        let mut writer = Watched::new(w2, child.clone(), None, label());
        let p = parent.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            p.fire("node n1 is NotReady".into());
        });
        let mut buf = [0u8; 4];
        let e = reader.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("node n1 is NotReady"), "{e}");
        // The writer's pipe is full and nobody reads: it fails too instead of hanging.
        let e = writer.write_all(&[0u8; 64]).await.unwrap_err();
        assert!(e.to_string().contains("NotReady"), "{e}");
        assert_eq!(child.reason().as_deref(), Some("node n1 is NotReady"));
    }

    #[test]
    fn trouble_is_described() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "deletionTimestamp": "2025-01-01T00:00:00Z"},
        }))
        .unwrap();
        assert!(pod_trouble(&pod).unwrap().contains("being deleted"));
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"},
            "status": {"phase": "Running", "containerStatuses": [{"name": "pvbackup", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]},
        }))
        .unwrap();
        assert!(pod_trouble(&pod).unwrap().contains("exit code 137"));
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-2"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."}]},
        }))
        .unwrap();
        assert!(node_trouble(&node)
            .unwrap()
            .contains("node-2, which is NotReady"));
    }
}

//! The node agent: runs each scheduled pod's containers as real sandboxed processes, reports
//! container and pod status the way the kubelet does (pkg/kubelet/kubelet_pods.go
//! `generateAPIPodStatus`), enforces attach semantics for ReadWriteOnce volumes, pulls (or
//! fails to pull) images, restarts containers per restartPolicy with the kubelet's back-off,
//! honours activeDeadlineSeconds, and carries out graceful deletion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::Target;
use crate::errors::{ApiError, ApiResult};
use crate::resources;
use crate::sandbox::{BaseRootfs, Container, ContainerConfig, Mount};
use crate::sim::{Sim, SimRef};
use crate::store::now_rfc3339;

/// Back-off between restarts: 10s doubling to 5 minutes (pkg/kubelet/kubelet.go
/// `backOffPeriod`/`MaxContainerBackOff`).
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Runtime {
    /// Running containers by (pod uid, container name).
    containers: Mutex<HashMap<(String, String), Arc<Container>>>,
    /// Pods that have a worker, by uid.
    workers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Which node each attached PersistentVolume is attached to.
    attachments: Mutex<HashMap<String, String>>,
    base: std::sync::OnceLock<BaseRootfs>,
    base_lock: Mutex<()>,
    next_ip: std::sync::atomic::AtomicU32,
}

impl Runtime {
    pub fn container(&self, pod_uid: &str, name: &str) -> Option<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(pod_uid.to_string(), name.to_string()))
            .cloned()
    }

    fn set_container(&self, pod_uid: &str, name: &str, c: Option<Arc<Container>>) {
        let mut m = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        let k = (pod_uid.to_string(), name.to_string());
        match c {
            Some(c) => {
                m.insert(k, c);
            }
            None => {
                m.remove(&k);
            }
        }
    }

    pub fn base(&self, state_dir: &Path) -> Result<&BaseRootfs, String> {
        if let Some(b) = self.base.get() {
            return Ok(b);
        }
        // Pod workers start concurrently; only one may build the shared rootfs.
        let _guard = self.base_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = self.base.get() {
            return Ok(b);
        }
        let b = BaseRootfs::prepare(&state_dir.join("rootfs")).map_err(|e| e.to_string())?;
        Ok(self.base.get_or_init(|| b))
    }

    /// Kills every container of every pod (cluster shutdown).
    pub fn kill_everything(&self) {
        for (_, c) in self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            c.kill_all();
        }
        for (_, w) in self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            w.abort();
        }
    }

    pub fn kill_pod_containers(&self, pod_uid: &str) {
        let m = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        for ((uid, _), c) in m.iter() {
            if uid == pod_uid {
                c.kill_all();
            }
        }
    }
}

pub fn pod_finished(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded") | Some("Failed")
    )
}

/// Starts a worker for every pod bound to a Ready node that does not have one; a hollow node's
/// pods are reported running, or removed once deleted, without one (`hollow.rs`).
pub fn sync(sim: &SimRef) {
    let hollow = crate::hollow::nodes(sim);
    let known: std::collections::HashSet<String> = sim
        .runtime
        .workers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    let pods = sim.store.list_where(resources::pods(), None, |p| {
        let Some(node) = p["spec"]["nodeName"].as_str() else {
            return false;
        };
        if hollow.contains(node) {
            p["status"]["phase"] != "Running" || !p["metadata"]["deletionTimestamp"].is_null()
        } else {
            !p["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| known.contains(u))
        }
    });
    for pod in pods {
        let Some(node) = pod["spec"]["nodeName"].as_str() else {
            continue;
        };
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !sim.faults.node_ready(node) {
            continue;
        }
        if hollow.contains(node) {
            hollow_pod(sim, &pod, node, uid);
            continue;
        }
        let mut workers = sim
            .runtime
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if workers.get(&uid).is_some_and(|h| !h.is_finished()) {
            continue;
        }
        if workers.contains_key(&uid) {
            continue;
        }
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let s = sim.clone();
        let u = uid.clone();
        workers.insert(
            uid,
            tokio::spawn(async move { PodWorker::new(s, ns, name, u).run().await }),
        );
    }
}

/// A pod on a hollow node: deleted, it goes at once; otherwise it gets the status of running
/// containers (what `PodWorker::publish` writes for a real pod whose containers started).
fn hollow_pod(sim: &SimRef, pod: &Value, node: &str, uid: String) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        let _ = sim.store.remove(resources::pods(), Some(ns), name);
        return;
    }
    if pod_finished(pod) {
        return;
    }
    let mut w = PodWorker::new(sim.clone(), ns.to_string(), name.to_string(), uid);
    let now = now_rfc3339();
    let running = || CState {
        running_since: Some(now.clone()),
        started: true,
        ..Default::default()
    };
    w.host_ip = node_ip(sim, node);
    w.node = node.to_string();
    w.init = PodWorker::spec_containers(pod, "initContainers")
        .iter()
        .map(|c| {
            if c["restartPolicy"] == "Always" {
                running()
            } else {
                CState {
                    terminated: Some(terminated(0, "Completed")),
                    started: true,
                    ..Default::default()
                }
            }
        })
        .collect();
    w.main = PodWorker::spec_containers(pod, "containers")
        .iter()
        .map(|_| running())
        .collect();
    w.start_time = Some(now.clone());
    w.phase = "Running";
    w.publish(pod);
}

#[derive(Clone, Default)]
struct CState {
    /// waiting reason/message, running since, or terminated.
    waiting: Option<(String, String)>,
    running_since: Option<String>,
    terminated: Option<Value>,
    last_terminated: Option<Value>,
    restarts: i64,
    started: bool,
}

struct PodWorker {
    sim: SimRef,
    ns: String,
    name: String,
    uid: String,
    init: Vec<CState>,
    main: Vec<CState>,
    start_time: Option<String>,
    phase: &'static str,
    reason: Option<(String, String)>,
    ip: String,
    host_ip: String,
    pod_dir: PathBuf,
    /// The pod's node, once known.
    node: String,
    /// The pod as last seen while the node could reach the API server.
    seen: std::sync::Mutex<Option<Value>>,
}

enum Outcome {
    Deleted,
    Gone,
}

impl PodWorker {
    fn new(sim: SimRef, ns: String, name: String, uid: String) -> Self {
        let n = sim
            .runtime
            .next_ip
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pod_dir = sim.state_dir.join("pods").join(&uid);
        PodWorker {
            sim,
            ns,
            name,
            uid,
            init: vec![],
            main: vec![],
            start_time: None,
            phase: "Pending",
            reason: None,
            ip: format!("10.244.{}.{}", (n / 250) % 250, n % 250 + 2),
            host_ip: String::new(),
            pod_dir,
            node: String::new(),
            seen: std::sync::Mutex::new(None),
        }
    }

    /// A NotReady node is cut off from the API server: its kubelet goes on running the pods it
    /// has, but sees no change to them (a deletion included: the pod stays Terminating until
    /// the node is back, or is force-deleted) and reports nothing.
    fn partitioned(&self) -> bool {
        !self.node.is_empty() && !self.sim.faults.node_ready(&self.node)
    }

    fn pod(&self) -> Option<Value> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if self.partitioned() {
            if let Some(p) = seen.as_ref() {
                return Some(p.clone());
            }
        }
        let now = self
            .sim
            .store
            .try_get(resources::pods(), Some(&self.ns), &self.name)
            .filter(|p| p["metadata"]["uid"] == self.uid.as_str());
        seen.clone_from(&now);
        now
    }

    fn event(&self, type_: &str, reason: &str, msg: &str) {
        if self.partitioned() {
            return;
        }
        if let Some(p) = self.pod() {
            self.sim.record(&p, type_, reason, msg, "kubelet");
        }
    }

    async fn run(mut self) {
        let outcome = self.lifecycle().await;
        self.kill_all(Duration::ZERO).await;
        let _ = std::fs::remove_dir_all(self.pod_dir.join("containers"));
        if let Some(p) = self.pod() {
            let terminating = !p["metadata"]["deletionTimestamp"].is_null();
            if matches!(outcome, Outcome::Deleted) || terminating {
                let _ = self
                    .sim
                    .store
                    .remove(resources::pods(), Some(&self.ns), &self.name);
            }
        }
        crate::volumes::release_all_under(&self.pod_dir).ok();
        let _ = std::fs::remove_dir_all(&self.pod_dir);
        self.sim
            .runtime
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.uid);
        self.sim.kick.notify_waiters();
    }

    fn spec_containers(pod: &Value, key: &str) -> Vec<Value> {
        pod["spec"][key].as_array().cloned().unwrap_or_default()
    }

    fn terminating(pod: &Value) -> bool {
        !pod["metadata"]["deletionTimestamp"].is_null()
    }

    /// Runs the pod until it is deleted (Outcome::Deleted), vanishes, or finishes.
    async fn lifecycle(&mut self) -> Outcome {
        let Some(pod) = self.pod() else {
            return Outcome::Gone;
        };
        let node = pod["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.host_ip = node_ip(&self.sim, &node);
        self.node = node.clone();
        let inits = Self::spec_containers(&pod, "initContainers");
        let mains = Self::spec_containers(&pod, "containers");
        self.init = vec![CState::default(); inits.len()];
        self.main = vec![CState::default(); mains.len()];
        for c in self.init.iter_mut().chain(self.main.iter_mut()) {
            c.waiting = Some(("ContainerCreating".into(), String::new()));
        }
        for (i, _) in inits.iter().enumerate() {
            self.init[i].waiting = Some(("PodInitializing".into(), String::new()));
        }
        self.start_time = Some(now_rfc3339());
        self.publish(&pod);

        // Volumes: attach (RWO exclusivity) and set up.
        let mut warned = false;
        let mounts = loop {
            let Some(pod) = self.pod() else {
                return Outcome::Gone;
            };
            if Self::terminating(&pod) {
                return Outcome::Deleted;
            }
            match self.prepare_volumes(&pod, &node) {
                Ok(m) => break m,
                Err(VolumeWait::Retry(reason, msg, component)) => {
                    if !warned {
                        if let Some(p) = self.pod() {
                            self.sim.record(&p, "Warning", &reason, &msg, component);
                        }
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        };

        // Images: every container's image is pulled before anything starts.
        let all: Vec<Value> = inits.iter().chain(mains.iter()).cloned().collect();
        for (idx, c) in all.iter().enumerate() {
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let mut backoff = BACKOFF_BASE;
            loop {
                let Some(pod) = self.pod() else {
                    return Outcome::Gone;
                };
                if Self::terminating(&pod) {
                    return Outcome::Deleted;
                }
                if !self.sim.faults.image_fails(&image) {
                    break;
                }
                // Real texts: pkg/kubelet/images/image_manager.go (ErrImagePull, then
                // ImagePullBackOff "Back-off pulling image ...").
                let msg = format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{}\": failed to resolve reference \"{}\": not found", qualify_image(&image), qualify_image(&image));
                self.set_waiting(idx, inits.len(), "ErrImagePull", &msg);
                self.publish(&pod);
                self.event("Normal", "Pulling", &format!("Pulling image \"{image}\""));
                self.event(
                    "Warning",
                    "Failed",
                    &format!("Failed to pull image \"{image}\": {msg}"),
                );
                self.event("Warning", "Failed", "Error: ErrImagePull");
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.set_waiting(
                    idx,
                    inits.len(),
                    "ImagePullBackOff",
                    &format!("Back-off pulling image \"{image}\""),
                );
                if let Some(p) = self.pod() {
                    self.publish(&p);
                }
                self.event(
                    "Normal",
                    "BackOff",
                    &format!("Back-off pulling image \"{image}\""),
                );
                self.event("Warning", "Failed", "Error: ImagePullBackOff");
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    match self.pod() {
                        None => return Outcome::Gone,
                        Some(p) if Self::terminating(&p) => return Outcome::Deleted,
                        _ => {}
                    }
                    if !self.sim.faults.image_fails(&image) {
                        break;
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            self.event(
                "Normal",
                "Pulled",
                &format!("Container image \"{image}\" already present on machine"),
            );
            self.set_waiting(
                idx,
                inits.len(),
                if idx < inits.len() {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                },
                "",
            );
        }

        let restart_policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let deadline = pod["spec"]["activeDeadlineSeconds"]
            .as_u64()
            .map(|s| Instant::now() + Duration::from_secs(s));

        // Init containers, in order; native sidecars (restartPolicy Always) start and stay.
        for (i, c) in inits.iter().enumerate() {
            let sidecar = c["restartPolicy"].as_str() == Some("Always");
            loop {
                match self.start(&pod, c, &mounts, true, i) {
                    Ok(container) => {
                        if sidecar {
                            // A native sidecar keeps running; one that dies is not restarted (README).
                            break;
                        }
                        let exit = tokio::select! {
                            e = container.wait() => Some(e),
                            o = self.watch_deletion(deadline) => { if let Some(o) = o { return o; } None }
                        };
                        let Some(exit) = exit else { continue };
                        let code = exit.exit_code();
                        self.sim.runtime.set_container(
                            &self.uid,
                            c["name"].as_str().unwrap_or_default(),
                            None,
                        );
                        self.init[i].running_since = None;
                        self.init[i].terminated = Some(terminated(
                            code,
                            if code == 0 { "Completed" } else { "Error" },
                        ));
                        if let Some(p) = self.pod() {
                            self.publish(&p);
                        }
                        if code == 0 {
                            break;
                        }
                        if restart_policy == "Never" {
                            self.phase = "Failed";
                            if let Some(p) = self.pod() {
                                self.publish(&p);
                            }
                            return self.wait_for_deletion().await;
                        }
                        self.init[i].restarts += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(msg) => {
                        self.fail_start(i, true, &msg, &pod);
                        if restart_policy == "Never" {
                            self.phase = "Failed";
                            if let Some(p) = self.pod() {
                                self.publish(&p);
                            }
                            return self.wait_for_deletion().await;
                        }
                        if let Some(o) = self.sleep_watching(BACKOFF_BASE, deadline).await {
                            return o;
                        }
                    }
                }
            }
        }

        // Main containers.
        let mut running: Vec<Option<Arc<Container>>> = vec![None; mains.len()];
        let mut next_start: Vec<Instant> = vec![Instant::now(); mains.len()];
        let mut backoffs: Vec<Duration> = vec![BACKOFF_BASE; mains.len()];
        let mut done: Vec<bool> = vec![false; mains.len()];
        loop {
            let Some(pod) = self.pod() else {
                return Outcome::Gone;
            };
            if Self::terminating(&pod) {
                return self.terminate(&pod, &mains).await;
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    self.kill_all(Duration::ZERO).await;
                    for c in self.main.iter_mut() {
                        if c.running_since.take().is_some() {
                            c.terminated = Some(terminated(137, "Error"));
                        }
                    }
                    self.phase = "Failed";
                    self.reason = Some((
                        "DeadlineExceeded".into(),
                        "Pod was active on the node longer than the specified deadline".into(),
                    ));
                    self.event(
                        "Normal",
                        "DeadlineExceeded",
                        "Pod was active on the node longer than the specified deadline",
                    );
                    self.publish(&pod);
                    return self.wait_for_deletion().await;
                }
            }
            let mut changed = false;
            for (i, c) in mains.iter().enumerate() {
                if done[i] {
                    continue;
                }
                if running[i].is_none() && Instant::now() >= next_start[i] {
                    match self.start(&pod, c, &mounts, false, i) {
                        Ok(ct) => running[i] = Some(ct),
                        Err(msg) => {
                            self.fail_start(i, false, &msg, &pod);
                            if restart_policy == "Never" {
                                done[i] = true;
                            } else {
                                next_start[i] = Instant::now() + backoffs[i];
                                backoffs[i] = (backoffs[i] * 2).min(BACKOFF_MAX);
                            }
                        }
                    }
                    changed = true;
                }
            }
            if changed {
                self.publish(&pod);
            }
            // Wait for any container to exit, or a short tick.
            let exited = {
                let waits: Vec<_> = running
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| {
                        c.clone()
                            .map(|c| Box::pin(async move { (i, c.wait().await) }))
                    })
                    .collect();
                if waits.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    None
                } else {
                    tokio::select! {
                        (r, _, _) = futures::future::select_all(waits) => Some(r),
                        _ = tokio::time::sleep(Duration::from_millis(200)) => None,
                    }
                }
            };
            if let Some((i, exit)) = exited {
                let code = exit.exit_code();
                running[i] = None;
                let cname = mains[i]["name"].as_str().unwrap_or_default();
                self.sim.runtime.set_container(&self.uid, cname, None);
                let st = &mut self.main[i];
                st.running_since = None;
                let t = terminated(code, if code == 0 { "Completed" } else { "Error" });
                let restart = match restart_policy.as_str() {
                    "Always" => true,
                    "OnFailure" => code != 0,
                    _ => false,
                };
                if restart {
                    st.last_terminated = Some(t);
                    st.restarts += 1;
                    st.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={cname} pod={}_{}({})",
                            backoffs[i].as_secs(),
                            self.name,
                            self.ns,
                            self.uid
                        ),
                    ));
                    next_start[i] = Instant::now()
                        + if st.restarts == 1 {
                            Duration::from_millis(100)
                        } else {
                            backoffs[i]
                        };
                    if st.restarts > 1 {
                        backoffs[i] = (backoffs[i] * 2).min(BACKOFF_MAX);
                        self.event(
                            "Warning",
                            "BackOff",
                            &format!(
                                "Back-off restarting failed container {cname} in pod {}_{}({})",
                                self.name, self.ns, self.uid
                            ),
                        );
                    }
                } else {
                    st.terminated = Some(t);
                    done[i] = true;
                }
                if let Some(p) = self.pod() {
                    self.publish(&p);
                }
            }
            if done.iter().all(|d| *d) {
                let all_ok = self
                    .main
                    .iter()
                    .all(|c| c.terminated.as_ref().is_some_and(|t| t["exitCode"] == 0));
                self.phase = if all_ok { "Succeeded" } else { "Failed" };
                // Native sidecars stop once the main containers are done (KEP-753).
                self.kill_all(Duration::from_secs(2)).await;
                if let Some(p) = self.pod() {
                    self.publish(&p);
                }
                return self.wait_for_deletion().await;
            }
        }
    }

    fn set_waiting(&mut self, idx: usize, n_init: usize, reason: &str, msg: &str) {
        let st = if idx < n_init {
            &mut self.init[idx]
        } else {
            &mut self.main[idx - n_init]
        };
        st.waiting = Some((reason.to_string(), msg.to_string()));
    }

    fn fail_start(&mut self, i: usize, init: bool, msg: &str, pod: &Value) {
        let st = if init {
            &mut self.init[i]
        } else {
            &mut self.main[i]
        };
        // A runtime that cannot start the process reports StartError (containerd) with exit 128.
        st.terminated = Some(
            json!({"exitCode": 128, "reason": "StartError", "message": msg, "startedAt": "1970-01-01T00:00:00Z", "finishedAt": now_rfc3339()}),
        );
        st.waiting = None;
        self.event("Warning", "Failed", &format!("Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: {msg}: unknown"));
        self.publish(pod);
    }

    fn start(
        &mut self,
        pod: &Value,
        c: &Value,
        mounts: &[PodVolume],
        init: bool,
        i: usize,
    ) -> Result<Arc<Container>, String> {
        let cname = c["name"].as_str().unwrap_or_default().to_string();
        let base = self.sim.runtime.base(&self.sim.state_dir)?;
        let mut argv: Vec<String> = c["command"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let args: Vec<String> = c["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let image = c["image"].as_str().unwrap_or_default();
        let binary = image_binary(&self.sim, image)?;
        if argv.is_empty() {
            argv = match &binary {
                Some(b) => b.entrypoint.clone(),
                None => image_entrypoint(image),
            };
        }
        argv.extend(args);
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOSTNAME".into(), self.name.clone()),
        ];
        env.extend(crate::serviceaccounts::service_env(&self.sim));
        // envFrom first, then env: a name in env wins (kubelet_pods.go makeEnvironmentVariables).
        env.extend(crate::serviceaccounts::secret_env(&self.sim, &self.ns, c)?);
        for e in c["env"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                env.push((k.to_string(), v.to_string()));
            }
        }
        let mut vm: Vec<Mount> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let vname = m["name"].as_str()?;
                let src = mounts.iter().find(|x| x.name == vname)?;
                Some(Mount {
                    host_path: src.host_path.clone(),
                    container_path: m["mountPath"].as_str()?.to_string(),
                    read_only: src.read_only || m["readOnly"].as_bool().unwrap_or(false),
                })
            })
            .collect();
        if crate::serviceaccounts::automount(&self.sim, pod) {
            let dir =
                crate::serviceaccounts::project(&self.sim, &self.pod_dir, pod).map_err(|e| {
                    format!("MountVolume.SetUp failed for volume \"kube-api-access\": {e}")
                })?;
            vm.push(Mount {
                host_path: dir,
                container_path: crate::serviceaccounts::MOUNT_PATH.into(),
                read_only: true,
            });
        }
        if let Some(b) = binary {
            vm.extend(b.mounts);
        }
        let sc = &c["securityContext"];
        let psc = &pod["spec"]["securityContext"];
        let uid = sc["runAsUser"]
            .as_u64()
            .or_else(|| psc["runAsUser"].as_u64())
            .map(|u| u as u32);
        let gid = sc["runAsGroup"]
            .as_u64()
            .or_else(|| psc["runAsGroup"].as_u64())
            .map(|u| u as u32);
        let root_dir = self.pod_dir.join("containers").join(&cname);
        let _ = std::fs::remove_dir_all(&root_dir);
        std::fs::create_dir_all(&root_dir)
            .map_err(|e| format!("creating {}: {e}", root_dir.display()))?;
        let log_dir = self.pod_dir.join("logs");
        std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
        let cfg = ContainerConfig {
            root_dir,
            hostname: self.name.clone(),
            argv,
            env,
            working_dir: c["workingDir"].as_str().map(str::to_string),
            mounts: vm,
            run_as_user: uid,
            run_as_group: gid,
            read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
            log_path: log_dir.join(format!("{cname}.log")),
        };
        let ct = Arc::new(Container::start(base, &cfg).map_err(|e| e.to_string())?);
        self.sim
            .runtime
            .set_container(&self.uid, &cname, Some(ct.clone()));
        let st = if init {
            &mut self.init[i]
        } else {
            &mut self.main[i]
        };
        st.waiting = None;
        st.terminated = None;
        st.running_since = Some(now_rfc3339());
        st.started = true;
        self.event("Normal", "Created", &format!("Created container {cname}"));
        self.event("Normal", "Started", &format!("Started container {cname}"));
        self.publish(pod);
        Ok(ct)
    }

    async fn watch_deletion(&self, deadline: Option<Instant>) -> Option<Outcome> {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match self.pod() {
                None => return Some(Outcome::Gone),
                Some(p) if Self::terminating(&p) => return Some(Outcome::Deleted),
                _ => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
        }
    }

    async fn sleep_watching(&self, d: Duration, deadline: Option<Instant>) -> Option<Outcome> {
        tokio::select! {
            _ = tokio::time::sleep(d) => None,
            o = self.watch_deletion(deadline) => o,
        }
    }

    async fn wait_for_deletion(&mut self) -> Outcome {
        loop {
            match self.pod() {
                None => return Outcome::Gone,
                Some(p) if Self::terminating(&p) => return Outcome::Deleted,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Graceful deletion: SIGTERM, wait out the grace period, SIGKILL (pkg/kubelet/kuberuntime
    /// `killContainer`).
    async fn terminate(&mut self, pod: &Value, mains: &[Value]) -> Outcome {
        for c in mains {
            self.event(
                "Normal",
                "Killing",
                &format!(
                    "Stopping container {}",
                    c["name"].as_str().unwrap_or_default()
                ),
            );
        }
        let grace = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        self.kill_all(Duration::from_secs(grace)).await;
        Outcome::Deleted
    }

    async fn kill_all(&mut self, grace: Duration) {
        let containers: Vec<Arc<Container>> = {
            let m = self
                .sim
                .runtime
                .containers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            m.iter()
                .filter(|((u, _), _)| *u == self.uid)
                .map(|(_, c)| c.clone())
                .collect()
        };
        for c in &containers {
            let _ = c.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let until = Instant::now() + grace;
        for c in &containers {
            let left = until.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, c.wait()).await.is_err() {
                c.kill_all();
                let _ = c.wait().await;
            }
            c.kill_all();
        }
        let mut m = self
            .sim
            .runtime
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.retain(|(u, _), _| *u != self.uid);
        drop(m);
        for st in self.main.iter_mut().chain(self.init.iter_mut()) {
            if st.running_since.take().is_some() {
                st.terminated = Some(terminated(
                    if grace.is_zero() { 137 } else { 0 },
                    if grace.is_zero() {
                        "Error"
                    } else {
                        "Completed"
                    },
                ));
            }
        }
    }

    fn prepare_volumes(&mut self, pod: &Value, node: &str) -> Result<Vec<PodVolume>, VolumeWait> {
        let mut out = Vec::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or_default().to_string();
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                let pvc = self.sim.store.try_get(resources::pvcs(), Some(&self.ns), claim).ok_or_else(|| {
                    VolumeWait::Retry("FailedMount".into(), format!("Unable to attach or mount volumes: unmounted volumes=[{vname}]: persistentvolumeclaim \"{claim}\" not found"), "kubelet")
                })?;
                let pv_name = pvc["spec"]["volumeName"].as_str().filter(|_| pvc["status"]["phase"] == "Bound").ok_or_else(|| {
                    VolumeWait::Retry("FailedMount".into(), format!("Unable to attach or mount volumes: unmounted volumes=[{vname}]: persistentvolumeclaim \"{claim}\" is not bound"), "kubelet")
                })?;
                let pv = self
                    .sim
                    .store
                    .try_get(resources::pvs(), None, pv_name)
                    .ok_or_else(|| {
                        VolumeWait::Retry(
                            "FailedMount".into(),
                            format!("persistentvolume \"{pv_name}\" not found"),
                            "kubelet",
                        )
                    })?;
                let modes: Vec<&str> = pvc["status"]["accessModes"]
                    .as_array()
                    .or(pvc["spec"]["accessModes"].as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let exclusive = modes
                    .iter()
                    .all(|m| *m == "ReadWriteOnce" || *m == "ReadWriteOncePod");
                if exclusive {
                    attach(&self.sim, pv_name, node, &self.ns, &self.uid)?;
                }
                let host = pv["metadata"]["annotations"]["kubesim.dev/host-path"]
                    .as_str()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| volume_path(&self.sim, &self.ns, claim));
                let ro = v["persistentVolumeClaim"]["readOnly"]
                    .as_bool()
                    .unwrap_or(false);
                out.push(PodVolume {
                    name: vname,
                    host_path: host,
                    read_only: ro,
                });
            } else if v.get("emptyDir").is_some() {
                let dir = self.pod_dir.join("volumes").join(&vname);
                // World-writable, as the kubelet makes it (pkg/volume/emptydir/empty_dir.go:
                // `const perm os.FileMode = 0777`, applied by setupDir whatever the umask), so a
                // container running as non-root can write to it.
                std::fs::create_dir_all(&dir)
                    .and_then(|()| {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    })
                    .map_err(|e| {
                        VolumeWait::Retry("FailedMount".into(), e.to_string(), "kubelet")
                    })?;
                out.push(PodVolume {
                    name: vname,
                    host_path: dir,
                    read_only: false,
                });
            } else if let Some(p) = v["hostPath"]["path"].as_str() {
                out.push(PodVolume {
                    name: vname,
                    host_path: PathBuf::from(p),
                    read_only: false,
                });
            }
        }
        Ok(out)
    }

    /// Writes the pod's status as the kubelet's status manager would.
    fn publish(&self, pod: &Value) {
        if self.partitioned() {
            return;
        }
        let inits = Self::spec_containers(pod, "initContainers");
        let mains = Self::spec_containers(pod, "containers");
        let cstatus = |spec: &Value, st: &CState| -> Value {
            let state = if let Some(since) = &st.running_since {
                json!({"running": {"startedAt": since}})
            } else if let Some(t) = &st.terminated {
                json!({"terminated": t})
            } else {
                let (r, m) = st
                    .waiting
                    .clone()
                    .unwrap_or(("ContainerCreating".into(), String::new()));
                if m.is_empty() {
                    json!({"waiting": {"reason": r}})
                } else {
                    json!({"waiting": {"reason": r, "message": m}})
                }
            };
            let image = spec["image"].as_str().unwrap_or_default();
            let mut s = json!({
                "name": spec["name"],
                "image": image,
                "imageID": if st.started { json!(format!("{}@sha256:{}", qualify_image(image), image_digest(image))) } else { json!("") },
                "ready": st.running_since.is_some(),
                "restartCount": st.restarts,
                "started": st.running_since.is_some(),
                "state": state,
                "lastState": st.last_terminated.as_ref().map(|t| json!({"terminated": t})).unwrap_or(json!({})),
            });
            if st.started {
                s["containerID"] = json!(format!(
                    "containerd://{}",
                    &image_digest(&format!("{}{}", spec["name"], st.restarts))
                ));
            }
            s
        };
        let init_st: Vec<Value> = inits
            .iter()
            .zip(self.init.iter())
            .map(|(s, c)| cstatus(s, c))
            .collect();
        let main_st: Vec<Value> = mains
            .iter()
            .zip(self.main.iter())
            .map(|(s, c)| cstatus(s, c))
            .collect();
        let phase = if self.phase != "Pending" {
            self.phase
        } else if self
            .main
            .iter()
            .any(|c| c.running_since.is_some() || c.last_terminated.is_some())
        {
            "Running"
        } else {
            "Pending"
        };
        let now = now_rfc3339();
        let initialized = self.init.iter().zip(inits.iter()).all(|(c, s)| {
            c.terminated.as_ref().is_some_and(|t| t["exitCode"] == 0)
                || (s["restartPolicy"] == "Always" && c.running_since.is_some())
        });
        let ready = phase == "Running" && self.main.iter().all(|c| c.running_since.is_some());
        let cond = |t: &str, ok: bool, reason: Option<&str>| -> Value {
            let mut c = json!({"type": t, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": now});
            if let (false, Some(r)) = (ok, reason) {
                c["reason"] = json!(r);
            }
            c
        };
        let conds = vec![
            cond("PodReadyToStartContainers", true, None),
            cond("Initialized", initialized, Some("ContainersNotInitialized")),
            cond(
                "Ready",
                ready,
                Some(if phase == "Succeeded" || phase == "Failed" {
                    "PodCompleted"
                } else {
                    "ContainersNotReady"
                }),
            ),
            cond(
                "ContainersReady",
                ready,
                Some(if phase == "Succeeded" || phase == "Failed" {
                    "PodCompleted"
                } else {
                    "ContainersNotReady"
                }),
            ),
            cond("PodScheduled", true, None),
        ];
        let ip = self.ip.clone();
        let host_ip = self.host_ip.clone();
        let start = self.start_time.clone();
        let reason = self.reason.clone();
        let qos = pod["status"]["qosClass"].clone();
        let _ = self
            .sim
            .store
            .update(resources::pods(), Some(&self.ns), &self.name, |p| {
                if p["metadata"]["uid"] != self.uid.as_str() {
                    return Ok(());
                }
                let old_conds = p["status"]["conditions"].clone();
                let mut status = json!({
                    "phase": phase,
                    "conditions": conds,
                    "hostIP": host_ip,
                    "hostIPs": [{"ip": host_ip}],
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "startTime": start,
                    "containerStatuses": main_st,
                    "qosClass": qos,
                });
                if !init_st.is_empty() {
                    status["initContainerStatuses"] = json!(init_st);
                }
                if let Some((r, m)) = reason {
                    status["reason"] = json!(r);
                    status["message"] = json!(m);
                }
                // Keep transition times stable when a condition did not change.
                if let Some(old) = old_conds.as_array() {
                    for c in status["conditions"].as_array_mut().into_iter().flatten() {
                        if let Some(o) = old
                            .iter()
                            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                        {
                            c["lastTransitionTime"] = o["lastTransitionTime"].clone();
                        }
                    }
                }
                p["status"] = status;
                Ok(())
            });
    }
}

/// A pod volume resolved to a host directory, before it is placed at each container's mountPath.
#[derive(Clone)]
struct PodVolume {
    name: String,
    host_path: PathBuf,
    read_only: bool,
}

enum VolumeWait {
    Retry(String, String, &'static str),
}

/// Attach semantics of the attach/detach controller: a ReadWriteOnce volume is attached to one
/// node at a time; a pod elsewhere waits with `Multi-Attach error` (message from
/// pkg/controller/volume/attachdetach/reconciler/reconciler.go `reportMultiAttachError`).
fn attach(sim: &Sim, pv: &str, node: &str, ns: &str, pod_uid: &str) -> Result<(), VolumeWait> {
    let mut att = sim
        .runtime
        .attachments
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(current) = att.get(pv).cloned() {
        if current != node {
            let users = pods_using_pv_on(sim, pv, &current, pod_uid);
            if !users.is_empty() {
                let (same_ns, other): (Vec<_>, Vec<_>) =
                    users.into_iter().partition(|(n, _)| n == ns);
                let msg = if !same_ns.is_empty() {
                    format!("Multi-Attach error for volume \"{pv}\" Volume is already used by pod(s) {}", same_ns.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join(", "))
                } else {
                    format!("Multi-Attach error for volume \"{pv}\" Volume is already used by {} pod(s) in different namespaces", other.len())
                };
                return Err(VolumeWait::Retry(
                    "FailedAttachVolume".into(),
                    msg,
                    "attachdetach-controller",
                ));
            }
        }
    }
    att.insert(pv.to_string(), node.to_string());
    Ok(())
}

fn pods_using_pv_on(sim: &Sim, pv: &str, node: &str, except_uid: &str) -> Vec<(String, String)> {
    let (pods, _) = sim.store.list_shared(resources::pods(), None);
    let (pvcs, _) = sim.store.list_shared(resources::pvcs(), None);
    let claim = pvcs.iter().find(|c| c["spec"]["volumeName"] == pv);
    let Some(claim) = claim else { return vec![] };
    let cns = claim["metadata"]["namespace"].as_str().unwrap_or_default();
    let cname = claim["metadata"]["name"].as_str().unwrap_or_default();
    pods.iter()
        .filter(|p| {
            p["spec"]["nodeName"] == node && p["metadata"]["uid"] != except_uid && !pod_finished(p)
        })
        .filter(|p| p["metadata"]["namespace"] == cns)
        .filter(|p| {
            p["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["persistentVolumeClaim"]["claimName"] == cname)
        })
        .map(|p| {
            (
                p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// Detaches volumes whose last pod on their node is gone.
pub fn detach_unused(sim: &Sim) {
    let pvs: Vec<(String, String)> = sim
        .runtime
        .attachments
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    for (pv, node) in pvs {
        if pods_using_pv_on(sim, &pv, &node, "").is_empty() {
            sim.runtime
                .attachments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pv);
        }
    }
}

pub fn volume_path(sim: &Sim, ns: &str, pvc: &str) -> PathBuf {
    sim.volumes_dir().join(ns).join(pvc)
}

fn node_ip(sim: &Sim, node: &str) -> String {
    sim.store
        .try_get(resources::nodes(), None, node)
        .and_then(|n| {
            n["status"]["addresses"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["type"] == "InternalIP")
                    .and_then(|x| x["address"].as_str().map(str::to_string))
            })
        })
        .unwrap_or_default()
}

fn terminated(code: i32, reason: &str) -> Value {
    json!({"exitCode": code, "reason": reason, "startedAt": now_rfc3339(), "finishedAt": now_rfc3339()})
}

/// `busybox:1.36` → `docker.io/library/busybox:1.36`, as containerd reports image names.
pub fn qualify_image(image: &str) -> String {
    let with_tag = if image
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':') || last.contains('@'))
    {
        image.to_string()
    } else {
        format!("{image}:latest")
    };
    let first = with_tag.split('/').next().unwrap_or_default();
    if !with_tag.contains('/') {
        format!("docker.io/library/{with_tag}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        with_tag
    } else {
        format!("docker.io/{with_tag}")
    }
}

fn image_digest(image: &str) -> String {
    use sha2::Digest;
    hex_lower(&sha2::Sha256::digest(image.as_bytes()))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every image runs the busybox userland; an image's entrypoint, when the pod gives no
/// command, is what its real image would run, mapped to busybox equivalents.
fn image_entrypoint(image: &str) -> Vec<String> {
    let forever = vec![
        "sh".to_string(),
        "-c".to_string(),
        "trap 'exit 0' TERM; while true; do sleep 1; done".to_string(),
    ];
    let name = image.rsplit('/').next().unwrap_or(image);
    if name.starts_with("busybox") || name.starts_with("alpine") {
        vec!["sh".to_string()]
    } else {
        forever
    }
}

/// What a container of an image mapped to a host binary gets.
struct ImageBinary {
    mounts: Vec<Mount>,
    entrypoint: Vec<String>,
}

/// Where an image mapped to a host binary keeps it (the repository's Dockerfile puts the plugin
/// there too).
const IMAGE_BINARY_DIR: &str = "/usr/local/bin";
/// Debian's (and distroless's) CA bundle, where rustls-native-certs and OpenSSL look first.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// For an image mapped to a host binary (`ClusterOptions::image_binaries`): the read-only mounts
/// of the binary, of the shared libraries `ldd` resolves for it and of the host's CA bundle —
/// what a distroless image holding that binary contains (gcr.io/distroless/cc: glibc, libgcc,
/// ca-certificates) — and its entrypoint.
fn image_binary(sim: &Sim, image: &str) -> Result<Option<ImageBinary>, String> {
    let wanted = qualify_image(image);
    let Some((_, host)) = sim
        .image_binaries
        .iter()
        .find(|(i, _)| qualify_image(i) == wanted)
    else {
        return Ok(None);
    };
    let file = host
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = format!("{IMAGE_BINARY_DIR}/{file}");
    let mut mounts = vec![Mount {
        host_path: host.clone(),
        container_path: target.clone(),
        read_only: true,
    }];
    let out = std::process::Command::new("ldd")
        .arg(host)
        .output()
        .map_err(|e| format!("ldd {}: {e}", host.display()))?;
    for lib in shared_libraries(&String::from_utf8_lossy(&out.stdout)) {
        mounts.push(Mount {
            host_path: PathBuf::from(&lib),
            container_path: lib,
            read_only: true,
        });
    }
    if let Ok(bundle) = std::fs::canonicalize(CA_BUNDLE) {
        mounts.push(Mount {
            host_path: bundle,
            container_path: CA_BUNDLE.into(),
            read_only: true,
        });
    }
    Ok(Some(ImageBinary {
        mounts,
        entrypoint: vec![target],
    }))
}

/// The absolute library paths in `ldd` output (`libc.so.6 => /lib/…/libc.so.6 (0x…)` and the
/// interpreter line `/lib64/ld-linux-x86-64.so.2 (0x…)`); none for a static binary.
fn shared_libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// `GET pods/<name>/log?container=...` from the container's log file.
pub fn logs(sim: &SimRef, t: &Target, q: &HashMap<String, Vec<String>>) -> ApiResult<Vec<u8>> {
    let name = t.name.clone().unwrap_or_default();
    let pod = sim
        .store
        .get(resources::pods(), t.namespace.as_deref(), &name)?;
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let cname = match q.get("container").and_then(|v| v.first()) {
        Some(c) => c.clone(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    if let Some(node) = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| crate::hollow::is_hollow(sim, n))
    {
        return Err(ApiError::bad_request(crate::hollow::no_containers(
            &name, node,
        )));
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let path = sim
        .state_dir
        .join("pods")
        .join(uid)
        .join("logs")
        .join(format!("{cname}.log"));
    std::fs::read(&path).map_err(|_| {
        ApiError::bad_request(format!(
            "container \"{cname}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        ))
    })
}

//! A helper pod's life: create it, wait (with a timeout) until it runs or clearly cannot,
//! exec into it, and delete it whatever happens. Every created pod is registered so that
//! Ctrl-C, SIGTERM or a failure removes it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, AttachParams, AttachedProcess, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;

use crate::connect::explain;
use crate::exit::Failure;

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

    /// Deletes every registered pod, retrying through short outages.
    pub async fn delete_all(&self, client: &kube::Client) -> Vec<String> {
        let mut left = Vec::new();
        for (ns, name) in self.pending() {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if delete_with_retry(&api, &name).await {
                self.remove(&ns, &name);
            } else {
                left.push(format!("{ns}/{name}"));
            }
        }
        left
    }
}

/// Deletes a pod, retrying for ~40 s so a brief API outage does not strand it. The pod's own
/// activeDeadlineSeconds is the last safety net.
async fn delete_with_retry(api: &Api<Pod>, name: &str) -> bool {
    let mut delay = Duration::from_millis(250);
    for _ in 0..12 {
        match api
            .delete(name, &DeleteParams::default().grace_period(1))
            .await
        {
            Ok(_) => return true,
            Err(kube::Error::Api(s)) if s.code == 404 => return true,
            Err(e) => tracing::debug!("deleting helper pod {name}: {e}; retrying"),
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
    registry: Registry,
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
                    "its image {} cannot be pulled ({reason}: {}). In an air-gapped cluster, mirror busybox and pass --image REGISTRY/busybox:1.36",
                    cs.image,
                    w.message.clone().unwrap_or_default()
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
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        api.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| {
                explain(
                    &format!("creating helper pod {name} in namespace {namespace}"),
                    &e,
                )
            })?;
        registry.add(&namespace, &name);
        let mut helper = HelperPod {
            api: api.clone(),
            client: client.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            node: None,
            registry: registry.clone(),
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
        let current = api.get_opt(&name).await.ok().flatten();
        let running = current
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Running");
        if let (Ok(Ok(_)), true) = (&outcome, running) {
            helper.node = current.and_then(|p| p.spec.and_then(|s| s.node_name));
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
    pub async fn exec(&self, argv: &[&str], stdin: bool) -> Result<AttachedProcess, Failure> {
        let ap = AttachParams::default()
            .container(crate::helper_pod::CONTAINER_NAME)
            .stdin(stdin)
            .stdout(true)
            .stderr(true)
            .max_stdin_buf_size(1 << 20)
            .max_stdout_buf_size(1 << 20)
            .max_stderr_buf_size(64 << 10);
        self.api
            .exec(&self.name, argv.iter().map(|s| s.to_string()), &ap)
            .await
            .map_err(|e| {
                explain(
                    &format!("exec into helper pod {}/{}", self.namespace, self.name),
                    &e,
                )
            })
    }

    /// Runs a short command and returns its stdout, failing on a non-zero exit.
    pub async fn run(&self, argv: &[&str]) -> Result<String, Failure> {
        use tokio::io::AsyncReadExt;
        let mut p = self.exec(argv, false).await?;
        let mut out = String::new();
        let mut err = String::new();
        let mut so = p
            .stdout()
            .ok_or_else(|| Failure::runtime("exec gave no stdout"))?;
        let mut se = p
            .stderr()
            .ok_or_else(|| Failure::runtime("exec gave no stderr"))?;
        let status = p.take_status();
        let (a, b) = tokio::join!(so.read_to_string(&mut out), se.read_to_string(&mut err));
        a.and(b)
            .map_err(|e| Failure::runtime(format!("reading from helper pod {}: {e}", self.name)))?;
        let st = match status {
            Some(s) => s.await,
            None => None,
        };
        match st {
            Some(s) if s.status.as_deref() == Some("Success") => Ok(out),
            Some(s) => Err(Failure::runtime(format!(
                "`{}` failed in helper pod {}: {} {}",
                argv.join(" "),
                self.name,
                s.message.unwrap_or_default(),
                err.trim()
            ))),
            None => Err(Failure::runtime(format!(
                "`{}` in helper pod {}: the stream ended without a status (connection lost?)",
                argv.join(" "),
                self.name
            ))),
        }
    }

    /// Deletes the pod and waits (bounded) until it is gone, so that when a command returns,
    /// no helper pod of it is left, not even a Terminating one.
    pub async fn delete(&mut self) {
        let uid = self
            .api
            .get_opt(&self.name)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.metadata.uid);
        if delete_with_retry(&self.api, &self.name).await {
            if let Some(uid) = uid {
                let gone = await_condition(
                    self.api.clone(),
                    &self.name,
                    kube::runtime::conditions::is_deleted(&uid),
                );
                let _ = tokio::time::timeout(Duration::from_secs(30), gone).await;
            }
            self.registry.remove(&self.namespace, &self.name);
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }
}

async fn pod_events(client: &kube::Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    api.list(&lp).await.map(|l| l.items).unwrap_or_default()
}

//! Application hooks around the copy: a pre hook (flush, lock, freeze) runs in the workload's
//! own container before the snapshot is cut (or the live copy starts), and a post hook (thaw,
//! unlock) right after the cut, whatever happened, once the pre hook ran.
//!
//! Hooks come from `--pre-hook`/`--post-hook` or from the Velero annotations users already put
//! on their pods (velero.io/docs "Backup Hooks": `pre.hook.backup.velero.io/command`,
//! `…/container`, `…/on-error` (`Continue`|`Fail`, default `Fail`), `…/timeout` (Go duration,
//! default 30s), and the same under `post.`). As in Velero, a pod's annotations take precedence
//! over hooks given on the command line. The command of an annotation is a JSON array of argv
//! or a single word; a flag's command runs under `sh -c`. The default container is the first
//! one that mounts the PVC and is not the mesh proxy; a hook aimed at the proxy is refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, AttachParams};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::exit::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pre,
    Post,
}

impl Phase {
    fn prefix(self) -> &'static str {
        match self {
            Phase::Pre => "pre.hook.backup.velero.io",
            Phase::Post => "post.hook.backup.velero.io",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Fail,
    Continue,
}

/// A hook from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub command: String,
    pub container: Option<String>,
    pub timeout: Duration,
    pub on_error: OnError,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookPlan {
    pub pre: Option<HookSpec>,
    pub post: Option<HookSpec>,
}

/// One hook resolved for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub phase: Phase,
    pub pod: String,
    pub container: String,
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub on_error: OnError,
    /// `flag` or `annotation`.
    pub from: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookResult {
    Ok,
    Failed,
    TimedOut,
}

/// What a hook did, for the result and the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookOutcome {
    pub phase: Phase,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub result: HookResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub on_error: OnError,
}

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration ({e})"))
}

fn parse_on_error(s: &str) -> Result<OnError, String> {
    match s.to_ascii_lowercase().as_str() {
        "fail" => Ok(OnError::Fail),
        "continue" => Ok(OnError::Continue),
        _ => Err(format!("{s:?} is not Fail or Continue")),
    }
}

/// Velero's command annotation: a JSON array of strings, or one word.
fn parse_command(s: &str) -> Result<Vec<String>, String> {
    let t = s.trim();
    if t.starts_with('[') {
        serde_json::from_str::<Vec<String>>(t)
            .map_err(|e| format!("{t:?} is not a JSON array of strings ({e})"))
            .and_then(|v| {
                if v.is_empty() {
                    Err("the command is an empty array".into())
                } else {
                    Ok(v)
                }
            })
    } else if t.is_empty() {
        Err("the command is empty".into())
    } else {
        Ok(vec![t.to_string()])
    }
}

/// The hooks of `phase` for the pods that mount `pvc`: annotations first, then the flag.
pub fn resolve(
    phase: Phase,
    spec: Option<&HookSpec>,
    pods: &[Pod],
    pvc: &str,
    namespace: Option<&Namespace>,
) -> Result<Vec<Hook>, String> {
    let mut out = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ann: BTreeMap<String, String> = pod.metadata.annotations.clone().unwrap_or_default();
        let key = |k: &str| format!("{}/{k}", phase.prefix());
        let proxy = crate::discover::detect_mesh(pod, namespace).and_then(|m| m.proxy_container);
        let podspec = pod.spec.clone().unwrap_or_default();
        let volumes: Vec<String> = podspec
            .volumes
            .iter()
            .flatten()
            .filter(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == pvc)
            })
            .map(|v| v.name.clone())
            .collect();
        let default_container = podspec
            .containers
            .iter()
            .filter(|c| Some(&c.name) != proxy.as_ref())
            .find(|c| {
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| volumes.contains(&m.name))
            })
            .or_else(|| {
                podspec
                    .containers
                    .iter()
                    .find(|c| Some(&c.name) != proxy.as_ref())
            })
            .map(|c| c.name.clone());
        let (argv, container, timeout, on_error, from) = if let Some(cmd) = ann.get(&key("command"))
        {
            let bad = |what: &str, e: String| format!("pod {name}: annotation {}: {e}", key(what));
            (
                parse_command(cmd).map_err(|e| bad("command", e))?,
                ann.get(&key("container")).cloned(),
                ann.get(&key("timeout"))
                    .map(|t| parse_go_duration(t))
                    .transpose()
                    .map_err(|e| bad("timeout", e))?
                    .unwrap_or(Duration::from_secs(30)),
                ann.get(&key("on-error"))
                    .map(|t| parse_on_error(t))
                    .transpose()
                    .map_err(|e| bad("on-error", e))?
                    .unwrap_or_default(),
                "annotation",
            )
        } else if let Some(s) = spec {
            (
                vec!["sh".to_string(), "-c".to_string(), s.command.clone()],
                s.container.clone(),
                s.timeout,
                s.on_error,
                "flag",
            )
        } else {
            continue;
        };
        let container = match container.or(default_container) {
            Some(c) => c,
            None => {
                return Err(
                    format!("pod {name} has no container to run the {phase:?} hook in")
                        .to_lowercase(),
                )
            }
        };
        if !podspec.containers.iter().any(|c| c.name == container) {
            return Err(format!(
                "pod {name} has no container {container} for its {} hook; name one of its containers",
                if phase == Phase::Pre { "pre" } else { "post" }
            ));
        }
        if Some(&container) == proxy.as_ref() {
            return Err(format!(
                "pod {name}: {container} is the mesh proxy, not the application; hooks run in the workload's own container (name it with --hook-container or the …/container annotation)"
            ));
        }
        out.push(Hook {
            phase,
            pod: name,
            container,
            argv,
            timeout,
            on_error,
            from,
        });
    }
    Ok(out)
}

/// Runs one hook by exec in its pod and container, bounded by its timeout.
pub async fn run(client: &kube::Client, ns: &str, hook: &Hook) -> HookOutcome {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut outcome = HookOutcome {
        phase: hook.phase,
        pod: hook.pod.clone(),
        container: hook.container.clone(),
        command: hook.argv.clone(),
        result: HookResult::Failed,
        exit_code: None,
        error: None,
        on_error: hook.on_error,
    };
    let ap = AttachParams::default()
        .container(hook.container.clone())
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let work = async {
        let mut p = api
            .exec(&hook.pod, hook.argv.clone(), &ap)
            .await
            .map_err(|e| format!("exec failed: {e}"))?;
        let mut err = Vec::new();
        let mut out = Vec::new();
        let so = p.stdout();
        let se = p.stderr();
        let status = p.take_status();
        let read_out = async {
            if let Some(mut so) = so {
                let _ = (&mut so).take(64 << 10).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(mut se) = se {
                let _ = (&mut se).take(16 << 10).read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let st = match status {
            Some(s) => s.await,
            None => None,
        };
        let _ = p.join().await;
        Ok::<_, String>((st, String::from_utf8_lossy(&err).trim().to_string()))
    };
    match tokio::time::timeout(hook.timeout, work).await {
        Err(_) => {
            outcome.result = HookResult::TimedOut;
            outcome.error = Some(format!("did not finish within {:?}", hook.timeout));
        }
        Ok(Err(e)) => outcome.error = Some(e),
        Ok(Ok((status, stderr))) => {
            let ok = status.as_ref().and_then(|s| s.status.as_deref()) == Some("Success");
            let code = status.as_ref().and_then(|s| {
                s.details
                    .as_ref()
                    .and_then(|d| d.causes.as_ref())
                    .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
                    .and_then(|c| c.message.as_deref())
                    .and_then(|m| m.parse().ok())
            });
            if ok {
                outcome.result = HookResult::Ok;
                outcome.exit_code = Some(0);
            } else {
                outcome.exit_code = code;
                let why = status
                    .as_ref()
                    .and_then(|s| s.message.clone())
                    .unwrap_or_else(|| "no exit status".into());
                outcome.error = Some(if stderr.is_empty() {
                    why
                } else {
                    format!("{why} (stderr: {stderr})")
                });
            }
        }
    }
    outcome
}

/// Post hooks owed because their pre hook ran; whoever ends the run (normally the backup,
/// on Ctrl-C the interrupt handler) runs them exactly once.
#[derive(Clone, Default)]
pub struct Owed(Arc<Mutex<Vec<(String, Hook)>>>);

impl Owed {
    pub fn add(&self, ns: &str, hooks: &[Hook]) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for h in hooks {
            v.push((ns.to_string(), h.clone()));
        }
    }

    fn take(&self, ns: &str, pods: Option<&[Hook]>) -> Vec<Hook> {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = v
            .drain(..)
            .partition(|(n, h)| n == ns && pods.is_none_or(|ps| ps.iter().any(|p| p.pod == h.pod)));
        *v = rest;
        mine.into_iter().map(|(_, h)| h).collect()
    }

    /// Runs the owed post hooks of these pods (taking them off the list).
    pub async fn run_for(
        &self,
        client: &kube::Client,
        ns: &str,
        hooks: &[Hook],
    ) -> Vec<HookOutcome> {
        let mut out = Vec::new();
        for h in self.take(ns, Some(hooks)) {
            out.push(run(client, ns, &h).await);
        }
        out
    }

    /// Runs every owed post hook (interrupt path).
    pub async fn run_all(&self, client: &kube::Client) -> Vec<HookOutcome> {
        let all: Vec<(String, Hook)> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let mut out = Vec::new();
        for (ns, h) in all {
            out.push(run(client, &ns, &h).await);
        }
        out
    }
}

/// The failure a failed hook with `on-error: fail` turns into.
pub fn failure(o: &HookOutcome) -> Option<Failure> {
    if o.result == HookResult::Ok || o.on_error == OnError::Continue {
        return None;
    }
    Some(
        Failure::runtime(format!(
            "the {} hook {:?} in pod {} (container {}) failed: {}; nothing was copied. Fix the hook, or set on-error to continue (--hook-on-error continue or the …/on-error annotation)",
            if o.phase == Phase::Pre { "pre" } else { "post" },
            o.command.join(" "),
            o.pod,
            o.container,
            o.error.clone().unwrap_or_default()
        ))
        .permanent(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "annotations": annotations},
            "spec": {
                "containers": [
                    {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.22.0"},
                    {"name": "db", "image": "postgres", "volumeMounts": [{"name": "d", "mountPath": "/var/lib/pg"}]},
                ],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
            },
        }))
        .unwrap()
    }

    fn flag(cmd: &str) -> HookSpec {
        HookSpec {
            command: cmd.into(),
            container: None,
            timeout: Duration::from_secs(5),
            on_error: OnError::Fail,
        }
    }

    #[test]
    fn flag_hooks_default_to_the_container_that_mounts_the_volume_not_the_proxy() {
        let h = resolve(
            Phase::Pre,
            Some(&flag("sync")),
            &[pod(json!({}))],
            "data",
            None,
        )
        .unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].container, "db");
        assert_eq!(h[0].argv, ["sh", "-c", "sync"]);
        assert_eq!(h[0].from, "flag");
    }

    #[test]
    fn velero_annotations_win_and_parse_like_velero() {
        let p = pod(json!({
            "pre.hook.backup.velero.io/command": "[\"/bin/fsfreeze\", \"--freeze\", \"/var/lib/pg\"]",
            "pre.hook.backup.velero.io/on-error": "Continue",
            "pre.hook.backup.velero.io/timeout": "2m",
        }));
        let h = resolve(
            Phase::Pre,
            Some(&flag("sync")),
            std::slice::from_ref(&p),
            "data",
            None,
        )
        .unwrap();
        assert_eq!(h[0].argv, ["/bin/fsfreeze", "--freeze", "/var/lib/pg"]);
        assert_eq!(h[0].on_error, OnError::Continue);
        assert_eq!(h[0].timeout, Duration::from_secs(120));
        assert_eq!(h[0].from, "annotation");
        // No post annotation, no post flag: nothing.
        assert!(resolve(Phase::Post, None, &[p], "data", None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_hook_aimed_at_the_proxy_or_a_missing_container_is_refused() {
        let p = pod(json!({
            "post.hook.backup.velero.io/command": "true",
            "post.hook.backup.velero.io/container": "istio-proxy",
        }));
        let e = resolve(Phase::Post, None, &[p], "data", None).unwrap_err();
        assert!(e.contains("mesh proxy"), "{e}");
        let mut s = flag("true");
        s.container = Some("nope".into());
        let e = resolve(Phase::Pre, Some(&s), &[pod(json!({}))], "data", None).unwrap_err();
        assert!(e.contains("no container nope"), "{e}");
        let p = pod(json!({"pre.hook.backup.velero.io/command": "[1]"}));
        assert!(resolve(Phase::Pre, None, &[p], "data", None)
            .unwrap_err()
            .contains("JSON array"));
    }
}

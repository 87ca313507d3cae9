//! Service accounts as a pod sees them, and namespaced RBAC for their tokens.
//!
//! What kubelet gives a container (pkg/kubelet/kubelet_pods.go `makeEnvironmentVariables`,
//! plugin/pkg/admission/serviceaccount `kube-api-access-*` projected volume):
//! `KUBERNETES_SERVICE_HOST`/`_PORT` naming the API server, and, unless
//! `automountServiceAccountToken` is false (pod first, then ServiceAccount), a read-only
//! directory `/var/run/secrets/kubernetes.io/serviceaccount` with `token`, `ca.crt` and
//! `namespace` — exactly what client-go's `rest.InClusterConfig` and kube-rs's
//! `Config::incluster` read. kubesim has no Services or network namespaces, so the host is the
//! API server's own loopback address. The token is an opaque bearer token (not a JWT) for the
//! user `system:serviceaccount:<ns>:<name>` in the groups `system:serviceaccounts`,
//! `system:serviceaccounts:<ns>` and `system:authenticated`; it stops working when the
//! ServiceAccount is deleted, as bound tokens do.
//!
//! Authorization of such a user comes from the Roles bound to it by RoleBindings in each
//! namespace (plugin/pkg/auth/authorizer/rbac: `RoleBinding` subjects of kind `ServiceAccount`
//! with the name and namespace; `roleRef` of kind `Role` in the binding's namespace). Rules are
//! matched by verb and resource (`pods`, `pods/exec`); like the rest of kubesim's RBAC model,
//! API groups and `resourceNames` are not distinguished. ClusterRoles are not modelled.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::auth::{new_token, Rule, User};
use crate::resources;
use crate::sim::Sim;

pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const PREFIX: &str = "system:serviceaccount:";

pub fn user_name(ns: &str, sa: &str) -> String {
    format!("{PREFIX}{ns}:{sa}")
}

/// `system:serviceaccount:ns:name` → (ns, name).
pub fn parse_user(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(PREFIX)?.split_once(':')
}

/// The token of a service account, minted once.
pub fn token(sim: &Sim, ns: &str, sa: &str) -> String {
    let name = user_name(ns, sa);
    if let Some(t) = sim.auth.token_of(&name) {
        return t;
    }
    let t = new_token();
    sim.auth.add(
        t.clone(),
        User {
            name,
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            rules: Vec::new(),
        },
    );
    t
}

/// The request's user with the rules RBAC gives it now, or None when it is a service account
/// that no longer exists (its token is no longer valid).
pub fn authorize(sim: &Sim, mut user: User) -> Option<User> {
    let Some((ns, sa)) = parse_user(&user.name) else {
        return Some(user);
    };
    let (ns, sa) = (ns.to_string(), sa.to_string());
    sim.store
        .try_get(resources::service_accounts(), Some(&ns), &sa)?;
    user.rules = rules_for(sim, &ns, &sa);
    Some(user)
}

fn rules_for(sim: &Sim, sa_ns: &str, sa: &str) -> Vec<Rule> {
    let (bindings, _) = sim.store.list(resources::role_bindings(), None);
    let mut out = Vec::new();
    for b in bindings {
        let bns = b["metadata"]["namespace"].as_str().unwrap_or_default();
        let bound = b["subjects"].as_array().into_iter().flatten().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == sa
                && s["namespace"].as_str().unwrap_or(bns) == sa_ns
        });
        if !bound || b["roleRef"]["kind"] != "Role" {
            continue;
        }
        let Some(role) = b["roleRef"]["name"]
            .as_str()
            .and_then(|r| sim.store.try_get(resources::roles(), Some(bns), r))
        else {
            continue;
        };
        for r in role["rules"].as_array().into_iter().flatten() {
            let strs = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            };
            out.push(Rule {
                verbs: strs(&r["verbs"]),
                resources: strs(&r["resources"]),
                namespaces: vec![bns.to_string()],
            });
        }
    }
    out
}

/// Whether a pod gets the token directory: the pod's `automountServiceAccountToken`, else its
/// ServiceAccount's, else yes.
pub fn automount(sim: &Sim, pod: &Value) -> bool {
    if let Some(b) = pod["spec"]["automountServiceAccountToken"].as_bool() {
        return b;
    }
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    sim.store
        .try_get(resources::service_accounts(), Some(ns), sa)
        .and_then(|s| s["automountServiceAccountToken"].as_bool())
        .unwrap_or(true)
}

/// Writes the projected `kube-api-access` files under `pod_dir` and returns the directory.
pub fn project(sim: &Sim, pod_dir: &Path, pod: &Value) -> std::io::Result<PathBuf> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let dir = pod_dir.join("volumes").join("kube-api-access");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token"), token(sim, ns, sa))?;
    std::fs::write(
        dir.join("ca.crt"),
        sim.ca_pem.get().cloned().unwrap_or_default(),
    )?;
    std::fs::write(dir.join("namespace"), ns)?;
    Ok(dir)
}

/// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and the docker-link style variables of
/// the `kubernetes` Service that kubelet sets in every container.
pub fn service_env(sim: &Sim) -> Vec<(String, String)> {
    let url = sim.server_url.get().cloned().unwrap_or_default();
    let hostport = url.trim_start_matches("https://");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "443"));
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.into()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.into()),
        ("KUBERNETES_PORT".into(), format!("tcp://{hostport}")),
        (
            format!("KUBERNETES_PORT_{port}_TCP"),
            format!("tcp://{hostport}"),
        ),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.into()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.into()),
    ]
}

/// `envFrom: [{secretRef}]` and `env[].valueFrom.secretKeyRef`, resolved as kubelet does; a
/// missing Secret (not `optional`) is the container's `CreateContainerConfigError` message.
pub fn secret_env(sim: &Sim, ns: &str, c: &Value) -> Result<Vec<(String, String)>, String> {
    use base64::Engine;
    let decode = |v: &Value| -> String {
        v.as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let secret = |name: &str, optional: bool| -> Result<Option<Value>, String> {
        match sim.store.try_get(resources::secrets(), Some(ns), name) {
            Some(s) => Ok(Some(s)),
            None if optional => Ok(None),
            None => Err(format!("secret \"{name}\" not found")),
        }
    };
    let mut out = Vec::new();
    for e in c["envFrom"].as_array().into_iter().flatten() {
        let Some(name) = e["secretRef"]["name"].as_str() else {
            continue;
        };
        let prefix = e["prefix"].as_str().unwrap_or_default();
        if let Some(s) = secret(name, e["secretRef"]["optional"] == true)? {
            for (k, v) in s["data"].as_object().into_iter().flatten() {
                out.push((format!("{prefix}{k}"), decode(v)));
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let r = &e["valueFrom"]["secretKeyRef"];
        let (Some(var), Some(name), Some(key)) =
            (e["name"].as_str(), r["name"].as_str(), r["key"].as_str())
        else {
            continue;
        };
        let optional = r["optional"] == true;
        if let Some(s) = secret(name, optional)? {
            match s["data"].get(key) {
                Some(v) => out.push((var.to_string(), decode(v))),
                None if optional => {}
                None => return Err(format!("couldn't find key {key} in Secret {ns}/{name}")),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        assert_eq!(
            user_name("shop", "backup"),
            "system:serviceaccount:shop:backup"
        );
        assert_eq!(
            parse_user("system:serviceaccount:shop:backup"),
            Some(("shop", "backup"))
        );
        assert_eq!(parse_user("kubernetes-admin"), None);
    }
}

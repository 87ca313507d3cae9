//! The public handle tests and the `kubesim` binary use: start a cluster, get its kubeconfig,
//! add users, inject faults, shut it down (killing every container and unmounting volumes).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::auth::{new_token, Rule, User};
use crate::faults::FaultRequest;
use crate::resources;
use crate::sim::{Sim, SimRef};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot use state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {what} failed: {message}")]
    Setup { what: String, message: String },
    #[error("populating volume {namespace}/{pvc} failed: {source}")]
    Populate {
        namespace: String,
        pvc: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {0:?} waiting for the demo pods to run; see `kubectl get pods -A` and events")]
    NotReady(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scenario {
    #[default]
    Empty,
    Demo,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Where volumes, container roots and logs live; a temporary directory when None.
    pub state_dir: Option<PathBuf>,
    /// Where to write the admin kubeconfig; `<state_dir>/kubeconfig` when None.
    pub kubeconfig: Option<PathBuf>,
    pub scenario: Scenario,
    /// A cluster without the external-snapshotter: `snapshot.storage.k8s.io` is not in
    /// discovery, its paths answer 404 as an apiserver without the CRDs does, and no snapshot
    /// controller runs.
    pub without_snapshot_api: bool,
    /// Hollow nodes (`hollow-1` …) besides the three real ones: their pods report Running
    /// without running anything, for scale tests (`hollow.rs`).
    pub hollow_nodes: usize,
    /// Images whose containers run a host binary (IMAGE → path) instead of the busybox
    /// userland, e.g. the plugin's own image → the plugin binary under test (README: images).
    pub image_binaries: Vec<(String, PathBuf)>,
    /// The link model exec streams cross from the start (faults.rs `SharedLink`); the
    /// `link`/`bandwidth`/`clear` faults change it later.
    pub link: crate::faults::LinkCaps,
}

pub struct Cluster {
    sim: SimRef,
    url: String,
    kubeconfig: PathBuf,
    ca_pem: String,
    shutdown: tokio::sync::watch::Sender<bool>,
    _tmp: Option<tempfile::TempDir>,
    stopped: OnceLock<()>,
}

/// The simulated nodes: three workers; node-3 is tainted for stateful workloads so that
/// helper pods must copy tolerations to land next to a volume there.
fn node_objects() -> Vec<Value> {
    (1..=3)
        .map(|i| {
            let name = format!("node-{i}");
            let mut n = json!({
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/zone": format!("zone-{}", if i == 3 { "b" } else { "a" }),
                }},
                "spec": {"podCIDR": format!("10.244.{i}.0/24")},
                "status": {
                    "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"},
                    "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"},
                    "addresses": [{"type": "InternalIP", "address": format!("172.18.0.{}", i + 1)}, {"type": "Hostname", "address": name}],
                    "nodeInfo": {"kubeletVersion": "v1.33.1", "kubeProxyVersion": "", "containerRuntimeVersion": "containerd://1.7.27", "osImage": "kubesim (busybox userland)", "kernelVersion": "", "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
                    "conditions": [],
                },
            });
            if i == 3 {
                n["spec"]["taints"] = json!([{"key": "workload", "value": "stateful", "effect": "NoSchedule"}]);
            }
            n
        })
        .collect()
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let (tmp, state_dir) = match opts.state_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("kubesim-")
                    .tempdir()
                    .map_err(|e| ClusterError::StateDir {
                        path: std::env::temp_dir(),
                        source: e,
                    })?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(state_dir.join("volumes")).map_err(|e| ClusterError::StateDir {
            path: state_dir.clone(),
            source: e,
        })?;
        let certs = crate::tls::generate()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(ClusterError::Bind)?;
        let port = listener.local_addr().map_err(ClusterError::Bind)?.port();
        let url = format!("https://127.0.0.1:{port}");
        let sim = Arc::new(Sim {
            store: Default::default(),
            auth: Default::default(),
            faults: Default::default(),
            state_dir: state_dir.clone(),
            server_url: OnceLock::new(),
            kick: Default::default(),
            runtime: Default::default(),
            snapshot_api: !opts.without_snapshot_api,
            ca_pem: OnceLock::new(),
            image_binaries: opts.image_binaries.clone(),
        });
        if opts.link != crate::faults::LinkCaps::default() {
            sim.faults.apply(&opts.link.fault());
        }
        let _ = sim.ca_pem.set(certs.ca_pem.clone());
        let _ = sim.server_url.set(url.clone());
        let admin_token = new_token();
        sim.auth.add(admin_token.clone(), User::admin());
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            create(
                &sim,
                resources::namespaces(),
                None,
                json!({"metadata": {"name": ns}}),
            )?;
        }
        for n in node_objects()
            .into_iter()
            .chain(crate::hollow::node_objects(opts.hollow_nodes))
        {
            create(&sim, resources::nodes(), None, n)?;
        }
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(crate::server::serve(
            sim.clone(),
            listener,
            certs.server_config.clone(),
            rx.clone(),
        ));
        tokio::spawn(crate::controllers::run(sim.clone(), rx));
        let kubeconfig = opts
            .kubeconfig
            .unwrap_or_else(|| state_dir.join("kubeconfig"));
        let cluster = Cluster {
            sim,
            url,
            kubeconfig: kubeconfig.clone(),
            ca_pem: certs.ca_pem,
            shutdown,
            _tmp: tmp,
            stopped: OnceLock::new(),
        };
        cluster.write_kubeconfig(&kubeconfig, "kubernetes-admin", &admin_token, "default")?;
        if opts.scenario == Scenario::Demo {
            cluster.load_demo()?;
        }
        Ok(cluster)
    }

    /// Creates objects (each with `kind` and, when namespaced, `metadata.namespace`; `default`
    /// when absent) through the API server's create path, admission included, as
    /// `kubectl create -f` would, without the HTTP round trips: for scenarios of thousands of
    /// objects (`scenario::fleet_objects`).
    pub fn apply(&self, objects: Vec<Value>) -> Result<(), ClusterError> {
        for obj in objects {
            let kind = obj["kind"].as_str().unwrap_or_default();
            let def = resources::by_kind(kind).ok_or_else(|| ClusterError::Setup {
                what: kind.to_string(),
                message: "kind not served".into(),
            })?;
            let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
            let ns = if def.namespaced {
                Some(ns.unwrap_or_else(|| "default".into()))
            } else {
                None
            };
            create(&self.sim, def, ns.as_deref(), obj)?;
        }
        Ok(())
    }

    fn load_demo(&self) -> Result<(), ClusterError> {
        self.apply(crate::scenario::demo_objects())?;
        // Fill each volume once it is provisioned (PVCs bind on the next reconcile).
        crate::controllers::reconcile(&self.sim);
        for (ns, pvc) in crate::scenario::volume_names() {
            let dir = self.volume_path(&ns, &pvc);
            if !dir.is_dir() {
                continue;
            }
            crate::scenario::populate_volume(&ns, &pvc, &dir).map_err(|e| {
                ClusterError::Populate {
                    namespace: ns.clone(),
                    pvc: pvc.clone(),
                    source: e,
                }
            })?;
        }
        Ok(())
    }

    /// Waits until every pod in the cluster is Running (the demo's steady state).
    pub async fn wait_for_pods_running(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (pods, _) = self.sim.store.list_shared(resources::pods(), None);
            if !pods.is_empty() && pods.iter().all(|p| p["status"]["phase"] == "Running") {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ClusterError::NotReady(timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn write_kubeconfig(
        &self,
        path: &Path,
        user: &str,
        token: &str,
        namespace: &str,
    ) -> Result<(), ClusterError> {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let cfg = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubesim", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": user, "namespace": namespace}}],
            "current-context": "kubesim",
            "preferences": {},
        });
        let yaml = serde_yaml::to_string(&cfg).map_err(|e| ClusterError::Kubeconfig {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(path, yaml).map_err(|e| ClusterError::Kubeconfig {
            path: path.to_path_buf(),
            source: e,
        })
    }

    /// Adds a user with the given RBAC rules and writes a kubeconfig for it next to the admin's.
    pub fn add_user(&self, name: &str, rules: Vec<Rule>) -> Result<PathBuf, ClusterError> {
        let token = new_token();
        self.sim.auth.add(
            token.clone(),
            User {
                name: name.to_string(),
                groups: vec!["system:authenticated".into()],
                rules,
            },
        );
        let path = self.sim.state_dir.join(format!("kubeconfig-{name}"));
        self.write_kubeconfig(&path, name, &token, "default")?;
        Ok(path)
    }

    pub fn fault(&self, f: FaultRequest) {
        self.sim.faults.apply(&f);
        self.sim.kick.notify_waiters();
    }

    /// Bytes carried by every exec stream so far (stdout to clients, stdin from them); take
    /// the difference of two readings to measure one command.
    pub fn exec_bytes(&self) -> crate::faults::ExecByteCount {
        self.sim.faults.exec_bytes()
    }

    /// The latest exec sessions that ended (pod, argv, stdout bytes), oldest first.
    pub fn exec_sessions(&self) -> Vec<crate::faults::ExecSession> {
        self.sim.faults.exec_sessions()
    }

    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
    pub fn state_dir(&self) -> &Path {
        &self.sim.state_dir
    }
    pub fn volume_path(&self, namespace: &str, pvc: &str) -> PathBuf {
        crate::kubelet::volume_path(&self.sim, namespace, pvc)
    }
    /// Direct access to stored objects for assertions (`("pods", Some("shop"))`).
    pub fn objects(&self, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        resources::RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .map(|d| self.sim.store.list(d, namespace).0)
            .unwrap_or_default()
    }

    /// Stops serving, kills every container and unmounts every volume.
    pub async fn shutdown(self) {
        self.stop();
    }

    fn stop(&self) {
        if self.stopped.set(()).is_err() {
            return;
        }
        let _ = self.shutdown.send(true);
        self.sim.runtime.kill_everything();
        let _ = crate::volumes::release_all_under(&self.sim.state_dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn create(
    sim: &SimRef,
    def: &'static resources::ResourceDef,
    ns: Option<&str>,
    obj: Value,
) -> Result<Value, ClusterError> {
    let t = crate::api::Target {
        def,
        namespace: ns.map(str::to_string),
        name: None,
        subresource: None,
    };
    crate::api::create(sim, &User::admin(), &t, obj, false)
        .map(|(_, v)| v)
        .map_err(|e| ClusterError::Setup {
            what: format!("{} {}", def.kind, ns.unwrap_or_default()),
            message: e.message,
        })
}

pub fn rule(verbs: &[&str], resources: &[&str], namespaces: &[&str]) -> Rule {
    Rule::new(verbs, resources, namespaces)
}

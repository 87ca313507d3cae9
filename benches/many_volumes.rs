//! Many volumes: `discover -A` over 5,000 pods, and one `create` over 40 PVCs on 3 nodes.
//!
//! * discover: a kubesim cluster with 10 hollow nodes (pods reported Running without running
//!   anything, like kubemark's; tests/kubesim/README.md) holding 5,000 pods in 50 namespaces
//!   (Istio- and Linkerd-injected and plain ones), one pod in five mounting its own PVC.
//!   `discover -A -o json` is timed next to `kubectl get pods -A -o json` (the same list call,
//!   nothing decided), medians of several runs.
//! * create: 40 ReadWriteOnce PVCs mounted by 6 pods (2 per node on the 3 real nodes), 8 MiB of
//!   noise each, backed up in one run with `--parallel 1, 2, 4, 8` (default `--max-per-node 2`);
//!   wall time and the most helper pods a watch saw on one node at once.
//!
//! `cargo bench --bench many_volumes` (env: PVBACKUP_BENCH_PODS=5000, PVBACKUP_BENCH_RUNS=5,
//! PVBACKUP_BENCH_CREATE_RUNS=3, PVBACKUP_BENCH_VOLUME_MIB=8).
//! Writes benches/results/many_volumes.md and many_volumes.json.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kubesim::{Cluster, ClusterOptions};
use serde_json::json;
use support::{env_or, kubectl, machine, measured, median, Noise, Sample};

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

async fn start(hollow_nodes: usize) -> (Cluster, kube::Client) {
    let cluster = Cluster::start(ClusterOptions {
        hollow_nodes,
        ..Default::default()
    })
    .await
    .expect("kubesim");
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &from_json(json!({"metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "hostpath.csi.kubesim.dev", "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete"})))
        .await
        .unwrap();
    (cluster, client)
}

const APP: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

/// 50 namespaces of `pods / 50` pods on the hollow nodes; returns the rows `discover -A`
/// must print (one per PVC a mesh pod mounts).
async fn populate(client: &kube::Client, pods: usize) -> usize {
    let per_ns = pods / 50;
    let mut mesh_rows = 0;
    let mut work = Vec::new();
    for n in 0..50 {
        let ns = format!("team-{n:02}");
        let (labels, annotations, mesh) = match n % 5 {
            0..=2 => (json!({"istio-injection": "enabled"}), json!({}), true),
            3 => (json!({}), json!({"linkerd.io/inject": "enabled"}), true),
            _ => (json!({}), json!({}), false),
        };
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &from_json(
                    json!({"metadata": {"name": ns, "labels": labels, "annotations": annotations}}),
                ),
            )
            .await
            .unwrap();
        for i in 0..per_ns {
            let with_pvc = i % 5 == 0;
            if with_pvc && mesh {
                mesh_rows += 1;
            }
            work.push((ns.clone(), i, with_pvc));
        }
    }
    futures::stream::iter(work)
        .map(|(ns, i, with_pvc)| {
            let client = client.clone();
            async move {
                let name = format!("app-{i:03}");
                let mut spec = json!({
                    "nodeSelector": {"kubesim.dev/hollow": "true"},
                    "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", APP]}],
                });
                if with_pvc {
                    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                        .create(&PostParams::default(), &from_json(json!({"metadata": {"name": format!("data-{name}")}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})))
                        .await
                        .unwrap();
                    spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": format!("data-{name}")}}]);
                    spec["containers"][0]["volumeMounts"] =
                        json!([{"name": "data", "mountPath": "/data"}]);
                }
                Api::<Pod>::namespaced(client, &ns)
                    .create(
                        &PostParams::default(),
                        &from_json(json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": spec})),
                    )
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap();
        let running = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running >= pods {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {running} of {pods} pods run"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    mesh_rows
}

/// CPU seconds this process (kubesim's API server and control loops live in it) has used.
fn own_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6
}

/// The 1-minute load average: the machine is shared, and the report says how busy it was.
fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn runs(cmd: &Command, out: &Path, n: usize) -> Vec<Sample> {
    let err = out.with_extension("err");
    // One warm-up run, as a user's second invocation would find the caches.
    measured(cmd, out, &err, Some(Duration::from_secs(120)));
    (0..n)
        .map(|_| {
            let s = measured(cmd, out, &err, Some(Duration::from_secs(120)));
            assert!(
                s.ok(),
                "{:?} failed: {}",
                cmd.get_args().collect::<Vec<_>>(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
            s
        })
        .collect()
}

async fn discover_rows(pods: usize, n: usize) -> serde_json::Value {
    let (cluster, client) = start(10).await;
    let setup = Instant::now();
    let want_rows = populate(&client, pods).await;
    eprintln!(
        "{pods} pods running on hollow nodes after {:.0}s",
        setup.elapsed().as_secs_f64()
    );
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out.json");
    let mut discover = Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"));
    discover
        .args(["discover", "-A", "-o", "json", "--kubeconfig"])
        .arg(cluster.kubeconfig());
    // kubesim's own CPU while idle, then while answering: what serving the lists costs.
    let (c0, t0) = (own_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu_per_s = (own_cpu() - c0) / t0.elapsed().as_secs_f64();
    let load_before = load();
    let (c0, t0) = (own_cpu(), Instant::now());
    let d = tokio::task::block_in_place(|| runs(&discover, &out, n));
    let server_cpu = own_cpu() - c0 - idle_cpu_per_s * t0.elapsed().as_secs_f64();
    let items: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let rows = items["items"].as_array().map_or(0, Vec::len);
    assert_eq!(rows, want_rows, "discover -A found every mesh pod's PVC");
    let mut get = Command::new(kubectl());
    get.args(["get", "pods", "-A", "-o", "json", "--kubeconfig"])
        .arg(cluster.kubeconfig());
    let k = tokio::task::block_in_place(|| runs(&get, &work.path().join("kubectl.json"), n));
    let load_after = load();
    let ds = median(d.iter().map(|s| s.secs).collect());
    let ks = median(k.iter().map(|s| s.secs).collect());
    json!({
        "pods": pods,
        "rows": rows,
        "runs": n,
        "discover_secs": ds,
        "discover_secs_all": d.iter().map(|s| s.secs).collect::<Vec<_>>(),
        "discover_cpu_secs": median(d.iter().map(|s| s.cpu_secs).collect()),
        "discover_peak_rss_mib": median(d.iter().map(|s| s.max_rss_kib as f64).collect()) / 1024.0,
        "kubesim_server_cpu_secs_per_discover": server_cpu / (n + 1) as f64,
        "kubesim_idle_cpu_per_s": idle_cpu_per_s,
        "load_average_1m": [load_before, load_after],
        "kubectl_get_pods_secs": ks,
        "ratio_discover_to_kubectl_get": ds / ks,
    })
}

/// Helper pods per node seen by a watch: the most any node had at once (bound to it until
/// gone), and the most in the whole cluster.
#[derive(Default)]
struct Peak {
    on: BTreeMap<String, String>,
    per_node: usize,
    total: usize,
}

fn watch_helpers(
    client: kube::Client,
    ns: &str,
) -> (Arc<Mutex<Peak>>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(Mutex::new(Peak::default()));
    let p = peak.clone();
    let api: Api<Pod> = Api::namespaced(client, ns);
    let cfg = watcher::Config::default().labels("app.kubernetes.io/managed-by=kubectl-pvbackup");
    let task = tokio::spawn(async move {
        let mut events = watcher(api, cfg).boxed();
        while let Ok(Some(e)) = events.try_next().await {
            let mut peak = p.lock().unwrap();
            match e {
                watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                    if let Some(node) = pod.spec.and_then(|s| s.node_name) {
                        peak.on.insert(pod.metadata.name.unwrap_or_default(), node);
                    }
                }
                watcher::Event::Delete(pod) => {
                    peak.on.remove(&pod.metadata.name.unwrap_or_default());
                }
                _ => {}
            }
            let mut now: BTreeMap<&str, usize> = BTreeMap::new();
            for n in peak.on.values() {
                *now.entry(n).or_default() += 1;
            }
            let most = now.values().copied().max().unwrap_or(0);
            let total = peak.on.len();
            peak.per_node = peak.per_node.max(most);
            peak.total = peak.total.max(total);
        }
    });
    (peak, task)
}

async fn create_rows(runs_each: usize, mib: usize) -> Vec<serde_json::Value> {
    let (cluster, client) = start(0).await;
    let ns = "fleet";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": ns}})),
        )
        .await
        .unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("vol-{i:02}")).collect();
    for name in &names {
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &from_json(json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": format!("{}Mi", mib + 4)}}}})))
            .await
            .unwrap();
    }
    for p in 0..6 {
        let volumes: Vec<_> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 6 == p)
            .map(|(_, c)| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        let mounts: Vec<_> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 6 == p)
            .map(|(_, c)| json!({"name": c, "mountPath": format!("/data/{c}")}))
            .collect();
        Api::<Pod>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &from_json(json!({"metadata": {"name": format!("app-{p}")}, "spec": {
                "nodeSelector": {"kubernetes.io/hostname": format!("node-{}", p % 3 + 1)},
                "tolerations": [{"key": "workload", "operator": "Exists", "effect": "NoSchedule"}],
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", APP], "volumeMounts": mounts}],
                "volumes": volumes}})))
            .await
            .unwrap();
    }
    cluster
        .wait_for_pods_running(Duration::from_secs(120))
        .await
        .unwrap();
    let mut noise = Noise::default();
    let mut buf = vec![0u8; 1 << 20];
    for name in &names {
        let dir = cluster.volume_path(ns, name);
        for f in 0..mib {
            noise.fill(&mut buf);
            std::fs::write(dir.join(format!("f{f:03}.bin")), &buf).unwrap();
        }
    }
    let mut rows = Vec::new();
    for parallel in [1usize, 2, 4, 8] {
        let mut secs = Vec::new();
        let mut loads = Vec::new();
        let (mut per_node, mut total) = (0, 0);
        for _ in 0..runs_each {
            let dest = tempfile::tempdir().unwrap();
            let (peak, watch) = watch_helpers(client.clone(), ns);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut create = Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"));
            create
                .args([
                    "create",
                    "-n",
                    ns,
                    "--all-pvcs",
                    "--snapshot",
                    "never",
                    "--no-progress",
                    "--parallel",
                ])
                .arg(parallel.to_string())
                .arg("--to")
                .arg(dest.path())
                .arg("--kubeconfig")
                .arg(cluster.kubeconfig());
            let err = dest.path().join("create.err");
            let load_before = load();
            let s = tokio::task::spawn_blocking({
                let err = err.clone();
                move || {
                    measured(
                        &create,
                        Path::new("/dev/null"),
                        &err,
                        Some(Duration::from_secs(900)),
                    )
                }
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            watch.abort();
            assert!(
                s.ok(),
                "create --parallel {parallel} failed: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
            let manifests = std::fs::read_dir(dest.path())
                .unwrap()
                .flatten()
                .flat_map(|d| walk(&d.path()))
                .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
                .count();
            assert_eq!(manifests, 40, "one manifest per PVC");
            let p = peak.lock().unwrap();
            per_node = per_node.max(p.per_node);
            total = total.max(p.total);
            secs.push(s.secs);
            loads.push(load_before);
        }
        let wall = median(secs.clone());
        eprintln!(
            "create --parallel {parallel}: {wall:.1}s, peak {per_node} per node, {total} in all"
        );
        rows.push(json!({
            "parallel": parallel,
            "max_per_node": 2,
            "pvcs": 40,
            "mib_per_pvc": mib,
            "runs": runs_each,
            "wall_secs": wall,
            "wall_secs_all": secs,
            "peak_helpers_per_node": per_node,
            "peak_helpers_total": total,
            "mib_per_s": (40 * mib) as f64 / wall,
            "load_average_1m_at_start": loads,
        }));
    }
    rows
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    if p.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .flat_map(|d| walk(&d.path()))
            .collect()
    } else {
        vec![p.to_path_buf()]
    }
}

fn main() {
    if support::launcher_main() {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks; nothing to list
    }
    let pods: usize = env_or("PVBACKUP_BENCH_PODS", 5000);
    let n: usize = env_or("PVBACKUP_BENCH_RUNS", 5);
    let create_runs: usize = env_or("PVBACKUP_BENCH_CREATE_RUNS", 3);
    let mib: usize = env_or("PVBACKUP_BENCH_VOLUME_MIB", 8);
    support::run(async move {
        let d = discover_rows(pods, n).await;
        let c = create_rows(create_runs, mib).await;
        let mut md = format!(
            "# Many volumes: discover over {pods} pods, create over 40 PVCs\n\nProduced by `cargo bench --bench many_volumes`. Machine: {}.\n\n## discover -A\n\n{pods} pods in 50 namespaces on 10 hollow kubesim nodes (tests/kubesim/README.md), 30 namespaces Istio-injected, 10 Linkerd-injected, 10 plain; one pod in five mounts its own PVC. Medians of {n} runs after one warm-up. `kubectl get pods -A -o json` makes the same pods list call and decides nothing.\n\n| command | median s | runs (s) | CPU s | peak RSS MiB |\n|---|---|---|---|---|\n| `discover -A -o json` ({} rows) | {:.3} | {} | {:.2} | {:.0} |\n| `kubectl get pods -A -o json` | {:.3} | | | |\n\ndiscover / kubectl get: {:.2}×. Goal: ≤ 1 s. kubesim (in the bench process, unoptimized dev build) spent about {:.2} CPU s serving each `discover` (its three list calls), on top of {:.2} CPU s/s of background control loops; 1-minute load average {} on this shared machine.\n\n## create over 40 PVCs on 3 nodes\n\n40 ReadWriteOnce PVCs of {mib} MiB of noise each, mounted by 6 pods (2 per node), `--snapshot never`, default `--max-per-node 2`, to a local directory. Medians of {create_runs} runs; peaks from a watch on the helper pods (a pod counts from being bound to a node until it is gone).\n\n| --parallel | wall s (median) | MiB/s | peak helpers on one node | peak helpers in all | load average at start |\n|---|---|---|---|---|---|\n",
            machine(),
            d["rows"],
            d["discover_secs"].as_f64().unwrap(),
            d["discover_secs_all"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| format!("{:.3}", v.as_f64().unwrap()))
                .collect::<Vec<_>>()
                .join(", "),
            d["discover_cpu_secs"].as_f64().unwrap(),
            d["discover_peak_rss_mib"].as_f64().unwrap(),
            d["kubectl_get_pods_secs"].as_f64().unwrap(),
            d["ratio_discover_to_kubectl_get"].as_f64().unwrap(),
            d["kubesim_server_cpu_secs_per_discover"].as_f64().unwrap(),
            d["kubesim_idle_cpu_per_s"].as_f64().unwrap(),
            d["load_average_1m"],
        );
        for r in &c {
            md.push_str(&format!(
                "| {} | {:.1} | {:.0} | {} | {} | {} |\n",
                r["parallel"],
                r["wall_secs"].as_f64().unwrap(),
                r["mib_per_s"].as_f64().unwrap(),
                r["peak_helpers_per_node"],
                r["peak_helpers_total"],
                r["load_average_1m_at_start"],
            ));
        }
        print!("{md}");
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("many_volumes.md"), md).unwrap();
        std::fs::write(
            out.join("many_volumes.json"),
            serde_json::to_string_pretty(
                &json!({"machine": machine(), "discover": d, "create": c}),
            )
            .unwrap(),
        )
        .unwrap();
    });
}

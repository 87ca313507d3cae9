//! Many volumes: `discover -A` over 5,000 pods, and one `create` over 40 PVCs on 3 nodes.
//!
//! * discover: a kubesim cluster with 10 hollow nodes (pods reported Running without running
//!   anything, like kubemark's; tests/kubesim/README.md) holding 5,000 pods in 50 namespaces
//!   (Istio- and Linkerd-injected and plain ones), one pod in five mounting its own PVC.
//!   `discover -A -o json` is timed next to `kubectl get pods -A -o json` (the same pods list,
//!   nothing decided) and `kubectl get pods -A` (a Table), medians of several runs.
//! * create: 40 ReadWriteOnce PVCs mounted by 6 pods (2 per node on the 3 real nodes), 8 MiB of
//!   noise each, backed up in one run with `--parallel 1, 2, 4, 8` (default `--max-per-node 2`);
//!   wall time and the most helper pods a watch saw on one node at once.
//!
//! `cargo bench --bench many_volumes` (env: PVBACKUP_BENCH_PODS=5000, PVBACKUP_BENCH_RUNS=5,
//! PVBACKUP_BENCH_CREATE_RUNS=3, PVBACKUP_BENCH_VOLUME_MIB=8; CREATE_RUNS=0 measures discover
//! only and carries the create rows over from the committed results).
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
use kube::api::{Api, PostParams};
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
    (cluster, client)
}

const APP: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

/// kubesim's scale fleet (`kubesim::scenario::fleet_objects`: 50 namespaces, Istio-, Linkerd-
/// and un-injected, one pod in five with its own PVC) on the hollow nodes, created and Running;
/// returns the rows `discover -A` must print (one per PVC a mesh pod mounts).
async fn populate(cluster: &Cluster, pods: usize) -> usize {
    let objects = kubesim::scenario::fleet_objects(pods);
    let meshed: std::collections::HashSet<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .filter(|n| {
            n["metadata"]["labels"]["istio-injection"] == "enabled"
                || n["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let want_rows = objects
        .iter()
        .filter(|o| o["kind"] == "Pod")
        .filter(|p| meshed.contains(p["metadata"]["namespace"].as_str().unwrap_or_default()))
        .map(|p| p["spec"]["volumes"].as_array().map_or(0, Vec::len))
        .sum();
    cluster.apply(objects).expect("the fleet is created");
    cluster
        .wait_for_pods_running(Duration::from_secs(600))
        .await
        .expect("every fleet pod runs");
    want_rows
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
    let (cluster, _) = start(10).await;
    let setup = Instant::now();
    let want_rows = populate(&cluster, pods).await;
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
    let mut table = Command::new(kubectl());
    table
        .args(["get", "pods", "-A", "--kubeconfig"])
        .arg(cluster.kubeconfig());
    let kt = tokio::task::block_in_place(|| runs(&table, &work.path().join("kubectl.txt"), n));
    let load_after = load();
    let secs = |v: &[Sample]| v.iter().map(|s| s.secs).collect::<Vec<_>>();
    let cpu = |v: &[Sample]| median(v.iter().map(|s| s.cpu_secs).collect());
    let ds = median(secs(&d));
    let ks = median(secs(&k));
    json!({
        "pods": pods,
        "rows": rows,
        "runs": n,
        "discover_secs": ds,
        "discover_secs_all": secs(&d),
        "discover_cpu_secs": cpu(&d),
        "discover_peak_rss_mib": median(d.iter().map(|s| s.max_rss_kib as f64).collect()) / 1024.0,
        "kubesim_server_cpu_secs_per_discover": server_cpu / (n + 1) as f64,
        "kubesim_idle_cpu_per_s": idle_cpu_per_s,
        "load_average_1m": [load_before, load_after],
        "kubectl_get_pods_secs": ks,
        "kubectl_get_pods_secs_all": secs(&k),
        "kubectl_get_pods_cpu_secs": cpu(&k),
        "kubectl_get_pods_table_secs": median(secs(&kt)),
        "kubectl_get_pods_table_secs_all": secs(&kt),
        "kubectl_get_pods_table_cpu_secs": cpu(&kt),
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
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &from_json(json!({"metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "hostpath.csi.kubesim.dev", "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete"})))
        .await
        .unwrap();
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
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    support::run(async move {
        let d = discover_rows(pods, n).await;
        // PVBACKUP_BENCH_CREATE_RUNS=0 re-measures discover only: the create rows are carried
        // over from the committed results, and the report says so.
        let (c, carried) = if create_runs == 0 {
            let before: serde_json::Value = std::fs::read(out.join("many_volumes.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            (
                before["create"].as_array().cloned().unwrap_or_default(),
                true,
            )
        } else {
            (create_rows(create_runs, mib).await, false)
        };
        let f = |k: &str| d[k].as_f64().unwrap();
        let all = |k: &str| {
            d[k].as_array()
                .unwrap()
                .iter()
                .map(|v| format!("{:.3}", v.as_f64().unwrap()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut md = format!(
            "# Many volumes: discover over {pods} pods, create over 40 PVCs\n\nProduced by `cargo bench --bench many_volumes` (release build; kubesim runs inside the bench process). Machine: {}.\n\n## discover -A\n\n{pods} pods in 50 namespaces on 10 hollow kubesim nodes (`kubesim::scenario::fleet_objects`, tests/kubesim/README.md), 30 namespaces Istio-injected, 10 Linkerd-injected, 10 plain; one pod in five mounts its own PVC. Every command lists in pages of 500 (kubectl's default `--chunk-size`; the plugin's `collect::PAGE`). Medians of {n} runs after one warm-up; CPU is the command's own (user + system).\n\n| command | median s | runs (s) | CPU s | peak RSS MiB |\n|---|---|---|---|---|\n| `kubectl pvbackup discover -A -o json` ({} rows) | {:.3} | {} | {:.2} | {:.0} |\n| `kubectl get pods -A -o json` | {:.3} | {} | {:.2} | |\n| `kubectl get pods -A` (table) | {:.3} | {} | {:.2} | |\n\ndiscover / kubectl get -o json: {:.2}×. Goal: discover ≤ 1 s. kubesim spent about {:.2} CPU s serving each `discover` (its three paged lists), on top of {:.2} CPU s/s of background control loops; 1-minute load average {} on this shared machine.\n\n",
            machine(),
            d["rows"],
            f("discover_secs"),
            all("discover_secs_all"),
            f("discover_cpu_secs"),
            f("discover_peak_rss_mib"),
            f("kubectl_get_pods_secs"),
            all("kubectl_get_pods_secs_all"),
            f("kubectl_get_pods_cpu_secs"),
            f("kubectl_get_pods_table_secs"),
            all("kubectl_get_pods_table_secs_all"),
            f("kubectl_get_pods_table_cpu_secs"),
            f("ratio_discover_to_kubectl_get"),
            f("kubesim_server_cpu_secs_per_discover"),
            f("kubesim_idle_cpu_per_s"),
            d["load_average_1m"],
        );
        let mib_shown = c
            .first()
            .map_or(mib as u64, |r| r["mib_per_pvc"].as_u64().unwrap_or(0));
        let runs_shown = c
            .first()
            .map_or(create_runs as u64, |r| r["runs"].as_u64().unwrap_or(0));
        md.push_str(&format!(
            "## create over 40 PVCs on 3 nodes\n\n{}40 ReadWriteOnce PVCs of {mib_shown} MiB of noise each, mounted by 6 pods (2 per node), `--snapshot never`, default `--max-per-node 2`, to a local directory. Medians of {runs_shown} runs; peaks from a watch on the helper pods (a pod counts from being bound to a node until it is gone).\n\n| --parallel | wall s (median) | MiB/s | peak helpers on one node | peak helpers in all | load average at start |\n|---|---|---|---|---|---|\n",
            if carried {
                "Not re-measured in this run (`PVBACKUP_BENCH_CREATE_RUNS=0`): the rows below are carried over from the previous results.\n\n"
            } else {
                ""
            },
        ));
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
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("many_volumes.md"), md).unwrap();
        std::fs::write(
            out.join("many_volumes.json"),
            serde_json::to_string_pretty(&json!({
                "machine": machine(),
                "discover": d,
                "create": c,
                "create_carried_over": carried,
            }))
            .unwrap(),
        )
        .unwrap();
    });
}

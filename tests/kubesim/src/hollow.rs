//! Hollow nodes, for scale tests: nodes whose kubelet reports the pods bound to them as
//! Running without running anything, so a cluster can hold thousands of pods.
//!
//! Modelled on kubemark's hollow node (kubernetes `cmd/kubemark/app/hollow_node.go`,
//! `pkg/kubemark/hollow_kubelet.go`): a real kubelet over a fake container runtime
//! (`fakeremote`), registered as an ordinary node, whose pods go Running with container
//! statuses but no processes. Here, likewise: a hollow node is a Node object like the others
//! (label `kubesim.dev/hollow=true`, Ready, schedulable); its pods get the status a real
//! kubelet publishes for running containers (phase Running, Ready conditions, pod IP,
//! `containerStatuses` running and ready, init containers Completed, native sidecars running),
//! and a deleted pod goes at once, as its fake containers stop at once. What is not there:
//! no sandbox, no volume attach or mount (a hollow pod's PVCs are bound but never attached, so
//! ReadWriteOnce exclusivity does not apply to it), no kubelet events, no restarts; exec and
//! logs are refused with an error that says why (README, "hollow nodes").

use serde_json::{json, Value};

use crate::resources;
use crate::sim::Sim;

/// The label that marks a node hollow.
pub const LABEL: &str = "kubesim.dev/hollow";

/// `count` hollow nodes, `hollow-1` … `hollow-N`.
pub fn node_objects(count: usize) -> Vec<Value> {
    (1..=count)
        .map(|i| {
            let name = format!("hollow-{i}");
            json!({
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                    LABEL: "true",
                }},
                "spec": {"podCIDR": format!("10.245.{}.0/24", i % 250)},
                "status": {
                    "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"},
                    "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"},
                    "addresses": [{"type": "InternalIP", "address": format!("172.19.{}.{}", i / 250, i % 250 + 1)}, {"type": "Hostname", "address": name}],
                    "nodeInfo": {"kubeletVersion": "v1.33.1", "kubeProxyVersion": "", "containerRuntimeVersion": "fakeRuntime://0.1.0", "osImage": "kubesim hollow node", "kernelVersion": "", "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
                    "conditions": [],
                },
            })
        })
        .collect()
}

/// The names of the hollow nodes.
pub fn nodes(sim: &Sim) -> std::collections::HashSet<String> {
    sim.store
        .list_shared(resources::nodes(), None)
        .0
        .iter()
        .filter(|n| n["metadata"]["labels"][LABEL] == "true")
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

pub fn is_hollow(sim: &Sim, node: &str) -> bool {
    sim.store
        .try_get(resources::nodes(), None, node)
        .is_some_and(|n| n["metadata"]["labels"][LABEL] == "true")
}

/// Why exec and logs cannot be served for a pod on a hollow node.
pub fn no_containers(pod: &str, node: &str) -> String {
    format!(
        "pod {pod} runs on hollow node {node} (kubesim, label {LABEL}=true): its containers are not run, so there is nothing to exec into or read logs from"
    )
}

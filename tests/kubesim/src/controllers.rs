//! The control loops a real control plane runs, reduced to what backup and restore touch:
//! node status, the scheduler, the PV binder and provisioner, PVC/PV protection, and namespace
//! deletion. One reconcile pass runs on every change (and on a short tick).

use std::time::Duration;

use serde_json::{json, Value};

use crate::kubelet;
use crate::resources;
use crate::selectors::LabelSelector;
use crate::sim::SimRef;
use crate::store::now_rfc3339;

pub async fn run(sim: SimRef, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut events = sim.store.subscribe();
    loop {
        reconcile(&sim);
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = sim.kick.notified() => {}
            _ = events.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // Coalesce bursts of events into one pass.
        tokio::time::sleep(Duration::from_millis(10)).await;
        while events.try_recv().is_ok() {}
    }
}

pub fn reconcile(sim: &SimRef) {
    node_status(sim);
    if sim.snapshot_api {
        crate::snapshots::reconcile(sim);
    }
    bind_claims(sim);
    schedule(sim);
    crate::batch::reconcile(sim);
    kubelet::sync(sim);
    kubelet::detach_unused(sim);
    protect_and_reclaim(sim);
    finish_namespaces(sim);
}

/// Node Ready condition, and the taints the node lifecycle controller adds to a NotReady
/// node (node.kubernetes.io/unreachable, pkg/controller/nodelifecycle).
fn node_status(sim: &SimRef) {
    let (nodes, _) = sim.store.list_shared(resources::nodes(), None);
    for n in nodes {
        let name = n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ready = sim.faults.node_ready(&name);
        let cur = n["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"] == "True");
        if cur == Some(ready) {
            continue;
        }
        let _ = sim.store.update(resources::nodes(), None, &name, |o| {
            let cond = if ready {
                json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()})
            } else {
                json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()})
            };
            let mut conds: Vec<Value> = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conds.retain(|c| c["type"] != "Ready");
            conds.push(cond);
            o["status"]["conditions"] = json!(conds);
            let mut taints: Vec<Value> = o["spec"]["taints"].as_array().cloned().unwrap_or_default();
            taints.retain(|t| t["key"] != "node.kubernetes.io/unreachable");
            if !ready {
                taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": now_rfc3339()}));
                taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": now_rfc3339()}));
            }
            if taints.is_empty() {
                if let Some(s) = o["spec"].as_object_mut() {
                    s.remove("taints");
                }
            } else {
                o["spec"]["taints"] = json!(taints);
            }
            Ok(())
        });
    }
}

/// Capacity strings to bytes ("256Mi", "1Gi", "500M", "1024").
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// Dynamic provisioning and binding (pkg/controller/volume/persistentvolume/pv_controller.go).
/// `WaitForFirstConsumer` claims wait for the scheduler's `volume.kubernetes.io/selected-node`.
fn bind_claims(sim: &SimRef) {
    let (pvcs, _) = sim.store.list_shared(resources::pvcs(), None);
    for pvc in pvcs {
        if pvc["status"]["phase"] != "Pending" || !pvc["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let ns = pvc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = pvc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let sc_name = pvc["spec"]["storageClassName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let Some(sc) = sim
            .store
            .try_get(resources::storage_classes(), None, &sc_name)
        else {
            sim.record(
                &pvc,
                "Warning",
                "ProvisioningFailed",
                &format!("storageclass.storage.k8s.io \"{sc_name}\" not found"),
                "persistentvolume-controller",
            );
            continue;
        };
        let wffc = sc["volumeBindingMode"] == "WaitForFirstConsumer";
        if wffc && pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"].is_null() {
            sim.record(
                &pvc,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
                "persistentvolume-controller",
            );
            continue;
        }
        let request = pvc["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .unwrap_or("1Gi")
            .to_string();
        let bytes = quantity_bytes(&request).unwrap_or(1 << 30);
        let source = match crate::snapshots::claim_source(sim, &pvc, &sc, bytes) {
            Ok(s) => s,
            Err(why) => {
                let type_ = if why.reason == "ProvisioningFailed" {
                    "Warning"
                } else {
                    "Normal"
                };
                let component = sc["provisioner"]
                    .as_str()
                    .unwrap_or("hostpath.csi.kubesim.dev");
                sim.record(&pvc, type_, why.reason, &why.message, component);
                continue;
            }
        };
        let host = kubelet::volume_path(sim, &ns, &name);
        if let Some(parent) = host.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = crate::volumes::provision(&host, bytes) {
            sim.record(
                &pvc,
                "Warning",
                "ProvisioningFailed",
                &format!("failed to provision volume with StorageClass \"{sc_name}\": {e}"),
                "hostpath.csi.kubesim.dev",
            );
            continue;
        }
        if let Err(e) = crate::snapshots::fill(sim, &source, &host) {
            let _ = crate::volumes::release(&host);
            sim.record(
                &pvc,
                "Warning",
                "ProvisioningFailed",
                &format!("failed to provision volume with StorageClass \"{sc_name}\": rpc error: code = Internal desc = {e}"),
                "hostpath.csi.kubesim.dev",
            );
            continue;
        }
        let uid = pvc["metadata"]["uid"].as_str().unwrap_or_default();
        let pv_name = format!("pvc-{uid}");
        let provisioner = sc["provisioner"]
            .as_str()
            .unwrap_or("hostpath.csi.kubesim.dev");
        let pv = json!({
            "metadata": {
                "name": pv_name,
                "annotations": {
                    "pv.kubernetes.io/provisioned-by": provisioner,
                    "volume.kubernetes.io/provisioner-deletion-secret-name": "",
                    "kubesim.dev/host-path": host.to_string_lossy(),
                },
            },
            "spec": {
                "accessModes": pvc["spec"]["accessModes"],
                "capacity": {"storage": request},
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid, "apiVersion": "v1", "resourceVersion": pvc["metadata"]["resourceVersion"]},
                "csi": {"driver": provisioner, "volumeHandle": format!("{ns}/{name}"), "fsType": "ext4"},
                "persistentVolumeReclaimPolicy": sc["reclaimPolicy"].as_str().unwrap_or("Delete"),
                "storageClassName": sc_name,
                "volumeMode": pvc["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
            },
            "status": {"phase": "Bound"},
        });
        let _ = sim.store.create(resources::pvs(), None, {
            let mut p = pv;
            p["metadata"]["finalizers"] = json!(["kubernetes.io/pv-protection"]);
            p
        });
        sim.record(&pvc, "Normal", "ExternalProvisioning", &format!("Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."), "persistentvolume-controller");
        sim.record(
            &pvc,
            "Normal",
            "ProvisioningSucceeded",
            &format!("Successfully provisioned volume {pv_name}"),
            provisioner,
        );
        let _ = sim.store.update(resources::pvcs(), Some(&ns), &name, |o| {
            o["spec"]["volumeName"] = json!(pv_name);
            o["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
            o["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
            o["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-provisioner"] = json!(provisioner);
            o["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] = json!(provisioner);
            o["status"] = json!({"phase": "Bound", "accessModes": o["spec"]["accessModes"], "capacity": {"storage": request}});
            Ok(())
        });
    }
}

fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = t["key"].is_null() && t["operator"] == "Exists" || t["key"] == taint["key"];
        let op_ok = t["operator"] == "Exists"
            || t["value"].as_str().unwrap_or_default()
                == taint["value"].as_str().unwrap_or_default();
        let effect_ok =
            t["effect"].is_null() || t["effect"] == "" || t["effect"] == taint["effect"];
        key_ok && op_ok && effect_ok
    })
}

fn matches_affinity(pod: &Value, node: &Value) -> bool {
    let labels = node["metadata"]["labels"].as_object();
    if let Some(sel) = pod["spec"]["nodeSelector"].as_object() {
        if !LabelSelector::from_match_labels(sel).matches(labels) {
            return false;
        }
    }
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let Some(terms) = terms.as_array() else {
        return true;
    };
    // Terms are ORed; expressions within a term are ANDed (core/v1 NodeSelector docs).
    terms.iter().any(|term| {
        let exprs_ok = term["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| {
                let key = e["key"].as_str().unwrap_or_default();
                let val = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
                let vals: Vec<&str> = e["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                match e["operator"].as_str().unwrap_or_default() {
                    "In" => val.is_some_and(|v| vals.contains(&v)),
                    "NotIn" => val.is_none_or(|v| !vals.contains(&v)),
                    "Exists" => val.is_some(),
                    "DoesNotExist" => val.is_none(),
                    _ => false,
                }
            });
        let fields_ok = term["matchFields"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| {
                let vals: Vec<&str> = e["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                // Node fields: only `metadata.name`, with In or NotIn and one value
                // (component-helpers `NodeSelectorRequirementsAsFieldSelector`; admission
                // refuses other forms).
                let name = node["metadata"]["name"].as_str();
                e["key"] == "metadata.name"
                    && match e["operator"].as_str() {
                        Some("In") => name.is_some_and(|n| vals.contains(&n)),
                        Some("NotIn") => name.is_none_or(|n| !vals.contains(&n)),
                        _ => false,
                    }
            });
        exprs_ok && fields_ok
    })
}

/// The default scheduler's filters that matter here (NodeName, NodeAffinity, TaintToleration,
/// VolumeBinding, VolumeRestrictions for ReadWriteOncePod), then the least-loaded node.
/// Failure texts follow pkg/scheduler/framework/plugins/*.
fn schedule(sim: &SimRef) {
    let pending = sim.store.list_where(resources::pods(), None, |p| {
        p["spec"]["nodeName"].is_null() && p["metadata"]["deletionTimestamp"].is_null()
    });
    if pending.is_empty() {
        return;
    }
    let (pods, _) = sim.store.list_shared(resources::pods(), None);
    let (nodes, _) = sim.store.list_shared(resources::nodes(), None);
    // Pods per node when the pass starts (least-loaded choice below).
    let mut load: std::collections::HashMap<String, usize> = Default::default();
    for p in &pods {
        if let Some(n) = p["spec"]["nodeName"].as_str() {
            *load.entry(n.to_string()).or_default() += 1;
        }
    }
    for pod in &pending {
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let tolerations: Vec<Value> = pod["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        let mut claim_problem = None;
        let mut wffc_claims = Vec::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() else {
                continue;
            };
            match sim.store.try_get(resources::pvcs(), Some(&ns), claim) {
                None => {
                    claim_problem = Some(format!("persistentvolumeclaim \"{claim}\" not found"))
                }
                Some(c) if !c["metadata"]["deletionTimestamp"].is_null() => {
                    claim_problem = Some(format!(
                        "persistentvolumeclaim \"{claim}\" is being deleted"
                    ))
                }
                Some(c) => {
                    let modes: Vec<&str> = c["spec"]["accessModes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    if modes.contains(&"ReadWriteOncePod")
                        && pods.iter().any(|o| {
                            o["metadata"]["uid"] != pod["metadata"]["uid"]
                                && o["metadata"]["namespace"] == ns.as_str()
                                && !o["spec"]["nodeName"].is_null()
                                && !kubelet::pod_finished(o)
                                && o["spec"]["volumes"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .any(|ov| ov["persistentVolumeClaim"]["claimName"] == claim)
                        })
                    {
                        *reasons.entry("node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode".into()).or_default() += nodes.len();
                    }
                    if c["status"]["phase"] == "Pending" {
                        let sc = c["spec"]["storageClassName"]
                            .as_str()
                            .and_then(|s| sim.store.try_get(resources::storage_classes(), None, s));
                        if sc.is_some_and(|s| s["volumeBindingMode"] == "WaitForFirstConsumer") {
                            wffc_claims.push(claim.to_string());
                        } else {
                            claim_problem =
                                Some("pod has unbound immediate PersistentVolumeClaims".into());
                        }
                    }
                }
            }
        }
        let msg = if let Some(p) = claim_problem {
            Some(format!("0/{} nodes are available: {p}. preemption: 0/{} nodes are available: {} Preemption is not helpful for scheduling.", nodes.len(), nodes.len(), nodes.len()))
        } else {
            let mut feasible = Vec::new();
            if reasons.is_empty() {
                for n in &nodes {
                    if n["spec"]["unschedulable"] == true {
                        *reasons
                            .entry("node(s) were unschedulable".into())
                            .or_default() += 1;
                        continue;
                    }
                    if !matches_affinity(pod, n) {
                        *reasons
                            .entry("node(s) didn't match Pod's node affinity/selector".into())
                            .or_default() += 1;
                        continue;
                    }
                    let untolerated =
                        n["spec"]["taints"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|t| {
                                (t["effect"] == "NoSchedule" || t["effect"] == "NoExecute")
                                    && !tolerates(&tolerations, t)
                            });
                    if let Some(t) = untolerated {
                        let v = t["value"]
                            .as_str()
                            .map(|v| format!(": {v}"))
                            .unwrap_or_default();
                        *reasons
                            .entry(format!(
                                "node(s) had untolerated taint {{{}{}}}",
                                t["key"].as_str().unwrap_or_default(),
                                v
                            ))
                            .or_default() += 1;
                        continue;
                    }
                    feasible.push(n);
                }
            }
            if let Some(best) = feasible.iter().min_by_key(|n| {
                load.get(n["metadata"]["name"].as_str().unwrap_or_default())
                    .copied()
                    .unwrap_or(0)
            }) {
                let node = best["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                for claim in &wffc_claims {
                    let _ = sim.store.update(resources::pvcs(), Some(&ns), claim, |c| {
                        c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] =
                            json!(node);
                        Ok(())
                    });
                }
                if !wffc_claims.is_empty() {
                    // Binding happens once the provisioner has made the volume.
                    bind_claims(sim);
                }
                let bound = sim.store.update(resources::pods(), Some(&ns), &name, |p| {
                    p["spec"]["nodeName"] = json!(node);
                    let mut conds: Vec<Value> = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    conds.retain(|c| c["type"] != "PodScheduled");
                    conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
                    p["status"]["conditions"] = json!(conds);
                    Ok(())
                });
                if let Ok(p) = bound {
                    sim.record(
                        &p,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {ns}/{name} to {node}"),
                        "default-scheduler",
                    );
                }
                None
            } else {
                let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                Some(format!("0/{} nodes are available: {}. preemption: 0/{} nodes are available: {} Preemption is not helpful for scheduling.", nodes.len(), parts.join(", "), nodes.len(), nodes.len()))
            }
        };
        if let Some(msg) = msg {
            let already = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "PodScheduled" && c["message"] == msg.as_str());
            if !already {
                if let Ok(p) = sim.store.update(resources::pods(), Some(&ns), &name, |p| {
                    p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}]);
                    Ok(())
                }) {
                    sim.record(&p, "Warning", "FailedScheduling", &msg, "default-scheduler");
                }
            }
        }
    }
}

/// kubernetes.io/pvc-protection and pv-protection finalizers, and the Delete reclaim policy.
fn protect_and_reclaim(sim: &SimRef) {
    let pvcs = sim.store.list_where(resources::pvcs(), None, |c| {
        !c["metadata"]["deletionTimestamp"].is_null()
    });
    let pods = if pvcs.is_empty() {
        Vec::new()
    } else {
        sim.store.list_shared(resources::pods(), None).0
    };
    for pvc in &pvcs {
        let ns = pvc["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pvc["metadata"]["name"].as_str().unwrap_or_default();
        let in_use = pods.iter().any(|p| {
            p["metadata"]["namespace"] == ns
                && !kubelet::pod_finished(p)
                && p["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v["persistentVolumeClaim"]["claimName"] == name)
        });
        if in_use {
            continue;
        }
        let _ = sim.store.remove(resources::pvcs(), Some(ns), name);
        if let Some(pv_name) = pvc["spec"]["volumeName"].as_str() {
            if let Some(pv) = sim.store.try_get(resources::pvs(), None, pv_name) {
                if pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" {
                    if let Some(p) = pv["metadata"]["annotations"]["kubesim.dev/host-path"].as_str()
                    {
                        let _ = crate::volumes::release(std::path::Path::new(p));
                    }
                    let _ = sim.store.remove(resources::pvs(), None, pv_name);
                } else {
                    let _ = sim.store.update(resources::pvs(), None, pv_name, |o| {
                        o["status"]["phase"] = json!("Released");
                        Ok(())
                    });
                }
            }
        }
    }
    let (pvs, _) = sim.store.list_shared(resources::pvs(), None);
    for pv in pvs
        .iter()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_null())
    {
        let name = pv["metadata"]["name"].as_str().unwrap_or_default();
        let bound = pvcs.iter().any(|c| {
            c["spec"]["volumeName"] == name && c["metadata"]["deletionTimestamp"].is_null()
        });
        if !bound {
            let _ = sim.store.remove(resources::pvs(), None, name);
        }
    }
}

/// The namespace controller: delete everything in a Terminating namespace, then the namespace.
fn finish_namespaces(sim: &SimRef) {
    let (nss, _) = sim.store.list_shared(resources::namespaces(), None);
    for ns in nss
        .iter()
        .filter(|n| !n["metadata"]["deletionTimestamp"].is_null())
    {
        let name = ns["metadata"]["name"].as_str().unwrap_or_default();
        let mut left = 0;
        for def in resources::RESOURCES.iter().filter(|d| d.namespaced) {
            let (items, _) = sim.store.list(def, Some(name));
            for o in items {
                left += 1;
                let oname = o["metadata"]["name"].as_str().unwrap_or_default();
                if o["metadata"]["deletionTimestamp"].is_null() {
                    let _ = sim.store.update(def, Some(name), oname, |x| {
                        x["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                        x["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                        Ok(())
                    });
                }
                let unscheduled_pod = def.plural == "pods" && o["spec"]["nodeName"].is_null();
                if def.plural == "events"
                    || unscheduled_pod
                    || kubelet::pod_finished(&o) && def.plural == "pods"
                {
                    let _ = sim.store.remove(def, Some(name), oname);
                }
            }
        }
        if left == 0 {
            let _ = sim.store.remove(resources::namespaces(), None, name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("256Mi"), Some(256 << 20));
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("12x"), None);
    }

    #[test]
    fn tolerations_and_affinity() {
        let taint = json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"});
        assert!(tolerates(
            &[
                json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"})
            ],
            &taint
        ));
        assert!(tolerates(&[json!({"operator": "Exists"})], &taint));
        assert!(!tolerates(
            &[json!({"key": "other", "operator": "Exists"})],
            &taint
        ));
        let node = json!({"metadata": {"name": "n2", "labels": {"kubernetes.io/hostname": "n2"}}});
        let pod = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}});
        assert!(!matches_affinity(&pod, &node));
        let pod2 = json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "n2"}}});
        assert!(matches_affinity(&pod2, &node));
    }
}

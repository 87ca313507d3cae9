//! Discovery: which pods run a mesh proxy, which PVCs they mount, and which PVCs to back up.
//!
//! Everything here is pure: the caller fetches `Pod`s, `PersistentVolumeClaim`s, `Namespace`s
//! and `Node`s (the `collect_*` side) and these functions turn them into rows, targets and
//! placement decisions (the `extract_*` side), so every decision is unit-tested from small
//! fixtures.

pub mod mesh;

#[cfg(test)]
pub(crate) mod fixtures;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod, Toleration, Volume};
use serde::{Serialize, Serializer};

pub use mesh::{detect_mesh, Mesh, MeshMembership, ProxyMode};

/// Options of `extract_rows`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// List the PVCs of every pod, not only of pods in a mesh.
    pub all_pods: bool,
}

/// A PVC access mode. Serialised with its full Kubernetes name; [`AccessMode::short`] gives the
/// abbreviation used by `kubectl get pvc` (RWO, ROX, RWX, RWOP).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadOnlyMany,
    ReadWriteMany,
    ReadWriteOncePod,
    /// A mode this version does not know, kept verbatim.
    Other(String),
}

impl AccessMode {
    pub fn parse(s: &str) -> AccessMode {
        match s {
            "ReadWriteOnce" => AccessMode::ReadWriteOnce,
            "ReadOnlyMany" => AccessMode::ReadOnlyMany,
            "ReadWriteMany" => AccessMode::ReadWriteMany,
            "ReadWriteOncePod" => AccessMode::ReadWriteOncePod,
            other => AccessMode::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
            AccessMode::Other(s) => s,
        }
    }

    pub fn short(&self) -> &str {
        match self {
            AccessMode::ReadWriteOnce => "RWO",
            AccessMode::ReadOnlyMany => "ROX",
            AccessMode::ReadWriteMany => "RWX",
            AccessMode::ReadWriteOncePod => "RWOP",
            AccessMode::Other(s) => s,
        }
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AccessMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `RWO,RWX` for a table cell.
pub fn short_access_modes(modes: &[AccessMode]) -> String {
    modes
        .iter()
        .map(AccessMode::short)
        .collect::<Vec<_>>()
        .join(",")
}

/// One line of `kubectl pvbackup list`: a (pod, PVC) pair, or a PVC no pod mounts.
///
/// Field names are part of the `-o json` contract: add fields, never rename them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeRow {
    pub namespace: String,
    /// The pod mounting the PVC; `None` for a PVC no pod mounts.
    pub pod: Option<String>,
    /// The pod's volume name (`spec.volumes[].name`).
    pub volume: Option<String>,
    pub mesh: Option<Mesh>,
    pub proxy_mode: Option<ProxyMode>,
    pub proxy_container: Option<String>,
    pub proxy_version: Option<String>,
    pub pvc: String,
    /// False when the pod references a PVC that does not exist (yet): the other PVC fields are
    /// then empty.
    pub pvc_exists: bool,
    /// The PVC belongs to a generic ephemeral volume (`spec.volumes[].ephemeral`).
    pub ephemeral: bool,
    /// Size as written by Kubernetes (`status.capacity.storage`, else the request), e.g. `1Gi`.
    pub capacity: Option<String>,
    pub access_modes: Vec<AccessMode>,
    pub storage_class: Option<String>,
    pub volume_mode: Option<String>,
    /// Node the pod is scheduled on.
    pub node: Option<String>,
    /// Pod phase (`Running`, `Pending`, ...).
    pub phase: Option<String>,
    /// The pod cannot write the volume: read-only volume source, or every mount read-only.
    pub read_only: bool,
    /// A pod is scheduled with this PVC and has not finished (the volume is, or is about to be,
    /// attached to `node`).
    pub attached: bool,
    /// PVC phase (`Bound`, `Pending`, `Lost`).
    pub pvc_phase: Option<String>,
}

impl VolumeRow {
    /// Access modes for the table: `RWO`, `RWX,ROX`, ...
    pub fn access_modes_short(&self) -> String {
        short_access_modes(&self.access_modes)
    }
}

fn pvc_key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

fn pod_is_active(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// The PVC behind a pod volume, if any: `(claim name, ephemeral, read-only source)`.
pub fn volume_claim(pod_name: &str, volume: &Volume) -> Option<(String, bool, bool)> {
    if let Some(src) = &volume.persistent_volume_claim {
        return Some((
            src.claim_name.clone(),
            false,
            src.read_only.unwrap_or(false),
        ));
    }
    // Generic ephemeral volume: the PVC is named `<pod name>-<volume name>`
    // (kubernetes.io/docs/concepts/storage/ephemeral-volumes/#persistentvolumeclaim-naming).
    if volume.ephemeral.is_some() {
        return Some((format!("{pod_name}-{}", volume.name), true, false));
    }
    None
}

/// Is `volume` mounted read-only everywhere it is mounted in `pod`?
fn mounts_read_only(pod: &Pod, volume: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let mut seen = false;
    let all_ro = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| m.name == volume)
        .all(|m| {
            seen = true;
            m.read_only.unwrap_or(false)
        });
    seen && all_ro
}

struct PvcFacts {
    capacity: Option<String>,
    access_modes: Vec<AccessMode>,
    storage_class: Option<String>,
    volume_mode: Option<String>,
    pvc_phase: Option<String>,
}

fn pvc_facts(pvc: &PersistentVolumeClaim) -> PvcFacts {
    let spec = pvc.spec.as_ref();
    let status = pvc.status.as_ref();
    let capacity = status
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .or_else(|| {
            spec.and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
        })
        .map(|q| q.0.clone());
    // The bound modes (status) are what the volume really offers; fall back to the request.
    let modes = status
        .and_then(|s| s.access_modes.as_ref())
        .filter(|m| !m.is_empty())
        .or_else(|| spec.and_then(|s| s.access_modes.as_ref()));
    PvcFacts {
        capacity,
        access_modes: modes
            .map(|m| m.iter().map(|s| AccessMode::parse(s)).collect())
            .unwrap_or_default(),
        storage_class: spec.and_then(|s| s.storage_class_name.clone()),
        volume_mode: spec.and_then(|s| s.volume_mode.clone()),
        pvc_phase: status.and_then(|s| s.phase.clone()),
    }
}

/// Build the rows of `list`: one per (pod, mounted PVC) for mesh pods (every pod with
/// `opts.all_pods`), then one per PVC of `pvcs` that no pod in `pods` references at all.
///
/// A pod volume naming a PVC absent from `pvcs` yields a row with `pvc_exists: false` rather
/// than an error. `namespaces` is used for namespace-level ambient enrolment. Rows are sorted by
/// namespace, then pod rows (by pod, PVC) before unmounted PVC rows (by PVC).
pub fn extract_rows(
    pods: &[Pod],
    pvcs: &[PersistentVolumeClaim],
    namespaces: &[Namespace],
    opts: &DiscoverOptions,
) -> Vec<VolumeRow> {
    let by_key: BTreeMap<(String, String), &PersistentVolumeClaim> = pvcs
        .iter()
        .filter_map(|p| {
            Some((
                pvc_key(
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                ),
                p,
            ))
        })
        .collect();
    let ns_by_name: BTreeMap<&str, &Namespace> = namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();

    let mut referenced: BTreeSet<(String, String)> = BTreeSet::new();
    let mut rows = Vec::new();
    for pod in pods {
        let (Some(ns), Some(pod_name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let membership = detect_mesh(pod, ns_by_name.get(ns).copied());
        let listed = opts.all_pods || membership.is_some();
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        let node = spec.node_name.clone();
        for volume in spec.volumes.iter().flatten() {
            let Some((claim, ephemeral, source_ro)) = volume_claim(pod_name, volume) else {
                continue;
            };
            let key = pvc_key(ns, &claim);
            referenced.insert(key.clone());
            if !listed {
                continue;
            }
            let pvc = by_key.get(&key).copied();
            let facts = pvc.map(pvc_facts);
            rows.push(VolumeRow {
                namespace: ns.to_string(),
                pod: Some(pod_name.to_string()),
                volume: Some(volume.name.clone()),
                mesh: membership.as_ref().map(|m| m.mesh),
                proxy_mode: membership.as_ref().map(|m| m.mode),
                proxy_container: membership.as_ref().and_then(|m| m.proxy_container.clone()),
                proxy_version: membership.as_ref().and_then(|m| m.proxy_version.clone()),
                pvc: claim,
                pvc_exists: pvc.is_some(),
                ephemeral,
                capacity: facts.as_ref().and_then(|f| f.capacity.clone()),
                access_modes: facts
                    .as_ref()
                    .map(|f| f.access_modes.clone())
                    .unwrap_or_default(),
                storage_class: facts.as_ref().and_then(|f| f.storage_class.clone()),
                volume_mode: facts.as_ref().and_then(|f| f.volume_mode.clone()),
                node: node.clone(),
                phase: phase.clone(),
                read_only: source_ro || mounts_read_only(pod, &volume.name),
                attached: node.is_some() && pod_is_active(pod),
                pvc_phase: facts.and_then(|f| f.pvc_phase),
            });
        }
    }

    for (key, pvc) in &by_key {
        if referenced.contains(key) {
            continue;
        }
        let facts = pvc_facts(pvc);
        rows.push(VolumeRow {
            namespace: key.0.clone(),
            pod: None,
            volume: None,
            mesh: None,
            proxy_mode: None,
            proxy_container: None,
            proxy_version: None,
            pvc: key.1.clone(),
            pvc_exists: true,
            ephemeral: false,
            capacity: facts.capacity,
            access_modes: facts.access_modes,
            storage_class: facts.storage_class,
            volume_mode: facts.volume_mode,
            node: None,
            phase: None,
            read_only: false,
            attached: false,
            pvc_phase: facts.pvc_phase,
        });
    }

    rows.sort_by(|a, b| {
        (&a.namespace, a.pod.is_none(), &a.pod, &a.pvc).cmp(&(
            &b.namespace,
            b.pod.is_none(),
            &b.pod,
            &b.pvc,
        ))
    });
    rows
}

// ---------------------------------------------------------------------------------------------
// Target selection
// ---------------------------------------------------------------------------------------------

/// What `backup` should act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSelection {
    /// PVCs named on the command line, `name` or `namespace/name`. When non-empty, only these.
    pub pvc_names: Vec<String>,
    /// Restrict the default selection (PVCs mounted by mesh pods) to one mesh.
    pub mesh: Option<Mesh>,
    /// Every PVC in scope, mounted or not, mesh or not (takes precedence over `mesh`).
    pub all_pvcs: bool,
}

/// A pod that mounts a target PVC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountingPod {
    pub name: String,
    pub node: Option<String>,
    pub phase: Option<String>,
    pub mesh: Option<Mesh>,
    pub read_only: bool,
    /// Scheduled and not finished: it holds the volume.
    pub active: bool,
}

/// One PVC to back up, with what placement needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub namespace: String,
    pub pvc: String,
    /// Pods referencing the PVC, sorted by name.
    pub pods: Vec<MountingPod>,
    pub access_modes: Vec<AccessMode>,
    /// Capacity in bytes, when the PVC reports a parseable size.
    pub capacity_bytes: Option<u64>,
    pub storage_class: Option<String>,
    /// Node where the volume is attached: that of an active pod scheduled with it.
    pub attached_node: Option<String>,
}

/// Why `select_targets` could not produce a target list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error(
        "PVC not found: {}. PVCs in scope: {}. Check the name, or the namespace (-n / --all-namespaces).",
        missing.join(", "),
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    NotFound {
        missing: Vec<String>,
        /// Every existing PVC in scope, as `namespace/name`.
        available: Vec<String>,
    },
    #[error(
        "PVC name {name:?} is ambiguous: it exists in namespaces {}. Name it as NAMESPACE/{name}.",
        namespaces.join(", ")
    )]
    Ambiguous {
        name: String,
        namespaces: Vec<String>,
    },
    #[error("{0}")]
    NothingSelected(String),
}

fn row_active(row: &VolumeRow) -> bool {
    row.attached
}

fn build_target(namespace: &str, pvc: &str, rows: &[&VolumeRow]) -> Target {
    let first = rows[0];
    let mut pods: Vec<MountingPod> = rows
        .iter()
        .filter_map(|r| {
            Some(MountingPod {
                name: r.pod.clone()?,
                node: r.node.clone(),
                phase: r.phase.clone(),
                mesh: r.mesh,
                read_only: r.read_only,
                active: row_active(r),
            })
        })
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods.dedup_by(|a, b| a.name == b.name);
    let attached_node = pods
        .iter()
        .filter(|p| p.active)
        .filter_map(|p| p.node.clone())
        .min();
    Target {
        namespace: namespace.to_string(),
        pvc: pvc.to_string(),
        pods,
        access_modes: first.access_modes.clone(),
        capacity_bytes: first
            .capacity
            .as_deref()
            .and_then(|q| parse_quantity_bytes(q).ok()),
        storage_class: first.storage_class.clone(),
        attached_node,
    }
}

/// Turn rows into de-duplicated targets, sorted by namespace then PVC name.
///
/// * `pvc_names` non-empty: exactly those PVCs (`name` or `namespace/name`); any missing name is
///   an error listing what exists. A name found in several namespaces is ambiguous.
/// * else `all_pvcs`: every existing PVC in the rows.
/// * else every existing PVC mounted by a mesh pod, limited to `mesh` when given.
///
/// Pass rows built with `DiscoverOptions { all_pods: true }` (see [`discover_targets`]):
/// otherwise PVCs used only by non-mesh pods are invisible, and so are non-mesh pods sharing a
/// target PVC, which [`placement`] must know about.
pub fn select_targets(
    rows: &[VolumeRow],
    sel: &TargetSelection,
) -> Result<Vec<Target>, SelectError> {
    let mut by_pvc: BTreeMap<(String, String), Vec<&VolumeRow>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.pvc_exists) {
        by_pvc
            .entry(pvc_key(&row.namespace, &row.pvc))
            .or_default()
            .push(row);
    }

    let chosen: Vec<(String, String)> = if !sel.pvc_names.is_empty() {
        let mut chosen = BTreeSet::new();
        let mut missing = Vec::new();
        for wanted in &sel.pvc_names {
            let matches: Vec<&(String, String)> = match wanted.split_once('/') {
                Some((ns, name)) => by_pvc
                    .keys()
                    .filter(|(n, p)| n == ns && p == name)
                    .collect(),
                None => by_pvc.keys().filter(|(_, p)| p == wanted).collect(),
            };
            match matches.as_slice() {
                [] => missing.push(wanted.clone()),
                [one] => {
                    chosen.insert((*one).clone());
                }
                many => {
                    return Err(SelectError::Ambiguous {
                        name: wanted.clone(),
                        namespaces: many.iter().map(|(n, _)| n.clone()).collect(),
                    })
                }
            }
        }
        if !missing.is_empty() {
            return Err(SelectError::NotFound {
                missing,
                available: by_pvc.keys().map(|(n, p)| format!("{n}/{p}")).collect(),
            });
        }
        chosen.into_iter().collect()
    } else if sel.all_pvcs {
        by_pvc.keys().cloned().collect()
    } else {
        by_pvc
            .iter()
            .filter(|(_, rs)| {
                rs.iter()
                    .any(|r| r.mesh.is_some() && sel.mesh.is_none_or(|m| r.mesh == Some(m)))
            })
            .map(|(k, _)| k.clone())
            .collect()
    };

    if chosen.is_empty() {
        let what = match (sel.all_pvcs, sel.mesh) {
            (true, _) => "no PVCs in scope".to_string(),
            (false, Some(m)) => format!("no PVC in scope is mounted by a pod in the {m} mesh"),
            (false, None) => "no PVC in scope is mounted by a pod in a service mesh".to_string(),
        };
        return Err(SelectError::NothingSelected(format!(
            "{what}. Name PVCs explicitly, use --all-pvcs, or widen the scope (-n / --all-namespaces)."
        )));
    }

    Ok(chosen
        .iter()
        .map(|(ns, pvc)| build_target(ns, pvc, &by_pvc[&(ns.clone(), pvc.clone())]))
        .collect())
}

/// `extract_rows` with every pod, then `select_targets`.
pub fn discover_targets(
    pods: &[Pod],
    pvcs: &[PersistentVolumeClaim],
    namespaces: &[Namespace],
    sel: &TargetSelection,
) -> Result<Vec<Target>, SelectError> {
    let rows = extract_rows(pods, pvcs, namespaces, &DiscoverOptions { all_pods: true });
    select_targets(&rows, sel)
}

// ---------------------------------------------------------------------------------------------
// Placement
// ---------------------------------------------------------------------------------------------

/// Where the helper pod for a target must run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    /// Pin to this node (the volume is attached there), or let the scheduler choose.
    pub node: Option<String>,
    /// Tolerations for the pinned node's `NoSchedule` / `NoExecute` taints.
    pub tolerations: Vec<Toleration>,
    /// Why, for `--dry-run` and logs.
    pub reason: String,
}

/// The helper pod cannot be placed safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("{0}")]
    Refused(String),
}

/// Tolerations matching every `NoSchedule` / `NoExecute` taint of `node`
/// (`Equal` when the taint has a value, `Exists` otherwise; no `tolerationSeconds`, so a
/// `NoExecute` taint never evicts the helper).
pub fn tolerations_for(node: &Node) -> Vec<Toleration> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .map(|t| {
            let value = t.value.clone().filter(|v| !v.is_empty());
            Toleration {
                key: Some(t.key.clone()),
                operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_string()),
                value,
                effect: Some(t.effect.clone()),
                toleration_seconds: None,
            }
        })
        .collect()
}

/// Decide where the helper pod for `target` runs.
///
/// * ReadWriteOncePod in use by an active pod: refused — a second pod can never mount it.
/// * ReadWriteMany / ReadOnlyMany, or not mounted: no pin; the scheduler picks a node.
/// * ReadWriteOnce mounted by a scheduled, active pod: pin to that node (RWO allows several
///   pods on the node that has the volume attached, and no other node), tolerating the node's
///   `NoSchedule` / `NoExecute` taints (looked up in `nodes`).
pub fn placement(target: &Target, nodes: &[Node]) -> Result<Placement, PlacementError> {
    let modes = &target.access_modes;
    let active: Vec<&MountingPod> = target.pods.iter().filter(|p| p.active).collect();
    let id = format!("{}/{}", target.namespace, target.pvc);

    if modes.contains(&AccessMode::ReadWriteOncePod) {
        // Any pod that has not finished holds (or will hold) the single mount, scheduled or not.
        let in_use = target
            .pods
            .iter()
            .find(|p| !matches!(p.phase.as_deref(), Some("Succeeded") | Some("Failed")));
        if let Some(user) = in_use {
            return Err(PlacementError::Refused(format!(
                "PVC {id} is ReadWriteOncePod and in use by pod {}; only one pod may mount it. \
                 Scale the workload down (e.g. kubectl scale --replicas=0) and run the backup \
                 again, or back it up from a VolumeSnapshot.",
                user.name
            )));
        }
        return Ok(Placement {
            node: None,
            tolerations: Vec::new(),
            reason: format!("PVC {id} is ReadWriteOncePod and not in use"),
        });
    }
    if modes.contains(&AccessMode::ReadWriteMany) || modes.contains(&AccessMode::ReadOnlyMany) {
        return Ok(Placement {
            node: None,
            tolerations: Vec::new(),
            reason: format!(
                "PVC {id} is {}: any node can mount it",
                short_access_modes(modes)
            ),
        });
    }
    let Some(node) = target.attached_node.clone() else {
        let pending: Vec<&str> = target
            .pods
            .iter()
            .filter(|p| p.node.is_none() && p.phase.as_deref() == Some("Pending"))
            .map(|p| p.name.as_str())
            .collect();
        let mut reason = format!("PVC {id} is not attached to any node");
        if !pending.is_empty() {
            reason.push_str(&format!(
                "; pod {} is waiting to be scheduled with it",
                pending.join(", ")
            ));
        }
        return Ok(Placement {
            node: None,
            tolerations: Vec::new(),
            reason,
        });
    };
    let users: Vec<&str> = active
        .iter()
        .filter(|p| p.node.as_deref() == Some(node.as_str()))
        .map(|p| p.name.as_str())
        .collect();
    let found = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node.as_str()));
    let tolerations = found.map(tolerations_for).unwrap_or_default();
    let mut reason = format!(
        "PVC {id} is ReadWriteOnce and attached to node {node} (pod {})",
        users.join(", ")
    );
    if found.is_none() {
        reason.push_str("; node object not available, no tolerations copied");
    }
    Ok(Placement {
        node: Some(node),
        tolerations,
        reason,
    })
}

// ---------------------------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------------------------

/// A storage quantity that could not be turned into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse quantity {0:?} as bytes: expected a number with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E), e.g. 10Gi")]
pub struct QuantityError(pub String);

/// Parse a Kubernetes quantity (`10Gi`, `500M`, `1.5Gi`, `1e3`, `1024`) into bytes, rounding
/// a fractional result up as Kubernetes does.
pub fn parse_quantity_bytes(q: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError(q.to_string());
    let s = q.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return Err(err());
    }
    let (mult, exp10): (u128, u32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        s if s.starts_with(['e', 'E']) && s.len() > 1 => {
            let e: u32 = s[1..].parse().map_err(|_| err())?;
            (1, e)
        }
        _ => return Err(err()),
    };
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    let mantissa: u128 = digits.parse().map_err(|_| err())?;
    let frac_len = frac_part.len() as u32;
    let scale_up = 10u128.checked_pow(exp10).ok_or_else(err)?;
    let scale_down = 10u128.checked_pow(frac_len).ok_or_else(err)?;
    let numerator = mantissa
        .checked_mul(mult)
        .and_then(|v| v.checked_mul(scale_up))
        .ok_or_else(err)?;
    let bytes = numerator.div_ceil(scale_down);
    u64::try_from(bytes).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn ns_default() -> Vec<Namespace> {
        vec![namespace(NS, &[])]
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_quantity_bytes("10Mi"), Ok(10 << 20));
        assert_eq!(parse_quantity_bytes("1Ki"), Ok(1024));
        assert_eq!(parse_quantity_bytes("2Ti"), Ok(2 << 40));
        assert_eq!(parse_quantity_bytes("1k"), Ok(1000));
        assert_eq!(parse_quantity_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_quantity_bytes("5G"), Ok(5_000_000_000));
        assert_eq!(parse_quantity_bytes("1024"), Ok(1024));
        assert_eq!(parse_quantity_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_quantity_bytes("0.1"), Ok(1)); // rounded up
        assert_eq!(parse_quantity_bytes("1e3"), Ok(1000));
        assert_eq!(parse_quantity_bytes(" 8Gi "), Ok(8 << 30));
        for bad in [
            "",
            "Gi",
            "1.2.3",
            "1Xi",
            "-1Gi",
            "1m",
            "abc",
            "99999999999Ei",
        ] {
            let e = parse_quantity_bytes(bad).unwrap_err();
            assert!(e.to_string().contains("e.g. 10Gi"), "{bad}");
        }
    }

    #[test]
    fn access_modes_short_and_full() {
        let row_modes: Vec<AccessMode> = [
            "ReadWriteOnce",
            "ReadOnlyMany",
            "ReadWriteMany",
            "ReadWriteOncePod",
        ]
        .iter()
        .map(|s| AccessMode::parse(s))
        .collect();
        assert_eq!(short_access_modes(&row_modes), "RWO,ROX,RWX,RWOP");
        assert_eq!(
            serde_json::to_value(&row_modes).unwrap(),
            serde_json::json!([
                "ReadWriteOnce",
                "ReadOnlyMany",
                "ReadWriteMany",
                "ReadWriteOncePod"
            ])
        );
    }

    #[test]
    fn pod_with_two_pvcs_and_read_only_mount() {
        let pod = on_node(
            with_pvc(
                with_pvc(istio_sidecar_pod("db-0"), "data", "data-db-0", false),
                "cfg",
                "cfg",
                true,
            ),
            "node-a",
            "Running",
        );
        let pvcs = [
            pvc("data-db-0", &["ReadWriteOnce"], "10Gi"),
            pvc("cfg", &["ReadOnlyMany"], "1Gi"),
        ];
        let rows = extract_rows(&[pod], &pvcs, &ns_default(), &DiscoverOptions::default());
        assert_eq!(rows.len(), 2);
        let cfg = &rows[0];
        assert_eq!(cfg.pvc, "cfg");
        assert!(cfg.read_only);
        assert_eq!(cfg.access_modes_short(), "ROX");
        let data = &rows[1];
        assert_eq!(data.pod.as_deref(), Some("db-0"));
        assert_eq!(data.volume.as_deref(), Some("data"));
        assert_eq!(data.mesh, Some(Mesh::Istio));
        assert_eq!(data.proxy_mode, Some(ProxyMode::Sidecar));
        assert_eq!(data.proxy_container.as_deref(), Some("istio-proxy"));
        assert_eq!(data.proxy_version.as_deref(), Some("1.22.1"));
        assert_eq!(data.capacity.as_deref(), Some("10Gi"));
        assert_eq!(data.storage_class.as_deref(), Some("standard"));
        assert_eq!(data.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(data.node.as_deref(), Some("node-a"));
        assert_eq!(data.phase.as_deref(), Some("Running"));
        assert_eq!(data.pvc_phase.as_deref(), Some("Bound"));
        assert!(data.attached && data.pvc_exists && !data.read_only && !data.ephemeral);

        // Stable JSON field names.
        let v = serde_json::to_value(data).unwrap();
        for key in [
            "namespace",
            "pod",
            "volume",
            "mesh",
            "proxy_mode",
            "proxy_container",
            "proxy_version",
            "pvc",
            "pvc_exists",
            "ephemeral",
            "capacity",
            "access_modes",
            "storage_class",
            "volume_mode",
            "node",
            "phase",
            "read_only",
            "attached",
            "pvc_phase",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["mesh"], "istio");
        assert_eq!(v["access_modes"], serde_json::json!(["ReadWriteOnce"]));
    }

    #[test]
    fn non_mesh_pods_only_with_all_pods() {
        let plain = on_node(
            with_pvc(
                plain_pod_with_containers("web", &["app"]),
                "d",
                "web-data",
                false,
            ),
            "node-a",
            "Running",
        );
        let pvcs = [pvc("web-data", &["ReadWriteOnce"], "1Gi")];
        let rows = extract_rows(
            std::slice::from_ref(&plain),
            &pvcs,
            &ns_default(),
            &DiscoverOptions::default(),
        );
        // Mounted by a non-mesh pod: neither a pod row nor an "unattached" row.
        assert!(rows.is_empty(), "{rows:?}");
        let rows = extract_rows(
            &[plain],
            &pvcs,
            &ns_default(),
            &DiscoverOptions { all_pods: true },
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].mesh, None);
        assert_eq!(rows[0].pod.as_deref(), Some("web"));
    }

    #[test]
    fn shared_unattached_missing_and_ephemeral() {
        let a = on_node(
            with_pvc(linkerd_sidecar_pod("a"), "s", "shared", false),
            "n1",
            "Running",
        );
        let b = on_node(
            with_pvc(kuma_sidecar_pod("b"), "s", "shared", true),
            "n2",
            "Running",
        );
        let c = with_pvc(consul_sidecar_pod("c"), "x", "does-not-exist", false);
        let e = on_node(
            with_ephemeral(osm_sidecar_pod("e"), "scratch"),
            "n1",
            "Running",
        );
        let pvcs = [
            pvc("shared", &["ReadWriteMany"], "5Gi"),
            pvc("orphan", &["ReadWriteOnce"], "2Gi"),
            pvc("e-scratch", &["ReadWriteOnce"], "1Gi"),
        ];
        let rows = extract_rows(
            &[a, b, c, e],
            &pvcs,
            &ns_default(),
            &DiscoverOptions::default(),
        );
        let summary: Vec<(Option<&str>, &str)> = rows
            .iter()
            .map(|r| (r.pod.as_deref(), r.pvc.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (Some("a"), "shared"),
                (Some("b"), "shared"),
                (Some("c"), "does-not-exist"),
                (Some("e"), "e-scratch"),
                (None, "orphan"),
            ]
        );
        assert!(rows[1].read_only);
        let missing = &rows[2];
        assert!(!missing.pvc_exists);
        assert_eq!(missing.capacity, None);
        assert!(missing.access_modes.is_empty());
        assert!(!missing.attached); // not scheduled
        assert!(rows[3].ephemeral && rows[3].pvc_exists);
        assert_eq!(rows[3].mesh, Some(Mesh::Osm));
        let orphan = &rows[4];
        assert!(!orphan.attached && orphan.pod.is_none() && orphan.mesh.is_none());
        assert_eq!(orphan.capacity.as_deref(), Some("2Gi"));
    }

    #[test]
    fn ambient_namespace_rows() {
        let nss = [namespace(NS, &[("istio.io/dataplane-mode", "ambient")])];
        let pod = on_node(
            with_pvc(
                plain_pod_with_containers("amb", &["app"]),
                "d",
                "amb-data",
                false,
            ),
            "n1",
            "Running",
        );
        let rows = extract_rows(
            &[pod],
            &[pvc("amb-data", &["ReadWriteOnce"], "1Gi")],
            &nss,
            &DiscoverOptions::default(),
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].proxy_mode, Some(ProxyMode::Ambient));
        assert_eq!(rows[0].proxy_container, None);
    }

    fn scenario_rows() -> Vec<VolumeRow> {
        let pods = [
            on_node(
                with_pvc(istio_sidecar_pod("i"), "d", "istio-data", false),
                "n1",
                "Running",
            ),
            on_node(
                with_pvc(linkerd_sidecar_pod("l"), "d", "linkerd-data", false),
                "n2",
                "Running",
            ),
            on_node(
                with_pvc(linkerd_sidecar_pod("l2"), "d", "linkerd-data", false),
                "n2",
                "Running",
            ),
            on_node(
                with_pvc(
                    plain_pod_with_containers("p", &["app"]),
                    "d",
                    "plain-data",
                    false,
                ),
                "n3",
                "Running",
            ),
        ];
        let pvcs = [
            pvc("istio-data", &["ReadWriteOnce"], "1Gi"),
            pvc("linkerd-data", &["ReadWriteOnce"], "2Gi"),
            pvc("plain-data", &["ReadWriteOnce"], "3Gi"),
            pvc("orphan", &["ReadWriteOnce"], "4Gi"),
            pvc_in("other", "istio-data", &["ReadWriteOnce"], "1Gi"),
        ];
        extract_rows(&pods, &pvcs, &[], &DiscoverOptions { all_pods: true })
    }

    fn names(targets: &[Target]) -> Vec<String> {
        targets
            .iter()
            .map(|t| format!("{}/{}", t.namespace, t.pvc))
            .collect()
    }

    #[test]
    fn select_default_is_mesh_pvcs_deduplicated() {
        let targets = select_targets(&scenario_rows(), &TargetSelection::default()).unwrap();
        assert_eq!(names(&targets), ["apps/istio-data", "apps/linkerd-data"]);
        let l = &targets[1];
        assert_eq!(
            l.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["l", "l2"]
        );
        assert_eq!(l.capacity_bytes, Some(2 << 30));
        assert_eq!(l.attached_node.as_deref(), Some("n2"));
        assert_eq!(l.access_modes, [AccessMode::ReadWriteOnce]);
    }

    #[test]
    fn select_by_mesh() {
        let sel = TargetSelection {
            mesh: Some(Mesh::Linkerd),
            ..Default::default()
        };
        let targets = select_targets(&scenario_rows(), &sel).unwrap();
        assert_eq!(names(&targets), ["apps/linkerd-data"]);
        let sel = TargetSelection {
            mesh: Some(Mesh::Osm),
            ..Default::default()
        };
        let err = select_targets(&scenario_rows(), &sel).unwrap_err();
        assert!(err.to_string().contains("osm mesh"), "{err}");
        assert!(err.to_string().contains("--all-pvcs"), "{err}");
    }

    #[test]
    fn select_all_pvcs() {
        let sel = TargetSelection {
            all_pvcs: true,
            ..Default::default()
        };
        let targets = select_targets(&scenario_rows(), &sel).unwrap();
        assert_eq!(
            names(&targets),
            [
                "apps/istio-data",
                "apps/linkerd-data",
                "apps/orphan",
                "apps/plain-data",
                "other/istio-data"
            ]
        );
        let orphan = &targets[2];
        assert!(orphan.pods.is_empty());
        assert_eq!(orphan.attached_node, None);
    }

    #[test]
    fn select_by_name() {
        let sel = TargetSelection {
            pvc_names: vec![
                "plain-data".into(),
                "apps/orphan".into(),
                "other/istio-data".into(),
                "plain-data".into(),
            ],
            ..Default::default()
        };
        let targets = select_targets(&scenario_rows(), &sel).unwrap();
        assert_eq!(
            names(&targets),
            ["apps/orphan", "apps/plain-data", "other/istio-data"]
        );
    }

    #[test]
    fn select_by_name_missing_lists_what_exists() {
        let sel = TargetSelection {
            pvc_names: vec!["nope".into(), "orphan".into(), "apps/gone".into()],
            ..Default::default()
        };
        let err = select_targets(&scenario_rows(), &sel).unwrap_err();
        match &err {
            SelectError::NotFound { missing, available } => {
                assert_eq!(missing, &["nope", "apps/gone"]);
                assert_eq!(available.len(), 5);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("PVC not found: nope, apps/gone"), "{msg}");
        assert!(
            msg.contains("apps/orphan") && msg.contains("other/istio-data"),
            "{msg}"
        );
    }

    #[test]
    fn select_by_ambiguous_name() {
        let sel = TargetSelection {
            pvc_names: vec!["istio-data".into()],
            ..Default::default()
        };
        let err = select_targets(&scenario_rows(), &sel).unwrap_err();
        assert!(matches!(err, SelectError::Ambiguous { .. }));
        assert!(err.to_string().contains("NAMESPACE/istio-data"), "{err}");
    }

    #[test]
    fn missing_pvc_is_never_a_target() {
        let pod = with_pvc(istio_sidecar_pod("x"), "d", "ghost", false);
        let rows = extract_rows(&[pod], &[], &[], &DiscoverOptions { all_pods: true });
        let sel = TargetSelection {
            pvc_names: vec!["ghost".into()],
            ..Default::default()
        };
        assert!(matches!(
            select_targets(&rows, &sel),
            Err(SelectError::NotFound { .. })
        ));
        assert!(matches!(
            select_targets(&rows, &TargetSelection::default()),
            Err(SelectError::NothingSelected(_))
        ));
    }

    fn target(modes: &[&str], pods: &[(&str, Option<&str>, bool)]) -> Target {
        Target {
            namespace: NS.into(),
            pvc: "data".into(),
            pods: pods
                .iter()
                .map(|(n, node, active)| MountingPod {
                    name: n.to_string(),
                    node: node.map(str::to_string),
                    phase: Some(if *active { "Running" } else { "Succeeded" }.into()),
                    mesh: Some(Mesh::Istio),
                    read_only: false,
                    active: *active,
                })
                .collect(),
            access_modes: modes.iter().map(|m| AccessMode::parse(m)).collect(),
            capacity_bytes: Some(1 << 30),
            storage_class: None,
            attached_node: pods
                .iter()
                .filter(|p| p.2)
                .find_map(|p| p.1.map(str::to_string)),
        }
    }

    #[test]
    fn placement_rwo_pins_and_tolerates_taints() {
        let nodes = [
            node(
                "n1",
                &[
                    ("dedicated", Some("db"), "NoSchedule"),
                    ("node.kubernetes.io/unschedulable", None, "NoSchedule"),
                    ("maintenance", None, "NoExecute"),
                    ("soft", None, "PreferNoSchedule"),
                ],
            ),
            node("n2", &[]),
        ];
        let p = placement(
            &target(&["ReadWriteOnce"], &[("db-0", Some("n1"), true)]),
            &nodes,
        )
        .unwrap();
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert!(p.reason.contains("db-0"), "{}", p.reason);
        type Tol<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let tol: Vec<Tol> = p
            .tolerations
            .iter()
            .map(|t| {
                (
                    t.key.as_deref(),
                    t.operator.as_deref(),
                    t.value.as_deref(),
                    t.effect.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            tol,
            [
                (
                    Some("dedicated"),
                    Some("Equal"),
                    Some("db"),
                    Some("NoSchedule")
                ),
                (
                    Some("node.kubernetes.io/unschedulable"),
                    Some("Exists"),
                    None,
                    Some("NoSchedule")
                ),
                (Some("maintenance"), Some("Exists"), None, Some("NoExecute")),
            ]
        );
        assert!(p.tolerations.iter().all(|t| t.toleration_seconds.is_none()));
    }

    #[test]
    fn placement_rwo_unmounted_or_finished_is_free() {
        let p = placement(&target(&["ReadWriteOnce"], &[]), &[]).unwrap();
        assert_eq!(p.node, None);
        let p = placement(
            &target(&["ReadWriteOnce"], &[("job", Some("n1"), false)]),
            &[],
        )
        .unwrap();
        assert_eq!(p.node, None);
    }

    #[test]
    fn placement_rwx_is_free() {
        let p = placement(&target(&["ReadWriteMany"], &[("a", Some("n1"), true)]), &[]).unwrap();
        assert_eq!(p.node, None);
        assert!(p.tolerations.is_empty());
        assert!(p.reason.contains("RWX"));
        let p = placement(&target(&["ReadOnlyMany"], &[("a", Some("n1"), true)]), &[]).unwrap();
        assert_eq!(p.node, None);
    }

    #[test]
    fn placement_rwop_in_use_is_refused() {
        let err = placement(
            &target(&["ReadWriteOncePod"], &[("db-0", Some("n1"), true)]),
            &[],
        )
        .unwrap_err();
        let PlacementError::Refused(msg) = &err;
        assert!(msg.starts_with("PVC apps/data is ReadWriteOncePod and in use by pod db-0; only one pod may mount it. Scale the workload down"), "{msg}");
        // Not in use: fine.
        let p = placement(
            &target(&["ReadWriteOncePod"], &[("old", Some("n1"), false)]),
            &[],
        )
        .unwrap();
        assert_eq!(p.node, None);
        // A pending, unscheduled pod will take the single mount: refused too.
        let mut t = target(&["ReadWriteOncePod"], &[("next", None, false)]);
        t.pods[0].phase = Some("Pending".into());
        assert!(placement(&t, &[]).is_err());
    }

    #[test]
    fn placement_from_discovered_target() {
        let targets = select_targets(&scenario_rows(), &TargetSelection::default()).unwrap();
        let p = placement(&targets[0], &[node("n1", &[])]).unwrap();
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert!(p.tolerations.is_empty());
    }
}

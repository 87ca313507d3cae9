//! Server-side printing: the `meta.k8s.io/v1` `Table` the API server answers when kubectl asks
//! for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
//!
//! Sources (kubernetes/kubernetes):
//! * pkg/printers/internalversion/printers.go — the column definitions (`AddHandlers`) and the
//!   cell logic of `printPod`, `printNode`, `printPersistentVolume`, `printPersistentVolumeClaim`,
//!   `printEvent`, `printNamespace`, `printStorageClass`.
//! * pkg/printers/storage/storage.go — the server always generates tables with
//!   `GenerateOptions{Wide: true}`, so the priority-1 (`-o wide`) cells are always present and
//!   kubectl hides them itself unless `-o wide`.
//! * staging/src/k8s.io/apiserver/pkg/registry/rest/table.go — the default table (Name,
//!   Created At) for resources without a printer.
//! * staging/src/k8s.io/apiserver/pkg/endpoints/handlers/response.go `asTable` — `includeObject`
//!   handling: `Metadata` (the default) replaces each row's object with a
//!   `PartialObjectMetadata` of the table's group version, `None` drops it, `Object` keeps it.
//! * staging/src/k8s.io/apimachinery/pkg/util/duration/duration.go `HumanDuration` — ages.
//!
//! The column descriptions are the Go `SwaggerDoc()` strings, which are the same field comments
//! the OpenAPI document (and so the k8s-openapi crate's docs) carries.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::resources::ResourceDef;

/// The `includeObject` table option (`metav1.IncludeObjectPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// `includeObject=None`: rows carry no object.
    None,
    /// `includeObject=Metadata` (the default): rows carry a `PartialObjectMetadata`.
    #[default]
    Metadata,
    /// `includeObject=Object`: rows carry the full object (kubectl asks for this with `-o wide`
    /// only for some printers; `kubectl get -w` and custom columns use it too).
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter (`None`, `Metadata`, `Object`; empty means
    /// `Metadata`). Any other value is a 400 in the real server
    /// (`unrecognized includeObject value: "x"`), so this returns `None` for it.
    pub fn parse(value: &str) -> Option<IncludeObject> {
        match value {
            "None" => Some(IncludeObject::None),
            "" | "Metadata" => Some(IncludeObject::Metadata),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

const DESC_NAME: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const DESC_CREATED: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// One `TableColumnDefinition`: (name, type, format, priority, description).
type Col = (&'static str, &'static str, &'static str, u8, &'static str);

const POD_COLUMNS: &[Col] = &[
    ("Name", "string", "name", 0, DESC_NAME),
    ("Ready", "string", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
    ("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
    ("Restarts", "string", "", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    ("Age", "string", "", 0, DESC_CREATED),
    ("IP", "string", "", 1, "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
    ("Node", "string", "", 1, "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename"),
    ("Nominated Node", "string", "", 1, "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled."),
    ("Readiness Gates", "string", "", 1, "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates"),
];

const PVC_COLUMNS: &[Col] = &[
    ("Name", "string", "name", 0, DESC_NAME),
    ("Status", "string", "", 0, "phase represents the current phase of PersistentVolumeClaim."),
    ("Volume", "string", "", 0, "volumeName is the binding reference to the PersistentVolume backing this claim."),
    ("Capacity", "string", "", 0, "capacity represents the actual resources of the underlying volume."),
    ("Access Modes", "string", "", 0, "accessModes contains the actual access modes the volume backing the PVC has. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes-1"),
    ("StorageClass", "string", "", 0, "StorageClass of the pvc"),
    ("VolumeAttributesClass", "string", "", 0, "VolumeAttributesClass of the pvc"),
    ("Age", "string", "", 0, DESC_CREATED),
    ("VolumeMode", "string", "", 1, "volumeMode defines what type of volume is required by the claim. Value of Filesystem is implied when not included in claim spec."),
];

const PV_COLUMNS: &[Col] = &[
    ("Name", "string", "name", 0, DESC_NAME),
    ("Capacity", "string", "", 0, "capacity is the description of the persistent volume's resources and capacity. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#capacity"),
    ("Access Modes", "string", "", 0, "accessModes contains all ways the volume can be mounted. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes"),
    ("Reclaim Policy", "string", "", 0, "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim. Valid options are Retain (default for manually created PersistentVolumes), Delete (default for dynamically provisioned PersistentVolumes), and Recycle (deprecated). Recycle must be supported by the volume plugin underlying this PersistentVolume. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#reclaiming"),
    ("Status", "string", "", 0, "phase indicates if a volume is available, bound to a claim, or released by a claim. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#phase"),
    ("Claim", "string", "", 0, "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim. Expected to be non-nil when bound. claim.VolumeName is the authoritative bind between PV and PVC. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#binding"),
    ("StorageClass", "string", "", 0, "StorageClass of the pv"),
    ("VolumeAttributesClass", "string", "", 0, "VolumeAttributesClass of the pv"),
    ("Reason", "string", "", 0, "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI."),
    ("Age", "string", "", 0, DESC_CREATED),
    ("VolumeMode", "string", "", 1, "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state. Value of Filesystem is implied when not included in spec."),
];

const NODE_ADDRESSES_DESC: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";

const NODE_COLUMNS: &[Col] = &[
    ("Name", "string", "name", 0, DESC_NAME),
    ("Status", "string", "", 0, "The status of the node"),
    ("Roles", "string", "", 0, "The roles of the node"),
    ("Age", "string", "", 0, DESC_CREATED),
    ("Version", "string", "", 0, "Kubelet Version reported by the node."),
    ("Internal-IP", "string", "", 1, NODE_ADDRESSES_DESC),
    ("External-IP", "string", "", 1, NODE_ADDRESSES_DESC),
    ("OS-Image", "string", "", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
    ("Kernel-Version", "string", "", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    ("Container-Runtime", "string", "", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
];

const NAMESPACE_COLUMNS: &[Col] = &[
    ("Name", "string", "name", 0, DESC_NAME),
    ("Status", "string", "", 0, "The status of the namespace"),
    ("Age", "string", "", 0, DESC_CREATED),
];

const STORAGECLASS_COLUMNS: &[Col] = &[
    ("Name", "string", "name", 0, DESC_NAME),
    ("Provisioner", "string", "", 0, "provisioner indicates the type of the provisioner."),
    ("ReclaimPolicy", "string", "", 0, "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class. Defaults to Delete."),
    ("VolumeBindingMode", "string", "", 0, "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.  When unset, VolumeBindingImmediate is used. This field is only honored by servers that enable the VolumeScheduling feature."),
    ("AllowVolumeExpansion", "string", "", 0, "allowVolumeExpansion shows whether the storage class allow volume expand."),
    ("Age", "string", "", 0, DESC_CREATED),
];

const EVENT_COLUMNS: &[Col] = &[
    ("Last Seen", "string", "", 0, "The time at which the most recent occurrence of this event was recorded."),
    ("Type", "string", "", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
    ("Reason", "string", "", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    ("Object", "string", "", 0, "The object that this event is about."),
    ("Subobject", "string", "", 1, "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object."),
    ("Source", "string", "", 1, "The component reporting this event. Should be a short machine understandable string."),
    ("Message", "string", "", 0, "A human-readable description of the status of this operation."),
    ("First Seen", "string", "", 1, "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
    ("Count", "string", "", 1, "The number of times this event has occurred."),
    ("Name", "string", "name", 1, DESC_NAME),
];

/// A printer: one object's cells, with ages computed against the given clock.
type Printer = fn(&Value, DateTime<Utc>) -> Vec<Value>;

/// rest/table.go `defaultTableConvertor`: Name and an RFC 3339 "Created At".
const DEFAULT_COLUMNS: &[Col] = &[
    ("Name", "string", "name", 0, DESC_NAME),
    ("Created At", "date", "", 0, DESC_CREATED),
];

/// Builds the Table for `objects` (one object for a GET, the items for a LIST) as of now.
///
/// `metadata` is left for the caller to fill: the real server copies the list's
/// `resourceVersion`/`continue`/`remainingItemCount` (or the single object's `resourceVersion`)
/// into it (pkg/printers/tablegenerator.go `GenerateTable`).
pub fn to_table(res: &ResourceDef, objects: &[Value], include_object: IncludeObject) -> Value {
    to_table_at(res, objects, include_object, false, Utc::now())
}

/// [`to_table`] with the `noHeaders` table option (`metav1.TableOptions.NoHeaders`, which omits
/// `columnDefinitions`) and an explicit clock, for deterministic ages.
pub fn to_table_at(
    res: &ResourceDef,
    objects: &[Value],
    include_object: IncludeObject,
    no_headers: bool,
    now: DateTime<Utc>,
) -> Value {
    let (columns, printer): (&[Col], Printer) = match (res.group, res.plural) {
        ("", "pods") => (POD_COLUMNS, pod_cells),
        ("", "persistentvolumeclaims") => (PVC_COLUMNS, pvc_cells),
        ("", "persistentvolumes") => (PV_COLUMNS, pv_cells),
        ("", "nodes") => (NODE_COLUMNS, node_cells),
        ("", "namespaces") => (NAMESPACE_COLUMNS, namespace_cells),
        ("", "events") => (EVENT_COLUMNS, event_cells),
        ("storage.k8s.io", "storageclasses") => (STORAGECLASS_COLUMNS, storageclass_cells),
        _ => (DEFAULT_COLUMNS, default_cells),
    };
    let group_version = "meta.k8s.io/v1";
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(printer(obj, now)));
            // printPod marks finished pods so `kubectl get` can hide them with
            // --show-all=false (printers.go podSuccessConditions / podFailedConditions).
            if res.plural == "pods" && res.group.is_empty() {
                match str_at(obj, &["status", "phase"]) {
                    "Succeeded" => {
                        row.insert("conditions".into(), json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]));
                    }
                    "Failed" => {
                        row.insert("conditions".into(), json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]));
                    }
                    _ => {}
                }
            }
            match include_object {
                IncludeObject::None => {
                    row.insert("object".into(), Value::Null);
                }
                IncludeObject::Metadata => {
                    row.insert(
                        "object".into(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": group_version,
                            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        }),
                    );
                }
                IncludeObject::Object => {
                    row.insert("object".into(), obj.clone());
                }
            }
            Value::Object(row)
        })
        .collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": group_version,
        "metadata": {},
        "rows": rows,
    });
    if !no_headers {
        table["columnDefinitions"] = Value::Array(
            columns
                .iter()
                .map(|(name, ty, format, priority, desc)| {
                    json!({"name": name, "type": ty, "format": format, "description": desc, "priority": priority})
                })
                .collect(),
        );
    }
    table
}

// ---------------------------------------------------------------------------------------------
// Helpers over serde_json::Value

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return &Value::Null,
        }
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

fn arr_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path).as_array().map(|a| a.as_slice()).unwrap_or(&[])
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if s.is_empty() {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// printers.go `translateTimestampSince`: `<unknown>` for a zero time, else `HumanDuration`.
fn since(ts: &str, now: DateTime<Utc>) -> String {
    match parse_time(ts) {
        Some(t) => human_duration(now.signed_duration_since(t)),
        None => "<unknown>".to_string(),
    }
}

/// apimachinery/pkg/util/duration/duration.go `HumanDuration`: a succinct, rounded-down age
/// (`5s`, `3m2s`, `10m`, `5h3m`, `20h`, `2d3h`, `40d`, `2y10d`, `9y`).
pub fn human_duration(d: chrono::Duration) -> String {
    // Go's int(d.Seconds()) truncates toward zero.
    let millis = d.num_milliseconds();
    let seconds = millis / 1000;
    // "Allow deviation no more than 2 seconds(excluded) to tolerate machine time inconsistence"
    if seconds < -1 {
        return "<invalid>".to_string();
    } else if seconds < 0 {
        return "0s".to_string();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        format!("{hours}h{m}m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        format!("{}d{}h", hours / 24, h)
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        format!("{}y{}d", hours / 24 / 365, dy)
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    Value::String(since(str_at(obj, &["metadata", "creationTimestamp"]), now))
}

fn name(obj: &Value) -> Value {
    Value::String(str_at(obj, &["metadata", "name"]).to_string())
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

/// pkg/apis/core/helper/helpers.go `GetAccessModesAsString`: de-duplicated, always in the
/// order RWO,ROX,RWX,RWOP.
pub fn access_modes_string(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|v| v.as_str() == Some(m));
    let mut out = Vec::new();
    for (mode, short) in [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ] {
        if has(mode) {
            out.push(short);
        }
    }
    out.join(",")
}

// ---------------------------------------------------------------------------------------------
// Printers

fn default_cells(obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    // rest/table.go: m.GetCreationTimestamp().Time.UTC().Format(time.RFC3339); a zero time
    // formats as Go's zero time.
    let created = match parse_time(str_at(obj, &["metadata", "creationTimestamp"])) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => "0001-01-01T00:00:00Z".to_string(),
    };
    vec![name(obj), Value::String(created)]
}

fn namespace_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj),
        json!(str_at(obj, &["status", "phase"])),
        age(obj, now),
    ]
}

fn is_restartable_init_container(pod: &Value, name: &str) -> bool {
    // pkg/api/pod `IsRestartableInitContainer`: restartPolicy == Always (a native sidecar).
    arr_at(pod, &["spec", "initContainers"])
        .iter()
        .find(|c| str_at(c, &["name"]) == name)
        .map(|c| str_at(c, &["restartPolicy"]) == "Always")
        .unwrap_or(false)
}

fn has_condition(pod: &Value, ty: &str) -> bool {
    arr_at(pod, &["status", "conditions"])
        .iter()
        .any(|c| str_at(c, &["type"]) == ty && str_at(c, &["status"]) == "True")
}

/// printers.go `printPod`, line for line.
fn pod_cells(pod: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut restarts: i64 = 0;
    let mut restartable_init_restarts: i64 = 0;
    let mut total_containers = arr_at(pod, &["spec", "containers"]).len();
    let mut ready_containers = 0usize;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_restartable_init_restart: Option<DateTime<Utc>> = None;

    let phase = str_at(pod, &["status", "phase"]);
    let mut reason = phase.to_string();
    let status_reason = str_at(pod, &["status", "reason"]);
    if !status_reason.is_empty() {
        reason = status_reason.to_string();
    }
    for c in arr_at(pod, &["status", "conditions"]) {
        if str_at(c, &["type"]) == "PodScheduled" && str_at(c, &["reason"]) == "SchedulingGated" {
            reason = "SchedulingGated".to_string();
        }
    }

    let init_containers = arr_at(pod, &["spec", "initContainers"]);
    for c in init_containers {
        if str_at(c, &["restartPolicy"]) == "Always" {
            total_containers += 1;
        }
    }

    let later = |cur: Option<DateTime<Utc>>, s: &str| -> Option<DateTime<Utc>> {
        match (cur, parse_time(s)) {
            (Some(a), Some(b)) if b > a => Some(b),
            (None, Some(b)) => Some(b),
            (a, _) => a,
        }
    };

    let mut initializing = false;
    for (i, cs) in arr_at(pod, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        let cname = str_at(cs, &["name"]);
        restarts += at(cs, &["restartCount"]).as_i64().unwrap_or(0);
        let last_term = at(cs, &["lastState", "terminated"]);
        if !last_term.is_null() {
            last_restart = later(last_restart, str_at(last_term, &["finishedAt"]));
        }
        let restartable = is_restartable_init_container(pod, cname);
        if restartable {
            restartable_init_restarts += at(cs, &["restartCount"]).as_i64().unwrap_or(0);
            if !last_term.is_null() {
                last_restartable_init_restart = later(
                    last_restartable_init_restart,
                    str_at(last_term, &["finishedAt"]),
                );
            }
        }
        let terminated = at(cs, &["state", "terminated"]);
        let waiting = at(cs, &["state", "waiting"]);
        let exit_code = at(terminated, &["exitCode"]).as_i64().unwrap_or(0);
        if !terminated.is_null() && exit_code == 0 {
            continue;
        }
        if restartable && at(cs, &["started"]).as_bool() == Some(true) {
            if at(cs, &["ready"]).as_bool() == Some(true) {
                ready_containers += 1;
            }
            continue;
        }
        if !terminated.is_null() {
            let r = str_at(terminated, &["reason"]);
            if r.is_empty() {
                let signal = at(terminated, &["signal"]).as_i64().unwrap_or(0);
                reason = if signal != 0 {
                    format!("Init:Signal:{signal}")
                } else {
                    format!("Init:ExitCode:{exit_code}")
                };
            } else {
                reason = format!("Init:{r}");
            }
        } else if !waiting.is_null()
            && !str_at(waiting, &["reason"]).is_empty()
            && str_at(waiting, &["reason"]) != "PodInitializing"
        {
            reason = format!("Init:{}", str_at(waiting, &["reason"]));
        } else {
            reason = format!("Init:{}/{}", i, init_containers.len());
        }
        initializing = true;
        break;
    }

    if !initializing || has_condition(pod, "Initialized") {
        restarts = restartable_init_restarts;
        last_restart = last_restartable_init_restart;
        let mut has_running = false;
        for cs in arr_at(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += at(cs, &["restartCount"]).as_i64().unwrap_or(0);
            let last_term = at(cs, &["lastState", "terminated"]);
            if !last_term.is_null() {
                last_restart = later(last_restart, str_at(last_term, &["finishedAt"]));
            }
            let waiting = at(cs, &["state", "waiting"]);
            let terminated = at(cs, &["state", "terminated"]);
            if !waiting.is_null() && !str_at(waiting, &["reason"]).is_empty() {
                reason = str_at(waiting, &["reason"]).to_string();
            } else if !terminated.is_null() && !str_at(terminated, &["reason"]).is_empty() {
                reason = str_at(terminated, &["reason"]).to_string();
            } else if !terminated.is_null() {
                let signal = at(terminated, &["signal"]).as_i64().unwrap_or(0);
                let exit_code = at(terminated, &["exitCode"]).as_i64().unwrap_or(0);
                reason = if signal != 0 {
                    format!("Signal:{signal}")
                } else {
                    format!("ExitCode:{exit_code}")
                };
            } else if at(cs, &["ready"]).as_bool() == Some(true)
                && !at(cs, &["state", "running"]).is_null()
            {
                has_running = true;
                ready_containers += 1;
            }
        }
        // "change pod status back to "Running" if there is at least one container still
        // reporting as "Running" status"
        if reason == "Completed" && has_running {
            reason = if has_condition(pod, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    let deleting = !at(pod, &["metadata", "deletionTimestamp"]).is_null();
    if deleting && status_reason == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let mut restarts_str = restarts.to_string();
    if restarts != 0 {
        if let Some(t) = last_restart {
            restarts_str = format!(
                "{} ({} ago)",
                restarts,
                human_duration(now.signed_duration_since(t))
            );
        }
    }

    // Wide cells (always generated server-side).
    let mut pod_ip = arr_at(pod, &["status", "podIPs"])
        .first()
        .map(|p| str_at(p, &["ip"]).to_string())
        .unwrap_or_default();
    if pod_ip.is_empty() {
        pod_ip = str_at(pod, &["status", "podIP"]).to_string();
    }
    let gates = arr_at(pod, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let mut true_conditions = 0;
        for g in gates {
            let ty = str_at(g, &["conditionType"]);
            if let Some(c) = arr_at(pod, &["status", "conditions"])
                .iter()
                .find(|c| str_at(c, &["type"]) == ty)
            {
                if str_at(c, &["status"]) == "True" {
                    true_conditions += 1;
                }
            }
        }
        format!("{}/{}", true_conditions, gates.len())
    };

    vec![
        name(pod),
        json!(format!("{ready_containers}/{total_containers}")),
        json!(reason),
        json!(restarts_str),
        age(pod, now),
        json!(or_none(&pod_ip)),
        json!(or_none(str_at(pod, &["spec", "nodeName"]))),
        json!(or_none(str_at(pod, &["status", "nominatedNodeName"]))),
        json!(readiness_gates),
    ]
}

/// printers.go `printPersistentVolumeClaim`.
fn pvc_cells(pvc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut phase = str_at(pvc, &["status", "phase"]).to_string();
    if !at(pvc, &["metadata", "deletionTimestamp"]).is_null() {
        phase = "Terminating".to_string();
    }
    let volume_name = str_at(pvc, &["spec", "volumeName"]);
    let (capacity, access_modes) = if volume_name.is_empty() {
        (String::new(), String::new())
    } else {
        (
            str_at(pvc, &["status", "capacity", "storage"]).to_string(),
            access_modes_string(arr_at(pvc, &["status", "accessModes"])),
        )
    };
    vec![
        name(pvc),
        json!(phase),
        json!(volume_name),
        json!(capacity),
        json!(access_modes),
        json!(pvc_class(pvc)),
        json!(unset_or(str_opt(
            pvc,
            &["spec", "volumeAttributesClassName"]
        ))),
        age(pvc, now),
        json!(unset_or(str_opt(pvc, &["spec", "volumeMode"]))),
    ]
}

fn str_opt<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).as_str()
}

fn unset_or(v: Option<&str>) -> String {
    v.map(str::to_string)
        .unwrap_or_else(|| "<unset>".to_string())
}

/// helper.GetPersistentVolumeClaimClass: the beta annotation wins over spec.storageClassName.
fn pvc_class(pvc: &Value) -> String {
    if let Some(c) = str_opt(
        pvc,
        &[
            "metadata",
            "annotations",
            "volume.beta.kubernetes.io/storage-class",
        ],
    ) {
        return c.to_string();
    }
    str_at(pvc, &["spec", "storageClassName"]).to_string()
}

/// printers.go `printPersistentVolume`.
fn pv_cells(pv: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let claim = if at(pv, &["spec", "claimRef"]).is_null() {
        String::new()
    } else {
        format!(
            "{}/{}",
            str_at(pv, &["spec", "claimRef", "namespace"]),
            str_at(pv, &["spec", "claimRef", "name"])
        )
    };
    let mut phase = str_at(pv, &["status", "phase"]).to_string();
    if !at(pv, &["metadata", "deletionTimestamp"]).is_null() {
        phase = "Terminating".to_string();
    }
    // helper.GetPersistentVolumeClass: the beta annotation wins.
    let class = str_opt(
        pv,
        &[
            "metadata",
            "annotations",
            "volume.beta.kubernetes.io/storage-class",
        ],
    )
    .unwrap_or_else(|| str_at(pv, &["spec", "storageClassName"]));
    // aQty.String() of a missing quantity is "0".
    let capacity = str_opt(pv, &["spec", "capacity", "storage"]).unwrap_or("0");
    vec![
        name(pv),
        json!(capacity),
        json!(access_modes_string(arr_at(pv, &["spec", "accessModes"]))),
        json!(str_at(pv, &["spec", "persistentVolumeReclaimPolicy"])),
        json!(phase),
        json!(claim),
        json!(class),
        json!(unset_or(str_opt(
            pv,
            &["spec", "volumeAttributesClassName"]
        ))),
        json!(str_at(pv, &["status", "reason"])),
        age(pv, now),
        json!(unset_or(str_opt(pv, &["spec", "volumeMode"]))),
    ]
}

/// printers.go `printNode` (only the Ready condition counts; `findNodeRoles` reads
/// `node-role.kubernetes.io/<role>` and `kubernetes.io/role` labels, sorted).
fn node_cells(node: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    if let Some(c) = arr_at(node, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| str_at(c, &["type"]) == "Ready")
    {
        // conditionMap keeps the last condition of each type.
        if str_at(c, &["status"]) == "True" {
            status.push("Ready".into());
        } else {
            status.push("NotReady".into());
        }
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if at(node, &["spec", "unschedulable"]).as_bool() == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = at(node, &["metadata", "labels"]).as_object() {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let address = |ty: &str| {
        arr_at(node, &["status", "addresses"])
            .iter()
            .find(|a| str_at(a, &["type"]) == ty)
            .map(|a| str_at(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".to_string())
    };
    let unknown = |s: &str| {
        if s.is_empty() {
            "<unknown>".to_string()
        } else {
            s.to_string()
        }
    };
    vec![
        name(node),
        json!(status.join(",")),
        json!(roles),
        age(node, now),
        json!(str_at(node, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(unknown(str_at(node, &["status", "nodeInfo", "osImage"]))),
        json!(unknown(str_at(
            node,
            &["status", "nodeInfo", "kernelVersion"]
        ))),
        json!(unknown(str_at(
            node,
            &["status", "nodeInfo", "containerRuntimeVersion"]
        ))),
    ]
}

/// printers.go `printStorageClass` (storageutil.IsDefaultAnnotation checks the GA and the beta
/// `is-default-class` annotations).
fn storageclass_cells(sc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut n = str_at(sc, &["metadata", "name"]).to_string();
    let is_default = str_opt(
        sc,
        &[
            "metadata",
            "annotations",
            "storageclass.kubernetes.io/is-default-class",
        ],
    ) == Some("true")
        || str_opt(
            sc,
            &[
                "metadata",
                "annotations",
                "storageclass.beta.kubernetes.io/is-default-class",
            ],
        ) == Some("true");
    if is_default {
        n.push_str(" (default)");
    }
    let reclaim = str_opt(sc, &["reclaimPolicy"]).unwrap_or("Delete");
    let binding = str_opt(sc, &["volumeBindingMode"]).unwrap_or("Immediate");
    let expansion = at(sc, &["allowVolumeExpansion"]).as_bool().unwrap_or(false);
    vec![
        json!(n),
        json!(str_at(sc, &["provisioner"])),
        json!(reclaim),
        json!(binding),
        json!(expansion),
        age(sc, now),
    ]
}

/// printers.go `printEvent` (wide form, as the server always generates).
fn event_cells(ev: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut first = since(str_at(ev, &["firstTimestamp"]), now);
    if parse_time(str_at(ev, &["firstTimestamp"])).is_none() {
        first = since(str_at(ev, &["eventTime"]), now);
    }
    let mut last = since(str_at(ev, &["lastTimestamp"]), now);
    if parse_time(str_at(ev, &["lastTimestamp"])).is_none() {
        last = first.clone();
    }
    let mut count = at(ev, &["count"]).as_i64().unwrap_or(0);
    if !at(ev, &["series"]).is_null() {
        last = since(str_at(ev, &["series", "lastObservedTime"]), now);
        count = at(ev, &["series", "count"]).as_i64().unwrap_or(0);
    } else if count == 0 {
        // "Singleton events don't have a count set in the new API."
        count = 1;
    }
    let kind = str_at(ev, &["involvedObject", "kind"]).to_lowercase();
    let obj_name = str_at(ev, &["involvedObject", "name"]);
    let target = if obj_name.is_empty() {
        kind
    } else {
        format!("{kind}/{obj_name}")
    };
    let first_non_empty = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            a.to_string()
        }
    };
    let component = first_non_empty(
        str_at(ev, &["source", "component"]),
        str_at(ev, &["reportingComponent"]),
    );
    let host = first_non_empty(
        str_at(ev, &["source", "host"]),
        str_at(ev, &["reportingInstance"]),
    );
    let source = if host.is_empty() {
        component
    } else {
        format!("{component}, {host}")
    };
    vec![
        json!(last),
        json!(str_at(ev, &["type"])),
        json!(str_at(ev, &["reason"])),
        json!(target),
        json!(str_at(ev, &["involvedObject", "fieldPath"])),
        json!(source),
        json!(str_at(ev, &["message"]).trim()),
        json!(first),
        json!(count),
        name(ev),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::RESOURCES;

    fn res(plural: &str) -> &'static ResourceDef {
        RESOURCES.iter().find(|r| r.plural == plural).unwrap()
    }

    fn now() -> DateTime<Utc> {
        parse_time("2025-01-10T12:00:00Z").unwrap()
    }

    fn cells(plural: &str, obj: Value) -> Vec<Value> {
        let t = to_table_at(res(plural), &[obj], IncludeObject::Metadata, false, now());
        t["rows"][0]["cells"].as_array().unwrap().clone()
    }

    #[test]
    fn human_duration_matches_apimachinery() {
        let s = chrono::Duration::seconds;
        assert_eq!(human_duration(s(5)), "5s");
        assert_eq!(human_duration(s(-1)), "0s");
        assert_eq!(human_duration(s(-5)), "<invalid>");
        assert_eq!(human_duration(s(119)), "119s");
        assert_eq!(human_duration(s(182)), "3m2s");
        assert_eq!(human_duration(s(240)), "4m");
        assert_eq!(human_duration(s(600)), "10m");
        assert_eq!(human_duration(s(179 * 60)), "179m");
        assert_eq!(human_duration(s(5 * 3600 + 3 * 60)), "5h3m");
        assert_eq!(human_duration(s(20 * 3600)), "20h");
        assert_eq!(human_duration(s(51 * 3600)), "2d3h");
        assert_eq!(human_duration(s(40 * 86400)), "40d");
        assert_eq!(human_duration(s((365 * 2 + 10) * 86400)), "2y10d");
        assert_eq!(human_duration(s(365 * 9 * 86400)), "9y");
    }

    #[test]
    fn running_pod() {
        let pod = json!({
            "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2025-01-10T11:57:00Z"},
            "spec": {"containers": [{"name": "app"}, {"name": "side"}], "nodeName": "node-1"},
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}],
                "containerStatuses": [
                    {"name": "app", "ready": true, "restartCount": 2, "state": {"running": {}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2025-01-10T11:59:55Z"}}},
                    {"name": "side", "ready": true, "restartCount": 0, "state": {"running": {}}}
                ]
            }
        });
        let t = to_table_at(res("pods"), &[pod], IncludeObject::Metadata, false, now());
        let c = &t["rows"][0]["cells"];
        assert_eq!(
            c,
            &json!([
                "web",
                "2/2",
                "Running",
                "2 (5s ago)",
                "3m",
                "10.0.0.5",
                "node-1",
                "<none>",
                "<none>"
            ])
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["columnDefinitions"][3]["name"], "Restarts");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web");
        assert!(t["rows"][0].get("conditions").is_none());
    }

    #[test]
    fn pending_pod_with_image_pull_backoff() {
        let pod = json!({
            "metadata": {"name": "bad", "creationTimestamp": "2025-01-10T11:59:30Z"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "app", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}
            ]}
        });
        assert_eq!(
            cells("pods", pod),
            vec![
                json!("bad"),
                json!("0/1"),
                json!("ImagePullBackOff"),
                json!("0"),
                json!("30s"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn init_and_completed_and_native_sidecar() {
        let init = json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "app"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "b", "state": {"running": {}}}
            ]}
        });
        let c = cells("pods", init);
        assert_eq!(c[2], "Init:1/2");
        assert_eq!(c[4], "<unknown>");

        // A finished job pod whose proxy is a native sidecar still running: "Completed" is kept
        // because the app container is the only regular container and it terminated.
        let done = json!({
            "metadata": {"name": "job"},
            "spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "app"}]},
            "status": {"phase": "Succeeded",
                "conditions": [{"type": "Initialized", "status": "True"}],
                "initContainerStatuses": [{"name": "proxy", "started": true, "ready": false, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
                "containerStatuses": [{"name": "app", "ready": false, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        let t = to_table_at(res("pods"), &[done], IncludeObject::None, false, now());
        assert_eq!(t["rows"][0]["cells"][1], "0/2");
        assert_eq!(t["rows"][0]["cells"][2], "Completed");
        assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");
        assert!(t["rows"][0]["object"].is_null());

        let crash = json!({
            "metadata": {"name": "c"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "app", "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2025-01-10T11:58:00Z"}}}]}
        });
        let c = cells("pods", crash);
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "4 (2m ago)");
    }

    #[test]
    fn terminating_pod() {
        let pod = json!({
            "metadata": {"name": "old", "creationTimestamp": "2025-01-08T09:00:00Z", "deletionTimestamp": "2025-01-10T12:00:30Z"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true, "state": {"running": {}}}]}
        });
        let c = cells("pods", pod);
        assert_eq!(c[1], "1/1");
        assert_eq!(c[2], "Terminating");
        assert_eq!(c[4], "2d3h");
    }

    #[test]
    fn pvc_bound_and_pending() {
        let bound = json!({
            "metadata": {"name": "data", "creationTimestamp": "2025-01-10T11:50:00Z"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard", "volumeName": "pvc-123",
                     "volumeMode": "Filesystem", "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOncePod", "ReadWriteOnce", "ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
        });
        assert_eq!(
            cells("persistentvolumeclaims", bound),
            vec![
                json!("data"),
                json!("Bound"),
                json!("pvc-123"),
                json!("1Gi"),
                json!("RWO,RWOP"),
                json!("standard"),
                json!("<unset>"),
                json!("10m"),
                json!("Filesystem")
            ]
        );
        let pending = json!({
            "metadata": {"name": "new", "creationTimestamp": "2025-01-10T11:59:58Z"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"}
        });
        assert_eq!(
            cells("persistentvolumeclaims", pending),
            vec![
                json!("new"),
                json!("Pending"),
                json!(""),
                json!(""),
                json!(""),
                json!(""),
                json!("<unset>"),
                json!("2s"),
                json!("<unset>")
            ]
        );
    }

    #[test]
    fn pv() {
        let pv = json!({
            "metadata": {"name": "pvc-123", "creationTimestamp": "2025-01-10T06:00:00Z"},
            "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard",
                     "claimRef": {"namespace": "shop", "name": "data"}, "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"}
        });
        assert_eq!(
            cells("persistentvolumes", pv),
            vec![
                json!("pvc-123"),
                json!("5Gi"),
                json!("RWO,RWX"),
                json!("Delete"),
                json!("Bound"),
                json!("shop/data"),
                json!("standard"),
                json!("<unset>"),
                json!(""),
                json!("6h"),
                json!("Filesystem")
            ]
        );
    }

    #[test]
    fn default_storage_class() {
        let sc = json!({
            "metadata": {"name": "standard", "creationTimestamp": "2025-01-01T12:00:00Z",
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubesim.io/hostpath", "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true
        });
        assert_eq!(
            cells("storageclasses", sc),
            vec![
                json!("standard (default)"),
                json!("kubesim.io/hostpath"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(true),
                json!("9d")
            ]
        );
    }

    #[test]
    fn not_ready_node() {
        let node = json!({
            "metadata": {"name": "node-1", "creationTimestamp": "2025-01-10T11:00:00Z",
                         "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "worker"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}],
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "kubesim", "kernelVersion": "6.1", "containerRuntimeVersion": ""}}
        });
        assert_eq!(
            cells("nodes", node),
            vec![
                json!("node-1"),
                json!("NotReady,SchedulingDisabled"),
                json!("control-plane,worker"),
                json!("60m"),
                json!("v1.33.0"),
                json!("127.0.0.1"),
                json!("<none>"),
                json!("kubesim"),
                json!("6.1"),
                json!("<unknown>")
            ]
        );
        let unknown = json!({"metadata": {"name": "n"}, "status": {}});
        assert_eq!(cells("nodes", unknown)[1], "Unknown");
    }

    #[test]
    fn namespace_event_and_default() {
        let ns = json!({"metadata": {"name": "shop", "creationTimestamp": "2025-01-10T11:59:00Z"}, "status": {"phase": "Active"}});
        assert_eq!(
            cells("namespaces", ns),
            vec![json!("shop"), json!("Active"), json!("60s")]
        );

        let ev = json!({
            "metadata": {"name": "web.17f", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{app}"},
            "reason": "Pulled", "type": "Normal", "message": "  Successfully pulled image\n",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2025-01-10T11:55:00Z", "lastTimestamp": "2025-01-10T11:59:00Z", "count": 3
        });
        assert_eq!(
            cells("events", ev),
            vec![
                json!("60s"),
                json!("Normal"),
                json!("Pulled"),
                json!("pod/web"),
                json!("spec.containers{app}"),
                json!("kubelet, node-1"),
                json!("Successfully pulled image"),
                json!("5m"),
                json!(3),
                json!("web.17f")
            ]
        );

        let ssar = RESOURCES
            .iter()
            .find(|r| r.plural == "selfsubjectaccessreviews")
            .unwrap();
        let t = to_table_at(
            ssar,
            &[json!({"metadata": {"name": "x", "creationTimestamp": "2025-01-10T11:00:00Z"}})],
            IncludeObject::Object,
            true,
            now(),
        );
        assert_eq!(t["rows"][0]["cells"], json!(["x", "2025-01-10T11:00:00Z"]));
        assert!(t.get("columnDefinitions").is_none());
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "x");
        let t = to_table_at(ssar, &[], IncludeObject::Metadata, false, now());
        assert_eq!(t["columnDefinitions"][1]["type"], "date");
        assert_eq!(t["rows"], json!([]));
    }
}

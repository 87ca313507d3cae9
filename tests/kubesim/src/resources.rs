//! The resource types kubesim serves, and their discovery documents.
//!
//! Verbs, short names and categories are those `kubectl api-resources -o wide` shows on a real
//! v1.33 cluster (see kubernetes/pkg/registry/core/*/storage/storage.go `ShortNames`/`Categories`).

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDef {
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served under `<plural>/<name>/<sub>`, with their kind and verbs.
    pub subresources: &'static [(&'static str, &'static str, &'static [&'static str])],
}

const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const STATUS: (&str, &str, &[&str]) = ("status", "", &["get", "patch", "update"]);

pub const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        group: "",
        version: "v1",
        namespaced: false,
        short_names: &["ns"],
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        categories: &[],
        subresources: &[STATUS],
    },
    ResourceDef {
        plural: "nodes",
        singular: "node",
        kind: "Node",
        group: "",
        version: "v1",
        namespaced: false,
        short_names: &["no"],
        verbs: CRUD,
        categories: &[],
        subresources: &[STATUS],
    },
    ResourceDef {
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &["po"],
        verbs: CRUD,
        categories: &["all"],
        subresources: &[
            STATUS,
            ("exec", "PodExecOptions", &["create", "get"]),
            ("portforward", "PodPortForwardOptions", &["create", "get"]),
            ("log", "Pod", &["get"]),
        ],
    },
    ResourceDef {
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        kind: "PersistentVolumeClaim",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &["pvc"],
        verbs: CRUD,
        categories: &[],
        subresources: &[STATUS],
    },
    ResourceDef {
        plural: "persistentvolumes",
        singular: "persistentvolume",
        kind: "PersistentVolume",
        group: "",
        version: "v1",
        namespaced: false,
        short_names: &["pv"],
        verbs: CRUD,
        categories: &[],
        subresources: &[STATUS],
    },
    ResourceDef {
        plural: "events",
        singular: "event",
        kind: "Event",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &["ev"],
        verbs: CRUD,
        categories: &[],
        subresources: &[],
    },
    ResourceDef {
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &["sa"],
        verbs: CRUD,
        categories: &[],
        // serviceaccounts/token (TokenRequest) is what kubelet uses; kubesim's kubelet mints
        // tokens itself (see serviceaccounts.rs), so the subresource is not served.
        subresources: &[],
    },
    ResourceDef {
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &[],
        verbs: CRUD,
        categories: &[],
        subresources: &[],
    },
    // pkg/registry/batch/{job,cronjob}/storage/storage.go: `cj` for cronjobs; both in `all`.
    ResourceDef {
        plural: "jobs",
        singular: "job",
        kind: "Job",
        group: "batch",
        version: "v1",
        namespaced: true,
        short_names: &[],
        verbs: CRUD,
        categories: &["all"],
        subresources: &[STATUS],
    },
    ResourceDef {
        plural: "cronjobs",
        singular: "cronjob",
        kind: "CronJob",
        group: "batch",
        version: "v1",
        namespaced: true,
        short_names: &["cj"],
        verbs: CRUD,
        categories: &["all"],
        subresources: &[STATUS],
    },
    ResourceDef {
        plural: "roles",
        singular: "role",
        kind: "Role",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: true,
        short_names: &[],
        verbs: CRUD,
        categories: &[],
        subresources: &[],
    },
    ResourceDef {
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: true,
        short_names: &[],
        verbs: CRUD,
        categories: &[],
        subresources: &[],
    },
    ResourceDef {
        plural: "storageclasses",
        singular: "storageclass",
        kind: "StorageClass",
        group: "storage.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &["sc"],
        verbs: CRUD,
        categories: &[],
        subresources: &[],
    },
    // The external-snapshotter CRDs (client/config/crd/snapshot.storage.k8s.io_*.yaml):
    // short names, scope and the status subresource as `kubectl api-resources` shows them once
    // they are installed. Served as JSON only, like every CRD.
    ResourceDef {
        plural: "volumesnapshotclasses",
        singular: "volumesnapshotclass",
        kind: "VolumeSnapshotClass",
        group: "snapshot.storage.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &["vsclass", "vsclasses"],
        verbs: CRUD,
        categories: &[],
        subresources: &[],
    },
    ResourceDef {
        plural: "volumesnapshots",
        singular: "volumesnapshot",
        kind: "VolumeSnapshot",
        group: "snapshot.storage.k8s.io",
        version: "v1",
        namespaced: true,
        short_names: &["vs"],
        verbs: CRUD,
        categories: &[],
        subresources: &[STATUS],
    },
    ResourceDef {
        plural: "volumesnapshotcontents",
        singular: "volumesnapshotcontent",
        kind: "VolumeSnapshotContent",
        group: "snapshot.storage.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &["vsc", "vscs"],
        verbs: CRUD,
        categories: &[],
        subresources: &[STATUS],
    },
    ResourceDef {
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        group: "authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        verbs: &["create"],
        categories: &[],
        subresources: &[],
    },
    ResourceDef {
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        kind: "SelfSubjectRulesReview",
        group: "authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        verbs: &["create"],
        categories: &[],
        subresources: &[],
    },
    // `kubectl auth whoami` (GA in 1.28): pkg/registry/authentication/selfsubjectreview.
    ResourceDef {
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
        group: "authentication.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        verbs: &["create"],
        categories: &[],
        subresources: &[],
    },
];

impl ResourceDef {
    /// `pods`, `storageclasses.storage.k8s.io`: how error messages and the store name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|(s, _, _)| *s == sub)
    }
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

pub fn pods() -> &'static ResourceDef {
    find("", "v1", "pods").expect("pods are always served")
}
pub fn pvcs() -> &'static ResourceDef {
    find("", "v1", "persistentvolumeclaims").expect("pvcs are always served")
}
pub fn pvs() -> &'static ResourceDef {
    find("", "v1", "persistentvolumes").expect("pvs are always served")
}
pub fn nodes() -> &'static ResourceDef {
    find("", "v1", "nodes").expect("nodes are always served")
}
pub fn namespaces() -> &'static ResourceDef {
    find("", "v1", "namespaces").expect("namespaces are always served")
}
pub fn events() -> &'static ResourceDef {
    find("", "v1", "events").expect("events are always served")
}
pub fn storage_classes() -> &'static ResourceDef {
    find("storage.k8s.io", "v1", "storageclasses").expect("storageclasses are always served")
}

pub fn volume_snapshot_classes() -> &'static ResourceDef {
    find("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses").expect("served")
}
pub fn volume_snapshots() -> &'static ResourceDef {
    find("snapshot.storage.k8s.io", "v1", "volumesnapshots").expect("served")
}
pub fn volume_snapshot_contents() -> &'static ResourceDef {
    find("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents").expect("served")
}

pub fn service_accounts() -> &'static ResourceDef {
    find("", "v1", "serviceaccounts").expect("served")
}
pub fn secrets() -> &'static ResourceDef {
    find("", "v1", "secrets").expect("served")
}
pub fn jobs() -> &'static ResourceDef {
    find("batch", "v1", "jobs").expect("served")
}
pub fn cron_jobs() -> &'static ResourceDef {
    find("batch", "v1", "cronjobs").expect("served")
}
pub fn roles() -> &'static ResourceDef {
    find("rbac.authorization.k8s.io", "v1", "roles").expect("served")
}
pub fn role_bindings() -> &'static ResourceDef {
    find("rbac.authorization.k8s.io", "v1", "rolebindings").expect("served")
}

/// `APIResourceList` for one group/version, as `/api/v1` or `/apis/<g>/<v>` returns it.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for d in &defs {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": d.verbs,
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        for (sub, kind, verbs) in d.subresources {
            let kind = if kind.is_empty() { d.kind } else { kind };
            resources.push(json!({
                "name": format!("{}/{}", d.plural, sub),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": kind,
                "verbs": verbs,
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources }),
    )
}

pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    g.sort();
    g.dedup();
    g
}

pub fn group_doc(group: &str) -> Value {
    json!({
        "name": group,
        "versions": [{ "groupVersion": format!("{group}/v1"), "version": "v1" }],
        "preferredVersion": { "groupVersion": format!("{group}/v1"), "version": "v1" },
    })
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group_doc).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_list_has_exec_subresource() {
        let l = resource_list("", "v1").unwrap();
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods/exec"));
        assert!(names.contains(&"persistentvolumeclaims"));
    }
}

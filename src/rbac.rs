//! The permissions a backup needs in its namespace, in one table: `create`'s preflight checks
//! the rows it must have before anything is made, and `schedule create` grants its
//! ServiceAccount a Role of exactly these rows (least privilege).

use std::collections::BTreeMap;

/// Why a row is there, and what the preflight does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Checked before a backup: missing, nothing is created.
    Backup,
    /// Checked under `--snapshot`: `always` needs it, `auto` falls back to a live copy.
    Snapshot,
    /// Reads whose own failure already names the permission (listing pods and PVCs, watching a
    /// helper pod, reading its events); not asked about beforehand.
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub need: Need,
}

const fn p(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    need: Need,
) -> Permission {
    Permission {
        verb,
        group,
        resource,
        subresource,
        need,
    }
}

pub const NAMESPACED: &[Permission] = &[
    p("create", "", "pods", "", Need::Backup),
    p("get", "", "pods", "", Need::Backup),
    p("delete", "", "pods", "", Need::Backup),
    // WebSocket exec is a GET that needs `create` since Kubernetes 1.31 (KEP-4006); older API
    // servers authorize it as `get`.
    p("create", "", "pods", "exec", Need::Backup),
    p("get", "", "pods", "exec", Need::Read),
    p("get", "", "persistentvolumeclaims", "", Need::Backup),
    p("list", "", "pods", "", Need::Read),
    // Waiting for a helper pod to start or end (kube-runtime's await_condition is a watch).
    p("watch", "", "pods", "", Need::Read),
    p("list", "", "persistentvolumeclaims", "", Need::Read),
    p("list", "", "events", "", Need::Read),
    p(
        "create",
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "",
        Need::Snapshot,
    ),
    p(
        "get",
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "",
        Need::Snapshot,
    ),
    p(
        "delete",
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "",
        Need::Snapshot,
    ),
    // The run renews its snapshots' and temporary PVCs' lease (`snapshot::Leftovers::keep_alive`).
    p(
        "patch",
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "",
        Need::Snapshot,
    ),
    // Temporary PVCs of a snapshot or clone copy, and the scratch PVC of `drill` (a
    // schedule's --drill-cron runs it with this Role): create, then delete.
    p("create", "", "persistentvolumeclaims", "", Need::Snapshot),
    p("delete", "", "persistentvolumeclaims", "", Need::Snapshot),
    p("patch", "", "persistentvolumeclaims", "", Need::Snapshot),
    // `cleanup` finds the copies a killed run left by their labels.
    p(
        "list",
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "",
        Need::Read,
    ),
];

impl Permission {
    /// `pods/exec`, `volumesnapshots.snapshot.storage.k8s.io`: how messages name it.
    pub fn display(&self) -> String {
        let r = if self.subresource.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        if self.group.is_empty() {
            r
        } else {
            format!("{r}.{}", self.group)
        }
    }
}

/// One Role rule: an API group, resources and verbs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    pub group: &'static str,
    pub resources: Vec<String>,
    pub verbs: Vec<&'static str>,
}

/// The table as Role rules: one rule per (group, resource), verbs in the table's order.
pub fn role_rules() -> Vec<RoleRule> {
    let mut by: BTreeMap<(&str, String), Vec<&'static str>> = BTreeMap::new();
    for p in NAMESPACED {
        let res = if p.subresource.is_empty() {
            p.resource.to_string()
        } else {
            format!("{}/{}", p.resource, p.subresource)
        };
        let verbs = by.entry((p.group, res)).or_default();
        if !verbs.contains(&p.verb) {
            verbs.push(p.verb);
        }
    }
    by.into_iter()
        .map(|((group, res), mut verbs)| {
            verbs.sort_unstable();
            RoleRule {
                group,
                resources: vec![res],
                verbs,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_rules_cover_every_row_once() {
        let rules = role_rules();
        for p in NAMESPACED {
            let res = p.display();
            let res = res.split('.').next().unwrap_or_default();
            assert!(
                rules.iter().any(|r| r.group == p.group
                    && r.resources.iter().any(|x| x == res)
                    && r.verbs.contains(&p.verb)),
                "{p:?} is not granted"
            );
        }
        let pods = rules
            .iter()
            .find(|r| r.group.is_empty() && r.resources == ["pods"])
            .unwrap();
        assert_eq!(pods.verbs, ["create", "delete", "get", "list", "watch"]);
        assert!(!rules.iter().any(|r| r.verbs.contains(&"*")));
    }
}

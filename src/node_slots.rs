//! How many helper pods of one run may be on a node at once (`create --max-per-node`).
//!
//! A helper reads a whole volume with `tar`: its node's disk and network carry that stream.
//! `--parallel` bounds the PVCs in flight; this bounds what lands on any one node, so forty
//! volumes on one node are not read at once while two other nodes idle. Velero's node-agent
//! does the same for its data movers (per-node "loadConcurrency", default 1:
//! velero.io/docs/v1.17/node-agent-concurrency); our helpers only run `tar` (compression and
//! hashing happen in the client), hence a default of 2, so one helper's start overlaps
//! another's stream.
//!
//! A helper of a ReadWriteOnce volume must run where the volume is attached (`placement`), so
//! it waits for a slot on that node. Any other helper (ReadWriteMany, an unattached volume, a
//! snapshot's or clone's temporary claim) is left to the scheduler, which alone knows where its
//! volume can be mounted (a zonal volume, the PV's node affinity): it starts only when every node
//! it could land on has room, holds a slot on each of them while it is pending, and keeps only
//! its own once it runs. So the cap holds at every moment, whatever the scheduler picks, without
//! narrowing the helper's choice. Such a helper carries no tolerations, so the nodes it could
//! land on are the schedulable ones without NoSchedule/NoExecute taints (`eligible`). A slot is
//! given back once the helper pod is gone, not merely deleted.
//!
//! Without permission to list nodes the run does not know where a free helper may land: it is
//! counted once it runs (README).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The pure decision: the nodes whose slots a helper takes to start now, or None to wait.
/// `held`: slots taken per node; `eligible`: the nodes a free helper could land on (empty when
/// unknown); `pinned`: the node the helper must run on, if any.
pub fn grant(
    held: &BTreeMap<String, usize>,
    eligible: &[String],
    cap: usize,
    pinned: Option<&str>,
) -> Option<Vec<String>> {
    let used = |n: &str| held.get(n).copied().unwrap_or(0);
    match pinned {
        Some(node) => (used(node) < cap).then(|| vec![node.to_string()]),
        None => eligible
            .iter()
            .all(|n| used(n) < cap)
            .then(|| eligible.to_vec()),
    }
}

/// The nodes a helper without tolerations may be scheduled on: schedulable, and without
/// NoSchedule or NoExecute taints (the scheduler's NodeUnschedulable and TaintToleration
/// filters; a NotReady node carries `node.kubernetes.io/unreachable` NoSchedule).
pub fn eligible(nodes: &[k8s_openapi::api::core::v1::Node]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| {
            let spec = n.spec.as_ref();
            !spec.and_then(|s| s.unschedulable).unwrap_or(false)
                && !spec
                    .and_then(|s| s.taints.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

/// Orders work so that consecutive items run on different nodes (round robin over the nodes,
/// in order of first appearance; `None`, not known in advance, is a group of its own). With a
/// bounded `--parallel` this keeps every node busy instead of queueing on the first one.
pub fn spread_order(nodes: &[Option<String>]) -> Vec<usize> {
    let mut groups: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        match groups.iter_mut().find(|(k, _)| *k == n.as_deref()) {
            Some((_, v)) => v.push(i),
            None => groups.push((n.as_deref(), vec![i])),
        }
    }
    let mut order = Vec::with_capacity(nodes.len());
    let mut round = 0;
    while order.len() < nodes.len() {
        for (_, v) in &groups {
            if let Some(&i) = v.get(round) {
                order.push(i);
            }
        }
        round += 1;
    }
    order
}

struct State {
    cap: usize,
    eligible: Vec<String>,
    held: BTreeMap<String, usize>,
}

/// The slots of one run, shared by its targets.
#[derive(Clone)]
pub struct NodeSlots(Arc<(Mutex<State>, Notify)>);

impl NodeSlots {
    /// `eligible`: where a free helper may land ([`eligible`]; empty when unknown).
    pub fn new(cap: usize, eligible: Vec<String>) -> Self {
        NodeSlots(Arc::new((
            Mutex::new(State {
                cap: cap.max(1),
                eligible,
                held: BTreeMap::new(),
            }),
            Notify::new(),
        )))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a helper pinned to `pinned` (or a free one, for None) may start.
    pub async fn acquire(&self, pinned: Option<&str>) -> Slot {
        loop {
            let notified = self.0 .1.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the check and the wait is seen.
            notified.as_mut().enable();
            {
                let mut st = self.state();
                if let Some(hold) = grant(&st.held, &st.eligible, st.cap, pinned) {
                    for n in &hold {
                        *st.held.entry(n.clone()).or_default() += 1;
                    }
                    return Slot {
                        slots: self.clone(),
                        held: hold,
                    };
                }
            }
            notified.await;
        }
    }

    fn release(&self, nodes: &[String]) {
        if nodes.is_empty() {
            return;
        }
        let mut st = self.state();
        for n in nodes {
            if let Some(c) = st.held.get_mut(n) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    st.held.remove(n);
                }
            }
        }
        drop(st);
        self.0 .1.notify_waiters();
    }
}

/// The right to have one helper pod on the held node(s), until dropped.
pub struct Slot {
    slots: NodeSlots,
    held: Vec<String>,
}

impl Slot {
    /// The helper runs on `node`: keep that node's slot, give back the others.
    pub fn landed(&mut self, node: Option<&str>) {
        let Some(node) = node else { return };
        let others: Vec<String> = self.held.iter().filter(|n| *n != node).cloned().collect();
        if !self.held.iter().any(|n| n == node) {
            // Not held in advance (node list unknown, or a node that joined since): count it.
            *self.slots.state().held.entry(node.to_string()).or_default() += 1;
        }
        self.held = vec![node.to_string()];
        self.slots.release(&others);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(&std::mem::take(&mut self.held));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_pinned_helper_waits_only_for_its_own_node() {
        let nodes = names(&["a", "b"]);
        let h = held(&[("a", 2)]);
        assert_eq!(grant(&h, &nodes, 2, Some("a")), None);
        assert_eq!(grant(&h, &nodes, 2, Some("b")), Some(names(&["b"])));
        // A node no free helper could use (tainted) is still capped for pinned ones.
        assert_eq!(grant(&held(&[("t", 2)]), &nodes, 2, Some("t")), None);
    }

    #[test]
    fn a_free_helper_starts_when_every_node_it_may_land_on_has_room() {
        let nodes = names(&["a", "b", "c"]);
        assert_eq!(
            grant(&held(&[("a", 1), ("b", 1)]), &nodes, 2, None),
            Some(names(&["a", "b", "c"]))
        );
        assert_eq!(
            grant(&held(&[("a", 2), ("b", 1)]), &nodes, 2, None),
            None,
            "it might land on a"
        );
        assert_eq!(
            grant(&held(&[("t", 9)]), &nodes, 2, None),
            Some(nodes.clone()),
            "a node it cannot land on does not matter"
        );
        assert_eq!(
            grant(&held(&[("a", 5)]), &[], 2, None),
            Some(vec![]),
            "nodes unknown: counted once it runs"
        );
    }

    #[test]
    fn tainted_and_cordoned_nodes_are_not_eligible() {
        let node = |name: &str, spec: serde_json::Value| -> k8s_openapi::api::core::v1::Node {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
                .unwrap()
        };
        let nodes = vec![
            node("plain", serde_json::json!({})),
            node("cordoned", serde_json::json!({"unschedulable": true})),
            node(
                "db",
                serde_json::json!({"taints": [{"key": "workload", "value": "db", "effect": "NoSchedule"}]}),
            ),
            node(
                "gone",
                serde_json::json!({"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}),
            ),
            node(
                "soft",
                serde_json::json!({"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}),
            ),
        ];
        assert_eq!(eligible(&nodes), names(&["plain", "soft"]));
    }

    #[tokio::test]
    async fn the_cap_holds_while_a_free_helper_is_pending_and_after_it_lands() {
        let slots = NodeSlots::new(1, names(&["a", "b"]));
        let mut free = slots.acquire(None).await;
        // Pending, it may land on either node: a helper pinned to a waits.
        let pinned = slots.acquire(Some("a"));
        tokio::pin!(pinned);
        assert!(
            futures::poll!(pinned.as_mut()).is_pending(),
            "a is held by the pending helper"
        );
        free.landed(Some("b"));
        let a = pinned.await;
        // Both nodes full now: another free helper waits for both to have room.
        let next = slots.acquire(None);
        tokio::pin!(next);
        assert!(futures::poll!(next.as_mut()).is_pending());
        drop(a);
        assert!(
            futures::poll!(next.as_mut()).is_pending(),
            "b is still full"
        );
        drop(free);
        let next = next.await;
        drop(next);
        assert!(slots.state().held.is_empty(), "every slot given back");
    }

    #[test]
    fn spread_order_takes_one_node_at_a_time() {
        let n = |s: &str| Some(s.to_string());
        let order = spread_order(&[n("a"), n("a"), n("a"), n("b"), None, n("b"), n("c")]);
        assert_eq!(order, vec![0, 3, 4, 6, 1, 5, 2]);
        assert_eq!(spread_order(&[]), Vec::<usize>::new());
    }
}

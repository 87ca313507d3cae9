//! The shared state of one simulated cluster: the store, authentication, faults, and the
//! recorder that writes Events the way kubelet and controllers do.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::auth::Authenticator;
use crate::faults::Faults;
use crate::resources;
use crate::store::{now_rfc3339, Store};

pub const SERVER_VERSION: (&str, &str, &str) = ("1", "33", "v1.33.1");

pub struct Sim {
    pub store: Store,
    pub auth: Authenticator,
    pub faults: Faults,
    pub state_dir: PathBuf,
    pub server_url: OnceLock<String>,
    /// Wakes the controllers after a change they should react to without waiting for a tick.
    pub kick: Notify,
    pub runtime: crate::kubelet::Runtime,
    /// `snapshot.storage.k8s.io` is served (the external-snapshotter's CRDs are installed).
    pub snapshot_api: bool,
    /// The cluster CA, as pods see it in their service-account `ca.crt`.
    pub ca_pem: OnceLock<String>,
    /// Images that run a host binary instead of busybox (`ClusterOptions::image_binaries`).
    pub image_binaries: Vec<(String, PathBuf)>,
}

pub type SimRef = Arc<Sim>;

impl Sim {
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }

    /// Records an Event about `obj`, merging repeats into `count` like the event correlator in
    /// staging/src/k8s.io/client-go/tools/record/events_cache.go.
    pub fn record(&self, obj: &Value, type_: &str, reason: &str, message: &str, component: &str) {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
        let events = resources::events();
        let now = now_rfc3339();
        let existing = self.store.list_where(events, Some(ns), |e| {
            e["involvedObject"]["uid"] == uid && e["reason"] == reason && e["message"] == message
        });
        if let Some(e) = existing.first() {
            let ename = e["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let _ = self.store.update(events, Some(ns), &ename, |e| {
                let c = e["count"].as_i64().unwrap_or(1);
                e["count"] = json!(c + 1);
                e["lastTimestamp"] = json!(now);
                Ok(())
            });
            return;
        }
        let suffix: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
        let ev = json!({
            "metadata": { "name": format!("{name}.{suffix:x}"), "namespace": ns },
            "involvedObject": {
                "kind": kind,
                "namespace": obj["metadata"]["namespace"],
                "name": name,
                "uid": uid,
                "apiVersion": obj["apiVersion"],
                "resourceVersion": obj["metadata"]["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "source": { "component": component },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": null,
            "reportingComponent": component,
            "reportingInstance": "",
        });
        let _ = self.store.create(events, Some(ns), ev);
    }
}

//! The object store: every API object as JSON, one global resourceVersion counter (etcd's
//! revision), and a bounded event history so watches can resume from a resourceVersion.
//!
//! Like etcd-backed storage, a watch from a resourceVersion older than the retained history gets
//! 410 Gone `too old resource version` (staging/src/k8s.io/apiserver/pkg/storage/cacher).
//!
//! Objects are kept behind `Arc`s, so a list is a vector of pointers taken under the lock, not
//! a deep copy of every object: with thousands of pods the control loops (several passes a
//! second) and the API's lists would otherwise spend their time copying JSON trees. A paged
//! list keeps its snapshot (see [`Store::keep_snapshot`]) the way etcd keeps old revisions
//! until the API server compacts them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::errors::{ApiError, ApiResult};
use crate::resources::ResourceDef;

const HISTORY: usize = 20_000;

/// How long the snapshot behind a continue token is kept: the API server compacts etcd every
/// 5 minutes (`--etcd-compaction-interval`, default 5m), after which continuing the list gets
/// 410 Expired.
pub const SNAPSHOT_RETENTION: Duration = Duration::from_secs(300);

/// At most this many paged-list snapshots are kept at once (the oldest go first), so a client
/// that starts paged lists in a loop cannot grow the store without bound.
const SNAPSHOTS_KEPT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: EventType,
    pub resource: String,
    pub namespace: Option<String>,
    pub object: Value,
}

type Key = (String, String, String);

/// Past events to replay, and the receiver for what follows.
pub type WatchStart = (Vec<Arc<WatchEvent>>, broadcast::Receiver<Arc<WatchEvent>>);

/// The objects of one resource (in one namespace, or all) at one resourceVersion, in etcd's
/// key order: `<namespace>/<name>` for a list across namespaces, `<name>` within one (the
/// key below `/registry/<resource>/`, compared as bytes, so `a-b/x` sorts before `a/x` as in
/// etcd). What a paged list reads its pages from.
#[derive(Clone)]
pub struct Snapshot {
    pub rv: u64,
    pub items: Arc<Vec<(String, Arc<Value>)>>,
}

/// Which list a snapshot answers: resource, namespace (None: all), resourceVersion.
type SnapshotKey = (String, Option<String>, u64);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<WatchEvent>>,
    snapshots: HashMap<SnapshotKey, (Instant, Snapshot)>,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

fn key(res: &ResourceDef, ns: Option<&str>, name: &str) -> Key {
    (
        res.qualified(),
        ns.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                snapshots: HashMap::new(),
            }),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(
        &self,
        inner: &mut Inner,
        kind: EventType,
        res: &ResourceDef,
        ns: Option<&str>,
        obj: &Value,
    ) {
        let ev = Arc::new(WatchEvent {
            rv: inner.rv,
            kind,
            resource: res.qualified(),
            namespace: ns.map(str::to_string),
            object: obj.clone(),
        });
        if inner.history.len() >= HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Stores a new object: assigns uid, creationTimestamp, resourceVersion, generation.
    pub fn create(&self, res: &ResourceDef, ns: Option<&str>, mut obj: Value) -> ApiResult<Value> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut inner = self.lock();
        let k = key(res, ns, &name);
        if inner.objects.contains_key(&k) {
            return Err(ApiError::already_exists(&res.qualified(), &name));
        }
        inner.rv += 1;
        let rv = inner.rv;
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        let md = &mut obj["metadata"];
        if let Some(ns) = ns {
            md["namespace"] = json!(ns);
        }
        if md.get("uid").and_then(Value::as_str).is_none() {
            md["uid"] = json!(new_uid());
        }
        md["creationTimestamp"] = json!(now_rfc3339());
        md["resourceVersion"] = json!(rv.to_string());
        md["generation"] = json!(1);
        inner.objects.insert(k, Arc::new(obj.clone()));
        self.emit(&mut inner, EventType::Added, res, ns, &obj);
        Ok(obj)
    }

    pub fn get(&self, res: &ResourceDef, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        self.try_get(res, ns, name)
            .ok_or_else(|| ApiError::not_found(&res.qualified(), name))
    }

    pub fn try_get(&self, res: &ResourceDef, ns: Option<&str>, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&key(res, ns, name))
            .map(|v| Value::clone(v))
    }

    /// The stored objects of a resource (in one namespace, or all), visited in key order
    /// without copying them: a range of the map, not a scan of every object of every kind.
    fn each<'a>(
        inner: &'a Inner,
        q: &'a str,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Value>> + 'a {
        let from = (
            q.to_string(),
            ns.unwrap_or_default().to_string(),
            String::new(),
        );
        inner
            .objects
            .range(from..)
            .take_while(move |((r, n, _), _)| r == q && ns.is_none_or(|ns| n == ns))
            .map(|(_, v)| v)
    }

    /// Every object of a resource (in one namespace, or all), and the list's resourceVersion.
    pub fn list(&self, res: &ResourceDef, ns: Option<&str>) -> (Vec<Value>, u64) {
        let (items, rv) = self.list_shared(res, ns);
        (items.iter().map(|v| Value::clone(v)).collect(), rv)
    }

    /// [`Store::list`] without copying the objects: for readers that only look.
    pub fn list_shared(&self, res: &ResourceDef, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let q = res.qualified();
        (Self::each(&inner, &q, ns).cloned().collect(), inner.rv)
    }

    /// The objects of a resource that `keep` selects, cloning only those: the control loops
    /// run on every change, and a cluster with thousands of pods must not copy all of them
    /// each time to find the few that need work.
    pub fn list_where(
        &self,
        res: &ResourceDef,
        ns: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let inner = self.lock();
        let q = res.qualified();
        Self::each(&inner, &q, ns)
            .filter(|v| keep(v))
            .map(|v| Value::clone(v))
            .collect()
    }

    /// The objects of a resource now, in etcd key order, for a list (paged or not).
    pub fn snapshot(&self, res: &ResourceDef, ns: Option<&str>) -> Snapshot {
        let (items, rv) = self.list_shared(res, ns);
        let mut items: Vec<(String, Arc<Value>)> = items
            .into_iter()
            .map(|v| {
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let k = match (ns, v["metadata"]["namespace"].as_str()) {
                    (None, Some(n)) if res.namespaced => format!("{n}/{name}"),
                    _ => name.to_string(),
                };
                (k, v)
            })
            .collect();
        items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Snapshot {
            rv,
            items: Arc::new(items),
        }
    }

    /// Keeps a snapshot so that the pages after the first read the same state (a consistent
    /// list), for [`SNAPSHOT_RETENTION`].
    pub fn keep_snapshot(&self, res: &ResourceDef, ns: Option<&str>, snap: &Snapshot) {
        let mut inner = self.lock();
        let now = Instant::now();
        inner
            .snapshots
            .retain(|_, (at, _)| now.duration_since(*at) < SNAPSHOT_RETENTION);
        let k = (res.qualified(), ns.map(str::to_string), snap.rv);
        inner.snapshots.entry(k).or_insert((now, snap.clone()));
        while inner.snapshots.len() > SNAPSHOTS_KEPT {
            let oldest = inner
                .snapshots
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => inner.snapshots.remove(&k),
                None => break,
            };
        }
    }

    /// The snapshot a continue token points to, if it is still kept.
    pub fn kept_snapshot(&self, res: &ResourceDef, ns: Option<&str>, rv: u64) -> Option<Snapshot> {
        let inner = self.lock();
        let k = (res.qualified(), ns.map(str::to_string), rv);
        inner
            .snapshots
            .get(&k)
            .filter(|(at, _)| at.elapsed() < SNAPSHOT_RETENTION)
            .map(|(_, s)| s.clone())
    }

    /// Mutates an object in place. The closure may refuse with an error; an unchanged object
    /// produces no event and keeps its resourceVersion, like a no-op update in the real server.
    pub fn update<F>(
        &self,
        res: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        f: F,
    ) -> ApiResult<Value>
    where
        F: FnOnce(&mut Value) -> ApiResult<()>,
    {
        let mut inner = self.lock();
        let k = key(res, ns, name);
        let current = inner
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
        let mut next = Value::clone(&current);
        f(&mut next)?;
        // Identity fields are not the caller's to change.
        next["metadata"]["name"] = current["metadata"]["name"].clone();
        next["metadata"]["uid"] = current["metadata"]["uid"].clone();
        next["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if next == *current {
            return Ok(Value::clone(&current));
        }
        if next["spec"] != current["spec"] {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
            next["metadata"]["generation"] = json!(g + 1);
        }
        inner.rv += 1;
        next["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        inner.objects.insert(k, Arc::new(next.clone()));
        self.emit(&mut inner, EventType::Modified, res, ns, &next);
        Ok(next)
    }

    /// Removes an object now (after any graceful-deletion dance the caller did).
    pub fn remove(&self, res: &ResourceDef, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let mut inner = self.lock();
        let mut obj = inner
            .objects
            .remove(&key(res, ns, name))
            .map(Arc::unwrap_or_clone)
            .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        self.emit(&mut inner, EventType::Deleted, res, ns, &obj);
        Ok(obj)
    }

    /// Events after `rv` from the history, plus a receiver for what comes next. Both are taken
    /// under one lock so nothing falls between them.
    pub fn watch_from(&self, rv: Option<u64>) -> ApiResult<WatchStart> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let Some(rv) = rv else {
            return Ok((Vec::new(), rx));
        };
        if let Some(oldest) = inner.history.front() {
            if rv + 1 < oldest.rv && rv < inner.rv {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    oldest.rv
                )));
            }
        }
        let past = inner
            .history
            .iter()
            .filter(|e| e.rv > rv)
            .cloned()
            .collect();
        Ok((past, rx))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn create_get_update_remove_and_watch_history() {
        let s = Store::new();
        let pods = resources::pods();
        let start = s.current_rv();
        s.create(
            pods,
            Some("a"),
            json!({"metadata": {"name": "p"}, "spec": {}}),
        )
        .unwrap();
        assert_eq!(
            s.create(pods, Some("a"), json!({"metadata": {"name": "p"}}))
                .unwrap_err()
                .code,
            409
        );
        let u = s.update(pods, Some("a"), "p", |o| {
            o["metadata"]["labels"] = json!({"x": "y"});
            Ok(())
        });
        assert_eq!(u.unwrap()["metadata"]["labels"]["x"], "y");
        s.remove(pods, Some("a"), "p").unwrap();
        assert_eq!(s.get(pods, Some("a"), "p").unwrap_err().code, 404);
        let (past, _) = s.watch_from(Some(start)).unwrap();
        let kinds: Vec<_> = past.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![EventType::Added, EventType::Modified, EventType::Deleted]
        );
    }
}

//! The deterministic demo scenario: the API objects a user would `kubectl apply` to get a
//! realistic multi-mesh cluster, and the contents of every demo volume.
//!
//! Everything here is a pure function of its inputs. Volume contents come from a PRNG seeded by
//! `namespace/pvc/path`, and every inode gets a fixed mode, owner and mtime, so two runs produce
//! byte-identical trees and therefore byte-identical (reproducible) backup archives. Seeding per
//! *file* rather than per volume means adding a file to a profile later does not shift the bytes
//! of every file after it, which keeps golden checksums stable.
//!
//! The shapes are chosen to exercise what breaks naive backup tools: hundreds of small files, a
//! few multi-MiB files (some compressible, some not), deep nesting, relative symlinks (to files,
//! to directories, and through `..`), hard links, empty directories and empty files, non-root
//! owners with mode 0600, names with spaces, unicode and more than 100 bytes (the ustar name
//! field limit), and an executable script.

use std::collections::BTreeMap;
use std::fs::{self, File, FileTimes};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What [`populate_volume`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeStats {
    /// Distinct regular files (inodes): a hard link to an already written file is not counted
    /// again, because it costs no space and a correct backup stores it once.
    pub files: u64,
    /// Sum of the sizes of those distinct regular files.
    pub bytes: u64,
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// All demo timestamps are offsets from this instant (2024-06-01T12:00:00Z), so archives built
/// from the demo never embed "now".
const EPOCH_SECS: u64 = 1_717_243_200;

/// Image for every demo container; the kubesim sandbox provides a busybox userland.
const IMAGE: &str = "busybox:1.36";

/// Keeps the container alive until it is stopped, and exits 0 promptly on SIGTERM so pod
/// deletion (e.g. a quiesce-before-backup step) does not have to wait for the grace period.
const KEEP_RUNNING: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

// ---------------------------------------------------------------------------------------------
// API objects
// ---------------------------------------------------------------------------------------------

/// One PVC of the demo and the pods that mount it.
struct DemoClaim {
    namespace: &'static str,
    name: &'static str,
    access_mode: &'static str,
    size: &'static str,
    /// `None` leaves `storageClassName` unset so the server's default-class admission runs.
    storage_class: Option<&'static str>,
    labels: &'static [(&'static str, &'static str)],
}

const CLAIMS: &[DemoClaim] = &[
    DemoClaim {
        namespace: "shop",
        name: "data-orders-db-0",
        access_mode: "ReadWriteOnce",
        size: "256Mi",
        storage_class: None,
        labels: &[("app", "orders-db"), ("tier", "database")],
    },
    DemoClaim {
        namespace: "shop",
        name: "media",
        access_mode: "ReadWriteMany",
        size: "256Mi",
        storage_class: Some("standard"),
        labels: &[("app", "storefront"), ("tier", "web")],
    },
    DemoClaim {
        namespace: "shop",
        name: "scratch-unattached",
        access_mode: "ReadWriteOnce",
        size: "32Mi",
        storage_class: None,
        labels: &[("app", "scratch"), ("tier", "tmp")],
    },
    DemoClaim {
        namespace: "payments",
        name: "ledger-data",
        access_mode: "ReadWriteOnce",
        size: "64Mi",
        storage_class: None,
        labels: &[("app", "ledger"), ("tier", "database")],
    },
    DemoClaim {
        namespace: "payments",
        name: "keys",
        access_mode: "ReadWriteOncePod",
        size: "16Mi",
        storage_class: Some("standard"),
        labels: &[("app", "vault"), ("tier", "secrets")],
    },
    DemoClaim {
        namespace: "inventory",
        name: "stock-db",
        access_mode: "ReadWriteOnce",
        size: "64Mi",
        storage_class: None,
        labels: &[("app", "stock-db"), ("tier", "database")],
    },
    DemoClaim {
        namespace: "edge",
        name: "cache",
        access_mode: "ReadWriteOnce",
        size: "32Mi",
        storage_class: None,
        labels: &[("app", "edge-cache"), ("tier", "cache")],
    },
    DemoClaim {
        namespace: "batch",
        name: "reports",
        access_mode: "ReadWriteOnce",
        size: "64Mi",
        // WaitForFirstConsumer: the volume is only provisioned once report-writer is scheduled,
        // which exercises the "PVC Pending until a pod uses it" path.
        storage_class: Some("local-wait"),
        labels: &[("app", "report-writer"), ("tier", "batch")],
    },
    DemoClaim {
        namespace: "ambient",
        name: "events",
        access_mode: "ReadWriteOnce",
        size: "32Mi",
        storage_class: None,
        labels: &[("app", "events"), ("tier", "database")],
    },
];

/// A demo pod: `(claim, mountPath, readOnly)` mounts, all in the pod's namespace.
struct DemoPod {
    namespace: &'static str,
    name: &'static str,
    container: &'static str,
    labels: &'static [(&'static str, &'static str)],
    annotations: &'static [(&'static str, &'static str)],
    mounts: &'static [(&'static str, &'static str, bool)],
}

const PODS: &[DemoPod] = &[
    DemoPod {
        namespace: "shop",
        name: "orders-db-0",
        container: "db",
        labels: &[("app", "orders-db"), ("tier", "database")],
        annotations: &[],
        mounts: &[("data-orders-db-0", "/var/lib/db", false)],
    },
    DemoPod {
        namespace: "shop",
        name: "storefront-a",
        container: "web",
        labels: &[("app", "storefront"), ("tier", "web")],
        annotations: &[],
        mounts: &[("media", "/srv/media", false)],
    },
    // The second consumer of the RWX claim mounts it read-only, so a backup helper has to cope
    // with a claim that is attached both read-write and read-only at once.
    DemoPod {
        namespace: "shop",
        name: "storefront-b",
        container: "web",
        labels: &[("app", "storefront"), ("tier", "web")],
        annotations: &[],
        mounts: &[("media", "/srv/media", true)],
    },
    DemoPod {
        namespace: "payments",
        name: "ledger-0",
        container: "ledger",
        labels: &[("app", "ledger"), ("tier", "database")],
        annotations: &[],
        mounts: &[("ledger-data", "/var/lib/ledger", false)],
    },
    // Linkerd's native-sidecar form puts the proxy in initContainers with restartPolicy Always
    // instead of in containers; this pod also holds the ReadWriteOncePod claim, the one a backup
    // can never attach a second pod to.
    DemoPod {
        namespace: "payments",
        name: "vault-0",
        container: "vault",
        labels: &[("app", "vault"), ("tier", "secrets")],
        annotations: &[(
            "config.alpha.linkerd.io/proxy-enable-native-sidecar",
            "true",
        )],
        mounts: &[("keys", "/vault/keys", false)],
    },
    DemoPod {
        namespace: "inventory",
        name: "stock-db-0",
        container: "db",
        labels: &[("app", "stock-db"), ("tier", "database")],
        annotations: &[],
        mounts: &[("stock-db", "/var/lib/db", false)],
    },
    DemoPod {
        namespace: "edge",
        name: "edge-cache-0",
        container: "cache",
        labels: &[("app", "edge-cache"), ("tier", "cache")],
        annotations: &[],
        mounts: &[("cache", "/var/cache/edge", false)],
    },
    DemoPod {
        namespace: "batch",
        name: "report-writer",
        container: "writer",
        labels: &[("app", "report-writer"), ("tier", "batch")],
        annotations: &[],
        mounts: &[("reports", "/reports", false)],
    },
    DemoPod {
        namespace: "ambient",
        name: "events-0",
        container: "events",
        labels: &[("app", "events"), ("tier", "database")],
        annotations: &[],
        mounts: &[("events", "/var/lib/events", false)],
    },
];

fn string_map(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect(),
    )
}

fn storage_class(name: &str, binding_mode: &str, default: bool) -> Value {
    let mut metadata = json!({ "name": name });
    if default {
        metadata["annotations"] = json!({ "storageclass.kubernetes.io/is-default-class": "true" });
    }
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": metadata,
        "provisioner": "hostpath.csi.kubesim.dev",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": binding_mode,
        "allowVolumeExpansion": true,
    })
}

fn namespace(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
    let mut metadata = json!({ "name": name });
    if !labels.is_empty() {
        metadata["labels"] = string_map(labels);
    }
    if !annotations.is_empty() {
        metadata["annotations"] = string_map(annotations);
    }
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": metadata })
}

fn claim_object(c: &DemoClaim) -> Value {
    let mut spec = json!({
        "accessModes": [c.access_mode],
        "resources": { "requests": { "storage": c.size } },
    });
    if let Some(class) = c.storage_class {
        spec["storageClassName"] = json!(class);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": c.name, "namespace": c.namespace, "labels": string_map(c.labels) },
        "spec": spec,
    })
}

fn pod_object(p: &DemoPod) -> Value {
    let mut metadata =
        json!({ "name": p.name, "namespace": p.namespace, "labels": string_map(p.labels) });
    if !p.annotations.is_empty() {
        metadata["annotations"] = string_map(p.annotations);
    }
    let volumes: Vec<Value> = p
        .mounts
        .iter()
        .enumerate()
        .map(|(i, (claim, _, read_only))| {
            let mut source = json!({ "claimName": claim });
            if *read_only {
                source["readOnly"] = json!(true);
            }
            json!({ "name": format!("data-{i}"), "persistentVolumeClaim": source })
        })
        .collect();
    let mounts: Vec<Value> = p
        .mounts
        .iter()
        .enumerate()
        .map(|(i, (_, path, read_only))| {
            let mut m = json!({ "name": format!("data-{i}"), "mountPath": path });
            if *read_only {
                m["readOnly"] = json!(true);
            }
            m
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [{
                "name": p.container,
                "image": IMAGE,
                "command": ["sh", "-c", KEEP_RUNNING],
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    })
}

/// The demo's API objects in creation order: storage classes, namespaces, claims, then pods (so
/// every claim exists before a pod references it). Nodes are created by the caller.
pub fn demo_objects() -> Vec<Value> {
    let mut objects = vec![
        storage_class("standard", "Immediate", true),
        storage_class("local-wait", "WaitForFirstConsumer", false),
        namespace("shop", &[("istio-injection", "enabled")], &[]),
        namespace("payments", &[], &[("linkerd.io/inject", "enabled")]),
        namespace(
            "inventory",
            &[("consul.hashicorp.com/connect-inject", "true")],
            &[],
        ),
        namespace("edge", &[("kuma.io/sidecar-injection", "enabled")], &[]),
        namespace("batch", &[], &[]),
        namespace("ambient", &[("istio.io/dataplane-mode", "ambient")], &[]),
    ];
    objects.extend(CLAIMS.iter().map(claim_object));
    objects.extend(PODS.iter().map(pod_object));
    objects
}

/// Namespaces of the scale fleet ([`fleet_objects`]).
pub const FLEET_NAMESPACES: usize = 50;

/// A fleet for scale tests on hollow nodes: `pods` pods spread over [`FLEET_NAMESPACES`]
/// namespaces `team-00` …, where namespaces 0–2 of every 5 are Istio-injected (label), the 4th
/// Linkerd-injected (annotation) and the 5th plain; every 5th pod (`app-000`, `app-005`, …)
/// mounts its own 1Mi ReadWriteOnce claim `data-<pod>`. Pods select hollow nodes
/// (`kubesim.dev/hollow=true`), so the cluster needs some (`ClusterOptions::hollow_nodes`).
/// Objects in creation order, like [`demo_objects`].
pub fn fleet_objects(pods: usize) -> Vec<Value> {
    let mut objects = vec![storage_class("standard", "Immediate", true)];
    let per_ns = pods.div_ceil(FLEET_NAMESPACES);
    let mut left = pods;
    for n in 0..FLEET_NAMESPACES {
        let ns = format!("team-{n:02}");
        objects.push(match n % 5 {
            0..=2 => namespace(&ns, &[("istio-injection", "enabled")], &[]),
            3 => namespace(&ns, &[], &[("linkerd.io/inject", "enabled")]),
            _ => namespace(&ns, &[], &[]),
        });
        for i in 0..per_ns.min(left) {
            let name = format!("app-{i:03}");
            let mut spec = json!({
                "nodeSelector": {crate::hollow::LABEL: "true"},
                "containers": [{"name": "app", "image": IMAGE, "command": ["sh", "-c", KEEP_RUNNING]}],
            });
            if i % 5 == 0 {
                let claim = format!("data-{name}");
                objects.push(json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": ns},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
                }));
                spec["volumes"] =
                    json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
                spec["containers"][0]["volumeMounts"] =
                    json!([{"name": "data", "mountPath": "/data"}]);
            }
            objects.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
                "spec": spec,
            }));
        }
        left -= per_ns.min(left);
    }
    objects
}

/// `(namespace, pvc)` of every demo claim, in creation order.
pub fn volume_names() -> Vec<(String, String)> {
    CLAIMS
        .iter()
        .map(|c| (c.namespace.to_string(), c.name.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------------

/// SplitMix64. Hand-rolled rather than `rand::StdRng` because StdRng's algorithm may change
/// between rand releases, which would silently change every golden checksum.
struct Rng(u64);

impl Rng {
    fn for_key(key: &str) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&digest[..8]);
        Rng(u64::from_le_bytes(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough integer in `lo..=hi` (modulo bias is irrelevant here).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() - 1)]
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.fill(&mut buf);
        buf
    }
}

// ---------------------------------------------------------------------------------------------
// Content generators
// ---------------------------------------------------------------------------------------------

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
];
const STATUSES: &[&str] = &[
    "pending",
    "paid",
    "shipped",
    "delivered",
    "refunded",
    "cancelled",
];

/// An ISO-8601 timestamp `offset` seconds after the demo epoch, for text content.
fn timestamp(offset: u64) -> String {
    chrono::DateTime::from_timestamp((EPOCH_SECS + offset) as i64, 0)
        .expect("demo timestamps are in range")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// One line of text in the style suggested by `ext`; text is what makes a volume compressible.
fn text_line(rng: &mut Rng, ext: &str, n: u64) -> String {
    match ext {
        "csv" => format!(
            "{n},{},{},{}.{:02},{}\n",
            rng.pick(WORDS),
            rng.range(1, 99),
            rng.range(1, 999),
            rng.range(0, 99),
            rng.pick(STATUSES)
        ),
        "json" | "jsonl" => format!(
            "{{\"id\":{n},\"customer\":\"{}-{}\",\"sku\":\"SKU-{:05}\",\"qty\":{},\
             \"price_cents\":{},\"status\":\"{}\",\"created_at\":\"{}\"}}\n",
            rng.pick(WORDS),
            rng.range(1, 9999),
            rng.range(0, 99_999),
            rng.range(1, 20),
            rng.range(99, 99_999),
            rng.pick(STATUSES),
            timestamp(n * 13)
        ),
        "pem" => {
            // Base64-looking line: high entropy, but restricted alphabet like real key material.
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut line: String = (0..64).map(|_| *rng.pick(B64) as char).collect();
            line.push('\n');
            line
        }
        _ => format!(
            "{} level={} txn={:016x} msg=\"{} {} {}\"\n",
            timestamp(n * 7),
            rng.pick(&["info", "info", "info", "warn", "debug"]),
            rng.next_u64(),
            rng.pick(WORDS),
            rng.pick(WORDS),
            rng.pick(STATUSES)
        ),
    }
}

/// Text of exactly `len` bytes: whole lines, then the last line cut short with a newline so
/// sizes are exact (tests and docs can quote them).
fn text_bytes(rng: &mut Rng, ext: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let mut n = 0;
    while out.len() < len {
        out.extend_from_slice(text_line(rng, ext, n).as_bytes());
        n += 1;
    }
    out.truncate(len);
    if let Some(last) = out.last_mut() {
        *last = b'\n';
    }
    out
}

/// A Postgres-like heap file: 8 KiB pages, each a random header, a zero gap and text tuples
/// packed at the end. Compresses moderately, like real table files.
fn heap_pages(rng: &mut Rng, len: usize) -> Vec<u8> {
    const PAGE: usize = 8 * KIB;
    let mut out = vec![0u8; len];
    for page in out.chunks_mut(PAGE) {
        let header = 24.min(page.len());
        rng.fill(&mut page[..header]);
        let fill = page.len() * rng.range(30, 90) / 100;
        let tuples = text_bytes(rng, "csv", fill.min(page.len() - header));
        let start = page.len() - tuples.len();
        page[start..].copy_from_slice(&tuples);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tree builder
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    /// `(uid, gid)`; `None` keeps whoever creates it (root in kubesim).
    owner: Option<(u32, u32)>,
}

const ROOT_FILE: Meta = Meta {
    mode: 0o644,
    owner: None,
};
const ROOT_DIR: Meta = Meta {
    mode: 0o755,
    owner: None,
};
const EXECUTABLE: Meta = Meta {
    mode: 0o755,
    owner: None,
};
/// uid/gid 999 is what the official postgres and many database images run as.
const DB_FILE: Meta = Meta {
    mode: 0o600,
    owner: Some((999, 999)),
};
const DB_DIR: Meta = Meta {
    mode: 0o700,
    owner: Some((999, 999)),
};
/// uid/gid 1000 is the conventional first unprivileged user of application images.
const APP_FILE: Meta = Meta {
    mode: 0o644,
    owner: Some((1000, 1000)),
};
const APP_SECRET: Meta = Meta {
    mode: 0o600,
    owner: Some((1000, 1000)),
};
const APP_DIR: Meta = Meta {
    mode: 0o755,
    owner: Some((1000, 1000)),
};

struct Tree<'a> {
    root: &'a Path,
    /// `namespace/pvc`, the prefix of every per-file PRNG key.
    key: String,
    /// Directory metadata, applied in [`Tree::finish`]: a directory's mtime changes whenever an
    /// entry is added to it, so it can only be fixed once the whole tree exists.
    dirs: BTreeMap<PathBuf, Meta>,
    /// Monotonic fake clock: every inode gets a distinct, deterministic mtime.
    tick: u64,
    can_chown: bool,
    stats: VolumeStats,
}

impl<'a> Tree<'a> {
    fn new(root: &'a Path, namespace: &str, pvc: &str) -> Self {
        Tree {
            root,
            key: format!("{namespace}/{pvc}"),
            dirs: BTreeMap::new(),
            tick: 0,
            can_chown: nix::unistd::geteuid().is_root(),
            stats: VolumeStats::default(),
        }
    }

    fn rng(&self, what: &str) -> Rng {
        Rng::for_key(&format!("kubesim-demo/v1/{}/{what}", self.key))
    }

    fn next_time(&mut self) -> SystemTime {
        self.tick += 1;
        // 97 s apart so successive files land in different minutes, as a real workload's would.
        SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS + self.tick * 97)
    }

    fn chown(&self, path: &Path, owner: Option<(u32, u32)>, follow: bool) -> io::Result<()> {
        let Some((uid, gid)) = owner else {
            return Ok(());
        };
        if !self.can_chown {
            return Ok(());
        }
        let result = if follow {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
        } else {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        };
        match result {
            // Root inside a user namespace without those ids mapped cannot chown to them; the
            // tree is still useful, just without foreign owners.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EINVAL)) => Ok(()),
            other => other,
        }
    }

    /// Registers `rel` (and its missing ancestors, with `ROOT_DIR`) as a directory.
    fn dir(&mut self, rel: &str, meta: Meta) -> io::Result<()> {
        self.ensure_parents(Path::new(rel))?;
        fs::create_dir_all(self.root.join(rel))?;
        self.dirs.insert(PathBuf::from(rel), meta);
        Ok(())
    }

    fn ensure_parents(&mut self, rel: &Path) -> io::Result<()> {
        let mut ancestors: Vec<&Path> = rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .collect();
        ancestors.reverse();
        for a in ancestors {
            if !self.dirs.contains_key(a) {
                fs::create_dir_all(self.root.join(a))?;
                self.dirs.insert(a.to_path_buf(), ROOT_DIR);
            }
        }
        Ok(())
    }

    fn file(&mut self, rel: &str, data: &[u8], meta: Meta) -> io::Result<()> {
        self.ensure_parents(Path::new(rel))?;
        let path = self.root.join(rel);
        let mtime = self.next_time();
        {
            let mut f = File::create(&path)?;
            f.write_all(data)?;
            // Set on the writing handle: later chown/chmod only touch ctime, never mtime.
            f.set_times(FileTimes::new().set_accessed(mtime).set_modified(mtime))?;
        }
        self.chown(&path, meta.owner, true)?;
        // After chown, which may clear mode bits; explicit so the umask has no say.
        fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))?;
        self.stats.files += 1;
        self.stats.bytes += data.len() as u64;
        Ok(())
    }

    /// Writes `len` bytes of `kind` content ("random", "heap", or a text extension).
    fn generated(&mut self, rel: &str, kind: &str, len: usize, meta: Meta) -> io::Result<()> {
        let mut rng = self.rng(rel);
        let data = match kind {
            "random" => rng.bytes(len),
            "heap" => heap_pages(&mut rng, len),
            ext => text_bytes(&mut rng, ext, len),
        };
        self.file(rel, &data, meta)
    }

    /// A relative symlink at `rel` pointing to `target` (interpreted relative to `rel`'s
    /// directory, as the kernel does).
    fn symlink(&mut self, rel: &str, target: &str) -> io::Result<()> {
        debug_assert!(
            !target.starts_with('/'),
            "demo symlinks stay inside the volume"
        );
        self.ensure_parents(Path::new(rel))?;
        let path = self.root.join(rel);
        remove_if_present(&path)?;
        std::os::unix::fs::symlink(target, &path)?;
        let secs = self
            .next_time()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let tv = nix::sys::time::TimeVal::new(secs as _, 0);
        // std cannot set a symlink's own times (opening it follows it), hence lutimes.
        nix::sys::stat::lutimes(&path, &tv, &tv).map_err(io::Error::from)?;
        Ok(())
    }

    fn hard_link(&mut self, existing: &str, rel: &str) -> io::Result<()> {
        self.ensure_parents(Path::new(rel))?;
        let path = self.root.join(rel);
        remove_if_present(&path)?;
        fs::hard_link(self.root.join(existing), path)
    }

    /// Applies directory owners, modes and mtimes, now that no entry will be added any more.
    /// None of these operations changes a parent's mtime, so the order does not matter.
    fn finish(mut self) -> io::Result<VolumeStats> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, meta) in &dirs {
            let path = self.root.join(rel);
            self.chown(&path, meta.owner, true)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))?;
            let t = self.next_time();
            File::open(&path)?.set_times(FileTimes::new().set_accessed(t).set_modified(t))?;
        }
        // The volume root keeps the owner and mode the provisioner gave it; only its mtime is
        // pinned, since archivers record it for "./".
        let t = self.next_time();
        File::open(self.root)?.set_times(FileTimes::new().set_accessed(t).set_modified(t))?;
        Ok(self.stats)
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Volume profiles
// ---------------------------------------------------------------------------------------------

/// Name of more than 100 bytes: the ustar `name` field holds 100, so archivers must fall back
/// to the `prefix` field, GNU long names or PAX headers.
const LONG_NAME: &str = "orders-export-for-the-finance-department-reconciliation-fiscal-year-2024-\
                         quarter-4-including-refunds-and-chargebacks.csv";

const WAL_SEGMENT: usize = 16 * MIB;
const BIG_TABLE_OID: u32 = 16402;

/// The heavy volume: a Postgres-shaped data directory plus application exports.
fn populate_orders_db(t: &mut Tree) -> io::Result<()> {
    // pgdata: owned by the database user, 0700/0600 like a real PGDATA (initdb refuses less).
    t.dir("pgdata", DB_DIR)?;
    t.file("pgdata/PG_VERSION", b"16\n", DB_FILE)?;
    t.generated("pgdata/postgresql.conf", "log", 3 * KIB, DB_FILE)?;
    t.file(
        "pgdata/postmaster.opts",
        b"/usr/lib/postgresql/16/bin/postgres\n",
        DB_FILE,
    )?;
    for d in [
        "global",
        "base",
        "base/1",
        "base/4",
        "base/5",
        "base/16384",
        "pg_wal",
    ] {
        t.dir(&format!("pgdata/{d}"), DB_DIR)?;
    }
    t.generated("pgdata/global/pg_control", "random", 8 * KIB, DB_FILE)?;
    t.generated("pgdata/global/pg_filenode.map", "random", 512, DB_FILE)?;
    for db in [1, 4, 5] {
        for oid in 0..8 {
            let len = t.rng(&format!("len/{db}/{oid}")).range(100, 8 * KIB);
            t.generated(
                &format!("pgdata/base/{db}/{}", 1247 + oid),
                "random",
                len,
                DB_FILE,
            )?;
        }
    }
    // The many small relation files of the application database.
    // The big table's oid is skipped so every path is written exactly once.
    for oid in (16385..16686u32).filter(|&oid| oid != BIG_TABLE_OID) {
        let rel = format!("pgdata/base/16384/{oid}");
        let len = t.rng(&format!("len:{rel}")).range(100, 8 * KIB);
        let kind = if oid % 3 == 0 { "heap" } else { "random" };
        t.generated(&rel, kind, len, DB_FILE)?;
    }
    // The big table: 8 MiB of pages, half text and half zeros/headers.
    t.generated(
        &format!("pgdata/base/16384/{BIG_TABLE_OID}"),
        "heap",
        8 * MIB,
        DB_FILE,
    )?;
    // WAL segments are incompressible and exactly 16 MiB each.
    t.generated(
        "pgdata/pg_wal/000000010000000000000001",
        "random",
        WAL_SEGMENT,
        DB_FILE,
    )?;
    t.generated(
        "pgdata/pg_wal/000000010000000000000002",
        "random",
        WAL_SEGMENT,
        DB_FILE,
    )?;
    t.dir("pgdata/pg_wal/archive_status", DB_DIR)?;
    // An empty regular file (status marker), distinct from an empty directory.
    t.file(
        "pgdata/pg_wal/archive_status/000000010000000000000001.done",
        b"",
        DB_FILE,
    )?;
    // Empty directories that Postgres refuses to start without: a backup must keep them.
    t.dir("pgdata/pg_tblspc", DB_DIR)?;
    t.dir("pgdata/pg_logical/snapshots", DB_DIR)?;
    t.dir("pgdata/pg_logical", DB_DIR)?;

    // Application exports, owned by the app user.
    t.dir("exports", APP_DIR)?;
    t.generated("exports/README.md", "log", 2 * KIB, APP_FILE)?;
    // 16 MiB of JSON lines: the compressible bulk of the volume.
    t.generated("exports/orders-2024.jsonl", "jsonl", 16 * MIB, APP_FILE)?;
    t.generated("exports/.pgpass", "pem", 200, APP_SECRET)?;
    // exports/2024/qN/daily/<file>: four directories deep.
    for q in 1..=4 {
        t.dir(&format!("exports/2024/q{q}"), APP_DIR)?;
        t.dir(&format!("exports/2024/q{q}/daily"), APP_DIR)?;
        for month in (q - 1) * 3 + 1..=q * 3 {
            for day in 1..=10 {
                let rel = format!("exports/2024/q{q}/daily/orders-2024-{month:02}-{day:02}.json");
                let len = t.rng(&format!("len:{rel}")).range(100, 8 * KIB);
                t.generated(&rel, "json", len, APP_SECRET)?;
            }
        }
    }
    t.dir("exports/2024", APP_DIR)?;
    t.generated("exports/Q4 summary report.csv", "csv", 6 * KIB, APP_FILE)?;
    t.generated("exports/überprüfung-数据-✓.txt", "log", 3 * KIB, APP_FILE)?;
    t.generated(
        &format!("exports/2024/q4/{LONG_NAME}"),
        "csv",
        5 * KIB,
        APP_FILE,
    )?;
    // Relative symlinks: to a directory, to a file through `..`, and to a file from the root.
    t.symlink("exports/latest", "2024/q4")?;
    t.symlink("exports/2024/q1/daily/README.md", "../../../README.md")?;
    t.symlink("current-wal", "pgdata/pg_wal/000000010000000000000002")?;

    t.file(
        "scripts/backup-hook.sh",
        b"#!/bin/sh\n# Flush and checkpoint before a volume backup.\nset -eu\nsync\necho ok\n",
        EXECUTABLE,
    )?;
    // Same inode under two names: a backup must restore one inode, not two copies.
    t.hard_link("scripts/backup-hook.sh", "scripts/pre-backup.sh")?;
    Ok(())
}

/// Shape of a light volume: a few hundred KiB to a few MiB.
struct Light {
    /// Top-level data directory, possibly nested.
    top: &'static str,
    ext: &'static str,
    /// Content kind: "random" for binary data, otherwise text in the style of `ext`.
    kind: &'static str,
    small_files: usize,
    /// Larger files `(relative path, size)`.
    blobs: &'static [(&'static str, usize)],
    meta: Meta,
}

fn light_profile(namespace: &str, pvc: &str) -> Light {
    let app = APP_FILE;
    match (namespace, pvc) {
        ("shop", "media") => Light {
            top: "images/products",
            ext: "jpg",
            kind: "random",
            small_files: 160,
            blobs: &[
                ("video/intro.mp4", 2 * MIB),
                ("video/promo-2024.mp4", 2 * MIB),
                ("images/banner.png", MIB),
            ],
            meta: app,
        },
        ("shop", "scratch-unattached") => Light {
            top: "tmp/build",
            ext: "o",
            kind: "random",
            small_files: 100,
            blobs: &[("tmp/build/app.a", 384 * KIB)],
            meta: ROOT_FILE,
        },
        ("payments", "ledger-data") => Light {
            top: "journal/2024",
            ext: "log",
            kind: "log",
            small_files: 150,
            blobs: &[("journal/ledger.db", 512 * KIB)],
            meta: DB_FILE,
        },
        ("payments", "keys") => Light {
            top: "keys/transit",
            ext: "pem",
            kind: "pem",
            small_files: 80,
            blobs: &[("keys/seal.bin", 256 * KIB)],
            meta: APP_SECRET,
        },
        ("inventory", "stock-db") => Light {
            top: "data/tables",
            ext: "dat",
            kind: "random",
            small_files: 150,
            blobs: &[("data/stock.idx", 768 * KIB)],
            meta: DB_FILE,
        },
        ("edge", "cache") => Light {
            top: "cache/objects",
            ext: "bin",
            kind: "random",
            small_files: 200,
            blobs: &[("cache/index.bin", 512 * KIB)],
            meta: APP_FILE,
        },
        ("batch", "reports") => Light {
            top: "reports/2024",
            ext: "csv",
            kind: "csv",
            small_files: 120,
            blobs: &[("reports/yearly-2024.csv", MIB)],
            meta: APP_FILE,
        },
        ("ambient", "events") => Light {
            top: "events/partitions",
            ext: "json",
            kind: "json",
            small_files: 150,
            blobs: &[("events/segment-000001.log", 512 * KIB)],
            meta: APP_FILE,
        },
        // Any other claim (e.g. one a test creates itself) still gets a plausible tree.
        _ => Light {
            top: "data",
            ext: "dat",
            kind: "random",
            small_files: 100,
            blobs: &[("data/blob.bin", 256 * KIB)],
            meta: ROOT_FILE,
        },
    }
}

fn populate_light(t: &mut Tree, p: &Light) -> io::Result<()> {
    let dir_meta = if p.meta.owner.is_some() {
        APP_DIR
    } else {
        ROOT_DIR
    };
    let dir_meta = if p.meta.owner == DB_FILE.owner {
        DB_DIR
    } else {
        dir_meta
    };
    for i in 0..p.small_files {
        // top/shard-X/part-Y/item: two levels of sharding below the (nested) top directory.
        let dir = format!("{}/shard-{:x}/part-{}", p.top, i % 4, (i / 4) % 3);
        t.dir(&dir, dir_meta)?;
        let rel = format!("{dir}/item-{i:04}.{}", p.ext);
        let len = t.rng(&format!("len:{rel}")).range(100, 8 * KIB);
        t.generated(&rel, p.kind, len, p.meta)?;
    }
    for (rel, len) in p.blobs {
        t.generated(rel, p.kind, *len, p.meta)?;
    }
    t.generated("config/settings.conf", "log", 1500, APP_SECRET)?;
    t.file(
        "bin/rotate.sh",
        b"#!/bin/sh\nset -eu\nfind . -name '*.tmp' -delete\n",
        EXECUTABLE,
    )?;
    t.symlink("current", &format!("{}/shard-0", p.top))?;
    t.hard_link("config/settings.conf", "config/settings.conf.orig")?;
    t.dir("empty", ROOT_DIR)?;
    Ok(())
}

/// Fills `dir` (normally a freshly provisioned, empty volume) with the demo contents of
/// `namespace/pvc`. Identical inputs give byte-identical trees, including modes, owners (when
/// running as root), mtimes, symlink targets and hard links. Claims that are not part of the
/// demo get a generic light tree.
pub fn populate_volume(namespace: &str, pvc: &str, dir: &Path) -> io::Result<VolumeStats> {
    let mut tree = Tree::new(dir, namespace, pvc);
    if (namespace, pvc) == ("shop", "data-orders-db-0") {
        populate_orders_db(&mut tree)?;
    } else {
        populate_light(&mut tree, &light_profile(namespace, pvc))?;
    }
    tree.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::os::unix::fs::MetadataExt;

    /// Everything about one entry that a faithful backup/restore must preserve.
    #[derive(Debug, PartialEq, Eq)]
    struct Entry {
        kind: &'static str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        content: Vec<u8>,
        /// Index of the first path sharing this inode, for regular files with nlink > 1.
        link_group: Option<usize>,
    }

    fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
        let mut paths = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    stack.push(path.clone());
                }
                paths.push(path);
            }
        }
        paths.sort();
        let mut inodes: HashMap<u64, usize> = HashMap::new();
        let mut out = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let md = fs::symlink_metadata(path).unwrap();
            let (kind, content) = if md.file_type().is_symlink() {
                (
                    "symlink",
                    fs::read_link(path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if md.is_dir() {
                ("dir", Vec::new())
            } else {
                ("file", fs::read(path).unwrap())
            };
            let link_group =
                (kind == "file" && md.nlink() > 1).then(|| *inodes.entry(md.ino()).or_insert(i));
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: md.mtime(),
                    content,
                    link_group,
                },
            );
        }
        out
    }

    #[test]
    fn populating_twice_gives_identical_trees() {
        for (ns, pvc) in [
            ("shop", "data-orders-db-0"),
            ("payments", "keys"),
            ("x", "other"),
        ] {
            let a = tempfile::tempdir().unwrap();
            let b = tempfile::tempdir().unwrap();
            let sa = populate_volume(ns, pvc, a.path()).unwrap();
            let sb = populate_volume(ns, pvc, b.path()).unwrap();
            assert_eq!(sa, sb);
            let (ta, tb) = (snapshot(a.path()), snapshot(b.path()));
            assert_eq!(ta.len(), tb.len(), "{ns}/{pvc}");
            for ((pa, ea), (pb, eb)) in ta.iter().zip(tb.iter()) {
                assert_eq!(pa, pb);
                assert!(ea == eb, "{ns}/{pvc}: {} differs", pa.display());
            }
            assert_eq!(
                fs::metadata(a.path()).unwrap().mtime(),
                fs::metadata(b.path()).unwrap().mtime()
            );
            // Different claims must not share contents.
            let other = tempfile::tempdir().unwrap();
            populate_volume(ns, "different", other.path()).unwrap();
            assert_ne!(snapshot(other.path()), ta);
        }
    }

    #[test]
    fn orders_db_volume_has_the_promised_shape() {
        let dir = tempfile::tempdir().unwrap();
        let stats = populate_volume("shop", "data-orders-db-0", dir.path()).unwrap();
        let tree = snapshot(dir.path());

        let files: Vec<_> = tree.values().filter(|e| e.kind == "file").collect();
        let distinct = tree
            .values()
            .filter(|e| e.kind == "file" && e.link_group.is_none())
            .count()
            + tree
                .values()
                .filter_map(|e| e.link_group)
                .collect::<HashSet<_>>()
                .len();
        assert_eq!(stats.files as usize, distinct);
        assert!(stats.bytes >= 56 * MIB as u64, "{stats:?}");
        let small = files
            .iter()
            .filter(|e| (100..=8 * KIB).contains(&e.content.len()))
            .count();
        assert!(small >= 400, "only {small} small files");
        let large = files.iter().filter(|e| e.content.len() >= 8 * MIB).count();
        assert!(large >= 4, "only {large} large files");

        // Compressible and incompressible bulk: the JSON export is text, the WAL is not.
        let jsonl = &tree[Path::new("exports/orders-2024.jsonl")].content;
        assert!(jsonl.iter().all(|b| b.is_ascii()) && jsonl.starts_with(b"{\"id\":0,"));
        let wal = &tree[Path::new("pgdata/pg_wal/000000010000000000000001")].content;
        assert_eq!(wal.len(), WAL_SEGMENT);
        assert!(!wal.is_ascii());

        let max_depth = tree.keys().map(|p| p.components().count()).max().unwrap();
        assert!(max_depth >= 4);
        let symlinks: Vec<_> = tree.iter().filter(|(_, e)| e.kind == "symlink").collect();
        assert!(symlinks.len() >= 3);
        for (path, e) in &symlinks {
            let target = PathBuf::from(String::from_utf8(e.content.clone()).unwrap());
            assert!(target.is_relative());
            // Each link resolves inside the volume to something that exists.
            let resolved = fs::canonicalize(dir.path().join(path)).unwrap();
            assert!(resolved.starts_with(fs::canonicalize(dir.path()).unwrap()));
        }
        let hook = &tree[Path::new("scripts/backup-hook.sh")];
        assert_eq!(hook.mode, 0o755);
        assert!(hook.link_group.is_some());
        assert_eq!(
            hook.link_group,
            tree[Path::new("scripts/pre-backup.sh")].link_group
        );
        let empty_dirs = tree
            .iter()
            .filter(|(p, e)| e.kind == "dir" && !tree.keys().any(|q| q.parent() == Some(p)))
            .count();
        assert!(empty_dirs >= 2);
        assert!(tree.contains_key(Path::new("exports/Q4 summary report.csv")));
        assert!(tree.keys().any(|p| !p.to_str().unwrap().is_ascii()));
        assert!(tree.keys().any(|p| p.file_name().unwrap().len() > 100));

        let pg_control = &tree[Path::new("pgdata/global/pg_control")];
        assert_eq!(pg_control.mode, 0o600);
        if nix::unistd::geteuid().is_root() {
            assert_eq!((pg_control.uid, pg_control.gid), (999, 999));
            assert!(files.iter().any(|e| e.uid == 1000 && e.mode == 0o600));
        }
    }

    #[test]
    fn all_demo_volumes_together_are_large_but_mostly_orders_db() {
        let mut total = 0;
        let mut orders = 0;
        for (ns, pvc) in volume_names() {
            let dir = tempfile::tempdir().unwrap();
            let stats = populate_volume(&ns, &pvc, dir.path()).unwrap();
            assert!(stats.bytes >= 300 * KIB as u64, "{ns}/{pvc}: {stats:?}");
            assert!(stats.files >= 50, "{ns}/{pvc}: {stats:?}");
            if pvc == "data-orders-db-0" {
                orders = stats.bytes;
            }
            total += stats.bytes;
        }
        assert!(total >= 64 * MIB as u64, "{total}");
        assert!(orders * 2 > total);
    }

    fn parse_quantity_mib(q: &str) -> u64 {
        q.strip_suffix("Mi")
            .expect("demo sizes are in Mi")
            .parse()
            .unwrap()
    }

    #[test]
    fn demo_objects_are_consistent() {
        let objects = demo_objects();
        let of_kind =
            |kind: &str| -> Vec<&Value> { objects.iter().filter(|o| o["kind"] == kind).collect() };
        let claims = of_kind("PersistentVolumeClaim");
        let pods = of_kind("Pod");
        let namespaces: HashSet<&str> = of_kind("Namespace")
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap())
            .collect();
        let classes: HashSet<&str> = of_kind("StorageClass")
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(classes, HashSet::from(["standard", "local-wait"]));

        let key = |o: &Value| {
            (
                o["metadata"]["namespace"].as_str().unwrap().to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
            )
        };
        let claim_keys: Vec<_> = claims.iter().map(|c| key(c)).collect();
        assert_eq!(claim_keys, volume_names());
        assert!(claims.len() >= 8);
        let position = |o: &Value| objects.iter().position(|x| x == o).unwrap();

        let mut users: HashMap<(String, String), Vec<String>> = HashMap::new();
        for pod in &pods {
            let (ns, name) = key(pod);
            assert!(namespaces.contains(ns.as_str()));
            for v in pod["spec"]["volumes"].as_array().unwrap() {
                let claim = v["persistentVolumeClaim"]["claimName"].as_str().unwrap();
                let k = (ns.clone(), claim.to_string());
                let c = claims.iter().find(|c| key(c) == k);
                let c = c.unwrap_or_else(|| panic!("{ns}/{name} mounts missing claim {claim}"));
                assert!(
                    position(c) < position(pod),
                    "claims are created before pods"
                );
                users.entry(k).or_default().push(name.clone());
            }
        }

        let mut total_mib = 0;
        let mode = |c: &Value| c["spec"]["accessModes"][0].as_str().unwrap().to_string();
        for c in &claims {
            let k = key(c);
            assert!(namespaces.contains(k.0.as_str()));
            total_mib += parse_quantity_mib(
                c["spec"]["resources"]["requests"]["storage"]
                    .as_str()
                    .unwrap(),
            );
            let n = users.get(&k).map_or(0, Vec::len);
            match mode(c).as_str() {
                "ReadWriteOnce" | "ReadWriteOncePod" => assert!(n <= 1, "{k:?} has {n} users"),
                _ => {}
            }
        }
        assert!(total_mib <= 1024, "{total_mib} MiB requested");
        assert!(claims
            .iter()
            .any(|c| mode(c) == "ReadWriteMany" && users[&key(c)].len() == 2));
        assert!(claims
            .iter()
            .any(|c| mode(c) == "ReadWriteOncePod" && users.contains_key(&key(c))));
        assert!(
            claims.iter().any(|c| !users.contains_key(&key(c))),
            "one claim is unattached"
        );

        // One of the two RWX consumers mounts read-only.
        let read_only = pods.iter().filter(|p| {
            p["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] == true
                && p["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"] == true
        });
        assert_eq!(read_only.count(), 1);
        let orders = pods
            .iter()
            .find(|p| p["metadata"]["name"] == "orders-db-0")
            .unwrap();
        assert_eq!(orders["spec"]["containers"][0]["name"], "db");
        assert_eq!(
            orders["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/var/lib/db"
        );
        assert!(pods.iter().any(|p| p["metadata"]["namespace"] == "payments"
            && p["metadata"]["annotations"]
                ["config.alpha.linkerd.io/proxy-enable-native-sidecar"]
                == "true"));
        let default_classes = objects
            .iter()
            .filter(|o| {
                o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                    == "true"
            })
            .count();
        assert_eq!(default_classes, 1);
    }
}

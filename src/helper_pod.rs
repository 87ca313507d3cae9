//! The short-lived helper pod that mounts a PVC so that `backup` / `restore` can stream its
//! files over `exec` (pure: builds the object, creates nothing).
//!
//! Design choices, each explained where it is made:
//! * opted out of every mesh's injection, with each injector's own key: a proxy sidecar would
//!   add an init container needing NET_ADMIN (rejected by Pod Security), delay start-up, and for
//!   classic sidecars keep the pod alive after the main container exits;
//! * root with `capabilities: drop ALL` plus only what reading or restoring other users' files
//!   needs, every capability within the Pod Security *baseline* allow-list;
//! * pinned with required node affinity on the node's name (not `spec.nodeName`);
//! * no `fsGroup`: the kubelet would recursively chown/chmod the volume, rewriting the very
//!   ownership we are backing up or restoring.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, Namespace, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext, Toleration,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Image used when the user names none: has `sh`, `tar`, `sleep`, and a `sha256sum` with SHA-NI
/// (upstream's defconfig since 1.36, `CONFIG_SHA256_HWACCEL`), which the in-pod verification of
/// `restore` and `drill` spends its time in.
pub const DEFAULT_IMAGE: &str = "busybox:1.37";
/// Where the PVC is mounted inside the helper.
pub const DEFAULT_MOUNT_PATH: &str = "/data";
/// Default `activeDeadlineSeconds`: the pod is killed after this long whatever happens.
pub const DEFAULT_ACTIVE_DEADLINE_SECONDS: i64 = 6 * 3600;
/// The helper's only container; `exec` targets it.
pub const CONTAINER_NAME: &str = "pvbackup";
/// Name of the PVC volume in the helper pod.
pub const DATA_VOLUME: &str = "data";
/// Name of the scratch `emptyDir` mounted at /tmp (the root filesystem is read-only).
pub const TMP_VOLUME: &str = "tmp";
/// Where the scratch `emptyDir` is mounted: the lease, and the in-pod steps' busy marks.
pub const TMP_MOUNT_PATH: &str = "/tmp";
/// The lease file in the scratch directory: its mtime is the client's last renewal.
pub const LEASE_FILE: &str = "pvbackup-lease";
/// A helper whose client has not renewed its lease for this long stops by itself (after
/// rolling back an unfinished restore): about a minute after a client vanished, rather than
/// at the 6-hour deadline.
pub const DEFAULT_LEASE_SECONDS: u64 = 60;
/// Overrides the lease (seconds), for tests that kill a client and must not wait a minute.
/// Deliberately not a flag: users have no reason to change it.
pub const LEASE_ENV: &str = "PVBACKUP_LEASE_SECONDS";
/// The lease in seconds, on the pod, for the client that renews it.
pub const ANNOTATION_LEASE: &str = "pvbackup.dev/lease-seconds";

/// The helper container's main process: a watchdog, not a bare `sleep`. It idles until the
/// client stops renewing the lease (the mtime of `RUN/pvbackup-lease`, touched by the client
/// through a short exec, see `helper_session`), for longer than LEASE seconds: then it marks
/// the lease expired (volume-changing steps refuse to start from then on), waits until every
/// step still running has ended (each marks itself busy with its pid), runs the rest of its
/// arguments (a restore's rollback) and exits, which ends the pod. `trap` makes `sh` exit on
/// SIGTERM at once (PID 1 ignores signals it has no handler for), and `wait` is interruptible
/// where `sleep` in the foreground is not.
///
/// `sh -c WATCHDOG pvbackup-watchdog LEASE RUN [COMMAND ARGS...]`
pub const WATCHDOG: &str = r#"trap 'exit 0' TERM
lease="$1"; run="$2"; shift 2
touch "$run/pvbackup-lease" || exit 1
period=$((lease / 4)); [ "$period" -ge 1 ] || period=1
while :; do
  sleep "$period" & wait $!
  age=$(( $(date +%s) - $(stat -c %Y "$run/pvbackup-lease") ))
  [ "$age" -ge "$lease" ] || continue
  : > "$run/pvbackup-expired"
  for b in "$run"/pvbackup-busy.*; do
    [ -e "$b" ] || continue
    while kill -0 "${b##*.}" 2>/dev/null; do sleep 1; done
  done
  if [ $# -gt 0 ]; then "$@"; fi
  exit 0
done
"#;

/// The lease: [`DEFAULT_LEASE_SECONDS`], or [`LEASE_ENV`] when set to a number of seconds.
pub fn lease_from_env() -> std::time::Duration {
    let secs = std::env::var(LEASE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_LEASE_SECONDS);
    std::time::Duration::from_secs(secs)
}

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const APP_NAME: &str = "kubectl-pvbackup";
pub const LABEL_RUN_ID: &str = "pvbackup.dev/run-id";
pub const LABEL_PVC: &str = "pvbackup.dev/pvc";
pub const LABEL_PURPOSE: &str = "pvbackup.dev/purpose";

/// Namespace label read by Pod Security Admission
/// (kubernetes.io/docs/concepts/security/pod-security-admission/).
pub const PSA_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Every injector's opt-out, as `(key, value, as_label, as_annotation)`.
///
/// * Istio: `sidecar.istio.io/inject: "false"`, read as a label (preferred) and as an
///   annotation (istio.io/latest/docs/setup/additional-setup/sidecar-injection/).
/// * Istio ambient: pod label `istio.io/dataplane-mode: none`
///   (istio.io/latest/docs/ambient/usage/add-workloads/).
/// * Linkerd: annotation `linkerd.io/inject: disabled` (linkerd.io/2/features/proxy-injection/).
/// * Consul: annotation `consul.hashicorp.com/connect-inject: "false"` (consul-k8s
///   `annotationInject`, parsed with strconv.ParseBool).
/// * Kuma: label `kuma.io/sidecar-injection: disabled` (a label since Kuma 2.x,
///   developer.konghq.com/mesh/annotations); also set as annotation for older releases.
/// * OSM: annotation `openservicemesh.io/sidecar-injection: disabled` (openservicemesh/osm
///   pkg/constants `SidecarInjectionAnnotation`).
pub const MESH_OPT_OUTS: &[(&str, &str, bool, bool)] = &[
    ("sidecar.istio.io/inject", "false", true, true),
    ("istio.io/dataplane-mode", "none", true, false),
    ("linkerd.io/inject", "disabled", false, true),
    ("consul.hashicorp.com/connect-inject", "false", false, true),
    ("kuma.io/sidecar-injection", "disabled", true, true),
    (
        "openservicemesh.io/sidecar-injection",
        "disabled",
        false,
        true,
    ),
];

/// Capabilities a root backup helper adds after dropping ALL.
///
/// `DAC_OVERRIDE` lets root read 0600 files and traverse 0700 directories of other UIDs; it
/// also allows writing, but the PVC is mounted read-only for backups. `DAC_READ_SEARCH` would
/// be the narrower choice, but it is *not* in the Pod Security baseline allow-list (AUDIT_WRITE,
/// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP,
/// SETUID, SYS_CHROOT — kubernetes.io/docs/concepts/security/pod-security-standards/#baseline,
/// "Capabilities"), so a helper asking for it would be rejected in every baseline namespace.
pub const BACKUP_CAPABILITIES: &[&str] = &["DAC_OVERRIDE"];
/// Capabilities a root restore helper adds after dropping ALL: restore numeric ownership
/// (CHOWN), modes and times on files it does not own (FOWNER), write into directories of other
/// UIDs (DAC_OVERRIDE), and keep setuid/setgid bits (FSETID). All within baseline.
pub const RESTORE_CAPABILITIES: &[&str] = &["CHOWN", "FOWNER", "DAC_OVERRIDE", "FSETID"];

/// Capabilities the Pod Security baseline profile lets a container add.
pub const BASELINE_ALLOWED_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What the helper is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Backup,
    Restore,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Backup => "backup",
            Purpose::Restore => "restore",
        }
    }

    /// Capabilities added when running as root.
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            Purpose::Backup => BACKUP_CAPABILITIES,
            Purpose::Restore => RESTORE_CAPABILITIES,
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything `build_helper_pod` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct HelperPodRequest {
    pub namespace: String,
    pub pvc: String,
    /// Identifies this kubectl-pvbackup invocation; its tail becomes the pod name's suffix, so
    /// put the unique part (random or timestamp) at the end.
    pub run_id: String,
    pub purpose: Purpose,
    pub image: String,
    /// Pin to this node (from `discover::placement`).
    pub node: Option<String>,
    pub tolerations: Vec<Toleration>,
    /// Mount the PVC read-only (volume source and mount).
    pub read_only: bool,
    pub mount_path: String,
    /// Safety net: Kubernetes kills the pod after this many seconds; also the `sleep` length.
    pub active_deadline_seconds: i64,
    /// Run as this UID instead of root (no capabilities are added then).
    pub run_as_user: Option<i64>,
    /// The pod stops by itself when its client has not renewed the lease for this long.
    pub lease_seconds: u64,
    /// What the pod runs before it stops on an expired lease (a restore's rollback).
    pub on_lease_expiry: Vec<String>,
}

impl HelperPodRequest {
    /// A request with the defaults: busybox, `/data`, 6 h deadline, root, read-only for backups.
    pub fn new(
        namespace: impl Into<String>,
        pvc: impl Into<String>,
        run_id: impl Into<String>,
        purpose: Purpose,
    ) -> Self {
        HelperPodRequest {
            namespace: namespace.into(),
            pvc: pvc.into(),
            run_id: run_id.into(),
            purpose,
            image: DEFAULT_IMAGE.to_string(),
            node: None,
            tolerations: Vec::new(),
            read_only: purpose == Purpose::Backup,
            mount_path: DEFAULT_MOUNT_PATH.to_string(),
            active_deadline_seconds: DEFAULT_ACTIVE_DEADLINE_SECONDS,
            run_as_user: None,
            lease_seconds: DEFAULT_LEASE_SECONDS,
            on_lease_expiry: Vec::new(),
        }
    }

    /// The one way every command builds its helper pod's request: placed where the target's
    /// volume can be mounted (`discover::placement`), with the user's image and UID.
    pub fn placed(
        target: &crate::discover::Target,
        nodes: &[k8s_openapi::api::core::v1::Node],
        run_id: impl Into<String>,
        purpose: Purpose,
        options: &HelperOptions,
    ) -> Result<Self, crate::exit::Failure> {
        let place = crate::discover::placement(target, nodes)
            .map_err(|e| crate::exit::Failure::refused(e.to_string()))?;
        let mut req = HelperPodRequest::new(&target.namespace, &target.pvc, run_id, purpose);
        req.image = options.image.clone();
        req.node = place.node;
        req.tolerations = place.tolerations;
        req.run_as_user = options.run_as_user;
        req.lease_seconds = options.lease.as_secs().max(1);
        Ok(req)
    }

    /// A helper pod for a claim nothing else mounts (the temporary PVC of a snapshot or
    /// clone): no placement, so the scheduler may put it on any node.
    pub fn unplaced(
        namespace: &str,
        claim: &str,
        run_id: impl Into<String>,
        purpose: Purpose,
        options: &HelperOptions,
    ) -> Self {
        let mut req = HelperPodRequest::new(namespace, claim, run_id, purpose);
        req.image = options.image.clone();
        req.run_as_user = options.run_as_user;
        req.lease_seconds = options.lease.as_secs().max(1);
        req
    }

    fn runs_as_root(&self) -> bool {
        self.run_as_user.is_none_or(|u| u == 0)
    }
}

/// What the user chose for every helper pod of a run (`--image`, `--run-as-user`,
/// `--pod-timeout`), shared by create, restore and drill.
#[derive(Debug, Clone, PartialEq)]
pub struct HelperOptions {
    pub image: String,
    pub run_as_user: Option<i64>,
    /// How long a helper pod may take to start.
    pub pod_timeout: std::time::Duration,
    /// The helper pods' lease ([`lease_from_env`]).
    pub lease: std::time::Duration,
}

impl HelperOptions {
    /// The user's choices, with the lease from [`lease_from_env`].
    pub fn new(image: String, run_as_user: Option<i64>, pod_timeout: std::time::Duration) -> Self {
        HelperOptions {
            image,
            run_as_user,
            pod_timeout,
            lease: lease_from_env(),
        }
    }
}

/// The helper pod for `req`, or why the namespace's Pod Security level would reject it (a
/// permanent failure: retrying cannot help).
pub fn admissible_pod(
    req: &HelperPodRequest,
    namespace: Option<&Namespace>,
) -> Result<Pod, crate::exit::Failure> {
    let pod = build_helper_pod(req);
    if let Some(ns) = namespace {
        if let Some(conflict) = podsecurity_conflict(ns, &pod) {
            return Err(crate::exit::Failure::runtime(conflict).permanent());
        }
    }
    Ok(pod)
}

/// FNV-1a, 32 bits: a stable, dependency-free hash for name shortening.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Lowercase, `[a-z0-9-]` only, no repeated or edge dashes.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// `s` if it fits in `max` characters, else a prefix plus a hash of the whole of `s`.
fn shorten(s: &str, original: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let hash = format!("{:08x}", fnv1a(original));
    let hash = &hash[..5];
    let keep = max.saturating_sub(hash.len() + 1);
    let prefix = s[..keep].trim_end_matches('-');
    if prefix.is_empty() {
        hash.to_string()
    } else {
        format!("{prefix}-{hash}")
    }
}

/// Up to the last 8 name-safe characters of the run id (or a hash of it).
fn run_suffix(run_id: &str) -> String {
    let clean = sanitize(run_id);
    let tail = &clean[clean.len().saturating_sub(8)..];
    let tail = tail.trim_start_matches('-');
    if tail.is_empty() {
        format!("{:08x}", fnv1a(run_id))
    } else {
        tail.to_string()
    }
}

/// `pvbackup-<purpose>-<short pvc>-<run id suffix>`: a valid DNS label (≤ 63 characters,
/// `[a-z0-9-]`, alphanumeric at both ends), deterministic, and distinct for long PVC names that
/// share a prefix (a hash of the full name replaces the cut tail).
pub fn helper_pod_name(purpose: Purpose, pvc: &str, run_id: &str) -> String {
    let prefix = format!("pvbackup-{purpose}-");
    let suffix = run_suffix(run_id);
    let budget = 63 - prefix.len() - 1 - suffix.len();
    let mut short = sanitize(pvc);
    if short.is_empty() {
        short = "pvc".to_string();
    }
    let short = shorten(&short, pvc, budget);
    format!("{prefix}{short}-{suffix}")
}

/// A label value: ≤ 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
pub(crate) fn label_value(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let short = shorten(trimmed, s, 63);
    short
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

/// Build the helper pod for `req`. Pure and deterministic.
pub fn build_helper_pod(req: &HelperPodRequest) -> Pod {
    let mut labels = BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_MANAGED_BY.to_string(), APP_NAME.to_string()),
        (LABEL_RUN_ID.to_string(), label_value(&req.run_id)),
        (LABEL_PVC.to_string(), label_value(&req.pvc)),
        (LABEL_PURPOSE.to_string(), req.purpose.to_string()),
    ]);
    let mut annotations = BTreeMap::from([
        // Label values may be shortened; the annotations keep the exact names.
        (LABEL_RUN_ID.to_string(), req.run_id.clone()),
        (LABEL_PVC.to_string(), req.pvc.clone()),
        (
            "kubectl.kubernetes.io/default-container".to_string(),
            CONTAINER_NAME.to_string(),
        ),
        (ANNOTATION_LEASE.to_string(), req.lease_seconds.to_string()),
    ]);
    for (key, value, as_label, as_annotation) in MESH_OPT_OUTS {
        if *as_label {
            labels.insert(key.to_string(), value.to_string());
        }
        if *as_annotation {
            annotations.insert(key.to_string(), value.to_string());
        }
    }

    let root = req.runs_as_root();
    let add: Vec<String> = if root {
        req.purpose
            .capabilities()
            .iter()
            .map(|c| c.to_string())
            .collect()
    } else {
        // A non-root process gets no effective capabilities from `add` (Kubernetes sets no
        // ambient capabilities), and `restricted` forbids all but NET_BIND_SERVICE.
        Vec::new()
    };

    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(req.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        // Idle until deleted, the deadline, or an expired lease (see WATCHDOG). The work
        // itself happens over `exec`.
        command: Some(
            [
                "sh",
                "-c",
                WATCHDOG,
                "pvbackup-watchdog",
                &req.lease_seconds.max(1).to_string(),
                TMP_MOUNT_PATH,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(req.on_lease_expiry.iter().cloned())
            .collect(),
        ),
        volume_mounts: Some(vec![
            VolumeMount {
                name: DATA_VOLUME.to_string(),
                mount_path: req.mount_path.clone(),
                read_only: Some(req.read_only),
                ..Default::default()
            },
            VolumeMount {
                name: TMP_VOLUME.to_string(),
                mount_path: TMP_MOUNT_PATH.to_string(),
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity("50m")),
                ("memory".to_string(), quantity("32Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), quantity("256Mi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: (!add.is_empty()).then_some(add),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    // Pin through the scheduler, like the DaemonSet controller does: required node affinity on
    // the `metadata.name` field. Unlike `spec.nodeName` (which bypasses the scheduler: no
    // resource fit, no taint check, and a kubelet rejection fails the pod for good) this keeps
    // every scheduling check. The field is matched rather than the `kubernetes.io/hostname`
    // label, which can differ from the node name (kubelet --hostname-override, FQDN vs short
    // names on AWS: iovisor/kubectl-trace#173).
    let affinity = req.node.as_ref().map(|node| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".to_string(),
                        operator: "In".to_string(),
                        values: Some(vec![node.clone()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });

    Pod {
        metadata: ObjectMeta {
            name: Some(helper_pod_name(req.purpose, &req.pvc, &req.run_id)),
            namespace: Some(req.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".to_string()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            active_deadline_seconds: Some(req.active_deadline_seconds),
            termination_grace_period_seconds: Some(5),
            affinity,
            tolerations: (!req.tolerations.is_empty()).then(|| req.tolerations.clone()),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(req.run_as_user.unwrap_or(0)),
                run_as_non_root: (!root).then_some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: Some(vec![
                Volume {
                    name: DATA_VOLUME.to_string(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: req.pvc.clone(),
                        read_only: Some(req.read_only),
                    }),
                    ..Default::default()
                },
                Volume {
                    name: TMP_VOLUME.to_string(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(quantity("64Mi")),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where the helper container mounts volume `volume` (`DATA_VOLUME`: the PVC, `TMP_VOLUME`:
/// the scratch directory), read from the pod spec: the in-pod steps take their paths from the
/// pod they run in, not from a constant.
pub fn mount_path(pod: &Pod, volume: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER_NAME)?
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .map(|m| m.mount_path.clone())
}

/// The lease the pod was built with ([`ANNOTATION_LEASE`]), for the client that renews it.
pub fn lease_of(pod: &Pod) -> std::time::Duration {
    let secs = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LEASE))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_LEASE_SECONDS);
    std::time::Duration::from_secs(secs.max(1))
}

// ---------------------------------------------------------------------------------------------
// Pod Security Admission
// ---------------------------------------------------------------------------------------------

/// Checks from the Pod Security Standards
/// (kubernetes.io/docs/concepts/security/pod-security-standards/), limited to the fields a pod
/// can carry. Returns one line per violated control.
fn baseline_violations(pod: &Pod) -> Vec<String> {
    let mut v = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return v;
    };
    // Baseline "Host Namespaces": hostNetwork, hostPID, hostIPC must be unset or false.
    for (name, set) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if set == Some(true) {
            v.push(format!("baseline \"Host Namespaces\": spec.{name} is true"));
        }
    }
    // Baseline "HostPath Volumes".
    for vol in spec.volumes.iter().flatten() {
        if vol.host_path.is_some() {
            v.push(format!(
                "baseline \"HostPath Volumes\": volume {} is a hostPath",
                vol.name
            ));
        }
    }
    let pod_seccomp = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    for c in all_containers(spec) {
        let sc = c.security_context.as_ref();
        // Baseline "Privileged Containers".
        if sc.and_then(|s| s.privileged) == Some(true) {
            v.push(format!(
                "baseline \"Privileged Containers\": container {} is privileged",
                c.name
            ));
        }
        // Baseline "Capabilities": add only from the allow-list.
        for cap in added_caps(c) {
            if !BASELINE_ALLOWED_CAPABILITIES.contains(&cap) {
                v.push(format!(
                    "baseline \"Capabilities\": container {} adds {cap}, outside the allowed list",
                    c.name
                ));
            }
        }
        // Baseline "Host Ports".
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.unwrap_or(0) != 0)
        {
            v.push(format!(
                "baseline \"Host Ports\": container {} uses a hostPort",
                c.name
            ));
        }
        // Baseline "Seccomp": Unconfined is forbidden.
        let seccomp = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str())
            .or(pod_seccomp);
        if seccomp == Some("Unconfined") {
            v.push(format!(
                "baseline \"Seccomp\": container {} runs Unconfined",
                c.name
            ));
        }
    }
    v
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

fn added_caps(c: &Container) -> impl Iterator<Item = &str> {
    c.security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|caps| caps.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
}

fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut v = baseline_violations(pod);
    let Some(spec) = pod.spec.as_ref() else {
        return v;
    };
    let psc = spec.security_context.as_ref();
    // Restricted "Volume Types": only these volume sources.
    for vol in spec.volumes.iter().flatten() {
        let allowed = vol.config_map.is_some()
            || vol.csi.is_some()
            || vol.downward_api.is_some()
            || vol.empty_dir.is_some()
            || vol.ephemeral.is_some()
            || vol.persistent_volume_claim.is_some()
            || vol.projected.is_some()
            || vol.secret.is_some();
        if !allowed {
            v.push(format!(
                "restricted \"Volume Types\": volume {} has a type outside configMap, csi, \
                 downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected, secret",
                vol.name
            ));
        }
    }
    for c in all_containers(spec) {
        let sc = c.security_context.as_ref();
        // Restricted "Privilege Escalation": allowPrivilegeEscalation must be false.
        if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            v.push(format!(
                "restricted \"Privilege Escalation\": container {} must set allowPrivilegeEscalation: false",
                c.name
            ));
        }
        // Restricted "Running as Non-root": runAsNonRoot must be true (container or pod).
        let non_root = sc
            .and_then(|s| s.run_as_non_root)
            .or(psc.and_then(|s| s.run_as_non_root));
        if non_root != Some(true) {
            v.push(format!(
                "restricted \"Running as Non-root\": container {} must run with runAsNonRoot: true",
                c.name
            ));
        }
        // Restricted "Running as Non-root user": runAsUser must not be 0.
        let uid = sc
            .and_then(|s| s.run_as_user)
            .or(psc.and_then(|s| s.run_as_user));
        if uid == Some(0) {
            v.push(format!(
                "restricted \"Running as Non-root user\": container {} runs as UID 0",
                c.name
            ));
        }
        // Restricted "Seccomp": RuntimeDefault or Localhost, on the container or the pod.
        let seccomp = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .or(psc.and_then(|s| s.seccomp_profile.as_ref()))
            .map(|p| p.type_.as_str());
        if !matches!(seccomp, Some("RuntimeDefault") | Some("Localhost")) {
            v.push(format!(
                "restricted \"Seccomp\": container {} needs seccompProfile RuntimeDefault or Localhost",
                c.name
            ));
        }
        // Restricted "Capabilities": drop ALL, add at most NET_BIND_SERVICE.
        let drops_all = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|caps| caps.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops_all {
            v.push(format!(
                "restricted \"Capabilities\": container {} must drop ALL capabilities",
                c.name
            ));
        }
        for cap in added_caps(c) {
            if cap != "NET_BIND_SERVICE" {
                v.push(format!(
                    "restricted \"Capabilities\": container {} adds {cap}; only NET_BIND_SERVICE may be added",
                    c.name
                ));
            }
        }
    }
    v
}

/// Would Pod Security Admission in `ns` reject `pod`? If so, say why and what to do.
///
/// Reads the namespace label `pod-security.kubernetes.io/enforce`. `privileged` or no label:
/// no conflict. `baseline` / `restricted`: `pod` is checked against that profile
/// (kubernetes.io/docs/concepts/security/pod-security-standards/). The root helper fails
/// `restricted` ("Running as Non-root" requires runAsNonRoot: true, "Running as Non-root user"
/// forbids UID 0, "Capabilities" allows adding only NET_BIND_SERVICE) but passes `baseline`;
/// the helper built with `run_as_user` set to a non-zero UID passes both.
pub fn podsecurity_conflict(ns: &Namespace, pod: &Pod) -> Option<String> {
    let level = ns
        .metadata
        .labels
        .as_ref()?
        .get(PSA_ENFORCE_LABEL)?
        .as_str();
    let violations = match level {
        "restricted" => restricted_violations(pod),
        "baseline" => baseline_violations(pod),
        _ => return None,
    };
    if violations.is_empty() {
        return None;
    }
    let ns_name = ns.metadata.name.as_deref().unwrap_or("<unknown>");
    let pod_name = pod.metadata.name.as_deref().unwrap_or("helper");
    let mut msg = format!(
        "namespace {ns_name} enforces the Pod Security Standard \"{level}\" (label \
         {PSA_ENFORCE_LABEL}={level}), which would reject the helper pod {pod_name}:\n"
    );
    for line in &violations {
        msg.push_str("  - ");
        msg.push_str(line);
        msg.push('\n');
    }
    let relaxed = if level == "restricted" {
        "baseline"
    } else {
        "privileged"
    };
    if level == "restricted" {
        msg.push_str(
            "The helper runs as root with a few capabilities so it can read (backup) or restore \
             files owned by any UID; \"restricted\" forbids both.\n",
        );
    }
    msg.push_str("Options:\n");
    if level == "restricted" {
        msg.push_str(
            "  1. re-run with --run-as-user UID, the UID that owns the data: the helper then \
             runs as that user with no added capabilities, which \"restricted\" admits (files \
             that UID cannot read are not backed up, and a restore cannot set other owners);\n",
        );
    }
    let n = if level == "restricted" { 2 } else { 1 };
    msg.push_str(&format!(
        "  {n}. relax the namespace for the backup window: kubectl label --overwrite namespace \
         {ns_name} {PSA_ENFORCE_LABEL}={relaxed}, and set it back to {level} afterwards;\n"
    ));
    msg.push_str(&format!(
        "  {}. ask a cluster administrator for a Pod Security Admission exemption (exemptions: \
         namespaces, usernames or runtimeClasses in the PodSecurity admission configuration).",
        n + 1
    ));
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::fixtures::namespace;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn is_label_value(s: &str) -> bool {
        s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    }

    fn req(purpose: Purpose) -> HelperPodRequest {
        HelperPodRequest::new("apps", "data-db-0", "20250101t120000-7f3a9c", purpose)
    }

    fn container(pod: &Pod) -> &Container {
        &pod.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn names_are_valid_deterministic_dns_labels() {
        assert_eq!(
            helper_pod_name(Purpose::Backup, "data-db-0", "20250101t120000-7f3a9c"),
            "pvbackup-backup-data-db-0-0-7f3a9c"
        );
        let long = "a-very-long-persistent-volume-claim-name-for-postgres-primary-cluster-0";
        let other = "a-very-long-persistent-volume-claim-name-for-postgres-primary-cluster-1";
        let n1 = helper_pod_name(Purpose::Restore, long, "run-42");
        let n2 = helper_pod_name(Purpose::Restore, other, "run-42");
        assert!(is_dns_label(&n1), "{n1}");
        assert!(is_dns_label(&n2), "{n2}");
        assert_ne!(n1, n2, "hash keeps truncated names apart");
        assert_eq!(n1, helper_pod_name(Purpose::Restore, long, "run-42"));
        assert!(n1.starts_with("pvbackup-restore-a-very-long"));
        assert!(n1.ends_with("-run-42"));
        let max = "x".repeat(253);
        for (pvc, run) in [
            (max.as_str(), "R"),
            ("data.v1", "___"),
            ("Ünïcode", "ID With Spaces 99"),
            ("-", "-"),
        ] {
            for p in [Purpose::Backup, Purpose::Restore] {
                let n = helper_pod_name(p, pvc, run);
                assert!(is_dns_label(&n), "{n} from {pvc:?}/{run:?}");
            }
        }
    }

    #[test]
    fn metadata_labels_and_opt_outs() {
        let long_pvc = "p".repeat(200);
        let mut r = req(Purpose::Backup);
        r.pvc = long_pvc.clone();
        let pod = build_helper_pod(&r);
        let labels = pod.metadata.labels.as_ref().unwrap();
        let ann = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(labels[LABEL_NAME], "kubectl-pvbackup");
        assert_eq!(labels[LABEL_MANAGED_BY], "kubectl-pvbackup");
        assert_eq!(labels[LABEL_RUN_ID], "20250101t120000-7f3a9c");
        assert!(labels.values().all(|v| is_label_value(v)), "{labels:?}");
        assert_eq!(ann[LABEL_PVC], long_pvc, "full name kept in the annotation");
        assert_eq!(pod.metadata.namespace.as_deref(), Some("apps"));

        // Every injector's real opt-out key.
        assert_eq!(labels["sidecar.istio.io/inject"], "false");
        assert_eq!(ann["sidecar.istio.io/inject"], "false");
        assert_eq!(labels["istio.io/dataplane-mode"], "none");
        assert_eq!(ann["linkerd.io/inject"], "disabled");
        assert_eq!(ann["consul.hashicorp.com/connect-inject"], "false");
        assert_eq!(labels["kuma.io/sidecar-injection"], "disabled");
        assert_eq!(ann["openservicemesh.io/sidecar-injection"], "disabled");

        // And mesh detection agrees it is not a mesh pod, even in an ambient namespace.
        let ambient = namespace("apps", &[("istio.io/dataplane-mode", "ambient")]);
        assert_eq!(crate::discover::detect_mesh(&pod, Some(&ambient)), None);
    }

    #[test]
    fn pod_spec_basics() {
        let pod = build_helper_pod(&req(Purpose::Backup));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(
            spec.active_deadline_seconds,
            Some(DEFAULT_ACTIVE_DEADLINE_SECONDS)
        );
        assert_eq!(spec.affinity, None);
        assert_eq!(spec.tolerations, None);
        let c = container(&pod);
        assert_eq!(c.name, "pvbackup");
        assert_eq!(c.image.as_deref(), Some(DEFAULT_IMAGE));
        assert_eq!(
            c.command.as_ref().unwrap(),
            &["sh", "-c", WATCHDOG, "pvbackup-watchdog", "60", "/tmp"]
        );
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[ANNOTATION_LEASE],
            "60"
        );
        assert_eq!(mount_path(&pod, DATA_VOLUME).as_deref(), Some("/data"));
        assert_eq!(mount_path(&pod, TMP_VOLUME).as_deref(), Some("/tmp"));
        let res = c.resources.as_ref().unwrap();
        assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "50m");
        assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "32Mi");
        assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "256Mi");
        let tmp = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "tmp")
            .unwrap();
        assert!(tmp.empty_dir.is_some());
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.name == "tmp" && m.mount_path == "/tmp"));
        assert!(spec.security_context.as_ref().unwrap().fs_group.is_none());
    }

    #[test]
    fn read_only_mount_on_source_and_mount() {
        let pod = build_helper_pod(&req(Purpose::Backup));
        let spec = pod.spec.as_ref().unwrap();
        let data = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "data")
            .unwrap();
        let src = data.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(src.claim_name, "data-db-0");
        assert_eq!(src.read_only, Some(true));
        let m = container(&pod)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "data")
            .unwrap();
        assert_eq!(m.mount_path, "/data");
        assert_eq!(m.read_only, Some(true));

        let pod = build_helper_pod(&req(Purpose::Restore));
        let spec = pod.spec.as_ref().unwrap();
        let data = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "data")
            .unwrap();
        assert_eq!(
            data.persistent_volume_claim.as_ref().unwrap().read_only,
            Some(false)
        );
    }

    #[test]
    fn security_context_root_backup_and_restore() {
        for (purpose, caps) in [
            (Purpose::Backup, vec!["DAC_OVERRIDE"]),
            (
                Purpose::Restore,
                vec!["CHOWN", "FOWNER", "DAC_OVERRIDE", "FSETID"],
            ),
        ] {
            let pod = build_helper_pod(&req(purpose));
            let sc = container(&pod).security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.privileged, Some(false));
            let c = sc.capabilities.as_ref().unwrap();
            assert_eq!(c.drop.as_ref().unwrap(), &["ALL"]);
            assert_eq!(c.add.as_ref().unwrap(), &caps);
            assert!(caps
                .iter()
                .all(|c| BASELINE_ALLOWED_CAPABILITIES.contains(c)));
            let psc = pod
                .spec
                .as_ref()
                .unwrap()
                .security_context
                .as_ref()
                .unwrap();
            assert_eq!(psc.run_as_user, Some(0));
            assert_eq!(psc.run_as_non_root, None);
            assert_eq!(
                psc.seccomp_profile.as_ref().unwrap().type_,
                "RuntimeDefault"
            );
        }
    }

    #[test]
    fn security_context_non_root() {
        let mut r = req(Purpose::Backup);
        r.run_as_user = Some(1000);
        let pod = build_helper_pod(&r);
        let psc = pod
            .spec
            .as_ref()
            .unwrap()
            .security_context
            .as_ref()
            .unwrap();
        assert_eq!(psc.run_as_user, Some(1000));
        assert_eq!(psc.run_as_non_root, Some(true));
        let caps = container(&pod)
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(caps.add, None);
        assert_eq!(caps.drop.as_ref().unwrap(), &["ALL"]);
    }

    #[test]
    fn affinity_and_tolerations() {
        let mut r = req(Purpose::Backup);
        r.node = Some("ip-10-0-1-23.ec2.internal".into());
        r.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("db".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        }];
        let pod = build_helper_pod(&r);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.node_name, None,
            "pinned through the scheduler, not nodeName"
        );
        let terms = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let req0 = &terms[0].match_fields.as_ref().unwrap()[0];
        assert_eq!(req0.key, "metadata.name");
        assert_eq!(req0.operator, "In");
        assert_eq!(
            req0.values.as_ref().unwrap(),
            &["ip-10-0-1-23.ec2.internal"]
        );
        assert_eq!(spec.tolerations.as_ref().unwrap(), &r.tolerations);
    }

    #[test]
    fn psa_restricted_rejects_root_helper_with_options() {
        let ns = namespace(
            "secure",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        );
        let pod = build_helper_pod(&req(Purpose::Backup));
        let msg = podsecurity_conflict(&ns, &pod).expect("conflict");
        assert!(
            msg.contains("pod-security.kubernetes.io/enforce=restricted"),
            "{msg}"
        );
        assert!(msg.contains("runAsNonRoot"), "{msg}");
        assert!(msg.contains("UID 0"), "{msg}");
        assert!(msg.contains("adds DAC_OVERRIDE"), "{msg}");
        assert!(msg.contains("--run-as-user UID"), "{msg}");
        assert!(
            msg.contains("kubectl label --overwrite namespace secure pod-security.kubernetes.io/enforce=baseline"),
            "{msg}"
        );
        assert!(msg.contains("exemption"), "{msg}");
        // Nothing else we set trips restricted.
        assert!(
            !msg.contains("Seccomp")
                && !msg.contains("Privilege Escalation")
                && !msg.contains("Volume Types"),
            "{msg}"
        );
    }

    #[test]
    fn psa_restricted_admits_non_root_helper() {
        let ns = namespace(
            "secure",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        );
        let mut r = req(Purpose::Restore);
        r.run_as_user = Some(1000);
        assert_eq!(podsecurity_conflict(&ns, &build_helper_pod(&r)), None);
    }

    #[test]
    fn psa_baseline_and_privileged_admit_root_helpers() {
        for labels in [
            vec![("pod-security.kubernetes.io/enforce", "baseline")],
            vec![("pod-security.kubernetes.io/enforce", "privileged")],
            vec![],
        ] {
            let ns = namespace("apps", &labels);
            for p in [Purpose::Backup, Purpose::Restore] {
                assert_eq!(
                    podsecurity_conflict(&ns, &build_helper_pod(&req(p))),
                    None,
                    "{labels:?}"
                );
            }
        }
    }

    #[test]
    fn psa_baseline_flags_disallowed_capability() {
        let ns = namespace(
            "apps",
            &[("pod-security.kubernetes.io/enforce", "baseline")],
        );
        let mut pod = build_helper_pod(&req(Purpose::Backup));
        let c = &mut pod.spec.as_mut().unwrap().containers[0];
        c.security_context
            .as_mut()
            .unwrap()
            .capabilities
            .as_mut()
            .unwrap()
            .add = Some(vec!["DAC_READ_SEARCH".into()]);
        let msg = podsecurity_conflict(&ns, &pod).expect("conflict");
        assert!(
            msg.contains("adds DAC_READ_SEARCH, outside the allowed list"),
            "{msg}"
        );
        assert!(
            msg.contains("pod-security.kubernetes.io/enforce=privileged"),
            "{msg}"
        );
        assert!(!msg.contains("--run-as-user"), "{msg}");
    }
}

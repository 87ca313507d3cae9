//! Create-time admission for pods and PersistentVolumeClaims, in the real API server's order:
//!
//! 1. defaulting (pkg/apis/core/v1/defaults.go) and the built-in mutating admission plugins
//!    (ServiceAccount, Priority, DefaultTolerationSeconds, DefaultStorageClass,
//!    StorageObjectInUseProtection),
//! 2. mutating webhooks — here the service-mesh sidecar injectors (Istio, Linkerd, Consul, Kuma,
//!    OSM) — after which the object is defaulted again (webhook patches are decoded with
//!    defaulting, so injected containers get `terminationMessagePath` and friends),
//! 3. `PrepareForCreate` (status reset to `Pending` + QoS class) and strategy validation
//!    (pkg/apis/core/validation/validation.go), a 422 `Invalid`,
//! 4. validating admission: Pod Security Admission
//!    (staging/src/k8s.io/pod-security-admission), a 403 `Forbidden`. Because it runs after the
//!    mutating webhooks, injected sidecars are checked too — which is why a real Istio install
//!    without the CNI plugin cannot inject into a `baseline` namespace (istio-init adds
//!    NET_ADMIN/NET_RAW).
//!
//! The order is from staging/src/k8s.io/apiserver/pkg/endpoints/handlers/create.go (mutating
//! admission before `rest.BeforeCreate`, validating admission after it) and
//! staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go `Create`.

use serde_json::{json, Map, Value};

use crate::errors::{ApiError, Cause};

// =============================================================================================
// Public API

/// Control-plane-wide mesh settings (in real clusters these are flags of the mesh control
/// plane, not per-pod annotations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshSettings {
    /// istiod `ENABLE_NATIVE_SIDECARS=true` (pilot/pkg/features). The per-pod annotation
    /// `sidecar.istio.io/nativeSidecar` overrides it either way.
    pub istio_native_sidecars: bool,
    /// kuma-cp `experimental.sidecarContainers` / `KUMA_EXPERIMENTAL_SIDECAR_CONTAINERS=true`
    /// (Kuma has no per-pod switch for this).
    pub kuma_sidecar_containers: bool,
}

/// Admits a pod being created in `namespace` (the Namespace object): defaults, mesh sidecar
/// injection, validation, Pod Security Admission. Returns the warnings to send back
/// (`Warning:` headers), or the 422/403 the API server would answer.
pub fn admit_pod(pod: &mut Value, namespace: &Value) -> Result<Vec<String>, ApiError> {
    admit_pod_with(pod, namespace, &MeshSettings::default())
}

/// [`admit_pod`] with explicit control-plane mesh settings.
pub fn admit_pod_with(
    pod: &mut Value,
    namespace: &Value,
    mesh: &MeshSettings,
) -> Result<Vec<String>, ApiError> {
    if !pod.is_object() {
        *pod = json!({});
    }
    let ns_name = str_at(namespace, &["metadata", "name"]).to_string();
    // generateName is resolved in rest.BeforeCreate; do it here too if the caller has not.
    if str_at(pod, &["metadata", "name"]).is_empty() {
        let prefix = str_at(pod, &["metadata", "generateName"]).to_string();
        if !prefix.is_empty() {
            obj_mut(pod, "metadata").insert("name".into(), json!(generate_name(&prefix)));
        }
    }

    // (1) defaulting + built-in mutating plugins.
    default_pod(pod);
    admit_service_account(pod);
    admit_priority(pod);
    admit_default_toleration_seconds(pod);

    // (2) mutating webhooks, then defaulting again.
    inject_istio(pod, namespace, mesh);
    inject_linkerd(pod, namespace, &ns_name);
    inject_consul(pod, namespace);
    inject_kuma(pod, namespace, mesh);
    inject_osm(pod, namespace);
    default_pod(pod);

    // (3) PrepareForCreate + validation.
    // pkg/registry/core/pod/strategy.go PrepareForCreate: status = {phase: Pending, qosClass}.
    let qos = qos_class(pod);
    pod.as_object_mut().unwrap().insert(
        "status".into(),
        json!({"phase": "Pending", "qosClass": qos}),
    );
    let causes = validate_pod(pod);
    let name = str_at(pod, &["metadata", "name"]).to_string();
    if !causes.is_empty() {
        return Err(ApiError::invalid("Pod", "", &name, causes));
    }

    // (4) Pod Security Admission.
    pod_security(pod, namespace)
}

/// Admits a PersistentVolumeClaim being created: DefaultStorageClass, defaults, the
/// `kubernetes.io/pvc-protection` finalizer, `status.phase: Pending`, then validation.
pub fn admit_pvc(pvc: &mut Value, default_storage_class: Option<&str>) -> Result<(), ApiError> {
    if !pvc.is_object() {
        *pvc = json!({});
    }
    {
        let spec = obj_mut(pvc, "spec");
        // pkg/apis/core/v1/defaults.go SetDefaults_PersistentVolumeClaimSpec.
        if !spec.contains_key("volumeMode") {
            spec.insert("volumeMode".into(), json!("Filesystem"));
        }
    }
    // plugin/pkg/admission/storage/storageclass/setdefault/admission.go: only when
    // storageClassName is nil (an explicit "" means "no class") and the beta annotation is
    // absent.
    let has_beta = !at(
        pvc,
        &[
            "metadata",
            "annotations",
            "volume.beta.kubernetes.io/storage-class",
        ],
    )
    .is_null();
    if at(pvc, &["spec", "storageClassName"]).is_null() && !has_beta {
        if let Some(sc) = default_storage_class {
            obj_mut(pvc, "spec").insert("storageClassName".into(), json!(sc));
        }
    }
    // plugin/pkg/admission/storage/storageobjectinuseprotection/admission.go.
    {
        let meta = obj_mut(pvc, "metadata");
        let fins = meta.entry("finalizers").or_insert_with(|| json!([]));
        if !fins.is_array() {
            *fins = json!([]);
        }
        let arr = fins.as_array_mut().unwrap();
        if !arr.iter().any(|f| f == "kubernetes.io/pvc-protection") {
            arr.push(json!("kubernetes.io/pvc-protection"));
        }
    }
    // pkg/registry/core/persistentvolumeclaim/strategy.go PrepareForCreate.
    pvc.as_object_mut()
        .unwrap()
        .insert("status".into(), json!({"phase": "Pending"}));

    // validation.go ValidatePersistentVolumeClaimSpec.
    let mut causes = Vec::new();
    let name = str_at(pvc, &["metadata", "name"]).to_string();
    validate_object_name(
        &name,
        str_at(pvc, &["metadata", "generateName"]),
        &mut causes,
    );
    let modes: Vec<&str> = arr_at(pvc, &["spec", "accessModes"])
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    if modes.is_empty() {
        causes.push(required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    const SUPPORTED: [&str; 4] = [
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOnce",
        "ReadWriteOncePod",
    ];
    for m in &modes {
        if !SUPPORTED.contains(m) {
            causes.push(not_supported("spec.accessModes", m, &SUPPORTED));
        }
    }
    if modes.contains(&"ReadWriteOncePod") && modes.iter().any(|m| *m != "ReadWriteOncePod") {
        causes.push(forbidden(
            "spec.accessModes",
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    // fldPath.Child("resources").Key("storage") renders as `spec.resources[storage]`.
    match at(pvc, &["spec", "resources", "requests", "storage"]) {
        Value::Null => causes.push(required("spec.resources[storage]", "")),
        q => {
            let text = q
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| q.to_string());
            match parse_quantity(&text) {
                Some(v) if v > 0 => {}
                Some(_) => causes.push(invalid("spec.resources[storage]", &text, "must be greater than zero")),
                None => causes.push(invalid(
                    "spec.resources[storage]",
                    &text,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                )),
            }
        }
    }
    let vm = str_at(pvc, &["spec", "volumeMode"]);
    if vm != "Filesystem" && vm != "Block" {
        causes.push(not_supported(
            "spec.volumeMode",
            vm,
            &["Block", "Filesystem"],
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "PersistentVolumeClaim",
            "",
            &name,
            causes,
        ))
    }
}

/// `<prefix><5 random chars>`, as apiserver's `names.SimpleNameGenerator`
/// (staging/src/k8s.io/apiserver/pkg/storage/names/generate.go): the prefix is cut to 58
/// characters and the suffix drawn from `utilrand`'s alphabet (no vowels, no confusable
/// characters; staging/src/k8s.io/apimachinery/pkg/util/rand/rand.go).
pub fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    const MAX_GENERATED_NAME_LENGTH: usize = 63 - 5;
    let base: String = prefix.chars().take(MAX_GENERATED_NAME_LENGTH).collect();
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{base}{suffix}")
}

/// pkg/apis/core/helper/qos/qos.go `GetPodQOS` (cpu and memory only; init containers count).
pub fn qos_class(pod: &Value) -> &'static str {
    let mut requests: Vec<(String, i128)> = Vec::new();
    let mut limits: Vec<(String, i128)> = Vec::new();
    let mut is_guaranteed = true;
    let add = |list: &mut Vec<(String, i128)>, k: &str, v: i128| {
        if let Some(e) = list.iter_mut().find(|(n, _)| n == k) {
            e.1 += v;
        } else {
            list.push((k.to_string(), v));
        }
    };
    let all = arr_at(pod, &["spec", "containers"])
        .iter()
        .chain(arr_at(pod, &["spec", "initContainers"]).iter());
    for c in all {
        if let Some(reqs) = at(c, &["resources", "requests"]).as_object() {
            for (k, v) in reqs {
                if k != "cpu" && k != "memory" {
                    continue;
                }
                if let Some(q) = quantity_of(v).filter(|q| *q > 0) {
                    add(&mut requests, k, q);
                }
            }
        }
        let mut found = Vec::new();
        if let Some(lims) = at(c, &["resources", "limits"]).as_object() {
            for (k, v) in lims {
                if k != "cpu" && k != "memory" {
                    continue;
                }
                if let Some(q) = quantity_of(v).filter(|q| *q > 0) {
                    found.push(k.clone());
                    add(&mut limits, k, q);
                }
            }
        }
        if !(found.iter().any(|k| k == "cpu") && found.iter().any(|k| k == "memory")) {
            is_guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if is_guaranteed {
        for (k, req) in &requests {
            match limits.iter().find(|(n, _)| n == k) {
                Some((_, lim)) if lim == req => {}
                _ => {
                    is_guaranteed = false;
                    break;
                }
            }
        }
    }
    if is_guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

// =============================================================================================
// JSON helpers

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
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

/// The object at `v[key]`, created (or replaced, if not an object) as needed.
fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let m = v.as_object_mut().unwrap();
    let e = m.entry(key.to_string()).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut().unwrap()
}

fn arr_mut<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let e = m.entry(key.to_string()).or_insert_with(|| json!([]));
    if !e.is_array() {
        *e = json!([]);
    }
    e.as_array_mut().unwrap()
}

fn set_default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), v);
    }
}

fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    at(obj, &["metadata", "labels", key]).as_str()
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    at(obj, &["metadata", "annotations", key]).as_str()
}

/// Parses a resource.Quantity into pico-units (so `100m`, `0.1`, `1Gi` and `1e3` all compare
/// exactly). `None` when unparsable.
fn parse_quantity(s: &str) -> Option<i128> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (sign, s) = match s.as_bytes()[0] {
        b'-' => (-1i128, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    const SCALE: i128 = 1_000_000_000_000;
    let int: i128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut frac: i128 = 0;
    let mut unit = SCALE;
    for ch in frac_part.chars().take(12) {
        unit /= 10;
        frac += (ch as i128 - '0' as i128) * unit;
    }
    let base = int.checked_mul(SCALE)?.checked_add(frac)?;
    let value = match suffix {
        "" => base,
        "m" => base / 1000,
        "k" => base * 1000,
        "M" => base * 1_000_000,
        "G" => base * 1_000_000_000,
        "T" => base.checked_mul(1_000_000_000_000)?,
        "P" => base.checked_mul(1_000_000_000_000_000)?,
        "E" => base.checked_mul(1_000_000_000_000_000_000)?,
        "Ki" => base << 10,
        "Mi" => base << 20,
        "Gi" => base << 30,
        "Ti" => base.checked_mul(1 << 40)?,
        "Pi" => base.checked_mul(1 << 50)?,
        "Ei" => base.checked_mul(1 << 60)?,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if exp >= 0 {
                base.checked_mul(10i128.checked_pow(exp as u32)?)?
            } else {
                base / 10i128.checked_pow((-exp) as u32)?
            }
        }
        _ => return None,
    };
    Some(sign * value)
}

fn quantity_of(v: &Value) -> Option<i128> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        _ => None,
    }
}

// =============================================================================================
// Defaulting and built-in mutating admission

fn containers_mut<'a>(pod: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    pod.get_mut("spec")?.get_mut(key)?.as_array_mut()
}

/// pkg/apis/core/v1/defaults.go: SetDefaults_Pod, SetDefaults_PodSpec, SetDefaults_Container,
/// SetDefaults_ContainerPort, SetDefaults_Volume and friends.
fn default_pod(pod: &mut Value) {
    obj_mut(pod, "metadata");
    {
        let spec = obj_mut(pod, "spec");
        set_default(spec, "restartPolicy", json!("Always"));
        set_default(spec, "dnsPolicy", json!("ClusterFirst"));
        set_default(spec, "schedulerName", json!("default-scheduler"));
        set_default(spec, "terminationGracePeriodSeconds", json!(30));
        set_default(spec, "securityContext", json!({}));
        // SetDefaults_Pod: enableServiceLinks defaults to true.
        set_default(spec, "enableServiceLinks", json!(true));
        if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
            for v in vols.iter_mut().filter_map(Value::as_object_mut) {
                // SetDefaults_Volume: a volume with no source is an emptyDir.
                if v.keys().all(|k| k == "name") {
                    v.insert("emptyDir".into(), json!({}));
                }
                if let Some(hp) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
                    set_default(hp, "type", json!(""));
                }
                // SetDefaults_SecretVolumeSource & co: defaultMode 0644.
                for key in ["secret", "configMap", "downwardAPI", "projected"] {
                    if let Some(s) = v.get_mut(key).and_then(Value::as_object_mut) {
                        set_default(s, "defaultMode", json!(420));
                    }
                }
            }
        }
    }
    for key in ["initContainers", "containers"] {
        if let Some(list) = containers_mut(pod, key) {
            for c in list.iter_mut().filter_map(Value::as_object_mut) {
                default_container(c);
            }
        }
    }
}

fn default_container(c: &mut Map<String, Value>) {
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    if c.get("imagePullPolicy")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        c.insert("imagePullPolicy".into(), json!(default_pull_policy(image)));
    }
    // SetDefaults_Pod: requests default to limits when unset.
    let res = c.entry("resources").or_insert_with(|| json!({}));
    if let Some(res) = res.as_object_mut() {
        if let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() {
            let reqs = res.entry("requests").or_insert_with(|| json!({}));
            if let Some(reqs) = reqs.as_object_mut() {
                for (k, v) in limits {
                    reqs.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

/// SetDefaults_Container: `Always` when the tag is `latest` (an untagged, undigested reference
/// means `latest`, per parsers.ParseImageName), else `IfNotPresent`.
fn default_pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((n, _)) => (n, true),
        None => (image, false),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, t)| t);
    match tag {
        Some("latest") => "Always",
        Some(_) => "IfNotPresent",
        None if digest => "IfNotPresent",
        None => "Always",
    }
}

/// plugin/pkg/admission/serviceaccount/admission.go: serviceAccountName defaults to `default`;
/// the deprecated `serviceAccount` mirrors it (pkg/apis/core/v1/conversion.go).
///
/// Not modelled: the projected `kube-api-access-xxxxx` token volume the plugin also mounts.
fn admit_service_account(pod: &mut Value) {
    let spec = obj_mut(pod, "spec");
    let sa = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(sa));
    spec.insert("serviceAccount".into(), json!(sa));
}

/// plugin/pkg/admission/priority/admission.go: no priorityClassName and no global default
/// class -> priority 0, preemptionPolicy PreemptLowerPriority.
fn admit_priority(pod: &mut Value) {
    let spec = obj_mut(pod, "spec");
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

/// plugin/pkg/admission/defaulttolerationseconds/admission.go: NoExecute tolerations for the
/// not-ready and unreachable taints, 300s, unless the pod already tolerates them.
fn admit_default_toleration_seconds(pod: &mut Value) {
    let spec = obj_mut(pod, "spec");
    let tols = arr_mut(spec, "tolerations");
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = tols.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            (k == key || (k.is_empty() && op == "Exists"))
                && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            tols.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

// =============================================================================================
// Mesh sidecar injection (mutating webhooks)
//
// What every injector shares here, and how it differs from the real images:
// * The real proxies are Envoy/linkerd2-proxy binaries; kubesim runs every image with a busybox
//   userland, so injected proxies run PROXY_COMMAND: a loop that never exits on its own and
//   exits 0 on SIGTERM. That keeps the one property tests care about: like a real proxy, it
//   keeps running after the application container has exited, so a pod (e.g. a Job or a backup
//   helper pod) with a classic injected sidecar never reaches Succeeded. In native-sidecar form
//   (an init container with `restartPolicy: Always`) the kubelet stops it once the regular
//   containers have finished, exactly as the KEP-753 sidecar containers do.
// * The iptables init containers run INIT_COMMAND (`true`) instead of programming iptables.
// * Volumes that are `projected`/`downwardAPI`/`configMap`/`secret` in the real templates are
//   emptyDirs here (the runtime needs nothing else); all of those types are allowed by the
//   `restricted` Pod Security level, so PSA outcomes are unchanged.
// * Probes and lifecycle hooks of the real templates are omitted.

const PROXY_COMMAND: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done",
];
const INIT_COMMAND: &[&str] = &["true"];

fn proxy_command() -> Value {
    json!(PROXY_COMMAND)
}

/// YAML-1.1 truthiness as Istio's injectRequired reads annotations (`y`, `yes`, `true`, `on`).
fn truthy(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "y" | "yes" | "true" | "on")
}

fn first_app_container(pod: &Value) -> Option<String> {
    arr_at(pod, &["spec", "containers"])
        .first()
        .and_then(|c| c["name"].as_str())
        .map(str::to_string)
}

fn has_container(pod: &Value, name: &str) -> bool {
    arr_at(pod, &["spec", "containers"])
        .iter()
        .chain(arr_at(pod, &["spec", "initContainers"]).iter())
        .any(|c| c["name"] == name)
}

fn host_network(pod: &Value) -> bool {
    at(pod, &["spec", "hostNetwork"]).as_bool() == Some(true)
}

fn set_annotation(pod: &mut Value, key: &str, value: &str) {
    obj_mut(obj_mut_value(pod, "metadata"), "annotations").insert(key.into(), json!(value));
}

fn set_annotation_default(pod: &mut Value, key: &str, value: &str) {
    set_default(
        obj_mut(obj_mut_value(pod, "metadata"), "annotations"),
        key,
        json!(value),
    );
}

fn set_label(pod: &mut Value, key: &str, value: &str) {
    obj_mut(obj_mut_value(pod, "metadata"), "labels").insert(key.into(), json!(value));
}

fn obj_mut_value<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    obj_mut(v, key);
    v.get_mut(key).unwrap()
}

fn add_volumes(pod: &mut Value, vols: &[Value]) {
    let spec = obj_mut(pod, "spec");
    let list = arr_mut(spec, "volumes");
    for v in vols {
        if !list.iter().any(|e| e["name"] == v["name"]) {
            list.push(v.clone());
        }
    }
}

/// Where an injector puts its proxy container.
enum ProxyPlacement {
    /// Regular container at the end of `containers`.
    Last,
    /// Regular container at index 0 (Linkerd's proxy-await default).
    First,
    /// Native sidecar: an init container with `restartPolicy: Always`, right after `after`.
    Native { after: &'static str },
}

/// Inserts `init` (first among init containers, so it runs before the user's) and `proxy`.
fn place(pod: &mut Value, init: Value, mut proxy: Value, placement: ProxyPlacement) {
    let spec = obj_mut(pod, "spec");
    {
        let inits = arr_mut(spec, "initContainers");
        inits.insert(0, init);
    }
    match placement {
        ProxyPlacement::Last => arr_mut(spec, "containers").push(proxy),
        ProxyPlacement::First => arr_mut(spec, "containers").insert(0, proxy),
        ProxyPlacement::Native { after } => {
            proxy["restartPolicy"] = json!("Always");
            let inits = arr_mut(spec, "initContainers");
            let idx = inits
                .iter()
                .position(|c| c["name"] == after)
                .map(|i| i + 1)
                .unwrap_or(0);
            inits.insert(idx, proxy);
        }
    }
}

fn empty_dir(name: &str) -> Value {
    json!({"name": name, "emptyDir": {}})
}

fn memory_dir(name: &str) -> Value {
    json!({"name": name, "emptyDir": {"medium": "Memory"}})
}

pub const ISTIO_PROXY_IMAGE: &str = "docker.io/istio/proxyv2:1.22.3";
pub const LINKERD_VERSION: &str = "stable-2.14.10";
pub const LINKERD_PROXY_IMAGE: &str = "cr.l5d.io/linkerd/proxy:stable-2.14.10";
pub const CONSUL_DATAPLANE_IMAGE: &str = "hashicorp/consul-dataplane:1.4.2";
pub const KUMA_DP_IMAGE: &str = "docker.io/kumahq/kuma-dp:2.8.1";
pub const OSM_ENVOY_IMAGE: &str = "envoyproxy/envoy:v1.26.4";

/// Istio (istio/istio pkg/kube/inject/webhook.go + inject.go `injectRequired`, and the
/// `sidecar-injector` MutatingWebhookConfiguration from manifests/charts/istio-control/
/// istio-discovery/templates/mutatingwebhook.yaml).
///
/// Selection (the webhook's namespace/object selectors): namespace label
/// `istio-injection=enabled`; or namespace label `istio.io/rev=<rev>` when `istio-injection` is
/// absent; or — in a namespace with neither label — the pod label
/// `sidecar.istio.io/inject=true`. `istio-injection=disabled` turns all of it off.
/// Opt-out (injectRequired): the pod label `sidecar.istio.io/inject`, else the annotation of the
/// same name (the label wins); any non-empty value that is not y/yes/true/on means "do not
/// inject". Pods with hostNetwork are never injected.
///
/// Native sidecars: the per-pod annotation `sidecar.istio.io/nativeSidecar: "true"|"false"`
/// (added in Istio 1.24, istio/api annotation/annotations.yaml; it overrides istiod's
/// `ENABLE_NATIVE_SIDECARS`). Istio reads it from the pod only; here the namespace annotation of
/// the same name stands in for istiod's mesh-wide `ENABLE_NATIVE_SIDECARS=true`, as does
/// `MeshSettings::istio_native_sidecars`.
fn inject_istio(pod: &mut Value, ns: &Value, mesh: &MeshSettings) {
    if annotation(pod, "sidecar.istio.io/status").is_some() || has_container(pod, "istio-proxy") {
        return;
    }
    let ns_injection = label(ns, "istio-injection");
    let ns_rev = label(ns, "istio.io/rev");
    let pod_label = label(pod, "sidecar.istio.io/inject");
    let selected = match (ns_injection, ns_rev) {
        (Some("enabled"), _) => true,
        (Some(_), _) => false,
        (None, Some(_)) => true,
        (None, None) => pod_label == Some("true"),
    };
    if !selected || host_network(pod) {
        return;
    }
    let selector = pod_label
        .or_else(|| annotation(pod, "sidecar.istio.io/inject"))
        .unwrap_or("");
    if !selector.is_empty() && !truthy(selector) {
        return;
    }
    let rev = ns_rev.unwrap_or("default").to_string();
    let native = match annotation(pod, "sidecar.istio.io/nativeSidecar") {
        Some(v) => v == "true",
        None => {
            mesh.istio_native_sidecars
                || annotation(ns, "sidecar.istio.io/nativeSidecar") == Some("true")
        }
    };
    let default_container = first_app_container(pod);

    let init = json!({
        "name": "istio-init",
        "image": ISTIO_PROXY_IMAGE,
        "command": INIT_COMMAND,
        "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false, "privileged": false, "readOnlyRootFilesystem": false,
            "runAsGroup": 0, "runAsNonRoot": false, "runAsUser": 0,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
        }
    });
    let proxy = json!({
        "name": "istio-proxy",
        "image": ISTIO_PROXY_IMAGE,
        "command": proxy_command(),
        "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local", "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"],
        "env": [
            {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
            {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
            {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"}
        ],
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false, "privileged": false, "readOnlyRootFilesystem": true,
            "runAsGroup": 1337, "runAsNonRoot": true, "runAsUser": 1337,
            "capabilities": {"drop": ["ALL"]}
        },
        "volumeMounts": [
            {"name": "workload-socket", "mountPath": "/var/run/secrets/workload-spiffe-uds"},
            {"name": "credential-socket", "mountPath": "/var/run/secrets/credential-uds"},
            {"name": "workload-certs", "mountPath": "/var/run/secrets/workload-spiffe-credentials"},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
            {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
            {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"}
        ]
    });
    let volumes = [
        empty_dir("workload-socket"),
        empty_dir("credential-socket"),
        empty_dir("workload-certs"),
        memory_dir("istio-envoy"),
        empty_dir("istio-data"),
        empty_dir("istio-podinfo"),
        empty_dir("istio-token"),
        empty_dir("istiod-ca-cert"),
    ];
    let volume_names: Vec<Value> = volumes.iter().map(|v| v["name"].clone()).collect();
    place(
        pod,
        init,
        proxy,
        if native {
            ProxyPlacement::Native {
                after: "istio-init",
            }
        } else {
            ProxyPlacement::Last
        },
    );
    add_volumes(pod, &volumes);
    // inject.go: the status annotation lists what was injected (by name).
    let status = if native {
        json!({"initContainers": ["istio-init", "istio-proxy"], "containers": null, "volumes": volume_names, "imagePullSecrets": null, "revision": rev})
    } else {
        json!({"initContainers": ["istio-init"], "containers": ["istio-proxy"], "volumes": volume_names, "imagePullSecrets": null, "revision": rev})
    };
    set_annotation(pod, "sidecar.istio.io/status", &status.to_string());
    set_annotation(pod, "istio.io/rev", &rev);
    if let Some(c) = default_container {
        set_annotation_default(pod, "kubectl.kubernetes.io/default-container", &c);
        set_annotation_default(pod, "kubectl.kubernetes.io/default-logs-container", &c);
    }
    set_annotation_default(pod, "prometheus.io/path", "/stats/prometheus");
    set_annotation_default(pod, "prometheus.io/port", "15020");
    set_annotation_default(pod, "prometheus.io/scrape", "true");
    // pkg/kube/labels: canonical name = app.kubernetes.io/name, app, else the workload name.
    let canonical_name = label(pod, "service.istio.io/canonical-name")
        .or_else(|| label(pod, "app.kubernetes.io/name"))
        .or_else(|| label(pod, "app"))
        .map(str::to_string)
        .unwrap_or_else(|| workload_name(pod));
    let canonical_rev = label(pod, "service.istio.io/canonical-revision")
        .or_else(|| label(pod, "app.kubernetes.io/version"))
        .or_else(|| label(pod, "version"))
        .unwrap_or("latest")
        .to_string();
    set_label(pod, "security.istio.io/tlsMode", "istio");
    set_label(pod, "service.istio.io/canonical-name", &canonical_name);
    set_label(pod, "service.istio.io/canonical-revision", &canonical_rev);
}

/// The workload name Istio derives for a bare pod: its name, or its generateName without the
/// trailing dash.
fn workload_name(pod: &Value) -> String {
    let gen = str_at(pod, &["metadata", "generateName"]);
    if !gen.is_empty() {
        return gen.trim_end_matches('-').to_string();
    }
    str_at(pod, &["metadata", "name"]).to_string()
}

/// Linkerd (linkerd2 controller/proxy-injector/webhook.go, pkg/inject/inject.go): injects when
/// the pod's `linkerd.io/inject` annotation is `enabled` (or `ingress`), or when the pod has none
/// and its namespace's is `enabled`; `disabled` on the pod opts out. hostNetwork pods are
/// skipped. The proxy goes first among the containers (proxy-await, the default) and
/// `kubectl.kubernetes.io/default-container` keeps `kubectl exec/logs` on the app.
///
/// Native sidecars: `config.alpha.linkerd.io/proxy-enable-native-sidecar: "true"` (renamed
/// `config.beta.linkerd.io/...` in 2.18; both accepted) on the pod or, as Linkerd config
/// annotations are inherited, on the namespace. The knob arrived in Linkerd 2.15; with the
/// 2.14.10 image named here it is an anachronism kept for the tests.
fn inject_linkerd(pod: &mut Value, ns: &Value, ns_name: &str) {
    if has_container(pod, "linkerd-proxy") || host_network(pod) {
        return;
    }
    let selected = match annotation(pod, "linkerd.io/inject") {
        Some("enabled") | Some("ingress") => true,
        Some(_) => false,
        None => annotation(ns, "linkerd.io/inject") == Some("enabled"),
    };
    if !selected {
        return;
    }
    let native_key = |o: &Value| {
        annotation(o, "config.alpha.linkerd.io/proxy-enable-native-sidecar")
            .or_else(|| annotation(o, "config.beta.linkerd.io/proxy-enable-native-sidecar"))
            .map(|v| v == "true")
    };
    let native = native_key(pod).or_else(|| native_key(ns)).unwrap_or(false);
    let default_container = first_app_container(pod);

    let init = json!({
        "name": "linkerd-init",
        "image": "cr.l5d.io/linkerd/proxy-init:v2.2.3",
        "command": INIT_COMMAND,
        "args": ["--incoming-proxy-port", "4143", "--outgoing-proxy-port", "4140", "--proxy-uid", "2102", "--inbound-ports-to-ignore", "4190,4191,4567,4568", "--outbound-ports-to-ignore", "4567,4568"],
        "resources": {"limits": {"cpu": "100m", "memory": "20Mi"}, "requests": {"cpu": "100m", "memory": "20Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false, "privileged": false, "readOnlyRootFilesystem": true,
            "runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "volumeMounts": [{"name": "linkerd-proxy-init-xtables-lock", "mountPath": "/run"}]
    });
    let proxy = json!({
        "name": "linkerd-proxy",
        "image": LINKERD_PROXY_IMAGE,
        "command": proxy_command(),
        "env": [
            {"name": "_pod_name", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "_pod_ns", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "LINKERD2_PROXY_DESTINATION_SVC_ADDR", "value": "linkerd-dst-headless.linkerd.svc.cluster.local.:8086"}
        ],
        "ports": [
            {"containerPort": 4143, "name": "linkerd-proxy"},
            {"containerPort": 4191, "name": "linkerd-admin"}
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "runAsNonRoot": true, "runAsUser": 2102, "runAsGroup": 2102,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "volumeMounts": [
            {"name": "linkerd-identity-end-entity", "mountPath": "/var/run/linkerd/identity/end-entity"},
            {"name": "linkerd-identity-token", "mountPath": "/var/run/secrets/tokens"}
        ]
    });
    place(
        pod,
        init,
        proxy,
        if native {
            ProxyPlacement::Native {
                after: "linkerd-init",
            }
        } else {
            ProxyPlacement::First
        },
    );
    add_volumes(
        pod,
        &[
            empty_dir("linkerd-proxy-init-xtables-lock"),
            memory_dir("linkerd-identity-end-entity"),
            empty_dir("linkerd-identity-token"),
        ],
    );
    set_annotation(
        pod,
        "linkerd.io/created-by",
        &format!("linkerd/proxy-injector {LINKERD_VERSION}"),
    );
    set_annotation(pod, "linkerd.io/proxy-version", LINKERD_VERSION);
    set_annotation(pod, "linkerd.io/identity-mode", "default");
    if let Some(c) = default_container {
        set_annotation_default(pod, "kubectl.kubernetes.io/default-container", &c);
    }
    set_label(pod, "linkerd.io/control-plane-ns", "linkerd");
    set_label(pod, "linkerd.io/workload-ns", ns_name);
}

/// Consul (hashicorp/consul-k8s control-plane/connect-inject/webhook/mesh_webhook.go
/// `shouldInject`): the pod annotation `consul.hashicorp.com/connect-inject` decides when present
/// ("true"/"false", strconv.ParseBool); otherwise the webhook's default applies. consul-k8s has
/// no namespace label of its own — operators select namespaces with
/// `connectInject.namespaceSelector` and set `connectInject.default`; the namespace label
/// `consul.hashicorp.com/connect-inject: "true"` models "this namespace is selected with
/// default=true". Transparent proxy (the default) makes the init container root with NET_ADMIN.
/// consul-k8s can run consul-dataplane as a native sidecar only behind a Helm flag; only the
/// classic form is modelled.
fn inject_consul(pod: &mut Value, ns: &Value) {
    if annotation(pod, "consul.hashicorp.com/connect-inject-status") == Some("injected")
        || has_container(pod, "consul-dataplane")
    {
        return;
    }
    let parse_bool = |s: &str| match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    };
    let selected = match annotation(pod, "consul.hashicorp.com/connect-inject").and_then(parse_bool)
    {
        Some(b) => b,
        None => label(ns, "consul.hashicorp.com/connect-inject") == Some("true"),
    };
    if !selected {
        return;
    }
    let init = json!({
        "name": "consul-connect-inject-init",
        "image": "hashicorp/consul-k8s-control-plane:1.4.2",
        "command": INIT_COMMAND,
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "resources": {"limits": {"cpu": "50m", "memory": "150Mi"}, "requests": {"cpu": "50m", "memory": "25Mi"}},
        "securityContext": {
            "privileged": false, "runAsNonRoot": false, "runAsUser": 0, "runAsGroup": 0,
            "capabilities": {"add": ["NET_ADMIN"]}
        },
        "volumeMounts": [{"name": "consul-connect-inject-data", "mountPath": "/consul/connect-inject"}]
    });
    let proxy = json!({
        "name": "consul-dataplane",
        "image": CONSUL_DATAPLANE_IMAGE,
        "command": proxy_command(),
        "args": ["-addresses", "consul-server.consul.svc", "-grpc-port=8502", "-proxy-service-id-path=/consul/connect-inject/proxyid", "-log-level=info"],
        "env": [{"name": "DP_SERVICE_NODE_NAME", "value": "$(NODE_NAME)-virtual"}],
        "ports": [{"containerPort": 20200, "name": "prometheus"}],
        "securityContext": {
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "runAsNonRoot": true, "runAsUser": 5995, "runAsGroup": 5995
        },
        "volumeMounts": [{"name": "consul-connect-inject-data", "mountPath": "/consul/connect-inject"}]
    });
    place(pod, init, proxy, ProxyPlacement::Last);
    add_volumes(pod, &[memory_dir("consul-connect-inject-data")]);
    set_annotation(
        pod,
        "consul.hashicorp.com/connect-inject-status",
        "injected",
    );
    set_annotation(pod, "consul.hashicorp.com/connect-k8s-version", "v1.4.2");
    set_annotation(pod, "consul.hashicorp.com/consul-k8s-version", "v1.4.2");
    set_label(
        pod,
        "consul.hashicorp.com/connect-inject-status",
        "injected",
    );
    set_label(
        pod,
        "consul.hashicorp.com/connect-inject-managed-by",
        "consul-k8s-endpoints-controller",
    );
}

/// Kuma (kumahq/kuma pkg/plugins/runtime/k8s/webhooks/injector): the namespace label
/// `kuma.io/sidecar-injection: enabled` (or the same pod label) turns injection on; the pod label
/// `kuma.io/sidecar-injection: disabled` opts out. Native sidecars are a control-plane setting
/// (`experimental.sidecarContainers`), with kuma-sidecar placed after kuma-init.
fn inject_kuma(pod: &mut Value, ns: &Value, mesh: &MeshSettings) {
    if annotation(pod, "kuma.io/sidecar-injected") == Some("true")
        || has_container(pod, "kuma-sidecar")
    {
        return;
    }
    let selected = match label(pod, "kuma.io/sidecar-injection") {
        Some("enabled") | Some("true") => true,
        Some(_) => false,
        None => matches!(
            label(ns, "kuma.io/sidecar-injection"),
            Some("enabled") | Some("true")
        ),
    };
    if !selected {
        return;
    }
    let init = json!({
        "name": "kuma-init",
        "image": "docker.io/kumahq/kuma-init:2.8.1",
        "command": INIT_COMMAND,
        "args": ["--config-file", "/tmp/kumactl/config", "--redirect-outbound-port", "15001", "--redirect-inbound-port", "15006", "--kuma-dp-uid", "5678"],
        "resources": {"limits": {"cpu": "100m", "memory": "50M"}, "requests": {"cpu": "20m", "memory": "20M"}},
        "securityContext": {
            "runAsUser": 0, "runAsGroup": 0,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
        }
    });
    let proxy = json!({
        "name": "kuma-sidecar",
        "image": KUMA_DP_IMAGE,
        "command": proxy_command(),
        "args": ["run", "--log-level=info", "--concurrency=2"],
        "env": [{"name": "KUMA_CONTROL_PLANE_URL", "value": "https://kuma-control-plane.kuma-system:5678"}],
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": {"runAsUser": 5678, "runAsGroup": 5678, "readOnlyRootFilesystem": true},
        "volumeMounts": [{"name": "kuma-sidecar-tmp", "mountPath": "/tmp"}]
    });
    place(
        pod,
        init,
        proxy,
        if mesh.kuma_sidecar_containers {
            ProxyPlacement::Native { after: "kuma-init" }
        } else {
            ProxyPlacement::Last
        },
    );
    add_volumes(pod, &[empty_dir("kuma-sidecar-tmp")]);
    set_annotation(pod, "kuma.io/sidecar-injected", "true");
    set_annotation(pod, "kuma.io/mesh", "default");
    set_annotation(pod, "kuma.io/sidecar-uid", "5678");
    set_annotation(pod, "kuma.io/envoy-admin-port", "9901");
    set_annotation(pod, "kuma.io/transparent-proxying", "enabled");
}

/// Open Service Mesh (openservicemesh/osm pkg/injector/webhook.go `mustInject`): the namespace
/// must be monitored (label `openservicemesh.io/monitored-by`) and either it or the pod must
/// carry the annotation `openservicemesh.io/sidecar-injection: enabled`; the pod annotation
/// `disabled` opts out. OSM (archived in 2023) never supported native sidecars.
fn inject_osm(pod: &mut Value, ns: &Value) {
    if has_container(pod, "envoy") || label(ns, "openservicemesh.io/monitored-by").is_none() {
        return;
    }
    let selected = match annotation(pod, "openservicemesh.io/sidecar-injection") {
        Some("enabled") | Some("yes") | Some("true") => true,
        Some(_) => false,
        None => matches!(
            annotation(ns, "openservicemesh.io/sidecar-injection"),
            Some("enabled") | Some("yes") | Some("true")
        ),
    };
    if !selected {
        return;
    }
    let init = json!({
        "name": "osm-init",
        "image": "openservicemesh/init:v1.2.4",
        "command": INIT_COMMAND,
        "securityContext": {"privileged": false, "runAsNonRoot": false, "runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}}
    });
    let proxy = json!({
        "name": "envoy",
        "image": OSM_ENVOY_IMAGE,
        "command": proxy_command(),
        "args": ["--log-level", "error", "--config-path", "/etc/envoy/bootstrap.yaml", "--service-cluster", "default"],
        "ports": [{"containerPort": 15000, "name": "proxy-admin"}, {"containerPort": 15003, "name": "proxy-inbound"}, {"containerPort": 15010, "name": "proxy-metrics"}],
        "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 1500},
        "volumeMounts": [{"name": "envoy-bootstrap-config-volume", "mountPath": "/etc/envoy", "readOnly": true}]
    });
    place(pod, init, proxy, ProxyPlacement::Last);
    add_volumes(pod, &[empty_dir("envoy-bootstrap-config-volume")]);
    set_label(pod, "osm-proxy-uuid", &uuid_v4());
}

fn uuid_v4() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:01x}{:02x}-{:01x}{:01x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6] & 0x0f, b[7], 8 | (b[8] & 0x03), b[8] >> 4, b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

// =============================================================================================
// Validation (pkg/apis/core/validation/validation.go; field error texts from
// staging/src/k8s.io/apimachinery/pkg/util/validation/field/errors.go `ErrorBody`)

fn required(field: &str, detail: &str) -> Cause {
    let message = if detail.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {detail}")
    };
    Cause {
        field: field.to_string(),
        reason: "FieldValueRequired",
        message,
    }
}

fn invalid(field: &str, value: &str, detail: &str) -> Cause {
    Cause {
        field: field.to_string(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {value:?}: {detail}"),
    }
}

fn not_found(field: &str, value: &str) -> Cause {
    Cause {
        field: field.to_string(),
        reason: "FieldValueNotFound",
        message: format!("Not found: {value:?}"),
    }
}

fn duplicate(field: &str, value: &str) -> Cause {
    Cause {
        field: field.to_string(),
        reason: "FieldValueDuplicate",
        message: format!("Duplicate value: {value:?}"),
    }
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    Cause {
        field: field.to_string(),
        reason: "FieldValueNotSupported",
        message: format!(
            "Unsupported value: {value:?}: supported values: {}",
            list.join(", ")
        ),
    }
}

fn forbidden(field: &str, detail: &str) -> Cause {
    Cause {
        field: field.to_string(),
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {detail}"),
    }
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// apimachinery/pkg/util/validation/validation.go IsDNS1123Label: the messages, including the
/// doubled space RegexError produces between examples.
fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_dns1123_label(s) {
        errs.push(format!("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"));
    }
    errs
}

fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if !s.split('.').all(is_dns1123_label) {
        errs.push(format!("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"));
    }
    errs
}

/// ValidateObjectMeta with NameIsDNSSubdomain (pods, PVCs).
fn validate_object_name(name: &str, generate_name: &str, causes: &mut Vec<Cause>) {
    if name.is_empty() {
        if generate_name.is_empty() {
            causes.push(required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
        return;
    }
    for e in dns1123_subdomain_errors(name) {
        causes.push(invalid("metadata.name", name, &e));
    }
}

fn validate_pod(pod: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_object_name(
        str_at(pod, &["metadata", "name"]),
        str_at(pod, &["metadata", "generateName"]),
        &mut causes,
    );

    // ValidateVolumes: names are DNS labels and unique.
    let mut volume_names: Vec<&str> = Vec::new();
    for (i, v) in arr_at(pod, &["spec", "volumes"]).iter().enumerate() {
        let path = format!("spec.volumes[{i}].name");
        let n = str_at(v, &["name"]);
        if n.is_empty() {
            causes.push(required(&path, ""));
        } else {
            for e in dns1123_label_errors(n) {
                causes.push(invalid(&path, n, &e));
            }
            if volume_names.contains(&n) {
                causes.push(duplicate(&path, n));
            }
        }
        volume_names.push(n);
    }

    // validateNodeFieldSelectorRequirement: node fields take In or NotIn, one value, and only
    // the `metadata.name` key.
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    for (t, term) in terms.as_array().into_iter().flatten().enumerate() {
        for (i, f) in term["matchFields"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let base = format!("spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{t}].matchFields[{i}]");
            let op = str_at(f, &["operator"]);
            if op == "In" || op == "NotIn" {
                if f["values"].as_array().map_or(0, Vec::len) != 1 {
                    causes.push(required(
                        &format!("{base}.values"),
                        "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
                    ));
                }
            } else {
                causes.push(invalid(
                    &format!("{base}.operator"),
                    op,
                    "not a valid selector operator",
                ));
            }
            let key = str_at(f, &["key"]);
            if key != "metadata.name" {
                causes.push(invalid(
                    &format!("{base}.key"),
                    key,
                    "not a valid field selector key",
                ));
            }
        }
    }

    let containers = arr_at(pod, &["spec", "containers"]);
    let init_containers = arr_at(pod, &["spec", "initContainers"]);
    if containers.is_empty() {
        causes.push(required("spec.containers", ""));
    }
    // validateContainers, then validateInitContainers (whose names must also not collide with
    // the regular containers').
    let mut names: Vec<String> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let base = format!("spec.containers[{i}]");
        validate_container(c, &base, &volume_names, &mut names, &mut causes);
        if c.get("restartPolicy").is_some_and(|v| !v.is_null()) {
            causes.push(forbidden(
                &format!("{base}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    for (i, c) in init_containers.iter().enumerate() {
        let base = format!("spec.initContainers[{i}]");
        validate_container(c, &base, &volume_names, &mut names, &mut causes);
        if let Some(rp) = c.get("restartPolicy").and_then(Value::as_str) {
            if rp != "Always" {
                causes.push(not_supported(
                    &format!("{base}.restartPolicy"),
                    rp,
                    &["Always"],
                ));
            }
        }
    }

    // validateRestartPolicy.
    let rp = str_at(pod, &["spec", "restartPolicy"]);
    if rp.is_empty() {
        causes.push(required("spec.restartPolicy", ""));
    } else if !["Always", "OnFailure", "Never"].contains(&rp) {
        causes.push(not_supported(
            "spec.restartPolicy",
            rp,
            &["Always", "OnFailure", "Never"],
        ));
    }
    causes
}

fn validate_container(
    c: &Value,
    base: &str,
    volumes: &[&str],
    names: &mut Vec<String>,
    causes: &mut Vec<Cause>,
) {
    let name = str_at(c, &["name"]);
    let name_path = format!("{base}.name");
    if name.is_empty() {
        causes.push(required(&name_path, ""));
    } else {
        for e in dns1123_label_errors(name) {
            causes.push(invalid(&name_path, name, &e));
        }
        if names.iter().any(|n| n == name) {
            causes.push(duplicate(&name_path, name));
        } else {
            names.push(name.to_string());
        }
    }
    // "Image is required for all containers" (validateContainers / validateInitContainers).
    if str_at(c, &["image"]).trim().is_empty() {
        causes.push(required(&format!("{base}.image"), ""));
    }
    // ValidateVolumeMounts.
    let mut mount_paths: Vec<&str> = Vec::new();
    for (j, m) in arr_at(c, &["volumeMounts"]).iter().enumerate() {
        let mpath = format!("{base}.volumeMounts[{j}]");
        let vname = str_at(m, &["name"]);
        if vname.is_empty() {
            causes.push(required(&format!("{mpath}.name"), ""));
        } else if !volumes.contains(&vname) {
            causes.push(not_found(&format!("{mpath}.name"), vname));
        }
        let mount_path = str_at(m, &["mountPath"]);
        if mount_path.is_empty() {
            causes.push(required(&format!("{mpath}.mountPath"), ""));
        } else if mount_paths.contains(&mount_path) {
            causes.push(invalid(
                &format!("{mpath}.mountPath"),
                mount_path,
                "must be unique",
            ));
        }
        mount_paths.push(mount_path);
    }
}

// =============================================================================================
// Pod Security Admission (staging/src/k8s.io/pod-security-admission)

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Baseline,
    Restricted,
}

/// One failed check: ForbiddenReason and ForbiddenDetail.
struct Violation {
    reason: &'static str,
    detail: String,
}

fn joinq(items: &[String]) -> String {
    // policy/helpers.go joinQuote.
    if items.is_empty() {
        return String::new();
    }
    format!("\"{}\"", items.join("\", \""))
}

fn plural(singular: &'static str, plural: &'static str, n: usize) -> &'static str {
    if n == 1 {
        singular
    } else {
        plural
    }
}

/// policy/visitor.go visitContainers: init containers, then containers, then ephemeral ones.
fn all_containers(pod: &Value) -> Vec<&Value> {
    arr_at(pod, &["spec", "initContainers"])
        .iter()
        .chain(arr_at(pod, &["spec", "containers"]).iter())
        .chain(arr_at(pod, &["spec", "ephemeralContainers"]).iter())
        .collect()
}

fn cname(c: &Value) -> String {
    str_at(c, &["name"]).to_string()
}

fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// The checks in evaluation order: baseline IDs sorted, then restricted IDs sorted
/// (policy/registry.go `populate`); for `restricted`, capabilities_baseline, hostPathVolumes and
/// seccompProfile_baseline are overridden by their restricted counterparts.
fn evaluate(pod: &Value, level: Level) -> Vec<Violation> {
    type Check = fn(&Value) -> Option<Violation>;
    let baseline: [(&str, Check); 8] = [
        ("capabilities_baseline", check_capabilities_baseline),
        ("hostNamespaces", check_host_namespaces),
        ("hostPathVolumes", check_host_path_volumes),
        ("hostPorts", check_host_ports),
        ("privileged", check_privileged),
        ("procMount", check_proc_mount),
        ("seccompProfile_baseline", check_seccomp_baseline),
        ("sysctls", check_sysctls),
    ];
    let restricted: [(&str, Check); 6] = [
        ("allowPrivilegeEscalation", check_allow_privilege_escalation),
        ("capabilities_restricted", check_capabilities_restricted),
        ("restrictedVolumes", check_restricted_volumes),
        ("runAsNonRoot", check_run_as_non_root),
        ("runAsUser", check_run_as_user),
        ("seccompProfile_restricted", check_seccomp_restricted),
    ];
    const OVERRIDDEN: [&str; 3] = [
        "capabilities_baseline",
        "hostPathVolumes",
        "seccompProfile_baseline",
    ];
    let mut out = Vec::new();
    for (id, check) in baseline {
        if level == Level::Restricted && OVERRIDDEN.contains(&id) {
            continue;
        }
        out.extend(check(pod));
    }
    if level == Level::Restricted {
        for (_, check) in restricted {
            out.extend(check(pod));
        }
    }
    out
}

/// policy/checks.go AggregateCheckResult.ForbiddenDetail: `reason (detail), reason (detail)`.
fn forbidden_detail(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.to_string()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn level_of(ns: &Value, key: &str) -> Option<Level> {
    match label(ns, key) {
        Some("baseline") => Some(Level::Baseline),
        Some("restricted") => Some(Level::Restricted),
        _ => None,
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Baseline => "baseline",
        Level::Restricted => "restricted",
    }
}

/// admission/admission.go EvaluatePod: enforce -> 403 `violates PodSecurity "<level>:latest"`;
/// warn -> a `would violate PodSecurity ...` warning (only on allowed requests). The
/// `*-version` labels are ignored (always `latest`).
fn pod_security(pod: &Value, ns: &Value) -> Result<Vec<String>, ApiError> {
    let name = str_at(pod, &["metadata", "name"]).to_string();
    if let Some(level) = level_of(ns, "pod-security.kubernetes.io/enforce") {
        let v = evaluate(pod, level);
        if !v.is_empty() {
            let msg = format!(
                "pods \"{name}\" is forbidden: violates PodSecurity \"{}:latest\": {}",
                level_name(level),
                forbidden_detail(&v)
            );
            return Err(ApiError::forbidden_message("pods", &name, msg));
        }
    }
    let mut warnings = Vec::new();
    if let Some(level) = level_of(ns, "pod-security.kubernetes.io/warn") {
        let v = evaluate(pod, level);
        if !v.is_empty() {
            warnings.push(format!(
                "would violate PodSecurity \"{}:latest\": {}",
                level_name(level),
                forbidden_detail(&v)
            ));
        }
    }
    Ok(warnings)
}

// --- baseline checks -------------------------------------------------------------------------

/// check_privileged.go.
fn check_privileged(pod: &Value) -> Option<Violation> {
    let bad: Vec<String> = all_containers(pod)
        .into_iter()
        .filter(|c| at(c, &["securityContext", "privileged"]).as_bool() == Some(true))
        .map(cname)
        .collect();
    (!bad.is_empty()).then(|| Violation {
        reason: "privileged",
        detail: format!(
            "{} {} must not set securityContext.privileged=true",
            plural("container", "containers", bad.len()),
            joinq(&bad)
        ),
    })
}

/// check_hostNamespaces.go.
fn check_host_namespaces(pod: &Value) -> Option<Violation> {
    let mut ns = Vec::new();
    for (field, text) in [
        ("hostNetwork", "hostNetwork=true"),
        ("hostPID", "hostPID=true"),
        ("hostIPC", "hostIPC=true"),
    ] {
        if at(pod, &["spec", field]).as_bool() == Some(true) {
            ns.push(text);
        }
    }
    (!ns.is_empty()).then(|| Violation {
        reason: "host namespaces",
        detail: ns.join(", "),
    })
}

/// check_hostPathVolumes.go.
fn check_host_path_volumes(pod: &Value) -> Option<Violation> {
    let bad: Vec<String> = arr_at(pod, &["spec", "volumes"])
        .iter()
        .filter(|v| !at(v, &["hostPath"]).is_null())
        .map(cname)
        .collect();
    (!bad.is_empty()).then(|| Violation {
        reason: "hostPath volumes",
        detail: format!("{} {}", plural("volume", "volumes", bad.len()), joinq(&bad)),
    })
}

/// check_hostPorts.go.
fn check_host_ports(pod: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut ports = Vec::new();
    for c in all_containers(pod) {
        let mut valid = true;
        for p in arr_at(c, &["ports"]) {
            let hp = at(p, &["hostPort"]).as_i64().unwrap_or(0);
            if hp != 0 {
                valid = false;
                ports.push(hp.to_string());
            }
        }
        if !valid {
            bad.push(cname(c));
        }
    }
    // sets.NewString(...).List() sorts as strings.
    let ports = sorted_unique(ports);
    (!bad.is_empty()).then(|| Violation {
        reason: "hostPort",
        detail: format!(
            "{} {} {} {} {}",
            plural("container", "containers", bad.len()),
            joinq(&bad),
            plural("uses", "use", bad.len()),
            plural("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    })
}

const BASELINE_CAPS: [&str; 13] = [
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

/// check_capabilities_baseline.go.
fn check_capabilities_baseline(pod: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut caps = Vec::new();
    for c in all_containers(pod) {
        let mut valid = true;
        for cap in arr_at(c, &["securityContext", "capabilities", "add"])
            .iter()
            .filter_map(Value::as_str)
        {
            if !BASELINE_CAPS.contains(&cap) {
                valid = false;
                caps.push(cap.to_string());
            }
        }
        if !valid {
            bad.push(cname(c));
        }
    }
    (!bad.is_empty()).then(|| Violation {
        reason: "non-default capabilities",
        detail: format!(
            "{} {} must not include {} in securityContext.capabilities.add",
            plural("container", "containers", bad.len()),
            joinq(&bad),
            joinq(&sorted_unique(caps))
        ),
    })
}

/// check_procMount.go.
fn check_proc_mount(pod: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = Vec::new();
    for c in all_containers(pod) {
        if let Some(pm) = at(c, &["securityContext", "procMount"]).as_str() {
            if pm != "Default" {
                bad.push(cname(c));
                types.push(pm.to_string());
            }
        }
    }
    (!bad.is_empty()).then(|| Violation {
        reason: "procMount",
        detail: format!(
            "{} {} must not set securityContext.procMount to {}",
            plural("container", "containers", bad.len()),
            joinq(&bad),
            joinq(&sorted_unique(types))
        ),
    })
}

fn valid_seccomp(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

/// check_seccompProfile_baseline.go (the 1.19+ field form).
fn check_seccomp_baseline(pod: &Value) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut values = Vec::new();
    let pod_type = at(pod, &["spec", "securityContext", "seccompProfile"]);
    if !pod_type.is_null() {
        let t = str_at(pod_type, &["type"]);
        if !valid_seccomp(t) {
            setters.push("pod".to_string());
            values.push(t.to_string());
        }
    }
    let mut bad = Vec::new();
    for c in all_containers(pod) {
        let sp = at(c, &["securityContext", "seccompProfile"]);
        if !sp.is_null() && !valid_seccomp(str_at(sp, &["type"])) {
            bad.push(cname(c));
            values.push(str_at(sp, &["type"]).to_string());
        }
    }
    if !bad.is_empty() {
        setters.push(format!(
            "{} {}",
            plural("container", "containers", bad.len()),
            joinq(&bad)
        ));
    }
    (!setters.is_empty()).then(|| Violation {
        reason: "seccompProfile",
        detail: format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            joinq(&sorted_unique(values))
        ),
    })
}

/// check_sysctls.go (the 1.0 safe set; later versions add a few more net.* sysctls).
fn check_sysctls(pod: &Value) -> Option<Violation> {
    const ALLOWED: [&str; 5] = [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    ];
    let bad: Vec<String> = arr_at(pod, &["spec", "securityContext", "sysctls"])
        .iter()
        .map(|s| str_at(s, &["name"]).to_string())
        .filter(|n| !ALLOWED.contains(&n.as_str()))
        .collect();
    (!bad.is_empty()).then(|| Violation {
        reason: "forbidden sysctls",
        detail: bad.join(", "),
    })
}

// --- restricted checks -----------------------------------------------------------------------

/// check_allowPrivilegeEscalation.go.
fn check_allow_privilege_escalation(pod: &Value) -> Option<Violation> {
    let bad: Vec<String> = all_containers(pod)
        .into_iter()
        .filter(|c| {
            at(c, &["securityContext", "allowPrivilegeEscalation"]).as_bool() != Some(false)
        })
        .map(cname)
        .collect();
    (!bad.is_empty()).then(|| Violation {
        reason: "allowPrivilegeEscalation != false",
        detail: format!(
            "{} {} must set securityContext.allowPrivilegeEscalation=false",
            plural("container", "containers", bad.len()),
            joinq(&bad)
        ),
    })
}

/// check_capabilities_restricted.go.
fn check_capabilities_restricted(pod: &Value) -> Option<Violation> {
    let mut missing_drop_all = Vec::new();
    let mut adding = Vec::new();
    let mut caps = Vec::new();
    for c in all_containers(pod) {
        let capabilities = at(c, &["securityContext", "capabilities"]);
        if capabilities.is_null() {
            missing_drop_all.push(cname(c));
            continue;
        }
        if !arr_at(capabilities, &["drop"]).iter().any(|d| d == "ALL") {
            missing_drop_all.push(cname(c));
        }
        let mut added = false;
        for cap in arr_at(capabilities, &["add"])
            .iter()
            .filter_map(Value::as_str)
        {
            if cap != "NET_BIND_SERVICE" {
                added = true;
                caps.push(cap.to_string());
            }
        }
        if added {
            adding.push(cname(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} {} must set securityContext.capabilities.drop=[\"ALL\"]",
            plural("container", "containers", missing_drop_all.len()),
            joinq(&missing_drop_all)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} {} must not include {} in securityContext.capabilities.add",
            plural("container", "containers", adding.len()),
            joinq(&adding),
            joinq(&sorted_unique(caps))
        ));
    }
    (!details.is_empty()).then(|| Violation {
        reason: "unrestricted capabilities",
        detail: details.join("; "),
    })
}

/// check_restrictedVolumes.go.
fn check_restricted_volumes(pod: &Value) -> Option<Violation> {
    const ALLOWED: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    const KNOWN: [&str; 21] = [
        "hostPath",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "nfs",
        "iscsi",
        "glusterfs",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "fc",
        "azureFile",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "portworxVolume",
        "scaleIO",
        "storageos",
    ];
    let mut bad = Vec::new();
    let mut types = Vec::new();
    for v in arr_at(pod, &["spec", "volumes"]) {
        let Some(obj) = v.as_object() else { continue };
        if ALLOWED
            .iter()
            .any(|k| obj.get(*k).is_some_and(|x| !x.is_null()))
        {
            continue;
        }
        bad.push(cname(v));
        let ty = KNOWN
            .iter()
            .find(|k| obj.get(**k).is_some_and(|x| !x.is_null()))
            .copied()
            .unwrap_or("unknown");
        types.push(ty.to_string());
    }
    let types = sorted_unique(types);
    (!bad.is_empty()).then(|| Violation {
        reason: "restricted volume types",
        detail: format!(
            "{} {} {} {} {}",
            plural("volume", "volumes", bad.len()),
            joinq(&bad),
            plural("uses", "use", bad.len()),
            plural(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            joinq(&types)
        ),
    })
}

/// check_runAsNonRoot.go.
fn check_run_as_non_root(pod: &Value) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut pod_non_root = false;
    match at(pod, &["spec", "securityContext", "runAsNonRoot"]).as_bool() {
        Some(false) => setters.push("pod".to_string()),
        Some(true) => pod_non_root = true,
        None => {}
    }
    let mut explicit_bad = Vec::new();
    let mut implicit_bad = Vec::new();
    for c in all_containers(pod) {
        match at(c, &["securityContext", "runAsNonRoot"]).as_bool() {
            Some(false) => explicit_bad.push(cname(c)),
            Some(true) => {}
            None => {
                if !pod_non_root {
                    implicit_bad.push(cname(c));
                }
            }
        }
    }
    if !explicit_bad.is_empty() {
        setters.push(format!(
            "{} {}",
            plural("container", "containers", explicit_bad.len()),
            joinq(&explicit_bad)
        ));
    }
    if !setters.is_empty() {
        return Some(Violation {
            reason: "runAsNonRoot != true",
            detail: format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        });
    }
    (!implicit_bad.is_empty()).then(|| Violation {
        reason: "runAsNonRoot != true",
        detail: format!(
            "pod or {} {} must set securityContext.runAsNonRoot=true",
            plural("container", "containers", implicit_bad.len()),
            joinq(&implicit_bad)
        ),
    })
}

/// check_runAsUser.go.
fn check_run_as_user(pod: &Value) -> Option<Violation> {
    let mut setters = Vec::new();
    if at(pod, &["spec", "securityContext", "runAsUser"]).as_i64() == Some(0) {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = all_containers(pod)
        .into_iter()
        .filter(|c| at(c, &["securityContext", "runAsUser"]).as_i64() == Some(0))
        .map(cname)
        .collect();
    if !bad.is_empty() {
        setters.push(format!(
            "{} {}",
            plural("container", "containers", bad.len()),
            joinq(&bad)
        ));
    }
    (!setters.is_empty()).then(|| Violation {
        reason: "runAsUser=0",
        detail: format!("{} must not set runAsUser=0", setters.join(" and ")),
    })
}

/// check_seccompProfile_restricted.go.
fn check_seccomp_restricted(pod: &Value) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut values = Vec::new();
    let mut pod_set = false;
    let pod_sp = at(pod, &["spec", "securityContext", "seccompProfile"]);
    if !pod_sp.is_null() {
        let t = str_at(pod_sp, &["type"]);
        if !valid_seccomp(t) {
            setters.push("pod".to_string());
            values.push(t.to_string());
        } else {
            pod_set = true;
        }
    }
    let mut explicit_bad = Vec::new();
    let mut implicit_bad = Vec::new();
    for c in all_containers(pod) {
        let sp = at(c, &["securityContext", "seccompProfile"]);
        if !sp.is_null() {
            if !valid_seccomp(str_at(sp, &["type"])) {
                explicit_bad.push(cname(c));
                values.push(str_at(sp, &["type"]).to_string());
            }
        } else if !pod_set {
            implicit_bad.push(cname(c));
        }
    }
    if !explicit_bad.is_empty() {
        setters.push(format!(
            "{} {}",
            plural("container", "containers", explicit_bad.len()),
            joinq(&explicit_bad)
        ));
    }
    if !setters.is_empty() {
        return Some(Violation {
            reason: "seccompProfile",
            detail: format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                joinq(&sorted_unique(values))
            ),
        });
    }
    (!implicit_bad.is_empty()).then(|| Violation {
        reason: "seccompProfile",
        detail: format!(
            "pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            plural("container", "containers", implicit_bad.len()),
            joinq(&implicit_bad)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(labels: Value, annotations: Value) -> Value {
        json!({"metadata": {"name": "shop", "labels": labels, "annotations": annotations}})
    }

    fn plain_ns() -> Value {
        ns(json!({}), json!({}))
    }

    fn busybox(name: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}
        })
    }

    fn names(pod: &Value, key: &str) -> Vec<String> {
        arr_at(pod, &["spec", key])
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn find<'a>(pod: &'a Value, key: &str, name: &str) -> &'a Value {
        arr_at(pod, &["spec", key])
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
    }

    #[test]
    fn defaults_like_the_apiserver() {
        let mut pod = busybox("p");
        pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80}]);
        let warnings = admit_pod(&mut pod, &plain_ns()).unwrap();
        assert!(warnings.is_empty());
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["priority"], 0);
        assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
        assert_eq!(
            spec["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ])
        );
        let c = &spec["containers"][0];
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["resources"], json!({}));
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
    }

    #[test]
    fn pull_policy_and_qos() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("busybox@sha256:abcd"), "IfNotPresent");

        let guaranteed = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "0.5", "memory": "1024Mi"}}}]}});
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let burstable =
            json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "100m"}}}]}});
        assert_eq!(qos_class(&burstable), "Burstable");
        let mixed = json!({"spec": {"containers": [
            {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}},
            {"resources": {}}
        ]}});
        assert_eq!(qos_class(&mixed), "Burstable");
        assert_eq!(
            qos_class(&json!({"spec": {"containers": [{}]}})),
            "BestEffort"
        );

        // Limits-only containers get their requests defaulted, so they are Guaranteed.
        let mut pod = busybox("g");
        pod["spec"]["containers"][0]["resources"] =
            json!({"limits": {"cpu": "1", "memory": "64Mi"}});
        admit_pod(&mut pod, &plain_ns()).unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "64Mi"})
        );
        assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    }

    #[test]
    fn generate_name_uses_the_apiserver_alphabet() {
        let n = generate_name("backup-");
        assert_eq!(n.len(), "backup-".len() + 5);
        assert!(n.starts_with("backup-"));
        assert!(n[7..]
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let long = "x".repeat(80);
        assert_eq!(generate_name(&long).len(), 63);
    }

    #[test]
    fn validation_errors() {
        let mut pod = busybox("p");
        pod["spec"]["containers"][0]["image"] = json!("");
        pod["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "data", "mountPath": "/data"}]);
        let err = admit_pod(&mut pod, &plain_ns()).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "Pod \"p\" is invalid: [spec.containers[0].image: Required value, spec.containers[0].volumeMounts[0].name: Not found: \"data\"]"
        );
        let causes = &err.to_status()["details"]["causes"];
        assert_eq!(causes[1]["reason"], "FieldValueNotFound");
        assert_eq!(
            causes[1]["field"],
            "spec.containers[0].volumeMounts[0].name"
        );

        let mut pod = json!({"metadata": {"name": "Bad_Name"}, "spec": {
            "restartPolicy": "Sometimes",
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
            "initContainers": [{"name": "c", "image": "busybox", "restartPolicy": "Never"}],
            "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": "/a"}]}]
        }});
        let err = admit_pod(&mut pod, &plain_ns()).unwrap_err();
        let fields: Vec<String> = err.to_status()["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c["field"].as_str().unwrap(),
                    c["message"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(fields, vec![
            "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string(),
            "spec.volumes[1].name: Duplicate value: \"v\"".to_string(),
            "spec.containers[0].volumeMounts[1].mountPath: Invalid value: \"/a\": must be unique".to_string(),
            "spec.initContainers[0].name: Duplicate value: \"c\"".to_string(),
            "spec.initContainers[0].restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"".to_string(),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"".to_string(),
        ]);

        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        assert_eq!(
            admit_pod(&mut pod, &plain_ns()).unwrap_err().message,
            "Pod \"p\" is invalid: spec.containers: Required value"
        );
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "App", "image": "x"}]}});
        assert!(admit_pod(&mut pod, &plain_ns()).unwrap_err().message.contains("spec.containers[0].name: Invalid value: \"App\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc'"));
    }

    // ---- meshes ---------------------------------------------------------------------------

    #[test]
    fn istio_sidecar_and_native() {
        let nsv = ns(json!({"istio-injection": "enabled"}), json!({}));
        let mut pod = busybox("web");
        pod["metadata"]["labels"] = json!({"app": "web"});
        admit_pod(&mut pod, &nsv).unwrap();
        assert_eq!(names(&pod, "initContainers"), ["istio-init"]);
        assert_eq!(names(&pod, "containers"), ["c", "istio-proxy"]);
        let init = find(&pod, "initContainers", "istio-init");
        assert_eq!(init["image"], ISTIO_PROXY_IMAGE);
        assert_eq!(init["imagePullPolicy"], "IfNotPresent");
        assert_eq!(init["command"], json!(["true"]));
        let proxy = find(&pod, "containers", "istio-proxy");
        assert_eq!(proxy["command"], json!(PROXY_COMMAND));
        assert!(proxy.get("restartPolicy").is_none());
        let status: Value =
            serde_json::from_str(annotation(&pod, "sidecar.istio.io/status").unwrap()).unwrap();
        assert_eq!(status["initContainers"], json!(["istio-init"]));
        assert_eq!(status["containers"], json!(["istio-proxy"]));
        assert!(status["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!("istio-envoy")));
        assert_eq!(label(&pod, "security.istio.io/tlsMode"), Some("istio"));
        assert_eq!(label(&pod, "service.istio.io/canonical-name"), Some("web"));
        assert_eq!(
            annotation(&pod, "kubectl.kubernetes.io/default-container"),
            Some("c")
        );
        assert_eq!(pod["status"]["qosClass"], "Burstable");
        assert!(arr_at(&pod, &["spec", "volumes"])
            .iter()
            .any(|v| v["name"] == "istio-data"));

        let mut native = busybox("job");
        native["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox"}]);
        native["metadata"]["annotations"] = json!({"sidecar.istio.io/nativeSidecar": "true"});
        admit_pod(&mut native, &nsv).unwrap();
        assert_eq!(
            names(&native, "initContainers"),
            ["istio-init", "istio-proxy", "setup"]
        );
        assert_eq!(names(&native, "containers"), ["c"]);
        assert_eq!(
            find(&native, "initContainers", "istio-proxy")["restartPolicy"],
            "Always"
        );
        assert_eq!(
            find(&native, "initContainers", "istio-init").get("restartPolicy"),
            None
        );

        // The namespace annotation (kubesim's stand-in for ENABLE_NATIVE_SIDECARS) and the
        // per-pod override.
        let native_ns = ns(
            json!({"istio.io/rev": "default"}),
            json!({"sidecar.istio.io/nativeSidecar": "true"}),
        );
        let mut p = busybox("a");
        admit_pod(&mut p, &native_ns).unwrap();
        assert_eq!(names(&p, "initContainers"), ["istio-init", "istio-proxy"]);
        let mut p = busybox("b");
        p["metadata"]["annotations"] = json!({"sidecar.istio.io/nativeSidecar": "false"});
        admit_pod(&mut p, &native_ns).unwrap();
        assert_eq!(names(&p, "containers"), ["c", "istio-proxy"]);
        let mut p = busybox("c");
        admit_pod_with(
            &mut p,
            &nsv,
            &MeshSettings {
                istio_native_sidecars: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(names(&p, "initContainers"), ["istio-init", "istio-proxy"]);
    }

    #[test]
    fn istio_opt_outs() {
        let nsv = ns(json!({"istio-injection": "enabled"}), json!({}));
        let mut p = busybox("a");
        p["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"});
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);
        assert!(at(&p, &["spec", "initContainers"]).is_null());

        let mut p = busybox("b");
        p["metadata"]["labels"] = json!({"sidecar.istio.io/inject": "false"});
        p["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "true"});
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(
            names(&p, "containers"),
            ["c"],
            "the label wins over the annotation"
        );

        let mut p = busybox("c");
        p["spec"]["hostNetwork"] = json!(true);
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);

        let disabled = ns(
            json!({"istio-injection": "disabled", "istio.io/rev": "default"}),
            json!({}),
        );
        let mut p = busybox("d");
        p["metadata"]["labels"] = json!({"sidecar.istio.io/inject": "true"});
        admit_pod(&mut p, &disabled).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);

        let mut p = busybox("e");
        admit_pod(&mut p, &plain_ns()).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);
        let mut p = busybox("f");
        p["metadata"]["labels"] = json!({"sidecar.istio.io/inject": "true"});
        admit_pod(&mut p, &plain_ns()).unwrap();
        assert_eq!(
            names(&p, "containers"),
            ["c", "istio-proxy"],
            "object-selector injection"
        );
    }

    #[test]
    fn linkerd_sidecar_native_and_opt_out() {
        let nsv = ns(json!({}), json!({"linkerd.io/inject": "enabled"}));
        let mut p = busybox("a");
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "initContainers"), ["linkerd-init"]);
        assert_eq!(names(&p, "containers"), ["linkerd-proxy", "c"]);
        assert_eq!(
            find(&p, "containers", "linkerd-proxy")["image"],
            LINKERD_PROXY_IMAGE
        );
        assert_eq!(
            find(&p, "containers", "linkerd-proxy")["command"],
            json!(PROXY_COMMAND)
        );
        assert_eq!(
            annotation(&p, "linkerd.io/proxy-version"),
            Some("stable-2.14.10")
        );
        assert_eq!(
            annotation(&p, "linkerd.io/created-by"),
            Some("linkerd/proxy-injector stable-2.14.10")
        );
        assert_eq!(
            annotation(&p, "kubectl.kubernetes.io/default-container"),
            Some("c")
        );
        assert_eq!(label(&p, "linkerd.io/control-plane-ns"), Some("linkerd"));

        let mut p = busybox("b");
        p["metadata"]["annotations"] =
            json!({"config.alpha.linkerd.io/proxy-enable-native-sidecar": "true"});
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(
            names(&p, "initContainers"),
            ["linkerd-init", "linkerd-proxy"]
        );
        assert_eq!(
            find(&p, "initContainers", "linkerd-proxy")["restartPolicy"],
            "Always"
        );
        assert_eq!(names(&p, "containers"), ["c"]);

        let mut p = busybox("c");
        p["metadata"]["annotations"] = json!({"linkerd.io/inject": "disabled"});
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);

        let mut p = busybox("d");
        p["metadata"]["annotations"] = json!({"linkerd.io/inject": "enabled"});
        admit_pod(&mut p, &plain_ns()).unwrap();
        assert_eq!(
            names(&p, "containers"),
            ["linkerd-proxy", "c"],
            "pod annotation alone injects"
        );
    }

    #[test]
    fn consul_sidecar_and_opt_out() {
        let nsv = ns(
            json!({"consul.hashicorp.com/connect-inject": "true"}),
            json!({}),
        );
        let mut p = busybox("a");
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "initContainers"), ["consul-connect-inject-init"]);
        assert_eq!(names(&p, "containers"), ["c", "consul-dataplane"]);
        assert_eq!(
            find(&p, "containers", "consul-dataplane")["image"],
            CONSUL_DATAPLANE_IMAGE
        );
        assert_eq!(
            annotation(&p, "consul.hashicorp.com/connect-inject-status"),
            Some("injected")
        );

        // Consul has no per-pod native-sidecar switch in the modelled versions.
        let mut p = busybox("b");
        p["metadata"]["annotations"] = json!({"consul.hashicorp.com/connect-inject": "false"});
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);

        let mut p = busybox("c");
        p["metadata"]["annotations"] = json!({"consul.hashicorp.com/connect-inject": "true"});
        admit_pod(&mut p, &plain_ns()).unwrap();
        assert_eq!(names(&p, "containers"), ["c", "consul-dataplane"]);
    }

    #[test]
    fn kuma_sidecar_native_and_opt_out() {
        let nsv = ns(json!({"kuma.io/sidecar-injection": "enabled"}), json!({}));
        let mut p = busybox("a");
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "initContainers"), ["kuma-init"]);
        assert_eq!(names(&p, "containers"), ["c", "kuma-sidecar"]);
        assert_eq!(
            find(&p, "containers", "kuma-sidecar")["image"],
            KUMA_DP_IMAGE
        );
        assert_eq!(annotation(&p, "kuma.io/sidecar-injected"), Some("true"));

        let mut p = busybox("b");
        admit_pod_with(
            &mut p,
            &nsv,
            &MeshSettings {
                kuma_sidecar_containers: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(names(&p, "initContainers"), ["kuma-init", "kuma-sidecar"]);
        assert_eq!(
            find(&p, "initContainers", "kuma-sidecar")["restartPolicy"],
            "Always"
        );

        let mut p = busybox("c");
        p["metadata"]["labels"] = json!({"kuma.io/sidecar-injection": "disabled"});
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);
    }

    #[test]
    fn osm_sidecar_and_opt_out() {
        let nsv = ns(
            json!({"openservicemesh.io/monitored-by": "osm"}),
            json!({"openservicemesh.io/sidecar-injection": "enabled"}),
        );
        let mut p = busybox("a");
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "initContainers"), ["osm-init"]);
        assert_eq!(names(&p, "containers"), ["c", "envoy"]);
        assert_eq!(find(&p, "containers", "envoy")["image"], OSM_ENVOY_IMAGE);
        assert_eq!(label(&p, "osm-proxy-uuid").unwrap().len(), 36);

        let mut p = busybox("b");
        p["metadata"]["annotations"] = json!({"openservicemesh.io/sidecar-injection": "disabled"});
        admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);

        // Not monitored: the annotation alone does nothing.
        let unmonitored = ns(
            json!({}),
            json!({"openservicemesh.io/sidecar-injection": "enabled"}),
        );
        let mut p = busybox("c");
        admit_pod(&mut p, &unmonitored).unwrap();
        assert_eq!(names(&p, "containers"), ["c"]);
    }

    // ---- Pod Security Admission -----------------------------------------------------------

    #[test]
    fn baseline_rejects_privileged_and_host_path() {
        let nsv = ns(
            json!({"pod-security.kubernetes.io/enforce": "baseline"}),
            json!({}),
        );
        let mut p = busybox("priv");
        p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        p["spec"]["volumes"] = json!([{"name": "host", "hostPath": {"path": "/"}}]);
        p["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "host", "mountPath": "/host"}]);
        let err = admit_pod(&mut p, &nsv).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(err.reason, "Forbidden");
        assert_eq!(
            err.message,
            "pods \"priv\" is forbidden: violates PodSecurity \"baseline:latest\": hostPath volumes (volume \"host\"), privileged (container \"c\" must not set securityContext.privileged=true)"
        );
        assert_eq!(
            err.to_status()["details"],
            json!({"name": "priv", "kind": "pods"})
        );

        // A plain pod is fine at baseline.
        let mut ok = busybox("ok");
        assert!(admit_pod(&mut ok, &nsv).unwrap().is_empty());

        // Istio without CNI cannot inject into a baseline namespace (istio-init's capabilities).
        let istio_baseline = ns(
            json!({"pod-security.kubernetes.io/enforce": "baseline", "istio-injection": "enabled"}),
            json!({}),
        );
        let mut p = busybox("meshed");
        let err = admit_pod(&mut p, &istio_baseline).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"meshed\" is forbidden: violates PodSecurity \"baseline:latest\": non-default capabilities (container \"istio-init\" must not include \"NET_ADMIN\", \"NET_RAW\" in securityContext.capabilities.add)"
        );

        let mut p = busybox("hn");
        p["spec"]["hostNetwork"] = json!(true);
        p["spec"]["hostPID"] = json!(true);
        p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
        let err = admit_pod(&mut p, &nsv).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"hn\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true, hostPID=true), hostPort (container \"c\" uses hostPort 8080)"
        );
    }

    #[test]
    fn restricted_rejects_root_busybox_and_accepts_compliant() {
        let nsv = ns(
            json!({"pod-security.kubernetes.io/enforce": "restricted"}),
            json!({}),
        );
        let mut p = busybox("root");
        let err = admit_pod(&mut p, &nsv).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"root\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );

        let mut p = busybox("explicit");
        p["spec"]["securityContext"] = json!({"runAsUser": 0, "runAsNonRoot": false, "seccompProfile": {"type": "Unconfined"}});
        p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {"path": "/tmp"}}]);
        p["spec"]["containers"][0]["securityContext"] = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN", "NET_BIND_SERVICE"]}});
        let err = admit_pod(&mut p, &nsv).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"explicit\" is forbidden: violates PodSecurity \"restricted:latest\": unrestricted capabilities (container \"c\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add), restricted volume types (volume \"h\" uses restricted volume type \"hostPath\"), runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false), runAsUser=0 (pod must not set runAsUser=0), seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")"
        );

        let mut good = busybox("good");
        good["spec"]["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
        good["spec"]["containers"][0]["securityContext"] =
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        good["spec"]["volumes"] =
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
        good["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "data", "mountPath": "/data"}]);
        assert_eq!(admit_pod(&mut good, &nsv).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn warn_label_warns_without_rejecting() {
        let nsv = ns(
            json!({"pod-security.kubernetes.io/warn": "baseline"}),
            json!({}),
        );
        let mut p = busybox("w");
        p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        let warnings = admit_pod(&mut p, &nsv).unwrap();
        assert_eq!(warnings, vec!["would violate PodSecurity \"baseline:latest\": privileged (container \"c\" must not set securityContext.privileged=true)".to_string()]);
    }

    // ---- PVCs -----------------------------------------------------------------------------

    #[test]
    fn pvc_defaults() {
        let mut pvc = json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        admit_pvc(&mut pvc, Some("standard")).unwrap();
        assert_eq!(pvc["spec"]["storageClassName"], "standard");
        assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
        assert_eq!(
            pvc["metadata"]["finalizers"],
            json!(["kubernetes.io/pvc-protection"])
        );
        assert_eq!(pvc["status"], json!({"phase": "Pending"}));

        // An explicit "" opts out of the default class.
        let mut pvc = json!({"metadata": {"name": "d"}, "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        admit_pvc(&mut pvc, Some("standard")).unwrap();
        assert_eq!(pvc["spec"]["storageClassName"], "");
        let mut pvc = json!({"metadata": {"name": "e"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        admit_pvc(&mut pvc, None).unwrap();
        assert!(pvc["spec"].get("storageClassName").is_none());
    }

    #[test]
    fn pvc_errors() {
        let mut pvc = json!({"metadata": {"name": "data"}, "spec": {}});
        let err = admit_pvc(&mut pvc, None).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "PersistentVolumeClaim \"data\" is invalid: [spec.accessModes: Required value: at least 1 access mode is required, spec.resources[storage]: Required value]"
        );
        let mut pvc = json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOncePod", "ReadWriteOnce"], "resources": {"requests": {"storage": "0"}}}});
        let err = admit_pvc(&mut pvc, None).unwrap_err();
        assert_eq!(
            err.message,
            "PersistentVolumeClaim \"data\" is invalid: [spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes, spec.resources[storage]: Invalid value: \"0\": must be greater than zero]"
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), parse_quantity("0.1"));
        assert_eq!(parse_quantity("1Gi"), parse_quantity("1024Mi"));
        assert_eq!(parse_quantity("1k"), parse_quantity("1e3"));
        assert_eq!(parse_quantity("bogus"), None);
    }
}

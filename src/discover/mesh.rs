//! Service-mesh detection for a single pod (pure: no API calls).
//!
//! [`detect_mesh`] looks at an already-fetched `Pod` (and optionally its `Namespace`) and
//! decides whether a mesh data plane serves it, which mesh, and how (classic sidecar,
//! Kubernetes native sidecar, or Istio ambient). Signals are tried from the most specific to
//! the least specific:
//!
//! 1. a proxy container, by its well-known name, in `spec.containers` (classic sidecar) or in
//!    `spec.initContainers` with `restartPolicy: Always` (native sidecar, KEP-753). An init
//!    container *without* `restartPolicy: Always` is a run-to-completion init step
//!    (`istio-init`, `linkerd-init`, `osm-init`, …) and is never taken for a proxy;
//! 2. the injection-status annotation/label each injector writes on the pods it mutated;
//! 3. Istio ambient enrolment (`istio.io/dataplane-mode=ambient` on the pod or its namespace,
//!    unless the pod opts out with `istio.io/dataplane-mode=none`).
//!
//! Sources for every key and container name are cited next to the constants below.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use serde::{Deserialize, Serialize};

/// A service mesh whose data plane kubectl-pvbackup recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mesh {
    Istio,
    Linkerd,
    Consul,
    Kuma,
    Osm,
}

impl Mesh {
    /// Every mesh, in display order.
    pub const ALL: [Mesh; 5] = [
        Mesh::Istio,
        Mesh::Linkerd,
        Mesh::Consul,
        Mesh::Kuma,
        Mesh::Osm,
    ];

    /// The lowercase name used in flags, tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Mesh::Istio => "istio",
            Mesh::Linkerd => "linkerd",
            Mesh::Consul => "consul",
            Mesh::Kuma => "kuma",
            Mesh::Osm => "osm",
        }
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--mesh` was given a name that is not one of the supported meshes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mesh {0:?}: expected one of istio, linkerd, consul, kuma, osm")]
pub struct UnknownMesh(pub String);

impl FromStr for Mesh {
    type Err = UnknownMesh;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mesh::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownMesh(s.to_string()))
    }
}

/// How the mesh data plane is attached to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyMode {
    /// The proxy is an ordinary entry of `spec.containers`.
    Sidecar,
    /// The proxy is an entry of `spec.initContainers` with `restartPolicy: Always`
    /// (Kubernetes native sidecar, beta and on by default since 1.29).
    NativeSidecar,
    /// No proxy in the pod: Istio's per-node ztunnel handles its traffic.
    Ambient,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Sidecar => "sidecar",
            ProxyMode::NativeSidecar => "native-sidecar",
            ProxyMode::Ambient => "ambient",
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict of [`detect_mesh`] for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshMembership {
    pub mesh: Mesh,
    pub mode: ProxyMode,
    /// Name of the proxy container, when one was found in the pod spec.
    pub proxy_container: Option<String>,
    /// Image of the proxy container.
    pub proxy_image: Option<String>,
    /// Proxy version: the image tag, else the version an injector recorded in an annotation.
    pub proxy_version: Option<String>,
    /// Human-readable description of the signal that decided, e.g.
    /// `container istio-proxy` or `namespace label istio.io/dataplane-mode=ambient`.
    pub evidence: String,
}

// ---------------------------------------------------------------------------------------------
// Well-known keys and names.
// ---------------------------------------------------------------------------------------------

/// Istio: the injected container is `istio-proxy` (and `istio-init` is its iptables init step);
/// with native sidecars enabled `istio-proxy` moves to `initContainers` with
/// `restartPolicy: Always` (istio.io/latest/blog/2023/native-sidecars/; kyma-project/istio
/// docs/user/00-20-istio-proxy-as-native-sidecar.md).
pub const ISTIO_PROXY_CONTAINER: &str = "istio-proxy";
/// Istio's injector records what it injected as JSON in this pod annotation, e.g.
/// `{"initContainers":["istio-init"],"containers":["istio-proxy"],...}`
/// (istio.io/latest/docs/reference/config/annotations/#SidecarStatus).
pub const ISTIO_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Istio per-pod injection switch, honoured as a label (preferred) and as an annotation
/// (istio.io/latest/docs/setup/additional-setup/sidecar-injection/).
pub const ISTIO_INJECT_KEY: &str = "sidecar.istio.io/inject";
/// Istio ambient enrolment: label `istio.io/dataplane-mode=ambient` on a namespace or a pod;
/// `none` on a pod opts it out (istio.io/latest/docs/ambient/usage/add-workloads/).
pub const ISTIO_DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// Linkerd: proxy container `linkerd-proxy`, init step `linkerd-init`
/// (linkerd/linkerd2 proxy-injector patches). With
/// `config.alpha.linkerd.io/proxy-enable-native-sidecar: "true"` the proxy becomes a native
/// sidecar init container.
pub const LINKERD_PROXY_CONTAINER: &str = "linkerd-proxy";
/// Linkerd writes the proxy version on every injected pod
/// (linkerd/linkerd2 charts/partials/templates/_metadata.tpl: `linkerd.io/proxy-version`).
pub const LINKERD_PROXY_VERSION_ANNOTATION: &str = "linkerd.io/proxy-version";
/// Linkerd injection switch (`enabled` / `disabled`), an annotation
/// (linkerd.io/2/features/proxy-injection/).
pub const LINKERD_INJECT_ANNOTATION: &str = "linkerd.io/inject";

/// Consul on Kubernetes ≥ 1.0 (consul-k8s, dataplane architecture) injects `consul-dataplane`.
pub const CONSUL_DATAPLANE_CONTAINER: &str = "consul-dataplane";
/// consul-k8s < 1.0 injected Envoy as `consul-connect-envoy-sidecar`
/// (hashicorp/consul-k8s connect-inject envoy_sidecar.go).
pub const CONSUL_LEGACY_ENVOY_CONTAINER: &str = "consul-connect-envoy-sidecar";
/// Some consul-k8s 0.x releases named it `envoy-sidecar`; only trusted together with the
/// Consul status annotation because the name is generic.
pub const CONSUL_ENVOY_SIDECAR_CONTAINER: &str = "envoy-sidecar";
/// Set to `injected` by the Consul injector, as an annotation and (newer releases) a label
/// (hashicorp/consul-k8s connect-inject: `keyInjectStatus`).
pub const CONSUL_INJECT_STATUS_KEY: &str = "consul.hashicorp.com/connect-inject-status";
/// Consul injection switch, a boolean annotation (`annotationInject` in consul-k8s).
pub const CONSUL_INJECT_ANNOTATION: &str = "consul.hashicorp.com/connect-inject";

/// Kuma / Kong Mesh: proxy container `kuma-sidecar`, init step `kuma-init`.
pub const KUMA_SIDECAR_CONTAINER: &str = "kuma-sidecar";
/// Set to `"true"` by the Kuma injector (kumahq/kuma pkg/plugins/runtime/k8s/metadata:
/// `KumaSidecarInjectedAnnotation`).
pub const KUMA_SIDECAR_INJECTED_ANNOTATION: &str = "kuma.io/sidecar-injected";
/// Kuma injection switch; a *label* since Kuma 2.x (older releases read an annotation)
/// (developer.konghq.com/mesh/annotations: `kuma.io/sidecar-injection`).
pub const KUMA_SIDECAR_INJECTION_KEY: &str = "kuma.io/sidecar-injection";

/// Open Service Mesh: Envoy runs as container `envoy` next to init step `osm-init`.
pub const OSM_ENVOY_CONTAINER: &str = "envoy";
/// OSM labels every injected pod with the proxy's UUID
/// (openservicemesh/osm pkg/constants: `EnvoyUniqueIDLabelName = "osm-proxy-uuid"`).
pub const OSM_PROXY_UUID_LABEL: &str = "osm-proxy-uuid";
/// OSM injection switch (`enabled` / `disabled`), an annotation on namespaces or pods
/// (openservicemesh/osm pkg/constants: `SidecarInjectionAnnotation`).
pub const OSM_SIDECAR_INJECTION_ANNOTATION: &str = "openservicemesh.io/sidecar-injection";

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    lookup(pod.metadata.labels.as_ref(), key)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    lookup(pod.metadata.annotations.as_ref(), key)
}

fn lookup<'a>(map: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.and_then(|m| m.get(key)).map(String::as_str)
}

/// Is this init container a native sidecar (`restartPolicy: Always`)?
pub fn is_native_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// The tag of an image reference, without any `@digest`; `None` for untagged images.
///
/// `docker.io/istio/proxyv2:1.22.1` → `1.22.1`; `localhost:5000/envoy` → `None`
/// (the colon belongs to the registry port); `img:1.2@sha256:…` → `1.2`.
pub fn image_tag(image: &str) -> Option<String> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let (_, tag) = last_segment.rsplit_once(':')?;
    (!tag.is_empty()).then(|| tag.to_string())
}

/// Which mesh a proxy container name belongs to, given the pod's other signals.
fn mesh_of_container(pod: &Pod, name: &str) -> Option<Mesh> {
    match name {
        ISTIO_PROXY_CONTAINER => Some(Mesh::Istio),
        LINKERD_PROXY_CONTAINER => Some(Mesh::Linkerd),
        CONSUL_DATAPLANE_CONTAINER | CONSUL_LEGACY_ENVOY_CONTAINER => Some(Mesh::Consul),
        CONSUL_ENVOY_SIDECAR_CONTAINER if consul_injected(pod) => Some(Mesh::Consul),
        KUMA_SIDECAR_CONTAINER => Some(Mesh::Kuma),
        // `envoy` is far too generic on its own; require OSM's own marks.
        OSM_ENVOY_CONTAINER if osm_marked(pod) => Some(Mesh::Osm),
        _ => None,
    }
}

fn consul_injected(pod: &Pod) -> bool {
    annotation(pod, CONSUL_INJECT_STATUS_KEY) == Some("injected")
        || label(pod, CONSUL_INJECT_STATUS_KEY) == Some("injected")
}

fn osm_marked(pod: &Pod) -> bool {
    label(pod, OSM_PROXY_UUID_LABEL).is_some()
        || matches!(
            annotation(pod, OSM_SIDECAR_INJECTION_ANNOTATION),
            Some(v) if v.eq_ignore_ascii_case("enabled")
        )
}

/// The version an injector recorded on the pod, for when the image carries no tag.
fn annotated_version(pod: &Pod, mesh: Mesh) -> Option<String> {
    match mesh {
        Mesh::Linkerd => annotation(pod, LINKERD_PROXY_VERSION_ANNOTATION)
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        // Istio's status annotation carries a revision, not a release; the others record none.
        _ => None,
    }
}

fn membership_from_container(
    pod: &Pod,
    mesh: Mesh,
    mode: ProxyMode,
    c: &Container,
) -> MeshMembership {
    let proxy_image = c.image.clone().filter(|i| !i.is_empty());
    let proxy_version = proxy_image
        .as_deref()
        .and_then(image_tag)
        .or_else(|| annotated_version(pod, mesh));
    let evidence = match mode {
        ProxyMode::NativeSidecar => {
            format!("init container {} with restartPolicy: Always", c.name)
        }
        _ => format!("container {}", c.name),
    };
    MeshMembership {
        mesh,
        mode,
        proxy_container: Some(c.name.clone()),
        proxy_image,
        proxy_version,
        evidence,
    }
}

/// Signal 1: a proxy container by name.
fn detect_by_container(pod: &Pod) -> Option<MeshMembership> {
    let spec = pod.spec.as_ref()?;
    for c in &spec.containers {
        if let Some(mesh) = mesh_of_container(pod, &c.name) {
            return Some(membership_from_container(pod, mesh, ProxyMode::Sidecar, c));
        }
    }
    for c in spec.init_containers.iter().flatten() {
        if !is_native_sidecar(c) {
            // istio-init, linkerd-init, kuma-init, osm-init... run to completion: not a proxy.
            continue;
        }
        if let Some(mesh) = mesh_of_container(pod, &c.name) {
            return Some(membership_from_container(
                pod,
                mesh,
                ProxyMode::NativeSidecar,
                c,
            ));
        }
    }
    None
}

/// Istio's status annotation lists the injected container names; use it to find a proxy whose
/// name was customised.
fn istio_status_container(pod: &Pod, status: &str) -> Option<MeshMembership> {
    let parsed: serde_json::Value = serde_json::from_str(status).ok()?;
    let spec = pod.spec.as_ref()?;
    let names = |key: &str| -> Vec<String> {
        parsed
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in names("containers") {
        if let Some(c) = spec.containers.iter().find(|c| c.name == name) {
            return Some(membership_from_container(
                pod,
                Mesh::Istio,
                ProxyMode::Sidecar,
                c,
            ));
        }
    }
    for name in names("initContainers") {
        if let Some(c) = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name && is_native_sidecar(c))
        {
            return Some(membership_from_container(
                pod,
                Mesh::Istio,
                ProxyMode::NativeSidecar,
                c,
            ));
        }
    }
    None
}

/// Signal 2: the injectors' status marks.
fn detect_by_status(pod: &Pod) -> Option<MeshMembership> {
    let annotated = |mesh: Mesh, evidence: String| MeshMembership {
        mesh,
        mode: ProxyMode::Sidecar,
        proxy_container: None,
        proxy_image: None,
        proxy_version: annotated_version(pod, mesh),
        evidence,
    };
    if let Some(status) = annotation(pod, ISTIO_STATUS_ANNOTATION) {
        if let Some(mut m) = istio_status_container(pod, status) {
            m.evidence = format!("annotation {ISTIO_STATUS_ANNOTATION} names {}", m.evidence);
            return Some(m);
        }
        return Some(annotated(
            Mesh::Istio,
            format!("annotation {ISTIO_STATUS_ANNOTATION}"),
        ));
    }
    if let Some(v) = annotation(pod, LINKERD_PROXY_VERSION_ANNOTATION) {
        return Some(annotated(
            Mesh::Linkerd,
            format!("annotation {LINKERD_PROXY_VERSION_ANNOTATION}={v}"),
        ));
    }
    if consul_injected(pod) {
        return Some(annotated(
            Mesh::Consul,
            format!("{CONSUL_INJECT_STATUS_KEY}=injected"),
        ));
    }
    if annotation(pod, KUMA_SIDECAR_INJECTED_ANNOTATION) == Some("true") {
        return Some(annotated(
            Mesh::Kuma,
            format!("annotation {KUMA_SIDECAR_INJECTED_ANNOTATION}=true"),
        ));
    }
    if label(pod, OSM_PROXY_UUID_LABEL).is_some() {
        return Some(annotated(
            Mesh::Osm,
            format!("label {OSM_PROXY_UUID_LABEL}"),
        ));
    }
    None
}

/// Signal 3: Istio ambient enrolment. A pod label wins over the namespace label, and
/// `istio.io/dataplane-mode=none` on the pod opts it out
/// (istio.io/latest/docs/ambient/usage/add-workloads/).
fn detect_ambient(pod: &Pod, namespace: Option<&Namespace>) -> Option<MeshMembership> {
    let pod_mode = label(pod, ISTIO_DATAPLANE_MODE_LABEL);
    let evidence = match pod_mode {
        Some("ambient") => format!("pod label {ISTIO_DATAPLANE_MODE_LABEL}=ambient"),
        Some(_) => return None, // `none` (opt-out) or anything else the pod chose
        None => {
            let ns_mode = namespace
                .and_then(|ns| lookup(ns.metadata.labels.as_ref(), ISTIO_DATAPLANE_MODE_LABEL));
            if ns_mode != Some("ambient") {
                return None;
            }
            format!("namespace label {ISTIO_DATAPLANE_MODE_LABEL}=ambient")
        }
    };
    Some(MeshMembership {
        mesh: Mesh::Istio,
        mode: ProxyMode::Ambient,
        proxy_container: None,
        proxy_image: None,
        proxy_version: None,
        evidence,
    })
}

/// Decide whether `pod` is served by a mesh data plane, and how.
///
/// `namespace` is the pod's namespace object when known; it is only needed for Istio ambient
/// enrolment at namespace level. A pod with both a sidecar and the ambient label is reported
/// as a sidecar pod: "the sidecar takes precedence over ztunnel for pods that have both"
/// (istio.io/latest/docs/ambient/migrate/enable-ambient-mode/).
pub fn detect_mesh(pod: &Pod, namespace: Option<&Namespace>) -> Option<MeshMembership> {
    detect_by_container(pod)
        .or_else(|| detect_by_status(pod))
        .or_else(|| detect_ambient(pod, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::fixtures::*;

    #[test]
    fn mesh_names_round_trip() {
        for m in Mesh::ALL {
            assert_eq!(m.to_string().parse::<Mesh>().unwrap(), m);
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::json!(m.as_str())
            );
        }
        assert_eq!("ISTIO".parse::<Mesh>().unwrap(), Mesh::Istio);
        let err = "cilium".parse::<Mesh>().unwrap_err();
        assert!(err
            .to_string()
            .contains("istio, linkerd, consul, kuma, osm"));
        assert_eq!(
            serde_json::to_value(ProxyMode::NativeSidecar).unwrap(),
            serde_json::json!("native-sidecar")
        );
    }

    #[test]
    fn image_tags() {
        assert_eq!(
            image_tag("docker.io/istio/proxyv2:1.22.1").as_deref(),
            Some("1.22.1")
        );
        assert_eq!(
            image_tag("cr.l5d.io/linkerd/proxy:edge-24.1.1").as_deref(),
            Some("edge-24.1.1")
        );
        assert_eq!(image_tag("localhost:5000/envoy"), None);
        assert_eq!(image_tag("envoy@sha256:abcd"), None);
        assert_eq!(image_tag("envoy:1.2@sha256:abcd").as_deref(), Some("1.2"));
        assert_eq!(image_tag("busybox"), None);
    }

    /// Every mesh, classic sidecar form: (pod, expected mesh, proxy container, version).
    #[test]
    fn sidecar_form_of_every_mesh() {
        let cases = [
            (istio_sidecar_pod("a"), Mesh::Istio, "istio-proxy", "1.22.1"),
            (
                linkerd_sidecar_pod("b"),
                Mesh::Linkerd,
                "linkerd-proxy",
                "edge-24.1.1",
            ),
            (
                consul_sidecar_pod("c"),
                Mesh::Consul,
                "consul-dataplane",
                "1.4.0",
            ),
            (
                consul_legacy_pod("d"),
                Mesh::Consul,
                "consul-connect-envoy-sidecar",
                "v1.13.0",
            ),
            (kuma_sidecar_pod("e"), Mesh::Kuma, "kuma-sidecar", "2.7.0"),
            (osm_sidecar_pod("f"), Mesh::Osm, "envoy", "v1.19.3"),
        ];
        for (pod, mesh, container, version) in cases {
            let m = detect_mesh(&pod, None).unwrap_or_else(|| panic!("{container} not detected"));
            assert_eq!(m.mesh, mesh, "{container}");
            assert_eq!(m.mode, ProxyMode::Sidecar, "{container}");
            assert_eq!(m.proxy_container.as_deref(), Some(container));
            assert_eq!(m.proxy_version.as_deref(), Some(version), "{container}");
            assert_eq!(m.evidence, format!("container {container}"));
        }
    }

    #[test]
    fn native_sidecar_form_of_every_mesh() {
        let cases = [
            (Mesh::Istio, "istio-proxy"),
            (Mesh::Linkerd, "linkerd-proxy"),
            (Mesh::Consul, "consul-dataplane"),
            (Mesh::Kuma, "kuma-sidecar"),
            (Mesh::Osm, "envoy"),
        ];
        for (mesh, container) in cases {
            let pod = native_sidecar_pod("n", mesh, container);
            let m = detect_mesh(&pod, None).unwrap_or_else(|| panic!("{container} not detected"));
            assert_eq!(m.mesh, mesh);
            assert_eq!(m.mode, ProxyMode::NativeSidecar, "{container}");
            assert_eq!(m.proxy_container.as_deref(), Some(container));
            assert!(
                m.evidence.contains("restartPolicy: Always"),
                "{}",
                m.evidence
            );
        }
    }

    #[test]
    fn init_container_without_always_is_not_a_proxy() {
        // Only istio-init / linkerd-init (run-to-completion) and no status annotation.
        let pod = pod_json(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "initContainers": [
                    {"name": "istio-init", "image": "docker.io/istio/proxyv2:1.22.1"},
                    {"name": "linkerd-init", "image": "cr.l5d.io/linkerd/proxy-init:v2.4.0"},
                    // Same name as the proxy, but not a native sidecar: not counted either.
                    {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.22.1"}
                ],
                "containers": [{"name": "app", "image": "nginx:1.27"}]
            }
        }));
        assert_eq!(detect_mesh(&pod, None), None);
    }

    #[test]
    fn generic_envoy_or_envoy_sidecar_alone_is_not_a_mesh() {
        let pod = plain_pod_with_containers("p", &["app", "envoy", "envoy-sidecar"]);
        assert_eq!(detect_mesh(&pod, None), None);
    }

    #[test]
    fn status_annotations_without_known_container() {
        let pod = pod_json(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": {
                "linkerd.io/proxy-version": "stable-2.14.10"
            }},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}
        }));
        let m = detect_mesh(&pod, None).unwrap();
        assert_eq!(m.mesh, Mesh::Linkerd);
        assert_eq!(m.proxy_container, None);
        assert_eq!(m.proxy_version.as_deref(), Some("stable-2.14.10"));
        assert!(m.evidence.contains("linkerd.io/proxy-version"));

        for (key, value, mesh) in [
            (
                "consul.hashicorp.com/connect-inject-status",
                "injected",
                Mesh::Consul,
            ),
            ("kuma.io/sidecar-injected", "true", Mesh::Kuma),
        ] {
            let pod = pod_json(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "annotations": {key: value}},
                "spec": {"containers": [{"name": "app"}]}
            }));
            assert_eq!(detect_mesh(&pod, None).unwrap().mesh, mesh, "{key}");
        }
        let osm = pod_json(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"osm-proxy-uuid": "1234"}},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert_eq!(detect_mesh(&osm, None).unwrap().mesh, Mesh::Osm);
    }

    #[test]
    fn linkerd_version_from_annotation_when_image_untagged() {
        let pod = pod_json(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": {
                "linkerd.io/proxy-version": "stable-2.14.10"
            }},
            "spec": {"containers": [
                {"name": "app"},
                {"name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy@sha256:0123"}
            ]}
        }));
        let m = detect_mesh(&pod, None).unwrap();
        assert_eq!(m.proxy_container.as_deref(), Some("linkerd-proxy"));
        assert_eq!(m.proxy_version.as_deref(), Some("stable-2.14.10"));
    }

    #[test]
    fn istio_status_annotation_finds_renamed_proxy() {
        let pod = pod_json(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": {
                "sidecar.istio.io/status":
                    "{\"initContainers\":[\"istio-init\",\"mesh-proxy\"],\"containers\":null}"
            }},
            "spec": {
                "initContainers": [
                    {"name": "istio-init"},
                    {"name": "mesh-proxy", "image": "istio/proxyv2:1.23.0", "restartPolicy": "Always"}
                ],
                "containers": [{"name": "app"}]
            }
        }));
        let m = detect_mesh(&pod, None).unwrap();
        assert_eq!(m.mesh, Mesh::Istio);
        assert_eq!(m.mode, ProxyMode::NativeSidecar);
        assert_eq!(m.proxy_container.as_deref(), Some("mesh-proxy"));
        assert_eq!(m.proxy_version.as_deref(), Some("1.23.0"));
    }

    #[test]
    fn ambient_via_namespace_label() {
        let ns = namespace("apps", &[("istio.io/dataplane-mode", "ambient")]);
        let pod = plain_pod_with_containers("p", &["app"]);
        let m = detect_mesh(&pod, Some(&ns)).unwrap();
        assert_eq!(m.mesh, Mesh::Istio);
        assert_eq!(m.mode, ProxyMode::Ambient);
        assert_eq!(m.proxy_container, None);
        assert_eq!(
            m.evidence,
            "namespace label istio.io/dataplane-mode=ambient"
        );
        // Without the namespace object there is no evidence.
        assert_eq!(detect_mesh(&pod, None), None);
    }

    #[test]
    fn ambient_via_pod_label() {
        let pod = pod_with_labels("p", &[("istio.io/dataplane-mode", "ambient")]);
        let m = detect_mesh(&pod, None).unwrap();
        assert_eq!(m.mode, ProxyMode::Ambient);
        assert_eq!(m.evidence, "pod label istio.io/dataplane-mode=ambient");
    }

    #[test]
    fn ambient_opt_out_with_none() {
        let ns = namespace("apps", &[("istio.io/dataplane-mode", "ambient")]);
        let pod = pod_with_labels("p", &[("istio.io/dataplane-mode", "none")]);
        assert_eq!(detect_mesh(&pod, Some(&ns)), None);
    }

    #[test]
    fn sidecar_wins_over_ambient_namespace() {
        let ns = namespace("apps", &[("istio.io/dataplane-mode", "ambient")]);
        let m = detect_mesh(&istio_sidecar_pod("p"), Some(&ns)).unwrap();
        assert_eq!(m.mode, ProxyMode::Sidecar);
    }

    #[test]
    fn non_mesh_pod() {
        let ns = namespace("apps", &[("istio-injection", "enabled")]);
        let pod = plain_pod_with_containers("p", &["app", "metrics"]);
        assert_eq!(detect_mesh(&pod, Some(&ns)), None);
    }
}

//! The OpenAPI documents of the served kinds: `/openapi/v2` (JSON, or gnostic protobuf as
//! client-go's `OpenAPISchema()` asks for it) and `/openapi/v3` with one document per
//! group-version (`/openapi/v3/api/v1?hash=…`), and server-side field validation from the same
//! schemas.
//!
//! The schemas are generated from the k8s-openapi types the rest of kubesim uses (their
//! `schemars` implementations), driven by the resource table, so a new built-in kind needs one
//! line in [`kind_schema`]. What k8s-openapi does not carry is added here, as the real
//! apiserver's documents have it: `x-kubernetes-group-version-kind` on each kind (kubectl finds
//! schemas by it: `kubectl explain`, client-side validation, `openapi.Resources.LookupResource`),
//! the strategic-merge directives `x-kubernetes-patch-merge-key` / `-patch-strategy` that
//! `kubectl apply` computes its patch with (the `patchStrategy`/`patchMergeKey` struct tags of
//! k8s.io/api/core/v1/types.go), and the `{Kind}List` schemas.
//!
//! Who reads what: kubectl ≥ 1.27 downloads `/openapi/v2` as protobuf for `create`/`apply`
//! with validation (kubectl `factory_client_access.go` `Validator`), then asks the v3 document
//! whether the PATCH operation of the kind takes `fieldValidation` (cli-runtime
//! `query_param_verifier_v3.go`); since it does, validation is left to the server, which
//! answers unknown fields as the apiserver does (`strict decoding error: unknown field …`).
//! `kubectl explain` reads the v3 documents.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512};

use crate::resources::{ResourceDef, RESOURCES};

const REF_V3: &str = "#/components/schemas/";
const REF_V2: &str = "#/definitions/";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

/// The k8s-openapi type of each served built-in kind. Kinds without one (custom resources) get
/// no schema and no protobuf, as on a real cluster whose CRD has no structural schema.
fn kind_schema(gen: &mut SchemaGenerator, group: &str, kind: &str) -> Option<()> {
    use k8s_openapi::api::authorization::v1 as authz;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::storage::v1 as storage;
    fn add<T: JsonSchema>(gen: &mut SchemaGenerator) -> Option<()> {
        gen.subschema_for::<T>();
        Some(())
    }
    match (group, kind) {
        ("", "Namespace") => add::<core::Namespace>(gen),
        ("", "Node") => add::<core::Node>(gen),
        ("", "Pod") => add::<core::Pod>(gen),
        ("", "PersistentVolumeClaim") => add::<core::PersistentVolumeClaim>(gen),
        ("", "PersistentVolume") => add::<core::PersistentVolume>(gen),
        ("", "Event") => add::<core::Event>(gen),
        ("storage.k8s.io", "StorageClass") => add::<storage::StorageClass>(gen),
        ("authorization.k8s.io", "SelfSubjectAccessReview") => {
            add::<authz::SelfSubjectAccessReview>(gen)
        }
        ("authorization.k8s.io", "SelfSubjectRulesReview") => {
            add::<authz::SelfSubjectRulesReview>(gen)
        }
        ("", "ServiceAccount") => add::<core::ServiceAccount>(gen),
        ("", "Secret") => add::<core::Secret>(gen),
        ("batch", "Job") => add::<k8s_openapi::api::batch::v1::Job>(gen),
        ("batch", "CronJob") => add::<k8s_openapi::api::batch::v1::CronJob>(gen),
        ("rbac.authorization.k8s.io", "Role") => add::<k8s_openapi::api::rbac::v1::Role>(gen),
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            add::<k8s_openapi::api::rbac::v1::RoleBinding>(gen)
        }
        ("authentication.k8s.io", "SelfSubjectReview") => {
            add::<k8s_openapi::api::authentication::v1::SelfSubjectReview>(gen)
        }
        _ => None,
    }
}

/// `(definition, property, merge key, strategy)`: the `patchMergeKey`/`patchStrategy` tags of
/// k8s.io/api (core/v1/types.go, meta/v1/types.go) on the fields of the served kinds.
const PATCH_DIRECTIVES: &[(&str, &str, Option<&str>, &str)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        None,
        "merge",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        Some("uid"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        Some("name"),
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        Some("ip"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        Some("topologyKey"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        Some("name"),
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        Some("containerPort"),
        "merge",
    ),
    ("io.k8s.api.core.v1.Container", "env", Some("name"), "merge"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        Some("mountPath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        Some("devicePath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        Some("containerPort"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        Some("mountPath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        Some("devicePath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "podIPs",
        Some("ip"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "hostIPs",
        Some("ip"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        Some("name"),
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", None, "merge"),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
];

fn gvk(def: &ResourceDef, kind: &str) -> Value {
    json!([{"group": def.group, "version": def.version, "kind": kind}])
}

/// Every schema (OpenAPI v3 form, `#/components/schemas/` references), by definition name.
pub fn definitions() -> &'static BTreeMap<String, Value> {
    static DEFS: LazyLock<BTreeMap<String, Value>> = LazyLock::new(|| {
        let mut gen = SchemaSettings::openapi3().into_generator();
        gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
        gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
        gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
        let served: Vec<&ResourceDef> = RESOURCES
            .iter()
            .filter(|d| kind_schema(&mut gen, d.group, d.kind).is_some())
            .collect();
        let mut defs: BTreeMap<String, Value> = gen.take_definitions(true).into_iter().collect();
        for d in served {
            let name = definition_name(d, d.kind);
            let Some(schema) = defs.get_mut(&name) else {
                continue;
            };
            schema["x-kubernetes-group-version-kind"] = gvk(d, d.kind);
            if !d.verbs.contains(&"list") {
                continue;
            }
            let list_kind = format!("{}List", d.kind);
            defs.insert(
                definition_name(d, &list_kind),
                json!({
                    "description": format!("{list_kind} is a list of {}.", d.kind),
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                        "items": {"type": "array", "items": {"$ref": format!("{REF_V3}{name}")}, "description": format!("List of {}.", d.plural)},
                        "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                        "metadata": {"$ref": format!("{REF_V3}{LIST_META}"), "description": "Standard list metadata."},
                    },
                    "x-kubernetes-group-version-kind": gvk(d, &list_kind),
                }),
            );
        }
        for (def, prop, key, strategy) in PATCH_DIRECTIVES {
            if let Some(p) = defs
                .get_mut(*def)
                .and_then(|d| d["properties"].get_mut(*prop))
            {
                p["x-kubernetes-patch-strategy"] = json!(strategy);
                if let Some(k) = key {
                    p["x-kubernetes-patch-merge-key"] = json!(k);
                }
            }
        }
        defs
    });
    &DEFS
}

/// `io.k8s.api.core.v1.Pod`, `io.k8s.api.storage.v1.StorageClass`: the names k8s-openapi gives.
pub fn definition_name(def: &ResourceDef, kind: &str) -> String {
    let package = match def.group {
        "" => "core",
        g => g.strip_suffix(".k8s.io").unwrap_or(g),
    };
    format!("io.k8s.api.{package}.{}.{kind}", def.version)
}

fn has_schema(def: &ResourceDef) -> bool {
    definitions().contains_key(&definition_name(def, def.kind))
}

/// The names of the definitions `root` refers to, itself included.
fn closure(roots: impl IntoIterator<Item = String>) -> BTreeMap<String, Value> {
    let defs = definitions();
    let mut out = BTreeMap::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(n) = todo.pop() {
        if out.contains_key(&n) {
            continue;
        }
        let Some(s) = defs.get(&n) else { continue };
        refs(s, &mut todo);
        out.insert(n, s.clone());
    }
    out
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.trim_start_matches(REF_V3).to_string());
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// `{"allOf": [{"$ref": R}], "description": D}` (OpenAPI v3's way to describe a reference)
/// becomes `{"$ref": R, "description": D}`, the form of the apiserver's v2 document.
fn collapse_all_of(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let single_ref = m
                .get("allOf")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
                .and_then(|a| a[0].get("$ref").cloned());
            if let Some(r) = single_ref {
                m.remove("allOf");
                m.insert("$ref".into(), r);
            }
            m.values_mut().for_each(collapse_all_of);
        }
        Value::Array(a) => a.iter_mut().for_each(collapse_all_of),
        _ => {}
    }
}

fn rewrite_refs(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(rest) = r.strip_prefix(from) {
                    *r = format!("{to}{rest}");
                }
            }
            m.values_mut().for_each(|v| rewrite_refs(v, from, to));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rewrite_refs(v, from, to)),
        _ => {}
    }
}

/// `/api/v1`, `/apis/storage.k8s.io/v1`.
fn prefix(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        format!("/api/{}", def.version)
    } else {
        format!("/apis/{}/{}", def.group, def.version)
    }
}

/// An operation of the served API: `(path, method, action, kind of the body/response)`.
struct Op {
    path: String,
    method: &'static str,
    action: &'static str,
    def: &'static ResourceDef,
    namespaced: bool,
    named: bool,
}

fn operations(group: &str, version: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    for def in RESOURCES
        .iter()
        .filter(|d| d.group == group && d.version == version && has_schema(d))
    {
        let base = if def.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", prefix(def), def.plural)
        } else {
            format!("{}/{}", prefix(def), def.plural)
        };
        let item = format!("{base}/{{name}}");
        let mut add = |path: &str, method, action, named| {
            ops.push(Op {
                path: path.to_string(),
                method,
                action,
                def,
                namespaced: def.namespaced,
                named,
            })
        };
        for verb in def.verbs {
            match *verb {
                "create" => add(&base, "post", "post", false),
                "list" => add(&base, "get", "list", false),
                "deletecollection" => add(&base, "delete", "deletecollection", false),
                "get" => add(&item, "get", "get", true),
                "update" => add(&item, "put", "put", true),
                "patch" => add(&item, "patch", "patch", true),
                "delete" => add(&item, "delete", "delete", true),
                _ => {}
            }
        }
        if def.namespaced && def.verbs.contains(&"list") {
            ops.push(Op {
                path: format!("{}/{}", prefix(def), def.plural),
                method: "get",
                action: "list",
                def,
                namespaced: false,
                named: false,
            });
        }
    }
    ops
}

/// `patchNamespacedPod`, `listPodForAllNamespaces`, `createNamespace`: the apiserver's names.
fn operation_id(op: &Op) -> String {
    let verb = match op.action {
        "post" => "create",
        "put" => "replace",
        "deletecollection" => "deleteCollection",
        "get" => "read",
        a => a,
    };
    let scope = if op.def.namespaced && op.namespaced {
        "Namespaced"
    } else {
        ""
    };
    let all = if op.def.namespaced && !op.namespaced {
        "ForAllNamespaces"
    } else {
        ""
    };
    format!("{verb}{scope}{}{all}", op.def.kind)
}

/// The query parameters each action takes (a subset of the apiserver's, all that kubesim
/// honours; `fieldValidation` is what makes kubectl leave validation to the server).
fn query_params(action: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    let write = vec![
        ("dryRun", "string", "When present, indicates that modifications should not be persisted."),
        ("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes."),
        ("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default), Strict."),
    ];
    match action {
        "post" | "put" | "patch" => write,
        "list" => vec![
            ("labelSelector", "string", "A selector to restrict the list of returned objects by their labels."),
            ("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields."),
            ("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
            ("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
            ("timeoutSeconds", "integer", "Timeout for the list/watch call."),
        ],
        "delete" | "deletecollection" => vec![
            ("dryRun", "string", "When present, indicates that modifications should not be persisted."),
            ("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted."),
        ],
        _ => Vec::new(),
    }
}

fn response_kind(op: &Op) -> String {
    match op.action {
        "list" => definition_name(op.def, &format!("{}List", op.def.kind)),
        "deletecollection" => "io.k8s.apimachinery.pkg.apis.meta.v1.Status".into(),
        _ => definition_name(op.def, op.def.kind),
    }
}

const MEDIA: &[&str] = &[
    "application/json",
    "application/yaml",
    crate::protobuf::CONTENT_TYPE,
];
/// No `application/apply-patch+yaml`: kubesim has no server-side apply (see README).
const PATCH_MEDIA: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

fn path_params(op: &Op) -> Vec<&'static str> {
    let mut p = Vec::new();
    if op.named {
        p.push("name");
    }
    if op.def.namespaced && op.namespaced {
        p.push("namespace");
    }
    p
}

/// The OpenAPI v3 document of one group-version, as `/openapi/v3/api/v1` serves it.
pub fn v3_document(group: &str, version: &str) -> Option<Value> {
    let ops = operations(group, version);
    if ops.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut roots = Vec::new();
    for op in &ops {
        let resp = response_kind(op);
        roots.push(resp.clone());
        let mut params: Vec<Value> = path_params(op)
            .into_iter()
            .map(|n| json!({"name": n, "in": "path", "required": true, "description": format!("{n} of the object"), "schema": {"type": "string", "uniqueItems": true}}))
            .collect();
        params.extend(query_params(op.action).into_iter().map(|(n, t, d)| {
            json!({"name": n, "in": "query", "description": d, "schema": {"type": t, "uniqueItems": true}})
        }));
        let content = |schema: &str| -> Value {
            MEDIA
                .iter()
                .map(|m| {
                    (
                        m.to_string(),
                        json!({"schema": {"$ref": format!("{REF_V3}{schema}")}}),
                    )
                })
                .collect::<Map<_, _>>()
                .into()
        };
        let mut o = json!({
            "tags": [format!("{}_{}", if group.is_empty() { "core" } else { group }, version)],
            "operationId": operation_id(op),
            "parameters": params,
            "responses": {"200": {"description": "OK", "content": content(&resp)}, "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": op.action,
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": op.def.kind},
        });
        match op.action {
            "post" | "put" => {
                o["requestBody"] = json!({"content": content(&definition_name(op.def, op.def.kind)), "required": true});
                if op.action == "post" {
                    o["responses"]["201"] =
                        json!({"description": "Created", "content": content(&resp)});
                }
            }
            "patch" => {
                let c: Map<String, Value> = PATCH_MEDIA
                    .iter()
                    .map(|m| (m.to_string(), json!({"schema": {"type": "object"}})))
                    .collect();
                o["requestBody"] = json!({"content": c, "required": true});
            }
            _ => {}
        }
        let entry = paths.entry(op.path.clone()).or_insert_with(|| json!({}));
        entry[op.method] = o;
    }
    let schemas = closure(roots);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::sim::SERVER_VERSION.2},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The group-versions with a v3 document: `api/v1`, `apis/storage.k8s.io/v1`, ….
pub fn v3_group_versions() -> Vec<(String, &'static str, &'static str)> {
    let mut out: Vec<(String, &str, &str)> = RESOURCES
        .iter()
        .filter(|d| has_schema(d))
        .map(|d| {
            let key = if d.group.is_empty() {
                format!("api/{}", d.version)
            } else {
                format!("apis/{}/{}", d.group, d.version)
            };
            (key, d.group, d.version)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A v3 document and its hash (upper-case hex SHA-512 of the JSON, as kube-openapi's
/// `handler3` computes the `?hash=` of `serverRelativeURL`), by `api/v1`-style key.
pub fn v3_served(key: &str) -> Option<(Vec<u8>, String)> {
    static DOCS: LazyLock<BTreeMap<String, (Vec<u8>, String)>> = LazyLock::new(|| {
        v3_group_versions()
            .into_iter()
            .filter_map(|(key, g, v)| {
                let doc = serde_json::to_vec(&v3_document(g, v)?).ok()?;
                let hash = hex_upper(&Sha512::digest(&doc));
                Some((key, (doc, hash)))
            })
            .collect()
    });
    DOCS.get(key).cloned()
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// `/openapi/v3`: where each group-version document lives.
pub fn v3_root() -> Value {
    let paths: Map<String, Value> = v3_group_versions()
        .into_iter()
        .filter_map(|(key, _, _)| {
            let (_, hash) = v3_served(&key)?;
            Some((
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
            ))
        })
        .collect();
    json!({ "paths": paths })
}

/// `/openapi/v2`: one Swagger 2.0 document for everything served.
pub fn v2_document() -> &'static Value {
    static DOC: LazyLock<Value> = LazyLock::new(|| {
        let mut paths = Map::new();
        let mut roots = Vec::new();
        for (_, g, v) in v3_group_versions() {
            for op in operations(g, v) {
                let resp = response_kind(&op);
                roots.push(resp.clone());
                let mut params: Vec<Value> = path_params(&op)
                    .into_iter()
                    .map(|n| json!({"name": n, "in": "path", "required": true, "type": "string", "uniqueItems": true, "description": format!("{n} of the object")}))
                    .collect();
                params.extend(query_params(op.action).into_iter().map(|(n, t, d)| {
                    json!({"name": n, "in": "query", "type": t, "uniqueItems": true, "description": d})
                }));
                if matches!(op.action, "post" | "put") {
                    params.push(json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": format!("{REF_V2}{}", definition_name(op.def, op.def.kind))}}));
                }
                if op.action == "patch" {
                    params.push(json!({"name": "body", "in": "body", "required": true, "schema": {"type": "object"}}));
                }
                let o = json!({
                    "tags": [format!("{}_{}", if g.is_empty() { "core" } else { g }, v)],
                    "operationId": operation_id(&op),
                    "consumes": if op.action == "patch" { json!(PATCH_MEDIA) } else { json!(["*/*"]) },
                    "produces": MEDIA,
                    "schemes": ["https"],
                    "parameters": params,
                    "responses": {"200": {"description": "OK", "schema": {"$ref": format!("{REF_V2}{resp}")}}, "401": {"description": "Unauthorized"}},
                    "x-kubernetes-action": op.action,
                    "x-kubernetes-group-version-kind": {"group": g, "version": v, "kind": op.def.kind},
                });
                let entry = paths.entry(op.path.clone()).or_insert_with(|| json!({}));
                entry[op.method] = o;
            }
        }
        let mut defs = Value::Object(closure(roots).into_iter().collect());
        rewrite_refs(&mut defs, REF_V3, REF_V2);
        collapse_all_of(&mut defs);
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": crate::sim::SERVER_VERSION.2},
            "paths": paths,
            "definitions": defs,
        })
    });
    &DOC
}

/// The media type client-go's `OpenAPISchema()` asks `/openapi/v2` for, and the one the
/// answer is labelled with (`@` is not valid in a Content-Type; kube-openapi `handler.go`
/// `subTypeProtobufDeprecated` / `subTypeProtobuf`).
pub const V2_PROTOBUF_ACCEPT: &[&str] = &[
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
];
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2` as gnostic's `openapi_v2.Document` protobuf (google/gnostic-models
/// openapiv2/OpenAPIv2.proto), which client-go unmarshals with `proto.Unmarshal`.
pub fn v2_protobuf() -> &'static [u8] {
    static PB: LazyLock<Vec<u8>> = LazyLock::new(|| gnostic::document(v2_document()));
    &PB
}

mod gnostic {
    //! Field numbers from google/gnostic-models openapiv2/OpenAPIv2.proto.
    use serde_json::Value;

    use crate::protobuf::{put_bytes, put_int};

    fn s(out: &mut Vec<u8>, tag: u32, v: &Value) {
        if let Some(x) = v.as_str() {
            put_bytes(out, tag, x.as_bytes());
        }
    }

    fn msg(out: &mut Vec<u8>, tag: u32, f: impl FnOnce(&mut Vec<u8>)) {
        let mut m = Vec::new();
        f(&mut m);
        put_bytes(out, tag, &m);
    }

    /// Vendor extensions: NamedAny {name = 1, value = 2 Any {yaml = 2}}; JSON is YAML.
    fn extensions(out: &mut Vec<u8>, tag: u32, obj: &serde_json::Map<String, Value>) {
        for (k, v) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
            msg(out, tag, |m| {
                put_bytes(m, 1, k.as_bytes());
                msg(m, 2, |a| put_bytes(a, 2, v.to_string().as_bytes()));
            });
        }
    }

    pub fn document(doc: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        s(&mut out, 1, &doc["swagger"]);
        msg(&mut out, 2, |m| {
            s(m, 1, &doc["info"]["title"]);
            s(m, 2, &doc["info"]["version"]);
        });
        // Paths {path = 2 NamedPathItem {name = 1, value = 2 PathItem}}.
        msg(&mut out, 8, |m| {
            for (path, item) in doc["paths"].as_object().into_iter().flatten() {
                msg(m, 2, |np| {
                    put_bytes(np, 1, path.as_bytes());
                    msg(np, 2, |pi| path_item(pi, item));
                });
            }
        });
        // Definitions {additional_properties = 1 NamedSchema {name = 1, value = 2}}.
        msg(&mut out, 9, |m| {
            for (name, sch) in doc["definitions"].as_object().into_iter().flatten() {
                msg(m, 1, |ns| {
                    put_bytes(ns, 1, name.as_bytes());
                    msg(ns, 2, |x| schema(x, sch));
                });
            }
        });
        out
    }

    fn path_item(out: &mut Vec<u8>, item: &Value) {
        for (method, tag) in [
            ("get", 2),
            ("put", 3),
            ("post", 4),
            ("delete", 5),
            ("patch", 8),
        ] {
            if let Some(op) = item.get(method) {
                msg(out, tag, |m| operation(m, op));
            }
        }
    }

    fn strings(out: &mut Vec<u8>, tag: u32, v: &Value) {
        for x in v.as_array().into_iter().flatten() {
            s(out, tag, x);
        }
    }

    fn operation(out: &mut Vec<u8>, op: &Value) {
        strings(out, 1, &op["tags"]);
        s(out, 3, &op["description"]);
        s(out, 5, &op["operationId"]);
        strings(out, 6, &op["produces"]);
        strings(out, 7, &op["consumes"]);
        for p in op["parameters"].as_array().into_iter().flatten() {
            // ParametersItem {parameter = 1 Parameter {body_parameter = 1, non_body_parameter = 2}}.
            msg(out, 8, |pi| {
                msg(pi, 1, |pm| {
                    if p["in"] == "body" {
                        // BodyParameter {description 1, name 2, in 3, required 4, schema 5}.
                        msg(pm, 1, |b| {
                            s(b, 1, &p["description"]);
                            s(b, 2, &p["name"]);
                            s(b, 3, &p["in"]);
                            put_int(b, 4, i64::from(p["required"] == true));
                            msg(b, 5, |x| schema(x, &p["schema"]));
                        });
                    } else {
                        msg(pm, 2, |nb| {
                            if p["in"] == "path" {
                                // PathParameterSubSchema {required 1, in 2, description 3, name 4, type 5}.
                                msg(nb, 4, |q| {
                                    put_int(q, 1, 1);
                                    s(q, 2, &p["in"]);
                                    s(q, 3, &p["description"]);
                                    s(q, 4, &p["name"]);
                                    s(q, 5, &p["type"]);
                                });
                            } else {
                                // QueryParameterSubSchema {in 2, description 3, name 4, type 6, unique_items 20}.
                                msg(nb, 3, |q| {
                                    s(q, 2, &p["in"]);
                                    s(q, 3, &p["description"]);
                                    s(q, 4, &p["name"]);
                                    s(q, 6, &p["type"]);
                                    put_int(q, 20, 1);
                                });
                            }
                        });
                    }
                });
            });
        }
        // Responses {response_code = 1 NamedResponseValue {name 1, value 2 ResponseValue
        // {response = 1 Response {description 1, schema 2 SchemaItem {schema = 1}}}}}.
        msg(out, 9, |rs| {
            for (code, r) in op["responses"].as_object().into_iter().flatten() {
                msg(rs, 1, |nr| {
                    put_bytes(nr, 1, code.as_bytes());
                    msg(nr, 2, |rv| {
                        msg(rv, 1, |resp| {
                            s(resp, 1, &r["description"]);
                            if !r["schema"].is_null() {
                                msg(resp, 2, |si| msg(si, 1, |x| schema(x, &r["schema"])));
                            }
                        });
                    });
                });
            }
        });
        strings(out, 10, &op["schemes"]);
        if let Some(o) = op.as_object() {
            extensions(out, 13, o);
        }
    }

    /// Schema {_ref 1, format 2, description 4, required 19, enum 20 (Any), additional_properties
    /// 21 {schema 1, boolean 2}, type 22 TypeItem {value 1}, items 23 ItemsItem {schema 1},
    /// all_of 24, properties 25 Properties {additional_properties 1 NamedSchema}, vendor 31}.
    fn schema(out: &mut Vec<u8>, sch: &Value) {
        s(out, 1, &sch["$ref"]);
        s(out, 2, &sch["format"]);
        s(out, 4, &sch["description"]);
        strings(out, 19, &sch["required"]);
        for e in sch["enum"].as_array().into_iter().flatten() {
            msg(out, 20, |a| put_bytes(a, 2, e.to_string().as_bytes()));
        }
        match &sch["additionalProperties"] {
            Value::Object(_) => msg(out, 21, |a| {
                msg(a, 1, |x| schema(x, &sch["additionalProperties"]))
            }),
            Value::Bool(b) => msg(out, 21, |a| put_int(a, 2, i64::from(*b))),
            _ => {}
        }
        match &sch["type"] {
            Value::String(t) => msg(out, 22, |ti| put_bytes(ti, 1, t.as_bytes())),
            Value::Array(ts) => msg(out, 22, |ti| {
                for t in ts.iter().filter_map(Value::as_str) {
                    put_bytes(ti, 1, t.as_bytes());
                }
            }),
            _ => {}
        }
        if !sch["items"].is_null() {
            msg(out, 23, |ii| msg(ii, 1, |x| schema(x, &sch["items"])));
        }
        for a in sch["allOf"].as_array().into_iter().flatten() {
            msg(out, 24, |x| schema(x, a));
        }
        if let Some(props) = sch["properties"].as_object() {
            msg(out, 25, |ps| {
                for (name, p) in props {
                    msg(ps, 1, |ns| {
                        put_bytes(ns, 1, name.as_bytes());
                        msg(ns, 2, |x| schema(x, p));
                    });
                }
            });
        }
        if let Some(o) = sch.as_object() {
            extensions(out, 31, o);
        }
    }
}

/// How the server treats unknown fields in a write (`?fieldValidation=`; the default is Warn,
/// as since Kubernetes 1.27).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(q: Option<&str>) -> Result<Self, String> {
        match q {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(format!(
                "fieldValidation parameter unsupported: {other}, valid values are Ignore, Warn, Strict"
            )),
        }
    }
}

/// Removes the fields of `obj` that the kind's schema does not declare, returning their paths
/// (`spec.containers[0].imagePullPolicyy`), as the apiserver's decoder drops them. Objects
/// without a declared structure (maps, `RawExtension`, `FieldsV1`) and kinds without a schema
/// keep everything.
pub fn prune_unknown(def: &ResourceDef, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(s) = definitions().get(&definition_name(def, def.kind)) {
        prune(s, obj, "", &mut unknown);
    }
    unknown
}

/// The schema a property stands for: through `$ref` and a single-element `allOf` (the v3 way
/// of giving a reference a description).
fn resolve(s: &Value) -> &Value {
    if let Some(r) = s["$ref"].as_str() {
        return definitions()
            .get(r.trim_start_matches(REF_V3))
            .unwrap_or(&Value::Null);
    }
    match s["allOf"].as_array() {
        Some(all) if all.len() == 1 => resolve(&all[0]),
        _ => s,
    }
}

fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    let schema = resolve(schema);
    match v {
        Value::Object(m) => {
            if let Some(props) = schema["properties"].as_object() {
                let drop: Vec<String> = m
                    .keys()
                    // `$patch`, `$setElementOrder/…`, `$retainKeys`: strategic-merge directives.
                    .filter(|k| {
                        !props.contains_key(*k)
                            && !k.starts_with('$')
                            && !(path.is_empty() && (*k == "apiVersion" || *k == "kind"))
                    })
                    .cloned()
                    .collect();
                for k in drop {
                    m.remove(&k);
                    unknown.push(join(path, &k));
                }
                for (k, val) in m.iter_mut() {
                    if let Some(ps) = props.get(k) {
                        prune(ps, val, &join(path, k), unknown);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for (k, val) in m.iter_mut() {
                    prune(
                        &schema["additionalProperties"],
                        val,
                        &join(path, k),
                        unknown,
                    );
                }
            }
        }
        Value::Array(a) if !schema["items"].is_null() => {
            for (i, val) in a.iter_mut().enumerate() {
                prune(&schema["items"], val, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_carry_their_gvk_and_patch_directives() {
        let defs = definitions();
        assert_eq!(
            defs["io.k8s.api.core.v1.PersistentVolumeClaim"]["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "PersistentVolumeClaim"}])
        );
        let containers = &defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        for (def, prop, _, _) in PATCH_DIRECTIVES {
            assert!(
                defs[*def]["properties"].get(*prop).is_some(),
                "{def}.{prop} exists in the k8s-openapi schema"
            );
        }
        assert!(defs.contains_key("io.k8s.api.core.v1.PodList"));
    }

    #[test]
    fn v3_documents_reference_only_what_they_contain() {
        let doc = v3_document("", "v1").unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut r = Vec::new();
        refs(&doc, &mut r);
        for name in r {
            assert!(
                schemas.contains_key(&name),
                "{name} is referenced but missing"
            );
        }
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        assert!(v3_document("snapshot.storage.k8s.io", "v1").is_none());
        let root = v3_root();
        let url = root["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/api/v1?hash=") && url.len() > 100);
    }

    #[test]
    fn unknown_fields_are_found_and_dropped() {
        let def = crate::resources::pods();
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "x", "labels": {"any": "thing"}, "colour": "red"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "imagePullPolicyy": "Always",
                "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80}]}]},
        });
        let unknown = prune_unknown(def, &mut pod);
        assert_eq!(
            unknown,
            ["metadata.colour", "spec.containers[0].imagePullPolicyy"]
        );
        assert!(pod["metadata"].get("colour").is_none());
        assert_eq!(pod["metadata"]["labels"]["any"], "thing");
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn the_v2_protobuf_carries_every_definition() {
        let pb = v2_protobuf();
        let defs = v2_document()["definitions"].as_object().unwrap();
        for name in defs.keys() {
            assert!(
                pb.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} missing from the protobuf document"
            );
        }
        assert!(
            v2_document()["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"]["$ref"]
                .as_str()
                .unwrap()
                .starts_with(REF_V2)
        );
    }
}

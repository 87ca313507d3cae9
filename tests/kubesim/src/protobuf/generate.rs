//! Generates `schema.json` from the prost types of the `k8s-pb` crate (the k8s.io/api
//! `generated.proto` files of Kubernetes 1.33, compiled by prost), for the messages reachable
//! from the kinds kubesim serves; JSON field names come from the k8s-openapi schemas (prost's
//! snake_case loses `podIP` vs `podIp`). `k8s-pb` is an optional dependency that is never
//! compiled: only its source is read, located with `cargo metadata`.
//!
//! `cargo test -p kubesim --lib protobuf::generate` fails when the file is stale;
//! `KUBESIM_REGENERATE=1` rewrites it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Shape;

/// A parsed prost field: tag, Rust name, shape, type (scalar or full message name).
#[derive(Debug, Clone)]
struct ProstField {
    tag: u32,
    rust_name: String,
    shape: Shape,
    ty: String,
}

fn k8s_pb_src() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--all-features"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkg = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "k8s-pb")
        .expect("k8s-pb is an (optional) dependency of kubesim");
    Path::new(pkg["manifest_path"].as_str().expect("manifest_path"))
        .parent()
        .expect("crate dir")
        .join("src")
}

/// `::prost::alloc::vec::Vec<super::super::X>` → `super::super::X` (the innermost type).
fn innermost(ty: &str) -> &str {
    let ty = ty.trim().trim_end_matches(',');
    match (ty.find('<'), ty.rfind('>')) {
        (Some(a), Some(b)) => {
            // rustfmt leaves a trailing comma in a multi-line generic list.
            let inner = ty[a + 1..b].trim().trim_end_matches(',');
            // A map's value: the part after the key type.
            let inner = match inner.rsplit_once(',') {
                Some((_, v)) if !v.contains('>') || v.contains('<') => v,
                _ => inner,
            };
            innermost(inner)
        }
        _ => ty,
    }
}

fn resolve(module: &[String], path: &str) -> String {
    let mut m = module.to_vec();
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    while segs.first() == Some(&"super") {
        segs.remove(0);
        m.pop();
    }
    m.extend(segs.iter().map(|s| s.to_string()));
    format!("io.k8s.{}", m.join("."))
}

/// A field declaration is complete at a `,` outside any `<…>`.
fn complete(decl: &str) -> bool {
    decl.ends_with(',') && decl.matches('<').count() == decl.matches('>').count()
}

fn parse_file(module: &[String], text: &str, out: &mut BTreeMap<String, Vec<ProstField>>) {
    let mut current: Option<String> = None;
    let mut attr: Option<String> = None;
    let mut pending: Option<(String, String)> = None; // (attr, field text so far)
    for line in text.lines() {
        let l = line.trim();
        if let Some((a, mut acc)) = pending.take() {
            acc.push_str(l);
            if complete(&acc) {
                add_field(module, current.as_deref(), &a, &acc, out);
            } else {
                pending = Some((a, acc));
            }
            continue;
        }
        if let Some(rest) = l.strip_prefix("pub struct ") {
            let name = rest.trim_end_matches('{').trim();
            let full = resolve(module, name);
            out.entry(full.clone()).or_default();
            current = Some(full);
        } else if l.starts_with("#[prost(") {
            attr = Some(l.to_string());
        } else if let (Some(a), true) = (attr.take(), l.starts_with("pub ")) {
            if complete(l) {
                add_field(module, current.as_deref(), &a, l, out);
            } else {
                pending = Some((a, l.to_string()));
            }
        } else if l == "}" {
            current = None;
        }
    }
}

fn add_field(
    module: &[String],
    msg: Option<&str>,
    attr: &str,
    decl: &str,
    out: &mut BTreeMap<String, Vec<ProstField>>,
) {
    let Some(msg) = msg else { return };
    let inner = attr.trim_start_matches("#[prost(").trim_end_matches(")]");
    let tag: u32 = inner
        .split("tag = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no tag in {attr}"));
    let (name, ty) = decl
        .trim_start_matches("pub ")
        .split_once(':')
        .unwrap_or_else(|| panic!("unparsed field {decl}"));
    let rust_name = name.trim().trim_start_matches("r#").to_string();
    let kind = inner.split(',').next().unwrap_or_default().trim();
    let scalar = |k: &str| match k {
        "string" | "bool" | "int32" | "int64" => k.to_string(),
        k if k.starts_with("bytes") => "bytes".into(),
        // Recorded as is; only a reachable field of such a type fails the generation.
        other => other.to_string(),
    };
    let (shape, ty) = if kind.starts_with("btree_map") || kind.starts_with("map") {
        let spec = inner.split('"').nth(1).expect("map spec");
        let (k, v) = spec.split_once(',').expect("map key, value");
        assert_eq!(
            k.trim(),
            "string",
            "{msg}.{rust_name}: map keys are strings"
        );
        let v = v.trim();
        let ty = if v == "message" {
            resolve(module, innermost(ty))
        } else {
            scalar(v)
        };
        (Shape::Map, ty)
    } else {
        let shape = if inner.contains("repeated") {
            Shape::List
        } else {
            Shape::One
        };
        let ty = if kind == "message" {
            resolve(module, innermost(ty))
        } else {
            scalar(kind)
        };
        (shape, ty)
    };
    out.get_mut(msg).expect("struct seen").push(ProstField {
        tag,
        rust_name,
        shape,
        ty,
    });
}

fn collect(dir: &Path, module: &mut Vec<String>, out: &mut BTreeMap<String, Vec<ProstField>>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("k8s-pb source dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            module.push(p.file_name().unwrap().to_string_lossy().into_owned());
            collect(&p, module, out);
            module.pop();
        } else if p.file_name().is_some_and(|n| n == "mod.rs") && !module.is_empty() {
            let text = std::fs::read_to_string(&p).expect("readable source");
            parse_file(module, &text, out);
        }
    }
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn camel(s: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The generated schema, as the text of `schema.json`.
fn generate() -> String {
    let mut prost = BTreeMap::new();
    collect(&k8s_pb_src(), &mut Vec::new(), &mut prost);
    let defs = crate::openapi::definitions();
    let mut roots: Vec<String> = Vec::new();
    for d in crate::resources::RESOURCES {
        let api_version = d.api_version();
        let (g, v) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let package = if g.is_empty() {
            "core"
        } else {
            g.strip_suffix(".k8s.io").unwrap_or(g)
        };
        for kind in [d.kind.to_string(), format!("{}List", d.kind)] {
            let name = format!("io.k8s.api.{package}.{v}.{kind}");
            if prost.contains_key(&name) {
                roots.push(name);
            }
        }
    }
    for meta in ["Status", "DeleteOptions", "WatchEvent"] {
        roots.push(format!("{}.{meta}", super::META));
    }
    let mut seen = BTreeSet::new();
    while let Some(m) = roots.pop() {
        if !seen.insert(m.clone()) {
            continue;
        }
        let fields = prost
            .get(&m)
            .unwrap_or_else(|| panic!("{m} is not a k8s-pb message"));
        for f in fields {
            if f.ty.starts_with("io.k8s.") {
                roots.push(f.ty.clone());
            } else {
                assert!(
                    matches!(
                        f.ty.as_str(),
                        "string" | "bool" | "int32" | "int64" | "bytes"
                    ),
                    "{m}.{}: the codec does not handle protobuf type {}",
                    f.rust_name,
                    f.ty
                );
            }
        }
    }
    let mut out = String::from("{\n");
    let mut first = true;
    for m in &seen {
        let props = defs
            .get(m)
            .and_then(|d| d["properties"].as_object())
            .cloned()
            .unwrap_or_default();
        let mut fields: Vec<Value> = prost[m]
            .iter()
            .map(|f| {
                let json_name = props
                    .keys()
                    .find(|k| normalize(k) == normalize(&f.rust_name))
                    .cloned();
                // A message field the JSON form does not have is a Go embedded struct
                // (`json:",inline"`): its fields sit in the parent's JSON.
                let shape = match &json_name {
                    None if !props.is_empty() && f.ty.starts_with("io.k8s.") => Shape::Inline,
                    _ => f.shape,
                };
                let json_name = json_name.unwrap_or_else(|| camel(&f.rust_name));
                serde_json::json!([f.tag, json_name, shape, f.ty])
            })
            .collect();
        fields.sort_by_key(|f| f[0].as_u64());
        if !first {
            out.push_str(",\n");
        }
        first = false;
        out.push_str(&format!(
            "{}: {}",
            serde_json::to_string(m).unwrap(),
            serde_json::to_string(&fields).unwrap()
        ));
    }
    out.push_str("\n}\n");
    out
}

#[test]
fn schema_json_is_generated_from_k8s_pb() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protobuf/schema.json");
    let fresh = generate();
    if std::env::var_os("KUBESIM_REGENERATE").is_some() {
        std::fs::write(&path, &fresh).expect("writing schema.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "tests/kubesim/src/protobuf/schema.json is stale: run \
         `KUBESIM_REGENERATE=1 cargo test -p kubesim --lib protobuf::generate` and commit it"
    );
}

#[test]
fn innermost_types() {
    assert_eq!(
        innermost("::core::option::Option<super::super::Time>,"),
        "super::super::Time"
    );
    assert_eq!(
        innermost("::prost::alloc::collections::BTreeMap<::prost::alloc::string::String, super::Quantity>,"),
        "super::Quantity"
    );
    assert_eq!(
        innermost(
            "::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,ExtraValue,>,"
        ),
        "ExtraValue"
    );
    assert_eq!(
        resolve(
            &["api".into(), "core".into(), "v1".into()],
            "super::super::super::apimachinery::pkg::apis::meta::v1::Time"
        ),
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
    );
}

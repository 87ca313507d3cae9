//! Just enough of the Kubernetes protobuf wire encoding to read the request bodies that
//! client-go's typed clients send. Since Kubernetes 1.32 (kubernetes/kubernetes#125314, "Use
//! protobuf for core clients") the generated clientsets default to
//! `Content-Type: application/vnd.kubernetes.protobuf` for built-in types, so e.g.
//! `kubectl auth can-i` ≥ 1.32 POSTs its SelfSubjectAccessReview as protobuf. A real apiserver
//! accepts that for every built-in type; kubesim decodes the review kinds kubectl sends this
//! way and answers in JSON (client-go accepts `application/vnd.kubernetes.protobuf,application/json`).
//!
//! Envelope (k8s.io/apimachinery/pkg/runtime/serializer/protobuf): the 4-byte magic `k8s\0`,
//! then a `runtime.Unknown` message {typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2,
//! contentEncoding = 3, contentType = 4}; `raw` is the object's own message. Field numbers of
//! the objects are those of the `protobuf:"bytes,N,opt,name=..."` tags in k8s.io/api.

use serde_json::{json, Map, Value};

pub const MAGIC: &[u8] = b"k8s\0";
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

enum Field<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

/// The top-level fields of one message, in wire order.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => {
                varint(buf, &mut pos)?;
                Field::Scalar
            }
            1 | 5 => {
                pos += if wire == 1 { 8 } else { 4 };
                Field::Scalar
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len());
                let end = end.ok_or("length-delimited field overruns the message")?;
                let b = &buf[pos..end];
                pos = end;
                Field::Bytes(b)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        if pos > buf.len() {
            return Err("truncated field".into());
        }
        out.push((num, f));
    }
    Ok(out)
}

fn message(buf: &[u8], num: u64) -> Result<Option<&[u8]>, String> {
    Ok(fields(buf)?.into_iter().rev().find_map(|(n, f)| match f {
        Field::Bytes(b) if n == num => Some(b),
        _ => None,
    }))
}

/// A message of string fields, as a JSON object with the given names (field N = names[N-1]).
fn strings(buf: &[u8], names: &[&str]) -> Result<Value, String> {
    let mut m = Map::new();
    for (n, f) in fields(buf)? {
        let Some(name) = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| names.get(i))
        else {
            continue;
        };
        if let Field::Bytes(b) = f {
            m.insert(
                name.to_string(),
                json!(String::from_utf8_lossy(b).into_owned()),
            );
        }
    }
    Ok(Value::Object(m))
}

/// ObjectMeta's name = 1, generateName = 2, namespace = 3 (k8s.io/apimachinery meta/v1).
fn object_meta(raw: &[u8]) -> Result<Value, String> {
    match message(raw, 1)? {
        Some(m) => strings(m, &["name", "generateName", "namespace"]),
        None => Ok(json!({})),
    }
}

/// Decodes a protobuf request body into the JSON form of the object, for the kinds kubesim
/// understands in protobuf; `Err` carries a message for a 400/415 answer.
pub fn decode(expected_kind: &str, body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the protobuf body lacks the k8s\\0 prefix")?;
    let type_meta = message(envelope, 1)?.unwrap_or_default();
    let tm = strings(type_meta, &["apiVersion", "kind"])?;
    let raw = message(envelope, 2)?.unwrap_or_default();
    let kind = tm["kind"].as_str().unwrap_or(expected_kind).to_string();
    let api_version = tm["apiVersion"].as_str().unwrap_or_default().to_string();
    let spec = message(raw, 2)?.unwrap_or_default();
    let spec = match kind.as_str() {
        // SelfSubjectAccessReviewSpec {resourceAttributes = 1, nonResourceAttributes = 2};
        // ResourceAttributes {namespace 1, verb 2, group 3, version 4, resource 5,
        // subresource 6, name 7}; NonResourceAttributes {path 1, verb 2}.
        "SelfSubjectAccessReview" => {
            let mut s = Map::new();
            if let Some(ra) = message(spec, 1)? {
                s.insert(
                    "resourceAttributes".into(),
                    strings(
                        ra,
                        &[
                            "namespace",
                            "verb",
                            "group",
                            "version",
                            "resource",
                            "subresource",
                            "name",
                        ],
                    )?,
                );
            }
            if let Some(nra) = message(spec, 2)? {
                s.insert(
                    "nonResourceAttributes".into(),
                    strings(nra, &["path", "verb"])?,
                );
            }
            Value::Object(s)
        }
        // SelfSubjectRulesReviewSpec {namespace = 1}.
        "SelfSubjectRulesReview" => strings(spec, &["namespace"])?,
        other => {
            return Err(format!(
                "kubesim decodes protobuf only for SelfSubjectAccessReview and SelfSubjectRulesReview, not {other}"
            ))
        }
    };
    Ok(json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": object_meta(raw)?,
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3) | 2, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_self_subject_access_review() {
        let ra = [
            ld(1, b"shop"),
            ld(2, b"create"),
            ld(5, b"pods"),
            ld(6, b"exec"),
        ]
        .concat();
        let spec = ld(1, &ra);
        let raw = [ld(1, &[]), ld(2, &spec), ld(3, &[])].concat();
        let tm = [
            ld(1, b"authorization.k8s.io/v1"),
            ld(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let body = [MAGIC.to_vec(), ld(1, &tm), ld(2, &raw), ld(4, b"")].concat();
        let v = decode("SelfSubjectAccessReview", &body).unwrap();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(v["apiVersion"], "authorization.k8s.io/v1");
        let ra = &v["spec"]["resourceAttributes"];
        assert_eq!(ra["namespace"], "shop");
        assert_eq!(ra["verb"], "create");
        assert_eq!(ra["resource"], "pods");
        assert_eq!(ra["subresource"], "exec");
        assert!(decode("Pod", &body[..body.len() - 3]).is_err());
    }
}

//! The Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`) for every built-in
//! kind kubesim serves, in both directions: request bodies (create, update, delete options),
//! responses (objects, lists, `Status` errors) and watch streams.
//!
//! Since Kubernetes 1.32 (kubernetes/kubernetes#125314, "Use protobuf for core clients") the
//! generated clientsets send `Content-Type: application/vnd.kubernetes.protobuf` and
//! `Accept: application/vnd.kubernetes.protobuf,application/json` for built-in types, so
//! `kubectl create namespace` POSTs protobuf and a real apiserver answers in protobuf.
//!
//! Wire format (k8s.io/apimachinery/pkg/runtime/serializer/protobuf/protobuf.go):
//! - a body is the 4-byte magic `k8s\0`, then a `runtime.Unknown` message {typeMeta = 1
//!   {apiVersion = 1, kind = 2}, raw = 2, contentEncoding = 3, contentType = 4}, where `raw` is
//!   the object's own message (`Serializer.doEncode`);
//! - a watch stream (`StreamSerializer`: the *raw* serializer with `LengthDelimitedFramer`) is a
//!   sequence of frames, each a 4-byte big-endian length and a bare `meta.v1.WatchEvent`
//!   {type = 1, object = 2 (RawExtension {raw = 1})} whose `raw` is the object encoded as a
//!   full body, magic and envelope included (apiserver `handlers/watch.go` `embeddedEncoder`).
//!
//! Field numbers and types are not written by hand: `schema.json` is generated from the prost
//! types of the `k8s-pb` crate (kube-rs's bindings of the k8s.io/api `generated.proto` files,
//! pinned to Kubernetes 1.33), with the JSON field names taken from the k8s-openapi schemas the
//! server uses, by `generate.rs` (whose test fails when the file is stale). `k8s-pb` itself has
//! no JSON mapping, so this module is the generic bridge between the JSON objects kubesim
//! stores and that schema. A few apimachinery types have a JSON form unlike their message
//! (`Time`, `Quantity`, `IntOrString`, …); they are converted as their Go `ProtoTime`,
//! `Quantity.Marshal`, … methods do.

#[cfg(test)]
mod generate;

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub const MAGIC: &[u8] = b"k8s\0";
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The content type of a protobuf watch response.
pub const WATCH_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf;stream=watch";

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";
const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "io.k8s.apimachinery.pkg.runtime.RawExtension";
/// Go's zero `time.Time` as `ProtoTime` writes it (`Unix()` of year 1): an unset timestamp.
const ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// One field of a message: `[tag, jsonName, shape, type]` in `schema.json`, where shape is
/// `one`, `list` or `map` (string keys) and type a scalar (`string`, `bool`, `int32`, `int64`,
/// `bytes`) or a message's OpenAPI-style name (`io.k8s.api.core.v1.PodSpec`).
#[derive(Debug, Clone, Deserialize)]
pub struct Field(pub u32, pub String, pub Shape, pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    One,
    List,
    Map,
    /// An embedded Go struct (`Probe.handler`, `Volume.volumeSource`): its own message on the
    /// wire, its fields inline in the parent's JSON.
    Inline,
}

static SCHEMA: LazyLock<HashMap<String, Vec<Field>>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("schema.json")).expect("schema.json is valid (generated)")
});

/// The message name of a kind, as in k8s.io/api: `v1`/`Pod` → `io.k8s.api.core.v1.Pod`,
/// `storage.k8s.io/v1`/`StorageClass` → `io.k8s.api.storage.v1.StorageClass`; apimachinery's
/// own kinds (`Status`, `DeleteOptions`, …) live in meta/v1 whatever the group.
pub fn message_name(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "core",
        g => g.strip_suffix(".k8s.io").unwrap_or(g),
    };
    let name = format!("io.k8s.api.{package}.{version}.{kind}");
    if SCHEMA.contains_key(&name) {
        return Some(name);
    }
    let meta = format!("{META}.{kind}");
    SCHEMA.contains_key(&meta).then_some(meta)
}

/// Whether kubesim can encode this kind as protobuf (every built-in kind it serves; not custom
/// resources, which a real apiserver serves as JSON only).
pub fn supports(api_version: &str, kind: &str) -> bool {
    message_name(api_version, kind).is_some()
}

// ---- wire primitives ----

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, tag: u32, wire: u8) {
    put_varint(out, (u64::from(tag) << 3) | u64::from(wire));
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    put_key(out, tag, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) fn put_int(out: &mut Vec<u8>, tag: u32, v: i64) {
    put_key(out, tag, 0);
    // Negative int32/int64 are sign-extended to 10 bytes, as protobuf specifies.
    put_varint(out, v as u64);
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

enum Wire<'a> {
    Varint(u64),
    Fixed,
    Bytes(&'a [u8]),
}

/// The fields of one message, in wire order.
fn fields(buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let tag = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let w = match key & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 | 5 => {
                pos += if key & 7 == 1 { 8 } else { 4 };
                if pos > buf.len() {
                    return Err("truncated fixed-width field".into());
                }
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len());
                let end = end.ok_or("length-delimited field overruns the message")?;
                let b = &buf[pos..end];
                pos = end;
                Wire::Bytes(b)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        out.push((tag, w));
    }
    Ok(out)
}

fn bytes_field(buf: &[u8], tag: u32) -> Result<Option<&[u8]>, String> {
    Ok(fields(buf)?.into_iter().rev().find_map(|(n, w)| match w {
        Wire::Bytes(b) if n == tag => Some(b),
        _ => None,
    }))
}

fn string_field(buf: &[u8], tag: u32) -> Result<String, String> {
    Ok(bytes_field(buf, tag)?
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default())
}

// ---- envelope ----

/// A full protobuf body: magic, `runtime.Unknown` with the object's type and its message.
pub fn encode_object(obj: &Value) -> Result<Vec<u8>, String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = message_name(api_version, kind)
        .ok_or_else(|| format!("{api_version} {kind} has no protobuf encoding"))?;
    let mut raw = Vec::new();
    encode_message(&name, obj, &mut raw)?;
    let mut type_meta = Vec::new();
    put_bytes(&mut type_meta, 1, api_version.as_bytes());
    put_bytes(&mut type_meta, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    put_bytes(&mut out, 1, &type_meta);
    put_bytes(&mut out, 2, &raw);
    Ok(out)
}

/// Why a protobuf body could not be decoded: the apiserver answers the first with 415 (as for
/// a custom resource), the second with 400.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the protobuf body holds {api_version:?} {kind:?}, which has no protobuf encoding")]
    NoEncoding { api_version: String, kind: String },
    #[error("{0}")]
    Malformed(String),
}

/// Decodes a full protobuf body into the JSON form of the object (with `apiVersion` and `kind`
/// from the envelope).
pub fn decode_object(body: &[u8]) -> Result<Value, DecodeError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| {
        DecodeError::Malformed(
            "the body is not a Kubernetes protobuf message: it lacks the k8s\\0 prefix".into(),
        )
    })?;
    let malformed = DecodeError::Malformed;
    let type_meta = bytes_field(envelope, 1)
        .map_err(malformed)?
        .unwrap_or_default();
    let api_version = string_field(type_meta, 1).map_err(malformed)?;
    let kind = string_field(type_meta, 2).map_err(malformed)?;
    let encoding = string_field(envelope, 3).map_err(malformed)?;
    if !encoding.is_empty() {
        return Err(malformed(format!(
            "unsupported contentEncoding {encoding:?}"
        )));
    }
    let Some(name) = message_name(&api_version, &kind) else {
        return Err(DecodeError::NoEncoding { api_version, kind });
    };
    let raw = bytes_field(envelope, 2)
        .map_err(malformed)?
        .unwrap_or_default();
    let mut v = decode_message(&name, raw).map_err(malformed)?;
    let m = v
        .as_object_mut()
        .ok_or_else(|| malformed("the object is not a message".into()))?;
    // TypeMeta first, as the JSON encoder writes it.
    let mut out = Map::new();
    out.insert("kind".into(), json!(kind));
    out.insert("apiVersion".into(), json!(api_version));
    out.append(m);
    Ok(Value::Object(out))
}

/// One frame of a protobuf watch stream: length, then `WatchEvent{type, object{raw: body}}`.
pub fn encode_watch_event(kind: &str, obj: &Value) -> Result<Vec<u8>, String> {
    let body = encode_object(obj)?;
    let mut raw_ext = Vec::new();
    put_bytes(&mut raw_ext, 1, &body);
    let mut ev = Vec::new();
    put_bytes(&mut ev, 1, kind.as_bytes());
    put_bytes(&mut ev, 2, &raw_ext);
    let len = u32::try_from(ev.len()).map_err(|_| "watch event larger than 4 GiB")?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&ev);
    Ok(out)
}

/// Splits one frame off a protobuf watch stream: `(type, object)`, and the rest of the buffer.
pub fn decode_watch_event(buf: &[u8]) -> Result<((String, Value), &[u8]), String> {
    let len = buf.get(..4).ok_or("truncated frame length")?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    let frame = buf.get(4..4 + len).ok_or("truncated frame")?;
    let kind = string_field(frame, 1)?;
    let raw_ext = bytes_field(frame, 2)?.unwrap_or_default();
    let body = bytes_field(raw_ext, 1)?.unwrap_or_default();
    let obj = decode_object(body).map_err(|e| e.to_string())?;
    Ok(((kind, obj), &buf[4 + len..]))
}

// ---- messages ----

fn schema(name: &str) -> Result<&'static [Field], String> {
    SCHEMA
        .get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("no protobuf schema for {name}"))
}

/// Encodes the JSON form of a message of type `name`. Fields the message does not have
/// (`apiVersion`/`kind`, which travel in the envelope) are not written.
pub fn encode_message(name: &str, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    if is_special(name) {
        return encode_special(name, v, out);
    }
    let obj = match v {
        Value::Object(o) => o,
        Value::Null => return Ok(()),
        other => return Err(format!("{name}: expected an object, got {other}")),
    };
    for Field(tag, json_name, shape, ty) in schema(name)? {
        if *shape == Shape::Inline {
            let mut m = Vec::new();
            encode_message(ty, v, &mut m)?;
            put_bytes(out, *tag, &m);
            continue;
        }
        let Some(fv) = obj.get(json_name).filter(|v| !v.is_null()) else {
            continue;
        };
        let ctx = || format!("{name}.{json_name}");
        match shape {
            Shape::Inline => unreachable!("handled above"),
            Shape::One => encode_value(*tag, ty, fv, out).map_err(|e| format!("{}: {e}", ctx()))?,
            Shape::List => {
                let items = fv
                    .as_array()
                    .ok_or_else(|| format!("{}: expected a list", ctx()))?;
                for item in items {
                    encode_value(*tag, ty, item, out).map_err(|e| format!("{}: {e}", ctx()))?;
                }
            }
            Shape::Map => {
                let entries = fv
                    .as_object()
                    .ok_or_else(|| format!("{}: expected a map", ctx()))?;
                for (k, val) in entries {
                    let mut entry = Vec::new();
                    put_bytes(&mut entry, 1, k.as_bytes());
                    encode_value(2, ty, val, &mut entry)
                        .map_err(|e| format!("{}[{k}]: {e}", ctx()))?;
                    put_bytes(out, *tag, &entry);
                }
            }
        }
    }
    Ok(())
}

fn encode_value(tag: u32, ty: &str, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match ty {
        "string" => put_bytes(
            out,
            tag,
            v.as_str()
                .ok_or_else(|| format!("expected a string, got {v}"))?
                .as_bytes(),
        ),
        "bytes" => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("expected base64, got {v}"))?;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("invalid base64: {e}"))?;
            put_bytes(out, tag, &b);
        }
        "bool" => {
            let b = v
                .as_bool()
                .ok_or_else(|| format!("expected a boolean, got {v}"))?;
            put_int(out, tag, i64::from(b));
        }
        "int32" | "int64" => {
            let n = v
                .as_i64()
                .ok_or_else(|| format!("expected an integer, got {v}"))?;
            if ty == "int32" && i32::try_from(n).is_err() {
                return Err(format!("{n} does not fit in int32"));
            }
            put_int(out, tag, n);
        }
        message => {
            let mut m = Vec::new();
            encode_message(message, v, &mut m)?;
            put_bytes(out, tag, &m);
        }
    }
    Ok(())
}

/// Decodes a message of type `name` into its JSON form.
pub fn decode_message(name: &str, buf: &[u8]) -> Result<Value, String> {
    if is_special(name) {
        return decode_special(name, buf);
    }
    let schema = schema(name)?;
    let mut out = Map::new();
    for (tag, w) in fields(buf)? {
        // Fields this schema does not know are skipped, as protobuf decoders do.
        let Some(Field(_, json_name, shape, ty)) = schema.iter().find(|f| f.0 == tag) else {
            continue;
        };
        let ctx = |e: String| format!("{name}.{json_name}: {e}");
        match shape {
            Shape::Inline => {
                let Wire::Bytes(b) = w else {
                    return Err(ctx("an embedded message must be length-delimited".into()));
                };
                if let Value::Object(inner) = decode_message(ty, b)? {
                    out.extend(inner);
                }
            }
            Shape::One => {
                let v = decode_value(ty, &w).map_err(ctx)?;
                out.insert(json_name.clone(), v);
            }
            Shape::List => {
                let list = out
                    .entry(json_name.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let list = list.as_array_mut().expect("inserted as an array");
                match (&w, ty.as_str()) {
                    // A packed repeated scalar (proto3 style); k8s writes them unpacked.
                    (Wire::Bytes(b), "int32" | "int64" | "bool") => {
                        let mut pos = 0;
                        while pos < b.len() {
                            let n = varint(b, &mut pos).map_err(ctx)?;
                            list.push(decode_value(ty, &Wire::Varint(n)).map_err(ctx)?);
                        }
                    }
                    _ => list.push(decode_value(ty, &w).map_err(ctx)?),
                }
            }
            Shape::Map => {
                let Wire::Bytes(entry) = w else {
                    return Err(ctx("a map entry must be length-delimited".into()));
                };
                let key = string_field(entry, 1).map_err(ctx)?;
                let val = fields(entry)
                    .map_err(ctx)?
                    .into_iter()
                    .rev()
                    .find(|(n, _)| *n == 2)
                    .map(|(_, w)| decode_value(ty, &w))
                    .transpose()
                    .map_err(ctx)?
                    .unwrap_or_else(|| empty_value(ty));
                let map = out
                    .entry(json_name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                map.as_object_mut()
                    .expect("inserted as an object")
                    .insert(key, val);
            }
        }
    }
    // Go's JSON encoder leaves out unset timestamps and, for `omitempty` strings, empty ones;
    // gogo-protobuf writes every non-pointer field, so drop those to get the same JSON.
    out.retain(|_, v| !v.is_null() && v.as_str() != Some(""));
    Ok(Value::Object(out))
}

fn empty_value(ty: &str) -> Value {
    match ty {
        "string" | "bytes" => json!(""),
        "bool" => json!(false),
        "int32" | "int64" => json!(0),
        _ => json!({}),
    }
}

fn decode_value(ty: &str, w: &Wire<'_>) -> Result<Value, String> {
    Ok(match (ty, w) {
        ("string", Wire::Bytes(b)) => json!(String::from_utf8_lossy(b)),
        ("bytes", Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        ("bool", Wire::Varint(n)) => json!(*n != 0),
        ("int32", Wire::Varint(n)) => json!(*n as u32 as i32),
        ("int64", Wire::Varint(n)) => json!(*n as i64),
        (m, Wire::Bytes(b)) if m.starts_with("io.k8s.") => decode_message(m, b)?,
        _ => return Err(format!("wire type does not match {ty}")),
    })
}

// ---- types whose JSON form differs from their message ----

fn is_special(name: &str) -> bool {
    matches!(
        name,
        TIME | MICRO_TIME | QUANTITY | INT_OR_STRING | RAW_EXTENSION | FIELDS_V1 | DURATION
    )
}

fn encode_special(name: &str, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match name {
        // Time {seconds = 1, nanos = 2}; JSON RFC 3339 (meta/v1 time_proto.go, micro_time_proto.go).
        TIME | MICRO_TIME => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("expected a time, got {v}"))?;
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| format!("invalid time {s:?}: {e}"))?;
            put_int(out, 1, t.timestamp());
            let nanos = if name == TIME {
                0 // Time is second-precision: ProtoTime drops the fraction.
            } else {
                t.timestamp_subsec_nanos() / 1000 * 1000
            };
            if nanos != 0 {
                put_int(out, 2, i64::from(nanos));
            }
        }
        // Quantity {string = 1} (api/resource/quantity_proto.go); JSON a string (or a number).
        QUANTITY => match v {
            Value::String(s) => put_bytes(out, 1, s.as_bytes()),
            Value::Number(n) => put_bytes(out, 1, n.to_string().as_bytes()),
            other => return Err(format!("expected a quantity, got {other}")),
        },
        // IntOrString {type = 1 (0 int, 1 string), intVal = 2, strVal = 3}.
        INT_OR_STRING => match v {
            Value::Number(n) => {
                let i = n
                    .as_i64()
                    .ok_or_else(|| format!("expected an integer, got {n}"))?;
                put_int(out, 1, 0);
                put_int(out, 2, i);
            }
            Value::String(s) => {
                put_int(out, 1, 1);
                put_bytes(out, 3, s.as_bytes());
            }
            other => return Err(format!("expected an int or a string, got {other}")),
        },
        // RawExtension {raw = 1} and FieldsV1 {Raw = 1} carry JSON text.
        RAW_EXTENSION | FIELDS_V1 => {
            put_bytes(out, 1, &serde_json::to_vec(v).unwrap_or_default());
        }
        // Duration {duration = 1} in nanoseconds; JSON Go's `time.Duration.String()`.
        DURATION => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("expected a duration, got {v}"))?;
            put_int(out, 1, parse_go_duration(s)?);
        }
        other => return Err(format!("{other} is not a special type")),
    }
    Ok(())
}

fn decode_special(name: &str, buf: &[u8]) -> Result<Value, String> {
    let scalars: HashMap<u32, u64> = fields(buf)?
        .into_iter()
        .filter_map(|(t, w)| match w {
            Wire::Varint(n) => Some((t, n)),
            _ => None,
        })
        .collect();
    let int = |tag: u32| scalars.get(&tag).copied().unwrap_or(0);
    Ok(match name {
        TIME | MICRO_TIME => {
            let secs = int(1) as i64;
            let nanos = int(2) as u32;
            if secs == ZERO_TIME_SECONDS && nanos == 0 {
                return Ok(Value::Null);
            }
            let t = chrono::DateTime::from_timestamp(secs, nanos)
                .ok_or_else(|| format!("time out of range: {secs}"))?;
            json!(if name == TIME {
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            } else {
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            })
        }
        QUANTITY => json!(string_field(buf, 1)?),
        INT_OR_STRING => {
            if int(1) == 1 {
                json!(string_field(buf, 3)?)
            } else {
                json!(int(2) as u32 as i32)
            }
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let raw = bytes_field(buf, 1)?.unwrap_or_default();
            if raw.is_empty() {
                Value::Null
            } else if raw.starts_with(MAGIC) {
                decode_object(raw).map_err(|e| e.to_string())?
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| format!("embedded object is not JSON: {e}"))?
            }
        }
        DURATION => json!(format_go_duration(int(1) as i64)),
        other => return Err(format!("{other} is not a special type")),
    })
}

/// Go's `time.ParseDuration` for the forms `metav1.Duration` carries (`1h2m3.5s`, `300ms`).
fn parse_go_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {s:?}");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[unit_end..];
    }
    Ok(if neg { -total } else { total } as i64)
}

/// Go's `time.Duration.String()` for whole and fractional seconds (`1h0m5s`, `1.5s`, `0s`).
fn format_go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    if ns < 1_000_000_000 {
        let (v, unit) = match ns {
            n if n < 1_000 => (n as f64, "ns"),
            n if n < 1_000_000 => (n as f64 / 1e3, "µs"),
            n => (n as f64 / 1e6, "ms"),
        };
        return format!("{sign}{v}{unit}");
    }
    let (h, rem) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rem) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let secs = rem as f64 / 1e9;
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": "web-0",
                "namespace": "shop",
                "labels": {"app": "web", "empty": ""},
                "creationTimestamp": "2025-05-15T10:11:12Z",
                "finalizers": ["a/b"],
                "managedFields": [{"manager": "kubectl", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}],
            },
            "spec": {
                "hostIPC": true,
                "terminationGracePeriodSeconds": 0,
                "containers": [{
                    "name": "app",
                    "image": "busybox",
                    "command": ["sh", "-c", "sleep 1"],
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 3},
                    "livenessProbe": {"tcpSocket": {"port": 8080}},
                    "securityContext": {"runAsUser": -1},
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0"}}],
            },
            "status": {"phase": "Running", "podIP": "10.0.0.7", "startTime": "2025-05-15T10:11:13Z"},
        })
    }

    #[test]
    fn a_pod_survives_the_round_trip() {
        let body = encode_object(&pod()).unwrap();
        assert!(body.starts_with(MAGIC));
        assert_eq!(decode_object(&body).unwrap(), pod());
    }

    #[test]
    fn field_numbers_are_those_of_k8s_io_api() {
        // Pod {metadata = 1, spec = 2, status = 3}; ObjectMeta {name = 1, namespace = 3}.
        let mut raw = Vec::new();
        encode_message(
            "io.k8s.api.core.v1.Pod",
            &json!({"metadata": {"name": "a", "namespace": "b"}, "status": {"phase": "Running"}}),
            &mut raw,
        )
        .unwrap();
        assert_eq!(
            raw,
            [
                &[0x0a, 6, 0x0a, 1, b'a', 0x1a, 1, b'b'][..],
                // PodStatus {phase = 1}
                &[0x1a, 9, 0x0a, 7],
                b"Running"
            ]
            .concat()
        );
    }

    #[test]
    fn unset_go_timestamps_and_empty_strings_are_left_out() {
        // What gogo-protobuf writes for a Namespace created by `kubectl create namespace x`:
        // every non-pointer field, including an unset creationTimestamp (year 1).
        let mut ts = Vec::new();
        put_int(&mut ts, 1, ZERO_TIME_SECONDS);
        put_int(&mut ts, 2, 0);
        let mut meta = Vec::new();
        put_bytes(&mut meta, 1, b"team-a");
        put_bytes(&mut meta, 2, b"");
        put_bytes(&mut meta, 3, b"");
        put_bytes(&mut meta, 8, &ts);
        let mut ns = Vec::new();
        put_bytes(&mut ns, 1, &meta);
        put_bytes(&mut ns, 2, &[]);
        put_bytes(&mut ns, 3, &[]);
        assert_eq!(
            decode_message("io.k8s.api.core.v1.Namespace", &ns).unwrap(),
            json!({"metadata": {"name": "team-a"}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn lists_statuses_and_watch_frames() {
        let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": [pod()]});
        let back = decode_object(&encode_object(&list).unwrap()).unwrap();
        // List items carry no TypeMeta in protobuf (their type is the list's).
        let mut item = pod();
        item.as_object_mut().unwrap().remove("kind");
        item.as_object_mut().unwrap().remove("apiVersion");
        assert_eq!(back["items"][0], item);
        assert_eq!(back["metadata"]["resourceVersion"], "7");

        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"x\" not found", "reason": "NotFound", "details": {"name": "x", "kind": "pods"}, "code": 404});
        assert_eq!(
            decode_object(&encode_object(&status).unwrap()).unwrap(),
            status
        );

        let mut stream = encode_watch_event("ADDED", &pod()).unwrap();
        stream.extend(encode_watch_event("DELETED", &pod()).unwrap());
        let ((k1, o1), rest) = decode_watch_event(&stream).unwrap();
        let ((k2, _), rest) = decode_watch_event(rest).unwrap();
        assert_eq!(
            (k1.as_str(), k2.as_str(), rest.len()),
            ("ADDED", "DELETED", 0)
        );
        assert_eq!(o1, pod());
    }

    #[test]
    fn custom_resources_and_garbage_are_refused() {
        assert!(!supports("snapshot.storage.k8s.io/v1", "VolumeSnapshot"));
        assert!(supports("storage.k8s.io/v1", "StorageClass"));
        assert!(supports(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview"
        ));
        assert!(supports("v1", "DeleteOptions"));
        assert!(decode_object(b"{\"kind\":\"Pod\"}")
            .unwrap_err()
            .to_string()
            .contains("k8s\\0"));
        let body = encode_object(&pod()).unwrap();
        assert!(decode_object(&body[..body.len() - 3]).is_err());
    }

    #[test]
    fn go_durations() {
        for (s, ns) in [
            ("1h0m5s", 3_605_000_000_000i64),
            ("1.5s", 1_500_000_000),
            ("0s", 0),
        ] {
            assert_eq!(parse_go_duration(s).unwrap(), ns);
            assert_eq!(format_go_duration(ns), s);
        }
    }
}

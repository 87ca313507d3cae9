//! Request routing and the REST semantics of the API server: discovery, get/list/watch,
//! create/update/patch/delete with graceful deletion and finalizers, subresources, tables,
//! SelfSubjectAccessReview, and the kubesim fault endpoint.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::admission;
use crate::auth::User;
use crate::errors::{ApiError, ApiResult};
use crate::faults::FaultRequest;
use crate::patch;
use crate::resources::{self, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::sim::{SimRef, SERVER_VERSION};
use crate::store::WatchEvent;
use crate::tables;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    r.headers_mut().insert(
        "audit-id",
        crate::store::new_uid()
            .parse()
            .expect("uuid is a valid header"),
    );
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

/// What the URL names, as k8s.io/apiserver/pkg/endpoints/request/requestinfo.go parses it.
#[derive(Debug, Clone)]
pub struct Target {
    pub def: &'static ResourceDef,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub fn query_map(q: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    if let Some(q) = q {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            m.entry(k.into_owned()).or_default().push(v.into_owned());
        }
    }
    m
}

fn q1<'a>(q: &'a HashMap<String, Vec<String>>, k: &str) -> Option<&'a str> {
    q.get(k).and_then(|v| v.first()).map(String::as_str)
}

pub fn resolve(group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let lookup =
        |plural: &str| resources::find(group, version, plural).ok_or_else(ApiError::no_route);
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resources::find(group, version, plural).is_some_and(|d| d.namespaced) =>
        {
            let def = lookup(plural)?;
            Ok(Target {
                def,
                namespace: Some(ns.to_string()),
                name: tail.first().map(|s| s.to_string()),
                subresource: tail.get(1).map(|s| s.to_string()),
            })
        }
        [plural, tail @ ..] => {
            let def = lookup(plural)?;
            if def.namespaced && !tail.is_empty() {
                return Err(ApiError::no_route());
            }
            Ok(Target {
                def,
                namespace: None,
                name: tail.first().map(|s| s.to_string()),
                subresource: tail.get(1).map(|s| s.to_string()),
            })
        }
        [] => Err(ApiError::no_route()),
    }
}

pub async fn handle(sim: SimRef, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let protobuf = prefers_protobuf(req.headers());
    let gzip = accepts_gzip(req.headers());
    let resp = match route(sim, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    let resp = if protobuf {
        to_protobuf(resp).await
    } else {
        resp
    };
    let resp = if gzip { compressed(resp).await } else { resp };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    Ok(resp)
}

async fn read_body(req: Request<Incoming>) -> ApiResult<(hyper::http::request::Parts, Bytes)> {
    let (parts, body) = req.into_parts();
    let bytes = http_body_util::Limited::new(body, 16 << 20)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?
        .to_bytes();
    Ok((parts, bytes))
}

fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

/// A create/update/delete body: JSON, or protobuf for the built-in kinds (see
/// [`crate::protobuf`]); the decoder is chosen by Content-Type, as the apiserver's is. A kind
/// without a protobuf encoding (a custom resource) is refused with 415, as for real.
fn parse_body(headers: &hyper::HeaderMap, bytes: &[u8]) -> ApiResult<Value> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ct.split(';').next().unwrap_or_default().trim() == crate::protobuf::CONTENT_TYPE
        || bytes.starts_with(crate::protobuf::MAGIC)
    {
        return crate::protobuf::decode_object(bytes).map_err(|e| match e {
            crate::protobuf::DecodeError::NoEncoding { .. } => ApiError::unsupported_body(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
            ),
            crate::protobuf::DecodeError::Malformed(m) => {
                ApiError::bad_request(format!("the protobuf body could not be decoded: {m}"))
            }
        });
    }
    parse_json(bytes)
}

/// Whether the client's `Accept` puts Kubernetes protobuf before JSON (client-go typed
/// clients send `application/vnd.kubernetes.protobuf,application/json`). Media ranges are
/// taken by `q` and then in order, as apimachinery's `negotiation` (goautoneg) does; a Table
/// request (`;as=Table`) is always JSON here.
fn prefers_protobuf(headers: &hyper::HeaderMap) -> bool {
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut ranges: Vec<(f32, usize, &str, bool)> = accept
        .split(',')
        .enumerate()
        .map(|(i, r)| {
            let mut parts = r.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let mut q = 1.0;
            let mut as_kind = false;
            for p in parts {
                if let Some(v) = p.strip_prefix("q=") {
                    q = v.parse().unwrap_or(1.0);
                }
                as_kind |= p.starts_with("as=");
            }
            (q, i, media, as_kind)
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (q, _, media, as_kind) in ranges {
        if q <= 0.0 {
            continue;
        }
        match media {
            crate::protobuf::CONTENT_TYPE if !as_kind => return true,
            "application/json" | "*/*" | "application/*" => return false,
            _ => {}
        }
    }
    false
}

/// Whether the client takes `Content-Encoding: gzip` (Go's HTTP transport, and so kubectl and
/// client-go, ask for it on every request; kube-rs without its `gzip` feature does not).
fn accepts_gzip(headers: &hyper::HeaderMap) -> bool {
    headers
        .get_all("accept-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';').map(str::trim);
            parts.next() == Some("gzip")
                && !parts
                    .any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0))
        })
}

/// Responses above this size are compressed for a client that accepts gzip, at this level:
/// the API server's `defaultGzipThresholdBytes` (128 KiB) and `defaultGzipContentEncodingLevel`
/// (1; kubernetes/kubernetes#112296), staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
/// responsewriters/writers.go. Large lists are what crosses it.
const GZIP_THRESHOLD: usize = 128 * 1024;
const GZIP_LEVEL: u32 = 1;

/// Gzips a whole (not streamed) response larger than [`GZIP_THRESHOLD`], adding
/// `Content-Encoding: gzip` and `Vary: Accept-Encoding` as the API server does. Watches, logs
/// and upgraded streams are left as they are.
async fn compressed(resp: Response<Body>) -> Response<Body> {
    use std::io::Write;
    let streamed = resp.headers().contains_key("transfer-encoding")
        || resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let small = hyper::body::Body::size_hint(resp.body())
        .exact()
        .is_none_or(|n| n as usize <= GZIP_THRESHOLD);
    if streamed || small {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = body.collect().await.map(|c| c.to_bytes()) else {
        return Response::from_parts(parts, full(Bytes::new()));
    };
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::new(GZIP_LEVEL),
    );
    let Ok(out) = gz.write_all(&bytes).and_then(|_| gz.finish()) else {
        return Response::from_parts(parts, full(bytes));
    };
    parts
        .headers
        .insert("content-encoding", "gzip".parse().expect("static"));
    parts
        .headers
        .append("vary", "Accept-Encoding".parse().expect("static"));
    parts.headers.remove("content-length");
    Response::from_parts(parts, full(out))
}

/// Re-encodes a JSON response whose kind has a protobuf encoding (objects, lists, `Status`).
/// Streams (watch, logs, exec) and other bodies (Tables, discovery, custom resources) stay as
/// they are, as the apiserver serves them JSON to a client that also accepts JSON.
async fn to_protobuf(resp: Response<Body>) -> Response<Body> {
    let is_json = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/json");
    if !is_json || resp.headers().contains_key("transfer-encoding") {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = body.collect().await.map(|c| c.to_bytes()) else {
        return Response::from_parts(parts, full(Bytes::new()));
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, full(bytes));
    };
    if !crate::protobuf::supports(
        v["apiVersion"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default(),
    ) {
        return Response::from_parts(parts, full(bytes));
    }
    match crate::protobuf::encode_object(&v) {
        Ok(pb) => {
            parts.headers.insert(
                "content-type",
                crate::protobuf::CONTENT_TYPE.parse().expect("static"),
            );
            Response::from_parts(parts, full(pb))
        }
        Err(e) => error_response(&ApiError::internal(format!(
            "kubesim could not encode {} {} as protobuf: {e}",
            v["apiVersion"], v["kind"]
        ))),
    }
}

/// `?fieldValidation=`: drops the fields the kind's schema does not declare, as the
/// apiserver's decoder does; `Strict` refuses them (`strict decoding error: unknown field …`,
/// k8s.io/apimachinery `runtime.NewStrictDecodingError`, wrapped by the handlers'
/// `transformDecodeError`), `Warn` (the default) answers a `Warning` header per field.
fn validate_fields(
    t: &Target,
    q: &HashMap<String, Vec<String>>,
    obj: &mut Value,
) -> ApiResult<Vec<String>> {
    let mode = crate::openapi::FieldValidation::parse(q1(q, "fieldValidation"))
        .map_err(ApiError::bad_request)?;
    let unknown = crate::openapi::prune_unknown(t.def, obj);
    if unknown.is_empty() || mode == crate::openapi::FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if mode == crate::openapi::FieldValidation::Strict {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
            fields.join(", "),
            kind = t.def.kind,
            v = t.def.version,
        )));
    }
    Ok(fields)
}

/// `Warning: 299 - "<text>"` headers (RFC 7234 warn-code 299, as the apiserver sends them).
fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let v = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(h) = v.parse() {
            r.headers_mut().append("warning", h);
        }
    }
    r
}

/// `/openapi/v2`, `/openapi/v3`, `/openapi/v3/<api/v1 …>` (see [`crate::openapi`]).
fn openapi(
    headers: &hyper::HeaderMap,
    query: Option<&str>,
    rest: &[&str],
) -> ApiResult<Response<Body>> {
    use crate::openapi as oa;
    let typed = |body: Vec<u8>, ct: &str| {
        let mut r = Response::new(full(body));
        r.headers_mut()
            .insert("content-type", ct.parse().expect("static"));
        r
    };
    match rest {
        ["v2"] => {
            let accept = headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if oa::V2_PROTOBUF_ACCEPT.iter().any(|m| accept.contains(m)) {
                Ok(typed(oa::v2_protobuf().to_vec(), oa::V2_PROTOBUF))
            } else {
                Ok(json_response(StatusCode::OK, oa::v2_document()))
            }
        }
        ["v3"] => Ok(json_response(StatusCode::OK, &oa::v3_root())),
        ["v3", gv @ ..] => {
            let key = gv.join("/");
            let (doc, hash) = oa::v3_served(&key).ok_or_else(ApiError::no_route)?;
            // kube-openapi handler3: a stale `?hash=` is redirected to the current one; with
            // the right hash the document is cacheable for good.
            let asked = query_map(query);
            let mut r = match q1(&asked, "hash") {
                Some(h) if h != hash => {
                    let mut r = Response::new(full(Bytes::new()));
                    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
                    r.headers_mut().insert(
                        "location",
                        format!("/openapi/v3/{key}?hash={hash}")
                            .parse()
                            .expect("a path is a valid header"),
                    );
                    return Ok(r);
                }
                Some(_) => {
                    let mut r = typed(doc, "application/json");
                    r.headers_mut().insert(
                        "cache-control",
                        "public, immutable".parse().expect("static"),
                    );
                    r
                }
                None => typed(doc, "application/json"),
            };
            r.headers_mut().insert(
                "etag",
                format!("\"{hash}\"")
                    .parse()
                    .expect("hex is a valid header"),
            );
            Ok(r)
        }
        _ => Err(ApiError::no_route()),
    }
}

async fn route(sim: SimRef, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let path = req.uri().path().to_string();
    if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        return Ok(Response::new(full("ok")));
    }
    let auth_header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let user = sim
        .auth
        .user_for(auth_header)
        .and_then(|u| crate::serviceaccounts::authorize(&sim, u))
        .ok_or_else(ApiError::unauthorized)?;
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = req.method().clone();
    // Without the external-snapshotter's CRDs the apiserver has no handler for the group: the
    // request falls through to the end of the delegation chain, k8s.io/apiserver
    // pkg/util/notfoundhandler, which answers 404 `the server could not find the requested
    // resource` (a Status, reason NotFound), for discovery of the group as for its objects.
    if !sim.snapshot_api
        && segs.first() == Some(&"apis")
        && segs.get(1) == Some(&crate::snapshots::GROUP)
    {
        return Err(ApiError::no_route());
    }
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["version"]) => {
            let (major, minor, git) = SERVER_VERSION;
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "major": major, "minor": minor, "gitVersion": git,
                    "gitCommit": "kubesim", "gitTreeState": "clean", "buildDate": "2025-05-15T00:00:00Z",
                    "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64",
                }),
            ))
        }
        (Method::GET, ["api"]) => {
            let addr = sim
                .server_url
                .get()
                .map(|u| u.trim_start_matches("https://").to_string())
                .unwrap_or_default();
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
                }),
            ))
        }
        (Method::GET, ["api", "v1"]) => Ok(json_response(
            StatusCode::OK,
            &resources::resource_list("", "v1").expect("core/v1 exists"),
        )),
        (Method::GET, ["apis"]) => {
            let mut list = resources::group_list();
            if !sim.snapshot_api {
                if let Some(groups) = list["groups"].as_array_mut() {
                    groups.retain(|g| g["name"] != crate::snapshots::GROUP);
                }
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        (Method::GET, ["apis", g]) if resources::groups().contains(g) => {
            let mut d = resources::group_doc(g);
            d["kind"] = json!("APIGroup");
            d["apiVersion"] = json!("v1");
            Ok(json_response(StatusCode::OK, &d))
        }
        (Method::GET, ["apis", g, v]) => resources::resource_list(g, v)
            .map(|l| json_response(StatusCode::OK, &l))
            .ok_or_else(ApiError::no_route),
        (Method::GET, ["openapi", rest @ ..]) => openapi(req.headers(), req.uri().query(), rest),
        (_, ["kubesim", "v1", "faults"]) => faults(sim, &user, req).await,
        (_, ["api", "v1", rest @ ..]) => {
            let t = resolve("", "v1", rest)?;
            resource(sim, &user, t, req).await
        }
        (_, ["apis", g, v, rest @ ..]) => {
            let t = resolve(g, v, rest)?;
            resource(sim, &user, t, req).await
        }
        _ => Err(ApiError::no_route()),
    }
}

async fn faults(sim: SimRef, user: &User, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    if !user.groups.iter().any(|g| g == "system:masters") {
        return Err(ApiError::forbidden_message(
            "faults",
            "",
            format!("User \"{}\" may not inject faults", user.name),
        ));
    }
    if req.method() == Method::GET {
        return Ok(json_response(
            StatusCode::OK,
            &serde_json::to_value(sim.faults.snapshot()).unwrap_or_default(),
        ));
    }
    let (_, body) = read_body(req).await?;
    let f: FaultRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid fault request: {e}")))?;
    sim.faults.apply(&f);
    sim.kick.notify_waiters();
    Ok(json_response(StatusCode::OK, &json!({"applied": f})))
}

fn verb_for(method: &Method, t: &Target, q: &HashMap<String, Vec<String>>) -> &'static str {
    match *method {
        Method::GET if t.name.is_none() => {
            if q1(q, "watch").is_some_and(|w| w == "true" || w == "1") {
                "watch"
            } else {
                "list"
            }
        }
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if t.name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

async fn resource(
    sim: SimRef,
    user: &User,
    t: Target,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let q = query_map(req.uri().query());
    let mut verb = verb_for(req.method(), &t, &q);
    if let Some(sub) = &t.subresource {
        if !t.def.has_subresource(sub) {
            return Err(ApiError::no_route());
        }
        // Exec over WebSocket arrives as GET; since 1.31 the apiserver also requires `create`
        // on pods/exec for it (KEP-4006, feature AuthorizePodWebsocketUpgradeCreatePermission).
        // The same holds for pods/portforward, whose WebSocket requests are GETs too.
        if sub == "exec" || sub == "portforward" {
            verb = "create";
        }
    }
    let res_name = match &t.subresource {
        Some(s) => format!("{}/{}", t.def.plural, s),
        None => t.def.plural.to_string(),
    };
    if !user.can(verb, &res_name, t.namespace.as_deref()) {
        return Err(ApiError::forbidden(
            &user.name,
            verb,
            t.def.group,
            t.def.plural,
            t.subresource.as_deref(),
            t.namespace.as_deref(),
            t.name.as_deref(),
        ));
    }
    if let Some(ns) = &t.namespace {
        if t.def.plural != "events" && verb == "create" && t.subresource.is_none() {
            let nsobj = sim.store.get(resources::namespaces(), None, ns)?;
            if nsobj["status"]["phase"] == "Terminating" {
                return Err(ApiError::forbidden_message(
                    &t.def.qualified(),
                    "",
                    format!("{} is forbidden: unable to create new content in namespace {ns} because it is being terminated", t.def.qualified()),
                ));
            }
        }
    }
    match (t.subresource.as_deref(), verb) {
        (Some("exec"), _) => crate::exec::handle(sim, t, q, req).await,
        (Some("portforward"), _) => crate::portforward::handle(sim, t, q, req).await,
        (Some("log"), _) => crate::kubelet::logs(&sim, &t, &q).map(|b| {
            let mut r = Response::new(full(b));
            r.headers_mut()
                .insert("content-type", "text/plain".parse().expect("static"));
            r
        }),
        (_, "list") => list(&sim, &t, &q, req.headers()),
        (_, "watch") => watch(sim, &t, &q, req.headers()),
        (_, "get") => {
            let obj = sim.store.get(
                t.def,
                t.namespace.as_deref(),
                t.name.as_deref().unwrap_or_default(),
            )?;
            Ok(json_response(
                StatusCode::OK,
                &maybe_table(t.def, obj, req.headers(), &q),
            ))
        }
        (_, "create") => {
            let (parts, body) = read_body(req).await?;
            let mut obj = parse_body(&parts.headers, &body)?;
            let warnings = validate_fields(&t, &q, &mut obj)?;
            let dry = q1(&q, "dryRun").is_some();
            create(&sim, user, &t, obj, dry)
                .map(|(code, v)| with_warnings(json_response(code, &v), &warnings))
        }
        (_, "update") => {
            let (parts, body) = read_body(req).await?;
            let mut obj = parse_body(&parts.headers, &body)?;
            let warnings = validate_fields(&t, &q, &mut obj)?;
            update(&sim, &t, obj)
                .map(|v| with_warnings(json_response(StatusCode::OK, &v), &warnings))
        }
        (_, "patch") => {
            let (parts, body) = read_body(req).await?;
            let ct = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            // The patch type is checked before the body is read: an apply patch
            // (`kubectl apply --server-side`, YAML) gets the 415 of a server without it.
            patch_type(&ct)?;
            let mut p = parse_json(&body)?;
            let warnings = if ct.starts_with("application/json-patch+json") {
                Vec::new()
            } else {
                validate_fields(&t, &q, &mut p)?
            };
            patch_object(&sim, &t, &ct, &p)
                .map(|v| with_warnings(json_response(StatusCode::OK, &v), &warnings))
        }
        (_, "delete") => {
            let (parts, body) = read_body(req).await?;
            let opts = if body.is_empty() {
                json!({})
            } else {
                parse_body(&parts.headers, &body)?
            };
            delete(&sim, &t, &q, &opts)
        }
        (_, "deletecollection") => {
            let (items, _) = sim.store.list(t.def, t.namespace.as_deref());
            let sel = selectors(&t, &q)?;
            for o in items
                .iter()
                .filter(|o| sel.0.matches(o["metadata"]["labels"].as_object()) && sel.1.matches(o))
            {
                let mut t2 = t.clone();
                t2.name = o["metadata"]["name"].as_str().map(str::to_string);
                t2.namespace = o["metadata"]["namespace"].as_str().map(str::to_string);
                delete(&sim, &t2, &q, &json!({}))?;
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn selectors(
    t: &Target,
    q: &HashMap<String, Vec<String>>,
) -> ApiResult<(LabelSelector, FieldSelector)> {
    let l = match q1(q, "labelSelector") {
        Some(s) => LabelSelector::parse(s)?,
        None => LabelSelector::default(),
    };
    let f = match q1(q, "fieldSelector") {
        Some(s) => FieldSelector::parse(s, t.def.plural)?,
        None => FieldSelector::default(),
    };
    Ok((l, f))
}

fn wants_table(headers: &hyper::HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// A single object, or its Table (`Accept: application/json;as=Table;…`).
fn maybe_table(
    def: &ResourceDef,
    obj: Value,
    headers: &hyper::HeaderMap,
    q: &HashMap<String, Vec<String>>,
) -> Value {
    if wants_table(headers) {
        return tables::to_table(def, &[obj], include_of(q));
    }
    obj
}

/// GET on a collection: one page (`limit`, `continue`; see [`crate::paging`]) of the objects
/// the selectors keep, as a `<Kind>List` or a Table.
fn list(
    sim: &SimRef,
    t: &Target,
    q: &HashMap<String, Vec<String>>,
    headers: &hyper::HeaderMap,
) -> ApiResult<Response<Body>> {
    let (l, f) = selectors(t, q)?;
    let ns = t.namespace.as_deref();
    let rv = q1(q, "resourceVersion").filter(|s| !s.is_empty());
    let limit = match q1(q, "limit").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n < 0 => return Err(ApiError::bad_request("limit must not be negative")),
            Ok(n) => Some(n as usize),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "unable to parse quantity \"limit\": invalid value {s:?}"
                )))
            }
        },
    }
    // `limit=0` is no limit; with resourceVersion=0 the list comes from the watch cache,
    // which serves everything regardless of limit (kubernetes/kubernetes#70735).
    .filter(|n| *n > 0 && rv != Some("0"));
    let (snap, start) = match q1(q, "continue").filter(|s| !s.is_empty()) {
        None => (sim.store.snapshot(t.def, ns), None),
        Some(token) => {
            if rv.is_some() {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let c = crate::paging::decode(token)
                .map_err(|e| ApiError::bad_request(format!("invalid continue token: {e}")))?;
            let snap = if c.rv < 0 {
                sim.store.snapshot(t.def, ns)
            } else {
                sim.store
                    .kept_snapshot(t.def, ns, c.rv as u64)
                    .ok_or_else(|| {
                        ApiError::continue_expired(crate::paging::encode(&c.start, -1))
                    })?
            };
            (snap, Some(c.start))
        }
    };
    let page = crate::paging::page(
        &snap,
        start.as_deref(),
        limit,
        |o| l.matches(o["metadata"]["labels"].as_object()) && f.matches(o),
        l.is_empty() && f.is_empty(),
    );
    if page.continue_token.is_some() {
        sim.store.keep_snapshot(t.def, ns, &snap);
    }
    let mut meta = json!({"resourceVersion": snap.rv.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(n) = page.remaining {
        meta["remainingItemCount"] = json!(n);
    }
    if wants_table(headers) {
        let items: Vec<Value> = page.items.iter().map(|v| Value::clone(v)).collect();
        let mut table = tables::to_table(t.def, &items, include_of(q));
        table["metadata"] = meta;
        return Ok(json_response(StatusCode::OK, &table));
    }
    Ok(list_response(t.def, &meta, &page.items))
}

/// A `<Kind>List` written item by item from the shared objects, with no copy of them first.
fn list_response(
    def: &ResourceDef,
    meta: &Value,
    items: &[std::sync::Arc<Value>],
) -> Response<Body> {
    let mut out = Vec::with_capacity(items.len() * 4096 + 256);
    let head = json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": meta});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    // The head object without its closing brace, then the items.
    out.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, item.as_ref());
    }
    out.extend_from_slice(b"]}");
    let mut r = json_response(StatusCode::OK, &Value::Null);
    *r.body_mut() = full(out);
    r
}

fn event_matches(ev: &WatchEvent, t: &Target, l: &LabelSelector, f: &FieldSelector) -> bool {
    ev.resource == t.def.qualified()
        && t.namespace
            .as_deref()
            .is_none_or(|ns| ev.namespace.as_deref() == Some(ns))
        && l.matches(ev.object["metadata"]["labels"].as_object())
        && f.matches(&ev.object)
}

/// A watch: newline-delimited `{"type": ..., "object": ...}` frames, as
/// staging/src/k8s.io/apiserver/pkg/endpoints/handlers/watch.go streams them over HTTP/1.1
/// chunked encoding. Without a resourceVersion (or with "0") the current objects come first as
/// ADDED events ("Get State and Start at Most Recent"), as the API concepts doc describes.
fn watch(
    sim: SimRef,
    t: &Target,
    q: &HashMap<String, Vec<String>>,
    headers: &hyper::HeaderMap,
) -> ApiResult<Response<Body>> {
    let (l, f) = selectors(t, q)?;
    let rv: Option<u64> = match q1(q, "resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    let table = wants_table(headers);
    // A protobuf watch: length-delimited WatchEvent frames (see crate::protobuf).
    let protobuf = !table
        && prefers_protobuf(headers)
        && crate::protobuf::supports(&t.def.api_version(), t.def.kind);
    let bookmarks = q1(q, "allowWatchBookmarks") == Some("true");
    let timeout = q1(q, "timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let (past, mut rx) = sim.store.watch_from(rv)?;
    let mut initial: Vec<(String, Value)> = Vec::new();
    if rv.is_none() {
        let (items, _) = sim.store.list(t.def, t.namespace.as_deref());
        initial.extend(
            items
                .into_iter()
                .filter(|o| l.matches(o["metadata"]["labels"].as_object()) && f.matches(o))
                .map(|o| ("ADDED".to_string(), o)),
        );
    }
    for ev in past.iter().filter(|e| event_matches(e, t, &l, &f)) {
        initial.push((ev.kind.as_str().to_string(), ev.object.clone()));
    }
    let def = t.def;
    let t2 = t.clone();
    let q2 = q.clone();
    let (tx, rxb) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);
    let mut outage = sim.faults.outage_signal();
    tokio::spawn(async move {
        let encode = |kind: &str, obj: Value| -> Bytes {
            if protobuf {
                return match crate::protobuf::encode_watch_event(kind, &obj) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        tracing::error!("watch event not encodable as protobuf: {e}");
                        Bytes::new()
                    }
                };
            }
            let obj = if table {
                tables::to_table(def, &[obj], include_of(&q2))
            } else {
                obj
            };
            let mut b =
                serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        for (k, o) in initial {
            if tx.send(Ok(Frame::data(encode(&k, o)))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = outage.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = sim.store.current_rv();
                    let bm = json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": rv.to_string(), "annotations": {}}});
                    let b = if protobuf {
                        Bytes::from(crate::protobuf::encode_watch_event("BOOKMARK", &bm).unwrap_or_default())
                    } else {
                        let mut b = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": bm})).unwrap_or_default();
                        b.push(b'\n');
                        Bytes::from(b)
                    };
                    if tx.send(Ok(Frame::data(b))).await.is_err() { return; }
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if event_matches(&ev, &t2, &l, &f) && tx.send(Ok(Frame::data(encode(ev.kind.as_str(), ev.object.clone())))).await.is_err() {
                            return;
                        }
                    }
                    // A watcher that fell behind is closed; clients re-list, as with the real cacher.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = tokio_stream_from(rxb);
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    let ct = if protobuf {
        crate::protobuf::WATCH_CONTENT_TYPE
    } else {
        "application/json"
    };
    r.headers_mut()
        .insert("content-type", ct.parse().expect("static"));
    r.headers_mut()
        .insert("transfer-encoding", "chunked".parse().expect("static"));
    Ok(r)
}

fn include_of(q: &HashMap<String, Vec<String>>) -> tables::IncludeObject {
    match q1(q, "includeObject") {
        Some("None") => tables::IncludeObject::None,
        Some("Object") => tables::IncludeObject::Object,
        _ => tables::IncludeObject::Metadata,
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

fn check_kind(t: &Target, obj: &Value) -> ApiResult<()> {
    if let Some(k) = obj["kind"].as_str() {
        if k != t.def.kind {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                obj["apiVersion"].as_str().unwrap_or_default(),
                t.def.api_version()
            )));
        }
    }
    Ok(())
}

pub fn create(
    sim: &SimRef,
    user: &User,
    t: &Target,
    mut obj: Value,
    dry_run: bool,
) -> ApiResult<(StatusCode, Value)> {
    check_kind(t, &obj)?;
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let (Some(url_ns), Some(body_ns)) = (&t.namespace, obj["metadata"]["namespace"].as_str()) {
        if url_ns != body_ns {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
    }
    if obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        match obj["metadata"]["generateName"].as_str() {
            Some(p) if !p.is_empty() => {
                obj["metadata"]["name"] = json!(admission::generate_name(p))
            }
            _ => {
                if t.def.plural != "selfsubjectaccessreviews"
                    && t.def.plural != "selfsubjectrulesreviews"
                    && t.def.plural != "selfsubjectreviews"
                {
                    return Err(ApiError::invalid(
                        t.def.kind,
                        t.def.group,
                        "",
                        vec![crate::errors::Cause {
                            field: "metadata.name".into(),
                            reason: "FieldValueRequired",
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ));
                }
            }
        }
    }
    let ns = t.namespace.as_deref();
    match t.def.plural {
        "selfsubjectaccessreviews" => return Ok((StatusCode::CREATED, access_review(user, obj))),
        "selfsubjectrulesreviews" => return Ok((StatusCode::CREATED, rules_review(user, obj))),
        "selfsubjectreviews" => return Ok((StatusCode::CREATED, self_review(user, obj))),
        "pods" => {
            let nsobj = sim
                .store
                .get(resources::namespaces(), None, ns.unwrap_or_default())?;
            obj["metadata"]["namespace"] = json!(ns);
            admission::admit_pod(&mut obj, &nsobj)?;
            service_account_admission(sim, ns.unwrap_or_default(), &obj)?;
        }
        "secrets" => {
            sim.store
                .get(resources::namespaces(), None, ns.unwrap_or_default())?;
            merge_string_data(&mut obj);
        }
        "jobs" => {
            sim.store
                .get(resources::namespaces(), None, ns.unwrap_or_default())?;
            crate::batch::admit_job(&mut obj)?;
        }
        "cronjobs" => {
            sim.store
                .get(resources::namespaces(), None, ns.unwrap_or_default())?;
            crate::batch::admit_cron_job(&mut obj)?;
        }
        "persistentvolumeclaims" => {
            sim.store
                .get(resources::namespaces(), None, ns.unwrap_or_default())?;
            let default_sc = default_storage_class(sim);
            admission::admit_pvc(&mut obj, default_sc.as_deref())?;
            crate::snapshots::normalize_data_sources(&mut obj);
        }
        "namespaces" => {
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        "persistentvolumes" => {
            obj["metadata"]["finalizers"] = json!(["kubernetes.io/pv-protection"]);
            if obj["status"]["phase"].is_null() {
                obj["status"] = json!({"phase": "Available"});
            }
        }
        _ => {
            if let Some(ns) = ns {
                if t.def.plural != "events" {
                    sim.store.get(resources::namespaces(), None, ns)?;
                }
            }
        }
    }
    if dry_run {
        return Ok((StatusCode::CREATED, obj));
    }
    let created = sim.store.create(t.def, ns, obj)?;
    sim.kick.notify_waiters();
    Ok((StatusCode::CREATED, created))
}

pub fn default_storage_class(sim: &SimRef) -> Option<String> {
    let (scs, _) = sim.store.list(resources::storage_classes(), None);
    scs.iter()
        .find(|s| {
            s["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
        })
        .and_then(|s| s["metadata"]["name"].as_str().map(str::to_string))
}

fn access_review(user: &User, mut obj: Value) -> Value {
    let ra = &obj["spec"]["resourceAttributes"];
    let resource = ra["resource"].as_str().unwrap_or_default();
    let sub = ra["subresource"].as_str().unwrap_or_default();
    let full = if sub.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{sub}")
    };
    let verb = ra["verb"].as_str().unwrap_or_default();
    let ns = ra["namespace"].as_str().filter(|s| !s.is_empty());
    let allowed = !ra.is_null() && user.can(verb, &full, ns);
    obj["apiVersion"] = json!("authorization.k8s.io/v1");
    obj["kind"] = json!("SelfSubjectAccessReview");
    obj["metadata"]["creationTimestamp"] = Value::Null;
    obj["status"] = if allowed {
        json!({"allowed": true, "reason": format!("RBAC: allowed by kubesim rules of User \"{}\"", user.name)})
    } else {
        json!({"allowed": false})
    };
    obj
}

/// plugin/pkg/admission/serviceaccount: a pod's ServiceAccount must exist. `default` is made by
/// the serviceaccounts controller moments after its namespace; kubesim lets pods of a namespace
/// that young through rather than reproduce that race.
fn service_account_admission(sim: &SimRef, ns: &str, pod: &Value) -> ApiResult<()> {
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    if sa == "default"
        || sim
            .store
            .try_get(resources::service_accounts(), Some(ns), sa)
            .is_some()
    {
        return Ok(());
    }
    let name = pod["metadata"]["name"]
        .as_str()
        .or(pod["metadata"]["generateName"].as_str())
        .unwrap_or_default();
    Err(ApiError::forbidden_message(
        "pods",
        name,
        format!("pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"),
    ))
}

/// `stringData` is write-only: merged into `data` (base64), overriding it
/// (pkg/apis/core/v1/conversion.go `Convert_v1_Secret_To_core_Secret`).
fn merge_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(sd) = secret.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (k, v) in sd.as_object().into_iter().flatten() {
        let s = v.as_str().unwrap_or_default();
        secret["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
    }
    if secret["type"].is_null() {
        secret["type"] = json!("Opaque");
    }
}

/// SelfSubjectReview (`kubectl auth whoami`): the authenticated user's name and groups
/// (pkg/registry/authentication/selfsubjectreview/rest.go).
fn self_review(user: &User, mut obj: Value) -> Value {
    obj["apiVersion"] = json!("authentication.k8s.io/v1");
    obj["kind"] = json!("SelfSubjectReview");
    obj["metadata"]["creationTimestamp"] = Value::Null;
    let mut info = json!({"username": user.name, "groups": user.groups});
    if let Some((ns, sa)) = crate::serviceaccounts::parse_user(&user.name) {
        info["extra"] = json!({
            "authentication.kubernetes.io/credential-id": [format!("kubesim-token:{ns}/{sa}")],
        });
    }
    obj["status"] = json!({"userInfo": info});
    obj
}

fn rules_review(user: &User, mut obj: Value) -> Value {
    let ns = obj["spec"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let rules: Vec<Value> = user
        .rules
        .iter()
        .filter(|r| r.namespaces.is_empty() || r.namespaces.contains(&ns))
        .map(|r| json!({"verbs": r.verbs, "apiGroups": ["*"], "resources": r.resources}))
        .collect();
    obj["apiVersion"] = json!("authorization.k8s.io/v1");
    obj["kind"] = json!("SelfSubjectRulesReview");
    obj["status"] = json!({
        "resourceRules": rules,
        "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/version"]}],
        "incomplete": false,
    });
    obj
}

/// PUT: the main resource ignores status changes and the status subresource ignores
/// everything but status (pkg/registry/core/pod/strategy.go PrepareForUpdate).
fn update(sim: &SimRef, t: &Target, new: Value) -> ApiResult<Value> {
    check_kind(t, &new)?;
    let name = t.name.clone().unwrap_or_default();
    if let Some(body_name) = new["metadata"]["name"].as_str() {
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
    }
    let status_only = t.subresource.as_deref() == Some("status");
    let want_rv = new["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let q = t.def.qualified();
    let out = sim.store.update(t.def, t.namespace.as_deref(), &name, |cur| {
        if let Some(rv) = &want_rv {
            if cur["metadata"]["resourceVersion"].as_str() != Some(rv.as_str()) {
                return Err(ApiError::conflict(&q, &name, "the object has been modified; please apply your changes to the latest version and try again"));
            }
        }
        if status_only {
            cur["status"] = new["status"].clone();
        } else {
            let status = cur["status"].clone();
            let deletion = cur["metadata"]["deletionTimestamp"].clone();
            *cur = new.clone();
            if !status.is_null() {
                cur["status"] = status;
            }
            if !deletion.is_null() {
                cur["metadata"]["deletionTimestamp"] = deletion;
            }
        }
        Ok(())
    })?;
    sim.kick.notify_waiters();
    finish_if_finalized(sim, t.def, t.namespace.as_deref(), &out)
}

/// The patch types kubesim applies. Server-side apply (`application/apply-patch+yaml`) is not
/// one: the answer is the 415 of an apiserver without it (handlers/patch.go
/// `negotiation.NewUnsupportedMediaTypeError(patchTypes)`).
fn patch_type(content_type: &str) -> ApiResult<&'static str> {
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => Ok("application/merge-patch+json"),
        "application/strategic-merge-patch+json" => Ok("application/strategic-merge-patch+json"),
        "application/json-patch+json" => Ok("application/json-patch+json"),
        _ => Err(ApiError::unsupported_media_type(content_type)),
    }
}

fn patch_object(sim: &SimRef, t: &Target, content_type: &str, p: &Value) -> ApiResult<Value> {
    let name = t.name.clone().unwrap_or_default();
    let status_only = t.subresource.as_deref() == Some("status");
    let ct = patch_type(content_type)?;
    let out = sim
        .store
        .update(t.def, t.namespace.as_deref(), &name, |cur| {
            let mut next = cur.clone();
            match ct {
                "application/merge-patch+json" => patch::merge_patch(&mut next, p),
                "application/strategic-merge-patch+json" => {
                    patch::strategic_merge_patch(&mut next, p)
                }
                _ => patch::json_patch(&mut next, p)?,
            }
            if status_only {
                cur["status"] = next["status"].clone();
            } else {
                next["status"] = cur["status"].clone();
                next["metadata"]["deletionTimestamp"] =
                    cur["metadata"]["deletionTimestamp"].clone();
                if next["metadata"]["deletionTimestamp"].is_null() {
                    if let Some(m) = next["metadata"].as_object_mut() {
                        m.remove("deletionTimestamp");
                    }
                }
                if cur["status"].is_null() {
                    if let Some(m) = next.as_object_mut() {
                        m.remove("status");
                    }
                }
                *cur = next;
            }
            Ok(())
        })?;
    sim.kick.notify_waiters();
    finish_if_finalized(sim, t.def, t.namespace.as_deref(), &out)
}

/// An object marked for deletion goes away once its last finalizer is removed.
fn finish_if_finalized(
    sim: &SimRef,
    def: &ResourceDef,
    ns: Option<&str>,
    obj: &Value,
) -> ApiResult<Value> {
    let terminating = !obj["metadata"]["deletionTimestamp"].is_null();
    let no_finalizers = obj["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty());
    let pod_waiting_for_kubelet = def.plural == "pods"
        && !obj["spec"]["nodeName"].is_null()
        && !crate::kubelet::pod_finished(obj);
    if terminating && no_finalizers && !pod_waiting_for_kubelet && def.plural != "namespaces" {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        return sim.store.remove(def, ns, name);
    }
    Ok(obj.clone())
}

/// A controller's DELETE (grace periods, finalizers and propagation as for a client's).
pub fn delete_object(
    sim: &SimRef,
    def: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &Value,
) -> ApiResult<()> {
    let t = Target {
        def,
        namespace: ns.map(str::to_string),
        name: Some(name.to_string()),
        subresource: None,
    };
    delete(sim, &t, &HashMap::new(), opts).map(|_| ())
}

/// DELETE with DeleteOptions: preconditions, grace period, finalizers.
fn delete(
    sim: &SimRef,
    t: &Target,
    q: &HashMap<String, Vec<String>>,
    opts: &Value,
) -> ApiResult<Response<Body>> {
    let name = t.name.clone().unwrap_or_default();
    let ns = t.namespace.as_deref();
    let cur = sim.store.get(t.def, ns, &name)?;
    let q_name = t.def.qualified();
    if let Some(uid) = opts["preconditions"]["uid"].as_str() {
        let actual = cur["metadata"]["uid"].as_str().unwrap_or_default();
        if uid != actual {
            return Err(ApiError::conflict(
                &q_name,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = opts["preconditions"]["resourceVersion"].as_str() {
        let actual = cur["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if rv != actual {
            return Err(ApiError::conflict(&q_name, &name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}")));
        }
    }
    // Dependents: a batch/v1 Job orphans its pods unless asked otherwise
    // (pkg/registry/batch/job/strategy.go DefaultGarbageCollectionPolicy); everything else
    // leaves them to the garbage collector (batch.rs), which deletes them in the background.
    let policy = opts["propagationPolicy"]
        .as_str()
        .or_else(|| q1(q, "propagationPolicy"))
        .or(opts["orphanDependents"]
            .as_bool()
            .filter(|o| *o)
            .map(|_| "Orphan"))
        .unwrap_or(if t.def.plural == "jobs" {
            "Orphan"
        } else {
            "Background"
        });
    if policy == "Orphan" {
        crate::batch::orphan_dependents(sim, &cur);
    }
    let grace: Option<i64> = opts["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| q1(q, "gracePeriodSeconds").and_then(|s| s.parse().ok()));
    let has_finalizers = cur["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    let already = !cur["metadata"]["deletionTimestamp"].is_null();
    let is_pod = t.def.plural == "pods";
    let scheduled =
        is_pod && !cur["spec"]["nodeName"].is_null() && !crate::kubelet::pod_finished(&cur);
    let pod_grace = grace.unwrap_or_else(|| {
        cur["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30)
    });
    if t.def.plural == "namespaces" || has_finalizers || scheduled {
        let out = sim.store.update(t.def, ns, &name, |o| {
            if !already
                || (is_pod
                    && pod_grace
                        < o["metadata"]["deletionGracePeriodSeconds"]
                            .as_i64()
                            .unwrap_or(i64::MAX))
            {
                let when = chrono::Utc::now()
                    + chrono::Duration::seconds(if is_pod { pod_grace } else { 0 });
                o["metadata"]["deletionTimestamp"] =
                    json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                o["metadata"]["deletionGracePeriodSeconds"] =
                    json!(if is_pod { pod_grace } else { 0 });
            }
            if t.def.plural == "namespaces" {
                o["status"]["phase"] = json!("Terminating");
            }
            Ok(())
        })?;
        sim.kick.notify_waiters();
        if is_pod && pod_grace == 0 && !has_finalizers {
            // `--grace-period=0 --force`: the API object goes at once; the kubelet kills what is left.
            let gone = sim.store.remove(t.def, ns, &name)?;
            return Ok(json_response(StatusCode::OK, &gone));
        }
        return Ok(json_response(StatusCode::OK, &out));
    }
    let gone = sim.store.remove(t.def, ns, &name)?;
    sim.kick.notify_waiters();
    if is_pod {
        return Ok(json_response(StatusCode::OK, &gone));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": t.def.plural, "group": t.def.group, "uid": cur["metadata"]["uid"]},
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn headers(accept_encoding: &str) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        h.insert("accept-encoding", accept_encoding.parse().unwrap());
        h
    }

    #[test]
    fn gzip_is_taken_when_offered_and_not_refused() {
        assert!(accepts_gzip(&headers("gzip")));
        assert!(accepts_gzip(&headers("deflate, gzip;q=0.5")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("identity")));
        assert!(!accepts_gzip(&hyper::HeaderMap::new()));
    }

    #[tokio::test]
    async fn large_responses_are_gzipped_small_ones_and_streams_are_not() {
        let big = json!({"items": (0..20_000).map(|i| format!("pod-{i}")).collect::<Vec<_>>()});
        let plain = serde_json::to_vec(&big).unwrap();
        assert!(plain.len() > GZIP_THRESHOLD);
        let r = compressed(json_response(StatusCode::OK, &big)).await;
        assert_eq!(r.headers()["content-encoding"], "gzip");
        assert_eq!(r.headers()["vary"], "Accept-Encoding");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain);

        let small = compressed(json_response(StatusCode::OK, &json!({"kind": "Pod"}))).await;
        assert!(!small.headers().contains_key("content-encoding"));

        let mut streamed = json_response(StatusCode::OK, &big);
        streamed
            .headers_mut()
            .insert("transfer-encoding", "chunked".parse().unwrap());
        assert!(!compressed(streamed)
            .await
            .headers()
            .contains_key("content-encoding"));
    }
}

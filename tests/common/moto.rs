//! A real S3 API on loopback for tests: moto's server (PyPI `moto[server]`), one process per
//! test on its own free port so tests run in parallel.
//!
//! The binary is `$PVBACKUP_MOTO_SERVER` (set by `.ci/run`), else
//! `target/ci-tools/moto/bin/moto_server` (what `.ci/run` installs; see README, Development).
//! When neither exists the test fails with instructions: never a silent skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub port: u16,
    pub endpoint: String,
}

const S3_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIAPVBACKUPTESTKEY1/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

pub const KEY_ID: &str = "AKIAPVBACKUPTESTKEY1";
/// Any value works while auth is off; long and distinctive so a leak in output is findable.
pub const SECRET: &str = "pvbackup-test-secret-value-0123456789abcd";

pub fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PVBACKUP_MOTO_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PVBACKUP_MOTO_SERVER={} does not exist",
            p.display()
        );
        return p;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools/moto/bin/moto_server");
    assert!(
        p.is_file(),
        "moto_server not found at {} and PVBACKUP_MOTO_SERVER is not set. Install it with:\n  python3 -m venv target/ci-tools/moto && target/ci-tools/moto/bin/pip install 'moto[server]'\n(.ci/run does this)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    pub fn start() -> Moto {
        let bin = moto_binary();
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto_server starts");
            let mut m = Moto {
                child,
                port,
                endpoint: format!("http://127.0.0.1:{port}"),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = m.child.try_wait() {
                    break; // lost the port race: try another
                }
                if m.request("GET", "/moto-api/", &[], b"").0 == 200 {
                    return m;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto_server did not start on loopback");
    }

    /// One plain HTTP/1.1 request; (status, body). Unsigned: moto accepts that while auth is
    /// off, and routes by the credential scope of a (fake) Authorization header.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let (code, bytes) = self.request_bytes(method, path, headers, body);
        (code, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub fn request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        http(self.port, method, path, headers, body)
    }

    /// A request as an S3 client sends it. The signature is not checked while auth is off,
    /// but without an Authorization header moto treats the caller as anonymous, and objects
    /// are private.
    pub fn s3(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.request_bytes(method, path, &[("Authorization", S3_AUTH)], body)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let (code, body) = self.request("PUT", &format!("/{bucket}"), &[], b"");
        assert_eq!(code, 200, "creating bucket {bucket}: {body}");
    }

    /// Object keys in `bucket` (what `aws s3 ls --recursive` shows).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (code, body) = self.request(
            "GET",
            &format!("/{bucket}?list-type=2&max-keys=1000"),
            &[],
            b"",
        );
        assert_eq!(code, 200, "listing {bucket}: {body}");
        tags(&body, "Key")
    }

    /// Multipart uploads still open in `bucket` (`aws s3api list-multipart-uploads`).
    pub fn open_uploads(&self, bucket: &str) -> Vec<String> {
        let (code, body) = self.s3("GET", &format!("/{bucket}?uploads"), b"");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "listing uploads of {bucket}: {body}");
        tags(&body, "Key")
    }

    pub fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let (code, body) = self.s3("GET", &format!("/{bucket}/{key}"), b"");
        assert_eq!(
            code,
            200,
            "GET {bucket}/{key}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// `GetObjectAttributes` with the checksum and the parts (XML).
    pub fn object_attributes(&self, bucket: &str, key: &str) -> String {
        let (code, body) = self.request_bytes(
            "GET",
            &format!("/{bucket}/{key}?attributes"),
            &[
                ("Authorization", S3_AUTH),
                ("x-amz-object-attributes", "Checksum,ObjectParts,ObjectSize"),
            ],
            b"",
        );
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(code, 200, "attributes of {bucket}/{key}: {body}");
        body
    }

    /// Turns on moto's IAM checks with one user allowed everything on S3; returns its
    /// (key id, secret). Requests signed with anything else are refused from then on.
    pub fn enable_auth(&self) -> (String, String) {
        let iam = "AWS4-HMAC-SHA256 Credential=AKIAIAMSETUP/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0";
        let form = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", iam),
        ];
        let call = |body: &str| {
            let (code, text) = self.request("POST", "/", &form, body.as_bytes());
            assert_eq!(code, 200, "IAM {body}: {text}");
            text
        };
        call("Action=CreateUser&UserName=pvbackup&Version=2010-05-08");
        let key = call("Action=CreateAccessKey&UserName=pvbackup&Version=2010-05-08");
        let policy = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22s3%3A*%22%2C%22Resource%22%3A%22*%22%7D%5D%7D";
        call(&format!(
            "Action=PutUserPolicy&UserName=pvbackup&PolicyName=s3&PolicyDocument={policy}&Version=2010-05-08"
        ));
        let (code, text) = self.request("POST", "/moto-api/reset-auth", &[], b"0");
        assert_eq!(code, 200, "enabling auth: {text}");
        (
            tags(&key, "AccessKeyId").remove(0),
            tags(&key, "SecretAccessKey").remove(0),
        )
    }

    /// The environment the plugin gets: static keys, this endpoint, nothing from the host's
    /// ~/.aws, and never instance metadata (no traffic off loopback).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request to 127.0.0.1:`port`; (status, body), (0, empty) when there is
/// no answer.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let addr: SocketAddr = format!("127.0.0.1:{}", port).parse().unwrap();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, Vec::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        port,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, Vec::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let Some(at) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, Vec::new());
    };
    let head = String::from_utf8_lossy(&out[..at]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = out.split_off(at + 4);
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Texts of every `<tag>…</tag>` in `xml`.
pub fn tags(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}

/// Environment variables the plugin must not inherit from the host in object-storage tests.
pub const SCRUB: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
];

/// A loopback proxy in front of a server that answers every `every`-th request itself with
/// `503 SlowDown` (S3's throttling reply) instead of forwarding it: transient errors, for real.
pub struct ThrottlingProxy {
    pub port: u16,
    pub throttled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ThrottlingProxy {
    pub fn start(target_port: u16, every: usize) -> ThrottlingProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let throttled = Arc::new(AtomicUsize::new(0));
        let t = throttled.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let (seen, t) = (seen.clone(), t.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(client, target_port, || {
                        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                        let throttle = n % every == 0;
                        if throttle {
                            t.fetch_add(1, Ordering::SeqCst);
                        }
                        throttle
                    });
                });
            }
        });
        ThrottlingProxy { port, throttled }
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body) from a test proxy's client;
/// `None` when the client closed before a whole head arrived.
pub(crate) fn read_request(client: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let length: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    client.read_exact(&mut body)?;
    Ok(Some((text, body)))
}

/// Sends a request read by [`read_request`] to `127.0.0.1:target_port` with `Connection:
/// close`, and relays the whole answer to `client`.
pub(crate) fn forward(
    client: &mut TcpStream,
    target_port: u16,
    text: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut forwarded: String = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect();
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(("127.0.0.1", target_port))?;
    upstream.write_all(forwarded.as_bytes())?;
    upstream.write_all(body)?;
    std::io::copy(&mut upstream, client)?;
    Ok(())
}

/// Serves one request on `client` (then closes it): throttled, or forwarded with
/// `Connection: close` and the whole answer relayed.
fn proxy_one(
    mut client: TcpStream,
    target_port: u16,
    throttle: impl FnOnce() -> bool,
) -> std::io::Result<()> {
    let Some((text, body)) = read_request(&mut client)? else {
        return Ok(());
    };
    if throttle() {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        write!(
            client,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        return Ok(());
    }
    forward(&mut client, target_port, &text, &body)
}

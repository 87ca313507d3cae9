//! Microsoft's storage emulator (npm `azurite`) on loopback, one process per test.
//!
//! The binary is `$PVBACKUP_AZURITE_BLOB` (set by `.ci/run`), else
//! `target/ci-tools/azurite/node_modules/.bin/azurite-blob`; missing means a loud failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::moto::tags;

pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's published, fixed key
/// (<https://learn.microsoft.com/en-us/azure/storage/common/storage-use-azurite#http-connection-strings>).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Child,
    pub port: u16,
    _data: tempfile::TempDir,
}

pub fn azurite_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PVBACKUP_AZURITE_BLOB") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PVBACKUP_AZURITE_BLOB={} does not exist",
            p.display()
        );
        return p;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/ci-tools/azurite/node_modules/.bin/azurite-blob");
    assert!(
        p.is_file(),
        "azurite-blob not found at {} and PVBACKUP_AZURITE_BLOB is not set. Install it with:\n  mkdir -p target/ci-tools/azurite && (cd target/ci-tools/azurite && npm install azurite)\n(.ci/run does this)",
        p.display()
    );
    p
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

impl Azurite {
    pub fn start() -> Azurite {
        let bin = azurite_binary();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let data = tempfile::tempdir().unwrap();
            let child = Command::new(&bin)
                .args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--location",
                    data.path().to_str().unwrap(),
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--silent",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("azurite-blob starts");
            let mut a = Azurite {
                child,
                port,
                _data: data,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = a.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return a;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("azurite did not start on loopback");
    }

    pub fn blob_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// How an Azure user points tools at a storage account: a connection string.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AZURE_STORAGE_CONNECTION_STRING".into(),
                format!(
                    "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={};",
                    self.blob_endpoint()
                ),
            ),
            // Never managed identity (a metadata endpoint off loopback) in tests.
            ("AZURE_MSI_ENDPOINT".into(), "http://127.0.0.1:9/token".into()),
        ]
    }

    /// A Shared Key signed request (what the az CLI sends), (status, body).
    /// <https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-shared-key>
    pub fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let mut q: Vec<(&str, &str)> = query.to_vec();
        q.sort();
        let mut resource = format!("/{ACCOUNT}/{ACCOUNT}{path}");
        for (k, v) in &q {
            resource.push_str(&format!("\n{k}:{v}"));
        }
        let blob_type = if method == "PUT" && !q.iter().any(|(k, _)| *k == "restype") {
            "x-ms-blob-type:BlockBlob\n"
        } else {
            ""
        };
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let to_sign = format!(
            "{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n{blob_type}x-ms-date:{date}\nx-ms-version:{version}\n{resource}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        let sig =
            base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let auth = format!("SharedKey {ACCOUNT}:{sig}");
        let query_string = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let url_path = if query_string.is_empty() {
            format!("/{ACCOUNT}{path}")
        } else {
            format!("/{ACCOUNT}{path}?{query_string}")
        };
        let mut headers = vec![
            ("x-ms-date", date.as_str()),
            ("x-ms-version", version),
            ("Authorization", auth.as_str()),
        ];
        if !blob_type.is_empty() {
            headers.push(("x-ms-blob-type", "BlockBlob"));
        }
        super::moto::http(self.port, method, &url_path, &headers, body)
    }

    pub fn create_container(&self, name: &str) {
        let (code, body) =
            self.request("PUT", &format!("/{name}"), &[("restype", "container")], b"");
        assert_eq!(
            code,
            201,
            "creating container {name}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Committed blob names in `container`.
    pub fn blobs(&self, container: &str) -> Vec<String> {
        let (code, body) = self.request(
            "GET",
            &format!("/{container}"),
            &[("comp", "list"), ("restype", "container")],
            b"",
        );
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "listing {container}: {body}");
        tags(&body, "Name")
    }

    pub fn blob(&self, container: &str, name: &str) -> Vec<u8> {
        let (code, body) = self.request("GET", &format!("/{container}/{name}"), &[], b"");
        assert_eq!(
            code,
            200,
            "GET {container}/{name}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    pub fn put_blob(&self, container: &str, name: &str, data: &[u8]) {
        let (code, body) = self.request("PUT", &format!("/{container}/{name}"), &[], data);
        assert_eq!(
            code,
            201,
            "PUT {container}/{name}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

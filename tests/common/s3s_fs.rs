//! An S3 server that checks `x-amz-checksum-sha256`, on loopback: `s3s-fs` (crates.io, the
//! file-system server of the s3s project), one process per test. moto accepts any checksum
//! header; s3s-fs 0.14.1 recomputes the SHA-256 of a PutObject body and refuses a mismatch
//! with `400 BadDigest` ("checksum_sha256 mismatch", `crates/s3s-fs/src/s3.rs`, `put_object`).
//! That version does not check UploadPart bodies (later ones do, but need a newer Rust than
//! this repository's toolchain), so only single PUTs are covered here.
//!
//! With a signed payload (object_store's default) s3s first checks the body against the
//! signed `x-amz-content-sha256` and answers a mismatch with `500 InternalError` (s3s-fs
//! `UploadStreamError: Sha256Mismatch`), where S3 answers `400 XAmzContentSHA256Mismatch`.
//! And 0.14.1 writes a PutObject's file before comparing x-amz-checksum-sha256: the object it
//! refuses with BadDigest stays stored, where S3 stores nothing.
//!
//! The binary is `$PVBACKUP_S3S_FS` (set by `.ci/run`), else `target/ci-tools/s3s-fs/bin/s3s-fs`;
//! missing means a loud failure with the install command.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::moto::{forward, http, read_request, KEY_ID, SECRET};

pub const VERSION: &str = "0.14.1";

pub fn s3s_fs_binary() -> PathBuf {
    let install = format!(
        "cargo install --locked --root target/ci-tools/s3s-fs s3s-fs@{VERSION} --features binary\n(.ci/run does this)"
    );
    if let Some(p) = std::env::var_os("PVBACKUP_S3S_FS") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PVBACKUP_S3S_FS={} does not exist. Install it with:\n  {install}",
            p.display()
        );
        return p;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools/s3s-fs/bin/s3s-fs");
    assert!(
        p.is_file(),
        "s3s-fs not found at {} and PVBACKUP_S3S_FS is not set. Install it with:\n  {install}",
        p.display()
    );
    p
}

pub struct S3sFs {
    child: Child,
    pub port: u16,
    pub root: tempfile::TempDir,
}

impl S3sFs {
    /// Starts the server with one key pair (the tests' `KEY_ID`/`SECRET`): s3s refuses signed
    /// requests when it has no authentication provider.
    pub fn start() -> S3sFs {
        let bin = s3s_fs_binary();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let root = tempfile::tempdir().unwrap();
            let child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", KEY_ID, "--secret-key", SECRET])
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("s3s-fs starts");
            let mut s = S3sFs { child, port, root };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = s.child.try_wait() {
                    break; // lost the port race: try another
                }
                // Unsigned, so refused (403); any answer means it is up.
                if http(port, "GET", "/", &[], b"").0 != 0 {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("s3s-fs did not start on loopback");
    }

    /// A bucket is a directory under the server's root (s3s-fs `FileSystem`).
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir(self.root.path().join(bucket)).unwrap();
    }

    /// Regular files the server stored under `bucket` (its data lives in plain files).
    pub fn stored(&self, bucket: &str) -> Vec<PathBuf> {
        let dir = self.root.path().join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(&dir).unwrap().to_path_buf());
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback proxy that, while `corrupt` is set, flips one bit in the middle of every PUT
/// body it forwards, leaving the headers (and so the client's checksum) as they were: damage
/// in transit, for real.
pub struct CorruptingProxy {
    pub port: u16,
    pub corrupt: Arc<AtomicBool>,
    pub corrupted: Arc<AtomicUsize>,
}

impl CorruptingProxy {
    pub fn start(target_port: u16) -> CorruptingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let corrupt = Arc::new(AtomicBool::new(false));
        let corrupted = Arc::new(AtomicUsize::new(0));
        let (c, n) = (corrupt.clone(), corrupted.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let (c, n) = (c.clone(), n.clone());
                std::thread::spawn(move || {
                    let _ = relay_one(client, target_port, &c, &n);
                });
            }
        });
        CorruptingProxy {
            port,
            corrupt,
            corrupted,
        }
    }
}

/// Serves one request on `client` (then closes it), forwarded with `Connection: close`.
fn relay_one(
    mut client: TcpStream,
    target_port: u16,
    corrupt: &AtomicBool,
    corrupted: &AtomicUsize,
) -> std::io::Result<()> {
    let Some((text, mut body)) = read_request(&mut client)? else {
        return Ok(());
    };
    if text.starts_with("PUT ") && !body.is_empty() && corrupt.load(Ordering::SeqCst) {
        let mid = body.len() / 2;
        body[mid] ^= 0x01;
        corrupted.fetch_add(1, Ordering::SeqCst);
    }
    forward(&mut client, target_port, &text, &body)
}

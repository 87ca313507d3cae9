//! The S3 upload checksum (`x-amz-checksum-sha256`) against a server that checks it: s3s-fs
//! on loopback (moto, used by the other S3 tests, accepts any value). A proxy flips one bit
//! of the body in transit; the store must refuse the object, and the plugin must report it.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use common::moto::{KEY_ID, SECRET};
use common::s3s_fs::{CorruptingProxy, S3sFs};
use kubectl_pvbackup::destination::object::config::Env;
use kubectl_pvbackup::destination::object::{open_with_env, url};
use kubectl_pvbackup::destination::{Destination, StoreOptions};

fn dest(port: u16, url_text: &str, extra: &[(&str, &str)]) -> Box<dyn Destination> {
    let endpoint = format!("http://127.0.0.1:{port}");
    let vars = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = Env { vars, home: None };
    let u = url::parse(url_text).unwrap().unwrap();
    let opts = StoreOptions {
        endpoint: None,
        part_size: Some(5 << 20),
    };
    Box::new(open_with_env(u, &opts, &env).expect("destination opens"))
}

/// Writes `data` as one object (smaller than a part: one PUT) through a proxy that damages
/// every PUT body when `corrupt`; the commit's outcome.
fn put_through(
    d: &dyn Destination,
    proxy: &CorruptingProxy,
    key: &str,
    data: &[u8],
    corrupt: bool,
) -> Result<(), String> {
    proxy.corrupt.store(corrupt, Ordering::SeqCst);
    let mut w = d.create(key).unwrap();
    w.write_all(data).unwrap();
    let r = w.commit().map_err(|e| e.to_string());
    proxy.corrupt.store(false, Ordering::SeqCst);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_damaged_in_transit_is_refused_by_the_store() {
    let s3 = S3sFs::start();
    s3.create_bucket("pv-backups");
    let proxy = CorruptingProxy::start(s3.port);
    let manifest = br#"{"schema": 2, "archive": {"sha256": "..."}}"#.repeat(100);

    // Signed payload (the default): the body is covered by the signature's payload hash and
    // by x-amz-checksum-sha256. Untouched it goes up and reads back; damaged it is refused.
    let d = dest(proxy.port, "s3://pv-backups/team", &[]);
    put_through(&*d, &proxy, "id1/ns/pvc.manifest.json", &manifest, false).unwrap();
    let mut back = Vec::new();
    d.open("id1/ns/pvc.manifest.json")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == manifest);
    let err = put_through(&*d, &proxy, "id2/ns/pvc.manifest.json", &manifest, true)
        .expect_err("a damaged body must not be stored");
    assert!(err.contains("id2/ns/pvc.manifest.json"), "{err}");

    // Unsigned payload (AWS_UNSIGNED_PAYLOAD=true): x-amz-checksum-sha256 is the only thing
    // that covers the body, and the store refuses the mismatch with BadDigest.
    let d = dest(
        proxy.port,
        "s3://pv-backups/team",
        &[("AWS_UNSIGNED_PAYLOAD", "true")],
    );
    put_through(&*d, &proxy, "id3/ns/pvc.manifest.json", &manifest, false).unwrap();
    let err = put_through(&*d, &proxy, "id4/ns/pvc.manifest.json", &manifest, true)
        .expect_err("a damaged body must not be stored");
    assert!(err.contains("id4/ns/pvc.manifest.json"), "{err}");
    assert!(err.contains("BadDigest"), "{err}");

    assert!(proxy.corrupted.load(Ordering::SeqCst) >= 2);
    // The refused signed-payload object was never stored. s3s-fs 0.14.1 writes a PutObject's
    // file before it compares x-amz-checksum-sha256, so the id4 it refused stays on its disk;
    // S3 stores nothing it refuses. What matters here is that the plugin was told.
    let stored = s3.stored("pv-backups");
    let has = |k: &str| stored.contains(&std::path::PathBuf::from(format!("team/{k}")));
    assert!(has("id1/ns/pvc.manifest.json"), "{stored:?}");
    assert!(has("id3/ns/pvc.manifest.json"), "{stored:?}");
    assert!(!has("id2/ns/pvc.manifest.json"), "{stored:?}");
}

//! The object-storage destination against a real S3 API (moto on loopback), without a
//! cluster: multipart uploads, commit/abort, ranged reads, listing.

mod common;

use std::io::{Read, Write};

use common::azurite::Azurite;
use common::moto::Moto;
use kubectl_pvbackup::destination::object::config::Env;
use kubectl_pvbackup::destination::object::{open_with_env, url};
use kubectl_pvbackup::destination::{Destination, StoreOptions};

fn dest(moto: &Moto, url_text: &str, part_mib: u64) -> Box<dyn Destination> {
    let env = Env {
        vars: moto.env().into_iter().collect(),
        home: None,
    };
    let u = url::parse(url_text).unwrap().unwrap();
    let opts = StoreOptions {
        endpoint: None,
        part_size: Some(part_mib << 20),
    };
    Box::new(open_with_env(u, &opts, &env).expect("destination opens"))
}

/// Deterministic, incompressible-looking bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_in_pieces(w: &mut dyn Write, bytes: &[u8]) {
    // Odd piece sizes so part boundaries fall inside writes.
    for piece in bytes.chunks(777_777) {
        w.write_all(piece).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_commits_and_reads_back_byte_for_byte() {
    let moto = Moto::start();
    moto.create_bucket("pv-backups");
    let d = dest(&moto, "s3://pv-backups/team/a", 5);
    let bytes = data(23 << 20, 7); // five parts of 5 MiB: four full, one short
    let mut w = d.create("id1/ns/pvc.tar.zst").unwrap();
    write_in_pieces(&mut w, &bytes);
    assert!(
        moto.keys("pv-backups").is_empty(),
        "nothing is visible before commit"
    );
    w.commit().unwrap();
    assert_eq!(moto.keys("pv-backups"), vec!["team/a/id1/ns/pvc.tar.zst"]);
    assert!(moto.open_uploads("pv-backups").is_empty());
    // Every part went up with a SHA-256 the store checked; S3 keeps their composite.
    let attrs = moto.object_attributes("pv-backups", "team/a/id1/ns/pvc.tar.zst");
    assert!(attrs.contains("<ChecksumSHA256>"), "{attrs}");
    assert!(
        attrs.contains("<ChecksumType>COMPOSITE</ChecksumType>"),
        "{attrs}"
    );
    assert_eq!(
        moto.object("pv-backups", "team/a/id1/ns/pvc.tar.zst"),
        bytes,
        "the store holds exactly what was written"
    );
    let mut back = Vec::new();
    d.open("id1/ns/pvc.tar.zst")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == bytes, "ranged reads give the bytes back");
    assert_eq!(d.list("").unwrap(), vec!["id1/ns/pvc.tar.zst"]);
    assert_eq!(
        d.locate("id1/ns/pvc.tar.zst"),
        "s3://pv-backups/team/a/id1/ns/pvc.tar.zst"
    );

    // Small objects are one PUT, empty ones too.
    let mut w = d.create("id1/ns/pvc.manifest.json").unwrap();
    w.write_all(b"{}").unwrap();
    w.commit().unwrap();
    let w = d.create("id1/ns/empty").unwrap();
    w.commit().unwrap();
    let mut s = String::new();
    d.open("id1/ns/empty")
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "");
    assert_eq!(
        d.list("id1/").unwrap(),
        vec![
            "id1/ns/empty",
            "id1/ns/pvc.manifest.json",
            "id1/ns/pvc.tar.zst"
        ]
    );
    assert!(
        matches!(
            d.open("id1/ns/missing").err(),
            Some(kubectl_pvbackup::destination::DestinationError::NotFound { .. })
        ),
        "a missing object is NotFound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_upload_is_aborted_and_leaves_nothing() {
    let moto = Moto::start();
    moto.create_bucket("pv-backups");
    let d = dest(&moto, "s3://pv-backups", 5);
    {
        let mut w = d.create("id/ns/big.tar").unwrap();
        write_in_pieces(&mut w, &data(16 << 20, 3));
        // dropped: the failure path of a backup
    }
    assert!(
        moto.keys("pv-backups").is_empty(),
        "{:?}",
        moto.keys("pv-backups")
    );
    assert!(
        moto.open_uploads("pv-backups").is_empty(),
        "the multipart upload was aborted: {:?}",
        moto.open_uploads("pv-backups")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_incomplete_aborts_uploads_whose_writer_is_still_alive() {
    let moto = Moto::start();
    moto.create_bucket("pv-backups");
    let d: std::sync::Arc<dyn Destination> =
        std::sync::Arc::from(dest(&moto, "s3://pv-backups", 5));
    let mut w = d.create("id/ns/big.tar").unwrap();
    write_in_pieces(&mut w, &data(12 << 20, 5));
    // Two parts went out, so the multipart upload exists (the task may still be starting it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while moto.open_uploads("pv-backups").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no multipart upload started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // What an interrupt does while the writer is blocked on a stream that never ends.
    d.abort_incomplete();
    assert!(
        moto.open_uploads("pv-backups").is_empty(),
        "{:?}",
        moto.open_uploads("pv-backups")
    );
    // A commit after that fails instead of publishing a partial object.
    assert!(w.commit().is_err());
    assert!(moto.keys("pv-backups").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named() {
    let moto = Moto::start();
    let d = dest(&moto, "s3://no-such-bucket/x", 5);
    let e = d.check().unwrap_err().to_string();
    assert!(e.contains("no-such-bucket does not exist"), "{e}");
    let e = d.list("").unwrap_err().to_string();
    assert!(e.contains("no-such-bucket does not exist"), "{e}");
}

fn azure_dest(az: &Azurite, url_text: &str, part_mib: u64) -> Box<dyn Destination> {
    let env = Env {
        vars: az.env().into_iter().collect(),
        home: None,
    };
    let u = url::parse(url_text).unwrap().unwrap();
    let opts = StoreOptions {
        endpoint: None,
        part_size: Some(part_mib << 20),
    };
    Box::new(open_with_env(u, &opts, &env).expect("destination opens"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blocks_commit_read_back_and_vanish_when_dropped() {
    let az = Azurite::start();
    az.create_container("pv-backups");
    let d = azure_dest(&az, "az://pv-backups/team", 5);
    let bytes = data(13 << 20, 11);
    let mut w = d.create("id/ns/pvc.tar").unwrap();
    write_in_pieces(&mut w, &bytes);
    assert!(
        az.blobs("pv-backups").is_empty(),
        "nothing visible before commit"
    );
    w.commit().unwrap();
    assert_eq!(az.blobs("pv-backups"), vec!["team/id/ns/pvc.tar"]);
    assert!(az.blob("pv-backups", "team/id/ns/pvc.tar") == bytes);
    let mut back = Vec::new();
    d.open("id/ns/pvc.tar")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == bytes);
    assert_eq!(d.list("").unwrap(), vec!["id/ns/pvc.tar"]);
    {
        let mut w = d.create("id/ns/other.tar").unwrap();
        write_in_pieces(&mut w, &data(11 << 20, 12));
    }
    assert_eq!(
        az.blobs("pv-backups"),
        vec!["team/id/ns/pvc.tar"],
        "uncommitted blocks never become a blob"
    );
    let missing = azure_dest(&az, "az://no-such-container", 5);
    let e = missing.check().unwrap_err().to_string();
    assert!(
        e.contains("Container no-such-container does not exist"),
        "{e}"
    );
}

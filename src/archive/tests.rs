//! Tests of the backup pipeline and verification, with tar streams from the
//! `tar` crate's Builder and from the real busybox tar.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::*;
use crate::manifest::{Manifest, ManifestMeta};

pub(crate) const ALL: [Compression; 3] = [
    Compression::None,
    Compression::Gzip { level: 6 },
    Compression::Zstd { level: 1 },
];

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn long_name() -> String {
    format!("{}.txt", "l".repeat(146))
}

/// A directory with every kind of entry busybox tar is expected to handle.
pub(crate) fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("a/b/c")).unwrap();
    fs::create_dir(d.join("empty")).unwrap();
    fs::write(d.join("a/b/c/deep.txt"), b"deep content\n").unwrap();
    // Larger than the walker buffer so content hashing spans several reads.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 253) as u8).collect();
    fs::write(d.join("a/big.bin"), &big).unwrap();
    symlink("a/b/c/deep.txt", d.join("link")).unwrap();
    fs::hard_link(d.join("a/b/c/deep.txt"), d.join("a/hard")).unwrap();
    fs::write(d.join("secret"), b"top secret").unwrap();
    fs::set_permissions(d.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(d.join("secret"), Some(1000), Some(1000)).unwrap();
    fs::write(d.join("with space.txt"), b"space").unwrap();
    fs::write(d.join("ünïcödé-日本.txt"), b"unicode").unwrap();
    fs::write(d.join("new\nline"), b"newline").unwrap();
    fs::write(d.join(long_name()), b"long").unwrap();
    dir
}

pub(crate) fn busybox_tar(dir: &Path) -> Vec<u8> {
    let out = Command::new("busybox")
        .args(["tar", "-cf", "-", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .expect("busybox is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub(crate) fn backup(
    tar: &[u8],
    c: Compression,
) -> Result<(ArchiveSummary, Vec<u8>), ArchiveError> {
    let mut out = Vec::new();
    let s = stream_backup(tar, c, &mut out, &|_| {})?;
    Ok((s, out))
}

fn decompress(c: Compression, stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match c {
        Compression::None => out.extend_from_slice(stored),
        Compression::Gzip { .. } => {
            flate2::read::GzDecoder::new(stored)
                .read_to_end(&mut out)
                .unwrap();
        }
        Compression::Zstd { .. } => out = zstd::decode_all(stored).unwrap(),
    }
    out
}

pub(crate) fn manifest_for(c: Compression, s: &ArchiveSummary) -> Manifest {
    let meta = ManifestMeta {
        backup_id: "b1".into(),
        tool_version: "0.1.0".into(),
        created: chrono::DateTime::parse_from_rfc3339("2025-01-01T12:00:00Z")
            .unwrap()
            .into(),
        cluster: Default::default(),
        namespace: "ns".into(),
        pvc: Default::default(),
        source_pods: vec![],
        helper_image: "busybox".into(),
    };
    Manifest::new(meta, c, format!("b1{}", c.extension()), s.clone())
}

fn by_path(s: &ArchiveSummary) -> BTreeMap<String, EntryRecord> {
    s.entries
        .iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect()
}

#[test]
fn busybox_backup_records_every_entry() {
    let dir = fixture();
    let tar = busybox_tar(dir.path());
    for c in ALL {
        let calls = Cell::new(0u64);
        let mut out = Vec::new();
        let s = stream_backup(&tar[..], c, &mut out, &|n| {
            assert!(n >= calls.get());
            calls.set(n);
        })
        .unwrap();
        assert_eq!(calls.get(), tar.len() as u64, "final progress = all bytes");
        assert_eq!(s.tar_bytes, tar.len() as u64);
        assert_eq!(s.stored_bytes, out.len() as u64);
        assert_eq!(s.archive_sha256, sha(&out));
        assert_eq!(
            decompress(c, &out),
            tar,
            "{c}: stored bytes decode to the input"
        );

        let m = by_path(&s);
        let expect_paths = [
            ".",
            "a",
            "a/b",
            "a/b/c",
            "a/b/c/deep.txt",
            "a/big.bin",
            "a/hard",
            "empty",
            "link",
            "secret",
            "with space.txt",
            "ünïcödé-日本.txt",
            "new\nline",
            &long_name(),
        ];
        let mut want: Vec<&str> = expect_paths.to_vec();
        want.sort();
        let got: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(got, want);
        assert_eq!(s.entries.len(), want.len());

        assert_eq!(m["."].kind, EntryKind::Dir);
        assert_eq!(m["empty"].kind, EntryKind::Dir);
        assert_eq!(m["link"].kind, EntryKind::Symlink);
        assert_eq!(m["link"].link_target.as_deref(), Some("a/b/c/deep.txt"));
        assert_eq!(m["link"].sha256, None);
        // busybox stores the second name of a hard-linked inode as a link
        // to the first one it met; which one is first depends on readdir.
        let (first, second) = if m["a/hard"].kind == EntryKind::Hardlink {
            ("a/b/c/deep.txt", "a/hard")
        } else {
            ("a/hard", "a/b/c/deep.txt")
        };
        assert_eq!(m[second].kind, EntryKind::Hardlink);
        assert_eq!(m[second].link_target.as_deref(), Some(first));
        assert_eq!(m[first].sha256.as_deref(), Some(&*sha(b"deep content\n")));

        let secret = &m["secret"];
        assert_eq!(secret.kind, EntryKind::File);
        assert_eq!(secret.mode, 0o600);
        assert_eq!((secret.uid, secret.gid), (1000, 1000));
        assert_eq!(secret.size, 10);
        assert_eq!(secret.sha256.as_deref(), Some(&*sha(b"top secret")));
        assert!(secret.mtime > 1_600_000_000);

        let big = fs::read(dir.path().join("a/big.bin")).unwrap();
        assert_eq!(m["a/big.bin"].size, big.len() as u64);
        assert_eq!(m["a/big.bin"].sha256.as_deref(), Some(&*sha(&big)));
        assert_eq!(m["new\nline"].sha256.as_deref(), Some(&*sha(b"newline")));
        assert_eq!(
            m[long_name().as_str()].sha256.as_deref(),
            Some(&*sha(b"long"))
        );
        assert!(s.entries.iter().all(|e| e.path_hex.is_none()));
        assert_eq!(s.file_count, 7, "the hard link is not a file");
        assert_eq!(
            s.total_file_bytes,
            13 + big.len() as u64 + 10 + 5 + 7 + 7 + 4
        );
        assert!(s.unsafe_entries().is_empty());

        // And the manifest built from it loads and verifies.
        let manifest = manifest_for(c, &s);
        let manifest = Manifest::from_json(manifest.to_json_pretty().as_bytes()).unwrap();
        let report = verify_archive(&out[..], c, &manifest).unwrap();
        assert!(report.is_ok(), "{c}: {:?}", report.problems);
        assert_eq!(report.entries_checked, s.entries.len() as u64);
        assert_eq!(report.files_hashed, 7);
        assert_eq!(report.archive_sha256, s.archive_sha256);
    }
}

#[test]
fn builder_stream_with_long_and_non_utf8_names() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o1777);
    dir.set_size(0);
    b.append_data(&mut dir, "./tmp/", std::io::empty()).unwrap();

    let long = format!("tmp/{}", "n".repeat(200));
    let mut f = tar::Header::new_gnu();
    f.set_mode(0o4755);
    f.set_uid(7);
    f.set_gid(8);
    f.set_mtime(1_700_000_000);
    f.set_size(3);
    b.append_data(&mut f, &long, &b"abc"[..]).unwrap();

    let raw_name: &[u8] = b"tmp/bad-\xff\xfe.bin";
    let mut g = tar::Header::new_gnu();
    g.set_mode(0o644);
    g.set_size(1);
    b.append_data(&mut g, Path::new(OsStr::from_bytes(raw_name)), &b"z"[..])
        .unwrap();

    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    let long_target = format!("{}/x", "t".repeat(150));
    b.append_link(&mut l, "tmp/longlink", &long_target).unwrap();

    let mut p = tar::Header::new_gnu();
    p.set_entry_type(tar::EntryType::Fifo);
    p.set_size(0);
    b.append_data(&mut p, "tmp/fifo", std::io::empty()).unwrap();

    let tar = b.into_inner().unwrap();
    let (s, out) = backup(&tar, Compression::Zstd { level: 3 }).unwrap();
    assert_eq!(decompress(Compression::Zstd { level: 3 }, &out), tar);
    let m = by_path(&s);
    assert_eq!(m["tmp"].mode, 0o1777, "sticky bit kept");
    assert_eq!(m[long.as_str()].mode, 0o4755, "setuid kept");
    assert_eq!((m[long.as_str()].uid, m[long.as_str()].gid), (7, 8));
    assert_eq!(m[long.as_str()].mtime, 1_700_000_000);
    assert_eq!(
        m["tmp/longlink"].link_target.as_deref(),
        Some(long_target.as_str())
    );
    assert_eq!(m["tmp/fifo"].kind, EntryKind::Fifo);
    let bad = s
        .entries
        .iter()
        .find(|e| e.path_hex.is_some())
        .expect("non-UTF-8 name recorded with path_hex");
    assert_eq!(&*bad.raw_path(), raw_name);
    assert_eq!(bad.path, String::from_utf8_lossy(raw_name));

    // Non-UTF-8 names survive the manifest round trip and verify.
    let manifest = manifest_for(Compression::Zstd { level: 3 }, &s);
    let json = manifest.to_json_pretty();
    assert!(json.contains(&hex::encode(raw_name)), "{json}");
    let back = Manifest::from_json(json.as_bytes()).unwrap();
    assert_eq!(back, manifest);
    let report = verify_archive(&out[..], Compression::Zstd { level: 3 }, &back).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// End offset of the last entry's data (= start of the end-of-archive marker).
fn end_of_entries(tar: &[u8]) -> usize {
    let mut a = tar::Archive::new(tar);
    let mut end = 0;
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        end = (e.raw_file_position() + e.size()).div_ceil(512) * 512;
    }
    end as usize
}

#[test]
fn truncation_is_detected_everywhere() {
    let dir = fixture();
    let tar = busybox_tar(dir.path());
    let end = end_of_entries(&tar);
    assert_eq!(tar.len(), end + 1024, "busybox writes two zero blocks");

    let mut cuts: Vec<usize> = vec![0];
    for block in (0..=end).step_by(512) {
        cuts.extend([block, block + 1, block + 100, block + 511]);
    }
    // Every position in the first few KiB (covers several headers and data).
    cuts.extend(0..3000);
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts.into_iter().filter(|c| *c < end + 512) {
        match backup(&tar[..cut], Compression::None) {
            Err(ArchiveError::Truncated { .. }) => {}
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
    // One zero block is enough (GNU tar accepts it with a warning).
    let (s, _) = backup(&tar[..end + 512], Compression::None).unwrap();
    assert_eq!(s.tar_bytes, (end + 512) as u64);
    // Extra padding after the marker (GNU tar's 10 KiB records) is kept.
    let mut padded = tar.clone();
    padded.resize(tar.len().div_ceil(10240) * 10240 + 10240, 0);
    let (s, out) = backup(&padded, Compression::Gzip { level: 1 }).unwrap();
    assert_eq!(s.tar_bytes, padded.len() as u64);
    assert_eq!(decompress(Compression::Gzip { level: 1 }, &out), padded);
}

#[test]
fn truncation_kinds_have_clear_messages() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2000);
    h.set_mode(0o644);
    b.append_data(&mut h, "data.bin", &[7u8; 2000][..]).unwrap();
    let tar = b.into_inner().unwrap();
    // header 512 + data 2048 (padded) + 1024 zero blocks
    assert_eq!(tar.len(), 512 + 2048 + 1024);

    for (cut, needle) in [
        (0, "end-of-archive"),                     // empty stream
        (200, "inside a tar record"),              // mid-header
        (512 + 1000, "should have 2000"),          // mid-data
        (512 + 2000, "inside a tar record"),       // in the padding after the data
        (512 + 2048, "end-of-archive"),            // header boundary, zero blocks missing
        (512 + 2048 + 300, "inside a tar record"), // mid zero block
    ] {
        let err = backup(&tar[..cut], Compression::Zstd { level: 1 }).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ArchiveError::Truncated { .. }),
            "cut {cut}: {msg}"
        );
        assert!(msg.contains(needle), "cut {cut}: {msg}");
        assert!(msg.contains("retry"), "{msg}");
    }
}

#[test]
fn read_and_write_errors_are_reported_as_such() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "boom",
            ))
        }
    }
    let err = stream_backup(Failing, Compression::None, Vec::new(), &|_| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::Read { .. }), "{err}");

    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "disk full",
            ))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let tar = busybox_tar(fixture().path());
    let err = stream_backup(&tar[..], Compression::None, Full, &|_| {}).unwrap_err();
    assert!(matches!(err, ArchiveError::Write { .. }), "{err}");
    assert!(err.to_string().contains("disk full"));
}

#[test]
fn corrupt_tar_header_is_corrupt_not_truncated() {
    let mut tar = busybox_tar(fixture().path());
    tar[600] ^= 0xff; // inside the second header
    let err = backup(&tar, Compression::None).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
}

#[test]
fn verify_detects_flipped_compressed_byte() {
    let tar = busybox_tar(fixture().path());
    for c in [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 1 },
    ] {
        let (s, out) = backup(&tar, c).unwrap();
        let manifest = manifest_for(c, &s);
        for pos in [20, out.len() / 2, out.len() - 5] {
            let mut bad = out.clone();
            bad[pos] ^= 0x01;
            let r = verify_archive(&bad[..], c, &manifest).unwrap();
            assert!(!r.is_ok(), "{c} flip at {pos}");
            assert!(
                matches!(r.problems[0], Problem::ArchiveSha256 { .. }),
                "{c} flip at {pos}: {:?}",
                r.problems
            );
            assert!(r.problems.len() >= 2, "{c} flip at {pos}: {:?}", r.problems);
        }
        // Truncated stored file: size, sha and decompression/truncation.
        let r = verify_archive(&out[..out.len() / 2], c, &manifest).unwrap();
        assert!(!r.is_ok());
        assert!(!r.complete);
        assert!(r
            .problems
            .iter()
            .any(|p| matches!(p, Problem::ArchiveSize { .. })));
        assert!(r
            .problems
            .iter()
            .any(|p| matches!(p, Problem::Decompression { .. } | Problem::Truncated { .. })));
    }
}

#[test]
fn verify_reports_flipped_content_with_path() {
    let tar = busybox_tar(fixture().path());
    let (s, out) = backup(&tar, Compression::None).unwrap();
    let manifest = manifest_for(Compression::None, &s);
    let pos = out.windows(10).position(|w| w == b"top secret").unwrap();
    let mut bad = out.clone();
    bad[pos + 4] ^= 0x20;
    let r = verify_archive(&bad[..], Compression::None, &manifest).unwrap();
    assert!(!r.is_ok());
    assert!(r.complete);
    assert_eq!(
        r.problems,
        vec![
            Problem::ArchiveSha256 {
                expected: s.archive_sha256.clone(),
                actual: sha(&bad),
            },
            Problem::Mismatch {
                path: "secret".into(),
                field: "sha256",
                expected: sha(b"top secret"),
                actual: sha(b"top Secret"),
            }
        ]
    );
    assert!(r.problems[1].to_string().contains("\"secret\""));
}

#[test]
fn verify_reports_metadata_missing_and_unexpected() {
    let tar = busybox_tar(fixture().path());
    let (s, out) = backup(&tar, Compression::None).unwrap();
    let mut manifest = manifest_for(Compression::None, &s);
    let i = manifest
        .entries
        .iter()
        .position(|e| e.path == "secret")
        .unwrap();
    manifest.entries[i].mode = 0o644;
    manifest.entries[i].uid = 0;
    let j = manifest
        .entries
        .iter()
        .position(|e| e.path == "with space.txt")
        .unwrap();
    manifest.entries.remove(j);
    let mut ghost = manifest.entries[i].clone();
    ghost.path = "ghost".into();
    manifest.entries.push(ghost);
    let r = verify_archive(&out[..], Compression::None, &manifest).unwrap();
    assert!(r.complete);
    assert!(!r.is_ok());
    // Mismatches and unexpected entries come in archive (readdir) order,
    // missing ones after; compare as sets.
    let mut want = vec![
        Problem::Mismatch {
            path: "secret".into(),
            field: "mode",
            expected: "0644".into(),
            actual: "0600".into(),
        },
        Problem::Mismatch {
            path: "secret".into(),
            field: "uid",
            expected: "0".into(),
            actual: "1000".into(),
        },
        Problem::Unexpected {
            path: "with space.txt".into(),
        },
        Problem::Missing {
            path: "ghost".into(),
        },
    ];
    let mut got = r.problems.clone();
    assert_eq!(got.last(), want.last());
    want.sort_by_key(|p| format!("{p:?}"));
    got.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(got, want);
}

/// Header with raw name/link bytes, bypassing the Builder's own path checks.
pub(crate) fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: &str,
) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"evil"
    } else {
        b""
    };
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn unsafe_entries_are_refused_by_create_verify_and_manifest() {
    use tar::EntryType as T;
    let cases: [(T, &str, &str); 3] = [
        (T::Regular, "../evil", ""),
        (T::Regular, "/etc/passwd", ""),
        (T::Link, "h", "/etc/shadow"),
    ];
    for (kind, name, link) in cases {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, kind, name, link);
        let tar = b.into_inner().unwrap();
        // Backup records them faithfully but flags them (`create` then refuses).
        let (s, out) = backup(&tar, Compression::None).unwrap();
        assert_eq!(s.entries[0].path, name);
        assert_eq!(s.unsafe_entries().len(), 1, "{name}");

        let manifest = manifest_for(Compression::None, &s);
        let err = Manifest::from_json(manifest.to_json_pretty().as_bytes()).unwrap_err();
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        let err = verify_archive(&out[..], Compression::None, &manifest).unwrap_err();
        assert!(matches!(err, ArchiveError::Unsafe(_)), "{err}");
        assert!(err.to_string().contains(name), "{err}");

        // An unsafe entry only in the archive is refused as well.
        let mut clean = manifest.clone();
        clean.entries.clear();
        clean.entry_count = 0;
        let err = verify_archive(&out[..], Compression::None, &clean).unwrap_err();
        assert!(matches!(err, ArchiveError::Unsafe(_)), "{err}");
    }
}

/// A hard link before its target: the manifest (sorted by path in schema 2) cannot tell,
/// the archive walk can.
#[test]
fn a_hard_link_before_its_target_is_refused_in_archive_order() {
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, tar::EntryType::Link, "h", "f");
    raw_entry(&mut b, tar::EntryType::Regular, "f", "");
    let tar = b.into_inner().unwrap();
    let (s, out) = backup(&tar, Compression::None).unwrap();
    let u = s.unsafe_entries();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].reason.rule().name, "hardlink-not-earlier");
    let manifest = manifest_for(Compression::None, &s);
    crate::archive::check_entries_safe(&manifest.entries).unwrap();
    let err = verify_archive(&out[..], Compression::None, &manifest).unwrap_err();
    assert!(err.to_string().contains("does not come earlier"), "{err}");
}

/// Symlink targets are data: absolute, escaping, dangling, long (GNU `K` records) and odd
/// bytes back up, load and verify, from real busybox tar, and busybox tar extracts them
/// verbatim.
#[test]
fn any_symlink_target_round_trips() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("sub")).unwrap();
    let long = format!("/var/lib/app/releases/{}/v2", "x".repeat(200));
    let targets: Vec<(&str, Vec<u8>)> = vec![
        ("current", b"/var/lib/app/releases/v2".to_vec()),
        ("pg_wal", b"/mnt/wal".to_vec()),
        ("sub/escape", b"../../../etc/passwd".to_vec()),
        ("sub/up", b"..".to_vec()),
        ("dangling", b"does/not/exist".to_vec()),
        ("long", long.clone().into_bytes()),
        ("odd", b"odd\nname\xff \x01".to_vec()),
    ];
    for (name, target) in &targets {
        symlink(OsStr::from_bytes(target), d.join(name)).unwrap();
    }
    let tar = busybox_tar(d);
    for c in ALL {
        let (s, out) = backup(&tar, c).unwrap();
        assert!(s.unsafe_entries().is_empty(), "{:?}", s.unsafe_entries());
        let m = Manifest::from_json(manifest_for(c, &s).to_json_pretty().as_bytes()).unwrap();
        for (name, target) in &targets {
            let e = m.entries.iter().find(|e| e.path == *name).unwrap();
            assert_eq!(e.kind, EntryKind::Symlink);
            assert_eq!(e.raw_link_target().unwrap().as_ref(), &target[..], "{name}");
        }
        let r = verify_archive(&out[..], c, &m).unwrap();
        assert!(r.is_ok(), "{c}: {:?}", r.problems);
    }
    // A manifest whose target differs from the archive's only in an invalid byte is caught.
    let (s, out) = backup(&tar, Compression::None).unwrap();
    let mut m = manifest_for(Compression::None, &s);
    let odd = m.entries.iter_mut().find(|e| e.path == "odd").unwrap();
    odd.link_target_hex = Some(hex::encode(b"odd\nname\xfe \x01"));
    let r = verify_archive(&out[..], Compression::None, &m).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(
        r.problems[0]
            .to_string()
            .contains("link_target is odd\\nname\\xff"),
        "{}",
        r.problems[0]
    );
    // busybox tar -x (what the helper pod runs) creates each link with its exact target.
    let to = tempfile::tempdir().unwrap();
    let mut x = Command::new("busybox")
        .args(["tar", "-x", "--numeric-owner", "-f", "-", "-C"])
        .arg(to.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    x.stdin.take().unwrap().write_all(&tar).unwrap();
    assert!(x.wait().unwrap().success());
    for (name, target) in &targets {
        let got = fs::read_link(to.path().join(name)).unwrap();
        assert_eq!(got.as_os_str().as_bytes(), &target[..], "{name}");
    }
}

fn mknod(path: &Path, kind: &str) -> bool {
    Command::new("mknod")
        .arg(path)
        .args([kind, "1", "3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Device nodes (the `skip` rule) are left out of the stored archive and recorded; the
/// archive stays a valid tar that verifies and extracts, with everything else intact.
#[test]
fn device_nodes_are_left_out_and_recorded() {
    let dir = fixture();
    let d = dir.path();
    fs::create_dir(d.join("dev")).unwrap();
    let long_dev = format!("dev/{}", "n".repeat(150));
    let nodes = [
        ("dev/null", "c", SkipReason::CharDevice),
        ("dev/loop", "b", SkipReason::BlockDevice),
        (long_dev.as_str(), "c", SkipReason::CharDevice),
    ];
    for (p, kind, _) in &nodes {
        assert!(
            mknod(&d.join(p), kind),
            "mknod is needed for this test (run as root, as .ci/run does)"
        );
    }
    // a second name of a device node: tar stores it as a hard link to the first
    fs::hard_link(d.join("dev/null"), d.join("dev/null2")).unwrap();
    let tar = busybox_tar(d);
    let plain = {
        let mut b = tar::Archive::new(&tar[..]);
        b.entries().unwrap().count()
    };
    for c in ALL {
        let (s, out) = backup(&tar, c).unwrap();
        let mut skipped: Vec<(String, SkipReason)> = s
            .skipped
            .iter()
            .map(|k| (k.path.clone(), k.reason))
            .collect();
        skipped.sort();
        let mut want: Vec<(String, SkipReason)> =
            nodes.iter().map(|(p, _, r)| (p.to_string(), *r)).collect();
        want.push(("dev/null2".into(), SkipReason::CharDevice));
        want.sort();
        assert_eq!(skipped, want, "{c}");
        assert!(s.entries.iter().all(|e| !e.path.starts_with("dev/")));
        assert!(s.unsafe_entries().is_empty());
        let stored_tar = decompress(c, &out);
        assert_eq!(s.tar_bytes, stored_tar.len() as u64);
        assert!(stored_tar.len() < tar.len());
        // what remains is a valid tar of the same entries in the same order
        let mut a = tar::Archive::new(&stored_tar[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert_eq!(names.len(), plain - nodes.len() - 1);
        let m = manifest_for(c, &s);
        assert_eq!(m.skipped.len(), 4);
        let r = verify_archive(&out[..], c, &m).unwrap();
        assert!(r.is_ok(), "{c}: {:?}", r.problems);
        // and busybox extracts it without complaint, every file intact
        let to = tempfile::tempdir().unwrap();
        let mut x = Command::new("busybox")
            .args(["tar", "-x", "-f", "-", "-C"])
            .arg(to.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        x.stdin.take().unwrap().write_all(&stored_tar).unwrap();
        assert!(x.wait().unwrap().success());
        assert_eq!(
            fs::read(to.path().join("a/big.bin")).unwrap(),
            fs::read(d.join("a/big.bin")).unwrap()
        );
        assert!(to.path().join("dev").is_dir());
        assert_eq!(fs::read_dir(to.path().join("dev")).unwrap().count(), 0);
    }
}

/// Verify does not skip: a device node in an archive (a schema-1 backup of 0.1, or a
/// hand-made archive) is refused by the rule, whatever the manifest says.
#[test]
fn verify_refuses_device_nodes() {
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, tar::EntryType::Char, "dev/mem", "");
    let tar = b.into_inner().unwrap();
    let (s, out) = backup(&tar, Compression::None).unwrap();
    assert_eq!(s.skipped.len(), 1);
    let mut m = manifest_for(Compression::None, &s);
    m.skipped.clear();
    // the stored archive has no device, so it verifies; the original stream does not
    assert!(verify_archive(&out[..], Compression::None, &m)
        .unwrap()
        .is_ok());
    let err = verify_archive(&tar[..], Compression::None, &m).unwrap_err();
    assert!(err.to_string().contains("device node"), "{err}");
}

#[test]
fn verify_with_detected_compression() {
    let tar = busybox_tar(fixture().path());
    for c in ALL {
        let (s, out) = backup(&tar, c).unwrap();
        let detected = Compression::detect(&out[..out.len().min(1024)]).unwrap();
        assert_eq!(detected.algorithm(), c.algorithm());
        let r = verify_archive(&out[..], detected, &manifest_for(c, &s)).unwrap();
        assert!(r.is_ok(), "{:?}", r.problems);
        // Wrong decoder: decompression problem, not a panic or Err.
        let wrong = if c == Compression::None {
            Compression::Gzip { level: 6 }
        } else {
            Compression::None
        };
        let r = verify_archive(&out[..], wrong, &manifest_for(c, &s)).unwrap();
        assert!(!r.is_ok());
    }
}

/// `sink` is `tar` up to the header of `name`, but for the padding of the member before it
/// (the walker holds that back with the header that follows it).
/// `verify` of a schema-2 backup compares the archive's members, spooled in path order, with
/// the entries stream as two sorted streams: the same findings as the in-memory comparison
/// (in path order), for an intact backup and for each kind of difference.
#[test]
fn streamed_verify_finds_what_the_in_memory_one_does() {
    let dir = fixture();
    let tar = busybox_tar(dir.path());
    for c in ALL {
        let (s, stored) = backup(&tar, c).unwrap();
        let good = manifest_for(c, &s);
        let mut edits: Vec<(&str, Manifest)> = vec![("intact", good.clone())];
        let mut m = good.clone();
        let i = m.entries.iter().position(|e| e.path == "secret").unwrap();
        m.entries[i].sha256 = Some(sha(b"other"));
        m.entries[i].mode = 0o644;
        edits.push(("content and mode", m));
        let mut m = good.clone();
        m.entries.retain(|e| e.path != "with space.txt");
        edits.push(("not in the manifest", m));
        let mut m = good.clone();
        let mut extra = m.entries[0].clone();
        extra.path = "a/b/zz".into();
        m.entries.push(extra);
        edits.push(("not in the archive", m));
        let mut m = good.clone();
        m.archive.sha256 = sha(b"x");
        edits.push(("archive hash", m));
        for (name, m) in edits {
            let memory = verify_archive(&stored[..], c, &m).unwrap();
            let mut sorted = m.entries.clone();
            sorted.sort_by_key(|e| canonical_key(&e.raw_path()));
            let streamed =
                verify_archive_streamed(&stored[..], c, &m, &mut sorted.into_iter()).unwrap();
            let mut want: Vec<String> = memory.problems.iter().map(|p| p.to_string()).collect();
            let mut got: Vec<String> = streamed.problems.iter().map(|p| p.to_string()).collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{name}, {c:?}");
            assert_eq!(streamed.is_ok(), name == "intact", "{name}, {c:?}");
            assert_eq!(streamed.entries_checked, memory.entries_checked);
            assert_eq!(streamed.files_hashed, memory.files_hashed);
            assert_eq!(streamed.archive_sha256, memory.archive_sha256);
        }
        // A truncated archive: what was read is compared, nothing is called missing.
        let cut = &stored[..stored.len() / 2];
        let mut sorted = good.entries.clone();
        sorted.sort_by_key(|e| canonical_key(&e.raw_path()));
        let r = verify_archive_streamed(cut, c, &good, &mut sorted.into_iter()).unwrap();
        assert!(!r.complete && !r.is_ok(), "{c:?}");
        assert!(
            !r.problems
                .iter()
                .any(|p| matches!(p, Problem::Missing { .. })),
            "{:?}",
            r.problems
        );
    }
}

//! `verify`, `list` and `inspect` need no cluster: what a user sees for good, damaged,
//! truncated, hand-edited and malicious backups.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kubectl_pvbackup::archive::{stream_backup, Compression};
use kubectl_pvbackup::destination::{archive_key, manifest_key};
use kubectl_pvbackup::manifest::{ClusterInfo, Manifest, ManifestMeta, PvcInfo};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn plugin(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"))
        .args(args)
        .stdin(Stdio::null())
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// A backup made the way `create` makes one, from a small tree packed by busybox tar.
fn make_backup(dest: &Path, id: &str, compression: Compression) -> (PathBuf, PathBuf) {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("a/b")).unwrap();
    std::fs::write(
        src.path().join("a/b/data.bin"),
        (0..200_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(src.path().join("notes with space.txt"), "hello\n").unwrap();
    std::os::unix::fs::symlink("a/b/data.bin", src.path().join("link")).unwrap();
    // Fixed modes and mtimes (the symlink's too) make the archive, and so every checksum
    // `list`/`inspect` print, the same on every run.
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_323_045);
    for (rel, mode) in [
        ("a/b/data.bin", 0o644),
        ("notes with space.txt", 0o644),
        ("a/b", 0o755),
        ("a", 0o755),
        (".", 0o755),
    ] {
        let path = src.path().join(rel);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
        std::fs::File::open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let link =
        std::ffi::CString::new(src.path().join("link").as_os_str().as_encoded_bytes()).unwrap();
    let times = [libc::timespec {
        tv_sec: 1_767_323_045,
        tv_nsec: 0,
    }; 2];
    // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat(2) requires.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            link.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "set the symlink's mtime");
    let tar = Command::new("busybox")
        .args(["tar", "--no-recursion", "-cf", "-", "-C"])
        .arg(src.path())
        // Named one by one, in a fixed order: recursion would follow readdir order, which on ext4
        // differs between machines, and the snapshots pin the archive's checksum.
        .args([
            ".",
            "./a",
            "./a/b",
            "./a/b/data.bin",
            "./link",
            "./notes with space.txt",
        ])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let akey = archive_key(id, "shop", "db", compression.extension());
    let mkey = manifest_key(id, "shop", "db");
    let apath = dest.join(&akey);
    std::fs::create_dir_all(apath.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&apath).unwrap();
    let summary = stream_backup(&tar.stdout[..], compression, file, &|_| {}).unwrap();
    let meta = ManifestMeta {
        backup_id: id.into(),
        tool_version: "test".into(),
        created: chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .into(),
        cluster: ClusterInfo {
            server: "https://127.0.0.1:6443".into(),
            context: Some("kubesim".into()),
            created_by: None,
        },
        namespace: "shop".into(),
        pvc: PvcInfo {
            name: "db".into(),
            uid: "uid-1".into(),
            capacity: Some("1Gi".into()),
            access_modes: vec!["ReadWriteOnce".into()],
            storage_class: Some("standard".into()),
            volume_mode: Some("Filesystem".into()),
            labels: Default::default(),
        },
        source_pods: vec![],
        helper_image: "busybox:1.36".into(),
    };
    let m = Manifest::new(
        meta,
        compression,
        format!("db{}", compression.extension()),
        summary,
    );
    // Stored as `create` stores it: the entries stream, then the header.
    kubectl_pvbackup::manifest::store(
        &kubectl_pvbackup::destination::local::LocalDir::new(dest.to_path_buf()),
        &mkey,
        &m,
    )
    .unwrap();
    (apath, dest.join(&mkey))
}

#[test]
fn a_good_backup_verifies() {
    let d = tempfile::tempdir().unwrap();
    for c in [
        Compression::Zstd { level: 1 },
        Compression::Gzip { level: 1 },
        Compression::None,
    ] {
        let (_, m) = make_backup(d.path(), &format!("id-{}", c.algorithm()), c);
        let out = plugin(&["verify", m.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{}: {}{}", c, out.stdout, out.stderr);
        assert!(out.stdout.contains("OK"));
    }
}

#[test]
fn a_one_byte_flip_is_exit_3_naming_the_damage() {
    let d = tempfile::tempdir().unwrap();
    let (a, m) = make_backup(d.path(), "flip", Compression::None);
    let mut bytes = std::fs::read(&a).unwrap();
    // Inside data.bin's content (the first entries are small headers).
    let at = bytes
        .windows(4)
        .position(|w| w == [10, 11, 12, 13])
        .unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&a, bytes).unwrap();
    let out = plugin(&["verify", m.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("a/b/data.bin")),
        "{v}"
    );
}

#[test]
fn a_truncated_or_flipped_compressed_archive_is_exit_3() {
    let d = tempfile::tempdir().unwrap();
    let (a, m) = make_backup(d.path(), "trunc", Compression::Zstd { level: 1 });
    let bytes = std::fs::read(&a).unwrap();
    std::fs::write(&a, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(plugin(&["verify", m.to_str().unwrap()]).code, 3);
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x80;
    std::fs::write(&a, flipped).unwrap();
    assert_eq!(plugin(&["verify", m.to_str().unwrap()]).code, 3);
}

#[test]
fn a_hand_edited_manifest_is_exit_3() {
    let d = tempfile::tempdir().unwrap();
    let (_, m) = make_backup(d.path(), "edit", Compression::Zstd { level: 1 });
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen("\"entry_count\"", "\"entry_cuont\"", 1)).unwrap();
    let out = plugin(&["verify", m.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("entry_cuont"),
        "the error names the bad field: {}",
        out.stderr
    );
}

#[test]
fn a_malicious_archive_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_, m) = make_backup(d.path(), "evil", Compression::None);
    // A manifest whose every checksum matches (header and entries stream stored afresh) but
    // that lists an entry a restore would write outside the volume.
    let dest = kubectl_pvbackup::destination::local::LocalDir::new(d.path().to_path_buf());
    let key = manifest_key("evil", "shop", "db");
    let mut manifest = kubectl_pvbackup::manifest::load(&dest, &key).unwrap();
    let e = manifest
        .entries
        .iter_mut()
        .find(|e| e.path == "notes with space.txt")
        .unwrap();
    e.path = "../../etc/evil".into();
    kubectl_pvbackup::manifest::store(&dest, &key, &manifest).unwrap();
    let out = plugin(&["verify", m.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("../../etc/evil"), "{}", out.stderr);
}

#[test]
fn list_shows_leftovers_as_incomplete_and_inspect_summarises() {
    let d = tempfile::tempdir().unwrap();
    let (_, m) = make_backup(
        d.path(),
        "20260102T030405Z-aaaa",
        Compression::Zstd { level: 1 },
    );
    let (_, m2) = make_backup(
        d.path(),
        "20260102T030405Z-bbbb",
        Compression::Zstd { level: 1 },
    );
    std::fs::remove_file(&m2).unwrap();
    let out = plugin(&["list", d.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["restorable"], true);
    assert_eq!(items[1]["restorable"], false);
    assert_eq!(items[1]["complete"], false);
    let table = plugin(&["list", d.path().to_str().unwrap()]);
    assert!(table.stdout.contains("INCOMPLETE"), "{}", table.stdout);
    let insp = plugin(&["inspect", m.to_str().unwrap(), "--files"]);
    assert_eq!(insp.code, 0, "{}", insp.stderr);
    assert!(insp.stdout.contains("shop/db"));
    assert!(insp.stdout.contains("notes with space.txt"));
    assert!(insp.stdout.contains("-> a/b/data.bin"));
    // By id with --from, as runbooks name backups.
    let by_id = plugin(&[
        "verify",
        "20260102T030405Z-aaaa/shop/db",
        "--from",
        d.path().to_str().unwrap(),
    ]);
    assert_eq!(by_id.code, 0, "{}", by_id.stderr);
    let missing = plugin(&[
        "verify",
        "20260102T030405Z-bbbb/shop/db",
        "--from",
        d.path().to_str().unwrap(),
    ]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("incomplete"), "{}", missing.stderr);
}

/// `inspect --files` reads a schema-2 backup's entries as a stream (twice: checked, then
/// printed), yet prints the manifest `load` reads whole: the same JSON and YAML document, a
/// table row per entry. A hard link to no entry is refused (exit 3), as a whole manifest is,
/// before anything is printed, with or without `--files`.
#[test]
fn inspect_files_prints_the_whole_manifest_and_refuses_a_dangling_hard_link() {
    use kubectl_pvbackup::archive::EntryKind;
    let d = tempfile::tempdir().unwrap();
    let (_, m) = make_backup(d.path(), "files", Compression::Zstd { level: 1 });
    let m = m.to_str().unwrap();
    let dest = kubectl_pvbackup::destination::local::LocalDir::new(d.path().to_path_buf());
    let key = manifest_key("files", "shop", "db");
    let whole = kubectl_pvbackup::manifest::load(&dest, &key).unwrap();
    let json = plugin(&["inspect", m, "--files", "-o", "json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    assert_eq!(
        Manifest::from_json(json.stdout.as_bytes()).unwrap(),
        whole,
        "{}",
        json.stdout
    );
    let yaml = plugin(&["inspect", m, "--files", "-o", "yaml"]);
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    assert_eq!(
        serde_yaml::from_str::<Manifest>(&yaml.stdout).unwrap(),
        whole,
        "{}",
        yaml.stdout
    );
    let table = plugin(&["inspect", m, "--files"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let rows = table.stdout.lines().skip_while(|l| !l.starts_with("TYPE"));
    assert_eq!(rows.count(), 1 + whole.entries.len(), "{}", table.stdout);

    let mut broken = whole.clone();
    let e = broken
        .entries
        .iter_mut()
        .find(|e| e.path == "notes with space.txt")
        .unwrap();
    e.kind = EntryKind::Hardlink;
    e.link_target = Some("gone.txt".into());
    e.sha256 = None;
    e.size = 0;
    kubectl_pvbackup::manifest::store(&dest, &key, &broken).unwrap();
    for args in [
        vec!["inspect", m, "--files"],
        vec!["inspect", m],
        vec!["inspect", m, "--files", "-o", "json"],
    ] {
        let out = plugin(&args);
        assert_eq!(out.code, 3, "{args:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.stdout, "", "{args:?}: nothing printed");
        assert!(
            out.stderr.contains("notes with space.txt") && out.stderr.contains("gone.txt"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn usage_errors_are_exit_2_and_version_prints() {
    assert_eq!(plugin(&["verify"]).code, 2);
    assert_eq!(plugin(&["frobnicate"]).code, 2);
    assert_eq!(plugin(&["verify", "notes.txt"]).code, 2);
    let v = plugin(&["version", "-o", "json"]);
    assert_eq!(v.code, 0);
    let j: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
}

/// What `list` and `inspect` print, pinned. The archive is deterministic (fixed content, modes and
/// mtimes), so only the temporary directory is filtered.
#[test]
fn list_and_inspect_output_snapshots() {
    let d = tempfile::tempdir().unwrap();
    let (_, m) = make_backup(
        d.path(),
        "20260102T030405Z-aaaa",
        Compression::Zstd { level: 1 },
    );
    let (_, m2) = make_backup(d.path(), "20260102T030405Z-bbbb", Compression::None);
    std::fs::remove_file(&m2).unwrap();
    let root = d.path().to_str().unwrap();
    let dest = regex_escape(root);
    let cases: [(&str, Vec<&str>); 5] = [
        ("list_table", vec!["list", root]),
        ("list_json", vec!["list", root, "-o", "json"]),
        ("inspect_table", vec!["inspect", m.to_str().unwrap()]),
        (
            "inspect_files_table",
            vec!["inspect", m.to_str().unwrap(), "--files"],
        ),
        (
            "inspect_yaml",
            vec!["inspect", m.to_str().unwrap(), "-o", "yaml"],
        ),
    ];
    for (name, args) in cases {
        let out = plugin(&args);
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        insta::with_settings!({filters => vec![(dest.as_str(), "[DEST]")]}, {
            insta::assert_snapshot!(name, out.stdout);
        });
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

#[test]
fn in_place_with_create_pvc_or_merge_is_a_usage_error_before_any_api_call() {
    for extra in [&["--create-pvc"][..], &["--mode", "merge"][..]] {
        let mut args = vec!["restore", "some.manifest.json", "--in-place", "--yes"];
        args.extend_from_slice(extra);
        let out = plugin(&args);
        assert_eq!(out.code, 2, "{extra:?}: {}", out.stderr);
        assert!(out.stderr.contains("drop --in-place"), "{}", out.stderr);
    }
}

use super::*;
use crate::archive::EntryRecord;
use crate::destination::local::LocalDir;

fn entry(path: &str, kind: EntryKind, sha: Option<&str>) -> EntryRecord {
    EntryRecord {
        path: path.into(),
        path_hex: None,
        kind,
        size: if sha.is_some() { 5 } else { 0 },
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime: 1_735_732_800,
        link_target: None,
        link_target_hex: None,
        sha256: sha.map(str::to_string),
    }
}

const SHA: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

pub(crate) fn sample() -> Manifest {
    let mut link = entry("a b/link", EntryKind::Symlink, None);
    link.link_target = Some("../ünï\ncode".into());
    let mut abs = entry("current", EntryKind::Symlink, None);
    abs.link_target = Some("/var/lib/app/releases/v2".into());
    let mut bad = entry("bad-\u{fffd}", EntryKind::File, Some(SHA));
    bad.path_hex = Some(hex::encode(b"bad-\xff"));
    let mut hard = entry("a b/hard", EntryKind::Hardlink, None);
    hard.link_target = Some("ünï\ncode".into());
    Manifest {
        schema_version: SCHEMA_VERSION,
        kind: MANIFEST_KIND.into(),
        backup_id: "data-web-0-20250101T120000Z".into(),
        tool_version: "0.1.0".into(),
        created: DateTime::parse_from_rfc3339("2025-01-01T12:00:00Z")
            .unwrap()
            .into(),
        cluster: ClusterInfo {
            server: "https://10.0.0.1:6443".into(),
            context: Some("prod".into()),
            created_by: None,
        },
        namespace: "shop".into(),
        pvc: PvcInfo {
            name: "data-web-0".into(),
            uid: "6f1c".into(),
            capacity: Some("10Gi".into()),
            access_modes: vec!["ReadWriteOnce".into()],
            storage_class: Some("standard".into()),
            volume_mode: Some("Filesystem".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
        },
        source_pods: vec![SourcePod {
            name: "web-0".into(),
            node: Some("n1".into()),
            mesh: Some("istio".into()),
            proxy_container: Some("istio-proxy".into()),
            proxy_version: Some("1.22.0".into()),
        }],
        helper_image: "busybox:1.36".into(),
        compression: Compression::Zstd { level: 1 },
        archive: ArchiveInfo {
            file_name: "data-web-0.tar.zst".into(),
            size: 1234,
            sha256: SHA.into(),
        },
        uncompressed_size: 10240,
        entry_count: 7,
        // archive order, as a fresh backup has them
        entries: vec![
            entry(".", EntryKind::Dir, None),
            entry("a b", EntryKind::Dir, None),
            entry("ünï\ncode", EntryKind::File, Some(SHA)),
            link,
            hard,
            abs,
            bad,
        ],
        entry_notes: Vec::new(),
        skipped: Vec::new(),
        consistency: None,
        encryption: None,
        parent: None,
        additional_archives: Vec::new(),
        proxy_state: Vec::new(),
    }
}

/// `sample()` with every section filled.
pub(crate) fn full() -> Manifest {
    let mut m = sample();
    m.skipped = vec![SkippedEntry {
        path: "chroot/dev/null".into(),
        path_hex: None,
        reason: SkipReason::CharDevice,
    }];
    m.consistency = Some(Consistency {
        method: ConsistencyMethod::Snapshot,
        snapshot: Some(SnapshotInfo {
            name: "pvb-3f2a".into(),
            class: Some("csi".into()),
            content_name: None,
            cut_time: Some(m.created),
        }),
        clone_pvc: None,
        hooks: vec![HookRun {
            phase: HookPhase::Pre,
            pod: "web-0".into(),
            container: "db".into(),
            command: vec!["fsfreeze".into(), "-f".into(), "/data".into()],
            outcome: HookOutcome::Succeeded,
            exit_code: Some(0),
            started: Some(m.created),
            duration_ms: Some(12),
        }],
        files_changed_while_read: 1,
    });
    m.parent = Some(ParentBackup {
        backup_id: "parent".into(),
        manifest: "parent/shop/data-web-0.manifest.json".into(),
        manifest_sha256: SHA.into(),
    });
    m.additional_archives = vec![AdditionalArchive {
        index: 1,
        compression: Compression::None,
        file_name: "data-web-0.1.tar".into(),
        size: 10,
        sha256: SHA.into(),
    }];
    m.proxy_state = vec![ProxyStateFile {
        pod: "web-0".into(),
        container: "istio-proxy".into(),
        kind: ProxyStateKind::EnvoyConfigDump,
        file_name: "data-web-0.proxy-web-0.json".into(),
        size: 5,
        sha256: SHA.into(),
    }];
    m.entry_notes = vec![
        EntryNote {
            path: "ünï\ncode".into(),
            changed_while_read: true,
            ..Default::default()
        },
        EntryNote {
            path: "bad-\u{fffd}".into(),
            path_hex: Some(hex::encode(b"bad-\xff")),
            in_parent: true,
            archive: 1,
            ..Default::default()
        },
    ];
    m
}

fn json_value(m: &Manifest) -> serde_json::Value {
    serde_json::from_str(&m.to_json_pretty()).unwrap()
}

fn load_value(v: &serde_json::Value) -> Result<Manifest, ManifestError> {
    Manifest::from_json(serde_json::to_string(v).unwrap().as_bytes())
}

/// `m` as a schema-1 document (what 0.1 wrote).
fn v1(m: &Manifest) -> serde_json::Value {
    let mut v = json_value(m);
    v["schema_version"] = 1.into();
    v
}

/// Stores `m` in a fresh directory; returns it and the header key.
fn stored(m: &Manifest) -> (tempfile::TempDir, LocalDir) {
    let d = tempfile::tempdir().unwrap();
    let dest = LocalDir::new(d.path().to_path_buf());
    store(&dest, "id/shop/data-web-0.manifest.json", m).unwrap();
    (d, dest)
}

const KEY: &str = "id/shop/data-web-0.manifest.json";

/// Entries sorted as a schema-2 manifest lists them.
fn sorted(mut m: Manifest) -> Manifest {
    m.entries
        .sort_by_key(|e| crate::archive::canonical_key(&e.raw_path()));
    m.entry_notes
        .sort_by_key(|n| crate::archive::canonical_key(&raw_name(&n.path, n.path_hex.as_deref())));
    m
}

#[test]
fn stores_a_small_header_and_a_sorted_entries_stream() {
    for m in [sample(), full()] {
        let (d, dest) = stored(&m);
        let files = dest.list("").unwrap();
        assert_eq!(
            files,
            [
                "id/shop/data-web-0.entries.jsonl.zst",
                "id/shop/data-web-0.manifest.json"
            ]
        );
        let header: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join(KEY)).unwrap()).unwrap();
        assert_eq!(header["schema_version"], 2);
        assert_eq!(header["pvc_name"], "data-web-0");
        assert_eq!(header["entry_count"], 7);
        assert_eq!(header["file_count"], 2);
        assert_eq!(header["file_bytes"], 10);
        assert!(header.get("entries").unwrap().is_object());
        assert_eq!(header["entries"]["format"], "json_lines");
        assert_eq!(header["entries"]["order"], "path_bytes");
        assert!(
            !header.to_string().contains("ünï"),
            "no entry in the header: {header}"
        );
        let raw = std::fs::read(d.path().join("id/shop/data-web-0.entries.jsonl.zst")).unwrap();
        assert_eq!(header["entries"]["size"], raw.len() as u64);
        assert_eq!(
            header["entries"]["sha256"],
            hex::encode(Sha256::digest(&raw))
        );
        let lines = zstd::decode_all(&raw[..]).unwrap();
        let keys: Vec<Vec<u8>> = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                match v.get("path_hex") {
                    Some(h) => hex::decode(h.as_str().unwrap()).unwrap(),
                    None => v["path"].as_str().unwrap().as_bytes().to_vec(),
                }
            })
            .collect();
        assert_eq!(keys.len(), 7);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");

        let back = load(&dest, KEY).unwrap();
        assert_eq!(back, sorted(m));
    }
}

#[test]
fn notes_live_on_their_entry_lines() {
    let (d, _dest) = stored(&full());
    let raw = std::fs::read(d.path().join("id/shop/data-web-0.entries.jsonl.zst")).unwrap();
    let text = String::from_utf8_lossy(&zstd::decode_all(&raw[..]).unwrap()).into_owned();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {text}"))
            .to_string()
    };
    assert!(line(r#""path":"ünï\ncode""#).contains("\"changed_while_read\":true"));
    assert!(line("626164").contains("\"in_parent\":true,\"archive\":1"));
    assert!(!line("\"current\"").contains("in_parent"));
}

#[test]
fn every_compression_stores_and_loads() {
    for c in [
        Compression::None,
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ] {
        let mut m = full();
        m.compression = c;
        let (_d, dest) = stored(&m);
        let name = entries_file_name(KEY, c);
        assert!(dest.list("").unwrap().contains(&format!("id/shop/{name}")));
        assert_eq!(load(&dest, KEY).unwrap(), sorted(m));
    }
}

#[test]
fn list_reads_the_header_alone() {
    let (d, dest) = stored(&full());
    std::fs::remove_file(d.path().join("id/shop/data-web-0.entries.jsonl.zst")).unwrap();
    let doc = parse(&std::fs::read(d.path().join(KEY)).unwrap()).unwrap();
    let s = doc.summary();
    assert_eq!(s.files, 2);
    assert_eq!(s.size, 1234);
    assert_eq!(s.skipped, 1);
    assert_eq!(s.schema_version, 2);
    assert_eq!(s, full().summary());
    // but loading the backup needs the entries
    let err = load(&dest, KEY).unwrap_err();
    assert!(matches!(err, LoadError::NoEntries { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn read_summary_reads_headers_whole_and_counts_schema_1_entries_as_they_stream() {
    // A header: parsed and checked as `parse` does.
    let (d, _) = stored(&full());
    let header = std::fs::read(d.path().join(KEY)).unwrap();
    assert_eq!(read_summary(&header[..]).unwrap(), full().summary());
    let mut edited: serde_json::Value = serde_json::from_slice(&header).unwrap();
    edited["typo"] = 1.into();
    let err = read_summary(serde_json::to_vec(&edited).unwrap().as_slice()).unwrap_err();
    assert!(err.to_string().contains("typo"), "{err}");

    // A header past the buffer (a volume with tens of thousands of sockets): its counts.
    let mut big = full();
    big.skipped = (0..30_000)
        .map(|i| SkippedEntry {
            path: format!("run/s{i:05}.sock"),
            path_hex: None,
            reason: SkipReason::Socket,
        })
        .collect();
    let (d, _) = stored(&big);
    let header = std::fs::read(d.path().join(KEY)).unwrap();
    assert!(
        header.len() as u64 > SUMMARY_BUFFER,
        "{} bytes",
        header.len()
    );
    assert_eq!(read_summary(&header[..]).unwrap(), big.summary());

    // Schema-1 documents, small and far beyond the buffer: the same summary as loading them.
    for n in [3usize, 40_000] {
        let mut m = sample();
        m.schema_version = 1;
        m.entries = (0..n)
            .map(|i| match i % 3 {
                0 => entry(&format!("d/file-{i:07}"), EntryKind::File, Some(SHA)),
                1 => entry(&format!("d/dir-{i:07}"), EntryKind::Dir, None),
                _ => entry(&format!("d/fifo-{i:07}"), EntryKind::Fifo, None),
            })
            .collect();
        m.entry_count = n as u64;
        let doc = serde_json::to_vec(&v1(&m)).unwrap();
        assert_eq!(
            doc.len() as u64 > SUMMARY_BUFFER,
            n > 3,
            "{} bytes",
            doc.len()
        );
        let s = read_summary(&doc[..]).unwrap();
        assert_eq!(s, Manifest::from_json(&doc).unwrap().summary());
        assert_eq!(s.files, n.div_ceil(3) as u64);
        assert_eq!(s.schema_version, 1);

        // A damaged entry or a wrong count is an invalid manifest, wherever it is.
        let mut v = v1(&m);
        v["entries"][n - 1]["sha256"] = "nope".into();
        let err = read_summary(serde_json::to_vec(&v).unwrap().as_slice()).unwrap_err();
        assert!(
            matches!(
                err,
                SummaryError::Invalid(ManifestError::UnexpectedSha256 { .. })
                    | SummaryError::Invalid(ManifestError::BadSha256 { .. })
            ),
            "{err}"
        );
        let mut v = v1(&m);
        v["entry_count"] = (n as u64 + 1).into();
        let err = read_summary(serde_json::to_vec(&v).unwrap().as_slice()).unwrap_err();
        assert!(
            matches!(err, SummaryError::Invalid(ManifestError::EntryCount { .. })),
            "{err}"
        );
        let mut v = v1(&m);
        v["schema_version"] = 9.into();
        let err = read_summary(serde_json::to_vec(&v).unwrap().as_slice()).unwrap_err();
        assert!(
            matches!(
                err,
                SummaryError::Invalid(ManifestError::UnsupportedSchema { found: 9 })
            ),
            "{err}"
        );
        // Cut short: not a manifest.
        let err = read_summary(&doc[..doc.len() - 10]).unwrap_err();
        assert!(
            matches!(err, SummaryError::Invalid(ManifestError::Json { .. })),
            "{err}"
        );
    }
}

#[test]
fn a_damaged_or_swapped_entries_stream_is_refused() {
    let m = full();
    let (d, dest) = stored(&m);
    let ekey = d.path().join("id/shop/data-web-0.entries.jsonl.zst");
    let good = std::fs::read(&ekey).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    std::fs::write(&ekey, &flipped).unwrap();
    let err = load(&dest, KEY).unwrap_err();
    assert!(err.to_string().contains("is damaged"), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    // another backup's stream (valid, but not the one the header names)
    let mut other = m.clone();
    other.entries.pop();
    other.entry_count -= 1;
    other.entry_notes.pop();
    let (d2, _) = stored(&other);
    std::fs::copy(
        d2.path().join("id/shop/data-web-0.entries.jsonl.zst"),
        &ekey,
    )
    .unwrap();
    let err = load(&dest, KEY).unwrap_err();
    assert!(err.to_string().contains("is damaged"), "{err}");
    std::fs::write(&ekey, &good).unwrap();
    load(&dest, KEY).unwrap();
}

/// Writes `lines` as the entries stream of the header at KEY (fixing the header's size and
/// sha256), so that the checks behind the hash can be reached.
fn rewrite_entries(d: &std::path::Path, lines: &str, count: u64) -> Result<Manifest, LoadError> {
    let ekey = d.join("id/shop/data-web-0.entries.jsonl.zst");
    let raw = zstd::encode_all(lines.as_bytes(), 1).unwrap();
    std::fs::write(&ekey, &raw).unwrap();
    let mut h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join(KEY)).unwrap()).unwrap();
    h["entries"]["size"] = raw.len().into();
    h["entries"]["sha256"] = hex::encode(Sha256::digest(&raw)).into();
    h["entry_count"] = count.into();
    std::fs::write(d.join(KEY), serde_json::to_vec(&h).unwrap()).unwrap();
    load(&LocalDir::new(d.to_path_buf()), KEY)
}

#[test]
fn entries_stream_order_fields_and_totals_are_checked() {
    let (d, _) = stored(&sample());
    let dir = |p: &str| {
        format!(r#"{{"path":"{p}","kind":"dir","size":0,"mode":493,"uid":0,"gid":0,"mtime":1}}"#)
    };
    let file = |p: &str| {
        format!(
            r#"{{"path":"{p}","kind":"file","size":5,"mode":420,"uid":0,"gid":0,"mtime":1,"sha256":"{SHA}"}}"#
        )
    };
    // out of order, and a duplicate
    for lines in [
        format!("{}\n{}\n", dir("b"), dir("a")),
        format!("{}\n{}\n", dir("a"), dir("./a")),
    ] {
        let err = rewrite_entries(d.path(), &lines, 2).unwrap_err();
        assert!(
            err.to_string().contains("out of order or listed twice"),
            "{err}"
        );
    }
    // a typo in a field, and a line cut short
    let err = rewrite_entries(
        d.path(),
        &format!("{}\n", dir(".").replace("mtime", "mtmie")),
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("mtmie"), "{err}");
    let err = rewrite_entries(d.path(), dir(".").as_str(), 1).unwrap_err();
    assert!(err.to_string().contains("cut short"), "{err}");
    // totals in the header that the entries do not add up to
    let err = rewrite_entries(d.path(), &format!("{}\n{}\n", dir("."), file("f")), 2).unwrap_err();
    assert!(err.to_string().contains("file_count is 2"), "{err}");
    // entry_count that does not match
    let err = rewrite_entries(
        d.path(),
        &format!("{}\n{}\n{}\n", dir("."), file("f"), file("g")),
        5,
    )
    .unwrap_err();
    assert!(err.to_string().contains("entry_count is 5"), "{err}");
}

#[test]
fn schema_1_documents_load_into_the_same_struct() {
    let mut m = sample();
    m.schema_version = 1;
    let v = v1(&m);
    // what 0.1 wrote has none of the new keys
    for k in [
        "entry_notes",
        "skipped",
        "consistency",
        "parent",
        "pvc_name",
    ] {
        assert!(v.get(k).is_none(), "{k}");
    }
    let back = load_value(&v).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.entries[0].path, ".", "schema 1 keeps archive order");
    // and a schema-1 document never carries a schema-2 section
    let mut bad = v.clone();
    bad["skipped"] = serde_json::json!([{"path": "x", "reason": "socket"}]);
    assert!(matches!(
        load_value(&bad),
        Err(ManifestError::NotInSchema1 { field: "skipped" })
    ));
    // it is a whole document for `parse` too, and loads from a destination
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("id/shop")).unwrap();
    std::fs::write(d.path().join(KEY), serde_json::to_vec(&v).unwrap()).unwrap();
    let dest = LocalDir::new(d.path().to_path_buf());
    assert_eq!(load(&dest, KEY).unwrap(), m);
}

#[test]
fn the_expanded_form_round_trips() {
    for m in [sample(), full()] {
        let json = m.to_json_pretty();
        assert!(json.contains("\"kind\": \"PVBackupManifest\""), "{json}");
        assert!(json.contains("\"created\": \"2025-01-01T12:00:00Z\""));
        assert!(json.contains("\"algorithm\": \"zstd\""), "{json}");
        assert!(json.contains("ünï\\ncode"), "{json}");
        assert_eq!(Manifest::from_json(json.as_bytes()).unwrap(), m);
    }
    let json = full().to_json_pretty();
    for needle in [
        "\"method\": \"snapshot\"",
        "\"outcome\": \"succeeded\"",
        "\"kind\": \"envoy_config_dump\"",
        "\"reason\": \"char_device\"",
        "\"changed_while_read\": true",
    ] {
        assert!(json.contains(needle), "{needle} in {json}");
    }
}

#[test]
fn a_header_is_not_a_whole_manifest() {
    let (d, _) = stored(&sample());
    let err = Manifest::from_json(&std::fs::read(d.path().join(KEY)).unwrap()).unwrap_err();
    assert!(matches!(err, ManifestError::HeaderOnly(_)), "{err}");
    assert!(err.to_string().contains("entries.jsonl.zst"), "{err}");
}

#[test]
fn header_checks() {
    let (d, dest) = stored(&sample());
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join(KEY)).unwrap()).unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut h = original.clone();
        edit(&mut h);
        std::fs::write(d.path().join(KEY), serde_json::to_vec(&h).unwrap()).unwrap();
        load(&dest, KEY).map(|_| ())
    };
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    let cases: [(Edit, &str); 9] = [
        (
            &|h| h["entries"]["file_name"] = "../x".into(),
            "not a plain file name",
        ),
        (&|h| h["entries"]["sha256"] = "abc".into(), "entries.sha256"),
        (&|h| h["pvc_name"] = "other".into(), "details.pvc.name"),
        (
            &|h| h["entries"]["format"] = "csv".into(),
            "unknown variant `csv`",
        ),
        (&|h| h["entires"] = 1.into(), "unknown field `entires`"),
        (&|h| h["schema_version"] = 3.into(), "schema_version 3"),
        (
            &|h| h["encryption"] = serde_json::json!({"scheme": "age", "recipients": ["x25519"], "parts": ["archive"]}),
            "leaves the Entries part in clear",
        ),
        (
            &|h| h["encryption"] = serde_json::json!({"scheme": "age", "recipients": ["x25519"], "parts": ["archive", "entries", "details"], "details": {"file_name": "p.details.json.age", "size": 1, "sha256": SHA}}),
            "holds its details in clear",
        ),
        (
            &|h| {
                h["encryption"] = serde_json::json!({"scheme": "age", "recipients": [], "parts": ["archive", "entries", "details"]});
                h.as_object_mut().unwrap().remove("details");
            },
            "names no recipient kind",
        ),
    ];
    for (edit, needle) in cases {
        let err = with(edit).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
    with(&|_| {}).unwrap();
}

#[test]
fn rejects_bad_sha() {
    let mut v = json_value(&sample());
    v["archive"]["sha256"] = SHA.to_uppercase().into();
    let msg = load_value(&v).unwrap_err().to_string();
    assert!(
        msg.contains("archive.sha256") && msg.contains("64 lowercase hex"),
        "{msg}"
    );

    let mut v = json_value(&sample());
    v["entries"][2]["sha256"] = "abc".into();
    let msg = load_value(&v).unwrap_err().to_string();
    assert!(
        msg.contains("\"ünï\\ncode\"") && msg.contains("\"abc\""),
        "{msg}"
    );

    let mut v = json_value(&sample());
    v["entries"][2].as_object_mut().unwrap().remove("sha256");
    assert!(matches!(
        load_value(&v),
        Err(ManifestError::MissingSha256 { .. })
    ));

    let mut v = json_value(&sample());
    v["entries"][1]["sha256"] = SHA.into();
    assert!(matches!(
        load_value(&v),
        Err(ManifestError::UnexpectedSha256 { .. })
    ));
}

#[test]
fn rejects_duplicate_paths() {
    let mut m = sample();
    m.entries.push(entry("a b/", EntryKind::Dir, None));
    m.entry_count += 1;
    let err = Manifest::from_json(m.to_json_pretty().as_bytes()).unwrap_err();
    assert!(matches!(err, ManifestError::DuplicatePath { .. }), "{err}");
    assert!(err.to_string().contains("\"a b/\""), "{err}");
    assert!(err.to_string().contains("remove the duplicate"), "{err}");
}

#[test]
fn rejects_unknown_fields() {
    let mut v = json_value(&sample());
    let entries = v.as_object_mut().unwrap().remove("entries").unwrap();
    v["entires"] = entries;
    let msg = load_value(&v).unwrap_err().to_string();
    assert!(msg.contains("unknown field `entires`"), "{msg}");
    assert!(msg.contains("typo"), "{msg}");

    let mut v = json_value(&sample());
    v["entries"][0]["sha265"] = SHA.into();
    let msg = load_value(&v).unwrap_err().to_string();
    assert!(msg.contains("unknown field `sha265`"), "{msg}");

    let mut v = json_value(&sample());
    v["pvc"]["storageClass"] = "x".into();
    assert!(load_value(&v).is_err());

    let mut v = json_value(&full());
    v["consistency"]["method"] = "quiesced".into();
    assert!(load_value(&v)
        .unwrap_err()
        .to_string()
        .contains("unknown variant `quiesced`"));
}

#[test]
fn rejects_other_invariant_violations() {
    let mut v = json_value(&sample());
    v["entry_count"] = 4.into();
    let msg = load_value(&v).unwrap_err().to_string();
    assert!(
        msg.contains("entry_count is 4") && msg.contains("7 entries"),
        "{msg}"
    );

    let mut v = json_value(&sample());
    v["schema_version"] = 3.into();
    v["new_field"] = true.into();
    assert!(matches!(
        load_value(&v),
        Err(ManifestError::UnsupportedSchema { found: 3 })
    ));

    let mut v = json_value(&sample());
    v["kind"] = "Other".into();
    assert!(matches!(
        load_value(&v),
        Err(ManifestError::WrongKind { .. })
    ));

    let mut v = json_value(&sample());
    v["entries"][6]["path_hex"] = "zz".into();
    assert!(matches!(
        load_value(&v),
        Err(ManifestError::BadHexName { .. })
    ));

    let mut v = json_value(&sample());
    v["entries"][0]["mode"] = (0o100755).into();
    assert!(matches!(load_value(&v), Err(ManifestError::BadMode { .. })));

    let mut v = json_value(&sample());
    v["created"] = "yesterday".into();
    assert!(matches!(load_value(&v), Err(ManifestError::Json { .. })));

    let mut v = json_value(&sample());
    v["archive"]["file_name"] = "../../etc/x.tar".into();
    assert!(matches!(
        load_value(&v),
        Err(ManifestError::BadFileName { .. })
    ));
}

#[test]
fn sections_are_checked_against_each_other() {
    type Edit<'a> = &'a dyn Fn(&mut Manifest);
    let edits: [(Edit, &str); 5] = [
        (&|m| m.entry_notes[0].path = "nope".into(), "names no entry"),
        (&|m| m.entry_notes[1].archive = 7, "archive 7"),
        (&|m| m.parent = None, "has no parent"),
        (&|m| m.additional_archives[0].index = 0, "index 0"),
        (
            &|m| m.proxy_state[0].sha256 = "x".into(),
            "proxy state file",
        ),
    ];
    for (edit, needle) in edits {
        let mut m = full();
        edit(&mut m);
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    full().validate().unwrap();
}

#[test]
fn rejects_unsafe_entries_but_not_symlink_targets() {
    for (path, kind, target) in [
        ("../evil", EntryKind::Dir, None),
        ("/etc/passwd", EntryKind::Fifo, None),
        ("current/x", EntryKind::File, None),
        ("dev", EntryKind::Block, None),
    ] {
        let mut m = sample();
        let mut e = entry(path, kind, None);
        e.link_target = target.map(str::to_string);
        if kind == EntryKind::File {
            e.sha256 = Some(SHA.into());
        }
        m.entries.push(e);
        m.entry_count += 1;
        let err = Manifest::from_json(m.to_json_pretty().as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
    }
    // absolute, escaping and dangling targets are data
    let mut m = sample();
    for (p, t) in [("up", "../../x"), ("gone", "no/such"), ("wal", "/mnt/wal")] {
        let mut e = entry(p, EntryKind::Symlink, None);
        e.link_target = Some(t.into());
        m.entries.push(e);
        m.entry_count += 1;
    }
    Manifest::from_json(m.to_json_pretty().as_bytes()).unwrap();
}

#[test]
fn the_skipped_warning_names_entries_and_the_reason() {
    assert_eq!(skipped_warning(&[]), None);
    let one = skipped_warning(&full().skipped).unwrap();
    assert!(one.starts_with("warning: "), "{one}");
    assert!(one.contains("1 entry "), "{one}");
    assert!(
        one.contains("\"chroot/dev/null\" (character device)"),
        "{one}"
    );
    let many: Vec<SkippedEntry> = (0..7)
        .map(|i| SkippedEntry {
            path: format!("run/{i}.sock"),
            path_hex: None,
            reason: SkipReason::Socket,
        })
        .collect();
    let w = skipped_warning(&many).unwrap();
    assert!(w.contains("7 entries"), "{w}");
    assert!(w.contains("\"run/4.sock\" (socket) and 2 more"), "{w}");
    assert!(!w.contains("run/5.sock"), "{w}");
    assert!(w.contains("inspect"), "{w}");
}

/// The header is what `list` reads for every backup: its size must not grow with the file
/// count (only the digits of the totals do).
#[test]
fn the_header_does_not_grow_with_the_file_count() {
    let header_len = |n: usize| {
        let mut m = sample();
        m.entries = (0..n)
            .map(|i| entry(&format!("dir/file-{i:07}"), EntryKind::File, Some(SHA)))
            .collect();
        m.entry_count = n as u64;
        let (d, _) = stored(&m);
        let header = std::fs::metadata(d.path().join(KEY)).unwrap().len();
        let entries = std::fs::metadata(d.path().join("id/shop/data-web-0.entries.jsonl.zst"))
            .unwrap()
            .len();
        (header, entries)
    };
    let (small, small_entries) = header_len(10);
    let (big, big_entries) = header_len(200_000);
    assert!(big - small <= 16, "{small} vs {big} bytes");
    assert!(big < 2048, "{big} bytes");
    assert!(
        big_entries > 100 * small_entries,
        "{small_entries} vs {big_entries}"
    );
}

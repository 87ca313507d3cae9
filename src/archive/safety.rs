//! The round-trip rules: one table ([`RULES`]) that `create`, `verify`, `restore` and `drill`
//! all apply, so that whatever `create` accepts, the others accept.
//!
//! Extracting an untrusted tar can write outside the target directory (CVE-2001-1267 and
//! friends) through member names that are absolute or hold `..`, members written *beneath* a
//! symlink (`a -> /etc` then `a/passwd`), and hard links to files outside the tree; device
//! nodes would need `CAP_MKNOD`, which the helper pod does not have. Those are the rules.
//!
//! A symlink's **target** is data, not a danger: any target (absolute, dangling, above the
//! volume root, long, odd bytes) is stored and restored verbatim, and nothing ever resolves
//! it. busybox tar (the helper's extractor) creates a symlink with exactly the recorded target
//! (`symlink(2)` on the raw link name), and creates every symlink only after all other
//! members, so no later member can be written through one (busybox `archival/libarchive/
//! data_extract_all.c`, `create_or_remember_link`: "symlinks are created last, to prevent
//! symlink attacks"); the [`UnsafeReason::BeneathSymlink`] rule refuses such archives anyway
//! (checked in busybox 1.35: the member lands in a directory, the symlink fails, tar exits 1).
//!
//! Every check is lexical (on the recorded names), so it does not depend on what is on disk.

use std::collections::HashMap;

use super::{EntryKind, EntryRecord};

/// What `create` does with an entry of the volume that a rule catches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtCreate {
    /// Left out of the archive and recorded in the manifest's `skipped` list, with a warning
    /// that `create`, `inspect` and `restore` show.
    Skip,
    /// The backup fails, naming the entries: `tar -c` of a real directory never produces
    /// them, so the stream is not a plain copy of the volume.
    Refuse,
}

/// One rule of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    /// What the rule refuses, for people.
    pub what: &'static str,
    pub at_create: AtCreate,
}

/// The rules. `verify`, `restore` and `drill` refuse an entry any rule catches (exit 3);
/// `create` does what `at_create` says, so a backup it calls good passes all of them.
pub const RULES: [Rule; 9] = [
    Rule {
        name: "empty-path",
        what: "a member with an empty name",
        at_create: AtCreate::Refuse,
    },
    Rule {
        name: "absolute-path",
        what: "a member name starting with `/`",
        at_create: AtCreate::Refuse,
    },
    Rule {
        name: "parent-component",
        what: "a member name with a `..` component",
        at_create: AtCreate::Refuse,
    },
    Rule {
        name: "root-not-directory",
        what: "the volume root `.` as anything but a directory",
        at_create: AtCreate::Refuse,
    },
    Rule {
        name: "device-node",
        what: "a character or block device node (the helper pod cannot create one)",
        at_create: AtCreate::Skip,
    },
    Rule {
        name: "hardlink-outside",
        what: "a hard link to an absolute name or one with `..`",
        at_create: AtCreate::Refuse,
    },
    Rule {
        name: "hardlink-unknown",
        what: "a hard link to a name that is not a non-directory entry of the backup",
        at_create: AtCreate::Refuse,
    },
    Rule {
        name: "hardlink-not-earlier",
        what: "a hard link to a member that comes later in the archive",
        at_create: AtCreate::Refuse,
    },
    Rule {
        name: "beneath-symlink",
        what: "a member beneath a path that is a symlink in the backup",
        at_create: AtCreate::Refuse,
    },
];

/// Why an entry is refused. See [`UnsafeEntry`] and [`UnsafeReason::rule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeReason {
    #[error("the path is empty")]
    EmptyPath,
    #[error("the path is absolute")]
    AbsolutePath,
    #[error("the path contains a `..` component")]
    ParentComponent,
    #[error("the volume root `.` must be a directory, but it is a {0}")]
    RootNotDirectory(EntryKind),
    #[error("it is a {0} device node, which the helper pod cannot create")]
    DeviceNode(EntryKind),
    #[error("it is a hard link to {target:?}, which is outside the volume root")]
    HardlinkOutside { target: String },
    #[error("it is a hard link to {target:?}, which is not a non-directory entry of the backup")]
    HardlinkUnknown { target: String },
    #[error("it is a hard link to {target:?}, which does not come earlier in the archive")]
    HardlinkNotEarlier { target: String },
    #[error("its parent {symlink:?} is a symlink, so it would be written through the link")]
    BeneathSymlink { symlink: String },
}

impl UnsafeReason {
    /// The row of [`RULES`] that refuses this.
    pub fn rule(&self) -> &'static Rule {
        let i = match self {
            UnsafeReason::EmptyPath => 0,
            UnsafeReason::AbsolutePath => 1,
            UnsafeReason::ParentComponent => 2,
            UnsafeReason::RootNotDirectory(_) => 3,
            UnsafeReason::DeviceNode(_) => 4,
            UnsafeReason::HardlinkOutside { .. } => 5,
            UnsafeReason::HardlinkUnknown { .. } => 6,
            UnsafeReason::HardlinkNotEarlier { .. } => 7,
            UnsafeReason::BeneathSymlink { .. } => 8,
        };
        &RULES[i]
    }
}

/// An entry that must not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing unsafe archive entry {path:?}: {reason}; the archive or manifest was not \
     produced by a plain backup of a volume or has been tampered with. Inspect it \
     (e.g. `tar -tvf`) and remove the entry if you really want to restore it"
)]
pub struct UnsafeEntry {
    pub path: String,
    pub reason: UnsafeReason,
}

pub(super) fn refuse(entry: &EntryRecord, reason: UnsafeReason) -> UnsafeEntry {
    UnsafeEntry {
        path: entry.path.clone(),
        reason,
    }
}

/// Canonical component list of a relative member name: empty and `.`
/// components dropped. `None` if it contains `..`.
fn components(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Canonical key (`a/b/c`, `.` for the root) used to compare member names
/// that may differ only in `./` or duplicate slashes.
pub(crate) fn canonical_key(raw: &[u8]) -> Vec<u8> {
    let comps: Vec<&[u8]> = raw
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if comps.is_empty() {
        b".".to_vec()
    } else {
        comps.join(&b'/')
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The rules that need only the entry itself:
///
/// - the path is non-empty, relative and has no `..` component;
/// - `.` (the volume root) is a directory;
/// - no character or block device nodes (fifos are fine);
/// - a hard link target is relative without `..`.
///
/// A symlink passes whatever its target. Use [`check_entries_safe`] for a whole backup and
/// [`ArchiveOrder`] for an archive read in order: they add the rules that need the other
/// entries.
pub fn check_entry_safe(entry: &EntryRecord) -> Result<(), UnsafeEntry> {
    let raw = entry.raw_path();
    if raw.is_empty() {
        return Err(refuse(entry, UnsafeReason::EmptyPath));
    }
    if raw[0] == b'/' {
        return Err(refuse(entry, UnsafeReason::AbsolutePath));
    }
    let Some(comps) = components(&raw) else {
        return Err(refuse(entry, UnsafeReason::ParentComponent));
    };
    if comps.is_empty() && entry.kind != EntryKind::Dir {
        return Err(refuse(entry, UnsafeReason::RootNotDirectory(entry.kind)));
    }
    match entry.kind {
        EntryKind::Char | EntryKind::Block => {
            Err(refuse(entry, UnsafeReason::DeviceNode(entry.kind)))
        }
        EntryKind::Hardlink => {
            let target = entry.raw_link_target().unwrap_or_default();
            let outside = UnsafeReason::HardlinkOutside {
                target: lossy(&target),
            };
            if target.first() == Some(&b'/') {
                return Err(refuse(entry, outside));
            }
            match components(&target) {
                None => Err(refuse(entry, outside)),
                Some(c) if c.is_empty() => Err(refuse(
                    entry,
                    UnsafeReason::HardlinkUnknown {
                        target: lossy(&target),
                    },
                )),
                Some(_) => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// [`check_entry_safe`] on every entry, plus the rules on the set, in any order (a schema-2
/// manifest lists entries by path, not in archive order):
///
/// - a hard link names another entry that is not a directory;
/// - no entry sits beneath a path that is a symlink in the backup (`a -> /etc` with
///   `a/passwd` would write through the link; a tar of a real filesystem never holds such a
///   pair).
pub fn check_entries_safe(entries: &[EntryRecord]) -> Result<(), UnsafeEntry> {
    let mut kinds: HashMap<Vec<u8>, EntryKind> = HashMap::with_capacity(entries.len());
    for e in entries {
        check_entry_safe(e)?;
        kinds.insert(canonical_key(&e.raw_path()), e.kind);
    }
    let is_symlink = |k: &[u8]| kinds.get(k) == Some(&EntryKind::Symlink);
    let any_symlink = kinds.values().any(|k| *k == EntryKind::Symlink);
    for e in entries {
        let key = canonical_key(&e.raw_path());
        if any_symlink {
            // Every proper prefix a, a/b, ... of a/b/c.
            let beneath = key
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'/')
                .map(|(i, _)| &key[..i])
                .find(|p| is_symlink(p));
            if let Some(symlink) = beneath {
                return Err(refuse(
                    e,
                    UnsafeReason::BeneathSymlink {
                        symlink: lossy(symlink),
                    },
                ));
            }
        }
        if e.kind == EntryKind::Hardlink {
            let target = e.raw_link_target().unwrap_or_default();
            let tkey = canonical_key(&target);
            let ok = tkey != key && matches!(kinds.get(&tkey), Some(k) if *k != EntryKind::Dir);
            if !ok {
                return Err(refuse(
                    e,
                    UnsafeReason::HardlinkUnknown {
                        target: lossy(&target),
                    },
                ));
            }
        }
    }
    Ok(())
}

/// The rules on an archive read in order, one member at a time: [`check_entry_safe`], and a
/// hard link's target must be a non-directory member that came *earlier* (tar extracts in
/// order, so the target must already exist).
#[derive(Debug, Default)]
pub struct ArchiveOrder {
    seen: HashMap<Vec<u8>, EntryKind>,
}

impl ArchiveOrder {
    pub fn check(&mut self, e: &EntryRecord) -> Result<(), UnsafeEntry> {
        check_entry_safe(e)?;
        if e.kind == EntryKind::Hardlink {
            let target = e.raw_link_target().unwrap_or_default();
            let ok =
                matches!(self.seen.get(&canonical_key(&target)), Some(k) if *k != EntryKind::Dir);
            if !ok {
                return Err(refuse(
                    e,
                    UnsafeReason::HardlinkNotEarlier {
                        target: lossy(&target),
                    },
                ));
            }
        }
        self.seen.insert(canonical_key(&e.raw_path()), e.kind);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An entry of `kind` at `path` (a link's `target`), the other fields zero.
    pub(crate) fn rec(path: &str, kind: EntryKind, target: Option<&str>) -> EntryRecord {
        EntryRecord {
            path: path.to_string(),
            path_hex: None,
            kind,
            size: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            link_target: target.map(str::to_string),
            link_target_hex: None,
            sha256: None,
        }
    }

    fn rule_of(r: Result<(), UnsafeEntry>) -> &'static str {
        r.unwrap_err().reason.rule().name
    }

    #[test]
    fn the_table_names_each_rule_once_and_only_device_nodes_are_skipped() {
        let mut names: Vec<_> = RULES.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RULES.len());
        let skipped: Vec<_> = RULES
            .iter()
            .filter(|r| r.at_create == AtCreate::Skip)
            .map(|r| r.name)
            .collect();
        assert_eq!(skipped, ["device-node"]);
    }

    #[test]
    fn rule_empty_path() {
        assert_eq!(
            rule_of(check_entry_safe(&rec("", EntryKind::File, None))),
            "empty-path"
        );
    }

    #[test]
    fn rule_absolute_path() {
        for p in ["/etc/passwd", "//x"] {
            assert_eq!(
                rule_of(check_entry_safe(&rec(p, EntryKind::File, None))),
                "absolute-path"
            );
        }
    }

    #[test]
    fn rule_parent_component() {
        for p in ["../evil", "a/../../evil", "a/.."] {
            assert_eq!(
                rule_of(check_entry_safe(&rec(p, EntryKind::Dir, None))),
                "parent-component"
            );
        }
        // `..` inside a name is a name.
        check_entry_safe(&rec("a..b/..c", EntryKind::File, None)).unwrap();
    }

    #[test]
    fn rule_root_not_directory() {
        for kind in [EntryKind::Symlink, EntryKind::File] {
            assert_eq!(
                rule_of(check_entry_safe(&rec(".", kind, Some("x")))),
                "root-not-directory"
            );
        }
        check_entry_safe(&rec(".", EntryKind::Dir, None)).unwrap();
    }

    #[test]
    fn rule_device_node() {
        for kind in [EntryKind::Char, EntryKind::Block] {
            let err = check_entry_safe(&rec("dev/x", kind, None)).unwrap_err();
            assert_eq!(err.reason.rule().name, "device-node");
            assert!(err.to_string().contains("\"dev/x\""), "{err}");
        }
        check_entry_safe(&rec("fifo", EntryKind::Fifo, None)).unwrap();
    }

    #[test]
    fn rule_hardlink_outside() {
        for t in ["/etc/shadow", "../x", "a/../../x"] {
            assert_eq!(
                rule_of(check_entry_safe(&rec("h", EntryKind::Hardlink, Some(t)))),
                "hardlink-outside"
            );
        }
    }

    #[test]
    fn rule_hardlink_unknown() {
        let set = |entries: Vec<EntryRecord>| rule_of(check_entries_safe(&entries));
        assert_eq!(
            set(vec![rec("h", EntryKind::Hardlink, Some("nope"))]),
            "hardlink-unknown"
        );
        assert_eq!(
            set(vec![
                rec("d", EntryKind::Dir, None),
                rec("h", EntryKind::Hardlink, Some("d")),
            ]),
            "hardlink-unknown"
        );
        assert_eq!(
            set(vec![rec("h", EntryKind::Hardlink, Some("./h"))]),
            "hardlink-unknown"
        );
        // The set check does not care about order: a schema-2 manifest is sorted by path.
        check_entries_safe(&[
            rec("a", EntryKind::Hardlink, Some("z")),
            rec("z", EntryKind::File, None),
        ])
        .unwrap();
    }

    #[test]
    fn rule_hardlink_not_earlier() {
        let mut order = ArchiveOrder::default();
        let err = order
            .check(&rec("a", EntryKind::Hardlink, Some("z")))
            .unwrap_err();
        assert_eq!(err.reason.rule().name, "hardlink-not-earlier");
        let mut order = ArchiveOrder::default();
        order.check(&rec("z", EntryKind::File, None)).unwrap();
        order
            .check(&rec("a", EntryKind::Hardlink, Some("./z")))
            .unwrap();
        order.check(&rec("d", EntryKind::Dir, None)).unwrap();
        assert!(order
            .check(&rec("b", EntryKind::Hardlink, Some("d")))
            .is_err());
    }

    #[test]
    fn rule_beneath_symlink() {
        for entries in [
            vec![
                rec("l", EntryKind::Symlink, Some("sub")),
                rec("l/x", EntryKind::File, None),
            ],
            // in any order, and with the symlink deeper
            vec![
                rec("a/l/x/y", EntryKind::File, None),
                rec("a/l", EntryKind::Symlink, Some("/etc")),
            ],
        ] {
            let err = check_entries_safe(&entries).unwrap_err();
            assert_eq!(err.reason.rule().name, "beneath-symlink");
            assert!(err.path.ends_with('x') || err.path.ends_with('y'), "{err}");
        }
        // A sibling whose name starts like the symlink is not beneath it.
        check_entries_safe(&[
            rec("l", EntryKind::Symlink, Some("/etc")),
            rec("l-x/y", EntryKind::File, None),
            rec("lx", EntryKind::File, None),
        ])
        .unwrap();
    }

    #[test]
    fn symlink_targets_are_data() {
        let long = format!("/var/lib/{}/v2", "x".repeat(300));
        for (path, target) in [
            ("current", "/var/lib/app/releases/v2"),
            ("pg_wal", "/mnt/wal"),
            ("a/up", "../../../etc/passwd"),
            ("l", ".."),
            ("dangling", "does/not/exist"),
            ("long", long.as_str()),
            ("nl", "a\nb"),
            ("empty-ish", "."),
        ] {
            let e = rec(path, EntryKind::Symlink, Some(target));
            check_entry_safe(&e).unwrap_or_else(|err| panic!("{err}"));
            check_entries_safe(std::slice::from_ref(&e)).unwrap();
            ArchiveOrder::default().check(&e).unwrap();
        }
    }

    #[test]
    fn ordinary_entries_pass() {
        let ok = vec![
            rec(".", EntryKind::Dir, None),
            rec("a", EntryKind::Dir, None),
            rec("a/f", EntryKind::File, None),
            rec("h", EntryKind::Hardlink, Some("./a/f")),
            rec("l", EntryKind::Symlink, Some("a")),
            rec("p", EntryKind::Fifo, None),
        ];
        check_entries_safe(&ok).unwrap();
        let mut order = ArchiveOrder::default();
        for e in &ok {
            order.check(e).unwrap();
        }
    }
}

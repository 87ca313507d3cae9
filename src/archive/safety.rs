//! Restore-time safety checks on archive entries.
//!
//! Extracting an untrusted tar can write outside the target directory in
//! several ways (CVE-2001-1267 and friends): absolute member names, `..`
//! components, symlinks pointing out of the tree followed by members
//! written "through" them, hard links to files outside the tree, and device
//! nodes that give access to host devices. Every check here is lexical
//! (on the recorded names), so it does not depend on what is on disk.

use std::collections::{HashMap, HashSet};

use super::{EntryKind, EntryRecord};

/// Why an entry is refused. See [`UnsafeEntry`].
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
    #[error("it is a {0} device node, which could expose a host device")]
    DeviceNode(EntryKind),
    #[error("it is a symlink to the absolute path {target:?}")]
    AbsoluteSymlink { target: String },
    #[error("it is a symlink to {target:?}, which resolves outside the volume root")]
    SymlinkEscapes { target: String },
    #[error("it is a hard link to {target:?}, which is outside the volume root")]
    HardlinkOutside { target: String },
    #[error("it is a hard link to {target:?}, which is not an earlier non-directory entry")]
    HardlinkUnknown { target: String },
    #[error("its parent {symlink:?} is a symlink, so it would be written through the link")]
    BeneathSymlink { symlink: String },
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

fn refuse(entry: &EntryRecord, reason: UnsafeReason) -> UnsafeEntry {
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

/// Checks that can be made on one entry in isolation:
///
/// - the path is non-empty, relative and has no `..` component;
/// - `.` (the volume root) is a directory;
/// - no character or block device nodes (fifos are fine);
/// - a symlink target is relative and, resolved lexically against the
///   link's own directory, stays inside the volume root;
/// - a hard link target is relative without `..`.
///
/// Use [`check_entries_safe`] for a whole archive: it adds the checks that
/// need the other entries (hard link targets exist, nothing beneath a
/// symlink).
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
        EntryKind::Symlink => {
            let target = entry.raw_link_target().unwrap_or_default();
            if target.first() == Some(&b'/') {
                return Err(refuse(
                    entry,
                    UnsafeReason::AbsoluteSymlink {
                        target: lossy(&target),
                    },
                ));
            }
            // The link lives in the directory of its path; resolve the
            // target from there, one component at a time. Going above
            // depth 0 at any point leaves the root, even if later
            // components would come back (the kernel resolves `..` step by
            // step, so `../root/x` from the top is outside).
            let mut depth = comps.len().saturating_sub(1);
            for c in target.split(|&b| b == b'/') {
                match c {
                    b"" | b"." => {}
                    b".." => {
                        if depth == 0 {
                            return Err(refuse(
                                entry,
                                UnsafeReason::SymlinkEscapes {
                                    target: lossy(&target),
                                },
                            ));
                        }
                        depth -= 1;
                    }
                    _ => depth += 1,
                }
            }
            Ok(())
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

/// [`check_entry_safe`] on every entry, plus:
///
/// - a hard link must name an entry that appears *earlier* (tar extracts
///   in order, so the target must already exist) and is not a directory;
/// - no entry may sit beneath a path that is a symlink in the archive
///   (`a -> /etc` followed by `a/passwd` would overwrite the host file;
///   a tar of a real filesystem never contains such a pair).
pub fn check_entries_safe(entries: &[EntryRecord]) -> Result<(), UnsafeEntry> {
    let symlinks: HashSet<Vec<u8>> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Symlink)
        .map(|e| canonical_key(&e.raw_path()))
        .collect();
    let beneath_symlink = |key: &[u8]| -> Option<String> {
        if symlinks.is_empty() {
            return None;
        }
        // Every proper prefix a, a/b, ... of a/b/c.
        key.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(|(i, _)| &key[..i])
            .find(|p| symlinks.contains(*p))
            .map(lossy)
    };
    let mut seen: HashMap<Vec<u8>, EntryKind> = HashMap::with_capacity(entries.len());
    for e in entries {
        check_entry_safe(e)?;
        let key = canonical_key(&e.raw_path());
        if let Some(symlink) = beneath_symlink(&key) {
            return Err(refuse(e, UnsafeReason::BeneathSymlink { symlink }));
        }
        if e.kind == EntryKind::Hardlink {
            let target = e.raw_link_target().unwrap_or_default();
            let tkey = canonical_key(&target);
            let ok = matches!(seen.get(&tkey), Some(k) if *k != EntryKind::Dir);
            if !ok {
                return Err(refuse(
                    e,
                    UnsafeReason::HardlinkUnknown {
                        target: lossy(&target),
                    },
                ));
            }
        }
        seen.insert(key, e.kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, kind: EntryKind, target: Option<&str>) -> EntryRecord {
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

    #[test]
    fn refuses_unsafe_paths() {
        let cases = [
            (rec("../evil", EntryKind::File, None), "`..`"),
            (rec("a/../../evil", EntryKind::File, None), "`..`"),
            (rec("/etc/passwd", EntryKind::File, None), "absolute"),
            (rec("", EntryKind::File, None), "empty"),
            (rec(".", EntryKind::Symlink, Some("x")), "root"),
            (rec("a/l", EntryKind::Symlink, Some("../../x")), "outside"),
            (rec("l", EntryKind::Symlink, Some("..")), "outside"),
            (rec("l", EntryKind::Symlink, Some("../data/x")), "outside"),
            (
                rec("l", EntryKind::Symlink, Some("/etc/passwd")),
                "absolute",
            ),
            (
                rec("h", EntryKind::Hardlink, Some("/etc/shadow")),
                "outside",
            ),
            (rec("h", EntryKind::Hardlink, Some("../x")), "outside"),
            (rec("dev/sda", EntryKind::Block, None), "device"),
            (rec("dev/null", EntryKind::Char, None), "device"),
        ];
        for (e, needle) in cases {
            let err = check_entry_safe(&e).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(msg.contains(&format!("{:?}", e.path)), "{msg}");
        }
    }

    #[test]
    fn accepts_safe_entries() {
        for e in [
            rec(".", EntryKind::Dir, None),
            rec("a/b/c", EntryKind::File, None),
            rec("a/l", EntryKind::Symlink, Some("../b")),
            rec("a/b/l", EntryKind::Symlink, Some("../../c/./d")),
            rec("l", EntryKind::Symlink, Some("dangling/but/inside")),
            rec("p", EntryKind::Fifo, None),
            rec("h", EntryKind::Hardlink, Some("a/b/c")),
        ] {
            check_entry_safe(&e).unwrap_or_else(|err| panic!("{err}"));
        }
    }

    #[test]
    fn set_level_checks() {
        let ok = vec![
            rec(".", EntryKind::Dir, None),
            rec("a", EntryKind::Dir, None),
            rec("a/f", EntryKind::File, None),
            rec("h", EntryKind::Hardlink, Some("./a/f")),
            rec("l", EntryKind::Symlink, Some("a")),
        ];
        check_entries_safe(&ok).unwrap();

        let unknown = vec![rec("h", EntryKind::Hardlink, Some("nope"))];
        let err = check_entries_safe(&unknown).unwrap_err();
        assert!(matches!(err.reason, UnsafeReason::HardlinkUnknown { .. }));

        let later = vec![
            rec("h", EntryKind::Hardlink, Some("f")),
            rec("f", EntryKind::File, None),
        ];
        assert!(check_entries_safe(&later).is_err());

        let to_dir = vec![
            rec("d", EntryKind::Dir, None),
            rec("h", EntryKind::Hardlink, Some("d")),
        ];
        assert!(check_entries_safe(&to_dir).is_err());

        let through = vec![
            rec("l", EntryKind::Symlink, Some("sub")),
            rec("l/x", EntryKind::File, None),
        ];
        let err = check_entries_safe(&through).unwrap_err();
        assert_eq!(err.path, "l/x");
        assert!(matches!(err.reason, UnsafeReason::BeneathSymlink { .. }));
    }
}

//! Volume backing for kubesim's PersistentVolumes: one real directory per volume.
//!
//! When kubesim runs as root, every volume directory is additionally the mount point of its own
//! size-limited tmpfs, mounted in kubesim's own (the "host") mount namespace. That gives two
//! properties tests rely on:
//!
//! * the host (the test process) reads and writes the volume's files at the same path the
//!   containers bind-mount, and
//! * the capacity of the PersistentVolume is enforced by the kernel: overfilling it fails with
//!   `ENOSPC` ("No space left on device"), exactly like a full real disk.
//!
//! Without root (or with `KUBESIM_VOLUME_BACKING=dir`) a volume is a plain directory and its
//! capacity is **not** enforced.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Environment variable that selects the backing: `dir` forces plain directories, `tmpfs` forces
/// tmpfs mounts (an error when not root); unset or empty means "tmpfs when root, else dir".
pub const BACKING_ENV: &str = "KUBESIM_VOLUME_BACKING";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to mount a tmpfs of {capacity_bytes} bytes on {path}: {source}")]
    Mount {
        path: PathBuf,
        capacity_bytes: u64,
        #[source]
        source: nix::Error,
    },
    #[error("failed to unmount {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("refusing to provision {path} with a capacity of 0 bytes (a tmpfs with size=0 is unlimited)")]
    ZeroCapacity { path: PathBuf },
    #[error("cannot provision {path}: it is already a mount point")]
    AlreadyMounted { path: PathBuf },
    #[error("{BACKING_ENV}=tmpfs needs root (effective uid 0) to mount {path}")]
    TmpfsNeedsRoot { path: PathBuf },
    #[error("{BACKING_ENV} has the unsupported value {0:?}; use \"dir\" or \"tmpfs\"")]
    BadBackingEnv(String),
    #[error("failed to read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
}

/// How a provisioned volume is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeBacking {
    /// A tmpfs mounted on the volume directory; the kernel enforces `size_bytes` (rounded up to
    /// whole pages).
    Tmpfs { size_bytes: u64 },
    /// A plain directory on the host filesystem; capacity is not enforced.
    PlainDir,
}

impl VolumeBacking {
    pub fn enforces_capacity(&self) -> bool {
        matches!(self, VolumeBacking::Tmpfs { .. })
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn wants_tmpfs(path: &Path) -> Result<bool, VolumeError> {
    let root = nix::unistd::geteuid().is_root();
    match std::env::var(BACKING_ENV).unwrap_or_default().as_str() {
        "" => Ok(root),
        "dir" => Ok(false),
        "tmpfs" if root => Ok(true),
        "tmpfs" => Err(VolumeError::TmpfsNeedsRoot {
            path: path.to_path_buf(),
        }),
        other => Err(VolumeError::BadBackingEnv(other.to_string())),
    }
}

/// Creates the volume directory at `path` and, when running as root, mounts a tmpfs limited to
/// `capacity_bytes` on it.
///
/// The directory is `0755` and owned by root, which is what a freshly formatted ext4/xfs volume
/// root looks like on a real node: pods that run as non-root can only write to it if the volume
/// is made group-writable through `fsGroup` handling (which kubesim does not do) or if the pod
/// runs as root.
pub fn provision(path: &Path, capacity_bytes: u64) -> Result<VolumeBacking, VolumeError> {
    let tmpfs = wants_tmpfs(path)?;
    if tmpfs && capacity_bytes == 0 {
        return Err(VolumeError::ZeroCapacity {
            path: path.to_path_buf(),
        });
    }
    fs::create_dir_all(path).map_err(io_err("create directory", path))?;
    // create_dir_all applies the umask and leaves an existing directory's mode alone.
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod 0755", path))?;
    if !tmpfs {
        return Ok(VolumeBacking::PlainDir);
    }
    if is_mountpoint(path)? {
        return Err(VolumeError::AlreadyMounted {
            path: path.to_path_buf(),
        });
    }
    // nosuid/nodev like kubelet-managed volume mounts; the tmpfs root gets mode 0755 itself
    // (the directory underneath is hidden by the mount).
    let data = format!("size={capacity_bytes},mode=0755");
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|source| VolumeError::Mount {
        path: path.to_path_buf(),
        capacity_bytes,
        source,
    })?;
    Ok(VolumeBacking::Tmpfs {
        size_bytes: capacity_bytes,
    })
}

/// Unmounts the volume at `path` (if it is a mount point) and removes the directory tree.
/// Releasing a path that does not exist is not an error.
///
/// The unmount is lazy (`MNT_DETACH`): a container that still has the volume bind-mounted keeps
/// its own reference to the tmpfs, so its data stays readable there until the container exits,
/// like a real volume that is still in use. Removing the now-empty directory also detaches the
/// copies of this mount that other mount namespaces (containers started earlier) inherited.
pub fn release(path: &Path) -> Result<(), VolumeError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    // Mounts may be stacked (provisioned twice by mistake); peel until the directory is bare.
    while is_mountpoint(path)? {
        umount2(path, MntFlags::MNT_DETACH).map_err(|source| VolumeError::Unmount {
            path: path.to_path_buf(),
            source,
        })?;
    }
    // Anything mounted below the volume (unusual) must go too, or remove_dir_all would descend
    // into it and delete someone else's files.
    release_all_under(path)?;
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// True if `path` is a mount point in this process's mount namespace.
pub fn is_mountpoint(path: &Path) -> Result<bool, VolumeError> {
    let target = normalize(path);
    Ok(mount_points()?.contains(&target))
}

/// Lazily unmounts every mount point at or below `dir` (deepest first, so parents are not busy)
/// and returns how many were unmounted. Keeps going after a failure and reports the first one.
/// Meant for cluster shutdown and `Drop` so no tmpfs outlives the cluster.
pub fn release_all_under(dir: &Path) -> Result<usize, VolumeError> {
    let dir = normalize(dir);
    let mut under: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    let mut first_err = None;
    let mut count = 0;
    for m in under {
        match umount2(&m, MntFlags::MNT_DETACH) {
            Ok(()) => count += 1,
            // Already gone (e.g. a parent's detach took it along): not a failure.
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(source) => {
                first_err.get_or_insert(VolumeError::Unmount { path: m, source });
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(count),
    }
}

/// Mount points of this process's mount namespace, in mountinfo order (duplicates kept for
/// stacked mounts).
pub fn mount_points() -> Result<Vec<PathBuf>, VolumeError> {
    let text = fs::read("/proc/self/mountinfo").map_err(VolumeError::MountInfo)?;
    Ok(text
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_mountinfo(field))))
        .collect())
}

/// mountinfo octal-escapes space, tab, newline and backslash (`\040` etc.).
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|c| (b'0'..=b'7').contains(c))
        {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// The kernel reports mount points canonically (symlinks resolved, no `.`/`..`), so compare
/// against the canonical form; fall back to lexical cleanup for paths that do not exist.
fn normalize(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_or_skip() -> bool {
        if nix::unistd::geteuid().is_root() {
            true
        } else {
            eprintln!("skipping: tmpfs volumes need root");
            false
        }
    }

    fn assert_no_mounts_under(dir: &Path) {
        let dir = normalize(dir);
        let leaked: Vec<_> = mount_points()
            .unwrap()
            .into_iter()
            .filter(|m| m.starts_with(&dir))
            .collect();
        assert!(leaked.is_empty(), "leaked mounts: {leaked:?}");
    }

    #[test]
    fn unescape_handles_octal() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(br"/x\04"), br"/x\04");
    }

    #[test]
    fn tmpfs_volume_enforces_capacity_and_releases() {
        if !root_or_skip() || std::env::var(BACKING_ENV).as_deref() == Ok("dir") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("pv-1");
        let backing = provision(&vol, 1 << 20).unwrap();
        assert_eq!(
            backing,
            VolumeBacking::Tmpfs {
                size_bytes: 1 << 20
            }
        );
        assert!(is_mountpoint(&vol).unwrap());
        let mode = fs::metadata(&vol).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);

        fs::write(vol.join("small"), vec![1u8; 100 * 1024]).unwrap();
        let err = fs::write(vol.join("big"), vec![0u8; 2 << 20]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(err.to_string().contains("No space left on device"));

        assert!(matches!(
            provision(&vol, 1 << 20),
            Err(VolumeError::AlreadyMounted { .. })
        ));
        release(&vol).unwrap();
        assert!(!vol.exists());
        release(&vol).unwrap();
        assert_no_mounts_under(tmp.path());
    }

    #[test]
    fn zero_capacity_is_rejected_for_tmpfs() {
        if !root_or_skip() || std::env::var(BACKING_ENV).as_deref() == Ok("dir") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            provision(&tmp.path().join("z"), 0),
            Err(VolumeError::ZeroCapacity { .. })
        ));
    }

    #[test]
    fn release_all_under_unmounts_nested_mounts_deepest_first() {
        if !root_or_skip() || std::env::var(BACKING_ENV).as_deref() == Ok("dir") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("vols with space");
        provision(&outer, 1 << 20).unwrap();
        let inner = outer.join("inner");
        provision(&inner, 1 << 20).unwrap();
        provision(&tmp.path().join("other"), 1 << 20).unwrap();
        assert_eq!(release_all_under(tmp.path()).unwrap(), 3);
        assert_no_mounts_under(tmp.path());
        assert!(!is_mountpoint(&outer).unwrap());
    }
}

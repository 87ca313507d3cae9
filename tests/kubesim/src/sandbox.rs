//! kubesim's container runtime: a container is a real process tree in its own mount and UTS
//! namespace, chrooted into a per-container root assembled from a busybox userland.
//!
//! What is real: the process, its exit code or fatal signal, its log, bind-mounted volumes
//! (read-only mounts are enforced by the kernel and fail with `EROFS`), a read-only root
//! filesystem, the hostname, and the uid/gid it runs as. `exec` runs a new process in the same
//! namespaces and root, so it sees exactly what the main process sees.
//!
//! What is not (see [`Container`] for details): there is no PID namespace (the main process is
//! not PID 1, `/proc` shows every process of the host), no network namespace, no cgroup limits,
//! no seccomp/capability dropping, and chroot is not a security boundary against a root
//! process. kubesim is a test fixture, not an isolation mechanism.
//!
//! Everything that runs between `fork` and `exec` is a precomputed list of [`Step`]s made of
//! raw syscalls on buffers allocated before the fork, because the child of a multi-threaded
//! process may only call async-signal-safe functions (another thread may have held the malloc
//! lock at the moment of the fork).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;

/// The `PATH` of the `busybox` image, used when the container's env does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `.ci/run` installs busybox 1.37.0 (Debian 13's busybox-static), the upstream version of
/// the images pods name (`busybox:1.37`): since 1.36 upstream's defconfig has
/// `CONFIG_SHA256_HWACCEL` (SHA-NI `sha256sum`), which the official image keeps
/// (docker-library/busybox's Dockerfile.builder runs `make defconfig` and patches
/// `sha1_process_block64_shaNI` rather than turning it off). Debian 12's busybox is 1.35, without
/// it: a container hashing with it runs ~5x slower than the real image's.
const CI_TOOLS_BUSYBOX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../target/ci-tools/busybox/bin/busybox"
);
const BUSYBOX_CANDIDATES: &[&str] = &[CI_TOOLS_BUSYBOX, "/usr/bin/busybox", "/bin/busybox"];
/// A busybox to use instead of the candidates above (it must be statically linked: containers
/// are chroots without a C library).
pub const BUSYBOX_ENV: &str = "KUBESIM_BUSYBOX";
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Users of the container image: (name, uid, gid, home, shell).
const USERS: &[(&str, u32, u32, &str, &str)] = &[
    ("root", 0, 0, "/root", "/bin/sh"),
    ("daemon", 1, 1, "/usr/sbin", "/bin/false"),
    ("service", 999, 999, "/home/service", "/bin/sh"),
    ("user", 1000, 1000, "/home/user", "/bin/sh"),
    ("nobody", 65534, 65534, "/nonexistent", "/bin/false"),
];
/// Groups of the container image: (name, gid).
const GROUPS: &[(&str, u32)] = &[
    ("root", 0),
    ("daemon", 1),
    ("service", 999),
    ("user", 1000),
    ("nogroup", 65534),
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("busybox not found (looked for {looked})")]
    BusyboxNotFound { looked: String },
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{busybox} --list` failed: {detail}")]
    ListApplets { busybox: PathBuf, detail: String },
    #[error("invalid container config for root {root}: {reason}")]
    InvalidConfig { root: PathBuf, reason: String },
    /// The text runc/containerd put in the container status or exec error.
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    ExecutableNotFound(String),
    #[error("exec: \"{0}\": stat {0}: no such file or directory")]
    NoSuchExecutable(String),
    #[error("exec: \"{0}\": permission denied")]
    PermissionDenied(String),
    #[error("container is not running")]
    NotRunning,
    #[error("container setup in root {root} failed at step `{step}`: {source}")]
    Setup {
        root: PathBuf,
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to start {program} in container root {root}: {source}")]
    Spawn {
        root: PathBuf,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to signal container process {pid} with {signal}: {source}")]
    Signal {
        pid: u32,
        signal: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The busybox containers run: `$KUBESIM_BUSYBOX` when set, else the first of
/// `target/ci-tools/busybox/bin/busybox` (this workspace's), `/usr/bin/busybox`, `/bin/busybox`
/// that exists.
pub fn busybox_path() -> Result<PathBuf, SandboxError> {
    if let Some(p) = std::env::var_os(BUSYBOX_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(SandboxError::BusyboxNotFound {
                looked: format!("{} from {BUSYBOX_ENV}", p.display()),
            })
        };
    }
    BUSYBOX_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| SandboxError::BusyboxNotFound {
            looked: BUSYBOX_CANDIDATES.join(", "),
        })
}

/// The shared, read-only part of every container root: `bin/` with busybox and one symlink per
/// applet, and `etc/passwd` + `etc/group`. Prepared once per cluster.
#[derive(Debug, Clone)]
pub struct BaseRootfs {
    dir: PathBuf,
    applets: BTreeSet<String>,
}

impl BaseRootfs {
    pub fn prepare(dir: &Path) -> Result<Self, SandboxError> {
        let busybox = &busybox_path()?;
        let bin = dir.join("bin");
        let etc = dir.join("etc");
        for d in [dir, &bin, &etc] {
            fs::create_dir_all(d).map_err(io_err("create directory", d))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .map_err(io_err("chmod 0755", d))?;
        }

        let out = std::process::Command::new(busybox)
            .arg("--list")
            .output()
            .map_err(|e| SandboxError::ListApplets {
                busybox: busybox.to_path_buf(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(SandboxError::ListApplets {
                busybox: busybox.to_path_buf(),
                detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
            });
        }
        let applets: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
            .map(str::to_string)
            .collect();

        // A copy rather than a hard link: the base may live on another filesystem, and a copy
        // cannot be modified through the host's package manager while containers run it.
        // Copy-then-rename because overwriting a running executable fails with ETXTBSY.
        let target = bin.join("busybox");
        let tmp = bin.join(".busybox.tmp");
        fs::copy(busybox, &tmp).map_err(io_err("copy busybox to", &tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod 0755", &tmp))?;
        fs::rename(&tmp, &target).map_err(io_err("rename busybox to", &target))?;
        for applet in &applets {
            let link = bin.join(applet);
            match fs::symlink_metadata(&link) {
                Ok(m) if m.file_type().is_symlink() => continue,
                Ok(_) => fs::remove_file(&link).map_err(io_err("remove", &link))?,
                Err(_) => {}
            }
            // Relative, so it resolves to /bin/busybox inside the container.
            std::os::unix::fs::symlink("busybox", &link)
                .map_err(io_err("create applet symlink", &link))?;
        }
        for (name, contents) in [("passwd", passwd()), ("group", group())] {
            let p = etc.join(name);
            fs::write(&p, contents).map_err(io_err("write", &p))?;
        }
        Ok(BaseRootfs {
            dir: dir.to_path_buf(),
            applets,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    pub fn has_applet(&self, name: &str) -> bool {
        self.applets.contains(name)
    }
}

fn passwd() -> String {
    USERS
        .iter()
        .map(|(n, u, g, home, shell)| format!("{n}:x:{u}:{g}:{n}:{home}:{shell}\n"))
        .collect()
}

fn group() -> String {
    GROUPS
        .iter()
        .map(|(n, g)| format!("{n}:x:{g}:\n"))
        .collect()
}

/// A volume mount of a container (`volumeMounts[]` resolved to a host directory or file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Empty per-container directory the runtime owns; the container's root tmpfs is mounted on
    /// it inside the container's mount namespace (the host keeps seeing an empty directory).
    pub root_dir: PathBuf,
    pub hostname: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub read_only_root: bool,
    /// stdout and stderr of the main process are appended here, unframed.
    pub log_path: PathBuf,
}

/// How the main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ContainerExit {
    /// The exit code Kubernetes reports: the process's code, or 128 + signal for a signal death
    /// (SIGKILL → 137, SIGTERM → 143).
    pub fn exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// One async-signal-safe operation performed in the child between fork and exec. All buffers
/// are allocated in the parent.
#[derive(Debug)]
enum Step {
    /// `PR_SET_PDEATHSIG(SIGKILL)`, then check the parent did not already die before the prctl.
    DeathSig {
        parent: libc::pid_t,
    },
    Setsid,
    Unshare(libc::c_int),
    /// `setns` through a pidfd: enters all of that process's namespaces in `nstype` atomically
    /// and fails with `ESRCH` if it has exited, so a recycled PID can never be entered.
    SetNs {
        pidfd: RawFd,
        nstype: libc::c_int,
    },
    Umask(libc::mode_t),
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    CreateFile {
        path: CString,
        mode: libc::mode_t,
    },
    WriteFile {
        path: CString,
        mode: libc::mode_t,
        contents: Vec<u8>,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Chroot(CString),
    Chdir(CString),
    SetHostname(Vec<u8>),
    SetIds {
        uid: libc::uid_t,
        gid: libc::gid_t,
    },
}

fn lossy(c: &CString) -> std::borrow::Cow<'_, str> {
    c.to_string_lossy()
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::DeathSig { .. } => write!(f, "prctl(PR_SET_PDEATHSIG)"),
            Step::Setsid => write!(f, "setsid"),
            Step::Unshare(_) => write!(f, "unshare(CLONE_NEWNS|CLONE_NEWUTS)"),
            Step::SetNs { .. } => write!(f, "setns into the container's mount+uts namespaces"),
            Step::Umask(m) => write!(f, "umask {m:04o}"),
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                ..
            } => {
                let what = match (fstype, source) {
                    (Some(t), _) => lossy(t).into_owned(),
                    (None, Some(s)) => format!("bind {}", lossy(s)),
                    (None, None) => "remount".to_string(),
                };
                let ro = if flags & libc::MS_RDONLY != 0 {
                    " read-only"
                } else {
                    ""
                };
                write!(f, "mount {what} on {}{ro}", lossy(target))
            }
            Step::Mkdir { path, .. } => write!(f, "mkdir {}", lossy(path)),
            Step::CreateFile { path, .. } => write!(f, "create {}", lossy(path)),
            Step::WriteFile { path, .. } => write!(f, "write {}", lossy(path)),
            Step::Symlink { target, link } => {
                write!(f, "symlink {} -> {}", lossy(link), lossy(target))
            }
            Step::Chroot(p) => write!(f, "chroot {}", lossy(p)),
            Step::Chdir(p) => write!(f, "chdir {} (inside the container)", lossy(p)),
            Step::SetHostname(h) => write!(f, "sethostname {}", String::from_utf8_lossy(h)),
            Step::SetIds { uid, gid } => write!(f, "setgroups/setgid {gid}/setuid {uid}"),
        }
    }
}

fn opt_ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Step {
    /// Runs in the forked child: raw syscalls only, no allocation.
    fn run(&self) -> io::Result<()> {
        // SAFETY: every pointer comes from a CString/Vec that outlives the call.
        unsafe {
            match self {
                Step::DeathSig { parent } => {
                    check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
                    if libc::getppid() != *parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                }
                // Own session: the container must not get the terminal's SIGINT/SIGHUP.
                Step::Setsid => check(libc::setsid()),
                Step::Unshare(flags) => check(libc::unshare(*flags)),
                Step::SetNs { pidfd, nstype } => check(libc::setns(*pidfd, *nstype)),
                Step::Umask(m) => {
                    libc::umask(*m);
                    Ok(())
                }
                Step::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                } => check(libc::mount(
                    opt_ptr(source),
                    target.as_ptr(),
                    opt_ptr(fstype),
                    *flags,
                    opt_ptr(data) as *const libc::c_void,
                )),
                Step::Mkdir { path, mode } => {
                    if libc::mkdir(path.as_ptr(), *mode) < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(e);
                        }
                    }
                    Ok(())
                }
                Step::CreateFile { path, mode } => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        *mode as libc::c_uint,
                    );
                    check(fd)?;
                    libc::close(fd);
                    Ok(())
                }
                Step::WriteFile {
                    path,
                    mode,
                    contents,
                } => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                        *mode as libc::c_uint,
                    );
                    check(fd)?;
                    let mut off = 0;
                    while off < contents.len() {
                        let n = libc::write(
                            fd,
                            contents[off..].as_ptr() as *const libc::c_void,
                            contents.len() - off,
                        );
                        if n < 0 {
                            let e = io::Error::last_os_error();
                            if e.raw_os_error() == Some(libc::EINTR) {
                                continue;
                            }
                            libc::close(fd);
                            return Err(e);
                        }
                        off += n as usize;
                    }
                    libc::close(fd);
                    Ok(())
                }
                Step::Symlink { target, link } => {
                    check(libc::symlink(target.as_ptr(), link.as_ptr()))
                }
                Step::Chroot(p) => check(libc::chroot(p.as_ptr())),
                Step::Chdir(p) => check(libc::chdir(p.as_ptr())),
                Step::SetHostname(h) => check(libc::sethostname(
                    h.as_ptr() as *const libc::c_char,
                    h.len(),
                )),
                Step::SetIds { uid, gid } => {
                    // Supplementary groups = the primary gid only, like containerd: the host
                    // process's groups must not leak into the container.
                    check(libc::setgroups(1, gid))?;
                    check(libc::setgid(*gid))?;
                    check(libc::setuid(*uid))
                }
            }
        }
    }
}

/// Runs the steps in the child; on failure writes the failing step's index to `err_fd` so the
/// parent can say which step failed (std only forwards the errno).
fn run_steps(steps: &[Step], err_fd: RawFd) -> io::Result<()> {
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = step.run() {
            let idx = (i as u32).to_ne_bytes();
            // SAFETY: plain write of a stack buffer to a pipe we own.
            unsafe { libc::write(err_fd, idx.as_ptr() as *const libc::c_void, idx.len()) };
            return Err(e);
        }
    }
    Ok(())
}

/// A CLOEXEC|NONBLOCK pipe reporting which pre-exec step failed.
struct StepErrPipe {
    read: OwnedFd,
    write: Option<OwnedFd>,
}

impl StepErrPipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills both fds on success.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
        // SAFETY: freshly created, owned by nobody else.
        Ok(unsafe {
            StepErrPipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: Some(OwnedFd::from_raw_fd(fds[1])),
            }
        })
    }

    fn write_fd(&self) -> RawFd {
        self.write.as_ref().map_or(-1, |w| w.as_raw_fd())
    }

    /// Call after spawn returned an error: the child (if it reached a step) has written 4
    /// bytes before exiting.
    fn failed_step(&mut self) -> Option<usize> {
        self.write = None;
        let mut buf = [0u8; 4];
        // SAFETY: reading into a stack buffer from a nonblocking pipe we own.
        let n = unsafe {
            libc::read(
                self.read.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        (n == 4).then(|| u32::from_ne_bytes(buf) as usize)
    }
}

fn cstr(bytes: &[u8], root: &Path) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| SandboxError::InvalidConfig {
        root: root.to_path_buf(),
        reason: format!("{:?} contains a NUL byte", String::from_utf8_lossy(bytes)),
    })
}

fn path_c(p: &Path, root: &Path) -> Result<CString, SandboxError> {
    cstr(p.as_os_str().as_bytes(), root)
}

/// Normalizes an absolute container path to `/a/b`, rejecting relative paths and `..` (which
/// would be resolved on the host before the chroot).
fn clean_container_path(p: &str, root: &Path) -> Result<String, SandboxError> {
    let invalid = |reason: &str| SandboxError::InvalidConfig {
        root: root.to_path_buf(),
        reason: format!("container path {p:?} {reason}"),
    };
    if !p.starts_with('/') {
        return Err(invalid("is not absolute"));
    }
    let mut out = String::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("contains ..")),
            part => {
                out.push('/');
                out.push_str(part);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// `root` + container path, as the host (pre-chroot) sees it.
fn in_root(root: &Path, container_path: &str) -> PathBuf {
    root.join(container_path.trim_start_matches('/'))
}

/// What `PATH` resolution found at a host path.
fn is_executable(host: &Path) -> Option<bool> {
    let m = fs::metadata(host).ok()?;
    Some(m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Go's `exec.LookPath` as runc applies it inside the container, with `lookup` mapping a
/// container path to where the host can stat it. Returns the container path to exec.
fn resolve_executable(
    name: &str,
    path_var: &str,
    working_dir: &str,
    lookup: impl Fn(&str) -> Option<PathBuf>,
) -> Result<String, SandboxError> {
    let check_at = |cpath: &str| lookup(cpath).and_then(|h| is_executable(&h));
    if name.contains('/') {
        let cpath = if name.starts_with('/') {
            name.to_string()
        } else {
            format!("{}/{}", working_dir.trim_end_matches('/'), name)
        };
        return match check_at(&cpath) {
            Some(true) => Ok(cpath),
            Some(false) => Err(SandboxError::PermissionDenied(name.to_string())),
            None => Err(SandboxError::NoSuchExecutable(name.to_string())),
        };
    }
    if !name.is_empty() {
        for dir in path_var.split(':') {
            // An empty PATH entry means the working directory.
            let dir = if dir.is_empty() { working_dir } else { dir };
            let cpath = format!("{}/{}", dir.trim_end_matches('/'), name);
            if check_at(&cpath) == Some(true) {
                return Ok(cpath);
            }
        }
    }
    Err(SandboxError::ExecutableNotFound(name.to_string()))
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the kernel returns a new CLOEXEC fd we now own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with a valid fd and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A pidfd polls readable once its process has terminated (zombie or reaped).
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// The container's mount namespace, held open so its inode number cannot be reused by a new
/// namespace while we still use it to recognize the container's processes.
struct MntNs {
    _fd: OwnedFd,
    dev: u64,
    ino: u64,
}

impl MntNs {
    fn of(pid: u32) -> io::Result<Self> {
        let f = fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
        let m = f.metadata()?;
        Ok(MntNs {
            dev: m.dev(),
            ino: m.ino(),
            _fd: f.into(),
        })
    }

    /// SIGSTOPs every process whose mount namespace is this one and waits until each is
    /// stopped; repeats until a pass finds no member that is not yet stopped (a process may
    /// fork while we look). This is what a cgroup freezer or `fsfreeze` gives a CSI driver:
    /// no process of the container runs, so none of its writes is half done in a copy taken
    /// now. A `write(2)` in progress completes before the stop is delivered (signals are taken
    /// on the way back to user space), so single writes are never torn.
    fn stop_members(&self) -> Vec<OwnedFd> {
        let me = std::process::id();
        let mut stopped: Vec<(u32, OwnedFd)> = Vec::new();
        for _round in 0..200 {
            let mut pending = 0;
            let Ok(entries) = fs::read_dir("/proc") else {
                break;
            };
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/mnt")) else {
                    continue;
                };
                if (m.dev(), m.ino()) != (self.dev, self.ino) {
                    continue;
                }
                if !stopped.iter().any(|(p, _)| *p == pid) {
                    let Ok(pidfd) = pidfd_open(pid) else { continue };
                    if pidfd_exited(&pidfd) {
                        continue;
                    }
                    let _ = pidfd_send_signal(&pidfd, libc::SIGSTOP);
                    stopped.push((pid, pidfd));
                }
                // /proc/<pid>/stat field 3 is the state; `T` once the stop took effect.
                let state = fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()))
                    .flatten();
                if !matches!(state, Some('T') | Some('t') | Some('Z') | Some('X') | None) {
                    pending += 1;
                }
            }
            if pending == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stopped.into_iter().map(|(_, fd)| fd).collect()
    }

    /// The processes whose mount namespace is this one (main, exec'd, orphans), at this moment.
    fn members(&self) -> Vec<u32> {
        let me = std::process::id();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .filter(|&pid| pid != me)
            .filter(|pid| {
                fs::metadata(format!("/proc/{pid}/ns/mnt"))
                    .is_ok_and(|m| (m.dev(), m.ino()) == (self.dev, self.ino))
            })
            .collect()
    }

    /// SIGKILLs every process whose mount namespace is this one, until none is left. This is
    /// kubesim's stand-in for tearing down the container's cgroup/PID namespace: it catches
    /// exec'd processes and the orphans the main process left behind.
    fn kill_members(&self) {
        let me = std::process::id();
        for _round in 0..50 {
            let mut found = 0;
            let Ok(entries) = fs::read_dir("/proc") else {
                return;
            };
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                // Pin the process first, then check its namespace, then check it is still the
                // same process: if it was alive after the stat, the stat was about it and not
                // about a recycled PID.
                let Ok(pidfd) = pidfd_open(pid) else { continue };
                let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/mnt")) else {
                    continue;
                };
                if (m.dev(), m.ino()) != (self.dev, self.ino) || pidfd_exited(&pidfd) {
                    continue;
                }
                found += 1;
                let _ = pidfd_send_signal(&pidfd, libc::SIGKILL);
            }
            if found == 0 {
                return;
            }
            // Killed processes keep their namespace until they finish exiting.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Processes stopped by [`Container::freeze`]; dropping this continues them (SIGCONT).
pub struct Frozen {
    members: Vec<OwnedFd>,
}

impl Frozen {
    pub fn processes(&self) -> usize {
        self.members.len()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for fd in &self.members {
            let _ = pidfd_send_signal(fd, libc::SIGCONT);
        }
    }
}

/// Everything `exec` needs to reproduce the main process's context.
struct ExecContext {
    root: PathBuf,
    root_c: CString,
    workdir: String,
    workdir_c: CString,
    uid: u32,
    gid: u32,
    env: Vec<(String, String)>,
}

/// A running (or exited, not yet dropped) container.
///
/// Deviations from a real container that callers should know about:
/// * no PID namespace: the main process is not PID 1, so it does not get init's signal
///   semantics — a shell with no SIGTERM handler dies on SIGTERM immediately, where in a real
///   pod it ignores SIGTERM and is SIGKILLed after the grace period; `/proc` shows the host's
///   processes and `ps` inside the container lists them all;
/// * when the main process exits, [`Container::wait`] SIGKILLs every remaining process in the
///   container's mount namespace, which is what the kernel does for a real PID namespace;
/// * no network namespace, no cgroup limits, no capability/seccomp restrictions; chroot is not
///   a security boundary;
/// * `PR_SET_PDEATHSIG` fires when the *thread* that spawned the process exits: start and exec
///   containers from runtime worker threads (not `spawn_blocking` threads, which exit when
///   idle), or the container is SIGKILLed early.
pub struct Container {
    /// Locked by whichever `wait` call is currently reaping; the others queue behind it.
    child: tokio::sync::Mutex<tokio::process::Child>,
    pid: u32,
    pidfd: OwnedFd,
    mnt_ns: Option<MntNs>,
    ctx: ExecContext,
    /// pidfds of exec'd processes, for `kill_all` (complements the namespace scan for execs
    /// caught between fork and setns).
    execs: Mutex<Vec<OwnedFd>>,
    exit: std::sync::OnceLock<ContainerExit>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("pid", &self.pid)
            .field("root", &self.ctx.root)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

fn merge_env(base: &[(String, String)], over: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::with_capacity(base.len() + over.len());
    for (k, v) in base.iter().chain(over) {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

fn env_get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Steps that drop into the container's root as its user; shared by start and exec.
fn enter_steps(ctx: &ExecContext, steps: &mut Vec<Step>) {
    steps.push(Step::Chroot(ctx.root_c.clone()));
    steps.push(Step::Chdir(ctx.workdir_c.clone()));
    steps.push(Step::SetIds {
        uid: ctx.uid,
        gid: ctx.gid,
    });
    // containerd's default umask for container processes.
    steps.push(Step::Umask(0o022));
}

impl Container {
    /// Starts the main process. Must be called inside a tokio runtime.
    pub fn start(base: &BaseRootfs, cfg: &ContainerConfig) -> Result<Container, SandboxError> {
        let root = fs::canonicalize(&cfg.root_dir).map_err(io_err("resolve", &cfg.root_dir))?;
        let invalid = |reason: String| SandboxError::InvalidConfig {
            root: root.clone(),
            reason,
        };
        if cfg.argv.is_empty() {
            return Err(invalid("argv is empty".into()));
        }
        if cfg.hostname.is_empty() || cfg.hostname.len() > 64 {
            return Err(invalid(format!(
                "hostname {:?} must be 1-64 bytes",
                cfg.hostname
            )));
        }
        let workdir = match &cfg.working_dir {
            Some(w) if !w.is_empty() => clean_container_path(w, &root)?,
            _ => "/".to_string(),
        };
        let mut mounts = Vec::with_capacity(cfg.mounts.len());
        for m in &cfg.mounts {
            let cpath = clean_container_path(&m.container_path, &root)?;
            if cpath == "/" {
                return Err(invalid("a volume cannot be mounted on /".into()));
            }
            let meta = fs::metadata(&m.host_path).map_err(io_err("stat volume", &m.host_path))?;
            mounts.push((cpath, m, meta.is_dir()));
        }
        // Parents before children, so /data/sub lands inside the volume mounted at /data
        // (containerd sorts mounts the same way).
        mounts.sort_by_key(|(c, _, _)| c.matches('/').count());

        let uid = cfg.run_as_user.unwrap_or(0);
        let user = USERS.iter().find(|u| u.1 == uid);
        // runAsUser without runAsGroup: the primary group from the image's /etc/passwd, or 0.
        let gid = cfg.run_as_group.or(user.map(|u| u.2)).unwrap_or(0);

        let mut env = vec![
            ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ("HOSTNAME".to_string(), cfg.hostname.clone()),
        ];
        env = merge_env(&env, &cfg.env);
        if env_get(&env, "HOME").is_none() {
            // runc sets HOME from the user's passwd entry, "/" for unknown uids.
            let home = user.map_or("/", |u| u.3);
            env.push(("HOME".to_string(), home.to_string()));
        }
        let path_var = env_get(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string();

        let program = resolve_executable(&cfg.argv[0], &path_var, &workdir, |cpath| {
            let p = Path::new(cpath);
            let best = mounts
                .iter()
                .filter(|(c, _, _)| p.starts_with(c))
                .max_by_key(|(c, _, _)| c.len());
            if let Some((c, m, _)) = best {
                let rest = p.strip_prefix(c).ok()?;
                return Some(if rest.as_os_str().is_empty() {
                    m.host_path.clone()
                } else {
                    m.host_path.join(rest)
                });
            }
            ["/bin", "/sbin", "/usr/bin", "/usr/sbin"]
                .iter()
                .find_map(|d| p.strip_prefix(d).ok())
                .filter(|rest| rest.components().count() <= 1)
                .map(|rest| base.bin_dir().join(rest))
        })?;

        let ctx = ExecContext {
            root_c: path_c(&root, &root)?,
            workdir_c: cstr(workdir.as_bytes(), &root)?,
            workdir,
            root: root.clone(),
            uid,
            gid,
            env,
        };

        let steps = Self::setup_steps(base, cfg, &ctx, &mounts)?;

        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.log_path)
            .map_err(io_err("open log", &cfg.log_path))?;
        let log2 = log.try_clone().map_err(io_err("dup log", &cfg.log_path))?;

        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg0(&cfg.argv[0])
            .args(&cfg.argv[1..])
            .env_clear()
            .envs(ctx.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = spawn_with_steps(cmd, steps, &root, &program)?;
        let pid = child.id().ok_or(SandboxError::NotRunning)?;
        // The child is not reaped until someone polls `child`, so the PID still names it.
        let pidfd = pidfd_open(pid).map_err(|source| SandboxError::Spawn {
            root: root.clone(),
            program: program.clone(),
            source,
        })?;
        // Fails only if the process already exited (a zombie has no namespaces); then there is
        // nothing left in the namespace to kill either.
        let mnt_ns = MntNs::of(pid).ok();
        tracing::debug!(pid, root = %root.display(), argv = ?cfg.argv, "container started");
        Ok(Container {
            child: tokio::sync::Mutex::new(child),
            pid,
            pidfd,
            mnt_ns,
            ctx,
            execs: Mutex::new(Vec::new()),
            exit: std::sync::OnceLock::new(),
        })
    }

    fn setup_steps(
        base: &BaseRootfs,
        cfg: &ContainerConfig,
        ctx: &ExecContext,
        mounts: &[(String, &Mount, bool)],
    ) -> Result<Vec<Step>, SandboxError> {
        let root = &ctx.root;
        let p = |cpath: &str| path_c(&in_root(root, cpath), root);
        let mut steps = vec![
            Step::DeathSig {
                parent: std::process::id() as libc::pid_t,
            },
            Step::Setsid,
            Step::Unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS),
            // Without this, mounts below would propagate back into the host's namespace when
            // the host's / is a shared mount (systemd's default).
            Step::Mount {
                source: None,
                target: cstr(b"/", root)?,
                fstype: None,
                flags: libc::MS_REC | libc::MS_PRIVATE,
                data: None,
            },
            // Explicit modes below; the container's own umask is set at the end.
            Step::Umask(0),
            Step::Mount {
                source: Some(cstr(b"kubesim-root", root)?),
                target: ctx.root_c.clone(),
                fstype: Some(cstr(b"tmpfs", root)?),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(cstr(b"mode=0755", root)?),
            },
        ];
        for (dir, mode) in [
            ("/bin", 0o755),
            ("/etc", 0o755),
            ("/tmp", 0o1777),
            ("/dev", 0o755),
            ("/proc", 0o555),
            ("/usr", 0o755),
            ("/var", 0o755),
            ("/var/tmp", 0o1777),
            ("/root", 0o700),
            ("/home", 0o755),
        ] {
            steps.push(Step::Mkdir {
                path: p(dir)?,
                mode,
            });
        }
        // Relative links: they must resolve inside the root both before and after the chroot.
        for (link, target) in [
            ("/sbin", "bin"),
            ("/usr/bin", "../bin"),
            ("/usr/sbin", "../bin"),
        ] {
            steps.push(Step::Symlink {
                target: cstr(target.as_bytes(), root)?,
                link: p(link)?,
            });
        }
        steps.push(bind(&base.bin_dir(), p("/bin")?, root)?);
        steps.push(remount_ro(p("/bin")?));

        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            cfg.hostname
        );
        for (file, contents) in [
            ("/etc/passwd", passwd()),
            ("/etc/group", group()),
            ("/etc/hostname", format!("{}\n", cfg.hostname)),
            ("/etc/hosts", hosts),
        ] {
            steps.push(Step::WriteFile {
                path: p(file)?,
                mode: 0o644,
                contents: contents.into_bytes(),
            });
        }

        // /dev is its own small tmpfs, as in runc: it stays writable under a read-only root.
        steps.push(Step::Mount {
            source: Some(cstr(b"tmpfs", root)?),
            target: p("/dev")?,
            fstype: Some(cstr(b"tmpfs", root)?),
            flags: libc::MS_NOSUID | libc::MS_STRICTATIME,
            data: Some(cstr(b"mode=0755,size=65536k", root)?),
        });
        for dev in DEVICES {
            let target = p(&format!("/dev/{dev}"))?;
            steps.push(Step::CreateFile {
                path: target.clone(),
                mode: 0o666,
            });
            steps.push(bind(Path::new(&format!("/dev/{dev}")), target, root)?);
        }
        for (link, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            steps.push(Step::Symlink {
                target: cstr(target.as_bytes(), root)?,
                link: p(link)?,
            });
        }
        steps.push(Step::Mkdir {
            path: p("/dev/shm")?,
            mode: 0o1777,
        });
        // A proc of the host's PID namespace (there is no container PID namespace).
        steps.push(Step::Mount {
            source: Some(cstr(b"proc", root)?),
            target: p("/proc")?,
            fstype: Some(cstr(b"proc", root)?),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: None,
        });

        for (cpath, m, is_dir) in mounts {
            mkdir_parents(cpath, root, &mut steps)?;
            let target = p(cpath)?;
            steps.push(if *is_dir {
                Step::Mkdir {
                    path: target.clone(),
                    mode: 0o755,
                }
            } else {
                Step::CreateFile {
                    path: target.clone(),
                    mode: 0o644,
                }
            });
            steps.push(bind(&m.host_path, target.clone(), root)?);
            if m.read_only {
                // A bind mount ignores MS_RDONLY on creation; only the remount makes the
                // kernel reject writes with EROFS.
                steps.push(remount_ro(target));
            }
        }

        if ctx.workdir != "/" {
            mkdir_parents(&ctx.workdir, root, &mut steps)?;
            steps.push(Step::Mkdir {
                path: p(&ctx.workdir)?,
                mode: 0o755,
            });
        }
        if cfg.read_only_root {
            // Per-mount flag on the root tmpfs only: /dev, /proc and volumes are separate mounts
            // and keep their own flags, as under readOnlyRootFilesystem.
            steps.push(remount_ro(ctx.root_c.clone()));
        }
        steps.push(Step::SetHostname(cfg.hostname.as_bytes().to_vec()));
        enter_steps(ctx, &mut steps);
        Ok(steps)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn root_dir(&self) -> &Path {
        &self.ctx.root
    }

    /// True until the main process has terminated (even if not yet reaped by `wait`).
    pub fn is_running(&self) -> bool {
        self.exit.get().is_none() && !pidfd_exited(&self.pidfd)
    }

    /// Waits for the main process to exit, then kills everything still running in the
    /// container (exec'd processes, orphaned children), as the kernel does when the init of a
    /// real container's PID namespace exits. Any number of tasks may wait concurrently; all
    /// get the same result. Cancel-safe.
    pub async fn wait(&self) -> ContainerExit {
        if let Some(exit) = self.exit.get() {
            return *exit;
        }
        let mut child = self.child.lock().await;
        if let Some(exit) = self.exit.get() {
            return *exit;
        }
        let exit = match child.wait().await {
            Ok(status) => ContainerExit {
                code: status.code(),
                signal: status.signal(),
            },
            Err(e) => {
                tracing::error!(pid = self.pid, error = %e, "waiting for container process failed");
                ContainerExit {
                    code: None,
                    signal: None,
                }
            }
        };
        let _ = self.exit.set(exit);
        drop(child);
        self.kill_all();
        tracing::debug!(pid = self.pid, ?exit, "container exited");
        exit
    }

    /// Sends `sig` to the main process (SIGTERM for graceful deletion, SIGKILL).
    pub fn signal(&self, sig: Signal) -> Result<(), SandboxError> {
        pidfd_send_signal(&self.pidfd, sig as libc::c_int).map_err(|source| {
            if source.raw_os_error() == Some(libc::ESRCH) {
                SandboxError::NotRunning
            } else {
                SandboxError::Signal {
                    pid: self.pid,
                    signal: sig.as_str(),
                    source,
                }
            }
        })
    }

    /// SIGKILLs the main process, every exec'd process, and anything else still running in the
    /// container's mount namespace. Does not reap the main process; `wait` does.
    pub fn kill_all(&self) {
        let _ = pidfd_send_signal(&self.pidfd, libc::SIGKILL);
        {
            let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
            for fd in execs.iter() {
                let _ = pidfd_send_signal(fd, libc::SIGKILL);
            }
            execs.retain(|fd| !pidfd_exited(fd));
        }
        if let Some(ns) = &self.mnt_ns {
            ns.kill_members();
        }
    }

    /// The PIDs of every process of the container (main, exec'd, orphans) right now; what a
    /// real container's cgroup `cgroup.procs` lists.
    pub fn process_ids(&self) -> Vec<u32> {
        match &self.mnt_ns {
            Some(ns) => ns.members(),
            None => vec![self.pid],
        }
    }

    /// Pauses every process of the container (main, exec'd, orphans) until the returned guard
    /// is dropped; see `MntNs::stop_members`.
    pub fn freeze(&self) -> Frozen {
        Frozen {
            members: self
                .mnt_ns
                .as_ref()
                .map(MntNs::stop_members)
                .unwrap_or_default(),
        }
    }

    /// Runs `argv` inside the running container (its namespaces, root, working directory,
    /// user and env, with `env` added on top), with stdin/stdout/stderr piped. The child is
    /// killed if dropped. Must be called inside a tokio runtime.
    pub fn exec(
        &self,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<tokio::process::Child, SandboxError> {
        if !self.is_running() {
            return Err(SandboxError::NotRunning);
        }
        let ctx = &self.ctx;
        let Some(name) = argv.first() else {
            return Err(SandboxError::InvalidConfig {
                root: ctx.root.clone(),
                reason: "exec argv is empty".into(),
            });
        };
        let env = merge_env(&ctx.env, env);
        let path_var = env_get(&env, "PATH").unwrap_or(DEFAULT_PATH);
        // The container's own view of its files, including what it wrote to its root tmpfs.
        let proc_root = PathBuf::from(format!("/proc/{}/root", self.pid));
        let program = resolve_executable(name, path_var, &ctx.workdir, |cpath| {
            Some(in_root(&proc_root, cpath))
        })
        .map_err(|e| {
            if self.is_running() {
                e
            } else {
                SandboxError::NotRunning
            }
        })?;

        let mut steps = vec![
            Step::DeathSig {
                parent: std::process::id() as libc::pid_t,
            },
            Step::Setsid,
            Step::SetNs {
                pidfd: self.pidfd.as_raw_fd(),
                nstype: libc::CLONE_NEWNS | libc::CLONE_NEWUTS,
            },
        ];
        // After setns the root is the namespace's "/", i.e. the host's tree as copied at
        // unshare time, in which root_dir is the container's tmpfs.
        enter_steps(ctx, &mut steps);

        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg0(name)
            .args(&argv[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // `self` (and so the pidfd SetNs uses) outlives the fork.
        let child = match spawn_with_steps(cmd, steps, &ctx.root, &program) {
            Err(SandboxError::Setup { source, step, .. })
                if source.raw_os_error() == Some(libc::ESRCH) && step.starts_with("setns") =>
            {
                return Err(SandboxError::NotRunning)
            }
            other => other?,
        };
        if let Some(pid) = child.id() {
            if let Ok(fd) = pidfd_open(pid) {
                let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
                execs.retain(|fd| !pidfd_exited(fd));
                execs.push(fd);
            }
        }
        Ok(child)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn bind(source: &Path, target: CString, root: &Path) -> Result<Step, SandboxError> {
    Ok(Step::Mount {
        source: Some(path_c(source, root)?),
        target,
        fstype: None,
        // Recursive, like containerd's "rbind" volume mounts.
        flags: libc::MS_BIND | libc::MS_REC,
        data: None,
    })
}

fn remount_ro(target: CString) -> Step {
    Step::Mount {
        source: None,
        target,
        fstype: None,
        flags: libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV,
        data: None,
    }
}

/// `mkdir -p` of the parents of `cpath` inside the root. Existing entries are fine; a parent
/// inside a read-only mount fails with EROFS, as it would under runc.
fn mkdir_parents(cpath: &str, root: &Path, steps: &mut Vec<Step>) -> Result<(), SandboxError> {
    let parts: Vec<&str> = cpath.split('/').filter(|s| !s.is_empty()).collect();
    let mut acc = String::new();
    for part in &parts[..parts.len().saturating_sub(1)] {
        acc.push('/');
        acc.push_str(part);
        steps.push(Step::Mkdir {
            path: path_c(&in_root(root, &acc), root)?,
            mode: 0o755,
        });
    }
    Ok(())
}

/// Spawns `cmd` running `steps` between fork and exec; a failing step is reported by name.
fn spawn_with_steps(
    mut cmd: tokio::process::Command,
    steps: Vec<Step>,
    root: &Path,
    program: &str,
) -> Result<tokio::process::Child, SandboxError> {
    let spawn_err = |source| SandboxError::Spawn {
        root: root.to_path_buf(),
        program: program.to_string(),
        source,
    };
    let mut pipe = StepErrPipe::new().map_err(spawn_err)?;
    let err_fd = pipe.write_fd();
    let steps = Arc::new(steps);
    let in_child = Arc::clone(&steps);
    // SAFETY: the closure only runs raw syscalls on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || run_steps(&in_child, err_fd));
    }
    let result = cmd.spawn();
    match result {
        Ok(child) => Ok(child),
        Err(source) => Err(match pipe.failed_step() {
            Some(i) if i < steps.len() => SandboxError::Setup {
                root: root.to_path_buf(),
                step: steps[i].to_string(),
                source,
            },
            _ => spawn_err(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tempfile::TempDir;

    struct Fx {
        tmp: TempDir,
        base: BaseRootfs,
    }

    fn fixture() -> Option<Fx> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: containers need root (mount namespaces, chroot)");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = BaseRootfs::prepare(&tmp.path().join("base")).unwrap();
        Some(Fx { tmp, base })
    }

    impl Fx {
        fn config(&self, name: &str, argv: &[&str]) -> ContainerConfig {
            let root = self.tmp.path().join(name).join("root");
            fs::create_dir_all(&root).unwrap();
            ContainerConfig {
                root_dir: root,
                hostname: name.to_string(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: vec![],
                working_dir: None,
                mounts: vec![],
                run_as_user: None,
                run_as_group: None,
                read_only_root: false,
                log_path: self.tmp.path().join(format!("{name}.log")),
            }
        }

        fn dir(&self, name: &str) -> PathBuf {
            let d = self.tmp.path().join(name);
            fs::create_dir_all(&d).unwrap();
            d
        }
    }

    impl Drop for Fx {
        fn drop(&mut self) {
            let dir = fs::canonicalize(self.tmp.path()).unwrap();
            let leaked: Vec<_> = crate::volumes::mount_points()
                .unwrap()
                .into_iter()
                .filter(|m| m.starts_with(&dir))
                .collect();
            if !std::thread::panicking() {
                assert!(leaked.is_empty(), "leaked host mounts: {leaked:?}");
            }
        }
    }

    const SLEEPER: &[&str] = &["sh", "-c", "echo hi; sleep 30"];

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    struct Out {
        code: Option<i32>,
        stdout: Vec<u8>,
        stderr: String,
    }

    async fn run(c: &Container, argv: &[&str]) -> Out {
        let child = c.exec(&args(argv), &[]).unwrap();
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("exec timed out")
            .unwrap();
        Out {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn stdout_of(c: &Container, argv: &[&str]) -> String {
        let out = run(c, argv).await;
        assert_eq!(out.code, Some(0), "{argv:?} failed: {}", out.stderr);
        String::from_utf8(out.stdout).unwrap()
    }

    async fn wait_for_log(path: &Path, needle: &str) -> String {
        for _ in 0..200 {
            let log = fs::read_to_string(path).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{needle:?} never appeared in {}", path.display());
    }

    #[tokio::test]
    async fn main_process_logs_and_exec_sees_volume_and_hostname() {
        let Some(fx) = fixture() else { return };
        let data = fx.dir("vol-data");
        fs::write(data.join("f"), "file contents\n").unwrap();
        let mut cfg = fx.config("pod-a", SLEEPER);
        cfg.env = vec![("GREETING".into(), "hello".into())];
        cfg.mounts = vec![Mount {
            host_path: data.clone(),
            container_path: "/data".into(),
            read_only: false,
        }];
        let c = Container::start(&fx.base, &cfg).unwrap();
        assert!(c.is_running());
        assert_eq!(wait_for_log(&cfg.log_path, "hi").await, "hi\n");

        assert_eq!(stdout_of(&c, &["cat", "/data/f"]).await, "file contents\n");
        assert_eq!(stdout_of(&c, &["hostname"]).await, "pod-a\n");
        assert_eq!(stdout_of(&c, &["cat", "/etc/hostname"]).await, "pod-a\n");
        assert_eq!(
            stdout_of(&c, &["sh", "-c", "echo $GREETING $HOSTNAME $HOME"]).await,
            "hello pod-a /root\n"
        );
        assert_eq!(stdout_of(&c, &["id", "-u"]).await, "0\n");
        stdout_of(&c, &["sh", "-c", "echo written > /data/g && touch /tmp/t"]).await;
        assert_eq!(fs::read_to_string(data.join("g")).unwrap(), "written\n");
        // The root tmpfs lives only in the container's namespace.
        assert_eq!(fs::read_dir(&cfg.root_dir).unwrap().count(), 0);
        // The host's hostname is untouched.
        assert_ne!(nix::unistd::gethostname().unwrap(), "pod-a");

        c.signal(Signal::SIGTERM).unwrap();
        let exit = c.wait().await;
        assert_eq!(exit.signal, Some(libc::SIGTERM));
        assert_eq!(exit.exit_code(), 143);
        assert!(!c.is_running());
        assert!(matches!(
            c.exec(&args(&["true"]), &[]),
            Err(SandboxError::NotRunning)
        ));
        assert!(matches!(
            c.signal(Signal::SIGKILL),
            Err(SandboxError::NotRunning)
        ));
    }

    #[tokio::test]
    async fn read_only_mount_is_enforced_by_the_kernel() {
        let Some(fx) = fixture() else { return };
        let data = fx.dir("ro-data");
        fs::write(data.join("f"), "keep").unwrap();
        let mut cfg = fx.config("ro", SLEEPER);
        cfg.mounts = vec![Mount {
            host_path: data.clone(),
            container_path: "/ro/nested".into(),
            read_only: true,
        }];
        let c = Container::start(&fx.base, &cfg).unwrap();
        assert_eq!(stdout_of(&c, &["cat", "/ro/nested/f"]).await, "keep");
        let out = run(&c, &["sh", "-c", "echo x > /ro/nested/f"]).await;
        assert_ne!(out.code, Some(0));
        assert!(
            out.stderr.contains("Read-only file system"),
            "{}",
            out.stderr
        );
        let out = run(&c, &["rm", "/ro/nested/f"]).await;
        assert!(
            out.stderr.contains("Read-only file system"),
            "{}",
            out.stderr
        );
        assert_eq!(fs::read_to_string(data.join("f")).unwrap(), "keep");
        // The root outside the mount stays writable.
        stdout_of(&c, &["touch", "/ro/other"]).await;
    }

    #[tokio::test]
    async fn read_only_root_filesystem() {
        let Some(fx) = fixture() else { return };
        let scratch = fx.dir("scratch");
        let mut cfg = fx.config("rootro", SLEEPER);
        cfg.read_only_root = true;
        cfg.working_dir = Some("/app/work".into());
        cfg.mounts = vec![Mount {
            host_path: scratch.clone(),
            container_path: "/scratch".into(),
            read_only: false,
        }];
        let c = Container::start(&fx.base, &cfg).unwrap();
        for path in ["/x", "/tmp/x", "/etc/x"] {
            let out = run(&c, &["touch", path]).await;
            assert!(
                out.stderr.contains("Read-only file system"),
                "{path}: {}",
                out.stderr
            );
        }
        assert_eq!(stdout_of(&c, &["pwd"]).await, "/app/work\n");
        stdout_of(
            &c,
            &[
                "sh",
                "-c",
                "echo ok > /dev/null && touch /scratch/y /dev/shm/z",
            ],
        )
        .await;
        assert!(scratch.join("y").exists());
    }

    #[tokio::test]
    async fn tar_stream_from_exec_untars_on_the_host() {
        let Some(fx) = fixture() else { return };
        let data = fx.dir("tar-data");
        fs::create_dir_all(data.join("sub/deeper")).unwrap();
        fs::write(data.join("a.txt"), "alpha\n").unwrap();
        let binary: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        fs::write(data.join("sub/deeper/blob.bin"), &binary).unwrap();
        let mut cfg = fx.config("tar", SLEEPER);
        cfg.mounts = vec![Mount {
            host_path: data.clone(),
            container_path: "/data".into(),
            read_only: true,
        }];
        let c = Container::start(&fx.base, &cfg).unwrap();
        let out = run(&c, &["tar", "-cf", "-", "-C", "/data", "."]).await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.stdout.len() > binary.len());
        let archive = fx.tmp.path().join("out.tar");
        fs::write(&archive, &out.stdout).unwrap();
        let dest = fx.dir("untarred");
        let status = std::process::Command::new("busybox")
            .args(["tar", "-xf"])
            .arg(&archive)
            .arg("-C")
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(fs::read_to_string(dest.join("a.txt")).unwrap(), "alpha\n");
        assert_eq!(fs::read(dest.join("sub/deeper/blob.bin")).unwrap(), binary);
    }

    #[tokio::test]
    async fn provisioned_volume_fills_up_with_enospc() {
        let Some(fx) = fixture() else { return };
        let vol = fx.tmp.path().join("pv");
        let backing = crate::volumes::provision(&vol, 1 << 20).unwrap();
        let mut cfg = fx.config("filler", SLEEPER);
        cfg.mounts = vec![Mount {
            host_path: vol.clone(),
            container_path: "/data".into(),
            read_only: false,
        }];
        let c = Container::start(&fx.base, &cfg).unwrap();
        let out = run(
            &c,
            &[
                "dd",
                "if=/dev/zero",
                "of=/data/big",
                "bs=1024",
                "count=2048",
            ],
        )
        .await;
        if backing.enforces_capacity() {
            assert_ne!(out.code, Some(0));
            assert!(
                out.stderr.contains("No space left on device"),
                "{}",
                out.stderr
            );
        }
        c.kill_all();
        c.wait().await;
        crate::volumes::release(&vol).unwrap();
        assert!(!vol.exists());
    }

    #[tokio::test]
    async fn kill_all_ends_execs_and_orphans() {
        let Some(fx) = fixture() else { return };
        let c = Container::start(&fx.base, &fx.config("killer", SLEEPER)).unwrap();
        let sleeper = c.exec(&args(&["sleep", "30"]), &[]).unwrap();
        // An orphan: its parent shell exits right away.
        let orphan: u32 = stdout_of(&c, &["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
            .await
            .trim()
            .parse()
            .unwrap();
        assert!(Path::new(&format!("/proc/{orphan}")).exists());
        c.kill_all();
        let out = tokio::time::timeout(Duration::from_secs(5), sleeper.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status.signal(), Some(libc::SIGKILL));
        let exit = c.wait().await;
        assert_eq!(exit.exit_code(), 137);
        // Dead (possibly a zombie until init reaps it).
        let stat = fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .chars()
            .next();
        assert!(
            matches!(state, None | Some('Z') | Some('X')),
            "orphan still alive: {stat}"
        );
    }

    #[tokio::test]
    async fn main_exit_kills_in_flight_exec() {
        let Some(fx) = fixture() else { return };
        let c = Container::start(
            &fx.base,
            &fx.config("crash", &["sh", "-c", "sleep 0.5; exit 3"]),
        )
        .unwrap();
        let exec = c.exec(&args(&["sleep", "30"]), &[]).unwrap();
        let exit = c.wait().await;
        assert_eq!(
            exit,
            ContainerExit {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(exit.exit_code(), 3);
        let out = tokio::time::timeout(Duration::from_secs(5), exec.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status.signal(), Some(libc::SIGKILL));
        assert!(matches!(
            c.exec(&args(&["true"]), &[]),
            Err(SandboxError::NotRunning)
        ));
    }

    #[tokio::test]
    async fn missing_executables_use_containerd_messages() {
        let Some(fx) = fixture() else { return };
        let err = Container::start(&fx.base, &fx.config("nocmd", &["nosuchcmd", "x"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"exec: "nosuchcmd": executable file not found in $PATH"#
        );
        let c = Container::start(&fx.base, &fx.config("hascmd", SLEEPER)).unwrap();
        let err = c.exec(&args(&["nosuchcmd"]), &[]).unwrap_err();
        assert!(matches!(err, SandboxError::ExecutableNotFound(ref n) if n == "nosuchcmd"));
        let err = c.exec(&args(&["/nope/x"]), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"exec: "/nope/x": stat /nope/x: no such file or directory"#
        );
        let err = c.exec(&args(&["/etc/passwd"]), &[]).unwrap_err();
        assert_eq!(err.to_string(), r#"exec: "/etc/passwd": permission denied"#);
        // Something the container created in its own root is found by exec.
        stdout_of(
            &c,
            &[
                "sh",
                "-c",
                "printf '#!/bin/sh\\necho made\\n' > /tmp/s && chmod +x /tmp/s",
            ],
        )
        .await;
        assert_eq!(stdout_of(&c, &["/tmp/s"]).await, "made\n");
        let mut env_path = vec![("PATH".to_string(), "/tmp".to_string())];
        let child = c.exec(&args(&["s"]), &env_path).unwrap();
        assert_eq!(child.wait_with_output().await.unwrap().stdout, b"made\n");
        env_path[0].1 = "/nowhere".into();
        assert!(matches!(
            c.exec(&args(&["sh"]), &env_path),
            Err(SandboxError::ExecutableNotFound(_))
        ));
    }

    #[tokio::test]
    async fn run_as_user_applies_to_main_and_exec() {
        let Some(fx) = fixture() else { return };
        let mut cfg = fx.config("nonroot", &["sh", "-c", "id; sleep 30"]);
        cfg.run_as_user = Some(1000);
        let c = Container::start(&fx.base, &cfg).unwrap();
        let log = wait_for_log(&cfg.log_path, "uid=").await;
        assert!(log.starts_with("uid=1000(user) gid=1000(user)"), "{log}");
        assert_eq!(stdout_of(&c, &["id", "-u"]).await, "1000\n");
        assert_eq!(stdout_of(&c, &["id", "-G"]).await, "1000\n");
        let out = run(&c, &["touch", "/root/x"]).await;
        assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);

        let mut cfg = fx.config("grouped", SLEEPER);
        cfg.run_as_user = Some(4242);
        cfg.run_as_group = Some(3000);
        let c = Container::start(&fx.base, &cfg).unwrap();
        assert_eq!(
            stdout_of(&c, &["sh", "-c", "id -u; id -g; echo $HOME"]).await,
            "4242\n3000\n/\n"
        );
    }

    #[tokio::test]
    async fn file_mount_and_nested_mounts() {
        let Some(fx) = fixture() else { return };
        let outer = fx.dir("outer");
        let inner = fx.dir("inner");
        fs::write(inner.join("i"), "inner").unwrap();
        let cfgfile = fx.tmp.path().join("app.conf");
        fs::write(&cfgfile, "k=v\n").unwrap();
        let mut cfg = fx.config("nested", SLEEPER);
        cfg.mounts = vec![
            Mount {
                host_path: inner.clone(),
                container_path: "/data/sub".into(),
                read_only: true,
            },
            Mount {
                host_path: outer.clone(),
                container_path: "/data".into(),
                read_only: false,
            },
            Mount {
                host_path: cfgfile,
                container_path: "/etc/app/app.conf".into(),
                read_only: true,
            },
        ];
        let c = Container::start(&fx.base, &cfg).unwrap();
        assert_eq!(
            stdout_of(&c, &["cat", "/data/sub/i", "/etc/app/app.conf"]).await,
            "innerk=v\n"
        );
        // runc creates the mount point inside the parent volume.
        assert!(outer.join("sub").is_dir());
    }

    #[tokio::test]
    async fn concurrent_waiters_get_the_same_exit() {
        let Some(fx) = fixture() else { return };
        let c = Arc::new(Container::start(&fx.base, &fx.config("waiters", SLEEPER)).unwrap());
        let (c1, c2) = (Arc::clone(&c), Arc::clone(&c));
        let w1 = tokio::spawn(async move { c1.wait().await });
        let w2 = tokio::spawn(async move { c2.wait().await });
        // A cancelled waiter must not lose the exit for the others.
        assert!(tokio::time::timeout(Duration::from_millis(50), c.wait())
            .await
            .is_err());
        c.signal(Signal::SIGKILL).unwrap();
        let e1 = w1.await.unwrap();
        assert_eq!(e1, w2.await.unwrap());
        assert_eq!(e1, c.wait().await);
        assert_eq!(e1.exit_code(), 137);
    }

    #[tokio::test]
    async fn setup_failure_names_the_step() {
        let Some(fx) = fixture() else { return };
        let mut cfg = fx.config("badmount", SLEEPER);
        cfg.mounts = vec![Mount {
            host_path: fx.dir("v"),
            container_path: "/bin/sub".into(),
            read_only: false,
        }];
        let err = Container::start(&fx.base, &cfg).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, SandboxError::Setup { ref source, .. } if source.raw_os_error() == Some(libc::EROFS)),
            "{msg}"
        );
        assert!(
            msg.contains("failed at step `mkdir ") && msg.contains("/bin/sub`"),
            "{msg}"
        );
    }

    #[test]
    fn container_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<Container>();
    }

    #[test]
    fn clean_paths_and_exit_codes() {
        let r = Path::new("/r");
        assert_eq!(clean_container_path("/a//b/./c/", r).unwrap(), "/a/b/c");
        assert!(clean_container_path("a", r).is_err());
        assert!(clean_container_path("/a/../b", r).is_err());
        let e = ContainerExit {
            code: None,
            signal: Some(9),
        };
        assert_eq!(e.exit_code(), 137);
        assert_eq!(
            merge_env(&[("A".into(), "1".into())], &[("A".into(), "2".into())]),
            vec![("A".to_string(), "2".to_string())]
        );
    }
}

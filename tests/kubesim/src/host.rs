//! What `kubesim serve` needs from the host, checked before it starts anything, and the claim
//! on its state directory.
//!
//! * [`check`]: a statically linked busybox that runs, the privileges containers need (a test
//!   container is started and must exit 0), and how volumes will be backed (a tmpfs is mounted
//!   and unmounted once, or the plain-directory fallback is named). Every failure names what to
//!   install or change.
//! * [`claim_state_dir`]: one kubesim per state directory (an `flock` on `kubesim.pid`, which
//!   the kernel drops when the holder dies, even by SIGKILL), and the mounts a killed kubesim
//!   left under it are unmounted, or, if that is not possible, refused with the exact `umount`
//!   command to run.

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sandbox::{self, BaseRootfs, Container, ContainerConfig, SandboxError};
use crate::volumes::{self, VolumeBacking};

/// Debian's package with a statically linked busybox (`/bin/busybox`).
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{source}. kubesim's containers run Debian's statically linked busybox: install it with `apt-get install -y {BUSYBOX_PACKAGE}` (or point {} at a static busybox)", sandbox::BUSYBOX_ENV)]
    BusyboxMissing {
        #[source]
        source: SandboxError,
    },
    #[error("{path} is not a busybox that containers can run: {reason}. Install Debian's statically linked one with `apt-get install -y {BUSYBOX_PACKAGE}` (it replaces the dynamically linked `busybox` package)")]
    BusyboxUnusable { path: PathBuf, reason: String },
    #[error("kubesim must run as root: each container is a process in its own mount namespace, chrooted into a tmpfs (unshare, mount and chroot need CAP_SYS_ADMIN and CAP_SYS_CHROOT). Run it with sudo")]
    NotRoot,
    #[error("a test container did not run: {detail}. kubesim needs CAP_SYS_ADMIN and CAP_SYS_CHROOT (inside Docker: `docker run --privileged`)")]
    ContainerProbe { detail: String },
    #[error("cannot mount a tmpfs volume under {dir}: {source}. Volumes are size-limited tmpfs mounts when kubesim runs as root; set {}=dir to use plain directories instead (capacity is then not enforced)", volumes::BACKING_ENV)]
    VolumeProbe {
        dir: PathBuf,
        #[source]
        source: volumes::VolumeError,
    },
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
    #[error("cannot use state directory {dir}: {source}")]
    StateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state directory {dir} is in use by another kubesim (pid {pid}); stop it (`kill {pid}`) or choose another --state-dir")]
    StateDirInUse { dir: PathBuf, pid: String },
    #[error("{count} mount(s) under {dir} were left by a kubesim that was killed, and unmounting them failed ({source}); unmount them with:\n  {command}")]
    StaleMounts {
        dir: PathBuf,
        count: usize,
        command: String,
        #[source]
        source: volumes::VolumeError,
    },
}

/// What the checks found, for the startup note on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub busybox: PathBuf,
    pub volumes: VolumeBacking,
}

impl Host {
    pub fn describe(&self) -> String {
        let volumes = match self.volumes {
            VolumeBacking::Tmpfs { .. } => "a size-limited tmpfs per volume".to_string(),
            VolumeBacking::PlainDir => format!(
                "plain directories ({}=dir or not root: capacity is not enforced)",
                volumes::BACKING_ENV
            ),
        };
        format!("busybox {}; volumes: {volumes}", self.busybox.display())
    }
}

/// Checks everything `kubesim serve` needs, cheapest first, within about a second. Must be
/// called inside a tokio runtime (the probe container is a real one).
pub async fn check(state_dir: &Path) -> Result<Host, HostError> {
    let busybox = sandbox::busybox_path().map_err(|source| HostError::BusyboxMissing { source })?;
    let unusable = |reason: String| HostError::BusyboxUnusable {
        path: busybox.clone(),
        reason,
    };
    match elf_interpreter(&busybox) {
        Ok(None) => {}
        Ok(Some(interp)) => {
            return Err(unusable(format!(
                "it is dynamically linked (needs {interp}), and containers are chroots without a C library"
            )))
        }
        Err(e) => return Err(unusable(e)),
    }
    run_briefly(&busybox, Duration::from_secs(1)).map_err(unusable)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(HostError::NotRoot);
    }
    let probe = state_dir.join("probe");
    let result = probe_container(&probe).await;
    let _ = fs::remove_dir_all(&probe);
    result?;
    let volumes = probe_volume(&state_dir.join("volumes"))?;
    Ok(Host { busybox, volumes })
}

/// Starts one container running `true` and waits (at most a second) for exit code 0: the
/// namespaces, mounts, chroot and busybox that every pod needs, exercised for real.
async fn probe_container(dir: &Path) -> Result<(), HostError> {
    let err = |detail: String| HostError::ContainerProbe { detail };
    let root = dir.join("root");
    fs::create_dir_all(&root).map_err(|e| err(format!("creating {}: {e}", root.display())))?;
    let base = BaseRootfs::prepare(&dir.join("base")).map_err(|e| err(e.to_string()))?;
    let log_path = dir.join("log");
    let cfg = ContainerConfig {
        root_dir: root,
        hostname: "kubesim-probe".into(),
        argv: vec!["true".into()],
        env: vec![],
        working_dir: None,
        mounts: vec![],
        run_as_user: None,
        run_as_group: None,
        read_only_root: false,
        log_path: log_path.clone(),
    };
    let c = Container::start(&base, &cfg).map_err(|e| err(e.to_string()))?;
    let exit = match tokio::time::timeout(Duration::from_secs(1), c.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            c.kill_all();
            return Err(err("`true` did not exit within a second".into()));
        }
    };
    if exit.exit_code() != 0 {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        return Err(err(format!(
            "`true` exited with {}{}",
            exit.exit_code(),
            if log.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", log.trim())
            }
        )));
    }
    Ok(())
}

/// Provisions and releases one small volume the way the provisioner will.
fn probe_volume(volumes_dir: &Path) -> Result<VolumeBacking, HostError> {
    let path = volumes_dir.join(".probe");
    let backing = volumes::provision(&path, 1 << 20).map_err(|source| match source {
        volumes::VolumeError::Mount { .. } => HostError::VolumeProbe {
            dir: volumes_dir.to_path_buf(),
            source,
        },
        other => HostError::Volume(other),
    })?;
    volumes::release(&path)?;
    Ok(backing)
}

/// Runs `busybox true`; an error says why it did not run or did not succeed.
fn run_briefly(busybox: &Path, limit: Duration) -> Result<(), String> {
    let mut child = std::process::Command::new(busybox)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("running it failed: {e}"))?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("`busybox true` failed ({status})")),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`busybox true` did not finish within {limit:?}"));
            }
            Err(e) => return Err(format!("waiting for it failed: {e}")),
        }
    }
}

/// The program interpreter (dynamic loader) an ELF executable asks for, None for a static one.
/// Reads the ELF header and program headers (System V ABI, "Program Header": `PT_INTERP` = 3).
pub fn elf_interpreter(path: &Path) -> Result<Option<String>, String> {
    let mut f = fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let mut head = [0u8; 64];
    f.read_exact(&mut head)
        .map_err(|_| "it is not an ELF executable (too short)".to_string())?;
    if &head[..4] != b"\x7fELF" {
        return Err("it is not an ELF executable".into());
    }
    let wide = match head[4] {
        1 => false,
        2 => true,
        c => return Err(format!("unknown ELF class {c}")),
    };
    let le = head[5] == 1;
    let num = |b: &[u8]| -> u64 {
        let mut v = 0u64;
        for (i, byte) in b.iter().enumerate() {
            let shift = if le { i } else { b.len() - 1 - i } * 8;
            v |= u64::from(*byte) << shift;
        }
        v
    };
    let (phoff, phentsize, phnum) = if wide {
        (
            num(&head[0x20..0x28]),
            num(&head[0x36..0x38]),
            num(&head[0x38..0x3a]),
        )
    } else {
        (
            num(&head[0x1c..0x20]),
            num(&head[0x2a..0x2c]),
            num(&head[0x2c..0x2e]),
        )
    };
    if phentsize < 8 || phnum > 4096 {
        return Err("its ELF program headers are malformed".into());
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(io::SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut ph))
        .map_err(|_| "its ELF program headers are truncated".to_string())?;
    for entry in ph.chunks(phentsize as usize) {
        if num(&entry[..4]) != 3 {
            continue;
        }
        let (off, size) = if wide {
            (num(&entry[8..16]), num(&entry[32..40]))
        } else {
            (num(&entry[4..8]), num(&entry[16..20]))
        };
        let mut interp = vec![0u8; size.min(4096) as usize];
        f.seek(io::SeekFrom::Start(off))
            .and_then(|_| f.read_exact(&mut interp))
            .map_err(|_| "its ELF interpreter entry is truncated".to_string())?;
        let text = String::from_utf8_lossy(&interp);
        return Ok(Some(text.trim_end_matches('\0').to_string()));
    }
    Ok(None)
}

/// Holds the state directory for one kubesim until dropped (or until the process dies).
#[derive(Debug)]
pub struct StateDirClaim {
    _file: fs::File,
    /// How many mounts a killed kubesim had left, now unmounted.
    pub stale_unmounted: usize,
}

/// Claims `dir` for this process, and unmounts what a killed kubesim left mounted there.
pub fn claim_state_dir(dir: &Path) -> Result<StateDirClaim, HostError> {
    let state_err = |source| HostError::StateDir {
        dir: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(state_err)?;
    let pid_path = dir.join("kubesim.pid");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&pid_path)
        .map_err(state_err)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(HostError::StateDirInUse {
                dir: dir.to_path_buf(),
                pid: if pid.is_empty() { "unknown" } else { pid }.to_string(),
            });
        }
        return Err(state_err(e));
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(state_err)?;
    let stale = mounts_under(dir)?;
    if !stale.is_empty() {
        if let Err(source) = volumes::release_all_under(dir) {
            let left = mounts_under(dir)?;
            return Err(HostError::StaleMounts {
                dir: dir.to_path_buf(),
                count: left.len(),
                command: umount_command(&left),
                source,
            });
        }
    }
    Ok(StateDirClaim {
        _file: file,
        stale_unmounted: stale.len(),
    })
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, HostError> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut under: Vec<PathBuf> = volumes::mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    under.dedup();
    Ok(under)
}

/// `umount --lazy` of every path, shell-quoted, deepest first.
pub fn umount_command(paths: &[PathBuf]) -> String {
    let quoted: Vec<String> = paths
        .iter()
        .map(|p| {
            let s = p.display().to_string();
            if s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
            {
                s
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        })
        .collect();
    format!("umount --lazy {}", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // The test binary itself is dynamically linked against glibc.
        let me = std::env::current_exe().unwrap();
        let interp = elf_interpreter(&me).unwrap().expect("dynamically linked");
        assert!(interp.contains("ld-linux"), "{interp}");
        if let Ok(bb) = sandbox::busybox_path() {
            assert_eq!(elf_interpreter(&bb).unwrap(), None, "{}", bb.display());
        }
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("script");
        fs::write(&script, "#!/bin/sh\ntrue\n").unwrap();
        assert_eq!(
            elf_interpreter(&script).unwrap_err(),
            "it is not an ELF executable (too short)"
        );
        fs::write(&script, vec![b'#'; 100]).unwrap();
        assert_eq!(
            elf_interpreter(&script).unwrap_err(),
            "it is not an ELF executable"
        );
    }

    #[test]
    fn umount_command_quotes_what_the_shell_would_split() {
        let cmd = umount_command(&[
            PathBuf::from("/tmp/ks/volumes/shop/data-0"),
            PathBuf::from("/tmp/k s/it's"),
        ]);
        assert_eq!(
            cmd,
            r"umount --lazy /tmp/ks/volumes/shop/data-0 '/tmp/k s/it'\''s'"
        );
    }

    #[test]
    fn a_second_claim_on_a_state_dir_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = claim_state_dir(tmp.path()).unwrap();
        assert_eq!(first.stale_unmounted, 0);
        // flock locks belong to the open file description: a second open in this process
        // conflicts just as another process's would.
        match claim_state_dir(tmp.path()) {
            Err(HostError::StateDirInUse { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected StateDirInUse, got {other:?}"),
        }
        drop(first);
        claim_state_dir(tmp.path()).unwrap();
    }

    #[test]
    fn mounts_left_behind_are_unmounted_by_the_next_claim() {
        if !nix::unistd::geteuid().is_root()
            || std::env::var(volumes::BACKING_ENV).as_deref() == Ok("dir")
        {
            eprintln!("skipping: tmpfs volumes need root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("volumes/shop/data");
        volumes::provision(&vol, 1 << 20).unwrap();
        fs::write(vol.join("f"), b"left behind").unwrap();
        let claim = claim_state_dir(tmp.path()).unwrap();
        assert_eq!(claim.stale_unmounted, 1);
        assert!(mounts_under(tmp.path()).unwrap().is_empty());
        assert!(!vol.join("f").exists());
    }
}

//! Release archives: one `.tar.gz` per platform holding the binary, LICENSE, README.md,
//! `completions/` and `man/`, laid out flat so Krew's file operations can name each part.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A platform as Krew selects it (`os`/`arch` labels, Go's names) and the Rust targets that
/// build for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub arch: &'static str,
    /// The target `cargo xtask release` uses for it by default.
    pub target: &'static str,
}

/// Every platform the Krew manifest lists.
pub const PLATFORMS: [Platform; 5] = [
    Platform {
        os: "linux",
        arch: "amd64",
        target: "x86_64-unknown-linux-gnu",
    },
    Platform {
        os: "linux",
        arch: "arm64",
        target: "aarch64-unknown-linux-gnu",
    },
    Platform {
        os: "darwin",
        arch: "amd64",
        target: "x86_64-apple-darwin",
    },
    Platform {
        os: "darwin",
        arch: "arm64",
        target: "aarch64-apple-darwin",
    },
    Platform {
        os: "windows",
        arch: "amd64",
        target: "x86_64-pc-windows-msvc",
    },
];

impl Platform {
    /// The platform a Rust target triple builds for (`x86_64-pc-windows-gnu` → windows/amd64).
    pub fn of_target(triple: &str) -> Option<Platform> {
        let arch = match triple.split('-').next()? {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            _ => return None,
        };
        let os = if triple.contains("-linux-") {
            "linux"
        } else if triple.contains("-apple-darwin") {
            "darwin"
        } else if triple.contains("-windows-") {
            "windows"
        } else {
            return None;
        };
        PLATFORMS.into_iter().find(|p| p.os == os && p.arch == arch)
    }

    pub fn exe_suffix(&self) -> &'static str {
        if self.os == "windows" {
            ".exe"
        } else {
            ""
        }
    }

    /// The binary's name inside the archive, which the manifest's `bin` names.
    pub fn bin(&self) -> String {
        format!("kubectl-pvbackup{}", self.exe_suffix())
    }

    /// `kubectl-pvbackup-v0.1.0-linux-amd64.tar.gz`
    pub fn archive_name(&self, tag: &str) -> String {
        format!("kubectl-pvbackup-{tag}-{}-{}.tar.gz", self.os, self.arch)
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.os, self.arch)
    }
}

/// The tag of a version: Krew wants `spec.version` with its `v`.
pub fn tag(version: &str) -> String {
    format!("v{version}")
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A built archive and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub path: PathBuf,
    pub sha256: String,
}

/// What goes into an archive besides the binary, relative to the repository root: files, and
/// directories taken whole. Krew's manifest moves each of them by name.
pub const EXTRA_FILES: [&str; 2] = ["LICENSE", "README.md"];
pub const EXTRA_DIRS: [&str; 2] = ["completions", "man"];

/// Files that must stay executable after unpacking.
fn executable(rel: &str) -> bool {
    rel == crate::docs::PLUGIN_COMPLETION
}

/// Writes `<out_dir>/<archive name>` for `platform` from `binary` and the files under `root`.
/// Entries are sorted and carry `mtime`, uid/gid 0 and fixed modes, so the same inputs give
/// the same bytes.
pub fn build_archive(
    binary: &Path,
    platform: Platform,
    version: &str,
    root: &Path,
    out_dir: &Path,
    mtime: u64,
) -> Result<Archive, PackageError> {
    let path = out_dir.join(platform.archive_name(&tag(version)));
    let write_err = |source| PackageError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(write_err)?;
    let tmp = path.with_extension("partial");
    let file = File::create(&tmp).map_err(write_err)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);

    let mut entries: Vec<(String, PathBuf, u32)> =
        vec![(platform.bin(), binary.to_path_buf(), 0o755)];
    for f in EXTRA_FILES {
        entries.push((f.to_string(), root.join(f), 0o644));
    }
    for d in EXTRA_DIRS {
        let dir = root.join(d);
        let list = std::fs::read_dir(&dir).map_err(|source| PackageError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut files: Vec<String> = list
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| format!("{d}/{}", e.file_name().to_string_lossy()))
            .collect();
        files.sort();
        for rel in files {
            let mode = if executable(&rel) { 0o755 } else { 0o644 };
            entries.push((rel.clone(), root.join(&rel), mode));
        }
    }
    for d in EXTRA_DIRS {
        append_dir(&mut tar, d, mtime).map_err(write_err)?;
    }
    for (name, src, mode) in entries {
        let mut f = File::open(&src).map_err(|source| PackageError::Read {
            path: src.clone(),
            source,
        })?;
        let len = f
            .metadata()
            .map_err(|source| PackageError::Read {
                path: src.clone(),
                source,
            })?
            .len();
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(mode);
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &name, &mut f)
            .map_err(write_err)?;
    }
    let gz = tar.into_inner().map_err(write_err)?;
    let file = gz.finish().map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(write_err)?;
    let sha256 = sha256_file(&path)?;
    Ok(Archive { path, sha256 })
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str, mtime: u64) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_mtime(mtime);
    header.set_size(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, format!("{name}/"), io::empty())
}

/// The sha256 of a file's bytes, as lowercase hex (what Krew's manifest wants).
pub fn sha256_file(path: &Path) -> Result<String, PackageError> {
    let read_err = |source| PackageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_krew_platforms() {
        let p = |t| Platform::of_target(t).map(|p| p.label());
        assert_eq!(
            p("x86_64-unknown-linux-gnu").as_deref(),
            Some("linux/amd64")
        );
        assert_eq!(
            p("x86_64-unknown-linux-musl").as_deref(),
            Some("linux/amd64")
        );
        assert_eq!(
            p("aarch64-unknown-linux-gnu").as_deref(),
            Some("linux/arm64")
        );
        assert_eq!(p("aarch64-apple-darwin").as_deref(), Some("darwin/arm64"));
        assert_eq!(p("x86_64-pc-windows-gnu").as_deref(), Some("windows/amd64"));
        assert_eq!(p("riscv64gc-unknown-linux-gnu"), None);
        for pl in PLATFORMS {
            assert_eq!(Platform::of_target(pl.target), Some(pl));
        }
        assert_eq!(PLATFORMS[4].bin(), "kubectl-pvbackup.exe");
        assert_eq!(
            PLATFORMS[0].archive_name("v1.2.3"),
            "kubectl-pvbackup-v1.2.3-linux-amd64.tar.gz"
        );
    }
}

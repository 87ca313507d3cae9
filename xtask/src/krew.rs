//! The Krew plugin manifest: rendering it from the template at the repository root with the
//! sha256 of archives in hand, checking it the way Krew does, and installing an archive the
//! way `kubectl krew install --manifest=… --archive=…` lays it out (for machines without Krew,
//! and for the test that runs the installed plugin through kubectl).
//!
//! Krew sources followed (kubernetes-sigs/krew): `pkg/index/types.go` (fields),
//! `pkg/index/validation/validate.go` (apiVersion, kind, name `^[\w-]+$`, shortDescription,
//! semver version with `v`, per platform: uri, sha256 `^[a-f0-9]{64}$`, bin, file operations,
//! a non-empty selector on `os`/`arch` only), `internal/environment/environment.go` (layout:
//! `$KREW_ROOT/store/<plugin>/<version>/`, `bin/`, `receipts/<plugin>.yaml`) and
//! `internal/installation/{install,move}.go` (file operations, relative `bin/kubectl-<plugin>`
//! symlink, `-` in the plugin name becoming `_`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::package::{self, Archive, Platform, PLATFORMS};

pub const API_VERSION: &str = "krew.googlecontainertools.github.com/v1alpha2";
pub const PLUGIN_NAME: &str = "pvbackup";
/// The template, relative to the repository root.
pub const TEMPLATE: &str = "krew-manifest.yaml";
/// Placeholders the template may hold; a rendered manifest holds none.
pub const VERSION_PLACEHOLDER: &str = "{{version}}";
pub const ARCHIVE_PLACEHOLDER: &str = "{{archive}}";
pub const SHA256_PLACEHOLDER: &str = "{{sha256}}";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plugin {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    pub short_description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caveats: Option<String>,
    pub platforms: Vec<PlatformSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformSpec {
    pub selector: Selector,
    pub uri: String,
    pub sha256: String,
    #[serde(default)]
    pub files: Vec<FileOperation>,
    pub bin: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileOperation {
    pub from: String,
    pub to: String,
}

impl PlatformSpec {
    /// The `os`/`arch` this platform entry selects, when it names them in `matchLabels`.
    pub fn os_arch(&self) -> Option<(&str, &str)> {
        let l = self.selector.match_labels.as_ref()?;
        Some((l.get("os")?.as_str(), l.get("arch")?.as_str()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KrewError {
    #[error("the manifest is not valid YAML for a Krew plugin: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("the manifest is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    #[error("no archive for {}: build it on that platform with `cargo xtask release --target <triple> --no-manifest` and copy it into {dist}, or pass --allow-missing-platforms for a manifest that leaves them out (not for krew-index)", .missing.join(", "))]
    MissingArchives { missing: Vec<String>, dist: String },
    #[error("an archive was given for {0}, which the template has no platform entry for")]
    UnknownPlatform(String),
    #[error("the template has no platform left to render")]
    Empty,
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Install(String),
    #[error(transparent)]
    Package(#[from] package::PackageError),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> KrewError + 'a {
    move |source| KrewError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a manifest the way Krew's validation does, plus what this project promises: every
/// platform once, `bin` fitting the OS, `uri` ending in the platform's archive name.
/// `template` allows the placeholders (and only them) where a rendered manifest has values.
pub fn check(plugin: &Plugin, template: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if plugin.api_version != API_VERSION {
        problems.push(format!(
            "apiVersion is {:?}, Krew reads {API_VERSION:?}",
            plugin.api_version
        ));
    }
    if plugin.kind != "Plugin" {
        problems.push(format!("kind is {:?}, must be \"Plugin\"", plugin.kind));
    }
    let name = &plugin.metadata.name;
    if name != PLUGIN_NAME {
        problems.push(format!(
            "metadata.name is {name:?}, must be {PLUGIN_NAME:?}"
        ));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        problems.push(format!("metadata.name {name:?} must match ^[\\w-]+$"));
    }
    if plugin.spec.short_description.trim().is_empty() {
        problems.push("spec.shortDescription is empty".into());
    }
    let version = &plugin.spec.version;
    let placeholder_ok = template && version == VERSION_PLACEHOLDER;
    if !placeholder_ok && !is_krew_semver(version) {
        problems.push(format!(
            "spec.version {version:?} is not a semantic version with a leading v (e.g. v1.2.3)"
        ));
    }
    if plugin.spec.platforms.is_empty() {
        problems.push("spec.platforms is empty".into());
    }
    let mut seen = Vec::new();
    for (i, p) in plugin.spec.platforms.iter().enumerate() {
        let at = format!("spec.platforms[{i}]");
        let labels = p.selector.match_labels.as_ref();
        match labels {
            None => problems.push(format!("{at}.selector has no matchLabels")),
            Some(l) if l.is_empty() => problems.push(format!("{at}.selector.matchLabels is empty")),
            Some(l) => {
                for k in l.keys() {
                    if k != "os" && k != "arch" {
                        problems.push(format!(
                            "{at}.selector uses label {k:?}; Krew selects on os and arch only"
                        ));
                    }
                }
            }
        }
        if p.selector.match_expressions.is_some() {
            problems.push(format!(
                "{at}.selector uses matchExpressions; this manifest uses matchLabels os/arch"
            ));
        }
        let Some((os, arch)) = p.os_arch() else {
            problems.push(format!("{at}.selector must name both os and arch"));
            continue;
        };
        let Some(platform) = PLATFORMS.iter().find(|x| x.os == os && x.arch == arch) else {
            problems.push(format!("{at} selects {os}/{arch}, which no release builds"));
            continue;
        };
        if seen.contains(&(os, arch)) {
            problems.push(format!("{at} repeats {os}/{arch}"));
        }
        seen.push((os, arch));
        if p.uri.trim().is_empty() {
            problems.push(format!("{at}.uri is empty"));
        }
        let archive_suffix = if template {
            ARCHIVE_PLACEHOLDER.to_string()
        } else {
            platform.archive_name(version)
        };
        if !p.uri.ends_with(&format!("/{archive_suffix}")) {
            problems.push(format!(
                "{at}.uri {:?} does not end in /{archive_suffix}",
                p.uri
            ));
        }
        let sha_ok = if template {
            p.sha256 == SHA256_PLACEHOLDER
        } else {
            p.sha256.len() == 64
                && p.sha256
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        };
        if !sha_ok {
            problems.push(format!(
                "{at}.sha256 {:?} must be {}",
                p.sha256,
                if template {
                    "the placeholder {{sha256}} in the template"
                } else {
                    "64 lowercase hex digits"
                }
            ));
        }
        if p.bin != platform.bin() {
            problems.push(format!(
                "{at}.bin is {:?}, must be {:?} on {os}",
                p.bin,
                platform.bin()
            ));
        }
        if p.files.is_empty() {
            problems.push(format!("{at}.files is empty; Krew needs file operations"));
        }
        if !p.files.iter().any(|f| f.from == platform.bin()) {
            problems.push(format!(
                "{at}.files does not install the binary {:?}",
                platform.bin()
            ));
        }
        for f in &p.files {
            if f.from.contains(['*', '?', '[']) {
                problems.push(format!(
                    "{at}.files from {:?}: name files directly, no globs",
                    f.from
                ));
            }
            if f.to != "." {
                problems.push(format!(
                    "{at}.files to {:?}: everything goes to \".\"",
                    f.to
                ));
            }
        }
    }
    let rendered = serde_yaml::to_string(plugin).unwrap_or_default();
    if !template && rendered.contains("{{") {
        problems.push("a placeholder ({{…}}) is left in the rendered manifest".into());
    }
    problems
}

/// Krew's semver (`pkg/installation/semver`): `v` + MAJOR.MINOR.PATCH, optional -pre/+build.
pub fn is_krew_semver(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let core = rest.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

/// Parses and checks a manifest.
pub fn parse(text: &str, template: bool) -> Result<Plugin, KrewError> {
    let plugin: Plugin = serde_yaml::from_str(text)?;
    let problems = check(&plugin, template);
    if problems.is_empty() {
        Ok(plugin)
    } else {
        Err(KrewError::Invalid(problems))
    }
}

/// Renders the template for `version` with `archives`. Every platform of the template needs an
/// archive, unless `allow_missing`, which leaves out the platforms without one. The result is
/// checked like Krew would before it is returned: no placeholder survives.
pub fn render(
    template: &str,
    version: &str,
    archives: &[(Platform, Archive)],
    allow_missing: bool,
    dist: &Path,
) -> Result<String, KrewError> {
    let mut plugin = parse(template, true)?;
    let tag = package::tag(version);
    for (p, _) in archives {
        if !plugin
            .spec
            .platforms
            .iter()
            .any(|s| s.os_arch() == Some((p.os, p.arch)))
        {
            return Err(KrewError::UnknownPlatform(p.label()));
        }
    }
    let mut missing = Vec::new();
    plugin.spec.version = tag.clone();
    plugin.spec.platforms.retain_mut(|spec| {
        let (os, arch) = spec
            .os_arch()
            .map(|(o, a)| (o.to_string(), a.to_string()))
            .unwrap_or_default();
        match archives.iter().find(|(p, _)| p.os == os && p.arch == arch) {
            Some((p, a)) => {
                spec.sha256 = a.sha256.clone();
                spec.uri = spec
                    .uri
                    .replace(VERSION_PLACEHOLDER, &tag)
                    .replace(ARCHIVE_PLACEHOLDER, &p.archive_name(&tag));
                true
            }
            None => {
                missing.push(format!("{os}/{arch}"));
                false
            }
        }
    });
    if !missing.is_empty() && !allow_missing {
        return Err(KrewError::MissingArchives {
            missing,
            dist: dist.display().to_string(),
        });
    }
    if plugin.spec.platforms.is_empty() {
        return Err(KrewError::Empty);
    }
    let body = serde_yaml::to_string(&plugin)?;
    let header = if missing.is_empty() {
        format!("# Rendered by `cargo xtask release` from {TEMPLATE} for {tag}; sha256 values are those of the archives beside it.\n")
    } else {
        format!(
            "# Rendered by `cargo xtask release --allow-missing-platforms` for {tag}: WITHOUT {}. Not for krew-index.\n",
            missing.join(", ")
        )
    };
    let text = header + &body;
    // What goes out is what Krew will read: parse the text itself, not the struct.
    parse(&text, false)?;
    Ok(text)
}

/// Installs `archive` under `krew_root` the way `kubectl krew install --manifest --archive`
/// does on `os`/`arch`: check the archive's sha256 against the manifest, unpack, apply the
/// file operations into `store/<plugin>/<version>/`, link `bin/kubectl-<plugin>` to the binary
/// with a relative symlink, and write the receipt. Returns the link.
pub fn install(
    plugin: &Plugin,
    archive: &Path,
    krew_root: &Path,
    os: &str,
    arch: &str,
) -> Result<PathBuf, KrewError> {
    let spec = plugin
        .spec
        .platforms
        .iter()
        .find(|p| p.os_arch() == Some((os, arch)))
        .ok_or_else(|| {
            KrewError::Install(format!(
                "plugin {:?} does not offer installation for this platform ({os}/{arch})",
                plugin.metadata.name
            ))
        })?;
    let actual = package::sha256_file(archive)?;
    if actual != spec.sha256 {
        return Err(KrewError::Install(format!(
            "checksum does not match, want: {}, got {actual}",
            spec.sha256
        )));
    }
    let staging = krew_root.join("tmp-download");
    let install_tmp = krew_root.join("tmp-move");
    for d in [&staging, &install_tmp] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).map_err(io("creating", d))?;
    }
    let file = std::fs::File::open(archive).map_err(io("opening", archive))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&staging)
        .map_err(io("unpacking", archive))?;
    for op in &spec.files {
        // Krew's direct move (`getDirectMove`): an existing path moves to `to`, keeping its
        // name when `to` is ".". Globs are refused by `check`, so no other form is needed.
        let from = staging.join(&op.from);
        if !from.exists() {
            return Err(KrewError::Install(format!(
                "no files in the plugin archive matched the glob pattern={}",
                op.from
            )));
        }
        let to = if op.to == "." {
            install_tmp.join(from.file_name().unwrap_or_default())
        } else {
            install_tmp.join(&op.to)
        };
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        std::fs::rename(&from, &to).map_err(io("moving", &from))?;
    }
    let version_dir = krew_root
        .join("store")
        .join(&plugin.metadata.name)
        .join(&plugin.spec.version);
    if let Some(dir) = version_dir.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let _ = std::fs::remove_dir_all(&version_dir);
    std::fs::rename(&install_tmp, &version_dir).map_err(io("moving", &install_tmp))?;
    let _ = std::fs::remove_dir_all(&staging);
    let binary = version_dir.join(&spec.bin);
    if !binary.is_file() {
        return Err(KrewError::Install(format!(
            "can't create symbolic link, source binary ({}) cannot be found in extracted archive",
            binary.display()
        )));
    }
    let bin_dir = krew_root.join("bin");
    std::fs::create_dir_all(&bin_dir).map_err(io("creating", &bin_dir))?;
    let link = bin_dir.join(format!(
        "kubectl-{}",
        plugin.metadata.name.replace('-', "_")
    ));
    let _ = std::fs::remove_file(&link);
    let relative = Path::new("..")
        .join("store")
        .join(&plugin.metadata.name)
        .join(&plugin.spec.version)
        .join(&spec.bin);
    link_binary(&relative, &link).map_err(io("linking", &link))?;
    let receipts = krew_root.join("receipts");
    std::fs::create_dir_all(&receipts).map_err(io("creating", &receipts))?;
    let mut receipt = serde_yaml::to_value(plugin)?;
    if let Value::Mapping(m) = &mut receipt {
        // A manifest installed from a file, not an index (krew: receipt source "detached").
        m.insert(
            "status".into(),
            serde_yaml::from_str("{source: {name: detached}}")?,
        );
    }
    let receipt_path = receipts.join(format!("{}.yaml", plugin.metadata.name));
    std::fs::write(&receipt_path, serde_yaml::to_string(&receipt)?)
        .map_err(io("writing", &receipt_path))?;
    Ok(link)
}

#[cfg(unix)]
fn link_binary(relative: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(relative, link)
}

/// Krew links on Windows too (`symlink_windows.go`), which needs a privilege; a copy runs the same.
#[cfg(not(unix))]
fn link_binary(relative: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::copy(link.parent().unwrap_or(Path::new(".")).join(relative), link).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krew_versions_need_their_v() {
        assert!(is_krew_semver("v0.1.0"));
        assert!(is_krew_semver("v1.20.3-rc.1"));
        assert!(!is_krew_semver("0.1.0"));
        assert!(!is_krew_semver("v0.1"));
        assert!(!is_krew_semver("v01.1.0"));
    }

    #[test]
    fn the_template_is_a_template() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join(TEMPLATE)).unwrap();
        let plugin = parse(&text, true).unwrap();
        // A template is never installable: Krew would reject its sha256 values.
        assert!(!check(&plugin, false).is_empty());
        let mut labels: Vec<(String, String)> = plugin
            .spec
            .platforms
            .iter()
            .map(|p| {
                let (o, a) = p.os_arch().unwrap();
                (o.to_string(), a.to_string())
            })
            .collect();
        labels.sort();
        let mut want: Vec<(String, String)> = PLATFORMS
            .iter()
            .map(|p| (p.os.to_string(), p.arch.to_string()))
            .collect();
        want.sort();
        assert_eq!(labels, want);
    }

    #[test]
    fn rendering_refuses_missing_archives_and_fills_the_rest() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join(TEMPLATE)).unwrap();
        let linux = (
            PLATFORMS[0],
            Archive {
                path: "x.tar.gz".into(),
                sha256: "ab".repeat(32),
            },
        );
        let dist = Path::new("dist");
        let err = render(&text, "1.2.3", std::slice::from_ref(&linux), false, dist).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("darwin/arm64") && msg.contains("windows/amd64"),
            "{msg}"
        );
        assert!(!msg.contains("linux/amd64"), "{msg}");

        let out = render(&text, "1.2.3", &[linux], true, dist).unwrap();
        let plugin = parse(&out, false).unwrap();
        assert_eq!(plugin.spec.version, "v1.2.3");
        assert_eq!(plugin.spec.platforms.len(), 1);
        assert_eq!(plugin.spec.platforms[0].sha256, "ab".repeat(32));
        assert!(plugin.spec.platforms[0]
            .uri
            .ends_with("/v1.2.3/kubectl-pvbackup-v1.2.3-linux-amd64.tar.gz"));
        assert!(out.starts_with("# Rendered by `cargo xtask release --allow-missing-platforms`"));
        assert!(!out.contains("{{"));
    }

    #[test]
    fn krew_checks_catch_what_krew_rejects() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join(TEMPLATE)).unwrap();
        let all: Vec<(Platform, Archive)> = PLATFORMS
            .iter()
            .map(|p| {
                (
                    *p,
                    Archive {
                        path: "x".into(),
                        sha256: "0".repeat(64),
                    },
                )
            })
            .collect();
        let good = parse(
            &render(&text, "0.1.0", &all, false, Path::new("d")).unwrap(),
            false,
        )
        .unwrap();
        assert!(check(&good, false).is_empty());
        let mut bad = good.clone();
        bad.spec.version = "0.1.0".into();
        bad.spec.platforms[0].sha256 = "ABC".into();
        bad.spec.platforms[1]
            .selector
            .match_labels
            .as_mut()
            .unwrap()
            .insert("distro".into(), "debian".into());
        bad.spec.platforms[4].bin = "kubectl-pvbackup".into();
        let problems = check(&bad, false).join("\n");
        for want in [
            "spec.version",
            "sha256",
            "\"distro\"",
            "must be \"kubectl-pvbackup.exe\"",
        ] {
            assert!(problems.contains(want), "{want} not in:\n{problems}");
        }
    }
}

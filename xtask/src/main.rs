//! `cargo xtask …`: release tasks run on a developer's machine (no hosted CI needed).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use kubectl_pvbackup::cmd::version::VERSION;
use xtask::package::{self, Archive, Platform, PLATFORMS};
use xtask::{docs, image, krew, repo_root};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Release tasks for kubectl-pvbackup")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Rewrite completions/ and man/ from the clap definitions
    Generate,
    /// Build release archives for TARGETs and render dist/v<version>/krew-manifest.yaml
    Release {
        /// Rust target to build (repeatable; default: this machine's). The target must be
        /// installed (`rustup target add`) with a linker for it.
        #[arg(long = "target", value_name = "TRIPLE")]
        targets: Vec<String>,
        /// Where archives and the manifest go (default: dist/v<version>)
        #[arg(long, value_name = "DIR")]
        dist: Option<PathBuf>,
        /// Package binaries already built under target/<triple>/release
        #[arg(long)]
        no_build: bool,
        /// Only build archives (on a per-OS machine); render no manifest
        #[arg(long)]
        no_manifest: bool,
        /// Render a manifest without the platforms that have no archive (never for krew-index)
        #[arg(long)]
        allow_missing_platforms: bool,
        /// Also build the container image schedules run (Dockerfile), tagged as the plugin's
        /// default image (`kubectl pvbackup schedule create --help`)
        #[arg(long)]
        image: bool,
        /// The container engine for --image (docker, podman)
        #[arg(
            long,
            env = "CONTAINER_ENGINE",
            default_value = "docker",
            value_name = "CMD"
        )]
        container_engine: String,
        /// With --image: print the build command instead of running it
        #[arg(long, requires = "image")]
        print_image_command: bool,
    },
    /// Install a rendered manifest's archive the way Krew lays plugins out
    KrewInstall {
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        #[arg(long, value_name = "FILE")]
        archive: PathBuf,
        /// Default: $KREW_ROOT, else ~/.krew
        #[arg(long, value_name = "DIR")]
        krew_root: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(cli: Cli) -> Result<()> {
    let root = repo_root();
    match cli.task {
        Task::Generate => {
            let written = docs::write(&root)?;
            if written.is_empty() {
                eprintln!("completions/ and man/ are up to date");
            }
            for p in written {
                eprintln!("wrote {}", p.display());
            }
            Ok(())
        }
        Task::Release {
            targets,
            dist,
            no_build,
            no_manifest,
            allow_missing_platforms,
            image,
            container_engine,
            print_image_command,
        } => {
            if image {
                build_image(&root, &container_engine, print_image_command)?;
                if print_image_command {
                    return Ok(());
                }
            }
            release(
                &root,
                targets,
                dist,
                no_build,
                no_manifest,
                allow_missing_platforms,
            )
        }
        Task::KrewInstall {
            manifest,
            archive,
            krew_root,
        } => {
            let text = std::fs::read_to_string(&manifest)
                .map_err(|e| format!("reading {}: {e}", manifest.display()))?;
            let plugin = krew::parse(&text, false)?;
            let krew_root = krew_root
                .or_else(|| std::env::var_os("KREW_ROOT").map(PathBuf::from))
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".krew")))
                .ok_or("set --krew-root, KREW_ROOT or HOME")?;
            let (os, arch) = host_os_arch()?;
            let link = krew::install(&plugin, &archive, &krew_root, os, arch)?;
            println!("installed {}", link.display());
            println!(
                "add {} to PATH, then run `kubectl pvbackup version`",
                krew_root.join("bin").display()
            );
            Ok(())
        }
    }
}

fn release(
    root: &Path,
    targets: Vec<String>,
    dist: Option<PathBuf>,
    no_build: bool,
    no_manifest: bool,
    allow_missing: bool,
) -> Result<()> {
    let stale = docs::stale(root);
    if !stale.is_empty() {
        return Err(format!(
            "generated files are stale ({}): run `{}` and commit them first",
            stale
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            docs::REGENERATE
        )
        .into());
    }
    let tag = package::tag(VERSION);
    let dist = dist.unwrap_or_else(|| root.join("dist").join(&tag));
    let targets = if targets.is_empty() {
        vec![host_triple()?]
    } else {
        targets
    };
    let mtime = source_date(root);
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for t in &targets {
        let platform = Platform::of_target(t)
            .ok_or_else(|| format!("{t} builds for no platform of the Krew manifest"))?;
        if !no_build {
            eprintln!("building {t} (release)…");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(root)
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "--bin",
                    "kubectl-pvbackup",
                ])
                .args(["--target", t])
                // The release profile keeps line tables for profiling; a shipped binary needs
                // symbol names for backtraces, not DWARF (the archive shrinks several times).
                // Stripping happens at link time only: nothing recompiles for it.
                .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
                .status()?;
            if !status.success() {
                return Err(format!(
                    "cargo build for {t} failed; the target needs `rustup target add {t}` and a linker for it (e.g. CARGO_TARGET_<TRIPLE>_LINKER)"
                )
                .into());
            }
        }
        let binary = target_dir.join(t).join("release").join(platform.bin());
        if !binary.is_file() {
            return Err(format!("no binary at {}", binary.display()).into());
        }
        let a = package::build_archive(&binary, platform, VERSION, root, &dist, mtime)?;
        println!("{}  {}", a.sha256, a.path.display());
    }
    if no_manifest {
        return Ok(());
    }
    // Every archive in dist counts, whichever machine built it: the sha256 is computed here,
    // from the bytes, never copied from elsewhere.
    let mut archives: Vec<(Platform, Archive)> = Vec::new();
    for p in PLATFORMS {
        let path = dist.join(p.archive_name(&tag));
        if path.is_file() {
            let sha256 = package::sha256_file(&path)?;
            archives.push((p, Archive { path, sha256 }));
        }
    }
    let template = std::fs::read_to_string(root.join(krew::TEMPLATE))?;
    let manifest = krew::render(&template, VERSION, &archives, allow_missing, &dist)?;
    let manifest_path = dist.join("krew-manifest.yaml");
    std::fs::write(&manifest_path, &manifest)?;
    let sums: String = archives
        .iter()
        .map(|(_, a)| {
            format!(
                "{}  {}\n",
                a.sha256,
                a.path.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    std::fs::write(dist.join("SHA256SUMS"), sums)?;
    println!("{}", manifest_path.display());
    Ok(())
}

/// `--image`: the schedule image from the Dockerfile (checked first), with the engine's output.
fn build_image(root: &Path, engine: &str, print_only: bool) -> Result<()> {
    let text = std::fs::read_to_string(root.join(image::DOCKERFILE))?;
    image::check_dockerfile(&text)?;
    let tag = kubectl_pvbackup::schedule::default_image();
    let cmd = image::build_command(engine, root, &tag);
    if print_only {
        println!("{}", cmd.join(" "));
        return Ok(());
    }
    eprintln!("building image {tag}…");
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .status()
        .map_err(|e| {
            format!("cannot run {engine}: {e}; install docker or podman, or set CONTAINER_ENGINE")
        })?;
    if !status.success() {
        return Err(format!("{} failed: {status}", cmd.join(" ")).into());
    }
    println!("{tag}");
    Ok(())
}

fn host_triple() -> Result<String> {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or_else(|| "rustc -vV names no host".into())
}

/// Krew's os/arch names (Go's) for this machine.
fn host_os_arch() -> Result<(&'static str, &'static str)> {
    let os = match std::env::consts::OS {
        "linux" => "linux",
        "macos" => "darwin",
        "windows" => "windows",
        other => return Err(format!("Krew has no platform for {other}").into()),
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => return Err(format!("Krew has no platform for {other}").into()),
    };
    Ok((os, arch))
}

/// Archive timestamps: SOURCE_DATE_EPOCH when set (reproducible builds), else the commit's time.
fn source_date(root: &Path) -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return t;
    }
    Command::new("git")
        .current_dir(root)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

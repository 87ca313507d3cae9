//! What ships besides the code: help text and usage errors (snapshots), the committed
//! completions and man pages (equal to what the definitions generate), `version`, and a release
//! archive installed the way Krew lays plugins out, run through kubectl's plugin discovery.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use xtask::krew;
use xtask::package::{self, PLATFORMS};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl(version: &str) -> PathBuf {
    let dir =
        std::env::var("KUBECTL_DIR").unwrap_or_else(|_| "/usr/lib/google-cloud-sdk/bin".into());
    PathBuf::from(dir).join(format!("kubectl.{version}"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn plugin(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"))
        .args(args)
        // Help wraps at the terminal's width; pin it.
        .env("COLUMNS", "100")
        .env_remove("PVBACKUP_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the plugin runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn transcript(r: &Run) -> String {
    format!(
        "exit code: {}\n----- stdout -----\n{}----- stderr -----\n{}",
        r.code, r.stdout, r.stderr
    )
}

/// Every user-facing subcommand, from the definitions: a new one is held to the same rules.
fn subcommands() -> Vec<String> {
    use clap::CommandFactory;
    kubectl_pvbackup::cli::Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect()
}

#[test]
fn help_is_pinned() {
    let top = plugin(&["--help"]);
    assert_eq!(top.code, 0);
    insta::assert_snapshot!("help", transcript(&top));
    let subs = subcommands();
    assert!(subs.len() >= 9, "{subs:?}");
    for sub in &subs {
        let sub = sub.as_str();
        let r = plugin(&[sub, "--help"]);
        assert_eq!(r.code, 0, "{sub} --help");
        // Every subcommand: a one-line summary first, and examples in kubectl's style.
        let summary = r.stdout.lines().next().unwrap_or_default();
        assert!(
            !summary.is_empty() && !summary.ends_with('.'),
            "{sub}: {summary:?}"
        );
        assert!(
            r.stdout.contains("\nExamples:\n  # "),
            "{sub} has no examples"
        );
        insta::assert_snapshot!(format!("help_{sub}"), transcript(&r));
    }
}

#[test]
fn usage_errors_are_pinned_and_exit_2() {
    let cases: [(&str, &[&str]); 5] = [
        ("unknown_flag", &["create", "--to", "./b", "--bogus"]),
        ("bad_output", &["list", "./b", "-o", "xml"]),
        ("missing_to", &["create", "data-orders-db-0"]),
        ("missing_shell", &["completion"]),
        ("unknown_subcommand", &["backup"]),
    ];
    for (name, args) in cases {
        let r = plugin(args);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{name}: usage errors go to stderr");
        insta::assert_snapshot!(format!("usage_{name}"), transcript(&r));
    }
}

#[test]
fn version_names_version_commit_and_target() {
    let json = plugin(&["version", "-o", "json"]);
    assert_eq!(json.code, 0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["target"], env!("PVBACKUP_TARGET"));
    let commit = v["gitCommit"].as_str().unwrap();
    // In a git checkout the commit is HEAD's (build.rs reruns when HEAD moves).
    if let Ok(out) = Command::new("git")
        .current_dir(repo())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
    {
        if out.status.success() {
            assert_eq!(commit, String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    let line = format!(
        "kubectl-pvbackup {} (commit {commit}, {})\n",
        env!("CARGO_PKG_VERSION"),
        env!("PVBACKUP_TARGET")
    );
    assert_eq!(plugin(&["version"]).stdout, line);
    assert_eq!(plugin(&["--version"]).stdout, line);
    let yaml: serde_json::Value =
        serde_yaml::from_str(&plugin(&["version", "-o", "yaml"]).stdout).unwrap();
    assert_eq!(yaml, v);
}

#[test]
fn committed_completions_are_what_the_binary_prints() {
    for (shell, path) in xtask::docs::COMPLETIONS {
        let name = format!("{shell:?}").to_lowercase();
        let r = plugin(&["completion", &name]);
        assert_eq!(r.code, 0);
        let committed = std::fs::read_to_string(repo().join(path)).unwrap_or_default();
        assert!(
            committed == r.stdout,
            "{path} differs from `kubectl pvbackup completion {name}`: run `{}` and commit the result",
            xtask::docs::REGENERATE
        );
    }
}

#[test]
fn committed_man_pages_match_the_definitions() {
    let stale = xtask::docs::stale(repo());
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the clap definitions: run `{}` and commit the result",
        xtask::docs::REGENERATE
    );
    let pages = xtask::docs::man_pages();
    let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"kubectl-pvbackup.1"));
    for sub in subcommands() {
        assert!(
            names.contains(&format!("kubectl-pvbackup-{sub}.1").as_str()),
            "{sub}"
        );
    }
    let create = String::from_utf8_lossy(
        &pages
            .iter()
            .find(|(n, _)| n == "kubectl-pvbackup-create.1")
            .unwrap()
            .1,
    )
    .into_owned();
    // Examples unfilled, so troff keeps one command per line; roff escapes dashes.
    assert!(create.contains(".SH EXAMPLES\n.nf\n"), "{create}");
    assert!(create.contains("kubectl pvbackup create \\-n shop \\-\\-to ./backups\n"));
}

#[test]
fn the_plugin_completion_script_is_an_executable_one_liner() {
    use std::os::unix::fs::PermissionsExt;
    let path = repo().join(xtask::docs::PLUGIN_COMPLETION);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "{} must be executable", path.display());
    let text = std::fs::read_to_string(&path).unwrap();
    let code: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(
        code,
        vec!["exec kubectl-pvbackup __complete \"$@\" 2>/dev/null"]
    );
}

fn sha256_hex(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The release archive, built from this test's binary by the function `cargo xtask release`
/// uses (a release build would take minutes), rendered into a manifest, installed the way
/// Krew does into a fresh HOME, and run through kubectl's plugin discovery.
#[test]
fn a_release_archive_installs_like_krew_and_runs_through_kubectl() {
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");
    let linux = PLATFORMS[0];
    assert_eq!((linux.os, linux.arch), ("linux", "amd64"));
    let version = kubectl_pvbackup::cmd::version::VERSION;
    let binary = Path::new(env!("CARGO_BIN_EXE_kubectl-pvbackup"));
    let archive = package::build_archive(binary, linux, version, repo(), &dist, 0).unwrap();
    assert_eq!(
        archive.path.file_name().unwrap().to_string_lossy(),
        format!("kubectl-pvbackup-v{version}-linux-amd64.tar.gz")
    );

    // What the archive holds: the binary (executable, byte for byte), LICENSE, README and
    // every committed completion and man page.
    let mut listed = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&archive.path).unwrap(),
    ));
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        if name == "kubectl-pvbackup" {
            assert_eq!(mode, 0o755);
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            assert!(bytes == std::fs::read(binary).unwrap(), "binary differs");
        }
        listed.push(name);
    }
    let mut want = vec![
        "kubectl-pvbackup".to_string(),
        "LICENSE".into(),
        "README.md".into(),
        "completions/".into(),
        "man/".into(),
    ];
    for dir in ["completions", "man"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            want.push(format!(
                "{dir}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    listed.sort();
    want.sort();
    assert_eq!(listed, want);

    // The release step refuses a manifest while platforms have no archive…
    let template = std::fs::read_to_string(repo().join(krew::TEMPLATE)).unwrap();
    let pair = [(linux, archive.clone())];
    let refused = krew::render(&template, version, &pair, false, &dist).unwrap_err();
    for p in &PLATFORMS[1..] {
        assert!(refused.to_string().contains(&p.label()), "{refused}");
    }
    // …and, told to leave them out, renders one that Krew's checks accept.
    let manifest_text = krew::render(&template, version, &pair, true, &dist).unwrap();
    let manifest = krew::parse(&manifest_text, false).unwrap();
    assert_eq!(manifest.spec.version, format!("v{version}"));
    assert_eq!(manifest.spec.platforms.len(), 1);
    assert_eq!(manifest.spec.platforms[0].sha256, sha256_hex(&archive.path));

    // Krew's layout in a fresh HOME.
    let home = work.path().join("home");
    let krew_root = home.join(".krew");
    let link = krew::install(&manifest, &archive.path, &krew_root, "linux", "amd64").unwrap();
    let store = krew_root.join(format!("store/pvbackup/v{version}"));
    assert_eq!(link, krew_root.join("bin/kubectl-pvbackup"));
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new(&format!("../store/pvbackup/v{version}/kubectl-pvbackup"))
    );
    for f in [
        "kubectl-pvbackup",
        "LICENSE",
        "README.md",
        "completions/kubectl_complete-pvbackup",
        "completions/kubectl-pvbackup.bash",
        "man/kubectl-pvbackup.1",
    ] {
        assert!(store.join(f).is_file(), "{f} not installed");
    }
    assert!(krew_root.join("receipts/pvbackup.yaml").is_file());

    // kubectl finds the plugin on PATH and runs it.
    let kubectl = kubectl("1.33");
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        krew_root.join("bin").display()
    );
    let run = |args: &[&str]| {
        let out = Command::new(&kubectl)
            .args(args)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&["plugin", "list"]);
    assert!(listed.contains(&link.display().to_string()), "{listed}");
    let v: serde_json::Value =
        serde_json::from_str(&run(&["pvbackup", "version", "-o", "json"])).unwrap();
    assert_eq!(v["version"], version);
    assert_eq!(v["target"], linux.target);

    // The caveat's instructions: the shipped completion executable, copied next to the
    // link, gives kubectl plugin completion.
    std::fs::copy(
        store.join("completions/kubectl_complete-pvbackup"),
        krew_root.join("bin/kubectl_complete-pvbackup"),
    )
    .unwrap();
    let completed = run(&["__complete", "pvbackup", "ver"]);
    let names: Vec<&str> = completed
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(names, vec!["verify", "version", ":4"]);

    // Krew refuses an archive whose bytes are not the manifest's.
    let tampered = work.path().join("tampered.tar.gz");
    let mut bytes = std::fs::read(&archive.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&tampered, bytes).unwrap();
    let err = krew::install(
        &manifest,
        &tampered,
        &work.path().join("other-krew"),
        "linux",
        "amd64",
    )
    .unwrap_err();
    assert!(err.to_string().contains("checksum does not match"), "{err}");
}

/// The committed bash script, sourced by real bash, completes what `--help` lists (a guard on
/// the generator: clap_complete's bash output broke subcommands for hyphenated binary names).
#[test]
fn the_bash_script_completes_subcommands_flags_and_values() {
    let script = repo().join("completions/kubectl-pvbackup.bash");
    let complete = |words: &[&str]| -> Vec<String> {
        // COMP_WORDS is the line; the function gets (command, current word, previous word).
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let n = words.len() - 1;
        let program = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={n}; \
             _kubectl__pvbackup kubectl-pvbackup '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            quoted.join(" "),
            words[n],
            words[n - 1]
        );
        let out = Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(complete(&["kubectl-pvbackup", "cr"]), vec!["create"]);
    assert_eq!(
        complete(&["kubectl-pvbackup", "create", "--compression", ""]),
        vec!["gzip", "zstd", "none"]
    );
    assert_eq!(
        complete(&["kubectl-pvbackup", "restore", "--mo"]),
        vec!["--mode"]
    );
}

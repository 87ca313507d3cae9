//! Files generated from the plugin's clap definitions: shell completions and man pages. The
//! committed copies under `completions/` and `man/` must equal these (a test checks).

use std::path::PathBuf;

use clap::CommandFactory;
use kubectl_pvbackup::cli::{Cli, CompletionShell};
use kubectl_pvbackup::cmd::completion;
use kubectl_pvbackup::cmd::version::VERSION;

/// Where each shell's script is committed, relative to the repository root.
pub const COMPLETIONS: [(CompletionShell, &str); 4] = [
    (CompletionShell::Bash, "completions/kubectl-pvbackup.bash"),
    (CompletionShell::Zsh, "completions/_kubectl-pvbackup"),
    (CompletionShell::Fish, "completions/kubectl-pvbackup.fish"),
    (
        CompletionShell::Powershell,
        "completions/kubectl-pvbackup.ps1",
    ),
];

/// The executable kubectl (>= 1.26) runs to complete `kubectl pvbackup` arguments. Hand-written
/// (one line), not generated; shipped with the other completions.
pub const PLUGIN_COMPLETION: &str = "completions/kubectl_complete-pvbackup";

/// The command the "stale file" messages point to.
pub const REGENERATE: &str = "cargo xtask generate";

/// Every generated file: `(path relative to the repository root, contents)`.
pub fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = COMPLETIONS
        .iter()
        .map(|(shell, path)| (PathBuf::from(path), completion::script(*shell).into_bytes()))
        .collect();
    out.extend(
        man_pages()
            .into_iter()
            .map(|(name, bytes)| (PathBuf::from("man").join(name), bytes)),
    );
    out
}

/// One page per visible command: `kubectl-pvbackup.1`, `kubectl-pvbackup-create.1`, …
/// (clap_mangen's naming, as `git-commit(1)`). The version is the package version alone: the
/// commit hash in `--version` would make every commit's pages differ.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    let mut cmd = Cli::command()
        .version(VERSION)
        .disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    collect(&cmd, &mut out);
    out.sort();
    out
}

fn collect(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, out);
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("kubectl-pvbackup {VERSION}"))
        .manual("kubectl plugins");
    let mut bytes = Vec::new();
    render(&man, cmd, &mut bytes).expect("rendering into memory cannot fail");
    out.push((man.get_filename(), bytes));
}

/// clap_mangen's sections, except that the help's closing text becomes NOTES and EXAMPLES
/// with the examples unfilled: clap_mangen's EXTRA section would let troff run the example
/// lines together into one paragraph.
fn render(man: &clap_mangen::Man, cmd: &clap::Command, w: &mut Vec<u8>) -> std::io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(w)?;
    }
    if let Some(after) = cmd.get_after_help() {
        let after = after.to_string();
        let (notes, examples) = match after.split_once("Examples:\n") {
            Some((notes, examples)) => (notes.trim(), examples),
            None => (after.trim(), ""),
        };
        let mut roff = roff::Roff::new();
        if !notes.is_empty() {
            roff.control("SH", ["NOTES"]);
            for para in notes.split("\n\n") {
                roff.control("PP", [])
                    .text([roff::roman(para.replace('\n', " "))]);
            }
        }
        if !examples.is_empty() {
            roff.control("SH", ["EXAMPLES"]).control("nf", []);
            for line in examples.lines() {
                roff.text([roff::roman(line)]);
            }
            roff.control("fi", []);
        }
        roff.to_writer(w)?;
    }
    man.render_version_section(w)
}

/// Committed files under `root` that differ from what the definitions generate: missing or
/// different generated files, and man pages of commands that no longer exist.
pub fn stale(root: &std::path::Path) -> Vec<PathBuf> {
    let generated = generated();
    let mut out: Vec<PathBuf> = generated
        .iter()
        .filter(|(path, bytes)| std::fs::read(root.join(path)).ok().as_ref() != Some(bytes))
        .map(|(path, _)| path.clone())
        .collect();
    out.extend(
        leftover_man_pages(root, &generated)
            .into_iter()
            .map(|p| p.strip_prefix(root).map(|p| p.to_path_buf()).unwrap_or(p)),
    );
    out
}

fn leftover_man_pages(root: &std::path::Path, generated: &[(PathBuf, Vec<u8>)]) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(root.join("man")) else {
        return vec![];
    };
    let mut out: Vec<PathBuf> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let rel = p.strip_prefix(root).unwrap_or(p);
            !generated.iter().any(|(g, _)| g == rel)
        })
        .collect();
    out.sort();
    out
}

/// Writes every generated file under `root` and removes man pages of vanished commands.
pub fn write(root: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let generated = generated();
    for p in leftover_man_pages(root, &generated) {
        std::fs::remove_file(p)?;
    }
    let mut written = Vec::new();
    for (path, bytes) in generated {
        let full = root.join(&path);
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if std::fs::read(&full).ok().as_ref() != Some(&bytes) {
            std::fs::write(&full, &bytes)?;
            written.push(path);
        }
    }
    Ok(written)
}

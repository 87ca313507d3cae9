//! `kubectl pvbackup completion SHELL`: the shell completion script for `kubectl-pvbackup`,
//! generated from the clap definitions (the copies in `completions/` are checked against it).

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, CompletionShell};
use crate::exit::Failure;
use crate::output;

/// The name the scripts complete: the binary as it sits on PATH.
pub const BIN_NAME: &str = "kubectl-pvbackup";

pub fn script(shell: CompletionShell) -> String {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
        CompletionShell::Powershell => Shell::PowerShell,
    };
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN_NAME, &mut out);
    let script = String::from_utf8_lossy(&out).into_owned();
    if shell == Shell::Bash {
        // clap_complete's bash script spells a subcommand's state `kubectl__pvbackup__subcmd__X`
        // where it is set but `kubectl__subcmd__pvbackup__subcmd__X` where it is matched, when
        // the binary's name has a hyphen: nothing after the subcommand would complete
        // (clap-rs/clap#6421, open). Spell the match arms the way the state is set.
        script.replace(
            "kubectl__subcmd__pvbackup__subcmd__",
            "kubectl__pvbackup__subcmd__",
        )
    } else {
        script
    }
}

pub fn run(shell: CompletionShell) -> Result<(), Failure> {
    output::print_stdout(&script(shell))
}

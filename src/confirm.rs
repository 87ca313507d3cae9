//! Confirmations: a dialoguer prompt on a terminal; without one, a refusal (exit 4) that says
//! to pass --yes, so a script never hangs on a prompt.

use std::io::IsTerminal;

use crate::exit::Failure;

pub fn confirm(question: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(Failure::refused(format!(
            "{question} Refusing without a terminal to ask on; pass --yes to proceed in scripts."
        )));
    }
    let ok = dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()
        .map_err(|e| Failure::refused(format!("no confirmation: {e}")))?;
    if ok {
        Ok(())
    } else {
        Err(Failure::refused("aborted; nothing was changed"))
    }
}

/// Asks the user to type `expected` (e.g. the PVC name) before a destructive step.
pub fn confirm_typed(question: &str, expected: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(Failure::refused(format!(
            "{question} Refusing without a terminal to ask on; pass --yes to proceed in scripts."
        )));
    }
    let typed: String = dialoguer::Input::new()
        .with_prompt(format!("{question} Type {expected:?} to confirm"))
        .allow_empty(true)
        .interact_text()
        .map_err(|e| Failure::refused(format!("no confirmation: {e}")))?;
    if typed.trim() == expected {
        Ok(())
    } else {
        Err(Failure::refused(format!(
            "you typed {typed:?}, not {expected:?}; aborted, nothing was changed"
        )))
    }
}

/// A second confirmation for a step that cannot be undone: `warning` in bold red on its own
/// lines, then the user types `expected` (a word unlike the first prompt's answer, so that a
/// practised Enter-and-name does not carry through).
pub fn confirm_loud(warning: &str, question: &str, expected: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(Failure::refused(format!(
            "{warning} Refusing without a terminal to ask on; pass --yes to proceed in scripts."
        )));
    }
    let style = dialoguer::console::Style::new().for_stderr().red().bold();
    eprintln!("\n{}\n", style.apply_to(warning));
    confirm_typed(question, expected)
}

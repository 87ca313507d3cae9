//! Dynamic completion for kubectl's plugin completion (kubectl >= 1.26): which word is being
//! completed, decided from the clap definitions alone (pure, unit-tested). `cmd::complete`
//! fetches the candidates and prints them.
//!
//! Protocol, from kubectl's `pkg/cmd/plugin/plugin_completion.go` (kubernetes PR #105867):
//! `kubectl __complete pvbackup a b c` runs `kubectl_complete-pvbackup a b c` from PATH, with
//! the words after the plugin name as they are typed (flags included; an empty last word
//! means a new word is started). The program prints one candidate per line, optionally
//! `candidate<TAB>description`, and may end with `:<directive>`, Cobra's ShellCompDirective
//! bit set (`spf13/cobra` completions.go). A non-zero exit makes kubectl ignore the output,
//! and the program's stderr reaches the user's terminal, so errors are never printed.

use clap::{Arg, ArgAction, Command};

/// Cobra's ShellCompDirective bits (spf13/cobra, completions.go).
pub mod directive {
    /// Let the shell do its default (file completion when there are no candidates).
    pub const DEFAULT: u8 = 0;
    /// An error occurred; the shell ignores the candidates.
    pub const ERROR: u8 = 1;
    /// No space after a single candidate.
    pub const NO_SPACE: u8 = 2;
    /// No file completion, even without candidates.
    pub const NO_FILE_COMP: u8 = 4;
    /// Complete directory names only.
    pub const FILTER_DIRS: u8 = 16;
    /// Keep the candidates in the order given.
    pub const KEEP_ORDER: u8 = 32;
}

/// What the last word is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A subcommand name.
    Subcommand,
    /// A flag name (the word starts with `-`).
    Flag,
    /// The value of the flag with this clap id. `prefix` is what precedes the value inside
    /// the word (`--namespace=` when the value is attached), and every candidate carries it.
    Value { arg: String, prefix: String },
    /// The `index`-th positional argument of the subcommand.
    Positional { index: usize },
}

/// The flags that say where to look, as typed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub all_namespaces: bool,
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The subcommand typed so far (`create`, …), if any.
    pub subcommand: Option<String>,
    pub want: Want,
    /// The part of the last word to match candidates against.
    pub current: String,
    pub scope: Scope,
    /// Positional words already typed for the subcommand.
    pub positionals: Vec<String>,
    /// Ids of flags already given (so they are not offered twice).
    pub used: Vec<String>,
}

fn takes_value(a: &Arg) -> bool {
    a.get_action().takes_values() && !a.is_positional()
}

fn find_long<'a>(cmd: &'a Command, name: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|al| al.contains(&name))
    })
}

fn find_short(cmd: &Command, c: char) -> Option<&Arg> {
    cmd.get_arguments().find(|a| a.get_short() == Some(c))
}

/// Reads `words` (everything after `kubectl pvbackup`) against the command definition.
/// `root` must be built (`Command::build`) so global flags are known to subcommands.
pub fn analyze(root: &Command, words: &[String]) -> Request {
    let (current, done) = match words.split_last() {
        Some((last, rest)) => (last.clone(), rest),
        None => (String::new(), &[][..]),
    };
    let mut cmd = root;
    let mut sub: Option<String> = None;
    let mut scope = Scope::default();
    let mut positionals = Vec::new();
    let mut used = Vec::new();
    let mut after_dashes = false;
    // A flag whose value is the next word.
    let mut pending: Option<String> = None;

    let mut record = |id: &str, value: Option<&str>, scope: &mut Scope| {
        let v = value.map(str::to_string);
        match id {
            "kubeconfig" => scope.kubeconfig = v,
            "context" => scope.context = v,
            "namespace" => scope.namespace = v,
            "all_namespaces" => scope.all_namespaces = true,
            "from" => scope.from = v,
            _ => {}
        }
        used.push(id.to_string());
    };

    for w in done {
        if let Some(id) = pending.take() {
            record(&id, Some(w), &mut scope);
            continue;
        }
        if after_dashes {
            positionals.push(w.clone());
            continue;
        }
        if w == "--" {
            after_dashes = true;
        } else if let Some(long) = w.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if let Some(a) = find_long(cmd, name) {
                let id = a.get_id().as_str().to_string();
                if takes_value(a) && value.is_none() {
                    pending = Some(id);
                } else {
                    record(&id, value, &mut scope);
                }
            }
        } else if w.len() > 1 && w.starts_with('-') {
            // A cluster of short flags; the first one that takes a value takes the rest of
            // the word, or the next word.
            let chars: Vec<char> = w[1..].chars().collect();
            for (i, c) in chars.iter().enumerate() {
                let Some(a) = find_short(cmd, *c) else { break };
                let id = a.get_id().as_str().to_string();
                if takes_value(a) {
                    let rest: String = chars[i + 1..].iter().collect();
                    let rest = rest.strip_prefix('=').unwrap_or(&rest).to_string();
                    if rest.is_empty() {
                        pending = Some(id);
                    } else {
                        record(&id, Some(&rest), &mut scope);
                    }
                    break;
                }
                record(&id, None, &mut scope);
            }
        } else if sub.is_none() && cmd.has_subcommands() {
            if let Some(s) = cmd.find_subcommand(w) {
                sub = Some(s.get_name().to_string());
                cmd = s;
            } else {
                positionals.push(w.clone());
            }
        } else {
            positionals.push(w.clone());
        }
    }

    let (want, current) = if let Some(arg) = pending {
        (
            Want::Value {
                arg,
                prefix: String::new(),
            },
            current,
        )
    } else if after_dashes {
        (
            Want::Positional {
                index: positionals.len(),
            },
            current,
        )
    } else if let Some((name, value)) = current.strip_prefix("--").and_then(|l| l.split_once('=')) {
        match find_long(cmd, name).filter(|a| takes_value(a)) {
            Some(a) => (
                Want::Value {
                    arg: a.get_id().as_str().to_string(),
                    prefix: format!("--{name}="),
                },
                value.to_string(),
            ),
            None => (Want::Flag, current.clone()),
        }
    } else if current.starts_with('-') {
        (Want::Flag, current)
    } else if sub.is_none() && cmd.has_subcommands() {
        (Want::Subcommand, current)
    } else {
        (
            Want::Positional {
                index: positionals.len(),
            },
            current,
        )
    };
    Request {
        subcommand: sub,
        want,
        current,
        scope,
        positionals,
        used,
    }
}

/// The command a request is about: the subcommand if one was typed, else the root.
pub fn command_for<'a>(root: &'a Command, req: &Request) -> &'a Command {
    req.subcommand
        .as_deref()
        .and_then(|s| root.find_subcommand(s))
        .unwrap_or(root)
}

/// `--long<TAB>help` for every visible flag of `cmd` not given yet (repeatable ones always).
pub fn flag_candidates(cmd: &Command, req: &Request) -> Vec<String> {
    let mut out = Vec::new();
    for a in cmd.get_arguments() {
        if a.is_hide_set() || a.is_positional() {
            continue;
        }
        let repeatable = matches!(a.get_action(), ArgAction::Count | ArgAction::Append);
        if !repeatable && req.used.iter().any(|u| u == a.get_id().as_str()) {
            continue;
        }
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        if let Some(l) = a.get_long() {
            out.push(with_help(&format!("--{l}"), &help));
        }
        // Short forms only when the word is a lone dash, as Cobra does.
        if req.current == "-" {
            if let Some(s) = a.get_short() {
                out.push(with_help(&format!("-{s}"), &help));
            }
        }
    }
    filter(out, &req.current)
}

/// The declared values of an argument (value enums), with their help.
pub fn possible_values(a: &Arg) -> Vec<String> {
    a.get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| {
            with_help(
                v.get_name(),
                &v.get_help().map(|h| h.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Subcommand names with their one-line summary.
pub fn subcommand_candidates(root: &Command, current: &str) -> Vec<String> {
    let out = root
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| {
            with_help(
                s.get_name(),
                &s.get_about().map(|h| h.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    filter(out, current)
}

/// `candidate<TAB>description`, the description cut to its first line (a newline would start
/// a new candidate).
pub fn with_help(candidate: &str, help: &str) -> String {
    let help = help.lines().next().unwrap_or_default().trim();
    if help.is_empty() {
        candidate.to_string()
    } else {
        format!("{candidate}\t{help}")
    }
}

/// Keeps the candidates that start with what is typed. Cobra programs filter themselves; the
/// shells' scripts filter again, which is harmless.
pub fn filter(candidates: Vec<String>, current: &str) -> Vec<String> {
    candidates
        .into_iter()
        .filter(|c| c.starts_with(current))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn req(line: &[&str]) -> Request {
        let mut root = crate::cli::Cli::command();
        root.build();
        let words: Vec<String> = line.iter().map(|s| s.to_string()).collect();
        analyze(&root, &words)
    }

    #[test]
    fn first_word_is_a_subcommand() {
        let r = req(&[""]);
        assert_eq!(r.want, Want::Subcommand);
        let r = req(&["cr"]);
        assert_eq!((r.want, r.current.as_str()), (Want::Subcommand, "cr"));
        // Global flags may come first.
        let r = req(&["-n", "shop", ""]);
        assert_eq!(r.want, Want::Subcommand);
        assert_eq!(r.scope.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn flag_values_in_every_spelling() {
        let value = |arg: &str, prefix: &str| Want::Value {
            arg: arg.into(),
            prefix: prefix.into(),
        };
        assert_eq!(req(&["create", "-n", ""]).want, value("namespace", ""));
        assert_eq!(
            req(&["create", "--namespace", "sh"]).want,
            value("namespace", "")
        );
        let r = req(&["create", "--namespace=sh"]);
        assert_eq!(r.want, value("namespace", "--namespace="));
        assert_eq!(r.current, "sh");
        assert_eq!(
            req(&["restore", "x", "--to-pvc", ""]).want,
            value("to_pvc", "")
        );
        assert_eq!(req(&["create", "-o", ""]).want, value("output", ""));
    }

    #[test]
    fn scope_is_read_from_any_spelling() {
        let r = req(&[
            "--kubeconfig=/k",
            "restore",
            "--context",
            "prod",
            "-nshop",
            "--from",
            "./b",
            "",
        ]);
        assert_eq!(r.subcommand.as_deref(), Some("restore"));
        assert_eq!(r.want, Want::Positional { index: 0 });
        assert_eq!(
            r.scope,
            Scope {
                kubeconfig: Some("/k".into()),
                context: Some("prod".into()),
                namespace: Some("shop".into()),
                all_namespaces: false,
                from: Some("./b".into()),
            }
        );
        let r = req(&["create", "-A", "data-a", ""]);
        assert!(r.scope.all_namespaces);
        assert_eq!(r.positionals, vec!["data-a".to_string()]);
        assert_eq!(r.want, Want::Positional { index: 1 });
    }

    #[test]
    fn flags_are_offered_once() {
        let mut root = crate::cli::Cli::command();
        root.build();
        let words: Vec<String> = ["create", "--to", "./b", "--"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = analyze(&root, &words);
        // `--` alone is "everything after is positional", but as the word being completed
        // it is the start of a flag.
        assert_eq!(r.want, Want::Flag);
        let flags = flag_candidates(command_for(&root, &r), &r);
        let names: Vec<&str> = flags
            .iter()
            .map(|f| f.split('\t').next().unwrap())
            .collect();
        assert!(names.contains(&"--compression"));
        assert!(names.contains(&"--namespace"));
        assert!(
            !names.contains(&"--to"),
            "--to was given already: {names:?}"
        );
        assert!(!names.iter().any(|n| !n.starts_with("--")));
    }

    #[test]
    fn subcommands_come_with_their_summary() {
        let root = crate::cli::Cli::command();
        let subs = subcommand_candidates(&root, "");
        assert!(subs.iter().any(|s| s.starts_with("create\t")));
        assert_eq!(
            subcommand_candidates(&root, "ve"),
            vec![
                "verify\tCheck an archive against its manifest (offline, no cluster needed)"
                    .to_string(),
                "version\tPrint version, git commit and build target".to_string(),
            ]
        );
    }
}

//! `kubectl pvbackup prune DEST`: removes the complete backups a retention policy
//! ([`crate::retention`]) does not keep, per namespace/PVC, and the leftovers of interrupted
//! backups untouched for `--older-than` (found and removed by `destination::cleanup`, the
//! mechanism `cleanup --to` uses).
//!
//! Order of deletion within a backup: the header `<pvc>.manifest.json` first (the commit
//! marker: without it `list` shows the backup INCOMPLETE and `restore` refuses it), then the
//! entries stream, then the archive. A prune stopped between two deletes therefore never
//! leaves a half-gone backup listed as complete; what it leaves is an archive without a
//! manifest, which the next `prune` or `cleanup --to` removes.

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::cmd::list::group_keys;
use crate::destination::{self, cleanup, Destination};
use crate::exit::Failure;
use crate::manifest;
use crate::output;
use crate::retention::{self, Candidate, Policy, Reason};

/// `prune DEST`, as a plan.
pub struct PrunePlan {
    pub dest: String,
    pub store: destination::StoreOptions,
    pub policy: Policy,
    pub older_than: std::time::Duration,
    pub dry_run: bool,
    pub yes: bool,
    pub output: OutputFormat,
}

/// What happens to a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Keep,
    WouldRemove,
    Removed,
    Failed,
    /// Its manifest cannot be read: the policy cannot date it, so it is left alone.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrunedBackup {
    pub id: String,
    pub namespace: String,
    pub pvc: String,
    pub created: Option<String>,
    pub action: Action,
    pub reasons: Vec<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Header, entries stream (when stored), archive: the order of deletion.
    #[serde(skip)]
    keys: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub destination: String,
    pub dry_run: bool,
    pub policy: Policy,
    pub backups: Vec<PrunedBackup>,
    /// Leftovers of interrupted backups, as `cleanup --to` reports them.
    pub leftovers: cleanup::Report,
}

pub fn run(plan: &PrunePlan) -> Result<(), Failure> {
    if plan.policy.is_empty() {
        return Err(Failure::usage(
            "prune needs a policy: pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly with a count above 0 (e.g. --keep-last 2 --keep-daily 7)",
        ));
    }
    let dest = destination::parse_with(&plan.dest, &plan.store)?;
    // Leftovers are looked at before anything is removed, so that what this prune itself
    // deletes is never mistaken for one.
    let leftovers = cleanup::find(dest.as_ref(), plan.older_than, chrono::Utc::now())?;
    let mut backups = decide(dest.as_ref(), &plan.policy)?;
    let to_remove = backups
        .iter()
        .filter(|b| b.action == Action::WouldRemove)
        .count();
    let stale = leftovers.stale();
    if to_remove + stale > 0 && !plan.dry_run && !plan.yes {
        crate::confirm::confirm(&format!(
            "Remove {to_remove} backup(s) the policy does not keep and {stale} leftover(s) of interrupted backups (untouched for {} or more) at {}?",
            leftovers.older_than,
            dest.describe()
        ))?;
    }
    let leftovers = if plan.dry_run {
        leftovers
    } else {
        for b in backups
            .iter_mut()
            .filter(|b| b.action == Action::WouldRemove)
        {
            remove(dest.as_ref(), b);
        }
        cleanup::apply(dest.as_ref(), leftovers)
    };
    let report = Report {
        destination: dest.describe(),
        dry_run: plan.dry_run,
        policy: plan.policy,
        backups,
        leftovers,
    };
    match plan.output {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(plan.output, &report)?,
        _ => {
            for note in &report.leftovers.notes {
                eprintln!("note: {note}");
            }
            output::print_stdout(&table(&report))?;
        }
    }
    let failed: Vec<String> = report
        .backups
        .iter()
        .filter(|b| b.action == Action::Failed)
        .map(|b| {
            format!(
                "{} {}/{}: {}",
                b.id,
                b.namespace,
                b.pvc,
                b.error.as_deref().unwrap_or_default()
            )
        })
        .chain(
            report
                .leftovers
                .failed()
                .map(|i| format!("{}: {}", i.location, i.error.as_deref().unwrap_or_default())),
        )
        .collect();
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(Failure::runtime(format!(
            "{} removal(s) at {} failed; the first: {first}. Fix that, then run the same prune again (a backup whose manifest is already gone is removed as a leftover)",
            failed.len(),
            report.destination
        ))),
    }
}

/// Reads every backup's header (the header alone, as `list` does) and applies the policy.
fn decide(dest: &dyn Destination, policy: &Policy) -> Result<Vec<PrunedBackup>, Failure> {
    let keys = dest.list("")?;
    let stored: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for ((id, ns, pvc), (manifest_key, archive_key)) in group_keys(&keys) {
        // Without both a manifest and an archive it is not a complete backup: the policy does
        // not count it, and it is a leftover for `cleanup::find` (or someone's hand edit).
        let (Some(manifest_key), Some(archive_key)) = (manifest_key, archive_key) else {
            continue;
        };
        let read = dest
            .open(&manifest_key)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                manifest::read_summary(r)
                    .map(|s| s.created)
                    .map_err(|e| match e {
                        manifest::SummaryError::Read(e) => {
                            format!("cannot read {}: {e}", dest.locate(&manifest_key))
                        }
                        manifest::SummaryError::Invalid(e) => format!("invalid manifest: {e}"),
                    })
            });
        let dir = &manifest_key[..manifest_key.len() - (pvc.len() + ".manifest.json".len())];
        let mut backup_keys = vec![manifest_key.clone()];
        let age = crate::encryption::AGE_SUFFIX;
        backup_keys.extend(
            ["", ".gz", ".zst"]
                .iter()
                .flat_map(|ext| ["", age].map(|a| format!("{ext}{a}")))
                .map(|ext| format!("{dir}{pvc}{}{ext}", manifest::ENTRIES_SUFFIX))
                .chain([format!("{dir}{pvc}{}", crate::encryption::DETAILS_SUFFIX)])
                .filter(|k| stored.contains(k.as_str())),
        );
        backup_keys.push(archive_key);
        let backup = PrunedBackup {
            id: id.clone(),
            namespace: ns.clone(),
            pvc: pvc.clone(),
            created: None,
            action: Action::Skipped,
            reasons: Vec::new(),
            error: None,
            keys: backup_keys,
        };
        match read {
            Ok(created) => candidates.push((
                Candidate {
                    id,
                    namespace: ns,
                    pvc,
                    created,
                },
                backup,
            )),
            Err(why) => skipped.push(PrunedBackup {
                error: Some(format!(
                    "{why}; prune cannot date it and leaves it alone: repair or delete {} by hand",
                    dest.locate(&backup.keys[0])
                )),
                ..backup
            }),
        }
    }
    let plain: Vec<Candidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
    let mut out: Vec<PrunedBackup> = retention::plan(policy, &plain)
        .into_iter()
        .map(|d| {
            let (c, b) = &candidates[d.index];
            PrunedBackup {
                created: Some(c.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                action: if d.keep() {
                    Action::Keep
                } else {
                    Action::WouldRemove
                },
                reasons: d.reasons,
                ..b.clone()
            }
        })
        .collect();
    out.extend(skipped);
    Ok(out)
}

/// Deletes one backup, header first (see the module docs); stops at the first failure.
fn remove(dest: &dyn Destination, b: &mut PrunedBackup) {
    for key in &b.keys {
        if let Err(e) = dest.remove(key) {
            b.action = Action::Failed;
            b.error = Some(format!("cannot remove {}: {e}", dest.locate(key)));
            return;
        }
    }
    b.action = Action::Removed;
}

fn table(report: &Report) -> String {
    use cleanup::Outcome;
    if report.backups.is_empty() && report.leftovers.items.is_empty() {
        return format!("no backups at {}\n", report.destination);
    }
    let mut rows: Vec<Vec<String>> = report
        .backups
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                format!("{}/{}", b.namespace, b.pvc),
                b.created.clone().unwrap_or_else(|| "-".into()),
                match b.action {
                    Action::Keep => "keep",
                    Action::WouldRemove => "would remove",
                    Action::Removed => "removed",
                    Action::Failed => "FAILED",
                    Action::Skipped => "skipped",
                }
                .into(),
                match b.action {
                    Action::Failed | Action::Skipped => b.error.clone().unwrap_or_default(),
                    _ if b.reasons.is_empty() => "not kept by the policy".into(),
                    _ => b
                        .reasons
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            ]
        })
        .collect();
    for i in &report.leftovers.items {
        let mut parts = i.key.splitn(3, '/');
        let id = parts.next().unwrap_or_default().to_string();
        let ns = parts.next().unwrap_or_default();
        let file = parts.next().unwrap_or_default();
        let kind = i.kind.label();
        rows.push(vec![
            id,
            format!("{ns}/{file}"),
            "-".into(),
            match i.outcome {
                Outcome::Removed => "removed",
                Outcome::WouldRemove => "would remove",
                Outcome::Kept => "keep",
                Outcome::Failed => "FAILED",
            }
            .into(),
            match i.outcome {
                Outcome::Kept => format!(
                    "incomplete ({kind}), younger than {}: maybe still being written",
                    report.leftovers.older_than
                ),
                Outcome::Failed => i.error.clone().unwrap_or_default(),
                _ => format!(
                    "incomplete ({kind}), untouched for {} or more",
                    report.leftovers.older_than
                ),
            },
        ]);
    }
    output::table(
        &["backup", "namespace/pvc", "created", "action", "reasons"],
        rows,
    ) + "\n"
}

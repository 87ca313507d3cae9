//! `kubectl pvbackup cleanup`: delete helper pods a killed client left behind (they also
//! delete themselves at their activeDeadlineSeconds).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};

use crate::cli::OutputFormat;
use crate::connect::{explain, Connection};
use crate::exit::Failure;
use crate::helper_pod::{APP_NAME, LABEL_MANAGED_BY};
use crate::output;

pub async fn run(conn: &Connection, yes: bool, format: OutputFormat) -> Result<(), Failure> {
    let api: Api<Pod> = if conn.all_namespaces {
        Api::all(conn.client.clone())
    } else {
        Api::namespaced(conn.client.clone(), &conn.namespace)
    };
    let pods = api
        .list(&ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={APP_NAME}")))
        .await
        .map_err(|e| explain("listing helper pods", &e))?
        .items;
    let names: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    if !names.is_empty() && !yes {
        crate::confirm::confirm(&format!(
            "Delete {} helper pod(s): {}?",
            names.len(),
            names
                .iter()
                .map(|(n, p)| format!("{n}/{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
    }
    for (ns, name) in &names {
        let a: Api<Pod> = Api::namespaced(conn.client.clone(), ns);
        match a
            .delete(name, &DeleteParams::default().grace_period(1))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(explain(&format!("deleting helper pod {ns}/{name}"), &e)),
        }
    }
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(
            format,
            &serde_json::json!({"deleted": names.iter().map(|(n, p)| format!("{n}/{p}")).collect::<Vec<_>>()}),
        ),
        _ => output::print_stdout(&if names.is_empty() {
            "no helper pods found\n".to_string()
        } else {
            names
                .iter()
                .map(|(n, p)| format!("pod/{p} deleted (namespace {n})\n"))
                .collect()
        }),
    }
}

/// `cleanup --to DEST`, as a plan.
pub struct DestinationPlan {
    pub dest: String,
    pub store: crate::destination::StoreOptions,
    pub older_than: std::time::Duration,
    pub dry_run: bool,
    pub yes: bool,
    pub output: OutputFormat,
}

/// Removes what interrupted backups left at a destination (`destination::cleanup`), after a
/// confirmation, and reports each leftover: removed, would be removed, kept (too young) or
/// failed. Exit 1 when any removal failed.
pub fn run_destination(plan: &DestinationPlan) -> Result<(), Failure> {
    use crate::destination::{self, cleanup};
    let dest = destination::parse_with(&plan.dest, &plan.store)?;
    let found = cleanup::find(dest.as_ref(), plan.older_than, chrono::Utc::now())?;
    let stale = found.stale();
    if stale > 0 && !plan.dry_run && !plan.yes {
        crate::confirm::confirm(&format!(
            "Remove {stale} leftover(s) of interrupted backups at {} (untouched for {} or more)?",
            found.destination, found.older_than
        ))?;
    }
    let report = if plan.dry_run {
        found
    } else {
        cleanup::apply(dest.as_ref(), found)
    };
    match plan.output {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(plan.output, &report)?,
        _ => {
            for note in &report.notes {
                eprintln!("note: {note}");
            }
            output::print_stdout(&destination_table(&report))?;
        }
    }
    let failed: Vec<&cleanup::Item> = report.failed().collect();
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(Failure::runtime(format!(
            "{} of {stale} leftover(s) at {} could not be removed; the first: {}. Fix that, then run the same cleanup again",
            failed.len(),
            report.destination,
            first.error.as_deref().unwrap_or("unknown error")
        ))),
    }
}

fn destination_table(report: &crate::destination::cleanup::Report) -> String {
    use crate::destination::cleanup::{Leftover, Outcome};
    if report.items.is_empty() {
        return format!(
            "no leftovers of interrupted backups at {}\n",
            report.destination
        );
    }
    let rows = report
        .items
        .iter()
        .map(|i| {
            let upload = i.kind == Leftover::MultipartUpload;
            vec![
                match i.kind {
                    Leftover::PartialFile => "partial file",
                    Leftover::MultipartUpload => "multipart upload",
                    Leftover::ArchiveWithoutManifest => "archive without manifest",
                }
                .to_string(),
                i.location.clone(),
                age(i.age_seconds),
                i.size
                    .map(output::human_bytes)
                    .unwrap_or_else(|| "-".into()),
                match (i.outcome, upload) {
                    (Outcome::Removed, false) => "removed".into(),
                    (Outcome::Removed, true) => "aborted".into(),
                    (Outcome::WouldRemove, false) => "would remove".into(),
                    (Outcome::WouldRemove, true) => "would abort".into(),
                    (Outcome::Kept, _) => format!("kept: younger than {}", report.older_than),
                    (Outcome::Failed, _) => {
                        format!("FAILED: {}", i.error.as_deref().unwrap_or_default())
                    }
                },
            ]
        })
        .collect();
    output::table(&["kind", "location", "age", "size", "action"], rows) + "\n"
}

/// An age as kubectl shows one: `45s`, `12m`, `5h`, `3d`.
fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod destination_tests {
    use super::age;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(25 * 3600), "25h");
        assert_eq!(age(9 * 86400 + 5), "9d");
    }
}

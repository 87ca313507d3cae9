//! `kubectl pvbackup discover`: mesh pods and the PVCs they mount.

use crate::cli::OutputFormat;
use crate::collect::collect_inventory;
use crate::connect::Connection;
use crate::discover::{extract_rows, DiscoverOptions, VolumeRow};
use crate::exit::Failure;
use crate::output;

pub struct DiscoverPlan {
    pub all_pods: bool,
    pub selector: Option<String>,
    pub output: OutputFormat,
}

pub async fn run(conn: &Connection, plan: &DiscoverPlan) -> Result<(), Failure> {
    let inv = collect_inventory(conn, plan.selector.as_deref()).await?;
    let mut rows = extract_rows(
        &inv.pods,
        &inv.pvcs,
        &inv.namespaces,
        &DiscoverOptions {
            all_pods: plan.all_pods,
        },
    );
    if plan.selector.is_some() {
        // A label selector narrows pods; unattached PVCs are not pods and would only add noise.
        rows.retain(|r| r.pod.is_some());
    }
    match plan.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            output::structured(plan.output, &serde_json::json!({ "items": rows }))
        }
        OutputFormat::Table | OutputFormat::Wide => {
            if rows.is_empty() {
                eprintln!("No mesh workloads with volumes found in {}. Try -A, or --all-pods to include pods without a proxy.", scope(conn));
                return Ok(());
            }
            output::print_stdout(
                &(render(
                    &rows,
                    plan.output == OutputFormat::Wide,
                    conn.all_namespaces,
                ) + "\n"),
            )
        }
    }
}

fn scope(conn: &Connection) -> String {
    if conn.all_namespaces {
        "any namespace".into()
    } else {
        format!("namespace {}", conn.namespace)
    }
}

pub fn render(rows: &[VolumeRow], wide: bool, with_namespace: bool) -> String {
    let dash = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("-").to_string();
    let mut headers = vec![];
    if with_namespace {
        headers.push("namespace");
    }
    headers.extend([
        "pod",
        "mesh",
        "proxy",
        "pvc",
        "capacity",
        "access",
        "storageclass",
        "status",
    ]);
    if wide {
        headers.extend(["volume-mode", "node", "read-only"]);
    }
    let body = rows
        .iter()
        .map(|r| {
            let mut v = vec![];
            if with_namespace {
                v.push(r.namespace.clone());
            }
            let proxy = match (&r.proxy_container, &r.proxy_version, &r.proxy_mode) {
                (Some(c), Some(ver), _) => format!("{c}:{ver}"),
                (Some(c), None, _) => c.clone(),
                (None, _, Some(m)) => m.as_str().to_string(),
                _ => "-".into(),
            };
            let status = if r.pod.is_none() {
                "unattached".to_string()
            } else if !r.pvc_exists {
                "pvc-missing".to_string()
            } else {
                dash(r.phase.as_deref())
            };
            v.extend([
                dash(r.pod.as_deref()),
                r.mesh.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                proxy,
                r.pvc.clone(),
                dash(r.capacity.as_deref()),
                r.access_modes_short(),
                dash(r.storage_class.as_deref()),
                status,
            ]);
            if wide {
                v.extend([
                    dash(r.volume_mode.as_deref()),
                    dash(r.node.as_deref()),
                    r.read_only.to_string(),
                ]);
            }
            v
        })
        .collect();
    output::table(&headers, body)
}

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

//! `kubectl pvbackup schedule create|list|delete|run-now`: the objects of
//! [`crate::schedule`] applied, listed, removed and run.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::cli::OutputFormat;
use crate::connect::{explain, Connection};
use crate::exit::Failure;
use crate::output;
use crate::schedule::{self, SchedulePlan, LABEL_SCHEDULE, MANAGED_BY};

/// `--dry-run`: every object, as YAML documents (or a JSON `List`).
pub fn print_objects(plan: &SchedulePlan, out: OutputFormat) -> Result<(), Failure> {
    let objects = schedule::objects(plan);
    match out {
        OutputFormat::Json => output::structured(
            out,
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects}),
        ),
        _ => output::print_stdout(
            &schedule::to_yaml(&objects)
                .map_err(|e| Failure::runtime(format!("cannot render YAML: {e}")))?,
        ),
    }
}

fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, Failure> {
    serde_json::from_value(v.clone()).map_err(|e| {
        Failure::runtime(format!(
            "internal error: a schedule object does not fit its type: {e}"
        ))
    })
}

/// Creates one object; on a name clash, says which schedule is in the way.
async fn create_one<K>(
    api: &Api<K>,
    obj: &K,
    what: &str,
    plan: &SchedulePlan,
) -> Result<(), Failure>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Failure::runtime(format!(
            "{what} {} already exists in namespace {}: schedule {} exists (or another object has its name). Delete it first with `kubectl pvbackup schedule delete {} -n {}`",
            schedule::object_name(&plan.name), plan.namespace, plan.name, plan.name, plan.namespace
        ))
        .permanent()),
        Err(e) => Err(explain(&format!("creating {what} {}", schedule::object_name(&plan.name)), &e)),
    }
}

pub async fn create(
    conn: &Connection,
    plan: &SchedulePlan,
    out: OutputFormat,
) -> Result<(), Failure> {
    let objects = schedule::objects(plan);
    let ns = &plan.namespace;
    let c = &conn.client;
    let sa: ServiceAccount = typed(&objects[0])?;
    let role: Role = typed(&objects[1])?;
    let binding: RoleBinding = typed(&objects[2])?;
    let cron: CronJob = typed(&objects[3])?;
    let drill: Option<CronJob> = objects.get(4).map(typed).transpose()?;
    let name = schedule::object_name(&plan.name);
    let sa_api: Api<ServiceAccount> = Api::namespaced(c.clone(), ns);
    let role_api: Api<Role> = Api::namespaced(c.clone(), ns);
    let binding_api: Api<RoleBinding> = Api::namespaced(c.clone(), ns);
    let cron_api: Api<CronJob> = Api::namespaced(c.clone(), ns);
    // All or nothing: on a failure, exactly what this run created goes again, never an object
    // that was there before (a clash is a 409 and leaves it alone).
    let mut made = 0;
    let result = async {
        create_one(&sa_api, &sa, "ServiceAccount", plan).await?;
        made += 1;
        create_one(&role_api, &role, "Role", plan).await?;
        made += 1;
        create_one(&binding_api, &binding, "RoleBinding", plan).await?;
        made += 1;
        create_one(&cron_api, &cron, "CronJob", plan).await?;
        made += 1;
        if let Some(d) = &drill {
            create_one(&cron_api, d, "CronJob", plan).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let dp = DeleteParams::default();
        if made > 3 {
            let _ = cron_api.delete(&name, &dp).await;
        }
        if made > 2 {
            let _ = binding_api.delete(&name, &dp).await;
        }
        if made > 1 {
            let _ = role_api.delete(&name, &dp).await;
        }
        if made > 0 {
            let _ = sa_api.delete(&name, &dp).await;
        }
        return Err(e);
    }
    match out {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(
            out,
            &serde_json::json!({"schedule": plan.name, "namespace": ns, "cronJob": name,
                "drillCronJob": plan.drill.as_ref().map(|_| schedule::drill_name(&plan.name)),
                "serviceAccount": name, "role": name, "roleBinding": name}),
        ),
        _ => {
            let tz = plan
                .time_zone
                .as_ref()
                .map(|t| format!(" {t}"))
                .unwrap_or_default();
            let drill = plan
                .drill
                .as_ref()
                .map(|d| {
                    format!(
                        ", cronjob/{} ({}{tz}, drill)",
                        schedule::drill_name(&plan.name),
                        d.cron
                    )
                })
                .unwrap_or_default();
            output::print_stdout(&format!(
                "schedule {} created in namespace {ns}: cronjob/{name} ({}{tz}){drill}, serviceaccount/{name}, role/{name}, rolebinding/{name}\nRun it now: kubectl pvbackup schedule run-now {} -n {ns} --wait\n",
                plan.name, plan.cron, plan.name,
            ))
        }
    }
}

fn selector(name: &str) -> ListParams {
    ListParams::default().labels(&format!("{LABEL_SCHEDULE}={name}"))
}

/// Deletes every labelled object of schedule `name` (CronJob first, with its Jobs and pods in
/// the background); returns what it deleted.
async fn remove_objects(conn: &Connection, ns: &str, name: &str) -> Vec<String> {
    async fn each<K>(api: Api<K>, name: &str, kind: &str, dp: &DeleteParams, gone: &mut Vec<String>)
    where
        K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        if let Ok(list) = api.list(&selector(name)).await {
            for o in list.items {
                let n = o.meta().name.clone().unwrap_or_default();
                if api.delete(&n, dp).await.is_ok() {
                    gone.push(format!("{kind}/{n}"));
                }
            }
        }
    }
    let c = &conn.client;
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let mut gone = Vec::new();
    each(
        Api::<CronJob>::namespaced(c.clone(), ns),
        name,
        "cronjob",
        &dp,
        &mut gone,
    )
    .await;
    // Jobs `run-now` made belong to the CronJob too; a batch/v1 Job would orphan its pods
    // without Background.
    each(
        Api::<Job>::namespaced(c.clone(), ns),
        name,
        "job",
        &dp,
        &mut gone,
    )
    .await;
    each(
        Api::<RoleBinding>::namespaced(c.clone(), ns),
        name,
        "rolebinding",
        &dp,
        &mut gone,
    )
    .await;
    each(
        Api::<Role>::namespaced(c.clone(), ns),
        name,
        "role",
        &dp,
        &mut gone,
    )
    .await;
    each(
        Api::<ServiceAccount>::namespaced(c.clone(), ns),
        name,
        "serviceaccount",
        &dp,
        &mut gone,
    )
    .await;
    gone
}

pub async fn delete(conn: &Connection, name: &str) -> Result<(), Failure> {
    let ns = &conn.namespace;
    let cron: Api<CronJob> = Api::namespaced(conn.client.clone(), ns);
    let exists = cron
        .get_opt(&schedule::object_name(name))
        .await
        .map_err(|e| explain("reading the schedule's CronJob", &e))?;
    let gone = remove_objects(conn, ns, name).await;
    if exists.is_none() && gone.is_empty() {
        return Err(Failure::runtime(format!(
            "no schedule {name} in namespace {ns}; see `kubectl pvbackup schedule list -A`"
        ))
        .permanent());
    }
    // The Jobs' pods go in the background; wait so that "deleted" means gone.
    let pods: Api<Pod> = Api::namespaced(conn.client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(conn.client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left_pods = pods
            .list(&selector(name))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        let left_jobs = jobs
            .list(&selector(name))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if left_pods + left_jobs == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::runtime(format!(
                "schedule {name} deleted, but {left_jobs} job(s) and {left_pods} pod(s) of it are still going away after 2 minutes; check `kubectl get jobs,pods -n {ns} -l {LABEL_SCHEDULE}={name}`"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    output::print_stdout(&format!(
        "schedule {name} deleted from namespace {ns}: {}\n",
        gone.join(", ")
    ))
}

#[derive(Serialize)]
struct Row {
    namespace: String,
    name: String,
    /// `backup` (the schedule's CronJob) or `drill` (its --drill-cron CronJob).
    runs: &'static str,
    schedule: String,
    time_zone: Option<String>,
    suspended: bool,
    active: usize,
    last_schedule: Option<String>,
    last_success: Option<String>,
    destination: String,
}

fn row(cj: &CronJob) -> Row {
    let spec = cj.spec.clone().unwrap_or_default();
    let status = cj.status.clone().unwrap_or_default();
    let labels = cj.metadata.labels.clone().unwrap_or_default();
    let time = |t: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| t.0.to_string())
    };
    let name = labels.get(LABEL_SCHEDULE).cloned().unwrap_or_default();
    let runs = if cj.metadata.name.as_deref() == Some(schedule::drill_name(&name).as_str()) {
        "drill"
    } else {
        "backup"
    };
    Row {
        namespace: cj.metadata.namespace.clone().unwrap_or_default(),
        name,
        runs,
        schedule: spec.schedule,
        time_zone: spec.time_zone,
        suspended: spec.suspend.unwrap_or(false),
        active: status.active.map(|a| a.len()).unwrap_or(0),
        last_schedule: time(status.last_schedule_time),
        last_success: time(status.last_successful_time),
        destination: cj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(schedule::ANNOTATION_DESTINATION).cloned())
            .unwrap_or_default(),
    }
}

pub async fn list(conn: &Connection, out: OutputFormat) -> Result<(), Failure> {
    let api: Api<CronJob> = if conn.all_namespaces {
        Api::all(conn.client.clone())
    } else {
        Api::namespaced(conn.client.clone(), &conn.namespace)
    };
    let lp = ListParams::default().labels(&format!(
        "{}={MANAGED_BY},{LABEL_SCHEDULE}",
        crate::helper_pod::LABEL_MANAGED_BY
    ));
    let items = api
        .list(&lp)
        .await
        .map_err(|e| explain("listing CronJobs", &e))?
        .items;
    let rows: Vec<Row> = items.iter().map(row).collect();
    match out {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(out, &rows),
        _ => {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING);
            t.set_header([
                "NAMESPACE",
                "NAME",
                "RUNS",
                "SCHEDULE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "LAST SUCCESS",
                "DESTINATION",
            ]);
            for r in &rows {
                t.add_row([
                    r.namespace.clone(),
                    r.name.clone(),
                    r.runs.to_string(),
                    match &r.time_zone {
                        Some(tz) => format!("{} ({tz})", r.schedule),
                        None => r.schedule.clone(),
                    },
                    r.suspended.to_string(),
                    r.active.to_string(),
                    r.last_schedule.clone().unwrap_or_else(|| "-".into()),
                    r.last_success.clone().unwrap_or_else(|| "-".into()),
                    r.destination.clone(),
                ]);
            }
            if rows.is_empty() {
                eprintln!("no schedules");
                return Ok(());
            }
            output::print_stdout(&format!("{t}\n"))
        }
    }
}

fn job_finished(j: &Job) -> Option<(&'static str, String)> {
    let conds = j.status.as_ref()?.conditions.as_ref()?;
    conds
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some(("Complete", String::new())),
            "Failed" => Some((
                "Failed",
                format!(
                    "{}: {}",
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                ),
            )),
            _ => None,
        })
}

/// Starts a Job of schedule `name`'s backup CronJob, or of its drill CronJob with `drill`.
pub async fn run_now(
    conn: &Connection,
    name: &str,
    drill: bool,
    wait: Option<Duration>,
) -> Result<(), Failure> {
    let ns = &conn.namespace;
    let cron_name = if drill {
        schedule::drill_name(name)
    } else {
        schedule::object_name(name)
    };
    let crons: Api<CronJob> = Api::namespaced(conn.client.clone(), ns);
    let cj = crons
        .get_opt(&cron_name)
        .await
        .map_err(|e| explain("reading the schedule's CronJob", &e))?
        .ok_or_else(|| {
            Failure::runtime(if drill {
                format!(
                    "schedule {name} in namespace {ns} has no drill (no CronJob {cron_name}); create the schedule with --drill-cron, or see `kubectl pvbackup schedule list -A`"
                )
            } else {
                format!(
                    "no schedule {name} in namespace {ns} (no CronJob {cron_name}); see `kubectl pvbackup schedule list -A`"
                )
            })
            .permanent()
        })?;
    let jobs: Api<Job> = Api::namespaced(conn.client.clone(), ns);
    // Forbid means one run at a time, manual or not: the controller skips a scheduled start
    // while any Job of the CronJob runs, and so does run-now.
    let forbid = cj
        .spec
        .as_ref()
        .and_then(|s| s.concurrency_policy.as_deref())
        == Some("Forbid");
    if forbid {
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let running: Vec<String> = jobs
            .list(&selector(name))
            .await
            .map_err(|e| explain("listing the schedule's Jobs", &e))?
            .items
            .into_iter()
            .filter(|j| {
                j.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid)
                    && job_finished(j).is_none()
            })
            .filter_map(|j| j.metadata.name)
            .collect();
        if !running.is_empty() {
            return Err(Failure::runtime(format!(
                "schedule {name}{} is running (job {}) and its concurrency policy is Forbid: one run at a time. Wait for it (`kubectl get jobs -n {ns} -l {LABEL_SCHEDULE}={name}`), or delete that job to stop it",
                if drill { "'s drill" } else { "" },
                running.join(", ")
            ))
            .permanent());
        }
    }
    let cj_value = serde_json::to_value(&cj).map_err(|e| Failure::runtime(e.to_string()))?;
    let job: Job = typed(&schedule::manual_job(&cj_value))?;
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .map_err(|e| explain(&format!("creating a Job from cronjob/{cron_name}"), &e))?;
    let job_name = created.metadata.name.clone().unwrap_or_default();
    eprintln!("job {job_name} started in namespace {ns}");
    let Some(limit) = wait else {
        return output::print_stdout(&format!("job.batch/{job_name}\n"));
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let j = jobs
            .get_opt(&job_name)
            .await
            .map_err(|e| explain(&format!("reading job {job_name}"), &e))?;
        let Some(j) = j else {
            return Err(Failure::runtime(format!(
                "job {job_name} was deleted before it finished"
            )));
        };
        match job_finished(&j) {
            Some(("Complete", _)) => {
                return output::print_stdout(&format!("job.batch/{job_name} succeeded\n"))
            }
            Some((_, why)) => {
                return Err(Failure::runtime(format!(
                    "job {job_name} failed ({why}); see `kubectl logs -n {ns} job/{job_name} --all-containers`"
                )))
            }
            None => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::runtime(format!(
                "job {job_name} has not finished after {}; it keeps running (`kubectl get job -n {ns} {job_name}`)",
                humantime::format_duration(limit)
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

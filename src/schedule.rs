//! Schedules: what `schedule create` applies, built by pure functions from a plan.
//!
//! A schedule NAME in namespace NS is four objects, all named `pvbackup-NAME` and labelled
//! `pvbackup.dev/schedule=NAME` (so `schedule delete` removes exactly them, and the Jobs and
//! pods they made):
//! - a ServiceAccount (annotated for workload identity when asked: IRSA, Azure, GKE);
//! - a Role with the rows of the one permission table ([`crate::rbac`]) and a RoleBinding of
//!   it to the ServiceAccount: the least a backup of NS needs;
//! - a CronJob whose pod runs this plugin's own image: `create` (and, with `--keep-*`, `prune`
//!   after it, as the main container once the backup, an init container, succeeded), with the
//!   credentials Secret's keys as environment (`envFrom`);
//! - with `--drill-cron`, a second CronJob `pvbackup-NAME-drill` (same labels, ServiceAccount
//!   and credentials) whose pod runs `drill --latest NS/PVC` for each PVC of the schedule, one
//!   after the other (init containers, the last as the main container): a drill that finds a
//!   backup damaged (exit 3) or cannot run fails the Job and leaves the remaining PVCs undrilled.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::helper_pod::{LABEL_MANAGED_BY, LABEL_NAME};

pub const LABEL_SCHEDULE: &str = "pvbackup.dev/schedule";
pub const ANNOTATION_DESTINATION: &str = "pvbackup.dev/destination";
pub const MANAGED_BY: &str = "kubectl-pvbackup";
/// The repository of the plugin's image (Dockerfile; `cargo xtask image` builds and tags it).
pub const IMAGE_REPOSITORY: &str = "ghcr.io/kubectl-pvbackup/kubectl-pvbackup";
/// The uid:gid the image runs as (distroless `nonroot`).
pub const IMAGE_UID: i64 = 65532;
/// `pvbackup-` + NAME must stay within a CronJob name's 52 characters.
const PREFIX: &str = "pvbackup-";
const MAX_NAME: usize = 52 - PREFIX.len();
/// The drill CronJob is `pvbackup-NAME` + this.
pub const DRILL_SUFFIX: &str = "-drill";
const MAX_DRILL_NAME: usize = MAX_NAME - DRILL_SUFFIX.len();

/// The image of this build of the plugin.
pub fn default_image() -> String {
    format!("{IMAGE_REPOSITORY}:{}", crate::cmd::version::VERSION)
}

/// The name every object of schedule `name` has.
pub fn object_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The name of schedule `name`'s drill CronJob.
pub fn drill_name(name: &str) -> String {
    format!("{PREFIX}{name}{DRILL_SUFFIX}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyPolicy {
    Allow,
    Forbid,
    Replace,
}

impl ConcurrencyPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyPolicy::Allow => "Allow",
            ConcurrencyPolicy::Forbid => "Forbid",
            ConcurrencyPolicy::Replace => "Replace",
        }
    }
}

/// A validated `schedule create`.
#[derive(Debug, Clone)]
pub struct SchedulePlan {
    pub name: String,
    pub namespace: String,
    pub cron: String,
    pub time_zone: Option<String>,
    pub image: String,
    pub concurrency: ConcurrencyPolicy,
    /// Stop a run (and let the next one start) after this many seconds.
    pub job_timeout_seconds: i64,
    /// What `create` is run with, after `create` (selection, `--to`, data flags).
    pub create_args: Vec<String>,
    /// What `prune` is run with after each backup (`DEST --keep-… --yes`); None: no prune.
    pub prune_args: Option<Vec<String>>,
    /// `--drill-cron`: when, and what `drill` is run with for each PVC, in order.
    pub drill: Option<DrillSchedule>,
    pub destination: String,
    pub credentials_secret: Option<String>,
    pub service_account_annotations: BTreeMap<String, String>,
}

/// The schedule's drill CronJob.
#[derive(Debug, Clone)]
pub struct DrillSchedule {
    pub cron: String,
    /// One `drill` command line (after `drill`) per PVC.
    pub runs: Vec<Vec<String>>,
}

/// Why a schedule cannot be made as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("schedule name {0:?} is not valid: use at most {MAX_NAME} lowercase letters, digits and '-', starting and ending with a letter or digit (it names a CronJob, pvbackup-NAME)")]
    Name(String),
    #[error("--cron {expr:?} is not a cron schedule: {why}. Use five fields (minute hour day-of-month month day-of-week), e.g. \"0 3 * * *\" for 03:00 daily, or @hourly/@daily/@weekly")]
    Cron { expr: String, why: String },
    #[error("--cron {0:?} sets a time zone inside the schedule; Kubernetes refuses TZ= and CRON_TZ=, use --time-zone instead")]
    CronTimeZone(String),
    #[error("--time-zone {0:?} is not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)")]
    TimeZone(String),
    #[error("schedule name {0:?} is too long for --drill-cron: use at most {MAX_DRILL_NAME} characters (the drill CronJob is pvbackup-NAME-drill, and a CronJob name has at most 52)")]
    DrillName(String),
    #[error("--drill-cron needs the schedule's PVCs named (schedule create NAME PVC... --drill-cron EXPR): a drill restores one PVC's backup, and which PVCs --mesh/-l/--all-pvcs select is only known when a backup runs")]
    DrillNeedsPvcs,
    #[error("--service-account-annotation {0:?} is not KEY=VALUE (e.g. eks.amazonaws.com/role-arn=arn:aws:iam::111122223333:role/backup)")]
    Annotation(String),
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn check_name(name: &str) -> Result<(), ScheduleError> {
    if name.len() > MAX_NAME || !is_dns_label(name) {
        return Err(ScheduleError::Name(name.to_string()));
    }
    Ok(())
}

/// [`check_name`], for a schedule with a drill CronJob.
pub fn check_drill_name(name: &str) -> Result<(), ScheduleError> {
    check_name(name)?;
    if name.len() > MAX_DRILL_NAME {
        return Err(ScheduleError::DrillName(name.to_string()));
    }
    Ok(())
}

/// What the CronJob validation accepts (robfig/cron's standard parser: five fields or a
/// descriptor; no seconds), checked before anything is applied.
pub fn check_cron(expr: &str) -> Result<(), ScheduleError> {
    if expr.contains("TZ") {
        return Err(ScheduleError::CronTimeZone(expr.to_string()));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(expr)
        .map(|_| ())
        .map_err(|e| ScheduleError::Cron {
            expr: expr.to_string(),
            why: e.to_string(),
        })
}

pub fn check_time_zone(tz: &str) -> Result<(), ScheduleError> {
    tz.parse::<chrono_tz::Tz>()
        .map(|_| ())
        .map_err(|_| ScheduleError::TimeZone(tz.to_string()))
}

pub fn parse_annotations(kvs: &[String]) -> Result<BTreeMap<String, String>, ScheduleError> {
    kvs.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(ScheduleError::Annotation(kv.clone())),
        })
        .collect()
}

fn labels(name: &str) -> Value {
    json!({
        LABEL_NAME: MANAGED_BY,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SCHEDULE: name,
    })
}

fn metadata(plan: &SchedulePlan) -> Value {
    json!({
        "name": object_name(&plan.name),
        "namespace": plan.namespace,
        "labels": labels(&plan.name),
    })
}

/// Azure Workload Identity also needs a label on the pod (azure.github.io/azure-workload-identity
/// docs, "Quick start": `azure.workload.identity/use: "true"`); IRSA and GKE need only the
/// ServiceAccount annotation.
///
/// The job's pod opts out of every mesh's injection, as helper pods do
/// ([`crate::helper_pod::MESH_OPT_OUTS`]): it talks only to the API server and the bucket, and
/// an injected proxy sidecar would keep the Job's pod running after the backup ended.
fn pod_labels(plan: &SchedulePlan) -> Value {
    let mut l = labels(&plan.name);
    for (key, value, as_label, _) in crate::helper_pod::MESH_OPT_OUTS {
        if *as_label {
            l[*key] = json!(value);
        }
    }
    if plan
        .service_account_annotations
        .keys()
        .any(|k| k.starts_with("azure.workload.identity/"))
    {
        l["azure.workload.identity/use"] = json!("true");
    }
    l
}

fn pod_annotations() -> Value {
    let mut a = json!({});
    for (key, value, _, as_annotation) in crate::helper_pod::MESH_OPT_OUTS {
        if *as_annotation {
            a[*key] = json!(value);
        }
    }
    a
}

/// The emptyDir every container of a schedule's pod has at `/tmp`.
const TMP_VOLUME: &str = "tmp";

fn container(plan: &SchedulePlan, name: &str, args: Vec<String>) -> Value {
    let mut c = json!({
        "name": name,
        "image": plan.image,
        "args": args,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        // The root is read-only: `create` and `restore`/`drill` sort entries through temporary
        // files in TMPDIR (else /tmp), which must be writable.
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    });
    if let Some(s) = &plan.credentials_secret {
        c["envFrom"] = json!([{"secretRef": {"name": s}}]);
    }
    c
}

/// A CronJob of the schedule: `containers` run one after the other (all but the last as init
/// containers), as the schedule's ServiceAccount.
fn cron_job(plan: &SchedulePlan, name: String, cron: &str, mut containers: Vec<Value>) -> Value {
    let main = containers
        .pop()
        .expect("a CronJob runs at least one container");
    let mut pod_spec = json!({
        "serviceAccountName": object_name(&plan.name),
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [main],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
    });
    if !containers.is_empty() {
        pod_spec["initContainers"] = json!(containers);
    }
    let mut cron_meta = metadata(plan);
    cron_meta["name"] = json!(name);
    cron_meta["annotations"] = json!({ANNOTATION_DESTINATION: plan.destination});
    let mut spec = json!({
        "schedule": cron,
        "concurrencyPolicy": plan.concurrency.as_str(),
        // A start missed by more than an hour (controller down, cluster asleep) is skipped
        // rather than run late; without a deadline, 100 missed starts stop the CronJob for good.
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": labels(&plan.name)},
            "spec": {
                // `create` and `drill` retry transient failures themselves (--retries); a
                // failed run is reported, and the next scheduled run starts afresh.
                "backoffLimit": 0,
                "activeDeadlineSeconds": plan.job_timeout_seconds,
                "template": {
                    "metadata": {"labels": pod_labels(plan), "annotations": pod_annotations()},
                    "spec": pod_spec,
                },
            },
        },
    });
    if let Some(tz) = &plan.time_zone {
        spec["timeZone"] = json!(tz);
    }
    json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": cron_meta, "spec": spec,
    })
}

/// The ServiceAccount, Role, RoleBinding, CronJob and (with a drill) the drill CronJob, in the
/// order they are applied.
pub fn objects(plan: &SchedulePlan) -> Vec<Value> {
    let name = object_name(&plan.name);
    let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(plan)});
    if !plan.service_account_annotations.is_empty() {
        sa["metadata"]["annotations"] = json!(plan.service_account_annotations);
    }
    let rules: Vec<Value> = crate::rbac::role_rules()
        .into_iter()
        .map(|r| json!({"apiGroups": [r.group], "resources": r.resources, "verbs": r.verbs}))
        .collect();
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": metadata(plan), "rules": rules,
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": metadata(plan),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": plan.namespace}],
    });
    let mut backup_args = vec!["create".to_string()];
    backup_args.extend(plan.create_args.iter().cloned());
    let mut containers = vec![container(plan, "backup", backup_args)];
    if let Some(p) = &plan.prune_args {
        let mut args = vec!["prune".to_string()];
        args.extend(p.iter().cloned());
        containers.push(container(plan, "prune", args));
    }
    let cron = cron_job(plan, name, &plan.cron, containers);
    let mut out = vec![sa, role, binding, cron];
    if let Some(d) = &plan.drill {
        let drills = d
            .runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let mut args = vec!["drill".to_string()];
                args.extend(run.iter().cloned());
                container(plan, &format!("drill-{}", i + 1), args)
            })
            .collect();
        out.push(cron_job(plan, drill_name(&plan.name), &d.cron, drills));
    }
    out
}

/// `kubectl create job --from=cronjob/X` (kubectl create_job.go `createJobFromCronJob`): the
/// template's spec, its labels, its annotations plus `cronjob.kubernetes.io/instantiate:
/// manual`, and the CronJob as controller owner (without blockOwnerDeletion, which would need
/// `cronjobs/finalizers` permission).
pub fn manual_job(cron_job: &Value) -> Value {
    let template = &cron_job["spec"]["jobTemplate"];
    let mut annotations = json!({"cronjob.kubernetes.io/instantiate": "manual"});
    for (k, v) in template["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        annotations[k] = v.clone();
    }
    let name = cron_job["metadata"]["name"].as_str().unwrap_or_default();
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "generateName": format!("{name}-manual-"),
            "annotations": annotations,
            "labels": template["metadata"]["labels"],
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": name,
                "uid": cron_job["metadata"]["uid"], "controller": true,
            }],
        },
        "spec": template["spec"],
    })
}

/// The objects as one multi-document YAML stream (`kubectl apply -f -` takes it as is).
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SchedulePlan {
        SchedulePlan {
            name: "nightly".into(),
            namespace: "shop".into(),
            cron: "0 3 * * *".into(),
            time_zone: None,
            image: "ghcr.io/kubectl-pvbackup/kubectl-pvbackup:0.1.0".into(),
            concurrency: ConcurrencyPolicy::Forbid,
            job_timeout_seconds: 21600,
            create_args: vec!["-n".into(), "shop".into(), "--to".into(), "s3://b/p".into()],
            prune_args: None,
            drill: None,
            destination: "s3://b/p".into(),
            credentials_secret: Some("s3-creds".into()),
            service_account_annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn names_crons_and_zones_are_checked() {
        assert!(check_name("nightly").is_ok());
        assert!(check_name("Nightly").is_err());
        assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
        assert!(check_cron("0 3 * * *").is_ok());
        assert!(check_cron("@weekly").is_ok());
        assert!(matches!(
            check_cron("0 0 3 * * *"),
            Err(ScheduleError::Cron { .. })
        ));
        assert_eq!(
            check_cron("CRON_TZ=UTC 0 3 * * *"),
            Err(ScheduleError::CronTimeZone("CRON_TZ=UTC 0 3 * * *".into()))
        );
        assert!(check_time_zone("Europe/Berlin").is_ok());
        assert!(check_time_zone("Europe/Atlantis").is_err());
        assert!(parse_annotations(&["novalue".into()]).is_err());
    }

    #[test]
    fn prune_runs_after_the_backup_and_azure_gets_its_pod_label() {
        let mut p = plan();
        p.prune_args = Some(vec!["s3://b/p".into(), "--keep-daily".into(), "7".into()]);
        p.service_account_annotations.insert(
            "azure.workload.identity/client-id".into(),
            "00000000-0000-0000-0000-000000000000".into(),
        );
        let o = objects(&p);
        let pod = &o[3]["spec"]["jobTemplate"]["spec"]["template"];
        assert_eq!(pod["spec"]["initContainers"][0]["args"][0], "create");
        assert_eq!(pod["spec"]["containers"][0]["args"][0], "prune");
        assert_eq!(
            pod["metadata"]["labels"]["azure.workload.identity/use"],
            "true"
        );
        assert_eq!(
            o[0]["metadata"]["annotations"]["azure.workload.identity/client-id"],
            "00000000-0000-0000-0000-000000000000"
        );
        for obj in &o {
            assert_eq!(obj["metadata"]["labels"][LABEL_SCHEDULE], "nightly");
            assert_eq!(obj["metadata"]["name"], "pvbackup-nightly");
        }
    }

    #[test]
    fn the_drill_cron_job_drills_each_pvc_in_turn_as_the_schedule() {
        let mut p = plan();
        let run = |pvc: &str| -> Vec<String> {
            ["--latest", &format!("shop/{pvc}"), "--from", "s3://b/p"]
                .map(String::from)
                .to_vec()
        };
        p.drill = Some(DrillSchedule {
            cron: "0 4 * * 0".into(),
            runs: vec![run("db"), run("media")],
        });
        let o = objects(&p);
        assert_eq!(o.len(), 5);
        let (backup, drill) = (&o[3], &o[4]);
        assert_eq!(drill["metadata"]["name"], "pvbackup-nightly-drill");
        assert_eq!(drill["metadata"]["labels"], backup["metadata"]["labels"]);
        assert_eq!(drill["spec"]["schedule"], "0 4 * * 0");
        assert_eq!(backup["spec"]["schedule"], "0 3 * * *");
        let pod = &drill["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "pvbackup-nightly");
        assert_eq!(pod["initContainers"][0]["name"], "drill-1");
        assert_eq!(pod["initContainers"][0]["args"][2], "shop/db");
        assert_eq!(pod["containers"][0]["name"], "drill-2");
        assert_eq!(pod["containers"][0]["args"][2], "shop/media");
        assert_eq!(
            pod["containers"][0]["envFrom"][0]["secretRef"]["name"],
            "s3-creds"
        );
        serde_json::from_value::<k8s_openapi::api::batch::v1::CronJob>(drill.clone()).unwrap();
        assert!(check_drill_name(&"a".repeat(MAX_DRILL_NAME)).is_ok());
        assert_eq!(
            check_drill_name(&"a".repeat(MAX_NAME)),
            Err(ScheduleError::DrillName("a".repeat(MAX_NAME)))
        );
    }

    #[test]
    fn objects_are_valid_kubernetes_types() {
        use k8s_openapi::api::{batch::v1::CronJob, core::v1::ServiceAccount, rbac::v1};
        let o = objects(&plan());
        serde_json::from_value::<ServiceAccount>(o[0].clone()).unwrap();
        serde_json::from_value::<v1::Role>(o[1].clone()).unwrap();
        serde_json::from_value::<v1::RoleBinding>(o[2].clone()).unwrap();
        let cj: CronJob = serde_json::from_value(o[3].clone()).unwrap();
        let spec = cj.spec.unwrap();
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let job = manual_job(&o[3]);
        assert_eq!(
            job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
            "manual"
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);
    }
}

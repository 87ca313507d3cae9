//! batch/v1 Jobs and CronJobs: the defaults and validation the API server applies, the Job and
//! CronJob controllers of kube-controller-manager, and the garbage collector's part that they
//! rely on (dependents of a deleted Job or CronJob go; `propagationPolicy=Orphan` keeps them).
//!
//! Sources (kubernetes v1.33):
//! - defaults: pkg/apis/batch/v1/defaults.go (`SetDefaults_Job`: completions and parallelism 1,
//!   backoffLimit 6, completionMode NonIndexed, suspend false, podReplacementPolicy
//!   TerminatingOrFailed; `SetDefaults_CronJob`: concurrencyPolicy Allow, suspend false,
//!   successfulJobsHistoryLimit 3, failedJobsHistoryLimit 1);
//! - the generated selector and pod labels: pkg/registry/batch/job/strategy.go `generateSelector`;
//! - validation: pkg/apis/batch/validation/validation.go (restartPolicy, schedule, timeZone,
//!   `TZ=` in the schedule, the 52-character CronJob name);
//! - the Job controller: pkg/controller/job/job_controller.go (pods created up to parallelism,
//!   exponential back-off 10 s × 2ⁿ capped at 6 min between failed pods, `BackoffLimitExceeded`,
//!   `DeadlineExceeded`, the `FailureTarget`/`SuccessCriteriaMet` conditions that precede
//!   `Failed`/`Complete` once the Job's pods are gone, as since v1.31);
//! - the CronJob controller: pkg/controller/cronjob/cronjob_controllerv2.go and utils.go
//!   (`mostRecentScheduleTime`, the job name `<cronjob>-<scheduled time in minutes>`,
//!   `startingDeadlineSeconds`, `Forbid` skipping without moving `lastScheduleTime`, `Replace`
//!   deleting the running Jobs, history limits, the events `SuccessfulCreate`,
//!   `JobAlreadyActive`, `SawCompletedJob`, `SuccessfulDelete`, `MissSchedule`);
//! - TTL after finished: pkg/controller/ttlafterfinished;
//! - delete propagation: a batch/v1 Job orphans its pods unless told otherwise
//!   (pkg/registry/batch/job/strategy.go `DefaultGarbageCollectionPolicy`), a CronJob deletes its
//!   Jobs (pkg/registry/batch/cronjob/strategy.go).
//!
//! Schedules use robfig/cron's standard 5-field syntax (and `@hourly`-style descriptors) with
//! Vixie cron's day-of-month OR day-of-week rule, via the `croner` crate; time zones come from
//! the IANA database compiled into `chrono-tz`.

use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use crate::auth::User;
use crate::errors::{ApiError, Cause};
use crate::resources;
use crate::sim::SimRef;
use crate::store::{new_uid, now_rfc3339};

/// Labels the API server puts on a Job's pod template (and the selector it generates).
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The annotation `kubectl create job --from=cronjob/X` sets (kubectl create_job.go).
pub const INSTANTIATE: &str = "cronjob.kubernetes.io/instantiate";
/// The annotation the CronJob controller sets on the Jobs it schedules.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

const BACKOFF_BASE_SECONDS: i64 = 10;
const BACKOFF_MAX_SECONDS: i64 = 360;

fn invalid_value(field: &str, value: &str, detail: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {value:?}: {detail}"),
    }
}

fn required(field: &str, detail: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueRequired",
        message: if detail.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {detail}")
        },
    }
}

fn set_default(v: &mut Value, key: &str, d: Value) {
    if v.get(key).is_none_or(Value::is_null) {
        v[key] = d;
    }
}

/// A robfig/cron standard schedule: five fields or a descriptor; what the CronJob validation
/// accepts. `Err` is the parser's message.
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| e.to_string())
}

/// `timeZone`, or UTC (kube-controller-manager's local time zone, as in every managed cluster).
pub fn parse_time_zone(tz: Option<&str>) -> Result<chrono_tz::Tz, String> {
    match tz {
        None => Ok(chrono_tz::UTC),
        // validation.go validateTimeZone: the name must load from the tz database; `Local`
        // and names with spaces are refused.
        Some(name) if name == "Local" || name.trim() != name || name.is_empty() => {
            Err(format!("unknown time zone {name}"))
        }
        Some(name) => {
            chrono_tz::Tz::from_str(name).map_err(|_| format!("unknown time zone {name}"))
        }
    }
}

fn job_template_causes(spec: &Value, prefix: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let rp = spec["template"]["spec"]["restartPolicy"].as_str();
    if !matches!(rp, Some("Never") | Some("OnFailure")) {
        causes.push(Cause {
            field: format!("{prefix}template.spec.restartPolicy"),
            reason: "FieldValueRequired",
            message: "Required value: valid values: \"OnFailure\", \"Never\"".into(),
        });
    }
    if spec["template"]["spec"]["containers"]
        .as_array()
        .is_none_or(|c| c.is_empty())
    {
        causes.push(required(&format!("{prefix}template.spec.containers"), ""));
    }
    for k in [
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if spec[k].as_i64().is_some_and(|n| n < 0) {
            causes.push(invalid_value(
                &format!("{prefix}{k}"),
                &spec[k].to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    causes
}

fn default_job_spec(spec: &mut Value) {
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
        spec["parallelism"] = json!(1);
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
}

/// Admission of a new Job: defaults, the generated selector and template labels, validation.
pub fn admit_job(job: &mut Value) -> Result<(), ApiError> {
    let name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let causes = job_template_causes(&job["spec"], "spec.");
    if !causes.is_empty() {
        return Err(ApiError::invalid("Job", "batch", &name, causes));
    }
    default_job_spec(&mut job["spec"]);
    // The selector needs the uid before the store assigns one.
    let uid = match job["metadata"]["uid"].as_str() {
        Some(u) => u.to_string(),
        None => {
            let u = new_uid();
            job["metadata"]["uid"] = json!(u);
            u
        }
    };
    if job["spec"]["manualSelector"] != true {
        job["spec"]["selector"] = json!({"matchLabels": {CONTROLLER_UID: uid}});
        let labels = &mut job["spec"]["template"]["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        for (k, v) in [
            (CONTROLLER_UID, uid.as_str()),
            (JOB_NAME, name.as_str()),
            ("controller-uid", uid.as_str()),
            ("job-name", name.as_str()),
        ] {
            labels[k] = json!(v);
        }
    }
    Ok(())
}

/// Admission of a new or updated CronJob: defaults and validation.
pub fn admit_cron_job(cj: &mut Value) -> Result<(), ApiError> {
    let name = cj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut causes = Vec::new();
    // validation.go ValidateCronJobCreate: the Job name gets an 11-character suffix.
    if name.len() > 52 {
        causes.push(invalid_value(
            "metadata.name",
            &name,
            "must be no more than 52 characters",
        ));
    }
    let spec = &cj["spec"];
    match spec["schedule"].as_str() {
        None | Some("") => causes.push(required("spec.schedule", "")),
        Some(s) if s.contains("TZ") => causes.push(invalid_value(
            "spec.schedule",
            s,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        )),
        Some(s) => {
            if let Err(e) = parse_schedule(s) {
                causes.push(invalid_value("spec.schedule", s, &e));
            }
        }
    }
    if let Some(tz) = spec["timeZone"].as_str() {
        if let Err(e) = parse_time_zone(Some(tz)) {
            causes.push(invalid_value("spec.timeZone", tz, &e));
        }
    }
    if let Some(p) = spec["concurrencyPolicy"].as_str() {
        if !matches!(p, "Allow" | "Forbid" | "Replace") {
            causes.push(Cause {
                field: "spec.concurrencyPolicy".into(),
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {p:?}: supported values: \"Allow\", \"Forbid\", \"Replace\""
                ),
            });
        }
    }
    causes.extend(job_template_causes(
        &spec["jobTemplate"]["spec"],
        "spec.jobTemplate.spec.",
    ));
    if !causes.is_empty() {
        return Err(ApiError::invalid("CronJob", "batch", &name, causes));
    }
    let spec = &mut cj["spec"];
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    default_job_spec(&mut spec["jobTemplate"]["spec"]);
    Ok(())
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn uid_of(o: &Value) -> &str {
    o["metadata"]["uid"].as_str().unwrap_or_default()
}

/// The uid of `o`'s controller owner, if it is of `kind`.
fn controller_uid<'a>(o: &'a Value, kind: &str) -> Option<&'a str> {
    o["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true && r["kind"] == kind)
        .and_then(|r| r["uid"].as_str())
}

fn owner_ref(owner: &Value, block: bool) -> Value {
    let mut r = json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true,
    });
    if block {
        r["blockOwnerDeletion"] = json!(true);
    }
    r
}

fn condition(obj: &Value, type_: &str) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

/// `Complete` or `Failed`, once the Job is finished.
pub fn finished(job: &Value) -> Option<&'static str> {
    if condition(job, "Complete") {
        Some("Complete")
    } else if condition(job, "Failed") {
        Some("Failed")
    } else {
        None
    }
}

fn push_condition(status: &mut Value, type_: &str, reason: &str, message: &str) {
    let now = now_rfc3339();
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    if let Some(a) = status["conditions"].as_array_mut() {
        a.push(json!({
            "type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now,
        }));
    }
}

/// Deletes through the API path (grace periods, finalizers, propagation), as a controller does.
fn delete(sim: &SimRef, def: &'static resources::ResourceDef, ns: &str, name: &str) {
    let _ = crate::api::delete_object(
        sim,
        def,
        Some(ns),
        name,
        &json!({"propagationPolicy": "Background"}),
    );
}

pub fn reconcile(sim: &SimRef) {
    ensure_default_service_accounts(sim);
    collect_garbage(sim);
    let now = Utc::now();
    let (cron_jobs, _) = sim.store.list(resources::cron_jobs(), None);
    for cj in &cron_jobs {
        sync_cron_job(sim, cj, now);
    }
    let (jobs, _) = sim.store.list(resources::jobs(), None);
    for job in &jobs {
        sync_job(sim, job, now);
    }
}

/// The serviceaccounts controller (pkg/controller/serviceaccount) gives every namespace a
/// `default` ServiceAccount.
fn ensure_default_service_accounts(sim: &SimRef) {
    let (namespaces, _) = sim.store.list(resources::namespaces(), None);
    for ns in namespaces {
        if ns["status"]["phase"] == "Terminating" {
            continue;
        }
        let name = name_of(&ns);
        if sim
            .store
            .try_get(resources::service_accounts(), Some(name), "default")
            .is_none()
        {
            let _ = sim.store.create(
                resources::service_accounts(),
                Some(name),
                json!({"metadata": {"name": "default"}}),
            );
        }
    }
}

/// The garbage collector for the owners kubesim's controllers set: a Job whose CronJob is gone,
/// a pod whose Job is gone (owners deleted with `Orphan` lost their references beforehand).
fn collect_garbage(sim: &SimRef) {
    let (cron_jobs, _) = sim.store.list(resources::cron_jobs(), None);
    let (jobs, _) = sim.store.list(resources::jobs(), None);
    for job in &jobs {
        if let Some(owner) = controller_uid(job, "CronJob") {
            if !cron_jobs.iter().any(|c| uid_of(c) == owner) {
                delete(
                    sim,
                    resources::jobs(),
                    job["metadata"]["namespace"].as_str().unwrap_or_default(),
                    name_of(job),
                );
            }
        }
    }
    let (jobs, _) = sim.store.list_shared(resources::jobs(), None);
    let (pods, _) = sim.store.list_shared(resources::pods(), None);
    for pod in &pods {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        if let Some(owner) = controller_uid(pod, "Job") {
            if !jobs.iter().any(|j| uid_of(j) == owner) {
                delete(
                    sim,
                    resources::pods(),
                    pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                    name_of(pod),
                );
            }
        }
    }
}

/// `propagationPolicy=Orphan`: the dependents lose their owner reference and stay.
pub fn orphan_dependents(sim: &SimRef, owner: &Value) {
    let uid = uid_of(owner).to_string();
    let ns = owner["metadata"]["namespace"].as_str().map(str::to_string);
    let dependents = match owner["kind"].as_str() {
        Some("CronJob") => resources::jobs(),
        Some("Job") => resources::pods(),
        _ => return,
    };
    let (items, _) = sim.store.list(dependents, ns.as_deref());
    for d in items {
        let refs = d["metadata"]["ownerReferences"].as_array();
        if !refs.is_some_and(|r| r.iter().any(|r| r["uid"] == uid.as_str())) {
            continue;
        }
        let _ = sim
            .store
            .update(dependents, ns.as_deref(), name_of(&d), |o| {
                if let Some(a) = o["metadata"]["ownerReferences"].as_array_mut() {
                    a.retain(|r| r["uid"] != uid.as_str());
                }
                Ok(())
            });
    }
}

fn job_pods(sim: &SimRef, job: &Value) -> Vec<Value> {
    let ns = job["metadata"]["namespace"].as_str();
    let uid = uid_of(job);
    let (pods, _) = sim.store.list(resources::pods(), ns);
    pods.into_iter()
        .filter(|p| controller_uid(p, "Job") == Some(uid))
        .collect()
}

fn set_job_status(sim: &SimRef, job: &Value, f: impl FnOnce(&mut Value)) {
    let ns = job["metadata"]["namespace"].as_str();
    let mut status = job["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    f(&mut status);
    if status == job["status"] {
        return;
    }
    let _ = sim
        .store
        .update(resources::jobs(), ns, name_of(job), move |o| {
            o["status"] = status;
            Ok(())
        });
}

fn sync_job(sim: &SimRef, job: &Value, now: DateTime<Utc>) {
    let ns = job["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !job["metadata"]["deletionTimestamp"].is_null() {
        return;
    }
    if let Some(done) = finished(job) {
        ttl_after_finished(sim, job, done, now);
        return;
    }
    let spec = &job["spec"];
    if spec["suspend"] == true {
        return;
    }
    let pods = job_pods(sim, job);
    let phase = |p: &Value| {
        p["status"]["phase"]
            .as_str()
            .unwrap_or("Pending")
            .to_string()
    };
    let terminating = pods
        .iter()
        .filter(|p| {
            !p["metadata"]["deletionTimestamp"].is_null() && !crate::kubelet::pod_finished(p)
        })
        .count();
    let active: Vec<&Value> = pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed"))
        .collect();
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
    let failed_pods: Vec<&Value> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    let failed = failed_pods.len() as i64;
    let ready = active
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count();
    let start = parse_time(&job["status"]["startTime"]).unwrap_or(now);
    let completions = spec["completions"].as_i64().unwrap_or(1);
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);

    // A terminal decision already taken: wait for the pods to go, then the final condition.
    let target = if condition(job, "FailureTarget") {
        Some(("Failed", "FailureTarget"))
    } else if condition(job, "SuccessCriteriaMet") {
        Some(("Complete", "SuccessCriteriaMet"))
    } else {
        None
    };
    let decision: Option<(&str, String, String)> = if let Some((final_type, pre)) = target {
        let c = job["status"]["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == pre))
            .cloned()
            .unwrap_or_default();
        Some((
            final_type,
            c["reason"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        ))
    } else if spec["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|d| now >= start + Duration::seconds(d))
    {
        Some((
            "Failed",
            "DeadlineExceeded".to_string(),
            "Job was active longer than specified deadline".to_string(),
        ))
    } else if failed > backoff_limit {
        Some((
            "Failed",
            "BackoffLimitExceeded".to_string(),
            "Job has reached the specified backoff limit".to_string(),
        ))
    } else if succeeded >= completions {
        Some((
            "Complete",
            "CompletionsReached".to_string(),
            "Reached expected number of succeeded pods".to_string(),
        ))
    } else {
        None
    };

    if let Some((final_type, reason, message)) = decision {
        for p in &active {
            delete(sim, resources::pods(), &ns, name_of(p));
        }
        let pre = if final_type == "Failed" {
            "FailureTarget"
        } else {
            "SuccessCriteriaMet"
        };
        let pods_gone = active.is_empty() && terminating == 0;
        let job_for_event = job.clone();
        let first = target.is_none();
        set_job_status(sim, job, |s| {
            if first {
                push_condition(s, pre, &reason, &message);
            }
            if pods_gone {
                push_condition(s, final_type, &reason, &message);
                if final_type == "Complete" {
                    s["completionTime"] = json!(rfc3339(now));
                }
            }
            s["active"] = json!(active.len());
            s["succeeded"] = json!(succeeded);
            s["failed"] = json!(failed);
            s["ready"] = json!(ready);
            s["terminating"] = json!(terminating);
        });
        if first {
            if final_type == "Failed" {
                sim.record(
                    &job_for_event,
                    "Warning",
                    &reason,
                    &message,
                    "job-controller",
                );
            } else {
                sim.record(
                    &job_for_event,
                    "Normal",
                    "Completed",
                    "Job completed",
                    "job-controller",
                );
            }
        }
        return;
    }

    // Back-off between pods after failures: 10 s, 20 s, 40 s … capped at 6 min, counted from
    // the last failure (job_controller.go getFinishedTime / backoff records).
    let last_failure = failed_pods
        .iter()
        .filter_map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| parse_time(&c["state"]["terminated"]["finishedAt"]))
                .max()
        })
        .max();
    let backoff_over = match last_failure {
        Some(t) if failed > 0 => {
            let delay = (BACKOFF_BASE_SECONDS << (failed - 1).min(16)).min(BACKOFF_MAX_SECONDS);
            now >= t + Duration::seconds(delay)
        }
        _ => true,
    };
    let wanted = (parallelism.min(completions - succeeded) - active.len() as i64).max(0);
    let mut created = 0;
    if backoff_over && terminating == 0 {
        for _ in 0..wanted {
            if create_pod(sim, job, &ns) {
                created += 1;
            }
        }
    }
    let starting = job["status"]["startTime"].is_null();
    set_job_status(sim, job, |s| {
        if starting {
            s["startTime"] = json!(rfc3339(now));
        }
        s["active"] = json!(active.len() as i64 + created);
        s["succeeded"] = json!(succeeded);
        s["failed"] = json!(failed);
        s["ready"] = json!(ready);
        s["terminating"] = json!(terminating);
        s["uncountedTerminatedPods"] = json!({});
    });
}

fn create_pod(sim: &SimRef, job: &Value, ns: &str) -> bool {
    let template = &job["spec"]["template"];
    let mut pod = json!({
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    pod["metadata"]["generateName"] = json!(format!("{}-", name_of(job)));
    pod["metadata"]["ownerReferences"] = json!([owner_ref(job, true)]);
    let t = crate::api::Target {
        def: resources::pods(),
        namespace: Some(ns.to_string()),
        name: None,
        subresource: None,
    };
    match crate::api::create(sim, &User::admin(), &t, pod, false) {
        Ok((_, p)) => {
            sim.record(
                job,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {}", name_of(&p)),
                "job-controller",
            );
            true
        }
        Err(e) => {
            sim.record(
                job,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {}", e.message),
                "job-controller",
            );
            false
        }
    }
}

fn ttl_after_finished(sim: &SimRef, job: &Value, done: &str, now: DateTime<Utc>) {
    let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
        return;
    };
    let finished_at = job["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == done))
        .and_then(|c| parse_time(&c["lastTransitionTime"]));
    if finished_at.is_some_and(|t| now >= t + Duration::seconds(ttl)) {
        delete(
            sim,
            resources::jobs(),
            job["metadata"]["namespace"].as_str().unwrap_or_default(),
            name_of(job),
        );
    }
}

/// The latest schedule time in (`earliest`, `now`], and how many were passed over.
fn most_recent_schedule_time<Z: TimeZone>(
    cron: &croner::Cron,
    earliest: DateTime<Z>,
    now: DateTime<Z>,
) -> (Option<DateTime<Z>>, usize) {
    let mut last = None;
    let mut missed = 0;
    let mut t = earliest;
    while let Ok(next) = cron.find_next_occurrence(&t, false) {
        if next > now {
            break;
        }
        missed += 1;
        last = Some(next.clone());
        t = next;
        // cronjob utils.go gives up counting after 100 missed starts.
        if missed > 100 {
            break;
        }
    }
    (last, missed)
}

fn set_cron_status(sim: &SimRef, cj: &Value, f: impl FnOnce(&mut Value)) {
    let ns = cj["metadata"]["namespace"].as_str();
    let mut status = cj["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    f(&mut status);
    if status == cj["status"] {
        return;
    }
    let _ = sim
        .store
        .update(resources::cron_jobs(), ns, name_of(cj), move |o| {
            o["status"] = status;
            Ok(())
        });
}

fn job_ref(job: &Value) -> Value {
    json!({
        "kind": "Job", "apiVersion": "batch/v1", "namespace": job["metadata"]["namespace"],
        "name": job["metadata"]["name"], "uid": job["metadata"]["uid"],
        "resourceVersion": job["metadata"]["resourceVersion"],
    })
}

fn sync_cron_job(sim: &SimRef, cj: &Value, now_utc: DateTime<Utc>) {
    let ns = cj["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let uid = uid_of(cj).to_string();
    let (all_jobs, _) = sim.store.list(resources::jobs(), Some(&ns));
    let owned: Vec<&Value> = all_jobs
        .iter()
        .filter(|j| controller_uid(j, "CronJob") == Some(uid.as_str()))
        .collect();
    // status.active: the owned Jobs not finished; the finished ones are seen once.
    let was_active: Vec<String> = cj["status"]["active"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_string))
        .collect();
    let mut last_successful = parse_time(&cj["status"]["lastSuccessfulTime"]);
    for j in &owned {
        if let Some(done) = finished(j) {
            if was_active.iter().any(|u| u == uid_of(j)) {
                sim.record(
                    cj,
                    "Normal",
                    "SawCompletedJob",
                    &format!("Saw completed job: {}, condition: {done}", name_of(j)),
                    "cronjob-controller",
                );
                if done == "Complete" {
                    let t = parse_time(&j["status"]["completionTime"]).unwrap_or(now_utc);
                    last_successful = Some(last_successful.map_or(t, |l| l.max(t)));
                }
            }
        }
    }
    let mut active: Vec<Value> = owned
        .iter()
        .filter(|j| finished(j).is_none() && j["metadata"]["deletionTimestamp"].is_null())
        .map(|j| job_ref(j))
        .collect();
    cleanup_finished_jobs(sim, cj, &owned);
    if !cj["metadata"]["deletionTimestamp"].is_null() {
        return;
    }
    let spec = &cj["spec"];
    let mut last_schedule = parse_time(&cj["status"]["lastScheduleTime"]);
    let schedule_and_zone = spec["schedule"]
        .as_str()
        .ok_or_else(|| "no schedule".to_string())
        .and_then(parse_schedule)
        .and_then(|c| parse_time_zone(spec["timeZone"].as_str()).map(|z| (c, z)));
    if spec["suspend"] != true {
        match schedule_and_zone {
            Err(e) => sim.record(
                cj,
                "Warning",
                "UnparseableSchedule",
                &format!("unparseable schedule: {e}"),
                "cronjob-controller",
            ),
            Ok((cron, zone)) => {
                let created = parse_time(&cj["metadata"]["creationTimestamp"]).unwrap_or(now_utc);
                let earliest = last_schedule.unwrap_or(created);
                let (scheduled, missed) = most_recent_schedule_time(
                    &cron,
                    earliest.with_timezone(&zone),
                    now_utc.with_timezone(&zone),
                );
                if missed > 100 {
                    sim.record(cj, "Warning", "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew", "cronjob-controller");
                }
                if let Some(scheduled) = scheduled {
                    let scheduled_utc = scheduled.with_timezone(&Utc);
                    let too_late = spec["startingDeadlineSeconds"]
                        .as_i64()
                        .is_some_and(|d| now_utc > scheduled_utc + Duration::seconds(d));
                    let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
                    if too_late {
                        sim.record(
                            cj,
                            "Warning",
                            "MissSchedule",
                            &format!(
                                "Missed scheduled time to start a job: {}",
                                scheduled.to_rfc3339()
                            ),
                            "cronjob-controller",
                        );
                        // Not retried: the controller moves on to the next schedule time.
                        last_schedule = Some(scheduled_utc);
                    } else if policy == "Forbid" && !active.is_empty() {
                        // lastScheduleTime stays, so this start is tried again until it runs
                        // or its startingDeadlineSeconds passes.
                        sim.record(cj, "Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid", "cronjob-controller");
                    } else {
                        if policy == "Replace" {
                            for a in active.drain(..) {
                                let n = a["name"].as_str().unwrap_or_default();
                                delete(sim, resources::jobs(), &ns, n);
                                sim.record(
                                    cj,
                                    "Normal",
                                    "SuccessfulDelete",
                                    &format!("Deleted job {n}"),
                                    "cronjob-controller",
                                );
                            }
                        }
                        if let Some(job) = create_scheduled_job(sim, cj, &ns, &scheduled) {
                            active.push(job_ref(&job));
                        }
                        last_schedule = Some(scheduled_utc);
                    }
                }
            }
        }
    }
    set_cron_status(sim, cj, |s| {
        if active.is_empty() {
            if let Some(m) = s.as_object_mut() {
                m.remove("active");
            }
        } else {
            s["active"] = json!(active);
        }
        if let Some(t) = last_schedule {
            s["lastScheduleTime"] = json!(rfc3339(t));
        }
        if let Some(t) = last_successful {
            s["lastSuccessfulTime"] = json!(rfc3339(t));
        }
    });
}

fn create_scheduled_job<Z: TimeZone>(
    sim: &SimRef,
    cj: &Value,
    ns: &str,
    scheduled: &DateTime<Z>,
) -> Option<Value>
where
    Z::Offset: std::fmt::Display,
{
    let template = &cj["spec"]["jobTemplate"];
    let minutes = scheduled.timestamp() / 60;
    let name = format!("{}-{minutes}", name_of(cj));
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["name"] = json!(name);
    metadata["ownerReferences"] = json!([owner_ref(cj, true)]);
    metadata["annotations"][SCHEDULED_TIMESTAMP] =
        json!(scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let job = json!({"metadata": metadata, "spec": template["spec"].clone()});
    let t = crate::api::Target {
        def: resources::jobs(),
        namespace: Some(ns.to_string()),
        name: None,
        subresource: None,
    };
    match crate::api::create(sim, &User::admin(), &t, job, false) {
        Ok((_, j)) => {
            sim.record(
                cj,
                "Normal",
                "SuccessfulCreate",
                &format!("Created job {name}"),
                "cronjob-controller",
            );
            Some(j)
        }
        // Already made for this schedule time (a restart of the controller, for real).
        Err(e) if e.code == 409 => sim.store.try_get(resources::jobs(), Some(ns), &name),
        Err(e) => {
            sim.record(
                cj,
                "Warning",
                "FailedCreate",
                &format!("Error creating job: {}", e.message),
                "cronjob-controller",
            );
            None
        }
    }
}

/// successfulJobsHistoryLimit / failedJobsHistoryLimit: the oldest finished Jobs beyond them go.
fn cleanup_finished_jobs(sim: &SimRef, cj: &Value, owned: &[&Value]) {
    let ns = cj["metadata"]["namespace"].as_str().unwrap_or_default();
    for (kind, key, default) in [
        ("Complete", "successfulJobsHistoryLimit", 3),
        ("Failed", "failedJobsHistoryLimit", 1),
    ] {
        let limit = cj["spec"][key].as_i64().unwrap_or(default).max(0) as usize;
        let mut done: Vec<&&Value> = owned
            .iter()
            .filter(|j| finished(j) == Some(kind) && j["metadata"]["deletionTimestamp"].is_null())
            .collect();
        if done.len() <= limit {
            continue;
        }
        done.sort_by_key(|j| {
            parse_time(&j["status"]["startTime"])
                .or_else(|| parse_time(&j["metadata"]["creationTimestamp"]))
        });
        for j in &done[..done.len() - limit] {
            delete(sim, resources::jobs(), ns, name_of(j));
            sim.record(
                cj,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted job {}", name_of(j)),
                "cronjob-controller",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_time_zones() {
        assert!(parse_schedule("*/5 * * * *").is_ok());
        assert!(parse_schedule("@hourly").is_ok());
        assert!(
            parse_schedule("0 0 * * * *").is_err(),
            "seconds are not standard"
        );
        assert!(parse_schedule("61 * * * *").is_err());
        assert!(parse_time_zone(Some("Europe/Berlin")).is_ok());
        assert_eq!(
            parse_time_zone(Some("Mars/Olympus")).unwrap_err(),
            "unknown time zone Mars/Olympus"
        );
        assert!(parse_time_zone(Some("Local")).is_err());
    }

    #[test]
    fn most_recent_schedule_time_counts_misses() {
        let cron = parse_schedule("*/10 * * * *").unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 35, 0).unwrap();
        let (last, missed) = most_recent_schedule_time(&cron, t0, now);
        assert_eq!(
            last,
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 30, 0).unwrap())
        );
        assert_eq!(missed, 3);
        let (none, _) = most_recent_schedule_time(&cron, now, now);
        assert_eq!(none, None);
        // In a zone: 02:00 Berlin is 01:00 UTC in winter.
        let cron = parse_schedule("0 2 * * *").unwrap();
        let z = chrono_tz::Europe::Berlin;
        let (last, _) = most_recent_schedule_time(
            &cron,
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .unwrap()
                .with_timezone(&z),
            Utc.with_ymd_and_hms(2026, 1, 1, 1, 30, 0)
                .unwrap()
                .with_timezone(&z),
        );
        assert_eq!(
            last.map(|t| t.with_timezone(&Utc)),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).unwrap())
        );
    }

    #[test]
    fn job_admission_defaults_and_selector() {
        let mut job = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
        admit_job(&mut job).unwrap();
        let uid = job["metadata"]["uid"].as_str().unwrap();
        assert_eq!(job["spec"]["backoffLimit"], 6);
        assert_eq!(job["spec"]["completions"], 1);
        assert_eq!(job["spec"]["selector"]["matchLabels"][CONTROLLER_UID], uid);
        assert_eq!(job["spec"]["template"]["metadata"]["labels"][JOB_NAME], "j");
        let mut bad = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "restartPolicy": "Always", "containers": [{"name": "c", "image": "busybox"}]}}}});
        let e = admit_job(&mut bad).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""), "{}", e.message);
    }

    #[test]
    fn cron_job_validation_messages() {
        let mut cj = json!({"metadata": {"name": "c"}, "spec": {"schedule": "TZ=UTC 0 * * * *",
            "timeZone": "Nowhere/City",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}});
        let e = admit_cron_job(&mut cj).unwrap_err();
        assert!(
            e.message.contains("cannot use TZ or CRON_TZ in schedule"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains(
                "spec.timeZone: Invalid value: \"Nowhere/City\": unknown time zone Nowhere/City"
            ),
            "{}",
            e.message
        );
        let mut ok = json!({"metadata": {"name": "c"}, "spec": {"schedule": "0 3 * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}});
        admit_cron_job(&mut ok).unwrap();
        assert_eq!(ok["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(ok["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(ok["spec"]["failedJobsHistoryLimit"], 1);
    }
}

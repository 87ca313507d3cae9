//! batch/v1 Jobs and CronJobs on kubesim, through kube-rs: a Job's pods run to completion or
//! to its backoff limit, a CronJob under `Forbid` starts nothing while a Job of it runs, a
//! deleted CronJob takes its Jobs and their pods along, and a pod's service account reaches the
//! API server with exactly the rights its RoleBinding gives.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Api, Client};
use kubesim::{Cluster, ClusterOptions};
use serde_json::{json, Value};

async fn start() -> Cluster {
    Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts")
}

async fn client_for(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

fn job(name: &str, script: &str, backoff_limit: i32) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}],
        }}},
    }))
    .unwrap()
}

/// Polls `f` every 200 ms until it returns Some, for at most `limit`.
async fn until<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn condition(j: &Job, type_: &str) -> Option<(String, String)> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_completes_and_a_failing_one_hits_its_backoff_limit() {
    let cluster = start().await;
    let client = client_for(cluster.kubeconfig()).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(&PostParams::default(), &job("ok", "echo done", 6))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("bad", "exit 3", 0))
        .await
        .unwrap();

    let ok = until(Duration::from_secs(30), || async {
        let j = jobs.get("ok").await.ok()?;
        condition(&j, "Complete").map(|_| j)
    })
    .await
    .expect("the job completes");
    let st = ok.status.unwrap();
    assert_eq!(st.succeeded, Some(1));
    assert!(st.completion_time.is_some());
    let conds: Vec<String> = st
        .conditions
        .unwrap()
        .iter()
        .map(|c| c.type_.clone())
        .collect();
    assert_eq!(conds, ["SuccessCriteriaMet", "Complete"]);
    // The pod stays, labelled with the job's name and owned by it.
    let ok_pods = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=ok"))
        .await
        .unwrap()
        .items;
    assert_eq!(ok_pods.len(), 1);
    assert_eq!(
        ok_pods[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    assert_eq!(
        ok_pods[0].metadata.owner_references.as_ref().unwrap()[0].kind,
        "Job"
    );

    let bad = until(Duration::from_secs(30), || async {
        let j = jobs.get("bad").await.ok()?;
        condition(&j, "Failed").map(|c| (j, c))
    })
    .await
    .expect("the job fails");
    assert_eq!(
        bad.1,
        (
            "BackoffLimitExceeded".to_string(),
            "Job has reached the specified backoff limit".to_string()
        )
    );
    assert_eq!(bad.0.status.unwrap().failed, Some(1));
    // backoffLimit 0: no second pod.
    let bad_pods = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=bad"))
        .await
        .unwrap()
        .items;
    assert_eq!(bad_pods.len(), 1);

    // A batch/v1 Job orphans its pods by default; Background takes them along.
    jobs.delete("ok", &DeleteParams::default()).await.unwrap();
    jobs.delete(
        "bad",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let gone = until(Duration::from_secs(20), || async {
        let left = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=bad"))
            .await
            .ok()?
            .items;
        left.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the failed job's pod is collected");
    let orphan = pods
        .get(ok_pods[0].metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert!(orphan
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());
}

fn cron_job(policy: &str) -> CronJob {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "every-minute"},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": policy,
            "jobTemplate": {"metadata": {"labels": {"app": "tick"}}, "spec": {"template": {
                "metadata": {"labels": {"app": "tick"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "600"]}],
                },
            }}},
        },
    }))
    .unwrap()
}

/// `kubectl create job --from=cronjob/every-minute manual` (kubectl create_job.go).
fn manual_job(cj: &CronJob) -> Job {
    let mut v: Value = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": "manual",
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "labels": {"app": "tick"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                "name": cj.metadata.name, "uid": cj.metadata.uid, "controller": true}],
        },
    });
    v["spec"] = serde_json::to_value(&cj.spec.as_ref().unwrap().job_template.spec).unwrap();
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_starts_nothing_while_a_job_runs_and_delete_takes_everything() {
    let cluster = start().await;
    let client = client_for(cluster.kubeconfig()).await;
    let crons: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let cj = crons
        .create(&PostParams::default(), &cron_job("Forbid"))
        .await
        .unwrap();
    assert_eq!(
        cj.spec.as_ref().unwrap().successful_jobs_history_limit,
        Some(3)
    );
    jobs.create(&PostParams::default(), &manual_job(&cj))
        .await
        .unwrap();
    // The manual job runs (its pod sleeps); the CronJob adopts it as active.
    until(Duration::from_secs(30), || async {
        let c = crons.get("every-minute").await.ok()?;
        let active = c.status?.active?;
        (active.len() == 1 && active[0].name.as_deref() == Some("manual")).then_some(())
    })
    .await
    .expect("the manual job is the CronJob's active job");

    // The next minute comes: the start is skipped, with the controller's event.
    let skipped = until(Duration::from_secs(75), || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("JobAlreadyActive"))
    })
    .await
    .expect("a JobAlreadyActive event within a minute");
    assert_eq!(
        skipped.message.as_deref(),
        Some(
            "Not starting job because prior execution is running and concurrency policy is Forbid"
        )
    );
    let names: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(names, ["manual"], "no second job under Forbid");

    // Deleting the CronJob (Background is its default) takes the job and its pod along.
    crons
        .delete("every-minute", &DeleteParams::default())
        .await
        .unwrap();
    let gone = until(Duration::from_secs(60), || async {
        let j = jobs.list(&ListParams::default()).await.ok()?.items;
        let p = pods
            .list(&ListParams::default().labels("app=tick"))
            .await
            .ok()?
            .items;
        (j.is_empty() && p.is_empty()).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "jobs and pods of a deleted CronJob are collected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_schedules_and_time_zones_are_refused() {
    let cluster = start().await;
    let client = client_for(cluster.kubeconfig()).await;
    let crons: Api<CronJob> = Api::namespaced(client, "default");
    let mut bad = cron_job("Allow");
    bad.spec.as_mut().unwrap().schedule = "every minute".into();
    bad.spec.as_mut().unwrap().time_zone = Some("Mars/Olympus_Mons".into());
    let e = crons
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("not an API error: {e}")
    };
    assert_eq!(s.code, 422);
    assert!(
        s.message
            .starts_with("CronJob.batch \"every-minute\" is invalid: ["),
        "{}",
        s.message
    );
    assert!(
        s.message
            .contains("spec.timeZone: Invalid value: \"Mars/Olympus_Mons\": unknown time zone Mars/Olympus_Mons"),
        "{}",
        s.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_service_account_has_what_its_role_binding_grants() {
    let cluster = start().await;
    let client = client_for(cluster.kubeconfig()).await;
    let apply = |path: &str, body: Value| {
        let client = client.clone();
        let path = path.to_string();
        async move {
            let req = hyper::Request::post(path)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap();
            client.request::<Value>(req).await.unwrap()
        }
    };
    apply(
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "lister"}}),
    )
    .await;
    apply(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        json!({"metadata": {"name": "list-pods"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}),
    )
    .await;
    apply(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        json!({"metadata": {"name": "lister"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-pods"},
               "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": "default"}]}),
    )
    .await;
    // The pod reads its token and the API server's address as client-go's InClusterConfig does.
    let script = "d=/var/run/secrets/kubernetes.io/serviceaccount; \
        test -s $d/token && test -s $d/ca.crt && test \"$(cat $d/namespace)\" = default && \
        test -n \"$KUBERNETES_SERVICE_HOST\" && test -n \"$KUBERNETES_SERVICE_PORT\" && \
        echo \"$(cat $d/token)\"";
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "whoami"},
        "spec": {"serviceAccountName": "lister", "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    until(Duration::from_secs(30), || async {
        let p = pods.get("whoami").await.ok()?;
        (p.status?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await
    .expect("the pod finds its service account files and ends");
    let token = pods
        .logs("whoami", &Default::default())
        .await
        .unwrap()
        .trim()
        .to_string();
    // That token, from outside: it may list pods in default, nothing else.
    let kc = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let mut kc: Value = serde_yaml::from_str(&kc).unwrap();
    kc["users"][0]["user"]["token"] = json!(token);
    let path = cluster.state_dir().join("kubeconfig-sa");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let sa = client_for(&path).await;
    Api::<Pod>::namespaced(sa.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("list pods is granted");
    let denied = Api::<Pod>::namespaced(sa.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(denied, kube::Error::Api(ref s) if s.code == 403),
        "{denied}"
    );
    let review: Value = {
        let req = hyper::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
            .header("content-type", "application/json")
            .body(
                serde_json::to_vec(
                    &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
                )
                .unwrap(),
            )
            .unwrap();
        sa.request(req).await.unwrap()
    };
    assert_eq!(
        review["status"]["userInfo"]["username"],
        "system:serviceaccount:default:lister"
    );
    // Deleting the ServiceAccount invalidates its token.
    client
        .request::<Value>(
            hyper::Request::delete("/api/v1/namespaces/default/serviceaccounts/lister")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let e = Api::<Pod>::namespaced(sa, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(matches!(e, kube::Error::Api(ref s) if s.code == 401), "{e}");
}

//! Schedules end to end: `schedule create … --to s3://… --credentials-secret …` then
//! `schedule run-now` makes a backup in the bucket (moto) through a Job in kubesim, whose pod
//! runs this very plugin binary (kubesim maps the image to it) with the pod's service account;
//! `schedule run-now --drill` then drills that backup (`drill --latest`) in a Job of the
//! schedule's drill CronJob; `schedule delete` removes every object; `Forbid` allows one run at
//! a time; the `--dry-run -o yaml` objects are pinned.

mod common;

use std::path::Path;
use std::time::Duration;

use common::moto::Moto;
use common::*;
use kubesim::{Cluster, ClusterOptions, Scenario};
use serde_json::{json, Value};

const NS: &str = "shop";
const PVC: &str = "scratch-unattached";
const BUCKET: &str = "pv-backups";
/// The plugin image of these tests; kubesim runs the plugin binary for it.
const IMAGE: &str = "registry.example/kubectl-pvbackup:test";

async fn cluster() -> Cluster {
    let c = Cluster::start(ClusterOptions {
        scenario: Scenario::Demo,
        image_binaries: vec![(
            IMAGE.to_string(),
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_kubectl-pvbackup")),
        )],
        ..Default::default()
    })
    .await
    .expect("kubesim starts");
    c.wait_for_pods_running(Duration::from_secs(60))
        .await
        .expect("demo pods run");
    c
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// `kubectl create secret generic NAME --from-literal=K=V …`
async fn secret(cluster: &Cluster, name: &str, data: &[(String, String)]) {
    let string_data: serde_json::Map<String, Value> =
        data.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": string_data});
    let req = hyper_request(
        "POST",
        &format!("/api/v1/namespaces/{NS}/secrets"),
        serde_json::to_vec(&body).unwrap(),
    );
    client(cluster.kubeconfig())
        .await
        .request::<Value>(req)
        .await
        .unwrap();
}

fn hyper_request(method: &str, path: &str, body: Vec<u8>) -> http::Request<Vec<u8>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn labelled(cluster: &Cluster, plural: &str, schedule: &str) -> Vec<String> {
    cluster
        .objects(plural, Some(NS))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["pvbackup.dev/schedule"] == schedule)
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_backs_up_to_the_bucket_and_delete_removes_every_object() {
    let cluster = cluster().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let vol = cluster.volume_path(NS, PVC);
    std::fs::write(vol.join("scheduled-marker.txt"), b"made by a CronJob\n").unwrap();
    let before = snapshot(&vol);
    secret(&cluster, "s3-creds", &moto.env()).await;

    let dest = format!("s3://{BUCKET}/scheduled");
    let run = plugin(
        &cluster,
        &[
            "schedule",
            "create",
            "nightly",
            PVC,
            "-n",
            NS,
            "--all-pvcs",
            "--cron",
            "0 3 * * *",
            "--to",
            &dest,
            "--credentials-secret",
            "s3-creds",
            "--keep-last",
            "3",
            "--snapshot",
            "never",
            "--drill-cron",
            "0 4 * * 0",
            "--image",
            IMAGE,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("cronjob/pvbackup-nightly-drill (0 4 * * 0, drill)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("schedule nightly created in namespace shop"),
        "{}",
        run.stdout
    );

    let run = plugin(
        &cluster,
        &[
            "schedule",
            "run-now",
            "nightly",
            "-n",
            NS,
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    if run.code != 0 {
        // The job's pod says why: its status and its containers' logs.
        let pods: Vec<Value> = cluster
            .objects("pods", Some(NS))
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["pvbackup.dev/schedule"] == "nightly")
            .collect();
        let logs: Vec<String> = pods
            .iter()
            .flat_map(|p| {
                let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
                walk_logs(&cluster.state_dir().join("pods").join(uid))
            })
            .collect();
        panic!(
            "run-now failed: {}\n{}\npods: {}\njob logs:\n{}",
            run.stdout,
            run.stderr,
            serde_json::to_string_pretty(&pods.iter().map(|p| &p["status"]).collect::<Vec<_>>())
                .unwrap(),
            logs.join("\n")
        );
    }
    assert!(run.stdout.contains("succeeded"), "{}", run.stdout);

    // The backup is in the bucket, and it is exact.
    let keys = moto.keys(BUCKET);
    assert!(
        keys.iter()
            .any(|k| k.starts_with("scheduled/")
                && k.ends_with(&format!("{NS}/{PVC}.manifest.json"))),
        "{keys:?}"
    );
    let listed = plugin_env(
        cluster.kubeconfig(),
        &["list", &dest, "-o", "json"],
        &moto.env(),
    )
    .await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let rows: Value = serde_json::from_str(&listed.stdout).unwrap();
    let id = rows["items"]
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["pvc"] == PVC && r["restorable"] == true)
        })
        .and_then(|r| r["id"].as_str())
        .unwrap_or_else(|| panic!("no backup of {PVC} listed: {}", listed.stdout))
        .to_string();
    let verified = plugin_env(
        cluster.kubeconfig(),
        &["verify", &format!("{id}/{NS}/{PVC}"), "--from", &dest],
        &moto.env(),
    )
    .await;
    assert_eq!(verified.code, 0, "{}\n{}", verified.stdout, verified.stderr);
    // Who made it: the schedule's service account, as the API server authenticated it.
    let inspected = plugin_env(
        cluster.kubeconfig(),
        &[
            "inspect",
            &format!("{id}/{NS}/{PVC}"),
            "--from",
            &dest,
            "--files",
        ],
        &moto.env(),
    )
    .await;
    assert_eq!(inspected.code, 0, "{}", inspected.stderr);
    assert!(
        inspected
            .stdout
            .contains("by system:serviceaccount:shop:pvbackup-nightly"),
        "{}",
        inspected.stdout
    );
    assert!(
        inspected.stdout.contains("scheduled-marker.txt"),
        "{}",
        inspected.stdout
    );
    assert_eq!(snapshot(&vol), before, "the volume is untouched");

    // The weekly drill, now: a Job of the drill CronJob drills that backup, the newest, in the
    // cluster as the schedule's service account, and leaves no scratch PVC.
    let pvcs_before = cluster.objects("persistentvolumeclaims", Some(NS)).len();
    let run = plugin(
        &cluster,
        &[
            "schedule",
            "run-now",
            "nightly",
            "-n",
            NS,
            "--drill",
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    let drill_logs: Vec<String> = cluster
        .objects("pods", Some(NS))
        .iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("pvbackup-nightly-drill-manual-"))
        })
        .flat_map(|p| {
            let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
            walk_logs(&cluster.state_dir().join("pods").join(uid))
        })
        .collect();
    let drill_logs = drill_logs.join("\n");
    assert_eq!(run.code, 0, "{}\n{}\n{drill_logs}", run.stdout, run.stderr);
    assert!(run.stdout.contains("succeeded"), "{}", run.stdout);
    assert!(
        drill_logs.contains(&id),
        "the drill names the backup: {drill_logs}"
    );
    assert!(drill_logs.contains("intact"), "{drill_logs}");
    assert_eq!(
        cluster.objects("persistentvolumeclaims", Some(NS)).len(),
        pvcs_before,
        "the drill left its scratch PVC"
    );
    assert_eq!(snapshot(&vol), before, "the volume is untouched");

    let listed = plugin(&cluster, &["schedule", "list", "-n", NS, "-o", "json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let rows: Value = serde_json::from_str(&listed.stdout).unwrap();
    let mut runs: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["name"], "nightly");
            assert_eq!(r["destination"], dest);
            (r["runs"].to_string(), r["schedule"].to_string())
        })
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        [
            ("\"backup\"".to_string(), "\"0 3 * * *\"".to_string()),
            ("\"drill\"".to_string(), "\"0 4 * * 0\"".to_string())
        ]
    );

    // Delete: every object the schedule made, its Jobs and their pods, are gone.
    let made: Vec<(&str, Vec<String>)> = [
        "cronjobs",
        "serviceaccounts",
        "roles",
        "rolebindings",
        "jobs",
        "pods",
    ]
    .into_iter()
    .map(|p| (p, labelled(&cluster, p, "nightly")))
    .collect();
    for (plural, names) in &made {
        assert!(!names.is_empty(), "schedule made no {plural}");
    }
    assert_eq!(
        made[0].1.len(),
        2,
        "the backup and the drill CronJob: {:?}",
        made[0].1
    );
    let run = plugin(&cluster, &["schedule", "delete", "nightly", "-n", NS]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for (plural, _) in &made {
        assert_eq!(
            labelled(&cluster, plural, "nightly"),
            Vec::<String>::new(),
            "{plural} left"
        );
    }
    // Only what was there before remains: the namespace's default ServiceAccount.
    let sas: Vec<String> = cluster
        .objects("serviceaccounts", Some(NS))
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(sas, ["default"]);
    let again = plugin(&cluster, &["schedule", "delete", "nightly", "-n", NS]).await;
    assert_eq!(again.code, 1);
    assert!(
        again
            .stderr
            .contains("no schedule nightly in namespace shop"),
        "{}",
        again.stderr
    );
}

/// The container logs kubesim keeps for a pod (under its directory in the state directory).
fn walk_logs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            format!(
                "== {}\n{}",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_allows_one_run_at_a_time() {
    let cluster = cluster().await;
    // An image kubesim does not map runs busybox's idle loop: the run never ends by itself.
    let run = plugin(
        &cluster,
        &[
            "schedule",
            "create",
            "slow",
            "-n",
            NS,
            "--cron",
            "@daily",
            "--to",
            "s3://bkt/p",
            "--image",
            "registry.example/never-ends:1",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let first = plugin(&cluster, &["schedule", "run-now", "slow", "-n", NS]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let job = first
        .stdout
        .trim()
        .trim_start_matches("job.batch/")
        .to_string();
    let second = plugin(&cluster, &["schedule", "run-now", "slow", "-n", NS]).await;
    assert_eq!(second.code, 1, "{}", second.stdout);
    assert!(
        second.stderr.contains(&format!(
            "schedule slow is running (job {job}) and its concurrency policy is Forbid"
        )),
        "{}",
        second.stderr
    );
    assert_eq!(labelled(&cluster, "jobs", "slow"), [job]);
    let run = plugin(&cluster, &["schedule", "delete", "slow", "-n", NS]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(labelled(&cluster, "pods", "slow").is_empty());
}

#[test]
fn dry_run_yaml_prints_every_object() {
    let out = plugin_command(
        Path::new("/nonexistent/kubeconfig"),
        &[
            "schedule",
            "create",
            "nightly",
            "data-orders-db-0",
            "-n",
            "shop",
            "--cron",
            "0 3 * * *",
            "--drill-cron",
            "0 4 * * 0",
            "--time-zone",
            "Europe/Berlin",
            "--to",
            "s3://backups/shop",
            "--credentials-secret",
            "s3-creds",
            "--keep-daily",
            "7",
            "--keep-weekly",
            "4",
            "--service-account-annotation",
            "eks.amazonaws.com/role-arn=arn:aws:iam::111122223333:role/pvbackup",
            "--image",
            IMAGE,
            "--dry-run",
            "-o",
            "yaml",
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

#[test]
fn bad_schedules_are_refused_before_any_cluster_is_asked() {
    let run = |args: &[&str]| {
        let mut a = vec![
            "schedule",
            "create",
            "x",
            "-n",
            "shop",
            "--to",
            "s3://bkt/p",
        ];
        a.extend(args);
        plugin_command(Path::new("/nonexistent/kubeconfig"), &a, &[])
            .output()
            .unwrap()
    };
    let out = run(&["--cron", "0 3 * *"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cron \"0 3 * *\" is not a cron schedule"),
        "{err}"
    );
    assert!(err.contains("five fields"), "{err}");
    let out = run(&["--cron", "@daily", "--time-zone", "Berlin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IANA time zone"));
}

/// An encrypted schedule: the job's `create` encrypts to the recipient the schedule was made
/// with (read from a recipients file that stays on this machine); the bucket then holds no byte
/// of the volume's content or names, `list` works without a key, and `verify` with the key
/// checks every file. A drill, which would need the private key in the cluster, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_schedule_writes_what_only_the_key_opens() {
    use age::secrecy::ExposeSecret;
    const MARKER: &str = "GIRAFFE-MARKER-5d1e";
    let cluster = cluster().await;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let vol = cluster.volume_path(NS, PVC);
    std::fs::write(vol.join(format!("{MARKER}.txt")), format!("{MARKER}\n")).unwrap();
    secret(&cluster, "s3-creds", &moto.env()).await;
    let keys = tempfile::tempdir().unwrap();
    #[allow(deprecated)] // age 0.13 calls X25519 keys legacy; they are what age-keygen makes
    let id = age::x25519::Identity::generate();
    let identity = keys.path().join("key.txt");
    std::fs::write(&identity, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let recipients = keys.path().join("recipients.txt");
    std::fs::write(&recipients, format!("# ops\n{}\n", id.to_public())).unwrap();
    let recipients = recipients.to_str().unwrap();
    let dest = format!("s3://{BUCKET}/sealed");
    let create = |extra: &'static [&'static str]| {
        let mut a = vec![
            "schedule",
            "create",
            "sealed",
            PVC,
            "-n",
            NS,
            "--cron",
            "@daily",
            "--to",
            &dest,
            "--credentials-secret",
            "s3-creds",
            "--snapshot",
            "never",
            "--image",
            IMAGE,
            "--encrypt-to-file",
            recipients,
        ];
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = create(&["--drill-cron", "@weekly"]);
    let refused = plugin(
        &cluster,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("--drill-cron cannot drill encrypted backups"),
        "{}",
        refused.stderr
    );
    assert!(
        labelled(&cluster, "cronjobs", "sealed").is_empty(),
        "nothing was made"
    );

    let args = create(&[]);
    let run = plugin(
        &cluster,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let run = plugin(
        &cluster,
        &[
            "schedule",
            "run-now",
            "sealed",
            "-n",
            NS,
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    let stored = moto.keys(BUCKET);
    assert!(stored.iter().any(|k| k.ends_with(".age")), "{stored:?}");
    for key in &stored {
        assert!(!key.contains(MARKER), "{key}");
        let bytes = moto.object(BUCKET, key);
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{key} holds the marker in clear"
        );
    }
    let listed = plugin_env(
        cluster.kubeconfig(),
        &["list", &dest, "-o", "json"],
        &moto.env(),
    )
    .await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(listed.stdout.contains("x25519"), "{}", listed.stdout);
    let manifest = stored
        .iter()
        .find(|k| k.ends_with(".manifest.json"))
        .expect("a manifest");
    let verified = plugin_env(
        cluster.kubeconfig(),
        &[
            "verify",
            &format!("s3://{BUCKET}/{manifest}"),
            "--identity",
            identity.to_str().unwrap(),
        ],
        &moto.env(),
    )
    .await;
    assert_eq!(verified.code, 0, "{}\n{}", verified.stdout, verified.stderr);
    let run = plugin(&cluster, &["schedule", "delete", "sealed", "-n", NS]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
}

//! A referee no one here wrote: the official Kubernetes Python client (`kubernetes` on PyPI)
//! lists, watches, creates, deletes, execs (its WebSocket `stream`) and port-forwards (its
//! WebSocket `portforward`) against kubesim, next
//! to kubectl (`kubectl_compat.rs`) and kube-rs (`kube_rs.rs`). The client runs
//! `python_client.py`; this test checks what it printed against what kubesim holds.
//!
//! The interpreter is `$PVBACKUP_PYTHON_K8S` (set by `.ci/run`), else
//! `target/ci-tools/k8s-python/bin/python` (the virtualenv `.ci/run` creates with the pinned
//! `kubernetes` version). When neither exists the test fails with instructions.

use std::path::PathBuf;
use std::time::Duration;

use kubesim::{Cluster, ClusterOptions, Scenario};
use serde_json::Value;

/// The version `.ci/run` installs; the one this test was written against.
const CLIENT_VERSION: &str = "37.0.2";

fn python() -> PathBuf {
    let install = format!(
        "python3 -m venv target/ci-tools/k8s-python && target/ci-tools/k8s-python/bin/pip install 'kubernetes=={CLIENT_VERSION}'\n(.ci/run does this)"
    );
    if let Some(p) = std::env::var_os("PVBACKUP_PYTHON_K8S") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PVBACKUP_PYTHON_K8S={} does not exist. Install the client with:\n  {install}",
            p.display()
        );
        return p;
    }
    // tests/kubesim → the workspace root, where target/ lives.
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/ci-tools/k8s-python/bin/python");
    assert!(
        p.is_file(),
        "the Python client's virtualenv is missing ({}) and PVBACKUP_PYTHON_K8S is not set. Install it with:\n  {install}",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_lists_watches_creates_deletes_and_execs() {
    let python = python();
    let version = std::process::Command::new(&python)
        .args(["-c", "import kubernetes; print(kubernetes.__version__)"])
        .output()
        .expect("python runs");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        CLIENT_VERSION,
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );

    let cluster = Cluster::start(ClusterOptions {
        scenario: Scenario::Demo,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    cluster
        .wait_for_pods_running(Duration::from_secs(60))
        .await
        .expect("demo pods run");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python_client.py");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script)
        .arg(cluster.kubeconfig())
        // The kubeconfig given is the only one: nothing from the host's ~/.kube.
        .env_remove("KUBECONFIG")
        .env("HOME", cluster.state_dir())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the Python client finished within 180 s")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let step = |name: &str| -> &Value {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name} in\n{stdout}\n{stderr}"))
    };
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let qualified = |objs: Vec<Value>| -> Vec<String> {
        let mut v: Vec<String> = objs
            .iter()
            .map(|o| match o["metadata"]["namespace"].as_str() {
                Some(ns) => format!("{ns}/{}", o["metadata"]["name"].as_str().unwrap()),
                None => o["metadata"]["name"].as_str().unwrap().to_string(),
            })
            .collect();
        v.sort();
        v
    };

    // list: what the client parsed is what kubesim holds (the demo's, before the test's own).
    let s = step("list_namespaces");
    let ns = names(&s["names"]);
    assert!(ns.contains(&"shop".to_string()), "{ns:?}");
    assert!(!ns.contains(&"py-referee".to_string()), "{ns:?}");
    assert!(s["resource_version"]
        .as_str()
        .is_some_and(|rv| !rv.is_empty()));
    let s = step("list_pods");
    assert_eq!(names(&s["pods"]), qualified(cluster.objects("pods", None)));
    assert_eq!(names(&s["phases"]), vec!["Running"]);
    let s = step("list_pvcs");
    let pvcs = cluster.objects("persistentvolumeclaims", Some("shop"));
    let mut want: Vec<String> = pvcs
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(names(&s["pvcs"]), want);
    assert!(!names(&s["bound"]).is_empty(), "{s}");

    let s = step("read_missing");
    assert_eq!(s["status"], 404, "{s}");
    assert_eq!(s["reason"], "NotFound");
    assert_eq!(s["message"], "pods \"no-such-pod\" not found");

    // create: the pod the client created is the one kubesim ran; a second create conflicts.
    let s = step("create");
    assert_eq!(s["name"], "py-sleeper");
    assert_eq!(s["phase"], "Pending");
    let uid = s["uid"].as_str().unwrap().to_string();
    let s = step("create_again");
    assert_eq!(s["status"], 409, "{s}");
    assert_eq!(s["reason"], "AlreadyExists");
    let s = step("running");
    assert_eq!(s["phase"], "Running");
    assert!(
        s["node"].as_str().is_some_and(|n| n.starts_with("node-")),
        "{s}"
    );

    // exec: separate streams, the exit code, stdin.
    let s = step("exec");
    assert_eq!(s["stdout"], "out-line\n", "{s}");
    assert_eq!(s["stderr"], "err-line\n", "{s}");
    assert_eq!(s["returncode"], 3, "{s}");
    let s = step("exec_stdin");
    assert_eq!(s["stdout"], "HELLO WORLD", "{s}");
    assert_eq!(s["returncode"], 0, "{s}");
    let s = step("exec_simple");
    assert_eq!(s["output"], "py-sleeper\n", "{s}");

    // port-forward: bytes through the forward and back; a closed port's kubelet error.
    let s = step("portforward");
    assert_eq!(s["echoed"], "through the forward", "{s}");
    let s = step("portforward_closed");
    assert_eq!(s["received"], "", "{s}");
    let port = s["port"].as_u64().unwrap();
    let error = s["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {s}"));
    assert!(
        error.starts_with(&format!("error forwarding port {port} to pod "))
            && error.contains(&format!(
                "failed to connect to localhost:{port} inside namespace"
            ))
            && error.contains("connect: connection refused"),
        "{s}"
    );

    // watch: the pod's whole life, in order, ending with its deletion.
    let s = step("watch");
    assert_eq!(s["finished"], true, "{s}");
    let events: Vec<(String, String, Option<String>)> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_string(),
                e[1].as_str().unwrap().to_string(),
                e[2].as_str().map(str::to_string),
            )
        })
        .collect();
    assert!(events.iter().all(|e| e.1 == "py-sleeper"), "{events:?}");
    assert_eq!(
        events.first().map(|e| e.0.as_str()),
        Some("ADDED"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("DELETED"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.0 == "MODIFIED" && e.2.as_deref() == Some("Running")),
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| e.0 == "ADDED").count(),
        1,
        "{events:?}"
    );

    // delete: gone for the client and for kubesim, container and all.
    assert_eq!(step("after_delete")["status"], 404);
    assert!(
        !cluster
            .objects("pods", None)
            .iter()
            .any(|p| p["metadata"]["uid"] == uid.as_str()),
        "the deleted pod is still stored"
    );
}
